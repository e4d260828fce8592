//! The compiled structure: which chains, sets and map entries the compiler produces, that
//! endpoints with the same policies share chains, that names stay put when an endpoint is
//! added or a policy edited (the engine's delta relies on it), and that rules are split per
//! address family. The kernel's behaviour is `compile_kernel.rs`'s and the differential
//! test's business.

use std::collections::BTreeMap;
use std::net::IpAddr;

mod common;

use common::policies;
use linux_net::nft::{
    Action as NftAction, AddrField, Dir, Family, IfDir, IpVersion as Fam, MarkStmt, Match, SetElem, TableState, Verdict,
};
use policy::compile::{
    compile, Compiled, DELIVER_CHECK_CHAIN, DELIVER_MAP, DELIVER_ND_CHAIN, OWN4_MAP, OWN6_MAP, PASS_MARK,
    SPOOF_CHECK_CHAIN, SPOOF_LINK_LOCAL_CHAIN, SPOOF_MAP, TABLE,
};
use policy::engine::Desired;
use policy::model::Endpoint;

/// A bridged endpoint whose host-side veth is `veth<name>`.
fn ep(name: &str, namespace: &str, labels: &[(&str, &str)], addrs: &[&str]) -> Endpoint {
    Endpoint { host_ifname: Some(format!("veth{name}")), bridged: true, ..common::ep(name, namespace, labels, addrs) }
}

fn inet(c: &Compiled) -> &TableState {
    c.table(Family::Inet).expect("inet table")
}

fn bridge(c: &Compiled) -> &TableState {
    c.table(Family::Bridge).expect("bridge table")
}

const POLICIES: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: admin}
spec:
  tier: default
  order: 10
  selector: all()
  ingress:
  - {action: Log, protocol: TCP, destination: {ports: [22]}}
  - {action: Deny, protocol: TCP, destination: {ports: [22]}}
  - {action: Pass, source: {nets: [192.0.2.0/24, "2001:db8::/32"]}}
  egress:
  - {action: Allow, protocol: ICMP, notICMP: {type: 8, code: 1}}
  - {action: Allow, ipVersion: 6, protocol: UDP, destination: {ports: [53, 5353, "100:200", "150:300"]}}
  - {action: Allow, destination: {nets: ["2001:db8::/32", "2001:db8:1::/48"]}}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 5432}]
"#;

fn world() -> Vec<Endpoint> {
    vec![
        ep("web1", "prod", &[("app", "web")], &["10.0.0.1", "fd00::1"]),
        ep("web2", "prod", &[("app", "web")], &["10.0.0.2", "fd00::2"]),
        ep("db1", "prod", &[("app", "db")], &["10.0.0.3"]),
        ep("db2", "prod", &[("app", "db")], &["10.0.0.4"]),
    ]
}

fn chains_named<'a>(t: &'a TableState, prefix: &str) -> Vec<&'a str> {
    t.chains.keys().filter(|k| k.starts_with(prefix)).map(String::as_str).collect()
}

fn entries(t: &TableState, map: &str) -> BTreeMap<SetElem, Verdict> {
    t.maps[map].entries.iter().cloned().collect()
}

