//! The Controller service: EBS volumes, attachments, snapshots, resizing
//! and modification through the EC2 API.
//!
//! EC2 is the only state: a volume is found again by its `CSIVolumeName`
//! tag, a snapshot by `CSIVolumeSnapshotName`, so a retry, a restarted
//! controller or a second replica answers from what EC2 holds. Before
//! creating, CreateVolume looks the name up; the `ClientToken` derived from
//! the name covers the window in which a volume exists but a lookup does not
//! see it yet (EC2's describe calls are eventually consistent).
//!
//! Every call takes an async lock on its volume (or name), so concurrent
//! calls for one volume run in turn and find each other's result. Waits on
//! EC2 (a volume becoming available, an attachment attached or gone) poll
//! with backoff from [`POLL_FIRST`] to [`POLL_MAX`], bounded by
//! [`WAIT_TIMEOUT`]; past it the call is DEADLINE_EXCEEDED and the CO's
//! retry resumes the wait.

pub mod devices;

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use aws_sdk_ec2::types::{
    Filter, Instance, InstanceStateName, ResourceType, Snapshot, SnapshotState, Tag, TagSpecification, Volume,
    VolumeAttachmentState, VolumeState, VolumeType,
};
use csi_core::locks::Locks;
use csi_core::paging::page;
use csi_core::pb::{self, controller_service_capability as csc, volume_capability::access_mode::Mode as AccessMode};
use csi_core::validate::{self, CapabilitySupport};
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use crate::aws::{classify, Clients};
use crate::error::{AwsClass, Error, Result};
use crate::params::{self, CreateParams, ModifyParams};
use crate::{Config, TAG_CLUSTER_SUFFIX, TAG_SNAPSHOT_NAME, TAG_VOLUME_NAME, ZONE_KEY, ZONE_KEY_DRIVER};

/// Single-node access modes: an EBS volume is attached to one instance.
pub const MODES: &[AccessMode] = &[
    AccessMode::SingleNodeWriter,
    AccessMode::SingleNodeReaderOnly,
    AccessMode::SingleNodeSingleWriter,
    AccessMode::SingleNodeMultiWriter,
];

/// Filesystem and raw block volumes, single-node modes.
pub const SUPPORT: CapabilitySupport = CapabilitySupport { block: true, modes: MODES };

/// First pause between two polls of EC2.
pub const POLL_FIRST: Duration = Duration::from_millis(250);
/// Longest pause between two polls.
pub const POLL_MAX: Duration = Duration::from_secs(4);
/// Bound on one wait for EC2 (creation, attach, detach, modification).
pub const WAIT_TIMEOUT: Duration = Duration::from_secs(120);

/// Size of a volume when the request gives no capacity range.
pub const DEFAULT_GIB: u64 = 100;

const GIB: u64 = 1 << 30;

/// Attempts at a device name when EC2 says the name is taken.
const ATTACH_NAME_TRIES: usize = 4;

/// Client tokens tried for one CSI name: a token whose volume was deleted
/// moves CreateVolume on to the next (EC2 remembers a token for about 24 h).
const TOKEN_TRIES: u32 = 8;

/// EBS attachments an instance takes when EC2 does not say (Nitro's 28
/// shared slots, less the primary network interface).
pub const DEFAULT_ATTACH_LIMIT: usize = 27;

/// csi-cloud's Controller service.
#[derive(Debug)]
pub struct ControllerService {
    clients: Clients,
    config: Config,
    locks: Locks,
    devices: devices::Allocator,
    default_zone: tokio::sync::OnceCell<String>,
    /// Instance type → its `MaximumEbsAttachments`, as EC2 answered (a
    /// type's limit never changes): one DescribeInstanceTypes per type.
    attach_limits: std::sync::Mutex<std::collections::HashMap<String, usize>>,
}

/// One poll's verdict.
enum Poll<T> {
    Done(T),
    Wait(String),
}

impl ControllerService {
    /// A controller working through `clients`.
    pub fn new(clients: Clients, config: Config) -> ControllerService {
        ControllerService {
            clients,
            config,
            locks: Locks::default(),
            devices: devices::Allocator::default(),
            default_zone: tokio::sync::OnceCell::new(),
            attach_limits: Default::default(),
        }
    }

    fn cluster_tag(&self) -> String {
        format!("{}{TAG_CLUSTER_SUFFIX}", self.config.driver_name)
    }

    /// The zone for a volume whose request names none: `--default-zone`,
    /// else `AWS_AVAILABILITY_ZONE`, else the region's first available zone
    /// by name (asked once).
    async fn default_zone(&self) -> Result<String> {
        if let Some(z) = &self.config.default_zone {
            return Ok(z.clone());
        }
        if let Some(z) = std::env::var("AWS_AVAILABILITY_ZONE").ok().filter(|z| !z.is_empty()) {
            return Ok(z);
        }
        self.default_zone
            .get_or_try_init(|| async {
                let out = self
                    .clients
                    .ec2
                    .describe_availability_zones()
                    .filters(Filter::builder().name("state").values("available").build())
                    .send()
                    .await
                    .map_err(|e| classify(format!("list the zones of {}", self.clients.region), e))?;
                let mut zones: Vec<&str> = out.availability_zones().iter().filter_map(|z| z.zone_name()).collect();
                zones.sort_unstable();
                zones.first().map(|z| z.to_string()).ok_or_else(|| {
                    Error::Config(format!("region {} has no available zone; set --default-zone", self.clients.region))
                })
            })
            .await
            .cloned()
    }

