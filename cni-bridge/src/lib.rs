//! `cni-bridge`: containers on a Linux bridge through veth pairs.
//!
//! Parity with the reference `bridge` plugin's config, with these design
//! choices: every kernel change is netlink from this process (no `ip`,
//! `iptables` or `nft` exec); our own `cni-ipam` runs in-process, any other
//! IPAM through `CNI_PATH`; names are derived from (network, container,
//! ifname) so DEL and GC need no state file; masquerade is one nftables
//! rule per subnet per network, installed once in an atomic transaction.

pub mod config;
pub mod names;

use std::collections::HashSet;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use linux_net::link::PortOption;
use linux_net::link::{self, BridgeSpec, Link, VethSpec};
use linux_net::netlink::Netlink;
use linux_net::netns::NetNs;
use linux_net::{addr, nft, route, sysctl};

use cni_core::delegate;
use cni_core::CniResult;
use cni_core::{Code, Command, Context, Error, Interface, Plugin, Result, Route};

use crate::config::{requested_mac, BridgeConf};

/// CNI error code for CHECK finding the container's network drifted from prevResult.
pub const CODE_CHECK_DRIFT: u32 = 120;

pub struct Bridge;

fn kernel(e: linux_net::Error) -> Error {
    use nix::errno::Errno;
    let code = match e.errno() {
        Some(Errno::EAGAIN | Errno::EBUSY) => Code::TryAgainLater,
        _ => Code::Other(cni_core::error::CODE_INTERNAL),
    };
    Error::new(code, e.to_string())
}

fn nft_err(e: nft::NftError) -> Error {
    Error::internal("nftables").with_details(e)
}

/// Logs how long each ADD step took (debug level): where an ADD spends its time.
struct Steps(std::time::Instant);

impl Steps {
    fn start() -> Steps {
        Steps(std::time::Instant::now())
    }

    fn done(&mut self, step: &str) {
        let now = std::time::Instant::now();
        tracing::debug!(step, us = (now - self.0).as_micros() as u64, "ADD step");
        self.0 = now;
    }
}

/// Where the IPAM section of the config sends us.
enum Ipam<'a> {
    None,
    /// Our own `cni-ipam` on its local store, called in-process: no exec on
    /// the ADD path. (Its cluster modes are exec'd, which keeps etcd code out
    /// of this binary and its start-up.)
    InProcess,
    Exec(&'a str),
}

