//! Helpers shared by the integration tests: a throw-away dataDir, contexts
//! for in-process calls, and runners for the `cni-ipam` and host-local
//! binaries.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};

use cni_core::Context;
use serde_json::{json, Value};

pub const BIN: &str = env!("CARGO_BIN_EXE_cni-ipam");
pub const HOST_LOCAL: &str = "/usr/lib/cni/host-local";

static SEQ: AtomicUsize = AtomicUsize::new(0);

/// A unique dataDir, removed on drop.
pub struct TestDir {
    pub data_dir: PathBuf,
}

impl TestDir {
    pub fn new(tag: &str) -> TestDir {
        let data_dir = std::env::temp_dir().join(format!(
            "cni-ipam-test-{tag}-{}-{}",
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = std::fs::remove_dir_all(&data_dir);
        std::fs::create_dir_all(&data_dir).unwrap();
        TestDir { data_dir }
    }

    pub fn net_dir(&self, network: &str) -> PathBuf {
        self.data_dir.join(network)
    }

    /// A network config whose `ipam` section is `ipam` plus our dataDir.
    pub fn conf(&self, network: &str, mut ipam: Value) -> Value {
        ipam["type"] = json!("cni-ipam");
        ipam["dataDir"] = json!(self.data_dir.to_str().unwrap());
        json!({"cniVersion":"1.1.0","name":network,"type":"cni-ipam","ipam":ipam})
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

pub fn env_for(cmd: &str, id: &str, ifname: &str, cni_args: &str) -> Vec<(&'static str, String)> {
    let mut v = vec![("CNI_COMMAND", cmd.to_string()), ("CNI_PATH", "/usr/lib/cni".to_string())];
    if !id.is_empty() {
        v.push(("CNI_CONTAINERID", id.to_string()));
        v.push(("CNI_IFNAME", ifname.to_string()));
    }
    if cmd == "ADD" || cmd == "CHECK" {
        v.push(("CNI_NETNS", "/proc/self/ns/net".to_string()));
    }
    if !cni_args.is_empty() {
        v.push(("CNI_ARGS", cni_args.to_string()));
    }
    v
}

/// A validated context, as skel would build it.
pub fn ctx(cmd: &str, id: &str, ifname: &str, conf: &Value, cni_args: &str) -> Context {
    try_ctx(cmd, id, ifname, conf, cni_args).expect("valid context")
}

/// The context cni-core builds for this call, or the error it answers instead.
pub fn try_ctx(cmd: &str, id: &str, ifname: &str, conf: &Value, cni_args: &str) -> cni_core::Result<Context> {
    let vars: BTreeMap<&str, String> = env_for(cmd, id, ifname, cni_args).into_iter().collect();
    let env = move |k: &str| vars.get(k).cloned();
    Context::from_parts(&env, conf.to_string().as_bytes())
}

/// Starts a plugin binary with the CNI environment and config on stdin.
pub fn spawn(bin: &str, cmd: &str, id: &str, ifname: &str, conf: &Value, cni_args: &str) -> Child {
    let mut c = Command::new(bin);
    c.env_clear()
        .envs(env_for(cmd, id, ifname, cni_args))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = c.spawn().expect("spawn plugin");
    let mut stdin = child.stdin.take().unwrap();
    // The child may die before reading; that is the caller's business.
    let _ = stdin.write_all(conf.to_string().as_bytes());
    drop(stdin);
    child
}

pub fn run(bin: &str, cmd: &str, id: &str, ifname: &str, conf: &Value, cni_args: &str) -> Output {
    spawn(bin, cmd, id, ifname, conf, cni_args).wait_with_output().expect("wait plugin")
}

/// Runs and returns (success, parsed stdout or Null).
pub fn run_json(bin: &str, cmd: &str, id: &str, ifname: &str, conf: &Value, cni_args: &str) -> (bool, Value) {
    let out = run(bin, cmd, id, ifname, conf, cni_args);
    let v = if out.stdout.iter().all(u8::is_ascii_whitespace) {
        Value::Null
    } else {
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{cmd} {id}: stdout is not JSON ({e}): {}\nstderr: {}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    (out.status.success(), v)
}

/// Every lease file of a network dir: address -> raw content.
pub fn leases(net_dir: &Path) -> BTreeMap<String, String> {
    let mut m = BTreeMap::new();
    let Ok(rd) = std::fs::read_dir(net_dir) else {
        return m;
    };
    for e in rd {
        let e = e.unwrap();
        let name = e.file_name().into_string().unwrap();
        if name.parse::<std::net::IpAddr>().is_ok() {
            m.insert(name, std::fs::read_to_string(e.path()).unwrap());
        }
    }
    m
}

/// Names in a network dir starting with `prefix`.
pub fn files_with_prefix(net_dir: &Path, prefix: &str) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir(net_dir) else {
        return Vec::new();
    };
    rd.map(|e| e.unwrap().file_name().into_string().unwrap()).filter(|n| n.starts_with(prefix)).collect()
}

/// The addresses of a result, as "ip/len" strings.
pub fn addresses(result: &Value) -> Vec<String> {
    result["ips"]
        .as_array()
        .map(|a| a.iter().map(|ip| ip["address"].as_str().unwrap().to_string()).collect())
        .unwrap_or_default()
}

pub fn ip_of(addr: &str) -> String {
    addr.split('/').next().unwrap().to_string()
}

/// xorshift64* (`testkit::rng`): enough randomness for the tests without a dependency.
#[allow(unused_imports)] // not every test binary draws
pub use testkit::rng::{Draw, XorShift64Star as Rng};

/// A generator seeded from `IPAM_TEST_SEED`, else the clock (the seed is printed to replay).
pub fn rng_from_time() -> Rng {
    let seed = std::env::var("IPAM_TEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 | 1
    });
    eprintln!("rng seed {seed} (set IPAM_TEST_SEED to replay)");
    Rng(seed)
}

pub fn host_local_available() -> bool {
    Path::new(HOST_LOCAL).is_file()
}
