//! The routing information bases of a speaker, with no I/O and no clock: per-peer Adj-RIB-In,
//! the Loc-RIB with best-path selection, per-peer Adj-RIB-Out with the export rules of eBGP,
//! iBGP full mesh and route reflection (RFC 4456), the packing of Adj-RIB-Out changes into
//! UPDATE messages, and graceful restart (RFC 4724) as helper and as restarting speaker.
//!
//! The caller feeds it what its sessions do (up, UPDATE received, down) and timer expiries;
//! each call returns the Loc-RIB changes (prefix → new best or withdrawn) for the kernel, and
//! [`Rib::updates`] gives the UPDATEs to send to a peer. See docs/bgp.md, "RIB".

mod attrs;
mod best;
mod export;

use std::collections::{BTreeMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::sync::Arc;

use ipnet::IpNet;
use prefix_trie::joint::map::JointPrefixMap;
use smallvec::SmallVec;

pub use attrs::{AttrPool, PathAttrs};
pub use best::{compare, Candidate, PeerFacts, Step, DEFAULT_LOCAL_PREF};
pub use export::{pack_updates, RouteOut};

use crate::error::{Error, Result};
use crate::packet::{AttrValue, Capability, Family, GrFamily, GracefulRestart, MpNextHop, Prefix, SessionCaps, Update};

/// A peer's handle, given by [`Rib::add_peer`].
pub type PeerId = u32;

/// This speaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RibConfig {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    /// `Some` makes this speaker a route reflector with this CLUSTER_ID (commonly its router
    /// ID); its peers with [`PeerConfig::rr_client`] are its clients.
    pub cluster_id: Option<Ipv4Addr>,
}

/// A configured neighbour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerConfig {
    pub addr: IpAddr,
    pub asn: u32,
    /// A route-reflector client of ours (meaningful when we reflect).
    pub rr_client: bool,
    /// Our address on this session for IPv4 routes we set the next hop of ("next hop self").
    pub local_v4: Option<Ipv4Addr>,
    /// Our global IPv6 address on this session, the next hop of IPv6 routes we set it for.
    pub local_v6: Option<Ipv6Addr>,
}

/// One Loc-RIB change: the prefix's new best route, or `None` when it has none any more.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub prefix: Prefix,
    pub best: Option<Best>,
}

/// A best route: its attributes and where it came from (`None`: originated here).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Best {
    pub attrs: Arc<PathAttrs>,
    pub peer: Option<PeerId>,
}

/// A route as the export policy sees it.
#[derive(Debug, Clone, Copy)]
pub struct ExportRoute<'a> {
    pub prefix: Prefix,
    pub attrs: &'a PathAttrs,
    /// The peer it was learned from, `None` if originated here.
    pub from: Option<&'a PeerConfig>,
}

/// The export policy hook: `false` keeps the route from the peer. It runs before the export
/// rules (which may still refuse, e.g. iBGP to iBGP).
pub type ExportPolicy = Box<dyn Fn(&PeerConfig, &ExportRoute<'_>) -> bool + Send + Sync>;

/// The import policy hook, run on every route a peer announces after the RFC 7606 and loop
/// checks: it may change the attributes (e.g. LOCAL_PREF) or refuse the route (`false`: the
/// route is treated as withdrawn). The Adj-RIB-In holds what it lets through.
pub type ImportPolicy = Box<dyn Fn(&PeerConfig, Prefix, &mut PathAttrs) -> bool + Send + Sync>;

/// What a peer going down did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PeerDown {
    pub changes: Vec<Change>,
    /// Graceful restart (RFC 4724 §4.2): the peer's routes are kept as stale; start a restart
    /// timer of this many seconds and call [`Rib::restart_timer_expired`] when it fires.
    pub restart_timer: Option<u16>,
}

#[derive(Debug, Clone)]
struct Path {
    /// The peer it came from; 0 (never a `PeerId`) for a local route. 16 octets a path.
    src: PeerId,
    attrs: Arc<PathAttrs>,
    /// Kept from a gracefully restarting peer, waiting for it to announce the route again.
    stale: bool,
}

#[derive(Debug, Clone, Default)]
struct Dest {
    /// The Adj-RIB-In entries of every peer for this prefix, and the local route: the Loc-RIB
    /// stores them once rather than one trie per peer. Nearly always one path: it is stored
    /// inline, so a prefix with one path takes no allocation of its own.
    paths: SmallVec<[Path; 1]>,
    /// Index of the best path in `paths`.
    best: Option<u32>,
}

