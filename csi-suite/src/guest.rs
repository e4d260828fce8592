//! Long-lived guest kernels: the nodes of the csi-rbd tests (the host
//! kernel has no `rbd` or `nbd`).
//!
//! A [`Guest`] is `scripts/guest/run.sh scripts/guest/rbd-node.sh …` on a
//! test bridge (the Ceph fixture's): a guest kernel at a fixed address that
//! runs the node plugin on `tcp://ADDR:port` in the foreground and a small
//! command server next to it ([`Guest::sh`], the test's hands inside the
//! node). The test drives the plugin over gRPC; it is ready when it answers
//! Probe ([`Guest::wait_csi`], a bounded poll).
//!
//! [`Guest::kill`] SIGKILLs every process of the guest's session (run.sh,
//! `timeout`, vng, QEMU): for the tests that is "the node dies" — no
//! unstage, no unmap, its kernel client simply vanishes. Drop does the same.
//! Boots are expensive under TCG (15-60 s): batch work into few guests.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// How long one command of [`Guest::sh`] may run (the guest side stops it at 300 s).
pub const SH_TIMEOUT: Duration = Duration::from_secs(330);

/// What to boot.
#[derive(Clone, Debug)]
pub struct GuestConfig {
    /// A name for logs (the node ID).
    pub name: String,
    /// The host bridge the guest's NIC joins.
    pub bridge: String,
    /// The guest's address on it.
    pub addr: Ipv4Addr,
    /// The bridge's prefix length.
    pub prefix_len: u8,
    /// Modules loaded before the script (`GUEST_MODULES`).
    pub modules: String,
    /// vCPUs (`GUEST_CPUS`).
    pub cpus: u32,
    /// Memory (`GUEST_MEMORY`, e.g. `1G`).
    pub memory: String,
    /// Lifetime bound: run.sh kills the guest after it (`GUEST_TIMEOUT`).
    pub lifetime: Duration,
    /// The guest-side script (under the repository root).
    pub script: PathBuf,
    /// Its arguments.
    pub args: Vec<String>,
}

impl GuestConfig {
    /// A guest that runs `scripts/guest/rbd-node.sh ADDR csi_port exec_port BIN ARGS…`.
    pub fn node(name: &str, bridge: &str, addr: Ipv4Addr, prefix_len: u8, bin: &Path, args: &[String]) -> GuestConfig {
        let mut a =
            vec![addr.to_string(), NODE_CSI_PORT.to_string(), NODE_EXEC_PORT.to_string(), bin.display().to_string()];
        a.extend(args.iter().cloned());
        GuestConfig {
            name: name.to_string(),
            bridge: bridge.to_string(),
            addr,
            prefix_len,
            modules: "rbd nbd xfs".into(),
            cpus: 1,
            memory: "1G".into(),
            lifetime: Duration::from_secs(1800),
            script: repo_root().join("scripts/guest/rbd-node.sh"),
            args: a,
        }
    }
}

/// The port of the node plugin in a [`GuestConfig::node`] guest.
pub const NODE_CSI_PORT: u16 = 10000;
/// The port of the command server in a [`GuestConfig::node`] guest.
pub const NODE_EXEC_PORT: u16 = 10001;

/// The workspace root (where `scripts/` is): [`testkit::util::workspace_root`].
pub fn repo_root() -> PathBuf {
    testkit::util::workspace_root()
}

/// A running guest; its console goes to [`Guest::log_path`] (kept when
/// the test fails, removed otherwise).
#[derive(Debug)]
pub struct Guest {
    name: String,
    addr: Ipv4Addr,
    child: Option<Child>,
    sid: i32,
    log: PathBuf,
    booted: Instant,
}

