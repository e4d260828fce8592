//! The `cni-bgp agent` BINARY (not the speaker library) against BIRD 2, GoBGP 3 and FRR 8,
//! with a real etcd, each party in a network namespace of its own on one dual-stack L2 segment
//! of a `testkit::lab::Lab`.
//!
//! One agent on host 0 advertises its IPv4 and IPv6 IPAM blocks (written into etcd the way
//! cluster_ipam stores them) and peers with two daemons of one kind at once:
//!
//! - eBGP: a daemon in AS 65101, named by the agent's `--peer ADDR,AS` flags (kind `flag peer`);
//! - iBGP: a daemon in the cluster's AS 64512, named by the cluster config's global peers
//!   (`cni-bgp peer add ADDR,64512`, kind `global peer`).
//!
//! With each daemon there is one session over IPv4 (IPv4 unicast) and one over IPv6 (IPv6
//! unicast; the agent runs with `--node-ipv6`). Checked as a user sees it: the daemons learn our
//! blocks with our node addresses as next hops and (BIRD, FRR) install them in their kernels;
//! GoBGP runs with zebra off in the fixture, so its side is checked in its RIB. We install the
//! daemons' prefixes under protocol 76 (`ip route show proto 76`, `ip -6 route show proto 76`);
//! `cni-bgp status --json` shows the four peers Established with their AS, kind and prefix
//! counts. Withdrawals both ways. The eBGP daemon is killed: its routes leave our kernel at
//! once (TCP close, well within its hold time) while the other daemon's sessions stay up, and
//! come back when it restarts. The iBGP daemon (hold time 9 s) is frozen with SIGSTOP, its
//! connections open: the agent's hold timer drops its routes, and they come back once thawed.
//!
//! A scripted peer (a raw TCP socket speaking OPEN and KEEPALIVE, then hand-made bytes, as in
//! malformed_updates.rs) sends the agent an UPDATE with an NLRI of prefix length 33: the agent
//! answers NOTIFICATION 3/10 and closes, its process stays alive, its status socket ready and
//! its session with a GoBGP witness Established (no flap).
//!
//! Needs root, etcd, bird2, gobgpd and frr (a missing one fails the test).

mod scripted;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use cluster_ipam::BlockValue;
use cni_bgp::status;
use ipnetwork::IpNetwork;
use scripted::{attr, msg, Got, Scripted, SCRIPT_AS};
use serde_json::Value;
use testkit::bgp::{require_daemons, wait_kernel_route, wait_no_kernel_route, BgpDaemon, Kind, Neighbor, PeerConfig};
use testkit::lab::{HostId, Lab, ProcessGuard};
use testkit::util::wait_until;

const T: Duration = Duration::from_secs(60);
/// The cluster's AS when the config does not say (`asNumber`'s default).
const CLUSTER_AS: u32 = 64512;
const EXT_AS: u32 = 65101;
const PREFIX: &str = "/t-agent-interop";
/// The hold time the iBGP daemon proposes (under the agent's 90 s, so the sessions use it).
const FROZEN_HOLD: u16 = 9;

const OUR4: &str = "10.81.0.0/26";
const OUR6: &str = "fd00:81::/122";
/// What the eBGP daemon and the iBGP daemon originate: (IPv4, IPv6).
const EXT: [&str; 2] = ["10.82.1.0/24", "fd00:82:1::/48"];
const INT: [&str; 2] = ["10.83.1.0/24", "fd00:83:1::/48"];

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_cni-bgp")
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

