//! Endpoints of every host, shared through etcd, so that a rule's selector picks pods on any
//! host (docs/cni-policy.md, "Across hosts").
//!
//! Each host publishes its own registry entries, and only those, under
//! `<etcdPrefix>/endpoints/<nodeName>/<containerID>@<ifname>` (JSON [`SharedEndpoint`]: node,
//! name, namespace, labels, addresses), and reads the others' with one range read of
//! `<etcdPrefix>/endpoints/`. Every writer on a host (the plugin's verbs, `label`, `watch`) does
//! the same three steps under the state directory's lock:
//!
//! 1. [`Cluster::list`]: one range read; the other hosts' records become the remote cache
//!    `<stateDir>/remote.json` ([`write_cache`]);
//! 2. `reconcile::commit` compiles the local registry with the cached remote endpoints
//!    ([`remote_endpoints`]) and applies it;
//! 3. [`Cluster::publish`]: this host's records in etcd are made equal to the local registry
//!    (puts of what is missing or different, deletes of what the registry no longer has), in
//!    transactions of at most [`TXN_OPS`] operations.
//!
//! When etcd does not answer, step 1 falls back to the cache (the remote endpoints as last read)
//! and step 3 is left to `cni-policy watch`, whose resync publishes whatever differs once etcd
//! answers. Only an ADD with no cache at all (etcd never read on this host) fails, with code 11
//! (try again later): compiling a selector with no idea of the other hosts would fail open.
//!
//! `<stateDir>/cluster.json` records the settings the plugin was configured with, so that
//! `label` and `watch` (without `--etcd-endpoints`) reach the same etcd. Without `etcdEndpoints`
//! in the config both files are removed: the registry is this host's only, as before.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use etcd_kv::etcd_client::{GetOptions, Txn, TxnOp};
use etcd_kv::{EtcdClient, EtcdConfig, Retry, Timeouts};
use serde::{Deserialize, Serialize};

use crate::registry::{write_atomic, EndpointRecord, StateDir};
use crate::{Error, Result};

/// `etcdPrefix` when the config names none.
pub const DEFAULT_PREFIX: &str = "/cni-policy";
/// The remote cache in the state directory.
pub const REMOTE_CACHE: &str = "remote.json";
/// The recorded cluster settings in the state directory.
pub const SETTINGS: &str = "cluster.json";
/// Operations per etcd transaction (etcd's default limit is 128).
pub const TXN_OPS: usize = 64;
/// Budget of all etcd work of one plugin call or `label`, connection included.
pub const CALL_DEADLINE: Duration = Duration::from_secs(2);
/// Per endpoint: a dead member costs at most this before the next one is tried.
const CALL_TIMEOUTS: Timeouts =
    Timeouts { connect: Duration::from_millis(500), request: Duration::from_secs(1), keep_alive: None };

/// The cluster settings of the plugin config (and of `watch`'s flags).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterConf {
    #[serde(rename = "etcdEndpoints")]
    pub endpoints: Vec<String>,
    /// Without a trailing `/`.
    #[serde(rename = "etcdPrefix")]
    pub prefix: String,
    #[serde(rename = "etcdCaFile", default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    #[serde(rename = "etcdCertFile", default, skip_serializing_if = "Option::is_none")]
    pub cert_file: Option<PathBuf>,
    #[serde(rename = "etcdKeyFile", default, skip_serializing_if = "Option::is_none")]
    pub key_file: Option<PathBuf>,
    /// This host's name in the keys (the hostname by default).
    #[serde(rename = "nodeName")]
    pub node: String,
}

