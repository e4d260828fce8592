//! docs/cni-overlay.md and docs/cluster-ipam.md against the code: the agent's and the admin
//! commands' flags (clap's own list, with defaults), the plugin's config keys (its serde
//! struct) and the network config's keys in etcd (the lists subnet-lease validates
//! against). Each is compared both ways.

use clap::CommandFactory;
use cni_overlay::cli::Cli;
use docs_check::{
    assert_same_keys, clap_flags, cni_extension_keys, defaults_missing, flag_keys, prefixed, serde_keys, str_list,
    table_under,
};

const PAGE: &str = "docs/cni-overlay.md";

fn subcommand_flags(name: &str) -> Vec<(String, Option<String>)> {
    let cli = Cli::command();
    let cmd = cli.find_subcommand(name).unwrap_or_else(|| panic!("no subcommand {name}"));
    clap_flags(cmd)
}

#[test]
fn every_agent_flag_is_documented_with_its_default() {
    let flags = subcommand_flags("agent");
    let table = table_under(PAGE, "Agent flags");
    assert_same_keys(&format!("{PAGE} Agent flags vs `cni-overlay agent`"), &table.keys(), &flag_keys(&flags, "--"));
    let missing = defaults_missing(&table, &flags, "--");
    assert!(missing.is_empty(), "{PAGE}: {missing:#?}");
}

#[test]
fn the_admin_commands_take_exactly_the_documented_etcd_flags() {
    let table = table_under(PAGE, "Admin commands");
    for cmd in ["leases", "remove-host"] {
        let flags = subcommand_flags(cmd);
        assert_same_keys(
            &format!("{PAGE} admin flags vs `cni-overlay {cmd}`"),
            &table.keys(),
            &flag_keys(&flags, "--"),
        );
        let missing = defaults_missing(&table, &flags, "--");
        assert!(missing.is_empty(), "{PAGE}: {missing:#?}");
    }
}

#[test]
fn every_plugin_config_key_is_documented_and_every_documented_key_exists() {
    let table = table_under(PAGE, "The plugin");
    let mut code = serde_keys("cni-overlay/src/plugin.rs", "OverlayConf");
    code.extend(cni_extension_keys());
    assert_same_keys(&format!("{PAGE} plugin keys vs OverlayConf + NetConf"), &table.keys(), &code);
}

#[test]
fn every_network_config_key_is_documented_and_every_documented_key_exists() {
    let table = table_under("docs/cluster-ipam.md", "Network config");
    let mut code: std::collections::BTreeSet<String> =
        str_list("subnet-lease/src/config.rs", "TOP_KEYS").into_iter().collect();
    code.extend(prefixed("Backend.", str_list("subnet-lease/src/config.rs", "BACKEND_KEYS")));
    assert_same_keys(
        "docs/cluster-ipam.md network config vs subnet-lease TOP_KEYS + BACKEND_KEYS",
        &table.keys(),
        &code,
    );
}
