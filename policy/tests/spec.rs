//! The specifications' rules, one test each: policy files as users write them, endpoints and
//! packets, and the verdict the reference evaluator gives.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;

use policy::model::Direction::{Egress, Ingress};
use policy::model::{Direction, Endpoint};
use policy::{evaluate, evaluate_path, Packet, PolicySet, Verdict};

fn policies(yaml: &str) -> PolicySet {
    policy::parse_str(Path::new("test.yaml"), yaml).unwrap_or_else(|e| panic!("{e}"))
}

fn ep(name: &str, namespace: &str, labels: &[(&str, &str)], addrs: &[&str]) -> Endpoint {
    Endpoint {
        name: name.into(),
        namespace: namespace.into(),
        labels: labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<BTreeMap<_, _>>(),
        addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        ..Endpoint::default()
    }
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn tcp(src: &str, dst: &str, port: u16) -> Packet {
    Packet::tcp(ip(src), 40000, ip(dst), port)
}

fn verdict(set: &PolicySet, eps: &[Endpoint], at: &Endpoint, dir: Direction, pkt: Packet) -> Verdict {
    evaluate(set, eps, at, dir, &pkt).verdict
}

use Verdict::{Allow, Deny};

/// web 10.0.0.1, db 10.0.0.2, other 10.0.0.3 in `prod`; a pod of namespace `dev` 10.0.1.1.
fn world() -> Vec<Endpoint> {
    vec![
        ep("web", "prod", &[("app", "web")], &["10.0.0.1", "fd00::1"]),
        ep("db", "prod", &[("app", "db")], &["10.0.0.2", "fd00::2"]),
        ep("other", "prod", &[("app", "other")], &["10.0.0.3"]),
        ep("devpod", "dev", &[("app", "web")], &["10.0.1.1"]),
    ]
}

const K8S_DB_FROM_WEB: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from:
    - podSelector: {matchLabels: {app: web}}
    ports:
    - {protocol: TCP, port: 5432}
"#;

#[test]
fn an_endpoint_selected_in_a_direction_is_default_deny_in_that_direction_only() {
    let set = policies(K8S_DB_FROM_WEB);
    let w = world();
    let (web, db, other) = (&w[0], &w[1], &w[2]);
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("10.0.0.1", "10.0.0.2", 5432)), Allow);
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("10.0.0.1", "10.0.0.2", 5433)), Deny, "other port");
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("10.0.0.3", "10.0.0.2", 5432)), Deny, "other pod");
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("192.0.2.9", "10.0.0.2", 5432)), Deny, "not a pod");
    assert_eq!(verdict(&set, &w, db, Egress, tcp("10.0.0.2", "10.0.0.3", 80)), Allow, "egress not selected");
    assert_eq!(verdict(&set, &w, other, Ingress, tcp("10.0.0.2", "10.0.0.3", 80)), Allow, "not selected");
    assert_eq!(verdict(&set, &w, web, Ingress, tcp("192.0.2.9", "10.0.0.1", 1)), Allow, "not selected");
    // A policy with no rules at all still isolates what it selects.
    let deny_all = policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: prod}\n\
         spec: {podSelector: {}, policyTypes: [Ingress, Egress]}\n",
    );
    assert_eq!(verdict(&deny_all, &w, web, Egress, tcp("10.0.0.1", "10.0.0.2", 80)), Deny);
    assert_eq!(verdict(&deny_all, &w, web, Ingress, tcp("10.0.0.2", "10.0.0.1", 80)), Deny);
    let dev = &w[3];
    assert_eq!(verdict(&deny_all, &w, dev, Ingress, tcp("10.0.0.2", "10.0.1.1", 80)), Allow, "other namespace");
}

