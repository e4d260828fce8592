//! csi-cloud's Node service: an attached EBS volume's device becomes a
//! filesystem at the staging path (made only on a blank device), bound
//! into each target path; or, in raw block mode, the device node itself is
//! bound onto the target file.
//!
//! The controller attaches and detaches (EC2 AttachVolume/DetachVolume);
//! the node never calls EC2 for a volume, so it stages and unstages when
//! the EC2 API is unreachable. What stage did is kept in a stage record
//! ([`record`]) under `--state-dir`.
//!
//! Every step has a time bound (device wait, tool runs, mounts, unmounts)
//! and is idempotent: a retried stage finds its record and its mount, a
//! retried unstage or unpublish finds nothing left to do, and one of a
//! path that was never mounted succeeds.

pub mod info;
pub mod limits;
pub mod record;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use csi_core::blockfs as fs;
use csi_core::blocknode;
use csi_core::mount;
use csi_core::node::blocking;
use csi_core::pb;
use csi_core::pb::node_service_capability::rpc::Type as NodeCap;
use csi_core::pb::volume_capability::access_mode::Mode as AccessMode;
use csi_core::pb::volume_capability::AccessType;
use csi_core::validate::{self, CapabilitySupport, InFlight};
use csi_core::Error;
use tonic::{Request, Response, Status};

use crate::device;
use record::{Records, StageRecord};

/// Bound on one mount.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on one unmount attempt (escalated as csi-core's `unmount` does).
pub const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(10);
/// Bound on statvfs for NodeGetVolumeStats.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(5);
/// How long NodeExpandVolume waits for the device to show its new size.
pub const RESIZE_WAIT: Duration = Duration::from_secs(30);
/// Default of `--device-wait`: how long stage waits for an attached
/// volume's device to appear (udev may lag behind AttachVolume).
pub const DEFAULT_DEVICE_WAIT: Duration = Duration::from_secs(10);

/// An EBS volume attaches to one instance (io2 Multi-Attach is not offered).
const MODES: &[AccessMode] = &[
    AccessMode::SingleNodeWriter,
    AccessMode::SingleNodeReaderOnly,
    AccessMode::SingleNodeSingleWriter,
    AccessMode::SingleNodeMultiWriter,
];

/// What the node accepts: block and mount, single-node modes.
pub const SUPPORT: CapabilitySupport = CapabilitySupport { block: true, modes: MODES };

/// The node's settings.
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// The instance ID (`--node-id`, else the instance metadata).
    pub node_id: String,
    /// The availability zone; empty: none reported.
    pub zone: String,
    /// NodeGetInfo's `max_volumes_per_node` (0: no limit stated).
    pub max_volumes: i64,
    /// `--state-dir`: stage records.
    pub state_dir: PathBuf,
    /// `--device-wait`: how long stage waits for the device.
    pub device_wait: Duration,
}

/// csi-cloud's Node service.
#[derive(Debug)]
pub struct NodeService {
    cfg: NodeConfig,
    records: Records,
    in_flight: InFlight,
}

/// What NodeStageVolume was asked, checked.
#[derive(Debug)]
struct StageReq {
    volume_id: String,
    staging: PathBuf,
    /// Empty: raw block.
    fs_type: String,
    mount_flags: Vec<String>,
    readonly: bool,
    hint: Option<String>,
}

impl NodeService {
    /// The node service for `cfg`. Touches no device: it starts on a host
    /// with no EBS volume attached.
    pub fn new(cfg: NodeConfig) -> NodeService {
        let records = Records::new(&cfg.state_dir);
        NodeService { cfg, records, in_flight: InFlight::default() }
    }

    fn stage_request(&self, req: &pb::NodeStageVolumeRequest) -> Result<StageReq, Status> {
        validate::require_volume_id(&req.volume_id)?;
        validate::require_staging_path(&req.staging_target_path)?;
        let cap = validate::require_capability(req.volume_capability.as_ref(), &SUPPORT)?;
        device::nvme_serial(&req.volume_id)?;
        let mode = cap.access_mode.as_ref().map(|m| m.mode).unwrap_or_default();
        let readonly = mode == AccessMode::SingleNodeReaderOnly as i32;
        let (fs_type, mount_flags) = match &cap.access_type {
            Some(AccessType::Mount(m)) => (fs::check_type(&m.fs_type)?.to_string(), m.mount_flags.clone()),
            _ => (String::new(), Vec::new()),
        };
        Ok(StageReq {
            volume_id: req.volume_id.clone(),
            staging: mount::normalize(Path::new(&req.staging_target_path))?,
            fs_type,
            mount_flags,
            readonly,
            hint: req.publish_context.get(device::DEVICE_PATH_KEY).cloned(),
        })
    }