impl ClusterConf {
    /// Checks and completes settings: endpoints are http(s) URLs (https with TLS files), the
    /// prefix starts with `/`, the node name is one key segment (the hostname when `None`).
    pub fn new(etcd: EtcdConfig, node: Option<String>) -> Result<ClusterConf> {
        let bad = |m: String| Error::Cluster(m);
        let endpoints =
            etcd_kv::parse_endpoints(&etcd.endpoints.join(",")).map_err(|e| bad(format!("etcdEndpoints: {e}")))?;
        let etcd = EtcdConfig { endpoints, ..etcd };
        etcd.check_tls_endpoints().map_err(|e| bad(e.replace("--etcd-endpoints", "etcdEndpoints")))?;
        if etcd.cert_file.is_some() != etcd.key_file.is_some() {
            return Err(bad("etcdCertFile and etcdKeyFile go together".into()));
        }
        let prefix = if etcd.prefix.is_empty() { DEFAULT_PREFIX.to_string() } else { etcd.prefix.clone() };
        if !prefix.starts_with('/') {
            return Err(bad(format!("etcdPrefix {prefix:?} must start with '/'")));
        }
        let node = match node.filter(|n| !n.is_empty()) {
            Some(n) => n,
            None => nix::unistd::gethostname()
                .ok()
                .and_then(|h| h.into_string().ok())
                .filter(|h| !h.is_empty())
                .ok_or_else(|| bad("nodeName is not set and the hostname cannot be read".into()))?,
        };
        if node.contains('/') || node.chars().any(char::is_whitespace) {
            return Err(bad(format!("nodeName {node:?}: no '/' or blanks (it is one etcd key segment)")));
        }
        Ok(ClusterConf {
            endpoints: etcd.endpoints,
            prefix: prefix.trim_end_matches('/').to_string(),
            ca_file: etcd.ca_file,
            cert_file: etcd.cert_file,
            key_file: etcd.key_file,
            node,
        })
    }

    pub fn etcd(&self) -> EtcdConfig {
        EtcdConfig {
            endpoints: self.endpoints.clone(),
            prefix: self.prefix.clone(),
            ca_file: self.ca_file.clone(),
            cert_file: self.cert_file.clone(),
            key_file: self.key_file.clone(),
        }
    }

    /// `<prefix>/endpoints/`: every host's records.
    pub fn root(&self) -> String {
        format!("{}/endpoints/", self.prefix)
    }

    /// `<prefix>/endpoints/<node>/`: this host's.
    pub fn own_root(&self) -> String {
        format!("{}{}/", self.root(), self.node)
    }

    /// The key of a registry entry of this host.
    pub fn key(&self, r: &EndpointRecord) -> String {
        format!("{}{}@{}", self.own_root(), r.container_id, r.ifname)
    }
}

/// What a host publishes of one of its endpoints.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SharedEndpoint {
    pub node: String,
    /// `<containerID>/<ifname>`, as in the host's registry.
    pub name: String,
    pub namespace: String,
    pub labels: BTreeMap<String, String>,
    pub addrs: Vec<IpAddr>,
}

impl SharedEndpoint {
    pub fn of(node: &str, r: &EndpointRecord) -> SharedEndpoint {
        SharedEndpoint {
            node: node.to_string(),
            name: r.name.clone(),
            namespace: r.namespace.clone(),
            labels: r.labels.clone(),
            addrs: r.addrs.clone(),
        }
    }

    /// The policy model's view: a remote endpoint (selector sets only).
    pub fn endpoint(&self) -> policy::Endpoint {
        policy::Endpoint {
            name: format!("{}:{}", self.node, self.name),
            namespace: self.namespace.clone(),
            labels: self.labels.clone(),
            addrs: self.addrs.clone(),
            host_ifname: None,
            bridged: false,
            remote: Some(self.node.clone()),
        }
    }
}

/// One range read of every host's records.
#[derive(Debug, Clone, Default)]
pub struct Listing {
    /// This host's records in etcd, by key.
    pub own: BTreeMap<String, SharedEndpoint>,
    /// The other hosts' records, by node then name.
    pub others: Vec<SharedEndpoint>,
}

/// What [`Cluster::publish`] wrote.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Published {
    pub put: usize,
    pub deleted: usize,
}

/// An etcd client with its own current-thread runtime, for the synchronous callers.
pub struct Cluster {
    pub conf: ClusterConf,
    rt: tokio::runtime::Runtime,
    client: EtcdClient,
    deadline: Duration,
}

/// A current-thread runtime and an etcd client made inside it (the client's connection tasks
/// belong to that runtime). No I/O: the first request connects.
fn runtime_and_client(conf: &ClusterConf, timeouts: Timeouts) -> Result<(tokio::runtime::Runtime, EtcdClient)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| Error::Cluster(format!("cannot start a runtime: {e}")))?;
    let client = {
        let _g = rt.enter();
        EtcdClient::new(&conf.etcd(), timeouts)?
    };
    Ok((rt, client))
}

