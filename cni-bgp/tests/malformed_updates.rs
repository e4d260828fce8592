//! RFC 4271 §6 and RFC 7606 against our running speaker, over real TCP: a scripted peer (a raw
//! socket in a network namespace of its own, speaking OPEN and KEEPALIVE through our codec,
//! then hand-made bytes) sends each class of malformed message, and a real GoBGP (the
//! witness) peers with the speaker the whole time.
//!
//! - Session reset: the scripted peer reads the NOTIFICATION the speaker sends (code/subcode
//!   as RFC 4271 §6.1–6.3 / RFC 7606 say) and then the end of the connection. Each case runs on
//!   a scripted peer address of its own.
//! - Treat-as-withdraw (RFC 7606 §2, §3, §4, §7): a route announced validly, then re-announced
//!   in the malformed UPDATE, disappears from the speaker's Loc-RIB and from the witness, and
//!   the session stays up (no NOTIFICATION; the next valid UPDATE is accepted).
//! - Attribute discard (RFC 7606 §7.5–7.7): the route is accepted without the attribute.
//!
//! Afterwards the witness session has stayed Established since the start (no flap) and still
//! carries the speaker's route. Needs root and gobgpd (missing: the test fails).

mod common;
mod scripted;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use cni_bgp::speaker::SpeakerConfig;
use common::{net, peer, OurNode};
use scripted::{attr, good_open, msg, Got, Scripted, KEEPALIVE, SCRIPT_AS};
use testkit::bgp::{require_daemons, BgpDaemon, Gobgp, Neighbor, PeerConfig};
use testkit::lab::Lab;

const T: Duration = Duration::from_secs(60);
const OUR_AS: u32 = 65300;
const WITNESS_AS: u32 = 65302;

/// The attribute type codes of the witness's best path for `p` (`gobgp -j global rib`).
fn witness_attr_types(w: &Gobgp, p: &str) -> Option<Vec<u64>> {
    let out = w.gobgp(&["-j", "global", "rib", "-a", "ipv4"]).ok()?;
    let v: serde_json::Value = serde_json::from_str(out.trim()).ok()?;
    let paths = v.get(p)?.as_array()?;
    let best = paths.iter().find(|x| x["best"] == true).or(paths.first())?;
    Some(best["attrs"].as_array()?.iter().filter_map(|a| a["type"].as_u64()).collect())
}

// ---- hand-made messages ----------------------------------------------------------------

fn origin(v: u8) -> Vec<u8> {
    attr(0x40, 1, &[v])
}

/// AS_PATH with one AS_SEQUENCE of 4-octet ASes (the session negotiated 4-octet AS).
fn as_path(asns: &[u32]) -> Vec<u8> {
    let mut v = vec![2, asns.len() as u8];
    for a in asns {
        v.extend_from_slice(&a.to_be_bytes());
    }
    attr(0x40, 2, &v)
}

fn next_hop(a: Ipv4Addr) -> Vec<u8> {
    attr(0x40, 3, &a.octets())
}

fn nlri4(p: &str) -> Vec<u8> {
    let n: ipnetwork::Ipv4Network = p.parse().unwrap();
    let bytes = n.prefix().div_ceil(8) as usize;
    let mut v = vec![n.prefix()];
    v.extend_from_slice(&n.network().octets()[..bytes]);
    v
}

fn update(withdrawn: &[u8], attrs: &[u8], nlri: &[u8]) -> Vec<u8> {
    let mut b = (withdrawn.len() as u16).to_be_bytes().to_vec();
    b.extend_from_slice(withdrawn);
    b.extend_from_slice(&(attrs.len() as u16).to_be_bytes());
    b.extend_from_slice(attrs);
    b.extend_from_slice(nlri);
    msg(2, &b)
}

/// A valid announcement of `p` from the scripted peer, plus `extra` attributes.
fn announce(p: &str, nh: Ipv4Addr, extra: &[u8]) -> Vec<u8> {
    let mut a = origin(0);
    a.extend(as_path(&[SCRIPT_AS]));
    a.extend(next_hop(nh));
    a.extend_from_slice(extra);
    update(&[], &a, &nlri4(p))
}

