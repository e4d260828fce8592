//! The policy compiler: policies and endpoints in, the whole desired content of the two
//! nftables tables out (`table inet cni-policy` for the policy, `table bridge cni-policy` for
//! anti-spoofing of bridge ports). Pure: no I/O, the same input gives the same output, and
//! the names of sets and chains are derived from what they stand for, so an endpoint added
//! or a policy edited changes only the objects that concern it (the engine applies the
//! difference; `docs/policy.md` "The compiled tables" describes the layout).
//!
//! The verdict the tables give is [`crate::eval::evaluate`]'s, rule by rule:
//! - endpoint dispatch by address: `ip saddr vmap @egress4` (and `ip6`, and `daddr` for
//!   ingress) jumps to the endpoint's direction chain;
//! - an endpoint direction chain (shared by every endpoint with the same ordered list of
//!   applying policies) accepts IPv6 neighbour discovery, drops `ct state invalid`, then per
//!   tier clears the pass bit, jumps to the tier's policy chains while the bit is clear, and
//!   ends the tier with a drop (default action Deny) unless the bit is set; after the last
//!   tier it accepts (the profile);
//! - a policy chain (per policy and direction, shared by every endpoint the policy selects)
//!   holds the policy's rules in order: Allow `accept`, Deny `drop`, Log `log prefix` and go
//!   on, Pass sets the pass bit and returns.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use linux_net::nft::{
    Action as NftAction, BaseChain, ChainPolicy, CtStates, Dir, Family, Hook, IpVersion as Fam, MarkStmt, Match,
    Rule as NftRule, SetDef, SetElem, SetKey, TableRef, TableState, Verdict as NftVerdict,
};
use serde::{Deserialize, Serialize};

use crate::eval::{neighbour_discovery, selects, sort_policies};
use crate::model::{
    proto, Action, Direction, Endpoint, EndpointSelector, IcmpMatch, IpVersion, NamespaceMatch, Policy, PolicySet,
    PortRange, Rule, TierDefault,
};
use crate::selector::{Labels, Selector};

mod guard;
mod incremental;

pub use incremental::Compiler;

pub use guard::{
    BRIDGE_SPOOF_PRIORITY, DELIVER_CHAINS, DELIVER_CHECK_CHAIN, DELIVER_MAP, DELIVER_ND_CHAIN, DELIVER_PRIORITY,
    OWN4_MAP, OWN6_MAP, SPOOF_CHAIN, SPOOF_CHECK_CHAIN, SPOOF_LINK_LOCAL_CHAIN, SPOOF_MAP,
};

/// Name of both tables.
pub const TABLE: &str = "cni-policy";
/// Nets or ports lists of at most this many entries are matched inline, and a rule's inline
/// lists make at most this many nft rules; longer ones are looked up in a set.
pub const INLINE: usize = 4;
/// The packet-mark bit a `Pass` sets (Felix reserves 0xffff0000 by default for its own
/// marks and kube-proxy uses 0x4000/0x8000; this bit is set and cleared keeping the others).
pub const PASS_MARK: u32 = 0x0010_0000;

/// The packet-mark bit an egress `Allow` (and the egress profile's allow) sets on the way back
/// to the base chain, where the packet goes on to its ingress evaluation: a forwarded packet
/// is judged in one base chain, egress then ingress, so egress cannot end it with `accept`.
/// While it is set, the rest of the egress chain is skipped (as for `Pass`, which sets
/// [`PASS_MARK`]); the egress chain clears both before it returns.
pub const ALLOW_MARK: u32 = 0x0020_0000;

/// inet base chains of the policy: (name, hook, priority, the directions they evaluate, in
/// order). A forwarded packet meets one chain, which evaluates the source endpoint's egress and
/// then the destination endpoint's ingress: every base chain on the path costs each
/// established packet a hook call (docs/policy.md, "Cost per packet").
pub const BASE_CHAINS: [(&str, Hook, i32, &[Direction]); 3] = [
    ("forward", Hook::Forward, 0, &[Direction::Egress, Direction::Ingress]),
    ("egress-in", Hook::Input, 0, &[Direction::Egress]),
    ("ingress-out", Hook::Output, 0, &[Direction::Ingress]),
];
/// Dispatch map of a direction and family: `egress4`, `egress6`, `ingress4`, `ingress6`.
pub fn dispatch_map(dir: Direction, fam: IpVersion) -> &'static str {
    match (dir, fam) {
        (Direction::Egress, IpVersion::V4) => "egress4",
        (Direction::Egress, IpVersion::V6) => "egress6",
        (Direction::Ingress, IpVersion::V4) => "ingress4",
        (Direction::Ingress, IpVersion::V6) => "ingress6",
    }
}

/// What the compiler knows about one endpoint, for `status` and `check`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EndpointInfo {
    /// Policies applying to it in either direction, in evaluation order: `ns/name` for
    /// namespaced policies, `name` for global ones.
    pub policies: Vec<String>,
    /// Its ingress and egress chains in the inet table.
    pub ingress_chain: String,
    pub egress_chain: String,
    /// Its anti-spoof chain and the table family it is in (`None`: no host interface).
    pub spoof_chain: Option<(Family, String)>,
    /// Its delivery guard chain (drops broadcast and multicast towards it) and the table
    /// family it is in: `None` without a host interface or when its ingress is not restricted.
    #[serde(default)]
    pub deliver_chain: Option<(Family, String)>,
    /// Its entries in the guard's maps (anti-spoofing, delivery guard): what
    /// [`crate::engine::Desired::dispatch_keys`] lists besides its address keys.
    #[serde(default)]
    pub guard_keys: Vec<crate::engine::DispatchKey>,
    /// Every chain its traffic can traverse (direction chains, the policy chains they jump
    /// to, the anti-spoof and delivery guard chains and the shared chains they go to), with
    /// the table family.
    pub chains: Vec<(Family, String)>,
    /// Its addresses that dispatch to its chains (an address of two endpoints is the first's).
    pub addrs: Vec<IpAddr>,
}

