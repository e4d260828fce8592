//! VXLAN links for an overlay agent (Flannel-style, L3 mode: the agent
//! programs ARP/NDP and FDB entries itself, see [`crate::neigh`]).

use std::net::IpAddr;

use netlink_packet_core::{NLM_F_CREATE, NLM_F_EXCL};
use netlink_packet_route::link::{InfoData, InfoKind, InfoVxlan, LinkAttribute, LinkFlags, LinkInfo, LinkMessage};
use netlink_packet_route::RouteNetlinkMessage;

use crate::error::{Error, Result};
use crate::link::{self, Link};
use crate::netlink::Netlink;

/// What the VXLAN link should look like.
#[derive(Debug, Clone)]
pub struct VxlanSpec<'a> {
    pub name: &'a str,
    /// VXLAN network identifier (24 bits).
    pub vni: u32,
    /// UDP destination port; 0 = the kernel's default (8472 unless the
    /// `vxlan_port` module parameter says otherwise), and then any port of
    /// an existing link is accepted.
    pub port: u16,
    /// Source address of the encapsulated packets (IFLA_VXLAN_LOCAL/LOCAL6).
    pub local: Option<IpAddr>,
    /// Ifindex of the underlay link (IFLA_VXLAN_LINK).
    pub underlay: Option<u32>,
    /// MTU; None = the kernel's choice (underlay MTU - 50 when `underlay` is set).
    pub mtu: Option<u32>,
    /// Source-MAC learning from received packets (Flannel: false).
    pub learning: bool,
    /// Link-layer address; None = random (kernel) on creation, left alone afterwards.
    pub mac: Option<[u8; 6]>,
}

/// The identity of an existing VXLAN link, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VxlanInfo {
    pub vni: u32,
    pub port: u16,
    pub local: Option<IpAddr>,
    pub underlay: Option<u32>,
    pub learning: bool,
}

impl VxlanInfo {
    /// Whether an existing link can serve `spec` without being recreated
    /// (the kernel refuses to change VNI, port, local or underlay in place).
    fn matches(&self, spec: &VxlanSpec<'_>) -> bool {
        self.vni == spec.vni
            && (spec.port == 0 || self.port == spec.port)
            && self.local == spec.local
            && self.underlay == spec.underlay
    }
}

/// (vni, port, local, underlay, learning) of VXLAN link `name`; `Ok(None)`
/// when there is no such link or it is not a VXLAN link.
pub fn vxlan_info(nl: &mut Netlink, name: &str) -> Result<Option<VxlanInfo>> {
    Ok(get_vxlan(nl, name)?.and_then(|(_, info)| info))
}

/// Looks `name` up: `Ok(None)` when absent, `Some((ifindex, None))` when it
/// is not a VXLAN link.
fn get_vxlan(nl: &mut Netlink, name: &str) -> Result<Option<(u32, Option<VxlanInfo>)>> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    let reply = match nl.dump_one(RouteNetlinkMessage::GetLink(msg), &|| format!("get link {name}")) {
        Ok(Some(RouteNetlinkMessage::NewLink(m))) => m,
        Ok(_) => return Ok(None),
        Err(e) if e.is_not_found() => return Ok(None),
        Err(e) => return Err(e),
    };
    let mut is_vxlan = false;
    let mut data = None;
    for a in &reply.attributes {
        if let LinkAttribute::LinkInfo(infos) = a {
            for i in infos {
                match i {
                    LinkInfo::Kind(InfoKind::Vxlan) => is_vxlan = true,
                    LinkInfo::Data(InfoData::Vxlan(d)) => data = Some(d),
                    _ => {}
                }
            }
        }
    }
    if !is_vxlan {
        return Ok(Some((reply.header.index, None)));
    }
    // Kernel defaults for what it leaves out of the dump: learning is on
    // unless disabled, LOCAL/LINK are only dumped when set.
    let mut info = VxlanInfo { vni: 0, port: 0, local: None, underlay: None, learning: true };
    for d in data.into_iter().flatten() {
        match d {
            InfoVxlan::Id(v) => info.vni = *v,
            InfoVxlan::Port(p) => info.port = *p,
            InfoVxlan::Local(a) => info.local = Some(IpAddr::V4(*a)),
            InfoVxlan::Local6(a) => info.local = Some(IpAddr::V6(*a)),
            InfoVxlan::Link(i) if *i != 0 => info.underlay = Some(*i),
            InfoVxlan::Learning(l) => info.learning = *l,
            _ => {}
        }
    }
    Ok(Some((reply.header.index, Some(info))))
}

