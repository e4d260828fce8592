//! The BGP speaker runtime on tokio: the only place with BGP sockets. One actor task owns the
//! [`Rib`], the configured peers and their connections; a listener task per listen address
//! hands it incoming connections; a connector task makes each outgoing attempt; a session
//! task per TCP connection runs that connection's [`bgp::fsm::Fsm`] ([`session`]).
//!
//! The actor works in bursts: it takes one message, then whatever else is already queued
//! (up to [`MAX_BURST`]), and only then emits one [`SpeakerEvent::Fib`] with every Loc-RIB
//! change of the burst and hands each established peer its pending UPDATEs. A peer sending
//! 100k prefixes thus produces a few dozen FIB batches, not 100k events.
//!
//! Collision detection (RFC 4271 §6.8) happens when a connection receives the peer's OPEN,
//! before it answers with KEEPALIVE: of two connections with one peer, the one opened by the
//! speaker with the higher BGP identifier survives; with an Established session the new one
//! is refused, unless the peer announced graceful restart (it restarted: the old session is
//! over, RFC 4724 §4.2). See docs/cni-bgp.md, "Speaker".

mod session;
mod status;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use bgp::fsm::{collision_survivor, Config as FsmConfig, Direction, State};
use bgp::packet::{Family, MpNextHop, Prefix};
use bgp::rib::{self, graceful_restart_capability, PathAttrs, PeerConfig, PeerId, Rib, RibConfig};
use ipnetwork::IpNetwork;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::fib;
use crate::{Error, Result};
use session::{ConnId, FromSession, SessionArgs, ToSession};
pub use status::{PeerStatus, RouteInfo};

/// The most queued messages handled before the changes so far are emitted.
pub const MAX_BURST: usize = 1024;
/// RFC 4724 §4.1 selection deferral: the longest wait for every peer's End-of-RIB before
/// [`SpeakerEvent::Converged`] (and, when restarting, best-path selection) happens anyway.
pub const SELECTION_DEFERRAL: Duration = Duration::from_secs(120);
/// After a gracefully restarted peer is back, how long its routes not announced again may
/// stay (if it never sends End-of-RIB): FRR's and Cisco's stale-path default.
pub const STALE_PATH_TIME: Duration = Duration::from_secs(360);
/// How long [`SpeakerHandle::stop`] waits for the Cease NOTIFICATIONs to leave.
const STOP_TIMEOUT: Duration = Duration::from_secs(2);
/// Capacity of the queue into the actor: sessions wait (and stop reading their socket) when
/// the RIB falls this far behind.
const INBOX: usize = 256;

/// This speaker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpeakerConfig {
    pub asn: u32,
    pub router_id: Ipv4Addr,
    /// Addresses to listen on (e.g. node IP:179, and [node IPv6]:179); empty = do not listen.
    pub listen: Vec<SocketAddr>,
    /// Route reflector: Some(cluster id).
    pub cluster_id: Option<Ipv4Addr>,
    /// Graceful restart: advertise the capability with this restart time (s); `restarting`
    /// sets the R bit and forwarding-preserved (the agent started with routes already in the kernel).
    pub graceful_restart: Option<u16>,
    pub restarting: bool,
    /// Hold time we propose (default 90).
    pub hold_time: u16,
    /// Seconds between connection attempts (default 5 here, not RFC's 120: a lab must converge fast).
    pub connect_retry: u16,
}

impl SpeakerConfig {
    /// The defaults: no listener, no reflection, no graceful restart, hold time 90 s,
    /// connect retry 5 s.
    pub fn new(asn: u32, router_id: Ipv4Addr) -> SpeakerConfig {
        SpeakerConfig {
            asn,
            router_id,
            listen: Vec::new(),
            cluster_id: None,
            graceful_restart: None,
            restarting: false,
            hold_time: 90,
            connect_retry: 5,
        }
    }

    fn validate(&self) -> Result<()> {
        let bad = |m: String| Err(Error::SpeakerConfig(m));
        if self.asn == 0 || self.asn == u32::from(bgp::packet::AS_TRANS) {
            return bad(format!("AS {} cannot be used by a speaker (RFC 7607, RFC 6793)", self.asn));
        }
        if self.router_id.is_unspecified() {
            return bad("router ID 0.0.0.0 is not a valid BGP identifier".into());
        }
        if matches!(self.hold_time, 1 | 2) {
            return bad(format!("hold time {}: must be 0 or at least 3 seconds (RFC 4271 §4.2)", self.hold_time));
        }
        if self.connect_retry == 0 {
            return bad("connect retry time 0: must be at least 1 second".into());
        }
        if self.graceful_restart.is_some_and(|t| t > 0xfff) {
            return bad(format!("graceful restart time {:?}: at most 4095 seconds (RFC 4724)", self.graceful_restart));
        }
        Ok(())
    }
}

