//! Export rules as RFC 4271 §9.2 and RFC 4456 put them, checked on the UPDATEs each peer
//! would receive (encoded and decoded by the codec): eBGP, iBGP full mesh, route reflection,
//! loop prevention, the export policy hook, UPDATE packing and End-of-RIB.

#[path = "rib_common/mod.rs"]
mod common;

use std::collections::BTreeSet;
use std::net::{Ipv4Addr, Ipv6Addr};

use bgp::packet::{AsPath, AttrValue, Family, MpNextHop, Prefix, Update};
use bgp::rib::{PathAttrs, PeerId, Rib};
use common::*;

const P: &str = "10.9.0.0/24";

fn nh(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(192, 0, 2, n)
}

/// Drains every peer's initial dump (and End-of-RIB) so later calls see only new changes.
fn drain(r: &mut Rib, ids: &[PeerId]) {
    for &id in ids {
        sent(r, id);
    }
}

fn got(r: &mut Rib, id: PeerId) -> Vec<Update> {
    sent(r, id).into_iter().filter(|u| u.end_of_rib_family().is_none()).collect()
}

struct Lab {
    r: Rib,
    c1: PeerId,
    c2: PeerId,
    n1: PeerId,
    n2: PeerId,
    e1: PeerId,
}

/// A route reflector (cluster ID = our router ID 10.0.0.1) with clients c1, c2, non-clients
/// n1, n2 and one eBGP peer e1.
fn lab() -> Lab {
    let mut r = rib(true);
    let c1 = peer(&mut r, 11, OUR_AS, true);
    let c2 = peer(&mut r, 12, OUR_AS, true);
    let n1 = peer(&mut r, 21, OUR_AS, false);
    let n2 = peer(&mut r, 22, OUR_AS, false);
    let e1 = peer(&mut r, 31, 65031, false);
    drain(&mut r, &[c1, c2, n1, n2, e1]);
    Lab { r, c1, c2, n1, n2, e1 }
}

fn receivers(l: &mut Lab) -> BTreeSet<PeerId> {
    [l.c1, l.c2, l.n1, l.n2, l.e1].into_iter().filter(|&id| announced(&got(&mut l.r, id)) == vec![pfx(P)]).collect()
}

#[test]
fn client_route_is_reflected_to_everyone_but_its_sender() {
    let mut l = lab();
    announce(&mut l.r, l.c1, true, &[P], nh(11), attrs(&[], vec![]));
    let (c1, c2, n1, n2, e1) = (l.c1, l.c2, l.n1, l.n2, l.e1);
    // Check c2's copy: ORIGINATOR_ID = c1's router ID, CLUSTER_LIST = [ours], next hop kept.
    let out = l.r.adj_rib_out(c2).expect("out");
    assert_eq!(out.len(), 1);
    let a = &out[0].1;
    assert_eq!(a.originator_id, Some(router_id(11)));
    assert_eq!(a.cluster_list, vec![OUR_ID]);
    assert_eq!(a.next_hop, MpNextHop::Ipv4(nh(11)));
    assert_eq!(receivers(&mut l), BTreeSet::from([c2, n1, n2, e1]));
    let _ = c1;
}

#[test]
fn non_client_route_goes_to_clients_only() {
    let mut l = lab();
    announce(&mut l.r, l.n1, true, &[P], nh(21), attrs(&[], vec![]));
    let (c1, c2, e1) = (l.c1, l.c2, l.e1);
    assert_eq!(receivers(&mut l), BTreeSet::from([c1, c2, e1]), "never non-client to non-client");
}

#[test]
fn client_route_reaches_non_clients_with_reflection_attributes() {
    let mut l = lab();
    announce(&mut l.r, l.c2, true, &[P], nh(12), attrs(&[], vec![AttrValue::Med(7)]));
    let ups = got(&mut l.r, l.n2);
    assert_eq!(announced(&ups), vec![pfx(P)]);
    let u = &ups[0];
    assert_eq!(u.attr(9), Some(&AttrValue::OriginatorId(router_id(12))));
    assert_eq!(u.attr(10), Some(&AttrValue::ClusterList(vec![OUR_ID])));
    assert_eq!(u.attr(5), Some(&AttrValue::LocalPref(100)));
    assert_eq!(u.attr(4), Some(&AttrValue::Med(7)), "MED kept inside the AS");
}

