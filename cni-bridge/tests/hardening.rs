//! Bad input and killed processes never cost an attachment: GC without the
//! runtime's list, a link of someone else under our hashed name, and ADDs
//! killed with SIGKILL at random points. Real namespaces, real links, the
//! real `cni-bridge` binary with its in-process `cni-ipam` on disk.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use cni_bridge::names;

use testkit::util::{sh, uniq};

fn must(cmd: &str) -> String {
    let (ok, out) = sh(cmd);
    assert!(ok, "`{cmd}` failed");
    out
}

/// A test network: bridge, namespaces and data dir, removed on drop.
struct Net {
    name: String,
    bridge: String,
    dir: String,
    conf: Value,
    netns: Vec<String>,
    links: Vec<String>,
}

impl Net {
    fn new(subnet: &str) -> Net {
        assert!(nix::unistd::Uid::effective().is_root(), "these tests need root (netns, links)");
        let u = uniq();
        let name = format!("hd{u}");
        let bridge = format!("hdbr{u}");
        let dir = format!("/tmp/cni-bridge-hardening-{u}");
        let conf = json!({
            "cniVersion": "1.1.0", "name": name, "type": "cni-bridge", "bridge": bridge,
            "isGateway": true,
            "ipam": {"type": "cni-ipam", "ranges": [[{"subnet": subnet}]], "dataDir": dir},
        });
        Net { name, bridge, dir, conf, netns: vec![], links: vec![] }
    }

    fn netns(&mut self) -> String {
        let ns = format!("{}n{}", self.name, self.netns.len());
        must(&format!("ip netns add {ns}"));
        self.netns.push(ns.clone());
        ns
    }

    fn spawn(&self, cmd: &str, cid: &str, ns: &str, conf: &Value) -> std::process::Child {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cni-bridge"))
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", if ns.is_empty() { String::new() } else { format!("/var/run/netns/{ns}") })
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn cni-bridge");
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        child
    }

    fn call(&self, cmd: &str, cid: &str, ns: &str, conf: &Value) -> (bool, Value) {
        let out = self.spawn(cmd, cid, ns, conf).wait_with_output().unwrap();
        (out.status.success(), serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
    }

    fn add(&self, cid: &str, ns: &str) -> Value {
        let (ok, v) = self.call("ADD", cid, ns, &self.conf);
        assert!(ok, "ADD {cid} failed: {v}");
        v
    }

    fn gc(&self, valid: Option<&[&str]>) -> (bool, Value) {
        let mut conf = self.conf.clone();
        if let Some(valid) = valid {
            let list: Vec<Value> = valid.iter().map(|c| json!({"containerID": c, "ifname": "eth0"})).collect();
            conf["cni.dev/valid-attachments"] = json!(list);
        }
        self.call("GC", "", "", &conf)
    }

    /// (container ID) of every lease in the IPAM store, one entry per lease.
    fn leases(&self) -> Vec<String> {
        let dir = std::path::Path::new(&self.dir).join(&self.name);
        let mut out = Vec::new();
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if name.parse::<std::net::IpAddr>().is_ok() {
                let body = std::fs::read_to_string(e.path()).unwrap();
                out.push(body.split("\r\n").next().unwrap_or_default().to_string());
            }
        }
        out.sort();
        out
    }

    /// Names of the links enslaved to our bridge.
    fn ports(&self) -> BTreeSet<String> {
        let out = sh(&format!("ip -o link show master {}", self.bridge)).1;
        out.lines().filter_map(|l| l.split(": ").nth(1)).map(|n| n.split('@').next().unwrap().to_string()).collect()
    }