#[test]
fn the_layout_has_the_contracts_tables_base_chains_and_maps() {
    let c = compile(&policies(POLICIES), &world());
    assert_eq!(c.tables.len(), 2);
    for t in &c.tables {
        assert_eq!(t.table.name, TABLE);
        t.validate().expect("a valid table state");
    }
    let inet = inet(&c);
    let inet_bases: Vec<&str> = inet.chains.iter().filter(|(_, c)| c.base.is_some()).map(|(n, _)| n.as_str()).collect();
    // The guard of routed interfaces has no base chain of its own in the inet table, and a
    // forwarded packet is judged in one chain, egress then ingress: every base chain on the
    // path is a hook invocation for every packet the host forwards, receives or sends.
    assert_eq!(inet_bases, ["egress-in", "forward", "ingress-out"]);
    for map in ["egress4", "egress6", "ingress4", "ingress6", SPOOF_MAP, DELIVER_MAP, OWN4_MAP, OWN6_MAP] {
        assert!(inet.maps.contains_key(map), "{map}");
    }
    for base in ["spoof", "deliver-fwd", "deliver-out"] {
        assert!(bridge(&c).chains[base].base.is_some(), "bridge {base} is a base chain");
    }
    // Each policy base chain: the guard of routed interfaces while some endpoint has one
    // (every packet meets it, so it comes before established/related is accepted; with bridge
    // ports only, as here, its lookup could match nothing and it is left out), ct
    // established,related accept, then the address vmaps of its directions, egress first.
    let routed = Endpoint { bridged: false, ..ep("db3", "prod", &[("app", "db")], &["10.0.1.5"]) };
    let with_routed = compile(&policies(POLICIES), &[world(), vec![routed]].concat());
    let routed_inet = with_routed.table(Family::Inet).expect("inet table");
    assert!(!entries(routed_inet, SPOOF_MAP).is_empty() && !entries(routed_inet, DELIVER_MAP).is_empty());
    let egress = (IfDir::In, SPOOF_MAP, "egress");
    let ingress = (IfDir::Out, DELIVER_MAP, "ingress");
    for (t, guarded) in [(inet, false), (routed_inet, true)] {
        for (name, dirs) in
            [("forward", vec![egress, ingress]), ("egress-in", vec![egress]), ("ingress-out", vec![ingress])]
        {
            let mut r = &t.chains[name].rules[..];
            let guards = if guarded { dirs.len() } else { 0 };
            assert_eq!(r.len(), guards + 1 + 2 * dirs.len(), "{name} guarded {guarded}");
            for (iface, map, _) in &dirs[..guards] {
                assert!(
                    matches!(&r[0].action, Some(NftAction::IfNameVmap { dir, map: m }) if dir == iface && m == map),
                    "{name}"
                );
                r = &r[1..];
            }
            assert!(matches!(r[0].matches[..], [Match::CtState { negate: false, .. }]), "{name}");
            assert_eq!(r[0].action, Some(NftAction::Verdict(Verdict::Accept)), "{name}");
            for (i, (_, _, dispatch)) in dirs.iter().enumerate() {
                let (m4, m6) = (format!("{dispatch}4"), format!("{dispatch}6"));
                assert!(
                    matches!(&r[1 + 2 * i].action, Some(NftAction::AddrVmap { version: Fam::V4, map, .. }) if *map == m4),
                    "{name}"
                );
                assert!(
                    matches!(&r[2 + 2 * i].action, Some(NftAction::AddrVmap { version: Fam::V6, map, .. }) if *map == m6),
                    "{name}"
                );
            }
        }
    }
    // The bridge guard's base chains start with the common case: the packet's address among
    // the port's own (one lookup, `return` ends the base chain: accept), then the full check.
    for (name, iface, map) in [("spoof", IfDir::In, SPOOF_MAP), ("deliver-fwd", IfDir::Out, DELIVER_MAP)] {
        let r = &bridge(&c).chains[name].rules;
        assert_eq!(r.len(), 3, "{name}");
        assert!(
            matches!(&r[0].action, Some(NftAction::IfAddrVmap { iface: i, map: m, .. }) if *i == iface && m == OWN4_MAP)
        );
        assert!(
            matches!(&r[1].action, Some(NftAction::IfAddrVmap { iface: i, map: m, .. }) if *i == iface && m == OWN6_MAP)
        );
        assert!(matches!(&r[2].action, Some(NftAction::IfNameVmap { dir, map: m }) if *dir == iface && m == map));
    }
    // Every endpoint chain starts by allowing IPv6 neighbour discovery and MLD (untracked,
    // so it would read as invalid), then drops ct state invalid. An endpoint may solicit
    // routers but not advertise them nor send redirects; it may receive both. Allowed in
    // egress is `return` (the base chain goes on to the destination's ingress), in ingress
    // `accept`.
    for name in chains_named(inet, "ep-") {
        let rules = &inet.chains[name].rules;
        let (want, n, allowed): (&[u8], usize, _) = if name.starts_with("ep-e-") {
            (&[130, 131, 132, 133, 135, 136, 143], 7, Verdict::Return)
        } else {
            (&[130, 131, 132, 134, 135, 136, 137, 143], 8, Verdict::Accept)
        };
        let nd: Vec<u8> = rules[..n]
            .iter()
            .map(|r| match (&r.matches[..], &r.action) {
                (
                    [Match::Icmp { version: Fam::V6, icmp_type, code: None, negate: false }],
                    Some(NftAction::Verdict(v)),
                ) if *v == allowed => *icmp_type,
                _ => panic!("{r:?}"),
            })
            .collect();
        assert_eq!(nd, want, "{name}");
        let first = &rules[n];
        assert!(matches!(first.matches[..], [Match::CtState { negate: false, .. }]), "{name}");
        assert_eq!(first.action, Some(NftAction::Verdict(Verdict::Drop)), "{name}");
    }
    // Bridged endpoints' anti-spoofing lives in the bridge table, keyed on the host interface:
    // each guarded interface jumps to the one shared check chain, and its own addresses are
    // `ifname . address : return` pairs.
    let spoof = entries(bridge(&c), SPOOF_MAP);
    assert_eq!(spoof.len(), 4);
    assert!(entries(inet, SPOOF_MAP).is_empty());
    assert!(spoof.values().all(|v| *v == Verdict::Jump(SPOOF_CHECK_CHAIN.into())), "{spoof:?}");
    let own = |t: &TableState, m: &str| -> Vec<String> {
        entries(t, m)
            .iter()
            .map(|(k, v)| match (k, v) {
                (SetElem::IfNameAddr(i, a), Verdict::Return) => format!("{i} {a}"),
                _ => panic!("{k:?} : {v:?}"),
            })
            .collect()
    };
    assert_eq!(
        own(bridge(&c), OWN4_MAP),
        ["vethdb1 10.0.0.3", "vethdb2 10.0.0.4", "vethweb1 10.0.0.1", "vethweb2 10.0.0.2"]
    );
    assert_eq!(own(bridge(&c), OWN6_MAP), ["vethweb1 fd00::1", "vethweb2 fd00::2"]);
    assert!(own(inet, OWN4_MAP).is_empty());
    // The check: its own IPv4 source returns; link-local and unspecified sources go to the
    // shared chain that lets only neighbour discovery and MLD through; its own IPv6 source
    // returns; other IPv4 and IPv6 is dropped; then ARP: its own sender address or a probe's
    // 0.0.0.0 returns, other ARP is dropped.
    let rules = &bridge(&c).chains[SPOOF_CHECK_CHAIN].rules;
    let lookup = |r: &linux_net::nft::Rule| match &r.action {
        Some(NftAction::IfAddrVmap { iface: IfDir::In, addr, map }) => Some((*addr, map.clone())),
        _ => None,
    };
    assert_eq!(lookup(&rules[0]), Some((AddrField::Ip { version: Fam::V4, dir: Dir::Src }, OWN4_MAP.into())));
    let ll = Some(NftAction::Verdict(Verdict::Goto(SPOOF_LINK_LOCAL_CHAIN.into())));
    let nets: Vec<String> = rules[1..3]
        .iter()
        .map(|r| match r.matches[..] {
            [Match::AddrInNet { net, negate: false, dir: Dir::Src }] if r.action == ll => net.to_string(),
            _ => panic!("{r:?}"),
        })
        .collect();
    assert_eq!(nets, ["fe80::/10", "::/128"]);
    assert_eq!(lookup(&rules[3]), Some((AddrField::Ip { version: Fam::V6, dir: Dir::Src }, OWN6_MAP.into())));
    let drop = Some(NftAction::Verdict(Verdict::Drop));
    assert_eq!((&rules[4].matches[..], &rules[4].action), (&[Match::IpVersion(Fam::V4)][..], &drop));
    assert_eq!((&rules[5].matches[..], &rules[5].action), (&[Match::IpVersion(Fam::V6)][..], &drop));
    assert_eq!(lookup(&rules[6]), Some((AddrField::ArpSender, OWN4_MAP.into())));
    assert_eq!(rules[7].matches, [Match::ArpSenderIp { addr: "0.0.0.0".parse().unwrap(), negate: false }]);
    assert_eq!(rules[7].action, Some(NftAction::Verdict(Verdict::Return)));
    assert_eq!((&rules[8].matches[..], &rules[8].action), (&[Match::Arp][..], &drop));
    assert_eq!(rules.len(), 9);
    // The inet table's check (routed veths) is the same without ARP, which inet never sees.
    assert_eq!(inet.chains[SPOOF_CHECK_CHAIN].rules[..], rules[..6]);
    assert_eq!(inet.chains[SPOOF_CHECK_CHAIN].rules.len(), 6);
    for t in [inet, bridge(&c)] {
        let ll = &t.chains[SPOOF_LINK_LOCAL_CHAIN].rules;
        let types: Vec<u8> = ll
            .iter()
            .filter_map(|r| match r.matches[..] {
                [Match::Icmp { version: Fam::V6, icmp_type, code: None, negate: false }] => Some(icmp_type),
                _ => None,
            })
            .collect();
        assert_eq!(types, [130, 131, 132, 133, 135, 136, 143], "no router advertisement or redirect");
        let last = ll.last().unwrap();
        assert!(last.matches.is_empty() && last.action == Some(NftAction::Verdict(Verdict::Drop)));
    }
    // The delivery guard: every endpoint of the world is ingress-restricted (admin selects
    // all); bridged ones are in the bridge table, keyed on the host interface, all jumping
    // to the shared check, which looks the (output interface, destination) pair up in the
    // same own4/own6 maps.
    let deliver = entries(bridge(&c), DELIVER_MAP);
    assert_eq!(deliver.len(), 4);
    assert!(deliver.values().all(|v| *v == Verdict::Jump(DELIVER_CHECK_CHAIN.into())), "{deliver:?}");
    let rules = &bridge(&c).chains[DELIVER_CHECK_CHAIN].rules;
    let to_own: Vec<(AddrField, String)> = rules
        .iter()
        .filter_map(|r| match &r.action {
            Some(NftAction::IfAddrVmap { iface: IfDir::Out, addr, map }) => Some((*addr, map.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(
        to_own,
        [
            (AddrField::Ip { version: Fam::V4, dir: Dir::Dst }, OWN4_MAP.to_string()),
            (AddrField::Ip { version: Fam::V6, dir: Dir::Dst }, OWN6_MAP.to_string())
        ]
    );
    assert_eq!(rules[2].action, Some(NftAction::Verdict(Verdict::Goto(DELIVER_ND_CHAIN.into()))));
    assert!(rules.iter().rev().take(2).all(|r| r.action == drop));
    assert_eq!(rules.len(), 5);
}

#[test]
fn endpoints_with_the_same_policies_share_chains() {
    let c = compile(&policies(POLICIES), &world());
    let inet = inet(&c);
    // web: admin only (ingress, egress); db: admin + db-from-web (ingress), admin (egress).
    // Egress lists are equal for all four, ingress lists form two groups.
    assert_eq!(chains_named(inet, "ep-i-").len(), 2, "{:?}", chains_named(inet, "ep-i-"));
    assert_eq!(chains_named(inet, "ep-e-").len(), 1);
    assert_eq!(c.endpoints["web1"].ingress_chain, c.endpoints["web2"].ingress_chain);
    assert_eq!(c.endpoints["db1"].ingress_chain, c.endpoints["db2"].ingress_chain);
    assert_ne!(c.endpoints["web1"].ingress_chain, c.endpoints["db1"].ingress_chain);
    // One chain per (policy, direction) that has applying endpoints.
    assert_eq!(chains_named(inet, "pol-").len(), 3, "{:?}", chains_named(inet, "pol-"));
    // Dispatch: each address to its endpoint's chain.
    let in4 = entries(inet, "ingress4");
    let a = |s: &str| SetElem::Addr(s.parse().unwrap());
    assert_eq!(in4[&a("10.0.0.3")], Verdict::Jump(c.endpoints["db1"].ingress_chain.clone()));
    assert_eq!(entries(inet, "egress6").len(), 2);
    // The k8s rule's source selector is a set of the web pods' addresses, per family.
    let set4: Vec<&SetElem> =
        inet.sets.values().filter(|s| s.def.name.starts_with("sel4-")).flat_map(|s| &s.elems).collect();
    assert_eq!(set4, [&a("10.0.0.1"), &a("10.0.0.2")]);
    assert_eq!(c.policies_of("db1"), ["admin", "prod/db-from-web"]);
    assert_eq!(c.policies_of("web1"), ["admin"]);
    assert!(c.policies_of("nobody").is_empty());
}

#[test]
fn names_are_short_and_stay_put_when_an_endpoint_is_added() {
    let set = policies(POLICIES);
    let mut w = world();
    let before = compile(&set, &w);
    for t in &before.tables {
        for name in t.chains.keys().chain(t.sets.keys()).chain(t.maps.keys()) {
            assert!(name.len() <= 64, "{name}");
        }
    }
    // Another web pod: every chain is the same (names and rules); only the selector set,
    // the dispatch maps and the guard's maps gain its entries: no chain and no rule is new.
    w.push(ep("web3", "prod", &[("app", "web")], &["10.0.0.5", "fd00::5"]));
    let after = compile(&set, &w);
    for (b, a) in before.tables.iter().zip(&after.tables) {
        for (name, chain) in &b.chains {
            assert_eq!(Some(chain), a.chains.get(name), "chain {name} changed");
        }
        let new: Vec<&String> = a.chains.keys().filter(|k| !b.chains.contains_key(*k)).collect();
        assert!(new.is_empty(), "{new:?}");
        assert_eq!(a.sets.keys().collect::<Vec<_>>(), b.sets.keys().collect::<Vec<_>>());
        for (name, s) in &b.sets {
            let grew = a.sets[name].elems.len() - s.elems.len();
            assert!(grew <= 1, "set {name}");
        }
    }
    assert_eq!(after.endpoints["web3"].ingress_chain, after.endpoints["web1"].ingress_chain);
    assert_eq!(after.endpoints["web3"].spoof_chain, Some((Family::Bridge, SPOOF_CHECK_CHAIN.to_string())));
    assert_eq!(after.endpoints["web3"].deliver_chain, Some((Family::Bridge, DELIVER_CHECK_CHAIN.to_string())));
    assert_eq!(after.rule_count(), before.rule_count());
    // Its guard: 2 interface keys and 2 address pairs in the bridge table.
    let grew = |m: &str| entries(bridge(&after), m).len() - entries(bridge(&before), m).len();
    assert_eq!([SPOOF_MAP, DELIVER_MAP, OWN4_MAP, OWN6_MAP].map(grew), [1, 1, 1, 1]);
}

#[test]
fn a_policy_edit_changes_only_its_own_chain() {
    let w = world();
    let before = compile(&policies(POLICIES), &w);
    let edited = POLICIES.replace("ports: [{port: 5432}]", "ports: [{port: 5433}]");
    let after = compile(&policies(&edited), &w);
    let (b, a) = (inet(&before), inet(&after));
    let changed: Vec<&String> = b.chains.iter().filter(|(k, v)| a.chains.get(*k) != Some(v)).map(|(k, _)| k).collect();
    assert_eq!(changed.len(), 1, "{changed:?}");
    assert!(changed[0].starts_with("pol-i-db-from-web-"), "{changed:?}");
    assert_eq!(a.chains.keys().collect::<Vec<_>>(), b.chains.keys().collect::<Vec<_>>());
    assert_eq!(a.maps, b.maps, "dispatch untouched");
}

#[test]
fn rules_split_per_family_and_rules_that_cannot_match_a_family_are_left_out() {
    let c = compile(&policies(POLICIES), &world());
    let inet = inet(&c);
    let chain = |prefix: &str| &inet.chains[chains_named(inet, prefix)[0]].rules;
    let fams = |r: &linux_net::nft::Rule| -> Vec<Fam> {
        r.matches.iter().filter_map(|m| if let Match::IpVersion(v) = m { Some(*v) } else { None }).collect()
    };
    // admin ingress: Log + Deny on port 22 need no family (one rule each); Pass from nets of
    // both families is one rule per family.
    let ing = chain("pol-i-admin-");
    assert_eq!(ing.len(), 4);
    assert!(fams(&ing[0]).is_empty() && fams(&ing[1]).is_empty());
    assert_eq!([fams(&ing[2]), fams(&ing[3])], [vec![Fam::V4], vec![Fam::V6]]);
    assert_eq!(ing[0].log_prefix.as_deref(), Some("cnp in admin #0 "));
    assert_eq!(ing[0].action, None, "Log goes on");
    assert_eq!(ing[1].action, Some(NftAction::Verdict(Verdict::Drop)));
    for pass in &ing[2..] {
        assert_eq!(pass.mark, Some(MarkStmt::Set(PASS_MARK)));
        assert_eq!(pass.action, Some(NftAction::Verdict(Verdict::Return)));
    }
    // admin egress: notICMP (ICMP, an IPv4 protocol) only for IPv4; the ipVersion 6 rule
    // only for IPv6, its four port entries merged into three ranges, matched inline: one nft
    // rule per range; the nested IPv6 nets only for IPv6, reduced to the outer one and matched
    // inline.
    let eg = chain("pol-e-admin-");
    assert_eq!(eg.len(), 5, "{eg:#?}");
    assert_eq!(fams(&eg[0]), [Fam::V4]);
    assert!(eg[0].matches.contains(&Match::Icmp { version: Fam::V4, icmp_type: 8, code: Some(1), negate: true }));
    let ranges: Vec<(u16, u16)> = eg[1..4]
        .iter()
        .map(|r| {
            assert_eq!(fams(r), [Fam::V6]);
            let ports: Vec<_> = r
                .matches
                .iter()
                .filter_map(|m| match m {
                    Match::PortRange { first, last, negate: false, .. } => Some((*first, *last)),
                    _ => None,
                })
                .collect();
            assert_eq!(ports.len(), 1, "{r:?}");
            ports[0]
        })
        .collect();
    assert_eq!(ranges, [(53, 53), (100, 300), (5353, 5353)]);
    assert_eq!(fams(&eg[4]), [Fam::V6]);
    assert!(eg[4]
        .matches
        .iter()
        .any(|m| matches!(m, Match::AddrInNet { net, .. } if net.to_string() == "2001:db8::/32")));
}

#[test]
fn short_port_and_net_lists_are_inline_and_long_ones_are_sets() {
    let yaml = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: lists}
spec:
  selector: all()
  ingress:
  - {action: Allow, protocol: TCP, source: {nets: [10.1.0.0/16, 10.2.0.0/16]}, destination: {ports: [1, 3]}}
  - {action: Deny, protocol: TCP, source: {notNets: [10.3.0.0/16, 10.4.0.0/16]}, destination: {notPorts: [7, 9]}}
  - {action: Allow, protocol: TCP, destination: {ports: [11, 13, 15, 17, 19]}}
  - {action: Allow, protocol: TCP, source: {nets: [10.1.0.0/16, 10.2.0.0/16, 10.5.0.0/16]}, destination: {ports: [1, 3]}}
"#;
    let c = compile(&policies(yaml), &world());
    let inet = inet(&c);
    let rules = &inet.chains[chains_named(inet, "pol-i-lists-")[0]].rules;
    let count = |r: &linux_net::nft::Rule, f: fn(&Match) -> bool| r.matches.iter().filter(|m| f(m)).count();
    let net = |m: &Match| matches!(m, Match::AddrInNet { .. });
    let port = |m: &Match| matches!(m, Match::PortRange { .. });
    let set = |m: &Match| matches!(m, Match::AddrInSet { .. } | Match::PortInSet { .. });
    // 2 nets x 2 ports: four rules of one net and one port each (IPv4 only: the nets are)
    assert!(rules[..4].iter().all(|r| count(r, net) == 1 && count(r, port) == 1 && count(r, set) == 0), "{rules:#?}");
    // negated lists: one rule per family, every entry a `!=` match (IPv6 has no such nets)
    assert_eq!((count(&rules[4], net), count(&rules[4], port), count(&rules[4], set)), (2, 2, 0));
    assert_eq!((count(&rules[5], net), count(&rules[5], port), count(&rules[5], set)), (0, 2, 0));
    // five ports: a set
    assert_eq!((count(&rules[6], port), count(&rules[6], set)), (0, 1));
    // 3 nets inline leave room for 1 port rule each: the two ports become a set
    assert!(rules[7..10].iter().all(|r| count(r, net) == 1 && count(r, set) == 1), "{rules:#?}");
    assert_eq!(rules.len(), 10);
}

#[test]
fn tiers_clear_the_pass_bit_jump_while_it_is_clear_and_end_with_a_drop() {
    let yaml = r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: sec}
spec: {order: 100, defaultAction: Pass}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: a}
spec: {tier: sec, order: 1, ingress: [{action: Pass}]}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: b}
spec: {order: 1, ingress: [{action: Allow, protocol: TCP}]}
"#;
    let w = world();
    let c = compile(&policies(yaml), &w);
    let rules = &inet(&c).chains[&c.endpoints["web1"].ingress_chain].rules;
    let clear = Some(MarkStmt::Clear(PASS_MARK));
    let bit_clear = Match::MarkBits { mask: PASS_MARK, set: false };
    // neighbour discovery, invalid drop; [sec] clear, jump a; [default] clear, jump b, drop;
    // clear + accept.
    let rules = &rules[8..];
    assert_eq!(rules.len(), 7, "{rules:#?}");
    assert_eq!(rules[1].mark, clear);
    assert_eq!(rules[2].matches, std::slice::from_ref(&bit_clear));
    assert!(matches!(&rules[2].action, Some(NftAction::Verdict(Verdict::Jump(j))) if j.starts_with("pol-i-a-")));
    assert_eq!(rules[3].mark, clear);
    assert!(matches!(&rules[4].action, Some(NftAction::Verdict(Verdict::Jump(j))) if j.starts_with("pol-i-b-")));
    assert_eq!(
        (rules[5].matches.clone(), rules[5].action.clone()),
        (vec![bit_clear], Some(NftAction::Verdict(Verdict::Drop)))
    );
    assert_eq!((rules[6].mark, rules[6].action.clone()), (clear, Some(NftAction::Verdict(Verdict::Accept))));
    assert_eq!(c.policies_of("web1"), ["a", "b"]);
    // web1's traffic can traverse its two direction chains, the two policy chains, the
    // shared anti-spoof and delivery guard checks and the two chains they go to.
    let info = &c.endpoints["web1"];
    assert_eq!(info.chains.len(), 8, "{:?}", info.chains);
    let expect: usize = info.chains.iter().map(|(f, n)| c.chain_len(*f, n)).sum();
    assert_eq!(c.endpoint_rules("web1"), expect);
    assert_eq!(c.rule_count(), c.tables.iter().map(TableState::rule_count).sum::<usize>());
}

