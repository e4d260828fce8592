//! `cni-overlay agent`: the per-host daemon, a drop-in for flanneld's etcd mode.
//!
//! It leases the host's subnet in etcd, creates the VXLAN device, writes the
//! subnet file the CNI side reads, and converges the kernel on every other
//! host's lease (Flannel's L3 mode: per peer one neighbour entry, one FDB
//! entry and one onlink route; `DirectRouting` peers on our L2 segment get a
//! plain route instead). With `EnableIPv6` the same is done a second time
//! for IPv6 on `flannel-v6.<VNI>`, VXLAN over the IPv6 underlay. The devices
//! are created only once the lease is ours, so a host that gets no subnet
//! leaves nothing behind. Shutdown keeps lease and kernel state, so a restart
//! disturbs nothing; losing the lease removes routes, devices and subnet file.

use std::collections::{HashMap, HashSet};
use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ipnetwork::{IpNetwork, Ipv4Network, Ipv6Network};
use linux_net::link::{self, format_mac, parse_mac};
use linux_net::netlink::Netlink;
use linux_net::route::{self, Route};
use linux_net::vxlan::{ensure_vxlan, VxlanSpec};
use linux_net::{addr, neigh, nft};
use serde_json::json;
use tokio::io::AsyncWriteExt;

use crate::metrics::{AgentMetrics, EtcdOp, Programmed};
use etcd_kv::flags::{Endpoints, TlsFlags};
use subnet_lease::subnet_file::{read_subnet_file, write_subnet_file, SubnetFile};
use subnet_lease::{BackendKind, EtcdConfig, Event, Lease, LeaseAttrs, NetworkConfig, SubnetManager};

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("{0}")]
    Usage(String),
    #[error("kernel: {0}")]
    Kernel(#[from] linux_net::Error),
    #[error("nftables: {0}")]
    Nft(#[from] nft::NftError),
    #[error("etcd: {0}")]
    Etcd(#[from] subnet_lease::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Metrics(#[from] prom_endpoint::Error),
    /// No lease (pool exhausted, bad settings): nothing was programmed.
    #[error("no subnet lease for this host ({what}): {source}")]
    Acquire {
        what: String,
        #[source]
        source: subnet_lease::Error,
    },
    #[error("lease for {0} was lost (deleted or expired): routes, device and subnet file removed")]
    LeaseLost(Ipv4Network),
}

type Result<T, E = AgentError> = std::result::Result<T, E>;

/// flanneld's flags, with its names and defaults.
#[derive(Debug, Clone)]
pub struct AgentArgs {
    pub etcd: EtcdConfig,
    pub public_ip: Option<Ipv4Addr>,
    /// flanneld's `--public-ipv6`: the IPv6 address peers send to (EnableIPv6).
    pub public_ipv6: Option<Ipv6Addr>,
    pub iface: Option<String>,
    pub subnet_file: PathBuf,
    pub ip_masq: bool,
    pub healthz: Option<SocketAddr>,
    /// `--metrics-address`: where Prometheus metrics are served (None: off).
    pub metrics: Option<SocketAddr>,
    pub lease_ttl: Duration,
    pub renew_margin: Duration,
}

/// The etcd flags of every command (flanneld's names and defaults).
#[derive(Debug, Clone, clap::Args)]
pub struct EtcdFlags {
    /// etcd endpoints, comma-separated http:// or https:// URLs
    #[arg(long, value_name = "URLS", default_value = "http://127.0.0.1:2379")]
    pub etcd_endpoints: Endpoints,
    /// Where `config` and `subnets/` live
    #[arg(long, value_name = "PREFIX", default_value = "/coreos.com/network", value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub etcd_prefix: String,
    #[command(flatten)]
    pub tls: TlsFlags,
}

impl EtcdFlags {
    /// The client settings; TLS files need https:// endpoints.
    pub fn config(&self) -> Result<EtcdConfig> {
        self.tls.config(&self.etcd_endpoints, &self.etcd_prefix).map_err(AgentError::Usage)
    }
}

/// `cni-overlay agent`'s flags: flanneld's names, defaults and units.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentFlags {
    #[command(flatten)]
    pub etcd: EtcdFlags,
    /// The IPv4 address other hosts send VXLAN to [default: the --iface address]
    #[arg(long, value_name = "IP")]
    pub public_ip: Option<Ipv4Addr>,
    /// The IPv6 address other hosts send VXLAN to, with EnableIPv6 [default: --iface's first
    /// global IPv6 address]
    #[arg(long, value_name = "IP6")]
    pub public_ipv6: Option<Ipv6Addr>,
    /// The underlay interface: its name, IPv4 or IPv6 address [default: the default route's
    /// interface]
    #[arg(long, value_name = "NAME|IP")]
    pub iface: Option<String>,
    /// Written when the host is ready; the CNI side reads it
    #[arg(long, value_name = "FILE", default_value = crate::plugin::DEFAULT_SUBNET_FILE)]
    pub subnet_file: PathBuf,
    /// Masquerade traffic that leaves the overlay's Network (`--ip-masq` or `--ip-masq=BOOL`)
    #[arg(
        long,
        value_name = "BOOL",
        action = clap::ArgAction::Set,
        num_args = 0..=1,
        require_equals = true,
        default_value = "false",
        default_missing_value = "true",
        value_parser = parse_go_bool
    )]
    pub ip_masq: bool,
    /// Address of the HTTP readiness endpoint (200 once ready, 503 before)
    #[arg(long, value_name = "IP", default_value = "0.0.0.0")]
    pub healthz_ip: IpAddr,
    /// Port of the readiness endpoint; 0 turns it off
    #[arg(long, value_name = "PORT", default_value_t = 0)]
    pub healthz_port: u16,
    /// Serve Prometheus metrics on http://ADDR:PORT/metrics [default: off]
    #[arg(long, value_name = "ADDR:PORT", value_parser = prom_endpoint::parse_address)]
    pub metrics_address: Option<SocketAddr>,
    /// etcd lease TTL of the host's subnet: `90s`, `15m`, `24h` or plain seconds
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = parse_duration_arg)]
    pub subnet_lease_ttl: Duration,
    /// Renew this many minutes before expiry; a margin of at least the TTL renews at half the TTL
    #[arg(long, value_name = "MINUTES", default_value_t = 60)]
    pub subnet_lease_renew_margin: u64,
}

