//! `conformance bench csi-nfs`: what csi-nfs adds on top of the NFS
//! operations it performs, measured side by side in one run.
//!
//! - Controller (on this host, against a throwaway nfs-ganesha):
//!   CreateVolume and DeleteVolume over gRPC against the raw NFS calls they
//!   boil down to (connect + mkdir, connect + remove) made with the same
//!   userspace client (libnfs) the controller uses.
//! - Node (in ONE guest kernel: the host has no NFS client): NodePublish +
//!   NodeUnpublish against a plain `mount(2)` + `umount(2)` of the same
//!   export with the same options, interleaved, in the same guest.
//!
//! Medians and 90th percentiles; the goal is ≤ 50 ms of overhead. Printed,
//! never asserted: this machine is shared and noisy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use csi_core::pb;
use csi_core::pb::controller_client::ControllerClient;
use csi_core::pb::node_client::NodeClient;
use serde_json::{json, Value};

use csi_suite::csi_process::DriverProcess;
use csi_suite::ganesha::Ganesha;
use testkit::util::{median_p90, R};
use testkit::{bail, ensure};

/// What to run.
#[derive(Clone, Debug)]
pub struct Opts {
    /// The `csi-nfs` binary.
    pub driver: PathBuf,
    /// Iterations per measured operation.
    pub n: usize,
    /// Also boot a guest for the node half.
    pub node: bool,
}

/// One measured operation: ours against its baseline, in ms.
#[derive(Clone, Debug)]
pub struct Row {
    pub what: &'static str,
    pub baseline: &'static str,
    pub ours_ms: Vec<f64>,
    pub base_ms: Vec<f64>,
}

/// Everything measured.
#[derive(Debug, Default)]
pub struct Report {
    pub n: usize,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
}

/// Marker of the node half's JSON line in the guest's output.
const NODE_MARK: &str = "BENCH-CSI-NFS-NODE ";

/// `csi-nfs` in `mode`, quiet unless BENCH_CSI_LOG says otherwise.
fn start_driver(bin: &Path, mode: &str, port: u16) -> R<DriverProcess> {
    start_driver_with(bin, mode, port, &[])
}

fn start_driver_with(bin: &Path, mode: &str, port: u16, extra: &[&str]) -> R<DriverProcess> {
    let level = std::env::var("BENCH_CSI_LOG").unwrap_or_else(|_| "warn".into());
    let args: Vec<String> = ["--mode", mode, "--node-id", "bench", "--log-level", &level, "--state-dir={dir}/state"]
        .iter()
        .chain(extra)
        .map(|s| s.to_string())
        .chain([format!("--mount-options=port={port}")])
        .collect();
    Ok(DriverProcess::start(bin, "bench-csi-nfs", &args)?)
}

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn rwx() -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_mode: Some(pb::volume_capability::AccessMode {
            mode: pb::volume_capability::access_mode::Mode::MultiNodeMultiWriter as i32,
        }),
        access_type: Some(pb::volume_capability::AccessType::Mount(Default::default())),
    }
}

fn runtime() -> R<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("tokio: {e}"))
}

/// Runs the benchmark: the controller half here, the node half in a guest.
pub fn run(o: &Opts) -> R<Report> {
    ensure!((1..=500).contains(&o.n), "--n must be 1..=500");
    ensure!(o.driver.is_file(), "csi-nfs not found at {} (--driver)", o.driver.display());
    let server = Ganesha::start().map_err(|e| format!("start nfs-ganesha: {e}"))?;
    let mut report = Report { n: o.n, ..Default::default() };
    // Before and after the connection pool, in one run: the controller with
    // pooling off (a connection per NFS call) against connect + op, then
    // with its default pool against the op on an open connection.
    report.rows.extend(controller(o, &server, false)?);
    report.rows.extend(controller(o, &server, true)?);
    if o.node {
        match node_in_guest(o, &server) {
            Ok(rows) => report.rows.extend(rows),
            Err(e) => report.notes.push(format!("node half: {e}")),
        }
    } else {
        report.notes.push("node half skipped (--no-node)".into());
    }
    Ok(report)
}

