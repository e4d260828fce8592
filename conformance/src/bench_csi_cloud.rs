//! `conformance bench csi-cloud`: csi-cloud's controller calls and snapshot
//! transfers against the same requests made with the plain AWS SDK, to the
//! same emulator (moto on loopback), in one run.
//!
//! Three processes, started here: moto (`testkit::moto`, through its EBS
//! launcher: EBS's block size, snapshots `pending` until completed), the
//! driver (`csi-cloud --mode controller` on a unix socket) and the SDK side,
//! `csi-cloud bench-baseline`: the AWS SDK is built into csi-cloud only
//! (issue #15), so the plain calls run in that crate, in one long-lived
//! process driven over a pipe, each call timed inside it. Our calls are
//! timed here around the gRPC call to the running driver. Neither number
//! contains a process start.
//!
//! Controller rows: each round, each side makes one volume and takes it
//! through its life (create, publish to its own instance, get, list,
//! snapshot, unpublish, delete the snapshot, delete the volume); the sides
//! take turns going first, round by round. The SDK side runs twice: the
//! plain request and its wait (the call a user of the SDK makes), and the
//! same with the lookups the controller makes before acting (the name-tag
//! lookup that makes CreateVolume idempotent, the volume, instance and
//! instance type read before an attach, ...), which is the same work.
//!
//! Throughput rows: an image of `--size-mib` MiB (7 of 8 blocks random
//! data, 1 zeros) exported with `csi-cloud snapshot export` (16 blocks in
//! flight) and the sequential SDK loop, each imported back with `csi-cloud
//! snapshot import` and the sequential loop; every copy is compared with
//! the image. MiB/s of the image's size over the time the transfer reports
//! (the CLI's own `seconds`, the loop's own time), the wait for `completed`
//! included. moto is reset after each round (it keeps blocks in memory).
//!
//! `--rtt-ms`: moto answers on loopback in a few ms, where AWS is a network
//! round trip away. With it, every client (driver, CLI, SDK side) talks to
//! moto through a proxy in this process that holds every byte for half the
//! round trip in each direction ([`DelayProxy`]): what parallel transfers
//! buy, and what a call's own overhead weighs, when the round trip counts.
//!
//! `BENCH_CSI_LOG=debug` runs the driver at that level and prints its log on
//! stderr at the end (each AWS call with its timestamps).
//!
//! Printed, never asserted: this machine is shared and noisy.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::time::{Duration, Instant};

use csi_core::pb;
use csi_core::pb::controller_client::ControllerClient;
use serde_json::{json, Value};
use tonic::transport::Channel;

use testkit::moto::Moto;
use testkit::util::R;
use testkit::{bail, ensure};

/// The zone of every volume and instance.
const ZONE: &str = "us-east-1a";
/// An AMI moto knows.
const IMAGE: &str = "ami-12c6146b";
/// The cluster tag of the default driver name (what ListVolumes lists).
const CLUSTER_TAG: &str = "ebs.csi.aws.com/cluster";
/// The goals of issue #15.
pub const GOAL_LATENCY_RATIO: f64 = 1.1;
pub const GOAL_EXPORT_SPEEDUP: f64 = 4.0;

/// What to run.
#[derive(Clone, Debug)]
pub struct Opts {
    /// The `csi-cloud` binary (driver, snapshot CLI and the SDK side).
    pub driver: PathBuf,
    /// Rounds.
    pub n: usize,
    /// The image's size in MiB for the throughput rows.
    pub size_mib: u64,
    /// An emulated network round trip to moto, ms (0: plain loopback).
    pub rtt_ms: u64,
}

/// A side of a controller row.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Side {
    Ours,
    Sdk,
    SdkChecked,
}

/// One controller operation: ours, the plain SDK call, and the SDK call
/// with the controller's own lookups (when they differ), in ms per round.
#[derive(Clone, Debug)]
pub struct Row {
    pub what: &'static str,
    pub sdk: &'static str,
    pub checks: Option<&'static str>,
    pub ours_ms: Vec<f64>,
    pub sdk_ms: Vec<f64>,
    pub checked_ms: Vec<f64>,
}

