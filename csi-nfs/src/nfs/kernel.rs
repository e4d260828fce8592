//! The controller's second backend: the share mounted with the kernel NFS
//! client, for servers libnfs 4.0 cannot speak to (NFSv4.1/4.2 only).
//!
//! libnfs 4.0 (Debian 12) speaks NFSv3 and NFSv4.0; a server that serves
//! only 4.1 or 4.2 refuses it. Where the host's kernel has an NFS client,
//! the controller then does what csi-driver-nfs does for everything: it
//! mounts the share's root in a directory of its own ([`Mounts`], under
//! `--kernel-mount-dir`), works there with ordinary file system calls
//! ([`MountedShare`], the same [`ShareFs`] as libnfs, so records, snapshots,
//! idempotency and listings behave the same), and unmounts it after
//! [`IDLE_UNMOUNT`] without use.
//!
//! Mounting goes through the node's code (`crate::node`: `mount(2)` with
//! the server's address, bounded by `node::MOUNT_TIMEOUT`), unmounting
//! through csi-core's bounded unmount. The mount is `soft` with
//! [`MOUNT_OPTIONS`], so a call to a dead server fails with ETIMEDOUT
//! (UNAVAILABLE) after about 15 s instead of hanging the controller, and
//! `noac,lookupcache=none`, so what another replica or the node changed
//! is seen at once, as over libnfs (which caches nothing).
//!
//! The mount is on the controller's host, so nothing here follows a
//! symlink on the share: a link to `/etc` made by a user must not lead
//! the controller there. Parent components that are symlinks are refused
//! (`ELOOP`), `stat` reports a final symlink as one, chmod refuses it,
//! chown changes the link itself, and files are opened with `O_NOFOLLOW`.

use std::collections::HashMap;
use std::fs::OpenOptions;
use std::io::{Read, Write};
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

use super::fs::{check_path, ShareFs};
use super::{DirEntry, Error, FileType, FsStat, Result, Stat};

/// Where the controller mounts shares by default (`--kernel-mount-dir`).
pub const DEFAULT_MOUNT_DIR: &str = "/run/csi-nfs/mounts";

/// A share's mount unused this long is unmounted.
pub const IDLE_UNMOUNT: Duration = Duration::from_secs(30);

/// A call on a mount that makes no progress (no file system call returns)
/// for this long is abandoned: the soft mount bounds each NFS request, but
/// the kernel's NFSv4 state recovery against a dead server can keep a call
/// waiting beyond it. The RPC then answers UNAVAILABLE, the mount is
/// force-unmounted (which fails what is stuck in it), and the abandoned
/// call's remaining steps fail at once.
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);

/// NFS options of the controller's own mounts, after `port=` and `vers=`
/// taken from the share's mount options (the node's other options are for
/// the pods' mounts, not for the controller's). `soft,softerr`: a call the
/// server does not answer fails with ETIMEDOUT after `timeo` (5 s) and one
/// retransmission (10 s more), instead of blocking for ever.
pub const MOUNT_OPTIONS: &str = "soft,softerr,timeo=50,retrans=1,noac,lookupcache=none,nosuid,nodev,noexec";

/// Whether this host's kernel has an NFSv4 client: `nfs4` in
/// `/proc/filesystems`, or an `nfsv4` module the kernel loads on the first
/// NFSv4 mount. Decided once per process.
pub fn client_available() -> bool {
    static AVAILABLE: LazyLock<bool> = LazyLock::new(|| {
        let fs = std::fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if fs.lines().any(|l| l.split_whitespace().last() == Some("nfs4")) {
            return true;
        }
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
        ["modules.dep", "modules.builtin"].iter().any(|f| {
            std::fs::read_to_string(format!("/lib/modules/{}/{f}", release.trim()))
                .is_ok_and(|s| s.contains("/nfsv4.ko"))
        })
    });
    *AVAILABLE
}

/// What [`client_available`] looks at, for messages.
pub const NO_CLIENT: &str = "this host has no kernel NFS client (no nfs4 in /proc/filesystems and no nfsv4 module)";

/// A share as the kernel mounts it.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Target {
    /// Server, export and port (the version and timeout fields are libnfs's).
    pub nfs: super::Target,
    /// The NFSv4 minor version asked for; `None`: the newest the server has.
    pub minor: Option<u32>,
}

