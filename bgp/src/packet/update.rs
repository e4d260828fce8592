//! UPDATE (RFC 4271 §4.3) and its path attributes, with RFC 7606's revised error handling:
//! each malformed attribute leads to "session reset" (an error, i.e. a NOTIFICATION),
//! "treat-as-withdraw" (the [`Verdict`] of the decoded UPDATE) or "attribute discard" (the
//! attribute is kept as [`AttrValue::Malformed`] and never read by the typed accessors).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{decode_nlri, encode_nlri, Family, Nlri, Reader, SessionCaps};
use crate::error::{EncodeError, Notify};

pub const ATTR_ORIGIN: u8 = 1;
pub const ATTR_AS_PATH: u8 = 2;
pub const ATTR_NEXT_HOP: u8 = 3;
pub const ATTR_MED: u8 = 4;
pub const ATTR_LOCAL_PREF: u8 = 5;
pub const ATTR_ATOMIC_AGGREGATE: u8 = 6;
pub const ATTR_AGGREGATOR: u8 = 7;
pub const ATTR_COMMUNITIES: u8 = 8;
pub const ATTR_ORIGINATOR_ID: u8 = 9;
pub const ATTR_CLUSTER_LIST: u8 = 10;
pub const ATTR_MP_REACH: u8 = 14;
pub const ATTR_MP_UNREACH: u8 = 15;
pub const ATTR_AS4_PATH: u8 = 17;
pub const ATTR_AS4_AGGREGATOR: u8 = 18;

const OPTIONAL: u8 = 0x80;
const TRANSITIVE: u8 = 0x40;
const PARTIAL: u8 = 0x20;
const EXTENDED: u8 = 0x10;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Origin {
    Igp = 0,
    Egp = 1,
    Incomplete = 2,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SegmentKind {
    Set = 1,
    Sequence = 2,
    ConfedSequence = 3,
    ConfedSet = 4,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AsSegment {
    pub kind: SegmentKind,
    pub asns: Vec<u32>,
}

/// AS_PATH or AS4_PATH: segments in wire order.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct AsPath(pub Vec<AsSegment>);

impl AsPath {
    /// A single AS_SEQUENCE (empty path for an empty slice, as iBGP originates).
    pub fn sequence(asns: &[u32]) -> AsPath {
        if asns.is_empty() {
            return AsPath(Vec::new());
        }
        AsPath(vec![AsSegment { kind: SegmentKind::Sequence, asns: asns.to_vec() }])
    }

    /// Path length for best-path selection (RFC 4271 §9.1.2.2: a set counts 1, confederation
    /// segments 0).
    pub fn length(&self) -> usize {
        self.0
            .iter()
            .map(|s| match s.kind {
                SegmentKind::Sequence => s.asns.len(),
                SegmentKind::Set => 1,
                _ => 0,
            })
            .sum()
    }

    /// The path for a session without the 4-octet AS capability (RFC 6793 §4.2.2): AS_TRANS
    /// in place of each 4-octet AS, and the real path to send as AS4_PATH if any was replaced.
    pub fn to_two_octet(&self) -> (AsPath, Option<AsPath>) {
        let trans = u32::from(super::AS_TRANS);
        let mut replaced = false;
        let p = AsPath(
            self.0
                .iter()
                .map(|s| AsSegment {
                    kind: s.kind,
                    asns: s
                        .asns
                        .iter()
                        .map(|&a| {
                            if a > 0xffff {
                                replaced = true;
                                trans
                            } else {
                                a
                            }
                        })
                        .collect(),
                })
                .collect(),
        );
        (p, replaced.then(|| self.clone()))
    }

    /// Rebuilds the real path from a 2-octet AS_PATH and an AS4_PATH (RFC 6793 §4.2.3): the
    /// leading ASes of AS_PATH that AS4_PATH does not cover, then AS4_PATH; AS_PATH alone when
    /// AS4_PATH is the longer (it is then ignored).
    pub fn merge_as4(&self, as4: &AsPath) -> AsPath {
        let (n, n4) = (self.length(), as4.length());
        if n < n4 {
            return self.clone();
        }
        let mut keep = n - n4;
        let mut out = Vec::new();
        for s in &self.0 {
            if keep == 0 {
                break;
            }
            match s.kind {
                SegmentKind::Sequence => {
                    let take = keep.min(s.asns.len());
                    out.push(AsSegment { kind: s.kind, asns: s.asns.iter().take(take).copied().collect() });
                    keep -= take;
                }
                SegmentKind::Set => {
                    out.push(s.clone());
                    keep -= 1;
                }
                _ => out.push(s.clone()),
            }
        }
        out.extend(as4.0.iter().cloned());
        AsPath(out)
    }

    fn decode(v: &[u8], four: bool) -> Option<AsPath> {
        let mut r = Reader::new(v);
        let mut segs = Vec::new();
        while !r.is_empty() {
            let kind = match r.u8()? {
                1 => SegmentKind::Set,
                2 => SegmentKind::Sequence,
                3 => SegmentKind::ConfedSequence,
                4 => SegmentKind::ConfedSet,
                _ => return None,
            };
            let n = r.u8()?;
            if n == 0 {
                return None;
            }
            let mut asns = Vec::with_capacity(usize::from(n));
            for _ in 0..n {
                asns.push(if four { r.u32()? } else { u32::from(r.u16()?) });
            }
            segs.push(AsSegment { kind, asns });
        }
        Some(AsPath(segs))
    }

    fn encode(&self, four: bool, what: &'static str, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        for s in &self.0 {
            // Segments hold at most 255 AS numbers: longer ones are split.
            for chunk in s.asns.chunks(255) {
                out.extend_from_slice(&[s.kind as u8, chunk.len() as u8]);
                for &a in chunk {
                    if four {
                        out.extend_from_slice(&a.to_be_bytes());
                    } else {
                        let a16 = u16::try_from(a).map_err(|_| EncodeError::FourOctetAs { what, asn: a })?;
                        out.extend_from_slice(&a16.to_be_bytes());
                    }
                }
            }
        }
        Ok(())
    }
}

/// The next hop of MP_REACH_NLRI: IPv4, or IPv6 with the optional link-local address that
/// a speaker on a shared link adds (RFC 2545 §3); an IPv6 next hop for IPv4 routes is the
/// extended next hop of RFC 8950.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MpNextHop {
    Ipv4(Ipv4Addr),
    Ipv6 { global: Ipv6Addr, link_local: Option<Ipv6Addr> },
}

