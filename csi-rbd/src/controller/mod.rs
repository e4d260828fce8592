//! The Controller service: RBD images and ceph-csi's omap journal, through
//! cached cluster connections ([`crate::connection`]).
//!
//! - Every RPC checks its request first (no I/O), then connects with the
//!   request's secrets, then takes an in-process lock on its name or ID and
//!   runs its body ([`ops`]) on a blocking thread. Concurrent calls for one
//!   name wait for each other and get the same answer: no ABORTED.
//! - Idempotency across retries, restarts and replicas comes from the
//!   journal in the pool ([`crate::journal`]), not from this process.
//! - RPCs that carry no secrets (ListVolumes, GetCapacity,
//!   ControllerGetVolume) use the connection last made for the cluster
//!   (see [`crate::connection`]); ListVolumes and ListSnapshots without a
//!   filter walk the pools this controller has served since it started.

pub mod ops;

use std::collections::{BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use csi_core::locks::Locks;
use csi_core::paging::page;
use csi_core::pb::{self, controller_service_capability as csc};
use csi_core::redact::Secrets;
use csi_core::validate::{self, CapabilitySupport};
use csi_core::Error;
use tonic::{Request, Response, Status};
use tracing::info;

use crate::connection::{ceph_err, Connections};
use crate::journal;
use crate::params::{CreateParams, SnapshotParams};
use crate::volume_id::VolumeId;

use pb::volume_capability::access_mode::Mode as AccessMode;

/// The access modes csi-rbd serves: one node read-write, or many nodes
/// read-only. A mode that lets two nodes write (MULTI_NODE_*_WRITER) is
/// refused: that is exactly the corruption this driver exists to prevent.
pub const SUPPORT: CapabilitySupport = CapabilitySupport {
    block: true,
    modes: &[
        AccessMode::SingleNodeWriter,
        AccessMode::SingleNodeReaderOnly,
        AccessMode::SingleNodeSingleWriter,
        AccessMode::SingleNodeMultiWriter,
        AccessMode::MultiNodeReaderOnly,
    ],
};

/// csi-rbd's Controller service.
#[derive(Debug)]
pub struct ControllerService {
    config: crate::Config,
    conns: Arc<Connections>,
    locks: Locks,
    /// (clusterID, pool) served since start, for unfiltered listings.
    pools: Mutex<BTreeSet<(String, String)>>,
}

async fn blocking<T, F>(f: F) -> Result<T, Error>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Error> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| Error::Internal(format!("blocking task: {e}")))?
}

/// [`blocking`] for bodies that answer a gRPC status (`crate::attach`).
async fn blocking_status<T, F>(f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Status> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(format!("blocking task: {e}")))?
}

fn parse_id(id: &str, what: &str) -> Result<VolumeId, Error> {
    VolumeId::parse(id).map_err(|_| Error::NotFound(format!("{what} {id:?} not found")))
}

impl ControllerService {
    /// A controller with an empty connection cache.
    pub fn new(config: crate::Config) -> Self {
        let conns = Arc::new(Connections::new(config.cluster_config.clone(), config.ceph_timeout));
        ControllerService { config, conns, locks: Locks::default(), pools: Mutex::default() }
    }

    /// The connection cache (for the metrics).
    pub fn connections(&self) -> Arc<Connections> {
        Arc::clone(&self.conns)
    }

    /// The driver-wide settings.
    pub fn config(&self) -> &crate::Config {
        &self.config
    }

    fn remember_pool(&self, cluster: &str, pool: &str) {
        self.pools.lock().unwrap_or_else(|e| e.into_inner()).insert((cluster.to_string(), pool.to_string()));
    }

    fn known_pools(&self) -> Vec<(String, String)> {
        self.pools.lock().unwrap_or_else(|e| e.into_inner()).iter().cloned().collect()
    }

    /// A connection for `cluster` with `secrets`, which the RPC must carry
    /// (INVALID_ARGUMENT without `userID`/`userKey`): CreateVolume,
    /// DeleteVolume, ControllerExpandVolume and the snapshot RPCs, whose
    /// secrets every ceph-csi StorageClass names.
    async fn conn_with(&self, cluster: &str, secrets: HashMap<String, String>) -> Result<Arc<dyn ceph::Rbd>, Error> {
        Ok(self.conns.get(cluster, &Secrets::from(secrets)).await?.rbd)
    }

