//! The CNI plugin (`type: "cni-bgp"`): Calico's routed wiring.
//!
//! Each container gets a veth whose host end (`cali…`, MAC
//! ee:ee:ee:ee:ee:ee, no address, proxy ARP on) is routed to, not bridged:
//! the host holds a /32 (/128) route to the container's address through it,
//! and the container reaches everything through 169.254.1.1 (IPv6: the
//! host end's link-local fe80::ecee:eeff:feee:eeee, EUI-64 by construction:
//! ADD sets the link's addrgenmode to eui64), resolved by a permanent neighbour entry, so it
//! works on a host without any default route. Addresses come from the IPAM
//! section (our `cni-ipam`: in-process for its local store, exec'd for its
//! cluster modes; any other IPAM through `CNI_PATH`).
//!
//! Ownership: ADD writes a record of the attachment in `dataDir` before it
//! creates the veth, and labels the host end with an alias naming the
//! attachment. A `cali…` link is ours only when its alias or a record says
//! so (Calico's links have the same shape of name and the same MAC).

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;

use cni_core::delegate;
use cni_core::{CniResult, Code, Command, Context, Error, Interface, Plugin, Result, Route};
use linux_net::link::{self, Link, VethSpec};
use linux_net::netlink::Netlink;
use linux_net::netns::NetNs;
use linux_net::{addr, neigh, nft, route, sysctl};

use crate::names::{self, GATEWAY_V4, GATEWAY_V6, HOST_MAC};
use crate::status;

/// Default directory of the attachment records.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/cni-bgp";
/// CNI error code for CHECK finding the container's wiring drifted.
pub const CODE_CHECK_DRIFT: u32 = 120;
/// The `kind` of a saved record.
const RECORD_KIND: &str = "cni-bgp/attachment-v1";
/// rtm_scope link (253).
const SCOPE_LINK: u8 = 253;

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct BgpConf {
    #[serde(default)]
    mtu: Option<u32>,
    #[serde(default)]
    nat_outgoing: bool,
    /// The pools traffic stays inside of unmasqueraded; default: the IPAM
    /// pool or range of each address (see [`ipam_subnet`]).
    #[serde(default)]
    pools: Vec<IpNetwork>,
    #[serde(default)]
    state_dir: Option<PathBuf>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
}

impl BgpConf {
    fn parse(ctx: &Context) -> Result<BgpConf> {
        let c: BgpConf = serde_json::from_value(ctx.raw.clone())
            .map_err(|e| Error::config("invalid cni-bgp config").with_details(e))?;
        if let Some(m) = c.mtu {
            if !(68..=65535).contains(&m) {
                return Err(Error::config(format!("mtu {m} is out of range (68-65535)")));
            }
        }
        Ok(c)
    }

    fn state_dir(&self) -> &Path {
        self.state_dir.as_deref().unwrap_or(Path::new(status::DEFAULT_STATE_DIR))
    }

    fn data_dir(&self) -> &Path {
        self.data_dir.as_deref().unwrap_or(Path::new(DEFAULT_DATA_DIR))
    }

    fn record_path(&self, ctx: &Context) -> PathBuf {
        self.data_dir().join(names::record_name(&ctx.conf.name, &ctx.container_id, &ctx.ifname))
    }
}

/// What ADD saves before it touches the kernel.
#[derive(Debug, serde::Serialize, Deserialize)]
struct Record {
    kind: String,
    network: String,
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
    #[serde(rename = "hostVeth")]
    host_veth: String,
}

impl Record {
    /// A file is one of our records only if it parses as one and sits under
    /// the name ADD gives that record.
    fn ours(file_name: &str, bytes: &[u8]) -> Option<Record> {
        let r: Record = serde_json::from_slice(bytes).ok()?;
        let named_right = file_name == names::record_name(&r.network, &r.container_id, &r.ifname);
        (r.kind == RECORD_KIND && named_right && r.host_veth == names::host_veth(&r.container_id, &r.ifname))
            .then_some(r)
    }
}

