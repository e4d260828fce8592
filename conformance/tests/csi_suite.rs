//! `conformance csi` (the CSI sanity suite) against csi-nfs and a real
//! nfs-ganesha: the Identity, Controller and snapshot specs (`--skip Node`:
//! the node specs need a kernel NFS client, see docs/conformance-csi.md)
//! must all pass, and the run must leave nothing on the share.
//!
//! Needs `csi-nfs` next to the `conformance` binary:
//! `cargo build --release -p csi-nfs -p conformance && cargo test --release -p conformance --test csi_suite`

use std::path::{Path, PathBuf};
use std::process::Command;

use csi_suite::csi_process::DriverProcess;
use csi_suite::ganesha::Ganesha;

fn conformance_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_conformance"))
}

fn csi_nfs_bin() -> PathBuf {
    let p = conformance_bin().parent().expect("target dir").join("csi-nfs");
    assert!(p.is_file(), "{} missing: `cargo build --release -p csi-nfs` first", p.display());
    p
}

fn start_driver(port: u16) -> DriverProcess {
    let args = ["--mode", "all", "--node-id", "csi-suite-node", "--state-dir={dir}/state"].map(String::from);
    let args: Vec<String> = args.into_iter().chain([format!("--mount-options=port={port}")]).collect();
    DriverProcess::start(&csi_nfs_bin(), "csi-suite", &args).expect("start csi-nfs")
}

fn entries(p: &Path) -> Vec<String> {
    let mut v: Vec<String> =
        std::fs::read_dir(p).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    v.sort();
    v
}

#[test]
fn identity_controller_and_snapshot_specs_pass_against_csi_nfs_and_leak_nothing() {
    let g = Ganesha::start().expect("start nfs-ganesha (apt-get install nfs-ganesha nfs-ganesha-vfs)");
    let d = start_driver(g.port());
    let params = d.dir().join("params.yaml");
    std::fs::write(&params, "server: 127.0.0.1\nshare: /export\n").unwrap();
    let mount_dir = d.dir().join("mnt");
    std::fs::create_dir(&mount_dir).unwrap();

    let out = Command::new(conformance_bin())
        .args(["csi", "--endpoint", &d.endpoint(), "--skip", "Node", "--rpc-timeout", "60"])
        .arg(format!("--params={}", params.display()))
        .arg(format!("--mount-dir={}", mount_dir.display()))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report = format!("{stdout}\n--- stderr\n{stderr}\n--- driver log (tail)\n{}", tail(&d.log(), 40));

    let summary = stdout.lines().last().unwrap_or_default();
    assert!(summary.contains(" 0 failed"), "specs failed:\n{report}");
    assert!(out.status.success(), "exit status {:?}:\n{report}", out.status);
    assert!(summary.contains("26 filtered"), "--skip Node must leave out exactly the 26 node specs:\n{report}");
    let passed: usize =
        summary.split(": ").nth(1).and_then(|s| s.split(' ').next()).and_then(|n| n.parse().ok()).unwrap();
    assert!(passed >= 20, "only {passed} specs passed:\n{report}");
    assert!(!stderr.contains("cleanup:"), "cleanup reported a problem:\n{report}");
    // csi-nfs keeps its records in .csi-nfs/: every volume's record must be gone too.
    let volumes: Vec<String> = entries(&g.root()).into_iter().filter(|n| n != ".csi-nfs").collect();
    assert_eq!(volumes, Vec::<String>::new(), "the run left volumes on the share:\n{report}");
    let records = g.root().join(".csi-nfs/volumes");
    if records.exists() {
        assert_eq!(entries(&records), Vec::<String>::new(), "the run left volume records:\n{report}");
    }
    assert_eq!(entries(&mount_dir), Vec::<String>::new(), "the run left spec directories behind");
}

#[test]
fn a_missing_endpoint_is_a_usage_error_not_a_pass() {
    let out = Command::new(conformance_bin())
        .args(["csi", "--endpoint", "unix:///nonexistent/csi-suite.sock"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}
