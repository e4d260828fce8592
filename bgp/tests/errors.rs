//! RFC 4271 §6 and RFC 7606 answers to malformed input: each case builds a message that is
//! wrong in one way and checks the NOTIFICATION (session reset), the treat-as-withdraw
//! verdict or the discarded attribute, and that whatever decodes re-encodes as received.

use bgp::packet::{
    decode_message, frame_len, notification_name, Attr, AttrValue, Family, Message, Nlri, Notification, Origin, Prefix,
    Remedy, SessionCaps, Update, Verdict,
};
use bgp::{EncodeError, Notify};

fn msg(ty: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![0xff; 16];
    v.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    v.push(ty);
    v.extend_from_slice(body);
    v
}

fn attr(flags: u8, code: u8, value: &[u8]) -> Vec<u8> {
    let mut v = vec![flags, code];
    if flags & 0x10 != 0 {
        v.extend_from_slice(&(value.len() as u16).to_be_bytes());
    } else {
        v.push(value.len() as u8);
    }
    v.extend_from_slice(value);
    v
}

const ORIGIN: &[u8] = &[0x40, 1, 1, 0];
const AS_PATH_4: &[u8] = &[0x40, 2, 6, 2, 1, 0, 0, 0xfd, 0xe8]; // AS_SEQUENCE 65000, 4-octet
const NEXT_HOP: &[u8] = &[0x40, 3, 4, 10, 0, 0, 1];
const NLRI: &[u8] = &[24, 10, 1, 2]; // 10.1.2.0/24

fn update(attrs: &[&[u8]], nlri: &[u8]) -> Vec<u8> {
    let a: Vec<u8> = attrs.concat();
    let mut b = vec![0, 0];
    b.extend_from_slice(&(a.len() as u16).to_be_bytes());
    b.extend_from_slice(&a);
    b.extend_from_slice(nlri);
    msg(2, &b)
}

fn caps() -> SessionCaps {
    SessionCaps {
        four_octet_as: true,
        families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        ..SessionCaps::default()
    }
}

fn reset(bytes: &[u8], c: &SessionCaps) -> Notify {
    match decode_message(bytes, c) {
        Err(n) => n,
        Ok(m) => panic!("expected a session reset, decoded {m:?}"),
    }
}

/// Decodes an UPDATE, checks it re-encodes to the same bytes, returns it.
fn decoded(bytes: &[u8], c: &SessionCaps) -> Update {
    let m = decode_message(bytes, c).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(m.to_bytes(&c.mirrored()).expect("encode"), bytes, "re-encodes as received");
    let Message::Update(u) = m else { panic!("not an UPDATE") };
    u
}

fn withdraws(bytes: &[u8], c: &SessionCaps) -> Vec<u8> {
    let u = decoded(bytes, c);
    let Verdict::TreatAsWithdraw(p) = &u.verdict else { panic!("expected treat-as-withdraw: {u:?}") };
    assert!(u.announced().is_empty());
    assert!(u.withdrawn_all().contains(&Nlri::from("10.1.2.0/24".parse::<Prefix>().expect("prefix"))));
    p.iter().map(|p| p.code).collect()
}

