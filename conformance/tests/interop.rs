//! Interop with the reference plugins (/usr/lib/cni): mixed bridge/IPAM
//! pairs, and our bridge chained libcni-style with `tuning` and `portmap`
//! (a real TCP connection through the port mapping). The reference-only
//! chain is the harness's own baseline.

mod common;

use cni_suite::checks::Verdict;
use cni_suite::interop::{chain_tuning_portmap, mixed_pair, MIXED_CHECKS};
use common::*;
use testkit::plugin::PluginSet;

fn assert_all_pass(label: &str, rs: &[cni_suite::checks::CheckResult]) {
    assert_eq!(rs.len(), MIXED_CHECKS.len(), "{label}: {rs:?}");
    let bad: Vec<_> = rs.iter().filter(|r| r.verdict != Verdict::Pass).collect();
    assert!(bad.is_empty(), "{label}: {bad:#?}");
}

#[test]
fn our_bridge_with_reference_host_local() {
    require_root();
    let r = require_reference();
    let ours = require_ours();
    let rs = mixed_pair("cni-bridge+host-local", PluginSet::new(&ours).with_dir(&r), "cni-bridge", "host-local")
        .expect("suite setup");
    assert_all_pass("cni-bridge+host-local", &rs);
}

#[test]
fn reference_bridge_with_our_ipam() {
    require_root();
    let r = require_reference();
    let ours = require_ours();
    let rs =
        mixed_pair("bridge+cni-ipam", PluginSet::new(&r).with_dir(&ours), "bridge", "cni-ipam").expect("suite setup");
    assert_all_pass("bridge+cni-ipam", &rs);
}

#[test]
fn our_bridge_chained_with_tuning_and_portmap() {
    require_root();
    let r = require_reference();
    let ours = require_ours();
    let d = chain_tuning_portmap(&PluginSet::new(&ours).with_dir(&r), "cni-bridge", "cni-ipam")
        .unwrap_or_else(|e| panic!("chain cni-bridge+tuning+portmap: {e}"));
    eprintln!("cni-bridge chain: {d}");
}

#[test]
fn reference_bridge_chained_with_tuning_and_portmap() {
    require_root();
    let r = require_reference();
    let d = chain_tuning_portmap(&PluginSet::new(&r), "bridge", "host-local")
        .unwrap_or_else(|e| panic!("chain bridge+tuning+portmap: {e}"));
    eprintln!("reference chain: {d}");
}

#[test]
fn reference_pair_through_the_mixed_runner() {
    require_root();
    let r = require_reference();
    let rs = mixed_pair("bridge+host-local", PluginSet::new(&r), "bridge", "host-local").expect("suite setup");
    assert_all_pass("bridge+host-local", &rs);
}
