//! The kernel RBD client through sysfs (`/sys/bus/rbd`, see the kernel's
//! `Documentation/ABI/testing/sysfs-bus-rbd`), without the `rbd` CLI.
//!
//! Mapping writes one line to `add_single_major`:
//! `MON[,MON…] name=USER,secret=KEY,OPTIONS POOL IMAGE -`. The key exists
//! only in that line, in memory, for that one write(2): never in a process
//! argument (`rbd map --key` would put it in `/proc/*/cmdline`), never in
//! a log line or an error message.
//!
//! A mapped image is found again by its pool and name under
//! `/sys/bus/rbd/devices/N/` (not by "the newest device"), so maps of other
//! images that run at the same time cannot confuse it, and a retried stage
//! after a crash reuses the mapping it left.

use std::path::{Path, PathBuf};
use std::time::Duration;

use csi_core::Error;
use nix::errno::Errno;

use super::exec;

/// The rbd bus in sysfs.
pub const SYSFS: &str = "/sys/bus/rbd";

/// Bound on the map write (the kernel talks to the monitors and OSDs).
pub const MAP_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on one unmap write.
pub const UNMAP_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on a forced unmap when the cluster is known to hang.
pub const HUNG_UNMAP_TIMEOUT: Duration = Duration::from_secs(3);
/// How long an unmap retries while the device is busy (still open).
pub const BUSY_WAIT: Duration = Duration::from_secs(10);

/// The kernel's ID of a mapped image (`/dev/rbd<ID>`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DevId(pub u32);

impl DevId {
    /// `/dev/rbdN`.
    pub fn device(self) -> String {
        format!("/dev/rbd{}", self.0)
    }

    /// Parses `/dev/rbdN`.
    pub fn from_device(dev: &str) -> Option<DevId> {
        dev.strip_prefix("/dev/rbd")?.parse().ok().map(DevId)
    }

    fn dir(self) -> PathBuf {
        Path::new(SYSFS).join("devices").join(self.0.to_string())
    }

    /// The kernel client's address as Ceph sees it (`IP:0/NONCE`): what
    /// fencing blocklists. The nonce changes with every client instance, so
    /// the same node after a reboot is a different address.
    pub fn client_addr(self) -> Result<String, Error> {
        read_attr(&self.dir(), "client_addr")
    }
}

fn read_attr(dir: &Path, name: &str) -> Result<String, Error> {
    let p = dir.join(name);
    std::fs::read_to_string(&p).map(|s| s.trim().to_string()).map_err(|e| Error::io(format!("read {}", p.display()), e))
}

/// The mapping of `pool`/`image` (head, not a snapshot), if any.
pub fn find(pool: &str, image: &str) -> Result<Option<DevId>, Error> {
    let devices = Path::new(SYSFS).join("devices");
    let rd = match std::fs::read_dir(&devices) {
        Ok(rd) => rd,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(Error::io(format!("read {}", devices.display()), e)),
    };
    for e in rd.flatten() {
        let Some(id) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let dir = e.path();
        // A device being removed at this moment loses its attributes: skip it.
        let (Ok(p), Ok(n), Ok(snap)) =
            (read_attr(&dir, "pool"), read_attr(&dir, "name"), read_attr(&dir, "current_snap"))
        else {
            continue;
        };
        let ns = read_attr(&dir, "pool_ns").unwrap_or_default();
        if p == pool && n == image && snap == "-" && ns.is_empty() {
            return Ok(Some(DevId(id)));
        }
    }
    Ok(None)
}

/// Checks map options for the one-line sysfs format: no whitespace, and
/// nothing the driver sets itself.
pub fn check_options(options: &[String]) -> Result<(), Error> {
    for o in options {
        let key = o.split('=').next().unwrap_or("");
        if o.is_empty() || o.chars().any(|c| c.is_whitespace() || c == ',') {
            return Err(Error::InvalidArgument(format!("krbd map option {o:?} is not a single option")));
        }
        if matches!(key, "name" | "secret" | "key") {
            return Err(Error::InvalidArgument(format!(
                "krbd map option {key}= is set by the driver from the secrets"
            )));
        }
    }
    Ok(())
}

