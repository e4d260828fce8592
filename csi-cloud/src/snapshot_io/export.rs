//! A block device or image file into a new EBS snapshot.
//!
//! Which blocks are sent:
//!
//! | block at index i | no parent | parent with its manifest | parent, no manifest |
//! |---|---|---|---|
//! | all zeros, parent has no data at i | skipped | skipped | skipped |
//! | all zeros, parent has data at i | (n/a) | sent (zeros overwrite it) | sent |
//! | data, same SHA-256 as the parent's block i | (n/a) | skipped (unchanged) | sent |
//! | data, otherwise | sent | sent | sent |
//!
//! Without the parent's manifest, "the parent has data at i" comes from
//! ListSnapshotBlocks of the parent (indices only, no data), and every
//! non-zero block is sent: telling an unchanged block would need its data.
//!
//! After CompleteSnapshot the export waits (unless told not to) until EC2
//! says the snapshot is `completed` ([`super::completion`]).

use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::{ChecksumAggregationMethod, ChecksumAlgorithm, Tag};
use serde::Serialize;
use sha2::{Digest, Sha256};

use super::progress::Progress;
use super::{b64, check_block_size, for_each_bounded, is_zero, sha256, Manifest, BLOCK_SIZE, GIB};
use crate::aws::{classify, Clients};
use crate::Error;

/// What to export.
#[derive(Clone, Debug)]
pub struct ExportOptions {
    /// The block device or image file.
    pub source: PathBuf,
    /// The snapshot this one is incremental against.
    pub parent: Option<String>,
    /// The parent's manifest (from its export), to skip unchanged blocks.
    pub parent_manifest: Option<Manifest>,
    /// The snapshot's size in GiB; default: the source's size rounded up.
    pub volume_size_gib: Option<i64>,
    /// The snapshot's description.
    pub description: String,
    /// Tags for the snapshot.
    pub tags: Vec<(String, String)>,
    /// Blocks in flight at once.
    pub concurrency: usize,
    /// Minutes EBS waits for CompleteSnapshot before failing the snapshot.
    pub timeout_minutes: i32,
    /// Draw a progress bar on stderr.
    pub progress: bool,
    /// After CompleteSnapshot, wait at most this long until the snapshot is
    /// `completed`; `None`: return at once with CompleteSnapshot's status.
    pub wait: Option<Duration>,
}

/// What an export did.
#[derive(Clone, Debug, Serialize)]
pub struct ExportReport {
    /// The new snapshot.
    pub snapshot_id: String,
    /// The parent, if incremental.
    pub parent_snapshot_id: Option<String>,
    /// The snapshot's size in GiB.
    pub volume_size_gib: i64,
    /// Blocks read from the source.
    pub blocks_read: u64,
    /// Blocks sent (PutSnapshotBlock calls that succeeded): CompleteSnapshot's ChangedBlocksCount.
    pub blocks_sent: u64,
    /// All-zero blocks not sent.
    pub blocks_zero_skipped: u64,
    /// Blocks not sent because the parent's manifest has the same checksum.
    pub blocks_unchanged_skipped: u64,
    /// The snapshot's state when the export returned: `completed` after the
    /// wait; without it, CompleteSnapshot's answer (`pending` or `completed`).
    pub state: String,
    /// DescribeSnapshots polls until `completed` (0: not waited).
    pub completion_polls: u32,
    /// Seconds of that wait.
    pub wait_seconds: f64,
    /// Wall time, seconds, the wait included.
    pub seconds: f64,
    /// Source bytes read per second over `seconds`, MiB/s.
    pub read_mib_per_s: f64,
    /// The new snapshot's manifest (not serialized into the report).
    #[serde(skip)]
    pub manifest: Manifest,
}

/// Decides, for one block, what the parent already has there.
#[derive(Debug, Default)]
struct Parent {
    /// Index → checksum, from the manifest.
    checksums: std::collections::BTreeMap<u32, String>,
    /// Indices with data, from the manifest or ListSnapshotBlocks.
    present: std::collections::BTreeSet<u32>,
}

/// The outcome for one block.
enum Outcome {
    Zero,
    Unchanged,
    Sent { index: u32, digest: [u8; 32], zero: bool },
}