#[test]
fn header_errors() {
    let mut bad_marker = msg(4, &[]);
    bad_marker[3] = 0;
    let n = reset(&bad_marker, &caps());
    assert_eq!((n.code, n.subcode), (1, 1));
    let mut short = msg(4, &[]);
    short[17] = 18;
    let n = frame_len(&short).expect_err("length 18");
    assert_eq!((n.code, n.subcode, n.data.clone()), (1, 2, vec![0, 18]));
    let mut long = msg(4, &[]);
    long[16..18].copy_from_slice(&5000u16.to_be_bytes());
    assert_eq!(frame_len(&long).expect_err("5000").subcode, 2);
    let n = reset(&msg(4, &[0]), &caps());
    assert_eq!((n.code, n.subcode), (1, 2), "a KEEPALIVE is exactly 19 octets");
    // ROUTE-REFRESH: 1/2 for a plain request of the wrong length, 7/1 (RFC 7313) for a
    // BoRR/EoRR demarcation, with the message as data.
    assert_eq!(reset(&msg(5, &[0, 1, 0, 1, 9]), &caps()).subcode, 2);
    let rr = msg(5, &[0, 1, 1, 1, 9]);
    let n = reset(&rr, &caps());
    assert_eq!((n.code, n.subcode, n.data), (7, 1, rr));
    let n = reset(&msg(9, &[]), &caps());
    assert_eq!((n.code, n.subcode, n.data), (1, 3, vec![9]));
    // Incomplete input is not an error: the caller reads more.
    assert_eq!(frame_len(&[0xff; 10]), Ok(None));
}

fn open_body(version: u8, hold: u16, id: [u8; 4], params: &[u8]) -> Vec<u8> {
    let mut b = vec![version, 0xfd, 0xe8];
    b.extend_from_slice(&hold.to_be_bytes());
    b.extend_from_slice(&id);
    b.push(params.len() as u8);
    b.extend_from_slice(params);
    b
}

#[test]
fn open_errors() {
    let c = SessionCaps::default();
    let n = reset(&msg(1, &open_body(3, 90, [1, 1, 1, 1], &[])), &c);
    assert_eq!((n.code, n.subcode, n.data), (2, 1, vec![0, 4]), "data: the version we support");
    assert_eq!(reset(&msg(1, &open_body(4, 90, [0; 4], &[])), &c).subcode, 3);
    assert_eq!(reset(&msg(1, &open_body(4, 1, [1, 1, 1, 1], &[])), &c).subcode, 6);
    assert_eq!(
        reset(&msg(1, &open_body(4, 90, [1, 1, 1, 1], &[1, 2, 0, 0])), &c).subcode,
        4,
        "authentication parameter"
    );
    // An unknown capability is kept raw and ignored; the OPEN re-encodes as received.
    let b = msg(1, &open_body(4, 90, [1, 1, 1, 1], &[2, 5, 200, 3, 1, 2, 3]));
    let m = decode_message(&b, &c).expect("unknown capability");
    assert_eq!(m.to_bytes(&c).expect("encode"), b);
    let Message::Open(o) = m else { panic!() };
    assert_eq!(o.families(), vec![Family::Ipv4Unicast], "no multiprotocol capability: IPv4 alone");
    // More than 255 octets of parameters: the encoder switches to RFC 9072's format.
    let mut big = o.clone();
    big.params = (0..60).map(|i| vec![bgp::packet::Capability::Unknown { code: 200, value: vec![i; 3] }]).collect();
    let bytes = Message::Open(big.clone()).to_bytes(&c).expect("encode");
    assert_eq!(&bytes[28..30], &[255, 255]);
    let Message::Open(back) = decode_message(&bytes, &c).expect("decode") else { panic!() };
    assert!(back.extended_params);
    assert_eq!(back.params, big.params);
}

