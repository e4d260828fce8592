//! The agent's kernel side: makes the kernel's FIB hold what the BGP RIB
//! chose, under our own route protocol number, and nothing of anyone else's.
//!
//! Input is the RIB's output reduced to what the kernel needs: a prefix and
//! its new next hop, or `None` when it has no best route any more. Routes
//! are written in batches over one netlink socket ([`linux_net::route::batch`]).
//!
//! Ownership: every route we write carries [`PROTOCOL`]; deletes name it
//! too, and the kernel only deletes a route of that protocol. A prefix we
//! have not installed is *added* (never replaced), so a route another owner
//! (an admin, another daemon) put at the same key is refused with EEXIST and
//! left alone, and the refusal is reported for that prefix only.
//!
//! Graceful restart: [`Fib::reconcile_start`] adopts what a previous run
//! left under our protocol as *stale* and deletes nothing, so packets keep
//! flowing while sessions come back; [`Fib::sweep_stale`], called once the
//! sessions have sent End-of-RIB, deletes only the stale routes nothing
//! re-learned.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use linux_net::netlink::Netlink;
use linux_net::route::{self, Op, Route, RouteKind};

use crate::{Error, Result};

/// Our rtm_protocol, `ip route show proto 76`. Free in iproute2's
/// `/etc/iproute2/rt_protos` (0-4, 8-18, 42, 99, 186-192), FRR's
/// `rt_protos.d/frr.conf` (186-198), BIRD's 12 (`proto bird`, which Calico's
/// BIRD also uses) and the kernel's `RTPROT_*` list. 76 is ASCII 'L'.
pub const PROTOCOL: u8 = 76;

/// The main routing table.
pub const MAIN_TABLE: u32 = 254;

/// Where a learned prefix goes: the BGP next hop, and the link to reach it
/// by when the agent knows it (`onlink` for a next hop not in a connected
/// subnet of that link, e.g. a /32 peer address).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct NextHop {
    pub gw: IpAddr,
    pub oif: Option<u32>,
    pub onlink: bool,
}

impl NextHop {
    pub fn via(gw: IpAddr) -> NextHop {
        NextHop { gw, oif: None, onlink: false }
    }
}

/// One RIB decision: `prefix` now goes `via`, or (None) nowhere we know of.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub prefix: IpNetwork,
    pub via: Option<NextHop>,
}

/// A prefix the kernel refused: the others of the same call took effect.
#[derive(Debug)]
pub struct Failure {
    pub prefix: IpNetwork,
    pub error: linux_net::Error,
}

/// What one of our routes in the kernel is.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Target {
    Via(NextHop),
    Blackhole,
    /// Found at start in a shape we do not write: deleted as read back.
    Other(Box<Route>),
}

/// No next hop in an [`Entry`] field.
const NONE: u32 = u32::MAX;
/// [`Entry::installed`]: a blackhole of ours.
const BLACKHOLE: u32 = u32::MAX - 1;
/// [`Entry::installed`]: a route in [`Fib::other`].
const OTHER: u32 = u32::MAX - 2;

/// One prefix's state, 8 octets: the next hop the RIB chose for it and what the kernel holds,
/// each an index into [`NextHops`] (or [`NONE`] / [`BLACKHOLE`] / [`OTHER`]). 100k routes
/// share a handful of next hops, so a route costs its key and these two indices.
#[derive(Debug, Clone, Copy)]
struct Entry {
    learned: u32,
    installed: u32,
}

impl Entry {
    const EMPTY: Entry = Entry { learned: NONE, installed: NONE };

    fn is_empty(&self) -> bool {
        self.learned == NONE && self.installed == NONE
    }
}

/// The [`Entry`] of each prefix, IPv4 apart: an IPv4 key is its address and length (8 octets
/// with padding) where an `IpNetwork` takes 18 (20 with padding), so an IPv4 slot is 16 octets
/// instead of 28.
#[derive(Debug, Default)]
struct Entries {
    v4: HashMap<(u32, u8), Entry>,
    v6: HashMap<IpNetwork, Entry>,
}