impl MpNextHop {
    pub fn addr(&self) -> IpAddr {
        match self {
            MpNextHop::Ipv4(a) => IpAddr::V4(*a),
            MpNextHop::Ipv6 { global, .. } => IpAddr::V6(*global),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MpReach {
    pub family: Family,
    pub next_hop: MpNextHop,
    pub nlri: Vec<Nlri>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct MpUnreach {
    pub family: Family,
    pub withdrawn: Vec<Nlri>,
}

/// What RFC 7606 says to do with a malformed attribute that does not reset the session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Remedy {
    /// Withdraw every route of the UPDATE (RFC 7606 §2).
    TreatAsWithdraw,
    /// Ignore the attribute, use the rest.
    Discard,
}

/// One RFC 7606 finding: which attribute, what was wrong, and the remedy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AttrProblem {
    /// The attribute type code (0 for problems of the attribute list as a whole).
    pub code: u8,
    pub remedy: Remedy,
    pub reason: String,
}

/// A path attribute's value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AttrValue {
    Origin(Origin),
    AsPath(AsPath),
    NextHop(Ipv4Addr),
    Med(u32),
    LocalPref(u32),
    AtomicAggregate,
    /// AGGREGATOR: 2- or 4-octet AS depending on the session (RFC 6793 §3).
    Aggregator {
        asn: u32,
        addr: Ipv4Addr,
    },
    Communities(Vec<u32>),
    OriginatorId(Ipv4Addr),
    ClusterList(Vec<Ipv4Addr>),
    MpReach(MpReach),
    MpUnreach(MpUnreach),
    As4Path(AsPath),
    As4Aggregator {
        asn: u32,
        addr: Ipv4Addr,
    },
    /// An attribute we do not interpret (unknown type, or MP_REACH/MP_UNREACH of a family we
    /// do not carry), kept raw. Optional transitive ones are passed on with the partial bit.
    Unknown {
        code: u8,
        value: Vec<u8>,
    },
    /// A malformed attribute kept raw; `problem` says what was wrong and the remedy.
    Malformed {
        code: u8,
        value: Vec<u8>,
        problem: AttrProblem,
    },
}

impl AttrValue {
    pub fn code(&self) -> u8 {
        match self {
            AttrValue::Origin(_) => ATTR_ORIGIN,
            AttrValue::AsPath(_) => ATTR_AS_PATH,
            AttrValue::NextHop(_) => ATTR_NEXT_HOP,
            AttrValue::Med(_) => ATTR_MED,
            AttrValue::LocalPref(_) => ATTR_LOCAL_PREF,
            AttrValue::AtomicAggregate => ATTR_ATOMIC_AGGREGATE,
            AttrValue::Aggregator { .. } => ATTR_AGGREGATOR,
            AttrValue::Communities(_) => ATTR_COMMUNITIES,
            AttrValue::OriginatorId(_) => ATTR_ORIGINATOR_ID,
            AttrValue::ClusterList(_) => ATTR_CLUSTER_LIST,
            AttrValue::MpReach(_) => ATTR_MP_REACH,
            AttrValue::MpUnreach(_) => ATTR_MP_UNREACH,
            AttrValue::As4Path(_) => ATTR_AS4_PATH,
            AttrValue::As4Aggregator { .. } => ATTR_AS4_AGGREGATOR,
            AttrValue::Unknown { code, .. } | AttrValue::Malformed { code, .. } => *code,
        }
    }
}

/// The optional and transitive bits RFC 4271 / 4456 / 4760 / 6793 / 1997 assign to a type.
fn expected_flags(code: u8) -> Option<u8> {
    Some(match code {
        ATTR_ORIGIN | ATTR_AS_PATH | ATTR_NEXT_HOP | ATTR_LOCAL_PREF | ATTR_ATOMIC_AGGREGATE => TRANSITIVE,
        ATTR_MED | ATTR_ORIGINATOR_ID | ATTR_CLUSTER_LIST | ATTR_MP_REACH | ATTR_MP_UNREACH => OPTIONAL,
        ATTR_AGGREGATOR | ATTR_COMMUNITIES | ATTR_AS4_PATH | ATTR_AS4_AGGREGATOR => OPTIONAL | TRANSITIVE,
        _ => return None,
    })
}

/// RFC 7606 §7's remedy for a malformed attribute of this type.
fn remedy_for(code: u8) -> Remedy {
    match code {
        ATTR_ATOMIC_AGGREGATE | ATTR_AGGREGATOR | ATTR_AS4_PATH | ATTR_AS4_AGGREGATOR => Remedy::Discard,
        _ => Remedy::TreatAsWithdraw,
    }
}

/// A path attribute: its flags octet as sent (so the extended-length and partial bits
/// re-encode as received) and its value.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attr {
    pub flags: u8,
    pub value: AttrValue,
}

