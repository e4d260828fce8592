//! `conformance bench csi-rbd`: what csi-rbd adds on top of the RBD and
//! mount operations it performs, measured side by side in one run.
//!
//! This host kernel has no `rbd`, so everything runs in ONE guest kernel
//! attached to a throwaway Ceph cluster's bridge ([`csi_suite::ceph::Ceph`]):
//! the driver (`--mode all`, node ID `bench-a`), a second node plugin
//! (`--mode node`, node ID `bench-b`) and the raw operations, interleaved
//! round by round, so both sides pay the same emulated CPU:
//!
//! | ours | raw |
//! |---|---|
//! | CreateVolume | `rbd create` (the CLI: connect + create, same size and features) |
//! | NodeStageVolume (new image) | map through sysfs + `mkfs.ext4` + mount(2) |
//! | NodePublishVolume | mount(2) `MS_BIND` |
//! | NodeUnpublishVolume | umount(2) + rmdir |
//! | migration: NodeUnstage on A + NodeStage on B | umount + unmap + map + mount |
//! | DeleteVolume | `rbd rm` (the CLI) |
//!
//! The migration's ControllerUnpublish(A) + ControllerPublish(B) (the
//! attach lock moving) is measured too and printed as a note: the raw
//! sequence has no such step, it is what exclusivity costs.
//!
//! Medians and 90th percentiles; the goal is ≤ 50 ms of overhead. Printed,
//! never asserted: this machine is shared and noisy.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use csi_core::pb;
use csi_core::pb::controller_client::ControllerClient;
use csi_core::pb::node_client::NodeClient;
use serde_json::{json, Value};
use tonic::transport::Channel;

use csi_suite::ceph::Ceph;
use csi_suite::csi_process::DriverProcess;
use testkit::util::{median_p90, R};
use testkit::{bail, ensure};

/// The image features of both sides: csi-rbd's default `imageFeatures`.
pub const FEATURES: &str = "layering,exclusive-lock,object-map,fast-diff,deep-flatten";
/// The `clusterID` the bench's config.json names.
const CLUSTER_ID: &str = "bench";
/// The pool both sides use (the fixture's).
const POOL: &str = "rbd";
/// Marker of the guest half's JSON line in its output.
const MARK: &str = "BENCH-CSI-RBD ";
/// Marker of a driver's per-step debug line passed from the guest half.
const STEPS_MARK: &str = "BENCH-CSI-RBD-STEPS ";
/// The mkfs.ext4 options of the raw side: ceph-csi's and csi-rbd's defaults
/// (no discard of a fresh thin image, lazy init of inode tables and journal).
pub const MKFS_EXT4: &[&str] = &["-q", "-F", "-m0", "-Enodiscard,lazy_itable_init=1,lazy_journal_init=1"];

/// What to run.
#[derive(Clone, Debug)]
pub struct Opts {
    /// The `csi-rbd` binary; `None`: the raw sequence alone (`--raw-only`).
    pub driver: Option<PathBuf>,
    /// Rounds.
    pub n: usize,
    /// Each image's size in MiB.
    pub size_mib: u64,
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
    /// The new-image NodeStageVolume step by step, ours against raw
    /// (empty without the drivers' debug lines).
    pub steps: Vec<StepRow>,
}

/// One step of the new-image stage: ours (node A's `stage steps:` line)
/// and the raw side's same step, if it has one, in ms per round.
#[derive(Clone, Debug)]
pub struct StepRow {
    pub step: String,
    pub ours_ms: Vec<f64>,
    pub raw_ms: Vec<f64>,
}

impl StepRow {
    /// The median of the rounds' ours-raw (both sides measured in every round).
    pub fn paired(&self) -> Option<f64> {
        Paired::of(&self.ours_ms, &self.raw_ms).map(|p| p.median)
    }
}

/// The rounds' ours − baseline, each round against its own baseline: the
/// median and its spread (quartiles, extremes), which show how far one
/// run's difference can be trusted.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Paired {
    pub median: f64,
    pub q1: f64,
    pub q3: f64,
    pub min: f64,
    pub max: f64,
}

impl Paired {
    /// None unless both sides were measured in every round.
    pub fn of(ours: &[f64], base: &[f64]) -> Option<Paired> {
        if ours.is_empty() || ours.len() != base.len() {
            return None;
        }
        let mut d: Vec<f64> = ours.iter().zip(base).map(|(o, b)| o - b).collect();
        d.sort_by(|a, b| a.total_cmp(b));
        // Linear interpolation between the closest ranks.
        let q = |p: f64| {
            let x = p * (d.len() - 1) as f64;
            let (lo, hi) = (x.floor() as usize, x.ceil() as usize);
            d[lo] + (d[hi] - d[lo]) * (x - lo as f64)
        };
        Some(Paired { median: q(0.5), q1: q(0.25), q3: q(0.75), min: d[0], max: d[d.len() - 1] })
    }

    /// `+37.9 [+20.1, +50.3]`: the median and its interquartile range.
    fn short(&self) -> String {
        format!("{:+.1} [{:+.1}, {:+.1}]", self.median, self.q1, self.q3)
    }

    fn json(&self) -> Value {
        json!({"median_ms": self.median, "q1_ms": self.q1, "q3_ms": self.q3, "min_ms": self.min, "max_ms": self.max})
    }
}

/// The raw new-image stage's steps, in the order the bench times them.
const RAW_STAGE_STEPS: [&str; 3] = ["map", "mkfs", "mount"];
/// The part of our stage outside the driver's own steps.
const OUTSIDE_STEPS: &str = "outside the steps (gRPC, request checks)";

