//! `cni-overlay agent --metrics-address` as an operator sees it: agents in
//! the lab with a real etcd, one of them scraped over HTTP from the root
//! namespace (on its management address) after known events: it holds its
//! lease, knows K other hosts' subnets and has programmed one route, FDB
//! and neighbour entry for each; a host joining and leaving moves the
//! gauges; an etcd restart is one watch resync and one more reconcile pass.
//! An agent without the flag listens on no TCP port at all.
//!
//! `cargo test --release -p cni-overlay --test metrics -- --test-threads=2`

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{bin, conf, subnet_of, Overlay};
use prom_endpoint::{parse_text, scrape, value, Sample};
use serde_json::json;

const PORT: u16 = 9471;

fn samples(addr: SocketAddr) -> (String, Vec<Sample>) {
    let body = scrape(addr, Duration::from_secs(5)).unwrap_or_else(|e| panic!("scrape {addr}: {e}"));
    let s = parse_text(&body).unwrap();
    (body, s)
}

/// Scrapes until `pred` holds (bounded), returns the last scrape.
fn wait_for(addr: SocketAddr, what: &str, pred: impl Fn(&[Sample]) -> bool) -> (String, Vec<Sample>) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (body, s) = samples(addr);
        if pred(&s) {
            return (body, s);
        }
        assert!(Instant::now() < deadline, "{what}; last scrape:\n{body}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn listening_sockets_of(pid: u32) -> usize {
    testkit::util::tcp_listeners_of(pid).unwrap()
}

#[test]
fn the_agent_reports_its_lease_peers_kernel_entries_and_resyncs() {
    // A short TTL so that renewals happen during the test (every 2 s).
    let mut o = Overlay::new("ovlmet", conf(json!({})), &["--subnet-lease-ttl", "4s"]);
    let seg = o.lab.segment("192.168.66.0/24").unwrap();
    let others: Vec<_> = (0..2).map(|_| o.lab.host(seg).unwrap()).collect();
    for h in &others {
        o.start_agent(*h);
    }
    const K: f64 = 2.0;

    // Agents without the flag listen nowhere.
    let pid = o.agents[others[0].0].as_ref().unwrap().pid();
    assert_eq!(listening_sockets_of(pid), 0, "an agent without --metrics-address listens on TCP");
    let off = SocketAddr::new(o.lab.mgmt_ip(others[0]).into(), PORT);
    let e = scrape(off, Duration::from_secs(5)).unwrap_err();
    assert!(e.contains("refused"), "scraping an agent without the flag: {e}");

    let h = o.lab.host(seg).unwrap();
    let addr = SocketAddr::new(o.lab.mgmt_ip(h).into(), PORT);
    o.start_agent_with(h, &["--metrics-address", &addr.to_string()]);
    assert_eq!(listening_sockets_of(o.agents[h.0].as_ref().unwrap().pid()), 1, "one listener: /metrics");
    let own = subnet_of(&o.subnet_env(h));

    let (body, s) = samples(addr);
    let v = |s: &[Sample], name: &str, labels: &[(&str, &str)]| value(s, name, labels);
    assert_eq!(v(&s, "cni_overlay_lease_held", &[("subnet", &own)]), Some(1.0), "{body}");
    assert_eq!(v(&s, "cni_overlay_remote_subnets", &[]), Some(K), "{body}");
    for m in ["cni_overlay_routes", "cni_overlay_fdb_entries", "cni_overlay_neighbour_entries"] {
        assert_eq!(v(&s, m, &[("family", "ipv4")]), Some(K), "{m}:\n{body}");
    }
    // The kernel agrees: K routes through flannel.1.
    let routes = o.routes(h);
    assert_eq!(routes.lines().filter(|l| l.contains("dev flannel.1")).count(), K as usize, "{routes}");
    assert_eq!(v(&s, "cni_overlay_reconcile_duration_seconds_count", &[]), Some(1.0), "{body}");
    assert_eq!(v(&s, "cni_overlay_watch_resyncs_total", &[]), Some(0.0), "{body}");
    assert!(!body.contains("cni_overlay_etcd_errors_total{"), "no etcd error yet:\n{body}");
    assert!(body.contains("# TYPE cni_overlay_reconcile_duration_seconds histogram"), "{body}");

    // Renewals every 2 s.
    wait_for(addr, "no lease renewal counted", |s| {
        v(s, "cni_overlay_lease_renewals_total", &[("result", "ok")]).is_some_and(|n| n >= 1.0)
    });

    // A host joins: one more subnet known and programmed; it leaves: back to K.
    let h4 = o.lab.host(seg).unwrap();
    o.start_agent(h4);
    wait_for(addr, "the new host's subnet was not counted", |s| {
        v(s, "cni_overlay_remote_subnets", &[]) == Some(K + 1.0)
            && v(s, "cni_overlay_routes", &[("family", "ipv4")]) == Some(K + 1.0)
            && v(s, "cni_overlay_fdb_entries", &[("family", "ipv4")]) == Some(K + 1.0)
    });
    let s4 = subnet_of(&o.subnet_env(h4));
    o.remove_host(&s4);
    let (body, s) = wait_for(addr, "the removed host's subnet is still counted", |s| {
        v(s, "cni_overlay_remote_subnets", &[]) == Some(K)
            && v(s, "cni_overlay_neighbour_entries", &[("family", "ipv4")]) == Some(K)
    });
    assert_eq!(
        v(&s, "cni_overlay_reconcile_duration_seconds_count", &[]),
        Some(1.0),
        "events are not resyncs:\n{body}"
    );

    // etcd restarts: the watch breaks, the agent re-reads every lease once
    // etcd is back and reconciles (one more pass per resync).
    o.lab.restart_etcd().unwrap();
    let (body, s) = wait_for(addr, "no watch resync after the etcd restart", |s| {
        v(s, "cni_overlay_watch_resyncs_total", &[]).is_some_and(|n| n >= 1.0)
    });
    let resyncs = v(&s, "cni_overlay_watch_resyncs_total", &[]).unwrap();
    assert_eq!(v(&s, "cni_overlay_reconcile_duration_seconds_count", &[]), Some(1.0 + resyncs), "{body}");
    assert_eq!(v(&s, "cni_overlay_remote_subnets", &[]), Some(K), "{body}");
    assert_eq!(v(&s, "cni_overlay_lease_held", &[("subnet", &own)]), Some(1.0), "{body}");
    // Renewals keep succeeding against the restarted etcd.
    let ok = v(&s, "cni_overlay_lease_renewals_total", &[("result", "ok")]).unwrap();
    wait_for(addr, "no renewal after the etcd restart", |s| {
        v(s, "cni_overlay_lease_renewals_total", &[("result", "ok")]).is_some_and(|n| n > ok)
    });
    // Every failed renewal is an etcd error of op renew, and nothing else failed.
    let (body, s) = samples(addr);
    let failed = v(&s, "cni_overlay_lease_renewals_total", &[("result", "error")]).unwrap_or(0.0);
    assert_eq!(v(&s, "cni_overlay_etcd_errors_total", &[("op", "renew")]).unwrap_or(0.0), failed, "{body}");
    eprintln!("etcd restart: {resyncs} resync(s), {failed} failed renewal(s)");
}

