//! `cni-policy watch --dir DIR`: applies the files of DIR, then re-applies them on every change
//! the kernel reports through inotify on DIR once a file is complete: closed after writing,
//! created, deleted, renamed in or out (a ConfigMap's `..data` symlink swap is a rename). Never on
//! `IN_MODIFY`: a half-written file must not be applied. One thread waits with `poll` on the
//! inotify descriptor and on a signalfd for SIGTERM/SIGINT, so a stop request is served between
//! two applies, never in the middle of one; the poll's timeout is the resync tick, which verifies
//! the tables are still in the kernel (and puts them back if not) and that bridged traffic still
//! meets them. A file that does not parse is logged with its file, line and field, and the last
//! good set stays in force.

use std::os::fd::AsFd;
use std::path::Path;
use std::time::{Duration, Instant};

use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};
use nix::sys::signal::{SigSet, Signal};
use nix::sys::signalfd::{SfdFlags, SignalFd};

use linux_net::nft::TableRef;
use policy::compile::Compiler;
use policy::engine::{Desired, Engine};

use crate::cluster::{self, Cluster, ClusterConf};
use crate::plugin::{bridge_nf_on, BRIDGE_NF_SYSCTLS};
use crate::reconcile;
use crate::registry::{StateConfig, StateDir};
use crate::{Error, Result};

/// One reload: the files of `dir` (or the last good set when they do not load) and the
/// registry, under the lock, through the daemon's incremental compiler: only what changed since
/// the last reload is compiled and sent (`Engine::apply_changes`), unless `full`, which compares
/// everything with the kernel (`Engine::apply`: tables gone or changed behind our back are put
/// back). The engine's state file is written after the change is in force, still under the
/// lock. Returns the tables applied. Errors are the caller's to log; on error nothing changed
/// in the kernel, and the compiler keeps the changes for the next reload.
///
/// In cluster mode the other hosts' endpoints are read from etcd first (etcd down: those last
/// read stay in use) and compiled as remote endpoints, and this host's registry is published
/// after.
pub fn reload(
    state: &StateDir,
    engine: &Engine,
    compiler: &mut Option<Compiler>,
    dir: &Path,
    full: bool,
    cluster: Option<&Cluster>,
) -> Result<Vec<TableRef>> {
    let _lock = state.lock()?;
    let listing = cluster.and_then(|cl| {
        cl.refresh(state)
            .map_err(|e| tracing::warn!("{e}: the other hosts' endpoints last read stay in use"))
            .ok()
            .map(|l| (cl, l))
    });
    // A directory that does not load is logged with its file, line and field (and the last
    // good set applied instead) by the loader.
    let loaded = reconcile::load_or_last_good(state, dir, true)?;
    let mut eps: Vec<policy::Endpoint> = state.list()?.iter().map(reconcile::endpoint).collect();
    // Other hosts' endpoints (cluster mode), less the addresses a local endpoint has.
    eps.extend(cluster::remote_endpoints(state)?);
    let eps = policy::model::local_first(&eps).unwrap_or(eps);
    let c = match compiler {
        Some(c) => {
            c.set_policies(loaded.set);
            c.set_endpoints(&eps);
            c
        }
        None => compiler.insert(Compiler::new(loaded.set, &eps)),
    };
    let report = if full { reconcile::apply(engine, c.compiled()) } else { reconcile::apply_changes(engine, c) }?;
    c.applied();
    if let Err(e) = engine.flush() {
        tracing::error!("{e}: the next apply by another writer replaces the tables");
    }
    state.set_config(&StateConfig { policy_dir: dir.to_path_buf() })?;
    if let Some((cl, l)) = &listing {
        cluster::publish_logged(state, cl, l);
    }
    tracing::info!(
        rules = c.compiled().rule_count(),
        full = report.full,
        ops = report.ops,
        elapsed_us = report.elapsed.as_micros() as u64,
        kernel_us = report.commit.as_micros() as u64,
        "policy applied"
    );
    Ok(c.compiled().tables().iter().map(|t| t.table.clone()).collect())
}

type Fingerprint = Vec<(std::ffi::OsString, u64, i64, i64)>;

fn reload_logged(
    state: &StateDir,
    engine: &Engine,
    compiler: &mut Option<Compiler>,
    dir: &Path,
    full: bool,
    cluster: Option<&Cluster>,
) -> Option<Vec<TableRef>> {
    reload(state, engine, compiler, dir, full, cluster)
        .map_err(|e| tracing::error!("{e}; the policy in force is unchanged"))
        .ok()
}

