//! The policy engine against the kernel, in fresh network namespaces
//! (`npe<pid><tag>`, deleted by a Drop guard): full apply from nothing,
//! deltas, the fall-backs to a full replace (state file missing or
//! unreadable, stale or torn, table gone, delta refused), a second state
//! directory refused, hand edits healed, a refused apply leaving kernel
//! and state file as they were, CHECK catching tampering, remove, and the
//! timings of a 1k-chain / 1k-entry / 1k-element apply and of one-element
//! and one-endpoint deltas (printed; run with --nocapture).
//!
//! Needs root and the `nft` CLI (read-back only). The desired states are
//! built by hand here, shaped like the compiler's layout; the compiler's
//! own tests feed the engine compiled policy.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use linux_net::nft::{
    Action, BaseChain, ChainPolicy, CtStates, Dir, Family, Hook, IfDir, IpVersion, Match, Rule, SetDef, SetElem,
    SetKey, TableRef, TableState, Verdict,
};
use policy::engine::{ApplyReport, Desired, DispatchKey, Engine, GEN_KEEP, GEN_MAP, STATE_FILE, TABLE_NAME};
use policy::Error;

#[path = "../../linux-net/tests/common/mod.rs"]
mod netns;
use netns::{sh, Namespaces};

/// One namespace `npe<pid><tag>` (the shared guard deletes it on drop).
struct Namespace(Namespaces);

impl Namespace {
    fn new(tag: &str) -> Namespace {
        Namespace(Namespaces::new("npe", &[tag]))
    }

    fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        self.0.open(0).run(f).expect("enter netns")
    }

    fn nft(&self, args: &[&str]) -> String {
        sh(&[&["ip", "netns", "exec", self.0.name(0), "nft"], args].concat())
    }
}

/// A fresh namespace `npe<pid><tag>` and an engine whose state directory is a fresh
/// temporary directory (kept alive by the caller).
fn engine_in(tag: &str) -> (Namespace, tempfile::TempDir, Engine) {
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::new(dir.path());
    (Namespace::new(tag), dir, e)
}

/// A hand-built desired state.
#[derive(Clone)]
struct Hand {
    tables: Vec<TableState>,
    keys: BTreeMap<String, Vec<DispatchKey>>,
}

impl Desired for Hand {
    fn tables(&self) -> &[TableState] {
        &self.tables
    }
    fn dispatch_keys(&self, ep: &str) -> Option<Vec<DispatchKey>> {
        self.keys.get(ep).cloned()
    }
}

fn inet() -> TableRef {
    TableRef::new(Family::Inet, TABLE_NAME)
}

fn bridge() -> TableRef {
    TableRef::new(Family::Bridge, TABLE_NAME)
}

fn v4(i: usize) -> SetElem {
    SetElem::Addr(format!("10.{}.{}.{}", 100 + i / 65536, (i / 256) % 256, i % 256).parse().unwrap())
}

