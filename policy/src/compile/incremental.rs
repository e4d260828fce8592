//! The incremental compiler: what [`compile`](super::compile) gives, kept up to date through
//! changes (an endpoint added, removed or relabelled, the policies' rules edited) by touching
//! only the objects concerned, and naming them ([`Changes`]) so that the engine diffs only
//! those ([`crate::engine::Engine::apply_changes`]).
//!
//! The tables are the sum of contributions, each made by the same code `compile` runs, into
//! an empty scratch table: the fixed part ([`super::base`]), the inet base chains
//! ([`super::base_chains`], remade when a guard map turns empty or not), one per *profile* (the direction
//! chains of endpoints of one namespace and the same values of the label keys policy
//! selectors read), one per *policy chain* (a policy in a direction, with the net, port and
//! selector sets its rules that can match need, the latter empty) and one per endpoint (its
//! dispatch map entries and its guard). A contribution is counted in: an object exists while
//! some contribution has it, a map key goes to the earliest endpoint that has it (as `compile`
//! gives an address to the first endpoint), a set element is there while some contribution
//! or selected endpoint has it. A profile lives while an endpoint has it, a policy chain while
//! a live profile jumps to it. Every selector (per family) a live policy chain's rules name is
//! tracked with the addresses of the endpoints it picks, updated as endpoints come and go: a
//! rule whose positive selector picks none is left out (as `compile` leaves it out), so a
//! policy chain is remade when one of its selectors turns empty or non-empty, and a selector
//! set made then gets the tracked addresses.
//!
//! A policy set whose policies differ only in their rules (same policies, same order,
//! selectors, types, tiers and namespaces) rebuilds the chains of the edited policies; any
//! other change rebuilds everything (`Changes::all`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::net::IpAddr;

use linux_net::nft::{ChainState, Family, SetDef, SetElem, TableRef, TableState, Verdict as NftVerdict};

use super::{
    addr_key, base, base_chains, dispatch_map, endpoint_info, guard, policy_label_keys, project, rule_label_keys,
    rule_selectors, selector_picks, Builder, Compiled, Ctx, Profile, NAMESPACE_LABEL,
};
use crate::engine::Changes;
use crate::model::{Direction, Endpoint, EndpointSelector, IpVersion, PolicySet};
use crate::selector::Labels;

/// The two tables by index: 0 inet, 1 bridge (`Compiled::tables`' order).
const FAMILIES: [Family; 2] = [Family::Inet, Family::Bridge];

/// What one contributor adds to the tables.
#[derive(Debug, Default, Clone)]
struct Contrib {
    chains: Vec<(usize, String, ChainState)>,
    sets: Vec<(usize, SetDef, Vec<SetElem>)>,
    maps: Vec<(usize, SetDef)>,
    entries: Vec<(usize, String, SetElem, NftVerdict)>,
}

impl Contrib {
    /// The content of scratch tables.
    fn of(builders: [Builder; 2]) -> Contrib {
        let mut c = Contrib::default();
        for (i, b) in builders.into_iter().enumerate() {
            for (_, (def, elems)) in b.sets {
                c.sets.push((i, def, elems));
            }
            for (name, (def, entries)) in b.maps {
                c.maps.push((i, def));
                c.entries.extend(entries.into_iter().map(|(k, v)| (i, name.clone(), k, v)));
            }
            for (name, (base, rules)) in b.chains {
                c.chains.push((i, name, ChainState { base, rules }));
            }
        }
        c
    }
}

fn scratch() -> [Builder; 2] {
    [Builder::new(Family::Inet), Builder::new(Family::Bridge)]
}

type Key = (usize, String);

/// Per table (`FAMILIES`' index), by object name: looked up with a `&str`, so that counting a
/// contribution in allocates only for what is new.
type PerTable<T> = [HashMap<String, T>; 2];

/// The tables, with how many contributors have each object.
struct Live {
    /// The tables, and the endpoints' information.
    out: Compiled,
    chains: PerTable<usize>,
    sets: PerTable<usize>,
    elems: PerTable<HashMap<SetElem, usize>>,
    maps: PerTable<usize>,
    /// Per map and key: the contributors' verdicts by contributor order (lowest wins).
    entries: PerTable<HashMap<SetElem, BTreeMap<u64, NftVerdict>>>,
    changed: [BTreeSet<String>; 2],
}

