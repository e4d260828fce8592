//! `cni_bgp::speaker` over real TCP: speakers (and a BIRD 2) in network namespaces of their
//! own, joined by veths, each speaker on its own thread inside its namespace (a current-thread
//! tokio runtime there: its sockets are the namespace's). What is checked is what the agent
//! sees: the `Fib` events (prefix and next hop), `status()` (state, words of the last error)
//! and `routes()`. Namespaces are named with the pid and a tag and deleted by a Drop guard.
//! Needs root, `ip`, `ss` and (for the BIRD test) `bird`/`birdc`.

use std::collections::{BTreeMap, HashMap};
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

/// A veth between `a` (interface `an`, addresses `a4`/`a6`) and `b` (`bn`, `b4`/`b6`), /24 and
/// /64, up (IPv6 without duplicate address detection, so the addresses can be bound at once).
fn veth(a: &Ns, an: &str, a4: &str, a6: &str, b: &Ns, bn: &str, b4: &str, b6: &str) {
    a.ip(&["link", "add", an, "type", "veth", "peer", "name", bn, "netns", &b.0]);
    for (ns, n, v4, v6) in [(a, an, a4, a6), (b, bn, b4, b6)] {
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
    veth(&a, "a0", "10.201.0.1", "fd01::1", &b, "b0", "10.201.0.2", "fd01::2");
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
