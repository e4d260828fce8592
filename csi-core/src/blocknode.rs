//! Node steps that every block-device driver (csi-rbd's mapped images, csi-cloud's attached
//! EBS volumes) takes the same way once a volume is staged. A driver finds and stages the
//! device its own way and keeps its own stage record; it hands this module a [`Staged`]
//! view of that record.

use std::path::{Path, PathBuf};

use tonic::Status;

use crate::mount::{self, MountInfo};

/// What a driver's stage record says about a staged volume.
#[derive(Clone, Copy, Debug)]
pub struct Staged<'a> {
    /// The CSI volume ID (for messages).
    pub volume_id: &'a str,
    /// The device node (`/dev/rbd0`, an EBS by-id link).
    pub device: &'a str,
    /// Where stage mounted the filesystem (unused for raw block).
    pub staging_path: &'a Path,
    /// The mounted filesystem; empty: raw block.
    pub fs_type: &'a str,
    /// Staged read-only: every publication is read-only too.
    pub readonly: bool,
}

impl Staged<'_> {
    /// True for a raw block volume.
    pub fn is_block(&self) -> bool {
        self.fs_type.is_empty()
    }

    /// Is `m` a bind of this volume's device node (a raw block publication)? The source is
    /// the device as named, or the devtmpfs the node lives on.
    fn is_device_bind(&self, m: &MountInfo) -> bool {
        m.source == self.device || m.source == "devtmpfs" || m.source == "udev"
    }
}

/// Another target path than `target` where the staged volume is already published on this
/// node: a bind of its staging mount (same device number), or for raw block a bind of its
/// device node. NodePublishVolume refuses a SINGLE_NODE_SINGLE_WRITER volume with
/// FAILED_PRECONDITION when there is one.
pub fn other_publication(table: &[MountInfo], vol: &Staged<'_>, target: &Path, block: bool) -> Result<Option<PathBuf>, Status> {
    let elsewhere = |m: &&MountInfo| m.mount_point != target && m.mount_point != vol.staging_path;
    if block {
        let Some(dev) = Path::new(vol.device).file_name() else {
            return Ok(None);
        };
        return Ok(table
            .iter()
            .filter(elsewhere)
            .find(|m| m.root.file_name() == Some(dev) && vol.is_device_bind(m))
            .map(|m| m.mount_point.clone()));
    }
    let Some(staged) = mount::find_mount(table, vol.staging_path)? else {
        return Ok(None);
    };
    Ok(table.iter().filter(elsewhere).find(|m| m.dev == staged.dev).map(|m| m.mount_point.clone()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fs() -> Staged<'static> {
        Staged {
            volume_id: "vol-1",
            device: "/dev/rbd3",
            staging_path: Path::new("/var/lib/kubelet/staging/vol-1"),
            fs_type: "ext4",
            readonly: false,
        }
    }

    /// A mountinfo table: the root, the staged filesystem (device 252:48) and `extra`.
    fn table(extra: &str) -> Vec<MountInfo> {
        let text = format!(
            "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n\
             30 1 252:48 / /var/lib/kubelet/staging/vol-1 rw - ext4 /dev/rbd3 rw\n\
             31 1 0:5 / /dev rw - devtmpfs devtmpfs rw\n\
             {extra}"
        );
        mount::parse_mountinfo(&text).unwrap()
    }

    #[test]
    fn a_filesystem_published_elsewhere_is_found_by_its_device_number() {
        let t = table("40 1 252:48 / /pods/a/vol rw - ext4 /dev/rbd3 rw\n");
        assert_eq!(other_publication(&t, &fs(), Path::new("/pods/b/vol"), false).unwrap(), Some("/pods/a/vol".into()));
        // The target itself and the staging mount are not "another" publication.
        assert_eq!(other_publication(&t, &fs(), Path::new("/pods/a/vol"), false).unwrap(), None);
        assert_eq!(other_publication(&table(""), &fs(), Path::new("/pods/b/vol"), false).unwrap(), None);
    }

    #[test]
    fn another_volume_mounted_elsewhere_is_not_a_publication() {
        let t = table("40 1 252:64 / /pods/a/vol rw - ext4 /dev/rbd4 rw\n");
        assert_eq!(other_publication(&t, &fs(), Path::new("/pods/b/vol"), false).unwrap(), None);
    }

    #[test]
    fn nothing_staged_means_nothing_published() {
        let t = mount::parse_mountinfo("1 0 8:1 / / rw - ext4 /dev/sda1 rw\n40 1 252:48 / /pods/a/vol rw - ext4 /dev/rbd3 rw\n")
            .unwrap();
        assert_eq!(other_publication(&t, &fs(), Path::new("/pods/b/vol"), false).unwrap(), None);
    }

    #[test]
    fn a_raw_block_bind_is_found_by_the_device_node_it_binds() {
        let block = Staged { fs_type: "", ..fs() };
        // A bind of a device node shows devtmpfs as source and the node as root.
        let t = table("41 1 0:5 /rbd3 /pods/a/dev rw - devtmpfs devtmpfs rw\n42 1 0:5 /rbd4 /pods/c/dev rw - devtmpfs devtmpfs rw\n");
        assert_eq!(other_publication(&t, &block, Path::new("/pods/b/dev"), true).unwrap(), Some("/pods/a/dev".into()));
        assert_eq!(other_publication(&t, &block, Path::new("/pods/a/dev"), true).unwrap(), None);
        let other = Staged { device: "/dev/rbd5", ..block };
        assert_eq!(other_publication(&t, &other, Path::new("/pods/b/dev"), true).unwrap(), None);
    }
}
