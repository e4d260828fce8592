//! Desired state: the whole content of one table as data ([`TableState`]),
//! and the transaction that turns one state into another
//! ([`TableState::diff`]) or builds one from nothing
//! ([`TableState::replace`]). Plus the read-back a CHECK needs: whether a
//! table exists, its chains with their rule counts, a verdict map's
//! entries, all over netlink.
//!
//! A caller (e.g. the policy engine) keeps the state it applied last,
//! computes the next one, and commits `diff(prev, next)`: only the sets,
//! elements, map entries and chains that differ are touched, in one atomic
//! transaction.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::build::{check_name, dump_request, get_request};
use super::io::{dump, open_socket, DumpError, DUMP_SEQ};
use super::parse::{attr_str, be32, chain_of, data_value, find_attr, parse_attrs, parse_comment, rule_of};
use super::txn::{BaseChain, Rule, SetDef, SetElem, SetKey, TableRef, Transaction, Verdict};
use super::wire::*;
use super::{retry_interrupted, NftError, NftResult};

/// A named set (not a map) with its elements.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetState {
    pub def: SetDef,
    /// In an interval set, elements must not overlap (the kernel refuses
    /// overlapping intervals); duplicates are sent once.
    pub elems: Vec<SetElem>,
}

/// A verdict map with its entries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MapState {
    pub def: SetDef,
    /// `key : verdict`; a key appears at most once.
    pub entries: Vec<(SetElem, Verdict)>,
}

/// A chain: base chain (hook, priority, policy) or regular chain, and its
/// rules in order.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ChainState {
    pub base: Option<BaseChain>,
    pub rules: Vec<Rule>,
}

/// The whole desired content of one table. The map keys are the object
/// names (and must equal `def.name` of sets and maps).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TableState {
    pub table: TableRef,
    pub sets: BTreeMap<String, SetState>,
    pub maps: BTreeMap<String, MapState>,
    pub chains: BTreeMap<String, ChainState>,
}

/// Elements in their first-seen order, each once.
fn dedup<T: Clone + Eq + std::hash::Hash>(items: &[T]) -> Vec<T> {
    let mut seen = HashSet::with_capacity(items.len());
    items.iter().filter(|i| seen.insert(*i)).cloned().collect()
}

impl TableState {
    /// An empty table.
    pub fn new(table: TableRef) -> Self {
        TableState { table, sets: BTreeMap::new(), maps: BTreeMap::new(), chains: BTreeMap::new() }
    }

    /// Adds (or replaces) a set with its elements.
    pub fn put_set(&mut self, def: SetDef, elems: Vec<SetElem>) {
        self.sets.insert(def.name.clone(), SetState { def, elems });
    }

    /// Adds (or replaces) a verdict map with its entries.
    pub fn put_map(&mut self, def: SetDef, entries: Vec<(SetElem, Verdict)>) {
        self.maps.insert(def.name.clone(), MapState { def, entries });
    }

    /// Adds (or replaces) a chain with its rules.
    pub fn put_chain(&mut self, name: impl Into<String>, base: Option<BaseChain>, rules: Vec<Rule>) {
        self.chains.insert(name.into(), ChainState { base, rules });
    }

    /// Number of rules in all chains.
    pub fn rule_count(&self) -> usize {
        self.chains.values().map(|c| c.rules.len()).sum()
    }

    /// Names agree with definitions, sets are sets and maps are verdict
    /// maps, a map key appears once. Checked by [`diff`](Self::diff) and
    /// [`replace`](Self::replace) before they queue anything.
    pub fn validate(&self) -> NftResult<()> {
        for (name, s) in &self.sets {
            if *name != s.def.name || s.def.verdict_map {
                return Err(NftError::Invalid(format!("set {name}: name or kind does not match its definition")));
            }
        }
        for (name, m) in &self.maps {
            if *name != m.def.name || !m.def.verdict_map {
                return Err(NftError::Invalid(format!("map {name}: name or kind does not match its definition")));
            }
            let mut keys = HashSet::with_capacity(m.entries.len());
            if let Some((k, _)) = m.entries.iter().find(|(k, _)| !keys.insert(k)) {
                return Err(NftError::Invalid(format!("map {name}: key {k:?} appears twice")));
            }
        }
        if let Some(clash) = self.sets.keys().find(|n| self.maps.contains_key(*n)) {
            return Err(NftError::Invalid(format!("{clash} is both a set and a map")));
        }
        Ok(())
    }

