//! A minimal speaker over a blocking TCP socket, to prove the codec and the FSM against real
//! daemons (bgp/tests/golden/capture.sh `interop`): connects, establishes, announces the given
//! prefixes with community LOCAL_AS:200, sends End-of-RIB, keeps the session up for a while,
//! then stops with a Cease. Exits non-zero if the session never reached Established.
//!
//! speak ADDR LOCAL_AS PEER_AS ROUTER_ID NEXT_HOP4 NEXT_HOP6 SECONDS PREFIX...

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, TcpStream};
use std::time::{Duration, Instant};

use bgp::fsm::{Action, Config, Direction, Event, Fsm, Timer};
use bgp::packet::{decode, AsPath, AttrValue, Family, MpNextHop, MpReach, Nlri, Origin, Prefix, SessionCaps, Update};

fn main() {
    if let Err(e) = run() {
        eprintln!("speak: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let [addr, local_as, peer_as, rid, nh4, nh6, secs, prefixes @ ..] = a.as_slice() else {
        return Err("usage: speak ADDR LOCAL_AS PEER_AS ROUTER_ID NEXT_HOP4 NEXT_HOP6 SECONDS PREFIX...".into());
    };
    let p = |s: &str, what: &str| s.parse::<u64>().map_err(|e| format!("{what} {s:?}: {e}"));
    let (local_as, peer_as, secs) = (p(local_as, "AS")? as u32, p(peer_as, "AS")? as u32, p(secs, "seconds")?);
    let rid: Ipv4Addr = rid.parse().map_err(|e| format!("router ID: {e}"))?;
    let nh4: Ipv4Addr = nh4.parse().map_err(|e| format!("next hop: {e}"))?;
    let nh6: Ipv6Addr = nh6.parse().map_err(|e| format!("next hop: {e}"))?;
    let prefixes: Vec<Prefix> = prefixes.iter().map(|s| s.parse()).collect::<Result<_, _>>()?;
    let ip: IpAddr = addr.parse().map_err(|e| format!("address: {e}"))?;

    let deadline = Instant::now() + Duration::from_secs(30);
    let mut sock = loop {
        match TcpStream::connect((ip, 179)) {
            Ok(s) => break s,
            Err(e) if Instant::now() > deadline => return Err(format!("connect {ip}:179: {e}")),
            Err(_) => std::thread::sleep(Duration::from_millis(200)),
        }
    };
    let mut fsm = Fsm::new(Config { idle_hold_time: None, ..Config::new(local_as, peer_as, rid) });
    let mut pending: Vec<Action> = fsm.handle(Event::ManualStart);
    pending.extend(fsm.handle(Event::TcpConnectionUp(Direction::Outgoing)));
    let mut buf = Vec::new();
    let mut keepalive_at: Option<Instant> = None;
    let mut established_until: Option<Instant> = None;
    let mut learned = 0usize;
    loop {
        for act in std::mem::take(&mut pending) {
            match act {
                Action::Send(m) => {
                    // The peer's view of what we send: our ADD-PATH send is its receive.
                    let bytes = m.to_bytes(&fsm.caps().mirrored()).map_err(|e| e.to_string())?;
                    sock.write_all(&bytes).map_err(|e| format!("send {}: {e}", m.kind()))?;
                }
                Action::StartTimer(Timer::Keepalive, s) => {
                    keepalive_at = Some(Instant::now() + Duration::from_secs(u64::from(s)))
                }
                Action::SessionUp(caps) => {
                    eprintln!("speak: established with {ip}, families {:?}", caps.families);
                    established_until = Some(Instant::now() + Duration::from_secs(secs));
                    for u in updates(&caps, local_as, peer_as, nh4, nh6, &prefixes) {
                        pending.extend(fsm.send_update(u));
                    }
                }
                // Our own routes coming back (FRR announces them to their originator) are
                // loops (RFC 4271 §9.1.2): not learned.
                Action::Routes(u) => {
                    let looped = u.as_path(fsm.caps()).is_some_and(|p| p.0.iter().any(|s| s.asns.contains(&local_as)));
                    if !looped {
                        learned += u.announced().len();
                    }
                }
                Action::SessionDown(why) | Action::ConnectionFailed(why) => {
                    return Err(format!("session with {ip} ended: {why:?}"));
                }
                _ => {}
            }
        }
        if !pending.is_empty() {
            continue;
        }
        if established_until.is_some_and(|t| Instant::now() > t) {
            let stop = fsm.handle(Event::ManualStop);
            for act in stop {
                if let Action::Send(m) = act {
                    let _ = sock.write_all(&m.to_bytes(&SessionCaps::default()).map_err(|e| e.to_string())?);
                }
            }
            eprintln!("speak: learned {learned} prefixes from {ip}; stopped");
            return Ok(());
        }
        if keepalive_at.is_some_and(|t| Instant::now() >= t) {
            keepalive_at = None;
            pending.extend(fsm.handle(Event::KeepaliveTimerExpires));
            continue;
        }
        sock.set_read_timeout(Some(Duration::from_millis(200))).map_err(|e| e.to_string())?;
        let mut chunk = [0u8; 4096];
        match sock.read(&mut chunk) {
            Ok(0) => pending.extend(fsm.handle(Event::TcpConnectionFails)),
            Ok(n) => buf.extend_from_slice(chunk.get(..n).unwrap_or_default()),
            Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {}
            Err(e) => return Err(format!("read: {e}")),
        }
        loop {
            match decode(&buf, fsm.caps()) {
                Ok(Some((m, n))) => {
                    buf.drain(..n);
                    pending.extend(fsm.handle(Event::Message(m)));
                }
                Ok(None) => break,
                Err(e) => {
                    pending.extend(fsm.handle(Event::MessageError(e)));
                    break;
                }
            }
        }
    }
}

/// Our routes: IPv4 in the NLRI field, IPv6 in MP_REACH_NLRI, then End-of-RIB for both.
fn updates(
    caps: &SessionCaps,
    local_as: u32,
    peer_as: u32,
    nh4: Ipv4Addr,
    nh6: Ipv6Addr,
    prefixes: &[Prefix],
) -> Vec<Update> {
    let path = if local_as == peer_as { AsPath::sequence(&[]) } else { AsPath::sequence(&[local_as]) };
    let community = (local_as << 16) | 200;
    let base = || {
        let mut v = vec![AttrValue::Origin(Origin::Igp), AttrValue::AsPath(path.clone())];
        if caps.ibgp {
            v.push(AttrValue::LocalPref(100));
        }
        v.push(AttrValue::Communities(vec![community]));
        v
    };
    let (v4, v6): (Vec<Prefix>, Vec<Prefix>) = prefixes.iter().partition(|p| p.family() == Family::Ipv4Unicast);
    let mut out = Vec::new();
    if !v4.is_empty() {
        let mut attrs = base();
        attrs.insert(2, AttrValue::NextHop(nh4));
        out.push(Update::new(attrs, v4.into_iter().map(Nlri::from).collect()));
    }
    if !v6.is_empty() && caps.families.contains(&Family::Ipv6Unicast) {
        let mut attrs = base();
        attrs.push(AttrValue::MpReach(MpReach {
            family: Family::Ipv6Unicast,
            next_hop: MpNextHop::Ipv6 { global: nh6, link_local: None },
            nlri: v6.into_iter().map(Nlri::from).collect(),
        }));
        out.push(Update::new(attrs, Vec::new()));
    }
    out.extend(caps.families.iter().map(|f| Update::end_of_rib(*f)));
    out
}
