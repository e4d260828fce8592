//! Parsing kernel replies: netlink framing, acks, chains, rules and the
//! expressions [`super::rules::Expr`] can represent. Pure, like [`super::build`].

use super::rules::Expr;
use super::wire::*;
use super::{NftError, NftResult};

/// One netlink message of a received datagram.
#[derive(Debug, Clone, Copy)]
pub(super) struct NlMsg<'a> {
    pub(super) ty: u16,
    pub(super) flags: u16,
    pub(super) seq: u32,
    /// Everything after the 16-byte header.
    pub(super) payload: &'a [u8],
}

pub(super) fn ne_u16(b: &[u8]) -> u16 {
    u16::from_ne_bytes([b[0], b[1]])
}

pub(super) fn ne_u32(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

/// Splits a datagram into netlink messages.
pub(super) fn parse_msgs(mut data: &[u8]) -> NftResult<Vec<NlMsg<'_>>> {
    let mut out = Vec::new();
    while data.len() >= NLMSG_HDRLEN {
        let len = ne_u32(data) as usize;
        if len < NLMSG_HDRLEN || len > data.len() {
            return Err(NftError::Protocol(format!("bad nlmsg_len {len} with {} bytes left", data.len())));
        }
        out.push(NlMsg {
            ty: ne_u16(&data[4..]),
            flags: ne_u16(&data[6..]),
            seq: ne_u32(&data[8..]),
            payload: &data[NLMSG_HDRLEN..len],
        });
        data = &data[align4(len).min(data.len())..];
    }
    Ok(out)
}

/// `(errno, seq of the message it answers)` of an NLMSG_ERROR payload;
/// errno 0 is a plain ack.
pub(super) fn parse_error(payload: &[u8]) -> NftResult<(i32, u32)> {
    if payload.len() < 4 + NLMSG_HDRLEN {
        return Err(NftError::Protocol(format!("short NLMSG_ERROR ({} bytes)", payload.len())));
    }
    let err = i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
    let orig_seq = ne_u32(&payload[4 + 8..]);
    Ok((-err, orig_seq))
}

/// Iterates the attributes of a flat attribute stream: `(type, payload)`.
pub(super) fn parse_attrs(mut data: &[u8]) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    while data.len() >= NLA_HDRLEN {
        let len = usize::from(ne_u16(data));
        if len < NLA_HDRLEN || len > data.len() {
            break;
        }
        out.push((ne_u16(&data[2..]) & NLA_TYPE_MASK, &data[NLA_HDRLEN..len]));
        data = &data[align4(len).min(data.len())..];
    }
    out
}

pub(super) fn attr_str(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// A chain as dumped by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct ChainInfo {
    pub(super) table: String,
    pub(super) name: String,
    /// (hook number, priority) of a base chain.
    pub(super) hook: Option<(u32, i32)>,
    pub(super) chain_type: Option<String>,
    pub(super) policy: Option<u32>,
    /// References to the chain: its rules, plus jumps to it (none for a base chain).
    pub(super) use_count: Option<u32>,
}

/// Parses a NEWCHAIN message payload (nfgenmsg + attributes).
pub(super) fn chain_of(payload: &[u8]) -> Option<ChainInfo> {
    let attrs = parse_attrs(payload.get(NFGENMSG_LEN..)?);
    let get = |t| find_attr(&attrs, t);
    let hook = get(NFTA_CHAIN_HOOK).and_then(|h| {
        let h = parse_attrs(h);
        let num = be32(find_attr(&h, NFTA_HOOK_HOOKNUM)?)?;
        let prio = be32(find_attr(&h, NFTA_HOOK_PRIORITY)?)? as i32;
        Some((num, prio))
    });
    Some(ChainInfo {
        table: attr_str(get(NFTA_CHAIN_TABLE)?),
        name: attr_str(get(NFTA_CHAIN_NAME)?),
        hook,
        chain_type: get(NFTA_CHAIN_TYPE).map(attr_str),
        policy: get(NFTA_CHAIN_POLICY).and_then(be32),
        use_count: get(NFTA_CHAIN_USE).and_then(be32),
    })
}

/// A rule as dumped by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct RuleInfo {
    pub(super) table: String,
    pub(super) chain: String,
    /// The kernel's handle of the rule, unique in its table for the table's lifetime.
    pub(super) handle: Option<u64>,
    /// `None` if some expression is not one [`Expr`] can represent.
    pub(super) exprs: Option<Vec<Expr>>,
    pub(super) userdata: Option<Vec<u8>>,
}

impl RuleInfo {
    pub(super) fn comment(&self) -> Option<String> {
        self.userdata.as_deref().and_then(parse_comment)
    }
}

