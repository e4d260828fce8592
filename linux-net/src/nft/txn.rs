//! The general-purpose transaction API: tables, chains (base chains with a
//! hook, priority and policy), named sets and interval sets, verdict maps,
//! their elements, and rules built from [`Match`]es, all collected into one
//! batch and applied atomically by [`Transaction::commit`].
//!
//! This is the layer a ruleset compiler (e.g. ACL policies) targets: it
//! describes *what* a rule matches in nftables terms; the expression lists
//! and their bytes are produced here, the way nft 1.0.6 encodes the same
//! rule, so `nft list ruleset` prints it as if nft had written it.

use std::net::{IpAddr, Ipv4Addr};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::build::{Batch, SetWire, WireElem};
use super::io::execute;
use super::rules::{addr_bytes, prefix_match, Expr};
use super::wire::*;
use super::{Family, NftError, NftResult};

/// A table: family + name. Every object of a [`Transaction`] lives in one.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct TableRef {
    pub family: Family,
    pub name: String,
}

impl TableRef {
    pub fn new(family: Family, name: impl Into<String>) -> Self {
        TableRef { family, name: name.into() }
    }
}

/// Netfilter hook of a base chain (the inet/ip/ip6 hooks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Hook {
    Prerouting,
    Input,
    Forward,
    Output,
    Postrouting,
}

impl Hook {
    fn num(self) -> u32 {
        match self {
            Hook::Prerouting => NF_INET_PRE_ROUTING,
            Hook::Input => NF_INET_LOCAL_IN,
            Hook::Forward => NF_INET_FORWARD,
            Hook::Output => NF_INET_LOCAL_OUT,
            Hook::Postrouting => NF_INET_POST_ROUTING,
        }
    }
}

/// Policy of a base chain: what happens to a packet no rule decided on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ChainPolicy {
    Accept,
    Drop,
}

/// What makes a chain a base chain: `type filter hook <hook> priority
/// <priority>; policy <policy>;`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BaseChain {
    /// `filter`, `nat` or `route`.
    pub chain_type: &'static str,
    pub hook: Hook,
    /// 0 is `filter`; lower runs first.
    pub priority: i32,
    pub policy: ChainPolicy,
}

/// [`BaseChain`] as stored: the chain type as a string, which must be one
/// of nftables' three chain types to read back.
#[derive(Serialize, Deserialize)]
struct BaseChainWire {
    chain_type: String,
    hook: Hook,
    priority: i32,
    policy: ChainPolicy,
}

impl TryFrom<BaseChainWire> for BaseChain {
    type Error = String;
    fn try_from(w: BaseChainWire) -> Result<Self, String> {
        let chain_type = ["filter", "nat", "route"]
            .into_iter()
            .find(|t| *t == w.chain_type)
            .ok_or_else(|| format!("chain type {:?} is not filter, nat or route", w.chain_type))?;
        Ok(BaseChain { chain_type, hook: w.hook, priority: w.priority, policy: w.policy })
    }
}

impl Serialize for BaseChain {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let b = self.clone();
        BaseChainWire { chain_type: b.chain_type.to_string(), hook: b.hook, priority: b.priority, policy: b.policy }
            .serialize(s)
    }
}

impl<'de> Deserialize<'de> for BaseChain {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        BaseChain::try_from(BaseChainWire::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

impl BaseChain {
    /// `type filter hook <hook> priority <priority>; policy <policy>;`
    pub fn filter(hook: Hook, priority: i32, policy: ChainPolicy) -> Self {
        BaseChain { chain_type: "filter", hook, priority, policy }
    }
}

/// Key type of a set or verdict map.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SetKey {
    /// `ipv4_addr`, 4 bytes.
    Ipv4Addr,
    /// `ipv6_addr`, 16 bytes.
    Ipv6Addr,
    /// `ifname`, 16 bytes (IFNAMSIZ), NUL-padded.
    IfName,
    /// `inet_service`, a port, 2 bytes big-endian.
    InetService,
    /// `ifname . ipv4_addr`: an interface name and an IPv4 address, one
    /// concatenated key of 20 bytes (16 + 4; each part fills whole 4-byte
    /// registers). Elements are [`SetElem::IfNameAddr`].
    IfNameIpv4,
    /// `ifname . ipv6_addr`, 32 bytes (16 + 16).
    IfNameIpv6,
}

impl SetKey {
    pub(super) fn type_len(self) -> (u32, u32) {
        match self {
            SetKey::Ipv4Addr => (NFT_TYPE_IPADDR, 4),
            SetKey::Ipv6Addr => (NFT_TYPE_IP6ADDR, 16),
            SetKey::IfName => (NFT_TYPE_IFNAME, IFNAMSIZ as u32),
            SetKey::InetService => (NFT_TYPE_INET_SERVICE, 2),
            SetKey::IfNameIpv4 => ((NFT_TYPE_IFNAME << NFT_TYPE_BITS) | NFT_TYPE_IPADDR, IFNAMSIZ as u32 + 4),
            SetKey::IfNameIpv6 => ((NFT_TYPE_IFNAME << NFT_TYPE_BITS) | NFT_TYPE_IP6ADDR, IFNAMSIZ as u32 + 16),
        }
    }

