//! A multi-host lab on one machine, for the overlay's tests, benchmarks and
//! demo: "hosts" are network namespaces wired to L2 underlay segments, an
//! optional router between segments, a management network with a real etcd,
//! and helpers to run processes, CNI plugins, pings and captures in them.
//!
//! ```text
//!  root netns:  mgmt bridge cft<pid36>-0<lab>m (10.224.x.1/24) ── etcd
//!                 │ veth cft<pid36>-0<lab>h<i>  (one per host/router)
//!  <prefix>-h<i>: mgmt 10.224.x.(2+i)/24, eth0 <segment addr>, lo
//!                 │ veth h<i>e<j>
//!  <prefix>-sw:   one bridge s<k> per segment (no address, no netfilter)
//! ```
//!
//! The segment bridges live in a private "switch" netns, so the root netns
//! never routes between segments and its firewall (br_netfilter) never sees
//! underlay traffic. Names follow the crate's scheme (`cft-<pid>-…` netns,
//! `cft<pid36>-<b36>` links, `/tmp/cft-<pid>-…` dirs), so `conformance
//! cleanup` and [`sweep_dead_labs`] reclaim what a killed run left behind.
//! Everything is removed when the [`Lab`] is dropped (also while unwinding).
//! See docs/lab.md.

use std::collections::BTreeSet;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex, MutexGuard, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde_json::Value;

use crate::net::{sweep_dead_runs, SubnetClaim};
use crate::plugin::{run_with_stdin, Outcome, PLUGIN_TIMEOUT};
use crate::util::{b36, clip, have_tool, pid, pid_alive, Context, PREFIX, R, SYS_PATH};
use crate::{bail, ensure};

/// Environment variable marking every process a lab starts (value: the lab's
/// prefix); [`sweep_dead_labs`] kills marked processes whose lab owner died.
pub const LAB_ENV: &str = "CFT_LAB";

/// How long etcd may take to become healthy.
const ETCD_READY: Duration = Duration::from_secs(15);

/// How long tcpdump may take to open its capture.
const CAPTURE_READY: Duration = Duration::from_secs(5);

static LABS: AtomicU32 = AtomicU32::new(0);

// Labs are shared by reference across a benchmark's threads.
const _: fn() = || {
    fn send_sync<T: Send + Sync>() {}
    send_sync::<Lab>();
};

/// A host (or router) of a [`Lab`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct HostId(pub usize);

/// An L2 underlay segment of a [`Lab`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SegmentId(pub usize);

/// A container netns "on" a host of a [`Lab`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ContainerId(pub usize);

/// Where a command runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Node {
    Host(HostId),
    Container(ContainerId),
    /// The netns holding the segment bridges (`s<k>`, ports `h<i>e<j>`).
    Switch,
    /// The root netns (where etcd and the mgmt bridge are).
    Root,
}

impl From<HostId> for Node {
    fn from(h: HostId) -> Node {
        Node::Host(h)
    }
}

impl From<ContainerId> for Node {
    fn from(c: ContainerId) -> Node {
        Node::Container(c)
    }
}

#[derive(Debug)]
struct Segment {
    net: Ipv4Network,
    /// The segment's IPv6 prefix, for dual-stack segments.
    net6: Option<Ipv6Network>,
    /// The bridge in the switch netns.
    bridge: String,
    /// Offsets into `net` already handed out.
    used: BTreeSet<u32>,
}

#[derive(Debug)]
struct Leg {
    seg: SegmentId,
    ifname: String,
    ip: Ipv4Addr,
    /// Same host offset as `ip`, in the segment's IPv6 prefix.
    ip6: Option<Ipv6Addr>,
}

#[derive(Debug)]
struct HostRec {
    ns: String,
    router: bool,
    legs: Vec<Leg>,
    mgmt_ip: Ipv4Addr,
    /// Segments this host already has a route to (via a router).
    routed: BTreeSet<SegmentId>,
}

#[derive(Debug)]
struct CtrRec {
    ns: String,
    host: HostId,
    deleted: bool,
}

#[derive(Debug)]
struct Etcd {
    client_port: u16,
    peer_port: u16,
    data_dir: PathBuf,
    proc: Option<ProcessGuard>,
}

/// A set of hosts, segments, routers and containers; removed on drop.
#[derive(Debug)]
pub struct Lab {
    prefix: String,
    lab_no: u32,
    dir: PathBuf,
    switch_ns: String,
    mgmt_bridge: String,
    mgmt: SubnetClaim,
    segments: Vec<Segment>,
    hosts: Vec<HostRec>,
    containers: Vec<CtrRec>,
    etcd: Option<Etcd>,
    procs: Mutex<Vec<Arc<Proc>>>,
    /// Everything created, in order, for teardown and leak checks.
    netns_made: Vec<String>,
    links_made: Vec<String>,
    seq: AtomicU32,
}

