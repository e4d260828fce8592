//! The cluster-wide BGP config and the node registry in etcd (issue #13,
//! item 2): the data model with its checks (no I/O), and [`BgpStore`], which
//! reads and writes them and turns etcd's watch into typed [`ClusterEvent`]s
//! for the agent.
//!
//! Layout under the prefix (default `/cni-ipam`, the cluster IPAM's, so one
//! `--etcd-prefix` serves both):
//!
//! * `<prefix>/bgp/config`: one JSON [`ClusterBgpConfig`]; absent means the
//!   defaults (AS 64512, mesh on, no peers, no reflectors).
//! * `<prefix>/bgp/nodes/<name>`: one JSON [`NodeRecord`] per live agent,
//!   attached to an etcd lease the agent keeps alive: when the agent dies
//!   the key expires and every other node unpeers it.
//!
//! See docs/cni-bgp.md, "Cluster config".

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use etcd_kv::etcd_client::{Compare, CompareOp, EventType, PutOptions, Txn, TxnOp, WatchOptions};
use etcd_kv::{EtcdClient, EtcdConfig, Retry, Timeouts};
use serde::{Deserialize, Serialize};

use crate::Error;

/// The prefix when `--etcd-prefix` is empty: the cluster IPAM's.
pub const DEFAULT_PREFIX: &str = "/cni-ipam";
/// The cluster's AS when the config does not say (a private AS, Calico's).
pub const DEFAULT_AS: u32 = 64512;
/// AS_TRANS (RFC 6793): a placeholder in 2-octet fields, never a real AS.
pub const AS_TRANS: u32 = 23456;

fn default_as() -> u32 {
    DEFAULT_AS
}
fn default_true() -> bool {
    true
}

/// `<prefix>/bgp/config`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ClusterBgpConfig {
    /// The AS of every node that does not set its own.
    #[serde(default = "default_as")]
    pub as_number: u32,
    /// Whether every node peers with every other node (iBGP full mesh).
    #[serde(default = "default_true")]
    pub node_to_node_mesh: bool,
    /// External peers: of every node, or of one node (`node`).
    #[serde(default)]
    pub peers: Vec<GlobalPeer>,
    /// The nodes that reflect routes (RFC 4456).
    #[serde(default)]
    pub route_reflectors: Vec<RouteReflector>,
}

impl Default for ClusterBgpConfig {
    fn default() -> Self {
        ClusterBgpConfig { as_number: DEFAULT_AS, node_to_node_mesh: true, peers: vec![], route_reflectors: vec![] }
    }
}

/// One external peer. The address stays a string so that a bad one read
/// from etcd is reported by [`ClusterBgpConfig::validate`] naming its key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GlobalPeer {
    pub address: String,
    #[serde(rename = "as")]
    pub as_number: u32,
    /// Only this node peers with it; absent: every node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
}

/// One route-reflector node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct RouteReflector {
    pub node: String,
    /// Reflectors with the same cluster ID are a redundant set (they do not
    /// reflect to each other's clients twice). Required when there are two
    /// or more reflectors; a single one defaults to its router ID.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<Ipv4Addr>,
}

/// A config that breaks a rule; the message names the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {reason}")]
pub struct ConfigError {
    pub key: String,
    pub reason: String,
}

fn bad(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError { key: key.into(), reason: reason.into() }
}

/// The AS rules: 1..=4294967295 and not AS_TRANS.
pub fn check_as(key: &str, n: u32) -> Result<(), ConfigError> {
    match n {
        0 => Err(bad(key, "AS 0 is reserved (RFC 7607); use 1..=4294967295")),
        AS_TRANS => Err(bad(key, "AS 23456 is AS_TRANS (RFC 6793), not a real AS")),
        _ => Ok(()),
    }
}

