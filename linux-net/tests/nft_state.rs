//! Integration tests of `linux_net::nft::state` against the kernel: a diff
//! applied on top of `prev` leaves exactly what `next` applied from scratch
//! leaves (compared through `nft -j list table`), `nft` prints the new
//! pieces (address vmaps, mark bits, negated ICMP) as it writes them, and
//! the netlink read-back (table, chains with rule counts, verdict map
//! entries) sees what was committed.
//!
//! They need root and the `nft` CLI (read-back only). Every test works in
//! its own namespaces (`nst<pid><tag>`), deleted by a Drop guard even when
//! an assertion fails.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;

use linux_net::netns::NetNs;
use linux_net::nft::state::{chain_rule_counts, map_entries, map_entry, rule_counts_of, table_exists};
use linux_net::nft::{
    proto, Action, BaseChain, ChainPolicy, CtStates, Dir, Family, Hook, IfDir, IpVersion, MarkStmt, Match, NftError,
    Rule, SetDef, SetElem, SetKey, TableRef, TableState, Transaction, Verdict,
};

struct Namespaces(Vec<String>);

impl Namespaces {
    fn new(tags: &[&str]) -> Namespaces {
        let guard = Namespaces(tags.iter().map(|t| format!("nst{}{t}", std::process::id())).collect());
        for ns in &guard.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            sh(&["ip", "netns", "add", ns]);
        }
        guard
    }

    fn open(&self, i: usize) -> NetNs {
        NetNs::open(&PathBuf::from(format!("/run/netns/{}", self.0[i]))).expect("open netns")
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("exec");
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn in_ns<T>(ns: &NetNs, f: impl FnOnce() -> T) -> T {
    ns.run(f).expect("enter netns")
}

fn commit_in(ns: &NetNs, f: impl FnOnce(&mut Transaction) -> Result<(), NftError>) -> Result<(), NftError> {
    in_ns(ns, || {
        let mut x = Transaction::new();
        f(&mut x)?;
        x.commit()
    })
}

/// `nft -j list table inet t` normalised for comparison: handles dropped,
/// set and map elements sorted, objects other than rules sorted by their
/// text, rules kept in order per chain.
fn table_json(ns: &str) -> (Vec<String>, BTreeMap<String, Vec<String>>) {
    let json = sh(&["ip", "netns", "exec", ns, "nft", "-j", "list", "table", "inet", "t"]);
    let doc: serde_json::Value = serde_json::from_str(&json).expect("nft -j output is JSON");
    let mut objects = Vec::new();
    let mut rules: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for o in doc["nftables"].as_array().expect("nftables array") {
        let mut o = o.clone();
        let Some((kind, body)) = o.as_object_mut().and_then(|m| m.iter_mut().next()) else { continue };
        let kind = kind.clone();
        let Some(body) = body.as_object_mut() else { continue };
        body.remove("handle");
        if let Some(serde_json::Value::Array(elems)) = body.get_mut("elem") {
            elems.sort_by_key(|e| e.to_string());
        }
        if kind == "rule" {
            let chain = body["chain"].as_str().unwrap().to_string();
            rules.entry(chain).or_default().push(serde_json::Value::Object(body.clone()).to_string());
        } else if kind != "metainfo" {
            objects.push(format!("{kind} {}", serde_json::Value::Object(body.clone())));
        }
    }
    objects.sort();
    (objects, rules)
}

fn addr(s: &str) -> SetElem {
    SetElem::Addr(s.parse().unwrap())
}

fn net(s: &str) -> SetElem {
    SetElem::Net(s.parse().unwrap())
}

const PASS: u32 = 0x0010_0000;

fn table() -> TableRef {
    TableRef::new(Family::Inet, "t")
}

/// A table shaped like the policy layout: dispatch by address maps from
/// base chains, endpoint chains, a tier with Pass, sets of every kind.
fn prev_state() -> TableState {
    let mut s = TableState::new(table());
    s.put_set(SetDef::set("sel4", SetKey::Ipv4Addr), vec![addr("10.0.0.1"), addr("10.0.0.2"), addr("10.0.0.3")]);
    s.put_set(SetDef::interval_set("nets4", SetKey::Ipv4Addr), vec![net("10.1.0.0/16"), net("192.168.0.0/24")]);
    s.put_set(SetDef::interval_set("nets6", SetKey::Ipv6Addr), vec![net("fd00:1::/64")]);
    s.put_set(
        SetDef::interval_set("ports", SetKey::InetService),
        vec![SetElem::Port(80), SetElem::PortRange(8000, 8080)],
    );
    s.put_set(SetDef::set("gone", SetKey::Ipv4Addr), vec![addr("10.9.9.9")]);
    s.put_map(
        SetDef::verdict_map("ingress4", SetKey::Ipv4Addr),
        vec![(addr("10.0.0.1"), Verdict::Jump("ep-a".into())), (addr("10.0.0.2"), Verdict::Jump("ep-b".into()))],
    );
    s.put_map(SetDef::verdict_map("ingress6", SetKey::Ipv6Addr), vec![(addr("fd00::1"), Verdict::Jump("ep-a".into()))]);
    s.put_map(
        SetDef::verdict_map("spoof", SetKey::IfName),
        vec![(SetElem::IfName("veth1".into()), Verdict::Jump("ep-b".into()))],
    );
    s.put_map(SetDef::verdict_map("oldmap", SetKey::Ipv4Addr), vec![(addr("10.0.0.9"), Verdict::Jump("old".into()))]);
    let established = Rule::new(
        vec![Match::CtState { states: CtStates::ESTABLISHED | CtStates::RELATED, negate: false }],
        Verdict::Accept,
    );
    let vmap = |v, map: &str| Rule {
        action: Some(Action::AddrVmap { version: v, dir: Dir::Dst, map: map.into() }),
        ..Default::default()
    };
    s.put_chain(
        "ingress-fwd",
        Some(BaseChain::filter(Hook::Forward, 1, ChainPolicy::Accept)),
        vec![established.clone(), vmap(IpVersion::V4, "ingress4"), vmap(IpVersion::V6, "ingress6")],
    );
    s.put_chain(
        "spoof",
        Some(BaseChain::filter(Hook::Prerouting, -150, ChainPolicy::Accept)),
        vec![Rule { action: Some(Action::IfNameVmap { dir: IfDir::In, map: "spoof".into() }), ..Default::default() }],
    );
    let invalid = Rule::new(vec![Match::CtState { states: CtStates::INVALID, negate: false }], Verdict::Drop);
    let tier = vec![
        Rule { mark: Some(MarkStmt::Clear(PASS)), ..Default::default() },
        Rule::new(vec![], Verdict::Jump("pol-1".into())),
        Rule::new(vec![Match::MarkBits { mask: PASS, set: false }], Verdict::Drop),
    ];
    s.put_chain("ep-a", None, [vec![invalid.clone()], tier.clone()].concat());
    s.put_chain("ep-b", None, vec![invalid, Rule::new(vec![], Verdict::Drop)]);
    s.put_chain(
        "pol-1",
        None,
        vec![
            Rule {
                matches: vec![Match::AddrInSet {
                    version: IpVersion::V4,
                    dir: Dir::Src,
                    set: "sel4".into(),
                    negate: false,
                }],
                log_prefix: Some("pol-1 0".into()),
                ..Default::default()
            },
            Rule::new(
                vec![
                    Match::AddrInSet { version: IpVersion::V4, dir: Dir::Src, set: "nets4".into(), negate: true },
                    Match::PortInSet { proto: proto::TCP, dir: Dir::Dst, set: "ports".into(), negate: false },
                ],
                Verdict::Accept,
            ),
            Rule::new(
                vec![Match::Icmp { version: IpVersion::V4, icmp_type: 8, code: None, negate: true }],
                Verdict::Drop,
            ),
            Rule {
                matches: vec![Match::AddrInSet {
                    version: IpVersion::V6,
                    dir: Dir::Src,
                    set: "nets6".into(),
                    negate: false,
                }],
                mark: Some(MarkStmt::Set(PASS)),
                action: Some(Action::Verdict(Verdict::Return)),
                ..Default::default()
            },
        ],
    );
    s.put_chain(
        "old",
        None,
        vec![Rule::new(
            vec![Match::AddrInSet { version: IpVersion::V4, dir: Dir::Src, set: "gone".into(), negate: false }],
            Verdict::Drop,
        )],
    );
    s
}

/// `prev` with a bit of everything changed: elements added and removed, a
/// chain's rules changed, map entries added, changed and removed, a chain,
/// a set and a map removed, new ones added, a base chain's policy changed.
fn next_state() -> TableState {
    let mut s = prev_state();
    let sel = &mut s.sets.get_mut("sel4").unwrap().elems;
    sel.retain(|e| *e != addr("10.0.0.2"));
    sel.push(addr("10.0.0.4"));
    s.sets.get_mut("nets4").unwrap().elems = vec![net("10.1.0.0/16"), net("172.16.0.0/12")];
    s.sets.remove("gone");
    s.maps.remove("oldmap");
    s.chains.remove("old");
    s.put_set(SetDef::set("sel6", SetKey::Ipv6Addr), vec![addr("fd00::1"), addr("fd00::2")]);
    s.put_chain(
        "ep-c",
        None,
        vec![Rule::new(
            vec![Match::AddrInSet { version: IpVersion::V6, dir: Dir::Src, set: "sel6".into(), negate: false }],
            Verdict::Accept,
        )],
    );
    s.put_map(
        SetDef::verdict_map("ingress4", SetKey::Ipv4Addr),
        vec![
            (addr("10.0.0.1"), Verdict::Jump("ep-b".into())),
            (addr("10.0.0.3"), Verdict::Jump("ep-a".into())),
            (addr("10.0.0.4"), Verdict::Goto("ep-c".into())),
        ],
    );
    s.chains.get_mut("pol-1").unwrap().rules.insert(
        1,
        Rule::new(
            vec![Match::Icmp { version: IpVersion::V6, icmp_type: 128, code: Some(0), negate: true }],
            Verdict::Drop,
        ),
    );
    s.chains.get_mut("spoof").unwrap().base = Some(BaseChain::filter(Hook::Prerouting, -150, ChainPolicy::Drop));
    s
}

#[test]
fn diff_on_top_of_prev_equals_next_from_scratch() {
    let ns = Namespaces::new(&["d1", "d2"]);
    let (a, b) = (ns.open(0), ns.open(1));
    let (prev, next) = (prev_state(), next_state());
    commit_in(&a, |x| TableState::replace(&prev, x)).expect("prev from scratch");
    // a replace on top of a table that exists is atomic too
    commit_in(&a, |x| TableState::replace(&prev, x)).expect("prev again");
    let mut x = Transaction::new();
    TableState::diff(&prev, &next, &mut x).unwrap();
    let full = {
        let mut f = Transaction::new();
        TableState::replace(&next, &mut f).unwrap();
        f.len()
    };
    assert!(x.len() < full, "the diff ({} messages) is smaller than a replace ({full})", x.len());
    in_ns(&a, || x.commit()).expect("diff prev -> next");
    commit_in(&b, |x| TableState::replace(&next, x)).expect("next from scratch");
    let (got, want) = (table_json(&ns.0[0]), table_json(&ns.0[1]));
    assert_eq!(got.0, want.0, "tables, chains, sets and maps");
    assert_eq!(got.1, want.1, "rules per chain, in order");
    assert!(got.1["pol-1"].len() == 5 && !got.0.iter().any(|o| o.contains("\"gone\"") || o.contains("oldmap")));
    // and back: the diff in the other direction gives prev again
    commit_in(&a, |x| TableState::diff(&next, &prev, x)).expect("diff next -> prev");
    commit_in(&b, |x| TableState::replace(&prev, x)).expect("prev from scratch");
    assert_eq!(table_json(&ns.0[0]), table_json(&ns.0[1]));
    // nothing to do for equal states
    let mut x = Transaction::new();
    TableState::diff(&prev, &prev, &mut x).unwrap();
    assert!(x.is_empty());
}

#[test]
fn nft_prints_the_new_pieces_as_it_writes_them() {
    let ns = Namespaces::new(&["p"]);
    let a = ns.open(0);
    commit_in(&a, |x| TableState::replace(&next_state(), x)).expect("apply");
    let text = sh(&["ip", "netns", "exec", &ns.0[0], "nft", "list", "table", "inet", "t"]);
    for line in [
        "ip daddr vmap @ingress4",
        "ip6 daddr vmap @ingress6",
        "iifname vmap @spoof",
        "meta mark set meta mark & 0xffefffff",
        "meta mark & 0x00100000 == 0x00000000 drop",
        "meta mark set meta mark | 0x00100000 return",
        "icmp type != echo-request drop",
        "ip saddr != @nets4 tcp dport @ports accept",
        "log prefix \"pol-1 0\"",
        "10.0.0.4 : goto ep-c",
        "type filter hook prerouting priority mangle; policy drop;",
        // one 16-bit compare of type and code ("not both"); nft splits it
        // into two relations when printing, which reads as "neither"
        "icmpv6 type != echo-request icmpv6 code != no-route drop",
    ] {
        assert!(text.contains(line), "`{line}` missing from\n{text}");
    }
}

#[test]
fn read_back_over_netlink_sees_what_was_committed() {
    let ns = Namespaces::new(&["r"]);
    let a = ns.open(0);
    let next = next_state();
    assert!(!in_ns(&a, || table_exists(&table())).unwrap());
    assert_eq!(in_ns(&a, || chain_rule_counts(&table())).unwrap(), None);
    commit_in(&a, |x| TableState::replace(&next, x)).expect("apply");
    assert!(in_ns(&a, || table_exists(&table())).unwrap());
    let counts = in_ns(&a, || chain_rule_counts(&table())).unwrap().expect("table exists");
    let want: BTreeMap<String, usize> = next.chains.iter().map(|(n, c)| (n.clone(), c.rules.len())).collect();
    assert_eq!(counts, want);
    for m in next.maps.values() {
        let mut got = in_ns(&a, || map_entries(&table(), &m.def)).unwrap();
        let mut want = m.entries.clone();
        got.sort_by_key(|(k, _)| k.clone());
        want.sort_by_key(|(k, _)| k.clone());
        assert_eq!(got, want, "map {}", m.def.name);
    }
    // single-entry gets agree, and say None for what is not there
    for m in next.maps.values() {
        for (k, v) in &m.entries {
            assert_eq!(in_ns(&a, || map_entry(&table(), &m.def, k)).unwrap().as_ref(), Some(v), "{k:?}");
        }
    }
    let ingress4 = &next.maps["ingress4"].def;
    assert_eq!(in_ns(&a, || map_entry(&table(), ingress4, &addr("10.0.0.99"))).unwrap(), None);
    // a map that is not there reads as empty
    let absent = SetDef::verdict_map("absent", SetKey::Ipv4Addr);
    assert!(in_ns(&a, || map_entries(&table(), &absent)).unwrap().is_empty());
    assert_eq!(in_ns(&a, || map_entry(&table(), &absent, &addr("10.0.0.1"))).unwrap(), None);
    // per-chain counts, None for a chain that is not there
    let some = in_ns(&a, || rule_counts_of(&table(), &["pol-1", "ep-c", "nope"])).unwrap();
    assert_eq!(some["pol-1"], Some(next.chains["pol-1"].rules.len()));
    assert_eq!(some["ep-c"], Some(1));
    assert_eq!(some["nope"], None);
    // a chain emptied behind our back shows up in the counts
    sh(&["ip", "netns", "exec", &ns.0[0], "nft", "flush", "chain", "inet", "t", "pol-1"]);
    assert_eq!(in_ns(&a, || chain_rule_counts(&table())).unwrap().unwrap()["pol-1"], 0);
    assert_eq!(in_ns(&a, || rule_counts_of(&table(), &["pol-1"])).unwrap()["pol-1"], Some(0));
    // and a table that is gone
    sh(&["ip", "netns", "exec", &ns.0[0], "nft", "delete", "table", "inet", "t"]);
    assert_eq!(in_ns(&a, || rule_counts_of(&table(), &["pol-1"])).unwrap()["pol-1"], None);
    assert_eq!(in_ns(&a, || map_entry(&table(), ingress4, &addr("10.0.0.1"))).unwrap(), None);
}

/// Anti-spoofing in a bridge-family table, with packets: a bridge with two
/// ports; frames from port `vha` must carry client A's allowed addresses
/// (IPv4 and IPv6; link-local for neighbour discovery), others are
/// dropped. In the bridge family the IP version check of address matches
/// is `meta protocol` (with `meta nfproto` they would never match there,
/// and nft could not list the table).
#[test]
fn bridge_family_address_matches_with_packets() {
    let ns = Namespaces::new(&["bh", "ba", "bb"]);
    let (h, a, b) = (ns.0[0].clone(), ns.0[1].clone(), ns.0[2].clone());
    sh(&["ip", "-n", &h, "link", "add", "br0", "type", "bridge"]);
    for (peer, port) in [(&a, "vha"), (&b, "vhb")] {
        sh(&["ip", "-n", &h, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", peer]);
        sh(&["ip", "-n", &h, "link", "set", port, "master", "br0", "up"]);
    }
    sh(&["ip", "-n", &h, "link", "set", "br0", "up"]);
    for (n, addrs) in [
        (&a, vec!["10.82.0.2/24", "10.82.0.5/24", "fd82::2/64", "fd82::5/64"]),
        (&b, vec!["10.82.0.3/24", "fd82::3/64"]),
    ] {
        for ad in addrs {
            sh(&["ip", "-n", n, "addr", "add", ad, "dev", "eth0", "nodad"]);
        }
        sh(&["ip", "-n", n, "link", "set", "eth0", "up"]);
    }
    let ping = |src: &str, dst: &str| {
        Command::new("ip")
            .args(["netns", "exec", &a, "ping", "-c1", "-W2", "-I", src, dst])
            .output()
            .expect("exec ping")
            .status
            .success()
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(20);
    for (src, dst) in
        [("10.82.0.2", "10.82.0.3"), ("10.82.0.5", "10.82.0.3"), ("fd82::2", "fd82::3"), ("fd82::5", "fd82::3")]
    {
        while !ping(src, dst) {
            assert!(std::time::Instant::now() < deadline, "bridge lab broken: {src} cannot reach {dst} without rules");
        }
    }
    // flush the neighbour caches so that the checks below need fresh ND/ARP through the rules
    sh(&["ip", "-n", &a, "neigh", "flush", "all"]);
    sh(&["ip", "-n", &b, "neigh", "flush", "all"]);

    let t = TableRef::new(Family::Bridge, "t");
    let mut s = TableState::new(t.clone());
    s.put_map(
        SetDef::verdict_map("ports", SetKey::IfName),
        vec![(SetElem::IfName("vha".into()), Verdict::Jump("spoof-a".into()))],
    );
    s.put_chain(
        "spoof",
        Some(BaseChain::filter(Hook::Prerouting, -200, ChainPolicy::Accept)),
        vec![Rule { action: Some(Action::IfNameVmap { dir: IfDir::In, map: "ports".into() }), ..Default::default() }],
    );
    let from = |n: &str| {
        Rule::new(vec![Match::AddrInNet { dir: Dir::Src, net: n.parse().unwrap(), negate: false }], Verdict::Return)
    };
    s.put_chain(
        "spoof-a",
        None,
        vec![
            from("10.82.0.2/32"),
            from("fd82::2/128"),
            from("fe80::/10"),
            from("::/128"),
            Rule::new(vec![Match::IpVersion(IpVersion::V4)], Verdict::Drop),
            Rule::new(vec![Match::IpVersion(IpVersion::V6)], Verdict::Drop),
        ],
    );
    commit_in(&ns.open(0), |x| TableState::replace(&s, x)).expect("apply");
    let listed = sh(&["ip", "netns", "exec", &h, "nft", "list", "table", "bridge", "t"]);
    for line in
        ["ip saddr 10.82.0.2 return", "ip6 saddr fd82::2 return", "meta protocol ip drop", "meta protocol ip6 drop"]
    {
        assert!(listed.contains(line), "`{line}` missing from\n{listed}");
    }
    assert!(ping("10.82.0.2", "10.82.0.3"), "allowed IPv4 source");
    assert!(ping("fd82::2", "fd82::3"), "allowed IPv6 source");
    assert!(!ping("10.82.0.5", "10.82.0.3"), "spoofed IPv4 source dropped");
    assert!(!ping("fd82::5", "fd82::3"), "spoofed IPv6 source dropped");
}
