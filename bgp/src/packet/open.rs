//! OPEN (RFC 4271 §4.2) with capabilities (RFC 5492), the RFC 9072 extended optional
//! parameters length, and the negotiation of what both sides support.

use std::net::Ipv4Addr;

use super::{Family, Reader};
use crate::error::{EncodeError, Notify};

/// The 2-octet AS number that stands for a 4-octet one (RFC 6793 §9).
pub const AS_TRANS: u16 = 23456;

const PARAM_CAPABILITIES: u8 = 2;
const CAP_MP: u8 = 1;
const CAP_ROUTE_REFRESH: u8 = 2;
const CAP_EXT_NEXT_HOP: u8 = 5;
const CAP_GRACEFUL_RESTART: u8 = 64;
const CAP_FOUR_OCTET_AS: u8 = 65;
const CAP_ADD_PATH: u8 = 69;
const CAP_ENHANCED_ROUTE_REFRESH: u8 = 70;

/// One (AFI, SAFI, next-hop AFI) triple of the extended next hop capability (RFC 8950).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExtNextHop {
    pub afi: u16,
    pub safi: u16,
    pub nh_afi: u16,
}

/// One family of the graceful restart capability (RFC 4724 §3).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrFamily {
    pub afi: u16,
    pub safi: u8,
    /// The family's flags octet; bit 0x80 is "forwarding state preserved".
    pub flags: u8,
}

impl GrFamily {
    pub fn forwarding_preserved(&self) -> bool {
        self.flags & 0x80 != 0
    }
}

/// The graceful restart capability (RFC 4724 §3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GracefulRestart {
    /// The 4 flag bits (0x8 restart state, 0x4 notification support of RFC 8538).
    pub flags: u8,
    /// Restart time in seconds (12 bits).
    pub time: u16,
    pub families: Vec<GrFamily>,
}

impl GracefulRestart {
    pub fn restarting(&self) -> bool {
        self.flags & 0x8 != 0
    }
}

/// One family of the ADD-PATH capability (RFC 7911 §4): 1 receive, 2 send, 3 both.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddPathFamily {
    pub afi: u16,
    pub safi: u8,
    pub send_receive: u8,
}

/// A capability (RFC 5492). Unknown ones are kept raw so that they re-encode as received; the
/// speaker ignores them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Capability {
    /// Multiprotocol extensions (RFC 4760 §8).
    Multiprotocol {
        afi: u16,
        safi: u8,
    },
    /// Route refresh (RFC 2918).
    RouteRefresh,
    /// Enhanced route refresh (RFC 7313): parsed, not used.
    EnhancedRouteRefresh,
    /// Extended next hop encoding (RFC 8950).
    ExtendedNextHop(Vec<ExtNextHop>),
    GracefulRestart(GracefulRestart),
    /// Support for 4-octet AS numbers, with the speaker's AS (RFC 6793).
    FourOctetAs(u32),
    /// ADD-PATH (RFC 7911): parsed; path identifiers are used only where negotiated.
    AddPath(Vec<AddPathFamily>),
    Unknown {
        code: u8,
        value: Vec<u8>,
    },
}

impl Capability {
    pub fn code(&self) -> u8 {
        match self {
            Capability::Multiprotocol { .. } => CAP_MP,
            Capability::RouteRefresh => CAP_ROUTE_REFRESH,
            Capability::EnhancedRouteRefresh => CAP_ENHANCED_ROUTE_REFRESH,
            Capability::ExtendedNextHop(_) => CAP_EXT_NEXT_HOP,
            Capability::GracefulRestart(_) => CAP_GRACEFUL_RESTART,
            Capability::FourOctetAs(_) => CAP_FOUR_OCTET_AS,
            Capability::AddPath(_) => CAP_ADD_PATH,
            Capability::Unknown { code, .. } => *code,
        }
    }

