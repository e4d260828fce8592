//! Random announcements, withdrawals and session resets from eBGP peers, reflector clients and
//! non-clients, checked after every step against what the RFCs define: the Loc-RIB best of each
//! prefix is the minimum of its candidates under `compare`, and each peer's Adj-RIB-Out is
//! exactly the table it builds from the UPDATEs we sent it (through the codec).

#[path = "rib_common/mod.rs"]
mod common;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bgp::packet::{AsPath, AttrValue, Prefix};
use bgp::rib::{compare, Candidate, PeerFacts, PeerId, Rib};
use common::*;

/// xorshift64* (`testkit::rng`): deterministic.
use testkit::rng::{Draw as _, XorShift64Star as Rng};

struct P {
    id: PeerId,
    n: u8,
    asn: u32,
    /// The table the peer built from our UPDATEs: prefix → AS_PATH.
    view: BTreeMap<Prefix, AsPath>,
}

fn prefixes() -> Vec<Prefix> {
    let mut v: Vec<Prefix> =
        (0..24u32).map(|i| Prefix::new(Ipv4Addr::from(0x0a40_0000 + (i << 8)).into(), 24).expect("v4")).collect();
    v.extend((0..8u128).map(|i| Prefix::new(Ipv6Addr::from((0xfd00_u128 << 112) | (i << 64)).into(), 64).expect("v6")));
    v
}

fn apply_sent(r: &mut Rib, p: &mut P) {
    for u in sent(r, p.id) {
        for w in u.withdrawn_all() {
            p.view.remove(&w.prefix);
        }
        for n in u.announced() {
            let Some(AttrValue::AsPath(path)) = u.attr(2) else { panic!("no AS_PATH") };
            p.view.insert(n.prefix, path.clone());
        }
    }
}

#[test]
fn random_operations_keep_loc_rib_and_adj_rib_out_consistent() {
    let mut r = rib(true);
    let mut peers: Vec<P> = Vec::new();
    for (n, asn, client) in
        [(2, 65002, false), (3, 65003, false), (11, OUR_AS, true), (12, OUR_AS, true), (21, OUR_AS, false)]
    {
        let id = peer(&mut r, n, asn, client);
        peers.push(P { id, n, asn, view: BTreeMap::new() });
    }
    let all = prefixes();
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    for step in 0..3000 {
        let pi = rng.below(peers.len() as u64) as usize;
        let (id, n, asn) = (peers[pi].id, peers[pi].n, peers[pi].asn);
        let ibgp = asn == OUR_AS;
        let pf = all[rng.below(all.len() as u64) as usize];
        match rng.below(10) {
            0..=5 => {
                // A path of 1..4 ASes starting with the peer's (iBGP: an external path).
                let mut path = if ibgp { vec![] } else { vec![asn] };
                for _ in 0..rng.below(3) {
                    path.push(65100 + rng.below(5) as u32);
                }
                let mut extra = vec![AttrValue::Med(rng.below(3) as u32)];
                if ibgp {
                    extra.push(AttrValue::LocalPref(100 + 10 * rng.below(3) as u32));
                }
                let s = pf.to_string();
                if pf.addr().is_ipv4() {
                    announce(&mut r, id, ibgp, &[&s], Ipv4Addr::new(192, 0, 2, n), attrs(&path, extra));
                } else {
                    announce6(
                        &mut r,
                        id,
                        ibgp,
                        &[&s],
                        Ipv6Addr::new(0xfd00, 2, 0, 0, 0, 0, 0, n.into()),
                        attrs(&path, extra),
                    );
                }
            }
            6..=8 => {
                if pf.addr().is_ipv4() {
                    withdraw(&mut r, id, ibgp, &[&pf.to_string()]);
                } else {
                    // IPv6 withdrawals ride in MP_UNREACH_NLRI.
                    let u = bgp::packet::Update::new(
                        vec![AttrValue::MpUnreach(bgp::packet::MpUnreach {
                            family: bgp::packet::Family::Ipv6Unicast,
                            withdrawn: vec![pf.into()],
                        })],
                        vec![],
                    );
                    r.receive(id, &wire(u, &caps(ibgp))).expect("receive");
                }
            }
            _ => {
                // Session reset: the peer forgets what we sent, we forget what it sent.
                r.peer_down(id, false).expect("down");
                peers[pi].view.clear();
                r.peer_up(id, caps(ibgp), router_id(n)).expect("up");
            }
        }
        for p in peers.iter_mut() {
            apply_sent(&mut r, p);
            let out: BTreeMap<Prefix, AsPath> =
                r.adj_rib_out(p.id).expect("out").into_iter().map(|(k, a)| (k, a.as_path.clone())).collect();
            assert_eq!(p.view, out, "step {step}: peer {} saw something else than its Adj-RIB-Out", p.n);
        }
        // The Loc-RIB best is the minimum under `compare`.
        let facts = |id: PeerId| {
            let p = peers.iter().find(|p| p.id == id).expect("peer");
            PeerFacts {
                ebgp: p.asn != OUR_AS,
                router_id: router_id(p.n),
                addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, p.n)),
            }
        };
        let mut cands: BTreeMap<Prefix, Vec<(PeerId, std::sync::Arc<bgp::rib::PathAttrs>)>> = BTreeMap::new();
        for p in &peers {
            for (k, a, _) in r.adj_rib_in(p.id) {
                cands.entry(k).or_default().push((p.id, a));
            }
        }
        let loc: BTreeMap<Prefix, PeerId> =
            r.loc_rib().into_iter().map(|(k, b)| (k, b.peer.expect("learned"))).collect();
        assert_eq!(loc.keys().collect::<Vec<_>>(), cands.keys().collect::<Vec<_>>(), "step {step}");
        for (k, c) in &cands {
            let best = loc[k];
            let (_, ba) = c.iter().find(|(id, _)| *id == best).expect("best is a candidate");
            let b = Candidate { attrs: ba, peer: Some(facts(best)) };
            for (id, a) in c {
                let o = Candidate { attrs: a, peer: Some(facts(*id)) };
                assert!(compare(&o, &b).0.is_ge(), "step {step}: {k}: {id} beats the best {best}");
            }
        }
    }
}
