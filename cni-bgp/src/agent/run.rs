//! The agent's main loop: start order, the event loop and the stop.
//!
//! Start order (each step needs the one before):
//! 1. check the flags (and resolve `--node-name`, `--node-ip`);
//! 2. bind `status.sock` and `control.sock` (not ready yet);
//! 3. enable IPv4 (and, with `--node-ipv6`, IPv6) forwarding (IPv6 is also
//!    enabled as soon as an IPv6 block is advertised);
//! 4. `Fib::reconcile_start`: routes of ours already in the kernel mean a
//!    restart (graceful restart as restarting speaker: they stay until
//!    every session has re-converged);
//! 5. read the cluster config; register this node in etcd (a lease);
//!    list the nodes and the IPAM blocks;
//! 6. start the BGP speaker (the listener binds here), blackhole the own
//!    blocks, originate, set the peers;
//! 7. ready.
//!
//! Then it follows etcd (config, nodes, blocks), feeds the speaker's route
//! changes into the kernel and sweeps stale routes once converged. On
//! SIGTERM or SIGINT it stops without a NOTIFICATION (peers that are
//! graceful-restart helpers keep our routes) and deletes no kernel route;
//! its registration lapses after `--registration-ttl` unless it comes back
//! (or at once with `--deregister-on-exit`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use etcd_kv::{EtcdClient, Timeouts};
use ipnetwork::IpNetwork;
use linux_net::netlink::Netlink;
use linux_net::route::{self, RouteKind};
use tokio::sync::mpsc;

use super::blocks::{self, Blocks};
use super::control::{InstalledRoute, NodeInfo, Request, RoutesReply, Sockets, StatusReply};
use super::flags::{AgentConfig, AgentFlags};
use super::host;
use super::peers::{check_duplicates, desired_peers, is_reflector, DesiredPeer, Me};
use super::prefixes::{advertised, Advertised};
use crate::cluster::{BgpStore, ClusterBgpConfig, ClusterEvent, ConfigError, NodeRecord};
use crate::fib::{self, Fib};
use crate::speaker::{PeerSpec, Speaker, SpeakerConfig, SpeakerEvent, SpeakerHandle};
use crate::status::Answer;
use crate::Error;

/// Seconds between connection attempts to a peer.
const CONNECT_RETRY: u16 = 5;
/// How long a restarted speaker waits for its port to be free again.
const REBIND_WAIT: Duration = Duration::from_secs(10);

fn flag_err(e: ConfigError) -> Error {
    Error::Flag(e)
}

/// Checks the flags, resolving the host defaults.
pub fn resolve(flags: &AgentFlags) -> Result<AgentConfig, Error> {
    let name = match &flags.node_name {
        Some(n) => n.clone(),
        None => host::hostname().map_err(flag_err)?,
    };
    let ip = match flags.node_ip {
        Some(ip) => ip,
        None => {
            let mut nl = Netlink::open()?;
            host::default_ipv4(&mut nl).map_err(flag_err)?
        }
    };
    flags.check(name, ip).map_err(flag_err)
}

/// What this node's speaker is: changing any of it restarts the speaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Identity {
    asn: u32,
    cluster_id: Option<Ipv4Addr>,
}

/// The config rules that concern this node only: its `--cluster-id`
/// against its `routeReflectors` entry, its external peers (config and
/// `--peer`) against each other.
fn check_for_node(cfg: &ClusterBgpConfig, a: &AgentConfig) -> Result<(), ConfigError> {
    check_duplicates(cfg, &a.node_name, &a.peers)?;
    for (i, r) in cfg.route_reflectors.iter().enumerate() {
        if r.node == a.node_name {
            if let (Some(flag), Some(conf)) = (a.cluster_id, r.cluster_id) {
                if flag != conf {
                    return Err(ConfigError {
                        key: format!("routeReflectors[{i}].clusterId"),
                        reason: format!("{conf} for node {}, but its agent runs with --cluster-id {flag}", r.node),
                    });
                }
            }
        }
    }
    Ok(())
}

fn identity(cfg: &ClusterBgpConfig, a: &AgentConfig) -> Identity {
    let asn = a.as_number.unwrap_or(cfg.as_number);
    let cluster_id = is_reflector(cfg, &a.node_name, a.route_reflector).then(|| {
        a.cluster_id
            .or_else(|| cfg.route_reflectors.iter().find(|r| r.node == a.node_name).and_then(|r| r.cluster_id))
            .unwrap_or(a.node_ip)
    });
    Identity { asn, cluster_id }
}

