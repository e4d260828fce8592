//! A throwaway single-node Ceph cluster for tests: one monitor and one
//! in-memory OSD (memstore) with cephx, on a bridge of its own so that
//! guest kernels (the RBD nodes: the host kernel has no `rbd`) reach it at
//! one address. Up in about 6-10 s; gone on drop.
//!
//! - The bridge (a unique `cft…` name) gets `.1` of a /24 claimed through
//!   [`testkit::net::SubnetClaim`]; the monitor listens on `.1:3300` and
//!   speaks msgr2 only, as most clusters do today: the kernel client needs
//!   `ms_mode=prefer-crc` (or `crc`/`secure`) to map from it.
//!   Guests take `.10` and up ([`Ceph::host`]); `/etc/qemu/bridge.conf`
//!   allows QEMU's bridge helper to attach them.
//! - The daemons run in the foreground as our children (kill + wait on drop).
//! - Pool `rbd` exists and is initialised for RBD. [`Ceph::admin_key`] is
//!   `client.admin`'s key, what a CSI secret's `userKey` carries.
//!
//! The monitor's store is a few MB in the temp dir; its refusal to start when
//! the host's disk is over 95% full (`mon data avail crit`) is turned off:
//! a test machine's full disk is not the cluster's business.
//!
//! Several clusters run side by side: each has its own dir, bridge and
//! address, so tests that each start one may run in parallel.

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use testkit::net::SubnetClaim;

use crate::{Error, Result};

/// How long one setup step (a `ceph` or `rbd` command) may take.
pub const STEP_TIMEOUT: Duration = Duration::from_secs(60);

/// How many times [`Ceph::start`] tries before it gives up.
pub const START_ATTEMPTS: usize = 3;

/// The monitor's port (msgr2).
pub const MON_PORT: u16 = 3300;

/// A running single-node cluster.
#[derive(Debug)]
pub struct Ceph {
    dir: PathBuf,
    bridge: String,
    claim: SubnetClaim,
    fsid: String,
    admin_key: String,
    mon: Option<Child>,
    osd: Option<Child>,
    mgr: Option<Child>,
}

impl Ceph {
    /// Creates the bridge, the keys and the monitor's store, starts the
    /// monitor and the OSD and makes pool `rbd`.
    pub fn start() -> Result<Ceph> {
        for tool in ["ceph-mon", "ceph-osd", "ceph", "rbd", "ceph-authtool", "monmaptool"] {
            if !testkit::util::have_tool(tool) {
                return Err(Error::Ceph(format!(
                    "{tool} not found: apt-get install ceph-mon ceph-osd ceph-common (scripts/testbed.sh)"
                )));
            }
        }
        // A start can fail for reasons of the moment (a port, a bridge, a
        // loaded machine): try again with a fresh subnet, bridge and dir, and
        // say every attempt's error (the daemons' stderr included).
        let mut errors = Vec::new();
        for _ in 0..START_ATTEMPTS {
            let claim = SubnetClaim::new().map_err(Error::Ceph)?;
            let bridge = testkit::util::unique_link(testkit::util::next_id());
            let dir = std::env::temp_dir().join(format!("ceph-{}-{}", std::process::id(), bridge));
            let fsid = uuid_v4();
            let mut c = Ceph { dir, bridge, claim, fsid, admin_key: String::new(), mon: None, osd: None, mgr: None };
            match c.setup() {
                Ok(()) => return Ok(c),
                Err(e) => errors.push(e.to_string()), // dropping `c` removes what it made
            }
        }
        Err(Error::Ceph(format!("no cluster after {START_ATTEMPTS} attempts:\n{}", errors.join("\n---\n"))))
    }

    /// The monitor's address (`IP:3300`), as ceph-csi's config.json lists it.
    pub fn mon_addr(&self) -> SocketAddr {
        SocketAddr::from((self.claim.host(1), MON_PORT))
    }

    /// The monitors, as strings (`["IP:3300"]`).
    pub fn monitors(&self) -> Vec<String> {
        vec![self.mon_addr().to_string()]
    }

