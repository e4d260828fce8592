//! Real BGP peers for tests: BIRD 2, GoBGP 3 and FRR 8 (the Debian packages), each run inside a
//! network namespace the test owns (`ip netns exec`), with a configuration this module writes.
//!
//! Every instance has its own directory (`/tmp/cft-<pid>-bgp-<kind>-<n>`), control socket (BIRD),
//! API port (GoBGP) or pathspace (FRR `-N`), so several daemons of one kind run at once. The
//! daemons run in the foreground as children of the test: [`Drop`] stops them (SIGTERM, then
//! SIGKILL after 5 s) and removes their files, even when the test fails; what a killed run
//! left behind is reclaimed by the next start ([`sweep_dead_daemons`]).
//!
//! What each fixture reads back is the daemon's own structured output where it has one:
//! GoBGP `gobgp -j global rib` / `gobgp -j neighbor`, FRR `show bgp … json` /
//! `show bgp neighbors … json`. BIRD has no JSON: [`Bird::routes`] parses
//! `birdc show route all` (only the prefix, the primary marker `*` and the `BGP.next_hop` or
//! `via` line; see [`parse_birdc_routes`]) and [`Bird::wait_established`] the state column of
//! `birdc show protocols`.
//!
//! Kernel side: BIRD exports what it learned over BGP into the namespace's main table (its
//! `kernel` protocols, `proto bird`); FRR's zebra installs its best BGP routes there
//! (`proto bgp`); GoBGP runs with zebra off, so it installs nothing in the kernel (tests check
//! its RIB instead). [`kernel_route`] reads a namespace's table.
//!
//! Session defaults are the daemons' own except where a lab must converge fast: connect retry
//! 2 s, BIRD's error wait 1–5 s (60–300 s by default), GoBGP's idle hold after reset 1 s, FRR's
//! advertisement interval 0. Hold times stay the daemons' defaults (BIRD 240 s, GoBGP 90 s,
//! FRR 180 s) unless [`PeerConfig::hold_time`] sets one. Graceful restart is off unless
//! [`PeerConfig::graceful_restart`] sets a restart time: a daemon stopped by a test then looks
//! like a plain session loss to its peers, who withdraw its routes at once.

use std::fmt::Write as _;
use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use serde_json::Value;

use crate::util::{next_id, pid, pid_alive, Context, PREFIX, R, SYS_PATH};
use crate::{bail, ensure};

/// One BGP neighbor of a daemon.
#[derive(Debug, Clone)]
pub struct Neighbor {
    pub address: IpAddr,
    pub asn: u32,
    /// The neighbor's TCP port (179 unless a test runs its speaker elsewhere).
    pub port: u16,
    /// Only accept connections from it, never connect.
    pub passive: bool,
}

impl Neighbor {
    pub fn new(address: IpAddr, asn: u32) -> Neighbor {
        Neighbor { address, asn, port: 179, passive: false }
    }
    pub fn port(mut self, port: u16) -> Neighbor {
        self.port = port;
        self
    }
    pub fn passive(mut self) -> Neighbor {
        self.passive = true;
        self
    }
}

/// What a fixture writes into the daemon's configuration. The session to an IPv4 neighbor
/// carries IPv4 unicast, the one to an IPv6 neighbor IPv6 unicast (MP_REACH).
#[derive(Debug, Clone)]
pub struct PeerConfig {
    pub router_id: Ipv4Addr,
    pub asn: u32,
    /// TCP port the daemon listens on for BGP (179).
    pub listen_port: u16,
    pub neighbors: Vec<Neighbor>,
    /// Prefixes the daemon originates from the start.
    pub routes: Vec<IpNetwork>,
    /// Hold time the daemon proposes; None keeps its default (BIRD 240, GoBGP 90, FRR 180).
    pub hold_time: Option<u16>,
    /// Advertise graceful restart with this restart time (s); None: off.
    pub graceful_restart: Option<u16>,
}

impl PeerConfig {
    pub fn new(router_id: Ipv4Addr, asn: u32) -> PeerConfig {
        PeerConfig {
            router_id,
            asn,
            listen_port: 179,
            neighbors: Vec::new(),
            routes: Vec::new(),
            hold_time: None,
            graceful_restart: None,
        }
    }
    pub fn neighbor(mut self, n: Neighbor) -> PeerConfig {
        self.neighbors.push(n);
        self
    }
    pub fn route(mut self, prefix: IpNetwork) -> PeerConfig {
        self.routes.push(prefix);
        self
    }
}

/// A route as the daemon reports it: the prefix and the next hop of its best path (None for a
/// route the daemon originates itself).
pub type Route = (IpNetwork, Option<IpAddr>);

/// What the three fixtures have in common, so one test body can run against each daemon.
pub trait BgpDaemon {
    /// "bird", "gobgp" or "frr".
    fn kind(&self) -> &'static str;
    /// The namespace the daemon runs in.
    fn netns(&self) -> &str;
    /// Whether the session with `peer` is Established now.
    fn established(&self, peer: IpAddr) -> R<bool>;
    /// The hold time negotiated on the Established session with `peer` (s).
    fn hold_time(&self, peer: IpAddr) -> R<u16>;
    /// The best route of every prefix in the daemon's RIB, both families.
    fn routes(&self) -> R<Vec<Route>>;
    /// Originates `prefix` at run time.
    fn announce(&mut self, prefix: IpNetwork) -> R<()>;
    /// Stops originating `prefix`.
    fn withdraw(&mut self, prefix: IpNetwork) -> R<()>;
    /// The tail of the daemon's log, for failure messages.
    fn log_tail(&self) -> String;
    /// Kills the daemon with SIGKILL, as a crash would: no NOTIFICATION, its sockets are
    /// closed by the kernel (the instance's files stay until drop).
    fn kill(&mut self);