struct Agent {
    cfg: AgentConfig,
    me: Me,
    record: NodeRecord,
    store: Arc<BgpStore>,
    cluster: ClusterBgpConfig,
    nodes: BTreeMap<String, NodeRecord>,
    blocks: Blocks,
    adv: Advertised,
    peers: Vec<DesiredPeer>,
    fib: Fib,
    id: Identity,
    restarting: bool,
    speaker: SpeakerHandle,
    ready: bool,
    /// After a speaker restart: the prefixes the old speaker had learned,
    /// still in the kernel; those the new one has not learned again by its
    /// `Converged` are withdrawn from the kernel then.
    restart_sweep: Option<HashSet<IpNetwork>>,
    /// FIB changes applied since the heap was last trimmed ([`release_free_heap`]).
    since_trim: usize,
}

/// After this many FIB changes, the freed heap is returned to the kernel ([`release_free_heap`]):
/// at most 25 trims while 100k routes arrive.
const TRIM_AFTER: usize = 4096;

/// Gives the heap's free pages back to the kernel (glibc's `malloc_trim(0)`). A burst of routes
/// leaves the buffers it was decoded, selected and written with freed, and glibc keeps freed
/// pages inside its heap resident: they count in the RSS operators see until reused.
fn release_free_heap() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes no pointer; it only walks glibc's own free lists.
    unsafe {
        libc::malloc_trim(0);
    }
}

impl Agent {
    fn speaker_config(&self) -> SpeakerConfig {
        let mut listen = vec![SocketAddr::new(IpAddr::V4(self.cfg.node_ip), self.cfg.listen_port)];
        if let Some(v6) = self.cfg.node_ipv6 {
            listen.push(SocketAddr::new(IpAddr::V6(v6), self.cfg.listen_port));
        }
        speaker_config(&self.cfg, self.id, listen, self.restarting)
    }

    fn peer_specs(&self) -> Vec<PeerSpec> {
        self.peers
            .iter()
            .map(|p| PeerSpec {
                address: p.address,
                asn: p.asn,
                port: p.port,
                local_v4: Some(self.cfg.node_ip),
                local_v6: self.cfg.node_ipv6,
                rr_client: p.rr_client,
                external: p.external,
                passive: false,
                kind: p.kind.clone(),
            })
            .collect()
    }

    /// Recomputes the peers; tells the speaker when they changed.
    async fn repeer(&mut self) {
        let nodes: Vec<NodeRecord> = self.nodes.values().cloned().collect();
        let peers = desired_peers(&self.cluster, &nodes, &self.me, &self.cfg.peers);
        if peers != self.peers {
            tracing::info!(
                peers = ?peers.iter().map(|p| format!("{} AS{} ({})", p.address, p.asn, p.kind)).collect::<Vec<_>>(),
                "peers changed"
            );
            self.peers = peers;
            self.speaker.set_peers(self.peer_specs()).await;
        }
    }

    /// Recomputes what to advertise from the blocks; blackholes own blocks
    /// and originates when it changed.
    async fn readvertise(&mut self, force: bool) {
        let adv = advertised(&self.cfg.node_name, &self.blocks);
        if adv == self.adv && !force {
            return;
        }
        // Routing to an IPv6 block's containers needs IPv6 forwarding, also
        // without --node-ipv6 (IPv4 sessions may carry IPv6 blocks).
        if adv.prefixes.iter().any(|p| p.is_ipv6()) {
            if let Err(e) = fib::enable_forwarding(false, true) {
                tracing::error!("enabling IPv6 forwarding for the advertised IPv6 blocks: {e}");
            }
        }
        if adv.own_blocks != self.adv.own_blocks || force {
            match self.fib.set_own_blocks(&adv.own_blocks) {
                Ok(failures) => {
                    for f in failures {
                        tracing::error!(prefix = %f.prefix, "blackhole for an own block: {}", f.error);
                    }
                }
                Err(e) => tracing::error!("blackholes for own blocks: {e}"),
            }
        }
        tracing::info!(prefixes = ?adv.prefixes.iter().map(|p| p.to_string()).collect::<Vec<_>>(), "advertising");
        self.adv = adv;
        self.speaker.originate(self.adv.prefixes.clone()).await;
    }

