//! `cni-overlay agent`: the per-host daemon, a drop-in for flanneld's etcd mode.
//!
//! It leases the host's subnet in etcd, creates the VXLAN device, writes the
//! subnet file the CNI side reads, and converges the kernel on every other
//! host's lease (Flannel's L3 mode: per peer one neighbour entry, one FDB
//! entry and one onlink route; `DirectRouting` peers on our L2 segment get a
//! plain route instead). Shutdown keeps lease and kernel state, so a restart
//! disturbs nothing; losing the lease removes routes, device and subnet file.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ipnetwork::{IpNetwork, Ipv4Network};
use linux_net::link::{self, format_mac, parse_mac};
use linux_net::netlink::Netlink;
use linux_net::route::{self, Route};
use linux_net::vxlan::{ensure_vxlan, VxlanSpec};
use linux_net::{addr, neigh, nft};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use ipam::cluster::subnet::{BackendKind, EtcdConfig, Event, Lease, LeaseAttrs, NetworkConfig, SubnetManager};
use ipam::cluster::subnet_file::{read_subnet_file, write_subnet_file, SubnetFile};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Usage(String),
    #[error("kernel: {0}")]
    Kernel(#[from] linux_net::Error),
    #[error("nftables: {0}")]
    Nft(#[from] nft::NftError),
    #[error("etcd: {0}")]
    Etcd(#[from] ipam::cluster::subnet::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("lease for {0} was lost (deleted or expired): routes, device and subnet file removed")]
    LeaseLost(Ipv4Network),
}

type Result<T, E = AgentError> = std::result::Result<T, E>;

/// flanneld's flags, with its names and defaults.
#[derive(Debug, Clone)]
pub struct AgentArgs {
    pub etcd: EtcdConfig,
    pub public_ip: Option<Ipv4Addr>,
    pub iface: Option<String>,
    pub subnet_file: PathBuf,
    pub ip_masq: bool,
    pub healthz: Option<SocketAddr>,
    pub lease_ttl: Duration,
    pub renew_margin: Duration,
}

impl AgentArgs {
    pub fn parse(args: &[String]) -> Result<AgentArgs> {
        let mut a = AgentArgs {
            etcd: EtcdConfig {
                endpoints: vec!["http://127.0.0.1:2379".into()],
                prefix: "/coreos.com/network".into(),
                ca_file: None,
                cert_file: None,
                key_file: None,
            },
            public_ip: None,
            iface: None,
            subnet_file: PathBuf::from(crate::plugin::DEFAULT_SUBNET_FILE),
            ip_masq: false,
            healthz: None,
            lease_ttl: Duration::from_secs(24 * 3600),
            renew_margin: Duration::from_secs(3600),
        };
        let mut healthz_ip = "0.0.0.0".to_string();
        let mut healthz_port = 0u16;
        let mut it = args.iter();
        while let Some(arg) = it.next() {
            let (flag, inline) = match arg.split_once('=') {
                Some((f, v)) => (f.to_string(), Some(v.to_string())),
                None => (arg.clone(), None),
            };
            let flag = flag.trim_start_matches('-').to_string();
            if flag == "ip-masq" {
                a.ip_masq = inline.as_deref().is_none_or(|v| v == "true" || v == "1");
                continue;
            }
            let mut value = || -> Result<String> {
                inline
                    .clone()
                    .or_else(|| it.next().cloned())
                    .ok_or_else(|| AgentError::Usage(format!("--{flag} needs a value")))
            };
            let bad = |what: &str, v: &str| AgentError::Usage(format!("--{what}: invalid value {v:?}"));
            match flag.as_str() {
                "etcd-endpoints" => a.etcd.endpoints = value()?.split(',').map(str::to_string).collect(),
                "etcd-prefix" => a.etcd.prefix = value()?,
                "etcd-cafile" => a.etcd.ca_file = Some(value()?.into()),
                "etcd-certfile" => a.etcd.cert_file = Some(value()?.into()),
                "etcd-keyfile" => a.etcd.key_file = Some(value()?.into()),
                "public-ip" => {
                    let v = value()?;
                    a.public_ip = Some(v.parse().map_err(|_| bad("public-ip", &v))?);
                }
                "iface" => a.iface = Some(value()?),
                "subnet-file" => a.subnet_file = value()?.into(),
                "healthz-ip" => healthz_ip = value()?,
                "healthz-port" => {
                    let v = value()?;
                    healthz_port = v.parse().map_err(|_| bad("healthz-port", &v))?;
                }
                "subnet-lease-ttl" => {
                    a.lease_ttl = parse_duration(&value()?).ok_or_else(|| bad("subnet-lease-ttl", ""))?
                }
                "subnet-lease-renew-margin" => {
                    let v = value()?;
                    // flanneld takes minutes here.
                    let mins: u64 = v.parse().map_err(|_| bad("subnet-lease-renew-margin", &v))?;
                    a.renew_margin = Duration::from_secs(mins * 60);
                }
                other => return Err(AgentError::Usage(format!("unknown flag --{other}"))),
            }
        }
        if healthz_port != 0 {
            let ip: IpAddr = healthz_ip.parse().map_err(|_| bad_flag("healthz-ip", &healthz_ip))?;
            a.healthz = Some(SocketAddr::new(ip, healthz_port));
        }
        if a.renew_margin >= a.lease_ttl {
            a.renew_margin = a.lease_ttl / 2;
        }
        Ok(a)
    }
}

fn bad_flag(what: &str, v: &str) -> AgentError {
    AgentError::Usage(format!("--{what}: invalid value {v:?}"))
}

/// `90s`, `15m`, `24h` or plain seconds.
fn parse_duration(s: &str) -> Option<Duration> {
    let (num, mul) = match s.chars().last()? {
        's' => (&s[..s.len() - 1], 1),
        'm' => (&s[..s.len() - 1], 60),
        'h' => (&s[..s.len() - 1], 3600),
        _ => (s, 1),
    };
    num.parse::<u64>().ok().filter(|n| *n > 0).map(|n| Duration::from_secs(n * mul))
}

/// The host's way out: the underlay interface and our address on it.
#[derive(Debug, Clone)]
struct External {
    index: u32,
    name: String,
    ip: Ipv4Addr,
    mtu: u32,
    /// The connected subnet of `ip`: peers inside it are on our L2 segment.
    segment: Ipv4Network,
}

fn external(args: &AgentArgs) -> Result<External> {
    let mut nl = Netlink::open()?;
    let links = link::list(&mut nl)?;
    let addrs = addr::list(&mut nl, None)?;
    let v4 = |index: u32| -> Vec<Ipv4Network> {
        addrs
            .iter()
            .filter(|(i, _)| *i == index)
            .filter_map(|(_, a)| match a {
                IpNetwork::V4(n) => Some(*n),
                _ => None,
            })
            .collect()
    };
    let pick = |l: &link::Link| -> Option<External> {
        let nets = v4(l.index);
        let net = match args.public_ip {
            Some(ip) => nets.iter().find(|n| n.ip() == ip).copied().or_else(|| nets.first().copied())?,
            None => *nets.first()?,
        };
        let segment = Ipv4Network::new(net.network(), net.prefix()).ok()?;
        Some(External { index: l.index, name: l.name.clone(), ip: net.ip(), mtu: l.mtu, segment })
    };
    let ext = match &args.iface {
        Some(want) => links
            .iter()
            .find(|l| &l.name == want || v4(l.index).iter().any(|n| n.ip().to_string() == *want))
            .and_then(pick)
            .ok_or_else(|| AgentError::Usage(format!("--iface {want}: no such interface with an IPv4 address")))?,
        None => {
            let default = route::list(&mut nl, false)?
                .into_iter()
                .find(|r| r.dst.prefix() == 0 && r.table == Some(254))
                .and_then(|r| r.oif);
            let by_public = args
                .public_ip
                .and_then(|ip| links.iter().find(|l| v4(l.index).iter().any(|n| n.ip() == ip)).and_then(pick));
            by_public
                .or_else(|| default.and_then(|i| links.iter().find(|l| l.index == i)).and_then(pick))
                .ok_or_else(|| AgentError::Usage("no default route: pass --iface or --public-ip".into()))?
        }
    };
    Ok(ext)
}

/// What the kernel holds for one peer host.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Peer {
    public_ip: Ipv4Addr,
    vtep_mac: Option<[u8; 6]>,
    direct: bool,
}

struct Dataplane {
    nl: Netlink,
    kind: BackendKind,
    ext: External,
    /// VXLAN device index (vxlan backend only).
    dev: Option<u32>,
    direct_routing: bool,
    peers: HashMap<Ipv4Network, Peer>,
}

impl Dataplane {
    fn peer_of(&self, lease: &Lease) -> Peer {
        let mac = lease.attrs.backend_data.get("VtepMAC").and_then(|m| m.as_str()).and_then(parse_mac);
        let same_l2 = self.ext.segment.contains(lease.attrs.public_ip);
        let direct = match self.kind {
            BackendKind::HostGw => true,
            BackendKind::Vxlan => self.direct_routing && same_l2,
        };
        Peer { public_ip: lease.attrs.public_ip, vtep_mac: mac, direct }
    }

    fn route_for(&self, subnet: Ipv4Network, p: &Peer) -> Route {
        if p.direct {
            Route::new(IpNetwork::V4(subnet), Some(IpAddr::V4(p.public_ip)), Some(self.ext.index))
        } else {
            let mut r = Route::new(IpNetwork::V4(subnet), Some(IpAddr::V4(subnet.network())), self.dev);
            r.onlink = true;
            r
        }
    }

    /// Programs one peer: neighbour and FDB first, the route last, so no
    /// packet is routed to the device before it can be encapsulated.
    fn add(&mut self, subnet: Ipv4Network, p: Peer) -> Result<()> {
        if self.peers.get(&subnet) == Some(&p) {
            return Ok(());
        }
        if let Some(old) = self.peers.get(&subnet).cloned() {
            self.remove(subnet, &old)?;
        }
        if !p.direct {
            let (Some(dev), Some(mac)) = (self.dev, p.vtep_mac) else {
                tracing::warn!(%subnet, "lease has no VtepMAC; skipping");
                return Ok(());
            };
            neigh::neigh_replace(&mut self.nl, dev, IpAddr::V4(subnet.network()), mac)?;
            neigh::fdb_replace(&mut self.nl, dev, mac, IpAddr::V4(p.public_ip))?;
        }
        let r = self.route_for(subnet, &p);
        route::replace(&mut self.nl, &r)?;
        tracing::info!(%subnet, public_ip = %p.public_ip, direct = p.direct, "peer programmed");
        self.peers.insert(subnet, p);
        Ok(())
    }

    /// Removes one peer in the reverse order.
    fn remove(&mut self, subnet: Ipv4Network, p: &Peer) -> Result<()> {
        let r = self.route_for(subnet, p);
        match route::del(&mut self.nl, &r) {
            Ok(()) => {}
            Err(e) if e.is_not_found() || e.errno() == Some(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(e.into()),
        }
        if let (false, Some(dev), Some(mac)) = (p.direct, self.dev, p.vtep_mac) {
            neigh::fdb_del(&mut self.nl, dev, mac, IpAddr::V4(p.public_ip))?;
            neigh::neigh_del(&mut self.nl, dev, IpAddr::V4(subnet.network()))?;
        }
        tracing::info!(%subnet, "peer removed");
        self.peers.remove(&subnet);
        Ok(())
    }

    /// Converges on exactly `leases` (a full list), also removing kernel
    /// state a previous run left for hosts that are gone.
    fn resync(&mut self, network: Ipv4Network, own: Ipv4Network, leases: &[Lease]) -> Result<()> {
        let want: HashMap<Ipv4Network, Peer> =
            leases.iter().filter(|l| l.subnet != own).map(|l| (l.subnet, self.peer_of(l))).collect();
        let stale: Vec<(Ipv4Network, Peer)> =
            self.peers.iter().filter(|(s, _)| !want.contains_key(s)).map(|(s, p)| (*s, p.clone())).collect();
        for (s, p) in stale {
            self.remove(s, &p)?;
        }
        // Routes into the overlay network that no lease explains (left by an earlier run).
        for oif in [self.dev, Some(self.ext.index)].into_iter().flatten() {
            for r in route::list_oif(&mut self.nl, false, oif)? {
                let IpNetwork::V4(dst) = r.dst else { continue };
                let ours = dst.prefix() > network.prefix() && network.contains(dst.network());
                if ours && dst != own && !want.contains_key(&dst) {
                    tracing::info!(%dst, "removing a stale route");
                    let _ = route::del(&mut self.nl, &r);
                }
            }
        }
        for (s, p) in want {
            self.add(s, p)?;
        }
        Ok(())
    }
}

fn vtep_name(vni: u32) -> String {
    format!("flannel.{vni}")
}

fn first_host(subnet: Ipv4Network) -> Ipv4Network {
    Ipv4Network::new((u32::from(subnet.network()) + 1).into(), subnet.prefix()).expect("same prefix")
}

fn masq_table() -> &'static str {
    "cni_overlay"
}

/// Runs the agent until SIGTERM/SIGINT (Ok: state kept) or until the lease is lost.
pub async fn run(args: AgentArgs) -> Result<()> {
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = args.healthz {
        serve_health(addr, ready.clone()).await?;
    }
    let ext = external(&args)?;
    let public_ip = args.public_ip.unwrap_or(ext.ip);
    tracing::info!(iface = %ext.name, %public_ip, "external interface");

    let sm = connect(&args.etcd).await;
    let cfg = loop {
        match sm.network_config().await {
            Ok(c) => break c,
            Err(e) if e.is_unavailable() => {
                tracing::warn!("etcd unavailable, retrying: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            // A bad config is final: nothing has been programmed yet.
            Err(e) => return Err(e.into()),
        }
    };

    let mut nl = Netlink::open()?;
    let (dev, attrs_data) = match cfg.backend.kind {
        BackendKind::Vxlan => {
            let mtu = cfg.backend.mtu.unwrap_or(ext.mtu.saturating_sub(50));
            let l = ensure_vxlan(
                &mut nl,
                &VxlanSpec {
                    name: &vtep_name(cfg.backend.vni),
                    vni: cfg.backend.vni,
                    port: cfg.backend.port,
                    local: Some(IpAddr::V4(public_ip)),
                    underlay: Some(ext.index),
                    mtu: Some(mtu),
                    learning: false,
                    mac: None,
                },
            )?;
            let mac = l.mac.map(|m| format_mac(&m)).unwrap_or_default();
            (Some((l.index, mtu)), json!({ "VNI": cfg.backend.vni, "VtepMAC": mac }))
        }
        BackendKind::HostGw => (None, json!(null)),
    };
    let attrs = LeaseAttrs {
        public_ip,
        public_ipv6: None,
        backend_type: match cfg.backend.kind {
            BackendKind::Vxlan => "vxlan".into(),
            BackendKind::HostGw => "host-gw".into(),
        },
        backend_data: attrs_data,
        backend_v6_data: None,
    };
    let previous = read_subnet_file(&args.subnet_file)
        .ok()
        .map(|f| Ipv4Network::new(f.subnet.network(), f.subnet.prefix()).expect("prefix from the file is valid"));
    let lease = loop {
        match sm.acquire(&cfg, &attrs, previous, args.lease_ttl).await {
            Ok(l) => break l,
            Err(e) if e.is_unavailable() => {
                tracing::warn!("etcd unavailable, retrying: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => return Err(e.into()),
        }
    };
    let own = lease.subnet;
    tracing::info!(subnet = %own, "lease acquired");

    let mtu = match dev {
        Some((index, mtu)) => {
            // The device's only address is the network address of our subnet (/32),
            // the next hop peers route to.
            let want = IpNetwork::new(IpAddr::V4(own.network()), 32).expect("/32");
            for (_, a) in addr::list(&mut nl, Some(index))? {
                if a != want && a.is_ipv4() {
                    addr::del(&mut nl, index, a)?;
                }
            }
            match addr::add(&mut nl, index, want, true) {
                Ok(()) => {}
                Err(e) if e.is_exists() => {}
                Err(e) => return Err(e.into()),
            }
            mtu
        }
        None => ext.mtu,
    };
    if args.ip_masq {
        nft::ensure_masquerade(masq_table(), "overlay", IpNetwork::V4(cfg.network))?;
    }
    write_subnet_file(
        &args.subnet_file,
        &SubnetFile {
            network: cfg.network,
            subnet: first_host(own),
            mtu,
            ipmasq: args.ip_masq,
            ipv6_network: None,
            ipv6_subnet: None,
        },
    )?;

    let mut dp = Dataplane {
        nl,
        kind: cfg.backend.kind,
        ext: ext.clone(),
        dev: dev.map(|d| d.0),
        direct_routing: cfg.backend.direct_routing,
        peers: HashMap::new(),
    };
    let (all, rev) = sm.leases().await?;
    dp.resync(cfg.network, own, &all)?;
    ready.store(true, Ordering::SeqCst);
    tracing::info!(peers = dp.peers.len(), "ready");

    let mut events = sm.watch(rev);
    let renew_every = (args.lease_ttl.saturating_sub(args.renew_margin)).max(Duration::from_secs(1));
    let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + renew_every, renew_every);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let lost = loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(Event::Added(l)) if l.subnet != own => {
                    let p = dp.peer_of(&l);
                    if let Err(e) = dp.add(l.subnet, p) {
                        tracing::error!(subnet = %l.subnet, "program peer: {e}");
                    }
                }
                Some(Event::Added(_)) => {}
                Some(Event::Removed { subnet, .. }) if subnet == own => break true,
                Some(Event::Removed { subnet, .. }) => {
                    if let Some(p) = dp.peers.get(&subnet).cloned() {
                        if let Err(e) = dp.remove(subnet, &p) {
                            tracing::error!(%subnet, "remove peer: {e}");
                        }
                    }
                }
                Some(Event::Resync(all)) => {
                    if !all.iter().any(|l| l.subnet == own) {
                        break true;
                    }
                    if let Err(e) = dp.resync(cfg.network, own, &all) {
                        tracing::error!("resync: {e}");
                    }
                }
                None => break false,
            },
            _ = renew.tick() => {
                match sm.renew(&lease).await {
                    Ok(()) => tracing::debug!(subnet = %own, "lease renewed"),
                    Err(e) if e.is_unavailable() => tracing::warn!("renew failed, will retry: {e}"),
                    Err(e) => {
                        tracing::error!("renew: {e}");
                        break true;
                    }
                }
            }
            _ = tokio::signal::ctrl_c() => break false,
            _ = term.recv() => break false,
        }
    };
    if !lost {
        tracing::info!("shutting down; lease and kernel state kept");
        return Ok(());
    }
    ready.store(false, Ordering::SeqCst);
    teardown(&mut dp, &cfg, &args)?;
    Err(AgentError::LeaseLost(own))
}

fn teardown(dp: &mut Dataplane, cfg: &NetworkConfig, args: &AgentArgs) -> Result<()> {
    let peers: Vec<(Ipv4Network, Peer)> = dp.peers.iter().map(|(s, p)| (*s, p.clone())).collect();
    for (s, p) in peers {
        let _ = dp.remove(s, &p);
    }
    if cfg.backend.kind == BackendKind::Vxlan {
        link::delete(&mut dp.nl, &vtep_name(cfg.backend.vni))?;
    }
    if args.ip_masq {
        let _ = nft::delete_table(nft::Family::Inet, masq_table());
    }
    match std::fs::remove_file(&args.subnet_file) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(e.into()),
    }
}

async fn connect(cfg: &EtcdConfig) -> SubnetManager {
    loop {
        match SubnetManager::connect(cfg).await {
            Ok(sm) => return sm,
            Err(e) => {
                tracing::warn!("connect to etcd {:?}: {e}; retrying", cfg.endpoints);
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

/// `GET /healthz` (any path): 200 once the host is ready, 503 before.
async fn serve_health(addr: SocketAddr, ready: Arc<AtomicBool>) -> Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tokio::spawn(async move {
        while let Ok((mut s, _)) = listener.accept().await {
            let ok = ready.load(Ordering::SeqCst);
            let body = if ok { "ok\n" } else { "not ready\n" };
            let status = if ok { "200 OK" } else { "503 Service Unavailable" };
            let resp =
                format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len());
            let _ = s.write_all(resp.as_bytes()).await;
        }
    });
    Ok(())
}
