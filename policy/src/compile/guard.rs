//! The guard part of the compiled tables: anti-spoofing (a packet entering the host from an
//! endpoint's host interface must carry one of the endpoint's addresses; on a bridge port an
//! ARP packet must give one of them as its sender) and the delivery guard (a packet leaving
//! towards the host interface of an endpoint whose ingress is restricted must be addressed to
//! one of its addresses, or be neighbour discovery), in the inet table for routed interfaces
//! and in the bridge table for bridge ports.
//!
//! Every chain here is shared: what is per endpoint are map entries only, an interface key in
//! `spoof-if` (and `deliver-if`) that jumps to the shared `spoof-check` (`deliver-check`)
//! chain, and one `ifname . address : return` entry per address in `own4` / `own6`, which
//! both checks look up (`iifname . ip saddr`, `oifname . ip daddr`). So an endpoint costs the
//! kernel a few set elements, not chains and rules, and a table holds the same 30-odd guard
//! rules for one endpoint or ten thousand.
//!
//! Where the checks run: in the bridge table, base chains of their own (prerouting for
//! anti-spoofing, forward and output for the delivery guard), each starting with the check's
//! common case, one `ifname . address` lookup that ends the chain for an endpoint's own
//! address; in the inet table, no base chain of the guard's: [`inet_rule`] leads the policy's
//! base chains (`iifname vmap @spoof-if` for egress, `oifname vmap @deliver-if` for ingress,
//! `forward` both), before their `ct state established,related accept`, so
//! every packet meets it and a packet of no routed endpoint pays one lookup, not a hook; and
//! only while that map has an entry (some endpoint has a routed interface there): an empty
//! map's lookup matches nothing, so a bridge-only host does not pay it at all.
//!
//! [`compile`](super::compile) calls [`base`] once and [`add_endpoint`] per endpoint.

use std::net::IpAddr;

use linux_net::nft::{
    Action as NftAction, AddrField, BaseChain, ChainPolicy, Dir, Family, Hook, IfDir, IpVersion as Fam, Match,
    Rule as NftRule, SetElem, SetKey, Verdict as NftVerdict,
};

use super::rule;
use super::Builder;
use crate::engine::DispatchKey;
use crate::eval::{NEIGHBOUR_DISCOVERY_EGRESS, NEIGHBOUR_DISCOVERY_INGRESS};
use crate::model::Direction;
use crate::model::{proto, Endpoint};

/// The bridge table's anti-spoof base chain (bridge ports), hook prerouting.
pub const SPOOF_CHAIN: &str = "spoof";
/// Priority of the bridge family's `spoof` chain (the bridge `filter` priority): before
/// br_netfilter (0) hands the frame to the inet prerouting hook, so a forged packet never
/// reaches conntrack (a forged reset would otherwise move another pod's connection's state).
pub const BRIDGE_SPOOF_PRIORITY: i32 = -200;
/// Interface → `jump spoof-check` map, in both tables: an entry per guarded host interface.
pub const SPOOF_MAP: &str = "spoof-if";
/// The anti-spoof chain every guarded interface's packets go through, in both tables.
pub const SPOOF_CHECK_CHAIN: &str = "spoof-check";
/// The chain, in both tables, a link-local (`fe80::/10`) or unspecified (`::`) source goes
/// to from `spoof-check`: neighbour discovery and MLD an endpoint may send return, anything
/// else is dropped.
pub const SPOOF_LINK_LOCAL_CHAIN: &str = "spoof-ll";
/// The `ifname . ipv4_addr : return` map of every guarded endpoint's IPv4 addresses on its
/// host interface, in both tables (looked up by both checks).
pub const OWN4_MAP: &str = "own4";
/// The same for IPv6 addresses: `ifname . ipv6_addr : return`.
pub const OWN6_MAP: &str = "own6";
/// The bridge table's base chains of the delivery guard: `oifname vmap @deliver-if` on
/// frames leaving towards a bridge port (forward and output hooks).
pub const DELIVER_CHAINS: [(&str, Hook); 2] = [("deliver-fwd", Hook::Forward), ("deliver-out", Hook::Output)];
/// Priority of the bridge table's delivery guard chains.
pub const DELIVER_PRIORITY: i32 = 10;
/// Interface → `jump deliver-check` map, in both tables: only endpoints whose ingress is
/// restricted (some policy applies to them in Ingress) have an entry.
pub const DELIVER_MAP: &str = "deliver-if";
/// The delivery guard chain every restricted endpoint's interface goes through.
pub const DELIVER_CHECK_CHAIN: &str = "deliver-check";
/// The chain, in both tables, an ICMPv6 packet not addressed to one of the endpoint's
/// addresses goes to from `deliver-check`: neighbour discovery and MLD an endpoint may
/// receive return, anything else is dropped.
pub const DELIVER_ND_CHAIN: &str = "deliver-nd";

fn own_map(v: Fam) -> &'static str {
    match v {
        Fam::V4 => OWN4_MAP,
        Fam::V6 => OWN6_MAP,
    }
}

