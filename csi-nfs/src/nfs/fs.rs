//! What the controller does on a share, whichever client reaches it.
//!
//! [`ShareFs`] is the controller's view of one export: paths relative to its
//! root, errors as [`Error`] (an errno, the operation and the server), so
//! that the CSI codes are decided in one place whatever the backend. Two
//! backends implement it:
//!
//! - [`super::Client`], libnfs from userspace (NFSv3 and NFSv4.0);
//! - [`super::kernel::MountedShare`], the share mounted with the kernel NFS
//!   client in a directory of the driver's (any version the kernel speaks,
//!   4.1 and 4.2 included).
//!
//! The backends give the primitives (one call to the server each); the
//! trees (`mkdir_all`, `remove_all`, `copy_tree`) and the atomic write are
//! built on them here, once for both.

use super::{Error, FileType, FsStat, Result, Stat};

/// `dir/name`, with `""` and `"/"` as the root.
pub(crate) fn join(dir: &str, name: &str) -> String {
    if dir.is_empty() || dir == "/" {
        name.to_string()
    } else {
        format!("{}/{name}", dir.trim_end_matches('/'))
    }
}

/// One export, as the controller works on it. Paths are relative to the
/// export's root; `..` never leaves it (refused with `EINVAL`).
pub trait ShareFs {
    /// `server:/export`, as error messages show it.
    fn target(&self) -> &str;
    /// Makes one directory with exactly `mode` (no umask).
    fn mkdir(&mut self, path: &str, mode: u32) -> Result<()>;
    /// Removes an empty directory.
    fn rmdir(&mut self, path: &str) -> Result<()>;
    /// Removes a file or symlink.
    fn unlink(&mut self, path: &str) -> Result<()>;
    /// Attributes of `path`, following a final symlink.
    fn stat(&mut self, path: &str) -> Result<Stat>;
    /// Attributes of `path` itself (a symlink is reported as one).
    fn lstat(&mut self, path: &str) -> Result<Stat>;
    /// The identity of the calls that follow (0:0 at the start of every
    /// use). A server that squashes root maps uid 0 to nobody but passes
    /// other uids through: acting as the volume's owner is how the
    /// controller makes a directory owned by `uid:gid` there.
    fn set_credentials(&mut self, uid: u32, gid: u32);
    /// Sets the permission bits (following a final symlink).
    fn chmod(&mut self, path: &str, mode: u32) -> Result<()>;
    /// Sets owner and group. The controller never chowns a symlink it did
    /// not make.
    fn chown(&mut self, path: &str, uid: u32, gid: u32) -> Result<()>;
    /// Sets owner and group of a symlink itself.
    fn lchown(&mut self, path: &str, uid: u32, gid: u32) -> Result<()>;
    /// Renames `from` to `to` (replacing a file at `to`, as rename(2)).
    fn rename(&mut self, from: &str, to: &str) -> Result<()>;
    /// The entries of a directory, without `.` and `..`, sorted by name.
    fn read_dir(&mut self, path: &str) -> Result<Vec<super::DirEntry>>;
    /// The target of a symlink.
    fn readlink(&mut self, path: &str) -> Result<String>;
    /// Makes a symlink at `link` pointing to `target` (stored verbatim).
    fn symlink(&mut self, target: &str, link: &str) -> Result<()>;
    /// Size and free space of the export's file system.
    fn statvfs(&mut self, path: &str) -> Result<FsStat>;
    /// Writes `data` to a new file with `mode`; an existing file is EEXIST.
    fn write_file(&mut self, path: &str, data: &[u8], mode: u32) -> Result<()>;
    /// The whole content of a (small) file.
    fn read_file(&mut self, path: &str) -> Result<Vec<u8>>;
    /// Copies the regular file `from` to the new file `to` (created with
    /// `mode | 0o200`, EEXIST if it exists); returns the bytes copied.
    fn copy_file(&mut self, from: &str, to: &str, mode: u32) -> Result<u64>;

