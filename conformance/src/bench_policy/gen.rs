//! The workload of `conformance bench policy`: a policy set of about `rules` rules in Calico
//! YAML (parsed by the real parser, so the bench measures what a user's files give) and
//! `endpoints` endpoints over ten label profiles.
//!
//! Shape: `rules / 10` policies of about ten rules each, a third of them
//! `GlobalNetworkPolicy`, the rest namespaced `NetworkPolicy`; each selects one label profile
//! (a few select every profile of one `role`), applies in both directions, and holds
//! TCP/UDP rules with endpoint selectors, nets (one to three /24s), `notNets`, `notSelector`,
//! port lists and ranges, `notPorts`; about 8 % of the rules Deny and 4 % Pass.
//!
//! Two of the endpoints carry the measured traffic: the client (egress) and the server
//! (ingress). No generated rule can match their traffic (every port list avoids 5000–6999 and
//! every rule without ports needs a source or destination in 172.16.0.0/12), so a new
//! connection between them walks every rule of both endpoints' policies before the two
//! `bench-allow-*` policies (ordered last) allow TCP to [`IPERF_PORT`] and [`CONNECT_PORT`]:
//! the worst case for a linear ruleset, and [`DENIED_PORT`] ends at the tier's default deny.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use policy::{Endpoint, PolicySet};
use testkit::util::R;

pub const IPERF_PORT: u16 = 5201;
pub const CONNECT_PORT: u16 = 6000;
pub const DENIED_PORT: u16 = 6001;
/// Label profiles endpoints are spread over.
pub const PROFILES: usize = 10;
const NAMESPACES: usize = 5;
const ROLES: [&str; 3] = ["frontend", "backend", "db"];
/// Where the endpoints' addresses are (inside the bench's own network namespaces).
pub const ENDPOINT_NET: Ipv4Addr = Ipv4Addr::new(10, 200, 0, 0);
pub const ENDPOINT_PREFIX: u8 = 16;
pub const MAX_ENDPOINTS: usize = 60_000;

/// A small deterministic generator (xorshift64*): the same sizes give the same workload.
use testkit::rng::{Draw as _, XorShift64Star as Rng};

pub struct Workload {
    /// The policy files' text (one YAML stream).
    pub yaml: String,
    pub set: PolicySet,
    pub endpoints: Vec<Endpoint>,
    /// Indexes into `endpoints` of the traffic's client and server.
    pub client: usize,
    pub server: usize,
    /// Rules in the files (the two `bench-allow-*` rules included).
    pub rules: usize,
}

pub fn profile_of(i: usize) -> usize {
    i % PROFILES
}

fn namespace_of(profile: usize) -> String {
    format!("bench-ns{}", profile % NAMESPACES)
}

/// Endpoint `i`'s address: the `i + 2`-th of 10.200.0.0/16.
pub fn addr_of(i: usize) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(ENDPOINT_NET) + i as u32 + 2)
}

/// Endpoint `i` (the bench's endpoint add uses `i == endpoints`): a bridge port as host
/// interface, `host_ifname` for the two that carry traffic, a name of no interface in the
/// node namespace for the others (as a node with that many pods would have).
pub fn endpoint(i: usize, host_ifname: Option<&str>) -> Endpoint {
    let p = profile_of(i);
    let labels = BTreeMap::from([
        ("app".to_string(), format!("app{p}")),
        ("role".to_string(), ROLES[p % ROLES.len()].to_string()),
        ("pod".to_string(), format!("pod{i}")),
    ]);
    Endpoint {
        host_ifname: Some(host_ifname.map_or_else(|| format!("bpe{i:05x}"), str::to_string)),
        bridged: true,
        name: format!("bench{i:05}/eth0"),
        namespace: namespace_of(p),
        labels,
        addrs: vec![IpAddr::V4(addr_of(i))],
        remote: None,
    }
}

fn net(rng: &mut Rng) -> String {
    format!("172.{}.{}.0/24", 16 + rng.below(16), rng.below(256))
}

/// 1–4 port entries (numbers and ranges) outside 5000–6999.
fn ports(rng: &mut Rng) -> String {
    let n = 1 + rng.below(4);
    let mut v = Vec::new();
    for _ in 0..n {
        let base = if rng.chance(50) { 1000 + rng.below(3900) } else { 7000 + rng.below(2900) };
        if rng.chance(30) {
            v.push(format!("\"{base}:{}\"", base + 1 + rng.below(50)));
        } else {
            v.push(base.to_string());
        }
    }
    format!("[{}]", v.join(", "))
}

