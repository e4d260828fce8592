//! A routed cluster end to end (issue #13 item 5), in a `testkit::lab` lab:
//! hosts are network namespaces on L2 segments, one real etcd, one
//! `cni-bgp agent` per host, containers attached with the `cni-bgp` plugin
//! and `cni-ipam` in cluster blocks mode (non-strict), top-of-rack routers
//! running BIRD 2. Nothing is mocked: the agents find each other through
//! etcd, speak BGP over the underlay and program each host's kernel, and
//! the tests look at what a user would see: pings, TTLs, captures on the
//! wire, `ip route show proto 76`, `cni-bgp status`, `cni-ipam blocks`.
//!
//! The plugin dir holds `cni-bgp` (this crate's binary) and `cni-ipam`,
//! which the plugin execs for the cluster IPAM: the workspace build puts it
//! next to `cni-bgp` (`cargo build --release -p cni-ipam` does too); a
//! missing one fails the test with that hint.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use cni_bgp::status;
use serde_json::{json, Value};
use testkit::bgp::{BgpDaemon, Frr, Neighbor, PeerConfig};
use testkit::lab::{ContainerId, HostId, Lab, Node, ProcessGuard, SegmentId};

/// The CNI network's name (also the cni-ipam blocks' `<network>`).
const NET: &str = "routed";
/// Hold time the agents propose (s): small, so a dead host is noticed fast.
const HOLD: u64 = 9;
/// TTL of an agent's node record in etcd (`--registration-ttl`, s): a
/// stopped agent's node is unpeered by the others after this.
const TTL: u64 = 6;
/// How long a cluster may take to converge after a start.
const CONVERGE: Duration = Duration::from_secs(30);

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cni-bgp"))
}

/// `cni-ipam`, built next to `cni-bgp` by a workspace (or `-p cni-ipam`) build.
fn ipam_bin() -> PathBuf {
    let p = bin().with_file_name("cni-ipam");
    assert!(
        p.is_file(),
        "{} is missing: run `cargo build --release -p cni-ipam` first (CI's workspace build makes it)",
        p.display()
    );
    p
}

/// A routed cluster in a lab: etcd, hosts with agents, containers.
struct Cluster {
    lab: Lab,
    url: String,
    pool: String,
    /// An IPv6 pool too (dual stack): agents get `--node-ipv6`.
    pool6: Option<String>,
    plugin_dir: PathBuf,
    names: BTreeMap<HostId, String>,
    /// Extra agent flags per host (e.g. `--as`, `--route-reflector`).
    flags: BTreeMap<HostId, Vec<String>>,
    agents: BTreeMap<HostId, ProcessGuard>,
    /// Every address of the last container's ADD result.
    last_ips: Vec<IpAddr>,
}

impl Cluster {
    fn new(hint: &str, pool: &str) -> Cluster {
        let mut lab = Lab::new(hint).expect("lab");
        let url = lab.start_etcd().expect("etcd");
        let plugin_dir = lab.dir().join("cni-bin");
        std::fs::create_dir_all(&plugin_dir).unwrap();
        std::os::unix::fs::symlink(bin(), plugin_dir.join("cni-bgp")).unwrap();
        std::os::unix::fs::symlink(ipam_bin(), plugin_dir.join("cni-ipam")).unwrap();
        Cluster {
            lab,
            url,
            pool: pool.into(),
            pool6: None,
            plugin_dir,
            names: BTreeMap::new(),
            flags: BTreeMap::new(),
            agents: BTreeMap::new(),
            last_ips: Vec::new(),
        }
    }

    /// A host on `seg` named `n<i>`, with extra agent flags.
    fn host(&mut self, seg: SegmentId, flags: &[&str]) -> HostId {
        let h = self.lab.host(seg).expect("host");
        self.names.insert(h, format!("n{}", h.0));
        self.flags.insert(h, flags.iter().map(|s| s.to_string()).collect());
        std::fs::create_dir_all(self.host_dir(h)).unwrap();
        h
    }

    fn name(&self, h: HostId) -> &str {
        &self.names[&h]
    }

    fn host_dir(&self, h: HostId) -> PathBuf {
        self.lab.dir().join(format!("host{}", h.0))
    }

    fn state_dir(&self, h: HostId) -> PathBuf {
        self.host_dir(h).join("state")
    }