    /// Queues on `x` the creation of this table from nothing: `destroy
    /// table` (Linux >= 6.3: no error if absent) then the table, its sets
    /// with their elements, its maps and chains (empty), every chain's
    /// rules, and last the map entries (which jump to chains). Committed in
    /// one transaction, the table is replaced atomically: packets see the
    /// old table or the new one, never none.
    pub fn replace(next: &TableState, x: &mut Transaction) -> NftResult<()> {
        next.validate()?;
        let t = &next.table;
        x.destroy_table(t)?;
        x.add_table(t)?;
        next.create_contents(x)
    }

    /// [`replace`](Self::replace), the new table carrying `comment` (what
    /// [`table_comment`] reads back; e.g. the name of its owner).
    pub fn replace_with_comment(next: &TableState, comment: &str, x: &mut Transaction) -> NftResult<()> {
        next.validate()?;
        let t = &next.table;
        x.destroy_table(t)?;
        x.add_table_with_comment(t, comment)?;
        next.create_contents(x)
    }

    /// Everything inside an existing, empty table.
    fn create_contents(&self, x: &mut Transaction) -> NftResult<()> {
        let t = &self.table;
        for s in self.sets.values() {
            x.add_set(t, &s.def)?;
            x.add_elements(t, &s.def, &dedup(&s.elems))?;
        }
        for m in self.maps.values() {
            x.add_set(t, &m.def)?;
        }
        for (name, c) in &self.chains {
            x.add_chain(t, name, c.base.as_ref())?;
        }
        for (name, c) in &self.chains {
            for r in &c.rules {
                x.add_rule(t, name, r)?;
            }
        }
        for m in self.maps.values() {
            x.add_map_entries(t, &m.def, &m.entries)?;
        }
        Ok(())
    }

    /// Whether `diff` can go from `prev` to `next` in place: the same
    /// table, and every set, map and chain present in both has the same
    /// definition (key type, flags; base chain type, hook and priority; a
    /// base chain's policy may change). The kernel cannot change those on
    /// a live object. When they differ, [`diff`](Self::diff) replaces.
    pub fn compatible(prev: &TableState, next: &TableState) -> bool {
        let same_base = |a: &Option<BaseChain>, b: &Option<BaseChain>| match (a, b) {
            (None, None) => true,
            (Some(a), Some(b)) => (a.chain_type, a.hook, a.priority) == (b.chain_type, b.hook, b.priority),
            _ => false,
        };
        prev.table == next.table
            && next.sets.iter().all(|(n, s)| prev.sets.get(n).is_none_or(|p| p.def == s.def))
            && next.maps.iter().all(|(n, m)| prev.maps.get(n).is_none_or(|p| p.def == m.def))
            && next.chains.iter().all(|(n, c)| prev.chains.get(n).is_none_or(|p| same_base(&p.base, &c.base)))
            // a name that moves between set and map
            && next.sets.keys().all(|n| !prev.maps.contains_key(n))
            && next.maps.keys().all(|n| !prev.sets.contains_key(n))
    }