/// A valid IPv6 announcement of `p` in MP_REACH_NLRI with next hop `nh`, after ORIGIN `origin`
/// and AS_PATH.
fn announce6(p: &str, nh: std::net::Ipv6Addr, origin_value: u8) -> Vec<u8> {
    let n: ipnetwork::Ipv6Network = p.parse().unwrap();
    let mut mp = vec![0, 2, 1, 16];
    mp.extend_from_slice(&nh.octets());
    mp.push(0);
    mp.push(n.prefix());
    mp.extend_from_slice(&n.network().octets()[..n.prefix().div_ceil(8) as usize]);
    let mut a = origin(origin_value);
    a.extend(as_path(&[SCRIPT_AS]));
    a.extend(attr(0x80, 14, &mp));
    update(&[], &a, &[])
}

/// A hand-made OPEN: version, My AS (also in the 4-octet AS capability), hold time, BGP
/// identifier, and the optional parameters after the capabilities parameter.
fn raw_open(version: u8, asn: u16, hold: u16, id: Ipv4Addr, extra_params: &[u8]) -> Vec<u8> {
    let mut caps = vec![1, 4, 0, 1, 0, 1, 1, 4, 0, 2, 0, 1, 65, 4];
    caps.extend_from_slice(&u32::from(asn).to_be_bytes());
    let mut params = vec![2, caps.len() as u8];
    params.extend(caps);
    params.extend_from_slice(extra_params);
    let mut b = vec![version];
    b.extend_from_slice(&asn.to_be_bytes());
    b.extend_from_slice(&hold.to_be_bytes());
    b.extend_from_slice(&id.octets());
    b.push(params.len() as u8);
    b.extend(params);
    msg(1, &b)
}

// ---- the scripted peer -----------------------------------------------------------------

/// Connects from `src` (in netns `ns`) to the speaker and brings the session up.
fn connect(ns: &str, src: Ipv4Addr, dst: Ipv4Addr) -> Scripted {
    let mut sc = Scripted::tcp(ns, src, dst, T);
    sc.open_session(src, T).unwrap_or_else(|e| panic!("scripted peer {src}: {e}"));
    sc
}

// ---- the test ----------------------------------------------------------------------------

/// One session-reset case: the bytes, and the NOTIFICATION code/subcode expected back.
struct ResetCase {
    name: &'static str,
    /// When the bytes are sent.
    at: Stage,
    bytes: Vec<u8>,
    code: (u8, u8),
}

#[derive(Clone, Copy, PartialEq)]
enum Stage {
    /// Instead of our OPEN.
    Open,
    /// After both OPENs, instead of our KEEPALIVE.
    OpenConfirm,
    /// On the Established session.
    Established,
}