    /// The byte order nft records for the key (its set userdata): an
    /// interface name is a host-order string, addresses and ports are
    /// big-endian, a concatenation has none (what nft itself writes).
    fn byteorder(self) -> u32 {
        match self {
            SetKey::IfName => BYTEORDER_HOST_ENDIAN,
            SetKey::IfNameIpv4 | SetKey::IfNameIpv6 => BYTEORDER_INVALID,
            SetKey::Ipv4Addr | SetKey::Ipv6Addr | SetKey::InetService => BYTEORDER_BIG_ENDIAN,
        }
    }
}

/// A named set (`set NAME { type KEY; [flags interval;] }`) or verdict map
/// (`map NAME { type KEY : verdict; }`). Passed both to create it and to
/// add or delete its elements, so elements are checked against its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SetDef {
    pub name: String,
    pub key: SetKey,
    /// `flags interval`: elements may be CIDRs and port ranges.
    pub interval: bool,
    /// A verdict map (elements carry a [`Verdict`]) rather than a set.
    pub verdict_map: bool,
}

impl SetDef {
    /// A plain set.
    pub fn set(name: impl Into<String>, key: SetKey) -> Self {
        SetDef { name: name.into(), key, interval: false, verdict_map: false }
    }
    /// A set with `flags interval` (CIDRs, port ranges).
    pub fn interval_set(name: impl Into<String>, key: SetKey) -> Self {
        SetDef { name: name.into(), key, interval: true, verdict_map: false }
    }
    /// A verdict map `KEY : verdict`.
    pub fn verdict_map(name: impl Into<String>, key: SetKey) -> Self {
        SetDef { name: name.into(), key, interval: false, verdict_map: true }
    }
}

/// One element (key) of a set or map.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub enum SetElem {
    /// An address (`ipv4_addr` / `ipv6_addr` sets).
    Addr(IpAddr),
    /// A CIDR; host bits are ignored. Interval sets only, unless it is a
    /// single address (/32, /128).
    Net(IpNetwork),
    /// An interface name (`ifname`).
    IfName(String),
    /// A port (`inet_service`).
    Port(u16),
    /// An inclusive port range; interval sets only, unless first == last.
    PortRange(u16, u16),
    /// An interface name and an address (`ifname . ipv4_addr` /
    /// `ifname . ipv6_addr` sets and maps).
    IfNameAddr(String, IpAddr),
}

/// A verdict: of a rule, of a map entry, or a base chain's policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Verdict {
    Accept,
    Drop,
    /// Back to the calling chain (policy of a base chain).
    Return,
    /// Call a chain; `return` (or its end) comes back here.
    Jump(String),
    /// Go to a chain; its end returns to this chain's caller.
    Goto(String),
}

impl Verdict {
    fn code_chain(&self) -> NftResult<(u32, Option<String>)> {
        Ok(match self {
            Verdict::Accept => (NF_ACCEPT, None),
            Verdict::Drop => (NF_DROP, None),
            Verdict::Return => (NFT_RETURN, None),
            Verdict::Jump(c) | Verdict::Goto(c) => {
                super::build::check_name("chain", c)?;
                (if matches!(self, Verdict::Jump(_)) { NFT_JUMP } else { NFT_GOTO }, Some(c.clone()))
            }
        })
    }

    fn expr(&self) -> NftResult<Expr> {
        Ok(match self.code_chain()? {
            (code, None) => Expr::Verdict { code },
            (code, Some(chain)) => Expr::VerdictChain { code, chain },
        })
    }
}

/// IP version of a match.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IpVersion {
    V4,
    V6,
}

impl IpVersion {
    fn nfproto(self) -> u8 {
        match self {
            IpVersion::V4 => NFPROTO_IPV4,
            IpVersion::V6 => NFPROTO_IPV6,
        }
    }
}

/// Source or destination (address or port).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Dir {
    Src,
    Dst,
}

/// Incoming or outgoing interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum IfDir {
    /// `iifname`
    In,
    /// `oifname`
    Out,
}

impl IfDir {
    fn meta_key(self) -> u32 {
        match self {
            IfDir::In => NFT_META_IIFNAME,
            IfDir::Out => NFT_META_OIFNAME,
        }
    }
}

/// The address part of a concatenated `ifname . address` lookup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum AddrField {
    /// `ip saddr`, `ip daddr`, `ip6 saddr`, `ip6 daddr` (with the IP
    /// version check: `meta nfproto`, or `meta protocol` in a bridge table).
    Ip { version: IpVersion, dir: Dir },
    /// `arp saddr ip`: the sender protocol address of an Ethernet/IPv4 ARP
    /// packet (with `ether type arp`); bridge tables only.
    ArpSender,
}

/// Conntrack states, OR-able: `ct state` bits as the kernel defines them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct CtStates(pub u32);

impl CtStates {
    pub const INVALID: CtStates = CtStates(1);
    pub const ESTABLISHED: CtStates = CtStates(2);
    pub const RELATED: CtStates = CtStates(4);
    pub const NEW: CtStates = CtStates(8);
    pub const UNTRACKED: CtStates = CtStates(64);
}

impl std::ops::BitOr for CtStates {
    type Output = CtStates;
    fn bitor(self, o: CtStates) -> CtStates {
        CtStates(self.0 | o.0)
    }
}

/// IP protocol numbers for [`Match`]es on ports and ICMP.
pub mod proto {
    pub const ICMP: u8 = 1;
    pub const TCP: u8 = 6;
    pub const UDP: u8 = 17;
    pub const ICMPV6: u8 = 58;
    pub const SCTP: u8 = 132;
}

