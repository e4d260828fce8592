//! nftables over netlink, hand-written: no `nft` exec, no C library.
//!
//! One concern per module:
//!
//! * [`wire`]: the kernel's numbers (message types, attributes, flags);
//! * [`rules`]: the rules we install, as expression lists (data only);
//! * [`build`]: requests and batches appended to a `Vec<u8>`, pure, so the
//!   wire format is unit-tested byte for byte;
//! * [`parse`]: netlink framing, acks, chains, rules and expressions of
//!   the kernel's replies, pure as well;
//! * [`io`]: the `NETLINK_NETFILTER` socket in the calling thread's network
//!   namespace, one batch and its acks, dumps and their retry;
//! * [`state`]: desired state of a table ([`TableState`]) and the
//!   transaction between two states; read-back of tables, rule counts
//!   and verdict maps;
//! * [`txn`]: the general transaction API ([`Transaction`]): tables,
//!   chains, sets, interval sets, verdict maps, elements and rules from
//!   [`Match`]es, in one atomic batch;
//! * this file: the public operations, composed from the above.
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
//!
//! Why no crate: `nftnl` binds the C libnftnl (a C dependency on every
//! node), `nftables` drives the `nft` binary (an exec per ADD),
//! `rustables` is GPL-3.0 (this workspace is Apache-2.0) and `nf_tables`
//! 0.1 is an early single-author release. What we use is small: the
//! table, chain, rule, set and element messages, chain and rule dumps, and
//! eleven expression types (meta, payload, bitwise, cmp, range, immediate
//! with a verdict and optional chain, lookup, ct, counter, log, masq).

mod build;
mod io;
mod parse;
mod rules;
pub mod state;
#[cfg(test)]
mod tests;
mod txn;
mod wire;

pub use io::Session;
pub use state::{ChainState, MapState, SetState, TableState};
pub use txn::{
    proto, Action, AddrField, BaseChain, ChainPolicy, CtStates, Dir, Hook, IfDir, IpVersion, MarkStmt, Match, Rule,
    SetDef, SetElem, SetKey, TableRef, Transaction, Verdict,
};
pub use wire::MAX_COMMENT_LEN;

use ipnetwork::IpNetwork;
use netlink_sys::Socket;

use build::{check_name, comment_userdata, get_request, rule_get_request, Batch};
use io::{chain_rules, dump, execute, execute_on, list_chains_once, open_socket, DumpError, DUMP_SEQ};
use parse::{chain_of, rule_of, ChainInfo, RuleInfo};
use rules::{canonical_cidr, fnv1a32, macspoof_exprs, masquerade_exprs, Expr};
use wire::*;

