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

#[test]
fn every_cluster_config_and_node_key_is_documented_and_exists() {
    const SRC: &str = "cni-bgp/src/cluster.rs";
    for (heading, ty) in [
        ("Cluster config keys", "ClusterBgpConfig"),
        ("Peer keys", "GlobalPeer"),
        ("Route reflector keys", "RouteReflector"),
        ("Node record keys", "NodeRecord"),
    ] {
        let table = table_under(PAGE, heading);
        assert_same_keys(&format!("{PAGE} {heading} vs {ty}"), &table.keys(), &serde_keys(SRC, ty));
    }
    let table = table_under(PAGE, "Cluster config keys");
    let d = cni_bgp::cluster::ClusterBgpConfig::default();
    assert!(table.cell("asNumber", "default").unwrap().text.contains(&d.as_number.to_string()));
    assert!(table.cell("nodeToNodeMesh", "default").unwrap().text.contains(&d.node_to_node_mesh.to_string()));
}

#[test]
fn every_cli_flag_is_documented_with_the_codes_default() {
    use clap::CommandFactory;
    let table = table_under(PAGE, "CLI");
    let cmd = cni_bgp::cli::Cli::command();
    let nodes = cmd.find_subcommand("nodes").expect("nodes command");
    let code: BTreeSet<String> = nodes.get_arguments().filter_map(|a| a.get_long()).map(|l| format!("--{l}")).collect();
    assert_same_keys(&format!("{PAGE} CLI flags vs `cni-bgp nodes`"), &table.keys(), &code);
    for a in nodes.get_arguments() {
        let (Some(l), Some(d)) = (a.get_long(), a.get_default_values().first()) else { continue };
        let cell = table.cell(&format!("--{l}"), "default").unwrap();
        assert!(cell.text.contains(d.to_str().unwrap()), "--{l}: docs say {:?}, code {d:?}", cell.text);
    }
}

#[test]
fn every_agent_flag_is_documented_with_the_codes_default() {
    use clap::CommandFactory;
    let table = table_under(PAGE, "Agent flags");
    let cmd = cni_bgp::cli::Cli::command();
    let agent = cmd.find_subcommand("agent").expect("agent command");
    let code: BTreeSet<String> =
        agent.get_arguments().filter_map(|a| a.get_long()).filter(|l| *l != "help").map(|l| format!("--{l}")).collect();
    assert_same_keys(&format!("{PAGE} Agent flags vs `cni-bgp agent`"), &table.keys(), &code);
    for a in agent.get_arguments() {
        let (Some(l), Some(d)) = (a.get_long(), a.get_default_values().first()) else { continue };
        let cell = table.cell(&format!("--{l}"), "default").unwrap();
        assert!(cell.text.contains(d.to_str().unwrap()), "--{l}: docs say {:?}, code {d:?}", cell.text);
    }
    // status and routes: their flags are in the command column.
    let table = table_under(PAGE, "Status and routes");
    for name in ["status", "routes"] {
        let sub = cmd.find_subcommand(name).unwrap();
        let row = table.rows.iter().find(|r| r[0].text.contains(&format!("cni-bgp {name}"))).expect(name);
        for l in sub.get_arguments().filter_map(|a| a.get_long()).filter(|l| *l != "help") {
            assert!(row[0].text.contains(&format!("--{l}")), "{name}: --{l} not documented");
        }
    }
}
