//! A node in a namespace: its own network namespace standing in for the host, where plugin
//! chains run (conflist style: each plugin's result is the next one's `prevResult`, DEL in
//! reverse), and containers (namespaces) attached through them.
//!
//! Everything a plugin creates on the "host" side (bridge, veths, nftables tables, conntrack,
//! sysctls such as `net.bridge.bridge-nf-call-iptables`, which are per namespace) lives in the
//! node's namespace, so tests of plugins that own a fixed table name (`inet cni-policy`) can
//! run in parallel with each other and with other suites on the machine, and deleting the
//! namespace removes every trace. Plugins run as processes under `ip netns exec NODE`, which
//! also gives them the node's /sys.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use serde_json::{json, Value};

use crate::netns::Netns;
use crate::plugin::{run_with_stdin, Outcome, PluginSet, PLUGIN_TIMEOUT};
use crate::probe::wait_carrier;
use crate::util::{ip, next_id, run, unique_name, Context, R, SYS_PATH};
use crate::{bail, ensure};

/// How long a freshly added container's links may take to come up.
const CARRIER_WAIT: Duration = Duration::from_secs(10);

/// The node: a namespace with forwarding on and IPv6 DAD off (so the bridge's gateway address
/// is usable at once), a scratch directory for IPAM data, policy files and state, and the
/// plugin directories. Dropping it deletes the namespace and the directory.
#[derive(Debug)]
pub struct Node {
    pub ns: Netns,
    pub dir: PathBuf,
    pub plugins: PluginSet,
}

impl Node {
    pub fn new(plugins: PluginSet) -> R<Node> {
        let ns = Netns::new()?;
        let dir = std::env::temp_dir().join(format!("{}-node", unique_name(next_id())));
        std::fs::create_dir_all(&dir).ctx(format!("create {}", dir.display()))?;
        let node = Node { ns, dir, plugins };
        node.sysctl(&[
            "net.ipv4.ip_forward=1",
            "net.ipv6.conf.all.forwarding=1",
            "net.ipv6.conf.all.accept_dad=0",
            "net.ipv6.conf.default.accept_dad=0",
        ])?;
        Ok(node)
    }

    pub fn name(&self) -> &str {
        self.ns.name()
    }

    /// The node namespace's path (for probes sent from the node itself).
    pub fn path(&self) -> &Path {
        Path::new(self.ns.path())
    }

    pub fn sysctl(&self, settings: &[&str]) -> R<()> {
        let mut args = vec!["netns", "exec", self.name(), "sysctl", "-qw"];
        args.extend_from_slice(settings);
        run("ip", &args).map(|_| ())
    }

    /// Runs `bin ARGS` in the node namespace with exactly `env` (plus PATH) and `stdin`.
    pub fn exec(&self, bin: &Path, args: &[&str], env: &[(String, String)], stdin: &[u8]) -> Outcome {
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", self.name()]).arg(bin).args(args).env_clear().env("PATH", SYS_PATH);
        for (k, v) in env {
            cmd.env(k, v);
        }
        run_with_stdin(cmd, stdin.to_vec(), PLUGIN_TIMEOUT)
    }

    /// Runs one plugin of a chain (found in [`Node::plugins`]) with the CNI environment.
    pub fn exec_plugin(&self, conf: &Value, command: &str, c: &ContainerSpec, netns: &str) -> Outcome {
        let Some(ty) = conf["type"].as_str() else {
            return Outcome::spawn_failed(format!("plugin config without type: {conf}"));
        };
        let Some(bin) = self.plugins.find(ty) else {
            return Outcome::spawn_failed(format!("plugin {ty:?} not found in {}", self.plugins.cni_path()));
        };
        let mut env = vec![
            ("CNI_COMMAND".to_string(), command.to_string()),
            ("CNI_CONTAINERID".into(), c.id.clone()),
            ("CNI_NETNS".into(), netns.to_string()),
            ("CNI_IFNAME".into(), c.ifname.clone()),
            ("CNI_PATH".into(), self.plugins.cni_path()),
        ];
        if !c.cni_args.is_empty() {
            env.push(("CNI_ARGS".into(), c.cni_args.clone()));
        }
        self.exec(&bin, &[], &env, conf.to_string().as_bytes())
    }

    /// Creates a container namespace and runs ADD through `list` (a conflist: `cniVersion`,
    /// `name`, `plugins`), then waits until the container's interface and its host-side peer
    /// are up. Nothing else is sent before the caller's first packet.
    pub fn add(&self, list: &Value, spec: ContainerSpec) -> R<Container> {
        let ns = Netns::new()?;
        // No duplicate address detection in the container either: the reference `ptp` adds its
        // IPv6 routes right after the address, and a tentative address makes that fail
        // ("invalid argument") now and then. Nothing is sent by this.
        run(
            "ip",
            &[
                "netns",
                "exec",
                ns.name(),
                "sysctl",
                "-qw",
                "net.ipv6.conf.all.accept_dad=0",
                "net.ipv6.conf.default.accept_dad=0",
            ],
        )?;
        let mut c =
            Container { ns, spec, list: list.clone(), result: Value::Null, deleted: false, node: self.name().into() };
        let mut prev: Option<Value> = None;
        for conf in plugin_confs(list)? {
            let conf = with_prev(conf, prev.as_ref());
            let out = self.exec_plugin(&conf, "ADD", &c.spec, c.ns.path());
            ensure!(out.success(), "ADD {} ({}) failed: {}", c.spec.id, conf["type"], out.describe());
            prev = Some(out.json().ok_or_else(|| format!("ADD {}: result is not JSON: {}", c.spec.id, out.stdout))?);
        }
        c.result = prev.unwrap_or(Value::Null);
        wait_carrier(c.ns.name(), &c.spec.ifname, CARRIER_WAIT)?;
        if let Some(host) = c.host_ifname() {
            wait_carrier(self.name(), &host, CARRIER_WAIT)?;
        }
        Ok(c)
    }

