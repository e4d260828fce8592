//! Shared helpers for the integration tests: locating binaries, running the
//! `conformance` CLI and reading its JSON report.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use serde_json::Value;

pub const REFERENCE_DIR: &str = "/usr/lib/cni";

pub fn conformance_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_conformance"))
}

/// Where our plugins are: `CFT_PLUGIN_DIR`, else next to the conformance
/// binary (cargo puts every workspace binary in the same target dir).
pub fn our_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CFT_PLUGIN_DIR") {
        return PathBuf::from(d);
    }
    conformance_bin().parent().map(Path::to_path_buf).unwrap_or_else(|| PathBuf::from("."))
}

/// Our plugin directory; fails the test loudly if the binaries are missing.
pub fn require_ours() -> PathBuf {
    let d = our_dir();
    for b in ["cni-bridge", "cni-ipam"] {
        assert!(
            d.join(b).is_file(),
            "{b} not found in {} — build the workspace first (`cargo test --workspace` \
             builds every binary into the same target dir), or set CFT_PLUGIN_DIR",
            d.display()
        );
    }
    d
}

pub fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "these tests create network namespaces and bridges: run as root");
}

pub fn require_reference() -> PathBuf {
    let d = PathBuf::from(REFERENCE_DIR);
    for b in ["bridge", "host-local", "tuning", "portmap"] {
        assert!(
            d.join(b).is_file(),
            "reference plugin {b} missing in {REFERENCE_DIR} (apt-get install containernetworking-plugins)"
        );
    }
    d
}

/// A temp dir removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!(
            "cft-{}-t{}-{tag}",
            std::process::id(),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0)
        ));
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The suite's outcome: exit code, JSON report, name -> (result, detail).
pub struct SuiteRun {
    pub code: i32,
    pub report: Value,
    pub results: BTreeMap<String, (String, String)>,
    pub stderr: String,
}

impl SuiteRun {
    pub fn result(&self, name: &str) -> &str {
        self.results.get(name).map(|(r, _)| r.as_str()).unwrap_or("missing")
    }

    pub fn failed(&self) -> Vec<&str> {
        self.results.iter().filter(|(_, (r, _))| r == "fail").map(|(n, _)| n.as_str()).collect()
    }

    /// Asserts each named check has the expected result, printing the report on failure.
    pub fn expect(&self, names: &[&str], want: &str) {
        for n in names {
            assert_eq!(self.result(n), want, "check {n}: {:?}\nfull report:\n{}", self.results.get(*n), self.pretty());
        }
    }

    pub fn pretty(&self) -> String {
        let mut s = String::new();
        for (n, (r, d)) in &self.results {
            s.push_str(&format!("{n:<24} {r:<5} {d}\n"));
        }
        s
    }
}

/// Runs `conformance cni --json` with `config` written to a temp file.
pub fn run_suite(plugin_dir: &Path, ipam_dir: Option<&Path>, config: &Value, only: &[&str]) -> SuiteRun {
    run_suite_in(None, plugin_dir, ipam_dir, config, only)
}

/// [`run_suite`] inside the named network namespace (`ip netns exec`): the
/// plugin's host side is then that namespace.
pub fn run_suite_in(
    netns: Option<&str>,
    plugin_dir: &Path,
    ipam_dir: Option<&Path>,
    config: &Value,
    only: &[&str],
) -> SuiteRun {
    let tmp = TempDir::new("cfg");
    let cfg = tmp.0.join("net.json");
    std::fs::write(&cfg, config.to_string()).expect("write config");
    let mut cmd = match netns {
        Some(ns) => {
            let mut c = Command::new("ip");
            c.args(["netns", "exec", ns]).arg(conformance_bin());
            c
        }
        None => Command::new(conformance_bin()),
    };
    cmd.arg("cni").arg("--plugin-dir").arg(plugin_dir).arg("--config").arg(&cfg).arg("--json");
    if let Some(d) = ipam_dir {
        cmd.arg("--ipam-plugin-dir").arg(d);
    }
    if !only.is_empty() {
        cmd.arg("--only").args(only);
    }
    let out = cmd.output().expect("run conformance");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let report: Value = serde_json::from_str(stdout.trim())
        .unwrap_or_else(|e| panic!("conformance printed no JSON report ({e}):\nstdout: {stdout}\nstderr: {stderr}"));
    let mut results = BTreeMap::new();
    for r in report["results"].as_array().cloned().unwrap_or_default() {
        results.insert(
            r["name"].as_str().unwrap_or_default().to_string(),
            (
                r["result"].as_str().unwrap_or_default().to_string(),
                r["detail"].as_str().unwrap_or_default().to_string(),
            ),
        );
    }
    // Shows up with --nocapture: the record of what passed/failed.
    eprintln!("{stderr}");
    SuiteRun { code: out.status.code().unwrap_or(-1), report, results, stderr }
}

