//! Smoke test of `conformance bench csi-rbd --n 1 --json`, run as the binary
//! against the csi-rbd binary next to it (cargo builds both into the same
//! dir): one guest boot on a throwaway Ceph cluster, every row measured on
//! both sides, nothing left in the pool. Root.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

fn conformance() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_conformance"))
}

#[test]
fn bench_csi_rbd_measures_every_operation_on_both_sides() {
    let driver = conformance().parent().expect("binary dir").join("csi-rbd");
    assert!(
        driver.is_file(),
        "{} is missing: build it first (cargo build --release -p csi-rbd -p conformance)",
        driver.display()
    );
    let t = Instant::now();
    let out = Command::new(conformance())
        .args(["bench", "csi-rbd", "--n", "1", "--json", "--driver"])
        .arg(&driver)
        .output()
        .expect("run conformance");
    let (so, se) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("bench csi-rbd: {:?} in {:.1} s\n{so}{se}", out.status, t.elapsed().as_secs_f64());
    assert!(out.status.success(), "bench csi-rbd failed");
    let v: Value = serde_json::from_str(so.trim()).expect("one JSON report on stdout");
    let rows = v["rows"].as_array().expect("rows");
    let names: Vec<&str> = rows.iter().filter_map(|r| r["operation"].as_str()).collect();
    assert_eq!(
        names,
        [
            "CreateVolume",
            "NodeStageVolume (mkfs)",
            "NodePublishVolume",
            "NodeUnpublishVolume",
            "migrate: unstage A+stage B",
            "DeleteVolume",
            // From the drivers' step lines (they run at debug level in the bench).
            "migrate, less kernel busy",
            "NodeStageVolume less mkfs"
        ]
    );
    for r in rows {
        for k in ["ours_median_ms", "baseline_median_ms"] {
            let ms = r[k].as_f64().unwrap_or(f64::NAN);
            assert!(ms.is_finite() && ms > 0.0, "{}: {k} = {ms}", r["operation"]);
        }
        // Every row is measured on both sides in every round: the paired
        // difference and its spread.
        let p = &r["paired"];
        let (lo, med, hi) = (p["min_ms"].as_f64(), p["median_ms"].as_f64(), p["max_ms"].as_f64());
        assert!(matches!((lo, med, hi), (Some(l), Some(m), Some(h)) if l <= m && m <= h), "{}: {p}", r["operation"]);
    }
    let notes: Vec<&str> = v["notes"].as_array().expect("notes").iter().filter_map(Value::as_str).collect();
    assert!(notes.iter().any(|n| n.starts_with("migration's ControllerUnpublish(A)")), "{notes:?}");
    assert!(!notes.iter().any(|n| n.starts_with("left in pool")), "the bench left images: {notes:?}");
}
