//! The Node service: maps an RBD image (krbd through sysfs, or rbd-nbd),
//! makes a filesystem only on a blank device, mounts it at the staging
//! path, and bind-mounts it (or the raw device) at each target path.
//!
//! Exclusivity ([`crate::attach`]): a read-write stage claims the image's
//! attach lock for this node before mapping (FAILED_PRECONDITION naming the
//! holder otherwise) and records its Ceph client address after mapping, so
//! that a takeover can fence exactly this client.
//!
//! What stage did is kept in a stage record ([`record`]) under
//! `--state-dir`: publish, expand, stats and unstage need neither Ceph nor
//! the volume context, and a restarted plugin picks up where it was.
//! Unstage works with Ceph down: unmount and unmap are bounded and escalate
//! (lazy unmount, forced unmap); releasing the lock in Ceph is best effort
//! and bounded (a lock left behind is broken by the controller's
//! ControllerUnpublishVolume, which follows every unstage).
//!
//! Every step is idempotent: a retried stage finds its mapping (by pool and
//! image, [`krbd::find`]) and its mount, a retried unstage finds nothing
//! left to do.

pub mod exec;
pub use csi_core::blockfs as fs;
pub mod krbd;
pub mod nbd;
pub mod record;
mod steps;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use csi_core::blocknode;
use csi_core::mount;
use csi_core::node::blocking;
use csi_core::pb;
use csi_core::pb::node_service_capability::rpc::Type as NodeCap;
use csi_core::pb::volume_capability::access_mode::Mode as AccessMode;
use csi_core::pb::volume_capability::AccessType;
use csi_core::validate::{self, CapabilitySupport, InFlight};
use csi_core::Error;
use steps::Steps;
use tonic::{Request, Response, Status};

use crate::attach;
use crate::config::ClusterConfig;
use crate::volume_id::VolumeId;
use record::{Mounter, Records, StageRecord, StageSecret};

/// Bound on connecting to Ceph at stage, and on each Ceph call.
pub const CEPH_TIMEOUT: Duration = Duration::from_secs(15);
/// Bound on releasing the attach lock at unstage (best effort).
pub const RELEASE_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on one mount or unmount step.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on each unmount step at unstage (then lazy/forced, see csi-core).
pub const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long expand waits for the kernel to see the image's new size.
pub const RESIZE_WAIT: Duration = Duration::from_secs(30);
/// Bound on statvfs for NodeGetVolumeStats.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(5);
/// The default map options: the kernel client cannot map from a
/// msgr2-only monitor without `ms_mode`; `noshare` gives every mapping a
/// Ceph client of its own, so that fencing one volume's client leaves the
/// node's other volumes alone.
pub const DEFAULT_KRBD_OPTIONS: &[&str] = &["ms_mode=prefer-crc", "noshare"];

/// Access modes a node stages: one node at a time, or read-only anywhere.
const MODES: &[AccessMode] = &[
    AccessMode::SingleNodeWriter,
    AccessMode::SingleNodeReaderOnly,
    AccessMode::MultiNodeReaderOnly,
    AccessMode::SingleNodeSingleWriter,
    AccessMode::SingleNodeMultiWriter,
];
/// Block and filesystem volumes, in those modes.
pub const SUPPORT: CapabilitySupport = CapabilitySupport { block: true, modes: MODES };

/// The node's settings (flags).
#[derive(Clone, Debug)]
pub struct NodeConfig {
    /// `--node-id`.
    pub node_id: String,
    /// `--state-dir`: stage records.
    pub state_dir: PathBuf,
    /// `--cluster-config`: clusterID → monitors.
    pub clusters: ClusterConfig,
    /// `--max-volumes`: NodeGetInfo's `max_volumes_per_node` (0: no limit stated).
    pub max_volumes: i64,
}

/// (clusterID, user, hash of the key): a cached connection's key.
type ConnKey = (String, String, u64);

/// csi-rbd's Node service.
#[derive(Debug)]
pub struct NodeService {
    cfg: NodeConfig,
    records: Records,
    in_flight: InFlight,
    /// Connections by (clusterID, user, hash of the key): as the
    /// controller's cache (`connection.rs`), the secret itself is never a
    /// map key.
    conns: Arc<Mutex<HashMap<ConnKey, Arc<dyn ceph::Rbd>>>>,
    hasher: std::collections::hash_map::RandomState,
}

/// A counter for unique temp names.
pub(crate) fn unique() -> u64 {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    N.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// Runs `f` on its own thread, waiting at most `timeout` (a hung cluster
/// must not hang the RPC; the thread is abandoned).
fn bounded<T, F>(what: &str, timeout: Duration, f: F) -> Result<T, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Status> + Send + 'static,
{
    start_bounded(what, f)?.wait_for(timeout)
}

/// Work started on its own thread by [`start_bounded`], waited for later.
struct Pending<T> {
    what: String,
    started: Instant,
    rx: std::sync::mpsc::Receiver<Result<T, Status>>,
}

/// Starts `f` on its own thread and returns at once (the stage overlaps a
/// Ceph round trip with its local work); [`Pending::wait`] collects it.
fn start_bounded<T, F>(what: &str, f: F) -> Result<Pending<T>, Status>
where
    T: Send + 'static,
    F: FnOnce() -> Result<T, Status> + Send + 'static,
{
    let (tx, rx) = std::sync::mpsc::sync_channel(1);
    std::thread::Builder::new()
        .name("csi-rbd-ceph".into())
        .spawn(move || {
            let _ = tx.send(f());
        })
        .map_err(|e| Status::internal(format!("{what}: start a thread: {e}")))?;
    Ok(Pending { what: what.to_string(), started: Instant::now(), rx })
}

impl<T> Pending<T> {
    /// The result, waiting at most `timeout` from the start.
    fn wait_for(self, timeout: Duration) -> Result<T, Status> {
        let deadline = self.started + timeout;
        self.wait(deadline)
    }

    /// The result, waiting at most until `deadline`.
    fn wait(self, deadline: Instant) -> Result<T, Status> {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(r) => r,
            Err(_) => Err(Status::deadline_exceeded(format!(
                "{}: Ceph did not answer within {:?}",
                self.what,
                Duration::from_millis(deadline.saturating_duration_since(self.started).as_millis() as u64)
            ))),
        }
    }
}