impl Target {
    /// The mount options: port, version, then [`MOUNT_OPTIONS`].
    fn options(&self) -> String {
        let mut o = Vec::new();
        if let Some(p) = self.nfs.port {
            o.push(format!("port={p}"));
        }
        match (self.nfs.version, self.minor) {
            (4, Some(m)) => o.push(format!("vers=4.{m}")),
            (4, None) => {} // 4.2, then 4.1, then 4.0 (the node's order)
            (v, _) => o.push(format!("vers={v}")),
        }
        o.push(MOUNT_OPTIONS.to_string());
        o.join(",")
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// The controller's mounts of share roots, one per [`Target`], shared by
/// the calls that run at the same time and unmounted when idle.
#[derive(Debug)]
pub struct Mounts {
    dir: PathBuf,
    bases: Mutex<HashMap<Target, Arc<Base>>>,
    next: AtomicU64,
    reaper: Once,
}

#[derive(Debug)]
struct Base {
    /// `<dir>/<pid>-<n>`: the pid tells a later process whose it was.
    dir: PathBuf,
    state: Mutex<State>,
}

#[derive(Debug, Default)]
struct State {
    mounted: bool,
    users: usize,
    last_used: Option<Instant>,
}

impl Default for Mounts {
    fn default() -> Self {
        Mounts::new(PathBuf::from(DEFAULT_MOUNT_DIR))
    }
}

impl Mounts {
    /// Mounts under `dir` (made when first needed).
    pub fn new(dir: PathBuf) -> Mounts {
        Mounts { dir, bases: Mutex::default(), next: AtomicU64::new(0), reaper: Once::new() }
    }

    /// The mount of `t`, mounted if it is not.
    fn take(self: &Arc<Self>, t: &Target) -> std::result::Result<Arc<Base>, csi_core::Error> {
        self.start_reaper();
        let base = Arc::clone(lock(&self.bases).entry(t.clone()).or_insert_with(|| {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            Arc::new(Base { dir: self.dir.join(format!("{}-{n}", std::process::id())), state: Mutex::default() })
        }));
        // Held while mounting: the callers of one share wait for one mount.
        let mut st = lock(&base.state);
        if !st.mounted {
            mount_base(t, &base.dir)?;
            st.mounted = true;
        }
        st.users += 1;
        drop(st);
        Ok(base)
    }

    /// Ends one use of `base`; a mount a transport error broke is unmounted
    /// as soon as nobody uses it, so the next call mounts afresh.
    fn release(&self, base: &Base, broken: bool) {
        let mut st = lock(&base.state);
        st.users = st.users.saturating_sub(1);
        st.last_used = Some(Instant::now());
        if broken && st.users == 0 && st.mounted {
            st.mounted = !unmount(&base.dir);
        }
    }

    /// A call on `t` is stuck: force-unmount it (NFS fails the requests
    /// pending in it) so that the next call mounts afresh.
    fn abort(&self, t: &Target) {
        let Some(base) = lock(&self.bases).get(t).cloned() else { return };
        let mut st = lock(&base.state);
        if st.mounted {
            let _ = csi_core::mount::umount2(&base.dir, nix::mount::MntFlags::MNT_FORCE, crate::node::UNMOUNT_TIMEOUT);
            st.mounted = !unmount(&base.dir);
        }
    }

    /// Unmounts the mounts idle for `idle`, and forgets those nobody holds.
    fn reap(&self, idle: Duration) {
        lock(&self.bases).retain(|_, base| {
            // One being mounted or used right now is not idle.
            let Ok(mut st) = base.state.try_lock() else { return true };
            let idle = st.users == 0 && st.last_used.is_none_or(|t| t.elapsed() >= idle);
            if idle && st.mounted {
                st.mounted = !unmount(&base.dir);
            }
            !(idle && !st.mounted && Arc::strong_count(base) == 1)
        });
    }

    /// Starts the thread that unmounts idle mounts; it first cleans up the
    /// mounts a killed controller left (directories of processes gone).
    fn start_reaper(self: &Arc<Self>) {
        self.reaper.call_once(|| {
            let weak = Arc::downgrade(self);
            let dir = self.dir.clone();
            let spawned = std::thread::Builder::new().name("csi-nfs-unmount".into()).spawn(move || {
                sweep_dead(&dir);
                loop {
                    std::thread::park_timeout(IDLE_UNMOUNT / 3);
                    let Some(m) = weak.upgrade() else { return };
                    m.reap(IDLE_UNMOUNT);
                }
            });
            if let Err(e) = spawned {
                tracing::warn!("cannot start the idle-unmount thread ({e}): shares stay mounted until exit");
            }
        });
    }
}

impl Drop for Mounts {
    /// Unmounts everything at exit (a graceful shutdown drops the service).
    fn drop(&mut self) {
        for base in lock(&self.bases).values() {
            let mut st = lock(&base.state);
            if st.mounted {
                st.mounted = !unmount(&base.dir);
            }
        }
    }
}

/// Unmounts (bounded, forced if the server is dead) and removes the
/// directory; never removes anything below it. Whether it is gone.
fn unmount(dir: &Path) -> bool {
    match csi_core::mount::cleanup_target(dir, crate::node::UNMOUNT_TIMEOUT) {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "cannot unmount the controller's mount of a share: {e}");
            false
        }
    }
}