    /// Polls `f` with backoff until it is done, for at most [`WAIT_TIMEOUT`].
    async fn wait<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<Poll<T>>>,
    {
        let start = tokio::time::Instant::now();
        let mut pause = POLL_FIRST;
        loop {
            let why = match f().await? {
                Poll::Done(t) => return Ok(t),
                Poll::Wait(why) => why,
            };
            if start.elapsed() + pause > WAIT_TIMEOUT {
                return Err(csi_core::Error::Timeout { what: format!("{what} ({why})"), after: WAIT_TIMEOUT }.into());
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(POLL_MAX);
        }
    }

    /// The volume, or `None` when EC2 does not know it (or its ID is malformed).
    async fn volume(&self, id: &str) -> Result<Option<Volume>> {
        match self.clients.ec2.describe_volumes().volume_ids(id).send().await {
            Ok(out) => Ok(out.volumes().iter().find(|v| v.volume_id() == Some(id)).cloned()),
            Err(e) => match classify(format!("describe volume {id}"), e) {
                e if e.is_aws(AwsClass::NotFound) => Ok(None),
                e => Err(e),
            },
        }
    }

    /// The volume, or NOT_FOUND naming it.
    async fn existing_volume(&self, id: &str) -> Result<Volume> {
        self.volume(id).await?.ok_or_else(|| validate::volume_not_found(id).into())
    }

    /// Every volume matching `filters`, across EC2's pages.
    async fn volumes(&self, filters: Vec<Filter>, what: &str) -> Result<Vec<Volume>> {
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = self
                .clients
                .ec2
                .describe_volumes()
                .set_filters(Some(filters.clone()))
                .set_next_token(token.take())
                .send()
                .await
                .map_err(|e| classify(what.to_string(), e))?;
            all.extend(out.volumes().iter().cloned());
            match out.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(all),
            }
        }
    }

    /// The live volume carrying CSI name `name`, if any.
    async fn volume_named(&self, name: &str) -> Result<Option<Volume>> {
        let filters = vec![Filter::builder().name(format!("tag:{TAG_VOLUME_NAME}")).values(name).build()];
        let found = self.volumes(filters, &format!("look up volume {name:?} by its {TAG_VOLUME_NAME} tag")).await?;
        let mut live: Vec<Volume> = found
            .into_iter()
            .filter(|v| !matches!(v.state(), Some(VolumeState::Deleting | VolumeState::Deleted | VolumeState::Error)))
            .collect();
        // Two live volumes for one name cannot come from this driver; the
        // oldest is the one a CO may already use.
        live.sort_by_key(|v| v.create_time().map(|t| (t.secs(), t.subsec_nanos())));
        Ok(live.into_iter().next())
    }

    /// The instance, or NOT_FOUND naming it.
    async fn instance(&self, id: &str) -> Result<Instance> {
        let out = self
            .clients
            .ec2
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .map_err(|e| classify(format!("describe instance {id}"), e))?;
        out.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .find(|i| i.instance_id() == Some(id))
            .cloned()
            .ok_or_else(|| csi_core::Error::NotFound(format!("instance {id} not found")).into())
    }

    /// EBS attachments `instance` can take: its type's limit from EC2
    /// (asked once per type), else [`DEFAULT_ATTACH_LIMIT`].
    async fn attach_limit(&self, instance: &Instance) -> usize {
        let Some(t) = instance.instance_type() else { return DEFAULT_ATTACH_LIMIT };
        let known = |m: &std::sync::Mutex<std::collections::HashMap<String, usize>>| {
            m.lock().unwrap_or_else(|p| p.into_inner()).get(t.as_str()).copied()
        };
        if let Some(n) = known(&self.attach_limits) {
            return n;
        }
        match self.clients.ec2.describe_instance_types().instance_types(t.clone()).send().await {
            Ok(out) => {
                let limit = out
                    .instance_types()
                    .first()
                    .and_then(|t| t.ebs_info())
                    .and_then(|e| e.maximum_ebs_attachments())
                    .map(|n| n.max(1) as usize);
                if let Some(n) = limit {
                    self.attach_limits.lock().unwrap_or_else(|p| p.into_inner()).insert(t.as_str().to_string(), n);
                }
                limit.unwrap_or(DEFAULT_ATTACH_LIMIT)
            }
            Err(e) => {
                warn!(instance_type = t.as_str(), error = %classify("describe instance type", e), "using the default attach limit");
                DEFAULT_ATTACH_LIMIT
            }
        }
    }

    async fn create(&self, req: pb::CreateVolumeRequest) -> Result<pb::CreateVolumeResponse> {
        validate::require_name(&req.name)?;
        validate::require_capabilities(&req.volume_capabilities, &SUPPORT)?;
        let range = validate::capacity_range(req.capacity_range.as_ref())?;
        let p = CreateParams::parse_with_mutable(&req.parameters, &req.mutable_parameters)?;
        let snapshot_id = match req.volume_content_source.as_ref().and_then(|s| s.r#type.as_ref()) {
            None => None,
            Some(pb::volume_content_source::Type::Snapshot(s)) => Some(s.snapshot_id.clone()),
            Some(pb::volume_content_source::Type::Volume(_)) => {
                return Err(csi_core::Error::InvalidArgument(
                    "volume content source: cloning a volume is not supported (create from a snapshot)".into(),
                )
                .into())
            }
        };
        let zones = requested_zones(req.accessibility_requirements.as_ref());
        let _lock = self.locks.lock("volume", &req.name).await;

        if let Some(v) = self.volume_named(&req.name).await? {
            let id = v.volume_id().unwrap_or_default().to_string();
            check_same(&req.name, &v, &p, &range, snapshot_id.as_deref(), &zones)?;
            let v = self.wait_created(&id).await?.ok_or_else(|| validate::volume_not_found(&id))?;
            info!(name = %req.name, volume = %id, "volume exists");
            return Ok(pb::CreateVolumeResponse { volume: Some(csi_volume(&v)) });
        }

        let mut gib = round_up_gib(range.pick(DEFAULT_GIB * GIB, params::min_gib(&p.volume_type) * GIB)?);
        if let Some(snap) = &snapshot_id {
            let s = self.snapshot(snap).await?.ok_or_else(|| {
                csi_core::Error::NotFound(format!("volume content source: snapshot {snap} not found"))
            })?;
            let snap_gib = s.volume_size().unwrap_or(0).max(0) as u64;
            if snap_gib > gib {
                if range.limit.is_some_and(|l| snap_gib * GIB > l) {
                    return Err(validate::out_of_range(format!(
                        "snapshot {snap} is {snap_gib} GiB, more than the limit {range}"
                    ))
                    .into());
                }
                gib = snap_gib;
            }
        }
        if gib > params::max_gib(&p.volume_type) {
            return Err(validate::out_of_range(format!(
                "{gib} GiB: {} volumes are at most {} GiB",
                p.volume_type,
                params::max_gib(&p.volume_type)
            ))
            .into());
        }
        if range.limit.is_some_and(|l| gib * GIB > l) {
            return Err(validate::out_of_range(format!(
                "{gib} GiB (EBS sizes are whole GiB) exceeds the limit {range}"
            ))
            .into());
        }
        let zone = match zones.first() {
            Some(z) => z.clone(),
            None => self.default_zone().await?,
        };
        let iops = p.iops_for(gib)?;
        let mut tags = vec![(TAG_VOLUME_NAME.to_string(), req.name.clone()), (self.cluster_tag(), "true".to_string())];
        for (k, v) in [
            ("kubernetes.io/created-for/pvc/name", &p.pvc_name),
            ("kubernetes.io/created-for/pvc/namespace", &p.pvc_namespace),
            ("kubernetes.io/created-for/pv/name", &p.pv_name),
        ] {
            if let Some(v) = v {
                tags.push((k.to_string(), v.clone()));
            }
        }
        tags.extend(self.config.extra_tags.iter().cloned());
        tags.extend(p.tags.iter().cloned());

        for attempt in 0..TOKEN_TRIES {
            let token = client_token(&req.name, attempt);
            let what = format!("create volume {:?} ({gib} GiB {} in {zone})", req.name, p.volume_type);
            let sent = self
                .clients
                .ec2
                .create_volume()
                .availability_zone(&zone)
                .size(gib as i32)
                .volume_type(VolumeType::from(p.volume_type.as_str()))
                .set_iops(iops.map(|i| i as i32))
                .set_throughput(p.throughput)
                .encrypted(p.encrypted)
                .set_kms_key_id(p.kms_key_id.clone())
                .set_snapshot_id(snapshot_id.clone())
                .client_token(&token)
                .tag_specifications(tag_spec(ResourceType::Volume, &tags))
                .send()
                .await;
            let id = match sent {
                Ok(out) => out.volume_id().unwrap_or_default().to_string(),
                Err(e) => match classify(what, e) {
                    // The token was used for other parameters: by a volume
                    // of this name that was deleted since (no lookup found it).
                    e if e.is_aws(AwsClass::Conflict) => {
                        warn!(name = %req.name, attempt, "client token already used; trying the next");
                        continue;
                    }
                    e => return Err(e),
                },
            };
            // EC2 answers a known token with that token's volume, which may
            // be one of this name deleted since: then the next token.
            let Some(v) = self.wait_created(&id).await? else {
                warn!(name = %req.name, volume = %id, attempt, "client token names a deleted volume; trying the next");
                continue;
            };
            info!(name = %req.name, volume = %id, zone = %zone, gib, "volume created");
            return Ok(pb::CreateVolumeResponse { volume: Some(csi_volume(&v)) });
        }
        Err(csi_core::Error::Internal(format!(
            "create volume {:?}: {TOKEN_TRIES} client tokens all name deleted volumes",
            req.name
        ))
        .into())
    }

    /// Waits until a new volume is available; one that fails (an unusable
    /// KMS key, no capacity) is deleted and the call fails. `None`: the
    /// volume is gone or being deleted (a client token of a deleted volume).
    async fn wait_created(&self, id: &str) -> Result<Option<Volume>> {
        let what = format!("volume {id} becoming available");
        let v = self
            .wait(&what, || async {
                Ok(match self.volume(id).await? {
                    None => Poll::Done(None),
                    Some(v) if matches!(v.state(), Some(VolumeState::Deleting | VolumeState::Deleted)) => {
                        Poll::Done(None)
                    }
                    Some(v) if v.state() == Some(&VolumeState::Creating) => Poll::Wait("creating".into()),
                    Some(v) => Poll::Done(Some(v)),
                })
            })
            .await?;
        let Some(v) = v else { return Ok(None) };
        if v.state() == Some(&VolumeState::Error) {
            let _ = self.clients.ec2.delete_volume().volume_id(id).send().await;
            return Err(csi_core::Error::ResourceExhausted(format!(
                "volume {id} failed to create (state error: check the KMS key and the zone's capacity); deleted it"
            ))
            .into());
        }
        Ok(Some(v))
    }

    async fn delete(&self, req: pb::DeleteVolumeRequest) -> Result<()> {
        validate::require_volume_id(&req.volume_id)?;
        let id = req.volume_id;
        let _lock = self.locks.lock("volume", &id).await;
        match self.clients.ec2.delete_volume().volume_id(&id).send().await {
            Ok(_) => {
                info!(volume = %id, "volume deleted");
                Ok(())
            }
            Err(e) => match classify(format!("delete volume {id}"), e) {
                e if e.is_aws(AwsClass::NotFound) => Ok(()),
                e if e.aws_code() == Some("VolumeInUse") => {
                    let on = match self.volume(&id).await {
                        Ok(Some(v)) => attached_instances(&v).join(", "),
                        _ => String::new(),
                    };
                    Err(csi_core::Error::FailedPrecondition(format!(
                        "delete volume {id}: still attached to instance {on}; unpublish it first"
                    ))
                    .into())
                }
                e => Err(e),
            },
        }
    }

    async fn publish(&self, req: pb::ControllerPublishVolumeRequest) -> Result<pb::ControllerPublishVolumeResponse> {
        validate::require_volume_id(&req.volume_id)?;
        validate::require_node_id(&req.node_id)?;
        validate::require_capability(req.volume_capability.as_ref(), &SUPPORT)?;
        let (vol, node) = (req.volume_id.as_str(), req.node_id.as_str());
        let _lock = self.locks.lock("volume", vol).await;
        let v = self.existing_volume(vol).await?;
        let instance = self.instance(node).await?;
        // Real EBS refuses a second attachment of a single-attach volume;
        // moto accepts it and moves the volume. Checked here for both.
        if let Some(a) = v.attachments().iter().find(|a| a.instance_id() != Some(node) && is_live(a.state())) {
            return Err(csi_core::Error::FailedPrecondition(format!(
                "volume {vol} is attached to instance {} ({}); unpublish it there first",
                a.instance_id().unwrap_or("?"),
                a.state().map(|s| s.as_str()).unwrap_or("?")
            ))
            .into());
        }
        let zone = v.availability_zone().unwrap_or_default();
        let node_zone = instance.placement().and_then(|p| p.availability_zone()).unwrap_or_default();
        if !zone.is_empty() && !node_zone.is_empty() && zone != node_zone {
            return Err(csi_core::Error::FailedPrecondition(format!(
                "volume {vol} is in {zone}, instance {node} in {node_zone}: EBS attaches within a zone"
            ))
            .into());
        }
        if let Some(a) = v.attachments().iter().find(|a| a.instance_id() == Some(node) && is_live(a.state())) {
            // Already attached (or attaching) here: a retry.
            let device = a.device().unwrap_or_default().to_string();
            let device = self.wait_attached(vol, node, device).await?;
            return Ok(publish_response(device));
        }
        let in_use: HashSet<String> =
            instance.block_device_mappings().iter().filter_map(|m| m.device_name()).map(str::to_string).collect();
        let limit = self.attach_limit(&instance).await;
        if in_use.len() >= limit {
            return Err(csi_core::Error::ResourceExhausted(format!(
                "attach volume {vol} to instance {node}: it has {} of its {limit} EBS attachments in use",
                in_use.len()
            ))
            .into());
        }
        let mut taken = in_use;
        for _ in 0..ATTACH_NAME_TRIES {
            let device = self.devices.pick(node, &taken).ok_or_else(|| {
                csi_core::Error::ResourceExhausted(format!(
                    "attach volume {vol} to instance {node}: no free device name in {}…{}",
                    devices::candidates().next().unwrap_or_default(),
                    devices::candidates().last().unwrap_or_default()
                ))
            })?;
            let what = format!("attach volume {vol} to instance {node} as {device}");
            match self.clients.ec2.attach_volume().volume_id(vol).instance_id(node).device(&device).send().await {
                Ok(_) => {
                    info!(volume = %vol, instance = %node, %device, "attaching");
                    let device = self.wait_attached(vol, node, device).await?;
                    return Ok(publish_response(device));
                }
                Err(e) => match classify(what, e) {
                    // The name was taken meanwhile (by an attach this
                    // controller did not see): rest it, take another.
                    e if e.aws_code() == Some("InvalidDevice.InUse")
                        || (e.aws_code() == Some("InvalidParameterValue") && e.to_string().contains("in use")) =>
                    {
                        self.devices.release(node, &device);
                        taken.insert(device);
                    }
                    e if e.aws_code() == Some("VolumeInUse") => {
                        return Err(csi_core::Error::FailedPrecondition(format!(
                            "{e}; volume {vol} is attached to another instance"
                        ))
                        .into())
                    }
                    e => return Err(e),
                },
            }
        }
        Err(csi_core::Error::Unavailable(format!(
            "attach volume {vol} to instance {node}: {ATTACH_NAME_TRIES} device names were taken meanwhile"
        ))
        .into())
    }

    /// Waits until `vol` is attached to `node`; returns the device name.
    async fn wait_attached(&self, vol: &str, node: &str, device: String) -> Result<String> {
        let what = format!("attach volume {vol} to instance {node} as {device}");
        self.wait(&what, || async {
            let v = self.existing_volume(vol).await?;
            let Some(a) = v.attachments().iter().find(|a| a.instance_id() == Some(node)) else {
                return Err(csi_core::Error::Unavailable(format!(
                    "{what}: the attachment vanished (detached meanwhile, or EC2 refused it)"
                ))
                .into());
            };
            Ok(match a.state() {
                Some(VolumeAttachmentState::Attached) => Poll::Done(a.device().unwrap_or(&device).to_string()),
                s => Poll::Wait(s.map(|s| s.as_str().to_string()).unwrap_or_default()),
            })
        })
        .await
    }

    async fn unpublish(&self, req: pb::ControllerUnpublishVolumeRequest) -> Result<()> {
        validate::require_volume_id(&req.volume_id)?;
        let (vol, node) = (req.volume_id.as_str(), req.node_id.as_str());
        let _lock = self.locks.lock("volume", vol).await;
        let Some(v) = self.volume(vol).await? else { return Ok(()) };
        // No node ID: detach from wherever it is (the spec's "all nodes").
        let targets: Vec<(String, String)> = v
            .attachments()
            .iter()
            .filter(|a| node.is_empty() || a.instance_id() == Some(node))
            .filter(|a| a.state() != Some(&VolumeAttachmentState::Detached))
            .map(|a| (a.instance_id().unwrap_or_default().to_string(), a.device().unwrap_or_default().to_string()))
            .collect();
        for (instance, device) in targets {
            self.detach(vol, &instance, &device).await?;
        }
        Ok(())
    }

    /// Detaches `vol` from `instance` and waits until the attachment is gone.
    /// The detach is forced when EC2 reports the instance dead (stopping,
    /// stopped, shutting down, terminated or gone): nothing can flush or
    /// unmount there, and a plain detach of a dead instance's volume can wait
    /// for minutes.
    async fn detach(&self, vol: &str, instance: &str, device: &str) -> Result<()> {
        let dead = match self.instance(instance).await {
            Ok(i) => matches!(
                i.state().and_then(|s| s.name()),
                Some(
                    InstanceStateName::Stopping
                        | InstanceStateName::Stopped
                        | InstanceStateName::ShuttingDown
                        | InstanceStateName::Terminated
                )
            ),
            Err(e) if e.code() == tonic::Code::NotFound => true,
            Err(e) => return Err(e),
        };
        let what = format!(
            "detach volume {vol} from instance {instance}{}",
            if dead { " (forced: instance dead)" } else { "" }
        );
        match self.clients.ec2.detach_volume().volume_id(vol).instance_id(instance).force(dead).send().await {
            Ok(_) => info!(volume = %vol, %instance, forced = dead, "detaching"),
            Err(e) => match classify(what.clone(), e) {
                // Detached meanwhile, or the instance or volume is gone.
                e if e.is_aws(AwsClass::NotFound) => {}
                // Already detaching: wait for it below.
                e if e.aws_code() == Some("IncorrectState") => {}
                e => return Err(e),
            },
        }
        self.wait(&what, || async {
            let Some(v) = self.volume(vol).await? else { return Ok(Poll::Done(())) };
            Ok(match v.attachments().iter().find(|a| a.instance_id() == Some(instance)) {
                None => Poll::Done(()),
                Some(a) if a.state() == Some(&VolumeAttachmentState::Detached) => Poll::Done(()),
                Some(a) => Poll::Wait(a.state().map(|s| s.as_str().to_string()).unwrap_or_default()),
            })
        })
        .await?;
        if !device.is_empty() {
            self.devices.release(instance, device);
        }
        if dead {
            self.devices.forget(instance);
        }
        info!(volume = %vol, %instance, "detached");
        Ok(())
    }

    async fn list_volumes_page(&self, req: pb::ListVolumesRequest) -> Result<pb::ListVolumesResponse> {
        let filters = vec![Filter::builder().name(format!("tag:{}", self.cluster_tag())).values("true").build()];
        let mut all: Vec<Volume> = self
            .volumes(filters, "list the driver's volumes")
            .await?
            .into_iter()
            .filter(|v| !matches!(v.state(), Some(VolumeState::Deleting | VolumeState::Deleted)))
            .collect();
        all.sort_by(|a, b| a.volume_id().cmp(&b.volume_id()));
        let (entries, next_token) =
            page(all, |v| v.volume_id().unwrap_or_default(), req.max_entries, &req.starting_token)?;
        let entries = entries
            .iter()
            .map(|v| pb::list_volumes_response::Entry {
                volume: Some(csi_volume(v)),
                status: Some(pb::list_volumes_response::VolumeStatus {
                    published_node_ids: attached_instances(v),
                    volume_condition: None,
                }),
            })
            .collect();
        Ok(pb::ListVolumesResponse { entries, next_token })
    }

    async fn get_volume(&self, req: pb::ControllerGetVolumeRequest) -> Result<pb::ControllerGetVolumeResponse> {
        validate::require_volume_id(&req.volume_id)?;
        let v = self.existing_volume(&req.volume_id).await?;
        Ok(pb::ControllerGetVolumeResponse {
            volume: Some(csi_volume(&v)),
            status: Some(pb::controller_get_volume_response::VolumeStatus {
                published_node_ids: attached_instances(&v),
                volume_condition: None,
            }),
        })
    }

    /// The snapshot, or `None` when EC2 does not know it.
    async fn snapshot(&self, id: &str) -> Result<Option<Snapshot>> {
        match self.clients.ec2.describe_snapshots().snapshot_ids(id).send().await {
            Ok(out) => Ok(out.snapshots().iter().find(|s| s.snapshot_id() == Some(id)).cloned()),
            Err(e) => match classify(format!("describe snapshot {id}"), e) {
                e if e.is_aws(AwsClass::NotFound) => Ok(None),
                e => Err(e),
            },
        }
    }

    /// Every snapshot of ours matching `filters`, across EC2's pages.
    async fn snapshots(&self, mut filters: Vec<Filter>, ids: Vec<String>) -> Result<Vec<Snapshot>> {
        filters.push(Filter::builder().name(format!("tag:{}", self.cluster_tag())).values("true").build());
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let out = match self
                .clients
                .ec2
                .describe_snapshots()
                .owner_ids("self")
                .set_snapshot_ids(Some(ids.clone()).filter(|i| !i.is_empty()))
                .set_filters(Some(filters.clone()))
                .set_next_token(token.take())
                .send()
                .await
            {
                Ok(out) => out,
                Err(e) => match classify("list the driver's snapshots", e) {
                    e if e.is_aws(AwsClass::NotFound) => return Ok(Vec::new()),
                    e => return Err(e),
                },
            };
            all.extend(out.snapshots().iter().cloned());
            match out.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_string()),
                _ => return Ok(all),
            }
        }
    }

    async fn create_snap(&self, req: pb::CreateSnapshotRequest) -> Result<pb::CreateSnapshotResponse> {
        validate::require_name(&req.name)?;
        if req.source_volume_id.is_empty() {
            return Err(csi_core::Error::InvalidArgument("source_volume_id missing in request".into()).into());
        }
        let mut tags = vec![(TAG_SNAPSHOT_NAME.to_string(), req.name.clone()), (self.cluster_tag(), "true".into())];
        tags.extend(self.config.extra_tags.iter().cloned());
        for (k, v) in &req.parameters {
            match k.to_ascii_lowercase() {
                k if k.starts_with("tagspecification_") => {
                    let (tk, tv) = v.split_once('=').ok_or_else(|| {
                        csi_core::Error::InvalidArgument(format!("parameter {k}={v:?}: expected key=value"))
                    })?;
                    tags.push((tk.trim().to_string(), tv.trim().to_string()));
                }
                k if k.starts_with("csi.storage.k8s.io/") => {}
                _ => {
                    return Err(csi_core::Error::InvalidArgument(format!(
                        "snapshot parameter {k}={v:?}: unknown (tagSpecification_N is known)"
                    ))
                    .into())
                }
            }
        }
        let _lock = self.locks.lock("snapshot", &req.name).await;
        let filters = vec![Filter::builder().name(format!("tag:{TAG_SNAPSHOT_NAME}")).values(&req.name).build()];
        let existing = self.snapshots(filters, Vec::new()).await?;
        if let Some(s) = existing.into_iter().find(|s| s.state() != Some(&SnapshotState::Error)) {
            if s.volume_id() != Some(req.source_volume_id.as_str()) {
                return Err(validate::already_exists(
                    "snapshot",
                    &req.name,
                    &format!("it is {} of volume {}", s.snapshot_id().unwrap_or("?"), s.volume_id().unwrap_or("?")),
                )
                .into());
            }
            return Ok(pb::CreateSnapshotResponse { snapshot: Some(csi_snapshot(&s)) });
        }
        let vol = req.source_volume_id.as_str();
        if self.volume(vol).await?.is_none() {
            return Err(
                csi_core::Error::NotFound(format!("snapshot {:?}: source volume {vol} not found", req.name)).into()
            );
        }
        let out = self
            .clients
            .ec2
            .create_snapshot()
            .volume_id(vol)
            .description(format!("{} snapshot {}", self.config.driver_name, req.name))
            .tag_specifications(tag_spec(ResourceType::Snapshot, &tags))
            .send()
            .await
            .map_err(|e| classify(format!("create snapshot {:?} of volume {vol}", req.name), e))?;
        let s = Snapshot::builder()
            .set_snapshot_id(out.snapshot_id().map(str::to_string))
            .volume_id(vol)
            .set_volume_size(out.volume_size())
            .set_state(out.state().cloned())
            .set_start_time(out.start_time().cloned())
            .build();
        info!(name = %req.name, snapshot = s.snapshot_id().unwrap_or(""), volume = %vol, "snapshot created");
        Ok(pb::CreateSnapshotResponse { snapshot: Some(csi_snapshot(&s)) })
    }

    async fn delete_snap(&self, req: pb::DeleteSnapshotRequest) -> Result<()> {
        validate::require_snapshot_id(&req.snapshot_id)?;
        let id = req.snapshot_id;
        let _lock = self.locks.lock("snapshot-id", &id).await;
        match self.clients.ec2.delete_snapshot().snapshot_id(&id).send().await {
            Ok(_) => {
                info!(snapshot = %id, "snapshot deleted");
                Ok(())
            }
            Err(e) => match classify(format!("delete snapshot {id}"), e) {
                e if e.is_aws(AwsClass::NotFound) => Ok(()),
                e => Err(e),
            },
        }
    }

    async fn list_snaps(&self, req: pb::ListSnapshotsRequest) -> Result<pb::ListSnapshotsResponse> {
        let mut filters = Vec::new();
        if !req.source_volume_id.is_empty() {
            filters.push(Filter::builder().name("volume-id").values(&req.source_volume_id).build());
        }
        let ids = if req.snapshot_id.is_empty() { Vec::new() } else { vec![req.snapshot_id.clone()] };
        let mut all: Vec<Snapshot> = self
            .snapshots(filters, ids)
            .await?
            .into_iter()
            // EC2 filters these; moto may not, so both are checked here too.
            .filter(|s| req.snapshot_id.is_empty() || s.snapshot_id() == Some(req.snapshot_id.as_str()))
            .filter(|s| req.source_volume_id.is_empty() || s.volume_id() == Some(req.source_volume_id.as_str()))
            .collect();
        all.sort_by(|a, b| a.snapshot_id().cmp(&b.snapshot_id()));
        let (entries, next_token) =
            page(all, |s| s.snapshot_id().unwrap_or_default(), req.max_entries, &req.starting_token)?;
        let entries =
            entries.iter().map(|s| pb::list_snapshots_response::Entry { snapshot: Some(csi_snapshot(s)) }).collect();
        Ok(pb::ListSnapshotsResponse { entries, next_token })
    }

    async fn expand(&self, req: pb::ControllerExpandVolumeRequest) -> Result<pb::ControllerExpandVolumeResponse> {
        validate::require_volume_id(&req.volume_id)?;
        let range = validate::capacity_range(req.capacity_range.as_ref())?;
        let want = range.required.or(range.limit).ok_or_else(|| {
            csi_core::Error::InvalidArgument("capacity_range: required_bytes or limit_bytes is needed".into())
        })?;
        if let Some(c) = &req.volume_capability {
            validate::check_capability(c, &SUPPORT)?;
        }
        let block = matches!(
            req.volume_capability.as_ref().and_then(|c| c.access_type.as_ref()),
            Some(pb::volume_capability::AccessType::Block(_))
        );
        let vol = req.volume_id.as_str();
        let _lock = self.locks.lock("volume", vol).await;
        let v = self.existing_volume(vol).await?;
        let have = v.size().unwrap_or(0).max(0) as u64;
        let gib = round_up_gib(want);
        if range.limit.is_some_and(|l| gib * GIB > l) {
            return Err(validate::out_of_range(format!("{gib} GiB (whole GiB) exceeds the limit {range}")).into());
        }
        let vtype = v.volume_type().map(|t| t.as_str()).unwrap_or(params::DEFAULT_TYPE);
        if gib > params::max_gib(vtype) {
            return Err(validate::out_of_range(format!(
                "volume {vol}: {gib} GiB, but {vtype} volumes are at most {} GiB",
                params::max_gib(vtype)
            ))
            .into());
        }
        if have < gib {
            self.clients
                .ec2
                .modify_volume()
                .volume_id(vol)
                .size(gib as i32)
                .send()
                .await
                .map_err(|e| classify(format!("resize volume {vol} from {have} to {gib} GiB"), e))?;
            self.wait_modified(vol, &format!("resize volume {vol} to {gib} GiB")).await?;
            info!(volume = %vol, from = have, to = gib, "volume resized");
        }
        Ok(pb::ControllerExpandVolumeResponse {
            capacity_bytes: (gib.max(have) * GIB) as i64,
            node_expansion_required: !block,
        })
    }

    /// Waits until `vol`'s modification is in effect (`optimizing` or
    /// `completed`: the new size and type apply from `optimizing` on).
    async fn wait_modified(&self, vol: &str, what: &str) -> Result<()> {
        use aws_sdk_ec2::types::VolumeModificationState as M;
        self.wait(what, || async {
            let out = match self.clients.ec2.describe_volumes_modifications().volume_ids(vol).send().await {
                Ok(out) => out,
                Err(e) => return Err(classify(format!("{what}: describe the modification"), e)),
            };
            let latest =
                out.volumes_modifications().iter().max_by_key(|m| m.start_time().map(|t| (t.secs(), t.subsec_nanos())));
            Ok(match latest.and_then(|m| m.modification_state()) {
                None | Some(M::Optimizing | M::Completed) => Poll::Done(()),
                Some(M::Failed) => {
                    let why = latest.and_then(|m| m.status_message()).unwrap_or("no reason given");
                    return Err(csi_core::Error::FailedPrecondition(format!("{what}: EC2 failed it: {why}")).into());
                }
                Some(s) => Poll::Wait(s.as_str().to_string()),
            })
        })
        .await
    }

    async fn modify(&self, req: pb::ControllerModifyVolumeRequest) -> Result<()> {
        validate::require_volume_id(&req.volume_id)?;
        let p = ModifyParams::parse(&req.mutable_parameters)?;
        let vol = req.volume_id.as_str();
        let _lock = self.locks.lock("volume", vol).await;
        let v = self.existing_volume(vol).await?;
        let same = p.volume_type.as_deref().is_none_or(|t| v.volume_type().map(|x| x.as_str()) == Some(t))
            && p.iops.is_none_or(|i| v.iops() == Some(i))
            && p.throughput.is_none_or(|t| v.throughput() == Some(t));
        if same {
            return Ok(());
        }
        let what = format!(
            "modify volume {vol} to type {} iops {} throughput {}",
            p.volume_type.as_deref().unwrap_or("(same)"),
            p.iops.map_or("(same)".to_string(), |i| i.to_string()),
            p.throughput.map_or("(same)".to_string(), |t| t.to_string())
        );
        self.clients
            .ec2
            .modify_volume()
            .volume_id(vol)
            .set_volume_type(p.volume_type.as_deref().map(VolumeType::from))
            .set_iops(p.iops)
            .set_throughput(p.throughput)
            .send()
            .await
            .map_err(|e| classify(what.clone(), e))?;
        self.wait_modified(vol, &what).await?;
        info!(volume = %vol, "volume modified");
        Ok(())
    }

    async fn validate_caps(
        &self,
        req: pb::ValidateVolumeCapabilitiesRequest,
    ) -> Result<pb::ValidateVolumeCapabilitiesResponse> {
        validate::require_volume_id(&req.volume_id)?;
        if req.volume_capabilities.is_empty() {
            return Err(csi_core::Error::InvalidArgument("volume capabilities missing in request".into()).into());
        }
        self.existing_volume(&req.volume_id).await?;
        Ok(validate::confirm_capabilities(req, &SUPPORT))
    }
}

