//! docs/cni-policy.md against the code: the "Config fields" table and the plugin's serde keys
//! (plus the extensions every plugin of ours reads) both ways, with the defaults of an empty
//! config; the "Flags" table and every subcommand's clap flags both ways, with their defaults.

use std::collections::BTreeSet;

use clap::CommandFactory;
use cni_policy::cli::Cli;
use cni_policy::plugin::PolicyConf;
use docs_check::{assert_same_keys, clap_flags, cni_extension_keys, serde_keys, table_under};

const PAGE: &str = "docs/cni-policy.md";

#[test]
fn every_config_key_is_documented_with_its_default() {
    let table = table_under(PAGE, "Config fields");
    let mut code: BTreeSet<String> = serde_keys("cni-policy/src/plugin.rs", "PolicyConf");
    code.extend(cni_extension_keys());
    assert_same_keys(&format!("{PAGE} Config fields vs PolicyConf + NetConf"), &table.keys(), &code);
    let c = PolicyConf::parse(&serde_json::json!({})).unwrap();
    for (key, v) in [("policyDir", &c.policy_dir), ("stateDir", &c.state_dir)] {
        let cell = table.cell(key, "default").unwrap();
        assert!(cell.text.contains(&v.display().to_string()), "{key}: default {} vs {:?}", v.display(), cell.text);
    }
}

#[test]
fn every_flag_is_documented_with_its_default() {
    let table = table_under(PAGE, "Flags");
    let documented: BTreeSet<String> =
        table.keys().into_iter().map(|k| k.trim_start_matches("--").to_string()).collect();
    let cmd = Cli::command();
    let mut code = BTreeSet::new();
    for sub in cmd.get_subcommands() {
        for (flag, default) in clap_flags(sub) {
            let cell = table.cell(&format!("--{flag}"), "commands").map(|c| c.text.clone()).unwrap_or_default();
            assert!(cell.contains(sub.get_name()), "--{flag} of {}: the table's commands are {cell:?}", sub.get_name());
            if let Some(d) = default {
                let dcell = table.cell(&format!("--{flag}"), "default").unwrap();
                assert!(dcell.text.contains(&d), "--{flag}: default {d} vs {:?}", dcell.text);
            }
            code.insert(flag);
        }
    }
    assert_same_keys(&format!("{PAGE} Flags vs clap"), &documented, &code);
}