/// The `name=NNNµs` pairs of a driver's `stage steps:` line (not an
/// `unstage steps:` one), in ms.
fn stage_steps(line: &str) -> Option<Vec<(String, f64)>> {
    if line.contains("unstage steps:") {
        return None;
    }
    let (_, rest) = line.split_once("stage steps: ")?;
    let steps: Vec<(String, f64)> = rest
        .split_whitespace()
        .map_while(|t| {
            let (name, us) = t.split_once('=')?;
            Some((name.to_string(), us.strip_suffix("µs")?.parse::<f64>().ok()? / 1000.0))
        })
        .collect();
    (!steps.is_empty()).then_some(steps)
}

/// Our steps (in the order the driver logs them) beside the raw side's,
/// then what lies outside our steps (the call's time less their sum) and
/// the totals. Empty unless every round has its step line.
fn step_rows(ours: &[Vec<(String, f64)>], ours_total: &[f64], raw: &[Vec<f64>], raw_total: &[f64]) -> Vec<StepRow> {
    if ours.is_empty() || ours.len() != ours_total.len() || raw.len() != raw_total.len() {
        return vec![];
    }
    let mut names: Vec<&str> = vec![];
    for (n, _) in ours.iter().flatten() {
        if !names.contains(&n.as_str()) {
            names.push(n);
        }
    }
    let mut rows: Vec<StepRow> = names
        .iter()
        .map(|name| StepRow {
            step: name.to_string(),
            ours_ms: ours.iter().flat_map(|r| r.iter().filter(|(n, _)| n == name).map(|(_, ms)| *ms)).collect(),
            raw_ms: RAW_STAGE_STEPS
                .iter()
                .position(|s| s == name)
                .map(|i| raw.iter().filter_map(|r| r.get(i).copied()).collect())
                .unwrap_or_default(),
        })
        .collect();
    rows.push(StepRow {
        step: OUTSIDE_STEPS.into(),
        ours_ms: ours.iter().zip(ours_total).map(|(r, t)| t - r.iter().map(|(_, ms)| ms).sum::<f64>()).collect(),
        raw_ms: raw.iter().zip(raw_total).map(|(r, t)| t - r.iter().sum::<f64>()).collect(),
    });
    rows.push(StepRow { step: "total".into(), ours_ms: ours_total.to_vec(), raw_ms: raw_total.to_vec() });
    rows
}

/// The files the host writes for the guest half (under the host's /tmp,
/// which the guest sees).
struct Work {
    dir: PathBuf,
}

impl Work {
    fn new(c: &Ceph) -> R<Work> {
        use std::os::unix::fs::PermissionsExt;
        let dir = std::env::temp_dir().join(format!("bench-csi-rbd-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let w = Work { dir };
        let write = |name: &str, text: String| -> R<()> {
            let p = w.dir.join(name);
            std::fs::write(&p, text).map_err(|e| format!("write {}: {e}", p.display()))?;
            std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600))
                .map_err(|e| format!("chmod {}: {e}", p.display()))
        };
        write("config.json", c.cluster_config_json(CLUSTER_ID))?;
        write(
            "env.json",
            json!({"monitor": c.mon_addr().to_string(), "conf": c.conf(), "user": "admin", "key": c.admin_key()})
                .to_string(),
        )?;
        Ok(w)
    }
}