/// The zones a request allows, preferred ones first (either zone key).
fn requested_zones(req: Option<&pb::TopologyRequirement>) -> Vec<String> {
    let Some(req) = req else { return Vec::new() };
    let mut zones: Vec<String> = Vec::new();
    for t in req.preferred.iter().chain(&req.requisite) {
        if let Some(z) = t.segments.get(ZONE_KEY).or_else(|| t.segments.get(ZONE_KEY_DRIVER)) {
            if !zones.contains(z) {
                zones.push(z.clone());
            }
        }
    }
    zones
}

/// ALREADY_EXISTS unless the volume `name` already has is what the request asks.
fn check_same(
    name: &str,
    v: &Volume,
    p: &CreateParams,
    range: &validate::Capacity,
    snapshot: Option<&str>,
    zones: &[String],
) -> Result<()> {
    let id = v.volume_id().unwrap_or("?");
    let size = v.size().unwrap_or(0).max(0) as u64 * GIB;
    if range.check(size).is_err() {
        return Err(validate::already_exists("volume", name, &format!("{id} has {size} bytes, not in {range}")).into());
    }
    let vtype = v.volume_type().map(|t| t.as_str()).unwrap_or("");
    if vtype != p.volume_type {
        return Err(validate::already_exists("volume", name, &format!("{id} is {vtype}, not {}", p.volume_type)).into());
    }
    if v.snapshot_id().filter(|s| !s.is_empty()) != snapshot {
        return Err(validate::already_exists("volume", name, &format!("{id} has another content source")).into());
    }
    let zone = v.availability_zone().unwrap_or_default();
    if !zones.is_empty() && !zones.iter().any(|z| z == zone) {
        return Err(validate::already_exists(
            "volume",
            name,
            &format!("{id} is in {zone}, outside the topology asked"),
        )
        .into());
    }
    Ok(())
}

