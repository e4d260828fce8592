//! The BGP-4 wire codec: message framing, the five message types, path attributes and the
//! negotiation of session capabilities. No I/O: `&[u8]` in, typed values out, `Vec<u8>` back.
//!
//! Every read goes through [`Reader`], which checks bounds; indexing is denied in this module
//! tree so that no input can make the parser panic.
#![deny(clippy::indexing_slicing, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod notification;
mod open;
mod update;

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

pub use notification::{notification_name, Notification};
pub use open::{
    negotiate, AddPathFamily, Capability, ExtNextHop, GrFamily, GracefulRestart, Open, SessionCaps, AS_TRANS,
};
pub use update::{
    AsPath, AsSegment, Attr, AttrProblem, AttrValue, MpNextHop, MpReach, MpUnreach, Origin, Remedy, SegmentKind,
    Update, Verdict,
};

use crate::error::{EncodeError, Notify};

/// The 16 octets of all ones that start every message (RFC 4271 §4.1).
pub const MARKER: [u8; 16] = [0xff; 16];
/// Header length: marker, length, type.
pub const HEADER_LEN: usize = 19;
/// Largest message without the extended message capability (RFC 4271 §4.1).
pub const MAX_LEN: usize = 4096;

pub const TYPE_OPEN: u8 = 1;
pub const TYPE_UPDATE: u8 = 2;
pub const TYPE_NOTIFICATION: u8 = 3;
pub const TYPE_KEEPALIVE: u8 = 4;
pub const TYPE_ROUTE_REFRESH: u8 = 5;

pub const AFI_IPV4: u16 = 1;
pub const AFI_IPV6: u16 = 2;
pub const SAFI_UNICAST: u8 = 1;

/// The address families this speaker carries routes for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Family {
    Ipv4Unicast,
    Ipv6Unicast,
}

impl Family {
    pub fn from_afi_safi(afi: u16, safi: u8) -> Option<Family> {
        match (afi, safi) {
            (AFI_IPV4, SAFI_UNICAST) => Some(Family::Ipv4Unicast),
            (AFI_IPV6, SAFI_UNICAST) => Some(Family::Ipv6Unicast),
            _ => None,
        }
    }
    pub fn afi(self) -> u16 {
        match self {
            Family::Ipv4Unicast => AFI_IPV4,
            Family::Ipv6Unicast => AFI_IPV6,
        }
    }
    pub fn safi(self) -> u8 {
        SAFI_UNICAST
    }
    fn max_len(self) -> u8 {
        match self {
            Family::Ipv4Unicast => 32,
            Family::Ipv6Unicast => 128,
        }
    }
}

/// An IP prefix with its host bits cleared.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Prefix {
    addr: IpAddr,
    len: u8,
}

impl Prefix {
    /// `None` if `len` exceeds the address width. Host bits are cleared.
    pub fn new(addr: IpAddr, len: u8) -> Option<Prefix> {
        match addr {
            IpAddr::V4(a) if len <= 32 => {
                let mask = if len == 0 { 0 } else { u32::MAX << (32 - u32::from(len)) };
                Some(Prefix { addr: IpAddr::V4(Ipv4Addr::from(u32::from(a) & mask)), len })
            }
            IpAddr::V6(a) if len <= 128 => {
                let mask = if len == 0 { 0 } else { u128::MAX << (128 - u32::from(len)) };
                Some(Prefix { addr: IpAddr::V6(Ipv6Addr::from(u128::from(a) & mask)), len })
            }
            _ => None,
        }
    }
    pub fn addr(&self) -> IpAddr {
        self.addr
    }
    pub fn length(&self) -> u8 {
        self.len
    }
    pub fn family(&self) -> Family {
        match self.addr {
            IpAddr::V4(_) => Family::Ipv4Unicast,
            IpAddr::V6(_) => Family::Ipv6Unicast,
        }
    }
}

impl std::fmt::Display for Prefix {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.addr, self.len)
    }
}

impl std::str::FromStr for Prefix {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Prefix, String> {
        let (a, l) = s.split_once('/').ok_or_else(|| format!("prefix {s:?}: no '/'"))?;
        let addr: IpAddr = a.parse().map_err(|e| format!("prefix {s:?}: {e}"))?;
        let len: u8 = l.parse().map_err(|e| format!("prefix {s:?}: {e}"))?;
        Prefix::new(addr, len).ok_or_else(|| format!("prefix {s:?}: length too large"))
    }
}

/// One NLRI entry: a prefix and, on ADD-PATH sessions, its path identifier (RFC 7911).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Nlri {
    pub path_id: Option<u32>,
    pub prefix: Prefix,
}

impl From<Prefix> for Nlri {
    fn from(prefix: Prefix) -> Nlri {
        Nlri { path_id: None, prefix }
    }
}

