//! What every node service's handlers share: the hop from the async runtime to a thread that
//! may block on the kernel (mounts, device I/O, tools), NodeUnpublishVolume, which is the
//! same for every driver (unmount the target, remove it; a target never mounted is OK), and
//! NodeGetVolumeStats of a mounted filesystem.

use std::path::Path;
use std::time::Duration;

use nix::errno::Errno;
use tonic::{Response, Status};

use crate::validate::{self, InFlight};
use crate::{mount, pb, Error};

/// Runs blocking work off the async runtime; a panic in it is INTERNAL.
pub async fn blocking<T, E, F>(f: F) -> Result<T, Status>
where
    F: FnOnce() -> Result<T, E> + Send + 'static,
    E: Into<Status>,
    T: Send + 'static,
    E: Send + 'static,
{
    match tokio::task::spawn_blocking(f).await {
        Ok(r) => r.map_err(Into::into),
        Err(e) => Err(Status::internal(format!("worker panicked: {e}"))),
    }
}

/// NodeUnpublishVolume: checks the request, holds the volume's in-flight claim (ABORTED when
/// another call has it), unmounts the target within `timeout` and removes it.
pub async fn unpublish(
    in_flight: &InFlight,
    req: pb::NodeUnpublishVolumeRequest,
    timeout: Duration,
) -> Result<Response<pb::NodeUnpublishVolumeResponse>, Status> {
    validate::require_volume_id(&req.volume_id)?;
    validate::require_target_path(&req.target_path)?;
    let target = mount::normalize(Path::new(&req.target_path))?;
    let _guard = in_flight.lock(&req.volume_id)?;
    blocking(move || mount::cleanup_target(&target, timeout)).await?;
    Ok(Response::new(pb::NodeUnpublishVolumeResponse {}))
}

/// NodeGetVolumeStats of the filesystem mounted at `path`: statvfs's bytes and inodes. Nothing
/// mounted there is NOT_FOUND (the path is looked up only then: a mounted path of a dead
/// server is never `stat`ed). A statvfs that does not return within `timeout`, or fails with
/// ESTALE or EIO (a server or device that stopped answering), is an abnormal volume
/// condition, not an error: the CO shows it.
pub fn filesystem_stats(path: &Path, timeout: Duration) -> Result<pb::NodeGetVolumeStatsResponse, Error> {
    let table = mount::mounts()?;
    if mount::find_mount(&table, path)?.is_none() {
        return match std::fs::symlink_metadata(path) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                Err(Error::NotFound(format!("volume path {} does not exist", path.display())))
            }
            Err(e) => Err(Error::io(format!("stat {}", path.display()), e)),
            Ok(_) => Err(Error::NotFound(format!("no volume is mounted at {}", path.display()))),
        };
    }
    match mount::statvfs(path, timeout) {
        Ok(s) => Ok(pb::NodeGetVolumeStatsResponse {
            usage: mount::volume_usage(&s),
            volume_condition: Some(pb::VolumeCondition { abnormal: false, message: String::new() }),
        }),
        Err(e @ (Error::Timeout { .. } | Error::Sys { errno: Errno::ESTALE | Errno::EIO, .. })) => {
            Ok(pb::NodeGetVolumeStatsResponse {
                usage: Vec::new(),
                volume_condition: Some(pb::VolumeCondition { abnormal: true, message: e.to_string() }),
            })
        }
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stats_of_a_missing_path_is_not_found_and_of_a_plain_dir_too() {
        let d = tempfile::tempdir().unwrap();
        let missing = filesystem_stats(&d.path().join("nope"), Duration::from_secs(5)).unwrap_err();
        assert!(matches!(&missing, Error::NotFound(m) if m.contains("does not exist")), "{missing}");
        let plain = filesystem_stats(d.path(), Duration::from_secs(5)).unwrap_err();
        assert!(matches!(&plain, Error::NotFound(m) if m.contains("no volume is mounted")), "{plain}");
    }
}
