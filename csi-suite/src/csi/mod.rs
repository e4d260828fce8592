//! `conformance csi`: a CSI sanity suite in the image of kubernetes-csi's
//! csi-sanity, against any CSI endpoint (`unix:///path` or `tcp://host:port`).
//!
//! Every spec carries csi-sanity's name (`Describe … Context … It`), the
//! capabilities it needs, and an async function over a [`Ctx`]. A spec is
//! skipped only when the driver does not advertise one of those
//! capabilities, or when `--focus`/`--skip` leave it out ("filtered").
//!
//! * [`Ctx`] is what a spec sees: the clients, the user's parameters and
//!   secrets, unique names, and per-spec target/staging directories. Every
//!   volume, controller publication, staging, node publication and snapshot
//!   a spec creates through it is recorded and undone afterwards (LIFO, like
//!   csi-sanity's `Resources.Cleanup`), even when the spec failed; a failed
//!   undo fails the spec and prints a `cleanup:` line.
//! * Every RPC is bounded by `--rpc-timeout` (30 s), so a hung driver fails
//!   a spec instead of the run.
//! * Specs live in [`identity`], [`controller`], [`snapshot`] and [`node`].

use std::collections::{BTreeSet, HashMap};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::rc::Rc;
use std::time::{Duration, Instant};

use csi_core::flags::Endpoint;
use csi_core::pb;
use tonic::transport::Channel;
use tonic::{Code, Status};

use testkit::report;
use testkit::report::{CheckResult, Verdict};

pub mod config;
pub mod controller;
pub mod identity;
pub mod node;
pub mod snapshot;

#[cfg(test)]
mod mock;

pub use config::Secrets;

pub use pb::controller_service_capability::rpc::Type as CtrlCap;
pub use pb::node_service_capability::rpc::Type as NodeCap;
pub use pb::plugin_capability::service::Type as PluginSvc;

/// What a spec (or one of its steps) returns: the reason on failure.
pub type Res<T = ()> = Result<T, String>;
/// A running spec.
pub type SpecFut<'a> = Pin<Box<dyn Future<Output = Res> + 'a>>;
/// A spec's body.
pub type SpecFn = for<'a> fn(&'a mut Ctx) -> SpecFut<'a>;

/// 10 GiB, csi-sanity's default test volume size.
pub const DEFAULT_VOLUME_SIZE: i64 = 10 << 30;
/// How much `ControllerExpandVolume` adds by default (csi-sanity: 1 GiB).
pub const DEFAULT_EXPAND_INCREMENT: i64 = 1 << 30;
/// The longest name CSI lets a CO send (csi-sanity's MaxNameLength).
pub const MAX_NAME_LENGTH: usize = 128;
/// How often idempotency specs repeat a call (csi-sanity's IdempotentCount).
pub const IDEMPOTENT_COUNT: usize = 10;

/// Returns `Err(format!(…))` from the enclosing spec unless `cond` holds.
macro_rules! ensure {
    ($cond:expr, $($arg:tt)*) => {
        if !$cond {
            return Err(format!($($arg)*));
        }
    };
}
pub(crate) use ensure;

/// A capability a spec needs; a spec whose need is not advertised is skipped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Cap {
    /// A ControllerServiceCapability RPC type.
    Ctrl(CtrlCap),
    /// A NodeServiceCapability RPC type.
    Node(NodeCap),
    /// A PluginCapability service type (checked on the controller endpoint).
    Plugin(PluginSvc),
}

impl Cap {
    pub fn name(self) -> String {
        match self {
            Cap::Ctrl(c) => c.as_str_name().to_string(),
            Cap::Node(c) => format!("node {}", c.as_str_name()),
            Cap::Plugin(c) => format!("plugin {}", c.as_str_name()),
        }
    }
}

/// One spec of the catalog.
pub struct Spec {
    /// csi-sanity's full name, e.g. `Controller Service [Controller Server] CreateVolume should fail when no name is provided`.
    pub name: String,
    pub needs: Vec<Cap>,
    pub run: SpecFn,
}

/// Builds a [`Spec`] from a name, the capabilities it needs and an `async fn(&mut Ctx) -> Res`.
macro_rules! spec {
    ($name:expr, [$($cap:expr),* $(,)?], $f:path) => {
        $crate::csi::Spec { name: $name.to_string(), needs: vec![$($cap),*], run: |c| Box::pin($f(c)) }
    };
}
pub(crate) use spec;

/// The whole catalog, in run order.
pub fn catalog() -> Vec<Spec> {
    let mut v = identity::specs();
    v.extend(controller::specs());
    v.extend(snapshot::specs());
    v.extend(node::specs());
    v
}

/// What `conformance csi` was asked to do.
#[derive(Clone, Debug)]
pub struct Options {
    /// The driver (Identity + Node, and Controller unless `controller_endpoint`).
    pub endpoint: Endpoint,
    /// A separate Controller endpoint, if the driver runs split.
    pub controller_endpoint: Option<Endpoint>,
    /// CreateVolume parameters (csi-sanity's TestVolumeParameters).
    pub params: HashMap<String, String>,
    /// CreateVolume/ControllerModifyVolume mutable parameters (TestVolumeMutableParameters).
    pub mutable_params: HashMap<String, String>,
    pub secrets: Secrets,
    /// Where per-spec target-parent and staging directories are created.
    pub mount_dir: PathBuf,
    /// Run only specs whose name contains one of these (all if empty).
    pub focus: Vec<String>,
    /// Do not run specs whose name contains one of these.
    pub skip: Vec<String>,
    /// Requested size of test volumes (csi-sanity's TestVolumeSize).
    pub volume_size: i64,
    /// Target size of expansion (0: `volume_size` + 1 GiB).
    pub expand_size: i64,
    /// Bound on every RPC.
    pub rpc_timeout: Duration,
    /// The filesystem type every mount capability asks for (empty: the driver's default).
    pub fs_type: String,
}

