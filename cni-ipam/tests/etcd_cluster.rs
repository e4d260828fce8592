//! `cni-ipam` in blocks mode (non-strict: every address is recorded in etcd
//! with a CAS) against a real three-member etcd under faults, through the
//! binary as a runtime runs it: the leader killed during concurrent ADDs
//! from three hosts, then that member left down, then the cluster without
//! quorum, then etcd stopped entirely.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{leases, run_json, TestDir, BIN};
use etcd_kv::testing::EtcdCluster;
use serde_json::{json, Value};

const NET: &str = "clusternet";
const PREFIX: &str = "/cni-ipam";

struct Host {
    dir: TestDir,
    name: String,
    conf: Value,
}

impl Host {
    fn new(endpoints: &[String], name: &str) -> Host {
        let dir = TestDir::new(&format!("cluster-{name}"));
        let conf = dir.conf(
            NET,
            json!({"cluster": {"mode": "blocks", "etcdEndpoints": endpoints, "etcdPrefix": PREFIX,
                               "pool": "10.210.0.0/16", "blockSize": 26, "host": name}}),
        );
        Host { dir, name: name.to_string(), conf }
    }

    /// One ADD through the binary: Ok(ip) or Err((code, whole answer)).
    fn add(&self, id: &str) -> Result<String, (u64, Value)> {
        let out = common::run(BIN, "ADD", id, "eth0", &self.conf, "");
        let ok = out.status.success();
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{}: ADD {id} ({}): stdout is not JSON ({e}): {:?}, stderr: {}",
                self.name,
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        if ok {
            let a = v["ips"][0]["address"].as_str().unwrap_or_else(|| panic!("{}: ADD {id}: {v}", self.name));
            Ok(a.split('/').next().unwrap().to_string())
        } else {
            Err((v["code"].as_u64().unwrap_or(0), v))
        }
    }

    /// Local leases: ip -> container ID.
    fn local(&self) -> BTreeMap<String, String> {
        leases(&self.dir.net_dir(NET)).into_iter().map(|(ip, v)| (ip, v.lines().next().unwrap().to_string())).collect()
    }
}

/// Every allocation recorded in etcd: ip -> (handle, host).
fn etcd_records(cluster: &EtcdCluster) -> BTreeMap<String, (String, String)> {
    let out = cluster.etcdctl(&["get", &format!("{PREFIX}/{NET}/blocks/"), "--prefix", "-w", "json"]).unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let mut all = BTreeMap::new();
    for kv in v["kvs"].as_array().cloned().unwrap_or_default() {
        let raw = decode_b64(kv["value"].as_str().unwrap());
        let block: Value = serde_json::from_slice(&raw).unwrap();
        for (ip, a) in block["allocations"].as_object().unwrap() {
            let prev = all.insert(
                ip.clone(),
                (a["handle"].as_str().unwrap().to_string(), a["host"].as_str().unwrap().to_string()),
            );
            assert!(prev.is_none(), "{ip} recorded twice");
        }
    }
    all
}

/// etcdctl's JSON output encodes values in base64 (standard alphabet).
fn decode_b64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    let mut out = Vec::new();
    for chunk in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in chunk.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        for i in 0..chunk.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

