//! nftables over netlink, hand-written: no `nft` exec, no C library.
//!
//! Two halves:
//!
//! * a pure message-building part ([`Batch`] and the attribute helpers) that
//!   appends netlink messages to a `Vec<u8>` and does no I/O, so the wire
//!   format is unit-testable byte for byte;
//! * a small I/O part that opens a `NETLINK_NETFILTER` socket in the calling
//!   thread's network namespace, sends one batch, collects one ack per
//!   message and maps the first kernel error to [`NftError::Kernel`].
//!
//! Every mutating public operation is exactly one
//! `NFNL_MSG_BATCH_BEGIN … NFNL_MSG_BATCH_END` batch, i.e. one atomic
//! nf_tables transaction: either all of it is applied or none of it.
//!
//! Constants were checked against `linux/netfilter/nf_tables.h`,
//! `linux/netfilter/nfnetlink.h`, `linux/netfilter.h` and
//! `linux/netfilter_bridge.h`; the expression encodings mirror what
//! `nft --debug=netlink,mnl` (nftables 1.0.6) emits for the same rules, so
//! `nft list ruleset` pretty-prints our rules as if nft had written them.

use std::io;
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::Duration;

use ipnetwork::IpNetwork;
use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

// ---------------------------------------------------------------------------
// Errors
// ---------------------------------------------------------------------------

/// Errors of the nftables module.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// Socket-level failure (open, send, receive).
    #[error("nftables netlink I/O: {0}")]
    Io(#[from] io::Error),
    /// The kernel rejected the transaction; `op` names the first failing
    /// message, e.g. `add chain masq_x in table inet cni_br_ab12`.
    #[error("{op}: {}", errno_name(*.errno))]
    Kernel { op: String, errno: i32 },
    /// An argument cannot be encoded (name too long, NUL byte, ...).
    /// Nothing was sent to the kernel.
    #[error("invalid nftables argument: {0}")]
    Invalid(String),
    /// The kernel's reply could not be understood.
    #[error("unexpected nftables netlink reply: {0}")]
    Protocol(String),
}

impl NftError {
    /// The kernel errno of a [`NftError::Kernel`] (or of an OS-level
    /// [`NftError::Io`]), if any.
    pub fn errno(&self) -> Option<i32> {
        match self {
            NftError::Kernel { errno, .. } => Some(*errno),
            NftError::Io(e) => e.raw_os_error(),
            _ => None,
        }
    }
}

pub type NftResult<T> = std::result::Result<T, NftError>;

/// Symbolic name of the errnos nf_tables actually returns, `errno N` else.
fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::EINTR => "EINTR",
        libc::E2BIG => "E2BIG",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENODEV => "ENODEV",
        libc::EINVAL => "EINVAL",
        libc::ENFILE => "ENFILE",
        libc::EMFILE => "EMFILE",
        libc::ENOSPC => "ENOSPC",
        libc::ERANGE => "ERANGE",
        libc::ENAMETOOLONG => "ENAMETOOLONG",
        libc::ELOOP => "ELOOP",
        libc::EMSGSIZE => "EMSGSIZE",
        libc::EPROTONOSUPPORT => "EPROTONOSUPPORT",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::ENOBUFS => "ENOBUFS",
        libc::ETIMEDOUT => "ETIMEDOUT",
        _ => return format!("errno {errno}"),
    };
    name.to_string()
}

// ---------------------------------------------------------------------------
// Kernel constants (verified against the uapi headers, see module docs)
// ---------------------------------------------------------------------------

// netlink
const NLMSG_HDRLEN: usize = 16;
const NLA_HDRLEN: usize = 4;
const NLA_F_NESTED: u16 = 0x8000;
const NLA_TYPE_MASK: u16 = 0x3fff;
const NLM_F_REQUEST: u16 = 0x01;
const NLM_F_ACK: u16 = 0x04;
const NLM_F_DUMP_INTR: u16 = 0x10;
const NLM_F_DUMP: u16 = 0x300; // NLM_F_ROOT | NLM_F_MATCH
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_APPEND: u16 = 0x800;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;

// nfnetlink.h
const NFGENMSG_LEN: usize = 4;
const NFNETLINK_V0: u8 = 0;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;

// enum nf_tables_msg_types
const NFT_MSG_NEWTABLE: u16 = 0;
const NFT_MSG_DELTABLE: u16 = 2;
const NFT_MSG_NEWCHAIN: u16 = 3;
const NFT_MSG_GETCHAIN: u16 = 4;
const NFT_MSG_DELCHAIN: u16 = 5;
const NFT_MSG_NEWRULE: u16 = 6;
const NFT_MSG_GETRULE: u16 = 7;
const NFT_MSG_DELRULE: u16 = 8;

// enum nft_table_attributes
const NFTA_TABLE_NAME: u16 = 1;
// enum nft_chain_attributes
const NFTA_CHAIN_TABLE: u16 = 1;
const NFTA_CHAIN_NAME: u16 = 3;
const NFTA_CHAIN_HOOK: u16 = 4;
const NFTA_CHAIN_POLICY: u16 = 5;
const NFTA_CHAIN_TYPE: u16 = 7;
// enum nft_hook_attributes
const NFTA_HOOK_HOOKNUM: u16 = 1;
const NFTA_HOOK_PRIORITY: u16 = 2;
// enum nft_rule_attributes
const NFTA_RULE_TABLE: u16 = 1;
const NFTA_RULE_CHAIN: u16 = 2;
const NFTA_RULE_EXPRESSIONS: u16 = 4;
const NFTA_RULE_USERDATA: u16 = 7;
// enum nft_list_attributes / nft_expr_attributes
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_EXPR_NAME: u16 = 1;
const NFTA_EXPR_DATA: u16 = 2;
// enum nft_data_attributes / nft_verdict_attributes
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
// enum nft_masq_attributes
const NFTA_MASQ_FLAGS: u16 = 1;
// enum nft_immediate_attributes
const NFTA_IMMEDIATE_DREG: u16 = 1;
const NFTA_IMMEDIATE_DATA: u16 = 2;
// enum nft_bitwise_attributes
const NFTA_BITWISE_SREG: u16 = 1;
const NFTA_BITWISE_DREG: u16 = 2;
const NFTA_BITWISE_LEN: u16 = 3;
const NFTA_BITWISE_MASK: u16 = 4;
const NFTA_BITWISE_XOR: u16 = 5;
const NFTA_BITWISE_OP: u16 = 6;
// enum nft_cmp_attributes / nft_cmp_ops
const NFTA_CMP_SREG: u16 = 1;
const NFTA_CMP_OP: u16 = 2;
const NFTA_CMP_DATA: u16 = 3;
const NFT_CMP_EQ: u32 = 0;
const NFT_CMP_NEQ: u32 = 1;
// enum nft_payload_attributes / nft_payload_bases
const NFTA_PAYLOAD_DREG: u16 = 1;
const NFTA_PAYLOAD_BASE: u16 = 2;
const NFTA_PAYLOAD_OFFSET: u16 = 3;
const NFTA_PAYLOAD_LEN: u16 = 4;
const NFT_PAYLOAD_LL_HEADER: u32 = 0;
const NFT_PAYLOAD_NETWORK_HEADER: u32 = 1;
// enum nft_meta_attributes / nft_meta_keys
const NFTA_META_DREG: u16 = 1;
const NFTA_META_KEY: u16 = 2;
const NFT_META_IIFNAME: u32 = 6;
const NFT_META_NFPROTO: u32 = 15;
// enum nft_registers
const NFT_REG_VERDICT: u32 = 0;
const NFT_REG_1: u32 = 1;
// linux/netfilter.h
const NF_DROP: u32 = 0;
const NF_ACCEPT: u32 = 1;
const NF_INET_POST_ROUTING: u32 = 4;
const NFPROTO_INET: u8 = 1;
const NFPROTO_IPV4: u8 = 2;
const NFPROTO_BRIDGE: u8 = 7;
const NFPROTO_IPV6: u8 = 10;
// linux/netfilter_bridge.h
const NF_BR_PRE_ROUTING: u32 = 0;

