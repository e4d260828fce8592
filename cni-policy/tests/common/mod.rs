//! A private "host" network namespace per test: the bridge, the veths, the nftables tables and
//! the br_netfilter sysctls of the plugins under test all live in it, so tests never meet other
//! tests' tables (the engine's table names are fixed). Containers are further namespaces.
//! Everything is removed on drop, also when an assertion fails.

#![allow(dead_code)]

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};

use serde_json::{json, Value};
use testkit::util::{sh, uniq};

/// Where cargo put this crate's and the other plugins' binaries.
/// Where Debian's containernetworking-plugins puts the reference plugins.
pub const REFERENCE_DIR: &str = "/usr/lib/cni";

pub fn bin(name: &str) -> PathBuf {
    if name == "cni-policy" {
        return PathBuf::from(env!("CARGO_BIN_EXE_cni-policy"));
    }
    let dir = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().to_path_buf();
    let p = dir.join(name);
    assert!(p.is_file(), "{} not found: cargo build --release -p {name}", p.display());
    p
}

pub struct Host {
    pub u: u32,
    /// The host netns the plugins run in.
    pub ns: String,
    pub bridge: String,
    pub network: String,
    pub tmp: tempfile::TempDir,
    pub containers: Vec<String>,
}

impl Host {
    pub fn new() -> Host {
        let u = uniq();
        let ns = format!("cpol{u}h");
        assert!(sh(&format!("ip netns add {ns} && ip -n {ns} link set lo up")).0, "create {ns}");
        Host {
            u,
            ns,
            bridge: format!("cpbr{u}"),
            network: format!("cpnet{u}"),
            tmp: tempfile::tempdir().unwrap(),
            containers: vec![],
        }
    }

