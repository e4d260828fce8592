//! Overlay agents against a real three-member etcd: the leader is killed
//! and the agents keep their leases and their routes, renew through the
//! surviving members, and see a new host; etcd stopped entirely and
//! started again needs no agent restart.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::{conf, subnet_of, Overlay};
use serde_json::json;
use testkit::lab::HostId;

/// Lease keys under the Flannel prefix with their etcd lease IDs.
fn lease_keys(o: &Overlay) -> BTreeMap<String, String> {
    let out = o.etcdctl(&["get", "/coreos.com/network/subnets/", "--prefix", "-w", "fields"]);
    // `-w fields` prints "\"Key\" : \"...\"" and "\"Lease\" : N" per kv.
    let mut keys = BTreeMap::new();
    let mut key = None;
    for line in out.lines() {
        if let Some(k) = line.strip_prefix("\"Key\" : ") {
            key = Some(k.trim_matches('"').to_string());
        } else if let (Some(l), Some(k)) = (line.strip_prefix("\"Lease\" : "), key.as_ref()) {
            keys.insert(k.clone(), l.trim().to_string());
        }
    }
    keys
}

fn has_routes_to(o: &Overlay, h: HostId, subnets: &[String]) -> Result<(), String> {
    let r = o.routes(h);
    match subnets.iter().find(|s| !r.contains(s.as_str())) {
        None => Ok(()),
        Some(s) => Err(format!("host {}: no route to {s}:\n{r}", h.0)),
    }
}

#[test]
fn agents_keep_leases_and_routes_while_the_leader_dies_and_recover_from_a_full_outage() {
    // A 6 s lease TTL (renewed every 3 s): an election that made a renew
    // fail and wait for the next period would let the lease expire.
    let mut o = Overlay::with_cluster("ovlha", 3, conf(json!({})), &["--subnet-lease-ttl", "6s"]);
    let seg = o.lab.segment("192.168.64.0/24").unwrap();
    let hosts: Vec<HostId> = (0..3).map(|_| o.lab.host(seg).unwrap()).collect();
    for h in &hosts {
        o.start_agent(*h);
    }
    let subnets: Vec<String> = hosts.iter().map(|h| subnet_of(&o.subnet_env(*h))).collect();
    let others = |i: usize| -> Vec<String> { (0..3).filter(|j| *j != i).map(|j| subnets[j].clone()).collect() };
    for (i, h) in hosts.iter().enumerate() {
        o.wait_routes(*h, |r| others(i).iter().all(|s| r.contains(s.as_str())), "routes to the other hosts");
    }
    let ctrs: Vec<_> = hosts.iter().map(|h| o.container(*h)).collect();
    assert!(o.lab.ping_until(ctrs[0].0, ctrs[1].1, Duration::from_secs(5)), "ping before the election");
    let before = lease_keys(&o);
    assert_eq!(before.len(), 3, "{before:?}");

    // Kill the leader; watch every host's routes until well past the
    // election and two lease TTLs: never one missing.
    let cluster = o.cluster.as_mut().unwrap();
    let leader = cluster.wait_leader(Duration::from_secs(10)).unwrap();
    cluster.kill(leader);
    let killed = Instant::now();
    let cluster = o.cluster.as_ref().unwrap();
    let mut elected = None;
    while killed.elapsed() < Duration::from_secs(14) {
        if elected.is_none() && cluster.leader().is_some() {
            elected = Some(killed.elapsed());
        }
        for (i, h) in hosts.iter().enumerate() {
            if let Err(e) = has_routes_to(&o, *h, &others(i)) {
                panic!("{:?} after the leader was killed: {e}", killed.elapsed());
            }
        }
        for (i, g) in o.agents.iter().enumerate() {
            let g = g.as_ref().unwrap();
            assert!(g.is_running(), "agent {i} exited after the leader died:\n{}", g.log());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    eprintln!("new leader after {elected:?}");
    assert!(elected.is_some(), "no new leader");
    assert_eq!(lease_keys(&o), before, "same subnets, same etcd leases: renewed through the election");
    for (i, h) in hosts.iter().enumerate() {
        assert_eq!(subnet_of(&o.subnet_env(*h)), subnets[i], "subnet file unchanged");
    }
    assert!(o.lab.ping_until(ctrs[0].0, ctrs[2].1, Duration::from_secs(5)), "ping after the election");

    // With the member still down a new host joins, and the others' watches
    // (resynced onto live members) program it.
    let h4 = o.lab.host(seg).unwrap();
    o.start_agent(h4);
    let s4 = subnet_of(&o.subnet_env(h4));
    for h in &hosts {
        o.wait_routes(*h, |r| r.contains(s4.as_str()), "route to the host that joined after the election");
    }

    // etcd stopped entirely: agents keep running and keep their routes;
    // started again (same data dirs), the agents renew and see changes
    // without a restart.
    let cluster = o.cluster.as_mut().unwrap();
    for i in 0..3 {
        cluster.kill(i);
    }
    let stopped = Instant::now();
    while stopped.elapsed() < Duration::from_secs(3) {
        for (i, h) in hosts.iter().enumerate() {
            has_routes_to(&o, *h, &others(i)).unwrap();
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    for (i, g) in o.agents.iter().enumerate() {
        let g = g.as_ref().unwrap();
        assert!(g.is_running(), "agent {i} exited while etcd was down:\n{}", g.log());
    }
    let cluster = o.cluster.as_mut().unwrap();
    cluster.start_all().unwrap();
    cluster.wait_leader(Duration::from_secs(20)).unwrap();
    // The outage was shorter than the TTL, so the leases survive it. Let
    // more than one TTL pass: only renewals through the restarted cluster
    // keep the keys (and a lost lease would end the agent).
    std::thread::sleep(Duration::from_secs(7));
    let after = lease_keys(&o);
    assert_eq!(after.len(), 4, "every lease survived the outage: {after:?}");
    for (i, g) in o.agents.iter().enumerate() {
        let g = g.as_ref().unwrap();
        assert!(g.is_running(), "agent {i} lost its lease over the outage:\n{}", g.log());
    }
    let out = std::process::Command::new(common::bin())
        .args(["remove-host", "--etcd-endpoints", &o.cluster.as_ref().unwrap().endpoints().join(","), &s4])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for h in &hosts {
        o.wait_routes(*h, |r| !r.contains(s4.as_str()), "the removed host's route vanishes after the outage");
    }
}