    fn decode(code: u8, v: &[u8]) -> Result<Capability, Notify> {
        let bad = || {
            let mut data = vec![code, v.len().min(255) as u8];
            data.extend_from_slice(v);
            Notify::new(2, 0, data, format!("OPEN: capability {code} has a malformed value of {} octets", v.len()))
        };
        let mut r = Reader::new(v);
        let cap = match code {
            CAP_MP => {
                let (afi, _reserved, safi) =
                    (r.u16().ok_or_else(bad)?, r.u8().ok_or_else(bad)?, r.u8().ok_or_else(bad)?);
                Capability::Multiprotocol { afi, safi }
            }
            CAP_ROUTE_REFRESH => Capability::RouteRefresh,
            CAP_ENHANCED_ROUTE_REFRESH => Capability::EnhancedRouteRefresh,
            CAP_FOUR_OCTET_AS => Capability::FourOctetAs(r.u32().ok_or_else(bad)?),
            CAP_EXT_NEXT_HOP => {
                let mut l = Vec::new();
                while !r.is_empty() {
                    let (afi, safi, nh_afi) = (r.u16(), r.u16(), r.u16());
                    let (Some(afi), Some(safi), Some(nh_afi)) = (afi, safi, nh_afi) else { return Err(bad()) };
                    l.push(ExtNextHop { afi, safi, nh_afi });
                }
                Capability::ExtendedNextHop(l)
            }
            CAP_GRACEFUL_RESTART => {
                let ft = r.u16().ok_or_else(bad)?;
                let mut families = Vec::new();
                while !r.is_empty() {
                    let (Some(afi), Some(safi), Some(flags)) = (r.u16(), r.u8(), r.u8()) else { return Err(bad()) };
                    families.push(GrFamily { afi, safi, flags });
                }
                Capability::GracefulRestart(GracefulRestart { flags: (ft >> 12) as u8, time: ft & 0x0fff, families })
            }
            CAP_ADD_PATH => {
                let mut l = Vec::new();
                while !r.is_empty() {
                    let (Some(afi), Some(safi), Some(sr)) = (r.u16(), r.u8(), r.u8()) else { return Err(bad()) };
                    l.push(AddPathFamily { afi, safi, send_receive: sr });
                }
                Capability::AddPath(l)
            }
            _ => return Ok(Capability::Unknown { code, value: v.to_vec() }),
        };
        if !r.is_empty() {
            return Err(bad());
        }
        Ok(cap)
    }

    fn encode_value(&self, out: &mut Vec<u8>) {
        match self {
            Capability::Multiprotocol { afi, safi } => {
                out.extend_from_slice(&afi.to_be_bytes());
                out.extend_from_slice(&[0, *safi]);
            }
            Capability::RouteRefresh | Capability::EnhancedRouteRefresh => {}
            Capability::FourOctetAs(asn) => out.extend_from_slice(&asn.to_be_bytes()),
            Capability::ExtendedNextHop(l) => {
                for e in l {
                    out.extend_from_slice(&e.afi.to_be_bytes());
                    out.extend_from_slice(&e.safi.to_be_bytes());
                    out.extend_from_slice(&e.nh_afi.to_be_bytes());
                }
            }
            Capability::GracefulRestart(g) => {
                out.extend_from_slice(&((u16::from(g.flags & 0xf) << 12) | (g.time & 0x0fff)).to_be_bytes());
                for f in &g.families {
                    out.extend_from_slice(&f.afi.to_be_bytes());
                    out.extend_from_slice(&[f.safi, f.flags]);
                }
            }
            Capability::AddPath(l) => {
                for f in l {
                    out.extend_from_slice(&f.afi.to_be_bytes());
                    out.extend_from_slice(&[f.safi, f.send_receive]);
                }
            }
            Capability::Unknown { value, .. } => out.extend_from_slice(value),
        }
    }
}

/// An OPEN message. `params` keeps the optional parameters as they came (each a capabilities
/// parameter holding one or more capabilities: BIRD packs all in one, FRR and GoBGP send one
/// per parameter), so that a received OPEN re-encodes byte for byte.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Open {
    pub version: u8,
    /// "My Autonomous System": AS_TRANS when the AS needs 4 octets.
    pub my_as: u16,
    pub hold_time: u16,
    pub bgp_id: Ipv4Addr,
    pub params: Vec<Vec<Capability>>,
    /// Use RFC 9072's extended optional parameters encoding (also used when the parameters
    /// exceed 255 octets).
    pub extended_params: bool,
}

