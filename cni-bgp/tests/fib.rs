//! `cni_bgp::fib::Fib` against the running kernel, each test in network
//! namespaces of its own (named with the pid and a tag; a Drop guard deletes
//! them even when an assertion fails). What is checked is what `ip route`
//! shows and whether packets get through. Needs root, `ip` and `ping`.

use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use cni_bgp::fib::{self, Change, Fib, NextHop, MAIN_TABLE, PROTOCOL};
use ipnetwork::IpNetwork;
use linux_net::netns::NetNs;

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let ns = Ns(format!("h8fib{}{tag}", std::process::id()));
        let _ = Command::new("ip").args(["netns", "del", &ns.0]).output();
        ip(&["netns", "add", &ns.0]);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn open(&self) -> NetNs {
        NetNs::open(&PathBuf::from(format!("/run/netns/{}", self.0))).expect("open netns")
    }

    fn fib(&self) -> Fib {
        Fib::new(self.open().netlink().expect("netlink in netns"), MAIN_TABLE)
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.0];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// `ip route show proto 76` (IPv4 or IPv6), one route a line.
    fn ours(&self, v6: bool) -> Vec<String> {
        let fam = if v6 { "-6" } else { "-4" };
        self.ip(&[fam, "route", "show", "proto", &PROTOCOL.to_string()]).lines().map(|l| l.trim().to_string()).collect()
    }

    /// A link `d0` (a veth whose peer `d1` stays in the namespace, as the
    /// test kernel has no dummy driver) with 10.77.0.1/24 and fd77::1/64:
    /// next hops 10.77.0.x / fd77::x are on-link.
    fn with_dummy(self) -> Ns {
        self.ip(&["link", "add", "d0", "type", "veth", "peer", "d1"]);
        self.ip(&["link", "set", "d1", "up"]);
        self.ip(&["addr", "add", "10.77.0.1/24", "dev", "d0"]);
        self.ip(&["addr", "add", "fd77::1/64", "dev", "d0", "nodad"]);
        self.ip(&["link", "set", "d0", "up"]);
        self
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("exec ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn net(s: &str) -> IpNetwork {
    s.parse().expect("prefix")
}

fn via(p: &str, gw: &str) -> Change {
    Change { prefix: net(p), via: Some(NextHop::via(gw.parse().expect("gw"))) }
}

fn withdraw(p: &str) -> Change {
    Change { prefix: net(p), via: None }
}

#[test]
fn learned_routes_are_installed_repointed_and_withdrawn_ipv4_and_ipv6() {
    let ns = Ns::new("a").with_dummy();
    let mut fib = ns.fib();
    let failed = fib
        .apply([via("10.90.1.0/24", "10.77.0.2"), via("10.90.2.0/26", "10.77.0.3"), via("2001:db8:90::/48", "fd77::2")])
        .expect("apply");
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(ns.ours(false), ["10.90.1.0/24 via 10.77.0.2 dev d0", "10.90.2.0/26 via 10.77.0.3 dev d0"]);
    let v6 = ns.ours(true);
    assert_eq!(v6.len(), 1, "{v6:?}");
    assert!(v6[0].starts_with("2001:db8:90::/48 via fd77::2 dev d0"), "{v6:?}");

    // A new best path re-points the route; a withdrawal removes it.
    let failed = fib
        .apply([via("10.90.1.0/24", "10.77.0.9"), withdraw("10.90.2.0/26"), withdraw("2001:db8:90::/48")])
        .expect("apply");
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(ns.ours(false), ["10.90.1.0/24 via 10.77.0.9 dev d0"]);
    assert!(ns.ours(true).is_empty());
    assert_eq!(fib.installed(), 1);
}

#[test]
fn a_route_of_another_protocol_to_the_same_prefix_is_never_touched() {
    let ns = Ns::new("b").with_dummy();
    ns.ip(&["route", "add", "10.91.0.0/24", "via", "10.77.0.5", "proto", "static"]);
    ns.ip(&["route", "add", "blackhole", "10.91.9.0/24", "proto", "bird"]);
    let static_route = ns.ip(&["route", "show", "10.91.0.0/24"]);
    let mut fib = ns.fib();
    assert!(fib.reconcile_start().expect("reconcile").is_empty(), "foreign routes are not ours");

    let failed = fib.apply([via("10.91.0.0/24", "10.77.0.2"), via("10.91.1.0/24", "10.77.0.2")]).expect("apply");
    assert_eq!(failed.len(), 1, "{failed:?}");
    assert_eq!(failed[0].prefix, net("10.91.0.0/24"));
    assert_eq!(failed[0].error.errno(), Some(nix_eexist()), "{}", failed[0].error);
    assert_eq!(ns.ip(&["route", "show", "10.91.0.0/24"]), static_route);
    assert_eq!(ns.ours(false), ["10.91.1.0/24 via 10.77.0.2 dev d0"]);

    // Withdrawing it and blackholing/unblackholing the same prefix as own block leave it alone too.
    assert!(fib.apply([withdraw("10.91.0.0/24")]).expect("withdraw").is_empty());
    let failed = fib.set_own_blocks(&[net("10.91.9.0/24")]).expect("own");
    assert_eq!(failed.len(), 1, "the bird blackhole holds the key: {failed:?}");
    assert!(fib.set_own_blocks(&[]).expect("own").is_empty());
    assert_eq!(ns.ip(&["route", "show", "10.91.0.0/24"]), static_route);
    assert_eq!(ns.ip(&["route", "show", "proto", "bird"]).trim(), "blackhole 10.91.9.0/24");
    assert!(fib.sweep_stale().expect("sweep").1.is_empty());
    assert_eq!(ns.ip(&["route", "show", "10.91.0.0/24"]), static_route);
}

fn nix_eexist() -> nix::errno::Errno {
    nix::errno::Errno::EEXIST
}

#[test]
fn own_blocks_get_blackholes_that_learned_routes_do_not_override() {
    let ns = Ns::new("c").with_dummy();
    let mut fib = ns.fib();
    assert!(fib.set_own_blocks(&[net("10.92.0.0/26"), net("fd92::/122")]).expect("own").is_empty());
    assert_eq!(ns.ours(false), ["blackhole 10.92.0.0/26"]);
    assert!(ns.ours(true)[0].starts_with("blackhole fd92::/122"), "{:?}", ns.ours(true));
    // Traffic to the block that no pod route covers is dropped here, not sent on.
    let get = Command::new("ip").args(["-n", &ns.0, "route", "get", "10.92.0.7"]).output().expect("ip");
    assert!(!get.status.success(), "route get to a blackholed block must fail");

    // Another node advertising our block does not replace the blackhole; giving the block up removes it.
    assert!(fib.apply([via("10.92.0.0/26", "10.77.0.2")]).expect("apply").is_empty());
    assert_eq!(ns.ours(false), ["blackhole 10.92.0.0/26"]);
    assert!(fib.set_own_blocks(&[net("fd92::/122")]).expect("own").is_empty());
    assert_eq!(ns.ours(false), ["10.92.0.0/26 via 10.77.0.2 dev d0"], "the learned route takes over");
    assert!(fib.set_own_blocks(&[]).expect("own").is_empty());
    assert!(ns.ours(true).is_empty());
}

#[test]
fn an_unreachable_next_hop_fails_that_route_only() {
    let ns = Ns::new("d").with_dummy();
    let mut fib = ns.fib();
    let failed = fib
        .apply([
            via("10.93.1.0/24", "10.77.0.2"),
            via("10.93.2.0/24", "192.0.2.1"),
            via("10.93.3.0/24", "10.77.0.2"),
            via("2001:db8:93::/48", "2001:db8:ffff::1"),
            via("2001:db8:94::/48", "fd77::2"),
        ])
        .expect("apply");
    let msgs: Vec<String> = failed.iter().map(|f| f.error.to_string()).collect();
    assert_eq!(failed.len(), 2, "{msgs:?}");
    assert_eq!(failed[0].prefix, net("10.93.2.0/24"));
    assert!(msgs[0].contains("10.93.2.0/24 via 192.0.2.1"), "{msgs:?}");
    assert_eq!(failed[0].error.errno(), Some(nix::errno::Errno::ENETUNREACH), "{msgs:?}");
    assert_eq!(failed[1].prefix, net("2001:db8:93::/48"));
    assert!(msgs[1].contains("via 2001:db8:ffff::1"), "{msgs:?}");
    assert_eq!(ns.ours(false), ["10.93.1.0/24 via 10.77.0.2 dev d0", "10.93.3.0/24 via 10.77.0.2 dev d0"]);
    assert_eq!(ns.ours(true).len(), 1);
    assert_eq!(fib.installed(), 3);
}

/// h (10.78.1.2) -> r (router, the Fib) -> d (10.78.2.2, with 10.99.0.1 and
/// 10.99.5.1 on lo). Pings from h to d's loopbacks go through r's learned routes.
fn ping(from: &Ns, to: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", &from.0, "ping", "-c", "3", "-i", "0.2", "-w", "5", "-q", to])
        .output()
        .expect("exec ping")
        .status
        .success()
}

#[test]
fn a_restart_keeps_forwarding_and_the_sweep_removes_only_what_was_not_relearned() {
    let h = Ns::new("h");
    let r = Ns::new("r");
    let d = Ns::new("x");
    let pid = std::process::id();
    let (rh, rd) = (format!("h8rh{pid}"), format!("h8rd{pid}"));
    ip(&["link", "add", &rh, "netns", &r.0, "type", "veth", "peer", "eth0", "netns", &h.0]);
    ip(&["link", "add", &rd, "netns", &r.0, "type", "veth", "peer", "eth0", "netns", &d.0]);
    r.ip(&["addr", "add", "10.78.1.1/24", "dev", &rh]);
    r.ip(&["addr", "add", "10.78.2.1/24", "dev", &rd]);
    r.ip(&["link", "set", &rh, "up"]);
    r.ip(&["link", "set", &rd, "up"]);
    h.ip(&["addr", "add", "10.78.1.2/24", "dev", "eth0"]);
    h.ip(&["link", "set", "eth0", "up"]);
    h.ip(&["route", "add", "default", "via", "10.78.1.1"]);
    d.ip(&["addr", "add", "10.78.2.2/24", "dev", "eth0"]);
    d.ip(&["addr", "add", "10.99.0.1/32", "dev", "lo"]);
    d.ip(&["addr", "add", "10.99.5.1/32", "dev", "lo"]);
    d.ip(&["link", "set", "eth0", "up"]);
    d.ip(&["route", "add", "default", "via", "10.78.2.1"]);
    r.open().run(|| fib::enable_forwarding(true, true)).expect("enter").expect("forwarding");
    assert_eq!(ip(&["netns", "exec", &r.0, "cat", "/proc/sys/net/ipv4/ip_forward"]).trim(), "1");

    assert!(!ping(&h, "10.99.0.1"), "no route yet: must not get through");
    let mut first = r.fib();
    assert!(first
        .apply([via("10.99.0.0/24", "10.78.2.2"), via("10.99.5.0/24", "10.78.2.2")])
        .expect("apply")
        .is_empty());
    assert!(ping(&h, "10.99.0.1") && ping(&h, "10.99.5.1"));
    drop(first); // the agent stops: nothing is withdrawn

    let mut second = r.fib();
    let found = second.reconcile_start().expect("reconcile");
    let mut dsts: Vec<String> = found.iter().map(|r| r.dst.to_string()).collect();
    dsts.sort();
    assert_eq!(dsts, ["10.99.0.0/24", "10.99.5.0/24"]);
    assert_eq!(second.stale().count(), 2);
    assert!(ping(&h, "10.99.0.1") && ping(&h, "10.99.5.1"), "stale routes keep forwarding");

    // Sessions come back with only 10.99.0.0/24; after End-of-RIB the other one goes.
    assert!(second.apply([via("10.99.0.0/24", "10.78.2.2")]).expect("apply").is_empty());
    assert_eq!(second.stale().count(), 1);
    let (swept, failed) = second.sweep_stale().expect("sweep");
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(swept, 1);
    assert_eq!(r.ours(false), ["10.99.0.0/24 via 10.78.2.2 dev ".to_string() + &rd]);
    assert!(ping(&h, "10.99.0.1"));
    assert!(!ping(&h, "10.99.5.1"), "the swept route no longer forwards");
}

#[test]
fn the_sweep_removes_stale_routes_of_every_shape_and_nothing_else() {
    let ns = Ns::new("s").with_dummy();
    let p = PROTOCOL.to_string();
    ns.ip(&["route", "add", "blackhole", "10.94.0.0/26", "proto", &p]);
    ns.ip(&["route", "add", "10.94.1.0/24", "proto", &p, "nexthop", "via", "10.77.0.2", "nexthop", "via", "10.77.0.3"]);
    ns.ip(&["route", "add", "10.94.2.0/24", "dev", "d0", "proto", &p]);
    ns.ip(&["route", "add", "10.94.3.0/24", "via", "10.77.0.2", "proto", &p, "table", "100"]);
    ns.ip(&["route", "add", "10.94.4.0/24", "via", "10.77.0.2", "proto", "static"]);
    let mut fib = ns.fib();
    assert_eq!(fib.reconcile_start().expect("reconcile").len(), 3, "table 100 is not ours to manage");
    let (swept, failed) = fib.sweep_stale().expect("sweep");
    assert!(failed.is_empty(), "{failed:?}");
    assert_eq!(swept, 3);
    assert!(ns.ours(false).is_empty(), "{:?}", ns.ours(false));
    assert_eq!(
        ns.ip(&["route", "show", "table", "100"]).trim(),
        format!("10.94.3.0/24 via 10.77.0.2 dev d0 proto {p}")
    );
    assert_eq!(ns.ip(&["route", "show", "proto", "static"]).trim(), "10.94.4.0/24 via 10.77.0.2 dev d0");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Issue #13 item 6's FIB half: 100k IPv4 /32s via one next hop, `Fib::apply`
/// against `ip -batch` of the same `route replace`s (netlink per route, as
/// BIRD's kernel protocol does), each into a fresh namespace, medians of 3.
/// Run: cargo test --release -p cni-bgp --test fib -- --ignored --nocapture
#[test]
#[ignore = "benchmark: about a minute"]
#[allow(clippy::print_stdout)] // the benchmark's report
fn bench_fib_100k_routes_against_ip_batch() {
    const N: u32 = 100_000;
    let prefixes: Vec<IpNetwork> =
        (0..N).map(|i| IpNetwork::new(std::net::Ipv4Addr::from(0x1400_0000 + i).into(), 32).expect("net")).collect();
    let script = std::env::temp_dir().join(format!("h8fib-batch-{}", std::process::id()));
    let text: String = prefixes.iter().map(|p| format!("route replace {p} via 10.77.0.2 proto {PROTOCOL}\n")).collect();
    std::fs::write(&script, text).expect("write batch");
    let (mut ours, mut theirs) = (vec![], vec![]);
    for run in 0..3 {
        let ns = Ns::new(&format!("b{run}")).with_dummy();
        let mut fib = ns.fib();
        let t = Instant::now();
        let failed = fib.apply(prefixes.iter().map(|p| via(&p.to_string(), "10.77.0.2"))).expect("apply");
        ours.push(t.elapsed());
        assert!(failed.is_empty());
        let mut nl = ns.open().netlink().expect("nl");
        assert_eq!(
            linux_net::route::list_protocol(&mut nl, false, MAIN_TABLE, PROTOCOL).expect("list").len(),
            N as usize
        );
        drop(ns);

        let ns = Ns::new(&format!("i{run}")).with_dummy();
        let t = Instant::now();
        ns.ip(&["-batch", script.to_str().expect("utf-8")]);
        theirs.push(t.elapsed());
        let mut nl = ns.open().netlink().expect("nl");
        assert_eq!(
            linux_net::route::list_protocol(&mut nl, false, MAIN_TABLE, PROTOCOL).expect("list").len(),
            N as usize
        );
    }
    let _ = std::fs::remove_file(&script);
    let (o, i) = (median(ours.clone()), median(theirs.clone()));
    println!(
        "100k IPv4 routes: Fib::apply median {o:?} {ours:?}; ip -batch median {i:?} {theirs:?}; ratio {:.2}",
        o.as_secs_f64() / i.as_secs_f64()
    );
}