impl AgentArgs {
    /// The agent's settings from its parsed flags ([`crate::cli`]).
    pub fn from_flags(f: &AgentFlags) -> Result<AgentArgs> {
        let lease_ttl = f.subnet_lease_ttl;
        let mut renew_margin = Duration::from_secs(f.subnet_lease_renew_margin.saturating_mul(60));
        if renew_margin >= lease_ttl {
            renew_margin = lease_ttl / 2;
        }
        Ok(AgentArgs {
            etcd: f.etcd.config()?,
            public_ip: f.public_ip,
            public_ipv6: f.public_ipv6,
            iface: f.iface.clone(),
            subnet_file: f.subnet_file.clone(),
            ip_masq: f.ip_masq,
            healthz: (f.healthz_port != 0).then(|| SocketAddr::new(f.healthz_ip, f.healthz_port)),
            metrics: f.metrics_address,
            lease_ttl,
            renew_margin,
        })
    }
}

/// Go's flag package (flanneld's) takes `-flag` as well as `--flag`: the
/// single-dash long form becomes clap's `--flag`. `-h` stays, and nothing
/// after a `--` is touched.
pub fn go_style_flags(args: &[String]) -> Vec<String> {
    let mut out = Vec::with_capacity(args.len());
    let mut rest = false;
    for a in args {
        rest |= a == "--";
        let single = a.len() > 2 && a.starts_with('-') && !a.starts_with("--");
        let long_name = a[1..].starts_with(|c: char| c.is_ascii_alphabetic());
        out.push(if !rest && single && long_name { format!("-{a}") } else { a.clone() });
    }
    out
}

/// Go's `strconv.ParseBool`, as flanneld reads `--ip-masq=…`.
fn parse_go_bool(v: &str) -> Result<bool, String> {
    match v {
        "1" | "t" | "T" | "true" | "TRUE" | "True" => Ok(true),
        "0" | "f" | "F" | "false" | "FALSE" | "False" => Ok(false),
        _ => Err("expected true or false".into()),
    }
}

fn parse_duration_arg(v: &str) -> Result<Duration, String> {
    parse_duration(v).ok_or_else(|| "expected a positive duration such as 90s, 15m, 24h or plain seconds".into())
}

