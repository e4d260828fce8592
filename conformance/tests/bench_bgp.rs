//! Smoke test of `conformance bench bgp`, run as the binary against the
//! cni-bgp binary next to it (cargo builds both in one `cargo build` /
//! `cargo test --workspace`). Root, BIRD 2 and etcd; a small feed and a
//! small mesh, so it takes seconds. Numbers are not asserted (this is a
//! shared machine); that each was measured, and the routes counted, is.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

fn conformance() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_conformance"))
}

/// The conformance binary's dir, which must hold cni-bgp.
fn plugin_dir() -> PathBuf {
    let dir = conformance().parent().expect("binary dir").to_path_buf();
    let bgp = dir.join("cni-bgp");
    assert!(
        bgp.is_file(),
        "{} is missing: build it first (cargo build --release -p cni-bgp -p conformance, \
         or cargo test --workspace, which builds it into the same dir)",
        bgp.display()
    );
    dir
}

fn positive(v: &Value, what: &str) -> f64 {
    let x = v.as_f64().unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x.is_finite() && x > 0.0, "{what} = {x}");
    x
}

#[test]
fn bench_bgp_measures_both_receivers_and_the_mesh() {
    let dir = plugin_dir();
    let t = Instant::now();
    let out = Command::new(conformance())
        .args(["bench", "bgp", "--routes", "3000", "--n", "1", "--mesh-hosts", "4", "--json", "--plugin-dir"])
        .arg(&dir)
        .output()
        .expect("run conformance");
    let (so, se) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("bench bgp: {:?} in {:.1} s\n{so}{se}", out.status, t.elapsed().as_secs_f64());
    assert!(out.status.success(), "bench bgp failed:\n{so}\n{se}");
    let r: Value = serde_json::from_str(so.trim()).unwrap_or_else(|e| panic!("not JSON ({e}):\n{so}"));
    assert_eq!(r["routes"], 3000);
    for side in ["ours", "bird"] {
        let s = &r[side];
        for k in [
            "median_start_to_fib_ms",
            "median_established_to_fib_ms",
            "median_accepted_to_established_ms",
            "median_cpu_ms",
        ] {
            positive(&s[k], &format!("{side}.{k}"));
        }
        let rss = positive(&s["rss_kib"][0], &format!("{side}.rss_kib"));
        let idle = positive(&s["idle_rss_kib"][0], &format!("{side}.idle_rss_kib"));
        assert!(rss < 4.0 * 1024.0 * 1024.0 && idle < 4.0 * 1024.0 * 1024.0, "{side}: RSS {rss} KiB, idle {idle} KiB");
    }
    positive(&r["ratios"]["established_to_fib"], "ratio");
    let m = &r["mesh"];
    assert_eq!(m["hosts"], 4);
    positive(&m["ours_ms"][0], "mesh ours");
    positive(&m["bird_ms"][0], "mesh bird");
    // Progress on stderr names every round of both receivers.
    assert!(se.contains("ours all 3000 routes in the FIB") && se.contains("BIRD all 3000 routes in the FIB"), "{se}");
}
