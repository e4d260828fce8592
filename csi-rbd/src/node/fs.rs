//! Filesystems on mapped images: detect (blkid's machine-readable
//! `-o export` output), create only on a blank device, grow after an
//! expansion. The tools run with time bounds ([`super::exec`]).

use std::path::Path;
use std::time::Duration;

use csi_core::Error;

use super::exec;

/// Bound on blkid.
pub const PROBE_TIMEOUT: Duration = Duration::from_secs(30);
/// Bound on mkfs (lazy inode tables, no discard: seconds even for big images).
pub const MKFS_TIMEOUT: Duration = Duration::from_secs(120);
/// Bound on resize2fs / xfs_growfs.
pub const GROW_TIMEOUT: Duration = Duration::from_secs(120);

/// Filesystem types the driver makes and grows.
pub const SUPPORTED: [&str; 2] = ["ext4", "xfs"];

/// The default when the capability names none.
pub const DEFAULT_FS: &str = "ext4";

/// Checks a requested fs type ("" means the default).
pub fn check_type(fs: &str) -> Result<&str, Error> {
    match fs {
        "" => Ok(DEFAULT_FS),
        f if SUPPORTED.contains(&f) => Ok(f),
        f => Err(Error::InvalidArgument(format!("fs type {f:?} is not supported (ext4, xfs)"))),
    }
}

/// What is on `device`: `Some("ext4")`, `Some("xfs")`, `Some("partition
/// table dos")`…, or `None` for a blank device.
pub fn probe(device: &str) -> Result<Option<String>, Error> {
    let out = exec::run("blkid", &["-p", "-o", "export", device], PROBE_TIMEOUT)?;
    match out.status.code() {
        // 2: nothing found.
        Some(2) => Ok(None),
        Some(0) => Ok(Some(parse_export(&String::from_utf8_lossy(&out.stdout)))),
        _ => Err(Error::Internal(format!(
            "blkid -p {device} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
    }
}

/// The content type in blkid's `KEY=value` lines.
fn parse_export(text: &str) -> String {
    let get = |k: &str| text.lines().find_map(|l| l.strip_prefix(k).and_then(|v| v.strip_prefix('=')));
    match (get("TYPE"), get("PTTYPE")) {
        (Some(t), _) => t.to_string(),
        (None, Some(pt)) => format!("partition table {pt}"),
        (None, None) => "unknown content".into(),
    }
}

/// Makes `fs` on the blank `device`.
pub fn mkfs(device: &str, fs: &str) -> Result<(), Error> {
    match fs {
        // No discard (the image is thin already) and lazy init: seconds, not minutes.
        "ext4" => exec::run_ok(
            "mkfs.ext4",
            &["-q", "-F", "-m0", "-E", "nodiscard,lazy_itable_init=1,lazy_journal_init=1", device],
            MKFS_TIMEOUT,
        )
        .map(drop),
        "xfs" => exec::run_ok("mkfs.xfs", &["-q", "-K", device], MKFS_TIMEOUT).map(drop),
        f => Err(Error::InvalidArgument(format!("fs type {f:?} is not supported"))),
    }
}

/// Mount data for `fs`: xfs gets `nouuid` (a clone or a restored snapshot
/// carries its source's UUID, and xfs refuses a second mount of one UUID).
pub fn mount_data(fs: &str, extra: &[String]) -> String {
    let mut d: Vec<String> = extra.to_vec();
    if fs == "xfs" && !d.iter().any(|o| o == "nouuid") {
        d.push("nouuid".into());
    }
    d.join(",")
}

/// Grows the mounted filesystem `fs` on `device` (mounted at `mount_point`)
/// to the device's size.
pub fn grow(device: &str, mount_point: &Path, fs: &str) -> Result<(), Error> {
    match fs {
        "ext4" => exec::run_ok("resize2fs", &[device], GROW_TIMEOUT).map(drop),
        "xfs" => exec::run_ok("xfs_growfs", &[&mount_point.to_string_lossy()], GROW_TIMEOUT).map(drop),
        f => Err(Error::InvalidArgument(format!("cannot grow fs type {f:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn blkid_export_lines() {
        assert_eq!(parse_export("DEVNAME=/dev/rbd0\nUUID=x\nTYPE=ext4\nUSAGE=filesystem\n"), "ext4");
        assert_eq!(parse_export("DEVNAME=/dev/rbd0\nPTTYPE=dos\n"), "partition table dos");
    }

    #[test]
    fn probe_and_mkfs_on_a_file() {
        let d = tempfile::tempdir().unwrap();
        for fs in SUPPORTED {
            let img = d.path().join(fs);
            std::fs::File::create(&img).unwrap().set_len(320 << 20).unwrap();
            let p = img.to_str().unwrap();
            assert_eq!(probe(p).unwrap(), None);
            mkfs(p, fs).unwrap();
            assert_eq!(probe(p).unwrap().as_deref(), Some(fs));
        }
    }

    #[test]
    fn types() {
        assert_eq!(check_type("").unwrap(), "ext4");
        assert_eq!(check_type("xfs").unwrap(), "xfs");
        assert!(check_type("btrfs").is_err());
        assert_eq!(mount_data("xfs", &[]), "nouuid");
        assert_eq!(mount_data("ext4", &["discard".into()]), "discard");
    }
}