impl Attr {
    /// An attribute with the flags its type prescribes (optional transitive unknown ones keep
    /// `OPTIONAL | TRANSITIVE`).
    pub fn new(value: AttrValue) -> Attr {
        let flags = expected_flags(value.code()).unwrap_or(OPTIONAL | TRANSITIVE);
        Attr { flags, value }
    }
    pub fn optional(&self) -> bool {
        self.flags & OPTIONAL != 0
    }
    pub fn transitive(&self) -> bool {
        self.flags & TRANSITIVE != 0
    }
    pub fn partial(&self) -> bool {
        self.flags & PARTIAL != 0
    }
    /// The attribute as passed on to another peer: unrecognised optional transitive
    /// attributes get the partial bit (RFC 4271 §5), unrecognised non-transitive ones and
    /// malformed ones are dropped.
    pub fn for_propagation(&self) -> Option<Attr> {
        // RFC 4271 §4.3: the four low-order flag bits are unused and MUST be zero when sent,
        // whatever the peer we learned the attribute from put there.
        let flags = self.flags & 0xf0;
        match &self.value {
            AttrValue::Malformed { .. } => None,
            AttrValue::Unknown { code, .. } if expected_flags(*code).is_none() => {
                (self.optional() && self.transitive()).then(|| Attr { flags: flags | PARTIAL, ..self.clone() })
            }
            _ => Some(Attr { flags, ..self.clone() }),
        }
    }