struct Peer {
    cfg: PeerConfig,
    /// The peer's BGP identifier, of the last session (stale routes still compare by it).
    router_id: Ipv4Addr,
    /// Set while the session is established.
    session: Option<Session>,
    /// Families whose End-of-RIB the peer has sent on this session.
    eor_received: Vec<Family>,
    /// Routes kept stale from a graceful restart, by family.
    stale: Vec<Family>,
    /// The capabilities of the session that went down (its graceful restart capability
    /// decides what the helper keeps).
    last_caps: Option<SessionCaps>,
    /// Adj-RIB-Out: what the peer has been sent (or will be with `pending`).
    out: JointPrefixMap<IpNet, Arc<PathAttrs>>,
    /// Adj-RIB-Out changes not yet turned into UPDATEs (`None`: withdraw).
    pending: BTreeMap<Prefix, Option<Arc<PathAttrs>>>,
    /// Families whose End-of-RIB follows the pending changes (after the initial dump).
    eor_due: Vec<Family>,
}

#[derive(Debug, Clone)]
struct Session {
    caps: SessionCaps,
}

/// The RIBs of one speaker.
pub struct Rib {
    cfg: RibConfig,
    peers: BTreeMap<PeerId, Peer>,
    next_id: PeerId,
    loc: JointPrefixMap<IpNet, Dest>,
    pool: AttrPool,
    policy: Option<ExportPolicy>,
    import: Option<ImportPolicy>,
    /// Restarting speaker (RFC 4724 §4.1): peers whose End-of-RIB we still wait for before
    /// selecting best paths.
    deferring: Option<HashSet<PeerId>>,
}

fn net(p: Prefix) -> IpNet {
    // A `Prefix` is always valid (its length fits the address).
    IpNet::new(p.addr(), p.length()).unwrap_or_else(|_| IpNet::from(p.addr()))
}

fn prefix(n: IpNet) -> Option<Prefix> {
    Prefix::new(n.addr(), n.prefix_len())
}

/// Our graceful restart capability (RFC 4724 §3): the R bit while restarting, and for each
/// family whether forwarding state was preserved across the restart.
pub fn graceful_restart_capability(
    restarting: bool,
    restart_time: u16,
    families: &[Family],
    forwarding_preserved: bool,
) -> Capability {
    Capability::GracefulRestart(GracefulRestart {
        flags: if restarting { 0x8 } else { 0 },
        time: restart_time.min(0xfff),
        families: families
            .iter()
            .map(|f| GrFamily { afi: f.afi(), safi: f.safi(), flags: if forwarding_preserved { 0x80 } else { 0 } })
            .collect(),
    })
}

impl Rib {
    pub fn new(cfg: RibConfig) -> Rib {
        Rib {
            cfg,
            peers: BTreeMap::new(),
            next_id: 1,
            loc: JointPrefixMap::new(),
            pool: AttrPool::default(),
            policy: None,
            import: None,
            deferring: None,
        }
    }

    pub fn config(&self) -> &RibConfig {
        &self.cfg
    }

    /// Sets the export policy hook (e.g. Calico's default: external peers get only this
    /// node's blocks).
    pub fn set_export_policy(&mut self, policy: ExportPolicy) {
        self.policy = Some(policy);
    }

    /// Sets the import policy hook.
    pub fn set_import_policy(&mut self, policy: ImportPolicy) {
        self.import = Some(policy);
    }

    pub fn add_peer(&mut self, cfg: PeerConfig) -> PeerId {
        let id = self.next_id;
        self.next_id += 1;
        self.peers.insert(
            id,
            Peer {
                cfg,
                router_id: Ipv4Addr::UNSPECIFIED,
                session: None,
                eor_received: Vec::new(),
                stale: Vec::new(),
                last_caps: None,
                out: JointPrefixMap::new(),
                pending: BTreeMap::new(),
                eor_due: Vec::new(),
            },
        );
        id
    }

    /// Forgets a peer and every route it gave (no graceful restart).
    pub fn remove_peer(&mut self, id: PeerId) -> Result<Vec<Change>> {
        self.peer(id)?;
        let mut changes = self.drop_paths(id, |_, _| true);
        self.peers.remove(&id);
        changes.extend(self.deferral_done(id));
        self.pool.collect();
        Ok(changes)
    }