    /// Queues on `x` only the operations that turn `prev` (assumed to be
    /// what the kernel has) into `next`, in this order:
    ///
    /// 1. new sets, maps and chains, created empty; a base chain whose
    ///    policy changed is re-added with the new policy;
    /// 2. set elements: removed ones deleted, then new ones added;
    /// 3. every chain whose rules differ is flushed and refilled, and every
    ///    removed chain flushed;
    /// 4. map entries removed or changed are deleted, then new and changed
    ///    ones added;
    /// 5. removed maps, then removed chains, then removed sets deleted:
    ///    nothing references them any more.
    ///
    /// Equal states queue nothing. When an object present in both has a
    /// different definition (a set's key type or flags, a base chain's
    /// type, hook or priority, a set that became a map), which the kernel
    /// cannot change in place, the whole table is replaced instead (as by
    /// [`replace`](Self::replace)), still in the one transaction.
    pub fn diff(prev: &TableState, next: &TableState, x: &mut Transaction) -> NftResult<()> {
        next.validate()?;
        if prev.table != next.table {
            return Err(NftError::Invalid(format!(
                "diff between tables {} {} and {} {}",
                prev.table.family, prev.table.name, next.table.family, next.table.name
            )));
        }
        if !Self::compatible(prev, next) {
            return Self::replace(next, x);
        }
        let t = &next.table;
        // 1. creations
        for (n, s) in &next.sets {
            if !prev.sets.contains_key(n) {
                x.add_set(t, &s.def)?;
            }
        }
        for (n, m) in &next.maps {
            if !prev.maps.contains_key(n) {
                x.add_set(t, &m.def)?;
            }
        }
        for (n, c) in &next.chains {
            match prev.chains.get(n) {
                None => {
                    x.add_chain(t, n, c.base.as_ref())?;
                }
                Some(p) if p.base != c.base => {
                    x.add_chain(t, n, c.base.as_ref())?;
                }
                Some(_) => {}
            }
        }
        // 2. set elements
        for (n, s) in &next.sets {
            let old: HashSet<&SetElem> = prev.sets.get(n).map(|p| p.elems.iter().collect()).unwrap_or_default();
            let new: HashSet<&SetElem> = s.elems.iter().collect();
            let gone: Vec<SetElem> = dedup(prev.sets.get(n).map_or(&[][..], |p| &p.elems[..]))
                .into_iter()
                .filter(|e| !new.contains(e))
                .collect();
            let added: Vec<SetElem> = dedup(&s.elems).into_iter().filter(|e| !old.contains(e)).collect();
            x.delete_elements(t, &s.def, &gone)?;
            x.add_elements(t, &s.def, &added)?;
        }
        // 3. rules
        for (n, c) in &next.chains {
            let old = prev.chains.get(n);
            if old.is_some_and(|p| p.rules == c.rules) {
                continue;
            }
            if old.is_some_and(|p| !p.rules.is_empty()) {
                x.flush_chain(t, n)?;
            }
            for r in &c.rules {
                x.add_rule(t, n, r)?;
            }
        }
        for (n, p) in &prev.chains {
            if !next.chains.contains_key(n) && !p.rules.is_empty() {
                x.flush_chain(t, n)?;
            }
        }
        // 4. map entries
        for (n, m) in &next.maps {
            let old: HashMap<&SetElem, &Verdict> =
                prev.maps.get(n).map(|p| p.entries.iter().map(|(k, v)| (k, v)).collect()).unwrap_or_default();
            let new: HashMap<&SetElem, &Verdict> = m.entries.iter().map(|(k, v)| (k, v)).collect();
            let gone: Vec<SetElem> = prev
                .maps
                .get(n)
                .map_or(&[][..], |p| &p.entries[..])
                .iter()
                .filter(|(k, v)| new.get(k) != Some(&v))
                .map(|(k, _)| k.clone())
                .collect();
            let added: Vec<(SetElem, Verdict)> =
                m.entries.iter().filter(|(k, v)| old.get(k) != Some(&v)).cloned().collect();
            x.delete_map_entries(t, &m.def, &gone)?;
            x.add_map_entries(t, &m.def, &added)?;
        }
        // 5. deletions
        for n in prev.maps.keys() {
            if !next.maps.contains_key(n) {
                x.delete_set(t, n)?;
            }
        }
        for n in prev.chains.keys() {
            if !next.chains.contains_key(n) {
                x.delete_chain(t, n)?;
            }
        }
        for n in prev.sets.keys() {
            if !next.sets.contains_key(n) {
                x.delete_set(t, n)?;
            }
        }
        Ok(())
    }
}

// ---------------------------------------------------------------------------
// read-back
// ---------------------------------------------------------------------------

fn read<T>(what: &str, mut f: impl FnMut() -> Result<T, DumpError>) -> NftResult<T> {
    match retry_interrupted(&mut f) {
        Ok(v) => Ok(v),
        Err(DumpError::Nft(e)) => Err(e),
        Err(DumpError::Interrupted) => {
            Err(NftError::Protocol(format!("{what}: dump kept being interrupted by ruleset changes")))
        }
    }
}

/// Whether table `t` exists (one single-object get).
pub fn table_exists(t: &TableRef) -> NftResult<bool> {
    check_name("table", &t.name)?;
    let sock = open_socket()?;
    let req = get_request(NFT_MSG_GETTABLE, NLM_F_ACK, t.family, DUMP_SEQ + 5, &[(NFTA_TABLE_NAME, &t.name)]);
    let what = format!("get table {} {}", t.family, t.name);
    read(&what, || {
        let mut found = false;
        dump(&sock, &req, nft_type(NFT_MSG_NEWTABLE), &what, |_| found = true)?;
        Ok(found)
    })
}