    /// NodeStageVolume's work (blocking).
    fn stage(&self, r: StageReq) -> Result<(), Status> {
        if let Some(rec) = self.records.load(&r.volume_id)? {
            if rec.staging_path != r.staging || rec.is_block() != r.fs_type.is_empty() {
                return Err(Status::already_exists(format!(
                    "volume {} is staged at {} as {:?}, not at {} as {:?}",
                    r.volume_id,
                    rec.staging_path.display(),
                    if rec.is_block() { "block" } else { rec.fs_type.as_str() },
                    r.staging.display(),
                    if r.fs_type.is_empty() { "block" } else { r.fs_type.as_str() },
                )));
            }
            if self.fully_staged(&rec)? {
                return Ok(());
            }
        }
        let found = device::find(&r.volume_id, r.hint.as_deref(), self.cfg.device_wait)?;
        let dev = found.device.to_string_lossy().into_owned();
        let rec = StageRecord {
            volume_id: r.volume_id.clone(),
            device: dev.clone(),
            staging_path: r.staging.clone(),
            fs_type: r.fs_type.clone(),
            readonly: r.readonly,
        };
        // Saved before anything is mounted: an unstage after a crash here
        // knows the path to clean.
        self.records.save(&rec)?;
        if rec.is_block() {
            return Ok(());
        }
        // What is on the device decides; the request's fs type only names
        // what to make on a blank one. Nothing found by blkid is ever formatted.
        let on_device = match fs::inspect(&dev)? {
            fs::Content::Blank => None,
            fs::Content::Known(t) => Some(t.to_string()),
            fs::Content::Other => fs::probe(&dev)?,
        };
        let fs_type = match on_device {
            None if r.readonly => {
                return Err(Status::failed_precondition(format!(
                    "volume {} ({dev}) is blank and was asked read-only: nothing to mount",
                    r.volume_id
                )))
            }
            None => {
                tracing::info!(volume = %r.volume_id, device = %dev, fs = %r.fs_type, "blank device: making a filesystem");
                fs::mkfs(&dev, &r.fs_type)?;
                r.fs_type.clone()
            }
            Some(t) if fs::SUPPORTED.contains(&t.as_str()) => t,
            Some(t) => {
                return Err(Status::failed_precondition(format!(
                    "volume {} ({dev}) holds {t}, which this driver does not mount; it is left as it is",
                    r.volume_id
                )))
            }
        };
        if fs_type != r.fs_type {
            tracing::warn!(volume = %r.volume_id, found = %fs_type, asked = %r.fs_type, "mounting the filesystem the device holds");
            self.records.save(&StageRecord { fs_type: fs_type.clone(), ..rec.clone() })?;
        }
        std::fs::create_dir_all(&r.staging).map_err(|e| Error::io(format!("create {}", r.staging.display()), e))?;
        let (flags, extra) = blocknode::mount_flags(&r.mount_flags, r.readonly);
        let data = fs::mount_data(&fs_type, &extra);
        let data = (!data.is_empty()).then_some(data);
        mount::mount(&dev, &r.staging, &fs_type, flags, data.as_deref(), MOUNT_TIMEOUT)?;
        Ok(())
    }

    /// Is the recorded stage complete (device there, and mounted for a filesystem)?
    fn fully_staged(&self, rec: &StageRecord) -> Result<bool, Status> {
        if !Path::new(&rec.device).exists() {
            return Ok(false);
        }
        if rec.is_block() {
            return Ok(true);
        }
        let table = mount::mounts()?;
        Ok(mount::find_mount(&table, &rec.staging_path)?.is_some_and(|m| m.source == rec.device))
    }

