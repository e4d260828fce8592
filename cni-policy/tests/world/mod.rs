//! The policy tests' world: a node namespace (testkit::node) where a network plugin and
//! `cni-policy` run chained as a conflist (the network plugin's result is cni-policy's
//! `prevResult`), containers with Kubernetes identity and labels, the policy directory and the
//! state directory of this node, and the `cni-policy` CLI run inside the node.
//!
//! Everything cni-policy touches (`table inet cni-policy`, `table bridge cni-policy`,
//! conntrack, the bridge sysctls) lives in the node's namespace, so these tests run in
//! parallel with each other and with other suites; dropping the world removes it all.

#![allow(dead_code)] // each test binary uses part of it

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::node::{ipam, Container, ContainerSpec, Node};
use testkit::plugin::{Outcome as CmdOutcome, PluginSet};
use testkit::probe::{run_all, EchoServer, Outcome, Probe};
use testkit::util::SYS_PATH;

/// Ports every container (and the node) answers on, TCP and UDP.
pub const PORTS: [u16; 9] = [80, 443, 5432, 5433, 7777, 7999, 8005, 8011, 9000];

pub const SUBNET4: &str = "10.66.0.0/24";
pub const SUBNET6: &str = "fd66::/64";

pub fn cni_policy_bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cni-policy"))
}

/// Which network plugin cni-policy is chained after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Network {
    /// Ours: `cni-bridge` with `cni-ipam` in-process (the binary must sit next to cni-policy:
    /// `cargo build --release -p cni-bridge`).
    Bridge,
    /// The reference `bridge` with `host-local` from /usr/lib/cni.
    ReferenceBridge,
    /// Routed veths without a bridge (the shape of cni-bgp's attachments): the reference
    /// `ptp` with `host-local`; the node's end of every veth holds the gateway addresses.
    ReferencePtp,
}

pub struct World {
    // Field order is drop order: echo servers and the daemon go before the namespaces.
    echo: Vec<(PathBuf, EchoServer)>,
    watch: Option<Watch>,
    pub node: Node,
    pub policy_dir: PathBuf,
    pub state_dir: PathBuf,
    list: Value,
}

impl World {
    pub fn new(net: Network) -> World {
        let bin_dir = cni_policy_bin().parent().expect("binary dir").to_path_buf();
        let plugins = PluginSet::new(&bin_dir).with_dir("/usr/lib/cni");
        let (ty, ipam_ty, cni_version) = match net {
            Network::Bridge => {
                assert!(
                    bin_dir.join("cni-bridge").is_file(),
                    "{} has no cni-bridge: build it first (cargo build --release -p cni-bridge -p cni-policy)",
                    bin_dir.display()
                );
                ("cni-bridge", "cni-ipam", "1.1.0")
            }
            Network::ReferenceBridge => {
                assert!(
                    Path::new("/usr/lib/cni/bridge").is_file() && Path::new("/usr/lib/cni/host-local").is_file(),
                    "/usr/lib/cni/bridge and host-local are missing (apt-get install containernetworking-plugins)"
                );
                ("bridge", "host-local", "1.0.0")
            }
            Network::ReferencePtp => {
                assert!(
                    Path::new("/usr/lib/cni/ptp").is_file() && Path::new("/usr/lib/cni/host-local").is_file(),
                    "/usr/lib/cni/ptp and host-local are missing (apt-get install containernetworking-plugins)"
                );
                ("ptp", "host-local", "1.0.0")
            }
        };
        let node = Node::new(plugins).unwrap_or_else(|e| panic!("node: {e}"));
        let (policy_dir, state_dir) = (node.dir.join("policy.d"), node.dir.join("state"));
        std::fs::create_dir_all(&policy_dir).unwrap();
        let list = json!({"cniVersion": cni_version, "name": "polnet", "plugins": [
            {"type": ty, "bridge": "pbr0", "isGateway": true,
             "ipam": ipam(ipam_ty, SUBNET4, SUBNET6, &node.dir.join("ipam"))},
            {"type": "cni-policy", "policyDir": policy_dir.display().to_string(),
             "stateDir": state_dir.display().to_string()},
        ]});
        World { echo: Vec::new(), watch: None, node, policy_dir, state_dir, list }
    }

    /// The conflist (network plugin, then cni-policy), for a test that needs other subnets or
    /// more cni-policy keys (`plugins[1]`).
    pub fn list_mut(&mut self) -> &mut Value {
        &mut self.list
    }

    /// The node's addresses on the bridge (the gateways).
    pub fn gw4(&self) -> IpAddr {
        "10.66.0.1".parse().unwrap()
    }
    pub fn gw6(&self) -> IpAddr {
        "fd66::1".parse().unwrap()
    }

    /// Writes a policy file as an editor that saves atomically would (temporary file, then
    /// rename into the directory), so the daemon never reads half a file.
    pub fn write_policy(&self, file: &str, yaml: &str) {
        let tmp = self.node.dir.join(format!(".{file}.tmp"));
        std::fs::write(&tmp, yaml).unwrap();
        std::fs::rename(&tmp, self.policy_dir.join(file)).unwrap();
    }

    pub fn remove_policy(&self, file: &str) {
        std::fs::remove_file(self.policy_dir.join(file)).unwrap();
    }

    /// ADD through the chain: a pod `name` of namespace `ns` with `labels` (the CNI
    /// conventions' `args.cni.labels`), answering TCP and UDP on [`PORTS`].
    pub fn add(&mut self, ns: &str, name: &str, labels: &[(&str, &str)]) -> Container {
        let c = self.add_quiet(ns, name, labels);
        self.serve(c.path());
        c
    }

