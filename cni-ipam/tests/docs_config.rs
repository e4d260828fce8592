//! docs/cni-ipam.md and docs/cluster-ipam.md against the code: the `ipam` section's keys
//! (local mode), the top-level keys, the `ipam.cluster` keys (affine blocks) and the admin
//! commands' flags (`cni-ipam blocks|remove-host --help`, the real binary). Each table is
//! compared both ways: a key the code accepts without a row fails, and so does a row naming
//! a key the code does not accept.

use std::collections::BTreeSet;
use std::path::Path;

use docs_check::{
    assert_same_keys, cni_extension_keys, defaults_missing, flag_keys, has_str_literal, help_flags, prefixed, run_help,
    serde_keys, table_under,
};

/// Keys of the `ipam` section that the code reads by hand rather than through the serde
/// struct, with the file that reads them (each must still appear there as a literal).
const HAND_READ: &[(&str, &str)] = &[
    // `data_dir_of`: its default depends on `cluster`.
    ("dataDir", "ipam/src/config.rs"),
    ("cluster", "ipam/src/config.rs"),
    // Read by the main plugin to find its IPAM (cni-core `NetConf::ipam_type`).
    ("type", "cni-core/src/types.rs"),
];

#[test]
fn every_ipam_section_key_is_documented_and_every_documented_key_exists() {
    let table = table_under("docs/cni-ipam.md", "Configuration (ipam section)");
    let mut code = serde_keys("ipam/src/config.rs", "RawIpam");
    code.extend(prefixed("ranges[][].", serde_keys("ipam/src/config.rs", "RawRange")));
    // `routes` entries are cni-core's Route, copied into the result.
    code.extend(prefixed("routes[].", serde_keys("cni-core/src/types.rs", "Route")));
    for (key, file) in HAND_READ {
        assert!(has_str_literal(file, key), "{file} no longer reads {key:?}: update HAND_READ and the docs");
        code.insert(key.to_string());
    }
    assert_same_keys("docs/cni-ipam.md ipam section vs RawIpam + RawRange + hand-read keys", &table.keys(), &code);
}

#[test]
fn the_top_level_keys_beyond_the_spec_are_documented() {
    let table = table_under("docs/cni-ipam.md", "Top-level keys");
    assert_same_keys("docs/cni-ipam.md top-level keys vs cni-core NetConf", &table.keys(), &cni_extension_keys());
}

#[test]
fn every_ipam_cluster_key_is_documented_and_every_documented_key_exists() {
    let table = table_under("docs/cluster-ipam.md", "Config (ipam.cluster)");
    let mut code = serde_keys("cluster-ipam/src/config.rs", "Raw");
    code.extend(prefixed("pools[].", serde_keys("cluster-ipam/src/config.rs", "RawPool")));
    assert_same_keys("docs/cluster-ipam.md ipam.cluster vs cluster-ipam Raw + RawPool", &table.keys(), &code);
}

#[test]
fn the_admin_commands_flags_are_those_of_the_binary() {
    let bin = Path::new(env!("CARGO_BIN_EXE_cni-ipam"));
    let table = table_under("docs/cluster-ipam.md", "Admin commands");
    for cmd in ["blocks", "remove-host"] {
        let flags = help_flags(&run_help(bin, &[cmd, "--help"]));
        assert!(!flags.is_empty(), "cni-ipam {cmd} --help lists no flag");
        let code: BTreeSet<String> = flag_keys(&flags, "--");
        assert_same_keys(&format!("docs/cluster-ipam.md admin flags vs `cni-ipam {cmd} --help`"), &table.keys(), &code);
        let missing = defaults_missing(&table, &flags, "--");
        assert!(missing.is_empty(), "docs/cluster-ipam.md admin flags: {missing:#?}");
    }
}
