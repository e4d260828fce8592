//! Node steps that every block-device driver (csi-rbd's mapped images, csi-cloud's attached
//! EBS volumes) takes the same way once a volume is staged: NodePublishVolume (a bind of the
//! staging mount, or of the device node onto a file for raw block), NodeGetVolumeStats,
//! NodeExpandVolume's wait for the new size and filesystem grow, and the capability's mount
//! flags. A driver finds, stages and unstages the device its own way and keeps its own stage
//! record; it hands this module a [`Staged`] view of that record. The steps block: call them
//! through [`crate::node::blocking`].

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tonic::Status;

use crate::mount::{self, MountInfo, MsFlags};
use crate::pb::volume_capability::access_mode::Mode as AccessMode;
use crate::pb::volume_capability::AccessType;
use crate::validate::{self, CapabilitySupport};
use crate::{blockfs, pb, Error};

/// How often [`expand`] looks at the device's size.
const RESIZE_POLL: Duration = Duration::from_millis(100);

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

/// How NodePublishVolume asks for a volume.
#[derive(Clone, Copy, Debug)]
pub struct Publish {
    /// Raw block (the device node bound onto a file), else the filesystem.
    pub block: bool,
    /// Bind read-only.
    pub readonly: bool,
    /// SINGLE_NODE_SINGLE_WRITER: at most one target path on this node.
    pub single_writer: bool,
}

/// Checks NodePublishVolume's request (IDs, paths, the capability against `support`);
/// returns the normalized target path and how to publish.
pub fn check_publish(
    req: &pb::NodePublishVolumeRequest,
    support: &CapabilitySupport,
) -> Result<(PathBuf, Publish), Status> {
    validate::require_volume_id(&req.volume_id)?;
    validate::require_staging_path(&req.staging_target_path)?;
    validate::require_target_path(&req.target_path)?;
    let cap = validate::require_capability(req.volume_capability.as_ref(), support)?;
    let how = Publish {
        block: matches!(cap.access_type, Some(AccessType::Block(_))),
        readonly: req.readonly,
        single_writer: cap.access_mode.as_ref().is_some_and(|m| m.mode == AccessMode::SingleNodeSingleWriter as i32),
    };
    Ok((mount::normalize(Path::new(&req.target_path))?, how))
}

/// NodePublishVolume for a staged volume: binds the staging mount onto the target directory,
/// or the device node onto the target file (created) for raw block; read-only when asked or
/// when staged so. A target already published the same way is OK; one published otherwise
/// is ALREADY_EXISTS; a SINGLE_NODE_SINGLE_WRITER volume published elsewhere on this node is
/// FAILED_PRECONDITION, and so is a filesystem whose staging path has nothing mounted.
pub fn publish(vol: &Staged<'_>, target: &Path, how: Publish, timeout: Duration) -> Result<(), Status> {
    let Publish { block, readonly, single_writer } = how;
    let kind = |b: bool| if b { "block" } else { "filesystem" };
    if block != vol.is_block() {
        return Err(Status::invalid_argument(format!(
            "volume {} was staged as a {} volume and cannot be published as a {} one",
            vol.volume_id,
            kind(vol.is_block()),
            kind(block)
        )));
    }
    let readonly = readonly || vol.readonly;
    let table = mount::mounts()?;
    if let Some(m) = mount::find_mount(&table, target)? {
        let same_source = if block {
            vol.is_device_bind(m)
        } else {
            mount::find_mount(&table, vol.staging_path)?.is_some_and(|s| s.dev == m.dev)
        };
        if same_source && m.read_only() == readonly {
            return Ok(());
        }
        return Err(Status::already_exists(format!(
            "{} is already published, with another volume or read-only setting",
            target.display()
        )));
    }
    if single_writer {
        if let Some(other) = other_publication(&table, vol, target, block)? {
            return Err(Status::failed_precondition(format!(
                "volume {} has access mode SINGLE_NODE_SINGLE_WRITER and is already published at {}",
                vol.volume_id,
                other.display()
            )));
        }
    }
    let source = if block {
        if let Some(parent) = target.parent() {
            std::fs::create_dir_all(parent).map_err(|e| Error::io(format!("create {}", parent.display()), e))?;
        }
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(target)
            .map_err(|e| Error::io(format!("create {}", target.display()), e))?;
        Path::new(vol.device)
    } else {
        if mount::find_mount(&table, vol.staging_path)?.is_none() {
            return Err(Status::failed_precondition(format!(
                "volume {}: nothing is mounted at its staging path {}",
                vol.volume_id,
                vol.staging_path.display()
            )));
        }
        std::fs::create_dir_all(target).map_err(|e| Error::io(format!("create {}", target.display()), e))?;
        vol.staging_path
    };
    mount::bind_mount(source, target, readonly, timeout)?;
    Ok(())
}

/// Checks NodeGetVolumeStats's request; returns the normalized volume path.
pub fn check_stats(req: &pb::NodeGetVolumeStatsRequest) -> Result<PathBuf, Status> {
    validate::require_volume_id(&req.volume_id)?;
    validate::require_stats_path(&req.volume_path)?;
    Ok(mount::normalize(Path::new(&req.volume_path))?)
}

