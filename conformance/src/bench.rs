//! `conformance bench cni`: whole-process ADD/DEL latency of ours
//! (cni-bridge + in-process cni-ipam) against the reference (bridge +
//! exec'd host-local), with and without ipMasq, interleaved in one run.

use std::path::Path;

use serde_json::{json, Value};

use cni_suite::checks::{container_ip, Ctr, IFNAME};
use cni_suite::interop::bridge_conf;
use testkit::net::{Range, TestNet};
use testkit::plugin::{PluginSet, Request};
use testkit::util::{median_p90, R};
use testkit::{bail, ensure};

/// One measured configuration.
pub struct Combo {
    pub implementation: &'static str,
    pub ip_masq: bool,
    pub add_ms: Vec<f64>,
    pub del_ms: Vec<f64>,
}

pub struct BenchReport {
    pub n: usize,
    pub version: String,
    pub combos: Vec<Combo>,
    pub notes: Vec<String>,
}

struct Live {
    ps: PluginSet,
    bridge_type: &'static str,
    net: TestNet,
    ctrs: Vec<Ctr>,
    results: Vec<Option<Value>>,
    combo: Combo,
}

/// Runs the benchmark. `ours` holds cni-bridge/cni-ipam; `reference` bridge/host-local.
pub fn run(n: usize, ours: &Path, reference: &Path) -> R<BenchReport> {
    ensure!((1..=250).contains(&n), "--n must be 1..=250 (one /24 per configuration)");
    let version = "1.0.0";
    let mut notes = Vec::new();
    let mut impls: Vec<(&'static str, PluginSet, &'static str, &'static str)> = Vec::new();
    if ours.join("cni-bridge").is_file() {
        impls.push(("ours", PluginSet::new(ours), "cni-bridge", "cni-ipam"));
    } else {
        notes.push(format!("cni-bridge not found in {}: reference only", ours.display()));
    }
    if reference.join("bridge").is_file() {
        impls.push(("reference", PluginSet::new(reference), "bridge", "host-local"));
    } else {
        notes.push(format!("bridge not found in {}: ours only", reference.display()));
    }
    ensure!(!impls.is_empty(), "no plugins to benchmark");
    let mut live = Vec::new();
    for (name, ps, b, i) in impls {
        for masq in [false, true] {
            let net = TestNet::new(&bridge_conf(b, i, version, masq), version, Range::Full)?;
            // Namespaces are created up front and not timed.
            let ctrs = (0..n).map(|_| Ctr::new()).collect::<R<Vec<_>>>()?;
            live.push(Live {
                ps: ps.clone(),
                bridge_type: b,
                net,
                ctrs,
                results: vec![None; n],
                combo: Combo {
                    implementation: name,
                    ip_masq: masq,
                    add_ms: Vec::with_capacity(n),
                    del_ms: Vec::with_capacity(n),
                },
            });
        }
    }
    let k = live.len();
    // ADD round i runs every configuration once, rotating who goes first.
    for i in 0..n {
        ensure!(!testkit::util::interrupted(), "interrupted");
        for j in 0..k {
            let l = &mut live[(i + j) % k];
            let c = &l.ctrs[i];
            let o = l.ps.exec(l.bridge_type, &Request::container("ADD", &l.net.conf, &c.id, Some(c.ns.path()), IFNAME));
            if !o.success() {
                bail!("{} ADD #{i} failed: {}", l.combo.implementation, o.describe());
            }
            let r = o.json().unwrap_or_default();
            container_ip(&r, c)?;
            l.results[i] = Some(r);
            l.combo.add_ms.push(o.elapsed.as_secs_f64() * 1e3);
        }
    }
    for i in 0..n {
        for j in 0..k {
            let l = &mut live[(i + j) % k];
            let c = &l.ctrs[i];
            let mut conf = l.net.conf.clone();
            if let Some(r) = &l.results[i] {
                conf["prevResult"] = r.clone();
            }
            let o = l.ps.exec(l.bridge_type, &Request::container("DEL", &conf, &c.id, Some(c.ns.path()), IFNAME));
            if !o.success() {
                bail!("{} DEL #{i} failed: {}", l.combo.implementation, o.describe());
            }
            l.combo.del_ms.push(o.elapsed.as_secs_f64() * 1e3);
        }
    }
    // Dropping `live` deletes namespaces, bridges, nft tables and data dirs.
    let mut combos: Vec<Combo> = live.into_iter().map(|l| l.combo).collect();
    combos.push(kernel_floor(n)?);
    Ok(BenchReport { n, version: version.into(), combos, notes })
}

/// What the kernel alone costs for the work every bridge plugin must do: one
/// veth pair with its container end in a fresh netns and its host end on a
/// bridge, created and deleted over netlink from this process (no exec, no
/// IPAM). DEL can never be faster than this row's DEL.
fn kernel_floor(n: usize) -> R<Combo> {
    use linux_net::link::{self, BridgeSpec, VethSpec};
    let kerr = |e: linux_net::Error| e.to_string();
    let bridge = testkit::util::unique_link(testkit::util::next_id());
    let mut nl = linux_net::netlink::Netlink::open().map_err(kerr)?;
    let br = link::ensure_bridge(&mut nl, &BridgeSpec { name: &bridge, ..Default::default() }).map_err(kerr)?;
    /// Removes the floor's bridge (and so its ports) however the run ends.
    struct BridgeGuard(String);
    impl Drop for BridgeGuard {
        fn drop(&mut self) {
            if let Ok(mut nl) = linux_net::netlink::Netlink::open() {
                let _ = link::delete(&mut nl, &self.0);
            }
        }
    }
    let guard = BridgeGuard(bridge.clone());
    let ctrs = (0..n).map(|_| Ctr::new()).collect::<R<Vec<_>>>()?;
    let mut combo = Combo { implementation: "kernel floor", ip_masq: false, add_ms: vec![], del_ms: vec![] };
    let names: Vec<String> = (0..n).map(|i| format!("{bridge}v{i}")).collect();
    for (c, host) in ctrs.iter().zip(&names) {
        let ns = linux_net::netns::NetNs::open(std::path::Path::new(c.ns.path())).map_err(kerr)?;
        let t = std::time::Instant::now();
        link::create_veth(
            &mut nl,
            &VethSpec { host, peer: IFNAME, peer_ns_fd: ns.fd(), mtu: None, peer_mac: None, master: Some(br.index) },
        )
        .map_err(kerr)?;
        combo.add_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    for host in &names {
        let t = std::time::Instant::now();
        link::delete(&mut nl, host).map_err(kerr)?;
        combo.del_ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(guard);
    Ok(combo)
}

impl BenchReport {
    fn find(&self, imp: &str, masq: bool) -> Option<&Combo> {
        self.combos.iter().find(|c| c.implementation == imp && c.ip_masq == masq)
    }

    pub fn table(&self) -> String {
        let mut s = format!(
            "CNI bench: {} sequential ADDs then {} DELs per configuration, cniVersion {}, whole plugin process spawn->exit, rounds interleaved\n",
            self.n, self.n, self.version
        );
        for n in &self.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        s.push_str(&format!(
            "{:<13} {:<6} {:>11} {:>10} {:>11} {:>10}\n",
            "impl", "ipMasq", "ADD med ms", "ADD p90", "DEL med ms", "DEL p90"
        ));
        for c in &self.combos {
            let (am, ap) = median_p90(&c.add_ms);
            let (dm, dp) = median_p90(&c.del_ms);
            s.push_str(&format!(
                "{:<13} {:<6} {:>11.2} {:>10.2} {:>11.2} {:>10.2}\n",
                c.implementation, c.ip_masq, am, ap, dm, dp
            ));
        }
        let mut any = false;
        for masq in [false, true] {
            if let (Some(o), Some(r)) = (self.find("ours", masq), self.find("reference", masq)) {
                if !any {
                    s.push_str("ratio ours/reference (median):\n");
                    any = true;
                }
                let ra = median_p90(&o.add_ms).0 / median_p90(&r.add_ms).0;
                let rd = median_p90(&o.del_ms).0 / median_p90(&r.del_ms).0;
                s.push_str(&format!("  ipMasq={masq:<5}  ADD {ra:.2}x   DEL {rd:.2}x\n"));
            }
        }
        s
    }

    pub fn to_json(&self) -> Value {
        json!({
            "n": self.n,
            "cniVersion": self.version,
            "notes": self.notes,
            "results": self.combos.iter().map(|c| {
                let (am, ap) = median_p90(&c.add_ms);
                let (dm, dp) = median_p90(&c.del_ms);
                json!({"impl": c.implementation, "ipMasq": c.ip_masq,
                       "add_median_ms": am, "add_p90_ms": ap,
                       "del_median_ms": dm, "del_p90_ms": dp})
            }).collect::<Vec<_>>(),
        })
    }
}