// The per-route cost docs/cni-bgp.md quotes.
const _: () = assert!(std::mem::size_of::<((u32, u8), Entry)>() == 16);

impl Entries {
    fn get(&self, p: &IpNetwork) -> Option<Entry> {
        match p {
            IpNetwork::V4(n) => self.v4.get(&(u32::from(n.ip()), n.prefix())).copied(),
            IpNetwork::V6(_) => self.v6.get(p).copied(),
        }
    }

    /// Changes the entry of `p` (empty if it has none) with `f`; an entry left empty is removed.
    fn update(&mut self, p: IpNetwork, f: impl FnOnce(&mut Entry)) {
        match p {
            IpNetwork::V4(n) => update_in(&mut self.v4, (u32::from(n.ip()), n.prefix()), f),
            IpNetwork::V6(_) => update_in(&mut self.v6, p, f),
        }
    }
}

fn update_in<K: std::hash::Hash + Eq>(map: &mut HashMap<K, Entry>, k: K, f: impl FnOnce(&mut Entry)) {
    use std::collections::hash_map::Entry as Slot;
    match map.entry(k) {
        Slot::Occupied(mut o) => {
            f(o.get_mut());
            if o.get().is_empty() {
                o.remove();
            }
        }
        Slot::Vacant(v) => {
            let mut e = Entry::EMPTY;
            f(&mut e);
            if !e.is_empty() {
                v.insert(e);
            }
        }
    }
}

/// The next hops in use, each stored once and counted by the [`Entry`] fields naming it.
#[derive(Debug, Default)]
struct NextHops {
    list: Vec<(NextHop, u32)>,
    index: HashMap<NextHop, u32>,
    free: Vec<u32>,
}

impl NextHops {
    /// A reference to `nh` (interned).
    fn hold(&mut self, nh: &NextHop) -> u32 {
        if let Some(&i) = self.index.get(nh) {
            self.list[i as usize].1 += 1;
            return i;
        }
        let i = match self.free.pop() {
            Some(i) => {
                self.list[i as usize] = (nh.clone(), 1);
                i
            }
            None => {
                self.list.push((nh.clone(), 1));
                // Far fewer next hops than u32::MAX - 2 exist (one per peer and link).
                u32::try_from(self.list.len() - 1).expect("next hop count fits u32")
            }
        };
        self.index.insert(nh.clone(), i);
        i
    }

    /// Drops a reference taken by [`NextHops::hold`] (codes other than an index are ignored).
    fn release(&mut self, i: u32) {
        let Some(slot) = self.list.get_mut(i as usize) else { return };
        slot.1 -= 1;
        if slot.1 == 0 {
            self.index.remove(&slot.0);
            self.free.push(i);
        }
    }

    fn get(&self, i: u32) -> Option<&NextHop> {
        self.list.get(i as usize).filter(|(_, refs)| *refs > 0).map(|(nh, _)| nh)
    }
}

/// How many prefixes [`Fib::sync`] turns into netlink requests at a time: bounds the memory a
/// burst of 100k changes takes on top of the routes themselves.
const SYNC_CHUNK: usize = 4096;

pub struct Fib {
    nl: Netlink,
    table: u32,
    /// Per prefix: what the RIB chose (learned) and what the kernel holds under our protocol,
    /// as far as our writes and the start-up dump tell (installed). A prefix is here while
    /// either is set.
    entries: Entries,
    hops: NextHops,
    /// Installed routes of a shape we do not write ([`OTHER`]).
    other: HashMap<IpNetwork, Box<Route>>,
    /// How many entries have something installed.
    installed: usize,
    own: HashSet<IpNetwork>,
    /// Found at start, not yet re-asserted by a change or an own block.
    stale: HashSet<IpNetwork>,
}

impl Fib {
    /// A FIB writer on `nl` (a route socket in the namespace to program)
    /// for routing table `table` ([`MAIN_TABLE`] normally).
    pub fn new(nl: Netlink, table: u32) -> Fib {
        Fib {
            nl,
            table,
            entries: Entries::default(),
            hops: NextHops::default(),
            other: HashMap::new(),
            installed: 0,
            own: HashSet::new(),
            stale: HashSet::new(),
        }
    }

