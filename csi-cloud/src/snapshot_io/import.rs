//! An EBS snapshot onto a block device or image file, block by block.
//!
//! ListSnapshotBlocks gives every block the snapshot holds (its own and
//! those inherited from its parents) with a short-lived token;
//! GetSnapshotBlock fetches each with its SHA-256, which is checked before
//! the block is written at `index × 512 KiB`. Blocks the snapshot does not
//! hold are zeros in EBS and are not written: the target must read as
//! zeros there, as a new EBS volume, a new sparse file or a discarded
//! device does.
//!
//! Incremental (`onto_parent`): the target already holds the snapshot's
//! parent (or any earlier snapshot of its lineage), so only what differs is
//! moved: ListChangedBlocks(parent, snapshot) gives the indices whose block
//! differs, with the snapshot's token where it has a block there; those are
//! fetched and written as above, and an index the snapshot has no block for
//! (no second token: zeros in EBS) is written with zeros.

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use serde::Serialize;

use super::progress::Progress;
use super::{b64, check_block_size, for_each_bounded, sha256, BLOCK_SIZE, GIB};
use crate::aws::classify;
use crate::Error;

/// What to import.
#[derive(Clone, Debug)]
pub struct ImportOptions {
    /// The snapshot.
    pub snapshot_id: String,
    /// The block device or image file (a missing file is created, sparse).
    pub target: PathBuf,
    /// Blocks in flight at once.
    pub concurrency: usize,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// The snapshot the target already holds (an ancestor of `snapshot_id`):
    /// only the blocks that differ from it are written.
    pub onto_parent: Option<String>,
}

/// What an import did.
#[derive(Clone, Debug, Serialize)]
pub struct ImportReport {
    /// The snapshot.
    pub snapshot_id: String,
    /// Its size in GiB.
    pub volume_size_gib: i64,
    /// The snapshot the target held before, for an incremental import.
    pub onto_parent: Option<String>,
    /// Blocks fetched, checked and written.
    pub blocks_written: u64,
    /// Blocks written as zeros (incremental: the snapshot has no block where its parent had one).
    pub blocks_zeroed: u64,
    /// Wall time, seconds.
    pub seconds: f64,
    /// Bytes written per second, MiB/s.
    pub write_mib_per_s: f64,
}

