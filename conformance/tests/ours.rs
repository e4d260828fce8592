//! The suite against our `cni-bridge` + `cni-ipam` (built into the same
//! target dir as this crate's binary): zero failures expected, STATUS and
//! GC included. Also the self-tests with a DEL-leaking plugin and with one
//! that reads a missing GC list as empty and prefers `cniVersions`, the demo
//! and a bench smoke run.

mod common;

use std::process::Command;

use common::*;

#[test]
fn our_bridge_and_ipam_pass_every_check() {
    require_root();
    let ours = require_ours();
    let run = run_suite(&ours, None, &bridge_config("cni-bridge", "cni-ipam", "1.1.0", true), &[]);
    assert_eq!(run.report["info"]["cniVersion"], "1.1.0");
    assert!(run.failed().is_empty(), "failures: {:?}\n{}", run.failed(), run.pretty());
    assert_eq!(run.code, 0);
    run.expect(&CORE_CHECKS, "pass");
    run.expect(
        &[
            "add-result-1.1.0",
            "error-missing-netns",
            "status",
            "status-exhausted",
            "gc-frees-invalid",
            "gc-without-list-keeps-all",
            "gc-empty-list-frees-all",
            "results-cached-del",
        ],
        "pass",
    );
    // Ours refuses a GC without the list as an invalid config (cni-core).
    let (_, detail) = &run.results["gc-without-list-keeps-all"];
    assert!(detail.starts_with("refused with code 7:"), "{detail}");
}

#[test]
fn suite_detects_unsafe_gc_and_a_version_the_runtime_did_not_choose() {
    require_root();
    let ours = require_ours();
    let broken = unsafe_gc_and_version_wrapper("cni-bridge", &ours.join("cni-bridge"));
    let run = run_suite(
        &broken.0,
        Some(&ours),
        &bridge_config("cni-bridge", "cni-ipam", "1.1.0", false),
        &["add-cniversion-wins", "gc-*"],
    );
    assert_eq!(run.code, 1, "the suite must fail this plugin\n{}", run.pretty());
    run.expect(&["add-cniversion-wins", "gc-without-list-keeps-all"], "fail");
    // GCs that carry a list are untouched by the wrapper.
    run.expect(&["gc-frees-invalid", "gc-empty-list-frees-all"], "pass");
}

#[test]
fn suite_detects_a_del_leaking_cni_bridge() {
    require_root();
    let ours = require_ours();
    let broken = del_leaking_wrapper("cni-bridge", &ours.join("cni-bridge"));
    let run = run_suite(
        &broken.0,
        Some(&ours),
        &bridge_config("cni-bridge", "cni-ipam", "1.1.0", false),
        &["ping-peer-and-gateway", "del-*", "ip-reuse-after-del", "range-exhausted", "results-cached-del"],
    );
    assert_eq!(run.code, 1, "the suite must fail a plugin whose DEL leaks\n{}", run.pretty());
    run.expect(&["ip-reuse-after-del", "del-netns-gone", "del-no-netns", "del-twice", "range-exhausted"], "fail");
    run.expect(&["ping-peer-and-gateway", "del-never-added"], "pass");
}

#[test]
fn demo_runs_pings_and_leaves_nothing() {
    require_root();
    let ours = require_ours();
    let out = Command::new(conformance_bin()).arg("demo").arg("--plugin-dir").arg(&ours).output().expect("run demo");
    let text = String::from_utf8_lossy(&out.stdout);
    eprintln!("{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "demo failed:\n{text}");
    assert_eq!(text.matches("): ok").count(), 9, "6 pair pings + 3 gateway pings:\n{text}");
    assert!(text.contains("nothing left"), "{text}");
}

#[test]
fn bench_smoke_runs_both_implementations() {
    require_root();
    let ours = require_ours();
    let r = require_reference();
    let out = Command::new(conformance_bin())
        .args(["bench", "cni", "--n", "3", "--json", "--plugin-dir"])
        .arg(&ours)
        .arg("--ref-dir")
        .arg(&r)
        .output()
        .expect("run bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "bench failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).expect("bench JSON");
    let rs = v["results"].as_array().expect("results");
    // ours (IPAM in-process and exec'd) and reference, each with and without
    // ipMasq, plus the kernel veth, kernel floor and process floor rows.
    assert_eq!(rs.len(), 9, "{v}");
    let impls: Vec<&str> = rs.iter().filter_map(|r| r["impl"].as_str()).collect();
    for want in ["ours", "ours exec-IPAM", "reference", "kernel veth", "kernel floor", "process floor"] {
        assert!(impls.contains(&want), "no {want} row: {v}");
    }
    for r in rs {
        assert!(r["add_median_ms"].as_f64().is_some_and(|x| x > 0.0), "{r}");
        assert!(r["del_median_ms"].as_f64().is_some_and(|x| x > 0.0), "{r}");
        if !r["impl"].as_str().is_some_and(|i| i.starts_with("kernel") || i.ends_with("floor")) {
            assert!(r["first_add_median_ms"].as_f64().is_some_and(|x| x > 0.0), "{r}");
        }
    }
    assert_eq!(v["ratios_to_reference"].as_array().map(Vec::len), Some(4), "{v}");
    assert_eq!(v["ratios_to_kernel_floor"].as_array().map(Vec::len), Some(4), "{v}");
}
