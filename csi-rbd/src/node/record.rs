//! The stage record: what NodeStageVolume did, kept on the node's disk so
//! that NodePublish, NodeExpand, NodeGetVolumeStats and NodeUnstage (and a
//! restarted plugin) know the device, the mounter and the unmap options
//! without asking Ceph (which may be down) or the CO (which does not send
//! the volume context again).
//!
//! One JSON file per volume under `--state-dir`: `<state-dir>/<volume>.json`,
//! written through a temp file and a rename so that a crash leaves the old
//! record or the new one, never half of one. Next to it, while the volume is
//! staged read-write, `<volume>.secret` (mode 0600) keeps the stage secret's
//! user and key: NodeUnstageVolume carries no secrets, yet releasing the
//! attach lock in Ceph needs them. Both go at unstage.
//!
//! Two kinds of crash, two guarantees:
//!
//! - The plugin dies (killed, restarted): what it wrote is in the kernel's
//!   page cache, and the next process reads it, fsynced or not. Stage
//!   writes its record and secret before mapping with
//!   [`Records::save_visible`] / [`Records::save_secret_visible`] (a
//!   write and a rename, no fsync), so that a crash after the map always
//!   leaves what unstage needs.
//! - The machine dies: its mappings and mounts die with it, so what must
//!   survive is only the result of a stage that returned. Stage fsyncs the
//!   record, the secret and the directory ([`Records::sync`]) while it
//!   probes and mounts, and returns only once that is done. A machine that
//!   dies before that may leave a record of zero bytes (the rename reached
//!   the disk, the data did not): [`Records::load`] takes it for no record,
//!   since nothing it described outlived the machine.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use csi_core::Error;
use serde::{Deserialize, Serialize};

/// How the image is mapped.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Mounter {
    /// The kernel RBD client (`/sys/bus/rbd`).
    #[serde(rename = "krbd")]
    Krbd,
    /// The userspace `rbd-nbd` daemon on an nbd device.
    #[serde(rename = "rbd-nbd")]
    RbdNbd,
}

impl Mounter {
    /// The `mounter` volume context value (ceph-csi's names).
    pub fn parse(s: Option<&str>) -> Result<Mounter, Error> {
        match s.unwrap_or("") {
            "" | "krbd" | "rbd" => Ok(Mounter::Krbd),
            "rbd-nbd" => Ok(Mounter::RbdNbd),
            other => Err(Error::InvalidArgument(format!("mounter {other:?}: expected krbd or rbd-nbd"))),
        }
    }

    /// The name in the record and in messages.
    pub fn as_str(self) -> &'static str {
        match self {
            Mounter::Krbd => "krbd",
            Mounter::RbdNbd => "rbd-nbd",
        }
    }
}

/// One staged volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    /// The CSI volume ID.
    pub volume_id: String,
    /// ceph-csi's clusterID.
    pub cluster_id: String,
    /// The image's pool.
    pub pool: String,
    /// The image.
    pub image: String,
    /// krbd or rbd-nbd.
    pub mounter: Mounter,
    /// The mapped device (`/dev/rbd0`, `/dev/nbd0`); empty until mapped.
    pub device: String,
    /// `unmapOptions` from the volume context.
    pub unmap_options: String,
    /// Filesystem type; empty for a raw block volume.
    pub fs_type: String,
    /// The staging path (where the filesystem is mounted).
    pub staging_path: PathBuf,
    /// This node's ID.
    pub node: String,
    /// Mapped read-only (no attach lock taken).
    pub readonly: bool,
}

impl StageRecord {
    /// The record as csi-core's shared node steps read it.
    pub fn staged(&self) -> csi_core::blocknode::Staged<'_> {
        csi_core::blocknode::Staged {
            volume_id: &self.volume_id,
            device: &self.device,
            staging_path: &self.staging_path,
            fs_type: &self.fs_type,
            readonly: self.readonly,
        }
    }

    /// A raw block volume (no filesystem).
    pub fn is_block(&self) -> bool {
        self.fs_type.is_empty()
    }
}

/// The stage secret kept for unstage (never logged: Debug shows the user only).
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageSecret {
    /// The cephx user (without `client.`).
    pub user: String,
    /// Its key (base64).
    pub key: String,
}

impl std::fmt::Debug for StageSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageSecret").field("user", &self.user).field("key", &"***").finish()
    }
}

/// The records of one node, in one directory.
#[derive(Clone, Debug)]
pub struct Records {
    dir: PathBuf,
    /// The directory was made (mode 0700) by this process: a write goes
    /// straight to its file (every syscall counts on a stage's path).
    dir_ready: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// A volume ID as a file name: letters, digits, `-`, `_` and `.` as they
/// are (every ceph-csi ID is made of those), anything else `%XX`.
pub fn file_stem(volume_id: &str) -> String {
    let mut s = String::with_capacity(volume_id.len());
    for b in volume_id.bytes() {
        if b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || (b == b'.' && !s.is_empty()) {
            s.push(b as char);
        } else {
            s.push_str(&format!("%{b:02X}"));
        }
    }
    s
}

impl Records {
    /// Records kept in `dir` (created, mode 0700, on first write).
    pub fn new(dir: &Path) -> Records {
        Records { dir: dir.to_path_buf(), dir_ready: Default::default() }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, volume_id: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{}.{ext}", file_stem(volume_id)))
    }

