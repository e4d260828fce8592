//! Cluster-wide address management: per-host subnets leased from etcd.
//!
//! * [`subnet`]: Flannel-compatible subnet leases in etcd (v3 API): the
//!   `<prefix>/config` network JSON, `<prefix>/subnets/<ip>-<len>` leases
//!   with Flannel's value JSON and acquire order, renewal, watch, removal.
//!   Async (tokio); its users are the overlay agent and admin commands.
//! * [`subnet_file`]: Flannel's `subnet.env` (what the CNI side reads).
//! * [`blocks`]: affine blocks (Calico-style): hosts claim blocks of a
//!   pool in etcd and hand out addresses inside them; the `ipam.cluster`
//!   mode of the plugin and the `remove-host`/`blocks` admin commands.
//! * [`testing`]: a throw-away real etcd server for tests and the lab.
//!
//! See `docs/cluster-ipam.md`.

pub mod blocks;
pub mod subnet;
pub mod subnet_file;
pub mod testing;
