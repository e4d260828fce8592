//! The agent's two Unix sockets in its state directory.
//!
//! * `status.sock` ([`crate::status`]'s protocol): one JSON line
//!   `{"ready":…}` per connection. It exists only while the agent runs:
//!   a file left by a killed agent has nobody listening, which a client
//!   sees as "not ready".
//! * `control.sock`: the client writes one line, `status` or `routes`, and
//!   reads one JSON line back ([`StatusReply`], [`RoutesReply`], or
//!   `{"error":"…"}`), then the agent closes. `cni-bgp status|routes` use it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::unix::net::UnixStream as StdUnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader as TokioBufReader};
use tokio::net::UnixListener;
use tokio::sync::{mpsc, oneshot};

use crate::speaker::{PeerStatus, RouteInfo};
use crate::status::{self, Answer};

/// The control socket's file name under the state directory.
pub const CONTROL_SOCKET: &str = "control.sock";
/// Longest request line.
const MAX_REQUEST: usize = 256;
/// Longest answer a client reads (100k routes fit).
const MAX_ANSWER: u64 = 256 * 1024 * 1024;

/// This node, in `status`'s answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeInfo {
    pub name: String,
    pub ipv4: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
    #[serde(rename = "as")]
    pub as_number: u32,
    pub router_id: Ipv4Addr,
    pub listen_port: u16,
    pub route_reflector: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<Ipv4Addr>,
    pub ready: bool,
    /// The prefixes this node originates (own blocks and borrowed addresses).
    #[serde(default)]
    pub advertised: Vec<IpNetwork>,
}

/// `status`: the sessions and this node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StatusReply {
    pub node: NodeInfo,
    pub peers: Vec<PeerStatus>,
}

/// One route of ours in the kernel (protocol 76).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstalledRoute {
    pub prefix: IpNetwork,
    /// "unicast" or "blackhole".
    pub kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dev: Option<String>,
}

/// `routes`: the Loc-RIB and what is in the kernel under our protocol.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RoutesReply {
    pub learned: Vec<RouteInfo>,
    pub installed: Vec<InstalledRoute>,
}

/// A request the main loop answers (it owns the speaker and the FIB).
#[derive(Debug)]
pub enum Request {
    Status(oneshot::Sender<StatusReply>),
    Routes(oneshot::Sender<RoutesReply>),
}

/// The two listening sockets; their files are removed on drop.
pub struct Sockets {
    paths: Vec<PathBuf>,
    answer: Arc<Mutex<Answer>>,
}

impl Sockets {
    /// Creates the state directory, refuses a state directory another live
    /// agent serves, removes the socket files a dead one left, and binds
    /// both sockets (status answers not ready until [`Sockets::set`]).
    pub fn bind(state_dir: &Path, requests: mpsc::Sender<Request>) -> std::io::Result<Sockets> {
        std::fs::create_dir_all(state_dir)?;
        let status_path = status::socket_path(state_dir);
        let control_path = state_dir.join(CONTROL_SOCKET);
        if StdUnixStream::connect(&status_path).is_ok() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::AddrInUse,
                format!("another agent serves {} (--state-dir)", status_path.display()),
            ));
        }
        for p in [&status_path, &control_path] {
            match std::fs::remove_file(p) {
                Ok(()) => tracing::info!(path = %p.display(), "removed a socket file left by an earlier agent"),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(e),
            }
        }
        let answer = Arc::new(Mutex::new(Answer { ready: false, message: Some("the agent is starting".into()) }));
        let st = UnixListener::bind(&status_path)?;
        // Removed on drop, also when the second bind fails.
        let mut sockets = Sockets { paths: vec![status_path], answer: answer.clone() };
        let ctl = UnixListener::bind(&control_path)?;
        sockets.paths.push(control_path);
        tokio::spawn(serve_status(st, answer.clone()));
        tokio::spawn(serve_control(ctl, requests, answer));
        Ok(sockets)
    }

    /// What status.sock answers from now on.
    pub fn set(&self, a: Answer) {
        *self.answer.lock().unwrap() = a;
    }
}

impl Drop for Sockets {
    fn drop(&mut self) {
        for p in &self.paths {
            let _ = std::fs::remove_file(p);
        }
    }
}

