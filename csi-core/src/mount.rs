//! Mounts, the one place csi-core touches the kernel's mount table.
//!
//! Everything here goes through syscalls (`mount(2)`, `umount2(2)`), never
//! through `mount`/`umount` binaries. Two rules come from NFS:
//!
//! - never `stat()` a path that may be a mount of a dead server: that
//!   blocks in the kernel, uninterruptibly. "Is this a mount point" reads
//!   `/proc/self/mountinfo` and compares paths lexically instead;
//! - every mount and unmount has a time bound: the syscall runs on its own
//!   thread and the caller stops waiting at the deadline (a thread stuck in
//!   the kernel is left behind; it cannot be killed, but the RPC returns).
//!
//! These functions block; call them from `tokio::task::spawn_blocking`.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::time::Duration;

use nix::errno::Errno;
pub use nix::mount::{MntFlags, MsFlags};

use crate::error::{Error, Result};

/// Default bound for one mount or unmount attempt.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Stacked mounts [`cleanup_target`] will peel off before giving up.
const MAX_STACKED: usize = 16;

/// One line of `/proc/self/mountinfo` (see proc(5)).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountInfo {
    /// Unique ID of the mount.
    pub mount_id: u32,
    /// ID of the parent mount.
    pub parent_id: u32,
    /// `major:minor` of the device.
    pub dev: String,
    /// The directory of the filesystem that forms the root of this mount.
    pub root: PathBuf,
    /// Where it is mounted, relative to our root.
    pub mount_point: PathBuf,
    /// Per-mount options (`rw,nosuid,...`).
    pub options: String,
    /// Filesystem type (`nfs4`, `tmpfs`, ...).
    pub fs_type: String,
    /// Mount source (`server:/export`, `/dev/sda1`, ...).
    pub source: String,
    /// Per-superblock options.
    pub super_options: String,
}

impl MountInfo {
    /// True when the mount is read-only.
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

/// Undoes the kernel's octal escapes (`\040` space, `\011` tab, `\012`
/// newline, `\134` backslash) in mountinfo path fields.
fn unescape(field: &str) -> Vec<u8> {
    let b = field.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 3 < b.len() {
            let oct = &b[i + 1..i + 4];
            if oct.iter().all(|c| (b'0'..=b'7').contains(c)) {
                let v = (oct[0] - b'0') as u32 * 64 + (oct[1] - b'0') as u32 * 8 + (oct[2] - b'0') as u32;
                if let Ok(v) = u8::try_from(v) {
                    out.push(v);
                    i += 4;
                    continue;
                }
            }
        }
        out.push(b[i]);
        i += 1;
    }
    out
}

fn unescape_path(field: &str) -> PathBuf {
    PathBuf::from(OsString::from_vec(unescape(field)))
}

fn unescape_string(field: &str) -> String {
    String::from_utf8_lossy(&unescape(field)).into_owned()
}

/// Parses the text of `/proc/<pid>/mountinfo`.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountInfo>> {
    text.lines().filter(|l| !l.trim().is_empty()).map(parse_line).collect()
}

fn parse_line(line: &str) -> Result<MountInfo> {
    let bad = || Error::Internal(format!("unparsable mountinfo line {line:?}"));
    let mut fields = line.split(' ');
    let mut next = || fields.next().ok_or_else(bad);
    let mount_id = next()?.parse().map_err(|_| bad())?;
    let parent_id = next()?.parse().map_err(|_| bad())?;
    let dev = next()?.to_string();
    let root = unescape_path(next()?);
    let mount_point = unescape_path(next()?);
    let options = next()?.to_string();
    // Zero or more optional fields ("shared:1", "master:2"), then "-".
    loop {
        if next()? == "-" {
            break;
        }
    }
    let fs_type = unescape_string(next()?);
    let source = unescape_string(next()?);
    let super_options = next().unwrap_or_default().to_string();
    Ok(MountInfo { mount_id, parent_id, dev, root, mount_point, options, fs_type, source, super_options })
}

/// The mounts visible to this process. Reads only the kernel's mount table:
/// never blocks on a dead server.
pub fn mounts() -> Result<Vec<MountInfo>> {
    let raw = std::fs::read("/proc/self/mountinfo").map_err(|e| Error::io("read /proc/self/mountinfo", e))?;
    parse_mountinfo(&String::from_utf8_lossy(&raw))
}

