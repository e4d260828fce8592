//! Mutated golden messages (bytes flipped, cut, lengths changed): the decoder never panics,
//! and whatever it accepts re-encodes to bytes that decode to the same value. The fuzz target
//! `bgp_message` does the same with coverage guidance; this runs on stable in every test run.

use std::path::PathBuf;

use bgp::packet::{decode, decode_message, frame_len, Family, SessionCaps};

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn golden_frames() -> Vec<Vec<u8>> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).expect("golden dir") {
        let p = e.expect("entry").path();
        if p.extension().is_some_and(|x| x == "bin") {
            let b = std::fs::read(&p).expect("read");
            let mut rest = b.as_slice();
            while let Ok(Some(n)) = frame_len(rest) {
                let (f, r) = rest.split_at(n);
                out.push(f.to_vec());
                rest = r;
            }
        }
    }
    assert!(out.len() > 60);
    out
}

#[test]
fn mutations_never_panic_and_round_trip() {
    let frames = golden_frames();
    let all = vec![Family::Ipv4Unicast, Family::Ipv6Unicast];
    let sessions = [
        SessionCaps { families: all.clone(), ..SessionCaps::default() },
        SessionCaps { four_octet_as: true, families: all.clone(), ..SessionCaps::default() },
        SessionCaps {
            four_octet_as: true,
            ibgp: true,
            add_path_receive: all.clone(),
            families: all,
            ..SessionCaps::default()
        },
    ];
    let mut r = Rng(0x0b9b_7606);
    let (mut accepted, mut rejected) = (0u32, 0u32);
    for i in 0..60_000 {
        let mut m = frames[r.below(frames.len())].clone();
        for _ in 0..1 + r.below(4) {
            match r.below(5) {
                0 => {
                    let at = r.below(m.len());
                    m[at] = r.next() as u8;
                }
                1 => {
                    // Keep the header's length consistent so the body parser is reached.
                    let at = 19 + r.below(m.len().saturating_sub(19));
                    m.truncate(at.max(19));
                    let l = m.len() as u16;
                    m[16..18].copy_from_slice(&l.to_be_bytes());
                }
                2 => {
                    let at = 19 + r.below(m.len().saturating_sub(19));
                    if at < m.len() {
                        m[at] = m[at].wrapping_add(1 + r.below(3) as u8);
                    }
                }
                3 => {
                    let at = r.below(m.len() + 1);
                    m.insert(at, r.next() as u8);
                    let l = m.len() as u16;
                    m[16..18].copy_from_slice(&l.to_be_bytes());
                }
                _ => {
                    let at = r.below(m.len());
                    m[at] ^= 1 << r.below(8);
                }
            }
        }
        let caps = &sessions[i % sessions.len()];
        match decode(&m, caps) {
            Ok(Some((msg, _))) => {
                accepted += 1;
                let again = msg.to_bytes(&caps.mirrored()).expect("a decoded message re-encodes");
                assert_eq!(decode_message(&again, caps).as_ref(), Ok(&msg), "{m:02x?}");
            }
            Ok(None) | Err(_) => rejected += 1,
        }
    }
    eprintln!("accepted {accepted}, rejected {rejected}");
    // Both outcomes are exercised.
    assert!(accepted > 1000 && rejected > 1000, "accepted {accepted}, rejected {rejected}");
}
