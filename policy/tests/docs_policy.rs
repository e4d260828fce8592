//! docs/policy.md against the code: each field table lists exactly the fields the parser
//! accepts (both ways), every YAML example parses, and the error examples are the parser's
//! own messages.

use std::collections::BTreeSet;
use std::path::Path;

use docs_check::{assert_same_keys, prefixed, read, serde_keys, table_under, tables};

const FILE: &str = "policy/src/file.rs";
const PAGE: &str = "docs/policy.md";

#[test]
fn the_calico_tables_list_the_accepted_fields() {
    for (heading, ty) in [
        ("Calico spec", "CalicoSpec"),
        ("Calico rules", "CalicoRuleFields"),
        ("Calico source and destination", "CalicoEntity"),
    ] {
        let table = table_under(PAGE, heading);
        assert_same_keys(&format!("{PAGE} {heading} vs {ty}"), &table.keys(), &serde_keys(FILE, ty));
    }
}

#[test]
fn the_kubernetes_tables_list_the_accepted_fields() {
    let page = read(PAGE);
    let under: Vec<_> = tables(&page).into_iter().filter(|t| t.heading == "Kubernetes spec").collect();
    assert_eq!(under.len(), 2, "the spec table and the peer/port table");
    let mut code = serde_keys(FILE, "K8sSpec");
    code.extend(prefixed("ingress[].", serde_keys(FILE, "K8sIngress")));
    code.extend(prefixed("egress[].", serde_keys(FILE, "K8sEgress")));
    assert_same_keys("docs/policy.md Kubernetes spec vs K8sSpec", &under[0].keys(), &code);
    let mut code: BTreeSet<String> = serde_keys(FILE, "K8sPeerFields");
    code.extend(serde_keys(FILE, "K8sPortFields"));
    assert_same_keys("docs/policy.md peer and port fields vs K8sPeerFields + K8sPortFields", &under[1].keys(), &code);
}

/// The fenced blocks of `lang` in the page.
fn blocks(lang: &str) -> Vec<String> {
    let page = read(PAGE);
    let mut out = Vec::new();
    let mut cur: Option<String> = None;
    for line in page.lines() {
        match &mut cur {
            None if line == format!("```{lang}") => cur = Some(String::new()),
            Some(b) if line == "```" => {
                out.push(std::mem::take(b));
                cur = None;
            }
            Some(b) => {
                b.push_str(line);
                b.push('\n');
            }
            None => {}
        }
    }
    out
}

#[test]
fn every_yaml_example_parses() {
    let examples = blocks("yaml");
    assert!(examples.len() >= 2);
    let mut kinds = 0;
    for (i, y) in examples.iter().enumerate() {
        let set = policy::parse_str(Path::new(PAGE), y).unwrap_or_else(|e| panic!("example {i}: {e}"));
        kinds += set.policies.len();
    }
    assert!(kinds >= 3);
}

#[test]
fn the_error_examples_are_the_parsers_messages() {
    let calico = |rule: &str| {
        format!("apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: db}}\nspec:\n  ingress:\n  - {rule}\n")
    };
    let k8s = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: k}\nspec:\n  podSelector: {}\n  ingress:\n  - ports: [{port: http}]\n";
    let produced: Vec<String> = [
        calico("{action: Alow}"),
        calico("{action: Allow}\n  - {action: Allow, source: {selector: \"app = 'web'\"}}"),
        k8s.to_string(),
    ]
    .iter()
    .map(|y| match policy::parse_str(Path::new("x.yaml"), y) {
        Err(policy::Error::File { message, .. }) => message,
        other => panic!("{other:?}"),
    })
    .collect();
    let text = blocks("text");
    let documented: Vec<&str> = text[0].lines().map(|l| l.splitn(3, ':').nth(2).unwrap().trim_start()).collect();
    assert_eq!(documented, produced);
}
