//! `conformance bench cni`: whole-process ADD/DEL latency of ours against
//! the reference, with and without ipMasq, interleaved in one run, next to
//! two floors measured in the same rounds.
//!
//! Configurations: ours (cni-bridge + in-process cni-ipam), ours with
//! cni-ipam exec'd as a separate process (what a runtime gets when it
//! chains our IPAM with any other bridge), and the reference (bridge +
//! exec'd host-local).
//!
//! Masquerade work is counted the same way on both sides: ours installs one
//! rule per network (on its first ADD), the reference one per container. So
//! every configuration reports the *first* ADD on a fresh network apart from
//! the steady-state ADDs on an existing one, and the ratios add the
//! per-network cost amortised over the run's N containers.
//!
//! Floors: the *kernel floor* is the veth pair alone, created and deleted
//! over netlink from this process; the *process floor* is our plugin binary
//! spawned and reaped the same way as every sample, answering VERSION. What
//! an ADD costs beyond the sum of the two is the plugin's own work.

use std::path::{Path, PathBuf};

use serde_json::{json, Value};

use cni_suite::checks::{container_ip, Ctr, IFNAME};
use cni_suite::interop::bridge_conf;
use testkit::net::{Range, TestNet};
use testkit::plugin::{PluginSet, Request};
use testkit::util::{median as med, median_p90, R};
use testkit::{bail, ensure};

/// Fresh networks per configuration whose only ADD is timed as a "first
/// ADD" (the main network's first ADD is one more such sample).
const EXTRA_FIRST_NETS: usize = 4;

/// `ipam.type` that makes cni-bridge exec cni-ipam: any other name than
/// `cni-ipam` is exec'd from CNI_PATH, and this one is a symlink to it.
const EXEC_IPAM_TYPE: &str = "cni-ipam-exec";

pub const OURS: &str = "ours";
pub const OURS_EXEC_IPAM: &str = "ours exec-IPAM";
pub const REFERENCE: &str = "reference";
pub const KERNEL_VETH: &str = "kernel veth";
pub const KERNEL_FLOOR: &str = "kernel floor";
pub const PROCESS_FLOOR: &str = "process floor";

/// One measured configuration.
pub struct Combo {
    pub implementation: &'static str,
    pub ip_masq: bool,
    /// The first ADD on a fresh network (bridge and per-network state created).
    pub first_add_ms: Vec<f64>,
    /// ADDs on a network that already has containers.
    pub add_ms: Vec<f64>,
    pub del_ms: Vec<f64>,
}

impl Combo {
    fn new(implementation: &'static str, ip_masq: bool) -> Combo {
        Combo { implementation, ip_masq, first_add_ms: vec![], add_ms: vec![], del_ms: vec![] }
    }
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
    /// Fresh networks, one container each, for first-ADD samples.
    firsts: Vec<(TestNet, Ctr)>,
    combo: Combo,
}

impl Live {
    /// One ADD, checked and timed (ms).
    fn add(&self, net: &TestNet, c: &Ctr, i: usize) -> R<(f64, Value)> {
        let o = self.ps.exec(self.bridge_type, &Request::container("ADD", &net.conf, &c.id, Some(c.ns.path()), IFNAME));
        if !o.success() {
            bail!("{} ipMasq={} ADD #{i} failed: {}", self.combo.implementation, self.combo.ip_masq, o.describe());
        }
        let r = o.json().unwrap_or_default();
        container_ip(&r, c)?;
        Ok((o.elapsed.as_secs_f64() * 1e3, r))
    }
}

/// A directory holding `cni-ipam-exec` → our `cni-ipam`, removed on drop.
struct AliasDir(PathBuf);