/// One transfer: ours and the sequential SDK loop, MiB/s per round.
#[derive(Clone, Debug)]
pub struct Rate {
    pub what: &'static str,
    pub ours: Vec<f64>,
    pub sdk: Vec<f64>,
}

/// Everything measured.
#[derive(Debug, Default)]
pub struct Report {
    pub n: usize,
    pub size_mib: u64,
    pub rtt_ms: u64,
    pub rows: Vec<Row>,
    pub rates: Vec<Rate>,
    pub notes: Vec<String>,
}

/// The median and quartiles (linear interpolation between ranks).
pub fn quartiles(v: &[f64]) -> Option<(f64, f64, f64)> {
    if v.is_empty() {
        return None;
    }
    let mut d = v.to_vec();
    d.sort_by(|a, b| a.total_cmp(b));
    let q = |p: f64| {
        let x = p * (d.len() - 1) as f64;
        let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
        d[lo] + (d[hi] - d[lo]) * (x - lo as f64)
    };
    Some((q(0.25), q(0.5), q(0.75)))
}

fn med(v: &[f64]) -> f64 {
    quartiles(v).map_or(f64::NAN, |q| q.1)
}

/// A directory removed on drop.
struct Scratch(PathBuf);

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A child killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `csi-cloud bench-baseline`: one JSON request a line, one answer a line.
struct Sdk {
    _proc: Proc,
    stdin: ChildStdin,
    stdout: BufReader<ChildStdout>,
}

impl Sdk {
    fn start(driver: &Path, moto: &Moto, endpoint: &str, log: &Path) -> R<Sdk> {
        let log = std::fs::File::create(log).map_err(|e| format!("create {}: {e}", log.display()))?;
        let mut child = Command::new(driver)
            .args(["bench-baseline", "--aws-endpoint-url", endpoint])
            .envs(moto.env())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("run {} bench-baseline: {e}", driver.display()))?;
        let stdin = child.stdin.take().ok_or("bench-baseline: no stdin")?;
        let stdout = BufReader::new(child.stdout.take().ok_or("bench-baseline: no stdout")?);
        Ok(Sdk { _proc: Proc(child), stdin, stdout })
    }

    fn call(&mut self, req: Value) -> R<Value> {
        writeln!(self.stdin, "{req}").and_then(|()| self.stdin.flush()).map_err(|e| format!("bench-baseline: {e}"))?;
        let mut line = String::new();
        self.stdout.read_line(&mut line).map_err(|e| format!("bench-baseline: {e}"))?;
        ensure!(!line.is_empty(), "bench-baseline exited (its log is in the bench's scratch dir)");
        let v: Value = serde_json::from_str(&line).map_err(|e| format!("bench-baseline answered {line:?}: {e}"))?;
        ensure!(v["ok"] == true, "bench-baseline {}: {}", req["op"], v["error"]);
        Ok(v)
    }

    fn timed(&mut self, req: Value) -> R<(f64, Value)> {
        let v = self.call(req)?;
        let ms = v["ms"].as_f64().ok_or("bench-baseline: no ms")?;
        Ok((ms, v))
    }
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1000.0
}

fn grpc(what: &str, s: tonic::Status) -> String {
    format!("{what}: {:?}: {}", s.code(), s.message())
}

fn rwo() -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_mode: Some(pb::volume_capability::AccessMode {
            mode: pb::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(pb::volume_capability::AccessType::Mount(Default::default())),
    }
}

