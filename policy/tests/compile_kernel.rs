//! The compiled tables in a real kernel: a host namespace with a bridge and two endpoints on
//! it (veth pairs, IPv4 and IPv6) plus one routed endpoint (a veth with no bridge, as
//! cni-bgp makes), the compiled state applied over netlink (TableState::replace, then an
//! endpoint added with TableState::diff), and a handful of flows whose fate in the kernel
//! must equal `eval::evaluate_path`'s verdict. The random differential test is elsewhere
//! (cni-policy); this one pins down the layout: dispatch by address for bridged, routed and
//! host traffic, tiers with Pass, notPorts, nets, selectors of both families, the default
//! deny of a Kubernetes policy, and anti-spoofing of routed and bridged endpoints.
//!
//! The guards around the policy are checked too: a link-local source carries only neighbour
//! discovery and MLD (TCP to a pod's `fe80::` address is dropped), broadcast and multicast
//! do not reach an endpoint whose ingress is restricted, and a pod's router advertisements
//! are dropped while its neighbour advertisements pass.
//!
//! ARP on a bridge port is checked with forged frames: a pod that claims another pod's or the
//! gateway's address does not change the host's or the other pod's neighbour table, while
//! the same frames do without the tables, and an ARP packet naming the pod's own address does.
//!
//! Needs root, `ip`, `ping` and `sysctl`. Namespaces are named `cpk<pid><tag>` (`cpa<pid><tag>`
//! for the ARP test) and deleted by a guard even when an assertion fails; the tables live
//! inside them.

use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6, TcpListener, TcpStream, UdpSocket};
use std::os::fd::FromRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use linux_net::netns::NetNs;
use linux_net::nft::{TableState, Transaction};
use policy::compile::compile;
use policy::eval::{evaluate_delivery, evaluate_path, Packet, Verdict};
use policy::model::Endpoint;
use policy::PolicySet;

#[path = "../../linux-net/tests/common/mod.rs"]
mod netns;
use netns::{ip, sh, Namespaces};

const HOST: usize = 0;
const A: usize = 1;
const B: usize = 2;
const C: usize = 3;

const A4: &str = "10.78.0.1";
const B4: &str = "10.78.0.2";
const A6: &str = "fd78::1";
const B6: &str = "fd78::2";
const BR4: &str = "10.78.0.254";
const C4: &str = "10.78.1.3";
/// An address C also holds but is not its endpoint's: the anti-spoof chain drops it.
const C_SPOOF4: &str = "10.78.1.99";
/// The same on the bridge, for A.
const A_SPOOF4: &str = "10.78.0.99";
/// B's link-local address (A's is fe80::a; both added without DAD, so the test need not
/// wait for it).
const B_LL: &str = "fe80::b";

/// host: bridge br0 (10.78.0.254/24, fd78::fe/64) with ports va (A) and vb (B); vc (C)
/// routed, 10.78.1.254/24. A and B: 10.78.0.1/2 and fd78::1/2; C: 10.78.1.3 (and 10.78.1.99).
fn topology(prefix: &str) -> Namespaces {
    let ns = Namespaces::new(prefix, &["h", "a", "b", "c"]);
    let n = |i: usize| ns.0[i].clone();
    let h = n(HOST);
    sh(&["ip", "-n", &h, "link", "add", "br0", "type", "bridge"]);
    for (i, port, addrs) in [
        (A, "va", vec!["10.78.0.1/24", "fd78::1/64", "10.78.0.99/24", "fe80::a/64"]),
        (B, "vb", vec!["10.78.0.2/24", "fd78::2/64", "fe80::b/64"]),
        (C, "vc", vec!["10.78.1.3/24", "10.78.1.99/24"]),
    ] {
        let c = n(i);
        sh(&["ip", "-n", &h, "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", &c]);
        for a in addrs {
            sh(&["ip", "-n", &c, "addr", "add", a, "dev", "eth0", "nodad"]);
        }
        sh(&["ip", "-n", &c, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &c, "link", "set", "lo", "up"]);
        if port != "vc" {
            sh(&["ip", "-n", &h, "link", "set", port, "master", "br0"]);
        }
        sh(&["ip", "-n", &h, "link", "set", port, "up"]);
    }
    for a in ["10.78.0.254/24", "fd78::fe/64"] {
        sh(&["ip", "-n", &h, "addr", "add", a, "dev", "br0", "nodad"]);
    }
    sh(&["ip", "-n", &h, "addr", "add", "10.78.1.254/24", "dev", "vc"]);
    sh(&["ip", "-n", &h, "link", "set", "br0", "up"]);
    sh(&["ip", "-n", &h, "link", "set", "lo", "up"]);
    for (i, gw) in [(A, "10.78.0.254"), (B, "10.78.0.254"), (C, "10.78.1.254")] {
        sh(&["ip", "-n", &n(i), "route", "add", "default", "via", gw]);
    }
    // Bridged IP traffic through the inet hooks (as the chained plugin makes sure), and routing.
    for s in ["net.bridge.bridge-nf-call-iptables=1", "net.bridge.bridge-nf-call-ip6tables=1", "net.ipv4.ip_forward=1"]
    {
        sh(&["ip", "netns", "exec", &h, "sysctl", "-qw", s]);
    }
    ns
}