// libnftnl userdata TLV types (NFTNL_UDATA_RULE_COMMENT)
const NFTNL_UDATA_RULE_COMMENT: u8 = 0;

/// Longest table/chain name the kernel accepts (NFT_NAME_MAXLEN incl. NUL).
const NFT_NAME_MAXLEN: usize = 256;
/// Max size of NFTA_RULE_USERDATA (NFT_USERDATA_MAXLEN).
const NFT_USERDATA_MAXLEN: usize = 256;
/// Longest comment that fits one userdata TLV (2-byte header, NUL).
pub const MAX_COMMENT_LEN: usize = NFT_USERDATA_MAXLEN - 3;
const IFNAMSIZ: usize = 16;

/// `srcnat` priority (NF_IP_PRI_NAT_SRC).
const PRIO_SRCNAT: i32 = 100;
/// Priority of the MAC spoof-check chain (bridge `dstnat`, as the reference plugin).
const PRIO_MACSPOOF: i32 = -300;

// ---------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------

/// nftables address family of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    Inet,
    Ip,
    Ip6,
    Bridge,
}

impl Family {
    /// The `NFPROTO_*` value carried in `nfgenmsg.nfgen_family`.
    pub fn nfproto(self) -> u8 {
        match self {
            Family::Inet => NFPROTO_INET,
            Family::Ip => NFPROTO_IPV4,
            Family::Ip6 => NFPROTO_IPV6,
            Family::Bridge => NFPROTO_BRIDGE,
        }
    }

    /// The keyword `nft` uses for this family.
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Inet => "inet",
            Family::Ip => "ip",
            Family::Ip6 => "ip6",
            Family::Bridge => "bridge",
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

// ---------------------------------------------------------------------------
// Public operations
// ---------------------------------------------------------------------------

/// Name of the masquerade chain [`ensure_masquerade`] uses for `subnet`:
/// `masq_` + 8 hex digits of the 32-bit FNV-1a hash of the canonical CIDR
/// string (host bits cleared, e.g. `10.99.0.0/24`). Stable across processes,
/// builds and Rust versions.
pub fn masq_chain_name(subnet: IpNetwork) -> String {
    format!("masq_{:08x}", fnv1a32(canonical_cidr(subnet).as_bytes()))
}

/// Masquerade for one network: table `inet <table>`, one base chain per
/// subnet named by [`masq_chain_name`] (type nat, hook postrouting,
/// priority 100 = srcnat, policy accept) holding a single rule:
///
/// `ip saddr S ip daddr != S ip daddr != 224.0.0.0/4 masquerade comment "cni-bridge net=<network> subnet=S"`
/// (or the `ip6` equivalent with `ff00::/8`), where S is `subnet` with its
/// host bits cleared.
///
/// Idempotent, one atomic batch: NEWTABLE, NEWCHAIN (both without EXCL),
/// flush of that chain, NEWRULE. Calling it twice leaves exactly one rule.
/// When a read of the chain shows it already holds exactly this rule, no
/// batch is sent at all (see `ensure_single_rule` for why).
pub fn ensure_masquerade(table: &str, network: &str, subnet: IpNetwork) -> NftResult<()> {
    let chain = masq_chain_name(subnet);
    let comment = format!("cni-bridge net={network} subnet={}", canonical_cidr(subnet));
    ensure_single_rule(&SingleRule {
        family: Family::Inet,
        table,
        chain: &chain,
        chain_type: "nat",
        hooknum: NF_INET_POST_ROUTING,
        priority: PRIO_SRCNAT,
        exprs: masquerade_exprs(subnet),
        comment: &comment,
    })
}

/// Deletes table `<family> <table>` with everything in it.
/// Ok if it does not exist (ENOENT).
pub fn delete_table(family: Family, table: &str) -> NftResult<()> {
    let mut b = Batch::new();
    b.del_table(family, table)?;
    execute(b, true)
}

/// MAC spoof check for one container port: in table `bridge <table>`, base
/// chain `<chain>` (type filter, hook prerouting, priority -300, policy
/// accept) with the single rule
///
/// `iifname "<host_ifname>" ether saddr != <mac> drop comment "cni-bridge macspoofchk net=<network> cid=<container_id> if=<ifname>"`
///
/// Idempotent, one atomic batch (table and chain without EXCL, flush chain,
/// add rule), skipped when the chain already holds exactly this rule.
pub fn ensure_macspoofchk(
    table: &str,
    chain: &str,
    network: &str,
    container_id: &str,
    ifname: &str,
    host_ifname: &str,
    mac: [u8; 6],
) -> NftResult<()> {
    let comment = format!("cni-bridge macspoofchk net={network} cid={container_id} if={ifname}");
    ensure_single_rule(&SingleRule {
        family: Family::Bridge,
        table,
        chain,
        chain_type: "filter",
        hooknum: NF_BR_PRE_ROUTING,
        priority: PRIO_MACSPOOF,
        exprs: macspoof_exprs(host_ifname, mac)?,
        comment: &comment,
    })
}

/// Removes chain `<chain>` (and its rules) from `<family> <table>`, in one
/// batch (flush + delete). Ok if the table or the chain is absent.
pub fn delete_chain(family: Family, table: &str, chain: &str) -> NftResult<()> {
    let mut b = Batch::new();
    b.flush_chain(family, table, chain)?;
    b.del_chain(family, table, chain)?;
    execute(b, true)
}

/// How often a dump interrupted by a concurrent ruleset change
/// (NLM_F_DUMP_INTR) is tried; the generation seldom moves twice in a row.
const MAX_DUMP_ATTEMPTS: u32 = 5;

/// Chain names of `<family> <table>` in kernel order, each with the comment
/// of its first rule (`None` if the chain is empty or the rule has no
/// comment). Empty if the table does not exist.
pub fn list_chains(family: Family, table: &str) -> NftResult<Vec<(String, Option<String>)>> {
    check_name("table", table)?;
    let sock = open_socket()?;
    match retry_interrupted(|| list_chains_once(&sock, family, table)) {
        Err(DumpError::Interrupted) => Err(NftError::Protocol(format!(
            "listing table {family} {table}: dump kept being interrupted by ruleset changes"
        ))),
        Err(DumpError::Nft(e)) => Err(e),
        Ok(v) => Ok(v),
    }
}

/// Runs `read` (one or more dumps that must agree) again while a
/// concurrent ruleset change interrupts it, up to [`MAX_DUMP_ATTEMPTS`]
/// times; the last outcome otherwise.
fn retry_interrupted<T>(mut read: impl FnMut() -> Result<T, DumpError>) -> Result<T, DumpError> {
    let mut attempt = 1;
    loop {
        match read() {
            Err(DumpError::Interrupted) if attempt < MAX_DUMP_ATTEMPTS => attempt += 1,
            outcome => return outcome,
        }
    }
}

/// A base chain that must contain exactly one given rule.
struct SingleRule<'a> {
    family: Family,
    table: &'a str,
    chain: &'a str,
    chain_type: &'a str,
    hooknum: u32,
    priority: i32,
    exprs: Vec<Expr>,
    comment: &'a str,
}

