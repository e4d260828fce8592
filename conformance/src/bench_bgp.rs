//! `conformance bench bgp`: our BGP agent against BIRD 2 as receivers of the
//! same feed, in one run (issue #13, item 6). Numbers are printed, never
//! asserted; the goal (at most BIRD's time and memory) is printed as met or
//! not.
//!
//! * **Feed**: a BIRD 2 in a lab netns announces N IPv4 /32s from
//!   100.64.0.0/10 (a `protocol static` of blackholes generated into its
//!   config) over eBGP (feeder AS 65001, receivers AS 64512). It is passive
//!   and accepts any address of the segment (`neighbor range`), so every
//!   receiver opens its own session, one receiver at a time.
//! * **Receivers**, each in a fresh lab host (netns) per round, the order
//!   alternating between rounds: ours (the `cni-bgp agent` binary with the
//!   feeder as `--peer ADDR,AS` and the lab's etcd) and BIRD (`protocol
//!   kernel { ipv4 { export all; }; }`, `connect delay time 0`: BIRD at its
//!   fastest; its default is 5 s).
//! * **Times** (wall clock, one clock for all): *start* is the spawn of the
//!   receiver's process; *all in FIB* is the first poll (every 5 ms, or 4x
//!   the last read's duration if longer: ≈ 20 ms at 100k routes) at which
//!   the receiver netns's main FIB holds N more prefixes than before the
//!   start (`/proc/net/fib_triestat`, read in that netns: no route is
//!   copied out, but the kernel walks the FIB), then confirmed by a netlink dump counting the routes of the receiver's
//!   protocol, ours 76 and BIRD's 12). *Accepted* and *Established* are the
//!   feeder's log lines for that receiver's session (BIRD logs with µs
//!   timestamps): "session establishment" is accepted → Established (the
//!   OPEN/KEEPALIVE exchange as the feeder sees it), and the FIB time is
//!   also given from Established, which leaves out process start-up, etcd
//!   registration and the connect delay.
//! * **CPU**: utime + stime of the receiver (all threads; the kernel's work
//!   on its netlink writes included) from start until all routes are in
//!   the FIB: its work, which the machine's load does not stretch.
//! * **Memory**: VmRSS and VmHWM (peak) of the receiver process right after
//!   all routes are in the FIB, and the VmRSS of the same receiver idle (in
//!   another fresh host, ready, its one peer unreachable): the growth per
//!   100k routes is (converged - idle) scaled to 100k.
//! * **Mesh join**: M-1 nodes in an iBGP full mesh on one segment, each
//!   originating one /26 block; the M-th starts and the time until every
//!   other node has the M-th's block in its kernel FIB is measured. Ours:
//!   agents registering in etcd with their blocks in cni-ipam's cluster
//!   layout; BIRD: M BIRDs with static configs naming every other node.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{Read as _, Seek as _, SeekFrom};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ipnetwork::{IpNetwork, Ipv4Network};
use serde_json::{json, Value};

use testkit::lab::{HostId, Lab, ProcessGuard, SegmentId};
use testkit::util::{have_tool, median, Context as _, R};
use testkit::{bail, ensure};

/// Our route protocol number (cni_bgp::fib::PROTOCOL, docs/cni-bgp.md).
pub const PROTO_OURS: u8 = 76;
/// BIRD's (`proto bird`, RTPROT_BIRD).
pub const PROTO_BIRD: u8 = 12;
/// The feeder's AS; receivers are in [`RECEIVER_AS`] (eBGP).
pub const FEEDER_AS: u32 = 65001;
pub const RECEIVER_AS: u32 = 64512;
/// The /32s fed come from here (RFC 6598 shared space, never a lab address).
const FEED_BASE: Ipv4Addr = Ipv4Addr::new(100, 64, 0, 0);
/// Most routes `--routes` accepts: the /32s of 100.64.0.0/10.
pub const MAX_ROUTES: usize = 1 << 22;
/// The mesh blocks: 10.200.<i>.0/26 for node i.
const MESH_BLOCK_NET: [u8; 2] = [10, 200];
/// The lab segment (inside the lab's netns only).
const SEGMENT: &str = "192.168.91.0/24";
const POLL: Duration = Duration::from_millis(5);

pub struct Opts {
    /// Where the `cni-bgp` binary is.
    pub plugin_dir: PathBuf,
    pub routes: usize,
    /// Rounds (each receiver once per round).
    pub n: usize,
    /// Mesh size for the join measurement (the joining node included); 0: not measured.
    pub mesh_hosts: usize,
    /// Measure only BIRD (the baseline; no cni-bgp needed).
    pub bird_only: bool,
}

/// One receiver's samples, one per round.
#[derive(Default, Clone)]
pub struct Side {
    pub start_to_fib_ms: Vec<f64>,
    pub est_to_fib_ms: Vec<f64>,
    pub accept_to_est_ms: Vec<f64>,
    pub start_to_est_ms: Vec<f64>,
    /// CPU time (user + system, all threads) the receiver used from its
    /// start until all routes were in the FIB: its work, whatever the load.
    pub cpu_ms: Vec<f64>,
    pub rss_kib: Vec<f64>,
    pub hwm_kib: Vec<f64>,
    /// VmRSS of the same receiver with no routes: ready, its one peer unreachable.
    pub idle_rss_kib: Vec<f64>,
}

