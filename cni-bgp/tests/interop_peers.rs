//! Our speaker (`cni_bgp::speaker`, its Fib events applied by `cni_bgp::fib::Fib`) against the
//! BGP daemons the industry runs: BIRD 2, GoBGP 3 and FRR 8 from Debian, each in a network
//! namespace of its own (testkit::bgp fixtures), on one dual-stack L2 segment with ours.
//! iBGP and eBGP; one session over IPv4 carrying IPv4 unicast and one over IPv6 carrying IPv6
//! unicast (MP_REACH_NLRI). Routes flow both ways and reach each side's kernel: ours under
//! protocol 76, BIRD's (`proto bird`) and FRR's (`proto bgp`); GoBGP runs with zebra off, so
//! its side is checked in its RIB. A daemon that crashes has its routes withdrawn on our side
//! (kernel included), and relearned when it comes back.
//!
//! Needs root, bird2, gobgpd and frr (a missing daemon fails the test). Hold times are the
//! daemons' defaults (BIRD 240 s, GoBGP 90 s, FRR 180 s; ours 90 s): nothing here waits for one.

mod common;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use cni_bgp::speaker::SpeakerConfig;
use common::{net, peer, OurNode};
use ipnetwork::IpNetwork;
use testkit::bgp::{require_daemons, wait_kernel_route, wait_no_kernel_route, BgpDaemon, Kind, Neighbor, PeerConfig};
use testkit::lab::Lab;

const T: Duration = Duration::from_secs(60);

struct Pair {
    // Field order: the node and the daemon go before the lab's namespaces.
    node: OurNode,
    daemon: Box<dyn BgpDaemon>,
    their_ns: String,
    our4: Ipv4Addr,
    our6: Ipv6Addr,
    their4: Ipv4Addr,
    their6: Ipv6Addr,
    our_as: u32,
    their_as: u32,
    _lab: Lab,
}

const OURS: [&str; 2] = ["10.91.1.0/24", "fd00:91:1::/48"];
const THEIRS: [&str; 2] = ["10.92.1.0/24", "fd00:92:1::/48"];

fn their_config(p: &PairAddrs, their_as: u32, our_as: u32, gr: Option<u16>) -> PeerConfig {
    let mut c = PeerConfig::new(p.their4, their_as)
        .neighbor(Neighbor::new(IpAddr::V4(p.our4), our_as))
        .neighbor(Neighbor::new(IpAddr::V6(p.our6), our_as))
        .route(net(THEIRS[0]))
        .route(net(THEIRS[1]));
    c.graceful_restart = gr;
    c
}

struct PairAddrs {
    our4: Ipv4Addr,
    our6: Ipv6Addr,
    their4: Ipv4Addr,
    their6: Ipv6Addr,
}

/// Our speaker on host 0, `kind` on host 1, both sessions configured on both sides and up.
fn pair(kind: Kind, ebgp: bool, hint: &str) -> Pair {
    pair_with(kind, ebgp, hint, None)
}

/// [`pair`], both sides advertising graceful restart with restart time `gr` when given.
fn pair_with(kind: Kind, ebgp: bool, hint: &str, gr: Option<u16>) -> Pair {
    require_daemons().unwrap();
    let mut lab = Lab::new(hint).unwrap();
    let seg = lab.segment_with_ipv6("10.90.0.0/24", "fd00:90::/64").unwrap();
    let (h0, h1) = (lab.host(seg).unwrap(), lab.host(seg).unwrap());
    let a = PairAddrs {
        our4: lab.host_ip(h0),
        our6: lab.host_ip6(h0).unwrap(),
        their4: lab.host_ip(h1),
        their6: lab.host_ip6(h1).unwrap(),
    };
    let (our_as, their_as) = if ebgp { (64601, 64602) } else { (64601, 64601) };
    let their_ns = lab.host_ns(h1).to_string();
    let daemon = kind.start(&their_ns, &their_config(&a, their_as, our_as, gr)).unwrap();
    let mut cfg = SpeakerConfig::new(our_as, a.our4);
    cfg.graceful_restart = gr;
    cfg.listen = vec![(IpAddr::V4(a.our4), 179).into(), (IpAddr::V6(a.our6), 179).into()];
    let node = OurNode::start(lab.host_ns(h0), cfg);
    node.set_peers(vec![
        peer(IpAddr::V4(a.their4), their_as, a.our4, Some(a.our6)),
        peer(IpAddr::V6(a.their6), their_as, a.our4, Some(a.our6)),
    ]);
    node.originate(OURS.iter().map(|s| net(s)).collect());
    for addr in [IpAddr::V4(a.their4), IpAddr::V6(a.their6)] {
        node.wait_established(addr, T);
    }
    for addr in [IpAddr::V4(a.our4), IpAddr::V6(a.our6)] {
        daemon.wait_established(addr, T).unwrap();
    }
    Pair {
        node,
        daemon,
        their_ns,
        our4: a.our4,
        our6: a.our6,
        their4: a.their4,
        their6: a.their6,
        our_as,
        their_as,
        _lab: lab,
    }
}