/// One condition of a [`Rule`]; all of a rule's matches must hold.
/// Matches that need a protocol (addresses, ports, ICMP) include the
/// `meta nfproto` / `meta l4proto` check themselves, as nft does; in a
/// bridge-family table the IP version check is `meta protocol` instead.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Match {
    /// `ct state S1,S2` (any of them); `ct state != S1,S2` when negated.
    CtState { states: CtStates, negate: bool },
    /// `meta nfproto ipv4|ipv6` (`meta protocol ip|ip6` in a bridge table)
    IpVersion(IpVersion),
    /// `meta l4proto P` / `meta l4proto != P`
    L4Proto { proto: u8, negate: bool },
    /// `ip|ip6 saddr|daddr [!=] @set`
    AddrInSet { version: IpVersion, dir: Dir, set: String, negate: bool },
    /// `ip|ip6 saddr|daddr [!=] NET`
    AddrInNet { dir: Dir, net: IpNetwork, negate: bool },
    /// `meta l4proto P th sport|dport [!=] @set` (P: tcp, udp, sctp)
    PortInSet { proto: u8, dir: Dir, set: String, negate: bool },
    /// `meta l4proto P th sport|dport [!=] FIRST-LAST` (or a single port)
    PortRange { proto: u8, dir: Dir, first: u16, last: u16, negate: bool },
    /// `icmp|icmpv6 type T [code C]`; negated, `icmp|icmpv6 type != T`
    /// or, with a code, "type and code are not both T and C" (one 2-byte
    /// compare of the ICMP header's first two bytes, what nft itself
    /// generates for a merged type/code match, with `!=`). Either way only
    /// ICMP (ICMPv6) packets of that IP version match. Beware: `nft list`
    /// prints the 2-byte form as `icmp type != T icmp code != C`, which
    /// reads as "neither"; the kernel compares both bytes at once ("not
    /// both").
    Icmp {
        version: IpVersion,
        icmp_type: u8,
        code: Option<u8>,
        #[serde(default)]
        negate: bool,
    },
    /// `meta mark & MASK != 0` (`set`: some bit of `mask` is set) or
    /// `meta mark & MASK == 0` (none is).
    MarkBits { mask: u32, set: bool },
    /// `iifname|oifname [!=] NAME`
    IfName { dir: IfDir, name: String, negate: bool },
    /// `ether type arp`: an ARP frame (bridge tables only).
    Arp,
    /// `arp saddr ip [!=] ADDR` (with `ether type arp`; bridge tables only).
    ArpSenderIp { addr: Ipv4Addr, negate: bool },
}

/// The final statement of a [`Rule`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Action {
    /// accept, drop, return, jump, goto.
    Verdict(Verdict),
    /// `iifname|oifname vmap @map`: the map's verdict for the interface;
    /// no entry means the rule does not match (the chain goes on).
    IfNameVmap { dir: IfDir, map: String },
    /// `ip|ip6 saddr|daddr vmap @map` (the `meta nfproto` check included,
    /// as nft writes it): the map's verdict for the packet's address; no
    /// entry (or another IP version) means the rule does not match.
    AddrVmap { version: IpVersion, dir: Dir, map: String },
    /// `iifname|oifname . ADDR vmap @map` (e.g. `iifname . ip saddr vmap
    /// @own4`), with the address field's protocol check first: the map's
    /// verdict for the pair (an [`SetKey::IfNameIpv4`] / `IfNameIpv6` map);
    /// no entry (or another protocol) means the rule does not match.
    IfAddrVmap { iface: IfDir, addr: AddrField, map: String },
}

/// A statement on the packet mark that keeps the mark's other bits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum MarkStmt {
    /// `meta mark set meta mark | BITS`
    Set(u32),
    /// `meta mark set meta mark & ~BITS`
    Clear(u32),
}

/// One rule: `MATCHES [counter] [log prefix P] [meta mark set ...] [ACTION] [comment C]`.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Rule {
    pub matches: Vec<Match>,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub counter: bool,
    /// `log prefix "<p>"` (kernel log; 127 bytes max).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_prefix: Option<String>,
    /// Set or clear bits of the packet mark (after the log, before the action).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mark: Option<MarkStmt>,
    /// `None`: no verdict, the chain continues (e.g. a log or counter rule).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub action: Option<Action>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comment: Option<String>,
}

impl Rule {
    /// A rule with matches and a verdict, no counter, log or comment.
    pub fn new(matches: Vec<Match>, verdict: Verdict) -> Self {
        Rule { matches, action: Some(Action::Verdict(verdict)), ..Default::default() }
    }

    /// The expression list of this rule.
    /// The expression list of this rule in an `inet` (or `ip`, `ip6`) table.
    #[cfg(test)]
    pub(super) fn exprs(&self) -> NftResult<Vec<Expr>> {
        self.exprs_in(super::Family::Inet)
    }