pub struct Mesh {
    pub hosts: usize,
    /// Joins measured (one per round): the joiner's start → its block in every other node's FIB.
    pub ours_ms: Vec<f64>,
    pub bird_ms: Vec<f64>,
}

pub struct Report {
    pub routes: usize,
    pub n: usize,
    pub bird_version: String,
    /// None with `--bird-only`.
    pub ours: Option<Side>,
    pub bird: Side,
    pub mesh: Option<Mesh>,
    /// Why the mesh join was not measured.
    pub mesh_note: Option<String>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Kind {
    Ours,
    Bird,
}

impl Kind {
    fn proto(self) -> u8 {
        match self {
            Kind::Ours => PROTO_OURS,
            Kind::Bird => PROTO_BIRD,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Kind::Ours => "ours",
            Kind::Bird => "BIRD",
        }
    }
}

/// The `cni-bgp` binary in `dir`, or a clear error.
pub fn agent_bin(dir: &Path) -> R<PathBuf> {
    let p = dir.join("cni-bgp");
    ensure!(p.is_file(), "{} not found: build it (cargo build --release -p cni-bgp) or pass --plugin-dir", p.display());
    Ok(p)
}

pub fn run(o: &Opts, progress: &mut dyn FnMut(&str)) -> R<Report> {
    ensure!((1..=MAX_ROUTES).contains(&o.routes), "--routes must be 1..={MAX_ROUTES}");
    for tool in ["bird", "birdc", "etcd"] {
        ensure!(have_tool(tool), "{tool} is not installed (apt-get install bird2 etcd-server)");
    }
    let bin = if o.bird_only { None } else { Some(agent_bin(&o.plugin_dir)?) };
    let kinds: &[Kind] = if o.bird_only { &[Kind::Bird] } else { &[Kind::Ours, Kind::Bird] };
    let bird_version = bird_version()?;
    let mut lab = Lab::new("bgpbench")?;
    lab.start_etcd()?;
    // One session per receiver: no node-to-node mesh between the rounds' agents.
    etcd_put(&lab, "/bench-bgp/bgp/config", &json!({"nodeToNodeMesh": false}).to_string())?;
    let seg = lab.segment(SEGMENT)?;
    progress(&format!("bench bgp: feeder BIRD loads {} static routes", o.routes));
    let feeder = Feeder::start(&mut lab, seg, o.routes)?;
    let (mut ours, mut bird) = (Side::default(), Side::default());
    for round in 0..o.n.max(1) {
        let mut order = kinds.to_vec();
        if round % 2 == 1 {
            order.reverse();
        }
        for kind in order {
            let s = feed_round(&mut lab, seg, &feeder, kind, bin.as_deref(), o.routes)?;
            progress(&format!(
                "  round {}: {:<4} all {} routes in the FIB {:.0} ms after start ({:.0} ms after Established), \
                 session accepted->Established {:.2} ms, RSS {:.1} MiB",
                round + 1,
                kind.name(),
                o.routes,
                s.start_to_fib,
                s.est_to_fib,
                s.accept_to_est,
                s.rss_kib / 1024.0
            ));
            let side = if kind == Kind::Ours { &mut ours } else { &mut bird };
            side.start_to_fib_ms.push(s.start_to_fib);
            side.est_to_fib_ms.push(s.est_to_fib);
            side.accept_to_est_ms.push(s.accept_to_est);
            side.start_to_est_ms.push(s.start_to_est);
            side.cpu_ms.push(s.cpu_ms);
            side.rss_kib.push(s.rss_kib);
            side.hwm_kib.push(s.hwm_kib);
            let idle = idle_rss(&mut lab, seg, kind, bin.as_deref())?;
            progress(&format!(
                "  round {}: {:<4} idle (no routes) RSS {:.1} MiB",
                round + 1,
                kind.name(),
                idle / 1024.0
            ));
            side.idle_rss_kib.push(idle);
        }
    }
    drop(feeder);
    drop(lab);
    let (mesh, mesh_note) = if o.mesh_hosts >= 2 {
        progress(&format!("bench bgp: mesh of {} nodes, the last one joining", o.mesh_hosts));
        (Some(mesh_join(bin.as_deref(), o.mesh_hosts, o.n.max(1), progress)?), None)
    } else {
        (None, Some("not measured (--mesh-hosts 0)".to_string()))
    };
    let ours = (!o.bird_only).then_some(ours);
    Ok(Report { routes: o.routes, n: o.n.max(1), bird_version, ours, bird, mesh, mesh_note })
}

fn bird_version() -> R<String> {
    let out = std::process::Command::new("bird").arg("--version").output().ctx("run bird --version")?;
    let s = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    Ok(s.trim().trim_start_matches("BIRD version ").to_string())
}

/// The feeding BIRD: passive, any address of the segment may open a session.
struct Feeder {
    ip: Ipv4Addr,
    log: PathBuf,
    _proc: ProcessGuard,
}

impl Feeder {
    fn start(lab: &mut Lab, seg: SegmentId, routes: usize) -> R<Feeder> {
        let h = lab.host(seg)?;
        let ip = lab.host_ip(h);
        let dir = lab.dir().join("feeder");
        std::fs::create_dir_all(&dir).ctx("create the feeder's dir")?;
        let (conf, ctl, log) = (dir.join("bird.conf"), dir.join("bird.ctl"), dir.join("bird.log"));
        let mut c = String::with_capacity(routes * 32 + 1024);
        let _ = writeln!(c, "log \"{}\" all;\ntimeformat log \"%F %T.%6f\";\nrouter id {ip};", log.display());
        c.push_str("protocol device {}\nprotocol static feed {\n  ipv4;\n");
        let base = u32::from(FEED_BASE);
        for i in 0..routes as u32 {
            let _ = writeln!(c, "  route {}/32 blackhole;", Ipv4Addr::from(base + i));
        }
        let _ = write!(
            c,
            "}}\nprotocol bgp recv {{\n  local {ip} as {FEEDER_AS};\n  neighbor range {} as {RECEIVER_AS};\n  \
             dynamic name \"rcv\";\n  passive;\n  debug {{ states, events }};\n  \
             ipv4 {{ import none; export all; }};\n}}\n",
            lab.segment_net(seg)
        );
        std::fs::write(&conf, c).ctx("write the feeder's config")?;
        let p = spawn_bird(lab, h, &conf, &ctl)?;
        // Ready: the static protocol is up with all its routes in the table.
        let want = format!("{routes} of {routes} routes");
        let deadline = Instant::now() + Duration::from_secs(60 + routes as u64 / 2000);
        loop {
            let (ok, out) = birdc(&ctl, &["show", "route", "count"]);
            if ok && out.contains(&want) {
                break;
            }
            ensure!(p.is_running(), "the feeder BIRD exited:\n{}", tail(&p.log(), 20));
            ensure!(Instant::now() < deadline, "the feeder BIRD did not load its routes: {out}");
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Feeder { ip, log, _proc: p })
    }
}

fn spawn_bird(lab: &Lab, h: HostId, conf: &Path, ctl: &Path) -> R<ProcessGuard> {
    let (conf, ctl) = (conf.display().to_string(), ctl.display().to_string());
    // -f: stays in the foreground, so the guard's pid is BIRD's own.
    lab.spawn(h, "bird", &["-f", "-c", &conf, "-s", &ctl], &[("TZ", "UTC")])
}

fn birdc(ctl: &Path, args: &[&str]) -> (bool, String) {
    match std::process::Command::new("birdc").arg("-s").arg(ctl).args(args).output() {
        Ok(o) => (o.status.success(), String::from_utf8_lossy(&o.stdout).into_owned()),
        Err(e) => (false, e.to_string()),
    }
}

struct Sample {
    start_to_fib: f64,
    est_to_fib: f64,
    accept_to_est: f64,
    start_to_est: f64,
    cpu_ms: f64,
    rss_kib: f64,
    hwm_kib: f64,
}

/// One receiver of `kind` in a fresh host: start, wait for N routes in its
/// FIB, read its memory and the feeder's log, stop it.
fn feed_round(
    lab: &mut Lab,
    seg: SegmentId,
    feeder: &Feeder,
    kind: Kind,
    bin: Option<&Path>,
    routes: usize,
) -> R<Sample> {
    let h = lab.host(seg)?;
    let ip = lab.host_ip(h);
    let ns = lab.host_ns(h).to_string();
    let mut fib = FibCount::open(&ns)?;
    let base = fib.prefixes()?;
    let dir = lab.dir().join(format!("rcv{}", h.0));
    std::fs::create_dir_all(&dir).ctx("create the receiver's dir")?;
    let (t0, wall0) = (Instant::now(), unix_now());
    let p = match kind {
        Kind::Ours => {
            let bin = bin.ok_or("no cni-bgp binary")?;
            let url = lab.etcd_url().ok_or("etcd is not running")?;
            let args = agent_args(&url, &format!("rcv{}", h.0), ip, &dir, &format!("{},{FEEDER_AS}", feeder.ip));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            lab.spawn(h, &bin.display().to_string(), &args, &[])?
        }
        Kind::Bird => {
            let conf = dir.join("bird.conf");
            std::fs::write(&conf, receiver_bird_conf(ip, feeder.ip)).ctx("write the receiver BIRD's config")?;
            spawn_bird(lab, h, &conf, &dir.join("bird.ctl"))?
        }
    };
    let want = base + routes as u64;
    let deadline = t0 + Duration::from_secs(120 + routes as u64 / 500);
    let mut confirm = Instant::now();
    let t_fib = loop {
        let now = Instant::now();
        let count = fib.prefixes()?;
        // The read walks the whole FIB (≈ 4 ms at 100k routes here): sleep 4x
        // what it took, so polling costs at most a fifth of a core, the same
        // for both receivers.
        let pause = POLL.max(now.elapsed() * 4);
        if count >= want && now >= confirm {
            // The cheap count says so: the routes of the receiver's protocol must be all there.
            let n = count_protocol(&ns, kind.proto())?;
            if n >= routes {
                break now;
            }
            confirm = now + Duration::from_millis(50);
        }
        ensure!(p.is_running(), "{} receiver exited:\n{}", kind.name(), tail(&p.log(), 30));
        if now > deadline {
            bail!(
                "{} receiver: {} of {routes} routes in its FIB after {:?}:\n{}",
                kind.name(),
                count_protocol(&ns, kind.proto()).unwrap_or(0),
                now - t0,
                tail(&p.log(), 30)
            );
        }
        std::thread::sleep(pause);
    };
    let (rss_kib, hwm_kib) = memory_kib(p.pid())?;
    let cpu_ms = cpu_ms(p.pid())?;
    let start_to_fib = ms(t_fib - t0);
    let log = std::fs::read_to_string(&feeder.log).ctx("read the feeder's log")?;
    let (accepted, established) = session_times(&log, ip)
        .ok_or_else(|| format!("the feeder's log has no established session from {ip}:\n{}", tail(&log, 20)))?;
    let start_to_est = (established - wall0) * 1000.0;
    let s = Sample {
        start_to_fib,
        est_to_fib: start_to_fib - start_to_est,
        accept_to_est: (established - accepted) * 1000.0,
        start_to_est,
        cpu_ms,
        rss_kib,
        hwm_kib,
    };
    p.terminate(Duration::from_secs(10));
    // Free the kernel's memory for the next rounds (the agent keeps its
    // routes on exit for graceful restart).
    lab.exec_ok(h, &["ip", "route", "flush", "proto", &kind.proto().to_string()])?;
    Ok(s)
}

fn etcd_put(lab: &Lab, key: &str, val: &str) -> R<()> {
    let local = lab.etcd_local_url().ok_or("etcd is not running")?;
    let o = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(["--endpoints", &local, "put", key, val])
        .output()
        .ctx("run etcdctl")?;
    ensure!(o.status.success(), "etcdctl put {key}: {}", String::from_utf8_lossy(&o.stderr));
    Ok(())
}

/// The VmRSS of a receiver of `kind` that holds no routes: in a fresh host,
/// its one peer an address nobody has, measured once it is ready (ours: its
/// status socket answers ready; BIRD: `birdc show status` answers).
fn idle_rss(lab: &mut Lab, seg: SegmentId, kind: Kind, bin: Option<&Path>) -> R<f64> {
    let h = lab.host(seg)?;
    let ip = lab.host_ip(h);
    let nobody = Ipv4Addr::from(u32::from(lab.segment_net(seg).broadcast()) - 5);
    let dir = lab.dir().join(format!("idle{}", h.0));
    std::fs::create_dir_all(&dir).ctx("create the idle receiver's dir")?;
    let (p, ready): (ProcessGuard, Box<dyn Fn() -> bool>) = match kind {
        Kind::Ours => {
            let bin = bin.ok_or("no cni-bgp binary")?;
            let url = lab.etcd_url().ok_or("etcd is not running")?;
            let args = agent_args(&url, &format!("idle{}", h.0), ip, &dir, &format!("{nobody},{FEEDER_AS}"));
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            let sock = dir.join("status.sock");
            (lab.spawn(h, &bin.display().to_string(), &args, &[])?, Box::new(move || status_ready(&sock)))
        }
        Kind::Bird => {
            let conf = dir.join("bird.conf");
            std::fs::write(&conf, receiver_bird_conf(ip, nobody)).ctx("write the idle BIRD's config")?;
            let ctl = dir.join("bird.ctl");
            let p = spawn_bird(lab, h, &conf, &ctl)?;
            (p, Box::new(move || birdc(&ctl, &["show", "status"]).1.contains("Daemon is up and running")))
        }
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ready() {
        ensure!(p.is_running(), "idle {} receiver exited:\n{}", kind.name(), tail(&p.log(), 30));
        ensure!(Instant::now() < deadline, "idle {} receiver not ready in 30 s:\n{}", kind.name(), tail(&p.log(), 30));
        std::thread::sleep(Duration::from_millis(20));
    }
    let (rss, _) = memory_kib(p.pid())?;
    p.terminate(Duration::from_secs(10));
    Ok(rss)
}

/// Whether the agent's status socket (docs/cni-bgp.md) answers `"ready":true`.
fn status_ready(sock: &Path) -> bool {
    use std::io::BufRead as _;
    let Ok(s) = std::os::unix::net::UnixStream::connect(sock) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut line = String::new();
    let _ = std::io::BufReader::new(s).read_line(&mut line);
    serde_json::from_str::<Value>(&line).is_ok_and(|v| v["ready"] == json!(true))
}

fn receiver_bird_conf(ip: Ipv4Addr, peer: Ipv4Addr) -> String {
    format!(
        "router id {ip};\nprotocol device {{}}\nprotocol kernel {{ ipv4 {{ import none; export all; }}; }}\n\
         protocol bgp feed {{\n  local {ip} as {RECEIVER_AS};\n  neighbor {peer} as {FEEDER_AS};\n  \
         connect delay time 0;\n  ipv4 {{ import all; export none; }};\n}}\n"
    )
}

/// `cni-bgp agent` flags (contract B, issue #13 item 2).
fn agent_args(etcd: &str, name: &str, ip: Ipv4Addr, state: &Path, peer: &str) -> Vec<String> {
    let mut a: Vec<String> = ["agent", "--etcd-endpoints", etcd, "--etcd-prefix", "/bench-bgp", "--node-name", name]
        .iter()
        .map(|s| s.to_string())
        .collect();
    a.extend(["--node-ip".into(), ip.to_string(), "--as".into(), RECEIVER_AS.to_string()]);
    a.extend(["--state-dir".into(), state.display().to_string(), "--deregister-on-exit".into()]);
    if !peer.is_empty() {
        a.extend(["--peer".into(), peer.to_string()]);
    }
    a
}

/// Counts the prefixes of a netns's main FIB by reading its
/// `/proc/net/fib_triestat` (opened inside the netns, re-read from here).
struct FibCount {
    file: File,
}

impl FibCount {
    fn open(ns: &str) -> R<FibCount> {
        let path = PathBuf::from(format!("/var/run/netns/{ns}"));
        let file = linux_net::netns::spawn_in(&path, None, || File::open("/proc/thread-self/net/fib_triestat"))
            .map_err(|e| e.to_string())?
            .join()
            .map_err(|_| "netns thread panicked".to_string())?
            .map_err(|e| e.to_string())?
            .ctx(format!("open fib_triestat in {ns}"))?;
        Ok(FibCount { file })
    }

    fn prefixes(&mut self) -> R<u64> {
        let mut s = String::new();
        self.file.seek(SeekFrom::Start(0)).ctx("rewind fib_triestat")?;
        self.file.read_to_string(&mut s).ctx("read fib_triestat")?;
        triestat_main_prefixes(&s).ok_or_else(|| format!("no Main prefixes in fib_triestat:\n{s}"))
    }
}

/// The "Prefixes:" count of the "Main:" table in `/proc/net/fib_triestat`.
fn triestat_main_prefixes(s: &str) -> Option<u64> {
    let main = s.split("\nMain:").nth(1)?;
    main.lines().find_map(|l| l.trim().strip_prefix("Prefixes:")).and_then(|v| v.trim().parse().ok())
}

/// IPv4 routes of `proto` in the main table of `ns`, by a netlink dump there.
fn count_protocol(ns: &str, proto: u8) -> R<usize> {
    let path = PathBuf::from(format!("/var/run/netns/{ns}"));
    let n = linux_net::netns::NetNs::open(&path).map_err(|e| e.to_string())?;
    let mut nl = n.netlink().map_err(|e| e.to_string())?;
    Ok(linux_net::route::list_protocol(&mut nl, false, 254, proto).map_err(|e| e.to_string())?.len())
}

/// VmRSS and VmHWM of a process, KiB.
fn memory_kib(pid: u32) -> R<(f64, f64)> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ctx("read the receiver's /proc status")?;
    let field = |k: &str| {
        s.lines()
            .find_map(|l| l.strip_prefix(k))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
            .ok_or_else(|| format!("no {k} in /proc/{pid}/status"))
    };
    Ok((field("VmRSS:")?, field("VmHWM:")?))
}

/// utime + stime of a process (all its threads) in ms, from `/proc/PID/stat`.
fn cpu_ms(pid: u32) -> R<f64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/stat")).ctx("read the receiver's /proc stat")?;
    // Fields after the command, which is in parentheses and may hold spaces.
    let rest = s.rsplit_once(')').map(|(_, r)| r).ok_or("malformed /proc stat")?;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of stat(5); `rest` starts at field 3.
    let tick = |i: usize| f.get(i - 3).and_then(|v| v.parse::<f64>().ok()).ok_or("malformed /proc stat");
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    Ok((tick(14)? + tick(15)?) * 1000.0 / hz)
}