/// Makes `path` absolute-and-clean without touching the filesystem:
/// drops `.`, resolves `..` lexically, drops trailing slashes. Symlinks are
/// not followed (that would need `stat`); CSI paths from the CO have none.
pub fn normalize(path: &Path) -> Result<PathBuf> {
    if !path.is_absolute() {
        return Err(Error::InvalidArgument(format!("path {} is not absolute", path.display())));
    }
    let mut out = PathBuf::from("/");
    for c in path.components() {
        match c {
            Component::Normal(s) => out.push(s),
            Component::ParentDir => {
                out.pop();
            }
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    Ok(out)
}

/// The topmost mount at `path` in `table`, if any.
pub fn find_mount<'a>(table: &'a [MountInfo], path: &Path) -> Result<Option<&'a MountInfo>> {
    let path = normalize(path)?;
    Ok(table.iter().rev().find(|m| m.mount_point == path))
}

/// Is something mounted at `path`? Answers from `/proc/self/mountinfo`, so a
/// hung NFS mount at `path` still gets an answer.
pub fn is_mount_point(path: &Path) -> Result<bool> {
    Ok(find_mount(&mounts()?, path)?.is_some())
}

/// Runs `op` on its own thread and waits at most `timeout` for it.
fn bounded<F>(what: String, timeout: Duration, op: F) -> Result<()>
where
    F: FnOnce() -> nix::Result<()> + Send + 'static,
{
    bounded_call(what, timeout, op)
}

/// Runs `op` (any call that may block on a server: statvfs, chmod, stat of
/// a mount root) on its own thread and waits at most `timeout` for it; on
/// timeout the thread is abandoned (it may stay stuck in the kernel) and the
/// error is [`Error::Timeout`]. `op`'s own failure becomes [`Error::Sys`].
pub fn bounded_call<T, F>(what: String, timeout: Duration, op: F) -> Result<T>
where
    T: Send + 'static,
    F: FnOnce() -> nix::Result<T> + Send + 'static,
{
    let (tx, rx) = sync_channel(1);
    std::thread::Builder::new()
        .name("csi-mount".into())
        .spawn(move || {
            let _ = tx.send(op());
        })
        .map_err(|e| Error::io(format!("{what}: start a thread"), e))?;
    match rx.recv_timeout(timeout) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(errno)) => Err(Error::sys(what, errno)),
        Err(RecvTimeoutError::Timeout) => {
            tracing::warn!(after = ?timeout, "{what}: gave up waiting; the syscall may still be stuck in the kernel");
            Err(Error::Timeout { what, after: timeout })
        }
        Err(RecvTimeoutError::Disconnected) => Err(Error::Internal(format!("{what}: worker thread died"))),
    }
}

/// `statvfs(2)` of `path`, giving up after `timeout` (a mount of a dead
/// server blocks it).
pub fn statvfs(path: &Path, timeout: Duration) -> Result<nix::sys::statvfs::Statvfs> {
    let p = path.to_path_buf();
    bounded_call(format!("statvfs {}", path.display()), timeout, move || nix::sys::statvfs::statvfs(&p))
}

/// NodeGetVolumeStats's usage of a mounted filesystem: bytes (counted in
/// fragments, as `df` does) and inodes.
pub fn volume_usage(s: &nix::sys::statvfs::Statvfs) -> Vec<crate::pb::VolumeUsage> {
    use crate::pb::{volume_usage::Unit, VolumeUsage};
    let frsize = s.fragment_size() as i64;
    let (blocks, bfree, bavail) = (s.blocks() as i64, s.blocks_free() as i64, s.blocks_available() as i64);
    let (files, ffree) = (s.files() as i64, s.files_free() as i64);
    vec![
        VolumeUsage {
            unit: Unit::Bytes as i32,
            total: blocks * frsize,
            available: bavail * frsize,
            used: (blocks - bfree) * frsize,
        },
        VolumeUsage { unit: Unit::Inodes as i32, total: files, available: ffree, used: files - ffree },
    ]
}

/// `mount(2)` of `source` (type `fs_type`) at `target` with `flags` and
/// filesystem `data` (e.g. NFS options), giving up after `timeout`.
pub fn mount(
    source: &str,
    target: &Path,
    fs_type: &str,
    flags: MsFlags,
    data: Option<&str>,
    timeout: Duration,
) -> Result<()> {
    let what = format!("mount {fs_type} {source} at {}", target.display());
    let (source, target, fs_type) = (source.to_string(), target.to_path_buf(), fs_type.to_string());
    let data = data.map(str::to_string);
    tracing::debug!("{what}");
    bounded(what, timeout, move || {
        nix::mount::mount(Some(source.as_str()), &target, Some(fs_type.as_str()), flags, data.as_deref())
    })
}