#[test]
fn dispatch_keys_name_the_endpoints_own_map_entries() {
    let mut w = world();
    w[0].bridged = false; // web1 on a routed veth: its anti-spoofing is in the inet table
    let c = compile(&policies(POLICIES), &w);
    let keys = c.dispatch_keys("web1").expect("known");
    let mut seen: Vec<(Family, String, SetElem)> = keys.into_iter().map(|k| (k.table.family, k.map, k.key)).collect();
    seen.sort();
    let a = |s: &str| SetElem::Addr(s.parse::<IpAddr>().unwrap());
    let mut expect = vec![
        (Family::Inet, "egress4".to_string(), a("10.0.0.1")),
        (Family::Inet, "egress6".to_string(), a("fd00::1")),
        (Family::Inet, "ingress4".to_string(), a("10.0.0.1")),
        (Family::Inet, "ingress6".to_string(), a("fd00::1")),
        (Family::Inet, SPOOF_MAP.to_string(), SetElem::IfName("vethweb1".into())),
        (Family::Inet, DELIVER_MAP.to_string(), SetElem::IfName("vethweb1".into())),
        (Family::Inet, OWN4_MAP.to_string(), SetElem::IfNameAddr("vethweb1".into(), "10.0.0.1".parse().unwrap())),
        (Family::Inet, OWN6_MAP.to_string(), SetElem::IfNameAddr("vethweb1".into(), "fd00::1".parse().unwrap())),
    ];
    expect.sort();
    assert_eq!(seen, expect);
    assert!(c.dispatch_keys("nobody").is_none());
    // The state round-trips through JSON (the engine persists it).
    let json = serde_json::to_string(&c).unwrap();
    assert_eq!(serde_json::from_str::<Compiled>(&json).unwrap(), c);
}