    /// Polls until the session with `peer` is Established (every 200 ms, at most `timeout`).
    fn wait_established(&self, peer: IpAddr, timeout: Duration) -> R<()> {
        let kind = self.kind();
        poll(timeout, &format!("{kind}: session with {peer} Established"), || self.established(peer))
            .map_err(|e| format!("{e}\n{kind} log:\n{}", self.log_tail()))
    }

    /// Polls until the daemon's RIB has `prefix` (from `via` when given); returns its next hop.
    fn wait_route(&self, prefix: IpNetwork, via: Option<IpAddr>, timeout: Duration) -> R<Option<IpAddr>> {
        let mut found = None;
        let what = format!("{}: route {prefix}{}", self.kind(), via.map(|v| format!(" via {v}")).unwrap_or_default());
        poll(timeout, &what, || {
            let r = self.routes()?.into_iter().find(|(p, nh)| *p == prefix && (via.is_none() || *nh == via));
            found = r.map(|r| r.1);
            Ok(r.is_some())
        })?;
        Ok(found.flatten())
    }

    /// Polls until the daemon's RIB no longer has `prefix`.
    fn wait_no_route(&self, prefix: IpNetwork, timeout: Duration) -> R<()> {
        poll(timeout, &format!("{}: route {prefix} gone", self.kind()), || {
            Ok(!self.routes()?.iter().any(|(p, _)| *p == prefix))
        })
    }
}

/// Which daemon: for tests that run one body against each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Bird,
    Gobgp,
    Frr,
}

impl Kind {
    pub const ALL: [Kind; 3] = [Kind::Bird, Kind::Gobgp, Kind::Frr];

    /// Starts this daemon in `ns` with `cfg`.
    pub fn start(self, ns: &str, cfg: &PeerConfig) -> R<Box<dyn BgpDaemon>> {
        Ok(match self {
            Kind::Bird => Box::new(Bird::start(ns, cfg)?),
            Kind::Gobgp => Box::new(Gobgp::start(ns, cfg)?),
            Kind::Frr => Box::new(Frr::start(ns, cfg)?),
        })
    }

    /// The hold time it proposes unless told otherwise (s).
    pub fn default_hold_time(self) -> u16 {
        match self {
            Kind::Bird => 240,
            Kind::Gobgp => 90,
            Kind::Frr => 180,
        }
    }

    /// The protocol its kernel routes carry in `ip route` (None: GoBGP installs none).
    pub fn kernel_protocol(self) -> Option<&'static str> {
        match self {
            Kind::Bird => Some("bird"),
            Kind::Gobgp => None,
            Kind::Frr => Some("bgp"),
        }
    }
}

