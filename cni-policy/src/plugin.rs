//! The chained CNI plugin: `type: "cni-policy"`, after the network plugin in a conflist.
//!
//! ADD registers the container interface of `prevResult` as an endpoint and applies the policy
//! files before it returns, so the container is covered before its first packet; it prints
//! `prevResult` unchanged. DEL forgets the endpoint, CHECK verifies its chains, GC drops the
//! entries of this network that the runtime no longer lists, STATUS reports a policy directory
//! that does not parse as code 50.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use cni_core::{CniResult, Code, Context, Error as CniError, Plugin, Result as CniRes};
use serde::Deserialize;
use serde_json::Value;

use crate::cluster::{self, ClusterConf};
use crate::reconcile::{self, Change};
use crate::registry::{EndpointRecord, StateConfig, StateDir};
use crate::{Error, DEFAULT_POLICY_DIR, DEFAULT_STATE_DIR};

/// Plugin-defined code of a CHECK that finds the endpoint's chains out of order.
pub const CODE_CHECK_DRIFT: u32 = 120;

/// Plugin-defined code of an ADD whose address is registered to another endpoint.
pub const CODE_ADDRESS_CONFLICT: u32 = 121;

/// The label ADD gives an endpoint from `K8S_POD_NAME`, so selectors can name a pod. It wins
/// over a label of the same key in `args.cni.labels` (the runtime's pod name is the truth).
pub const POD_NAME_LABEL: &str = "cni-policy/pod-name";

/// The sysctls that make bridged IP traffic traverse the inet hooks.
pub const BRIDGE_NF_SYSCTLS: [&str; 2] = ["net/bridge/bridge-nf-call-iptables", "net/bridge/bridge-nf-call-ip6tables"];

/// This plugin's keys of the network config.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct PolicyConf {
    #[serde(rename = "policyDir", default = "default_policy_dir")]
    pub policy_dir: PathBuf,
    #[serde(rename = "stateDir", default = "default_state_dir")]
    pub state_dir: PathBuf,
    /// Register an attachment without a host-side interface (macvlan, ipvlan, host-device,
    /// SR-IOV) instead of refusing it: selectors see it, but its own traffic is not filtered.
    #[serde(rename = "allowUnenforceable", default)]
    pub allow_unenforceable: bool,
    /// Share endpoints with the other hosts through this etcd (docs/cni-policy.md, "Across
    /// hosts"); without it the registry is this host's only.
    #[serde(rename = "etcdEndpoints", default)]
    pub etcd_endpoints: Option<Vec<String>>,
    #[serde(rename = "etcdPrefix", default)]
    pub etcd_prefix: Option<String>,
    #[serde(rename = "etcdCaFile", default)]
    pub etcd_ca_file: Option<PathBuf>,
    #[serde(rename = "etcdCertFile", default)]
    pub etcd_cert_file: Option<PathBuf>,
    #[serde(rename = "etcdKeyFile", default)]
    pub etcd_key_file: Option<PathBuf>,
    /// This host's name in the etcd keys (default: the hostname).
    #[serde(rename = "nodeName", default)]
    pub node_name: Option<String>,
}

fn default_policy_dir() -> PathBuf {
    DEFAULT_POLICY_DIR.into()
}

fn default_state_dir() -> PathBuf {
    DEFAULT_STATE_DIR.into()
}

impl PolicyConf {
    pub fn parse(raw: &Value) -> CniRes<PolicyConf> {
        let c: PolicyConf = serde_json::from_value(raw.clone())
            .map_err(|e| CniError::config("invalid cni-policy config").with_details(e))?;
        for (key, p) in [("policyDir", &c.policy_dir), ("stateDir", &c.state_dir)] {
            if !p.is_absolute() {
                return Err(CniError::config(format!("{key} must be an absolute path")).with_details(p.display()));
            }
        }
        Ok(c)
    }