impl Drop for Work {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Copies of binaries in a fresh directory under the temp dir (the guest
/// sees the host's /tmp, not its /var/tmp), removed on drop.
struct StagedBins {
    dir: PathBuf,
}

impl StagedBins {
    fn new(bins: &[(&Path, &str)]) -> R<StagedBins> {
        let dir = std::env::temp_dir().join(format!("bench-csi-rbd-bin-{}", std::process::id()));
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

/// Runs the benchmark: a Ceph cluster here, everything else in one guest.
pub fn run(o: &Opts) -> R<Report> {
    ensure!((1..=200).contains(&o.n), "--n must be 1..=200");
    ensure!((4..=4096).contains(&o.size_mib), "--size-mib must be 4..=4096");
    if let Some(d) = &o.driver {
        ensure!(d.is_file(), "csi-rbd not found at {} (--driver)", d.display());
    }
    let c = Ceph::start().map_err(|e| format!("start ceph: {e}"))?;
    let work = Work::new(&c)?;
    let root = testkit::util::workspace_root();
    let run = root.join("scripts/guest/run.sh");
    let script = root.join("scripts/guest/bench-csi-rbd.sh");
    ensure!(run.is_file() && script.is_file(), "{} or {} missing", run.display(), script.display());
    let me = std::env::current_exe().map_err(|e| format!("own path: {e}"))?;
    let mut bins: Vec<(&Path, &str)> = vec![(&me, "conformance")];
    if let Some(d) = &o.driver {
        bins.push((d, "csi-rbd"));
    }
    let stage = StagedBins::new(&bins)?;
    // "-" tells the guest script: no driver.
    let driver_arg = if o.driver.is_some() { stage.dir.join("csi-rbd") } else { PathBuf::from("-") };
    let addr = format!("{}/{}", c.host(10), c.prefix_len());
    let started = Instant::now();
    let out = Command::new("bash")
        .arg(&run)
        .arg(&script)
        .arg(stage.dir.join("conformance"))
        .arg(&driver_arg)
        .arg(&work.dir)
        .arg(o.n.to_string())
        .arg(o.size_mib.to_string())
        .env("GUEST_NETWORK", format!("bridge:{}", c.bridge()))
        .env("GUEST_ADDR", &addr)
        .env("GUEST_MODULES", "rbd")
        .env("GUEST_ENV", "BENCH_CSI_LOG BENCH_CSI_TMP")
        .env("GUEST_TIMEOUT", (300 + 60 * o.n).to_string())
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run {}: {e}", run.display()))?;
    let took = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let Some(line) = stdout.lines().find_map(|l| l.split_once(MARK).map(|(_, j)| j.to_string())) else {
        bail!(
            "the guest printed no result ({:?}):\n{}\n{}",
            out.status,
            testkit::util::clip(&stdout, 6000),
            testkit::util::clip(&String::from_utf8_lossy(&out.stderr), 2000)
        )
    };
    let v: Value = serde_json::from_str(&line).map_err(|e| format!("guest result {line:?}: {e}"))?;
    let mut ours_busy = vec![];
    let mut ours_stage = vec![];
    let print_steps = std::env::var_os("BENCH_CSI_LOG").is_some();
    for l in stdout.lines().filter_map(|l| l.split_once(STEPS_MARK).map(|(_, s)| s)) {
        if print_steps {
            eprintln!("{l}");
        }
        // Node A's unstages are the migrations' (B's are the clean-up).
        if let Some(us) = l.strip_prefix("bench-a:").and_then(|l| l.split_once("unmap steps: busy=")) {
            ours_busy.extend(us.1.split("µs").next().and_then(|n| n.parse::<f64>().ok()).map(|us| us / 1000.0));
        }
        // Node A's stages are the new images' (B's are the migrations').
        if let Some(steps) = l.strip_prefix("bench-a:").and_then(stage_steps) {
            ours_stage.push(steps);
        }
    }
    let mut report = Report { n: o.n, ..Default::default() };
    for r in v["rows"].as_array().into_iter().flatten() {
        let nums = |k: &str| -> Vec<f64> {
            r[k].as_array().map(|a| a.iter().filter_map(Value::as_f64).collect()).unwrap_or_default()
        };
        let what = ROWS.iter().find(|(w, _)| r["what"] == *w).ok_or_else(|| format!("unknown row {r}"))?;
        report.rows.push(Row { what: what.0, baseline: what.1, ours_ms: nums("ours"), base_ms: nums("base") });
    }
    for n in v["notes"].as_array().into_iter().flatten() {
        report.notes.push(n.as_str().unwrap_or_default().to_string());
    }
    // With the drivers' step lines (one `unmap steps: busy=` per migration
    // on node A), the migration again with each side's own wait for the
    // kernel to let go of the device taken out, round by round.
    let raw_busy: Vec<f64> = v["raw_busy"].as_array().into_iter().flatten().filter_map(Value::as_f64).collect();
    let migration = report.rows.iter().find(|r| r.what == MIGRATION.0).map(|r| (r.ours_ms.clone(), r.base_ms.clone()));
    if let Some((ours, base)) = migration.filter(|(o, b)| o.len() == ours_busy.len() && b.len() == raw_busy.len()) {
        let busy_rounds = ours_busy.iter().filter(|b| **b > 0.0).count();
        report.rows.push(Row {
            what: MIGRATION_NOT_BUSY.0,
            baseline: MIGRATION_NOT_BUSY.1,
            ours_ms: ours.iter().zip(&ours_busy).map(|(t, b)| t - b).collect(),
            base_ms: base.iter().zip(&raw_busy).map(|(t, b)| t - b).collect(),
        });
        let (m, p) = median_p90(&ours_busy.iter().copied().filter(|b| *b > 0.0).collect::<Vec<_>>());
        report.notes.push(format!(
            "the migration's unmap on node A (driver log): busy after the umount in {busy_rounds} of {} rounds, \
             median {m:.1} ms, p90 {p:.1} ms of those",
            o.n
        ));
    }
    let raw_stage: Vec<Vec<f64>> = v["raw_stage"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|r| r.as_array().into_iter().flatten().filter_map(Value::as_f64).collect())
        .collect();
    if print_steps {
        for (i, r) in raw_stage.iter().enumerate() {
            let parts: Vec<String> =
                RAW_STAGE_STEPS.iter().zip(r).map(|(n, ms)| format!("{n}={:.0}µs", ms * 1000.0)).collect();
            eprintln!("raw: round {i}: stage steps: {}", parts.join(" "));
        }
    }
    if let Some(stage) = report.rows.iter().find(|r| r.what == ROWS[1].0) {
        report.steps = step_rows(&ours_stage, &stage.ours_ms, &raw_stage, &stage.base_ms);
    }
    // The same mkfs with the same options on both sides, whose time under
    // TCG swings by tens of ms from one call to the next: the stage again
    // with each side's own mkfs taken out, round by round (the total stays
    // the row above).
    if let Some(row) = less_mkfs(&report.rows, &ours_stage, &raw_stage) {
        report.rows.push(row);
    }
    report.notes.push(format!("one guest kernel under TCG (software CPU): boot + {} rounds took {took:.0?}", o.n));
    // Nothing either side made may stay in the pool.
    let left = c.rbd(&["ls", POOL]).map_err(|e| format!("rbd ls: {e}"))?;
    if !left.trim().is_empty() {
        report.notes.push(format!("left in pool {POOL}: {}", left.split_whitespace().collect::<Vec<_>>().join(" ")));
    }
    Ok(report)
}

/// The new-image stage less each side's own mkfs, per round; None without
/// every round's step lines on both sides.
fn less_mkfs(rows: &[Row], ours_steps: &[Vec<(String, f64)>], raw_steps: &[Vec<f64>]) -> Option<Row> {
    let stage = rows.iter().find(|r| r.what == ROWS[1].0)?;
    let mkfs_at = RAW_STAGE_STEPS.iter().position(|s| *s == "mkfs")?;
    if ours_steps.len() != stage.ours_ms.len() || raw_steps.len() != stage.base_ms.len() {
        return None;
    }
    let ours_mkfs = ours_steps.iter().map(|r| r.iter().filter(|(n, _)| n == "mkfs").map(|(_, ms)| ms).sum::<f64>());
    let raw_mkfs = raw_steps.iter().map(|r| r.get(mkfs_at).copied()).collect::<Option<Vec<f64>>>()?;
    Some(Row {
        what: STAGE_LESS_MKFS.0,
        baseline: STAGE_LESS_MKFS.1,
        ours_ms: stage.ours_ms.iter().zip(ours_mkfs).map(|(t, m)| t - m).collect(),
        base_ms: stage.base_ms.iter().zip(raw_mkfs).map(|(t, m)| t - m).collect(),
    })
}

/// The new-image stage less each side's mkfs (from the step lines).
const STAGE_LESS_MKFS: (&str, &str) = ("NodeStageVolume less mkfs", "map+mount (mkfs out)");

/// The rows, in order: (operation, baseline).
const ROWS: &[(&str, &str)] = &[
    ("CreateVolume", "rbd create (CLI)"),
    ("NodeStageVolume (mkfs)", "map+mkfs.ext4+mount"),
    ("NodePublishVolume", "mount MS_BIND"),
    ("NodeUnpublishVolume", "umount + rmdir"),
    MIGRATION,
    ("DeleteVolume", "rbd rm (CLI)"),
];

const MIGRATION: (&str, &str) = ("migrate: unstage A+stage B", "umount+unmap+map+mount");
/// The migration less each side's wait for the kernel to release the
/// device after the umount (EBUSY on unmap): host-side, from the drivers'
/// step lines (at debug level, the bench's default for them).
const MIGRATION_NOT_BUSY: (&str, &str) = ("migrate, less kernel busy", "same, less its busy wait");

fn ms(t: Instant) -> f64 {
    t.elapsed().as_secs_f64() * 1e3
}

fn runtime() -> R<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("tokio: {e}"))
}

/// What the guest half reads from the host's env.json.
struct Env {
    monitor: String,
    conf: String,
    user: String,
    key: String,
}

impl Env {
    fn load(work: &Path) -> R<Env> {
        let p = work.join("env.json");
        let text = std::fs::read_to_string(&p).map_err(|e| format!("read {}: {e}", p.display()))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| format!("{}: {e}", p.display()))?;
        let s = |k: &str| v[k].as_str().map(str::to_string).ok_or_else(|| format!("{}: no {k}", p.display()));
        Ok(Env { monitor: s("monitor")?, conf: s("conf")?, user: s("user")?, key: s("key")? })
    }

    /// `rbd -c CONF ARGS`; fails unless it exits 0.
    fn rbd(&self, args: &[&str]) -> R<()> {
        let out = Command::new("rbd")
            .arg("-c")
            .arg(&self.conf)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("run rbd: {e}"))?;
        ensure!(
            out.status.success(),
            "rbd {}: {}: {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(())
    }
}

/// The raw kernel side: an image mapped through sysfs, its device's number.
struct Mapped(u32);

/// The raw side's map options: csi-rbd's krbd defaults (`noshare`: a Ceph
/// client per mapping, so that fencing one volume leaves the others alone),
/// so that both sides pay the same kernel work.
pub const MAP_OPTIONS: &str = "ms_mode=prefer-crc,noshare";

/// Maps `pool/image` as csi-rbd's krbd mounter does (the key in the
/// written string, never in an argument) and waits for its device node.
fn map(env: &Env, image: &str) -> R<Mapped> {
    let spec = format!("{} name={},secret={},{MAP_OPTIONS} {POOL} {image} -", env.monitor, env.user, env.key);
    std::fs::write("/sys/bus/rbd/add_single_major", spec)
        .map_err(|e| format!("map {POOL}/{image}: write /sys/bus/rbd/add_single_major: {e}"))?;
    for e in std::fs::read_dir("/sys/bus/rbd/devices").map_err(|e| format!("read /sys/bus/rbd/devices: {e}"))? {
        let p = e.map_err(|e| format!("read /sys/bus/rbd/devices: {e}"))?.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default().trim().to_string();
        if read("pool") == POOL && read("name") == image {
            let id: u32 = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.parse().ok())
                .ok_or_else(|| format!("odd rbd device {}", p.display()))?;
            let dev = PathBuf::from(format!("/dev/rbd{id}"));
            let deadline = Instant::now() + Duration::from_secs(10);
            while !dev.exists() {
                ensure!(Instant::now() < deadline, "{} did not appear", dev.display());
                std::thread::sleep(Duration::from_millis(2));
            }
            return Ok(Mapped(id));
        }
    }
    bail!("{POOL}/{image} mapped but not under /sys/bus/rbd/devices")
}