/// The whole desired state of both tables, and per endpoint what concerns it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Compiled {
    /// `table inet cni-policy`, then `table bridge cni-policy`.
    pub tables: Vec<TableState>,
    pub endpoints: BTreeMap<String, EndpointInfo>,
}

impl Compiled {
    /// nft rules in total, in both tables.
    pub fn rule_count(&self) -> usize {
        self.tables.iter().flat_map(|t| t.chains.values()).map(|c| c.rules.len()).sum()
    }

    /// Rules an endpoint's traffic can traverse: those of its direction chains, of the policy
    /// chains they jump to and of its anti-spoof chain (the few base-chain rules every packet
    /// sees are not counted). 0 for an unknown endpoint.
    pub fn endpoint_rules(&self, ep: &str) -> usize {
        self.endpoints.get(ep).map_or(0, |info| info.chains.iter().map(|(f, c)| self.chain_len(*f, c)).sum())
    }

    /// The policies applying to `ep`, in evaluation order (`ns/name` or `name`).
    pub fn policies_of(&self, ep: &str) -> Vec<String> {
        self.endpoints.get(ep).map(|i| i.policies.clone()).unwrap_or_default()
    }

    /// The table of `family`.
    pub fn table(&self, family: Family) -> Option<&TableState> {
        self.tables.iter().find(|t| t.table.family == family)
    }

    /// Rules of a chain (0 if it does not exist).
    pub fn chain_len(&self, family: Family, chain: &str) -> usize {
        self.table(family).and_then(|t| t.chains.get(chain)).map_or(0, |c| c.rules.len())
    }
}

/// A stable 64-bit hash (FNV-1a) of `parts`, as 16 hex digits. Names built from it stay the
/// same from run to run and release to release, which std's hasher does not promise.
fn hash(parts: &[&str]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for p in parts {
        for b in p.bytes().chain(std::iter::once(0xff)) {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    format!("{h:016x}")
}

/// `kind/ns/name`: a policy's identity.
fn policy_id(p: &Policy) -> String {
    format!("{:?}/{}/{}", p.kind, p.namespace.as_deref().unwrap_or(""), p.name)
}

/// `ns/name` or `name`, as `status` shows it.
pub fn policy_display(p: &Policy) -> String {
    match &p.namespace {
        Some(ns) => format!("{ns}/{}", p.name),
        None => p.name.clone(),
    }
}

fn dir_letter(d: Direction) -> &'static str {
    match d {
        Direction::Ingress => "i",
        Direction::Egress => "e",
    }
}

/// Up to `n` bytes of `s` made of `[a-z0-9.-]` (for names people read in `nft list`).
fn readable(s: &str, n: usize) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '.' || c == '-' { c } else { '_' }).take(n).collect()
}

/// Chain of a policy's rules in one direction: `pol-<i|e>-<name>-<hash of kind/ns/name>`.
fn policy_chain(p: &Policy, d: Direction) -> String {
    format!("pol-{}-{}-{}", dir_letter(d), readable(&p.name, 32), hash(&[&policy_id(p)]))
}

/// Keys of a set of endpoint addresses picked by a selector in a namespace scope.
fn scope_key(s: &EndpointSelector) -> String {
    let ns = match &s.namespaces {
        NamespaceMatch::Any => "*".to_string(),
        NamespaceMatch::Named(n) => format!("ns={n}"),
        NamespaceMatch::Selector(sel) => format!("nssel={sel}"),
    };
    format!("{ns}|{}", s.labels)
}

fn fam_of(v: IpVersion) -> Fam {
    match v {
        IpVersion::V4 => Fam::V4,
        IpVersion::V6 => Fam::V6,
    }
}

fn fam_digit(v: IpVersion) -> &'static str {
    match v {
        IpVersion::V4 => "4",
        IpVersion::V6 => "6",
    }
}

fn addr_key(v: IpVersion) -> SetKey {
    match v {
        IpVersion::V4 => SetKey::Ipv4Addr,
        IpVersion::V6 => SetKey::Ipv6Addr,
    }
}

fn net_family(n: &IpNetwork) -> IpVersion {
    if n.is_ipv4() {
        IpVersion::V4
    } else {
        IpVersion::V6
    }
}

/// CIDRs of one family without those inside another of the list (an interval set refuses
/// overlapping elements; two CIDRs either nest or are disjoint), sorted.
fn outermost(nets: &[IpNetwork]) -> Vec<IpNetwork> {
    let canon: BTreeSet<IpNetwork> =
        nets.iter().map(|n| IpNetwork::new(n.network(), n.prefix()).expect("a CIDR's own prefix")).collect();
    canon
        .iter()
        .filter(|n| !canon.iter().any(|o| o != *n && o.prefix() < n.prefix() && o.contains(n.network())))
        .copied()
        .collect()
}