/// Runs the bench.
pub fn run(o: &Opts) -> R<Report> {
    ensure!(o.n >= 1, "--n must be at least 1");
    ensure!(o.driver.is_file(), "{} is not a file (build csi-cloud, or pass --driver)", o.driver.display());
    let dir = Scratch(PathBuf::from(format!("/var/tmp/bench-csi-cloud-{}", std::process::id())));
    std::fs::create_dir_all(&dir.0).map_err(|e| format!("create {}: {e}", dir.0.display()))?;
    let moto = Moto::start_ebs_corrected(&dir.0)?;
    let proxy = match o.rtt_ms {
        0 => None,
        rtt => Some(DelayProxy::start(&moto.endpoint(), Duration::from_micros(rtt * 500))?),
    };
    let endpoint = proxy.as_ref().map_or_else(|| moto.endpoint(), DelayProxy::endpoint);
    eprintln!("bench csi-cloud: moto at {} (clients use {endpoint})", moto.endpoint());
    let mut sdk = Sdk::start(&o.driver, &moto, &endpoint, &dir.0.join("baseline.log"))?;
    let sock = dir.0.join("csi.sock");
    let log = std::fs::File::create(dir.0.join("driver.log")).map_err(|e| format!("driver.log: {e}"))?;
    // BENCH_CSI_LOG=debug: the driver's log (AWS calls with timestamps) on stderr at the end.
    let log_level = std::env::var("BENCH_CSI_LOG").unwrap_or_else(|_| "warn".into());
    let mut driver = Proc(
        Command::new(&o.driver)
            .args(["--mode", "controller", "--default-zone", ZONE])
            .arg(format!("--log-level={log_level}"))
            .arg(format!("--endpoint=unix://{}", sock.display()))
            .args(["--aws-endpoint-url", &endpoint])
            .envs(moto.env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("run {}: {e}", o.driver.display()))?,
    );
    let started = Instant::now();
    while !sock.exists() {
        if let Ok(Some(st)) = driver.0.try_wait() {
            bail!("csi-cloud exited ({st}): {}", std::fs::read_to_string(dir.0.join("driver.log")).unwrap_or_default());
        }
        ensure!(started.elapsed() < Duration::from_secs(30), "csi-cloud did not create {}", sock.display());
        std::thread::sleep(Duration::from_millis(10));
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| format!("tokio: {e}"))?;
    let ch = rt
        .block_on(csi_core::client::connect(&csi_core::flags::Endpoint::Unix(sock.clone())))
        .map_err(|e| format!("connect to csi-cloud: {e}"))?;

    let mut report = Report { n: o.n, size_mib: o.size_mib, rtt_ms: o.rtt_ms, ..Default::default() };
    report.rows = controller_rows(&rt, &ch, &mut sdk, o.n)?;
    moto.reset()?;
    report.rates = transfer_rows(o, &moto, &endpoint, &mut sdk, &dir.0)?;
    report.notes = vec![
        "CreateVolume first looks the name up by its CSIVolumeName tag (DescribeVolumes, all pages): the \
         idempotency issue #15 demands (no second volume after a retry, a restart or EC2's 24 h token memory); \
         the 'SDK + same checks' column makes that lookup too"
            .into(),
        "ControllerPublishVolume reads the volume (attached elsewhere?) and the instance (zone, device names in \
         use) before AttachVolume (its type's attachment limit is asked once per type); ControllerUnpublishVolume reads the volume and the \
         instance (dead: forced detach); CreateSnapshot looks the name up by tag and checks the source volume"
            .into(),
        "moto attaches and detaches at once: each wait is one poll on both sides; against EC2 the waits take \
         seconds, so the lookups weigh less there"
            .into(),
        if o.rtt_ms == 0 {
            "no emulated round trip (--rtt-ms 0): moto answers on loopback in a few ms, so the gRPC hop (about \
             0.3 to 0.7 ms) is a visible share of the cheap calls; moto is one Python process that parses every \
             512 KiB block: it, not a round trip, limits the transfers, and blocks in flight cannot help"
                .to_string()
        } else {
            format!(
                "every client reached moto through a proxy adding {} ms of round trip ({} ms each way), as a \
                 network to AWS does",
                o.rtt_ms,
                o.rtt_ms as f64 / 2.0
            )
        },
    ];
    drop(driver);
    if log_level != "warn" {
        eprintln!("--- driver log\n{}", std::fs::read_to_string(dir.0.join("driver.log")).unwrap_or_default());
    }
    Ok(report)
}