/// The user and key go into the option list: a user with a separator in
/// it, or a key that is not base64, would change the line's meaning.
pub fn check_secret(user: &str, key: &str) -> Result<(), Error> {
    let bad_user = user.is_empty() || user.chars().any(|c| c.is_whitespace() || c == ',' || c == '=');
    let bad_key = key.is_empty() || !key.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '/' | '='));
    if bad_user || bad_key {
        return Err(Error::InvalidArgument(
            "secrets userID/userKey: expected a cephx user name (without spaces or commas) and a base64 key".into(),
        ));
    }
    Ok(())
}

/// What to map (krbd and rbd-nbd). Its Debug leaves the key out.
#[derive(Clone)]
pub struct MapRequest<'a> {
    /// Monitor addresses (`IP:3300`).
    pub monitors: &'a [String],
    /// cephx user without `client.`.
    pub user: &'a str,
    /// Its key (base64).
    pub key: &'a str,
    /// krbd options (`ms_mode=prefer-crc`, `ro`, …), checked.
    pub options: &'a [String],
    /// The pool.
    pub pool: &'a str,
    /// The image.
    pub image: &'a str,
}

impl std::fmt::Debug for MapRequest<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MapRequest")
            .field("monitors", &self.monitors)
            .field("user", &self.user)
            .field("key", &"***")
            .field("options", &self.options)
            .field("pool", &self.pool)
            .field("image", &self.image)
            .finish()
    }
}

/// Maps the image (or finds the mapping a previous attempt left) and
/// returns its device ID.
pub fn map(r: &MapRequest<'_>) -> Result<DevId, Error> {
    if let Some(id) = find(r.pool, r.image)? {
        return Ok(id);
    }
    check_options(r.options)?;
    check_secret(r.user, r.key)?;
    let mut opts = format!("name={},secret={}", r.user, r.key);
    for o in r.options {
        opts.push(',');
        opts.push_str(o);
    }
    let line = format!("{} {opts} {} {} -", r.monitors.join(","), r.pool, r.image);
    let what = format!("map rbd image {}/{}", r.pool, r.image);
    match exec::sysfs_write(&Path::new(SYSFS).join("add_single_major"), line, &what, MAP_TIMEOUT) {
        Ok(()) => {}
        Err(Error::Sys { errno: Errno::ENOENT, .. }) => {
            return Err(Error::NotFound(format!("rbd image {}/{} does not exist", r.pool, r.image)))
        }
        Err(e @ Error::Sys { errno: Errno::EACCES | Errno::EPERM, .. }) => {
            return Err(Error::PermissionDenied(format!("{e}: the cluster refused the user {:?} or its key", r.user)))
        }
        Err(e @ Error::Sys { errno: Errno::ETIMEDOUT | Errno::EIO | Errno::ENOTCONN, .. }) => {
            return Err(Error::Unavailable(format!("{e}: are the monitors {} reachable?", r.monitors.join(","))))
        }
        Err(e) => return Err(e),
    }
    find(r.pool, r.image)?.ok_or_else(|| Error::Internal(format!("{what}: mapped, but no device in {SYSFS}/devices")))
}

