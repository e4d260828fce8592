//! The policy engine against the kernel, in fresh network namespaces
//! (`npe<pid><tag>`, deleted by a Drop guard): full apply from nothing,
//! deltas, the fall-backs to a full replace (state file missing or
//! unreadable, table gone, delta refused), a refused apply leaving kernel
//! and state file as they were, CHECK catching tampering, remove, and the
//! timings of a 1k-chain / 1k-entry / 1k-element apply and of one-element
//! and one-endpoint deltas (printed; run with --nocapture).
//!
//! Needs root and the `nft` CLI (read-back only). The desired states are
//! built by hand here, shaped like the compiler's layout; the compiler's
//! own tests feed the engine compiled policy.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use linux_net::netns::NetNs;
use linux_net::nft::{
    Action, BaseChain, ChainPolicy, CtStates, Dir, Family, Hook, IfDir, IpVersion, Match, Rule, SetDef, SetElem,
    SetKey, TableRef, TableState, Verdict,
};
use policy::engine::{ApplyReport, Desired, DispatchKey, Engine, STATE_FILE, TABLE_NAME};
use policy::Error;

struct Namespace(String);

impl Namespace {
    fn new(tag: &str) -> Namespace {
        let name = format!("npe{}{tag}", std::process::id());
        let _ = Command::new("ip").args(["netns", "del", &name]).output();
        sh(&["ip", "netns", "add", &name]);
        Namespace(name)
    }

    fn run<T>(&self, f: impl FnOnce() -> T) -> T {
        NetNs::open(&PathBuf::from(format!("/run/netns/{}", self.0))).expect("open netns").run(f).expect("enter netns")
    }

    fn nft(&self, args: &[&str]) -> String {
        sh(&[&["ip", "netns", "exec", &self.0, "nft"], args].concat())
    }
}

impl Drop for Namespace {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("exec");
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
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
    assert_eq!((r.full, r.ops), (false, 1), "{r:?}");
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
    let ns = Namespace::new("f");
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::new(dir.path());
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
    let ns = Namespace::new("w");
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::new(dir.path());
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
    let ns = Namespace::new("c");
    let dir = tempfile::tempdir().unwrap();
    let e = Engine::new(dir.path());
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
/// and on this machine's disk (a tempdir): the fsync of the state file
/// is most of a delta's time on disk.
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
            assert_eq!((r.full, r.ops), (false, 1), "{r:?}");
            one.push(r);
            let r = apply(&ns, &e, &plus_ep);
            assert!(!r.full && r.ops <= 6, "{r:?}");
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
