//! An EBS snapshot onto a block device or image file, block by block.
//!
//! ListSnapshotBlocks gives every block the snapshot holds (its own and
//! those inherited from its parents) with a short-lived token;
//! GetSnapshotBlock fetches each with its SHA-256, which is checked before
//! the block is written at `index × 512 KiB`. Blocks the snapshot does not
//! hold are zeros in EBS and are not written: the target must read as
//! zeros there, as a new EBS volume, a new sparse file or a discarded
//! device does.

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
}

/// What an import did.
#[derive(Clone, Debug, Serialize)]
pub struct ImportReport {
    /// The snapshot.
    pub snapshot_id: String,
    /// Its size in GiB.
    pub volume_size_gib: i64,
    /// Blocks fetched, checked and written.
    pub blocks_written: u64,
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

    let mut blocks: Vec<(u32, String)> = Vec::new();
    let mut volume_size_gib = 0;
    let mut pages = ebs.list_snapshot_blocks().snapshot_id(&snap).max_results(10_000).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify(format!("list the blocks of {snap}"), e))?;
        check_block_size(&format!("list blocks of {snap}"), page.block_size())?;
        volume_size_gib = page.volume_size().unwrap_or(volume_size_gib);
        for b in page.blocks() {
            let (Some(i), Some(t)) = (b.block_index(), b.block_token()) else {
                return Err(csi_core::Error::Internal(format!("{snap}: a listed block without index or token")).into());
            };
            blocks.push((i as u32, t.to_string()));
        }
    }
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
    let done = for_each_bounded(blocks, opts.concurrency, |(index, token)| {
        let (ebs, file, written, progress, snap, target) =
            (ebs.clone(), Arc::clone(&file), Arc::clone(&written), progress.clone(), snap.clone(), target.clone());
        async move {
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
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(snapshot = %snap, blocks_written, seconds, "import complete");
    Ok(ImportReport {
        snapshot_id: snap,
        volume_size_gib,
        blocks_written,
        seconds,
        write_mib_per_s: (blocks_written * BLOCK_SIZE) as f64 / (1 << 20) as f64 / seconds.max(1e-9),
    })
}