/// `iifname . ip saddr vmap @own4` and the like: returns for an endpoint's own address on
/// its own interface.
fn own_lookup(iface: IfDir, addr: AddrField) -> NftRule {
    let map = match addr {
        AddrField::Ip { version, .. } => own_map(version),
        AddrField::ArpSender => OWN4_MAP,
    };
    NftRule { action: Some(NftAction::IfAddrVmap { iface, addr, map: map.into() }), ..NftRule::default() }
}

/// `spoof-check`: the endpoint's own IPv4 source returns; a link-local or unspecified IPv6
/// source goes to `spoof-ll`; its own IPv6 source returns; any other IPv4 or IPv6 packet is
/// dropped. In the bridge table also ARP: the sender address (`arp saddr ip`) must be one of
/// the endpoint's IPv4 addresses, or 0.0.0.0 (a probe, RFC 5227, which no neighbour cache
/// learns from); any other ARP packet is dropped. Other protocols pass.
fn spoof_check(family: Family) -> Vec<NftRule> {
    let mut rules = vec![own_lookup(IfDir::In, AddrField::Ip { version: Fam::V4, dir: Dir::Src })];
    for net in ["fe80::/10", "::/128"] {
        let net = net.parse().expect("a CIDR");
        let to = NftVerdict::Goto(SPOOF_LINK_LOCAL_CHAIN.into());
        rules.push(rule(vec![Match::AddrInNet { dir: Dir::Src, net, negate: false }], Some(to)));
    }
    rules.push(own_lookup(IfDir::In, AddrField::Ip { version: Fam::V6, dir: Dir::Src }));
    for v in [Fam::V4, Fam::V6] {
        rules.push(rule(vec![Match::IpVersion(v)], Some(NftVerdict::Drop)));
    }
    if family == Family::Bridge {
        rules.push(own_lookup(IfDir::In, AddrField::ArpSender));
        let probe = Match::ArpSenderIp { addr: std::net::Ipv4Addr::UNSPECIFIED, negate: false };
        rules.push(rule(vec![probe], Some(NftVerdict::Return)));
        rules.push(rule(vec![Match::Arp], Some(NftVerdict::Drop)));
    }
    rules
}

/// `deliver-check`: a packet addressed to one of the endpoint's addresses returns (the
/// policy has judged it by that address), ICMPv6 goes to `deliver-nd` (neighbour discovery
/// and MLD, often to multicast groups, return), any other IPv4 or IPv6 packet (broadcast,
/// multicast, an address the dispatch maps do not know) is dropped.
fn deliver_check() -> Vec<NftRule> {
    let mut rules = vec![
        own_lookup(IfDir::Out, AddrField::Ip { version: Fam::V4, dir: Dir::Dst }),
        own_lookup(IfDir::Out, AddrField::Ip { version: Fam::V6, dir: Dir::Dst }),
    ];
    let icmpv6 = vec![Match::IpVersion(Fam::V6), Match::L4Proto { proto: proto::ICMPV6, negate: false }];
    rules.push(rule(icmpv6, Some(NftVerdict::Goto(DELIVER_ND_CHAIN.into()))));
    for v in [Fam::V4, Fam::V6] {
        rules.push(rule(vec![Match::IpVersion(v)], Some(NftVerdict::Drop)));
    }
    rules
}

/// The guard's rule in a base chain of the inet table's policy: `iifname vmap @spoof-if`
/// (anti-spoofing of routed interfaces) for the egress direction, `oifname vmap @deliver-if`
/// (their delivery guard) for ingress. Its verdicts jump to the shared check chain, which
/// returns (the base chain goes on) or drops. Rendered only while the map has an entry
/// ([`super::base_chains`]).
pub(super) fn inet_rule(dir: Direction) -> NftRule {
    let (iface, map) = match dir {
        Direction::Egress => (IfDir::In, SPOOF_MAP),
        Direction::Ingress => (IfDir::Out, DELIVER_MAP),
    };
    NftRule { action: Some(NftAction::IfNameVmap { dir: iface, map: map.into() }), ..NftRule::default() }
}

/// A bridge base chain of the guard: first the check's common case, the packet's address
/// (source on the way in, destination on the way out) among the port's own (`return` in a
/// base chain ends it with its policy, accept: what `spoof-check` / `deliver-check` would
/// give, with one lookup where the full check takes two and a jump), then the interface's
/// entry into the full check.
fn bridge_base_rules(iface: IfDir) -> Vec<NftRule> {
    let (dir, map) = match iface {
        IfDir::In => (Dir::Src, SPOOF_MAP),
        IfDir::Out => (Dir::Dst, DELIVER_MAP),
    };
    let mut rules = vec![own_lookup(iface, AddrField::Ip { version: Fam::V4, dir })];
    let mut v6 = own_lookup(iface, AddrField::Ip { version: Fam::V6, dir });
    if iface == IfDir::In {
        // `spoof-check` sends a link-local or unspecified source to `spoof-ll` before it
        // looks at `own6`: the fast path leaves those to it.
        v6.matches = ["fe80::/10", "::/128"]
            .iter()
            .map(|n| Match::AddrInNet { dir: Dir::Src, net: n.parse().expect("a CIDR"), negate: true })
            .collect();
    }
    rules.push(v6);
    rules.push(NftRule { action: Some(NftAction::IfNameVmap { dir: iface, map: map.into() }), ..NftRule::default() });
    rules
}