fn endpoints(with_b: bool) -> Vec<Endpoint> {
    let ep = |name: &str, ns: &str, app: &str, addrs: &[&str], ifname: &str, bridged: bool| Endpoint {
        name: format!("{name}/eth0"),
        namespace: ns.into(),
        labels: [("app".to_string(), app.to_string())].into(),
        addrs: addrs.iter().map(|a| ip(a)).collect(),
        host_ifname: Some(ifname.into()),
        bridged,
        remote: None,
    };
    let mut v = vec![ep("a", "prod", "web", &[A4, A6], "va", true), ep("c", "dev", "other", &[C4], "vc", false)];
    if with_b {
        v.push(ep("b", "prod", "db", &[B4, B6], "vb", true));
    }
    v
}

const POLICIES: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{port: 5432}]
---
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {name: security}
spec: {order: 100}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: sec}
spec:
  tier: security
  order: 1
  types: [Ingress, Egress]
  ingress:
  - {action: Log, protocol: TCP, destination: {ports: [5432]}}
  - {action: Deny, protocol: TCP, source: {selector: app == 'other'}, destination: {notPorts: [7000]}}
  - {action: Pass}
  egress:
  - {action: Deny, protocol: TCP, destination: {nets: [10.78.0.2/32, 10.78.0.3/32], ports: [6000]}}
  - {action: Pass}
"#;

fn apply(ns: &NetNs, prev: Option<&[TableState]>, next: &[TableState]) {
    let mut x = Transaction::new();
    for (i, t) in next.iter().enumerate() {
        match prev {
            Some(p) => TableState::diff(&p[i], t, &mut x).expect("diff"),
            None => TableState::replace(t, &mut x).expect("replace"),
        }
    }
    ns.run(|| x.commit()).expect("enter netns").expect("commit");
}

/// A TCP connect from namespace `from` (source address chosen by routing); `Some(true)`
/// connected, `Some(false)` no answer within `wait`, `None` refused (allowed, no listener).
fn tcp(ns: &Namespaces, from: usize, dst: &str, port: u16, wait: Duration) -> Option<bool> {
    connect(ns, from, SocketAddr::new(ip(dst), port), wait)
}

/// A TCP connect from namespace `from` to `to`, with `tcp`'s outcomes.
fn connect(ns: &Namespaces, from: usize, to: SocketAddr, wait: Duration) -> Option<bool> {
    let r = ns.open(from).run(|| TcpStream::connect_timeout(&to, wait)).expect("enter netns");
    match r {
        Ok(_) => Some(true),
        Err(e) if e.kind() == std::io::ErrorKind::TimedOut => Some(false),
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => None,
        Err(e) => panic!("connect {to}: {e}"),
    }
}

/// One echo request; true if answered within `wait_s` seconds.
fn ping(ns: &Namespaces, from: usize, src: Option<&str>, dst: &str, wait_s: &str) -> bool {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0[from], "ping", "-c1", "-W", wait_s]);
    if let Some(s) = src {
        cmd.args(["-I", s]);
    }
    cmd.arg(dst).output().expect("exec ping").status.success()
}

