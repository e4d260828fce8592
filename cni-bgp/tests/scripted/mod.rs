//! A scripted BGP peer for the malformed-message tests: a raw TCP socket, bound to an address
//! in a network namespace of the test, that speaks OPEN and KEEPALIVE through our codec and
//! then sends hand-made bytes, and reads back what the speaker (or the agent) answers.
//! Shared by `malformed_updates.rs` (the speaker library) and `agent_interop.rs` (the agent
//! binary).

#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpStream};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bgp::packet::{Capability, Message, Open, SessionCaps, AFI_IPV4, AFI_IPV6, SAFI_UNICAST};

/// The scripted peer's AS.
pub const SCRIPT_AS: u32 = 65301;

/// A KEEPALIVE, byte for byte.
pub const KEEPALIVE: [u8; 19] =
    [0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0, 19, 4];

/// A message: marker, length, `kind`, `body`.
pub fn msg(kind: u8, body: &[u8]) -> Vec<u8> {
    let mut m = vec![0xff; 16];
    m.extend_from_slice(&((19 + body.len()) as u16).to_be_bytes());
    m.push(kind);
    m.extend_from_slice(body);
    m
}

/// A path attribute with a one-octet length.
pub fn attr(flags: u8, code: u8, value: &[u8]) -> Vec<u8> {
    let mut a = vec![flags, code, value.len() as u8];
    a.extend_from_slice(value);
    a
}

/// The scripted peer's OPEN through our codec: AS [`SCRIPT_AS`], IPv4 and IPv6 unicast, 4-octet AS.
pub fn good_open(id: Ipv4Addr) -> Vec<u8> {
    let open = Open::new(
        SCRIPT_AS,
        90,
        id,
        vec![
            Capability::Multiprotocol { afi: AFI_IPV4, safi: SAFI_UNICAST },
            Capability::Multiprotocol { afi: AFI_IPV6, safi: SAFI_UNICAST },
        ],
    );
    Message::Open(open).to_bytes(&SessionCaps::default()).expect("encode our OPEN")
}

/// What the other side sent, as far as a test cares.
#[derive(Debug, PartialEq, Eq)]
pub enum Got {
    Notification(u8, u8),
    Closed,
    Timeout,
}

pub struct Scripted {
    s: TcpStream,
    buf: Vec<u8>,
}

impl Scripted {
    /// Only the TCP connection, from `src` in netns `ns` to `dst`:179; retried every 200 ms
    /// until `within` while the other side does not accept yet.
    pub fn tcp(ns: &str, src: Ipv4Addr, dst: Ipv4Addr, within: Duration) -> Scripted {
        let path = PathBuf::from(format!("/run/netns/{ns}"));
        let deadline = Instant::now() + within;
        let s = loop {
            let p = path.clone();
            let r = linux_net::netns::spawn_in(&p, None, move || connect_from(src, dst))
                .expect("thread in netns")
                .join()
                .expect("join")
                .expect("in netns");
            match r {
                Ok(s) => break s,
                Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(200)),
                Err(e) => panic!("scripted peer {src} cannot connect to {dst}:179: {e}"),
            }
        };
        s.set_nodelay(true).expect("TCP_NODELAY");
        Scripted { s, buf: Vec::new() }
    }

    /// OPEN ([`good_open`]) and KEEPALIVE both ways on a fresh connection; Err in words if the
    /// other side does not answer with its OPEN and KEEPALIVE within `timeout` each.
    pub fn open_session(&mut self, id: Ipv4Addr, timeout: Duration) -> Result<(), String> {
        self.s.write_all(&good_open(id)).map_err(|e| e.to_string())?;
        match self.read_frame(timeout) {
            Some((1, _)) => {}
            other => return Err(format!("expected an OPEN, got {other:?}")),
        }
        self.s.write_all(&KEEPALIVE).map_err(|e| e.to_string())?;
        loop {
            match self.read_frame(timeout) {
                Some((4, _)) => return Ok(()),
                Some((3, body)) => return Err(format!("the session was refused: NOTIFICATION {body:?}")),
                Some(_) => {}
                None => return Err("no KEEPALIVE".into()),
            }
        }
    }

    /// Reads the other side's OPEN.
    pub fn expect_open(&mut self, timeout: Duration) {
        let (t, body) = self.read_frame(timeout).expect("an OPEN");
        assert_eq!(t, 1, "expected OPEN, got type {t} {body:?}");
    }

    pub fn send(&mut self, b: &[u8]) {
        self.s.write_all(b).expect("send to the peer under test");
    }

    /// One whole message (type, body), or None at EOF / timeout.
    pub fn read_frame(&mut self, timeout: Duration) -> Option<(u8, Vec<u8>)> {
        let deadline = Instant::now() + timeout;
        loop {
            if self.buf.len() >= 19 {
                let len = u16::from_be_bytes([self.buf[16], self.buf[17]]) as usize;
                if len >= 19 && self.buf.len() >= len {
                    let t = self.buf[18];
                    let body = self.buf[19..len].to_vec();
                    self.buf.drain(..len);
                    return Some((t, body));
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return None;
            }
            self.s.set_read_timeout(Some(left)).expect("set read timeout");
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// Reads past KEEPALIVEs and UPDATEs until a NOTIFICATION, the end of the connection, or
    /// `timeout`.
    pub fn next_notification(&mut self, timeout: Duration) -> Got {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.read_frame(left) {
                Some((3, body)) => {
                    return Got::Notification(body.first().copied().unwrap_or(0), body.get(1).copied().unwrap_or(0))
                }
                Some(_) => continue,
                None if Instant::now() >= deadline => return Got::Timeout,
                None => return Got::Closed,
            }
        }
    }

    /// After a NOTIFICATION the other side closes: EOF within `timeout`.
    pub fn closed(&mut self, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            self.s.set_read_timeout(Some(left)).expect("set read timeout");
            let mut chunk = [0u8; 4096];
            match self.s.read(&mut chunk) {
                Ok(0) => return true,
                Ok(_) => continue,
                Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    return false
                }
                Err(_) => return true,
            }
        }
    }
}

/// A TCP connection from `src` (bound before connecting, so the other side sees that peer).
fn connect_from(src: Ipv4Addr, dst: Ipv4Addr) -> std::io::Result<TcpStream> {
    use nix::sys::socket::{bind, connect, socket, AddressFamily, SockFlag, SockType, SockaddrIn};
    use std::os::fd::AsRawFd;
    let fd: OwnedFd = socket(AddressFamily::Inet, SockType::Stream, SockFlag::SOCK_CLOEXEC, None)?;
    bind(fd.as_raw_fd(), &SockaddrIn::from(std::net::SocketAddrV4::new(src, 0)))?;
    connect(fd.as_raw_fd(), &SockaddrIn::from(std::net::SocketAddrV4::new(dst, 179)))?;
    Ok(TcpStream::from(fd))
}
