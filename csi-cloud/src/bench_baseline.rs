//! `csi-cloud bench-baseline` (hidden): the plain-SDK side of `conformance
//! bench csi-cloud` (docs/csi-cloud.md, "Benchmark").
//!
//! The bench compares the controller's calls and the snapshot CLI with the
//! same requests made directly with the AWS SDK. The SDK lives in this crate
//! only (issue #15), so its side runs here, as one long-lived process that
//! the bench drives over stdin/stdout: one JSON request a line in, one JSON
//! answer a line out, each with the milliseconds its AWS calls took, timed
//! inside this process (no process start or pipe in the number, as the
//! controller's side is timed around its gRPC call to one running driver).
//!
//! Each operation is the plain request and the wait a user of the SDK
//! needs (CreateVolume and a poll until `available`, AttachVolume and a poll
//! until `attached`, ...), with the controller's backoff (250 ms doubling);
//! with `"checks": true` it also makes the lookups the controller makes
//! before acting (the name-tag lookup that makes CreateVolume idempotent,
//! the volume, instance and instance-type reads before an attach, ...), so
//! the two can be compared on the same work as well.
//!
//! `export` and `import` are the sequential loops the snapshot CLI is
//! measured against: one block at a time, read, SHA-256, PutSnapshotBlock
//! (zero blocks skipped, as the CLI does), CompleteSnapshot and the wait
//! for `completed`; ListSnapshotBlocks, GetSnapshotBlock, the SHA-256 check,
//! write, fsync.
#![allow(clippy::print_stdout)]

use std::io::{BufRead, Write};
use std::os::unix::fs::FileExt;
use std::time::{Duration, Instant};

use aws_sdk_ebs::primitives::ByteStream;
use aws_sdk_ebs::types::{ChecksumAggregationMethod, ChecksumAlgorithm};
use aws_sdk_ec2::error::ProvideErrorMetadata;
use aws_sdk_ec2::types::{
    Filter, InstanceType, Placement, ResourceType, Tag, TagSpecification, Volume, VolumeAttachmentState, VolumeState,
    VolumeType,
};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::aws::Clients;
use crate::snapshot_io::{b64, is_zero, sha256, BLOCK_SIZE, GIB};
use crate::{TAG_SNAPSHOT_NAME, TAG_VOLUME_NAME};

/// The controller's poll: 250 ms, doubling to 4 s (controller::POLL_FIRST/POLL_MAX).
const POLL_FIRST: Duration = Duration::from_millis(250);
const POLL_MAX: Duration = Duration::from_secs(4);
/// The longest any wait here may take.
const WAIT_LIMIT: Duration = Duration::from_secs(120);

type R<T> = Result<T, String>;

/// Runs `csi-cloud bench-baseline [--aws-endpoint-url URL]` (args without the
/// program and subcommand); returns the exit code.
pub fn run(args: impl IntoIterator<Item = std::ffi::OsString>) -> i32 {
    let args: Vec<String> = args.into_iter().map(|a| a.to_string_lossy().into_owned()).collect();
    let endpoint = match args.as_slice() {
        [] => None,
        [flag, url] if flag == "--aws-endpoint-url" => Some(url.clone()),
        _ => {
            eprintln!("usage: csi-cloud bench-baseline [--aws-endpoint-url URL] (JSON requests on stdin)");
            return 2;
        }
    };
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("csi-cloud bench-baseline: tokio runtime: {e}");
            return 1;
        }
    };
    let clients = match rt.block_on(Clients::load(endpoint.as_deref())) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("csi-cloud bench-baseline: {e}");
            return 1;
        }
    };
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { return 1 };
        if line.trim().is_empty() {
            continue;
        }
        let answer = match serde_json::from_str::<Value>(&line) {
            Ok(req) => match rt.block_on(handle(&clients, &req)) {
                Ok(mut v) => {
                    v["ok"] = json!(true);
                    v
                }
                Err(e) => json!({"ok": false, "error": e}),
            },
            Err(e) => json!({"ok": false, "error": format!("not JSON: {e}")}),
        };
        if writeln!(out, "{answer}").and_then(|()| out.flush()).is_err() {
            return 1;
        }
    }
    0
}