/// Unmaps; EBUSY right after the umount (the filesystem still letting go of
/// the device) is waited out with a 1 ms poll, bounded by 10 s. Returns how
/// long the device stayed busy (ms).
fn unmap(m: &Mapped) -> R<f64> {
    let started = Instant::now();
    let deadline = started + Duration::from_secs(10);
    let mut busy = false;
    loop {
        match std::fs::write("/sys/bus/rbd/remove_single_major", m.0.to_string()) {
            Ok(()) => return Ok(if busy { ms(started) } else { 0.0 }),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && Instant::now() < deadline => {
                busy = true;
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => bail!("unmap rbd{}: {e}", m.0),
        }
    }
}

fn mount(src: &Path, target: &Path, fstype: Option<&str>, flags: nix::mount::MsFlags) -> R<()> {
    nix::mount::mount(Some(src), target, fstype, flags, None::<&str>)
        .map_err(|e| format!("mount {} on {}: {e}", src.display(), target.display()))
}

fn umount(target: &Path) -> R<()> {
    nix::mount::umount2(target, nix::mount::MntFlags::empty()).map_err(|e| format!("umount {}: {e}", target.display()))
}

fn mkfs(dev: &Path) -> R<()> {
    let out = Command::new("mkfs.ext4")
        .args(MKFS_EXT4)
        .arg(dev)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("run mkfs.ext4: {e}"))?;
    ensure!(out.status.success(), "mkfs.ext4 {}: {}", dev.display(), String::from_utf8_lossy(&out.stderr).trim());
    Ok(())
}