    /// Reads what the kernel holds under [`PROTOCOL`] in our table (IPv4
    /// and IPv6) and adopts it as stale: kept in the kernel, forwarding,
    /// until [`Fib::sweep_stale`]. Call once, before the first change.
    pub fn reconcile_start(&mut self) -> Result<Vec<Route>> {
        let mut found = route::list_protocol(&mut self.nl, false, self.table, PROTOCOL)?;
        found.extend(route::list_protocol(&mut self.nl, true, self.table, PROTOCOL)?);
        for r in &found {
            let target = match (r.kind, r.gw) {
                (RouteKind::Blackhole, _) => Target::Blackhole,
                (RouteKind::Unicast, Some(gw)) => Target::Via(NextHop { gw, oif: r.oif, onlink: r.onlink }),
                // Not a shape we write (multipath, a link route): ours all the same, to sweep.
                (RouteKind::Unicast, None) => Target::Other(Box::new(r.clone())),
            };
            self.set_installed(r.dst, Some(target));
            self.stale.insert(r.dst);
        }
        tracing::info!(routes = found.len(), protocol = PROTOCOL, "adopted routes of a previous run as stale");
        Ok(found)
    }

    /// Applies the RIB's changes: installs, re-points or deletes routes so
    /// the kernel matches. Own blocks keep their blackhole whatever is
    /// learned for them.
    pub fn apply(&mut self, changes: impl IntoIterator<Item = Change>) -> Result<Vec<Failure>> {
        let mut touched = Vec::new();
        for c in changes {
            self.set_learned(c.prefix, c.via.as_ref());
            touched.push(c.prefix);
        }
        self.sync(touched)
    }

    /// Our own address blocks: each gets a blackhole route (more specific
    /// routes to local pods win over it; the rest of the block is dropped
    /// instead of following the default route out). Blocks no longer in
    /// `blocks` lose theirs.
    pub fn set_own_blocks(&mut self, blocks: &[IpNetwork]) -> Result<Vec<Failure>> {
        let new: HashSet<IpNetwork> = blocks.iter().copied().collect();
        let touched: Vec<IpNetwork> = self.own.symmetric_difference(&new).copied().chain(new.iter().copied()).collect();
        self.own = new;
        self.sync(touched)
    }

    /// After re-convergence (every session sent End-of-RIB): deletes the
    /// routes adopted at start that nothing re-asserted. Returns how many
    /// were deleted, and the refusals.
    pub fn sweep_stale(&mut self) -> Result<(usize, Vec<Failure>)> {
        let stale: Vec<IpNetwork> = self.stale.drain().collect();
        let before = self.installed;
        let failed = self.sync(stale)?;
        let swept = before - self.installed;
        tracing::info!(swept, failed = failed.len(), "swept stale routes");
        Ok((swept, failed))
    }

    /// Prefixes adopted at start and not re-asserted yet.
    pub fn stale(&self) -> impl Iterator<Item = &IpNetwork> {
        self.stale.iter()
    }

    /// How many routes we hold in the kernel.
    pub fn installed(&self) -> usize {
        self.installed
    }

    fn set_learned(&mut self, p: IpNetwork, via: Option<&NextHop>) {
        let code = via.map_or(NONE, |nh| self.hops.hold(nh));
        let mut old = NONE;
        self.entries.update(p, |e| old = std::mem::replace(&mut e.learned, code));
        self.hops.release(old);
    }

    fn installed_target(&self, p: &IpNetwork) -> Option<Target> {
        match self.entries.get(p)?.installed {
            NONE => None,
            BLACKHOLE => Some(Target::Blackhole),
            OTHER => self.other.get(p).map(|r| Target::Other(r.clone())),
            i => self.hops.get(i).cloned().map(Target::Via),
        }
    }

