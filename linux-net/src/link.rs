//! Links: bridges, veth pairs, bridge-port options and bridge VLANs.

use netlink_packet_core::{NLM_F_CREATE, NLM_F_ECHO, NLM_F_EXCL};
use netlink_packet_route::link::{
    AfSpecBridge, AfSpecInet6, AfSpecUnspec, BridgeVlanInfo, BridgeVlanInfoFlags, In6AddrGenMode, InfoBridge,
    InfoBridgePort, InfoData, InfoKind, InfoPortData, InfoPortKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo,
    LinkMessage,
};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};

use crate::error::{Error, Result};

use crate::netlink::Netlink;
pub use netlink_packet_route::link::InfoBridgePort as PortOption;

/// What we need to know about a link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub index: u32,
    pub name: String,
    pub mac: Option<[u8; 6]>,
    pub mtu: u32,
    pub master: Option<u32>,
    pub up: bool,
    pub promisc: bool,
    pub kind: Option<String>,
    pub alias: Option<String>,
    /// IFLA_LINK: for a veth end, its peer's index (in the peer's namespace).
    pub link: Option<u32>,
}

impl Link {
    fn from_msg(m: &LinkMessage) -> Link {
        let mut l = Link {
            index: m.header.index,
            name: String::new(),
            mac: None,
            mtu: 0,
            master: None,
            up: m.header.flags.contains(LinkFlags::Up),
            promisc: m.header.flags.contains(LinkFlags::Promisc),
            kind: None,
            alias: None,
            link: None,
        };
        for a in &m.attributes {
            match a {
                LinkAttribute::IfName(n) => l.name = n.clone(),
                LinkAttribute::Address(mac) if mac.len() == 6 => {
                    let mut b = [0u8; 6];
                    b.copy_from_slice(mac);
                    l.mac = Some(b);
                }
                LinkAttribute::Mtu(mtu) => l.mtu = *mtu,
                LinkAttribute::Controller(i) => l.master = Some(*i),
                LinkAttribute::IfAlias(a) => l.alias = Some(a.clone()),
                LinkAttribute::Link(i) => l.link = Some(*i),
                LinkAttribute::LinkInfo(infos) => {
                    for i in infos {
                        if let LinkInfo::Kind(k) = i {
                            l.kind = Some(k.to_string());
                        }
                    }
                }
                _ => {}
            }
        }
        l
    }

    pub fn mac_string(&self) -> String {
        self.mac.map(|m| format_mac(&m)).unwrap_or_default()
    }
}

pub fn format_mac(m: &[u8; 6]) -> String {
    format!("{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", m[0], m[1], m[2], m[3], m[4], m[5])
}

/// A random locally administered unicast MAC, as the kernel picks for a
/// link created without one (`eth_random_addr`). Choosing it ourselves means
/// knowing it without asking the kernel afterwards.
pub fn random_mac() -> Result<[u8; 6]> {
    let mut m = [0u8; 6];
    // One getrandom(2) (the urandom source; a request this small is never
    // cut short) instead of opening, reading and closing /dev/urandom.
    // SAFETY: writes at most m.len() bytes into m.
    let n = unsafe { libc::getrandom(m.as_mut_ptr().cast(), m.len(), 0) };
    if n != m.len() as isize {
        return Err(Error::io("getrandom for a MAC address", std::io::Error::last_os_error()));
    }
    m[0] = (m[0] & 0xfe) | 0x02;
    Ok(m)
}

pub fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut parts = s.split([':', '-']);
    for b in out.iter_mut() {
        let p = parts.next()?;
        if p.len() != 2 {
            return None;
        }
        *b = u8::from_str_radix(p, 16).ok()?;
    }
    parts.next().is_none().then_some(out)
}

/// Looks a link up by name; `Ok(None)` when there is none.
pub fn get(nl: &mut Netlink, name: &str) -> Result<Option<Link>> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    get_one(nl, msg, &|| format!("get link {name}"))
}

pub fn get_by_index(nl: &mut Netlink, index: u32) -> Result<Option<Link>> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    get_one(nl, msg, &|| format!("get link #{index}"))
}