impl Guest {
    /// Starts the guest (returns at once; see [`Guest::wait_csi`]). The
    /// console goes to a log file next to the test's temp files.
    pub fn boot(cfg: &GuestConfig) -> Result<Guest> {
        let run = repo_root().join("scripts/guest/run.sh");
        let log = std::env::temp_dir().join(format!("guest-{}-{}-{}.log", cfg.name, std::process::id(), cfg.addr));
        let out = std::fs::File::create(&log).map_err(|e| Error::io(format!("create {}", log.display()), e))?;
        let err = out.try_clone().map_err(|e| Error::io("dup guest log", e))?;
        let mut cmd = Command::new("bash");
        cmd.arg(&run)
            .arg(&cfg.script)
            .args(&cfg.args)
            .env("GUEST_NETWORK", format!("bridge:{}", cfg.bridge))
            .env("GUEST_ADDR", format!("{}/{}", cfg.addr, cfg.prefix_len))
            .env("GUEST_MODULES", &cfg.modules)
            .env("GUEST_CPUS", cfg.cpus.to_string())
            .env("GUEST_MEMORY", &cfg.memory)
            .env("GUEST_TIMEOUT", cfg.lifetime.as_secs().to_string())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        // A session of its own: `timeout` in run.sh moves into a process group
        // of its own, so only the session reaches every process (QEMU too).
        // SAFETY: setsid(2) is async-signal-safe; nothing else runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
        }
        let child = cmd.spawn().map_err(|e| Error::io(format!("start {}", run.display()), e))?;
        let sid = child.id() as i32;
        eprintln!("guest {}: booting at {} (console: {})", cfg.name, cfg.addr, log.display());
        Ok(Guest { name: cfg.name.clone(), addr: cfg.addr, child: Some(child), sid, log, booted: Instant::now() })
    }

    /// The guest's address.
    pub fn addr(&self) -> Ipv4Addr {
        self.addr
    }

    /// Its node name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The console log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The console so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Whether the guest (run.sh) is still running.
    pub fn running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }

    /// Waits until the CSI endpoint at `ADDR:port` answers Probe with ready
    /// (bounded by `timeout`), and returns a channel to it. Fails at once
    /// when the guest exits.
    pub async fn wait_csi(&mut self, port: u16, timeout: Duration) -> Result<tonic::transport::Channel> {
        let endpoint = csi_core::flags::Endpoint::Tcp(format!("{}:{port}", self.addr));
        let deadline = Instant::now() + timeout;
        let mut last;
        loop {
            if !self.running() {
                return Err(Error::Driver(format!(
                    "guest {} exited before its plugin served:\n{}",
                    self.name,
                    tail(&self.log(), 40)
                )));
            }
            let attempt = async {
                let ch = csi_core::client::connect(&endpoint).await.map_err(|e| e.to_string())?;
                let mut id = csi_core::pb::identity_client::IdentityClient::new(ch.clone());
                let r = id.probe(csi_core::pb::ProbeRequest {}).await.map_err(|e| e.to_string())?.into_inner();
                if r.ready == Some(false) {
                    return Err("probe: not ready".to_string());
                }
                Ok(ch)
            };
            match tokio::time::timeout(Duration::from_secs(3), attempt).await {
                Ok(Ok(ch)) => {
                    eprintln!(
                        "guest {}: plugin ready {:.1}s after boot",
                        self.name,
                        self.booted.elapsed().as_secs_f64()
                    );
                    return Ok(ch);
                }
                Ok(Err(e)) => last = e,
                Err(_) => last = "probe timed out".into(),
            }
            if Instant::now() > deadline {
                return Err(Error::Driver(format!(
                    "guest {}: plugin at {endpoint} not ready after {timeout:?} ({last}); console:\n{}",
                    self.name,
                    tail(&self.log(), 40)
                )));
            }
            // The poll interval of a bounded wait for a remote condition.
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Runs `sh -c cmd` in the guest (through the command server of
    /// rbd-node.sh) and returns its exit status and output (stdout and
    /// stderr together).
    pub fn sh(&self, cmd: &str) -> Result<(i32, String)> {
        let addr = SocketAddr::from((self.addr, NODE_EXEC_PORT));
        let what = format!("guest {}: sh {cmd:?}", self.name);
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).map_err(|e| Error::io(&what, e))?;
        s.set_read_timeout(Some(SH_TIMEOUT)).map_err(|e| Error::io(&what, e))?;
        s.write_all(cmd.as_bytes()).map_err(|e| Error::io(&what, e))?;
        s.shutdown(Shutdown::Write).map_err(|e| Error::io(&what, e))?;
        let mut out = Vec::new();
        s.read_to_end(&mut out).map_err(|e| Error::io(&what, e))?;
        let text = String::from_utf8_lossy(&out).into_owned();
        let (body, status) = text
            .trim_end()
            .rsplit_once("__EXIT__ ")
            .ok_or_else(|| Error::Driver(format!("{what}: no exit status in {text:?}")))?;
        let rc = status.trim().parse().map_err(|_| Error::Driver(format!("{what}: bad exit status {status:?}")))?;
        Ok((rc, body.trim_end().to_string()))
    }

    /// [`Guest::sh`] that must succeed; returns the output.
    pub fn sh_ok(&self, cmd: &str) -> Result<String> {
        match self.sh(cmd)? {
            (0, out) => Ok(out),
            (rc, out) => Err(Error::Driver(format!("guest {}: `{cmd}` exited {rc}: {out}", self.name))),
        }
    }

    /// SIGKILLs every process of the guest (QEMU included): the node dies
    /// without a chance to unstage. Idempotent.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        // Twice: a process forked while the first pass ran is caught by the second.
        for _ in 0..2 {
            for pid in session_members(self.sid) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            }
        }
        let _ = child.kill();
        let _ = child.wait();
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let alive = self.child.is_some();
        self.kill();
        if std::thread::panicking() {
            if alive {
                eprintln!("--- guest {} console, last lines ({})", self.name, self.log.display());
                eprintln!("{}", tail(&self.log(), 80));
            }
        } else {
            let _ = std::fs::remove_file(&self.log);
        }
    }
}