impl Lab {
    /// Creates the switch netns and the management bridge. `name_hint`
    /// (letters and digits, first 8 kept) only makes names easier to read.
    /// Also reclaims what dead runs left behind ([`sweep_dead_labs`]).
    pub fn new(name_hint: &str) -> R<Lab> {
        ensure!(nix::unistd::geteuid().is_root(), "the lab needs root (network namespaces, bridges, veths)");
        for tool in ["ip", "ping", "sysctl"] {
            ensure!(have_tool(tool), "{tool} is not installed (needed by the lab)");
        }
        let _ = sweep_dead_labs();
        let lab_no = LABS.fetch_add(1, Ordering::Relaxed);
        let hint: String =
            name_hint.chars().filter(|c| c.is_ascii_alphanumeric()).take(8).collect::<String>().to_ascii_lowercase();
        let mut prefix = format!("{PREFIX}-{}-lab{}", pid(), b36(lab_no));
        if !hint.is_empty() {
            prefix = format!("{prefix}-{hint}");
        }
        let mgmt_bridge = root_link(lab_no, "m")?;
        let mgmt = SubnetClaim::new()?;
        let dir = std::env::temp_dir().join(&prefix);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).ctx(format!("create {}", dir.display()))?;
        let mut lab = Lab {
            switch_ns: format!("{prefix}-sw"),
            mgmt_bridge,
            prefix,
            lab_no,
            dir,
            mgmt,
            segments: Vec::new(),
            hosts: Vec::new(),
            containers: Vec::new(),
            etcd: None,
            procs: Mutex::new(Vec::new()),
            netns_made: Vec::new(),
            links_made: Vec::new(),
            seq: AtomicU32::new(0),
        };
        // From here on, an error drops `lab`, which removes what was made.
        let (sw, br) = (lab.switch_ns.clone(), lab.mgmt_bridge.clone());
        lab.netns_made.push(sw.clone());
        lab.links_made.push(br.clone());
        let gw = lab.mgmt.host(1);
        ip_batch(
            None,
            &[
                format!("netns add {sw}"),
                format!("link add {br} type bridge stp_state 0"),
                format!("link set {br} addrgenmode none"),
                format!("link set {br} alias {}-mgmt", lab.prefix),
                format!("addr add {gw}/24 dev {br}"),
                format!("link set {br} up"),
                // A switch forwards frames and does nothing else.
                format!(
                    "netns exec {sw} sysctl -q -e -w net.ipv4.ip_forward=0 net.ipv6.conf.all.disable_ipv6=1 \
                     net.ipv6.conf.default.disable_ipv6=1 net.bridge.bridge-nf-call-iptables=0 \
                     net.bridge.bridge-nf-call-ip6tables=0 net.bridge.bridge-nf-call-arptables=0"
                ),
            ],
        )
        .ctx("create the lab's switch netns and mgmt bridge")?;
        Ok(lab)
    }

    /// `cft-<pid>-lab<n>[-hint]`: every netns and the temp dir start with it.
    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The lab's temp dir (process logs, etcd data, `cni.log`); removed on drop.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The management subnet (a /24 claimed from the crate's pool).
    pub fn mgmt_net(&self) -> Ipv4Network {
        self.mgmt.net
    }

    /// The mgmt bridge's address in the root netns (etcd listens there).
    pub fn mgmt_gateway(&self) -> Ipv4Addr {
        self.mgmt.host(1)
    }

    /// The name of the netns holding the segment bridges.
    pub fn switch_ns(&self) -> &str {
        &self.switch_ns
    }

    /// Adds an L2 segment: a bridge `s<k>` in the switch netns, no address.
    /// Hosts get `.1`, `.2`, … of `cidr`, routers the top addresses (`.254`
    /// of a /24, then `.253`, …). Must not overlap the mgmt net or another segment.
    pub fn segment(&mut self, cidr: &str) -> R<SegmentId> {
        self.add_segment(cidr, None)
    }

    /// A dual-stack segment: like [`Lab::segment`], and every leg on it also
    /// gets the address with the same host offset in `cidr6` (`nodad`, so it
    /// is usable at once): `192.168.70.1` and `fd00:70::1` with
    /// `("192.168.70.0/24", "fd00:70::/64")`, a router `.254` and `::fe`.
    /// Routers forward IPv6 too, and hosts get IPv6 routes through them to
    /// other dual-stack segments.
    pub fn segment_with_ipv6(&mut self, cidr: &str, cidr6: &str) -> R<SegmentId> {
        let net6: Ipv6Network = cidr6.parse().ctx(format!("segment IPv6 cidr {cidr6:?}"))?;
        let net6 = Ipv6Network::new(net6.network(), net6.prefix()).ctx("segment IPv6 cidr")?;
        ensure!(net6.prefix() <= 120, "IPv6 segment {net6} is too small (need /120 or larger)");
        if let Some(s) = self
            .segments
            .iter()
            .filter_map(|s| s.net6)
            .find(|n| n.contains(net6.network()) || net6.contains(n.network()))
        {
            bail!("IPv6 segment {net6} overlaps segment {s}");
        }
        self.add_segment(cidr, Some(net6))
    }

    fn add_segment(&mut self, cidr: &str, net6: Option<Ipv6Network>) -> R<SegmentId> {
        let net: Ipv4Network = cidr.parse().ctx(format!("segment cidr {cidr:?}"))?;
        let net = Ipv4Network::new(net.network(), net.prefix()).ctx("segment cidr")?;
        ensure!(net.prefix() <= 30, "segment {net} is too small (need /30 or larger)");
        ensure!(!overlaps(&net, &self.mgmt.net), "segment {net} overlaps the lab's mgmt net {}", self.mgmt.net);
        if let Some(s) = self.segments.iter().find(|s| overlaps(&s.net, &net)) {
            bail!("segment {net} overlaps segment {}", s.net);
        }
        let k = self.segments.len();
        let bridge = format!("s{k}");
        ip_batch(
            Some(&self.switch_ns),
            &[
                format!("link add {bridge} type bridge stp_state 0 mcast_snooping 0"),
                format!("link set {bridge} addrgenmode none"),
                format!("link set {bridge} alias {net}"),
                format!("link set {bridge} up"),
            ],
        )
        .ctx(format!("create segment {net}"))?;
        self.segments.push(Segment { net, net6, bridge, used: BTreeSet::new() });
        Ok(SegmentId(k))
    }

    /// The segment's subnet.
    pub fn segment_net(&self, s: SegmentId) -> Ipv4Network {
        self.segments[s.0].net
    }

    /// The segment's IPv6 prefix (dual-stack segments only).
    pub fn segment_net6(&self, s: SegmentId) -> Option<Ipv6Network> {
        self.segments[s.0].net6
    }

    /// A host on `seg` with MTU 1500 (see [`Lab::host_with_mtu`]).
    pub fn host(&mut self, seg: SegmentId) -> R<HostId> {
        self.host_with_mtu(seg, 1500)
    }

    /// A host: netns `<prefix>-h<i>` with `lo` up, `eth0` on `seg` (MTU `mtu`
    /// on both veth ends) and a `mgmt` leg; routes to the segments reachable
    /// through the lab's routers are added.
    pub fn host_with_mtu(&mut self, seg: SegmentId, mtu: u32) -> R<HostId> {
        self.add_node(false, &[(seg, mtu)])
    }

    /// A router: netns `<prefix>-r<i>` with `eth<j>` on each segment (the top
    /// address of each, `.254` for a /24), `ip_forward=1`, and a `mgmt` leg.
    /// Hosts on those segments (existing and future) get routes through it.
    pub fn router(&mut self, segs: &[SegmentId]) -> R<HostId> {
        ensure!(segs.len() >= 2, "a router needs at least two segments");
        let legs: Vec<(SegmentId, u32)> = segs.iter().map(|s| (*s, 1500)).collect();
        self.add_node(true, &legs)
    }

    /// Adds one more leg (`eth1`, `eth2`, …) on `seg` to an existing host;
    /// returns the interface name.
    pub fn attach(&mut self, h: HostId, seg: SegmentId, mtu: u32) -> R<String> {
        ensure!(h.0 < self.hosts.len(), "no host {h:?}");
        ensure!(!self.hosts[h.0].legs.iter().any(|l| l.seg == seg), "{h:?} is already on {seg:?}");
        let j = self.hosts[h.0].legs.len();
        let router = self.hosts[h.0].router;
        let (ip, ip6) = self.alloc_ip(seg, router)?;
        let leg = Leg { seg, ifname: format!("eth{j}"), ip, ip6 };
        self.wire_leg(h, j, &leg, mtu)?;
        let ifname = leg.ifname.clone();
        self.hosts[h.0].legs.push(leg);
        self.route_via_router()?;
        Ok(ifname)
    }

    fn add_node(&mut self, router: bool, legs: &[(SegmentId, u32)]) -> R<HostId> {
        let i = self.hosts.len();
        ensure!(i < 250, "too many hosts in one lab (the mgmt /24 is full)");
        for (k, (s, mtu)) in legs.iter().enumerate() {
            ensure!(s.0 < self.segments.len(), "no segment {s:?}");
            ensure!(!legs[..k].iter().any(|(t, _)| t == s), "{s:?} given twice");
            ensure!((68..=65535).contains(mtu), "MTU {mtu} out of range");
        }
        let ns = format!("{}-{}{i}", self.prefix, if router { "r" } else { "h" });
        let mgmt_link = root_link(self.lab_no, &format!("h{}", b36(i as u32)))?;
        let mgmt_ip = self.mgmt.host(2 + i as u8);
        let mut ips = Vec::new();
        for (s, _) in legs {
            ips.push(self.alloc_ip(*s, router)?);
        }
        // Recorded before creation, so a failure below still cleans up.
        self.netns_made.push(ns.clone());
        self.links_made.push(mgmt_link.clone());
        self.hosts.push(HostRec { ns: ns.clone(), router, legs: Vec::new(), mgmt_ip, routed: BTreeSet::new() });
        let mut root = vec![
            format!("netns add {ns}"),
            format!("link add {mgmt_link} type veth peer name mgmt netns {ns}"),
            format!("link set {mgmt_link} addrgenmode none"),
            format!("link set {mgmt_link} alias {ns}"),
            format!("link set {mgmt_link} master {} up", self.mgmt_bridge),
        ];
        if router {
            root.push(format!("netns exec {ns} sysctl -q -w net.ipv4.ip_forward=1 net.ipv6.conf.all.forwarding=1"));
        }
        ip_batch(None, &root).ctx(format!("create {ns}"))?;
        ip_batch(
            Some(&ns),
            &[
                "link set lo up".into(),
                "link set mgmt addrgenmode none".into(),
                format!("addr add {mgmt_ip}/24 dev mgmt"),
                "link set mgmt up".into(),
            ],
        )
        .ctx(format!("configure {ns}"))?;
        for (j, ((seg, mtu), (ip, ip6))) in legs.iter().zip(ips).enumerate() {
            let leg = Leg { seg: *seg, ifname: format!("eth{j}"), ip, ip6 };
            self.wire_leg(HostId(i), j, &leg, *mtu)?;
            self.hosts[i].legs.push(leg);
        }
        self.route_via_router()?;
        Ok(HostId(i))
    }

    /// Creates the veth `eth<j>` (host) <-> `h<i>e<j>` (switch port) and configures both ends.
    fn wire_leg(&self, h: HostId, j: usize, leg: &Leg, mtu: u32) -> R<()> {
        let rec = &self.hosts[h.0];
        let seg = &self.segments[leg.seg.0];
        let port = format!("{}{}e{j}", if rec.router { "r" } else { "h" }, h.0); // see switch_port
        let (ns, sw, ifn) = (&rec.ns, &self.switch_ns, &leg.ifname);
        ip_batch(
            None,
            &[format!("link add {port} mtu {mtu} netns {sw} type veth peer name {ifn} mtu {mtu} netns {ns}")],
        )
        .ctx(format!("create {ns} {ifn}"))?;
        ip_batch(
            Some(sw),
            &[
                format!("link set {port} addrgenmode none"),
                format!("link set {port} alias {ns}:{ifn}"),
                format!("link set {port} master {} up", seg.bridge),
            ],
        )
        .ctx(format!("plug {port} into {}", seg.bridge))?;
        let mut cmds = vec![
            format!("link set {ifn} addrgenmode none"),
            format!("addr add {}/{} dev {ifn}", leg.ip, seg.net.prefix()),
        ];
        if let (Some(ip6), Some(net6)) = (leg.ip6, seg.net6) {
            // A static link-local address too: the kernel sends a neighbour
            // solicitation for a forwarded packet only from a link-local
            // address, so a router without one cannot reach hosts it has not
            // talked to itself. No router solicitations (accept_ra 0).
            let offset = u128::from(ip6) - u128::from(net6.network());
            let ll = Ipv6Addr::from(0xfe80_u128 << 112 | offset);
            ip_batch(None, &[format!("netns exec {ns} sysctl -q -w net.ipv6.conf.{ifn}.accept_ra=0")])
                .ctx(format!("configure {ns} {ifn}"))?;
            cmds.push(format!("addr add {ip6}/{} dev {ifn} nodad", net6.prefix()));
            cmds.push(format!("addr add {ll}/64 dev {ifn} nodad"));
        }
        cmds.push(format!("link set {ifn} up"));
        ip_batch(Some(ns), &cmds).ctx(format!("configure {ns} {ifn}"))
    }

    /// Hosts get `.1` upwards, routers the top addresses downwards; the
    /// IPv6 address (dual-stack segments) has the same offset.
    fn alloc_ip(&mut self, s: SegmentId, router: bool) -> R<(Ipv4Addr, Option<Ipv6Addr>)> {
        let seg = self.segments.get_mut(s.0).ok_or_else(|| format!("no segment {s:?}"))?;
        let last = seg.net.size() - 2; // the highest usable offset
        let pick = if router {
            (1..=last).rev().find(|o| !seg.used.contains(o))
        } else {
            (1..=last).find(|o| !seg.used.contains(o))
        };
        let Some(o) = pick else {
            bail!("segment {} is full", seg.net);
        };
        seg.used.insert(o);
        let ip6 = seg.net6.map(|n| Ipv6Addr::from(u128::from(n.network()) + u128::from(o)));
        Ok((Ipv4Addr::from(u32::from(seg.net.network()) + o), ip6))
    }

    /// Gives every (non-router) host a route to each segment that a router
    /// on one of its segments reaches (one hop; first router wins).
    /// Idempotent; [`Lab::host`], [`Lab::router`] and [`Lab::attach`] call it.
    pub fn route_via_router(&mut self) -> R<()> {
        let mut plan: Vec<(usize, SegmentId, Ipv4Addr, Option<Ipv6Addr>)> = Vec::new();
        for (hi, h) in self.hosts.iter().enumerate().filter(|(_, h)| !h.router) {
            let on: BTreeSet<SegmentId> = h.legs.iter().map(|l| l.seg).collect();
            let mut planned = BTreeSet::new();
            for r in self.hosts.iter().filter(|r| r.router) {
                let Some(via) = r.legs.iter().find(|l| on.contains(&l.seg)) else {
                    continue;
                };
                for t in r.legs.iter().map(|l| l.seg) {
                    if !on.contains(&t) && !h.routed.contains(&t) && planned.insert(t) {
                        plan.push((hi, t, via.ip, via.ip6));
                    }
                }
            }
        }
        for (hi, t, via, via6) in plan {
            let net = self.segments[t.0].net;
            let mut cmds = vec![format!("route add {net} via {via}")];
            if let (Some(net6), Some(via6)) = (self.segments[t.0].net6, via6) {
                cmds.push(format!("route add {net6} via {via6}"));
            }
            ip_batch(Some(&self.hosts[hi].ns), &cmds).ctx(format!("route {net} via {via} in {}", self.hosts[hi].ns))?;
            self.hosts[hi].routed.insert(t);
        }
        Ok(())
    }

    /// The host's underlay address (on `eth0`).
    pub fn host_ip(&self, h: HostId) -> Ipv4Addr {
        self.hosts[h.0].legs[0].ip
    }

    /// The host's IPv6 underlay address (on `eth0`), if its segment is dual-stack.
    pub fn host_ip6(&self, h: HostId) -> Option<Ipv6Addr> {
        self.hosts[h.0].legs[0].ip6
    }

    /// The host's address on `seg`, if it has a leg there.
    pub fn host_ip_on(&self, h: HostId, seg: SegmentId) -> Option<Ipv4Addr> {
        self.hosts[h.0].legs.iter().find(|l| l.seg == seg).map(|l| l.ip)
    }

    /// The host's interface on `seg` (`eth0`, `eth1`, …).
    pub fn host_iface(&self, h: HostId, seg: SegmentId) -> Option<&str> {
        self.hosts[h.0].legs.iter().find(|l| l.seg == seg).map(|l| l.ifname.as_str())
    }

    /// The switch-netns end of the host's leg on `seg` (`h<i>e<j>`, `r<i>e<j>`
    /// for routers): capture there with `Node::Switch` to see the wire.
    pub fn switch_port(&self, h: HostId, seg: SegmentId) -> Option<String> {
        let rec = &self.hosts[h.0];
        let j = rec.legs.iter().position(|l| l.seg == seg)?;
        Some(format!("{}{}e{j}", if rec.router { "r" } else { "h" }, h.0))
    }

    /// The host's address on the management network (on `mgmt`).
    pub fn mgmt_ip(&self, h: HostId) -> Ipv4Addr {
        self.hosts[h.0].mgmt_ip
    }

    /// The host's netns name.
    pub fn host_ns(&self, h: HostId) -> &str {
        &self.hosts[h.0].ns
    }

    /// Hosts (routers excluded), in creation order.
    pub fn hosts(&self) -> Vec<HostId> {
        (0..self.hosts.len()).filter(|i| !self.hosts[*i].router).map(HostId).collect()
    }

    /// The netns a node's commands run in (None for the root netns).
    pub fn netns(&self, node: impl Into<Node>) -> Option<&str> {
        match node.into() {
            Node::Host(h) => Some(&self.hosts[h.0].ns),
            Node::Container(c) => Some(&self.containers[c.0].ns),
            Node::Switch => Some(&self.switch_ns),
            Node::Root => None,
        }
    }

    /// A container netns `<prefix>-c<i>` (lo up, nothing else) "on" host `h`.
    pub fn container(&mut self, h: HostId) -> R<ContainerId> {
        ensure!(h.0 < self.hosts.len(), "no host {h:?}");
        let i = self.containers.len();
        let ns = format!("{}-c{i}", self.prefix);
        self.netns_made.push(ns.clone());
        self.containers.push(CtrRec { ns: ns.clone(), host: h, deleted: false });
        ip_batch(None, &[format!("netns add {ns}"), format!("netns exec {ns} ip link set lo up")])
            .ctx(format!("create container netns {ns}"))?;
        Ok(ContainerId(i))
    }

    /// The container's netns name, also used as its `CNI_CONTAINERID`.
    pub fn container_id(&self, c: ContainerId) -> &str {
        &self.containers[c.0].ns
    }

    /// The container's `CNI_NETNS`.
    pub fn container_path(&self, c: ContainerId) -> String {
        format!("/var/run/netns/{}", self.containers[c.0].ns)
    }

    /// The host the container was created on.
    pub fn container_host(&self, c: ContainerId) -> HostId {
        self.containers[c.0].host
    }

    /// Deletes the container's netns now (e.g. to test DEL without a netns).
    pub fn remove_container(&mut self, c: ContainerId) -> R<()> {
        let rec = self.containers.get_mut(c.0).ok_or_else(|| format!("no container {c:?}"))?;
        if !rec.deleted {
            ip_batch(None, &[format!("netns del {}", rec.ns)])?;
            rec.deleted = true;
        }
        Ok(())
    }

    /// Runs a command in a node (`ip netns exec <ns> ARGS…`), PATH set to the
    /// system's, stdin empty. Fails only if it cannot be spawned.
    pub fn exec(&self, node: impl Into<Node>, args: &[&str]) -> R<Output> {
        ensure!(!args.is_empty(), "exec: empty command");
        let mut cmd = self.command(node.into(), args[0], &args[1..]);
        cmd.stdin(Stdio::null());
        cmd.output().ctx(format!("spawn {}", args.join(" ")))
    }

    /// Like [`Lab::exec`], but a non-zero exit is an error (carrying stderr); returns stdout.
    pub fn exec_ok(&self, node: impl Into<Node>, args: &[&str]) -> R<String> {
        let node = node.into();
        let o = self.exec(node, args)?;
        ensure!(
            o.status.success(),
            "`{}` in {} failed ({}): {}{}",
            args.join(" "),
            self.netns(node).unwrap_or("root netns"),
            o.status,
            String::from_utf8_lossy(&o.stderr).trim(),
            String::from_utf8_lossy(&o.stdout).trim()
        );
        Ok(String::from_utf8_lossy(&o.stdout).into_owned())
    }

    /// `ip netns exec <ns> CMD ARGS` (or CMD ARGS in the root netns), PATH = system's.
    fn command(&self, node: Node, cmd: &str, args: &[&str]) -> Command {
        let mut c = match self.netns(node) {
            Some(ns) => {
                let mut c = Command::new("ip");
                c.args(["netns", "exec", ns, cmd]);
                c
            }
            None => Command::new(cmd),
        };
        c.args(args).env("PATH", SYS_PATH);
        c
    }

    /// Starts a long-running process in a node. stdout and stderr go to a
    /// log file in the lab's dir ([`ProcessGuard::log`]); the environment is
    /// ours plus `env` (PATH defaults to the system's). The process (and its
    /// process group) is killed when the guard or the lab is dropped, and
    /// with SIGKILL if this test process dies.
    pub fn spawn(&self, node: impl Into<Node>, cmd: &str, args: &[&str], env: &[(&str, &str)]) -> R<ProcessGuard> {
        let node = node.into();
        let label = match node {
            Node::Host(h) => format!("{}{}", if self.hosts[h.0].router { "r" } else { "h" }, h.0),
            Node::Container(c) => format!("c{}", c.0),
            Node::Switch => "sw".into(),
            Node::Root => "root".into(),
        };
        let base = Path::new(cmd).file_name().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default();
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let log = self.dir.join(format!("{label}-{base}-{n}.log"));
        let out = File::create(&log).ctx(format!("create {}", log.display()))?;
        let err = out.try_clone().ctx("dup log fd")?;
        let mut c = self.command(node, cmd, args);
        c.env(LAB_ENV, &self.prefix).stdin(Stdio::null()).stdout(out).stderr(err);
        for (k, v) in env {
            c.env(k, v);
        }
        let p = self.start(c, format!("{label}: {cmd} {}", args.join(" ")), log)?;
        Ok(ProcessGuard { p })
    }

    /// Spawns (in its own process group, parent-death SIGKILL) and registers for teardown.
    fn start(&self, mut cmd: Command, label: String, log: PathBuf) -> R<Arc<Proc>> {
        cmd.process_group(0);
        let parent = std::process::id() as libc::pid_t;
        // SAFETY: the closure runs between fork and exec and only makes
        // async-signal-safe calls (prctl, getppid, _exit).
        unsafe {
            cmd.pre_exec(move || {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong, 0, 0, 0) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() != parent {
                    libc::_exit(1);
                }
                Ok(())
            });
        }
        let child = spawn_from_lasting_thread(cmd).ctx(format!("spawn {label}"))?;
        let p = Arc::new(Proc { pid: child.id(), label, log, state: Mutex::new(ProcState { child, status: None }) });
        let mut procs = lock(&self.procs);
        procs.retain(|q| q.poll().is_none());
        procs.push(p.clone());
        Ok(p)
    }

    /// Starts etcd (once) in the root netns, listening on the mgmt bridge's
    /// address and 127.0.0.1 on free ports, data in the lab's dir; waits until
    /// it is healthy. Returns the client URL hosts use (`http://<mgmt gw>:<port>`).
    pub fn start_etcd(&mut self) -> R<String> {
        ensure!(have_tool("etcd"), "etcd is not installed (apt-get install etcd-server)");
        if self.etcd.as_ref().is_some_and(|e| e.proc.as_ref().is_some_and(|p| p.is_running())) {
            return self.etcd_url().ok_or_else(|| "etcd url".to_string());
        }
        if self.etcd.is_none() {
            let (client_port, peer_port) = free_ports()?;
            self.etcd = Some(Etcd { client_port, peer_port, data_dir: self.dir.join("etcd"), proc: None });
        }
        let (gw, name) = (self.mgmt_gateway(), self.prefix.clone());
        let Some(e) = self.etcd.as_ref() else {
            bail!("etcd config missing");
        };
        let (cp, pp) = (e.client_port, e.peer_port);
        let peer = format!("http://127.0.0.1:{pp}");
        let data = e.data_dir.display().to_string();
        let args: Vec<String> = vec![
            "--name".into(),
            "lab".into(),
            "--data-dir".into(),
            data,
            "--listen-client-urls".into(),
            format!("http://{gw}:{cp},http://127.0.0.1:{cp}"),
            "--advertise-client-urls".into(),
            format!("http://{gw}:{cp}"),
            "--listen-peer-urls".into(),
            peer.clone(),
            "--initial-advertise-peer-urls".into(),
            peer.clone(),
            "--initial-cluster".into(),
            format!("lab={peer}"),
            "--initial-cluster-token".into(),
            name,
            "--heartbeat-interval".into(),
            "50".into(),
            "--election-timeout".into(),
            "500".into(),
            "--logger".into(),
            "zap".into(),
            "--log-level".into(),
            "warn".into(),
        ];
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let g = self.spawn(Node::Root, "etcd", &args, &[])?;
        let deadline = Instant::now() + ETCD_READY;
        loop {
            if http_get(SocketAddr::from(([127, 0, 0, 1], cp)), "/health")
                .is_ok_and(|b| b.contains("\"health\":\"true\""))
            {
                break;
            }
            if !g.is_running() {
                bail!("etcd exited during startup:\n{}", tail(&g.log(), 20));
            }
            if Instant::now() > deadline {
                bail!("etcd not healthy after {ETCD_READY:?}:\n{}", tail(&g.log(), 20));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if let Some(e) = self.etcd.as_mut() {
            e.proc = Some(g);
        }
        self.etcd_url().ok_or_else(|| "etcd url".to_string())
    }

    /// Stops etcd (SIGTERM, then SIGKILL after 5 s); its data dir and ports are kept.
    pub fn stop_etcd(&mut self) -> R<()> {
        if let Some(p) = self.etcd.as_mut().and_then(|e| e.proc.take()) {
            p.terminate(Duration::from_secs(5));
        }
        Ok(())
    }

    /// Stops and starts etcd again with the same data dir and ports.
    pub fn restart_etcd(&mut self) -> R<String> {
        ensure!(self.etcd.is_some(), "restart_etcd before start_etcd");
        self.stop_etcd()?;
        self.start_etcd()
    }

    /// The client URL reachable from the hosts (over mgmt), once etcd was started.
    pub fn etcd_url(&self) -> Option<String> {
        self.etcd.as_ref().map(|e| format!("http://{}:{}", self.mgmt_gateway(), e.client_port))
    }

    /// The client URL on 127.0.0.1 (root netns only).
    pub fn etcd_local_url(&self) -> Option<String> {
        self.etcd.as_ref().map(|e| format!("http://127.0.0.1:{}", e.client_port))
    }

    /// The etcd process, while it runs.
    pub fn etcd_process(&self) -> Option<&ProcessGuard> {
        self.etcd.as_ref().and_then(|e| e.proc.as_ref())
    }

    /// Runs a CNI plugin binary inside host `h`'s netns (`ip netns exec`)
    /// with `CNI_NETNS` = the container's netns, the config on stdin; returns
    /// (exit 0, stdout as JSON; `Null` if empty, a string if not JSON).
    /// `CNI_CONTAINERID` = [`Lab::container_id`], `CNI_PATH` = the plugin's
    /// directory; `extra_env` is applied last (overrides, e.g. `CNI_ARGS`).
    #[allow(clippy::too_many_arguments)]
    pub fn cni(
        &self,
        h: HostId,
        plugin: &Path,
        command: &str,
        c: ContainerId,
        ifname: &str,
        conf: &Value,
        extra_env: &[(&str, &str)],
    ) -> R<(bool, Value)> {
        let o = self.cni_outcome(h, plugin, command, c, ifname, conf, extra_env)?;
        let out = o.stdout.trim();
        let v = if out.is_empty() {
            Value::Null
        } else {
            serde_json::from_str(out).unwrap_or_else(|_| Value::String(out.to_string()))
        };
        Ok((o.success(), v))
    }

    /// [`Lab::cni`] with the whole [`Outcome`] (exit status, stdout, stderr,
    /// wall time). Every call is also appended to `<lab dir>/cni.log`.
    #[allow(clippy::too_many_arguments)]
    pub fn cni_outcome(
        &self,
        h: HostId,
        plugin: &Path,
        command: &str,
        c: ContainerId,
        ifname: &str,
        conf: &Value,
        extra_env: &[(&str, &str)],
    ) -> R<Outcome> {
        ensure!(h.0 < self.hosts.len(), "no host {h:?}");
        ensure!(c.0 < self.containers.len(), "no container {c:?}");
        ensure!(plugin.is_file(), "plugin {} does not exist", plugin.display());
        let cni_path = plugin.parent().map(|p| p.display().to_string()).unwrap_or_default();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.hosts[h.0].ns])
            .arg(plugin)
            .env_clear()
            .env("PATH", SYS_PATH)
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", self.container_id(c))
            .env("CNI_NETNS", self.container_path(c))
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", cni_path);
        for (k, v) in extra_env {
            cmd.env(k, v);
        }
        let o = run_with_stdin(cmd, conf.to_string().into_bytes(), PLUGIN_TIMEOUT);
        if let Ok(mut f) = OpenOptions::new().create(true).append(true).open(self.dir.join("cni.log")) {
            let _ = writeln!(
                f,
                "== {command} {} {ifname} on {} via {}: {}\n{}",
                self.container_id(c),
                self.hosts[h.0].ns,
                plugin.display(),
                o.describe(),
                o.stderr
            );
        }
        Ok(o)
    }

    /// One echo request, 1 s timeout, from a host or container.
    pub fn ping(&self, from: impl Into<Node>, dst: impl Into<IpAddr>) -> bool {
        let d = dst.into().to_string();
        self.exec(from, &["ping", "-n", "-q", "-c", "1", "-W", "1", &d]).is_ok_and(|o| o.status.success())
    }

    /// Pings until one succeeds or `timeout` passes (for converging overlays).
    pub fn ping_until(&self, from: impl Into<Node>, dst: impl Into<IpAddr>, timeout: Duration) -> bool {
        let (from, dst) = (from.into(), dst.into());
        let deadline = Instant::now() + timeout;
        loop {
            if self.ping(from, dst) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts `tcpdump -nn -l -i IFACE [-c COUNT] FILTER` in a node and
    /// returns once it is capturing, so traffic sent afterwards is seen.
    /// `count` 0 means no limit; the capture ends after `count` packets or
    /// `timeout` (from now), whichever first. A missing tcpdump is an error.
    pub fn capture(
        &self,
        node: impl Into<Node>,
        iface: &str,
        filter: &str,
        count: usize,
        timeout: Duration,
    ) -> R<CaptureGuard> {
        ensure!(have_tool("tcpdump"), "tcpdump is not installed (apt-get install tcpdump): lab captures need it");
        let node = node.into();
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let log = self.dir.join(format!("tcpdump-{n}.log"));
        let mut args: Vec<String> =
            vec!["-nn".into(), "-l".into(), "-Z".into(), "root".into(), "-i".into(), iface.into()];
        if count > 0 {
            args.extend(["-c".into(), count.to_string()]);
        }
        if !filter.trim().is_empty() {
            args.push(filter.into());
        }
        let argv: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut cmd = self.command(node, "tcpdump", &argv);
        cmd.env(LAB_ENV, &self.prefix).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let where_ = format!("{} {iface}", self.netns(node).unwrap_or("root"));
        let p = self.start(cmd, format!("tcpdump {where_} {filter}"), log)?;
        let (stdout, stderr) = {
            let mut st = lock(&p.state);
            (st.child.stdout.take(), st.child.stderr.take())
        };
        let out = std::thread::spawn(move || {
            let mut s = String::new();
            if let Some(mut o) = stdout {
                let _ = o.read_to_string(&mut s);
            }
            s
        });
        let errbuf = Arc::new(Mutex::new(String::new()));
        let (ready_tx, ready_rx) = mpsc::channel::<()>();
        let eb = errbuf.clone();
        let err = std::thread::spawn(move || {
            let Some(e) = stderr else { return };
            for line in BufReader::new(e).lines().map_while(Result::ok) {
                if line.contains("listening on") {
                    let _ = ready_tx.send(());
                }
                let mut b = lock(&eb);
                b.push_str(&line);
                b.push('\n');
            }
        });
        let guard = CaptureGuard {
            p,
            out: Some(out),
            err: Some(err),
            errbuf,
            deadline: Instant::now() + timeout,
            what: where_,
        };
        match ready_rx.recv_timeout(CAPTURE_READY) {
            Ok(()) => Ok(guard),
            Err(_) => {
                guard.p.kill();
                let msg = lock(&guard.errbuf).clone();
                bail!("tcpdump on {} did not start: {}", guard.what, clip(&msg, 400))
            }
        }
    }

    /// Every netns this lab created (for leak checks after drop).
    pub fn netns_names(&self) -> Vec<String> {
        self.netns_made.clone()
    }

    /// Every link this lab created in the root netns (for leak checks after drop).
    pub fn root_links(&self) -> Vec<String> {
        self.links_made.clone()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(e) = self.etcd.as_mut() {
            e.proc.take(); // killed by its guard
        }
        let procs = std::mem::take(&mut *lock(&self.procs));
        for p in &procs {
            p.signal(libc::SIGKILL);
        }
        let panicking = std::thread::panicking();
        for p in &procs {
            p.wait_timeout(Duration::from_secs(5));
            if panicking {
                eprintln!(
                    "--- lab process {} (pid {}), last lines of its log:\n{}",
                    p.label,
                    p.pid,
                    tail(&p.read_log(), 20)
                );
            }
        }
        if panicking {
            if let Ok(s) = std::fs::read_to_string(self.dir.join("cni.log")) {
                eprintln!("--- lab {} cni.log (tail):\n{}", self.prefix, tail(&s, 30));
            }
        }
        // Root-side veths first (deleting one end removes the pair at once,
        // while netns teardown is asynchronous), then bridges, then netns.
        let deleted: BTreeSet<&str> = self.containers.iter().filter(|c| c.deleted).map(|c| c.ns.as_str()).collect();
        let mut lines: Vec<String> = self.links_made.iter().rev().map(|l| format!("link del dev {l}")).collect();
        lines.extend(
            self.netns_made.iter().rev().filter(|n| !deleted.contains(n.as_str())).map(|n| format!("netns del {n}")),
        );
        if let Err(e) = ip_batch_force(&lines) {
            eprintln!("lab {}: teardown: {e}", self.prefix);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A process started by [`Lab::spawn`]; killed (with its process group) on drop.
#[derive(Debug)]
pub struct ProcessGuard {
    p: Arc<Proc>,
}

impl ProcessGuard {
    pub fn pid(&self) -> u32 {
        self.p.pid
    }

    /// Everything it wrote to stdout and stderr so far.
    pub fn log(&self) -> String {
        self.p.read_log()
    }

    pub fn log_path(&self) -> &Path {
        &self.p.log
    }

    pub fn is_running(&self) -> bool {
        self.p.poll().is_none()
    }

    /// Waits up to `timeout` for it to exit.
    pub fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        self.p.wait_timeout(timeout)
    }

    /// Sends a signal to its process group (false if it was already reaped).
    pub fn signal(&self, sig: libc::c_int) -> bool {
        self.p.signal(sig)
    }

    /// SIGKILL (process group) and reap.
    pub fn kill(&self) -> Option<ExitStatus> {
        self.p.kill()
    }

    /// SIGTERM, then SIGKILL if it is still running after `grace`.
    pub fn terminate(&self, grace: Duration) -> Option<ExitStatus> {
        self.p.signal(libc::SIGTERM);
        match self.p.wait_timeout(grace) {
            Some(s) => Some(s),
            None => self.p.kill(),
        }
    }
}

impl Drop for ProcessGuard {
    fn drop(&mut self) {
        self.p.kill();
    }
}

/// A running `tcpdump`, see [`Lab::capture`].
#[derive(Debug)]
pub struct CaptureGuard {
    p: Arc<Proc>,
    out: Option<JoinHandle<String>>,
    err: Option<JoinHandle<()>>,
    errbuf: Arc<Mutex<String>>,
    deadline: Instant,
    what: String,
}

impl CaptureGuard {
    /// Waits for the packet count or the timeout (then stops tcpdump with
    /// SIGINT), and returns the captured lines (`tcpdump -nn` format).
    pub fn wait(mut self) -> String {
        loop {
            if self.p.poll().is_some() {
                break;
            }
            if Instant::now() >= self.deadline {
                self.p.signal(libc::SIGINT);
                if self.p.wait_timeout(Duration::from_secs(2)).is_none() {
                    self.p.kill();
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if let Some(e) = self.err.take() {
            let _ = e.join();
        }
        self.out.take().and_then(|h| h.join().ok()).unwrap_or_default()
    }

    /// What tcpdump printed on stderr so far ("listening on …", statistics, errors).
    pub fn stderr(&self) -> String {
        lock(&self.errbuf).clone()
    }
}

impl Drop for CaptureGuard {
    fn drop(&mut self) {
        self.p.kill();
    }
}

#[derive(Debug)]
struct ProcState {
    child: Child,
    status: Option<ExitStatus>,
}

/// A child process shared by its guard and the lab (whichever goes first kills it).
#[derive(Debug)]
struct Proc {
    pid: u32,
    label: String,
    log: PathBuf,
    state: Mutex<ProcState>,
}

impl Proc {
    /// The exit status, reaping the child if it has exited.
    fn poll(&self) -> Option<ExitStatus> {
        let mut st = lock(&self.state);
        if st.status.is_none() {
            if let Ok(Some(s)) = st.child.try_wait() {
                st.status = Some(s);
            }
        }
        st.status
    }

    /// Signals the process group (then the process). Never after the child
    /// was reaped, so the pid cannot belong to someone else.
    fn signal(&self, sig: libc::c_int) -> bool {
        let st = lock(&self.state);
        if st.status.is_some() {
            return false;
        }
        let pid = self.pid as libc::pid_t;
        // SAFETY: plain kill(2) on our unreaped child (and its process group).
        unsafe { libc::kill(-pid, sig) == 0 || libc::kill(pid, sig) == 0 }
    }

    fn wait_timeout(&self, timeout: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(s) = self.poll() {
                return Some(s);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    fn kill(&self) -> Option<ExitStatus> {
        self.signal(libc::SIGKILL);
        self.wait_timeout(Duration::from_secs(5))
    }

    fn read_log(&self) -> String {
        std::fs::read(&self.log).map(|b| String::from_utf8_lossy(&b).into_owned()).unwrap_or_default()
    }
}

/// Kills processes of labs whose owner died (marked with [`LAB_ENV`]), then
/// runs the crate's [`sweep_dead_runs`] (netns, links, dirs, subnet claims
/// of dead runs). [`Lab::new`] calls it; returns what was removed.
pub fn sweep_dead_labs() -> Vec<String> {
    let mut removed = Vec::new();
    let mut killed = Vec::new();
    let me = pid();
    let needle = format!("{LAB_ENV}={PREFIX}-");
    if let Ok(rd) = std::fs::read_dir("/proc") {
        for e in rd.flatten() {
            let Some(p) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(env) = std::fs::read(e.path().join("environ")) else {
                continue;
            };
            let owner = env.split(|b| *b == 0).find_map(|kv| {
                let kv = std::str::from_utf8(kv).ok()?;
                kv.strip_prefix(&needle)?.split('-').next()?.parse::<u32>().ok()
            });
            if let Some(o) = owner {
                if o != me && !pid_alive(o) && p != me {
                    // SAFETY: plain kill(2); the process carries a dead lab's marker.
                    if unsafe { libc::kill(p as libc::pid_t, libc::SIGKILL) } == 0 {
                        removed.push(format!("process {p} of dead lab owner {o}"));
                        killed.push(p);
                    }
                }
            }
        }
    }
    // A killed process holds its netns until it has exited (a zombie holds
    // none): wait for that, bounded, before deleting the namespaces.
    let deadline = Instant::now() + Duration::from_secs(5);
    while killed.iter().any(|&p| still_running(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    removed.extend(sweep_dead_runs());
    removed
}

/// Whether `p` still runs (exists and is not yet a zombie).
fn still_running(p: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{p}/stat"))
        .ok()
        .and_then(|st| st.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')))
        .unwrap_or(false)
}

/// `cft<pid36>-0<lab36><role>`: a leading `0` after the dash never occurs in
/// [`crate::util::unique_link`] names, and the part after the dash stays a
/// valid base-36 u32 so the crate's sweep recognizes it.
fn root_link(lab_no: u32, role: &str) -> R<String> {
    let rest = format!("0{}{role}", b36(lab_no));
    ensure!(rest.len() <= 6, "lab link name part {rest:?} too long (too many labs or hosts in this process)");
    Ok(format!("{PREFIX}{}-{rest}", b36(pid())))
}

fn overlaps(a: &Ipv4Network, b: &Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The last `n` lines of a text.
fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// `ip [-n NS] -batch -` with the lines on stdin; stops at the first failure.
fn ip_batch(ns: Option<&str>, lines: &[String]) -> R<()> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = ns {
        cmd.args(["-n", ns]);
    }
    cmd.args(["-batch", "-"]);
    batch(cmd, lines)
}

/// `ip -force -batch -`: runs every line even if some fail.
fn ip_batch_force(lines: &[String]) -> R<()> {
    let mut cmd = Command::new("ip");
    cmd.args(["-force", "-batch", "-"]);
    batch(cmd, lines)
}

fn batch(mut cmd: Command, lines: &[String]) -> R<()> {
    cmd.env("PATH", SYS_PATH);
    let mut input = lines.join("\n").into_bytes();
    input.push(b'\n');
    let o = run_with_stdin(cmd, input, Duration::from_secs(30));
    ensure!(o.success(), "ip batch failed: {}\n  {}", o.describe(), lines.join("\n  "));
    Ok(())
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Long-running children are forked by one thread that lives as long as the
/// process: PR_SET_PDEATHSIG fires when the *forking thread* exits, and a
/// test's thread (or a benchmark's worker) may end before the child should.
fn spawn_from_lasting_thread(mut cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Option<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let tx = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("cft-lab-spawner".into())
            .spawn(move || {
                for (mut c, reply) in rx {
                    let _ = reply.send(c.spawn());
                }
            })
            .ok()
            .map(|_| tx)
    });
    let Some(tx) = tx else {
        return cmd.spawn();
    };
    let (rtx, rrx) = mpsc::channel();
    if let Err(mpsc::SendError((mut c, _))) = tx.send((cmd, rtx)) {
        return c.spawn();
    }
    rrx.recv().unwrap_or_else(|_| Err(std::io::Error::other("lab spawner thread is gone")))
}

static PORT_CURSOR: AtomicU32 = AtomicU32::new(0);

/// Two distinct TCP ports that are free right now (on every address), taken
/// from just below the kernel's ephemeral range so that no outgoing
/// connection grabs them between a stop and a restart of etcd.
fn free_ports() -> R<(u16, u16)> {
    let lo = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next().and_then(|x| x.parse::<u32>().ok()))
        .unwrap_or(32768);
    let (base, span) = match lo {
        13024.. => (lo - 12000, 12000),
        2048..=13023 => (1024, lo - 1024),
        _ => (40000, 12000),
    };
    let start = pid().wrapping_mul(7919);
    let mut found = Vec::new();
    for _ in 0..span {
        let k = PORT_CURSOR.fetch_add(1, Ordering::Relaxed);
        let port = (base + start.wrapping_add(k) % span) as u16;
        if !found.contains(&port) && TcpListener::bind(("0.0.0.0", port)).is_ok() {
            found.push(port);
            if let [a, b] = found[..] {
                return Ok((a, b));
            }
        }
    }
    bail!("no two free TCP ports in {base}..{}", base + span)
}

/// A minimal HTTP/1.0 GET; returns the whole response.
fn http_get(addr: SocketAddr, path: &str) -> R<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ctx("connect")?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ctx("timeout")?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ctx("send")?;
    let mut r = String::new();
    s.read_to_string(&mut r).ctx("read")?;
    Ok(r)
}
