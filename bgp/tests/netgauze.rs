//! Cross-check with `netgauze-bgp-pkt`, an independent, maintained implementation: what we
//! encode it decodes (and writes back to bytes we decode to the same value), and what it
//! encodes from the daemons' golden messages we decode to the same value. Messages: the golden
//! captures and a few thousand from a deterministic generator.

use std::collections::HashMap;
use std::path::PathBuf;

use bgp::packet::{
    decode_message, frame_len, negotiate, AddPathFamily, AsPath, AsSegment, AttrValue, Capability, Family, GrFamily,
    GracefulRestart, Message, MpNextHop, MpReach, MpUnreach, Nlri, Notification, Open, Origin, Prefix, RouteRefresh,
    SegmentKind, SessionCaps, Update,
};
use netgauze_bgp_pkt::wire::deserializer::BgpParsingContext;
use netgauze_bgp_pkt::BgpMessage;
use netgauze_iana::address_family::AddressType;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::ParseFromWithOneInput;
use netgauze_parse_utils::WritablePdu;

fn ctx(c: &SessionCaps) -> BgpParsingContext {
    let mut ap = HashMap::new();
    for f in &c.add_path_receive {
        ap.insert(if *f == Family::Ipv4Unicast { AddressType::Ipv4Unicast } else { AddressType::Ipv6Unicast }, true);
    }
    BgpParsingContext::new(c.four_octet_as, HashMap::new(), ap, true, true, true, true)
}

/// netgauze decodes `bytes` (encoded for a reader with `c`) and writes it back.
fn through_netgauze(bytes: &[u8], c: &SessionCaps) -> Vec<u8> {
    let mut r = SliceReader::new(bytes);
    let m = BgpMessage::parse(&mut r, &mut ctx(c)).unwrap_or_else(|e| panic!("netgauze rejects {bytes:02x?}: {e:?}"));
    let mut out = Vec::new();
    m.write(&mut out).unwrap_or_else(|e| panic!("netgauze cannot write {m:?}: {e:?}"));
    out
}

/// Attribute flags' extended-length bit is an encoding choice, not a value: compare without it.
fn canonical(m: Message) -> Message {
    match m {
        Message::Update(mut u) => {
            for a in &mut u.attrs {
                a.flags &= !0x10;
            }
            Message::Update(u)
        }
        m => m,
    }
}

/// Both directions for one message: ours → netgauze → ours gives the same value.
fn check(m: &Message, c: &SessionCaps) {
    let ours = m.to_bytes(c).expect("encode");
    let reader = c.mirrored();
    let theirs = through_netgauze(&ours, &reader);
    let back = decode_message(&theirs, &reader).unwrap_or_else(|e| panic!("we reject netgauze's {theirs:02x?}: {e}"));
    let mine = decode_message(&ours, &reader).expect("our own bytes");
    assert_eq!(canonical(back), canonical(mine), "\nours     {ours:02x?}\nnetgauze {theirs:02x?}");
}

#[test]
fn golden_messages_agree() {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut n = 0;
    for d in ["bird", "gobgp", "frr"] {
        for s in ["ebgp-v4", "ebgp-as2", "ibgp-v6", "bad-as"] {
            let ours = std::fs::read(dir.join(format!("{d}-{s}.our-open.bin"))).expect("read");
            let stream = std::fs::read(dir.join(format!("{d}-{s}.bin"))).expect("read");
            let Ok(Message::Open(our_open)) = decode_message(&ours, &SessionCaps::default()) else { panic!() };
            let mut rest = stream.as_slice();
            let mut caps = SessionCaps::default();
            while !rest.is_empty() {
                let len = frame_len(rest).expect("frame").expect("whole");
                let (f, r) = rest.split_at(len);
                rest = r;
                let m = decode_message(f, &caps).expect("decode");
                if let Message::Open(o) = &m {
                    caps = negotiate(&our_open, o);
                    if o.extended_params {
                        // netgauze 0.13 does not read RFC 9072's format (FRR sends it).
                        let mut rd = SliceReader::new(f);
                        assert!(BgpMessage::parse(&mut rd, &mut ctx(&caps)).is_err());
                        n += 1;
                        continue;
                    }
                }
                // netgauze reads the daemon's bytes and writes them; we decode its output
                // to the value we decoded from the daemon.
                let theirs = through_netgauze(f, &caps);
                let back = decode_message(&theirs, &caps).expect("decode netgauze's bytes");
                assert_eq!(canonical(back), canonical(m.clone()), "{d}-{s}");
                check(&m, &caps.mirrored());
                n += 1;
            }
        }
    }
    assert!(n >= 60, "{n} golden messages");
}

