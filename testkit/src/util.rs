//! Small helpers: running host tools, unique names, JSON accessors.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};

/// Everything in this crate fails with a human-readable message.
pub type R<T> = Result<T, String>;

/// Returns early with a formatted failure message.
#[macro_export]
macro_rules! bail {
    ($($t:tt)*) => { return Err(format!($($t)*)) };
}

/// Fails with a message unless the condition holds.
#[macro_export]
macro_rules! ensure {
    ($c:expr, $($t:tt)*) => { if !$c { return Err(format!($($t)*)); } };
}

/// Adds context to a `Result<T, String>` (or any displayable error).
pub trait Context<T> {
    fn ctx(self, what: impl std::fmt::Display) -> R<T>;
}

impl<T, E: std::fmt::Display> Context<T> for Result<T, E> {
    fn ctx(self, what: impl std::fmt::Display) -> R<T> {
        self.map_err(|e| format!("{what}: {e}"))
    }
}

/// A PATH that finds `ip`, `iptables`, `nft`, ... for us and for plugins.
pub const SYS_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Runs a host tool and returns its stdout; the error carries stderr.
pub fn run(prog: &str, args: &[&str]) -> R<String> {
    let out = Command::new(prog)
        .args(args)
        .env("PATH", SYS_PATH)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("spawn {prog}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "`{prog} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// Runs `ip ARGS`.
pub fn ip(args: &[&str]) -> R<String> {
    run("ip", args)
}

/// Is a host tool on PATH?
pub fn have_tool(prog: &str) -> bool {
    SYS_PATH.split(':').any(|d| std::path::Path::new(d).join(prog).is_file())
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A number unique within this process (combine with the pid for global uniqueness).
pub fn next_id() -> u32 {
    COUNTER.fetch_add(1, Ordering::Relaxed)
}

pub fn pid() -> u32 {
    std::process::id()
}

/// Lower-case base-36, used to keep link names under IFNAMSIZ.
pub fn b36(mut n: u32) -> String {
    const D: &[u8] = b"0123456789abcdefghijklmnopqrstuvwxyz";
    if n == 0 {
        return "0".into();
    }
    let mut s = Vec::new();
    while n > 0 {
        s.push(D[(n % 36) as usize]);
        n /= 36;
    }
    s.reverse();
    String::from_utf8(s).unwrap_or_default()
}

pub fn parse_b36(s: &str) -> Option<u32> {
    let mut n: u32 = 0;
    for c in s.chars() {
        n = n.checked_mul(36)?.checked_add(c.to_digit(36)?)?;
    }
    Some(n)
}

/// Prefix of every resource this tool creates: netns, network names, data dirs.
pub const PREFIX: &str = "cft";

/// `cft-<pid>-<n>`: netns, network and container names.
pub fn unique_name(n: u32) -> String {
    format!("{PREFIX}-{}-{n}", pid())
}

/// `cft<pid36>-<n36>`: link names (<= 12 bytes, under IFNAMSIZ).
pub fn unique_link(n: u32) -> String {
    format!("{PREFIX}{}-{}", b36(pid()), b36(n))
}

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// On SIGINT/SIGTERM, only set a flag: the running check finishes (its
/// plugin children got the signal too) and its Drop guards clean up; the
/// remaining checks are not started.
pub fn install_interrupt_handler() {
    use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};
    let act = SigAction::new(SigHandler::Handler(on_signal), SaFlags::empty(), SigSet::empty());
    for sig in [Signal::SIGINT, Signal::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        let _ = unsafe { sigaction(sig, &act) };
    }
}

pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// Whether a process is alive (used to reclaim leftovers of dead runs).
pub fn pid_alive(pid: u32) -> bool {
    std::path::Path::new(&format!("/proc/{pid}")).exists()
}

/// How many TCP sockets in LISTEN state process `pid` holds, looked up in
/// the tables of its own network namespace (`/proc/PID/net/tcp{,6}`) and
/// matched by inode against its open file descriptors. For "this daemon
/// opened no listener" checks.
pub fn tcp_listeners_of(pid: u32) -> R<usize> {
    let mut listening = std::collections::HashSet::new();
    for table in ["tcp", "tcp6"] {
        let path = format!("/proc/{pid}/net/{table}");
        let text = std::fs::read_to_string(&path).map_err(|e| format!("read {path}: {e}"))?;
        for line in text.lines().skip(1) {
            let f: Vec<&str> = line.split_whitespace().collect();
            // st 0A: TCP_LISTEN; field 9: the socket's inode.
            if f.len() > 9 && f[3] == "0A" {
                listening.insert(f[9].to_string());
            }
        }
    }
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_err(|e| format!("list /proc/{pid}/fd: {e}"))?;
    Ok(fds
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| Some(l.to_str()?.strip_prefix("socket:[")?.strip_suffix(']')?.to_string()))
        .filter(|ino| listening.contains(ino))
        .count())
}

/// Shortens a string for a table cell.
pub fn clip(s: &str, max: usize) -> String {
    let s = s.trim().replace('\n', " ");
    if s.chars().count() <= max {
        s
    } else {
        let mut t: String = s.chars().take(max.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// Median and 90th percentile (nearest-rank) of a sample, in the sample's
/// unit (NaN for an empty sample). The one copy of this arithmetic: every
/// bench of `conformance` reports through it or [`median`].
pub fn median_p90(v: &[f64]) -> (f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN);
    }
    let mut s = v.to_vec();
    s.sort_by(|a, b| a.total_cmp(b));
    let med = if s.len() % 2 == 1 { s[s.len() / 2] } else { (s[s.len() / 2 - 1] + s[s.len() / 2]) / 2.0 };
    let rank = ((0.9 * s.len() as f64).ceil() as usize).clamp(1, s.len());
    (med, s[rank - 1])
}

/// The median of a sample (mean of the middle two for an even count; NaN if empty).
pub fn median(v: &[f64]) -> f64 {
    median_p90(v).0
}

/// Splits a line the way a POSIX shell would for double-quoted words with
/// backslash escapes (enough for `iptables-save` output).
pub fn shell_words(line: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
                in_word = true;
            }
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

static SMALL_SEQ: AtomicU32 = AtomicU32::new(0);

/// A number unique per process and call, small enough to go into interface
/// and netns names: the pid keeps parallel test binaries apart, the counter
/// keeps the tests of one binary apart.
pub fn uniq() -> u32 {
    (std::process::id() % 10_000) * 100 + SMALL_SEQ.fetch_add(1, Ordering::SeqCst)
}

/// Runs `cmd` with `sh -c`; stderr goes to the test's. Whether it succeeded, and its stdout.
pub fn sh(cmd: &str) -> (bool, String) {
    let out = Command::new("sh").arg("-c").arg(cmd).stderr(Stdio::inherit()).output().expect("run sh");
    (out.status.success(), String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The workspace root (where `scripts/` and the workspace `Cargo.toml` are):
/// `$CFT_ROOT` if set, else the nearest ancestor of the current directory
/// that holds `scripts/guest/run.sh` (cargo runs tests in their crate's
/// directory, scripts/test.sh runs the CLI at the root), else the checkout
/// this crate was compiled in. Found at run time first because a build dir
/// shared by two checkouts (a session's and CI's clone) keeps the
/// compile-time path of whichever built it last.
pub fn workspace_root() -> std::path::PathBuf {
    if let Some(r) = std::env::var_os("CFT_ROOT") {
        return r.into();
    }
    let marked = |d: &std::path::Path| d.join("scripts/guest/run.sh").is_file() && d.join("Cargo.toml").is_file();
    if let Ok(cwd) = std::env::current_dir() {
        if let Some(d) = cwd.ancestors().find(|d| marked(d)) {
            return d.to_path_buf();
        }
    }
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap_or(std::path::Path::new(".")).to_path_buf()
}

/// Polls `f` every 50 ms until it is true (true) or `timeout` has passed (false).
pub fn wait_until(timeout: std::time::Duration, mut f: impl FnMut() -> bool) -> bool {
    let end = std::time::Instant::now() + timeout;
    loop {
        if f() {
            return true;
        }
        if std::time::Instant::now() > end {
            return false;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base36_round_trips_and_names_fit_ifnamsiz() {
        for n in [0, 1, 35, 36, 4_194_304, u32::MAX] {
            assert_eq!(parse_b36(&b36(n)), Some(n));
        }
        assert!(format!("cft{}-{}", b36(4_194_304), b36(46_655)).len() <= 15);
    }

    #[test]
    fn percentiles() {
        let (m, p) = median_p90(&[5.0, 1.0, 3.0, 2.0, 4.0, 6.0, 7.0, 8.0, 9.0, 10.0]);
        assert_eq!(m, 5.5);
        assert_eq!(p, 9.0);
        let (m, p) = median_p90(&[3.0]);
        assert_eq!((m, p), (3.0, 3.0));
        assert_eq!(median(&[4.0, 1.0, 3.0]), 3.0);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn iptables_save_lines_split_like_a_shell() {
        let l = r#"-A POSTROUTING -s 10.0.0.2/32 -m comment --comment "name: \"n\" id: \"abc\"" -j CNI-1"#;
        let w = shell_words(l);
        assert_eq!(w[7], r#"name: "n" id: "abc""#);
        assert_eq!(w.last().map(String::as_str), Some("CNI-1"));
    }
}