/// `n` endpoints, each with its own ingress chain (dispatched from
/// `ingress4` by its address) holding `rules` rules, a selector set with
/// `n` addresses, an interval set with `n` CIDRs; the bridge table holds
/// the anti-spoof map by interface.
fn layout(n: usize, rules: usize) -> Hand {
    let mut t = TableState::new(inet());
    let ct = Rule::new(
        vec![Match::CtState { states: CtStates::ESTABLISHED | CtStates::RELATED, negate: false }],
        Verdict::Accept,
    );
    let vmap = Rule {
        action: Some(Action::AddrVmap { version: IpVersion::V4, dir: Dir::Dst, map: "ingress4".into() }),
        ..Default::default()
    };
    t.put_chain("ingress-fwd", Some(BaseChain::filter(Hook::Forward, 1, ChainPolicy::Accept)), vec![ct, vmap]);
    t.put_set(SetDef::set("sel", SetKey::Ipv4Addr), (0..n).map(v4).collect());
    let cidrs = (0..n).map(|i| SetElem::Net(format!("172.{}.{}.0/24", 16 + i / 256, i % 256).parse().unwrap()));
    t.put_set(SetDef::interval_set("nets", SetKey::Ipv4Addr), cidrs.collect());
    let invalid = Rule::new(vec![Match::CtState { states: CtStates::INVALID, negate: false }], Verdict::Drop);
    let from_sel = Match::AddrInSet { version: IpVersion::V4, dir: Dir::Src, set: "sel".into(), negate: false };
    let from_nets = Match::AddrInSet { version: IpVersion::V4, dir: Dir::Src, set: "nets".into(), negate: false };
    let mut entries = Vec::new();
    let mut keys = BTreeMap::new();
    let mut b = TableState::new(bridge());
    let mut spoof = Vec::new();
    for i in 0..n {
        let chain = format!("ep-{i}");
        let mut r = vec![invalid.clone()];
        r.extend((1..rules).map(|k| {
            Rule::new(
                vec![
                    if k % 2 == 0 { from_sel.clone() } else { from_nets.clone() },
                    Match::PortRange { proto: 6, dir: Dir::Dst, first: k as u16, last: k as u16, negate: false },
                ],
                Verdict::Accept,
            )
        }));
        t.put_chain(chain.clone(), None, r);
        entries.push((v4(i), Verdict::Goto(chain.clone())));
        let ifname = format!("veth{i}");
        spoof.push((SetElem::IfName(ifname.clone()), Verdict::Jump("spoof-check".into())));
        keys.insert(
            format!("c{i}/eth0"),
            vec![
                DispatchKey { table: inet(), map: "ingress4".into(), key: v4(i) },
                DispatchKey { table: bridge(), map: "spoof".into(), key: SetElem::IfName(ifname) },
            ],
        );
    }
    t.put_map(SetDef::verdict_map("ingress4", SetKey::Ipv4Addr), entries);
    b.put_map(SetDef::verdict_map("spoof", SetKey::IfName), spoof);
    b.put_chain(
        "spoof",
        Some(BaseChain::filter(Hook::Prerouting, -300, ChainPolicy::Accept)),
        vec![Rule { action: Some(Action::IfNameVmap { dir: IfDir::In, map: "spoof".into() }), ..Default::default() }],
    );
    b.put_chain("spoof-check", None, vec![Rule::new(vec![], Verdict::Drop)]);
    Hand { tables: vec![t, b], keys }
}

fn apply(ns: &Namespace, e: &Engine, d: &Hand) -> ApplyReport {
    ns.run(|| e.apply(d)).expect("apply")
}

#[test]
fn full_then_delta_then_fallbacks() {
    let ns = Namespace::new("a");
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::new(&dir.path().join("state"));
    let d = layout(3, 3);
    let r = apply(&ns, &e, &d);
    assert!(r.full && r.ops > 0, "{r:?}");
    assert!(dir.path().join("state").join(STATE_FILE).exists());
    assert!(ns.nft(&["list", "table", "inet", TABLE_NAME]).contains("ip daddr vmap @ingress4"));
    assert!(ns.nft(&["list", "table", "bridge", TABLE_NAME]).contains("iifname vmap @spoof"));
    for ep in d.keys.keys() {
        ns.run(|| e.check(&d, ep)).expect("check after full apply");
    }

    // the same state again: nothing to send
    let r = apply(&ns, &e, &d);
    assert_eq!((r.full, r.ops), (false, 0), "{r:?}");

    // one element: one message, a delta
    let mut d2 = d.clone();
    d2.tables[0].sets.get_mut("sel").unwrap().elems.push(v4(999));
    let r = apply(&ns, &e, &d2);
    // the element, and in each of the two tables the new generation entry
    assert_eq!((r.full, r.ops), (false, 3), "{r:?}");
    assert!(ns.nft(&["list", "set", "inet", TABLE_NAME, "sel"]).contains("10.100.3.231"));

    // state file gone: full replace
    std::fs::remove_file(dir.path().join("state").join(STATE_FILE)).unwrap();
    let r = apply(&ns, &e, &d);
    assert!(r.full, "{r:?}");
    assert!(!ns.nft(&["list", "set", "inet", TABLE_NAME, "sel"]).contains("10.100.3.231"));

    // state file unreadable: full replace
    std::fs::write(dir.path().join("state").join(STATE_FILE), b"{not json").unwrap();
    let r = apply(&ns, &e, &d2);
    assert!(r.full, "{r:?}");

    // a table deleted behind our back: replaced
    ns.nft(&["delete", "table", "bridge", TABLE_NAME]);
    let r = apply(&ns, &e, &d);
    assert!(r.full, "{r:?}");
    ns.run(|| e.check(&d, "c0/eth0")).expect("check after the table came back");

    // a set flushed behind our back: the delta (delete an element that is
    // no longer there) is refused, and the engine replaces the tables
    ns.nft(&["flush", "set", "inet", TABLE_NAME, "sel"]);
    let mut d3 = d.clone();
    d3.tables[0].sets.get_mut("sel").unwrap().elems.remove(0);
    let r = apply(&ns, &e, &d3);
    assert!(r.full, "{r:?}");
    let listed = ns.nft(&["list", "set", "inet", TABLE_NAME, "sel"]);
    assert!(listed.contains("10.100.0.1") && !listed.contains("10.100.0.0,"), "{listed}");

    // remove: both tables and the state file gone
    ns.run(|| e.remove()).expect("remove");
    let tables = ns.nft(&["list", "tables"]);
    assert!(!tables.contains(TABLE_NAME), "{tables}");
    assert!(!dir.path().join("state").join(STATE_FILE).exists());
    ns.run(|| e.remove()).expect("remove twice");
}