    pub fn peer_config(&self, id: PeerId) -> Result<&PeerConfig> {
        Ok(&self.peer(id)?.cfg)
    }

    /// Sets our addresses on this peer's session (the next hop of routes we give it with next
    /// hop self), e.g. from the local address of the TCP connection once it is up, when the
    /// configuration did not name them. Call before [`Rib::peer_up`]: routes already in the
    /// Adj-RIB-Out keep the next hop they were exported with.
    pub fn set_local_addresses(&mut self, id: PeerId, v4: Option<Ipv4Addr>, v6: Option<Ipv6Addr>) -> Result<()> {
        let p = self.peer_mut(id)?;
        p.cfg.local_v4 = v4;
        p.cfg.local_v6 = v6;
        Ok(())
    }

    fn peer(&self, id: PeerId) -> Result<&Peer> {
        self.peers.get(&id).ok_or(Error::UnknownPeer(id))
    }

    fn peer_mut(&mut self, id: PeerId) -> Result<&mut Peer> {
        self.peers.get_mut(&id).ok_or(Error::UnknownPeer(id))
    }

    fn is_ebgp(&self, cfg: &PeerConfig) -> bool {
        cfg.asn != self.cfg.asn
    }

    /// The number of distinct attribute sets held (interned).
    pub fn attr_sets(&self) -> usize {
        self.pool.len()
    }

    // ---- restarting speaker -------------------------------------------------------------

    /// After our own restart (RFC 4724 §4.1): hold best-path selection until every peer
    /// configured now has sent End-of-RIB (or closed without graceful restart capability), or
    /// [`Rib::selection_deferral_expired`] is called.
    pub fn defer_selection(&mut self) {
        self.deferring = Some(self.peers.keys().copied().collect());
    }

    /// Whether selection is being deferred.
    pub fn deferring(&self) -> bool {
        self.deferring.is_some()
    }

    /// The selection deferral timer fired: select now, whoever has not sent End-of-RIB.
    pub fn selection_deferral_expired(&mut self) -> Vec<Change> {
        if self.deferring.take().is_none() {
            return Vec::new();
        }
        let all: Vec<Prefix> = self.loc.keys().filter_map(prefix).collect();
        all.into_iter().filter_map(|p| self.reselect(p, None)).collect()
    }

    fn deferral_done(&mut self, id: PeerId) -> Vec<Change> {
        match &mut self.deferring {
            Some(w) => {
                w.remove(&id);
                if w.is_empty() {
                    self.selection_deferral_expired()
                } else {
                    Vec::new()
                }
            }
            None => Vec::new(),
        }
    }

    // ---- sessions -----------------------------------------------------------------------

    /// The session with the peer is established with these capabilities and the peer's BGP
    /// identifier: the Adj-RIB-Out is filled with the whole Loc-RIB (End-of-RIB follows it),
    /// and, after a graceful restart, stale routes of families the peer no longer preserves
    /// are dropped (RFC 4724 §4.2).
    pub fn peer_up(&mut self, id: PeerId, caps: SessionCaps, router_id: Ipv4Addr) -> Result<Vec<Change>> {
        let p = self.peer_mut(id)?;
        let gr_families: Vec<Family> = caps
            .peer_graceful_restart
            .iter()
            .flat_map(|g| g.families.iter())
            .filter(|f| f.forwarding_preserved())
            .filter_map(|f| Family::from_afi_safi(f.afi, f.safi))
            .collect();
        let gone: Vec<Family> = p.stale.iter().copied().filter(|f| !gr_families.contains(f)).collect();
        p.stale.retain(|f| gr_families.contains(f));
        p.eor_due = caps.families.clone();
        let gr_capable = caps.peer_graceful_restart.is_some();
        // RFC 4724 §4.1: a peer that restarts too (its Restart State bit) defers its own
        // selection, and so its End-of-RIB, until it has ours: waiting for it would hold both
        // sides until their deferral timers.
        let peer_restarting = caps.peer_graceful_restart.as_ref().is_some_and(|g| g.flags & 0x8 != 0);
        p.session = Some(Session { caps });
        p.router_id = router_id;
        p.eor_received.clear();
        p.out = JointPrefixMap::new();
        p.pending.clear();
        let mut changes = self.drop_paths(id, |pfx, path| path.stale && gone.contains(&pfx.family()));
        // A restarting speaker waits only for peers that will send End-of-RIB first.
        if !gr_capable || peer_restarting {
            changes.extend(self.deferral_done(id));
        }
        let bests: Vec<(Prefix, Path)> =
            self.loc.iter().filter_map(|(n, d)| Some((prefix(n)?, d.paths.get(d.best? as usize)?.clone()))).collect();
        for (pfx, path) in bests {
            self.export_to(id, pfx, Some(&path));
        }
        self.pool.maybe_collect();
        Ok(changes)
    }

