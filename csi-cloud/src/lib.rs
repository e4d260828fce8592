//! `csi-cloud`: a CSI driver for AWS EBS volumes, compatible with
//! aws-ebs-csi-driver's driver name, volume and node IDs, parameters and
//! tags, so that existing StorageClasses and volumes keep working.
//!
//! - [`aws`]: the EC2/EBS clients from the usual AWS configuration, and AWS
//!   error codes as CSI codes;
//! - [`params`]: CreateVolume's and ControllerModifyVolume's parameters;
//! - [`controller`]: volumes, attachments, snapshots, resizing and
//!   modification through the EC2 API;
//! - [`node`]: the Node service: device discovery ([`device`]), stage,
//!   publish, expand, stats, and the node's identity and volume limit;
//! - [`snapshot_io`]: snapshot export and import through the EBS direct APIs;
//! - [`error`]: the crate's one error type.

pub mod aws;
/// `csi-cloud bench-baseline`: the plain-SDK side of `conformance bench csi-cloud`.
#[doc(hidden)]
pub mod bench_baseline;
pub mod controller;
pub mod device;
pub mod error;
pub mod node;
pub mod params;
pub mod snapshot_io;

pub use error::{Error, Result};

/// The default driver name, aws-ebs-csi-driver's, so that existing
/// StorageClasses, PersistentVolumes and VolumeSnapshotClasses keep working.
pub const DRIVER_NAME: &str = "ebs.csi.aws.com";

/// The topology key of a volume's zone in CreateVolume's answer (Kubernetes'
/// well-known key). Requests may use it or [`ZONE_KEY_DRIVER`].
pub const ZONE_KEY: &str = "topology.kubernetes.io/zone";

/// aws-ebs-csi-driver's own zone key, still found in older PVs' node affinity.
pub const ZONE_KEY_DRIVER: &str = "topology.ebs.csi.aws.com/zone";

/// The tag holding the CSI name of a volume (aws-ebs-csi-driver's key): how
/// CreateVolume finds a volume it made before.
pub const TAG_VOLUME_NAME: &str = "CSIVolumeName";

/// The tag holding the CSI name of a snapshot.
pub const TAG_SNAPSHOT_NAME: &str = "CSIVolumeSnapshotName";

/// The tag every volume and snapshot of this driver carries (`<driver-name>/cluster=true`).
pub const TAG_CLUSTER_SUFFIX: &str = "/cluster";

/// Driver-wide settings from the command line.
#[derive(Clone, Debug, Default)]
pub struct Config {
    /// `--driver-name`, for the `<driver-name>/cluster` tag.
    pub driver_name: String,
    /// `--default-zone`: where a volume goes when CreateVolume names no
    /// zone. `None`: `AWS_AVAILABILITY_ZONE`, else the region's first
    /// available zone by name.
    pub default_zone: Option<String>,
    /// `--extra-tags`: tags put on every volume and snapshot.
    pub extra_tags: Vec<(String, String)>,
}

/// Parses `--extra-tags` (`key=value,key=value`).
pub fn parse_tags(s: &str) -> std::result::Result<Vec<(String, String)>, String> {
    s.split(',')
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(|t| match t.split_once('=') {
            Some((k, v)) if !k.trim().is_empty() => Ok((k.trim().to_string(), v.trim().to_string())),
            _ => Err(format!("{t:?}: expected key=value")),
        })
        .collect()
}