#[test]
fn a_routed_packet_needs_the_senders_egress_and_the_receivers_ingress() {
    let set = policies(&format!(
        "{K8S_DB_FROM_WEB}---\napiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n\
         metadata: {{name: web-egress, namespace: prod}}\n\
         spec: {{podSelector: {{matchLabels: {{app: web}}}}, policyTypes: [Egress], egress: [{{ports: [{{port: 53, protocol: UDP}}]}}]}}\n"
    ));
    let w = world();
    assert_eq!(evaluate_path(&set, &w, &tcp("10.0.0.1", "10.0.0.2", 5432)), Deny, "web may only send DNS");
    assert_eq!(evaluate_path(&set, &w, &Packet::udp(ip("10.0.0.1"), 1000, ip("192.0.2.53"), 53)), Allow);
    assert_eq!(evaluate_path(&set, &w, &tcp("10.0.0.3", "10.0.0.2", 5432)), Deny, "db takes only web");
    assert_eq!(evaluate_path(&set, &w, &tcp("10.0.0.3", "10.0.0.1", 80)), Allow);
}

#[test]
fn kubernetes_policies_add_up() {
    let set = policies(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: http, namespace: prod}
spec:
  podSelector: {matchLabels: {app: web}}
  ingress: [{ports: [{port: 80}]}]
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: https, namespace: prod}
spec:
  podSelector: {matchExpressions: [{key: app, operator: In, values: [web, api]}]}
  ingress: [{ports: [{port: 443}]}]
"#,
    );
    let w = world();
    let web = &w[0];
    assert_eq!(verdict(&set, &w, web, Ingress, tcp("192.0.2.1", "10.0.0.1", 80)), Allow);
    assert_eq!(verdict(&set, &w, web, Ingress, tcp("192.0.2.1", "10.0.0.1", 443)), Allow);
    assert_eq!(verdict(&set, &w, web, Ingress, tcp("192.0.2.1", "10.0.0.1", 22)), Deny);
    let udp = Packet::udp(ip("192.0.2.1"), 1, ip("10.0.0.1"), 80);
    assert_eq!(verdict(&set, &w, web, Ingress, udp), Deny, "a port without protocol is TCP");
}

const GNP_HEAD: &str = "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\n";

#[test]
fn calico_policies_apply_by_order_lowest_first_and_unordered_last() {
    let deny = |order: &str| {
        format!("{GNP_HEAD}metadata: {{name: deny-22}}\nspec:\n  {order}\n  ingress: [{{action: Deny, protocol: TCP, destination: {{ports: [22]}}}}]\n")
    };
    let allow = |order: &str| {
        format!("{GNP_HEAD}metadata: {{name: allow-all}}\nspec:\n  {order}\n  ingress: [{{action: Allow}}]\n")
    };
    let w = world();
    let web = &w[0];
    let ssh = || tcp("192.0.2.1", "10.0.0.1", 22);
    let set = policies(&format!("{}---\n{}", allow("order: 20"), deny("order: 10")));
    assert_eq!(verdict(&set, &w, web, Ingress, ssh()), Deny);
    let set = policies(&format!("{}---\n{}", allow("order: 10"), deny("order: 20")));
    assert_eq!(verdict(&set, &w, web, Ingress, ssh()), Allow);
    let set = policies(&format!("{}---\n{}", allow("selector: all()"), deny("order: 1e6")));
    assert_eq!(verdict(&set, &w, web, Ingress, ssh()), Deny, "no order comes after any order");
    // Equal orders: by name (allow-all < deny-22).
    let set = policies(&format!("{}---\n{}", deny("order: 5"), allow("order: 5")));
    assert_eq!(verdict(&set, &w, web, Ingress, ssh()), Allow);
}

const TIERS: &str = r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: security.prod}
spec:
  tier: security
  selector: projectcalico.org/namespace == 'prod'
  ingress:
  - action: Pass
    source: {selector: app == 'web'}
  - action: Deny
    source: {nets: [192.0.2.0/24]}
"#;