/// The guard's maps and shared chains, in both tables, and its base chains in the bridge
/// table (present even with no endpoint, so an endpoint added later only adds map entries).
pub(super) fn base(inet: &mut Builder, bridge: &mut Builder) {
    for b in [inet, bridge] {
        let family = b.table.family;
        b.map(SPOOF_MAP, SetKey::IfName);
        b.map(OWN4_MAP, SetKey::IfNameIpv4);
        b.map(OWN6_MAP, SetKey::IfNameIpv6);
        b.chain(SPOOF_CHECK_CHAIN, None, spoof_check(family));
        b.chain(SPOOF_LINK_LOCAL_CHAIN, None, icmpv6_only(&NEIGHBOUR_DISCOVERY_EGRESS));
        b.map(DELIVER_MAP, SetKey::IfName);
        b.chain(DELIVER_CHECK_CHAIN, None, deliver_check());
        b.chain(DELIVER_ND_CHAIN, None, icmpv6_only(&NEIGHBOUR_DISCOVERY_INGRESS));
        if family == Family::Bridge {
            let spoof = BaseChain::filter(Hook::Prerouting, BRIDGE_SPOOF_PRIORITY, ChainPolicy::Accept);
            b.chain(SPOOF_CHAIN, Some(spoof), bridge_base_rules(IfDir::In));
            for (name, hook) in DELIVER_CHAINS {
                let base = BaseChain::filter(hook, DELIVER_PRIORITY, ChainPolicy::Accept);
                b.chain(name, Some(base), bridge_base_rules(IfDir::Out));
            }
        }
    }
}

/// What the guard compiled for one endpoint.
pub(super) struct Guard {
    /// Its anti-spoof chain (the shared `spoof-check`) and the family of its table (`None`:
    /// no host interface).
    pub(super) spoof_chain: Option<(Family, String)>,
    /// Its delivery guard chain (the shared `deliver-check`; `None`: no host interface, or
    /// ingress not restricted).
    pub(super) deliver_chain: Option<(Family, String)>,
    /// Every guard chain its traffic can traverse.
    pub(super) chains: Vec<(Family, String)>,
    /// Its entries in the guard's maps, for [`crate::engine::Desired::dispatch_keys`].
    pub(super) keys: Vec<DispatchKey>,
}

/// The guard of endpoint `ep` (bridge table for a bridge port, inet table for a routed
/// interface), when it has a host interface: its interface in `spoof-if`, its addresses on
/// that interface in `own4`/`own6`, and, when its ingress is restricted (some policy applies
/// to it in Ingress), its interface in `deliver-if`.
pub(super) fn add_endpoint(inet: &mut Builder, bridge: &mut Builder, ep: &Endpoint, ingress_restricted: bool) -> Guard {
    let Some(ifname) = ep.host_ifname.as_deref() else {
        return Guard { spoof_chain: None, deliver_chain: None, chains: Vec::new(), keys: Vec::new() };
    };
    let b = if ep.bridged { bridge } else { inet };
    let family = b.table.family;
    let mut keys = Vec::new();
    let mut put = |b: &mut Builder, map: &str, key: SetKey, elem: SetElem, verdict: NftVerdict| {
        b.map(map, key).insert(elem.clone(), verdict);
        keys.push(DispatchKey { table: b.table.clone(), map: map.to_string(), key: elem });
    };
    let iface = SetElem::IfName(ifname.to_string());
    put(b, SPOOF_MAP, SetKey::IfName, iface.clone(), NftVerdict::Jump(SPOOF_CHECK_CHAIN.into()));
    let mut addrs: Vec<IpAddr> = ep.addrs.clone();
    addrs.sort();
    addrs.dedup();
    for a in addrs {
        let (map, key) = match a {
            IpAddr::V4(_) => (OWN4_MAP, SetKey::IfNameIpv4),
            IpAddr::V6(_) => (OWN6_MAP, SetKey::IfNameIpv6),
        };
        put(b, map, key, SetElem::IfNameAddr(ifname.to_string(), a), NftVerdict::Return);
    }
    let mut chains = vec![(family, SPOOF_CHECK_CHAIN.to_string()), (family, SPOOF_LINK_LOCAL_CHAIN.to_string())];
    let deliver = ingress_restricted.then(|| {
        put(b, DELIVER_MAP, SetKey::IfName, iface, NftVerdict::Jump(DELIVER_CHECK_CHAIN.into()));
        chains.push((family, DELIVER_CHECK_CHAIN.to_string()));
        chains.push((family, DELIVER_ND_CHAIN.to_string()));
        (family, DELIVER_CHECK_CHAIN.to_string())
    });
    Guard { spoof_chain: Some((family, SPOOF_CHECK_CHAIN.to_string())), deliver_chain: deliver, chains, keys }
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
