//! I/O: the `NETLINK_NETFILTER` socket, sending one batch and collecting its
//! acks, and dumps (with their interruption by concurrent ruleset changes).

use std::cell::RefCell;
use std::io;
use std::os::fd::AsRawFd;
use std::time::Duration;

use netlink_sys::{protocols::NETLINK_NETFILTER, Socket, SocketAddr};

use super::build::{dump_request, Batch};
use super::parse::{chain_of, ne_u32, parse_error, parse_msgs, rule_of, RuleInfo};
use super::wire::*;
use super::{Family, NftError, NftResult};

pub(super) const RECV_BUF: usize = 64 * 1024;
/// Sequence numbers of dump requests; batches start at 1.
pub(super) const DUMP_SEQ: u32 = 0x1000;

fn new_socket() -> NftResult<Socket> {
    let mut sock = Socket::new(NETLINK_NETFILTER)?;
    sock.bind_auto()?;
    sock.connect(&SocketAddr::new(0, 0))?;
    // Errors echo only the failing header, not the whole message (>= 4.3);
    // purely an optimisation, so a refusal is ignored.
    let _ = sock.set_cap_ack(true);
    Ok(sock)
}

thread_local! {
    /// The socket of the [`Session`] running on this thread: `None` outside
    /// [`Session::run`], `Some(None)` while its socket is in use (or not
    /// opened yet).
    static SESSION: RefCell<Option<Option<Socket>>> = const { RefCell::new(None) };
}

/// A socket for one operation: the running [`Session`]'s (given back to it
/// when dropped), or a fresh one (closed when dropped).
pub(super) struct Sock(Option<Socket>);

impl std::ops::Deref for Sock {
    type Target = Socket;
    fn deref(&self) -> &Socket {
        self.0.as_ref().expect("a socket until dropped")
    }
}

impl Drop for Sock {
    fn drop(&mut self) {
        let Some(sock) = self.0.take() else { return };
        // back to the session if one runs and has no socket; else closed here
        let _ = SESSION.try_with(move |s| match s.borrow_mut().as_mut() {
            Some(slot @ None) => *slot = Some(sock),
            _ => drop(sock),
        });
    }
}

/// The socket of the running session (leftover replies of an earlier
/// operation that failed half-way read and dropped), or a fresh one.
pub(super) fn open_socket() -> NftResult<Sock> {
    let cached = SESSION.try_with(|s| s.borrow_mut().as_mut().and_then(Option::take)).ok().flatten();
    if let Some(sock) = cached {
        let mut buf = Vec::with_capacity(RECV_BUF);
        for _ in 0..10_000 {
            match recv_into(&sock, &mut buf, libc::MSG_DONTWAIT) {
                Ok(true) => continue,
                Ok(false) => return Ok(Sock(Some(sock))),
                Err(_) => break,
            }
        }
        // unreadable, or replies without end: closed, a fresh one instead
    }
    Ok(Sock(Some(new_socket()?)))
}

/// The network namespace of the calling thread (device and inode of its
/// nsfs file).
fn netns_id() -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata("/proc/thread-self/ns/net").ok().map(|m| (m.dev(), m.ino()))
}

/// One `NETLINK_NETFILTER` socket kept open across operations: every
/// operation of this module run inside [`Session::run`] (batches, dumps,
/// gets) uses it instead of opening and closing its own.
///
/// Why: when a netfilter netlink socket is closed, nf_tables waits for its
/// pending transaction cleanup (`nft_rcv_nl_event` flushes the destroy
/// work, which waits for an RCU grace period) whenever a recent commit
/// deleted anything: a rule (a flushed chain), an element, a chain. That
/// wait, 6-20 ms on the development VM, was most of a small delta's
/// "commit". Kept open, the cleanup runs in the background.
///
/// The socket belongs to the network namespace it was opened in: `run` on
/// a thread of another namespace opens a new one. Dropping the session
/// closes the socket (and may wait then).
#[derive(Default)]
pub struct Session {
    sock: Option<((u64, u64), Socket)>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session").field("open", &self.sock.is_some()).finish()
    }
}

