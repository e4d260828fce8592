//! Filesystems on block devices (a mapped RBD image, an attached EBS
//! volume): detect (blkid's machine-readable `-o export` output), create
//! only on a blank device, grow after an expansion; a device's size. The
//! tools run with time bounds ([`crate::exec`]).

use std::path::Path;
use std::time::Duration;

use crate::exec;
use crate::Error;

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

/// Bytes [`inspect`] reads at each end of a device.
pub const END_SPAN: u64 = 1 << 20;

/// What [`inspect`] finds at a device's ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Content {
    /// Zeros in the first and last [`END_SPAN`] (all of it when smaller
    /// than two spans). Every signature `blkid -p` looks for (filesystems,
    /// partition tables, RAID, LVM and ZFS labels) lies within those ends,
    /// so blkid would find nothing either: the device is blank.
    Blank,
    /// The start of the device is the superblock of a filesystem this
    /// driver mounts (`ext4`: the ext magic with the extents feature, as
    /// mkfs.ext4 makes it; `xfs`: `XFSB`), so no blkid process is needed to
    /// name it. Mounting checks the superblock fully; nothing is ever
    /// formatted on this answer.
    Known(&'static str),
    /// Something else: [`probe`] (blkid) decides.
    Other,
}

/// Reads the device's ends in-process to spare the blkid process (about
/// 100 ms for a blank device and 400 ms for an existing filesystem under
/// TCG, a few ms on hardware) in the common cases: a new volume, or one of
/// ours staged again. Bounded by [`PROBE_TIMEOUT`] (a read from a hung
/// cluster does not return; the reader thread is abandoned).
pub fn inspect(device: &str) -> Result<Content, Error> {
    let dev = device.to_string();
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("csi-probe".into())
        .spawn(move || {
            let _ = tx.send(read_ends(&dev));
        })
        .map_err(|e| Error::Internal(format!("probe {device}: start a thread: {e}")))?;
    match rx.recv_timeout(PROBE_TIMEOUT) {
        Ok(r) => r.map_err(|e| Error::io(format!("read the ends of {device}"), e)),
        Err(_) => Err(Error::Unavailable(format!("read the ends of {device}: no answer within {PROBE_TIMEOUT:?}"))),
    }
}

/// The filesystem whose superblock starts `head` (the device's first 4 KiB), if ours.
fn known_superblock(head: &[u8]) -> Option<&'static str> {
    if head.get(..4) == Some(b"XFSB".as_slice()) {
        return Some("xfs");
    }
    // ext2/3/4: s_magic 0xEF53 at 1024 + 0x38; s_feature_incompat at 1024 + 0x60,
    // INCOMPAT_EXTENTS (0x40) is what makes it ext4 to blkid.
    let magic = head.get(1080..1082)?;
    let incompat = u32::from_le_bytes(head.get(1120..1124)?.try_into().ok()?);
    (magic == [0x53, 0xEF] && incompat & 0x40 != 0).then_some("ext4")
}

fn read_ends(device: &str) -> std::io::Result<Content> {
    use std::io::{Seek, SeekFrom};
    use std::os::unix::fs::{FileExt, OpenOptionsExt};
    const ALIGN: usize = 4096;
    // O_DIRECT: exactly these bytes. Through the page cache, a mapped
    // image's readahead (twice its 4 MiB object size) would read and copy
    // 8 MiB per end. Files that refuse it (tmpfs), or whose size is not a
    // multiple of the alignment, are read buffered. One open for a device.
    let mut f = match std::fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECT).open(device) {
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => std::fs::File::open(device)?,
        r => r?,
    };
    let size = f.seek(SeekFrom::End(0))?;
    if size % ALIGN as u64 != 0 {
        f = std::fs::File::open(device)?;
    }
    let ranges = if size <= 2 * END_SPAN { vec![(0, size)] } else { vec![(0, END_SPAN), (size - END_SPAN, END_SPAN)] };
    // A buffer aligned for O_DIRECT.
    let mut raw = vec![0u8; END_SPAN as usize + ALIGN];
    let skip = raw.as_ptr().align_offset(ALIGN);
    let buf = &mut raw[skip..skip + END_SPAN as usize];
    for (off, len) in ranges {
        let mut done = 0u64;
        while done < len {
            // The first 4 KiB alone first: a filesystem's superblock is
            // there, and one of ours staged again (a migration) is then
            // named from one small read instead of a MiB.
            let cap = if off == 0 && done == 0 { ALIGN } else { buf.len() };
            let want = (len - done).min(cap as u64) as usize;
            let n = f.read_at(&mut buf[..want], off + done)?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "short device"));
            }
            // OR-folds vectorize (an early-exit byte loop does not).
            if buf[..n].chunks(64 << 10).any(|c| c.iter().fold(0u8, |a, b| a | b) != 0) {
                let head = if off == 0 && done == 0 { known_superblock(&buf[..n.min(ALIGN)]) } else { None };
                return Ok(head.map_or(Content::Other, Content::Known));
            }
            done += n as u64;
        }
    }
    Ok(Content::Blank)
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