fn save_record(path: &Path, ctx: &Context, host_veth: &str) -> Result<()> {
    let rec = Record {
        kind: RECORD_KIND.into(),
        network: ctx.conf.name.clone(),
        container_id: ctx.container_id.clone(),
        ifname: ctx.ifname.clone(),
        host_veth: host_veth.into(),
    };
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    let tmp = PathBuf::from(tmp);
    std::fs::write(&tmp, serde_json::to_vec(&rec).unwrap_or_default())
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| Error::io(format!("save attachment record {}", path.display()), e))
}

/// (network, container, ifname) of a record's temp file name, `<record name>.tmp`.
fn tmp_record_name(file_name: &str) -> Option<(&str, &str, &str)> {
    let base = file_name.strip_suffix(".json.tmp")?;
    let mut parts = base.splitn(3, '+');
    let (n, c, i) = (parts.next()?, parts.next()?, parts.next()?);
    Some((n, c, i))
}

fn remove_record(path: &Path) -> Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("remove {}", path.display()), e)),
    }
}

fn has_record(conf: &BgpConf, ctx: &Context) -> bool {
    let path = conf.record_path(ctx);
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    std::fs::read(&path).ok().is_some_and(|b| Record::ours(&name, &b).is_some())
}

fn kernel(e: linux_net::Error) -> Error {
    use nix::errno::Errno;
    let code = match e.errno() {
        Some(Errno::EAGAIN | Errno::EBUSY) => Code::TryAgainLater,
        _ => Code::Other(cni_core::error::CODE_INTERNAL),
    };
    Error::new(code, e.to_string())
}

fn drift(msg: impl Into<String>) -> Error {
    Error::new(Code::Other(CODE_CHECK_DRIFT), msg)
}

/// Where the IPAM section sends us (as cni-bridge does).
enum Ipam<'a> {
    InProcess,
    Exec(&'a str),
}

impl<'a> Ipam<'a> {
    fn of(ctx: &'a Context) -> Result<Ipam<'a>> {
        match ctx.conf.ipam_type() {
            None => {
                Err(Error::config("cni-bgp needs an ipam section").with_details("e.g. {\"type\": \"cni-ipam\", …}"))
            }
            Some("cni-ipam") if !ipam::is_cluster_config(ctx) => Ok(Ipam::InProcess),
            Some(t) => Ok(Ipam::Exec(t)),
        }
    }

    fn add(&self, ctx: &Context) -> Result<CniResult> {
        match self {
            Ipam::InProcess => ipam::LocalIpam.add(ctx),
            Ipam::Exec(t) => delegate::ipam_add(t, ctx, &ctx.raw),
        }
    }

    fn verb(&self, command: Command, ctx: &Context) -> Result<()> {
        match self {
            Ipam::InProcess => match command {
                Command::Del => ipam::LocalIpam.del(ctx),
                Command::Check => ipam::LocalIpam.check(ctx),
                Command::Status => ipam::LocalIpam.status(ctx),
                Command::Gc => ipam::LocalIpam.gc(ctx),
                _ => Ok(()),
            },
            Ipam::Exec(t) => match command {
                Command::Status | Command::Gc => delegate::forward_if_supported(t, command, ctx, &ctx.raw).map(|_| ()),
                _ => delegate::ipam_verb(t, command, ctx, &ctx.raw),
            },
        }
    }
}

fn alias_of(l: &Link) -> Option<&str> {
    l.alias.as_deref().filter(|a| !a.is_empty())
}

/// The host veth of exactly this attachment: its alias says so or, when an
/// ADD died before the alias was set, this attachment's record exists.
fn is_this_attachment(ctx: &Context, conf: &BgpConf, l: &Link) -> bool {
    match alias_of(l) {
        Some(a) => a == names::veth_alias(&ctx.conf.name, &ctx.container_id, &ctx.ifname),
        None => l.name == names::host_veth(&ctx.container_id, &ctx.ifname) && has_record(conf, ctx),
    }
}

/// Deletes this attachment's host veth (and with it the container end and
/// the host route). A link of that name that is not provably ours stays.
fn delete_if_ours(ctx: &Context, conf: &BgpConf, host_veth: &str) -> Result<()> {
    let mut nl = Netlink::open().map_err(kernel)?;
    match link::get(&mut nl, host_veth).map_err(kernel)? {
        None => Ok(()),
        Some(l) if is_this_attachment(ctx, conf, &l) => link::delete(&mut nl, host_veth).map(|_| ()).map_err(kernel),
        Some(l) => {
            tracing::warn!(host_veth, alias = ?l.alias, "not this attachment's link: left in place");
            Ok(())
        }
    }
}

fn open_netns(ctx: &Context) -> Result<NetNs> {
    let path = ctx.netns.as_deref().ok_or_else(|| Error::env("CNI_NETNS is required"))?;
    NetNs::open(path).map_err(|e| Error::env("CNI_NETNS cannot be opened").with_details(e))
}

fn host_len(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        32
    } else {
        128
    }
}

