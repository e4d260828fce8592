//! The Controller service: volumes are directories on the share, made over
//! NFS from userspace (`crate::nfs`, libnfs), or through the kernel NFS
//! client for servers libnfs cannot speak to (`crate::nfs::kernel`, see
//! `ControllerService::on_share` and `--provisioner`).
//!
//! Layout on each share (`<share>` is the export root):
//!
//! ```text
//! <share>/<subdir>                              a volume
//! <share>/archived-<subdir>                     a volume deleted with onDelete=archive
//! <share>/.csi-nfs/volumes/<name>.json          the volume's record
//! <share>/.csi-nfs/snapshots/<name>/            a snapshot: a copy of the volume's files
//! <share>/.csi-nfs/snapshots/<name>.json        the snapshot's record
//! ```
//!
//! The records make CreateVolume and CreateSnapshot idempotent across
//! restarts and replicas (same name and arguments: the same answer; same
//! name, other arguments: ALREADY_EXISTS) and back ListVolumes and
//! ListSnapshots. Names are escaped into one path component
//! (`volume::escape`).
//!
//! Every operation takes an async lock on its name, so concurrent calls for
//! one name run one after the other and all get the same answer (no
//! ABORTED), and works on a pooled NFS connection (see `crate::nfs::pool`).

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use csi_core::locks::Locks;
use csi_core::paging::page;
use csi_core::pb::{self, controller_service_capability as csc};
use csi_core::source::{content_source_from, content_source_key};
use csi_core::validate::{self, CapabilitySupport, Capacity};
use csi_core::Error;
use serde_json::{json, Value};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::nfs::{self, kernel, ShareFs, Target};
use crate::volume::{escape, CreateParams, MountOptions, OnDelete, SnapshotId, VolumeId};
use crate::Provisioner;

/// Bound on each NFS call, connecting included.
pub const NFS_TIMEOUT: Duration = nfs::DEFAULT_TIMEOUT;

const VOLUMES_DIR: &str = ".csi-nfs/volumes";
const SNAPSHOTS_DIR: &str = ".csi-nfs/snapshots";

/// csi-nfs's Controller service.
#[derive(Debug, Default)]
pub struct ControllerService {
    config: crate::Config,
    locks: Locks,
    /// Shares seen since start, for ListVolumes and ListSnapshots (shared
    /// with the metrics' `csi_nfs_shares_known`).
    shares: Arc<Mutex<BTreeMap<String, Share>>>,
    /// The kernel backend's mounts of share roots.
    mounts: Arc<kernel::Mounts>,
    /// Shares that refused libnfs's NFSv4.0 (4.1/4.2 only): reached through
    /// the kernel client from then on (`--provisioner=auto`).
    v4_0_refused: Mutex<std::collections::BTreeSet<String>>,
}

/// A share the controller has worked on.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
struct Share {
    server: String,
    share: String,
    mount_options: String,
}

impl Share {
    fn key(&self) -> String {
        format!("{}:/{}", self.server, self.share)
    }

    fn target(&self) -> Result<Target, Error> {
        let o = MountOptions::parse(&self.mount_options)?;
        Ok(Target {
            server: self.server.clone(),
            export: format!("/{}", self.share),
            port: o.port,
            version: o.version,
            timeout: NFS_TIMEOUT,
        })
    }
}

/// The file in `--state-dir` that lists the known shares.
const SHARES_FILE: &str = "shares.json";

impl ControllerService {
    /// A controller that knows the shares listed in `config.state_dir`, if
    /// any. An unreadable list is logged and the controller starts without
    /// it (it is rewritten on the next new share): volumes are never lost
    /// with it, they stay on their shares.
    pub fn new(config: crate::Config) -> Self {
        let mut shares = BTreeMap::new();
        if let Some(dir) = &config.state_dir {
            match load_shares(&dir.join(SHARES_FILE)) {
                Ok(list) => shares.extend(list.into_iter().map(|s| (s.key(), s))),
                Err(e) => warn!("{e}; starting with no known shares"),
            }
            info!(state_dir = %dir.display(), shares = shares.len(), "known shares loaded");
        }
        let mounts = match &config.kernel_mount_dir {
            Some(dir) => kernel::Mounts::new(dir.clone()),
            None => kernel::Mounts::default(),
        };
        Self { config, shares: Arc::new(Mutex::new(shares)), mounts: Arc::new(mounts), ..Default::default() }
    }