/// Whether table `t` exists and, if so, its comment (`Some(None)`: a table
/// without one): one single-object get.
pub fn table_comment(t: &TableRef) -> NftResult<Option<Option<String>>> {
    check_name("table", &t.name)?;
    let sock = open_socket()?;
    let req = get_request(NFT_MSG_GETTABLE, NLM_F_ACK, t.family, DUMP_SEQ + 10, &[(NFTA_TABLE_NAME, &t.name)]);
    let what = format!("get table {} {}", t.family, t.name);
    read(&what, || {
        let mut found = None;
        dump(&sock, &req, nft_type(NFT_MSG_NEWTABLE), &what, |p| {
            let attrs = parse_attrs(p.get(NFGENMSG_LEN..).unwrap_or(&[]));
            found = Some(find_attr(&attrs, NFTA_TABLE_USERDATA).and_then(parse_comment));
        })?;
        Ok(found)
    })
}

/// The verdict maps of table `t` (as found in the kernel, whatever wrote
/// them), each with its number of entries; empty if the table does not
/// exist. One set dump and one element dump per verdict map.
pub fn verdict_map_sizes(t: &TableRef) -> NftResult<BTreeMap<String, usize>> {
    check_name("table", &t.name)?;
    let sock = open_socket()?;
    let what = format!("list verdict maps of table {} {}", t.family, t.name);
    let req = dump_request(NFT_MSG_GETSET, t.family, DUMP_SEQ + 12, &[(NFTA_SET_TABLE, &t.name)]);
    let maps = read(&what, || {
        let mut maps = Vec::new();
        dump(&sock, &req, nft_type(NFT_MSG_NEWSET), &what, |p| {
            let attrs = parse_attrs(p.get(NFGENMSG_LEN..).unwrap_or(&[]));
            let table = find_attr(&attrs, NFTA_SET_TABLE).map(attr_str);
            let name = find_attr(&attrs, NFTA_SET_NAME).map(attr_str);
            let flags = find_attr(&attrs, NFTA_SET_FLAGS).and_then(be32).unwrap_or(0);
            let data = find_attr(&attrs, NFTA_SET_DATA_TYPE).and_then(be32);
            if let (Some(table), Some(name)) = (table, name) {
                if table == t.name && flags & NFT_SET_MAP != 0 && data == Some(NFT_DATA_VERDICT) {
                    maps.push(name);
                }
            }
        })?;
        Ok(maps)
    })?;
    let mut out = BTreeMap::new();
    for (i, name) in maps.into_iter().enumerate() {
        let what = format!("list elements of map {name} in table {} {}", t.family, t.name);
        let req = dump_request(
            NFT_MSG_GETSETELEM,
            t.family,
            DUMP_SEQ + 32 + i as u32,
            &[(NFTA_SET_ELEM_LIST_TABLE, &t.name), (NFTA_SET_ELEM_LIST_SET, &name)],
        );
        let n = read(&what, || {
            let mut n = 0;
            dump(&sock, &req, nft_type(NFT_MSG_NEWSETELEM), &what, |p| {
                let attrs = parse_attrs(p.get(NFGENMSG_LEN..).unwrap_or(&[]));
                if let Some(list) = find_attr(&attrs, NFTA_SET_ELEM_LIST_ELEMENTS) {
                    n += parse_attrs(list).iter().filter(|(ty, _)| *ty == NFTA_LIST_ELEM).count();
                }
            })?;
            Ok(n)
        })?;
        out.insert(name, n);
    }
    Ok(out)
}

/// The chains of table `t`, each with its number of rules; `None` if the
/// table does not exist. One chain dump and one rule dump.
pub fn chain_rule_counts(t: &TableRef) -> NftResult<Option<BTreeMap<String, usize>>> {
    if !table_exists(t)? {
        return Ok(None);
    }
    let sock = open_socket()?;
    let what = format!("list chains and rules of table {} {}", t.family, t.name);
    read(&what, || {
        let mut counts: BTreeMap<String, usize> = BTreeMap::new();
        // chain dumps cannot be filtered by table in the kernel
        let req = dump_request(NFT_MSG_GETCHAIN, t.family, DUMP_SEQ + 6, &[]);
        dump(&sock, &req, nft_type(NFT_MSG_NEWCHAIN), &what, |p| {
            if let Some(c) = chain_of(p) {
                if c.table == t.name {
                    counts.insert(c.name, 0);
                }
            }
        })?;
        let req = dump_request(NFT_MSG_GETRULE, t.family, DUMP_SEQ + 7, &[(NFTA_RULE_TABLE, &t.name)]);
        dump(&sock, &req, nft_type(NFT_MSG_NEWRULE), &what, |p| {
            if let Some(r) = rule_of(p) {
                if r.table == t.name {
                    *counts.entry(r.chain).or_default() += 1;
                }
            }
        })?;
        Ok(Some(counts))
    })
}