#[test]
fn refused_apply_changes_neither_kernel_nor_state() {
    let (ns, dir, e) = engine_in("f");
    let d = layout(2, 2);
    apply(&ns, &e, &d);
    let before_kernel = ns.nft(&["list", "ruleset"]);
    let before_file = std::fs::read(dir.path().join(STATE_FILE)).unwrap();
    // a rule that looks up a set that does not exist: the kernel refuses
    let mut bad = d.clone();
    let missing = Match::AddrInSet { version: IpVersion::V4, dir: Dir::Src, set: "missing".into(), negate: false };
    bad.tables[0].chains.get_mut("ep-0").unwrap().rules.push(Rule::new(vec![missing], Verdict::Drop));
    bad.tables[0].sets.get_mut("sel").unwrap().elems.push(v4(500));
    let err = ns.run(|| e.apply(&bad)).expect_err("refused");
    assert!(matches!(err, Error::Nft(_)), "{err}");
    assert!(err.to_string().contains("ep-0"), "the error names the failing rule's chain: {err}");
    assert_eq!(ns.nft(&["list", "ruleset"]), before_kernel);
    assert_eq!(std::fs::read(dir.path().join(STATE_FILE)).unwrap(), before_file);
    // and the previous state is still a valid base for a delta
    let r = apply(&ns, &e, &d);
    assert_eq!((r.full, r.ops), (false, 0), "{r:?}");
    // the same table twice is refused before anything is sent
    let twice = Hand { tables: vec![d.tables[0].clone(), d.tables[0].clone()], keys: d.keys.clone() };
    let err = ns.run(|| e.apply(&twice)).expect_err("table twice");
    assert!(err.to_string().contains("given twice"), "{err}");
    assert_eq!(ns.nft(&["list", "ruleset"]), before_kernel);
}

#[test]
fn state_that_cannot_be_written_is_forgotten() {
    let (ns, dir, e) = engine_in("w");
    let d = layout(2, 2);
    apply(&ns, &e, &d);
    // a directory where the temp file would go: the write fails after the commit
    let tmp = dir.path().join(format!(".{STATE_FILE}.{}", std::process::id()));
    std::fs::create_dir(&tmp).unwrap();
    let mut d2 = d.clone();
    d2.tables[0].sets.get_mut("sel").unwrap().elems.push(v4(77));
    let err = ns.run(|| e.apply(&d2)).expect_err("state not written");
    assert!(matches!(err, Error::State { .. }), "{err}");
    assert!(ns.nft(&["list", "set", "inet", TABLE_NAME, "sel"]).contains("10.100.0.77"), "the policy is in force");
    assert!(!dir.path().join(STATE_FILE).exists(), "the stale state is gone");
    std::fs::remove_dir(&tmp).unwrap();
    let r = apply(&ns, &e, &d2);
    assert!(r.full, "no state: a full replace {r:?}");
}

