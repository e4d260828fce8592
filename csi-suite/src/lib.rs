//! A CSI sanity suite (csi-sanity's specs) against any CSI endpoint, and
//! what the CSI tests and benchmarks need around a driver: a real
//! nfs-ganesha server and a driver process.
//!
//! * [`csi`]: the specs, their runner and the options (`conformance csi`).
//! * [`csi_process`]: a CSI driver started as a process, ready when its socket answers.
//! * [`ganesha`]: a private nfs-ganesha export for one test.
//!
//! Errors: the suite's specs fail with a message (`Result<T, String>`, as
//! [`testkit::util::R`]); a spec's failure is its message.

pub mod csi;
pub mod csi_process;
pub mod ganesha;