/// CreateVolume's ClientToken for `name`: EC2 allows 64 ASCII characters, a
/// CSI name has up to 128 bytes, so a hash; `attempt` > 0 when the earlier
/// tokens name deleted volumes.
pub fn client_token(name: &str, attempt: u32) -> String {
    use sha2::Digest;
    let mut h = sha2::Sha256::new();
    h.update(name.as_bytes());
    if attempt > 0 {
        h.update(format!("\0{attempt}").as_bytes());
    }
    h.finalize().iter().map(|b| format!("{b:02x}")).collect()
}

fn round_up_gib(bytes: u64) -> u64 {
    bytes.div_ceil(GIB).max(1)
}

fn tag_spec(kind: ResourceType, tags: &[(String, String)]) -> TagSpecification {
    let mut b = TagSpecification::builder().resource_type(kind);
    for (k, v) in tags {
        b = b.tags(Tag::builder().key(k).value(v).build());
    }
    b.build()
}

fn is_live(s: Option<&VolumeAttachmentState>) -> bool {
    !matches!(s, Some(VolumeAttachmentState::Detached) | None)
}

/// Instances `v` is attached to (attaching and detaching count: the CO must
/// not publish it elsewhere yet).
fn attached_instances(v: &Volume) -> Vec<String> {
    v.attachments().iter().filter(|a| is_live(a.state())).filter_map(|a| a.instance_id()).map(str::to_string).collect()
}