/// The `nets` of family `v` not inside one of `not_nets`: a packet in such a net is in a
/// `notNets` one too, so it can never match (the generated `nets: [a, b], notNets: [b]`).
fn positive_nets(nets: &[IpNetwork], not_nets: &[IpNetwork], v: IpVersion) -> Vec<IpNetwork> {
    nets.iter()
        .filter(|n| net_family(n) == v)
        .filter(|n| !not_nets.iter().any(|o| net_family(o) == v && o.prefix() <= n.prefix() && o.contains(n.network())))
        .copied()
        .collect()
}

/// Port ranges merged where they overlap or touch, sorted.
fn merged_ports(ports: &[PortRange]) -> Vec<(u16, u16)> {
    let mut v: Vec<(u16, u16)> = ports.iter().map(|p| (p.first, p.last)).collect();
    v.sort();
    let mut out: Vec<(u16, u16)> = Vec::new();
    for (a, b) in v {
        match out.last_mut() {
            Some(last) if u32::from(a) <= u32::from(last.1) + 1 => last.1 = last.1.max(b),
            _ => out.push((a, b)),
        }
    }
    out
}

/// A table being built: sets, maps and chains by name (maps keyed so an entry is set once).
struct Builder {
    table: TableRef,
    sets: BTreeMap<String, (SetDef, Vec<SetElem>)>,
    maps: BTreeMap<String, (SetDef, BTreeMap<SetElem, NftVerdict>)>,
    chains: BTreeMap<String, (Option<BaseChain>, Vec<NftRule>)>,
}

impl Builder {
    fn new(family: Family) -> Builder {
        Builder {
            table: TableRef::new(family, TABLE),
            sets: BTreeMap::new(),
            maps: BTreeMap::new(),
            chains: BTreeMap::new(),
        }
    }

    fn set(&mut self, def: SetDef, elems: Vec<SetElem>) -> String {
        let name = def.name.clone();
        self.sets.entry(name.clone()).or_insert((def, elems));
        name
    }

    fn map(&mut self, name: &str, key: SetKey) -> &mut BTreeMap<SetElem, NftVerdict> {
        &mut self.maps.entry(name.to_string()).or_insert_with(|| (SetDef::verdict_map(name, key), BTreeMap::new())).1
    }

    fn chain(&mut self, name: &str, base: Option<BaseChain>, rules: Vec<NftRule>) {
        self.chains.insert(name.to_string(), (base, rules));
    }

    fn has_chain(&self, name: &str) -> bool {
        self.chains.contains_key(name)
    }

    fn finish(self) -> TableState {
        let mut t = TableState::new(self.table);
        for (_, (def, elems)) in self.sets {
            t.put_set(def, elems);
        }
        for (_, (def, entries)) in self.maps {
            t.put_map(def, entries.into_iter().collect());
        }
        for (name, (base, rules)) in self.chains {
            t.put_chain(name, base, rules);
        }
        t
    }
}

fn rule(matches: Vec<Match>, verdict: Option<NftVerdict>) -> NftRule {
    NftRule { matches, action: verdict.map(NftAction::Verdict), ..NftRule::default() }
}

/// Compiles `set` for `endpoints` into the desired state of both tables.
///
/// Remote endpoints ([`Endpoint::remote`]) only add their addresses to selector sets (the
/// caller trims those a local endpoint has: [`crate::model::local_first`]).
pub fn compile(set: &PolicySet, endpoints: &[Endpoint]) -> Compiled {
    let mut inet = Builder::new(Family::Inet);
    let mut bridge = Builder::new(Family::Bridge);

    base(&mut inet, &mut bridge);

    let mut c = Ctx::new(set, endpoints, inet);
    let mut infos = BTreeMap::new();
    let mut owner: BTreeMap<IpAddr, &str> = BTreeMap::new();
    let local = || endpoints.iter().filter(|e| e.remote.is_none());
    for ep in local() {
        for a in &ep.addrs {
            owner.entry(*a).or_insert(ep.name.as_str());
        }
    }
    // Endpoints of the same namespace and the same values of the labels policy selectors
    // name have the same policies: worked out once per such profile.
    let keys = policy_label_keys(set);
    let mut profiles: BTreeMap<(&str, Labels), Profile> = BTreeMap::new();
    for ep in local() {
        let prof = profiles.entry((ep.namespace.as_str(), project(&ep.labels, &keys))).or_insert_with(|| c.profile(ep));
        for (dir, name) in [(Direction::Ingress, &prof.ingress_chain), (Direction::Egress, &prof.egress_chain)] {
            for a in &ep.addrs {
                let v = IpVersion::of(a);
                // An address of two endpoints belongs to the first, as in the evaluator.
                let entries = c.inet.map(dispatch_map(dir, v), addr_key(v));
                entries.entry(SetElem::Addr(*a)).or_insert_with(|| NftVerdict::Jump(name.clone()));
            }
        }
        let g = guard::add_endpoint(&mut c.inet, &mut bridge, ep, prof.ingress_restricted);
        infos.insert(ep.name.clone(), endpoint_info(prof, g, ep, |a| owner.get(a) == Some(&ep.name.as_str())));
    }
    let guards = [guarded(&c.inet, Direction::Egress), guarded(&c.inet, Direction::Ingress)];
    base_chains(&mut c.inet, guards);
    Compiled { tables: vec![c.inet.finish(), bridge.finish()], endpoints: infos }
}