/// The controller rows.
fn controller_rows(rt: &tokio::runtime::Runtime, ch: &Channel, sdk: &mut Sdk, n: usize) -> R<Vec<Row>> {
    let row = |what, sdk, checks| Row { what, sdk, checks, ours_ms: vec![], sdk_ms: vec![], checked_ms: vec![] };
    let mut rows = vec![
        row("CreateVolume", "CreateVolume + poll until available", Some("+ DescribeVolumes by name tag")),
        row(
            "ControllerPublishVolume",
            "AttachVolume + poll until attached",
            Some("+ DescribeVolumes, DescribeInstances"),
        ),
        row("ControllerGetVolume", "DescribeVolumes (ID)", None),
        row("ListVolumes", "DescribeVolumes (cluster tag, all pages)", None),
        row("CreateSnapshot", "CreateSnapshot", Some("+ DescribeSnapshots by name tag, DescribeVolumes")),
        row(
            "ControllerUnpublishVolume",
            "DetachVolume + poll until detached",
            Some("+ DescribeVolumes, DescribeInstances"),
        ),
        row("DeleteSnapshot", "DeleteSnapshot", None),
        row("DeleteVolume", "DeleteVolume", None),
    ];
    let inst = sdk.call(json!({"op": "run_instances", "n": 3, "zone": ZONE, "image": IMAGE}))?;
    let inst: Vec<String> = inst["instances"]
        .as_array()
        .map(|a| a.iter().filter_map(|i| i.as_str().map(str::to_string)).collect())
        .unwrap_or_default();
    ensure!(inst.len() == 3, "run_instances: {inst:?}");
    let ctl = || ControllerClient::new(ch.clone());
    let tag = std::process::id();
    for round in 0..n {
        let mut order = [Side::Ours, Side::Sdk, Side::SdkChecked];
        order.rotate_left(round % 3);
        eprintln!("bench csi-cloud: controller round {}/{n} ({order:?})", round + 1);
        // Each side's volume and snapshot of this round.
        let mut vol: [String; 3] = Default::default();
        let mut snap: [String; 3] = Default::default();
        for (op, r) in rows.iter_mut().enumerate() {
            for &side in &order {
                let i = side as usize;
                let name = format!("bench-{tag}-{round}-{side:?}");
                let node = inst[i].as_str();
                let checks = side == Side::SdkChecked;
                if side != Side::Ours && checks && r.checks.is_none() {
                    continue; // the same request: measured once, by Side::Sdk
                }
                let t = Instant::now();
                let took = if side == Side::Ours {
                    match op {
                        0 => {
                            let v = rt
                                .block_on(ctl().create_volume(pb::CreateVolumeRequest {
                                    name: name.clone(),
                                    capacity_range: Some(pb::CapacityRange { required_bytes: 1 << 30, limit_bytes: 0 }),
                                    volume_capabilities: vec![rwo()],
                                    parameters: [("type".to_string(), "gp3".to_string())].into(),
                                    accessibility_requirements: Some(pb::TopologyRequirement {
                                        requisite: vec![],
                                        preferred: vec![pb::Topology {
                                            segments:
                                                [("topology.kubernetes.io/zone".to_string(), ZONE.to_string())].into(),
                                        }],
                                    }),
                                    ..Default::default()
                                }))
                                .map_err(|e| grpc("CreateVolume", e))?;
                            let took = ms(t);
                            vol[i] = v.into_inner().volume.ok_or("CreateVolume: no volume")?.volume_id;
                            took
                        }
                        1 => {
                            rt.block_on(ctl().controller_publish_volume(pb::ControllerPublishVolumeRequest {
                                volume_id: vol[i].clone(),
                                node_id: node.into(),
                                volume_capability: Some(rwo()),
                                ..Default::default()
                            }))
                            .map_err(|e| grpc("ControllerPublishVolume", e))?;
                            ms(t)
                        }
                        2 => {
                            let v = rt
                                .block_on(ctl().controller_get_volume(pb::ControllerGetVolumeRequest {
                                    volume_id: vol[i].clone(),
                                }))
                                .map_err(|e| grpc("ControllerGetVolume", e))?;
                            let took = ms(t);
                            let nodes = v.into_inner().status.map(|s| s.published_node_ids).unwrap_or_default();
                            ensure!(nodes == [node], "ControllerGetVolume: published on {nodes:?}, not {node}");
                            took
                        }
                        3 => {
                            let v = rt
                                .block_on(ctl().list_volumes(pb::ListVolumesRequest::default()))
                                .map_err(|e| grpc("ListVolumes", e))?;
                            let took = ms(t);
                            let n = v.into_inner().entries.len();
                            ensure!(n == 3, "ListVolumes: {n} volumes, expected this round's 3");
                            took
                        }
                        4 => {
                            let s = rt
                                .block_on(ctl().create_snapshot(pb::CreateSnapshotRequest {
                                    name: name.clone(),
                                    source_volume_id: vol[i].clone(),
                                    ..Default::default()
                                }))
                                .map_err(|e| grpc("CreateSnapshot", e))?;
                            let took = ms(t);
                            snap[i] = s.into_inner().snapshot.ok_or("CreateSnapshot: no snapshot")?.snapshot_id;
                            took
                        }
                        5 => {
                            rt.block_on(ctl().controller_unpublish_volume(pb::ControllerUnpublishVolumeRequest {
                                volume_id: vol[i].clone(),
                                node_id: node.into(),
                                ..Default::default()
                            }))
                            .map_err(|e| grpc("ControllerUnpublishVolume", e))?;
                            ms(t)
                        }
                        6 => {
                            rt.block_on(ctl().delete_snapshot(pb::DeleteSnapshotRequest {
                                snapshot_id: snap[i].clone(),
                                ..Default::default()
                            }))
                            .map_err(|e| grpc("DeleteSnapshot", e))?;
                            ms(t)
                        }
                        _ => {
                            rt.block_on(ctl().delete_volume(pb::DeleteVolumeRequest {
                                volume_id: vol[i].clone(),
                                ..Default::default()
                            }))
                            .map_err(|e| grpc("DeleteVolume", e))?;
                            ms(t)
                        }
                    }
                } else {
                    let req = match op {
                        0 => json!({"op": "create_volume", "name": name, "zone": ZONE, "gib": 1,
                                    "cluster_tag": CLUSTER_TAG, "checks": checks}),
                        1 => json!({"op": "publish", "volume_id": vol[i], "instance_id": node,
                                    "device": "/dev/xvdf", "checks": checks}),
                        2 => json!({"op": "get_volume", "volume_id": vol[i]}),
                        3 => json!({"op": "list_volumes", "cluster_tag": CLUSTER_TAG}),
                        4 => json!({"op": "create_snapshot", "name": name, "volume_id": vol[i],
                                    "cluster_tag": CLUSTER_TAG, "checks": checks}),
                        5 => json!({"op": "unpublish", "volume_id": vol[i], "instance_id": node, "checks": checks}),
                        6 => json!({"op": "delete_snapshot", "snapshot_id": snap[i]}),
                        _ => json!({"op": "delete_volume", "volume_id": vol[i]}),
                    };
                    let (took, v) = sdk.timed(req)?;
                    if let Some(id) = v["volume_id"].as_str() {
                        vol[i] = id.to_string();
                    }
                    if let Some(id) = v["snapshot_id"].as_str() {
                        snap[i] = id.to_string();
                    }
                    took
                };
                match side {
                    Side::Ours => r.ours_ms.push(took),
                    Side::Sdk => r.sdk_ms.push(took),
                    Side::SdkChecked => r.checked_ms.push(took),
                }
            }
            // Rows without their own checks: the checked side's volume
            // still needs the step (its volume lives through the round).
            if r.checks.is_none() && op != 2 && op != 3 {
                let i = Side::SdkChecked as usize;
                let req = match op {
                    6 => json!({"op": "delete_snapshot", "snapshot_id": snap[i]}),
                    _ => json!({"op": "delete_volume", "volume_id": vol[i]}),
                };
                sdk.call(req)?;
            }
        }
    }
    Ok(rows)
}

