//! `csi-rbd`: a CSI driver for Ceph RBD block volumes, compatible with
//! ceph-csi's `rbd.csi.ceph.com` (StorageClass parameters, secrets,
//! `config.json`, volume IDs, the omap journal).
//!
//! - [`config`]: ceph-csi's cluster config (`--cluster-config`): clusterID → monitors;
//! - [`volume_id`]: the volume ID (`0001-<len>-<clusterID>-<poolID>-<uuid>`),
//!   encoded and decoded without I/O;
//! - [`params`]: CreateVolume/CreateSnapshot parameters, checked without I/O;
//! - [`connection`]: cached cluster connections per (monitors, user, key);
//! - [`journal`]: ceph-csi's omap journal (CSI name → image), the source of
//!   idempotency across retries, restarts and controller replicas;
//! - [`controller`]: the Controller service.
//! - [`attach`]: exclusive attach (one read-write node per image) and fencing;
//! - [`node`]: the Node service (map, mkfs, mount, stage records);
//! - [`takeover`]: `csi-rbd takeover`, fencing a dead node by hand.

pub mod attach;
pub mod config;
pub mod connection;
pub mod controller;
pub mod journal;
pub mod node;
pub mod params;
pub mod takeover;
pub mod volume_id;

use std::path::PathBuf;
use std::time::Duration;

/// The default driver name, the same as ceph-csi's RBD driver so that
/// existing StorageClasses and PersistentVolumes keep working.
pub const DRIVER_NAME: &str = "rbd.csi.ceph.com";

/// Default `--cluster-config`: where ceph-csi's deployments mount the
/// `ceph-csi-config` ConfigMap.
pub const DEFAULT_CLUSTER_CONFIG: &str = "/etc/ceph-csi-config/config.json";

/// Driver-wide settings from the command line.
#[derive(Clone, Debug)]
pub struct Config {
    /// `--cluster-config`: ceph-csi's config.json, read on every lookup.
    pub cluster_config: PathBuf,
    /// `--ceph-timeout`: the bound on connecting to a cluster and on each
    /// Ceph call.
    pub ceph_timeout: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Config { cluster_config: PathBuf::from(DEFAULT_CLUSTER_CONFIG), ceph_timeout: Duration::from_secs(10) }
    }
}

/// Registers csi-rbd's own metrics, read at scrape time: the controller's
/// cluster connections. The per-call metrics come from csi-core's server
/// runner.
pub fn register_metrics(registry: &mut prom_endpoint::Registry, controller: &controller::ControllerService) {
    use prom_endpoint::{FnCounter, FnGauge};
    let c = controller.connections();
    FnGauge::register(registry, "csi_rbd_connections_cached", "Cluster connections the controller keeps open", {
        let c = c.clone();
        move || c.cached() as i64
    });
    FnCounter::register(registry, "csi_rbd_connects", "Cluster connections made by the controller", {
        let c = c.clone();
        move || c.counters().0
    });
    FnCounter::register(
        registry,
        "csi_rbd_connection_reuses",
        "Calls served on a cached cluster connection",
        move || c.counters().1,
    );
}
