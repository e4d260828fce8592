//! Routes.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::route::{
    RouteAddress, RouteAttribute, RouteFlags, RouteHeader, RouteMessage, RouteMetric, RouteProtocol, RouteScope,
    RouteType,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use nix::errno::Errno;

use crate::error::{Error, Result};
use crate::netlink::Netlink;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: IpNetwork,
    pub gw: Option<IpAddr>,
    pub oif: Option<u32>,
    pub mtu: Option<u32>,
    pub advmss: Option<u32>,
    pub priority: Option<u32>,
    pub table: Option<u32>,
    /// Raw rtm_scope; universe (0) when None and there is a gateway, link (253) otherwise.
    pub scope: Option<u8>,
    pub onlink: bool,
    /// rtm_protocol: who owns the route (`ip route ... proto N`); None is `boot` (3), the
    /// kernel's default for routes added by hand. A routing daemon sets its own number so
    /// that it can find (and only touch) its routes again.
    pub protocol: Option<u8>,
    pub kind: RouteKind,
}

/// rtm_type: the two kinds we install.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum RouteKind {
    /// Forward to the gateway / out of the link.
    #[default]
    Unicast,
    /// Drop silently (no ICMP): a prefix we own but have no more specific route in.
    Blackhole,
}

impl Route {
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>, oif: Option<u32>) -> Route {
        Route {
            dst,
            gw,
            oif,
            mtu: None,
            advmss: None,
            priority: None,
            table: None,
            scope: None,
            onlink: false,
            protocol: None,
            kind: RouteKind::Unicast,
        }
    }

    /// A blackhole route to `dst` (no gateway, no link).
    pub fn blackhole(dst: IpNetwork) -> Route {
        Route { kind: RouteKind::Blackhole, ..Route::new(dst, None, None) }
    }
}

fn addr(ip: IpAddr) -> RouteAddress {
    match ip {
        IpAddr::V4(a) => RouteAddress::Inet(a),
        IpAddr::V6(a) => RouteAddress::Inet6(a),
    }
}

fn message(r: &Route) -> RouteMessage {
    let mut msg = RouteMessage::default();
    msg.header.address_family = if r.dst.is_ipv4() { AddressFamily::Inet } else { AddressFamily::Inet6 };
    msg.header.destination_prefix_length = r.dst.prefix();
    msg.header.table = RouteHeader::RT_TABLE_MAIN;
    msg.header.protocol = r.protocol.map_or(RouteProtocol::Boot, RouteProtocol::from);
    msg.header.kind = match r.kind {
        RouteKind::Unicast => RouteType::Unicast,
        RouteKind::Blackhole => RouteType::BlackHole,
    };
    msg.header.scope = match (r.scope, r.gw, r.kind) {
        (Some(s), _, _) => RouteScope::from(s),
        (None, Some(_), _) | (None, None, RouteKind::Blackhole) => RouteScope::Universe,
        (None, None, RouteKind::Unicast) => RouteScope::Link,
    };
    if r.onlink {
        msg.header.flags = RouteFlags::Onlink;
    }
    if r.dst.prefix() > 0 {
        msg.attributes.push(RouteAttribute::Destination(addr(r.dst.network())));
    }
    if let Some(gw) = r.gw {
        msg.attributes.push(RouteAttribute::Gateway(addr(gw)));
    }
    if let Some(oif) = r.oif {
        msg.attributes.push(RouteAttribute::Oif(oif));
    }
    if let Some(p) = r.priority {
        msg.attributes.push(RouteAttribute::Priority(p));
    }
    if let Some(t) = r.table {
        if t < 256 {
            msg.header.table = t as u8;
        } else {
            msg.header.table = 252; // RT_TABLE_COMPAT: the real id is in RTA_TABLE
        }
        msg.attributes.push(RouteAttribute::Table(t));
    }
    let mut metrics = vec![];
    if let Some(m) = r.mtu {
        metrics.push(RouteMetric::Mtu(m));
    }
    if let Some(m) = r.advmss {
        metrics.push(RouteMetric::Advmss(m));
    }
    if !metrics.is_empty() {
        msg.attributes.push(RouteAttribute::Metrics(metrics));
    }
    msg
}

pub fn add(nl: &mut Netlink, r: &Route) -> Result<()> {
    nl.request(RouteNetlinkMessage::NewRoute(message(r)), NLM_F_CREATE | NLM_F_EXCL, &|| {
        format!("add route {} via {:?}", r.dst, r.gw)
    })
}