impl Open {
    /// An OPEN for `asn` carrying `caps` in one capabilities parameter; `FourOctetAs` is
    /// added, and `my_as` set to AS_TRANS when `asn` needs 4 octets.
    pub fn new(asn: u32, hold_time: u16, bgp_id: Ipv4Addr, mut caps: Vec<Capability>) -> Open {
        if !caps.iter().any(|c| matches!(c, Capability::FourOctetAs(_))) {
            caps.push(Capability::FourOctetAs(asn));
        }
        let my_as = u16::try_from(asn).unwrap_or(AS_TRANS);
        Open { version: 4, my_as, hold_time, bgp_id, params: vec![caps], extended_params: false }
    }

    pub fn capabilities(&self) -> impl Iterator<Item = &Capability> {
        self.params.iter().flatten()
    }

    /// The speaker's AS: the 4-octet AS capability's value if present, else `my_as`.
    pub fn asn(&self) -> u32 {
        self.capabilities()
            .find_map(|c| if let Capability::FourOctetAs(a) = c { Some(*a) } else { None })
            .unwrap_or(u32::from(self.my_as))
    }

    /// The families of the multiprotocol capabilities; IPv4 unicast alone when there are none
    /// (RFC 4760 §8: a speaker without the capability carries IPv4 unicast only).
    pub fn families(&self) -> Vec<Family> {
        let mut mp = false;
        let mut v = Vec::new();
        for c in self.capabilities() {
            if let Capability::Multiprotocol { afi, safi } = c {
                mp = true;
                if let Some(f) = Family::from_afi_safi(*afi, *safi) {
                    if !v.contains(&f) {
                        v.push(f);
                    }
                }
            }
        }
        if !mp {
            v.push(Family::Ipv4Unicast);
        }
        v
    }

    pub fn graceful_restart(&self) -> Option<&GracefulRestart> {
        self.capabilities().find_map(|c| if let Capability::GracefulRestart(g) = c { Some(g) } else { None })
    }

    /// Decodes an OPEN body (after the header) with RFC 4271 §6.2's checks that need no
    /// configuration: version 4 (2/1), hold time 0 or ≥ 3 (2/6), a non-zero BGP identifier
    /// (2/3), only capabilities as optional parameters (2/4). The peer AS (2/2) and the
    /// identifier against ours are the FSM's checks.
    pub fn decode_body(body: &[u8]) -> Result<Open, Notify> {
        let short = || Notify::new(1, 2, [], "OPEN: truncated");
        let mut r = Reader::new(body);
        let version = r.u8().ok_or_else(short)?;
        if version != 4 {
            return Err(Notify::new(2, 1, 4u16.to_be_bytes(), format!("OPEN: version {version}, we speak 4")));
        }
        let my_as = r.u16().ok_or_else(short)?;
        let hold_time = r.u16().ok_or_else(short)?;
        if hold_time == 1 || hold_time == 2 {
            return Err(Notify::new(2, 6, [], format!("OPEN: hold time {hold_time} s (must be 0 or at least 3)")));
        }
        let bgp_id = r.ipv4().ok_or_else(short)?;
        if bgp_id.is_unspecified() {
            return Err(Notify::new(2, 3, [], "OPEN: BGP identifier 0.0.0.0"));
        }
        let opt_len = r.u8().ok_or_else(short)?;
        let bad_len = |what: &str| Notify::new(2, 0, [], format!("OPEN: {what}"));
        // RFC 9072 §2: a non-extended parameter type of 255 after a length of 255 announces
        // the extended format, with 2-octet lengths.
        let extended = opt_len == 255 && r.clone().u8() == Some(255);
        let params_buf = if extended {
            r.u8();
            let l = r.u16().ok_or_else(|| bad_len("truncated extended optional parameters length"))?;
            r.take(usize::from(l)).ok_or_else(|| bad_len("extended optional parameters overrun the message"))?
        } else {
            r.take(usize::from(opt_len)).ok_or_else(|| bad_len("optional parameters overrun the message"))?
        };
        if !r.is_empty() {
            return Err(bad_len("octets after the optional parameters"));
        }
        let mut pr = Reader::new(params_buf);
        let mut params = Vec::new();
        while !pr.is_empty() {
            let ty = pr.u8().ok_or_else(|| bad_len("truncated optional parameter"))?;
            let len = if extended { pr.u16() } else { pr.u8().map(u16::from) };
            let len = len.ok_or_else(|| bad_len("truncated optional parameter"))?;
            let val = pr.take(usize::from(len)).ok_or_else(|| bad_len("optional parameter overruns the field"))?;
            if ty != PARAM_CAPABILITIES {
                return Err(Notify::new(2, 4, [], format!("OPEN: unsupported optional parameter type {ty}")));
            }
            let mut cr = Reader::new(val);
            let mut caps = Vec::new();
            while !cr.is_empty() {
                let (Some(code), Some(clen)) = (cr.u8(), cr.u8()) else {
                    return Err(bad_len("truncated capability"));
                };
                let v = cr.take(usize::from(clen)).ok_or_else(|| bad_len("capability overruns its parameter"))?;
                caps.push(Capability::decode(code, v)?);
            }
            params.push(caps);
        }
        Ok(Open { version, my_as, hold_time, bgp_id, params, extended_params: extended })
    }

