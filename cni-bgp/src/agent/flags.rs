//! `cni-bgp agent`'s flags (issue #13, item 2) and their checks: a bad
//! value is refused at start with a message naming the flag.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::PathBuf;
use std::time::Duration;

use etcd_kv::flags::{Endpoints, TlsFlags};
use etcd_kv::EtcdConfig;

use crate::cluster::{self, ConfigError};

/// The BGP port.
pub const BGP_PORT: u16 = 179;

/// `cni-bgp agent`'s flags.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentFlags {
    /// etcd endpoints, comma-separated http:// or https:// URLs
    #[arg(long, value_name = "URLS", default_value = "http://127.0.0.1:2379")]
    pub etcd_endpoints: Endpoints,
    /// Where `bgp/config`, `bgp/nodes/` and the IPAM blocks live (the cluster IPAM's prefix)
    #[arg(long, value_name = "PREFIX", default_value = cluster::DEFAULT_PREFIX, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub etcd_prefix: String,
    #[command(flatten)]
    pub tls: TlsFlags,
    /// This node's name: its key in etcd and the `host` of its IPAM blocks [default: the hostname]
    #[arg(long, value_name = "NAME")]
    pub node_name: Option<String>,
    /// The IPv4 address peers connect to, also the router ID [default: the IPv4 address of the
    /// default route's interface]
    #[arg(long, value_name = "ADDR")]
    pub node_ip: Option<Ipv4Addr>,
    /// The IPv6 address peers connect to (IPv6 sessions with nodes that have one too)
    #[arg(long, value_name = "ADDR")]
    pub node_ipv6: Option<Ipv6Addr>,
    /// This node's AS [default: the cluster's asNumber]
    #[arg(long = "as", value_name = "N")]
    pub as_number: Option<u32>,
    /// The TCP port the agent listens on and connects to on other nodes
    #[arg(long, value_name = "PORT", default_value_t = BGP_PORT)]
    pub listen_port: u16,
    /// An external peer of this node only (repeatable); PORT defaults to 179
    #[arg(long, value_name = "ADDR,AS[,PORT]", value_parser = parse_peer)]
    pub peer: Vec<FlagPeer>,
    /// This node is a route reflector (RFC 4456): it peers with every node, the others only with
    /// reflectors
    #[arg(long)]
    pub route_reflector: bool,
    /// The reflector's cluster ID (with --route-reflector) [default: the routeReflectors entry's,
    /// else the router ID]
    #[arg(long, value_name = "ID")]
    pub cluster_id: Option<Ipv4Addr>,
    /// Where status.sock and control.sock live
    #[arg(long, value_name = "DIR", default_value = crate::status::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// The hold time proposed to peers, in seconds (0, or 3 and more)
    #[arg(long, value_name = "SECS", default_value_t = 90)]
    pub hold_time: u16,
    /// The graceful-restart time advertised to peers, in seconds (0: no graceful restart)
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub graceful_restart_time: u16,
    /// TTL of the node's registration in etcd, in seconds: a node whose agent stopped is unpeered
    /// by the others after this
    #[arg(long, value_name = "SECS", default_value_t = 15)]
    pub registration_ttl: u64,
    /// On SIGTERM/SIGINT, remove the registration at once (the node is being decommissioned)
    /// instead of letting it lapse after --registration-ttl
    #[arg(long)]
    pub deregister_on_exit: bool,
    /// Log level (error, warn, info, debug, trace); logs go to stderr
    #[arg(long, value_name = "LEVEL", default_value = "info")]
    pub log_level: tracing::Level,
}

/// A `--peer ADDR,AS[,PORT]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FlagPeer {
    pub address: IpAddr,
    pub asn: u32,
    pub port: u16,
}