    /// Reads how many shares the controller knows (has made volumes or
    /// snapshots on, or loaded from `--state-dir`), for the metrics.
    pub fn known_shares_gauge(&self) -> impl Fn() -> i64 + Send + Sync + 'static {
        let shares = self.shares.clone();
        move || shares.lock().unwrap_or_else(|e| e.into_inner()).len() as i64
    }

    /// The driver-wide settings.
    pub fn config(&self) -> &crate::Config {
        &self.config
    }

    /// The share `server:/share`, reached with `mount_options` when given,
    /// else with the options it was last reached with (DeleteVolume carries
    /// none: csi-driver-nfs issue #260), else the driver's `--mount-options`.
    fn share(&self, server: &str, share: &str, mount_options: Option<&str>) -> Share {
        let mut s = Share {
            server: server.to_string(),
            share: share.trim_matches('/').to_string(),
            mount_options: String::new(),
        };
        let mut known = self.shares.lock().unwrap_or_else(|e| e.into_inner());
        s.mount_options = match mount_options.map(str::trim).filter(|o| !o.is_empty()) {
            Some(o) => o.to_string(),
            None => match known.get(&s.key()) {
                Some(k) => k.mount_options.clone(),
                None => self.config.mount_options.trim().to_string(),
            },
        };
        // The latest options win: they are the ones that worked last.
        if known.insert(s.key(), s.clone()).as_ref() != Some(&s) {
            self.save_shares(&known);
        }
        s
    }

    /// Makes `s` known (again), with the options it was just reached with.
    fn remember(&self, s: &Share) {
        let mut known = self.shares.lock().unwrap_or_else(|e| e.into_inner());
        if known.insert(s.key(), s.clone()).as_ref() != Some(s) {
            self.save_shares(&known);
        }
    }

    fn known_shares(&self) -> Vec<Share> {
        self.shares.lock().unwrap_or_else(|e| e.into_inner()).values().cloned().collect()
    }

    /// Forgets a share found to hold no records (so that a share whose
    /// volumes are all gone, or a test server long dead, does not stay in
    /// every listing for ever). A share seen again is known again.
    fn forget_share(&self, s: &Share) {
        let mut known = self.shares.lock().unwrap_or_else(|e| e.into_inner());
        if known.get(&s.key()) == Some(s) {
            known.remove(&s.key());
            info!(share = s.key(), "share holds no volumes or snapshots: no longer listed");
            self.save_shares(&known);
        }
    }

    /// Writes the list through a temp file and a rename (called with the
    /// list locked, so writers do not race). A failure is logged: the list
    /// only speeds up finding the shares again after a restart.
    fn save_shares(&self, known: &BTreeMap<String, Share>) {
        let Some(dir) = &self.config.state_dir else { return };
        let list: Vec<&Share> = known.values().collect();
        let r = std::fs::create_dir_all(dir).and_then(|()| {
            let tmp = dir.join(format!("{SHARES_FILE}.tmp"));
            std::fs::write(&tmp, serde_json::to_vec_pretty(&list).unwrap_or_default())?;
            std::fs::rename(&tmp, dir.join(SHARES_FILE))
        });
        if let Err(e) = r {
            warn!(state_dir = %dir.display(), "cannot save the known shares: {e}");
        }
    }

    /// The records in `dir` on every known share. A share with neither
    /// volume nor snapshot records, or whose export is gone, is forgotten.
    async fn records_everywhere(&self, dir: &'static str) -> Result<Vec<Value>, Error> {
        let mut all = Vec::new();
        for share in self.known_shares() {
            let found = self
                .on_share(&share, move |c| {
                    let recs = read_records(c, dir)?;
                    let other = if dir == VOLUMES_DIR { SNAPSHOTS_DIR } else { VOLUMES_DIR };
                    let empty = recs.is_empty() && !has_records(c, other)?;
                    Ok((recs, empty))
                })
                .await;
            match found {
                Ok((recs, empty)) => {
                    if empty {
                        self.forget_share(&share);
                    }
                    all.extend(recs);
                }
                Err(Error::NotFound(m)) => {
                    warn!(share = share.key(), "{m}");
                    self.forget_share(&share);
                }
                Err(e) => return Err(e),
            }
        }
        Ok(all)
    }
}

impl ControllerService {
    /// Runs `f` on `share` through the backend that can speak to it (see
    /// [`Provisioner`]), on a blocking thread, and maps the NFS error to
    /// the spec's code at this edge. Over libnfs, a server that refuses
    /// NFSv4.0 is remembered and reached through the kernel client (when
    /// there is one) from then on; otherwise it is FAILED_PRECONDITION,
    /// saying why.
    async fn on_share<T, F>(&self, share: &Share, f: F) -> Result<T, Error>
    where
        T: Send + 'static,
        F: Fn(&mut dyn ShareFs) -> Result<T, Error> + Send + Sync + 'static,
    {
        let target = share.target()?;
        let minor = MountOptions::parse(&share.mount_options)?.minor;
        let kernel_target = || kernel::Target { nfs: target.clone(), minor };
        let has_kernel = kernel::client_available();
        let use_kernel = match self.config.provisioner {
            Provisioner::Libnfs => false,
            Provisioner::Kernel if !has_kernel => {
                return Err(Error::FailedPrecondition(format!("--provisioner=kernel, but {}", kernel::NO_CLIENT)))
            }
            Provisioner::Kernel => true,
            Provisioner::Auto => {
                has_kernel
                    && (minor.is_some_and(|m| m >= 1)
                        || self.v4_0_refused.lock().unwrap_or_else(|e| e.into_inner()).contains(&share.key()))
            }
        };
        if use_kernel {
            return kernel::run(Arc::clone(&self.mounts), kernel_target(), f).await;
        }
        let f = Arc::new(f);
        let g = Arc::clone(&f);
        match nfs::run(target.clone(), move |c| Ok(g(c))).await {
            Ok(r) => r,
            Err(e) if e.is_version_refused() && self.config.provisioner == Provisioner::Auto && has_kernel => {
                info!(
                    share = share.key(),
                    "the server refuses NFSv4.0 (libnfs): provisioning through the kernel NFS client"
                );
                self.v4_0_refused.lock().unwrap_or_else(|e| e.into_inner()).insert(share.key());
                kernel::run(Arc::clone(&self.mounts), kernel_target(), move |c| f(c)).await
            }
            Err(e) if e.is_version_refused() => {
                let why = match self.config.provisioner {
                    Provisioner::Libnfs => "--provisioner=libnfs rules out the kernel NFS client".to_string(),
                    _ => kernel::NO_CLIENT.to_string(),
                };
                Err(Error::FailedPrecondition(format!(
                    "{e}: the server does not serve NFSv4.0 (nor is it asked for NFSv3), the controller's \
                     userspace NFS client (libnfs {}) speaks only NFSv3 and NFSv4.0, and {why}; run the \
                     controller where the kernel has an NFS client, or enable NFSv4.0 or NFSv3 on the server",
                    nfs::LIBNFS_VERSION
                )))
            }
            Err(e) => Err(e.into()),
        }
    }
}