    /// The expression list of this rule in a table of `family`: in the
    /// bridge family the IP version dependency is `meta protocol` (the
    /// frame's ethertype), as nft writes it there; `meta nfproto` is
    /// NFPROTO_BRIDGE for every packet of a bridge chain.
    pub(super) fn exprs_in(&self, family: super::Family) -> NftResult<Vec<Expr>> {
        let mut e = Vec::new();
        for m in &self.matches {
            match_exprs(m, family, &mut e)?;
        }
        drop_repeated_dependencies(&mut e);
        drop_repeated_loads(&mut e);
        if self.counter {
            e.push(Expr::Counter);
        }
        if let Some(p) = &self.log_prefix {
            if p.len() > 127 || p.contains('\0') {
                return Err(NftError::Invalid(format!("log prefix {p:?} must be at most 127 bytes without NUL")));
            }
            e.push(Expr::Log { prefix: Some(p.clone()) });
        }
        if let Some(m) = self.mark {
            // nft: meta load mark; bitwise (reg & mask) ^ xor; meta set mark
            let (mask, xor) = match m {
                MarkStmt::Set(bits) => (!bits, bits),
                MarkStmt::Clear(bits) => (!bits, 0),
            };
            e.push(Expr::Meta { key: NFT_META_MARK });
            e.push(Expr::MaskXor { mask: mask.to_ne_bytes().to_vec(), xor: xor.to_ne_bytes().to_vec() });
            e.push(Expr::MetaSet { key: NFT_META_MARK });
        }
        match &self.action {
            None => {}
            Some(Action::Verdict(v)) => e.push(v.expr()?),
            Some(Action::IfNameVmap { dir, map }) => {
                super::build::check_name("map", map)?;
                e.push(Expr::Meta { key: dir.meta_key() });
                e.push(Expr::Lookup { set: map.clone(), vmap: true, invert: false });
            }
            Some(Action::AddrVmap { version, dir, map }) => {
                super::build::check_name("map", map)?;
                nfproto_exprs(*version, family, &mut e);
                let (offset, len) = addr_offset(*version, *dir);
                e.push(Expr::Payload { base: NFT_PAYLOAD_NETWORK_HEADER, offset, len });
                e.push(Expr::Lookup { set: map.clone(), vmap: true, invert: false });
            }
            Some(Action::IfAddrVmap { iface, addr, map }) => {
                super::build::check_name("map", map)?;
                // as nft: the dependency, the name into reg 1 (16 bytes: four
                // 32-bit registers), the address into reg 2, one lookup of both
                let (offset, len) = match addr {
                    AddrField::Ip { version, dir } => {
                        nfproto_exprs(*version, family, &mut e);
                        addr_offset(*version, *dir)
                    }
                    AddrField::ArpSender => {
                        arp_exprs(family, &mut e)?;
                        (ARP_SPA_OFFSET, 4)
                    }
                };
                e.push(Expr::Meta { key: iface.meta_key() });
                e.push(Expr::PayloadTo { base: NFT_PAYLOAD_NETWORK_HEADER, offset, len, dreg: NFT_REG_2 });
                e.push(Expr::Lookup { set: map.clone(), vmap: true, invert: false });
            }
        }
        Ok(e)
    }
}

/// Drops a protocol check (`meta nfproto|l4proto|protocol == X`, `ether
/// type == X`) that an earlier one of the same rule already made: each
/// match carries its own dependency (an address match its IP version, a
/// port match its transport protocol), so `meta l4proto tcp th dport 80`
/// after `meta l4proto tcp` would check the protocol twice. nft elides
/// such repeats too. Fewer expressions make a rule cheaper per packet and
/// to load: the kernel finds every expression's type by name in a list of
/// all registered types.
fn drop_repeated_dependencies(e: &mut Vec<Expr>) {
    let is_dependency = |x: &Expr| match x {
        Expr::Meta { key } => matches!(*key, NFT_META_NFPROTO | NFT_META_L4PROTO | NFT_META_PROTOCOL),
        Expr::Payload { base, offset, len } => {
            *base == NFT_PAYLOAD_LL_HEADER && *offset == ETHERTYPE_OFFSET && *len == 2
        }
        _ => false,
    };
    let mut seen: Vec<(Expr, Expr)> = Vec::new();
    let mut out = Vec::with_capacity(e.len());
    let mut it = std::mem::take(e).into_iter().peekable();
    while let Some(x) = it.next() {
        if is_dependency(&x) && matches!(it.peek(), Some(Expr::Cmp { op: NFT_CMP_EQ, .. })) {
            let cmp = it.next().expect("peeked");
            let pair = (x, cmp);
            if !seen.contains(&pair) {
                out.push(pair.0.clone());
                out.push(pair.1.clone());
                seen.push(pair);
            }
            continue;
        }
        out.push(x);
    }
    *e = out;
}

/// Leaves out a load into register 1 (`meta`, `payload`) of what register 1 already holds:
/// compares, ranges and set lookups read the register without changing it, so a rule with
/// several `!=` matches of one field (`tcp dport != 80 tcp dport != 443`) loads the field
/// once. Every expression left out is one the kernel no longer looks up by type name, builds
/// and runs. Anything else (a mask, another load, a verdict map) ends what is known.
fn drop_repeated_loads(e: &mut Vec<Expr>) {
    let mut held: Option<Expr> = None;
    e.retain(|x| match x {
        Expr::Meta { .. } | Expr::Payload { .. } => {
            if held.as_ref() == Some(x) {
                return false;
            }
            held = Some(x.clone());
            true
        }
        Expr::Cmp { .. } | Expr::Range { .. } | Expr::Lookup { vmap: false, .. } => true,
        _ => {
            held = None;
            true
        }
    });
}

fn cmp_op(negate: bool) -> u32 {
    if negate {
        NFT_CMP_NEQ
    } else {
        NFT_CMP_EQ
    }
}

/// The IP version dependency: `meta nfproto ipv4|ipv6`, or in the bridge
/// family `meta protocol ip|ip6` (ethertype 0x0800 / 0x86dd, big-endian).
fn nfproto_exprs(v: IpVersion, family: super::Family, e: &mut Vec<Expr>) {
    if family == super::Family::Bridge {
        let ethertype: u16 = match v {
            IpVersion::V4 => 0x0800,
            IpVersion::V6 => 0x86dd,
        };
        e.push(Expr::Meta { key: NFT_META_PROTOCOL });
        e.push(Expr::Cmp { op: NFT_CMP_EQ, data: ethertype.to_be_bytes().to_vec() });
        return;
    }
    e.push(Expr::Meta { key: NFT_META_NFPROTO });
    e.push(Expr::Cmp { op: NFT_CMP_EQ, data: vec![v.nfproto()] });
}