fn controller(o: &Opts, server: &Ganesha, pooled: bool) -> R<Vec<Row>> {
    let extra: &[&str] = if pooled { &[] } else { &["--nfs-idle-connections=0"] };
    let driver = start_driver_with(&o.driver, "controller", server.port(), extra)?;
    let rt = runtime()?;
    let ch = rt.block_on(driver.channel())?;
    let (mut create, mut delete) = if pooled {
        (
            Row { what: "CreateVolume (pool)", baseline: "mkdir, open conn.", ours_ms: vec![], base_ms: vec![] },
            Row { what: "DeleteVolume (pool)", baseline: "rmdir, open conn.", ours_ms: vec![], base_ms: vec![] },
        )
    } else {
        (
            Row { what: "CreateVolume (no pool)", baseline: "NFS connect + mkdir", ours_ms: vec![], base_ms: vec![] },
            Row { what: "DeleteVolume (no pool)", baseline: "NFS connect + rmdir", ours_ms: vec![], base_ms: vec![] },
        )
    };
    let params: HashMap<String, String> =
        [("server", "127.0.0.1"), ("share", "/export")].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    let target = csi_nfs::nfs::Target {
        server: "127.0.0.1".into(),
        export: "/export".into(),
        port: Some(server.port()),
        version: 4,
        timeout: csi_nfs::nfs::DEFAULT_TIMEOUT,
    };
    let mut open = csi_nfs::nfs::Client::connect(&target).map_err(|e| format!("raw connect: {e}"))?;
    let tag = if pooled { "p" } else { "n" };
    for i in 0..o.n {
        // Raw: what CreateVolume/DeleteVolume do on the server, same client
        // library; on a fresh connection each, or on one open connection.
        let name = format!("raw-{tag}{i}");
        let t = Instant::now();
        if pooled {
            open.mkdir(&name, 0o777).map_err(|e| format!("raw mkdir: {e}"))?;
        } else {
            let mut c = csi_nfs::nfs::Client::connect(&target).map_err(|e| format!("raw connect: {e}"))?;
            c.mkdir(&name, 0o777).map_err(|e| format!("raw mkdir: {e}"))?;
        }
        create.base_ms.push(ms(t));
        let t = Instant::now();
        if pooled {
            open.rmdir(&name).map_err(|e| format!("raw rmdir: {e}"))?;
        } else {
            let mut c = csi_nfs::nfs::Client::connect(&target).map_err(|e| format!("raw connect: {e}"))?;
            c.rmdir(&name).map_err(|e| format!("raw rmdir: {e}"))?;
        }
        delete.base_ms.push(ms(t));

        // Ours, over gRPC.
        let req = pb::CreateVolumeRequest {
            name: format!("bench-{tag}{i}"),
            volume_capabilities: vec![rwx()],
            parameters: params.clone(),
            ..Default::default()
        };
        let t = Instant::now();
        let vol = rt
            .block_on(ControllerClient::new(ch.clone()).create_volume(req))
            .map_err(|e| format!("CreateVolume: {e}"))?
            .into_inner()
            .volume
            .ok_or("CreateVolume returned no volume")?;
        create.ours_ms.push(ms(t));
        let t = Instant::now();
        rt.block_on(
            ControllerClient::new(ch.clone())
                .delete_volume(pb::DeleteVolumeRequest { volume_id: vol.volume_id, ..Default::default() }),
        )
        .map_err(|e| format!("DeleteVolume: {e}"))?;
        delete.ours_ms.push(ms(t));
    }
    // The channel's connection lives on `rt`: close both before the driver
    // waits for its clients on SIGTERM, or it waits out its grace period.
    drop(ch);
    drop(rt);
    drop(driver);
    drop(open);
    Ok(vec![create, delete])
}

/// Copies of binaries in a fresh directory under the temp dir, removed on drop.
struct StagedBins {
    dir: PathBuf,
}