/// A plugin dir holding `name`, a shell wrapper that execs `real` for every
/// verb except DEL, which "succeeds" without doing anything (DEL leaks).
pub fn del_leaking_wrapper(name: &str, real: &Path) -> TempDir {
    use std::os::unix::fs::PermissionsExt;
    let t = TempDir::new("broken");
    let p = t.0.join(name);
    std::fs::write(
        &p,
        format!(
            "#!/bin/sh\n# Broken on purpose: DEL leaks everything.\nif [ \"$CNI_COMMAND\" = \"DEL\" ]; then exit 0; fi\nexec {} \"$@\"\n",
            real.display()
        ),
    )
    .expect("write wrapper");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    t
}

/// A plugin dir holding `name`, a shell wrapper that execs `real` after
/// rewriting stdin the way the pre-hardening code read it: a GC without any
/// attachments list gets an empty one ("nothing is valid"), and a config
/// carrying `cniVersions` is answered in 1.1.0, the list's highest entry,
/// instead of its `cniVersion`.
pub fn unsafe_gc_and_version_wrapper(name: &str, real: &Path) -> TempDir {
    use std::os::unix::fs::PermissionsExt;
    let t = TempDir::new("unsafe");
    let p = t.0.join(name);
    std::fs::write(
        &p,
        format!(
            r#"#!/bin/sh
# Broken on purpose: a missing GC list means "nothing is valid"; cniVersions beats cniVersion.
in=$(cat)
case "$in" in
  *'"cni.dev/valid-attachments"'*|*'"cni.dev/attachments"'*) ;;
  *) if [ "$CNI_COMMAND" = GC ]; then in=$(printf '%s' "$in" | sed 's|^{{|{{"cni.dev/valid-attachments":[],|'); fi ;;
esac
case "$in" in
  *'"cniVersions"'*) in=$(printf '%s' "$in" | sed 's/"cniVersion":"[0-9.]*"/"cniVersion":"1.1.0"/g') ;;
esac
printf '%s' "$in" | exec {} "$@"
"#,
            real.display()
        ),
    )
    .expect("write wrapper");
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).expect("chmod");
    t
}

pub fn bridge_config(bridge_type: &str, ipam_type: &str, version: &str, ip_masq: bool) -> Value {
    // The CLI's own config, on a subnet of its own so a CLI run beside this test cannot collide.
    let mut c = cni_suite::interop::bridge_conf(bridge_type, ipam_type, version, ip_masq);
    c["ipam"]["ranges"] = serde_json::json!([[{"subnet": "10.88.0.0/24"}]]);
    c["ipam"]["dataDir"] = serde_json::json!("/tmp/cft-unused");
    c
}

/// Checks every correct bridge+IPAM pair must pass regardless of spec version.
pub const CORE_CHECKS: [&str; 19] = [
    "version",
    "add-result-0.3.1",
    "add-result-0.4.0",
    "add-result-1.0.0",
    "add-cniversion-wins",
    "ping-peer-and-gateway",
    "check-passes",
    "check-detects-drift",
    "del-twice",
    "del-netns-gone",
    "del-no-netns",
    "del-never-added",
    "ip-reuse-after-del",
    "range-exhausted",
    "error-garbage-json",
    "error-missing-ifname",
    "error-unknown-version",
    "error-unknown-command",
    "concurrent-24",
];

/// Binaries a guest kernel runs, copied to a directory under the host's
/// /tmp: the guest sees the host's /tmp (an overlay on it) but not its
/// /var/tmp (a tmpfs there), where CARGO_TARGET_DIR may put them. Removed on
/// drop.
pub struct GuestBins {
    pub dir: PathBuf,
}

impl GuestBins {
    /// Copies each `(source, name)` into a fresh directory tagged `tag`;
    /// a missing source fails the test naming it and how to build it.
    pub fn stage(tag: &str, bins: &[(PathBuf, &str)]) -> GuestBins {
        let dir = std::env::temp_dir().join(format!("{tag}-guest-bin-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        let staged = GuestBins { dir };
        for (src, name) in bins {
            assert!(src.is_file(), "{} not found: cargo build --release --workspace", src.display());
            std::fs::copy(src, staged.dir.join(name)).unwrap_or_else(|e| panic!("copy {}: {e}", src.display()));
        }
        staged
    }
}

impl Drop for GuestBins {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Boots one guest kernel with `scripts/guest/run.sh SCRIPT ARGS...` (the
/// guest half of a test), with `env` for run.sh (GUEST_MODULES, …). Prints
/// the guest's output and how long it took, and returns its exit status and
/// stdout.
pub fn run_in_guest(
    script: &str,
    args: &[&std::ffi::OsStr],
    env: &[(&str, &str)],
) -> (std::process::ExitStatus, String) {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let run = root.join("scripts/guest/run.sh");
    let started = std::time::Instant::now();
    let out = Command::new("bash")
        .arg(&run)
        .arg(root.join(script))
        .args(args)
        .envs(env.iter().copied())
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", run.display()));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    eprintln!("{stdout}\n{stderr}\n(guest run took {:?})", started.elapsed());
    (out.status, stdout)
}