/// The stage's claim of the attach lock, then the read of the image's
/// filesystem hint, on one thread while the image is mapped.
struct Claim {
    pending: Option<Pending<Option<String>>>,
    /// The filesystem hint, once confirmed.
    hint: Option<String>,
}

impl Claim {
    fn new(pending: Pending<Option<String>>) -> Claim {
        Claim { pending: Some(pending), hint: None }
    }

    /// Waits for the claim, at most [`CEPH_TIMEOUT`] from its start (once;
    /// later calls return Ok).
    fn confirm(&mut self) -> Result<(), Status> {
        match self.pending.take() {
            Some(p) => {
                self.hint = p.wait_for(CEPH_TIMEOUT)?;
                Ok(())
            }
            None => Ok(()),
        }
    }
}

/// What a stage records once the image is mapped, on a thread of its own
/// while the filesystem is probed, made and mounted (off the critical
/// path), waited for before the stage returns, success or failure:
/// - the stage record gets the device and reaches the disk with the
///   secret (until then a record without the device is what a crash
///   leaves, as before the map: a retried stage finds the mapping again,
///   unstage unmaps it by pool and image);
/// - the client address goes to Ceph (with the image's filesystem hint,
///   for a new image): the stage succeeds only once a takeover can fence
///   this client, and a rollback's release must come after this write,
///   not race it.
struct Recorder {
    records: Records,
    rbd: Arc<dyn ceph::Rbd>,
    attachment: attach::NodeAttachment,
}

/// The [`Recorder`]'s state in a stage.
enum Recording {
    /// Not started yet (a new image: once the probe has named the filesystem).
    Deferred(Recorder),
    Started(Pending<()>),
    /// Waited for (or never needed: the stage failed before it started).
    Done,
}

impl Recording {
    fn is_deferred(&self) -> bool {
        matches!(self, Recording::Deferred(_))
    }

    /// Starts the records of `rec` (with the device), and `fs` as the
    /// image's filesystem hint in the same Ceph write; once.
    fn start(&mut self, rec: &StageRecord, fs: Option<String>) -> Result<(), Status> {
        if !self.is_deferred() {
            return Ok(());
        }
        let Recording::Deferred(r) = std::mem::replace(self, Recording::Done) else {
            return Ok(());
        };
        let with_device = rec.clone();
        let Recorder { records, rbd, attachment } = r;
        *self = Recording::Started(start_bounded("record the attachment", move || {
            let saved = records
                .save_visible(&with_device)
                .and_then(|()| records.sync(&with_device.volume_id))
                .map_err(Status::from);
            let (p, i, n) = (&with_device.pool, &with_device.image, &with_device.node);
            let recorded = attach::record(rbd.as_ref(), p, i, n, &attachment, fs.as_deref());
            saved.and(recorded)
        })?);
        Ok(())
    }

    /// Waits for the records if started (then, the record may be saved
    /// again without racing them). A stage that fails before they started
    /// records nothing: its rollback removes the record and releases the
    /// lock.
    fn settle(&mut self) -> Result<(), Status> {
        match std::mem::replace(self, Recording::Done) {
            Recording::Started(p) => p.wait_for(CEPH_TIMEOUT),
            Recording::Deferred(r) => {
                *self = Recording::Deferred(r);
                Ok(())
            }
            Recording::Done => Ok(()),
        }
    }

    /// The records' result (Ok if never started).
    fn wait(self) -> Result<(), Status> {
        match self {
            Recording::Started(p) => p.wait_for(CEPH_TIMEOUT),
            Recording::Deferred(_) | Recording::Done => Ok(()),
        }
    }
}

/// Why [`NodeService::mount_staging`] did not mount.
enum Mounted {
    /// mount(2) refused (e.g. EINVAL: not that filesystem).
    Failed(Error),
    /// Anything else (the staging path, the record, a hung mount).
    Other(Status),
}

impl Mounted {
    fn status(self) -> Status {
        match self {
            Mounted::Failed(e) => e.into(),
            Mounted::Other(s) => s,
        }
    }
}

/// Where a volume lives, from the volume context or else the volume ID.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Target {
    /// ceph-csi's clusterID.
    pub cluster_id: String,
    /// The pool's name, if the context gave it (else resolved from `pool_id`).
    pub pool: Option<String>,
    /// The pool's ID from the volume ID.
    pub pool_id: Option<i64>,
    /// The image.
    pub image: String,
}

impl Target {
    /// Resolves without I/O. NOT_FOUND when neither the context nor the ID
    /// names an image.
    pub fn new(volume_id: &str, ctx: &HashMap<String, String>) -> Result<Target, Error> {
        let get = |k: &str| ctx.get(k).filter(|v| !v.is_empty()).cloned();
        let parsed = VolumeId::parse(volume_id);
        let cluster_id = match (get("clusterID"), &parsed) {
            (Some(c), _) => c,
            (None, Ok(id)) => id.cluster_id.clone(),
            (None, Err(e)) => {
                return Err(Error::NotFound(format!("volume {volume_id:?}: {e}; no clusterID in the volume context")))
            }
        };
        let image = match (get("imageName"), &parsed) {
            (Some(i), _) => i,
            (None, Ok(id)) => format!("csi-vol-{}", id.uuid),
            (None, Err(e)) => {
                return Err(Error::NotFound(format!("volume {volume_id:?}: {e}; no imageName in the volume context")))
            }
        };
        let pool = get("pool");
        let pool_id = parsed.as_ref().ok().map(|id| id.pool_id);
        if pool.is_none() && pool_id.is_none() {
            return Err(Error::NotFound(format!("volume {volume_id:?}: no pool in the volume context or the ID")));
        }
        Ok(Target { cluster_id, pool, pool_id, image })
    }
}

