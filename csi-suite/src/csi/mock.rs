//! Tests of the suite itself: an in-memory driver that follows the spec
//! (every capability but MODIFY_VOLUME's real work, no mounting: a
//! "published" volume is a directory) must pass every spec it advertises,
//! and the same driver with one planted bug must fail exactly the spec
//! about that bug.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};

use csi_core::pb::{self, controller_server::Controller, node_server::Node};
use tonic::{Request, Response, Status};

use super::{Options, Outcome};
use testkit::report::Verdict;

const NODE: &str = "mock-node";
const GIB: i64 = 1 << 30;

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Bug {
    None,
    /// DeleteVolume of an unknown ID answers NOT_FOUND (the spec: OK).
    DeleteUnknownNotFound,
    /// NodeUnpublishVolume leaves the target directory behind.
    KeepTarget,
    /// NodeGetVolumeStats answers INVALID_ARGUMENT to a relative path
    /// (csi-nfs did; csi-sanity sends `some/path` and wants NOT_FOUND).
    StatsRelativeInvalid,
    /// A SINGLE_NODE_SINGLE_WRITER volume is published at a second target.
    SingleWriterTwice,
}

#[derive(Default)]
struct State {
    n: u64,
    /// id -> (name, capacity, from)
    volumes: BTreeMap<String, (String, i64, Option<pb::VolumeContentSource>)>,
    /// id -> (name, source volume)
    snapshots: BTreeMap<String, (String, String)>,
    /// (volume, node) -> readonly
    ctrl_published: HashMap<(String, String), bool>,
    staged: BTreeSet<(String, String)>,
    published: BTreeSet<(String, String)>,
}

#[derive(Clone)]
struct Mock {
    st: Arc<Mutex<State>>,
    bug: Bug,
}

type R<T> = Result<Response<T>, Status>;

fn ia(what: &str) -> Status {
    Status::invalid_argument(format!("{what} missing"))
}

/// Pagination by position; a token that is not a position is ABORTED.
fn page<T: Clone>(all: &[T], max: i32, token: &str) -> Result<(Vec<T>, String), Status> {
    let start: usize = if token.is_empty() { 0 } else { token.parse().map_err(|_| Status::aborted("bad token"))? };
    if start > all.len() {
        return Err(Status::aborted("token out of range"));
    }
    let end = if max > 0 { (start + max as usize).min(all.len()) } else { all.len() };
    let next = if end < all.len() { end.to_string() } else { String::new() };
    Ok((all[start..end].to_vec(), next))
}

impl Mock {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn volume(&self, s: &State, id: &str) -> Result<pb::Volume, Status> {
        let (_, cap, from) = s.volumes.get(id).ok_or_else(|| Status::not_found(id.to_string()))?;
        Ok(pb::Volume {
            volume_id: id.into(),
            capacity_bytes: *cap,
            content_source: from.clone(),
            ..Default::default()
        })
    }

    fn snapshot(id: &str, source: &str) -> pb::Snapshot {
        pb::Snapshot {
            snapshot_id: id.into(),
            source_volume_id: source.into(),
            creation_time: Some(prost_types::Timestamp { seconds: 1_700_000_000, nanos: 0 }),
            ready_to_use: true,
            ..Default::default()
        }
    }
}

fn check_mutable(m: &HashMap<String, String>) -> Result<(), Status> {
    match m.keys().find(|k| k.as_str() != "iops") {
        Some(k) => Err(Status::invalid_argument(format!("mutable parameter {k} not supported"))),
        None => Ok(()),
    }
}

fn ctrl_cap(t: super::CtrlCap) -> pb::ControllerServiceCapability {
    use pb::controller_service_capability::{Rpc, Type};
    pb::ControllerServiceCapability { r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })) }
}

