//! Golden bytes from real daemons (tests/golden/README.md says how they were captured):
//! every message decodes, says what the daemon was configured to say, and re-encodes byte
//! for byte.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use bgp::packet::{
    decode_message, frame_len, negotiate, AsPath, AttrValue, Family, Message, Open, SessionCaps, Verdict, AS_TRANS,
};

const DAEMON_AS: u32 = 4_200_000_001;
const COMMUNITY_65001_100: u32 = (65001 << 16) | 100;

fn golden(name: &str) -> Vec<u8> {
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// Splits a recorded stream into frames with the codec's own framing.
fn frames(stream: &[u8]) -> Vec<&[u8]> {
    let mut out = Vec::new();
    let mut rest = stream;
    while !rest.is_empty() {
        let n = frame_len(rest).expect("valid header").expect("whole header");
        let (f, r) = rest.split_at(n);
        out.push(f);
        rest = r;
    }
    out
}

struct Session {
    ours: Open,
    theirs: Open,
    /// How the daemon's messages are decoded.
    caps: SessionCaps,
    messages: Vec<Message>,
}

/// Decodes a recording and checks that every message re-encodes to the same bytes.
fn session(daemon: &str, session: &str) -> Session {
    let our_bytes = golden(&format!("{daemon}-{session}.our-open.bin"));
    let Message::Open(ours) = decode_message(&our_bytes, &SessionCaps::default()).expect("our OPEN") else {
        panic!("our recording is not an OPEN")
    };
    let stream = golden(&format!("{daemon}-{session}.bin"));
    let fr = frames(&stream);
    let Message::Open(theirs) = decode_message(fr[0], &SessionCaps::default()).expect("their OPEN") else {
        panic!("{daemon}-{session}: first message is not an OPEN")
    };
    let caps = negotiate(&ours, &theirs);
    // Their messages are encoded with what they send: our receive is their send.
    let enc = caps.mirrored();
    let mut messages = Vec::new();
    for (i, f) in fr.iter().enumerate() {
        let m = decode_message(f, &caps).unwrap_or_else(|e| panic!("{daemon}-{session} #{i}: {e}"));
        let again = m.to_bytes(&enc).unwrap_or_else(|e| panic!("{daemon}-{session} #{i}: encode: {e}"));
        assert_eq!(hex(&again), hex(f), "{daemon}-{session} message #{i} ({}) re-encodes differently", m.kind());
        if let Message::Update(u) = &m {
            assert_eq!(u.verdict, Verdict::Accept, "{daemon}-{session} #{i}: {u:?}");
            assert_eq!(u.discarded().count(), 0);
        }
        messages.push(m);
    }
    Session { ours, theirs, caps, messages }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

fn updates(s: &Session) -> Vec<&bgp::packet::Update> {
    s.messages.iter().filter_map(|m| if let Message::Update(u) = m { Some(u) } else { None }).collect()
}

fn announced(s: &Session) -> BTreeSet<String> {
    updates(s).iter().flat_map(|u| u.announced()).map(|n| n.prefix.to_string()).collect()
}

fn end_of_ribs(s: &Session) -> BTreeSet<Family> {
    updates(s).iter().filter_map(|u| u.end_of_rib_family()).collect()
}

fn expected_prefixes() -> BTreeSet<String> {
    ["10.251.100.0/24", "10.251.101.0/24", "fd00:aaaa::/48"].iter().map(|s| s.to_string()).collect()
}

/// What every daemon's OPEN says: its 4-octet AS behind AS_TRANS, its router ID, both
/// unicast families, and what we negotiate with it.
fn check_open(daemon: &str, s: &Session, index: u8, hold: u16) {
    assert_eq!(s.theirs.version, 4);
    assert_eq!(s.theirs.my_as, AS_TRANS, "{daemon}: a 4-octet AS goes as AS_TRANS");
    assert_eq!(s.theirs.asn(), DAEMON_AS);
    assert_eq!(s.theirs.bgp_id, Ipv4Addr::new(10, 251, index, 2));
    assert_eq!(s.theirs.hold_time, hold, "{daemon}: default hold time");
    assert_eq!(s.caps.families, vec![Family::Ipv4Unicast, Family::Ipv6Unicast], "{daemon}");
    assert!(s.caps.route_refresh, "{daemon}: route refresh");
    assert_eq!(s.ours.asn() == DAEMON_AS, s.caps.ibgp);
}

/// The attributes of each announcement, per the daemons' configs: community 65001:100 and
/// MED 50 everywhere, AS path by session type.
fn check_routes(daemon: &str, s: &Session, ibgp: bool, four_octet: bool) {
    assert_eq!(announced(s), expected_prefixes(), "{daemon}: announced prefixes");
    assert_eq!(end_of_ribs(s), [Family::Ipv4Unicast, Family::Ipv6Unicast].into(), "{daemon}: End-of-RIB");
    for u in updates(s).into_iter().filter(|u| !u.announced().is_empty()) {
        let Some(AttrValue::Communities(c)) = u.attr(8) else { panic!("{daemon}: no COMMUNITIES in {u:?}") };
        assert!(c.contains(&COMMUNITY_65001_100), "{daemon}: {c:?}");
        assert_eq!(u.attr(4), Some(&AttrValue::Med(50)), "{daemon}: MED");
        let Some(AttrValue::AsPath(p)) = u.attr(2) else { panic!("{daemon}: no AS_PATH") };
        if ibgp {
            assert_eq!(p, &AsPath::sequence(&[]), "{daemon}: iBGP originates an empty AS_PATH");
            assert_eq!(u.attr(5), Some(&AttrValue::LocalPref(100)), "{daemon}: LOCAL_PREF");
        } else if four_octet {
            assert_eq!(p, &AsPath::sequence(&[DAEMON_AS]), "{daemon}");
            assert_eq!(u.attr(17), None, "{daemon}: no AS4_PATH between 4-octet speakers");
        } else {
            // RFC 6793 §4.2.2: AS_TRANS in AS_PATH, the real path in AS4_PATH.
            assert_eq!(p, &AsPath::sequence(&[u32::from(AS_TRANS)]), "{daemon}");
            assert_eq!(u.attr(17), Some(&AttrValue::As4Path(AsPath::sequence(&[DAEMON_AS]))), "{daemon}");
            assert_eq!(u.as_path(&s.caps), Some(AsPath::sequence(&[DAEMON_AS])), "{daemon}: merged path");
            // What we would send in the daemon's place is what it sent.
            let (two, four) = AsPath::sequence(&[DAEMON_AS]).to_two_octet();
            assert_eq!((Some(&AttrValue::AsPath(two)), four.map(AttrValue::As4Path).as_ref()), (u.attr(2), u.attr(17)));
        }
        if let Some(m) = u.mp_reach() {
            // IPv4 routes in MP_REACH_NLRI only with an IPv6 next hop (RFC 8950, negotiated).
            if m.family == Family::Ipv4Unicast {
                assert!(s.caps.extended_next_hop.contains(&(Family::Ipv4Unicast, 2)), "{daemon}");
                assert!(matches!(m.next_hop, bgp::packet::MpNextHop::Ipv6 { .. }), "{daemon}: {m:?}");
            }
        } else {
            assert!(matches!(u.attr(3), Some(AttrValue::NextHop(_))), "{daemon}: NEXT_HOP for IPv4 NLRI");
        }
    }
}

fn check_daemon(daemon: &str, index: u8, hold: u16) {
    let e = session(daemon, "ebgp-v4");
    check_open(daemon, &e, index, hold);
    assert!(e.caps.four_octet_as);
    check_routes(daemon, &e, false, true);

    let two = session(daemon, "ebgp-as2");
    assert!(!two.caps.four_octet_as, "{daemon}: we left out the 4-octet AS capability");
    check_routes(daemon, &two, false, false);

    let i = session(daemon, "ibgp-v6");
    check_open(daemon, &i, index, hold);
    assert!(i.caps.ibgp);
    check_routes(daemon, &i, true, true);

    let bad = session(daemon, "bad-as");
    let Some(Message::Notification(n)) = bad.messages.last() else { panic!("{daemon}: no NOTIFICATION") };
    assert_eq!((n.code, n.subcode), (2, 2), "{daemon}: {n}");
    assert_eq!(n.name(), "2/2 OPEN Message Error: Bad Peer AS");
}

#[test]
fn bird() {
    check_daemon("bird", 1, 240);
    let i = session("bird", "ibgp-v6");
    // BIRD was told to send path identifiers on iBGP (we offered to receive them) and IPv4
    // routes with an IPv6 next hop (RFC 8950).
    assert_eq!(i.caps.add_path_receive, vec![Family::Ipv4Unicast, Family::Ipv6Unicast]);
    assert!(updates(&i).iter().flat_map(|u| u.announced()).all(|n| n.path_id.is_some()));
    assert!(i.caps.extended_next_hop.contains(&(Family::Ipv4Unicast, 2)));
    let v4 = updates(&i).into_iter().find_map(|u| u.mp_reach().filter(|m| m.family == Family::Ipv4Unicast).cloned());
    let v4 = v4.expect("IPv4 routes in MP_REACH_NLRI with an IPv6 next hop");
    assert!(matches!(v4.next_hop, bgp::packet::MpNextHop::Ipv6 { .. }), "{v4:?}");
}

#[test]
fn gobgp() {
    check_daemon("gobgp", 2, 90);
    let i = session("gobgp", "ibgp-v6");
    assert_eq!(i.caps.add_path_receive, vec![Family::Ipv4Unicast, Family::Ipv6Unicast]);
    assert!(updates(&i).iter().flat_map(|u| u.announced()).all(|n| n.path_id.is_some()));
    // Over IPv4 transport GoBGP gives its IPv6 routes an IPv4-mapped next hop.
    let e = session("gobgp", "ebgp-v4");
    let m = updates(&e).into_iter().find_map(|u| u.mp_reach().cloned()).expect("IPv6 routes");
    let mapped = "::ffff:10.251.2.2".parse().expect("address");
    assert_eq!(m.next_hop, bgp::packet::MpNextHop::Ipv6 { global: mapped, link_local: None });
}

#[test]
fn frr() {
    check_daemon("frr", 3, 180);
    let i = session("frr", "ibgp-v6");
    // `extended-optional-parameters` makes FRR send RFC 9072's format.
    assert!(i.theirs.extended_params);
    assert!(!session("frr", "ebgp-v4").theirs.extended_params);
    assert_eq!(i.caps.add_path_receive, vec![Family::Ipv4Unicast, Family::Ipv6Unicast]);
    // FRR on a shared link adds the link-local next hop (RFC 2545 §3).
    let e = session("frr", "ebgp-v4");
    let m = updates(&e).into_iter().find_map(|u| u.mp_reach().cloned()).expect("IPv6 routes");
    assert!(matches!(m.next_hop, bgp::packet::MpNextHop::Ipv6 { link_local: Some(_), .. }), "{m:?}");
}
