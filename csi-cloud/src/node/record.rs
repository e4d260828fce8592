//! The stage record: what NodeStageVolume did (device, staging path,
//! filesystem), kept under `--state-dir` so that NodePublish, NodeExpand,
//! NodeGetVolumeStats and a restarted plugin know it without asking EC2.
//!
//! One JSON file per volume, `<state-dir>/<volume>.json`, written through a
//! temp file, fsync and a rename: a crash leaves the old record or the new
//! one. A record of zero bytes (the rename reached the disk before the data
//! when the machine died) reads as no record: its mounts died with the machine.

use std::io::Write;
use std::path::{Path, PathBuf};

use csi_core::Error;
use serde::{Deserialize, Serialize};

/// One staged volume.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageRecord {
    /// The EBS volume ID.
    pub volume_id: String,
    /// The device node found for it (symlinks resolved).
    pub device: String,
    /// The staging path (normalized).
    pub staging_path: PathBuf,
    /// `ext4` or `xfs`; empty for a raw block volume.
    pub fs_type: String,
    /// Mounted read-only (a reader-only access mode).
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

    /// A raw block volume (no filesystem, nothing mounted at stage).
    pub fn is_block(&self) -> bool {
        self.fs_type.is_empty()
    }
}

/// The records under one directory.
#[derive(Clone, Debug)]
pub struct Records {
    dir: PathBuf,
}

impl Records {
    /// Records under `dir` (created on first save).
    pub fn new(dir: impl Into<PathBuf>) -> Records {
        Records { dir: dir.into() }
    }

    fn path(&self, volume_id: &str) -> PathBuf {
        // Volume IDs are checked (`vol-` + hex) before they get here.
        self.dir.join(format!("{volume_id}.json"))
    }

    /// Saves `rec` durably.
    pub fn save(&self, rec: &StageRecord) -> Result<(), Error> {
        std::fs::create_dir_all(&self.dir).map_err(|e| Error::io(format!("create {}", self.dir.display()), e))?;
        let path = self.path(&rec.volume_id);
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec_pretty(rec).map_err(|e| Error::Internal(format!("encode record: {e}")))?;
        let write = || -> std::io::Result<()> {
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(&body)?;
            f.sync_all()?;
            std::fs::rename(&tmp, &path)?;
            std::fs::File::open(&self.dir)?.sync_all()
        };
        write().map_err(|e| Error::io(format!("save {}", path.display()), e))
    }

    /// The record of `volume_id`, if any.
    pub fn load(&self, volume_id: &str) -> Result<Option<StageRecord>, Error> {
        let path = self.path(volume_id);
        match std::fs::read(&path) {
            Ok(b) if b.is_empty() => Ok(None),
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .map_err(|e| Error::Internal(format!("{}: not a stage record: {e}", path.display()))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
        }
    }

    /// Forgets `volume_id` (no record is fine).
    pub fn remove(&self, volume_id: &str) -> Result<(), Error> {
        let path = self.path(volume_id);
        match std::fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(Error::io(format!("remove {}", path.display()), e))
            }
            _ => Ok(()),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_remove() {
        let d = tempfile::tempdir().unwrap();
        let r = Records::new(d.path().join("state"));
        assert_eq!(r.load("vol-1").unwrap(), None);
        let rec = StageRecord {
            volume_id: "vol-1".into(),
            device: "/dev/nvme1n1".into(),
            staging_path: "/staging".into(),
            fs_type: "ext4".into(),
            readonly: false,
        };
        r.save(&rec).unwrap();
        assert_eq!(r.load("vol-1").unwrap(), Some(rec));
        std::fs::write(r.path("vol-2"), b"").unwrap();
        assert_eq!(r.load("vol-2").unwrap(), None, "an empty record is no record");
        std::fs::write(r.path("vol-3"), b"{").unwrap();
        assert!(r.load("vol-3").is_err());
        r.remove("vol-1").unwrap();
        r.remove("vol-1").unwrap();
        assert_eq!(r.load("vol-1").unwrap(), None);
    }
}