fn node_cap(t: super::NodeCap) -> pb::NodeServiceCapability {
    use pb::node_service_capability::{Rpc, Type};
    pb::NodeServiceCapability { r#type: Some(Type::Rpc(Rpc { r#type: t as i32 })) }
}

#[tonic::async_trait]
impl Controller for Mock {
    async fn create_volume(&self, r: Request<pb::CreateVolumeRequest>) -> R<pb::CreateVolumeResponse> {
        let r = r.into_inner();
        if r.name.is_empty() {
            return Err(ia("name"));
        }
        if r.volume_capabilities.is_empty() {
            return Err(ia("volume_capabilities"));
        }
        check_mutable(&r.mutable_parameters)?;
        let cap = r.capacity_range.map(|c| c.required_bytes).filter(|b| *b > 0).unwrap_or(GIB);
        let mut s = self.lock();
        if let Some((id, (_, c, _))) = s.volumes.iter().find(|(_, v)| v.0 == r.name) {
            if *c != cap {
                return Err(Status::already_exists("same name, other size"));
            }
            let id = id.clone();
            return Ok(Response::new(pb::CreateVolumeResponse { volume: Some(self.volume(&s, &id)?) }));
        }
        use pb::volume_content_source::Type;
        match r.volume_content_source.as_ref().and_then(|c| c.r#type.as_ref()) {
            Some(Type::Snapshot(src)) if !s.snapshots.contains_key(&src.snapshot_id) => {
                return Err(Status::not_found("no such snapshot"))
            }
            Some(Type::Volume(src)) if !s.volumes.contains_key(&src.volume_id) => {
                return Err(Status::not_found("no such volume"))
            }
            _ => {}
        }
        s.n += 1;
        let id = format!("vol-{}", s.n);
        s.volumes.insert(id.clone(), (r.name, cap, r.volume_content_source));
        Ok(Response::new(pb::CreateVolumeResponse { volume: Some(self.volume(&s, &id)?) }))
    }

    async fn delete_volume(&self, r: Request<pb::DeleteVolumeRequest>) -> R<pb::DeleteVolumeResponse> {
        let id = r.into_inner().volume_id;
        if id.is_empty() {
            return Err(ia("volume_id"));
        }
        if self.lock().volumes.remove(&id).is_none() && self.bug == Bug::DeleteUnknownNotFound {
            return Err(Status::not_found(id));
        }
        Ok(Response::new(pb::DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        r: Request<pb::ControllerPublishVolumeRequest>,
    ) -> R<pb::ControllerPublishVolumeResponse> {
        let r = r.into_inner();
        if r.volume_id.is_empty() {
            return Err(ia("volume_id"));
        }
        if r.node_id.is_empty() {
            return Err(ia("node_id"));
        }
        if r.volume_capability.is_none() {
            return Err(ia("volume_capability"));
        }
        let mut s = self.lock();
        self.volume(&s, &r.volume_id)?;
        if r.node_id != NODE {
            return Err(Status::not_found("no such node"));
        }
        let key = (r.volume_id, r.node_id);
        match s.ctrl_published.get(&key) {
            Some(ro) if *ro != r.readonly => return Err(Status::already_exists("published with other options")),
            _ => s.ctrl_published.insert(key, r.readonly),
        };
        Ok(Response::new(pb::ControllerPublishVolumeResponse { publish_context: HashMap::new() }))
    }

    async fn controller_unpublish_volume(
        &self,
        r: Request<pb::ControllerUnpublishVolumeRequest>,
    ) -> R<pb::ControllerUnpublishVolumeResponse> {
        let r = r.into_inner();
        if r.volume_id.is_empty() {
            return Err(ia("volume_id"));
        }
        self.lock().ctrl_published.remove(&(r.volume_id, r.node_id));
        Ok(Response::new(pb::ControllerUnpublishVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        r: Request<pb::ValidateVolumeCapabilitiesRequest>,
    ) -> R<pb::ValidateVolumeCapabilitiesResponse> {
        let r = r.into_inner();
        if r.volume_id.is_empty() {
            return Err(ia("volume_id"));
        }
        if r.volume_capabilities.is_empty() {
            return Err(ia("volume_capabilities"));
        }
        self.volume(&self.lock(), &r.volume_id)?;
        let confirmed = pb::validate_volume_capabilities_response::Confirmed {
            volume_capabilities: r.volume_capabilities,
            ..Default::default()
        };
        Ok(Response::new(pb::ValidateVolumeCapabilitiesResponse { confirmed: Some(confirmed), message: String::new() }))
    }

    async fn list_volumes(&self, r: Request<pb::ListVolumesRequest>) -> R<pb::ListVolumesResponse> {
        let r = r.into_inner();
        let s = self.lock();
        let all: Vec<String> = s.volumes.keys().cloned().collect();
        let (ids, next_token) = page(&all, r.max_entries, &r.starting_token)?;
        let entries = ids
            .iter()
            .map(|id| Ok(pb::list_volumes_response::Entry { volume: Some(self.volume(&s, id)?), status: None }))
            .collect::<Result<_, Status>>()?;
        Ok(Response::new(pb::ListVolumesResponse { entries, next_token }))
    }

    async fn get_capacity(&self, _: Request<pb::GetCapacityRequest>) -> R<pb::GetCapacityResponse> {
        Ok(Response::new(pb::GetCapacityResponse { available_capacity: 1 << 40, ..Default::default() }))
    }

    async fn controller_get_capabilities(
        &self,
        _: Request<pb::ControllerGetCapabilitiesRequest>,
    ) -> R<pb::ControllerGetCapabilitiesResponse> {
        use super::CtrlCap::*;
        let capabilities = [
            CreateDeleteVolume,
            PublishUnpublishVolume,
            ListVolumes,
            GetCapacity,
            CreateDeleteSnapshot,
            ListSnapshots,
            CloneVolume,
            PublishReadonly,
            ExpandVolume,
            GetVolume,
            VolumeCondition,
            ModifyVolume,
            GetSnapshot,
        ]
        .into_iter()
        .map(ctrl_cap)
        .collect();
        Ok(Response::new(pb::ControllerGetCapabilitiesResponse { capabilities }))
    }

    async fn create_snapshot(&self, r: Request<pb::CreateSnapshotRequest>) -> R<pb::CreateSnapshotResponse> {
        let r = r.into_inner();
        if r.name.is_empty() {
            return Err(ia("name"));
        }
        if r.source_volume_id.is_empty() {
            return Err(ia("source_volume_id"));
        }
        let mut s = self.lock();
        if let Some((id, (_, src))) = s.snapshots.iter().find(|(_, v)| v.0 == r.name) {
            if *src != r.source_volume_id {
                return Err(Status::already_exists("same name, other source"));
            }
            return Ok(Response::new(pb::CreateSnapshotResponse { snapshot: Some(Mock::snapshot(id, src)) }));
        }
        self.volume(&s, &r.source_volume_id)?;
        s.n += 1;
        let id = format!("snap-{}", s.n);
        s.snapshots.insert(id.clone(), (r.name, r.source_volume_id.clone()));
        Ok(Response::new(pb::CreateSnapshotResponse { snapshot: Some(Mock::snapshot(&id, &r.source_volume_id)) }))
    }

    async fn delete_snapshot(&self, r: Request<pb::DeleteSnapshotRequest>) -> R<pb::DeleteSnapshotResponse> {
        let id = r.into_inner().snapshot_id;
        if id.is_empty() {
            return Err(ia("snapshot_id"));
        }
        self.lock().snapshots.remove(&id);
        Ok(Response::new(pb::DeleteSnapshotResponse {}))
    }

    async fn get_snapshot(&self, r: Request<pb::GetSnapshotRequest>) -> R<pb::GetSnapshotResponse> {
        let id = r.into_inner().snapshot_id;
        if id.is_empty() {
            return Err(ia("snapshot_id"));
        }
        let s = self.lock();
        let (_, src) = s.snapshots.get(&id).ok_or_else(|| Status::not_found(id.clone()))?;
        Ok(Response::new(pb::GetSnapshotResponse { snapshot: Some(Mock::snapshot(&id, src)) }))
    }

    async fn list_snapshots(&self, r: Request<pb::ListSnapshotsRequest>) -> R<pb::ListSnapshotsResponse> {
        let r = r.into_inner();
        let s = self.lock();
        let all: Vec<pb::Snapshot> = s
            .snapshots
            .iter()
            .filter(|(id, (_, src))| {
                (r.snapshot_id.is_empty() || **id == r.snapshot_id)
                    && (r.source_volume_id.is_empty() || *src == r.source_volume_id)
            })
            .map(|(id, (_, src))| Mock::snapshot(id, src))
            .collect();
        let (snaps, next_token) = page(&all, r.max_entries, &r.starting_token)?;
        let entries = snaps.into_iter().map(|s| pb::list_snapshots_response::Entry { snapshot: Some(s) }).collect();
        Ok(Response::new(pb::ListSnapshotsResponse { entries, next_token }))
    }

    async fn controller_expand_volume(
        &self,
        r: Request<pb::ControllerExpandVolumeRequest>,
    ) -> R<pb::ControllerExpandVolumeResponse> {
        let r = r.into_inner();
        if r.volume_id.is_empty() {
            return Err(ia("volume_id"));
        }
        let want = r.capacity_range.ok_or_else(|| ia("capacity_range"))?.required_bytes;
        let mut s = self.lock();
        let v = s.volumes.get_mut(&r.volume_id).ok_or_else(|| Status::not_found(r.volume_id.clone()))?;
        v.1 = v.1.max(want);
        Ok(Response::new(pb::ControllerExpandVolumeResponse { capacity_bytes: v.1, node_expansion_required: true }))
    }

    async fn controller_get_volume(
        &self,
        r: Request<pb::ControllerGetVolumeRequest>,
    ) -> R<pb::ControllerGetVolumeResponse> {
        let id = r.into_inner().volume_id;
        if id.is_empty() {
            return Err(ia("volume_id"));
        }
        let s = self.lock();
        let volume = self.volume(&s, &id)?;
        let nodes = s.ctrl_published.keys().filter(|(v, _)| *v == id).map(|(_, n)| n.clone()).collect();
        let status = pb::controller_get_volume_response::VolumeStatus {
            published_node_ids: nodes,
            volume_condition: Some(pb::VolumeCondition { abnormal: false, message: "ok".into() }),
        };
        Ok(Response::new(pb::ControllerGetVolumeResponse { volume: Some(volume), status: Some(status) }))
    }

    async fn controller_modify_volume(
        &self,
        r: Request<pb::ControllerModifyVolumeRequest>,
    ) -> R<pb::ControllerModifyVolumeResponse> {
        let r = r.into_inner();
        if r.volume_id.is_empty() {
            return Err(ia("volume_id"));
        }
        self.volume(&self.lock(), &r.volume_id)?;
        check_mutable(&r.mutable_parameters)?;
        Ok(Response::new(pb::ControllerModifyVolumeResponse {}))
    }
}

#[tonic::async_trait]
impl Node for Mock {
    async fn node_stage_volume(&self, r: Request<pb::NodeStageVolumeRequest>) -> R<pb::NodeStageVolumeResponse> {
        let r = r.into_inner();
        if r.volume_id.is_empty() {
            return Err(ia("volume_id"));
        }
        if r.staging_target_path.is_empty() {
            return Err(ia("staging_target_path"));
        }
        if r.volume_capability.is_none() {
            return Err(ia("volume_capability"));
        }
        let mut s = self.lock();
        self.volume(&s, &r.volume_id)?;
        s.staged.insert((r.volume_id, r.staging_target_path));
        Ok(Response::new(pb::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(&self, r: Request<pb::NodeUnstageVolumeRequest>) -> R<pb::NodeUnstageVolumeResponse> {
        let r = r.into_inner();
        if r.volume_id.is_empty() {
            return Err(ia("volume_id"));
        }
        if r.staging_target_path.is_empty() {
            return Err(ia("staging_target_path"));
        }
        self.lock().staged.remove(&(r.volume_id, r.staging_target_path));
        Ok(Response::new(pb::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(&self, r: Request<pb::NodePublishVolumeRequest>) -> R<pb::NodePublishVolumeResponse> {
        let r = r.into_inner();
        if r.volume_id.is_empty() {
            return Err(ia("volume_id"));
        }
        if r.target_path.is_empty() {
            return Err(ia("target_path"));
        }
        let Some(cap) = &r.volume_capability else {
            return Err(ia("volume_capability"));
        };
        let single_writer = cap
            .access_mode
            .as_ref()
            .is_some_and(|m| m.mode == pb::volume_capability::access_mode::Mode::SingleNodeSingleWriter as i32);
        let mut s = self.lock();
        self.volume(&s, &r.volume_id)?;
        if !s.staged.contains(&(r.volume_id.clone(), r.staging_target_path.clone())) {
            return Err(Status::failed_precondition("not staged"));
        }
        if single_writer
            && self.bug != Bug::SingleWriterTwice
            && s.published.iter().any(|(v, t)| *v == r.volume_id && *t != r.target_path)
        {
            return Err(Status::failed_precondition("single writer: published at another target"));
        }
        match std::fs::create_dir(&r.target_path) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(Status::internal(e.to_string())),
        }
        s.published.insert((r.volume_id, r.target_path));
        Ok(Response::new(pb::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        r: Request<pb::NodeUnpublishVolumeRequest>,
    ) -> R<pb::NodeUnpublishVolumeResponse> {
        let r = r.into_inner();
        if r.volume_id.is_empty() {
            return Err(ia("volume_id"));
        }
        if r.target_path.is_empty() {
            return Err(ia("target_path"));
        }
        if self.bug != Bug::KeepTarget {
            let _ = std::fs::remove_dir(&r.target_path);
        }
        self.lock().published.remove(&(r.volume_id, r.target_path));
        Ok(Response::new(pb::NodeUnpublishVolumeResponse {}))
    }

    async fn node_get_volume_stats(
        &self,
        r: Request<pb::NodeGetVolumeStatsRequest>,
    ) -> R<pb::NodeGetVolumeStatsResponse> {
        let r = r.into_inner();
        if r.volume_id.is_empty() {
            return Err(ia("volume_id"));
        }
        if r.volume_path.is_empty() {
            return Err(ia("volume_path"));
        }
        if self.bug == Bug::StatsRelativeInvalid && !r.volume_path.starts_with('/') {
            return Err(Status::invalid_argument("volume_path must be absolute"));
        }
        let s = self.lock();
        let v = self.volume(&s, &r.volume_id)?;
        if !s.published.contains(&(r.volume_id.clone(), r.volume_path.clone())) {
            return Err(Status::not_found("not published there"));
        }
        let usage = vec![pb::VolumeUsage {
            available: v.capacity_bytes,
            total: v.capacity_bytes,
            used: 0,
            unit: pb::volume_usage::Unit::Bytes as i32,
        }];
        let volume_condition = Some(pb::VolumeCondition { abnormal: false, message: "ok".into() });
        Ok(Response::new(pb::NodeGetVolumeStatsResponse { usage, volume_condition }))
    }

    async fn node_expand_volume(&self, r: Request<pb::NodeExpandVolumeRequest>) -> R<pb::NodeExpandVolumeResponse> {
        let r = r.into_inner();
        if r.volume_id.is_empty() {
            return Err(ia("volume_id"));
        }
        if r.volume_path.is_empty() {
            return Err(ia("volume_path"));
        }
        let v = self.volume(&self.lock(), &r.volume_id)?;
        Ok(Response::new(pb::NodeExpandVolumeResponse { capacity_bytes: v.capacity_bytes }))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<pb::NodeGetCapabilitiesRequest>,
    ) -> R<pb::NodeGetCapabilitiesResponse> {
        use super::NodeCap::*;
        let capabilities = [StageUnstageVolume, GetVolumeStats, ExpandVolume, VolumeCondition, SingleNodeMultiWriter]
            .into_iter()
            .map(node_cap)
            .collect();
        Ok(Response::new(pb::NodeGetCapabilitiesResponse { capabilities }))
    }

    async fn node_get_info(&self, _: Request<pb::NodeGetInfoRequest>) -> R<pb::NodeGetInfoResponse> {
        Ok(Response::new(pb::NodeGetInfoResponse { node_id: NODE.into(), ..Default::default() }))
    }
}

/// Serves a mock with `bug` on a fresh socket, runs the suite against it
/// (filtered by `focus`), and returns the outcome and what the mock still holds.
fn run_against(bug: Bug, focus: &[&str]) -> (Outcome, usize, Vec<std::path::PathBuf>) {
    let dir = std::env::temp_dir().join(format!("csi-mock-{}-{:?}", std::process::id(), bug));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("mnt")).unwrap();
    let endpoint: csi_core::flags::Endpoint = format!("unix://{}", dir.join("csi.sock").display()).parse().unwrap();
    let mock = Mock { st: Arc::default(), bug };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let plugin = csi_core::server::Plugin {
        identity: csi_core::identity::Identity::new("mock.csi.test").vendor_version("1"),
        controller: Some(mock.clone()),
        node: Some(mock.clone()),
    };
    let ep = endpoint.clone();
    let server = rt.spawn(async move {
        csi_core::server::serve(&ep, csi_core::flags::Mode::All, plugin, async {
            let _ = stopped.await;
        })
        .await
    });
    let out = rt.block_on(async {
        let sock = dir.join("csi.sock");
        while !sock.exists() {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        let mut o = Options::new(endpoint);
        o.mount_dir = dir.join("mnt");
        o.focus = focus.iter().map(|s| s.to_string()).collect();
        o.rpc_timeout = std::time::Duration::from_secs(10);
        super::run(o).await.unwrap()
    });
    let _ = stop.send(());
    let _ = rt.block_on(server);
    let s = mock.lock();
    let held = s.volumes.len() + s.snapshots.len() + s.ctrl_published.len() + s.staged.len() + s.published.len();
    let left: Vec<_> = std::fs::read_dir(dir.join("mnt")).unwrap().map(|e| e.unwrap().path()).collect();
    let _ = std::fs::remove_dir_all(&dir);
    (out, held, left)
}

fn failures(o: &Outcome) -> Vec<String> {
    o.results.iter().filter(|r| r.verdict == Verdict::Fail).map(|r| format!("{}: {}", r.name, r.detail)).collect()
}

#[test]
fn a_driver_that_follows_the_spec_passes_everything_and_the_suite_leaks_nothing() {
    let (o, held, left) = run_against(Bug::None, &[]);
    assert_eq!(failures(&o), Vec::<String>::new(), "{}", o.table());
    let skipped: Vec<&str> = o.results.iter().filter(|r| r.verdict == Verdict::Skip).map(|r| r.name.as_str()).collect();
    assert_eq!(skipped, Vec::<&str>::new(), "everything is advertised");
    assert_eq!(o.results.len(), super::catalog().len());
    assert_eq!(held, 0, "volumes, snapshots or publications left in the driver");
    assert_eq!(left, Vec::<std::path::PathBuf>::new(), "spec directories left");
}

#[test]
fn a_planted_bug_fails_exactly_its_spec() {
    let (o, held, _) = run_against(Bug::DeleteUnknownNotFound, &["Controller Service"]);
    assert_eq!(
        failures(&o),
        vec!["Controller Service [Controller Server] DeleteVolume should succeed when an invalid volume id is used: \
              DeleteVolume failed: NotFound: fake-vol-id"
            .to_string()],
    );
    assert_eq!(held, 0);
    assert!(o.filtered > 0 && o.summary().contains(&format!("{} filtered", o.filtered)));
}

#[test]
fn a_target_left_behind_fails_the_unpublish_spec_and_is_still_cleaned() {
    let (o, _, left) = run_against(Bug::KeepTarget, &["Node Service NodeUnpublishVolume should remove target path"]);
    let f = failures(&o);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].contains("still exists after NodeUnpublishVolume"), "{f:?}");
    assert_eq!(left, Vec::<std::path::PathBuf>::new(), "the empty target dir is removed by the suite");
}

/// The defect csi-sanity found in csi-nfs and our suite missed: a relative
/// volume_path answered INVALID_ARGUMENT. Both specs that send one fail.
#[test]
fn stats_refusing_a_relative_path_fails_the_not_found_specs() {
    let (o, held, _) = run_against(Bug::StatsRelativeInvalid, &["Node Service NodeGetVolumeStats"]);
    let f = failures(&o);
    assert_eq!(f.len(), 2, "{f:?}");
    assert!(f[0].contains("should fail when volume is not found") && f[0].contains("\"some/path\""), "{f:?}");
    assert!(f[1].contains("does not exist on the specified path") && f[1].contains("InvalidArgument"), "{f:?}");
    assert_eq!(held, 0);
}

#[test]
fn a_single_writer_volume_published_twice_fails_its_spec() {
    let (o, held, left) = run_against(Bug::SingleWriterTwice, &["Node Service NodePublishVolume with single node"]);
    let f = failures(&o);
    assert_eq!(f.len(), 1, "{f:?}");
    assert!(f[0].contains("single node single writer") && f[0].contains("FailedPrecondition"), "{f:?}");
    assert_eq!(held, 0, "the second publication is cleaned up too");
    assert_eq!(left, Vec::<std::path::PathBuf>::new());
}