    /// The cluster settings, `None` without `etcdEndpoints` (code 7 when they are wrong).
    pub fn cluster(&self) -> CniRes<Option<ClusterConf>> {
        let Some(endpoints) = &self.etcd_endpoints else {
            if self.etcd_prefix.is_some() || self.node_name.is_some() {
                return Err(CniError::config("etcdPrefix and nodeName need etcdEndpoints"));
            }
            return Ok(None);
        };
        let file = |p: &Option<PathBuf>| p.clone().filter(|p| !p.as_os_str().is_empty());
        let etcd = etcd_kv::EtcdConfig {
            endpoints: endpoints.clone(),
            prefix: self.etcd_prefix.clone().unwrap_or_default(),
            ca_file: file(&self.etcd_ca_file),
            cert_file: file(&self.etcd_cert_file),
            key_file: file(&self.etcd_key_file),
        };
        ClusterConf::new(etcd, self.node_name.clone())
            .map(Some)
            .map_err(|e| CniError::config("invalid cni-policy cluster settings").with_details(e.to_string()))
    }

    /// Cluster mode's first step (lock held): the settings recorded, etcd read into the remote
    /// cache ([`cluster::before_change`]); without `etcdEndpoints`, the settings and the cache
    /// removed.
    fn before_change(
        &self,
        state: &StateDir,
        need_cache: bool,
    ) -> CniRes<Option<(cluster::Cluster, cluster::Listing)>> {
        match self.cluster()? {
            Some(cc) => cluster::before_change(state, &cc, need_cache).map_err(to_cni),
            None => cluster::set_settings(state, None).map(|_| None).map_err(to_cni),
        }
    }
}

/// The labels of `args.cni.labels` (the CNI conventions: `[{"key": …, "value": …}]`).
pub fn conventions_labels(raw: &Value) -> CniRes<BTreeMap<String, String>> {
    #[derive(Deserialize)]
    struct Kv {
        key: String,
        value: String,
    }
    let Some(v) = raw.get("args").and_then(|a| a.get("cni")).and_then(|c| c.get("labels")) else {
        return Ok(BTreeMap::new());
    };
    let kvs: Vec<Kv> = serde_json::from_value(v.clone())
        .map_err(|e| CniError::config("args.cni.labels: want [{\"key\": …, \"value\": …}]").with_details(e))?;
    let mut out = BTreeMap::new();
    for kv in kvs {
        if kv.key.is_empty() {
            return Err(CniError::config("args.cni.labels: a label with an empty key"));
        }
        out.insert(kv.key, kv.value);
    }
    Ok(out)
}

/// What ADD learns from `prevResult`: the container interface named `ifname` with its
/// addresses, and the host side of its link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attachment {
    pub addrs: Vec<IpAddr>,
    pub host_ifname: Option<String>,
}

/// Finds the container interface `ifname` in a previous result and its addresses (the `ips`
/// naming its index), and the host interface: the interface without a sandbox that is a bridge
/// port (bridge plugins list the bridge too), else the one without a sandbox that is not a
/// bridge. `is_port(name)` / `is_bridge(name)` look at the host (sysfs).
pub fn attachment(
    prev: &CniResult,
    ifname: &str,
    is_port: &dyn Fn(&str) -> bool,
    is_bridge: &dyn Fn(&str) -> bool,
) -> CniRes<Attachment> {
    let idx = prev.interfaces.iter().position(|i| i.name == ifname && !i.sandbox.is_empty());
    let addrs: Vec<IpAddr> = match idx {
        Some(i) => prev.ips.iter().filter(|ip| ip.interface == Some(i)).map(|ip| ip.address.ip()).collect(),
        // A plugin that lists no interfaces: its addresses name none either.
        None if prev.interfaces.is_empty() => prev.ips.iter().map(|ip| ip.address.ip()).collect(),
        None => {
            return Err(CniError::config(format!("prevResult has no container interface {ifname:?}")).with_details(
                format!(
                    "interfaces: {}",
                    prev.interfaces.iter().map(|i| i.name.as_str()).collect::<Vec<_>>().join(", ")
                ),
            ))
        }
    };
    if addrs.is_empty() {
        return Err(CniError::config(format!("prevResult has no address on {ifname:?}"))
            .with_details("an endpoint without an address cannot be protected"));
    }
    let hostside: Vec<&str> =
        prev.interfaces.iter().filter(|i| i.sandbox.is_empty()).map(|i| i.name.as_str()).collect();
    let host_ifname =
        hostside.iter().find(|n| is_port(n)).or_else(|| hostside.iter().find(|n| !is_bridge(n))).map(|n| n.to_string());
    Ok(Attachment { addrs, host_ifname })
}

fn sys_is_port(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).join("brport").exists()
}

fn sys_is_bridge(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).join("bridge").exists()
}