/// `ether type arp` (the frame's EtherType, as nft writes the dependency of
/// an `arp` match); only a bridge table sees ARP frames.
fn arp_exprs(family: super::Family, e: &mut Vec<Expr>) -> NftResult<()> {
    if family != super::Family::Bridge {
        return Err(NftError::Invalid(format!("ARP matches need a bridge table, not {family}")));
    }
    e.push(Expr::Payload { base: NFT_PAYLOAD_LL_HEADER, offset: ETHERTYPE_OFFSET, len: 2 });
    e.push(Expr::Cmp { op: NFT_CMP_EQ, data: ETH_P_ARP.to_be_bytes().to_vec() });
    Ok(())
}

fn l4proto_exprs(proto: u8, e: &mut Vec<Expr>) {
    e.push(Expr::Meta { key: NFT_META_L4PROTO });
    e.push(Expr::Cmp { op: NFT_CMP_EQ, data: vec![proto] });
}

/// Offset of the source (destination) address in the IPv4/IPv6 header.
fn addr_offset(v: IpVersion, dir: Dir) -> (u32, u32) {
    match (v, dir) {
        (IpVersion::V4, Dir::Src) => (12, 4),
        (IpVersion::V4, Dir::Dst) => (16, 4),
        (IpVersion::V6, Dir::Src) => (8, 16),
        (IpVersion::V6, Dir::Dst) => (24, 16),
    }
}

fn port_offset(dir: Dir) -> u32 {
    match dir {
        Dir::Src => 0,
        Dir::Dst => 2,
    }
}

fn check_port_proto(proto: u8) -> NftResult<()> {
    if matches!(proto, proto::TCP | proto::UDP | proto::SCTP) {
        Ok(())
    } else {
        Err(NftError::Invalid(format!("ports need protocol tcp, udp or sctp, not {proto}")))
    }
}

pub(super) fn ifname_bytes(name: &str) -> NftResult<Vec<u8>> {
    if name.is_empty() || name.len() >= IFNAMSIZ || name.contains('\0') {
        return Err(NftError::Invalid(format!(
            "interface name {name:?} must be 1..{} bytes without NUL",
            IFNAMSIZ - 1
        )));
    }
    let mut b = vec![0u8; IFNAMSIZ];
    b[..name.len()].copy_from_slice(name.as_bytes());
    Ok(b)
}

fn match_exprs(m: &Match, family: super::Family, e: &mut Vec<Expr>) -> NftResult<()> {
    match m {
        Match::CtState { states, negate } => {
            // ct state is a host-order u32 bit mask: (state & S) != 0
            e.push(Expr::Ct { key: NFT_CT_STATE });
            e.push(Expr::Bitwise { mask: states.0.to_ne_bytes().to_vec() });
            e.push(Expr::Cmp { op: if *negate { NFT_CMP_EQ } else { NFT_CMP_NEQ }, data: vec![0; 4] });
        }
        Match::IpVersion(v) => nfproto_exprs(*v, family, e),
        Match::L4Proto { proto, negate } => {
            e.push(Expr::Meta { key: NFT_META_L4PROTO });
            e.push(Expr::Cmp { op: cmp_op(*negate), data: vec![*proto] });
        }
        Match::AddrInSet { version, dir, set, negate } => {
            super::build::check_name("set", set)?;
            nfproto_exprs(*version, family, e);
            let (offset, len) = addr_offset(*version, *dir);
            e.push(Expr::Payload { base: NFT_PAYLOAD_NETWORK_HEADER, offset, len });
            e.push(Expr::Lookup { set: set.clone(), vmap: false, invert: *negate });
        }
        Match::AddrInNet { dir, net, negate } => {
            let v = if net.is_ipv4() { IpVersion::V4 } else { IpVersion::V6 };
            nfproto_exprs(v, family, e);
            let (offset, _) = addr_offset(v, *dir);
            e.extend(prefix_match(offset, net.network(), net.prefix(), cmp_op(*negate)));
        }
        Match::PortInSet { proto, dir, set, negate } => {
            check_port_proto(*proto)?;
            super::build::check_name("set", set)?;
            l4proto_exprs(*proto, e);
            e.push(Expr::Payload { base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: port_offset(*dir), len: 2 });
            e.push(Expr::Lookup { set: set.clone(), vmap: false, invert: *negate });
        }
        Match::PortRange { proto, dir, first, last, negate } => {
            check_port_proto(*proto)?;
            if first > last {
                return Err(NftError::Invalid(format!("port range {first}-{last} is empty")));
            }
            l4proto_exprs(*proto, e);
            e.push(Expr::Payload { base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: port_offset(*dir), len: 2 });
            if first == last {
                e.push(Expr::Cmp { op: cmp_op(*negate), data: first.to_be_bytes().to_vec() });
            } else {
                // one `range` rather than `cmp gte` + `cmp lte`: one expression less to load
                let (from, to) = (first.to_be_bytes().to_vec(), last.to_be_bytes().to_vec());
                e.push(Expr::Range { op: if *negate { NFT_RANGE_NEQ } else { NFT_RANGE_EQ }, from, to });
            }
        }
        Match::Icmp { version, icmp_type, code: Some(c), negate: true } => {
            // not (type T and code C): the two bytes are compared at once
            nfproto_exprs(*version, family, e);
            l4proto_exprs(if *version == IpVersion::V4 { proto::ICMP } else { proto::ICMPV6 }, e);
            e.push(Expr::Payload { base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: 0, len: 2 });
            e.push(Expr::Cmp { op: NFT_CMP_NEQ, data: vec![*icmp_type, *c] });
        }
        Match::Icmp { version, icmp_type, code: None, negate: true } => {
            nfproto_exprs(*version, family, e);
            l4proto_exprs(if *version == IpVersion::V4 { proto::ICMP } else { proto::ICMPV6 }, e);
            e.push(Expr::Payload { base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: 0, len: 1 });
            e.push(Expr::Cmp { op: NFT_CMP_NEQ, data: vec![*icmp_type] });
        }
        Match::MarkBits { mask, set } => {
            e.push(Expr::Meta { key: NFT_META_MARK });
            e.push(Expr::Bitwise { mask: mask.to_ne_bytes().to_vec() });
            e.push(Expr::Cmp { op: if *set { NFT_CMP_NEQ } else { NFT_CMP_EQ }, data: vec![0; 4] });
        }
        Match::Icmp { version, icmp_type, code, negate: false } => {
            nfproto_exprs(*version, family, e);
            l4proto_exprs(if *version == IpVersion::V4 { proto::ICMP } else { proto::ICMPV6 }, e);
            // with a code, type and code in one 2-byte compare: nft merges
            // the two adjacent payload matches the same way
            let data = match code {
                None => vec![*icmp_type],
                Some(c) => vec![*icmp_type, *c],
            };
            e.push(Expr::Payload { base: NFT_PAYLOAD_TRANSPORT_HEADER, offset: 0, len: data.len() as u32 });
            e.push(Expr::Cmp { op: NFT_CMP_EQ, data });
        }
        Match::IfName { dir, name, negate } => {
            e.push(Expr::Meta { key: dir.meta_key() });
            e.push(Expr::Cmp { op: cmp_op(*negate), data: ifname_bytes(name)? });
        }
        Match::Arp => arp_exprs(family, e)?,
        Match::ArpSenderIp { addr, negate } => {
            arp_exprs(family, e)?;
            e.push(Expr::Payload { base: NFT_PAYLOAD_NETWORK_HEADER, offset: ARP_SPA_OFFSET, len: 4 });
            e.push(Expr::Cmp { op: cmp_op(*negate), data: addr.octets().to_vec() });
        }
    }
    Ok(())
}