/// Bind-mounts `source` at `target`; read-only when `read_only` (a bind
/// mount ignores MS_RDONLY, so that takes a second, remount call; if that
/// fails the bind is undone rather than left writable).
pub fn bind_mount(source: &Path, target: &Path, read_only: bool, timeout: Duration) -> Result<()> {
    let what = format!("bind {} at {}", source.display(), target.display());
    let (src, tgt) = (source.to_path_buf(), target.to_path_buf());
    bounded(what, timeout, move || nix::mount::mount(Some(&src), &tgt, None::<&str>, MsFlags::MS_BIND, None::<&str>))?;
    if read_only {
        if let Err(e) = remount_read_only(target, timeout) {
            let _ = unmount(target, timeout);
            return Err(e);
        }
    }
    Ok(())
}

/// Makes the bind mount at `target` read-only.
pub fn remount_read_only(target: &Path, timeout: Duration) -> Result<()> {
    let what = format!("remount {} read-only", target.display());
    let tgt = target.to_path_buf();
    bounded(what, timeout, move || {
        nix::mount::mount(
            None::<&str>,
            &tgt,
            None::<&str>,
            MsFlags::MS_BIND | MsFlags::MS_REMOUNT | MsFlags::MS_RDONLY,
            None::<&str>,
        )
    })
}

/// One `umount2(2)` with `flags`, giving up after `timeout`.
pub fn umount2(target: &Path, flags: MntFlags, timeout: Duration) -> Result<()> {
    let what = format!("unmount {} ({flags:?})", target.display());
    let tgt = target.to_path_buf();
    bounded(what, timeout, move || nix::mount::umount2(&tgt, flags))
}

/// Unmounts the topmost mount at `target`, escalating so that it returns
/// within about 2 × `timeout` even when the server behind it is dead:
///
/// 1. a plain unmount (flushes dirty data when the server is alive);
/// 2. busy (EBUSY) → a lazy detach (MNT_DETACH): gone from the namespace
///    now, released when its last user closes it;
/// 3. no answer within `timeout` → MNT_FORCE | MNT_DETACH (NFS aborts its
///    pending RPCs), bounded by `timeout` again.
///
/// Not mounted (EINVAL) or not there (ENOENT) counts as done: unmount is
/// idempotent, as CSI's Unpublish/Unstage must be.
pub fn unmount(target: &Path, timeout: Duration) -> Result<()> {
    let gone = |e: &Error| matches!(e, Error::Sys { errno: Errno::EINVAL | Errno::ENOENT, .. });
    match umount2(target, MntFlags::empty(), timeout) {
        Ok(()) => Ok(()),
        Err(e) if gone(&e) => Ok(()),
        Err(Error::Sys { errno: Errno::EBUSY, .. }) => {
            tracing::info!(target = %target.display(), "busy; detaching lazily");
            umount2(target, MntFlags::MNT_DETACH, timeout).or_else(|e| if gone(&e) { Ok(()) } else { Err(e) })
        }
        Err(Error::Timeout { .. }) => {
            tracing::warn!(target = %target.display(), "unmount hung; forcing and detaching");
            umount2(target, MntFlags::MNT_FORCE | MntFlags::MNT_DETACH, timeout).or_else(|e| {
                if gone(&e) {
                    Ok(())
                } else {
                    Err(e)
                }
            })
        }
        Err(e) => Err(e),
    }
}

/// Leaves nothing at `target`: unmounts every mount stacked on it (each
/// bounded as in [`unmount`]), then removes the directory (or file, for a
/// block volume's target). A missing `target` is success, so Unpublish
/// and Unstage can be retried.
pub fn cleanup_target(target: &Path, timeout: Duration) -> Result<()> {
    for _ in 0..MAX_STACKED {
        if !is_mount_point(target)? {
            return remove_target(target);
        }
        unmount(target, timeout)?;
    }
    Err(Error::FailedPrecondition(format!("{} still mounted after {MAX_STACKED} unmounts", target.display())))
}