/// Unmounts the mounts of controllers that are gone (`<pid>-<n>` with no
/// such process), e.g. killed before they could unmount.
fn sweep_dead(dir: &Path) {
    let Ok(entries) = std::fs::read_dir(dir) else { return };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name.split_once('-').and_then(|(p, _)| p.parse::<u32>().ok()) else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            tracing::info!(dir = %e.path().display(), "unmounting a share mount left by a controller that is gone");
            unmount(&e.path());
        }
    }
}

/// Mounts `t`'s export root at `dir` with the node's mount code.
fn mount_base(t: &Target, dir: &Path) -> std::result::Result<(), csi_core::Error> {
    use csi_core::Error as E;
    std::fs::create_dir_all(dir).map_err(|e| E::io(format!("create {}", dir.display()), e))?;
    let context: HashMap<String, String> =
        [("server", t.nfs.server.as_str()), ("share", t.nfs.export.as_str()), ("subdir", "")]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
    let plan = crate::node::MountPlan::new("", &context, &[], &t.options(), false)?;
    tracing::info!(share = t.nfs.display(), dir = %dir.display(), "mounting a share for the controller (kernel NFS client)");
    crate::node::mount_nfs(&plan, dir).map_err(|e| {
        let _ = std::fs::remove_dir(dir);
        match e {
            E::Sys { errno: nix::errno::Errno::ENODEV, .. } => E::FailedPrecondition(format!("{e}: {NO_CLIENT}")),
            E::Sys { errno: nix::errno::Errno::EPROTONOSUPPORT, .. } => E::FailedPrecondition(format!(
                "{e}: the server does not serve the NFS version asked for ({})",
                t.options()
            )),
            e => e,
        }
    })
}

/// How far a call on a mount has got, watched by [`run`].
#[derive(Debug)]
struct Progress {
    started: Instant,
    /// Milliseconds after `started` when a file system call last returned.
    last: AtomicU64,
    /// The caller gave up: every further call fails at once.
    abandoned: AtomicBool,
}

impl Progress {
    fn new() -> Progress {
        Progress { started: Instant::now(), last: AtomicU64::new(0), abandoned: AtomicBool::new(false) }
    }