/// The number of rules of each of `chains` in table `t` (`None` for a
/// chain, or table, that does not exist): per chain one single-object get
/// and one rule dump the kernel filters by chain, on one socket. Cheaper
/// than [`chain_rule_counts`] when a few chains of a large table matter.
pub fn rule_counts_of(t: &TableRef, chains: &[&str]) -> NftResult<BTreeMap<String, Option<usize>>> {
    check_name("table", &t.name)?;
    for c in chains {
        check_name("chain", c)?;
    }
    let sock = open_socket()?;
    let mut out = BTreeMap::new();
    for (i, chain) in chains.iter().enumerate() {
        let what = format!("count rules of chain {chain} in table {} {}", t.family, t.name);
        let seq = DUMP_SEQ + 16 + 2 * i as u32;
        let get = get_request(
            NFT_MSG_GETCHAIN,
            NLM_F_ACK,
            t.family,
            seq,
            &[(NFTA_CHAIN_TABLE, &t.name), (NFTA_CHAIN_NAME, chain)],
        );
        let rules =
            dump_request(NFT_MSG_GETRULE, t.family, seq + 1, &[(NFTA_RULE_TABLE, &t.name), (NFTA_RULE_CHAIN, chain)]);
        let count = read(&what, || {
            let mut exists = false;
            dump(&sock, &get, nft_type(NFT_MSG_NEWCHAIN), &what, |_| exists = true)?;
            if !exists {
                return Ok(None);
            }
            let mut n = 0;
            dump(&sock, &rules, nft_type(NFT_MSG_NEWRULE), &what, |p| {
                if rule_of(p).is_some_and(|r| r.table == t.name && r.chain == *chain) {
                    n += 1;
                }
            })?;
            Ok(Some(n))
        })?;
        out.insert(chain.to_string(), count);
    }
    Ok(out)
}

/// The verdict of `key` in verdict map `def` of table `t`, `None` if the
/// table, the map or the entry does not exist: one single-element get
/// (`nft get element`), not a dump of the whole map.
pub fn map_entry(t: &TableRef, def: &SetDef, key: &SetElem) -> NftResult<Option<Verdict>> {
    check_name("table", &t.name)?;
    check_name("map", &def.name)?;
    if !def.verdict_map || def.interval {
        return Err(NftError::Invalid(format!("{} is not a (non-interval) verdict map", def.name)));
    }
    let keys = super::txn::elem_keys(def, key)?;
    let [(k, _)] = keys.as_slice() else {
        return Err(NftError::Invalid(format!("{key:?} is not a single key of map {}", def.name)));
    };
    let req = elem_get_request(t, &def.name, k);
    let sock = open_socket()?;
    let what = format!("get element of map {} in table {} {}", def.name, t.family, t.name);
    read(&what, || {
        let mut found = None;
        let mut bad = None;
        dump(&sock, &req, nft_type(NFT_MSG_NEWSETELEM), &what, |p| match map_elems_of(p, def) {
            Ok(v) => found = v.into_iter().find(|(e, _)| e == key).map(|(_, v)| v),
            Err(e) => bad = Some(e),
        })?;
        match bad {
            Some(e) => Err(DumpError::Nft(e)),
            None => Ok(found),
        }
    })
}

/// `NFT_MSG_GETSETELEM` for one key, without `NLM_F_DUMP`: answered by
/// one NEWSETELEM and the ack, or by ENOENT.
pub(super) fn elem_get_request(t: &TableRef, set: &str, key: &[u8]) -> Vec<u8> {
    use super::build::{msg_end, msg_start, nest_end, nest_start, put_data_value, put_strz};
    let mut buf = Vec::with_capacity(96);
    let m = msg_start(
        &mut buf,
        nft_type(NFT_MSG_GETSETELEM),
        NLM_F_REQUEST | NLM_F_ACK,
        DUMP_SEQ + 9,
        t.family.nfproto(),
        0,
    );
    put_strz(&mut buf, NFTA_SET_ELEM_LIST_TABLE, &t.name);
    put_strz(&mut buf, NFTA_SET_ELEM_LIST_SET, set);
    let list = nest_start(&mut buf, NFTA_SET_ELEM_LIST_ELEMENTS);
    let e = nest_start(&mut buf, NFTA_LIST_ELEM);
    put_data_value(&mut buf, NFTA_SET_ELEM_KEY, key);
    nest_end(&mut buf, e);
    nest_end(&mut buf, list);
    msg_end(&mut buf, m);
    buf
}