#[test]
fn update_session_resets() {
    let c = caps();
    // Withdrawn routes length beyond the message.
    let n = reset(&msg(2, &[0, 9, 0, 0]), &c);
    assert_eq!((n.code, n.subcode), (3, 1));
    // Total path attribute length beyond the message.
    assert_eq!(reset(&msg(2, &[0, 0, 0, 9, 0x40, 1, 1, 0]), &c).subcode, 1);
    // NLRI with a prefix longer than 32 bits (RFC 7606 §5.3).
    assert_eq!(reset(&update(&[ORIGIN, AS_PATH_4, NEXT_HOP], &[33, 10, 1, 2, 3, 4]), &c).subcode, 10);
    // A prefix overrunning the NLRI field.
    assert_eq!(reset(&update(&[ORIGIN, AS_PATH_4, NEXT_HOP], &[24, 10, 1]), &c).subcode, 10);
    // An unrecognised well-known attribute: 3/2 with the attribute as data.
    let unknown = attr(0x40, 99, &[1, 2]);
    let n = reset(&update(&[ORIGIN, AS_PATH_4, NEXT_HOP, &unknown], NLRI), &c);
    assert_eq!((n.code, n.subcode, n.data), (3, 2, unknown.clone()));
    // MP_REACH_NLRI: a next hop length that hides the NLRI, a bad prefix, a repeat.
    let mp = |nh_len: u8, nh: &[u8], nlri: &[u8]| {
        let mut v = vec![0, 2, 1, nh_len];
        v.extend_from_slice(nh);
        v.push(0);
        v.extend_from_slice(nlri);
        attr(0x90, 14, &v)
    };
    let v6 = [0x20, 1, 0x0d, 0xb8, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1];
    let good = mp(16, &v6, &[48, 0xfd, 0, 0xaa, 0xaa, 0, 0]);
    assert_eq!(reset(&update(&[ORIGIN, AS_PATH_4, &mp(5, &[1, 2, 3, 4, 5], &[])], &[]), &c).subcode, 9);
    assert_eq!(reset(&update(&[ORIGIN, AS_PATH_4, &mp(16, &v6, &[129, 0])], &[]), &c).subcode, 9);
    assert_eq!(reset(&update(&[ORIGIN, AS_PATH_4, &good, &good], &[]), &c).subcode, 1);
    let u = decoded(&update(&[ORIGIN, AS_PATH_4, &good], &[]), &c);
    assert_eq!(u.verdict, Verdict::Accept);
    assert_eq!(u.announced()[0].prefix.to_string(), "fd00:aaaa::/48");
    // MP_REACH with the wrong flags.
    let mut wrong = good.clone();
    wrong[0] = 0x50;
    assert_eq!(reset(&update(&[ORIGIN, AS_PATH_4, &wrong], &[]), &c).subcode, 4);
}

#[test]
fn update_treat_as_withdraw() {
    let c = caps();
    let base = |replace: u8, with: &[u8]| {
        let list: Vec<&[u8]> = [ORIGIN, AS_PATH_4, NEXT_HOP].into_iter().filter(|a| a[1] != replace).collect();
        let mut l = list.clone();
        l.push(with);
        update(&l, NLRI)
    };
    let cases: Vec<(Vec<u8>, u8)> = vec![
        (base(1, &attr(0x40, 1, &[5])), 1),                  // ORIGIN undefined value
        (base(1, &attr(0x40, 1, &[0, 0])), 1),               // ORIGIN length 2
        (base(1, &attr(0xc0, 1, &[0])), 1),                  // ORIGIN flagged optional (§3 c)
        (base(2, &attr(0x40, 2, &[7, 1, 0, 0, 0, 1])), 2),   // unknown segment type
        (base(2, &attr(0x40, 2, &[2, 0])), 2),               // zero-length segment
        (base(2, &attr(0x40, 2, &[2, 2, 0, 0, 0, 1])), 2),   // segment overrun
        (base(3, &attr(0x40, 3, &[10, 0, 0, 1, 0])), 3),     // NEXT_HOP length 5
        (base(0, &attr(0x80, 4, &[0, 0, 1])), 4),            // MED length 3
        (base(0, &attr(0xc0, 8, &[0, 0, 0, 1, 2])), 8),      // COMMUNITIES length 5
        (base(0, &attr(0xc0, 8, &[])), 8),                   // COMMUNITIES empty
        (base(0, &attr(0x80, 9, &[1, 2, 3])), 9),            // ORIGINATOR_ID length 3
        (base(0, &attr(0x80, 10, &[1, 2, 3, 4, 5, 6])), 10), // CLUSTER_LIST length 6
        (update(&[ORIGIN, AS_PATH_4], NLRI), 3),             // NEXT_HOP missing
        (update(&[AS_PATH_4, NEXT_HOP], NLRI), 1),           // ORIGIN missing
    ];
    for (bytes, code) in cases {
        assert_eq!(withdraws(&bytes, &c), vec![code], "{bytes:02x?}");
    }
    // LOCAL_PREF is mandatory on iBGP only, and checked there.
    let ibgp = SessionCaps { ibgp: true, ..caps() };
    let bad_lp = update(&[ORIGIN, AS_PATH_4, NEXT_HOP, &attr(0x40, 5, &[0, 1])], NLRI);
    assert_eq!(withdraws(&bad_lp, &ibgp), vec![5]);
    assert_eq!(withdraws(&update(&[ORIGIN, AS_PATH_4, NEXT_HOP], NLRI), &ibgp), vec![5]);
    assert_eq!(decoded(&update(&[ORIGIN, AS_PATH_4, NEXT_HOP], NLRI), &c).verdict, Verdict::Accept);
    // An attribute overrunning the list (RFC 7606 §4): the list length still finds the NLRI.
    let over = [0x80, 4, 9, 0, 0];
    let u = decoded(&update(&[ORIGIN, AS_PATH_4, NEXT_HOP, &over], NLRI), &c);
    assert!(matches!(u.verdict, Verdict::TreatAsWithdraw(_)));
    assert_eq!(u.withdrawn_all().len(), 1);
    // Fewer than 3 octets left at the end of the list.
    let u = decoded(&update(&[ORIGIN, AS_PATH_4, NEXT_HOP, &[0x80, 4]], NLRI), &c);
    assert!(matches!(u.verdict, Verdict::TreatAsWithdraw(_)));
    // Without NLRI the mandatory attributes are not needed (a pure withdrawal).
    let w = msg(2, &[0, 4, 24, 10, 1, 2, 0, 0]);
    let u = decoded(&w, &c);
    assert_eq!(u.verdict, Verdict::Accept);
    assert_eq!(u.withdrawn_all().len(), 1);
}