    /// The session went down. `graceful` is whether RFC 4724 helper mode applies: the
    /// session ended without a NOTIFICATION (TCP failure, hold timer on their side) or with
    /// one under RFC 8538. If the peer advertised graceful restart, its routes of the
    /// families it listed are kept as stale (still used for forwarding) and a restart timer
    /// is asked for; otherwise its routes are withdrawn.
    pub fn peer_down(&mut self, id: PeerId, graceful: bool) -> Result<PeerDown> {
        let p = self.peer_mut(id)?;
        let Some(s) = p.session.take() else { return Ok(PeerDown::default()) };
        p.out = JointPrefixMap::new();
        p.pending.clear();
        p.eor_due.clear();
        let gr = s.caps.peer_graceful_restart.clone().filter(|_| graceful);
        let keep: Vec<Family> =
            gr.iter().flat_map(|g| g.families.iter()).filter_map(|f| Family::from_afi_safi(f.afi, f.safi)).collect();
        p.stale = keep.clone();
        p.last_caps = Some(s.caps);
        let mut changes = self.drop_paths(id, |pfx, _| !keep.contains(&pfx.family()));
        self.for_paths_of(id, |path| path.stale = true);
        changes.extend(self.deferral_done(id));
        self.pool.collect();
        Ok(PeerDown { changes, restart_timer: gr.filter(|_| !keep.is_empty()).map(|g| g.time) })
    }

    /// The restart timer (or the stale-path timer after the peer came back) fired: drop
    /// every route still stale from this peer.
    pub fn restart_timer_expired(&mut self, id: PeerId) -> Result<Vec<Change>> {
        let p = self.peer_mut(id)?;
        p.stale.clear();
        let changes = self.drop_paths(id, |_, path| path.stale);
        self.pool.maybe_collect();
        Ok(changes)
    }

    /// The peer sent End-of-RIB for a family: its routes of that family still stale were
    /// not announced again and are withdrawn (RFC 4724 §4.2); a deferred selection may run.
    pub fn end_of_rib(&mut self, id: PeerId, family: Family) -> Result<Vec<Change>> {
        let p = self.peer_mut(id)?;
        p.stale.retain(|f| *f != family);
        if !p.eor_received.contains(&family) {
            p.eor_received.push(family);
        }
        let all = p.session.as_ref().is_none_or(|s| s.caps.families.iter().all(|f| p.eor_received.contains(f)));
        let mut changes = self.drop_paths(id, |pfx, path| path.stale && pfx.family() == family);
        // A deferred selection waits for this peer's End-of-RIB in every family it carries.
        if all {
            changes.extend(self.deferral_done(id));
        }
        self.pool.maybe_collect();
        Ok(changes)
    }

    // ---- routes -------------------------------------------------------------------------

    /// Originates a route (a locally originated route wins over any learned one).
    pub fn originate(&mut self, pfx: Prefix, attrs: PathAttrs) -> Vec<Change> {
        let attrs = self.pool.intern(attrs);
        self.set_path(pfx, None, Some(attrs)).into_iter().collect()
    }

    /// Withdraws a locally originated route.
    pub fn withdraw_local(&mut self, pfx: Prefix) -> Vec<Change> {
        let c = self.set_path(pfx, None, None).into_iter().collect();
        self.pool.maybe_collect();
        c
    }

