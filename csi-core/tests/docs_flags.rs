//! docs/csi-core.md's flag table against the command every driver shares
//! (`csi_core::flags::command`, clap's own list of arguments): every flag has a row with
//! its default, and every row names a flag the command accepts.

use csi_core::flags::{command, Defaults};
use docs_check::{assert_same_keys, clap_flags, defaults_missing, flag_keys, table_under};

const PAGE: &str = "docs/csi-core.md";

#[test]
fn every_common_flag_is_documented_with_its_default() {
    // csi-nfs's name, the example the table gives for the per-driver default.
    let cmd = command(&Defaults { program: "csi-driver", driver_name: "nfs.csi.k8s.io", extra: &[] });
    let flags = clap_flags(&cmd);
    let table = table_under(PAGE, "Flags");
    assert_same_keys(&format!("{PAGE} Flags vs csi_core::flags::command"), &table.keys(), &flag_keys(&flags, "--"));
    let missing = defaults_missing(&table, &flags, "--");
    assert!(missing.is_empty(), "{PAGE}: {missing:#?}");
}
