//! Our speaker (`cni_bgp::speaker`) running inside a test's network namespace, with its Fib
//! events applied to that namespace's kernel by `cni_bgp::fib::Fib`, as the agent does.
//!
//! The speaker runs on a thread of its own that entered the namespace and drives a
//! current-thread tokio runtime: every socket it opens (listeners, outgoing connections) and
//! the route socket of the Fib live in the namespace. The test thread calls the speaker's
//! handle through a runtime of its own (the handle only sends messages). Dropping the node
//! ends the thread and its runtime, which closes every session without a NOTIFICATION.

#![allow(dead_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use cni_bgp::fib::{Fib, MAIN_TABLE, PROTOCOL};
use cni_bgp::speaker::{PeerSpec, PeerStatus, RouteInfo, Speaker, SpeakerConfig, SpeakerEvent, SpeakerHandle};
use ipnetwork::IpNetwork;
use testkit::bgp::{kernel_route, poll, KernelRoute};

pub struct OurNode {
    pub ns: String,
    pub handle: SpeakerHandle,
    rt: tokio::runtime::Runtime,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<linux_net::Result<()>>>,
    /// PeerUp / PeerDown / Converged as they came, every Fib withdrawal ("withdraw PREFIX")
    /// and kernel refusals, in words.
    pub events: Arc<Mutex<Vec<String>>>,
}