    fn tick(&self) {
        self.last.store(self.started.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    fn stalled_for(&self) -> Duration {
        self.started.elapsed().saturating_sub(Duration::from_millis(self.last.load(Ordering::Relaxed)))
    }
}

/// Runs `f` on its own thread on `t` mounted under `mounts`, and maps the
/// errors to the spec's codes as [`super::run`] does. A call that makes no
/// progress for [`STALL_TIMEOUT`] is abandoned (UNAVAILABLE) and the mount
/// force-unmounted. Its own thread: the identity `f` may take
/// (`set_credentials`) never leaks to another call, and a thread stuck in
/// the kernel is left behind without holding up a pool.
pub async fn run<T, F>(mounts: Arc<Mounts>, t: Target, f: F) -> std::result::Result<T, csi_core::Error>
where
    T: Send + 'static,
    F: FnOnce(&mut dyn ShareFs) -> std::result::Result<T, csi_core::Error> + Send + 'static,
{
    let what = t.nfs.display();
    let progress = Arc::new(Progress::new());
    let (tx, mut rx) = tokio::sync::oneshot::channel();
    let (m, target, p) = (Arc::clone(&mounts), t.clone(), Arc::clone(&progress));
    std::thread::Builder::new()
        .name("csi-nfs-kernel".into())
        .spawn(move || {
            let r = m.take(&target).and_then(|base| {
                p.tick();
                let mut share = MountedShare {
                    root: base.dir.clone(),
                    target: target.nfs.display(),
                    creds: (0, 0),
                    broken: false,
                    progress: p,
                };
                let r = f(&mut share);
                let broken = share.broken;
                drop(share); // back to root's identity
                m.release(&base, broken);
                r
            });
            let _ = tx.send(r);
        })
        .map_err(|e| csi_core::Error::io(format!("{what}: start a thread"), e))?;
    loop {
        match tokio::time::timeout(Duration::from_secs(1), &mut rx).await {
            Ok(Ok(r)) => return r,
            Ok(Err(_)) => return Err(csi_core::Error::Internal(format!("{what}: the worker thread died"))),
            Err(_) if progress.stalled_for() >= STALL_TIMEOUT => {
                progress.abandoned.store(true, Ordering::Relaxed);
                tracing::warn!(
                    share = what,
                    "no answer through the kernel NFS client for {STALL_TIMEOUT:?}: call abandoned, unmounting"
                );
                tokio::task::spawn_blocking(move || mounts.abort(&t));
                return Err(csi_core::Error::Unavailable(format!(
                    "NFS server unreachable: {what}: no answer through the kernel NFS client for {STALL_TIMEOUT:?}"
                )));
            }
            Err(_) => {}
        }
    }
}

/// A share's root mounted by the kernel, as [`ShareFs`].
#[derive(Debug)]
pub struct MountedShare {
    root: PathBuf,
    target: String,
    /// The file system identity of this thread (setfsuid/setfsgid).
    creds: (u32, u32),
    /// A call failed in a way that says the mount is unusable.
    broken: bool,
    /// Watched by [`run`].
    progress: Arc<Progress>,
}

impl Drop for MountedShare {
    fn drop(&mut self) {
        // Even when unwinding: the blocking thread is reused by others.
        self.set_credentials(0, 0);
    }
}

fn kind(ft: std::fs::FileType) -> FileType {
    if ft.is_dir() {
        FileType::Dir
    } else if ft.is_file() {
        FileType::File
    } else if ft.is_symlink() {
        FileType::Symlink
    } else {
        FileType::Other
    }
}

impl MountedShare {
    /// The local path of `rel`, refusing `..` and symlinks on the way.
    fn path(&mut self, rel: &str) -> Result<PathBuf> {
        check_path(&self.target, rel)?;
        if self.progress.abandoned.load(Ordering::Relaxed) {
            self.broken = true;
            return Err(Error::local(&self.target, format!("path {rel}"), libc::ETIMEDOUT, "call abandoned"));
        }
        let parts: Vec<&str> = rel.split('/').filter(|c| !c.is_empty() && *c != ".").collect();
        let mut p = self.root.clone();
        for (i, c) in parts.iter().enumerate() {
            p.push(c);
            if i + 1 < parts.len() {
                match std::fs::symlink_metadata(&p) {
                    Ok(m) if m.file_type().is_symlink() => {
                        return Err(Error::local(
                            &self.target,
                            format!("path {rel}"),
                            libc::ELOOP,
                            "a parent is a symlink; the controller never follows one",
                        ))
                    }
                    Ok(_) => {}
                    // A missing parent fails in the call itself, with its errno.
                    Err(e) if matches!(e.raw_os_error(), Some(libc::ENOENT | libc::ENOTDIR)) => break,
                    // A server that does not answer: say so now, not after each component.
                    Err(e) => return self.check(Err(e), || format!("stat {}", parts[..=i].join("/"))),
                }
            }
        }
        Ok(p)
    }

    /// `r` as this module's result, noting errors that break the mount.
    fn check<T>(&mut self, r: std::io::Result<T>, op: impl FnOnce() -> String) -> Result<T> {
        self.progress.tick();
        r.map_err(|e| {
            let errno = e.raw_os_error().unwrap_or(libc::EIO);
            if matches!(errno, libc::ETIMEDOUT | libc::EIO | libc::ESTALE | libc::ENOTCONN | libc::ECONNREFUSED) {
                self.broken = true;
            }
            Error::local(&self.target, op(), errno, "")
        })
    }

    fn meta(&mut self, path: &str) -> Result<std::fs::Metadata> {
        let p = self.path(path)?;
        self.check(std::fs::symlink_metadata(&p), || format!("stat {path}"))
    }
}

impl ShareFs for MountedShare {
    fn target(&self) -> &str {
        &self.target
    }

    fn mkdir(&mut self, path: &str, mode: u32) -> Result<()> {
        let p = self.path(path)?;
        let r = std::fs::DirBuilder::new().mode(mode).create(&p);
        self.check(r, || format!("mkdir {path}"))?;
        // The process's umask took bits off: the mode asked for, exactly.
        if let Err(e) = self.chmod(path, mode) {
            let _ = std::fs::remove_dir(&p);
            return Err(e);
        }
        Ok(())
    }

    fn rmdir(&mut self, path: &str) -> Result<()> {
        let p = self.path(path)?;
        self.check(std::fs::remove_dir(&p), || format!("rmdir {path}"))
    }

    fn unlink(&mut self, path: &str) -> Result<()> {
        let p = self.path(path)?;
        self.check(std::fs::remove_file(&p), || format!("unlink {path}"))
    }

    fn stat(&mut self, path: &str) -> Result<Stat> {
        // Never follows a symlink (see the module's notes).
        self.lstat(path)
    }

    fn lstat(&mut self, path: &str) -> Result<Stat> {
        let m = self.meta(path)?;
        Ok(Stat { kind: kind(m.file_type()), mode: m.mode() & 0o7777, uid: m.uid(), gid: m.gid(), size: m.size() })
    }

    fn set_credentials(&mut self, uid: u32, gid: u32) {
        // Per thread: the kernel's NFS client sends the fsuid/fsgid as the
        // AUTH_SYS identity, and a non-zero fsuid drops root's file
        // capabilities, as for a process of that user.
        nix::unistd::setfsgid(nix::unistd::Gid::from_raw(gid));
        nix::unistd::setfsuid(nix::unistd::Uid::from_raw(uid));
        self.creds = (uid, gid);
    }

    fn chmod(&mut self, path: &str, mode: u32) -> Result<()> {
        if self.lstat(path)?.kind == FileType::Symlink {
            return Err(Error::local(&self.target, format!("chmod {mode:o} {path}"), libc::ELOOP, "a symlink"));
        }
        let p = self.path(path)?;
        let r = std::fs::set_permissions(&p, std::fs::Permissions::from_mode(mode));
        self.check(r, || format!("chmod {mode:o} {path}"))
    }

    fn chown(&mut self, path: &str, uid: u32, gid: u32) -> Result<()> {
        self.lchown(path, uid, gid)
    }

    fn lchown(&mut self, path: &str, uid: u32, gid: u32) -> Result<()> {
        let p = self.path(path)?;
        let r = std::os::unix::fs::lchown(&p, Some(uid), Some(gid));
        self.check(r, || format!("chown {uid}:{gid} {path}"))
    }

    fn rename(&mut self, from: &str, to: &str) -> Result<()> {
        let (f, t) = (self.path(from)?, self.path(to)?);
        self.check(std::fs::rename(&f, &t), || format!("rename {from} to {to}"))
    }

    fn read_dir(&mut self, path: &str) -> Result<Vec<DirEntry>> {
        let p = self.path(path)?;
        let op = || format!("opendir {path}");
        let r = std::fs::read_dir(&p).and_then(|d| {
            d.map(|e| {
                let e = e?;
                Ok(DirEntry { name: e.file_name().to_string_lossy().into_owned(), kind: kind(e.file_type()?) })
            })
            .collect::<std::io::Result<Vec<_>>>()
        });
        let mut out = self.check(r, op)?;
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }

    fn readlink(&mut self, path: &str) -> Result<String> {
        let p = self.path(path)?;
        let t = self.check(std::fs::read_link(&p), || format!("readlink {path}"))?;
        Ok(t.to_string_lossy().into_owned())
    }

    fn symlink(&mut self, target: &str, link: &str) -> Result<()> {
        let l = self.path(link)?;
        self.check(std::os::unix::fs::symlink(target, &l), || format!("symlink {link} -> {target}"))
    }

    fn statvfs(&mut self, path: &str) -> Result<FsStat> {
        let p = self.path(path)?;
        let r = nix::sys::statvfs::statvfs(&p).map_err(std::io::Error::from);
        let s = self.check(r, || format!("statvfs {path}"))?;
        let unit = if s.fragment_size() > 0 { s.fragment_size() } else { s.block_size() };
        Ok(FsStat {
            total_bytes: s.blocks().saturating_mul(unit),
            available_bytes: s.blocks_available().saturating_mul(unit),
            total_inodes: s.files(),
            free_inodes: s.files_free(),
        })
    }

    fn write_file(&mut self, path: &str, data: &[u8], mode: u32) -> Result<()> {
        let p = self.path(path)?;
        let r = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .custom_flags(libc::O_NOFOLLOW)
            .open(&p)
            .and_then(|mut f| {
                f.write_all(data)?;
                // The umask took bits off: the mode asked for, exactly.
                f.set_permissions(std::fs::Permissions::from_mode(mode))?;
                f.sync_all()
            });
        self.check(r, || format!("write {path}"))
    }

    fn read_file(&mut self, path: &str) -> Result<Vec<u8>> {
        let p = self.path(path)?;
        let r = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&p).and_then(|mut f| {
            let mut out = Vec::new();
            f.read_to_end(&mut out).map(|_| out)
        });
        self.check(r, || format!("read {path}"))
    }

    fn copy_file(&mut self, from: &str, to: &str, mode: u32) -> Result<u64> {
        let (f, t) = (self.path(from)?, self.path(to)?);
        let r = OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(&f).and_then(|mut src| {
            let mut dst = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode | 0o200)
                .custom_flags(libc::O_NOFOLLOW)
                .open(&t)?;
            // Chunks, not one copy_file_range: each shows progress to run().
            let (mut buf, mut n) = (vec![0u8; 1 << 20], 0u64);
            loop {
                let got = src.read(&mut buf)?;
                if got == 0 {
                    break;
                }
                dst.write_all(&buf[..got])?;
                n += got as u64;
                self.progress.tick();
            }
            dst.sync_all().map(|()| n)
        });
        self.check(r, || format!("copy {from} to {to}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(minor: Option<u32>, port: Option<u16>) -> Target {
        let nfs = super::super::Target {
            server: "10.0.2.2".into(),
            export: "/export".into(),
            port,
            version: 4,
            timeout: super::super::DEFAULT_TIMEOUT,
        };
        Target { nfs, minor }
    }

    #[test]
    fn the_controllers_mount_takes_port_and_version_and_is_soft() {
        assert_eq!(target(Some(1), Some(2050)).options(), format!("port=2050,vers=4.1,{MOUNT_OPTIONS}"));
        assert_eq!(target(None, None).options(), MOUNT_OPTIONS);
        assert!(MOUNT_OPTIONS.contains("soft,") && MOUNT_OPTIONS.contains("softerr"));
    }

    /// The file system calls themselves, on a local directory standing in
    /// for the mount (what NFS adds is the server's answers).
    #[test]
    fn a_local_tree_is_made_copied_and_removed_without_following_symlinks() {
        let d = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let mut s = MountedShare {
            root: d.path().to_path_buf(),
            target: "local".into(),
            creds: (0, 0),
            broken: false,
            progress: Arc::new(Progress::new()),
        };
        s.mkdir_all("a/b", 0o755).unwrap();
        s.mkdir("a/b/c", 0o2770).unwrap();
        assert_eq!(s.stat("a/b/c").unwrap().mode, 0o2770, "exactly the mode, whatever the umask");
        s.write_file_atomic("a/b/c/rec.json", b"{}", 0o644).unwrap();
        s.write_file_atomic("a/b/c/rec.json", b"{\"x\":1}", 0o644).unwrap();
        assert_eq!(s.read_file("a/b/c/rec.json").unwrap(), b"{\"x\":1}");
        assert!(s.write_file("a/b/c/rec.json", b"", 0o644).unwrap_err().is_exists());
        std::os::unix::fs::symlink(outside.path(), d.path().join("a/out")).unwrap();
        assert_eq!(s.stat("a/out").unwrap().kind, FileType::Symlink, "a final symlink is not followed");
        assert_eq!(s.mkdir("a/out/x", 0o755).unwrap_err().errno, libc::ELOOP, "nor a parent one");
        assert_eq!(s.chmod("a/out", 0o777).unwrap_err().errno, libc::ELOOP);
        assert_eq!(s.copy_tree("a", "copy").unwrap(), 7);
        assert_eq!(s.read_dir("copy").unwrap().iter().map(|e| e.name.as_str()).collect::<Vec<_>>(), ["b", "out"]);
        assert_eq!(s.readlink("copy/out").unwrap(), outside.path().to_string_lossy());
        assert_eq!(s.rmdir("..").unwrap_err().errno, libc::EINVAL);
        s.remove_all("a").unwrap();
        s.remove_all("copy").unwrap();
        assert!(outside.path().exists(), "removal never followed the link");
        assert!(s.try_stat("a").unwrap().is_none());
        assert!(s.statvfs("").unwrap().total_bytes > 0);
        assert!(!s.broken);
    }
}
