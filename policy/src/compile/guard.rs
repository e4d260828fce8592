//! The guard part of the compiled tables: anti-spoofing (a packet entering the host from an
//! endpoint's host interface must carry one of the endpoint's addresses) and the delivery
//! guard (a packet leaving towards the host interface of an endpoint whose ingress is
//! restricted must be addressed to one of its addresses, or be neighbour discovery), in the
//! inet table for routed interfaces and in the bridge table for bridge ports.
//! [`compile`](super::compile) calls [`base`] once and [`add_endpoint`] per endpoint.

use ipnetwork::IpNetwork;
use linux_net::nft::{
    Action as NftAction, BaseChain, ChainPolicy, Dir, Family, Hook, IfDir, IpVersion as Fam, Match, Rule as NftRule,
    SetElem, SetKey, Verdict as NftVerdict,
};

use super::{hash, readable, rule, Builder};
use crate::engine::DispatchKey;
use crate::eval::{NEIGHBOUR_DISCOVERY_EGRESS, NEIGHBOUR_DISCOVERY_INGRESS};
use crate::model::{proto, Endpoint};

/// The inet anti-spoof base chain (routed host interfaces), prerouting priority -150.
pub const SPOOF_CHAIN: &str = "spoof";
/// Priority of the inet `spoof` chain: after conntrack (-200), with mangle, before the
/// filter chains and routing (the contract's value).
pub const SPOOF_PRIORITY: i32 = -150;
/// Priority of the bridge family's `spoof` chain (the bridge `filter` priority).
pub const BRIDGE_SPOOF_PRIORITY: i32 = -200;
/// Interface → anti-spoof chain map, in both tables.
pub const SPOOF_MAP: &str = "spoof-if";
/// The chain, in both tables, a link-local (`fe80::/10`) or unspecified (`::`) source goes
/// to from an anti-spoof chain: neighbour discovery and MLD an endpoint may send return,
/// anything else is dropped.
pub const SPOOF_LINK_LOCAL_CHAIN: &str = "spoof-ll";
/// Base chains (both tables) of the delivery guard: `oifname vmap @deliver-if` on packets
/// leaving towards an endpoint's host interface (forward and output hooks).
pub const DELIVER_CHAINS: [(&str, Hook); 2] = [("deliver-fwd", Hook::Forward), ("deliver-out", Hook::Output)];
/// Priority of the delivery guard's base chains (after the policy's, which are 0 and 1).
pub const DELIVER_PRIORITY: i32 = 10;
/// Interface → delivery guard chain map, in both tables: only endpoints whose ingress is
/// restricted (some policy applies to them in Ingress) have an entry.
pub const DELIVER_MAP: &str = "deliver-if";
/// The chain, in both tables, an ICMPv6 packet not addressed to one of the endpoint's
/// addresses goes to from a delivery guard chain: neighbour discovery and MLD an endpoint may
/// receive return, anything else is dropped.
pub const DELIVER_ND_CHAIN: &str = "deliver-nd";

/// The guard's base chains, maps and shared chains, in both tables (present even with no
/// endpoint, so an endpoint added later only adds its own objects).
pub(super) fn base(inet: &mut Builder, bridge: &mut Builder) {
    for b in [inet, bridge] {
        b.map(SPOOF_MAP, SetKey::IfName);
        let prio = if b.table.family == Family::Bridge { BRIDGE_SPOOF_PRIORITY } else { SPOOF_PRIORITY };
        let dispatch = NftRule {
            action: Some(NftAction::IfNameVmap { dir: IfDir::In, map: SPOOF_MAP.into() }),
            ..NftRule::default()
        };
        b.chain(SPOOF_CHAIN, Some(BaseChain::filter(Hook::Prerouting, prio, ChainPolicy::Accept)), vec![dispatch]);
        b.chain(SPOOF_LINK_LOCAL_CHAIN, None, icmpv6_only(&NEIGHBOUR_DISCOVERY_EGRESS));
        b.map(DELIVER_MAP, SetKey::IfName);
        for (name, hook) in DELIVER_CHAINS {
            let dispatch = NftRule {
                action: Some(NftAction::IfNameVmap { dir: IfDir::Out, map: DELIVER_MAP.into() }),
                ..NftRule::default()
            };
            let base = BaseChain::filter(hook, DELIVER_PRIORITY, ChainPolicy::Accept);
            b.chain(name, Some(base), vec![dispatch]);
        }
        b.chain(DELIVER_ND_CHAIN, None, icmpv6_only(&NEIGHBOUR_DISCOVERY_INGRESS));
    }
}

/// What the guard compiled for one endpoint.
pub(super) struct Guard {
    /// Its anti-spoof chain and the family of its table (`None`: no host interface).
    pub(super) spoof_chain: Option<(Family, String)>,
    /// Its delivery guard chain (`None`: no host interface, or ingress not restricted).
    pub(super) deliver_chain: Option<(Family, String)>,
    /// Every guard chain its traffic can traverse (its own and the shared ones).
    pub(super) chains: Vec<(Family, String)>,
    /// Its entries in the guard's maps, for [`crate::engine::Desired::dispatch_keys`].
    pub(super) keys: Vec<DispatchKey>,
}