fn parse_peer(v: &str) -> Result<FlagPeer, String> {
    let mut it = v.split(',');
    let (Some(a), Some(n)) = (it.next(), it.next()) else {
        return Err(format!("{v:?} is not ADDR,AS[,PORT]"));
    };
    let address: IpAddr = a.trim().parse().map_err(|_| format!("{a:?} is not an IP address"))?;
    let asn: u32 = n.trim().parse().map_err(|_| format!("AS {n:?} is not a number in 1..=4294967295"))?;
    cluster::check_as("AS", asn).map_err(|e| e.reason)?;
    let port = match it.next() {
        Some(p) => p.trim().parse().ok().filter(|p| *p != 0).ok_or_else(|| format!("port {p:?} is not 1..=65535"))?,
        None => BGP_PORT,
    };
    if it.next().is_some() {
        return Err(format!("{v:?} is not ADDR,AS[,PORT]"));
    }
    Ok(FlagPeer { address, asn, port })
}

fn bad(key: &str, reason: impl Into<String>) -> ConfigError {
    ConfigError { key: key.into(), reason: reason.into() }
}

/// The flags once checked, with the defaults that need the host resolved.
#[derive(Debug, Clone)]
pub struct AgentConfig {
    pub etcd: EtcdConfig,
    pub node_name: String,
    pub node_ip: Ipv4Addr,
    pub node_ipv6: Option<Ipv6Addr>,
    pub as_number: Option<u32>,
    pub listen_port: u16,
    pub peers: Vec<FlagPeer>,
    pub route_reflector: bool,
    pub cluster_id: Option<Ipv4Addr>,
    pub state_dir: PathBuf,
    pub hold_time: u16,
    pub graceful_restart_time: u16,
    pub registration_ttl: Duration,
    pub deregister_on_exit: bool,
}

