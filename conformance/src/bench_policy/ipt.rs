//! The baseline: the same policy rendered the way Felix's iptables dataplane does it, as one
//! `iptables-restore` file plus the ipsets its selectors need (`ipset restore`).
//!
//! Layout (IPv4 only, table `filter`):
//! * `FORWARD`: conntrack `RELATED,ESTABLISHED` accepted, then one `-s ADDR -j cali-fw-N` per
//!   endpoint address (egress), then one `-d ADDR -j cali-tw-N` (ingress): a linear walk by
//!   address. `INPUT` dispatches the egress chains, `OUTPUT` the ingress ones, likewise.
//! * One chain per endpoint and direction that a policy applies to, holding every rule of
//!   every applying policy inline, in evaluation order (tier, then policy order, then rule):
//!   first `conntrack INVALID` dropped; Allow is `ACCEPT` in an ingress chain and `RETURN`
//!   in an egress chain (so the ingress chain still runs), Deny `DROP`, Log `LOG`, Pass sets
//!   the pass bit (`0x100000`, as ours) and the tier's later rules and its default deny need
//!   it clear.
//! * Endpoint selectors become `hash:ip` ipsets of the selected endpoints' addresses, lists of
//!   more than one net `hash:net` ipsets; one net is matched inline, ports with `multiport`.
//!
//! Not rendered: IPv6 (ip6tables; the bench's endpoints are IPv4 only), and anti-spoofing
//! (ours does it), so the baseline does a little less than ours.

use std::collections::hash_map::DefaultHasher;
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use policy::eval::selects;
use policy::model::{
    proto, Action, Direction, EndpointSelector, EntityMatch, IpVersion, NamespaceMatch, Policy, PortRange, Rule,
    TierDefault,
};
use policy::{Endpoint, PolicySet};
use testkit::util::R;
use testkit::{bail, ensure};

pub const PASS_BIT: u32 = 0x0010_0000;
const BUILTINS: [&str; 3] = ["INPUT", "FORWARD", "OUTPUT"];

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpSet {
    pub kind: &'static str,
    pub members: BTreeSet<String>,
}

/// A rendered ruleset: ipsets, user chains and the three built-in chains, each chain's rules
/// as `iptables` arguments after `-A CHAIN`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ruleset {
    pub sets: BTreeMap<String, IpSet>,
    pub chains: BTreeMap<String, Vec<String>>,
    pub builtins: BTreeMap<&'static str, Vec<String>>,
}

/// What an incremental update loads: ipset commands before and after, and an
/// `iptables-restore --noflush` file.
#[derive(Debug, Default)]
pub struct Delta {
    pub ipset_before: String,
    pub iptables: String,
    pub ipset_after: String,
    /// Chains (built-in ones included) the file rewrites or changes.
    pub chains: usize,
}

fn hash_name(prefix: &str, key: &str) -> String {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    // ipset names are at most 31 bytes.
    format!("{prefix}{:016x}", h.finish())
}

fn chain_name(ep: usize, dir: Direction) -> String {
    match dir {
        Direction::Egress => format!("cali-fw-{ep}"),
        Direction::Ingress => format!("cali-tw-{ep}"),
    }
}

/// The policies that apply to `ep` in `dir`, in evaluation order (as `policy::evaluate`).
pub fn applying<'a>(set: &'a PolicySet, ep: &Endpoint, dir: Direction) -> Vec<&'a Policy> {
    let mut v: Vec<&Policy> = set.policies.iter().filter(|p| p.types.contains(&dir) && selects(set, p, ep)).collect();
    let key = |o: Option<f64>| o.unwrap_or(f64::INFINITY);
    v.sort_by(|a, b| {
        let (ta, tb) = (set.tier(&a.tier), set.tier(&b.tier));
        key(ta.order)
            .total_cmp(&key(tb.order))
            .then_with(|| ta.name.cmp(&tb.name))
            .then_with(|| key(a.order).total_cmp(&key(b.order)))
            .then_with(|| a.name.cmp(&b.name))
    });
    v
}

fn v4(a: &IpAddr) -> bool {
    a.is_ipv4()
}

struct Renderer<'a> {
    set: &'a PolicySet,
    endpoints: &'a [Endpoint],
    out: Ruleset,
    /// A rule's matches do not depend on the endpoint: rendered once, by the rule's address.
    cache: std::collections::HashMap<*const Rule, Option<String>>,
}