/// NodeGetVolumeStats for a staged volume at `path` (a target or the staging path): the
/// device's size for raw block (a missing path: NOT_FOUND), else
/// [`crate::node::filesystem_stats`].
pub fn stats(vol: &Staged<'_>, path: &Path, timeout: Duration) -> Result<pb::NodeGetVolumeStatsResponse, Status> {
    if !vol.is_block() {
        return Ok(crate::node::filesystem_stats(path, timeout)?);
    }
    if std::fs::symlink_metadata(path).is_err() {
        return Err(Status::not_found(format!("volume path {} does not exist", path.display())));
    }
    let size = blockfs::device_size(Path::new(vol.device))?;
    Ok(pb::NodeGetVolumeStatsResponse {
        usage: vec![pb::VolumeUsage {
            unit: pb::volume_usage::Unit::Bytes as i32,
            total: size as i64,
            ..Default::default()
        }],
        volume_condition: Some(pb::VolumeCondition { abnormal: false, message: String::new() }),
    })
}

/// Checks NodeExpandVolume's request; returns the size asked for in bytes (the range's
/// required bytes, else its limit, else 0).
pub fn check_expand(req: &pb::NodeExpandVolumeRequest) -> Result<u64, Status> {
    validate::require_volume_id(&req.volume_id)?;
    validate::require_volume_path(&req.volume_path)?;
    let range = validate::capacity_range(req.capacity_range.as_ref())?;
    Ok(range.required.or(range.limit).unwrap_or(0))
}

/// NodeExpandVolume for a staged volume published at `volume_path`: waits up to `wait` for
/// the device to show at least `required` bytes (the backend grew it; the kernel learns the
/// size on its own or after the driver's refresh), then grows the filesystem. Returns the
/// device's size. A missing `volume_path` is NOT_FOUND; a device still short after `wait`
/// is FAILED_PRECONDITION.
pub fn expand(vol: &Staged<'_>, volume_path: &Path, required: u64, wait: Duration) -> Result<u64, Status> {
    if std::fs::symlink_metadata(volume_path).is_err() {
        return Err(Status::not_found(format!("volume path {} does not exist", volume_path.display())));
    }
    let deadline = Instant::now() + wait;
    let size = loop {
        let s = blockfs::device_size(Path::new(vol.device))?;
        if s >= required {
            break s;
        }
        if Instant::now() > deadline {
            return Err(Status::failed_precondition(format!(
                "volume {}: {} is {s} bytes after {wait:?}, not the {required} asked: was it expanded (ControllerExpandVolume)?",
                vol.volume_id, vol.device
            )));
        }
        std::thread::sleep(RESIZE_POLL);
    };
    if !vol.is_block() {
        blockfs::grow(vol.device, vol.staging_path, vol.fs_type)?;
    }
    Ok(size)
}

/// Mount flags and filesystem data from a capability's `mount_flags` (each entry may hold
/// several comma-separated options): the generic VFS options become flags, the rest
/// (`discard`, `nouuid`, ...) is passed to the filesystem.
pub fn mount_flags(flags: &[String], readonly: bool) -> (MsFlags, Vec<String>) {
    let mut f = if readonly { MsFlags::MS_RDONLY } else { MsFlags::empty() };
    let mut data = Vec::new();
    for o in flags.iter().flat_map(|s| s.split(',')).map(str::trim).filter(|o| !o.is_empty()) {
        match o {
            "ro" => f |= MsFlags::MS_RDONLY,
            "rw" | "defaults" | "_netdev" => {}
            "noatime" => f |= MsFlags::MS_NOATIME,
            "nodiratime" => f |= MsFlags::MS_NODIRATIME,
            "relatime" => f |= MsFlags::MS_RELATIME,
            "nosuid" => f |= MsFlags::MS_NOSUID,
            "nodev" => f |= MsFlags::MS_NODEV,
            "noexec" => f |= MsFlags::MS_NOEXEC,
            "sync" => f |= MsFlags::MS_SYNCHRONOUS,
            other => data.push(other.to_string()),
        }
    }
    (f, data)
}

/// Another target path than `target` where the staged volume is already published on this
/// node: a bind of its staging mount (same device number), or for raw block a bind of its
/// device node. NodePublishVolume refuses a SINGLE_NODE_SINGLE_WRITER volume with
/// FAILED_PRECONDITION when there is one.
pub fn other_publication(
    table: &[MountInfo],
    vol: &Staged<'_>,
    target: &Path,
    block: bool,
) -> Result<Option<PathBuf>, Status> {
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
    fn mount_flags_split_into_flags_and_data() {
        let (f, d) = mount_flags(&["noatime,discard".into(), "ro".into()], false);
        assert!(f.contains(MsFlags::MS_NOATIME | MsFlags::MS_RDONLY));
        assert_eq!(d, vec!["discard".to_string()]);
        let (f, d) = mount_flags(&[" defaults , nouuid".into()], true);
        assert_eq!((f, d), (MsFlags::MS_RDONLY, vec!["nouuid".to_string()]));
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
        let t = mount::parse_mountinfo(
            "1 0 8:1 / / rw - ext4 /dev/sda1 rw\n40 1 252:48 / /pods/a/vol rw - ext4 /dev/rbd3 rw\n",
        )
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