/// Exports `opts.source` into a new snapshot (EBS direct APIs), then waits
/// for it to complete (EC2 DescribeSnapshots) if `opts.wait` says so.
pub async fn export(clients: &Clients, opts: ExportOptions) -> Result<ExportReport, Error> {
    let ebs = &clients.ebs;
    let started = Instant::now();
    let src = opts.source.display().to_string();
    let file = std::fs::File::open(&opts.source).map_err(|e| csi_core::Error::io(format!("open {src}"), e))?;
    let size = source_size(&file).map_err(|e| csi_core::Error::io(format!("size of {src}"), e))?;
    if size == 0 {
        return Err(csi_core::Error::InvalidArgument(format!("{src} is empty")).into());
    }
    let need_gib = size.div_ceil(GIB) as i64;
    let volume_size_gib = opts.volume_size_gib.unwrap_or(need_gib);
    if volume_size_gib < need_gib {
        return Err(csi_core::Error::InvalidArgument(format!(
            "{src} is {size} bytes: a snapshot of {volume_size_gib} GiB cannot hold it (at least {need_gib})"
        ))
        .into());
    }
    let parent = load_parent(ebs, &opts, volume_size_gib).await?;

    let mut start =
        ebs.start_snapshot().volume_size(volume_size_gib).description(&opts.description).timeout(opts.timeout_minutes);
    if let Some(p) = &opts.parent {
        start = start.parent_snapshot_id(p);
    }
    for (k, v) in &opts.tags {
        start = start.tags(Tag::builder().key(k).value(v).build());
    }
    let started_snap = start.send().await.map_err(|e| classify(format!("start a snapshot of {src}"), e))?;
    let snapshot_id = started_snap
        .snapshot_id()
        .ok_or_else(|| csi_core::Error::Internal("StartSnapshot answered no snapshot ID".into()))?
        .to_string();
    check_block_size(&format!("start snapshot {snapshot_id}"), started_snap.block_size())?;
    tracing::info!(snapshot = %snapshot_id, source = %src, size, parent = ?opts.parent, "export started");

    let blocks = size.div_ceil(BLOCK_SIZE);
    let progress = Progress::new(opts.progress, &format!("export {src} → {snapshot_id}"), blocks * BLOCK_SIZE);
    let file = Arc::new(file);
    let parent = Arc::new(parent);
    let sent = Arc::new(AtomicU64::new(0));
    let outcomes: Arc<Mutex<Vec<Outcome>>> = Arc::default();
    let done = for_each_bounded(0..blocks, opts.concurrency, |index| {
        let (ebs, file, parent, sent, outcomes, progress) = (
            ebs.clone(),
            Arc::clone(&file),
            Arc::clone(&parent),
            Arc::clone(&sent),
            Arc::clone(&outcomes),
            progress.clone(),
        );
        let (snap, src) = (snapshot_id.clone(), src.clone());
        async move {
            let index = u32::try_from(index).map_err(|_| {
                csi_core::Error::InvalidArgument(format!("{src}: block {index} is past EBS's last index"))
            })?;
            let off = u64::from(index) * BLOCK_SIZE;
            let len = (size - off).min(BLOCK_SIZE) as usize;
            let data = tokio::task::spawn_blocking(move || {
                let mut b = vec![0u8; BLOCK_SIZE as usize];
                file.read_exact_at(&mut b[..len], off).map(|()| b)
            })
            .await
            .map_err(|e| csi_core::Error::Internal(format!("read worker: {e}")))?
            .map_err(|e| csi_core::Error::io(format!("read block {index} of {src}"), e))?;
            let zero = is_zero(&data);
            let outcome = if zero && !parent.present.contains(&index) {
                Outcome::Zero
            } else {
                let digest = sha256(&data);
                let checksum = b64(&digest);
                if !zero && parent.checksums.get(&index) == Some(&checksum) {
                    Outcome::Unchanged
                } else {
                    ebs.put_snapshot_block()
                        .snapshot_id(&snap)
                        .block_index(index as i32)
                        .data_length(BLOCK_SIZE as i32)
                        .block_data(ByteStream::from(data))
                        .checksum(checksum)
                        .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
                        .send()
                        .await
                        .map_err(|e| classify(format!("put block {index} of {snap}"), e))?;
                    sent.fetch_add(1, Ordering::Relaxed);
                    Outcome::Sent { index, digest, zero }
                }
            };
            outcomes.lock().unwrap_or_else(|p| p.into_inner()).push(outcome);
            progress.inc(len as u64);
            Ok(())
        }
    })
    .await;
    progress.finish();
    if let Err(e) = done {
        tracing::warn!(snapshot = %snapshot_id, "export failed; EBS fails the unfinished snapshot after {} min", opts.timeout_minutes);
        return Err(e);
    }

    // The new snapshot's manifest: the parent's, with this export's changes.
    let outcomes = std::mem::take(&mut *outcomes.lock().unwrap_or_else(|p| p.into_inner()));
    let mut manifest = Manifest {
        snapshot_id: snapshot_id.clone(),
        block_size: BLOCK_SIZE,
        volume_size_gib,
        blocks: parent.checksums.clone(),
    };
    let (mut zero_skipped, mut unchanged) = (0, 0);
    let mut digests = std::collections::BTreeMap::new();
    for o in outcomes {
        match o {
            Outcome::Zero => zero_skipped += 1,
            Outcome::Unchanged => unchanged += 1,
            Outcome::Sent { index, digest, zero } => {
                digests.insert(index, digest);
                if zero {
                    manifest.blocks.remove(&index);
                } else {
                    manifest.blocks.insert(index, b64(&digest));
                }
            }
        }
    }
    // Blocks past the source's end that the parent had stay the parent's.
    // LINEAR: the SHA-256 of the sent blocks' raw checksums in index order.
    let mut linear = Sha256::new();
    for d in digests.values() {
        linear.update(d);
    }
    let blocks_sent = sent.load(Ordering::Relaxed);
    let completed = ebs
        .complete_snapshot()
        .snapshot_id(&snapshot_id)
        .changed_blocks_count(blocks_sent as i32)
        .checksum(b64(&linear.finalize()))
        .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
        .checksum_aggregation_method(ChecksumAggregationMethod::ChecksumAggregationLinear)
        .send()
        .await
        .map_err(|e| classify(format!("complete snapshot {snapshot_id}"), e))?;
    let mut state = completed.status().map(|s| s.as_str().to_string()).unwrap_or_default();
    let (mut completion_polls, mut wait_seconds) = (0, 0.0);
    if let Some(timeout) = opts.wait {
        let waited = Instant::now();
        completion_polls = super::completion::wait_completed(&clients.ec2, &snapshot_id, timeout).await?;
        wait_seconds = waited.elapsed().as_secs_f64();
        state = "completed".into();
    }
    let seconds = started.elapsed().as_secs_f64();
    tracing::info!(snapshot = %snapshot_id, blocks_sent, zero_skipped, unchanged, %state, seconds, "export complete");
    Ok(ExportReport {
        snapshot_id,
        parent_snapshot_id: opts.parent.clone(),
        volume_size_gib,
        blocks_read: blocks,
        blocks_sent,
        blocks_zero_skipped: zero_skipped,
        blocks_unchanged_skipped: unchanged,
        state,
        completion_polls,
        wait_seconds,
        seconds,
        read_mib_per_s: size as f64 / (1 << 20) as f64 / seconds.max(1e-9),
        manifest,
    })
}

