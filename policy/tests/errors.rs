//! A bad file is refused with its name, the line and the field, and a directory loads all
//! its files in name order or stops at the first bad one.

use std::path::Path;

use policy::Error;

/// The error for `yaml`, as `(line, message)`.
fn error(yaml: &str) -> (Option<usize>, String) {
    match policy::parse_str(Path::new("/etc/cni/policy.d/p.yaml"), yaml) {
        Ok(set) => panic!("accepted: {set:?}"),
        Err(Error::File { file, line, message }) => {
            assert_eq!(file, Path::new("/etc/cni/policy.d/p.yaml"));
            (line, message)
        }
        Err(e) => panic!("{e}"),
    }
}

fn assert_error(yaml: &str, line: usize, words: &[&str]) {
    let (l, m) = error(yaml);
    assert_eq!(l, Some(line), "{m}");
    for w in words {
        assert!(m.contains(w), "{m:?} lacks {w:?}");
    }
}

const GOOD: &str = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {name: ok}\nspec: {}\n";

#[test]
fn an_unknown_field_is_refused_with_its_line_and_path() {
    let yaml = format!(
        "{GOOD}---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: p\nspec:\n  ingress:\n  - action: Allow\n    sourc: {{}}\n"
    );
    assert_error(&yaml, 13, &["spec.ingress[0]", "unknown field `sourc`"]);
    let yaml = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: k}\nspec:\n  podSelector: {}\n  ingres: []\n";
    assert_error(yaml, 6, &["spec", "unknown field `ingres`"]);
}

#[test]
fn a_bad_value_names_its_field() {
    // A value is named by its path; a check across fields of a rule by the list it is in, its
    // line, and the fields in the message.
    let rule = |r: &str| format!("{GOOD}---\n{}", GOOD.replace("spec: {}", &format!("spec:\n  ingress:\n  - {r}\n")));
    assert_error(&rule("action: Alow"), 11, &["spec.ingress[0].action", "unknown variant `Alow`"]);
    assert_error(
        &rule("{action: Allow, source: {selector: app = 'x'}}"),
        11,
        &["spec.ingress[0].source.selector", "column 5"],
    );
    assert_error(
        &rule("{action: Allow, source: {nets: [10.0.0.0/33]}}"),
        11,
        &["spec.ingress[0].source.nets[0]", "not a CIDR"],
    );
    assert_error(
        &rule("{action: Allow, protocol: TCP, destination: {ports: [http]}}"),
        11,
        &["ports[0]", "named port \"http\" is not supported"],
    );
    assert_error(&rule("{action: Allow, protocol: TCP, destination: {ports: ['90:80']}}"), 11, &["ports[0]", "empty"]);
    assert_error(&rule("{action: Allow, protocol: TPC}"), 11, &["spec.ingress[0].protocol", "unknown protocol"]);
    assert_error(
        &rule("{action: Allow, destination: {ports: [80]}}"),
        11,
        &["spec.ingress: ports and notPorts need protocol TCP"],
    );
    assert_error(&rule("{action: Allow, icmp: {type: 8}}"), 11, &["spec.ingress: icmp and notICMP need protocol ICMP"]);
    assert_error(&rule("{action: Allow, ipVersion: 5}"), 11, &["spec.ingress: ipVersion 5"]);
    // Calico's ICMPFields and Rule checks: a code needs a type, type 255 is out of range,
    // ICMP belongs to IPv4 and ICMPv6 to IPv6.
    assert_error(
        &rule("{action: Allow, protocol: ICMP, icmp: {code: 0}}"),
        11,
        &["spec.ingress: ICMP code specified without an ICMP type"],
    );
    assert_error(&rule("{action: Allow, protocol: ICMP, icmp: {type: 255}}"), 11, &["icmp type 255"]);
    assert_error(&rule("{action: Allow, protocol: ICMP, ipVersion: 6}"), 11, &["protocol ICMP requires ipVersion 4"]);
    assert_error(
        &rule("{action: Allow, notProtocol: ICMPv6, ipVersion: 4}"),
        11,
        &["notProtocol ICMPv6 requires ipVersion 6"],
    );
    let yaml = format!("{GOOD}---\n{}", GOOD.replace("spec: {}", "spec:\n  selector: \"has(a\"\n"));
    assert_error(&yaml, 10, &["spec.selector", "column 6"]);
}

#[test]
fn kubernetes_mistakes_are_refused() {
    let k8s = |body: &str| {
        format!("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: k, namespace: a}}\nspec:\n  podSelector: {{}}\n{body}")
    };
    assert_error(&k8s("  ingress:\n  - ports: [{port: http}]\n"), 7, &["spec.ingress[0].ports[0]", "named port"]);
    assert_error(&k8s("  ingress:\n  - ports: [{protocol: TCP, endPort: 90}]\n"), 7, &["endPort needs port"]);
    assert_error(&k8s("  ingress:\n  - ports: [{port: 90, endPort: 80}]\n"), 7, &["endPort 80 is below port 90"]);
    assert_error(
        &k8s("  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8, except: [11.0.0.0/24]}\n"),
        8,
        &["spec.ingress[0].from: ipBlock.except 11.0.0.0/24 is not inside"],
    );
    assert_error(
        &k8s("  ingress:\n  - from:\n    - ipBlock: {cidr: 10.0.0.0/8}\n      podSelector: {}\n"),
        8,
        &["cannot be combined"],
    );
    // An empty peer is refused, as the API server's validation does ("must specify a peer").
    assert_error(&k8s("  ingress:\n  - from: [{}]\n"), 7, &["spec.ingress[0].from", "a peer needs"]);
    assert_error(
        &k8s("  egress:\n  - to:\n    - podSelector: {matchExpressions: [{key: a, operator: Is, values: [x]}]}\n"),
        8,
        &["spec.egress[0].to[0].podSelector.matchExpressions[0].operator", "unknown variant `Is`"],
    );
    let (line, m) = error("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: k}\nspec: {}\n");
    assert!(line.is_some() && m.contains("podSelector"), "{line:?} {m}");
}