/// Calls `f` every 200 ms until it returns true or `timeout` has passed; an error from `f`
/// is kept and reported if the wait runs out.
pub fn poll(timeout: Duration, what: &str, mut f: impl FnMut() -> R<bool>) -> R<()> {
    let start = Instant::now();
    let mut last_err = String::new();
    loop {
        match f() {
            Ok(true) => return Ok(()),
            Ok(false) => {}
            Err(e) => last_err = e,
        }
        if start.elapsed() >= timeout {
            let why = if last_err.is_empty() { String::new() } else { format!(" (last error: {last_err})") };
            bail!("timed out after {:.1} s waiting for {what}{why}", timeout.as_secs_f64());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// A route in a namespace's kernel table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KernelRoute {
    pub gateway: Option<IpAddr>,
    /// `ip route`'s protocol name or number: "bird", "bgp", "76", "static", …
    pub protocol: String,
    /// "unicast", "blackhole", …
    pub kind: String,
}

/// The main-table route for exactly `prefix` in namespace `ns`, if any (`ip -j route show exact`).
pub fn kernel_route(ns: &str, prefix: IpNetwork) -> R<Option<KernelRoute>> {
    let fam = if prefix.is_ipv4() { "-4" } else { "-6" };
    let p = prefix.to_string();
    let out = crate::util::ip(&["-n", ns, fam, "-j", "route", "show", "table", "main", "exact", &p])?;
    let v: Value = serde_json::from_str(if out.trim().is_empty() { "[]" } else { &out }).ctx("parse ip -j route")?;
    let Some(r) = v.as_array().and_then(|a| a.first()) else { return Ok(None) };
    let gateway = r["gateway"].as_str().and_then(|g| g.parse().ok()).or_else(|| {
        // A multipath route: the first hop.
        r["nexthops"].as_array()?.first()?["gateway"].as_str()?.parse().ok()
    });
    Ok(Some(KernelRoute {
        gateway,
        protocol: r["protocol"].as_str().unwrap_or("boot").to_string(),
        kind: r["type"].as_str().unwrap_or("unicast").to_string(),
    }))
}

/// Polls until namespace `ns` has a kernel route for `prefix` (via `via` when given).
pub fn wait_kernel_route(ns: &str, prefix: IpNetwork, via: Option<IpAddr>, timeout: Duration) -> R<KernelRoute> {
    let mut found = None;
    let what = format!("kernel route {prefix}{} in netns {ns}", via.map(|v| format!(" via {v}")).unwrap_or_default());
    poll(timeout, &what, || {
        found = kernel_route(ns, prefix)?.filter(|r| via.is_none() || r.gateway == via);
        Ok(found.is_some())
    })?;
    found.ok_or_else(|| format!("{what}: vanished"))
}

/// Polls until namespace `ns` has no kernel route for `prefix`.
pub fn wait_no_kernel_route(ns: &str, prefix: IpNetwork, timeout: Duration) -> R<()> {
    poll(timeout, &format!("kernel route {prefix} gone from netns {ns}"), || Ok(kernel_route(ns, prefix)?.is_none()))
}

/// Checks that the three daemons' binaries are installed (a missing one fails the test: no
/// silent skip).
pub fn require_daemons() -> R<()> {
    for bin in ["/usr/sbin/bird", "/usr/sbin/birdc", "/usr/bin/gobgpd", "/usr/bin/gobgp", FRR_BGPD, FRR_ZEBRA] {
        let found = Path::new(bin).exists()
            || Path::new(bin).file_name().is_some_and(|n| crate::util::have_tool(&n.to_string_lossy()));
        ensure!(found, "{bin} is missing: apt-get install bird2 gobgpd frr");
    }
    ensure!(crate::util::have_tool("vtysh"), "vtysh is missing: apt-get install frr");
    Ok(())
}

const FRR_BGPD: &str = "/usr/lib/frr/bgpd";
const FRR_ZEBRA: &str = "/usr/lib/frr/zebra";

/// Reclaims what runs that died left behind: their daemons (killed through the lab's owner
/// marker), work dirs and FRR pathspaces. Called by every fixture's start.
pub fn sweep_dead_daemons() -> Vec<String> {
    let mut removed = crate::lab::sweep_dead_labs();
    if let Ok(rd) = fs::read_dir("/var/run/frr") {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let owner: Option<u32> =
                name.strip_prefix("cft-").and_then(|r| r.split('-').next()).and_then(|p| p.parse().ok());
            if owner.is_some_and(|o| o != pid() && !pid_alive(o)) && fs::remove_dir_all(e.path()).is_ok() {
                removed.push(format!("FRR pathspace {name}"));
            }
        }
    }
    removed
}

/// A per-instance directory, removed on drop.
#[derive(Debug)]
struct WorkDir {
    path: PathBuf,
}

impl WorkDir {
    fn new(kind: &str) -> R<WorkDir> {
        // `cft-<pid>-…` in the temp dir: `net::sweep_dead_runs` removes it if this run dies.
        let path = std::env::temp_dir().join(format!("cft-{}-bgp-{kind}-{}", pid(), next_id()));
        let _ = fs::remove_dir_all(&path);
        fs::create_dir_all(&path).ctx(format!("create {}", path.display()))?;
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(&path, fs::Permissions::from_mode(0o755)).ctx("chmod work dir")?;
        Ok(WorkDir { path })
    }
    fn file(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
    fn s(&self, name: &str) -> String {
        self.file(name).to_string_lossy().into_owned()
    }
}

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Spawns `prog args` inside `ns` (`ip netns exec` execs the program itself, so the child's
/// pid is the daemon's), stdout and stderr into `log`.
fn spawn_in(ns: &str, prog: &str, args: &[&str], log: &Path) -> R<Child> {
    let f = fs::File::create(log).ctx(format!("create {}", log.display()))?;
    let f2 = f.try_clone().ctx("dup log")?;
    Command::new("ip")
        .args(["netns", "exec", ns, prog])
        .args(args)
        .env("PATH", SYS_PATH)
        // The lab's owner marker: `lab::sweep_dead_labs` kills the daemon if this run dies.
        .env(crate::lab::LAB_ENV, format!("{PREFIX}-{}-bgp", pid()))
        .stdin(Stdio::null())
        .stdout(f)
        .stderr(f2)
        .spawn()
        .ctx(format!("spawn {prog} in netns {ns}"))
}

/// SIGTERM, bounded wait (5 s), then SIGKILL.
fn stop_child(c: &mut Child) {
    use nix::sys::signal::{kill, Signal};
    use nix::unistd::Pid;
    if let Ok(Some(_)) = c.try_wait() {
        return;
    }
    let _ = kill(Pid::from_raw(c.id() as i32), Signal::SIGTERM);
    let start = Instant::now();
    while start.elapsed() < Duration::from_secs(5) {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// SIGKILL and reap.
fn kill_child(c: &mut Child) {
    let _ = c.kill();
    let _ = c.wait();
}

/// Fails if the child has exited (with its log), used while waiting for readiness.
fn check_alive(c: &mut Child, what: &str, log: &Path) -> R<()> {
    if let Ok(Some(st)) = c.try_wait() {
        bail!("{what} exited at start ({st}): {}", tail(log));
    }
    Ok(())
}

fn tail(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(30)..].join("\n")
}

fn run_in(ns: &str, prog: &str, args: &[&str]) -> R<String> {
    let mut a = vec!["netns", "exec", ns, prog];
    a.extend_from_slice(args);
    crate::util::run("ip", &a)
}

// ---------------------------------------------------------------------------------------------
// BIRD

/// BIRD 2 (`bird -f`) in a namespace: one `protocol bgp nN` per neighbor, static protocols for
/// the originated routes (rewritten and `birdc configure`d by announce/withdraw), kernel
/// protocols exporting BGP-learned routes into the namespace's main table.
#[derive(Debug)]
pub struct Bird {
    ns: String,
    cfg: PeerConfig,
    routes: Vec<IpNetwork>,
    child: Child,
    dir: WorkDir,
}

impl Bird {
    pub fn start(ns: &str, cfg: &PeerConfig) -> R<Bird> {
        Bird::start_with(ns, cfg, false)
    }

    /// Starts BIRD as a gracefully restarting speaker (`bird -R`: restart state and the
    /// forwarding-preserved bit in its OPENs, routes kept until its peers' End-of-RIB). Needs
    /// [`PeerConfig::graceful_restart`].
    pub fn start_recovering(ns: &str, cfg: &PeerConfig) -> R<Bird> {
        ensure!(cfg.graceful_restart.is_some(), "bird -R needs graceful restart in the config");
        Bird::start_with(ns, cfg, true)
    }

    fn start_with(ns: &str, cfg: &PeerConfig, recovery: bool) -> R<Bird> {
        sweep_dead_daemons();
        let dir = WorkDir::new("bird")?;
        let conf = dir.file("bird.conf");
        fs::write(&conf, bird_config(cfg, &cfg.routes)).ctx("write bird.conf")?;
        let (c, s, p, log) = (dir.s("bird.conf"), dir.s("bird.ctl"), dir.s("bird.pid"), dir.file("bird.log"));
        let mut args = vec!["-f", "-c", &c, "-s", &s, "-P", &p];
        if recovery {
            args.push("-R");
        }
        let child = spawn_in(ns, "bird", &args, &log)?;
        let mut b = Bird { ns: ns.to_string(), cfg: cfg.clone(), routes: cfg.routes.clone(), child, dir };
        let log = b.dir.file("bird.log");
        let mut child_err = Ok(());
        poll(Duration::from_secs(20), "BIRD's control socket", || {
            if let Err(e) = check_alive(&mut b.child, "bird", &log) {
                child_err = Err(e);
                return Ok(true);
            }
            Ok(b.birdc(&["show", "status"]).is_ok_and(|o| o.contains("Daemon is up")))
        })?;
        child_err?;
        Ok(b)
    }

    /// `birdc -s SOCK ARGS` inside the namespace.
    pub fn birdc(&self, args: &[&str]) -> R<String> {
        let sock = self.dir.s("bird.ctl");
        let mut a = vec!["-s", sock.as_str()];
        a.extend_from_slice(args);
        run_in(&self.ns, "birdc", &a)
    }

    fn proto_name(&self, peer: IpAddr) -> R<String> {
        match self.cfg.neighbors.iter().position(|n| n.address == peer) {
            Some(i) => Ok(format!("n{i}")),
            None => bail!("bird: {peer} is not a configured neighbor"),
        }
    }

    /// Rewrites the static protocols and reloads the configuration.
    fn reconfigure(&mut self) -> R<()> {
        fs::write(self.dir.file("bird.conf"), bird_config(&self.cfg, &self.routes)).ctx("write bird.conf")?;
        let out = self.birdc(&["configure"])?;
        ensure!(out.contains("Reconfigured") || out.contains("Reconfiguration in progress"), "birdc configure: {out}");
        Ok(())
    }
}

fn bird_config(cfg: &PeerConfig, routes: &[IpNetwork]) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "router id {};", cfg.router_id);
    s.push_str("protocol device { scan time 2; }\n");
    for (fam, v4) in [("ipv4", true), ("ipv6", false)] {
        let _ = writeln!(s, "protocol kernel k{fam} {{ {fam} {{ import none; export where source = RTS_BGP; }}; }}");
        let _ = write!(s, "protocol static s{fam} {{ {fam};");
        for r in routes.iter().filter(|r| r.is_ipv4() == v4) {
            let _ = write!(s, " route {r} blackhole;");
        }
        s.push_str(" }\n");
    }
    for (i, n) in cfg.neighbors.iter().enumerate() {
        let fam = if n.address.is_ipv4() { "ipv4" } else { "ipv6" };
        let _ = writeln!(s, "protocol bgp n{i} {{");
        let _ = writeln!(s, "  local as {}; neighbor {} port {} as {};", cfg.asn, n.address, n.port, n.asn);
        if cfg.listen_port != 179 {
            let _ = writeln!(s, "  local port {};", cfg.listen_port);
        }
        if n.passive {
            s.push_str("  passive on;\n");
        }
        s.push_str("  connect retry time 2; connect delay time 1; error wait time 1, 5;\n");
        if let Some(h) = cfg.hold_time {
            let _ = writeln!(s, "  hold time {h};");
        }
        match cfg.graceful_restart {
            Some(t) => {
                let _ = writeln!(s, "  graceful restart on; graceful restart time {t};");
            }
            None => s.push_str("  graceful restart off;\n"),
        }
        // The neighbor is on a shared link (for iBGP too, which BIRD otherwise treats as
        // multihop and resolves through an IGP table): next hops are used directly.
        s.push_str("  direct;\n");
        let _ = writeln!(s, "  {fam} {{ import all; export all; }};");
        s.push_str("}\n");
    }
    s
}

/// Parses `birdc show route all`: for each primary route (`*`), the prefix and its next hop
/// (`BGP.next_hop`'s first address, else the `via` address, else None). Lines that are neither
/// a route header, a `via` line nor `BGP.next_hop` are ignored; BIRD has no structured output.
pub fn parse_birdc_routes(text: &str) -> Vec<Route> {
    struct Entry {
        prefix: IpNetwork,
        primary: bool,
        via: Option<IpAddr>,
        bgp_nh: Option<IpAddr>,
    }
    let mut entries: Vec<Entry> = Vec::new();
    let mut prefix: Option<IpNetwork> = None;
    for line in text.lines() {
        let toks: Vec<&str> = line.split_whitespace().collect();
        if toks.is_empty() || line.starts_with("BIRD ") || line.starts_with("Table ") {
            continue;
        }
        let starts_indented = line.starts_with(' ') || line.starts_with('\t');
        // A route header: "PREFIX TYPE [proto time] * (pref) …" or, for another route of the
        // same prefix, the same without the prefix.
        let header_at = if !starts_indented {
            match toks[0].parse::<IpNetwork>() {
                Ok(p) => {
                    prefix = Some(p);
                    Some(1)
                }
                Err(_) => None,
            }
        } else if toks.len() > 1 && toks[0].chars().all(|c| c.is_ascii_alphabetic()) && toks[1].starts_with('[') {
            Some(0)
        } else {
            None
        };
        if let Some(i) = header_at {
            if let Some(p) = prefix {
                entries.push(Entry { prefix: p, primary: toks[i..].contains(&"*"), via: None, bgp_nh: None });
            }
            continue;
        }
        let Some(e) = entries.last_mut() else { continue };
        if toks[0] == "via" && toks.len() > 1 && e.via.is_none() {
            e.via = toks[1].parse().ok();
        } else if toks[0] == "BGP.next_hop:" && toks.len() > 1 {
            e.bgp_nh = toks[1].parse().ok();
        }
    }
    entries.into_iter().filter(|e| e.primary).map(|e| (e.prefix, e.bgp_nh.or(e.via))).collect()
}

impl BgpDaemon for Bird {
    fn kind(&self) -> &'static str {
        "bird"
    }
    fn netns(&self) -> &str {
        &self.ns
    }
    fn established(&self, peer: IpAddr) -> R<bool> {
        let name = self.proto_name(peer)?;
        let out = self.birdc(&["show", "protocols", &name])?;
        // "n0  BGP  ---  up  12:00:00.000  Established"
        Ok(out.lines().any(|l| {
            let t: Vec<&str> = l.split_whitespace().collect();
            t.first() == Some(&name.as_str()) && t.contains(&"up") && t.contains(&"Established")
        }))
    }
    fn hold_time(&self, peer: IpAddr) -> R<u16> {
        let name = self.proto_name(peer)?;
        let out = self.birdc(&["show", "protocols", "all", &name])?;
        // "    Hold timer:       77.425/90": time left / negotiated hold time.
        out.lines()
            .find_map(|l| l.trim().strip_prefix("Hold timer:")?.trim().split('/').nth(1)?.trim().parse().ok())
            .ok_or_else(|| format!("bird: no hold timer for {peer} in: {out}"))
    }
    fn routes(&self) -> R<Vec<Route>> {
        Ok(parse_birdc_routes(&self.birdc(&["show", "route", "all"])?))
    }
    fn announce(&mut self, prefix: IpNetwork) -> R<()> {
        if !self.routes.contains(&prefix) {
            self.routes.push(prefix);
        }
        self.reconfigure()
    }
    fn withdraw(&mut self, prefix: IpNetwork) -> R<()> {
        self.routes.retain(|p| *p != prefix);
        self.reconfigure()
    }
    fn log_tail(&self) -> String {
        tail(&self.dir.file("bird.log"))
    }
    fn kill(&mut self) {
        kill_child(&mut self.child);
    }
}

impl Drop for Bird {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

// ---------------------------------------------------------------------------------------------
// GoBGP

/// GoBGP 3 (`gobgpd`) in a namespace with its gRPC API on 127.0.0.1:`api_port` there; routes
/// are added and deleted with `gobgp global rib add|del`. Zebra is off: GoBGP installs nothing
/// in the kernel.
#[derive(Debug)]
pub struct Gobgp {
    ns: String,
    cfg: PeerConfig,
    api_port: u16,
    child: Child,
    dir: WorkDir,
}

impl Gobgp {
    pub fn start(ns: &str, cfg: &PeerConfig) -> R<Gobgp> {
        sweep_dead_daemons();
        let dir = WorkDir::new("gobgp")?;
        fs::write(dir.file("gobgpd.toml"), gobgp_config(cfg)).ctx("write gobgpd.toml")?;
        // The API listens inside the namespace; the port only has to differ between GoBGPs
        // sharing one namespace.
        let api_port = 40000 + ((pid() * 31 + next_id() * 7) % 20000) as u16;
        let api = format!("127.0.0.1:{api_port}");
        let conf = dir.s("gobgpd.toml");
        let child = spawn_in(
            ns,
            "gobgpd",
            &["-f", &conf, "-t", "toml", "--api-hosts", &api, "--pprof-disable"],
            &dir.file("gobgpd.log"),
        )?;
        let mut g = Gobgp { ns: ns.to_string(), cfg: cfg.clone(), api_port, child, dir };
        let log = g.dir.file("gobgpd.log");
        let mut child_err = Ok(());
        poll(Duration::from_secs(20), "GoBGP's API", || {
            if let Err(e) = check_alive(&mut g.child, "gobgpd", &log) {
                child_err = Err(e);
                return Ok(true);
            }
            // The config file's neighbors are added shortly after the API is up.
            Ok(g.gobgp(&["-j", "neighbor"]).is_ok_and(|o| {
                serde_json::from_str::<Value>(&o)
                    .ok()
                    .and_then(|v| v.as_array().map(|a| a.len()))
                    .is_some_and(|n| n == g.cfg.neighbors.len())
            }))
        })?;
        child_err?;
        for r in cfg.routes.clone() {
            g.announce(r)?;
        }
        Ok(g)
    }

    /// `gobgp -u 127.0.0.1 -p PORT ARGS` inside the namespace.
    pub fn gobgp(&self, args: &[&str]) -> R<String> {
        let port = self.api_port.to_string();
        let mut a = vec!["-u", "127.0.0.1", "-p", port.as_str()];
        a.extend_from_slice(args);
        run_in(&self.ns, "gobgp", &a)
    }
}

fn gobgp_config(cfg: &PeerConfig) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "[global.config]\n  as = {}\n  router-id = \"{}\"\n  port = {}",
        cfg.asn, cfg.router_id, cfg.listen_port
    );
    for n in &cfg.neighbors {
        let af = if n.address.is_ipv4() { "ipv4-unicast" } else { "ipv6-unicast" };
        let _ = writeln!(
            s,
            "[[neighbors]]\n  [neighbors.config]\n    neighbor-address = \"{}\"\n    peer-as = {}",
            n.address, n.asn
        );
        let _ = writeln!(
            s,
            "  [neighbors.transport.config]\n    remote-port = {}\n    passive-mode = {}",
            n.port, n.passive
        );
        let _ = writeln!(s, "  [neighbors.timers.config]\n    connect-retry = 2\n    idle-hold-time-after-reset = 1");
        if let Some(h) = cfg.hold_time {
            let _ = writeln!(s, "    hold-time = {h}\n    keepalive-interval = {}", (h / 3).max(1));
        }
        if let Some(t) = cfg.graceful_restart {
            let _ = writeln!(s, "  [neighbors.graceful-restart.config]\n    enabled = true\n    restart-time = {t}");
        }
        let _ =
            writeln!(s, "  [[neighbors.afi-safis]]\n    [neighbors.afi-safis.config]\n      afi-safi-name = \"{af}\"");
        if cfg.graceful_restart.is_some() {
            s.push_str("    [neighbors.afi-safis.mp-graceful-restart.config]\n      enabled = true\n");
        }
    }
    s
}

