//! Arbitrary bytes into the BGP codec: it never panics, and whatever decodes re-encodes to
//! bytes that decode to the same value. netgauze-bgp-pkt reads the same bytes (no panic
//! there either) and is cross-checked as bgp/tests/netgauze.rs does: when it parses a
//! message that we accept whole (an UPDATE without an RFC 7606 finding: there netgauze
//! follows RFC 4271's stricter rules and the two models do not compare, docs/bgp.md), it
//! writes the message back and we must decode its bytes to the value we decoded from the
//! input (encoding choices and reserved bits aside, see `canonical`).
#![no_main]

use std::collections::HashMap;

use bgp::packet::{decode, decode_message, AttrValue, Capability, Family, Message, SessionCaps, Verdict};
use libfuzzer_sys::fuzz_target;
use netgauze_bgp_pkt::wire::deserializer::BgpParsingContext;
use netgauze_bgp_pkt::BgpMessage;
use netgauze_iana::address_family::AddressType;
use netgauze_parse_utils::reader::SliceReader;
use netgauze_parse_utils::traits::ParseFromWithOneInput;
use netgauze_parse_utils::WritablePdu;

/// netgauze's context for a session with `c` (as bgp/tests/netgauze.rs builds it).
fn ctx(c: &SessionCaps) -> BgpParsingContext {
    let mut ap = HashMap::new();
    for f in &c.add_path_receive {
        ap.insert(if *f == Family::Ipv4Unicast { AddressType::Ipv4Unicast } else { AddressType::Ipv6Unicast }, true);
    }
    BgpParsingContext::new(c.four_octet_as, HashMap::new(), ap, true, true, true, true)
}

/// What the two models keep alike. The attribute flags' extended-length bit is an encoding
/// choice, not a value; reserved bits are ignored on receipt (the four low-order attribute
/// flag bits, RFC 4271 §4.3; graceful restart's reserved restart flag and per-family flag
/// bits, RFC 4724 §3): netgauze writes them as zero, we keep them as received.
/// Each rule here is a difference the fuzzer found (seeds `netgauze-*.bin`).
fn canonical(m: Message) -> Message {
    match m {
        Message::Update(mut u) => {
            for a in &mut u.attrs {
                a.flags &= !0x1f;
                // Kept raw by us; netgauze interprets many (extended communities, …) and
                // may rewrite their reserved parts: only the code and flags compare.
                if let AttrValue::Unknown { value, .. } = &mut a.value {
                    value.clear();
                }
            }
            Message::Update(u)
        }
        Message::Open(mut o) => {
            for c in o.params.iter_mut().flatten() {
                match c {
                    Capability::GracefulRestart(g) => {
                        g.flags &= 0xc;
                        for f in &mut g.families {
                            f.flags &= 0x80;
                        }
                    }
                    // RFC 8950 gives the SAFI two octets; netgauze's type holds one.
                    Capability::ExtendedNextHop(l) => l.iter_mut().for_each(|e| e.safi &= 0xff),
                    // Kept raw by us; netgauze interprets some (long-lived graceful restart)
                    // and rewrites their reserved bits: only the code compares.
                    Capability::Unknown { value, .. } => value.clear(),
                    _ => {}
                }
            }
            Message::Open(o)
        }
        m => m,
    }
}

/// Whether the two models compare on `m`: every message but an UPDATE with an RFC 7606
/// finding (a malformed attribute kept raw, a treat-as-withdraw verdict) or with
/// MP_REACH/MP_UNREACH of a family we do not carry (kept raw by us, interpreted by netgauze).
fn comparable(m: &Message) -> bool {
    match m {
        Message::Update(u) => {
            u.verdict == Verdict::Accept
                && u.attr_tail.is_empty()
                && !u.attrs.iter().any(|a| match &a.value {
                    AttrValue::Malformed { .. } => true,
                    AttrValue::Unknown { code, .. } => matches!(code, 14 | 15),
                    _ => false,
                })
        }
        _ => true,
    }
}

fuzz_target!(|data: &[u8]| {
    // The first byte picks the session's capabilities.
    let Some((&sel, bytes)) = data.split_first() else { return };
    let fam = |bit: u8| {
        let mut v = Vec::new();
        if sel & bit != 0 {
            v.push(Family::Ipv4Unicast);
        }
        if sel & (bit << 1) != 0 {
            v.push(Family::Ipv6Unicast);
        }
        v
    };
    let caps = SessionCaps {
        four_octet_as: sel & 1 != 0,
        ibgp: sel & 2 != 0,
        add_path_receive: fam(4),
        families: vec![Family::Ipv4Unicast, Family::Ipv6Unicast],
        extended_next_hop: if sel & 16 != 0 { vec![(Family::Ipv4Unicast, bgp::packet::AFI_IPV6)] } else { vec![] },
        ..SessionCaps::default()
    };
    let ours = match decode(bytes, &caps) {
        Ok(Some((m, n))) => {
            assert!(n <= bytes.len());
            let again = m.to_bytes(&caps.mirrored()).expect("a decoded message re-encodes");
            let back = decode_message(&again, &caps).expect("a re-encoded message decodes");
            assert_eq!(back, m);
            Some((m, n))
        }
        _ => None,
    };
    let frame = ours.as_ref().map_or(bytes, |(_, n)| &bytes[..*n]);
    let mut r = SliceReader::new(frame);
    let Ok(theirs) = BgpMessage::parse(&mut r, &mut ctx(&caps)) else { return };
    let Some((m, _)) = ours.filter(|(m, _)| comparable(m)) else { return };
    let mut written = Vec::new();
    if theirs.write(&mut written).is_err() {
        return;
    }
    let back = decode_message(&written, &caps)
        .unwrap_or_else(|e| panic!("we reject netgauze's {written:02x?} (from {frame:02x?}): {e}"));
    assert_eq!(canonical(back), canonical(m), "\ninput    {frame:02x?}\nnetgauze {written:02x?}");
});