#[test]
fn a_bad_or_busy_metrics_address_stops_the_agent_before_it_programs_anything() {
    let mut o = Overlay::new("ovlmetbad", conf(json!({})), &[]);
    let seg = o.lab.segment("192.168.67.0/24").unwrap();
    let h = o.lab.host(seg).unwrap();

    let mut args = o.agent_args(h);
    args.extend(["--metrics-address".to_string(), "nohost:9100".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let g = o.lab.spawn(h, bin().to_str().unwrap(), &args, &[]).unwrap();
    let st = g.wait_timeout(Duration::from_secs(10)).expect("exits on a bad address");
    assert_eq!(st.code(), Some(2), "{}", g.log());
    assert!(g.log().contains("--metrics-address") && g.log().contains("IP:PORT"), "{}", g.log());

    // An address that is not on the host: the bind fails, nothing is programmed.
    let mut args = o.agent_args(h);
    args.extend(["--metrics-address".to_string(), "192.0.2.1:9100".to_string()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let g = o.lab.spawn(h, bin().to_str().unwrap(), &args, &[]).unwrap();
    let st = g.wait_timeout(Duration::from_secs(10)).expect("exits when it cannot listen");
    assert!(!st.success());
    assert!(g.log().contains("--metrics-address 192.0.2.1:9100: cannot listen"), "{}", g.log());
    assert!(!o.subnet_file(h).exists());
    let links = o.lab.exec_ok(h, &["ip", "-o", "link"]).unwrap();
    assert!(!links.contains("flannel"), "nothing programmed: {links}");
    let leases = o.etcdctl(&["get", "--prefix", "--keys-only", "/coreos.com/network/subnets"]);
    assert!(leases.trim().is_empty(), "no lease taken: {leases}");
}