fn publish_response(device: String) -> pb::ControllerPublishVolumeResponse {
    pb::ControllerPublishVolumeResponse { publish_context: HashMap::from([("devicePath".to_string(), device)]) }
}

fn csi_volume(v: &Volume) -> pb::Volume {
    let zone = v.availability_zone().unwrap_or_default().to_string();
    pb::Volume {
        capacity_bytes: i64::from(v.size().unwrap_or(0)) * GIB as i64,
        volume_id: v.volume_id().unwrap_or_default().to_string(),
        volume_context: HashMap::new(),
        content_source: v.snapshot_id().filter(|s| !s.is_empty()).map(|s| pb::VolumeContentSource {
            r#type: Some(pb::volume_content_source::Type::Snapshot(pb::volume_content_source::SnapshotSource {
                snapshot_id: s.to_string(),
            })),
        }),
        accessible_topology: vec![pb::Topology { segments: HashMap::from([(ZONE_KEY.to_string(), zone)]) }],
    }
}

fn csi_snapshot(s: &Snapshot) -> pb::Snapshot {
    pb::Snapshot {
        size_bytes: i64::from(s.volume_size().unwrap_or(0)) * GIB as i64,
        snapshot_id: s.snapshot_id().unwrap_or_default().to_string(),
        source_volume_id: s.volume_id().unwrap_or_default().to_string(),
        creation_time: s
            .start_time()
            .map(|t| prost_types::Timestamp { seconds: t.secs(), nanos: t.subsec_nanos() as i32 }),
        ready_to_use: s.state() == Some(&SnapshotState::Completed),
        group_snapshot_id: String::new(),
    }
}

