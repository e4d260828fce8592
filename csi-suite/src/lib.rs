//! A CSI sanity suite (csi-sanity's specs) against any CSI endpoint, and
//! what the CSI tests and benchmarks need around a driver: a real
//! nfs-ganesha server and a driver process.
//!
//! * [`csi`]: the specs, their runner and the options (`conformance csi`).
//! * [`csi_process`]: a CSI driver started as a process, ready when its socket answers.
//! * [`ganesha`]: a private nfs-ganesha export for one test.
//!
//! Errors: `Result<T, String>` (the suite's `csi::Res`, the same type as
//! [`testkit::util::R`]): a spec's failure is its message. The RPC wrappers
//! return the driver's `tonic::Status` unchanged, because the specs check
//! its code. The one exception is [`ganesha`], which still returns
//! `std::io::Result` (process and file I/O only); it is to move to the
//! message style with its next change.

pub mod csi;
pub mod csi_process;
pub mod ganesha;