fn is_link_local(a: IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// A daemon with its namespace and addresses.
struct Daemon {
    d: Box<dyn BgpDaemon>,
    cfg: PeerConfig,
    ns: String,
    v4: Ipv4Addr,
    v6: Ipv6Addr,
}

/// The agent's host, etcd and the lab; what runs in the lab goes first (field drop order).
struct Site {
    agent: Option<ProcessGuard>,
    h0: HostId,
    our4: Ipv4Addr,
    our6: Ipv6Addr,
    prefix: String,
    lab: Lab,
}

impl Site {
    fn new(hint: &str, seg4: &str, seg6: &str) -> (Site, Vec<HostId>) {
        require_daemons().unwrap();
        let mut lab = Lab::new(hint).expect("lab");
        lab.start_etcd().expect("etcd");
        let seg = lab.segment_with_ipv6(seg4, seg6).expect("segment");
        let h0 = lab.host(seg).expect("host");
        let others = (0..2).map(|_| lab.host(seg).expect("host")).collect();
        let (our4, our6) = (lab.host_ip(h0), lab.host_ip6(h0).unwrap());
        let site = Site { agent: None, h0, our4, our6, prefix: format!("{PREFIX}-{hint}"), lab };
        (site, others)
    }

    fn state_dir(&self) -> PathBuf {
        self.lab.dir().join("state0")
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

    fn block_key(&self, network: &str, cidr: &str) -> String {
        let (ip, len) = cidr.split_once('/').unwrap();
        format!("{}/{network}/blocks/{ip}-{len}", self.prefix)
    }

    /// Writes an (empty) block of node0 the way cluster_ipam does.
    fn put_block(&self, network: &str, cidr: &str) {
        let v = BlockValue { host: "node0".into(), exclusive: false, allocations: BTreeMap::new() };
        self.etcdctl(&["put", &self.block_key(network, cidr), &v.to_json()]);
    }

    /// The admin CLI against the lab's etcd and our prefix; must succeed.
    fn admin(&self, args: &[&str]) -> String {
        let o = Command::new(bin())
            .args(args)
            .args(["--etcd-endpoints", &self.lab.etcd_local_url().unwrap(), "--etcd-prefix", &self.prefix])
            .env_remove("CNI_COMMAND")
            .output()
            .unwrap();
        assert!(o.status.success(), "cni-bgp {args:?}: {}", String::from_utf8_lossy(&o.stderr));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    /// Starts `cni-bgp agent` in host 0 (node0, dual stack) with `extra` flags; waits until its
    /// status socket says ready.
    fn start_agent(&mut self, extra: &[String]) {
        let mut args: Vec<String> = [
            "agent",
            "--etcd-endpoints",
            &self.lab.etcd_url().unwrap(),
            "--etcd-prefix",
            &self.prefix,
            "--node-name",
            "node0",
            "--node-ip",
            &self.our4.to_string(),
            "--node-ipv6",
            &self.our6.to_string(),
            "--state-dir",
            &self.state_dir().display().to_string(),
            "--log-level",
            "info",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.extend(extra.iter().cloned());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.agent = Some(self.lab.spawn(self.h0, bin(), &args, &[]).expect("spawn agent"));
        let ok = wait_until(Duration::from_secs(30), || self.ready().is_ok_and(|a| a.ready));
        assert!(ok, "agent not ready: {:?}\n{}", self.ready(), self.log());
    }

    fn log(&self) -> String {
        self.agent.as_ref().map(|g| g.log()).unwrap_or_default()
    }

    fn ready(&self) -> Result<status::Answer, status::QueryError> {
        status::query(&status::socket_path(&self.state_dir()), status::TIMEOUT)
    }

    fn status_json(&self) -> Value {
        let o = Command::new(bin())
            .args(["status", "--json", "--state-dir"])
            .arg(self.state_dir())
            .env_remove("CNI_COMMAND")
            .output()
            .unwrap();
        assert!(o.status.success(), "cni-bgp status --json: {o:?}\n{}", self.log());
        serde_json::from_slice(&o.stdout).unwrap()
    }

    /// The peer with `addr` in `cni-bgp status --json`.
    fn peer(&self, addr: IpAddr) -> Option<Value> {
        let s = self.status_json();
        s["peers"].as_array()?.iter().find(|p| p["address"] == addr.to_string().as_str()).cloned()
    }

    fn established(&self, addr: IpAddr) -> bool {
        self.peer(addr).is_some_and(|p| p["state"] == "Established")
    }

    fn wait_established(&self, addr: IpAddr) {
        let ok = wait_until(T, || self.established(addr));
        assert!(ok, "agent -> {addr} not Established: {}\n{}", self.status_json(), self.log());
    }

    /// Our routes under protocol 76 (`ip [-6] route show proto 76`), both families.
    fn kernel(&self) -> String {
        let v4 = self.lab.exec_ok(self.h0, &["ip", "route", "show", "proto", "76"]).unwrap();
        let v6 = self.lab.exec_ok(self.h0, &["ip", "-6", "route", "show", "proto", "76"]).unwrap();
        v4 + &v6
    }

    /// The gateway of our protocol-76 route for exactly `prefix`: None if there is no such
    /// route, Some(None) for one without a gateway.
    fn kernel_via(&self, prefix: &str) -> Option<Option<IpAddr>> {
        let p = net(prefix).to_string();
        self.kernel().lines().find(|l| l.split_whitespace().next() == Some(p.as_str())).map(|l| {
            let w: Vec<&str> = l.split_whitespace().collect();
            w.iter().position(|x| *x == "via").and_then(|i| w.get(i + 1)).and_then(|a| a.parse().ok())
        })
    }

    /// Waits until our kernel has `prefix` under protocol 76 via `via` (for IPv6 also its
    /// link-local address: a daemon may send both).
    fn wait_kernel(&self, prefix: &str, via: IpAddr) {
        let ok = wait_until(T, || {
            self.kernel_via(prefix).flatten().is_some_and(|g| g == via || (via.is_ipv6() && is_link_local(g)))
        });
        assert!(ok, "our kernel has no {prefix} via {via} under proto 76:\n{}\n{}", self.kernel(), self.log());
    }

    fn wait_no_kernel(&self, prefix: &str, timeout: Duration) {
        let ok = wait_until(timeout, || self.kernel_via(prefix).is_none());
        assert!(ok, "{prefix} still in our kernel after {timeout:?}:\n{}\n{}", self.kernel(), self.log());
    }
}

/// Starts `kind` in host `h` in AS `asn`, neighbors our two addresses in the cluster's AS,
/// originating `routes`, proposing hold time `hold` (None: its default).
fn start_daemon(site: &Site, h: HostId, kind: Kind, asn: u32, routes: [&str; 2], hold: Option<u16>) -> Daemon {
    let (v4, v6) = (site.lab.host_ip(h), site.lab.host_ip6(h).unwrap());
    let mut cfg = PeerConfig::new(v4, asn)
        .neighbor(Neighbor::new(IpAddr::V4(site.our4), CLUSTER_AS))
        .neighbor(Neighbor::new(IpAddr::V6(site.our6), CLUSTER_AS))
        .route(net(routes[0]))
        .route(net(routes[1]));
    cfg.hold_time = hold;
    let ns = site.lab.host_ns(h).to_string();
    let d = kind.start(&ns, &cfg).unwrap_or_else(|e| panic!("{kind:?} in AS {asn}: {e}"));
    Daemon { d, cfg, ns, v4, v6 }
}

impl Daemon {
    fn addrs(&self) -> [IpAddr; 2] {
        [IpAddr::V4(self.v4), IpAddr::V6(self.v6)]
    }

    /// Our blocks in its RIB, next hop our node address of the family, and (BIRD, FRR) in its
    /// kernel under its protocol.
    fn check_has_ours(&self, site: &Site, kind: Kind) {
        let (o4, o6) = (net(OUR4), net(OUR6));
        let (n4, n6) = (IpAddr::V4(site.our4), IpAddr::V6(site.our6));
        self.d.wait_route(o4, Some(n4), T).unwrap_or_else(|e| panic!("{e}\n{}", self.d.log_tail()));
        self.d.wait_route(o6, Some(n6), T).unwrap_or_else(|e| panic!("{e}\n{}", self.d.log_tail()));
        if let Some(proto) = kind.kernel_protocol() {
            let k4 = wait_kernel_route(&self.ns, o4, Some(n4), T).unwrap();
            assert_eq!(k4.protocol, proto, "{k4:?}");
            let k6 = wait_kernel_route(&self.ns, o6, None, T).unwrap();
            assert_eq!(k6.protocol, proto, "{k6:?}");
            let g6 = k6.gateway.expect("IPv6 gateway");
            assert!(g6 == n6 || is_link_local(g6), "{k6:?}");
        }
    }

    fn check_lost(&self, kind: Kind, prefix: &str) {
        self.d.wait_no_route(net(prefix), T).unwrap();
        if kind.kernel_protocol().is_some() {
            wait_no_kernel_route(&self.ns, net(prefix), T).unwrap();
        }
    }
}

/// Waits until the agent's status shows the peer `addr` Established in AS `asn`, of `kind`,
/// with one prefix received and one sent (only our own block goes to an external peer).
fn check_peer_status(site: &Site, addr: IpAddr, asn: u32, kind: &str) {
    let want = |p: &Value| {
        p["state"] == "Established"
            && p["asn"] == asn
            && p["kind"] == kind
            && p["prefixesReceived"] == 1
            && p["prefixesSent"] == 1
    };
    let ok = wait_until(T, || site.peer(addr).is_some_and(|p| want(&p)));
    assert!(ok, "peer {addr}: want Established, AS {asn}, {kind}, 1 received, 1 sent: {}", site.status_json());
}

/// The whole exchange against one daemon kind: an eBGP and an iBGP instance, four sessions.
fn exchange(kind: Kind, hint: &str) {
    let (mut site, hosts) = Site::new(hint, "10.80.0.0/24", "fd00:80::/64");
    site.put_block("net1", OUR4);
    site.put_block("net6", OUR6);
    let mut ext = start_daemon(&site, hosts[0], kind, EXT_AS, EXT, None);
    let mut int = start_daemon(&site, hosts[1], kind, CLUSTER_AS, INT, Some(FROZEN_HOLD));
    // iBGP: the cluster config's global peers; eBGP: this agent's flags.
    site.admin(&["peer", "add", &format!("{},{CLUSTER_AS}", int.v4)]);
    site.admin(&["peer", "add", &format!("{},{CLUSTER_AS}", int.v6)]);
    let flags: Vec<String> = ext.addrs().iter().flat_map(|a| ["--peer".to_string(), format!("{a},{EXT_AS}")]).collect();
    site.start_agent(&flags);

    // Four sessions up on both sides.
    for a in ext.addrs().into_iter().chain(int.addrs()) {
        site.wait_established(a);
    }
    for d in [&ext, &int] {
        for a in [IpAddr::V4(site.our4), IpAddr::V6(site.our6)] {
            d.d.wait_established(a, T).unwrap_or_else(|e| panic!("{e}\n{}", d.d.log_tail()));
        }
    }

    // Ours reach them: next hop our node address, in their kernels.
    ext.check_has_ours(&site, kind);
    int.check_has_ours(&site, kind);
    // Theirs reach our kernel under protocol 76, via their addresses.
    for (d, p) in [(&ext, EXT), (&int, INT)] {
        site.wait_kernel(p[0], IpAddr::V4(d.v4));
        site.wait_kernel(p[1], IpAddr::V6(d.v6));
    }
    // `cni-bgp status --json`: AS, kind, one prefix each way per session.
    for a in ext.addrs() {
        check_peer_status(&site, a, EXT_AS, "flag peer");
    }
    for a in int.addrs() {
        check_peer_status(&site, a, CLUSTER_AS, "global peer");
    }
    // Calico's export: what one external peer sent is not passed on to the other.
    let ext_rib: Vec<IpNetwork> = ext.d.routes().unwrap().into_iter().map(|r| r.0).collect();
    let int_rib: Vec<IpNetwork> = int.d.routes().unwrap().into_iter().map(|r| r.0).collect();
    assert!(!ext_rib.contains(&net(INT[0])) && !ext_rib.contains(&net(INT[1])), "{ext_rib:?}");
    assert!(!int_rib.contains(&net(EXT[0])) && !int_rib.contains(&net(EXT[1])), "{int_rib:?}");

    // They withdraw: our kernel routes go; the other daemon's stay.
    for d in [&mut ext, &mut int] {
        let p = if d.cfg.asn == EXT_AS { EXT } else { INT };
        d.d.withdraw(net(p[0])).unwrap();
        d.d.withdraw(net(p[1])).unwrap();
        site.wait_no_kernel(p[0], T);
        site.wait_no_kernel(p[1], T);
        d.d.announce(net(p[0])).unwrap();
        d.d.announce(net(p[1])).unwrap();
        site.wait_kernel(p[0], IpAddr::V4(d.v4));
        site.wait_kernel(p[1], IpAddr::V6(d.v6));
    }

    // We withdraw (the IPv4 block leaves etcd): it leaves both daemons' RIBs and kernels; the
    // IPv6 block stays. Then it comes back.
    site.etcdctl(&["del", &site.block_key("net1", OUR4)]);
    for d in [&ext, &int] {
        d.check_lost(kind, OUR4);
        assert!(d.d.routes().unwrap().iter().any(|r| r.0 == net(OUR6)), "{OUR6} must stay");
    }
    site.put_block("net1", OUR4);
    ext.check_has_ours(&site, kind);
    int.check_has_ours(&site, kind);

    // The eBGP daemon crashes (SIGKILL: the kernel closes its TCP connections). Its routes
    // leave our kernel well within its hold time; the iBGP daemon's sessions and routes stay.
    let hold = kind.default_hold_time().min(90);
    ext.d.kill();
    let killed = Instant::now();
    site.wait_no_kernel(EXT[0], Duration::from_secs(u64::from(hold)));
    site.wait_no_kernel(EXT[1], Duration::from_secs(u64::from(hold)));
    let gone_after = killed.elapsed();
    eprintln!("{kind:?}: routes of the killed daemon left our kernel after {gone_after:?} (hold time {hold} s)");
    for a in ext.addrs() {
        let p = site.peer(a).expect("the flag peer stays configured");
        assert_ne!(p["state"], "Established", "{p}");
    }
    for a in int.addrs() {
        assert!(site.established(a), "iBGP session {a} dropped with the other daemon: {}", site.status_json());
    }
    assert!(site.kernel_via(INT[0]).is_some() && site.kernel_via(INT[1]).is_some(), "{}", site.kernel());

    // It restarts with the same configuration: sessions and routes come back, both ways.
    ext.d = kind.start(&ext.ns, &ext.cfg).unwrap();
    for a in ext.addrs() {
        site.wait_established(a);
    }
    site.wait_kernel(EXT[0], IpAddr::V4(ext.v4));
    site.wait_kernel(EXT[1], IpAddr::V6(ext.v6));
    ext.check_has_ours(&site, kind);
    for a in ext.addrs() {
        check_peer_status(&site, a, EXT_AS, "flag peer");
    }
    // The agent never restarted its own sessions with the iBGP daemon.
    for a in int.addrs() {
        let p = site.peer(a).unwrap();
        let up = p["uptimeSecs"].as_u64().unwrap_or(0);
        assert!(p["state"] == "Established" && up >= gone_after.as_secs(), "{p}");
    }

    // The iBGP daemon freezes (SIGSTOP: its TCP connections stay open, it sends nothing more).
    // The agent's hold timer (9 s, the daemon's proposal; keepalives every 3 s) expires: its
    // routes leave our kernel between 6 and 9 s later, the status says why, the eBGP sessions
    // stay. Thawed, it is peered again and its routes come back.
    for a in int.addrs() {
        assert_eq!(
            int.d.hold_time(if a.is_ipv4() { IpAddr::V4(site.our4) } else { IpAddr::V6(site.our6) }).unwrap(),
            FROZEN_HOLD
        );
    }
    let frozen = Frozen::new(&int.ns);
    let t0 = Instant::now();
    let limit = Duration::from_secs(u64::from(FROZEN_HOLD) + 3);
    site.wait_no_kernel(INT[0], limit);
    site.wait_no_kernel(INT[1], limit);
    let expired_after = t0.elapsed();
    eprintln!("{kind:?}: a frozen daemon's routes left our kernel after {expired_after:?} (hold time {FROZEN_HOLD} s)");
    assert!(expired_after >= Duration::from_secs(5), "gone before a hold time could expire: {expired_after:?}");
    for a in int.addrs() {
        let p = site.peer(a).unwrap();
        assert!(p["state"] != "Established" && p["lastError"] == "hold timer expired", "{p}");
    }
    for a in ext.addrs() {
        assert!(site.established(a), "{}", site.status_json());
    }
    assert!(site.kernel_via(EXT[0]).is_some() && site.kernel_via(EXT[1]).is_some(), "{}", site.kernel());
    drop(frozen);
    for a in int.addrs() {
        site.wait_established(a);
    }
    site.wait_kernel(INT[0], IpAddr::V4(int.v4));
    site.wait_kernel(INT[1], IpAddr::V6(int.v6));
    int.check_has_ours(&site, kind);

    let t = Command::new(bin()).args(["status", "--state-dir"]).arg(site.state_dir()).output().unwrap();
    eprintln!("{kind:?}: cni-bgp status:\n{}\nour kernel:\n{}", String::from_utf8_lossy(&t.stdout), site.kernel());
    assert!(site.agent.as_ref().unwrap().is_running());
}

/// Every process of a namespace stopped (SIGSTOP) until drop (SIGCONT).
struct Frozen {
    pids: Vec<i32>,
}

impl Frozen {
    fn new(ns: &str) -> Frozen {
        let out = Command::new("ip").args(["netns", "pids", ns]).output().unwrap();
        assert!(out.status.success(), "ip netns pids {ns}: {out:?}");
        let pids: Vec<i32> =
            String::from_utf8_lossy(&out.stdout).split_whitespace().filter_map(|p| p.parse().ok()).collect();
        assert!(!pids.is_empty(), "no process in {ns}");
        for p in &pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), nix::sys::signal::Signal::SIGSTOP);
        }
        Frozen { pids }
    }
}

impl Drop for Frozen {
    fn drop(&mut self) {
        for p in &self.pids {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(*p), nix::sys::signal::Signal::SIGCONT);
        }
    }
}