/// Whether both bridge-nf-call sysctls are on; `None` without bridge netfilter.
pub fn bridge_nf_on() -> Option<bool> {
    let mut all = true;
    for k in BRIDGE_NF_SYSCTLS {
        let v = std::fs::read_to_string(format!("/proc/sys/{k}")).ok()?;
        all &= v.trim() == "1";
    }
    Some(all)
}

/// Maps the crate's errors onto CNI codes: a policy file that does not parse is the config's
/// fault (7), I/O is 5, the rest is internal.
pub fn to_cni(e: Error) -> CniError {
    match e {
        Error::Policy(policy::Error::File { .. }) => {
            CniError::config("policyDir does not parse").with_details(e.to_string())
        }
        Error::Policy(policy::Error::Io { .. }) | Error::NoPolicyDir(_) => {
            CniError::config("policyDir cannot be read").with_details(e.to_string())
        }
        Error::Io { .. } | Error::Entry { .. } => CniError::new(Code::Io, "endpoint registry").with_details(e),
        // Two stateDirs on one host: a configuration error, and nothing was changed.
        Error::Policy(policy::Error::Owner { .. }) => {
            CniError::config("another stateDir manages this host's policy tables").with_details(e.to_string())
        }
        Error::Check(_) => CniError::new(Code::Other(CODE_CHECK_DRIFT), e.to_string()),
        Error::UnknownContainer(_) => CniError::new(Code::UnknownContainer, e.to_string()),
        // ADD on a host that has never read etcd: nothing was changed, try again later.
        Error::Etcd(ref ee) if ee.is_unavailable() => {
            CniError::new(Code::TryAgainLater, "etcd unavailable, and no remote endpoints were ever read on this host")
                .with_details(e.to_string())
        }
        Error::Cluster(_) => CniError::config("invalid cni-policy cluster settings").with_details(e.to_string()),
        other => CniError::internal(other.to_string()),
    }
}

pub struct PolicyPlugin;

impl PolicyPlugin {
    fn record(&self, ctx: &Context, att: Attachment, bridged: bool) -> CniRes<EndpointRecord> {
        let mut labels = conventions_labels(&ctx.raw)?;
        let pod = ctx.args.get("K8S_POD_NAME").filter(|s| !s.is_empty()).map(str::to_string);
        if let Some(p) = &pod {
            labels.insert(POD_NAME_LABEL.to_string(), p.clone());
        }
        let enforced = att.host_ifname.is_some();
        Ok(EndpointRecord {
            name: EndpointRecord::key(&ctx.container_id, &ctx.ifname),
            container_id: ctx.container_id.clone(),
            ifname: ctx.ifname.clone(),
            network: ctx.conf.name.clone(),
            namespace: ctx.args.get("K8S_POD_NAMESPACE").filter(|s| !s.is_empty()).unwrap_or("default").to_string(),
            pod,
            labels,
            addrs: att.addrs,
            host_ifname: att.host_ifname,
            bridged,
            enforced,
        })
    }
}

