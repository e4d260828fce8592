//! The BGP peer fixtures against each other (root, network namespaces, bird2 gobgpd frr from
//! Debian; a missing daemon fails): BIRD, GoBGP and FRR on one dual-stack L2 segment, each in
//! its own AS, peer over IPv4 and over IPv6 (MP_REACH), exchange the routes they originate,
//! install them in their namespaces' kernels (BIRD, FRR), and announce and withdraw at run time.

use std::net::IpAddr;
use std::time::Duration;

use ipnetwork::IpNetwork;
use testkit::bgp::{kernel_route, require_daemons, wait_kernel_route, wait_no_kernel_route};
use testkit::bgp::{BgpDaemon, Bird, Frr, Gobgp, Neighbor, PeerConfig};
use testkit::lab::Lab;

const T: Duration = Duration::from_secs(60);

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

#[test]
fn bird_gobgp_frr_peer_and_exchange_routes_both_families() {
    require_daemons().unwrap();
    let mut lab = Lab::new("bgpfix").unwrap();
    let seg = lab.segment_with_ipv6("10.61.0.0/24", "fd00:61::/64").unwrap();
    let hosts: Vec<_> = (0..3).map(|_| lab.host(seg).unwrap()).collect();
    let v4: Vec<IpAddr> = hosts.iter().map(|h| IpAddr::V4(lab.host_ip(*h))).collect();
    let v6: Vec<IpAddr> = hosts.iter().map(|h| IpAddr::V6(lab.host_ip6(*h).unwrap())).collect();
    let asn = [65101u32, 65102, 65103];
    // Daemon i originates 10.62.i.0/24 and fd00:62:i::/48.
    let own4: Vec<IpNetwork> = (0..3).map(|i| net(&format!("10.62.{i}.0/24"))).collect();
    let own6: Vec<IpNetwork> = (0..3).map(|i| net(&format!("fd00:62:{i}::/48"))).collect();
    let cfg = |i: usize| {
        let mut c = PeerConfig::new(format!("10.61.0.{}", i + 1).parse().unwrap(), asn[i]);
        for j in (0..3).filter(|j| *j != i) {
            // The lower index connects, the higher one waits: both directions of the
            // passive flag get exercised.
            let n4 = Neighbor::new(v4[j], asn[j]);
            let n6 = Neighbor::new(v6[j], asn[j]);
            let (n4, n6) = if j < i { (n4.passive(), n6.passive()) } else { (n4, n6) };
            c = c.neighbor(n4).neighbor(n6);
        }
        c.route(own4[i]).route(own6[i])
    };
    let ns: Vec<String> = hosts.iter().map(|h| lab.host_ns(*h).to_string()).collect();
    let mut daemons: Vec<Box<dyn BgpDaemon>> = vec![
        Box::new(Bird::start(&ns[0], &cfg(0)).unwrap()),
        Box::new(Gobgp::start(&ns[1], &cfg(1)).unwrap()),
        Box::new(Frr::start(&ns[2], &cfg(2)).unwrap()),
    ];
    for (i, d) in daemons.iter().enumerate() {
        for j in (0..3).filter(|j| *j != i) {
            d.wait_established(v4[j], T).unwrap();
            d.wait_established(v6[j], T).unwrap();
        }
    }
    // Everyone learns everyone's routes, from the originator (shortest AS path).
    for (i, d) in daemons.iter().enumerate() {
        for j in (0..3).filter(|j| *j != i) {
            let nh = d.wait_route(own4[j], Some(v4[j]), T).unwrap();
            assert_eq!(nh, Some(v4[j]), "{} next hop for {}", d.kind(), own4[j]);
            d.wait_route(own6[j], Some(v6[j]), T).unwrap();
        }
        // Its own routes are local (no next hop).
        let mine = d.routes().unwrap();
        assert!(mine.contains(&(own4[i], None)), "{}: own route missing: {mine:?}", d.kind());
        assert!(mine.contains(&(own6[i], None)), "{}: own route missing: {mine:?}", d.kind());
    }
    // BIRD's and FRR's kernels (GoBGP installs nothing).
    for (i, proto) in [(0usize, "bird"), (2, "bgp")] {
        for j in (0..3).filter(|j| *j != i) {
            let r = wait_kernel_route(&ns[i], own4[j], Some(v4[j]), T).unwrap();
            assert_eq!(r.protocol, proto, "{}: {:?}", own4[j], r);
            let r = wait_kernel_route(&ns[i], own6[j], None, T).unwrap();
            assert_eq!(r.protocol, proto, "{}: {:?}", own6[j], r);
        }
    }
    assert_eq!(kernel_route(&ns[1], own4[0]).unwrap(), None, "GoBGP runs with zebra off");

    // Announce and withdraw at run time, each daemon, each family.
    for i in 0..3 {
        let (a4, a6) = (net(&format!("10.63.{i}.0/24")), net(&format!("fd00:63:{i}::/48")));
        daemons[i].announce(a4).unwrap();
        daemons[i].announce(a6).unwrap();
        for j in (0..3).filter(|j| *j != i) {
            daemons[j].wait_route(a4, Some(v4[i]), T).unwrap();
            daemons[j].wait_route(a6, Some(v6[i]), T).unwrap();
        }
        wait_kernel_route(&ns[if i == 0 { 2 } else { 0 }], a4, Some(v4[i]), T).unwrap();
        daemons[i].withdraw(a4).unwrap();
        daemons[i].withdraw(a6).unwrap();
        for j in (0..3).filter(|j| *j != i) {
            daemons[j].wait_no_route(a4, T).unwrap();
            daemons[j].wait_no_route(a6, T).unwrap();
        }
        wait_no_kernel_route(&ns[if i == 0 { 2 } else { 0 }], a4, T).unwrap();
        // What was not withdrawn stays.
        assert!(daemons[(i + 1) % 3].routes().unwrap().iter().any(|(p, _)| *p == own4[i]));
    }

    // Stopping a daemon withdraws its routes from the others (graceful restart is off).
    daemons.remove(1);
    for d in &daemons {
        d.wait_no_route(own4[1], T).unwrap();
        d.wait_no_route(own6[1], T).unwrap();
    }
    wait_no_kernel_route(&ns[0], own4[1], T).unwrap();
    wait_no_kernel_route(&ns[2], own4[1], T).unwrap();
}
