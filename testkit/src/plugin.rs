//! Executing a plugin as a black box: environment in, stdin in, stdout and
//! exit status out, wall time from spawn to exit.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::util::{clip, SYS_PATH};

/// How long one plugin process may run before it is killed.
pub const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Where plugins live: the first directory holds the plugin under test, the
/// whole list becomes `CNI_PATH` (for IPAM and chained plugins).
#[derive(Debug, Clone)]
pub struct PluginSet {
    pub dirs: Vec<PathBuf>,
}

impl PluginSet {
    pub fn new(plugin_dir: impl Into<PathBuf>) -> PluginSet {
        PluginSet { dirs: vec![plugin_dir.into()] }
    }

    pub fn with_dir(mut self, dir: impl Into<PathBuf>) -> PluginSet {
        let d = dir.into();
        if !self.dirs.contains(&d) {
            self.dirs.push(d);
        }
        self
    }

    pub fn cni_path(&self) -> String {
        self.dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":")
    }

    /// The binary for a plugin type: the first directory of `CNI_PATH` holding it.
    pub fn find(&self, plugin_type: &str) -> Option<PathBuf> {
        self.dirs.iter().map(|d| d.join(plugin_type)).find(|p| p.is_file())
    }

    /// Runs the plugin named by `plugin_type`.
    pub fn exec(&self, plugin_type: &str, req: &Request) -> Outcome {
        match self.find(plugin_type) {
            Some(bin) => exec_binary(&bin, &self.cni_path(), req),
            None => Outcome::spawn_failed(format!("plugin {plugin_type:?} not found in {}", self.cni_path())),
        }
    }
}

/// One invocation: the `CNI_*` variables and stdin.
#[derive(Debug, Clone)]
pub struct Request {
    pub env: Vec<(String, String)>,
    pub stdin: Vec<u8>,
    /// Leave `CNI_PATH` out (to test the plugin's validation).
    pub omit_path: bool,
}

impl Request {
    pub fn new(command: &str, conf: &Value) -> Request {
        Request {
            env: vec![("CNI_COMMAND".into(), command.into())],
            stdin: conf.to_string().into_bytes(),
            omit_path: false,
        }
    }

    /// ADD/CHECK/DEL with the usual variables; `netns` None leaves CNI_NETNS unset.
    pub fn container(command: &str, conf: &Value, container_id: &str, netns: Option<&str>, ifname: &str) -> Request {
        let mut r = Request::new(command, conf).set("CNI_CONTAINERID", container_id).set("CNI_IFNAME", ifname);
        if let Some(ns) = netns {
            r = r.set("CNI_NETNS", ns);
        }
        r
    }

    pub fn set(mut self, k: &str, v: &str) -> Request {
        self.env.retain(|(x, _)| x != k);
        self.env.push((k.into(), v.into()));
        self
    }

    pub fn unset(mut self, k: &str) -> Request {
        self.env.retain(|(x, _)| x != k);
        if k == "CNI_PATH" {
            self.omit_path = true;
        }
        self
    }

    pub fn raw_stdin(mut self, s: &[u8]) -> Request {
        self.stdin = s.to_vec();
        self
    }
}

/// What a plugin process did.
#[derive(Debug, Clone)]
pub struct Outcome {
    /// Exit code; None if killed by a signal or never started.
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    /// Spawn to exit.
    pub elapsed: Duration,
    pub spawn_error: Option<String>,
}

impl Outcome {
    /// An outcome for a process that never ran (or whose result was lost).
    pub fn spawn_failed(msg: String) -> Outcome {
        Outcome {
            status: None,
            stdout: String::new(),
            stderr: String::new(),
            elapsed: Duration::ZERO,
            spawn_error: Some(msg),
        }
    }

    pub fn success(&self) -> bool {
        self.status == Some(0)
    }

    pub fn json(&self) -> Option<Value> {
        serde_json::from_str(self.stdout.trim()).ok()
    }

    /// The `code` of the error object on stdout, if there is one.
    pub fn error_code(&self) -> Option<u64> {
        self.json()?.get("code")?.as_u64()
    }

    /// One line for a report: exit status, error object or stdout, stderr.
    pub fn describe(&self) -> String {
        if let Some(e) = &self.spawn_error {
            return e.clone();
        }
        let st = match self.status {
            Some(c) => format!("exit {c}"),
            None => "killed".into(),
        };
        // Compact a pretty-printed JSON error so it fits on one table line.
        let out = self.json().map(|j| j.to_string()).unwrap_or_else(|| self.stdout.clone());
        let mut s = format!("{st}; stdout: {}", clip(&out, 240));
        if !self.stderr.trim().is_empty() {
            s.push_str(&format!("; stderr: {}", clip(&self.stderr, 200)));
        }
        s
    }
}

/// Spawns `bin` with exactly the CNI environment (plus PATH), feeds stdin,
/// waits for exit (killing it after [`PLUGIN_TIMEOUT`]).
pub fn exec_binary(bin: &Path, cni_path: &str, req: &Request) -> Outcome {
    let mut cmd = Command::new(bin);
    cmd.env_clear().env("PATH", SYS_PATH).stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    if !req.omit_path {
        cmd.env("CNI_PATH", cni_path);
    }
    for (k, v) in &req.env {
        cmd.env(k, v);
    }
    run_with_stdin(cmd, req.stdin.clone(), PLUGIN_TIMEOUT)
}

/// Spawns `cmd`, feeds `stdin` from a thread (so a child that never reads
/// cannot block us), waits; SIGKILL after `timeout`.
pub(crate) fn run_with_stdin(mut cmd: Command, stdin: Vec<u8>, timeout: Duration) -> Outcome {
    cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let program = cmd.get_program().to_owned();
    let start = Instant::now();
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::spawn_failed(format!("spawn {}: {e}", Path::new(&program).display())),
    };
    let input = child.stdin.take();
    let writer = std::thread::spawn(move || {
        if let Some(mut s) = input {
            let _ = s.write_all(&stdin);
        }
    });
    let pid = child.id() as libc::pid_t;
    let (done_tx, done_rx) = mpsc::channel::<()>();
    let watchdog = std::thread::spawn(move || {
        if let Err(mpsc::RecvTimeoutError::Timeout) = done_rx.recv_timeout(timeout) {
            // SAFETY: plain kill(2) on the child we spawned and have not reaped yet.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    });
    let out = child.wait_with_output();
    let elapsed = start.elapsed();
    let _ = done_tx.send(());
    let _ = watchdog.join();
    let _ = writer.join();
    match out {
        Ok(o) => Outcome {
            status: o.status.code(),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
            elapsed,
            spawn_error: None,
        },
        Err(e) => Outcome::spawn_failed(format!("wait {}: {e}", Path::new(&program).display())),
    }
}