#[test]
fn ebgp_export_prepends_sets_next_hop_self_and_strips_ibgp_attributes() {
    let mut l = lab();
    announce(
        &mut l.r,
        l.c1,
        true,
        &[P],
        nh(11),
        attrs(&[65100], vec![AttrValue::Med(7), AttrValue::Communities(vec![0xfde8_0001])]),
    );
    let ups = got(&mut l.r, l.e1);
    assert_eq!(announced(&ups), vec![pfx(P)]);
    let u = &ups[0];
    assert_eq!(u.attr(2), Some(&AttrValue::AsPath(AsPath::sequence(&[OUR_AS, 65100]))));
    assert_eq!(u.attr(3), Some(&AttrValue::NextHop(Ipv4Addr::new(10, 0, 0, 1))));
    for code in [4, 5, 9, 10] {
        assert_eq!(u.attr(code), None, "attribute {code} must not leave the AS");
    }
    assert_eq!(u.attr(8), Some(&AttrValue::Communities(vec![0xfde8_0001])));
}

#[test]
fn ibgp_full_mesh_never_readvertises_ibgp_routes() {
    let mut r = rib(false);
    let i1 = peer(&mut r, 2, OUR_AS, false);
    let i2 = peer(&mut r, 3, OUR_AS, false);
    let e1 = peer(&mut r, 4, 65004, false);
    drain(&mut r, &[i1, i2, e1]);
    announce(&mut r, i1, true, &[P], nh(2), attrs(&[], vec![]));
    assert!(got(&mut r, i2).is_empty(), "iBGP to iBGP");
    assert_eq!(announced(&got(&mut r, e1)), vec![pfx(P)]);
    assert!(got(&mut r, i1).is_empty(), "not back to the sender");
    // An eBGP route goes to the iBGP peers, next hop unchanged, LOCAL_PREF 100 added.
    announce(&mut r, e1, false, &["10.8.0.0/16"], nh(4), attrs(&[65004], vec![]));
    let ups = got(&mut r, i2);
    assert_eq!(announced(&ups), vec![pfx("10.8.0.0/16")]);
    assert_eq!(ups[0].attr(3), Some(&AttrValue::NextHop(nh(4))));
    assert_eq!(ups[0].attr(5), Some(&AttrValue::LocalPref(100)));
    // A local route goes to iBGP peers with next hop self and an empty AS_PATH.
    r.originate(pfx("10.7.0.0/26"), PathAttrs::local(MpNextHop::Ipv4(Ipv4Addr::UNSPECIFIED)));
    let ups = got(&mut r, i1);
    assert_eq!(ups[0].attr(3), Some(&AttrValue::NextHop(Ipv4Addr::new(10, 0, 0, 1))));
    assert_eq!(ups[0].attr(2), Some(&AttrValue::AsPath(AsPath::default())));
}

#[test]
fn loops_are_dropped_on_receipt() {
    let mut l = lab();
    let (c1, e1) = (l.c1, l.e1);
    announce(&mut l.r, c1, true, &[P], nh(11), attrs(&[], vec![]));
    assert_eq!(l.r.adj_rib_in(c1).len(), 1);
    // Our CLUSTER_ID in CLUSTER_LIST: the route is treated as withdrawn.
    let c = announce(
        &mut l.r,
        c1,
        true,
        &[P],
        nh(11),
        attrs(&[], vec![AttrValue::ClusterList(vec![Ipv4Addr::new(10, 9, 9, 9), OUR_ID])]),
    );
    assert!(l.r.adj_rib_in(c1).is_empty());
    assert_eq!(c.len(), 1);
    assert!(c[0].best.is_none());
    // Our router ID as ORIGINATOR_ID.
    announce(&mut l.r, c1, true, &[P], nh(11), attrs(&[], vec![AttrValue::OriginatorId(OUR_ID)]));
    assert!(l.r.adj_rib_in(c1).is_empty());
    // Another originator and cluster are fine.
    announce(
        &mut l.r,
        c1,
        true,
        &[P],
        nh(11),
        attrs(
            &[],
            vec![
                AttrValue::OriginatorId(Ipv4Addr::new(10, 3, 3, 3)),
                AttrValue::ClusterList(vec![Ipv4Addr::new(10, 9, 9, 9)]),
            ],
        ),
    );
    assert_eq!(l.r.adj_rib_in(c1).len(), 1);
    // Our AS in the AS_PATH from an eBGP peer.
    announce(&mut l.r, e1, false, &["10.6.0.0/24"], nh(31), attrs(&[65031, OUR_AS, 65100], vec![]));
    assert!(l.r.adj_rib_in(e1).is_empty());
    assert!(l.r.best(pfx("10.6.0.0/24")).is_none());
}