    /// A new valid cluster config: applied unless it breaks a rule that
    /// concerns this node. A changed AS or reflector role restarts the
    /// speaker (sessions come back with the new OPEN).
    async fn config_changed(
        &mut self,
        c: ClusterBgpConfig,
        events: &mut mpsc::Receiver<SpeakerEvent>,
    ) -> Result<(), Error> {
        if let Err(e) = check_for_node(&c, &self.cfg) {
            tracing::error!("rejected BGP config change: {e}; the running config stays");
            return Ok(());
        }
        tracing::info!(config = %c.to_json(), "BGP config changed");
        self.cluster = c;
        let id = identity(&self.cluster, &self.cfg);
        if id != self.id {
            tracing::warn!(old = ?self.id, new = ?id, "this node's AS or route-reflector role changed: restarting the BGP speaker");
            self.id = id;
            let learned: HashSet<IpNetwork> =
                self.speaker.routes().await.into_iter().filter(|r| r.peer.is_some()).map(|r| r.prefix).collect();
            self.restart_sweep = Some(learned);
            // The kernel keeps the routes (swept on the new speaker's
            // `Converged`), peers that are graceful-restart helpers keep
            // ours. Not announced as a restart: every node changes AS at
            // once, and two restarting speakers would each wait for the
            // other's End-of-RIB.
            self.restarting = false;
            self.speaker.abort().await;
            let (s, ev) = start_speaker(self.speaker_config()).await?;
            self.speaker = s;
            *events = ev;
            self.peers.clear();
            self.speaker.originate(self.adv.prefixes.clone()).await;
        }
        self.repeer().await;
        Ok(())
    }

    fn node_info(&self) -> NodeInfo {
        NodeInfo {
            name: self.cfg.node_name.clone(),
            ipv4: self.cfg.node_ip,
            ipv6: self.cfg.node_ipv6,
            as_number: self.id.asn,
            router_id: self.cfg.node_ip,
            listen_port: self.cfg.listen_port,
            route_reflector: self.id.cluster_id.is_some(),
            cluster_id: self.id.cluster_id,
            ready: self.ready,
            advertised: self.adv.prefixes.clone(),
        }
    }

    async fn answer(&self, r: Request) {
        match r {
            Request::Status(tx) => {
                let peers = self.speaker.status().await;
                let _ = tx.send(StatusReply { node: self.node_info(), peers });
            }
            Request::Routes(tx) => {
                let learned = self.speaker.routes().await;
                let installed = match installed_routes() {
                    Ok(v) => v,
                    Err(e) => {
                        tracing::error!("listing our kernel routes: {e}");
                        vec![]
                    }
                };
                let _ = tx.send(RoutesReply { learned, installed });
            }
        }
    }

    /// The speaker converged: stale routes go.
    async fn converged(&mut self) {
        match self.fib.sweep_stale() {
            Ok((n, failures)) => {
                tracing::info!(swept = n, "converged: stale routes of the previous run removed");
                for f in failures {
                    tracing::error!(prefix = %f.prefix, "removing a stale route: {}", f.error);
                }
            }
            Err(e) => tracing::error!("removing stale routes: {e}"),
        }
        if let Some(before) = self.restart_sweep.take() {
            let now: HashSet<IpNetwork> =
                self.speaker.routes().await.into_iter().filter(|r| r.peer.is_some()).map(|r| r.prefix).collect();
            let gone: Vec<fib::Change> =
                before.difference(&now).map(|p| fib::Change { prefix: *p, via: None }).collect();
            tracing::info!(
                withdrawn = gone.len(),
                "speaker restarted and converged: routes not learned again withdrawn"
            );
            self.apply(gone);
        }
    }

    fn apply(&mut self, changes: Vec<fib::Change>) {
        self.since_trim += changes.len();
        let result = self.fib.apply(changes);
        if self.since_trim >= TRIM_AFTER {
            self.since_trim = 0;
            release_free_heap();
        }
        match result {
            Ok(failures) => {
                for f in failures {
                    tracing::error!(prefix = %f.prefix, "installing a learned route: {}", f.error);
                }
            }
            Err(e) => tracing::error!("installing learned routes: {e}"),
        }
    }
}

fn speaker_config(cfg: &AgentConfig, id: Identity, listen: Vec<SocketAddr>, restarting: bool) -> SpeakerConfig {
    SpeakerConfig {
        asn: id.asn,
        router_id: cfg.node_ip,
        listen,
        cluster_id: id.cluster_id,
        graceful_restart: (cfg.graceful_restart_time > 0).then_some(cfg.graceful_restart_time),
        restarting: restarting && cfg.graceful_restart_time > 0,
        hold_time: cfg.hold_time,
        connect_retry: CONNECT_RETRY,
    }
}