/// The entries of verdict map `def` in table `t` (empty if the table or
/// the map does not exist), in the kernel's order.
pub fn map_entries(t: &TableRef, def: &SetDef) -> NftResult<Vec<(SetElem, Verdict)>> {
    check_name("table", &t.name)?;
    check_name("map", &def.name)?;
    if !def.verdict_map || def.interval {
        return Err(NftError::Invalid(format!("{} is not a (non-interval) verdict map", def.name)));
    }
    let sock = open_socket()?;
    let req = dump_request(
        NFT_MSG_GETSETELEM,
        t.family,
        DUMP_SEQ + 8,
        &[(NFTA_SET_ELEM_LIST_TABLE, &t.name), (NFTA_SET_ELEM_LIST_SET, &def.name)],
    );
    let what = format!("list elements of map {} in table {} {}", def.name, t.family, t.name);
    read(&what, || {
        let mut out = Vec::new();
        let mut bad = None;
        dump(&sock, &req, nft_type(NFT_MSG_NEWSETELEM), &what, |p| match map_elems_of(p, def) {
            Ok(v) => out.extend(v),
            Err(e) => bad = Some(e),
        })?;
        match bad {
            Some(e) => Err(DumpError::Nft(e)),
            None => Ok(out),
        }
    })
}

/// The `key : verdict` entries of one NEWSETELEM message.
pub(super) fn map_elems_of(payload: &[u8], def: &SetDef) -> NftResult<Vec<(SetElem, Verdict)>> {
    let bad = |why: &str| NftError::Protocol(format!("element of map {}: {why}", def.name));
    let attrs = parse_attrs(payload.get(NFGENMSG_LEN..).ok_or_else(|| bad("short message"))?);
    let Some(list) = find_attr(&attrs, NFTA_SET_ELEM_LIST_ELEMENTS) else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (ty, elem) in parse_attrs(list) {
        if ty != NFTA_LIST_ELEM {
            continue;
        }
        let e = parse_attrs(elem);
        let key = find_attr(&e, NFTA_SET_ELEM_KEY).and_then(data_value).ok_or_else(|| bad("no key"))?;
        let key = elem_of_key(def.key, &key).ok_or_else(|| bad(&format!("key {key:02x?} is not a {:?}", def.key)))?;
        let data = parse_attrs(find_attr(&e, NFTA_SET_ELEM_DATA).ok_or_else(|| bad("no verdict"))?);
        let v = parse_attrs(find_attr(&data, NFTA_DATA_VERDICT).ok_or_else(|| bad("no verdict"))?);
        let code = find_attr(&v, NFTA_VERDICT_CODE).and_then(be32).ok_or_else(|| bad("no verdict code"))?;
        let chain = find_attr(&v, NFTA_VERDICT_CHAIN).map(attr_str);
        let verdict = match (code, chain) {
            (NF_ACCEPT, _) => Verdict::Accept,
            (NF_DROP, _) => Verdict::Drop,
            (NFT_RETURN, _) => Verdict::Return,
            (NFT_JUMP, Some(c)) => Verdict::Jump(c),
            (NFT_GOTO, Some(c)) => Verdict::Goto(c),
            (code, _) => return Err(bad(&format!("verdict code {code:#x}"))),
        };
        out.push((key, verdict));
    }
    Ok(out)
}

