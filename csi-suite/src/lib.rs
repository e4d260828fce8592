//! A CSI sanity suite (csi-sanity's specs) against any CSI endpoint, and
//! what the CSI tests and benchmarks need around a driver: a real
//! nfs-ganesha server and a driver process.
//!
//! * [`csi`]: the specs, their runner and the options (`conformance csi`).
//! * [`csi_process`]: a CSI driver started as a process, ready when its socket answers.
//! * [`ganesha`]: a private nfs-ganesha export for one test.
//! * [`ceph`]: a private single-node Ceph cluster (RBD) on a bridge of its own.
//! * [`guest`]: long-lived guest kernels on a test bridge (the RBD nodes).
//!
//! Errors: a spec's failure is its message (`Result<T, String>`, the suite's
//! `csi::Res`, the same type as [`testkit::util::R`]); the RPC wrappers
//! return the driver's `tonic::Status` unchanged, because the specs check
//! its code. The fixtures ([`ganesha`], [`csi_process`]) return [`Error`],
//! the crate's one error enum, which converts into a message where a
//! caller wants one.

pub mod csi;
mod error;

pub use error::{Error, Result};
pub mod ceph;
pub mod csi_process;
pub mod ganesha;
pub mod guest;