/// Listening sockets (dual-stack) kept open for the test; a connect completes on the
/// handshake, nothing needs to accept.
fn listen(ns: &Namespaces, at: usize, ports: &[u16]) -> Vec<TcpListener> {
    ports
        .iter()
        .map(|p| ns.open(at).run(|| TcpListener::bind(("::", *p))).expect("enter netns").expect("bind"))
        .collect()
}

/// The index of `eth0` in namespace `i` (the scope of its link-local addresses).
fn eth0_index(ns: &Namespaces, i: usize) -> u32 {
    sh(&["ip", "netns", "exec", &ns.0[i], "cat", "/sys/class/net/eth0/ifindex"]).trim().parse().expect("an index")
}

/// A TCP connect from namespace `from` to a link-local address on its eth0.
fn tcp_link_local(ns: &Namespaces, from: usize, dst: &str, port: u16, wait: Duration) -> Option<bool> {
    let to = SocketAddr::V6(SocketAddrV6::new(dst.parse().unwrap(), port, 0, eth0_index(ns, from)));
    connect(ns, from, to, wait)
}

/// A UDP socket bound in namespace `at` (a receiver of broadcast and multicast).
fn udp_bound(ns: &Namespaces, at: usize, addr: SocketAddr) -> UdpSocket {
    let s = ns.open(at).run(|| UdpSocket::bind(addr)).expect("enter netns").expect("bind");
    s.set_read_timeout(Some(Duration::from_millis(1000))).unwrap();
    s
}

/// Whether `marker` arrives on `rx` (within its read timeout), after `send` sent it.
fn arrives(rx: &UdpSocket, marker: &[u8], send: impl FnOnce()) -> bool {
    while rx.recv(&mut [0u8; 64]).is_ok() {} // stale datagrams
    send();
    let mut buf = [0u8; 1500];
    while let Ok(n) = rx.recv(&mut buf) {
        if buf[..n].ends_with(marker) {
            return true;
        }
    }
    false
}

/// Sends `payload` by UDP from namespace `from`, bound to `src`, to `dst` (broadcast allowed).
/// A drop in the sender's own output path reads as EPERM: sent, and dropped.
fn udp_send(ns: &Namespaces, from: usize, src: SocketAddr, dst: SocketAddr, payload: &[u8]) {
    ns.open(from)
        .run(|| {
            let s = UdpSocket::bind(src).expect("bind");
            s.set_broadcast(true).unwrap();
            match s.send_to(payload, dst) {
                Ok(_) => {}
                Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => {}
                Err(e) => panic!("send to {dst}: {e}"),
            }
        })
        .expect("enter netns");
}

