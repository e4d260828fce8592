//! `cni-bgp agent` with real parts: hosts are network namespaces of a
//! `testkit::lab::Lab` on one L2 segment, etcd is real, the agents are the
//! real binary, and what is checked is what a user sees: routes in each
//! host's kernel under protocol 76, the status socket, `cni-bgp status`.
//!
//! IPAM blocks are written into etcd the way cluster_ipam stores them
//! (`<prefix>/<network>/blocks/<ip>-<len>`, a `BlockValue`).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use cluster_ipam::{Allocation, BlockValue};
use cni_bgp::status;
use serde_json::Value;
use testkit::lab::{HostId, Lab, ProcessGuard};
use testkit::util::wait_until;

const PREFIX: &str = "/t-bgp-agent";

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cni-bgp")
}

struct Cluster {
    lab: Lab,
    hosts: Vec<HostId>,
    agents: Vec<Option<ProcessGuard>>,
    prefix: String,
}

impl Cluster {
    fn new(hint: &str, n: usize) -> Cluster {
        Cluster::with_segment(hint, n, false)
    }

    /// `n` hosts on one segment, dual-stack when `v6`.
    fn with_segment(hint: &str, n: usize, v6: bool) -> Cluster {
        let mut lab = Lab::new(hint).expect("lab");
        lab.start_etcd().expect("etcd");
        let x = 100 + (std::process::id() % 100);
        let seg = if v6 {
            lab.segment_with_ipv6(&format!("192.168.{x}.0/24"), &format!("fd00:{x}::/64")).expect("segment")
        } else {
            lab.segment(&format!("192.168.{x}.0/24")).expect("segment")
        };
        let hosts = (0..n).map(|_| lab.host(seg).expect("host")).collect();
        let prefix = format!("{PREFIX}-{hint}");
        Cluster { lab, hosts, agents: (0..n).map(|_| None).collect(), prefix }
    }

    fn name(&self, i: usize) -> String {
        format!("node{i}")
    }

    fn state_dir(&self, i: usize) -> PathBuf {
        self.lab.dir().join(format!("state{i}"))
    }

