//! The suite against the reference containernetworking-plugins 1.1.1
//! (`bridge` + `host-local` in /usr/lib/cni): validates the harness on a
//! real plugin pair and records what the reference does not do.

mod common;

use common::*;

#[test]
fn reference_bridge_host_local_passes_core_checks() {
    require_root();
    let r = require_reference();
    // The config asks for 1.1.0 like a modern runtime would; the suite falls
    // back to the highest version the reference lists (1.0.0) and says so.
    let run = run_suite(&r, None, &bridge_config("bridge", "host-local", "1.1.0", true), &[]);
    assert!(matches!(run.code, 0 | 1), "suite did not complete: exit {}\n{}", run.code, run.stderr);
    assert_eq!(run.report["info"]["cniVersion"], "1.0.0");
    run.expect(&CORE_CHECKS, "pass");
    run.expect(&["error-missing-netns", "results-cached-del"], "pass");
    // What the reference lacks (observed): no 1.1.0, hence no STATUS, GC or 1.1.0 results.
    run.expect(
        &[
            "add-result-1.1.0",
            "status",
            "status-exhausted",
            "gc-frees-invalid",
            "gc-without-list-keeps-all",
            "gc-empty-list-frees-all",
        ],
        "skip",
    );
    eprintln!("reference failures: {:?}\n{}", run.failed(), run.pretty());
    assert!(run.failed().is_empty(), "{}", run.pretty());
}

#[test]
fn suite_detects_a_del_leaking_reference_bridge() {
    require_root();
    let r = require_reference();
    let broken = del_leaking_wrapper("bridge", &r.join("bridge"));
    let run = run_suite(
        &broken.0,
        Some(&r),
        &bridge_config("bridge", "host-local", "1.0.0", false),
        &["ping-peer-and-gateway", "del-*", "ip-reuse-after-del", "range-exhausted", "results-cached-del"],
    );
    assert_eq!(run.code, 1, "the suite must fail a plugin whose DEL leaks\n{}", run.pretty());
    run.expect(
        &["ip-reuse-after-del", "del-netns-gone", "del-no-netns", "del-twice", "range-exhausted", "results-cached-del"],
        "fail",
    );
    // Not everything is red: ADD still works and a no-op DEL of nothing is fine.
    run.expect(&["ping-peer-and-gateway", "del-never-added"], "pass");
}