fn is_link_local(a: IpAddr) -> bool {
    matches!(a, IpAddr::V6(v6) if (v6.segments()[0] & 0xffc0) == 0xfe80)
}

/// Their routes in our RIB and kernel, via their addresses.
fn check_theirs_reach_us(p: &Pair) {
    let (t4, t6): (IpNetwork, IpNetwork) = (net(THEIRS[0]), net(THEIRS[1]));
    let r4 = p.node.wait_learned(t4, T);
    assert_eq!(r4.next_hop, Some(IpAddr::V4(p.their4)), "{r4:?}");
    assert_eq!(r4.peer, Some(IpAddr::V4(p.their4)), "{r4:?}");
    let r6 = p.node.wait_learned(t6, T);
    let nh6 = r6.next_hop.expect("IPv6 next hop");
    assert!(nh6 == IpAddr::V6(p.their6) || is_link_local(nh6), "{r6:?}");
    if p.our_as != p.their_as {
        assert_eq!(r4.as_path, vec![p.their_as], "eBGP AS path: {r4:?}");
    } else {
        assert!(r4.as_path.is_empty(), "iBGP AS path of an originated route: {r4:?}");
    }
    let k4 = p.node.wait_kernel(t4, T);
    assert_eq!(k4.gateway, Some(IpAddr::V4(p.their4)), "{k4:?}");
    let k6 = p.node.wait_kernel(t6, T);
    let g6 = k6.gateway.expect("kernel IPv6 gateway");
    assert!(g6 == IpAddr::V6(p.their6) || is_link_local(g6), "{k6:?}");
}

/// Our routes in their RIB with our addresses as next hops, and in their kernel.
fn check_ours_reach_them(p: &Pair, kind: Kind) {
    let (o4, o6): (IpNetwork, IpNetwork) = (net(OURS[0]), net(OURS[1]));
    p.daemon.wait_route(o4, Some(IpAddr::V4(p.our4)), T).unwrap();
    p.daemon.wait_route(o6, Some(IpAddr::V6(p.our6)), T).unwrap();
    if let Some(proto) = kind.kernel_protocol() {
        let k4 = wait_kernel_route(&p.their_ns, o4, Some(IpAddr::V4(p.our4)), T).unwrap();
        assert_eq!(k4.protocol, proto, "{k4:?}");
        let k6 = wait_kernel_route(&p.their_ns, o6, None, T).unwrap();
        assert_eq!(k6.protocol, proto, "{k6:?}");
    }
}

/// Withdrawals both ways: ours leave their RIB and kernel, theirs leave ours.
fn check_withdrawals(p: &mut Pair, kind: Kind) {
    let (o4, o6): (IpNetwork, IpNetwork) = (net(OURS[0]), net(OURS[1]));
    let (t4, t6): (IpNetwork, IpNetwork) = (net(THEIRS[0]), net(THEIRS[1]));
    // We stop originating the IPv4 block; the IPv6 one stays.
    p.node.originate(vec![o6]);
    p.daemon.wait_no_route(o4, T).unwrap();
    if kind.kernel_protocol().is_some() {
        wait_no_kernel_route(&p.their_ns, o4, T).unwrap();
    }
    assert!(p.daemon.routes().unwrap().iter().any(|(q, _)| *q == o6), "{o6} must stay with {kind:?}");
    // They withdraw both of theirs.
    p.daemon.withdraw(t4).unwrap();
    p.daemon.withdraw(t6).unwrap();
    p.node.wait_not_learned(t4, T);
    p.node.wait_not_learned(t6, T);
    p.node.wait_no_kernel(t4, T);
    p.node.wait_no_kernel(t6, T);
    // And announce one again at run time.
    p.daemon.announce(t4).unwrap();
    p.node.wait_learned(t4, T);
    p.node.wait_kernel(t4, T);
}

