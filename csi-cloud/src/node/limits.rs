//! How many EBS volumes this node can take: NodeGetInfo's
//! `max_volumes_per_node`, which the scheduler uses so that a pod is never
//! placed where its volume cannot attach.
//!
//! The same rule as aws-ebs-csi-driver's default (learned from its
//! `getVolumesLimit`, written anew):
//!
//! - `--volume-attach-limit N` (N ≥ 0) is the answer, whatever the instance;
//! - a Nitro instance has [`NITRO_SHARED_SLOTS`] attachment slots shared by
//!   EBS volumes, network interfaces (ENIs) and NVMe instance-store volumes:
//!   the attached ENIs are subtracted;
//! - a Xen instance takes [`XEN_MAX_VOLUMES`];
//! - then the reserved attachments are subtracted: `--reserved-volume-attachments`
//!   when given, else the instance's block device mappings at launch plus one
//!   for the root volume (both from the instance metadata);
//! - the result is at least 1.
//!
//! Not carried: aws-ebs-csi-driver's per-type tables (types with a dedicated
//! EBS limit above 28, instance-store slots per type, GPU slots): those
//! instances get the shared estimate, which is on the safe side for
//! dedicated-limit types; set `--volume-attach-limit` on them.

/// Attachment slots of a Nitro instance (EBS, ENIs, instance store share them).
pub const NITRO_SHARED_SLOTS: i64 = 28;
/// EBS volumes a Xen instance takes (AWS's recommended maximum).
pub const XEN_MAX_VOLUMES: i64 = 39;

/// Instance families on the Xen hypervisor; every other family (and every
/// `*.metal` size) is Nitro.
const XEN_FAMILIES: &[&str] = &[
    "c1", "c3", "c4", "cc2", "cr1", "d2", "f1", "g2", "g3", "g3s", "h1", "hs1", "i2", "i3", "m1", "m2", "m3", "m4",
    "p2", "p3", "r3", "r4", "t1", "t2", "x1", "x1e",
];

/// Is `instance_type` (`m5.large`) a Nitro instance?
pub fn is_nitro(instance_type: &str) -> bool {
    let (family, size) = instance_type.split_once('.').unwrap_or((instance_type, ""));
    size == "metal" || !XEN_FAMILIES.contains(&family)
}

/// What the limit is computed from.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Inputs {
    /// `--volume-attach-limit` when ≥ 0.
    pub attach_limit: Option<i64>,
    /// `--reserved-volume-attachments` when ≥ 0.
    pub reserved: Option<i64>,
    /// The instance type (metadata `instance-type`); empty: unknown.
    pub instance_type: String,
    /// Attached network interfaces (metadata `network/interfaces/macs/`).
    pub enis: i64,
    /// Block device mappings at launch (metadata `block-device-mapping/`, `ebsN` entries).
    pub block_device_mappings: i64,
}

/// NodeGetInfo's `max_volumes_per_node`; 0 (no limit stated) when neither
/// the flag nor the instance type is known.
pub fn max_volumes(i: &Inputs) -> i64 {
    if let Some(n) = i.attach_limit {
        return n;
    }
    if i.instance_type.is_empty() {
        return 0;
    }
    let slots = if is_nitro(&i.instance_type) { NITRO_SHARED_SLOTS - i.enis } else { XEN_MAX_VOLUMES };
    let reserved = i.reserved.unwrap_or(i.block_device_mappings + 1);
    (slots - reserved).max(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nitro_or_xen() {
        for t in ["m5.large", "c6i.xlarge", "t3.micro", "i3en.large", "i3.metal", "m7g.medium", "r8g.2xlarge"] {
            assert!(is_nitro(t), "{t}");
        }
        for t in ["m4.large", "t2.micro", "c4.xlarge", "i3.large", "p3.2xlarge", "x1e.xlarge"] {
            assert!(!is_nitro(t), "{t}");
        }
    }

    #[test]
    fn the_limit() {
        let i = |t: &str, enis, bdm| Inputs {
            instance_type: t.into(),
            enis,
            block_device_mappings: bdm,
            ..Default::default()
        };
        // 28 slots - 1 ENI - (0 mappings + root).
        assert_eq!(max_volumes(&i("m5.large", 1, 0)), 26);
        // Two ENIs, one extra mapping at launch.
        assert_eq!(max_volumes(&i("m5.large", 2, 1)), 24);
        // Xen: ENIs do not count.
        assert_eq!(max_volumes(&i("m4.large", 3, 0)), 38);
        // The flags win.
        assert_eq!(max_volumes(&Inputs { attach_limit: Some(5), ..i("m5.large", 1, 0) }), 5);
        assert_eq!(max_volumes(&Inputs { reserved: Some(0), ..i("m5.large", 1, 4) }), 27);
        // Never below one; unknown type: no limit stated.
        assert_eq!(max_volumes(&i("m5.large", 40, 0)), 1);
        assert_eq!(max_volumes(&i("", 1, 0)), 0);
    }
}