#[test]
fn agent_with_bird_ebgp_and_ibgp_v4_v6() {
    exchange(Kind::Bird, "aibird");
}

#[test]
fn agent_with_gobgp_ebgp_and_ibgp_v4_v6() {
    exchange(Kind::Gobgp, "aigobgp");
}

#[test]
fn agent_with_frr_ebgp_and_ibgp_v4_v6() {
    exchange(Kind::Frr, "aifrr");
}

// ---- a scripted peer (malformed_updates.rs speaks the same way) --------------------------

const WITNESS_AS: u32 = 65302;

/// ORIGIN IGP, AS_PATH [SCRIPT_AS] (4-octet), NEXT_HOP `nh`.
fn attrs(nh: Ipv4Addr) -> Vec<u8> {
    let mut a = attr(0x40, 1, &[0]);
    let mut path = vec![2, 1];
    path.extend_from_slice(&SCRIPT_AS.to_be_bytes());
    a.extend(attr(0x40, 2, &path));
    a.extend(attr(0x40, 3, &nh.octets()));
    a
}

fn update(attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut b = vec![0, 0];
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(attrs);
    b.extend_from_slice(nlri);
    msg(2, &b)
}

/// Connects from `src` (in netns `ns`) to the agent and brings the session up; retried (every
/// 200 ms, at most [`T`]) while the agent does not accept the connection or refuses the
/// session (e.g. not configured yet).
fn connect(ns: &str, src: Ipv4Addr, dst: Ipv4Addr) -> Scripted {
    let deadline = Instant::now() + T;
    loop {
        let mut sc = Scripted::tcp(ns, src, dst, T);
        match sc.open_session(src, Duration::from_secs(10)) {
            Ok(()) => return sc,
            Err(e) if Instant::now() >= deadline => panic!("scripted peer {src} -> {dst}:179: {e}"),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    }
}

/// A `--peer` sends an UPDATE whose NLRI has prefix length 33 (RFC 4271 §6.3, Invalid Network
/// Field; RFC 7606 §5.3: session reset): the agent binary answers NOTIFICATION 3/10 and closes,
/// withdraws the route the peer had sent before from the kernel, says 3/10 in its status, and
/// serves on: the process is alive, the status socket ready, the GoBGP witness session
/// Established since before (uptime) with its route still in our kernel and ours in its RIB.
/// The scripted peer connects again and is Established again.
#[test]
fn agent_answers_a_malformed_update_with_a_notification_and_serves_on() {
    let (mut site, hosts) = Site::new("aimalf", "10.87.0.0/24", "fd00:87::/64");
    let (h_script, h_witness) = (hosts[0], hosts[1]);
    let (src, witness) = (site.lab.host_ip(h_script), site.lab.host_ip(h_witness));
    let script_ns = site.lab.host_ns(h_script).to_string();
    site.put_block("net1", OUR4);
    let witness_route = "10.88.0.0/24";
    let w_cfg = PeerConfig::new(witness, WITNESS_AS)
        .neighbor(Neighbor::new(IpAddr::V4(site.our4), CLUSTER_AS))
        .route(net(witness_route));
    let w = Kind::Gobgp.start(site.lab.host_ns(h_witness), &w_cfg).unwrap();
    site.start_agent(&[
        "--peer".into(),
        format!("{src},{SCRIPT_AS}"),
        "--peer".into(),
        format!("{witness},{WITNESS_AS}"),
    ]);
    site.wait_established(IpAddr::V4(witness));
    w.wait_route(net(OUR4), Some(IpAddr::V4(site.our4)), T).unwrap();
    site.wait_kernel(witness_route, IpAddr::V4(witness));
    let witness_up_at = Instant::now();

    let mut s = connect(&script_ns, src, site.our4);
    site.wait_established(IpAddr::V4(src));
    // A valid route first: it reaches our kernel via the scripted peer.
    let script_route = "10.89.0.0/24";
    let mut nlri = vec![24, 10, 89, 0];
    s.send(&update(&attrs(src), &nlri));
    site.wait_kernel(script_route, IpAddr::V4(src));

    // NLRI 10.89.1.0/33.
    nlri = vec![33, 10, 89, 1, 0, 0];
    s.send(&update(&attrs(src), &nlri));
    let got = s.next_notification(Duration::from_secs(20));
    assert_eq!(got, Got::Notification(3, 10), "NOTIFICATION for an NLRI of length 33\n{}", site.log());
    assert!(s.closed(Duration::from_secs(10)), "the agent did not close after its NOTIFICATION");
    site.wait_no_kernel(script_route, Duration::from_secs(10));
    let named = wait_until(Duration::from_secs(10), || {
        site.peer(IpAddr::V4(src))
            .is_some_and(|p| p["state"] != "Established" && p["lastError"].as_str().is_some_and(|e| e.contains("3/10")))
    });
    assert!(named, "status does not name 3/10: {}", site.status_json());

    // The agent serves on.
    assert!(site.agent.as_ref().unwrap().is_running(), "{}", site.log());
    assert!(site.ready().is_ok_and(|a| a.ready), "{:?}", site.ready());
    let p = site.peer(IpAddr::V4(witness)).unwrap();
    let up_for = witness_up_at.elapsed().as_secs();
    assert!(
        p["state"] == "Established" && p["uptimeSecs"].as_u64().is_some_and(|u| u + 1 >= up_for),
        "witness session flapped: {p} (up {up_for} s)"
    );
    assert!(w.established(IpAddr::V4(site.our4)).unwrap());
    assert!(w.routes().unwrap().iter().any(|r| r.0 == net(OUR4)));
    assert!(site.kernel_via(witness_route).is_some(), "{}", site.kernel());
    // And the peer that sent it may come back.
    drop(s);
    let mut s = connect(&script_ns, src, site.our4);
    site.wait_established(IpAddr::V4(src));
    s.send(&update(&attrs(src), &[24, 10, 89, 0]));
    site.wait_kernel(script_route, IpAddr::V4(src));
}