    fn encode(&self, caps: &SessionCaps, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let mut v = Vec::new();
        let four = caps.four_octet_as;
        match &self.value {
            AttrValue::Origin(o) => v.push(*o as u8),
            AttrValue::AsPath(p) => p.encode(four, "AS_PATH", &mut v)?,
            AttrValue::As4Path(p) => p.encode(true, "AS4_PATH", &mut v)?,
            AttrValue::NextHop(a) | AttrValue::OriginatorId(a) => v.extend_from_slice(&a.octets()),
            AttrValue::Med(x) | AttrValue::LocalPref(x) => v.extend_from_slice(&x.to_be_bytes()),
            AttrValue::AtomicAggregate => {}
            AttrValue::Aggregator { asn, addr } => {
                if four {
                    v.extend_from_slice(&asn.to_be_bytes());
                } else {
                    let a =
                        u16::try_from(*asn).map_err(|_| EncodeError::FourOctetAs { what: "AGGREGATOR", asn: *asn })?;
                    v.extend_from_slice(&a.to_be_bytes());
                }
                v.extend_from_slice(&addr.octets());
            }
            AttrValue::As4Aggregator { asn, addr } => {
                v.extend_from_slice(&asn.to_be_bytes());
                v.extend_from_slice(&addr.octets());
            }
            AttrValue::Communities(c) => c.iter().for_each(|x| v.extend_from_slice(&x.to_be_bytes())),
            AttrValue::ClusterList(c) => c.iter().for_each(|x| v.extend_from_slice(&x.octets())),
            AttrValue::MpReach(m) => {
                v.extend_from_slice(&m.family.afi().to_be_bytes());
                v.push(m.family.safi());
                match m.next_hop {
                    MpNextHop::Ipv4(a) => {
                        v.push(4);
                        v.extend_from_slice(&a.octets());
                    }
                    MpNextHop::Ipv6 { global, link_local } => {
                        v.push(if link_local.is_some() { 32 } else { 16 });
                        v.extend_from_slice(&global.octets());
                        if let Some(ll) = link_local {
                            v.extend_from_slice(&ll.octets());
                        }
                    }
                }
                v.push(0);
                encode_nlri(&m.nlri, caps.add_path_send(m.family), &mut v);
            }
            AttrValue::MpUnreach(m) => {
                v.extend_from_slice(&m.family.afi().to_be_bytes());
                v.push(m.family.safi());
                encode_nlri(&m.withdrawn, caps.add_path_send(m.family), &mut v);
            }
            AttrValue::Unknown { value, .. } | AttrValue::Malformed { value, .. } => v.extend_from_slice(value),
        }
        let ext = self.flags & EXTENDED != 0 || v.len() > 255;
        let flags = if ext { self.flags | EXTENDED } else { self.flags };
        out.extend_from_slice(&[flags, self.value.code()]);
        if ext {
            let l = u16::try_from(v.len()).map_err(|_| EncodeError::Overflow { what: "attribute", value: v.len() })?;
            out.extend_from_slice(&l.to_be_bytes());
        } else {
            out.push(v.len() as u8);
        }
        out.extend_from_slice(&v);
        Ok(())
    }
}

/// RFC 7606's verdict on a received UPDATE (session-reset errors never get this far: they
/// are the decoder's `Err`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub enum Verdict {
    /// Use the UPDATE (minus any attribute marked [`Remedy::Discard`]).
    #[default]
    Accept,
    /// Withdraw every prefix the UPDATE announces (and those it withdraws), RFC 7606 §2.
    TreatAsWithdraw(Vec<AttrProblem>),
}

/// An UPDATE message.
#[derive(Debug, Clone, Default, PartialEq, Eq, Hash)]
pub struct Update {
    /// IPv4 unicast withdrawn routes.
    pub withdrawn: Vec<Nlri>,
    /// Path attributes in wire order.
    pub attrs: Vec<Attr>,
    /// IPv4 unicast NLRI.
    pub nlri: Vec<Nlri>,
    /// Octets at the end of the attribute list that did not form an attribute (RFC 7606 §4),
    /// kept so that the message re-encodes as received.
    pub attr_tail: Vec<u8>,
    /// What RFC 7606 says to do with this UPDATE. Decoded UPDATEs set it; use
    /// [`Update::announced`] and [`Update::withdrawn_all`], which apply it.
    pub verdict: Verdict,
}

impl Update {
    /// An UPDATE announcing `nlri` (IPv4 in the NLRI field; anything else belongs in an
    /// `MpReach` attribute) with `attrs`.
    pub fn new(attrs: Vec<AttrValue>, nlri: Vec<Nlri>) -> Update {
        Update { attrs: attrs.into_iter().map(Attr::new).collect(), nlri, ..Update::default() }
    }

    /// The End-of-RIB marker of a family (RFC 4724 §2): an empty UPDATE for IPv4 unicast,
    /// an empty MP_UNREACH_NLRI otherwise.
    pub fn end_of_rib(family: Family) -> Update {
        match family {
            Family::Ipv4Unicast => Update::default(),
            f => Update::new(vec![AttrValue::MpUnreach(MpUnreach { family: f, withdrawn: Vec::new() })], Vec::new()),
        }
    }