impl Renderer<'_> {
    fn selected(&self, sel: &EndpointSelector) -> BTreeSet<String> {
        self.endpoints
            .iter()
            .filter(|e| match &sel.namespaces {
                NamespaceMatch::Any => true,
                NamespaceMatch::Named(ns) => e.namespace == *ns,
                NamespaceMatch::Selector(s) => s.matches(&self.set.namespace_labels(&e.namespace)),
            })
            .filter(|e| sel.labels.matches(&e.selector_labels()))
            .flat_map(|e| e.addrs.iter().filter(|a| v4(a)).map(ToString::to_string))
            .collect()
    }

    fn selector_set(&mut self, sel: &EndpointSelector) -> String {
        let name = hash_name("cali-s-", &format!("{sel:?}"));
        if !self.out.sets.contains_key(&name) {
            let members = self.selected(sel);
            self.out.sets.insert(name.clone(), IpSet { kind: "hash:ip", members });
        }
        name
    }

    /// A match on a list of nets: inline for one, an ipset for more. `None`: the list has no
    /// IPv4 net, so the positive match never matches (the negated one always does).
    fn nets(&mut self, nets: &[IpNetwork], flag: &str, negate: bool) -> Option<String> {
        let v: BTreeSet<String> = nets.iter().filter(|n| n.is_ipv4()).map(ToString::to_string).collect();
        let bang = if negate { "! " } else { "" };
        match v.len() {
            0 => None,
            1 => Some(format!("{bang}{flag} {}", v.first()?)),
            _ => {
                let name = hash_name("cali-n-", &v.iter().cloned().collect::<Vec<_>>().join(","));
                self.out.sets.insert(name.clone(), IpSet { kind: "hash:net", members: v });
                let dir = if flag == "-s" { "src" } else { "dst" };
                Some(format!("-m set {bang}--match-set {name} {dir}"))
            }
        }
    }

    /// The matches of one side; `None` when it can never match an IPv4 packet.
    fn entity(&mut self, m: &EntityMatch, src: bool) -> R<Option<Vec<String>>> {
        let flag = if src { "-s" } else { "-d" };
        let dir = if src { "src" } else { "dst" };
        let mut v = Vec::new();
        if !m.nets.is_empty() {
            match self.nets(&m.nets, flag, false) {
                Some(x) => v.push(x),
                None => return Ok(None),
            }
        }
        if let Some(x) = self.nets(&m.not_nets, flag, true) {
            v.push(x);
        }
        if let Some(sel) = &m.endpoints {
            let name = self.selector_set(sel);
            v.push(format!("-m set --match-set {name} {dir}"));
        }
        if let Some(sel) = &m.not_endpoints {
            let name = self.selector_set(sel);
            v.push(format!("-m set ! --match-set {name} {dir}"));
        }
        let ports = |ps: &[PortRange]| -> R<String> {
            let n: usize = ps.iter().map(|p| if p.first == p.last { 1 } else { 2 }).sum();
            ensure!(n <= 15, "more than 15 ports in one rule: multiport cannot take them");
            Ok(ps
                .iter()
                .map(|p| if p.first == p.last { p.first.to_string() } else { format!("{}:{}", p.first, p.last) })
                .collect::<Vec<_>>()
                .join(","))
        };
        let pflag = if src { "--sports" } else { "--dports" };
        if !m.ports.is_empty() {
            v.push(format!("-m multiport {pflag} {}", ports(&m.ports)?));
        }
        if !m.not_ports.is_empty() {
            v.push(format!("-m multiport ! {pflag} {}", ports(&m.not_ports)?));
        }
        Ok(Some(v))
    }

    /// A rule's matches, or `None` if it never matches IPv4.
    fn rule(&mut self, r: &Rule) -> R<Option<String>> {
        if r.ip_version == Some(IpVersion::V6) {
            return Ok(None);
        }
        let mut v = Vec::new();
        let name = |p: u8| match p {
            proto::TCP => "tcp".to_string(),
            proto::UDP => "udp".to_string(),
            proto::ICMP => "icmp".to_string(),
            p => p.to_string(),
        };
        match r.protocol {
            Some(proto::ICMPV6) => return Ok(None),
            Some(p) => v.push(format!("-p {}", name(p))),
            None => {}
        }
        if let Some(p) = r.not_protocol {
            v.push(format!("! -p {}", name(p)));
        }
        let icmp = |m: policy::model::IcmpMatch| match m.code {
            Some(c) => format!("{}/{c}", m.icmp_type),
            None => m.icmp_type.to_string(),
        };
        if let Some(m) = r.icmp {
            if r.protocol != Some(proto::ICMP) {
                return Ok(None);
            }
            v.push(format!("-m icmp --icmp-type {}", icmp(m)));
        }
        if let Some(m) = r.not_icmp {
            if r.protocol == Some(proto::ICMP) {
                v.push(format!("-m icmp ! --icmp-type {}", icmp(m)));
            } else if r.protocol.is_none() {
                bail!("notICMP without protocol ICMP is not rendered");
            }
        }
        let ports = [&r.source, &r.destination].iter().any(|e| !e.ports.is_empty() || !e.not_ports.is_empty());
        if ports && !r.protocol.is_some_and(proto::has_ports) {
            return Ok(None);
        }
        match (self.entity(&r.source, true)?, self.entity(&r.destination, false)?) {
            (Some(a), Some(b)) => {
                v.extend(a);
                v.extend(b);
            }
            _ => return Ok(None),
        }
        Ok(Some(v.join(" ")))
    }

    fn chain(&mut self, ep: &Endpoint, dir: Direction) -> R<Option<Vec<String>>> {
        let pols = applying(self.set, ep, dir);
        if pols.is_empty() {
            return Ok(None);
        }
        let allow = if dir == Direction::Ingress { "ACCEPT" } else { "RETURN" };
        let mut out = vec!["-m conntrack --ctstate INVALID -j DROP".to_string()];
        let mut i = 0;
        while i < pols.len() {
            let tier = pols[i].tier.clone();
            let end = i + pols[i..].iter().take_while(|p| p.tier == tier).count();
            let has_pass = pols[i..end].iter().any(|p| p.rules(dir).iter().any(|r| r.action == Action::Pass));
            if has_pass {
                out.push(format!("-j MARK --set-xmark 0x0/{PASS_BIT:#x}"));
            }
            let mut passed = false;
            for p in &pols[i..end] {
                for (k, r) in p.rules(dir).iter().enumerate() {
                    let key: *const Rule = r;
                    let m = match self.cache.get(&key) {
                        Some(m) => m.clone(),
                        None => {
                            let m = self.rule(r)?;
                            self.cache.insert(key, m.clone());
                            m
                        }
                    };
                    let Some(m) = m else { continue };
                    let guard = if passed { format!("-m mark --mark 0x0/{PASS_BIT:#x} ") } else { String::new() };
                    let target = match r.action {
                        Action::Allow => format!("-j {allow}"),
                        Action::Deny => "-j DROP".into(),
                        Action::Log => {
                            let d = if dir == Direction::Ingress { "i" } else { "e" };
                            let mut pre = format!("cali {} {d}{k} ", p.name);
                            pre.truncate(29);
                            format!("-j LOG --log-prefix \"{pre}\"")
                        }
                        Action::Pass => {
                            passed = true;
                            format!("-j MARK --set-xmark {PASS_BIT:#x}/{PASS_BIT:#x}")
                        }
                    };
                    out.push(format!("{guard}{m} {target}").replace("  ", " ").trim().to_string());
                }
            }
            if self.set.tier(&tier).default_action == TierDefault::Deny {
                let guard = if passed { format!("-m mark --mark 0x0/{PASS_BIT:#x} ") } else { String::new() };
                out.push(format!("{guard}-j DROP"));
            }
            i = end;
        }
        if dir == Direction::Ingress {
            out.push("-j ACCEPT".into());
        }
        Ok(Some(out))
    }
}