    /// `stat`, with a missing path as `None`.
    fn try_stat(&mut self, path: &str) -> Result<Option<Stat>> {
        match self.stat(path) {
            Ok(s) => Ok(Some(s)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Makes `path` and its missing parents (each with `mode`); existing
    /// directories are fine.
    fn mkdir_all(&mut self, path: &str, mode: u32) -> Result<()> {
        let mut cur = String::new();
        for c in path.split('/').filter(|c| !c.is_empty()) {
            cur = join(&cur, c);
            match self.mkdir(&cur, mode) {
                Ok(()) => {}
                Err(e) if e.is_exists() => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Removes `path` and everything under it; symlinks are removed, never
    /// followed. A missing path is success.
    fn remove_all(&mut self, path: &str) -> Result<()> {
        let st = match self.lstat(path) {
            Ok(st) => st,
            Err(e) if e.is_not_found() => return Ok(()),
            Err(e) => return Err(e),
        };
        if st.kind != FileType::Dir {
            return match self.unlink(path) {
                Err(e) if !e.is_not_found() => Err(e),
                _ => Ok(()),
            };
        }
        for ent in self.read_dir(path)? {
            self.remove_all(&join(path, &ent.name))?;
        }
        match self.rmdir(path) {
            Err(e) if !e.is_not_found() => Err(e),
            _ => Ok(()),
        }
    }

    /// Copies the tree at `from` to `to` (which must not exist): files,
    /// directories and symlinks, with their modes, and their owners where
    /// the server lets us (a root-squashing server does not; that is not an
    /// error). Devices, FIFOs and sockets are skipped. Returns the bytes
    /// of file data copied.
    fn copy_tree(&mut self, from: &str, to: &str) -> Result<u64> {
        let st = self.lstat(from)?;
        let mut bytes = 0;
        let best_effort = |r: Result<()>| {
            if let Err(e) = r {
                tracing::debug!("copy keeps the server's owner: {e}");
            }
        };
        match st.kind {
            FileType::Dir => {
                // Writable while we fill it; the real mode at the end.
                self.mkdir(to, 0o700)?;
                for ent in self.read_dir(from)? {
                    bytes += self.copy_tree(&join(from, &ent.name), &join(to, &ent.name))?;
                }
                best_effort(self.chown(to, st.uid, st.gid));
                self.chmod(to, st.mode)?;
            }
            FileType::File => {
                bytes = self.copy_file(from, to, st.mode)?;
                best_effort(self.chown(to, st.uid, st.gid));
                // After chown, which may clear setuid/setgid bits.
                self.chmod(to, st.mode)?;
            }
            FileType::Symlink => {
                let target = self.readlink(from)?;
                self.symlink(&target, to)?;
                best_effort(self.lchown(to, st.uid, st.gid));
            }
            FileType::Other => tracing::debug!(path = from, "copy: skipping a device, FIFO or socket"),
        }
        Ok(bytes)
    }

    /// Writes `data` to `path` (new or replaced) through a temporary file
    /// and a rename, so a reader sees the old content or the new one,
    /// never a part.
    fn write_file_atomic(&mut self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tmp = format!("{path}.tmp-{}-{n}", std::process::id());
        if let Err(e) = self.write_file(&tmp, data, mode).and_then(|()| self.rename(&tmp, path)) {
            let _ = self.unlink(&tmp);
            return Err(e);
        }
        Ok(())
    }
}

/// Refuses a path that would leave the export.
pub(crate) fn check_path(target: &str, rel: &str) -> Result<()> {
    if rel.split('/').any(|c| c == "..") {
        return Err(Error::local(target, format!("path {rel:?}"), libc::EINVAL, "'..' is not allowed"));
    }
    if rel.contains('\0') {
        return Err(Error::local(target, format!("path {rel:?}"), libc::EINVAL, "NUL byte in path"));
    }
    Ok(())
}