impl Session {
    pub fn new() -> Session {
        Session::default()
    }

    /// Whether the session holds a socket (between two `run`s).
    pub fn is_open(&self) -> bool {
        self.sock.is_some()
    }

    /// Runs `f` with this session's socket for the calling thread's nftables
    /// operations. Inside another session's `run` on the same thread, `f`
    /// simply runs in that one.
    pub fn run<T>(&mut self, f: impl FnOnce() -> T) -> T {
        if SESSION.with(|s| s.borrow().is_some()) {
            return f();
        }
        let ns = netns_id();
        let sock = match self.sock.take() {
            Some((id, sock)) if Some(id) == ns => Some(sock),
            _ => None,
        };
        struct Restore<'a>(&'a mut Session, Option<(u64, u64)>);
        impl Drop for Restore<'_> {
            fn drop(&mut self) {
                let sock = SESSION.with(|s| s.borrow_mut().take()).flatten();
                self.0.sock = self.1.zip(sock);
            }
        }
        SESSION.with(|s| *s.borrow_mut() = Some(sock));
        let _restore = Restore(self, ns);
        f()
    }
}

/// Receives one datagram into `buf`. `Ok(false)` when non-blocking and
/// nothing is queued.
pub(super) fn recv_into(sock: &Socket, buf: &mut Vec<u8>, flags: libc::c_int) -> NftResult<bool> {
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

pub(super) fn wait_readable(sock: &Socket, timeout: Duration) -> NftResult<bool> {
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
pub(super) fn execute(batch: Batch, enoent_ok: bool) -> NftResult<()> {
    execute_on(&*open_socket()?, batch, enoent_ok)
}

pub(super) fn execute_on(sock: &Socket, batch: Batch, enoent_ok: bool) -> NftResult<()> {
    let (bytes, begin_seq, ops) = batch.finish();
    grow_buffers(sock, bytes.len(), ops.len());
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
            // Messages are numbered one after another from the batch begin: the ack's
            // message is found by subtraction (a search per ack is quadratic in the batch).
            let idx = seq.wrapping_sub(begin_seq).wrapping_sub(1) as usize;
            if ops.get(idx).is_none_or(|(s, _)| *s != seq) {
                continue;
            }
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

/// A batch is one datagram, refused with EMSGSIZE beyond the socket's send
/// buffer (~208 KiB by default), and every message is acked, so a large
/// batch also needs room for its acks: raise both buffers (as nft does)
/// when the defaults are too small. Failure only leaves the defaults,
/// and the send then reports the real error.
fn grow_buffers(sock: &Socket, batch_bytes: usize, msgs: usize) {
    const DEFAULT: usize = 200 * 1024;
    // An ack of a capped message is nlmsghdr + error + echoed nlmsghdr, but
    // what counts against the receive buffer is its skb's truesize, about
    // 800 bytes on 6.18: 1 KiB each (which the kernel doubles). At 512 a
    // batch of 250–400 messages fell between the default buffer and the
    // raise, and the kernel dropped acks with ENOBUFS.
    let acks = msgs * 1024;
    let set = |opt: libc::c_int, want: usize| {
        if want <= DEFAULT {
            return;
        }
        let v = libc::c_int::try_from(want).unwrap_or(libc::c_int::MAX);
        // SAFETY: a valid socket fd and a c_int option value of the right size.
        unsafe {
            libc::setsockopt(
                sock.as_raw_fd(),
                libc::SOL_SOCKET,
                opt,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            );
        }
    };
    set(libc::SO_SNDBUFFORCE, batch_bytes + 64 * 1024);
    set(libc::SO_RCVBUFFORCE, acks);
}

pub(super) enum DumpError {
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
pub(super) fn dump(
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
pub(super) fn chain_rules(sock: &Socket, family: Family, table: &str, chain: &str) -> Result<Vec<RuleInfo>, DumpError> {
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

pub(super) fn list_chains_once(
    sock: &Socket,
    family: Family,
    table: &str,
) -> Result<Vec<(String, Option<String>)>, DumpError> {
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