    pub(crate) fn encode_body(&self, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        out.push(self.version);
        out.extend_from_slice(&self.my_as.to_be_bytes());
        out.extend_from_slice(&self.hold_time.to_be_bytes());
        out.extend_from_slice(&self.bgp_id.octets());
        // Encode the parameters with 2-octet lengths first, then pick the format.
        let mut params: Vec<(usize, Vec<u8>)> = Vec::new();
        for p in &self.params {
            let mut v = Vec::new();
            for c in p {
                let at = v.len();
                v.extend_from_slice(&[c.code(), 0]);
                c.encode_value(&mut v);
                let l = v.len() - at - 2;
                let l8 = u8::try_from(l).map_err(|_| EncodeError::Overflow { what: "capability length", value: l })?;
                if let Some(b) = v.get_mut(at + 1) {
                    *b = l8;
                }
            }
            params.push((v.len(), v));
        }
        let short_total: usize = params.iter().map(|(l, _)| 2 + l).sum();
        let extended = self.extended_params || short_total > 255 || params.iter().any(|(l, _)| *l > 255);
        if extended {
            let total: usize = params.iter().map(|(l, _)| 3 + l).sum();
            let t16 = u16::try_from(total)
                .map_err(|_| EncodeError::Overflow { what: "optional parameters", value: total })?;
            out.extend_from_slice(&[255, 255]);
            out.extend_from_slice(&t16.to_be_bytes());
            for (l, v) in &params {
                out.push(PARAM_CAPABILITIES);
                out.extend_from_slice(&(*l as u16).to_be_bytes());
                out.extend_from_slice(v);
            }
        } else {
            out.push(short_total as u8);
            for (l, v) in &params {
                out.extend_from_slice(&[PARAM_CAPABILITIES, *l as u8]);
                out.extend_from_slice(v);
            }
        }
        Ok(())
    }
}

/// What both OPENs agreed on: how to encode and decode this session's UPDATEs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionCaps {
    /// Both sent the 4-octet AS capability: AS_PATH and AGGREGATOR carry 4-octet numbers.
    pub four_octet_as: bool,
    /// Families both advertised (RFC 4760).
    pub families: Vec<Family>,
    pub route_refresh: bool,
    pub enhanced_route_refresh: bool,
    /// Families whose routes may carry a next hop of the other AFI (RFC 8950), e.g.
    /// `(Ipv4Unicast, AFI_IPV6)`: both sides listed the triple.
    pub extended_next_hop: Vec<(Family, u16)>,
    /// The peer's graceful restart capability, if it sent one.
    pub peer_graceful_restart: Option<GracefulRestart>,
    /// Families for which we send path identifiers (we said send, the peer said receive).
    pub add_path_send: Vec<Family>,
    /// Families for which the peer sends path identifiers to us.
    pub add_path_receive: Vec<Family>,
    /// Same AS on both sides: LOCAL_PREF is mandatory in UPDATEs with NLRI (RFC 7606 §3 d).
    pub ibgp: bool,
}