/// Removes an unmounted target path; fine if it is already gone.
fn remove_target(target: &Path) -> Result<()> {
    let gone_or = |r: std::io::Result<()>, what: &str| match r {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(Error::io(format!("{what} {}", target.display()), e)),
    };
    match std::fs::remove_dir(target) {
        Err(e) if e.raw_os_error() == Some(libc::ENOTDIR) => gone_or(std::fs::remove_file(target), "remove"),
        r => gone_or(r, "remove directory"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/vda1 rw,errors=remount-ro
36 22 98:0 /mnt1 /mnt/parent rw,noatime master:1 - ext3 /dev/root rw,errors=continue
40 22 0:35 / /var/lib/kubelet/pods/p\\040q/volumes/kubernetes.io~csi/pv\\0111/mount rw,relatime - nfs4 server:/export/with\\040space rw,vers=4.2
41 40 0:36 / /var/lib/kubelet/pods/p\\040q/volumes/kubernetes.io~csi/pv\\0111/mount ro,relatime shared:7 master:3 - tmpfs tmpfs rw
50 22 0:40 / /back\\134slash rw - tmpfs none rw
";

    #[test]
    fn parses_fields_and_optional_fields() {
        let t = parse_mountinfo(SAMPLE).unwrap();
        assert_eq!(t.len(), 5);
        assert_eq!(t[1].mount_id, 36);
        assert_eq!(t[1].parent_id, 22);
        assert_eq!(t[1].dev, "98:0");
        assert_eq!(t[1].root, Path::new("/mnt1"));
        assert_eq!(t[1].mount_point, Path::new("/mnt/parent"));
        assert_eq!(t[1].fs_type, "ext3");
        assert_eq!(t[1].source, "/dev/root");
        assert_eq!(t[1].super_options, "rw,errors=continue");
        assert_eq!(t[3].fs_type, "tmpfs", "two optional fields");
        assert!(t[3].read_only() && !t[2].read_only());
    }

    #[test]
    fn octal_escapes_are_decoded() {
        let t = parse_mountinfo(SAMPLE).unwrap();
        assert_eq!(t[2].mount_point, Path::new("/var/lib/kubelet/pods/p q/volumes/kubernetes.io~csi/pv\t1/mount"));
        assert_eq!(t[2].source, "server:/export/with space");
        assert_eq!(t[4].mount_point, Path::new("/back\\slash"));
        // Not an escape: kept as is.
        assert_eq!(unescape("a\\9b\\"), b"a\\9b\\");
        assert_eq!(unescape("\\012"), b"\n");
    }

    #[test]
    fn finds_the_topmost_mount_by_lexical_path() {
        let t = parse_mountinfo(SAMPLE).unwrap();
        let p = Path::new("/var/lib/kubelet/pods/p q/volumes/kubernetes.io~csi/pv\t1/mount/");
        assert_eq!(find_mount(&t, p).unwrap().unwrap().mount_id, 41);
        let dotted = Path::new("/mnt/./x/../parent");
        assert_eq!(find_mount(&t, dotted).unwrap().unwrap().mount_id, 36);
        assert!(find_mount(&t, Path::new("/mnt")).unwrap().is_none());
        assert!(find_mount(&t, Path::new("relative")).is_err());
    }

    #[test]
    fn rejects_garbage() {
        assert!(parse_mountinfo("1 2 3").is_err());
        assert!(parse_mountinfo("x 1 0:1 / / rw - tmpfs t rw").is_err());
    }

    #[test]
    fn a_hung_syscall_is_abandoned_at_the_deadline() {
        let start = std::time::Instant::now();
        let err = bounded("unmount /dead".into(), Duration::from_millis(50), || {
            std::thread::sleep(Duration::from_secs(3));
            Ok(())
        })
        .unwrap_err();
        assert!(start.elapsed() < Duration::from_secs(1), "{:?}", start.elapsed());
        assert!(matches!(err, Error::Timeout { .. }), "{err}");
        assert_eq!(err.code(), tonic::Code::DeadlineExceeded);
        assert_eq!(err.to_string(), "unmount /dead: not finished after 50ms");
    }

    #[test]
    fn own_mount_table_has_a_root() {
        let t = mounts().unwrap();
        assert!(t.iter().any(|m| m.mount_point == Path::new("/")));
    }

    #[test]
    fn usage_of_the_root_filesystem_adds_up() {
        let s = statvfs(Path::new("/"), Duration::from_secs(5)).unwrap();
        let u = volume_usage(&s);
        assert_eq!(u.len(), 2);
        let bytes = &u[0];
        assert_eq!(bytes.unit, crate::pb::volume_usage::Unit::Bytes as i32);
        assert!(bytes.total > 0 && bytes.used >= 0 && bytes.available <= bytes.total - bytes.used);
        assert_eq!(u[1].unit, crate::pb::volume_usage::Unit::Inodes as i32);
        assert!(u[1].total >= u[1].used);
    }
}