fn reset_cases(nh: Ipv4Addr, speaker_id: Ipv4Addr) -> Vec<ResetCase> {
    use Stage::*;
    let id = Ipv4Addr::new(10, 94, 0, 99);
    // A ROUTE-REFRESH (subtype 0) must be 23 octets: one of 24 (RFC 2918 §3, RFC 7313 §5).
    let long_refresh = msg(5, &[0, 1, 0, 1, 0]);
    let mut bad_marker = KEEPALIVE.to_vec();
    bad_marker[3] = 0xfe;
    // A KEEPALIVE must be exactly 19 octets (RFC 4271 §6.1): one of 20.
    let mut long_keepalive = msg(4, &[0]);
    long_keepalive[17] = 20;
    // Total path attribute length beyond the end of the message (RFC 4271 §6.3: Malformed Attribute List 3/1).
    // The total path attribute length (octets 21-22, after the withdrawn routes length 0)
    // claims 50 octets more than the message holds.
    let mut attr_list_overrun = update(&[], &origin(0), &[]);
    let claimed = (origin(0).len() + 50) as u16;
    attr_list_overrun[21..23].copy_from_slice(&claimed.to_be_bytes());
    // An unrecognised well-known attribute (optional bit clear, type 240): 3/2.
    let unknown_well_known = announce("10.93.2.0/24", nh, &attr(0x40, 240, &[1, 2, 3]));
    // NLRI whose prefix length is 33 (RFC 4271 §6.3 Invalid Network Field; 7606 §5.3).
    let mut bad_nlri = vec![33];
    bad_nlri.extend_from_slice(&[10, 93, 3, 0, 0]);
    let mut a = origin(0);
    a.extend(as_path(&[SCRIPT_AS]));
    a.extend(next_hop(nh));
    let bad_nlri = update(&[], &a, &bad_nlri);
    // MP_REACH_NLRI (IPv6 unicast) with a next hop of 5 octets (RFC 7606 §7.11: the NLRI cannot
    // be located: session reset; RFC 4760 §7: Optional Attribute Error 3/9).
    let mut mp = vec![0, 2, 1, 5, 1, 2, 3, 4, 5, 0, 48, 0xfd, 0, 0, 0x93, 0, 4];
    let mut a = origin(0);
    a.extend(as_path(&[SCRIPT_AS]));
    a.extend(attr(0x80, 14, &mp));
    let bad_mp_nh = update(&[], &a, &[]);
    // MP_REACH_NLRI twice (RFC 7606 §3 g: session reset, Malformed Attribute List 3/1).
    mp[3] = 16;
    mp.splice(4..9, [0xfd, 0, 0, 0x90, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x63]);
    let mut a = origin(0);
    a.extend(as_path(&[SCRIPT_AS]));
    a.extend(attr(0x80, 14, &mp));
    a.extend(attr(0x80, 14, &mp));
    let mp_twice = update(&[], &a, &[]);
    let c = |name, at, bytes, code| ResetCase { name, at, bytes, code };
    vec![
        // Message header (RFC 4271 §6.1).
        c("marker not all ones", Established, bad_marker, (1, 1)),
        c("KEEPALIVE of 20 octets", Established, long_keepalive, (1, 2)),
        c("ROUTE-REFRESH of 24 octets", Established, long_refresh, (1, 2)),
        c("message type 9", Established, msg(9, &[]), (1, 3)),
        // OPEN (RFC 4271 §6.2).
        c("OPEN version 3", Open, raw_open(3, SCRIPT_AS as u16, 90, id, &[]), (2, 1)),
        c("OPEN from AS 65399, configured 65301", Open, raw_open(4, 65399, 90, id, &[]), (2, 2)),
        c("OPEN BGP identifier 0.0.0.0", Open, raw_open(4, SCRIPT_AS as u16, 90, Ipv4Addr::UNSPECIFIED, &[]), (2, 3)),
        c("OPEN BGP identifier equal to ours", Open, raw_open(4, SCRIPT_AS as u16, 90, speaker_id, &[]), (2, 3)),
        c(
            "OPEN optional parameter 1 (authentication)",
            Open,
            raw_open(4, SCRIPT_AS as u16, 90, id, &[1, 1, 0]),
            (2, 4),
        ),
        c("OPEN hold time 2", Open, raw_open(4, SCRIPT_AS as u16, 2, id, &[]), (2, 6)),
        // FSM (RFC 4271 §6.6, RFC 6608 subcode 2: unexpected message in OpenConfirm).
        c("UPDATE in OpenConfirm", OpenConfirm, update(&[], &[], &[]), (5, 2)),
        // UPDATE (RFC 4271 §6.3, RFC 7606).
        c("attribute list overruns the message", Established, attr_list_overrun, (3, 1)),
        c("unrecognised well-known attribute", Established, unknown_well_known, (3, 2)),
        c("NLRI prefix length 33", Established, bad_nlri, (3, 10)),
        c("MP_REACH_NLRI next hop of 5 octets", Established, bad_mp_nh, (3, 9)),
        c("MP_REACH_NLRI twice", Established, mp_twice, (3, 1)),
    ]
}

