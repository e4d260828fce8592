//! docs/csi-rbd.md (the node part) against the code: every flag of the "Node flags"
//! table is one `csi-rbd --help` lists, with its default; the stage record
//! example has exactly the keys `StageRecord` has; the takeover flags the
//! page names are the ones `csi-rbd takeover` parses.

use std::collections::BTreeSet;
use std::path::Path;

use docs_check::{defaults_missing, flag_keys, help_flags, run_help, table_under};

const PAGE: &str = "docs/csi-rbd.md";

#[test]
fn every_node_flag_is_one_the_binary_has_with_its_default() {
    let help = run_help(Path::new(env!("CARGO_BIN_EXE_csi-rbd")), &["--help"]);
    let flags = help_flags(&help);
    let table = table_under(PAGE, "Node flags");
    let have = flag_keys(&flags, "--");
    let unknown: Vec<String> = table.keys().into_iter().filter(|k| !have.contains(k)).collect();
    assert!(unknown.is_empty(), "{PAGE} documents flags `csi-rbd --help` lacks: {unknown:?}\n{help}");
    let own: Vec<_> = flags.iter().filter(|(f, _)| table.keys().contains(&format!("--{f}"))).cloned().collect();
    let missing = defaults_missing(&table, &own, "--");
    assert!(missing.is_empty(), "{PAGE}: {missing:#?}");
}

#[test]
fn the_stage_record_example_has_exactly_the_records_keys() {
    let page = docs_check::read(PAGE);
    let section = page.split("## The stage record").nth(1).expect("a stage record section");
    let json = section.split("```json").nth(1).and_then(|s| s.split("```").next()).expect("a json example");
    let v: serde_json::Value = serde_json::from_str(json).expect("the example is JSON");
    let documented: BTreeSet<String> = v.as_object().unwrap().keys().cloned().collect();
    let code = docs_check::serde_keys("csi-rbd/src/node/record.rs", "StageRecord");
    docs_check::assert_same_keys(&format!("{PAGE} stage record vs StageRecord"), &documented, &code);
    let _: csi_rbd::node::record::StageRecord = serde_json::from_value(v).expect("the example parses as a record");
}

#[test]
fn the_takeover_flags_on_the_page_are_the_commands() {
    let page = docs_check::read(PAGE);
    for flag in ["--cluster-config", "--volume-id", "--node", "--user", "--keyfile", "--pool", "--image"] {
        assert!(page.contains(&format!("`{flag}")), "{PAGE} does not name takeover's {flag}");
        assert!(docs_check::has_str_literal("csi-rbd/src/takeover.rs", flag), "takeover.rs does not parse {flag}");
    }
    assert!(page.contains("CEPH_USER_KEY") && docs_check::has_str_literal("csi-rbd/src/takeover.rs", "CEPH_USER_KEY"));
}