#[test]
fn pass_skips_the_rest_of_the_tier_and_the_next_tier_decides() {
    let w = world();
    let db = &w[1];
    // Only the security tier: web passes out of the last tier to the profile (allow);
    // 192.0.2.0/24 is denied; anything else reaches the end of the tier: denied.
    let set = policies(TIERS);
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("10.0.0.1", "10.0.0.2", 5432)), Allow);
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("192.0.2.7", "10.0.0.2", 5432)), Deny);
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("10.0.0.3", "10.0.0.2", 5432)), Deny, "tier end");
    // With the Kubernetes policy (default tier, after security): web passes there and is
    // allowed on 5432 only.
    let set = policies(&format!("{TIERS}---{K8S_DB_FROM_WEB}"));
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("10.0.0.1", "10.0.0.2", 5432)), Allow);
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("10.0.0.1", "10.0.0.2", 6000)), Deny);
    // A tier whose default action is Pass lets undecided packets through to the next tier.
    let set = policies(&format!(
        "{}---{K8S_DB_FROM_WEB}",
        TIERS.replace("{order: 100}", "{order: 100, defaultAction: Pass}")
    ));
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("10.0.0.3", "10.0.0.2", 5432)), Deny, "k8s policy decides");
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("10.0.0.1", "10.0.0.2", 5432)), Allow);
    // A tier with an order lower than security's comes first.
    let first = format!(
        "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {{name: platform}}\nspec: {{order: 50}}\n---\n\
         {GNP_HEAD}metadata: {{name: platform.allow-ops}}\nspec: {{tier: platform, ingress: [{{action: Allow, source: {{nets: [192.0.2.7/32]}}}}]}}\n---\n{TIERS}"
    );
    let set = policies(&first);
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("192.0.2.7", "10.0.0.2", 5432)), Allow);
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("192.0.2.8", "10.0.0.2", 5432)), Deny);
}

#[test]
fn log_records_and_goes_on_to_the_next_rule() {
    let set = policies(&format!(
        "{GNP_HEAD}metadata: {{name: audit}}\nspec:\n  ingress:\n  - action: Log\n    protocol: TCP\n  - action: Allow\n    destination: {{ports: ['80:89']}}\n    protocol: TCP\n"
    ));
    let w = world();
    let web = &w[0];
    let e = evaluate(&set, &w, web, Ingress, &tcp("192.0.2.1", "10.0.0.1", 85));
    assert_eq!(e.verdict, Allow);
    assert_eq!(e.logged.len(), 1);
    assert_eq!((e.logged[0].policy.as_str(), e.logged[0].index), ("audit", 0));
    assert_eq!(e.decided_by.map(|r| r.index), Some(1));
    let e = evaluate(&set, &w, web, Ingress, &tcp("192.0.2.1", "10.0.0.1", 90));
    assert_eq!((e.verdict, e.logged.len(), e.decided_by), (Deny, 1, None), "logged, then the tier's end");
    let e = evaluate(&set, &w, web, Ingress, &Packet::udp(ip("192.0.2.1"), 1, ip("10.0.0.1"), 85));
    assert_eq!((e.verdict, e.logged.len()), (Deny, 0));
}

#[test]
fn not_selector_matches_every_address_but_the_selected_endpoints() {
    // In a GlobalNetworkPolicy without namespaceSelector, notSelector alone puts no other
    // condition: any address but those of the selected endpoints.
    let set = policies(&format!(
        "{GNP_HEAD}metadata: {{name: no-other}}\nspec:\n  selector: app == 'db'\n  ingress: [{{action: Allow, source: {{notSelector: app == 'other'}}}}]\n"
    ));
    let w = world();
    let db = &w[1];
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("10.0.0.3", "10.0.0.2", 1)), Deny);
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("10.0.0.1", "10.0.0.2", 1)), Allow);
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("10.0.1.1", "10.0.0.2", 1)), Allow, "another namespace");
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("192.0.2.1", "10.0.0.2", 1)), Allow, "not an endpoint");
}

#[test]
fn not_selector_in_a_namespaced_policy_also_means_an_endpoint_of_its_namespace() {
    // Calico's rule conversion (libcalico-go updateprocessors/rules.go) narrows the rule to the
    // policy's namespace as soon as a notSelector is given, even without a selector.
    let set = policies(
        "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: no-other, namespace: prod}\n\
         spec:\n  selector: app == 'db'\n  ingress: [{action: Allow, source: {notSelector: app == 'other'}}]\n",
    );
    let w = world();
    let db = &w[1];
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("10.0.0.3", "10.0.0.2", 1)), Deny, "selected by notSelector");
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("10.0.0.1", "10.0.0.2", 1)), Allow, "web of prod");
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("10.0.1.1", "10.0.0.2", 1)), Deny, "an endpoint of dev");
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("192.0.2.1", "10.0.0.2", 1)), Deny, "not an endpoint");
}