impl Live {
    fn new() -> Live {
        Live {
            out: Compiled {
                tables: FAMILIES.iter().map(|f| TableState::new(TableRef::new(*f, super::TABLE))).collect(),
                endpoints: BTreeMap::new(),
            },
            chains: Default::default(),
            sets: Default::default(),
            elems: Default::default(),
            maps: Default::default(),
            entries: Default::default(),
            changed: Default::default(),
        }
    }

    fn touch(&mut self, t: usize, name: &str) {
        if !self.changed[t].contains(name) {
            self.changed[t].insert(name.to_string());
        }
    }

    /// Adds `c` (contributor `order`); returns the sets it created.
    fn add(&mut self, c: &Contrib, order: u64) -> Vec<Key> {
        let mut created = Vec::new();
        for (t, def) in &c.maps {
            if inc(&mut self.maps[*t], &def.name) {
                self.out.tables[*t].put_map(def.clone(), Vec::new());
                self.touch(*t, &def.name);
            }
        }
        for (t, def, elems) in &c.sets {
            if inc(&mut self.sets[*t], &def.name) {
                self.out.tables[*t].put_set(def.clone(), Vec::new());
                self.touch(*t, &def.name);
                created.push((*t, def.name.clone()));
            }
            for e in elems {
                self.add_elem(*t, &def.name, e);
            }
        }
        for (t, name, chain) in &c.chains {
            inc(&mut self.chains[*t], name);
            // a policy chain edited: its new contribution comes before the old one goes
            if self.out.tables[*t].chains.get(name) != Some(chain) {
                self.out.tables[*t].chains.insert(name.clone(), chain.clone());
                self.touch(*t, name);
            }
        }
        for (t, map, k, v) in &c.entries {
            if !self.entries[*t].contains_key(map.as_str()) {
                self.entries[*t].insert(map.clone(), HashMap::new());
            }
            let keys = self.entries[*t].get_mut(map.as_str()).expect("inserted above");
            match keys.get_mut(k) {
                Some(cands) => {
                    cands.insert(order, v.clone());
                }
                None => {
                    keys.insert(k.clone(), BTreeMap::from([(order, v.clone())]));
                }
            }
            self.settle(*t, map, k);
        }
        created
    }

    /// Takes `c` (contributor `order`) away; returns the sets it removed.
    fn remove(&mut self, c: &Contrib, order: u64) -> Vec<Key> {
        let mut removed = Vec::new();
        for (t, map, k, _) in &c.entries {
            if let Some(keys) = self.entries[*t].get_mut(map.as_str()) {
                if let Some(cands) = keys.get_mut(k) {
                    cands.remove(&order);
                    if cands.is_empty() {
                        keys.remove(k);
                    }
                }
                if keys.is_empty() {
                    self.entries[*t].remove(map.as_str());
                }
            }
            self.settle(*t, map, k);
        }
        for (t, name, _) in &c.chains {
            if dec(&mut self.chains[*t], name) {
                self.out.tables[*t].chains.remove(name);
                self.touch(*t, name);
            }
        }
        for (t, def, elems) in &c.sets {
            for e in elems {
                self.remove_elem(*t, &def.name, e);
            }
            if dec(&mut self.sets[*t], &def.name) {
                self.out.tables[*t].sets.remove(&def.name);
                self.elems[*t].remove(def.name.as_str());
                self.touch(*t, &def.name);
                removed.push((*t, def.name.clone()));
            }
        }
        for (t, def) in &c.maps {
            if dec(&mut self.maps[*t], &def.name) {
                self.out.tables[*t].maps.remove(&def.name);
                self.touch(*t, &def.name);
            }
        }
        removed
    }