/// Renders `set` for `endpoints` (chains are named by the endpoint's index).
pub fn render(set: &PolicySet, endpoints: &[Endpoint]) -> R<Ruleset> {
    let mut r = Renderer { set, endpoints, out: Ruleset::default(), cache: Default::default() };
    let est = "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".to_string();
    let mut fwd_e = Vec::new();
    let mut fwd_i = Vec::new();
    for (i, ep) in endpoints.iter().enumerate() {
        for dir in [Direction::Egress, Direction::Ingress] {
            let Some(rules) = r.chain(ep, dir)? else { continue };
            let name = chain_name(i, dir);
            for a in ep.addrs.iter().filter(|a| v4(a)) {
                let rule = match dir {
                    Direction::Egress => format!("-s {a}/32 -j {name}"),
                    Direction::Ingress => format!("-d {a}/32 -j {name}"),
                };
                if dir == Direction::Egress { &mut fwd_e } else { &mut fwd_i }.push(rule);
            }
            r.out.chains.insert(name, rules);
        }
    }
    let mut out = r.out;
    let fwd: Vec<String> =
        std::iter::once(est.clone()).chain(fwd_e.iter().cloned()).chain(fwd_i.iter().cloned()).collect();
    out.builtins.insert("FORWARD", fwd);
    out.builtins.insert("INPUT", std::iter::once(est.clone()).chain(fwd_e).collect());
    out.builtins.insert("OUTPUT", std::iter::once(est).chain(fwd_i).collect());
    Ok(out)
}