#[test]
fn policies_of_equal_order_and_name_sort_by_namespace_then_kind_not_by_file_order() {
    // Felix's tie-break is "name/namespace/kind": the GlobalNetworkPolicy "p" (empty
    // namespace) comes before the NetworkPolicy "p" of prod, whichever file order.
    let gnp = format!(
        "{GNP_HEAD}metadata: {{name: p}}\nspec:\n  order: 10\n  ingress: [{{action: Deny, protocol: TCP, destination: {{ports: [1]}}}}]\n"
    );
    let np = "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\n\
              spec:\n  order: 10\n  ingress: [{action: Allow}]\n";
    let w = world();
    let db = &w[1];
    for yaml in [format!("{gnp}---\n{np}"), format!("{np}---\n{gnp}")] {
        let set = policies(&yaml);
        assert_eq!(verdict(&set, &w, db, Ingress, tcp("10.0.0.1", "10.0.0.2", 1)), Deny, "{yaml}");
        assert_eq!(verdict(&set, &w, db, Ingress, tcp("10.0.0.1", "10.0.0.2", 2)), Allow, "{yaml}");
    }
}

#[test]
fn an_empty_icmp_match_puts_no_condition_on_the_message() {
    let set = policies(&format!(
        "{GNP_HEAD}metadata: {{name: ping}}\nspec:\n  ingress:\n  - {{action: Allow, protocol: ICMP, icmp: {{}}, notICMP: {{}}}}\n"
    ));
    let w = world();
    let db = &w[1];
    assert_eq!(verdict(&set, &w, db, Ingress, Packet::icmp(ip("10.0.0.1"), ip("10.0.0.2"), 13, 0)), Allow);
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("10.0.0.1", "10.0.0.2", 1)), Deny, "not ICMP");
}

#[test]
fn selectors_of_a_namespaced_policy_look_in_its_namespace_unless_a_namespace_selector_says_otherwise() {
    let w = world();
    let db = &w[1];
    let calico = |source: &str| {
        policies(&format!(
            "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: prod}}\n\
             spec:\n  selector: app == 'db'\n  ingress: [{{action: Allow, source: {source}}}]\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {{name: dev, labels: {{team: a}}}}\n"
        ))
    };
    let from_dev_web = || tcp("10.0.1.1", "10.0.0.2", 1);
    let from_prod_web = || tcp("10.0.0.1", "10.0.0.2", 1);
    let set = calico("{selector: app == 'web'}");
    assert_eq!(verdict(&set, &w, db, Ingress, from_prod_web()), Allow);
    assert_eq!(verdict(&set, &w, db, Ingress, from_dev_web()), Deny, "web of another namespace");
    let set = calico("{selector: app == 'web', namespaceSelector: team == 'a'}");
    assert_eq!(verdict(&set, &w, db, Ingress, from_prod_web()), Deny);
    assert_eq!(verdict(&set, &w, db, Ingress, from_dev_web()), Allow);
    let set = calico("{namespaceSelector: kubernetes.io/metadata.name == 'dev'}");
    assert_eq!(verdict(&set, &w, db, Ingress, from_dev_web()), Allow, "every endpoint of the namespace");
    // Kubernetes: podSelector alone, namespaceSelector alone, both in one peer (AND).
    let k8s = |peer: &str| {
        policies(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: p, namespace: prod}}\n\
             spec: {{podSelector: {{matchLabels: {{app: db}}}}, ingress: [{{from: [{peer}]}}]}}\n---\n\
             apiVersion: v1\nkind: Namespace\nmetadata: {{name: dev, labels: {{team: a}}}}\n"
        ))
    };
    let set = k8s("{podSelector: {matchLabels: {app: web}}}");
    assert_eq!(
        (verdict(&set, &w, db, Ingress, from_prod_web()), verdict(&set, &w, db, Ingress, from_dev_web())),
        (Allow, Deny)
    );
    let set = k8s("{namespaceSelector: {matchLabels: {team: a}}}");
    assert_eq!(
        (verdict(&set, &w, db, Ingress, from_prod_web()), verdict(&set, &w, db, Ingress, from_dev_web())),
        (Deny, Allow)
    );
    let set = k8s("{namespaceSelector: {}, podSelector: {matchLabels: {app: web}}}");
    assert_eq!(
        (
            verdict(&set, &w, db, Ingress, from_prod_web()),
            verdict(&set, &w, db, Ingress, tcp("10.0.0.3", "10.0.0.2", 1))
        ),
        (Allow, Deny)
    );
    // A GlobalNetworkPolicy's own namespaceSelector limits which endpoints it applies to.
    let set = policies(&format!(
        "{GNP_HEAD}metadata: {{name: dev-only}}\nspec: {{namespaceSelector: projectcalico.org/name == 'dev'}}\n"
    ));
    assert_eq!(verdict(&set, &w, &w[3], Ingress, tcp("10.0.0.1", "10.0.1.1", 1)), Deny);
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("10.0.0.1", "10.0.0.2", 1)), Allow);
}

