//! A small pool of open connections, so that an RPC does not pay for a TCP
//! connect, an NFSv4 SETCLIENTID and a mount of the export every time
//! (0.7–1.7 ms against a local server, against ~0.12 ms for a call on an
//! open connection).
//!
//! - **Bounded**: at most [`MAX_IDLE_PER_TARGET`] idle connections per
//!   target (changed with [`set_max_idle`]; 0 turns pooling off) (server, export, port, version, timeout), and
//!   [`MAX_IDLE_TARGETS`] targets; a connection is only in the pool while
//!   nobody uses it, so a burst of parallel calls opens what it needs and
//!   keeps the newest few.
//! - **Never stale**: a connection is handed out again only if it was idle
//!   less than [`MAX_IDLE`] and connected less than [`MAX_AGE`] ago (libnfs
//!   does not renew the NFSv4 lease on its own; servers' leases are 30–90 s,
//!   so a connection is retired well before its client ID could expire),
//!   and its socket shows nothing pending: a server that restarted or closed
//!   the connection has made it readable (EOF or RST), and it is dropped.
//! - **Reconnect on error**: a connection on which a call failed with a
//!   transport error (timeout, reset, refused, broken pipe, a raw call given
//!   up on) is marked broken and never returned to the pool; the next call
//!   connects afresh. Errors from the server about the call itself (ENOENT,
//!   EEXIST, EACCES…) leave the connection in the pool.
//! - Each connection goes back with the root identity (0:0) restored.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{LazyLock, Mutex};
use std::time::{Duration, Instant};

use super::{Client, Result, Target};

/// Idle connections kept per target by default (`--nfs-idle-connections`).
pub const MAX_IDLE_PER_TARGET: usize = 4;
/// Targets with idle connections kept at once (the oldest go first).
pub const MAX_IDLE_TARGETS: usize = 32;
/// A connection idle longer than this is closed rather than reused.
pub const MAX_IDLE: Duration = Duration::from_secs(10);
/// A connection older than this is closed rather than reused.
pub const MAX_AGE: Duration = Duration::from_secs(20);

struct Idle {
    client: Client,
    since: Instant,
}

static IDLE: LazyLock<Mutex<HashMap<Target, Vec<Idle>>>> = LazyLock::new(Default::default);
static MAX_IDLE_NOW: AtomicUsize = AtomicUsize::new(MAX_IDLE_PER_TARGET);
static CONNECTS: AtomicU64 = AtomicU64::new(0);
static REUSES: AtomicU64 = AtomicU64::new(0);

/// Sets how many idle connections are kept per target; 0: none (every
/// call connects afresh, as before the pool existed).
pub fn set_max_idle(n: usize) {
    MAX_IDLE_NOW.store(n, Ordering::Relaxed);
    if n == 0 {
        clear();
    }
}

/// How many connections were opened and how many calls reused one, since
/// the process started (for tests and the benchmark).
pub fn counters() -> (u64, u64) {
    (CONNECTS.load(Ordering::Relaxed), REUSES.load(Ordering::Relaxed))
}

/// How many idle connections to `t` the pool holds.
pub fn idle(t: &Target) -> usize {
    IDLE.lock().unwrap_or_else(|e| e.into_inner()).get(t).map_or(0, Vec::len)
}

/// How many idle connections the pool holds, over all targets.
pub fn idle_total() -> usize {
    IDLE.lock().unwrap_or_else(|e| e.into_inner()).values().map(Vec::len).sum()
}

/// Closes every idle connection (e.g. before measuring connect costs).
pub fn clear() {
    let drained: Vec<Idle> = IDLE.lock().unwrap_or_else(|e| e.into_inner()).drain().flat_map(|(_, v)| v).collect();
    drop(drained);
}

/// A connection to `t`: an idle one that is still good, or a new one.
pub(super) fn take(t: &Target) -> Result<Client> {
    loop {
        let idle = {
            let mut map = IDLE.lock().unwrap_or_else(|e| e.into_inner());
            let found = map.get_mut(t).and_then(Vec::pop);
            if map.get(t).is_some_and(Vec::is_empty) {
                map.remove(t);
            }
            found
        };
        // Closed outside the lock: destroying a context may touch the socket.
        let Some(idle) = idle else { break };
        if idle.since.elapsed() < MAX_IDLE && idle.client.connected_at.elapsed() < MAX_AGE && idle.client.socket_quiet()
        {
            REUSES.fetch_add(1, Ordering::Relaxed);
            return Ok(idle.client);
        }
        tracing::debug!(
            target = idle.client.target(),
            "closing a pooled NFS connection: stale or closed by the server"
        );
    }
    CONNECTS.fetch_add(1, Ordering::Relaxed);
    Client::connect(t)
}

/// Gives `c` back for reuse, unless a transport error broke it.
pub(super) fn give_back(t: Target, mut c: Client) {
    if c.is_broken() {
        tracing::debug!(target = c.target(), "dropping an NFS connection after a transport error");
        return;
    }
    let max = MAX_IDLE_NOW.load(Ordering::Relaxed);
    if max == 0 {
        return;
    }
    c.set_credentials(0, 0);
    let mut evicted = Vec::new();
    {
        let mut map = IDLE.lock().unwrap_or_else(|e| e.into_inner());
        if !map.contains_key(&t) && map.len() >= MAX_IDLE_TARGETS {
            // Make room: the target whose newest idle connection is oldest.
            if let Some(oldest) = map.iter().min_by_key(|(_, v)| v.last().map(|i| i.since)).map(|(k, _)| k.clone()) {
                evicted.extend(map.remove(&oldest).unwrap_or_default());
            }
        }
        let list = map.entry(t).or_default();
        list.push(Idle { client: c, since: Instant::now() });
        while list.len() > max {
            evicted.push(list.remove(0));
        }
    }
    drop(evicted);
}
