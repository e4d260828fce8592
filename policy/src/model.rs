//! The normalized policy model. Calico `NetworkPolicy` / `GlobalNetworkPolicy` and Kubernetes
//! `NetworkPolicy` files all become [`Policy`] values (see `file.rs` for the mapping), so the
//! evaluator and the nftables compiler see one shape.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;

use crate::selector::{Labels, Selector};

/// What a matching rule does. `Log` records the packet and goes on to the next rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Action {
    Allow,
    Deny,
    Log,
    Pass,
}

/// Direction as seen by an endpoint: `Ingress` is traffic to it, `Egress` traffic from it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Direction {
    Ingress,
    Egress,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum IpVersion {
    V4,
    V6,
}

impl IpVersion {
    pub fn of(addr: &IpAddr) -> IpVersion {
        if addr.is_ipv4() {
            IpVersion::V4
        } else {
            IpVersion::V6
        }
    }
}

/// IP protocol numbers of the names the formats accept.
pub mod proto {
    /// The numbers the compiled rules match on, from the one place that encodes them.
    pub use linux_net::nft::proto::{ICMP, ICMPV6, SCTP, TCP, UDP};
    pub const UDPLITE: u8 = 136;

    /// Whether ports can be matched for this protocol.
    pub fn has_ports(p: u8) -> bool {
        matches!(p, TCP | UDP | SCTP | UDPLITE)
    }
}

/// An inclusive port range; a single port is `first == last`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PortRange {
    pub first: u16,
    pub last: u16,
}

impl PortRange {
    pub fn contains(&self, port: u16) -> bool {
        self.first <= port && port <= self.last
    }
}

/// ICMP type, and code when given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IcmpMatch {
    pub icmp_type: u8,
    pub code: Option<u8>,
}

/// Which namespaces a rule's endpoint selector looks in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceMatch {
    /// Every namespace (GlobalNetworkPolicy rules without `namespaceSelector`).
    Any,
    /// The policy's own namespace (namespaced policies without `namespaceSelector`).
    Named(String),
    /// Namespaces whose labels match.
    Selector(Selector),
}

/// Endpoints (their addresses) picked by labels within namespaces.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSelector {
    pub namespaces: NamespaceMatch,
    pub labels: Selector,
}

/// The source or the destination part of a rule. Every field given must match (empty lists
/// and `None` match anything); the `not_*` fields match when the packet is *not* in them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct EntityMatch {
    pub nets: Vec<IpNetwork>,
    pub not_nets: Vec<IpNetwork>,
    /// The address belongs to an endpoint selected here.
    pub endpoints: Option<EndpointSelector>,
    /// The address does not belong to an endpoint selected here.
    pub not_endpoints: Option<EndpointSelector>,
    pub ports: Vec<PortRange>,
    pub not_ports: Vec<PortRange>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub action: Action,
    pub ip_version: Option<IpVersion>,
    pub protocol: Option<u8>,
    pub not_protocol: Option<u8>,
    pub icmp: Option<IcmpMatch>,
    pub not_icmp: Option<IcmpMatch>,
    pub source: EntityMatch,
    pub destination: EntityMatch,
}

impl Rule {
    /// A rule that matches every packet.
    pub fn any(action: Action) -> Rule {
        Rule {
            action,
            ip_version: None,
            protocol: None,
            not_protocol: None,
            icmp: None,
            not_icmp: None,
            source: EntityMatch::default(),
            destination: EntityMatch::default(),
        }
    }
}

/// Which format a policy came from (for messages and `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PolicyKind {
    CalicoNetworkPolicy,
    CalicoGlobalNetworkPolicy,
    KubernetesNetworkPolicy,
}

/// The tier Kubernetes policies and Calico policies without `tier` live in.
pub const DEFAULT_TIER: &str = "default";
/// Order of the default tier when no `Tier` document sets one (Calico's value).
pub const DEFAULT_TIER_ORDER: f64 = 1_000_000.0;
/// Order Calico gives Kubernetes NetworkPolicies within the default tier.
pub const K8S_POLICY_ORDER: f64 = 1000.0;

/// Where a policy was read: its file and the line of its `name:`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub file: std::path::PathBuf,
    pub line: usize,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub origin: Origin,
    pub kind: PolicyKind,
    pub name: String,
    /// `Some` for namespaced policies: they select only endpoints of this namespace.
    pub namespace: Option<String>,
    pub tier: String,
    /// Lower first; `None` after every ordered policy.
    pub order: Option<f64>,
    /// Which endpoints the policy applies to (labels).
    pub selector: Selector,
    /// GlobalNetworkPolicy: and only those in namespaces whose labels match.
    pub namespace_selector: Option<Selector>,
    /// The directions the policy applies in (selected endpoints are default-deny there).
    pub types: Vec<Direction>,
    pub ingress: Vec<Rule>,
    pub egress: Vec<Rule>,
}