    /// The family this UPDATE marks the end of the initial table for, if it is End-of-RIB.
    pub fn end_of_rib_family(&self) -> Option<Family> {
        if !self.withdrawn.is_empty() || !self.nlri.is_empty() || !self.attr_tail.is_empty() {
            return None;
        }
        match self.attrs.as_slice() {
            [] => Some(Family::Ipv4Unicast),
            [Attr { value: AttrValue::MpUnreach(m), .. }] if m.withdrawn.is_empty() => Some(m.family),
            _ => None,
        }
    }

    /// The first well-formed attribute of a type.
    pub fn attr(&self, code: u8) -> Option<&AttrValue> {
        self.attrs.iter().map(|a| &a.value).find(|v| v.code() == code && !matches!(v, AttrValue::Malformed { .. }))
    }

    /// The AS path to use: AS_PATH, merged with AS4_PATH on a session without 4-octet AS
    /// numbers (RFC 6793 §4.2.3; AS4_PATH between two 4-octet speakers is ignored).
    pub fn as_path(&self, caps: &SessionCaps) -> Option<AsPath> {
        let Some(AttrValue::AsPath(p)) = self.attr(ATTR_AS_PATH) else { return None };
        match self.attr(ATTR_AS4_PATH) {
            Some(AttrValue::As4Path(p4)) if !caps.four_octet_as => Some(p.merge_as4(p4)),
            _ => Some(p.clone()),
        }
    }

    pub fn mp_reach(&self) -> Option<&MpReach> {
        self.attrs.iter().find_map(|a| if let AttrValue::MpReach(m) = &a.value { Some(m) } else { None })
    }

    pub fn mp_unreach(&self) -> Option<&MpUnreach> {
        self.attrs.iter().find_map(|a| if let AttrValue::MpUnreach(m) = &a.value { Some(m) } else { None })
    }

    /// Attributes RFC 7606 says to discard.
    pub fn discarded(&self) -> impl Iterator<Item = &AttrProblem> {
        self.attrs.iter().filter_map(|a| match &a.value {
            AttrValue::Malformed { problem, .. } if problem.remedy == Remedy::Discard => Some(problem),
            _ => None,
        })
    }

    /// Every prefix announced (IPv4 NLRI and MP_REACH_NLRI), empty under treat-as-withdraw.
    pub fn announced(&self) -> Vec<Nlri> {
        if self.verdict != Verdict::Accept {
            return Vec::new();
        }
        self.reach_nlri()
    }

    /// Every prefix to withdraw: the withdrawn routes, MP_UNREACH_NLRI and, under
    /// treat-as-withdraw, the announced ones too.
    pub fn withdrawn_all(&self) -> Vec<Nlri> {
        let mut v = self.withdrawn.clone();
        if let Some(m) = self.mp_unreach() {
            v.extend_from_slice(&m.withdrawn);
        }
        if self.verdict != Verdict::Accept {
            v.extend(self.reach_nlri());
        }
        v
    }

    fn reach_nlri(&self) -> Vec<Nlri> {
        let mut v = self.nlri.clone();
        if let Some(m) = self.mp_reach() {
            v.extend_from_slice(&m.nlri);
        }
        v
    }

    pub(crate) fn encode_body(&self, caps: &SessionCaps, out: &mut Vec<u8>) -> Result<(), EncodeError> {
        let at = out.len();
        out.extend_from_slice(&[0, 0]);
        encode_nlri(&self.withdrawn, caps.add_path_send(Family::Ipv4Unicast), out);
        let wl = out.len() - at - 2;
        super::put_u16_at(out, at, u16::try_from(wl).map_err(|_| EncodeError::TooLong(wl))?);
        let at = out.len();
        out.extend_from_slice(&[0, 0]);
        for a in &self.attrs {
            a.encode(caps, out)?;
        }
        out.extend_from_slice(&self.attr_tail);
        let al = out.len() - at - 2;
        super::put_u16_at(out, at, u16::try_from(al).map_err(|_| EncodeError::TooLong(al))?);
        encode_nlri(&self.nlri, caps.add_path_send(Family::Ipv4Unicast), out);
        Ok(())
    }