/// A configured neighbour.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    pub address: IpAddr,
    pub asn: u32,
    /// TCP port of the peer (default 179; tests use others).
    pub port: u16,
    /// Source address for our outgoing connection and our next-hop-self (the node IP of that family).
    pub local_v4: Option<Ipv4Addr>,
    pub local_v6: Option<Ipv6Addr>,
    pub rr_client: bool,
    /// External peer (not a cluster node): export only local routes to it (Calico's default).
    pub external: bool,
    pub passive: bool,
    /// Words for status (e.g. "mesh", "route reflector", "global peer", "node peer").
    pub kind: String,
}

impl PeerSpec {
    /// A peer on port 179, active, not a client, not external, of kind "peer".
    pub fn new(address: IpAddr, asn: u32) -> PeerSpec {
        PeerSpec {
            address,
            asn,
            port: 179,
            local_v4: None,
            local_v6: None,
            rr_client: false,
            external: false,
            passive: false,
            kind: "peer".into(),
        }
    }
}

/// What the speaker reports to its owner.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SpeakerEvent {
    /// Loc-RIB changes reduced to kernel routes (best from a peer → via its next hop; withdrawn or
    /// best now local → None). The agent passes them to `Fib::apply`.
    Fib(Vec<fib::Change>),
    /// Every configured peer is Established and has sent End-of-RIB for its families, or its wait
    /// ran out (RFC 4724 selection deferral, cap 120 s): the agent may `Fib::sweep_stale`.
    Converged,
    PeerUp(IpAddr),
    PeerDown {
        address: IpAddr,
        reason: String,
    },
}

/// The speaker: [`Speaker::start`] spawns its tasks on the current tokio runtime.
pub struct Speaker;

/// Talks to a running speaker. Dropping every handle does not stop it.
#[derive(Clone, Debug)]
pub struct SpeakerHandle {
    tx: mpsc::UnboundedSender<Command>,
}

#[derive(Debug)]
enum Command {
    SetPeers(Vec<PeerSpec>, oneshot::Sender<()>),
    Originate(Vec<IpNetwork>, oneshot::Sender<()>),
    Status(oneshot::Sender<Vec<PeerStatus>>),
    Routes(oneshot::Sender<Vec<RouteInfo>>),
    Stop(oneshot::Sender<()>),
    Abort(oneshot::Sender<()>),
}

/// Everything that comes into the actor besides commands.
#[derive(Debug)]
enum Inbox {
    Session(FromSession),
    Accepted(TcpStream, SocketAddr),
    Connected { peer: IpAddr, id: PeerId, stream: TcpStream },
    ConnectFailed { peer: IpAddr, id: PeerId, words: String },
}

impl Speaker {
    /// Binds the listeners (error: address in use etc.) and spawns the speaker.
    pub async fn start(cfg: SpeakerConfig) -> Result<(SpeakerHandle, mpsc::Receiver<SpeakerEvent>)> {
        cfg.validate()?;
        let listeners = cfg.listen.iter().map(|a| bind(*a)).collect::<Result<Vec<_>>>()?;
        let (inbox_tx, inbox_rx) = mpsc::channel(INBOX);
        let (cmd_tx, cmd_rx) = mpsc::unbounded_channel();
        // The actor never waits on its owner: events queue here, and a forwarder feeds the
        // bounded channel the owner reads.
        let (ev_tx, mut ev_rx) = mpsc::unbounded_channel();
        let (out_tx, out_rx) = mpsc::channel(64);
        tokio::spawn(async move {
            while let Some(e) = ev_rx.recv().await {
                if out_tx.send(e).await.is_err() {
                    break;
                }
            }
        });
        let listen_tasks = listeners
            .into_iter()
            .map(|l| {
                let tx = inbox_tx.clone();
                tokio::spawn(accept_loop(l, tx))
            })
            .collect();
        let external: Arc<RwLock<HashSet<IpAddr>>> = Arc::default();
        let mut rib = Rib::new(RibConfig { asn: cfg.asn, router_id: cfg.router_id, cluster_id: cfg.cluster_id });
        let ext = external.clone();
        rib.set_export_policy(Box::new(move |to, route| {
            route.from.is_none() || !ext.read().map(|s| s.contains(&to.addr)).unwrap_or(false)
        }));
        let actor = Actor {
            started: Instant::now(),
            cfg,
            rib,
            peers: BTreeMap::new(),
            by_id: HashMap::new(),
            conns: HashMap::new(),
            next_conn: 1,
            local: BTreeSet::new(),
            external,
            inbox_tx,
            events: ev_tx,
            fib: Vec::new(),
            listeners: listen_tasks,
            peers_set: false,
            converged: false,
            converge_pending: false,
            stopping: None,
        };
        tokio::spawn(actor.run(inbox_rx, cmd_rx));
        Ok((SpeakerHandle { tx: cmd_tx }, out_rx))
    }
}