#[test]
fn update_attribute_discard() {
    let c = caps();
    for (extra, code) in [
        (attr(0x40, 6, &[1]), 6),                   // ATOMIC_AGGREGATE with a value
        (attr(0xc0, 7, &[0, 0, 1, 1, 1, 1, 1]), 7), // AGGREGATOR length 7 (4-octet session)
        (attr(0xc0, 17, &[2, 1, 0, 0]), 17),        // AS4_PATH truncated
        (attr(0xc0, 18, &[0, 0, 1]), 18),           // AS4_AGGREGATOR length 3
        (attr(0x80, 4, &[0, 0, 0, 7]), 4),          // MED repeated: only the first counts
    ] {
        let bytes = update(&[ORIGIN, AS_PATH_4, NEXT_HOP, &attr(0x80, 4, &[0, 0, 0, 1]), &extra], NLRI);
        let u = decoded(&bytes, &c);
        assert_eq!(u.verdict, Verdict::Accept, "code {code}");
        let d: Vec<_> = u.discarded().collect();
        assert_eq!(d.len(), 1, "code {code}");
        assert_eq!((d[0].code, d[0].remedy), (code, Remedy::Discard));
        assert_eq!(u.attr(4), Some(&AttrValue::Med(1)), "the first MED stays");
        assert_eq!(u.announced().len(), 1);
    }
    // LOCAL_PREF from an external peer is discarded (RFC 7606 §7.5), kept from an internal one.
    let lp = attr(0x40, 5, &[0, 0, 0, 100]);
    let u = decoded(&update(&[ORIGIN, AS_PATH_4, NEXT_HOP, &lp], NLRI), &c);
    assert_eq!((u.verdict.clone(), u.attr(5), u.discarded().count()), (Verdict::Accept, None, 1));
    let ibgp = SessionCaps { ibgp: true, ..caps() };
    let u = decoded(&update(&[ORIGIN, AS_PATH_4, NEXT_HOP, &lp], NLRI), &ibgp);
    assert_eq!(u.attr(5), Some(&AttrValue::LocalPref(100)));
    // AGGREGATOR's width follows the session: 6 octets without 4-octet AS.
    let two = SessionCaps::default();
    let as2 = [0x40, 2, 4, 2, 1, 0xfd, 0xe8];
    let u = decoded(&update(&[ORIGIN, &as2, NEXT_HOP, &attr(0xc0, 7, &[0xfd, 0xe8, 1, 1, 1, 1])], NLRI), &two);
    assert_eq!(u.attr(7), Some(&AttrValue::Aggregator { asn: 65000, addr: [1, 1, 1, 1].into() }));
}

