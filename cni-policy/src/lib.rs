//! `cni-policy`: the ACL policy of issue #14 plugged into any CNI network.
//!
//! One binary, two faces (as `cni-overlay`): with `CNI_COMMAND` set it is a chained CNI plugin
//! (`type: "cni-policy"`, listed after the network plugin) that registers each container
//! interface as an endpoint and applies the policy files before ADD returns; without it, the
//! operator's commands `watch`, `check`, `status` and `label`.
//!
//! - [`registry`]: the endpoint registry in the state directory (one JSON file per endpoint,
//!   written atomically) and the lock every writer holds.
//! - [`reconcile`]: policy files + registry → [`policy::compile`] → [`policy::engine::Engine`],
//!   the one path every writer (plugin, `watch`, `label`) goes through.
//! - [`cluster`]: the endpoints of every host, shared through etcd.
//! - [`plugin`]: the CNI verbs. [`cli`]: the commands. [`watch`]: the daemon.

pub mod cli;
pub mod cluster;
pub mod plugin;
pub mod reconcile;
pub mod registry;
pub mod watch;

use std::path::PathBuf;

/// Where policy files are read when the config names no `policyDir`.
pub const DEFAULT_POLICY_DIR: &str = "/etc/cni/policy.d";
/// The registry and the engine's state when the config names no `stateDir`.
pub const DEFAULT_STATE_DIR: &str = "/run/cni-policy";

/// The crate's errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A policy file that does not parse or validate (`file:line: field: message`), or a policy
    /// directory that cannot be read.
    #[error("{0}")]
    Policy(#[from] policy::Error),
    /// The policy directory does not exist (never read as "no policy": that would fail open).
    #[error("policy directory {} does not exist", .0.display())]
    NoPolicyDir(PathBuf),
    #[error("{what} {}: {source}", path.display())]
    Io { what: &'static str, path: PathBuf, source: std::io::Error },
    #[error("{} is not a valid registry entry: {source}", path.display())]
    Entry { path: PathBuf, source: serde_json::Error },
    /// The engine could not apply or check the compiled policy.
    #[error("{0}")]
    Engine(String),
    /// No endpoint of this container is registered.
    #[error("no endpoint of container {0:?} is registered")]
    UnknownContainer(String),
    /// A `label` argument that is not `key=value` or `key-`.
    #[error("bad label {0:?}: want key=value, or key- to remove")]
    BadLabel(String),
    /// Checking an endpoint found something out of order.
    #[error("{0}")]
    Check(String),
    /// `watch --dir` names another policy directory than the plugin's `policyDir` recorded in
    /// the state directory: the two would fight over the tables.
    #[error(
        "--dir {} is not the policy directory the plugin uses ({}, recorded in {}): the two would \
         apply different policies to the same tables",
        dir.display(),
        recorded.display(),
        config.display()
    )]
    DirMismatch { dir: PathBuf, recorded: PathBuf, config: PathBuf },
    /// Bad cluster settings (`etcdEndpoints`, `etcdPrefix`, TLS files, `nodeName`).
    #[error("{0}")]
    Cluster(String),
    /// etcd did not answer, or refused a request.
    #[error("{0}")]
    Etcd(#[from] etcd_kv::Error),
}

impl Error {
    pub(crate) fn io(what: &'static str, path: impl Into<PathBuf>, source: std::io::Error) -> Error {
        Error::Io { what, path: path.into(), source }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