/// `value + 1` of a big-endian byte string; `None` on overflow (the value
/// was all ones).
fn be_increment(v: &[u8]) -> Option<Vec<u8>> {
    let mut out = v.to_vec();
    for b in out.iter_mut().rev() {
        let (n, carry) = b.overflowing_add(1);
        *b = n;
        if !carry {
            return Some(out);
        }
    }
    None
}

/// Kernel keys of one element: `(key, flags)`. In an interval set a range
/// `[first, last]` is a start element `first` and an end element `last+1`
/// flagged `NFT_SET_ELEM_INTERVAL_END` (left out when `last` is the largest
/// value: the range runs to the end), exactly as nft sends it.
pub(super) fn elem_keys(def: &SetDef, elem: &SetElem) -> NftResult<Vec<(Vec<u8>, u32)>> {
    let bad = || NftError::Invalid(format!("element {elem:?} does not fit set {} of type {:?}", def.name, def.key));
    let (first, last): (Vec<u8>, Vec<u8>) = match (def.key, elem) {
        (SetKey::Ipv4Addr, SetElem::Addr(a @ IpAddr::V4(_))) | (SetKey::Ipv6Addr, SetElem::Addr(a @ IpAddr::V6(_))) => {
            (addr_bytes(*a), addr_bytes(*a))
        }
        (SetKey::Ipv4Addr, SetElem::Net(n @ IpNetwork::V4(_)))
        | (SetKey::Ipv6Addr, SetElem::Net(n @ IpNetwork::V6(_))) => {
            (addr_bytes(n.network()), addr_bytes(n.broadcast_or_last()))
        }
        (SetKey::IfName, SetElem::IfName(name)) => {
            if def.interval {
                return Err(NftError::Invalid(format!("interval set {} cannot hold interface names", def.name)));
            }
            return Ok(vec![(ifname_bytes(name)?, 0)]);
        }
        (SetKey::IfNameIpv4, SetElem::IfNameAddr(name, a @ IpAddr::V4(_)))
        | (SetKey::IfNameIpv6, SetElem::IfNameAddr(name, a @ IpAddr::V6(_))) => {
            if def.interval {
                return Err(NftError::Invalid(format!("interval set {} cannot hold concatenations", def.name)));
            }
            let mut key = ifname_bytes(name)?;
            key.extend_from_slice(&addr_bytes(*a));
            return Ok(vec![(key, 0)]);
        }
        (SetKey::InetService, SetElem::Port(p)) => (p.to_be_bytes().to_vec(), p.to_be_bytes().to_vec()),
        (SetKey::InetService, SetElem::PortRange(a, b)) if a <= b => {
            (a.to_be_bytes().to_vec(), b.to_be_bytes().to_vec())
        }
        _ => return Err(bad()),
    };
    if !def.interval {
        if first != last {
            return Err(NftError::Invalid(format!(
                "element {elem:?} is a range: set {} needs the interval flag",
                def.name
            )));
        }
        return Ok(vec![(first, 0)]);
    }
    let mut keys = vec![(first, 0)];
    if let Some(end) = be_increment(&last) {
        keys.push((end, NFT_SET_ELEM_INTERVAL_END));
    }
    Ok(keys)
}

trait LastAddr {
    fn broadcast_or_last(&self) -> IpAddr;
}

impl LastAddr for IpNetwork {
    fn broadcast_or_last(&self) -> IpAddr {
        match self {
            IpNetwork::V4(n) => IpAddr::V4(n.broadcast()),
            IpNetwork::V6(n) => {
                let host_bits = 128 - u32::from(n.prefix());
                let mask = if host_bits == 128 { u128::MAX } else { (1u128 << host_bits) - 1 };
                IpAddr::V6((u128::from(n.network()) | mask).into())
            }
        }
    }
}