/// Imports `opts.snapshot_id` onto `opts.target`.
pub async fn import(ebs: &aws_sdk_ebs::Client, opts: ImportOptions) -> Result<ImportReport, Error> {
    let started = Instant::now();
    let snap = opts.snapshot_id.clone();
    let target = opts.target.display().to_string();

    // Index and the snapshot's token; no token: zeros.
    let (blocks, volume_size_gib) = match &opts.onto_parent {
        None => list_blocks(ebs, &snap).await?,
        Some(parent) => list_changed(ebs, parent, &snap).await?,
    };
    let bytes_needed = blocks.iter().map(|(i, _)| (u64::from(*i) + 1) * BLOCK_SIZE).max().unwrap_or(0);

    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(&opts.target)
        .map_err(|e| csi_core::Error::io(format!("open {target}"), e))?;
    let is_file = file.metadata().map(|m| m.is_file()).unwrap_or(false);
    let size = {
        use std::io::{Seek, SeekFrom};
        (&file).seek(SeekFrom::End(0)).map_err(|e| csi_core::Error::io(format!("size of {target}"), e))?
    };
    let want = (volume_size_gib.max(0) as u64 * GIB).max(bytes_needed);
    if size < want {
        if is_file {
            file.set_len(want).map_err(|e| csi_core::Error::io(format!("extend {target}"), e))?;
        } else if size < bytes_needed {
            return Err(csi_core::Error::InvalidArgument(format!(
                "{target} is {size} bytes; {snap} has data up to byte {bytes_needed}"
            ))
            .into());
        }
    }
    tracing::info!(snapshot = %snap, target = %target, blocks = blocks.len(), "import started");

    let progress = Progress::new(opts.progress, &format!("import {snap} → {target}"), blocks.len() as u64 * BLOCK_SIZE);
    let file = Arc::new(file);
    let written = Arc::new(AtomicU64::new(0));
    let zeroed = Arc::new(AtomicU64::new(0));
    let done = for_each_bounded(blocks, opts.concurrency, |(index, token)| {
        let (ebs, file, written, zeroed, progress, snap, target) = (
            ebs.clone(),
            Arc::clone(&file),
            Arc::clone(&written),
            Arc::clone(&zeroed),
            progress.clone(),
            snap.clone(),
            target.clone(),
        );
        async move {
            let Some(token) = token else {
                let zeros = vec![0u8; BLOCK_SIZE as usize];
                tokio::task::spawn_blocking(move || file.write_all_at(&zeros, u64::from(index) * BLOCK_SIZE))
                    .await
                    .map_err(|e| csi_core::Error::Internal(format!("write worker: {e}")))?
                    .map_err(|e| csi_core::Error::io(format!("zero block {index} of {target}"), e))?;
                zeroed.fetch_add(1, Ordering::Relaxed);
                progress.inc(BLOCK_SIZE);
                return Ok(());
            };
            let out = ebs
                .get_snapshot_block()
                .snapshot_id(&snap)
                .block_index(index as i32)
                .block_token(token)
                .send()
                .await
                .map_err(|e| classify(format!("get block {index} of {snap}"), e))?;
            let want = out
                .checksum
                .clone()
                .ok_or_else(|| csi_core::Error::Internal(format!("block {index} of {snap}: EBS sent no checksum")))?;
            let data = out
                .block_data
                .collect()
                .await
                .map_err(|e| csi_core::Error::Unavailable(format!("read block {index} of {snap}: {e}")))?
                .into_bytes();
            if data.len() as u64 != BLOCK_SIZE {
                return Err(csi_core::Error::Internal(format!(
                    "block {index} of {snap} is {} bytes, not {BLOCK_SIZE}",
                    data.len()
                ))
                .into());
            }
            let got = b64(&sha256(&data));
            if got != want {
                return Err(Error::Integrity(format!(
                    "block {index} of {snap}: SHA-256 {got} does not match EBS's {want}; nothing written for it"
                )));
            }
            tokio::task::spawn_blocking(move || file.write_all_at(&data, u64::from(index) * BLOCK_SIZE))
                .await
                .map_err(|e| csi_core::Error::Internal(format!("write worker: {e}")))?
                .map_err(|e| csi_core::Error::io(format!("write block {index} to {target}"), e))?;
            written.fetch_add(1, Ordering::Relaxed);
            progress.inc(BLOCK_SIZE);
            Ok(())
        }
    })
    .await;
    progress.finish();
    done?;
    let f = Arc::clone(&file);
    tokio::task::spawn_blocking(move || f.sync_all())
        .await
        .map_err(|e| csi_core::Error::Internal(format!("sync worker: {e}")))?
        .map_err(|e| csi_core::Error::io(format!("sync {target}"), e))?;
    let blocks_written = written.load(Ordering::Relaxed);
    let blocks_zeroed = zeroed.load(Ordering::Relaxed);
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(snapshot = %snap, parent = ?opts.onto_parent, blocks_written, blocks_zeroed, seconds, "import complete");
    Ok(ImportReport {
        snapshot_id: snap,
        volume_size_gib,
        onto_parent: opts.onto_parent,
        blocks_written,
        blocks_zeroed,
        seconds,
        write_mib_per_s: ((blocks_written + blocks_zeroed) * BLOCK_SIZE) as f64 / (1 << 20) as f64 / seconds.max(1e-9),
    })
}

/// Every block `snap` holds (ListSnapshotBlocks, all pages), and its size in GiB.
async fn list_blocks(ebs: &aws_sdk_ebs::Client, snap: &str) -> Result<(Vec<(u32, Option<String>)>, i64), Error> {
    let mut blocks = Vec::new();
    let mut volume_size_gib = 0;
    let mut pages = ebs.list_snapshot_blocks().snapshot_id(snap).max_results(10_000).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify(format!("list the blocks of {snap}"), e))?;
        check_block_size(&format!("list blocks of {snap}"), page.block_size())?;
        volume_size_gib = page.volume_size().unwrap_or(volume_size_gib);
        for b in page.blocks() {
            let (Some(i), Some(t)) = (b.block_index(), b.block_token()) else {
                return Err(csi_core::Error::Internal(format!("{snap}: a listed block without index or token")).into());
            };
            blocks.push((i as u32, Some(t.to_string())));
        }
    }
    Ok((blocks, volume_size_gib))
}

/// The blocks where `snap` differs from `parent` (ListChangedBlocks, all
/// pages), each with `snap`'s token, or none where `snap` has no block
/// (zeros); and `snap`'s size in GiB.
async fn list_changed(
    ebs: &aws_sdk_ebs::Client,
    parent: &str,
    snap: &str,
) -> Result<(Vec<(u32, Option<String>)>, i64), Error> {
    let mut blocks = Vec::new();
    let mut volume_size_gib = 0;
    let mut pages = ebs
        .list_changed_blocks()
        .first_snapshot_id(parent)
        .second_snapshot_id(snap)
        .max_results(10_000)
        .into_paginator()
        .send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify(format!("list the blocks of {snap} that differ from {parent}"), e))?;
        check_block_size(&format!("changed blocks of {snap}"), page.block_size())?;
        volume_size_gib = page.volume_size().unwrap_or(volume_size_gib);
        for b in page.changed_blocks() {
            let Some(i) = b.block_index() else {
                return Err(csi_core::Error::Internal(format!("{snap}: a changed block without index")).into());
            };
            blocks.push((i as u32, b.second_block_token().map(str::to_string)));
        }
    }
    Ok((blocks, volume_size_gib))
}