fn get_one(nl: &mut Netlink, msg: LinkMessage, op: &dyn Fn() -> String) -> Result<Option<Link>> {
    match nl.dump_one(RouteNetlinkMessage::GetLink(msg), op) {
        Ok(Some(RouteNetlinkMessage::NewLink(m))) => Ok(Some(Link::from_msg(&m))),
        Ok(_) => Ok(None),
        Err(e) if e.is_not_found() => Ok(None),
        Err(e) => Err(e),
    }
}

/// Every link in the namespace.
pub fn list(nl: &mut Netlink) -> Result<Vec<Link>> {
    let msgs = nl.dump(RouteNetlinkMessage::GetLink(LinkMessage::default()), &|| "list links".into())?;
    Ok(msgs
        .iter()
        .filter_map(|m| match m {
            RouteNetlinkMessage::NewLink(m) => Some(Link::from_msg(m)),
            _ => None,
        })
        .collect())
}

/// A new-link message for `name`: up, with the MTU and MAC when given. The
/// caller adds the kind-specific `LinkInfo` (and anything else).
pub(crate) fn new_link_message(name: &str, mtu: Option<u32>, mac: Option<[u8; 6]>) -> LinkMessage {
    let mut msg = LinkMessage::default();
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    if let Some(mtu) = mtu {
        msg.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(mac) = mac {
        msg.attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    msg
}

/// Options for a bridge we may have to create.
#[derive(Debug, Clone, Default)]
pub struct BridgeSpec<'a> {
    pub name: &'a str,
    pub mtu: Option<u32>,
    pub promisc: bool,
    pub vlan_filtering: bool,
}

/// Returns the bridge, creating it if absent (a concurrent creator's EEXIST
/// is success), and makes sure it is up with the requested options.
///
/// The steady state (an existing bridge, up, in the wanted promiscuous mode,
/// no VLAN filtering to set) costs three ioctls by name instead of an
/// RTM_GETLINK, whose reply (≈1.9 kB for a bridge: statistics, every IPv4
/// and IPv6 setting, ~45 bridge options) the kernel fills and we parse on
/// every ADD. The returned link then carries only what those calls tell:
/// index, name, kind, up and promiscuous; anything else falls back to the
/// full lookup.
pub fn ensure_bridge(nl: &mut Netlink, spec: &BridgeSpec<'_>) -> Result<Link> {
    if !spec.vlan_filtering {
        if let Some(l) = existing_bridge(nl, spec.name) {
            if l.up && (l.promisc || !spec.promisc) {
                return Ok(l);
            }
        }
    }
    let mut link = match get(nl, spec.name)? {
        Some(l) => l,
        None => {
            // A MAC of its own, given at creation: the kernel then keeps it (an address it
            // assigned itself a bridge trades for the lowest of its ports' on every port
            // added or removed, so each ADD or DEL could change the gateway's MAC under the
            // containers' neighbour caches and cut them off from the host until they
            // re-resolve it; the differential test saw exactly that).
            let mut msg = new_link_message(spec.name, spec.mtu, Some(random_mac()?));
            let mut data = vec![];
            if spec.vlan_filtering {
                data.push(InfoBridge::VlanFiltering(true));
            }
            let mut info = vec![LinkInfo::Kind(InfoKind::Bridge)];
            if !data.is_empty() {
                info.push(LinkInfo::Data(InfoData::Bridge(data)));
            }
            msg.attributes.push(LinkAttribute::LinkInfo(info));
            match nl.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL, &|| {
                format!("create bridge {}", spec.name)
            }) {
                Ok(()) => {}
                Err(e) if e.is_exists() => {}
                Err(e) => return Err(e),
            }
            get(nl, spec.name)?.ok_or_else(|| Error::NotFound(format!("bridge {}", spec.name)))?
        }
    };
    if link.kind.as_deref() != Some("bridge") {
        return Err(Error::Kernel {
            op: format!("use {} as a bridge: it is a {}", spec.name, link.kind.as_deref().unwrap_or("non-bridge link")),
            errno: nix::errno::Errno::EINVAL,
        });
    }
    let want_promisc = spec.promisc && !link.promisc;
    if !link.up || want_promisc {
        let mut msg = LinkMessage::default();
        msg.header.index = link.index;
        msg.header.flags = LinkFlags::Up | if spec.promisc { LinkFlags::Promisc } else { LinkFlags::empty() };
        msg.header.change_mask = msg.header.flags;
        nl.request(RouteNetlinkMessage::SetLink(msg), 0, &|| format!("bring bridge {} up", spec.name))?;
        link.up = true;
    }
    if spec.vlan_filtering {
        set_bridge_opts(nl, link.index, vec![InfoBridge::VlanFiltering(true)], spec.name)?;
    }
    Ok(link)
}