/// The tables' fixed part: the inet dispatch maps and the guard's maps and chains (the inet
/// base chains depend on the endpoints: [`base_chains`]).
fn base(inet: &mut Builder, bridge: &mut Builder) {
    for dir in [Direction::Egress, Direction::Ingress] {
        for v in [IpVersion::V4, IpVersion::V6] {
            inet.map(dispatch_map(dir, v), addr_key(v));
        }
    }
    guard::base(inet, bridge);
}

/// Whether the inet base chains of direction `dir` start with the guard's rule
/// ([`guard::inet_rule`]): while the guard's map of that direction in `inet` (`spoof-if` for
/// egress, `deliver-if` for ingress) has an entry, that is while some endpoint has a routed
/// host interface there. An empty map's lookup matches no packet: leaving the rule out
/// changes no verdict and saves every packet the lookup.
fn guarded(inet: &Builder, dir: Direction) -> bool {
    let map = match dir {
        Direction::Egress => SPOOF_MAP,
        Direction::Ingress => DELIVER_MAP,
    };
    inet.maps.get(map).is_some_and(|(_, entries)| !entries.is_empty())
}

/// The inet base chains: the guard of routed interfaces (every packet, established or not)
/// in the directions `guarded` says (egress, ingress), then established/related accepted,
/// then dispatch on the endpoint's address, direction by direction (an egress chain returns
/// what it allows, so `forward` goes on to the ingress dispatch).
fn base_chains(inet: &mut Builder, guarded: [bool; 2]) {
    for (name, hook, prio, dirs) in BASE_CHAINS {
        let mut rules: Vec<NftRule> = dirs
            .iter()
            .filter(|&&d| if d == Direction::Egress { guarded[0] } else { guarded[1] })
            .map(|&d| guard::inet_rule(d))
            .collect();
        rules.push(rule(
            vec![Match::CtState { states: CtStates::ESTABLISHED | CtStates::RELATED, negate: false }],
            Some(NftVerdict::Accept),
        ));
        for &dir in dirs {
            let addr_dir = if dir == Direction::Egress { Dir::Src } else { Dir::Dst };
            for v in [IpVersion::V4, IpVersion::V6] {
                let map = dispatch_map(dir, v);
                rules.push(NftRule {
                    action: Some(NftAction::AddrVmap { version: fam_of(v), dir: addr_dir, map: map.to_string() }),
                    ..NftRule::default()
                });
            }
        }
        inet.chain(name, Some(BaseChain::filter(hook, prio, ChainPolicy::Accept)), rules);
    }
}

/// What `status` and `check` know of endpoint `ep`, of profile `prof` and guard `g`; `owns`
/// says whether an address of it dispatches to its chains (the first endpoint's of an address).
fn endpoint_info(prof: &Profile, g: guard::Guard, ep: &Endpoint, owns: impl Fn(&IpAddr) -> bool) -> EndpointInfo {
    let mut chains = prof.chains.clone();
    chains.extend(g.chains);
    chains.sort();
    chains.dedup();
    EndpointInfo {
        policies: prof.policies.clone(),
        ingress_chain: prof.ingress_chain.clone(),
        egress_chain: prof.egress_chain.clone(),
        spoof_chain: g.spoof_chain,
        deliver_chain: g.deliver_chain,
        guard_keys: g.keys,
        chains,
        addrs: ep.addrs.iter().filter(|a| owns(a)).copied().collect(),
    }
}

/// Every label key a selector reads.
fn selector_keys(s: &Selector, out: &mut BTreeSet<String>) {
    match s {
        Selector::All | Selector::Global => {}
        Selector::Has(k)
        | Selector::Eq(k, _)
        | Selector::Ne(k, _)
        | Selector::In(k, _)
        | Selector::NotIn(k, _)
        | Selector::Contains(k, _)
        | Selector::StartsWith(k, _)
        | Selector::EndsWith(k, _) => {
            out.insert(k.clone());
        }
        Selector::Not(e) => selector_keys(e, out),
        Selector::And(v) | Selector::Or(v) => v.iter().for_each(|e| selector_keys(e, out)),
    }
}

/// The endpoint label keys the policies' own `selector`s read: which policies apply to an
/// endpoint depends only on its namespace and its values of these.
fn policy_label_keys(set: &PolicySet) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for p in &set.policies {
        selector_keys(&p.selector, &mut keys);
    }
    keys
}

/// The endpoint label keys the rules' selectors read.
fn rule_label_keys(set: &PolicySet) -> BTreeSet<String> {
    let mut keys = BTreeSet::new();
    for p in &set.policies {
        for r in p.ingress.iter().chain(&p.egress) {
            for e in [&r.source, &r.destination] {
                for s in e.endpoints.iter().chain(&e.not_endpoints) {
                    selector_keys(&s.labels, &mut keys);
                }
            }
        }
    }
    keys
}

/// `labels` with only the entries of `keys`.
fn project(labels: &Labels, keys: &BTreeSet<String>) -> Labels {
    labels.iter().filter(|(k, _)| keys.contains(*k)).map(|(k, v)| (k.clone(), v.clone())).collect()
}

/// What endpoints of one namespace and label set share.
struct Profile {
    /// Some policy applies to these endpoints in Ingress.
    ingress_restricted: bool,
    ingress_chain: String,
    egress_chain: String,
    /// Direction and policy chains.
    chains: Vec<(Family, String)>,
    policies: Vec<String>,
    /// The policy chains its direction chains jump to: (index in `set.policies`, direction).
    units: Vec<(usize, Direction)>,
}

