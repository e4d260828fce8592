//! Command line: `cni`, `csi`, `interop`, `bench cni`, `bench overlay`, `demo [--overlay]`, `list`, `cleanup`.
//! Tables and JSON go to stdout, progress to stderr.
#![allow(clippy::print_stdout)]

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::{bench, bench_overlay, demo};
use cni_suite::checks::{catalog, Suite};
use cni_suite::interop;
use cni_suite::interop::own_dir;
use testkit::plugin::PluginSet;
use testkit::util::R;
use testkit::{net, report};

pub const USAGE: &str = "\
usage:
  conformance cni --plugin-dir DIR --config FILE [--ipam-plugin-dir DIR] [--only NAME...] [--json]
      run the conformance checks against the plugin named by the config's \"type\"
  conformance csi --endpoint URL [--controller-endpoint URL] [--params FILE] [--secrets FILE]
                  [--mount-dir DIR] [--focus SUBSTR]... [--skip SUBSTR]... [--volume-size BYTES]
                  [--expand-size BYTES] [--mutable-params FILE] [--rpc-timeout SECS]
      csi-sanity's specs against a CSI driver (unix:///path.sock or tcp://host:port)
  conformance csi list               the CSI specs and the capabilities each needs
  conformance interop [--plugin-dir DIR] [--ref-dir /usr/lib/cni] [--json]
      ours (cni-bridge, cni-ipam) mixed with / chained to the reference plugins
  conformance bench cni [--n 50] [--plugin-dir DIR] [--ref-dir /usr/lib/cni] [--json]
      ADD/DEL latency, ours vs reference, ipMasq off/on
  conformance bench overlay [--plugin-dir DIR] [--hosts 3,10,30] [--joins 5] [--allocs 2000] [--json]
      cni-overlay in a lab: route convergence of a joining host, iperf3 over
      the overlay vs a veth pair, allocations/s (etcd txn per IP vs local store)
  conformance bench csi-nfs [--driver PATH] [--n 20] [--no-node] [--json]
      csi-nfs vs the raw operations: CreateVolume/DeleteVolume vs NFS mkdir/rmdir
      (host, nfs-ganesha), NodePublish/Unpublish vs mount/umount (one guest kernel)
  conformance demo [--plugin-dir DIR] [--ipam-plugin-dir DIR] [--bridge-type cni-bridge] [--ipam-type cni-ipam]
      three containers on one bridge, pings, verified teardown
  conformance demo --overlay [--plugin-dir DIR]
      three lab hosts (one behind a router), etcd, cni-overlay agents, one
      container per host, pings, a VXLAN packet, verified teardown
  conformance list [--markdown]      the checks and what they verify
  conformance cleanup                remove leftovers of dead conformance runs
--plugin-dir defaults to the directory of this binary. Needs root.
";

struct Args {
    pos: Vec<String>,
    flags: BTreeMap<String, Vec<String>>,
}

impl Args {
    fn parse(a: &[String]) -> R<Args> {
        let mut pos = Vec::new();
        let mut flags: BTreeMap<String, Vec<String>> = BTreeMap::new();
        let mut i = 0;
        while i < a.len() {
            let s = &a[i];
            if let Some(f) = s.strip_prefix("--") {
                let (name, inline) = match f.split_once('=') {
                    Some((n, v)) => (n.to_string(), Some(v.to_string())),
                    None => (f.to_string(), None),
                };
                let e = flags.entry(name.clone()).or_default();
                if let Some(v) = inline {
                    e.push(v);
                } else if matches!(name.as_str(), "json" | "markdown" | "help" | "overlay" | "no-node" | "node-only") {
                } else if name == "only" {
                    while i + 1 < a.len() && !a[i + 1].starts_with("--") {
                        i += 1;
                        e.extend(a[i].split(',').filter(|x| !x.is_empty()).map(String::from));
                    }
                } else {
                    i += 1;
                    let v = a.get(i).ok_or_else(|| format!("--{name} needs a value"))?;
                    e.push(v.clone());
                }
            } else {
                pos.push(s.clone());
            }
            i += 1;
        }
        Ok(Args { pos, flags })
    }