impl SpeakerHandle {
    async fn ask<T: Default>(&self, f: impl FnOnce(oneshot::Sender<T>) -> Command) -> T {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(f(tx)).is_err() {
            return T::default();
        }
        rx.await.unwrap_or_default()
    }

    /// The desired set of peers; diffed by address (a changed spec = remove + add).
    pub async fn set_peers(&self, peers: Vec<PeerSpec>) {
        self.ask(|tx| Command::SetPeers(peers, tx)).await
    }

    /// The full desired set of local routes (diffed); next hop = self.
    pub async fn originate(&self, prefixes: Vec<IpNetwork>) {
        self.ask(|tx| Command::Originate(prefixes, tx)).await
    }

    pub async fn status(&self) -> Vec<PeerStatus> {
        self.ask(Command::Status).await
    }

    /// Loc-RIB: prefix, next hop, from-peer (None = local), as_path.
    pub async fn routes(&self) -> Vec<RouteInfo> {
        self.ask(Command::Routes).await
    }

    /// Cease NOTIFICATION to every peer, close. No FIB events follow (the kernel routes stay,
    /// as graceful restart wants).
    pub async fn stop(&self) {
        self.ask(Command::Stop).await
    }

    /// Stop without notifying (what a crash / restart looks like to peers; GR helpers keep routes).
    pub async fn abort(&self) {
        self.ask(Command::Abort).await
    }
}

/// A listening socket: SO_REUSEADDR (a restarted agent binds again while old connections
/// linger in TIME_WAIT) and, for IPv6, IPV6_V6ONLY (so that 0.0.0.0:179 and [::]:179 can
/// both be bound).
fn bind(addr: SocketAddr) -> Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let err = |source| Error::Listen { addr, source };
    let s = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP)).map_err(err)?;
    s.set_reuse_address(true).map_err(err)?;
    if addr.is_ipv6() {
        s.set_only_v6(true).map_err(err)?;
    }
    s.set_nonblocking(true).map_err(err)?;
    s.bind(&addr.into()).map_err(err)?;
    s.listen(128).map_err(err)?;
    TcpListener::from_std(s.into()).map_err(err)
}

