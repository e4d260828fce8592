//! The command line (issue #13, items 2 and 4): `agent` (the node agent, in
//! the foreground), `status` and `routes` (ask the running agent on its
//! control socket), `config show|set`, `peer add|remove`, `nodes`,
//! `completions`. Tables by default, `--json` for scripts. Exit codes: 0 ok,
//! 2 usage or invalid config (or flag), 1 etcd, the agent or the kernel.
//!
//! `main` looks at `CNI_COMMAND` first: with it set the binary is the CNI
//! plugin and nothing here runs.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use etcd_kv::flags::{Endpoints, TlsFlags};
use etcd_kv::EtcdConfig;

use crate::agent::control::{self, RoutesReply, StatusReply};
use crate::agent::AgentFlags;
use crate::cluster::{self, BgpStore, ClusterBgpConfig, ConfigError, GlobalPeer, NodeRecord, RouteReflector};
use crate::Error;

#[derive(Debug, Parser)]
#[command(
    name = "cni-bgp",
    about = "Routed networking with our own BGP speaker: the node agent, its status, and the cluster-wide BGP config in etcd",
    after_help = "With CNI_COMMAND set, cni-bgp is the CNI plugin (type \"cni-bgp\").",
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// The etcd flags and output format every command shares.
#[derive(Debug, Clone, clap::Args)]
pub struct Common {
    /// etcd endpoints, comma-separated http:// or https:// URLs
    #[arg(long, value_name = "URLS", default_value = "http://127.0.0.1:2379")]
    pub etcd_endpoints: Endpoints,
    /// Where `bgp/config` and `bgp/nodes/` live (the cluster IPAM's prefix)
    #[arg(long, value_name = "PREFIX", default_value = cluster::DEFAULT_PREFIX, value_parser = clap::builder::NonEmptyStringValueParser::new())]
    pub etcd_prefix: String,
    #[command(flatten)]
    pub tls: TlsFlags,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

/// How `status` and `routes` find the agent.
#[derive(Debug, Clone, clap::Args)]
pub struct AgentClient {
    /// The agent's state directory (where control.sock is)
    #[arg(long, value_name = "DIR", default_value = crate::status::DEFAULT_STATE_DIR)]
    pub state_dir: PathBuf,
    /// Print JSON instead of a table
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Runs the node agent in the foreground (one per host): registers the node, peers over BGP,
    /// advertises its IPAM blocks and installs learned routes
    Agent(Box<AgentFlags>),
    /// The running agent's BGP sessions: address, AS, state, uptime, prefixes, last error
    Status(AgentClient),
    /// The running agent's routes: learned (the Loc-RIB) and installed in the kernel
    Routes(AgentClient),
    /// The cluster-wide BGP config: default AS, node-to-node mesh, route reflectors
    Config {
        #[command(subcommand)]
        cmd: ConfigCmd,
    },
    /// External peers of every node (or of one node, --node)
    Peer {
        #[command(subcommand)]
        cmd: PeerCmd,
    },
    /// The registered nodes (live agents): name, addresses, AS, reflector
    Nodes(Common),
    /// Prints a shell completion script
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
}

#[derive(Debug, Subcommand)]
pub enum ConfigCmd {
    /// Prints the config (the defaults when none is stored)
    Show(Common),
    /// Changes the config; what is not given stays
    Set {
        #[command(flatten)]
        common: Common,
        /// The cluster's AS (1..=4294967295, not 23456)
        #[arg(long = "as", value_name = "N")]
        as_number: Option<u32>,
        /// iBGP full mesh between all nodes
        #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
        mesh: Option<bool>,
        /// Makes NODE a route reflector (repeatable); CLUSTER_ID is required when there are
        /// several reflectors
        #[arg(long, value_name = "NODE[,CLUSTER_ID]", value_parser = parse_reflector)]
        route_reflector: Vec<RouteReflector>,
        /// NODE is no longer a route reflector (repeatable)
        #[arg(long, value_name = "NODE")]
        no_route_reflector: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum PeerCmd {
    /// Adds an external peer
    Add {
        #[command(flatten)]
        common: Common,
        /// The peer's address and AS
        #[arg(value_name = "ADDR,AS", value_parser = parse_peer)]
        peer: (IpAddr, u32),
        /// Only this node peers with it
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
    },
    /// Removes an external peer
    Remove {
        #[command(flatten)]
        common: Common,
        #[arg(value_name = "ADDR")]
        address: IpAddr,
        /// The peer of this node only (as it was added)
        #[arg(long, value_name = "NAME")]
        node: Option<String>,
    },
}

fn parse_on_off(v: &str) -> Result<bool, String> {
    match v {
        "on" | "true" => Ok(true),
        "off" | "false" => Ok(false),
        _ => Err(format!("{v:?} is not on or off")),
    }
}

fn parse_reflector(v: &str) -> Result<RouteReflector, String> {
    let (node, id) = match v.split_once(',') {
        Some((n, id)) => {
            let id: Ipv4Addr = id.trim().parse().map_err(|_| format!("cluster ID {id:?} is not an IPv4 address"))?;
            (n.trim(), Some(id))
        }
        None => (v.trim(), None),
    };
    cluster::check_node_name("NODE", node).map_err(|e| e.reason)?;
    Ok(RouteReflector { node: node.to_string(), cluster_id: id })
}

fn parse_peer(v: &str) -> Result<(IpAddr, u32), String> {
    let (a, n) = v.split_once(',').ok_or_else(|| format!("{v:?} is not ADDR,AS"))?;
    let addr: IpAddr = a.trim().parse().map_err(|_| format!("{a:?} is not an IP address"))?;
    let n: u32 = n.trim().parse().map_err(|_| format!("AS {n:?} is not a number in 1..=4294967295"))?;
    cluster::check_as("AS", n).map_err(|e| e.reason)?;
    Ok((addr, n))
}

impl Cli {
    /// The completion script for `shell`.
    pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "cni-bgp", &mut out);
        out
    }
}

/// A failed command: its message and exit code.
#[derive(Debug)]
pub struct Failure {
    pub code: i32,
    pub message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let code = match &e {
            Error::Invalid(_) | Error::Flag(_) => 2,
            Error::Etcd(etcd_kv::Error::InvalidSettings(_)) => 2,
            _ => 1,
        };
        Failure { code, message: e.to_string() }
    }
}