impl Plugin for PolicyPlugin {
    fn add(&self, ctx: &Context) -> CniRes<CniResult> {
        let conf = PolicyConf::parse(&ctx.raw)?;
        let prev =
            ctx.prev_result()?.ok_or_else(|| CniError::config("cni-policy must be chained after a network plugin"))?;
        let att = attachment(&prev, &ctx.ifname, &sys_is_port, &sys_is_bridge)?;
        if att.host_ifname.is_none() {
            // macvlan, ipvlan, host-device, SR-IOV: the container's packets leave through the
            // parent device (or its own) without ever meeting this host's IP stack, so no rule
            // here can see them. Registering it silently would fail open.
            let why = format!(
                "{} has no host-side interface: its traffic does not cross this host's netfilter, so policy cannot be enforced",
                ctx.ifname
            );
            if !conf.allow_unenforceable {
                return Err(CniError::config(why).with_details(
                    "prevResult lists no interface outside the sandbox (macvlan, ipvlan, host-device, SR-IOV); \
                     set \"allowUnenforceable\": true to register it for selectors anyway",
                ));
            }
            tracing::warn!("{why}; registered for selectors only (allowUnenforceable)");
        }
        let bridged = att.host_ifname.as_deref().is_some_and(sys_is_port);
        let rec = self.record(ctx, att, bridged)?;
        let state = StateDir::new(&conf.state_dir);
        let _lock = state.lock().map_err(to_cni)?;
        // Dispatch is keyed on addresses: an address of two endpoints would put one under the
        // other's policy. Refused, naming the holder (a DEL or GC of it frees the address).
        for other in state.list().map_err(to_cni)?.iter().filter(|o| o.name != rec.name) {
            if let Some(a) = rec.addrs.iter().find(|a| other.addrs.contains(a)) {
                return Err(CniError::new(
                    Code::Other(CODE_ADDRESS_CONFLICT),
                    format!("address {a} is registered to endpoint {}", other.name),
                )
                .with_details(format!("network {:?}; DEL or GC that endpoint first", other.network)));
            }
        }
        let set = reconcile::load_or_last_good(&state, &conf.policy_dir, true).map_err(to_cni)?.set;
        if bridged {
            // Bridged IP traffic only meets the inet hooks with these on (Kubernetes needs them too).
            for k in BRIDGE_NF_SYSCTLS {
                linux_net::sysctl::ensure(k, "1")
                    .map_err(|e| CniError::new(Code::Io, format!("enable {k}")).with_details(e))?;
            }
        }
        // Cluster mode: the other hosts' endpoints read (or, etcd down, those last read) before
        // compiling; this endpoint published only once it is in force here, so a failed ADD
        // leaves no record in etcd.
        let read = conf.before_change(&state, true)?;
        let change = Change { put: vec![rec], remove: vec![] };
        let (_, report) = reconcile::commit(&state, &reconcile::engine(&state), &set, &change).map_err(to_cni)?;
        tracing::info!(full = report.full, ops = report.ops, elapsed = ?report.elapsed, "applied");
        state.set_config(&StateConfig { policy_dir: conf.policy_dir.clone() }).map_err(to_cni)?;
        cluster::after_change(&state, read);
        Ok(prev)
    }

    fn del(&self, ctx: &Context) -> CniRes<()> {
        let conf = PolicyConf::parse(&ctx.raw)?;
        let state = StateDir::new(&conf.state_dir);
        if !state.exists() {
            return Ok(());
        }
        let _lock = state.lock().map_err(to_cni)?;
        if state.get(&ctx.container_id, &ctx.ifname).map_err(to_cni)?.is_none() {
            return Ok(());
        }
        forget(&state, &conf, vec![(ctx.container_id.clone(), ctx.ifname.clone())])
    }

    fn check(&self, ctx: &Context) -> CniRes<()> {
        let conf = PolicyConf::parse(&ctx.raw)?;
        let state = StateDir::new(&conf.state_dir);
        let _lock = state.lock().map_err(to_cni)?;
        let rec = state.get(&ctx.container_id, &ctx.ifname).map_err(to_cni)?.ok_or_else(|| {
            CniError::new(
                Code::Other(CODE_CHECK_DRIFT),
                format!("endpoint {}/{} is not registered", ctx.container_id, ctx.ifname),
            )
        })?;
        if rec.bridged && bridge_nf_on() != Some(true) {
            return Err(CniError::new(
                Code::Other(CODE_CHECK_DRIFT),
                "net.bridge.bridge-nf-call-iptables/-ip6tables are off: bridged traffic bypasses the policy",
            ));
        }
        let set = reconcile::load_or_last_good(&state, &conf.policy_dir, true).map_err(to_cni)?.set;
        let remotes = cluster::remote_endpoints(&state).map_err(to_cni)?;
        let c = reconcile::compile(&set, &state.list().map_err(to_cni)?, &remotes);
        reconcile::check(&reconcile::engine(&state), &c, &rec.name).map_err(to_cni)
    }

    fn status(&self, ctx: &Context) -> CniRes<()> {
        let conf = PolicyConf::parse(&ctx.raw)?;
        if let Err(e) = reconcile::load_policies(&conf.policy_dir) {
            return Err(CniError::new(Code::Unavailable, "policyDir does not parse").with_details(e));
        }
        let state = StateDir::new(&conf.state_dir);
        let bridged = state.list().map(|l| l.iter().any(|r| r.bridged)).unwrap_or(false);
        if bridged && bridge_nf_on() == Some(false) {
            return Err(CniError::new(
                Code::Unavailable,
                "net.bridge.bridge-nf-call-iptables/-ip6tables are off: bridged traffic bypasses the policy",
            ));
        }
        Ok(())
    }