    /// The map entry of key `k` is the lowest contributor's verdict, or none.
    fn settle(&mut self, t: usize, map: &str, k: &SetElem) {
        let want = self.entries[t].get(map).and_then(|keys| keys.get(k)).and_then(|c| c.values().next());
        let Some(m) = self.out.tables[t].maps.get_mut(map) else { return };
        let at = m.entries.binary_search_by(|(e, _)| e.cmp(k));
        let changed = match (at, want) {
            (Ok(i), Some(v)) if m.entries[i].1 == *v => false,
            (Ok(i), Some(v)) => {
                m.entries[i].1 = v.clone();
                true
            }
            (Ok(i), None) => {
                m.entries.remove(i);
                true
            }
            (Err(i), Some(v)) => {
                m.entries.insert(i, (k.clone(), v.clone()));
                true
            }
            (Err(_), None) => false,
        };
        if changed {
            self.touch(t, map);
        }
    }

    fn add_elem(&mut self, t: usize, set: &str, e: &SetElem) {
        if !self.elems[t].contains_key(set) {
            self.elems[t].insert(set.to_string(), HashMap::new());
        }
        let counts = self.elems[t].get_mut(set).expect("inserted above");
        if !counts.contains_key(e) {
            counts.insert(e.clone(), 0);
        }
        let n = counts.get_mut(e).expect("inserted above");
        *n += 1;
        if *n == 1 {
            if let Some(s) = self.out.tables[t].sets.get_mut(set) {
                if let Err(i) = s.elems.binary_search(e) {
                    s.elems.insert(i, e.clone());
                }
                self.touch(t, set);
            }
        }
    }

    /// [`add_elem`](Self::add_elem) of many.
    fn add_elems(&mut self, t: usize, set: &str, elems: impl Iterator<Item = SetElem>) {
        let counts = self.elems[t].entry(set.to_string()).or_default();
        let mut new = Vec::new();
        for e in elems {
            let n = counts.entry(e.clone()).or_insert(0);
            *n += 1;
            if *n == 1 {
                new.push(e);
            }
        }
        if new.is_empty() {
            return;
        }
        if let Some(s) = self.out.tables[t].sets.get_mut(set) {
            s.elems.extend(new);
            s.elems.sort();
            s.elems.dedup();
            self.touch(t, set);
        }
    }

    fn remove_elem(&mut self, t: usize, set: &str, e: &SetElem) {
        let Some(counts) = self.elems[t].get_mut(set) else { return };
        let Some(n) = counts.get_mut(e) else { return };
        *n -= 1;
        if *n == 0 {
            counts.remove(e);
            if let Some(s) = self.out.tables[t].sets.get_mut(set) {
                if let Ok(i) = s.elems.binary_search(e) {
                    s.elems.remove(i);
                }
                self.touch(t, set);
            }
        }
    }
}

/// Increments a count; true when it became 1 (a new entry).
fn inc(counts: &mut HashMap<String, usize>, name: &str) -> bool {
    if let Some(n) = counts.get_mut(name) {
        *n += 1;
        return false;
    }
    counts.insert(name.to_string(), 1);
    true
}

/// Decrements a count; true when it reached zero (and the entry is gone).
fn dec(counts: &mut HashMap<String, usize>, name: &str) -> bool {
    match counts.get_mut(name) {
        Some(n) if *n > 1 => {
            *n -= 1;
            false
        }
        Some(_) => {
            counts.remove(name);
            true
        }
        None => false,
    }
}

/// A profile: namespace and the values of the label keys policy selectors read.
type ProfileKey = (String, Labels);

struct ProfileSlot {
    /// Endpoints with this profile.
    n: usize,
    prof: Profile,
    contrib: Contrib,
}

struct UnitSlot {
    /// Live profiles jumping to this policy chain.
    n: usize,
    contrib: Contrib,
    /// The selectors its rules look at (tracked while it lives).
    sels: BTreeSet<String>,
}

/// A policy chain: (index in the policy set, direction).
type UnitKey = (usize, Direction);

/// A selector some live policy chain looks at, in one family: the addresses its set has (or
/// would have: the set is in the tables only while a rule that can match names it).
struct SelSlot {
    sel: EndpointSelector,
    v: IpVersion,
    /// The picked endpoints' addresses of family `v`, with how many of them have each.
    addrs: HashMap<IpAddr, usize>,
    /// The live policy chains that look at it: remade when it turns empty or not.
    units: BTreeSet<UnitKey>,
}

