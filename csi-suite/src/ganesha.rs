//! A throwaway nfs-ganesha server for tests: its own temp dir, its own TCP
//! port, two exports, gone on drop.
//!
//! Several instances run side by side (checked: two and three servers at
//! once, each on its own port, each answering `nfs-ls`), so tests that each
//! start one may run in parallel; no lock is needed. The server runs in the
//! foreground (`-F`) as our child, so stopping it is a kill and a wait, with
//! no pid file race and no zombie.
//!
//! Exports (NFSv4 only, TCP, `sec=sys`):
//!
//! | pseudo path | directory | squash |
//! |---|---|---|
//! | `/export` | [`Ganesha::root`] | `No_Root_Squash` |
//! | `/squash` | [`Ganesha::squash_root`] (mode 0777) | `Root_Squash`, anonymous uid/gid 65534 |
//!
//! `Only_Numeric_Owners` is on: without it ganesha sends owners as
//! `name@domain` strings, which libnfs cannot map back and shows as 65534,
//! so a test could not check a chown. Kernel clients with `sec=sys` send and
//! accept numeric owners too.
//!
//! libnfs reaches a server with [`Ganesha::url`]
//! (`nfs://127.0.0.1/export?version=4&nfsport=PORT`); a guest's kernel
//! mounts `10.0.2.2:/export` with `port=PORT`.

use std::collections::HashSet;
use std::io::{Read, Seek, SeekFrom};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// How long a server may take to accept TCP connections (≈3 s when idle;
/// more while the machine is busy compiling).
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The ganesha binary.
pub const GANESHA: &str = "ganesha.nfsd";

/// Ports handed out by this process, so two fixtures started at once never
/// pick the same one between "find a free port" and ganesha's bind.
static PORTS: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A running nfs-ganesha in a temp dir.
#[derive(Debug)]
pub struct Ganesha {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
    /// NFSv4 minor versions served (`Minor_Versions`).
    minor_versions: &'static str,
}

impl Ganesha {
    /// Starts a server on a free port (never 2049) with a fresh temp dir,
    /// and returns once the port accepts TCP connections.
    pub fn start() -> Result<Ganesha> {
        Ganesha::start_with_minor_versions("0,1,2")
    }

