//! `cni_bgp::speaker` over real TCP: speakers (and a BIRD 2) in network namespaces of their
//! own, joined by veths, each speaker on its own thread inside its namespace (a current-thread
//! tokio runtime there: its sockets are the namespace's). What is checked is what the agent
//! sees: the `Fib` events (prefix and next hop), `status()` (state, words of the last error)
//! and `routes()`. Namespaces are named with the pid and a tag and deleted by a Drop guard.
//! Needs root, `ip`, `ss` and (for the BIRD test) `bird`/`birdc`.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use cni_bgp::fib;
use cni_bgp::speaker::{PeerSpec, PeerStatus, RouteInfo, Speaker, SpeakerConfig, SpeakerEvent, SpeakerHandle};
use ipnetwork::IpNetwork;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

const T: Duration = Duration::from_secs(20);

fn rt() -> tokio::runtime::Runtime {
    // The speaker's logs, shown with a failing test's output.
    let _ = tracing_subscriber::fmt().with_max_level(tracing::Level::INFO).with_test_writer().try_init();
    tokio::runtime::Builder::new_current_thread().enable_all().build().expect("runtime")
}

fn block_on<F: Future>(f: F) -> F::Output {
    rt().block_on(f)
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("exec ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn net(s: &str) -> IpNetwork {
    s.parse().expect("prefix")
}

fn addr(s: &str) -> IpAddr {
    s.parse().expect("address")
}

/// A network namespace `h1sp<pid><tag>`, deleted on drop.
struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let ns = Ns(format!("h1sp{}{tag}", std::process::id()));
        let _ = Command::new("ip").args(["netns", "del", &ns.0]).output();
        ip(&["netns", "add", &ns.0]);
        ns.ip(&["link", "set", "lo", "up"]);
        ns
    }

    fn path(&self) -> PathBuf {
        PathBuf::from(format!("/run/netns/{}", self.0))
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.0];
        all.extend_from_slice(args);
        ip(&all)
    }

    /// Runs a command inside the namespace; its stdout.
    fn exec(&self, args: &[&str]) -> String {
        let out = Command::new("ip").args(["netns", "exec", &self.0]).args(args).output().expect("exec");
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Established TCP connections to or from port 179.
    fn bgp_connections(&self) -> usize {
        self.exec(&["ss", "-Htn", "state", "established", "( sport = :179 or dport = :179 )"])
            .lines()
            .filter(|l| !l.trim().is_empty())
            .count()
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// One end of a veth: namespace, interface name, IPv4 and IPv6 address.
type End<'a> = (&'a Ns, &'a str, &'a str, &'a str);

/// A veth between two ends, /24 and /64, up (IPv6 without duplicate address detection, so the
/// addresses can be bound at once).
fn veth(a: End<'_>, b: End<'_>) {
    a.0.ip(&["link", "add", a.1, "type", "veth", "peer", "name", b.1, "netns", &b.0 .0]);
    for (ns, n, v4, v6) in [a, b] {
        ns.ip(&["addr", "add", &format!("{v4}/24"), "dev", n]);
        ns.ip(&["addr", "add", &format!("{v6}/64"), "dev", n, "nodad"]);
        ns.ip(&["link", "set", n, "up"]);
    }
}

/// A speaker running in a namespace, and what its events told so far.
struct Node {
    h: SpeakerHandle,
    ev: mpsc::Receiver<SpeakerEvent>,
    /// The FIB as the events built it: prefix → next hop.
    fib: BTreeMap<IpNetwork, IpAddr>,
    /// Every FIB change received, in order.
    changes: Vec<fib::Change>,
    converged: bool,
    ups: Vec<IpAddr>,
    downs: Vec<(IpAddr, String)>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<linux_net::Result<()>>>,
}

impl Node {
    fn start(ns: &Ns, cfg: SpeakerConfig) -> Node {
        Node::try_start(ns, cfg).expect("start the speaker")
    }

    fn try_start(ns: &Ns, cfg: SpeakerConfig) -> cni_bgp::Result<Node> {
        let (tx, rx) = std::sync::mpsc::channel();
        let (stop, stopped) = oneshot::channel::<()>();
        let thread = linux_net::netns::spawn_in(&ns.path(), None, move || {
            rt().block_on(async move {
                let _ = tx.send(Speaker::start(cfg).await);
                let _ = stopped.await;
            })
        })
        .expect("thread in netns");
        let (h, ev) = rx.recv().expect("speaker thread answers")?;
        Ok(Node {
            h,
            ev,
            fib: BTreeMap::new(),
            changes: Vec::new(),
            converged: false,
            ups: Vec::new(),
            downs: Vec::new(),
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn take(&mut self, e: SpeakerEvent) {
        match e {
            SpeakerEvent::Fib(changes) => {
                for c in changes {
                    match &c.via {
                        Some(nh) => self.fib.insert(c.prefix, nh.gw),
                        None => self.fib.remove(&c.prefix),
                    };
                    self.changes.push(c);
                }
            }
            SpeakerEvent::Converged => self.converged = true,
            SpeakerEvent::PeerUp(a) => self.ups.push(a),
            SpeakerEvent::PeerDown { address, reason } => self.downs.push((address, reason)),
        }
    }

    /// Reads events until `cond` holds; panics after `timeout`.
    async fn until(&mut self, what: &str, timeout: Duration, cond: impl Fn(&Node) -> bool) {
        let end = Instant::now() + timeout;
        while !cond(self) {
            match tokio::time::timeout_at(end, self.ev.recv()).await {
                Ok(Some(e)) => self.take(e),
                Ok(None) => panic!("{what}: the speaker stopped"),
                Err(_) => panic!(
                    "{what}: not within {timeout:?}; fib {:?}, downs {:?}, status {:?}",
                    self.fib,
                    self.downs,
                    self.h.status().await
                ),
            }
        }
    }

    /// Reads events for `d` (what happens in that time is the point).
    async fn watch(&mut self, d: Duration) {
        let end = Instant::now() + d;
        while let Ok(Some(e)) = tokio::time::timeout_at(end, self.ev.recv()).await {
            self.take(e);
        }
    }

    fn has(&self, p: &str, via: &str) -> bool {
        self.fib.get(&net(p)) == Some(&addr(via))
    }

    /// Polls `status()` until `cond` holds for the peer at `peer`.
    async fn status_until(&self, peer: &str, what: &str, cond: impl Fn(&PeerStatus) -> bool) -> PeerStatus {
        let end = Instant::now() + T;
        loop {
            let all = self.h.status().await;
            if let Some(s) = all.iter().find(|s| s.address == addr(peer)).filter(|s| cond(s)) {
                return s.clone();
            }
            assert!(Instant::now() < end, "{what}: status {all:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    async fn route(&self, p: &str) -> Option<RouteInfo> {
        self.h.routes().await.into_iter().find(|r| r.prefix == net(p))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn cfg(asn: u32, id: &str, listen: &[&str]) -> SpeakerConfig {
    let mut c = SpeakerConfig::new(asn, id.parse().expect("router id"));
    c.listen = listen.iter().map(|a| SocketAddr::new(addr(a), 179)).collect();
    c
}

fn peer(address: &str, asn: u32, v4: &str, v6: &str) -> PeerSpec {
    let mut p = PeerSpec::new(addr(address), asn);
    p.local_v4 = Some(v4.parse::<Ipv4Addr>().expect("v4"));
    p.local_v6 = Some(v6.parse::<Ipv6Addr>().expect("v6"));
    p
}

/// Two namespaces on one veth: a (10.201.0.1, fd01::1) and b (10.201.0.2, fd01::2).
fn pair(tag: &str) -> (Ns, Ns) {
    let a = Ns::new(&format!("{tag}a"));
    let b = Ns::new(&format!("{tag}b"));
    veth((&a, "a0", "10.201.0.1", "fd01::1"), (&b, "b0", "10.201.0.2", "fd01::2"));
    (a, b)
}

const A4: &str = "10.201.0.1";
const B4: &str = "10.201.0.2";
const A6: &str = "fd01::1";
const B6: &str = "fd01::2";

/// Speakers a and b peered over IPv4 or IPv6 transport, each originating one IPv4 and one
/// IPv6 prefix; both sides learn the other's with the other's address as next hop, with the
/// right AS_PATH; a withdrawal reaches the other side's FIB.
async fn exchange(tag: &str, as_a: u32, as_b: u32, v6_transport: bool) {
    let (na, nb) = pair(tag);
    let mut a = Node::start(&na, cfg(as_a, "192.0.2.1", &[A4, A6]));
    let mut b = Node::start(&nb, cfg(as_b, "192.0.2.2", &[B4, B6]));
    let (pa, pb) = if v6_transport { (B6, A6) } else { (B4, A4) };
    a.h.originate(vec![net("10.50.1.0/24"), net("fd50:1::/64")]).await;
    b.h.originate(vec![net("10.50.2.0/24"), net("fd50:2::/64")]).await;
    a.h.set_peers(vec![peer(pa, as_b, A4, A6)]).await;
    b.h.set_peers(vec![peer(pb, as_a, B4, B6)]).await;
    a.until("a learns b's prefixes", T, |n| n.has("10.50.2.0/24", B4) && n.has("fd50:2::/64", B6)).await;
    b.until("b learns a's prefixes", T, |n| n.has("10.50.1.0/24", A4) && n.has("fd50:1::/64", A6)).await;
    a.until("a converged (b sent End-of-RIB)", T, |n| n.converged).await;
    assert_eq!(a.ups, vec![addr(pa)]);
    let r = a.route("10.50.2.0/24").await.expect("in a's Loc-RIB");
    assert_eq!(r.peer, Some(addr(pa)));
    assert_eq!(r.as_path, if as_a == as_b { vec![] } else { vec![as_b] });
    assert_eq!(r.local_pref, (as_a == as_b).then_some(100));
    let own = a.route("10.50.1.0/24").await.expect("a's own route");
    assert_eq!((own.peer, own.next_hop), (None, None));
    let s = a.status_until(pa, "established", |s| s.state == "Established").await;
    assert_eq!((s.prefixes_received, s.prefixes_sent, s.asn), (2, 2, as_b));
    assert!(s.uptime_secs.is_some());

    // A withdrawal (the IPv6 prefix) and a new prefix reach a's FIB.
    b.h.originate(vec![net("10.50.2.0/24"), net("10.50.3.0/24")]).await;
    a.until("a sees the withdrawal and the new prefix", T, |n| {
        !n.fib.contains_key(&net("fd50:2::/64")) && n.has("10.50.3.0/24", B4)
    })
    .await;
    assert!(a.changes.iter().any(|c| c.prefix == net("fd50:2::/64") && c.via.is_none()));
    assert!(a.has("10.50.2.0/24", B4));
}

#[test]
fn ibgp_over_ipv4_exchanges_ipv4_and_ipv6_routes() {
    block_on(exchange("i4", 64512, 64512, false));
}

#[test]
fn ebgp_over_ipv4_exchanges_ipv4_and_ipv6_routes() {
    block_on(exchange("e4", 64512, 64513, false));
}

#[test]
fn ibgp_over_ipv6_exchanges_ipv4_and_ipv6_routes() {
    block_on(exchange("i6", 64512, 64512, true));
}

#[test]
fn ebgp_over_ipv6_exchanges_ipv4_and_ipv6_routes() {
    block_on(exchange("e6", 4_200_000_001, 64513, true));
}

#[test]
fn a_peer_with_another_as_is_named_in_status() {
    block_on(async {
        let (na, nb) = pair("as");
        let a = Node::start(&na, cfg(64512, "192.0.2.1", &[A4]));
        let b = Node::start(&nb, cfg(64513, "192.0.2.2", &[B4]));
        // a expects 64599 where b is 64513.
        a.h.set_peers(vec![peer(B4, 64599, A4, A6)]).await;
        b.h.set_peers(vec![peer(A4, 64512, B4, B6)]).await;
        let s = a
            .status_until(B4, "a names the AS mismatch", |s| {
                s.last_error.as_deref().is_some_and(|e| e.contains("peer AS"))
            })
            .await;
        assert_eq!(s.last_error.as_deref(), Some("peer AS 64513, configured 64599"));
        assert_ne!(s.state, "Established");
        let s = b
            .status_until(A4, "b names a's NOTIFICATION", |s| {
                s.last_error.as_deref().is_some_and(|e| e.contains("NOTIFICATION"))
            })
            .await;
        assert_eq!(s.last_error.as_deref(), Some("peer sent NOTIFICATION 2/2 (OPEN Message Error: Bad Peer AS)"));
    });
}

#[test]
fn no_listener_is_connection_refused_in_status() {
    block_on(async {
        let (na, _nb) = pair("rf");
        let a = Node::start(&na, cfg(64512, "192.0.2.1", &[]));
        a.h.set_peers(vec![peer(B4, 64513, A4, A6), peer(B6, 64513, A4, A6)]).await;
        let s = a.status_until(B4, "refused over IPv4", |s| s.last_error.is_some()).await;
        assert_eq!(s.last_error.as_deref(), Some("connection refused on 10.201.0.2:179"));
        assert!(matches!(s.state.as_str(), "Active" | "Connect"), "{s:?}");
        let s = a.status_until(B6, "refused over IPv6", |s| s.last_error.is_some()).await;
        assert_eq!(s.last_error.as_deref(), Some("connection refused on [fd01::2]:179"));
    });
}

/// a and b (graceful restart with `restart_time`) peered over IPv4, routes exchanged.
async fn gr_pair(na: &Ns, nb: &Ns, restart_time: u16) -> (Node, Node) {
    let gr = |mut c: SpeakerConfig| {
        c.graceful_restart = Some(restart_time);
        c
    };
    let mut a = Node::start(na, gr(cfg(64512, "192.0.2.1", &[A4])));
    let mut b = Node::start(nb, gr(cfg(64512, "192.0.2.2", &[B4])));
    a.h.originate(vec![net("10.50.1.0/24")]).await;
    b.h.originate(vec![net("10.50.2.0/24"), net("fd50:2::/64")]).await;
    a.h.set_peers(vec![peer(B4, 64512, A4, A6)]).await;
    b.h.set_peers(vec![peer(A4, 64512, B4, B6)]).await;
    a.until("a learns b's routes", T, |n| n.has("10.50.2.0/24", B4) && n.has("fd50:2::/64", B6)).await;
    b.until("b learns a's route", T, |n| n.has("10.50.1.0/24", A4)).await;
    (a, b)
}

fn withdrawn(n: &Node, p: &str) -> bool {
    n.changes.iter().any(|c| c.prefix == net(p) && c.via.is_none())
}

#[test]
fn abort_with_graceful_restart_keeps_routes_until_the_restart_timer() {
    block_on(async {
        let (na, nb) = pair("gr");
        let (mut a, b) = gr_pair(&na, &nb, 4).await;
        b.h.abort().await;
        a.until("a sees the session drop", T, |n| !n.downs.is_empty()).await;
        let down = Instant::now();
        assert_eq!(a.downs[0].0, addr(B4));
        // Helper mode: b's routes stay (stale) for b's restart time, 4 s.
        a.watch(Duration::from_millis(2000)).await;
        assert!(a.has("10.50.2.0/24", B4) && a.has("fd50:2::/64", B6), "kept during the restart time: {:?}", a.fib);
        assert!(!withdrawn(&a, "10.50.2.0/24"), "{:?}", a.changes);
        assert_eq!(a.route("10.50.2.0/24").await.and_then(|r| r.peer), Some(addr(B4)));
        a.until("withdrawn when the restart timer fires", Duration::from_secs(12), |n| {
            withdrawn(n, "10.50.2.0/24") && withdrawn(n, "fd50:2::/64")
        })
        .await;
        let after = down.elapsed();
        assert!(after >= Duration::from_millis(3500) && after < Duration::from_secs(10), "withdrawn after {after:?}");
    });
}

#[test]
fn a_restarting_speaker_is_helped_and_converges_without_a_withdrawal() {
    block_on(async {
        let (na, nb) = pair("rs");
        let (mut a, b) = gr_pair(&na, &nb, 30).await;
        b.h.abort().await;
        a.until("a sees the session drop", T, |n| !n.downs.is_empty()).await;
        drop(b);
        // b comes back as a restarting speaker (its kernel routes kept): R bit, deferred
        // selection, Converged once a sent End-of-RIB.
        let mut c = cfg(64512, "192.0.2.2", &[B4]);
        c.graceful_restart = Some(30);
        c.restarting = true;
        let mut b = Node::start(&nb, c);
        b.h.originate(vec![net("10.50.2.0/24"), net("fd50:2::/64")]).await;
        b.h.set_peers(vec![peer(A4, 64512, B4, B6)]).await;
        b.until("b converges and relearns a's route", T, |n| n.converged && n.has("10.50.1.0/24", A4)).await;
        a.until("a has the session back", T, |n| n.ups.len() == 2).await;
        a.status_until(B4, "established again", |s| s.state == "Established" && s.prefixes_received == 2).await;
        a.watch(Duration::from_millis(500)).await;
        assert!(!withdrawn(&a, "10.50.2.0/24") && !withdrawn(&a, "fd50:2::/64"), "{:?}", a.changes);
        assert!(a.has("10.50.2.0/24", B4) && a.has("fd50:2::/64", B6));
    });
}

#[test]
fn stop_sends_cease_and_the_peer_withdraws_at_once() {
    block_on(async {
        let (na, nb) = pair("st");
        // Graceful restart on both sides: a Cease still withdraws at once (RFC 4724 helper
        // mode is for sessions that end without a NOTIFICATION).
        let (mut a, b) = gr_pair(&na, &nb, 60).await;
        b.h.stop().await;
        a.until("withdrawn at once", Duration::from_secs(3), |n| {
            withdrawn(n, "10.50.2.0/24") && withdrawn(n, "fd50:2::/64")
        })
        .await;
        assert_eq!(
            a.downs.first().map(|d| d.1.as_str()),
            Some("peer sent NOTIFICATION 6/2 (Cease: Administrative Shutdown)")
        );
        let s = a.status_until(B4, "not established", |s| s.state != "Established").await;
        assert_eq!(s.last_error.as_deref(), Some("peer sent NOTIFICATION 6/2 (Cease: Administrative Shutdown)"));
    });
}

#[test]
fn simultaneous_connections_end_in_one_session() {
    block_on(async {
        let (na, nb) = pair("co");
        for round in 0..3 {
            let mut a = Node::start(&na, cfg(64512, "192.0.2.1", &[A4]));
            let mut b = Node::start(&nb, cfg(64512, "192.0.2.2", &[B4]));
            a.h.originate(vec![net("10.50.1.0/24")]).await;
            b.h.originate(vec![net("10.50.2.0/24")]).await;
            // Both connect at once: two TCP connections, collision detection keeps one.
            tokio::join!(a.h.set_peers(vec![peer(B4, 64512, A4, A6)]), b.h.set_peers(vec![peer(A4, 64512, B4, B6)]));
            a.until("a learns", T, |n| n.has("10.50.2.0/24", B4)).await;
            b.until("b learns", T, |n| n.has("10.50.1.0/24", A4)).await;
            let end = Instant::now() + T;
            while na.bgp_connections() != 1 {
                assert!(Instant::now() < end, "round {round}: {} BGP connections", na.bgp_connections());
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            a.watch(Duration::from_millis(300)).await;
            assert_eq!((a.ups.len(), a.downs.len()), (1, 0), "round {round}: one session, no flap: {:?}", a.downs);
            assert_eq!(a.h.status().await[0].state, "Established");
            assert_eq!(b.h.status().await[0].state, "Established");
        }
    });
}

#[test]
fn a_route_reflector_reflects_between_its_clients() {
    block_on(async {
        let r = Ns::new("rrr");
        let cs: Vec<Ns> = (1..=3).map(|i| Ns::new(&format!("rrc{i}"))).collect();
        for (i, c) in cs.iter().enumerate() {
            let i = i + 1;
            let (rn, r4, r6) = (format!("r{i}"), format!("10.202.{i}.1"), format!("fd02:{i}::1"));
            let (c4, c6) = (format!("10.202.{i}.2"), format!("fd02:{i}::2"));
            veth((&r, &rn, &r4, &r6), (c, "c0", &c4, &c6));
        }
        let mut rc = cfg(64512, "192.0.2.100", &["0.0.0.0"]);
        rc.cluster_id = Some("192.0.2.100".parse().expect("id"));
        let mut rr = Node::start(&r, rc);
        rr.h.set_peers(
            (1..=3)
                .map(|i| {
                    let mut p =
                        peer(&format!("10.202.{i}.2"), 64512, &format!("10.202.{i}.1"), &format!("fd02:{i}::1"));
                    p.rr_client = true;
                    p.kind = "route reflector client".into();
                    p
                })
                .collect(),
        )
        .await;
        let mut clients = Vec::new();
        for (i, c) in cs.iter().enumerate() {
            let i = i + 1;
            let n = Node::start(c, cfg(64512, &format!("192.0.2.{i}"), &[]));
            n.h.originate(vec![net(&format!("10.60.{i}.0/24")), net(&format!("fd60:{i}::/64"))]).await;
            n.h.set_peers(vec![peer(
                &format!("10.202.{i}.1"),
                64512,
                &format!("10.202.{i}.2"),
                &format!("fd02:{i}::2"),
            )])
            .await;
            clients.push(n);
        }
        // Every client learns every other client's routes, with the originating client's
        // next hop (a reflector does not change it).
        for (i, n) in clients.iter_mut().enumerate() {
            let i = i + 1;
            n.until(&format!("client {i} learns the others"), T, |n| {
                (1..=3).filter(|j| *j != i).all(|j| {
                    n.has(&format!("10.60.{j}.0/24"), &format!("10.202.{j}.2"))
                        && n.has(&format!("fd60:{j}::/64"), &format!("fd02:{j}::2"))
                })
            })
            .await;
        }
        rr.until("the reflector has all six", T, |n| n.fib.len() == 6).await;
        let r1 = clients[2].route("10.60.1.0/24").await.expect("client 3 has client 1's route");
        assert_eq!((r1.peer, r1.as_path.clone(), r1.local_pref), (Some(addr("10.202.3.1")), vec![], Some(100)));
        // A withdrawal at client 1 is reflected too.
        clients[0].h.originate(vec![net("fd60:1::/64")]).await;
        clients[2].until("client 3 sees the withdrawal", T, |n| withdrawn(n, "10.60.1.0/24")).await;
    });
}

/// BIRD 2 in a namespace, with its own config, control socket and pid file under a directory
/// of its own; killed and cleaned up on drop.
struct Bird {
    dir: PathBuf,
    ns: String,
}

impl Bird {
    fn start(ns: &Ns, conf: &str) -> Bird {
        let dir = std::env::temp_dir().join(format!("h1sp-bird-{}-{}", std::process::id(), ns.0));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("bird dir");
        let b = Bird { dir, ns: ns.0.clone() };
        std::fs::write(b.dir.join("bird.conf"), conf).expect("bird.conf");
        let out = Command::new("ip")
            .args(["netns", "exec", &ns.0, "bird", "-c"])
            .arg(b.dir.join("bird.conf"))
            .arg("-s")
            .arg(b.dir.join("bird.ctl"))
            .arg("-P")
            .arg(b.dir.join("bird.pid"))
            .output()
            .expect("bird 2 is installed (apt-get install bird2)");
        assert!(out.status.success(), "bird: {}", String::from_utf8_lossy(&out.stderr));
        b
    }

    fn show(&self, what: &[&str]) -> String {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.ns, "birdc", "-s"])
            .arg(self.dir.join("bird.ctl"))
            .args(what)
            .output()
            .expect("birdc");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        if let Ok(pid) = std::fs::read_to_string(self.dir.join("bird.pid")) {
            let _ = Command::new("kill").arg(pid.trim()).output();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn bird_and_our_speaker_exchange_ipv4_and_ipv6_routes_over_ebgp() {
    block_on(async {
        let (na, nb) = pair("bd");
        let bird = Bird::start(
            &nb,
            &format!(
                "router id {B4};
protocol device {{}}
protocol kernel k4 {{ ipv4 {{ import none; export filter {{ if source = RTS_BGP then accept; reject; }}; }}; }}
protocol kernel k6 {{ ipv6 {{ import none; export filter {{ if source = RTS_BGP then accept; reject; }}; }}; }}
protocol static s4 {{ ipv4; route 10.70.1.0/24 blackhole; }}
protocol static s6 {{ ipv6; route fd70:1::/64 blackhole; }}
protocol bgp ours {{
  local {B4} as 64513; neighbor {A4} as 64512;
  ipv4 {{ import all; export all; }};
  ipv6 {{ import all; export all; next hop address {B6}; }};
}}
"
            ),
        );
        let mut a = Node::start(&na, cfg(64512, "192.0.2.1", &[A4]));
        a.h.originate(vec![net("10.50.1.0/24"), net("fd50:1::/64")]).await;
        let mut p = peer(B4, 64513, A4, A6);
        p.external = true;
        p.kind = "global peer".into();
        a.h.set_peers(vec![p]).await;
        // BIRD's routes reach our FIB events with BIRD's next hops.
        a.until("BIRD's routes in our FIB", Duration::from_secs(30), |n| {
            n.has("10.70.1.0/24", B4) && n.has("fd70:1::/64", B6)
        })
        .await;
        let r = a.route("10.70.1.0/24").await.expect("learned from BIRD");
        assert_eq!(r.as_path, vec![64513]);
        // Ours reach BIRD's table and, through its kernel protocol, its namespace's kernel.
        let end = Instant::now() + Duration::from_secs(30);
        loop {
            let v4 = nb.ip(&["-4", "route", "show", "10.50.1.0/24"]);
            let v6 = nb.ip(&["-6", "route", "show", "fd50:1::/64"]);
            if v4.contains("via 10.201.0.1") && v6.contains("via fd01::1") {
                assert!(v4.contains("proto bird"), "{v4}");
                break;
            }
            assert!(
                Instant::now() < end,
                "not in BIRD's kernel: {v4:?} {v6:?}; birdc: {}",
                bird.show(&["show", "route", "all"])
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let shown = bird.show(&["show", "route", "10.50.1.0/24", "all"]);
        assert!(shown.contains("BGP.as_path: 64512"), "{shown}");
        // A withdrawal leaves BIRD's kernel table.
        a.h.originate(vec![net("fd50:1::/64")]).await;
        let end = Instant::now() + Duration::from_secs(10);
        while !nb.ip(&["-4", "route", "show", "10.50.1.0/24"]).trim().is_empty() {
            assert!(Instant::now() < end, "still in BIRD's kernel: {}", bird.show(&["show", "route", "all"]));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // BIRD holds our one route left (fd50:1::/64); we hold BIRD's two.
        let s = a.status_until(B4, "established", |s| s.state == "Established").await;
        assert_eq!((s.prefixes_sent, s.prefixes_received), (1, 2), "{s:?}");
    });
}

#[test]
fn a_connection_from_an_address_that_is_not_a_peer_is_closed() {
    block_on(async {
        let (na, nb) = pair("un");
        let a = Node::start(&na, cfg(64512, "192.0.2.1", &[A4]));
        a.h.set_peers(vec![peer("10.201.0.9", 64513, A4, A6)]).await;
        // From b (not configured): the connection is accepted, then closed without a word.
        let got = linux_net::netns::run_in_bounded(&nb.path(), None, Duration::from_secs(10), || {
            use std::io::Read;
            let mut s = std::net::TcpStream::connect((addr(A4), 179)).expect("connect");
            s.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
            let mut buf = [0u8; 64];
            s.read(&mut buf).map_err(|e| e.kind())
        })
        .expect("thread in b")
        .expect("answered in time");
        assert_eq!(got, Ok(0), "closed, nothing sent");
        // No session came of it: a is still trying to reach 10.201.0.9 (nobody answers ARP).
        let s = &a.h.status().await[0];
        assert!(matches!(s.state.as_str(), "Connect" | "Active"), "{s:?}");
    });
}

/// 100k prefixes from one speaker to another: they arrive in a few FIB batches (one per burst
/// of messages, not one per prefix). Prints the time (bounded only loosely: the machine is
/// shared).
#[test]
fn a_hundred_thousand_prefixes_arrive_in_few_fib_batches() {
    block_on(async {
        const N: u32 = 100_000;
        let (na, nb) = pair("hk");
        let mut a = Node::start(&na, cfg(64512, "192.0.2.1", &[A4]));
        let b = Node::start(&nb, cfg(64513, "192.0.2.2", &[B4]));
        let many: Vec<IpNetwork> = (0..N)
            .map(|i| IpNetwork::new(IpAddr::V4(Ipv4Addr::from(0x0b00_0000 + (i << 8))), 24).expect("prefix"))
            .collect();
        b.h.originate(many).await;
        b.h.set_peers(vec![peer(A4, 64512, B4, B6)]).await;
        let t0 = Instant::now();
        a.h.set_peers(vec![peer(B4, 64513, A4, A6)]).await;
        let mut batches = 0usize;
        let end = t0 + Duration::from_secs(120);
        while a.fib.len() < N as usize {
            match tokio::time::timeout_at(end, a.ev.recv()).await {
                Ok(Some(e)) => {
                    batches += usize::from(matches!(e, SpeakerEvent::Fib(_)));
                    a.take(e);
                }
                other => panic!("{} of {N} after {:?}: {other:?}", a.fib.len(), t0.elapsed()),
            }
        }
        let took = t0.elapsed();
        eprintln!("speaker: {N} prefixes in a's FIB events after {took:?}, in {batches} batches");
        assert!(batches <= 2_000, "{batches} FIB events for {N} prefixes");
        assert!(a.has("11.1.134.0/24", B4));
    });
}

#[test]
fn a_silent_peer_is_dropped_when_the_hold_timer_expires() {
    block_on(async {
        let (na, nb) = pair("ho");
        let hold = |mut c: SpeakerConfig| {
            c.hold_time = 3;
            c.graceful_restart = Some(60);
            c
        };
        let mut a = Node::start(&na, hold(cfg(64512, "192.0.2.1", &[A4])));
        let b = Node::start(&nb, hold(cfg(64512, "192.0.2.2", &[B4])));
        b.h.originate(vec![net("10.50.2.0/24")]).await;
        a.h.set_peers(vec![peer(B4, 64512, A4, A6)]).await;
        b.h.set_peers(vec![peer(A4, 64512, B4, B6)]).await;
        a.until("a learns b's route", T, |n| n.has("10.50.2.0/24", B4)).await;
        // Keepalives (every second) keep the session up past the hold time.
        a.watch(Duration::from_secs(4)).await;
        assert!(a.downs.is_empty(), "{:?}", a.downs);
        // b goes silent without closing anything: its link goes down.
        nb.ip(&["link", "set", "b0", "down"]);
        let t0 = Instant::now();
        a.until("withdrawn when the hold timer expires", Duration::from_secs(10), |n| withdrawn(n, "10.50.2.0/24"))
            .await;
        assert!(t0.elapsed() <= Duration::from_secs(5), "{:?}", t0.elapsed());
        assert_eq!(a.downs.first().map(|d| d.1.as_str()), Some("hold timer expired"));
        let s = a.status_until(B4, "not established", |s| s.state != "Established").await;
        assert_eq!(s.last_error.as_deref(), Some("hold timer expired"));
    });
}

/// `cargo test --release -p cni-bgp --test speaker -- --ignored --nocapture bench`: BIRD sends
/// 100k IPv4 prefixes; prints the time from `set_peers` until all are in our FIB events, and
/// how many events carried them.
#[test]
#[ignore = "a measurement, not a check"]
fn bench_bird_feeds_a_hundred_thousand_prefixes() {
    block_on(async {
        const N: u32 = 100_000;
        let (na, nb) = pair("bb");
        let mut conf = format!(
            "router id {B4};\nprotocol device {{}}\nprotocol bgp ours {{ local {B4} as 64513; neighbor {A4} as 64512; \
             ipv4 {{ import none; export all; }}; }}\nprotocol static s4 {{ ipv4;\n"
        );
        for i in 0..N {
            conf.push_str(&format!("route {}/24 blackhole;\n", Ipv4Addr::from(0x0b00_0000 + (i << 8))));
        }
        conf.push_str("}\n");
        let _bird = Bird::start(&nb, &conf);
        let mut a = Node::start(&na, cfg(64512, "192.0.2.1", &[A4]));
        let rss0 = rss_kib();
        let t0 = Instant::now();
        a.h.set_peers(vec![peer(B4, 64513, A4, A6)]).await;
        let mut batches = 0usize;
        let end = t0 + Duration::from_secs(300);
        let mut up = None;
        while a.fib.len() < N as usize {
            match tokio::time::timeout_at(end, a.ev.recv()).await {
                Ok(Some(e)) => {
                    batches += usize::from(matches!(e, SpeakerEvent::Fib(_)));
                    if matches!(e, SpeakerEvent::PeerUp(_)) {
                        up = Some(t0.elapsed());
                    }
                    a.take(e);
                }
                other => panic!("{} of {N} after {:?}: {other:?}", a.fib.len(), t0.elapsed()),
            }
        }
        eprintln!(
            "speaker bench: session up after {up:?}; {N} prefixes from BIRD in the FIB events after {:?}, in {batches} \
             batches; this process used {:.2} s of CPU; its RSS grew by {} KiB (the test's FIB map included)",
            t0.elapsed(),
            cpu_secs(),
            rss_kib() - rss0
        );
    });
}

/// User + system CPU time of this process so far (/proc/self/stat, clock ticks of 10 ms).
fn cpu_secs() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").expect("stat");
    let after = stat.rsplit_once(") ").expect("comm").1;
    let f: Vec<&str> = after.split(' ').collect();
    let ticks: u64 = f[11].parse::<u64>().expect("utime") + f[12].parse::<u64>().expect("stime");
    ticks as f64 / 100.0
}

#[test]
fn a_peer_that_restarts_unnoticed_replaces_its_old_session_and_keeps_its_routes() {
    block_on(async {
        let (na, nb) = pair("ru");
        let (mut a, b) = gr_pair(&na, &nb, 30).await;
        // b dies without a's noticing: its FIN and RST never leave its namespace.
        nb.exec(&["nft", "add table inet h1drop"]);
        nb.exec(&["nft", "add chain inet h1drop out { type filter hook output priority 0; }"]);
        nb.exec(&["nft", "add rule inet h1drop out tcp flags & (fin | rst) != 0 drop"]);
        b.h.abort().await;
        drop(b);
        // b's agent is back (restarting, its routes kept) and connects while a still holds
        // the old session as Established: RFC 4724 §4.2, the old session is over, its routes
        // stay (stale) and the new session takes over.
        let mut c = cfg(64512, "192.0.2.2", &[B4]);
        c.graceful_restart = Some(30);
        c.restarting = true;
        let mut b = Node::start(&nb, c);
        b.h.originate(vec![net("10.50.2.0/24"), net("fd50:2::/64")]).await;
        b.h.set_peers(vec![peer(A4, 64512, B4, B6)]).await;
        b.until("b converges and relearns a's route", T, |n| n.converged && n.has("10.50.1.0/24", A4)).await;
        a.until("a has the new session", T, |n| n.ups.len() == 2).await;
        assert_eq!(a.downs.first().map(|d| d.1.as_str()), Some("the peer reconnected (graceful restart)"));
        a.status_until(B4, "established again", |s| s.state == "Established" && s.prefixes_received == 2).await;
        a.watch(Duration::from_millis(500)).await;
        assert!(!withdrawn(&a, "10.50.2.0/24") && !withdrawn(&a, "fd50:2::/64"), "{:?}", a.changes);
        nb.exec(&["nft", "delete table inet h1drop"]);
    });
}

#[test]
fn converged_comes_at_once_without_peers_and_waits_for_a_configured_one() {
    block_on(async {
        let (na, nb) = pair("cv");
        let mut a = Node::start(&na, cfg(64512, "192.0.2.1", &[A4]));
        a.h.originate(vec![net("10.50.1.0/24")]).await;
        a.h.set_peers(vec![]).await;
        a.until("converged with no peers", Duration::from_secs(2), |n| n.converged).await;
        drop(a);

        // A restarting speaker with a peer that is not there yet: no Converged (the agent
        // would sweep the kernel's stale routes) until the peer has sent its End-of-RIB.
        let mut c = cfg(64512, "192.0.2.1", &[A4]);
        c.graceful_restart = Some(120);
        c.restarting = true;
        let mut r = Node::start(&na, c);
        r.h.set_peers(vec![peer(B4, 64512, A4, A6)]).await;
        r.watch(Duration::from_millis(1500)).await;
        assert!(!r.converged, "converged while the peer is away");
        let b = Node::start(&nb, cfg(64512, "192.0.2.2", &[B4]));
        b.h.originate(vec![net("10.50.2.0/24")]).await;
        b.h.set_peers(vec![peer(A4, 64512, B4, B6)]).await;
        r.until("converged once the peer's table is in", T, |n| n.converged).await;
        // The deferred selection ran before Converged: the peer's route was in an earlier event.
        assert!(r.has("10.50.2.0/24", B4));
    });
}

#[test]
fn an_external_peer_gets_only_our_own_routes_until_it_is_a_mesh_peer() {
    block_on(async {
        let (na, nb) = pair("ex");
        let nc = Ns::new("exc");
        veth((&na, "a1", "10.204.0.1", "fd04::1"), (&nc, "c0", "10.204.0.2", "fd04::2"));
        let a = Node::start(&na, cfg(64512, "192.0.2.1", &[A4, "10.204.0.1"]));
        let b = Node::start(&nb, cfg(64512, "192.0.2.2", &[B4]));
        let mut c = Node::start(&nc, cfg(64513, "192.0.2.3", &["10.204.0.2"]));
        a.h.originate(vec![net("10.50.1.0/24")]).await;
        b.h.originate(vec![net("10.50.2.0/24")]).await;
        c.h.set_peers(vec![peer("10.204.0.1", 64512, "10.204.0.2", "fd04::2")]).await;
        b.h.set_peers(vec![peer(A4, 64512, B4, B6)]).await;
        let mut ext = peer("10.204.0.2", 64513, "10.204.0.1", "fd04::1");
        ext.external = true;
        a.h.set_peers(vec![peer(B4, 64512, A4, A6), ext.clone()]).await;
        c.until("c has a's own route, next hop a", T, |n| n.has("10.50.1.0/24", "10.204.0.1") && n.converged).await;
        a.status_until(B4, "a learned b's route", |s| s.prefixes_received == 1).await;
        c.watch(Duration::from_millis(300)).await;
        assert!(!c.fib.contains_key(&net("10.50.2.0/24")), "b's route leaked to the external peer: {:?}", c.fib);
        let s = a.status_until("10.204.0.2", "external", |s| s.state == "Established").await;
        assert_eq!(s.prefixes_sent, 1);
        // The same peer, no longer external (a changed spec: removed and added again): it gets
        // what a learned too, with a's AS in front.
        ext.external = false;
        a.h.set_peers(vec![peer(B4, 64512, A4, A6), ext]).await;
        c.until("c gets b's route through a", T, |n| n.has("10.50.2.0/24", "10.204.0.1")).await;
        let r = c.route("10.50.2.0/24").await.expect("learned");
        assert_eq!(r.as_path, vec![64512]);
    });
}

#[test]
fn the_listening_port_is_free_when_stop_or_abort_returns() {
    block_on(async {
        let (_na, nb) = pair("lp");
        let first = Node::start(&nb, cfg(64512, "192.0.2.2", &[B4, B6]));
        // Taken while it runs: the error names the address.
        let e = Node::try_start(&nb, cfg(64512, "192.0.2.2", &[B4])).err().expect("port 179 is taken");
        assert!(e.to_string().starts_with("BGP listener on 10.201.0.2:179: "), "{e}");
        first.h.abort().await;
        // The old speaker's runtime still runs; its listener is closed all the same.
        let second = Node::try_start(&nb, cfg(64512, "192.0.2.2", &[B4, B6])).expect("bound right after abort");
        second.h.stop().await;
        let _third = Node::try_start(&nb, cfg(64512, "192.0.2.2", &[B4, B6])).expect("bound right after stop");
        drop(first);
    });
}

/// This process's resident set (VmRSS, KiB).
fn rss_kib() -> i64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).and_then(|v| v.parse().ok()).expect("VmRSS value")
}