struct EpSlot {
    ep: Endpoint,
    /// Its rank among contributors: the earlier endpoint owns a shared address.
    order: u64,
    profile: ProfileKey,
    /// Its selector labels (namespace label included).
    labels: Labels,
    contrib: Contrib,
}

/// The incremental compiler (see the module's documentation). Its tables are always exactly
/// `compile(self.policies(), &self.endpoints())`'s.
pub struct Compiler {
    set: PolicySet,
    /// Label keys policy selectors read (profiles are keyed on them).
    keys: BTreeSet<String>,
    /// By contributor order: the endpoints' order.
    eps: BTreeMap<u64, EpSlot>,
    /// Endpoint name → its order.
    names: HashMap<String, u64>,
    next_order: u64,
    live: Live,
    profiles: HashMap<ProfileKey, ProfileSlot>,
    units: HashMap<UnitKey, UnitSlot>,
    /// Selectors of the live policy chains, by set name (inet table).
    selectors: HashMap<String, SelSlot>,
    /// Policy chains to remake: a selector they look at turned empty or not.
    dirty: BTreeSet<UnitKey>,
    /// Per address, the endpoints that have it by order (the first owns it).
    owners: HashMap<IpAddr, BTreeMap<u64, String>>,
    all: bool,
    /// Per group of endpoints rule selectors cannot tell apart (namespace, values of the label
    /// keys they read): the tracked selectors that pick them. Emptied when a selector comes or
    /// goes.
    picks: HashMap<ProfileKey, Vec<String>>,
    /// Label keys rule selectors read.
    rule_keys: BTreeSet<String>,
    /// Building: every endpoint grouped as `picks` is keyed (with its selector labels and
    /// addresses), so that a selector is worked out once per group and not endpoint by
    /// endpoint; `None` once built.
    bulk: Option<BTreeMap<ProfileKey, (Labels, Vec<IpAddr>)>>,
    /// The inet base chains, and whether they have the guard's rule (egress, ingress): remade
    /// when the guard's map of a direction turns empty or not.
    base_chains: (Contrib, [bool; 2]),
}

impl Compiler {
    /// `compile(set, endpoints)`, kept for changes.
    pub fn new(set: PolicySet, endpoints: &[Endpoint]) -> Compiler {
        let keys = policy_label_keys(&set);
        let mut c = Compiler {
            set,
            keys,
            eps: BTreeMap::new(),
            names: HashMap::new(),
            next_order: 1,
            live: Live::new(),
            profiles: HashMap::new(),
            units: HashMap::new(),
            selectors: HashMap::new(),
            dirty: BTreeSet::new(),
            owners: HashMap::new(),
            all: true,
            picks: HashMap::new(),
            rule_keys: BTreeSet::new(),
            bulk: None,
            base_chains: (Contrib::default(), [false; 2]),
        };
        c.rule_keys = rule_label_keys(&c.set);
        let [mut inet, mut bridge] = scratch();
        base(&mut inet, &mut bridge);
        c.live.add(&Contrib::of([inet, bridge]), 0);
        let [mut inet, bridge] = scratch();
        base_chains(&mut inet, [false; 2]);
        c.base_chains.0 = Contrib::of([inet, bridge]);
        c.live.add(&c.base_chains.0, 0);
        // every endpoint known before any selector is worked out, once per group of endpoints
        // rule selectors cannot tell apart (as `compile` does)
        let mut groups: BTreeMap<ProfileKey, (Labels, Vec<IpAddr>)> = BTreeMap::new();
        for ep in endpoints {
            let mut labels = ep.labels.clone();
            labels.insert(NAMESPACE_LABEL.into(), ep.namespace.clone());
            let g =
                groups.entry((ep.namespace.clone(), project(&labels, &c.rule_keys))).or_insert((labels, Vec::new()));
            g.1.extend(ep.addrs.iter().copied());
        }
        c.bulk = Some(groups);
        for ep in endpoints {
            c.add_endpoint(ep.clone());
        }
        c.bulk = None;
        c
    }

