//! One short round of `conformance bench csi-cloud --n 1 --json`, run as the
//! binary against the csi-cloud binary next to it (cargo builds both into the
//! same dir) and a moto it starts itself: every controller row measured on
//! every side, both transfers measured (each copy is checked against the
//! image by the bench), ratios and the goals' verdicts printed. The numbers
//! themselves are not asserted: this machine is shared. Needs moto
//! (scripts/testbed.sh); not root.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use serde_json::Value;

fn conformance() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_conformance"))
}

#[test]
fn bench_csi_cloud_measures_every_call_and_transfer_on_both_sides() {
    let driver = conformance().parent().expect("binary dir").join("csi-cloud");
    assert!(
        driver.is_file(),
        "{} is missing: build it first (cargo build --release -p csi-cloud -p conformance)",
        driver.display()
    );
    let t = Instant::now();
    let out = Command::new(conformance())
        .args(["bench", "csi-cloud", "--n", "1", "--size-mib", "8", "--json", "--driver"])
        .arg(&driver)
        .output()
        .expect("run conformance");
    let (so, se) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("bench csi-cloud: {:?} in {:.1} s\n{so}{se}", out.status, t.elapsed().as_secs_f64());
    assert!(out.status.success(), "bench csi-cloud failed");
    let v: Value = serde_json::from_str(so.trim()).expect("one JSON report on stdout");
    let rows = v["rows"].as_array().expect("rows");
    let names: Vec<&str> = rows.iter().filter_map(|r| r["operation"].as_str()).collect();
    assert_eq!(
        names,
        [
            "CreateVolume",
            "ControllerPublishVolume",
            "ControllerGetVolume",
            "ListVolumes",
            "CreateSnapshot",
            "ControllerUnpublishVolume",
            "DeleteSnapshot",
            "DeleteVolume"
        ]
    );
    let positive = |x: &Value| x.as_f64().is_some_and(|x| x.is_finite() && x > 0.0);
    for r in rows {
        let op = &r["operation"];
        assert!(positive(&r["ours_ms"]["median"]) && positive(&r["sdk_ms"]["median"]), "{op}: {r}");
        assert!(positive(&r["ratio"]) && positive(&r["ratio_same_work"]), "{op}: ratios {r}");
        // The rows where the controller looks something up first are also
        // measured against the SDK making the same lookups.
        let lookups = ["CreateVolume", "ControllerPublishVolume", "CreateSnapshot", "ControllerUnpublishVolume"];
        assert_eq!(
            r["sdk_same_lookups_ms"]["median"].is_number(),
            lookups.contains(&op.as_str().unwrap_or_default()),
            "{op}: {r}"
        );
    }
    let rates = v["throughput"].as_array().expect("throughput");
    let names: Vec<&str> = rates.iter().filter_map(|r| r["transfer"].as_str()).collect();
    assert_eq!(names, ["snapshot export", "snapshot import"]);
    for r in rates {
        assert!(positive(&r["ours_mib_s"]["median"]) && positive(&r["sdk_loop_mib_s"]["median"]), "{r}");
        assert!(positive(&r["ratio"]), "{r}");
    }
    let goals = v["goals"].as_array().expect("goals");
    assert_eq!(goals.len(), 3, "{goals:?}");
    assert!(goals.iter().all(|g| g["met"].is_boolean()), "{goals:?}");
    assert!(!v["notes"].as_array().expect("notes").is_empty());
}
