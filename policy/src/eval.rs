//! The reference evaluator: the verdict for the first packet of a connection, computed
//! straight from the specifications' words, with no compilation step. The differential test
//! compares the kernel's behaviour against this, so it favours being obviously right over
//! being fast. Replies of an allowed connection are the kernel's conntrack's business and are
//! not modelled here.
//!
//! For one endpoint and one direction (Calico's "how policy is evaluated"):
//! 1. The policies that apply: their `types` hold the direction, their `selector` (and a
//!    namespaced policy's namespace, a global one's `namespaceSelector`) match the endpoint.
//!    None apply: the endpoint's profile decides, and it allows (as the namespace profiles
//!    Calico gives every Kubernetes pod do). IPv6 neighbour discovery and MLD are allowed
//!    before any policy, as ARP is ([`neighbour_discovery`]: an endpoint may solicit but not
//!    advertise routers, nor send redirects).
//! 2. Tiers holding such policies, by tier order; within a tier, policies by order (then by
//!    name); within a policy, its rules of that direction in file order. The first rule that
//!    matches with Allow or Deny decides; Log records and goes on; Pass leaves the tier.
//! 3. A tier whose policies decided nothing ends with its default action: Deny (so an
//!    endpoint selected in a direction is default-deny there), or Pass.
//! 4. Passing out of the last tier goes to the profile: Allow.
//!
//! Kubernetes policies are policies of the default tier, with order 1000 and only Allow rules,
//! so they add up: any one allowing is enough, and selecting is enough to deny the rest.

use std::net::IpAddr;

use crate::model::{
    proto, Action, Direction, Endpoint, EndpointSelector, EntityMatch, IcmpMatch, IpVersion, NamespaceMatch, Policy,
    PolicyKind, PolicySet, Rule, TierDefault,
};

/// The first packet of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub src: IpAddr,
    pub dst: IpAddr,
    /// IP protocol number (6 TCP, 17 UDP, 1 ICMP, 58 ICMPv6, …).
    pub protocol: u8,
    /// For TCP, UDP, SCTP and UDP-Lite.
    pub src_port: Option<u16>,
    pub dst_port: Option<u16>,
    /// ICMP or ICMPv6 type and code.
    pub icmp: Option<(u8, u8)>,
}

impl Packet {
    pub fn tcp(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16) -> Packet {
        Packet { src, dst, protocol: proto::TCP, src_port: Some(src_port), dst_port: Some(dst_port), icmp: None }
    }
    pub fn udp(src: IpAddr, src_port: u16, dst: IpAddr, dst_port: u16) -> Packet {
        Packet { protocol: proto::UDP, ..Packet::tcp(src, src_port, dst, dst_port) }
    }
    /// An ICMP (IPv4) or ICMPv6 (IPv6) message.
    pub fn icmp(src: IpAddr, dst: IpAddr, icmp_type: u8, code: u8) -> Packet {
        let protocol = if src.is_ipv4() { proto::ICMP } else { proto::ICMPV6 };
        Packet { src, dst, protocol, src_port: None, dst_port: None, icmp: Some((icmp_type, code)) }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

/// A rule, by policy name, direction and index in that direction's list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleRef {
    pub policy: String,
    pub direction: Direction,
    pub index: usize,
}

/// The verdict and how it came about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Evaluation {
    pub verdict: Verdict,
    /// The Log rules that matched, in evaluation order.
    pub logged: Vec<RuleRef>,
    /// The Allow or Deny rule that decided; `None` for a tier's end or the profile.
    pub decided_by: Option<RuleRef>,
}

/// Whether `policy` applies to `ep` (ignoring direction).
pub fn selects(set: &PolicySet, policy: &Policy, ep: &Endpoint) -> bool {
    if policy.namespace.as_ref().is_some_and(|ns| *ns != ep.namespace) {
        return false;
    }
    if let Some(nss) = &policy.namespace_selector {
        if !nss.matches(&set.namespace_labels(&ep.namespace)) {
            return false;
        }
    }
    policy.selector.matches(&ep.selector_labels())
}