/// The feeder's view of `peer`'s last session: (accepted, Established), Unix seconds.
fn session_times(log: &str, peer: Ipv4Addr) -> Option<(f64, f64)> {
    let incoming = format!("Incoming connection from {peer} (port");
    let (mut accepted, mut pending, mut name) = (None, false, None::<String>);
    let mut found = None;
    for line in log.lines() {
        if line.contains(&incoming) {
            accepted = log_time(line);
            pending = true;
        } else if pending && line.contains(": Initializing") {
            name = line.split("<TRACE> ").nth(1).and_then(|r| r.split(':').next()).map(str::to_string);
            pending = false;
        } else if let Some(n) = &name {
            if line.contains(&format!("<TRACE> {n}: BGP session established")) {
                found = accepted.zip(log_time(line));
                name = None;
            }
        }
    }
    found
}

/// `2026-12-07 04:59:27.801633 …` (UTC) as Unix seconds.
fn log_time(line: &str) -> Option<f64> {
    let mut it = line.split_whitespace();
    let (date, time) = (it.next()?, it.next()?);
    let d: Vec<i64> = date.split('-').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|x| x.parse().ok()).collect::<Option<_>>()?;
    if d.len() != 3 || t.len() != 3 {
        return None;
    }
    let frac: f64 = format!("0.{frac}").parse().ok()?;
    let days = days_from_civil(d[0], d[1], d[2]);
    Some((days * 86400 + t[0] * 3600 + t[1] * 60 + t[2]) as f64 + frac)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn unix_now() -> f64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// Node i's block in the mesh measurement.
