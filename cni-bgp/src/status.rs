//! The agent's status socket: how STATUS (and anyone else) asks the node
//! agent whether the host can take containers.
//!
//! Protocol: the agent listens on the Unix stream socket
//! `<stateDir>/status.sock` ([`SOCKET_NAME`]). A client connects and reads
//! one line: a JSON object [`Answer`] ending in `\n`, e.g.
//! `{"ready":true}` or `{"ready":false,"message":"no BGP session established"}`;
//! then the agent closes the connection. The client sends nothing.
//! Unknown fields are ignored, so the agent may add some later.

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Default `stateDir` of the plugin and of the agent.
pub const DEFAULT_STATE_DIR: &str = "/run/cni-bgp";
/// The socket's file name under the state directory.
pub const SOCKET_NAME: &str = "status.sock";
/// How long a client waits to connect and for the answer line.
pub const TIMEOUT: Duration = Duration::from_secs(2);
/// Longest answer line read (a longer one is malformed).
const MAX_LINE: u64 = 64 * 1024;

/// The one line the agent writes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// The agent can serve ADD (its config is read, its routes programmed).
    pub ready: bool,
    /// Why not, in words (or anything worth knowing when ready).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Answer {
    /// The line the agent writes, newline included.
    pub fn to_line(&self) -> String {
        let mut s = serde_json::to_string(self).unwrap_or_else(|_| r#"{"ready":false}"#.to_string());
        s.push('\n');
        s
    }
}

/// Why no answer came.
#[derive(Debug, thiserror::Error)]
pub enum QueryError {
    #[error("no agent status socket at {0}")]
    Missing(PathBuf),
    #[error("no agent listening on {path} ({source})")]
    Connect { path: PathBuf, source: std::io::Error },
    #[error("reading the agent's answer on {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("the agent's answer on {path} is not a status line: {detail}")]
    Malformed { path: PathBuf, detail: String },
}

pub fn socket_path(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_NAME)
}

/// Connects to `path` and reads the agent's answer.
pub fn query(path: &Path, timeout: Duration) -> Result<Answer, QueryError> {
    let stream = match UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Err(QueryError::Missing(path.to_path_buf())),
        Err(source) => return Err(QueryError::Connect { path: path.to_path_buf(), source }),
    };
    let read_err = |source| QueryError::Read { path: path.to_path_buf(), source };
    stream.set_read_timeout(Some(timeout)).map_err(read_err)?;
    let mut line = String::new();
    BufReader::new(std::io::Read::take(stream, MAX_LINE)).read_line(&mut line).map_err(read_err)?;
    if !line.ends_with('\n') {
        return Err(QueryError::Malformed { path: path.to_path_buf(), detail: "no complete line".into() });
    }
    serde_json::from_str(line.trim_end())
        .map_err(|e| QueryError::Malformed { path: path.to_path_buf(), detail: e.to_string() })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_round_trip_and_tolerate_new_fields() {
        let a = Answer { ready: false, message: Some("no session".into()) };
        assert_eq!(a.to_line(), "{\"ready\":false,\"message\":\"no session\"}\n");
        let b: Answer = serde_json::from_str(r#"{"ready":true,"peers":3}"#).unwrap();
        assert_eq!(b, Answer { ready: true, message: None });
    }
}