/// The resync tick: the tables last applied are still in the kernel (one get per table), and a
/// bridged endpoint's traffic still meets them (the bridge-nf-call sysctls). Puts back what is
/// missing; returns whether the tables had to be re-applied.
/// What the policy directory holds, cheaply: each entry's name, size and modification time, in
/// name order. The resync tick compares it with the one taken at the last reload, so a change
/// that inotify did not report (or that was lost) is still applied within one interval.
fn fingerprint(dir: &Path) -> Vec<(std::ffi::OsString, u64, i64, i64)> {
    use std::os::unix::fs::MetadataExt;
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter_map(|e| {
                    // Through symlinks, as the loader reads them (a ConfigMap's `..data`).
                    let m = std::fs::metadata(e.path()).ok()?;
                    Some((e.file_name(), m.size(), m.mtime(), m.mtime_nsec()))
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn resync(
    state: &StateDir,
    engine: &Engine,
    compiler: &mut Option<Compiler>,
    dir: &Path,
    applied: &mut Option<Vec<TableRef>>,
    seen: &mut Fingerprint,
    cluster: Option<&Cluster>,
) -> bool {
    if state.list().is_ok_and(|l| l.iter().any(|r| r.bridged)) && bridge_nf_on() == Some(false) {
        tracing::warn!("net.bridge.bridge-nf-call-iptables/-ip6tables were turned off: turning them on again");
        for k in BRIDGE_NF_SYSCTLS {
            if let Err(e) = linux_net::sysctl::ensure(k, "1") {
                tracing::error!("enable {k}: {e}");
            }
        }
    }
    let now = fingerprint(dir);
    // Cluster mode: re-list etcd (a change the watch missed), and publish what this host's
    // records lack (an ADD, DEL or relabel while etcd was down).
    let remote_changed = cluster.and_then(|cl| {
        let _lock = state.lock().map_err(|e| tracing::error!("{e}")).ok()?;
        let before = cluster::read_cache(state).ok().flatten();
        match cl.refresh(state) {
            Ok(l) if before.as_ref() != Some(&l.others) => Some("the other hosts' endpoints changed".to_string()),
            Ok(l) => {
                cluster::publish_logged(state, cl, &l);
                None
            }
            Err(e) => {
                tracing::warn!("resync: {e}");
                None
            }
        }
    });
    let gone = match applied {
        // The last reload failed: try again.
        None => Some("the last apply failed".to_string()),
        _ if now != *seen => Some("the policy directory changed without an inotify event".to_string()),
        _ if remote_changed.is_some() => remote_changed,
        Some(tables) => tables.iter().find_map(|t| match linux_net::nft::state::table_exists(t) {
            Ok(true) => None,
            Ok(false) => Some(format!("table {} {} is gone", t.family, t.name)),
            Err(e) => Some(format!("table {} {}: {e}", t.family, t.name)),
        }),
    };
    match gone {
        Some(why) => {
            tracing::warn!("{why}: re-applying");
            *seen = now;
            *applied = reload_logged(state, engine, compiler, dir, true, cluster);
            true
        }
        None => false,
    }
}

/// Whether an event means a finished change: a file closed after writing, renamed in or out,
/// deleted, or a directory or symlink created (a symlink is complete when it appears; a regular
/// file only when closed, so a half-written one is never read on its own account).
fn complete(dir: &Path, mask: AddWatchFlags, name: Option<&std::ffi::OsStr>) -> bool {
    if mask.intersects(
        AddWatchFlags::IN_CLOSE_WRITE
            | AddWatchFlags::IN_MOVED_TO
            | AddWatchFlags::IN_MOVED_FROM
            | AddWatchFlags::IN_DELETE,
    ) {
        return true;
    }
    mask.contains(AddWatchFlags::IN_CREATE)
        && (mask.contains(AddWatchFlags::IN_ISDIR)
            || name.is_some_and(|n| dir.join(n).symlink_metadata().is_ok_and(|m| m.file_type().is_symlink())))
}

/// The plugin's `policyDir` recorded in the state directory must be `dir` (when one is recorded):
/// two directories would apply two policies to the same tables, in turn.
fn same_dir(state: &StateDir, dir: &Path) -> Result<()> {
    let Some(cfg) = state.config()? else { return Ok(()) };
    let canon = |p: &Path| std::fs::canonicalize(p).unwrap_or_else(|_| p.to_path_buf());
    if canon(&cfg.policy_dir) != canon(dir) {
        return Err(Error::DirMismatch {
            dir: dir.to_path_buf(),
            recorded: cfg.policy_dir,
            config: state.root().join("config.json"),
        });
    }
    Ok(())
}

/// Runs until SIGTERM or SIGINT (then `Ok`). Errors when the watch itself cannot be set up, when
/// `dir` is not the plugin's recorded `policyDir` ([`Error::DirMismatch`]), or when `dir` itself
/// is deleted or moved.
///
/// `cluster`: share endpoints with the other hosts through etcd (docs/cni-policy.md, "Across
/// hosts"): the other hosts' records are watched, and a change is applied within
/// [`cluster::DEBOUNCE`] of the last of a burst (at most [`cluster::DEBOUNCE_MAX`] after the
/// first).
pub fn run(dir: &Path, state_dir: &Path, resync_every: Duration, cluster_conf: Option<ClusterConf>) -> Result<()> {
    let io = |what: &'static str| move |e: nix::Error| Error::io(what, dir, std::io::Error::from(e));
    if !dir.is_dir() {
        return Err(Error::NoPolicyDir(dir.to_path_buf()));
    }
    let state = StateDir::new(state_dir);
    same_dir(&state, dir)?;
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
            | AddWatchFlags::IN_DELETE_SELF
            | AddWatchFlags::IN_MOVE_SELF,
    )
    .map_err(io("watch"))?;
    // One engine for the daemon's life: it keeps what it applied in memory and reads the
    // record again only when another writer (the plugin, `label`) replaced it.
    let engine = reconcile::engine(&state);
    tracing::info!(dir = %dir.display(), state = %state_dir.display(), "watching");
    // Cluster mode: the etcd watch thread signals changes of other hosts' records on `rx`.
    let (cluster, rx) = match &cluster_conf {
        Some(cc) => {
            let (tx, rx) = std::os::unix::net::UnixStream::pair()
                .map_err(|e| Error::io("set up the etcd watch", "socketpair", e))?;
            rx.set_nonblocking(true).map_err(|e| Error::io("set up the etcd watch", "socketpair", e))?;
            cluster::spawn_notifier(cc.clone(), tx)?;
            // The plugin's budget: these calls hold the lock, which ADDs wait for.
            (Some(Cluster::new(cc)?), Some(rx))
        }
        None => {
            // The plugin's config decides cluster mode; a daemon without etcd settings never
            // compiles remote endpoints it cannot keep up to date.
            if cluster::settings(&state)?.is_some() {
                tracing::warn!("the plugin shares endpoints through etcd but watch has no etcd settings");
            }
            (None, None)
        }
    };
    let cluster = cluster.as_ref();
    // The watch is in place before the first read: a change from here on is seen.
    let mut seen = fingerprint(dir);
    // ... and one incremental compiler: a reload compiles and sends only what changed.
    let mut compiler = None;
    let mut applied = reload_logged(&state, &engine, &mut compiler, dir, false, cluster);
    let mut next_resync = Instant::now() + resync_every;
    // A burst of remote changes: (its first, its last).
    let mut pending: Option<(Instant, Instant)> = None;
    loop {
        let now = Instant::now();
        if now >= next_resync {
            resync(&state, &engine, &mut compiler, dir, &mut applied, &mut seen, cluster);
            next_resync = Instant::now() + resync_every;
            continue;
        }
        let mut wake = next_resync;
        if let Some((first, last)) = pending {
            let due = (last + cluster::DEBOUNCE).min(first + cluster::DEBOUNCE_MAX);
            if now >= due {
                pending = None;
                tracing::debug!("the other hosts' endpoints changed: re-applying");
                applied = reload_logged(&state, &engine, &mut compiler, dir, false, cluster);
                continue;
            }
            wake = wake.min(due);
        }
        let timeout = PollTimeout::try_from(wake - now).unwrap_or(PollTimeout::MAX);
        let mut fds = vec![PollFd::new(ino.as_fd(), PollFlags::POLLIN), PollFd::new(sfd.as_fd(), PollFlags::POLLIN)];
        if let Some(rx) = &rx {
            fds.push(PollFd::new(rx.as_fd(), PollFlags::POLLIN));
        }
        match poll(&mut fds, timeout) {
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
            let mut changed = false;
            while let Ok(events) = ino.read_events() {
                if events.is_empty() {
                    break;
                }
                gone |= events.iter().any(|e| {
                    e.mask.intersects(
                        AddWatchFlags::IN_DELETE_SELF | AddWatchFlags::IN_MOVE_SELF | AddWatchFlags::IN_IGNORED,
                    )
                });
                changed |= events.iter().any(|e| complete(dir, e.mask, e.name.as_deref()));
            }
            if gone {
                // The directory itself went away: keep what is in force, say so, and stop, so a
                // supervisor restarts us on the new directory.
                return Err(Error::NoPolicyDir(dir.to_path_buf()));
            }
            tracing::debug!(changed, "inotify events read");
            if changed {
                seen = fingerprint(dir);
                applied = reload_logged(&state, &engine, &mut compiler, dir, false, cluster);
            }
        }
        if let (Some(rx), Some(f)) = (&rx, fds.get(2)) {
            if f.revents().is_some_and(|r| r.contains(PollFlags::POLLHUP)) {
                return Err(Error::Cluster("the etcd watch thread ended".into()));
            }
            if f.revents().is_some_and(|r| !r.is_empty()) {
                use std::io::Read as _;
                let mut buf = [0u8; 256];
                while matches!((&*rx).read(&mut buf), Ok(n) if n > 0) {}
                let now = Instant::now();
                pending = Some((pending.map_or(now, |(first, _)| first), now));
            }
        }
    }
}