#[test]
fn a_thousand_endpoints_of_ten_profiles_share_twenty_direction_chains() {
    // 10 label profiles (app=a0..a9), 100 endpoints each; 100 policies of 10 rules each (1k
    // rules), each policy selecting one app and allowing TCP from another app's pods.
    let mut yaml = String::new();
    for p in 0..100 {
        yaml.push_str(&format!(
            "---\napiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata: {{name: p{p}}}\nspec:\n  order: {p}\n  selector: app == 'a{}'\n  types: [Ingress, Egress]\n  ingress:\n",
            p % 10
        ));
        for r in 0..10 {
            yaml.push_str(&format!(
                "  - {{action: Allow, protocol: TCP, source: {{selector: app == 'a{}'}}, destination: {{ports: [{}]}}}}\n",
                (p + r) % 10,
                1000 + r
            ));
        }
    }
    let set = policies(&yaml);
    let eps: Vec<Endpoint> = (0..1000)
        .map(|i| {
            let a4 = format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256);
            let a6 = format!("fd00::{:x}", i + 1);
            ep(&format!("e{i}"), "default", &[("app", &format!("a{}", i % 10))], &[&a4, &a6])
        })
        .collect();
    let t = std::time::Instant::now();
    let c = compile(&set, &eps);
    let took = t.elapsed();
    let inet = inet(&c);
    assert_eq!(chains_named(inet, "ep-").len(), 20);
    assert_eq!(chains_named(inet, "pol-i-").len(), 100);
    // Ingress rules split per family (selectors): 2 nft rules per policy rule.
    let pol_rules: usize = chains_named(inet, "pol-i-").iter().map(|n| inet.chains[*n].rules.len()).sum();
    assert_eq!(pol_rules, 2000);
    assert_eq!(entries(inet, "ingress4").len(), 1000);
    assert_eq!(entries(inet, "egress6").len(), 1000);
    assert_eq!(inet.sets.len(), 20, "one selector set per app and family");
    eprintln!("compile: 1000 endpoints x 1000 rules in {took:?}, {} nft rules", c.rule_count());
}