impl AgentFlags {
    /// Checks every flag that needs no host lookup; `node_name` and
    /// `node_ip` are the resolved defaults (see [`super::host`]).
    pub fn check(&self, node_name: String, node_ip: Ipv4Addr) -> Result<AgentConfig, ConfigError> {
        let etcd = self
            .tls
            .config(&self.etcd_endpoints, &self.etcd_prefix)
            .map_err(|m| bad("--etcd-endpoints/--etcd-cafile", m))?;
        cluster::check_node_name("--node-name", &node_name)?;
        if let Some(n) = self.as_number {
            cluster::check_as("--as", n)?;
        }
        if self.listen_port == 0 {
            return Err(bad("--listen-port", "port 0 is not a port; use 1..=65535"));
        }
        if node_ip.is_unspecified() || node_ip.is_multicast() || node_ip.is_broadcast() {
            return Err(bad("--node-ip", format!("{node_ip} is not a unicast address")));
        }
        if let Some(a) = self.node_ipv6 {
            if a.is_unspecified() || a.is_multicast() || (a.segments()[0] & 0xffc0) == 0xfe80 {
                return Err(bad("--node-ipv6", format!("{a} is not a global unicast address")));
            }
        }
        let mut seen = HashSet::new();
        for p in &self.peer {
            if !seen.insert(p.address) {
                return Err(bad("--peer", format!("duplicate peer {}", p.address)));
            }
            if p.address == IpAddr::V4(node_ip) || Some(p.address) == self.node_ipv6.map(IpAddr::V6) {
                return Err(bad("--peer", format!("{} is this node's own address", p.address)));
            }
        }
        if self.cluster_id.is_some() && !self.route_reflector {
            return Err(bad("--cluster-id", "only a route reflector has a cluster ID: add --route-reflector"));
        }
        if self.hold_time != 0 && self.hold_time < 3 {
            return Err(bad(
                "--hold-time",
                format!("{} s: the hold time is 0 or at least 3 s (RFC 4271)", self.hold_time),
            ));
        }
        if self.graceful_restart_time > 4095 {
            return Err(bad("--graceful-restart-time", "at most 4095 s (a 12-bit field, RFC 4724)"));
        }
        if self.registration_ttl < 2 {
            return Err(bad("--registration-ttl", "at least 2 s"));
        }
        Ok(AgentConfig {
            etcd,
            node_name,
            node_ip,
            node_ipv6: self.node_ipv6,
            as_number: self.as_number,
            listen_port: self.listen_port,
            peers: self.peer.clone(),
            route_reflector: self.route_reflector,
            cluster_id: self.cluster_id,
            state_dir: self.state_dir.clone(),
            hold_time: self.hold_time,
            graceful_restart_time: self.graceful_restart_time,
            registration_ttl: Duration::from_secs(self.registration_ttl),
            deregister_on_exit: self.deregister_on_exit,
        })
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cmd {
        #[command(flatten)]
        f: AgentFlags,
    }

    fn parse(v: &[&str]) -> Result<AgentFlags, String> {
        Cmd::try_parse_from(std::iter::once("agent").chain(v.iter().copied())).map(|c| c.f).map_err(|e| e.to_string())
    }

    fn check(v: &[&str]) -> Result<AgentConfig, String> {
        parse(v)?.check("n1".into(), Ipv4Addr::new(10, 0, 0, 1)).map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let c = check(&[]).unwrap();
        assert_eq!(c.etcd.prefix, "/cni-ipam");
        assert_eq!(c.etcd.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!((c.listen_port, c.hold_time, c.graceful_restart_time), (179, 90, 120));
        assert_eq!(c.state_dir, PathBuf::from("/run/cni-bgp"));
        assert_eq!((c.as_number, c.route_reflector, c.cluster_id), (None, false, None));
        assert_eq!(c.registration_ttl, Duration::from_secs(15));
    }

    #[test]
    fn peers_parse() {
        let c = check(&["--peer", "10.0.0.9,65009", "--peer", "fd00::9, 65010, 1790"]).unwrap();
        assert_eq!(
            c.peers,
            [
                FlagPeer { address: "10.0.0.9".parse().unwrap(), asn: 65009, port: 179 },
                FlagPeer { address: "fd00::9".parse().unwrap(), asn: 65010, port: 1790 }
            ]
        );
    }

    #[test]
    fn bad_flags_are_refused_naming_the_flag() {
        let e = check(&["--as", "0"]).unwrap_err();
        assert!(e.starts_with("--as: AS 0 is reserved"), "{e}");
        let e = check(&["--as", "23456"]).unwrap_err();
        assert!(e.starts_with("--as: AS 23456 is AS_TRANS"), "{e}");
        let e = check(&["--as", "4294967296"]).unwrap_err();
        assert!(e.contains("--as"), "{e}");
        let e = check(&["--peer", "10.0.0.300,65001"]).unwrap_err();
        assert!(e.contains("--peer") && e.contains("is not an IP address"), "{e}");
        let e = check(&["--peer", "10.0.0.3"]).unwrap_err();
        assert!(e.contains("--peer") && e.contains("is not ADDR,AS"), "{e}");
        let e = check(&["--peer", "10.0.0.3,0"]).unwrap_err();
        assert!(e.contains("--peer") && e.contains("AS 0"), "{e}");
        let e = check(&["--peer", "10.0.0.3,65001", "--peer", "10.0.0.3,65002"]).unwrap_err();
        assert_eq!(e, "--peer: duplicate peer 10.0.0.3");
        let e = check(&["--peer", "10.0.0.1,65001"]).unwrap_err();
        assert_eq!(e, "--peer: 10.0.0.1 is this node's own address");
        let e = check(&["--cluster-id", "1.1.1.1"]).unwrap_err();
        assert!(e.starts_with("--cluster-id: only a route reflector"), "{e}");
        check(&["--cluster-id", "1.1.1.1", "--route-reflector"]).unwrap();
        let e = check(&["--hold-time", "2"]).unwrap_err();
        assert!(e.starts_with("--hold-time:"), "{e}");
        let e = check(&["--listen-port", "0"]).unwrap_err();
        assert!(e.starts_with("--listen-port:"), "{e}");
        let e = check(&["--node-ip", "10.0.0.256"]).unwrap_err();
        assert!(e.contains("--node-ip"), "{e}");
        let e = check(&["--node-ipv6", "fe80::1"]).unwrap_err();
        assert!(e.starts_with("--node-ipv6:"), "{e}");
        let e = parse(&["--etcd-cafile", "/ca"]).unwrap().check("n1".into(), Ipv4Addr::new(10, 0, 0, 1)).unwrap_err();
        assert!(e.to_string().contains("https://"), "{e}");
        let e = parse(&[]).unwrap().check("a/b".into(), Ipv4Addr::new(10, 0, 0, 1)).unwrap_err();
        assert!(e.to_string().starts_with("--node-name:"), "{e}");
    }
}