/// A raw ICMPv6 socket in namespace `at` (checksums are the kernel's), as a `UdpSocket` for
/// its send_to/recv and timeouts: both are plain sendto/recvfrom on an AF_INET6 socket.
fn icmpv6_raw(ns: &Namespaces, at: usize) -> UdpSocket {
    let fd = ns
        .open(at)
        .run(|| unsafe { libc::socket(libc::AF_INET6, libc::SOCK_RAW, libc::IPPROTO_ICMPV6) })
        .expect("enter netns");
    assert!(fd >= 0, "raw ICMPv6 socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh socket this function owns and hands over.
    let s = unsafe { UdpSocket::from_raw_fd(fd) };
    s.set_read_timeout(Some(Duration::from_millis(1000))).unwrap();
    s
}

struct Flow {
    from: usize,
    src: &'static str,
    dst: &'static str,
    port: u16,
}

#[test]
fn compiled_tables_give_the_evaluators_verdicts_in_the_kernel() {
    let ns = topology("cpk");
    let _l = [listen(&ns, B, &[5432, 5433, 6000]), listen(&ns, A, &[7000, 7001]), listen(&ns, HOST, &[8080])];
    // The paths work before any table (bounded: neighbour discovery of a fresh lab settles).
    let deadline = Instant::now() + Duration::from_secs(20);
    for (from, dst) in [(A, B4), (A, B6), (C, A4), (B, A6)] {
        while !ping(&ns, from, None, dst, "1") {
            assert!(Instant::now() < deadline, "topology broken: {from} cannot reach {dst}");
        }
    }
    // What the guards will drop works without them: TCP over link-local, broadcast and
    // multicast into B, a router advertisement from A.
    assert_eq!(tcp_link_local(&ns, A, B_LL, 5433, Duration::from_secs(3)), Some(true), "link-local TCP");
    let b_rx = udp_bound(&ns, B, "[::]:7777".parse().unwrap());
    let c_rx = udp_bound(&ns, C, "0.0.0.0:7777".parse().unwrap());
    let a_raw = icmpv6_raw(&ns, A);
    let b_raw = icmpv6_raw(&ns, B);
    let all_nodes =
        SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 0, 0, eth0_index(&ns, A)));
    let mcast =
        SocketAddr::V6(SocketAddrV6::new(Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1), 7777, 0, eth0_index(&ns, A)));
    let bcast: SocketAddr = "10.78.0.255:7777".parse().unwrap();
    let from_a4: SocketAddr = SocketAddr::new(ip(A4), 0);
    let from_a6: SocketAddr = "[fd78::1]:0".parse().unwrap();
    let ra = |t: u8, mark: &'static [u8]| {
        let a_raw = &a_raw;
        move || {
            let mut msg = vec![t, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0];
            msg.extend_from_slice(mark);
            a_raw.send_to(&msg, all_nodes).expect("send ICMPv6");
        }
    };
    assert!(arrives(&b_rx, b"pre-bcast", || udp_send(&ns, A, from_a4, bcast, b"pre-bcast")), "broadcast");
    assert!(arrives(&b_rx, b"pre-mcast", || udp_send(&ns, A, from_a6, mcast, b"pre-mcast")), "multicast");
    assert!(arrives(&b_raw, b"pre-ra", ra(134, b"pre-ra")), "router advertisement");
    let nsr = &ns;
    let host_b = |m: &'static [u8]| move || udp_send(nsr, HOST, SocketAddr::new(ip(BR4), 0), bcast, m);
    let (from_host_c, c_bcast): (SocketAddr, SocketAddr) =
        ("10.78.1.254:0".parse().unwrap(), "10.78.1.255:7777".parse().unwrap());
    let host_c = |m: &'static [u8]| move || udp_send(nsr, HOST, from_host_c, c_bcast, m);
    assert!(arrives(&b_rx, b"pre-hb", host_b(b"pre-hb")), "broadcast host → B");
    assert!(arrives(&c_rx, b"pre-hc", host_c(b"pre-hc")), "broadcast host → C");
    let set: PolicySet = policy::parse_str(std::path::Path::new("kernel.yaml"), POLICIES).expect("policies");

    // Full apply with A and C, then B added as a delta on top.
    let first = compile(&set, &endpoints(false));
    let host = ns.open(HOST);
    apply(&host, None, &first.tables);
    let eps = endpoints(true);
    let next = compile(&set, &eps);
    apply(&host, Some(&first.tables), &next.tables);

    let flows = [
        Flow { from: A, src: A4, dst: B4, port: 5432 }, // web → db 5432: allowed by the k8s policy
        Flow { from: A, src: A6, dst: B6, port: 5432 }, // the same over IPv6
        Flow { from: A, src: A4, dst: B4, port: 5433 }, // db's default deny
        Flow { from: A, src: A6, dst: B6, port: 5433 }, // the same over IPv6
        Flow { from: A, src: A4, dst: B4, port: 6000 }, // web's egress Deny (nets + port)
        Flow { from: C, src: C4, dst: B4, port: 5432 }, // routed other → db: Deny by selector
        Flow { from: C, src: C4, dst: A4, port: 7000 }, // other → web 7000: notPorts, then Pass
        Flow { from: C, src: C4, dst: A4, port: 7001 }, // other → web 7001: Deny
        Flow { from: HOST, src: BR4, dst: B4, port: 5432 }, // host → db: not web, default deny
        Flow { from: A, src: A4, dst: BR4, port: 8080 }, // web → host (input hook): Pass, allowed
        Flow { from: B, src: B6, dst: A6, port: 7001 }, // db → web over IPv6: allowed
    ];
    let mut seen = Vec::new();
    for f in &flows {
        let pkt = Packet::tcp(ip(f.src), 40000, ip(f.dst), f.port);
        let want = evaluate_path(&set, &eps, &pkt);
        // An allowed connect completes in milliseconds; a dropped one gets no answer.
        let got = tcp(&ns, f.from, f.dst, f.port, Duration::from_millis(1500));
        let got = match got {
            Some(true) => Verdict::Allow,
            Some(false) => Verdict::Deny,
            None => panic!("{} → {}:{}: refused (no listener?)", f.src, f.dst, f.port),
        };
        assert_eq!(got, want, "TCP {} → {}:{}", f.src, f.dst, f.port);
        seen.push(want);
    }
    assert!(seen.contains(&Verdict::Allow) && seen.contains(&Verdict::Deny), "both outcomes exercised");

    // ICMP: db → web allowed (Pass, web has no default-tier policy); web → db denied by db's
    // Kubernetes policy, both families.
    for (from, src, dst) in [(B, B4, A4), (B, B6, A6), (A, A4, B4), (A, A6, B6)] {
        let type_ = if src.contains(':') { 128 } else { 8 };
        let want = evaluate_path(&set, &eps, &Packet::icmp(ip(src), ip(dst), type_, 0));
        let got = if ping(&ns, from, None, dst, "1") { Verdict::Allow } else { Verdict::Deny };
        assert_eq!(got, want, "ICMP {src} → {dst}");
    }

    // Anti-spoofing of the routed endpoint: C's other address is not C's, so its packets are
    // dropped at the host interface, while the evaluator (which trusts addresses) would allow
    // the flow: the same ping from C's own address passes.
    assert!(ping(&ns, C, Some(C4), A4, "1"), "C's own address");
    assert!(!ping(&ns, C, Some(C_SPOOF4), A4, "1"), "a spoofed source from a routed endpoint is dropped");
    assert_eq!(evaluate_path(&set, &eps, &Packet::icmp(ip(C_SPOOF4), ip(A4), 8, 0)), Verdict::Allow);
    // And of a bridge port (the bridge family's chain): A to the host from another address.
    assert!(ping(&ns, A, Some(A4), BR4, "1"), "A's own address");
    assert!(!ping(&ns, A, Some(A_SPOOF4), BR4, "1"), "a spoofed source from a bridge port is dropped");

    // A link-local source carries neighbour discovery and MLD only: TCP from A to B's
    // link-local address (which no dispatch map knows) is dropped at A's bridge port.
    assert_eq!(tcp_link_local(&ns, A, B_LL, 5433, Duration::from_millis(1500)), Some(false), "link-local TCP");
    // Broadcast and multicast do not reach B (its ingress is restricted): from A over the
    // bridge (bridge forward hook), from the host (bridge output hook), nor the routed C from
    // the host (inet output hook); unicast to B's own address still does when allowed.
    let b_ep = eps.iter().find(|e| e.name == "b/eth0").expect("B");
    for dst in ["10.78.0.255", "ff02::1"] {
        let src = if dst.contains(':') { A6 } else { A4 };
        let pkt = Packet::udp(ip(src), 1000, ip(dst), 7777);
        assert_eq!(evaluate_delivery(&set, &eps, b_ep, &pkt), Verdict::Deny, "the evaluator agrees: {dst}");
    }
    let ll = Packet::tcp(ip("fe80::a"), 40000, ip(B_LL), 5433);
    assert_eq!(evaluate_delivery(&set, &eps, b_ep, &ll), Verdict::Deny, "the evaluator agrees: link-local");
    assert!(!arrives(&b_rx, b"bcast", || udp_send(&ns, A, from_a4, bcast, b"bcast")), "broadcast A → B");
    assert!(!arrives(&b_rx, b"mcast", || udp_send(&ns, A, from_a6, mcast, b"mcast")), "multicast A → B");
    assert!(!arrives(&b_rx, b"hbcast", host_b(b"hbcast")), "broadcast host → B");
    assert!(!arrives(&c_rx, b"hc", host_c(b"hc")), "broadcast host → routed C");
    // A pod may not advertise itself as a router, but its neighbour advertisements (to the
    // all-nodes group, from its link-local address) still reach B.
    assert!(!arrives(&b_raw, b"post-ra", ra(134, b"post-ra")), "router advertisement from a pod");
    assert!(arrives(&b_raw, b"post-na", ra(136, b"post-na")), "neighbour advertisement from a pod");
}