impl Cluster {
    /// Checks the settings; no I/O.
    pub fn new(conf: &ClusterConf) -> Result<Cluster> {
        Cluster::with(conf, CALL_TIMEOUTS, CALL_DEADLINE)
    }

    pub fn with(conf: &ClusterConf, timeouts: Timeouts, deadline: Duration) -> Result<Cluster> {
        let (rt, client) = runtime_and_client(conf, timeouts)?;
        Ok(Cluster { conf: conf.clone(), rt, client, deadline })
    }

    fn run<T>(&self, what: &str, f: impl std::future::Future<Output = Result<T>>) -> Result<T> {
        let deadline = self.deadline;
        self.rt.block_on(async {
            match tokio::time::timeout(deadline, f).await {
                Ok(r) => r,
                Err(_) => Err(Error::Etcd(self.client.unavailable(format!("{what}: no answer within {deadline:?}")))),
            }
        })
    }

    /// One range read of `<prefix>/endpoints/`. A record that does not parse, or whose key is
    /// not `<node>/<name>`, is skipped with a warning.
    pub fn list(&self) -> Result<Listing> {
        let root = self.conf.root();
        let resp = self.run("list endpoints", async {
            let prefix = root.clone();
            Ok(self
                .client
                .call("list endpoints", Retry::Idempotent, move |mut c| {
                    let prefix = prefix.clone();
                    async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
                })
                .await?)
        })?;
        let mut l = Listing::default();
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            let parsed =
                serde_json::from_slice::<SharedEndpoint>(kv.value()).map_err(|e| e.to_string()).and_then(|s| {
                    let node = key.strip_prefix(&root).and_then(|rest| rest.split_once('/')).map(|(n, _)| n);
                    if node == Some(s.node.as_str()) {
                        Ok(s)
                    } else {
                        Err(format!("its node {:?} is not the key's", s.node))
                    }
                });
            match parsed {
                Ok(s) if s.node == self.conf.node => {
                    l.own.insert(key, s);
                }
                Ok(s) => l.others.push(s),
                Err(e) => tracing::warn!(key, "ignoring an endpoint record that does not parse: {e}"),
            }
        }
        l.others.sort_by(|a, b| (&a.node, &a.name).cmp(&(&b.node, &b.name)));
        Ok(l)
    }

    /// Makes this host's records in etcd (`own`, as [`Cluster::list`] read them) equal to the
    /// local registry `local`: puts what is missing or different, deletes what `local` does
    /// not have (and only this host's keys).
    pub fn publish(&self, own: &BTreeMap<String, SharedEndpoint>, local: &[EndpointRecord]) -> Result<Published> {
        let mut ops = Vec::new();
        let mut done = Published::default();
        let want: BTreeMap<String, SharedEndpoint> =
            local.iter().map(|r| (self.conf.key(r), SharedEndpoint::of(&self.conf.node, r))).collect();
        for (k, v) in &want {
            if own.get(k) != Some(v) {
                let json = serde_json::to_vec(v).expect("a record serializes");
                ops.push(TxnOp::put(k.clone(), json, None));
                done.put += 1;
            }
        }
        for k in own.keys().filter(|k| !want.contains_key(*k)) {
            ops.push(TxnOp::delete(k.clone(), None));
            done.deleted += 1;
        }
        if ops.is_empty() {
            return Ok(done);
        }
        self.run("publish endpoints", async {
            for chunk in ops.chunks(TXN_OPS) {
                let txn = Txn::new().and_then(chunk.to_vec());
                self.client
                    .call("publish endpoints", Retry::Once, move |mut c| {
                        let txn = txn.clone();
                        async move { c.txn(txn).await }
                    })
                    .await?;
            }
            Ok(())
        })?;
        Ok(done)
    }

    /// [`Cluster::list`], and the other hosts' records written to the remote cache.
    pub fn refresh(&self, state: &StateDir) -> Result<Listing> {
        let l = self.list()?;
        write_cache(state, &l.others)?;
        Ok(l)
    }
}