    fn agent_args(&self, i: usize, extra: &[&str]) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "agent".into(),
            "--etcd-endpoints".into(),
            self.lab.etcd_url().unwrap(),
            "--etcd-prefix".into(),
            self.prefix.clone(),
            "--node-name".into(),
            self.name(i),
            "--node-ip".into(),
            self.lab.host_ip(self.hosts[i]).to_string(),
            "--state-dir".into(),
            self.state_dir(i).display().to_string(),
            "--registration-ttl".into(),
            "3".into(),
            "--log-level".into(),
            "info".into(),
        ];
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    fn start(&mut self, i: usize, extra: &[&str]) {
        let args = self.agent_args(i, extra);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let g = self.lab.spawn(self.hosts[i], bin(), &args, &[]).expect("spawn agent");
        self.agents[i] = Some(g);
    }

    fn log(&self, i: usize) -> String {
        self.agents[i].as_ref().map(|g| g.log()).unwrap_or_default()
    }

    fn ready(&self, i: usize) -> Result<status::Answer, status::QueryError> {
        status::query(&status::socket_path(&self.state_dir(i)), status::TIMEOUT)
    }

    fn wait_ready(&self, i: usize) {
        let ok = wait_until(Duration::from_secs(20), || self.ready(i).is_ok_and(|a| a.ready));
        assert!(ok, "agent {i} not ready: {:?}\n{}", self.ready(i), self.log(i));
    }

    fn etcdctl(&self, args: &[&str]) -> String {
        let out = Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(self.lab.etcd_local_url().unwrap())
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Writes a block record the way cluster_ipam does.
    fn put_block(&self, network: &str, cidr: &str, host: &str, allocs: &[(&str, &str)]) {
        let (ip, len) = cidr.split_once('/').unwrap();
        let v = BlockValue {
            host: host.into(),
            exclusive: false,
            allocations: allocs
                .iter()
                .map(|(a, h)| (a.parse().unwrap(), Allocation { handle: format!("ctr-{a}/eth0"), host: h.to_string() }))
                .collect::<BTreeMap<_, _>>(),
        };
        self.etcdctl(&["put", &format!("{}/{network}/blocks/{ip}-{len}", self.prefix), &v.to_json()]);
    }

    /// `ip route show proto 76` in host i (both families).
    fn kernel(&self, i: usize) -> String {
        let h = self.hosts[i];
        let v4 = self.lab.exec_ok(h, &["ip", "route", "show", "proto", "76"]).unwrap();
        let v6 = self.lab.exec_ok(h, &["ip", "-6", "route", "show", "proto", "76"]).unwrap();
        v4 + &v6
    }

    fn has_route(&self, i: usize, line_start: &str) -> bool {
        self.kernel(i).lines().any(|l| l.starts_with(line_start))
    }

    fn wait_route(&self, i: usize, line_start: &str, present: bool, timeout: Duration) {
        let ok = wait_until(timeout, || self.has_route(i, line_start) == present);
        assert!(
            ok,
            "host {i}: route {line_start:?} {} after {timeout:?}; kernel:\n{}\nagent log:\n{}",
            if present { "missing" } else { "still there" },
            self.kernel(i),
            self.log(i)
        );
    }

    /// The CNI plugin's STATUS in host i, with `stateDir` = agent i's.
    fn cni_status(&self, i: usize) -> (bool, Value) {
        use std::io::Write;
        let conf = serde_json::json!({
            "cniVersion": "1.1.0", "name": "bgpnet", "type": "cni-bgp",
            "stateDir": self.state_dir(i),
            "ipam": {"type": "cni-ipam", "ranges": [[{"subnet": "10.79.0.0/24"}]],
                     "dataDir": self.lab.dir().join(format!("ipam{i}"))},
        });
        let mut child = Command::new("ip")
            .args(["netns", "exec", self.lab.host_ns(self.hosts[i]), bin()])
            .env("CNI_COMMAND", "STATUS")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        let o = child.wait_with_output().unwrap();
        (o.status.success(), serde_json::from_slice(&o.stdout).unwrap_or(Value::Null))
    }

    fn cli(&self, i: usize, args: &[&str]) -> Output {
        Command::new(bin())
            .args(args)
            .arg("--state-dir")
            .arg(self.state_dir(i))
            .env_remove("CNI_COMMAND")
            .output()
            .unwrap()
    }

    fn status_json(&self, i: usize) -> Value {
        let o = self.cli(i, &["status", "--json"]);
        assert!(o.status.success(), "{o:?}");
        serde_json::from_slice(&o.stdout).unwrap()
    }

    fn peer_state(&self, i: usize, peer: usize) -> Option<String> {
        self.peer_field(i, &self.lab.host_ip(self.hosts[peer]).to_string(), "state")
    }

    /// A field of the peer with `addr` in host i's `status --json`.
    fn peer_field(&self, i: usize, addr: &str, field: &str) -> Option<String> {
        let s = self.status_json(i);
        s["peers"]
            .as_array()?
            .iter()
            .find(|p| p["address"] == addr)
            .map(|p| p[field].as_str().unwrap_or_default().to_string())
    }

    #[allow(dead_code)]
    fn peer_state_old(&self, i: usize, peer: usize) -> Option<String> {
        let addr = self.lab.host_ip(self.hosts[peer]).to_string();
        let s = self.status_json(i);
        s["peers"]
            .as_array()?
            .iter()
            .find(|p| p["address"] == addr.as_str())
            .map(|p| p["state"].as_str().unwrap().to_string())
    }

    fn wait_established(&self, i: usize, peer: usize) {
        let ok = wait_until(Duration::from_secs(30), || self.peer_state(i, peer).as_deref() == Some("Established"));
        assert!(ok, "host {i} -> host {peer} not Established: {}\n{}", self.status_json(i), self.log(i));
    }
}

