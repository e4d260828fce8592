//! `csi-rbd`: a CSI driver for Ceph RBD block volumes, compatible with
//! ceph-csi's `rbd.csi.ceph.com` (StorageClass parameters, secrets,
//! `config.json`, volume IDs).
//!
//! - [`config`]: ceph-csi's cluster config (`--cluster-config`): clusterID → monitors;
//! - [`volume_id`]: the volume ID (`0001-<len>-<clusterID>-<poolID>-<uuid>`),
//!   encoded and decoded without I/O;
//! - [`attach`]: exclusive attach (one read-write node per image) and fencing;
//! - [`node`]: the Node service (map, mkfs, mount, stage records);
//! - [`takeover`]: `csi-rbd takeover`, fencing a dead node by hand.

pub mod attach;
pub mod config;
pub mod node;
pub mod takeover;
pub mod volume_id;

/// The default driver name, the same as ceph-csi's RBD driver so that
/// existing StorageClasses and PersistentVolumes keep working.
pub const DRIVER_NAME: &str = "rbd.csi.ceph.com";