    fn veth(&self, cid: &str) -> String {
        names::host_veth(&self.name, cid, "eth0")
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for l in &self.links {
            sh(&format!("ip link del {l} 2>/dev/null"));
        }
        for ns in &self.netns {
            sh(&format!("ip netns del {ns} 2>/dev/null"));
        }
        sh(&format!("ip link del {} 2>/dev/null", self.bridge));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn has_eth0(ns: &str) -> bool {
    sh(&format!("ip -n {ns} link show eth0 >/dev/null 2>&1")).0
}

/// True as soon as an echo request is answered; at most three tries of 1 s each.
fn ping(ns: &str, ip: &str) -> bool {
    (0..3).any(|_| sh(&format!("ip netns exec {ns} ping -c1 -W1 {ip} >/dev/null 2>&1")).0)
}

fn ip_of(result: &Value) -> String {
    result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string()
}

#[test]
fn gc_without_the_valid_list_keeps_everything_and_an_empty_list_keeps_nothing() {
    let mut net = Net::new("10.231.1.0/24");
    let (n1, n2) = (net.netns(), net.netns());
    net.add("c1", &n1);
    let r2 = net.add("c2", &n2);
    let ports = BTreeSet::from([net.veth("c1"), net.veth("c2")]);
    assert_eq!(net.ports(), ports);
    assert_eq!(net.leases(), ["c1", "c2"]);

    // No list at all: refused with the spec's "invalid network config", nothing touched.
    let (ok, err) = net.gc(None);
    assert!(!ok, "GC without cni.dev/valid-attachments must fail");
    assert_eq!(err["code"], 7, "{err}");
    assert!(err["details"].as_str().unwrap_or_default().contains("cni.dev/valid-attachments"), "{err}");
    assert_eq!(net.ports(), ports, "host veths survive a GC without the list");
    assert_eq!(net.leases(), ["c1", "c2"], "leases survive a GC without the list");
    assert!(ping(&n1, &ip_of(&r2)), "c1 still reaches c2");

    // A list naming c1: c2 is stale.
    let (ok, v) = net.gc(Some(&["c1"]));
    assert!(ok, "GC [c1]: {v}");
    assert_eq!(net.ports(), BTreeSet::from([net.veth("c1")]));
    assert_eq!(net.leases(), ["c1"]);
    assert!(has_eth0(&n1) && !has_eth0(&n2));

    // An explicit empty list is the runtime saying nothing is valid.
    let (ok, v) = net.gc(Some(&[]));
    assert!(ok, "GC []: {v}");
    assert!(net.ports().is_empty(), "ports left: {:?}", net.ports());
    assert!(net.leases().is_empty(), "leases left: {:?}", net.leases());
    assert!(!has_eth0(&n1));
}

#[test]
fn add_and_del_leave_a_link_that_is_not_this_attachments() {
    let mut net = Net::new("10.231.2.0/24");
    let (n0, n1, n2) = (net.netns(), net.netns(), net.netns());
    net.add("c0", &n0); // the bridge exists from here on
    let squat = net.veth("c1");
    let peer = format!("sq{}", uniq());
    net.links.push(squat.clone());
    // Someone else's veth under c1's hashed name: no alias, a MAC we never give it.
    must(&format!("ip link add {squat} address 02:00:00:00:00:01 type veth peer name {peer}"));
    let (ok, err) = net.call("ADD", "c1", &n1, &net.conf);
    assert!(!ok, "ADD over a foreign link must fail");
    assert!(err["msg"].as_str().unwrap().contains("is not this attachment's"), "{err}");
    let seen = must(&format!("ip -o link show {squat}"));
    assert!(seen.contains("02:00:00:00:00:01"), "foreign link changed or gone: {seen}");
    assert_eq!(net.leases(), ["c0"], "the failed ADD released its lease");
    assert!(!has_eth0(&n1));

    // The alias of another container of this network is not ours either.
    must(&format!("ip link set {squat} alias 'cni-bridge net={} cid=other if=eth0'", net.name));
    let (ok, err) = net.call("ADD", "c1", &n1, &net.conf);
    assert!(!ok, "{err}");
    let (ok, v) = net.call("DEL", "c1", &n1, &net.conf);
    assert!(ok, "DEL succeeds: {v}");
    assert!(sh(&format!("ip link show {squat} >/dev/null")).0, "DEL left the foreign link alone");

    // What an ADD killed right after creating the pair leaves: our MAC, no
    // alias, eth0 in the container. A new ADD for that container replaces it.
    let own = net.veth("c2");
    let m = names::host_veth_mac(&net.name, &own);
    let mac = format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5]);
    must(&format!("ip link add {own} address {mac} master {} type veth peer name eth0 netns {n2}", net.bridge));
    assert!(has_eth0(&n2));
    let r = net.add("c2", &n2);
    let alias = must(&format!("ip -d link show {own}"));
    assert!(alias.contains("cid=c2 if=eth0"), "new pair carries the alias: {alias}");
    assert!(ping(&n0, &ip_of(&r)), "c0 reaches the re-added c2");
}

/// A small deterministic generator, seeded per run and printed, so a failing
/// run can be replayed.
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        self.0 >> 33
    }
}