#[test]
fn bad_flags_are_refused_at_start_naming_the_flag() {
    let run = |args: &[&str]| {
        let o = Command::new(bin()).arg("agent").args(args).env_remove("CNI_COMMAND").output().unwrap();
        assert_eq!(o.status.code(), Some(2), "{args:?}: {o:?}");
        assert!(o.stdout.is_empty());
        String::from_utf8(o.stderr).unwrap()
    };
    let base = ["--node-name", "n1", "--node-ip", "192.0.2.10", "--etcd-endpoints", "http://127.0.0.1:9"];
    let with = |extra: &[&str]| -> String { run(&[&base[..], extra].concat()) };
    assert!(with(&["--as", "0"]).contains("--as: AS 0 is reserved"));
    assert!(with(&["--as", "23456"]).contains("--as: AS 23456 is AS_TRANS"));
    assert!(with(&["--as", "4294967296"]).contains("--as"));
    let e = with(&["--peer", "192.0.2.300,65001"]);
    assert!(e.contains("--peer") && e.contains("is not an IP address"), "{e}");
    let e = with(&["--peer", "192.0.2.1,65001", "--peer", "192.0.2.1,65002"]);
    assert!(e.contains("--peer: duplicate peer 192.0.2.1"), "{e}");
    let e = with(&["--cluster-id", "1.1.1.1"]);
    assert!(e.contains("--cluster-id: only a route reflector has a cluster ID"), "{e}");
    let e = with(&["--hold-time", "1"]);
    assert!(e.contains("--hold-time"), "{e}");
    let e = run(&["--node-name", "a/b", "--node-ip", "192.0.2.10"]);
    assert!(e.contains("--node-name"), "{e}");
}

#[test]
fn without_default_route_or_node_ip_the_agent_says_which_flag() {
    let mut ns = testkit::netns::Netns::new().expect("netns");
    let o = Command::new("ip")
        .args(["netns", "exec", ns.name(), bin(), "agent", "--node-name", "n1"])
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap();
    let _ = ns.delete();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("--node-ip: no IPv4 default route") && e.contains("pass --node-ip"), "{e}");
}

#[test]
fn status_socket_is_not_ready_while_etcd_is_unreachable_and_stale_files_are_replaced() {
    let mut c = Cluster::new("notready", 2);
    // A socket file left by a killed agent: nobody listens on it.
    let dir = c.state_dir(0);
    std::fs::create_dir_all(&dir).unwrap();
    drop(std::os::unix::net::UnixListener::bind(status::socket_path(&dir)).unwrap());
    assert!(matches!(c.ready(0), Err(status::QueryError::Connect { .. })));
    // etcd on a port nobody serves; no --node-ip: the address of the
    // default route's interface.
    let gw = c.lab.host_ip(c.hosts[1]).to_string();
    c.lab.exec_ok(c.hosts[0], &["ip", "route", "add", "default", "via", &gw, "dev", "eth0"]).unwrap();
    let mut args = c.agent_args(0, &[]);
    let i = args.iter().position(|a| a == "--etcd-endpoints").unwrap();
    args[i + 1] = format!("http://{}:9", c.lab.mgmt_gateway());
    let i = args.iter().position(|a| a == "--node-ip").unwrap();
    args.drain(i..i + 2);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    c.agents[0] = Some(c.lab.spawn(c.hosts[0], bin(), &args, &[]).unwrap());
    let ok = wait_until(Duration::from_secs(10), || c.ready(0).is_ok());
    assert!(ok, "{:?}\n{}", c.ready(0), c.log(0));
    let a = c.ready(0).unwrap();
    assert!(!a.ready, "{a:?}");
    // The plugin's STATUS: code 50 with the agent's words.
    let (ok, v) = c.cni_status(0);
    assert!(!ok);
    assert_eq!(v["code"], 50, "{v}");
    assert!(v.to_string().contains("reading the BGP config from etcd"), "{v}");
    assert!(c.agents[0].as_ref().unwrap().is_running());
    // `cni-bgp status` says why, at once.
    let o = c.cli(0, &["status"]);
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("not ready: reading the BGP config from etcd"), "{o:?}");
    let ip0 = c.lab.host_ip(c.hosts[0]);
    assert!(c.log(0).contains(&format!("ip={ip0}")), "--node-ip default: {}", c.log(0));
    // SIGTERM: the sockets go with the agent.
    let st = c.agents[0].as_ref().unwrap().terminate(Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "{st:?}\n{}", c.log(0));
    assert!(matches!(c.ready(0), Err(status::QueryError::Missing(_))), "{:?}", c.ready(0));
}