    pub fn policy_dir(&self) -> PathBuf {
        let p = self.tmp.path().join("policy.d");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    pub fn state_dir(&self) -> PathBuf {
        self.tmp.path().join("state")
    }

    pub fn write_policy(&self, name: &str, text: &str) {
        let p = self.policy_dir().join(name);
        // Whole file at once, renamed into place (as an operator's tooling would).
        let tmp = self.policy_dir().join(format!(".{name}.tmp"));
        std::fs::write(&tmp, text).unwrap();
        std::fs::rename(&tmp, &p).unwrap();
    }

    /// A new container netns.
    pub fn container(&mut self) -> String {
        let c = format!("cpol{}c{}", self.u, self.containers.len());
        assert!(sh(&format!("ip netns add {c} && ip -n {c} link set lo up")).0, "create {c}");
        self.containers.push(c.clone());
        c
    }

    /// A command run inside the host netns (`ip netns exec` also gives it that netns' sysfs).
    pub fn cmd(&self, prog: &Path) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.ns]).arg(prog).env_clear().env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin");
        c
    }

    /// Runs a plugin binary with the CNI variables (`CNI_IFNAME` eth0) and `conf` on stdin.
    pub fn plugin(
        &self,
        prog: &str,
        cmd: &str,
        cid: &str,
        netns: Option<&str>,
        args: &str,
        conf: &Value,
    ) -> (bool, Value) {
        let mut c = self.cmd(&bin(prog));
        let cni_path = bin("cni-policy").parent().unwrap().display().to_string();
        c.env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", format!("{cni_path}:{}", bin("cni-ipam").parent().unwrap().display()))
            .env("CNI_ARGS", args);
        if let Some(ns) = netns {
            c.env("CNI_NETNS", format!("/var/run/netns/{ns}"));
        }
        let out = feed(c, conf.to_string().as_bytes());
        let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        eprintln!("{prog} {cmd} {cid}: exit {:?} {v}\n{}", out.status.code(), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), v)
    }

    /// Runs a reference plugin (containernetworking/plugins, `/usr/lib/cni`) with ifname eth0.
    pub fn reference(&self, ty: &str, cmd: &str, cid: &str, netns: &str, conf: &Value) -> (bool, Value) {
        let p = Path::new(REFERENCE_DIR).join(ty);
        assert!(
            p.is_file(),
            "{} not found: install the reference CNI plugins (containernetworking-plugins)",
            p.display()
        );
        let mut c = self.cmd(&p);
        c.env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", REFERENCE_DIR)
            .env("CNI_NETNS", format!("/var/run/netns/{netns}"));
        let out = feed(c, conf.to_string().as_bytes());
        let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        eprintln!("{ty} {cmd} {cid}: exit {:?} {v}\n{}", out.status.code(), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), v)
    }

    /// The cni-bridge config of this host's network (IPv4 and IPv6).
    pub fn bridge_conf(&self) -> Value {
        json!({
            "cniVersion": "1.1.0", "name": self.network, "type": "cni-bridge", "bridge": self.bridge,
            "isGateway": true,
            "ipam": {"type": "cni-ipam", "dataDir": self.tmp.path().join("ipam"),
                     "ranges": [[{"subnet": "10.77.0.0/24"}], [{"subnet": "fd77::/64"}]]},
        })
    }

    /// The cni-policy config as a runtime hands it over in a conflist: the network's name and
    /// version, the plugin's keys, and the previous plugin's result.
    pub fn policy_conf(&self, prev: Option<&Value>) -> Value {
        let mut c = json!({
            "cniVersion": "1.1.0", "name": self.network, "type": "cni-policy",
            "policyDir": self.policy_dir(), "stateDir": self.state_dir(),
        });
        if let Some(p) = prev {
            c["prevResult"] = p.clone();
        }
        c
    }

    /// The conflist's ADD: cni-bridge, then cni-policy with its result. Returns both answers.
    pub fn add(&self, cid: &str, netns: &str, args: &str, extra: Value) -> (Value, (bool, Value)) {
        let (ok, bridge_res) = self.plugin("cni-bridge", "ADD", cid, Some(netns), args, &self.bridge_conf());
        assert!(ok, "cni-bridge ADD: {bridge_res}");
        let mut conf = self.policy_conf(Some(&bridge_res));
        for (k, v) in extra.as_object().unwrap() {
            conf[k] = v.clone();
        }
        let pol = self.plugin("cni-policy", "ADD", cid, Some(netns), args, &conf);
        (bridge_res, pol)
    }

    /// `add` that must succeed: the bridge's result (the policy plugin's error fails the test).
    pub fn add_ok(&self, cid: &str, netns: &str, args: &str, extra: Value) -> Value {
        let (res, (ok, v)) = self.add(cid, netns, args, extra);
        assert!(ok, "{v}");
        res
    }

    /// The conflist's DEL, in reverse order.
    pub fn del(&self, cid: &str, netns: Option<&str>) -> (bool, Value) {
        let r = self.plugin("cni-policy", "DEL", cid, netns, "", &self.policy_conf(None));
        let (ok, v) = self.plugin("cni-bridge", "DEL", cid, netns, "", &self.bridge_conf());
        assert!(ok, "cni-bridge DEL: {v}");
        r
    }

    /// `cni-policy ARGS…` in the host netns: exit status, stdout, stderr.
    pub fn cli(&self, args: &[&str]) -> (i32, String, String) {
        let mut c = self.cmd(&bin("cni-policy"));
        c.args(args);
        let out = feed(c, b"");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    pub fn status(&self) -> Value {
        let sd = self.state_dir();
        let (code, out, err) = self.cli(&["status", "--state-dir", sd.to_str().unwrap(), "--json"]);
        assert_eq!(code, 0, "status: {err}");
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON: {e}: {out}"))
    }

    /// `nft -j list table FAMILY cni-policy` in the host netns; None when it does not exist.
    pub fn nft_table(&self, family: &str) -> Option<Value> {
        let (ok, out) = sh(&format!("ip netns exec {} nft -j list table {family} cni-policy 2>/dev/null", self.ns));
        if !ok {
            return None;
        }
        serde_json::from_str(&out).ok()
    }

    /// The (map name, key) pairs of the table's verdict maps.
    pub fn map_keys(&self) -> Vec<(String, String)> {
        let mut out = vec![];
        let Some(t) = self.nft_table("inet") else { return out };
        for o in t["nftables"].as_array().unwrap() {
            if let Some(m) = o.get("map") {
                let name = m["name"].as_str().unwrap_or_default().to_string();
                for e in m["elem"].as_array().cloned().unwrap_or_default() {
                    let k = &e[0];
                    let key = k.as_str().map(str::to_string).unwrap_or_else(|| k.to_string());
                    out.push((name.clone(), key));
                }
            }
        }
        out
    }

    /// Rules in both tables, as `nft -j list table` shows them (an independent reader: not the
    /// engine's own netlink read-back). A table that exists but nft cannot list fails the test.
    pub fn kernel_rules(&self) -> usize {
        ["inet", "bridge"]
            .iter()
            .map(|f| {
                let (_, tables) = sh(&format!("ip netns exec {} nft list tables", self.ns));
                if !tables.lines().any(|l| l.trim() == format!("table {f} cni-policy")) {
                    return 0;
                }
                let (ok, out) = sh(&format!("ip netns exec {} nft -j list table {f} cni-policy", self.ns));
                assert!(ok, "nft cannot list table {f} cni-policy");
                let t: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("nft -j list table {f}: {e}"));
                t["nftables"].as_array().unwrap().iter().filter(|o| o.get("rule").is_some()).count()
            })
            .sum()
    }

    /// Spawns `cni-policy watch` in the host netns with piped stderr.
    pub fn spawn_watch(&self) -> Child {
        self.spawn_watch_with(&self.policy_dir(), &[])
    }

    /// `cni-policy watch --dir DIR EXTRA…` in the host netns with piped stderr.
    pub fn spawn_watch_with(&self, dir: &Path, extra: &[&str]) -> Child {
        let sd = self.state_dir();
        let mut c = self.cmd(&bin("cni-policy"));
        c.args(["watch", "--dir", dir.to_str().unwrap(), "--state-dir", sd.to_str().unwrap()])
            .args(extra)
            .env("CNI_POLICY_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        c.spawn().expect("spawn cni-policy watch")
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for c in &self.containers {
            let _ = sh(&format!("ip netns del {c}"));
        }
        // The bridge, the veths' host ends and the tables go with the host netns.
        let _ = sh(&format!("ip netns del {}", self.ns));
    }
}