fn mesh_block(i: usize) -> Ipv4Network {
    Ipv4Network::new(Ipv4Addr::new(MESH_BLOCK_NET[0], MESH_BLOCK_NET[1], i as u8, 0), 26).expect("a /26")
}

/// Waits until every node in `nss` has `block` under `proto` in its main table; the time it took.
fn wait_block_everywhere(
    nss: &[String],
    block: Ipv4Network,
    proto: u8,
    t0: Instant,
    timeout: Duration,
    alive: &dyn Fn() -> R<()>,
) -> R<f64> {
    let mut socks = Vec::new();
    for ns in nss {
        let path = PathBuf::from(format!("/var/run/netns/{ns}"));
        let n = linux_net::netns::NetNs::open(&path).map_err(|e| e.to_string())?;
        socks.push(n.netlink().map_err(|e| e.to_string())?);
    }
    let mut done = vec![false; nss.len()];
    loop {
        for (nl, d) in socks.iter_mut().zip(done.iter_mut()).filter(|(_, d)| !**d) {
            let rs = linux_net::route::list_protocol(nl, false, 254, proto).map_err(|e| e.to_string())?;
            *d = rs.iter().any(|r| r.dst == IpNetwork::V4(block));
        }
        if done.iter().all(|d| *d) {
            return Ok(ms(t0.elapsed()));
        }
        alive()?;
        ensure!(
            t0.elapsed() < timeout,
            "{block} reached {} of {} nodes in {timeout:?}",
            done.iter().filter(|d| **d).count(),
            nss.len()
        );
        std::thread::sleep(POLL);
    }
}