impl Common {
    fn store(&self) -> Result<BgpStore, Failure> {
        let cfg: EtcdConfig =
            self.tls.config(&self.etcd_endpoints, &self.etcd_prefix).map_err(|m| Failure { code: 2, message: m })?;
        Ok(BgpStore::new(&cfg)?)
    }
}

/// Runs one admin command; the text to print on success.
pub async fn run(cmd: Cmd) -> Result<String, Failure> {
    match cmd {
        Cmd::Agent(flags) => {
            crate::agent::run(*flags).await?;
            Ok(String::new())
        }
        Cmd::Status(c) => {
            let r: StatusReply = ask(&c, "status")?;
            Ok(if c.json { json(&r) } else { status_table(&r) })
        }
        Cmd::Routes(c) => {
            let r: RoutesReply = ask(&c, "routes")?;
            Ok(if c.json { json(&r) } else { routes_table(&r) })
        }
        Cmd::Completions { shell } => Ok(String::from_utf8_lossy(&Cli::completions(shell)).into_owned()),
        Cmd::Nodes(common) => {
            let (nodes, bad, _) = common.store()?.nodes().await?;
            for (name, err) in &bad {
                eprintln!("cni-bgp nodes: ignoring node {name}: {err}");
            }
            Ok(if common.json { json(&nodes) } else { nodes_table(&nodes) })
        }
        Cmd::Config { cmd: ConfigCmd::Show(common) } => {
            let (c, _) = common.store()?.config().await?;
            Ok(show(&c, common.json))
        }
        Cmd::Config { cmd: ConfigCmd::Set { common, as_number, mesh, route_reflector, no_route_reflector } } => {
            let c = common
                .store()?
                .update_config(|c| {
                    if let Some(n) = as_number {
                        c.as_number = n;
                    }
                    if let Some(m) = mesh {
                        c.node_to_node_mesh = m;
                    }
                    for n in &no_route_reflector {
                        let before = c.route_reflectors.len();
                        c.route_reflectors.retain(|r| &r.node != n);
                        if c.route_reflectors.len() == before {
                            return Err(ConfigError {
                                key: "--no-route-reflector".into(),
                                reason: format!("node {n} is not a route reflector"),
                            });
                        }
                    }
                    for r in &route_reflector {
                        match c.route_reflectors.iter_mut().find(|x| x.node == r.node) {
                            Some(x) => x.cluster_id = r.cluster_id,
                            None => c.route_reflectors.push(r.clone()),
                        }
                    }
                    Ok(())
                })
                .await?;
            Ok(show(&c, common.json))
        }
        Cmd::Peer { cmd: PeerCmd::Add { common, peer: (addr, n), node } } => {
            let c = common
                .store()?
                .update_config(|c| {
                    c.peers.push(GlobalPeer { address: addr.to_string(), as_number: n, node: node.clone() });
                    Ok(())
                })
                .await?;
            Ok(show(&c, common.json))
        }
        Cmd::Peer { cmd: PeerCmd::Remove { common, address, node } } => {
            let c = common
                .store()?
                .update_config(|c| {
                    let before = c.peers.len();
                    c.peers.retain(|p| !(p.address.parse::<IpAddr>().ok() == Some(address) && p.node == node));
                    if c.peers.len() == before {
                        let scope = node.as_deref().map(|n| format!(" of node {n}")).unwrap_or_default();
                        return Err(ConfigError { key: "ADDR".into(), reason: format!("no peer {address}{scope}") });
                    }
                    Ok(())
                })
                .await?;
            Ok(show(&c, common.json))
        }
    }
}