impl AliasDir {
    fn new(ours: &Path) -> R<AliasDir> {
        let target =
            std::fs::canonicalize(ours.join("cni-ipam")).map_err(|e| format!("cni-ipam in {}: {e}", ours.display()))?;
        let dir =
            std::env::temp_dir().join(format!("cft-bench-ipam-{}-{}", std::process::id(), testkit::util::next_id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let guard = AliasDir(dir);
        std::os::unix::fs::symlink(&target, guard.0.join(EXEC_IPAM_TYPE))
            .map_err(|e| format!("symlink cni-ipam: {e}"))?;
        Ok(guard)
    }
}

impl Drop for AliasDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where cni-bridge remembers its masquerade rules' handles (docs/cni-bridge.md), one file per
/// `<table>.<chain>`, the table being `cni_bridge_<network, non-alphanumerics as _>_<hash>`.
const MASQ_MARKER_DIR: &str = "/run/cni-bridge/masq";

/// Removes cni-bridge's masquerade markers of the bench's networks when dropped, as the
/// networks' own teardown removes their nft tables.
struct MarkerSweep(Vec<String>);

impl Drop for MarkerSweep {
    fn drop(&mut self) {
        let prefixes: Vec<String> = self
            .0
            .iter()
            .map(|n| {
                let clean: String =
                    n.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
                format!("cni_bridge_{clean}_")
            })
            .collect();
        let Ok(dir) = std::fs::read_dir(MASQ_MARKER_DIR) else {
            return;
        };
        for e in dir.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            // The hash after the name is 4 hex digits then the chain: `cft_1_2` must not match `cft_1_23`.
            if prefixes.iter().any(|p| name.strip_prefix(p.as_str()).is_some_and(|rest| rest.get(4..5) == Some("."))) {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// Runs the benchmark. `ours` holds cni-bridge/cni-ipam; `reference` bridge/host-local.
pub fn run(n: usize, ours: &Path, reference: &Path) -> R<BenchReport> {
    ensure!((2..=250).contains(&n), "--n must be 2..=250 (one /24 per configuration)");
    let version = "1.0.0";
    let mut notes = Vec::new();
    let mut impls: Vec<(&'static str, PluginSet, &'static str, &'static str)> = Vec::new();
    let mut alias = None;
    let have_ours = ours.join("cni-bridge").is_file();
    if have_ours {
        impls.push((OURS, PluginSet::new(ours), "cni-bridge", "cni-ipam"));
        let a = AliasDir::new(ours)?;
        impls.push((OURS_EXEC_IPAM, PluginSet::new(ours).with_dir(&a.0), "cni-bridge", EXEC_IPAM_TYPE));
        alias = Some(a);
    } else {
        notes.push(format!("cni-bridge not found in {}: reference only", ours.display()));
    }
    if reference.join("bridge").is_file() {
        impls.push((REFERENCE, PluginSet::new(reference), "bridge", "host-local"));
    } else {
        notes.push(format!("bridge not found in {}: ours only", reference.display()));
    }
    ensure!(!impls.is_empty(), "no plugins to benchmark");
    let mut sweep = MarkerSweep(Vec::new());
    let mut live = Vec::new();
    for (name, ps, b, i) in impls {
        for masq in [false, true] {
            let conf = bridge_conf(b, i, version, masq);
            let net = TestNet::new(&conf, version, Range::Full)?;
            // Namespaces and networks are created up front and not timed.
            let ctrs = (0..n).map(|_| Ctr::new()).collect::<R<Vec<_>>>()?;
            sweep.0.push(net.name.clone());
            let firsts = (0..EXTRA_FIRST_NETS)
                .map(|_| Ok((TestNet::new(&conf, version, Range::Full)?, Ctr::new()?)))
                .collect::<R<Vec<_>>>()?;
            sweep.0.extend(firsts.iter().map(|(n, _)| n.name.clone()));
            live.push(Live {
                ps: ps.clone(),
                bridge_type: b,
                net,
                ctrs,
                results: vec![None; n],
                firsts,
                combo: Combo::new(name, masq),
            });
        }
    }
    let mut veth = KernelFloor::new(n, false)?;
    let mut kernel = KernelFloor::new(n, true)?;
    let mut process = have_ours.then(|| ProcessFloor::new(ours));
    let k = live.len();

    // First ADDs on fresh networks, rotating who goes first.
    for f in 0..EXTRA_FIRST_NETS {
        for j in 0..k {
            let l = &mut live[(f + j) % k];
            let (net, c) = &l.firsts[f];
            let (ms, _) = l.add(net, c, f)?;
            l.combo.first_add_ms.push(ms);
        }
    }
    // ADD round i runs every configuration once (and each floor), rotating who goes first.
    for i in 0..n {
        ensure!(!testkit::util::interrupted(), "interrupted");
        for j in 0..k {
            let l = &mut live[(i + j) % k];
            let (ms, r) = l.add(&l.net, &l.ctrs[i], i)?;
            l.results[i] = Some(r);
            if i == 0 {
                l.combo.first_add_ms.push(ms);
            } else {
                l.combo.add_ms.push(ms);
            }
        }
        veth.add(i)?;
        kernel.add(i)?;
        if let Some(p) = &mut process {
            p.sample(false)?;
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
        veth.del(i)?;
        kernel.del(i)?;
        if let Some(p) = &mut process {
            p.sample(true)?;
        }
    }
    // Dropping `live` deletes namespaces, bridges, nft tables and data dirs.
    let mut combos: Vec<Combo> = live.into_iter().map(|l| l.combo).collect();
    combos.push(veth.finish());
    combos.push(kernel.finish());
    if let Some(p) = process {
        combos.push(p.combo);
    }
    drop(alias);
    drop(sweep);
    Ok(BenchReport { n, version: version.into(), combos, notes })
}

/// What the kernel alone costs, over netlink from this process (no exec, no
/// IPAM), in two depths:
///
/// * `kernel veth`: one veth pair with its container end in a fresh netns
///   and its host end up on a bridge (the container end stays down);
/// * `kernel floor`: the kernel state every bridge plugin's ADD must leave,
///   so the same state its DEL must tear down: that pair plus the container
///   end up with an address and a default route. Deleting an interface
///   that is up costs extra RCU grace periods, so only this row's DEL is
///   the floor for a plugin's DEL.
///
/// It works in the network namespace of the thread that makes it (its
/// netlink socket and bridge stay there): `bench migrate` makes one in a
/// lab host's netns.
pub(crate) struct KernelFloor {
    full: bool,
    nl: linux_net::netlink::Netlink,
    bridge_index: u32,
    ctrs: Vec<Ctr>,
    names: Vec<String>,
    combo: Combo,
    _guard: BridgeGuard,
}

/// Removes the floor's bridge (and so its ports) however the run ends, in
/// the netns it was made in.
struct BridgeGuard(String, linux_net::netns::NetNs);

impl Drop for BridgeGuard {
    fn drop(&mut self) {
        if let Ok(mut nl) = self.1.netlink() {
            let _ = linux_net::link::delete(&mut nl, &self.0);
        }
    }
}

fn kerr(e: linux_net::Error) -> String {
    e.to_string()
}

impl KernelFloor {
    pub(crate) fn new(n: usize, full: bool) -> R<KernelFloor> {
        use linux_net::link::{self, BridgeSpec};
        let bridge = testkit::util::unique_link(testkit::util::next_id());
        let mut nl = linux_net::netlink::Netlink::open().map_err(kerr)?;
        let br = link::ensure_bridge(&mut nl, &BridgeSpec { name: &bridge, ..Default::default() }).map_err(kerr)?;
        let guard = BridgeGuard(bridge.clone(), linux_net::netns::NetNs::current().map_err(kerr)?);
        let ctrs = (0..n).map(|_| Ctr::new()).collect::<R<Vec<_>>>()?;
        let names = (0..n).map(|i| format!("{bridge}v{i}")).collect();
        Ok(KernelFloor {
            full,
            nl,
            bridge_index: br.index,
            ctrs,
            names,
            combo: Combo::new(if full { KERNEL_FLOOR } else { KERNEL_VETH }, false),
            _guard: guard,
        })
    }

    pub(crate) fn add(&mut self, i: usize) -> R<()> {
        use linux_net::link::{self, VethSpec};
        let ns = linux_net::netns::NetNs::open(Path::new(self.ctrs[i].ns.path())).map_err(kerr)?;
        let t = std::time::Instant::now();
        let spec = VethSpec {
            host: &self.names[i],
            peer: IFNAME,
            peer_ns_fd: ns.fd(),
            mtu: None,
            peer_mac: None,
            master: Some(self.bridge_index),
        };
        link::create_veth(&mut self.nl, &spec).map_err(kerr)?;
        if self.full {
            let addr: ipnetwork::IpNetwork = "10.255.0.2/24".parse().expect("valid");
            let gw = "10.255.0.1".parse().expect("valid");
            let mut cnl = ns.netlink().map_err(kerr)?;
            let cont = link::get(&mut cnl, IFNAME).map_err(kerr)?.ok_or("container end missing")?;
            link::set_up(&mut cnl, cont.index, true).map_err(kerr)?;
            linux_net::addr::add(&mut cnl, cont.index, addr, true).map_err(kerr)?;
            let dflt = "0.0.0.0/0".parse().expect("valid");
            linux_net::route::add(&mut cnl, &linux_net::route::Route::new(dflt, Some(gw), Some(cont.index)))
                .map_err(kerr)?;
        }
        self.combo.add_ms.push(t.elapsed().as_secs_f64() * 1e3);
        Ok(())
    }

    pub(crate) fn del(&mut self, i: usize) -> R<()> {
        let t = std::time::Instant::now();
        linux_net::link::delete(&mut self.nl, &self.names[i]).map_err(kerr)?;
        self.combo.del_ms.push(t.elapsed().as_secs_f64() * 1e3);
        Ok(())
    }

    fn finish(self) -> Combo {
        self.combo
    }

    /// The last ADD's and the last DEL's time (ms).
    pub(crate) fn last(&self) -> (f64, f64) {
        (self.combo.add_ms.last().copied().unwrap_or(f64::NAN), self.combo.del_ms.last().copied().unwrap_or(f64::NAN))
    }
}

/// Our plugin binary answering VERSION, spawned and reaped exactly like the
/// ADD and DEL samples: the cost of being a process at all.
struct ProcessFloor {
    ps: PluginSet,
    conf: Value,
    combo: Combo,
}

impl ProcessFloor {
    fn new(ours: &Path) -> ProcessFloor {
        ProcessFloor {
            ps: PluginSet::new(ours),
            conf: json!({"cniVersion": "1.0.0"}),
            combo: Combo::new(PROCESS_FLOOR, false),
        }
    }

    fn sample(&mut self, del_phase: bool) -> R<()> {
        let o = self.ps.exec("cni-bridge", &Request::new("VERSION", &self.conf));
        if !o.success() {
            bail!("cni-bridge VERSION failed: {}", o.describe());
        }
        let ms = o.elapsed.as_secs_f64() * 1e3;
        if del_phase { &mut self.combo.del_ms } else { &mut self.combo.add_ms }.push(ms);
        Ok(())
    }
}

/// Median, NaN when there are no samples.
/// Steady-state ratios of one of our configurations to the reference.
struct Ratio {
    ours: &'static str,
    ip_masq: bool,
    add: f64,
    first_add: f64,
    /// (first + (n-1) × steady) / n on each side: the per-network work spread over the run's containers.
    amortised_add: f64,
    del: f64,
}

impl BenchReport {
    fn find(&self, imp: &str, masq: bool) -> Option<&Combo> {
        self.combos.iter().find(|c| c.implementation == imp && c.ip_masq == masq)
    }

    fn amortised(&self, c: &Combo) -> f64 {
        let n = self.n as f64;
        (med(&c.first_add_ms) + (n - 1.0) * med(&c.add_ms)) / n
    }

    fn ratios(&self) -> Vec<Ratio> {
        let mut out = Vec::new();
        for ours in [OURS, OURS_EXEC_IPAM] {
            for masq in [false, true] {
                if let (Some(o), Some(r)) = (self.find(ours, masq), self.find(REFERENCE, masq)) {
                    out.push(Ratio {
                        ours,
                        ip_masq: masq,
                        add: med(&o.add_ms) / med(&r.add_ms),
                        first_add: med(&o.first_add_ms) / med(&r.first_add_ms),
                        amortised_add: self.amortised(o) / self.amortised(r),
                        del: med(&o.del_ms) / med(&r.del_ms),
                    });
                }
            }
        }
        out
    }

    /// For our configurations: (implementation, ipMasq, ADD / kernel floor
    /// ADD, ADD / kernel veth ADD, DEL / kernel floor DEL).
    fn floor_ratios(&self) -> Vec<(&'static str, bool, f64, f64, f64)> {
        let (Some(k), Some(v)) = (self.find(KERNEL_FLOOR, false), self.find(KERNEL_VETH, false)) else {
            return vec![];
        };
        self.combos
            .iter()
            .filter(|c| c.implementation == OURS || c.implementation == OURS_EXEC_IPAM)
            .map(|c| {
                let add = med(&c.add_ms);
                (
                    c.implementation,
                    c.ip_masq,
                    add / med(&k.add_ms),
                    add / med(&v.add_ms),
                    med(&c.del_ms) / med(&k.del_ms),
                )
            })
            .collect()
    }

    pub fn table(&self) -> String {
        let mut s = format!(
            "CNI bench: per configuration {} first ADDs on fresh networks, then {} ADDs on one network (the first \
             of them counted as a first ADD) and {} DELs; cniVersion {}, whole plugin process spawn->exit, rounds \
             interleaved with both floors\n",
            EXTRA_FIRST_NETS, self.n, self.n, self.version
        );
        for n in &self.notes {
            s.push_str(&format!("note: {n}\n"));
        }
        s.push_str(&format!(
            "{:<15} {:<6} {:>11} {:>11} {:>10} {:>11} {:>10}\n",
            "impl", "ipMasq", "1st ADD ms", "ADD med ms", "ADD p90", "DEL med ms", "DEL p90"
        ));
        for c in &self.combos {
            let (am, ap) = median_p90(&c.add_ms);
            let (dm, dp) = median_p90(&c.del_ms);
            let first =
                if c.first_add_ms.is_empty() { "-".to_string() } else { format!("{:.2}", med(&c.first_add_ms)) };
            s.push_str(&format!(
                "{:<15} {:<6} {:>11} {:>11.2} {:>10.2} {:>11.2} {:>10.2}\n",
                c.implementation, c.ip_masq, first, am, ap, dm, dp
            ));
        }
        let ratios = self.ratios();
        if !ratios.is_empty() {
            s.push_str(&format!(
                "ratio to reference (medians): steady ADD, first ADD on a network, ADD with per-network work amortised \
                 over {} containers, DEL\n",
                self.n
            ));
            for r in ratios {
                s.push_str(&format!(
                    "  {:<15} ipMasq={:<5}  ADD {:.2}x   first {:.2}x   amortised {:.2}x   DEL {:.2}x\n",
                    r.ours, r.ip_masq, r.add, r.first_add, r.amortised_add, r.del
                ));
            }
        }
        let floors = self.floor_ratios();
        if !floors.is_empty() {
            s.push_str("ratio to the in-process floors (medians): steady ADD to kernel floor, to kernel veth; DEL to kernel floor\n");
            for (imp, masq, a, av, d) in floors {
                s.push_str(&format!("  {imp:<15} ipMasq={masq:<5}  ADD {a:.2}x   ADD/veth {av:.2}x   DEL {d:.2}x\n"));
            }
        }
        if let (Some(p), Some(k)) = (self.find(PROCESS_FLOOR, false), self.find(KERNEL_FLOOR, false)) {
            let floor = med(&p.add_ms) + med(&k.add_ms);
            s.push_str(&format!(
                "process + kernel floor: {:.2} ms; ours beyond it (steady ADD median minus both floors):",
                floor
            ));
            for masq in [false, true] {
                if let Some(o) = self.find(OURS, masq) {
                    s.push_str(&format!(" ipMasq={masq} {:.2} ms", med(&o.add_ms) - floor));
                }
            }
            s.push('\n');
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
                let first = (!c.first_add_ms.is_empty()).then(|| med(&c.first_add_ms));
                json!({"impl": c.implementation, "ipMasq": c.ip_masq,
                       "first_add_median_ms": first,
                       "add_median_ms": am, "add_p90_ms": ap,
                       "del_median_ms": dm, "del_p90_ms": dp})
            }).collect::<Vec<_>>(),
            "ratios_to_reference": self.ratios().iter().map(|r| json!({
                "impl": r.ours, "ipMasq": r.ip_masq, "add": r.add, "first_add": r.first_add,
                "amortised_add": r.amortised_add, "del": r.del,
            })).collect::<Vec<_>>(),
            "ratios_to_kernel_floor": self.floor_ratios().iter().map(|(imp, masq, a, av, d)| json!({
                "impl": imp, "ipMasq": masq, "add": a, "add_to_veth": av, "del": d,
            })).collect::<Vec<_>>(),
        })
    }
}