/// ROUTE-REFRESH (RFC 2918), with RFC 7313's subtype (0 request, 1 BoRR, 2 EoRR).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteRefresh {
    pub afi: u16,
    pub subtype: u8,
    pub safi: u8,
}

/// A BGP message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Message {
    Open(Open),
    Update(Update),
    Notification(Notification),
    Keepalive,
    RouteRefresh(RouteRefresh),
}

impl Message {
    pub fn kind(&self) -> &'static str {
        match self {
            Message::Open(_) => "OPEN",
            Message::Update(_) => "UPDATE",
            Message::Notification(_) => "NOTIFICATION",
            Message::Keepalive => "KEEPALIVE",
            Message::RouteRefresh(_) => "ROUTE-REFRESH",
        }
    }

    /// Appends the message, header included, to `out`.
    pub fn encode(&self, caps: &SessionCaps, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let start = out.len();
        out.extend_from_slice(&MARKER);
        out.extend_from_slice(&[0, 0]);
        let ty = match self {
            Message::Open(_) => TYPE_OPEN,
            Message::Update(_) => TYPE_UPDATE,
            Message::Notification(_) => TYPE_NOTIFICATION,
            Message::Keepalive => TYPE_KEEPALIVE,
            Message::RouteRefresh(_) => TYPE_ROUTE_REFRESH,
        };
        out.push(ty);
        let res = match self {
            Message::Open(o) => o.encode_body(out),
            Message::Update(u) => u.encode_body(caps, out),
            Message::Notification(n) => {
                out.push(n.code);
                out.push(n.subcode);
                out.extend_from_slice(&n.data);
                Ok(())
            }
            Message::Keepalive => Ok(()),
            Message::RouteRefresh(r) => {
                out.extend_from_slice(&r.afi.to_be_bytes());
                out.push(r.subtype);
                out.push(r.safi);
                Ok(())
            }
        };
        let len = out.len() - start;
        if let Err(e) = res.and(if len > MAX_LEN { Err(EncodeError::TooLong(len)) } else { Ok(()) }) {
            out.truncate(start);
            return Err(e);
        }
        put_u16_at(out, start + 16, len as u16);
        Ok(())
    }

    /// The message as a fresh buffer.
    pub fn to_bytes(&self, caps: &SessionCaps) -> Result<Vec<u8>, EncodeError> {
        let mut v = Vec::new();
        self.encode(caps, &mut v)?;
        Ok(v)
    }
}

/// Reads a message's length from a stream buffer: `Ok(None)` until the 19-octet header is
/// there, then the whole message's length (header errors are RFC 4271 §6.1's NOTIFICATIONs).
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, Notify> {
    let mut r = Reader::new(buf);
    let (Some(marker), Some(len), Some(ty)) = (r.take(16), r.u16(), r.u8()) else {
        return Ok(None);
    };
    if marker != MARKER {
        return Err(Notify::new(1, 1, [], "message header: marker is not all ones"));
    }
    let min = match ty {
        TYPE_OPEN => 29,
        TYPE_UPDATE => 23,
        TYPE_NOTIFICATION => 21,
        TYPE_KEEPALIVE => 19,
        TYPE_ROUTE_REFRESH => 23,
        _ => return Err(Notify::new(1, 3, [ty], format!("message header: unknown message type {ty}"))),
    };
    let n = usize::from(len);
    // ROUTE-REFRESH's exact length is checked in `decode_message`, where the subtype is known.
    let exact = ty == TYPE_KEEPALIVE;
    if n < min || n > MAX_LEN || (exact && n != min) {
        return Err(Notify::new(
            1,
            2,
            len.to_be_bytes(),
            format!("message header: length {n} is invalid for message type {ty}"),
        ));
    }
    Ok(Some(n))
}

/// Decodes one message from the start of a stream buffer: `Ok(None)` if more bytes are needed,
/// else the message and how many bytes it used.
pub fn decode(buf: &[u8], caps: &SessionCaps) -> Result<Option<(Message, usize)>, Notify> {
    let Some(n) = frame_len(buf)? else { return Ok(None) };
    let Some(frame) = buf.get(..n) else { return Ok(None) };
    Ok(Some((decode_message(frame, caps)?, n)))
}

