//! Neighbour (ARP/NDP) entries and bridge FDB entries of VXLAN links.
//!
//! An L3 overlay (Flannel's `vxlan` backend) resolves a remote subnet's
//! gateway address itself: a permanent neighbour entry maps it to the remote
//! VTEP's MAC, and an FDB entry on the VXLAN link maps that MAC to the
//! remote VTEP's underlay IP.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netlink_packet_core::{NLM_F_CREATE, NLM_F_REPLACE};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage, NeighbourState,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::Result;
use crate::link::format_mac;
use crate::netlink::Netlink;

const NUD_PERMANENT: u16 = 0x80;

fn family(ip: &IpAddr) -> AddressFamily {
    if ip.is_ipv4() {
        AddressFamily::Inet
    } else {
        AddressFamily::Inet6
    }
}

fn message(family: AddressFamily, index: u32) -> NeighbourMessage {
    let mut msg = NeighbourMessage::default();
    msg.header.family = family;
    msg.header.ifindex = index;
    msg
}

/// `Ok(false)` for ENOENT (nothing to delete).
fn absent_is_false(r: Result<()>) -> Result<bool> {
    match r {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

fn mac_of(attr: &NeighbourAttribute) -> Option<[u8; 6]> {
    match attr {
        NeighbourAttribute::LinkLayerAddress(b) if b.len() == 6 => {
            let mut m = [0u8; 6];
            m.copy_from_slice(b);
            Some(m)
        }
        _ => None,
    }
}

/// NDA_DST as an address: decoded by family for ARP/NDP, by length for
/// AF_BRIDGE (where the kernel puts the remote VTEP's IPv4 or IPv6 address).
fn ip_of(attr: &NeighbourAttribute) -> Option<IpAddr> {
    match attr {
        NeighbourAttribute::Destination(NeighbourAddress::Inet(a)) => Some(IpAddr::V4(*a)),
        NeighbourAttribute::Destination(NeighbourAddress::Inet6(a)) => Some(IpAddr::V6(*a)),
        NeighbourAttribute::Destination(NeighbourAddress::Other(b)) => match b.len() {
            4 => <[u8; 4]>::try_from(&b[..]).ok().map(|a| IpAddr::V4(Ipv4Addr::from(a))),
            16 => <[u8; 16]>::try_from(&b[..]).ok().map(|a| IpAddr::V6(Ipv6Addr::from(a))),
            _ => None,
        },
        _ => None,
    }
}

/// Permanent neighbour entry `ip -> mac` on link `index` (ARP for IPv4, NDP
/// for IPv6); created or replaced, so calling it again is harmless.
pub fn neigh_replace(nl: &mut Netlink, index: u32, ip: IpAddr, mac: [u8; 6]) -> Result<()> {
    let mut msg = message(family(&ip), index);
    msg.header.state = NeighbourState::Permanent;
    msg.attributes.push(NeighbourAttribute::Destination(ip.into()));
    msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    nl.request(RouteNetlinkMessage::NewNeighbour(msg), NLM_F_CREATE | NLM_F_REPLACE, &|| {
        format!("replace neighbour {ip} -> {} on link #{index}", format_mac(&mac))
    })
}

/// Deletes the neighbour entry for `ip` on link `index` (whatever its state);
/// `Ok(false)` when there was none.
pub fn neigh_del(nl: &mut Netlink, index: u32, ip: IpAddr) -> Result<bool> {
    let mut msg = message(family(&ip), index);
    msg.attributes.push(NeighbourAttribute::Destination(ip.into()));
    absent_is_false(
        nl.request(RouteNetlinkMessage::DelNeighbour(msg), 0, &|| format!("delete neighbour {ip} on link #{index}")),
    )
}

/// The permanent IPv4 and IPv6 neighbour entries of link `index`.
pub fn neigh_list(nl: &mut Netlink, index: u32) -> Result<Vec<(IpAddr, [u8; 6])>> {
    let mut out = Vec::new();
    for fam in [AddressFamily::Inet, AddressFamily::Inet6] {
        let msgs = nl.dump(RouteNetlinkMessage::GetNeighbour(message(fam, 0)), &|| {
            format!("list {fam:?} neighbours of link #{index}")
        })?;
        for m in msgs {
            let RouteNetlinkMessage::NewNeighbour(m) = m else {
                continue;
            };
            if m.header.ifindex != index
                || u16::from(m.header.state) & NUD_PERMANENT == 0
                || m.header.flags.contains(NeighbourFlags::Proxy)
            {
                continue;
            }
            let ip = m.attributes.iter().find_map(ip_of);
            let mac = m.attributes.iter().find_map(mac_of);
            if let (Some(ip), Some(mac)) = (ip, mac) {
                out.push((ip, mac));
            }
        }
    }
    Ok(out)
}

fn fdb_message(index: u32, mac: [u8; 6], dst: IpAddr) -> NeighbourMessage {
    let mut msg = message(AddressFamily::Bridge, index);
    msg.header.state = NeighbourState::Permanent;
    msg.header.flags = NeighbourFlags::Own; // NTF_SELF: the vxlan device's own FDB
    msg.attributes.push(NeighbourAttribute::LinkLayerAddress(mac.to_vec()));
    msg.attributes.push(NeighbourAttribute::Destination(dst.into()));
    msg
}

/// Bridge FDB entry on VXLAN link `index`: frames for `mac` go to the
/// remote VTEP `dst`. Replace semantics: an existing entry for `mac` gets
/// `dst` as its (first) remote, so calling it again is harmless.
pub fn fdb_replace(nl: &mut Netlink, index: u32, mac: [u8; 6], dst: IpAddr) -> Result<()> {
    nl.request(RouteNetlinkMessage::NewNeighbour(fdb_message(index, mac, dst)), NLM_F_CREATE | NLM_F_REPLACE, &|| {
        format!("replace fdb {} -> {dst} on link #{index}", format_mac(&mac))
    })
}

/// Deletes remote `dst` of FDB entry `mac` on VXLAN link `index` (the entry
/// goes with its last remote); `Ok(false)` when there was none.
///
/// The kernel acks a delete naming an existing MAC with a remote it does not
/// have as a success (and does nothing), so presence is checked first.
pub fn fdb_del(nl: &mut Netlink, index: u32, mac: [u8; 6], dst: IpAddr) -> Result<bool> {
    if !fdb_list(nl, index)?.contains(&(mac, dst)) {
        return Ok(false);
    }
    absent_is_false(nl.request(RouteNetlinkMessage::DelNeighbour(fdb_message(index, mac, dst)), 0, &|| {
        format!("delete fdb {} -> {dst} on link #{index}", format_mac(&mac))
    }))
}

/// The FDB of VXLAN link `index` as (mac, remote VTEP) pairs, one per
/// remote (entries without a remote address are left out).
pub fn fdb_list(nl: &mut Netlink, index: u32) -> Result<Vec<([u8; 6], IpAddr)>> {
    let msgs = nl.dump(RouteNetlinkMessage::GetNeighbour(message(AddressFamily::Bridge, 0)), &|| {
        format!("list fdb of link #{index}")
    })?;
    let mut out = Vec::new();
    for m in msgs {
        let RouteNetlinkMessage::NewNeighbour(m) = m else {
            continue;
        };
        if m.header.ifindex != index || !m.header.flags.contains(NeighbourFlags::Own) {
            continue;
        }
        let ip = m.attributes.iter().find_map(ip_of);
        let mac = m.attributes.iter().find_map(mac_of);
        if let (Some(ip), Some(mac)) = (ip, mac) {
            out.push((mac, ip));
        }
    }
    Ok(out)
}