#[test]
fn check_catches_what_was_changed_behind_our_back() {
    let (ns, _dir, e) = engine_in("c");
    let d = layout(3, 3);
    let check = |ep: &str| ns.run(|| e.check(&d, ep));
    // nothing applied yet
    assert!(matches!(check("c0/eth0"), Err(Error::Check(_))));
    apply(&ns, &e, &d);
    check("c1/eth0").expect("in place");
    assert!(matches!(check("nobody/eth0"), Err(Error::Check(m)) if m.contains("not in the policy")));
    // its chain emptied
    ns.nft(&["flush", "chain", "inet", TABLE_NAME, "ep-1"]);
    let err = check("c1/eth0").expect_err("flushed chain");
    assert!(err.to_string().contains("ep-1 has 0 rules"), "{err}");
    check("c2/eth0").expect("another endpoint is unaffected");
    // its dispatch entry gone
    ns.nft(&["delete", "element", "inet", TABLE_NAME, "ingress4", "{ 10.100.0.2 }"]);
    let err = check("c2/eth0").expect_err("entry gone");
    assert!(err.to_string().contains("ingress4"), "{err}");
    // its anti-spoof entry pointing elsewhere
    ns.nft(&["delete", "element", "bridge", TABLE_NAME, "spoof", "{ \"veth0\" }"]);
    ns.nft(&["add", "element", "bridge", TABLE_NAME, "spoof", "{ \"veth0\" : accept }"]);
    let err = check("c0/eth0").expect_err("entry changed");
    assert!(err.to_string().contains("spoof"), "{err}");
    // a base chain emptied breaks every endpoint
    apply(&ns, &e, &Hand { tables: vec![], keys: BTreeMap::new() });
    apply(&ns, &e, &d);
    check("c0/eth0").expect("repaired");
    ns.nft(&["flush", "chain", "inet", TABLE_NAME, "ingress-fwd"]);
    assert!(check("c0/eth0").is_err());
}

/// `nft -j list ruleset` without the kernel's handles and the entries of
/// the engine's `gen` maps (sequence numbers): what two rulesets built
/// apart must agree on.
fn ruleset(ns: &Namespace) -> serde_json::Value {
    fn strip(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::Object(m) => {
                m.remove("handle");
                if m.get("name").and_then(|n| n.as_str()) == Some(GEN_MAP) {
                    m.remove("elem");
                }
                m.values_mut().for_each(strip);
            }
            serde_json::Value::Array(a) => a.iter_mut().for_each(strip),
            _ => {}
        }
    }
    let mut v: serde_json::Value = serde_json::from_str(&ns.nft(&["-j", "list", "ruleset"])).expect("nft -j");
    strip(&mut v);
    v
}

/// The ruleset `d` gives when applied from nothing by `e` (same owner).
fn fresh(ns: &Namespace, e: &Engine, d: &Hand) -> serde_json::Value {
    ns.run(|| e.remove()).expect("remove");
    assert!(apply(ns, e, d).full);
    ruleset(ns)
}

#[test]
fn stale_state_file_means_full_replace() {
    let (ns, dir, e) = engine_in("g");
    let d = layout(3, 3);
    apply(&ns, &e, &d);
    let old = std::fs::read(dir.path().join(STATE_FILE)).unwrap();
    // the newer state: ep-0 loses a rule, a set element goes
    let mut d2 = d.clone();
    d2.tables[0].chains.get_mut("ep-0").unwrap().rules.pop();
    d2.tables[0].sets.get_mut("sel").unwrap().elems.remove(0);
    assert!(!apply(&ns, &e, &d2).full);
    // the older file comes back (a lost write, a restored backup, a second
    // writer): it says the kernel has `d`, the kernel has `d2`
    std::fs::write(dir.path().join(STATE_FILE), &old).unwrap();
    assert!(ns.nft(&["list", "chain", "inet", TABLE_NAME, "ep-0"]).matches("accept").count() == 1);
    let r = apply(&ns, &e, &d);
    assert!(r.full, "the file's generation is not the kernel's: full replace {r:?}");
    let got = ruleset(&ns);
    assert_eq!(got, fresh(&ns, &e, &d), "the kernel equals the state applied");
    // and a file whose write was torn
    std::fs::write(dir.path().join(STATE_FILE), &old[..old.len() / 2]).unwrap();
    assert!(apply(&ns, &e, &d2).full);
    for ep in d2.keys.keys() {
        ns.run(|| e.check(&d2, ep)).expect("check");
    }
    // every table names its owner and holds one generation entry
    for fam in ["inet", "bridge"] {
        let listed = ns.nft(&["list", "table", fam, TABLE_NAME]);
        let gen = ns.nft(&["list", "map", fam, TABLE_NAME, GEN_MAP]);
        assert_eq!(gen.matches(": accept").count(), 1, "{gen}");
        assert!(
            listed.contains(&format!("comment \"owner {}\"", dir.path().canonicalize().unwrap().display())),
            "{listed}"
        );
    }
    // generations pile up (an add costs microseconds, a delete a grace
    // period) and are cleaned up GEN_KEEP at a time; deltas all along
    for i in 0..2 * GEN_KEEP {
        let mut di = d2.clone();
        di.tables[0].sets.get_mut("sel").unwrap().elems.push(v4(600 + i));
        assert!(!apply(&ns, &e, &di).full);
        let gen = ns.nft(&["list", "map", "inet", TABLE_NAME, GEN_MAP]);
        let n = gen.matches(": accept").count();
        assert!((1..=GEN_KEEP).contains(&n), "{n} entries: {gen}");
    }
    // an older file whose generation is still in the map is not the newest: full replace
    let older = std::fs::read(dir.path().join(STATE_FILE)).unwrap();
    apply(&ns, &e, &d);
    std::fs::write(dir.path().join(STATE_FILE), &older).unwrap();
    assert!(apply(&ns, &e, &d2).full);
    assert_eq!(ruleset(&ns), fresh(&ns, &e, &d2));
}

