//! Who this node peers with: a pure function of the cluster config, the
//! registered nodes, this node and its `--peer` flags (no I/O, unit-tested).
//!
//! * No route reflector anywhere: every node peers with every other node
//!   when `nodeToNodeMesh` is on (iBGP full mesh), with none when it is off.
//! * With reflectors (nodes registered with `--route-reflector` or listed in
//!   `routeReflectors`): a client peers only with the reflectors; a
//!   reflector peers with the other reflectors (as non-clients) and with
//!   every client (as its route-reflector clients). The mesh flag does not
//!   matter then.
//! * External peers: the config's `peers` without a `node` or with this
//!   node's, and the `--peer` flags. Only local routes are exported to them.
//! * Never this node itself. A node with an IPv6 address, when this node
//!   has one too, gets a second session over IPv6.
//! * One session per address. An external address named twice for this
//!   node (a `peers` entry and a `--peer` flag, or a global and a node
//!   `peers` entry) with a different AS or port is refused by
//!   [`check_duplicates`] (at start, and live: the running config stays);
//!   with the same AS and port it is one peer, the first source's (config
//!   entries in their order, then flags). A node's address wins over an
//!   external one.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::cluster::{ClusterBgpConfig, ConfigError, NodeRecord};

use super::flags::{FlagPeer, BGP_PORT};

/// This node, as the peer selection needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Me {
    pub name: String,
    pub ipv4: Ipv4Addr,
    pub ipv6: Option<Ipv6Addr>,
    /// `--as`, if given (else the cluster's).
    pub as_number: Option<u32>,
    /// `--route-reflector`.
    pub route_reflector: bool,
    /// The port every node listens on (`--listen-port`; one per cluster).
    pub port: u16,
}

/// One wanted session.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DesiredPeer {
    pub address: IpAddr,
    pub asn: u32,
    pub port: u16,
    /// The peer is our route-reflector client.
    pub rr_client: bool,
    /// Not a cluster node: export only local routes.
    pub external: bool,
    /// "mesh", "route reflector", "route reflector client", "global peer",
    /// "node peer" (config peer of this node only), "flag peer" (`--peer`).
    pub kind: String,
}

/// One external peer of this node as the user wrote it: (where, address, AS, port).
struct Source {
    label: String,
    address: IpAddr,
    asn: u32,
    port: u16,
    from_config: bool,
}

fn external_sources(cfg: &ClusterBgpConfig, node: &str, flags: &[FlagPeer]) -> Vec<Source> {
    let mut out = Vec::new();
    for (i, p) in cfg.peers.iter().enumerate() {
        if p.node.as_ref().is_some_and(|n| n != node) {
            continue;
        }
        let Ok(address) = p.address.parse::<IpAddr>() else { continue };
        out.push(Source { label: format!("peers[{i}]"), address, asn: p.as_number, port: BGP_PORT, from_config: true });
    }
    for f in flags {
        let port = if f.port == BGP_PORT { String::new() } else { format!(",{}", f.port) };
        out.push(Source {
            label: format!("--peer {},{}{port}", f.address, f.asn),
            address: f.address,
            asn: f.asn,
            port: f.port,
            from_config: false,
        });
    }
    out
}

/// The external peers of node `node` from the config and its `--peer`
/// flags name each address once, or twice with the same AS and port (one
/// peer then: the first source's). An address named with two ASes (or
/// ports) is an error naming both sources, keyed by the config entry.
pub fn check_duplicates(cfg: &ClusterBgpConfig, node: &str, flags: &[FlagPeer]) -> Result<(), ConfigError> {
    let sources = external_sources(cfg, node, flags);
    for (j, b) in sources.iter().enumerate() {
        let Some(a) = sources[..j].iter().find(|a| a.address == b.address) else { continue };
        if a.asn == b.asn && a.port == b.port {
            continue;
        }
        // Key: the config entry (what a live change is refused for).
        let (key, other) = if b.from_config { (b, a) } else { (a, b) };
        return Err(ConfigError {
            key: key.label.clone(),
            reason: format!(
                "peer {} AS {} port {} is also `{}` with AS {} port {}: one session per address; remove one",
                key.address, key.asn, key.port, other.label, other.asn, other.port
            ),
        });
    }
    Ok(())
}