fn exchange(kind: Kind, ebgp: bool, hint: &str) {
    let mut p = pair(kind, ebgp, hint);
    // The smaller proposal wins (RFC 4271 §4.2): ours against the daemon's default.
    let want = SpeakerConfig::new(p.our_as, p.our4).hold_time.min(kind.default_hold_time());
    for a in [IpAddr::V4(p.our4), IpAddr::V6(p.our6)] {
        assert_eq!(p.daemon.hold_time(a).unwrap(), want, "{kind:?} negotiated hold time with {a}");
    }
    check_theirs_reach_us(&p);
    check_ours_reach_them(&p, kind);
    check_withdrawals(&mut p, kind);
    // Both sessions stayed up through it all.
    for a in [IpAddr::V4(p.their4), IpAddr::V6(p.their6)] {
        assert_eq!(p.node.peer(a).map(|s| s.state), Some("Established".to_string()));
    }
    // The IPv4 session carries their IPv4 prefix; the IPv6 one their and our IPv6 prefixes
    // (our IPv4 one was withdrawn above).
    let st4 = p.node.peer(IpAddr::V4(p.their4)).unwrap();
    assert_eq!((st4.prefixes_received, st4.prefixes_sent), (1, 0), "{st4:?}");
    let st6 = p.node.peer(IpAddr::V6(p.their6)).unwrap();
    assert_eq!((st6.prefixes_received, st6.prefixes_sent), (0, 1), "{st6:?}");
}

#[test]
fn bird_ibgp_v4_v6() {
    exchange(Kind::Bird, false, "birdi");
}

#[test]
fn bird_ebgp_v4_v6() {
    exchange(Kind::Bird, true, "birde");
}

#[test]
fn gobgp_ibgp_v4_v6() {
    exchange(Kind::Gobgp, false, "gobgpi");
}

#[test]
fn gobgp_ebgp_v4_v6() {
    exchange(Kind::Gobgp, true, "gobgpe");
}

#[test]
fn frr_ibgp_v4_v6() {
    exchange(Kind::Frr, false, "frri");
}

#[test]
fn frr_ebgp_v4_v6() {
    exchange(Kind::Frr, true, "frre");
}

/// The daemon crashes (SIGKILL: no NOTIFICATION, graceful restart off): our speaker drops the
/// sessions and withdraws its routes from its RIB and the kernel, and says why in its status;
/// the daemon starts again with the same configuration: the sessions come back and the routes
/// are relearned and reinstalled, both ways.
fn restart_withdraws_then_relearns(kind: Kind, hint: &str) {
    let mut p = pair(kind, true, hint);
    check_theirs_reach_us(&p);
    let (t4, t6): (IpNetwork, IpNetwork) = (net(THEIRS[0]), net(THEIRS[1]));
    p.daemon.kill();
    p.node.wait_not_learned(t4, T);
    p.node.wait_not_learned(t6, T);
    p.node.wait_no_kernel(t4, T);
    p.node.wait_no_kernel(t6, T);
    let st = p.node.peer(IpAddr::V4(p.their4)).unwrap();
    assert_ne!(st.state, "Established", "{st:?}");
    assert!(st.last_error.is_some(), "a dropped session says why: {st:?}");
    let a = PairAddrs { our4: p.our4, our6: p.our6, their4: p.their4, their6: p.their6 };
    p.daemon = kind.start(&p.their_ns, &their_config(&a, p.their_as, p.our_as, None)).unwrap();
    for addr in [IpAddr::V4(p.their4), IpAddr::V6(p.their6)] {
        p.node.wait_established(addr, T);
    }
    check_theirs_reach_us(&p);
    check_ours_reach_them(&p, kind);
}

#[test]
fn bird_restart_withdraws_then_relearns() {
    restart_withdraws_then_relearns(Kind::Bird, "birdrst");
}