/// The bridge named `name`, from ioctls on `nl`'s socket (the device ioctls
/// work on any socket, in its namespace): SIOCGIFINDEX, the ethtool driver
/// name (`bridge` for a Linux bridge and nothing else) and SIOCGIFFLAGS.
/// `None` when any of them fails or the device is not a bridge: the caller
/// then does the full netlink lookup, which also gives the precise error.
///
/// Each call resolves the name afresh in the kernel, so the index is the one
/// the name has now, exactly as with RTM_GETLINK (indexes are not reused
/// while the netns lives, unless someone asks for one explicitly).
fn existing_bridge(nl: &Netlink, name: &str) -> Option<Link> {
    let fd = nl.raw_fd();
    let named = || -> Option<libc::ifreq> {
        let bytes = name.as_bytes();
        if bytes.is_empty() || bytes.len() >= libc::IFNAMSIZ || bytes.contains(&0) {
            return None;
        }
        // SAFETY: ifreq is plain old data; all zeroes is a valid value.
        let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in r.ifr_name.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        Some(r)
    };
    let mut r = named()?;
    // SAFETY: SIOCGIFINDEX reads ifr_name and writes ifr_ifindex of `r`.
    if unsafe { libc::ioctl(fd, libc::SIOCGIFINDEX, &mut r) } != 0 {
        return None;
    }
    // SAFETY: the kernel just wrote the index member of the union.
    let index = u32::try_from(unsafe { r.ifr_ifru.ifru_ifindex }).ok()?;

    let mut info = EthtoolDrvinfo { cmd: ETHTOOL_GDRVINFO, ..EthtoolDrvinfo::default() };
    let mut r = named()?;
    r.ifr_ifru.ifru_data = (&mut info as *mut EthtoolDrvinfo).cast();
    // SAFETY: SIOCETHTOOL with ETHTOOL_GDRVINFO writes one ethtool_drvinfo
    // (the struct below has the kernel's layout) through ifr_data.
    if unsafe { libc::ioctl(fd, libc::SIOCETHTOOL, &mut r) } != 0 {
        return None;
    }
    let driver = info.driver.split(|b| *b == 0).next().unwrap_or(&[]);
    if driver != b"bridge" {
        return None;
    }

    let mut r = named()?;
    // SAFETY: SIOCGIFFLAGS reads ifr_name and writes ifr_flags of `r`.
    if unsafe { libc::ioctl(fd, libc::SIOCGIFFLAGS, &mut r) } != 0 {
        return None;
    }
    // SAFETY: the kernel just wrote the flags member of the union.
    let flags = unsafe { r.ifr_ifru.ifru_flags } as libc::c_int;
    Some(Link {
        index,
        name: name.to_string(),
        mac: None,
        mtu: 0,
        master: None,
        up: flags & libc::IFF_UP != 0,
        promisc: flags & libc::IFF_PROMISC != 0,
        kind: Some("bridge".into()),
        alias: None,
        link: None,
    })
}

const ETHTOOL_GDRVINFO: u32 = 0x0000_0003;

/// `struct ethtool_drvinfo` of <linux/ethtool.h> (196 bytes; the kernel
/// copies all of it back, so the layout must be exact).
#[derive(Default)]
#[repr(C)]
struct EthtoolDrvinfo {
    cmd: u32,
    driver: [u8; 32],
    version: [u8; 32],
    fw_version: [u8; 32],
    bus_info: [u8; 32],
    erom_version: [u8; 32],
    reserved2: [u8; 12],
    n_priv_flags: u32,
    n_stats: u32,
    testinfo_len: u32,
    eedump_len: u32,
    regdump_len: u32,
}