    /// The compiled state: the same as `compile(self.policies(), &self.endpoints())`.
    pub fn compiled(&self) -> &Compiled {
        &self.live.out
    }

    pub fn policies(&self) -> &PolicySet {
        &self.set
    }

    /// The endpoints, in the order that decides who owns an address two of them have (the
    /// order they were added in; a relabelled one keeps its place).
    pub fn endpoints(&self) -> Vec<Endpoint> {
        self.eps.values().map(|s| s.ep.clone()).collect()
    }

    /// What changed since [`applied`](Self::applied) was last called (or since the start:
    /// everything).
    pub fn changes(&self) -> Changes {
        let mut objects = BTreeSet::new();
        for (t, names) in self.live.changed.iter().enumerate() {
            let table = TableRef::new(FAMILIES[t], super::TABLE);
            objects.extend(names.iter().map(|n| (table.clone(), n.clone())));
        }
        Changes { all: self.all, objects }
    }

    /// The changes so far are in the kernel: forget them.
    pub fn applied(&mut self) {
        self.all = false;
        self.live.changed = Default::default();
    }

    /// Adds an endpoint, or replaces the one of the same name (keeping its place).
    pub fn put_endpoint(&mut self, ep: Endpoint) {
        if let Some(&order) = self.names.get(&ep.name) {
            if self.eps[&order].ep == ep {
                return;
            }
            self.remove_at(order);
            self.insert(ep, order);
        } else {
            self.add_endpoint(ep);
        }
    }

    /// Removes the endpoint named `name` (nothing if there is none).
    pub fn remove_endpoint(&mut self, name: &str) {
        if let Some(&order) = self.names.get(name) {
            self.remove_at(order);
        }
    }

    /// Makes the endpoints `endpoints`: those gone removed, those changed replaced in place,
    /// new ones added at the end, in their order.
    pub fn set_endpoints(&mut self, endpoints: &[Endpoint]) {
        let want: BTreeMap<&str, &Endpoint> = endpoints.iter().map(|e| (e.name.as_str(), e)).collect();
        let gone: Vec<String> =
            self.eps.values().filter(|s| !want.contains_key(s.ep.name.as_str())).map(|s| s.ep.name.clone()).collect();
        for name in gone {
            self.remove_endpoint(&name);
        }
        for e in endpoints {
            self.put_endpoint(e.clone());
        }
    }

    /// Makes the policy set `set`. When only the rules of some policies differ, their chains
    /// are rebuilt; otherwise everything is (`Changes::all`).
    pub fn set_policies(&mut self, set: PolicySet) {
        if set == self.set {
            return;
        }
        if !only_rules_differ(&self.set, &set) {
            let eps = self.endpoints();
            let changed = std::mem::take(&mut self.live.changed);
            *self = Compiler::new(set, &eps);
            self.live.changed = changed;
            self.all = true;
            return;
        }
        let edited: Vec<usize> = (0..set.policies.len()).filter(|&i| set.policies[i] != self.set.policies[i]).collect();
        self.set = set;
        self.rule_keys = rule_label_keys(&self.set);
        self.picks.clear();
        for i in edited {
            for dir in [Direction::Ingress, Direction::Egress] {
                self.remake_unit((i, dir));
            }
        }
    }

    /// Remakes live policy chain `key` (its policy edited, or a selector it looks at turned
    /// empty or not).
    fn remake_unit(&mut self, key: UnitKey) {
        let Some(old) = self.units.get(&key) else { return };
        let (old_contrib, n, old_sels) = (old.contrib.clone(), old.n, old.sels.clone());
        let (contrib, sels) = self.unit(key);
        // new first: objects both have (a selector set) stay, with their elements
        let created = self.live.add(&contrib, 0);
        self.fill_sets(&created);
        self.live.remove(&old_contrib, 0);
        for name in old_sels.difference(&sels) {
            self.untrack(name, key);
        }
        self.units.insert(key, UnitSlot { n, contrib, sels });
    }

    /// Remakes the policy chains whose selectors turned empty or not, and the inet base chains
    /// when a guard map turned empty or not.
    fn remake_dirty(&mut self) {
        for key in std::mem::take(&mut self.dirty) {
            self.remake_unit(key);
        }
        self.remake_base_chains();
    }