/// The remote cache (`None`: there is none).
pub fn read_cache(state: &StateDir) -> Result<Option<Vec<SharedEndpoint>>> {
    let path = state.root().join(REMOTE_CACHE);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|source| Error::Entry { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read remote endpoints", path, e)),
    }
}

pub fn write_cache(state: &StateDir, others: &[SharedEndpoint]) -> Result<()> {
    write_atomic(&state.root().join(REMOTE_CACHE), &serde_json::to_vec_pretty(others).expect("records serialize"))
}

/// The remote endpoints every compile of this state directory includes: the cache.
pub fn remote_endpoints(state: &StateDir) -> Result<Vec<policy::Endpoint>> {
    Ok(read_cache(state)?.unwrap_or_default().iter().map(SharedEndpoint::endpoint).collect())
}

/// The settings the plugin recorded (`None`: not in cluster mode).
pub fn settings(state: &StateDir) -> Result<Option<ClusterConf>> {
    let path = state.root().join(SETTINGS);
    match std::fs::read(&path) {
        Ok(b) => serde_json::from_slice(&b).map(Some).map_err(|source| Error::Entry { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io("read cluster settings", path, e)),
    }
}

/// Records `conf` (or, with `None`, leaves cluster mode: the settings and the remote cache
/// go, so no remote endpoint is compiled any more). Writes only what changes.
pub fn set_settings(state: &StateDir, conf: Option<&ClusterConf>) -> Result<()> {
    match conf {
        Some(c) => {
            if settings(state)?.as_ref() != Some(c) {
                write_atomic(&state.root().join(SETTINGS), &serde_json::to_vec_pretty(c).expect("settings serialize"))?;
            }
        }
        None => {
            for f in [SETTINGS, REMOTE_CACHE] {
                let p = state.root().join(f);
                match std::fs::remove_file(&p) {
                    Ok(()) => tracing::info!(file = %p.display(), "no etcdEndpoints: removed"),
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => return Err(Error::io("remove", p, e)),
                }
            }
        }
    }
    Ok(())
}

/// The steps before a local change, for the plugin's verbs and `label` (lock held): records the
/// settings, reads etcd into the remote cache. `Ok(None)` when etcd did not answer (logged;
/// the cache as it is stays in use), an error only when there is no cache to fall back on and
/// `need_cache` is set (ADD).
pub fn before_change(state: &StateDir, conf: &ClusterConf, need_cache: bool) -> Result<Option<(Cluster, Listing)>> {
    set_settings(state, Some(conf))?;
    let cluster = Cluster::new(conf)?;
    match cluster.refresh(state) {
        Ok(l) => Ok(Some((cluster, l))),
        Err(Error::Etcd(e)) if e.is_unavailable() => {
            if need_cache && read_cache(state)?.is_none() {
                return Err(Error::Etcd(e));
            }
            tracing::warn!(
                "{e}: using the remote endpoints last read ({}); this host's records are published by \
                 `cni-policy watch` once etcd answers",
                state.root().join(REMOTE_CACHE).display()
            );
            Ok(None)
        }
        Err(e) => Err(e),
    }
}

/// The step after a local change (lock held): publishes this host's registry. A failure is
/// logged, not returned: the local change is in force, and `cni-policy watch` publishes what
/// differs once etcd answers.
pub fn after_change(state: &StateDir, read: Option<(Cluster, Listing)>) {
    if let Some((cluster, listing)) = read {
        publish_logged(state, &cluster, &listing);
    }
}

/// [`Cluster::publish`] of the registry as it is now; a failure is logged.
pub fn publish_logged(state: &StateDir, cluster: &Cluster, listing: &Listing) {
    let published = state.list().and_then(|local| cluster.publish(&listing.own, &local));
    match published {
        Ok(p) if p == Published::default() => {}
        Ok(p) => tracing::info!(put = p.put, deleted = p.deleted, "this host's endpoints published"),
        Err(e) => {
            tracing::warn!("{e}: not published; `cni-policy watch` publishes this host's endpoints once etcd answers")
        }
    }
}

/// How long `watch` waits after a change of another host's record for more before it
/// re-applies (a pod start or a rollout is several changes).
pub const DEBOUNCE: Duration = Duration::from_millis(100);
/// At most this long after the first of a burst of changes, `watch` re-applies anyway.
pub const DEBOUNCE_MAX: Duration = Duration::from_secs(1);

/// `watch`'s etcd watch: a thread of its own that watches `<prefix>/endpoints/` and writes a
/// byte to `tx` for every change of another host's record, and once each time the watch
/// (re)starts (changes while no watch ran are then re-listed by the main thread). It retries
/// with a backoff (0.5 s doubling to 10 s) while etcd does not answer, and ends when the other
/// side of `tx` is closed.
pub fn spawn_notifier(conf: ClusterConf, tx: std::os::unix::net::UnixStream) -> Result<()> {
    use std::io::Write as _;
    tx.set_nonblocking(true).map_err(|e| Error::io("set up the etcd watch", "socketpair", e))?;
    let (rt, client) = runtime_and_client(&conf, Timeouts::DAEMON)?;
    // false: the main thread is gone.
    let notify = move || match (&tx).write(&[1]) {
        Ok(_) => true,
        Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
    };
    let own = conf.own_root();
    std::thread::Builder::new()
        .name("etcd-watch".into())
        .spawn(move || {
            rt.block_on(async {
                let opts = etcd_kv::etcd_client::WatchOptions::new().with_prefix();
                let mut backoff = Duration::from_millis(500);
                loop {
                    match client.start_watch(conf.root(), opts.clone()).await {
                        Ok((handle, mut stream)) => {
                            tracing::info!(prefix = conf.root(), "watching the other hosts' endpoints");
                            if !notify() {
                                return;
                            }
                            loop {
                                match stream.message().await {
                                    Ok(Some(resp)) => {
                                        backoff = Duration::from_millis(500);
                                        if resp.canceled() {
                                            tracing::warn!(
                                                "etcd canceled the watch ({}): restarting",
                                                resp.cancel_reason()
                                            );
                                            break;
                                        }
                                        let theirs = resp
                                            .events()
                                            .iter()
                                            .filter_map(|ev| ev.kv())
                                            .any(|kv| !kv.key().starts_with(own.as_bytes()));
                                        if theirs && !notify() {
                                            return;
                                        }
                                    }
                                    Ok(None) => {
                                        client.stream_failed(handle);
                                        break;
                                    }
                                    Err(e) => {
                                        tracing::warn!("etcd watch broke: {e}");
                                        if etcd_kv::is_transport_error(&e) {
                                            client.stream_failed(handle);
                                        }
                                        break;
                                    }
                                }
                            }
                        }
                        Err(e) => tracing::warn!("etcd watch of {}: {e}", conf.root()),
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(10));
                }
            })
        })
        .map_err(|e| Error::io("start the etcd watch thread", "etcd-watch", e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_and_completed() {
        let etcd = |eps: &[&str], prefix: &str| EtcdConfig {
            endpoints: eps.iter().map(|s| s.to_string()).collect(),
            prefix: prefix.into(),
            ..EtcdConfig::default()
        };
        let c = ClusterConf::new(etcd(&["http://127.0.0.1:2379"], ""), Some("node-a".into())).unwrap();
        assert_eq!(c.prefix, DEFAULT_PREFIX);
        assert_eq!(c.root(), "/cni-policy/endpoints/");
        assert_eq!(c.own_root(), "/cni-policy/endpoints/node-a/");
        let c = ClusterConf::new(etcd(&["http://e:1"], "/p/"), None).unwrap();
        assert_eq!(c.prefix, "/p");
        assert!(!c.node.is_empty(), "the hostname");
        for (e, n, want) in [
            (etcd(&["e:1"], ""), "n", "not an http:// or https:// URL"),
            (etcd(&[], ""), "n", "no endpoint given"),
            (etcd(&["http://e:1"], "p"), "n", "must start with '/'"),
            (etcd(&["http://e:1"], ""), "a/b", "one etcd key segment"),
            (EtcdConfig { ca_file: Some("/ca".into()), ..etcd(&["http://e:1"], "") }, "n", "is not https://"),
        ] {
            let err = ClusterConf::new(e, Some(n.into())).unwrap_err().to_string();
            assert!(err.contains(want), "{err} (want {want})");
        }
    }
}