/// The index of `p` in `set.policies`.
fn policy_index(set: &PolicySet, p: &Policy) -> usize {
    set.policies.iter().position(|q| std::ptr::eq(q, p)).expect("a policy of the set")
}

struct Ctx<'a> {
    set: &'a PolicySet,
    endpoints: &'a [Endpoint],
    /// `endpoints` grouped by what rule selectors can tell apart (made on first use).
    groups: Option<Vec<Group>>,
    inet: Builder,
    /// The addresses of every selector set worked out, by set name (made on first use).
    picked: BTreeMap<String, Vec<SetElem>>,
    /// Given by the incremental compiler: the selector sets that are not empty (their
    /// elements are its business); `None`: worked out from `endpoints`.
    nonempty: Option<&'a BTreeSet<String>>,
    /// Whether a direction chain also makes the policy chains it jumps to (the incremental
    /// compiler makes those on their own).
    policy_chains: bool,
}

/// Endpoints of one namespace with the same values of the label keys rule selectors read: a
/// rule selector picks all of them or none.
struct Group {
    namespace: String,
    /// The selector labels, restricted to those keys (and the namespace's label).
    labels: Labels,
    /// The members' addresses.
    addrs: Vec<IpAddr>,
}

impl<'a> Ctx<'a> {
    fn new(set: &'a PolicySet, endpoints: &'a [Endpoint], inet: Builder) -> Ctx<'a> {
        Ctx { set, endpoints, groups: None, inet, picked: BTreeMap::new(), nonempty: None, policy_chains: true }
    }

    fn groups(&mut self) -> &[Group] {
        let (set, endpoints) = (self.set, self.endpoints);
        self.groups.get_or_insert_with(|| {
            if endpoints.is_empty() {
                return Vec::new();
            }
            let mut keys = rule_label_keys(set);
            keys.insert(NAMESPACE_LABEL.to_string());
            let mut by: BTreeMap<(&str, Labels), Vec<IpAddr>> = BTreeMap::new();
            for e in endpoints {
                let mut labels = project(&e.labels, &keys);
                labels.insert(NAMESPACE_LABEL.into(), e.namespace.clone());
                by.entry((e.namespace.as_str(), labels)).or_default().extend(e.addrs.iter().copied());
            }
            by.into_iter().map(|((ns, labels), addrs)| Group { namespace: ns.to_string(), labels, addrs }).collect()
        })
    }

    /// The chains (created as needed) and the policies of endpoints like `ep`.
    fn profile(&mut self, ep: &Endpoint) -> Profile {
        let set = self.set;
        let mut chains = Vec::new();
        let mut all_applying: Vec<&Policy> = Vec::new();
        let mut names = Vec::new();
        let mut ingress_restricted = false;
        let mut units = Vec::new();
        for dir in [Direction::Ingress, Direction::Egress] {
            let mut applying: Vec<&Policy> =
                set.policies.iter().filter(|p| p.types.contains(&dir) && selects(set, p, ep)).collect();
            ingress_restricted |= dir == Direction::Ingress && !applying.is_empty();
            sort_policies(set, &mut applying);
            let name = self.endpoint_chain(dir, &applying);
            chains.push((Family::Inet, name.clone()));
            for p in &applying {
                chains.push((Family::Inet, policy_chain(p, dir)));
                units.push((policy_index(set, p), dir));
                if !all_applying.iter().any(|q| std::ptr::eq(*q, *p)) {
                    all_applying.push(p);
                }
            }
            names.push(name);
        }
        sort_policies(set, &mut all_applying);
        let egress_chain = names.pop().expect("two directions");
        let ingress_chain = names.pop().expect("two directions");
        Profile {
            ingress_restricted,
            ingress_chain,
            egress_chain,
            chains,
            policies: all_applying.iter().map(|p| policy_display(p)).collect(),
            units,
        }
    }

    /// The direction chain for an ordered list of applying policies (created once, shared).
    fn endpoint_chain(&mut self, dir: Direction, applying: &[&Policy]) -> String {
        let mut key: Vec<String> = vec![format!("{dir:?}")];
        for p in applying {
            let tier = self.set.tier(&p.tier);
            key.push(format!("{}|{:?}|{}", tier.name, tier.default_action, policy_id(p)));
        }
        let parts: Vec<&str> = key.iter().map(String::as_str).collect();
        let name = format!("ep-{}-{}", dir_letter(dir), hash(&parts));
        if self.inet.has_chain(&name) {
            return name;
        }
        // What this direction's evaluation gives a packet it allows: ingress accepts; egress
        // returns with ALLOW_MARK cleared, and the base chain goes on to the ingress dispatch.
        let (allowed, skip) = match dir {
            Direction::Ingress => (NftVerdict::Accept, PASS_MARK),
            Direction::Egress => (NftVerdict::Return, PASS_MARK | ALLOW_MARK),
        };
        // IPv6 neighbour discovery first: conntrack does not track it (`ct state` reads
        // invalid) and IPv6 needs it whatever the policy (the evaluator allows it too).
        let mut rules: Vec<NftRule> = neighbour_discovery(dir)
            .iter()
            .map(|&t| {
                let icmp = Match::Icmp { version: Fam::V6, icmp_type: t, code: None, negate: false };
                rule(vec![icmp], Some(allowed.clone()))
            })
            .collect();
        rules.push(rule(vec![Match::CtState { states: CtStates::INVALID, negate: false }], Some(NftVerdict::Drop)));
        // A policy is looked at while neither a Pass of its tier nor (egress) an Allow came before.
        let clear_bit = Match::MarkBits { mask: skip, set: false };
        let mut i = 0;
        while i < applying.len() {
            let tier = applying[i].tier.clone();
            let end = i + applying[i..].iter().take_while(|p| p.tier == tier).count();
            // The first tier also clears ALLOW_MARK: a mark the packet came with decides nothing.
            let clear = if i == 0 { skip } else { PASS_MARK };
            rules.push(NftRule { mark: Some(MarkStmt::Clear(clear)), ..NftRule::default() });
            for p in &applying[i..end] {
                let chain = if self.policy_chains { self.policy_chain(p, dir) } else { policy_chain(p, dir) };
                rules.push(rule(vec![clear_bit.clone()], Some(NftVerdict::Jump(chain))));
            }
            if self.set.tier(&tier).default_action == TierDefault::Deny {
                rules.push(rule(vec![clear_bit.clone()], Some(NftVerdict::Drop)));
            }
            i = end;
        }
        // The profile, or an egress Allow: allowed (clearing the two bits, keeping the others).
        rules.push(NftRule {
            mark: (!applying.is_empty()).then_some(MarkStmt::Clear(skip)),
            action: Some(NftAction::Verdict(allowed)),
            ..NftRule::default()
        });
        self.inet.chain(&name, None, rules);
        name
    }

    /// The chain of a policy's rules in `dir` (created once, shared).
    fn policy_chain(&mut self, p: &Policy, dir: Direction) -> String {
        let name = policy_chain(p, dir);
        if self.inet.has_chain(&name) {
            return name;
        }
        let mut rules = Vec::new();
        for (index, r) in p.rules(dir).iter().enumerate() {
            let families: &[Option<IpVersion>] =
                if needs_family(r) { &[Some(IpVersion::V4), Some(IpVersion::V6)] } else { &[None] };
            for fam in families {
                if !self.can_match(r, *fam) {
                    continue;
                }
                for matches in self.rule_matches(r, *fam).unwrap_or_default() {
                    rules.extend(self.actions(p, dir, index, r.action, matches));
                }
            }
        }
        self.inet.chain(&name, None, rules);
        name
    }

    /// The nft rules of one policy rule with these matches.
    fn actions(&self, p: &Policy, dir: Direction, index: usize, action: Action, matches: Vec<Match>) -> Vec<NftRule> {
        match action {
            Action::Allow => match dir {
                Direction::Ingress => vec![rule(matches, Some(NftVerdict::Accept))],
                // back to the endpoint chain, which skips the rest and returns: the base chain
                // goes on to the destination's ingress
                Direction::Egress => vec![NftRule {
                    matches,
                    mark: Some(MarkStmt::Set(ALLOW_MARK)),
                    action: Some(NftAction::Verdict(NftVerdict::Return)),
                    ..NftRule::default()
                }],
            },
            Action::Deny => vec![rule(matches, Some(NftVerdict::Drop))],
            Action::Log => vec![NftRule { matches, log_prefix: Some(log_prefix(p, dir, index)), ..NftRule::default() }],
            Action::Pass => vec![NftRule {
                matches,
                mark: Some(MarkStmt::Set(PASS_MARK)),
                action: Some(NftAction::Verdict(NftVerdict::Return)),
                ..NftRule::default()
            }],
        }
    }

    /// The matches of `r` for family `fam` (`None`: a rule with no family-specific part,
    /// emitted once), or `None` when it can never match a packet of that family.
    /// A short list of nets or ports (at most [`INLINE`] after merging) is matched inline: a
    /// negated one as that many `!=` matches, a positive one by one nft rule per entry (they
    /// are disjoint, so at most one matches and a Log logs once), as long as the rule makes at
    /// most [`INLINE`] nft rules; longer lists are looked up in a set. Few sets: the kernel
    /// finds a set by name walking a list, for every rule and element that names one.
    fn rule_matches(&mut self, r: &Rule, fam: Option<IpVersion>) -> Option<Vec<Vec<Match>>> {
        let mut m = Vec::new();
        // groups of alternatives (one of each must match), and the nft rules they make
        let mut alts: Vec<Vec<Match>> = Vec::new();
        let mut product = 1;
        if let Some(v) = fam {
            if r.ip_version.is_some_and(|rv| rv != v) {
                return None;
            }
            m.push(Match::IpVersion(fam_of(v)));
        }
        if let Some(p) = r.protocol {
            m.push(Match::L4Proto { proto: p, negate: false });
        }
        if let Some(p) = r.not_protocol {
            m.push(Match::L4Proto { proto: p, negate: true });
        }
        for (icmp, negate) in [(r.icmp, false), (r.not_icmp, true)] {
            let Some(IcmpMatch { icmp_type, code }) = icmp else { continue };
            let v = fam.expect("ICMP matches are per family");
            // ICMP is IPv4's message protocol and ICMPv6 IPv6's: the other pairing never carries
            // a type the evaluator would see.
            let own = if v == IpVersion::V4 { proto::ICMP } else { proto::ICMPV6 };
            if r.protocol != Some(own) {
                return None;
            }
            m.push(Match::Icmp { version: fam_of(v), icmp_type, code, negate });
        }
        for (entity, dir) in [(&r.source, Dir::Src), (&r.destination, Dir::Dst)] {
            if !entity.nets.is_empty() {
                let v = fam.expect("nets are per family");
                let nets = positive_nets(&entity.nets, &entity.not_nets, v);
                if nets.is_empty() {
                    return None;
                }
                let ms = self.nets_match(dir, v, &nets, false, INLINE / product);
                product *= ms.len();
                alts.push(ms);
            }
            if !entity.not_nets.is_empty() {
                let v = fam.expect("nets are per family");
                let nets: Vec<IpNetwork> = entity.not_nets.iter().filter(|n| net_family(n) == v).copied().collect();
                if !nets.is_empty() {
                    m.extend(self.nets_match(dir, v, &nets, true, INLINE));
                }
            }
            for (sel, negate) in [(&entity.endpoints, false), (&entity.not_endpoints, true)] {
                if let Some(sel) = sel {
                    let v = fam.expect("selectors are per family");
                    // not in an empty set: every packet of the family (`can_match` left out
                    // the rule when a positive selector's set is empty)
                    if !self.selector_nonempty(sel, v) {
                        continue;
                    }
                    let set = self.selector_set(sel, v);
                    m.push(Match::AddrInSet { version: fam_of(v), dir, set, negate });
                }
            }
            for (ports, negate) in [(&entity.ports, false), (&entity.not_ports, true)] {
                if ports.is_empty() {
                    continue;
                }
                // The parser makes ports need a port protocol.
                let p = r.protocol.filter(|p| proto::has_ports(*p))?;
                if negate {
                    m.extend(self.ports_match(p, dir, ports, true, INLINE));
                } else {
                    let ms = self.ports_match(p, dir, ports, false, INLINE / product);
                    product *= ms.len();
                    alts.push(ms);
                }
            }
        }
        let mut rules = vec![m];
        for group in alts {
            rules = rules
                .iter()
                .flat_map(|r| group.iter().map(move |g| [&r[..], std::slice::from_ref(g)].concat()))
                .collect();
        }
        Some(rules)
    }

    /// Matches of `nets`: inline when at most `inline` (one each, [`Ctx::rule_matches`]),
    /// else one set lookup.
    fn nets_match(&mut self, dir: Dir, v: IpVersion, nets: &[IpNetwork], negate: bool, inline: usize) -> Vec<Match> {
        let nets = outermost(nets);
        if nets.len() <= inline.max(1) {
            return nets.into_iter().map(|net| Match::AddrInNet { dir, net, negate }).collect();
        }
        let strs: Vec<String> = nets.iter().map(ToString::to_string).collect();
        let parts: Vec<&str> = strs.iter().map(String::as_str).collect();
        let name = format!("net{}-{}", fam_digit(v), hash(&parts));
        let def = SetDef::interval_set(name, addr_key(v));
        let set = self.inet.set(def, nets.into_iter().map(SetElem::Net).collect());
        vec![Match::AddrInSet { version: fam_of(v), dir, set, negate }]
    }

    /// Matches of `ports`, as [`Ctx::nets_match`].
    fn ports_match(&mut self, p: u8, dir: Dir, ports: &[PortRange], negate: bool, inline: usize) -> Vec<Match> {
        let ports = merged_ports(ports);
        if ports.len() <= inline.max(1) {
            return ports
                .into_iter()
                .map(|(first, last)| Match::PortRange { proto: p, dir, first, last, negate })
                .collect();
        }
        let strs: Vec<String> = ports.iter().map(|(a, b)| format!("{a}-{b}")).collect();
        let parts: Vec<&str> = strs.iter().map(String::as_str).collect();
        let name = format!("port-{}", hash(&parts));
        let def = SetDef::interval_set(name, SetKey::InetService);
        let set = self.inet.set(def, ports.into_iter().map(|(a, b)| SetElem::PortRange(a, b)).collect());
        vec![Match::PortInSet { proto: p, dir, set, negate }]
    }

    /// Whether `r` can match a packet of family `fam` at all (`None`: a rule without a
    /// family-specific part, which can). It cannot when its `ipVersion` is the other one, when
    /// its ICMP matches are of the other family's ICMP, when a `nets` list has no CIDR of the
    /// family, or when a positive selector picks no address of the family: such a rule makes
    /// no nft rule for the family, and the sets it would name are not made.
    fn can_match(&mut self, r: &Rule, fam: Option<IpVersion>) -> bool {
        let Some(v) = fam else { return true };
        if r.ip_version.is_some_and(|rv| rv != v) {
            return false;
        }
        let own = if v == IpVersion::V4 { proto::ICMP } else { proto::ICMPV6 };
        if (r.icmp.is_some() || r.not_icmp.is_some()) && r.protocol != Some(own) {
            return false;
        }
        for entity in [&r.source, &r.destination] {
            if !entity.nets.is_empty() && positive_nets(&entity.nets, &entity.not_nets, v).is_empty() {
                return false;
            }
            if let Some(sel) = &entity.endpoints {
                if !self.selector_nonempty(sel, v) {
                    return false;
                }
            }
        }
        true
    }

    /// Whether the set of the addresses of family `v` of the endpoints `sel` picks has any.
    fn selector_nonempty(&mut self, sel: &EndpointSelector, v: IpVersion) -> bool {
        let name = selector_set_name(sel, v);
        if let Some(known) = self.nonempty {
            return known.contains(&name);
        }
        !self.selector_elems(&name, sel, v).is_empty()
    }

    /// The addresses (of family `v`) of the endpoints `sel` picks, as set elements.
    fn selector_elems(&mut self, name: &str, sel: &EndpointSelector, v: IpVersion) -> &[SetElem] {
        if !self.picked.contains_key(name) {
            let set = self.set;
            let elems: BTreeSet<IpAddr> = self
                .groups()
                .iter()
                .filter(|g| selector_picks(set, sel, &g.namespace, &g.labels))
                .flat_map(|g| g.addrs.iter().copied())
                .filter(|a| IpVersion::of(a) == v)
                .collect();
            self.picked.insert(name.to_string(), elems.into_iter().map(SetElem::Addr).collect());
        }
        &self.picked[name]
    }

    /// The set of the addresses (of family `v`) of the endpoints `sel` picks, made when a rule
    /// that can match names it (so it is not empty, [`Ctx::can_match`]; the incremental
    /// compiler makes it empty and fills it itself).
    fn selector_set(&mut self, sel: &EndpointSelector, v: IpVersion) -> String {
        let name = selector_set_name(sel, v);
        if self.inet.sets.contains_key(&name) {
            return name;
        }
        let elems = if self.nonempty.is_some() { Vec::new() } else { self.selector_elems(&name, sel, v).to_vec() };
        self.inet.set(SetDef::set(name, addr_key(v)), elems)
    }
}