fn host_net(ip: IpAddr) -> IpNetwork {
    IpNetwork::new(ip, host_len(ip)).expect("full-length prefix is valid")
}

fn default_dst(v6: bool) -> IpNetwork {
    if v6 { "::/0" } else { "0.0.0.0/0" }.parse().expect("valid")
}

fn gateway(v6: bool) -> IpAddr {
    if v6 {
        IpAddr::V6(GATEWAY_V6)
    } else {
        IpAddr::V4(GATEWAY_V4)
    }
}

pub struct Bgp;

impl Plugin for Bgp {
    fn add(&self, ctx: &Context) -> Result<CniResult> {
        let conf = BgpConf::parse(ctx)?;
        let ns = open_netns(ctx)?;
        let ipam = Ipam::of(ctx)?;
        let host_veth = names::host_veth(&ctx.container_id, &ctx.ifname);
        let record = conf.record_path(ctx);
        // A record already there is a killed ADD's: with it, a leftover link
        // of ours that never got its alias can still be recognised.
        let prior_record = has_record(&conf, ctx);
        let mut result = ipam.add(ctx)?;
        let mut created = false;
        let out = save_record(&record, ctx, &host_veth)
            .and_then(|_| configure(ctx, &conf, &ns, &host_veth, prior_record, &mut created, &mut result));
        match out {
            Ok(()) => Ok(result),
            Err(e) => {
                // Undo in reverse: the veth pair (its host route and neighbour
                // entries go with it), the record, the leases. The network's
                // masquerade rules stay: other containers rely on them.
                // Only a link this ADD created is deleted: a foreign one under
                // our name stays, although our record now names it.
                let mut undo = Vec::new();
                if created {
                    if let Err(u) = Netlink::open().and_then(|mut nl| link::delete(&mut nl, &host_veth)) {
                        undo.push(format!("delete {host_veth}: {u}"));
                    }
                }
                if let Err(u) = remove_record(&record) {
                    undo.push(u.to_string());
                }
                if let Err(u) = ipam.verb(Command::Del, ctx) {
                    undo.push(format!("release addresses: {u}"));
                }
                Err(e.with_rollback_failures(&undo))
            }
        }
    }