/// The image: `size_mib` MiB, 7 of 8 blocks random data, every 8th zeros.
fn write_image(path: &Path, size_mib: u64) -> R<()> {
    let f = std::fs::File::create(path).map_err(|e| format!("create {}: {e}", path.display()))?;
    let block = 512 * 1024u64;
    let mut rng = testkit::rng::SplitMix64(0x0c5c_10d0 ^ size_mib);
    let mut buf = vec![0u8; block as usize];
    for i in 0..size_mib * 2 {
        if i % 8 == 7 {
            continue;
        }
        for c in buf.chunks_mut(8) {
            c.copy_from_slice(&rng.next().to_le_bytes());
        }
        f.write_all_at(&buf, i * block).map_err(|e| format!("write {}: {e}", path.display()))?;
    }
    f.set_len(size_mib << 20).map_err(|e| format!("size {}: {e}", path.display()))?;
    f.sync_all().map_err(|e| format!("sync {}: {e}", path.display()))
}

/// Does `copy` start with exactly `image`'s bytes (and nothing but zeros past them)?
fn same_data(image: &Path, copy: &Path) -> R<bool> {
    let (a, b) = (
        std::fs::File::open(image).map_err(|e| format!("{}: {e}", image.display()))?,
        std::fs::File::open(copy).map_err(|e| format!("{}: {e}", copy.display()))?,
    );
    let size = a.metadata().map_err(|e| e.to_string())?.len();
    let (mut x, mut y) = (vec![0u8; 1 << 20], vec![0u8; 1 << 20]);
    let mut off = 0;
    while off < size {
        let n = (size - off).min(1 << 20) as usize;
        a.read_exact_at(&mut x[..n], off).map_err(|e| e.to_string())?;
        b.read_exact_at(&mut y[..n], off).map_err(|e| e.to_string())?;
        if x[..n] != y[..n] {
            return Ok(false);
        }
        off += n as u64;
    }
    Ok(true)
}