pub fn del(nl: &mut Netlink, r: &Route) -> Result<()> {
    nl.request(RouteNetlinkMessage::DelRoute(message(r)), 0, &|| format!("delete route {} via {:?}", r.dst, r.gw))
}

/// Routes of the main (or every) table, as our [`Route`]s.
pub fn list(nl: &mut Netlink, v6: bool) -> Result<Vec<Route>> {
    let mut req = RouteMessage::default();
    req.header.address_family = if v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
    let msgs = nl.dump(RouteNetlinkMessage::GetRoute(req), &|| "list routes".into())?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewRoute(m) = m else {
            continue;
        };
        let mut dst = None;
        let mut r = Route::new(
            if v6 { "::/0".parse().expect("valid") } else { "0.0.0.0/0".parse().expect("valid") },
            None,
            None,
        );
        r.scope = Some(u8::from(m.header.scope));
        r.table = Some(m.header.table as u32);
        for a in &m.attributes {
            match a {
                RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = Some(IpAddr::V4(*a)),
                RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = Some(IpAddr::V6(*a)),
                RouteAttribute::Gateway(RouteAddress::Inet(a)) => r.gw = Some(IpAddr::V4(*a)),
                RouteAttribute::Gateway(RouteAddress::Inet6(a)) => r.gw = Some(IpAddr::V6(*a)),
                RouteAttribute::Oif(i) => r.oif = Some(*i),
                RouteAttribute::Priority(p) => r.priority = Some(*p),
                RouteAttribute::Table(t) => r.table = Some(*t),
                _ => {}
            }
        }
        if let Some(d) = dst {
            if let Ok(n) = IpNetwork::new(d, m.header.destination_prefix_length) {
                r.dst = n;
            }
        }
        out.push(r);
    }
    Ok(out)
}

/// Adds `r`, or replaces the route to the same destination (same table,
/// priority and TOS) whatever its gateway/link were (NLM_F_CREATE|NLM_F_REPLACE).
pub fn replace(nl: &mut Netlink, r: &Route) -> Result<()> {
    nl.request(RouteNetlinkMessage::NewRoute(message(r)), NLM_F_CREATE | netlink_packet_core::NLM_F_REPLACE, &|| {
        format!("replace route {} via {:?} dev #{:?}", r.dst, r.gw, r.oif)
    })
}

/// Routes of the main table whose (single) nexthop leaves through link
/// `oif`, with `onlink`, `mtu` and `advmss` read back too. Like [`list`],
/// `scope` and `table` are always filled in; `priority` is filled in when
/// the kernel reports one (always for IPv6, only when non-zero for IPv4).
pub fn list_oif(nl: &mut Netlink, v6: bool, oif: u32) -> Result<Vec<Route>> {
    let mut req = RouteMessage::default();
    req.header.address_family = if v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
    let msgs = nl.dump(RouteNetlinkMessage::GetRoute(req), &|| format!("list routes via link #{oif}"))?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewRoute(m) = m else {
            continue;
        };
        let main = Some(RouteHeader::RT_TABLE_MAIN as u32);
        if let Some(r) = route_of(&m).filter(|r| r.oif == Some(oif) && r.table == main) {
            out.push(r);
        }
    }
    Ok(out)
}