async fn accept_loop(l: TcpListener, tx: mpsc::Sender<Inbox>) {
    loop {
        match l.accept().await {
            Ok((s, from)) => {
                if tx.send(Inbox::Accepted(s, from)).await.is_err() {
                    return;
                }
            }
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "BGP listener: accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

struct PeerEntry {
    spec: PeerSpec,
    id: PeerId,
    conns: Vec<ConnId>,
    established: Option<ConnId>,
    up_since: Option<Instant>,
    connecting: Option<JoinHandle<()>>,
    next_connect: Option<Instant>,
    /// Graceful restart helper: when the peer's stale routes go.
    restart_deadline: Option<Instant>,
    last_error: Option<String>,
    /// The established session's families, and those whose End-of-RIB came.
    families: Vec<Family>,
    eor: Vec<Family>,
    /// The established session's peer announced graceful restart.
    peer_gr: bool,
}

impl PeerEntry {
    fn may_connect(&self) -> bool {
        !self.spec.passive && self.conns.is_empty() && self.connecting.is_none() && self.established.is_none()
    }
}

struct Conn {
    peer: IpAddr,
    id: PeerId,
    direction: Direction,
    state: State,
    tx: mpsc::UnboundedSender<ToSession>,
    task: JoinHandle<()>,
}

struct Actor {
    cfg: SpeakerConfig,
    started: Instant,
    rib: Rib,
    peers: BTreeMap<IpAddr, PeerEntry>,
    by_id: HashMap<PeerId, IpAddr>,
    conns: HashMap<ConnId, Conn>,
    next_conn: ConnId,
    local: BTreeSet<Prefix>,
    external: Arc<RwLock<HashSet<IpAddr>>>,
    inbox_tx: mpsc::Sender<Inbox>,
    events: mpsc::UnboundedSender<SpeakerEvent>,
    /// FIB changes of the current burst.
    fib: Vec<fib::Change>,
    listeners: Vec<JoinHandle<()>>,
    /// `set_peers` was called once: convergence can be judged.
    peers_set: bool,
    converged: bool,
    /// `Converged` is due after the current burst's FIB event.
    converge_pending: bool,
    /// Stopping: when to give up waiting for the sessions, and who waits.
    stopping: Option<(Instant, Vec<oneshot::Sender<()>>)>,
}

enum Flow {
    Continue,
    /// End the speaker, then answer these.
    Exit(Vec<oneshot::Sender<()>>),
}

fn to_net(p: Prefix) -> Option<IpNetwork> {
    IpNetwork::new(p.addr(), p.length()).ok()
}

fn to_prefix(n: IpNetwork) -> Option<Prefix> {
    Prefix::new(n.network(), n.prefix())
}

async fn sleep_until(t: Option<Instant>) {
    match t {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}

impl Actor {
    async fn run(mut self, mut inbox: mpsc::Receiver<Inbox>, mut cmds: mpsc::UnboundedReceiver<Command>) {
        let mut cmds_open = true;
        loop {
            let deadline = self.next_deadline();
            tokio::select! {
                m = inbox.recv() => {
                    if let Some(m) = m {
                        self.on_inbox(m);
                    }
                }
                c = cmds.recv(), if cmds_open => match c {
                    Some(c) => {
                        if let Flow::Exit(waiting) = self.on_command(c) {
                            return self.finish(waiting).await;
                        }
                    }
                    // Every handle is gone: the speaker goes on.
                    None => cmds_open = false,
                },
                _ = sleep_until(deadline) => self.on_timers(),
            }
            for _ in 0..MAX_BURST {
                match inbox.try_recv() {
                    Ok(m) => self.on_inbox(m),
                    Err(_) => break,
                }
            }
            self.flush();
            if let Some(waiting) = self.stop_done() {
                return self.finish(waiting).await;
            }
        }
    }

    /// Ends every task and waits until they are gone (so that the listening sockets are
    /// closed when `stop` or `abort` returns: a new speaker can bind them at once).
    async fn finish(mut self, waiting: Vec<oneshot::Sender<()>>) {
        for t in self.abort_all() {
            let _ = t.await;
        }
        for w in waiting {
            let _ = w.send(());
        }
    }

    fn emit(&self, e: SpeakerEvent) {
        let _ = self.events.send(e);
    }

    fn push_changes(&mut self, changes: Vec<rib::Change>) {
        self.fib.extend(changes.into_iter().filter_map(|c| {
            let via = match c.best {
                Some(b) if b.peer.is_some() => Some(fib::NextHop::via(b.attrs.next_hop.addr())),
                _ => None,
            };
            Some(fib::Change { prefix: to_net(c.prefix)?, via })
        }));
    }

    fn next_deadline(&self) -> Option<Instant> {
        let mut d: Option<Instant> = None;
        let mut at = |t: Option<Instant>| {
            if let Some(t) = t {
                d = Some(d.map_or(t, |x| x.min(t)));
            }
        };
        for p in self.peers.values() {
            at(p.restart_deadline);
            if p.may_connect() && self.stopping.is_none() {
                at(p.next_connect);
            }
        }
        if !self.converged && self.peers_set {
            at(Some(self.started + SELECTION_DEFERRAL));
        }
        at(self.stopping.as_ref().map(|s| s.0));
        d
    }

    fn on_timers(&mut self) {
        let now = Instant::now();
        let addrs: Vec<IpAddr> = self.peers.keys().copied().collect();
        for a in addrs {
            let Some(p) = self.peers.get_mut(&a) else { continue };
            if p.restart_deadline.is_some_and(|t| t <= now) {
                p.restart_deadline = None;
                let id = p.id;
                tracing::info!(peer = %a, "graceful restart: the peer's stale routes expired");
                match self.rib.restart_timer_expired(id) {
                    Ok(c) => self.push_changes(c),
                    Err(e) => tracing::warn!(peer = %a, error = %e, "restart timer"),
                }
            }
            let Some(p) = self.peers.get_mut(&a) else { continue };
            if self.stopping.is_none() && p.may_connect() && p.next_connect.is_some_and(|t| t <= now) {
                p.next_connect = None;
                self.spawn_connect(a);
            }
        }
        if !self.converged && self.peers_set && now >= self.started + SELECTION_DEFERRAL {
            tracing::info!("selection deferral ran out: converged without every End-of-RIB");
            let c = self.rib.selection_deferral_expired();
            self.push_changes(c);
            self.converged = true;
            self.converge_pending = true;
        }
    }

    fn spawn_connect(&mut self, addr: IpAddr) {
        let Some(p) = self.peers.get_mut(&addr) else { return };
        let to = SocketAddr::new(addr, p.spec.port);
        let local = match addr {
            IpAddr::V4(_) => p.spec.local_v4.map(IpAddr::V4),
            IpAddr::V6(_) => p.spec.local_v6.map(IpAddr::V6),
        };
        let (id, tx) = (p.id, self.inbox_tx.clone());
        let timeout = Duration::from_secs(u64::from(self.cfg.connect_retry.max(3)));
        p.connecting = Some(tokio::spawn(async move {
            let m = match session::connect(to, local, timeout).await {
                Ok(stream) => Inbox::Connected { peer: addr, id, stream },
                Err(words) => Inbox::ConnectFailed { peer: addr, id, words },
            };
            let _ = tx.send(m).await;
        }));
    }

    fn fsm_config(&self, spec: &PeerSpec) -> FsmConfig {
        let mut c = FsmConfig::new(self.cfg.asn, spec.asn, self.cfg.router_id);
        c.hold_time = self.cfg.hold_time;
        c.connect_retry_time = self.cfg.connect_retry;
        c.passive = spec.passive;
        c.idle_hold_time = None;
        if let Some(t) = self.cfg.graceful_restart {
            // Forwarding state is preserved: the kernel keeps our routes across a restart of
            // the agent and across a session reset (we are a helper for the peer's routes).
            c.capabilities.push(graceful_restart_capability(
                self.cfg.restarting && !self.converged,
                t,
                &[Family::Ipv4Unicast, Family::Ipv6Unicast],
                true,
            ));
        }
        c
    }

    fn spawn_session(&mut self, addr: IpAddr, stream: TcpStream, direction: Direction) {
        let Some(spec) = self.peers.get(&addr).map(|p| p.spec.clone()) else { return };
        let conn = self.next_conn;
        self.next_conn += 1;
        let (tx, rx) = mpsc::unbounded_channel();
        let args = SessionArgs {
            conn,
            stream,
            direction,
            fsm: self.fsm_config(&spec),
            to_actor: self.inbox_tx.clone(),
            cmds: rx,
        };
        let task = tokio::spawn(session::run(args));
        let Some(p) = self.peers.get_mut(&addr) else { return };
        p.conns.push(conn);
        self.conns.insert(conn, Conn { peer: addr, id: p.id, direction, state: State::OpenSent, tx, task });
    }

    /// The peer entry a connection belongs to (not one re-added since).
    fn entry_of(&mut self, conn: ConnId) -> Option<&mut PeerEntry> {
        let c = self.conns.get(&conn)?;
        let p = self.peers.get_mut(&c.peer)?;
        (p.id == c.id && p.conns.contains(&conn)).then_some(p)
    }

    fn on_inbox(&mut self, m: Inbox) {
        match m {
            Inbox::Accepted(stream, from) => {
                let addr = from.ip().to_canonical();
                if self.stopping.is_some() {
                    return;
                }
                if !self.peers.contains_key(&addr) {
                    tracing::info!(%from, "BGP connection from an address that is not a configured peer: closed");
                    return;
                }
                self.spawn_session(addr, stream, Direction::Incoming);
            }
            Inbox::Connected { peer, id, stream } => {
                let Some(p) = self.peers.get_mut(&peer).filter(|p| p.id == id) else { return };
                p.connecting = None;
                if self.stopping.is_some() || p.established.is_some() {
                    return;
                }
                self.spawn_session(peer, stream, Direction::Outgoing);
            }
            Inbox::ConnectFailed { peer, id, words } => {
                let retry = Duration::from_secs(u64::from(self.cfg.connect_retry));
                let Some(p) = self.peers.get_mut(&peer).filter(|p| p.id == id) else { return };
                tracing::debug!(peer = %peer, error = %words, "connection attempt failed");
                p.connecting = None;
                p.last_error = Some(words);
                p.next_connect = Some(Instant::now() + retry);
            }
            Inbox::Session(s) => self.on_session(s),
        }
    }

    fn on_session(&mut self, s: FromSession) {
        match s {
            FromSession::OpenReceived { conn, bgp_id, verdict } => {
                let go = self.collision(conn, bgp_id);
                if go {
                    if let Some(c) = self.conns.get_mut(&conn) {
                        c.state = State::OpenConfirm;
                    }
                }
                let _ = verdict.send(go);
            }
            FromSession::Up { conn, caps, bgp_id, local } => self.session_up(conn, caps, bgp_id, local),
            FromSession::Routes { conn, updates } => {
                if self.stopping.is_some() {
                    return;
                }
                let Some(p) = self.entry_of(conn).filter(|p| p.established == Some(conn)) else { return };
                let id = p.id;
                for u in &updates {
                    if let Some(f) = u.end_of_rib_family() {
                        if !p.eor.contains(&f) {
                            p.eor.push(f);
                        }
                    }
                }
                for u in &updates {
                    match self.rib.receive(id, u) {
                        Ok(c) => self.push_changes(c),
                        Err(e) => tracing::warn!(error = %e, "UPDATE not applied"),
                    }
                }
            }
            FromSession::Refresh { conn, family } => {
                if let Some(id) = self.entry_of(conn).filter(|p| p.established == Some(conn)).map(|p| p.id) {
                    let _ = self.rib.refresh(id, family);
                }
            }
            FromSession::Down { conn, established, graceful, words } => {
                let was_up = self.entry_of(conn).is_some_and(|p| p.established == Some(conn));
                let belongs = self.entry_of(conn).is_some();
                let retry = Duration::from_secs(u64::from(self.cfg.connect_retry));
                // A session that lasted is tried again at once; one that failed early (the
                // peer rejects what we send, say) only after the connect retry time.
                let lasted =
                    was_up && self.entry_of(conn).and_then(|p| p.up_since).is_some_and(|t| t.elapsed() >= retry);
                let Some(c) = self.conns.remove(&conn) else { return };
                if !belongs {
                    return;
                }
                if was_up {
                    self.session_down(c.peer, graceful, words);
                } else if let Some(p) = self.peers.get_mut(&c.peer) {
                    if words.is_some() {
                        p.last_error = words;
                    }
                }
                let Some(p) = self.peers.get_mut(&c.peer) else { return };
                p.conns.retain(|x| *x != conn);
                if p.conns.is_empty() && p.next_connect.is_none() {
                    p.next_connect = Some(if established && lasted { Instant::now() } else { Instant::now() + retry });
                }
            }
        }
    }

    /// RFC 4271 §6.8, on the peer's OPEN on `conn`: whether this connection goes on.
    fn collision(&mut self, conn: ConnId, bgp_id: Ipv4Addr) -> bool {
        if self.stopping.is_some() {
            return false;
        }
        let Some((dir, addr)) = self.conns.get(&conn).map(|c| (c.direction, c.peer)) else { return false };
        let Some(p) = self.entry_of(conn) else { return false };
        let others: Vec<ConnId> = p.conns.iter().copied().filter(|c| *c != conn).collect();
        let (established, peer_gr) = (p.established, p.peer_gr);
        if let Some(e) = established {
            if !peer_gr {
                tracing::info!(peer = %addr, "connection collision with an established session: new connection refused");
                return false;
            }
            // RFC 4724 §4.2: the peer restarted and comes back before we noticed the old
            // session end; that session is over, its routes are kept stale.
            tracing::info!(peer = %addr, "peer reconnected with graceful restart: the old session is over");
            if let Some(c) = self.conns.remove(&e) {
                c.task.abort();
            }
            if let Some(p) = self.peers.get_mut(&addr) {
                p.conns.retain(|x| *x != e);
            }
            self.session_down(addr, true, Some("the peer reconnected (graceful restart)".into()));
        }
        let keep = collision_survivor(self.cfg.router_id, bgp_id);
        for o in others {
            let Some(oc) = self.conns.get(&o) else { continue };
            if !matches!(oc.state, State::OpenSent | State::OpenConfirm) {
                continue;
            }
            if oc.direction == dir || dir == keep {
                tracing::info!(peer = %addr, "connection collision: closing the {:?} connection", oc.direction);
                let _ = oc.tx.send(ToSession::Dump);
            } else {
                return false;
            }
        }
        true
    }

    fn session_up(
        &mut self,
        conn: ConnId,
        caps: bgp::packet::SessionCaps,
        bgp_id: Ipv4Addr,
        local: Option<SocketAddr>,
    ) {
        let stopping = self.stopping.is_some();
        if let Some(c) = self.conns.get_mut(&conn) {
            c.state = State::Established;
        }
        let Some(p) = self.entry_of(conn) else { return };
        if stopping || p.established.is_some() {
            if let Some(c) = self.conns.get(&conn) {
                let _ = c.tx.send(ToSession::Stop);
            }
            return;
        }
        p.established = Some(conn);
        p.up_since = Some(Instant::now());
        p.families = caps.families.clone();
        p.eor.clear();
        p.peer_gr = caps.peer_graceful_restart.is_some();
        if p.restart_deadline.is_some() {
            p.restart_deadline = Some(Instant::now() + STALE_PATH_TIME);
        }
        let local_ip = local.map(|l| l.ip().to_canonical());
        let v4 = p.spec.local_v4.or(match local_ip {
            Some(IpAddr::V4(a)) => Some(a),
            _ => None,
        });
        let v6 = p.spec.local_v6.or(match local_ip {
            Some(IpAddr::V6(a)) if !a.is_unicast_link_local() => Some(a),
            _ => None,
        });
        let (id, addr) = (p.id, p.spec.address);
        tracing::info!(peer = %addr, "BGP session up");
        let _ = self.rib.set_local_addresses(id, v4, v6);
        match self.rib.peer_up(id, caps, bgp_id) {
            Ok(c) => self.push_changes(c),
            Err(e) => tracing::warn!(peer = %addr, error = %e, "peer up"),
        }
        self.emit(SpeakerEvent::PeerUp(addr));
    }

    /// The established session with `addr` is gone.
    fn session_down(&mut self, addr: IpAddr, graceful: bool, words: Option<String>) {
        let Some(p) = self.peers.get_mut(&addr) else { return };
        p.established = None;
        p.up_since = None;
        p.eor.clear();
        p.families.clear();
        if words.is_some() {
            p.last_error = words.clone();
        }
        let id = p.id;
        match self.rib.peer_down(id, graceful) {
            Ok(d) => {
                if let (Some(t), Some(p)) = (d.restart_timer, self.peers.get_mut(&addr)) {
                    tracing::info!(peer = %addr, restart_time = t, "graceful restart: keeping the peer's routes");
                    p.restart_deadline = Some(Instant::now() + Duration::from_secs(u64::from(t)));
                }
                self.push_changes(d.changes);
            }
            Err(e) => tracing::warn!(peer = %addr, error = %e, "peer down"),
        }
        let reason = words.unwrap_or_else(|| "stopped".into());
        tracing::info!(peer = %addr, %reason, "BGP session down");
        if self.stopping.is_none() {
            self.emit(SpeakerEvent::PeerDown { address: addr, reason });
        }
    }

    fn on_command(&mut self, c: Command) -> Flow {
        match c {
            Command::SetPeers(specs, reply) => {
                if self.stopping.is_none() {
                    self.set_peers(specs);
                }
                let _ = reply.send(());
            }
            Command::Originate(prefixes, reply) => {
                if self.stopping.is_none() {
                    self.originate(prefixes);
                }
                let _ = reply.send(());
            }
            Command::Status(reply) => {
                let _ = reply.send(self.status());
            }
            Command::Routes(reply) => {
                let _ = reply.send(self.routes());
            }
            Command::Stop(reply) => match &mut self.stopping {
                Some((_, waiting)) => waiting.push(reply),
                None => {
                    tracing::info!("BGP speaker stopping");
                    for c in self.conns.values() {
                        let _ = c.tx.send(ToSession::Stop);
                    }
                    for p in self.peers.values_mut() {
                        if let Some(t) = p.connecting.take() {
                            t.abort();
                        }
                    }
                    for l in &self.listeners {
                        l.abort();
                    }
                    self.stopping = Some((Instant::now() + STOP_TIMEOUT, vec![reply]));
                }
            },
            Command::Abort(reply) => {
                tracing::info!("BGP speaker aborted");
                return Flow::Exit(vec![reply]);
            }
        }
        Flow::Continue
    }

    /// Aborts every task (sessions, connection attempts, listeners); returns their handles.
    fn abort_all(&mut self) -> Vec<JoinHandle<()>> {
        let mut all: Vec<JoinHandle<()>> = self.conns.drain().map(|(_, c)| c.task).collect();
        all.extend(self.peers.values_mut().filter_map(|p| p.connecting.take()));
        all.append(&mut self.listeners);
        for t in &all {
            t.abort();
        }
        all
    }

    /// Stopping, and every session is gone or the time is up: who waits for the end.
    fn stop_done(&mut self) -> Option<Vec<oneshot::Sender<()>>> {
        let (deadline, _) = self.stopping.as_ref()?;
        if !self.conns.is_empty() && Instant::now() < *deadline {
            return None;
        }
        self.stopping.take().map(|(_, waiting)| waiting)
    }

    fn set_peers(&mut self, specs: Vec<PeerSpec>) {
        let want: BTreeMap<IpAddr, PeerSpec> = specs.into_iter().map(|s| (s.address, s)).collect();
        let gone: Vec<IpAddr> =
            self.peers.iter().filter(|(a, p)| want.get(a) != Some(&p.spec)).map(|(a, _)| *a).collect();
        for a in gone {
            self.remove_peer(a);
        }
        for (a, s) in want {
            if self.peers.contains_key(&a) {
                continue;
            }
            let id = self.rib.add_peer(PeerConfig {
                addr: a,
                asn: s.asn,
                rr_client: s.rr_client,
                local_v4: s.local_v4,
                local_v6: s.local_v6,
            });
            self.by_id.insert(id, a);
            tracing::info!(peer = %a, asn = s.asn, kind = %s.kind, "BGP peer added");
            self.peers.insert(
                a,
                PeerEntry {
                    spec: s,
                    id,
                    conns: Vec::new(),
                    established: None,
                    up_since: None,
                    connecting: None,
                    next_connect: Some(Instant::now()),
                    restart_deadline: None,
                    last_error: None,
                    families: Vec::new(),
                    eor: Vec::new(),
                    peer_gr: false,
                },
            );
        }
        if let Ok(mut ext) = self.external.write() {
            *ext = self.peers.values().filter(|p| p.spec.external).map(|p| p.spec.address).collect();
        }
        if !self.peers_set {
            self.peers_set = true;
            if self.cfg.restarting && !self.peers.is_empty() {
                // RFC 4724 §4.1: hold selection until the peers have sent their tables.
                self.rib.defer_selection();
            }
        }
    }

    fn remove_peer(&mut self, a: IpAddr) {
        let Some(mut p) = self.peers.remove(&a) else { return };
        tracing::info!(peer = %a, "BGP peer removed");
        for c in &p.conns {
            if let Some(c) = self.conns.get(c) {
                let _ = c.tx.send(ToSession::Stop);
            }
        }
        if let Some(t) = p.connecting.take() {
            t.abort();
        }
        self.by_id.remove(&p.id);
        match self.rib.remove_peer(p.id) {
            Ok(c) => self.push_changes(c),
            Err(e) => tracing::warn!(peer = %a, error = %e, "remove peer"),
        }
        if p.established.is_some() {
            self.emit(SpeakerEvent::PeerDown { address: a, reason: "peer removed from the configuration".into() });
        }
    }

    fn originate(&mut self, prefixes: Vec<IpNetwork>) {
        let want: BTreeSet<Prefix> = prefixes.into_iter().filter_map(to_prefix).collect();
        let gone: Vec<Prefix> = self.local.difference(&want).copied().collect();
        let new: Vec<Prefix> = want.difference(&self.local).copied().collect();
        for p in gone {
            let c = self.rib.withdraw_local(p);
            self.push_changes(c);
        }
        for p in new {
            let nh = match p.family() {
                Family::Ipv4Unicast => MpNextHop::Ipv4(self.cfg.router_id),
                Family::Ipv6Unicast => MpNextHop::Ipv6 { global: Ipv6Addr::UNSPECIFIED, link_local: None },
            };
            let c = self.rib.originate(p, PathAttrs::local(nh));
            self.push_changes(c);
        }
        self.local = want;
    }

    fn status(&self) -> Vec<PeerStatus> {
        let now = Instant::now();
        self.peers
            .values()
            .map(|p| {
                let state = if p.established.is_some() {
                    State::Established
                } else if let Some(s) =
                    p.conns.iter().filter_map(|c| self.conns.get(c)).map(|c| c.state).max_by_key(|s| match s {
                        State::OpenConfirm => 2,
                        State::OpenSent => 1,
                        _ => 0,
                    })
                {
                    s
                } else if p.connecting.is_some() {
                    State::Connect
                } else if p.spec.passive || p.next_connect.is_some() {
                    State::Active
                } else {
                    State::Idle
                };
                PeerStatus {
                    address: p.spec.address,
                    asn: p.spec.asn,
                    kind: p.spec.kind.clone(),
                    state: status::state_name(state).to_string(),
                    uptime_secs: p.up_since.map(|t| now.duration_since(t).as_secs()),
                    prefixes_received: self.rib.adj_rib_in(p.id).len(),
                    prefixes_sent: self.rib.adj_rib_out(p.id).map(|v| v.len()).unwrap_or(0),
                    last_error: p.last_error.clone(),
                }
            })
            .collect()
    }

    fn routes(&self) -> Vec<RouteInfo> {
        self.rib
            .loc_rib()
            .into_iter()
            .filter_map(|(pfx, b)| {
                let peer = b.peer.and_then(|id| self.by_id.get(&id).copied());
                Some(RouteInfo {
                    prefix: to_net(pfx)?,
                    next_hop: b.peer.map(|_| b.attrs.next_hop.addr()),
                    peer,
                    as_path: b.attrs.as_path.0.iter().flat_map(|s| s.asns.iter().copied()).collect(),
                    local_pref: b.attrs.local_pref,
                })
            })
            .collect()
    }

    fn check_converged(&mut self) {
        if self.converged || !self.peers_set || self.stopping.is_some() {
            return;
        }
        // A restarting RIB may end its deferral early (a peer without graceful restart came
        // up); the kernel's stale routes wait for every peer's End-of-RIB all the same.
        let done = !self.rib.deferring()
            && self.peers.values().all(|p| p.established.is_some() && p.families.iter().all(|f| p.eor.contains(f)));
        if done {
            tracing::info!("converged: every peer sent End-of-RIB");
            self.converged = true;
            self.converge_pending = true;
        }
    }

    /// The end of a burst: one FIB event, `Converged` if due, and each peer's UPDATEs.
    fn flush(&mut self) {
        self.check_converged();
        if !self.fib.is_empty() {
            let b = std::mem::take(&mut self.fib);
            if self.stopping.is_none() {
                self.emit(SpeakerEvent::Fib(b));
            }
        }
        if self.converge_pending {
            self.converge_pending = false;
            self.emit(SpeakerEvent::Converged);
        }
        if self.stopping.is_some() {
            return;
        }
        for p in self.peers.values() {
            let Some(c) = p.established.and_then(|c| self.conns.get(&c)) else { continue };
            match self.rib.updates(p.id) {
                Ok(v) if !v.is_empty() => {
                    let _ = c.tx.send(ToSession::Send(v));
                }
                Ok(_) => {}
                Err(e) => tracing::warn!(peer = %p.spec.address, error = %e, "UPDATEs for the peer"),
            }
        }
    }
}
