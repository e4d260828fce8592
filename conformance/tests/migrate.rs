//! `conformance migrate` for csi-nfs over cni-overlay, in ONE guest kernel
//! (the host kernel has no NFS client): the clean move, the bad sequences
//! and the unclean move (host A crashes: cut off, then
//! SIGKILLed), asserted from the JSON report.
//!
//! Run by `cargo test`, this harness-less test copies the binaries to the
//! host's /tmp (which the guest sees), boots one guest with
//! `scripts/guest/run.sh scripts/guest/migrate.sh BIN_DIR migrate --json`
//! and reads the report from the `MIGRATE-OUT ` lines of the console.
//! Everything (nfs-ganesha, etcd, the lab, agents, drivers) runs in the
//! guest and is torn down there; the report says what was left.
//!
//! A missing prerequisite (vng, qemu, the guest kernel, ganesha, etcd, a
//! binary) fails the test; it never skips.

// A harness-less test: its report goes to stdout, as libtest's does.
#![allow(clippy::print_stdout)]

mod common;

use std::path::PathBuf;

use serde_json::Value;

/// Our binaries the guest runs.
const BINS: &[&str] = &["csi-nfs", "cni-overlay", "cni-bridge", "cni-ipam"];

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test -- --list`: nothing to list for a harness-less test
    }
    common::require_root();
    let report = run_in_guest();
    check(&report);
    println!("migrate: clean + unclean moves and bad sequences in a guest kernel ... ok");
}

fn run_in_guest() -> Value {
    let ours = common::our_dir();
    let mut from: Vec<(PathBuf, &str)> = BINS.iter().map(|b| (ours.join(b), *b)).collect();
    from.push((common::conformance_bin(), "conformance"));
    let bins = common::GuestBins::stage("migrate", &from);
    let (status, stdout) = common::run_in_guest(
        "scripts/guest/migrate.sh",
        &[bins.dir.as_os_str(), "migrate".as_ref(), "--json".as_ref()],
        &[("GUEST_MODULES", "bridge veth vxlan nfsv4 nf_tables"), ("GUEST_TIMEOUT", "900")],
    );
    let json: String = stdout.lines().filter_map(|l| l.strip_prefix("MIGRATE-OUT ")).collect();
    let report: Value =
        serde_json::from_str(&json).unwrap_or_else(|e| panic!("no JSON report from the guest ({e}): output above"));
    assert!(status.success(), "conformance migrate failed in the guest: {status:?}\n{report:#}");
    report
}

fn check(r: &Value) {
    let pretty = format!("{r:#}");
    assert_eq!(r["backend"], "csi-nfs", "{pretty}");
    // csi-nfs neither stages nor controller-publishes, so the order is NodePublish only.
    assert_eq!(r["capabilities"]["stage_unstage_volume"], false, "{pretty}");
    assert_eq!(r["capabilities"]["publish_unpublish_volume"], false, "{pretty}");
    let moves = r["moves"].as_array().expect("moves");
    let kinds: Vec<&str> = moves.iter().filter_map(|m| m["kind"].as_str()).collect();
    assert_eq!(kinds, ["clean", "unclean"], "{pretty}");
    for m in moves {
        let kind = m["kind"].as_str().unwrap_or("?");
        assert_eq!(m["ok"], true, "{kind} move: {pretty}");
        // Data: every file the source wrote (3 small + 1 big) verified on the target by its own SHA-256.
        assert_eq!(m["files_written_on_source"], 4, "{kind}: {pretty}");
        assert!(m["files_verified_on_target"].as_u64().unwrap_or(0) >= 4, "{kind}: {pretty}");
        assert_eq!(m["checksums_equal"], true, "{kind}: {pretty}");
        // Reachability from host C's container at the new address, by the instance on B.
        assert_eq!(m["ping_new_ip"], true, "{kind}: {pretty}");
        assert_ne!(m["new_ip"], m["old_ip"], "{kind}: overlay addresses are per host: {pretty}");
        let echo = m["echo_reply"].as_str().unwrap_or("");
        assert!(echo.contains("-B-") && echo.ends_with(" hello"), "{kind}: echo {echo:?}: {pretty}");
        assert_eq!(m["old_ip_released"], true, "{kind}: {pretty}");
        let names: Vec<&str> = m["steps"].as_array().unwrap().iter().filter_map(|s| s["name"].as_str()).collect();
        let pos = |n: &str| {
            names.iter().position(|x| x.starts_with(n)).unwrap_or_else(|| panic!("{kind}: no step {n}: {names:?}"))
        };
        // The kubelet's order on B: volume published before the sandbox's CNI ADD, container last.
        assert!(pos("NodePublishVolume B") < pos("CNI ADD B"), "{kind}: {names:?}");
        assert!(pos("CNI ADD B") < pos("container start B"), "{kind}: {names:?}");
        if kind == "clean" {
            // On A: container stopped, CNI DEL (StopPodSandbox), then NodeUnpublish.
            assert!(pos("container stop A") < pos("CNI DEL A"), "{names:?}");
            assert!(pos("CNI DEL A") < pos("NodeUnpublishVolume A"), "{names:?}");
            assert!(pos("NodeUnpublishVolume A") < pos("NodePublishVolume B"), "{names:?}");
        } else {
            // Unclean: A got no unpublish and no DEL.
            assert!(!names.iter().any(|n| n.ends_with(" A") && n.contains("Unpublish")), "{names:?}");
            assert!(!names.iter().any(|n| n.starts_with("CNI DEL A")), "{names:?}");
            // A crash: A is cut off from the NFS server and the overlay before its processes die.
            let crash = &m["steps"].as_array().unwrap()[pos("host A crashes")];
            assert!(
                crash["detail"].as_str().is_some_and(|d| d.starts_with("eth0 and mgmt down first, then")),
                "{kind}: {crash}"
            );
            // ... and its NFS mount was still there (not unmounted by a clean shutdown) while B took over.
            let notes = m["notes"].as_array().expect("notes");
            assert!(
                notes.iter().any(|n| n.as_str().is_some_and(|n| n.starts_with("host A's NFS mount still in place"))),
                "{kind}: {notes:?}"
            );
        }
    }
    let bad = r["bad_sequences"].as_array().expect("bad_sequences");
    let find = |n: &str| {
        bad.iter()
            .find(|b| b["name"].as_str().is_some_and(|x| x.starts_with(n)))
            .unwrap_or_else(|| panic!("no bad sequence {n}: {pretty}"))
    };
    let cu = find("ControllerUnpublishVolume of a never-published volume");
    assert_eq!(
        (cu["expected"].as_str(), cu["got"].as_str()),
        (Some("Unimplemented"), Some("Unimplemented")),
        "{pretty}"
    );
    assert_eq!(cu["state_unchanged"], true, "{pretty}");
    assert_eq!(find("NodePublishVolume before NodeStageVolume")["applies"], false, "csi-nfs does not stage: {pretty}");
    let share = find("the volume on host A while host B has it read-write");
    assert_eq!(share["got"], "OK", "NFS is multi-node: {pretty}");
    assert_eq!(share["state_unchanged"], true, "{pretty}");
    assert_eq!(r["teardown"]["done"], true, "{pretty}");
    assert_eq!(r["teardown"]["left"].as_array().map(Vec::len), Some(0), "{pretty}");
    let overlay = r["overlay_after_kill"].as_array().expect("overlay_after_kill");
    assert!(
        overlay.iter().any(|l| l.as_str().is_some_and(|l| l.contains("route") && l.contains("removed"))),
        "{pretty}"
    );
    assert_eq!(r["ok"], true, "{pretty}");
}