/// One atomic nf_tables transaction: any mix of table, chain, set, map,
/// element and rule additions, deletions and flushes, sent as a single
/// `NFNL_MSG_BATCH_BEGIN … NFNL_MSG_BATCH_END` batch by [`commit`]. The
/// kernel applies all of it or, if any message fails, none of it: the
/// ruleset in force stays exactly as it was.
///
/// Operations are applied in the order they were added, so create a set
/// before a rule that looks it up, a chain before a rule or map entry that
/// jumps to it, and delete rules (flush) before the sets and chains they
/// reference. Adds are idempotent for tables, chains and sets (no
/// `NLM_F_EXCL`); adding an element that exists fails with EEXIST, as does
/// an interval that overlaps one in the set.
///
/// Arguments are checked as they are added (names, element types); such
/// an error is returned at once and leaves the transaction unchanged.
///
/// [`commit`]: Transaction::commit
#[derive(Debug)]
pub struct Transaction {
    batch: Batch,
}

impl Default for Transaction {
    fn default() -> Self {
        Self::new()
    }
}

impl Transaction {
    pub fn new() -> Self {
        Transaction { batch: Batch::new() }
    }

    /// Number of messages queued (not counting the batch begin/end).
    pub fn len(&self) -> usize {
        self.batch.len()
    }

    pub fn is_empty(&self) -> bool {
        self.batch.len() == 0
    }

    #[cfg(test)]
    pub(super) fn into_batch(self) -> Batch {
        self.batch
    }

    /// `add table` (no-op if it exists).
    pub fn add_table(&mut self, t: &TableRef) -> NftResult<&mut Self> {
        self.batch.new_table(t.family, &t.name)?;
        Ok(self)
    }

    /// `add table` with `comment "…"` (at most [`MAX_COMMENT_LEN`] bytes).
    /// The kernel keeps the comment only when this creates the table: an
    /// existing table's comment cannot be changed, only destroyed with it.
    pub fn add_table_with_comment(&mut self, t: &TableRef, comment: &str) -> NftResult<&mut Self> {
        self.batch.new_table_with(t.family, &t.name, Some(comment))?;
        Ok(self)
    }

    /// `delete table`: the table and everything in it.
    pub fn delete_table(&mut self, t: &TableRef) -> NftResult<&mut Self> {
        self.batch.del_table(t.family, &t.name)?;
        Ok(self)
    }

    /// Deletes every rule of every chain of the table (sets, maps and
    /// chains stay).
    pub fn flush_table(&mut self, t: &TableRef) -> NftResult<&mut Self> {
        self.batch.flush_table(t.family, &t.name)?;
        Ok(self)
    }

    /// `add chain` (no-op if it exists; a base chain's policy is updated).
    /// `base: None` makes a regular chain, a target for jump/goto.
    pub fn add_chain(&mut self, t: &TableRef, chain: &str, base: Option<&BaseChain>) -> NftResult<&mut Self> {
        let base = base.map(|b| {
            let policy = match b.policy {
                ChainPolicy::Accept => NF_ACCEPT,
                ChainPolicy::Drop => NF_DROP,
            };
            (b.chain_type, b.hook.num(), b.priority, policy)
        });
        self.batch.new_chain(t.family, &t.name, chain, base)?;
        Ok(self)
    }

    /// `delete chain`: it must be empty (flush it first, in the same
    /// transaction) and no rule or map entry may jump to it.
    pub fn delete_chain(&mut self, t: &TableRef, chain: &str) -> NftResult<&mut Self> {
        self.batch.del_chain(t.family, &t.name, chain)?;
        Ok(self)
    }

    /// `flush chain`: deletes all its rules.
    pub fn flush_chain(&mut self, t: &TableRef, chain: &str) -> NftResult<&mut Self> {
        self.batch.flush_chain(t.family, &t.name, chain)?;
        Ok(self)
    }

    /// `add set` / `add map` (no-op if one with the same definition exists).
    pub fn add_set(&mut self, t: &TableRef, def: &SetDef) -> NftResult<&mut Self> {
        let mut flags = 0;
        if def.interval {
            flags |= NFT_SET_INTERVAL;
        }
        if def.verdict_map {
            flags |= NFT_SET_MAP;
            if def.interval {
                return Err(NftError::Invalid(format!("verdict map {} cannot be an interval map", def.name)));
            }
        }
        let data = def.verdict_map.then_some(NFT_DATA_VERDICT);
        let spec = SetWire { flags, key: def.key.type_len(), key_byteorder: def.key.byteorder(), data_type: data };
        self.batch.new_set(t.family, &t.name, &def.name, &spec)?;
        Ok(self)
    }

    /// `delete set|map` with its elements; no rule may still use it.
    pub fn delete_set(&mut self, t: &TableRef, name: &str) -> NftResult<&mut Self> {
        self.batch.del_set(t.family, &t.name, name)?;
        Ok(self)
    }

    /// `flush set|map`: removes every element.
    pub fn flush_set(&mut self, t: &TableRef, name: &str) -> NftResult<&mut Self> {
        self.batch.flush_set(t.family, &t.name, name)?;
        Ok(self)
    }

    /// `add element` to a set (not a map).
    pub fn add_elements(&mut self, t: &TableRef, def: &SetDef, elems: &[SetElem]) -> NftResult<&mut Self> {
        self.elements(t, def, elems.iter().map(|e| (e, None)), NFT_MSG_NEWSETELEM)
    }