    /// [`Ganesha::start`] serving only the given NFSv4 minor versions
    /// (ganesha's `Minor_Versions`, e.g. `"1"` for a 4.1-only server).
    pub fn start_with_minor_versions(minor_versions: &'static str) -> Result<Ganesha> {
        let dir = std::env::temp_dir().join(format!("ganesha-{}-{}", std::process::id(), unique()));
        for sub in ["export", "squash", "recov"] {
            std::fs::create_dir_all(dir.join(sub))
                .map_err(|e| Error::io(format!("create {}/{sub}", dir.display()), e))?;
        }
        std::fs::set_permissions(dir.join("squash"), std::fs::Permissions::from_mode(0o777))
            .map_err(|e| Error::io(format!("chmod {}/squash", dir.display()), e))?;
        let mut g = Ganesha { dir, port: 0, child: None, minor_versions };
        let mut last = None;
        // Another process may take the port between our probe and ganesha's
        // bind: try a few ports before giving up (drop removes the dir).
        for _ in 0..3 {
            g.port = free_port()?;
            match g.spawn() {
                Ok(()) => return Ok(g),
                Err(e) => {
                    g.stop();
                    last = Some(e);
                }
            }
        }
        Err(last.unwrap_or_else(|| Error::Ganesha("ganesha did not start".into())))
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The directory exported as `/export` (no root squash).
    pub fn root(&self) -> PathBuf {
        self.dir.join("export")
    }

    /// The directory exported as `/squash` (root squashed to 65534:65534).
    pub fn squash_root(&self) -> PathBuf {
        self.dir.join("squash")
    }

    /// The server's temp dir (config, log, pid file, exports).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The libnfs URL of the export at pseudo path `export` (`"/export"`).
    pub fn url(&self, export: &str) -> String {
        format!("nfs://127.0.0.1/{}?version=4&nfsport={}", export.trim_start_matches('/'), self.port)
    }

    /// Whether the server process is running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Kills the server (SIGKILL: a crash, as "server down" tests want) and
    /// waits until the process is gone. The dir stays; [`Ganesha::restart`]
    /// starts it again on the same port and exports.
    pub fn stop(&mut self) {
        self.thaw();
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Freezes the server (SIGSTOP): the kernel still accepts TCP
    /// connections on its port but nothing answers, as with a hung server.
    /// Returns once every thread of the server is stopped: the signal is
    /// asynchronous, and a request sent before it lands would still be served.
    pub fn freeze(&self) {
        self.signal(libc::SIGSTOP);
        let Some(c) = &self.child else { return };
        let task_dir = PathBuf::from(format!("/proc/{}/task", c.id()));
        let stopped = || {
            std::fs::read_dir(&task_dir).map(|tasks| {
                tasks.flatten().all(|t| {
                    std::fs::read_to_string(t.path().join("stat"))
                        .map(|st| st.rsplit_once(')').is_some_and(|(_, rest)| rest.trim_start().starts_with('T')))
                        .unwrap_or(true)
                })
            })
        };
        let deadline = Instant::now() + Duration::from_secs(5);
        while !matches!(stopped(), Ok(true)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Lets a frozen server run again (SIGCONT).
    pub fn thaw(&self) {
        self.signal(libc::SIGCONT);
    }

    fn signal(&self, sig: libc::c_int) {
        if let Some(c) = &self.child {
            // SAFETY: kill(2) on our own child's pid.
            unsafe { libc::kill(c.id() as libc::pid_t, sig) };
        }
    }

    /// Starts a stopped server again, same port, same exports.
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            match self.spawn() {
                Ok(()) => return Ok(()),
                // The port may still be held for a moment after the kill.
                Err(_) if Instant::now() < deadline => {
                    self.stop();
                    std::thread::sleep(Duration::from_millis(500));
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// The last `lines` lines of the server's log.
    pub fn log_tail(&self, lines: usize) -> String {
        tail(&self.dir.join("ganesha.log"), lines)
    }

    fn config(&self) -> String {
        let d = self.dir.display();
        format!(
            "NFS_CORE_PARAM {{ Enable_NLM = false; Enable_RQUOTA = false; Protocols = 4; NFS_Port = {port}; }}\n\
             NFSV4 {{ Graceless = true; Minor_Versions = {minor}; RecoveryRoot = {d}/recov; Only_Numeric_Owners = true; }}\n\
             EXPORT {{ Export_Id = 1; Path = {d}/export; Pseudo = /export; Access_Type = RW; Squash = No_Root_Squash;\n\
             \x20 SecType = sys; Protocols = 4; Transports = TCP; FSAL {{ Name = VFS; }} }}\n\
             EXPORT {{ Export_Id = 2; Path = {d}/squash; Pseudo = /squash; Access_Type = RW; Squash = Root_Squash;\n\
             \x20 Anonymous_Uid = 65534; Anonymous_Gid = 65534;\n\
             \x20 SecType = sys; Protocols = 4; Transports = TCP; FSAL {{ Name = VFS; }} }}\n\
             LOG {{ Default_Log_Level = WARN; }}\n",
            port = self.port,
            minor = self.minor_versions,
        )
    }

    fn spawn(&mut self) -> Result<()> {
        let conf = self.dir.join("ganesha.conf");
        std::fs::write(&conf, self.config()).map_err(|e| Error::io(format!("write {}", conf.display()), e))?;
        let log = self.dir.join("ganesha.log");
        let child = Command::new(GANESHA)
            .arg("-F")
            .arg("-f")
            .arg(&conf)
            .arg("-L")
            .arg(&log)
            .arg("-p")
            .arg(self.dir.join("ganesha.pid"))
            .args(["-N", "NIV_WARN"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| Error::io(format!("start {GANESHA} (apt-get install nfs-ganesha nfs-ganesha-vfs)"), e))?;
        self.child = Some(child);
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, self.port));
        let started = Instant::now();
        loop {
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                return Err(Error::Ganesha(format!(
                    "ganesha on port {} exited with {status}; log tail:\n{}",
                    self.port,
                    self.log_tail(15)
                )));
            }
            if TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok() {
                return Ok(());
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(Error::Ganesha(format!(
                    "ganesha on port {} not accepting TCP after {START_TIMEOUT:?}; log tail:\n{}",
                    self.port,
                    self.log_tail(15)
                )));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Ganesha {
    fn drop(&mut self) {
        self.stop();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A port free for both TCP and UDP (ganesha binds both), never 2049 and
/// never one this process handed out before.
fn free_port() -> Result<u16> {
    for _ in 0..50 {
        let tcp = TcpListener::bind((Ipv4Addr::UNSPECIFIED, 0)).map_err(|e| Error::io("bind a TCP port", e))?;
        let port = tcp.local_addr().map_err(|e| Error::io("TCP port", e))?.port();
        if port == 2049 || UdpSocket::bind((Ipv4Addr::UNSPECIFIED, port)).is_err() {
            continue;
        }
        let mut used = PORTS.lock().unwrap_or_else(|e| e.into_inner());
        if used.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    Err(Error::Ganesha("no free TCP+UDP port found".into()))
}

fn unique() -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{n}-{t:x}")
}

fn tail(path: &Path, lines: usize) -> String {
    let Ok(mut f) = std::fs::File::open(path) else {
        return format!("(no log at {})", path.display());
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(16 * 1024)));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    let all: Vec<&str> = s.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ganesha_installed() -> bool {
        Command::new(GANESHA).arg("-v").stdout(Stdio::null()).stderr(Stdio::null()).status().is_ok()
    }

    /// Two servers at once, each reachable, each gone after drop.
    #[test]
    fn two_servers_run_side_by_side_and_stop() {
        assert!(ganesha_installed(), "{GANESHA} is not installed (scripts/testbed.sh installs nfs-ganesha)");
        let mut a = Ganesha::start().expect("start a");
        let b = Ganesha::start().expect("start b");
        assert_ne!(a.port(), b.port());
        assert!(a.root().is_dir() && a.squash_root().is_dir());
        let mode = std::fs::metadata(a.squash_root()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o777);
        for g in [&a, &b] {
            TcpStream::connect((Ipv4Addr::LOCALHOST, g.port())).expect("server accepts TCP");
        }
        a.stop();
        assert!(!a.is_running());
        assert!(TcpStream::connect((Ipv4Addr::LOCALHOST, a.port())).is_err(), "stopped server still accepts");
        a.restart().expect("restart");
        TcpStream::connect((Ipv4Addr::LOCALHOST, a.port())).expect("restarted server accepts TCP");
        let dir = b.dir().to_path_buf();
        drop(b);
        assert!(!dir.exists(), "dir removed on drop");
    }
}
