//! Black-box CNI conformance suite for bridge-like plugins.
//!
//! Every plugin is executed as a process with the spec's environment and
//! stdin; effects are observed with real network namespaces, `ip`, `ping`
//! and TCP connections. Every resource is named `cft-<pid>-<n>` (links
//! `cf<pid36>-<n36>`) and removed by Drop guards, even when a check fails.
//!
//! * [`checks`]: the conformance catalog and [`checks::Suite`].
//! * [`interop`]: ours mixed with the reference plugins, and chaining.
//! * [`chain`]: libcni-style conflist execution.
//! * [`bench`]: ADD/DEL latency, ours vs reference.
//! * [`demo`]: three containers, pings, verified teardown.
//! * [`csi`]: a CSI sanity suite (csi-sanity's specs) against any CSI endpoint.

pub mod bench;
pub mod bench_csi;
pub mod bench_overlay;
pub mod chain;
pub mod checks;
pub mod cli;
pub mod csi;
pub mod csi_process;
pub mod demo;
pub mod ganesha;
pub mod interop;
pub mod lab;
pub mod net;
pub mod netns;
pub mod plugin;
pub mod report;
pub mod util;

pub use checks::{CheckResult, Suite, Verdict};
pub use plugin::{Outcome, PluginSet, Request};
