//! Rule bodies: the expressions of the rules cni-bridge installs, as data.
//! No encoding and no I/O; [`super::build`] turns them into bytes.

use std::net::IpAddr;

use ipnetwork::IpNetwork;

use super::wire::*;
use super::{NftError, NftResult};

/// One nf_tables expression, as needed by this module.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Expr {
    /// `meta load <key> => reg 1`
    Meta { key: u32 },
    /// `payload load <len>b @ <base> + <offset> => reg 1`
    Payload { base: u32, offset: u32, len: u32 },
    /// `payload load <len>b @ <base> + <offset> => reg <dreg>`: the second
    /// part of a concatenated key (the first, in reg 1, fills it when it is
    /// 16 bytes, an interface name: the next part goes to reg 2)
    PayloadTo { base: u32, offset: u32, len: u32, dreg: u32 },
    /// `bitwise reg 1 = (reg 1 & mask) ^ 0`
    Bitwise { mask: Vec<u8> },
    /// `bitwise reg 1 = (reg 1 & mask) ^ xor`
    MaskXor { mask: Vec<u8>, xor: Vec<u8> },
    /// `meta set <key> with reg 1`
    MetaSet { key: u32 },
    /// `cmp <op> reg 1 <data>`
    Cmp { op: u32, data: Vec<u8> },
    /// `immediate reg 0 <verdict>`
    Verdict { code: u32 },
    /// `masq`
    Masq,
    /// `immediate reg 0 jump|goto <chain>`
    VerdictChain { code: u32, chain: String },
    /// `lookup reg 1 set <set> [0x1]`, or `... dreg 0` for a verdict map
    Lookup { set: String, vmap: bool, invert: bool },
    /// `ct load <key> => reg 1`
    Ct { key: u32 },
    /// `counter packets 0 bytes 0`
    Counter,
    /// `range eq|neq reg 1 <from> <to>`
    Range { op: u32, from: Vec<u8>, to: Vec<u8> },
    /// `log [prefix <p>]`
    Log { prefix: Option<String> },
}

pub(super) fn canonical(subnet: IpNetwork) -> (IpAddr, u8) {
    (subnet.network(), subnet.prefix())
}

pub(super) fn canonical_cidr(subnet: IpNetwork) -> String {
    let (addr, prefix) = canonical(subnet);
    format!("{addr}/{prefix}")
}

pub(super) fn addr_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Expressions matching `<field> (==|!=) addr/prefix` for a network-header
/// address field at `offset`, encoded the way nft does: byte-aligned
/// non-zero prefixes load only the prefix bytes and compare; other prefixes
/// load the whole field, mask it, then compare.
pub(super) fn prefix_match(offset: u32, addr: IpAddr, prefix: u8, op: u32) -> Vec<Expr> {
    let full = addr_bytes(addr);
    let prefix = usize::from(prefix).min(full.len() * 8);
    if prefix > 0 && prefix % 8 == 0 {
        let n = prefix / 8;
        return vec![
            Expr::Payload { base: NFT_PAYLOAD_NETWORK_HEADER, offset, len: n as u32 },
            Expr::Cmp { op, data: full[..n].to_vec() },
        ];
    }
    let mask: Vec<u8> = (0..full.len())
        .map(|i| {
            let bits = prefix.saturating_sub(i * 8).min(8);
            // bits in 0..=8; 0xff << 8 would overflow in u8, so go through u16
            ((0xff00u16 >> bits) & 0xff) as u8
        })
        .collect();
    let value: Vec<u8> = full.iter().zip(&mask).map(|(a, m)| a & m).collect();
    vec![
        Expr::Payload { base: NFT_PAYLOAD_NETWORK_HEADER, offset, len: full.len() as u32 },
        Expr::Bitwise { mask },
        Expr::Cmp { op, data: value },
    ]
}

/// `ip saddr S ip daddr != S ip daddr != 224.0.0.0/4 masquerade` (or ip6).
pub(super) fn masquerade_exprs(subnet: IpNetwork) -> Vec<Expr> {
    let (addr, prefix) = canonical(subnet);
    let (nfproto, saddr_off, daddr_off, mcast, mcast_prefix): (u8, u32, u32, IpAddr, u8) = match addr {
        IpAddr::V4(_) => (NFPROTO_IPV4, 12, 16, IpAddr::from([224, 0, 0, 0]), 4),
        IpAddr::V6(_) => (NFPROTO_IPV6, 8, 24, IpAddr::from([0xff00, 0, 0, 0, 0, 0, 0, 0u16]), 8),
    };
    let mut e = vec![Expr::Meta { key: NFT_META_NFPROTO }, Expr::Cmp { op: NFT_CMP_EQ, data: vec![nfproto] }];
    e.extend(prefix_match(saddr_off, addr, prefix, NFT_CMP_EQ));
    e.extend(prefix_match(daddr_off, addr, prefix, NFT_CMP_NEQ));
    e.extend(prefix_match(daddr_off, mcast, mcast_prefix, NFT_CMP_NEQ));
    e.push(Expr::Masq);
    e
}

/// `iifname "<host_ifname>" ether saddr != <mac> drop`
pub(super) fn macspoof_exprs(host_ifname: &str, mac: [u8; 6]) -> NftResult<Vec<Expr>> {
    if host_ifname.is_empty() || host_ifname.len() >= IFNAMSIZ || host_ifname.contains('\0') {
        return Err(NftError::Invalid(format!(
            "interface name {host_ifname:?} must be 1..{} bytes without NUL",
            IFNAMSIZ - 1
        )));
    }
    let mut name = [0u8; IFNAMSIZ];
    name[..host_ifname.len()].copy_from_slice(host_ifname.as_bytes());
    Ok(vec![
        Expr::Meta { key: NFT_META_IIFNAME },
        Expr::Cmp { op: NFT_CMP_EQ, data: name.to_vec() },
        Expr::Payload { base: NFT_PAYLOAD_LL_HEADER, offset: 6, len: 6 },
        Expr::Cmp { op: NFT_CMP_NEQ, data: mac.to_vec() },
        Expr::Verdict { code: NF_DROP },
    ])
}

/// 32-bit FNV-1a.
pub(super) fn fnv1a32(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}