/// Unmaps `id` with `options` (`force`: even if open, failing pending I/O).
/// Already gone is success. A plain unmap that does not return in
/// [`UNMAP_TIMEOUT`] (a hung cluster) is retried with `force`. With
/// `cluster_hung` (the unmount had to be forced: dirty data cannot reach
/// the cluster anyway) the unmap is forced from the start.
pub fn unmap(id: DevId, options: &str, cluster_hung: bool) -> Result<(), Error> {
    let remove = Path::new(SYSFS).join("remove_single_major");
    let what = format!("unmap {}", id.device());
    let mut opts = options.split(',').map(str::trim).filter(|o| !o.is_empty()).collect::<Vec<_>>();
    if cluster_hung && !opts.contains(&"force") {
        opts.push("force");
    }
    let opts = opts.join(",");
    let gone = |r: Result<(), Error>| match r {
        Err(Error::Sys { errno: Errno::ENOENT, .. }) => Ok(()),
        r => r,
    };
    if !id.dir().exists() {
        return Ok(());
    }
    let line = if opts.is_empty() { id.0.to_string() } else { format!("{} {opts}", id.0) };
    let busy_until = std::time::Instant::now() + BUSY_WAIT;
    let first_bound = if cluster_hung { HUNG_UNMAP_TIMEOUT } else { UNMAP_TIMEOUT };
    match gone(exec::sysfs_write(&remove, line.clone(), &what, first_bound)) {
        Err(Error::Timeout { .. }) if opts.contains("force") => return removal_in_progress(id),
        Err(Error::Timeout { .. }) => {
            tracing::warn!(device = %id.device(), "unmap hung; forcing");
            return match gone(exec::sysfs_write(&remove, format!("{} force", id.0), &what, HUNG_UNMAP_TIMEOUT)) {
                Err(Error::Timeout { .. }) => removal_in_progress(id),
                r => r,
            };
        }
        Err(Error::Sys { errno: Errno::EBUSY, .. }) => {}
        r => {
            tracing::debug!(device = %id.device(), "unmap steps: busy=0µs tries=1");
            return r;
        }
    }
    // The filesystem just unmounted may still be letting go of the device
    // (seen with xfs right after umount returns, and with ext4 under TCG):
    // poll, 1 ms at first (it is usually a matter of milliseconds, and each
    // wait is on the unstage's path), doubling up to 8 ms (a write that
    // fails with EBUSY costs microseconds; a longer pause only delays).
    let mut pause = Duration::from_millis(1);
    let busy_since = std::time::Instant::now();
    let mut tries = 1u32;
    loop {
        tries += 1;
        match gone(exec::sysfs_write(&remove, line.clone(), &what, UNMAP_TIMEOUT)) {
            Err(Error::Sys { errno: Errno::EBUSY, .. }) if std::time::Instant::now() < busy_until => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(8));
            }
            r => {
                tracing::debug!(
                    device = %id.device(),
                    "unmap steps: busy={}µs tries={tries}",
                    busy_since.elapsed().as_micros()
                );
                return r;
            }
        }
    }
}

/// A forced unmap that does not return: the kernel waits for the cluster
/// to release the image (its header lock and watch), which a hung cluster
/// never answers. The device is dead already (its I/O fails, nothing can
/// open it), and the kernel finishes the removal when the cluster answers,
/// or when fencing blocklists this client. A second remove tells which:
/// EINPROGRESS (the removal is under way) is success, so that unstage
/// returns in bounded time instead of waiting for the cluster.
fn removal_in_progress(id: DevId) -> Result<(), Error> {
    let remove = Path::new(SYSFS).join("remove_single_major");
    let what = format!("unmap {} (check)", id.device());
    match exec::sysfs_write(&remove, format!("{} force", id.0), &what, HUNG_UNMAP_TIMEOUT) {
        Err(Error::Sys { errno: Errno::EINPROGRESS, .. }) => {
            tracing::warn!(
                device = %id.device(),
                "the cluster does not answer: the device is dead and its removal completes when the cluster answers or fences this client"
            );
            Ok(())
        }
        Ok(()) | Err(Error::Sys { errno: Errno::ENOENT, .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

/// Asks the kernel to re-read the image's size (after a resize).
pub fn refresh(id: DevId) -> Result<(), Error> {
    exec::sysfs_write(&id.dir().join("refresh"), "1".into(), &format!("refresh {}", id.device()), UNMAP_TIMEOUT)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_that_would_break_the_line_or_carry_keys_are_refused() {
        assert!(check_options(&["ms_mode=prefer-crc".into(), "noshare".into()]).is_ok());
        assert!(check_options(&["a b".into()]).is_err());
        assert!(check_options(&["secret=x".into()]).is_err());
        assert!(check_options(&["name=admin".into()]).is_err());
        assert!(check_options(&[String::new()]).is_err());
        assert!(check_secret("admin", "AQBx3Fdl6mXhKhAAzQ+/xI1Q==").is_ok());
        assert!(check_secret("admin", "AQB,ro").is_err());
        assert!(check_secret("a b", "AQB=").is_err());
        assert!(check_secret("", "AQB=").is_err());
        let r = MapRequest { monitors: &[], user: "u", key: "AQBsecret==", options: &[], pool: "p", image: "i" };
        assert!(!format!("{r:?}").contains("AQBsecret"));
    }

    #[test]
    fn device_names() {
        assert_eq!(DevId(3).device(), "/dev/rbd3");
        assert_eq!(DevId::from_device("/dev/rbd12"), Some(DevId(12)));
        assert_eq!(DevId::from_device("/dev/nbd1"), None);
    }
}