fn feed(mut c: Command, stdin: &[u8]) -> Output {
    let mut child = c.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().expect("spawn");
    child.stdin.take().unwrap().write_all(stdin).unwrap();
    child.wait_with_output().unwrap()
}

/// The container's addresses in a cni-bridge result.
pub fn addrs(res: &Value) -> Vec<String> {
    res["ips"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["address"].as_str().unwrap().split('/').next().unwrap().to_string())
        .collect()
}

pub const ALLOW_WEB: &str = "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: allow-web
spec:
  order: 10
  selector: app == 'web'
  types: [Ingress]
  ingress:
  - action: Allow
    protocol: TCP
    destination:
      ports: [80]
";

pub const DB_ONLY_FROM_WEB: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: db
  namespace: prod
spec:
  podSelector:
    matchLabels:
      role: db
  policyTypes: [Ingress]
  ingress:
  - from:
    - podSelector:
        matchLabels:
          app: web
    ports:
    - protocol: TCP
      port: 5432
";

/// A file with an unknown action on line 8 (`spec.ingress[0].action`).
pub const BAD_ACTION: &str = "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: broken
spec:
  selector: all()
  ingress:
  - action: Frobnicate
";

/// The runtime config `{"args": {"cni": {"labels": [...]}}}` that gives a container these labels.
pub fn labels(pairs: &[(&str, &str)]) -> Value {
    let l: Vec<Value> = pairs.iter().map(|(k, v)| json!({"key": k, "value": v})).collect();
    json!({"args": {"cni": {"labels": l}}})
}
