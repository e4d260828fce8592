//! The plugin side of cni-overlay against bad input: GC without the
//! runtime's list, files it did not write in its directory, container IDs
//! with dots, its default directory, and a panic. A hand-written subnet file
//! stands in for the agent; the delegates are the real `cni-bridge` and
//! `cni-ipam` binaries, in real network namespaces.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use testkit::util::{sh, uniq};

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cni-overlay"))
}

/// A host as the plugin sees it: a subnet file, a bridge, namespaces; removed on drop.
struct Host {
    net: String,
    bridge: String,
    dir: PathBuf,
    conf: Value,
    netns: Vec<String>,
    cleanup: Vec<PathBuf>,
}

impl Host {
    fn new(third_octet: u8, data_dir: bool) -> Host {
        assert!(nix::unistd::Uid::effective().is_root(), "these tests need root (netns, links)");
        let bin_dir = bin().parent().unwrap().to_path_buf();
        for d in ["cni-bridge", "cni-ipam"] {
            assert!(
                bin_dir.join(d).is_file(),
                "delegate {d} missing in {}: cargo build --release -p cni-bridge -p ipam",
                bin_dir.display()
            );
        }
        let u = uniq();
        let net = format!("ogc{u}");
        let bridge = format!("ogcbr{u}");
        let dir = std::env::temp_dir().join(format!("cni-overlay-gc-{u}"));
        std::fs::create_dir_all(&dir).unwrap();
        let subnet = dir.join("subnet.env");
        std::fs::write(
            &subnet,
            format!(
                "FLANNEL_NETWORK=10.233.0.0/16\nFLANNEL_SUBNET=10.233.{third_octet}.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
            ),
        )
        .unwrap();
        let mut conf = json!({
            "cniVersion": "1.1.0", "name": net, "type": "cni-overlay",
            "subnetFile": subnet, "delegate": {"bridge": bridge},
        });
        if data_dir {
            conf["dataDir"] = json!(dir.join("state"));
        }
        Host { net, bridge, dir, conf, netns: vec![], cleanup: vec![] }
    }

    fn state(&self) -> PathBuf {
        self.dir.join("state")
    }

    fn netns(&mut self) -> String {
        let ns = format!("{}n{}", self.net, self.netns.len());
        assert!(sh(&format!("ip netns add {ns}")).0);
        self.netns.push(ns.clone());
        ns
    }

    fn call(&self, cmd: &str, cid: &str, ns: &str, conf: &Value, extra: &[(&str, &str)]) -> (bool, Value) {
        let mut c = Command::new(bin());
        c.env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", if ns.is_empty() { String::new() } else { format!("/var/run/netns/{ns}") })
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", bin().parent().unwrap())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped());
        for (k, v) in extra {
            c.env(k, v);
        }
        let mut child = c.spawn().expect("spawn cni-overlay");
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        (out.status.success(), serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
    }

    fn add(&self, cid: &str, ns: &str) -> Value {
        let (ok, v) = self.call("ADD", cid, ns, &self.conf, &[]);
        assert!(ok, "ADD {cid}: {v}");
        v
    }

    fn gc(&self, valid: Option<&[&str]>) -> (bool, Value) {
        let mut conf = self.conf.clone();
        if let Some(valid) = valid {
            let list: Vec<Value> = valid.iter().map(|c| json!({"containerID": c, "ifname": "eth0"})).collect();
            conf["cni.dev/valid-attachments"] = json!(list);
        }
        self.call("GC", "", "", &conf, &[])
    }

    /// Container IDs holding a lease in the delegate IPAM's store under `ipam_dir`.
    fn leases_in(&self, ipam_dir: &Path) -> Vec<String> {
        let mut out: Vec<String> = std::fs::read_dir(ipam_dir.join(&self.net))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.file_name().to_string_lossy().parse::<std::net::IpAddr>().is_ok())
            .map(|e| std::fs::read_to_string(e.path()).unwrap().split("\r\n").next().unwrap().to_string())
            .collect();
        out.sort();
        out
    }

    fn leases(&self) -> Vec<String> {
        self.leases_in(&self.state().join("ipam"))
    }

    fn files(&self) -> BTreeSet<String> {
        std::fs::read_dir(self.state())
            .unwrap()
            .flatten()
            .filter(|e| e.file_type().unwrap().is_file())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect()
    }