const GUARD_POLICY: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: all-in}
spec:
  types: [Ingress]
  ingress:
  - {action: Allow}
"#;

/// The inet base chains start with the guard of routed interfaces only while some endpoint
/// has one: with bridge ports only they have no guard rule (and a spoofed source from a
/// veth that is no endpoint's passes: nothing guards it); the routed C added, the incremental
/// compiler's delta, applied by the engine, puts the rule into the four chains and C's
/// spoofed source and a broadcast towards C are dropped while its own address passes; C
/// removed, the rule is gone again and the spoofed source passes. After every change the
/// incremental state equals `compile()`'s.
#[test]
fn the_inet_guard_rule_is_there_only_while_an_endpoint_has_a_routed_interface() {
    use policy::compile::Compiler;
    use policy::engine::Engine;
    let ns = topology("cpg");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !ping(&ns, C, Some(C4), A4, "1") {
        assert!(Instant::now() < deadline, "topology broken: C cannot reach A");
    }
    let c_rx = udp_bound(&ns, C, "0.0.0.0:7777".parse().unwrap());
    let (from_host_c, c_bcast): (SocketAddr, SocketAddr) =
        ("10.78.1.254:0".parse().unwrap(), "10.78.1.255:7777".parse().unwrap());
    let nsr = &ns;
    let host_c = |m: &'static [u8]| move || udp_send(nsr, HOST, from_host_c, c_bcast, m);
    let set: PolicySet = policy::parse_str(std::path::Path::new("guard.yaml"), GUARD_POLICY).expect("policies");
    let all = endpoints(true);
    let (bridged, routed): (Vec<Endpoint>, Vec<Endpoint>) = all.into_iter().partition(|e| e.bridged);
    let dir = tempfile::tempdir().expect("a state dir");
    let engine = Engine::new(dir.path());
    let host = ns.open(HOST);
    let base_chains = ["forward", "egress-in", "ingress-out"];
    // (compiled has the guard rule in each base chain, the kernel lists it in each)
    let guard_rules = |c: &Compiler| {
        let inet = &c.compiled().tables[0];
        let compiled = base_chains.map(|n| {
            inet.chains[n].rules.iter().any(|r| matches!(r.action, Some(linux_net::nft::Action::IfNameVmap { .. })))
        });
        let kernel = base_chains.map(|n| {
            let out = sh(&["ip", "netns", "exec", &ns.0[HOST], "nft", "list", "chain", "inet", "cni-policy", n]);
            out.contains("vmap @spoof-if") || out.contains("vmap @deliver-if")
        });
        (compiled, kernel)
    };
    let mut c = Compiler::new(set.clone(), &bridged);
    let apply = |c: &mut Compiler| {
        assert_eq!(c.compiled(), &compile(&set, &c.endpoints()), "incremental == compile");
        host.run(|| engine.apply_changes(c.compiled(), &c.changes())).expect("enter netns").expect("apply");
        c.applied();
    };
    apply(&mut c);
    assert_eq!(guard_rules(&c), ([false; 3], [false; 3]), "bridge ports only: no inet guard rule");
    assert!(ping(&ns, C, Some(C_SPOOF4), A4, "1"), "C is no endpoint: nothing guards its source");

    c.put_endpoint(routed[0].clone());
    assert!(!c.changes().all, "a delta");
    apply(&mut c);
    assert_eq!(guard_rules(&c), ([true; 3], [true; 3]), "a routed endpoint: the guard rule in every base chain");
    assert!(ping(&ns, C, Some(C4), A4, "1"), "C's own address");
    assert!(!ping(&ns, C, Some(C_SPOOF4), A4, "1"), "a spoofed source from the routed endpoint is dropped");
    assert!(!arrives(&c_rx, b"guarded", host_c(b"guarded")), "broadcast host → routed C (ingress restricted)");

    c.remove_endpoint(&routed[0].name);
    apply(&mut c);
    assert_eq!(guard_rules(&c), ([false; 3], [false; 3]), "the routed endpoint gone: the rule is gone");
    assert!(ping(&ns, C, Some(C_SPOOF4), A4, "1"), "no guard for C any more");
    assert!(arrives(&c_rx, b"unguarded", host_c(b"unguarded")), "broadcast host → C");
}