/// `90s`, `15m`, `24h` or plain seconds.
fn parse_duration(s: &str) -> Option<Duration> {
    let (num, mul) = match s.chars().last()? {
        's' => (&s[..s.len() - 1], 1),
        'm' => (&s[..s.len() - 1], 60),
        'h' => (&s[..s.len() - 1], 3600),
        _ => (s, 1),
    };
    num.parse::<u64>().ok().filter(|n| *n > 0).and_then(|n| n.checked_mul(mul)).map(Duration::from_secs)
}

/// The host's way out: the underlay interface and our addresses on it.
#[derive(Debug, Clone)]
struct External {
    index: u32,
    name: String,
    ip: Ipv4Addr,
    mtu: u32,
    /// The connected subnet of `ip`: peers inside it are on our L2 segment.
    segment: Ipv4Network,
    /// Our global IPv6 address on the interface, with its prefix (the IPv6
    /// segment): `--public-ipv6` if it is on the interface, else the first one.
    ip6: Option<Ipv6Network>,
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
    // Global IPv6 addresses only: link-local ones cannot carry VXLAN between segments.
    let v6 = |index: u32| -> Vec<Ipv6Network> {
        addrs
            .iter()
            .filter(|(i, _)| *i == index)
            .filter_map(|(_, a)| match a {
                IpNetwork::V6(n) if is_global6(n.ip()) => Some(*n),
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
        let nets6 = v6(l.index);
        let ip6 = args
            .public_ipv6
            .and_then(|ip| nets6.iter().find(|n| n.ip() == ip).copied())
            .or_else(|| nets6.first().copied());
        Some(External { index: l.index, name: l.name.clone(), ip: net.ip(), mtu: l.mtu, segment, ip6 })
    };
    let has_ip = |l: &link::Link, want: &str| {
        v4(l.index).iter().any(|n| n.ip().to_string() == *want)
            || want.parse::<Ipv6Addr>().is_ok_and(|ip| v6(l.index).iter().any(|n| n.ip() == ip))
    };
    let ext = match &args.iface {
        Some(want) => links
            .iter()
            .find(|l| &l.name == want || has_ip(l, want))
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

/// Not unspecified, loopback, link-local (fe80::/10) or multicast.
fn is_global6(ip: Ipv6Addr) -> bool {
    !(ip.is_unspecified() || ip.is_loopback() || ip.is_multicast() || (ip.segments()[0] & 0xffc0) == 0xfe80)
}

/// What the kernel holds for one peer host in one address family.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Peer {
    /// The peer's underlay address of this family (`PublicIP` or `PublicIPv6`).
    public_ip: IpAddr,
    vtep_mac: Option<[u8; 6]>,
    direct: bool,
}

/// One address family's half of the data path: IPv4 through `flannel.<VNI>`,
/// IPv6 through `flannel-v6.<VNI>`, each with its own peers.
struct Plane {
    v6: bool,
    /// VXLAN device index (vxlan backend only).
    dev: Option<u32>,
    /// Our underlay address's connected subnet: DirectRouting peers are inside it.
    segment: Option<IpNetwork>,
    /// `Network` or `IPv6Network`: routes inside it on our links are ours.
    network: IpNetwork,
    /// Our own subnet of this family.
    own: IpNetwork,
    peers: HashMap<IpNetwork, Peer>,
}

struct Dataplane {
    nl: Netlink,
    kind: BackendKind,
    ext_index: u32,
    direct_routing: bool,
    /// IPv4, then IPv6 when `EnableIPv6` is set.
    planes: Vec<Plane>,
}

impl Dataplane {
    /// The peer entry `lease` asks for in plane `pi`, if the lease has that family.
    fn wanted(&self, pi: usize, lease: &Lease) -> Option<(IpNetwork, Peer)> {
        let plane = &self.planes[pi];
        let (subnet, public_ip, data) = if plane.v6 {
            let (Some(sn6), Some(ip6)) = (lease.ipv6_subnet, lease.attrs.public_ipv6) else {
                return None;
            };
            // host-gw leases have no BackendV6Data.
            (
                IpNetwork::V6(sn6),
                IpAddr::V6(ip6),
                lease.attrs.backend_v6_data.as_ref().unwrap_or(&serde_json::Value::Null),
            )
        } else {
            (IpNetwork::V4(lease.subnet), IpAddr::V4(lease.attrs.public_ip), &lease.attrs.backend_data)
        };
        let mac = data.get("VtepMAC").and_then(|m| m.as_str()).and_then(parse_mac);
        let same_l2 = plane.segment.is_some_and(|s| s.contains(public_ip));
        let direct = match self.kind {
            BackendKind::HostGw => true,
            BackendKind::Vxlan => self.direct_routing && same_l2,
        };
        Some((subnet, Peer { public_ip, vtep_mac: mac, direct }))
    }

    /// What is programmed now, per plane: (family, counts).
    fn programmed(&self) -> Vec<(&'static str, Programmed)> {
        self.planes
            .iter()
            .map(|pl| {
                let encap = pl.peers.values().filter(|p| !p.direct).count() as i64;
                let family = if pl.v6 { "ipv6" } else { "ipv4" };
                (family, Programmed { routes: pl.peers.len() as i64, fdb: encap, neighbours: encap })
            })
            .collect()
    }

    /// Every peer entry `lease` asks for, by plane.
    fn wanted_all(&self, lease: &Lease) -> Vec<(usize, IpNetwork, Peer)> {
        (0..self.planes.len()).filter_map(|pi| self.wanted(pi, lease).map(|(s, p)| (pi, s, p))).collect()
    }

    /// The peer's subnet via its VTEP address (the subnet's network address,
    /// as Flannel does) onlink on the VXLAN device, or via its public address
    /// on the underlay when direct.
    fn route_for(&self, pi: usize, subnet: IpNetwork, p: &Peer) -> Route {
        if p.direct {
            Route::new(subnet, Some(p.public_ip), Some(self.ext_index))
        } else {
            let mut r = Route::new(subnet, Some(subnet.network()), self.planes[pi].dev);
            r.onlink = true;
            r
        }
    }

    /// Programs one peer: neighbour and FDB first, the route last, so no
    /// packet is routed to the device before it can be encapsulated.
    fn add(&mut self, pi: usize, subnet: IpNetwork, p: Peer) -> Result<()> {
        let old = self.planes[pi].peers.get(&subnet).cloned();
        if old.as_ref() == Some(&p) {
            return Ok(());
        }
        if let Some(old) = old {
            self.remove(pi, subnet, &old)?;
        }
        if !p.direct {
            let (Some(dev), Some(mac)) = (self.planes[pi].dev, p.vtep_mac) else {
                tracing::warn!(%subnet, "lease has no VtepMAC; skipping");
                return Ok(());
            };
            neigh::neigh_replace(&mut self.nl, dev, subnet.network(), mac)?;
            neigh::fdb_replace(&mut self.nl, dev, mac, p.public_ip)?;
        }
        let r = self.route_for(pi, subnet, &p);
        route::replace(&mut self.nl, &r)?;
        tracing::info!(%subnet, public_ip = %p.public_ip, direct = p.direct, "peer programmed");
        self.planes[pi].peers.insert(subnet, p);
        Ok(())
    }

    /// Removes one peer in the reverse order.
    fn remove(&mut self, pi: usize, subnet: IpNetwork, p: &Peer) -> Result<()> {
        let r = self.route_for(pi, subnet, p);
        match route::del(&mut self.nl, &r) {
            Ok(()) => {}
            Err(e) if e.is_not_found() || e.errno() == Some(nix::errno::Errno::ESRCH) => {}
            Err(e) => return Err(e.into()),
        }
        if let (false, Some(dev), Some(mac)) = (p.direct, self.planes[pi].dev, p.vtep_mac) {
            neigh::fdb_del(&mut self.nl, dev, mac, p.public_ip)?;
            neigh::neigh_del(&mut self.nl, dev, subnet.network())?;
        }
        tracing::info!(%subnet, "peer removed");
        self.planes[pi].peers.remove(&subnet);
        Ok(())
    }

    /// Removes the peer of plane `pi` with `subnet`, if programmed.
    fn forget(&mut self, pi: usize, subnet: IpNetwork) {
        if let Some(p) = self.planes.get(pi).and_then(|pl| pl.peers.get(&subnet)).cloned() {
            if let Err(e) = self.remove(pi, subnet, &p) {
                tracing::error!(%subnet, "remove peer: {e}");
            }
        }
    }

    /// Converges on exactly `leases` (a full list), also removing kernel
    /// state a previous run left for hosts that are gone.
    fn resync(&mut self, own: Ipv4Network, leases: &[Lease]) -> Result<()> {
        for pi in 0..self.planes.len() {
            let want: HashMap<IpNetwork, Peer> =
                leases.iter().filter(|l| l.subnet != own).filter_map(|l| self.wanted(pi, l)).collect();
            let plane = &self.planes[pi];
            let stale: Vec<(IpNetwork, Peer)> =
                plane.peers.iter().filter(|(s, _)| !want.contains_key(s)).map(|(s, p)| (*s, p.clone())).collect();
            for (s, p) in stale {
                self.remove(pi, s, &p)?;
            }
            // Routes into the overlay network that no lease explains (left by an earlier run).
            let plane = &self.planes[pi];
            let (v6, network, own_sn) = (plane.v6, plane.network, plane.own);
            for oif in [plane.dev, Some(self.ext_index)].into_iter().flatten() {
                for r in route::list_oif(&mut self.nl, v6, oif)? {
                    let ours = r.dst.prefix() > network.prefix() && network.contains(r.dst.network());
                    // Inside our own subnet: the kernel's route to our IPv6 VTEP address.
                    let own_route = own_sn.contains(r.dst.network());
                    if ours && !own_route && !want.contains_key(&r.dst) {
                        tracing::info!(dst = %r.dst, "removing a stale route");
                        let _ = route::del(&mut self.nl, &r);
                    }
                }
            }
            for (s, p) in want {
                self.add(pi, s, p)?;
            }
        }
        Ok(())
    }
}

fn vtep_name(vni: u32) -> String {
    format!("flannel.{vni}")
}

/// Flannel's name for the IPv6 VXLAN device.
fn vtep6_name(vni: u32) -> String {
    format!("flannel-v6.{vni}")
}

/// IPv4 VXLAN overhead: outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14).
const VXLAN_OVERHEAD: u32 = 50;
/// IPv6 VXLAN overhead: the outer header is IPv6 (40).
const VXLAN6_OVERHEAD: u32 = 70;

fn masq_table() -> &'static str {
    "cni_overlay"
}

/// The MAC the VXLAN device `name` has (an agent restart keeps it), or a
/// fresh random one for a device still to be created. Known before the
/// lease is acquired, so the device is only created once the lease is ours:
/// a host that gets no subnet leaves no trace.
fn vtep_mac(nl: &mut Netlink, name: &str) -> Result<[u8; 6]> {
    if let Some(mac) = link::get(nl, name)?.filter(|l| l.kind.as_deref() == Some("vxlan")).and_then(|l| l.mac) {
        return Ok(mac);
    }
    let mut mac = [0u8; 6];
    std::fs::File::open("/dev/urandom")?.read_exact(&mut mac)?;
    mac[0] = (mac[0] & 0xfe) | 0x02; // unicast, locally administered
    Ok(mac)
}

/// One VXLAN device (created, or kept if it already fits) with `address`
/// as its only address of that family: the VTEP address peers route to.
fn vtep(nl: &mut Netlink, spec: &VxlanSpec<'_>, address: IpNetwork) -> Result<u32> {
    let l = ensure_vxlan(nl, spec)?;
    for (_, a) in addr::list(nl, Some(l.index))? {
        // The kernel's IPv6 link-local address stays.
        let global = match a.ip() {
            IpAddr::V6(ip6) => is_global6(ip6),
            IpAddr::V4(_) => true,
        };
        if a != address && a.is_ipv4() == address.is_ipv4() && global {
            addr::del(nl, l.index, a)?;
        }
    }
    match addr::add(nl, l.index, address, true) {
        Ok(()) => {}
        Err(e) if e.is_exists() => {}
        Err(e) => return Err(e.into()),
    }
    Ok(l.index)
}

/// The network config's description for error messages.
fn pool_of(cfg: &NetworkConfig) -> String {
    let mut s = format!("Network {}, SubnetLen {}", cfg.network, cfg.subnet_len);
    if let (true, Some(n6)) = (cfg.enable_ipv6, cfg.ipv6_network) {
        s += &format!(", IPv6Network {n6}, IPv6SubnetLen {}", cfg.ipv6_subnet_len);
    }
    s
}

/// Runs the agent until SIGTERM/SIGINT (Ok: state kept) or until the lease is lost.
pub async fn run(args: AgentArgs) -> Result<()> {
    let ready = Arc::new(AtomicBool::new(false));
    if let Some(addr) = args.healthz {
        serve_health(addr, ready.clone()).await?;
    }
    // Started first, so that an agent stuck on etcd shows it in its metrics;
    // a bad address stops the agent here, before anything is programmed.
    let mut registry = prom_endpoint::Registry::default();
    let m = AgentMetrics::register(&mut registry);
    let _metrics_endpoint = match args.metrics {
        Some(addr) => Some(prom_endpoint::serve(addr, registry).await?),
        None => None,
    };
    let ext = external(&args)?;
    let public_ip = args.public_ip.unwrap_or(ext.ip);
    let public_ipv6 = args.public_ipv6.or(ext.ip6.map(|n| n.ip()));
    tracing::info!(iface = %ext.name, %public_ip, ?public_ipv6, "external interface");

    let sm = connect(&args.etcd, &m).await;
    let cfg = loop {
        match sm.network_config().await {
            Ok(c) => break c,
            Err(e) if e.is_unavailable() => {
                m.etcd_error(EtcdOp::Config);
                tracing::warn!("etcd unavailable, retrying: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            // A bad config is final: nothing has been programmed yet.
            Err(e) => {
                m.etcd_error(EtcdOp::Config);
                return Err(e.into());
            }
        }
    };
    // IPv6 needs an underlay address to send VXLAN from (or to route to, host-gw).
    let public_ipv6 = match (cfg.enable_ipv6, public_ipv6) {
        (false, _) => None,
        (true, Some(ip6)) => Some(ip6),
        (true, None) => {
            return Err(AgentError::Usage(format!(
                "EnableIPv6 is set in the network config but {} has no global IPv6 address: \
                 add one or pass --public-ipv6",
                ext.name
            )))
        }
    };
    let ipv6 = cfg.ipv6_network.filter(|_| cfg.enable_ipv6);

    let mut nl = Netlink::open()?;
    let vni = cfg.backend.vni;
    let (mac4, mac6) = match cfg.backend.kind {
        BackendKind::Vxlan => {
            let mac6 = match ipv6 {
                Some(_) => Some(vtep_mac(&mut nl, &vtep6_name(vni))?),
                None => None,
            };
            (Some(vtep_mac(&mut nl, &vtep_name(vni))?), mac6)
        }
        BackendKind::HostGw => (None, None),
    };
    let data = |mac: Option<[u8; 6]>| mac.map(|m| json!({ "VNI": vni, "VtepMAC": format_mac(&m) }));
    let attrs = LeaseAttrs {
        public_ip,
        public_ipv6,
        backend_type: cfg.backend.kind.as_str().into(),
        backend_data: data(mac4).unwrap_or(serde_json::Value::Null),
        backend_v6_data: data(mac6),
    };
    let previous_file = read_subnet_file(&args.subnet_file).ok();
    let previous = previous_file.as_ref().map(|f| f.lease_subnet());
    let previous_v6 = previous_file.as_ref().and_then(|f| f.lease_ipv6_subnet());
    let lease = loop {
        match sm.acquire_dual(&cfg, &attrs, previous, previous_v6, args.lease_ttl).await {
            Ok(l) => break l,
            Err(e) if e.is_unavailable() => {
                m.etcd_error(EtcdOp::Acquire);
                tracing::warn!("etcd unavailable, retrying: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            // Many hosts starting at once: the pool is not full, try again.
            Err(e @ subnet_lease::Error::TooManyRaces(_)) => {
                tracing::warn!("{e}; retrying");
                tokio::time::sleep(Duration::from_millis(100 + u64::from(std::process::id() % 200))).await;
            }
            // Pool exhausted and the like: nothing has been programmed yet.
            Err(e) => {
                m.etcd_error(EtcdOp::Acquire);
                return Err(AgentError::Acquire {
                    what: format!("PublicIP {public_ip}, {}", pool_of(&cfg)),
                    source: e,
                });
            }
        }
    };
    let own = lease.subnet;
    let own6 = lease.ipv6_subnet.filter(|_| ipv6.is_some());
    tracing::info!(subnet = %own, ipv6_subnet = ?own6, "lease acquired");
    m.lease(&own.to_string(), true);
    if let Some(sn6) = own6 {
        m.lease(&sn6.to_string(), true);
    }

    // The devices, only now that the lease is ours. Each one's only address is
    // the network address of our subnet (/32, /128), the next hop peers route to.
    let mut dev4 = None;
    let mut dev6 = None;
    let mut mtu = ext.mtu;
    if let Some(mac) = mac4 {
        let mtu4 = cfg.backend.mtu.unwrap_or(ext.mtu.saturating_sub(VXLAN_OVERHEAD));
        let spec = VxlanSpec {
            name: &vtep_name(vni),
            vni,
            port: cfg.backend.port,
            local: Some(IpAddr::V4(public_ip)),
            underlay: Some(ext.index),
            mtu: Some(mtu4),
            learning: false,
            mac: Some(mac),
        };
        dev4 = Some(vtep(&mut nl, &spec, IpNetwork::new(IpAddr::V4(own.network()), 32).expect("/32"))?);
        mtu = mtu4;
    }
    if let (Some(mac), Some(sn6)) = (mac6, own6) {
        let mtu6 = cfg.backend.mtu.unwrap_or(ext.mtu.saturating_sub(VXLAN6_OVERHEAD));
        // Sent from our address on the interface (Flannel's IfaceV6Addr);
        // --public-ipv6 is what peers send to.
        let local = ext.ip6.map(|n| n.ip()).or(public_ipv6).map(IpAddr::V6);
        let spec = VxlanSpec {
            name: &vtep6_name(vni),
            vni,
            port: cfg.backend.port,
            local,
            underlay: Some(ext.index),
            mtu: Some(mtu6),
            learning: false,
            mac: Some(mac),
        };
        dev6 = Some(vtep(&mut nl, &spec, IpNetwork::new(IpAddr::V6(sn6.network()), 128).expect("/128"))?);
        // One pod interface carries both families: it gets the smaller MTU,
        // so IPv6 fits flannel-v6 without relying on ICMPv6 Packet Too Big.
        mtu = mtu.min(mtu6);
    }
    if ipv6.is_none() {
        // IPv6 was switched off: a device left by an earlier run goes.
        link::delete(&mut nl, &vtep6_name(vni))?;
    }
    if args.ip_masq {
        nft::ensure_masquerade(masq_table(), "overlay", IpNetwork::V4(cfg.network))?;
        if let Some(n6) = ipv6 {
            nft::ensure_masquerade(masq_table(), "overlay", IpNetwork::V6(n6))?;
        }
    }
    write_subnet_file(&args.subnet_file, &SubnetFile::new(&cfg, &lease, mtu, args.ip_masq))?;

    let mut planes = vec![Plane {
        v6: false,
        dev: dev4,
        segment: Some(IpNetwork::V4(ext.segment)),
        network: IpNetwork::V4(cfg.network),
        own: IpNetwork::V4(own),
        peers: HashMap::new(),
    }];
    if let (Some(n6), Some(sn6)) = (ipv6, own6) {
        planes.push(Plane {
            v6: true,
            dev: dev6,
            segment: ext.ip6.and_then(|n| Ipv6Network::new(n.network(), n.prefix()).ok()).map(IpNetwork::V6),
            network: IpNetwork::V6(n6),
            own: IpNetwork::V6(sn6),
            peers: HashMap::new(),
        });
    }
    let mut dp = Dataplane {
        nl,
        kind: cfg.backend.kind,
        ext_index: ext.index,
        direct_routing: cfg.backend.direct_routing,
        planes,
    };
    // etcd may go away right here too (a restart while we start): wait for it
    // like everywhere else instead of exiting with the lease half set up.
    let (all, rev) = loop {
        match sm.leases().await {
            Ok(r) => break r,
            Err(e) if e.is_unavailable() => {
                m.etcd_error(EtcdOp::List);
                tracing::warn!("etcd unavailable, retrying: {e}");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
            Err(e) => {
                m.etcd_error(EtcdOp::List);
                return Err(e.into());
            }
        }
    };
    let started = std::time::Instant::now();
    dp.resync(own, &all)?;
    m.reconciled(started.elapsed());
    // Other hosts' subnets known from etcd (IPv4: one per host).
    let mut remote: HashSet<Ipv4Network> = all.iter().map(|l| l.subnet).filter(|s| *s != own).collect();
    m.dataplane(remote.len(), &dp.programmed());
    ready.store(true, Ordering::SeqCst);
    tracing::info!(peers = dp.planes[0].peers.len(), "ready");

    let mut events = sm.watch(rev);
    let renew_every = (args.lease_ttl.saturating_sub(args.renew_margin)).max(Duration::from_secs(1));
    let mut renew = tokio::time::interval_at(tokio::time::Instant::now() + renew_every, renew_every);
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    let lost = loop {
        tokio::select! {
            ev = events.recv() => match ev {
                Some(Event::Added(l)) if l.subnet != own => {
                    remote.insert(l.subnet);
                    for (pi, s, p) in dp.wanted_all(&l) {
                        if let Err(e) = dp.add(pi, s, p) {
                            tracing::error!(subnet = %s, "program peer: {e}");
                        }
                    }
                }
                Some(Event::Added(_)) => {}
                Some(Event::Removed { subnet, .. }) if subnet == own => break true,
                Some(Event::Removed { subnet, ipv6_subnet }) => {
                    remote.remove(&subnet);
                    dp.forget(0, IpNetwork::V4(subnet));
                    if let Some(s6) = ipv6_subnet {
                        dp.forget(1, IpNetwork::V6(s6));
                    }
                }
                Some(Event::Resync(all)) => {
                    m.resync();
                    if !all.iter().any(|l| l.subnet == own) {
                        break true;
                    }
                    remote = all.iter().map(|l| l.subnet).filter(|s| *s != own).collect();
                    let started = std::time::Instant::now();
                    if let Err(e) = dp.resync(own, &all) {
                        tracing::error!("resync: {e}");
                    }
                    m.reconciled(started.elapsed());
                }
                None => break false,
            },
            _ = renew.tick() => {
                let renewed = sm.renew(&lease).await;
                m.renewal(renewed.is_ok());
                if renewed.is_err() {
                    m.etcd_error(EtcdOp::Renew);
                }
                match renewed {
                    Ok(()) => tracing::debug!(subnet = %own, "lease renewed"),
                    Err(e) if e.is_unavailable() => {
                        // Retry soon rather than a whole period later: an
                        // etcd election or a dead member must not let a short
                        // TTL run out.
                        tracing::warn!("renew failed, retrying in {RENEW_RETRY:?}: {e}");
                        renew.reset_after(RENEW_RETRY.min(renew_every));
                    }
                    Err(e) => {
                        tracing::error!("renew: {e}");
                        break true;
                    }
                }
            }
            _ = tokio::signal::ctrl_c() => break false,
            _ = term.recv() => break false,
        }
        m.dataplane(remote.len(), &dp.programmed());
    };
    if !lost {
        tracing::info!("shutting down; lease and kernel state kept");
        return Ok(());
    }
    ready.store(false, Ordering::SeqCst);
    m.lease(&own.to_string(), false);
    if let Some(sn6) = own6 {
        m.lease(&sn6.to_string(), false);
    }
    let torn_down = teardown(&mut dp, &cfg, &args);
    m.dataplane(0, &dp.programmed());
    torn_down?;
    Err(AgentError::LeaseLost(own))
}

/// How soon a renew that failed because etcd was unavailable is retried.
const RENEW_RETRY: Duration = Duration::from_secs(1);

fn teardown(dp: &mut Dataplane, cfg: &NetworkConfig, args: &AgentArgs) -> Result<()> {
    for pi in 0..dp.planes.len() {
        let peers: Vec<(IpNetwork, Peer)> = dp.planes[pi].peers.iter().map(|(s, p)| (*s, p.clone())).collect();
        for (s, p) in peers {
            let _ = dp.remove(pi, s, &p);
        }
    }
    if cfg.backend.kind == BackendKind::Vxlan {
        link::delete(&mut dp.nl, &vtep_name(cfg.backend.vni))?;
        link::delete(&mut dp.nl, &vtep6_name(cfg.backend.vni))?;
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

async fn connect(cfg: &EtcdConfig, m: &AgentMetrics) -> SubnetManager {
    loop {
        match SubnetManager::connect(cfg).await {
            Ok(sm) => return sm,
            Err(e) => {
                m.etcd_error(EtcdOp::Connect);
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