#[test]
fn unknown_optional_attributes_pass_with_the_partial_bit() {
    let c = caps();
    let u = decoded(&update(&[ORIGIN, AS_PATH_4, NEXT_HOP, &attr(0xc0, 99, &[1, 2]), &attr(0x80, 98, &[3])], NLRI), &c);
    assert_eq!(u.verdict, Verdict::Accept);
    let t = u.attrs.iter().find(|a| a.value.code() == 99).expect("transitive kept");
    assert_eq!(t.for_propagation().map(|a| a.flags), Some(0xe0));
    let nt = u.attrs.iter().find(|a| a.value.code() == 98).expect("non-transitive kept");
    assert_eq!(nt.for_propagation(), None);
    // The unused low-order flag bits a peer set are ignored, and cleared when we pass it on.
    let u = decoded(&update(&[ORIGIN, AS_PATH_4, NEXT_HOP, &attr(0xcf, 99, &[1, 2])], NLRI), &c);
    assert_eq!(u.verdict, Verdict::Accept);
    let t = u.attrs.iter().find(|a| a.value.code() == 99).expect("transitive kept");
    assert_eq!(t.for_propagation().map(|a| a.flags), Some(0xe0));
    // An MP_REACH_NLRI of a family we do not carry is kept raw, not an error.
    let u = decoded(&update(&[ORIGIN, AS_PATH_4, &attr(0x90, 14, &[0, 25, 70, 0, 0])], &[]), &c);
    assert_eq!(u.verdict, Verdict::Accept);
    assert!(matches!(u.attrs[2].value, AttrValue::Unknown { code: 14, .. }));
}

#[test]
fn as4_path_merge() {
    use bgp::packet::AsPath;
    // RFC 6793 §4.2.3: a 2-octet speaker prepended 65010 and 65020 in front of the AS4 part.
    let two = AsPath::sequence(&[65010, 65020, 23456, 23456]);
    let four = AsPath::sequence(&[4_200_000_001, 4_200_000_002]);
    assert_eq!(two.merge_as4(&four).length(), 4);
    assert_eq!(two.merge_as4(&four).0.concat_asns(), vec![65010, 65020, 4_200_000_001, 4_200_000_002]);
    // AS4_PATH longer than AS_PATH: ignored.
    assert_eq!(AsPath::sequence(&[23456]).merge_as4(&four), AsPath::sequence(&[23456]));
    let (t, f) = four.to_two_octet();
    assert_eq!((t, f), (AsPath::sequence(&[23456, 23456]), Some(four.clone())));
    assert_eq!(AsPath::sequence(&[65001]).to_two_octet(), (AsPath::sequence(&[65001]), None));
}

trait Asns {
    fn concat_asns(&self) -> Vec<u32>;
}
impl Asns for Vec<bgp::packet::AsSegment> {
    fn concat_asns(&self) -> Vec<u32> {
        self.iter().flat_map(|s| s.asns.clone()).collect()
    }
}

