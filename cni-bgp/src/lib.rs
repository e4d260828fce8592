//! Routed networking with our own BGP speaker (Calico class). [`fib`] is the
//! node agent's kernel side: learned routes and own-block blackholes under
//! our route protocol number, reconciled across agent restarts. [`plugin`]
//! is the CNI plugin (`type: "cni-bgp"`), [`status`] the one-line protocol
//! through which STATUS asks the agent whether it is ready. [`cluster`] is
//! the cluster-wide BGP config and node registry in etcd, [`cli`] the admin
//! commands that edit it. [`speaker`] is the BGP speaker runtime on tokio
//! (sessions, timers, the RIB) that the agent drives.

pub mod agent;
pub mod cli;
pub mod cluster;
pub mod fib;
pub mod names;
pub mod plugin;
pub mod speaker;
pub mod status;

/// The crate's error: what was being done, and the kernel's or etcd's
/// answer, or which rule a config breaks.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Net(#[from] linux_net::Error),
    /// The BGP config (or an edit of it) breaks a rule: exit code 2 in the CLI.
    #[error("invalid BGP config: {0}")]
    Invalid(#[from] cluster::ConfigError),
    #[error(transparent)]
    Etcd(#[from] etcd_kv::Error),
    /// Another writer of the BGP config kept winning the revision race.
    #[error("the BGP config changed under us {0} times in a row; try again")]
    TooManyRaces(usize),
    /// A command-line flag of the agent breaks a rule (exit code 2); the
    /// message names the flag.
    #[error("{0}")]
    Flag(cluster::ConfigError),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    /// A part of the agent that must run for ever ended.
    #[error("{0}")]
    Stopped(String),
    /// The BGP speaker could not listen on an address (in use, not ours).
    #[error("BGP listener on {addr}: {source}")]
    Listen { addr: std::net::SocketAddr, source: std::io::Error },
    /// A speaker setting out of range.
    #[error("invalid speaker config: {0}")]
    SpeakerConfig(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