async fn serve_status(l: UnixListener, answer: Arc<Mutex<Answer>>) {
    loop {
        let Ok((mut s, _)) = l.accept().await else { continue };
        let line = answer.lock().unwrap().to_line();
        tokio::spawn(async move {
            let _ = tokio::time::timeout(status::TIMEOUT, s.write_all(line.as_bytes())).await;
        });
    }
}

async fn serve_control(l: UnixListener, requests: mpsc::Sender<Request>, answer: Arc<Mutex<Answer>>) {
    loop {
        let Ok((s, _)) = l.accept().await else { continue };
        let requests = requests.clone();
        // Until ready the main loop does not serve requests: say why.
        let starting = {
            let a = answer.lock().unwrap();
            (!a.ready).then(|| a.message.clone().unwrap_or_else(|| "not ready".into()))
        };
        tokio::spawn(async move {
            let (r, mut w) = s.into_split();
            let mut line = String::new();
            let mut r = TokioBufReader::new(tokio::io::AsyncReadExt::take(r, MAX_REQUEST as u64));
            let read = tokio::time::timeout(Duration::from_secs(5), r.read_line(&mut line)).await;
            let reply = match (read, line.trim()) {
                (Ok(Ok(_)), "status" | "routes") if starting.is_some() => Some(
                    serde_json::json!({ "error": format!("not ready: {}", starting.unwrap_or_default()) }).to_string(),
                ),
                (Ok(Ok(_)), "status") => {
                    let (tx, rx) = oneshot::channel();
                    match requests.send(Request::Status(tx)).await {
                        Ok(()) => rx.await.map(|r| serde_json::to_string(&r).expect("serializable")).ok(),
                        Err(_) => None,
                    }
                }
                (Ok(Ok(_)), "routes") => {
                    let (tx, rx) = oneshot::channel();
                    match requests.send(Request::Routes(tx)).await {
                        Ok(()) => rx.await.map(|r| serde_json::to_string(&r).expect("serializable")).ok(),
                        Err(_) => None,
                    }
                }
                (Ok(Ok(_)), other) => Some(
                    serde_json::json!({ "error": format!("unknown request {other:?}: status or routes") }).to_string(),
                ),
                _ => Some(serde_json::json!({ "error": "no request line" }).to_string()),
            };
            let reply = reply.unwrap_or_else(|| serde_json::json!({ "error": "the agent is stopping" }).to_string());
            let _ = w.write_all(reply.as_bytes()).await;
            let _ = w.write_all(b"\n").await;
        });
    }
}

/// Why the CLI got no answer.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("no agent control socket at {0} (is the agent running? see --state-dir)")]
    Missing(PathBuf),
    #[error("no agent listening on {path} ({source})")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("talking to the agent on {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("the agent on {path} answered: {message}")]
    Agent { path: PathBuf, message: String },
    #[error("the agent's answer on {path} is not what was asked for: {detail}")]
    Malformed { path: PathBuf, detail: String },
}

/// Sends `request` (`status` or `routes`) on `<state_dir>/control.sock`
/// and parses the answer line.
pub fn ask<T: for<'de> Deserialize<'de>>(state_dir: &Path, request: &str, timeout: Duration) -> Result<T, ClientError> {
    let path = state_dir.join(CONTROL_SOCKET);
    let mut s = match StdUnixStream::connect(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(ClientError::Missing(path)),
        Err(source) => return Err(ClientError::Connect { path, source }),
    };
    let io = |source| ClientError::Io { path: path.clone(), source };
    s.set_read_timeout(Some(timeout)).map_err(io)?;
    s.set_write_timeout(Some(timeout)).map_err(io)?;
    s.write_all(format!("{request}\n").as_bytes()).map_err(io)?;
    let mut line = String::new();
    BufReader::new(Read::take(s, MAX_ANSWER)).read_line(&mut line).map_err(io)?;
    let v: serde_json::Value = serde_json::from_str(line.trim_end())
        .map_err(|e| ClientError::Malformed { path: path.clone(), detail: e.to_string() })?;
    if let Some(m) = v.get("error").and_then(|m| m.as_str()) {
        return Err(ClientError::Agent { path, message: m.to_string() });
    }
    serde_json::from_value(v).map_err(|e| ClientError::Malformed { path, detail: e.to_string() })
}