#[test]
fn an_unsupported_kind_or_a_misplaced_field_names_the_document() {
    let yaml = format!("{GOOD}---\napiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: cm\n");
    assert_error(&yaml, 9, &["apiVersion \"v1\" kind \"ConfigMap\" is not supported"]);
    let yaml = format!(
        "{GOOD}---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: np\nspec:\n  namespaceSelector: all()\n"
    );
    assert_error(&yaml, 9, &["spec.namespaceSelector", "only a GlobalNetworkPolicy"]);
}

#[test]
fn a_yaml_syntax_error_has_its_line() {
    let yaml =
        format!("{GOOD}---\napiVersion: projectcalico.org/v3\nkind: [GlobalNetworkPolicy\nmetadata: {{name: x}}\n");
    let (line, m) = error(&yaml);
    assert!(matches!(line, Some(7..=8)), "{line:?} {m}");
}

#[test]
fn exported_metadata_and_empty_documents_are_accepted() {
    let yaml = "# policies\n---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: k\n  namespace: a\n  uid: 0b8c\n  resourceVersion: \"12\"\n  generation: 1\n  creationTimestamp: \"2024-01-01T00:00:00Z\"\n  annotations: {note: x}\nspec:\n  podSelector: {}\n---\n";
    let set = policy::parse_str(Path::new("x.yaml"), yaml).unwrap();
    assert_eq!(set.policies.len(), 1);
    assert_eq!(set.policies[0].namespace.as_deref(), Some("a"));
}

#[test]
fn a_directory_loads_its_yaml_files_in_name_order_or_reports_the_first_bad_one() {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    write("20-b.yml", &GOOD.replace("name: ok", "name: second"));
    write("10-a.yaml", &GOOD.replace("name: ok", "name: first"));
    write("README.md", "not yaml: [");
    write("30-c.yaml.bak", "not yaml: [");
    let set = policy::load_dir(dir.path()).unwrap();
    let names: Vec<&str> = set.policies.iter().map(|p| p.name.as_str()).collect();
    assert_eq!(names, ["first", "second"]);
    write("15-bad.yaml", &format!("{GOOD}---\n{}", GOOD.replace("spec: {}", "spec: {order: high}")));
    let e = policy::load_dir(dir.path()).unwrap_err();
    let Error::File { file, line, message } = &e else { panic!("{e}") };
    assert_eq!((file.as_path(), *line), (dir.path().join("15-bad.yaml").as_path(), Some(9)));
    assert!(message.contains("spec.order"), "{e}");
    assert!(e.to_string().starts_with(&format!("{}:9: spec.order", dir.path().join("15-bad.yaml").display())), "{e}");
    let e = policy::load_dir(&dir.path().join("missing")).unwrap_err();
    assert!(matches!(e, Error::Io { .. }), "{e}");
}

#[test]
fn a_policy_defined_twice_is_refused_at_its_second_definition() {
    let np = |name: &str| {
        format!("apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata:\n  name: {name}\n  namespace: a\nspec: {{}}\n")
    };
    // Same name in another kind or namespace is another policy; the same one twice is not.
    let yaml = format!("{}---\n{}---\n{}", np("x"), np("x").replace("namespace: a", "namespace: b"), np("x"));
    assert_error(
        &yaml,
        18,
        &["metadata.name", "\"x\" in namespace \"a\" is already defined at /etc/cni/policy.d/p.yaml:4"],
    );
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("a.yaml"), np("x")).unwrap();
    std::fs::write(dir.path().join("b.yaml"), format!("{GOOD}---\n{}", np("x"))).unwrap();
    let e = policy::load_dir(dir.path()).unwrap_err();
    let Error::File { file, line, message } = &e else { panic!("{e}") };
    assert_eq!((file.clone(), *line), (dir.path().join("b.yaml"), Some(9)), "{e}");
    assert!(message.contains(&format!("already defined at {}:4", dir.path().join("a.yaml").display())), "{e}");
}

#[test]
fn a_document_error_points_at_that_documents_name_line() {
    // The first document has the same name; the error is about the second.
    let yaml = format!(
        "{}---\napiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: ok}}\nspec:\n  namespaceSelector: all()\n",
        GOOD
    );
    assert_error(&yaml, 8, &["spec.namespaceSelector"]);
}

#[test]
fn the_default_tier_keeps_calicos_order_and_default_action() {
    let tier = |spec: &str| {
        format!("apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {{name: default}}\nspec: {spec}\n")
    };
    assert_error(&tier("{defaultAction: Pass}"), 3, &["the \"default\" tier has order 1000000 and defaultAction Deny"]);
    assert_error(&tier("{order: 5}"), 3, &["\"default\" tier"]);
    let set = policy::parse_str(Path::new("t.yaml"), &tier("{order: 1000000, defaultAction: Deny}")).unwrap();
    assert_eq!(set.tiers.len(), 1);
}