    /// Applies a received UPDATE (decoded with this session's capabilities): RFC 7606's
    /// treat-as-withdraw, End-of-RIB, and the receive-side loop checks: our AS in AS_PATH,
    /// our router ID as ORIGINATOR_ID, our CLUSTER_ID in CLUSTER_LIST (the route is treated
    /// as withdrawn).
    pub fn receive(&mut self, id: PeerId, u: &Update) -> Result<Vec<Change>> {
        let caps = self.peer(id)?.session.as_ref().map(|s| s.caps.clone()).ok_or(Error::PeerNotUp(id))?;
        if let Some(f) = u.end_of_rib_family() {
            return self.end_of_rib(id, f);
        }
        let mut changes = Vec::new();
        for n in u.withdrawn_all() {
            changes.extend(self.set_path(n.prefix, Some(id), None));
        }
        let announce = |nlri: &[crate::packet::Nlri], nh: MpNextHop, this: &mut Rib, changes: &mut Vec<Change>| {
            let attrs = PathAttrs::from_update(u, &caps, nh).filter(|a| !this.looped(a) && this.sane(id, a));
            let shared = attrs.clone().map(|a| this.pool.intern(a));
            for n in nlri {
                let a = match (&this.import, &attrs) {
                    (Some(policy), Some(a)) => {
                        let mut a = a.clone();
                        let cfg = this.peers.get(&id).map(|p| &p.cfg);
                        cfg.is_some_and(|c| policy(c, n.prefix, &mut a)).then(|| this.pool.intern(a))
                    }
                    _ => shared.clone(),
                };
                changes.extend(this.set_path(n.prefix, Some(id), a));
            }
        };
        let announced = u.announced();
        if !announced.is_empty() {
            if !u.nlri.is_empty() {
                let nh = u.attrs.iter().find_map(|a| match a.value {
                    AttrValue::NextHop(x) => Some(MpNextHop::Ipv4(x)),
                    _ => None,
                });
                match nh {
                    Some(nh) => announce(&u.nlri, nh, self, &mut changes),
                    None => {
                        for n in &u.nlri {
                            changes.extend(self.set_path(n.prefix, Some(id), None));
                        }
                    }
                }
            }
            if let Some(m) = u.mp_reach() {
                announce(&m.nlri, m.next_hop, self, &mut changes);
            }
        }
        self.pool.maybe_collect();
        Ok(changes)
    }

    /// RFC 7606's semantic checks, which need the session: an eBGP AS_PATH must start with
    /// the peer's AS (RFC 4271 §6.3), and the next hop must be neither ours on this session
    /// nor a martian (unspecified, loopback, multicast); otherwise treat-as-withdraw.
    fn sane(&self, id: PeerId, a: &PathAttrs) -> bool {
        let Some(p) = self.peers.get(&id) else { return false };
        if self.is_ebgp(&p.cfg) && a.neighbour_as() != Some(p.cfg.asn) {
            return false;
        }
        let nh = a.next_hop.addr();
        let ours = match nh {
            IpAddr::V4(x) => p.cfg.local_v4 == Some(x),
            IpAddr::V6(x) => p.cfg.local_v6 == Some(x),
        };
        !(ours || nh.is_unspecified() || nh.is_loopback() || nh.is_multicast())
    }

    fn looped(&self, a: &PathAttrs) -> bool {
        a.path_contains(self.cfg.asn)
            || a.originator_id == Some(self.cfg.router_id)
            || self.cfg.cluster_id.is_some_and(|c| a.cluster_list.contains(&c))
    }

    // ---- views --------------------------------------------------------------------------

    /// The Loc-RIB best route of a prefix.
    pub fn best(&self, pfx: Prefix) -> Option<Best> {
        let d = self.loc.get(&net(pfx))?;
        let p = d.paths.get(d.best? as usize)?;
        Some(Best { attrs: p.attrs.clone(), peer: p.peer() })
    }

    /// Every Loc-RIB best route, IPv4 first, in prefix order.
    pub fn loc_rib(&self) -> Vec<(Prefix, Best)> {
        self.loc
            .iter()
            .filter_map(|(n, d)| {
                let p = d.paths.get(d.best? as usize)?;
                Some((prefix(n)?, Best { attrs: p.attrs.clone(), peer: p.peer() }))
            })
            .collect()
    }

    /// A peer's Adj-RIB-In (after the loop checks and treat-as-withdraw): prefix, attributes,
    /// stale flag.
    pub fn adj_rib_in(&self, id: PeerId) -> Vec<(Prefix, Arc<PathAttrs>, bool)> {
        self.loc
            .iter()
            .flat_map(|(n, d)| {
                d.paths
                    .iter()
                    .filter(move |p| p.src == id)
                    .filter_map(move |p| Some((prefix(n)?, p.attrs.clone(), p.stale)))
            })
            .collect()
    }