const _: () = assert!(std::mem::size_of::<EthtoolDrvinfo>() == 196);

fn set_bridge_opts(nl: &mut Netlink, index: u32, opts: Vec<InfoBridge>, name: &str) -> Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes
        .push(LinkAttribute::LinkInfo(vec![LinkInfo::Kind(InfoKind::Bridge), LinkInfo::Data(InfoData::Bridge(opts))]));
    nl.request(RouteNetlinkMessage::NewLink(msg), 0, &|| format!("set options on bridge {name}"))
}

/// A veth pair created in one request: `host` in this namespace, up and
/// enslaved to `master`; `peer` created directly inside the namespace `peer_ns_fd`,
/// down: the kernel refuses (ENOTCONN) to open a veth end before its pair is
/// linked, so the caller brings the peer up from inside its namespace.
#[derive(Debug, Clone)]
pub struct VethSpec<'a> {
    pub host: &'a str,
    pub peer: &'a str,
    pub peer_ns_fd: i32,
    pub mtu: Option<u32>,
    pub peer_mac: Option<[u8; 6]>,
    pub master: Option<u32>,
}

/// Returns the host end as the kernel created it (echoed on kernels >= 6.3,
/// looked up otherwise).
pub fn create_veth(nl: &mut Netlink, spec: &VethSpec<'_>) -> Result<Link> {
    create_veth_with_host_mac(nl, spec, None)
}

/// [`create_veth`], with the host end's MAC set in the creating request.
///
/// The MAC is the one label the kernel takes in RTM_NEWLINK when it creates
/// a link: it ignores IFLA_IFALIAS there (an alias needs a second request),
/// so a process killed between the two leaves a link only its MAC can tell.
pub fn create_veth_with_host_mac(nl: &mut Netlink, spec: &VethSpec<'_>, host_mac: Option<[u8; 6]>) -> Result<Link> {
    let mut peer = LinkMessage::default();
    peer.attributes.push(LinkAttribute::IfName(spec.peer.to_string()));
    peer.attributes.push(LinkAttribute::NetNsFd(spec.peer_ns_fd));
    if let Some(mtu) = spec.mtu {
        peer.attributes.push(LinkAttribute::Mtu(mtu));
    }
    if let Some(mac) = spec.peer_mac {
        peer.attributes.push(LinkAttribute::Address(mac.to_vec()));
    }
    let mut msg = new_link_message(spec.host, spec.mtu, host_mac);
    if let Some(master) = spec.master {
        msg.attributes.push(LinkAttribute::Controller(master));
    }
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Veth),
        LinkInfo::Data(InfoData::Veth(InfoVeth::Peer(peer))),
    ]));
    let echoed = nl.request_echo(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL | NLM_F_ECHO, &|| {
        format!("create veth {} <-> {}", spec.host, spec.peer)
    })?;
    let host = echoed.iter().find_map(|m| match m {
        RouteNetlinkMessage::NewLink(m) => Some(Link::from_msg(m)).filter(|l| l.name == spec.host),
        _ => None,
    });
    match host {
        Some(l) => Ok(l),
        None => get(nl, spec.host)?.ok_or_else(|| Error::NotFound(format!("veth {} after creating it", spec.host))),
    }
}

/// Deletes a link by name; `Ok(false)` when it was already gone.
pub fn delete(nl: &mut Netlink, name: &str) -> Result<bool> {
    let mut msg = LinkMessage::default();
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    match nl.request(RouteNetlinkMessage::DelLink(msg), 0, &|| format!("delete link {name}")) {
        Ok(()) => Ok(true),
        Err(e) if e.is_not_found() => Ok(false),
        Err(e) => Err(e),
    }
}