/// The mesh join, BIRD and ours (if `bin`), `rounds` times each in fresh labs.
fn mesh_join(bin: Option<&Path>, hosts: usize, rounds: usize, progress: &mut dyn FnMut(&str)) -> R<Mesh> {
    ensure!(hosts <= 200, "--mesh-hosts must be at most 200");
    let mut m = Mesh { hosts, ours_ms: vec![], bird_ms: vec![] };
    for round in 0..rounds {
        let b = mesh_bird(hosts)?;
        progress(&format!("  round {}: BIRD  node {hosts} joins: its block in every FIB after {b:.0} ms", round + 1));
        m.bird_ms.push(b);
        if let Some(bin) = bin {
            let o = mesh_ours(bin, hosts)?;
            progress(&format!(
                "  round {}: ours  node {hosts} joins: its block in every FIB after {o:.0} ms",
                round + 1
            ));
            m.ours_ms.push(o);
        }
    }
    Ok(m)
}

fn mesh_bird(hosts: usize) -> R<f64> {
    let mut lab = Lab::new("bgpmeshb")?;
    let seg = lab.segment(SEGMENT)?;
    let hs: Vec<HostId> = (0..hosts).map(|_| lab.host(seg)).collect::<R<_>>()?;
    let ips: Vec<Ipv4Addr> = hs.iter().map(|h| lab.host_ip(*h)).collect();
    let mut procs = Vec::new();
    let spawn = |lab: &Lab, i: usize| -> R<ProcessGuard> {
        let dir = lab.dir().join(format!("mesh{i}"));
        std::fs::create_dir_all(&dir).ctx("create a mesh node's dir")?;
        let ip = ips[i];
        let mut c = format!(
            "router id {ip};\nprotocol device {{}}\nprotocol kernel {{ ipv4 {{ import none; export all; }}; }}\n\
             protocol static {{ ipv4; route {} blackhole; }}\n\
             template bgp mesh {{\n  local {ip} as {RECEIVER_AS};\n  direct;\n  connect delay time 0;\n  \
             ipv4 {{ import all; export all; next hop self; }};\n}}\n",
            mesh_block(i)
        );
        for (j, peer) in ips.iter().enumerate().filter(|(j, _)| *j != i) {
            let _ = writeln!(c, "protocol bgp n{j} from mesh {{ neighbor {peer} as {RECEIVER_AS}; }}");
        }
        let conf = dir.join("bird.conf");
        std::fs::write(&conf, c).ctx("write a mesh node's config")?;
        spawn_bird(lab, hs[i], &conf, &dir.join("bird.ctl"))
    };
    let nss: Vec<String> = hs.iter().map(|h| lab.host_ns(*h).to_string()).collect();
    let last = hosts - 1;
    for i in 0..last {
        procs.push(spawn(&lab, i)?);
    }
    // The first M-1 have converged: every one holds every other's block.
    let alive = |ps: &[ProcessGuard]| -> R<()> {
        for (i, p) in ps.iter().enumerate() {
            ensure!(p.is_running(), "mesh BIRD {i} exited:\n{}", tail(&p.log(), 20));
        }
        Ok(())
    };
    let t = Instant::now();
    for i in 0..last {
        let others: Vec<String> = (0..last).filter(|j| *j != i).map(|j| nss[j].clone()).collect();
        wait_block_everywhere(&others, mesh_block(i), PROTO_BIRD, t, Duration::from_secs(300), &|| alive(&procs))?;
    }
    let t0 = Instant::now();
    procs.push(spawn(&lab, last)?);
    wait_block_everywhere(&nss[..last], mesh_block(last), PROTO_BIRD, t0, Duration::from_secs(300), &|| alive(&procs))
}