/// The verdict for `pkt` in direction `dir` as seen by endpoint `ep` (`pkt.dst` is one of its
/// addresses for Ingress, `pkt.src` for Egress). `endpoints` are all endpoints known, for the
/// rules' selectors.
pub fn evaluate(set: &PolicySet, endpoints: &[Endpoint], ep: &Endpoint, dir: Direction, pkt: &Packet) -> Evaluation {
    let mut applying: Vec<&Policy> =
        set.policies.iter().filter(|p| p.types.contains(&dir) && selects(set, p, ep)).collect();
    let mut logged = Vec::new();
    if applying.is_empty() || is_neighbour_discovery(dir, pkt) {
        return Evaluation { verdict: Verdict::Allow, logged, decided_by: None };
    }
    sort_policies(set, &mut applying);
    let mut i = 0;
    while i < applying.len() {
        let tier = applying[i].tier.clone();
        let end = i + applying[i..].iter().take_while(|p| p.tier == tier).count();
        let mut passed = false;
        'tier: for p in &applying[i..end] {
            for (index, rule) in p.rules(dir).iter().enumerate() {
                if !rule_matches(set, endpoints, rule, pkt) {
                    continue;
                }
                let at = RuleRef { policy: p.name.clone(), direction: dir, index };
                match rule.action {
                    Action::Allow => return Evaluation { verdict: Verdict::Allow, logged, decided_by: Some(at) },
                    Action::Deny => return Evaluation { verdict: Verdict::Deny, logged, decided_by: Some(at) },
                    Action::Log => logged.push(at),
                    Action::Pass => {
                        passed = true;
                        break 'tier;
                    }
                }
            }
        }
        if !passed && set.tier(&tier).default_action == TierDefault::Deny {
            return Evaluation { verdict: Verdict::Deny, logged, decided_by: None };
        }
        i = end;
    }
    Evaluation { verdict: Verdict::Allow, logged, decided_by: None }
}

/// ICMPv6 messages an endpoint may *send* whatever its egress policy says: multicast
/// listener query, report and done (130-132), router solicitation (133), neighbour
/// solicitation and advertisement (135, 136) and the MLDv2 report (143). IPv6 does not work
/// without them (they are its ARP); conntrack does not track them, so they never count as a
/// reply. Router advertisements (134) and redirects (137) are not among them: only a router
/// sends those, and a pod is none (Felix allows the same list out of a workload, less 143).
pub const NEIGHBOUR_DISCOVERY_EGRESS: [u8; 7] = [130, 131, 132, 133, 135, 136, 143];

/// ICMPv6 messages an endpoint may *receive* whatever its ingress policy says: MLD (130-132,
/// 143), router advertisements (134, from the host's router), neighbour solicitation and
/// advertisement (135, 136) and redirects (137). Router solicitations (133) are for routers.
pub const NEIGHBOUR_DISCOVERY_INGRESS: [u8; 8] = [130, 131, 132, 134, 135, 136, 137, 143];

/// The neighbour discovery and MLD types allowed before policy in `dir`.
pub fn neighbour_discovery(dir: Direction) -> &'static [u8] {
    match dir {
        Direction::Egress => &NEIGHBOUR_DISCOVERY_EGRESS,
        Direction::Ingress => &NEIGHBOUR_DISCOVERY_INGRESS,
    }
}

/// Whether `pkt` is one of the messages [`neighbour_discovery`] allows in `dir`.
pub fn is_neighbour_discovery(dir: Direction, pkt: &Packet) -> bool {
    pkt.protocol == proto::ICMPV6 && pkt.icmp.is_some_and(|(t, _)| neighbour_discovery(dir).contains(&t))
}

/// Sorts policies into evaluation order: by tier (order, then name), then by policy order,
/// then by `name/namespace/kind` (Felix's `PolKVLess` tie-break, so two policies of one name
/// in different namespaces or kinds still have one order); a missing order sorts last.
pub fn sort_policies(set: &PolicySet, policies: &mut [&Policy]) {
    let key = |o: Option<f64>| o.unwrap_or(f64::INFINITY);
    policies.sort_by(|a, b| {
        let (ta, tb) = (set.tier(&a.tier), set.tier(&b.tier));
        key(ta.order)
            .total_cmp(&key(tb.order))
            .then_with(|| ta.name.cmp(&tb.name))
            .then_with(|| key(a.order).total_cmp(&key(b.order)))
            .then_with(|| tie_break(a).cmp(&tie_break(b)))
    });
}

/// Felix's tie-break string for policies of equal order.
fn tie_break(p: &Policy) -> String {
    let kind = match p.kind {
        PolicyKind::CalicoNetworkPolicy => "NetworkPolicy",
        PolicyKind::CalicoGlobalNetworkPolicy => "GlobalNetworkPolicy",
        PolicyKind::KubernetesNetworkPolicy => "KubernetesNetworkPolicy",
    };
    format!("{}/{}/{}", p.name, p.namespace.as_deref().unwrap_or(""), kind)
}