#[tonic::async_trait]
impl pb::controller_server::Controller for ControllerService {
    async fn controller_get_capabilities(
        &self,
        _req: Request<pb::ControllerGetCapabilitiesRequest>,
    ) -> std::result::Result<Response<pb::ControllerGetCapabilitiesResponse>, Status> {
        use csc::rpc::Type as T;
        let capabilities = csi_core::caps::controller([
            T::CreateDeleteVolume,
            T::PublishUnpublishVolume,
            T::CreateDeleteSnapshot,
            T::ListSnapshots,
            T::ExpandVolume,
            T::ListVolumes,
            T::ListVolumesPublishedNodes,
            T::GetVolume,
            T::ModifyVolume,
            T::SingleNodeMultiWriter,
        ]);
        Ok(Response::new(pb::ControllerGetCapabilitiesResponse { capabilities }))
    }

    async fn create_volume(
        &self,
        req: Request<pb::CreateVolumeRequest>,
    ) -> std::result::Result<Response<pb::CreateVolumeResponse>, Status> {
        Ok(Response::new(self.create(req.into_inner()).await?))
    }

    async fn delete_volume(
        &self,
        req: Request<pb::DeleteVolumeRequest>,
    ) -> std::result::Result<Response<pb::DeleteVolumeResponse>, Status> {
        self.delete(req.into_inner()).await?;
        Ok(Response::new(pb::DeleteVolumeResponse {}))
    }