/// xorshift64* (`testkit::rng`): deterministic.
use testkit::rng::{Draw as _, XorShift64Star as Rng};

fn prefix(r: &mut Rng, f: Family) -> Prefix {
    match f {
        // Unicast space only: netgauze refuses multicast and class E prefixes as unicast NLRI.
        Family::Ipv4Unicast => {
            let a = ((1 + r.below(223) as u32) << 24) | (r.next() as u32 & 0x00ff_ffff);
            Prefix::new(std::net::Ipv4Addr::from(a).into(), 8 + r.below(25) as u8)
        }
        Family::Ipv6Unicast => {
            let a = (u128::from(0x2000 | (r.next() & 0x1fff)) << 112) | u128::from(r.next());
            Prefix::new(std::net::Ipv6Addr::from(a).into(), 16 + r.below(113) as u8)
        }
    }
    .expect("valid length")
}

fn nlris(r: &mut Rng, f: Family, add_path: bool, max: u64) -> Vec<Nlri> {
    (0..r.below(max)).map(|_| Nlri { path_id: add_path.then(|| r.next() as u32), prefix: prefix(r, f) }).collect()
}

fn as_path(r: &mut Rng, four: bool) -> AsPath {
    AsPath(
        (0..r.below(3))
            .map(|_| AsSegment {
                kind: if r.below(4) == 0 { SegmentKind::Set } else { SegmentKind::Sequence },
                asns: (0..1 + r.below(5)).map(|_| if four { r.next() as u32 } else { r.below(65536) as u32 }).collect(),
            })
            .collect(),
    )
}

fn gen_update(r: &mut Rng, c: &SessionCaps) -> Update {
    let four = c.four_octet_as;
    let ap4 = c.add_path_send(Family::Ipv4Unicast);
    let ap6 = c.add_path_send(Family::Ipv6Unicast);
    let mut attrs = vec![
        AttrValue::Origin([Origin::Igp, Origin::Egp, Origin::Incomplete][r.below(3) as usize]),
        AttrValue::AsPath(as_path(r, four)),
    ];
    let nlri = nlris(r, Family::Ipv4Unicast, ap4, 6);
    if !nlri.is_empty() || r.coin() {
        attrs.push(AttrValue::NextHop(std::net::Ipv4Addr::from(r.next() as u32)));
    }
    if r.coin() {
        attrs.push(AttrValue::Med(r.next() as u32));
    }
    if c.ibgp {
        attrs.push(AttrValue::LocalPref(r.next() as u32));
    }
    if r.below(4) == 0 {
        attrs.push(AttrValue::AtomicAggregate);
    }
    if r.below(4) == 0 {
        let asn = if four { r.next() as u32 } else { r.below(65536) as u32 };
        attrs.push(AttrValue::Aggregator { asn, addr: std::net::Ipv4Addr::from(r.next() as u32) });
    }
    if r.coin() {
        attrs.push(AttrValue::Communities((0..1 + r.below(4)).map(|_| r.next() as u32).collect()));
    }
    if c.ibgp && r.coin() {
        attrs.push(AttrValue::OriginatorId(std::net::Ipv4Addr::from(r.next() as u32)));
        attrs.push(AttrValue::ClusterList(
            (0..1 + r.below(3)).map(|_| std::net::Ipv4Addr::from(r.next() as u32)).collect(),
        ));
    }
    if !four && r.coin() {
        attrs.push(AttrValue::As4Path(as_path(r, true)));
    }
    if r.coin() {
        let nlri = nlris(r, Family::Ipv6Unicast, ap6, 4);
        let g = std::net::Ipv6Addr::from((u128::from(r.next()) << 64) | 1);
        let link_local = r.coin().then(|| std::net::Ipv6Addr::from((0xfe80u128 << 112) | u128::from(r.next())));
        attrs.push(AttrValue::MpReach(MpReach {
            family: Family::Ipv6Unicast,
            next_hop: MpNextHop::Ipv6 { global: g, link_local },
            nlri,
        }));
    }
    if r.coin() {
        attrs.push(AttrValue::MpUnreach(MpUnreach {
            family: Family::Ipv6Unicast,
            withdrawn: nlris(r, Family::Ipv6Unicast, ap6, 4),
        }));
    }
    if r.below(5) == 0 {
        attrs.push(AttrValue::Unknown {
            code: 200 + r.below(50) as u8,
            value: vec![r.next() as u8; r.below(6) as usize],
        });
    }
    let mut u = Update::new(attrs, nlri);
    u.withdrawn = nlris(r, Family::Ipv4Unicast, ap4, 4);
    // Some attributes with the extended-length bit although short (as FRR sends them).
    for a in &mut u.attrs {
        if r.below(4) == 0 {
            a.flags |= 0x10;
        }
    }
    u
}