/// `sel4-<hash>` / `sel6-<hash>`: the set of the addresses of family `v` of the endpoints
/// `sel` picks (hash of the selector and its namespace scope).
fn selector_set_name(sel: &EndpointSelector, v: IpVersion) -> String {
    format!("sel{}-{}", fam_digit(v), hash(&[&scope_key(sel)]))
}

/// The selector sets the rules of `p` in `dir` look at, in both families, by name (what the
/// incremental compiler tracks for a policy chain: a rule is made or left out as they are
/// empty or not).
fn rule_selectors(p: &Policy, dir: Direction) -> BTreeMap<String, (EndpointSelector, IpVersion)> {
    let mut out = BTreeMap::new();
    for r in p.rules(dir) {
        for e in [&r.source, &r.destination] {
            for sel in e.endpoints.iter().chain(&e.not_endpoints) {
                for v in [IpVersion::V4, IpVersion::V6] {
                    out.insert(selector_set_name(sel, v), (sel.clone(), v));
                }
            }
        }
    }
    out
}

/// The label an endpoint's namespace is in for selectors (`Endpoint::selector_labels`).
const NAMESPACE_LABEL: &str = "projectcalico.org/namespace";

/// Whether a rule selector picks an endpoint of namespace `ns` whose selector labels are
/// `labels` (as the evaluator's `owned_by_selected`).
fn selector_picks(set: &PolicySet, sel: &EndpointSelector, ns: &str, labels: &Labels) -> bool {
    (match &sel.namespaces {
        NamespaceMatch::Any => true,
        NamespaceMatch::Named(n) => ns == n,
        NamespaceMatch::Selector(s) => s.matches(&set.namespace_labels(ns)),
    }) && sel.labels.matches(labels)
}