    /// A peer's Adj-RIB-Out: what it has been or is about to be sent.
    pub fn adj_rib_out(&self, id: PeerId) -> Result<Vec<(Prefix, Arc<PathAttrs>)>> {
        Ok(self.peer(id)?.out.iter().filter_map(|(n, a)| Some((prefix(n)?, a.clone()))).collect())
    }

    /// The peer asked for a ROUTE-REFRESH (RFC 2918) of a family: its whole Adj-RIB-Out of
    /// that family is sent again by the next [`Rib::updates`].
    pub fn refresh(&mut self, id: PeerId, family: Family) -> Result<()> {
        let p = self.peer_mut(id)?;
        if p.session.is_none() {
            return Err(Error::PeerNotUp(id));
        }
        let all: Vec<(Prefix, Arc<PathAttrs>)> = p
            .out
            .iter()
            .filter_map(|(n, a)| Some((prefix(n)?, a.clone())))
            .filter(|(k, _)| k.family() == family)
            .collect();
        for (k, a) in all {
            p.pending.insert(k, Some(a));
        }
        Ok(())
    }

    /// Drains the Adj-RIB-Out changes of a peer as UPDATE messages of at most 4096 octets,
    /// with End-of-RIB after the initial dump.
    pub fn updates(&mut self, id: PeerId) -> Result<Vec<Update>> {
        let deferring = self.deferring.is_some();
        let p = self.peer_mut(id)?;
        let Some(s) = &p.session else { return Err(Error::PeerNotUp(id)) };
        let pending = std::mem::take(&mut p.pending);
        let mut v = pack_updates(pending.iter().map(|(k, a)| RouteOut { prefix: *k, attrs: a.as_deref() }), &s.caps)?;
        // A restarting speaker ends its initial table only after its deferred selection.
        if !deferring {
            v.extend(p.eor_due.drain(..).map(Update::end_of_rib));
        }
        Ok(v)
    }

    // ---- internals ----------------------------------------------------------------------

    /// Sets (or with `None` removes) the path of `peer` for `pfx` and reselects.
    fn set_path(&mut self, pfx: Prefix, peer: Option<PeerId>, attrs: Option<Arc<PathAttrs>>) -> Option<Change> {
        let n = net(pfx);
        let old = self.best(pfx);
        match attrs {
            Some(attrs) => {
                let d = self.loc.entry(n).or_default();
                match d.paths.iter_mut().find(|p| p.peer() == peer) {
                    Some(p) => {
                        p.attrs = attrs;
                        p.stale = false;
                    }
                    None => d.paths.push(Path { src: peer.unwrap_or(0), attrs, stale: false }),
                }
            }
            None => {
                let d = self.loc.get_mut(&n)?;
                let i = d.paths.iter().position(|p| p.peer() == peer)?;
                d.paths.remove(i);
                d.best = None;
            }
        }
        self.reselect(pfx, old)
    }

    fn facts(&self, peer: Option<PeerId>) -> Option<PeerFacts> {
        let p = self.peers.get(&peer?)?;
        Some(PeerFacts { ebgp: self.is_ebgp(&p.cfg), router_id: p.router_id, addr: p.cfg.addr })
    }

    /// Runs selection for one prefix whose best was `old`; on a new best, updates every
    /// Adj-RIB-Out and returns the change.
    fn reselect(&mut self, pfx: Prefix, old: Option<Best>) -> Option<Change> {
        let n = net(pfx);
        let d = self.loc.get(&n)?;
        if d.paths.is_empty() {
            self.loc.remove(&n);
        } else if self.deferring.is_some() {
            return None;
        }
        let mut new: Option<usize> = None;
        if let Some(d) = self.loc.get(&n) {
            for (i, p) in d.paths.iter().enumerate() {
                let better = match new.and_then(|b| d.paths.get(b)) {
                    None => true,
                    Some(b) => {
                        let a = Candidate { attrs: &p.attrs, peer: self.facts(p.peer()) };
                        let c = Candidate { attrs: &b.attrs, peer: self.facts(b.peer()) };
                        compare(&a, &c).0.is_lt()
                    }
                };
                if better {
                    new = Some(i);
                }
            }
        }
        let new_path = self.loc.get_mut(&n).and_then(|d| {
            d.best = new.and_then(|i| u32::try_from(i).ok());
            d.paths.get(new?).cloned()
        });
        let same = match (&old, &new_path) {
            (Some(o), Some(np)) => o.peer == np.peer() && Arc::ptr_eq(&o.attrs, &np.attrs),
            (None, None) => true,
            _ => false,
        };
        if same {
            return None;
        }
        let ids: Vec<PeerId> = self.peers.keys().copied().collect();
        for id in ids {
            self.export_to(id, pfx, new_path.as_ref());
        }
        Some(Change { prefix: pfx, best: new_path.map(|p| Best { peer: p.peer(), attrs: p.attrs }) })
    }