    async fn controller_publish_volume(
        &self,
        req: Request<pb::ControllerPublishVolumeRequest>,
    ) -> std::result::Result<Response<pb::ControllerPublishVolumeResponse>, Status> {
        Ok(Response::new(self.publish(req.into_inner()).await?))
    }

    async fn controller_unpublish_volume(
        &self,
        req: Request<pb::ControllerUnpublishVolumeRequest>,
    ) -> std::result::Result<Response<pb::ControllerUnpublishVolumeResponse>, Status> {
        self.unpublish(req.into_inner()).await?;
        Ok(Response::new(pb::ControllerUnpublishVolumeResponse {}))
    }

    async fn validate_volume_capabilities(
        &self,
        req: Request<pb::ValidateVolumeCapabilitiesRequest>,
    ) -> std::result::Result<Response<pb::ValidateVolumeCapabilitiesResponse>, Status> {
        Ok(Response::new(self.validate_caps(req.into_inner()).await?))
    }

    async fn list_volumes(
        &self,
        req: Request<pb::ListVolumesRequest>,
    ) -> std::result::Result<Response<pb::ListVolumesResponse>, Status> {
        Ok(Response::new(self.list_volumes_page(req.into_inner()).await?))
    }

    async fn controller_get_volume(
        &self,
        req: Request<pb::ControllerGetVolumeRequest>,
    ) -> std::result::Result<Response<pb::ControllerGetVolumeResponse>, Status> {
        Ok(Response::new(self.get_volume(req.into_inner()).await?))
    }