/// How long `status` and `routes` wait for the agent.
const AGENT_TIMEOUT: Duration = Duration::from_secs(10);

fn ask<T: for<'de> serde::Deserialize<'de>>(c: &AgentClient, request: &str) -> Result<T, Failure> {
    control::ask(&c.state_dir, request, AGENT_TIMEOUT).map_err(|e| Failure { code: 1, message: e.to_string() })
}

/// `3d04h`, `2h05m`, `4m07s`, `12s`.
fn duration(secs: u64) -> String {
    let (d, h, m, s) = (secs / 86400, secs / 3600 % 24, secs / 60 % 60, secs % 60);
    match (d, h, m) {
        (0, 0, 0) => format!("{s}s"),
        (0, 0, _) => format!("{m}m{s:02}s"),
        (0, _, _) => format!("{h}h{m:02}m"),
        _ => format!("{d}d{h:02}h"),
    }
}

fn status_table(r: &StatusReply) -> String {
    let n = &r.node;
    let role = match (n.route_reflector, n.cluster_id) {
        (true, Some(id)) => format!(", route reflector (cluster {id})"),
        (true, None) => ", route reflector".into(),
        _ => String::new(),
    };
    let v6 = n.ipv6.map(|a| format!(" {a}")).unwrap_or_default();
    let mut out = format!(
        "node {} {}{v6} AS {} router ID {} port {}{role}, {}\n\n",
        n.name,
        n.ipv4,
        n.as_number,
        n.router_id,
        n.listen_port,
        if n.ready { "ready" } else { "not ready" }
    );
    let mut rows =
        vec![["PEER", "AS", "KIND", "STATE", "UPTIME", "RECEIVED", "SENT", "LAST ERROR"].map(String::from).to_vec()];
    for p in &r.peers {
        rows.push(vec![
            p.address.to_string(),
            p.asn.to_string(),
            p.kind.clone(),
            p.state.clone(),
            p.uptime_secs.map(duration).unwrap_or_else(|| "-".into()),
            p.prefixes_received.to_string(),
            p.prefixes_sent.to_string(),
            p.last_error.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    out += &table(&rows);
    out
}

fn routes_table(r: &RoutesReply) -> String {
    let mut rows = vec![["PREFIX", "NEXT HOP", "FROM", "AS PATH", "LOCAL PREF"].map(String::from).to_vec()];
    for l in &r.learned {
        rows.push(vec![
            l.prefix.to_string(),
            l.next_hop.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            l.peer.map(|a| a.to_string()).unwrap_or_else(|| "local".into()),
            if l.as_path.is_empty() {
                "-".into()
            } else {
                l.as_path.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(" ")
            },
            l.local_pref.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
        ]);
    }
    let mut out = format!("learned ({}):\n", r.learned.len());
    out += &table(&rows);
    let mut rows = vec![["PREFIX", "KIND", "VIA", "DEV"].map(String::from).to_vec()];
    for i in &r.installed {
        rows.push(vec![
            i.prefix.to_string(),
            i.kind.clone(),
            i.via.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            i.dev.clone().unwrap_or_else(|| "-".into()),
        ]);
    }
    out += &format!("\ninstalled in the kernel, protocol {} ({}):\n", crate::fib::PROTOCOL, r.installed.len());
    out += &table(&rows);
    out
}

fn json<T: serde::Serialize>(v: &T) -> String {
    serde_json::to_string_pretty(v).expect("serializable") + "\n"
}

fn table(rows: &[Vec<String>]) -> String {
    let cols = rows.iter().map(|r| r.len()).max().unwrap_or(0);
    let widths: Vec<usize> =
        (0..cols).map(|i| rows.iter().filter_map(|r| r.get(i)).map(|c| c.len()).max().unwrap_or(0)).collect();
    let mut out = String::new();
    for r in rows {
        let line: Vec<String> = r.iter().enumerate().map(|(i, c)| format!("{c:<w$}", w = widths[i])).collect();
        out += line.join("  ").trim_end();
        out.push('\n');
    }
    out
}

fn show(c: &ClusterBgpConfig, as_json: bool) -> String {
    if as_json {
        return json(c);
    }
    let mut out = table(&[
        vec!["AS".into(), c.as_number.to_string()],
        vec!["NODE-TO-NODE MESH".into(), if c.node_to_node_mesh { "on" } else { "off" }.into()],
    ]);
    let mut peers = vec![vec!["PEER".to_string(), "AS".into(), "NODE".into()]];
    for p in &c.peers {
        peers.push(vec![p.address.clone(), p.as_number.to_string(), p.node.clone().unwrap_or_else(|| "(all)".into())]);
    }
    out += "\n";
    out += &table(&peers);
    let mut rrs = vec![vec!["ROUTE REFLECTOR".to_string(), "CLUSTER ID".into()]];
    for r in &c.route_reflectors {
        rrs.push(vec![r.node.clone(), r.cluster_id.map(|i| i.to_string()).unwrap_or_else(|| "(router ID)".into())]);
    }
    out += "\n";
    out += &table(&rrs);
    out
}

fn nodes_table(nodes: &[NodeRecord]) -> String {
    let mut rows = vec![vec!["NODE".to_string(), "IPV4".into(), "IPV6".into(), "AS".into(), "ROUTE REFLECTOR".into()]];
    for n in nodes {
        rows.push(vec![
            n.name.clone(),
            n.ipv4.to_string(),
            n.ipv6.map(|a| a.to_string()).unwrap_or_else(|| "-".into()),
            n.as_number.map(|a| a.to_string()).unwrap_or_else(|| "(cluster)".into()),
            match (n.route_reflector, n.cluster_id) {
                (false, _) => "-".into(),
                (true, Some(id)) => format!("yes, cluster {id}"),
                (true, None) => "yes".into(),
            },
        ]);
    }
    table(&rows)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(v: &[&str]) -> String {
        Cli::try_parse_from(std::iter::once("cni-bgp").chain(v.iter().copied())).unwrap_err().to_string()
    }

    #[test]
    fn bad_values_are_usage_errors_naming_the_argument() {
        assert!(err(&["peer", "add", "10.0.0.300,65001"]).contains("is not an IP address"));
        assert!(err(&["peer", "add", "10.0.0.3,0"]).contains("AS 0 is reserved"));
        assert!(err(&["peer", "add", "10.0.0.3,23456"]).contains("AS_TRANS"));
        assert!(err(&["peer", "add", "10.0.0.3"]).contains("is not ADDR,AS"));
        assert!(err(&["config", "set", "--mesh", "maybe"]).contains("is not on or off"));
        assert!(err(&["config", "set", "--route-reflector", "n1,1.2.3"]).contains("cluster ID"));
        assert!(err(&["config", "set", "--as", "4294967296"]).contains("--as"));
    }

    #[test]
    fn defaults_and_values_parse() {
        let c = Cli::try_parse_from([
            "cni-bgp",
            "config",
            "set",
            "--as",
            "65000",
            "--mesh",
            "off",
            "--route-reflector",
            "rr1,10.0.0.1",
        ])
        .unwrap();
        let Cmd::Config { cmd: ConfigCmd::Set { common, as_number, mesh, route_reflector, .. } } = c.cmd else {
            panic!()
        };
        assert_eq!(common.etcd_prefix, "/cni-ipam");
        assert_eq!(common.etcd_endpoints.0, ["http://127.0.0.1:2379"]);
        assert_eq!((as_number, mesh), (Some(65000), Some(false)));
        assert_eq!(
            route_reflector,
            [RouteReflector { node: "rr1".into(), cluster_id: Some(Ipv4Addr::new(10, 0, 0, 1)) }]
        );
    }

    #[test]
    fn the_config_table_shows_every_field() {
        let mut c = ClusterBgpConfig::default();
        c.peers.push(GlobalPeer { address: "192.0.2.1".into(), as_number: 65001, node: Some("n1".into()) });
        c.route_reflectors.push(RouteReflector { node: "rr1".into(), cluster_id: None });
        let t = show(&c, false);
        assert!(t.contains("AS                 64512"), "{t}");
        assert!(t.contains("NODE-TO-NODE MESH  on"), "{t}");
        assert!(t.contains("192.0.2.1  65001  n1"), "{t}");
        assert!(t.contains("rr1              (router ID)"), "{t}");
    }
}
