//! Interface addresses.

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::address::{AddressAttribute, AddressFlags, AddressHeaderFlags, AddressMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::Result;
use crate::netlink::Netlink;

fn family(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

/// Adds `net` (address with prefix length) to link `index`. `nodad` skips
/// IPv6 duplicate address detection so the address is usable at once.
pub fn add(nl: &mut Netlink, index: u32, net: IpNetwork, nodad: bool) -> Result<()> {
    let mut msg = message(index, net);
    if net.is_ipv6() && nodad {
        msg.header.flags = AddressHeaderFlags::Nodad;
        msg.attributes.push(AddressAttribute::Flags(AddressFlags::Nodad));
    }
    if let IpNetwork::V4(v4) = net {
        if net.prefix() < 31 {
            msg.attributes.push(AddressAttribute::Broadcast(v4.broadcast()));
        }
    }
    nl.request(RouteNetlinkMessage::NewAddress(msg), NLM_F_CREATE | NLM_F_EXCL, &|| {
        format!("add address {net} to link #{index}")
    })
}

pub fn del(nl: &mut Netlink, index: u32, net: IpNetwork) -> Result<()> {
    nl.request(RouteNetlinkMessage::DelAddress(message(index, net)), 0, &|| {
        format!("delete address {net} from link #{index}")
    })
}

fn message(index: u32, net: IpNetwork) -> AddressMessage {
    let mut msg = AddressMessage::default();
    msg.header.family = family(&net.ip());
    msg.header.prefix_len = net.prefix();
    msg.header.index = index;
    msg.attributes.push(AddressAttribute::Local(net.ip()));
    msg.attributes.push(AddressAttribute::Address(net.ip()));
    msg
}

/// Addresses of one link (or every link when `index` is None), as (link index, address/prefix).
pub fn list(nl: &mut Netlink, index: Option<u32>) -> Result<Vec<(u32, IpNetwork)>> {
    let msgs = nl.dump(RouteNetlinkMessage::GetAddress(AddressMessage::default()), &|| "list addresses".into())?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewAddress(m) = m else {
            continue;
        };
        if index.is_some_and(|i| i != m.header.index) {
            continue;
        }
        // IFA_LOCAL is the interface's own address on point-to-point links; prefer it.
        let mut ip = None;
        for a in &m.attributes {
            match a {
                AddressAttribute::Local(l) => ip = Some(*l),
                AddressAttribute::Address(l) if ip.is_none() => ip = Some(*l),
                _ => {}
            }
        }
        if let Some(ip) = ip {
            if let Ok(net) = IpNetwork::new(ip, m.header.prefix_len) {
                out.push((m.header.index, net));
            }
        }
    }
    Ok(out)
}