/// Whether `name` reflects: registered as one, or listed in the config.
pub fn is_reflector(cfg: &ClusterBgpConfig, name: &str, registered: bool) -> bool {
    registered || cfg.route_reflectors.iter().any(|r| r.node == name)
}

/// The sessions this node wants, in a stable order (nodes by name, then
/// config peers, then flags).
pub fn desired_peers(cfg: &ClusterBgpConfig, nodes: &[NodeRecord], me: &Me, flags: &[FlagPeer]) -> Vec<DesiredPeer> {
    let mut out: Vec<DesiredPeer> = Vec::new();
    let mut seen: HashSet<IpAddr> = HashSet::new();
    seen.insert(IpAddr::V4(me.ipv4));
    if let Some(a) = me.ipv6 {
        seen.insert(IpAddr::V6(a));
    }
    let mut push = |p: DesiredPeer, out: &mut Vec<DesiredPeer>| {
        if seen.insert(p.address) {
            out.push(p);
        }
    };
    let i_reflect = is_reflector(cfg, &me.name, me.route_reflector);
    let any_reflector = i_reflect || nodes.iter().any(|n| is_reflector(cfg, &n.name, n.route_reflector));
    let mut sorted: Vec<&NodeRecord> = nodes.iter().filter(|n| n.name != me.name).collect();
    sorted.sort_by(|a, b| a.name.cmp(&b.name));
    for n in sorted {
        let it_reflects = is_reflector(cfg, &n.name, n.route_reflector);
        let (wanted, rr_client, kind) = match (any_reflector, i_reflect, it_reflects) {
            (false, _, _) => (cfg.node_to_node_mesh, false, "mesh"),
            (true, true, true) => (true, false, "route reflector"),
            (true, true, false) => (true, true, "route reflector client"),
            (true, false, true) => (true, false, "route reflector"),
            (true, false, false) => (false, false, ""),
        };
        if !wanted {
            continue;
        }
        let asn = n.as_number.unwrap_or(cfg.as_number);
        let mut addrs = vec![IpAddr::V4(n.ipv4)];
        if let (Some(_), Some(v6)) = (me.ipv6, n.ipv6) {
            addrs.push(IpAddr::V6(v6));
        }
        for address in addrs {
            push(DesiredPeer { address, asn, port: me.port, rr_client, external: false, kind: kind.into() }, &mut out);
        }
    }
    for p in &cfg.peers {
        if p.node.as_ref().is_some_and(|n| *n != me.name) {
            continue;
        }
        // The config was validated: addresses parse.
        let Ok(address) = p.address.parse::<IpAddr>() else { continue };
        let kind = if p.node.is_some() { "node peer" } else { "global peer" };
        push(
            DesiredPeer {
                address,
                asn: p.as_number,
                port: BGP_PORT,
                rr_client: false,
                external: true,
                kind: kind.into(),
            },
            &mut out,
        );
    }
    for f in flags {
        push(
            DesiredPeer {
                address: f.address,
                asn: f.asn,
                port: f.port,
                rr_client: false,
                external: true,
                kind: "flag peer".into(),
            },
            &mut out,
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{GlobalPeer, RouteReflector};

    fn node(name: &str, last: u8) -> NodeRecord {
        NodeRecord {
            name: name.into(),
            ipv4: Ipv4Addr::new(10, 0, 0, last),
            ipv6: None,
            as_number: None,
            route_reflector: false,
            cluster_id: None,
        }
    }

    fn me(name: &str, last: u8) -> Me {
        Me {
            name: name.into(),
            ipv4: Ipv4Addr::new(10, 0, 0, last),
            ipv6: None,
            as_number: None,
            route_reflector: false,
            port: 179,
        }
    }

    fn summary(p: &[DesiredPeer]) -> Vec<(String, u32, bool, bool, &str)> {
        p.iter().map(|p| (p.address.to_string(), p.asn, p.rr_client, p.external, p.kind.as_str())).collect()
    }

    #[test]
    fn full_mesh_never_self_and_mesh_off() {
        let nodes = [node("n1", 1), node("n2", 2), node("n3", 3)];
        let mut cfg = ClusterBgpConfig::default();
        let p = desired_peers(&cfg, &nodes, &me("n1", 1), &[]);
        assert_eq!(
            summary(&p),
            [("10.0.0.2".into(), 64512, false, false, "mesh"), ("10.0.0.3".into(), 64512, false, false, "mesh")]
        );
        assert!(p.iter().all(|p| p.port == 179));
        cfg.node_to_node_mesh = false;
        assert!(desired_peers(&cfg, &nodes, &me("n1", 1), &[]).is_empty());
    }

    #[test]
    fn a_nodes_own_as_is_used() {
        let nodes = [node("n1", 1), NodeRecord { as_number: Some(65002), ..node("n2", 2) }];
        let cfg = ClusterBgpConfig { as_number: 65000, ..Default::default() };
        let p = desired_peers(&cfg, &nodes, &me("n1", 1), &[]);
        assert_eq!(summary(&p), [("10.0.0.2".into(), 65002, false, false, "mesh")]);
    }

    #[test]
    fn reflectors_and_clients() {
        // rr1 registered with --route-reflector, rr2 listed in the config; mesh on is ignored.
        let nodes =
            [NodeRecord { route_reflector: true, ..node("rr1", 1) }, node("rr2", 2), node("c1", 3), node("c2", 4)];
        let cfg = ClusterBgpConfig {
            route_reflectors: vec![RouteReflector { node: "rr2".into(), cluster_id: None }],
            ..Default::default()
        };
        let c1 = desired_peers(&cfg, &nodes, &me("c1", 3), &[]);
        assert_eq!(
            summary(&c1),
            [
                ("10.0.0.1".into(), 64512, false, false, "route reflector"),
                ("10.0.0.2".into(), 64512, false, false, "route reflector")
            ]
        );
        let rr1 = desired_peers(&cfg, &nodes, &Me { route_reflector: true, ..me("rr1", 1) }, &[]);
        assert_eq!(
            summary(&rr1),
            [
                ("10.0.0.3".into(), 64512, true, false, "route reflector client"),
                ("10.0.0.4".into(), 64512, true, false, "route reflector client"),
                ("10.0.0.2".into(), 64512, false, false, "route reflector"),
            ]
        );
        // Sorted by node name: c1, c2, rr2.
        assert_eq!(rr1.iter().map(|p| p.address.to_string()).collect::<Vec<_>>(), ["10.0.0.3", "10.0.0.4", "10.0.0.2"]);
        assert_eq!(rr1.iter().map(|p| p.rr_client).collect::<Vec<_>>(), [true, true, false]);
        // rr2 knows it reflects from the config alone.
        let rr2 = desired_peers(&cfg, &nodes, &me("rr2", 2), &[]);
        assert_eq!(
            rr2.iter().map(|p| (p.address.to_string(), p.rr_client)).collect::<Vec<_>>(),
            [("10.0.0.3".into(), true), ("10.0.0.4".into(), true), ("10.0.0.1".into(), false)]
        );
    }

    #[test]
    fn external_peers_global_scoped_and_flags() {
        let nodes = [node("n1", 1), node("n2", 2)];
        let cfg = ClusterBgpConfig {
            node_to_node_mesh: false,
            peers: vec![
                GlobalPeer { address: "192.0.2.1".into(), as_number: 65001, node: None },
                GlobalPeer { address: "192.0.2.2".into(), as_number: 65002, node: Some("n1".into()) },
                GlobalPeer { address: "192.0.2.3".into(), as_number: 65003, node: Some("n2".into()) },
                // The same address and AS as a flag peer: one session, the config's.
                GlobalPeer { address: "192.0.2.9".into(), as_number: 65009, node: None },
            ],
            ..Default::default()
        };
        let flags = [
            FlagPeer { address: "192.0.2.9".parse().unwrap(), asn: 65009, port: 179 },
            FlagPeer { address: "fd00::9".parse().unwrap(), asn: 65010, port: 1790 },
        ];
        let p = desired_peers(&cfg, &nodes, &me("n1", 1), &flags);
        assert_eq!(
            summary(&p),
            [
                ("192.0.2.1".into(), 65001, false, true, "global peer"),
                ("192.0.2.2".into(), 65002, false, true, "node peer"),
                ("192.0.2.9".into(), 65009, false, true, "global peer"),
                ("fd00::9".into(), 65010, false, true, "flag peer"),
            ]
        );
        assert_eq!(p[3].port, 1790);
    }

    fn peer(a: &str, asn: u32, node: Option<&str>) -> GlobalPeer {
        GlobalPeer { address: a.into(), as_number: asn, node: node.map(Into::into) }
    }

    fn flag(a: &str, asn: u32, port: u16) -> FlagPeer {
        FlagPeer { address: a.parse().unwrap(), asn, port }
    }

    #[test]
    fn an_address_with_two_ases_across_sources_is_refused_naming_both() {
        let cfg = ClusterBgpConfig {
            peers: vec![
                peer("192.0.2.1", 65001, None),
                peer("192.0.2.7", 65007, Some("n2")),
                peer("10.0.0.9", 65002, None),
            ],
            ..Default::default()
        };
        // Config vs flag, different AS.
        let e = check_duplicates(&cfg, "n1", &[flag("10.0.0.9", 65001, 179)]).unwrap_err();
        assert_eq!(e.key, "peers[2]");
        assert_eq!(
            e.to_string(),
            "peers[2]: peer 10.0.0.9 AS 65002 port 179 is also `--peer 10.0.0.9,65001` with AS 65001 port 179: \
             one session per address; remove one"
        );
        // Same AS, another port: refused too, the flag named with its port.
        let e = check_duplicates(&cfg, "n1", &[flag("10.0.0.9", 65002, 1790)]).unwrap_err();
        assert!(e.to_string().contains("`--peer 10.0.0.9,65002,1790`"), "{e}");
        // A node-scoped entry of another node does not concern n1, it does n2.
        check_duplicates(&cfg, "n1", &[flag("192.0.2.7", 65099, 179)]).unwrap();
        let e = check_duplicates(&cfg, "n2", &[flag("192.0.2.7", 65099, 179)]).unwrap_err();
        assert_eq!(e.key, "peers[1]");
        // A global and a node entry of this node with the same address.
        let cfg2 = ClusterBgpConfig {
            peers: vec![peer("192.0.2.1", 65001, None), peer("192.0.2.1", 65003, Some("n1"))],
            ..Default::default()
        };
        let e = check_duplicates(&cfg2, "n1", &[]).unwrap_err();
        assert_eq!(e.key, "peers[1]");
        assert!(e.reason.contains("`peers[0]` with AS 65001"), "{e}");
        check_duplicates(&cfg2, "n2", &[]).unwrap();
    }

    #[test]
    fn the_same_peer_from_two_sources_is_one_peer_the_configs() {
        let cfg = ClusterBgpConfig {
            node_to_node_mesh: false,
            peers: vec![peer("10.0.0.9", 65002, None)],
            ..Default::default()
        };
        let flags = [flag("10.0.0.9", 65002, 179)];
        check_duplicates(&cfg, "n1", &flags).unwrap();
        let p = desired_peers(&cfg, &[], &me("n1", 1), &flags);
        assert_eq!(summary(&p), [("10.0.0.9".into(), 65002, false, true, "global peer")]);
    }

    #[test]
    fn ipv6_sessions_only_when_both_have_ipv6() {
        let v6 = |n: u16| Some(Ipv6Addr::new(0xfd00, 0, 0, 0, 0, 0, 0, n));
        let nodes = [node("n1", 1), NodeRecord { ipv6: v6(2), ..node("n2", 2) }, node("n3", 3)];
        let cfg = ClusterBgpConfig::default();
        let without = desired_peers(&cfg, &nodes, &me("n1", 1), &[]);
        assert_eq!(without.iter().map(|p| p.address.to_string()).collect::<Vec<_>>(), ["10.0.0.2", "10.0.0.3"]);
        let with = desired_peers(&cfg, &nodes, &Me { ipv6: v6(1), ..me("n1", 1) }, &[]);
        assert_eq!(with.iter().map(|p| p.address.to_string()).collect::<Vec<_>>(), ["10.0.0.2", "fd00::2", "10.0.0.3"]);
    }

    #[test]
    fn a_node_record_with_our_address_is_not_a_peer() {
        // A stale record of this host under another name.
        let nodes = [node("n1", 1), node("old-n1", 1)];
        assert!(desired_peers(&ClusterBgpConfig::default(), &nodes, &me("n1", 1), &[]).is_empty());
    }
}
