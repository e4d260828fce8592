//! `csi-nfs`: a CSI driver for NFS shares, compatible with csi-driver-nfs's
//! parameters and volume IDs.
//!
//! - [`volume`]: the volume ID (`server#share#subdir#uuid#onDelete`) and the
//!   CreateVolume parameters, parsed without I/O;
//! - [`nfs`]: how the controller reaches a share: the userspace NFS client
//!   (libnfs), or for servers it cannot speak to (NFSv4.1/4.2 only) a mount
//!   with the kernel NFS client ([`nfs::kernel`]), behind one interface
//!   ([`nfs::ShareFs`]);
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
    /// `--provisioner`: which NFS client the controller works through.
    pub provisioner: Provisioner,
    /// `--kernel-mount-dir`: where the kernel backend mounts shares
    /// (`None`: [`nfs::kernel::DEFAULT_MOUNT_DIR`]).
    pub kernel_mount_dir: Option<std::path::PathBuf>,
}

/// Which NFS client the controller provisions through (`--provisioner`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Provisioner {
    /// libnfs, unless it cannot speak the server's version (the options
    /// ask for NFSv4.1/4.2, or the server refuses 4.0) and the kernel has an
    /// NFS client: then the kernel client.
    #[default]
    Auto,
    /// libnfs only (NFSv3 and NFSv4.0), never a mount.
    Libnfs,
    /// The kernel NFS client only (a mount of the share per server).
    Kernel,
}

impl std::str::FromStr for Provisioner {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(Provisioner::Auto),
            "libnfs" => Ok(Provisioner::Libnfs),
            "kernel" => Ok(Provisioner::Kernel),
            _ => Err(format!("{s:?}: expected auto, libnfs or kernel")),
        }
    }
}

impl Provisioner {
    /// The flag's value.
    pub fn as_str(self) -> &'static str {
        match self {
            Provisioner::Auto => "auto",
            Provisioner::Libnfs => "libnfs",
            Provisioner::Kernel => "kernel",
        }
    }
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