fn load_shares(path: &std::path::Path) -> Result<Vec<Share>, String> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", path.display())),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(format!("{}: {e}", path.display())),
    }
}

/// Whether `dir` holds at least one record.
fn has_records(c: &mut dyn ShareFs, dir: &str) -> Result<bool, Error> {
    match c.read_dir(dir) {
        Ok(e) => Ok(e.iter().any(|e| e.name.ends_with(".json") && e.kind == nfs::FileType::File)),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e.into()),
    }
}

fn nfs_err(e: nfs::Error) -> Error {
    e.into()
}

fn now() -> (i64, i32) {
    let d = SystemTime::now().duration_since(UNIX_EPOCH).unwrap_or_default();
    (d.as_secs() as i64, d.subsec_nanos() as i32)
}

fn volume_record_path(name: &str) -> String {
    format!("{VOLUMES_DIR}/{}.json", escape(name))
}

fn snapshot_record_path(name: &str) -> String {
    format!("{SNAPSHOTS_DIR}/{}.json", escape(name))
}

/// Reads a JSON record; a missing one is `None`, an unreadable one an error.
fn read_record(c: &mut dyn ShareFs, path: &str) -> Result<Option<Value>, Error> {
    match c.read_file(path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| Error::Internal(format!("record {path} on {}: {e}", c.target()))),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e.into()),
    }
}

fn write_record(c: &mut dyn ShareFs, path: &str, v: &Value) -> Result<(), Error> {
    let dir = path.rsplit_once('/').map(|(d, _)| d).unwrap_or("");
    c.mkdir_all(dir, 0o755).map_err(nfs_err)?;
    c.write_file_atomic(path, v.to_string().as_bytes(), 0o644).map_err(nfs_err)
}

/// The records in `dir` (`*.json`), in name order.
fn read_records(c: &mut dyn ShareFs, dir: &str) -> Result<Vec<Value>, Error> {
    let entries = match c.read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.is_not_found() => return Ok(Vec::new()),
        Err(e) => return Err(e.into()),
    };
    let mut out = Vec::new();
    for e in entries.iter().filter(|e| e.name.ends_with(".json") && e.kind == nfs::FileType::File) {
        match read_record(c, &format!("{dir}/{}", e.name)) {
            Ok(Some(v)) => out.push(v),
            Ok(None) => {}
            Err(err) => warn!("skipping unreadable record: {err}"),
        }
    }
    Ok(out)
}

/// Copies every entry of directory `from` into the existing directory `to`.
fn copy_into(c: &mut dyn ShareFs, from: &str, to: &str) -> Result<u64, Error> {
    let mut bytes = 0;
    for e in c.read_dir(from).map_err(nfs_err)? {
        bytes += c.copy_tree(&format!("{from}/{}", e.name), &format!("{to}/{}", e.name)).map_err(nfs_err)?;
    }
    Ok(bytes)
}

fn str_field<'a>(v: &'a Value, key: &str) -> &'a str {
    v.get(key).and_then(Value::as_str).unwrap_or("")
}

fn volume_from_record(v: &Value) -> pb::Volume {
    let context = v
        .get("volume_context")
        .and_then(Value::as_object)
        .map(|m| m.iter().map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_string())).collect())
        .unwrap_or_default();
    pb::Volume {
        volume_id: str_field(v, "volume_id").to_string(),
        capacity_bytes: v.get("capacity_bytes").and_then(Value::as_i64).unwrap_or(0),
        volume_context: context,
        content_source: content_source_from(str_field(v, "content_source")),
        ..Default::default()
    }
}

fn snapshot_from_record(v: &Value) -> pb::Snapshot {
    pb::Snapshot {
        snapshot_id: str_field(v, "snapshot_id").to_string(),
        source_volume_id: str_field(v, "source_volume_id").to_string(),
        size_bytes: v.get("size_bytes").and_then(Value::as_i64).unwrap_or(0),
        creation_time: Some(prost_types::Timestamp {
            seconds: v.get("created").and_then(Value::as_i64).unwrap_or(0),
            nanos: v.get("created_nanos").and_then(Value::as_i64).unwrap_or(0) as i32,
        }),
        ready_to_use: true,
        ..Default::default()
    }
}

