//! `conformance bench overlay`: the overlay (cni-overlay, run as a black-box
//! binary) in a [`Lab`]: convergence of a joining host's subnet route,
//! container throughput across VXLAN vs a plain veth, and address
//! allocations per second (one etcd transaction per IP vs the local store vs
//! affine blocks through `ipam.cluster`).
//! Numbers are printed, never asserted. Also the shared lab helpers of
//! `conformance demo --overlay` ([`OverlayLab`]).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use ipnetwork::{IpNetwork, Ipv4Network};
use serde_json::{json, Value};

use testkit::lab::{ContainerId, HostId, Lab, Node, ProcessGuard};
use testkit::util::{median, next_id, unique_name, Context as _, R};
use testkit::{bail, ensure};

use subnet_lease::{EtcdConfig, Event, SubnetManager};

/// The overlay's network config (Flannel's format), VXLAN on 8472.
pub const NETWORK: &str = r#"{"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}}"#;

/// The overlay binary in `dir`, or a clear error.
pub fn overlay_bin(dir: &Path) -> R<PathBuf> {
    let p = dir.join("cni-overlay");
    ensure!(
        p.is_file(),
        "{} not found: build it (cargo build --release -p cni-overlay) or pass --plugin-dir",
        p.display()
    );
    Ok(p)
}

fn runtime() -> R<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().ctx("tokio runtime")
}

/// A lab with etcd holding the overlay's network config, and helpers to run
/// one `cni-overlay agent` per host and attach containers with the plugin.
pub struct OverlayLab {
    pub lab: Lab,
    pub bin: PathBuf,
    pub agents: Vec<Option<ProcessGuard>>,
}

impl OverlayLab {
    pub fn new(hint: &str, bin: PathBuf) -> R<OverlayLab> {
        let mut lab = Lab::new(hint)?;
        lab.start_etcd()?;
        let o = OverlayLab { lab, bin, agents: Vec::new() };
        o.etcdctl(&["put", "/coreos.com/network/config", NETWORK])?;
        Ok(o)
    }

    pub fn etcd_local(&self) -> R<String> {
        self.lab.etcd_local_url().ok_or_else(|| "etcd is not running".to_string())
    }

