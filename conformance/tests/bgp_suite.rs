//! The suite against `cni-bgp` + `cni-ipam` in cluster blocks mode, with a
//! live `cni-bgp agent` (real etcd) for the suite's host: zero failures,
//! STATUS included. The host is a network namespace of a `testkit::lab::Lab`
//! (the suite's `cali…` links, /32 routes and the agent's blackhole routes
//! never touch the machine's own), the suite runs inside it, and the agent
//! runs there too with the plugin's `stateDir`. Every check's network is a
//! network of the agent's etcd prefix, so the agent sees each check's blocks
//! come and go while the suite runs.
//!
//! Needs the workspace built (`cni-bgp`, `cni-ipam` next to `conformance`)
//! and etcd.

mod common;

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};
use testkit::lab::{HostId, Lab, ProcessGuard};

const NODE: &str = "suite-node";

/// `{"ready": …}` from the agent's status socket, if one answers.
fn agent_ready(state_dir: &Path) -> Option<bool> {
    let s = UnixStream::connect(state_dir.join("status.sock")).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    let mut line = String::new();
    BufReader::new(s).read_line(&mut line).ok()?;
    serde_json::from_str::<Value>(&line).ok()?["ready"].as_bool()
}

struct Host {
    lab: Lab,
    h: HostId,
    state_dir: PathBuf,
    prefix: String,
}

impl Host {
    fn new() -> Host {
        let mut lab = Lab::new("bgpsuite").expect("lab");
        lab.start_etcd().expect("etcd");
        let x = 100 + (std::process::id() % 100);
        let seg = lab.segment(&format!("192.168.{x}.0/24")).expect("segment");
        let h = lab.host(seg).expect("host");
        let state_dir = lab.dir().join("state");
        let prefix = format!("/cft-bgp-suite-{}", std::process::id());
        Host { lab, h, state_dir, prefix }
    }

    /// `cni-bgp agent` in the host, as docs/cni-bgp.md runs it; waits until
    /// its status socket answers ready.
    fn start_agent(&self, plugins: &Path) -> ProcessGuard {
        let bin = plugins.join("cni-bgp");
        let url = self.lab.etcd_url().expect("etcd url");
        let ip = self.lab.host_ip(self.h).to_string();
        let state = self.state_dir.display().to_string();
        let args = [
            "agent",
            "--etcd-endpoints",
            &url,
            "--etcd-prefix",
            &self.prefix,
            "--node-name",
            NODE,
            "--node-ip",
            &ip,
            "--state-dir",
            &state,
        ];
        let g = self.lab.spawn(self.h, &bin.display().to_string(), &args, &[]).expect("spawn agent");
        let end = Instant::now() + Duration::from_secs(20);
        while agent_ready(&self.state_dir) != Some(true) {
            assert!(g.is_running(), "agent exited:\n{}", g.log());
            assert!(Instant::now() < end, "agent not ready after 20 s:\n{}", g.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        g
    }

    /// The network config the suite derives each check's network from:
    /// the suite replaces the pool (see `testkit::net::TestNet`), the rest
    /// is what deploy/cni/10-bgp.conflist has.
    fn config(&self) -> Value {
        json!({
            "cniVersion": "1.1.0",
            "name": "cft-bgp",
            "type": "cni-bgp",
            "mtu": 1400,
            "natOutgoing": true,
            "stateDir": self.state_dir,
            "ipam": {
                "type": "cni-ipam",
                "cluster": {
                    "mode": "blocks",
                    "etcdEndpoints": [self.lab.etcd_url().expect("etcd url")],
                    "etcdPrefix": self.prefix,
                    "pool": "10.244.0.0/16",
                    "blockSize": 26,
                    "strictAffinity": true,
                    "host": NODE,
                }
            }
        })
    }
}

fn require_bgp_plugins() -> PathBuf {
    let d = our_dir();
    for b in ["cni-bgp", "cni-ipam"] {
        assert!(
            d.join(b).is_file(),
            "{b} not found in {}: build the workspace first (`cargo build --release --workspace`), or set \
             CFT_PLUGIN_DIR",
            d.display()
        );
    }
    d
}

#[test]
fn cni_bgp_with_a_live_agent_passes_every_check() {
    require_root();
    let plugins = require_bgp_plugins();
    let host = Host::new();
    let agent = host.start_agent(&plugins);
    let ns = host.lab.host_ns(host.h).to_string();

    let run = run_suite_in(Some(&ns), &plugins, None, &host.config(), &[]);
    eprintln!("{}", run.pretty());
    assert!(agent.is_running(), "the agent died during the suite:\n{}", agent.log());
    assert!(run.failed().is_empty(), "failures: {:?}\n{}\nagent log:\n{}", run.failed(), run.pretty(), agent.log());
    assert_eq!(run.code, 0);
    assert_eq!(run.report["info"]["cniVersion"], "1.1.0");
    run.expect(&CORE_CHECKS, "pass");
    run.expect(
        &[
            "add-result-1.1.0",
            "error-missing-netns",
            "status",
            "status-exhausted",
            "gc-frees-invalid",
            "gc-without-list-keeps-all",
            "gc-empty-list-frees-all",
            "results-cached-del",
        ],
        "pass",
    );
    // STATUS while the pool is used up: cni-ipam's answer (strictAffinity, every block claimed).
    let (_, detail) = &run.results["status-exhausted"];
    assert_eq!(detail, "code 50 while exhausted, 0 after DEL");

    // What made STATUS pass is the live agent: stopped, STATUS is code 50.
    assert!(agent.signal(libc::SIGTERM), "signal the agent");
    let st = agent.wait_timeout(Duration::from_secs(10)).expect("agent did not exit on SIGTERM");
    assert!(st.success(), "agent exit {st:?}:\n{}", agent.log());
    let run = run_suite_in(Some(&ns), &plugins, None, &host.config(), &["status"]);
    run.expect(&["status"], "fail");
    let (_, detail) = &run.results["status"];
    assert!(detail.contains("\"code\":50") && detail.contains("cni-bgp agent"), "{detail}");
}