impl StagedBins {
    fn new(bins: &[(&Path, &str)]) -> R<StagedBins> {
        let dir = std::env::temp_dir().join(format!("bench-csi-nfs-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let staged = StagedBins { dir };
        for (from, name) in bins {
            std::fs::copy(from, staged.dir.join(name)).map_err(|e| format!("copy {}: {e}", from.display()))?;
        }
        Ok(staged)
    }
}

impl Drop for StagedBins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Boots one guest that runs `conformance bench csi-nfs --node-only` and
/// reads its JSON line.
fn node_in_guest(o: &Opts, server: &Ganesha) -> R<Vec<Row>> {
    std::fs::create_dir_all(server.root().join("bench-node")).map_err(|e| format!("volume dir: {e}"))?;
    let root = testkit::util::workspace_root();
    let run = root.join("scripts/guest/run.sh");
    let script = root.join("scripts/guest/bench-csi-nfs.sh");
    ensure!(run.is_file() && script.is_file(), "{} or {} missing", run.display(), script.display());
    let me = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    // The guest sees the host's /tmp but not its /var/tmp (a tmpfs there),
    // where CARGO_TARGET_DIR may put the binaries: run copies from /tmp.
    let stage = StagedBins::new(&[(&me, "conformance"), (&o.driver, "csi-nfs")])?;
    let out = Command::new("bash")
        .arg(&run)
        .arg(&script)
        .arg(stage.dir.join("conformance"))
        .arg(stage.dir.join("csi-nfs"))
        .arg(server.port().to_string())
        .arg(o.n.to_string())
        .env("GUEST_NETWORK", "user")
        .env("GUEST_MODULES", "nfsv4")
        .env("GUEST_TIMEOUT", "600")
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {}: {e}", run.display()))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().find_map(|l| l.split_once(NODE_MARK).map(|(_, j)| j.to_string())) else {
        bail!(
            "the guest printed no result ({:?}):\n{}\n{}",
            out.status,
            testkit::util::clip(&stdout, 4000),
            testkit::util::clip(&String::from_utf8_lossy(&out.stderr), 2000)
        )
    };
    let v: Value = serde_json::from_str(&line).map_err(|e| format!("guest result {line:?}: {e}"))?;
    let nums = |k: &str| -> Vec<f64> {
        v[k].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default()
    };
    Ok(vec![
        Row { what: "NodePublishVolume", baseline: "mount(2) nfs4", ours_ms: nums("publish"), base_ms: nums("mount") },
        Row {
            what: "NodeUnpublishVolume",
            baseline: "umount(2) + rmdir",
            ours_ms: nums("unpublish"),
            base_ms: nums("umount"),
        },
    ])
}

/// The node half, run inside the guest: `n` rounds, each timing one
/// NodePublish/NodeUnpublish of `server:/export/bench-node` and one plain
/// mount/umount of the same source with the same options; prints one JSON
/// line after [`NODE_MARK`].
pub fn node_only(driver: &Path, server: &str, port: u16, n: usize) -> R<()> {
    let d = start_driver(driver, "node", port)?;
    let dir = d.dir().to_path_buf();
    let rt = runtime()?;
    let ch = rt.block_on(d.channel())?;
    let context: HashMap<String, String> = [("server", server), ("share", "/export"), ("subdir", "bench-node")]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let source = format!("{server}:/export/bench-node");
    let data = format!("vers=4.2,port={port},addr={server}");
    let (mut publish, mut unpublish, mut mount, mut umount) = (vec![], vec![], vec![], vec![]);
    for i in 0..n {
        let target = dir.join(format!("pod-{i}"));
        let req = pb::NodePublishVolumeRequest {
            volume_id: format!("{server}#export#bench-node##"),
            target_path: target.display().to_string(),
            volume_capability: Some(rwx()),
            volume_context: context.clone(),
            ..Default::default()
        };
        let t = Instant::now();
        rt.block_on(NodeClient::new(ch.clone()).node_publish_volume(req))
            .map_err(|e| format!("NodePublishVolume: {e}"))?;
        publish.push(ms(t));
        let t = Instant::now();
        rt.block_on(NodeClient::new(ch.clone()).node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
            volume_id: format!("{server}#export#bench-node##"),
            target_path: target.display().to_string(),
        }))
        .map_err(|e| format!("NodeUnpublishVolume: {e}"))?;
        unpublish.push(ms(t));

        // Plain: the same mount by hand, target made and removed as the driver does.
        let target = dir.join(format!("plain-{i}"));
        let t = Instant::now();
        std::fs::create_dir(&target).map_err(|e| format!("mkdir: {e}"))?;
        nix::mount::mount(
            Some(source.as_str()),
            &target,
            Some("nfs4"),
            nix::mount::MsFlags::empty(),
            Some(data.as_str()),
        )
        .map_err(|e| format!("mount {source}: {e}"))?;
        mount.push(ms(t));
        let t = Instant::now();
        nix::mount::umount2(&target, nix::mount::MntFlags::empty()).map_err(|e| format!("umount: {e}"))?;
        std::fs::remove_dir(&target).map_err(|e| format!("rmdir: {e}"))?;
        umount.push(ms(t));
    }
    drop(ch);
    drop(rt);
    drop(d);
    #[allow(clippy::print_stdout)]
    {
        println!(
            "{NODE_MARK}{}",
            json!({"publish": publish, "unpublish": unpublish, "mount": mount, "umount": umount})
        );
    }
    Ok(())
}

impl Report {
    /// The side-by-side table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "csi-nfs vs the raw operations it performs, n={} (median / p90 ms; goal: overhead ≤ 50 ms)\n",
            self.n
        );
        s += &format!(
            "{:<23} {:>15}  {:<20} {:>15} {:>10} {:>7}\n",
            "operation", "ours", "baseline", "baseline ms", "overhead", "ratio"
        );
        for r in &self.rows {
            let (om, op) = median_p90(&r.ours_ms);
            let (bm, bp) = median_p90(&r.base_ms);
            s += &format!(
                "{:<23} {:>7.2} / {:>5.1}  {:<20} {:>7.2} / {:>5.1} {:>+10.2} {:>6.2}x\n",
                r.what,
                om,
                op,
                r.baseline,
                bm,
                bp,
                om - bm,
                om / bm
            );
        }
        for n in &self.notes {
            s += &format!("note: {n}\n");
        }
        s
    }

    /// The same as JSON.
    pub fn to_json(&self) -> Value {
        let rows: Vec<Value> = self
            .rows
            .iter()
            .map(|r| {
                let (om, op) = median_p90(&r.ours_ms);
                let (bm, bp) = median_p90(&r.base_ms);
                json!({"operation": r.what, "baseline": r.baseline, "ours_median_ms": om, "ours_p90_ms": op,
                       "baseline_median_ms": bm, "baseline_p90_ms": bp, "overhead_ms": om - bm, "ratio": om / bm})
            })
            .collect();
        json!({"n": self.n, "rows": rows, "notes": self.notes})
    }
}