    /// Decodes an UPDATE body with RFC 7606's error handling. `Err` is a session reset.
    pub fn decode_body(body: &[u8], caps: &SessionCaps) -> Result<Update, Notify> {
        let malformed_list = |d: &str| Notify::new(3, 1, [], format!("UPDATE: {d}"));
        let mut r = Reader::new(body);
        let wl = r.u16().ok_or_else(|| malformed_list("truncated withdrawn routes length"))?;
        let wbuf = r.take(usize::from(wl)).ok_or_else(|| malformed_list("withdrawn routes overrun the message"))?;
        let al = r.u16().ok_or_else(|| malformed_list("truncated total path attribute length"))?;
        let abuf = r.take(usize::from(al)).ok_or_else(|| malformed_list("path attributes overrun the message"))?;
        let nbuf = r.rest();
        let ap4 = caps.add_path_receive(Family::Ipv4Unicast);
        let bad_nlri = |e: String| Notify::new(3, 10, [], format!("UPDATE: {e}"));
        let withdrawn = decode_nlri(wbuf, Family::Ipv4Unicast, ap4).map_err(|e| bad_nlri(format!("withdrawn {e}")))?;
        let nlri = decode_nlri(nbuf, Family::Ipv4Unicast, ap4).map_err(bad_nlri)?;

        let mut u = Update { withdrawn, nlri, ..Update::default() };
        let mut problems = Vec::new();
        let mut ar = Reader::new(abuf);
        let mut seen = [false; 256];
        while !ar.is_empty() {
            let rest = ar.clone();
            let head = (ar.u8(), ar.u8());
            let (Some(flags), Some(code)) = head else {
                u.attr_tail = rest.clone().rest().to_vec();
                problems.push(AttrProblem {
                    code: 0,
                    remedy: Remedy::TreatAsWithdraw,
                    reason: format!("{} trailing octets in the attribute list", u.attr_tail.len()),
                });
                break;
            };
            let len = if flags & EXTENDED != 0 { ar.u16() } else { ar.u8().map(u16::from) };
            let value = len.and_then(|l| ar.take(usize::from(l)));
            let Some(value) = value else {
                // RFC 7606 §4: the attribute overruns the list. The list's length still
                // locates the NLRI, unless it is the MP attribute that carries them.
                if matches!(code, ATTR_MP_REACH | ATTR_MP_UNREACH) {
                    return Err(malformed_list(&format!("attribute {code} overruns the attribute list")));
                }
                u.attr_tail = rest.clone().rest().to_vec();
                problems.push(AttrProblem {
                    code,
                    remedy: Remedy::TreatAsWithdraw,
                    reason: format!("attribute {code} overruns the attribute list"),
                });
                break;
            };
            let keep = |reason: String, remedy: Remedy| AttrValue::Malformed {
                code,
                value: value.to_vec(),
                problem: AttrProblem { code, remedy, reason },
            };
            let duplicate = seen.get_mut(usize::from(code)).is_some_and(|s| std::mem::replace(s, true));
            let v = if duplicate {
                // RFC 7606 §3 g: only the first occurrence counts, except for the MP
                // attributes whose NLRI would be ambiguous.
                if matches!(code, ATTR_MP_REACH | ATTR_MP_UNREACH) {
                    return Err(malformed_list(&format!("attribute {code} appears twice")));
                }
                keep(format!("attribute {code} repeated"), Remedy::Discard)
            } else {
                match expected_flags(code) {
                    Some(e) if flags & (OPTIONAL | TRANSITIVE) != e => {
                        if matches!(code, ATTR_MP_REACH | ATTR_MP_UNREACH) {
                            return Err(attr_notify(3, 4, flags, code, value, "flags conflict with its type"));
                        }
                        // RFC 7606 §3 c: flags in conflict with the type mean malformed.
                        keep(
                            format!("attribute {code}: flags {flags:#04x} conflict with its type"),
                            Remedy::TreatAsWithdraw,
                        )
                    }
                    None if flags & OPTIONAL == 0 => {
                        return Err(attr_notify(3, 2, flags, code, value, "unrecognised well-known attribute"));
                    }
                    // RFC 7606 §7.5: LOCAL_PREF from an external peer is discarded.
                    _ if code == ATTR_LOCAL_PREF && !caps.ibgp => {
                        keep("LOCAL_PREF from an external peer".to_string(), Remedy::Discard)
                    }
                    _ => match decode_attr(code, flags, value, caps)? {
                        Ok(v) => v,
                        Err(reason) => keep(reason, remedy_for(code)),
                    },
                }
            };
            if let AttrValue::Malformed { problem, .. } = &v {
                if problem.remedy == Remedy::TreatAsWithdraw {
                    problems.push(problem.clone());
                }
            }
            u.attrs.push(Attr { flags, value: v });
        }

        // RFC 8950: an IPv6 next hop for IPv4 routes only where the extended next hop
        // capability was negotiated. Without it the peer broke the session's contract, but
        // the attribute is well-formed and locates its NLRI: treat-as-withdraw (RFC 7606's
        // spirit), not a reset.
        let ext_nh = caps.extended_next_hop.contains(&(Family::Ipv4Unicast, super::AFI_IPV6));
        for a in &u.attrs {
            if let AttrValue::MpReach(m) = &a.value {
                if m.family == Family::Ipv4Unicast && matches!(m.next_hop, MpNextHop::Ipv6 { .. }) && !ext_nh {
                    problems.push(AttrProblem {
                        code: ATTR_MP_REACH,
                        remedy: Remedy::TreatAsWithdraw,
                        reason: "IPv6 next hop for IPv4 routes, but the extended next hop capability \
                                 (RFC 8950) was not negotiated"
                            .to_string(),
                    });
                }
            }
        }

        // RFC 7606 §3 d: missing well-known mandatory attributes when there is NLRI.
        if !u.reach_nlri().is_empty() {
            let present = |c: u8| u.attrs.iter().any(|a| a.value.code() == c);
            let mut need = vec![(ATTR_ORIGIN, "ORIGIN"), (ATTR_AS_PATH, "AS_PATH")];
            if !u.nlri.is_empty() {
                need.push((ATTR_NEXT_HOP, "NEXT_HOP"));
            }
            if caps.ibgp {
                need.push((ATTR_LOCAL_PREF, "LOCAL_PREF"));
            }
            for (c, name) in need {
                if !present(c) {
                    problems.push(AttrProblem {
                        code: c,
                        remedy: Remedy::TreatAsWithdraw,
                        reason: format!("missing well-known attribute {name}"),
                    });
                }
            }
        }
        if !problems.is_empty() {
            u.verdict = Verdict::TreatAsWithdraw(problems);
        }
        Ok(u)
    }
}

