//! What every node service's handlers share: the hop from the async runtime to a thread that
//! may block on the kernel (mounts, device I/O, tools), and NodeUnpublishVolume, which is the
//! same for every driver (unmount the target, remove it; a target never mounted is OK).

use std::path::Path;
use std::time::Duration;

use tonic::{Response, Status};

use crate::validate::{self, InFlight};
use crate::{mount, pb};

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
