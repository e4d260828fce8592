//! A throw-away real etcd for tests and the lab: [`EtcdServer`] starts
//! `etcd` (3.4+, from `$ETCD_BIN` or `PATH`) on free loopback ports with a
//! fresh data dir (on tmpfs when `/dev/shm` exists) and kills it and
//! removes the dir on drop.
//!
//! [`EtcdServer::start_tls`] serves https with a throw-away CA (made with
//! the `openssl` CLI) and requires client certificates; its
//! [`EtcdServer::etcd_config`] carries the CA, client cert and key.
//!
//! [`EtcdServer::freeze`] (SIGSTOP) simulates a hung server or a network
//! partition: connections stay open, nothing answers.
//!
//! ```no_run
//! let etcd = etcd_kv::testing::EtcdServer::start().unwrap();
//! let cfg = etcd.etcd_config(); // endpoints, the user's default prefix
//! etcd.etcdctl(&["put", "/coreos.com/network/config", r#"{"Network":"10.5.0.0/16"}"#]).unwrap();
//! ```

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::EtcdConfig;

static SEQ: AtomicUsize = AtomicUsize::new(0);
const READY_TIMEOUT: Duration = Duration::from_secs(15);

/// A running single-member etcd; see the module docs.
#[derive(Debug)]
pub struct EtcdServer {
    dir: PathBuf,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
    tls: Option<TlsFiles>,
}

/// PEM files of a TLS server (all under the server's directory).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    pub ca: PathBuf,
    pub server_cert: PathBuf,
    pub server_key: PathBuf,
    pub client_cert: PathBuf,
    pub client_key: PathBuf,
}

impl TlsFiles {
    /// A CA, a server cert for 127.0.0.1 and a client cert, via `openssl`.
    fn generate(dir: &Path) -> io::Result<TlsFiles> {
        let f = |n: &str| dir.join(n);
        let t = TlsFiles {
            ca: f("ca.crt"),
            server_cert: f("server.crt"),
            server_key: f("server.key"),
            client_cert: f("client.crt"),
            client_key: f("client.key"),
        };
        let openssl = |args: &[&str]| -> io::Result<()> {
            let out = Command::new("openssl").args(args).current_dir(dir).stdin(Stdio::null()).output()?;
            if !out.status.success() {
                return Err(io::Error::other(format!("openssl {args:?}: {}", String::from_utf8_lossy(&out.stderr))));
            }
            Ok(())
        };
        let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &["-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=etcd-test-ca"],
            ]
            .concat(),
        )?;
        for (name, cn, san, eku) in [
            ("server", "etcd-test-server", "subjectAltName=IP:127.0.0.1,DNS:localhost", "extendedKeyUsage=serverAuth"),
            ("client", "etcd-test-client", "subjectAltName=DNS:client", "extendedKeyUsage=clientAuth"),
        ] {
            let (key, csr, crt) = (format!("{name}.key"), format!("{name}.csr"), format!("{name}.crt"));
            let subj = format!("/CN={cn}");
            openssl(
                &[&["req"][..], &ec, &["-keyout", &key, "-out", &csr, "-subj", &subj, "-addext", san, "-addext", eku]]
                    .concat(),
            )?;
            openssl(&[
                "x509",
                "-req",
                "-in",
                &csr,
                "-CA",
                "ca.crt",
                "-CAkey",
                "ca.key",
                "-CAcreateserial",
                "-out",
                &crt,
                "-days",
                "2",
                "-copy_extensions",
                "copy",
            ])?;
        }
        Ok(t)
    }
}

fn etcd_bin() -> String {
    std::env::var("ETCD_BIN").unwrap_or_else(|_| "etcd".to_string())
}

fn etcdctl_bin() -> String {
    std::env::var("ETCDCTL_BIN").unwrap_or_else(|_| "etcdctl".to_string())
}