    async fn create_snapshot(
        &self,
        req: Request<pb::CreateSnapshotRequest>,
    ) -> std::result::Result<Response<pb::CreateSnapshotResponse>, Status> {
        Ok(Response::new(self.create_snap(req.into_inner()).await?))
    }

    async fn delete_snapshot(
        &self,
        req: Request<pb::DeleteSnapshotRequest>,
    ) -> std::result::Result<Response<pb::DeleteSnapshotResponse>, Status> {
        self.delete_snap(req.into_inner()).await?;
        Ok(Response::new(pb::DeleteSnapshotResponse {}))
    }

    async fn list_snapshots(
        &self,
        req: Request<pb::ListSnapshotsRequest>,
    ) -> std::result::Result<Response<pb::ListSnapshotsResponse>, Status> {
        Ok(Response::new(self.list_snaps(req.into_inner()).await?))
    }

    async fn controller_expand_volume(
        &self,
        req: Request<pb::ControllerExpandVolumeRequest>,
    ) -> std::result::Result<Response<pb::ControllerExpandVolumeResponse>, Status> {
        Ok(Response::new(self.expand(req.into_inner()).await?))
    }

    async fn controller_modify_volume(
        &self,
        req: Request<pb::ControllerModifyVolumeRequest>,
    ) -> std::result::Result<Response<pb::ControllerModifyVolumeResponse>, Status> {
        self.modify(req.into_inner()).await?;
        Ok(Response::new(pb::ControllerModifyVolumeResponse {}))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn client_tokens_fit_ec2_and_differ_per_name_and_attempt() {
        let t = client_token(&"x".repeat(128), 0);
        assert_eq!(t.len(), 64);
        assert!(t.chars().all(|c| c.is_ascii_hexdigit()));
        assert_eq!(t, client_token(&"x".repeat(128), 0), "stable across calls and restarts");
        assert_ne!(client_token("pvc-1", 0), client_token("pvc-2", 0));
        assert_ne!(client_token("pvc-1", 0), client_token("pvc-1", 1));
    }

    #[test]
    fn zones_come_from_either_key_preferred_first() {
        let topo = |k: &str, z: &str| pb::Topology { segments: HashMap::from([(k.to_string(), z.to_string())]) };
        let req = pb::TopologyRequirement {
            requisite: vec![topo(ZONE_KEY_DRIVER, "us-east-1a"), topo(ZONE_KEY, "us-east-1b")],
            preferred: vec![topo(ZONE_KEY, "us-east-1b")],
        };
        assert_eq!(requested_zones(Some(&req)), vec!["us-east-1b".to_string(), "us-east-1a".to_string()]);
        assert!(requested_zones(None).is_empty());
    }
}
