//! The `csi-cloud` binary as a child process on a unix socket of its own,
//! pointed at a moto: what a CO (or `conformance csi`) talks to.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How long the driver gets to serve (it asks EC2 about its instance first).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running `csi-cloud`; SIGTERM (then SIGKILL) on drop, what is mounted
/// under its directory unmounted, its log printed when the test is failing.
pub struct CsiCloud {
    child: Child,
    dir: tempfile::TempDir,
    name: String,
}

/// The binary cargo built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_csi-cloud"))
}

impl CsiCloud {
    /// Starts `csi-cloud --endpoint unix://<dir>/csi.sock --state-dir <dir>/state ARGS`
    /// with moto's environment, and returns once the socket exists.
    pub fn start(name: &str, moto: &testkit::moto::Moto, args: &[&str]) -> CsiCloud {
        let dir = tempfile::Builder::new().prefix(&format!("csi-cloud-{name}-")).tempdir_in("/var/tmp").unwrap();
        let sock = dir.path().join("csi.sock");
        let log = std::fs::File::create(dir.path().join("driver.log")).unwrap();
        let child = Command::new(bin())
            .arg(format!("--endpoint=unix://{}", sock.display()))
            .arg(format!("--state-dir={}", dir.path().join("state").display()))
            .args(["--log-level", "info"])
            .args(args)
            .envs(moto.env())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin().display()));
        let mut d = CsiCloud { child, dir, name: name.to_string() };
        let started = Instant::now();
        while !sock.exists() {
            if let Ok(Some(st)) = d.child.try_wait() {
                panic!("csi-cloud {name} exited ({st}) before serving:\n{}", d.log());
            }
            assert!(
                started.elapsed() < START_TIMEOUT,
                "csi-cloud {name}: no socket after {START_TIMEOUT:?}:\n{}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.dir.path().join("csi.sock").display())
    }

    /// A directory of this driver's own (state, scratch).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("driver.log")).unwrap_or_default()
    }

    /// A gRPC channel to it.
    pub async fn channel(&self) -> tonic::transport::Channel {
        let ep = csi_core::flags::Endpoint::Unix(self.dir.path().join("csi.sock"));
        csi_core::client::connect(&ep).await.unwrap()
    }

    /// Kills it at once (a node that dies), without cleaning anything.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for CsiCloud {
    fn drop(&mut self) {
        // Signal it only while it is ours: not once reaped (`kill`), when
        // its pid may belong to another process.
        if matches!(self.child.try_wait(), Ok(None)) {
            let pid = nix::unistd::Pid::from_raw(self.child.id() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        }
        let started = Instant::now();
        while matches!(self.child.try_wait(), Ok(None)) && started.elapsed() < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // What a failed test left mounted (the loop devices under it are
        // freed by the kernel once these go).
        unmount_under(self.dir.path());
        if std::thread::panicking() {
            let log = self.log();
            let tail: Vec<&str> = log.lines().rev().take(60).collect();
            eprintln!("--- csi-cloud {} log, last {} lines", self.name, tail.len());
            tail.iter().rev().for_each(|l| eprintln!("{l}"));
        }
    }
}

/// Unmounts (lazily) everything mounted under `dir`, deepest first: what a
/// failed test left, or what a dead node's kernel no longer holds.
pub fn unmount_under(dir: &Path) -> usize {
    let mut ours = mounts_under(dir);
    ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in &ours {
        let _ = nix::mount::umount2(m.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
    ours.len()
}

/// The mount points under `dir` (this mount namespace).
pub fn mounts_under(dir: &Path) -> Vec<String> {
    let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    table
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .map(str::to_string)
        .collect()
}