/// The guard of endpoint `ep` (bridge table for a bridge port, inet table for a routed
/// interface): its anti-spoof chain when it has a host interface, and its delivery guard
/// chain when its ingress is also restricted (some policy applies to it in Ingress).
pub(super) fn add_endpoint(inet: &mut Builder, bridge: &mut Builder, ep: &Endpoint, ingress_restricted: bool) -> Guard {
    let Some(ifname) = ep.host_ifname.as_deref() else {
        return Guard { spoof_chain: None, deliver_chain: None, chains: Vec::new(), keys: Vec::new() };
    };
    let b = if ep.bridged { bridge } else { inet };
    let family = b.table.family;
    let key = SetElem::IfName(ifname.to_string());
    let dispatch = |map: &str| DispatchKey { table: b.table.clone(), map: map.to_string(), key: key.clone() };
    let mut keys = vec![dispatch(SPOOF_MAP)];
    if ingress_restricted {
        keys.push(dispatch(DELIVER_MAP));
    }
    let spoof = spoof_chain(b, ep, ifname);
    let mut chains = vec![(family, spoof.clone()), (family, SPOOF_LINK_LOCAL_CHAIN.to_string())];
    let deliver = ingress_restricted.then(|| deliver_chain(b, ep, ifname));
    if let Some(d) = &deliver {
        chains.push((family, d.clone()));
        chains.push((family, DELIVER_ND_CHAIN.to_string()));
    }
    Guard { spoof_chain: Some((family, spoof)), deliver_chain: deliver.map(|d| (family, d)), chains, keys }
}

/// The anti-spoof chain of one endpoint in `b`'s table: a link-local (`fe80::/10`) or
/// unspecified (`::`) source goes to [`SPOOF_LINK_LOCAL_CHAIN`] (neighbour discovery and MLD
/// only: nothing else may use an address the dispatch maps do not know), its own addresses
/// return, any other IPv4 or IPv6 packet is dropped. ARP and the rest pass.
fn spoof_chain(b: &mut Builder, ep: &Endpoint, ifname: &str) -> String {
    let name = format!("spoof-{}-{}", readable(ifname, 15), hash(&[&ep.name]));
    let mut rules = Vec::new();
    for net in ["fe80::/10", "::/128"] {
        let net = net.parse().expect("a CIDR");
        let to = NftVerdict::Goto(SPOOF_LINK_LOCAL_CHAIN.into());
        rules.push(rule(vec![Match::AddrInNet { dir: Dir::Src, net, negate: false }], Some(to)));
    }
    for net in own_nets(ep) {
        rules.push(rule(vec![Match::AddrInNet { dir: Dir::Src, net, negate: false }], Some(NftVerdict::Return)));
    }
    for v in [Fam::V4, Fam::V6] {
        rules.push(rule(vec![Match::IpVersion(v)], Some(NftVerdict::Drop)));
    }
    b.chain(&name, None, rules);
    let key = SetElem::IfName(ifname.to_string());
    b.map(SPOOF_MAP, SetKey::IfName).insert(key, NftVerdict::Jump(name.clone()));
    name
}

/// The delivery guard chain of an endpoint whose ingress is restricted, in `b`'s table: a
/// packet leaving towards its host interface addressed to one of its addresses returns (the
/// policy has judged it by that address), an ICMPv6 packet goes to [`DELIVER_ND_CHAIN`]
/// (neighbour discovery and MLD, often to multicast groups, return), any other IPv4 or IPv6
/// packet (broadcast, multicast, an address the dispatch maps do not know) is dropped.
fn deliver_chain(b: &mut Builder, ep: &Endpoint, ifname: &str) -> String {
    let name = format!("deliver-{}-{}", readable(ifname, 15), hash(&[&ep.name]));
    let mut rules = Vec::new();
    for net in own_nets(ep) {
        rules.push(rule(vec![Match::AddrInNet { dir: Dir::Dst, net, negate: false }], Some(NftVerdict::Return)));
    }
    let icmpv6 = vec![Match::IpVersion(Fam::V6), Match::L4Proto { proto: proto::ICMPV6, negate: false }];
    rules.push(rule(icmpv6, Some(NftVerdict::Goto(DELIVER_ND_CHAIN.into()))));
    for v in [Fam::V4, Fam::V6] {
        rules.push(rule(vec![Match::IpVersion(v)], Some(NftVerdict::Drop)));
    }
    b.chain(&name, None, rules);
    let key = SetElem::IfName(ifname.to_string());
    b.map(DELIVER_MAP, SetKey::IfName).insert(key, NftVerdict::Jump(name.clone()));
    name
}

/// An endpoint's addresses as host prefixes, sorted, without duplicates.
fn own_nets(ep: &Endpoint) -> Vec<IpNetwork> {
    let mut nets: Vec<IpNetwork> = ep.addrs.iter().map(|a| IpNetwork::from(*a)).collect();
    nets.sort();
    nets.dedup();
    nets
}

/// A chain that returns for ICMPv6 packets of the given types and drops everything else.
fn icmpv6_only(types: &[u8]) -> Vec<NftRule> {
    let mut rules: Vec<NftRule> = types
        .iter()
        .map(|&t| {
            let icmp = Match::Icmp { version: Fam::V6, icmp_type: t, code: None, negate: false };
            rule(vec![icmp], Some(NftVerdict::Return))
        })
        .collect();
    rules.push(rule(Vec::new(), Some(NftVerdict::Drop)));
    rules
}