/// A set key as the kernel stores it, back into an element.
fn elem_of_key(key: SetKey, b: &[u8]) -> Option<SetElem> {
    Some(match key {
        SetKey::Ipv4Addr => SetElem::Addr(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        SetKey::Ipv6Addr => SetElem::Addr(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        SetKey::InetService => SetElem::Port(u16::from_be_bytes(b.try_into().ok()?)),
        SetKey::IfName => SetElem::IfName(ifname_of(b)?),
        SetKey::IfNameIpv4 | SetKey::IfNameIpv6 => {
            let (name, addr) = (b.get(..16)?, b.get(16..)?);
            let addr = match key {
                SetKey::IfNameIpv4 => IpAddr::from(<[u8; 4]>::try_from(addr).ok()?),
                _ => IpAddr::from(<[u8; 16]>::try_from(addr).ok()?),
            };
            SetElem::IfNameAddr(ifname_of(name)?, addr)
        }
    })
}

/// An interface name from its NUL-padded key bytes.
fn ifname_of(b: &[u8]) -> Option<String> {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8(b[..end].to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::super::txn::{Action, ChainPolicy, Dir, Hook, IpVersion, Match};
    use super::super::Family;
    use super::*;

    fn addr(s: &str) -> SetElem {
        SetElem::Addr(s.parse().unwrap())
    }

    /// The ops a diff or replace queues, as the batch describes them,
    /// without the ` in table inet t` suffix.
    fn ops(f: impl FnOnce(&mut Transaction) -> NftResult<()>) -> Vec<String> {
        let mut x = Transaction::new();
        f(&mut x).unwrap();
        let (_, _, ops) = x.into_batch().finish();
        ops.into_iter().map(|(_, op)| op.replace(" in table inet t", "")).collect()
    }

    fn base() -> TableState {
        let mut s = TableState::new(TableRef::new(Family::Inet, "t"));
        s.put_set(SetDef::set("a4", SetKey::Ipv4Addr), vec![addr("10.0.0.1"), addr("10.0.0.2")]);
        s.put_map(SetDef::verdict_map("ing4", SetKey::Ipv4Addr), vec![(addr("10.0.0.1"), Verdict::Jump("ep1".into()))]);
        let dispatch = Rule {
            action: Some(Action::AddrVmap { version: IpVersion::V4, dir: Dir::Dst, map: "ing4".into() }),
            ..Default::default()
        };
        s.put_chain("fwd", Some(BaseChain::filter(Hook::Forward, 0, ChainPolicy::Accept)), vec![dispatch]);
        let from_a4 = Match::AddrInSet { version: IpVersion::V4, dir: Dir::Src, set: "a4".into(), negate: false };
        s.put_chain("ep1", None, vec![Rule::new(vec![from_a4], Verdict::Accept), Rule::new(vec![], Verdict::Drop)]);
        s
    }

    #[test]
    fn replace_destroys_then_creates_in_dependency_order() {
        let s = base();
        assert_eq!(
            ops(|x| TableState::replace(&s, x)),
            [
                "destroy table inet t",
                "add table inet t",
                "add set a4",
                "add elements of set a4",
                "add set ing4",
                "add chain ep1",
                "add chain fwd",
                "add rule to chain ep1",
                "add rule to chain ep1",
                "add rule to chain fwd",
                "add elements of set ing4",
            ]
        );
    }

    #[test]
    fn equal_states_queue_nothing() {
        assert!(ops(|x| TableState::diff(&base(), &base(), x)).is_empty());
    }

    #[test]
    fn one_element_is_one_message() {
        let mut next = base();
        next.sets.get_mut("a4").unwrap().elems.push(addr("10.0.0.3"));
        assert_eq!(ops(|x| TableState::diff(&base(), &next, x)), ["add elements of set a4"]);
        let mut next = base();
        next.sets.get_mut("a4").unwrap().elems.remove(0);
        assert_eq!(ops(|x| TableState::diff(&base(), &next, x)), ["delete elements of set a4"]);
    }

    #[test]
    fn changed_chain_is_flushed_and_refilled_and_map_entry_replaced() {
        let mut next = base();
        next.chains.get_mut("ep1").unwrap().rules.pop();
        next.put_map(SetDef::verdict_map("ing4", SetKey::Ipv4Addr), vec![(addr("10.0.0.1"), Verdict::Drop)]);
        assert_eq!(
            ops(|x| TableState::diff(&base(), &next, x)),
            ["flush chain ep1", "add rule to chain ep1", "delete elements of set ing4", "add elements of set ing4"]
        );
    }

    #[test]
    fn new_objects_first_removed_ones_last() {
        // endpoint 10.0.0.2 gets its own chain ep2 jumping on a new set; ep1 and a4 go away
        let prev = base();
        let mut next = base();
        next.sets.remove("a4");
        next.chains.remove("ep1");
        next.put_set(SetDef::interval_set("n4", SetKey::Ipv4Addr), vec![SetElem::Net("10.1.0.0/16".parse().unwrap())]);
        let from_n4 = Match::AddrInSet { version: IpVersion::V4, dir: Dir::Src, set: "n4".into(), negate: false };
        next.put_chain("ep2", None, vec![Rule::new(vec![from_n4], Verdict::Accept)]);
        next.put_map(
            SetDef::verdict_map("ing4", SetKey::Ipv4Addr),
            vec![(addr("10.0.0.2"), Verdict::Goto("ep2".into()))],
        );
        assert_eq!(
            ops(|x| TableState::diff(&prev, &next, x)),
            [
                "add set n4",
                "add chain ep2",
                "add elements of set n4",
                "add rule to chain ep2",
                "flush chain ep1",
                "delete elements of set ing4",
                "add elements of set ing4",
                "delete chain ep1",
                "delete set a4",
            ]
        );
    }

    #[test]
    fn policy_change_readds_chain_hook_change_replaces_table() {
        let mut next = base();
        next.chains.get_mut("fwd").unwrap().base = Some(BaseChain::filter(Hook::Forward, 0, ChainPolicy::Drop));
        assert_eq!(ops(|x| TableState::diff(&base(), &next, x)), ["add chain fwd"]);
        next.chains.get_mut("fwd").unwrap().base = Some(BaseChain::filter(Hook::Input, 0, ChainPolicy::Accept));
        assert_eq!(ops(|x| TableState::diff(&base(), &next, x))[..2], ["destroy table inet t", "add table inet t"]);
        let mut next = base();
        next.put_set(SetDef::interval_set("a4", SetKey::Ipv4Addr), vec![]);
        assert_eq!(ops(|x| TableState::diff(&base(), &next, x))[0], "destroy table inet t");
    }

    #[test]
    fn inconsistent_states_are_refused_before_anything_is_queued() {
        let mut bad = base();
        bad.put_map(
            SetDef::verdict_map("ing4", SetKey::Ipv4Addr),
            vec![(addr("10.0.0.1"), Verdict::Accept), (addr("10.0.0.1"), Verdict::Drop)],
        );
        let mut x = Transaction::new();
        assert!(matches!(TableState::diff(&base(), &bad, &mut x), Err(NftError::Invalid(_))));
        assert!(x.is_empty());
        let mut bad = base();
        bad.sets.insert("other".into(), bad.sets["a4"].clone());
        assert!(TableState::replace(&bad, &mut x).is_err());
        let other = TableState::new(TableRef::new(Family::Inet, "u"));
        assert!(TableState::diff(&base(), &other, &mut x).is_err());
        assert!(x.is_empty());
    }

    #[test]
    fn state_round_trips_through_json() {
        let s = base();
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<TableState>(&json).unwrap(), s);
    }

    #[test]
    fn map_elements_parse_back() {
        use super::super::build::{nest_end, nest_start, put_attr, put_data_value, put_strz, put_verdict};
        let def = SetDef::verdict_map("m", SetKey::Ipv6Addr);
        let mut p = vec![NFPROTO_INET, 0, 0, 0];
        put_strz(&mut p, NFTA_SET_ELEM_LIST_TABLE, "t");
        put_strz(&mut p, NFTA_SET_ELEM_LIST_SET, "m");
        let list = nest_start(&mut p, NFTA_SET_ELEM_LIST_ELEMENTS);
        for (key, code, chain) in [("fd00::1", NFT_JUMP, Some("c1")), ("fd00::2", NF_DROP, None)] {
            let e = nest_start(&mut p, NFTA_LIST_ELEM);
            let a: std::net::Ipv6Addr = key.parse().unwrap();
            put_data_value(&mut p, NFTA_SET_ELEM_KEY, &a.octets());
            let d = nest_start(&mut p, NFTA_SET_ELEM_DATA);
            put_verdict(&mut p, code, chain);
            nest_end(&mut p, d);
            put_attr(&mut p, NFTA_SET_ELEM_FLAGS, &0u32.to_be_bytes());
            nest_end(&mut p, e);
        }
        nest_end(&mut p, list);
        assert_eq!(
            map_elems_of(&p, &def).unwrap(),
            [(addr("fd00::1"), Verdict::Jump("c1".into())), (addr("fd00::2"), Verdict::Drop)]
        );
        assert!(map_elems_of(&p, &SetDef::verdict_map("m", SetKey::Ipv4Addr)).is_err());
    }

    #[test]
    fn single_element_get_is_not_a_dump() {
        use super::super::parse::parse_msgs;
        let req = elem_get_request(&TableRef::new(Family::Inet, "t"), "m", &[10, 0, 0, 1]);
        let msgs = parse_msgs(&req).unwrap();
        assert_eq!(msgs.len(), 1);
        assert_eq!(msgs[0].ty, nft_type(NFT_MSG_GETSETELEM));
        assert_eq!(msgs[0].flags, NLM_F_REQUEST | NLM_F_ACK);
        let attrs = parse_attrs(&msgs[0].payload[NFGENMSG_LEN..]);
        assert_eq!(attr_str(find_attr(&attrs, NFTA_SET_ELEM_LIST_SET).unwrap()), "m");
        let list = parse_attrs(find_attr(&attrs, NFTA_SET_ELEM_LIST_ELEMENTS).unwrap());
        let elem = parse_attrs(list[0].1);
        assert_eq!(find_attr(&elem, NFTA_SET_ELEM_KEY).and_then(data_value), Some(vec![10, 0, 0, 1]));
    }
}