fn mesh_ours(bin: &Path, hosts: usize) -> R<f64> {
    let mut lab = Lab::new("bgpmesho")?;
    lab.start_etcd()?;
    let url = lab.etcd_url().ok_or("etcd is not running")?;
    let seg = lab.segment(SEGMENT)?;
    let hs: Vec<HostId> = (0..hosts).map(|_| lab.host(seg)).collect::<R<_>>()?;
    let nss: Vec<String> = hs.iter().map(|h| lab.host_ns(*h).to_string()).collect();
    let put_block = |i: usize| -> R<()> {
        let b = mesh_block(i);
        let key = format!("/bench-bgp/bench/blocks/{}-{}", b.network(), b.prefix());
        etcd_put(&lab, &key, &json!({"host": format!("node{i}"), "exclusive": true, "allocations": {}}).to_string())
    };
    let spawn = |lab: &Lab, i: usize| -> R<ProcessGuard> {
        let dir = lab.dir().join(format!("mesh{i}"));
        std::fs::create_dir_all(&dir).ctx("create a mesh node's dir")?;
        let args = agent_args(&url, &format!("node{i}"), lab.host_ip(hs[i]), &dir, "");
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        lab.spawn(hs[i], &bin.display().to_string(), &args, &[])
    };
    let last = hosts - 1;
    let mut procs = Vec::new();
    for i in 0..last {
        put_block(i)?;
        procs.push(spawn(&lab, i)?);
    }
    let t = Instant::now();
    let alive = |ps: &[ProcessGuard]| -> R<()> {
        for (i, p) in ps.iter().enumerate() {
            ensure!(p.is_running(), "agent node{i} exited:\n{}", tail(&p.log(), 20));
        }
        Ok(())
    };
    for i in 0..last {
        let others: Vec<String> = (0..last).filter(|j| *j != i).map(|j| nss[j].clone()).collect();
        wait_block_everywhere(&others, mesh_block(i), PROTO_OURS, t, Duration::from_secs(300), &|| alive(&procs))?;
    }
    put_block(last)?;
    let t0 = Instant::now();
    procs.push(spawn(&lab, last)?);
    wait_block_everywhere(&nss[..last], mesh_block(last), PROTO_OURS, t0, Duration::from_secs(300), &|| alive(&procs))
}

