//! docs/cni-bridge.md's "Config fields" table against the config type: every key the
//! bridge's serde struct accepts has a row, every row names a key the code accepts, and the
//! defaults the table gives are those of an empty config.

use std::collections::BTreeSet;

use cni_bridge::config::BridgeConf;
use docs_check::{assert_same_keys, cni_extension_keys, prefixed, serde_keys, table_under};

const PAGE: &str = "docs/cni-bridge.md";

#[test]
fn every_bridge_config_key_is_documented_and_every_documented_key_exists() {
    let table = table_under(PAGE, "Config fields");
    let mut code: BTreeSet<String> = serde_keys("cni-bridge/src/config.rs", "BridgeConf");
    code.extend(prefixed("vlanTrunk[].", serde_keys("cni-bridge/src/config.rs", "Trunk")));
    code.extend(cni_extension_keys());
    assert_same_keys(&format!("{PAGE} Config fields vs BridgeConf + Trunk + NetConf"), &table.keys(), &code);
}

#[test]
fn documented_defaults_are_those_of_an_empty_config() {
    let table = table_under(PAGE, "Config fields");
    let c: BridgeConf = serde_json::from_value(serde_json::json!({})).expect("an empty config parses");
    let bools = [
        ("isGateway", c.is_gateway),
        ("isDefaultGateway", c.is_default_gateway),
        ("forceAddress", c.force_address),
        ("ipMasq", c.ip_masq),
        ("hairpinMode", c.hairpin_mode),
        ("promiscMode", c.promisc_mode),
        ("preserveDefaultVlan", c.preserve_default_vlan),
        ("macspoofchk", c.mac_spoof_check),
        ("enabledad", c.enable_dad),
        ("portIsolation", c.port_isolation),
        ("disableContainerInterface", c.disable_container_interface),
    ];
    let mut wrong = Vec::new();
    let mut check = |key: &str, want: &str| {
        let cell = table.cell(key, "default").unwrap_or_else(|| panic!("{PAGE}: no row for {key}"));
        if !cell.text.contains(want) {
            wrong.push(format!("{key}: default is {want}, the table says {:?}", cell.text));
        }
    };
    for (key, v) in bools {
        check(key, if v { "true" } else { "false" });
    }
    check("bridge", &c.bridge);
    assert_eq!((c.mtu, c.vlan, c.vlan_trunk.len(), c.ip_masq_backend.as_deref()), (None, None, 0, None));
    check("mtu", "kernel default");
    check("vlan", "0 (none)");
    check("vlanTrunk", "[]");
    assert!(wrong.is_empty(), "{PAGE}: {wrong:#?}");
}
