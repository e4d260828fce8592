//! A CSI driver binary run as a child process on a unix socket of its own:
//! what the csi-nfs tests, `bench csi-nfs` and the guest tests all need.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// How long a driver gets to create its socket.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long a driver gets to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);

/// A driver serving on `<dir>/csi.sock`, its stderr in `<dir>/driver.log`.
/// Dropping it sends SIGTERM (SIGKILL if it lingers) and removes `dir`.
#[derive(Debug)]
pub struct DriverProcess {
    child: Child,
    dir: PathBuf,
}

impl DriverProcess {
    /// Starts `bin --endpoint=unix://<dir>/csi.sock ARGS…` in a fresh temp
    /// dir named after `hint`, and returns once the socket exists. `{dir}`
    /// in an argument is replaced by that directory (e.g. a state directory
    /// of the driver's own, removed with it).
    pub fn start(bin: &Path, hint: &str, args: &[String]) -> Result<DriverProcess> {
        static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{hint}-{}-{n}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
        let log = std::fs::File::create(dir.join("driver.log")).map_err(|e| Error::io("create driver.log", e))?;
        let sock = dir.join("csi.sock");
        let child = Command::new(bin)
            .arg(format!("--endpoint=unix://{}", sock.display()))
            .args(args.iter().map(|a| a.replace("{dir}", &dir.display().to_string())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| Error::io(format!("start {}", bin.display()), e))?;
        let mut d = DriverProcess { child, dir };
        let started = Instant::now();
        while !sock.exists() {
            if let Ok(Some(st)) = d.child.try_wait() {
                return Err(Error::Driver(format!("{} exited ({st}) before serving:\n{}", bin.display(), d.log())));
            }
            if started.elapsed() > START_TIMEOUT {
                return Err(Error::Driver(format!(
                    "{} did not create {} in {START_TIMEOUT:?}",
                    bin.display(),
                    sock.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(d)
    }

    /// The driver's process ID.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The driver's directory (socket, log; scratch space for the caller).
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

    /// A gRPC channel to the driver.
    pub async fn channel(&self) -> Result<tonic::transport::Channel> {
        csi_core::client::connect(&csi_core::flags::Endpoint::Unix(self.socket()))
            .await
            .map_err(|e| Error::Driver(format!("connect to {}: {e}", self.endpoint())))
    }

    /// What the driver logged so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("driver.log")).unwrap_or_default()
    }
}

impl Drop for DriverProcess {
    fn drop(&mut self) {
        let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        let started = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && started.elapsed() < STOP_TIMEOUT {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- driver log, last {} lines ({})", tail.len(), self.dir.display());
            tail.iter().rev().for_each(|l| eprintln!("{l}"));
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