#[test]
fn ip_block_matches_its_cidr_but_not_the_excepted_ranges() {
    let set = policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\n\
         spec:\n  podSelector: {}\n  policyTypes: [Egress]\n  egress:\n  - to: [{ipBlock: {cidr: 172.16.0.0/16, except: [172.16.5.0/24]}}]\n",
    );
    let w = world();
    let web = &w[0];
    assert_eq!(verdict(&set, &w, web, Egress, tcp("10.0.0.1", "172.16.4.255", 443)), Allow);
    assert_eq!(verdict(&set, &w, web, Egress, tcp("10.0.0.1", "172.16.5.1", 443)), Deny);
    assert_eq!(verdict(&set, &w, web, Egress, tcp("10.0.0.1", "172.17.0.1", 443)), Deny);
    assert_eq!(verdict(&set, &w, web, Ingress, tcp("172.16.5.1", "10.0.0.1", 443)), Allow, "egress only");
}

#[test]
fn end_port_makes_a_range_and_calico_ranges_and_not_ports_match_the_same_way() {
    let set = policies(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: p, namespace: prod}\n\
         spec:\n  podSelector: {}\n  ingress: [{ports: [{protocol: UDP, port: 8000, endPort: 8010}]}]\n",
    );
    let w = world();
    let web = &w[0];
    let udp = |port| Packet::udp(ip("192.0.2.1"), 5, ip("10.0.0.1"), port);
    assert_eq!([7999, 8000, 8010, 8011].map(|p| verdict(&set, &w, web, Ingress, udp(p))), [Deny, Allow, Allow, Deny]);
    let set = policies(&format!(
        "{GNP_HEAD}metadata: {{name: p}}\nspec:\n  ingress: [{{action: Allow, protocol: UDP, destination: {{ports: ['8000:8010'], notPorts: [8005]}}}}]\n"
    ));
    assert_eq!(
        [7999, 8000, 8005, 8010, 8011].map(|p| verdict(&set, &w, web, Ingress, udp(p))),
        [Deny, Allow, Deny, Allow, Deny]
    );
}

#[test]
fn ip_version_limits_a_rule_to_one_family() {
    let set =
        policies(&format!("{GNP_HEAD}metadata: {{name: v6}}\nspec:\n  ingress: [{{action: Allow, ipVersion: 6}}]\n"));
    let w = world();
    let db = &w[1];
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("fd00::1", "fd00::2", 80)), Allow);
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("10.0.0.1", "10.0.0.2", 80)), Deny);
    // nets of the other family never match.
    let set = policies(&format!(
        "{GNP_HEAD}metadata: {{name: n}}\nspec:\n  ingress: [{{action: Allow, source: {{notNets: [10.0.0.0/8]}}}}]\n"
    ));
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("fd00::1", "fd00::2", 80)), Allow);
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("10.0.0.1", "10.0.0.2", 80)), Deny);
}

