//! VXLAN overlay across hosts (Flannel class): one binary that is a CNI
//! plugin when `CNI_COMMAND` is set ([`plugin`]) and the per-host agent or an
//! admin tool otherwise ([`agent`], [`admin`], their command line in [`cli`],
//! the agent's Prometheus metrics in [`metrics`]).

pub mod admin;
pub mod agent;
pub mod cli;
pub mod metrics;
pub mod plugin;