/// The MAC address of `dev` in namespace `i`.
fn mac_of(ns: &Namespaces, i: usize, dev: &str) -> [u8; 6] {
    let s = sh(&["ip", "netns", "exec", &ns.0[i], "cat", &format!("/sys/class/net/{dev}/address")]);
    let v: Vec<u8> = s.trim().split(':').map(|h| u8::from_str_radix(h, 16).expect("hex")).collect();
    v.try_into().expect("6 bytes")
}

fn mac_str(m: [u8; 6]) -> String {
    m.iter().map(|b| format!("{b:02x}")).collect::<Vec<_>>().join(":")
}

/// The link-layer address namespace `i`'s neighbour table has for `addr` on `dev`, if any.
fn neigh(ns: &Namespaces, i: usize, addr: &str, dev: &str) -> Option<String> {
    let out = sh(&["ip", "-n", &ns.0[i], "neigh", "show", addr, "dev", dev]);
    let words: Vec<&str> = out.split_whitespace().collect();
    words.iter().position(|w| *w == "lladdr").map(|p| words[p + 1].to_string())
}

/// Sets namespace `i`'s neighbour entry for `addr` on `dev` to `mac`, in a state an ARP
/// packet may update (stale; `locktime` is 0 in the test, so at once).
fn set_neigh(ns: &Namespaces, i: usize, addr: &str, dev: &str, mac: &str) {
    sh(&["ip", "-n", &ns.0[i], "neigh", "replace", addr, "lladdr", mac, "dev", dev, "nud", "stale"]);
}