    pub fn etcdctl(&self, args: &[&str]) -> R<String> {
        let url = self.etcd_local()?;
        let out = std::process::Command::new("etcdctl")
            .env("ETCDCTL_API", "3")
            .arg("--endpoints")
            .arg(&url)
            .args(args)
            .output()
            .ctx("run etcdctl")?;
        ensure!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    pub fn state_dir(&self, h: HostId) -> PathBuf {
        self.lab.dir().join(format!("host{}", h.0))
    }

    pub fn subnet_file(&self, h: HostId) -> PathBuf {
        self.state_dir(h).join("subnet.env")
    }

    /// Starts host `h`'s agent (does not wait).
    pub fn spawn_agent(&mut self, h: HostId) -> R<()> {
        let url = self.lab.etcd_url().ok_or("etcd is not running")?;
        let sf = self.subnet_file(h).display().to_string();
        let args = ["agent", "--etcd-endpoints", &url, "--iface", "eth0", "--subnet-file", &sf];
        let bin = self.bin.display().to_string();
        let g = self.lab.spawn(h, &bin, &args, &[("CNI_OVERLAY_LOG", "warn")])?;
        while self.agents.len() <= h.0 {
            self.agents.push(None);
        }
        self.agents[h.0] = Some(g);
        Ok(())
    }

    /// Waits until host `h`'s subnet file exists; returns the host's subnet.
    pub fn wait_agent(&self, h: HostId, timeout: Duration) -> R<Ipv4Network> {
        let deadline = Instant::now() + timeout;
        let g = self.agents.get(h.0).and_then(Option::as_ref).ok_or("no agent")?;
        loop {
            if let Ok(env) = std::fs::read_to_string(self.subnet_file(h)) {
                if let Some(s) = subnet_of(&env) {
                    return Ok(s);
                }
            }
            ensure!(g.is_running(), "agent on host {} exited:\n{}", h.0, g.log());
            ensure!(Instant::now() < deadline, "agent on host {} not ready:\n{}", h.0, g.log());
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    pub fn plugin_conf(&self, h: HostId) -> Value {
        json!({
            "cniVersion": "1.1.0", "name": "overlay", "type": "cni-overlay",
            "subnetFile": self.subnet_file(h), "dataDir": self.state_dir(h).join("cni"),
            "delegate": {"hairpinMode": true, "isDefaultGateway": true},
        })
    }

    /// A container on `h` attached through the plugin; returns it, its IPv4 and the ADD result.
    pub fn container(&mut self, h: HostId) -> R<(ContainerId, Ipv4Addr, Value)> {
        let c = self.lab.container(h)?;
        let (ok, r) = self.lab.cni(h, &self.bin, "ADD", c, "eth0", &self.plugin_conf(h), &[])?;
        ensure!(ok, "ADD on host {}: {r}", h.0);
        let ip = r["ips"][0]["address"]
            .as_str()
            .and_then(|a| a.split('/').next())
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| format!("no IPv4 in the ADD result: {r}"))?;
        Ok((c, ip, r))
    }
}

/// The subnet of a `subnet.env` (`FLANNEL_SUBNET` is the gateway address/len).
pub fn subnet_of(env: &str) -> Option<Ipv4Network> {
    let line = env.lines().find_map(|l| l.strip_prefix("FLANNEL_SUBNET="))?;
    let (ip, len) = line.trim().split_once('/')?;
    let ip: Ipv4Addr = ip.parse().ok()?;
    let len: u8 = len.parse().ok()?;
    Ipv4Network::new(ip, len).ok().and_then(|n| Ipv4Network::new(n.network(), len).ok())
}

// ---------------------------------------------------------------- options

pub struct Opts {
    pub plugin_dir: PathBuf,
    pub hosts: Vec<usize>,
    /// Joins measured per host count.
    pub joins: usize,
    /// IPs allocated per allocation benchmark.
    pub allocs: usize,
    pub iperf_secs: u32,
}

/// Runs the three sections; `progress` gets one line per step (stderr).
pub fn run(o: &Opts, progress: &mut dyn FnMut(&str)) -> R<Report> {
    let bin = overlay_bin(&o.plugin_dir)?;
    let mut rep = Report::default();
    progress("allocations: per-IP etcd transactions vs the local store vs affine blocks");
    rep.alloc = Some(alloc_bench(o.allocs)?);
    for &n in &o.hosts {
        progress(&format!("convergence: {n} hosts ({} joins)", o.joins));
        rep.convergence.push(convergence(&bin, n, o.joins, progress)?);
    }
    progress("throughput: iperf3 over a veth pair and across the overlay");
    rep.throughput = Some(throughput(&bin, o.iperf_secs)?);
    Ok(rep)
}

// ---------------------------------------------------------------- report

#[derive(Default)]
pub struct Report {
    pub convergence: Vec<Conv>,
    pub throughput: Option<Tput>,
    pub alloc: Option<Alloc>,
}

pub struct Conv {
    pub hosts: usize,
    /// Per join: the slowest host (ms), the median over hosts (ms), both
    /// from the lease's watch event; and the slowest host from the agent's start (ms).
    pub joins: Vec<(f64, f64, f64)>,
}

pub struct Tput {
    pub veth_gbps: f64,
    pub overlay_gbps: f64,
    pub overlay_mtu: String,
    /// Where the overlay's cost goes: two containers on one host through
    /// cni0 (no VXLAN), and host to host on the underlay (no bridge).
    pub bridge_gbps: f64,
    pub underlay_gbps: f64,
    /// net.ipv4.tcp_congestion_control (bbr vs cubic alone moves the veth baseline by half).
    pub congestion_control: String,
    /// The machine's busy CPU per GB received (ms), medians: veth, bridge,
    /// underlay, overlay. What a path costs, however many cores there are.
    pub cpu_ms_per_gb: [f64; 4],
}

pub struct Alloc {
    pub n: usize,
    pub etcd_seq: f64,
    pub etcd_par: f64,
    /// dataDir on the system temp dir (disk here), like /var/lib/cni.
    pub local: f64,
    /// dataDir on /dev/shm: the same medium as the bench's etcd.
    pub local_tmpfs: Option<f64>,
    /// Affine blocks, strictAffinity: in-process ADDs through `ipam.cluster`
    /// (local store inside the host's blocks, a block claim in etcd per 61
    /// IPs), dataDir on tmpfs (/dev/shm) like the mode's default /run/cni-ipam
    /// on a systemd host.
    pub blocks: f64,
    /// The same with the dataDir on the system temp dir (disk here).
    pub blocks_disk: f64,
    /// Affine blocks, non-strict: every ADD is a CAS on its block in etcd.
    pub blocks_shared: f64,
}

impl Report {
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ =
            writeln!(s, "== convergence: a joining host's lease in etcd -> route to its subnet on every other host");
        let _ = writeln!(
            s,
            "   (max = slowest host of a join, med = median host; t0 = the lease's etcd watch event seen in-process;\n    'agent start' = from spawning the joining agent to the last route, process start and lease acquire included)"
        );
        let _ = writeln!(
            s,
            "{:>6} {:>6} {:>16} {:>16} {:>12} {:>18}  goal",
            "hosts", "joins", "median(max) ms", "worst(max) ms", "med(med) ms", "agent start ms"
        );
        for c in &self.convergence {
            let maxes: Vec<f64> = c.joins.iter().map(|j| j.0).collect();
            let meds: Vec<f64> = c.joins.iter().map(|j| j.1).collect();
            let worst = maxes.iter().copied().fold(f64::NAN, f64::max);
            let m = median(&maxes);
            let goal = if c.hosts >= 30 {
                format!("< 100 ms at 30 hosts: {}", if m < 100.0 { "met" } else { "NOT met" })
            } else {
                "< 100 ms at 30 hosts".into()
            };
            let starts: Vec<f64> = c.joins.iter().map(|j| j.2).collect();
            let _ = writeln!(
                s,
                "{:>6} {:>6} {:>16.1} {:>16.1} {:>12.1} {:>18.1}  {goal}",
                c.hosts,
                c.joins.len(),
                m,
                worst,
                median(&meds),
                median(&starts)
            );
        }
        if let Some(t) = &self.throughput {
            let ratio = t.overlay_gbps / t.veth_gbps;
            let _ = writeln!(
                s,
                "== throughput: iperf3 TCP, one stream, medians of alternating rounds (congestion control {})",
                t.congestion_control
            );
            let _ = writeln!(s, "veth pair between two netns (MTU 1500)        {:>8.2} Gbit/s", t.veth_gbps);
            let _ = writeln!(
                s,
                "containers on one host through cni0           {:>8.2} Gbit/s  (bridge + veth hops, no VXLAN)",
                t.bridge_gbps
            );
            let _ = writeln!(
                s,
                "host to host on the underlay (MTU 1500)       {:>8.2} Gbit/s  (lab switch, no bridge, no VXLAN)",
                t.underlay_gbps
            );
            let _ = writeln!(
                s,
                "overlay, containers on two hosts (MTU {:>4})   {:>8.2} Gbit/s  ({:.2}x the underlay, {:.2}x one host's bridge)",
                t.overlay_mtu,
                t.overlay_gbps,
                t.overlay_gbps / t.underlay_gbps,
                t.overlay_gbps / t.bridge_gbps
            );
            let _ = writeln!(
                s,
                "ratio overlay/veth {ratio:.2} (goal >= 0.9: {})",
                if ratio >= 0.9 { "met" } else { "NOT met" }
            );
            let [veth, bridge, underlay, overlay] = t.cpu_ms_per_gb;
            let _ = writeln!(
                s,
                "CPU per GB received (whole machine, ms): veth {veth:.0}, bridge {bridge:.0}, underlay {underlay:.0}, overlay {overlay:.0} ({:.2}x the veth, {:.2}x the underlay)",
                overlay / veth,
                overlay / underlay
            );
        }
        if let Some(a) = &self.alloc {
            let _ = writeln!(s, "== allocations per second ({} IPs each)", a.n);
            let _ = writeln!(s, "per-IP etcd transaction, sequential          {:>10.0} /s", a.etcd_seq);
            let _ = writeln!(s, "per-IP etcd transaction, 8 concurrent tasks  {:>10.0} /s", a.etcd_par);
            let _ = writeln!(
                s,
                "local store (in-process ipam ADD, /16 range), dataDir on disk {:>10.0} /s  ({:.1}x sequential etcd, {:.1}x concurrent)",
                a.local,
                a.local / a.etcd_seq,
                a.local / a.etcd_par
            );
            if let Some(t) = a.local_tmpfs {
                let _ = writeln!(
                    s,
                    "local store, dataDir on tmpfs (as the etcd)  {:>10.0} /s  ({:.1}x sequential etcd, {:.1}x concurrent)",
                    t,
                    t / a.etcd_seq,
                    t / a.etcd_par
                );
            }
            let _ = writeln!(
                s,
                "affine blocks (blockSize 26, in-process ipam ADDs with cluster mode, strictAffinity), dataDir on tmpfs as the default /run/cni-ipam {:>10.0} /s  ({:.1}x sequential etcd, {:.1}x concurrent; goal >= 5000/s per host: {})",
                a.blocks,
                a.blocks / a.etcd_seq,
                a.blocks / a.etcd_par,
                if a.blocks >= 5000.0 { "met" } else { "NOT met" }
            );
            let _ = writeln!(
                s,
                "affine blocks, strictAffinity, dataDir on {} (disk)  {:>10.0} /s  ({:.1}x sequential etcd, {:.1}x concurrent)",
                std::env::temp_dir().display(),
                a.blocks_disk,
                a.blocks_disk / a.etcd_seq,
                a.blocks_disk / a.etcd_par
            );
            let _ = writeln!(
                s,
                "affine blocks, non-strict (one CAS per IP on its block, Calico's model), dataDir on tmpfs {:>10.0} /s  ({:.1}x sequential etcd)",
                a.blocks_shared,
                a.blocks_shared / a.etcd_seq
            );
            let _ = writeln!(
                s,
                "note: the etcd under test keeps its data on tmpfs (/dev/shm); the local store's default dataDir is on disk (/var/lib/cni/networks, measured in {}), the affine-block mode's on tmpfs (/run/cni-ipam, /run being tmpfs on systemd hosts)",
                std::env::temp_dir().display()
            );
        }
        s
    }

    pub fn to_json(&self) -> Value {
        json!({
            "convergence": self.convergence.iter().map(|c| json!({
                "hosts": c.hosts,
                "joinsMaxMs": c.joins.iter().map(|j| j.0).collect::<Vec<_>>(),
                "joinsMedianMs": c.joins.iter().map(|j| j.1).collect::<Vec<_>>(),
                "joinsFromAgentStartMs": c.joins.iter().map(|j| j.2).collect::<Vec<_>>(),
                "medianOfMaxMs": median(&c.joins.iter().map(|j| j.0).collect::<Vec<_>>()),
            })).collect::<Vec<_>>(),
            "throughput": self.throughput.as_ref().map(|t| json!({
                "vethGbps": t.veth_gbps, "overlayGbps": t.overlay_gbps,
                "bridgeGbps": t.bridge_gbps, "underlayGbps": t.underlay_gbps,
                "congestionControl": t.congestion_control,
                "cpuMsPerGb": {"veth": t.cpu_ms_per_gb[0], "bridge": t.cpu_ms_per_gb[1],
                               "underlay": t.cpu_ms_per_gb[2], "overlay": t.cpu_ms_per_gb[3]},
                "overlayMtu": t.overlay_mtu, "ratio": t.overlay_gbps / t.veth_gbps,
            })),
            "allocations": self.alloc.as_ref().map(|a| json!({
                "n": a.n, "etcdTxnSequentialPerSec": a.etcd_seq, "etcdTxnConcurrent8PerSec": a.etcd_par,
                "localStorePerSec": a.local,
                "localStoreTmpfsPerSec": a.local_tmpfs,
                "affineBlocksStrictPerSec": a.blocks,
                "affineBlocksStrictDiskPerSec": a.blocks_disk,
                "affineBlocksNonStrictPerSec": a.blocks_shared,
            })),
        })
    }
}

// ---------------------------------------------------------------- convergence

/// N-1 hosts with agents, then `joins` times: start one more host's agent,
/// time from its lease appearing in etcd (watched in-process) until every
/// one of the N-1 hosts has a route to its subnet (netlink route dumps),
/// then remove the lease and wait for the routes to go.
fn convergence(bin: &Path, n: usize, joins: usize, progress: &mut dyn FnMut(&str)) -> R<Conv> {
    ensure!(n >= 2, "--hosts: each count must be at least 2");
    let mut o = OverlayLab::new(&format!("conv{n}"), bin.to_path_buf())?;
    let seg = o.lab.segment("192.168.90.0/24")?;
    let t0 = Instant::now();
    let base: Vec<HostId> = (0..n - 1).map(|_| o.lab.host(seg)).collect::<R<_>>()?;
    let joiners: Vec<HostId> = (0..joins).map(|_| o.lab.host(seg)).collect::<R<_>>()?;
    for h in &base {
        o.spawn_agent(*h)?;
    }
    let mut known = BTreeSet::new();
    for h in &base {
        known.insert(o.wait_agent(*h, Duration::from_secs(30))?);
    }
    progress(&format!("  {} hosts + {} joiners ready in {:.1} s", n - 1, joins, t0.elapsed().as_secs_f64()));

    // One netlink socket per base host, opened inside its netns.
    let mut nls = Vec::new();
    for h in &base {
        let ns = linux_net::netns::NetNs::open(Path::new(&format!("/run/netns/{}", o.lab.host_ns(*h))))
            .map_err(|e| format!("open netns of host {}: {e}", h.0))?;
        nls.push(ns.netlink().map_err(|e| format!("netlink in host {}: {e}", h.0))?);
    }
    let has_route = |nl: &mut linux_net::netlink::Netlink, s: Ipv4Network| -> bool {
        linux_net::route::list(nl, false).map(|rs| rs.iter().any(|r| r.dst == IpNetwork::V4(s))).unwrap_or(false)
    };

    let rt = runtime()?;
    let cfg = EtcdConfig { endpoints: vec![o.etcd_local()?], ..EtcdConfig::default() };
    let mgr = rt.block_on(SubnetManager::connect(&cfg)).map_err(|e| format!("etcd: {e}"))?;
    let (_, rev) = rt.block_on(mgr.leases()).map_err(|e| format!("etcd leases: {e}"))?;
    let (tx, rx) = mpsc::channel::<(Instant, Ipv4Network)>();
    {
        let _g = rt.enter();
        let mut w = mgr.watch(rev);
        rt.spawn(async move {
            while let Some(ev) = w.next().await {
                let now = Instant::now();
                let subnets = match ev {
                    Event::Added(l) => vec![l.subnet],
                    Event::Resync(ls) => ls.into_iter().map(|l| l.subnet).collect(),
                    Event::Removed { .. } => vec![],
                };
                for s in subnets {
                    if tx.send((now, s)).is_err() {
                        return;
                    }
                }
            }
        });
    }

    let mut out = Vec::new();
    for &j in &joiners {
        while rx.try_recv().is_ok() {}
        let t_spawn = Instant::now();
        o.spawn_agent(j)?;
        let deadline = Instant::now() + Duration::from_secs(20);
        let (t_lease, subnet) = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left.min(Duration::from_millis(200))) {
                Ok((t, s)) if !known.contains(&s) => break (t, s),
                Ok(_) => {}
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    ensure!(Instant::now() < deadline, "no lease from the joining host {} in etcd", j.0);
                }
                Err(e) => bail!("lease watch ended: {e}"),
            }
        };
        let mut seen: Vec<Option<f64>> = vec![None; nls.len()];
        let deadline = Instant::now() + Duration::from_secs(20);
        while seen.iter().any(Option::is_none) {
            for (k, nl) in nls.iter_mut().enumerate() {
                if seen[k].is_none() && has_route(nl, subnet) {
                    seen[k] = Some(t_lease.elapsed().as_secs_f64() * 1e3);
                }
            }
            if Instant::now() > deadline {
                let missing = seen.iter().filter(|s| s.is_none()).count();
                bail!("{missing} of {} hosts have no route to {subnet} after 20 s", nls.len());
            }
            std::thread::sleep(Duration::from_micros(300));
        }
        let v: Vec<f64> = seen.into_iter().flatten().collect();
        let max = v.iter().copied().fold(0.0, f64::max);
        progress(&format!("  join of host {} ({subnet}): all {} hosts routed after {max:.1} ms", j.0, v.len()));
        let from_start = t_spawn.elapsed().as_secs_f64() * 1e3 - (t_lease.elapsed().as_secs_f64() * 1e3 - max);
        out.push((max, median(&v), from_start));
        // Leave: remove the lease, the agent exits, the routes go.
        rt.block_on(mgr.remove(subnet)).map_err(|e| format!("remove {subnet}: {e}"))?;
        let deadline = Instant::now() + Duration::from_secs(20);
        for nl in nls.iter_mut() {
            while has_route(nl, subnet) {
                ensure!(Instant::now() < deadline, "route to removed {subnet} stays");
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        if let Some(g) = o.agents.get_mut(j.0).and_then(Option::take) {
            g.terminate(Duration::from_secs(2));
        }
    }
    drop(rx);
    rt.shutdown_timeout(Duration::from_millis(200));
    Ok(Conv { hosts: n, joins: out })
}

