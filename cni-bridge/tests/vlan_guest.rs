//! cni-bridge's VLAN options (`vlan`, `vlanTrunk`, `preserveDefaultVlan`, `isGateway`
//! with `vlan`) against a real kernel that has bridge VLAN filtering and 8021q.
//!
//! The host kernel lacks both, so `scripts/guest/run.sh` boots one guest (Debian's
//! kernel under QEMU/TCG through virtme-ng, with the host's filesystem) and runs
//! `scripts/guest/vlan.sh` in it with the plugin binary cargo built for this test run.
//! One boot (~25-30 s) covers every scenario. A missing prerequisite (vng, qemu, the
//! guest kernel: `scripts/testbed.sh` installs them) fails the test; it never skips.

use std::path::PathBuf;
use std::process::{Command, Stdio};

/// Every marker vlan.sh prints when its check passes.
const EXPECTED: &[&str] = &[
    "add-a",
    "add-b",
    "add-c",
    "add-d",
    "add-e",
    "add-t",
    "add-f",
    "add-g",
    "add-h",
    "access-bridge-vlan-filtering",
    "access-pvid-a",
    "access-pvid-b",
    "access-pvid-c",
    "access-same-vlan-10",
    "access-same-vlan-20",
    "access-isolated",
    "nodefault-no-vid1",
    "nodefault-vlan-10-works",
    "trunk-tagged-vids",
    "trunk-access-30",
    "trunk-tagged-traffic",
    "gateway-in-result",
    "gateway-vlan-link",
    "gateway-addr-on-vlan-link",
    "gateway-not-on-bridge",
    "gateway-bridge-self-vid",
    "gateway-port-pvid",
    "gateway-port-pvid-h",
    "gateway-ping",
    "gateway-ping-h",
    "del-a",
    "del-b",
    "del-c",
    "del-d",
    "del-e",
    "del-t",
    "del-f",
    "del-g",
    "del-h",
    "del-repeated",
    "del-veth-gone-a",
    "del-veth-gone-b",
    "del-veth-gone-c",
    "del-veth-gone-d",
    "del-veth-gone-e",
    "del-veth-gone-t",
    "del-veth-gone-f",
    "del-veth-gone-g",
    "del-veth-gone-h",
];

#[test]
fn vlan_options_in_a_guest_kernel() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let run = root.join("scripts/guest/run.sh");
    let script = root.join("scripts/guest/vlan.sh");
    let plugin = env!("CARGO_BIN_EXE_cni-bridge");
    let started = std::time::Instant::now();
    let out = Command::new("bash")
        .arg(&run)
        .arg(&script)
        .arg(plugin)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", run.display()));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let shown = format!("--- guest output (stdout):\n{stdout}--- stderr:\n{stderr}---");
    eprintln!("{shown}\n(guest run took {:.1}s)", started.elapsed().as_secs_f64());

    let passed: Vec<&str> = stdout.lines().filter_map(|l| l.trim_end().strip_prefix("PASS ")).collect();
    let missing: Vec<&str> = EXPECTED.iter().copied().filter(|m| !passed.contains(m)).collect();
    let failed: Vec<&str> = stdout.lines().filter(|l| l.starts_with("FAIL ")).collect();
    assert!(
        out.status.success() && missing.is_empty() && failed.is_empty(),
        "guest VLAN test failed (exit {:?})\nfailed checks:\n  {}\nmissing PASS markers: {missing:?}\n{shown}",
        out.status.code(),
        failed.join("\n  "),
    );
}
