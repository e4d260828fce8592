//! docs/csi-rbd.md (the controller part) against the driver: the flags `csi-rbd --help`
//! lists (the real binary) are csi-core's common flags plus the page's own
//! table and its Node flags table, with their defaults; the StorageClass table lists exactly
//! `params::PARAMETERS` and the VolumeSnapshotClass table exactly
//! `params::SNAPSHOT_PARAMETERS`, the lists the controller validates against.

use std::collections::BTreeSet;
use std::path::Path;

use csi_rbd::params::{PARAMETERS, SNAPSHOT_PARAMETERS};
use docs_check::{assert_same_keys, defaults_missing, flag_keys, help_flags, run_help, table_under};

const PAGE: &str = "docs/csi-rbd.md";

#[test]
fn every_flag_of_the_binary_is_documented_with_its_default() {
    let help = run_help(Path::new(env!("CARGO_BIN_EXE_csi-rbd")), &["--help"]);
    let flags = help_flags(&help);
    let own = table_under(PAGE, "Flags");
    let common = table_under("docs/csi-core.md", "Flags");
    let node = table_under(PAGE, "Node flags");
    let documented: BTreeSet<String> =
        own.keys().union(&common.keys()).cloned().collect::<BTreeSet<_>>().union(&node.keys()).cloned().collect();
    assert_same_keys(
        &format!("{PAGE} (Flags, Node flags) + csi-core.md flags vs `csi-rbd --help`"),
        &documented,
        &flag_keys(&flags, "--"),
    );
    let own_flags: Vec<_> = flags.iter().filter(|(f, _)| own.keys().contains(&format!("--{f}"))).cloned().collect();
    let missing = defaults_missing(&own, &own_flags, "--");
    assert!(missing.is_empty(), "{PAGE}: {missing:#?}");
    assert!(help.contains(csi_rbd::DRIVER_NAME), "{help}");
}

#[test]
fn the_parameters_table_lists_exactly_the_parameters_createvolume_accepts() {
    let table = table_under(PAGE, "CreateVolume parameters");
    let code: BTreeSet<String> = PARAMETERS.iter().map(|p| p.to_string()).collect();
    assert_same_keys(&format!("{PAGE} CreateVolume parameters vs csi_rbd::params::PARAMETERS"), &table.keys(), &code);
}

#[test]
fn the_snapshot_class_table_lists_exactly_the_parameters_createsnapshot_accepts() {
    let table = table_under(PAGE, "Snapshots and clones");
    let code: BTreeSet<String> = SNAPSHOT_PARAMETERS.iter().map(|p| p.to_string()).collect();
    assert_same_keys(&format!("{PAGE} VolumeSnapshotClass parameters vs SNAPSHOT_PARAMETERS"), &table.keys(), &code);
}
