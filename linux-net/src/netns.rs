//! Network namespaces: opening one by path, and doing work inside it (on
//! this thread, or on a new one that may also enter a mount namespace).

use std::fs::File;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::path::{Path, PathBuf};

use nix::sched::{setns, CloneFlags};

use crate::error::{Error, Result};
use crate::netlink::Netlink;

/// An open handle on a network namespace (keeps it alive while open).
pub struct NetNs {
    file: File,
    path: PathBuf,
}

impl NetNs {
    pub fn open(path: &Path) -> Result<NetNs> {
        let file = File::open(path).map_err(|e| Error::io(format!("open netns {}", path.display()), e))?;
        Ok(NetNs { file, path: path.to_path_buf() })
    }

    /// The namespace the calling thread is in now.
    pub fn current() -> Result<NetNs> {
        NetNs::open(Path::new("/proc/thread-self/ns/net"))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn fd(&self) -> RawFd {
        self.file.as_raw_fd()
    }

    /// Runs `f` with the calling thread inside this namespace, then returns.
    pub fn run<T>(&self, f: impl FnOnce() -> T) -> Result<T> {
        let home = NetNs::current()?;
        setns(self.file.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::Kernel { op: format!("enter netns {}", self.path.display()), errno: e })?;
        let out = f();
        setns(home.file.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::Kernel { op: "return to the original netns".into(), errno: e })?;
        Ok(out)
    }

    /// A route socket that lives in this namespace.
    pub fn netlink(&self) -> Result<Netlink> {
        self.run(Netlink::open)?
    }
}

/// Runs `f` on a new thread inside the network namespace at `net` and, if
/// given, the mount namespace at `mnt` (e.g. `/proc/PID/ns/mnt`); the
/// calling thread stays where it is. Both files are opened before the thread
/// starts, so a wrong path is an error here. The thread first unshares its
/// filesystem context: a thread that shares it with the rest of the process
/// may not change its mount namespace. The caller can bound the wait with
/// [`std::thread::JoinHandle::is_finished`] (a call into a dead NFS server
/// may block).
pub fn spawn_in<T, F>(net: &Path, mnt: Option<&Path>, f: F) -> Result<std::thread::JoinHandle<Result<T>>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let net = NetNs::open(net)?;
    let mnt = match mnt {
        Some(p) => Some((File::open(p).map_err(|e| Error::io(format!("open {}", p.display()), e))?, p.to_path_buf())),
        None => None,
    };
    let enter = move || -> Result<T> {
        if let Some((file, path)) = &mnt {
            nix::sched::unshare(CloneFlags::CLONE_FS)
                .map_err(|e| Error::Kernel { op: "unshare the thread's fs context".into(), errno: e })?;
            setns(file.as_fd(), CloneFlags::CLONE_NEWNS)
                .map_err(|e| Error::Kernel { op: format!("enter mount namespace {}", path.display()), errno: e })?;
        }
        setns(net.file.as_fd(), CloneFlags::CLONE_NEWNET)
            .map_err(|e| Error::Kernel { op: format!("enter netns {}", net.path.display()), errno: e })?;
        Ok(f())
    };
    std::thread::Builder::new()
        .name("in-netns".into())
        .spawn(enter)
        .map_err(|e| Error::io("spawn a namespace thread", e))
}

/// [`spawn_in`], waiting at most `timeout` for `f`'s result: `Ok(None)` if it
/// did not return in time (the thread is left to finish on its own, e.g. a
/// call blocked on an unreachable NFS server).
pub fn run_in_bounded<T, F>(net: &Path, mnt: Option<&Path>, timeout: std::time::Duration, f: F) -> Result<Option<T>>
where
    T: Send + 'static,
    F: FnOnce() -> T + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::channel();
    let th = spawn_in(net, mnt, move || {
        let _ = tx.send(f());
    })?;
    match rx.recv_timeout(timeout) {
        Ok(v) => {
            th.join().map_err(|_| Error::io("namespace thread", std::io::Error::other("panicked")))??;
            Ok(Some(v))
        }
        Err(std::sync::mpsc::RecvTimeoutError::Timeout) => Ok(None),
        // The sender went away without a value: entering a namespace failed, or `f` panicked.
        Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
            th.join().map_err(|_| Error::io("namespace thread", std::io::Error::other("panicked")))??;
            Err(Error::io("namespace thread", std::io::Error::other("ended without a result")))
        }
    }
}
