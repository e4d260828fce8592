//! docs/cni-bgp.md's "Config fields" table against the plugin's config type:
//! every key the serde struct accepts has a row, every row names a key the
//! code accepts, and the defaults the table gives are the code's.

use std::collections::BTreeSet;

use docs_check::{assert_same_keys, cni_extension_keys, serde_keys, table_under};

const PAGE: &str = "docs/cni-bgp.md";

#[test]
fn every_plugin_config_key_is_documented_and_every_documented_key_exists() {
    let table = table_under(PAGE, "Config fields");
    let mut code: BTreeSet<String> = serde_keys("cni-bgp/src/plugin.rs", "BgpConf");
    code.extend(cni_extension_keys());
    assert_same_keys(&format!("{PAGE} Config fields vs BgpConf + NetConf"), &table.keys(), &code);
}

#[test]
fn documented_defaults_are_the_codes() {
    let table = table_under(PAGE, "Config fields");
    let cell =
        |key: &str| table.cell(key, "default").unwrap_or_else(|| panic!("{PAGE}: no row for {key}")).text.clone();
    assert!(cell("stateDir").contains(cni_bgp::status::DEFAULT_STATE_DIR));
    assert!(cell("dataDir").contains(cni_bgp::plugin::DEFAULT_DATA_DIR));
    assert!(cell("natOutgoing").contains("false"));
    assert!(cell("mtu").contains("kernel"));
    assert!(cell("pools").contains("ipam.cluster.pool"));
}