#[test]
fn hand_edited_chain_is_caught_by_check_and_healed_by_the_next_apply_of_it() {
    let (ns, _dir, e) = engine_in("h");
    let d = layout(3, 3);
    apply(&ns, &e, &d);
    ns.nft(&["add", "rule", "inet", TABLE_NAME, "ep-1", "ip", "saddr", "192.0.2.1", "accept"]);
    let err = ns.run(|| e.check(&d, "c1/eth0")).expect_err("hand edit");
    assert!(err.to_string().contains("ep-1 has 4 rules"), "{err}");
    // the generation chain does not see edits of other chains: a delta that
    // does not touch ep-1 leaves the added rule
    let r = apply(&ns, &e, &d);
    assert_eq!((r.full, r.ops), (false, 0), "{r:?}");
    assert!(ns.nft(&["list", "chain", "inet", TABLE_NAME, "ep-1"]).contains("192.0.2.1"));
    // a delta that changes ep-1 flushes and refills it
    let mut d2 = d.clone();
    d2.tables[0].chains.get_mut("ep-1").unwrap().rules.pop();
    let r = apply(&ns, &e, &d2);
    assert!(!r.full, "{r:?}");
    assert!(!ns.nft(&["list", "chain", "inet", TABLE_NAME, "ep-1"]).contains("192.0.2.1"));
    ns.run(|| e.check(&d2, "c1/eth0")).expect("healed");
    // a chain the next state does not change: apply_full heals it
    ns.nft(&["add", "rule", "inet", TABLE_NAME, "ep-2", "ip", "saddr", "192.0.2.2", "accept"]);
    assert!(ns.run(|| e.check(&d2, "c2/eth0")).is_err());
    let r = ns.run(|| e.apply_full(&d2)).expect("apply_full");
    assert!(r.full, "{r:?}");
    let got = ruleset(&ns);
    assert_eq!(got, fresh(&ns, &e, &d2), "the kernel equals the state applied");
    for ep in d2.keys.keys() {
        ns.run(|| e.check(&d2, ep)).expect("check");
    }
}