    /// NodeUnstageVolume's work (blocking).
    fn unstage(&self, volume_id: &str, staging: &Path) -> Result<(), Status> {
        let path = match self.records.load(volume_id)? {
            Some(rec) => rec.staging_path,
            None => staging.to_path_buf(),
        };
        unmount_all(&path)?;
        if path != staging {
            unmount_all(staging)?;
        }
        self.records.remove(volume_id)?;
        Ok(())
    }

    fn record_of(&self, volume_id: &str) -> Result<StageRecord, Status> {
        self.records
            .load(volume_id)?
            .ok_or_else(|| Status::not_found(format!("volume {volume_id:?} is not staged on this node")))
    }
}

/// Unmounts everything stacked at `path` (each unmount escalated and
/// bounded as csi-core's `unmount`); the directory stays (the CO owns it).
fn unmount_all(path: &Path) -> Result<(), Status> {
    for _ in 0..16 {
        if !mount::is_mount_point(path)? {
            return Ok(());
        }
        mount::unmount(path, UNMOUNT_TIMEOUT)?;
    }
    Err(Status::failed_precondition(format!("{} still mounted after 16 unmounts", path.display())))
}

/// The service behind an `Arc`, so that blocking work can own it.
#[derive(Clone, Debug)]
pub struct Node(Arc<NodeService>);

/// `--state-dir`'s default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/csi-cloud";

/// The node's own command-line flags (csi-core's `ExtraFlag`s), for main.rs.
pub const FLAGS: &[csi_core::flags::ExtraFlag] = &[
    csi_core::flags::ExtraFlag {
        name: "state-dir",
        default: Some(DEFAULT_STATE_DIR),
        help: "where the node keeps its stage records",
    },
    csi_core::flags::ExtraFlag {
        name: "device-wait",
        default: Some("10"),
        help: "seconds NodeStageVolume waits for an attached volume's device to appear",
    },
    csi_core::flags::ExtraFlag {
        name: "volume-attach-limit",
        default: Some("-1"),
        help: "NodeGetInfo's max_volumes_per_node (negative: from the instance type)",
    },
    csi_core::flags::ExtraFlag {
        name: "reserved-volume-attachments",
        default: Some("-1"),
        help: "attachments kept for volumes the driver does not manage (negative: the launch-time block device mappings + 1)",
    },
];

impl Node {
    /// The node service for `cfg`.
    pub fn new(cfg: NodeConfig) -> Node {
        Node(Arc::new(NodeService::new(cfg)))
    }

    /// The node service for the command line: its flags ([`FLAGS`]) read,
    /// its identity, zone and limit found ([`info::resolve`]; EC2 is asked
    /// through `ec2` only for what the metadata and environment do not say).
    pub async fn start(flags: &csi_core::flags::Flags, ec2: Option<&aws_sdk_ec2::Client>) -> crate::Result<Node> {
        let num = |name: &str, default: &str| -> crate::Result<i64> {
            let v = flags.extra(name).unwrap_or(default);
            v.parse::<i64>().map_err(|_| csi_core::Error::Usage(format!("--{name}: {v:?} is not a number")).into())
        };
        let wait = num("device-wait", "10")?;
        if wait < 0 {
            return Err(csi_core::Error::Usage("--device-wait: not negative".into()).into());
        }
        let id = info::InfoFlags {
            node_id: flags.node_id.clone(),
            attach_limit: num("volume-attach-limit", "-1")?,
            reserved: num("reserved-volume-attachments", "-1")?,
        };
        let found = info::resolve(&id, ec2).await?;
        Ok(Node::new(NodeConfig {
            node_id: found.node_id,
            zone: found.zone,
            max_volumes: found.max_volumes,
            state_dir: PathBuf::from(flags.extra("state-dir").unwrap_or(DEFAULT_STATE_DIR)),
            device_wait: Duration::from_secs(wait as u64),
        }))
    }
}

