//! Our codec and FSM against BIRD 2, GoBGP 3 and FRR 8 (root, network namespaces, the
//! daemons from Debian: ../shared TESTBED recipes): `tests/golden/capture.sh --interop` runs
//! `examples/speak.rs` against each daemon, which must establish, accept our IPv4 and IPv6
//! routes with their community, and send us its three prefixes. A missing daemon fails.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn bird_gobgp_frr_accept_our_routes() {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden/capture.sh");
    for bin in ["bird", "birdc", "gobgpd", "gobgp", "/usr/lib/frr/bgpd", "/usr/lib/frr/zebra", "vtysh"] {
        let found = if bin.starts_with('/') {
            std::path::Path::new(bin).exists()
        } else {
            Command::new("sh").args(["-c", &format!("command -v {bin}")]).output().is_ok_and(|o| o.status.success())
        };
        assert!(found, "{bin} is missing: apt-get install bird2 gobgpd frr");
    }
    let out = Command::new("bash").arg(&script).arg("--interop").output().expect("run capture.sh");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    for d in ["bird", "gobgp", "frr"] {
        assert!(text.contains(&format!("interop {d}: OK")), "{d}:\n{text}");
    }
}