fn attr_notify(code: u8, subcode: u8, flags: u8, ty: u8, value: &[u8], what: &str) -> Notify {
    // RFC 4271 §6.3: the data is the whole attribute (type, length, value).
    let mut data = vec![flags, ty];
    if flags & EXTENDED != 0 {
        data.extend_from_slice(&(value.len() as u16).to_be_bytes());
    } else {
        data.push(value.len() as u8);
    }
    data.extend_from_slice(value);
    Notify::new(code, subcode, data, format!("UPDATE: attribute {ty}: {what}"))
}

/// One attribute's value. The outer `Err` is a session reset; the inner `Err` a malformed
/// attribute whose remedy [`remedy_for`] gives.
fn decode_attr(code: u8, flags: u8, v: &[u8], caps: &SessionCaps) -> Result<Result<AttrValue, String>, Notify> {
    if matches!(code, ATTR_MP_REACH | ATTR_MP_UNREACH) {
        return decode_mp(code, flags, v, caps).map(Ok);
    }
    let mut r = Reader::new(v);
    let len = v.len();
    let exact =
        |n: usize, name: &str| if len == n { Ok(()) } else { Err(format!("{name}: length {len}, expected {n}")) };
    let multiple = |name: &str| {
        if len > 0 && len.is_multiple_of(4) {
            Ok(())
        } else {
            Err(format!("{name}: length {len} is not a non-zero multiple of 4"))
        }
    };
    let four = caps.four_octet_as;
    Ok((|| -> Result<AttrValue, String> {
        Ok(match code {
            ATTR_ORIGIN => {
                exact(1, "ORIGIN")?;
                match r.u8() {
                    Some(0) => AttrValue::Origin(Origin::Igp),
                    Some(1) => AttrValue::Origin(Origin::Egp),
                    Some(2) => AttrValue::Origin(Origin::Incomplete),
                    o => return Err(format!("ORIGIN: undefined value {o:?}")),
                }
            }
            ATTR_AS_PATH => AttrValue::AsPath(AsPath::decode(v, four).ok_or("AS_PATH: malformed segment")?),
            ATTR_AS4_PATH => AttrValue::As4Path(AsPath::decode(v, true).ok_or("AS4_PATH: malformed segment")?),
            ATTR_NEXT_HOP => {
                exact(4, "NEXT_HOP")?;
                AttrValue::NextHop(r.ipv4().ok_or("NEXT_HOP: truncated")?)
            }
            ATTR_MED => {
                exact(4, "MULTI_EXIT_DISC")?;
                AttrValue::Med(r.u32().ok_or("MED: truncated")?)
            }
            ATTR_LOCAL_PREF => {
                exact(4, "LOCAL_PREF")?;
                AttrValue::LocalPref(r.u32().ok_or("LOCAL_PREF: truncated")?)
            }
            ATTR_ATOMIC_AGGREGATE => {
                exact(0, "ATOMIC_AGGREGATE")?;
                AttrValue::AtomicAggregate
            }
            ATTR_AGGREGATOR | ATTR_AS4_AGGREGATOR => {
                let w = if code == ATTR_AGGREGATOR && !four { 2 } else { 4 };
                exact(w + 4, if code == ATTR_AGGREGATOR { "AGGREGATOR" } else { "AS4_AGGREGATOR" })?;
                let asn = if w == 2 { r.u16().map(u32::from) } else { r.u32() }.ok_or("AGGREGATOR: truncated")?;
                let addr = r.ipv4().ok_or("AGGREGATOR: truncated")?;
                if code == ATTR_AGGREGATOR {
                    AttrValue::Aggregator { asn, addr }
                } else {
                    AttrValue::As4Aggregator { asn, addr }
                }
            }
            ATTR_COMMUNITIES => {
                multiple("COMMUNITIES")?;
                AttrValue::Communities(std::iter::from_fn(|| r.u32()).collect())
            }
            ATTR_ORIGINATOR_ID => {
                exact(4, "ORIGINATOR_ID")?;
                AttrValue::OriginatorId(r.ipv4().ok_or("ORIGINATOR_ID: truncated")?)
            }
            ATTR_CLUSTER_LIST => {
                multiple("CLUSTER_LIST")?;
                AttrValue::ClusterList(std::iter::from_fn(|| r.ipv4()).collect())
            }
            _ => AttrValue::Unknown { code, value: v.to_vec() },
        })
    })())
}