    fn get(&self, k: &str) -> Option<&str> {
        self.flags.get(k).and_then(|v| v.last()).map(String::as_str)
    }

    fn has(&self, k: &str) -> bool {
        self.flags.contains_key(k)
    }

    fn dir(&self, k: &str, default: PathBuf) -> PathBuf {
        self.get(k).map(PathBuf::from).unwrap_or(default)
    }

    fn check_known(&self, known: &[&str]) -> R<()> {
        for k in self.flags.keys() {
            if !known.contains(&k.as_str()) {
                return Err(format!("unknown option --{k}"));
            }
        }
        Ok(())
    }
}

/// Entry point; returns the process exit code (0 ok, 1 checks failed, 2 usage/setup error).
pub fn main(argv: &[String]) -> i32 {
    match dispatch(argv) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("conformance: {e}");
            2
        }
    }
}

fn need_root() -> R<()> {
    if nix::unistd::geteuid().is_root() {
        Ok(())
    } else {
        Err("must run as root (creates network namespaces and bridges)".into())
    }
}

fn dispatch(argv: &[String]) -> R<i32> {
    let a = Args::parse(argv)?;
    testkit::util::install_interrupt_handler();
    if a.has("help") || a.pos.is_empty() {
        print!("{USAGE}");
        return Ok(if a.pos.is_empty() && !a.has("help") { 2 } else { 0 });
    }
    match a.pos[0].as_str() {
        "cni" => {
            a.check_known(&["plugin-dir", "config", "ipam-plugin-dir", "only", "json"])?;
            need_root()?;
            cmd_cni(&a)
        }
        "csi" if a.pos.get(1).map(String::as_str) == Some("list") => {
            print!("{}", csi_suite::csi::list());
            Ok(0)
        }
        "csi" => {
            a.check_known(CSI_FLAGS)?;
            cmd_csi(&a)
        }
        "interop" => {
            a.check_known(&["plugin-dir", "ref-dir", "json"])?;
            need_root()?;
            let ours = a.dir("plugin-dir", own_dir());
            let reference = a.dir("ref-dir", PathBuf::from("/usr/lib/cni"));
            let rs = interop::run_all(&ours, &reference);
            let title = format!("CNI interop: ours {} / reference {}", ours.display(), reference.display());
            emit(&a, &title, json!({}), &[], &rs);
            Ok(i32::from(report::counts(&rs).1 > 0))
        }
        "bench" if a.pos.get(1).map(String::as_str) == Some("csi-nfs") => {
            a.check_known(&["driver", "n", "no-node", "node-only", "server", "port", "json"])?;
            need_root()?;
            cmd_bench_csi(&a)
        }
        "bench" if a.pos.get(1).map(String::as_str) == Some("overlay") => {
            a.check_known(&["plugin-dir", "hosts", "joins", "allocs", "json"])?;
            need_root()?;
            cmd_bench_overlay(&a)
        }
        "bench" => {
            a.check_known(&["n", "plugin-dir", "ref-dir", "json"])?;
            if a.pos.get(1).map(String::as_str) != Some("cni") {
                return Err("usage: conformance bench cni [--n 50] ... | conformance bench overlay ...".into());
            }
            need_root()?;
            let n: usize = a.get("n").unwrap_or("50").parse().map_err(|e| format!("--n: {e}"))?;
            let ours = a.dir("plugin-dir", own_dir());
            let reference = a.dir("ref-dir", PathBuf::from("/usr/lib/cni"));
            let r = bench::run(n, &ours, &reference)?;
            if a.has("json") {
                println!("{}", r.to_json());
            } else {
                print!("{}", r.table());
            }
            Ok(0)
        }
        "demo" if a.has("overlay") => {
            a.check_known(&["plugin-dir", "overlay"])?;
            need_root()?;
            let ok = demo::run_overlay(&a.dir("plugin-dir", own_dir()), &mut |l| println!("{l}"))?;
            println!("{}", if ok { "demo: OK" } else { "demo: FAILED" });
            Ok(i32::from(!ok))
        }
        "demo" => {
            a.check_known(&["plugin-dir", "ipam-plugin-dir", "bridge-type", "ipam-type"])?;
            need_root()?;
            let mut ps = PluginSet::new(a.dir("plugin-dir", own_dir()));
            if let Some(d) = a.get("ipam-plugin-dir") {
                ps = ps.with_dir(d);
            }
            let o = demo::DemoOpts {
                ps,
                bridge_type: a.get("bridge-type").unwrap_or("cni-bridge").into(),
                ipam_type: a.get("ipam-type").unwrap_or("cni-ipam").into(),
            };
            let ok = demo::run(&o, &mut |l| println!("{l}"))?;
            println!("{}", if ok { "demo: OK" } else { "demo: FAILED" });
            Ok(i32::from(!ok))
        }
        "list" => {
            for c in catalog() {
                if a.has("markdown") {
                    println!("| `{}` | {} |", c.name, c.about);
                } else {
                    println!("{:<24} {}", c.name, c.about);
                }
            }
            Ok(0)
        }
        "cleanup" => {
            need_root()?;
            for r in net::sweep_dead_runs() {
                println!("removed {r}");
            }
            Ok(0)
        }
        other => Err(format!("unknown command {other:?}\n{USAGE}")),
    }
}