fn s<'a>(req: &'a Value, key: &str) -> R<&'a str> {
    req[key].as_str().ok_or_else(|| format!("{key} missing"))
}

/// Every volume matching `filter`, across EC2's pages (as the controller reads them).
async fn volumes(c: &Clients, filter: Filter, what: &str) -> Result<Vec<Volume>, String> {
    let mut all = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let out = c
            .ec2
            .describe_volumes()
            .filters(filter.clone())
            .set_next_token(token.take())
            .send()
            .await
            .map_err(err(what))?;
        all.extend(out.volumes().iter().cloned());
        match out.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => return Ok(all),
        }
    }
}

fn err<E: std::fmt::Debug>(what: &str) -> impl Fn(E) -> String + '_ {
    move |e| format!("{what}: {e:?}")
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

async fn handle(c: &Clients, req: &Value) -> R<Value> {
    let checks = req["checks"].as_bool().unwrap_or(false);
    match s(req, "op")? {
        "run_instances" => {
            let n = req["n"].as_i64().unwrap_or(1) as i32;
            let out = c
                .ec2
                .run_instances()
                .image_id(s(req, "image")?)
                .min_count(n)
                .max_count(n)
                .instance_type(InstanceType::M5Large)
                .placement(Placement::builder().availability_zone(s(req, "zone")?).build())
                .send()
                .await
                .map_err(err("run instances"))?;
            let ids: Vec<&str> = out.instances().iter().filter_map(|i| i.instance_id()).collect();
            Ok(json!({"instances": ids}))
        }
        "create_volume" => {
            let (name, zone, cluster) = (s(req, "name")?, s(req, "zone")?, s(req, "cluster_tag")?);
            let t = Instant::now();
            if checks {
                let filter = Filter::builder().name(format!("tag:{TAG_VOLUME_NAME}")).values(name).build();
                let found = volumes(c, filter, "look up by name").await?;
                if found.iter().any(|v| v.state() != Some(&VolumeState::Deleted)) {
                    return Err(format!("volume {name} exists"));
                }
            }
            let tags = TagSpecification::builder()
                .resource_type(ResourceType::Volume)
                .tags(Tag::builder().key(TAG_VOLUME_NAME).value(name).build())
                .tags(Tag::builder().key(cluster).value("true").build())
                .build();
            let out = c
                .ec2
                .create_volume()
                .availability_zone(zone)
                .size(req["gib"].as_i64().unwrap_or(1) as i32)
                .volume_type(VolumeType::Gp3)
                .encrypted(false)
                .client_token(crate::controller::client_token(name, 0))
                .tag_specifications(tags)
                .send()
                .await
                .map_err(err("create volume"))?;
            let id = out.volume_id().unwrap_or_default().to_string();
            wait(|| async {
                let v = describe(c, &id).await?;
                Ok(v.is_some_and(|v| v.state() != Some(&VolumeState::Creating)))
            })
            .await?;
            Ok(json!({"ms": ms(t), "volume_id": id}))
        }
        "publish" => {
            let (vol, node, device) = (s(req, "volume_id")?, s(req, "instance_id")?, s(req, "device")?);
            let t = Instant::now();
            if checks {
                describe(c, vol).await?.ok_or("volume not found")?;
                let out =
                    c.ec2.describe_instances().instance_ids(node).send().await.map_err(err("describe instance"))?;
                // The type's attachment limit: the controller asks once per type (it never changes).
                out.reservations().iter().flat_map(|r| r.instances()).next().ok_or("instance not found")?;
            }
            c.ec2
                .attach_volume()
                .volume_id(vol)
                .instance_id(node)
                .device(device)
                .send()
                .await
                .map_err(err("attach"))?;
            wait(|| async {
                let v = describe(c, vol).await?.ok_or("volume gone")?;
                Ok(v.attachments()
                    .iter()
                    .any(|a| a.instance_id() == Some(node) && a.state() == Some(&VolumeAttachmentState::Attached)))
            })
            .await?;
            Ok(json!({"ms": ms(t)}))
        }
        "unpublish" => {
            let (vol, node) = (s(req, "volume_id")?, s(req, "instance_id")?);
            let t = Instant::now();
            if checks {
                describe(c, vol).await?.ok_or("volume not found")?;
                c.ec2.describe_instances().instance_ids(node).send().await.map_err(err("describe instance"))?;
            }
            c.ec2.detach_volume().volume_id(vol).instance_id(node).send().await.map_err(err("detach"))?;
            wait(|| async {
                let Some(v) = describe(c, vol).await? else { return Ok(true) };
                Ok(!v
                    .attachments()
                    .iter()
                    .any(|a| a.instance_id() == Some(node) && a.state() != Some(&VolumeAttachmentState::Detached)))
            })
            .await?;
            Ok(json!({"ms": ms(t)}))
        }
        "delete_volume" => {
            let t = Instant::now();
            c.ec2.delete_volume().volume_id(s(req, "volume_id")?).send().await.map_err(err("delete volume"))?;
            Ok(json!({"ms": ms(t)}))
        }
        "get_volume" => {
            let t = Instant::now();
            describe(c, s(req, "volume_id")?).await?.ok_or("volume not found")?;
            Ok(json!({"ms": ms(t)}))
        }
        "list_volumes" => {
            let filter = Filter::builder().name(format!("tag:{}", s(req, "cluster_tag")?)).values("true").build();
            let t = Instant::now();
            let n = volumes(c, filter, "list volumes").await?.len();
            Ok(json!({"ms": ms(t), "volumes": n}))
        }
        "create_snapshot" => {
            let (name, vol, cluster) = (s(req, "name")?, s(req, "volume_id")?, s(req, "cluster_tag")?);
            let t = Instant::now();
            if checks {
                let filters = [
                    Filter::builder().name(format!("tag:{TAG_SNAPSHOT_NAME}")).values(name).build(),
                    Filter::builder().name(format!("tag:{cluster}")).values("true").build(),
                ];
                let out = c
                    .ec2
                    .describe_snapshots()
                    .owner_ids("self")
                    .set_filters(Some(filters.to_vec()))
                    .send()
                    .await
                    .map_err(err("look up snapshot"))?;
                if !out.snapshots().is_empty() {
                    return Err(format!("snapshot {name} exists"));
                }
                describe(c, vol).await?.ok_or("volume not found")?;
            }
            let tags = TagSpecification::builder()
                .resource_type(ResourceType::Snapshot)
                .tags(Tag::builder().key(TAG_SNAPSHOT_NAME).value(name).build())
                .tags(Tag::builder().key(cluster).value("true").build())
                .build();
            let out = c
                .ec2
                .create_snapshot()
                .volume_id(vol)
                .description(format!("bench snapshot {name}"))
                .tag_specifications(tags)
                .send()
                .await
                .map_err(err("create snapshot"))?;
            Ok(json!({"ms": ms(t), "snapshot_id": out.snapshot_id()}))
        }
        "delete_snapshot" => {
            let t = Instant::now();
            c.ec2.delete_snapshot().snapshot_id(s(req, "snapshot_id")?).send().await.map_err(err("delete snapshot"))?;
            Ok(json!({"ms": ms(t)}))
        }
        "export" => export_sequential(c, s(req, "source")?).await,
        "import" => import_sequential(c, s(req, "snapshot_id")?, s(req, "target")?).await,
        other => Err(format!("unknown op {other:?}")),
    }
}

