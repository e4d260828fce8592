//! Smoke test of `conformance demo --overlay` and `conformance bench overlay
//! --hosts 3`, run as the binary against the cni-overlay binary next to it
//! (cargo builds both in one `cargo build`/`cargo test --workspace`). Root.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

fn conformance() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_conformance"))
}

/// The conformance binary's dir, which must hold cni-overlay.
fn plugin_dir() -> PathBuf {
    let dir = conformance().parent().expect("binary dir").to_path_buf();
    let overlay = dir.join("cni-overlay");
    assert!(
        overlay.is_file(),
        "{} is missing: build it first (cargo build --release -p cni-overlay -p conformance, \
         or cargo test --workspace, which builds it into the same dir)",
        overlay.display()
    );
    dir
}

fn run(args: &[&str]) -> (bool, String, String) {
    let t = Instant::now();
    let out = Command::new(conformance()).args(args).output().expect("run conformance");
    let (so, se) =
        (String::from_utf8_lossy(&out.stdout).into_owned(), String::from_utf8_lossy(&out.stderr).into_owned());
    eprintln!("conformance {args:?}: {:?} in {:.1} s\n{so}{se}", out.status, t.elapsed().as_secs_f64());
    (out.status.success(), so, se)
}

#[test]
fn demo_overlay_passes() {
    let dir = plugin_dir();
    let (ok, out, err) = run(&["demo", "--overlay", "--plugin-dir", dir.to_str().unwrap()]);
    assert!(ok, "demo --overlay failed:\n{out}\n{err}");
    assert!(out.contains("demo: OK"), "{out}");
    assert_eq!(out.matches(": ok, rtt").count(), 6, "six pings:\n{out}");
    assert!(out.contains("VXLAN on host 0's underlay"), "{out}");
    assert!(out.contains("nothing left"), "{out}");
}

#[test]
fn bench_overlay_prints_the_three_sections() {
    let dir = plugin_dir();
    let (ok, out, err) = run(&[
        "bench",
        "overlay",
        "--hosts",
        "3",
        "--joins",
        "2",
        "--allocs",
        "500",
        "--plugin-dir",
        dir.to_str().unwrap(),
    ]);
    assert!(ok, "bench overlay failed:\n{out}\n{err}");
    for section in ["== convergence", "== throughput", "== allocations per second"] {
        assert!(out.contains(section), "missing {section:?}:\n{out}");
    }
    assert!(out.contains("Gbit/s") && out.contains("/s"), "{out}");
    assert!(out.contains("affine blocks (blockSize 26"), "{out}");
}