#[test]
fn icmp_matches_type_and_code_and_not_icmp_the_others() {
    let set = policies(&format!(
        "{GNP_HEAD}metadata: {{name: ping}}\nspec:\n  ingress:\n  - {{action: Allow, protocol: ICMP, icmp: {{type: 8, code: 0}}}}\n  - {{action: Allow, protocol: ICMPv6, notICMP: {{type: 128}}}}\n"
    ));
    let w = world();
    let db = &w[1];
    let v4 = |t, c| verdict(&set, &w, db, Ingress, Packet::icmp(ip("10.0.0.1"), ip("10.0.0.2"), t, c));
    let v6 = |t, c| verdict(&set, &w, db, Ingress, Packet::icmp(ip("fd00::1"), ip("fd00::2"), t, c));
    assert_eq!([v4(8, 0), v4(8, 1), v4(13, 0)], [Allow, Deny, Deny]);
    assert_eq!([v6(128, 0), v6(129, 0), v6(1, 4)], [Deny, Allow, Allow]);
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("10.0.0.1", "10.0.0.2", 8)), Deny, "not ICMP");
}

#[test]
fn protocol_and_not_protocol_take_names_and_numbers() {
    let set = policies(&format!(
        "{GNP_HEAD}metadata: {{name: p}}\nspec:\n  egress:\n  - {{action: Deny, protocol: 17}}\n  - {{action: Allow, notProtocol: tcp}}\n"
    ));
    let w = world();
    let web = &w[0];
    assert_eq!(set.policies[0].types, vec![Egress], "egress rules only: an Egress policy");
    assert_eq!(verdict(&set, &w, web, Egress, Packet::udp(ip("10.0.0.1"), 1, ip("10.0.0.2"), 53)), Deny);
    assert_eq!(verdict(&set, &w, web, Egress, Packet::icmp(ip("10.0.0.1"), ip("10.0.0.2"), 8, 0)), Allow);
    assert_eq!(verdict(&set, &w, web, Egress, tcp("10.0.0.1", "10.0.0.2", 1)), Deny);
    assert_eq!(verdict(&set, &w, web, Ingress, tcp("10.0.0.2", "10.0.0.1", 1)), Allow);
}

#[test]
fn selector_operators_follow_calicos_reference() {
    use policy::Selector;
    let l: BTreeMap<String, String> = [("app", "web"), ("tier", "frontend")].map(|(k, v)| (k.into(), v.into())).into();
    let m = |s: &str| Selector::parse(s).unwrap_or_else(|e| panic!("{e}")).matches(&l);
    assert!(m("app == 'web'") && m("app == \"web\"") && !m("app == 'db'"));
    assert!(m("app != 'db'") && !m("app != 'web'") && m("missing != 'x'"), "!= matches an absent label");
    assert!(m("app in {'db', 'web'}") && !m("missing in {'x'}"));
    assert!(m("app not in {'db'}") && m("missing not in {'x'}") && !m("app not in {'web'}"));
    assert!(m("has(app)") && !m("has(missing)") && m("!has(missing)"));
    assert!(m("all()") && m("") && !m("global()"));
    assert!(m("app == 'db' || tier == 'frontend'") && !m("app == 'db' && tier == 'frontend'"));
    assert!(m("!(app == 'db') && (tier starts with 'front' || x == 'y')"));
    assert!(m("tier contains 'ont' && tier ends with 'end'"));
    assert!(!m("!app == 'web'"), "! binds to the comparison");
    assert!(m("app == 'db' && tier == 'x' || has(app)"), "&& binds tighter than ||");
}

