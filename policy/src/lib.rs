//! ACL policy: the model that Calico
//! (`projectcalico.org/v3` NetworkPolicy, GlobalNetworkPolicy, Tier) and Kubernetes
//! (`networking.k8s.io/v1` NetworkPolicy) files map to, their parsers, the Calico selector
//! language, and a reference evaluator written from the specifications, all pure apart from
//! reading policy files. The nftables compiler builds on the model; the [`engine`] is the only
//! part that touches the kernel (through `linux_net::nft`); the differential test holds the
//! kernel to the evaluator.

pub mod compile;
pub mod engine;
pub mod eval;
pub mod file;
pub mod model;
pub mod selector;

use std::path::PathBuf;

pub use compile::{compile, Compiled};
pub use eval::{evaluate, evaluate_delivery, evaluate_path, Evaluation, Packet, Verdict};
pub use file::{dir_files, load_dir, load_file, parse_files, parse_str};
pub use model::{Action, Direction, Endpoint, Policy, PolicySet, Rule};
pub use selector::{Selector, SelectorError};

/// The crate's errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A policy file that does not parse or validate: file, line (when known), and the message,
    /// which starts with the field's path (`spec.ingress[0].action: …`).
    #[error("{}:{}: {message}", file.display(), line.map_or_else(|| "?".to_string(), |l| l.to_string()))]
    File { file: PathBuf, line: Option<usize>, message: String },
    #[error("read {}: {source}", path.display())]
    Io { path: PathBuf, source: std::io::Error },
    /// The kernel refused or could not be asked (nothing was changed).
    #[error(transparent)]
    Nft(#[from] linux_net::nft::NftError),
    /// The engine's persisted state could not be written.
    #[error("policy state {}: {message}", path.display())]
    State { path: PathBuf, message: String },
    /// A table the engine would change belongs to another state directory
    /// that still exists and still dispatches endpoints (`entries` verdict-map
    /// entries): changing it would strip their protection. Nothing was sent.
    #[error("table {table} is managed from state directory {} ({entries} dispatch entries), not from {}: two state directories cannot share one table; use one stateDir per node, or remove the other one's endpoints", owner.display(), ours.display())]
    Owner { table: String, owner: PathBuf, ours: PathBuf, entries: usize },
    /// CHECK found an endpoint not protected as the compiled policy says.
    #[error("policy check: {0}")]
    Check(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