/// A failed attempt: when it started and ended, and the answer.
#[derive(Debug, Clone)]
struct Failure {
    start: Instant,
    end: Instant,
    code: u64,
    answer: Value,
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn leader_killed_during_200_concurrent_adds_then_a_dead_member_costs_no_add() {
    let mut cluster = EtcdCluster::start(3).expect("three-member etcd");
    let leader = cluster.wait_leader(Duration::from_secs(10)).unwrap();
    // The leader first in every host's list, so that after its death every
    // plugin process meets the dead endpoint first.
    let all = cluster.endpoints();
    let mut endpoints = vec![all[leader].clone()];
    endpoints.extend(all.iter().enumerate().filter(|(i, _)| *i != leader).map(|(_, e)| e.clone()));
    let hosts: Arc<Vec<Host>> =
        Arc::new(["node-a", "node-b", "node-c"].iter().map(|n| Host::new(&endpoints, n)).collect());

    // (a) 200 ADDs, 10 at a time per host (30 in flight); the leader is
    // SIGKILLed once 60 have completed. Code 11 is retried like a runtime
    // does; any other failure fails the test.
    const TOTAL: usize = 200;
    const WORKERS_PER_HOST: usize = 10;
    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let results: Arc<Mutex<Vec<(usize, String, String)>>> = Arc::default(); // (host, id, ip)
    let failures: Arc<Mutex<Vec<Failure>>> = Arc::default();
    let mut threads = Vec::new();
    for h in 0..3 {
        for _ in 0..WORKERS_PER_HOST {
            let (hosts, next, done, results, failures) =
                (hosts.clone(), next.clone(), done.clone(), results.clone(), failures.clone());
            threads.push(std::thread::spawn(move || loop {
                let n = next.fetch_add(1, Ordering::SeqCst);
                if n >= TOTAL {
                    return;
                }
                let id = format!("c{n:03}");
                let mut tries = 0;
                loop {
                    tries += 1;
                    let start = Instant::now();
                    match hosts[h].add(&id) {
                        Ok(ip) => {
                            results.lock().unwrap().push((h, id, ip));
                            done.fetch_add(1, Ordering::SeqCst);
                            break;
                        }
                        Err((code, answer)) => {
                            let f = Failure { start, end: Instant::now(), code, answer };
                            assert!(f.code == 11 && tries < 30, "ADD {id} on host {h}: {f:?}");
                            failures.lock().unwrap().push(f);
                            // A runtime's retry policy, not synchronisation.
                            std::thread::sleep(Duration::from_millis(100));
                        }
                    }
                }
            }));
        }
    }
    let wait_until = |what: &str, cond: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(120);
        while !cond() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    wait_until("60 ADDs", &|| done.load(Ordering::SeqCst) >= 60);
    let killed_at = Instant::now();
    cluster.kill(leader);
    let new_leader = cluster.wait_leader(Duration::from_secs(20)).unwrap();
    let elected_at = Instant::now();
    assert_ne!(new_leader, leader);
    for t in threads {
        t.join().expect("ADD worker");
    }
    let results = results.lock().unwrap().clone();
    let failures = failures.lock().unwrap().clone();
    assert!(done.load(Ordering::SeqCst) == TOTAL && results.len() == TOTAL, "every ADD succeeded");
    eprintln!("(a) {TOTAL} ADDs, {} code-11 answers; election took {:?}", failures.len(), elected_at - killed_at);
    // Code 11 only for attempts that overlapped the election (a follower
    // learns the new leader within a heartbeat or two).
    let grace = Duration::from_millis(500);
    for f in &failures {
        assert!(
            f.end >= killed_at && f.start <= elected_at + grace,
            "code 11 outside the election: started {:?} after the kill, election over after {:?}: {}",
            f.start.saturating_duration_since(killed_at),
            elected_at - killed_at,
            f.answer
        );
    }
    // No address twice; etcd's records and each host's leases are exact.
    let ips: BTreeSet<&String> = results.iter().map(|(_, _, ip)| ip).collect();
    assert_eq!(ips.len(), TOTAL, "an address was handed out twice");
    let want: BTreeMap<String, (String, String)> =
        results.iter().map(|(h, id, ip)| (ip.clone(), (format!("{id}/eth0"), hosts[*h].name.clone()))).collect();
    assert_eq!(etcd_records(&cluster), want, "etcd records");
    for (h, host) in hosts.iter().enumerate() {
        let want: BTreeMap<String, String> =
            results.iter().filter(|r| r.0 == h).map(|(_, id, ip)| (ip.clone(), id.clone())).collect();
        assert_eq!(host.local(), want, "local leases of {}", host.name);
    }

    // (b) The killed member stays down (quorum 2 of 3): 30 sequential ADDs,
    // each meets the dead endpoint first and succeeds the first time.
    let mut took = Vec::new();
    for i in 0..30 {
        let host = &hosts[i % 3];
        let t = Instant::now();
        host.add(&format!("b{i:02}")).unwrap_or_else(|(_, v)| panic!("ADD b{i:02} with one member down: {v}"));
        took.push(t.elapsed());
    }
    eprintln!(
        "(b) 30 ADDs with the first endpoint dead: median {:?}, max {:?}",
        median(took.clone()),
        took.iter().max()
    );

    // Without quorum (both live members hung): code 11 within the plugin's
    // deadline and no lease; thawed, every ADD succeeds the first time.
    let live: Vec<usize> = (0..3).filter(|i| *i != leader).collect();
    for &i in &live {
        cluster.freeze(i);
    }
    let t = Instant::now();
    let (code, v) = hosts[0].add("nq").expect_err("ADD without quorum");
    assert_eq!(code, 11, "{v}");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(!hosts[0].local().values().any(|id| id == "nq"), "no lease left by the failed ADD");
    for &i in &live {
        cluster.thaw(i);
    }
    cluster.wait_leader(Duration::from_secs(20)).unwrap();
    for i in 0..10 {
        hosts[i % 3].add(&format!("t{i}")).unwrap_or_else(|(_, v)| panic!("ADD t{i} after the thaw: {v}"));
    }
    assert_eq!(etcd_records(&cluster).len(), TOTAL + 40);
}

#[test]
fn etcd_stopped_entirely_gives_code_11_naming_the_endpoints_and_recovers_by_itself() {
    let mut cluster = EtcdCluster::start(3).expect("three-member etcd");
    let endpoints = cluster.endpoints();
    let host = Host::new(&endpoints, "node-d");
    let first = host.add("d0").unwrap();

    for i in 0..3 {
        cluster.kill(i);
    }
    let t = Instant::now();
    let (code, v) = host.add("d1").expect_err("ADD with etcd down");
    assert_eq!(code, 11, "{v}");
    assert!(t.elapsed() < Duration::from_secs(1), "refused everywhere: fails at once ({:?})", t.elapsed());
    let text = v.to_string();
    for ep in &endpoints {
        assert!(text.contains(ep.as_str()), "the error names {ep}: {v}");
    }
    assert_eq!(host.local().len(), 1, "no lease left by the failed ADD");
    let (ok, v) = run_json(BIN, "DEL", "d0", "eth0", &host.conf, "");
    assert!(!ok && v["code"] == 11, "non-strict DEL needs etcd: {v}");

    // Back, with nothing restarted on the host side: ADD and DEL work.
    cluster.start_all().unwrap();
    cluster.wait_leader(Duration::from_secs(20)).unwrap();
    let second = host.add("d1").unwrap();
    assert_ne!(first, second);
    let (ok, v) = run_json(BIN, "DEL", "d0", "eth0", &host.conf, "");
    assert!(ok, "{v}");
    let records = etcd_records(&cluster);
    assert_eq!(records.keys().cloned().collect::<Vec<_>>(), vec![second], "{records:?}");
}
