//! `csi-nfs`: a CSI driver for NFS shares, compatible with csi-driver-nfs's
//! parameters and volume IDs.
//!
//! - [`volume`]: the volume ID (`server#share#subdir#uuid#onDelete`) and the
//!   CreateVolume parameters, parsed without I/O;
//! - [`nfs`]: the userspace NFS client (libnfs) the controller works through:
//!   it never mounts;
//! - [`controller`]: CreateVolume/DeleteVolume, snapshots, clones, expansion;
//! - [`node`]: NodePublish/NodeUnpublish with the kernel NFS client, stats, info.

pub mod controller;
pub mod nfs;
pub mod node;
pub mod volume;

/// The default driver name, the same as csi-driver-nfs's so that existing
/// StorageClasses and PersistentVolumes keep working.
pub const DRIVER_NAME: &str = "nfs.csi.k8s.io";

/// Driver-wide settings from the command line, shared by both services.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// `--mount-options`: NFS options used when a request carries none
    /// (e.g. `nfsvers=4.1,port=20490`); the controller takes `port` and the
    /// NFS version from them, the node passes them to the kernel.
    pub mount_options: String,
    /// `--state-dir`: where the controller keeps the list of shares it has
    /// made volumes or snapshots on (`shares.json`), so that a restarted
    /// controller lists them again. `None`: kept in memory only.
    pub state_dir: Option<std::path::PathBuf>,
}

/// Registers csi-nfs's own metrics (docs/csi-nfs.md, "Metrics"), read at
/// scrape time: the controller's NFS connections and known shares. The
/// per-call metrics come from csi-core's server runner.
pub fn register_metrics(registry: &mut prom_endpoint::Registry, controller: &controller::ControllerService) {
    use prom_endpoint::{FnCounter, FnGauge};
    FnGauge::register(
        registry,
        "csi_nfs_connections_open",
        "NFS connections the controller holds open (in use or idle in the pool)",
        nfs::open_connections,
    );
    FnGauge::register(registry, "csi_nfs_connections_idle", "Idle NFS connections kept in the pool for reuse", || {
        nfs::pool::idle_total() as i64
    });
    FnCounter::register(registry, "csi_nfs_connects", "NFS connections opened by the controller", || {
        nfs::pool::counters().0
    });
    FnCounter::register(registry, "csi_nfs_connection_reuses", "NFS calls served on a pooled connection", || {
        nfs::pool::counters().1
    });
    FnGauge::register(
        registry,
        "csi_nfs_shares_known",
        "NFS shares the controller has volumes or snapshots on (ListVolumes walks these)",
        controller.known_shares_gauge(),
    );
}
