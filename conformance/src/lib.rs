//! The `conformance` command: the CNI and CSI suites, interop checks,
//! benchmarks and the demo behind one CLI. The suites and the lab are
//! their own crates (`cni-suite`, `csi-suite`, `testkit`), so a plugin's
//! own tests build only what they use.
//!
//! * [`cli`]: the command line.
//! * [`bench`]: ADD/DEL latency, ours vs reference.
//! * [`bench_bgp`]: cni-bgp's agent vs BIRD receiving one BGP feed; a node joining a mesh.
//! * [`bench_overlay`]: the overlay in a lab: convergence, throughput, allocations.
//! * [`bench_csi`]: csi-nfs against the raw NFS and mount operations.
//! * [`bench_csi_rbd`]: csi-rbd against the raw RBD and mount operations (one guest kernel).
//! * [`bench_csi_cloud`]: csi-cloud against the plain AWS SDK, both to moto.
//! * [`demo`]: three containers, pings, verified teardown (and the overlay demo).
//! * [`migrate`]: a container moves between lab hosts with its CSI volume (and `bench migrate`).
//!
//! Errors: [`testkit::util::R`] (`Result<T, String>`), printed by the CLI
//! with exit code 2.

pub mod bench;
pub mod bench_bgp;
pub mod bench_csi;
pub mod bench_csi_cloud;
pub mod bench_csi_rbd;
pub mod bench_overlay;
pub mod bench_policy;
pub mod cli;
pub mod demo;
pub mod migrate;
