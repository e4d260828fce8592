//! docs/csi-nfs.md against the driver: the flags `csi-nfs --help` lists (the real binary)
//! are csi-core's common flags plus the rows of the page's own table, with their defaults;
//! the StorageClass parameters table lists exactly `volume::PARAMETERS`, the list
//! CreateVolume validates against, and every entry of that list is accepted; the
//! VolumeSnapshotClass table lists exactly `volume::SNAPSHOT_PARAMETERS`.

use std::collections::{BTreeSet, HashMap};
use std::path::Path;

use csi_nfs::volume::{CreateParams, PARAMETERS, SNAPSHOT_PARAMETERS};
use docs_check::{assert_same_keys, defaults_missing, flag_keys, help_flags, run_help, table_under, tables};

const PAGE: &str = "docs/csi-nfs.md";

#[test]
fn every_flag_of_the_binary_is_documented_with_its_default() {
    let help = run_help(Path::new(env!("CARGO_BIN_EXE_csi-nfs")), &["--help"]);
    let flags = help_flags(&help);
    // The page's own flags: the first table, the one after "Flags: those of csi-core, plus".
    let own = tables(&docs_check::read(PAGE)).into_iter().next().expect("csi-nfs.md has a flags table");
    assert_eq!(own.header.first().map(String::as_str), Some("flag"), "{PAGE}: the first table is not the flags");
    let common = table_under("docs/csi-core.md", "Flags");
    let documented: BTreeSet<String> = own.keys().union(&common.keys()).cloned().collect();
    assert_same_keys(&format!("{PAGE} + csi-core.md flags vs `csi-nfs --help`"), &documented, &flag_keys(&flags, "--"));
    let own_flags: Vec<_> = flags.iter().filter(|(f, _)| own.keys().contains(&format!("--{f}"))).cloned().collect();
    let missing = defaults_missing(&own, &own_flags, "--");
    assert!(missing.is_empty(), "{PAGE}: {missing:#?}");
    // The driver's own default name, which csi-core's table gives as its example.
    assert!(help.contains(csi_nfs::DRIVER_NAME), "{help}");
}

#[test]
fn the_parameters_table_lists_exactly_the_parameters_createvolume_accepts() {
    let table = table_under(PAGE, "CreateVolume parameters");
    let code: BTreeSet<String> = PARAMETERS.iter().map(|p| p.to_string()).collect();
    assert_same_keys(&format!("{PAGE} CreateVolume parameters vs csi_nfs::volume::PARAMETERS"), &table.keys(), &code);
}

#[test]
fn the_snapshot_class_table_lists_exactly_the_parameters_createsnapshot_accepts() {
    let table = table_under(PAGE, "Snapshots and clones");
    let code: BTreeSet<String> = SNAPSHOT_PARAMETERS.iter().map(|p| p.to_string()).collect();
    assert_same_keys(
        &format!("{PAGE} VolumeSnapshotClass parameters vs csi_nfs::volume::SNAPSHOT_PARAMETERS"),
        &table.keys(),
        &code,
    );
}

fn params(kv: &[(&str, &str)]) -> HashMap<String, String> {
    kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
}

/// A valid value of each parameter.
fn value(p: &str) -> &'static str {
    match p {
        "server" => "10.0.0.5",
        "share" => "/export",
        "subDir" => "ns/${pvc.metadata.name}",
        "mountPermissions" => "0777",
        "uid" | "gid" => "1000",
        "onDelete" => "archive",
        "mountOptions" => "nfsvers=4.1",
        other => panic!("PARAMETERS has {other:?}: give it a valid value here"),
    }
}

#[test]
fn createvolume_accepts_every_listed_parameter_in_any_case_and_nothing_else() {
    let co = ("csi.storage.k8s.io/pvc/name", "claim");
    for p in PARAMETERS {
        // Keys are case-insensitive.
        for key in [p.to_string(), p.to_ascii_uppercase()] {
            let mut kv = params(&[co]);
            if !key.eq_ignore_ascii_case("server") {
                kv.insert("server".into(), "10.0.0.5".into());
            }
            kv.insert(key.clone(), value(p).into());
            CreateParams::parse("pv-1", &kv, "").unwrap_or_else(|e| panic!("{key}: {e}"));
        }
    }
    let mut all = params(&[co]);
    all.extend(PARAMETERS.iter().map(|p| (p.to_string(), value(p).to_string())));
    let c = CreateParams::parse("pv-1", &all, "").expect("every parameter at once");
    assert_eq!((c.uid, c.gid, c.mount_permissions), (Some(1000), Some(1000), Some(0o777)));
    assert_eq!((c.id.subdir.as_str(), c.mount_options.as_str()), ("ns/claim", "nfsvers=4.1"));
    let e = CreateParams::parse("pv-1", &params(&[("server", "10.0.0.5"), ("subPath", "x")]), "").unwrap_err();
    assert!(e.to_string().contains("invalid parameter \"subPath\""), "{e}");
    // The CO's own keys pass.
    CreateParams::parse("pv-1", &params(&[("server", "10.0.0.5"), ("csi.storage.k8s.io/pv/name", "p")]), "")
        .expect("csi.storage.k8s.io/* keys are accepted");
}