/// One rule's YAML (a list item, indented for `ingress:`/`egress:`). `peer` is the remote
/// side (`source` for ingress, `destination` for egress); ports are always the destination's.
fn rule(rng: &mut Rng, ingress: bool, out: &mut String) {
    let action = match rng.below(100) {
        0..=7 => "Deny",
        8..=11 => "Pass",
        _ => "Allow",
    };
    let protocol = if rng.chance(70) { "TCP" } else { "UDP" };
    let _ = writeln!(out, "  - action: {action}\n    protocol: {protocol}");
    let sel = |rng: &mut Rng| format!("app == 'app{}'", rng.below(PROFILES));
    let mut peer_lines = String::new();
    let mut dst_ports = None;
    let mut dst_not_ports = None;
    match rng.below(100) {
        // A selector and ports.
        0..=39 => {
            let _ = writeln!(peer_lines, "      selector: {}", sel(rng));
            dst_ports = Some(ports(rng));
        }
        // Nets and ports.
        40..=69 => {
            let nets: Vec<String> = (0..1 + rng.below(3)).map(|_| net(rng)).collect();
            let _ = writeln!(peer_lines, "      nets: [{}]", nets.join(", "));
            dst_ports = Some(ports(rng));
        }
        // Nets less one of them, and notPorts.
        70..=84 => {
            let a = net(rng);
            let b = net(rng);
            let _ = writeln!(peer_lines, "      nets: [{a}, {b}]\n      notNets: [{b}]");
            dst_not_ports = Some(ports(rng));
        }
        // Nets, a notSelector, and ports.
        _ => {
            let _ = writeln!(peer_lines, "      nets: [{}]\n      notSelector: {}", net(rng), sel(rng));
            dst_ports = Some(ports(rng));
        }
    }
    let mut dst_lines = String::new();
    if let Some(p) = dst_ports {
        let _ = writeln!(dst_lines, "      ports: {p}");
    }
    if let Some(p) = dst_not_ports {
        let _ = writeln!(dst_lines, "      notPorts: {p}");
    }
    if ingress {
        let _ = write!(out, "    source:\n{peer_lines}    destination:\n{dst_lines}");
    } else {
        let _ = write!(out, "    destination:\n{peer_lines}{dst_lines}");
    }
}

/// The policy files' text for `rules` rules (at least 1).
fn policies_yaml(rules: usize, client_profile: usize, server_profile: usize) -> String {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ rules as u64);
    let n = rules.div_ceil(10).max(1);
    let mut out = String::new();
    for j in 0..n {
        let count = rules / n + usize::from(j < rules % n);
        let p = j % PROFILES;
        let global = j % 3 == 0;
        let selector = match j % 10 {
            7 => format!("app == 'app{p}' && has(role)"),
            8 => format!("app in {{'app{p}'}} && role != 'none'"),
            9 => format!("role == '{}'", ROLES[p % ROLES.len()]),
            _ => format!("app == 'app{p}'"),
        };
        let kind = if global { "GlobalNetworkPolicy" } else { "NetworkPolicy" };
        let _ = writeln!(out, "---\napiVersion: projectcalico.org/v3\nkind: {kind}\nmetadata:\n  name: bench-p{j:04}");
        if !global {
            let _ = writeln!(out, "  namespace: {}", namespace_of(p));
        }
        let _ = writeln!(out, "spec:\n  order: {}\n  selector: {selector}\n  types: [Ingress, Egress]", j + 1);
        let (mut ing, mut eg) = (String::new(), String::new());
        for r in 0..count {
            if r % 2 == 0 {
                rule(&mut rng, true, &mut ing);
            } else {
                rule(&mut rng, false, &mut eg);
            }
        }
        if !ing.is_empty() {
            let _ = write!(out, "  ingress:\n{ing}");
        }
        if !eg.is_empty() {
            let _ = write!(out, "  egress:\n{eg}");
        }
    }
    let _ = write!(
        out,
        "---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: bench-allow-ingress
spec:
  order: 100000
  selector: app == 'app{server_profile}'
  types: [Ingress]
  ingress:
  - action: Allow
    protocol: TCP
    source:
      selector: app == 'app{client_profile}'
    destination:
      ports: [{IPERF_PORT}, {CONNECT_PORT}]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: bench-allow-egress
spec:
  order: 100000
  selector: app == 'app{client_profile}'
  types: [Egress]
  egress:
  - action: Allow
    protocol: TCP
    destination:
      selector: app == 'app{server_profile}'
      ports: [{IPERF_PORT}, {CONNECT_PORT}]
"
    );
    out
}