    /// The admin CLI (`cni-bgp config|peer|nodes …`) against the lab's etcd; must succeed.
    fn cli(&self, args: &[&str]) -> String {
        let url = self.lab.etcd_local_url().unwrap();
        let out = Command::new(bin())
            .args(args)
            .args(["--etcd-endpoints", &url, "--etcd-prefix", "/cni-ipam"])
            .env_remove("CNI_COMMAND")
            .output()
            .unwrap();
        assert!(out.status.success(), "cni-bgp {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Starts host `h`'s agent and waits until its status socket says ready.
    fn start_agent(&mut self, h: HostId) {
        let ip = self.lab.host_ip(h).to_string();
        let state = self.state_dir(h).display().to_string();
        let (hold, ttl) = (HOLD.to_string(), TTL.to_string());
        let mut args: Vec<&str> = vec![
            "agent",
            "--etcd-endpoints",
            &self.url,
            "--etcd-prefix",
            "/cni-ipam",
            "--node-name",
            &self.names[&h],
            "--node-ip",
            &ip,
            "--state-dir",
            &state,
            "--hold-time",
            &hold,
            "--registration-ttl",
            &ttl,
            "--log-level",
            "info",
        ];
        let ip6 = self.lab.host_ip6(h).map(|a| a.to_string());
        if let Some(a) = &ip6 {
            args.extend(["--node-ipv6", a.as_str()]);
        }
        args.extend(self.flags[&h].iter().map(String::as_str));
        let g = self.lab.spawn(h, bin().to_str().unwrap(), &args, &[]).expect("spawn agent");
        let sock = status::socket_path(&self.state_dir(h));
        let deadline = Instant::now() + CONVERGE;
        loop {
            match status::query(&sock, Duration::from_secs(1)) {
                Ok(a) if a.ready => break,
                r => {
                    assert!(g.is_running(), "agent of {} exited ({r:?}):\n{}", self.name(h), g.log());
                    assert!(Instant::now() < deadline, "agent of {} not ready: {r:?}\n{}", self.name(h), g.log());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        self.agents.insert(h, g);
    }

    /// Every agent's log, for failure messages.
    fn logs(&self) -> String {
        self.agents.iter().map(|(h, g)| format!("--- agent {}:\n{}", self.names[h], tail(&g.log(), 40))).collect()
    }

    fn conf(&self, h: HostId) -> Value {
        let d = self.host_dir(h);
        let mut cluster = json!({"mode": "blocks", "etcdEndpoints": [self.url], "etcdPrefix": "/cni-ipam",
                                 "pool": self.pool, "blockSize": 26, "host": self.name(h)});
        if let Some(p6) = &self.pool6 {
            cluster = json!({"mode": "blocks", "etcdEndpoints": [self.url], "etcdPrefix": "/cni-ipam",
                             "pools": [{"cidr": self.pool, "blockSize": 26}, {"cidr": p6, "blockSize": 122}],
                             "host": self.name(h)});
        }
        json!({
            "cniVersion": "1.1.0", "name": NET, "type": "cni-bgp",
            "stateDir": self.state_dir(h), "dataDir": d.join("records"),
            "ipam": {"type": "cni-ipam", "dataDir": d.join("ipam"), "cluster": cluster},
        })
    }

    /// A container on `h`, attached through the plugin (`ips`: addresses to request); its IPv4.
    fn container_with(&mut self, h: HostId, ips: &[&str]) -> (ContainerId, Ipv4Addr) {
        let c = self.lab.container(h).unwrap();
        let mut conf = self.conf(h);
        if !ips.is_empty() {
            conf["runtimeConfig"] = json!({ "ips": ips });
        }
        let plugin = self.plugin_dir.join("cni-bgp");
        let (ok, r) = self.lab.cni(h, &plugin, "ADD", c, "eth0", &conf, &[]).unwrap();
        assert!(ok, "ADD on {}: {r}", self.name(h));
        let ips: Vec<IpAddr> = r["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["address"].as_str().unwrap().split('/').next().unwrap().parse().unwrap())
            .collect();
        let IpAddr::V4(ip) = ips[0] else { panic!("first address is not IPv4: {r}") };
        self.last_ips = ips;
        (c, ip)
    }

    fn container(&mut self, h: HostId) -> (ContainerId, Ipv4Addr) {
        self.container_with(h, &[])
    }

    /// The plugin's STATUS on `h` (the container only fills CNI_CONTAINERID).
    fn status(&self, h: HostId, c: ContainerId) -> testkit::plugin::Outcome {
        let plugin = self.plugin_dir.join("cni-bgp");
        self.lab.cni_outcome(h, &plugin, "STATUS", c, "eth0", &self.conf(h), &[]).unwrap()
    }

    fn del(&self, h: HostId, c: ContainerId) {
        let plugin = self.plugin_dir.join("cni-bgp");
        let (ok, r) = self.lab.cni(h, &plugin, "DEL", c, "eth0", &self.conf(h), &[]).unwrap();
        assert!(ok, "DEL on {}: {r}", self.name(h));
    }

    /// The IPv4 routes of ours (proto 76) in `h`'s kernel that lead somewhere:
    /// destination -> gateway (blackholes of own blocks left out).
    fn learned(&self, h: HostId) -> BTreeMap<String, String> {
        self.learned_of(h, "-4")
    }

    /// [`Cluster::learned`] for `-4` or `-6`.
    fn learned_of(&self, h: HostId, family: &str) -> BTreeMap<String, String> {
        let host_len = if family == "-6" { "/128" } else { "/32" };
        let out = self.lab.exec_ok(h, &["ip", "-j", family, "route", "show", "proto", "76"]).unwrap();
        let v: Value = serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out }).unwrap();
        v.as_array()
            .unwrap()
            .iter()
            .filter(|r| r["type"].as_str() != Some("blackhole"))
            .map(|r| {
                let dst = r["dst"].as_str().unwrap().to_string();
                let dst = if dst.contains('/') { dst } else { format!("{dst}{host_len}") };
                (dst, r["gateway"].as_str().unwrap_or("").to_string())
            })
            .collect()
    }

    /// Own-block blackholes (proto 76) in `h`'s kernel.
    fn blackholes(&self, h: HostId) -> Vec<String> {
        let out =
            self.lab.exec_ok(h, &["ip", "-j", "-4", "route", "show", "proto", "76", "type", "blackhole"]).unwrap();
        let v: Value = serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out }).unwrap();
        v.as_array().unwrap().iter().map(|r| r["dst"].as_str().unwrap().to_string()).collect()
    }

    /// Waits (bounded) until `pred` holds for `h`'s learned routes; returns them.
    fn wait_learned(
        &self,
        h: HostId,
        within: Duration,
        what: &str,
        pred: impl Fn(&BTreeMap<String, String>) -> bool,
    ) -> BTreeMap<String, String> {
        let deadline = Instant::now() + within;
        loop {
            let r = self.learned(h);
            if pred(&r) {
                return r;
            }
            assert!(Instant::now() < deadline, "{}: {what}; proto 76 routes: {r:?}\n{}", self.name(h), self.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The blocks of the network in etcd: block -> affine host.
    fn blocks(&self) -> BTreeMap<String, String> {
        let url = self.lab.etcd_local_url().unwrap();
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .args(["--endpoints", &url, "get", "--prefix", &format!("/cni-ipam/{NET}/blocks/")])
            .output()
            .unwrap();
        assert!(out.status.success(), "etcdctl: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text.lines().collect();
        lines
            .chunks(2)
            .map(|kv| {
                let cidr = cluster_ipam_key(kv[0]);
                let v: Value = serde_json::from_str(kv[1]).unwrap();
                (cidr, v["host"].as_str().unwrap().to_string())
            })
            .collect()
    }

    /// The IPv4 block of `host` (the first one etcd lists).
    fn block_of(&self, h: HostId) -> String {
        let name = self.name(h).to_string();
        self.blocks()
            .into_iter()
            .find(|(b, owner)| *owner == name && !b.contains(':'))
            .map(|(b, _)| b)
            .expect("host has a block")
    }

    /// The IPv6 block of `host`.
    fn block6_of(&self, h: HostId) -> String {
        let name = self.name(h).to_string();
        self.blocks()
            .into_iter()
            .find(|(b, owner)| *owner == name && b.contains(':'))
            .map(|(b, _)| b)
            .expect("host has an IPv6 block")
    }

    /// `cni-bgp status --json` of `h`'s agent: its peers.
    fn peers(&self, h: HostId) -> Vec<Value> {
        let out = Command::new(bin())
            .args(["status", "--json", "--state-dir"])
            .arg(self.state_dir(h))
            .env_remove("CNI_COMMAND")
            .output()
            .unwrap();
        assert!(out.status.success(), "cni-bgp status: {}", String::from_utf8_lossy(&out.stderr));
        let v: Value = serde_json::from_slice(&out.stdout).expect("status --json");
        v["peers"].as_array().cloned().unwrap_or_default()
    }

    /// Waits until `h`'s agent has exactly `n` peers, all Established.
    fn wait_sessions(&self, h: HostId, n: usize) -> Vec<Value> {
        let deadline = Instant::now() + CONVERGE;
        loop {
            let p = self.peers(h);
            if p.len() == n && p.iter().all(|x| x["state"] == "Established") {
                return p;
            }
            assert!(
                Instant::now() < deadline,
                "{}: want {n} established peers, have {p:#?}\n{}",
                self.name(h),
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// `10.60.0.64-26` at the end of a block key -> `10.60.0.64/26`.
fn cluster_ipam_key(key: &str) -> String {
    let last = key.rsplit('/').next().unwrap();
    let (ip, len) = last.rsplit_once('-').unwrap();
    format!("{ip}/{len}")
}

fn tail(s: &str, n: usize) -> String {
    let l: Vec<&str> = s.lines().collect();
    l[l.len().saturating_sub(n)..].join("\n")
}

/// `ip -o monitor route` in host `h`, returned once it is seen to report
/// (a probe route added and deleted until the monitor prints it).
fn route_monitor(lab: &Lab, h: HostId) -> ProcessGuard {
    let m = lab.spawn(h, "ip", &["-o", "monitor", "route"], &[]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(5);
    while !m.log().contains("198.51.100.76") {
        assert!(Instant::now() < deadline, "ip monitor does not report:\n{}", m.log());
        lab.exec_ok(h, &["ip", "route", "replace", "blackhole", "198.51.100.76/32"]).unwrap();
        lab.exec_ok(h, &["ip", "route", "del", "blackhole", "198.51.100.76/32"]).unwrap();
        std::thread::sleep(Duration::from_millis(20));
    }
    m
}

/// The TTL of the reply to one echo request from `from` to `dst`.
fn reply_ttl(lab: &Lab, from: impl Into<Node>, dst: Ipv4Addr) -> u32 {
    let out = lab.exec_ok(from, &["ping", "-n", "-c", "1", "-W", "2", &dst.to_string()]).unwrap();
    let ttl = out.split("ttl=").nth(1).and_then(|s| s.split_whitespace().next()).unwrap_or_else(|| panic!("{out}"));
    ttl.parse().unwrap()
}

/// (transmitted, received) from ping's summary line.
fn ping_counts(log: &str) -> (u32, u32) {
    let line = log.lines().find(|l| l.contains("packets transmitted")).unwrap_or_else(|| panic!("no summary:\n{log}"));
    let nums: Vec<u32> = line.split(',').filter_map(|p| p.split_whitespace().next()?.parse().ok()).collect();
    (nums[0], nums[1])
}

#[test]
fn three_hosts_in_a_mesh_ping_across_with_container_addresses_on_the_wire() {
    let mut k = Cluster::new("bgpmesh", "10.60.0.0/16");
    let seg = k.lab.segment("192.168.160.0/24").unwrap();
    let hosts: Vec<HostId> = (0..3).map(|_| k.host(seg, &[])).collect();
    for h in &hosts {
        k.start_agent(*h);
    }
    let ctrs: Vec<(ContainerId, Ipv4Addr)> = hosts.iter().map(|h| k.container(*h)).collect();
    // Every host learns the two other hosts' blocks via their node IPs, and blackholes its own.
    for h in &hosts {
        let own = k.block_of(*h);
        let want: BTreeMap<String, String> =
            hosts.iter().filter(|o| *o != h).map(|o| (k.block_of(*o), k.lab.host_ip(*o).to_string())).collect();
        k.wait_learned(*h, CONVERGE, "the other hosts' blocks", |r| want.iter().all(|(b, gw)| r.get(b) == Some(gw)));
        assert_eq!(k.blackholes(*h), [own], "{}", k.name(*h));
        k.wait_sessions(*h, 2);
    }
    // Container to container across hosts, both ways; the wire carries the container addresses.
    let sw = k.lab.switch_port(hosts[0], seg).unwrap();
    // Every IPv4 packet: an encapsulation (VXLAN over UDP, IP-in-IP as protocol 4) would show.
    let cap = k.lab.capture(Node::Switch, &sw, "ip", 0, Duration::from_secs(4)).unwrap();
    for (i, (c, _)) in ctrs.iter().enumerate() {
        for (j, (_, ip)) in ctrs.iter().enumerate() {
            if i != j {
                assert!(k.lab.ping_until(*c, *ip, Duration::from_secs(5)), "c{i} -> c{j} ({ip})\n{}", k.logs());
            }
        }
    }
    let lines = cap.wait();
    let (a, b) = (ctrs[0].1, ctrs[1].1);
    assert!(lines.contains(&format!("IP {a} > {b}: ICMP echo request")), "{lines}");
    assert!(lines.contains(&format!("IP {b} > {a}: ICMP echo reply")), "{lines}");
    assert!(!lines.contains("UDP") && !lines.contains("VXLAN") && !lines.contains("proto 4"), "encapsulated: {lines}");
    // tcpdump prints an IP-in-IP packet as two IP headers on one line (or as ipip).
    assert!(!lines.lines().any(|l| l.matches("IP ").count() > 1 || l.contains("ipip")), "encapsulated: {lines}");
    // Routed, not bridged: one hop (the destination host) between the containers.
    assert_eq!(reply_ttl(&k.lab, ctrs[0].0, b), 62, "c0 -> c1: the two hosts forward, nothing else");
}

/// A BIRD 2 top-of-rack router in `node` (a lab router): eBGP with every
/// `(address, AS)` neighbour, its own AS `asn`, routes into its kernel.
/// Toward neighbours of `strip` (the rack's AS) it removes that AS from
/// the path, so hosts of one rack (one AS) accept each other's routes
/// (what `as-override` does on other routers), and sets itself as next
/// hop, so all of the rack's traffic between blocks goes through it.
fn start_tor(
    lab: &Lab,
    node: HostId,
    router_id: Ipv4Addr,
    asn: u32,
    neighbours: &[(Ipv4Addr, u32)],
    strip: u32,
) -> ProcessGuard {
    let dir = lab.dir().join(format!("bird-r{}", node.0));
    std::fs::create_dir_all(&dir).unwrap();
    let mut conf = format!(
        "router id {router_id};\nprotocol device {{ scan time 10; }}\n\
         protocol kernel {{ ipv4 {{ import none; export all; }}; }}\n\
         filter strip_rack {{ bgp_path.delete({strip}); accept; }}\n"
    );
    for (i, (ip, peer_as)) in neighbours.iter().enumerate() {
        // Toward the rack: strip its AS, and next hop self (BIRD would otherwise pass a
        // same-segment host's address on as a third-party next hop).
        let export = if *peer_as == strip { "filter strip_rack; next hop self" } else { "all" };
        conf += &format!(
            "protocol bgp n{i} {{ local as {asn}; neighbor {ip} as {peer_as}; hold time {HOLD}; connect retry time 1; \
             ipv4 {{ import all; export {export}; }}; }}\n"
        );
    }
    let cfg = dir.join("bird.conf");
    std::fs::write(&cfg, conf).unwrap();
    let sock = dir.join("bird.ctl");
    let g = lab
        .spawn(node, "bird", &["-f", "-c", cfg.to_str().unwrap(), "-s", sock.to_str().unwrap()], &[])
        .expect("start bird");
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sock.exists() {
        assert!(g.is_running() && Instant::now() < deadline, "bird did not start:\n{}", g.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    g
}

#[test]
fn as_per_rack_hosts_peer_with_their_tor_and_cross_rack_traffic_goes_through_both_tors() {
    let mut k = Cluster::new("bgprack", "10.61.0.0/16");
    let rack1 = k.lab.segment("192.168.161.0/24").unwrap();
    let rack2 = k.lab.segment("192.168.162.0/24").unwrap();
    let spine = k.lab.segment("192.168.163.0/24").unwrap();
    let tor1 = k.lab.router(&[rack1, spine]).unwrap();
    let tor2 = k.lab.router(&[rack2, spine]).unwrap();
    let a1 = k.host(rack1, &["--as", "65001"]);
    let a2 = k.host(rack1, &["--as", "65001"]);
    let b1 = k.host(rack2, &["--as", "65002"]);
    let tor1_ip = k.lab.host_ip_on(tor1, rack1).unwrap();
    let tor2_ip = k.lab.host_ip_on(tor2, rack2).unwrap();
    let (t1s, t2s) = (k.lab.host_ip_on(tor1, spine).unwrap(), k.lab.host_ip_on(tor2, spine).unwrap());
    // Mesh off; each host's only peer is its ToR (a global peer scoped to the node).
    k.cli(&["config", "set", "--mesh", "off"]);
    for (h, tor, asn) in [(a1, tor1_ip, 65101), (a2, tor1_ip, 65101), (b1, tor2_ip, 65102)] {
        let name = k.name(h).to_string();
        k.cli(&["peer", "add", &format!("{tor},{asn}"), "--node", &name]);
    }
    let _bird1 = start_tor(
        &k.lab,
        tor1,
        t1s,
        65101,
        &[(k.lab.host_ip(a1), 65001), (k.lab.host_ip(a2), 65001), (t2s, 65102)],
        65001,
    );
    // Rack 2's ToR is FRR 8 (testkit::bgp's fixture: zebra installs its routes; one host in
    // the rack, so nothing to strip; eBGP sets next hop self toward both neighbours).
    let tor2_cfg = PeerConfig { hold_time: Some(HOLD as u16), ..PeerConfig::new(t2s, 65102) }
        .neighbor(Neighbor::new(k.lab.host_ip(b1).into(), 65002))
        .neighbor(Neighbor::new(t1s.into(), 65101));
    let frr = Frr::start(k.lab.host_ns(tor2), &tor2_cfg).expect("FRR ToR");
    for h in [a1, a2, b1] {
        k.start_agent(h);
    }
    let (ca1, ia1) = k.container(a1);
    let (ca2, ia2) = k.container(a2);
    let (cb1, ib1) = k.container(b1);
    for h in [a1, a2, b1] {
        let p = k.wait_sessions(h, 1);
        assert_eq!(p[0]["asn"], if h == b1 { 65102 } else { 65101 }, "{p:?}");
    }
    // Rack 1's hosts reach rack 2's block via their ToR, and each other's via the ToR too (no mesh).
    let (ba1, ba2, bb1) = (k.block_of(a1), k.block_of(a2), k.block_of(b1));
    for (h, tor, others) in
        [(a1, tor1_ip, vec![&ba2, &bb1]), (a2, tor1_ip, vec![&ba1, &bb1]), (b1, tor2_ip, vec![&ba1, &ba2])]
    {
        let t = tor.to_string();
        k.wait_learned(h, CONVERGE, "the other racks' blocks via the ToR", |r| {
            others.iter().all(|b| r.get(*b) == Some(&t))
        });
    }
    for (from, to) in [(ca1, ib1), (cb1, ia1), (ca2, ib1), (ca1, ia2)] {
        assert!(k.lab.ping_until(from, to, Duration::from_secs(10)), "ping {to}\n{}", k.logs());
    }
    // FRR has rack 1's blocks from BIRD and rack 2's from our agent.
    let net = |b: &str| b.parse::<ipnetwork::IpNetwork>().unwrap();
    for (b, via) in [(&ba1, t1s), (&ba2, t1s), (&bb1, k.lab.host_ip(b1))] {
        frr.wait_route(net(b), Some(via.into()), CONVERGE).unwrap_or_else(|e| panic!("{e}\n{}", frr.log_tail()));
    }
    // Cross-rack: host a1, ToR1, ToR2, host b1 forward it (TTL 64 - 4), and rack 2's wire carries it.
    let sw = k.lab.switch_port(b1, rack2).unwrap();
    let cap = k.lab.capture(Node::Switch, &sw, "icmp", 2, Duration::from_secs(4)).unwrap();
    assert_eq!(reply_ttl(&k.lab, ca1, ib1), 60, "a1 -> b1 crosses both ToRs");
    let lines = cap.wait();
    assert!(lines.contains(&format!("IP {ia1} > {ib1}: ICMP echo request")), "{lines}");
    // Same rack: through ToR1 only (a1, ToR1, a2).
    assert_eq!(reply_ttl(&k.lab, ca1, ia2), 61, "a1 -> a2 goes through ToR1");
}

#[test]
fn one_route_reflector_and_four_clients_without_mesh_every_client_learns_every_block() {
    let mut k = Cluster::new("bgprr", "10.62.0.0/16");
    let seg = k.lab.segment("192.168.164.0/24").unwrap();
    let rr = k.host(seg, &["--route-reflector"]);
    let clients: Vec<HostId> = (0..4).map(|_| k.host(seg, &[])).collect();
    let rr_name = k.name(rr).to_string();
    k.cli(&["config", "set", "--mesh", "off", "--route-reflector", &rr_name]);
    let mut all = vec![rr];
    all.extend(&clients);
    for h in &all {
        k.start_agent(*h);
    }
    let ctrs: Vec<(ContainerId, Ipv4Addr)> = all.iter().map(|h| k.container(*h)).collect();
    // One session per client (to the reflector), four on the reflector.
    k.wait_sessions(rr, 4);
    for c in &clients {
        let p = k.wait_sessions(*c, 1);
        assert_eq!(p[0]["address"], k.lab.host_ip(rr).to_string(), "{p:?}");
    }
    // Every client learns every other host's block, with the originating host as next hop
    // (the reflector keeps the next hop, RFC 4456).
    for c in &clients {
        let want: BTreeMap<String, String> =
            all.iter().filter(|o| *o != c).map(|o| (k.block_of(*o), k.lab.host_ip(*o).to_string())).collect();
        let got =
            k.wait_learned(*c, CONVERGE, "every other block", |r| want.iter().all(|(b, gw)| r.get(b) == Some(gw)));
        assert_eq!(got.len(), 4, "{}: {got:?}", k.name(*c));
    }
    // Clients' containers reach each other directly (client to client, not via the reflector).
    let (c1, i1) = ctrs[1];
    let (_, i4) = ctrs[4];
    assert!(k.lab.ping_until(c1, i4, Duration::from_secs(5)), "{}", k.logs());
    assert_eq!(reply_ttl(&k.lab, c1, i4), 62);
    assert!(k.lab.ping_until(ctrs[4].0, i1, Duration::from_secs(5)));
}

#[test]
fn the_address_follows_the_container_and_a_third_host_reaches_it_within_a_second() {
    let mut k = Cluster::new("bgpmove", "10.63.0.0/16");
    let seg = k.lab.segment("192.168.165.0/24").unwrap();
    let hosts: Vec<HostId> = (0..3).map(|_| k.host(seg, &[])).collect();
    let (h1, h2, h3) = (hosts[0], hosts[1], hosts[2]);
    for h in &hosts {
        k.start_agent(*h);
    }
    // A container on every host, so each has a block (the mover's stays h1's).
    let (c1, ip) = k.container(h1);
    let _ = k.container(h2);
    let (c3, _) = k.container(h3);
    let b1 = k.block_of(h1);
    let (g1, g2) = (k.lab.host_ip(h1).to_string(), k.lab.host_ip(h2).to_string());
    k.wait_learned(h3, CONVERGE, "h1's block", |r| r.get(&b1) == Some(&g1));
    assert!(k.lab.ping_until(c3, ip, Duration::from_secs(5)), "{}", k.logs());

    // The container leaves h1 ...
    k.del(h1, c1);
    k.lab.remove_container(c1).unwrap();
    let host_route = format!("{ip} dev cali");
    assert!(!k.lab.exec_ok(h1, &["ip", "-4", "route"]).unwrap().contains(&host_route));
    // ... and comes back on h2 with the same address requested (runtimeConfig.ips).
    let t0 = Instant::now();
    let (moved, got) = k.container_with(h2, &[&format!("{ip}/26")]);
    let add_done = Instant::now();
    assert_eq!(got, ip);
    // h3 routes the /32 to h2 (longer than h1's block), and the container answers at its old address.
    let host32 = format!("{ip}/32");
    let deadline = add_done + Duration::from_secs(5);
    let reached = loop {
        if k.learned(h3).get(&host32) == Some(&g2)
            && k.lab.exec(c3, &["ping", "-n", "-c", "1", "-W", "1", &ip.to_string()]).unwrap().status.success()
        {
            break Instant::now();
        }
        assert!(Instant::now() < deadline, "h3 never reached {ip} on h2: {:?}\n{}", k.learned(h3), k.logs());
        std::thread::sleep(Duration::from_millis(10));
    };
    let (add, since_add) = (add_done - t0, reached - t0);
    eprintln!("address follows the container: ADD took {add:?}, h3 reached it {since_add:?} after the ADD began");
    assert!(since_add < Duration::from_secs(1), "{since_add:?} from the start of the ADD");
    // h2 advertises the /32 (h1 learns it too, over its blackholed block) and h1 has no local route for it.
    k.wait_learned(h1, Duration::from_secs(2), "the moved /32 via h2", |r| r.get(&host32) == Some(&g2));
    assert!(!k.learned(h2).contains_key(&host32), "h2 routes it locally, not via BGP");
    assert!(k.lab.exec_ok(h2, &["ip", "-4", "route"]).unwrap().contains(&host_route));
    // The block is still h1's: h3 keeps that route for the rest of the block.
    assert_eq!(k.learned(h3).get(&b1), Some(&g1));
    // Back: DEL on h2 withdraws the /32 everywhere.
    k.del(h2, moved);
    k.wait_learned(h3, Duration::from_secs(5), "the /32 withdrawn", |r| !r.contains_key(&host32));
}

#[test]
fn agent_restart_loses_no_ping_a_stopped_peer_is_withdrawn_and_a_removed_host_is_withdrawn_and_freed() {
    let mut k = Cluster::new("bgprst", "10.64.0.0/16");
    let seg = k.lab.segment("192.168.166.0/24").unwrap();
    let hosts: Vec<HostId> = (0..3).map(|_| k.host(seg, &[])).collect();
    let (h1, h2, h3) = (hosts[0], hosts[1], hosts[2]);
    for h in &hosts {
        k.start_agent(*h);
    }
    let (c1, _) = k.container(h1);
    let (_, ip2) = k.container(h2);
    let (_, ip3) = k.container(h3);
    let (b1, b2, b3) = (k.block_of(h1), k.block_of(h2), k.block_of(h3));
    let (g1, g2, g3) = (k.lab.host_ip(h1).to_string(), k.lab.host_ip(h2).to_string(), k.lab.host_ip(h3).to_string());
    for h in &hosts {
        k.wait_sessions(*h, 2);
    }
    k.wait_learned(h1, CONVERGE, "h2's and h3's blocks", |r| r.get(&b2) == Some(&g2) && r.get(&b3) == Some(&g3));
    k.wait_learned(h2, CONVERGE, "h1's block", |r| r.get(&b1) == Some(&g1));
    assert!(k.lab.ping_until(c1, ip2, Duration::from_secs(5)));

    // 1. h1's agent is killed and started again while c1 pings c2 every 50 ms: no loss.
    let ping = k.lab.spawn(c1, "ping", &["-n", "-i", "0.05", "-W", "1", &ip2.to_string()], &[]).unwrap();
    let sent = |p: &ProcessGuard| p.log().lines().filter(|l| l.contains("icmp_seq=")).count();
    let deadline = Instant::now() + Duration::from_secs(5);
    while sent(&ping) < 10 {
        assert!(Instant::now() < deadline, "ping does not run:\n{}", ping.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    // Every route change in the three hosts' kernels from here on (a flap would show as Deleted).
    let monitors: Vec<ProcessGuard> = hosts.iter().map(|h| route_monitor(&k.lab, *h)).collect();
    let routes_before = k.learned(h1);
    k.agents.remove(&h1).unwrap().kill();
    // The data path stays while no agent runs: its routes are still in the kernel.
    assert_eq!(k.learned(h1), routes_before, "the killed agent's routes stay in the kernel");
    // STATUS on h1 fails with code 50 while no agent answers (its socket file is left behind).
    let st = k.status(h1, c1);
    assert!(!st.success() && st.error_code() == Some(50), "STATUS without agent: {}", st.describe());
    k.start_agent(h1);
    let st = k.status(h1, c1);
    assert!(st.success(), "STATUS with the agent back: {}", st.describe());
    for h in &hosts {
        k.wait_sessions(*h, 2);
    }
    // Some more pings after the re-convergence (stale routes swept by then).
    let more = sent(&ping) + 20;
    let deadline = Instant::now() + Duration::from_secs(10);
    while sent(&ping) < more {
        assert!(Instant::now() < deadline, "ping stalled:\n{}", ping.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    ping.signal(nix::libc::SIGINT);
    ping.wait_timeout(Duration::from_secs(5)).expect("ping ends on SIGINT");
    let (tx, rx) = ping_counts(&ping.log());
    eprintln!("agent restart under ping: {tx} sent, {rx} received");
    assert!(tx >= 30, "{tx}");
    assert_eq!(tx, rx, "packets lost while h1's agent restarted:\n{}", k.logs());
    assert_eq!(k.learned(h1).get(&b2), Some(&g2));
    // No host's kernel lost a route of ours across the restart (graceful restart on both sides).
    for (h, m) in hosts.iter().zip(&monitors) {
        let log = m.log();
        let flaps: Vec<&str> = log.lines().filter(|l| l.starts_with("Deleted") && l.contains("proto 76")).collect();
        assert!(flaps.is_empty(), "{}: routes deleted during the restart: {flaps:#?}", k.name(*h));
    }
    drop(monitors);

    // 2. h2's agent stops (SIGTERM): its registration lapses after the TTL and the others
    // withdraw its block (graceful restart kept it until then); started again, it is back.
    let g = k.agents.remove(&h2).unwrap();
    assert!(g.terminate(Duration::from_secs(10)).is_some_and(|s| s.success()), "SIGTERM exit:\n{}", g.log());
    for h in [h1, h3] {
        k.wait_learned(h, Duration::from_secs(TTL + 3), "h2's block withdrawn", |r| !r.contains_key(&b2));
    }
    assert!(!k.lab.ping(c1, ip2));
    k.start_agent(h2);
    for h in [h1, h3] {
        k.wait_learned(h, CONVERGE, "h2's block back", |r| r.get(&b2) == Some(&g2));
    }
    assert!(k.lab.ping_until(c1, ip2, Duration::from_secs(5)));

    // 3. h3 is removed: its links go down (no FIN, no etcd refresh gets out), then its agent dies.
    k.lab.exec_ok(h3, &["ip", "link", "set", "eth0", "down"]).unwrap();
    k.lab.exec_ok(h3, &["ip", "link", "set", "mgmt", "down"]).unwrap();
    let t0 = Instant::now();
    k.agents.remove(&h3).unwrap().kill();
    for h in [h1, h2] {
        k.wait_learned(h, Duration::from_secs(HOLD), "the removed host's block withdrawn", |r| !r.contains_key(&b3));
    }
    eprintln!("removed host withdrawn everywhere after {:?} (hold time {HOLD} s, node TTL {TTL} s)", t0.elapsed());
    assert!(!k.lab.ping(c1, ip3));
    // Its node record is gone with its lease, and cni-ipam remove-host frees its blocks.
    let deadline = Instant::now() + Duration::from_secs(30);
    while k.cli(&["nodes", "--json"]).contains(&format!("\"{}\"", k.name(h3))) {
        assert!(Instant::now() < deadline, "node record of the dead host stays");
        std::thread::sleep(Duration::from_millis(100));
    }
    let url = k.lab.etcd_local_url().unwrap();
    let out = Command::new(ipam_bin())
        .args(["remove-host", "--etcd-endpoints", &url, "--etcd-prefix", "/cni-ipam", "--network", NET, k.name(h3)])
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap();
    assert!(out.status.success(), "remove-host: {}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("1 block(s) freed"),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(!k.blocks().contains_key(&b3), "{:?}", k.blocks());
    // The remaining hosts still route to each other.
    assert!(k.lab.ping_until(c1, ip2, Duration::from_secs(5)));
}

#[test]
fn dual_stack_mesh_routes_ipv6_blocks_over_ipv6_sessions() {
    let mut k = Cluster::new("bgpv6", "10.66.0.0/16");
    k.pool6 = Some("fd66::/48".into());
    let seg = k.lab.segment_with_ipv6("192.168.169.0/24", "fd00:169::/64").unwrap();
    let hosts: Vec<HostId> = (0..3).map(|_| k.host(seg, &[])).collect();
    for h in &hosts {
        k.start_agent(*h);
    }
    let mut v6 = Vec::new();
    let mut ctrs = Vec::new();
    for h in &hosts {
        let (c, _) = k.container(*h);
        let a6 = k.last_ips.iter().find(|a| a.is_ipv6()).copied().expect("an IPv6 address");
        ctrs.push(c);
        v6.push(a6);
    }
    for h in &hosts {
        // Two sessions per other node: over IPv4 and over IPv6.
        let p = k.wait_sessions(*h, 4);
        assert_eq!(p.iter().filter(|x| x["address"].as_str().unwrap().contains(':')).count(), 2, "{p:?}");
        let want: BTreeMap<String, String> = hosts
            .iter()
            .filter(|o| *o != h)
            .map(|o| (k.block6_of(*o), k.lab.host_ip6(*o).unwrap().to_string()))
            .collect();
        let deadline = Instant::now() + CONVERGE;
        loop {
            let r = k.learned_of(*h, "-6");
            if want.iter().all(|(b, gw)| r.get(b) == Some(gw)) {
                break;
            }
            assert!(Instant::now() < deadline, "{}: IPv6 blocks {want:?}, have {r:?}\n{}", k.name(*h), k.logs());
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    for (i, c) in ctrs.iter().enumerate() {
        for (j, a) in v6.iter().enumerate() {
            if i != j {
                assert!(k.lab.ping_until(*c, *a, Duration::from_secs(5)), "c{i} -> {a}\n{}", k.logs());
            }
        }
    }
}