    /// ceph-csi's `config.json` with this cluster under `cluster_id`.
    pub fn cluster_config_json(&self, cluster_id: &str) -> String {
        serde_json::json!([{ "clusterID": cluster_id, "monitors": self.monitors() }]).to_string()
    }

    /// `client.admin`'s secret key (base64), a CSI secret's `userKey`.
    pub fn admin_key(&self) -> &str {
        &self.admin_key
    }

    /// The cluster's fsid.
    pub fn fsid(&self) -> &str {
        &self.fsid
    }

    /// `ceph.conf` (with the admin keyring), for the `ceph`/`rbd` tools.
    pub fn conf(&self) -> PathBuf {
        self.dir.join("ceph.conf")
    }

    /// The cluster's temp dir.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The bridge guests attach to (`--network bridge=NAME`).
    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// `.n` of the bridge's /24 (`.1` is the host and the monitor; take
    /// `.10` and up for guests).
    pub fn host(&self, n: u8) -> Ipv4Addr {
        self.claim.host(n)
    }

    /// The bridge's prefix length (24).
    pub fn prefix_len(&self) -> u8 {
        self.claim.net.prefix()
    }

    /// Runs `ceph ARGS --format json` as client.admin and parses the output.
    pub fn ceph_json(&self, args: &[&str]) -> Result<serde_json::Value> {
        let mut a: Vec<&str> = args.to_vec();
        a.extend(["--format", "json"]);
        let out = self.tool("ceph", &a)?;
        serde_json::from_slice(&out.stdout)
            .map_err(|e| Error::Ceph(format!("ceph {}: not JSON ({e}): {}", args.join(" "), lossy(&out.stdout))))
    }

    /// Runs `ceph ARGS` as client.admin; fails unless it exits 0.
    pub fn ceph(&self, args: &[&str]) -> Result<String> {
        self.tool("ceph", args).map(|o| lossy(&o.stdout))
    }

    /// Runs `rbd ARGS` as client.admin; fails unless it exits 0.
    pub fn rbd(&self, args: &[&str]) -> Result<String> {
        self.tool("rbd", args).map(|o| lossy(&o.stdout))
    }

    /// Runs `rados ARGS` as client.admin; fails unless it exits 0.
    pub fn rados(&self, args: &[&str]) -> Result<Vec<u8>> {
        self.tool("rados", args).map(|o| o.stdout)
    }

    /// Creates (idempotently) and initialises an RBD pool.
    pub fn create_pool(&self, name: &str) -> Result<()> {
        self.ceph(&["osd", "pool", "create", name, "8"])?;
        self.rbd(&["pool", "init", name])?;
        Ok(())
    }

    /// Creates a cephx user with the given caps (`["mon", "profile rbd",
    /// "osd", "profile rbd"]`) and returns its key.
    pub fn add_user(&self, name: &str, caps: &[&str]) -> Result<String> {
        let entity = format!("client.{name}");
        let mut a = vec!["auth", "get-or-create-key", entity.as_str()];
        a.extend_from_slice(caps);
        let v = self.ceph_json(&a)?;
        v["key"].as_str().map(str::to_string).ok_or_else(|| Error::Ceph(format!("no key for {entity} in {v}")))
    }