/// `mapOptions` / `unmapOptions` for one mounter, in ceph-csi's syntax:
/// `opt,opt` for the mounter in use, or `krbd:opt,opt;nbd:opt` per mounter.
pub fn options_for(spec: &str, mounter: Mounter) -> Vec<String> {
    let want = match mounter {
        Mounter::Krbd => "krbd",
        Mounter::RbdNbd => "nbd",
    };
    let mut out = Vec::new();
    for part in spec.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let opts = match part.split_once(':') {
            Some((m, rest)) if matches!(m.trim(), "krbd" | "nbd") => {
                if m.trim() != want {
                    continue;
                }
                rest
            }
            _ => part,
        };
        out.extend(opts.split(',').map(str::trim).filter(|o| !o.is_empty()).map(str::to_string));
    }
    out
}

/// krbd map options: the defaults unless the context overrides them, then the context's.
pub fn krbd_options(spec: &str, readonly: bool) -> Vec<String> {
    let given = options_for(spec, Mounter::Krbd);
    let key = |o: &str| o.split('=').next().unwrap_or("").to_string();
    let mut out: Vec<String> = DEFAULT_KRBD_OPTIONS
        .iter()
        .filter(|d| !given.iter().any(|g| key(g) == key(d)))
        .map(|d| d.to_string())
        .collect();
    out.extend(given);
    if readonly && !out.iter().any(|o| o == "ro" || o == "read_only") {
        out.push("ro".into());
    }
    out
}

/// What NodeStageVolume was asked, checked. Its Debug leaves the key out.
struct StageReq {
    volume_id: String,
    staging: PathBuf,
    target: Target,
    mounter: Mounter,
    map_options: String,
    unmap_options: String,
    readonly: bool,
    /// Empty: raw block.
    fs_type: String,
    mount_flags: Vec<String>,
    user: String,
    key: String,
}

impl std::fmt::Debug for StageReq {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StageReq")
            .field("volume_id", &self.volume_id)
            .field("staging", &self.staging)
            .field("target", &self.target)
            .field("mounter", &self.mounter)
            .field("readonly", &self.readonly)
            .field("fs_type", &self.fs_type)
            .field("user", &self.user)
            .field("key", &"***")
            .finish_non_exhaustive()
    }
}

impl NodeService {
    /// The node service for `cfg`.
    pub fn new(cfg: NodeConfig) -> NodeService {
        let records = Records::new(&cfg.state_dir);
        NodeService { cfg, records, in_flight: InFlight::default(), conns: Arc::default(), hasher: Default::default() }
    }

    fn monitors(&self, cluster_id: &str) -> Result<Vec<String>, Status> {
        self.cfg
            .clusters
            .cluster(cluster_id)
            .map(|c| c.monitors.clone())
            .map_err(|e| Status::not_found(format!("{e} (--cluster-config)")))
    }

