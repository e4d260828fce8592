//! Arbitrary bytes into the BGP codec: it never panics, and whatever decodes re-encodes to
//! bytes that decode to the same value. netgauze-bgp-pkt reads the same bytes (no panic
//! there either); its verdicts are not compared, since it follows RFC 4271's stricter rules
//! where we follow RFC 7606 (docs/bgp.md).
#![no_main]

use bgp::packet::{decode, decode_message, Family, SessionCaps};
use libfuzzer_sys::fuzz_target;

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
        ..SessionCaps::default()
    };
    if let Ok(Some((m, n))) = decode(bytes, &caps) {
        assert!(n <= bytes.len());
        let again = m.to_bytes(&caps.mirrored()).expect("a decoded message re-encodes");
        let back = decode_message(&again, &caps).expect("a re-encoded message decodes");
        assert_eq!(back, m);
    }
    let mut ctx = netgauze_bgp_pkt::wire::deserializer::BgpParsingContext::default();
    let mut r = netgauze_parse_utils::reader::SliceReader::new(bytes);
    let _ = <netgauze_bgp_pkt::BgpMessage as netgauze_parse_utils::traits::ParseFromWithOneInput<'_, _>>::parse(
        &mut r, &mut ctx,
    );
});