/// Where a clone's files come from, checked before anything is made.
enum Source {
    None,
    /// A directory on the same share.
    Dir(String),
}

fn resolve_source(key: &str, dest: &VolumeId) -> Result<Source, Error> {
    let Some((kind, id)) = key.split_once(':') else {
        return Ok(Source::None);
    };
    let same_share = |server: &str, share: &str, what: &str| {
        if server != dest.server || share != dest.share {
            return Err(Error::InvalidArgument(format!(
                "{what} is on {server}:/{share}; csi-nfs copies only within one share (the new volume is on {}:/{})",
                dest.server, dest.share
            )));
        }
        Ok(())
    };
    if kind == "snapshot" {
        let s = SnapshotId::parse(id).map_err(|_| Error::NotFound(format!("snapshot {id:?} not found")))?;
        if !s.is_ours() {
            return Err(Error::InvalidArgument(format!(
                "snapshot {id:?} is a csi-driver-nfs tarball; csi-nfs restores only its own directory snapshots"
            )));
        }
        same_share(&s.server, &s.share, "source snapshot")?;
        Ok(Source::Dir(s.path))
    } else {
        let v = VolumeId::parse(id).map_err(|_| Error::NotFound(format!("source volume {id:?} not found")))?;
        same_share(&v.server, &v.share, "source volume")?;
        Ok(Source::Dir(v.subdir))
    }
}

/// The parts of a CreateVolume that must match for a repeat to be the
/// same request.
fn request_key(p: &CreateParams, source: &str) -> Value {
    json!({
        "volume_id": p.id.to_string(),
        "mount_permissions": p.mount_permissions,
        "uid": p.uid,
        "gid": p.gid,
        "mount_options": p.mount_options,
        "content_source": source,
    })
}

fn capacity_key(c: &Capacity) -> Value {
    json!({ "required": c.required, "limit": c.limit })
}

/// The blocking body of CreateVolume.
fn create_volume(
    c: &mut dyn ShareFs,
    name: &str,
    p: &CreateParams,
    cap: Capacity,
    source_key: &str,
    source: &Source,
) -> Result<pb::Volume, Error> {
    let record_path = volume_record_path(name);
    let key = request_key(p, source_key);
    if let Some(rec) = read_record(c, &record_path)? {
        if rec.get("request") != Some(&key) {
            return Err(validate::already_exists(
                "volume",
                name,
                &format!("it was created with other parameters ({})", rec.get("request").unwrap_or(&Value::Null)),
            ));
        }
        if rec.get("capacity") != Some(&capacity_key(&cap)) {
            let had = rec.get("capacity_bytes").and_then(Value::as_i64).unwrap_or(0) as u64;
            if had == 0 || cap.check(had).is_err() {
                return Err(validate::already_exists("volume", name, &format!("it was created with {had} bytes")));
            }
        }
        // The directory may have been removed behind our back: make it again.
        if c.try_stat(&p.id.subdir).map_err(nfs_err)?.is_none() {
            warn!(volume = name, "record without directory: making the directory again");
        } else {
            return Ok(volume_from_record(&rec));
        }
    }
    // Source first: a missing source is NOT_FOUND with nothing made.
    if let Source::Dir(dir) = source {
        match c.try_stat(dir).map_err(nfs_err)? {
            Some(st) if st.kind == nfs::FileType::Dir => {}
            _ => return Err(Error::NotFound(format!("volume content source {source_key:?}: {dir} not found"))),
        }
    }
    let subdir = p.id.subdir.clone();
    if let Some((parent, _)) = subdir.rsplit_once('/') {
        c.mkdir_all(parent, 0o755).map_err(nfs_err)?;
    }
    let mode = p.mount_permissions.unwrap_or(0o755);
    let owner = (p.uid.is_some() || p.gid.is_some()).then(|| (p.uid.unwrap_or(0), p.gid.unwrap_or(0)));
    let created = match c.mkdir(&subdir, mode) {
        Ok(()) => true,
        // Root may not write here (squashed to nobody), the volume's owner may.
        Err(e) if matches!(e.errno, libc::EACCES | libc::EPERM) && owner.is_some() => {
            let (uid, gid) = owner.unwrap_or_default();
            mkdir_as_owner(c, &subdir, mode, uid, gid)?;
            true
        }
        // An existing directory is reused, as csi-driver-nfs does (a
        // shared subDir, or a retained one): it is never removed on failure.
        Err(e) if e.is_exists() => false,
        Err(e) => return Err(e.into()),
    };
    let finish = |c: &mut dyn ShareFs| -> Result<pb::Volume, Error> {
        if owner.is_some() {
            let st = c.stat(&subdir).map_err(nfs_err)?;
            let (uid, gid) = (p.uid.unwrap_or(st.uid), p.gid.unwrap_or(st.gid));
            let chowned = (st.uid, st.gid) == (uid, gid)
                || match c.chown(&subdir, uid, gid) {
                    // A squashing server may also "succeed" and leave another owner.
                    Ok(()) => {
                        let after = c.stat(&subdir).map_err(nfs_err)?;
                        (after.uid, after.gid) == (uid, gid)
                    }
                    Err(e) if matches!(e.errno, libc::EPERM | libc::EACCES | libc::EINVAL) => false,
                    Err(e) => return Err(e.into()),
                };
            if !chowned {
                // Root squash: root (seen as nobody) may not give the directory
                // away, but uid:gid may make its own. csi-driver-nfs fails here.
                if !created {
                    return Err(Error::PermissionDenied(format!(
                        "the server refused to give the existing directory {subdir} to {uid}:{gid} (root squash?)"
                    )));
                }
                c.rmdir(&subdir).map_err(nfs_err)?;
                mkdir_as_owner(c, &subdir, mode, uid, gid)?;
            }
        }
        if let Some(m) = p.mount_permissions {
            // Applied to the volume's directory, never the share root; as
            // the owner when root is squashed and the owner is someone else.
            if c.stat(&subdir).map_err(nfs_err)?.mode & 0o7777 != m {
                match (c.chmod(&subdir, m), owner) {
                    (Ok(()), _) => {}
                    (Err(e), Some((uid, gid))) if matches!(e.errno, libc::EPERM | libc::EACCES) => {
                        c.set_credentials(uid, gid);
                        let r = c.chmod(&subdir, m);
                        c.set_credentials(0, 0);
                        r.map_err(nfs_err)?;
                    }
                    (Err(e), _) => return Err(nfs_err(e)),
                }
            }
        }
        if let Source::Dir(dir) = source {
            copy_into(c, dir, &subdir)?;
        }
        let (secs, _) = now();
        let volume = pb::Volume {
            volume_id: p.id.to_string(),
            capacity_bytes: cap.required.unwrap_or(0) as i64,
            volume_context: p.volume_context(),
            content_source: content_source_from(source_key),
            ..Default::default()
        };
        let rec = json!({
            "name": name,
            "volume_id": volume.volume_id,
            "capacity_bytes": volume.capacity_bytes,
            "capacity": capacity_key(&cap),
            "volume_context": volume.volume_context,
            "content_source": source_key,
            "request": key,
            "created": secs,
        });
        write_record(c, &record_path, &rec)?;
        Ok(volume)
    };
    match finish(c) {
        Ok(v) => Ok(v),
        Err(e) => {
            if created {
                if let Err(rm) = c.remove_all(&subdir) {
                    warn!(volume = name, "CreateVolume failed and the directory could not be removed: {rm}");
                }
            }
            Err(e)
        }
    }
}