impl OurNode {
    /// Starts the speaker in netns `ns` (a name under /run/netns).
    pub fn start(ns: &str, cfg: SpeakerConfig) -> OurNode {
        let (tx, rx) = std::sync::mpsc::channel::<Result<SpeakerHandle, String>>();
        let (stop_tx, mut stop_rx) = tokio::sync::oneshot::channel::<()>();
        let events = Arc::new(Mutex::new(Vec::new()));
        let ev_log = events.clone();
        let path = PathBuf::from(format!("/run/netns/{ns}"));
        let thread = linux_net::netns::spawn_in(&path, None, move || {
            let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
                Ok(rt) => rt,
                Err(e) => {
                    let _ = tx.send(Err(format!("tokio runtime: {e}")));
                    return;
                }
            };
            rt.block_on(async move {
                let mut fib = match linux_net::netlink::Netlink::open() {
                    Ok(nl) => Fib::new(nl, MAIN_TABLE),
                    Err(e) => {
                        let _ = tx.send(Err(format!("netlink: {e}")));
                        return;
                    }
                };
                let (handle, mut events) = match Speaker::start(cfg).await {
                    Ok(x) => x,
                    Err(e) => {
                        let _ = tx.send(Err(format!("speaker start: {e}")));
                        return;
                    }
                };
                let _ = tx.send(Ok(handle));
                loop {
                    tokio::select! {
                        _ = &mut stop_rx => break,
                        ev = events.recv() => match ev {
                            None => break,
                            Some(SpeakerEvent::Fib(changes)) => {
                                let mut log = ev_log.lock().unwrap();
                                for c in changes.iter().filter(|c| c.via.is_none()) {
                                    log.push(format!("withdraw {}", c.prefix));
                                }
                                drop(log);
                                match fib.apply(changes) {
                                Ok(failures) => {
                                    for f in failures {
                                        ev_log.lock().unwrap().push(format!("fib refused {}: {}", f.prefix, f.error));
                                    }
                                }
                                Err(e) => ev_log.lock().unwrap().push(format!("fib error: {e}")),
                                }
                            }
                            Some(SpeakerEvent::Converged) => ev_log.lock().unwrap().push("converged".into()),
                            Some(SpeakerEvent::PeerUp(a)) => ev_log.lock().unwrap().push(format!("up {a}")),
                            Some(SpeakerEvent::PeerDown { address, reason }) => {
                                ev_log.lock().unwrap().push(format!("down {address}: {reason}"))
                            }
                        },
                    }
                }
            });
        })
        .expect("spawn the speaker's thread in the netns");
        let handle = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(Ok(h)) => h,
            Ok(Err(e)) => panic!("our speaker in {ns}: {e}"),
            Err(e) => panic!("our speaker in {ns} did not start: {e}"),
        };
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("test runtime");
        OurNode { ns: ns.to_string(), handle, rt, stop: Some(stop_tx), thread: Some(thread), events }
    }

    pub fn set_peers(&self, peers: Vec<PeerSpec>) {
        self.rt.block_on(self.handle.set_peers(peers))
    }

    pub fn originate(&self, prefixes: Vec<IpNetwork>) {
        self.rt.block_on(self.handle.originate(prefixes))
    }

    pub fn status(&self) -> Vec<PeerStatus> {
        self.rt.block_on(self.handle.status())
    }

    pub fn routes(&self) -> Vec<RouteInfo> {
        self.rt.block_on(self.handle.routes())
    }

    pub fn peer(&self, addr: IpAddr) -> Option<PeerStatus> {
        self.status().into_iter().find(|p| p.address == addr)
    }

    /// Stop without notifying: what a crash looks like to the peers.
    pub fn abort(&self) {
        self.rt.block_on(self.handle.abort())
    }

    pub fn wait_established(&self, addr: IpAddr, timeout: Duration) {
        poll(timeout, &format!("our session with {addr} Established"), || {
            Ok(self.peer(addr).is_some_and(|p| p.state == "Established"))
        })
        .unwrap_or_else(|e| panic!("{e}; status: {:?}; events: {:?}", self.peer(addr), self.events()));
    }

    /// Waits until the Loc-RIB has `prefix` learned from a peer; returns the route.
    pub fn wait_learned(&self, prefix: IpNetwork, timeout: Duration) -> RouteInfo {
        let mut found = None;
        poll(timeout, &format!("our speaker learns {prefix}"), || {
            found = self.routes().into_iter().find(|r| r.prefix == prefix && r.peer.is_some());
            Ok(found.is_some())
        })
        .unwrap_or_else(|e| panic!("{e}; routes: {:?}; events: {:?}", self.routes(), self.events()));
        found.expect("found")
    }

    /// Waits until the Loc-RIB has no route for `prefix` learned from a peer.
    pub fn wait_not_learned(&self, prefix: IpNetwork, timeout: Duration) {
        poll(timeout, &format!("our speaker withdraws {prefix}"), || {
            Ok(!self.routes().iter().any(|r| r.prefix == prefix && r.peer.is_some()))
        })
        .unwrap_or_else(|e| panic!("{e}; routes: {:?}", self.routes()));
    }

    /// Our kernel route for `prefix` (protocol 76 only).
    pub fn kernel(&self, prefix: IpNetwork) -> Option<KernelRoute> {
        kernel_route(&self.ns, prefix).expect("ip route").filter(|r| r.protocol == PROTOCOL.to_string())
    }

    pub fn wait_kernel(&self, prefix: IpNetwork, timeout: Duration) -> KernelRoute {
        let mut found = None;
        poll(timeout, &format!("{prefix} in our kernel (proto {PROTOCOL})"), || {
            found = self.kernel(prefix);
            Ok(found.is_some())
        })
        .unwrap_or_else(|e| panic!("{e}; events: {:?}", self.events()));
        found.expect("found")
    }

    pub fn wait_no_kernel(&self, prefix: IpNetwork, timeout: Duration) {
        poll(timeout, &format!("{prefix} gone from our kernel"), || Ok(self.kernel(prefix).is_none()))
            .unwrap_or_else(|e| panic!("{e}"));
    }

    pub fn events(&self) -> Vec<String> {
        self.events.lock().unwrap().clone()
    }
}

impl Drop for OurNode {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        if let Some(t) = self.thread.take() {
            let start = Instant::now();
            while !t.is_finished() && start.elapsed() < Duration::from_secs(10) {
                std::thread::sleep(Duration::from_millis(20));
            }
            if t.is_finished() {
                let _ = t.join();
            }
        }
    }
}

/// A peer of our speaker with our node addresses as sources / next-hop-self.
pub fn peer(address: IpAddr, asn: u32, local_v4: std::net::Ipv4Addr, local_v6: Option<std::net::Ipv6Addr>) -> PeerSpec {
    let mut p = PeerSpec::new(address, asn);
    p.local_v4 = Some(local_v4);
    p.local_v6 = local_v6;
    p
}

pub fn net(s: &str) -> IpNetwork {
    s.parse().expect("prefix")
}