fn gen_open(r: &mut Rng) -> Open {
    let mut caps = vec![Capability::Multiprotocol { afi: 1, safi: 1 }];
    if r.coin() {
        caps.push(Capability::Multiprotocol { afi: 2, safi: 1 });
    }
    if r.coin() {
        caps.push(Capability::RouteRefresh);
    }
    if r.coin() {
        caps.push(Capability::EnhancedRouteRefresh);
    }
    if r.coin() {
        caps.push(Capability::GracefulRestart(GracefulRestart {
            flags: if r.coin() { 8 } else { 0 },
            time: r.below(4096) as u16,
            families: vec![GrFamily { afi: 1, safi: 1, flags: if r.coin() { 0x80 } else { 0 } }],
        }));
    }
    if r.coin() {
        caps.push(Capability::AddPath(vec![AddPathFamily { afi: 1, safi: 1, send_receive: 1 + r.below(3) as u8 }]));
    }
    let asn = if r.coin() { r.below(65536) as u32 } else { r.next() as u32 };
    // A unicast identifier: netgauze applies RFC 4271's "valid unicast host address", we
    // RFC 6286's "non-zero".
    let id = std::net::Ipv4Addr::from(((1 + r.below(223) as u32) << 24) | (r.next() as u32 & 0x00ff_ffff));
    let hold = if r.coin() { 0 } else { 3 + r.below(1000) as u16 };
    let mut o = Open::new(asn, hold, id, caps);
    if r.coin() {
        // One capability per parameter, as FRR and GoBGP send them.
        o.params = o.params.concat().into_iter().map(|c| vec![c]).collect();
    }
    o
}

#[test]
fn generated_messages_agree() {
    let mut r = Rng(0x5eed_b9b0_0000_0001);
    for i in 0..3000 {
        let c = SessionCaps {
            four_octet_as: r.coin(),
            families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
            add_path_send: match r.below(3) {
                0 => vec![],
                1 => vec![Family::Ipv4Unicast],
                _ => vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
            },
            ibgp: r.coin(),
            ..SessionCaps::default()
        };
        let m = match i % 10 {
            0 => Message::Open(gen_open(&mut r)),
            1 => Message::Keepalive,
            2 => {
                // Registered pairs: netgauze refuses unassigned subcodes.
                let pairs = [(1, 1), (1, 2), (1, 3), (2, 1), (2, 2), (2, 3), (2, 4), (2, 6), (2, 7), (3, 1), (3, 3)];
                let pairs =
                    [&pairs[..], &[(3, 4), (3, 5), (3, 6), (3, 9), (3, 10), (3, 11), (4, 0), (6, 2), (6, 4)]].concat();
                let (code, subcode) = pairs[r.below(pairs.len() as u64) as usize];
                Message::Notification(Notification { code, subcode, data: vec![r.next() as u8; r.below(8) as usize] })
            }
            3 => Message::RouteRefresh(RouteRefresh { afi: 1 + r.below(2) as u16, subtype: 0, safi: 1 }),
            4 => Message::Update(Update::end_of_rib(if r.coin() { Family::Ipv4Unicast } else { Family::Ipv6Unicast })),
            _ => Message::Update(gen_update(&mut r, &c)),
        };
        check(&m, &c);
    }
}