// ---------------------------------------------------------------- throughput

/// Busy CPU time of the whole machine so far, in ms (/proc/stat's first
/// line: user, nice, system, irq, softirq and steal, in USER_HZ = 100).
fn cpu_busy_ms() -> R<f64> {
    let stat = std::fs::read_to_string("/proc/stat").ctx("read /proc/stat")?;
    let f: Vec<f64> = stat
        .lines()
        .next()
        .and_then(|l| l.strip_prefix("cpu "))
        .ok_or("/proc/stat: no cpu line")?
        .split_whitespace()
        .map(|x| x.parse().unwrap_or(0.0))
        .collect();
    ensure!(f.len() >= 8, "/proc/stat: short cpu line");
    Ok((f[0] + f[1] + f[2] + f[5] + f[6] + f[7]) * 10.0)
}

/// One iperf3 run: Gbit/s, and the machine's busy CPU per GB received
/// (ms). Both lab hosts live on this machine, so the CPU figure is the
/// whole path's: sender, forwarding and receiver.
fn iperf(lab: &Lab, server: Node, client: Node, dst: Ipv4Addr, secs: u32) -> R<(f64, f64)> {
    let port = (40000 + (std::process::id() + next_id()) % 20000).to_string();
    let srv = lab.spawn(server, "iperf3", &["-s", "-1", "-p", &port], &[])?;
    // Wait for the listener.
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let o = lab.exec(server, &["ss", "-Hltn", &format!("sport = :{port}")])?;
        if !String::from_utf8_lossy(&o.stdout).trim().is_empty() {
            break;
        }
        ensure!(Instant::now() < deadline && srv.is_running(), "iperf3 server did not start: {}", srv.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let cpu0 = cpu_busy_ms()?;
    let out = lab.exec_ok(client, &["iperf3", "-c", &dst.to_string(), "-p", &port, "-t", &secs.to_string(), "-J"])?;
    let cpu = cpu_busy_ms()? - cpu0;
    let v: Value = serde_json::from_str(&out).ctx("iperf3 -J output")?;
    let got = &v["end"]["sum_received"];
    let (Some(bps), Some(bytes)) = (got["bits_per_second"].as_f64(), got["bytes"].as_f64()) else {
        return Err(format!("iperf3: no end.sum_received: {}", testkit::util::clip(&out, 300)));
    };
    srv.wait_timeout(Duration::from_secs(3));
    Ok((bps / 1e9, cpu / (bytes / 1e9)))
}

fn throughput(bin: &Path, secs: u32) -> R<Tput> {
    let mut o = OverlayLab::new("tput", bin.to_path_buf())?;
    let seg = o.lab.segment("192.168.91.0/24")?;
    let h1 = o.lab.host(seg)?;
    let h2 = o.lab.host(seg)?;
    o.spawn_agent(h1)?;
    o.spawn_agent(h2)?;
    o.wait_agent(h1, Duration::from_secs(15))?;
    o.wait_agent(h2, Duration::from_secs(15))?;
    // Baseline: two container netns joined directly by a veth pair.
    let a = o.lab.container(h1)?;
    let b = o.lab.container(h1)?;
    let bns = o.lab.netns(b).ok_or("no netns")?.to_string();
    o.lab.exec_ok(
        a,
        &["ip", "link", "add", "v0", "mtu", "1500", "type", "veth", "peer", "name", "v1", "mtu", "1500", "netns", &bns],
    )?;
    o.lab.exec_ok(a, &["ip", "addr", "add", "10.255.0.1/30", "dev", "v0"])?;
    o.lab.exec_ok(a, &["ip", "link", "set", "v0", "up"])?;
    o.lab.exec_ok(b, &["ip", "addr", "add", "10.255.0.2/30", "dev", "v1"])?;
    o.lab.exec_ok(b, &["ip", "link", "set", "v1", "up"])?;
    ensure!(o.lab.ping_until(a, Ipv4Addr::new(10, 255, 0, 2), Duration::from_secs(5)), "veth pair does not ping");
    // Overlay: containers on two hosts.
    let (c1, _, _) = o.container(h1)?;
    let (c2, ip2, _) = o.container(h2)?;
    ensure!(o.lab.ping_until(c1, ip2, Duration::from_secs(10)), "overlay containers do not ping");
    let mtu = o.lab.exec_ok(c1, &["cat", "/sys/class/net/eth0/mtu"])?.trim().to_string();
    // Decomposition: a second container on h1 (bridge path), and the hosts themselves.
    let (c3, ip3, _) = o.container(h1)?;
    ensure!(o.lab.ping_until(c1, ip3, Duration::from_secs(10)), "containers on one host do not ping");
    let h1_ip = o.lab.host_ip(h1);
    // One sample of each path is at the mercy of whatever else the machine
    // runs (back-to-back single samples of one setup ranged over ratios
    // 0.55-0.85): alternate the paths and keep each one's median.
    const ROUNDS: usize = 3;
    let mut gbps: [Vec<f64>; 4] = Default::default();
    let mut cpu: [Vec<f64>; 4] = Default::default();
    for _ in 0..ROUNDS {
        let runs = [
            iperf(&o.lab, b.into(), a.into(), Ipv4Addr::new(10, 255, 0, 2), secs)?,
            iperf(&o.lab, c3.into(), c1.into(), ip3, secs)?,
            iperf(&o.lab, h1.into(), h2.into(), h1_ip, secs)?,
            iperf(&o.lab, c2.into(), c1.into(), ip2, secs)?,
        ];
        for (k, (g, c)) in runs.into_iter().enumerate() {
            gbps[k].push(g);
            cpu[k].push(c);
        }
    }
    let cc = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").unwrap_or_default();
    Ok(Tput {
        veth_gbps: median(&gbps[0]),
        bridge_gbps: median(&gbps[1]),
        underlay_gbps: median(&gbps[2]),
        overlay_gbps: median(&gbps[3]),
        cpu_ms_per_gb: [median(&cpu[0]), median(&cpu[1]), median(&cpu[2]), median(&cpu[3])],
        overlay_mtu: mtu,
        congestion_control: cc.trim().to_string(),
    })
}

// ---------------------------------------------------------------- allocations

fn alloc_bench(n: usize) -> R<Alloc> {
    use etcd_client::{Client, Compare, CompareOp, Txn, TxnOp};
    let etcd = etcd_kv::testing::EtcdServer::start().ctx("start etcd")?;
    let rt = runtime()?;
    let ep = etcd.endpoint();
    let (seq, par) = rt.block_on(async move {
        let client = Client::connect([ep.as_str()], None).await.map_err(|e| format!("etcd connect: {e}"))?;
        async fn claim(mut c: Client, key: String) -> R<()> {
            let txn = Txn::new().when([Compare::version(key.clone(), CompareOp::Equal, 0)]).and_then([TxnOp::put(
                key.clone(),
                "bench-container/eth0",
                None,
            )]);
            let r = c.txn(txn).await.map_err(|e| format!("txn {key}: {e}"))?;
            ensure!(r.succeeded(), "{key} was taken");
            Ok(())
        }
        let ip = |set: u32, i: usize| format!("/cft-bench/ips/10.{set}.{}.{}", i / 256, i % 256);
        let t = Instant::now();
        for i in 0..n {
            claim(client.clone(), ip(1, i)).await?;
        }
        let seq = n as f64 / t.elapsed().as_secs_f64();
        let t = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..8 {
            let c = client.clone();
            let keys: Vec<String> = (w..n).step_by(8).map(|i| ip(2, i)).collect();
            tasks.push(tokio::spawn(async move {
                for k in keys {
                    claim(c.clone(), k).await?;
                }
                Ok::<(), String>(())
            }));
        }
        for t in tasks {
            t.await.map_err(|e| format!("task: {e}"))??;
        }
        let par = n as f64 / t.elapsed().as_secs_f64();
        Ok::<(f64, f64), String>((seq, par))
    })?;
    let tmp = std::env::temp_dir();
    // The real blocks path against the same etcd, block claims included.
    // One bench host per run (its own host name), each claiming its own blocks.
    let blocks_ipam = |strict: bool, host: &str| {
        json!({"cluster": {"mode": "blocks", "etcdEndpoints": [etcd.endpoint()], "etcdPrefix": "/cft-bench/blocks",
                           "pool": "10.251.0.0/16", "blockSize": 26, "strictAffinity": strict, "host": host}})
    };
    let shm = Path::new("/dev/shm");
    ensure!(shm.is_dir(), "/dev/shm (tmpfs) is missing");
    let blocks = local_bench(n, shm, blocks_ipam(true, "bench-strict"))?;
    let blocks_disk = local_bench(n, &tmp, blocks_ipam(true, "bench-strict-disk"))?;
    let blocks_shared = local_bench(n, shm, blocks_ipam(false, "bench-shared"))?;
    drop(etcd);
    let ranges = json!({"ranges": [[{"subnet": "10.250.0.0/16"}]]});
    let local = local_bench(n, &tmp, ranges.clone())?;
    let local_tmpfs = if shm.is_dir() { Some(local_bench(n, shm, ranges)?) } else { None };
    Ok(Alloc { n, etcd_seq: seq, etcd_par: par, local, local_tmpfs, blocks, blocks_disk, blocks_shared })
}

/// N in-process `cni_ipam::Ipam` ADDs (context built from env + config each
/// time, like a call) against a fresh dataDir; `ipam` is the section
/// without `type`/`dataDir` (a /16 range, or a cluster section).
fn local_bench(n: usize, base: &Path, mut ipam: Value) -> R<f64> {
    use cni_core::Plugin as _;
    let dir = base.join(format!("{}-ipambench", unique_name(next_id())));
    std::fs::create_dir_all(&dir).ctx("create temp dir")?;
    ipam["type"] = json!("cni-ipam");
    ipam["dataDir"] = json!(dir.join("ipam"));
    let conf = json!({"cniVersion": "1.1.0", "name": "bench", "type": "bench", "ipam": ipam}).to_string();
    let res = (|| {
        let t = Instant::now();
        for i in 0..n {
            let id = format!("bench{i}");
            let env = |k: &str| -> Option<String> {
                Some(match k {
                    "CNI_COMMAND" => "ADD".into(),
                    "CNI_CONTAINERID" => id.clone(),
                    "CNI_IFNAME" => "eth0".into(),
                    "CNI_NETNS" => "/run/netns/none".into(),
                    "CNI_PATH" => "/nonexistent".into(),
                    _ => return None,
                })
            };
            let ctx =
                cni_core::skel::Context::from_parts(&env, conf.as_bytes()).map_err(|e| format!("context: {e}"))?;
            cni_ipam::Ipam.add(&ctx).map_err(|e| format!("ADD {i}: {e}"))?;
        }
        Ok(n as f64 / t.elapsed().as_secs_f64())
    })();
    let _ = std::fs::remove_dir_all(&dir);
    res
}