/// Sends from namespace `from`'s eth0 one broadcast Ethernet/IPv4 ARP request (`op` 1) or
/// reply (2) with sender `sha`/`spa` asking for `tpa`, through a raw packet socket: what a
/// pod that owns its network namespace can send.
fn send_arp(ns: &Namespaces, from: usize, sha: [u8; 6], spa: &str, tpa: &str, op: u8) {
    let ifindex = eth0_index(ns, from) as i32;
    let (spa, tpa): (std::net::Ipv4Addr, std::net::Ipv4Addr) = (spa.parse().unwrap(), tpa.parse().unwrap());
    let mut frame = vec![0xff; 6];
    frame.extend_from_slice(&sha);
    frame.extend_from_slice(&[0x08, 0x06]); // ARP
    frame.extend_from_slice(&[0, 1, 0x08, 0x00, 6, 4, 0, op]); // Ethernet, IPv4, op
    frame.extend_from_slice(&sha);
    frame.extend_from_slice(&spa.octets());
    frame.extend_from_slice(&[0; 6]);
    frame.extend_from_slice(&tpa.octets());
    let sent = ns
        .open(from)
        .run(|| unsafe {
            let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW, 0);
            assert!(fd >= 0, "packet socket: {}", std::io::Error::last_os_error());
            let mut to: libc::sockaddr_ll = std::mem::zeroed();
            to.sll_family = libc::AF_PACKET as u16;
            to.sll_protocol = 0x0806u16.to_be();
            to.sll_ifindex = ifindex;
            to.sll_halen = 6;
            to.sll_addr[..6].copy_from_slice(&[0xff; 6]);
            let n = libc::sendto(
                fd,
                frame.as_ptr().cast(),
                frame.len(),
                0,
                (&to as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            );
            let err = std::io::Error::last_os_error();
            libc::close(fd);
            (n, err)
        })
        .expect("enter netns");
    assert_eq!(sent.0, frame.len() as isize, "send ARP: {}", sent.1);
}