    /// A connection for `cluster` with `secrets`, or without secrets the
    /// last one used for it.
    async fn conn(&self, cluster: &str, secrets: HashMap<String, String>) -> Result<Arc<dyn ceph::Rbd>, Error> {
        if secrets.is_empty() {
            return self.conns.latest(cluster).map(|c| c.rbd);
        }
        Ok(self.conns.get(cluster, &Secrets::from(secrets)).await?.rbd)
    }

    /// Every complete entry of `kind` in the pools served since start.
    async fn all_entries(&self, kind: journal::Kind) -> Result<Vec<(String, i64, journal::Entry)>, Error> {
        let mut all = Vec::new();
        for (cluster, pool) in self.known_pools() {
            let Ok(c) = self.conns.latest(&cluster) else { continue };
            let (cl, rbd) = (cluster.clone(), c.rbd);
            let found = blocking(move || {
                let pool_id = rbd.pool_id(&pool).map_err(ceph_err)?;
                let entries = ops::list_entries(rbd.as_ref(), &pool, kind)?;
                Ok(entries.into_iter().map(|e| (cl.clone(), pool_id, e)).collect::<Vec<_>>())
            })
            .await;
            match found {
                Ok(v) => all.extend(v),
                Err(Error::NotFound(m)) => tracing::warn!(cluster, "listing: {m}"),
                Err(e) => return Err(e),
            }
        }
        Ok(all)
    }
}

fn cluster_of(volume_id: &str) -> String {
    VolumeId::parse(volume_id).map(|v| v.cluster_id).unwrap_or_default()
}

#[tonic::async_trait]
impl pb::controller_server::Controller for ControllerService {
    async fn controller_get_capabilities(
        &self,
        _req: Request<pb::ControllerGetCapabilitiesRequest>,
    ) -> Result<Response<pb::ControllerGetCapabilitiesResponse>, Status> {
        use csc::rpc::Type as T;
        let capabilities = csi_core::caps::controller([
            T::CreateDeleteVolume,
            T::CreateDeleteSnapshot,
            T::CloneVolume,
            T::ExpandVolume,
            T::ListVolumes,
            T::ListSnapshots,
            T::GetCapacity,
            T::GetVolume,
            T::SingleNodeMultiWriter,
            T::PublishUnpublishVolume,
            T::PublishReadonly,
            T::ListVolumesPublishedNodes,
        ]);
        Ok(Response::new(pb::ControllerGetCapabilitiesResponse { capabilities }))
    }

