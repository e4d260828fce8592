//! Interop with the reference host-local (containernetworking-plugins) on
//! one dataDir: neither hands out the other's addresses, each releases the
//! other's leases by container ID, and both take the same `lock`.
//!
//! Skipped (with a message) when /usr/lib/cni/host-local is not installed
//! (Debian: containernetworking-plugins).

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use cni_core::Plugin;
use common::*;
use ipam::store::Store;
use serde_json::{json, Value};

const NET: &str = "interop";

fn conf(t: &TestDir) -> Value {
    // host-local 1.1.1 speaks up to 1.0.0.
    let mut c = t.conf(NET, json!({"ranges":[[{"subnet":"10.50.0.0/28"}],[{"subnet":"fd50::/124"}]]}));
    c["cniVersion"] = json!("1.0.0");
    c
}

fn hl(conf: &Value) -> Value {
    let mut c = conf.clone();
    c["type"] = json!("host-local");
    c["ipam"]["type"] = json!("host-local");
    c
}

fn ips(v: &Value) -> Vec<String> {
    addresses(v).iter().map(|a| ip_of(a)).collect()
}

#[test]
fn shares_a_data_dir_with_host_local() {
    assert!(host_local_available(), "{HOST_LOCAL} missing: run scripts/testbed.sh (containernetworking-plugins)");
    let t = TestDir::new("hl");
    let ours = conf(&t);
    let theirs = hl(&ours);
    let dir = t.net_dir(NET);

    // host-local leases first.
    let mut hl_ips = BTreeSet::new();
    for id in ["h1", "h2", "h3"] {
        let (ok, v) = run_json(HOST_LOCAL, "ADD", id, "eth0", &theirs, "");
        assert!(ok, "host-local ADD {id}: {v}");
        hl_ips.extend(ips(&v));
    }
    assert_eq!(
        hl_ips,
        BTreeSet::from(["10.50.0.2", "10.50.0.3", "10.50.0.4", "fd50::2", "fd50::3", "fd50::4"].map(String::from))
    );
    // Its files are what our store reads.
    assert_eq!(leases(&dir)["10.50.0.3"], "h2\r\neth0");

    // We continue its round-robin and never hand out its addresses, until
    // the range set runs out (/28 v4: .2-.14 usable = 13 addresses).
    let mut our_ips = BTreeSet::new();
    for i in 0..10 {
        let id = format!("c{i}");
        let v = if i % 2 == 0 {
            let (ok, v) = run_json(BIN, "ADD", &id, "eth0", &ours, "");
            assert!(ok, "ADD {id}: {v}");
            v
        } else {
            let r = cni_ipam::Ipam.add(&ctx("ADD", &id, "eth0", &ours, "")).unwrap_or_else(|e| panic!("ADD {id}: {e}"));
            r.to_json(cni_core::Version::V1_0_0)
        };
        for ip in ips(&v) {
            assert!(!hl_ips.contains(&ip), "{id} got host-local's {ip}");
            assert!(our_ips.insert(ip.clone()), "{ip} twice");
        }
        if i == 0 {
            assert_eq!(ips(&v), ["10.50.0.5", "fd50::5"]);
        }
    }
    let (ok, v) = run_json(BIN, "ADD", "c10", "eth0", &ours, "");
    assert!(!ok);
    assert_eq!(v["code"], ipam::CODE_EXHAUSTED, "{v}");

    // We release host-local's lease by container ID ...
    let (ok, v) = run_json(BIN, "DEL", "h2", "eth0", &ours, "");
    assert!(ok, "{v}");
    assert!(!leases(&dir).contains_key("10.50.0.3"));
    // ... including old-format (ID only) records of older host-locals.
    for ip in ["10.50.0.4", "fd50::4"] {
        std::fs::remove_file(dir.join(ip)).unwrap();
        std::fs::write(dir.join(ip), "h3").unwrap();
    }
    let (ok, v) = run_json(BIN, "DEL", "h3", "eth0", &ours, "");
    assert!(ok, "{v}");
    let now = leases(&dir);
    assert!(!now.contains_key("10.50.0.4") && !now.contains_key("fd50::4"));

    // host-local sees our leases: with two v4 addresses free it gets those.
    let (ok, v) = run_json(HOST_LOCAL, "ADD", "h4", "eth0", &theirs, "");
    assert!(ok, "host-local ADD h4: {v}");
    let (ok, v2) = run_json(HOST_LOCAL, "ADD", "h5", "eth0", &theirs, "");
    assert!(ok, "host-local ADD h5: {v2}");
    for ip in ips(&v).into_iter().chain(ips(&v2)) {
        assert!(!our_ips.contains(&ip), "host-local handed out our {ip}");
    }
    let (ok, v) = run_json(HOST_LOCAL, "ADD", "h6", "eth0", &theirs, "");
    assert!(!ok, "host-local should be exhausted: {v}");

    // host-local releases our leases by container ID.
    let before = leases(&dir);
    let c1: Vec<&String> = before.iter().filter(|(_, o)| *o == "c1\r\neth0").map(|(k, _)| k).collect();
    assert_eq!(c1.len(), 2);
    let (ok, v) = run_json(HOST_LOCAL, "DEL", "c1", "eth0", &theirs, "");
    assert!(ok, "host-local DEL c1: {v}");
    let after = leases(&dir);
    assert!(c1.iter().all(|ip| !after.contains_key(*ip)));
    // Our stale marker for c1 only costs a scan: a new ADD works.
    let (ok, v) = run_json(BIN, "ADD", "c1", "eth0", &ours, "");
    assert!(ok, "{v}");
    let (ok, v) = run_json(BIN, "ADD", "c1", "eth0", &ours, "");
    assert!(ok, "idempotent re-ADD: {v}");
    assert!(files_with_prefix(&dir, ".tmp.").is_empty());
}

#[test]
fn host_local_waits_for_our_lock() {
    assert!(host_local_available(), "{HOST_LOCAL} missing: run scripts/testbed.sh (containernetworking-plugins)");
    let t = TestDir::new("hllock");
    let ours = conf(&t);
    let theirs = hl(&ours);
    let store = ipam::DiskStore::new(&t.data_dir, NET);
    let guard = store.lock().unwrap();
    let mut child = spawn(HOST_LOCAL, "ADD", "h1", "eth0", &theirs, "");
    assert!(
        waits_for_a_lock(&mut child),
        "host-local finished or never queued on the lock while we held it: it does not use our lock"
    );
    // Our own binary waits too.
    let mut ours_child = spawn(BIN, "ADD", "c1", "eth0", &ours, "");
    assert!(waits_for_a_lock(&mut ours_child), "cni-ipam did not queue on the lock we hold");
    assert!(leases(&t.net_dir(NET)).is_empty());
    drop(guard);
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    let out = ours_child.wait_with_output().unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(leases(&t.net_dir(NET)).len(), 4);
}

/// Whether `child` is queued on a file lock: the kernel lists a blocked
/// request in /proc/locks as `N: -> FLOCK ADVISORY WRITE <pid> ...`. Polls
/// for up to 10 s, and fails at once if the child exits (it did not wait).
fn waits_for_a_lock(child: &mut std::process::Child) -> bool {
    let pid = child.id().to_string();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while std::time::Instant::now() < deadline {
        if child.try_wait().unwrap().is_some() {
            return false;
        }
        let locks = std::fs::read_to_string("/proc/locks").unwrap();
        let queued = locks.lines().any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"->") && f.get(5) == Some(&pid.as_str())
        });
        if queued {
            return true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    false
}