/// What every etcd we start is told about itself: its name, data dir and
/// URLs (the client URL is also the advertised one), logging to `log`.
struct MemberFlags<'a> {
    name: &'a str,
    data_dir: &'a Path,
    client: &'a str,
    peer: &'a str,
}

impl MemberFlags<'_> {
    /// Adds the member's own flags to `cmd` (which carries the cluster's)
    /// and starts it.
    fn spawn(&self, mut cmd: Command, log: std::fs::File) -> io::Result<Child> {
        cmd.args(["--name", self.name])
            .arg("--data-dir")
            .arg(self.data_dir)
            .args(["--listen-client-urls", self.client, "--advertise-client-urls", self.client])
            .args(["--listen-peer-urls", self.peer, "--initial-advertise-peer-urls", self.peer])
            .args(["--log-level", "warn"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run {}: {e}", etcd_bin())))
    }
}

fn free_ports() -> io::Result<(u16, u16)> {
    // Hold both listeners so the two ports differ.
    let a = TcpListener::bind("127.0.0.1:0")?;
    let b = TcpListener::bind("127.0.0.1:0")?;
    Ok((a.local_addr()?.port(), b.local_addr()?.port()))
}

impl EtcdServer {
    /// Whether an etcd binary can be run (for tests that skip without one).
    pub fn available() -> bool {
        Command::new(etcd_bin()).arg("--version").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
    }

    /// Starts etcd and waits until it is healthy (has a leader).
    pub fn start() -> io::Result<EtcdServer> {
        Self::start_inner(false)
    }

    /// Like [`Self::start`], serving https only and requiring client
    /// certificates signed by a throw-away CA (needs the `openssl` CLI).
    pub fn start_tls() -> io::Result<EtcdServer> {
        Self::start_inner(true)
    }

    fn start_inner(tls: bool) -> io::Result<EtcdServer> {
        let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let dir = base.join(format!("etcd-test-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let tls = match tls {
            false => None,
            true => match TlsFiles::generate(&dir) {
                Ok(t) => Some(t),
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e);
                }
            },
        };
        let mut last = None;
        for _ in 0..3 {
            let (client_port, peer_port) = free_ports()?;
            let mut s = EtcdServer { dir: dir.clone(), client_port, peer_port, child: None, tls: tls.clone() };
            match s.start_again() {
                Ok(()) => return Ok(s),
                Err(e) => {
                    // Port taken between probe and bind: try new ports.
                    s.kill();
                    let _ = std::fs::remove_dir_all(s.data_dir());
                    std::mem::forget(s);
                    last = Some(e);
                }
            }
        }
        let _ = std::fs::remove_dir_all(&dir);
        Err(last.unwrap_or_else(|| io::Error::other("etcd did not start")))
    }

    /// (Re)starts etcd on the same ports and data dir (after [`Self::kill`]).
    pub fn start_again(&mut self) -> io::Result<()> {
        if self.child.is_some() {
            return Ok(());
        }
        let log = std::fs::OpenOptions::new().create(true).append(true).open(self.log_path())?;
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let client = self.endpoint();
        let mut cmd = Command::new(etcd_bin());
        if let Some(t) = &self.tls {
            cmd.arg("--cert-file").arg(&t.server_cert).arg("--key-file").arg(&t.server_key);
            cmd.arg("--trusted-ca-file").arg(&t.ca).arg("--client-cert-auth");
        }
        let member = MemberFlags { name: "default", data_dir: &self.data_dir(), client: &client, peer: &peer };
        cmd.args(["--initial-cluster", &format!("default={peer}")]);
        // Fast single-member election; also lowers the minimum lease TTL.
        cmd.args(["--heartbeat-interval", "50", "--election-timeout", "250"]);
        self.child = Some(member.spawn(cmd, log)?);
        self.wait_ready()
    }

    fn wait_ready(&mut self) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        let addr: SocketAddr = ([127, 0, 0, 1], self.client_port).into();
        loop {
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.child = None;
                return Err(io::Error::other(format!("etcd exited ({status}) at start:\n{}", self.log_tail())));
            }
            if self.tls.is_some() {
                let healthy = TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
                    && self.etcdctl(&["endpoint", "health", "--command-timeout", "1s"]).is_ok();
                if healthy {
                    return Ok(());
                }
            } else if let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(200)) {
                let _ = s.set_read_timeout(Some(Duration::from_secs(1)));
                let mut body = String::new();
                if s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").is_ok()
                    && s.read_to_string(&mut body).is_ok()
                    && body.contains("\"health\":\"true\"")
                {
                    return Ok(());
                }
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "etcd not healthy after {READY_TIMEOUT:?}:\n{}",
                    self.log_tail()
                )));
            }
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    /// SIGKILLs etcd (no clean shutdown); the data dir stays.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Kill, then start on the same ports and data dir.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill();
        self.start_again()
    }

    pub fn is_running(&self) -> bool {
        self.child.is_some()
    }

    /// `http://127.0.0.1:<port>` (`https://` for a TLS server)
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// This server with the default prefix (and, for a TLS server, the CA
    /// and the client certificate).
    pub fn etcd_config(&self) -> EtcdConfig {
        let mut cfg = EtcdConfig { endpoints: vec![self.endpoint()], ..EtcdConfig::default() };
        if let Some(t) = &self.tls {
            cfg.ca_file = Some(t.ca.clone());
            cfg.cert_file = Some(t.client_cert.clone());
            cfg.key_file = Some(t.client_key.clone());
        }
        cfg
    }

    /// The PEM files of a TLS server.
    pub fn tls_files(&self) -> Option<&TlsFiles> {
        self.tls.as_ref()
    }

    /// SIGSTOPs etcd: it keeps its connections but answers nothing.
    pub fn freeze(&self) {
        self.signal(nix::sys::signal::Signal::SIGSTOP)
    }

    /// SIGCONTs a frozen etcd.
    pub fn thaw(&self) {
        self.signal(nix::sys::signal::Signal::SIGCONT)
    }

    fn signal(&self, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        }
    }

    pub fn data_dir(&self) -> PathBuf {
        self.dir.join("data")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("etcd.log")
    }

    fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.log_path()).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Runs `etcdctl` (v3 API) against this server.
    pub fn etcdctl(&self, args: &[&str]) -> io::Result<Output> {
        let mut cmd = Command::new(etcdctl_bin());
        if let Some(t) = &self.tls {
            cmd.arg("--cacert").arg(&t.ca).arg("--cert").arg(&t.client_cert).arg("--key").arg(&t.client_key);
        }
        run_etcdctl(cmd, &self.endpoint(), args)
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        self.thaw();
        self.kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A throw-away etcd cluster of several members on one IP (loopback, or an
/// address such as a lab's management bridge), each with its own ports and
/// data dir; see [`EtcdCluster::start`]. Members can be killed, restarted
/// (they rejoin with their data dir) and frozen one by one. Drop kills
/// every member and removes the directory.
#[derive(Debug)]
pub struct EtcdCluster {
    dir: PathBuf,
    ip: std::net::IpAddr,
    members: Vec<Member>,
}

#[derive(Debug)]
struct Member {
    name: String,
    client_port: u16,
    peer_port: u16,
    child: Option<Child>,
}

/// Election timing of [`EtcdCluster`]: slow enough that a loaded 2-core
/// machine does not see spurious elections, quick enough for tests.
const CLUSTER_HEARTBEAT_MS: &str = "100";
const CLUSTER_ELECTION_MS: &str = "1000";

impl EtcdCluster {
    /// Starts `n` members on 127.0.0.1 and waits until every one is healthy
    /// (sees a leader).
    pub fn start(n: usize) -> io::Result<EtcdCluster> {
        Self::start_on(n, std::net::Ipv4Addr::LOCALHOST.into())
    }

    /// [`Self::start`] listening on `ip` (which must be an address of this
    /// netns).
    pub fn start_on(n: usize, ip: std::net::IpAddr) -> io::Result<EtcdCluster> {
        let base = if Path::new("/dev/shm").is_dir() { PathBuf::from("/dev/shm") } else { std::env::temp_dir() };
        let dir = base.join(format!("etcd-cluster-{}-{}", std::process::id(), SEQ.fetch_add(1, Ordering::Relaxed)));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        // Hold every listener until all ports are chosen, so they differ.
        let mut held = Vec::new();
        let mut members = Vec::new();
        for i in 0..n {
            let a = TcpListener::bind((ip, 0))?;
            let b = TcpListener::bind((ip, 0))?;
            members.push(Member {
                name: format!("m{i}"),
                client_port: a.local_addr()?.port(),
                peer_port: b.local_addr()?.port(),
                child: None,
            });
            held.push((a, b));
        }
        drop(held);
        let mut c = EtcdCluster { dir, ip, members };
        for i in 0..n {
            c.spawn(i, true)?;
        }
        for i in 0..n {
            c.wait_healthy(i)?;
        }
        Ok(c)
    }

    fn url(&self, port: u16) -> String {
        match self.ip {
            std::net::IpAddr::V4(v4) => format!("http://{v4}:{port}"),
            std::net::IpAddr::V6(v6) => format!("http://[{v6}]:{port}"),
        }
    }

    fn initial_cluster(&self) -> String {
        let parts: Vec<String> = self.members.iter().map(|m| format!("{}={}", m.name, self.url(m.peer_port))).collect();
        parts.join(",")
    }

    fn member_dir(&self, i: usize) -> PathBuf {
        self.dir.join(&self.members[i].name)
    }

    fn spawn(&mut self, i: usize, new_cluster: bool) -> io::Result<()> {
        if self.members[i].child.is_some() {
            return Ok(());
        }
        let mdir = self.member_dir(i);
        std::fs::create_dir_all(&mdir)?;
        let log = std::fs::OpenOptions::new().create(true).append(true).open(mdir.join("etcd.log"))?;
        let m = &self.members[i];
        let (client, peer) = (self.url(m.client_port), self.url(m.peer_port));
        let mut cmd = Command::new(etcd_bin());
        cmd.args(["--initial-cluster", &self.initial_cluster()])
            .args(["--initial-cluster-state", if new_cluster { "new" } else { "existing" }])
            .args(["--initial-cluster-token", &self.dir.file_name().unwrap_or_default().to_string_lossy()])
            .args(["--heartbeat-interval", CLUSTER_HEARTBEAT_MS, "--election-timeout", CLUSTER_ELECTION_MS]);
        let member = MemberFlags { name: &m.name, data_dir: &mdir.join("data"), client: &client, peer: &peer };
        let child = member.spawn(cmd, log)?;
        self.members[i].child = Some(child);
        Ok(())
    }

    /// Waits until member `i` answers `/health` with a leader.
    pub fn wait_healthy(&mut self, i: usize) -> io::Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;
        loop {
            if let Some(status) = self.members[i].child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                self.members[i].child = None;
                return Err(io::Error::other(format!("etcd member {i} exited ({status}):\n{}", self.log_tail(i))));
            }
            if http(self.ip, self.members[i].client_port, "GET", "/health", "")
                .is_some_and(|b| b.contains("\"health\":\"true\""))
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!(
                    "etcd member {i} not healthy after {READY_TIMEOUT:?}:\n{}",
                    self.log_tail(i)
                )));
            }
            std::thread::sleep(Duration::from_millis(30));
        }
    }

    /// Every member's client URL, in member order.
    pub fn endpoints(&self) -> Vec<String> {
        self.members.iter().map(|m| self.url(m.client_port)).collect()
    }

    /// All members' endpoints, the user's default prefix.
    pub fn etcd_config(&self) -> EtcdConfig {
        EtcdConfig { endpoints: self.endpoints(), ..EtcdConfig::default() }
    }

    /// The member that a running member reports as leader, if any agrees
    /// (asked over the JSON gateway, `/v3/maintenance/status`).
    pub fn leader(&self) -> Option<usize> {
        for (i, m) in self.members.iter().enumerate() {
            if m.child.is_none() {
                continue;
            }
            let Some(body) = http(self.ip, m.client_port, "POST", "/v3/maintenance/status", "{}") else {
                continue;
            };
            let Some(v) = json_body(&body) else { continue };
            let leader = v["leader"].as_str().unwrap_or("0");
            if leader == "0" || leader.is_empty() {
                continue;
            }
            if v["header"]["member_id"].as_str() == Some(leader) {
                return Some(i);
            }
        }
        None
    }

    /// Waits until the running members agree on a leader (bounded) and
    /// returns it.
    pub fn wait_leader(&self, timeout: Duration) -> io::Result<usize> {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(l) = self.leader() {
                return Ok(l);
            }
            if Instant::now() > deadline {
                return Err(io::Error::other(format!("no etcd leader after {timeout:?}")));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILLs member `i` (its data dir stays).
    pub fn kill(&mut self, i: usize) {
        if let Some(mut c) = self.members[i].child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts member `i` again with its data dir (it rejoins) and waits
    /// until it is healthy.
    pub fn start_again(&mut self, i: usize) -> io::Result<()> {
        self.spawn(i, false)?;
        self.wait_healthy(i)
    }

    /// Starts every stopped member again, then waits until all are healthy.
    pub fn start_all(&mut self) -> io::Result<()> {
        for i in 0..self.members.len() {
            self.spawn(i, false)?;
        }
        for i in 0..self.members.len() {
            self.wait_healthy(i)?;
        }
        Ok(())
    }

    pub fn is_running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    /// SIGSTOPs member `i`: it keeps its connections but answers nothing.
    pub fn freeze(&self, i: usize) {
        self.signal(i, nix::sys::signal::Signal::SIGSTOP)
    }

    /// SIGCONTs member `i`.
    pub fn thaw(&self, i: usize) {
        self.signal(i, nix::sys::signal::Signal::SIGCONT)
    }

    fn signal(&self, i: usize, sig: nix::sys::signal::Signal) {
        if let Some(c) = &self.members[i].child {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(c.id() as i32), sig);
        }
    }

    fn log_tail(&self, i: usize) -> String {
        let log = std::fs::read_to_string(self.member_dir(i).join("etcd.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// Runs `etcdctl` (v3 API) against every running member.
    pub fn etcdctl(&self, args: &[&str]) -> io::Result<Output> {
        let running: Vec<String> =
            self.members.iter().filter(|m| m.child.is_some()).map(|m| self.url(m.client_port)).collect();
        run_etcdctl(Command::new(etcdctl_bin()), &running.join(","), args)
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.thaw(i);
            self.kill(i);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// One HTTP/1.0 request to etcd's client port; the response body.
fn http(ip: std::net::IpAddr, port: u16, method: &str, path: &str, body: &str) -> Option<String> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::new(ip, port), Duration::from_millis(200)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(1))).ok()?;
    let req = format!(
        "{method} {path} HTTP/1.0\r\nHost: {ip}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    let (head, body) = resp.split_once("\r\n\r\n")?;
    head.starts_with("HTTP/1.0 200")
        .then(|| body.to_string())
        .or_else(|| head.contains(" 200 ").then(|| body.to_string()))
}

fn json_body(body: &str) -> Option<serde_json::Value> {
    serde_json::from_str(body.trim()).ok()
}

/// Runs `cmd` (an `etcdctl` with any TLS flags set) with the v3 API against
/// `endpoints`; a failure carries etcdctl's output.
fn run_etcdctl(mut cmd: Command, endpoints: &str, args: &[&str]) -> io::Result<Output> {
    let out = cmd.env("ETCDCTL_API", "3").arg("--endpoints").arg(endpoints).args(args).stdin(Stdio::null()).output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "etcdctl {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out)
}
