//! Running a node tool (mkfs, blkid, resize2fs, xfs_growfs, rbd-nbd) with a
//! time bound: one that does not finish in time is SIGKILLed.

use std::process::{Command, Output, Stdio};
use std::sync::mpsc::{sync_channel, RecvTimeoutError};
use std::time::Duration;

use crate::Error;

/// Runs `prog args…` with stdin from `stdin` (if any), bounded by `timeout`.
/// Returns the output whatever the exit status (the caller reads it).
pub fn run(prog: &str, args: &[&str], timeout: Duration) -> Result<Output, Error> {
    let what = format!("{prog} {}", args.join(" "));
    let child = Command::new(prog)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| Error::io(format!("run {prog}"), e))?;
    let pid = child.id();
    let (tx, rx) = sync_channel(1);
    std::thread::Builder::new()
        .name("csi-exec".into())
        .spawn(move || {
            let _ = tx.send(child.wait_with_output());
        })
        .map_err(|e| Error::io(format!("{what}: start a thread"), e))?;
    match rx.recv_timeout(timeout) {
        Ok(r) => r.map_err(|e| Error::io(what, e)),
        Err(RecvTimeoutError::Timeout) => {
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid as i32), nix::sys::signal::Signal::SIGKILL);
            let _ = rx.recv_timeout(Duration::from_secs(5));
            Err(Error::Timeout { what, after: timeout })
        }
        Err(RecvTimeoutError::Disconnected) => Err(Error::Internal(format!("{what}: worker thread died"))),
    }
}

/// [`run`] that must exit 0; the error carries the tool's stderr.
pub fn run_ok(prog: &str, args: &[&str], timeout: Duration) -> Result<Output, Error> {
    let out = run(prog, args, timeout)?;
    if !out.status.success() {
        return Err(Error::Internal(format!(
            "{prog} {} failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tool_that_overruns_is_killed_at_the_deadline() {
        let start = std::time::Instant::now();
        let e = run("sleep", &["30"], Duration::from_millis(200)).unwrap_err();
        assert!(matches!(e, Error::Timeout { .. }), "{e}");
        assert!(start.elapsed() < Duration::from_secs(5));
        let out = run_ok("sh", &["-c", "echo hi"], Duration::from_secs(10)).unwrap();
        assert_eq!(out.stdout, b"hi\n");
        let e = run_ok("sh", &["-c", "echo nope >&2; exit 3"], Duration::from_secs(10)).unwrap_err();
        assert!(e.to_string().contains("nope"), "{e}");
    }
}