impl<'a> Ipam<'a> {
    fn of(ctx: &'a Context) -> Ipam<'a> {
        match ctx.conf.ipam_type() {
            None => Ipam::None,
            Some("cni-ipam") if !ipam::is_cluster_config(ctx) => Ipam::InProcess,
            Some(t) => Ipam::Exec(t),
        }
    }

    fn add(&self, ctx: &Context) -> Result<CniResult> {
        match self {
            Ipam::None => Ok(CniResult::default()),
            Ipam::InProcess => ipam::LocalIpam.add(ctx),
            Ipam::Exec(t) => delegate::ipam_add(t, ctx, &ctx.raw),
        }
    }

    fn verb(&self, command: Command, ctx: &Context) -> Result<()> {
        match self {
            Ipam::None => Ok(()),
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

/// Opens the container's netns; a missing one is the runtime's mistake (code 4 on ADD).
fn open_netns(ctx: &Context) -> Result<NetNs> {
    let path = ctx.netns.as_deref().ok_or_else(|| Error::env("CNI_NETNS is required"))?;
    NetNs::open(path).map_err(|e| Error::env("CNI_NETNS cannot be opened").with_details(e))
}

impl Plugin for Bridge {
    fn add(&self, ctx: &Context) -> Result<CniResult> {
        let mut steps = Steps::start();
        let conf = BridgeConf::parse(ctx)?;
        let mac = requested_mac(ctx)?;
        let ns = open_netns(ctx)?;
        let ipam = Ipam::of(ctx);
        let mut result = ipam.add(ctx)?;
        steps.done("ipam");
        let host_veth = names::host_veth(&ctx.conf.name, &ctx.container_id, &ctx.ifname);
        match configure(ctx, &conf, &ns, mac, &host_veth, &mut result, &mut steps) {
            Ok(()) => Ok(result),
            Err(e) => {
                // Undo in reverse: the veth pair (and with it the port state), per-container
                // nft state, then the address lease. Shared state (bridge, gateway address,
                // the network's masquerade rule) stays, as other containers rely on it.
                let mut undo = Vec::new();
                if let Err(u) = delete_if_ours(ctx, &host_veth) {
                    undo.push(format!("delete {host_veth}: {u}"));
                }
                if conf.mac_spoof_check {
                    let chain = names::mac_chain(&ctx.container_id, &ctx.ifname);
                    if let Err(u) = nft::delete_chain(nft::Family::Bridge, &names::nft_table(&ctx.conf.name), &chain) {
                        undo.push(format!("delete nft chain {chain}: {u}"));
                    }
                }
                if let Err(u) = ipam.verb(Command::Del, ctx) {
                    undo.push(format!("release addresses: {u}"));
                }
                Err(e.with_rollback_failures(&undo))
            }
        }
    }

    fn del(&self, ctx: &Context) -> Result<()> {
        let conf = BridgeConf::parse(ctx)?;
        let mut errors = Vec::new();
        // Release addresses first: it needs no netns, so a gone netns never leaks a lease.
        if let Err(e) = Ipam::of(ctx).verb(Command::Del, ctx) {
            errors.push(e);
        }
        // Deleting the host end removes the pair, wherever the container end is.
        let host_veth = names::host_veth(&ctx.conf.name, &ctx.container_id, &ctx.ifname);
        if let Err(e) = delete_if_ours(ctx, &host_veth) {
            errors.push(e);
        }
        if conf.mac_spoof_check {
            let chain = names::mac_chain(&ctx.container_id, &ctx.ifname);
            if let Err(e) = nft::delete_chain(nft::Family::Bridge, &names::nft_table(&ctx.conf.name), &chain) {
                errors.push(nft_err(e));
            }
        }
        match errors.into_iter().next() {
            None => Ok(()),
            Some(e) => Err(e),
        }
    }

    fn check(&self, ctx: &Context) -> Result<()> {
        let conf = BridgeConf::parse(ctx)?;
        let prev = ctx
            .prev_result()?
            .ok_or_else(|| Error::config("CHECK needs prevResult").with_details("the runtime passes the ADD result"))?;
        Ipam::of(ctx).verb(Command::Check, ctx)?;
        check_host_side(ctx, &conf)?;
        if !conf.disable_container_interface {
            check_container(ctx, &prev)?;
        }
        Ok(())
    }

    fn status(&self, ctx: &Context) -> Result<()> {
        BridgeConf::parse(ctx)?;
        Ipam::of(ctx).verb(Command::Status, ctx)
    }

    fn gc(&self, ctx: &Context) -> Result<()> {
        let conf = BridgeConf::parse(ctx)?;
        // cni-core refused a GC without the runtime's list: this is that list.
        let valid: HashSet<(String, String)> =
            ctx.gc_valid().iter().map(|a| (a.container_id.clone(), a.ifname.clone())).collect();
        let mut errors: Vec<String> = Vec::new();
        if let Err(e) = Ipam::of(ctx).verb(Command::Gc, ctx) {
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

/// The alias a link carries, if any (the kernel reports an empty one as set).
fn alias_of(l: &Link) -> Option<&str> {
    l.alias.as_deref().filter(|a| !a.is_empty())
}

/// A host veth of network `net`: its alias says so or, when an ADD died
/// before the alias was set, its MAC is the one we give that name in `net`.
fn is_this_networks(net: &str, l: &Link) -> bool {
    match alias_of(l) {
        Some(a) => names::parse_veth_alias(a).is_some_and(|(n, _, _)| n == net),
        None => names::is_our_veth(&l.name) && l.mac == Some(names::host_veth_mac(net, &l.name)),
    }
}

/// The host veth of exactly this attachment (network, container, ifname).
fn is_this_attachment(ctx: &Context, l: &Link) -> bool {
    let net = &ctx.conf.name;
    match alias_of(l) {
        Some(a) => a == names::veth_alias(net, &ctx.container_id, &ctx.ifname),
        None => {
            l.name == names::host_veth(net, &ctx.container_id, &ctx.ifname)
                && l.mac == Some(names::host_veth_mac(net, &l.name))
        }
    }
}

/// Deletes this attachment's host veth (and with it the container end). A
/// link of that name that is not provably ours is left alone and logged.
fn delete_if_ours(ctx: &Context, host_veth: &str) -> Result<()> {
    let mut nl = Netlink::open().map_err(kernel)?;
    match link::get(&mut nl, host_veth).map_err(kernel)? {
        None => Ok(()),
        Some(l) if is_this_attachment(ctx, &l) => link::delete(&mut nl, host_veth).map(|_| ()).map_err(kernel),
        Some(l) => {
            tracing::warn!(host_veth, alias = ?l.alias, mac = %l.mac_string(), "not this attachment's link: left in place");
            Ok(())
        }
    }
}

/// Everything ADD does after the addresses are leased.
fn configure(
    ctx: &Context,
    conf: &BridgeConf,
    ns: &NetNs,
    mac: Option<[u8; 6]>,
    host_veth: &str,
    result: &mut CniResult,
    steps: &mut Steps,
) -> Result<()> {
    let mut nl = Netlink::open().map_err(kernel)?;
    let br = link::ensure_bridge(
        &mut nl,
        &BridgeSpec {
            name: &conf.bridge,
            mtu: conf.mtu,
            promisc: conf.promisc_mode,
            vlan_filtering: conf.vlan_filtering(),
        },
    )
    .map_err(kernel)?;
    steps.done("bridge");

    // Gateway addresses of this result, one per family, as gw/prefix-of-subnet.
    let mut gateways: Vec<IpNetwork> = Vec::new();
    for ip in &mut result.ips {
        let gw = match ip.gateway {
            Some(gw) => gw,
            None if conf.is_gateway => {
                let gw = first_host(ip.address);
                ip.gateway = Some(gw);
                gw
            }
            None => continue,
        };
        if let Ok(n) = IpNetwork::new(gw, ip.address.prefix()) {
            if !gateways.iter().any(|g| g.is_ipv4() == n.is_ipv4()) {
                gateways.push(n);
            }
        }
    }

    if conf.is_gateway {
        let gw_link = match conf.access_vlan() {
            Some(vid) => {
                link::bridge_vlan(&mut nl, br.index, vid, false, true, true).map_err(kernel)?;
                let name = vlan_link_name(&conf.bridge, vid);
                link::ensure_vlan(&mut nl, &name, br.index, vid).map_err(kernel)?
            }
            None => br.clone(),
        };
        for gw in &gateways {
            ensure_gateway_addr(&mut nl, &gw_link, *gw, conf.force_address)?;
        }
        if gateways.iter().any(|g| g.is_ipv4()) {
            sysctl::ensure("net/ipv4/ip_forward", "1").map_err(kernel)?;
        }
        if gateways.iter().any(|g| g.is_ipv6()) {
            sysctl::ensure("net/ipv6/conf/all/forwarding", "1").map_err(kernel)?;
        }
    }

    steps.done("gateway");

    // One request: both ends, the host end enslaved, up and labelled with its
    // MAC, the container end named CNI_IFNAME inside the netns. A leftover
    // host end of this very attachment (an ADD killed or never DELeted) is
    // removed, with its container end, and the pair made once more; a link of
    // the same name that is not provably this attachment's is left alone.
    // The container end's MAC is chosen here (the requested one, else random
    // as the kernel would pick it), so that end need not be looked up later.
    let host_mac = names::host_veth_mac(&ctx.conf.name, host_veth);
    let peer_mac = match mac {
        Some(m) => m,
        None => link::random_mac().map_err(kernel)?,
    };
    let spec = VethSpec {
        host: host_veth,
        peer: &ctx.ifname,
        peer_ns_fd: ns.fd(),
        mtu: conf.mtu,
        peer_mac: Some(peer_mac),
        master: Some(br.index),
    };
    let host = match link::create_veth_with_host_mac(&mut nl, &spec, Some(host_mac)) {
        Ok(host) => host,
        Err(e) if !e.is_exists() => return Err(kernel(e)),
        Err(e) => {
            let Some(old) = link::get(&mut nl, host_veth).map_err(kernel)? else {
                return Err(
                    Error::internal(format!("container already has an interface named {}", ctx.ifname)).with_details(e)
                );
            };
            if !is_this_attachment(ctx, &old) {
                return Err(Error::internal(format!("host interface {host_veth} exists and is not this attachment's"))
                    .with_details(format!(
                        "alias {:?}, MAC {}: not made by cni-bridge for network {} container {} {}; left in place",
                        old.alias.as_deref().unwrap_or(""),
                        old.mac_string(),
                        ctx.conf.name,
                        ctx.container_id,
                        ctx.ifname
                    )));
            }
            tracing::info!(host_veth, "removing a stale host veth of this attachment");
            link::delete(&mut nl, host_veth).map_err(kernel)?;
            link::create_veth_with_host_mac(&mut nl, &spec, Some(host_mac)).map_err(kernel)?
        }
    };
    steps.done("veth");

    // The alias names the attachment, so GC (and an operator) can tell whose port this is.
    let mut port_opts = Vec::new();
    if conf.hairpin_mode {
        port_opts.push(PortOption::HairpinMode(true));
    }
    if conf.port_isolation {
        port_opts.push(PortOption::Isolated(true));
    }
    let alias = names::veth_alias(&ctx.conf.name, &ctx.container_id, &ctx.ifname);
    link::set_port(&mut nl, host.index, Some(&alias), port_opts).map_err(kernel)?;
    if conf.vlan_filtering() {
        if let Some(vid) = conf.access_vlan() {
            link::bridge_vlan(&mut nl, host.index, vid, true, false, true).map_err(kernel)?;
        }
        for vid in conf.trunk_vids()? {
            link::bridge_vlan(&mut nl, host.index, vid, false, false, true).map_err(kernel)?;
        }
        if !conf.preserve_default_vlan {
            link::bridge_vlan(&mut nl, host.index, 1, false, false, false).map_err(kernel)?;
        }
    }

    steps.done("port");

    // Inside the container. The host end names its peer's index (IFLA_LINK)
    // and both ends got the same MTU, so the container end is not looked up;
    // a kernel that reported no peer index gets the lookup.
    let mut cnl = ns.netlink().map_err(kernel)?;
    let cont = match host.link {
        Some(index) => Link {
            index,
            name: ctx.ifname.clone(),
            mac: Some(peer_mac),
            mtu: host.mtu,
            master: None,
            up: false,
            promisc: false,
            kind: Some("veth".into()),
            alias: None,
            link: Some(host.index),
        },
        None => link::get(&mut cnl, &ctx.ifname)
            .map_err(kernel)?
            .ok_or_else(|| Error::internal(format!("{} missing in the container after creation", ctx.ifname)))?,
    };
    if conf.is_default_gateway {
        for gw in &gateways {
            let dst: IpNetwork = if gw.is_ipv4() { "0.0.0.0/0" } else { "::/0" }.parse().expect("valid");
            if !result.routes.iter().any(|r| r.dst == dst) {
                result.routes.push(Route::new(dst, Some(gw.ip())));
            }
        }
    }
    if !conf.disable_container_interface {
        link::set_up(&mut cnl, cont.index, true).map_err(kernel)?;
        for ip in &result.ips {
            addr::add(&mut cnl, cont.index, ip.address, !conf.enable_dad).map_err(kernel)?;
        }
        let gw4 = gateways.iter().find(|g| g.is_ipv4()).map(|g| g.ip());
        let gw6 = gateways.iter().find(|g| g.is_ipv6()).map(|g| g.ip());
        for r in &result.routes {
            let gw = r.gw.or(if r.dst.is_ipv4() { gw4 } else { gw6 });
            let mut kr = route::Route::new(r.dst, gw, Some(cont.index));
            kr.mtu = r.mtu;
            kr.advmss = r.advmss;
            kr.priority = r.priority;
            kr.table = r.table;
            kr.scope = r.scope;
            match route::add(&mut cnl, &kr) {
                Ok(()) => {}
                Err(e) if e.is_exists() => {}
                Err(e) => return Err(kernel(e)),
            }
        }
    }

    steps.done("container");
    if conf.ip_masq {
        for ip in &result.ips {
            let subnet = IpNetwork::new(ip.address.network(), ip.address.prefix()).expect("prefix is valid");
            ensure_masquerade(&ctx.conf.name, subnet)?;
        }
    }
    if conf.mac_spoof_check {
        let mac = cont.mac.ok_or_else(|| Error::internal("container interface has no MAC"))?;
        nft::ensure_macspoofchk(
            &names::nft_table(&ctx.conf.name),
            &names::mac_chain(&ctx.container_id, &ctx.ifname),
            &ctx.conf.name,
            &ctx.container_id,
            &ctx.ifname,
            host_veth,
            mac,
        )
        .map_err(nft_err)?;
    }

    steps.done("nft");
    let mtu = conf.mtu.or(Some(cont.mtu));
    result.interfaces = vec![
        Interface { name: br.name.clone(), mac: br.mac_string(), mtu: Some(br.mtu), ..Default::default() },
        Interface { name: host.name.clone(), mac: host.mac_string(), mtu, ..Default::default() },
        Interface {
            name: cont.name.clone(),
            mac: cont.mac_string(),
            mtu,
            sandbox: ctx.netns.as_ref().map(|p| p.display().to_string()).unwrap_or_default(),
            ..Default::default()
        },
    ];
    for ip in &mut result.ips {
        ip.interface = Some(2);
    }
    Ok(())
}

/// Where ADD remembers the kernel handle of each masquerade rule it proved
/// in place: one file per (network table, subnet chain), holding the handle
/// in decimal. On tmpfs, so it never outlives the ruleset (a reboot clears
/// both).
pub const MASQ_MARKER_DIR: &str = "/run/cni-bridge/masq";

fn masq_marker(table: &str, subnet: IpNetwork) -> std::path::PathBuf {
    std::path::Path::new(MASQ_MARKER_DIR).join(format!("{table}.{}", nft::masq_chain_name(subnet)))
}

/// The network's masquerade rule for `subnet`, installed once per network.
///
/// Every ADD after the first passes the remembered handle, so the kernel is
/// asked two single-object gets (the rule by handle, its chain) instead of
/// a dump: nothing is written while the rule is in place. The marker is
/// never trusted alone: a table deleted or flushed, a rule replaced or
/// added, a changed chain policy all fail those gets, and this ADD falls
/// back to the full check and re-installs the rule (then records the new
/// handle). A marker that cannot be read or written only costs the full check.
fn ensure_masquerade(net: &str, subnet: IpNetwork) -> Result<()> {
    let table = names::nft_table(net);
    let marker = masq_marker(&table, subnet);
    let known = std::fs::read_to_string(&marker).ok().and_then(|s| s.trim().parse::<u64>().ok());
    let handle = nft::ensure_masquerade_known(&table, net, subnet, known).map_err(nft_err)?;
    if handle != known {
        let written = match handle {
            Some(h) => write_marker(&marker, h),
            None => std::fs::remove_file(&marker).or_else(|e| match e.kind() {
                std::io::ErrorKind::NotFound => Ok(()),
                _ => Err(e),
            }),
        };
        if let Err(e) = written {
            tracing::debug!(marker = %marker.display(), error = %e, "masquerade marker not updated");
        }
    }
    Ok(())
}

/// Replaces the marker atomically (temp file + rename), so a concurrent ADD
/// reads the old handle or the new one, never half of one.
fn write_marker(marker: &std::path::Path, handle: u64) -> std::io::Result<()> {
    if let Some(dir) = marker.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let tmp = marker.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, handle.to_string())?;
    std::fs::rename(&tmp, marker).inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// Removes the network's masquerade markers (GC, once its table is gone).
fn forget_masquerade(table: &str) {
    let prefix = format!("{table}.");
    if let Ok(dir) = std::fs::read_dir(MASQ_MARKER_DIR) {
        for e in dir.flatten() {
            if e.file_name().to_str().is_some_and(|n| n.starts_with(&prefix)) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

fn first_host(net: IpNetwork) -> IpAddr {
    match net {
        IpNetwork::V4(n) => IpAddr::V4((u32::from(n.network()) + 1).into()),
        IpNetwork::V6(n) => IpAddr::V6((u128::from(n.network()) + 1).into()),
    }
}

fn vlan_link_name(bridge: &str, vid: u16) -> String {
    let suffix = format!(".{vid}");
    let keep = 15 - suffix.len();
    format!("{}{suffix}", &bridge[..bridge.len().min(keep)])
}

/// Puts `gw` on the gateway link. Another address of the same family (v4) or
/// an overlapping subnet (v6) is an error unless `forceAddress` replaces it.
///
/// The steady state (every ADD after a network's first) costs one request:
/// adding the exact address fails with EEXIST when it is already there. Only
/// when the add succeeds are the link's other addresses examined, and the new
/// one taken back again if it clashes and `forceAddress` is off.
fn ensure_gateway_addr(nl: &mut Netlink, l: &Link, gw: IpNetwork, force: bool) -> Result<()> {
    match addr::add(nl, l.index, gw, true) {
        Ok(()) => {}
        Err(e) if e.is_exists() => return Ok(()),
        Err(e) => return Err(kernel(e)),
    }
    let existing = addr::list(nl, Some(l.index)).map_err(kernel)?;
    for (_, a) in existing.iter().filter(|(_, a)| a.is_ipv4() == gw.is_ipv4() && a.ip() != gw.ip()) {
        if a.is_ipv6() && a.ip().is_unicast_link_local_v6() {
            continue;
        }
        let clash = gw.is_ipv4() || a.contains(gw.ip()) || gw.contains(a.ip());
        if !clash {
            continue;
        }
        if !force {
            let _ = addr::del(nl, l.index, gw);
            return Err(Error::internal(format!("{} already has an IP address different from {gw}", l.name))
                .with_details(format!("found {a}; set forceAddress to replace it")));
        }
        addr::del(nl, l.index, *a).map_err(kernel)?;
    }
    Ok(())
}

trait LinkLocal {
    fn is_unicast_link_local_v6(&self) -> bool;
}

impl LinkLocal for IpAddr {
    fn is_unicast_link_local_v6(&self) -> bool {
        matches!(self, IpAddr::V6(a) if (a.segments()[0] & 0xffc0) == 0xfe80)
    }
}

fn drift(msg: impl Into<String>) -> Error {
    Error::new(Code::Other(CODE_CHECK_DRIFT), msg)
}

fn check_host_side(ctx: &Context, conf: &BridgeConf) -> Result<()> {
    let mut nl = Netlink::open().map_err(kernel)?;
    let br = link::get(&mut nl, &conf.bridge)
        .map_err(kernel)?
        .ok_or_else(|| drift(format!("bridge {} does not exist", conf.bridge)))?;
    let host_veth = names::host_veth(&ctx.conf.name, &ctx.container_id, &ctx.ifname);
    let host = link::get(&mut nl, &host_veth)
        .map_err(kernel)?
        .ok_or_else(|| drift(format!("host veth {host_veth} does not exist")))?;
    if host.master != Some(br.index) {
        return Err(drift(format!("host veth {host_veth} is not attached to {}", conf.bridge)));
    }
    Ok(())
}

fn check_container(ctx: &Context, prev: &CniResult) -> Result<()> {
    let netns = ctx.netns.as_deref().map(|p| p.display().to_string()).unwrap_or_default();
    let idx = prev
        .interfaces
        .iter()
        .position(|i| i.name == ctx.ifname && !i.sandbox.is_empty())
        .ok_or_else(|| Error::config(format!("prevResult has no container interface {}", ctx.ifname)))?;
    let want = &prev.interfaces[idx];
    if want.sandbox != netns {
        return Err(drift(format!("prevResult sandbox {} is not CNI_NETNS {netns}", want.sandbox)));
    }
    let ns = NetNs::open(ctx.netns.as_deref().unwrap_or(std::path::Path::new("")))
        .map_err(|e| Error::new(Code::UnknownContainer, "container netns is gone").with_details(e))?;
    let mut cnl = ns.netlink().map_err(kernel)?;
    let cont = link::get(&mut cnl, &ctx.ifname)
        .map_err(kernel)?
        .ok_or_else(|| Error::new(Code::UnknownContainer, format!("{} does not exist in {netns}", ctx.ifname)))?;
    if !want.mac.is_empty() && !want.mac.eq_ignore_ascii_case(&cont.mac_string()) {
        return Err(drift(format!("{} has MAC {} but prevResult says {}", ctx.ifname, cont.mac_string(), want.mac)));
    }
    let have = addr::list(&mut cnl, Some(cont.index)).map_err(kernel)?;
    for ip in prev.ips.iter().filter(|ip| ip.interface.is_none_or(|i| i == idx)) {
        if !have.iter().any(|(_, a)| a.ip() == ip.address.ip() && a.prefix() == ip.address.prefix()) {
            return Err(drift(format!("{} is missing address {}", ctx.ifname, ip.address)));
        }
    }
    for fam_v6 in [false, true] {
        let wanted: Vec<&Route> = prev.routes.iter().filter(|r| r.dst.is_ipv6() == fam_v6).collect();
        if wanted.is_empty() {
            continue;
        }
        let routes = route::list(&mut cnl, fam_v6).map_err(kernel)?;
        for r in wanted {
            let dst = IpNetwork::new(r.dst.network(), r.dst.prefix()).expect("prefix is valid");
            let found = routes.iter().any(|k| k.dst == dst && (r.gw.is_none() || k.gw == r.gw));
            if !found {
                return Err(drift(format!("route to {} via {:?} is missing in the container", r.dst, r.gw)));
            }
        }
    }
    Ok(())
}

/// GC of what the kernel holds for stale attachments of this network:
/// per-container macspoofchk chains, host veths on our bridge, and the
/// network's masquerade table once no attachment remains.
fn gc_kernel(ctx: &Context, conf: &BridgeConf, valid: &HashSet<(String, String)>) -> Result<()> {
    let net = &ctx.conf.name;
    let table = names::nft_table(net);
    let mut errors = Vec::new();
    if conf.mac_spoof_check {
        let keep: HashSet<String> = valid.iter().map(|(c, i)| names::mac_chain(c, i)).collect();
        match nft::list_chains(nft::Family::Bridge, &table) {
            Ok(chains) => {
                for (chain, _) in chains.into_iter().filter(|(c, _)| c.starts_with("mac_") && !keep.contains(c)) {
                    if let Err(e) = nft::delete_chain(nft::Family::Bridge, &table, &chain) {
                        errors.push(format!("delete chain {chain}: {e}"));
                    }
                }
            }
            Err(e) => errors.push(format!("list chains of {table}: {e}")),
        }
    }
    if valid.is_empty() && conf.ip_masq {
        match nft::delete_table(nft::Family::Inet, &table) {
            Ok(()) => forget_masquerade(&table),
            Err(e) => errors.push(format!("delete table {table}: {e}")),
        }
    }
    let keep: HashSet<String> = valid.iter().map(|(c, i)| names::host_veth(net, c, i)).collect();
    let mut nl = Netlink::open().map_err(kernel)?;
    if let Some(br) = link::get(&mut nl, &conf.bridge).map_err(kernel)? {
        let links = link::list(&mut nl).map_err(kernel)?;
        for l in links.iter().filter(|l| l.master == Some(br.index) && names::is_our_veth(&l.name)) {
            // Only ports of *this* network are ours to judge: networks may share a bridge.
            if keep.contains(&l.name) || !is_this_networks(net, l) {
                continue;
            }
            if let Err(e) = link::delete(&mut nl, &l.name) {
                errors.push(format!("delete {}: {e}", l.name));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(Error::internal("GC").with_details(errors.join("; ")))
    }
}