/// A routed packet between addresses: allowed when the egress of the endpoint owning `src`
/// (if any) and the ingress of the endpoint owning `dst` (if any) both allow it.
pub fn evaluate_path(set: &PolicySet, endpoints: &[Endpoint], pkt: &Packet) -> Verdict {
    let owner = |a: IpAddr| endpoints.iter().find(|e| e.remote.is_none() && e.addrs.contains(&a));
    if let Some(src) = owner(pkt.src) {
        if evaluate(set, endpoints, src, Direction::Egress, pkt).verdict == Verdict::Deny {
            return Verdict::Deny;
        }
    }
    if let Some(dst) = owner(pkt.dst) {
        return evaluate(set, endpoints, dst, Direction::Ingress, pkt).verdict;
    }
    Verdict::Allow
}

/// A packet the network delivers to endpoint `to` although its destination is none of `to`'s
/// addresses: broadcast, multicast, or an address no endpoint has (the link-local addresses
/// the kernel gives every interface). Policy is keyed on addresses, so such a packet cannot be
/// judged by `to`'s rules: when some policy applies to `to` in Ingress it is dropped, except
/// the [`neighbour_discovery`] messages an endpoint may receive; otherwise it is delivered
/// when the sender's egress allows it (as in [`evaluate_path`]). A packet addressed to one of
/// `to`'s addresses is [`evaluate_path`]'s.
pub fn evaluate_delivery(set: &PolicySet, endpoints: &[Endpoint], to: &Endpoint, pkt: &Packet) -> Verdict {
    if to.addrs.contains(&pkt.dst) {
        return evaluate_path(set, endpoints, pkt);
    }
    let owner = endpoints.iter().find(|e| e.remote.is_none() && e.addrs.contains(&pkt.src));
    if let Some(src) = owner {
        if evaluate(set, endpoints, src, Direction::Egress, pkt).verdict == Verdict::Deny {
            return Verdict::Deny;
        }
    }
    let restricted = set.policies.iter().any(|p| p.types.contains(&Direction::Ingress) && selects(set, p, to));
    if restricted && !is_neighbour_discovery(Direction::Ingress, pkt) {
        return Verdict::Deny;
    }
    Verdict::Allow
}

/// Whether every match criterion of `rule` holds for `pkt`.
pub fn rule_matches(set: &PolicySet, endpoints: &[Endpoint], rule: &Rule, pkt: &Packet) -> bool {
    if rule.ip_version.is_some_and(|v| v != IpVersion::of(&pkt.src)) {
        return false;
    }
    if rule.protocol.is_some_and(|p| p != pkt.protocol) || rule.not_protocol == Some(pkt.protocol) {
        return false;
    }
    if rule.icmp.is_some_and(|m| !icmp_matches(m, pkt)) || rule.not_icmp.is_some_and(|m| icmp_matches(m, pkt)) {
        return false;
    }
    entity_matches(set, endpoints, &rule.source, pkt.src, pkt.src_port)
        && entity_matches(set, endpoints, &rule.destination, pkt.dst, pkt.dst_port)
}

fn icmp_matches(m: IcmpMatch, pkt: &Packet) -> bool {
    let is_icmp = pkt.protocol == proto::ICMP || pkt.protocol == proto::ICMPV6;
    match (is_icmp, pkt.icmp) {
        (true, Some((t, c))) => t == m.icmp_type && m.code.is_none_or(|mc| mc == c),
        _ => false,
    }
}

fn entity_matches(set: &PolicySet, endpoints: &[Endpoint], m: &EntityMatch, addr: IpAddr, port: Option<u16>) -> bool {
    if !m.nets.is_empty() && !m.nets.iter().any(|n| n.contains(addr)) {
        return false;
    }
    if m.not_nets.iter().any(|n| n.contains(addr)) {
        return false;
    }
    if m.endpoints.as_ref().is_some_and(|s| !owned_by_selected(set, endpoints, s, addr)) {
        return false;
    }
    if m.not_endpoints.as_ref().is_some_and(|s| owned_by_selected(set, endpoints, s, addr)) {
        return false;
    }
    if !m.ports.is_empty() && !port.is_some_and(|p| m.ports.iter().any(|r| r.contains(p))) {
        return false;
    }
    if !m.not_ports.is_empty() {
        // Ports are only matched for port protocols: a packet without one matches neither.
        match port {
            Some(p) if !m.not_ports.iter().any(|r| r.contains(p)) => {}
            _ => return false,
        }
    }
    true
}

fn owned_by_selected(set: &PolicySet, endpoints: &[Endpoint], sel: &EndpointSelector, addr: IpAddr) -> bool {
    endpoints.iter().any(|e| {
        e.addrs.contains(&addr)
            && match &sel.namespaces {
                NamespaceMatch::Any => true,
                NamespaceMatch::Named(ns) => e.namespace == *ns,
                NamespaceMatch::Selector(s) => s.matches(&set.namespace_labels(&e.namespace)),
            }
            && sel.labels.matches(&e.selector_labels())
    })
}