/// The size in bytes of the block device `device` (a device node, or a
/// link to one such as an EBS by-id name): sysfs's count of 512-byte sectors.
pub fn device_size(device: &Path) -> Result<u64, Error> {
    let real = std::fs::canonicalize(device).map_err(|e| Error::io(format!("resolve {}", device.display()), e))?;
    let name = real
        .file_name()
        .and_then(|n| n.to_str())
        .ok_or_else(|| Error::Internal(format!("{} has no device name", real.display())))?;
    let p = Path::new("/sys/class/block").join(name).join("size");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(format!("read {}", p.display()), e))?;
    let sectors: u64 =
        text.trim().parse().map_err(|_| Error::Internal(format!("{}: not a number: {text:?}", p.display())))?;
    Ok(sectors * 512)
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
            assert_eq!(inspect(p).unwrap(), Content::Blank);
            mkfs(p, fs).unwrap();
            assert_eq!(probe(p).unwrap().as_deref(), Some(fs));
            // Named in-process exactly as blkid names it.
            assert_eq!(inspect(p).unwrap(), Content::Known(fs), "{fs}");
        }
    }

    #[test]
    fn a_byte_in_either_end_is_not_blank_and_the_middle_is_blkids() {
        use std::os::unix::fs::FileExt;
        let d = tempfile::tempdir().unwrap();
        for (size, at, blank) in [
            (8 << 20, 0, false),
            (8 << 20, (8 << 20) - 1, false),
            (8 << 20, (1 << 20) - 1, false),
            (8 << 20, 7 << 20, false),
            // The middle: no signature blkid looks for lives there.
            (8 << 20, 4 << 20, true),
            (1 << 20, (1 << 20) - 1, false),
            (3 << 19, 3 << 18, false),
        ] {
            let img = d.path().join(format!("{size}-{at}"));
            let f = std::fs::File::create(&img).unwrap();
            f.set_len(size).unwrap();
            f.write_all_at(&[1], at).unwrap();
            let want = if blank { Content::Blank } else { Content::Other };
            assert_eq!(inspect(img.to_str().unwrap()).unwrap(), want, "size {size}, byte at {at}");
        }
        assert!(inspect(d.path().join("missing").to_str().unwrap()).is_err());
    }

    #[test]
    fn only_ext4_and_xfs_superblocks_are_named_in_process() {
        let d = tempfile::tempdir().unwrap();
        // ext2 has the ext magic but no extents: blkid names it, not us.
        let img = d.path().join("ext2");
        std::fs::File::create(&img).unwrap().set_len(64 << 20).unwrap();
        let p = img.to_str().unwrap();
        let out = std::process::Command::new("mkfs.ext2").args(["-q", "-F", p]).output().unwrap();
        assert!(out.status.success(), "{out:?}");
        assert_eq!(inspect(p).unwrap(), Content::Other);
        assert_eq!(probe(p).unwrap().as_deref(), Some("ext2"));
        assert_eq!(known_superblock(&[0u8; 4096]), None);
        assert_eq!(known_superblock(b"XFSB"), Some("xfs"));
        assert_eq!(known_superblock(&[0u8; 100]), None, "short head");
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
