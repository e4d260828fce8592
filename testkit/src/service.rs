//! A server binary (a CSI driver) run as a child process on a unix socket in a directory of
//! its own, its stderr in `<dir>/driver.log`: what the CSI suites, benchmarks and the drivers'
//! own tests start. csi-suite's `DriverProcess` adds the gRPC channel on top.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::util::R;

/// How long a server gets to create its socket (csi-cloud asks EC2 about its instance first).
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A server serving on `<dir>/csi.sock`. Dropping it sends SIGTERM (SIGKILL if it lingers;
/// nothing once it was reaped, when its pid may be another process's), detaches what is
/// still mounted under `dir` (what a failed test left: never deleted through), prints the
/// log's tail when the test is failing, and removes `dir`.
#[derive(Debug)]
pub struct ServiceProcess {
    child: Child,
    dir: PathBuf,
    name: String,
}

impl ServiceProcess {
    /// Starts `bin --endpoint=unix://<dir>/csi.sock ARGS…` with `env` added to its environment,
    /// in a fresh temp dir named after `hint`, and returns once the socket exists. `{dir}` in
    /// an argument is replaced by that directory (e.g. a state directory of the server's own,
    /// removed with it).
    pub fn start<K, V>(
        bin: &Path,
        hint: &str,
        args: &[String],
        env: impl IntoIterator<Item = (K, V)>,
    ) -> R<ServiceProcess>
    where
        K: AsRef<std::ffi::OsStr>,
        V: AsRef<std::ffi::OsStr>,
    {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{hint}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| format!("create {}: {e}", dir.display()))?;
        let log = std::fs::File::create(dir.join("driver.log")).map_err(|e| format!("create driver.log: {e}"))?;
        let sock = dir.join("csi.sock");
        let child = Command::new(bin)
            .arg(format!("--endpoint=unix://{}", sock.display()))
            .args(args.iter().map(|a| a.replace("{dir}", &dir.display().to_string())))
            .envs(env)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("start {}: {e}", bin.display()))?;
        let mut d = ServiceProcess { child, dir, name: hint.to_string() };
        let started = Instant::now();
        while !sock.exists() {
            if let Ok(Some(st)) = d.child.try_wait() {
                return Err(format!("{} exited ({st}) before serving:\n{}", bin.display(), d.log()));
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(format!(
                    "{} did not create {} in {START_TIMEOUT:?}:\n{}",
                    bin.display(),
                    sock.display(),
                    d.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(d)
    }

    /// The server's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The server's directory (socket, log; scratch space for the caller).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The socket path.
    pub fn socket(&self) -> PathBuf {
        self.dir.join("csi.sock")
    }

    /// `unix:///…/csi.sock`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket().display())
    }

    /// What the server logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("driver.log")).unwrap_or_default()
    }

    /// Kills it at once (a node that dies), cleaning nothing: its mounts stay until the
    /// caller or the drop detaches them.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for ServiceProcess {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let started = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && started.elapsed() < STOP_TIMEOUT {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        unmount_under(&self.dir);
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- {} log, last {} lines ({})", self.name, tail.len(), self.dir.display());
            tail.iter().rev().for_each(|l| eprintln!("{l}"));
        }
        // Only once nothing is mounted below: never delete through a mount into a volume.
        if mounts_under(&self.dir).is_empty() {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }
}

/// Detaches (lazily) everything mounted under `dir`, deepest first: what a failed test left,
/// or what a dead node's kernel no longer holds. Returns how many there were.
pub fn unmount_under(dir: &Path) -> usize {
    let mut ours = mounts_under(dir);
    ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in &ours {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    ours.len()
}

/// The mount points under `dir` (this mount namespace), as `/proc/self/mountinfo` lists them.
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_string)
        .collect()
}