/// The size of a file or block device (a block device's metadata says 0).
fn source_size(f: &std::fs::File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = f;
    let end = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(end)
}

/// What the parent holds: from its manifest, or its block list.
async fn load_parent(ebs: &aws_sdk_ebs::Client, opts: &ExportOptions, size_gib: i64) -> Result<Parent, Error> {
    let Some(parent_id) = &opts.parent else {
        if opts.parent_manifest.is_some() {
            return Err(csi_core::Error::InvalidArgument("a parent manifest needs its parent snapshot".into()).into());
        }
        return Ok(Parent::default());
    };
    if let Some(m) = &opts.parent_manifest {
        if &m.snapshot_id != parent_id {
            return Err(csi_core::Error::InvalidArgument(format!(
                "the manifest is of {}, not of the parent {parent_id}",
                m.snapshot_id
            ))
            .into());
        }
        if m.volume_size_gib > size_gib {
            return Err(csi_core::Error::InvalidArgument(format!(
                "the parent {parent_id} is {} GiB, more than this snapshot's {size_gib}",
                m.volume_size_gib
            ))
            .into());
        }
        return Ok(Parent { checksums: m.blocks.clone(), present: m.blocks.keys().copied().collect() });
    }
    let mut present = std::collections::BTreeSet::new();
    let mut pages = ebs.list_snapshot_blocks().snapshot_id(parent_id).max_results(10_000).into_paginator().send();
    while let Some(page) = pages.next().await {
        let page = page.map_err(|e| classify(format!("list the blocks of the parent {parent_id}"), e))?;
        check_block_size(&format!("list blocks of {parent_id}"), page.block_size())?;
        present.extend(page.blocks().iter().filter_map(|b| b.block_index()).map(|i| i as u32));
    }
    Ok(Parent { checksums: Default::default(), present })
}