/// Returns the VXLAN link, creating it (up) if absent. If a link with that
/// name exists with a different VNI/port/local/underlay (or is not vxlan),
/// it is deleted and recreated; if it matches, it is kept as is (only
/// brought up, MTU, learning and a requested MAC adjusted in place) — so an
/// agent restart never disturbs traffic.
pub fn ensure_vxlan(nl: &mut Netlink, spec: &VxlanSpec<'_>) -> Result<Link> {
    let name = spec.name;
    let existing = match get_vxlan(nl, name)? {
        Some((_, Some(info))) if info.matches(spec) => Some(info),
        Some((index, info)) => {
            tracing::info!(link = name, index, existing = ?info, "replacing incompatible link with a vxlan link");
            link::delete(nl, name)?;
            None
        }
        None => None,
    };
    let info = match existing {
        Some(info) => info,
        None => {
            // EEXIST is either a concurrent creator of the same name (whose
            // link we use if it is what we want) or another vxlan link
            // already holding this VNI/port/local (which we report).
            let exists = match create(nl, spec) {
                Ok(()) => None,
                Err(e) if e.is_exists() => Some(e),
                Err(e) => return Err(e),
            };
            match get_vxlan(nl, name)? {
                Some((_, Some(info))) if info.matches(spec) => info,
                Some((_, info)) => {
                    return Err(Error::Kernel {
                        op: format!("create vxlan {name}: a different link took its place ({info:?})"),
                        errno: nix::errno::Errno::EEXIST,
                    })
                }
                None => {
                    return Err(exists.unwrap_or_else(|| Error::NotFound(format!("vxlan {name} after creating it"))))
                }
            }
        }
    };
    let mut l = link::get(nl, name)?.ok_or_else(|| Error::NotFound(format!("vxlan {name}")))?;
    if info.learning != spec.learning {
        let mut msg = LinkMessage::default();
        msg.header.index = l.index;
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::Kind(InfoKind::Vxlan),
            LinkInfo::Data(InfoData::Vxlan(vec![InfoVxlan::Learning(spec.learning)])),
        ]));
        nl.request(RouteNetlinkMessage::NewLink(msg), 0, &|| {
            format!("set learning={} on vxlan {name}", spec.learning)
        })?;
    }
    let want_mtu = spec.mtu.filter(|m| *m != l.mtu);
    let want_mac = spec.mac.filter(|m| l.mac != Some(*m));
    if !l.up || want_mtu.is_some() || want_mac.is_some() {
        let mut msg = LinkMessage::default();
        msg.header.index = l.index;
        msg.header.flags = LinkFlags::Up;
        msg.header.change_mask = LinkFlags::Up;
        if let Some(mtu) = want_mtu {
            msg.attributes.push(LinkAttribute::Mtu(mtu));
        }
        if let Some(mac) = want_mac {
            msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
        }
        nl.request(RouteNetlinkMessage::SetLink(msg), 0, &|| {
            format!("bring vxlan {name} up (mtu {want_mtu:?}, mac {want_mac:?})")
        })?;
        l = link::get_by_index(nl, l.index)?.ok_or_else(|| Error::NotFound(format!("vxlan {name}")))?;
    }
    Ok(l)
}

fn create(nl: &mut Netlink, spec: &VxlanSpec<'_>) -> Result<()> {
    let mut data = vec![InfoVxlan::Id(spec.vni)];
    if spec.port != 0 {
        data.push(InfoVxlan::Port(spec.port));
    }
    match spec.local {
        Some(IpAddr::V4(a)) => data.push(InfoVxlan::Local(a)),
        Some(IpAddr::V6(a)) => data.push(InfoVxlan::Local6(a)),
        None => {}
    }
    if let Some(i) = spec.underlay {
        data.push(InfoVxlan::Link(i));
    }
    data.push(InfoVxlan::Learning(spec.learning));
    let mut msg = link::new_link_message(spec.name, spec.mtu, spec.mac);
    msg.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Vxlan), LinkInfo::Data(InfoData::Vxlan(data))]));
    nl.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL, &|| {
        format!(
            "create vxlan {} (vni {}, port {}, local {:?}, underlay {:?})",
            spec.name, spec.vni, spec.port, spec.local, spec.underlay
        )
    })
}
