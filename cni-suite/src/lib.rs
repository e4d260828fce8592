//! Black-box CNI conformance suite for bridge-like plugins.
//!
//! Every plugin is executed as a process with the spec's environment and
//! stdin; effects are observed with real network namespaces, `ip`, `ping`
//! and TCP connections (all from [`testkit`]).
//!
//! * [`checks`]: the conformance catalog and [`checks::Suite`].
//! * [`interop`]: ours mixed with the reference plugins, and chaining.
//! * [`chain`]: libcni-style conflist execution.
//!
//! Errors: [`testkit::util::R`] (`Result<T, String>`) throughout, like the
//! rest of the test kit; a check's failure is its message.

pub mod chain;
pub mod checks;
pub mod interop;

pub use checks::{CheckResult, Suite, Verdict};
pub use testkit::plugin::{Outcome, PluginSet, Request};