/// Makes `want.chain` hold exactly `want`'s rule.
///
/// Fast path: one filtered rule dump (tens of µs); if the chain already
/// holds exactly that rule (same expressions, same comment), nothing is
/// written. This matters beyond the saved round trip: any transaction that
/// deletes a rule or updates an existing chain leaves the kernel with
/// deferred destruction work (an RCU grace period), and closing an
/// nfnetlink socket waits for it (`nft_rcv_nl_event` on NETLINK_URELEASE).
/// Measured on a 2-vCPU 6.18 VM: ~50 µs for the flush+add batch itself, but
/// 8–16 ms until `close()` returns. Without the fast path every container
/// ADD on an existing network would pay that.
///
/// Slow path: the one atomic batch NEWTABLE, NEWCHAIN (no EXCL), flush
/// chain, NEWRULE. Concurrent callers are safe: transactions serialize in
/// the kernel and each leaves exactly one rule.
fn ensure_single_rule(want: &SingleRule<'_>) -> NftResult<()> {
    let SingleRule { family, table, chain, .. } = *want;
    // validate everything before any I/O
    check_name("table", table)?;
    check_name("chain", chain)?;
    let userdata = comment_userdata(want.comment)?;

    let sock = open_socket()?;
    // An unreadable chain is not fatal: the batch below rewrites it and
    // reports a meaningful error if the kernel objects. A dump interrupted
    // by someone else's ruleset change (other tables, other plugins) is
    // retried first, so that a correct rule is not rewritten for nothing.
    match retry_interrupted(|| already_in_place(&sock, want, &userdata)) {
        Ok(true) => return Ok(()),
        Ok(false) | Err(DumpError::Interrupted) => {}
        Err(DumpError::Nft(NftError::Kernel { .. })) => {}
        Err(DumpError::Nft(e)) => return Err(e),
    }

    let mut b = Batch::new();
    b.new_table(family, table)?;
    b.new_base_chain(family, table, chain, want.chain_type, want.hooknum, want.priority)?;
    b.flush_chain(family, table, chain)?;
    b.new_rule(family, table, chain, &want.exprs, Some(want.comment))?;
    execute_on(&sock, b, false)
}

/// Whether the chain is the wanted base chain and holds exactly the wanted
/// rule: one rule dump, then (only if that matches) one chain get.
fn already_in_place(sock: &Socket, want: &SingleRule<'_>, userdata: &[u8]) -> Result<bool, DumpError> {
    let SingleRule { family, table, chain, .. } = *want;
    let rules = chain_rules(sock, family, table, chain)?;
    let [only] = rules.as_slice() else {
        return Ok(false);
    };
    if only.exprs.as_deref() != Some(want.exprs.as_slice()) || only.userdata.as_deref() != Some(userdata) {
        return Ok(false);
    }
    let req = get_request(
        NFT_MSG_GETCHAIN,
        NLM_F_ACK,
        family,
        DUMP_SEQ + 3,
        &[(NFTA_CHAIN_TABLE, table), (NFTA_CHAIN_NAME, chain)],
    );
    let what = format!("get chain {chain} in table {family} {table}");
    let mut info = None;
    dump(sock, &req, nft_type(NFT_MSG_NEWCHAIN), &what, |p| {
        info = chain_of(p);
    })?;
    Ok(info.is_some_and(|c| {
        c.hook == Some((want.hooknum, want.priority))
            && c.chain_type.as_deref() == Some(want.chain_type)
            && c.policy == Some(NF_ACCEPT)
    }))
}

// ---------------------------------------------------------------------------
// Rule bodies
// ---------------------------------------------------------------------------

/// One nf_tables expression, as needed by this module.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Expr {
    /// `meta load <key> => reg 1`
    Meta { key: u32 },
    /// `payload load <len>b @ <base> + <offset> => reg 1`
    Payload { base: u32, offset: u32, len: u32 },
    /// `bitwise reg 1 = (reg 1 & mask) ^ 0`
    Bitwise { mask: Vec<u8> },
    /// `cmp <op> reg 1 <data>`
    Cmp { op: u32, data: Vec<u8> },
    /// `immediate reg 0 <verdict>`
    Verdict { code: u32 },
    /// `masq`
    Masq,
}

fn canonical(subnet: IpNetwork) -> (IpAddr, u8) {
    (subnet.network(), subnet.prefix())
}

fn canonical_cidr(subnet: IpNetwork) -> String {
    let (addr, prefix) = canonical(subnet);
    format!("{addr}/{prefix}")
}

fn addr_bytes(addr: IpAddr) -> Vec<u8> {
    match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    }
}