/// Parses `gobgp -j global rib [-a ipv6]`: `{"PREFIX": [path, …]}`, each path with `best` and
/// attributes, the next hop in NEXT_HOP (type 3) or MP_REACH_NLRI (type 14).
pub fn parse_gobgp_rib(text: &str) -> R<Vec<Route>> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_str(t).ctx("parse gobgp -j global rib")?;
    let Some(m) = v.as_object() else { bail!("gobgp -j global rib: not an object: {}", crate::util::clip(t, 200)) };
    let mut out = Vec::new();
    for (prefix, paths) in m {
        let p: IpNetwork = prefix.parse().ctx(format!("gobgp prefix {prefix}"))?;
        let paths = paths.as_array().cloned().unwrap_or_default();
        let Some(best) = paths.iter().find(|x| x["best"] == Value::Bool(true)).or(paths.first()) else { continue };
        let nh = best["attrs"].as_array().and_then(|attrs| {
            attrs
                .iter()
                .find(|a| a["type"] == 3 || a["type"] == 14)
                .and_then(|a| a["nexthop"].as_str())
                .and_then(|s| s.parse::<IpAddr>().ok())
        });
        out.push((p, nh.filter(|a| !a.is_unspecified())));
    }
    Ok(out)
}

impl BgpDaemon for Gobgp {
    fn kind(&self) -> &'static str {
        "gobgp"
    }
    fn netns(&self) -> &str {
        &self.ns
    }
    fn established(&self, peer: IpAddr) -> R<bool> {
        let out = self.gobgp(&["-j", "neighbor", &peer.to_string()])?;
        let v: Value = serde_json::from_str(&out).ctx("parse gobgp -j neighbor")?;
        let st = &v["state"]["session_state"];
        // The API's enum: 6 = ESTABLISHED (as a number, or its name in other builds).
        Ok(st == 6 || st.as_str().is_some_and(|s| s.eq_ignore_ascii_case("established")))
    }
    fn hold_time(&self, peer: IpAddr) -> R<u16> {
        let out = self.gobgp(&["-j", "neighbor", &peer.to_string()])?;
        let v: Value = serde_json::from_str(&out).ctx("parse gobgp -j neighbor")?;
        v["timers"]["state"]["negotiated_hold_time"]
            .as_u64()
            .map(|h| h as u16)
            .ok_or_else(|| format!("gobgp: no negotiated_hold_time for {peer} in: {}", crate::util::clip(&out, 600)))
    }
    fn routes(&self) -> R<Vec<Route>> {
        let mut r = parse_gobgp_rib(&self.gobgp(&["-j", "global", "rib", "-a", "ipv4"])?)?;
        r.extend(parse_gobgp_rib(&self.gobgp(&["-j", "global", "rib", "-a", "ipv6"])?)?);
        Ok(r)
    }
    fn announce(&mut self, prefix: IpNetwork) -> R<()> {
        let af = if prefix.is_ipv4() { "ipv4" } else { "ipv6" };
        self.gobgp(&["global", "rib", "add", "-a", af, &prefix.to_string()]).map(|_| ())
    }
    fn withdraw(&mut self, prefix: IpNetwork) -> R<()> {
        let af = if prefix.is_ipv4() { "ipv4" } else { "ipv6" };
        self.gobgp(&["global", "rib", "del", "-a", af, &prefix.to_string()]).map(|_| ())
    }
    fn log_tail(&self) -> String {
        tail(&self.dir.file("gobgpd.log"))
    }
    fn kill(&mut self) {
        kill_child(&mut self.child);
    }
}