    /// Runs `command` (CHECK or DEL) through the chain for `c`, DEL in reverse order, each
    /// with the ADD result as `prevResult`.
    pub fn verb(&self, c: &Container, command: &str) -> R<()> {
        let mut confs = plugin_confs(&c.list)?;
        if command == "DEL" {
            confs.reverse();
        }
        for conf in confs {
            let conf = with_prev(conf, Some(&c.result));
            let out = self.exec_plugin(&conf, command, &c.spec, c.ns.path());
            ensure!(out.success(), "{command} {} ({}) failed: {}", c.spec.id, conf["type"], out.describe());
        }
        Ok(())
    }

    /// DEL through the chain, then the namespace goes.
    pub fn remove(&self, mut c: Container) -> R<()> {
        self.verb(&c, "DEL")?;
        c.deleted = true;
        c.ns.delete()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        let _ = self.ns.delete();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The conflist's plugins, each with the list's `cniVersion` and `name`.
fn plugin_confs(list: &Value) -> R<Vec<Value>> {
    let Some(plugins) = list["plugins"].as_array() else {
        bail!("conflist without plugins: {list}");
    };
    Ok(plugins
        .iter()
        .map(|p| {
            let mut p = p.clone();
            p["cniVersion"] = list["cniVersion"].clone();
            p["name"] = list["name"].clone();
            p
        })
        .collect())
}

fn with_prev(mut conf: Value, prev: Option<&Value>) -> Value {
    if let Some(p) = prev {
        conf["prevResult"] = p.clone();
    }
    conf
}

/// Who a container is: its ID, interface name, `CNI_ARGS` (e.g.
/// `K8S_POD_NAMESPACE=ns;K8S_POD_NAME=web-1`).
#[derive(Debug, Clone)]
pub struct ContainerSpec {
    pub id: String,
    pub ifname: String,
    pub cni_args: String,
}

impl ContainerSpec {
    /// A unique container ID, interface `eth0`, no `CNI_ARGS`.
    pub fn new() -> ContainerSpec {
        ContainerSpec { id: format!("{}-ctr", unique_name(next_id())), ifname: "eth0".into(), cni_args: String::new() }
    }

    /// Kubernetes identity in `CNI_ARGS`, as the kubelet passes it (`IgnoreUnknown=1` keeps the
    /// reference plugins from refusing keys they do not know).
    pub fn pod(namespace: &str, name: &str) -> ContainerSpec {
        let cni_args = format!("IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={name}");
        ContainerSpec { cni_args, ..ContainerSpec::new() }
    }
}

impl Default for ContainerSpec {
    fn default() -> Self {
        ContainerSpec::new()
    }
}

/// An attached container: its namespace and the chain's final result. If not removed through
/// [`Node::remove`], dropping it deletes the namespace only (the node's own drop takes the
/// host side with it).
#[derive(Debug)]
pub struct Container {
    pub ns: Netns,
    pub spec: ContainerSpec,
    pub list: Value,
    pub result: Value,
    deleted: bool,
    node: String,
}

impl Container {
    pub fn id(&self) -> &str {
        &self.spec.id
    }

    pub fn path(&self) -> &Path {
        Path::new(self.ns.path())
    }

    /// The addresses the result gives the container, IPv4 first as the result lists them.
    pub fn addrs(&self) -> Vec<IpAddr> {
        self.result["ips"]
            .as_array()
            .map(|a| {
                a.iter().filter_map(|i| i["address"].as_str()?.split('/').next()?.parse().ok()).collect::<Vec<IpAddr>>()
            })
            .unwrap_or_default()
    }

    pub fn v4(&self) -> IpAddr {
        self.addrs().into_iter().find(IpAddr::is_ipv4).expect("the container has an IPv4 address")
    }

    pub fn v6(&self) -> IpAddr {
        self.addrs().into_iter().find(IpAddr::is_ipv6).expect("the container has an IPv6 address")
    }

    /// The host side interface: of the result's interfaces without a sandbox, the one
    /// enslaved to a bridge (a bridge plugin lists the bridge too), else the last one.
    pub fn host_ifname(&self) -> Option<String> {
        let host: Vec<&str> = self.result["interfaces"]
            .as_array()?
            .iter()
            .filter(|i| i["sandbox"].as_str().is_none_or(str::is_empty))
            .filter_map(|i| i["name"].as_str())
            .collect();
        let enslaved = |n: &&str| {
            ip(&["-n", &self.node, "-j", "link", "show", "dev", n])
                .ok()
                .and_then(|o| serde_json::from_str::<Value>(&o).ok())
                .is_some_and(|v| v[0]["master"].is_string())
        };
        host.iter().find(|n| enslaved(n)).or(host.last()).map(|s| s.to_string())
    }
}

/// The `ipam` section for cni-ipam or host-local: one IPv4 and one IPv6 range set.
pub fn ipam(ty: &str, v4_subnet: &str, v6_subnet: &str, data_dir: &Path) -> Value {
    json!({
        "type": ty,
        "ranges": [[{"subnet": v4_subnet}], [{"subnet": v6_subnet}]],
        "dataDir": data_dir.display().to_string(),
    })
}
