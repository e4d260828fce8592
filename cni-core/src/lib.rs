//! CNI 1.1.0 plumbing shared by every plugin in this repository.
//!
//! The crate owns everything the spec defines and nothing a plugin decides:
//! the wire types and their per-version encodings ([`types`]), version
//! negotiation ([`version`]), the well-known error codes ([`error`]),
//! `CNI_ARGS` ([`args`]), the environment contract and verb dispatch
//! ([`skel`]), delegation to other plugins through `CNI_PATH`
//! ([`delegate`]) and logging that never touches stdout ([`log`]). [`names`]
//! holds the naming helpers the plugins share (a stable hash, veth aliases,
//! record and nft table names), each plugin passing its own prefix.

pub mod args;
pub mod delegate;
pub mod error;
pub mod log;
pub mod names;
pub mod skel;
pub mod types;
pub mod version;

pub use error::{Code, Error, Result};
pub use skel::{Command, Context, Plugin};
pub use types::{Attachment, CniResult, Dns, Interface, IpConfig, NetConf, Route};
pub use version::Version;