/// `csi-cloud snapshot ARGS`: its JSON report.
fn cli(driver: &Path, moto: &Moto, endpoint: &str, args: &[&str]) -> R<Value> {
    let out = Command::new(driver)
        .arg("snapshot")
        .args(args)
        .args(["--no-progress", "--aws-endpoint-url", endpoint])
        .envs(moto.env())
        .output()
        .map_err(|e| format!("run {} snapshot: {e}", driver.display()))?;
    ensure!(out.status.success(), "csi-cloud snapshot {args:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    serde_json::from_slice(&out.stdout).map_err(|e| format!("csi-cloud snapshot {args:?}: report: {e}"))
}

/// The throughput rows.
fn transfer_rows(o: &Opts, moto: &Moto, endpoint: &str, sdk: &mut Sdk, dir: &Path) -> R<Vec<Rate>> {
    let image = dir.join("image.raw");
    write_image(&image, o.size_mib)?;
    let img = image.to_str().ok_or("scratch path not UTF-8")?.to_string();
    let mib = o.size_mib as f64;
    let (mut export, mut import) = (
        Rate { what: "snapshot export", ours: vec![], sdk: vec![] },
        Rate { what: "snapshot import", ours: vec![], sdk: vec![] },
    );
    for round in 0..o.n {
        eprintln!("bench csi-cloud: transfer round {}/{} ({} MiB)", round + 1, o.n, o.size_mib);
        let ours_first = round % 2 == 0;
        for ours in [ours_first, !ours_first] {
            let target = dir.join(if ours { "ours.raw" } else { "sdk.raw" });
            let tgt = target.to_str().ok_or("scratch path not UTF-8")?.to_string();
            if ours {
                let r = cli(&o.driver, moto, endpoint, &["export", "--source", &img])?;
                ensure!(r["state"] == "completed", "export: {r}");
                export.ours.push(mib / r["seconds"].as_f64().ok_or("export: no seconds")?);
                let snap = r["snapshot_id"].as_str().ok_or("export: no snapshot")?.to_string();
                let r = cli(&o.driver, moto, endpoint, &["import", "--snapshot-id", &snap, "--target", &tgt])?;
                import.ours.push(mib / r["seconds"].as_f64().ok_or("import: no seconds")?);
            } else {
                let (t, v) = sdk.timed(json!({"op": "export", "source": img}))?;
                export.sdk.push(mib / (t / 1000.0));
                let snap = v["snapshot_id"].as_str().ok_or("export: no snapshot")?.to_string();
                let (t, _) = sdk.timed(json!({"op": "import", "snapshot_id": snap, "target": tgt}))?;
                import.sdk.push(mib / (t / 1000.0));
            }
            ensure!(same_data(&image, &target)?, "{}: the imported copy differs from the image", target.display());
            std::fs::remove_file(&target).map_err(|e| format!("remove {}: {e}", target.display()))?;
        }
        moto.reset()?;
    }
    let _ = std::fs::remove_file(&image);
    Ok(vec![export, import])
}

/// A TCP proxy to moto that holds every chunk it forwards for `one_way`
/// before writing it on, in each direction: a network's round trip of twice
/// that, on loopback. Threads: an acceptor, and per connection and direction
/// a reader and a writer (so holding one chunk never delays reading the
/// next). Stops accepting on drop; open connections end with their peers.
pub struct DelayProxy {
    addr: std::net::SocketAddr,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl DelayProxy {
    /// Listens on a free loopback port, forwarding to `target` (`http://host:port`).
    pub fn start(target: &str, one_way: Duration) -> R<DelayProxy> {
        use std::net::{TcpListener, TcpStream};
        let upstream: std::net::SocketAddr =
            target.trim_start_matches("http://").parse().map_err(|e| format!("proxy target {target}: {e}"))?;
        let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| format!("proxy: bind: {e}"))?;
        let addr = listener.local_addr().map_err(|e| format!("proxy: {e}"))?;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stopping = std::sync::Arc::clone(&stop);
        std::thread::spawn(move || {
            for client in listener.incoming() {
                if stopping.load(std::sync::atomic::Ordering::Relaxed) {
                    break;
                }
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else { continue };
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                for (from, to) in [(&client, &server), (&server, &client)] {
                    if let (Ok(from), Ok(to)) = (from.try_clone(), to.try_clone()) {
                        pump(from, to, one_way);
                    }
                }
            }
        });
        Ok(DelayProxy { addr, stop })
    }

    /// `http://127.0.0.1:PORT`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for DelayProxy {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        // Wake the acceptor so it sees the flag.
        let _ = std::net::TcpStream::connect(self.addr);
    }
}