impl Drop for Gobgp {
    fn drop(&mut self) {
        stop_child(&mut self.child);
    }
}

// ---------------------------------------------------------------------------------------------
// FRR

/// FRR 8 (zebra + bgpd, in the foreground) in a namespace under its own pathspace
/// (`-N cft-…`: sockets in /var/run/frr/cft-…), vty TCP ports off. Routes are announced and
/// withdrawn with `vtysh` `network` statements; zebra installs best BGP routes in the kernel.
#[derive(Debug)]
pub struct Frr {
    ns: String,
    cfg: PeerConfig,
    pathspace: String,
    zebra: Child,
    bgpd: Option<Child>,
    dir: WorkDir,
}

impl Frr {
    pub fn start(ns: &str, cfg: &PeerConfig) -> R<Frr> {
        sweep_dead_daemons();
        let dir = WorkDir::new("frr")?;
        let pathspace = format!("cft-{}-{}", pid(), next_id());
        let run_dir = format!("/var/run/frr/{pathspace}");
        fs::create_dir_all(&run_dir).ctx(format!("create {run_dir}"))?;
        fs::write(dir.file("zebra.conf"), format!("hostname {pathspace}\n")).ctx("write zebra.conf")?;
        fs::write(dir.file("bgpd.conf"), frr_config(cfg)).ctx("write bgpd.conf")?;
        for p in [run_dir.as_str(), &dir.s("")] {
            crate::util::run("chown", &["-R", "frr:frr", p])?;
        }
        let zebra = spawn_in(
            ns,
            FRR_ZEBRA,
            &["-N", &pathspace, "-f", &dir.s("zebra.conf"), "-i", &dir.s("zebra.pid"), "-P", "0"],
            &dir.file("zebra.log"),
        )?;
        let mut f = Frr { ns: ns.to_string(), cfg: cfg.clone(), pathspace, zebra, bgpd: None, dir };
        let zlog = f.dir.file("zebra.log");
        let zserv = PathBuf::from(format!("{run_dir}/zserv.api"));
        let mut child_err = Ok(());
        poll(Duration::from_secs(20), "FRR zebra's zserv socket", || {
            if let Err(e) = check_alive(&mut f.zebra, "zebra", &zlog) {
                child_err = Err(e);
                return Ok(true);
            }
            Ok(zserv.exists())
        })?;
        child_err?;
        let port = cfg.listen_port.to_string();
        let bgpd = spawn_in(
            ns,
            FRR_BGPD,
            &["-N", &f.pathspace, "-f", &f.dir.s("bgpd.conf"), "-i", &f.dir.s("bgpd.pid"), "-P", "0", "-p", &port],
            &f.dir.file("bgpd.log"),
        )?;
        f.bgpd = Some(bgpd);
        let blog = f.dir.file("bgpd.log");
        let mut child_err = Ok(());
        // bgpd originates its networks only once zebra answered its next-hop queries.
        let want = cfg.routes.clone();
        poll(Duration::from_secs(30), "FRR bgpd up with its networks", || {
            if let Some(c) = f.bgpd.as_mut() {
                if let Err(e) = check_alive(c, "bgpd", &blog) {
                    child_err = Err(e);
                    return Ok(true);
                }
            }
            let have = f.routes()?;
            Ok(want.iter().all(|p| have.iter().any(|(q, nh)| q == p && nh.is_none())))
        })?;
        child_err?;
        Ok(f)
    }