/// Whether a rule has a family-specific part, and so is emitted once per family.
fn needs_family(r: &Rule) -> bool {
    r.ip_version.is_some()
        || r.icmp.is_some()
        || r.not_icmp.is_some()
        || [&r.source, &r.destination]
            .iter()
            .any(|e| !e.nets.is_empty() || !e.not_nets.is_empty() || e.endpoints.is_some() || e.not_endpoints.is_some())
}

/// `cnp <in|out> <ns/name> #<index> `: at most 127 bytes (the name shortened if need be).
fn log_prefix(p: &Policy, dir: Direction, index: usize) -> String {
    let d = if dir == Direction::Ingress { "in" } else { "out" };
    let tail = format!(" #{index} ");
    let head = format!("cnp {d} ");
    let room = 127 - head.len() - tail.len();
    let mut name = policy_display(p);
    if name.len() > room {
        let mut cut = room;
        while !name.is_char_boundary(cut) {
            cut -= 1;
        }
        name.truncate(cut);
    }
    format!("{head}{name}{tail}")
}

impl crate::engine::Desired for Compiled {
    fn tables(&self) -> &[TableState] {
        &self.tables
    }

    fn dispatch_keys(&self, ep: &str) -> Option<Vec<crate::engine::DispatchKey>> {
        let info = self.endpoints.get(ep)?;
        let mut keys = Vec::new();
        for t in &self.tables {
            for (map, m) in &t.maps {
                for (key, verdict) in &m.entries {
                    if !matches!(verdict, NftVerdict::Jump(_)) {
                        continue;
                    }
                    // An address key of this endpoint (its chains may be shared, its keys not);
                    // the guard's maps are keyed on interfaces: `guard_keys` has those.
                    let own = matches!(key, SetElem::Addr(a) if info.addrs.contains(a));
                    if own {
                        keys.push(crate::engine::DispatchKey {
                            table: t.table.clone(),
                            map: map.clone(),
                            key: key.clone(),
                        });
                    }
                }
            }
        }
        keys.extend(info.guard_keys.iter().cloned());
        Some(keys)
    }
}