#[tonic::async_trait]
impl pb::node_server::Node for Node {
    async fn node_stage_volume(
        &self,
        req: Request<pb::NodeStageVolumeRequest>,
    ) -> Result<Response<pb::NodeStageVolumeResponse>, Status> {
        let r = self.0.stage_request(req.get_ref())?;
        let _guard = self.0.in_flight.lock(&r.volume_id)?;
        let svc = Arc::clone(&self.0);
        let started = Instant::now();
        let volume = r.volume_id.clone();
        blocking(move || svc.stage(r)).await?;
        tracing::info!(%volume, ms = started.elapsed().as_millis() as u64, "staged");
        Ok(Response::new(pb::NodeStageVolumeResponse {}))
    }

    async fn node_unstage_volume(
        &self,
        req: Request<pb::NodeUnstageVolumeRequest>,
    ) -> Result<Response<pb::NodeUnstageVolumeResponse>, Status> {
        let req = req.into_inner();
        validate::require_volume_id(&req.volume_id)?;
        validate::require_staging_path(&req.staging_target_path)?;
        device::nvme_serial(&req.volume_id)?;
        let staging = mount::normalize(Path::new(&req.staging_target_path))?;
        let _guard = self.0.in_flight.lock(&req.volume_id)?;
        let svc = Arc::clone(&self.0);
        blocking(move || svc.unstage(&req.volume_id, &staging)).await?;
        Ok(Response::new(pb::NodeUnstageVolumeResponse {}))
    }

    async fn node_publish_volume(
        &self,
        req: Request<pb::NodePublishVolumeRequest>,
    ) -> Result<Response<pb::NodePublishVolumeResponse>, Status> {
        let req = req.into_inner();
        let (target, how) = blocknode::check_publish(&req, &SUPPORT)?;
        let _guard = self.0.in_flight.lock(&req.volume_id)?;
        let rec = self.0.record_of(&req.volume_id)?;
        blocking(move || blocknode::publish(&rec.staged(), &target, how, MOUNT_TIMEOUT)).await?;
        Ok(Response::new(pb::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<pb::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<pb::NodeUnpublishVolumeResponse>, Status> {
        csi_core::node::unpublish(&self.0.in_flight, req.into_inner(), UNMOUNT_TIMEOUT).await
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<pb::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<pb::NodeGetVolumeStatsResponse>, Status> {
        let req = req.into_inner();
        let path = blocknode::check_stats(&req)?;
        device::nvme_serial(&req.volume_id)?;
        let rec = self.0.record_of(&req.volume_id)?;
        Ok(Response::new(blocking(move || blocknode::stats(&rec.staged(), &path, STATS_TIMEOUT)).await?))
    }

    async fn node_expand_volume(
        &self,
        req: Request<pb::NodeExpandVolumeRequest>,
    ) -> Result<Response<pb::NodeExpandVolumeResponse>, Status> {
        let req = req.into_inner();
        let required = blocknode::check_expand(&req)?;
        device::nvme_serial(&req.volume_id)?;
        let _guard = self.0.in_flight.lock(&req.volume_id)?;
        let rec = self.0.record_of(&req.volume_id)?;
        let path = PathBuf::from(req.volume_path);
        // The guest learns a new EBS size on its own (NVMe namespace change).
        let size = blocking(move || blocknode::expand(&rec.staged(), &path, required, RESIZE_WAIT)).await?;
        Ok(Response::new(pb::NodeExpandVolumeResponse { capacity_bytes: size as i64 }))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<pb::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<pb::NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(pb::NodeGetCapabilitiesResponse {
            capabilities: csi_core::caps::node([
                NodeCap::StageUnstageVolume,
                NodeCap::ExpandVolume,
                NodeCap::GetVolumeStats,
                NodeCap::VolumeCondition,
                NodeCap::SingleNodeMultiWriter,
            ]),
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<pb::NodeGetInfoRequest>,
    ) -> Result<Response<pb::NodeGetInfoResponse>, Status> {
        let cfg = &self.0.cfg;
        let accessible_topology = (!cfg.zone.is_empty()).then(|| pb::Topology {
            segments: [
                (crate::ZONE_KEY.to_string(), cfg.zone.clone()),
                (crate::ZONE_KEY_DRIVER.to_string(), cfg.zone.clone()),
            ]
            .into_iter()
            .collect(),
        });
        Ok(Response::new(pb::NodeGetInfoResponse {
            node_id: cfg.node_id.clone(),
            max_volumes_per_node: cfg.max_volumes,
            accessible_topology,
        }))
    }
}