fn rwo_mount() -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_mode: Some(pb::volume_capability::AccessMode {
            mode: pb::volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
        access_type: Some(pb::volume_capability::AccessType::Mount(pb::volume_capability::MountVolume {
            fs_type: "ext4".into(),
            ..Default::default()
        })),
    }
}

/// A csi-rbd process in the guest, at debug level unless BENCH_CSI_LOG says
/// otherwise: its per-step lines (a few per call; the gRPC stack stays at
/// info) give the migration's row less the kernel's busy wait.
fn start_driver(bin: &Path, mode: &str, node: &str, work: &Path) -> R<DriverProcess> {
    let level = std::env::var("BENCH_CSI_LOG").unwrap_or_else(|_| "debug".into());
    let args: Vec<String> = vec![
        format!("--mode={mode}"),
        format!("--node-id={node}"),
        format!("--log-level={level}"),
        format!("--cluster-config={}", work.join("config.json").display()),
        "--state-dir={dir}/state".into(),
    ];
    Ok(DriverProcess::start(bin, &format!("bench-csi-rbd-{node}"), &args)?)
}

/// One side's gRPC handles.
struct Plugin {
    d: DriverProcess,
    ch: Channel,
}

fn secrets(env: &Env) -> HashMap<String, String> {
    [("userID", env.user.as_str()), ("userKey", env.key.as_str())]
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

/// The guest half: `n` rounds of ours and raw, one JSON line after [`MARK`].
pub fn in_guest(driver: Option<&Path>, work: &Path, n: usize, size_mib: u64) -> R<()> {
    let env = Env::load(work)?;
    let rt = runtime()?;
    // Under TMPDIR: the guest-local filesystem bench-csi-rbd.sh mounts (the
    // drivers' state dirs and logs are there too, see DriverProcess).
    let scratch = std::env::temp_dir().join(format!("bench-csi-rbd-scratch-{}", std::process::id()));
    std::fs::create_dir_all(&scratch).map_err(|e| format!("create {}: {e}", scratch.display()))?;
    let plugins = match driver {
        Some(bin) => {
            let a = start_driver(bin, "all", "bench-a", work)?;
            let b = start_driver(bin, "node", "bench-b", work)?;
            Some((Plugin { ch: rt.block_on(a.channel())?, d: a }, Plugin { ch: rt.block_on(b.channel())?, d: b }))
        }
        None => None,
    };
    let result = rounds(&rt, &env, plugins.as_ref(), &scratch, n, size_mib);
    if result.is_err() {
        for (name, p) in plugins.iter().flat_map(|(a, b)| [("bench-a", a), ("bench-b", b)]) {
            eprintln!("--- {name} log (tail)\n{}", tail(&p.d.log(), 30));
        }
    }
    let RoundsOut { rows, notes, busy, raw_stage } = result?;
    // The drivers log each stage's and unstage's steps at debug level: pass
    // those lines to the host (it prints them when BENCH_CSI_LOG is set).
    #[allow(clippy::print_stdout)]
    for (name, p) in plugins.iter().flat_map(|(a, b)| [("bench-a", a), ("bench-b", b)]) {
        for l in p.d.log().lines().filter(|l| l.contains("steps:")) {
            println!("{STEPS_MARK}{name}: {l}");
        }
    }
    // The channels' connections live on `rt`: close them before the drivers
    // wait for their clients on SIGTERM.
    drop(plugins);
    drop(rt);
    // Empty by now (every round unmounts and removes its dirs); never
    // recursive, in case a mount were left under it.
    let _ = std::fs::remove_dir(&scratch);
    let rows: Vec<Value> = rows.iter().map(|(w, ours, base)| json!({"what": w, "ours": ours, "base": base})).collect();
    #[allow(clippy::print_stdout)]
    {
        println!("{MARK}{}", json!({"rows": rows, "notes": notes, "raw_busy": busy, "raw_stage": raw_stage}));
    }
    Ok(())
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

type Rows = Vec<(&'static str, Vec<f64>, Vec<f64>)>;

/// What the rounds measured.
struct RoundsOut {
    rows: Rows,
    notes: Vec<String>,
    /// The raw migration's wait for the kernel to release the device, per round.
    busy: Vec<f64>,
    /// The raw new-image stage's steps per round: [`RAW_STAGE_STEPS`], ms.
    raw_stage: Vec<[f64; 3]>,
}

fn rounds(
    rt: &tokio::runtime::Runtime,
    env: &Env,
    plugins: Option<&(Plugin, Plugin)>,
    scratch: &Path,
    n: usize,
    size_mib: u64,
) -> R<RoundsOut> {
    let mut rows: Rows = ROWS.iter().map(|(w, _)| (*w, vec![], vec![])).collect();
    let mut moves = vec![];
    let mut busy = vec![];
    let mut raw_stage = vec![];
    // Whether the controller advertises PUBLISH_UNPUBLISH_VOLUME: a CO calls
    // ControllerPublish/Unpublish only then, and so does the bench.
    let mut attach = false;
    let size = format!("{size_mib}M");
    let bytes = i64::try_from(size_mib << 20).map_err(|e| format!("size: {e}"))?;
    let sec = secrets(env);
    let params: HashMap<String, String> =
        [("clusterID", CLUSTER_ID), ("pool", POOL), ("imageFeatures", FEATURES), ("csi.storage.k8s.io/fstype", "ext4")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    let node = |p: &Plugin| NodeClient::new(p.ch.clone());
    let grpc = |what: &str, e: tonic::Status| format!("{what}: {e}");
    for i in 0..n {
        // Which side goes first alternates from round to round, so neither
        // is always the one that runs on a cache (the kernel's, Ceph's) the
        // other warmed, or in the wake of the other's writeback.
        let order = if i % 2 == 0 { [true, false] } else { [false, true] };
        for raw_turn in order {
            if raw_turn {
                // Raw: the CLI, then the kernel and mount(2).
                let image = format!("raw-{}-{i}", std::process::id());
                let features: Vec<&str> = FEATURES.split(',').flat_map(|f| ["--image-feature", f]).collect();
                let mut create_args = vec!["create", "--size", &size];
                create_args.extend(&features);
                let spec = format!("{POOL}/{image}");
                create_args.push(&spec);
                let t = Instant::now();
                env.rbd(&create_args)?;
                rows[0].2.push(ms(t));
                let staging = scratch.join(format!("raw-stage-{i}"));
                let target = scratch.join(format!("raw-pod-{i}"));
                std::fs::create_dir(&staging).map_err(|e| format!("mkdir: {e}"))?;
                // Timed step by step as the driver logs its own (map, mkfs, mount).
                let t = Instant::now();
                let m = map(env, &image)?;
                let map_ms = ms(t);
                let dev = PathBuf::from(format!("/dev/rbd{}", m.0));
                let s = Instant::now();
                mkfs(&dev)?;
                let mkfs_ms = ms(s);
                let s = Instant::now();
                mount(&dev, &staging, Some("ext4"), nix::mount::MsFlags::empty())?;
                let mount_ms = ms(s);
                rows[1].2.push(ms(t));
                raw_stage.push([map_ms, mkfs_ms, mount_ms]);
                let t = Instant::now();
                std::fs::create_dir(&target).map_err(|e| format!("mkdir: {e}"))?;
                mount(&staging, &target, None, nix::mount::MsFlags::MS_BIND)?;
                rows[2].2.push(ms(t));
                let t = Instant::now();
                umount(&target)?;
                std::fs::remove_dir(&target).map_err(|e| format!("rmdir: {e}"))?;
                rows[3].2.push(ms(t));
                let t = Instant::now();
                umount(&staging)?;
                busy.push(unmap(&m)?);
                let m = map(env, &image)?;
                mount(&dev_of(&m), &staging, Some("ext4"), nix::mount::MsFlags::empty())?;
                rows[4].2.push(ms(t));
                umount(&staging)?;
                unmap(&m)?;
                std::fs::remove_dir(&staging).map_err(|e| format!("rmdir: {e}"))?;
                let t = Instant::now();
                env.rbd(&["rm", "--no-progress", &spec])?;
                rows[5].2.push(ms(t));
                continue;
            }

            // Ours: the same life over gRPC, the volume moving from A to B.
            let Some((a, b)) = plugins else { continue };
            let ctl = || ControllerClient::new(a.ch.clone());
            if i == 0 {
                attach = advertises_publish(rt, &a.ch)?;
            }
            let t = Instant::now();
            let vol = rt
                .block_on(ctl().create_volume(pb::CreateVolumeRequest {
                    name: format!("bench-{}-{i}", std::process::id()),
                    capacity_range: Some(pb::CapacityRange { required_bytes: bytes, limit_bytes: 0 }),
                    volume_capabilities: vec![rwo_mount()],
                    parameters: params.clone(),
                    secrets: sec.clone(),
                    ..Default::default()
                }))
                .map_err(|e| grpc("CreateVolume", e))?
                .into_inner()
                .volume
                .ok_or("CreateVolume returned no volume")?;
            rows[0].1.push(ms(t));
            let publish = |node_id: &str| -> R<HashMap<String, String>> {
                if !attach {
                    return Ok(HashMap::new());
                }
                Ok(rt
                    .block_on(ctl().controller_publish_volume(pb::ControllerPublishVolumeRequest {
                        volume_id: vol.volume_id.clone(),
                        node_id: node_id.into(),
                        volume_capability: Some(rwo_mount()),
                        readonly: false,
                        secrets: sec.clone(),
                        volume_context: vol.volume_context.clone(),
                    }))
                    .map_err(|e| grpc("ControllerPublishVolume", e))?
                    .into_inner()
                    .publish_context)
            };
            let unpublish = |node_id: &str| -> R<()> {
                if !attach {
                    return Ok(());
                }
                rt.block_on(ctl().controller_unpublish_volume(pb::ControllerUnpublishVolumeRequest {
                    volume_id: vol.volume_id.clone(),
                    node_id: node_id.into(),
                    secrets: sec.clone(),
                }))
                .map_err(|e| grpc("ControllerUnpublishVolume", e))?;
                Ok(())
            };
            let stage = |p: &Plugin, path: &Path, pc: &HashMap<String, String>| -> R<()> {
                std::fs::create_dir_all(path).map_err(|e| format!("mkdir: {e}"))?;
                rt.block_on(node(p).node_stage_volume(pb::NodeStageVolumeRequest {
                    volume_id: vol.volume_id.clone(),
                    publish_context: pc.clone(),
                    staging_target_path: path.display().to_string(),
                    volume_capability: Some(rwo_mount()),
                    secrets: sec.clone(),
                    volume_context: vol.volume_context.clone(),
                }))
                .map_err(|e| grpc("NodeStageVolume", e))?;
                Ok(())
            };
            let unstage = |p: &Plugin, path: &Path| -> R<()> {
                rt.block_on(node(p).node_unstage_volume(pb::NodeUnstageVolumeRequest {
                    volume_id: vol.volume_id.clone(),
                    staging_target_path: path.display().to_string(),
                }))
                .map_err(|e| grpc("NodeUnstageVolume", e))?;
                Ok(())
            };
            let stage_a = scratch.join(format!("a-stage-{i}"));
            let stage_b = scratch.join(format!("b-stage-{i}"));
            let pod = scratch.join(format!("a-pod-{i}"));
            std::fs::create_dir_all(&pod).map_err(|e| format!("mkdir: {e}"))?;
            let target = pod.join("mount");
            let pc = publish("bench-a")?;
            let t = Instant::now();
            stage(a, &stage_a, &pc)?;
            rows[1].1.push(ms(t));
            let t = Instant::now();
            rt.block_on(node(a).node_publish_volume(pb::NodePublishVolumeRequest {
                volume_id: vol.volume_id.clone(),
                publish_context: pc.clone(),
                staging_target_path: stage_a.display().to_string(),
                target_path: target.display().to_string(),
                volume_capability: Some(rwo_mount()),
                readonly: false,
                secrets: sec.clone(),
                volume_context: vol.volume_context.clone(),
            }))
            .map_err(|e| grpc("NodePublishVolume", e))?;
            rows[2].1.push(ms(t));
            let t = Instant::now();
            rt.block_on(node(a).node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
                volume_id: vol.volume_id.clone(),
                target_path: target.display().to_string(),
            }))
            .map_err(|e| grpc("NodeUnpublishVolume", e))?;
            rows[3].1.push(ms(t));
            let t = Instant::now();
            unstage(a, &stage_a)?;
            let mut took = ms(t);
            let t = Instant::now();
            unpublish("bench-a")?;
            let pc = publish("bench-b")?;
            moves.push(ms(t));
            let t = Instant::now();
            stage(b, &stage_b, &pc)?;
            took += ms(t);
            rows[4].1.push(took);
            unstage(b, &stage_b)?;
            unpublish("bench-b")?;
            let t = Instant::now();
            rt.block_on(
                ctl().delete_volume(pb::DeleteVolumeRequest { volume_id: vol.volume_id.clone(), secrets: sec.clone() }),
            )
            .map_err(|e| grpc("DeleteVolume", e))?;
            rows[5].1.push(ms(t));
            for d in [&stage_a, &stage_b, &pod] {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
    let were_busy: Vec<f64> = busy.iter().copied().filter(|b| *b > 0.0).collect();
    let (bm, bp) = median_p90(&were_busy);
    let busy_note = if were_busy.is_empty() {
        format!("the migration's unmap on the raw side: never busy after the umount in {n} rounds")
    } else {
        format!(
            "the migration's unmap on the raw side: the kernel kept the device busy (EBUSY) after the umount in {} of \
         {n} rounds, median {bm:.1} ms, p90 {bp:.1} ms of those (a filesystem made moments before; the driver \
         waits the same out: its row less the busy wait is below)",
            were_busy.len()
        )
    };
    let mut notes = if plugins.is_some() && attach {
        let (m, p) = median_p90(&moves);
        vec![format!(
            "migration's ControllerUnpublish(A) + ControllerPublish(B) (the attach lock moving; no raw \
             equivalent): median {m:.1} ms, p90 {p:.1} ms"
        )]
    } else if plugins.is_some() {
        vec!["the controller does not advertise PUBLISH_UNPUBLISH_VOLUME: no ControllerPublish/Unpublish \
              calls (as a CO would not make them)"
            .to_string()]
    } else {
        vec!["--raw-only: the raw sequence alone, no driver".to_string()]
    };
    notes.push(busy_note);
    Ok(RoundsOut { rows, notes, busy, raw_stage })
}

fn advertises_publish(rt: &tokio::runtime::Runtime, ch: &Channel) -> R<bool> {
    use pb::controller_service_capability::rpc::Type;
    let caps = rt
        .block_on(
            ControllerClient::new(ch.clone()).controller_get_capabilities(pb::ControllerGetCapabilitiesRequest {}),
        )
        .map_err(|e| format!("ControllerGetCapabilities: {e}"))?
        .into_inner()
        .capabilities;
    Ok(caps.iter().any(|c| {
        matches!(&c.r#type, Some(pb::controller_service_capability::Type::Rpc(r)) if r.r#type == Type::PublishUnpublishVolume as i32)
    }))
}

fn dev_of(m: &Mapped) -> PathBuf {
    PathBuf::from(format!("/dev/rbd{}", m.0))
}

impl Report {
    /// The side-by-side table.
    pub fn table(&self) -> String {
        let mut s = format!(
            "csi-rbd vs the raw operations it performs, n={} (median / p90 ms; goal: overhead ≤ 50 ms)\n",
            self.n
        );
        s += &format!(
            "{:<27} {:>15}  {:<23} {:>15} {:>10} {:>7}  {}\n",
            "operation", "ours", "baseline", "baseline ms", "overhead", "ratio", "paired [IQR]"
        );
        for r in &self.rows {
            let paired = Paired::of(&r.ours_ms, &r.base_ms).map_or("-".to_string(), |p| p.short());
            let (om, op) = median_p90(&r.ours_ms);
            let (bm, bp) = median_p90(&r.base_ms);
            let ours = if r.ours_ms.is_empty() { "-".to_string() } else { format!("{om:>7.1} / {op:>5.1}") };
            let (over, ratio) = if r.ours_ms.is_empty() {
                ("-".to_string(), "-".to_string())
            } else {
                (format!("{:+.1}", om - bm), format!("{:.2}x", om / bm))
            };
            s += &format!(
                "{:<27} {:>15}  {:<23} {:>7.1} / {:>5.1} {:>10} {:>7}  {}\n",
                r.what, ours, r.baseline, bm, bp, over, ratio, paired
            );
        }
        s += "(overhead: the difference of the medians; paired: the median of each round's ours-baseline \
              [its quartiles], which leaves out the machine's drift from round to round; the sides alternate \
              which goes first)\n";
        if !self.steps.is_empty() {
            s += "\nNodeStageVolume of a new image, step by step (median / p90 ms; ours: node A's step log, raw: \
                  timed in the bench; medians of steps do not add up to the median of totals; paired: the \
                  median of each round's ours-raw, which the machine's drift from round to round leaves out)\n";
            s += &format!("{:<42} {:>15} {:>15} {:>10}  {}\n", "step", "ours", "raw", "ours-raw", "paired [IQR]");
            for r in &self.steps {
                let (om, op) = median_p90(&r.ours_ms);
                let (rm, rp) = median_p90(&r.raw_ms);
                let raw = if r.raw_ms.is_empty() { "-".to_string() } else { format!("{rm:>7.1} / {rp:>5.1}") };
                let diff = if r.raw_ms.is_empty() { format!("{om:+.1}") } else { format!("{:+.1}", om - rm) };
                let paired = Paired::of(&r.ours_ms, &r.raw_ms).map_or("-".to_string(), |p| p.short());
                s += &format!("{:<42} {:>7.1} / {:>5.1} {:>15} {:>10}  {}\n", r.step, om, op, raw, diff, paired);
            }
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
                       "baseline_median_ms": bm, "baseline_p90_ms": bp, "overhead_ms": om - bm, "ratio": om / bm,
                       "paired": Paired::of(&r.ours_ms, &r.base_ms).map(|p| p.json())})
            })
            .collect();
        let steps: Vec<Value> = self
            .steps
            .iter()
            .map(|r| {
                let (om, op) = median_p90(&r.ours_ms);
                let raw = (!r.raw_ms.is_empty()).then(|| median_p90(&r.raw_ms));
                json!({"step": r.step, "ours_median_ms": om, "ours_p90_ms": op,
                       "raw_median_ms": raw.map(|r| r.0), "raw_p90_ms": raw.map(|r| r.1),
                       "paired_median_ms": r.paired(),
                       "paired": Paired::of(&r.ours_ms, &r.raw_ms).map(|p| p.json())})
            })
            .collect();
        json!({"n": self.n, "rows": rows, "stage_steps": steps, "notes": self.notes})
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stage_step_lines_parse_and_line_up_with_the_raw_steps() {
        let line = "2026-12-07T10:00:00.1Z DEBUG stage steps: load-record=12µs map=40000µs mkfs=150000µs \
                    mount=20000µs \x1b[3mvolume\x1b[0m=0001-x";
        let steps = stage_steps(line).unwrap();
        assert_eq!(steps.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(), ["load-record", "map", "mkfs", "mount"]);
        assert_eq!(steps[1].1, 40.0);
        assert!(stage_steps("DEBUG unstage steps: umount=1µs").is_none());
        let rows = step_rows(&[steps], &[215.0], &[vec![30.0, 140.0, 15.0]], &[186.0]);
        let get = |n: &str| rows.iter().find(|r| r.step == n).unwrap();
        assert_eq!(get("mkfs").raw_ms, [140.0]);
        assert!(get("load-record").raw_ms.is_empty());
        assert!((get(OUTSIDE_STEPS).ours_ms[0] - 4.988).abs() < 1e-9);
        assert_eq!(get("total").ours_ms, [215.0]);
        assert_eq!(get("mkfs").paired(), Some(10.0));
        assert_eq!(get("load-record").paired(), None);
        // A round without its step line: no table rather than a wrong one.
        assert!(step_rows(&[], &[215.0], &[], &[]).is_empty());
    }

    #[test]
    fn paired_spread_and_the_stage_less_mkfs() {
        let p = Paired::of(&[10.0, 20.0, 30.0, 40.0, 100.0], &[0.0, 0.0, 0.0, 0.0, 0.0]).unwrap();
        assert_eq!((p.median, p.q1, p.q3, p.min, p.max), (30.0, 20.0, 40.0, 10.0, 100.0));
        assert_eq!(p.short(), "+30.0 [+20.0, +40.0]");
        assert!(Paired::of(&[1.0], &[]).is_none());
        let rows = vec![Row { what: ROWS[1].0, baseline: ROWS[1].1, ours_ms: vec![300.0], base_ms: vec![250.0] }];
        let ours = vec![vec![("map".to_string(), 40.0), ("mkfs".to_string(), 180.0), ("mount".to_string(), 30.0)]];
        let row = less_mkfs(&rows, &ours, &[vec![35.0, 160.0, 20.0]]).unwrap();
        assert_eq!((row.ours_ms, row.base_ms), (vec![120.0], vec![90.0]));
        assert!(less_mkfs(&rows, &[], &[vec![35.0, 160.0, 20.0]]).is_none());
    }
}