/// One dumped route as our [`Route`] (None for a family we do not handle).
fn route_of(m: &RouteMessage) -> Option<Route> {
    let zero: IpAddr = match m.header.address_family {
        AddressFamily::Inet => std::net::Ipv4Addr::UNSPECIFIED.into(),
        AddressFamily::Inet6 => std::net::Ipv6Addr::UNSPECIFIED.into(),
        _ => return None,
    };
    let mut dst = zero;
    let mut r = Route::new(IpNetwork::new(zero, 0).ok()?, None, None);
    r.scope = Some(u8::from(m.header.scope));
    r.table = Some(m.header.table as u32);
    r.onlink = m.header.flags.contains(RouteFlags::Onlink);
    r.protocol = Some(u8::from(m.header.protocol));
    r.kind = match m.header.kind {
        RouteType::Unicast => RouteKind::Unicast,
        RouteType::BlackHole => RouteKind::Blackhole,
        _ => return None,
    };
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = IpAddr::V4(*a),
            RouteAttribute::Destination(RouteAddress::Inet6(a)) => dst = IpAddr::V6(*a),
            RouteAttribute::Gateway(RouteAddress::Inet(a)) => r.gw = Some(IpAddr::V4(*a)),
            RouteAttribute::Gateway(RouteAddress::Inet6(a)) => r.gw = Some(IpAddr::V6(*a)),
            RouteAttribute::Oif(i) => r.oif = Some(*i),
            RouteAttribute::Priority(p) => r.priority = Some(*p),
            RouteAttribute::Table(t) => r.table = Some(*t),
            RouteAttribute::Metrics(ms) => {
                for metric in ms {
                    match metric {
                        RouteMetric::Mtu(v) => r.mtu = Some(*v),
                        RouteMetric::Advmss(v) => r.advmss = Some(*v),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    r.dst = IpNetwork::new(dst, m.header.destination_prefix_length).ok()?;
    Some(r)
}

/// The routes of table `table` (e.g. 254, main) owned by `protocol`, IPv4 or
/// IPv6: what a routing daemon installed, as [`Route`]s with `protocol`,
/// `kind`, `table`, `scope` and `onlink` read back. Cached clones of IPv6
/// routes and kinds other than unicast/blackhole are left out.
pub fn list_protocol(nl: &mut Netlink, v6: bool, table: u32, protocol: u8) -> Result<Vec<Route>> {
    let mut req = RouteMessage::default();
    req.header.address_family = if v6 { AddressFamily::Inet6 } else { AddressFamily::Inet };
    let msgs = nl.dump(RouteNetlinkMessage::GetRoute(req), &|| format!("list routes of protocol {protocol}"))?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewRoute(m) = m else {
            continue;
        };
        if u8::from(m.header.protocol) != protocol || m.header.flags.contains(RouteFlags::Cloned) {
            continue;
        }
        if let Some(r) = route_of(&m).filter(|r| r.table == Some(table)) {
            out.push(r);
        }
    }
    Ok(out)
}

/// One step of a [`batch`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Create; fails with EEXIST if a route with the same key (table,
    /// destination, metric, TOS) is there, whoever owns it.
    Add(Route),
    /// Create or overwrite the route with the same key, whoever owns it: use
    /// only where the caller knows the route at that key is its own.
    Replace(Route),
    /// Delete; matches the route's protocol, so a route of another owner to
    /// the same destination is not deleted. A route already gone counts as done.
    Delete(Route),
}

impl Op {
    pub fn route(&self) -> &Route {
        match self {
            Op::Add(r) | Op::Replace(r) | Op::Delete(r) => r,
        }
    }

    fn describe(&self) -> String {
        let (verb, r) = match self {
            Op::Add(r) => ("add", r),
            Op::Replace(r) => ("replace", r),
            Op::Delete(r) => ("delete", r),
        };
        let kind = if r.kind == RouteKind::Blackhole { "blackhole route" } else { "route" };
        let mut s = format!("{verb} {kind} {}", r.dst);
        if let Some(gw) = r.gw {
            s += &format!(" via {gw}");
        }
        if let Some(oif) = r.oif {
            s += &format!(" dev #{oif}");
        }
        s
    }
}

/// How many requests are in flight at once in a [`batch`]: their acks must
/// fit in the socket's receive buffer (see [`Netlink::pipeline`]).
pub const BATCH_WINDOW: usize = 512;

/// Runs `ops` on one socket, [`BATCH_WINDOW`] requests per write, and
/// returns the ones the kernel refused (index into `ops`, and the error
/// naming the route), in order. The others took effect. A socket failure
/// (not a per-route refusal) is the outer error; some ops may then have
/// been done.
pub fn batch(nl: &mut Netlink, ops: &[Op]) -> Result<Vec<(usize, Error)>> {
    use netlink_packet_core::NLM_F_REPLACE;
    let mut failed = Vec::new();
    let mut msgs = ops.iter().map(|op| match op {
        Op::Add(r) => (RouteNetlinkMessage::NewRoute(message(r)), NLM_F_CREATE | NLM_F_EXCL),
        Op::Replace(r) => (RouteNetlinkMessage::NewRoute(message(r)), NLM_F_CREATE | NLM_F_REPLACE),
        Op::Delete(r) => (RouteNetlinkMessage::DelRoute(message(r)), 0),
    });
    nl.pipeline(&mut msgs, BATCH_WINDOW, &mut |i, errno| {
        let gone = matches!(ops[i], Op::Delete(_)) && matches!(errno, Errno::ENOENT | Errno::ESRCH);
        if !gone {
            failed.push((i, Error::Kernel { op: ops[i].describe(), errno }));
        }
    })?;
    Ok(failed)
}
