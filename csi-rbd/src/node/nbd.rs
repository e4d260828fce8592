//! The alternative mounter (`mounter: rbd-nbd`): the userspace `rbd-nbd`
//! daemon serves the image on an nbd device (for images with features the
//! kernel client lacks, or kernels without `rbd`).
//!
//! The key goes to `rbd-nbd` in a keyfile (mode 0600, under the state
//! directory), never on its command line, and the file is removed as soon
//! as `rbd-nbd map` returns (the daemon has authenticated by then).
//! Existing mappings are found through `rbd-nbd list-mapped --format json`.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::time::Duration;

use csi_core::Error;
use serde::Deserialize;

use super::exec;
use super::krbd::MapRequest;

/// Bound on `rbd-nbd map`.
pub const MAP_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound on `rbd-nbd unmap` and `list-mapped`.
pub const UNMAP_TIMEOUT: Duration = Duration::from_secs(15);

#[derive(Debug, Deserialize)]
struct Mapped {
    /// The daemon's pid: a number in some releases, a string in others.
    #[serde(default)]
    id: serde_json::Value,
    pool: String,
    #[serde(default)]
    namespace: String,
    image: String,
    #[serde(default)]
    snap: String,
    device: String,
}

impl Mapped {
    fn pid(&self) -> Option<i32> {
        let n = self.id.as_i64().or_else(|| self.id.as_str().and_then(|s| s.parse().ok()))?;
        i32::try_from(n).ok().filter(|p| *p > 0)
    }
}

fn list() -> Result<Vec<Mapped>, Error> {
    let out = exec::run_ok("rbd-nbd", &["list-mapped", "--format", "json"], UNMAP_TIMEOUT)?;
    if out.stdout.iter().all(u8::is_ascii_whitespace) {
        return Ok(Vec::new());
    }
    serde_json::from_slice(&out.stdout).map_err(|e| Error::Internal(format!("rbd-nbd list-mapped: not JSON: {e}")))
}

/// The nbd device serving `pool`/`image`, if any.
pub fn find(pool: &str, image: &str) -> Result<Option<String>, Error> {
    Ok(list()?
        .into_iter()
        .find(|m| m.pool == pool && m.image == image && m.namespace.is_empty() && (m.snap.is_empty() || m.snap == "-"))
        .map(|m| m.device))
}

/// `mapOptions` for rbd-nbd: `key=value` → `--key value`, `flag` → `--flag`.
pub fn option_args(options: &[String]) -> Result<Vec<String>, Error> {
    let mut args = Vec::new();
    for o in options {
        let (k, v) = match o.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (o.as_str(), None),
        };
        if k.is_empty() || k.starts_with('-') || matches!(k, "id" | "name" | "key" | "keyfile" | "keyring" | "m") {
            return Err(Error::InvalidArgument(format!("rbd-nbd map option {o:?} is not allowed")));
        }
        args.push(format!("--{k}"));
        if let Some(v) = v {
            args.push(v.to_string());
        }
    }
    Ok(args)
}

/// Maps `r.pool/r.image` through rbd-nbd (or finds its mapping) and
/// returns the device; `r.options` are rbd-nbd's (see [`option_args`]).
/// `key_dir` is where the short-lived keyfile goes.
pub fn map(r: &MapRequest<'_>, readonly: bool, key_dir: &Path) -> Result<String, Error> {
    let (pool, image) = (r.pool, r.image);
    if let Some(dev) = find(pool, image)? {
        return Ok(dev);
    }
    let mut args = vec!["map".to_string(), format!("{pool}/{image}"), "--id".into(), r.user.into()];
    args.extend(["-m".to_string(), r.monitors.join(",")]);
    if readonly {
        args.push("--read-only".into());
    }
    args.extend(option_args(r.options)?);
    std::fs::create_dir_all(key_dir).map_err(|e| Error::io(format!("create {}", key_dir.display()), e))?;
    let keyfile = key_dir.join(format!(".nbd-key-{}-{}", std::process::id(), super::unique()));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&keyfile)
        .map_err(|e| Error::io(format!("create {}", keyfile.display()), e))?;
    let written = f.write_all(r.key.as_bytes()).map_err(|e| Error::io(format!("write {}", keyfile.display()), e));
    drop(f);
    let result = written.and_then(|()| {
        args.extend(["--keyfile".to_string(), keyfile.display().to_string()]);
        let a: Vec<&str> = args.iter().map(String::as_str).collect();
        exec::run("rbd-nbd", &a, MAP_TIMEOUT)
    });
    let _ = std::fs::remove_file(&keyfile);
    let out = result?;
    if !out.status.success() {
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        return Err(match out.status.code() {
            _ if err.contains("No such file") || err.contains("(2)") => {
                Error::NotFound(format!("rbd image {pool}/{image} does not exist (rbd-nbd: {err})"))
            }
            _ if err.contains("Permission denied") || err.contains("(13)") || err.contains("(1)") => {
                Error::PermissionDenied(format!("rbd-nbd map {pool}/{image}: {err}"))
            }
            _ => Error::Internal(format!("rbd-nbd map {pool}/{image} failed ({}): {err}", out.status)),
        });
    }
    let dev = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !dev.starts_with("/dev/nbd") {
        return Err(Error::Internal(format!("rbd-nbd map {pool}/{image}: unexpected output {dev:?}")));
    }
    Ok(dev)
}

/// Unmaps `device`; already unmapped is success. When `rbd-nbd unmap` does
/// not finish in time (the cluster hangs and the daemon cannot close the
/// image), the daemon is killed: the nbd device then fails its I/O.
pub fn unmap(device: &str) -> Result<(), Error> {
    let mapped = list()?;
    let Some(m) = mapped.iter().find(|m| m.device == device) else {
        return Ok(());
    };
    match exec::run("rbd-nbd", &["unmap", device], UNMAP_TIMEOUT) {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) if list()?.iter().all(|x| x.device != device) => {
            tracing::debug!(
                device,
                "rbd-nbd unmap said {:?} but the device is gone",
                String::from_utf8_lossy(&out.stderr)
            );
            Ok(())
        }
        Ok(out) => Err(Error::Internal(format!(
            "rbd-nbd unmap {device} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ))),
        Err(Error::Timeout { .. }) if m.pid().is_some() => {
            let pid = m.pid().unwrap_or_default();
            tracing::warn!(device, pid, "rbd-nbd unmap hung; killing the daemon");
            let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), nix::sys::signal::Signal::SIGKILL);
            Ok(())
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn map_options_become_long_flags_and_credentials_are_refused() {
        let a = option_args(&["try-netlink".into(), "io-timeout=30".into()]).unwrap();
        assert_eq!(a, vec!["--try-netlink", "--io-timeout", "30"]);
        assert!(option_args(&["keyfile=/x".into()]).is_err());
        assert!(option_args(&["--x".into()]).is_err());
    }

    #[test]
    fn list_mapped_json_parses() {
        for j in [
            r#"[{"id":"123","pool":"rbd","namespace":"","image":"i","snap":"-","device":"/dev/nbd0"}]"#,
            r#"[{"id":123,"pool":"rbd","namespace":"","image":"i","snap":"-","device":"/dev/nbd0"}]"#,
        ] {
            let m: Vec<Mapped> = serde_json::from_str(j).unwrap();
            assert_eq!((m[0].device.as_str(), m[0].pid()), ("/dev/nbd0", Some(123)));
        }
    }
}