/// Starts the speaker; a port still held by the speaker just aborted is
/// waited for (bounded).
async fn start_speaker(sc: SpeakerConfig) -> Result<(SpeakerHandle, mpsc::Receiver<SpeakerEvent>), Error> {
    let deadline = tokio::time::Instant::now() + REBIND_WAIT;
    loop {
        match Speaker::start(sc.clone()).await {
            Ok(x) => return Ok(x),
            Err(e) if tokio::time::Instant::now() < deadline => {
                tracing::debug!("starting the BGP speaker: {e}; trying again");
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Our routes in the kernel (protocol 76, main table, both families).
fn installed_routes() -> Result<Vec<InstalledRoute>, Error> {
    let mut nl = Netlink::open()?;
    let names: HashMap<u32, String> = linux_net::link::list(&mut nl)?.into_iter().map(|l| (l.index, l.name)).collect();
    let mut out = Vec::new();
    for v6 in [false, true] {
        for r in route::list_protocol(&mut nl, v6, fib::MAIN_TABLE, fib::PROTOCOL)? {
            out.push(InstalledRoute {
                prefix: r.dst,
                kind: if r.kind == RouteKind::Blackhole { "blackhole" } else { "unicast" }.into(),
                via: r.gw,
                dev: r.oif.and_then(|i| names.get(&i).cloned()),
            });
        }
    }
    out.sort_by_key(|r| r.prefix);
    Ok(out)
}

/// Retries an etcd step while etcd is unavailable (a bad answer is final).
macro_rules! retry_etcd {
    ($what:expr, $e:expr) => {
        loop {
            match $e.await {
                Ok(v) => break v,
                Err(Error::Etcd(e)) if e.is_unavailable() => {
                    tracing::warn!("{}: etcd unavailable, retrying: {e}", $what);
                    tokio::time::sleep(Duration::from_secs(1)).await;
                }
                Err(e) => return Err(e),
            }
        }
    };
}

/// Runs the agent until SIGTERM or SIGINT (also during the start: an agent
/// waiting for etcd stops cleanly).
pub async fn run(flags: AgentFlags) -> Result<(), Error> {
    let cfg = resolve(&flags)?;
    let sig = |k| tokio::signal::unix::signal(k).map_err(|source| Error::Io { what: "signal handler".into(), source });
    let mut term = sig(tokio::signal::unix::SignalKind::terminate())?;
    let mut int = sig(tokio::signal::unix::SignalKind::interrupt())?;
    let stop = async {
        tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        }
    };
    tokio::pin!(stop);
    let started = tokio::select! {
        a = start(cfg) => a?,
        s = &mut stop => {
            tracing::info!("{s} while starting: stopped");
            return Ok(());
        }
    };
    serve(started, stop).await
}

/// Everything the event loop needs once started.
struct Started {
    a: Agent,
    sockets: Sockets,
    reg: crate::cluster::Registration,
    req_rx: mpsc::Receiver<Request>,
    speaker_events: mpsc::Receiver<SpeakerEvent>,
    cluster_events: mpsc::Receiver<ClusterEvent>,
    block_events: mpsc::Receiver<Blocks>,
}

/// The start order (see the module docs), up to ready.
async fn start(cfg: AgentConfig) -> Result<Started, Error> {
    tracing::info!(node = %cfg.node_name, ip = %cfg.node_ip, ipv6 = ?cfg.node_ipv6, "starting");
    let (req_tx, req_rx) = mpsc::channel(16);
    let sockets = Sockets::bind(&cfg.state_dir, req_tx)
        .map_err(|source| Error::Io { what: format!("state directory {}", cfg.state_dir.display()), source })?;

    fib::enable_forwarding(true, cfg.node_ipv6.is_some())?;
    let mut fib = Fib::new(Netlink::open()?, fib::MAIN_TABLE);
    let found = fib.reconcile_start()?;
    let restarting = !found.is_empty();
    if restarting {
        tracing::info!(routes = found.len(), "routes of a previous run are in the kernel: restarting gracefully");
    }

    let store = Arc::new(BgpStore::new(&cfg.etcd)?);
    sockets.set(Answer { ready: false, message: Some("reading the BGP config from etcd".into()) });
    let (cluster, _) = retry_etcd!("reading the BGP config", store.config());
    check_for_node(&cluster, &cfg).map_err(Error::Invalid)?;
    let id = identity(&cluster, &cfg);
    let record = NodeRecord {
        name: cfg.node_name.clone(),
        ipv4: cfg.node_ip,
        ipv6: cfg.node_ipv6,
        as_number: cfg.as_number,
        route_reflector: cfg.route_reflector,
        cluster_id: cfg.cluster_id,
    };
    sockets.set(Answer { ready: false, message: Some("registering in etcd".into()) });
    let reg = retry_etcd!("registering the node", store.register(&record, cfg.registration_ttl));
    // The watch starts from the config's revision read again after the
    // registration: nothing between the reads and the watch is missed.
    let (cluster, crev) = retry_etcd!("reading the BGP config", store.config());
    // Written between the two reads: the same rules, before anything runs on it.
    if let Err(e) = check_for_node(&cluster, &cfg) {
        if let Err(d) = store.deregister(reg).await {
            tracing::warn!("removing the node registration: {d}");
        }
        return Err(Error::Invalid(e));
    }
    let (nodes, bad, nrev) = retry_etcd!("listing the nodes", store.nodes());
    for (n, e) in bad {
        tracing::warn!(node = %n, "ignoring a node record: {e}");
    }
    let cluster_events = store.watch(crev.min(nrev));
    let etcd = Arc::new(EtcdClient::new(&cfg.etcd, Timeouts::DAEMON)?);
    let prefix = store.prefix().to_string();
    let (block_set, brev) = retry_etcd!("listing the IPAM blocks", async { blocks::list(&etcd, &prefix).await });
    let block_events = blocks::watch(etcd.clone(), prefix.clone(), block_set.clone(), brev);

    let me = Me {
        name: cfg.node_name.clone(),
        ipv4: cfg.node_ip,
        ipv6: cfg.node_ipv6,
        as_number: cfg.as_number,
        route_reflector: cfg.route_reflector,
        port: cfg.listen_port,
    };
    let mut listen = vec![SocketAddr::new(IpAddr::V4(cfg.node_ip), cfg.listen_port)];
    if let Some(v6) = cfg.node_ipv6 {
        listen.push(SocketAddr::new(IpAddr::V6(v6), cfg.listen_port));
    }
    let (speaker, speaker_events) = match Speaker::start(speaker_config(&cfg, id, listen, restarting)).await {
        Ok(x) => x,
        Err(e) => {
            // Registered, but no speaker: the others must not keep trying to peer.
            if let Err(d) = store.deregister(reg).await {
                tracing::warn!("removing the node registration: {d}");
            }
            return Err(e);
        }
    };
    let mut a = Agent {
        me,
        record,
        store: store.clone(),
        cluster,
        nodes: nodes.into_iter().map(|n| (n.name.clone(), n)).collect(),
        blocks: block_set,
        adv: Advertised::default(),
        peers: vec![],
        fib,
        id,
        restarting,
        speaker,
        ready: false,
        restart_sweep: None,
        since_trim: 0,
        cfg,
    };
    a.readvertise(true).await;
    a.repeer().await;
    a.ready = true;
    sockets.set(Answer { ready: true, message: None });
    tracing::info!(node = %a.cfg.node_name, asn = a.id.asn, peers = a.peers.len(), "ready");
    Ok(Started { a, sockets, reg, req_rx, speaker_events, cluster_events, block_events })
}

/// The event loop, until `stop` (a signal) or a fatal error.
async fn serve(
    s: Started,
    mut stop: std::pin::Pin<&mut impl std::future::Future<Output = &'static str>>,
) -> Result<(), Error> {
    let Started { mut a, sockets, mut reg, mut req_rx, mut speaker_events, mut cluster_events, mut block_events } = s;
    let every = (a.cfg.registration_ttl / 3).max(Duration::from_millis(500));
    let mut refresh = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    let result = loop {
        tokio::select! {
            ev = speaker_events.recv() => match ev {
                Some(SpeakerEvent::Fib(changes)) => a.apply(changes),
                Some(SpeakerEvent::Converged) => a.converged().await,
                Some(SpeakerEvent::PeerUp(p)) => tracing::info!(peer = %p, "session established"),
                Some(SpeakerEvent::PeerDown { address, reason }) => tracing::warn!(peer = %address, "session down: {reason}"),
                None => break Err(Error::Stopped("the BGP speaker stopped".into())),
            },
            ev = cluster_events.recv() => match ev {
                Some(ClusterEvent::NodeJoined(n)) | Some(ClusterEvent::NodeChanged(n)) => {
                    a.nodes.insert(n.name.clone(), n);
                    a.repeer().await;
                }
                Some(ClusterEvent::NodeLeft(name)) => {
                    a.nodes.remove(&name);
                    if name == a.cfg.node_name {
                        tracing::warn!("this node's registration was removed: registering again");
                        match a.store.register(&a.record, a.cfg.registration_ttl).await {
                            Ok(r) => reg = r,
                            Err(e) => tracing::error!("registering again: {e}"),
                        }
                    }
                    a.repeer().await;
                }
                Some(ClusterEvent::NodeRejected { name, error }) => {
                    tracing::error!(node = %name, "ignoring a node record: {error}");
                    if a.nodes.remove(&name).is_some() {
                        a.repeer().await;
                    }
                }
                Some(ClusterEvent::ConfigChanged(c)) => {
                    if let Err(e) = a.config_changed(c, &mut speaker_events).await {
                        break Err(e);
                    }
                }
                // Logged by the watch at error level, naming the key.
                Some(ClusterEvent::ConfigRejected { .. }) => {}
                Some(ClusterEvent::Resync) | None => {
                    tracing::warn!("BGP config watch lost events: reading the config and the nodes again");
                    let (c, crev) = retry_etcd!("reading the BGP config", a.store.config());
                    let (nodes, _, nrev) = retry_etcd!("listing the nodes", a.store.nodes());
                    a.nodes = nodes.into_iter().map(|n| (n.name.clone(), n)).collect();
                    cluster_events = a.store.watch(crev.min(nrev));
                    if let Err(e) = a.config_changed(c, &mut speaker_events).await {
                        break Err(e);
                    }
                }
            },
            b = block_events.recv() => match b {
                Some(b) => {
                    a.blocks = b;
                    a.readvertise(false).await;
                }
                None => break Err(Error::Stopped("the IPAM block watch stopped".into())),
            },
            r = req_rx.recv() => if let Some(r) = r {
                a.answer(r).await;
            },
            _ = refresh.tick() => match a.store.refresh(&a.record, reg).await {
                Ok(r) => reg = r,
                Err(e) => tracing::warn!("keeping the node registration alive: {e}"),
            },
            sig = &mut stop => break Ok(sig),
        }
    };
    sockets.set(Answer { ready: false, message: Some("the agent is stopping".into()) });
    drop(sockets);
    // No NOTIFICATION: peers that are graceful-restart helpers keep our
    // routes, and the kernel keeps the routes we installed.
    a.speaker.abort().await;
    match &result {
        Ok(sig) => tracing::info!("{sig}: stopped; kernel routes kept"),
        Err(e) => tracing::error!("stopping: {e}"),
    }
    if a.cfg.deregister_on_exit {
        if let Err(e) = a.store.deregister(reg).await {
            tracing::error!("removing the node registration: {e}");
        }
    }
    result.map(|_| ())
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(flatten)]
        f: AgentFlags,
    }

    fn flags(v: &[&str]) -> AgentFlags {
        Cmd::try_parse_from(std::iter::once("agent").chain(v.iter().copied())).unwrap().f
    }

    #[test]
    fn the_node_name_defaults_to_the_hostname() {
        let want = nix::unistd::gethostname().unwrap().to_string_lossy().into_owned();
        assert!(!want.is_empty());
        let c = resolve(&flags(&["--node-ip", "192.0.2.10"])).unwrap();
        assert_eq!(c.node_name, want);
        let c = resolve(&flags(&["--node-ip", "192.0.2.10", "--node-name", "other-name"])).unwrap();
        assert_eq!(c.node_name, "other-name");
    }

    #[test]
    fn check_for_node_names_the_key_of_what_concerns_this_node() {
        let a =
            flags(&["--node-ip", "192.0.2.10", "--node-name", "n1", "--route-reflector", "--cluster-id", "1.1.1.1"])
                .check("n1".into(), Ipv4Addr::new(192, 0, 2, 10))
                .unwrap();
        let mut cfg = ClusterBgpConfig::default();
        check_for_node(&cfg, &a).unwrap();
        cfg.route_reflectors =
            vec![crate::cluster::RouteReflector { node: "n1".into(), cluster_id: Some(Ipv4Addr::new(2, 2, 2, 2)) }];
        let e = check_for_node(&cfg, &a).unwrap_err();
        assert_eq!(e.key, "routeReflectors[0].clusterId");
        cfg.route_reflectors[0].node = "n2".into();
        check_for_node(&cfg, &a).unwrap();
    }
}