#[test]
fn export_policy_restricts_external_peers_to_own_blocks() {
    let mut r = rib(false);
    let e1 = peer(&mut r, 2, 65002, false);
    let e2 = peer(&mut r, 3, 65003, false);
    let i1 = peer(&mut r, 4, OUR_AS, false);
    // Calico's default: external peers get only what this node originates.
    r.set_export_policy(Box::new(|to, route| to.asn == OUR_AS || route.from.is_none()));
    drain(&mut r, &[e1, e2, i1]);
    announce(&mut r, e1, false, &["10.5.0.0/24"], nh(2), attrs(&[65002], vec![]));
    r.originate(pfx("10.7.1.0/26"), PathAttrs::local(MpNextHop::Ipv4(Ipv4Addr::UNSPECIFIED)));
    assert_eq!(announced(&got(&mut r, e2)), vec![pfx("10.7.1.0/26")]);
    assert_eq!(announced(&got(&mut r, i1)), vec![pfx("10.5.0.0/24"), pfx("10.7.1.0/26")]);
}

#[test]
fn a_new_best_that_may_not_be_exported_withdraws_the_old_one() {
    let mut r = rib(false);
    let e1 = peer(&mut r, 2, 65002, false);
    let i1 = peer(&mut r, 3, OUR_AS, false);
    let i2 = peer(&mut r, 4, OUR_AS, false);
    drain(&mut r, &[e1, i1, i2]);
    announce(&mut r, e1, false, &[P], nh(2), attrs(&[65002], vec![]));
    assert_eq!(announced(&got(&mut r, i2)), vec![pfx(P)]);
    // i1's route with LOCAL_PREF 200 wins; i2 may not get an iBGP route: withdraw.
    announce(&mut r, i1, true, &[P], nh(3), attrs(&[65002], vec![AttrValue::LocalPref(200)]));
    let ups = got(&mut r, i2);
    assert!(announced(&ups).is_empty());
    assert_eq!(ups.iter().flat_map(|u| u.withdrawn_all()).map(|n| n.prefix).collect::<Vec<_>>(), vec![pfx(P)]);
}

/// 10k IPv4 and 10k IPv6 prefixes in two attribute sets each: every UPDATE is at most 4096
/// octets, the peer decodes exactly our routes with their attributes, End-of-RIB closes each
/// family; withdrawing them all packs the same way.
#[test]
fn packing_10k_prefixes_under_4096_octets_round_trips() {
    let mut r = rib(false);
    let mut v4 = Vec::new();
    let mut v6 = Vec::new();
    for i in 0..10_000u32 {
        let a = PathAttrs { communities: vec![i % 2], ..PathAttrs::local(MpNextHop::Ipv4(Ipv4Addr::UNSPECIFIED)) };
        let p4 = Prefix::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)).into(), 24).expect("v4");
        let p6 = Prefix::new(Ipv6Addr::from((0xfd00_u128 << 112) | (u128::from(i) << 64)).into(), 64).expect("v6");
        r.originate(p4, a.clone());
        r.originate(p6, a);
        v4.push((p4, i % 2));
        v6.push((p6, i % 2));
    }
    assert_eq!(r.attr_sets(), 2, "two attribute sets shared by 20k routes");
    let e1 = peer(&mut r, 2, 65002, false);
    let ups = sent(&mut r, e1);
    let eor: Vec<Family> = ups.iter().filter_map(|u| u.end_of_rib_family()).collect();
    assert_eq!(eor, vec![Family::Ipv4Unicast, Family::Ipv6Unicast]);
    assert_eq!(ups.last().and_then(|u| u.end_of_rib_family()), Some(Family::Ipv6Unicast), "End-of-RIB after the dump");
    let mut back: Vec<(Prefix, u32)> = Vec::new();
    for u in &ups {
        let Some(AttrValue::Communities(c)) = u.attr(8) else { continue };
        assert_eq!(u.attr(2), Some(&AttrValue::AsPath(AsPath::sequence(&[OUR_AS]))));
        back.extend(u.announced().into_iter().map(|n| (n.prefix, c[0])));
    }
    let mut want: Vec<(Prefix, u32)> = v4.iter().chain(&v6).copied().collect();
    want.sort();
    back.sort();
    assert_eq!(back, want);
    let msgs = ups.len();
    eprintln!("10k IPv4 + 10k IPv6 prefixes in {msgs} UPDATEs (2 End-of-RIB)");
    assert!(msgs < 200, "{msgs} UPDATEs: prefixes are not being packed");
    for (p, _) in v4.iter().chain(&v6) {
        r.withdraw_local(*p);
    }
    let ups = sent(&mut r, e1);
    let mut gone: Vec<Prefix> = ups.iter().flat_map(|u| u.withdrawn_all()).map(|n| n.prefix).collect();
    gone.sort();
    assert_eq!(gone, want.iter().map(|x| x.0).collect::<Vec<_>>());
    eprintln!("withdrawing 20k prefixes: {} UPDATEs", ups.len());
    assert_eq!(r.attr_sets(), 0, "unused attribute sets are freed");
}

