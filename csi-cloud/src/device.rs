//! Finding the block device of an attached EBS volume on this node.
//!
//! The controller attaches a volume under a device name it chose
//! (`/dev/xvdba`…, passed to the node as the publish context's
//! [`DEVICE_PATH_KEY`]), but what the guest sees depends on the instance:
//!
//! 1. Nitro instances expose every EBS volume as an NVMe namespace whose
//!    serial is the volume ID without its dash; udev links it as
//!    `/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0123…`. That name
//!    is the volume's own, whatever name was asked for, so it is tried first
//!    and is the only one that proves which volume a device is.
//! 2. Xen instances keep the asked-for name, or its known rename: the kernel
//!    names `/dev/sdX` requests `/dev/xvdX` and the other way round.
//!
//! A device can show up a moment after AttachVolume reports `attached`
//! (udev still running), so [`find`] polls for it within a bound.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use csi_core::Error;

/// Where udev puts the stable names.
pub const BY_ID_DIR: &str = "/dev/disk/by-id";

/// The by-id name's prefix for an EBS volume on a Nitro instance.
pub const NVME_PREFIX: &str = "nvme-Amazon_Elastic_Block_Store_";

/// The publish context key with the device name the controller attached under.
pub const DEVICE_PATH_KEY: &str = "devicePath";

/// How often [`find`] looks again while it waits.
const POLL: Duration = Duration::from_millis(100);

/// Checks that `volume_id` has the shape of an EBS volume ID (`vol-` and
/// hex digits) and returns the NVMe serial form (`vol0123…`).
pub fn nvme_serial(volume_id: &str) -> Result<String, Error> {
    let hex = volume_id
        .strip_prefix("vol-")
        .filter(|h| !h.is_empty() && h.len() <= 32 && h.bytes().all(|b| b.is_ascii_hexdigit()))
        .ok_or_else(|| Error::NotFound(format!("volume {volume_id:?} is not an EBS volume ID (vol-<hex>)")))?;
    Ok(format!("vol{hex}"))
}

/// The by-id path a Nitro instance gives `volume_id` (`volume_id` checked).
pub fn nvme_path(volume_id: &str) -> Result<PathBuf, Error> {
    Ok(Path::new(BY_ID_DIR).join(format!("{NVME_PREFIX}{}", nvme_serial(volume_id)?)))
}

/// The names a device attached as `hint` (`/dev/xvdba`, `/dev/sdf`…) can
/// have in the guest: the name itself, then its xvd/sd rename.
pub fn hint_candidates(hint: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if hint.is_empty() {
        return out;
    }
    let full = if hint.starts_with('/') { hint.to_string() } else { format!("/dev/{hint}") };
    // Only device names: a hint is never a path elsewhere on the host.
    let Some(name) = full.strip_prefix("/dev/").filter(|n| !n.is_empty() && !n.contains('/')) else {
        return out;
    };
    out.push(PathBuf::from(&full));
    if let Some(rest) = name.strip_prefix("xvd") {
        out.push(PathBuf::from(format!("/dev/sd{rest}")));
    } else if let Some(rest) = name.strip_prefix("sd") {
        out.push(PathBuf::from(format!("/dev/xvd{rest}")));
    }
    out
}

/// Where [`find`] found the device, and under which name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Found {
    /// The device node (symlinks resolved), e.g. `/dev/nvme1n1`.
    pub device: PathBuf,
    /// The name that led there (by-id link or hint), for logs.
    pub via: PathBuf,
}

/// One look: the NVMe by-id link, then the hint's names. A candidate
/// counts when it resolves to a block device.
pub fn find_once(volume_id: &str, hint: Option<&str>) -> Result<Option<Found>, Error> {
    let mut candidates = vec![nvme_path(volume_id)?];
    candidates.extend(hint_candidates(hint.unwrap_or("")));
    for via in candidates {
        let Ok(device) = std::fs::canonicalize(&via) else { continue };
        if is_block_device(&device) {
            return Ok(Some(Found { device, via }));
        }
    }
    Ok(None)
}

/// Finds the device of `volume_id`, waiting up to `wait` for it to appear.
/// NOT_FOUND (the volume is not attached here) when it does not.
pub fn find(volume_id: &str, hint: Option<&str>, wait: Duration) -> Result<Found, Error> {
    let deadline = Instant::now() + wait;
    loop {
        if let Some(f) = find_once(volume_id, hint)? {
            tracing::debug!(volume = volume_id, device = %f.device.display(), via = %f.via.display(), "device found");
            return Ok(f);
        }
        if Instant::now() >= deadline {
            let hint = hint
                .filter(|h| !h.is_empty())
                .map(|h| format!(" nor under {h:?} or its xvd/sd rename"))
                .unwrap_or_default();
            return Err(Error::NotFound(format!(
                "volume {volume_id}: no device at {}{hint} after {wait:?}: is it attached to this node (ControllerPublishVolume)?",
                nvme_path(volume_id)?.display()
            )));
        }
        std::thread::sleep(POLL);
    }
}

fn is_block_device(p: &Path) -> bool {
    use std::os::unix::fs::FileTypeExt;
    std::fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn volume_ids_become_nvme_serials() {
        assert_eq!(nvme_serial("vol-0123abcdef4567890").unwrap(), "vol0123abcdef4567890");
        assert_eq!(
            nvme_path("vol-0a1b").unwrap(),
            PathBuf::from("/dev/disk/by-id/nvme-Amazon_Elastic_Block_Store_vol0a1b")
        );
        for bad in ["", "vol-", "vol0123", "snap-0123", "vol-../../sda", "vol-xyz"] {
            let e = nvme_serial(bad).unwrap_err();
            assert!(matches!(e, Error::NotFound(_)), "{bad}: {e}");
        }
    }

    #[test]
    fn hints_and_their_renames() {
        let p = |v: &[&str]| v.iter().map(PathBuf::from).collect::<Vec<_>>();
        assert_eq!(hint_candidates("/dev/xvdba"), p(&["/dev/xvdba", "/dev/sdba"]));
        assert_eq!(hint_candidates("/dev/sdf"), p(&["/dev/sdf", "/dev/xvdf"]));
        assert_eq!(hint_candidates("xvdc"), p(&["/dev/xvdc", "/dev/sdc"]));
        assert_eq!(hint_candidates("/dev/nvme1n1"), p(&["/dev/nvme1n1"]));
        assert!(hint_candidates("").is_empty());
        assert!(hint_candidates("/etc/passwd").is_empty());
        assert!(hint_candidates("/dev/../etc/x").is_empty());
    }

    #[test]
    fn an_absent_volume_is_not_found_within_the_wait() {
        let t = Instant::now();
        let e = find("vol-0fffffffffffffff0", Some("/dev/xvdzz"), Duration::from_millis(300)).unwrap_err();
        assert!(matches!(e, Error::NotFound(_)), "{e}");
        assert!(e.to_string().contains("vol-0fffffffffffffff0") && e.to_string().contains("xvdzz"), "{e}");
        assert!(t.elapsed() < Duration::from_secs(3));
    }
}
