//! `cni-policy watch --dir DIR`: applies the files of DIR, then re-applies them on every change
//! the kernel reports through inotify on DIR (a file written, created, deleted, renamed, or a
//! ConfigMap's `..data` symlink swapped). One thread waits with `poll` on the inotify
//! descriptor and on a signalfd for SIGTERM/SIGINT, so a stop request is served between two
//! applies, never in the middle of one. A file that does not parse is logged with its file,
//! line and field, and the policy in force stays as it was.

use std::os::fd::AsFd;
use std::path::Path;

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use policy::engine::Engine;

use crate::reconcile;
use crate::registry::{StateConfig, StateDir};
use crate::{Error, Result};

/// One reload: the files of `dir` and the registry, under the lock. Errors are the caller's to
/// log; on error nothing changed.
pub fn reload(state: &StateDir, engine: &Engine, dir: &Path) -> Result<()> {
    let _lock = state.lock()?;
    let (c, report) = reconcile::reapply(state, engine, dir)?;
    state.set_config(&StateConfig { policy_dir: dir.to_path_buf() })?;
    tracing::info!(
        rules = c.rule_count(),
        full = report.full,
        ops = report.ops,
        elapsed_us = report.elapsed.as_micros() as u64,
        kernel_us = report.commit.as_micros() as u64,
        "policy applied"
    );
    Ok(())
}

fn reload_logged(state: &StateDir, engine: &Engine, dir: &Path) {
    if let Err(e) = reload(state, engine, dir) {
        tracing::error!("{e}; the policy in force is unchanged");
    }
}

/// Runs until SIGTERM or SIGINT (then `Ok`). Errors only when the watch itself cannot be set up.
pub fn run(dir: &Path, state_dir: &Path) -> Result<()> {
    let io = |what: &'static str| move |e: nix::Error| Error::io(what, dir, std::io::Error::from(e));
    if !dir.is_dir() {
        return Err(Error::NoPolicyDir(dir.to_path_buf()));
    }
    let mut mask = SigSet::empty();
    mask.add(Signal::SIGTERM);
    mask.add(Signal::SIGINT);
    mask.thread_block().map_err(io("block SIGTERM"))?;
    let sfd = SignalFd::with_flags(&mask, SfdFlags::SFD_CLOEXEC | SfdFlags::SFD_NONBLOCK).map_err(io("signalfd"))?;
    let ino = Inotify::init(InitFlags::IN_CLOEXEC | InitFlags::IN_NONBLOCK).map_err(io("inotify"))?;
    ino.add_watch(
        dir,
        AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_CREATE
            | AddWatchFlags::IN_DELETE
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MODIFY
            | AddWatchFlags::IN_ATTRIB
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF,
    )
    .map_err(io("watch"))?;
    let state = StateDir::new(state_dir);
    // One engine for the daemon's life: it keeps what it applied in memory and reads the
    // record again only when another writer (the plugin, `label`) replaced it.
    let engine = reconcile::engine(&state);
    tracing::info!(dir = %dir.display(), state = %state_dir.display(), "watching");
    // The watch is in place before the first read: a change from here on is seen.
    reload_logged(&state, &engine, dir);
    loop {
        let mut fds = [PollFd::new(ino.as_fd(), PollFlags::POLLIN), PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(nix::errno::Errno::EINTR) => continue,
            Err(e) => return Err(io("poll")(e)),
        }
        if fds[1].revents().is_some_and(|r| !r.is_empty()) {
            if let Ok(Some(si)) = sfd.read_signal() {
                tracing::info!(signal = si.ssi_signo, "stopping");
            }
            return Ok(());
        }
        if fds[0].revents().is_some_and(|r| !r.is_empty()) {
            // Everything queued so far is one reload: an editor's save is several events.
            let mut gone = false;
            while let Ok(events) = ino.read_events() {
                if events.is_empty() {
                    break;
                }
                gone |= events.iter().any(|e| {
                    e.mask.intersects(
                        AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF | AddWatchFlags::IN_IGNORED,
                    )
                });
            }
            if gone {
                // The directory itself went away: keep what is in force, say so, and stop, so a
                // supervisor restarts us on the new directory.
                return Err(Error::NoPolicyDir(dir.to_path_buf()));
            }
            reload_logged(&state, &engine, dir);
        }
    }
}
