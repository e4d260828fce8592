// Shared helpers of the RIB tests (included with `#[path]`/`mod`).
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use bgp::packet::{
    decode_message, AsPath, AttrValue, Family, GrFamily, GracefulRestart, Message, MpNextHop, MpReach, Nlri, Origin,
    Prefix, SessionCaps, Update,
};
use bgp::rib::{Change, PeerConfig, PeerId, Rib, RibConfig};

pub const OUR_AS: u32 = 64512;
pub const OUR_ID: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

pub fn pfx(s: &str) -> Prefix {
    s.parse().expect("prefix")
}

pub fn rib(reflector: bool) -> Rib {
    Rib::new(RibConfig { asn: OUR_AS, router_id: OUR_ID, cluster_id: reflector.then_some(OUR_ID) })
}

pub fn caps(ibgp: bool) -> SessionCaps {
    SessionCaps {
        four_octet_as: true,
        families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        ibgp,
        ..SessionCaps::default()
    }
}

pub fn gr_caps(ibgp: bool, time: u16) -> SessionCaps {
    let mut c = caps(ibgp);
    c.peer_graceful_restart = Some(GracefulRestart {
        flags: 0,
        time,
        families: [Family::Ipv4Unicast, Family::Ipv6Unicast]
            .iter()
            .map(|f| GrFamily { afi: f.afi(), safi: f.safi(), flags: 0x80 })
            .collect(),
    });
    c
}

/// A peer at 10.0.0.`n` (router ID 10.255.0.`n`), session up.
pub fn peer(r: &mut Rib, n: u8, asn: u32, rr_client: bool) -> PeerId {
    let id = r.add_peer(PeerConfig {
        addr: IpAddr::V4(Ipv4Addr::new(10, 0, 0, n)),
        asn,
        rr_client,
        local_v4: Some(Ipv4Addr::new(10, 0, 0, 1)),
        local_v6: Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, 1)),
    });
    r.peer_up(id, caps(asn == OUR_AS), router_id(n)).expect("peer up");
    id
}

pub fn router_id(n: u8) -> Ipv4Addr {
    Ipv4Addr::new(10, 255, 0, n)
}

/// The UPDATE a peer sends, through the codec: encoded with the session's capabilities and
/// decoded back as our side reads it.
pub fn wire(u: Update, caps: &SessionCaps) -> Update {
    let bytes = Message::Update(u).to_bytes(caps).expect("encode");
    match decode_message(&bytes, caps).expect("decode") {
        Message::Update(u) => u,
        m => panic!("{m:?}"),
    }
}

/// Attributes of a route from a peer: ORIGIN IGP, AS_PATH `path`, plus `extra`.
pub fn attrs(path: &[u32], extra: Vec<AttrValue>) -> Vec<AttrValue> {
    let mut v = vec![AttrValue::Origin(Origin::Igp), AttrValue::AsPath(AsPath::sequence(path))];
    v.extend(extra);
    v
}

/// Peer `id` announces IPv4 `prefixes` with next hop `nh` and `a`.
pub fn announce(
    r: &mut Rib,
    id: PeerId,
    ibgp: bool,
    prefixes: &[&str],
    nh: Ipv4Addr,
    a: Vec<AttrValue>,
) -> Vec<Change> {
    let mut a = a;
    a.push(AttrValue::NextHop(nh));
    if ibgp && !a.iter().any(|x| matches!(x, AttrValue::LocalPref(_))) {
        a.push(AttrValue::LocalPref(100));
    }
    let u = Update::new(a, prefixes.iter().map(|p| Nlri::from(pfx(p))).collect());
    r.receive(id, &wire(u, &caps(ibgp))).expect("receive")
}

/// Peer `id` announces IPv6 `prefixes` (MP_REACH_NLRI) with next hop `nh`.
pub fn announce6(
    r: &mut Rib,
    id: PeerId,
    ibgp: bool,
    prefixes: &[&str],
    nh: Ipv6Addr,
    a: Vec<AttrValue>,
) -> Vec<Change> {
    let mut a = a;
    a.push(AttrValue::MpReach(MpReach {
        family: Family::Ipv6Unicast,
        next_hop: MpNextHop::Ipv6 { global: nh, link_local: None },
        nlri: prefixes.iter().map(|p| Nlri::from(pfx(p))).collect(),
    }));
    if ibgp {
        a.push(AttrValue::LocalPref(100));
    }
    r.receive(id, &wire(Update::new(a, Vec::new()), &caps(ibgp))).expect("receive")
}

pub fn withdraw(r: &mut Rib, id: PeerId, ibgp: bool, prefixes: &[&str]) -> Vec<Change> {
    let u = Update { withdrawn: prefixes.iter().map(|p| Nlri::from(pfx(p))).collect(), ..Update::default() };
    r.receive(id, &wire(u, &caps(ibgp))).expect("receive")
}

/// What a peer receives: our UPDATEs for it, each encoded (asserting the 4096-octet limit)
/// and decoded by the peer's side of the codec.
pub fn sent(r: &mut Rib, id: PeerId) -> Vec<Update> {
    let ibgp = r.peer_config(id).expect("peer").asn == OUR_AS;
    let c = caps(ibgp);
    r.updates(id)
        .expect("updates")
        .into_iter()
        .map(|u| {
            let b = Message::Update(u).to_bytes(&c).expect("encode");
            assert!(b.len() <= 4096, "{} octets", b.len());
            match decode_message(&b, &c).expect("peer decodes our UPDATE") {
                Message::Update(u) => u,
                m => panic!("{m:?}"),
            }
        })
        .collect()
}

/// The prefixes announced in `ups` (in order) and withdrawn.
pub fn announced(ups: &[Update]) -> Vec<Prefix> {
    ups.iter().flat_map(|u| u.announced()).map(|n| n.prefix).collect()
}