    /// A Ceph connection for `cluster_id` as `user`, reused across calls.
    fn connect(
        &self,
        cluster_id: &str,
        user: &str,
        key: &str,
        timeout: Duration,
    ) -> Result<Arc<dyn ceph::Rbd>, Status> {
        let monitors = self.monitors(cluster_id)?;
        let cache_key = self.cache_key(cluster_id, user, key);
        if let Some(c) = self.conns.lock().unwrap_or_else(|p| p.into_inner()).get(&cache_key) {
            return Ok(Arc::clone(c));
        }
        let spec = ceph::ConnectSpec { monitors, user: user.to_string(), key: key.to_string(), timeout };
        let conn =
            bounded(&format!("connect to Ceph cluster {cluster_id:?}"), timeout + Duration::from_secs(2), move || {
                ceph::connect(&spec).map_err(|e| match e {
                    ceph::Error::Timeout(m) => Status::unavailable(format!("Ceph cluster {m}")),
                    e => attach::status(e),
                })
            })?;
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).insert(cache_key, Arc::clone(&conn));
        Ok(conn)
    }

    fn forget_connection(&self, cluster_id: &str, user: &str, key: &str) {
        self.conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&self.cache_key(cluster_id, user, key));
    }

    fn cache_key(&self, cluster_id: &str, user: &str, key: &str) -> ConnKey {
        use std::hash::BuildHasher;
        (cluster_id.to_string(), user.to_string(), self.hasher.hash_one(key))
    }

    fn stage_request(&self, req: pb::NodeStageVolumeRequest) -> Result<StageReq, Status> {
        validate::require_volume_id(&req.volume_id)?;
        validate::require_staging_path(&req.staging_target_path)?;
        let cap = validate::require_capability(req.volume_capability.as_ref(), &SUPPORT)?;
        let mode = cap.access_mode.as_ref().map(|m| m.mode).unwrap_or_default();
        let readonly =
            mode == AccessMode::SingleNodeReaderOnly as i32 || mode == AccessMode::MultiNodeReaderOnly as i32;
        let (fs_type, flags) = match &cap.access_type {
            Some(AccessType::Mount(m)) => (fs::check_type(&m.fs_type)?.to_string(), m.mount_flags.clone()),
            _ => (String::new(), Vec::new()),
        };
        let staging = mount::normalize(Path::new(&req.staging_target_path))?;
        let target = Target::new(&req.volume_id, &req.volume_context)?;
        let ctx = |k: &str| req.volume_context.get(k).cloned().unwrap_or_default();
        let mounter = Mounter::parse(req.volume_context.get("mounter").map(String::as_str))?;
        let secrets = csi_core::redact::Secrets::from(req.secrets);
        let (Some(user), Some(key)) = (secrets.get("userID"), secrets.get("userKey")) else {
            return Err(Status::invalid_argument(format!(
                "stage secrets must hold userID and userKey (got keys {:?})",
                secrets.keys()
            )));
        };
        krbd::check_secret(user, key)?;
        Ok(StageReq {
            volume_id: req.volume_id.clone(),
            staging,
            target,
            mounter,
            map_options: ctx("mapOptions"),
            unmap_options: ctx("unmapOptions"),
            readonly,
            fs_type,
            mount_flags: flags,
            user: user.to_string(),
            key: key.to_string(),
        })
    }

    /// NodeStageVolume's work (blocking).
    fn stage(&self, r: StageReq) -> Result<(), Status> {
        let mut steps = Steps::new();
        let vol = r.volume_id.clone();
        let res = self.stage_steps(r, &mut steps);
        tracing::debug!(volume = %vol, "stage steps: {}", steps.summary());
        res
    }

    fn stage_steps(&self, r: StageReq, steps: &mut Steps) -> Result<(), Status> {
        // A retry of a stage that completed: same path, still mapped and mounted.
        if let Some(rec) = self.records.load(&r.volume_id)? {
            if rec.staging_path != r.staging {
                return Err(Status::already_exists(format!(
                    "volume {} is already staged at {}, not {}",
                    r.volume_id,
                    rec.staging_path.display(),
                    r.staging.display()
                )));
            }
            if rec.readonly != r.readonly || rec.is_block() != r.fs_type.is_empty() {
                return Err(Status::already_exists(format!(
                    "volume {} is already staged with another capability (read-only {}, block {})",
                    r.volume_id,
                    rec.readonly,
                    rec.is_block()
                )));
            }
            if !rec.device.is_empty() && self.fully_staged(&rec)? {
                return Ok(());
            }
        }
        steps.mark("load-record");
        let monitors = self.monitors(&r.target.cluster_id)?;
        let rbd = self.connect(&r.target.cluster_id, &r.user, &r.key, CEPH_TIMEOUT)?;
        steps.mark("connect");
        let pool = match (&r.target.pool, r.target.pool_id) {
            (Some(p), _) => p.clone(),
            (None, Some(id)) => {
                let c = Arc::clone(&rbd);
                bounded("look up the pool", CEPH_TIMEOUT, move || c.pool_name(id).map_err(attach::status))?
            }
            (None, None) => return Err(Status::not_found(format!("volume {}: no pool", r.volume_id))),
        };
        let image = r.target.image.clone();
        let node = self.cfg.node_id.clone();
        steps.mark("pool");

        // Exclusivity: nothing is written (no mkfs, no mount, which writes
        // the superblock; a raw block volume is not handed out) unless this
        // node holds the image. The claim's round trip (taking the lock when
        // the look below found it free) overlaps the map; a refused claim
        // undoes the map.
        // After the claim, on the same thread: the filesystem a read-write
        // stage recorded on the image (a migration's second node), which
        // spares the probe ([`NodeService::make_fs_and_mount`]). A failed
        // read of it only costs the probe.
        // A read-write stage first looks who holds the image (one round
        // trip): held by another node, it is refused before anything is
        // mapped ([`attach::held_here`]: the map alone would take the
        // image's exclusive lock from that node's kernel, and wait out a
        // dead one's watch).
        let held = if r.readonly {
            false
        } else {
            let (c, p, i, n) = (Arc::clone(&rbd), pool.clone(), image.clone(), node.clone());
            bounded("read the attach lock", CEPH_TIMEOUT, move || attach::held_here(c.as_ref(), &p, &i, &n))?
        };
        steps.mark("holders");
        let (c, p, i, n, ro) = (Arc::clone(&rbd), pool.clone(), image.clone(), node.clone(), r.readonly);
        let (want_hint, vol) = (!r.fs_type.is_empty(), r.volume_id.clone());
        let mut claim = Claim::new(start_bounded("claim the attach lock", move || {
            attach::claim_at_stage(c.as_ref(), &p, &i, &n, ro, held)?;
            if !want_hint {
                return Ok(None);
            }
            Ok(attach::filesystem(c.as_ref(), &p, &i).unwrap_or_else(|e| {
                tracing::debug!(volume = %vol, "no filesystem hint: {}", e.message());
                None
            }))
        })?);

        let mut rec = StageRecord {
            volume_id: r.volume_id.clone(),
            cluster_id: r.target.cluster_id.clone(),
            pool: pool.clone(),
            image: image.clone(),
            mounter: r.mounter,
            device: String::new(),
            unmap_options: r.unmap_options.clone(),
            fs_type: r.fs_type.clone(),
            staging_path: r.staging.clone(),
            node: node.clone(),
            readonly: r.readonly,
        };
        let result = self.map_and_mount(&r, &monitors, &rbd, &mut rec, &mut claim, steps);
        let result = result.and_then(|()| claim.confirm());
        if let Err(e) = result {
            // A claim still in flight lands before the rollback releases it.
            let _ = claim.confirm();
            tracing::warn!(volume = %r.volume_id, "stage failed, rolling back: {}", e.message());
            self.rollback(&rec, &rbd);
            return Err(e);
        }
        Ok(())
    }

    fn map_and_mount(
        &self,
        r: &StageReq,
        monitors: &[String],
        rbd: &Arc<dyn ceph::Rbd>,
        rec: &mut StageRecord,
        claim: &mut Claim,
        steps: &mut Steps,
    ) -> Result<(), Status> {
        // The record (and the secret, to release the lock at unstage) before
        // mapping: a plugin that dies after the map leaves what unstage and
        // a restarted plugin need. Written, not yet fsynced: a process's
        // crash keeps them (the page cache is the kernel's), and a machine's
        // crash takes the mapping with it; they are fsynced while the
        // filesystem is probed and mounted, before the stage returns
        // (`record.rs`).
        if !r.readonly {
            self.records
                .save_secret_visible(&r.volume_id, &StageSecret { user: r.user.clone(), key: r.key.clone() })?;
        }
        self.records.save_visible(rec)?;
        steps.mark("save-record+secret");
        let (pool, image) = (rec.pool.clone(), rec.image.clone());
        let (device, client_addr) = match r.mounter {
            Mounter::Krbd => {
                let opts = krbd_options(&r.map_options, r.readonly);
                krbd::check_options(&opts)?;
                let id = krbd::map(&krbd::MapRequest {
                    monitors,
                    user: &r.user,
                    key: &r.key,
                    options: &opts,
                    pool: &pool,
                    image: &image,
                })?;
                (id.device(), id.client_addr().unwrap_or_default())
            }
            Mounter::RbdNbd => {
                let watchers = |rbd: &Arc<dyn ceph::Rbd>| -> Result<Vec<String>, Status> {
                    let (c, p, i) = (Arc::clone(rbd), pool.clone(), image.clone());
                    bounded("list the image's watchers", CEPH_TIMEOUT, move || {
                        Ok(c.image_watchers(&p, &i).map_err(attach::status)?.into_iter().map(|w| w.address).collect())
                    })
                };
                let before = watchers(rbd)?;
                let opts = options_for(&r.map_options, Mounter::RbdNbd);
                let req = krbd::MapRequest {
                    monitors,
                    user: &r.user,
                    key: &r.key,
                    options: &opts,
                    pool: &pool,
                    image: &image,
                };
                let dev = nbd::map(&req, r.readonly, self.records.dir())?;
                // rbd-nbd's client is the watcher that appeared with it.
                let after = watchers(rbd)?;
                let new: Vec<&String> = after.iter().filter(|a| !before.contains(a)).collect();
                let addr = if new.len() == 1 { new[0].clone() } else { String::new() };
                (dev, addr)
            }
        };
        steps.mark("map");
        rec.device = device.clone();
        if client_addr.is_empty() {
            tracing::warn!(volume = %r.volume_id, %device, "the client address of the mapping is unknown: a takeover cannot fence it");
        }
        let recorder = Recorder {
            records: self.records.clone(),
            rbd: Arc::clone(rbd),
            attachment: attach::NodeAttachment::new(&client_addr, r.mounter.as_str(), &device, r.readonly),
        };
        // The claim ran while the image mapped: nothing is recorded for a
        // node that does not hold the image.
        claim.confirm()?;
        steps.mark("claim");
        // A read-write filesystem stage without a hint (a new image) records
        // the filesystem with the attachment, in one Ceph write: it starts
        // once the probe has named it (what it found, or what mkfs makes).
        let hinted = claim.hint.as_deref().is_some_and(|t| fs::SUPPORTED.contains(&t));
        let mut recording = Recording::Deferred(recorder);
        if rec.is_block() || r.readonly || hinted {
            recording.start(rec, None)?;
            steps.mark("start-records");
        }
        let local = self.make_fs_and_mount(r, &device, rec, claim, rbd, &mut recording, steps);
        let recorded = recording.wait();
        steps.mark("records");
        local.and(recorded)
    }

    /// The filesystem half of a stage: probe (make on a blank device), mount.
    ///
    /// When the image's attach object names the filesystem a read-write
    /// stage of this driver made or mounted on it (a migration: node B
    /// stages what node A used), the probe is skipped: the mount reads and
    /// checks the superblock anyway. If that mount fails, the device is
    /// probed as usual, and only a device the probe finds blank is ever
    /// formatted.
    #[allow(clippy::too_many_arguments)]
    fn make_fs_and_mount(
        &self,
        r: &StageReq,
        device: &str,
        rec: &mut StageRecord,
        claim: &mut Claim,
        rbd: &Arc<dyn ceph::Rbd>,
        recording: &mut Recording,
        steps: &mut Steps,
    ) -> Result<(), Status> {
        let device = device.to_string();
        if rec.is_block() {
            return claim.confirm();
        }
        // The claim (and the hint after it) ran while the image mapped.
        claim.confirm()?;
        let hinted = claim.hint.clone().filter(|t| fs::SUPPORTED.contains(&t.as_str()));
        if let Some(t) = &hinted {
            match self.mount_staging(r, &device, t, rec, recording, steps) {
                Ok(()) => {
                    steps.mark("mount");
                    return Ok(());
                }
                Err(Mounted::Failed(e)) => {
                    tracing::info!(
                        volume = %r.volume_id,
                        "mounting {device} as {t}, the filesystem recorded for the image, failed ({e}); probing the device"
                    );
                    // What the probe finds decides now; a blank device gets what was asked.
                    if rec.fs_type != r.fs_type {
                        rec.fs_type = r.fs_type.clone();
                        self.save_after(rec, recording)?;
                    }
                }
                Err(Mounted::Other(e)) => return Err(e),
            }
        }
        // Zeros at both ends: blank, no blkid process; anything else: blkid decides.
        let found = match fs::inspect(&device)? {
            fs::Content::Blank => None,
            fs::Content::Known(t) => Some(t.to_string()),
            fs::Content::Other => fs::probe(&device)?,
        };
        steps.mark("probe");
        let blank = found.is_none();
        let fs_type = match found {
            None if r.readonly => {
                return Err(Status::failed_precondition(format!(
                    "volume {} has no filesystem and is staged read-only: nothing to mount",
                    r.volume_id
                )))
            }
            None => rec.fs_type.clone(),
            Some(t) if fs::SUPPORTED.contains(&t.as_str()) => t,
            Some(other) => {
                return Err(Status::failed_precondition(format!(
                    "volume {} holds {other}, not a filesystem this driver mounts (ext4, xfs); it is left untouched",
                    r.volume_id
                )))
            }
        };
        // The next stage of this image (elsewhere, after this node
        // unstages) may skip the probe. A new image: with the attachment,
        // in its one write (started now, while mkfs runs). Written before
        // the filesystem is complete, which is safe: a hint only ever
        // spares a probe (a failed mount falls back to it), it never
        // decides a mkfs.
        let carried = recording.is_deferred().then(|| fs_type.clone());
        recording.start(rec, carried.clone())?;
        steps.mark("start-records");
        if blank {
            if !r.readonly {
                tracing::info!(
                    "making {} on {device} for volume {}: the device probe found it blank",
                    rec.fs_type,
                    r.volume_id
                );
            }
            fs::mkfs(&device, &rec.fs_type)?;
            steps.mark("mkfs");
        }
        // A hinted stage whose hint was wrong (its mount failed, the probe
        // named another filesystem): the hint is corrected while the
        // filesystem mounts, waited for (a failure only costs the next
        // stage its probe).
        let remembering = if !r.readonly && carried.is_none() && hinted.as_deref() != Some(fs_type.as_str()) {
            let (c, p, i, t) = (Arc::clone(rbd), rec.pool.clone(), rec.image.clone(), fs_type.clone());
            Some(start_bounded("record the image's filesystem", move || {
                attach::remember_filesystem(c.as_ref(), &p, &i, &t)
            })?)
        } else {
            None
        };
        let mounted = self.mount_staging(r, &device, &fs_type, rec, recording, steps).map_err(Mounted::status);
        steps.mark("mount");
        if let Some(Err(e)) = remembering.map(|p| p.wait_for(CEPH_TIMEOUT)) {
            tracing::warn!(volume = %r.volume_id, "the image's filesystem is not recorded in Ceph: {}", e.message());
        }
        mounted
    }

    /// Mounts `device` (holding `fs_type`) at the staging path, or finds it
    /// mounted there already. [`Mounted::Failed`] is mount(2)'s own refusal.
    fn mount_staging(
        &self,
        r: &StageReq,
        device: &str,
        fs_type: &str,
        rec: &mut StageRecord,
        recording: &mut Recording,
        steps: &mut Steps,
    ) -> Result<(), Mounted> {
        if fs_type != rec.fs_type {
            tracing::info!(volume = %r.volume_id, "mounting the existing {fs_type} filesystem (asked for {})", rec.fs_type);
            rec.fs_type = fs_type.to_string();
            // Durable before the mount: a retried stage that finds it mounted trusts the record.
            self.save_after(rec, recording).map_err(Mounted::Other)?;
        }
        let table = mount::mounts().map_err(|e| Mounted::Other(e.into()))?;
        if let Some(m) = mount::find_mount(&table, &r.staging).map_err(|e| Mounted::Other(e.into()))? {
            if m.source == device {
                return Ok(());
            }
            return Err(Mounted::Other(Status::already_exists(format!(
                "{} is already a mount of {}, not of {device}",
                r.staging.display(),
                m.source
            ))));
        }
        std::fs::create_dir_all(&r.staging)
            .map_err(|e| Mounted::Other(Error::io(format!("create staging path {}", r.staging.display()), e).into()))?;
        let (flags, mut data) = blocknode::mount_flags(&r.mount_flags, r.readonly);
        data = vec![fs::mount_data(fs_type, &data)].into_iter().filter(|d| !d.is_empty()).collect();
        // The mount table read and the staging directory: apart from the
        // mount itself in the step log.
        steps.mark("mount-prep");
        match mount::mount(device, &r.staging, fs_type, flags, data.first().map(String::as_str), MOUNT_TIMEOUT) {
            Ok(()) => Ok(()),
            Err(e @ Error::Sys { .. }) => Err(Mounted::Failed(e)),
            Err(e) => Err(Mounted::Other(e.into())),
        }
    }

    /// Saves `rec` durably once the recording thread, which writes the
    /// record too, is done (one writer of the record at a time).
    fn save_after(&self, rec: &StageRecord, recording: &mut Recording) -> Result<(), Status> {
        recording.settle()?;
        Ok(self.records.save(rec)?)
    }

    /// Undoes a failed stage: unmount, unmap, release, forget (best effort).
    fn rollback(&self, rec: &StageRecord, rbd: &Arc<dyn ceph::Rbd>) {
        if let Err(e) = self.teardown(rec) {
            tracing::warn!(volume = %rec.volume_id, "rollback: {}", e.message());
            return;
        }
        if !rec.readonly {
            let (c, p, i, n) = (Arc::clone(rbd), rec.pool.clone(), rec.image.clone(), rec.node.clone());
            if let Err(e) =
                bounded("release the attach lock", RELEASE_TIMEOUT, move || attach::release(c.as_ref(), &p, &i, &n))
            {
                tracing::warn!(volume = %rec.volume_id, "rollback: {}", e.message());
            }
        }
        let _ = self.records.remove(&rec.volume_id);
    }

    /// Is the recorded stage complete (mapped, and mounted for a filesystem)?
    fn fully_staged(&self, rec: &StageRecord) -> Result<bool, Status> {
        if !Path::new(&rec.device).exists() || !self.mapped(rec)? {
            return Ok(false);
        }
        if rec.is_block() {
            return Ok(true);
        }
        let table = mount::mounts()?;
        Ok(mount::find_mount(&table, &rec.staging_path)?.is_some_and(|m| m.source == rec.device))
    }

    fn mapped(&self, rec: &StageRecord) -> Result<bool, Status> {
        Ok(match rec.mounter {
            Mounter::Krbd => krbd::find(&rec.pool, &rec.image)?.map(|d| d.device()) == Some(rec.device.clone()),
            Mounter::RbdNbd => nbd::find(&rec.pool, &rec.image)?.as_deref() == Some(rec.device.as_str()),
        })
    }

    /// Unmounts the staging path and unmaps (no Ceph calls of ours; the
    /// kernel's own are bounded by the escalation).
    /// Returns whether the cluster looked hung (the unmount had to be forced).
    fn teardown(&self, rec: &StageRecord) -> Result<bool, Status> {
        let cluster_hung = unmount_all(&rec.staging_path)?;
        self.unmap(rec, cluster_hung)?;
        Ok(cluster_hung)
    }

    /// Unmaps the recorded device (or the image's mapping, found again).
    fn unmap(&self, rec: &StageRecord, cluster_hung: bool) -> Result<(), Status> {
        match rec.mounter {
            Mounter::Krbd => {
                let id = match krbd::DevId::from_device(&rec.device) {
                    Some(id) => Some(id),
                    None => krbd::find(&rec.pool, &rec.image)?,
                };
                if let Some(id) = id {
                    let opts = options_for(&rec.unmap_options, Mounter::Krbd).join(",");
                    krbd::unmap(id, &opts, cluster_hung)?;
                }
            }
            Mounter::RbdNbd => {
                let dev =
                    if rec.device.is_empty() { nbd::find(&rec.pool, &rec.image)? } else { Some(rec.device.clone()) };
                if let Some(dev) = dev {
                    nbd::unmap(&dev)?;
                }
            }
        }
        Ok(())
    }

    /// Releases `rec`'s attach lock with the secret kept at stage; a failure
    /// is logged and leaves the lock to ControllerUnpublishVolume.
    fn release_lock(&self, rec: &StageRecord) {
        let volume_id = rec.volume_id.as_str();
        let Some(s) = self.records.load_secret(volume_id) else {
            tracing::warn!(
                volume = volume_id,
                "no stage secret kept: the attach lock is left to ControllerUnpublishVolume"
            );
            return;
        };
        let released = self.connect(&rec.cluster_id, &s.user, &s.key, RELEASE_TIMEOUT).and_then(|rbd| {
            let (p, i, n) = (rec.pool.clone(), rec.image.clone(), rec.node.clone());
            bounded("release the attach lock", RELEASE_TIMEOUT, move || attach::release(rbd.as_ref(), &p, &i, &n))
        });
        if let Err(e) = released {
            self.forget_connection(&rec.cluster_id, &s.user, &s.key);
            tracing::warn!(
                volume = volume_id,
                "unstaged, but the attach lock stays held until ControllerUnpublishVolume breaks it: {}",
                e.message()
            );
        }
    }

    /// NodeUnstageVolume's work (blocking).
    fn unstage(&self, volume_id: &str, staging: &Path) -> Result<(), Status> {
        let Some(rec) = self.records.load(volume_id)? else {
            // Nothing staged here by us; leave no mount at the path either way,
            // nor what a machine crash in a stage left (an empty record, its secret).
            unmount_all(staging)?;
            self.records.remove(volume_id)?;
            return Ok(());
        };
        let started = Instant::now();
        let mut steps = Steps::new();
        let (cluster_hung, table) = unmount_all_then(&rec.staging_path)?;
        steps.mark("umount");
        if cluster_hung && !rec.readonly {
            tracing::warn!(
                volume = volume_id,
                "the cluster does not answer: the attach lock stays held until ControllerUnpublishVolume fences this node"
            );
        }
        let release = !cluster_hung && !rec.readonly;
        // Mounted nowhere else (a publish the CO never undid would keep the
        // filesystem alive through its bind mount: a writer).
        let unmounted = !rec.is_block() && !table.iter().any(|m| m.source == rec.device);
        if release && unmounted {
            // The filesystem is unmounted: its writes reached the cluster
            // before umount returned, and nothing here writes to the image
            // again. So the lock goes while the device is unmapped (one
            // Ceph round trip off a migration's path). A raw block device,
            // or a filesystem still mounted elsewhere, is unmapped first:
            // only the unmap (refused while open) proves no writer is left.
            let (unmapped, unmap_us, release_us) = std::thread::scope(|sc| {
                let releasing = sc.spawn(|| {
                    let t = Instant::now();
                    self.release_lock(&rec);
                    t.elapsed().as_micros()
                });
                let t = Instant::now();
                let unmapped = self.unmap(&rec, cluster_hung);
                let unmap_us = t.elapsed().as_micros();
                (unmapped, unmap_us, releasing.join().unwrap_or_default())
            });
            tracing::debug!(
                volume = volume_id,
                "unstage steps (side by side): unmap={unmap_us}µs release={release_us}µs"
            );
            unmapped?;
        } else {
            self.unmap(&rec, cluster_hung)?;
            if release {
                self.release_lock(&rec);
            }
        }
        steps.mark("unmap+release");
        self.records.remove(volume_id)?;
        steps.mark("remove-record");
        tracing::debug!(volume = volume_id, "unstage steps: {}", steps.summary());
        tracing::info!(volume = volume_id, ms = started.elapsed().as_millis() as u64, "unstaged");
        Ok(())
    }

    fn record_of(&self, volume_id: &str) -> Result<StageRecord, Status> {
        self.records
            .load(volume_id)?
            .ok_or_else(|| Status::not_found(format!("volume {volume_id:?} is not staged on this node")))
    }

    /// NodeExpandVolume's work (blocking): krbd re-reads the image's size
    /// (rbd-nbd and krbd's header watch pick it up on their own), then the
    /// shared wait for the new size and filesystem grow.
    fn expand(&self, rec: &StageRecord, volume_path: &Path, required: u64) -> Result<u64, Status> {
        if rec.mounter == Mounter::Krbd {
            if let Some(id) = krbd::DevId::from_device(&rec.device) {
                krbd::refresh(id)?;
            }
        }
        blocknode::expand(&rec.staged(), volume_path, required, RESIZE_WAIT)
    }
}