    fn record(&self, cid: &str) -> String {
        format!("{}+{cid}+eth0.json", self.net)
    }

    fn ports(&self) -> usize {
        sh(&format!("ip -o link show master {}", self.bridge)).1.lines().count()
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for ns in &self.netns {
            sh(&format!("ip netns del {ns} 2>/dev/null"));
        }
        sh(&format!("ip link del {} 2>/dev/null", self.bridge));
        for p in &self.cleanup {
            let _ = std::fs::remove_dir_all(p).or_else(|_| std::fs::remove_file(p));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

#[test]
fn gc_needs_the_list_and_removes_only_its_own_records() {
    let mut h = Host::new(1, true);
    let (n1, n2) = (h.netns(), h.netns());
    // Dotted IDs that differ only after the dot: one record and one lease each.
    h.add("a.b", &n1);
    h.add("a.c", &n2);
    let ours = BTreeSet::from([h.record("a.b"), h.record("a.c")]);
    assert_eq!(h.files(), ours);
    assert_eq!(h.leases(), ["a.b", "a.c"]);

    // Files we did not write: Flannel's and earlier releases' names, a
    // stranger, another network's record, a look-alike name with other content.
    let other = json!({"kind": "cni-overlay/delegate-v1", "network": "other", "containerID": "x", "ifname": "eth0",
        "delegate": {}});
    let foreign = [
        ("a.c-eth0".to_string(), r#"{"name":"cbr0","type":"bridge"}"#.to_string()),
        ("a.c".to_string(), r#"{"name":"cbr0","type":"bridge"}"#.to_string()),
        ("notes.txt".to_string(), "hello".to_string()),
        ("other+x+eth0.json".to_string(), other.to_string()),
        (h.record("zz"), "not json".to_string()),
    ];
    for (name, body) in &foreign {
        std::fs::write(h.state().join(name), body).unwrap();
    }
    let everything: BTreeSet<String> = ours.iter().cloned().chain(foreign.iter().map(|(n, _)| n.clone())).collect();

    let (ok, err) = h.gc(None);
    assert!(!ok, "GC without cni.dev/valid-attachments must fail");
    assert_eq!(err["code"], 7, "{err}");
    assert_eq!(h.files(), everything, "a refused GC removes nothing");
    assert_eq!(h.leases(), ["a.b", "a.c"], "a refused GC releases nothing");
    assert_eq!(h.ports(), 2);

    let (ok, v) = h.gc(Some(&["a.b"]));
    assert!(ok, "GC [a.b]: {v}");
    let mut want = everything.clone();
    want.remove(&h.record("a.c"));
    assert_eq!(h.files(), want, "only a.c's record goes");
    assert_eq!(h.leases(), ["a.b"], "the delegate got the runtime's list");
    assert_eq!(h.ports(), 1);

    // An explicit empty list: nothing of this network is valid. The agent is
    // gone too (no subnet file): the delegates still get the GC, through the
    // config ADD saved.
    std::fs::remove_file(h.dir.join("subnet.env")).unwrap();
    let (ok, v) = h.gc(Some(&[]));
    assert!(ok, "GC []: {v}");
    want.remove(&h.record("a.b"));
    assert_eq!(h.files(), want, "files we did not write stay");
    assert!(h.leases().is_empty());
    assert_eq!(h.ports(), 0);
}

#[test]
fn default_data_dir_is_ours_and_records_of_earlier_releases_still_delete() {
    let mut h = Host::new(2, false);
    let ours = Path::new(cni_overlay::plugin::DEFAULT_DATA_DIR);
    let legacy = Path::new(cni_overlay::plugin::LEGACY_DATA_DIR);
    assert_ne!(ours, legacy);
    let ipam_default = Path::new("/var/lib/cni/networks");
    h.cleanup.push(ours.join(h.record("c1")));
    h.cleanup.push(ours.join(h.record("c2")));
    h.cleanup.push(legacy.join("c2-eth0"));
    h.cleanup.push(legacy.join("c3-eth0"));
    h.cleanup.push(ours.join(h.record("c3")));
    h.cleanup.push(ipam_default.join(&h.net));
    let (n1, n2, n3) = (h.netns(), h.netns(), h.netns());

    h.add("c1", &n1);
    assert!(ours.join(h.record("c1")).is_file(), "record in {}", ours.display());
    assert!(!legacy.join("c1-eth0").exists(), "nothing written to Flannel's directory");
    assert_eq!(h.leases_in(ipam_default), ["c1"]);
    let (ok, v) = h.call("DEL", "c1", &n1, &h.conf, &[]);
    assert!(ok, "DEL c1: {v}");
    assert!(!ours.join(h.record("c1")).exists());

    // A container added by an earlier release: its record is the bare delegate
    // config under Flannel's directory. DEL still finds and removes it.
    h.add("c2", &n2);
    let rec: Value = serde_json::from_slice(&std::fs::read(ours.join(h.record("c2"))).unwrap()).unwrap();
    std::fs::create_dir_all(legacy).unwrap();
    std::fs::write(legacy.join("c2-eth0"), rec["delegate"].to_string()).unwrap();
    std::fs::remove_file(ours.join(h.record("c2"))).unwrap();
    let (ok, v) = h.call("DEL", "c2", &n2, &h.conf, &[]);
    assert!(ok, "DEL c2: {v}");
    assert!(!legacy.join("c2-eth0").exists(), "our legacy record is removed with the attachment");
    assert!(h.leases_in(ipam_default).is_empty(), "c2's lease released through the legacy record");
    assert_eq!(h.ports(), 0);

    // A file there that is not ours (Flannel's delegate config) is never ours to use or delete.
    h.add("c3", &n3);
    std::fs::write(legacy.join("c3-eth0"), r#"{"name":"cbr0","type":"bridge","ipam":{"type":"host-local"}}"#).unwrap();
    let (ok, v) = h.call("DEL", "c3", &n3, &h.conf, &[]);
    assert!(ok, "DEL c3: {v}");
    assert!(legacy.join("c3-eth0").is_file(), "Flannel's file stays");
    assert!(h.leases_in(ipam_default).is_empty());
}

#[test]
fn a_panicking_plugin_still_answers_with_a_cni_error() {
    let h = Host::new(3, true);
    let (ok, v) = h.call("STATUS", "", "", &h.conf, &[(cni_core::skel::PANIC_FOR_TEST, "STATUS")]);
    assert!(!ok);
    assert_eq!(v["code"], 999, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("panicked"), "{v}");
}

/// The binary: with `CNI_COMMAND` set it is the plugin whatever its
/// arguments (clap never sees them); without it, the clap command line with
/// help on stdout (exit 0) and usage errors on stderr (exit 2).
#[test]
fn the_cni_path_ignores_arguments_and_the_cli_has_help_and_usage_errors() {
    let run = |env: &[(&str, &str)], args: &[&str]| {
        let mut c = Command::new(bin());
        c.env_remove("CNI_COMMAND").envs(env.iter().copied()).args(args).stdin(Stdio::null());
        let out = c.output().expect("run cni-overlay");
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, _) = run(&[("CNI_COMMAND", "VERSION")], &["agent", "--help"]);
    let v: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("not the VERSION answer ({e}): {out}"));
    assert_eq!(code, Some(0));
    assert!(v["supportedVersions"].as_array().is_some_and(|a| !a.is_empty()), "{v}");

    let (code, out, _) = run(&[], &["--help"]);
    assert_eq!(code, Some(0));
    for cmd in ["agent", "leases", "remove-host", "completions", "CNI_COMMAND"] {
        assert!(out.contains(cmd), "{cmd} missing in\n{out}");
    }
    let (code, out, _) = run(&[], &["agent", "-h"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("--subnet-lease-renew-margin"), "{out}");

    let (code, out, err) = run(&[], &["agent", "--subnet-lease-ttl", "soon"]);
    assert_eq!(code, Some(2));
    assert!(out.is_empty() && err.contains("--subnet-lease-ttl") && err.contains("soon"), "{err}");
    let (code, _, err) = run(&[], &[]);
    assert_eq!(code, Some(2));
    assert!(err.contains("Usage:"), "{err}");
    let (code, out, _) = run(&[], &["completions", "bash"]);
    assert_eq!(code, Some(0));
    assert!(out.contains("complete") && out.contains("--etcd-endpoints"), "{out}");
}