/// DescribeVolumes of one volume; `None` when EC2 does not know it.
async fn describe(c: &Clients, id: &str) -> R<Option<aws_sdk_ec2::types::Volume>> {
    match c.ec2.describe_volumes().volume_ids(id).send().await {
        Ok(out) => Ok(out.volumes().iter().find(|v| v.volume_id() == Some(id)).cloned()),
        Err(e) if e.as_service_error().and_then(ProvideErrorMetadata::code) == Some("InvalidVolume.NotFound") => {
            Ok(None)
        }
        Err(e) => Err(format!("describe volume {id}: {e:?}")),
    }
}

/// Polls `done` with the controller's backoff until it says true.
async fn wait<F, Fut>(mut done: F) -> R<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = R<bool>>,
{
    let start = Instant::now();
    let mut pause = POLL_FIRST;
    while !done().await? {
        if start.elapsed() > WAIT_LIMIT {
            return Err("wait: timed out".into());
        }
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL_MAX);
    }
    Ok(())
}

/// The sequential export: one block at a time.
async fn export_sequential(c: &Clients, source: &str) -> R<Value> {
    let file = std::fs::File::open(source).map_err(|e| format!("open {source}: {e}"))?;
    let size = file.metadata().map_err(|e| format!("{source}: {e}"))?.len();
    let t = Instant::now();
    let started = c
        .ebs
        .start_snapshot()
        .volume_size(size.div_ceil(GIB) as i64)
        .description("bench baseline")
        .timeout(60)
        .send()
        .await
        .map_err(|e| format!("start snapshot: {e:?}"))?;
    let snap = started.snapshot_id().ok_or("no snapshot ID")?.to_string();
    let mut linear = Sha256::new();
    let mut sent = 0;
    let mut buf = vec![0u8; BLOCK_SIZE as usize];
    for index in 0..size.div_ceil(BLOCK_SIZE) {
        let off = index * BLOCK_SIZE;
        let len = (size - off).min(BLOCK_SIZE) as usize;
        buf.fill(0);
        file.read_exact_at(&mut buf[..len], off).map_err(|e| format!("read block {index}: {e}"))?;
        if is_zero(&buf) {
            continue;
        }
        let digest = sha256(&buf);
        linear.update(digest);
        c.ebs
            .put_snapshot_block()
            .snapshot_id(&snap)
            .block_index(index as i32)
            .data_length(BLOCK_SIZE as i32)
            .block_data(ByteStream::from(buf.clone()))
            .checksum(b64(&digest))
            .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
            .send()
            .await
            .map_err(|e| format!("put block {index}: {e:?}"))?;
        sent += 1;
    }
    c.ebs
        .complete_snapshot()
        .snapshot_id(&snap)
        .changed_blocks_count(sent)
        .checksum(b64(&linear.finalize()))
        .checksum_algorithm(ChecksumAlgorithm::ChecksumAlgorithmSha256)
        .checksum_aggregation_method(ChecksumAggregationMethod::ChecksumAggregationLinear)
        .send()
        .await
        .map_err(|e| format!("complete snapshot: {e:?}"))?;
    crate::snapshot_io::completion::wait_completed(&c.ec2, &snap, WAIT_LIMIT).await.map_err(|e| e.to_string())?;
    Ok(json!({"ms": ms(t), "snapshot_id": snap, "blocks_sent": sent}))
}