    /// `delete element` from a set; an interval is removed by giving the
    /// same CIDR or range it was added with.
    pub fn delete_elements(&mut self, t: &TableRef, def: &SetDef, elems: &[SetElem]) -> NftResult<&mut Self> {
        self.elements(t, def, elems.iter().map(|e| (e, None)), NFT_MSG_DELSETELEM)
    }

    /// `destroy element`: like [`delete_elements`](Self::delete_elements)
    /// but an element that is not in the set is no error (Linux >= 6.3).
    pub fn destroy_elements(&mut self, t: &TableRef, def: &SetDef, elems: &[SetElem]) -> NftResult<&mut Self> {
        self.elements(t, def, elems.iter().map(|e| (e, None)), NFT_MSG_DESTROYSETELEM)
    }

    /// `destroy table`: delete if present (Linux >= 6.3).
    pub fn destroy_table(&mut self, t: &TableRef) -> NftResult<&mut Self> {
        let op = format!("destroy table {} {}", t.family, t.name);
        self.batch.destroy(NFT_MSG_DESTROYTABLE, t.family, &[(NFTA_TABLE_NAME, &t.name)], op)?;
        Ok(self)
    }

    /// `destroy chain`: delete if present (Linux >= 6.3); if present it
    /// must be empty and unreferenced, as for [`delete_chain`](Self::delete_chain).
    pub fn destroy_chain(&mut self, t: &TableRef, chain: &str) -> NftResult<&mut Self> {
        let op = format!("destroy chain {chain} in table {} {}", t.family, t.name);
        let attrs = [(NFTA_CHAIN_TABLE, t.name.as_str()), (NFTA_CHAIN_NAME, chain)];
        self.batch.destroy(NFT_MSG_DESTROYCHAIN, t.family, &attrs, op)?;
        Ok(self)
    }

    /// `destroy set|map`: delete if present (Linux >= 6.3).
    pub fn destroy_set(&mut self, t: &TableRef, name: &str) -> NftResult<&mut Self> {
        let op = format!("destroy set {name} in table {} {}", t.family, t.name);
        let attrs = [(NFTA_SET_TABLE, t.name.as_str()), (NFTA_SET_NAME, name)];
        self.batch.destroy(NFT_MSG_DESTROYSET, t.family, &attrs, op)?;
        Ok(self)
    }

    /// `add element` to a verdict map: `key : verdict` entries.
    pub fn add_map_entries(
        &mut self,
        t: &TableRef,
        def: &SetDef,
        entries: &[(SetElem, Verdict)],
    ) -> NftResult<&mut Self> {
        if !def.verdict_map {
            return Err(NftError::Invalid(format!("{} is a set, not a verdict map", def.name)));
        }
        self.elements(t, def, entries.iter().map(|(k, v)| (k, Some(v))), NFT_MSG_NEWSETELEM)
    }

    /// `delete element` from a verdict map, by key.
    pub fn delete_map_entries(&mut self, t: &TableRef, def: &SetDef, keys: &[SetElem]) -> NftResult<&mut Self> {
        if !def.verdict_map {
            return Err(NftError::Invalid(format!("{} is a set, not a verdict map", def.name)));
        }
        self.elements(t, def, keys.iter().map(|k| (k, None)), NFT_MSG_DELSETELEM)
    }

    /// `destroy element` of a verdict map: no error for an absent key
    /// (Linux >= 6.3).
    pub fn destroy_map_entries(&mut self, t: &TableRef, def: &SetDef, keys: &[SetElem]) -> NftResult<&mut Self> {
        if !def.verdict_map {
            return Err(NftError::Invalid(format!("{} is a set, not a verdict map", def.name)));
        }
        self.elements(t, def, keys.iter().map(|k| (k, None)), NFT_MSG_DESTROYSETELEM)
    }

    fn elements<'a>(
        &mut self,
        t: &TableRef,
        def: &SetDef,
        items: impl Iterator<Item = (&'a SetElem, Option<&'a Verdict>)>,
        msg: u16,
    ) -> NftResult<&mut Self> {
        let add = msg == NFT_MSG_NEWSETELEM;
        let mut wire = Vec::new();
        for (elem, verdict) in items {
            if add && def.verdict_map && verdict.is_none() {
                return Err(NftError::Invalid(format!("verdict map {} needs key : verdict entries", def.name)));
            }
            let data = verdict.map(Verdict::code_chain).transpose()?;
            for (i, (key, flags)) in elem_keys(def, elem)?.into_iter().enumerate() {
                // the data goes on the start element; the end carries none
                wire.push(WireElem { key, flags, verdict: if i == 0 { data.clone() } else { None } });
            }
        }
        if !wire.is_empty() {
            self.batch.set_elems(t.family, &t.name, &def.name, msg, &wire)?;
        }
        Ok(self)
    }

    /// `add rule` at the end of `chain`.
    pub fn add_rule(&mut self, t: &TableRef, chain: &str, rule: &Rule) -> NftResult<&mut Self> {
        let exprs = rule.exprs_in(t.family)?;
        self.batch.new_rule(t.family, &t.name, chain, &exprs, rule.comment.as_deref())?;
        Ok(self)
    }

    /// Sends the batch and waits for the kernel's verdict on every message.
    /// On error nothing of the transaction is in force; the error names the
    /// first message the kernel refused (e.g. `add elements of set s in
    /// table inet t: EEXIST`). An empty transaction sends nothing.
    pub fn commit(self) -> NftResult<()> {
        if self.is_empty() {
            return Ok(());
        }
        execute(self.batch, false)
    }
}
