//! 30 agents racing for leases in a nearly full pool: they never get
//! overlapping subnets, and the losers fail with a clear error and leave
//! nothing behind.

mod common;

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use common::{bin, subnet_of, Overlay};
use ipnetwork::Ipv4Network;
use serde_json::{json, Value};
use testkit::lab::{HostId, ProcessGuard};

const AGENTS: usize = 30;
/// 10.50.0.0/22 in /26s: 16 subnets, the first never leased (SubnetMin's default).
const POOL: usize = 15;
const HEALTHZ_PORT: u16 = 8471;

/// `GET /healthz` on the agent's mgmt address: the HTTP status line.
fn healthz(addr: SocketAddr) -> String {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_secs(1)) else {
        return "refused".into();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
    let _ = s.write_all(b"GET /healthz HTTP/1.0\r\n\r\n");
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out.lines().next().unwrap_or_default().to_string()
}

fn overlaps(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

#[test]
fn thirty_agents_race_for_fifteen_subnets() {
    let started = Instant::now();
    let conf = json!({"Network": "10.50.0.0/22", "SubnetLen": 26, "Backend": {"Type": "vxlan"}});
    let mut o = Overlay::new("race", conf, &[]);
    let seg = o.lab.segment("192.168.90.0/24").unwrap();
    let hosts: Vec<HostId> = (0..AGENTS).map(|_| o.lab.host(seg).unwrap()).collect();
    let lab_ready = started.elapsed();

    // All at once: every agent waits (in a shell that then execs it) for one flag file.
    let go = o.lab.dir().join("go");
    let agents: Vec<ProcessGuard> = hosts
        .iter()
        .map(|h| {
            let mut args = vec![bin().display().to_string()];
            args.extend(o.agent_args(*h));
            let mgmt = o.lab.mgmt_ip(*h).to_string();
            args.extend(["--healthz-ip".into(), mgmt, "--healthz-port".into(), HEALTHZ_PORT.to_string()]);
            let script = format!("while [ ! -e {} ]; do sleep 0.01; done; exec {}", go.display(), args.join(" "));
            o.lab.spawn(*h, "sh", &["-c", &script], &[("CNI_OVERLAY_LOG", "debug")]).unwrap()
        })
        .collect();
    std::fs::write(&go, b"").unwrap();

    // Each agent either becomes ready (subnet file written) or exits.
    let deadline = Instant::now() + Duration::from_secs(30);
    let (mut winners, mut losers) = (Vec::new(), Vec::new());
    let mut pending: Vec<usize> = (0..AGENTS).collect();
    while !pending.is_empty() {
        pending.retain(|&i| {
            if !agents[i].is_running() {
                losers.push(i);
                false
            } else if o.subnet_file(hosts[i]).exists() {
                winners.push(i);
                false
            } else {
                true
            }
        });
        if Instant::now() > deadline {
            let logs: Vec<String> = pending.iter().map(|i| format!("agent {i}:\n{}", agents[*i].log())).collect();
            panic!("agents neither ready nor exited after 30 s:\n{}", logs.join("\n"));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let settled = started.elapsed();
    assert_eq!(winners.len(), POOL, "as many winners as subnets; losers: {losers:?}");
    assert_eq!(losers.len(), AGENTS - POOL);

    // Winners: distinct, non-overlapping subnets inside SubnetMin..=SubnetMax; etcd agrees.
    let network: Ipv4Network = "10.50.0.0/22".parse().unwrap();
    let from_files: Vec<Ipv4Network> =
        winners.iter().map(|i| subnet_of(&o.subnet_env(hosts[*i])).parse().unwrap()).collect();
    for (k, a) in from_files.iter().enumerate() {
        assert_eq!(a.prefix(), 26);
        assert!(network.contains(a.network()) && a.network() != network.network(), "{a} outside the pool");
        for b in &from_files[k + 1..] {
            assert!(!overlaps(*a, *b), "{a} and {b} overlap");
        }
    }
    let kv = o.etcdctl(&["get", "--prefix", "/coreos.com/network/subnets/"]);
    let lines: Vec<&str> = kv.lines().collect();
    let mut in_etcd = BTreeSet::new();
    let mut public_ips = BTreeSet::new();
    for pair in lines.chunks(2) {
        let key = pair[0].rsplit('/').next().unwrap();
        in_etcd.insert(key.replace('-', "/").parse::<Ipv4Network>().unwrap());
        let v: Value = serde_json::from_str(pair[1]).unwrap();
        public_ips.insert(v["PublicIP"].as_str().unwrap().to_string());
    }
    assert_eq!(in_etcd, from_files.iter().copied().collect::<BTreeSet<_>>(), "etcd holds exactly the winners' leases");
    let winner_ips: BTreeSet<String> = winners.iter().map(|i| o.lab.host_ip(hosts[*i]).to_string()).collect();
    assert_eq!(public_ips, winner_ips, "one lease per winner, none for a loser");
    // Losers revoked the etcd leases they were granted while trying.
    let etcd_leases = o.etcdctl(&["lease", "list"]);
    assert!(etcd_leases.starts_with(&format!("found {POOL} leases")), "{etcd_leases}");

    // Losers: exit status non-zero, an error naming the pool, nothing left behind.
    for &i in &losers {
        let h = hosts[i];
        let status = agents[i].wait_timeout(Duration::from_secs(1)).expect("exited");
        let log = agents[i].log();
        assert!(!status.success(), "loser {i} exited 0:\n{log}");
        assert!(
            log.contains("subnet pool exhausted")
                && log.contains("Network 10.50.0.0/22")
                && log.contains("SubnetLen 26"),
            "loser {i}: the error names the pool:\n{log}"
        );
        assert!(!o.subnet_file(h).exists(), "loser {i} wrote a subnet file");
        let links = o.lab.exec_ok(h, &["ip", "-o", "link"]).unwrap();
        assert!(!links.contains("flannel"), "loser {i} created a device:\n{links}");
    }

    // Winners: ready, and each routes to every other winner through flannel.1.
    for (k, &i) in winners.iter().enumerate() {
        let h = hosts[i];
        let status = healthz(SocketAddr::new(o.lab.mgmt_ip(h).into(), HEALTHZ_PORT));
        assert!(status.contains("200"), "winner {i} healthz: {status}\n{}", agents[i].log());
        let others: Vec<String> =
            from_files.iter().enumerate().filter(|(j, _)| *j != k).map(|(_, s)| s.to_string()).collect();
        o.wait_routes(
            h,
            |r| others.iter().all(|s| r.lines().any(|l| l.starts_with(&format!("{s} via")) && l.contains("flannel.1"))),
            "routes to every other winner",
        );
    }
    let first = agents[losers[0]].log();
    eprintln!("a loser's error: {}", first.lines().last().unwrap_or_default());
    let lost: usize = agents.iter().map(|a| a.log().matches("lost the race").count()).sum();
    eprintln!("lost races (retried): {lost}");
    eprintln!(
        "lab {:.1}s, {AGENTS} agents settled {:.1}s after the start, whole test {:.1}s",
        lab_ready.as_secs_f64(),
        (settled - lab_ready).as_secs_f64(),
        started.elapsed().as_secs_f64()
    );
}