/// Sets the alias and bridge-port flags of an enslaved link in one request.
pub fn set_port(nl: &mut Netlink, index: u32, alias: Option<&str>, opts: Vec<InfoBridgePort>) -> Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    if let Some(a) = alias {
        msg.attributes.push(LinkAttribute::IfAlias(a.to_string()));
    }
    if !opts.is_empty() {
        msg.attributes.push(LinkAttribute::LinkInfo(vec![
            LinkInfo::PortKind(InfoPortKind::Bridge),
            LinkInfo::PortData(InfoPortData::BridgePort(opts)),
        ]));
    }
    nl.request(RouteNetlinkMessage::NewLink(msg), 0, &|| format!("set alias and port options of link #{index}"))
}

/// Makes the link's IPv6 link-local address the EUI-64 of its MAC
/// (`ip link set … addrgenmode eui64`), whatever the namespace's
/// `net.ipv6.conf.default.addr_gen_mode` says (stable-privacy, none). Set it
/// before the link goes up: the address is generated then.
pub fn set_addr_gen_mode_eui64(nl: &mut Netlink, index: u32) -> Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.attributes.push(LinkAttribute::AfSpecUnspec(vec![AfSpecUnspec::Inet6(vec![AfSpecInet6::AddrGenMode(
        In6AddrGenMode::Eui64,
    )])]));
    nl.request(RouteNetlinkMessage::SetLink(msg), 0, &|| format!("set addrgenmode eui64 on link #{index}"))
}

pub fn set_up(nl: &mut Netlink, index: u32, up: bool) -> Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.index = index;
    msg.header.flags = if up { LinkFlags::Up } else { LinkFlags::empty() };
    msg.header.change_mask = LinkFlags::Up;
    nl.request(RouteNetlinkMessage::SetLink(msg), 0, &|| format!("set link #{index} up={up}"))
}

/// Adds or removes a VLAN on a bridge port (`self_` = on the bridge device itself).
pub fn bridge_vlan(nl: &mut Netlink, index: u32, vid: u16, pvid_untagged: bool, self_: bool, add: bool) -> Result<()> {
    let mut msg = LinkMessage::default();
    msg.header.interface_family = AddressFamily::Bridge;
    msg.header.index = index;
    let mut flags = BridgeVlanInfoFlags::empty();
    if pvid_untagged {
        flags |= BridgeVlanInfoFlags::Pvid | BridgeVlanInfoFlags::Untagged;
    }
    let mut spec = vec![AfSpecBridge::VlanInfo(BridgeVlanInfo { flags, vid })];
    if self_ {
        spec.insert(0, AfSpecBridge::Flags(netlink_packet_route::link::BridgeFlag::LowerDev));
    }
    msg.attributes.push(LinkAttribute::AfSpecBridge(spec));
    let op = || format!("{} vlan {vid} on link #{index}", if add { "add" } else { "delete" });
    if add {
        nl.request(RouteNetlinkMessage::SetLink(msg), 0, &op)
    } else {
        nl.request(RouteNetlinkMessage::DelLink(msg), 0, &op)
    }
}

/// Creates (or finds) VLAN link `name` with id `vid` on top of link `parent`, up.
pub fn ensure_vlan(nl: &mut Netlink, name: &str, parent: u32, vid: u16) -> Result<Link> {
    if let Some(l) = get(nl, name)? {
        return Ok(l);
    }
    let mut msg = LinkMessage::default();
    msg.header.flags = LinkFlags::Up;
    msg.header.change_mask = LinkFlags::Up;
    msg.attributes.push(LinkAttribute::IfName(name.to_string()));
    msg.attributes.push(LinkAttribute::Link(parent));
    msg.attributes.push(LinkAttribute::LinkInfo(vec![
        LinkInfo::Kind(InfoKind::Vlan),
        LinkInfo::Data(InfoData::Vlan(vec![netlink_packet_route::link::InfoVlan::Id(vid)])),
    ]));
    match nl.request(RouteNetlinkMessage::NewLink(msg), NLM_F_CREATE | NLM_F_EXCL, &|| {
        format!("create vlan {name} (id {vid})")
    }) {
        Ok(()) => {}
        Err(e) if e.is_exists() => {}
        Err(e) => return Err(e),
    }
    get(nl, name)?.ok_or_else(|| Error::NotFound(format!("vlan link {name}")))
}
