//! Message building: nf_tables requests and batches appended to a `Vec<u8>`.
//! Pure (no socket, no syscalls), so every byte is unit-tested.

use super::rules::Expr;
use super::wire::*;
use super::{Family, NftError, NftResult};

pub(super) fn pad4(buf: &mut Vec<u8>) {
    buf.resize(align4(buf.len()), 0);
}

/// Appends one attribute: `nla_len` covers header + payload (unpadded), the
/// payload is then zero-padded to 4 bytes.
pub(super) fn put_attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = NLA_HDRLEN + payload.len();
    debug_assert!(len <= usize::from(u16::MAX));
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    pad4(buf);
}

/// NUL-terminated string attribute (what libmnl's `mnl_attr_put_strz` does).
pub(super) fn put_strz(buf: &mut Vec<u8>, ty: u16, s: &str) {
    let start = buf.len();
    buf.extend_from_slice(&((NLA_HDRLEN + s.len() + 1) as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
    debug_assert!(buf.len() - start <= usize::from(u16::MAX));
    pad4(buf);
}

/// Big-endian u32 attribute (nf_tables integers are network byte order).
pub(super) fn put_be32(buf: &mut Vec<u8>, ty: u16, v: u32) {
    put_attr(buf, ty, &v.to_be_bytes());
}

/// Opens a nested attribute; returns its offset for [`nest_end`].
pub(super) fn nest_start(buf: &mut Vec<u8>, ty: u16) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    start
}

pub(super) fn nest_end(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

/// Appends an `nlmsghdr` + `nfgenmsg`; returns the message offset for
/// [`msg_end`].
pub(super) fn msg_start(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
    debug_assert_eq!(buf.len() % 4, 0);
    let start = buf.len();
    buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_len, patched in msg_end
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes()); // nlmsg_pid: the kernel
    buf.push(family);
    buf.push(NFNETLINK_V0);
    buf.extend_from_slice(&res_id.to_be_bytes());
    start
}

pub(super) fn msg_end(buf: &mut Vec<u8>, start: usize) {
    pad4(buf);
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

pub(super) fn check_name(what: &str, name: &str) -> NftResult<()> {
    if name.is_empty() || name.len() >= NFT_NAME_MAXLEN || name.contains('\0') {
        return Err(NftError::Invalid(format!(
            "{what} name {name:?} must be 1..{} bytes without NUL",
            NFT_NAME_MAXLEN - 1
        )));
    }
    Ok(())
}

/// Rule userdata holding one comment TLV `{type 0, len, "text\0"}`, the
/// layout libnftnl writes and `nft list` prints as `comment "text"`.
pub(super) fn comment_userdata(comment: &str) -> NftResult<Vec<u8>> {
    if comment.len() > MAX_COMMENT_LEN || comment.contains('\0') {
        return Err(NftError::Invalid(format!(
            "comment must be at most {MAX_COMMENT_LEN} bytes without NUL, got {} bytes",
            comment.len()
        )));
    }
    let mut u = Vec::with_capacity(comment.len() + 3);
    u.push(NFTNL_UDATA_RULE_COMMENT);
    u.push((comment.len() + 1) as u8);
    u.extend_from_slice(comment.as_bytes());
    u.push(0);
    Ok(u)
}

pub(super) fn put_data_value(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let n = nest_start(buf, ty);
    put_attr(buf, NFTA_DATA_VALUE, data);
    nest_end(buf, n);
}

/// `NFTA_DATA_VERDICT { CODE, [CHAIN] }` (the caller opened the data nest).
pub(super) fn put_verdict(buf: &mut Vec<u8>, code: u32, chain: Option<&str>) {
    let v = nest_start(buf, NFTA_DATA_VERDICT);
    put_be32(buf, NFTA_VERDICT_CODE, code);
    if let Some(c) = chain {
        put_strz(buf, NFTA_VERDICT_CHAIN, c);
    }
    nest_end(buf, v);
}

/// Appends one `NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA {...} }`.
/// Attribute order follows libnftnl so the bytes equal nft's.
pub(super) fn put_expr(buf: &mut Vec<u8>, expr: &Expr) {
    let elem = nest_start(buf, NFTA_LIST_ELEM);
    let name = match expr {
        Expr::Meta { .. } => "meta",
        Expr::Payload { .. } | Expr::PayloadTo { .. } => "payload",
        Expr::Bitwise { .. } | Expr::MaskXor { .. } => "bitwise",
        Expr::MetaSet { .. } => "meta",
        Expr::Cmp { .. } => "cmp",
        Expr::Verdict { .. } => "immediate",
        Expr::Masq => "masq",
        Expr::VerdictChain { .. } => "immediate",
        Expr::Lookup { .. } => "lookup",
        Expr::Ct { .. } => "ct",
        Expr::Counter => "counter",
        Expr::Log { .. } => "log",
        Expr::Range { .. } => "range",
    };
    put_strz(buf, NFTA_EXPR_NAME, name);
    if *expr != Expr::Masq {
        let data = nest_start(buf, NFTA_EXPR_DATA);
        match expr {
            Expr::Meta { key } => {
                put_be32(buf, NFTA_META_KEY, *key);
                put_be32(buf, NFTA_META_DREG, NFT_REG_1);
            }
            Expr::Payload { base, offset, len } => {
                put_be32(buf, NFTA_PAYLOAD_DREG, NFT_REG_1);
                put_be32(buf, NFTA_PAYLOAD_BASE, *base);
                put_be32(buf, NFTA_PAYLOAD_OFFSET, *offset);
                put_be32(buf, NFTA_PAYLOAD_LEN, *len);
            }
            Expr::PayloadTo { base, offset, len, dreg } => {
                put_be32(buf, NFTA_PAYLOAD_DREG, *dreg);
                put_be32(buf, NFTA_PAYLOAD_BASE, *base);
                put_be32(buf, NFTA_PAYLOAD_OFFSET, *offset);
                put_be32(buf, NFTA_PAYLOAD_LEN, *len);
            }
            Expr::Bitwise { mask } => {
                put_be32(buf, NFTA_BITWISE_SREG, NFT_REG_1);
                put_be32(buf, NFTA_BITWISE_DREG, NFT_REG_1);
                put_be32(buf, NFTA_BITWISE_LEN, mask.len() as u32);
                put_data_value(buf, NFTA_BITWISE_MASK, mask);
                put_data_value(buf, NFTA_BITWISE_XOR, &vec![0; mask.len()]);
            }
            Expr::MaskXor { mask, xor } => {
                put_be32(buf, NFTA_BITWISE_SREG, NFT_REG_1);
                put_be32(buf, NFTA_BITWISE_DREG, NFT_REG_1);
                put_be32(buf, NFTA_BITWISE_LEN, mask.len() as u32);
                put_data_value(buf, NFTA_BITWISE_MASK, mask);
                put_data_value(buf, NFTA_BITWISE_XOR, xor);
            }
            Expr::MetaSet { key } => {
                put_be32(buf, NFTA_META_KEY, *key);
                put_be32(buf, NFTA_META_SREG, NFT_REG_1);
            }
            Expr::Cmp { op, data } => {
                put_be32(buf, NFTA_CMP_SREG, NFT_REG_1);
                put_be32(buf, NFTA_CMP_OP, *op);
                put_data_value(buf, NFTA_CMP_DATA, data);
            }
            Expr::Verdict { code } => {
                put_be32(buf, NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
                let d = nest_start(buf, NFTA_IMMEDIATE_DATA);
                let v = nest_start(buf, NFTA_DATA_VERDICT);
                put_be32(buf, NFTA_VERDICT_CODE, *code);
                nest_end(buf, v);
                nest_end(buf, d);
            }
            Expr::Masq => unreachable!("masq carries no data"),
            Expr::VerdictChain { code, chain } => {
                put_be32(buf, NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
                let d = nest_start(buf, NFTA_IMMEDIATE_DATA);
                put_verdict(buf, *code, Some(chain));
                nest_end(buf, d);
            }
            Expr::Lookup { set, vmap, invert } => {
                put_strz(buf, NFTA_LOOKUP_SET, set);
                put_be32(buf, NFTA_LOOKUP_SREG, NFT_REG_1);
                if *vmap {
                    put_be32(buf, NFTA_LOOKUP_DREG, NFT_REG_VERDICT);
                }
                if *invert {
                    put_be32(buf, NFTA_LOOKUP_FLAGS, NFT_LOOKUP_F_INV);
                }
            }
            Expr::Ct { key } => {
                put_be32(buf, NFTA_CT_KEY, *key);
                put_be32(buf, NFTA_CT_DREG, NFT_REG_1);
            }
            Expr::Counter => {
                put_attr(buf, NFTA_COUNTER_BYTES, &0u64.to_be_bytes());
                put_attr(buf, NFTA_COUNTER_PACKETS, &0u64.to_be_bytes());
            }
            Expr::Range { op, from, to } => {
                put_be32(buf, NFTA_RANGE_SREG, NFT_REG_1);
                put_be32(buf, NFTA_RANGE_OP, *op);
                put_data_value(buf, NFTA_RANGE_FROM_DATA, from);
                put_data_value(buf, NFTA_RANGE_TO_DATA, to);
            }
            Expr::Log { prefix } => {
                if let Some(p) = prefix {
                    put_strz(buf, NFTA_LOG_PREFIX, p);
                }
            }
        }
        nest_end(buf, data);
    }
    nest_end(buf, elem);
}

/// A set's attributes as sent: flags, (key type, key length), key byte
/// order (userdata) and the data type of a map.
#[derive(Debug, Clone, Copy)]
pub(super) struct SetWire {
    pub(super) flags: u32,
    pub(super) key: (u32, u32),
    pub(super) key_byteorder: u32,
    pub(super) data_type: Option<u32>,
}

/// One set element as sent: key bytes, element flags, and the verdict
/// (code, chain) of a map entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct WireElem {
    pub(super) key: Vec<u8>,
    pub(super) flags: u32,
    pub(super) verdict: Option<(u32, Option<String>)>,
}

/// One nf_tables transaction under construction: BATCH_BEGIN, then one
/// message per operation (each with NLM_F_ACK and its own sequence number),
/// BATCH_END added by [`Batch::finish`].
#[derive(Debug)]
pub(super) struct Batch {
    buf: Vec<u8>,
    begin_seq: u32,
    next_seq: u32,
    /// (sequence number, human description) of every acked message.
    ops: Vec<(u32, String)>,
}

impl Batch {
    pub(super) fn new() -> Self {
        Self::with_seq(1)
    }

    pub(super) fn with_seq(first_seq: u32) -> Self {
        let mut buf = Vec::with_capacity(1024);
        let m = msg_start(
            &mut buf,
            NFNL_MSG_BATCH_BEGIN,
            NLM_F_REQUEST,
            first_seq,
            libc::AF_UNSPEC as u8,
            NFNL_SUBSYS_NFTABLES,
        );
        msg_end(&mut buf, m);
        Batch { buf, begin_seq: first_seq, next_seq: first_seq.wrapping_add(1), ops: Vec::new() }
    }

    /// Starts an nf_tables message; the caller appends attributes and calls
    /// [`msg_end`].
    pub(super) fn start(&mut self, msg: u16, extra_flags: u16, family: Family, op: String) -> usize {
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        self.ops.push((seq, op));
        msg_start(&mut self.buf, nft_type(msg), NLM_F_REQUEST | NLM_F_ACK | extra_flags, seq, family.nfproto(), 0)
    }

    /// NEWTABLE without NLM_F_EXCL: creates, or no-op if it exists.
    pub(super) fn new_table(&mut self, family: Family, table: &str) -> NftResult<()> {
        self.new_table_with(family, table, None)
    }

    /// NEWTABLE with an optional comment (table userdata, one comment TLV
    /// as nft writes it; the kernel keeps it only when it creates the table).
    pub(super) fn new_table_with(&mut self, family: Family, table: &str, comment: Option<&str>) -> NftResult<()> {
        check_name("table", table)?;
        let udata = comment.map(comment_userdata).transpose()?;
        let m = self.start(NFT_MSG_NEWTABLE, NLM_F_CREATE, family, format!("add table {family} {table}"));
        put_strz(&mut self.buf, NFTA_TABLE_NAME, table);
        if let Some(u) = udata {
            put_attr(&mut self.buf, NFTA_TABLE_USERDATA, &u);
        }
        msg_end(&mut self.buf, m);
        Ok(())
    }

    pub(super) fn del_table(&mut self, family: Family, table: &str) -> NftResult<()> {
        check_name("table", table)?;
        let m = self.start(NFT_MSG_DELTABLE, 0, family, format!("delete table {family} {table}"));
        put_strz(&mut self.buf, NFTA_TABLE_NAME, table);
        msg_end(&mut self.buf, m);
        Ok(())
    }

    /// NEWCHAIN without NLM_F_EXCL for a base chain with policy accept.
    pub(super) fn new_base_chain(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        chain_type: &str,
        hooknum: u32,
        priority: i32,
    ) -> NftResult<()> {
        self.new_chain(family, table, chain, Some((chain_type, hooknum, priority, NF_ACCEPT)))
    }

    /// NEWCHAIN without NLM_F_EXCL: a regular chain (`base` = `None`) or a
    /// base chain `(type, hook number, priority, policy verdict)`.
    pub(super) fn new_chain(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        base: Option<(&str, u32, i32, u32)>,
    ) -> NftResult<()> {
        check_name("table", table)?;
        check_name("chain", chain)?;
        let op = format!("add chain {chain} in table {family} {table}");
        let m = self.start(NFT_MSG_NEWCHAIN, NLM_F_CREATE, family, op);
        let b = &mut self.buf;
        put_strz(b, NFTA_CHAIN_TABLE, table);
        put_strz(b, NFTA_CHAIN_NAME, chain);
        if let Some((chain_type, hooknum, priority, policy)) = base {
            put_strz(b, NFTA_CHAIN_TYPE, chain_type);
            let h = nest_start(b, NFTA_CHAIN_HOOK);
            put_be32(b, NFTA_HOOK_HOOKNUM, hooknum);
            put_be32(b, NFTA_HOOK_PRIORITY, priority as u32);
            nest_end(b, h);
            put_be32(b, NFTA_CHAIN_POLICY, policy);
        }
        msg_end(b, m);
        Ok(())
    }

    /// DELRULE with only the table: deletes every rule of every chain.
    pub(super) fn flush_table(&mut self, family: Family, table: &str) -> NftResult<()> {
        check_name("table", table)?;
        let m = self.start(NFT_MSG_DELRULE, 0, family, format!("flush table {family} {table}"));
        put_strz(&mut self.buf, NFTA_RULE_TABLE, table);
        msg_end(&mut self.buf, m);
        Ok(())
    }

    /// NEWSET without NLM_F_EXCL. `data_type` makes it a map
    /// (`NFT_DATA_VERDICT` for a verdict map, whose data length is implied).
    pub(super) fn new_set(&mut self, family: Family, table: &str, set: &str, spec: &SetWire) -> NftResult<()> {
        let SetWire { flags, key, key_byteorder, data_type } = *spec;
        check_name("table", table)?;
        check_name("set", set)?;
        if data_type.is_some_and(|dt| dt != NFT_DATA_VERDICT) {
            return Err(NftError::Invalid("only verdict maps are supported".into()));
        }
        let id = self.next_seq; // unique in the batch, which is all NFTA_SET_ID needs
        let op = format!("add set {set} in table {family} {table}");
        let m = self.start(NFT_MSG_NEWSET, NLM_F_CREATE, family, op);
        let b = &mut self.buf;
        put_strz(b, NFTA_SET_TABLE, table);
        put_strz(b, NFTA_SET_NAME, set);
        put_be32(b, NFTA_SET_FLAGS, flags);
        put_be32(b, NFTA_SET_KEY_TYPE, key.0);
        put_be32(b, NFTA_SET_KEY_LEN, key.1);
        if let Some(dt) = data_type {
            put_be32(b, NFTA_SET_DATA_TYPE, dt);
        }
        put_be32(b, NFTA_SET_ID, id);
        // libnftnl userdata: the key's byte order (NFTNL_UDATA_SET_KEYBYTEORDER,
        // a native u32: 1 host, 2 big endian). Without it nft assumes the
        // datatype's order and prints interface names byte-swapped (empty).
        let mut u = vec![NFTNL_UDATA_SET_KEYBYTEORDER, 4];
        u.extend_from_slice(&key_byteorder.to_ne_bytes());
        put_attr(b, NFTA_SET_USERDATA, &u);
        msg_end(b, m);
        Ok(())
    }

    /// DELSET (the set and its elements; the kernel refuses while a rule uses it).
    pub(super) fn del_set(&mut self, family: Family, table: &str, set: &str) -> NftResult<()> {
        check_name("table", table)?;
        check_name("set", set)?;
        let m = self.start(NFT_MSG_DELSET, 0, family, format!("delete set {set} in table {family} {table}"));
        put_strz(&mut self.buf, NFTA_SET_TABLE, table);
        put_strz(&mut self.buf, NFTA_SET_NAME, set);
        msg_end(&mut self.buf, m);
        Ok(())
    }

    /// DELSETELEM without an element list: removes every element.
    pub(super) fn flush_set(&mut self, family: Family, table: &str, set: &str) -> NftResult<()> {
        check_name("table", table)?;
        check_name("set", set)?;
        let m = self.start(NFT_MSG_DELSETELEM, 0, family, format!("flush set {set} in table {family} {table}"));
        put_strz(&mut self.buf, NFTA_SET_ELEM_LIST_TABLE, table);
        put_strz(&mut self.buf, NFTA_SET_ELEM_LIST_SET, set);
        msg_end(&mut self.buf, m);
        Ok(())
    }

    /// NEWSETELEM, DELSETELEM or DESTROYSETELEM (`msg`) for `elems`: each is
    /// (key bytes, element flags, verdict data of a map entry). Split into
    /// several messages of the same batch when the element list would
    /// outgrow a 16-bit attribute length.
    pub(super) fn set_elems(
        &mut self,
        family: Family,
        table: &str,
        set: &str,
        msg: u16,
        elems: &[WireElem],
    ) -> NftResult<()> {
        check_name("table", table)?;
        check_name("set", set)?;
        const CHUNK_BYTES: usize = 32 * 1024;
        let (verb, flags) = match msg {
            NFT_MSG_NEWSETELEM => ("add", NLM_F_CREATE),
            NFT_MSG_DESTROYSETELEM => ("destroy", 0),
            _ => ("delete", 0),
        };
        let mut rest = elems;
        while !rest.is_empty() {
            let op = format!("{verb} elements of set {set} in table {family} {table}");
            let m = self.start(msg, flags, family, op);
            let b = &mut self.buf;
            put_strz(b, NFTA_SET_ELEM_LIST_TABLE, table);
            put_strz(b, NFTA_SET_ELEM_LIST_SET, set);
            let list = nest_start(b, NFTA_SET_ELEM_LIST_ELEMENTS);
            let mut n = 0;
            for WireElem { key, flags: eflags, verdict: data } in rest {
                if b.len() - list > CHUNK_BYTES {
                    break;
                }
                let e = nest_start(b, NFTA_LIST_ELEM);
                put_data_value(b, NFTA_SET_ELEM_KEY, key);
                if *eflags != 0 {
                    put_be32(b, NFTA_SET_ELEM_FLAGS, *eflags);
                }
                if let Some((code, chain)) = data {
                    let d = nest_start(b, NFTA_SET_ELEM_DATA);
                    put_verdict(b, *code, chain.as_deref());
                    nest_end(b, d);
                }
                nest_end(b, e);
                n += 1;
            }
            nest_end(b, list);
            msg_end(b, m);
            rest = &rest[n..];
        }
        Ok(())
    }

    /// DESTROYTABLE, DESTROYCHAIN or DESTROYSET (`msg`): delete if present
    /// (Linux >= 6.3); `attrs` name the object as for the DEL message.
    pub(super) fn destroy(&mut self, msg: u16, family: Family, attrs: &[(u16, &str)], op: String) -> NftResult<()> {
        for (_, name) in attrs {
            check_name("object", name)?;
        }
        let m = self.start(msg, 0, family, op);
        for (ty, name) in attrs {
            put_strz(&mut self.buf, *ty, name);
        }
        msg_end(&mut self.buf, m);
        Ok(())
    }

    /// Number of messages between BATCH_BEGIN and BATCH_END so far.
    pub(super) fn len(&self) -> usize {
        self.ops.len()
    }

    pub(super) fn del_chain(&mut self, family: Family, table: &str, chain: &str) -> NftResult<()> {
        check_name("table", table)?;
        check_name("chain", chain)?;
        let op = format!("delete chain {chain} in table {family} {table}");
        let m = self.start(NFT_MSG_DELCHAIN, 0, family, op);
        put_strz(&mut self.buf, NFTA_CHAIN_TABLE, table);
        put_strz(&mut self.buf, NFTA_CHAIN_NAME, chain);
        msg_end(&mut self.buf, m);
        Ok(())
    }

    /// DELRULE with only table + chain = delete every rule of the chain.
    pub(super) fn flush_chain(&mut self, family: Family, table: &str, chain: &str) -> NftResult<()> {
        check_name("table", table)?;
        check_name("chain", chain)?;
        let op = format!("flush chain {chain} in table {family} {table}");
        let m = self.start(NFT_MSG_DELRULE, 0, family, op);
        put_strz(&mut self.buf, NFTA_RULE_TABLE, table);
        put_strz(&mut self.buf, NFTA_RULE_CHAIN, chain);
        msg_end(&mut self.buf, m);
        Ok(())
    }

    /// NEWRULE appended at the end of the chain.
    pub(super) fn new_rule(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        exprs: &[Expr],
        comment: Option<&str>,
    ) -> NftResult<()> {
        check_name("table", table)?;
        check_name("chain", chain)?;
        let userdata = comment.map(comment_userdata).transpose()?;
        let op = format!("add rule to chain {chain} in table {family} {table}");
        let m = self.start(NFT_MSG_NEWRULE, NLM_F_CREATE | NLM_F_APPEND, family, op);
        let b = &mut self.buf;
        put_strz(b, NFTA_RULE_TABLE, table);
        put_strz(b, NFTA_RULE_CHAIN, chain);
        let list = nest_start(b, NFTA_RULE_EXPRESSIONS);
        for e in exprs {
            put_expr(b, e);
        }
        nest_end(b, list);
        if let Some(u) = &userdata {
            put_attr(b, NFTA_RULE_USERDATA, u);
        }
        msg_end(b, m);
        Ok(())
    }

    /// Appends BATCH_END; returns the bytes to send and the acked ops.
    pub(super) fn finish(mut self) -> (Vec<u8>, u32, Vec<(u32, String)>) {
        let begin = self.begin_seq;
        let m = msg_start(
            &mut self.buf,
            NFNL_MSG_BATCH_END,
            NLM_F_REQUEST,
            self.next_seq,
            libc::AF_UNSPEC as u8,
            NFNL_SUBSYS_NFTABLES,
        );
        msg_end(&mut self.buf, m);
        (self.buf, begin, self.ops)
    }
}

/// A dump request (`NLM_F_DUMP`) for `msg` in `family`, with string filter
/// attributes.
pub(super) fn dump_request(msg: u16, family: Family, seq: u32, attrs: &[(u16, &str)]) -> Vec<u8> {
    get_request(msg, NLM_F_DUMP, family, seq, attrs)
}

/// A read request for `msg` in `family` with string attributes; `flags` is
/// `NLM_F_DUMP` for a dump, `NLM_F_ACK` for a single-object get (the ack
/// then ends the reply the way NLMSG_DONE ends a dump).
pub(super) fn get_request(msg: u16, flags: u16, family: Family, seq: u32, attrs: &[(u16, &str)]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    let m = msg_start(&mut buf, nft_type(msg), NLM_F_REQUEST | flags, seq, family.nfproto(), 0);
    for (ty, s) in attrs {
        put_strz(&mut buf, *ty, s);
    }
    msg_end(&mut buf, m);
    buf
}

/// A single-rule get (`NFT_MSG_GETRULE` without `NLM_F_DUMP`): the rule with
/// `handle` in `<family> <table>` chain `<chain>`, answered by one NEWRULE
/// and the ack, or by ENOENT when any of the three is gone.
pub(super) fn rule_get_request(family: Family, seq: u32, table: &str, chain: &str, handle: u64) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    let m = msg_start(&mut buf, nft_type(NFT_MSG_GETRULE), NLM_F_REQUEST | NLM_F_ACK, seq, family.nfproto(), 0);
    put_strz(&mut buf, NFTA_RULE_TABLE, table);
    put_strz(&mut buf, NFTA_RULE_CHAIN, chain);
    put_attr(&mut buf, NFTA_RULE_HANDLE, &handle.to_be_bytes());
    msg_end(&mut buf, m);
    buf
}