/// Waits (bounded) until namespace `i`'s entry for `addr` on `dev` is `mac`.
fn wait_neigh(ns: &Namespaces, i: usize, addr: &str, dev: &str, mac: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        if neigh(ns, i, addr, dev).as_deref() == Some(mac) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn forged_arp_from_a_bridge_port_does_not_poison_neighbour_caches() {
    let ns = topology("cpa");
    for (i, s) in [
        (HOST, "net.ipv4.neigh.br0.locktime=0"),
        (B, "net.ipv4.neigh.eth0.locktime=0"),
        (HOST, "net.ipv4.conf.br0.arp_accept=1"),
        (B, "net.ipv4.conf.eth0.arp_accept=1"),
    ] {
        sh(&["ip", "netns", "exec", &ns.0[i], "sysctl", "-qw", s]);
    }
    let deadline = Instant::now() + Duration::from_secs(20);
    for (from, dst) in [(A, BR4), (B, BR4), (A, B4)] {
        while !ping(&ns, from, None, dst, "1") {
            assert!(Instant::now() < deadline, "topology broken: {from} cannot reach {dst}");
        }
    }
    let a_mac = mac_of(&ns, A, "eth0");
    let (a, b) = (mac_str(a_mac), mac_str(mac_of(&ns, B, "eth0")));
    let gw = mac_str(mac_of(&ns, HOST, "br0"));
    let dummy = "02:00:00:00:00:99";
    // A pod claims B's address to the host, and the gateway's to B; then (so that the forged
    // ones have been processed when it shows) one naming its own address to each.
    let round = |expect_poisoned: bool, what: &str| {
        set_neigh(&ns, HOST, B4, "br0", &b);
        set_neigh(&ns, B, BR4, "eth0", &gw);
        set_neigh(&ns, HOST, A4, "br0", dummy);
        set_neigh(&ns, B, A4, "eth0", dummy);
        send_arp(&ns, A, a_mac, B4, BR4, 1); // request to the host "from B"
        send_arp(&ns, A, a_mac, BR4, B4, 2); // reply to B "from the gateway"
        send_arp(&ns, A, a_mac, A4, BR4, 1); // its own address, to the host
        send_arp(&ns, A, a_mac, A4, B4, 2); // and to B
        assert!(wait_neigh(&ns, HOST, A4, "br0", &a), "{what}: the host did not learn A's own address");
        assert!(wait_neigh(&ns, B, A4, "eth0", &a), "{what}: B did not learn A's own address");
        let (host_b, b_gw) = (neigh(&ns, HOST, B4, "br0"), neigh(&ns, B, BR4, "eth0"));
        if expect_poisoned {
            assert_eq!(host_b.as_deref(), Some(a.as_str()), "{what}: the host's entry for B");
            assert_eq!(b_gw.as_deref(), Some(a.as_str()), "{what}: B's entry for the gateway");
        } else {
            assert_eq!(host_b.as_deref(), Some(b.as_str()), "{what}: the host's entry for B was poisoned");
            assert_eq!(b_gw.as_deref(), Some(gw.as_str()), "{what}: B's entry for the gateway was poisoned");
        }
    };
    // Without the tables the forged frames work (so the test can see a poisoning)...
    round(true, "no tables");
    // ...with them they are dropped at A's bridge port, and A's own address still gets through.
    let set: PolicySet = policy::parse_str(std::path::Path::new("kernel.yaml"), POLICIES).expect("policies");
    apply(&ns.open(HOST), None, &compile(&set, &endpoints(true)).tables);
    round(false, "with the tables");
    // An ARP probe (sender 0.0.0.0, RFC 5227) from A still reaches B, which answers it: the
    // answer is what duplicate address detection waits for.
    assert!(probe_answered(&ns, A, a_mac, B4), "B did not answer A's ARP probe");
}

/// Whether an ARP probe (sender address 0.0.0.0) for `tpa` sent from namespace `from`'s eth0
/// gets an ARP reply naming `tpa` as its sender within 3 s (read on a packet socket there).
fn probe_answered(ns: &Namespaces, from: usize, sha: [u8; 6], tpa: &str) -> bool {
    let want: std::net::Ipv4Addr = tpa.parse().unwrap();
    let fd = ns
        .open(from)
        .run(|| unsafe { libc::socket(libc::AF_PACKET, libc::SOCK_RAW, i32::from(0x0806u16.to_be())) })
        .expect("enter netns");
    assert!(fd >= 0, "packet socket: {}", std::io::Error::last_os_error());
    // SAFETY: a fresh socket, closed when `rx` drops; recv and timeouts as on any datagram socket.
    let rx = unsafe { UdpSocket::from_raw_fd(fd) };
    rx.set_read_timeout(Some(Duration::from_millis(200))).unwrap();
    send_arp(ns, from, sha, "0.0.0.0", tpa, 1);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut buf = [0u8; 1500];
    while Instant::now() < deadline {
        let Ok(n) = rx.recv(&mut buf) else { continue };
        // Ethernet (14) + ARP: op at 20..22, sender address at 28..32
        if n >= 42 && buf[12..14] == [0x08, 0x06] && buf[20..22] == [0, 2] && buf[28..32] == want.octets() {
            return true;
        }
    }
    false
}