/// The workload: `endpoints` (at least 2) endpoints, `rules` generated rules.
pub fn generate(endpoints: usize, rules: usize, client_if: &str, server_if: &str) -> R<Workload> {
    testkit::ensure!((2..=MAX_ENDPOINTS).contains(&endpoints), "--endpoints must be in 2..={MAX_ENDPOINTS}");
    testkit::ensure!(rules >= 1, "--rules must be at least 1");
    let client = endpoints / 2 - 1;
    let server = endpoints / 2;
    let yaml = policies_yaml(rules, profile_of(client), profile_of(server));
    let set = policy::parse_str(Path::new("bench-policy.yaml"), &yaml).map_err(|e| format!("generated policy: {e}"))?;
    let eps = (0..endpoints)
        .map(|i| {
            let ifname = if i == client {
                Some(client_if)
            } else if i == server {
                Some(server_if)
            } else {
                None
            };
            endpoint(i, ifname)
        })
        .collect();
    Ok(Workload { yaml, set, endpoints: eps, client, server, rules: rules + 2 })
}

/// A policy edit: the first rule with `nets` of the middle policy (ingress rules first) gets
/// one more destination port, or (if it has none) one more net. A rule with `nets` always
/// makes nft rules; one with only a selector makes none when its selector picks no endpoint
/// (the compiler leaves out what can never match), and editing it would change nothing in the
/// kernel. Without such a rule (a tiny workload), its first rule. Returns the policy's name.
pub fn edit(set: &mut PolicySet) -> R<String> {
    let k = set.policies.iter().filter(|p| p.name.starts_with("bench-p")).count() / 2;
    let p = set.policies.iter_mut().filter(|p| p.name.starts_with("bench-p")).nth(k).ok_or("no policy to edit")?;
    let has_nets = |r: &policy::model::Rule| !r.source.nets.is_empty() || !r.destination.nets.is_empty();
    let i = p.ingress.iter().chain(&p.egress).position(has_nets).unwrap_or(0);
    let n = p.ingress.len();
    let r = if i < n { p.ingress.get_mut(i) } else { p.egress.get_mut(i - n) };
    let r = r.ok_or("the edited policy has no rule")?;
    let d = &mut r.destination;
    if !d.ports.is_empty() {
        d.ports.push(policy::model::PortRange { first: 9999, last: 9999 });
    } else {
        let e = if r.source.nets.is_empty() { &mut r.destination } else { &mut r.source };
        e.nets.push("172.31.255.0/24".parse().map_err(|e| format!("{e}"))?);
    }
    Ok(p.name.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use policy::{evaluate_path, Packet, Verdict};

    #[test]
    fn the_workload_parses_with_its_sizes_and_only_the_bench_ports_pass() {
        let w = generate(100, 200, "a", "b").unwrap();
        assert_eq!(w.endpoints.len(), 100);
        assert_eq!(w.set.policies.len(), 22);
        let n: usize = w.set.policies.iter().map(|p| p.ingress.len() + p.egress.len()).sum();
        assert_eq!(n, w.rules);
        assert!(w.set.policies.iter().any(|p| p.namespace.is_some()));
        let (c, s) = (w.endpoints[w.client].addrs[0], w.endpoints[w.server].addrs[0]);
        let tcp = |port| evaluate_path(&w.set, &w.endpoints, &Packet::tcp(c, 40000, s, port));
        assert_eq!(tcp(IPERF_PORT), Verdict::Allow);
        assert_eq!(tcp(CONNECT_PORT), Verdict::Allow);
        assert_eq!(tcp(DENIED_PORT), Verdict::Deny);
        // Same sizes, same workload.
        assert_eq!(generate(100, 200, "a", "b").unwrap().yaml, w.yaml);
    }

    #[test]
    fn an_edit_changes_one_policy() {
        let w = generate(10, 50, "a", "b").unwrap();
        let mut set = w.set.clone();
        let name = edit(&mut set).unwrap();
        let changed: Vec<_> =
            set.policies.iter().zip(&w.set.policies).filter(|(a, b)| a != b).map(|(a, _)| a.name.clone()).collect();
        assert_eq!(changed, [name]);
    }
}