#[test]
fn a_log_prefix_names_the_policy_and_rule_within_127_bytes() {
    let long = "l".repeat(250);
    let yaml = format!(
        "apiVersion: projectcalico.org/v3\nkind: NetworkPolicy\nmetadata: {{name: {long}, namespace: prod}}\n\
         spec:\n  egress: [{{action: Allow}}, {{action: Log}}]\n"
    );
    let c = compile(&policies(&yaml), &world());
    let inet = inet(&c);
    let rules = &inet.chains[chains_named(inet, "pol-e-")[0]].rules;
    let prefix = rules[1].log_prefix.as_deref().expect("a log rule");
    assert!(prefix.len() <= 127, "{} bytes", prefix.len());
    assert!(prefix.starts_with("cnp out prod/lll") && prefix.ends_with(" #1 "), "{prefix:?}");
    assert!(chains_named(inet, "pol-e-")[0].len() <= 64);
}

/// An endpoint of another host only adds its addresses to selector sets: no dispatch entry, no
/// chain, no guard, no `EndpointInfo`; an address a local endpoint also has stays the local one's.
#[test]
fn a_remote_endpoint_only_adds_its_addresses_to_selector_sets() {
    let remote = |name: &str, app: &str, addrs: &[&str]| Endpoint {
        remote: Some("node-b".into()),
        ..common::ep(name, "prod", &[("app", app)], addrs)
    };
    let mut eps = world();
    let local = compile(&policies(POLICIES), &eps);
    // A remote web pod, and a stale remote record claiming db1's address with app=web.
    eps.push(remote("rweb/eth0", "web", &["10.9.0.7", "fd00::97"]));
    eps.push(remote("stale/eth0", "web", &["10.0.0.3", "10.9.0.9"]));
    // The local endpoint wins: the caller trims the stale record's copy of db1's address.
    let eps = policy::model::local_first(&eps).expect("there are remote endpoints");
    assert_eq!(eps.last().unwrap().addrs, ["10.9.0.9".parse::<IpAddr>().unwrap()]);
    assert_eq!(eps[..4], world()[..], "local endpoints untouched");
    let c = compile(&policies(POLICIES), &eps);
    let t = inet(&c);
    let web4: Vec<&SetElem> =
        t.sets.iter().filter(|(n, _)| n.starts_with("sel4-")).flat_map(|(_, s)| s.elems.iter()).collect();
    let a = |s: &str| SetElem::Addr(s.parse::<IpAddr>().unwrap());
    assert!(web4.contains(&&a("10.9.0.7")), "the remote web pod is in the app == web set: {web4:?}");
    assert!(!web4.contains(&&a("10.0.0.3")), "db1's address stays db1's (local wins): {web4:?}");
    for map in ["egress4", "egress6", "ingress4", "ingress6"] {
        assert_eq!(entries(t, map), entries(inet(&local), map), "no dispatch entry for a remote endpoint ({map})");
    }
    assert_eq!(c.endpoints.keys().collect::<Vec<_>>(), local.endpoints.keys().collect::<Vec<_>>());
    assert_eq!(t.chains.keys().collect::<Vec<_>>(), inet(&local).chains.keys().collect::<Vec<_>>());
    assert_eq!(bridge(&c), bridge(&local), "no anti-spoofing or delivery guard for a remote endpoint");
    // The evaluator agrees: db1 (prod, app=db) admits 5432 from the remote web pod, not from
    // an address only a stale remote record calls web.
    let set = policies(POLICIES);
    let db1 = eps.iter().find(|e| e.name == "db1").unwrap().clone();
    let pkt = |src: &str| policy::Packet::tcp(src.parse().unwrap(), 40000, "10.0.0.3".parse().unwrap(), 5432);
    let v = |src| policy::evaluate(&set, &eps, &db1, policy::Direction::Ingress, &pkt(src)).verdict;
    assert_eq!(v("10.9.0.7"), policy::Verdict::Allow);
    assert_eq!(v("10.9.0.8"), policy::Verdict::Deny);
    // The incremental compiler gives the same tables, built at once or endpoint by endpoint.
    let built = policy::compile::Compiler::new(set.clone(), &eps);
    assert_eq!(built.compiled(), &c);
    let mut inc = policy::compile::Compiler::new(set.clone(), &world());
    for e in &eps[4..] {
        inc.put_endpoint(e.clone());
    }
    assert_eq!(inc.compiled(), &c, "remote endpoints added one by one");
    inc.remove_endpoint("rweb/eth0");
    let without: Vec<Endpoint> = eps.iter().filter(|e| e.name != "rweb/eth0").cloned().collect();
    assert_eq!(inc.compiled(), &compile(&set, &without), "a remote endpoint removed");
    let mut relabelled = eps[4].clone();
    relabelled.labels.insert("app".into(), "db".into());
    inc.put_endpoint(relabelled.clone());
    let mut with = without.clone();
    with.push(relabelled);
    assert_eq!(inc.compiled(), &compile(&set, &with), "a remote endpoint relabelled");
}