    async fn create_volume(
        &self,
        req: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::CreateVolumeResponse>, Status> {
        let req = req.into_inner();
        validate::require_name(&req.name)?;
        validate::require_capabilities(&req.volume_capabilities, &SUPPORT)?;
        let cap = validate::capacity_range(req.capacity_range.as_ref())?;
        let p = CreateParams::parse(&req.parameters)?;
        let source_key = ops::content_source_key(req.volume_content_source.as_ref());
        let rbd = self.conn_with(&p.cluster_id, req.secrets).await?;
        let _lock = self.locks.lock("volume", &req.name).await;
        let started = std::time::Instant::now();
        let name = req.name.clone();
        let cluster = p.cluster_id.clone();
        let r = Arc::clone(&rbd);
        let depth = self.config.max_clone_depth;
        let made = blocking(move || ops::create_volume(r.as_ref(), &name, &p, cap, &source_key, depth))
            .await
            .map_err(|e| self.conns.drop_if_blocklisted(&rbd, e))?;
        self.remember_pool(&cluster, &made.pool);
        info!(
            name = req.name,
            volume_id = made.volume.volume_id,
            bytes = made.volume.capacity_bytes,
            ms = started.elapsed().as_millis() as u64,
            "volume ready"
        );
        Ok(Response::new(pb::CreateVolumeResponse { volume: Some(made.volume) }))
    }

    async fn delete_volume(
        &self,
        req: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeResponse>, Status> {
        let req = req.into_inner();
        validate::require_volume_id(&req.volume_id)?;
        let Ok(id) = VolumeId::parse(&req.volume_id) else {
            // An ID this driver (or ceph-csi) never made names nothing to delete.
            tracing::warn!(
                volume_id = req.volume_id,
                "DeleteVolume of an ID that is not an RBD volume ID: nothing to do"
            );
            return Ok(Response::new(pb::DeleteVolumeResponse {}));
        };
        let rbd = self.conn_with(&id.cluster_id, req.secrets).await?;
        let _lock = self.locks.lock("volume-id", &req.volume_id).await;
        let r = Arc::clone(&rbd);
        blocking(move || ops::delete_volume(r.as_ref(), &id))
            .await
            .map_err(|e| self.conns.drop_if_blocklisted(&rbd, e))?;
        Ok(Response::new(pb::DeleteVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<pb::ValidateVolumeCapabilitiesRequest>,
    ) -> Result<Response<pb::ValidateVolumeCapabilitiesResponse>, Status> {
        let req = req.into_inner();
        validate::require_volume_id(&req.volume_id)?;
        if req.volume_capabilities.is_empty() {
            return Err(Error::InvalidArgument("volume capabilities missing in request".into()).into());
        }
        let id = parse_id(&req.volume_id, "volume")?;
        let rbd = self.conn(&id.cluster_id, req.secrets.clone()).await?;
        let vid = id.clone();
        let r = Arc::clone(&rbd);
        let found = blocking(move || ops::find_volume(r.as_ref(), &vid))
            .await
            .map_err(|e| self.conns.drop_if_blocklisted(&rbd, e))?;
        if found.is_none() {
            return Err(validate::volume_not_found(&req.volume_id).into());
        }
        Ok(Response::new(validate::confirm_capabilities(req, &SUPPORT)))
    }

    async fn list_volumes(
        &self,
        req: Request<pb::ListVolumesRequest>,
    ) -> Result<Response<pb::ListVolumesResponse>, Status> {
        let req = req.into_inner();
        // Checked before any I/O: a bad token is ABORTED even with nothing to list.
        page::<String>(Vec::new(), |s| s, req.max_entries, &req.starting_token)?;
        let mut all: Vec<pb::Volume> = Vec::new();
        for (cluster, pool_id, e) in self.all_entries(journal::VOLUMES).await? {
            let Ok(id) = VolumeId::new(&cluster, pool_id, &e.uuid) else { continue };
            all.push(pb::Volume {
                volume_id: id.to_string(),
                capacity_bytes: 0,
                volume_context: HashMap::from([("imageName".to_string(), e.image.clone())]),
                content_source: e.attrs.get(journal::CONTENT_SOURCE_KEY).and_then(|k| ops::content_source_from(k)),
                accessible_topology: Vec::new(),
            });
        }
        all.sort_by(|a, b| a.volume_id.cmp(&b.volume_id));
        let (vols, next_token) = page(all, |v| v.volume_id.as_str(), req.max_entries, &req.starting_token)?;
        // Sizes and attachments only for the page returned.
        let mut entries = Vec::with_capacity(vols.len());
        for mut v in vols {
            let mut published_node_ids = Vec::new();
            if let (Ok(id), Ok(c)) = (VolumeId::parse(&v.volume_id), self.conns.latest(&cluster_of(&v.volume_id))) {
                let found = blocking_status(move || {
                    let rbd = c.rbd.as_ref();
                    let Some((pool, entry, info)) = ops::find_volume(rbd, &id)? else { return Ok(None) };
                    Ok(Some((info.size, crate::attach::nodes(rbd, &pool, &entry.image)?)))
                })
                .await?;
                if let Some((size, nodes)) = found {
                    v.capacity_bytes = size as i64;
                    published_node_ids = nodes;
                }
            }
            let status = pb::list_volumes_response::VolumeStatus { published_node_ids, volume_condition: None };
            entries.push(pb::list_volumes_response::Entry { volume: Some(v), status: Some(status) });
        }
        Ok(Response::new(pb::ListVolumesResponse { entries, next_token }))
    }

    async fn get_capacity(
        &self,
        req: Request<pb::GetCapacityRequest>,
    ) -> Result<Response<pb::GetCapacityResponse>, Status> {
        let req = req.into_inner();
        // Every field is optional: without a pool there is nothing to measure.
        let (Some(cluster), Some(pool)) = (req.parameters.get("clusterID"), req.parameters.get("pool")) else {
            return Ok(Response::new(pb::GetCapacityResponse::default()));
        };
        CreateParams::parse(&req.parameters)?;
        let rbd = self.conns.latest(cluster)?.rbd;
        let pool = pool.clone();
        let stats = blocking(move || {
            rbd.pool_stats(&pool).map_err(|e| match e {
                // No ceph-mgr: the monitor has no usage figures (yet).
                ceph::Error::Other { errno: libc::ENODATA, .. } => Error::Unavailable(e.to_string()),
                e => ceph_err(e),
            })
        })
        .await?;
        Ok(Response::new(pb::GetCapacityResponse {
            available_capacity: stats.max_avail.min(i64::MAX as u64) as i64,
            maximum_volume_size: None,
            minimum_volume_size: Some(ops::SIZE_ROUND_MIN as i64),
        }))
    }

    async fn controller_get_volume(
        &self,
        req: Request<pb::ControllerGetVolumeRequest>,
    ) -> Result<Response<pb::ControllerGetVolumeResponse>, Status> {
        let req = req.into_inner();
        validate::require_volume_id(&req.volume_id)?;
        let id = parse_id(&req.volume_id, "volume")?;
        let rbd = self.conns.latest(&id.cluster_id)?.rbd;
        let vid = id.clone();
        let Some((pool, entry, info)) = blocking(move || ops::find_volume(rbd.as_ref(), &vid)).await? else {
            return Err(validate::volume_not_found(&req.volume_id).into());
        };
        let (r, p, i) = (self.conns.latest(&id.cluster_id)?.rbd, pool, entry.image.clone());
        let published = blocking_status(move || crate::attach::nodes(r.as_ref(), &p, &i)).await?;
        Ok(Response::new(pb::ControllerGetVolumeResponse {
            volume: Some(pb::Volume {
                volume_id: req.volume_id,
                capacity_bytes: info.size as i64,
                volume_context: HashMap::from([("imageName".to_string(), entry.image)]),
                content_source: entry.attrs.get(journal::CONTENT_SOURCE_KEY).and_then(|k| ops::content_source_from(k)),
                accessible_topology: Vec::new(),
            }),
            status: Some(pb::controller_get_volume_response::VolumeStatus {
                published_node_ids: published,
                volume_condition: None,
            }),
        }))
    }

    async fn controller_expand_volume(
        &self,
        req: Request<pb::ControllerExpandVolumeRequest>,
    ) -> Result<Response<pb::ControllerExpandVolumeResponse>, Status> {
        let req = req.into_inner();
        validate::require_volume_id(&req.volume_id)?;
        let Some(range) = req.capacity_range.as_ref() else {
            return Err(Error::InvalidArgument("capacity range missing in request".into()).into());
        };
        let cap = validate::capacity_range(Some(range))?;
        let id = parse_id(&req.volume_id, "volume")?;
        let block = matches!(
            req.volume_capability.as_ref().and_then(|c| c.access_type.as_ref()),
            Some(pb::volume_capability::AccessType::Block(_))
        );
        let rbd = self.conn_with(&id.cluster_id, req.secrets).await?;
        let _lock = self.locks.lock("volume-id", &req.volume_id).await;
        let r = Arc::clone(&rbd);
        let size = blocking(move || ops::expand_volume(r.as_ref(), &id, &cap))
            .await
            .map_err(|e| self.conns.drop_if_blocklisted(&rbd, e))?;
        Ok(Response::new(pb::ControllerExpandVolumeResponse {
            capacity_bytes: size as i64,
            // A filesystem grows on the node; a raw block device needs nothing more.
            node_expansion_required: !block,
        }))
    }

    async fn controller_publish_volume(
        &self,
        req: Request<pb::ControllerPublishVolumeRequest>,
    ) -> Result<Response<pb::ControllerPublishVolumeResponse>, Status> {
        let req = req.into_inner();
        validate::require_volume_id(&req.volume_id)?;
        validate::require_node_id(&req.node_id)?;
        let cap = validate::require_capability(req.volume_capability.as_ref(), &SUPPORT)?;
        let mode = cap.access_mode.as_ref().map(|m| m.mode).unwrap_or_default();
        let readonly = req.readonly
            || mode == AccessMode::SingleNodeReaderOnly as i32
            || mode == AccessMode::MultiNodeReaderOnly as i32;
        let id = parse_id(&req.volume_id, "volume")?;
        let rbd = self.conn(&id.cluster_id, req.secrets).await?;
        let _lock = self.locks.lock("volume-id", &req.volume_id).await;
        let node = req.node_id.clone();
        blocking_status(move || {
            let rbd = rbd.as_ref();
            let Some((pool, entry, _)) = ops::find_volume(rbd, &id)? else {
                return Err(validate::volume_not_found(&id.to_string()).into());
            };
            // Already published read-write to this very node, now asked
            // read-only: incompatible with the existing publication.
            if readonly && crate::attach::holders(rbd, &pool, &entry.image)?.contains(&node) {
                return Err(Status::already_exists(format!(
                    "volume {id} is published read-write to node {node:?}: unpublish it before publishing it read-only"
                )));
            }
            crate::attach::publish(rbd, &pool, &entry.image, &node, readonly)
        })
        .await?;
        info!(volume_id = req.volume_id, node = req.node_id, readonly, "volume published");
        Ok(Response::new(pb::ControllerPublishVolumeResponse { publish_context: HashMap::new() }))
    }

    async fn controller_unpublish_volume(
        &self,
        req: Request<pb::ControllerUnpublishVolumeRequest>,
    ) -> Result<Response<pb::ControllerUnpublishVolumeResponse>, Status> {
        let req = req.into_inner();
        validate::require_volume_id(&req.volume_id)?;
        let Ok(id) = VolumeId::parse(&req.volume_id) else {
            // Not an RBD volume: published nowhere.
            return Ok(Response::new(pb::ControllerUnpublishVolumeResponse {}));
        };
        let rbd = self.conn(&id.cluster_id, req.secrets).await?;
        let _lock = self.locks.lock("volume-id", &req.volume_id).await;
        let node = req.node_id.clone();
        blocking_status(move || {
            let rbd = rbd.as_ref();
            // A volume that is gone is unpublished everywhere.
            let Some((pool, entry, _)) = ops::find_volume(rbd, &id)? else { return Ok(()) };
            // No node ID: from every node (the spec's meaning).
            let nodes = if node.is_empty() { crate::attach::nodes(rbd, &pool, &entry.image)? } else { vec![node] };
            for n in nodes {
                crate::attach::unpublish(rbd, &pool, &entry.image, &n)?;
            }
            Ok(())
        })
        .await?;
        info!(volume_id = req.volume_id, node = req.node_id, "volume unpublished");
        Ok(Response::new(pb::ControllerUnpublishVolumeResponse {}))
    }

    async fn create_snapshot(
        &self,
        req: Request<pb::CreateSnapshotRequest>,
    ) -> Result<Response<pb::CreateSnapshotResponse>, Status> {
        let req = req.into_inner();
        validate::require_name(&req.name)?;
        if req.source_volume_id.is_empty() {
            return Err(Error::InvalidArgument("source volume id missing in request".into()).into());
        }
        let sp = SnapshotParams::parse(&req.parameters)?;
        let src = parse_id(&req.source_volume_id, "source volume")?;
        if sp.cluster_id.as_ref().is_some_and(|c| *c != src.cluster_id) {
            return Err(Error::InvalidArgument(format!(
                "clusterID {:?}: the source volume is in cluster {:?}",
                sp.cluster_id.unwrap_or_default(),
                src.cluster_id
            ))
            .into());
        }
        let rbd = self.conn_with(&src.cluster_id, req.secrets).await?;
        let _lock = self.locks.lock("snapshot", &req.name).await;
        let started = std::time::Instant::now();
        let (name, s) = (req.name.clone(), src.clone());
        let r = Arc::clone(&rbd);
        let depth = self.config.max_clone_depth;
        let (pool, snapshot) = blocking(move || ops::create_snapshot(r.as_ref(), &name, &s, &sp, depth))
            .await
            .map_err(|e| self.conns.drop_if_blocklisted(&rbd, e))?;
        self.remember_pool(&src.cluster_id, &pool);
        info!(
            name = req.name,
            snapshot_id = snapshot.snapshot_id,
            ms = started.elapsed().as_millis() as u64,
            "snapshot ready"
        );
        Ok(Response::new(pb::CreateSnapshotResponse { snapshot: Some(snapshot) }))
    }

    async fn delete_snapshot(
        &self,
        req: Request<pb::DeleteSnapshotRequest>,
    ) -> Result<Response<pb::DeleteSnapshotResponse>, Status> {
        let req = req.into_inner();
        validate::require_snapshot_id(&req.snapshot_id)?;
        let Ok(id) = VolumeId::parse(&req.snapshot_id) else {
            tracing::warn!(
                snapshot_id = req.snapshot_id,
                "DeleteSnapshot of an ID that is not an RBD ID: nothing to do"
            );
            return Ok(Response::new(pb::DeleteSnapshotResponse {}));
        };
        let rbd = self.conn_with(&id.cluster_id, req.secrets).await?;
        let _lock = self.locks.lock("snapshot-id", &req.snapshot_id).await;
        let r = Arc::clone(&rbd);
        blocking(move || ops::delete_snapshot(r.as_ref(), &id))
            .await
            .map_err(|e| self.conns.drop_if_blocklisted(&rbd, e))?;
        Ok(Response::new(pb::DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<pb::ListSnapshotsResponse>, Status> {
        let req = req.into_inner();
        page::<String>(Vec::new(), |s| s, req.max_entries, &req.starting_token)?;
        let mut all: Vec<pb::Snapshot> = Vec::new();
        if !req.snapshot_id.is_empty() {
            // One snapshot, looked up where its ID says it is; an ID that is
            // not ours names no snapshot (an empty list, as the spec asks).
            if let Ok(id) = VolumeId::parse(&req.snapshot_id) {
                let rbd = self.conn(&id.cluster_id, req.secrets.clone()).await?;
                if let Some(s) = blocking(move || ops::find_snapshot(rbd.as_ref(), &id)).await? {
                    all.push(s);
                }
            }
        } else {
            let mut pools = self.known_pools();
            if !req.source_volume_id.is_empty() {
                let Ok(src) = VolumeId::parse(&req.source_volume_id) else {
                    return Ok(Response::new(pb::ListSnapshotsResponse::default()));
                };
                let rbd = self.conn(&src.cluster_id, req.secrets.clone()).await?;
                let s = src.clone();
                if let Some(pool) = blocking(move || ops::pool_name(rbd.as_ref(), &s)).await? {
                    pools = vec![(src.cluster_id.clone(), pool)];
                } else {
                    pools.clear();
                }
            }
            for (cluster, pool) in pools {
                let Ok(c) = self.conns.latest(&cluster) else { continue };
                let found = blocking(move || {
                    let rbd = c.rbd.as_ref();
                    let pool_id = rbd.pool_id(&pool).map_err(ceph_err)?;
                    let mut out = Vec::new();
                    for e in ops::list_entries(rbd, &pool, journal::SNAPSHOTS)? {
                        let Ok(id) = VolumeId::new(&cluster, pool_id, &e.uuid) else { continue };
                        if let Some(s) = ops::find_snapshot(rbd, &id)? {
                            out.push(s);
                        }
                    }
                    Ok(out)
                })
                .await?;
                all.extend(found);
            }
        }
        if !req.source_volume_id.is_empty() {
            all.retain(|s| s.source_volume_id == req.source_volume_id);
        }
        all.sort_by(|a, b| a.snapshot_id.cmp(&b.snapshot_id));
        let (snaps, next_token) = page(all, |s| s.snapshot_id.as_str(), req.max_entries, &req.starting_token)?;
        let entries = snaps.into_iter().map(|s| pb::list_snapshots_response::Entry { snapshot: Some(s) }).collect();
        Ok(Response::new(pb::ListSnapshotsResponse { entries, next_token }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn two_writers_on_two_nodes_are_refused() {
        use pb::volume_capability::{AccessMode as Am, AccessType, MountVolume};
        let cap = |m: AccessMode| pb::VolumeCapability {
            access_type: Some(AccessType::Mount(MountVolume::default())),
            access_mode: Some(Am { mode: m as i32 }),
        };
        assert!(validate::check_capability(&cap(AccessMode::SingleNodeWriter), &SUPPORT).is_ok());
        assert!(validate::check_capability(&cap(AccessMode::MultiNodeReaderOnly), &SUPPORT).is_ok());
        assert!(validate::check_capability(&cap(AccessMode::MultiNodeMultiWriter), &SUPPORT).is_err());
        assert!(validate::check_capability(&cap(AccessMode::MultiNodeSingleWriter), &SUPPORT).is_err());
    }
}
