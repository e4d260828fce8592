//! Snapshot export and import through the EBS direct APIs: a block device
//! or image file becomes an EBS snapshot (StartSnapshot, PutSnapshotBlock,
//! CompleteSnapshot), and a snapshot becomes a device again (ListSnapshotBlocks,
//! GetSnapshotBlock), without attaching a volume to an instance. This is
//! how a volume's data moves to another zone, region or backend.
//!
//! - [`export`]: reads the source in [`BLOCK_SIZE`] blocks, skips zero
//!   blocks and, against a parent snapshot, the blocks the parent's
//!   [`Manifest`] says are unchanged; sends the rest with their SHA-256;
//!   then waits until EC2 says the snapshot is `completed` ([`completion`]);
//! - [`import`]: lists the snapshot's blocks (or, onto a device holding its
//!   parent, only those that differ: ListChangedBlocks), fetches them,
//!   checks each against its SHA-256 and writes it at its offset;
//! - [`cli`]: `csi-cloud snapshot export|import`.
//!
//! Transfers run [`DEFAULT_CONCURRENCY`] blocks at a time (`--concurrency`),
//! so memory stays at concurrency × 512 KiB whatever the volume's size.
//!
//! Why not the `coldsnap` crate (awslabs), which uploads and downloads
//! snapshots with the SDK: it has no parent snapshot and no way to tell
//! an unchanged block without reading the parent, and it pins its own SDK
//! and CLI dependencies. Its shape (bounded concurrent block workers, zero
//! blocks skipped, the LINEAR checksum at completion) is the one used here.

pub mod cli;
pub mod completion;
pub mod export;
pub mod import;
mod progress;

use std::collections::BTreeMap;

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use export::{export, ExportOptions, ExportReport};
pub use import::{import, ImportOptions, ImportReport};

/// The EBS direct APIs' block: 512 KiB, the only size EBS uses.
pub const BLOCK_SIZE: u64 = 512 * 1024;

/// Snapshot sizes are whole GiB.
pub const GIB: u64 = 1 << 30;

/// Blocks in flight at once, by default.
pub const DEFAULT_CONCURRENCY: usize = 16;

/// The most blocks in flight `--concurrency` accepts.
pub const MAX_CONCURRENCY: usize = 256;

/// Minutes EBS keeps an export open before it fails it (StartSnapshot's `Timeout`).
pub const DEFAULT_TIMEOUT_MINUTES: i32 = 60;

/// What an export wrote, block by block: the SHA-256 of every non-zero
/// block the snapshot holds (its own and those it inherits from its
/// parent). The next export against this snapshot reads it to skip the
/// blocks whose checksum has not changed, without downloading a byte of
/// the parent. JSON, written next to the export (`--manifest-out`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// The snapshot these blocks are.
    pub snapshot_id: String,
    /// Bytes per block (always [`BLOCK_SIZE`]).
    pub block_size: u64,
    /// The snapshot's volume size in GiB.
    pub volume_size_gib: i64,
    /// Block index → base64 SHA-256 of the block's data, for every block that is not all zeros.
    pub blocks: BTreeMap<u32, String>,
}

impl Manifest {
    /// Reads a manifest file.
    pub fn load(path: &std::path::Path) -> Result<Manifest, crate::Error> {
        let b = std::fs::read(path).map_err(|e| csi_core::Error::io(format!("read manifest {}", path.display()), e))?;
        let m: Manifest = serde_json::from_slice(&b).map_err(|e| {
            csi_core::Error::InvalidArgument(format!("{}: not a snapshot manifest: {e}", path.display()))
        })?;
        if m.block_size != BLOCK_SIZE {
            return Err(csi_core::Error::InvalidArgument(format!(
                "{}: block size {} (expected {BLOCK_SIZE})",
                path.display(),
                m.block_size
            ))
            .into());
        }
        Ok(m)
    }

    /// Writes it (through a temp file and a rename).
    pub fn save(&self, path: &std::path::Path) -> Result<(), crate::Error> {
        let body = serde_json::to_vec(self).map_err(|e| csi_core::Error::Internal(format!("encode manifest: {e}")))?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, body)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| csi_core::Error::io(format!("write manifest {}", path.display()), e).into())
    }
}

/// The SHA-256 of `data`, raw.
pub fn sha256(data: &[u8]) -> [u8; 32] {
    Sha256::digest(data).into()
}

/// Base64, as the EBS APIs carry checksums.
pub fn b64(raw: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(raw)
}

/// Is the block all zeros? (OR-fold in chunks: it vectorizes.)
pub fn is_zero(data: &[u8]) -> bool {
    data.chunks(64 << 10).all(|c| c.iter().fold(0u8, |a, b| a | b) == 0)
}

/// Runs `work` on every item, at most `concurrency` (at least 1) at a time, as export and
/// import move blocks. At the first error seen it starts nothing more, waits for what is still
/// running, and returns that error; a worker's panic is INTERNAL.
async fn for_each_bounded<T, F, Fut>(
    items: impl IntoIterator<Item = T>,
    concurrency: usize,
    mut work: F,
) -> Result<(), crate::Error>
where
    F: FnMut(T) -> Fut,
    Fut: std::future::Future<Output = Result<(), crate::Error>> + Send + 'static,
{
    fn flatten(r: Result<Result<(), crate::Error>, tokio::task::JoinError>) -> Result<(), crate::Error> {
        r.map_err(|e| crate::Error::from(csi_core::Error::Internal(format!("block worker: {e}"))))?
    }
    let sem = std::sync::Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let mut first_error = None;
    for item in items {
        let permit = std::sync::Arc::clone(&sem).acquire_owned().await.expect("the semaphore is never closed");
        // Collect finished work as we go, so an error stops the loop early.
        while let Some(done) = tasks.try_join_next() {
            if let Err(e) = flatten(done) {
                first_error.get_or_insert(e);
            }
        }
        if first_error.is_some() {
            break;
        }
        let job = work(item);
        tasks.spawn(async move {
            let _permit = permit;
            job.await
        });
    }
    while let Some(done) = tasks.join_next().await {
        if let Err(e) = flatten(done) {
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

/// Checks the block size EBS answered.
fn check_block_size(what: &str, got: Option<i32>) -> Result<(), crate::Error> {
    match got {
        Some(b) if b as u64 == BLOCK_SIZE => Ok(()),
        other => Err(csi_core::Error::Internal(format!(
            "{what}: EBS answered a block size of {other:?}, not {BLOCK_SIZE}: this build reads and writes 512 KiB blocks"
        ))
        .into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_and_zero_blocks() {
        // SHA-256 of the empty string, base64.
        assert_eq!(b64(&sha256(b"")), "47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=");
        let mut b = vec![0u8; BLOCK_SIZE as usize];
        assert!(is_zero(&b));
        b[BLOCK_SIZE as usize - 1] = 1;
        assert!(!is_zero(&b));
    }

    #[test]
    fn manifests_round_trip_and_refuse_another_block_size() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("m.json");
        let mut m =
            Manifest { snapshot_id: "snap-1".into(), block_size: BLOCK_SIZE, volume_size_gib: 1, ..Default::default() };
        m.blocks.insert(3, b64(&sha256(b"x")));
        m.save(&p).unwrap();
        assert_eq!(Manifest::load(&p).unwrap(), m);
        Manifest { block_size: 512, ..m }.save(&p).unwrap();
        assert!(Manifest::load(&p).unwrap_err().to_string().contains("block size 512"));
    }
}