#[test]
fn encoding_rules() {
    let p: Prefix = "10.9.0.0/16".parse().expect("prefix");
    let with_id = Nlri { path_id: Some(7), prefix: p };
    let u = Update::new(
        vec![
            AttrValue::Origin(Origin::Igp),
            AttrValue::AsPath(bgp::packet::AsPath::sequence(&[4_200_000_001])),
            AttrValue::NextHop([10, 0, 0, 1].into()),
        ],
        vec![with_id],
    );
    // A 4-octet AS cannot go in a 2-octet AS_PATH: the caller uses AS_TRANS and AS4_PATH.
    let e = Message::Update(u.clone()).to_bytes(&SessionCaps::default()).expect_err("2-octet session");
    assert!(matches!(e, EncodeError::FourOctetAs { asn: 4_200_000_001, .. }));
    // ADD-PATH identifiers only where negotiated.
    let plain = Message::Update(u.clone()).to_bytes(&caps()).expect("encode");
    assert!(plain.ends_with(&[16, 10, 9]));
    let ap = SessionCaps { add_path_send: vec![Family::Ipv4Unicast], ..caps() };
    let with = Message::Update(u.clone()).to_bytes(&ap).expect("encode");
    assert!(with.ends_with(&[0, 0, 0, 7, 16, 10, 9]));
    let Message::Update(back) = decode_message(&with, &ap.mirrored()).expect("decode") else { panic!() };
    assert_eq!(back.nlri, vec![with_id]);
    // Messages longer than 4096 octets are refused.
    let many: Vec<u32> = (0..1100).collect();
    let mut big = u.clone();
    big.attrs.push(Attr::new(AttrValue::Communities(many)));
    assert!(matches!(Message::Update(big).to_bytes(&caps()), Err(EncodeError::TooLong(_))));
    // End-of-RIB markers.
    for f in [Family::Ipv4Unicast, Family::Ipv6Unicast] {
        let b = Message::Update(Update::end_of_rib(f)).to_bytes(&caps()).expect("encode");
        let Message::Update(e) = decode_message(&b, &caps()).expect("decode") else { panic!() };
        assert_eq!(e.end_of_rib_family(), Some(f));
    }
}

#[test]
fn notification_names() {
    assert_eq!(Notification::new(6, 2).to_string(), "6/2 Cease: Administrative Shutdown");
    assert_eq!(notification_name(3, 11), "UPDATE Message Error: Malformed AS_PATH");
    assert_eq!(notification_name(9, 1), "Unknown code 9");
    let n = Notification { code: 6, subcode: 2, data: b"\x0bmaintenance".to_vec() };
    assert_eq!(n.shutdown_message().as_deref(), Some("maintenance"));
    let b = Message::Notification(n.clone()).to_bytes(&caps()).expect("encode");
    assert_eq!(decode_message(&b, &caps()), Ok(Message::Notification(n)));
}

#[test]
fn an_ipv6_next_hop_for_ipv4_routes_needs_the_extended_next_hop_capability() {
    // MP_REACH_NLRI: AFI 1 SAFI 1, next hop fd00::1 (16 octets), reserved, 10.1.2.0/24.
    let mut v = vec![0, 1, 1, 16];
    v.extend_from_slice(&"fd00::1".parse::<std::net::Ipv6Addr>().unwrap().octets());
    v.push(0);
    v.extend_from_slice(NLRI);
    let mp = attr(0x80, 14, &v);
    let bytes = update(&[ORIGIN, AS_PATH_4, &mp], &[]);
    // Not negotiated: treat-as-withdraw naming MP_REACH_NLRI, not a reset.
    assert_eq!(withdraws(&bytes, &caps()), vec![14]);
    let u = decoded(&bytes, &caps());
    let Verdict::TreatAsWithdraw(p) = &u.verdict else { unreachable!() };
    assert!(p[0].reason.contains("RFC 8950"), "{p:?}");
    // Negotiated: accepted with its IPv6 next hop.
    let ext = SessionCaps { extended_next_hop: vec![(Family::Ipv4Unicast, 2)], ..caps() };
    let u = decoded(&bytes, &ext);
    assert_eq!(u.verdict, Verdict::Accept);
    assert_eq!(u.announced().len(), 1);
}
