//! The defaults that come from the host: its name, and the IPv4 address of
//! the interface the default route leaves by.

use std::net::{IpAddr, Ipv4Addr};

use linux_net::netlink::Netlink;
use linux_net::{addr, route};

use crate::cluster::ConfigError;

/// The hostname (`--node-name`'s default).
pub fn hostname() -> Result<String, ConfigError> {
    let h = nix::unistd::gethostname()
        .map_err(|e| ConfigError { key: "--node-name".into(), reason: format!("cannot read the hostname: {e}") })?;
    Ok(h.to_string_lossy().into_owned())
}

/// `--node-ip`'s default: the first IPv4 address of the default route's
/// interface (in the main table; the lowest metric wins). No default route,
/// or no IPv4 address on its link, is an error asking for `--node-ip`.
pub fn default_ipv4(nl: &mut Netlink) -> Result<Ipv4Addr, ConfigError> {
    let bad = |reason: String| ConfigError { key: "--node-ip".into(), reason };
    let routes = route::list(nl, false).map_err(|e| bad(format!("cannot read the routes: {e}")))?;
    let mut defaults: Vec<_> =
        routes.iter().filter(|r| r.dst.prefix() == 0 && r.table == Some(254) && r.oif.is_some()).collect();
    defaults.sort_by_key(|r| r.priority.unwrap_or(0));
    let Some(oif) = defaults.first().and_then(|r| r.oif) else {
        return Err(bad("no IPv4 default route to take the node's address from: pass --node-ip".into()));
    };
    let addrs = addr::list(nl, Some(oif)).map_err(|e| bad(format!("cannot read the addresses: {e}")))?;
    addrs
        .iter()
        .find_map(|(_, n)| match n.ip() {
            IpAddr::V4(a) if !a.is_loopback() && !a.is_link_local() => Some(a),
            _ => None,
        })
        .ok_or_else(|| bad(format!("the default route's interface (#{oif}) has no IPv4 address: pass --node-ip")))
}