    /// Starts a manager (`mgr.x`), which usage statistics need: without
    /// one the monitor's `df` lists no pools (GetCapacity, `pool_stats`).
    /// Not started by [`Ceph::start`] (it costs a few seconds of CPU);
    /// returns once `df` reports pool `rbd`.
    pub fn start_mgr(&mut self) -> Result<()> {
        if self.mgr.is_some() {
            return Ok(());
        }
        if !testkit::util::have_tool("ceph-mgr") {
            return Err(Error::Ceph("ceph-mgr not found: apt-get install ceph-mgr (scripts/testbed.sh)".into()));
        }
        let d = self.dir.clone();
        let data = d.join("mgr");
        std::fs::create_dir_all(&data).map_err(|e| Error::io(format!("create {}", data.display()), e))?;
        let keyring = data.join("keyring").to_string_lossy().into_owned();
        self.ceph(&[
            "auth",
            "get-or-create",
            "mgr.x",
            "mon",
            "allow profile mgr",
            "osd",
            "allow *",
            "mds",
            "allow *",
            "-o",
            &keyring,
        ])?;
        let c = self.conf().to_string_lossy().into_owned();
        let data_s = data.to_string_lossy().into_owned();
        self.mgr = Some(spawn_daemon(
            &self.dir,
            "ceph-mgr",
            &["-f", "-i", "x", "-c", &c, "--mgr-data", &data_s, "--keyring", &keyring],
        )?);
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            let df = self.ceph_json(&["df"])?;
            let has_rbd = df["pools"].as_array().is_some_and(|ps| ps.iter().any(|p| p["name"] == "rbd"));
            if has_rbd && df["stats"]["total_bytes"].as_u64().unwrap_or(0) > 0 {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Ceph(format!(
                    "ceph-mgr: df has no pool stats after {STEP_TIMEOUT:?}: {df}\n{}",
                    self.log_tail("mgr.x", 20)
                )));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Whether the monitor process is running.
    pub fn mon_running(&mut self) -> bool {
        matches!(self.mon.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Freezes the monitor and the OSD (SIGSTOP): the address still accepts
    /// TCP connections but nothing answers, as with a hung cluster. Returns
    /// once every thread of every daemon is stopped: kill(2) only queues the
    /// stop, and a thread busy on a loaded machine could otherwise still answer
    /// the next request.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
        self.wait_threads(true);
    }

    /// Lets a frozen cluster run again (SIGCONT), and returns once no thread
    /// of the daemons is stopped.
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
        self.wait_threads(false);
    }

    /// Waits (bounded, 10 s) until every thread of the daemons is stopped
    /// (`stopped`) or none is; a thread gone meanwhile counts as done.
    fn wait_threads(&self, stopped: bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        let pids: Vec<u32> = [&self.mon, &self.osd, &self.mgr].into_iter().flatten().map(|c| c.id()).collect();
        loop {
            let done = pids.iter().all(|pid| {
                let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else { return true };
                tasks.flatten().all(|t| {
                    let stat = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                    // The state follows the command's closing parenthesis.
                    let state = stat.rsplit_once(") ").and_then(|(_, rest)| rest.chars().next());
                    match state {
                        None => true,
                        Some(s) => matches!(s, 'Z' | 'X') || matches!(s, 'T' | 't') == stopped,
                    }
                })
            });
            if done || Instant::now() > deadline {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The last `lines` lines of a daemon's log (`"mon.a"`, `"osd.0"`).
    pub fn log_tail(&self, daemon: &str, lines: usize) -> String {
        let p = self.dir.join("log").join(format!("{daemon}.log"));
        let s = std::fs::read_to_string(&p).unwrap_or_else(|_| format!("(no log at {})", p.display()));
        let all: Vec<&str> = s.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    fn signal(&self, sig: libc::c_int) {
        for c in [&self.mon, &self.osd, &self.mgr].into_iter().flatten() {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        }
    }

    fn setup(&mut self) -> Result<()> {
        let d = self.dir.clone();
        for sub in ["run", "log", "mon", "osd0"] {
            std::fs::create_dir_all(d.join(sub)).map_err(|e| Error::io(format!("create {}/{sub}", d.display()), e))?;
        }
        allow_qemu_bridges()?;
        let ip = self.claim.host(1);
        let br = self.bridge.clone();
        let prefix = self.prefix_len();
        run_checked("ip", &["link", "add", &br, "type", "bridge"])?;
        run_checked("ip", &["addr", "add", &format!("{ip}/{prefix}"), "dev", &br])?;
        run_checked("ip", &["link", "set", &br, "up"])?;

        let conf = self.conf();
        std::fs::write(&conf, self.config_text()).map_err(|e| Error::io(format!("write {}", conf.display()), e))?;
        let keyring = d.join("keyring");
        let kr = keyring.to_string_lossy().into_owned();
        run_checked("ceph-authtool", &["--create-keyring", &kr, "--gen-key", "-n", "mon.", "--cap", "mon", "allow *"])?;
        run_checked(
            "ceph-authtool",
            &[
                &kr,
                "--gen-key",
                "-n",
                "client.admin",
                "--cap",
                "mon",
                "allow *",
                "--cap",
                "osd",
                "allow *",
                "--cap",
                "mgr",
                "allow *",
            ],
        )?;
        run_checked(
            "ceph-authtool",
            &[
                &kr,
                "--gen-key",
                "-n",
                "osd.0",
                "--cap",
                "mon",
                "allow profile osd",
                "--cap",
                "osd",
                "allow *",
                "--cap",
                "mgr",
                "allow profile osd",
            ],
        )?;
        self.admin_key = lossy(&run_checked("ceph-authtool", &[&kr, "-n", "client.admin", "-p"])?.stdout);
        let monmap = d.join("monmap").to_string_lossy().into_owned();
        let v2 = format!("v2:{}", self.mon_addr());
        run_checked("monmaptool", &["--create", "--addv", "a", &v2, "--fsid", &self.fsid, &monmap])?;
        let c = conf.to_string_lossy().into_owned();
        run_checked("ceph-mon", &["--mkfs", "-i", "a", "-c", &c, "--monmap", &monmap, "--keyring", &kr])?;
        self.mon =
            Some(spawn_daemon(&self.dir, "ceph-mon", &["-f", "-i", "a", "-c", &c, "--public-addr", &ip.to_string()])?);
        self.wait_for_mon()?;
        self.ceph(&["osd", "create"])?;
        run_checked("ceph-osd", &["-i", "0", "-c", &c, "--mkfs"])?;
        self.osd = Some(spawn_daemon(&self.dir, "ceph-osd", &["-f", "-i", "0", "-c", &c])?);
        self.create_pool("rbd")?;
        Ok(())
    }

    fn wait_for_mon(&mut self) -> Result<()> {
        let deadline = Instant::now() + STEP_TIMEOUT;
        loop {
            if !self.mon_running() {
                return Err(Error::Ceph(format!(
                    "ceph-mon exited; its stderr:\n{}\nlog tail:\n{}",
                    self.log_tail("ceph-mon-stderr", 20),
                    self.log_tail("mon.a", 20)
                )));
            }
            if TcpStream::connect_timeout(&self.mon_addr(), Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(Error::Ceph(format!(
                    "ceph-mon not listening on {} after {STEP_TIMEOUT:?}",
                    self.mon_addr()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn tool(&self, prog: &str, args: &[&str]) -> Result<Output> {
        let c = self.conf().to_string_lossy().into_owned();
        let mut a = vec!["-c", c.as_str()];
        a.extend_from_slice(args);
        run_checked(prog, &a)
    }

    fn config_text(&self) -> String {
        let d = self.dir.display();
        let net = self.claim.net;
        format!(
            "[global]\n\
             fsid = {fsid}\n\
             mon host = v2:{mon}\n\
             public network = {net}\n\
             auth cluster required = cephx\n\
             auth service required = cephx\n\
             auth client required = cephx\n\
             keyring = {d}/keyring\n\
             osd pool default size = 1\n\
             osd pool default min size = 1\n\
             mon allow pool size one = true\n\
             mon allow pool delete = true\n\
             mon data avail crit = 0\n\
             mon data avail warn = 0\n\
             osd objectstore = memstore\n\
             memstore device bytes = 2147483648\n\
             osd crush chooseleaf type = 0\n\
             run dir = {d}/run\n\
             admin socket = {d}/run/$name.asok\n\
             log file = {d}/log/$name.log\n\
             mon data = {d}/mon\n\
             osd data = {d}/osd$id\n\
             client mount timeout = 30\n",
            fsid = self.fsid,
            mon = self.mon_addr(),
        )
    }

    fn stop(&mut self) {
        self.thaw();
        for child in [self.mgr.take(), self.osd.take(), self.mon.take()].into_iter().flatten() {
            let mut child = child;
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for Ceph {
    fn drop(&mut self) {
        self.stop();
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).stderr(Stdio::null()).status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// QEMU's bridge helper attaches a guest only to bridges its config allows.
fn allow_qemu_bridges() -> Result<()> {
    let p = Path::new("/etc/qemu/bridge.conf");
    let cur = std::fs::read_to_string(p).unwrap_or_default();
    if cur.lines().any(|l| l.trim() == "allow all") {
        return Ok(());
    }
    std::fs::create_dir_all("/etc/qemu").map_err(|e| Error::io("create /etc/qemu", e))?;
    std::fs::write(p, format!("{cur}allow all\n")).map_err(|e| Error::io("write /etc/qemu/bridge.conf", e))
}

/// Starts a daemon in the foreground; its stderr goes to `log/<prog>-stderr.log`
/// (what it says before its own log is open, e.g. a bind failure).
fn spawn_daemon(dir: &Path, prog: &str, args: &[&str]) -> Result<Child> {
    let path = dir.join("log").join(format!("{prog}-stderr.log"));
    let stderr = std::fs::File::create(&path).map_err(|e| Error::io(format!("create {}", path.display()), e))?;
    Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(stderr)
        .spawn()
        .map_err(|e| Error::io(format!("start {prog}"), e))
}

/// Runs a setup command with [`STEP_TIMEOUT`]; fails unless it exits 0.
fn run_checked(prog: &str, args: &[&str]) -> Result<Output> {
    let mut cmd = Command::new("timeout");
    cmd.arg("-k").arg("5").arg(STEP_TIMEOUT.as_secs().to_string()).arg(prog).args(args);
    let out = cmd.stdin(Stdio::null()).output().map_err(|e| Error::io(format!("run {prog}"), e))?;
    if !out.status.success() {
        return Err(Error::Ceph(format!(
            "{prog} {} exited with {}: {}{}",
            args.join(" "),
            out.status,
            lossy(&out.stderr),
            lossy(&out.stdout)
        )));
    }
    Ok(out)
}

fn lossy(b: &[u8]) -> String {
    String::from_utf8_lossy(b).trim().to_string()
}

fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    // SAFETY: getrandom(2) writes at most 16 bytes into our 16-byte buffer.
    let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), b.len(), 0) };
    assert_eq!(n, 16, "getrandom");
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cluster_starts_serves_rbd_and_leaves_nothing_behind() {
        let started = Instant::now();
        let c = Ceph::start().expect("start ceph (scripts/testbed.sh installs it)");
        let took = started.elapsed();
        c.rbd(&["create", "--size", "16M", "img"]).unwrap();
        let info = c.rbd(&["info", "img", "--format", "json"]).unwrap();
        let v: serde_json::Value = serde_json::from_str(&info).unwrap();
        assert_eq!(v["size"], 16 << 20, "{info}");
        assert!(c.admin_key().len() >= 40, "admin key {:?}", c.admin_key());
        let dir = c.dir().to_path_buf();
        let bridge = c.bridge().to_string();
        eprintln!("cluster up in {took:?}");
        drop(c);
        assert!(!dir.exists(), "{} left behind", dir.display());
        let still = Command::new("ip").args(["link", "show", &bridge]).output().unwrap();
        assert!(!still.status.success(), "bridge {bridge} left behind");
    }

    #[test]
    fn a_manager_reports_pool_statistics_and_stops_with_the_cluster() {
        let mut c = Ceph::start().expect("start ceph");
        let df = c.ceph_json(&["df"]).unwrap();
        assert_eq!(df["pools"].as_array().map(Vec::len), Some(0), "no statistics without a manager: {df}");
        c.start_mgr().unwrap();
        let df = c.ceph_json(&["df"]).unwrap();
        assert!(df["pools"].as_array().unwrap().iter().any(|p| p["name"] == "rbd"), "{df}");
        let pid = c.mgr.as_ref().unwrap().id();
        drop(c);
        assert!(!Path::new(&format!("/proc/{pid}")).exists(), "ceph-mgr {pid} left running");
    }
}