#[test]
fn import_policy_rewrites_or_refuses_routes() {
    let mut r = rib(false);
    let e1 = peer(&mut r, 2, 65002, false);
    // Only 10.0.0.0/8 from external peers, with LOCAL_PREF 50.
    r.set_import_policy(Box::new(|from, p, a| {
        a.local_pref = Some(50);
        from.asn == OUR_AS || p.to_string().starts_with("10.")
    }));
    announce(&mut r, e1, false, &["10.4.0.0/24", "172.16.0.0/24"], nh(2), attrs(&[65002], vec![]));
    let rib_in = r.adj_rib_in(e1);
    assert_eq!(rib_in.len(), 1);
    assert_eq!((rib_in[0].0, rib_in[0].1.local_pref), (pfx("10.4.0.0/24"), Some(50)));
    assert!(r.best(pfx("172.16.0.0/24")).is_none());
}

/// RFC 7606 §7.3 and RFC 4271 §6.3 checks that need the session: treat-as-withdraw.
#[test]
fn semantic_checks_on_receipt() {
    let mut r = rib(false);
    let e1 = peer(&mut r, 2, 65002, false);
    let ok = |r: &Rib| r.best(pfx(P)).is_some();
    announce(&mut r, e1, false, &[P], nh(2), attrs(&[65002], vec![]));
    assert!(ok(&r));
    // AS_PATH not starting with the peer's AS: the earlier route is withdrawn too.
    announce(&mut r, e1, false, &[P], nh(2), attrs(&[65099, 65002], vec![]));
    assert!(!ok(&r), "first AS must be the eBGP peer's");
    for bad in [Ipv4Addr::new(10, 0, 0, 1), Ipv4Addr::UNSPECIFIED, Ipv4Addr::LOCALHOST, Ipv4Addr::new(224, 0, 0, 5)] {
        announce(&mut r, e1, false, &[P], nh(2), attrs(&[65002], vec![]));
        assert!(ok(&r));
        announce(&mut r, e1, false, &[P], bad, attrs(&[65002], vec![]));
        assert!(!ok(&r), "next hop {bad}");
    }
}

/// A peer without the 4-octet AS capability gets AS_TRANS in AS_PATH and the real path in
/// AS4_PATH (RFC 6793 §4.2.2), which its side merges back.
#[test]
fn two_octet_session_gets_as4_path() {
    let mut r = rib(false);
    let e1 = peer(&mut r, 2, 65002, false);
    let old = r.add_peer(bgp::rib::PeerConfig {
        addr: "10.0.0.3".parse().expect("addr"),
        asn: 65003,
        rr_client: false,
        local_v4: Some(OUR_ID),
        local_v6: None,
    });
    let two = bgp::packet::SessionCaps { four_octet_as: false, families: vec![Family::Ipv4Unicast], ..caps(false) };
    r.peer_up(old, two.clone(), router_id(3)).expect("up");
    let _ = r.updates(old);
    announce(&mut r, e1, false, &[P], nh(2), attrs(&[65002, 4_200_000_000], vec![]));
    let ups = r.updates(old).expect("updates");
    let u = ups.into_iter().find(|u| !u.nlri.is_empty()).expect("an announcement");
    let b = bgp::packet::Message::Update(u).to_bytes(&two).expect("encode on a 2-octet session");
    let Ok(bgp::packet::Message::Update(u)) = bgp::packet::decode_message(&b, &two) else { panic!() };
    assert_eq!(u.attr(2), Some(&AttrValue::AsPath(AsPath::sequence(&[OUR_AS, 65002, 23456]))));
    assert_eq!(u.as_path(&two), Some(AsPath::sequence(&[OUR_AS, 65002, 4_200_000_000])));
}