const CSI_FLAGS: &[&str] = &[
    "endpoint",
    "controller-endpoint",
    "params",
    "secrets",
    "mount-dir",
    "focus",
    "skip",
    "volume-size",
    "expand-size",
    "mutable-params",
    "rpc-timeout",
];

fn cmd_csi(a: &Args) -> R<i32> {
    let endpoint = |k: &str| -> R<Option<csi_core::flags::Endpoint>> {
        a.get(k)
            .map(|e| e.parse().map_err(|e: csi_core::Error| e.to_string().replace("--endpoint", &format!("--{k}"))))
            .transpose()
    };
    let file = |k: &str| -> R<Option<String>> {
        a.get(k).map(|f| std::fs::read_to_string(f).map_err(|e| format!("--{k} {f}: {e}"))).transpose()
    };
    let num =
        |k: &str| -> R<Option<u64>> { a.get(k).map(|v| v.parse().map_err(|e| format!("--{k}: {e}"))).transpose() };
    let mut o = csi_suite::csi::Options::new(endpoint("endpoint")?.ok_or("--endpoint is required")?);
    o.controller_endpoint = endpoint("controller-endpoint")?;
    if let Some(t) = file("params")? {
        o.params = csi_suite::csi::config::parse_map(&t).map_err(|e| format!("--params: {e}"))?;
    }
    if let Some(t) = file("mutable-params")? {
        o.mutable_params = csi_suite::csi::config::parse_map(&t).map_err(|e| format!("--mutable-params: {e}"))?;
    }
    if let Some(t) = file("secrets")? {
        o.secrets = csi_suite::csi::config::parse_secrets(&t).map_err(|e| format!("--secrets: {e}"))?;
    }
    if let Some(d) = a.get("mount-dir") {
        o.mount_dir = PathBuf::from(d);
    }
    o.focus = a.flags.get("focus").cloned().unwrap_or_default();
    o.skip = a.flags.get("skip").cloned().unwrap_or_default();
    if let Some(n) = num("volume-size")? {
        o.volume_size = i64::try_from(n).map_err(|e| format!("--volume-size: {e}"))?;
    }
    if let Some(n) = num("expand-size")? {
        o.expand_size = i64::try_from(n).map_err(|e| format!("--expand-size: {e}"))?;
    }
    if let Some(n) = num("rpc-timeout")? {
        o.rpc_timeout = std::time::Duration::from_secs(n.max(1));
    }
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().map_err(|e| format!("tokio: {e}"))?;
    let out = rt.block_on(csi_suite::csi::run(o))?;
    print!("{}", out.table());
    Ok(i32::from(out.failed() > 0))
}