    /// ADD without echo servers.
    pub fn add_quiet(&self, ns: &str, name: &str, labels: &[(&str, &str)]) -> Container {
        let labels: Vec<Value> = labels.iter().map(|(k, v)| json!({"key": k, "value": v})).collect();
        let mut list = self.list.clone();
        for p in list["plugins"].as_array_mut().unwrap() {
            p["args"] = json!({"cni": {"labels": labels}});
        }
        self.node.add(&list, ContainerSpec::pod(ns, name)).unwrap_or_else(|e| panic!("{e}"))
    }

    /// Echo servers on [`PORTS`] in a namespace (a container's or the node's).
    pub fn serve(&mut self, netns: &Path) {
        for p in PORTS {
            self.echo.push((netns.to_path_buf(), EchoServer::start(netns, p).unwrap_or_else(|e| panic!("{e}"))));
        }
    }

    /// The echo server of a namespace on a port.
    pub fn echo(&self, netns: &Path, port: u16) -> &EchoServer {
        self.echo.iter().find(|(n, e)| n == netns && e.port == port).map(|(_, e)| e).expect("an echo server there")
    }

    pub fn del(&self, c: Container) {
        self.node.remove(c).unwrap_or_else(|e| panic!("{e}"));
    }

    /// `cni-policy ARGS` in the node namespace.
    pub fn cli(&self, args: &[&str]) -> CmdOutcome {
        self.node.exec(&cni_policy_bin(), args, &[], b"")
    }

    /// `cni-policy label --state-dir … CONTAINER key=value…`, which must succeed.
    pub fn label(&self, c: &Container, kv: &[&str]) {
        let sd = self.state_dir.display().to_string();
        let mut args = vec!["label", "--state-dir", &sd, c.id()];
        args.extend_from_slice(kv);
        let out = self.cli(&args);
        assert!(out.success(), "cni-policy {args:?}: {}", out.describe());
    }

    /// `cni-policy status --json`.
    pub fn status(&self) -> Value {
        let sd = self.state_dir.display().to_string();
        let out = self.cli(&["status", "--state-dir", &sd, "--json"]);
        assert!(out.success(), "cni-policy status: {}", out.describe());
        out.json().unwrap_or_else(|| panic!("status is not JSON: {}", out.stdout))
    }

    /// Starts `cni-policy watch` on this node's directories (stopped when the world goes).
    pub fn watch(&mut self) {
        self.watch_with(&[]);
    }

    /// [`World::watch`] with more arguments.
    pub fn watch_with(&mut self, extra: &[&str]) {
        let log = self.node.dir.join("watch.log");
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", self.node.name()])
            .arg(cni_policy_bin())
            .args(["watch", "--dir"])
            .arg(&self.policy_dir)
            .arg("--state-dir")
            .arg(&self.state_dir)
            // The daemon's safety net for a change inotify did not report is its resync tick
            // (10 s by default, as long as the tests wait): 2 s keeps a missed event from
            // failing a test, and the debug log shows each inotify batch, so a miss is visible.
            .args(["--resync-interval", "2s"])
            .args(extra)
            .env_clear()
            .env("PATH", SYS_PATH)
            .env("CNI_POLICY_LOG", "debug")
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("spawn cni-policy watch");
        self.watch = Some(Watch { child, log });
    }

    /// What the daemon wrote so far.
    pub fn watch_log(&self) -> String {
        self.watch.as_ref().map(|w| std::fs::read_to_string(&w.log).unwrap_or_default()).unwrap_or_default()
    }
}

/// The `cni-policy watch` process (`ip netns exec` execs it, so the pid is the daemon's).
struct Watch {
    child: Child,
    log: PathBuf,
}

impl Drop for Watch {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Protocol of a probe in the tests' tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum P {
    Tcp(u16),
    Udp(u16),
    Ping,
}

/// One probe from a namespace to an address.
pub fn probe(from: &Path, dst: IpAddr, p: P) -> Probe {
    match p {
        P::Tcp(port) => Probe::tcp(from, SocketAddr::new(dst, port)),
        P::Udp(port) => Probe::udp(from, SocketAddr::new(dst, port)),
        P::Ping => Probe::ping(from, dst),
    }
}

/// Expected outcome of a probe: answered or dropped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Want {
    Pass,
    Drop,
}

/// Runs all `cases` at once; panics listing every case whose outcome is not the wanted one.
/// A Drop case is only meaningful next to a Pass case over the same path, which the tests'
/// tables always include.
pub fn expect(what: &str, cases: &[(&str, Probe, Want)]) {
    let probes: Vec<Probe> = cases.iter().map(|c| c.1.clone()).collect();
    let got = run_all(&probes);
    let mut bad = Vec::new();
    for ((name, p, want), got) in cases.iter().zip(got) {
        let ok = matches!((&got, want), (Ok(Outcome::Answered), Want::Pass) | (Ok(Outcome::Silent), Want::Drop));
        if !ok {
            bad.push(format!("  {name}: {:?} wanted {want:?}, got {got:?}", p.kind));
        }
    }
    assert!(bad.is_empty(), "{what}:\n{}", bad.join("\n"));
}

/// Polls (up to `timeout`) until `f` holds, e.g. until the daemon has applied a change; a
/// probe-based condition waits its own drop time each round, so no extra pause.
pub fn eventually(timeout: Duration, what: &str, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "not within {timeout:?}: {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a single probe is answered.
pub fn answered(p: &Probe) -> bool {
    p.run().unwrap_or_else(|e| panic!("{e}")) == Outcome::Answered
}