    /// `vtysh -N PATHSPACE ARGS` inside the namespace.
    pub fn vtysh(&self, args: &[&str]) -> R<String> {
        let mut a = vec!["-N", self.pathspace.as_str()];
        a.extend_from_slice(args);
        run_in(&self.ns, "vtysh", &a)
    }

    fn network(&self, prefix: IpNetwork, add: bool) -> R<()> {
        let af = if prefix.is_ipv4() { "address-family ipv4 unicast" } else { "address-family ipv6 unicast" };
        let router = format!("router bgp {}", self.cfg.asn);
        let net = format!("{}network {prefix}", if add { "" } else { "no " });
        let out = self.vtysh(&["-c", "configure terminal", "-c", &router, "-c", af, "-c", &net])?;
        ensure!(!out.contains('%'), "vtysh {net}: {out}");
        Ok(())
    }
}

fn frr_config(cfg: &PeerConfig) -> String {
    let mut s = String::from("frr defaults traditional\n");
    let _ = writeln!(s, "router bgp {}", cfg.asn);
    let _ = writeln!(s, " bgp router-id {}", cfg.router_id);
    s.push_str(" no bgp ebgp-requires-policy\n no bgp network import-check\n no bgp default ipv4-unicast\n");
    match cfg.graceful_restart {
        Some(t) => {
            let _ = writeln!(s, " bgp graceful-restart\n bgp graceful-restart restart-time {t}");
        }
        None => s.push_str(" bgp graceful-restart-disable\n"),
    }
    for n in &cfg.neighbors {
        let a = n.address;
        let _ = writeln!(s, " neighbor {a} remote-as {}", n.asn);
        if n.port != 179 {
            let _ = writeln!(s, " neighbor {a} port {}", n.port);
        }
        if n.passive {
            let _ = writeln!(s, " neighbor {a} passive");
        }
        let _ = writeln!(s, " neighbor {a} timers connect 2\n neighbor {a} advertisement-interval 0");
        if let Some(h) = cfg.hold_time {
            let _ = writeln!(s, " neighbor {a} timers {} {h}", (h / 3).max(1));
        }
    }
    for (fam, v4) in [("ipv4", true), ("ipv6", false)] {
        let _ = writeln!(s, " address-family {fam} unicast");
        for r in cfg.routes.iter().filter(|r| r.is_ipv4() == v4) {
            let _ = writeln!(s, "  network {r}");
        }
        for n in cfg.neighbors.iter().filter(|n| n.address.is_ipv4() == v4) {
            let _ = writeln!(s, "  neighbor {} activate", n.address);
        }
        s.push_str(" exit-address-family\n");
    }
    s
}