/// Decodes exactly one whole message (header included).
pub fn decode_message(frame: &[u8], caps: &SessionCaps) -> Result<Message, Notify> {
    let n = frame_len(frame)?.ok_or_else(|| Notify::new(1, 2, [], "message header: truncated"))?;
    if n != frame.len() {
        let l = (frame.len().min(usize::from(u16::MAX)) as u16).to_be_bytes();
        return Err(Notify::new(1, 2, l, format!("message header: length field {n}, frame {} octets", frame.len())));
    }
    let ty = frame.get(18).copied().unwrap_or(0);
    let body = frame.get(HEADER_LEN..).unwrap_or_default();
    let mut r = Reader::new(body);
    Ok(match ty {
        TYPE_OPEN => Message::Open(Open::decode_body(body)?),
        TYPE_UPDATE => Message::Update(Update::decode_body(body, caps)?),
        TYPE_NOTIFICATION => {
            let (code, subcode) = (r.u8().unwrap_or(0), r.u8().unwrap_or(0));
            Message::Notification(Notification { code, subcode, data: r.rest().to_vec() })
        }
        TYPE_KEEPALIVE => Message::Keepalive,
        _ if n != 23 => {
            // RFC 7313 §5: an enhanced route refresh demarcation (subtype 1 or 2) of the wrong
            // length is 7/1 with the message as data; otherwise RFC 4271's 1/2.
            return Err(if matches!(frame.get(21), Some(1 | 2)) {
                Notify::new(7, 1, frame, format!("ROUTE-REFRESH: length {n}, expected 23"))
            } else {
                Notify::new(1, 2, (n as u16).to_be_bytes(), format!("ROUTE-REFRESH: length {n}, expected 23"))
            });
        }
        _ => {
            let (afi, subtype, safi) = (r.u16().unwrap_or(0), r.u8().unwrap_or(0), r.u8().unwrap_or(0));
            Message::RouteRefresh(RouteRefresh { afi, subtype, safi })
        }
    })
}

/// A bounds-checked cursor over a byte slice: every read returns `None` past the end.
#[derive(Debug, Clone)]
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
}

impl<'a> Reader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Reader { buf }
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (a, b) = self.buf.split_at_checked(n)?;
        self.buf = b;
        Some(a)
    }
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        let (&a, b) = self.buf.split_first()?;
        self.buf = b;
        Some(a)
    }
    pub(crate) fn u16(&mut self) -> Option<u16> {
        Some(u16::from_be_bytes(self.take(2)?.try_into().ok()?))
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        Some(u32::from_be_bytes(self.take(4)?.try_into().ok()?))
    }
    pub(crate) fn ipv4(&mut self) -> Option<Ipv4Addr> {
        self.u32().map(Ipv4Addr::from)
    }
    pub(crate) fn ipv6(&mut self) -> Option<Ipv6Addr> {
        let b: [u8; 16] = self.take(16)?.try_into().ok()?;
        Some(Ipv6Addr::from(b))
    }
}

pub(crate) fn put_u16_at(out: &mut [u8], at: usize, v: u16) {
    if let Some(s) = out.get_mut(at..at + 2) {
        s.copy_from_slice(&v.to_be_bytes());
    }
}

/// Parses an NLRI list of one family (RFC 4271 §4.3, RFC 4760 §5, RFC 7911 §3).
/// A syntax error here cannot be contained: the caller resets the session (RFC 7606 §5.3).
pub(crate) fn decode_nlri(buf: &[u8], family: Family, add_path: bool) -> Result<Vec<Nlri>, String> {
    let mut r = Reader::new(buf);
    let mut out = Vec::new();
    while !r.is_empty() {
        let path_id = if add_path { Some(r.u32().ok_or("NLRI: truncated path identifier")?) } else { None };
        let len = r.u8().ok_or("NLRI: missing prefix length")?;
        if len > family.max_len() {
            return Err(format!("NLRI: prefix length {len} exceeds {}", family.max_len()));
        }
        let bytes = r.take(usize::from(len).div_ceil(8)).ok_or("NLRI: prefix overruns the field")?;
        let addr = match family {
            Family::Ipv4Unicast => {
                let mut a = [0u8; 4];
                a.iter_mut().zip(bytes).for_each(|(d, s)| *d = *s);
                IpAddr::V4(a.into())
            }
            Family::Ipv6Unicast => {
                let mut a = [0u8; 16];
                a.iter_mut().zip(bytes).for_each(|(d, s)| *d = *s);
                IpAddr::V6(a.into())
            }
        };
        let prefix = Prefix::new(addr, len).ok_or("NLRI: bad prefix")?;
        out.push(Nlri { path_id, prefix });
    }
    Ok(out)
}

pub(crate) fn encode_nlri(nlri: &[Nlri], add_path: bool, out: &mut Vec<u8>) {
    for n in nlri {
        if add_path {
            out.extend_from_slice(&n.path_id.unwrap_or(0).to_be_bytes());
        }
        out.push(n.prefix.len);
        let nbytes = usize::from(n.prefix.len).div_ceil(8);
        match n.prefix.addr {
            IpAddr::V4(a) => out.extend(a.octets().iter().take(nbytes)),
            IpAddr::V6(a) => out.extend(a.octets().iter().take(nbytes)),
        }
    }
}
