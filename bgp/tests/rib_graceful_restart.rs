//! Graceful restart (RFC 4724): as helper, a restarting peer's routes stay (stale, still the
//! best) until its End-of-RIB drops those it did not announce again, or the restart timer
//! drops them all; as restarting speaker, selection waits for every peer's End-of-RIB or the
//! selection deferral timer, and our End-of-RIB follows it.

#[path = "rib_common/mod.rs"]
mod common;

use std::net::{IpAddr, Ipv4Addr};

use bgp::packet::{Capability, Family, MpNextHop, Update};
use bgp::rib::{graceful_restart_capability, PathAttrs, PeerConfig, PeerId, Rib};
use common::*;

const A: &str = "10.1.1.0/24";
const B: &str = "10.1.2.0/24";

fn gr_peer(r: &mut Rib, n: u8, asn: u32) -> PeerId {
    let id = r.add_peer(PeerConfig {
        addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)),
        asn,
        rr_client: false,
        local_v4: Some(OUR_ID),
        local_v6: None,
    });
    r.peer_up(id, gr_caps(asn == OUR_AS, 120), router_id(n)).expect("up");
    id
}

fn nh() -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, 2)
}

fn stale_flags(r: &Rib, id: PeerId) -> Vec<(String, bool)> {
    r.adj_rib_in(id).into_iter().map(|(p, _, s)| (p.to_string(), s)).collect()
}

#[test]
fn helper_keeps_routes_until_end_of_rib_then_drops_the_stale_ones() {
    let mut r = rib(false);
    let e = gr_peer(&mut r, 2, 65002);
    announce(&mut r, e, false, &[A, B], nh(), attrs(&[65002], vec![]));
    let down = r.peer_down(e, true).expect("down");
    assert_eq!(down.restart_timer, Some(120), "the peer's restart time");
    assert!(down.changes.is_empty(), "routes kept for forwarding: {:?}", down.changes);
    assert_eq!(stale_flags(&r, e), vec![(A.into(), true), (B.into(), true)]);
    assert_eq!(r.best(pfx(A)).and_then(|b| b.peer), Some(e), "a stale route is still the best");

    // Back, re-announces A only, then End-of-RIB for IPv4: B goes, A stays fresh.
    r.peer_up(e, gr_caps(false, 120), router_id(2)).expect("up");
    let c = announce(&mut r, e, false, &[A], nh(), attrs(&[65002], vec![]));
    assert!(c.is_empty(), "same route again is no change: {c:?}");
    assert_eq!(stale_flags(&r, e), vec![(A.into(), false), (B.into(), true)]);
    let c = r.receive(e, &wire(Update::end_of_rib(Family::Ipv4Unicast), &caps(false))).expect("eor");
    assert_eq!(c.len(), 1);
    assert_eq!((c[0].prefix, c[0].best.is_none()), (pfx(B), true));
    assert_eq!(stale_flags(&r, e), vec![(A.into(), false)]);
}

#[test]
fn restart_timer_expiry_drops_all_stale_routes() {
    let mut r = rib(false);
    let e = gr_peer(&mut r, 2, 65002);
    announce(&mut r, e, false, &[A, B], nh(), attrs(&[65002], vec![]));
    assert_eq!(r.peer_down(e, true).expect("down").restart_timer, Some(120));
    let mut gone: Vec<_> =
        r.restart_timer_expired(e).expect("expire").into_iter().map(|c| (c.prefix, c.best.is_none())).collect();
    gone.sort();
    assert_eq!(gone, vec![(pfx(A), true), (pfx(B), true)]);
    assert!(r.loc_rib().is_empty());
    assert_eq!(r.attr_sets(), 0);
}

#[test]
fn without_graceful_restart_routes_go_at_once() {
    let mut r = rib(false);
    // A peer that did not advertise the capability.
    let e = peer(&mut r, 2, 65002, false);
    announce(&mut r, e, false, &[A], nh(), attrs(&[65002], vec![]));
    let d = r.peer_down(e, true).expect("down");
    assert_eq!((d.restart_timer, d.changes.len()), (None, 1));
    // A GR peer closed by NOTIFICATION (not graceful): the same.
    let g = gr_peer(&mut r, 3, 65003);
    announce(&mut r, g, false, &[B], nh(), attrs(&[65003], vec![]));
    let d = r.peer_down(g, false).expect("down");
    assert_eq!((d.restart_timer, d.changes.len()), (None, 1));
    assert!(r.loc_rib().is_empty());
}

#[test]
fn stale_routes_of_a_family_no_longer_preserved_go_on_reconnect() {
    let mut r = rib(false);
    let e = gr_peer(&mut r, 2, 65002);
    announce(&mut r, e, false, &[A], nh(), attrs(&[65002], vec![]));
    r.peer_down(e, true).expect("down");
    // Re-established without the forwarding bit for IPv4 (RFC 4724 §4.2).
    let mut c = gr_caps(false, 120);
    if let Some(g) = c.peer_graceful_restart.as_mut() {
        g.families.iter_mut().for_each(|f| f.flags = 0);
    }
    let ch = r.peer_up(e, c, router_id(2)).expect("up");
    assert_eq!(ch.len(), 1);
    assert!(ch[0].best.is_none());
}