#[test]
fn a_net_inside_a_not_net_and_a_selector_picking_nobody_make_no_rule() {
    let yaml = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: never}
spec:
  selector: all()
  ingress:
  - {action: Allow, protocol: TCP, source: {nets: [10.1.0.0/16, 10.2.0.0/16], notNets: [10.2.0.0/16]}}
  - {action: Allow, protocol: TCP, source: {nets: [10.2.3.0/24], notNets: [10.2.0.0/16]}}
  - {action: Allow, protocol: TCP, source: {selector: "app == 'nobody'"}}
  - {action: Allow, protocol: TCP, source: {selector: "app == 'db'"}}
  - {action: Deny, protocol: UDP, source: {notSelector: "app == 'nobody'"}}
"#;
    let c = compile(&policies(yaml), &world());
    let inet = inet(&c);
    let rules = &inet.chains[chains_named(inet, "pol-i-never-")[0]].rules;
    let nets = |r: &linux_net::nft::Rule| -> Vec<String> {
        r.matches
            .iter()
            .filter_map(|m| match m {
                Match::AddrInNet { net, negate: false, .. } => Some(net.to_string()),
                _ => None,
            })
            .collect()
    };
    // rule 0: only the net not inside `notNets`; rule 1: none; rule 2: nobody is `nobody`;
    // rule 3: the db pods have IPv4 addresses only; rule 4: not in an empty set is every
    // packet of each family, no lookup
    assert_eq!(rules.len(), 4, "{rules:#?}");
    assert_eq!(nets(&rules[0]), ["10.1.0.0/16"]);
    assert!(rules[1].matches.contains(&Match::AddrInSet {
        version: Fam::V4,
        dir: Dir::Src,
        set: inet.sets.keys().find(|n| n.starts_with("sel4-")).unwrap().clone(),
        negate: false
    }));
    for r in &rules[2..] {
        assert!(!r.matches.iter().any(|m| matches!(m, Match::AddrInSet { .. })), "{r:?}");
        assert_eq!(r.action, Some(NftAction::Verdict(Verdict::Drop)));
    }
    assert_eq!(inet.sets.keys().filter(|n| n.starts_with("sel")).count(), 1, "{:?}", inet.sets.keys());
}