    fn ensure_dir(&self) -> Result<(), Error> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(format!("create {}", self.dir.display()), e))?;
        std::fs::set_permissions(&self.dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| Error::io(format!("chmod 0700 {}", self.dir.display()), e))
    }

    /// Writes `data` to a temp file and renames it to `path`; with
    /// `durable`, the data is fsynced before the rename and the directory
    /// after it (on a machine crash: the old file or the new one, never a
    /// truncated one). Without, the new file is visible to every process at
    /// once and reaches the disk later (see the module's doc).
    fn write_atomic(&self, path: &Path, data: &[u8], durable: bool) -> Result<(), Error> {
        // One temp name per file (the record's and the secret's differ).
        let tmp = path.with_extension(format!("{}.tmp", path.extension().and_then(|e| e.to_str()).unwrap_or("")));
        let open = || std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(&tmp);
        use std::sync::atomic::Ordering;
        if !self.dir_ready.load(Ordering::Relaxed) {
            self.ensure_dir()?;
            self.dir_ready.store(true, Ordering::Relaxed);
        }
        let mut f = match open() {
            // Removed behind this process's back: made again.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                self.ensure_dir()?;
                open()
            }
            r => r,
        }
        .map_err(|e| Error::io(format!("create {}", tmp.display()), e))?;
        f.write_all(data)
            .and_then(|()| if durable { f.sync_all() } else { Ok(()) })
            .map_err(|e| Error::io(format!("write {}", tmp.display()), e))?;
        std::fs::rename(&tmp, path)
            .map_err(|e| Error::io(format!("rename {} to {}", tmp.display(), path.display()), e))?;
        if durable {
            self.sync_dir()?;
        }
        Ok(())
    }

    fn sync_dir(&self) -> Result<(), Error> {
        std::fs::File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(|e| Error::io(format!("fsync {}", self.dir.display()), e))
    }

    fn encode(r: &StageRecord) -> Result<Vec<u8>, Error> {
        serde_json::to_vec_pretty(r).map_err(|e| Error::Internal(format!("encode stage record: {e}")))
    }

    /// Saves (replaces) the record of `r.volume_id`, durably.
    pub fn save(&self, r: &StageRecord) -> Result<(), Error> {
        self.write_atomic(&self.path(&r.volume_id, "json"), &Self::encode(r)?, true)
    }

    /// Saves (replaces) the record of `r.volume_id` for every process on
    /// this machine, not yet for the disk: [`Records::sync`] follows.
    pub fn save_visible(&self, r: &StageRecord) -> Result<(), Error> {
        self.write_atomic(&self.path(&r.volume_id, "json"), &Self::encode(r)?, false)
    }

    /// Makes what [`Records::save_visible`] and
    /// [`Records::save_secret_visible`] wrote for `volume_id` durable: the
    /// record, the secret (if any) and the directory, fsynced.
    pub fn sync(&self, volume_id: &str) -> Result<(), Error> {
        for ext in ["secret", "json"] {
            let p = self.path(volume_id, ext);
            match std::fs::File::open(&p) {
                Ok(f) => f.sync_all().map_err(|e| Error::io(format!("fsync {}", p.display()), e))?,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound && ext == "secret" => {}
                Err(e) => return Err(Error::io(format!("open {}", p.display()), e)),
            }
        }
        self.sync_dir()
    }

    /// The record of `volume_id`, if staged here. A record of zero bytes
    /// is no record: only a machine crash between [`Records::save_visible`]
    /// and [`Records::sync`] leaves one, and the mapping it was about to
    /// describe did not survive that crash.
    pub fn load(&self, volume_id: &str) -> Result<Option<StageRecord>, Error> {
        let p = self.path(volume_id, "json");
        match std::fs::read(&p) {
            Ok(b) if b.is_empty() => {
                tracing::warn!(record = %p.display(), "empty stage record (a machine crash during a stage): no record");
                Ok(None)
            }
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Internal(format!("stage record {} is corrupt: {e}", p.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("read {}", p.display()), e)),
        }
    }

    /// Every record (for NodeGetVolumeStats by path, and operators).
    pub fn all(&self) -> Result<Vec<StageRecord>, Error> {
        let rd = match std::fs::read_dir(&self.dir) {
            Ok(rd) => rd,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(Error::io(format!("read {}", self.dir.display()), e)),
        };
        let mut out = Vec::new();
        for e in rd.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "json") {
                if let Ok(b) = std::fs::read(&p) {
                    if let Ok(r) = serde_json::from_slice::<StageRecord>(&b) {
                        out.push(r);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Saves the stage secret of `volume_id` (mode 0600) for every process
    /// on this machine, not yet for the disk: [`Records::sync`] follows.
    pub fn save_secret_visible(&self, volume_id: &str, s: &StageSecret) -> Result<(), Error> {
        let data = serde_json::to_vec(s).map_err(|e| Error::Internal(format!("encode stage secret: {e}")))?;
        self.write_atomic(&self.path(volume_id, "secret"), &data, false)
    }

    /// The stage secret of `volume_id`, if kept.
    pub fn load_secret(&self, volume_id: &str) -> Option<StageSecret> {
        std::fs::read(self.path(volume_id, "secret")).ok().and_then(|b| serde_json::from_slice(&b).ok())
    }

    /// Removes the record and the secret of `volume_id`; missing is fine.
    pub fn remove(&self, volume_id: &str) -> Result<(), Error> {
        for ext in ["secret", "json"] {
            let p = self.path(volume_id, ext);
            match std::fs::remove_file(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(format!("remove {}", p.display()), e)),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rec(id: &str) -> StageRecord {
        StageRecord {
            volume_id: id.into(),
            cluster_id: "c1".into(),
            pool: "rbd".into(),
            image: "csi-vol-1".into(),
            mounter: Mounter::Krbd,
            device: "/dev/rbd0".into(),
            unmap_options: String::new(),
            fs_type: "ext4".into(),
            staging_path: "/staging".into(),
            node: "a".into(),
            readonly: false,
        }
    }

    #[test]
    fn records_round_trip_and_go_away() {
        let d = tempfile::tempdir().unwrap();
        let r = Records::new(&d.path().join("state"));
        assert_eq!(r.load("v1").unwrap(), None);
        r.save(&rec("v1")).unwrap();
        r.save_secret_visible("v1", &StageSecret { user: "admin".into(), key: "K".into() }).unwrap();
        assert_eq!(r.load("v1").unwrap(), Some(rec("v1")));
        assert_eq!(r.all().unwrap(), vec![rec("v1")]);
        let mode = std::fs::metadata(r.path("v1", "secret")).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        assert_eq!(std::fs::metadata(r.dir()).unwrap().permissions().mode() & 0o777, 0o700);
        assert!(!format!("{:?}", r.load_secret("v1").unwrap()).contains('K'));
        r.remove("v1").unwrap();
        r.remove("v1").unwrap();
        assert_eq!(r.load("v1").unwrap(), None);
        assert!(r.load_secret("v1").is_none());
    }

    #[test]
    fn a_visible_record_is_read_at_once_synced_later_and_an_empty_one_is_none() {
        let d = tempfile::tempdir().unwrap();
        let r = Records::new(&d.path().join("state"));
        // What another process (a restarted plugin) reads right after the write, before any fsync.
        r.save_visible(&rec("v2")).unwrap();
        assert_eq!(r.load("v2").unwrap(), Some(rec("v2")));
        r.sync("v2").unwrap();
        r.save_secret_visible("v2", &StageSecret { user: "admin".into(), key: "K".into() }).unwrap();
        assert_eq!(r.load_secret("v2").unwrap().user, "admin");
        r.sync("v2").unwrap();
        assert!(r.sync("never-saved").is_err(), "a sync of a record that is not there must fail");
        // No temp file is left behind.
        let mut names: Vec<String> =
            std::fs::read_dir(r.dir()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, vec!["v2.json", "v2.secret"]);
        // What a machine crash between the rename and the fsync can leave: the name, no data.
        std::fs::write(r.path("v3", "json"), b"").unwrap();
        assert_eq!(r.load("v3").unwrap(), None);
        // Anything else unreadable is an error, never silently no record.
        std::fs::write(r.path("v4", "json"), b"{").unwrap();
        assert!(r.load("v4").is_err());
    }

    #[test]
    fn volume_ids_become_safe_file_names() {
        assert_eq!(file_stem("0001-0004-ceph-0000000000000002-abc"), "0001-0004-ceph-0000000000000002-abc");
        assert_eq!(file_stem("../x/y"), "%2E.%2Fx%2Fy");
        assert_eq!(file_stem("a b"), "a%20b");
    }

    #[test]
    fn mounter_names_are_ceph_csis() {
        assert_eq!(Mounter::parse(None).unwrap(), Mounter::Krbd);
        assert_eq!(Mounter::parse(Some("rbd-nbd")).unwrap(), Mounter::RbdNbd);
        assert!(Mounter::parse(Some("fuse")).is_err());
        let j = serde_json::to_string(&rec("v")).unwrap();
        assert!(j.contains("\"mounter\":\"krbd\""), "{j}");
    }
}