impl Options {
    pub fn new(endpoint: Endpoint) -> Options {
        Options {
            endpoint,
            controller_endpoint: None,
            params: HashMap::new(),
            mutable_params: HashMap::new(),
            secrets: Secrets::default(),
            mount_dir: std::env::temp_dir(),
            focus: Vec::new(),
            skip: Vec::new(),
            volume_size: DEFAULT_VOLUME_SIZE,
            expand_size: 0,
            rpc_timeout: Duration::from_secs(30),
            fs_type: String::new(),
        }
    }

    /// Whether `--focus`/`--skip` select the spec.
    pub fn selects(&self, name: &str) -> bool {
        (self.focus.is_empty() || self.focus.iter().any(|f| word_match(name, f)))
            && !self.skip.iter().any(|s| word_match(name, s))
    }

    fn expand_to(&self) -> i64 {
        if self.expand_size > 0 {
            self.expand_size
        } else {
            self.volume_size + DEFAULT_EXPAND_INCREMENT
        }
    }
}

/// Whether `pat` occurs in `name` starting at the beginning of a word, so
/// that `Node` selects "Node Service …" and "NodeGetInfo" but not
/// "SingleNodeWriter". Case-sensitive, like csi-sanity's (regex) filters.
pub fn word_match(name: &str, pat: &str) -> bool {
    !pat.is_empty()
        && name.match_indices(pat).any(|(i, _)| !name[..i].chars().next_back().is_some_and(char::is_alphanumeric))
}

/// The capabilities the driver advertises, read once at the start.
#[derive(Clone, Debug, Default)]
pub struct Caps {
    pub controller: BTreeSet<i32>,
    pub node: BTreeSet<i32>,
    /// Plugin services advertised on the controller endpoint.
    pub plugin_ctrl: BTreeSet<i32>,
    /// Plugin services advertised on the (node) endpoint.
    pub plugin_node: BTreeSet<i32>,
}

impl Caps {
    pub fn has(&self, c: Cap) -> bool {
        match c {
            Cap::Ctrl(t) => self.controller.contains(&(t as i32)),
            Cap::Node(t) => self.node.contains(&(t as i32)),
            Cap::Plugin(t) => self.plugin_ctrl.contains(&(t as i32)),
        }
    }

    /// The first need not advertised, if any.
    pub fn missing(&self, needs: &[Cap]) -> Option<Cap> {
        needs.iter().copied().find(|c| !self.has(*c))
    }

    fn describe(&self) -> String {
        let ctrl: Vec<&str> =
            self.controller.iter().map(|t| CtrlCap::try_from(*t).map(|c| c.as_str_name()).unwrap_or("?")).collect();
        let node: Vec<&str> =
            self.node.iter().map(|t| NodeCap::try_from(*t).map(|c| c.as_str_name()).unwrap_or("?")).collect();
        format!("controller [{}], node [{}]", ctrl.join(" "), node.join(" "))
    }
}

/// Connections and settings shared by every spec of a run.
pub struct Shared {
    pub opts: Options,
    pub caps: Caps,
    ident: pb::identity_client::IdentityClient<Channel>,
    /// Identity on the controller endpoint (the same channel when there is one endpoint).
    ctrl_ident: pb::identity_client::IdentityClient<Channel>,
    ctrl: pb::controller_client::ControllerClient<Channel>,
    node: pb::node_client::NodeClient<Channel>,
    run_id: String,
    counter: std::cell::Cell<u32>,
}

/// Something a spec created that must be undone after it.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Tracked {
    Volume(String),
    ControllerPublished { volume: String, node: String },
    Staged { volume: String, path: String },
    Published { volume: String, path: String },
    Snapshot(String),
}

/// What a spec sees.
pub struct Ctx {
    pub s: Rc<Shared>,
    tracked: Vec<Tracked>,
    dir: Option<PathBuf>,
}

/// Awaits an RPC within the run's time bound.
async fn bounded<T>(
    limit: Duration,
    what: &str,
    fut: impl Future<Output = Result<tonic::Response<T>, Status>>,
) -> Result<T, Status> {
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map(tonic::Response::into_inner),
        Err(_) => Err(Status::deadline_exceeded(format!("{what}: no answer within {limit:?} (suite bound)"))),
    }
}