impl Policy {
    pub fn rules(&self, dir: Direction) -> &[Rule] {
        match dir {
            Direction::Ingress => &self.ingress,
            Direction::Egress => &self.egress,
        }
    }
}

/// What a tier does with a packet that no policy of the tier decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TierDefault {
    Deny,
    Pass,
}

#[derive(Debug, Clone, PartialEq)]
pub struct Tier {
    pub name: String,
    /// Lower first; `None` after every ordered tier.
    pub order: Option<f64>,
    pub default_action: TierDefault,
}

/// Everything the policy files say.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PolicySet {
    pub policies: Vec<Policy>,
    /// Tiers declared by `Tier` documents; the default tier exists without one.
    pub tiers: Vec<Tier>,
    /// Extra namespace labels from `Namespace` documents.
    pub namespace_labels: BTreeMap<String, Labels>,
}

impl PolicySet {
    /// The tier named `name`: declared, or the built-in default tier, or (for a policy naming
    /// a tier no file declares) a tier of no order with the default action Deny.
    pub fn tier(&self, name: &str) -> Tier {
        if let Some(t) = self.tiers.iter().find(|t| t.name == name) {
            return t.clone();
        }
        Tier {
            name: name.to_string(),
            order: (name == DEFAULT_TIER).then_some(DEFAULT_TIER_ORDER),
            default_action: TierDefault::Deny,
        }
    }

    /// A namespace's labels: the two Kubernetes and Calico give every namespace
    /// (`kubernetes.io/metadata.name`, `projectcalico.org/name`), plus those of its
    /// `Namespace` document.
    pub fn namespace_labels(&self, ns: &str) -> Labels {
        let mut l = self.namespace_labels.get(ns).cloned().unwrap_or_default();
        l.insert("kubernetes.io/metadata.name".into(), ns.into());
        l.insert("projectcalico.org/name".into(), ns.into());
        l
    }

    /// Adds what another file said (policies and tiers in file order).
    pub fn extend(&mut self, other: PolicySet) {
        self.policies.extend(other.policies);
        self.tiers.extend(other.tiers);
        self.namespace_labels.extend(other.namespace_labels);
    }
}

/// A container interface that policies protect.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Endpoint {
    /// The registry key: `<containerID>/<ifname>` (CNI's identity of an attachment).
    pub name: String,
    pub namespace: String,
    pub labels: Labels,
    pub addrs: Vec<IpAddr>,
    /// The host side of the endpoint's interface (a veth peer), for anti-spoofing: a packet
    /// entering the host from it must carry one of `addrs`. `None`: no anti-spoofing.
    pub host_ifname: Option<String>,
    /// `host_ifname` is a bridge port (anti-spoofing in the bridge family), not a routed
    /// interface (anti-spoofing in inet prerouting).
    pub bridged: bool,
    /// `Some(node)`: an endpoint of another host (shared through etcd). It only puts its
    /// addresses in the selector sets of this host's rules: no policy applies to it here, it
    /// has no chains, no dispatch entry and no anti-spoofing. The caller gives a remote
    /// endpoint none of a local endpoint's addresses ([`local_first`]: the local one wins).
    /// `None`: an endpoint of this host.
    pub remote: Option<String>,
}

/// `endpoints` with, when some are remote, every remote endpoint's addresses that a local
/// endpoint also has removed (the local registry is the truth about this host's addresses; a
/// remote record naming one is stale or wrong). `None` when there is no remote endpoint: use
/// `endpoints` as they are.
pub fn local_first(endpoints: &[Endpoint]) -> Option<Vec<Endpoint>> {
    if endpoints.iter().all(|e| e.remote.is_none()) {
        return None;
    }
    let local: std::collections::BTreeSet<IpAddr> =
        endpoints.iter().filter(|e| e.remote.is_none()).flat_map(|e| e.addrs.iter().copied()).collect();
    Some(
        endpoints
            .iter()
            .map(|e| match e.remote {
                None => e.clone(),
                Some(_) => {
                    Endpoint { addrs: e.addrs.iter().filter(|a| !local.contains(a)).copied().collect(), ..e.clone() }
                }
            })
            .collect(),
    )
}

impl Endpoint {
    /// Its labels as selectors see them: its own, plus `projectcalico.org/namespace` (which
    /// Calico sets on every workload endpoint).
    pub fn selector_labels(&self) -> Labels {
        let mut l = self.labels.clone();
        l.insert("projectcalico.org/namespace".into(), self.namespace.clone());
        l
    }
}