#[test]
fn restarting_speaker_defers_selection_until_every_end_of_rib() {
    let mut r = rib(false);
    let e1 = r.add_peer(PeerConfig {
        addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        asn: 65002,
        rr_client: false,
        local_v4: Some(OUR_ID),
        local_v6: None,
    });
    let e2 = r.add_peer(PeerConfig {
        addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3)),
        asn: 65003,
        rr_client: false,
        local_v4: Some(OUR_ID),
        local_v6: None,
    });
    r.defer_selection();
    assert!(r.deferring());
    r.originate(pfx("10.7.0.0/26"), PathAttrs::local(MpNextHop::Ipv4(Ipv4Addr::UNSPECIFIED)));
    for (id, n) in [(e1, 2), (e2, 3)] {
        r.peer_up(id, gr_caps(false, 120), router_id(n)).expect("up");
    }
    assert!(announce(&mut r, e1, false, &[A], nh(), attrs(&[65002, 65100], vec![])).is_empty());
    assert!(announce(&mut r, e2, false, &[A], nh(), attrs(&[65003], vec![])).is_empty());
    assert!(r.loc_rib().is_empty(), "no best path while deferring");
    assert!(r.updates(e1).expect("updates").is_empty(), "no End-of-RIB before selection");
    let eor = |f| wire(Update::end_of_rib(f), &caps(false));
    for f in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
        assert!(r.receive(e1, &eor(f)).expect("eor").is_empty());
    }
    assert!(r.receive(e2, &eor(Family::Ipv4Unicast)).expect("eor").is_empty(), "e2 still owes IPv6");
    let mut c = r.receive(e2, &eor(Family::Ipv6Unicast)).expect("eor");
    c.sort_by_key(|c| c.prefix);
    assert!(!r.deferring());
    assert_eq!(c.len(), 2);
    assert_eq!((c[0].prefix, c[0].best.as_ref().and_then(|b| b.peer)), (pfx(A), Some(e2)));
    assert_eq!((c[1].prefix, c[1].best.as_ref().and_then(|b| b.peer)), (pfx("10.7.0.0/26"), None));
    // e1 now gets the table, then End-of-RIB.
    let ups = sent(&mut r, e1);
    assert_eq!(announced(&ups), vec![pfx(A), pfx("10.7.0.0/26")]);
    assert_eq!(ups.last().and_then(|u| u.end_of_rib_family()), Some(Family::Ipv6Unicast));
}

#[test]
fn a_peer_restarting_too_is_not_waited_for() {
    // Both sides restarted (e.g. every agent of a cluster updated at once): each sets the
    // Restart State bit, and neither may wait for the other's End-of-RIB (RFC 4724 §4.1).
    let mut r = rib(false);
    let e1 = r.add_peer(PeerConfig {
        addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        asn: 65002,
        rr_client: false,
        local_v4: Some(OUR_ID),
        local_v6: None,
    });
    r.defer_selection();
    r.originate(pfx("10.7.0.0/26"), PathAttrs::local(MpNextHop::Ipv4(Ipv4Addr::UNSPECIFIED)));
    let mut restarting = gr_caps(false, 120);
    if let Some(g) = restarting.peer_graceful_restart.as_mut() {
        g.flags |= 0x8;
    }
    let c = r.peer_up(e1, restarting, router_id(2)).expect("up");
    assert!(!r.deferring(), "the only peer restarts too: selection at once");
    assert_eq!(c.iter().map(|c| c.prefix).collect::<Vec<_>>(), vec![pfx("10.7.0.0/26")]);
    let ups = sent(&mut r, e1);
    assert_eq!(announced(&ups), vec![pfx("10.7.0.0/26")]);
    assert!(ups.iter().any(|u| u.end_of_rib_family().is_some()), "our End-of-RIB follows the table");
}

#[test]
fn selection_deferral_timer_selects_without_the_missing_end_of_rib() {
    let mut r = rib(false);
    let e1 = r.add_peer(PeerConfig {
        addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)),
        asn: 65002,
        rr_client: false,
        local_v4: Some(OUR_ID),
        local_v6: None,
    });
    r.add_peer(PeerConfig {
        addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 3)),
        asn: 65003,
        rr_client: false,
        local_v4: Some(OUR_ID),
        local_v6: None,
    });
    r.defer_selection();
    r.peer_up(e1, gr_caps(false, 120), router_id(2)).expect("up");
    announce(&mut r, e1, false, &[A], nh(), attrs(&[65002], vec![]));
    assert!(r.loc_rib().is_empty());
    let c = r.selection_deferral_expired();
    assert_eq!(c.len(), 1);
    assert_eq!(r.best(pfx(A)).and_then(|b| b.peer), Some(e1));
}

#[test]
fn our_capability_carries_the_restart_and_forwarding_bits() {
    let Capability::GracefulRestart(g) =
        graceful_restart_capability(true, 120, &[Family::Ipv4Unicast, Family::Ipv6Unicast], true)
    else {
        panic!()
    };
    assert!(g.restarting());
    assert_eq!(g.time, 120);
    assert!(g.families.iter().all(|f| f.forwarding_preserved()));
    let Capability::GracefulRestart(g) = graceful_restart_capability(false, 5000, &[Family::Ipv4Unicast], false) else {
        panic!()
    };
    assert!(!g.restarting());
    assert_eq!(g.time, 0xfff, "12 bits");
    assert!(!g.families[0].forwarding_preserved());
}