#[test]
fn malformed_messages_get_the_rfc_answer_and_the_speaker_serves_on() {
    require_daemons().unwrap();
    let mut lab = Lab::new("malform").unwrap();
    let seg = lab.segment_with_ipv6("10.94.0.0/24", "fd00:94::/64").unwrap();
    let (h_ours, h_script, h_witness) = (lab.host(seg).unwrap(), lab.host(seg).unwrap(), lab.host(seg).unwrap());
    let (ours, witness) = (lab.host_ip(h_ours), lab.host_ip(h_witness));
    let script_ns = lab.host_ns(h_script).to_string();
    // One scripted address per reset case, one for the treat-as-withdraw / discard session.
    let cases = reset_cases(Ipv4Addr::new(10, 94, 0, 100), ours);
    let script_addrs: Vec<Ipv4Addr> = (0..=cases.len()).map(|i| Ipv4Addr::new(10, 94, 0, 100 + i as u8)).collect();
    for a in &script_addrs {
        lab.exec_ok(h_script, &["ip", "addr", "add", &format!("{a}/24"), "dev", "eth0"]).unwrap();
    }

    let witness_d = Gobgp::start(
        lab.host_ns(h_witness),
        &PeerConfig::new(witness, WITNESS_AS).neighbor(Neighbor::new(IpAddr::V4(ours), OUR_AS)),
    )
    .unwrap();
    let mut cfg = SpeakerConfig::new(OUR_AS, ours);
    cfg.listen = vec![SocketAddr::new(IpAddr::V4(ours), 179)];
    let node = OurNode::start(lab.host_ns(h_ours), cfg);
    let mut peers = vec![peer(IpAddr::V4(witness), WITNESS_AS, ours, None)];
    for a in &script_addrs {
        let mut p = peer(IpAddr::V4(*a), SCRIPT_AS, ours, None);
        p.passive = true;
        peers.push(p);
    }
    node.set_peers(peers);
    let own = net("10.95.0.0/24");
    node.originate(vec![own]);
    node.wait_established(IpAddr::V4(witness), T);
    witness_d.wait_route(own, Some(IpAddr::V4(ours)), T).unwrap();
    let witness_up_at = Instant::now();

    // Session reset, one connection per case.
    let mut failures = Vec::new();
    for (c, src) in cases.iter().zip(&script_addrs) {
        let mut s = match c.at {
            Stage::Established => connect(&script_ns, *src, ours),
            Stage::OpenConfirm => {
                let mut s = Scripted::tcp(&script_ns, *src, ours, T);
                s.send(&good_open(*src));
                s.expect_open(T);
                s
            }
            Stage::Open => Scripted::tcp(&script_ns, *src, ours, T),
        };
        s.send(&c.bytes);
        let got = s.next_notification(Duration::from_secs(20));
        if got != Got::Notification(c.code.0, c.code.1) {
            failures.push(format!("{}: expected NOTIFICATION {}/{}, got {got:?}", c.name, c.code.0, c.code.1));
            continue;
        }
        if !s.closed(Duration::from_secs(10)) {
            failures.push(format!("{}: the speaker did not close after its NOTIFICATION", c.name));
        }
        // The session's end reaches the status shortly after the socket closes.
        // In words: the NOTIFICATION's code, or for a wrong AS what the operator must fix.
        let code = match c.code {
            (2, 2) => "peer AS 65399, configured 65301".to_string(),
            (a, b) => format!("{a}/{b}"),
        };
        let named = testkit::bgp::poll(Duration::from_secs(10), "status names the NOTIFICATION", || {
            let st = node.peer(IpAddr::V4(*src));
            Ok(st.is_some_and(|st| st.state != "Established" && st.last_error.is_some_and(|e| e.contains(&code))))
        });
        if named.is_err() {
            let st = node.peer(IpAddr::V4(*src));
            failures.push(format!("{}: status last_error does not name {code}: {st:?}", c.name));
        }
    }

    // Treat-as-withdraw and attribute discard, all on one session that must stay up.
    let src = *script_addrs.last().unwrap();
    let mut s = connect(&script_ns, src, ours);
    let p = "10.96.0.0/24";
    let pn = net(p);
    let taw: Vec<(&str, Vec<u8>)> = vec![
        ("ORIGIN value 3 (7606 §7.1)", {
            let mut a = origin(3);
            a.extend(as_path(&[SCRIPT_AS]));
            a.extend(next_hop(src));
            update(&[], &a, &nlri4(p))
        }),
        ("ORIGIN of 2 octets (7606 §7.1)", {
            let mut a = attr(0x40, 1, &[0, 0]);
            a.extend(as_path(&[SCRIPT_AS]));
            a.extend(next_hop(src));
            update(&[], &a, &nlri4(p))
        }),
        ("NEXT_HOP of 5 octets (7606 §7.3)", {
            let mut a = origin(0);
            a.extend(as_path(&[SCRIPT_AS]));
            a.extend(attr(0x40, 3, &[10, 94, 0, 108, 0]));
            update(&[], &a, &nlri4(p))
        }),
        ("AS_PATH segment type 9 (7606 §7.2)", {
            let mut a = origin(0);
            a.extend(attr(0x40, 2, &[9, 1, 0, 0, 0xff, 0x55]));
            a.extend(next_hop(src));
            update(&[], &a, &nlri4(p))
        }),
        ("ORIGIN missing (7606 §3 d)", {
            let mut a = as_path(&[SCRIPT_AS]);
            a.extend(next_hop(src));
            update(&[], &a, &nlri4(p))
        }),
        ("ORIGIN with the optional bit (7606 §3 c)", {
            let mut a = attr(0xc0, 1, &[0]);
            a.extend(as_path(&[SCRIPT_AS]));
            a.extend(next_hop(src));
            update(&[], &a, &nlri4(p))
        }),
        ("COMMUNITIES of 3 octets (7606 §7.8)", announce(p, src, &attr(0xc0, 8, &[0, 1, 2]))),
        ("MED of 2 octets (7606 §7.4)", announce(p, src, &attr(0x80, 4, &[0, 1]))),
        ("last attribute overruns the attribute list (7606 §4)", {
            let mut a = origin(0);
            a.extend(as_path(&[SCRIPT_AS]));
            a.extend(next_hop(src));
            // MED claiming 4 octets with 2 left in the list.
            a.extend_from_slice(&[0x80, 4, 4, 0, 0]);
            update(&[], &a, &nlri4(p))
        }),
    ];
    for (name, bytes) in &taw {
        s.send(&announce(p, src, &[]));
        node.wait_learned(pn, T);
        witness_d.wait_route(pn, Some(IpAddr::V4(ours)), T).unwrap_or_else(|e| panic!("{name}: {e}"));
        s.send(bytes);
        let gone = testkit::bgp::poll(Duration::from_secs(20), name, || {
            Ok(!node.routes().iter().any(|r| r.prefix == pn && r.peer.is_some()))
        });
        if let Err(e) = gone {
            failures.push(format!("treat-as-withdraw {name}: route stayed: {e}"));
            continue;
        }
        if let Err(e) = witness_d.wait_no_route(pn, T) {
            failures.push(format!("treat-as-withdraw {name}: the witness kept it: {e}"));
        }
        let st = node.peer(IpAddr::V4(src)).unwrap();
        if st.state != "Established" {
            failures.push(format!("treat-as-withdraw {name}: the session went down: {st:?}"));
            break;
        }
    }
    // Treat-as-withdraw of IPv6 routes carried in MP_REACH_NLRI (RFC 7606 §2: every route the
    // UPDATE contains counts as withdrawn, those of MP_REACH_NLRI too): ORIGIN value 3.
    let p6 = "fd00:96::/48";
    let nh6: std::net::Ipv6Addr = "fd00:94::64".parse().unwrap();
    s.send(&announce6(p6, nh6, 0));
    let r6 = node.wait_learned(net(p6), T);
    assert_eq!(r6.next_hop, Some(IpAddr::V6(nh6)), "{r6:?}");
    s.send(&announce6(p6, nh6, 3));
    if let Err(e) = testkit::bgp::poll(Duration::from_secs(20), "IPv6 treat-as-withdraw", || {
        Ok(!node.routes().iter().any(|r| r.prefix == net(p6) && r.peer.is_some()))
    }) {
        failures.push(format!("treat-as-withdraw ORIGIN value 3 in an IPv6 (MP_REACH_NLRI) UPDATE: route stayed: {e}"));
    }
    // Attribute discard: the route is accepted, the attribute dropped. Our Loc-RIB view
    // (`routes()`) shows LOCAL_PREF but no aggregation attributes; the route our speaker
    // passes on to the witness carries every transitive attribute it kept (ATOMIC_AGGREGATE
    // and AGGREGATOR are both transitive), so the witness's copy shows whether the attribute
    // was dropped. The first two cases are the control: valid ones arrive there.
    let discard: Vec<(&str, Vec<u8>, Option<u64>, bool)> = vec![
        ("valid ATOMIC_AGGREGATE (control)", announce(p, src, &attr(0x40, 6, &[])), Some(6), true),
        (
            "valid AGGREGATOR (control)",
            announce(p, src, &attr(0xc0, 7, &[0, 0, 0xfe, 0x4d, 10, 0, 0, 1])),
            Some(7),
            true,
        ),
        ("ATOMIC_AGGREGATE of 1 octet (7606 §7.6)", announce(p, src, &attr(0x40, 6, &[0])), Some(6), false),
        ("AGGREGATOR of 5 octets (7606 §7.7)", announce(p, src, &attr(0xc0, 7, &[0, 0, 1, 2, 3])), Some(7), false),
        (
            "LOCAL_PREF from an external peer (7606 §7.5)",
            announce(p, src, &attr(0x40, 5, &500u32.to_be_bytes())),
            None,
            false,
        ),
    ];
    for (name, bytes, code, present) in &discard {
        s.send(&update(&nlri4(p), &[], &[]));
        node.wait_not_learned(pn, T);
        witness_d.wait_no_route(pn, T).unwrap_or_else(|e| panic!("{name}: {e}"));
        s.send(bytes);
        let r = node.wait_learned(pn, T);
        if r.local_pref == Some(500) {
            failures.push(format!("attribute discard {name}: LOCAL_PREF 500 from eBGP was kept: {r:?}"));
        }
        assert_eq!(r.next_hop, Some(IpAddr::V4(src)), "{name}: {r:?}");
        if let Some(code) = code {
            witness_d.wait_route(pn, Some(IpAddr::V4(ours)), T).unwrap_or_else(|e| panic!("{name}: {e}"));
            let types = witness_attr_types(&witness_d, p);
            if types.as_ref().map(|t| t.contains(code)) != Some(*present) {
                failures.push(format!(
                    "attribute discard {name}: attribute {code} {} at the witness: {types:?}",
                    if *present { "missing" } else { "passed on" }
                ));
            }
        }
    }
    // The session is still up: no NOTIFICATION came, and a KEEPALIVE and a valid UPDATE still work.
    s.send(&KEEPALIVE);
    s.send(&announce("10.96.1.0/24", src, &[]));
    node.wait_learned(net("10.96.1.0/24"), T);
    assert_eq!(s.next_notification(Duration::from_millis(500)), Got::Timeout, "no NOTIFICATION on this session");
    assert_eq!(node.peer(IpAddr::V4(src)).unwrap().state, "Established");

    // The witness never flapped and still has our route.
    let w = node.peer(IpAddr::V4(witness)).unwrap();
    assert_eq!(w.state, "Established", "{w:?}");
    let up_for = witness_up_at.elapsed().as_secs();
    assert!(w.uptime_secs.is_some_and(|u| u + 1 >= up_for), "witness session restarted: {w:?} (up {up_for} s)");
    assert!(witness_d.established(IpAddr::V4(ours)).unwrap());
    assert!(witness_d.routes().unwrap().iter().any(|(q, _)| *q == own));
    assert!(failures.is_empty(), "{} failures:\n{}", failures.len(), failures.join("\n"));
}