/// Unmounts everything stacked at `path`: a plain unmount first (it
/// flushes dirty data), a lazy detach when busy, and when the unmount does
/// not return in [`UNMOUNT_TIMEOUT`] (the cluster hangs, so the flush
/// cannot finish) a forced detach. Returns whether the unmount hung.
fn unmount_all(path: &Path) -> Result<bool, Status> {
    unmount_all_then(path).map(|(hung, _)| hung)
}

/// [`unmount_all`], also returning the mount table it read last (with
/// nothing left at `path`), for a caller that looks at the table next.
fn unmount_all_then(path: &Path) -> Result<(bool, Vec<mount::MountInfo>), Status> {
    use csi_core::mount::MntFlags;
    use nix::errno::Errno;
    let gone = |e: &Error| matches!(e, Error::Sys { errno: Errno::EINVAL | Errno::ENOENT, .. });
    let mut hung = false;
    for _ in 0..16 {
        let table = mount::mounts()?;
        if mount::find_mount(&table, path)?.is_none() {
            return Ok((hung, table));
        }
        match mount::umount2(path, MntFlags::empty(), UNMOUNT_TIMEOUT) {
            Ok(()) => {}
            Err(e) if gone(&e) => {}
            Err(Error::Sys { errno: Errno::EBUSY, .. }) => {
                tracing::info!(path = %path.display(), "busy; detaching lazily");
                mount::umount2(path, MntFlags::MNT_DETACH, UNMOUNT_TIMEOUT).or_else(|e| {
                    if gone(&e) {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })?;
            }
            Err(Error::Timeout { .. }) => {
                tracing::warn!(path = %path.display(), "unmount hung (is the cluster down?); forcing and detaching");
                hung = true;
                mount::umount2(path, MntFlags::MNT_FORCE | MntFlags::MNT_DETACH, UNMOUNT_TIMEOUT).or_else(|e| {
                    if gone(&e) {
                        Ok(())
                    } else {
                        Err(e)
                    }
                })?;
            }
            Err(e) => return Err(e.into()),
        }
    }
    let table = mount::mounts()?;
    if mount::find_mount(&table, path)?.is_some() {
        return Err(Status::failed_precondition(format!("{} still mounted after 16 unmounts", path.display())));
    }
    Ok((hung, table))
}

/// The service behind an `Arc`, so that blocking work can own it.
#[derive(Clone, Debug)]
pub struct Node(Arc<NodeService>);

impl Node {
    /// The node service for `cfg`.
    pub fn new(cfg: NodeConfig) -> Node {
        Node(Arc::new(NodeService::new(cfg)))
    }
}

#[tonic::async_trait]
impl pb::node_server::Node for Node {
    async fn node_stage_volume(
        &self,
        req: Request<pb::NodeStageVolumeRequest>,
    ) -> Result<Response<pb::NodeStageVolumeResponse>, Status> {
        let r = self.0.stage_request(req.into_inner())?;
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
        let rec = self.0.record_of(&req.volume_id)?;
        Ok(Response::new(blocking(move || blocknode::stats(&rec.staged(), &path, STATS_TIMEOUT)).await?))
    }

    async fn node_expand_volume(
        &self,
        req: Request<pb::NodeExpandVolumeRequest>,
    ) -> Result<Response<pb::NodeExpandVolumeResponse>, Status> {
        let req = req.into_inner();
        let required = blocknode::check_expand(&req)?;
        let _guard = self.0.in_flight.lock(&req.volume_id)?;
        let rec = self.0.record_of(&req.volume_id)?;
        let svc = Arc::clone(&self.0);
        let path = PathBuf::from(req.volume_path);
        let size = blocking(move || svc.expand(&rec, &path, required)).await?;
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
        Ok(Response::new(pb::NodeGetInfoResponse {
            node_id: self.0.cfg.node_id.clone(),
            max_volumes_per_node: self.0.cfg.max_volumes,
            ..Default::default()
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_image_comes_from_the_context_or_else_the_volume_id() {
        let id = VolumeId::new("c1", 2, "92837648-1431-11eb-8990-0242ac110005").unwrap().to_string();
        let t = Target::new(&id, &HashMap::new()).unwrap();
        assert_eq!(
            t,
            Target {
                cluster_id: "c1".into(),
                pool: None,
                pool_id: Some(2),
                image: "csi-vol-92837648-1431-11eb-8990-0242ac110005".into()
            }
        );
        let t = Target::new("static", &ctx(&[("clusterID", "c"), ("pool", "p"), ("imageName", "img")])).unwrap();
        assert_eq!((t.pool.as_deref(), t.image.as_str()), (Some("p"), "img"));
        let e = Target::new("garbage", &HashMap::new()).unwrap_err();
        assert_eq!(e.code(), tonic::Code::NotFound);
        assert!(Target::new("x", &ctx(&[("clusterID", "c"), ("imageName", "i")])).is_err());
    }

    #[test]
    fn map_options_follow_ceph_csis_syntax_with_our_defaults() {
        assert_eq!(krbd_options("", false), vec!["ms_mode=prefer-crc", "noshare"]);
        assert_eq!(
            krbd_options("ms_mode=secure,lock_on_read", true),
            vec!["noshare", "ms_mode=secure", "lock_on_read", "ro"]
        );
        assert_eq!(
            krbd_options("krbd:queue_depth=128;nbd:try-netlink", false),
            vec!["ms_mode=prefer-crc", "noshare", "queue_depth=128"]
        );
        assert_eq!(
            options_for("krbd:a;nbd:try-netlink,io-timeout=9", Mounter::RbdNbd),
            vec!["try-netlink", "io-timeout=9"]
        );
        assert_eq!(options_for("force", Mounter::Krbd), vec!["force"]);
    }

    #[test]
    fn unstage_after_a_machine_crash_in_a_stage_succeeds_and_leaves_no_files() {
        let d = tempfile::tempdir().unwrap();
        let state = d.path().join("state");
        let svc = NodeService::new(NodeConfig {
            node_id: "n".into(),
            state_dir: state.clone(),
            clusters: ClusterConfig::default(),
            max_volumes: 0,
        });
        // What a machine crash between the rename and the fsync can leave:
        // an empty record, and the secret.
        svc.records.save_secret_visible("v", &StageSecret { user: "u".into(), key: "K".into() }).unwrap();
        std::fs::write(state.join("v.json"), b"").unwrap();
        let staging = d.path().join("staging");
        std::fs::create_dir(&staging).unwrap();
        svc.unstage("v", &staging).unwrap();
        assert_eq!(std::fs::read_dir(&state).unwrap().count(), 0, "files left in the state dir");
    }
}