/// Parses `show bgp ipv4|ipv6 unicast json`: `{"routes": {"PREFIX": [path, …]}}`, each path
/// with `bestpath` and `nexthops[].ip`; a locally originated route (next hop 0.0.0.0 / ::) has
/// None.
pub fn parse_frr_routes(text: &str) -> R<Vec<Route>> {
    let t = text.trim();
    if t.is_empty() {
        return Ok(Vec::new());
    }
    let v: Value = serde_json::from_str(t).ctx("parse vtysh show bgp json")?;
    let mut out = Vec::new();
    let Some(m) = v["routes"].as_object() else { return Ok(out) };
    for (prefix, paths) in m {
        let p: IpNetwork = prefix.parse().ctx(format!("frr prefix {prefix}"))?;
        let paths = paths.as_array().cloned().unwrap_or_default();
        let Some(best) = paths.iter().find(|x| x["bestpath"] == Value::Bool(true)) else { continue };
        let nh = best["nexthops"]
            .as_array()
            .and_then(|a| a.first())
            .and_then(|n| n["ip"].as_str())
            .and_then(|s| s.parse::<IpAddr>().ok())
            .filter(|a| !a.is_unspecified());
        out.push((p, nh));
    }
    Ok(out)
}

impl BgpDaemon for Frr {
    fn kind(&self) -> &'static str {
        "frr"
    }
    fn netns(&self) -> &str {
        &self.ns
    }
    fn established(&self, peer: IpAddr) -> R<bool> {
        let out = self.vtysh(&["-c", &format!("show bgp neighbors {peer} json")])?;
        let v: Value = serde_json::from_str(&out).ctx("parse show bgp neighbors json")?;
        Ok(v[peer.to_string()]["bgpState"] == "Established")
    }
    fn hold_time(&self, peer: IpAddr) -> R<u16> {
        let out = self.vtysh(&["-c", &format!("show bgp neighbors {peer} json")])?;
        let v: Value = serde_json::from_str(&out).ctx("parse show bgp neighbors json")?;
        // The negotiated value while Established (the configured one is bgpTimerConfigured…).
        v[peer.to_string()]["bgpTimerHoldTimeMsecs"]
            .as_u64()
            .map(|ms| (ms / 1000) as u16)
            .ok_or_else(|| format!("frr: no bgpTimerHoldTimeMsecs for {peer} in: {}", crate::util::clip(&out, 600)))
    }
    fn routes(&self) -> R<Vec<Route>> {
        let mut r = parse_frr_routes(&self.vtysh(&["-c", "show bgp ipv4 unicast json"])?)?;
        r.extend(parse_frr_routes(&self.vtysh(&["-c", "show bgp ipv6 unicast json"])?)?);
        Ok(r)
    }
    fn announce(&mut self, prefix: IpNetwork) -> R<()> {
        self.network(prefix, true)
    }
    fn withdraw(&mut self, prefix: IpNetwork) -> R<()> {
        self.network(prefix, false)
    }
    fn log_tail(&self) -> String {
        format!("{}\n{}", tail(&self.dir.file("bgpd.log")), tail(&self.dir.file("zebra.log")))
    }
    fn kill(&mut self) {
        if let Some(c) = self.bgpd.as_mut() {
            kill_child(c);
        }
        kill_child(&mut self.zebra);
    }
}