impl Default for SessionCaps {
    /// Before negotiation: 2-octet AS numbers, IPv4 unicast, no ADD-PATH (RFC 4271 alone).
    fn default() -> Self {
        SessionCaps {
            four_octet_as: false,
            families: vec![Family::Ipv4Unicast],
            route_refresh: false,
            enhanced_route_refresh: false,
            extended_next_hop: Vec::new(),
            peer_graceful_restart: None,
            add_path_send: Vec::new(),
            add_path_receive: Vec::new(),
            ibgp: false,
        }
    }
}

impl SessionCaps {
    pub fn add_path_send(&self, f: Family) -> bool {
        self.add_path_send.contains(&f)
    }
    pub fn add_path_receive(&self, f: Family) -> bool {
        self.add_path_receive.contains(&f)
    }
    /// Decoding a message we produced ourselves: our send is the reader's receive.
    pub fn mirrored(&self) -> SessionCaps {
        let mut c = self.clone();
        std::mem::swap(&mut c.add_path_send, &mut c.add_path_receive);
        c
    }
}

/// Computes the session's capabilities from our OPEN and the peer's (RFC 5492: a capability
/// is used only when both sides advertised it; ADD-PATH per direction, RFC 7911 §4).
pub fn negotiate(local: &Open, remote: &Open) -> SessionCaps {
    let has = |o: &Open, f: &dyn Fn(&Capability) -> bool| o.capabilities().any(f);
    let four_octet_as = has(local, &|c| matches!(c, Capability::FourOctetAs(_)))
        && has(remote, &|c| matches!(c, Capability::FourOctetAs(_)));
    let rf = remote.families();
    let families: Vec<Family> = local.families().into_iter().filter(|f| rf.contains(f)).collect();
    let enh = |o: &Open| -> Vec<ExtNextHop> {
        o.capabilities()
            .filter_map(|c| if let Capability::ExtendedNextHop(l) = c { Some(l.clone()) } else { None })
            .flatten()
            .collect()
    };
    let (le, re) = (enh(local), enh(remote));
    let extended_next_hop = le
        .iter()
        .filter(|e| re.contains(e))
        .filter_map(|e| {
            let f = Family::from_afi_safi(e.afi, u8::try_from(e.safi).ok()?)?;
            families.contains(&f).then_some((f, e.nh_afi))
        })
        .collect();
    let ap = |o: &Open, f: Family| -> u8 {
        o.capabilities()
            .filter_map(|c| if let Capability::AddPath(l) = c { Some(l.clone()) } else { None })
            .flatten()
            .find(|a| a.afi == f.afi() && a.safi == f.safi())
            .map_or(0, |a| a.send_receive)
    };
    let mut add_path_send = Vec::new();
    let mut add_path_receive = Vec::new();
    for &f in &families {
        let (l, r) = (ap(local, f), ap(remote, f));
        if l & 2 != 0 && r & 1 != 0 {
            add_path_send.push(f);
        }
        if l & 1 != 0 && r & 2 != 0 {
            add_path_receive.push(f);
        }
    }
    SessionCaps {
        four_octet_as,
        families,
        route_refresh: has(local, &|c| matches!(c, Capability::RouteRefresh))
            && has(remote, &|c| matches!(c, Capability::RouteRefresh)),
        enhanced_route_refresh: has(local, &|c| matches!(c, Capability::EnhancedRouteRefresh))
            && has(remote, &|c| matches!(c, Capability::EnhancedRouteRefresh)),
        extended_next_hop,
        peer_graceful_restart: remote.graceful_restart().cloned(),
        add_path_send,
        add_path_receive,
        ibgp: local.asn() == remote.asn(),
    }
}