    fn del(&self, ctx: &Context) -> Result<()> {
        let conf = BgpConf::parse(ctx)?;
        let mut errors = Vec::new();
        // Leases first: they need no netns, so a gone container never leaks one.
        if let Err(e) = Ipam::of(ctx).and_then(|i| i.verb(Command::Del, ctx)) {
            errors.push(e);
        }
        let host_veth = names::host_veth(&ctx.container_id, &ctx.ifname);
        if let Err(e) = delete_if_ours(ctx, &conf, &host_veth) {
            errors.push(e);
        }
        if errors.is_empty() {
            if let Err(e) = remove_record(&conf.record_path(ctx)) {
                errors.push(e);
            }
        }
        match errors.into_iter().next() {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    fn check(&self, ctx: &Context) -> Result<()> {
        let conf = BgpConf::parse(ctx)?;
        let prev = ctx
            .prev_result()?
            .ok_or_else(|| Error::config("CHECK needs prevResult").with_details("the runtime passes the ADD result"))?;
        Ipam::of(ctx)?.verb(Command::Check, ctx)?;
        check(ctx, &conf, &prev)
    }

    fn status(&self, ctx: &Context) -> Result<()> {
        let conf = BgpConf::parse(ctx)?;
        let path = status::socket_path(conf.state_dir());
        match status::query(&path, status::TIMEOUT) {
            Ok(a) if a.ready => {}
            Ok(a) => {
                return Err(Error::new(Code::Unavailable, format!("cni-bgp agent on {} is not ready", path.display()))
                    .with_details(a.message.unwrap_or_default()))
            }
            Err(e) => {
                return Err(Error::new(Code::Unavailable, format!("cni-bgp agent not running: {e}"))
                    .with_details("start `cni-bgp agent` with this stateDir"))
            }
        }
        Ipam::of(ctx)?.verb(Command::Status, ctx)
    }

    fn gc(&self, ctx: &Context) -> Result<()> {
        let conf = BgpConf::parse(ctx)?;
        // cni-core refused a GC without the runtime's list: this is that list.
        let valid: HashSet<(String, String)> =
            ctx.gc_valid().iter().map(|a| (a.container_id.clone(), a.ifname.clone())).collect();
        let mut errors: Vec<String> = Vec::new();
        if let Err(e) = Ipam::of(ctx).and_then(|i| i.verb(Command::Gc, ctx)) {
            errors.push(e.to_string());
        }
        if let Err(e) = gc_kernel(ctx, &conf, &valid) {
            errors.push(e.to_string());
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::internal("GC finished with errors").with_details(errors.join("; ")))
        }
    }
}

/// Everything ADD does after the addresses are leased and the record saved.
fn configure(
    ctx: &Context,
    conf: &BgpConf,
    ns: &NetNs,
    host_veth: &str,
    prior_record: bool,
    created: &mut bool,
    result: &mut CniResult,
) -> Result<()> {
    if result.ips.is_empty() {
        return Err(Error::internal("IPAM returned no address"));
    }
    // Taken before the addresses become /32 (/128) below.
    let nat_pools: Vec<IpNetwork> = if conf.pools.is_empty() {
        result.ips.iter().filter_map(|ip| ipam_subnet(ip, &ctx.raw)).collect()
    } else {
        conf.pools.clone()
    };
    let has_v4 = result.ips.iter().any(|ip| ip.address.is_ipv4());
    let has_v6 = result.ips.iter().any(|ip| ip.address.is_ipv6());
    let mut nl = Netlink::open().map_err(kernel)?;
    let spec = VethSpec {
        host: host_veth,
        peer: &ctx.ifname,
        peer_ns_fd: ns.fd(),
        mtu: conf.mtu,
        peer_mac: Some(link::random_mac().map_err(kernel)?),
        master: None,
    };
    let host = match link::create_veth_with_host_mac(&mut nl, &spec, Some(HOST_MAC)) {
        Ok(host) => host,
        Err(e) if !e.is_exists() => return Err(kernel(e)),
        Err(e) => {
            let Some(old) = link::get(&mut nl, host_veth).map_err(kernel)? else {
                return Err(
                    Error::internal(format!("container already has an interface named {}", ctx.ifname)).with_details(e)
                );
            };
            // A leftover of this attachment (ADD killed or never DELeted):
            // its alias says so, or it has none and a record from before
            // this ADD does.
            let ours = match alias_of(&old) {
                Some(a) => a == names::veth_alias(&ctx.conf.name, &ctx.container_id, &ctx.ifname),
                None => prior_record,
            };
            if !ours {
                return Err(Error::internal(format!("host interface {host_veth} exists and is not this attachment's"))
                    .with_details(format!("alias {:?}: left in place", old.alias.as_deref().unwrap_or(""))));
            }
            tracing::info!(host_veth, "removing a stale host veth of this attachment");
            link::delete(&mut nl, host_veth).map_err(kernel)?;
            link::create_veth_with_host_mac(&mut nl, &spec, Some(HOST_MAC)).map_err(kernel)?
        }
    };
    *created = true;
    let alias = names::veth_alias(&ctx.conf.name, &ctx.container_id, &ctx.ifname);
    link::set_port(&mut nl, host.index, Some(&alias), Vec::new()).map_err(kernel)?;
    if has_v6 {
        // The container's IPv6 next hop is GATEWAY_V6, the EUI-64
        // link-local of HOST_MAC: made true here, before the link goes up
        // (the address is generated then), whatever the host's
        // net.ipv6.conf.default.addr_gen_mode (stable-privacy or none
        // would give another address, or none).
        link::set_addr_gen_mode_eui64(&mut nl, host.index).map_err(kernel)?;
    }
    link::set_up(&mut nl, host.index, true).map_err(kernel)?;

    // Host side: forwarding, proxy ARP (answers for anything the host
    // routes), no address. IPv6: forwarding; the container's next hop is
    // the host end's own link-local address, so no proxy NDP is needed for
    // it, but it is on for parity with Calico's other proxied addresses.
    if has_v4 {
        sysctl::ensure("net/ipv4/ip_forward", "1").map_err(kernel)?;
        sysctl::ensure(&format!("net/ipv4/conf/{host_veth}/proxy_arp"), "1").map_err(kernel)?;
        sysctl::ensure(&format!("net/ipv4/neigh/{host_veth}/proxy_delay"), "0").map_err(kernel)?;
    }
    if has_v6 {
        sysctl::ensure("net/ipv6/conf/all/forwarding", "1").map_err(kernel)?;
        sysctl::ensure(&format!("net/ipv6/conf/{host_veth}/proxy_ndp"), "1").map_err(kernel)?;
        sysctl::ensure(&format!("net/ipv6/conf/{host_veth}/accept_ra"), "0").map_err(kernel)?;
    }

    // Container side.
    let mut cnl = ns.netlink().map_err(kernel)?;
    let cont = match host.link {
        Some(index) => index,
        None => {
            link::get(&mut cnl, &ctx.ifname)
                .map_err(kernel)?
                .ok_or_else(|| Error::internal(format!("{} missing in the container after creation", ctx.ifname)))?
                .index
        }
    };
    link::set_up(&mut cnl, cont, true).map_err(kernel)?;
    for ip in &mut result.ips {
        let a = host_net(ip.address.ip());
        addr::add(&mut cnl, cont, a, true).map_err(kernel)?;
        ip.address = a;
        ip.gateway = Some(gateway(a.is_ipv6()));
        ip.interface = Some(1);
    }
    result.routes.clear();
    for v6 in [false, true] {
        if !(if v6 { has_v6 } else { has_v4 }) {
            continue;
        }
        let gw = gateway(v6);
        if !v6 {
            // Resolved without ARP: the host has proxy ARP, but answers only
            // for what it routes, and a host without a default route has no
            // route to 169.254.1.1.
            neigh::neigh_replace(&mut cnl, cont, gw, HOST_MAC).map_err(kernel)?;
            let mut link_route = route::Route::new(host_net(gw), None, Some(cont));
            link_route.scope = Some(SCOPE_LINK);
            add_route(&mut cnl, &link_route)?;
        }
        let def = route::Route::new(default_dst(v6), Some(gw), Some(cont));
        add_route(&mut cnl, &def)?;
        result.routes.push(Route::new(default_dst(v6), Some(gw)));
    }

    // Host routes to the container.
    for ip in &result.ips {
        let mut r = route::Route::new(ip.address, None, Some(host.index));
        r.scope = Some(SCOPE_LINK);
        route::replace(&mut nl, &r).map_err(kernel)?;
    }

    if conf.nat_outgoing {
        let table = names::nft_table(&ctx.conf.name);
        for p in nat_pools {
            let p = IpNetwork::new(p.network(), p.prefix()).expect("prefix is valid");
            nft::ensure_masquerade(&table, &ctx.conf.name, p)
                .map_err(|e| Error::internal("nftables").with_details(e))?;
        }
    }

    let mtu = conf.mtu.or(Some(host.mtu));
    result.interfaces = vec![
        Interface { name: host.name.clone(), mac: link::format_mac(&HOST_MAC), mtu, ..Default::default() },
        Interface {
            name: ctx.ifname.clone(),
            mac: spec.peer_mac.map(|m| link::format_mac(&m)).unwrap_or_default(),
            mtu,
            sandbox: ctx.netns.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            ..Default::default()
        },
    ];
    Ok(())
}

/// The pool an address came from: the cluster pool (`ipam.cluster.pool`, or
/// the one of `ipam.cluster.pools[].cidr` that holds it) or the range subnet
/// of the IPAM config that holds it, else the prefix IPAM returned it with.
fn ipam_subnet(ip: &cni_core::IpConfig, raw: &Value) -> Option<IpNetwork> {
    let a = ip.address.ip();
    let cluster = &raw["ipam"]["cluster"];
    let pools = cluster["pools"].as_array().into_iter().flatten().map(|p| &p["cidr"]);
    let cluster_pool = std::iter::once(&cluster["pool"])
        .chain(pools)
        .filter_map(|v| v.as_str().and_then(|s| s.parse::<IpNetwork>().ok()))
        .find(|p| p.contains(a));
    if let Some(p) = cluster_pool {
        return Some(p);
    }
    let ranges = raw["ipam"]["ranges"].as_array().cloned().unwrap_or_default();
    for set in ranges {
        for r in set.as_array().cloned().unwrap_or_default() {
            if let Some(n) = r["subnet"].as_str().and_then(|s| s.parse::<IpNetwork>().ok()) {
                if n.contains(a) {
                    return Some(n);
                }
            }
        }
    }
    let n = ip.address;
    (n.prefix() < host_len(a)).then_some(n)
}

fn add_route(nl: &mut Netlink, r: &route::Route) -> Result<()> {
    match route::add(nl, r) {
        Ok(()) => Ok(()),
        Err(e) if e.is_exists() => Ok(()),
        Err(e) => Err(kernel(e)),
    }
}

fn check(ctx: &Context, conf: &BgpConf, prev: &CniResult) -> Result<()> {
    let host_veth = names::host_veth(&ctx.container_id, &ctx.ifname);
    let mut nl = Netlink::open().map_err(kernel)?;
    let host = link::get(&mut nl, &host_veth)
        .map_err(kernel)?
        .ok_or_else(|| drift(format!("host veth {host_veth} does not exist")))?;
    if !is_this_attachment(ctx, conf, &host) {
        return Err(drift(format!("host veth {host_veth} is not this attachment's")));
    }
    if host.mac != Some(HOST_MAC) {
        return Err(drift(format!("host veth {host_veth} has MAC {}, not ee:ee:ee:ee:ee:ee", host.mac_string())));
    }
    let ips: Vec<IpAddr> = prev.ips.iter().map(|ip| ip.address.ip()).collect();
    for v6 in [false, true] {
        if !ips.iter().any(|ip| ip.is_ipv6() == v6) {
            continue;
        }
        if v6 {
            let have = addr::list(&mut nl, Some(host.index)).map_err(kernel)?;
            if !have.iter().any(|(_, a)| a.ip() == IpAddr::V6(GATEWAY_V6)) {
                return Err(drift(format!("host veth {host_veth} lacks {GATEWAY_V6}, the container's IPv6 next hop")));
            }
        }
        let routes = route::list_oif(&mut nl, v6, host.index).map_err(kernel)?;
        for ip in ips.iter().filter(|ip| ip.is_ipv6() == v6) {
            if !routes.iter().any(|r| r.dst == host_net(*ip) && r.gw.is_none()) {
                return Err(drift(format!("host route to {} via {host_veth} is missing", host_net(*ip))));
            }
        }
    }

    let netns = ctx.netns.as_deref().map(|p| p.display().to_string()).unwrap_or_default();
    let ns = NetNs::open(ctx.netns.as_deref().unwrap_or(Path::new("")))
        .map_err(|e| Error::new(Code::UnknownContainer, "container netns is gone").with_details(e))?;
    let mut cnl = ns.netlink().map_err(kernel)?;
    let cont = link::get(&mut cnl, &ctx.ifname)
        .map_err(kernel)?
        .ok_or_else(|| Error::new(Code::UnknownContainer, format!("{} does not exist in {netns}", ctx.ifname)))?;
    if host.link.is_some_and(|peer| peer != cont.index) {
        return Err(drift(format!("{} in {netns} is not the peer of {host_veth}", ctx.ifname)));
    }
    let have = addr::list(&mut cnl, Some(cont.index)).map_err(kernel)?;
    for ip in &ips {
        if !have.iter().any(|(_, a)| *a == host_net(*ip)) {
            return Err(drift(format!("{} is missing address {}", ctx.ifname, host_net(*ip))));
        }
    }
    for v6 in [false, true] {
        if !ips.iter().any(|ip| ip.is_ipv6() == v6) {
            continue;
        }
        let gw = gateway(v6);
        let routes = route::list_oif(&mut cnl, v6, cont.index).map_err(kernel)?;
        if !routes.iter().any(|r| r.dst == default_dst(v6) && r.gw == Some(gw)) {
            return Err(drift(format!("default route via {gw} is missing in the container")));
        }
        if !v6 {
            if !routes.iter().any(|r| r.dst == host_net(gw) && r.gw.is_none()) {
                return Err(drift(format!("route to {gw} dev {} is missing in the container", ctx.ifname)));
            }
            let neighbours = neigh::neigh_list(&mut cnl, cont.index).map_err(kernel)?;
            if !neighbours.iter().any(|(ip, mac)| *ip == gw && *mac == HOST_MAC) {
                return Err(drift(format!(
                    "permanent neighbour {gw} -> ee:ee:ee:ee:ee:ee is missing in the container"
                )));
            }
        }
    }
    Ok(())
}

/// GC of this network's stale attachments: `cali…` links whose alias or
/// record names an attachment of this network the runtime no longer
/// lists, their records, and the network's masquerade table once no
/// attachment remains.
fn gc_kernel(ctx: &Context, conf: &BgpConf, valid: &HashSet<(String, String)>) -> Result<()> {
    let net = &ctx.conf.name;
    let mut errors = Vec::new();
    // Records of this network: (host veth) -> (record path, valid?).
    let mut records: Vec<(PathBuf, Record)> = Vec::new();
    if let Ok(dir) = std::fs::read_dir(conf.data_dir()) {
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if !entry.file_type().is_ok_and(|t| t.is_file()) {
                continue;
            }
            // A temp file an ADD killed while saving its record left (maybe
            // empty): its name is the proof, as network and container ID
            // cannot hold '+'.
            if let Some((n, c, i)) = tmp_record_name(&name) {
                if n == net && !valid.contains(&(c.to_string(), i.to_string())) {
                    if let Err(e) = remove_record(&entry.path()) {
                        errors.push(e.to_string());
                    }
                }
                continue;
            }
            if !name.ends_with(".json") {
                continue;
            }
            let Ok(bytes) = std::fs::read(entry.path()) else { continue };
            if let Some(rec) = Record::ours(&name, &bytes).filter(|r| &r.network == net) {
                records.push((entry.path(), rec));
            }
        }
    }
    let is_valid = |cid: &str, ifname: &str| valid.contains(&(cid.to_string(), ifname.to_string()));
    let mut nl = Netlink::open().map_err(kernel)?;
    for l in link::list(&mut nl).map_err(kernel)?.iter().filter(|l| names::is_cali(&l.name)) {
        let stale = match alias_of(l) {
            Some(a) => names::parse_veth_alias(a).is_some_and(|(n, c, i)| n == net && !is_valid(c, i)),
            None => records.iter().any(|(_, r)| r.host_veth == l.name && !is_valid(&r.container_id, &r.ifname)),
        };
        if stale {
            if let Err(e) = link::delete(&mut nl, &l.name) {
                errors.push(format!("delete {}: {e}", l.name));
            }
        }
    }
    for (path, rec) in &records {
        if !is_valid(&rec.container_id, &rec.ifname) {
            if let Err(e) = remove_record(path) {
                errors.push(e.to_string());
            }
        }
    }
    if valid.is_empty() && conf.nat_outgoing {
        if let Err(e) = nft::delete_table(nft::Family::Inet, &names::nft_table(net)) {
            errors.push(format!("delete nft table: {e}"));
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::internal("GC").with_details(errors.join("; ")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ip(a: &str) -> cni_core::IpConfig {
        cni_core::IpConfig { address: a.parse().unwrap(), gateway: None, interface: None }
    }

    #[test]
    fn nat_pools_come_from_the_cluster_pool_then_the_ranges_then_the_prefix() {
        let cluster = json!({"ipam": {"cluster": {"pool": "10.244.0.0/16"}}});
        assert_eq!(ipam_subnet(&ip("10.244.3.7/26"), &cluster), Some("10.244.0.0/16".parse().unwrap()));
        let ranges = json!({"ipam": {"ranges": [[{"subnet": "10.1.0.0/24"}], [{"subnet": "fd00:1::/64"}]]}});
        assert_eq!(ipam_subnet(&ip("fd00:1::5/64"), &ranges), Some("fd00:1::/64".parse().unwrap()));
        assert_eq!(ipam_subnet(&ip("10.9.0.5/24"), &ranges), Some("10.9.0.5/24".parse().unwrap()));
        assert_eq!(ipam_subnet(&ip("10.9.0.5/32"), &json!({})), None, "a lone /32 names no pool");
        // Several pools: the one holding the address, also for a borrowed /32.
        let pools = json!({"ipam": {"cluster": {"pools": [{"cidr": "10.244.0.0/16"}, {"cidr": "fd00:244::/48"}]}}});
        assert_eq!(ipam_subnet(&ip("10.244.3.7/26"), &pools), Some("10.244.0.0/16".parse().unwrap()));
        assert_eq!(ipam_subnet(&ip("10.244.9.9/32"), &pools), Some("10.244.0.0/16".parse().unwrap()));
        assert_eq!(ipam_subnet(&ip("fd00:244::7/122"), &pools), Some("fd00:244::/48".parse().unwrap()));
    }

    #[test]
    fn temp_record_names_parse_back() {
        assert_eq!(tmp_record_name("n+c.1+eth0.json.tmp"), Some(("n", "c.1", "eth0")));
        assert_eq!(tmp_record_name("n+c.1+eth0.json"), None);
        assert_eq!(tmp_record_name("n+c.1.json.tmp"), None);
        assert_eq!(tmp_record_name("n+c+eth0+x.json.tmp"), Some(("n", "c", "eth0+x")), "an ifname may hold '+'");
    }

    #[test]
    fn only_our_records_under_their_own_names_are_ours() {
        let rec = json!({"kind": RECORD_KIND, "network": "n", "containerID": "c1", "ifname": "eth0",
            "hostVeth": names::host_veth("c1", "eth0")});
        let bytes = rec.to_string().into_bytes();
        assert!(Record::ours("n+c1+eth0.json", &bytes).is_some());
        assert!(Record::ours("n+c2+eth0.json", &bytes).is_none(), "renamed");
        let mut wrong = rec.clone();
        wrong["hostVeth"] = json!("cali00000000000");
        assert!(Record::ours("n+c1+eth0.json", wrong.to_string().as_bytes()).is_none(), "names a link not its own");
    }
}