/// Parses a NEWRULE message payload (nfgenmsg + attributes).
pub(super) fn rule_of(payload: &[u8]) -> Option<RuleInfo> {
    let attrs = parse_attrs(payload.get(NFGENMSG_LEN..)?);
    let get = |t| find_attr(&attrs, t);
    Some(RuleInfo {
        table: attr_str(get(NFTA_RULE_TABLE)?),
        chain: attr_str(get(NFTA_RULE_CHAIN)?),
        handle: get(NFTA_RULE_HANDLE).and_then(be64),
        exprs: get(NFTA_RULE_EXPRESSIONS).map_or(Some(Vec::new()), decode_exprs),
        userdata: get(NFTA_RULE_USERDATA).map(<[u8]>::to_vec),
    })
}

pub(super) fn find_attr<'a>(attrs: &[(u16, &'a [u8])], ty: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|(t, _)| *t == ty).map(|(_, v)| *v)
}

pub(super) fn be64(v: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(v.try_into().ok()?))
}

pub(super) fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.try_into().ok()?))
}

/// `NFTA_DATA_VALUE` inside a nested data attribute.
pub(super) fn data_value(nested: &[u8]) -> Option<Vec<u8>> {
    find_attr(&parse_attrs(nested), NFTA_DATA_VALUE).map(<[u8]>::to_vec)
}

/// Decodes an `NFTA_RULE_EXPRESSIONS` list back into [`Expr`]s; `None` as
/// soon as one expression is outside what this module writes.
pub(super) fn decode_exprs(list: &[u8]) -> Option<Vec<Expr>> {
    parse_attrs(list)
        .into_iter()
        .map(|(ty, elem)| if ty == NFTA_LIST_ELEM { decode_expr(elem) } else { None })
        .collect()
}

pub(super) fn decode_expr(elem: &[u8]) -> Option<Expr> {
    let e = parse_attrs(elem);
    let name = attr_str(find_attr(&e, NFTA_EXPR_NAME)?);
    let d = find_attr(&e, NFTA_EXPR_DATA).map(parse_attrs).unwrap_or_default();
    let u = |ty| find_attr(&d, ty).and_then(be32);
    let reg1 = |ty| u(ty) == Some(NFT_REG_1);
    match name.as_str() {
        "meta" if reg1(NFTA_META_DREG) => Some(Expr::Meta { key: u(NFTA_META_KEY)? }),
        "meta" if reg1(NFTA_META_SREG) => Some(Expr::MetaSet { key: u(NFTA_META_KEY)? }),
        "payload" if reg1(NFTA_PAYLOAD_DREG) => Some(Expr::Payload {
            base: u(NFTA_PAYLOAD_BASE)?,
            offset: u(NFTA_PAYLOAD_OFFSET)?,
            len: u(NFTA_PAYLOAD_LEN)?,
        }),
        "bitwise" if reg1(NFTA_BITWISE_SREG) && reg1(NFTA_BITWISE_DREG) => {
            let mask = data_value(find_attr(&d, NFTA_BITWISE_MASK)?)?;
            let xor = data_value(find_attr(&d, NFTA_BITWISE_XOR)?)?;
            let op_ok = u(NFTA_BITWISE_OP).unwrap_or(0) == 0; // NFT_BITWISE_MASK_XOR
            let len_ok = u(NFTA_BITWISE_LEN)? as usize == mask.len();
            if !(op_ok && len_ok && xor.len() == mask.len()) {
                return None;
            }
            Some(if xor.iter().all(|&b| b == 0) { Expr::Bitwise { mask } } else { Expr::MaskXor { mask, xor } })
        }
        "cmp" if reg1(NFTA_CMP_SREG) => {
            Some(Expr::Cmp { op: u(NFTA_CMP_OP)?, data: data_value(find_attr(&d, NFTA_CMP_DATA)?)? })
        }
        "immediate" if u(NFTA_IMMEDIATE_DREG) == Some(NFT_REG_VERDICT) => {
            let data = parse_attrs(find_attr(&d, NFTA_IMMEDIATE_DATA)?);
            let verdict = parse_attrs(find_attr(&data, NFTA_DATA_VERDICT)?);
            if find_attr(&verdict, NFTA_VERDICT_CHAIN).is_some() {
                return None;
            }
            Some(Expr::Verdict { code: be32(find_attr(&verdict, NFTA_VERDICT_CODE)?)? })
        }
        // masq with flags or port ranges is not ours
        "masq" if d.iter().all(|(ty, v)| *ty == NFTA_MASQ_FLAGS && be32(v) == Some(0)) => Some(Expr::Masq),
        _ => None,
    }
}

/// Comment TLV of a rule's userdata, if any.
pub(super) fn parse_comment(userdata: &[u8]) -> Option<String> {
    let mut rest = userdata;
    while rest.len() >= 2 {
        let (ty, len) = (rest[0], usize::from(rest[1]));
        let value = rest.get(2..2 + len)?;
        if ty == NFTNL_UDATA_RULE_COMMENT {
            let text = value.split(|&b| b == 0).next().unwrap_or(&[]);
            return Some(String::from_utf8_lossy(text).into_owned());
        }
        rest = &rest[2 + len..];
    }
    None
}