/// Expressions matching `<field> (==|!=) addr/prefix` for a network-header
/// address field at `offset`, encoded the way nft does: byte-aligned
/// non-zero prefixes load only the prefix bytes and compare; other prefixes
/// load the whole field, mask it, then compare.
fn prefix_match(offset: u32, addr: IpAddr, prefix: u8, op: u32) -> Vec<Expr> {
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
fn masquerade_exprs(subnet: IpNetwork) -> Vec<Expr> {
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
fn macspoof_exprs(host_ifname: &str, mac: [u8; 6]) -> NftResult<Vec<Expr>> {
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
fn fnv1a32(data: &[u8]) -> u32 {
    data.iter().fold(0x811c_9dc5u32, |h, &b| (h ^ u32::from(b)).wrapping_mul(0x0100_0193))
}

// ---------------------------------------------------------------------------
// Wire format: attributes and messages (pure)
// ---------------------------------------------------------------------------

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

fn pad4(buf: &mut Vec<u8>) {
    buf.resize(align4(buf.len()), 0);
}

/// Appends one attribute: `nla_len` covers header + payload (unpadded), the
/// payload is then zero-padded to 4 bytes.
fn put_attr(buf: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = NLA_HDRLEN + payload.len();
    debug_assert!(len <= usize::from(u16::MAX));
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(payload);
    pad4(buf);
}

/// NUL-terminated string attribute (what libmnl's `mnl_attr_put_strz` does).
fn put_strz(buf: &mut Vec<u8>, ty: u16, s: &str) {
    let start = buf.len();
    buf.extend_from_slice(&((NLA_HDRLEN + s.len() + 1) as u16).to_ne_bytes());
    buf.extend_from_slice(&ty.to_ne_bytes());
    buf.extend_from_slice(s.as_bytes());
    buf.push(0);
    debug_assert!(buf.len() - start <= usize::from(u16::MAX));
    pad4(buf);
}

/// Big-endian u32 attribute (nf_tables integers are network byte order).
fn put_be32(buf: &mut Vec<u8>, ty: u16, v: u32) {
    put_attr(buf, ty, &v.to_be_bytes());
}

/// Opens a nested attribute; returns its offset for [`nest_end`].
fn nest_start(buf: &mut Vec<u8>, ty: u16) -> usize {
    let start = buf.len();
    buf.extend_from_slice(&0u16.to_ne_bytes());
    buf.extend_from_slice(&(ty | NLA_F_NESTED).to_ne_bytes());
    start
}

fn nest_end(buf: &mut [u8], start: usize) {
    let len = (buf.len() - start) as u16;
    buf[start..start + 2].copy_from_slice(&len.to_ne_bytes());
}

/// Appends an `nlmsghdr` + `nfgenmsg`; returns the message offset for
/// [`msg_end`].
fn msg_start(buf: &mut Vec<u8>, ty: u16, flags: u16, seq: u32, family: u8, res_id: u16) -> usize {
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

fn msg_end(buf: &mut Vec<u8>, start: usize) {
    pad4(buf);
    let len = (buf.len() - start) as u32;
    buf[start..start + 4].copy_from_slice(&len.to_ne_bytes());
}

const fn nft_type(msg: u16) -> u16 {
    (NFNL_SUBSYS_NFTABLES << 8) | msg
}

fn check_name(what: &str, name: &str) -> NftResult<()> {
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
fn comment_userdata(comment: &str) -> NftResult<Vec<u8>> {
    if comment.len() > MAX_COMMENT_LEN || comment.contains('\0') {
        return Err(NftError::Invalid(format!(
            "rule comment must be at most {MAX_COMMENT_LEN} bytes without NUL, got {} bytes",
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

/// Comment TLV of a rule's userdata, if any.
fn parse_comment(userdata: &[u8]) -> Option<String> {
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

fn put_data_value(buf: &mut Vec<u8>, ty: u16, data: &[u8]) {
    let n = nest_start(buf, ty);
    put_attr(buf, NFTA_DATA_VALUE, data);
    nest_end(buf, n);
}

/// Appends one `NFTA_LIST_ELEM { NFTA_EXPR_NAME, NFTA_EXPR_DATA {...} }`.
/// Attribute order follows libnftnl so the bytes equal nft's.
fn put_expr(buf: &mut Vec<u8>, expr: &Expr) {
    let elem = nest_start(buf, NFTA_LIST_ELEM);
    let name = match expr {
        Expr::Meta { .. } => "meta",
        Expr::Payload { .. } => "payload",
        Expr::Bitwise { .. } => "bitwise",
        Expr::Cmp { .. } => "cmp",
        Expr::Verdict { .. } => "immediate",
        Expr::Masq => "masq",
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
            Expr::Bitwise { mask } => {
                put_be32(buf, NFTA_BITWISE_SREG, NFT_REG_1);
                put_be32(buf, NFTA_BITWISE_DREG, NFT_REG_1);
                put_be32(buf, NFTA_BITWISE_LEN, mask.len() as u32);
                put_data_value(buf, NFTA_BITWISE_MASK, mask);
                put_data_value(buf, NFTA_BITWISE_XOR, &vec![0; mask.len()]);
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
        }
        nest_end(buf, data);
    }
    nest_end(buf, elem);
}

/// One nf_tables transaction under construction: BATCH_BEGIN, then one
/// message per operation (each with NLM_F_ACK and its own sequence number),
/// BATCH_END added by [`Batch::finish`].
#[derive(Debug)]
struct Batch {
    buf: Vec<u8>,
    begin_seq: u32,
    next_seq: u32,
    /// (sequence number, human description) of every acked message.
    ops: Vec<(u32, String)>,
}

impl Batch {
    fn new() -> Self {
        Self::with_seq(1)
    }

    fn with_seq(first_seq: u32) -> Self {
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
    fn start(&mut self, msg: u16, extra_flags: u16, family: Family, op: String) -> usize {
        let seq = self.next_seq;
        self.next_seq = seq.wrapping_add(1);
        self.ops.push((seq, op));
        msg_start(&mut self.buf, nft_type(msg), NLM_F_REQUEST | NLM_F_ACK | extra_flags, seq, family.nfproto(), 0)
    }

    /// NEWTABLE without NLM_F_EXCL: creates, or no-op if it exists.
    fn new_table(&mut self, family: Family, table: &str) -> NftResult<()> {
        check_name("table", table)?;
        let m = self.start(NFT_MSG_NEWTABLE, NLM_F_CREATE, family, format!("add table {family} {table}"));
        put_strz(&mut self.buf, NFTA_TABLE_NAME, table);
        msg_end(&mut self.buf, m);
        Ok(())
    }

    fn del_table(&mut self, family: Family, table: &str) -> NftResult<()> {
        check_name("table", table)?;
        let m = self.start(NFT_MSG_DELTABLE, 0, family, format!("delete table {family} {table}"));
        put_strz(&mut self.buf, NFTA_TABLE_NAME, table);
        msg_end(&mut self.buf, m);
        Ok(())
    }

    /// NEWCHAIN without NLM_F_EXCL for a base chain with policy accept.
    fn new_base_chain(
        &mut self,
        family: Family,
        table: &str,
        chain: &str,
        chain_type: &str,
        hooknum: u32,
        priority: i32,
    ) -> NftResult<()> {
        check_name("table", table)?;
        check_name("chain", chain)?;
        let op = format!("add chain {chain} in table {family} {table}");
        let m = self.start(NFT_MSG_NEWCHAIN, NLM_F_CREATE, family, op);
        let b = &mut self.buf;
        put_strz(b, NFTA_CHAIN_TABLE, table);
        put_strz(b, NFTA_CHAIN_NAME, chain);
        put_strz(b, NFTA_CHAIN_TYPE, chain_type);
        let h = nest_start(b, NFTA_CHAIN_HOOK);
        put_be32(b, NFTA_HOOK_HOOKNUM, hooknum);
        put_be32(b, NFTA_HOOK_PRIORITY, priority as u32);
        nest_end(b, h);
        put_be32(b, NFTA_CHAIN_POLICY, NF_ACCEPT);
        msg_end(b, m);
        Ok(())
    }

    fn del_chain(&mut self, family: Family, table: &str, chain: &str) -> NftResult<()> {
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
    fn flush_chain(&mut self, family: Family, table: &str, chain: &str) -> NftResult<()> {
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
    fn new_rule(
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
    fn finish(mut self) -> (Vec<u8>, u32, Vec<(u32, String)>) {
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
fn dump_request(msg: u16, family: Family, seq: u32, attrs: &[(u16, &str)]) -> Vec<u8> {
    get_request(msg, NLM_F_DUMP, family, seq, attrs)
}

/// A read request for `msg` in `family` with string attributes; `flags` is
/// `NLM_F_DUMP` for a dump, `NLM_F_ACK` for a single-object get (the ack
/// then ends the reply the way NLMSG_DONE ends a dump).
fn get_request(msg: u16, flags: u16, family: Family, seq: u32, attrs: &[(u16, &str)]) -> Vec<u8> {
    let mut buf = Vec::with_capacity(64);
    let m = msg_start(&mut buf, nft_type(msg), NLM_F_REQUEST | flags, seq, family.nfproto(), 0);
    for (ty, s) in attrs {
        put_strz(&mut buf, *ty, s);
    }
    msg_end(&mut buf, m);
    buf
}

// ---------------------------------------------------------------------------
// Wire format: parsing replies (pure)
// ---------------------------------------------------------------------------

/// One netlink message of a received datagram.
#[derive(Debug, Clone, Copy)]
struct NlMsg<'a> {
    ty: u16,
    flags: u16,
    seq: u32,
    /// Everything after the 16-byte header.
    payload: &'a [u8],
}

fn ne_u16(b: &[u8]) -> u16 {
    u16::from_ne_bytes([b[0], b[1]])
}

fn ne_u32(b: &[u8]) -> u32 {
    u32::from_ne_bytes([b[0], b[1], b[2], b[3]])
}

/// Splits a datagram into netlink messages.
fn parse_msgs(mut data: &[u8]) -> NftResult<Vec<NlMsg<'_>>> {
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
fn parse_error(payload: &[u8]) -> NftResult<(i32, u32)> {
    if payload.len() < 4 + NLMSG_HDRLEN {
        return Err(NftError::Protocol(format!("short NLMSG_ERROR ({} bytes)", payload.len())));
    }
    let err = i32::from_ne_bytes([payload[0], payload[1], payload[2], payload[3]]);
    let orig_seq = ne_u32(&payload[4 + 8..]);
    Ok((-err, orig_seq))
}

/// Iterates the attributes of a flat attribute stream: `(type, payload)`.
fn parse_attrs(mut data: &[u8]) -> Vec<(u16, &[u8])> {
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

fn attr_str(v: &[u8]) -> String {
    let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

/// A chain as dumped by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ChainInfo {
    table: String,
    name: String,
    /// (hook number, priority) of a base chain.
    hook: Option<(u32, i32)>,
    chain_type: Option<String>,
    policy: Option<u32>,
}

/// Parses a NEWCHAIN message payload (nfgenmsg + attributes).
fn chain_of(payload: &[u8]) -> Option<ChainInfo> {
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
    })
}

/// A rule as dumped by the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
struct RuleInfo {
    table: String,
    chain: String,
    /// `None` if some expression is not one [`Expr`] can represent.
    exprs: Option<Vec<Expr>>,
    userdata: Option<Vec<u8>>,
}

impl RuleInfo {
    fn comment(&self) -> Option<String> {
        self.userdata.as_deref().and_then(parse_comment)
    }
}

/// Parses a NEWRULE message payload (nfgenmsg + attributes).
fn rule_of(payload: &[u8]) -> Option<RuleInfo> {
    let attrs = parse_attrs(payload.get(NFGENMSG_LEN..)?);
    let get = |t| find_attr(&attrs, t);
    Some(RuleInfo {
        table: attr_str(get(NFTA_RULE_TABLE)?),
        chain: attr_str(get(NFTA_RULE_CHAIN)?),
        exprs: get(NFTA_RULE_EXPRESSIONS).map_or(Some(Vec::new()), decode_exprs),
        userdata: get(NFTA_RULE_USERDATA).map(<[u8]>::to_vec),
    })
}

fn find_attr<'a>(attrs: &[(u16, &'a [u8])], ty: u16) -> Option<&'a [u8]> {
    attrs.iter().find(|(t, _)| *t == ty).map(|(_, v)| *v)
}

fn be32(v: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(v.try_into().ok()?))
}

/// `NFTA_DATA_VALUE` inside a nested data attribute.
fn data_value(nested: &[u8]) -> Option<Vec<u8>> {
    find_attr(&parse_attrs(nested), NFTA_DATA_VALUE).map(<[u8]>::to_vec)
}

/// Decodes an `NFTA_RULE_EXPRESSIONS` list back into [`Expr`]s; `None` as
/// soon as one expression is outside what this module writes.
fn decode_exprs(list: &[u8]) -> Option<Vec<Expr>> {
    parse_attrs(list)
        .into_iter()
        .map(|(ty, elem)| if ty == NFTA_LIST_ELEM { decode_expr(elem) } else { None })
        .collect()
}

fn decode_expr(elem: &[u8]) -> Option<Expr> {
    let e = parse_attrs(elem);
    let name = attr_str(find_attr(&e, NFTA_EXPR_NAME)?);
    let d = find_attr(&e, NFTA_EXPR_DATA).map(parse_attrs).unwrap_or_default();
    let u = |ty| find_attr(&d, ty).and_then(be32);
    let reg1 = |ty| u(ty) == Some(NFT_REG_1);
    match name.as_str() {
        "meta" if reg1(NFTA_META_DREG) => Some(Expr::Meta { key: u(NFTA_META_KEY)? }),
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
            (op_ok && len_ok && xor.iter().all(|&b| b == 0)).then_some(Expr::Bitwise { mask })
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

// ---------------------------------------------------------------------------
// I/O
// ---------------------------------------------------------------------------

const RECV_BUF: usize = 64 * 1024;
/// Sequence numbers of dump requests; batches start at 1.
const DUMP_SEQ: u32 = 0x1000;

fn open_socket() -> NftResult<Socket> {
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    // Errors echo only the failing header, not the whole message (>= 4.3);
    // purely an optimisation, so a refusal is ignored.
    let _ = sock.set_cap_ack(true);
    Ok(sock)
}

/// Receives one datagram into `buf`. `Ok(false)` when non-blocking and
/// nothing is queued.
fn recv_into(sock: &Socket, buf: &mut Vec<u8>, flags: libc::c_int) -> NftResult<bool> {
    buf.clear();
    loop {
        match sock.recv(buf, flags | libc::MSG_TRUNC) {
            Ok(n) if n > buf.capacity() => return Err(NftError::Protocol(format!("{n}-byte datagram truncated"))),
            Ok(_) => return Ok(true),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(false),
            Err(e) => return Err(e.into()),
        }
    }
}

fn wait_readable(sock: &Socket, timeout: Duration) -> NftResult<bool> {
    let mut pfd = libc::pollfd { fd: sock.as_raw_fd(), events: libc::POLLIN, revents: 0 };
    loop {
        // SAFETY: one valid pollfd for the duration of the call.
        let r = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
        if r >= 0 {
            return Ok(r > 0);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e.into());
        }
    }
}

/// Sends a batch and waits for one ack per message. The first failing
/// message (lowest sequence number, i.e. the root cause, not the knock-on
/// errors after it) becomes the error. With `enoent_ok`, an ENOENT failure
/// is success: the transaction was aborted, nothing existed to remove.
fn execute(batch: Batch, enoent_ok: bool) -> NftResult<()> {
    execute_on(&open_socket()?, batch, enoent_ok)
}

fn execute_on(sock: &Socket, batch: Batch, enoent_ok: bool) -> NftResult<()> {
    let (bytes, begin_seq, ops) = batch.finish();
    let sent = sock.send(&bytes, 0)?;
    if sent != bytes.len() {
        return Err(NftError::Protocol(format!("short send: {sent} of {} bytes", bytes.len())));
    }
    let mut pending: Vec<bool> = vec![true; ops.len()];
    let mut remaining = ops.len();
    // (seq, errno) of the earliest failure
    let mut failure: Option<(u32, i32)> = None;
    let mut buf = Vec::with_capacity(RECV_BUF);
    // The kernel processes a batch synchronously inside sendmsg(), so every
    // reply is already queued; the blocking wait below is only a safety net.
    while remaining > 0 {
        if !recv_into(sock, &mut buf, libc::MSG_DONTWAIT)? {
            if failure.is_some() {
                break; // an aborted batch may not ack the rest
            }
            if !wait_readable(sock, Duration::from_secs(2))? {
                return Err(NftError::Protocol(format!(
                    "no reply from the kernel for {remaining} of {} messages",
                    ops.len()
                )));
            }
            continue;
        }
        for msg in parse_msgs(&buf)? {
            if msg.ty != NLMSG_ERROR {
                continue; // nf_tables sends no other replies to a batch
            }
            let (errno, seq) = parse_error(msg.payload)?;
            if seq == begin_seq {
                // The batch as a whole was refused (EPERM, no nf_tables...).
                if errno != 0 {
                    failure = Some((seq, errno));
                    remaining = 0;
                }
                continue;
            }
            let Some(idx) = ops.iter().position(|(s, _)| *s == seq) else {
                continue;
            };
            if pending[idx] {
                pending[idx] = false;
                remaining -= 1;
            }
            if errno != 0 && failure.is_none_or(|(s, _)| seq < s) {
                failure = Some((seq, errno));
            }
        }
    }
    match failure {
        None => Ok(()),
        Some((_, errno)) if enoent_ok && errno == libc::ENOENT => Ok(()),
        Some((seq, errno)) => {
            let op =
                ops.iter().find(|(s, _)| *s == seq).map_or_else(|| "nftables batch".to_string(), |(_, op)| op.clone());
            tracing::debug!(%op, errno, "nftables transaction rejected");
            Err(NftError::Kernel { op, errno })
        }
    }
}

enum DumpError {
    Interrupted,
    Nft(NftError),
}

impl From<NftError> for DumpError {
    fn from(e: NftError) -> Self {
        DumpError::Nft(e)
    }
}

/// Runs one dump request and calls `each` with every reply payload of type
/// `reply_type`. ENOENT from the kernel is an empty dump.
fn dump(
    sock: &Socket,
    request: &[u8],
    reply_type: u16,
    what: &str,
    mut each: impl FnMut(&[u8]),
) -> Result<(), DumpError> {
    let sent = sock.send(request, 0).map_err(NftError::from)?;
    if sent != request.len() {
        return Err(NftError::Protocol(format!("short send of {what} request")).into());
    }
    let seq = ne_u32(&request[8..]);
    let mut buf = Vec::with_capacity(RECV_BUF);
    let mut interrupted = false;
    loop {
        if !wait_readable(sock, Duration::from_secs(5))? {
            return Err(NftError::Protocol(format!("{what}: dump timed out")).into());
        }
        if !recv_into(sock, &mut buf, libc::MSG_DONTWAIT)? {
            continue;
        }
        for msg in parse_msgs(&buf)? {
            if msg.seq != seq {
                continue;
            }
            if msg.flags & NLM_F_DUMP_INTR != 0 {
                interrupted = true;
            }
            match msg.ty {
                NLMSG_DONE => {
                    // The payload is the dump's final status (0 or -errno).
                    let status = msg.payload.get(..4).map_or(0, |b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]));
                    return match -status {
                        _ if interrupted => Err(DumpError::Interrupted),
                        0 | libc::ENOENT => Ok(()),
                        libc::EINTR => Err(DumpError::Interrupted),
                        errno => Err(NftError::Kernel { op: what.to_string(), errno }.into()),
                    };
                }
                NLMSG_ERROR => {
                    let (errno, _) = parse_error(msg.payload)?;
                    return match errno {
                        0 => Ok(()),
                        libc::ENOENT => Ok(()),
                        libc::EINTR => Err(DumpError::Interrupted),
                        errno => Err(NftError::Kernel { op: what.to_string(), errno }.into()),
                    };
                }
                t if t == reply_type => each(msg.payload),
                _ => {}
            }
        }
    }
}

/// Rules of one chain, in order (empty if the table or chain is absent).
fn chain_rules(sock: &Socket, family: Family, table: &str, chain: &str) -> Result<Vec<RuleInfo>, DumpError> {
    let req =
        dump_request(NFT_MSG_GETRULE, family, DUMP_SEQ + 2, &[(NFTA_RULE_TABLE, table), (NFTA_RULE_CHAIN, chain)]);
    let what = format!("list rules of chain {chain} in table {family} {table}");
    let mut rules = Vec::new();
    dump(sock, &req, nft_type(NFT_MSG_NEWRULE), &what, |p| {
        if let Some(r) = rule_of(p) {
            if r.table == table && r.chain == chain {
                rules.push(r);
            }
        }
    })?;
    Ok(rules)
}

fn list_chains_once(sock: &Socket, family: Family, table: &str) -> Result<Vec<(String, Option<String>)>, DumpError> {
    // Chain dumps cannot be filtered by table in the kernel; filter here.
    let mut chains: Vec<(String, Option<String>)> = Vec::new();
    let req = dump_request(NFT_MSG_GETCHAIN, family, DUMP_SEQ, &[]);
    let what = format!("list chains of table {family} {table}");
    dump(sock, &req, nft_type(NFT_MSG_NEWCHAIN), &what, |p| {
        if let Some(c) = chain_of(p) {
            if c.table == table {
                chains.push((c.name, None));
            }
        }
    })?;
    if chains.is_empty() {
        return Ok(chains);
    }
    // Rule dumps are filtered by table in the kernel and come in chain
    // order, so the first rule seen per chain is its first rule.
    let req = dump_request(NFT_MSG_GETRULE, family, DUMP_SEQ + 1, &[(NFTA_RULE_TABLE, table)]);
    let what = format!("list rules of table {family} {table}");
    let mut seen: Vec<bool> = vec![false; chains.len()];
    dump(sock, &req, nft_type(NFT_MSG_NEWRULE), &what, |p| {
        if let Some(rule) = rule_of(p) {
            if rule.table != table {
                return;
            }
            if let Some(i) = chains.iter().position(|(name, _)| *name == rule.chain) {
                if !seen[i] {
                    seen[i] = true;
                    chains[i].1 = rule.comment();
                }
            }
        }
    })?;
    Ok(chains)
}

// ---------------------------------------------------------------------------
// Unit tests of the pure part
// ---------------------------------------------------------------------------

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> IpNetwork {
        s.parse().unwrap()
    }

    fn cat(parts: &[&[u8]]) -> Vec<u8> {
        parts.concat()
    }

    #[test]
    fn attr_is_padded_and_len_is_unpadded() {
        let mut b = Vec::new();
        put_attr(&mut b, 7, b"abcde");
        assert_eq!(b.len(), 12);
        assert_eq!(ne_u16(&b), 9);
        assert_eq!(ne_u16(&b[2..]), 7);
        assert_eq!(&b[4..9], b"abcde");
        assert_eq!(&b[9..], &[0, 0, 0]);

        let mut b = Vec::new();
        put_strz(&mut b, 1, "dbgb");
        // nft's own bytes for NFTA_TABLE_NAME "dbgb"
        assert_eq!(b, [9, 0, 1, 0, b'd', b'b', b'g', b'b', 0, 0, 0, 0]);

        let mut b = Vec::new();
        put_strz(&mut b, 1, "abc");
        assert_eq!(b.len(), 8);
        assert_eq!(ne_u16(&b), 8);
    }

    #[test]
    fn nest_len_covers_children_and_sets_flag() {
        let mut b = vec![0xaa; 4]; // unrelated prefix
        let n = nest_start(&mut b, NFTA_CHAIN_HOOK);
        put_be32(&mut b, NFTA_HOOK_HOOKNUM, 0);
        put_be32(&mut b, NFTA_HOOK_PRIORITY, (-300i32) as u32);
        nest_end(&mut b, n);
        assert_eq!(ne_u16(&b[4..]), 20);
        assert_eq!(ne_u16(&b[6..]), NFTA_CHAIN_HOOK | NLA_F_NESTED);
        // priority -300 big-endian, as nft sends it
        assert_eq!(&b[b.len() - 4..], &[0xff, 0xff, 0xfe, 0xd4]);
        let attrs = parse_attrs(&b[4..]);
        assert_eq!(attrs.len(), 1);
        assert_eq!(attrs[0].0, NFTA_CHAIN_HOOK);
        assert_eq!(parse_attrs(attrs[0].1).len(), 2);
    }

    #[test]
    fn batch_framing() {
        let mut batch = Batch::with_seq(100);
        batch.new_table(Family::Inet, "t").unwrap();
        batch.new_base_chain(Family::Inet, "t", "c", "nat", NF_INET_POST_ROUTING, 100).unwrap();
        batch.flush_chain(Family::Inet, "t", "c").unwrap();
        batch.new_rule(Family::Inet, "t", "c", &masquerade_exprs(net("10.0.0.0/8")), Some("hi")).unwrap();
        let (bytes, begin, ops) = batch.finish();
        assert_eq!(begin, 100);
        assert_eq!(ops.iter().map(|o| o.0).collect::<Vec<_>>(), [101, 102, 103, 104]);
        assert_eq!(ops[1].1, "add chain c in table inet t");

        let msgs = parse_msgs(&bytes).unwrap();
        let total: usize = msgs.iter().map(|m| align4(m.payload.len() + NLMSG_HDRLEN)).sum();
        assert_eq!(total, bytes.len());
        assert_eq!(msgs.len(), 6);

        let (first, last) = (msgs[0], msgs[5]);
        assert_eq!((first.ty, first.seq, first.flags), (0x10, 100, NLM_F_REQUEST));
        assert_eq!(first.payload, [0, 0, 0, 10]); // AF_UNSPEC, v0, res_id be16 10
        assert_eq!((last.ty, last.seq), (0x11, 105));
        assert_eq!(last.payload, [0, 0, 0, 10]);

        let types: Vec<u16> = msgs[1..5].iter().map(|m| m.ty).collect();
        assert_eq!(types, [0x0a00, 0x0a03, 0x0a08, 0x0a06]);
        for m in &msgs[1..5] {
            assert_ne!(m.flags & NLM_F_ACK, 0);
            assert_eq!(&m.payload[..4], &[NFPROTO_INET, 0, 0, 0]);
        }
        // no EXCL on the creating messages, APPEND on the rule
        assert_eq!(msgs[1].flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE);
        assert_eq!(msgs[2].flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE);
        assert_eq!(msgs[3].flags, NLM_F_REQUEST | NLM_F_ACK);
        assert_eq!(msgs[4].flags, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_APPEND);
        // the flush carries exactly table + chain
        let flush = parse_attrs(&msgs[3].payload[4..]);
        assert_eq!(flush.iter().map(|a| a.0).collect::<Vec<_>>(), [NFTA_RULE_TABLE, NFTA_RULE_CHAIN]);
        // the rule carries its comment
        let rule = rule_of(msgs[4].payload).unwrap();
        assert_eq!((rule.table.as_str(), rule.chain.as_str()), ("t", "c"));
        assert_eq!(rule.comment().as_deref(), Some("hi"));
        // and what we write decodes back to what we meant
        assert_eq!(rule.exprs, Some(masquerade_exprs(net("10.0.0.0/8"))));
    }

    #[rustfmt::skip]
    /// Byte-for-byte what `nft --debug=mnl` (1.0.6) sends for
    /// `iifname "veth1"` / `ether saddr != 02:00:00:00:00:01 drop comment "x"`.
    #[test]
    fn expressions_match_nft_bytes() {
        let exprs = macspoof_exprs("veth1", [2, 0, 0, 0, 0, 1]).unwrap();
        let mut b = Vec::new();
        put_expr(&mut b, &exprs[0]);
        let meta = cat(&[
            &[36, 0, 1, 0x80],
            &[9, 0, 1, 0], b"meta", &[0, 0, 0, 0],
            &[20, 0, 2, 0x80],
            &[8, 0, 2, 0], &[0, 0, 0, 6],
            &[8, 0, 1, 0], &[0, 0, 0, 1],
        ]);
        assert_eq!(b, meta);

        let mut b = Vec::new();
        put_expr(&mut b, &exprs[3]);
        let cmp = cat(&[
            &[48, 0, 1, 0x80],
            &[8, 0, 1, 0], b"cmp\0",
            &[36, 0, 2, 0x80],
            &[8, 0, 1, 0], &[0, 0, 0, 1],
            &[8, 0, 2, 0], &[0, 0, 0, 1],
            &[16, 0, 3, 0x80],
            &[10, 0, 1, 0], &[2, 0, 0, 0, 0, 1, 0, 0],
        ]);
        assert_eq!(b, cmp);

        let mut b = Vec::new();
        put_expr(&mut b, &exprs[4]);
        let imm = cat(&[
            &[48, 0, 1, 0x80],
            &[14, 0, 1, 0], b"immediate\0\0\0",
            &[28, 0, 2, 0x80],
            &[8, 0, 1, 0], &[0, 0, 0, 0],
            &[16, 0, 2, 0x80],
            &[12, 0, 2, 0x80],
            &[8, 0, 1, 0], &[0, 0, 0, 0],
        ]);
        assert_eq!(b, imm);

        assert_eq!(comment_userdata("x").unwrap(), [0, 2, b'x', 0]);
    }

    #[test]
    fn prefix_encoding_follows_nft() {
        // byte-aligned: load only the prefix bytes
        let e = prefix_match(12, "10.99.0.0".parse().unwrap(), 24, NFT_CMP_EQ);
        assert_eq!(
            e,
            [Expr::Payload { base: 1, offset: 12, len: 3 }, Expr::Cmp { op: NFT_CMP_EQ, data: vec![10, 99, 0] },]
        );
        // unaligned: whole field + mask
        let e = prefix_match(12, "10.96.0.0".parse().unwrap(), 12, NFT_CMP_EQ);
        assert_eq!(e[0], Expr::Payload { base: 1, offset: 12, len: 4 });
        assert_eq!(e[1], Expr::Bitwise { mask: vec![0xff, 0xf0, 0, 0] });
        assert_eq!(e[2], Expr::Cmp { op: NFT_CMP_EQ, data: vec![10, 96, 0, 0] });
        // /0: zero mask, never a zero-length load
        let e = prefix_match(16, "0.0.0.0".parse().unwrap(), 0, NFT_CMP_NEQ);
        assert_eq!(e[1], Expr::Bitwise { mask: vec![0; 4] });
        // /32 and /128 compare everything
        let e = prefix_match(24, "fd00::1".parse().unwrap(), 128, NFT_CMP_NEQ);
        assert_eq!(e[0], Expr::Payload { base: 1, offset: 24, len: 16 });
        let e = prefix_match(24, "fd00::".parse().unwrap(), 60, NFT_CMP_EQ);
        assert_eq!(e[1], Expr::Bitwise { mask: [vec![0xff; 7], vec![0xf0], vec![0; 8]].concat() });
    }

    #[test]
    fn masquerade_rule_shape() {
        let e = masquerade_exprs(net("10.99.0.7/24"));
        assert_eq!(e[0], Expr::Meta { key: NFT_META_NFPROTO });
        assert_eq!(e[1], Expr::Cmp { op: NFT_CMP_EQ, data: vec![NFPROTO_IPV4] });
        // host bits are cleared
        assert_eq!(e[3], Expr::Cmp { op: NFT_CMP_EQ, data: vec![10, 99, 0] });
        assert_eq!(e[4], Expr::Payload { base: 1, offset: 16, len: 3 });
        assert_eq!(e[5], Expr::Cmp { op: NFT_CMP_NEQ, data: vec![10, 99, 0] });
        // 224.0.0.0/4
        assert_eq!(e[7], Expr::Bitwise { mask: vec![0xf0, 0, 0, 0] });
        assert_eq!(e[8], Expr::Cmp { op: NFT_CMP_NEQ, data: vec![224, 0, 0, 0] });
        assert_eq!(e.last(), Some(&Expr::Masq));

        let e = masquerade_exprs(net("fd00:99::/64"));
        assert_eq!(e[1], Expr::Cmp { op: NFT_CMP_EQ, data: vec![NFPROTO_IPV6] });
        assert_eq!(e[2], Expr::Payload { base: 1, offset: 8, len: 8 });
        assert_eq!(e[4], Expr::Payload { base: 1, offset: 24, len: 8 });
        // ff00::/8
        assert_eq!(e[6], Expr::Payload { base: 1, offset: 24, len: 1 });
        assert_eq!(e[7], Expr::Cmp { op: NFT_CMP_NEQ, data: vec![0xff] });
    }

    #[test]
    fn masq_expr_has_no_data() {
        let mut b = Vec::new();
        put_expr(&mut b, &Expr::Masq);
        assert_eq!(b, [[16, 0, 1, 0x80], [9, 0, 1, 0], *b"masq", [0, 0, 0, 0]].concat());
    }

    #[test]
    fn chain_name_is_stable_and_canonical() {
        let a = masq_chain_name(net("10.99.0.0/24"));
        assert_eq!(a, masq_chain_name(net("10.99.0.42/24")));
        assert_ne!(a, masq_chain_name(net("10.99.1.0/24")));
        assert_eq!(a.len(), 13);
        // FNV-1a reference values
        assert_eq!(fnv1a32(b""), 0x811c_9dc5);
        assert_eq!(fnv1a32(b"a"), 0xe40c_292c);
        assert_eq!(a, format!("masq_{:08x}", fnv1a32(b"10.99.0.0/24")));
    }

    #[test]
    fn validation() {
        let mut b = Batch::new();
        assert!(matches!(b.new_table(Family::Inet, ""), Err(NftError::Invalid(_))));
        assert!(matches!(b.new_table(Family::Inet, &"x".repeat(256)), Err(NftError::Invalid(_))));
        assert!(b.new_table(Family::Inet, &"x".repeat(255)).is_ok());
        assert!(matches!(macspoof_exprs("0123456789abcdef", [0; 6]), Err(NftError::Invalid(_))));
        assert!(macspoof_exprs("0123456789abcde", [0; 6]).is_ok());
        assert!(comment_userdata(&"c".repeat(MAX_COMMENT_LEN)).is_ok());
        assert!(comment_userdata(&"c".repeat(MAX_COMMENT_LEN + 1)).is_err());
        let u = comment_userdata(&"c".repeat(MAX_COMMENT_LEN)).unwrap();
        assert_eq!(u.len(), NFT_USERDATA_MAXLEN);
    }

    #[test]
    fn comment_parsing() {
        assert_eq!(parse_comment(&[0, 3, b'h', b'i', 0]).as_deref(), Some("hi"));
        // other TLVs first (e.g. ebtables compat), comment later
        assert_eq!(parse_comment(&[1, 1, 9, 0, 2, b'x', 0]).as_deref(), Some("x"));
        assert_eq!(parse_comment(&[1, 1, 9]), None);
        assert_eq!(parse_comment(&[0, 9, b'x']), None); // truncated
    }

    #[test]
    fn ack_parsing() {
        // NLMSG_ERROR answering seq 7 with -EEXIST, followed by a plain ack for seq 8
        let mut d = Vec::new();
        for (seq, err) in [(7u32, -libc::EEXIST), (8, 0)] {
            d.extend_from_slice(&36u32.to_ne_bytes());
            d.extend_from_slice(&NLMSG_ERROR.to_ne_bytes());
            d.extend_from_slice(&0u16.to_ne_bytes());
            d.extend_from_slice(&seq.to_ne_bytes());
            d.extend_from_slice(&0u32.to_ne_bytes());
            d.extend_from_slice(&err.to_ne_bytes());
            // echoed original header
            d.extend_from_slice(&20u32.to_ne_bytes());
            d.extend_from_slice(&nft_type(NFT_MSG_NEWCHAIN).to_ne_bytes());
            d.extend_from_slice(&0u16.to_ne_bytes());
            d.extend_from_slice(&seq.to_ne_bytes());
            d.extend_from_slice(&0u32.to_ne_bytes());
        }
        let msgs = parse_msgs(&d).unwrap();
        assert_eq!(msgs.len(), 2);
        assert_eq!(parse_error(msgs[0].payload).unwrap(), (libc::EEXIST, 7));
        assert_eq!(parse_error(msgs[1].payload).unwrap(), (0, 8));
        assert_eq!(parse_msgs(&d[..46]).unwrap().len(), 1); // trailing partial header ignored
        assert!(parse_msgs(&d[..30]).is_err()); // truncated message
        let mut bad = d.clone();
        bad[0] = 200;
        assert!(parse_msgs(&bad).is_err());
    }

    #[test]
    fn error_display_names_op_and_errno() {
        let e = NftError::Kernel { op: "add chain masq_x in table inet cni_br_ab12".into(), errno: libc::EEXIST };
        assert_eq!(e.to_string(), "add chain masq_x in table inet cni_br_ab12: EEXIST");
        assert_eq!(e.errno(), Some(libc::EEXIST));
        let e = NftError::Kernel { op: "x".into(), errno: 4095 };
        assert_eq!(e.to_string(), "x: errno 4095");
    }

    #[test]
    fn decode_accepts_kernel_extras_and_rejects_foreign_exprs() {
        // a kernel dump of bitwise carries NFTA_BITWISE_OP (0 = mask/xor)
        let mut b = Vec::new();
        let elem = nest_start(&mut b, NFTA_LIST_ELEM);
        put_strz(&mut b, NFTA_EXPR_NAME, "bitwise");
        let d = nest_start(&mut b, NFTA_EXPR_DATA);
        put_be32(&mut b, NFTA_BITWISE_SREG, NFT_REG_1);
        put_be32(&mut b, NFTA_BITWISE_DREG, NFT_REG_1);
        put_be32(&mut b, NFTA_BITWISE_LEN, 4);
        put_be32(&mut b, NFTA_BITWISE_OP, 0);
        put_data_value(&mut b, NFTA_BITWISE_MASK, &[0xf0, 0, 0, 0]);
        put_data_value(&mut b, NFTA_BITWISE_XOR, &[0; 4]);
        nest_end(&mut b, d);
        nest_end(&mut b, elem);
        let want = Expr::Bitwise { mask: vec![0xf0, 0, 0, 0] };
        assert_eq!(decode_exprs(&b), Some(vec![want]));

        // masq with explicit zero flags is still plain masq; with flags it is not
        let masq = |flags: Option<u32>| {
            let mut b = Vec::new();
            let elem = nest_start(&mut b, NFTA_LIST_ELEM);
            put_strz(&mut b, NFTA_EXPR_NAME, "masq");
            if let Some(f) = flags {
                let d = nest_start(&mut b, NFTA_EXPR_DATA);
                put_be32(&mut b, NFTA_MASQ_FLAGS, f);
                nest_end(&mut b, d);
            }
            nest_end(&mut b, elem);
            decode_exprs(&b)
        };
        assert_eq!(masq(None), Some(vec![Expr::Masq]));
        assert_eq!(masq(Some(0)), Some(vec![Expr::Masq]));
        assert_eq!(masq(Some(4)), None); // NF_NAT_RANGE_PROTO_RANDOM

        // a jump verdict is not a plain verdict
        let mut b = Vec::new();
        let elem = nest_start(&mut b, NFTA_LIST_ELEM);
        put_strz(&mut b, NFTA_EXPR_NAME, "immediate");
        let d = nest_start(&mut b, NFTA_EXPR_DATA);
        put_be32(&mut b, NFTA_IMMEDIATE_DREG, NFT_REG_VERDICT);
        let data = nest_start(&mut b, NFTA_IMMEDIATE_DATA);
        let v = nest_start(&mut b, NFTA_DATA_VERDICT);
        put_be32(&mut b, NFTA_VERDICT_CODE, (-3i32) as u32);
        put_strz(&mut b, NFTA_VERDICT_CHAIN, "elsewhere");
        nest_end(&mut b, v);
        nest_end(&mut b, data);
        nest_end(&mut b, d);
        nest_end(&mut b, elem);
        assert_eq!(decode_exprs(&b), None);

        // unknown expressions make the whole rule foreign
        let mut b = Vec::new();
        put_expr(&mut b, &Expr::Masq);
        let elem = nest_start(&mut b, NFTA_LIST_ELEM);
        put_strz(&mut b, NFTA_EXPR_NAME, "counter");
        nest_end(&mut b, elem);
        assert_eq!(decode_exprs(&b), None);
    }

    #[test]
    fn every_rule_we_write_decodes_to_itself() {
        for s in ["10.0.0.0/8", "10.96.0.0/12", "0.0.0.0/0", "10.1.2.3/32", "fd00::/60", "::/0"] {
            let exprs = masquerade_exprs(net(s));
            let mut b = Vec::new();
            for e in &exprs {
                put_expr(&mut b, e);
            }
            assert_eq!(decode_exprs(&b), Some(exprs), "{s}");
        }
        let exprs = macspoof_exprs("veth0", [2, 0, 0, 0, 0, 1]).unwrap();
        let mut b = Vec::new();
        for e in &exprs {
            put_expr(&mut b, e);
        }
        assert_eq!(decode_exprs(&b), Some(exprs));
    }

    #[test]
    fn chain_parsing() {
        let mut b = Batch::with_seq(1);
        b.new_base_chain(Family::Bridge, "t", "c", "filter", NF_BR_PRE_ROUTING, -300).unwrap();
        let (bytes, _, _) = b.finish();
        let msgs = parse_msgs(&bytes).unwrap();
        let c = chain_of(msgs[1].payload).unwrap();
        assert_eq!(
            c,
            ChainInfo {
                table: "t".into(),
                name: "c".into(),
                hook: Some((NF_BR_PRE_ROUTING, -300)),
                chain_type: Some("filter".into()),
                policy: Some(NF_ACCEPT),
            }
        );
    }

    #[test]
    fn dump_request_shape() {
        let r = dump_request(NFT_MSG_GETRULE, Family::Bridge, 2, &[(NFTA_RULE_TABLE, "t")]);
        let m = parse_msgs(&r).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].ty, 0x0a07);
        assert_eq!(m[0].flags, NLM_F_REQUEST | NLM_F_DUMP);
        assert_eq!(m[0].payload[0], NFPROTO_BRIDGE);
    }
}
