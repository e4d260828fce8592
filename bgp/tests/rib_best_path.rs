//! RFC 4271 §9.1.2.2 best-path selection: each step decides exactly when every earlier step
//! ties, whatever the later steps say; and the Loc-RIB follows it with one change per new best.

#[path = "rib_common/mod.rs"]
mod common;

use std::cmp::Ordering;
use std::net::{IpAddr, Ipv4Addr};

use bgp::packet::{AsPath, AsSegment, AttrValue, MpNextHop, Origin, SegmentKind};
use bgp::rib::{compare, Candidate, PathAttrs, PeerFacts, Step};
use common::*;

/// The steps between two learned routes (`Local` is tested on its own).
fn steps() -> &'static [Step] {
    &Step::ORDER[1..]
}

/// A route whose value at each step is the better one (`true`) or the worse one.
fn route(good: impl Fn(Step) -> bool) -> (PathAttrs, PeerFacts) {
    let mut a = PathAttrs::local(MpNextHop::Ipv4(Ipv4Addr::new(192, 0, 2, 1)));
    a.local_pref = Some(if good(Step::LocalPref) { 200 } else { 100 });
    // Both paths start with AS 65001, so their MEDs are comparable.
    a.as_path = AsPath::sequence(if good(Step::AsPathLength) { &[65001] } else { &[65001, 65002] });
    a.origin = if good(Step::Origin) { Origin::Igp } else { Origin::Incomplete };
    a.med = Some(if good(Step::Med) { 10 } else { 20 });
    if !good(Step::ClusterListLength) {
        a.cluster_list = vec![Ipv4Addr::new(9, 9, 9, 9)];
    }
    let facts = PeerFacts {
        ebgp: good(Step::EbgpOverIbgp),
        router_id: if good(Step::RouterId) { Ipv4Addr::new(1, 1, 1, 1) } else { Ipv4Addr::new(2, 2, 2, 2) },
        addr: IpAddr::V4(if good(Step::PeerAddress) { Ipv4Addr::new(10, 0, 0, 2) } else { Ipv4Addr::new(10, 0, 0, 3) }),
    };
    (a, facts)
}

#[test]
fn each_step_decides_alone() {
    assert_eq!(Step::ORDER[0], Step::Local);
    let steps = steps();
    for (k, step) in steps.iter().enumerate() {
        // Equal (good) before step k, the winner better at k and worse at every later step.
        let (wa, wf) = route(|s| steps.iter().position(|x| *x == s).is_some_and(|i| i <= k));
        let (la, lf) = route(|s| steps.iter().position(|x| *x == s).is_some_and(|i| i != k));
        let w = Candidate { attrs: &wa, peer: Some(wf) };
        let l = Candidate { attrs: &la, peer: Some(lf) };
        assert_eq!(compare(&w, &l), (Ordering::Less, *step), "winner first, step {step:?}");
        assert_eq!(compare(&l, &w), (Ordering::Greater, *step), "winner second, step {step:?}");
    }
}

#[test]
fn locally_originated_beats_any_learned_route() {
    let (la, lf) = route(|_| true);
    let local = PathAttrs::local(MpNextHop::Ipv4(Ipv4Addr::UNSPECIFIED));
    let mut worst = local.clone();
    worst.origin = Origin::Incomplete;
    let (l, o) = (Candidate { attrs: &worst, peer: None }, Candidate { attrs: &la, peer: Some(lf) });
    assert_eq!(compare(&l, &o), (Ordering::Less, Step::Local));
}

#[test]
fn as_set_counts_one() {
    let (mut a, f) = route(|_| true);
    let mut b = a.clone();
    // 65001 {65002 65003 65004}: length 2; 65001 65005 65006: length 3.
    a.as_path = AsPath(vec![
        AsSegment { kind: SegmentKind::Sequence, asns: vec![65001] },
        AsSegment { kind: SegmentKind::Set, asns: vec![65002, 65003, 65004] },
    ]);
    b.as_path = AsPath::sequence(&[65001, 65005, 65006]);
    let g = PeerFacts { addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)), ..f };
    assert_eq!(
        compare(&Candidate { attrs: &a, peer: Some(f) }, &Candidate { attrs: &b, peer: Some(g) }),
        (Ordering::Less, Step::AsPathLength)
    );
}

#[test]
fn med_compared_only_within_one_neighbour_as() {
    let (mut a, f) = route(|s| s != Step::RouterId);
    let (mut b, g) = route(|_| true);
    // a: lower MED but worse router ID; b from another neighbouring AS.
    a.med = Some(5);
    b.med = Some(50);
    b.as_path = AsPath::sequence(&[65009]);
    let r = compare(&Candidate { attrs: &a, peer: Some(f) }, &Candidate { attrs: &b, peer: Some(g) });
    assert_eq!(r, (Ordering::Greater, Step::RouterId), "MED skipped across neighbour ASes");
    // From the same AS the MED decides.
    b.as_path = AsPath::sequence(&[65001]);
    let r = compare(&Candidate { attrs: &a, peer: Some(f) }, &Candidate { attrs: &b, peer: Some(g) });
    assert_eq!(r, (Ordering::Less, Step::Med));
    // A missing MED is 0, the best.
    a.med = None;
    b.med = Some(1);
    let r = compare(&Candidate { attrs: &a, peer: Some(f) }, &Candidate { attrs: &b, peer: Some(g) });
    assert_eq!(r, (Ordering::Less, Step::Med));
}

