//! Network namespaces: opening one by path, and doing work inside it.

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