    fn gc(&self, ctx: &Context) -> CniRes<()> {
        let conf = PolicyConf::parse(&ctx.raw)?;
        let state = StateDir::new(&conf.state_dir);
        if !state.exists() {
            return Ok(());
        }
        let _lock = state.lock().map_err(to_cni)?;
        let valid = ctx.gc_valid();
        let stale: Vec<(String, String)> = state
            .list()
            .map_err(to_cni)?
            .into_iter()
            .filter(|r| r.network == ctx.conf.name)
            .filter(|r| !valid.iter().any(|a| a.container_id == r.container_id && a.ifname == r.ifname))
            .map(|r| (r.container_id, r.ifname))
            .collect();
        // In cluster mode GC goes on with nothing stale here: its publish step deletes this
        // host's etcd records the registry no longer has (a DEL while etcd was down).
        if stale.is_empty() && conf.etcd_endpoints.is_none() {
            return Ok(());
        }
        tracing::info!(count = stale.len(), "GC drops stale endpoints");
        forget(&state, &conf, stale)
    }
}

/// DEL and GC: drop entries and re-apply, with the last good set when the policy directory does
/// not load, so the addresses leave the dispatch maps and the selector sets at once (an address
/// a later container receives is never treated as the old holder's). With no last good set
/// either, the same code 7 as ADD and nothing changes: dropping the entry without re-applying
/// would leave the address in other endpoints' allow sets.
///
/// In cluster mode the records go from etcd after the local change (or, etcd down, at the watch
/// daemon's next resync); a DEL or GC does not fail because etcd is down.
fn forget(state: &StateDir, conf: &PolicyConf, gone: Vec<(String, String)>) -> CniRes<()> {
    let policy_dir = &conf.policy_dir;
    let set = reconcile::load_or_last_good(state, policy_dir, true).map_err(to_cni)?.set;
    let read = conf.before_change(state, false)?;
    let change = Change { put: vec![], remove: gone };
    reconcile::commit(state, &reconcile::engine(state), &set, &change).map_err(to_cni)?;
    state.set_config(&StateConfig { policy_dir: policy_dir.to_path_buf() }).map_err(to_cni)?;
    cluster::after_change(state, read);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use cni_core::{Interface, IpConfig};
    use serde_json::json;

    fn ifc(name: &str, sandbox: &str) -> Interface {
        Interface { name: name.into(), sandbox: sandbox.into(), ..Default::default() }
    }

    fn ip(a: &str, i: Option<usize>) -> IpConfig {
        IpConfig { address: a.parse().unwrap(), gateway: None, interface: i }
    }

    #[test]
    fn the_endpoint_is_the_sandboxed_ifname_and_the_host_side_its_bridge_port() {
        let prev = CniResult {
            interfaces: vec![ifc("br0", ""), ifc("veth1", ""), ifc("eth0", "/var/run/netns/x"), ifc("net1", "/x")],
            ips: vec![ip("10.1.0.5/24", Some(2)), ip("fd00::5/64", Some(2)), ip("10.2.0.5/24", Some(3))],
            ..Default::default()
        };
        let port = |n: &str| n == "veth1";
        let bridge = |n: &str| n == "br0";
        let a = attachment(&prev, "eth0", &port, &bridge).unwrap();
        assert_eq!(a.addrs, vec!["10.1.0.5".parse::<IpAddr>().unwrap(), "fd00::5".parse().unwrap()]);
        assert_eq!(a.host_ifname.as_deref(), Some("veth1"));
        // Routed: no bridge, the one host-side veth.
        let prev = CniResult {
            interfaces: vec![ifc("cali1", ""), ifc("eth0", "/x")],
            ips: vec![ip("10.3.0.9/32", Some(1))],
            ..Default::default()
        };
        let a = attachment(&prev, "eth0", &|_| false, &|_| false).unwrap();
        assert_eq!(a.host_ifname.as_deref(), Some("cali1"));
        // A bridge that is listed before a veth not yet known as a port: never the bridge.
        let prev = CniResult {
            interfaces: vec![ifc("br0", ""), ifc("veth2", ""), ifc("eth0", "/x")],
            ips: vec![ip("10.1.0.6/24", Some(2))],
            ..Default::default()
        };
        let a = attachment(&prev, "eth0", &|_| false, &bridge).unwrap();
        assert_eq!(a.host_ifname.as_deref(), Some("veth2"));
    }

    #[test]
    fn no_matching_interface_or_no_address_is_code_7() {
        let prev = CniResult {
            interfaces: vec![ifc("eth1", "/x")],
            ips: vec![ip("10.1.0.5/24", Some(0))],
            ..Default::default()
        };
        let e = attachment(&prev, "eth0", &|_| false, &|_| false).unwrap_err();
        assert_eq!(e.code, Code::InvalidConfig);
        assert!(e.details.contains("eth1"), "{e}");
        let prev = CniResult { interfaces: vec![ifc("eth0", "/x")], ips: vec![], ..Default::default() };
        assert_eq!(attachment(&prev, "eth0", &|_| false, &|_| false).unwrap_err().code, Code::InvalidConfig);
        // No interfaces listed at all: every address is the container's.
        let prev = CniResult { ips: vec![ip("10.9.0.1/24", None)], ..Default::default() };
        assert_eq!(attachment(&prev, "eth0", &|_| false, &|_| false).unwrap().addrs.len(), 1);
    }

    #[test]
    fn labels_follow_the_conventions_shape() {
        let raw =
            json!({"args": {"cni": {"labels": [{"key": "app", "value": "web"}, {"key": "tier", "value": "fe"}]}}});
        let l = conventions_labels(&raw).unwrap();
        assert_eq!(l.get("app").map(String::as_str), Some("web"));
        assert_eq!(l.len(), 2);
        assert!(conventions_labels(&json!({})).unwrap().is_empty());
        let bad = json!({"args": {"cni": {"labels": {"app": "web"}}}});
        assert_eq!(conventions_labels(&bad).unwrap_err().code, Code::InvalidConfig);
    }

    #[test]
    fn config_defaults_and_relative_paths() {
        let c = PolicyConf::parse(&json!({"type": "cni-policy"})).unwrap();
        assert_eq!(c.policy_dir, Path::new(DEFAULT_POLICY_DIR));
        assert_eq!(c.state_dir, Path::new(DEFAULT_STATE_DIR));
        let e = PolicyConf::parse(&json!({"policyDir": "policy.d"})).unwrap_err();
        assert_eq!(e.code, Code::InvalidConfig);
        assert_eq!(PolicyConf::parse(&json!({"stateDir": 3})).unwrap_err().code, Code::InvalidConfig);
    }

    #[test]
    fn cluster_keys_are_optional_and_checked() {
        assert_eq!(PolicyConf::parse(&json!({})).unwrap().cluster().unwrap(), None);
        let c = PolicyConf::parse(&json!({"etcdEndpoints": ["http://10.0.0.1:2379"], "nodeName": "n1"}))
            .unwrap()
            .cluster()
            .unwrap()
            .unwrap();
        assert_eq!((c.prefix.as_str(), c.node.as_str()), ("/cni-policy", "n1"));
        assert_eq!(
            c.key(&EndpointRecord {
                name: "c1/eth0".into(),
                container_id: "c1".into(),
                ifname: "eth0".into(),
                network: "n".into(),
                namespace: "default".into(),
                pod: None,
                labels: BTreeMap::new(),
                addrs: vec![],
                host_ifname: None,
                bridged: false,
                enforced: true,
            }),
            "/cni-policy/endpoints/n1/c1@eth0"
        );
        for (bad, want) in [
            (json!({"etcdPrefix": "/p"}), "need etcdEndpoints"),
            (json!({"nodeName": "n"}), "need etcdEndpoints"),
            (json!({"etcdEndpoints": ["10.0.0.1:2379"]}), "not an http:// or https:// URL"),
            (json!({"etcdEndpoints": ["http://e:1"], "etcdPrefix": "p"}), "must start with '/'"),
            (json!({"etcdEndpoints": ["http://e:1"], "etcdCaFile": "/ca.pem"}), "is not https://"),
            (json!({"etcdEndpoints": ["https://e:1"], "etcdCertFile": "/c.pem"}), "go together"),
            (json!({"etcdEndpoints": ["http://e:1"], "nodeName": "a/b"}), "one etcd key segment"),
        ] {
            let e = PolicyConf::parse(&bad).unwrap().cluster().unwrap_err();
            assert_eq!(e.code, Code::InvalidConfig, "{bad}");
            assert!(format!("{} {}", e.msg, e.details).contains(want), "{bad}: {e} (want {want})");
        }
    }
}