/// An RPC that needs no cleanup bookkeeping.
macro_rules! plain_rpc {
    ($(#[$m:meta])* $fn:ident, $client:ident, $method:ident, $req:ty, $resp:ty, $what:literal) => {
        $(#[$m])*
        pub async fn $fn(&self, req: $req) -> Result<$resp, Status> {
            let mut c = self.s.$client.clone();
            bounded(self.s.opts.rpc_timeout, $what, c.$method(req)).await
        }
    };
}

impl Ctx {
    fn new(s: Rc<Shared>) -> Ctx {
        Ctx { s, tracked: Vec::new(), dir: None }
    }

    // ---- names, IDs, requests -------------------------------------------------

    /// A name unique across runs and specs, `prefix-<run>-<n>`.
    pub fn unique(&self, prefix: &str) -> String {
        let n = self.s.counter.get() + 1;
        self.s.counter.set(n);
        format!("{prefix}-{}-{n}", self.s.run_id)
    }

    /// A unique name padded to exactly `len` characters.
    pub fn unique_len(&self, prefix: &str, len: usize) -> String {
        let mut s = self.unique(prefix);
        while s.len() < len {
            s.push('x');
        }
        s.truncate(len);
        s
    }

    /// A well-formed ID of a volume that does not exist (csi-sanity's IDGen).
    pub fn fake_volume_id(&self) -> String {
        self.unique("fake-vol-id")
    }

    /// An ID of a node that does not exist.
    pub fn fake_node_id(&self) -> String {
        self.unique("fake-node-id")
    }

    pub fn secret(&self, kind: &str) -> HashMap<String, String> {
        self.s.opts.secrets.get(kind)
    }

    pub fn volume_size(&self) -> i64 {
        self.s.opts.volume_size
    }

    pub fn expand_size(&self) -> i64 {
        self.s.opts.expand_to()
    }

    pub fn has(&self, c: Cap) -> bool {
        self.s.caps.has(c)
    }

    /// A mount volume capability with access mode `mode` (and `--fs-type`).
    pub fn mount_cap(&self, mode: pb::volume_capability::access_mode::Mode) -> pb::VolumeCapability {
        use pb::volume_capability::{AccessMode, AccessType, MountVolume};
        pb::VolumeCapability {
            access_mode: Some(AccessMode { mode: mode as i32 }),
            access_type: Some(AccessType::Mount(MountVolume {
                fs_type: self.s.opts.fs_type.clone(),
                ..MountVolume::default()
            })),
        }
    }

    /// The capability every spec uses: mount, SINGLE_NODE_WRITER.
    pub fn snw(&self) -> pb::VolumeCapability {
        self.mount_cap(pb::volume_capability::access_mode::Mode::SingleNodeWriter)
    }

    /// A CreateVolume request with the user's parameters and secrets.
    pub fn create_req(&self, name: &str, capacity: Option<pb::CapacityRange>) -> pb::CreateVolumeRequest {
        pb::CreateVolumeRequest {
            name: name.to_string(),
            capacity_range: capacity,
            volume_capabilities: vec![self.snw()],
            parameters: self.s.opts.params.clone(),
            secrets: self.secret("CreateVolumeSecret"),
            ..Default::default()
        }
    }

    /// csi-sanity's MakeCreateVolumeReq: required = limit = the test size.
    pub fn sized_req(&self, name: &str) -> pb::CreateVolumeRequest {
        let size = self.volume_size();
        self.create_req(name, Some(pb::CapacityRange { required_bytes: size, limit_bytes: size }))
    }

    /// A CreateVolume request asking for at least the test size.
    pub fn required_req(&self, name: &str) -> pb::CreateVolumeRequest {
        self.create_req(name, Some(pb::CapacityRange { required_bytes: self.volume_size(), limit_bytes: 0 }))
    }

    pub fn delete_req(&self, id: &str) -> pb::DeleteVolumeRequest {
        pb::DeleteVolumeRequest { volume_id: id.to_string(), secrets: self.secret("DeleteVolumeSecret") }
    }

    pub fn snapshot_req(&self, name: &str, source: &str) -> pb::CreateSnapshotRequest {
        pb::CreateSnapshotRequest {
            name: name.to_string(),
            source_volume_id: source.to_string(),
            secrets: self.secret("CreateSnapshotSecret"),
            ..Default::default()
        }
    }

    pub fn delete_snapshot_req(&self, id: &str) -> pb::DeleteSnapshotRequest {
        pb::DeleteSnapshotRequest { snapshot_id: id.to_string(), secrets: self.secret("DeleteSnapshotSecret") }
    }

    pub fn list_snapshots_req(&self) -> pb::ListSnapshotsRequest {
        pb::ListSnapshotsRequest { secrets: self.secret("ListSnapshotsSecret"), ..Default::default() }
    }

    pub fn ctrl_publish_req(&self, vol: &pb::Volume, node: &str) -> pb::ControllerPublishVolumeRequest {
        pb::ControllerPublishVolumeRequest {
            volume_id: vol.volume_id.clone(),
            node_id: node.to_string(),
            volume_capability: Some(self.snw()),
            readonly: false,
            secrets: self.secret("ControllerPublishVolumeSecret"),
            volume_context: vol.volume_context.clone(),
        }
    }

    pub fn ctrl_unpublish_req(&self, volume: &str, node: &str) -> pb::ControllerUnpublishVolumeRequest {
        pb::ControllerUnpublishVolumeRequest {
            volume_id: volume.to_string(),
            node_id: node.to_string(),
            secrets: self.secret("ControllerUnpublishVolumeSecret"),
        }
    }

    pub fn expand_req(&self, id: &str) -> pb::ControllerExpandVolumeRequest {
        pb::ControllerExpandVolumeRequest {
            volume_id: id.to_string(),
            capacity_range: Some(pb::CapacityRange { required_bytes: self.expand_size(), limit_bytes: 0 }),
            secrets: self.secret("ControllerExpandVolumeSecret"),
            volume_capability: Some(self.snw()),
        }
    }

    pub fn modify_req(&self, id: &str) -> pb::ControllerModifyVolumeRequest {
        pb::ControllerModifyVolumeRequest {
            volume_id: id.to_string(),
            secrets: self.secret("ControllerModifyVolumeSecret"),
            mutable_parameters: self.s.opts.mutable_params.clone(),
        }
    }

    // ---- per-spec directories -------------------------------------------------

    /// This spec's directory under `--mount-dir`, with `mount/` (the target's
    /// parent) and `staging/` created, as csi-sanity creates them.
    fn spec_dir(&mut self) -> Res<PathBuf> {
        if let Some(d) = &self.dir {
            return Ok(d.clone());
        }
        let d = self.s.opts.mount_dir.join(self.unique("csi-sanity"));
        for p in [d.clone(), d.join("mount"), d.join("staging")] {
            std::fs::create_dir(&p).map_err(|e| format!("create {}: {e}", p.display()))?;
        }
        self.dir = Some(d.clone());
        Ok(d)
    }

    /// NodePublishVolume's target_path: inside a directory the suite created;
    /// the driver creates the path itself (CSI spec, NodePublishVolume).
    pub fn target_path(&mut self) -> Res<String> {
        Ok(self.spec_dir()?.join("mount").join("target").to_string_lossy().into_owned())
    }

    /// The parent of [`Ctx::target_path`].
    pub fn target_parent(&mut self) -> Res<String> {
        Ok(self.spec_dir()?.join("mount").to_string_lossy().into_owned())
    }

    /// An absolute path that does not exist (csi-sanity's `some/path`, made
    /// absolute as the spec requires of volume_path).
    pub fn absent_path(&mut self) -> Res<String> {
        Ok(self.spec_dir()?.join("mount").join("some").join("path").to_string_lossy().into_owned())
    }

    /// NodeStageVolume's staging_target_path: a directory the suite created.
    pub fn staging_path(&mut self) -> Res<String> {
        Ok(self.spec_dir()?.join("staging").to_string_lossy().into_owned())
    }

    // ---- tracked RPCs -----------------------------------------------------------

    fn track(&mut self, t: Tracked) {
        if !self.tracked.contains(&t) {
            self.tracked.push(t);
        }
    }

    fn untrack(&mut self, t: &Tracked) {
        self.tracked.retain(|x| x != t);
    }

    /// CreateVolume; a returned volume is deleted after the spec.
    pub async fn create_volume(&mut self, req: pb::CreateVolumeRequest) -> Result<pb::CreateVolumeResponse, Status> {
        let mut c = self.s.ctrl.clone();
        let r = bounded(self.s.opts.rpc_timeout, "CreateVolume", c.create_volume(req)).await;
        if let Some(id) = r.as_ref().ok().and_then(|r| r.volume.as_ref()).map(|v| &v.volume_id) {
            if !id.is_empty() {
                self.track(Tracked::Volume(id.clone()));
            }
        }
        r
    }

    /// CreateVolume that must succeed with a volume and a volume ID (csi-sanity's MustCreateVolume).
    pub async fn must_create_volume(&mut self, req: pb::CreateVolumeRequest) -> Res<pb::Volume> {
        let r = ok("CreateVolume", self.create_volume(req).await)?;
        let v = r.volume.ok_or("CreateVolume: the response has no volume")?;
        ensure!(!v.volume_id.is_empty(), "CreateVolume: the volume has no volume_id");
        Ok(v)
    }

    pub async fn delete_volume(&mut self, req: pb::DeleteVolumeRequest) -> Result<pb::DeleteVolumeResponse, Status> {
        let id = req.volume_id.clone();
        let mut c = self.s.ctrl.clone();
        let r = bounded(self.s.opts.rpc_timeout, "DeleteVolume", c.delete_volume(req)).await;
        if r.is_ok() && !id.is_empty() {
            self.untrack(&Tracked::Volume(id));
        }
        r
    }

    pub async fn ctrl_publish(
        &mut self,
        req: pb::ControllerPublishVolumeRequest,
    ) -> Result<pb::ControllerPublishVolumeResponse, Status> {
        let t = Tracked::ControllerPublished { volume: req.volume_id.clone(), node: req.node_id.clone() };
        let mut c = self.s.ctrl.clone();
        let r = bounded(self.s.opts.rpc_timeout, "ControllerPublishVolume", c.controller_publish_volume(req)).await;
        if let (Ok(_), Tracked::ControllerPublished { volume, node }) = (&r, &t) {
            if !volume.is_empty() && !node.is_empty() {
                self.track(t);
            }
        }
        r
    }

    pub async fn ctrl_unpublish(
        &mut self,
        req: pb::ControllerUnpublishVolumeRequest,
    ) -> Result<pb::ControllerUnpublishVolumeResponse, Status> {
        let t = Tracked::ControllerPublished { volume: req.volume_id.clone(), node: req.node_id.clone() };
        let mut c = self.s.ctrl.clone();
        let r = bounded(self.s.opts.rpc_timeout, "ControllerUnpublishVolume", c.controller_unpublish_volume(req)).await;
        if r.is_ok() {
            self.untrack(&t);
        }
        r
    }

    pub async fn create_snapshot(
        &mut self,
        req: pb::CreateSnapshotRequest,
    ) -> Result<pb::CreateSnapshotResponse, Status> {
        let mut c = self.s.ctrl.clone();
        let r = bounded(self.s.opts.rpc_timeout, "CreateSnapshot", c.create_snapshot(req)).await;
        if let Some(id) = r.as_ref().ok().and_then(|r| r.snapshot.as_ref()).map(|s| &s.snapshot_id) {
            if !id.is_empty() {
                self.track(Tracked::Snapshot(id.clone()));
            }
        }
        r
    }

    /// CreateSnapshot that must succeed with a well-formed snapshot (csi-sanity's MustCreateSnapshot).
    pub async fn must_create_snapshot(&mut self, req: pb::CreateSnapshotRequest) -> Res<pb::Snapshot> {
        let r = ok("CreateSnapshot", self.create_snapshot(req).await)?;
        let s = r.snapshot.ok_or("CreateSnapshot: the response has no snapshot")?;
        verify_snapshot("CreateSnapshot", &s)?;
        Ok(s)
    }

    /// A new volume (csi-sanity's MakeCreateVolumeReq) and a snapshot of it.
    pub async fn must_create_snapshot_of_new_volume(
        &mut self,
        vol_prefix: &str,
        snap_name: &str,
    ) -> Res<(pb::Snapshot, pb::Volume)> {
        let req = self.required_req(&self.unique(vol_prefix));
        let vol = self.must_create_volume(req).await?;
        let snap = self.must_create_snapshot(self.snapshot_req(snap_name, &vol.volume_id)).await?;
        Ok((snap, vol))
    }

    pub async fn delete_snapshot(
        &mut self,
        req: pb::DeleteSnapshotRequest,
    ) -> Result<pb::DeleteSnapshotResponse, Status> {
        let id = req.snapshot_id.clone();
        let mut c = self.s.ctrl.clone();
        let r = bounded(self.s.opts.rpc_timeout, "DeleteSnapshot", c.delete_snapshot(req)).await;
        if r.is_ok() && !id.is_empty() {
            self.untrack(&Tracked::Snapshot(id));
        }
        r
    }

    /// Whether a node-side call on `volume` must be undone: always when it
    /// succeeded, and for our own volumes also when it failed (it may have
    /// done half its work).
    fn undo_node_call<T>(&self, volume: &str, path: &str, r: &Result<T, Status>) -> bool {
        !volume.is_empty() && !path.is_empty() && (r.is_ok() || self.tracked.contains(&Tracked::Volume(volume.into())))
    }

    /// NodeStageVolume; undone after the spec (see [`Ctx::undo_node_call`]).
    pub async fn node_stage(&mut self, req: pb::NodeStageVolumeRequest) -> Result<pb::NodeStageVolumeResponse, Status> {
        let t = Tracked::Staged { volume: req.volume_id.clone(), path: req.staging_target_path.clone() };
        let mut c = self.s.node.clone();
        let r = bounded(self.s.opts.rpc_timeout, "NodeStageVolume", c.node_stage_volume(req)).await;
        if let Tracked::Staged { volume, path } = &t {
            if self.undo_node_call(volume, path, &r) {
                self.track(t);
            }
        }
        r
    }

    pub async fn node_unstage(
        &mut self,
        req: pb::NodeUnstageVolumeRequest,
    ) -> Result<pb::NodeUnstageVolumeResponse, Status> {
        let t = Tracked::Staged { volume: req.volume_id.clone(), path: req.staging_target_path.clone() };
        let mut c = self.s.node.clone();
        let r = bounded(self.s.opts.rpc_timeout, "NodeUnstageVolume", c.node_unstage_volume(req)).await;
        if r.is_ok() {
            self.untrack(&t);
        }
        r
    }

    /// NodePublishVolume; undone after the spec (see [`Ctx::undo_node_call`]).
    pub async fn node_publish(
        &mut self,
        req: pb::NodePublishVolumeRequest,
    ) -> Result<pb::NodePublishVolumeResponse, Status> {
        let t = Tracked::Published { volume: req.volume_id.clone(), path: req.target_path.clone() };
        let mut c = self.s.node.clone();
        let r = bounded(self.s.opts.rpc_timeout, "NodePublishVolume", c.node_publish_volume(req)).await;
        if let Tracked::Published { volume, path } = &t {
            if self.undo_node_call(volume, path, &r) {
                self.track(t);
            }
        }
        r
    }

    pub async fn node_unpublish(
        &mut self,
        req: pb::NodeUnpublishVolumeRequest,
    ) -> Result<pb::NodeUnpublishVolumeResponse, Status> {
        let t = Tracked::Published { volume: req.volume_id.clone(), path: req.target_path.clone() };
        let mut c = self.s.node.clone();
        let r = bounded(self.s.opts.rpc_timeout, "NodeUnpublishVolume", c.node_unpublish_volume(req)).await;
        if r.is_ok() {
            self.untrack(&t);
        }
        r
    }

    // ---- plain RPCs -------------------------------------------------------------

    plain_rpc!(
        plugin_info,
        ident,
        get_plugin_info,
        pb::GetPluginInfoRequest,
        pb::GetPluginInfoResponse,
        "GetPluginInfo"
    );
    plain_rpc!(
        plugin_caps,
        ident,
        get_plugin_capabilities,
        pb::GetPluginCapabilitiesRequest,
        pb::GetPluginCapabilitiesResponse,
        "GetPluginCapabilities"
    );
    plain_rpc!(probe, ident, probe, pb::ProbeRequest, pb::ProbeResponse, "Probe");
    plain_rpc!(
        ctrl_plugin_info,
        ctrl_ident,
        get_plugin_info,
        pb::GetPluginInfoRequest,
        pb::GetPluginInfoResponse,
        "GetPluginInfo (controller endpoint)"
    );
    plain_rpc!(
        ctrl_plugin_caps,
        ctrl_ident,
        get_plugin_capabilities,
        pb::GetPluginCapabilitiesRequest,
        pb::GetPluginCapabilitiesResponse,
        "GetPluginCapabilities (controller endpoint)"
    );
    plain_rpc!(ctrl_probe, ctrl_ident, probe, pb::ProbeRequest, pb::ProbeResponse, "Probe (controller endpoint)");
    plain_rpc!(get_snapshot, ctrl, get_snapshot, pb::GetSnapshotRequest, pb::GetSnapshotResponse, "GetSnapshot");

    /// Whether the Controller service has an endpoint of its own (csi-sanity
    /// then runs the Identity specs against both).
    pub fn split_controller(&self) -> bool {
        self.s.opts.controller_endpoint.is_some()
    }
    plain_rpc!(
        ctrl_caps,
        ctrl,
        controller_get_capabilities,
        pb::ControllerGetCapabilitiesRequest,
        pb::ControllerGetCapabilitiesResponse,
        "ControllerGetCapabilities"
    );
    plain_rpc!(get_capacity, ctrl, get_capacity, pb::GetCapacityRequest, pb::GetCapacityResponse, "GetCapacity");
    plain_rpc!(list_volumes, ctrl, list_volumes, pb::ListVolumesRequest, pb::ListVolumesResponse, "ListVolumes");
    plain_rpc!(
        validate,
        ctrl,
        validate_volume_capabilities,
        pb::ValidateVolumeCapabilitiesRequest,
        pb::ValidateVolumeCapabilitiesResponse,
        "ValidateVolumeCapabilities"
    );
    plain_rpc!(
        list_snapshots,
        ctrl,
        list_snapshots,
        pb::ListSnapshotsRequest,
        pb::ListSnapshotsResponse,
        "ListSnapshots"
    );
    plain_rpc!(
        ctrl_expand,
        ctrl,
        controller_expand_volume,
        pb::ControllerExpandVolumeRequest,
        pb::ControllerExpandVolumeResponse,
        "ControllerExpandVolume"
    );
    plain_rpc!(
        ctrl_get_volume,
        ctrl,
        controller_get_volume,
        pb::ControllerGetVolumeRequest,
        pb::ControllerGetVolumeResponse,
        "ControllerGetVolume"
    );
    plain_rpc!(
        ctrl_modify,
        ctrl,
        controller_modify_volume,
        pb::ControllerModifyVolumeRequest,
        pb::ControllerModifyVolumeResponse,
        "ControllerModifyVolume"
    );
    plain_rpc!(
        node_caps,
        node,
        node_get_capabilities,
        pb::NodeGetCapabilitiesRequest,
        pb::NodeGetCapabilitiesResponse,
        "NodeGetCapabilities"
    );
    plain_rpc!(node_info, node, node_get_info, pb::NodeGetInfoRequest, pb::NodeGetInfoResponse, "NodeGetInfo");
    plain_rpc!(
        node_stats,
        node,
        node_get_volume_stats,
        pb::NodeGetVolumeStatsRequest,
        pb::NodeGetVolumeStatsResponse,
        "NodeGetVolumeStats"
    );
    plain_rpc!(
        node_expand,
        node,
        node_expand_volume,
        pb::NodeExpandVolumeRequest,
        pb::NodeExpandVolumeResponse,
        "NodeExpandVolume"
    );

    // ---- cleanup ------------------------------------------------------------------

    /// Undoes everything tracked, newest first, then removes the spec's
    /// directories. Returns the failures (each also printed as a `cleanup:` line).
    async fn cleanup(&mut self, spec: &str) -> Vec<String> {
        let mut errs = Vec::new();
        while let Some(t) = self.tracked.last().cloned() {
            let r: Result<(), Status> = match &t {
                Tracked::Published { volume, path } => {
                    let req = pb::NodeUnpublishVolumeRequest { volume_id: volume.clone(), target_path: path.clone() };
                    self.node_unpublish(req).await.map(drop).or_else(not_found_is_gone)
                }
                Tracked::Staged { volume, path } => {
                    let req =
                        pb::NodeUnstageVolumeRequest { volume_id: volume.clone(), staging_target_path: path.clone() };
                    self.node_unstage(req).await.map(drop).or_else(not_found_is_gone)
                }
                Tracked::ControllerPublished { volume, node } => {
                    let req = self.ctrl_unpublish_req(volume, node);
                    self.ctrl_unpublish(req).await.map(drop).or_else(not_found_is_gone)
                }
                Tracked::Volume(id) => self.delete_volume(self.delete_req(id)).await.map(drop),
                Tracked::Snapshot(id) => self.delete_snapshot(self.delete_snapshot_req(id)).await.map(drop),
            };
            if let Err(st) = r {
                let e = format!("{t:?}: {:?}: {}", st.code(), st.message());
                eprintln!("cleanup: {spec}: {e}");
                errs.push(e);
            }
            self.untrack(&t);
        }
        if let Some(d) = self.dir.take() {
            remove_spec_dir(&d, spec);
        }
        errs
    }
}

/// Removes a spec directory with `rmdir` only: never recursively, so a
/// mount the driver left behind is reported, not emptied.
fn remove_spec_dir(d: &Path, spec: &str) {
    let target = d.join("mount").join("target");
    if target.exists() {
        eprintln!("cleanup: {spec}: the driver left {} behind", target.display());
        let _ = std::fs::remove_dir(&target);
    }
    for p in [d.join("staging"), d.join("mount"), d.to_path_buf()] {
        if let Err(e) = std::fs::remove_dir(&p) {
            if e.kind() != std::io::ErrorKind::NotFound {
                eprintln!("cleanup: {spec}: rmdir {}: {e}", p.display());
            }
        }
    }
}

fn not_found_is_gone(st: Status) -> Result<(), Status> {
    if st.code() == Code::NotFound {
        Ok(())
    } else {
        Err(st)
    }
}

/// The call must have succeeded.
pub fn ok<T>(what: &str, r: Result<T, Status>) -> Res<T> {
    r.map_err(|st| format!("{what} failed: {:?}: {}", st.code(), st.message()))
}

/// The call must have failed with `want`.
pub fn expect_code<T>(what: &str, r: Result<T, Status>, want: Code) -> Res {
    match r {
        Ok(_) => Err(format!("{what}: expected {want:?}, got success")),
        Err(st) if st.code() == want => Ok(()),
        Err(st) => Err(format!("{what}: expected {want:?}, got {:?}: {}", st.code(), st.message())),
    }
}

/// csi-sanity's verifySnapshotInfo: ID, source volume ID and creation time set.
pub fn verify_snapshot(what: &str, s: &pb::Snapshot) -> Res {
    ensure!(!s.snapshot_id.is_empty(), "{what}: snapshot without snapshot_id");
    ensure!(!s.source_volume_id.is_empty(), "{what}: snapshot {} without source_volume_id", s.snapshot_id);
    let t = s.creation_time.unwrap_or_default();
    ensure!(t.seconds != 0 || t.nanos != 0, "{what}: snapshot {} without creation_time", s.snapshot_id);
    Ok(())
}

/// Result of a run.
pub struct Outcome {
    pub title: String,
    pub notes: Vec<String>,
    pub results: Vec<CheckResult>,
    /// Specs `--focus`/`--skip` left out.
    pub filtered: usize,
}

impl Outcome {
    pub fn failed(&self) -> usize {
        report::counts(&self.results).1
    }

    /// `N specs: P passed, F failed, S skipped (capability not advertised), X filtered`.
    pub fn summary(&self) -> String {
        let (p, f, s) = report::counts(&self.results);
        format!(
            "{} specs: {p} passed, {f} failed, {s} skipped (capability not advertised), {} filtered",
            self.results.len() + self.filtered,
            self.filtered
        )
    }

    /// The table (one row per run or skipped spec) and the summary line.
    pub fn table(&self) -> String {
        let layout = report::Layout { millis: true, upper: true };
        let mut s = report::rows(&self.title, &self.notes, &self.results, layout);
        s.push_str(&self.summary());
        s.push('\n');
        s
    }
}

async fn connect(e: &Endpoint) -> Res<Channel> {
    csi_core::client::connect(e).await.map_err(|e| e.to_string())
}

async fn discover(
    s: &Shared,
    ctrl_ident: &pb::identity_client::IdentityClient<Channel>,
    notes: &mut Vec<String>,
) -> Caps {
    let t = s.opts.rpc_timeout;
    let mut caps = Caps::default();
    let plugin = |r: pb::GetPluginCapabilitiesResponse| -> BTreeSet<i32> {
        r.capabilities
            .iter()
            .filter_map(|c| match c.r#type {
                Some(pb::plugin_capability::Type::Service(sv)) => Some(sv.r#type),
                _ => None,
            })
            .collect()
    };
    match bounded(
        t,
        "GetPluginCapabilities",
        s.ident.clone().get_plugin_capabilities(pb::GetPluginCapabilitiesRequest {}),
    )
    .await
    {
        Ok(r) => caps.plugin_node = plugin(r),
        Err(e) => notes.push(format!("GetPluginCapabilities failed: {:?}: {}", e.code(), e.message())),
    }
    if s.opts.controller_endpoint.is_some() {
        match bounded(
            t,
            "GetPluginCapabilities",
            ctrl_ident.clone().get_plugin_capabilities(pb::GetPluginCapabilitiesRequest {}),
        )
        .await
        {
            Ok(r) => caps.plugin_ctrl = plugin(r),
            Err(e) => notes.push(format!(
                "GetPluginCapabilities on the controller endpoint failed: {:?}: {}",
                e.code(),
                e.message()
            )),
        }
    } else {
        caps.plugin_ctrl = caps.plugin_node.clone();
    }
    match bounded(
        t,
        "ControllerGetCapabilities",
        s.ctrl.clone().controller_get_capabilities(pb::ControllerGetCapabilitiesRequest {}),
    )
    .await
    {
        Ok(r) => {
            caps.controller = r
                .capabilities
                .iter()
                .filter_map(|c| c.r#type.map(|pb::controller_service_capability::Type::Rpc(rpc)| rpc.r#type))
                .collect()
        }
        Err(e) => notes.push(format!("ControllerGetCapabilities failed: {:?}: {}", e.code(), e.message())),
    }
    match bounded(t, "NodeGetCapabilities", s.node.clone().node_get_capabilities(pb::NodeGetCapabilitiesRequest {}))
        .await
    {
        Ok(r) => {
            caps.node = r
                .capabilities
                .iter()
                .filter_map(|c| c.r#type.map(|pb::node_service_capability::Type::Rpc(rpc)| rpc.r#type))
                .collect()
        }
        Err(e) => notes.push(format!("NodeGetCapabilities failed: {:?}: {}", e.code(), e.message())),
    }
    caps
}

/// Runs the suite. Progress lines go to stderr as specs finish.
pub async fn run(opts: Options) -> Res<Outcome> {
    // csi-sanity makes --mount-dir (and its parents) if missing; so do we.
    std::fs::create_dir_all(&opts.mount_dir).map_err(|e| format!("create {}: {e}", opts.mount_dir.display()))?;
    let node_ch = connect(&opts.endpoint).await?;
    let ctrl_ch = match &opts.controller_endpoint {
        Some(e) => connect(e).await?,
        None => node_ch.clone(),
    };
    let ctrl_ident = pb::identity_client::IdentityClient::new(ctrl_ch.clone());
    let mut shared = Shared {
        ident: pb::identity_client::IdentityClient::new(node_ch.clone()),
        ctrl_ident: ctrl_ident.clone(),
        ctrl: pb::controller_client::ControllerClient::new(ctrl_ch),
        node: pb::node_client::NodeClient::new(node_ch),
        caps: Caps::default(),
        run_id: format!("{}{}", testkit::util::b36(std::process::id()), testkit::util::b36(now_secs())),
        counter: std::cell::Cell::new(0),
        opts,
    };
    let mut notes = Vec::new();
    shared.caps = discover(&shared, &ctrl_ident, &mut notes).await;
    notes.push(format!("advertised: {}", shared.caps.describe()));
    if !shared.opts.secrets.sections().is_empty() {
        notes.push(format!("secrets for: {}", shared.opts.secrets.sections().join(", ")));
    }
    let title = format!(
        "CSI sanity: {}{}",
        shared.opts.endpoint,
        shared.opts.controller_endpoint.as_ref().map(|e| format!(" (controller {e})")).unwrap_or_default()
    );
    let shared = Rc::new(shared);
    let mut results = Vec::new();
    let mut filtered = 0;
    for spec in catalog() {
        if !shared.opts.selects(&spec.name) {
            filtered += 1;
            continue;
        }
        if testkit::util::interrupted() {
            notes.push("interrupted: the remaining specs were not run".into());
            break;
        }
        let r = run_one(&shared, &spec).await;
        r.print_progress();
        results.push(r);
    }
    Ok(Outcome { title, notes, results, filtered })
}

async fn run_one(shared: &Rc<Shared>, spec: &Spec) -> CheckResult {
    let start = Instant::now();
    let (verdict, detail) = if let Some(c) = shared.caps.missing(&spec.needs) {
        (Verdict::Skip, format!("{} not advertised", c.name()))
    } else {
        let mut ctx = Ctx::new(shared.clone());
        let r = (spec.run)(&mut ctx).await;
        let cleanup = ctx.cleanup(&spec.name).await;
        match (r, cleanup.is_empty()) {
            (Ok(()), true) => (Verdict::Pass, String::new()),
            (Ok(()), false) => (Verdict::Fail, format!("cleanup failed: {}", cleanup.join("; "))),
            (Err(e), true) => (Verdict::Fail, e),
            (Err(e), false) => (Verdict::Fail, format!("{e}; cleanup failed: {}", cleanup.join("; "))),
        }
    };
    CheckResult { name: spec.name.clone(), verdict, detail, seconds: start.elapsed().as_secs_f64() }
}

fn now_secs() -> u32 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as u32).unwrap_or(0)
}

/// `conformance csi list`: the catalog with each spec's needs.
pub fn list() -> String {
    let mut s = String::new();
    for spec in catalog() {
        let needs: Vec<String> = spec.needs.iter().map(|c| c.name()).collect();
        if needs.is_empty() {
            s.push_str(&format!("{}\n", spec.name));
        } else {
            s.push_str(&format!("{}  [needs {}]\n", spec.name, needs.join(", ")));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalog_names_are_unique_and_csi_sanity_shaped() {
        let c = catalog();
        assert!(c.len() >= 85, "only {} specs", c.len());
        let mut seen = BTreeSet::new();
        for s in &c {
            assert!(seen.insert(s.name.clone()), "duplicate spec {}", s.name);
            assert!(
                ["Identity Service ", "Controller Service [Controller Server] ", "Node Service "]
                    .iter()
                    .any(|p| s.name.starts_with(p))
                    || s.name.contains(" [Controller Server] "),
                "unexpected name {}",
                s.name
            );
        }
    }

    #[test]
    fn focus_and_skip_are_substrings() {
        let mut o = Options::new("unix:///x.sock".parse().unwrap());
        assert!(o.selects("Node Service should work"));
        o.skip = vec!["Node".into()];
        assert!(!o.selects("Node Service should work"));
        assert!(o.selects(
            "Controller Service [Controller Server] ControllerPublishVolume should fail when the node does not exist"
        ));
        o.skip.clear();
        o.focus = vec!["Node".into()];
        let names: Vec<String> = catalog().into_iter().map(|s| s.name).filter(|n| o.selects(n)).collect();
        assert!(names.iter().all(|n| n.starts_with("Node Service")), "{names:?}");
        assert!(names.len() >= 20);
        assert!(word_match("CreateVolume should x", "CreateVolume should"));
        assert!(!word_match("CreateVolume should x", "Volume should"));
        assert!(!word_match("SingleNodeWriter", "Node"));
        assert!(word_match("a [Controller Server] b", "Server]"));
        assert!(!word_match("x", ""));
    }

    #[test]
    fn skip_only_for_missing_capabilities() {
        let mut caps = Caps::default();
        let need = [Cap::Ctrl(CtrlCap::CreateDeleteVolume), Cap::Node(NodeCap::StageUnstageVolume)];
        assert_eq!(caps.missing(&need), Some(need[0]));
        caps.controller.insert(CtrlCap::CreateDeleteVolume as i32);
        assert_eq!(caps.missing(&need), Some(need[1]));
        caps.node.insert(NodeCap::StageUnstageVolume as i32);
        assert_eq!(caps.missing(&need), None);
        assert_eq!(need[1].name(), "node STAGE_UNSTAGE_VOLUME");
    }

    #[test]
    fn expect_code_messages() {
        assert!(expect_code::<()>("X", Err(Status::invalid_argument("no")), Code::InvalidArgument).is_ok());
        let e = expect_code::<()>("X", Ok(()), Code::NotFound).unwrap_err();
        assert_eq!(e, "X: expected NotFound, got success");
        let e = expect_code::<()>("X", Err(Status::internal("boom")), Code::NotFound).unwrap_err();
        assert_eq!(e, "X: expected NotFound, got Internal: boom");
    }

    #[test]
    fn summary_counts_filtered() {
        let r = |v| CheckResult { name: "n".into(), verdict: v, detail: String::new(), seconds: 0.0 };
        let o = Outcome {
            title: "t".into(),
            notes: vec![],
            results: vec![r(Verdict::Pass), r(Verdict::Fail), r(Verdict::Skip), r(Verdict::Pass)],
            filtered: 3,
        };
        assert_eq!(o.summary(), "7 specs: 2 passed, 1 failed, 1 skipped (capability not advertised), 3 filtered");
        assert_eq!(o.failed(), 1);
    }
}