/// ROUTE-REFRESH: the whole Adj-RIB-Out of the family again; the other family not.
#[test]
fn route_refresh_resends_the_family() {
    let mut r = rib(false);
    let e1 = peer(&mut r, 2, 65002, false);
    let e2 = peer(&mut r, 3, 65003, false);
    drain(&mut r, &[e1, e2]);
    announce(&mut r, e1, false, &[P, "10.9.1.0/24"], nh(2), attrs(&[65002], vec![]));
    announce6(&mut r, e1, false, &["fd00:9::/64"], "fd00::2".parse().expect("v6"), attrs(&[65002], vec![]));
    assert_eq!(announced(&got(&mut r, e2)).len(), 3);
    assert!(got(&mut r, e2).is_empty());
    r.refresh(e2, Family::Ipv4Unicast).expect("refresh");
    assert_eq!(announced(&got(&mut r, e2)), vec![pfx(P), pfx("10.9.1.0/24")]);
}

/// An IPv4 route learned with an IPv6 next hop (RFC 8950) goes over iBGP only to peers that
/// negotiated the extended next hop.
#[test]
fn ipv6_next_hop_for_ipv4_only_where_negotiated() {
    let mut r = rib(false);
    let with_ext = |ibgp: bool| {
        let mut c = caps(ibgp);
        c.extended_next_hop = vec![(Family::Ipv4Unicast, bgp::packet::AFI_IPV6)];
        c
    };
    // e1 negotiated extended next hop, e3 did not.
    let e1 = r.add_peer(bgp::rib::PeerConfig {
        addr: "10.0.0.2".parse().expect("addr"),
        asn: 65002,
        rr_client: false,
        local_v4: Some(OUR_ID),
        local_v6: None,
    });
    r.peer_up(e1, with_ext(false), router_id(2)).expect("up");
    let e3 = peer(&mut r, 5, 65005, false);
    let i1 = peer(&mut r, 3, OUR_AS, false);
    let i2 = r.add_peer(bgp::rib::PeerConfig {
        addr: "10.0.0.4".parse().expect("addr"),
        asn: OUR_AS,
        rr_client: false,
        local_v4: Some(OUR_ID),
        local_v6: None,
    });
    r.peer_up(i2, with_ext(true), router_id(4)).expect("up");
    drain(&mut r, &[e1, e3, i1, i2]);
    // Each session decodes with its own negotiated capabilities.
    let update = |asn: u32, c: &bgp::packet::SessionCaps| {
        let mut a = attrs(&[asn], vec![]);
        a.push(AttrValue::MpReach(bgp::packet::MpReach {
            family: Family::Ipv4Unicast,
            next_hop: MpNextHop::Ipv6 { global: "fd00::2".parse().expect("v6"), link_local: None },
            nlri: vec![pfx(P).into()],
        }));
        wire(Update::new(a, vec![]), c)
    };
    // Without the capability the route is treat-as-withdraw (RFC 8950, RFC 7606's spirit).
    r.receive(e3, &update(65005, &caps(false))).expect("receive");
    assert!(r.best(pfx(P)).is_none(), "an IPv6 next hop from a peer that did not negotiate it");
    r.receive(e1, &update(65002, &with_ext(false))).expect("receive");
    assert!(r.best(pfx(P)).is_some());
    assert!(got(&mut r, i1).is_empty(), "i1 did not negotiate extended next hop");
    // i2 decodes what it gets with the capabilities it negotiated.
    let ups: Vec<Update> = r
        .updates(i2)
        .expect("updates")
        .into_iter()
        .filter(|u| u.end_of_rib_family().is_none())
        .map(|u| wire(u, &with_ext(true)))
        .collect();
    assert_eq!(announced(&ups), vec![pfx(P)]);
    assert_eq!(ups[0].mp_reach().map(|m| m.next_hop.addr()), Some("fd00::2".parse().expect("v6")));
}

#[test]
fn next_hop_self_uses_the_addresses_set_before_the_session_comes_up() {
    let mut r = rib(false);
    r.originate(pfx(P), PathAttrs::local(MpNextHop::Ipv4(OUR_ID)));
    // A peer configured without our addresses: nothing can be given next hop self.
    let id = r.add_peer(bgp::rib::PeerConfig {
        addr: "10.0.0.40".parse().expect("addr"),
        asn: 65040,
        rr_client: false,
        local_v4: None,
        local_v6: None,
    });
    r.set_local_addresses(id, Some(Ipv4Addr::new(10, 0, 0, 39)), None).expect("known peer");
    r.peer_up(id, caps(false), router_id(40)).expect("peer up");
    let ups = got(&mut r, id);
    assert_eq!(announced(&ups), vec![pfx(P)]);
    assert_eq!(ups[0].attr(3), Some(&AttrValue::NextHop(Ipv4Addr::new(10, 0, 0, 39))));
    assert!(r.set_local_addresses(999, None, None).is_err());
}