    /// Remakes the inet base chains when whether they need the guard's rule changed (the first
    /// routed interface in `spoof-if` or `deliver-if` came, or the last went): new content
    /// first, so the chains stay and only their rules change (one flush and refill in the
    /// engine's transaction).
    fn remake_base_chains(&mut self) {
        let inet = &self.live.out.tables[0];
        let has = |map: &str| inet.maps.get(map).is_some_and(|m| !m.entries.is_empty());
        let want = [has(guard::SPOOF_MAP), has(guard::DELIVER_MAP)];
        if want == self.base_chains.1 {
            return;
        }
        let [mut inet, bridge] = scratch();
        base_chains(&mut inet, want);
        let contrib = Contrib::of([inet, bridge]);
        self.live.add(&contrib, 0);
        self.live.remove(&self.base_chains.0.clone(), 0);
        self.base_chains = (contrib, want);
    }

    /// Starts tracking the selector of set `name` for policy chain `key`: a new one gets the
    /// addresses of every endpoint it picks.
    fn track(&mut self, name: &str, sel: &EndpointSelector, v: IpVersion, key: UnitKey) {
        if let Some(slot) = self.selectors.get_mut(name) {
            slot.units.insert(key);
            return;
        }
        let mut addrs: HashMap<IpAddr, usize> = HashMap::new();
        let mut count = |a: &IpAddr| {
            if IpVersion::of(a) == v {
                *addrs.entry(*a).or_insert(0) += 1;
            }
        };
        if let Some(groups) = &self.bulk {
            for ((ns, _), (labels, ga)) in groups {
                if selector_picks(&self.set, sel, ns, labels) {
                    ga.iter().for_each(&mut count);
                }
            }
        } else {
            for s in self.eps.values() {
                if selector_picks(&self.set, sel, &s.ep.namespace, &s.labels) {
                    s.ep.addrs.iter().for_each(&mut count);
                }
            }
        }
        let units = BTreeSet::from([key]);
        self.selectors.insert(name.to_string(), SelSlot { sel: sel.clone(), v, addrs, units });
        self.picks.clear();
    }

    /// Policy chain `key` no longer looks at the selector of set `name`.
    fn untrack(&mut self, name: &str, key: UnitKey) {
        let Some(slot) = self.selectors.get_mut(name) else { return };
        slot.units.remove(&key);
        if slot.units.is_empty() {
            self.selectors.remove(name);
            self.picks.clear();
        }
    }

    /// `addrs` of an endpoint in (`add`) or out of the tracked selectors that pick an endpoint
    /// of namespace `ns` with selector labels `labels`: the live sets' elements, and the policy
    /// chains of a selector that turns empty or not marked for remaking.
    fn count_addrs(&mut self, ns: &str, labels: &Labels, addrs: &[IpAddr], add: bool) {
        for name in self.picked(ns, labels) {
            let slot = self.selectors.get_mut(&name).expect("picked selectors are tracked");
            let was_empty = slot.addrs.is_empty();
            let mut changed = Vec::new();
            for a in addrs.iter().filter(|a| IpVersion::of(a) == slot.v) {
                if add {
                    let n = slot.addrs.entry(*a).or_insert(0);
                    *n += 1;
                    if *n == 1 {
                        changed.push(*a);
                    }
                } else if let Some(n) = slot.addrs.get_mut(a) {
                    *n -= 1;
                    if *n == 0 {
                        slot.addrs.remove(a);
                        changed.push(*a);
                    }
                }
            }
            if was_empty != slot.addrs.is_empty() {
                self.dirty.extend(slot.units.iter().copied());
            }
            // a set not in the tables (no rule that can match names it) gets them when made
            if !self.live.sets[0].contains_key(&name) {
                continue;
            }
            for a in changed {
                if add {
                    self.live.add_elem(0, &name, &SetElem::Addr(a));
                } else {
                    self.live.remove_elem(0, &name, &SetElem::Addr(a));
                }
            }
        }
    }

    fn add_endpoint(&mut self, ep: Endpoint) {
        let order = self.next_order;
        self.next_order += 1;
        self.insert(ep, order);
    }