    /// Puts the export of `best` to peer `id` into its Adj-RIB-Out, queuing the difference.
    fn export_to(&mut self, id: PeerId, pfx: Prefix, best: Option<&Path>) {
        let Some(p) = self.peers.get(&id) else { return };
        if p.session.is_none() {
            return;
        }
        let out = best.and_then(|b| self.export(id, pfx, b)).map(|a| self.pool.intern(a));
        let n = net(pfx);
        let Some(p) = self.peers.get_mut(&id) else { return };
        let old = p.out.get(&n);
        let same = match (old, &out) {
            (Some(o), Some(a)) => Arc::ptr_eq(o, a),
            (None, None) => true,
            _ => false,
        };
        if same {
            return;
        }
        match &out {
            Some(a) => {
                p.out.insert(n, a.clone());
            }
            None => {
                p.out.remove(&n);
            }
        }
        p.pending.insert(pfx, out);
    }

    /// The export rules: what peer `to` is sent for `path`, or `None`.
    fn export(&self, to: PeerId, pfx: Prefix, path: &Path) -> Option<PathAttrs> {
        let t = self.peers.get(&to)?;
        let session = t.session.as_ref()?;
        if !session.caps.families.contains(&pfx.family()) || path.src == to {
            return None;
        }
        let from = match path.peer() {
            Some(f) => Some(self.peers.get(&f)?),
            None => None,
        };
        if let Some(policy) = &self.policy {
            if !policy(&t.cfg, &ExportRoute { prefix: pfx, attrs: &path.attrs, from: from.map(|f| &f.cfg) }) {
                return None;
            }
        }
        let a = export::transform(&self.cfg, &t.cfg, pfx, &path.attrs, from.map(|f| (&f.cfg, f.router_id)))?;
        // An IPv4 route with an IPv6 next hop only where RFC 8950 was negotiated.
        let ext_nh_ok = match (pfx.family(), a.next_hop) {
            (Family::Ipv4Unicast, MpNextHop::Ipv6 { .. }) => {
                session.caps.extended_next_hop.contains(&(Family::Ipv4Unicast, crate::packet::AFI_IPV6))
            }
            (Family::Ipv6Unicast, MpNextHop::Ipv4(_)) => false,
            _ => true,
        };
        ext_nh_ok.then_some(a)
    }

    /// Removes the paths of peer `id` that `which` selects, reselecting their prefixes.
    fn drop_paths(&mut self, id: PeerId, which: impl Fn(Prefix, &Path) -> bool) -> Vec<Change> {
        let gone: Vec<Prefix> = self
            .loc
            .iter()
            .filter_map(|(n, d)| {
                let pfx = prefix(n)?;
                d.paths.iter().any(|p| p.src == id && which(pfx, p)).then_some(pfx)
            })
            .collect();
        gone.into_iter().filter_map(|pfx| self.set_path(pfx, Some(id), None)).collect()
    }

    fn for_paths_of(&mut self, id: PeerId, mut f: impl FnMut(&mut Path)) {
        for (_, d) in self.loc.iter_mut() {
            d.paths.iter_mut().filter(|p| p.src == id).for_each(&mut f);
        }
    }
}

impl Path {
    fn peer(&self) -> Option<PeerId> {
        (self.src != 0).then_some(self.src)
    }
}

// The per-route cost the docs quote: a path is 16 octets, a trie entry 32 with one path inline.
const _: () = assert!(std::mem::size_of::<Path>() == 16 && std::mem::size_of::<Dest>() == 32);