#[test]
fn two_agents_mesh_advertise_blocks_and_borrowed_addresses() {
    let mut c = Cluster::new("mesh", 3);
    c.put_block("net1", "10.70.0.0/26", "node0", &[("10.70.0.2", "node0")]);
    c.put_block("net1", "10.70.0.64/26", "node1", &[]);
    c.put_block("net2", "fd70::/122", "node1", &[]);
    c.start(0, &[]);
    c.start(1, &[]);
    c.wait_ready(0);
    c.wait_ready(1);
    c.wait_established(0, 1);
    c.wait_established(1, 0);
    let (ip0, ip1) = (c.lab.host_ip(c.hosts[0]), c.lab.host_ip(c.hosts[1]));
    // Each installs the other's block via the other's node IP, and blackholes its own.
    c.wait_route(0, &format!("10.70.0.64/26 via {ip1}"), true, Duration::from_secs(10));
    c.wait_route(1, &format!("10.70.0.0/26 via {ip0}"), true, Duration::from_secs(10));
    c.wait_route(0, "blackhole 10.70.0.0/26", true, Duration::from_secs(5));
    c.wait_route(1, "blackhole 10.70.0.64/26", true, Duration::from_secs(5));

    // The plugin's STATUS asks the live agent: ready.
    let (ok, v) = c.cni_status(0);
    assert!(ok, "STATUS with a ready agent: {v}");

    // `cni-bgp status --json` and the tables.
    let s = c.status_json(0);
    assert_eq!(s["node"]["name"], "node0");
    assert_eq!(s["node"]["ready"], true);
    let p = &s["peers"].as_array().unwrap()[0];
    assert_eq!(
        (p["address"].as_str(), p["asn"].as_u64(), p["kind"].as_str()),
        (Some(&*ip1.to_string()), Some(64512), Some("mesh"))
    );
    let t = String::from_utf8(c.cli(0, &["status"]).stdout).unwrap();
    assert!(t.contains("PEER") && t.contains(&ip1.to_string()) && t.contains("Established"), "{t}");
    let r = String::from_utf8(c.cli(0, &["routes"]).stdout).unwrap();
    assert!(r.contains("10.70.0.64/26") && r.contains("blackhole") && r.contains("protocol 76"), "{r}");
    eprintln!("cni-bgp status:\n{t}\ncni-bgp routes:\n{r}");
    let rj: Value = serde_json::from_slice(&c.cli(0, &["routes", "--json"]).stdout).unwrap();
    assert!(rj["installed"].as_array().unwrap().iter().any(|i| i["prefix"] == "10.70.0.64/26"), "{rj}");
    assert!(rj["learned"].as_array().unwrap().iter().any(|i| i["prefix"] == "10.70.0.64/26"), "{rj}");

    // node1 borrows an address in node0's block: a /32 via node1 on node0.
    c.put_block("net1", "10.70.0.0/26", "node0", &[("10.70.0.2", "node0"), ("10.70.0.5", "node1")]);
    c.wait_route(0, &format!("10.70.0.5 via {ip1}"), true, Duration::from_secs(10));
    // Released: withdrawn.
    c.put_block("net1", "10.70.0.0/26", "node0", &[("10.70.0.2", "node0")]);
    c.wait_route(0, "10.70.0.5 ", false, Duration::from_secs(10));

    // A third node joins: peered without restarting anyone.
    c.put_block("net1", "10.70.0.128/26", "node2", &[]);
    c.start(2, &[]);
    c.wait_ready(2);
    let ip2 = c.lab.host_ip(c.hosts[2]);
    c.wait_route(0, &format!("10.70.0.128/26 via {ip2}"), true, Duration::from_secs(30));
    c.wait_route(2, &format!("10.70.0.64/26 via {ip1}"), true, Duration::from_secs(30));

    // A live config change that breaks a rule is rejected; the sessions stay.
    c.etcdctl(&["put", &format!("{}/bgp/config", c.prefix), r#"{"asNumber":0}"#]);
    let ok = wait_until(Duration::from_secs(10), || c.log(0).contains("asNumber: AS 0 is reserved"));
    assert!(ok, "{}", c.log(0));
    assert_eq!(c.peer_state(0, 1).as_deref(), Some("Established"));
    assert_eq!(c.peer_state(0, 2).as_deref(), Some("Established"));
    assert!(c.has_route(0, &format!("10.70.0.64/26 via {ip1}")));
    // An agent does not start on it, naming the key.
    let mut args = c.agent_args(2, &[]);
    let i = args.iter().position(|a| a == "--state-dir").unwrap();
    args[i + 1] = c.lab.dir().join("state-refused").display().to_string();
    let o =
        c.lab.exec(c.hosts[2], &[&[bin()], &args.iter().map(String::as_str).collect::<Vec<_>>()[..]].concat()).unwrap();
    assert_eq!(o.status.code(), Some(2), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("asNumber: AS 0 is reserved"), "{o:?}");
    c.etcdctl(&["del", &format!("{}/bgp/config", c.prefix)]);

    // Another agent's listener holds node2's address and port: a second agent
    // (own state dir) exits 1 naming the address, and leaves no registration.
    let mut args = c.agent_args(2, &[]);
    let i = args.iter().position(|a| a == "--state-dir").unwrap();
    args[i + 1] = c.lab.dir().join("state-busy").display().to_string();
    let i = args.iter().position(|a| a == "--node-name").unwrap();
    args[i + 1] = "node2-twin".into();
    let o =
        c.lab.exec(c.hosts[2], &[&[bin()], &args.iter().map(String::as_str).collect::<Vec<_>>()[..]].concat()).unwrap();
    assert_eq!(o.status.code(), Some(1), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains(&format!("{ip2}:179")), "{o:?}");
    assert_eq!(c.etcdctl(&["get", &format!("{}/bgp/nodes/node2-twin", c.prefix)]), "");

    // node2 leaves for good (SIGTERM with --deregister-on-exit): unpeered
    // by the others at once, its block withdrawn; its sockets are gone.
    let g = c.agents[2].take().unwrap();
    drop(g);
    c.start(2, &["--deregister-on-exit"]);
    c.wait_ready(2);
    c.wait_established(0, 2);
    let st = c.agents[2].as_ref().unwrap().terminate(Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "{st:?}\n{}", c.log(2));
    assert!(matches!(c.ready(2), Err(status::QueryError::Missing(_))));
    let (ok, v) = c.cni_status(2);
    assert!(!ok && v["code"] == 50, "STATUS after the agent stopped: {v}");
    let ok = wait_until(Duration::from_secs(5), || c.peer_state(0, 2).is_none());
    assert!(ok, "node2 still a peer of node0: {}", c.status_json(0));
    c.wait_route(0, "10.70.0.128/26", false, Duration::from_secs(5));
}

#[test]
fn a_killed_agent_keeps_its_routes_and_sweeps_stale_ones_after_restart() {
    let mut c = Cluster::new("restart", 2);
    c.put_block("net1", "10.71.0.0/26", "node0", &[]);
    c.put_block("net1", "10.71.0.64/26", "node1", &[]);
    c.start(0, &[]);
    c.start(1, &[]);
    c.wait_ready(0);
    c.wait_ready(1);
    let ip1 = c.lab.host_ip(c.hosts[1]);
    let learned = format!("10.71.0.64/26 via {ip1}");
    c.wait_route(0, &learned, true, Duration::from_secs(30));

    // SIGKILL: nothing is cleaned up, the kernel keeps forwarding.
    c.agents[0].take().unwrap().kill();
    assert!(c.has_route(0, &learned), "{}", c.kernel(0));
    assert!(c.has_route(0, "blackhole 10.71.0.0/26"), "{}", c.kernel(0));
    // A route of ours that nothing will re-learn (the previous run's).
    c.lab.exec_ok(c.hosts[0], &["ip", "route", "add", "10.99.0.0/24", "via", &ip1.to_string(), "proto", "76"]).unwrap();

    // Restart: the learned route never leaves the kernel; the stale one
    // goes once the session re-converged.
    c.start(0, &[]);
    let end = Instant::now() + Duration::from_secs(40);
    let mut swept = false;
    while Instant::now() < end {
        assert!(c.has_route(0, &learned), "learned route left the kernel during the restart\n{}", c.log(0));
        if !c.has_route(0, "10.99.0.0/24") {
            swept = true;
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(swept, "stale route not swept:\n{}\n{}", c.kernel(0), c.log(0));
    c.wait_ready(0);
    assert!(c.has_route(0, &learned));
    assert!(c.log(0).contains("restarting gracefully"), "{}", c.log(0));
    // node1 kept node0's block through the restart (graceful-restart helper).
    let block0 = format!("10.71.0.0/26 via {}", c.lab.host_ip(c.hosts[0]));
    assert!(c.has_route(1, &block0), "{}", c.kernel(1));

    // SIGTERM and start again (what systemd or a DaemonSet update does):
    // exit 0, and neither side's route leaves its kernel at any point.
    c.wait_established(0, 1);
    let st = c.agents[0].take().unwrap().terminate(Duration::from_secs(10));
    assert!(st.is_some_and(|s| s.success()), "{st:?}");
    assert!(c.has_route(0, &learned) && c.has_route(1, &block0));
    c.start(0, &[]);
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(c.has_route(0, &learned), "node0 lost its learned route\n{}", c.log(0));
        assert!(c.has_route(1, &block0), "node1 lost node0's block\n{}", c.log(1));
        if c.ready(0).is_ok_and(|a| a.ready) && c.peer_state(0, 1).as_deref() == Some("Established") {
            break;
        }
        assert!(Instant::now() < end, "not back: {:?}\n{}", c.ready(0), c.log(0));
        std::thread::sleep(Duration::from_millis(20));
    }
    // node1 never unpeered node0: its registration did not lapse.
    assert!(!c.log(1).contains("BGP peer removed"), "{}", c.log(1));
}

/// Host i's IPv6 block, as `ip route` prints it.
fn block6(i: usize) -> String {
    format!("fd72::{:x}/122", 64 * i).parse::<ipnetwork::IpNetwork>().unwrap().to_string()
}

#[test]
fn reflector_and_clients_over_ipv4_and_ipv6_without_mesh() {
    let mut c = Cluster::with_segment("rr", 4, true);
    c.etcdctl(&["put", &format!("{}/bgp/config", c.prefix), r#"{"nodeToNodeMesh":false}"#]);
    for i in 0..4 {
        c.put_block("net1", &format!("10.72.0.{}/26", 64 * i), &c.name(i), &[]);
        c.put_block("net6", &block6(i), &c.name(i), &[]);
    }
    let v6: Vec<String> = (0..4).map(|i| c.lab.host_ip6(c.hosts[i]).unwrap().to_string()).collect();
    let v4: Vec<String> = (0..4).map(|i| c.lab.host_ip(c.hosts[i]).to_string()).collect();
    c.start(0, &["--route-reflector", "--node-ipv6", &v6[0]]);
    for (i, a) in v6.iter().enumerate().skip(1) {
        c.start(i, &["--node-ipv6", a]);
    }
    for i in 0..4 {
        c.wait_ready(i);
    }
    // Every client learns every other client's blocks, through the reflector,
    // with the originating client as next hop (IPv6 via its IPv6 address).
    for i in 1..4 {
        for j in (0..4).filter(|j| *j != i) {
            c.wait_route(i, &format!("10.72.0.{}/26 via {}", 64 * j, v4[j]), true, Duration::from_secs(30));
            c.wait_route(i, &format!("{} via {}", block6(j), v6[j]), true, Duration::from_secs(30));
        }
    }
    // No mesh: a client's only sessions are with the reflector, one per family.
    let s = c.status_json(1);
    let peers: Vec<(String, String)> = s["peers"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["address"].as_str().unwrap().to_string(), p["kind"].as_str().unwrap().to_string()))
        .collect();
    assert_eq!(peers, [(v4[0].clone(), "route reflector".into()), (v6[0].clone(), "route reflector".into())], "{s}");
    // The reflector sees its clients as clients.
    assert_eq!(c.peer_field(0, &v4[2], "kind").as_deref(), Some("route reflector client"));
    assert_eq!(c.status_json(0)["node"]["routeReflector"], true);
    assert_eq!(c.status_json(0)["node"]["clusterId"], v4[0].as_str());
}

#[test]
fn a_live_change_of_the_cluster_as_restarts_the_sessions_in_the_new_as() {
    let mut c = Cluster::new("asnum", 2);
    c.put_block("net1", "10.73.0.0/26", "node0", &[]);
    c.put_block("net1", "10.73.0.64/26", "node1", &[]);
    c.start(0, &[]);
    c.start(1, &[]);
    c.wait_ready(0);
    c.wait_ready(1);
    let ip1 = c.lab.host_ip(c.hosts[1]);
    let learned = format!("10.73.0.64/26 via {ip1}");
    c.wait_route(0, &learned, true, Duration::from_secs(30));
    c.wait_established(0, 1);

    let o = Command::new(bin())
        .args(["config", "set", "--as", "65010", "--etcd-endpoints", &c.lab.etcd_local_url().unwrap()])
        .args(["--etcd-prefix", &c.prefix])
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    // Both speakers restart in AS 65010 and peer again; the route stays in
    // the kernel all along (polled), and the status shows the new AS.
    let end = Instant::now() + Duration::from_secs(30);
    loop {
        assert!(c.has_route(0, &learned), "route left the kernel during the AS change\n{}", c.log(0));
        let s = c.status_json(0);
        let up = s["node"]["as"] == 65010
            && s["peers"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["asn"] == 65010 && p["state"] == "Established"));
        if up {
            break;
        }
        assert!(Instant::now() < end, "not re-peered in AS 65010: {s}\n{}", c.log(0));
        std::thread::sleep(Duration::from_millis(20));
    }
    // The route now follows the new sessions: withdrawn when node1's block goes.
    c.etcdctl(&["del", &format!("{}/net1/blocks/10.73.0.64-26", c.prefix)]);
    c.wait_route(0, "10.73.0.64/26", false, Duration::from_secs(10));
    assert!(c.log(0).contains("restarting the BGP speaker"), "{}", c.log(0));
}

#[test]
fn status_says_why_an_external_peer_is_down() {
    let mut c = Cluster::new("words", 2);
    let (ip0, ip1) = (c.lab.host_ip(c.hosts[0]).to_string(), c.lab.host_ip(c.hosts[1]).to_string());
    c.start(0, &["--peer", &format!("{ip1},65099")]);
    c.wait_ready(0);
    // Nobody listens on host1 yet.
    let want = format!("connection refused on {ip1}:179");
    let ok =
        wait_until(Duration::from_secs(20), || c.peer_field(0, &ip1, "lastError").is_some_and(|e| e.contains(&want)));
    assert!(ok, "{}", c.status_json(0));
    assert_eq!(c.peer_field(0, &ip1, "kind").as_deref(), Some("flag peer"));
    let t = String::from_utf8(c.cli(0, &["status"]).stdout).unwrap();
    assert!(t.contains(&want), "{t}");
    // Another cluster's agent on host1 (its own prefix, AS 65001) peering
    // with node0: node0 expects AS 65099 and says so.
    let prefix1 = format!("{}-other", c.prefix);
    let mut args = c.agent_args(1, &["--as", "65001", "--peer", &format!("{ip0},64512")]);
    let i = args.iter().position(|a| a == "--etcd-prefix").unwrap();
    args[i + 1] = prefix1;
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    c.agents[1] = Some(c.lab.spawn(c.hosts[1], bin(), &args, &[]).unwrap());
    c.wait_ready(1);
    let want = "peer AS 65001, configured 65099";
    let ok =
        wait_until(Duration::from_secs(30), || c.peer_field(0, &ip1, "lastError").is_some_and(|e| e.contains(want)));
    assert!(ok, "{}", c.status_json(0));
    assert_ne!(c.peer_state(0, 1).as_deref(), Some("Established"));
}

/// `sysctl -n KEY` in host i.
fn sysctl(c: &Cluster, i: usize, key: &str) -> String {
    c.lab.exec_ok(c.hosts[i], &["sysctl", "-n", key]).unwrap().trim().to_string()
}

#[test]
fn the_agent_enables_forwarding_without_any_container() {
    let mut c = Cluster::with_segment("fwd", 2, true);
    for i in 0..2 {
        let h = c.hosts[i];
        c.lab.exec_ok(h, &["sysctl", "-qw", "net.ipv4.ip_forward=0", "net.ipv6.conf.all.forwarding=0"]).unwrap();
        assert_eq!(
            (sysctl(&c, i, "net.ipv4.ip_forward"), sysctl(&c, i, "net.ipv6.conf.all.forwarding")),
            ("0".into(), "0".into())
        );
    }
    // node0: IPv4 only; node1: --node-ipv6. No container, no block yet.
    let v6_1 = c.lab.host_ip6(c.hosts[1]).unwrap().to_string();
    c.start(0, &["--graceful-restart-time", "0"]);
    c.start(1, &["--node-ipv6", &v6_1, "--graceful-restart-time", "0"]);
    c.wait_ready(0);
    c.wait_ready(1);
    assert_eq!(sysctl(&c, 0, "net.ipv4.ip_forward"), "1", "IPv4 forwarding at start\n{}", c.log(0));
    assert_eq!(sysctl(&c, 0, "net.ipv6.conf.all.forwarding"), "0", "no IPv6 yet on node0");
    assert_eq!(sysctl(&c, 1, "net.ipv4.ip_forward"), "1");
    assert_eq!(sysctl(&c, 1, "net.ipv6.conf.all.forwarding"), "1", "IPv6 forwarding with --node-ipv6\n{}", c.log(1));
    // An IPv6 block of node0 (carried over IPv4 sessions): IPv6 forwarding on.
    c.put_block("net6", &block6(0), "node0", &[]);
    let ok = wait_until(Duration::from_secs(10), || sysctl(&c, 0, "net.ipv6.conf.all.forwarding") == "1");
    assert!(ok, "IPv6 forwarding once an IPv6 block is advertised\n{}", c.log(0));
}

/// Puts `<prefix>/bgp/config`.
fn put_config(c: &Cluster, json: &str) {
    c.etcdctl(&["put", &format!("{}/bgp/config", c.prefix), json]);
}

#[test]
fn a_config_conflicting_with_this_node_is_refused_at_start_and_rejected_live() {
    let mut c = Cluster::new("reject", 1);
    // At start: the stored config names the --peer address with another AS.
    put_config(&c, r#"{"peers":[{"address":"192.0.2.1","as":65001},{"address":"192.0.2.9","as":65002}]}"#);
    c.start(0, &["--peer", "192.0.2.9,65001"]);
    let g = c.agents[0].take().unwrap();
    let st = g.wait_timeout(Duration::from_secs(20));
    assert!(st.is_some_and(|s| !s.success()), "started with a conflicting peer: {st:?}\n{}", g.log());
    let log = g.log();
    assert!(log.contains("peers[1]") && log.contains("`--peer 192.0.2.9,65001`"), "{log}");
    drop(g);

    // The same AS from both sources: one peer, the config's.
    put_config(&c, r#"{"peers":[{"address":"192.0.2.9","as":65001}]}"#);
    c.start(0, &["--peer", "192.0.2.9,65001", "--route-reflector", "--cluster-id", "1.1.1.1"]);
    c.wait_ready(0);
    let peers = c.status_json(0)["peers"].clone();
    let p: Vec<&Value> = peers.as_array().unwrap().iter().filter(|p| p["address"] == "192.0.2.9").collect();
    assert_eq!(p.len(), 1, "{peers}");
    assert_eq!(p[0]["kind"], "global peer", "{peers}");

    // Live: another cluster ID for this reflector, then a peer conflicting
    // with the flag; each with a new AS that must not be applied.
    let as_now = |c: &Cluster| c.status_json(0)["node"]["as"].clone();
    put_config(
        &c,
        r#"{"asNumber":65010,"peers":[{"address":"192.0.2.9","as":65001}],"routeReflectors":[{"node":"node0","clusterId":"2.2.2.2"}]}"#,
    );
    let ok = wait_until(Duration::from_secs(10), || {
        c.log(0).contains("rejected BGP config change: routeReflectors[0].clusterId")
    });
    assert!(ok, "{}", c.log(0));
    assert_eq!(as_now(&c), 64512);
    assert_eq!(c.status_json(0)["node"]["clusterId"], "1.1.1.1");
    put_config(&c, r#"{"asNumber":65011,"peers":[{"address":"192.0.2.9","as":65002}]}"#);
    let ok = wait_until(Duration::from_secs(10), || {
        c.log(0)
            .lines()
            .any(|l| l.contains("rejected BGP config change: peers[0]") && l.contains("`--peer 192.0.2.9,65001`"))
    });
    assert!(ok, "{}", c.log(0));
    assert_eq!(as_now(&c), 64512, "the running config stays");
    let peers = c.status_json(0)["peers"].clone();
    assert!(peers.as_array().unwrap().iter().any(|p| p["address"] == "192.0.2.9" && p["asn"] == 65001), "{peers}");
    // A valid change is applied: the watch was alive all along.
    put_config(&c, r#"{"asNumber":65012}"#);
    let ok = wait_until(Duration::from_secs(20), || as_now(&c) == 65012);
    assert!(ok, "{}\n{}", c.status_json(0), c.log(0));
}