fn ratio(ours: f64, bird: f64) -> f64 {
    ours / bird
}

/// One sample series of a [`Side`].
type Field = fn(&Side) -> &Vec<f64>;

fn word(b: Option<bool>) -> &'static str {
    match b {
        Some(true) => "met",
        Some(false) => "NOT met",
        None => "not measured",
    }
}

impl Report {
    /// MiB per 100k routes of a side: (RSS converged - RSS idle), medians, scaled.
    fn per_100k(&self, x: &Side) -> f64 {
        (median(&x.rss_kib) - median(&x.idle_rss_kib)) / 1024.0 * 100_000.0 / self.routes as f64
    }

    /// (time, memory per 100k routes, total RSS): each at most BIRD's, when
    /// ours was measured. Time is Established -> all routes in the FIB (the
    /// work on the feed, without BIRD's connect delay).
    pub fn goal_met(&self) -> (Option<bool>, Option<bool>, Option<bool>) {
        let Some(o) = &self.ours else {
            return (None, None, None);
        };
        let b = &self.bird;
        let time = median(&o.est_to_fib_ms) <= median(&b.est_to_fib_ms);
        let per = self.per_100k(o) <= self.per_100k(b);
        let total = median(&o.rss_kib) <= median(&b.rss_kib);
        (Some(time), Some(per), Some(total))
    }

    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "bench bgp: {} IPv4 /32s from a BIRD {} feeder over eBGP, ours (cni-bgp agent) vs BIRD {} as receivers,\n\
             a fresh netns per receiver and round, n={} rounds (medians; times on one wall clock)",
            self.routes, self.bird_version, self.bird_version, self.n
        );
        let _ = writeln!(s, "{:<44} {:>10} {:>10} {:>10}", "", "ours", "BIRD", "ours/BIRD");
        let row = |s: &mut String, what: &str, o: Option<f64>, b: f64| {
            let _ = match o {
                Some(o) => writeln!(s, "{what:<44} {o:>10.1} {b:>10.1} {:>10.2}", ratio(o, b)),
                None => writeln!(s, "{what:<44} {:>10} {b:>10.1} {:>10}", "-", "-"),
            };
        };
        let (o, b) = (self.ours.as_ref(), &self.bird);
        let med = |f: Field| (o.map(|o| median(f(o))), median(f(b)));
        let rows: [(&str, Field); 5] = [
            ("start -> all routes in the kernel FIB, ms", |x| &x.start_to_fib_ms),
            ("Established -> all routes in the FIB, ms", |x| &x.est_to_fib_ms),
            ("session accepted -> Established, ms", |x| &x.accept_to_est_ms),
            ("start -> Established, ms", |x| &x.start_to_est_ms),
            ("CPU time, start -> all in FIB, ms", |x| &x.cpu_ms),
        ];
        for (what, f) in rows {
            let (om, bm) = med(f);
            row(&mut s, what, om, bm);
        }
        let (orss, brss) = med(|x| &x.rss_kib);
        let (ohwm, bhwm) = med(|x| &x.hwm_kib);
        let (oidle, bidle) = med(|x| &x.idle_rss_kib);
        row(&mut s, "RSS after convergence, MiB", orss.map(|k| k / 1024.0), brss / 1024.0);
        row(&mut s, "peak RSS (VmHWM), MiB", ohwm.map(|k| k / 1024.0), bhwm / 1024.0);
        row(&mut s, "RSS idle (ready, no routes), MiB", oidle.map(|k| k / 1024.0), bidle / 1024.0);
        row(&mut s, "RSS growth per 100k routes, MiB", o.map(|o| self.per_100k(o)), self.per_100k(b));
        match &self.mesh {
            Some(m) => {
                let what = format!("mesh: node {} joins {}, ms", m.hosts, m.hosts - 1);
                let om = (!m.ours_ms.is_empty()).then(|| median(&m.ours_ms));
                row(&mut s, &what, om, median(&m.bird_ms));
                let _ = writeln!(
                    s,
                    "  (from the joiner's start until every other node has its /26 block in its kernel FIB)"
                );
            }
            None => {
                let _ = writeln!(s, "{:<44} {}", "mesh join", self.mesh_note.as_deref().unwrap_or("not measured"));
            }
        }
        let (time, per, total) = self.goal_met();
        let _ = writeln!(
            s,
            "goal, at most BIRD's: time (Established -> all in FIB) {}; memory per 100k routes {}; total RSS {}",
            word(time),
            word(per),
            word(total)
        );
        s
    }

    pub fn to_json(&self) -> Value {
        let side = |x: &Side| {
            json!({
                "start_to_fib_ms": x.start_to_fib_ms, "established_to_fib_ms": x.est_to_fib_ms,
                "accepted_to_established_ms": x.accept_to_est_ms, "start_to_established_ms": x.start_to_est_ms,
                "cpu_ms": x.cpu_ms, "median_cpu_ms": median(&x.cpu_ms),
                "rss_kib": x.rss_kib, "hwm_kib": x.hwm_kib, "idle_rss_kib": x.idle_rss_kib,
                "median_start_to_fib_ms": median(&x.start_to_fib_ms),
                "median_established_to_fib_ms": median(&x.est_to_fib_ms),
                "median_accepted_to_established_ms": median(&x.accept_to_est_ms),
                "median_rss_growth_mib_per_100k": self.per_100k(x),
            })
        };
        let b = &self.bird;
        let ratios = self.ours.as_ref().map(|o| {
            json!({
                "start_to_fib": ratio(median(&o.start_to_fib_ms), median(&b.start_to_fib_ms)),
                "established_to_fib": ratio(median(&o.est_to_fib_ms), median(&b.est_to_fib_ms)),
                "accepted_to_established": ratio(median(&o.accept_to_est_ms), median(&b.accept_to_est_ms)),
                "cpu": ratio(median(&o.cpu_ms), median(&b.cpu_ms)),
                "rss": ratio(median(&o.rss_kib), median(&b.rss_kib)),
                "rss_growth_per_100k": ratio(self.per_100k(o), self.per_100k(b)),
            })
        });
        let (time, per, total) = self.goal_met();
        json!({
            "routes": self.routes, "rounds": self.n, "bird_version": self.bird_version,
            "ours": self.ours.as_ref().map(side), "bird": side(b), "ratios": ratios,
            "mesh": self.mesh.as_ref().map(|m| json!({
                "hosts": m.hosts, "ours_ms": m.ours_ms, "bird_ms": m.bird_ms,
                "ratio": (!m.ours_ms.is_empty()).then(|| ratio(median(&m.ours_ms), median(&m.bird_ms))),
            })),
            "mesh_note": self.mesh_note,
            "goal_time_met": time, "goal_memory_per_100k_met": per, "goal_total_rss_met": total,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn triestat_main_prefixes_parses_the_main_table() {
        let s = "Basic info: size of leaf: 48 bytes, size of tnode: 40 bytes.\nMain:\n\tAver depth:     3.00\n\t\
                 Leaves:         100006\n\tPrefixes:       100007\nLocal:\n\tPrefixes:       5\n";
        assert_eq!(triestat_main_prefixes(s), Some(100_007));
        assert_eq!(triestat_main_prefixes("Local:\n\tPrefixes: 5\n"), None);
    }

    #[test]
    fn feeder_log_gives_the_session_of_one_peer() {
        let log = "\
2026-12-07 04:59:23.275900 <TRACE> recv: Started
2026-12-07 04:59:27.801536 <TRACE> recv: Incoming connection from 192.168.77.2 (port 50321) accepted
2026-12-07 04:59:27.801536 <TRACE> rcv1: Initializing
2026-12-07 04:59:27.801567 <TRACE> rcv1: Started
2026-12-07 04:59:28.000000 <TRACE> recv: Incoming connection from 192.168.77.3 (port 50000) accepted
2026-12-07 04:59:28.000001 <TRACE> rcv2: Initializing
2026-12-07 04:59:28.500000 <TRACE> rcv2: BGP session established
2026-12-07 04:59:27.901667 <TRACE> rcv1: BGP session established
";
        let (a, e) = session_times(log, "192.168.77.2".parse().unwrap()).unwrap();
        assert!((e - a - 0.100131).abs() < 1e-6, "{}", e - a);
        let (a, e) = session_times(log, "192.168.77.3".parse().unwrap()).unwrap();
        assert!((e - a - 0.5).abs() < 1e-6);
        assert!(session_times(log, "192.168.77.4".parse().unwrap()).is_none());
        // 2026-12-07 is day 20794 since the epoch.
        assert_eq!(log_time("2026-12-07 00:00:00.5 x"), Some(20_794.0 * 86400.0 + 0.5));
        assert_eq!(log_time("1970-01-01 00:00:01.000000 x"), Some(1.0));
    }
}