/// A node name is one etcd key segment: non-empty, no `/`, at most 253
/// bytes (a hostname), no whitespace or control characters.
pub fn check_node_name(key: &str, name: &str) -> Result<(), ConfigError> {
    if name.is_empty() || name.len() > 253 {
        return Err(bad(key, format!("node name {name:?} must be 1 to 253 bytes")));
    }
    if name.chars().any(|c| c == '/' || c.is_whitespace() || c.is_control()) {
        return Err(bad(key, format!("node name {name:?} must not contain '/', spaces or control characters")));
    }
    Ok(())
}

impl ClusterBgpConfig {
    /// Parses the JSON of `<prefix>/bgp/config` and checks it.
    pub fn from_json(bytes: &[u8]) -> Result<ClusterBgpConfig, ConfigError> {
        let c: ClusterBgpConfig = serde_json::from_slice(bytes).map_err(|e| bad("bgp/config", e.to_string()))?;
        c.validate()?;
        Ok(c)
    }

    /// The rules of issue #13: AS in range, peer addresses parse, no
    /// duplicate peer, no duplicate reflector, a cluster ID on every
    /// reflector when there are several.
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_as("asNumber", self.as_number)?;
        let mut seen = HashSet::new();
        for (i, p) in self.peers.iter().enumerate() {
            let addr: IpAddr = p
                .address
                .parse()
                .map_err(|_| bad(format!("peers[{i}].address"), format!("{:?} is not an IP address", p.address)))?;
            check_as(&format!("peers[{i}].as"), p.as_number)?;
            if let Some(n) = &p.node {
                check_node_name(&format!("peers[{i}].node"), n)?;
            }
            if !seen.insert((addr, p.node.clone())) {
                let scope = p.node.as_deref().map(|n| format!(" for node {n}")).unwrap_or_default();
                return Err(bad(format!("peers[{i}]"), format!("duplicate peer {addr}{scope}")));
            }
        }
        let mut nodes = HashSet::new();
        let several = self.route_reflectors.len() > 1;
        for (i, r) in self.route_reflectors.iter().enumerate() {
            check_node_name(&format!("routeReflectors[{i}].node"), &r.node)?;
            if !nodes.insert(&r.node) {
                return Err(bad(format!("routeReflectors[{i}]"), format!("node {} is listed twice", r.node)));
            }
            if several && r.cluster_id.is_none() {
                return Err(bad(
                    format!("routeReflectors[{i}].clusterId"),
                    format!(
                        "route reflector {} needs a cluster ID: with several reflectors each must say which \
                         cluster it serves (the same ID for a redundant pair)",
                        r.node
                    ),
                ));
            }
        }
        Ok(())
    }

    /// The canonical JSON (what the CLI writes).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("serializable")
    }
}

/// `<prefix>/bgp/nodes/<name>`: what a node's agent registers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeRecord {
    pub name: String,
    /// The address its peers connect to.
    pub ipv4: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    /// Its own AS (`--as`); absent: the cluster's.
    #[serde(default, rename = "as", skip_serializing_if = "Option::is_none")]
    pub as_number: Option<u32>,
    /// Started with `--route-reflector`.
    #[serde(default)]
    pub route_reflector: bool,
    /// `--cluster-id`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<Ipv4Addr>,
}

impl NodeRecord {
    pub fn validate(&self) -> Result<(), ConfigError> {
        check_node_name("name", &self.name)?;
        if let Some(n) = self.as_number {
            check_as("as", n)?;
        }
        if self.cluster_id.is_some() && !self.route_reflector {
            return Err(bad("clusterId", "only a route reflector has a cluster ID"));
        }
        Ok(())
    }

    /// Parses a node key's JSON; the record's name must be the key's.
    pub fn from_json(key_name: &str, bytes: &[u8]) -> Result<NodeRecord, ConfigError> {
        let r: NodeRecord =
            serde_json::from_slice(bytes).map_err(|e| bad(format!("bgp/nodes/{key_name}"), e.to_string()))?;
        r.validate().map_err(|e| bad(format!("bgp/nodes/{key_name}: {}", e.key), e.reason))?;
        if r.name != key_name {
            return Err(bad(format!("bgp/nodes/{key_name}: name"), format!("{:?} is not the key's name", r.name)));
        }
        Ok(r)
    }
}

