//! Bounded sysfs writes, and the bounded tool runner from csi-core
//! ([`csi_core::exec`]; the node runs rbd-nbd with it).
//!
//! A sysfs write that does not return (the kernel waiting on a hung
//! cluster) is abandoned on its thread, as csi-core does for mounts.

use std::io::Write;
use std::path::Path;
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::time::Duration;

pub use csi_core::exec::{run, run_ok};
use csi_core::Error;

/// Writes `data` to the sysfs file `path` in one write(2), bounded by
/// `timeout`. `what` names the operation in errors; `data` never appears
/// in them (it may hold a key).
pub fn sysfs_write(path: &Path, data: String, what: &str, timeout: Duration) -> Result<(), Error> {
    let p = path.to_path_buf();
    let (tx, rx) = sync_channel(1);
    std::thread::Builder::new()
        .name("csi-rbd-sysfs".into())
        .spawn(move || {
            let r = std::fs::OpenOptions::new().write(true).open(&p).and_then(|mut f| f.write_all(data.as_bytes()));
            drop(data);
            let _ = tx.send(r);
        })
        .map_err(|e| Error::io(format!("{what}: start a thread"), e))?;
    match rx.recv_timeout(timeout) {
        Ok(Ok(())) => Ok(()),
        Ok(Err(e)) => match e.raw_os_error() {
            Some(n) => Err(Error::sys(what.to_string(), nix::errno::Errno::from_raw(n))),
            None => Err(Error::io(what.to_string(), e)),
        },
        Err(RecvTimeoutError::Timeout) => {
            tracing::warn!(after = ?timeout, "{what}: gave up waiting; the write may still be stuck in the kernel");
            Err(Error::Timeout { what: what.to_string(), after: timeout })
        }
        Err(RecvTimeoutError::Disconnected) => Err(Error::Internal(format!("{what}: worker thread died"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysfs_write_errors_name_the_operation_not_the_data() {
        let e =
            sysfs_write(Path::new("/nonexistent/add"), "secret=K".into(), "map x", Duration::from_secs(5)).unwrap_err();
        assert!(e.to_string().starts_with("map x"), "{e}");
        assert!(!e.to_string().contains("secret"), "{e}");
    }
}