#[test]
fn selector_errors_give_the_column() {
    use policy::Selector;
    for (s, column, words) in [
        ("app = 'web'", 5, "operator"),
        ("app == web", 8, "string"),
        ("app == 'web", 8, "not closed"),
        ("has(app", 8, "`)`"),
        ("(app == 'x'", 12, "`)`"),
        ("app in {'a' 'b'}", 13, "`,` or `}`"),
        ("app == 'x' &&", 14, "end"),
        ("a == 'b' c", 10, "after the expression"),
        ("foo(x)", 1, "unknown function"),
        ("app not 'x'", 9, "`in`"),
    ] {
        let e = Selector::parse(s).unwrap_err();
        assert_eq!(e.column, column, "{s}: {e}");
        assert!(e.message.contains(words), "{s}: {e}");
    }
}

#[test]
fn kubernetes_policies_sit_at_order_1000_of_the_default_tier_among_calico_ones() {
    let calico = |name: &str, order: u32, action: &str| {
        format!(
            "{GNP_HEAD}metadata: {{name: {name}}}\nspec:\n  order: {order}\n  selector: app == 'db'\n  ingress: [{{action: {action}, protocol: TCP, destination: {{ports: [5432, 6000]}}}}]\n"
        )
    };
    let w = world();
    let db = &w[1];
    let web_5432 = || tcp("10.0.0.1", "10.0.0.2", 5432);
    let web_6000 = || tcp("10.0.0.1", "10.0.0.2", 6000);
    // A Calico Deny before 1000 wins over the Kubernetes allow.
    let set = policies(&format!("{}---{K8S_DB_FROM_WEB}", calico("early", 999, "Deny")));
    assert_eq!(verdict(&set, &w, db, Ingress, web_5432()), Deny);
    // After 1000, the Kubernetes allow comes first; and what no policy of the tier decided
    // so far can still be allowed by a later policy: the deny is the tier's end, not the
    // Kubernetes policy's.
    let set = policies(&format!("{}---{K8S_DB_FROM_WEB}", calico("late", 1001, "Allow")));
    assert_eq!(verdict(&set, &w, db, Ingress, web_5432()), Allow);
    assert_eq!(verdict(&set, &w, db, Ingress, web_6000()), Allow);
    assert_eq!(verdict(&set, &w, db, Ingress, tcp("10.0.0.1", "10.0.0.2", 7000)), Deny);
    let set = policies(&format!("{}---{K8S_DB_FROM_WEB}", calico("late", 1001, "Deny")));
    assert_eq!(verdict(&set, &w, db, Ingress, web_5432()), Allow);
    assert_eq!(verdict(&set, &w, db, Ingress, web_6000()), Deny);
}

#[test]
fn ipv6_neighbour_discovery_is_allowed_whatever_the_policy() {
    let set = policies(K8S_DB_FROM_WEB);
    let w = world();
    let db = &w[1];
    let icmp6 = |t| verdict(&set, &w, db, Ingress, Packet::icmp(ip("fd00::1"), ip("fd00::2"), t, 0));
    assert_eq!([icmp6(128), icmp6(133), icmp6(135), icmp6(136), icmp6(137)], [Deny, Allow, Allow, Allow, Deny]);
}

#[test]
fn kubernetes_empty_selectors_mean_all_pods_of_the_namespace_or_of_every_namespace() {
    // podSelector {} alone: every pod of the policy's namespace; namespaceSelector {} alone:
    // every pod of every namespace; no `from` at all: any source, endpoint or not.
    let k8s = |ingress: &str| {
        policies(&format!(
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: k, namespace: prod}}\n\
             spec:\n  podSelector: {{matchLabels: {{app: db}}}}\n  ingress: [{ingress}]\n"
        ))
    };
    let w = world();
    let db = &w[1];
    let from = |set: &PolicySet| {
        ["10.0.0.1", "10.0.1.1", "192.0.2.1"].map(|src| verdict(set, &w, db, Ingress, tcp(src, "10.0.0.2", 1)))
    };
    assert_eq!(from(&k8s("{from: [{podSelector: {}}]}")), [Allow, Deny, Deny]);
    assert_eq!(from(&k8s("{from: [{namespaceSelector: {}}]}")), [Allow, Allow, Deny]);
    assert_eq!(from(&k8s("{}")), [Allow, Allow, Allow]);
    assert_eq!(from(&k8s("")), [Deny, Deny, Deny], "ingress: [] selects and allows nothing");
}