/// Errors of the nftables module.
#[derive(Debug, thiserror::Error)]
pub enum NftError {
    /// Socket-level failure (open, send, receive).
    #[error("nftables netlink I/O: {0}")]
    Io(#[from] std::io::Error),
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

/// nftables address family of a table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
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
    ensure_masquerade_known(table, network, subnet, None).map(|_| ())
}

/// [`ensure_masquerade`] for a caller that remembers where the rule was:
/// `known` is a handle an earlier call returned. When the rule is still in
/// place at that handle, the check is two single-object gets instead of a
/// dump and a get, and nothing is written. Any other state (table deleted,
/// chain flushed, rule replaced, chain policy changed, a stale or foreign
/// handle) falls back to the full check and repair of [`ensure_masquerade`].
///
/// Returns the handle to pass next time (`None` if it could not be read
/// back after a write).
pub fn ensure_masquerade_known(
    table: &str,
    network: &str,
    subnet: IpNetwork,
    known: Option<u64>,
) -> NftResult<Option<u64>> {
    let chain = masq_chain_name(subnet);
    let comment = format!("cni-bridge net={network} subnet={}", canonical_cidr(subnet));
    ensure_single_rule(
        &SingleRule {
            family: Family::Inet,
            table,
            chain: &chain,
            chain_type: "nat",
            hooknum: NF_INET_POST_ROUTING,
            priority: PRIO_SRCNAT,
            exprs: masquerade_exprs(subnet),
            comment: &comment,
        },
        known,
    )
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
    ensure_single_rule(
        &SingleRule {
            family: Family::Bridge,
            table,
            chain,
            chain_type: "filter",
            hooknum: NF_BR_PRE_ROUTING,
            priority: PRIO_MACSPOOF,
            exprs: macspoof_exprs(host_ifname, mac)?,
            comment: &comment,
        },
        None,
    )
    .map(|_| ())
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

/// Makes `want.chain` hold exactly `want`'s rule; returns the rule's handle
/// (for [`ensure_masquerade_known`]'s next call), `None` if it could not be
/// read back after writing.
///
/// Fastest path, when the caller passes the `known` handle of an earlier
/// call: two single-object gets (the rule by handle, then the chain), no
/// dump. A handle is never reused within a table's lifetime, so a rule that
/// was deleted, flushed or replaced answers ENOENT and we fall through.
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
fn ensure_single_rule(want: &SingleRule<'_>, known: Option<u64>) -> NftResult<Option<u64>> {
    let SingleRule { family, table, chain, .. } = *want;
    // validate everything before any I/O
    check_name("table", table)?;
    check_name("chain", chain)?;
    let userdata = comment_userdata(want.comment)?;

    let sock = open_socket()?;
    if let Some(handle) = known {
        // Any failure here only means "not proven": the full check decides.
        if let Ok(true) = retry_interrupted(|| in_place_at(&sock, want, &userdata, handle)) {
            return Ok(Some(handle));
        }
    }
    // An unreadable chain is not fatal: the batch below rewrites it and
    // reports a meaningful error if the kernel objects. A dump interrupted
    // by someone else's ruleset change (other tables, other plugins) is
    // retried first, so that a correct rule is not rewritten for nothing.
    match retry_interrupted(|| already_in_place(&sock, want, &userdata)) {
        Ok(Some(handle)) => return Ok(Some(handle)),
        Ok(None) | Err(DumpError::Interrupted) => {}
        Err(DumpError::Nft(NftError::Kernel { .. })) => {}
        Err(DumpError::Nft(e)) => return Err(e),
    }

    let mut b = Batch::new();
    b.new_table(family, table)?;
    b.new_base_chain(family, table, chain, want.chain_type, want.hooknum, want.priority)?;
    b.flush_chain(family, table, chain)?;
    b.new_rule(family, table, chain, &want.exprs, Some(want.comment))?;
    execute_on(&sock, b, false)?;
    // The handle the kernel gave the new rule; not knowing it only costs the
    // next caller the full check.
    Ok(retry_interrupted(|| already_in_place(&sock, want, &userdata)).ok().flatten())
}

/// Whether the chain is the wanted base chain and holds exactly the wanted
/// rule: one rule dump, then (only if that matches) one chain get. The
/// rule's handle if so.
fn already_in_place(sock: &Socket, want: &SingleRule<'_>, userdata: &[u8]) -> Result<Option<u64>, DumpError> {
    let SingleRule { family, table, chain, .. } = *want;
    let rules = chain_rules(sock, family, table, chain)?;
    let [only] = rules.as_slice() else {
        return Ok(None);
    };
    if !is_wanted_rule(only, want, userdata) {
        return Ok(None);
    }
    // Handles start at 1: a rule without one (never seen) is not found by handle.
    Ok(get_chain(sock, want)?.is_some_and(|c| is_wanted_chain(&c, want)).then_some(only.handle.unwrap_or(0)))
}

/// Whether rule `handle` of the chain is exactly the wanted rule and the
/// chain the wanted base chain: two single-object gets.
///
/// The chain may hold other rules only if someone added them after the
/// handle was recorded; nothing of ours does, and their presence does not
/// make our rule less in place.
fn in_place_at(sock: &Socket, want: &SingleRule<'_>, userdata: &[u8], handle: u64) -> Result<bool, DumpError> {
    let SingleRule { family, table, chain, .. } = *want;
    let req = rule_get_request(family, DUMP_SEQ + 4, table, chain, handle);
    let what = format!("get rule {handle} of chain {chain} in table {family} {table}");
    let mut rule = None;
    dump(sock, &req, nft_type(NFT_MSG_NEWRULE), &what, |p| {
        rule = rule_of(p);
    })?;
    if !rule.is_some_and(|r| r.handle == Some(handle) && is_wanted_rule(&r, want, userdata)) {
        return Ok(false);
    }
    // A base chain is never a jump target, so its use count is its number
    // of rules: 1 means nobody added a rule next to ours (one inserted
    // before it could accept packets before they reach the masquerade).
    Ok(get_chain(sock, want)?.is_some_and(|c| is_wanted_chain(&c, want) && c.use_count == Some(1)))
}

fn is_wanted_rule(rule: &RuleInfo, want: &SingleRule<'_>, userdata: &[u8]) -> bool {
    rule.table == want.table
        && rule.chain == want.chain
        && rule.exprs.as_deref() == Some(want.exprs.as_slice())
        && rule.userdata.as_deref() == Some(userdata)
}

/// The chain as the kernel has it (one single-object get), `None` if absent.
fn get_chain(sock: &Socket, want: &SingleRule<'_>) -> Result<Option<ChainInfo>, DumpError> {
    let SingleRule { family, table, chain, .. } = *want;
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
    Ok(info)
}

/// Whether the chain is the wanted base chain (type, hook, priority, policy accept).
fn is_wanted_chain(c: &ChainInfo, want: &SingleRule<'_>) -> bool {
    c.hook == Some((want.hooknum, want.priority))
        && c.chain_type.as_deref() == Some(want.chain_type)
        && c.policy == Some(NF_ACCEPT)
}