#[test]
fn originator_id_stands_for_the_router_id_of_reflected_routes() {
    let (mut a, f) = route(|s| s != Step::RouterId);
    let (b, g) = route(|_| true);
    // a's peer has the higher router ID (2.2.2.2), but the route was reflected from 1.0.0.1.
    a.originator_id = Some(Ipv4Addr::new(1, 0, 0, 1));
    a.cluster_list.clear();
    let r = compare(&Candidate { attrs: &a, peer: Some(f) }, &Candidate { attrs: &b, peer: Some(g) });
    assert_eq!(r, (Ordering::Less, Step::RouterId));
}

#[test]
fn loc_rib_follows_selection_with_one_change_per_new_best() {
    let mut r = rib(false);
    let e1 = peer(&mut r, 2, 65001, false);
    let e2 = peer(&mut r, 3, 65002, false);
    let i1 = peer(&mut r, 4, OUR_AS, false);
    let nh = |n| Ipv4Addr::new(192, 0, 2, n);

    let c = announce(&mut r, e1, false, &["10.1.0.0/24"], nh(2), attrs(&[65001, 65100], vec![]));
    assert_eq!(c.len(), 1);
    assert_eq!(c[0].best.as_ref().and_then(|b| b.peer), Some(e1));
    // Shorter AS_PATH from e2 wins.
    let c = announce(&mut r, e2, false, &["10.1.0.0/24"], nh(3), attrs(&[65002], vec![]));
    assert_eq!(c.iter().map(|c| c.best.as_ref().and_then(|b| b.peer)).collect::<Vec<_>>(), vec![Some(e2)]);
    // A worse route from e1 changes nothing.
    let c = announce(&mut r, e1, false, &["10.1.0.0/24"], nh(2), attrs(&[65001, 65100, 65101], vec![]));
    assert!(c.is_empty(), "{c:?}");
    // Higher LOCAL_PREF over iBGP beats the shorter path.
    let c = announce(
        &mut r,
        i1,
        true,
        &["10.1.0.0/24"],
        nh(4),
        attrs(&[65003, 65004, 65005], vec![AttrValue::LocalPref(300)]),
    );
    assert_eq!(c[0].best.as_ref().and_then(|b| b.peer), Some(i1));
    assert_eq!(c[0].best.as_ref().map(|b| b.attrs.next_hop), Some(MpNextHop::Ipv4(nh(4))));
    // Withdrawals fall back in order, then the prefix is gone.
    assert_eq!(withdraw(&mut r, i1, true, &["10.1.0.0/24"])[0].best.as_ref().and_then(|b| b.peer), Some(e2));
    assert_eq!(withdraw(&mut r, e2, false, &["10.1.0.0/24"])[0].best.as_ref().and_then(|b| b.peer), Some(e1));
    let c = withdraw(&mut r, e1, false, &["10.1.0.0/24"]);
    assert_eq!(c.len(), 1);
    assert!(c[0].best.is_none());
    assert!(r.loc_rib().is_empty());
    // IPv6 through MP_REACH_NLRI.
    let v6 = "fd00:1::1".parse().expect("v6");
    let c = announce6(&mut r, e1, false, &["fd00:10::/64"], v6, attrs(&[65001], vec![]));
    assert_eq!(c[0].prefix, pfx("fd00:10::/64"));
    assert_eq!(c[0].best.as_ref().map(|b| b.attrs.next_hop), Some(MpNextHop::Ipv6 { global: v6, link_local: None }));
}

#[test]
fn treat_as_withdraw_removes_the_route() {
    let mut r = rib(false);
    let e1 = peer(&mut r, 2, 65001, false);
    announce(&mut r, e1, false, &["10.1.0.0/24"], Ipv4Addr::new(192, 0, 2, 2), attrs(&[65001], vec![]));
    // The same UPDATE with ORIGIN 7 (undefined): RFC 7606 §7.1 treat-as-withdraw.
    let c = caps(false);
    let u = bgp::packet::Update::new(
        vec![
            AttrValue::Origin(Origin::Igp),
            AttrValue::AsPath(AsPath::sequence(&[65001])),
            AttrValue::NextHop(Ipv4Addr::new(192, 0, 2, 2)),
        ],
        vec![pfx("10.1.0.0/24").into()],
    );
    let mut b = bgp::packet::Message::Update(u).to_bytes(&c).expect("encode");
    // header 19, withdrawn length 2, attribute length 2, ORIGIN flags/type/length 3.
    assert_eq!(&b[23..26], &[0x40, 1, 1]);
    b[26] = 7;
    let Ok(bgp::packet::Message::Update(u)) = bgp::packet::decode_message(&b, &c) else { panic!() };
    assert!(matches!(u.verdict, bgp::packet::Verdict::TreatAsWithdraw(_)));
    let ch = r.receive(e1, &u).expect("receive");
    assert_eq!(ch.len(), 1);
    assert!(ch[0].best.is_none());
    assert!(r.adj_rib_in(e1).is_empty());
}