/// Removes a volume's directory and everything in it. On a squashing server
/// root cannot look into a 0770 directory of its owner: the owner can, so the
/// contents go as the owner (the directory itself then as whoever may).
fn remove_volume_dir(c: &mut dyn ShareFs, subdir: &str) -> Result<(), Error> {
    match c.remove_all(subdir) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.errno, libc::EACCES | libc::EPERM) => {
            let Some(st) = c.try_stat(subdir).map_err(nfs_err)? else { return Ok(()) };
            c.set_credentials(st.uid, st.gid);
            let as_owner = c.remove_all(subdir);
            c.set_credentials(0, 0);
            match as_owner {
                Ok(()) => Ok(()),
                // The contents are gone; the parent may be writable by root only.
                Err(_) => c.remove_all(subdir).map_err(|_| nfs_err(e)),
            }
        }
        Err(e) => Err(nfs_err(e)),
    }
}

/// Makes the directory `subdir` as `uid:gid` themselves,
/// for servers that squash root: the request goes out with uid:gid as its
/// AUTH_SYS identity, so the server makes the directory theirs. The parent
/// must be writable by uid:gid (the share root of a squashing export usually
/// is, since root cannot write it either).
fn mkdir_as_owner(c: &mut dyn ShareFs, subdir: &str, mode: u32, uid: u32, gid: u32) -> Result<(), Error> {
    c.set_credentials(uid, gid);
    let made = c.mkdir(subdir, mode).and_then(|()| c.chmod(subdir, mode));
    c.set_credentials(0, 0);
    made.map_err(|e| {
        Error::PermissionDenied(format!(
            "{e}: root is squashed on this export and {uid}:{gid} may not create {subdir} either; export the share \
             with no_root_squash, make its root writable by {uid}:{gid}, or leave out the uid/gid parameters"
        ))
    })?;
    let st = c.stat(subdir).map_err(nfs_err)?;
    if (st.uid, st.gid) != (uid, gid) {
        return Err(Error::PermissionDenied(format!(
            "the server left the volume directory {subdir} owned by {}:{} instead of {uid}:{gid} (all_squash?)",
            st.uid, st.gid
        )));
    }
    Ok(())
}

fn secret_mount_options(secrets: &HashMap<String, String>) -> Option<&str> {
    secrets.iter().find(|(k, _)| k.eq_ignore_ascii_case("mountOptions")).map(|(_, v)| v.as_str())
}