    fn set_installed(&mut self, p: IpNetwork, t: Option<Target>) {
        let code = match t {
            None => NONE,
            Some(Target::Blackhole) => BLACKHOLE,
            Some(Target::Other(r)) => {
                self.other.insert(p, r);
                OTHER
            }
            Some(Target::Via(nh)) => self.hops.hold(&nh),
        };
        let mut old = NONE;
        self.entries.update(p, |e| old = std::mem::replace(&mut e.installed, code));
        if old == OTHER && code != OTHER {
            self.other.remove(&p);
        }
        match (old == NONE, code == NONE) {
            (true, false) => self.installed += 1,
            (false, true) => self.installed -= 1,
            _ => {}
        }
        self.hops.release(old);
    }

    fn want(&self, p: &IpNetwork) -> Option<Target> {
        if self.own.contains(p) {
            return Some(Target::Blackhole);
        }
        let e = self.entries.get(p)?;
        self.hops.get(e.learned).cloned().map(Target::Via)
    }

    fn route(&self, p: IpNetwork, t: &Target) -> Route {
        let mut r = match t {
            Target::Blackhole => Route::blackhole(p),
            Target::Via(nh) => {
                let mut r = Route::new(p, Some(nh.gw), nh.oif);
                r.onlink = nh.onlink;
                r
            }
            Target::Other(r) => (**r).clone(),
        };
        r.protocol = Some(PROTOCOL);
        r.table = Some(self.table);
        r
    }

    /// Brings each of `prefixes` to what [`Fib::want`] says, [`SYNC_CHUNK`] prefixes per batch.
    fn sync(&mut self, mut prefixes: Vec<IpNetwork>) -> Result<Vec<Failure>> {
        prefixes.sort_unstable();
        prefixes.dedup();
        let mut failures = Vec::new();
        for chunk in prefixes.chunks(SYNC_CHUNK) {
            failures.extend(self.sync_chunk(chunk)?);
        }
        Ok(failures)
    }

    /// Brings each of `prefixes` to what [`Fib::want`] says, in one batch.
    fn sync_chunk(&mut self, prefixes: &[IpNetwork]) -> Result<Vec<Failure>> {
        let mut ops = Vec::new();
        let mut targets = Vec::new();
        for &p in prefixes {
            let want = self.want(&p);
            let have = self.installed_target(&p);
            if want.is_some() && want == have {
                self.stale.remove(&p);
                continue;
            }
            match (want, have) {
                (Some(w), Some(_)) => {
                    ops.push(Op::Replace(self.route(p, &w)));
                    targets.push(Some(w));
                }
                (Some(w), None) => {
                    ops.push(Op::Add(self.route(p, &w)));
                    targets.push(Some(w));
                }
                (None, Some(h)) => {
                    let mut r = self.route(p, &h);
                    // RT_SCOPE_NOWHERE: match whatever scope it was added with (IPv4 checks).
                    r.scope = Some(255);
                    ops.push(Op::Delete(r));
                    targets.push(None);
                }
                (None, None) => {}
            }
        }
        if ops.is_empty() {
            return Ok(Vec::new());
        }
        let refused = route::batch(&mut self.nl, &ops)?;
        let mut failures = Vec::with_capacity(refused.len());
        let mut refused = refused.into_iter().peekable();
        for (i, (op, target)) in ops.iter().zip(targets).enumerate() {
            let p = op.route().dst;
            if refused.peek().is_some_and(|(j, _)| *j == i) {
                let (_, error) = refused.next().expect("peeked");
                tracing::warn!(prefix = %p, %error, "kernel refused a route");
                failures.push(Failure { prefix: p, error });
                continue;
            }
            self.stale.remove(&p);
            self.set_installed(p, target);
        }
        Ok(failures)
    }
}

/// Turns on IPv4 and/or IPv6 forwarding in the calling thread's network
/// namespace (a router forwards; the kernel default is off).
pub fn enable_forwarding(v4: bool, v6: bool) -> Result<()> {
    if v4 {
        linux_net::sysctl::ensure("net/ipv4/ip_forward", "1").map_err(Error::from)?;
    }
    if v6 {
        linux_net::sysctl::ensure("net/ipv6/conf/all/forwarding", "1").map_err(Error::from)?;
    }
    Ok(())
}