impl Ruleset {
    /// Rules in all chains.
    pub fn rule_count(&self) -> usize {
        self.chains.values().chain(self.builtins.values()).map(Vec::len).sum()
    }

    /// `ipset restore` input creating every set with its members.
    pub fn ipset_file(&self) -> String {
        let mut s = String::new();
        for (name, set) in &self.sets {
            create_set(&mut s, name, set);
        }
        s
    }

    /// The whole `iptables-restore` file (replaces the filter table).
    pub fn restore_file(&self) -> String {
        let mut s = String::from("*filter\n");
        for b in BUILTINS {
            let _ = writeln!(s, ":{b} ACCEPT [0:0]");
        }
        for c in self.chains.keys() {
            let _ = writeln!(s, ":{c} - [0:0]");
        }
        let builtins = self.builtins.iter().map(|(k, v)| (*k, v));
        for (c, rules) in self.chains.iter().map(|(k, v)| (k.as_str(), v)).chain(builtins) {
            for r in rules {
                let _ = writeln!(s, "-A {c} {r}");
            }
        }
        s.push_str("COMMIT\n");
        s
    }

    /// What turns `self` (loaded) into `next`, Felix-style: changed chains are flushed and
    /// refilled with `iptables-restore --noflush`; a built-in chain that only gained rules
    /// gets them inserted at their place (`-I CHAIN POS`), otherwise it is refilled too; sets
    /// are created before and destroyed after, their members added and deleted.
    pub fn delta(&self, next: &Ruleset) -> Delta {
        let mut d = Delta::default();
        for (name, set) in &next.sets {
            match self.sets.get(name) {
                None => create_set(&mut d.ipset_before, name, set),
                Some(old) => {
                    for m in set.members.difference(&old.members) {
                        let _ = writeln!(d.ipset_before, "add {name} {m}");
                    }
                    for m in old.members.difference(&set.members) {
                        let _ = writeln!(d.ipset_after, "del {name} {m}");
                    }
                }
            }
        }
        for name in self.sets.keys().filter(|n| !next.sets.contains_key(*n)) {
            let _ = writeln!(d.ipset_after, "destroy {name}");
        }
        let mut s = String::from("*filter\n");
        let mut body = String::new();
        for (c, rules) in &next.chains {
            if self.chains.get(c) == Some(rules) {
                continue;
            }
            d.chains += 1;
            let _ = writeln!(s, ":{c} - [0:0]");
            if self.chains.contains_key(c) {
                let _ = writeln!(body, "-F {c}");
            }
            for r in rules {
                let _ = writeln!(body, "-A {c} {r}");
            }
        }
        for (b, rules) in &next.builtins {
            let old = self.builtins.get(b).map(Vec::as_slice).unwrap_or_default();
            if old == rules.as_slice() {
                continue;
            }
            d.chains += 1;
            match inserted(old, rules) {
                Some(pos) => {
                    for p in pos {
                        let _ = writeln!(body, "-I {b} {} {}", p + 1, rules[p]);
                    }
                }
                None => {
                    let _ = writeln!(body, "-F {b}");
                    for r in rules {
                        let _ = writeln!(body, "-A {b} {r}");
                    }
                }
            }
        }
        let gone: Vec<&String> = self.chains.keys().filter(|c| !next.chains.contains_key(*c)).collect();
        for c in &gone {
            let _ = writeln!(body, "-F {c}");
        }
        for c in &gone {
            let _ = writeln!(body, "-X {c}");
        }
        d.chains += gone.len();
        s.push_str(&body);
        s.push_str("COMMIT\n");
        d.iptables = s;
        d
    }
}

/// If `new` is `old` with rules inserted (none removed or reordered), the positions in
/// `new` of the inserted ones, ascending (inserting them in that order gives `new`).
fn inserted(old: &[String], new: &[String]) -> Option<Vec<usize>> {
    let mut pos = Vec::new();
    let mut k = 0;
    for (i, r) in new.iter().enumerate() {
        if k < old.len() && old[k] == *r {
            k += 1;
        } else {
            pos.push(i);
        }
    }
    (k == old.len()).then_some(pos)
}

fn create_set(s: &mut String, name: &str, set: &IpSet) {
    let _ = writeln!(s, "create {name} {} family inet", set.kind);
    for m in &set.members {
        let _ = writeln!(s, "add {name} {m}");
    }
}