#[tonic::async_trait]
impl pb::controller_server::Controller for ControllerService {
    async fn controller_get_capabilities(
        &self,
        _req: Request<pb::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<pb::ControllerGetCapabilitiesResponse>, Status> {
        use csc::rpc::Type as T;
        let capabilities = csi_core::caps::controller([
            T::CreateDeleteVolume,
            T::CreateDeleteSnapshot,
            T::CloneVolume,
            T::ExpandVolume,
            T::SingleNodeMultiWriter,
            T::ListVolumes,
            T::ListSnapshots,
            T::GetCapacity,
        ]);
        Ok(Response::new(pb::ControllerGetCapabilitiesResponse { capabilities }))
    }

    async fn create_volume(
        &self,
        req: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::CreateVolumeResponse>, Status> {
        let req = req.into_inner();
        validate::require_name(&req.name)?;
        validate::require_capabilities(&req.volume_capabilities, &CapabilitySupport::SHARED_FILESYSTEM)?;
        let cap = validate::capacity_range(req.capacity_range.as_ref())?;
        let p = CreateParams::parse(&req.name, &req.parameters, &self.config.mount_options)?;
        let source_key = content_source_key(req.volume_content_source.as_ref());
        let source = resolve_source(&source_key, &p.id)?;
        let _lock = self.locks.lock("volume", &req.name).await;
        let share = self.share(&p.id.server, &p.id.share, Some(&p.mount_options));
        let started = std::time::Instant::now();
        let name = req.name.clone();
        let volume = self.on_share(&share, move |c| create_volume(c, &name, &p, cap, &source_key, &source)).await?;
        // A listing that ran meanwhile may have found the share still empty
        // and forgotten it: it holds a record now.
        self.remember(&share);
        info!(name = req.name, volume_id = volume.volume_id, ms = started.elapsed().as_millis() as u64, "volume ready");
        Ok(Response::new(pb::CreateVolumeResponse { volume: Some(volume) }))
    }

    async fn delete_volume(
        &self,
        req: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeResponse>, Status> {
        let req = req.into_inner();
        validate::require_volume_id(&req.volume_id)?;
        let id = match VolumeId::parse(&req.volume_id) {
            Ok(id) => id,
            Err(e) => {
                // csi-driver-nfs's choice, kept: an ID we never made names
                // nothing to delete, and success keeps DeleteVolume idempotent.
                warn!(volume_id = req.volume_id, "DeleteVolume of an unparsable ID: nothing to do ({e})");
                return Ok(Response::new(pb::DeleteVolumeResponse {}));
            }
        };
        if id.subdir.split('/').any(|c| c == ".." || c == crate::volume::META_DIR) {
            warn!(
                volume_id = req.volume_id,
                "DeleteVolume of an ID pointing at metadata or outside the share: nothing to do"
            );
            return Ok(Response::new(pb::DeleteVolumeResponse {}));
        }
        let name = id.name().to_string();
        let _lock = self.locks.lock("volume", &name).await;
        let share = self.share(&id.server, &id.share, secret_mount_options(&req.secrets));
        let on_delete = id.on_delete.unwrap_or_default();
        let volume_id = req.volume_id.clone();
        self.on_share(&share, move |c| {
            match on_delete {
                OnDelete::Delete => remove_volume_dir(c, &id.subdir)?,
                OnDelete::Retain => {}
                OnDelete::Archive => {
                    if c.try_stat(&id.subdir).map_err(nfs_err)?.is_some() {
                        let mut to = id.archived_subdir();
                        if c.try_stat(&to).map_err(nfs_err)?.is_some() {
                            // Never overwrite an earlier archive.
                            to = format!("{to}-{}", now().0);
                        }
                        if let Some((parent, _)) = to.rsplit_once('/') {
                            c.mkdir_all(parent, 0o755).map_err(nfs_err)?;
                        }
                        c.rename(&id.subdir, &to).map_err(nfs_err)?;
                        info!(volume_id, archived = to, "volume archived");
                    }
                }
            }
            // Only the record of this volume: a shared subDir's other
            // volumes keep theirs.
            let rec = volume_record_path(&name);
            if let Some(r) = read_record(c, &rec)? {
                if str_field(&r, "volume_id") == volume_id {
                    match c.unlink(&rec) {
                        Err(e) if !e.is_not_found() => return Err(e.into()),
                        _ => {}
                    }
                }
            }
            Ok(())
        })
        .await?;
        info!(volume_id = req.volume_id, on_delete = on_delete.as_str(), "volume deleted");
        Ok(Response::new(pb::DeleteVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<pb::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<pb::ValidateVolumeCapabilitiesResponse>, Status> {
        let req = req.into_inner();
        validate::require_volume_id(&req.volume_id)?;
        if req.volume_capabilities.is_empty() {
            return Err(Error::InvalidArgument("volume capabilities missing in request".into()).into());
        }
        let id = VolumeId::parse(&req.volume_id)?;
        let share = self.share(&id.server, &id.share, req.volume_context.get("mountOptions").map(String::as_str));
        let dir = id.subdir.clone();
        let exists = self.on_share(&share, move |c| c.try_stat(&dir).map_err(nfs_err)).await?;
        if !matches!(exists, Some(st) if st.kind == nfs::FileType::Dir) {
            return Err(validate::volume_not_found(&req.volume_id).into());
        }
        Ok(Response::new(validate::confirm_capabilities(req, &CapabilitySupport::SHARED_FILESYSTEM)))
    }

    async fn list_volumes(
        &self,
        req: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let req = req.into_inner();
        let mut all: Vec<pb::Volume> =
            self.records_everywhere(VOLUMES_DIR).await?.iter().map(volume_from_record).collect();
        all.sort_by(|a, b| a.volume_id.cmp(&b.volume_id));
        let (vols, next_token) = page(all, |v| v.volume_id.as_str(), req.max_entries, &req.starting_token)?;
        let entries =
            vols.into_iter().map(|v| pb::list_volumes_response::Entry { volume: Some(v), status: None }).collect();
        Ok(Response::new(pb::ListVolumesResponse { entries, next_token }))
    }

    async fn get_capacity(
        &self,
        req: Request<pb::GetCapacityRequest>,
    ) -> Result<Response<pb::GetCapacityResponse>, Status> {
        let req = req.into_inner();
        let get = |k: &str| req.parameters.iter().find(|(key, _)| key.eq_ignore_ascii_case(k)).map(|(_, v)| v.as_str());
        // Every GetCapacityRequest field is OPTIONAL in the spec: with no
        // server there is no share to measure, and 0 ("unknown") is the answer.
        let Some(server) = get("server").filter(|s| !s.is_empty()) else {
            return Ok(Response::new(pb::GetCapacityResponse::default()));
        };
        let share = self.share(server, get("share").unwrap_or(""), get("mountOptions"));
        let fs = self.on_share(&share, |c| c.statvfs("").map_err(nfs_err)).await?;
        Ok(Response::new(pb::GetCapacityResponse {
            available_capacity: fs.available_bytes.min(i64::MAX as u64) as i64,
            maximum_volume_size: None,
            minimum_volume_size: None,
        }))
    }

    async fn create_snapshot(
        &self,
        req: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::CreateSnapshotResponse>, Status> {
        let req = req.into_inner();
        validate::require_name(&req.name)?;
        if req.source_volume_id.is_empty() {
            return Err(Error::InvalidArgument("source volume id missing in request".into()).into());
        }
        let src = VolumeId::parse(&req.source_volume_id)
            .map_err(|_| Error::NotFound(format!("source volume {:?} not found", req.source_volume_id)))?;
        let mut mount_options = None;
        for (k, v) in &req.parameters {
            let key = k.to_ascii_lowercase();
            if !key.starts_with("csi.storage.k8s.io/")
                && !crate::volume::SNAPSHOT_PARAMETERS.iter().any(|p| p.eq_ignore_ascii_case(k))
            {
                return Err(Error::InvalidArgument(format!("invalid snapshot parameter {k:?}")).into());
            }
            match key.as_str() {
                "server" if !v.is_empty() && v != &src.server => {
                    return Err(Error::InvalidArgument(format!(
                        "snapshots are kept on the source volume's server {}, not {v}",
                        src.server
                    ))
                    .into())
                }
                "share" if !v.is_empty() && v.trim_matches('/') != src.share => {
                    return Err(Error::InvalidArgument(format!(
                        "snapshots are kept on the source volume's share /{}, not {v}",
                        src.share
                    ))
                    .into())
                }
                "server" | "share" => {}
                "mountoptions" => mount_options = Some(v.as_str()),
                key if key.starts_with("csi.storage.k8s.io/") => {}
                _ => return Err(Error::InvalidArgument(format!("invalid snapshot parameter {k:?}")).into()),
            }
        }
        let _lock = self.locks.lock("snapshot", &req.name).await;
        let share = self.share(&src.server, &src.share, mount_options);
        let id = SnapshotId {
            server: src.server.clone(),
            share: src.share.clone(),
            name: req.name.clone(),
            path: SnapshotId::path_for(&req.name),
            src: src.name().to_string(),
        };
        let (name, source_volume_id) = (req.name.clone(), req.source_volume_id.clone());
        let started = std::time::Instant::now();
        let snapshot = self
            .on_share(&share, move |c| {
                let rec_path = snapshot_record_path(&name);
                if let Some(rec) = read_record(c, &rec_path)? {
                    if str_field(&rec, "source_volume_id") != source_volume_id {
                        return Err(validate::already_exists(
                            "snapshot",
                            &name,
                            &format!("it is a snapshot of {}", str_field(&rec, "source_volume_id")),
                        ));
                    }
                    return Ok(snapshot_from_record(&rec));
                }
                match c.try_stat(&src.subdir).map_err(nfs_err)? {
                    Some(st) if st.kind == nfs::FileType::Dir => {}
                    _ => {
                        return Err(Error::NotFound(format!("source volume {source_volume_id:?}: directory not found")))
                    }
                }
                c.mkdir_all(SNAPSHOTS_DIR, 0o755).map_err(nfs_err)?;
                // A copy left by a crash before its record was written.
                c.remove_all(&id.path).map_err(nfs_err)?;
                let made = c.copy_tree(&src.subdir, &id.path).map_err(nfs_err).and_then(|bytes| {
                    let (secs, nanos) = now();
                    let rec = json!({
                        "name": name,
                        "snapshot_id": id.to_string(),
                        "source_volume_id": source_volume_id,
                        "created": secs,
                        "created_nanos": nanos,
                        "size_bytes": bytes,
                    });
                    write_record(c, &rec_path, &rec)?;
                    Ok(snapshot_from_record(&rec))
                });
                if made.is_err() {
                    let _ = c.remove_all(&id.path);
                }
                made
            })
            .await?;
        self.remember(&share);
        info!(
            name = req.name,
            snapshot_id = snapshot.snapshot_id,
            ms = started.elapsed().as_millis() as u64,
            "snapshot ready"
        );
        Ok(Response::new(pb::CreateSnapshotResponse { snapshot: Some(snapshot) }))
    }

    async fn delete_snapshot(
        &self,
        req: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        let req = req.into_inner();
        validate::require_snapshot_id(&req.snapshot_id)?;
        let Ok(id) = SnapshotId::parse(&req.snapshot_id) else {
            warn!(snapshot_id = req.snapshot_id, "DeleteSnapshot of an unparsable ID: nothing to do");
            return Ok(Response::new(pb::DeleteSnapshotResponse {}));
        };
        let _lock = self.locks.lock("snapshot", &id.name).await;
        let share = self.share(&id.server, &id.share, secret_mount_options(&req.secrets));
        let snapshot_id = req.snapshot_id.clone();
        self.on_share(&share, move |c| {
            if id.is_ours() {
                c.remove_all(&id.path).map_err(nfs_err)?;
            } else if id.path == id.name {
                // csi-driver-nfs's snapshot: <share>/<name>/<src>.tar.gz. Only
                // a directory holding nothing else is removed, so a made-up ID
                // cannot delete a volume.
                let tarball = format!("{}.tar.gz", id.src);
                match c.read_dir(&id.path) {
                    Ok(entries) if entries.iter().all(|e| e.name == tarball) => {
                        c.remove_all(&id.path).map_err(nfs_err)?
                    }
                    Ok(_) => {
                        return Err(Error::FailedPrecondition(format!(
                            "snapshot {snapshot_id}: {} holds more than {tarball}; not removing it",
                            id.path
                        )))
                    }
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e.into()),
                }
            } else {
                warn!(snapshot_id, "DeleteSnapshot of an ID neither csi-nfs nor csi-driver-nfs makes: nothing to do");
                return Ok(());
            }
            let rec = snapshot_record_path(&id.name);
            if let Some(r) = read_record(c, &rec)? {
                if str_field(&r, "snapshot_id") == snapshot_id {
                    match c.unlink(&rec) {
                        Err(e) if !e.is_not_found() => return Err(e.into()),
                        _ => {}
                    }
                }
            }
            Ok(())
        })
        .await?;
        info!(snapshot_id = req.snapshot_id, "snapshot deleted");
        Ok(Response::new(pb::DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let req = req.into_inner();
        let mut all = Vec::new();
        if !req.snapshot_id.is_empty() {
            // One snapshot, looked up where its ID says it is.
            if let Ok(id) = SnapshotId::parse(&req.snapshot_id) {
                let share = self.share(&id.server, &id.share, secret_mount_options(&req.secrets));
                let name = id.name.clone();
                if let Some(rec) = self.on_share(&share, move |c| read_record(c, &snapshot_record_path(&name))).await? {
                    if str_field(&rec, "snapshot_id") == req.snapshot_id {
                        all.push(snapshot_from_record(&rec));
                    }
                }
            }
        } else {
            all.extend(self.records_everywhere(SNAPSHOTS_DIR).await?.iter().map(snapshot_from_record));
        }
        if !req.source_volume_id.is_empty() {
            all.retain(|s| s.source_volume_id == req.source_volume_id);
        }
        all.sort_by(|a, b| a.snapshot_id.cmp(&b.snapshot_id));
        let (snaps, next_token) = page(all, |s| s.snapshot_id.as_str(), req.max_entries, &req.starting_token)?;
        let entries = snaps.into_iter().map(|s| pb::list_snapshots_response::Entry { snapshot: Some(s) }).collect();
        Ok(Response::new(pb::ListSnapshotsResponse { entries, next_token }))
    }

    async fn controller_expand_volume(
        &self,
        req: Request<pb::ControllerExpandVolumeRequest>,
    ) -> Result<Response<pb::ControllerExpandVolumeResponse>, Status> {
        let req = req.into_inner();
        validate::require_volume_id(&req.volume_id)?;
        let cap = validate::capacity_range(req.capacity_range.as_ref())?;
        if req.capacity_range.is_none() {
            return Err(Error::InvalidArgument("capacity range missing in request".into()).into());
        }
        let id = VolumeId::parse(&req.volume_id)?;
        let share = self.share(&id.server, &id.share, secret_mount_options(&req.secrets));
        let dir = id.subdir.clone();
        let exists = self.on_share(&share, move |c| c.try_stat(&dir).map_err(nfs_err)).await?;
        if !matches!(exists, Some(st) if st.kind == nfs::FileType::Dir) {
            return Err(validate::volume_not_found(&req.volume_id).into());
        }
        // NFS has no per-volume size: the new size is only bookkeeping.
        let size = cap.required.or(cap.limit).unwrap_or(0);
        Ok(Response::new(pb::ControllerExpandVolumeResponse {
            capacity_bytes: size as i64,
            node_expansion_required: false,
        }))
    }
}