fn cmd_bench_overlay(a: &Args) -> R<i32> {
    let num = |k: &str, d: &str| -> R<usize> { a.get(k).unwrap_or(d).parse().map_err(|e| format!("--{k}: {e}")) };
    let hosts = a
        .get("hosts")
        .unwrap_or("3,10,30")
        .split(',')
        .filter(|s| !s.is_empty())
        .map(|s| s.trim().parse::<usize>().map_err(|e| format!("--hosts {s:?}: {e}")))
        .collect::<R<Vec<usize>>>()?;
    if hosts.iter().any(|&n| !(2..=200).contains(&n)) {
        return Err("--hosts: each count must be 2..=200".into());
    }
    let o = bench_overlay::Opts {
        plugin_dir: a.dir("plugin-dir", own_dir()),
        hosts,
        joins: num("joins", "5")?.max(1),
        allocs: num("allocs", "2000")?.max(1),
        iperf_secs: 3,
    };
    let r = bench_overlay::run(&o, &mut |l| eprintln!("{l}"))?;
    if a.has("json") {
        println!("{}", r.to_json());
    } else {
        print!("{}", r.table());
    }
    Ok(0)
}

fn cmd_cni(a: &Args) -> R<i32> {
    let dir = a.get("plugin-dir").ok_or("--plugin-dir is required")?;
    let cfg = a.get("config").ok_or("--config is required")?;
    let text = std::fs::read_to_string(cfg).map_err(|e| format!("read {cfg}: {e}"))?;
    let base: Value = serde_json::from_str(&text).map_err(|e| format!("parse {cfg}: {e}"))?;
    let mut ps = PluginSet::new(dir);
    if let Some(d) = a.get("ipam-plugin-dir") {
        ps = ps.with_dir(d);
    }
    let suite = Suite::new(ps, base)?;
    let only: Vec<String> = a.flags.get("only").cloned().unwrap_or_default();
    let rs = suite.run(&only, true)?;
    let title = format!(
        "CNI conformance: plugin {} from {} (CNI_PATH {}), cniVersion {}, supports [{}]",
        suite.plugin_type,
        dir,
        suite.ps.cni_path(),
        suite.version,
        suite.supported.join(" ")
    );
    let info = json!({
        "plugin": suite.plugin_type,
        "cniPath": suite.ps.cni_path(),
        "cniVersion": suite.version,
        "supportedVersions": suite.supported,
    });
    emit(a, &title, info, &suite.notes, &rs);
    Ok(i32::from(report::counts(&rs).1 > 0))
}

fn emit(a: &Args, title: &str, info: Value, notes: &[String], rs: &[testkit::report::CheckResult]) {
    if a.has("json") {
        println!("{}", report::to_json(title, info, notes, rs));
    } else {
        print!("{}", report::table(title, notes, rs));
    }
}

fn cmd_bench_csi(a: &Args) -> R<i32> {
    let n: usize = a.get("n").unwrap_or("20").parse().map_err(|e| format!("--n: {e}"))?;
    let driver = a.get("driver").map(PathBuf::from).unwrap_or_else(|| own_dir().join("csi-nfs"));
    if a.has("node-only") {
        // The guest half (scripts/guest/bench-csi-nfs.sh).
        let server = a.get("server").ok_or("--node-only needs --server")?;
        let port: u16 = a.get("port").ok_or("--node-only needs --port")?.parse().map_err(|e| format!("--port: {e}"))?;
        crate::bench_csi::node_only(&driver, server, port, n)?;
        return Ok(0);
    }
    let r = crate::bench_csi::run(&crate::bench_csi::Opts { driver, n, node: !a.has("no-node") })?;
    if a.has("json") {
        println!("{}", r.to_json());
    } else {
        print!("{}", r.table());
    }
    Ok(0)
}