/// A live registration: the etcd lease its key hangs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Registration {
    pub lease: i64,
    pub ttl: Duration,
}

/// What the watch reports, in etcd's order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ClusterEvent {
    /// A node registered (a new key).
    NodeJoined(NodeRecord),
    /// A registered node's record changed (addresses, AS, reflector).
    NodeChanged(NodeRecord),
    /// A node's key is gone: deleted, or its lease expired (agent dead).
    NodeLeft(String),
    /// A node key whose JSON breaks the rules: ignored, with why.
    NodeRejected { name: String, error: String },
    /// A new valid config (the defaults when the key was deleted).
    ConfigChanged(ClusterBgpConfig),
    /// A new config that breaks a rule: NOT to be applied, the running one
    /// stays; `error` names the key.
    ConfigRejected { error: String },
    /// etcd compacted past where the watch was, so events were lost: the
    /// watch ends after this; list again ([`BgpStore::config`],
    /// [`BgpStore::nodes`]) and start a new watch from that read.
    Resync,
}

const RACE_RETRIES: usize = 20;

/// The BGP config and node registry in etcd.
#[derive(Debug)]
pub struct BgpStore {
    etcd: EtcdClient,
    prefix: String,
}

fn cfg_key(prefix: &str) -> String {
    format!("{prefix}/bgp/config")
}
fn nodes_prefix(prefix: &str) -> String {
    format!("{prefix}/bgp/nodes/")
}