/// The sequential import: one block at a time.
async fn import_sequential(c: &Clients, snap: &str, target: &str) -> R<Value> {
    let t = Instant::now();
    let mut blocks = Vec::new();
    let mut size_gib = 0;
    let mut token: Option<String> = None;
    loop {
        let out = c
            .ebs
            .list_snapshot_blocks()
            .snapshot_id(snap)
            .max_results(10_000)
            .set_next_token(token.take())
            .send()
            .await
            .map_err(|e| format!("list blocks: {e:?}"))?;
        size_gib = out.volume_size().unwrap_or(size_gib);
        blocks.extend(out.blocks().iter().filter_map(|b| Some((b.block_index()?, b.block_token()?.to_string()))));
        match out.next_token() {
            Some(t) if !t.is_empty() => token = Some(t.to_string()),
            _ => break,
        }
    }
    let file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(target)
        .map_err(|e| format!("open {target}: {e}"))?;
    file.set_len(size_gib.max(0) as u64 * GIB).map_err(|e| format!("size {target}: {e}"))?;
    for (index, token) in &blocks {
        let out = c
            .ebs
            .get_snapshot_block()
            .snapshot_id(snap)
            .block_index(*index)
            .block_token(token)
            .send()
            .await
            .map_err(|e| format!("get block {index}: {e:?}"))?;
        let want = out.checksum.clone().unwrap_or_default();
        let data = out.block_data.collect().await.map_err(|e| format!("read block {index}: {e}"))?.into_bytes();
        if b64(&sha256(&data)) != want {
            return Err(format!("block {index}: checksum mismatch"));
        }
        file.write_all_at(&data, *index as u64 * BLOCK_SIZE).map_err(|e| format!("write block {index}: {e}"))?;
    }
    file.sync_all().map_err(|e| format!("sync {target}: {e}"))?;
    Ok(json!({"ms": ms(t), "blocks_written": blocks.len()}))
}