/// Copies `from` to `to`, each chunk written `delay` after it was read; EOF
/// (or an error) is passed on as a shutdown of `to`'s write side.
fn pump(mut from: std::net::TcpStream, mut to: std::net::TcpStream, delay: Duration) {
    use std::io::Read;
    let (tx, rx) = std::sync::mpsc::channel::<(Instant, Vec<u8>)>();
    std::thread::spawn(move || {
        let mut buf = vec![0u8; 256 << 10];
        loop {
            match from.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(n) => {
                    if tx.send((Instant::now(), buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            }
        }
    });
    std::thread::spawn(move || {
        while let Ok((read_at, data)) = rx.recv() {
            // The emulated latency: hold the chunk until its time has come.
            let due = read_at + delay;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if to.write_all(&data).is_err() {
                break;
            }
        }
        let _ = to.shutdown(std::net::Shutdown::Write);
    });
}

fn iqr(v: &[f64], prec: usize) -> String {
    quartiles(v).map_or("-".into(), |(a, m, b)| format!("{m:.prec$} [{a:.prec$}, {b:.prec$}]"))
}

impl Report {
    /// The ratio of a row's medians, ours / the plain SDK call.
    pub fn ratio(r: &Row) -> f64 {
        med(&r.ours_ms) / med(&r.sdk_ms)
    }

    /// The ratio against the SDK doing the controller's lookups too (the
    /// plain call's when the row has none).
    pub fn ratio_same_work(r: &Row) -> f64 {
        if r.checks.is_some() {
            med(&r.ours_ms) / med(&r.checked_ms)
        } else {
            Report::ratio(r)
        }
    }

    pub fn table(&self) -> String {
        let mut s = format!(
            "csi-cloud vs the AWS SDK, same requests to moto on loopback (+{} ms emulated round trip), n={} \
             (median [q1, q3] ms; goal: ours ≤ {GOAL_LATENCY_RATIO}× the SDK call)\n",
            self.rtt_ms, self.n
        );
        s += &format!(
            "{:<26} {:>22}  {:>22} {:>6}  {:>22} {:>6}\n",
            "operation", "ours (gRPC)", "SDK call", "ratio", "SDK + same lookups", "ratio"
        );
        for r in &self.rows {
            let (checked, cr) = if r.checks.is_some() {
                (iqr(&r.checked_ms, 1), format!("{:.2}x", Report::ratio_same_work(r)))
            } else {
                ("(same as SDK call)".into(), String::new())
            };
            s += &format!(
                "{:<26} {:>22}  {:>22} {:>6}  {:>22} {:>6}\n",
                r.what,
                iqr(&r.ours_ms, 1),
                iqr(&r.sdk_ms, 1),
                format!("{:.2}x", Report::ratio(r)),
                checked,
                cr
            );
        }
        s += "SDK call: ";
        s += &self.rows.iter().map(|r| format!("{}: {}", r.what, r.sdk)).collect::<Vec<_>>().join("; ");
        s += "\nSDK + same lookups: ";
        s += &self
            .rows
            .iter()
            .filter_map(|r| r.checks.map(|c| format!("{}: {c}", r.what)))
            .collect::<Vec<_>>()
            .join("; ");
        s += &format!(
            "\n\nsnapshot transfers of a {} MiB image (7/8 data), MiB/s, median [q1, q3] (goal: export ≥ {GOAL_EXPORT_SPEEDUP}× the loop)\n",
            self.size_mib
        );
        s += &format!(
            "{:<18} {:>28}  {:>28} {:>7}\n",
            "transfer", "csi-cloud snapshot (16)", "sequential SDK loop", "ratio"
        );
        for r in &self.rates {
            s += &format!(
                "{:<18} {:>28}  {:>28} {:>7}\n",
                r.what,
                iqr(&r.ours, 1),
                iqr(&r.sdk, 1),
                format!("{:.2}x", med(&r.ours) / med(&r.sdk))
            );
        }
        for (goal, met) in self.goals() {
            s += &format!("goal {goal}: {}\n", if met { "met" } else { "not met" });
        }
        for n in &self.notes {
            s += &format!("note: {n}\n");
        }
        s
    }

    /// The goals and whether this run met them.
    pub fn goals(&self) -> Vec<(String, bool)> {
        let worst = self.rows.iter().map(Report::ratio_same_work).fold(0.0, f64::max);
        let worst_plain = self.rows.iter().map(Report::ratio).fold(0.0, f64::max);
        let export = self.rates.iter().find(|r| r.what == "snapshot export").map(|r| med(&r.ours) / med(&r.sdk));
        vec![
            (
                format!("every call ≤ {GOAL_LATENCY_RATIO}× the SDK doing the same lookups (worst {worst:.2}x)"),
                worst <= GOAL_LATENCY_RATIO,
            ),
            (
                format!("every call ≤ {GOAL_LATENCY_RATIO}× the plain SDK call (worst {worst_plain:.2}x)"),
                worst_plain <= GOAL_LATENCY_RATIO,
            ),
            (
                format!("export ≥ {GOAL_EXPORT_SPEEDUP}× the sequential loop ({:.2}x)", export.unwrap_or(f64::NAN)),
                export.is_some_and(|x| x >= GOAL_EXPORT_SPEEDUP),
            ),
        ]
    }

    pub fn to_json(&self) -> Value {
        let q = |v: &[f64]| quartiles(v).map(|(a, m, b)| json!({"q1": a, "median": m, "q3": b}));
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                json!({"operation": r.what, "sdk_call": r.sdk, "ours_ms": q(&r.ours_ms), "sdk_ms": q(&r.sdk_ms),
                       "ratio": Report::ratio(r), "same_lookups": r.checks,
                       "sdk_same_lookups_ms": r.checks.and_then(|_| q(&r.checked_ms)),
                       "ratio_same_work": Report::ratio_same_work(r)})
            })
            .collect();
        let rates: Vec<Value> = self
            .rates
            .iter()
            .map(|r| {
                json!({"transfer": r.what, "ours_mib_s": q(&r.ours), "sdk_loop_mib_s": q(&r.sdk),
                       "ratio": med(&r.ours) / med(&r.sdk)})
            })
            .collect();
        let goals: Vec<Value> = self.goals().into_iter().map(|(g, met)| json!({"goal": g, "met": met})).collect();
        json!({"n": self.n, "size_mib": self.size_mib, "rtt_ms": self.rtt_ms, "rows": rows, "throughput": rates, "goals": goals,
               "notes": self.notes})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quartiles_interpolate() {
        assert_eq!(quartiles(&[]), None);
        assert_eq!(quartiles(&[3.0]), Some((3.0, 3.0, 3.0)));
        assert_eq!(quartiles(&[4.0, 1.0, 3.0, 2.0, 5.0]), Some((2.0, 3.0, 4.0)));
        assert_eq!(quartiles(&[1.0, 2.0]), Some((1.25, 1.5, 1.75)));
    }
}
