//! What the policy tests that need no kernel share: policy files parsed as the plugin parses
//! them, and endpoints built from a name, a namespace, labels and addresses.

#![allow(dead_code)]

use std::path::Path;

use policy::model::Endpoint;
use policy::PolicySet;

/// `yaml` parsed as one policy file; a parse error fails the test with the error's text.
pub fn policies(yaml: &str) -> PolicySet {
    policy::parse_str(Path::new("test.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"))
}

/// An endpoint with these labels and addresses, the other fields at their defaults.
pub fn ep(name: &str, namespace: &str, labels: &[(&str, &str)], addrs: &[&str]) -> Endpoint {
    Endpoint {
        name: name.into(),
        namespace: namespace.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        ..Endpoint::default()
    }
}