/// MP_REACH_NLRI / MP_UNREACH_NLRI (RFC 4760 §3, §4). Errors here reset the session:
/// RFC 7606 §7.11 (a bad next hop length hides where the NLRI start) and §5.3 (NLRI).
fn decode_mp(code: u8, flags: u8, v: &[u8], caps: &SessionCaps) -> Result<AttrValue, Notify> {
    let bad = |what: &str| attr_notify(3, 9, flags, code, v, what);
    let mut r = Reader::new(v);
    let (afi, safi) = (r.u16().ok_or_else(|| bad("truncated AFI"))?, r.u8().ok_or_else(|| bad("truncated SAFI"))?);
    let Some(family) = Family::from_afi_safi(afi, safi) else {
        return Ok(AttrValue::Unknown { code, value: v.to_vec() });
    };
    let ap = caps.add_path_receive(family);
    if code == ATTR_MP_UNREACH {
        let withdrawn = decode_nlri(r.rest(), family, ap).map_err(|e| bad(&e))?;
        return Ok(AttrValue::MpUnreach(MpUnreach { family, withdrawn }));
    }
    let nhl = r.u8().ok_or_else(|| bad("truncated next hop length"))?;
    let nh = r.take(usize::from(nhl)).ok_or_else(|| bad("next hop overruns the attribute"))?;
    let mut nr = Reader::new(nh);
    let next_hop = match nhl {
        4 if family == Family::Ipv4Unicast => MpNextHop::Ipv4(nr.ipv4().ok_or_else(|| bad("next hop"))?),
        16 | 32 => {
            let global = nr.ipv6().ok_or_else(|| bad("next hop"))?;
            let link_local = if nhl == 32 { Some(nr.ipv6().ok_or_else(|| bad("next hop"))?) } else { None };
            MpNextHop::Ipv6 { global, link_local }
        }
        n => return Err(bad(&format!("next hop length {n} is invalid for AFI {afi}"))),
    };
    // The reserved octet (formerly the SNPA count) is ignored on receipt (RFC 4760 §3).
    r.u8().ok_or_else(|| bad("truncated reserved octet"))?;
    let nlri = decode_nlri(r.rest(), family, ap).map_err(|e| bad(&e))?;
    Ok(AttrValue::MpReach(MpReach { family, next_hop, nlri }))
}