/// The processes whose session is `sid` (field 6 of /proc/PID/stat).
fn session_members(sid: i32) -> Vec<i32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            // The command name (field 2) may hold spaces: split after its ')'.
            let Some((_, rest)) = stat.rsplit_once(')') else {
                return false;
            };
            rest.split_whitespace().nth(3).and_then(|s| s.parse::<i32>().ok()) == Some(sid)
        })
        .collect()
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_session_is_found_whole_and_killed_whole() {
        // A session leader whose grandchild moves to a process group of its
        // own, as `timeout` does in run.sh: killpg would miss it.
        let mut cmd = Command::new("bash");
        // `set -m`: the background job gets a process group of its own.
        cmd.args(["-c", "set -m; sleep 300 & exec sleep 301"]);
        // SAFETY: setsid(2) is async-signal-safe.
        unsafe {
            cmd.pre_exec(|| nix::unistd::setsid().map(|_| ()).map_err(std::io::Error::from));
        }
        let child = cmd.spawn().unwrap();
        let sid = child.id() as i32;
        let deadline = Instant::now() + Duration::from_secs(10);
        while session_members(sid).len() < 2 {
            assert!(Instant::now() < deadline, "members of {sid}: {:?}", session_members(sid));
            std::thread::sleep(Duration::from_millis(10));
        }
        let pgrp = |pid: i32| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            stat.rsplit_once(')').and_then(|(_, r)| r.split_whitespace().nth(2).map(str::to_string))
        };
        let groups: std::collections::BTreeSet<_> = session_members(sid).into_iter().map(pgrp).collect();
        assert!(groups.len() >= 2, "the background job shares the leader's process group: {groups:?}");
        let mut g = Guest {
            name: "t".into(),
            addr: Ipv4Addr::LOCALHOST,
            child: Some(child),
            sid,
            log: std::env::temp_dir().join(format!("guest-test-{}.log", std::process::id())),
            booted: Instant::now(),
        };
        g.kill();
        let deadline = Instant::now() + Duration::from_secs(10);
        // Killed processes linger as zombies until reaped by init: wait for them to go.
        while session_members(sid).iter().any(|p| !is_zombie(*p)) {
            assert!(Instant::now() < deadline, "still alive in session {sid}: {:?}", session_members(sid));
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(!g.running());
    }

    fn is_zombie(pid: i32) -> bool {
        std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .ok()
            .and_then(|s| s.rsplit_once(')').map(|(_, r)| r.trim_start().starts_with('Z')))
            .unwrap_or(true)
    }

    #[test]
    fn tails() {
        assert_eq!(tail("a\nb\nc", 2), "b\nc");
        assert_eq!(tail("a", 5), "a");
    }
}