#[test]
fn gobgp_restart_withdraws_then_relearns() {
    restart_withdraws_then_relearns(Kind::Gobgp, "gobgprst");
}

#[test]
fn frr_restart_withdraws_then_relearns() {
    restart_withdraws_then_relearns(Kind::Frr, "frrrst");
}

/// Each daemon proposes a hold time of 9 s, under our 90: the sessions run on 9 s (3 s
/// keepalives) and stay Established on both sides for more than two hold times, watched all
/// along. (9 s, not the minimum 3 s, leaves room for a loaded CI machine.)
#[test]
fn short_hold_time_is_negotiated_and_kept_alive() {
    require_daemons().unwrap();
    let mut lab = Lab::new("hold").unwrap();
    let seg = lab.segment("10.90.0.0/24").unwrap();
    let h_ours = lab.host(seg).unwrap();
    let ours = lab.host_ip(h_ours);
    let mut cfg = SpeakerConfig::new(64601, ours);
    cfg.listen = vec![(IpAddr::V4(ours), 179).into()];
    let node = OurNode::start(lab.host_ns(h_ours), cfg);
    let mut daemons = Vec::new();
    let mut peers = Vec::new();
    for (i, kind) in Kind::ALL.into_iter().enumerate() {
        let h = lab.host(seg).unwrap();
        let (addr, asn) = (lab.host_ip(h), 64610 + i as u32);
        let mut c = PeerConfig::new(addr, asn).neighbor(Neighbor::new(IpAddr::V4(ours), 64601));
        c.hold_time = Some(9);
        daemons.push((kind, IpAddr::V4(addr), kind.start(lab.host_ns(h), &c).unwrap()));
        peers.push(peer(IpAddr::V4(addr), asn, ours, None));
    }
    node.set_peers(peers);
    for (kind, addr, d) in &daemons {
        node.wait_established(*addr, T);
        d.wait_established(IpAddr::V4(ours), T).unwrap();
        assert_eq!(d.hold_time(IpAddr::V4(ours)).unwrap(), 9, "{kind:?}");
    }
    // Watched every 500 ms for 20 s: keepalives missing on either side would drop a session
    // within one hold time (time passing is what is tested, not a wait for a condition).
    let watch = Duration::from_secs(20);
    let start = std::time::Instant::now();
    while start.elapsed() < watch {
        for (kind, addr, d) in &daemons {
            let st = node.peer(*addr).unwrap();
            assert_eq!(st.state, "Established", "{kind:?} after {:?}: {st:?}", start.elapsed());
            assert!(d.established(IpAddr::V4(ours)).unwrap(), "{kind:?} dropped us after {:?}", start.elapsed());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    for (kind, addr, _) in &daemons {
        let st = node.peer(*addr).unwrap();
        assert!(st.uptime_secs.is_some_and(|u| u >= watch.as_secs() - 1), "{kind:?}: {st:?}");
    }
}

/// Graceful restart with BIRD as the restarting speaker and ours as helper (RFC 4724): BIRD
/// (restart time 120 s) is killed; its routes stay in our Loc-RIB and kernel while it is down
/// (watched for 5 s); it comes back with `bird -R` (restart state, forwarding preserved) and
/// re-sends them, followed by End-of-RIB. Our Fib never withdrew them through the whole cycle
/// (every withdrawal event is recorded), and a withdrawal after it still goes through (the
/// routes are not stuck as stale).
#[test]
fn bird_graceful_restart_keeps_its_routes_through_the_restart() {
    let mut p = pair_with(Kind::Bird, true, "birdgr", Some(120));
    check_theirs_reach_us(&p);
    let (t4, t6): (IpNetwork, IpNetwork) = (net(THEIRS[0]), net(THEIRS[1]));
    let withdrawn = |p: &Pair| -> Vec<String> {
        p.node
            .events()
            .into_iter()
            .filter(|e| e == &format!("withdraw {t4}") || e == &format!("withdraw {t6}"))
            .collect()
    };
    p.daemon.kill();
    testkit::bgp::poll(T, "our side sees BIRD gone", || {
        Ok(p.node.peer(IpAddr::V4(p.their4)).is_some_and(|s| s.state != "Established"))
    })
    .unwrap();
    // Down for 5 s, checked every 200 ms: still learned, still in the kernel.
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        let learned: Vec<IpNetwork> = p.node.routes().iter().filter(|r| r.peer.is_some()).map(|r| r.prefix).collect();
        assert!(learned.contains(&t4) && learned.contains(&t6), "stale routes dropped: {learned:?}");
        assert!(p.node.kernel(t4).is_some() && p.node.kernel(t6).is_some(), "kernel routes dropped");
        std::thread::sleep(Duration::from_millis(200));
    }
    let a = PairAddrs { our4: p.our4, our6: p.our6, their4: p.their4, their6: p.their6 };
    let cfg = their_config(&a, p.their_as, p.our_as, Some(120));
    p.daemon = Box::new(testkit::bgp::Bird::start_recovering(&p.their_ns, &cfg).unwrap());
    for addr in [IpAddr::V4(p.their4), IpAddr::V6(p.their6)] {
        p.node.wait_established(addr, T);
    }
    check_ours_reach_them(&p, Kind::Bird);
    check_theirs_reach_us(&p);
    assert_eq!(withdrawn(&p), Vec::<String>::new(), "events: {:?}", p.node.events());
    // Not stuck: a withdrawal from the restarted BIRD goes through.
    p.daemon.withdraw(t4).unwrap();
    p.node.wait_not_learned(t4, T);
    p.node.wait_no_kernel(t4, T);
    assert!(p.node.kernel(t6).is_some());
}

/// Our speaker as a route reflector (RFC 4456, cluster ID set) in one AS with BIRD and FRR as
/// its clients and GoBGP as a non-client, no session between the daemons: a client's route is
/// reflected to the other client and to the non-client, the non-client's route to both
/// clients, each with the originator's next hop kept (so BIRD and FRR install each other's
/// routes via each other, directly on the shared link).
#[test]
fn route_reflector_between_bird_frr_and_gobgp() {
    require_daemons().unwrap();
    let mut lab = Lab::new("rrinterop").unwrap();
    let seg = lab.segment("10.90.0.0/24").unwrap();
    let h_ours = lab.host(seg).unwrap();
    let ours = lab.host_ip(h_ours);
    const AS: u32 = 64700;
    let mut cfg = SpeakerConfig::new(AS, ours);
    cfg.listen = vec![(IpAddr::V4(ours), 179).into()];
    cfg.cluster_id = Some(ours);
    let node = OurNode::start(lab.host_ns(h_ours), cfg);
    let mut daemons = Vec::new();
    let mut peers = Vec::new();
    for (i, kind) in Kind::ALL.into_iter().enumerate() {
        let h = lab.host(seg).unwrap();
        let addr = lab.host_ip(h);
        let own = net(&format!("10.97.{i}.0/24"));
        let c = PeerConfig::new(addr, AS).neighbor(Neighbor::new(IpAddr::V4(ours), AS)).route(own);
        let ns = lab.host_ns(h).to_string();
        daemons.push((kind, IpAddr::V4(addr), own, ns.clone(), kind.start(&ns, &c).unwrap()));
        let mut p = peer(IpAddr::V4(addr), AS, ours, None);
        p.rr_client = kind != Kind::Gobgp;
        p.kind = if p.rr_client { "route reflector client".into() } else { "peer".into() };
        peers.push(p);
    }
    node.set_peers(peers);
    for (_, addr, _, _, d) in &daemons {
        node.wait_established(*addr, T);
        d.wait_established(IpAddr::V4(ours), T).unwrap();
    }
    for (kind, _, _, ns, d) in &daemons {
        for (other, o_addr, o_own, _, _) in daemons.iter().filter(|x| x.0 != *kind) {
            d.wait_route(*o_own, Some(*o_addr), T)
                .unwrap_or_else(|e| panic!("{kind:?} did not get {other:?}'s {o_own} reflected: {e}"));
            if let Some(proto) = kind.kernel_protocol() {
                let k = wait_kernel_route(ns, *o_own, Some(*o_addr), T).unwrap();
                assert_eq!(k.protocol, proto, "{kind:?}: {k:?}");
            }
        }
    }
    // Our own kernel has all three, via their originators.
    for (_, addr, own, _, _) in &daemons {
        assert_eq!(node.wait_kernel(*own, T).gateway, Some(*addr));
    }
    // A client's withdrawal reaches the other client and the non-client.
    let (bird_own, bird_addr) = (daemons[0].2, daemons[0].1);
    daemons[0].4.withdraw(bird_own).unwrap();
    for (kind, _, _, ns, d) in &daemons[1..] {
        d.wait_no_route(bird_own, T).unwrap_or_else(|e| panic!("{kind:?}: {e}"));
        if kind.kernel_protocol().is_some() {
            wait_no_kernel_route(ns, bird_own, T).unwrap();
        }
    }
    node.wait_no_kernel(bird_own, T);
    assert!(node.peer(bird_addr).is_some_and(|s| s.state == "Established"));
}

/// Calico's default export to external peers, against real ones: our speaker has BIRD as a
/// cluster (iBGP) peer and FRR as an external eBGP peer (a top-of-rack router, say). FRR gets
/// our own prefix but not the one we learned from BIRD; BIRD gets both ours and FRR's.
#[test]
fn external_peer_gets_only_our_own_routes() {
    require_daemons().unwrap();
    let mut lab = Lab::new("external").unwrap();
    let seg = lab.segment("10.90.0.0/24").unwrap();
    let (h_ours, h_bird, h_frr) = (lab.host(seg).unwrap(), lab.host(seg).unwrap(), lab.host(seg).unwrap());
    let (ours, bird_ip, frr_ip) = (lab.host_ip(h_ours), lab.host_ip(h_bird), lab.host_ip(h_frr));
    let (own, bird_own, frr_own) = (net("10.98.0.0/24"), net("10.98.1.0/24"), net("10.98.2.0/24"));
    let mut cfg = SpeakerConfig::new(64800, ours);
    cfg.listen = vec![(IpAddr::V4(ours), 179).into()];
    let node = OurNode::start(lab.host_ns(h_ours), cfg);
    let bird = Kind::Bird
        .start(
            lab.host_ns(h_bird),
            &PeerConfig::new(bird_ip, 64800).neighbor(Neighbor::new(IpAddr::V4(ours), 64800)).route(bird_own),
        )
        .unwrap();
    let frr = Kind::Frr
        .start(
            lab.host_ns(h_frr),
            &PeerConfig::new(frr_ip, 64900).neighbor(Neighbor::new(IpAddr::V4(ours), 64800)).route(frr_own),
        )
        .unwrap();
    let mut ext = peer(IpAddr::V4(frr_ip), 64900, ours, None);
    ext.external = true;
    ext.kind = "global peer".into();
    node.set_peers(vec![peer(IpAddr::V4(bird_ip), 64800, ours, None), ext]);
    node.originate(vec![own]);
    for (d, a) in [(&bird, bird_ip), (&frr, frr_ip)] {
        node.wait_established(IpAddr::V4(a), T);
        d.wait_established(IpAddr::V4(ours), T).unwrap();
    }
    // We learned both daemons' prefixes.
    node.wait_learned(bird_own, T);
    node.wait_learned(frr_own, T);
    // BIRD (cluster peer) gets ours and the external one's; FRR only ours.
    bird.wait_route(own, Some(IpAddr::V4(ours)), T).unwrap();
    bird.wait_route(frr_own, Some(IpAddr::V4(frr_ip)), T).unwrap();
    frr.wait_route(own, Some(IpAddr::V4(ours)), T).unwrap();
    // A barrier: a prefix we originate only now, after BIRD's route was learned and FRR's
    // session was up. Once FRR has it, an export of BIRD's route, which would have been
    // queued before it on the same session, would have arrived too.
    let marker = net("10.98.9.0/24");
    node.originate(vec![own, marker]);
    frr.wait_route(marker, Some(IpAddr::V4(ours)), T).unwrap();
    let got: Vec<IpNetwork> = frr.routes().unwrap().into_iter().map(|r| r.0).collect();
    assert!(!got.contains(&bird_own), "the external peer got a route we learned from BIRD: {got:?}");
    let st = node.peer(IpAddr::V4(frr_ip)).unwrap();
    assert_eq!(st.prefixes_sent, 2, "ours and the marker: {st:?}");
}