impl BgpStore {
    /// Checks the settings; connects lazily. An empty prefix is
    /// [`DEFAULT_PREFIX`]; a trailing `/` is ignored.
    pub fn new(cfg: &EtcdConfig) -> Result<BgpStore, Error> {
        let p = cfg.prefix.trim_end_matches('/');
        let prefix = if p.is_empty() { DEFAULT_PREFIX.to_string() } else { p.to_string() };
        Ok(BgpStore { etcd: EtcdClient::new(cfg, Timeouts::DAEMON)?, prefix })
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    /// The raw config and its mod revision (0: no key, the defaults).
    async fn config_raw(&self) -> Result<(Option<Vec<u8>>, i64, i64), Error> {
        let key = cfg_key(&self.prefix);
        let resp = self
            .etcd
            .call("get BGP config", Retry::Idempotent, move |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok(match resp.kvs().first() {
            Some(kv) => (Some(kv.value().to_vec()), kv.mod_revision(), rev),
            None => (None, 0, rev),
        })
    }

    /// The current config (checked) and the store revision it was read at.
    pub async fn config(&self) -> Result<(ClusterBgpConfig, i64), Error> {
        let (raw, _, rev) = self.config_raw().await?;
        let c = match raw {
            Some(b) => ClusterBgpConfig::from_json(&b)?,
            None => ClusterBgpConfig::default(),
        };
        Ok((c, rev))
    }

    /// Read, edit, check, write if nobody wrote in between (compare on the
    /// key's mod revision), else again: concurrent writers never lose an
    /// update. A stored config that is not valid JSON is an error (fix it
    /// with etcdctl); one that parses but breaks a rule may be edited into
    /// shape (the result is checked, not the start).
    pub async fn update_config<F>(&self, edit: F) -> Result<ClusterBgpConfig, Error>
    where
        F: Fn(&mut ClusterBgpConfig) -> Result<(), ConfigError>,
    {
        let key = cfg_key(&self.prefix);
        for _ in 0..RACE_RETRIES {
            let (raw, mod_rev, _) = self.config_raw().await?;
            let mut c = match &raw {
                Some(b) => serde_json::from_slice(b).map_err(|e| bad("bgp/config", e.to_string()))?,
                None => ClusterBgpConfig::default(),
            };
            edit(&mut c)?;
            c.validate()?;
            let cmp = if raw.is_some() {
                Compare::mod_revision(key.clone(), CompareOp::Equal, mod_rev)
            } else {
                Compare::version(key.clone(), CompareOp::Equal, 0)
            };
            let (k, v) = (key.clone(), c.to_json());
            let won = self
                .etcd
                .call("write BGP config", Retry::Once, move |mut cl| {
                    let txn = Txn::new().when(vec![cmp.clone()]).and_then(vec![TxnOp::put(k.clone(), v.clone(), None)]);
                    async move { cl.txn(txn).await }
                })
                .await?
                .succeeded();
            if won {
                return Ok(c);
            }
        }
        Err(Error::TooManyRaces(RACE_RETRIES))
    }

    /// Registers (or re-registers) a node under a fresh etcd lease of `ttl`
    /// (whole seconds, at least 1). Keep it with [`Self::refresh`] well
    /// within the TTL.
    pub async fn register(&self, rec: &NodeRecord, ttl: Duration) -> Result<Registration, Error> {
        rec.validate()?;
        let secs = ttl.as_secs().max(1) as i64;
        let lease = self
            .etcd
            .call("grant node lease", Retry::Once, move |mut c| async move { c.lease_grant(secs, None).await })
            .await?
            .id();
        let (k, v) = (format!("{}{}", nodes_prefix(&self.prefix), rec.name), serde_json::to_string(rec).unwrap());
        self.etcd
            .call("register node", Retry::Idempotent, move |mut c| {
                let (k, v) = (k.clone(), v.clone());
                async move { c.put(k, v, Some(PutOptions::new().with_lease(lease))).await }
            })
            .await?;
        Ok(Registration { lease, ttl: Duration::from_secs(secs as u64) })
    }

    /// Keeps a registration alive; when its lease is gone (expired while
    /// the agent was stalled, or revoked), registers again and returns the
    /// new one.
    pub async fn refresh(&self, rec: &NodeRecord, reg: Registration) -> Result<Registration, Error> {
        let id = reg.lease;
        let alive = self
            .etcd
            .call("node lease keep-alive", Retry::Idempotent, move |mut c| async move {
                match c.lease_keep_alive(id).await {
                    Ok(_) => Ok(true),
                    Err(etcd_kv::etcd_client::Error::LeaseKeepAliveError(m)) if m == etcd_kv::LEASE_NOT_FOUND => {
                        Ok(false)
                    }
                    Err(e) => Err(e),
                }
            })
            .await?;
        if alive {
            Ok(reg)
        } else {
            tracing::warn!(node = %rec.name, "node lease {id:x} expired: registering again");
            self.register(rec, reg.ttl).await
        }
    }

    /// Removes a registration at once (an orderly agent stop).
    pub async fn deregister(&self, reg: Registration) -> Result<(), Error> {
        let id = reg.lease;
        self.etcd
            .call("revoke node lease", Retry::Idempotent, move |mut c| async move {
                match c.lease_revoke(id).await {
                    Ok(_) => Ok(()),
                    Err(e) if etcd_kv::is_not_found(&e) => Ok(()),
                    Err(e) => Err(e),
                }
            })
            .await?;
        Ok(())
    }

    /// The registered nodes, by name, those whose record breaks the rules
    /// (name, error), and the revision they were read at.
    pub async fn nodes(&self) -> Result<(Vec<NodeRecord>, Vec<(String, String)>, i64), Error> {
        let p = nodes_prefix(&self.prefix);
        let resp = self
            .etcd
            .call("list nodes", Retry::Idempotent, move |mut c| {
                let p = p.clone();
                async move { c.get(p, Some(etcd_kv::etcd_client::GetOptions::new().with_prefix())).await }
            })
            .await?;
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        let (mut ok, mut badr) = (vec![], vec![]);
        let plen = nodes_prefix(&self.prefix).len();
        for kv in resp.kvs() {
            let name = String::from_utf8_lossy(&kv.key()[plen..]).to_string();
            match NodeRecord::from_json(&name, kv.value()) {
                Ok(r) => ok.push(r),
                Err(e) => badr.push((name, e.to_string())),
            }
        }
        ok.sort_by(|a, b| a.name.cmp(&b.name));
        Ok((ok, badr, rev))
    }

    /// Watches `<prefix>/bgp/` from revision `after + 1` (the revision of a
    /// [`Self::config`] or [`Self::nodes`] read). A broken stream is started
    /// again from where it was; a compacted revision gives
    /// [`ClusterEvent::Resync`]. Ends when the receiver is dropped. Must be
    /// called inside a tokio runtime.
    pub fn watch(self: &std::sync::Arc<Self>, after: i64) -> tokio::sync::mpsc::Receiver<ClusterEvent> {
        let (tx, rx) = tokio::sync::mpsc::channel(256);
        let me = self.clone();
        tokio::spawn(async move { me.watch_loop(after, tx).await });
        rx
    }

    async fn watch_loop(&self, mut rev: i64, tx: tokio::sync::mpsc::Sender<ClusterEvent>) {
        let (ckey, np) = (cfg_key(&self.prefix), nodes_prefix(&self.prefix));
        let mut backoff = Duration::from_millis(100);
        loop {
            if tx.is_closed() {
                return;
            }
            let opts = WatchOptions::new().with_prefix().with_start_revision(rev + 1);
            let (handle, mut stream) = match self.etcd.start_watch(format!("{}/bgp/", self.prefix), opts).await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!("BGP config watch: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            };
            loop {
                let resp = tokio::select! {
                    r = stream.message() => r,
                    _ = tx.closed() => return,
                };
                let resp = match resp {
                    Ok(Some(r)) => r,
                    Ok(None) | Err(_) => {
                        tracing::warn!("BGP config watch: stream broke, starting again after revision {rev}");
                        self.etcd.stream_failed(handle);
                        break;
                    }
                };
                if resp.compact_revision() > 0 {
                    // Events were lost: the caller lists again and starts a
                    // new watch from that read.
                    tracing::warn!(
                        from = rev + 1,
                        compacted = resp.compact_revision(),
                        "BGP config watch: start revision was compacted"
                    );
                    let _ = tx.send(ClusterEvent::Resync).await;
                    return;
                }
                if resp.canceled() {
                    break;
                }
                backoff = Duration::from_millis(100);
                for ev in resp.events() {
                    let Some(kv) = ev.kv() else { continue };
                    rev = rev.max(kv.mod_revision());
                    let key = String::from_utf8_lossy(kv.key()).to_string();
                    let put = ev.event_type() == EventType::Put;
                    let event = if key == ckey {
                        if !put {
                            ClusterEvent::ConfigChanged(ClusterBgpConfig::default())
                        } else {
                            match ClusterBgpConfig::from_json(kv.value()) {
                                Ok(c) => ClusterEvent::ConfigChanged(c),
                                Err(e) => {
                                    let error = format!("{ckey}: {e}; the running config stays");
                                    tracing::error!("rejected BGP config change: {error}");
                                    ClusterEvent::ConfigRejected { error }
                                }
                            }
                        }
                    } else if let Some(name) = key.strip_prefix(&np) {
                        if !put {
                            ClusterEvent::NodeLeft(name.to_string())
                        } else {
                            match NodeRecord::from_json(name, kv.value()) {
                                Ok(r) if kv.version() == 1 => ClusterEvent::NodeJoined(r),
                                Ok(r) => ClusterEvent::NodeChanged(r),
                                Err(e) => ClusterEvent::NodeRejected { name: name.to_string(), error: e.to_string() },
                            }
                        }
                    } else {
                        continue;
                    };
                    if tx.send(event).await.is_err() {
                        return;
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(json: &str) -> String {
        ClusterBgpConfig::from_json(json.as_bytes()).unwrap_err().to_string()
    }

    #[test]
    fn absent_keys_are_the_defaults() {
        assert_eq!(ClusterBgpConfig::from_json(b"{}").unwrap(), ClusterBgpConfig::default());
        let d = ClusterBgpConfig::default();
        assert_eq!((d.as_number, d.node_to_node_mesh), (64512, true));
        let c = ClusterBgpConfig::from_json(
            br#"{"asNumber":65000,"nodeToNodeMesh":false,"peers":[{"address":"fd00::1","as":65001,"node":"n1"}],
                "routeReflectors":[{"node":"rr1","clusterId":"10.0.0.1"},{"node":"rr2","clusterId":"10.0.0.1"}]}"#,
        )
        .unwrap();
        assert_eq!(ClusterBgpConfig::from_json(c.to_json().as_bytes()).unwrap(), c);
    }

    #[test]
    fn every_rule_names_its_key() {
        assert_eq!(err(r#"{"asNumber":0}"#), "asNumber: AS 0 is reserved (RFC 7607); use 1..=4294967295");
        assert!(err(r#"{"asNumber":23456}"#).starts_with("asNumber: AS 23456 is AS_TRANS"));
        assert!(err(r#"{"asNumber":4294967296}"#).starts_with("bgp/config: invalid value"));
        assert!(err(r#"{"asnumber":1}"#).contains("unknown field `asnumber`"));
        assert_eq!(
            err(r#"{"peers":[{"address":"10.0.0.1","as":65001},{"address":"10.0.0.300","as":65001}]}"#),
            r#"peers[1].address: "10.0.0.300" is not an IP address"#
        );
        assert!(err(r#"{"peers":[{"address":"10.0.0.1","as":0}]}"#).starts_with("peers[0].as: AS 0"));
        assert_eq!(
            err(r#"{"peers":[{"address":"10.0.0.1","as":65001},{"address":"10.0.0.1","as":65002}]}"#),
            "peers[1]: duplicate peer 10.0.0.1"
        );
        // The same address for one node and for all nodes are two peers.
        ClusterBgpConfig::from_json(
            br#"{"peers":[{"address":"10.0.0.1","as":65001},{"address":"10.0.0.1","as":65001,"node":"n1"}]}"#,
        )
        .unwrap();
        assert!(err(r#"{"peers":[{"address":"10.0.0.1","as":1,"node":"a/b"}]}"#).starts_with("peers[0].node:"));
        // One reflector: no cluster ID needed (its router ID).
        ClusterBgpConfig::from_json(br#"{"routeReflectors":[{"node":"rr1"}]}"#).unwrap();
        assert!(err(r#"{"routeReflectors":[{"node":"rr1","clusterId":"1.1.1.1"},{"node":"rr2"}]}"#)
            .starts_with("routeReflectors[1].clusterId: route reflector rr2 needs a cluster ID"));
        assert_eq!(
            err(r#"{"routeReflectors":[{"node":"rr1","clusterId":"1.1.1.1"},{"node":"rr1","clusterId":"1.1.1.1"}]}"#),
            "routeReflectors[1]: node rr1 is listed twice"
        );
    }

    #[test]
    fn node_records_are_checked_against_their_key() {
        let r = NodeRecord::from_json("n1", br#"{"name":"n1","ipv4":"10.0.0.1","as":65001}"#).unwrap();
        assert_eq!((r.as_number, r.ipv6, r.route_reflector), (Some(65001), None, false));
        assert!(NodeRecord::from_json("n2", br#"{"name":"n1","ipv4":"10.0.0.1"}"#)
            .unwrap_err()
            .to_string()
            .starts_with("bgp/nodes/n2: name:"));
        assert!(NodeRecord::from_json("n1", br#"{"name":"n1","ipv4":"10.0.0.1","as":0}"#)
            .unwrap_err()
            .to_string()
            .starts_with("bgp/nodes/n1: as: AS 0"));
        assert!(NodeRecord::from_json("n1", br#"{"name":"n1","ipv4":"10.0.0.1","clusterId":"1.1.1.1"}"#)
            .unwrap_err()
            .to_string()
            .contains("only a route reflector"));
    }
}