impl Drop for Frr {
    fn drop(&mut self) {
        if let Some(c) = self.bgpd.as_mut() {
            stop_child(c);
        }
        stop_child(&mut self.zebra);
        let _ = fs::remove_dir_all(format!("/var/run/frr/{}", self.pathspace));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn birdc_route_output_is_parsed_to_primary_routes_and_next_hops() {
        let text = [
            "BIRD 2.0.12 ready.",
            "Table master4:",
            "10.9.0.0/24          blackhole [s4 04:54:29.380] * (200)",
            "\tType: static univ",
            "10.8.0.0/24          unicast [n1 04:55:01.000] * (100) [AS65001i]",
            "\tvia 10.0.0.1 on veth0",
            "\tType: BGP univ",
            "\tBGP.origin: IGP",
            "\tBGP.as_path: 65001",
            "\tBGP.next_hop: 10.0.0.1",
            "                     unicast [n0 04:55:02.000] (100) [AS65002i]",
            "\tvia 10.0.0.3 on veth0",
            "\tBGP.next_hop: 10.0.0.3",
            "",
            "Table master6:",
            "fd00:8::/48          unicast [n2 04:55:01.000] * (100) [AS65001i]",
            "\tvia fe80::1 on veth0",
            "\tBGP.next_hop: fd00::1 fe80::1",
        ]
        .join("\n");
        let r = parse_birdc_routes(&text);
        assert_eq!(
            r,
            vec![
                ("10.9.0.0/24".parse().unwrap(), None),
                ("10.8.0.0/24".parse().unwrap(), Some("10.0.0.1".parse().unwrap())),
                ("fd00:8::/48".parse().unwrap(), Some("fd00::1".parse().unwrap())),
            ]
        );
    }

    #[test]
    fn gobgp_rib_json_is_parsed() {
        let text = r#"{"10.8.0.0/24":[{"nlri":{"prefix":"10.8.0.0/24"},"best":true,"attrs":[{"type":1,"value":2},{"type":3,"nexthop":"0.0.0.0"}]}],
"10.7.0.0/24":[{"best":false,"attrs":[{"type":3,"nexthop":"10.0.0.9"}]},{"best":true,"attrs":[{"type":3,"nexthop":"10.0.0.5"}]}],
"fd00:8::/48":[{"best":true,"attrs":[{"type":14,"nexthop":"fd00::5","afi":2,"safi":1}]}]}"#;
        let mut r = parse_gobgp_rib(text).unwrap();
        r.sort_by_key(|x| x.0.to_string());
        assert_eq!(
            r,
            vec![
                ("10.7.0.0/24".parse().unwrap(), Some("10.0.0.5".parse().unwrap())),
                ("10.8.0.0/24".parse().unwrap(), None),
                ("fd00:8::/48".parse().unwrap(), Some("fd00::5".parse().unwrap())),
            ]
        );
        assert_eq!(parse_gobgp_rib("{}").unwrap(), vec![]);
    }
}