#[test]
fn adds_killed_at_random_points_leave_nothing_gc_cannot_attribute() {
    const KILLS: usize = 24;
    let mut net = Net::new("10.231.3.0/24");
    let n0 = net.netns();
    // One whole ADD first: the bridge and gateway exist, and its duration
    // bounds where a kill can land.
    let t = Instant::now();
    net.add("c0", &n0);
    let mut took = t.elapsed();
    for i in 1..4 {
        let ns = net.netns();
        let t = Instant::now();
        net.add(&format!("w{i}"), &ns);
        took = took.min(t.elapsed());
    }
    let seed = std::env::var("KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("SIGKILL points: seed {seed} (KILL_SEED to replay), one ADD takes {took:?}");
    let mut rng = Lcg(seed);
    let mut up: Vec<String> = vec!["c0".into(), "w1".into(), "w2".into(), "w3".into()];
    let mut killed: Vec<(String, String)> = Vec::new();
    for i in 0..KILLS {
        let ns = net.netns();
        let cid = format!("k{i}");
        // Anywhere from exec to past a whole ADD.
        let at = Duration::from_micros(rng.next() % (took.as_micros() as u64 * 2 + 1));
        let mut child = net.spawn("ADD", &cid, &ns, &net.conf);
        let start = Instant::now();
        while start.elapsed() < at {
            std::hint::spin_loop();
        }
        let _ = child.kill();
        let out = child.wait_with_output().unwrap();
        if out.status.success() {
            up.push(cid);
        } else {
            killed.push((cid, ns));
        }
    }
    eprintln!("{} ADDs killed, {} finished first", killed.len(), up.len() - 4);
    assert!(!killed.is_empty(), "no ADD was killed: the kill points missed");

    let valid: Vec<&str> = up.iter().map(String::as_str).collect();
    let (ok, v) = net.gc(Some(&valid));
    assert!(ok, "GC: {v}");
    let want_ports: BTreeSet<String> = up.iter().map(|c| net.veth(c)).collect();
    assert_eq!(net.ports(), want_ports, "exactly the host veths of the containers that came up");
    let mut want_leases = up.clone();
    want_leases.sort();
    assert_eq!(net.leases(), want_leases, "exactly one lease per container that came up");
    let all = sh("ip -o link show").1;
    for (cid, _) in &killed {
        assert!(!all.contains(&format!("{}:", net.veth(cid))), "killed {cid}'s host veth survived GC");
    }

    // Every killed container can be added again, leftovers or not.
    for (cid, ns) in &killed {
        let r = net.add(cid, ns);
        let gw = r["ips"][0]["gateway"].as_str().unwrap().to_string();
        assert!(
            ping(ns, &gw),
            "{cid} does not reach its gateway {gw}; result {r}\n{}\n{}",
            sh(&format!("ip -n {ns} addr; ip -n {ns} route; ip -n {ns} neigh")).1,
            sh(&format!("bridge link show master {}; ip addr show {}", net.bridge, net.bridge)).1
        );
    }
    for (cid, ns) in &killed {
        let (ok, v) = net.call("DEL", cid, ns, &net.conf);
        assert!(ok, "DEL {cid}: {v}");
    }
    let (ok, v) = net.gc(Some(&valid));
    assert!(ok, "GC: {v}");
    assert_eq!(net.ports(), want_ports);
    assert_eq!(net.leases(), want_leases);
}

#[test]
fn a_panicking_plugin_still_answers_with_a_cni_error() {
    use std::os::unix::process::ExitStatusExt;
    let net = Net::new("10.231.4.0/24");
    let conf = json!({"cniVersion": "1.0.0", "name": net.name, "type": "cni-bridge", "bridge": net.bridge});
    for verb in ["ADD", "DEL"] {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cni-bridge"))
            .env("CNI_COMMAND", verb)
            .env("CNI_CONTAINERID", "p1")
            .env("CNI_NETNS", "/proc/self/ns/net")
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .env(cni_core::skel::PANIC_FOR_TEST, verb)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        // Release builds abort on panic; the hook answers and exits first.
        assert_eq!(out.status.signal(), None, "{verb}: died of a signal, answered nothing: {:?}", out.status);
        assert_eq!(out.status.code(), Some(1), "{verb}");
        let v: Value = serde_json::from_slice(&out.stdout)
            .unwrap_or_else(|e| panic!("{verb}: stdout is not one JSON object ({e}): {:?}", out.stdout));
        assert_eq!(v["code"], 999, "{v}");
        assert_eq!(v["cniVersion"], "1.0.0", "{v}");
        assert!(v["msg"].as_str().unwrap().contains("panicked"), "{v}");
        assert!(v["msg"].as_str().unwrap().contains(&format!("asked for a panic in {verb}")), "{v}");
    }
}

#[test]
fn a_plugin_whose_reader_is_gone_exits_with_an_error_instead_of_dying_of_sigpipe() {
    use std::os::unix::process::ExitStatusExt;
    // A broken pipe stands for any peer that closed its end: stdout here, an
    // etcd member's connection in cluster IPAM. The plugin must see EPIPE as
    // an error (and answer if it still can), never be killed by the signal.
    let (reader, writer) = std::io::pipe().unwrap();
    drop(reader);
    let status = Command::new(env!("CARGO_BIN_EXE_cni-bridge"))
        .env("CNI_COMMAND", "VERSION")
        .stdin(Stdio::null())
        .stdout(writer)
        .stderr(Stdio::null())
        .status()
        .unwrap();
    assert_ne!(status.signal(), Some(libc_sigpipe()), "killed by SIGPIPE: {status:?}");
    assert!(!status.success(), "a result that could not be written is a failure: {status:?}");
}

/// SIGPIPE's number on Linux (every architecture we build for).
fn libc_sigpipe() -> i32 {
    13
}