    /// Puts `ep` among the endpoints as contributor `order`.
    fn insert(&mut self, ep: Endpoint, order: u64) {
        let mut labels = ep.labels.clone();
        labels.insert(NAMESPACE_LABEL.into(), ep.namespace.clone());
        let profile = (ep.namespace.clone(), project(&ep.labels, &self.keys));
        // its addresses in the tracked selectors that pick it (when building, a selector
        // counts every endpoint when it is made); selectors made below scan it
        if self.bulk.is_none() {
            self.count_addrs(&ep.namespace, &labels, &ep.addrs, true);
        }
        self.names.insert(ep.name.clone(), order);
        self.eps.insert(order, EpSlot { ep, order, profile: profile.clone(), labels, contrib: Contrib::default() });
        if self.eps[&order].ep.remote.is_some() {
            // another host's: only its addresses in the selector sets (above), as in `compile`
            self.remake_dirty();
            return;
        }
        let ep = &self.eps[&order].ep;
        if !self.profiles.contains_key(&profile) {
            let slot = self.make_profile(ep.clone());
            self.profiles.insert(profile.clone(), slot);
        }
        let ep = self.eps[&order].ep.clone();
        let slot = self.profiles.get_mut(&profile).expect("made above");
        slot.n += 1;
        // its dispatch entries and guard, as `compile` makes them
        let [mut inet, mut bridge] = scratch();
        for (dir, name) in
            [(Direction::Ingress, &slot.prof.ingress_chain), (Direction::Egress, &slot.prof.egress_chain)]
        {
            for a in &ep.addrs {
                let v = IpVersion::of(a);
                let entries = inet.map(dispatch_map(dir, v), addr_key(v));
                entries.entry(SetElem::Addr(*a)).or_insert_with(|| NftVerdict::Jump(name.clone()));
            }
        }
        let g = guard::add_endpoint(&mut inet, &mut bridge, &ep, slot.prof.ingress_restricted);
        let info = endpoint_info(&slot.prof, g, &ep, |_| false);
        let contrib = Contrib::of([inet, bridge]);
        self.live.add(&contrib, order);
        self.eps.get_mut(&order).expect("inserted above").contrib = contrib;
        self.live.out.endpoints.insert(ep.name.clone(), info);
        for a in &ep.addrs {
            self.owners.entry(*a).or_default().insert(order, ep.name.clone());
        }
        self.reown(&ep.addrs);
        self.remake_dirty();
    }

    /// Removes the endpoint of order `order`.
    fn remove_at(&mut self, order: u64) {
        let slot = self.eps.remove(&order).expect("a live endpoint");
        self.names.remove(&slot.ep.name);
        self.live.remove(&slot.contrib, slot.order);
        self.count_addrs(&slot.ep.namespace, &slot.labels, &slot.ep.addrs, false);
        if slot.ep.remote.is_some() {
            self.remake_dirty();
            return;
        }
        self.live.out.endpoints.remove(&slot.ep.name);
        for a in &slot.ep.addrs {
            if let Some(o) = self.owners.get_mut(a) {
                o.remove(&slot.order);
                if o.is_empty() {
                    self.owners.remove(a);
                }
            }
        }
        self.reown(&slot.ep.addrs);
        let p = self.profiles.get_mut(&slot.profile).expect("an endpoint's profile is live");
        p.n -= 1;
        if p.n == 0 {
            let p = self.profiles.remove(&slot.profile).expect("just seen");
            self.live.remove(&p.contrib, 0);
            for unit in &p.prof.units {
                let u = self.units.get_mut(unit).expect("a live profile's policy chain is live");
                u.n -= 1;
                if u.n == 0 {
                    let u = self.units.remove(unit).expect("just seen");
                    self.live.remove(&u.contrib, 0);
                    for name in &u.sels {
                        self.untrack(name, *unit);
                    }
                }
            }
        }
        self.remake_dirty();
    }