#[test]
fn a_second_state_dir_is_refused_while_the_first_protects_endpoints() {
    let ns = Namespace::new("o");
    let (dir1, dir2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (e1, e2) = (Engine::new(dir1.path()), Engine::new(dir2.path()));
    let d1 = layout(3, 3);
    let mut d2 = layout(1, 2);
    d2.tables[0].sets.get_mut("sel").unwrap().elems.clear();
    apply(&ns, &e1, &d1);
    let before = ns.nft(&["list", "ruleset"]);
    let err = ns.run(|| e2.apply(&d2)).expect_err("a second owner");
    let (p1, p2) = (dir1.path().canonicalize().unwrap(), dir2.path().canonicalize().unwrap());
    assert!(matches!(&err, Error::Owner { owner, ours, .. } if *owner == p1 && *ours == p2), "{err}");
    let msg = err.to_string();
    assert!(msg.contains(&*p1.to_string_lossy()) && msg.contains(&*p2.to_string_lossy()), "names both: {msg}");
    assert!(matches!(ns.run(|| e2.apply_full(&d2)), Err(Error::Owner { .. })));
    assert!(matches!(ns.run(|| e2.remove()), Err(Error::Owner { .. })));
    assert_eq!(ns.nft(&["list", "ruleset"]), before, "nothing sent");
    for ep in d1.keys.keys() {
        ns.run(|| e1.check(&d1, ep)).expect("the first owner's endpoints stay protected");
    }
    // the first keeps applying deltas
    let mut d1b = d1.clone();
    d1b.tables[0].sets.get_mut("sel").unwrap().elems.push(v4(42));
    assert!(!apply(&ns, &e1, &d1b).full);
    // once the first dispatches no endpoint, the second may take the table over
    apply(&ns, &e1, &layout(0, 3));
    assert!(apply(&ns, &e2, &d2).full);
    ns.run(|| e2.check(&d2, "c0/eth0")).expect("second owner's endpoint");
    assert!(matches!(ns.run(|| e1.apply(&d1)), Err(Error::Owner { .. })), "now the first is refused");
    // an owner whose state directory is gone is taken over
    let gone = dir2.path().to_path_buf();
    drop(dir2);
    assert!(!gone.exists());
    assert!(apply(&ns, &e1, &d1).full);
    for ep in d1.keys.keys() {
        ns.run(|| e1.check(&d1, ep)).expect("the first owner's endpoints");
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

/// 1k endpoint chains of 3 rules, a 1k-entry address map, a 1k-address
/// set and a 1k-CIDR interval set, a 1k-entry anti-spoof map: full apply
/// (state persisted), then one element added to a set, then one endpoint
/// added (chain + map entries). Medians of 5 rounds, printed, with the
/// state directory on tmpfs (`/dev/shm`, as `/run` is on a usual host)
/// and on this machine's disk (a tempdir; the state file is not fsynced,
/// the kernel holds its generation).
#[test]
fn scale_full_apply_and_deltas() {
    const N: usize = 1000;
    let ns = Namespace::new("s");
    let base = layout(N, 3);
    let mut plus_elem = base.clone();
    plus_elem.tables[0].sets.get_mut("sel").unwrap().elems.push(v4(N + 1));
    let mut plus_ep = plus_elem.clone();
    let bigger = layout(N + 1, 3);
    plus_ep.tables[0].chains.insert(format!("ep-{N}"), bigger.tables[0].chains[&format!("ep-{N}")].clone());
    plus_ep.tables[0].maps = bigger.tables[0].maps.clone();
    plus_ep.tables[1].maps = bigger.tables[1].maps.clone();
    plus_ep.keys = bigger.keys.clone();
    let rules: usize = base.tables.iter().map(TableState::rule_count).sum();
    let shm = PathBuf::from("/dev/shm");
    assert!(shm.is_dir(), "/dev/shm (tmpfs) is needed for the tmpfs measurement");
    for (what, parent) in [("tmpfs", Some(shm)), ("disk", None)] {
        let (mut full, mut one, mut ep, mut checks) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        let (mut full_ops, mut state_bytes) = (0, 0);
        for _ in 0..5 {
            let dir = match &parent {
                Some(p) => tempfile::tempdir_in(p).unwrap(),
                None => tempfile::tempdir().unwrap(),
            };
            let e = Engine::new(dir.path());
            let r = apply(&ns, &e, &base);
            assert!(r.full);
            full_ops = r.ops;
            full.push(r);
            state_bytes = std::fs::metadata(dir.path().join(STATE_FILE)).unwrap().len();
            let r = apply(&ns, &e, &plus_elem);
            assert_eq!((r.full, r.ops), (false, 3), "{r:?}");
            one.push(r);
            let r = apply(&ns, &e, &plus_ep);
            assert!(!r.full && r.ops <= 8, "{r:?}");
            ep.push(r);
            let t0 = std::time::Instant::now();
            ns.run(|| e.check(&plus_ep, &format!("c{N}/eth0"))).expect("new endpoint in place");
            checks.push(t0.elapsed());
            ns.run(|| e.remove()).expect("remove");
        }
        let show = |v: &[ApplyReport]| {
            format!(
                "median {} (kernel commit {})",
                ms(median(v.iter().map(|r| r.elapsed).collect())),
                ms(median(v.iter().map(|r| r.commit).collect()))
            )
        };
        eprintln!(
            "policy engine scale, state on {what} ({N} endpoint chains x 3 rules = {rules} rules, {N}-entry address map, {N}-address set, {N}-CIDR interval set, {N}-entry anti-spoof map; {full_ops} messages; state file {state_bytes} bytes): full apply {} (all {:?}); one set element {}; one endpoint (chain + 2 map entries) {}; check of one endpoint median {}",
            show(&full),
            full.iter().map(|r| ms(r.elapsed)).collect::<Vec<_>>(),
            show(&one),
            show(&ep),
            ms(median(checks)),
        );
    }
}

const INCREMENTAL_POLICIES: &str = "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: web}
spec:
  order: 10
  selector: app == 'web'
  types: [Ingress, Egress]
  ingress:
  - {action: Allow, protocol: TCP, source: {selector: app == 'api'}, destination: {ports: [80, 443]}}
  - {action: Deny, source: {nets: [10.9.0.0/16, 10.20.0.0/16]}}
  egress:
  - {action: Allow, destination: {selector: app == 'db'}}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: db, namespace: prod}
spec:
  selector: app == 'db'
  ingress:
  - {action: Allow, protocol: TCP, source: {selector: app == 'web'}, destination: {ports: [5432]}}
";

fn incremental_ep(i: usize, app: &str) -> policy::Endpoint {
    policy::Endpoint {
        name: format!("c{i}/eth0"),
        namespace: "prod".into(),
        labels: [("app".to_string(), app.to_string()), ("pod".to_string(), format!("p{i}"))].into(),
        addrs: vec![format!("10.7.0.{}", i + 1).parse().unwrap()],
        host_ifname: Some(format!("vi{i}")),
        bridged: i.is_multiple_of(2),
        remote: None,
    }
}

#[test]
fn changes_applied_incrementally_leave_what_a_full_apply_of_compile_leaves() {
    use policy::compile::{compile, Compiler};
    let (ns, dir, e) = engine_in("i");
    let set = policy::parse_str(std::path::Path::new("t.yaml"), INCREMENTAL_POLICIES).unwrap();
    let eps: Vec<_> = (0..12).map(|i| incremental_ep(i, ["web", "api", "db"][i % 3])).collect();
    let mut c = Compiler::new(set.clone(), &eps);
    let apply_changes = |c: &mut Compiler| {
        let r = ns.run(|| e.apply_changes(c.compiled(), &c.changes())).expect("apply_changes");
        c.applied();
        r
    };
    assert!(apply_changes(&mut c).full, "from nothing");
    // the full replace, too, leaves the state file to flush
    assert!(!dir.path().join(policy::engine::STATE_FILE).exists(), "written before flush");
    // an endpoint added: a delta, and it is protected
    c.put_endpoint(incremental_ep(20, "db"));
    let r = apply_changes(&mut c);
    assert!(!r.full && r.ops > 0, "{r:?}");
    ns.run(|| e.check(c.compiled(), "c20/eth0")).expect("check of the added endpoint");
    // a rule edited, an endpoint relabelled, one removed: deltas
    let mut edited = set.clone();
    edited.policies[0].ingress[0].destination.ports.pop();
    c.set_policies(edited.clone());
    assert!(!c.changes().all);
    let r = apply_changes(&mut c);
    assert!(!r.full && r.ops > 0, "{r:?}");
    c.put_endpoint(incremental_ep(3, "web"));
    c.remove_endpoint("c5/eth0");
    assert!(!apply_changes(&mut c).full);
    assert_eq!(apply_changes(&mut c).ops, 0, "nothing changed: nothing sent");
    // the state file was never written: another engine (the plugin's ADD) finds none (or one
    // naming an older generation than the kernel's newest), and replaces
    let other = Engine::new(dir.path());
    c.put_endpoint(incremental_ep(21, "api"));
    let r = ns.run(|| other.apply(c.compiled())).expect("apply by another engine");
    assert!(r.full, "a stale file is never a base for a delta: {r:?}");
    c.applied();
    // the long-lived engine sees the file replaced: its next change is a delta from that file
    c.remove_endpoint("c21/eth0");
    assert!(!apply_changes(&mut c).full);
    ns.run(|| e.flush()).expect("flush");
    // once flushed, the file describes the kernel: a new engine has nothing to send
    let r = ns.run(|| Engine::new(dir.path()).apply(c.compiled())).expect("apply");
    assert!(!r.full && r.ops == 0, "{r:?}");
    // and the kernel holds what a full apply of compile() from nothing gives
    let got = ruleset(&ns);
    let want = compile(&edited, &c.endpoints());
    ns.run(|| e.remove()).expect("remove");
    assert!(ns.run(|| e.apply(&want)).expect("apply").full);
    assert_eq!(got, ruleset(&ns));
}