    /// `EndpointInfo::addrs` of the endpoints having one of `addrs`: the addresses they own.
    fn reown(&mut self, addrs: &[IpAddr]) {
        let names: BTreeSet<&String> =
            addrs.iter().filter_map(|a| self.owners.get(a)).flat_map(|o| o.values()).collect();
        for name in names {
            let Some(slot) = self.names.get(name).and_then(|o| self.eps.get(o)) else { continue };
            let owned: Vec<IpAddr> = slot
                .ep
                .addrs
                .iter()
                .filter(|a| self.owners.get(a).and_then(|o| o.values().next()) == Some(name))
                .copied()
                .collect();
            if let Some(info) = self.live.out.endpoints.get_mut(name) {
                info.addrs = owned;
            }
        }
    }

    /// The tracked selectors that pick an endpoint of namespace `ns` with selector labels
    /// `labels`.
    fn picked(&mut self, ns: &str, labels: &Labels) -> Vec<String> {
        let key = (ns.to_string(), project(labels, &self.rule_keys));
        if let Some(v) = self.picks.get(&key) {
            return v.clone();
        }
        let v: Vec<String> = self
            .selectors
            .iter()
            .filter(|(_, slot)| selector_picks(&self.set, &slot.sel, ns, labels))
            .map(|(n, _)| n.clone())
            .collect();
        self.picks.insert(key, v.clone());
        v
    }

    /// The profile of endpoint `ep` (not yet counted): its direction chains, and the policy
    /// chains they jump to made live.
    fn make_profile(&mut self, ep: Endpoint) -> ProfileSlot {
        let [inet, bridge] = scratch();
        let mut ctx = Ctx::new(&self.set, &[], inet);
        ctx.policy_chains = false;
        let prof = ctx.profile(&ep);
        let contrib = Contrib::of([ctx.inet, bridge]);
        for unit in &prof.units {
            if let Some(u) = self.units.get_mut(unit) {
                u.n += 1;
                continue;
            }
            let (contrib, sels) = self.unit(*unit);
            let created = self.live.add(&contrib, 0);
            self.fill_sets(&created);
            self.units.insert(*unit, UnitSlot { n: 1, contrib, sels });
        }
        self.live.add(&contrib, 0);
        ProfileSlot { n: 0, prof, contrib }
    }

    /// The chain of policy `key.0` in direction `key.1`, with its sets (selector sets empty),
    /// and the selectors its rules look at, tracked for it from now on.
    fn unit(&mut self, key: UnitKey) -> (Contrib, BTreeSet<String>) {
        let sels = rule_selectors(&self.set.policies[key.0], key.1);
        for (name, (sel, v)) in &sels {
            self.track(name, sel, *v, key);
        }
        let nonempty: BTreeSet<String> =
            sels.keys().filter(|n| self.selectors.get(*n).is_some_and(|s| !s.addrs.is_empty())).cloned().collect();
        let [inet, bridge] = scratch();
        let mut ctx = Ctx::new(&self.set, &[], inet);
        ctx.nonempty = Some(&nonempty);
        ctx.policy_chain(&self.set.policies[key.0], key.1);
        let inet = ctx.inet;
        (Contrib::of([inet, bridge]), sels.into_keys().collect())
    }

    /// Selector sets just made live get the addresses of the endpoints they pick.
    fn fill_sets(&mut self, created: &[Key]) {
        for (t, name) in created {
            let Some(slot) = self.selectors.get(name) else { continue };
            let elems: Vec<SetElem> = slot.addrs.keys().map(|a| SetElem::Addr(*a)).collect();
            self.live.add_elems(*t, name, elems.into_iter());
        }
    }
}

/// The same policies in the same order with the same selection, tiers and namespaces: only
/// rules may differ.
fn only_rules_differ(a: &PolicySet, b: &PolicySet) -> bool {
    a.tiers == b.tiers
        && a.namespace_labels == b.namespace_labels
        && a.policies.len() == b.policies.len()
        && a.policies.iter().zip(&b.policies).all(|(p, q)| {
            (&p.kind, &p.name, &p.namespace, &p.tier, &p.order, &p.selector, &p.namespace_selector, &p.types)
                == (&q.kind, &q.name, &q.namespace, &q.tier, &q.order, &q.selector, &q.namespace_selector, &q.types)
        })
}
