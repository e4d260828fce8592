//! The blocking bodies of the controller's RPCs: journal and images,
//! through one cluster connection. Each is a sequence of idempotent steps,
//! so a retry after a crash anywhere finishes the work (see
//! [`crate::journal`]).
//!
//! Snapshots and clones are copy-on-write (clone v2), as in ceph-csi:
//! - CreateSnapshot: a temporary snapshot `csi-tmp-<uuid>` of the source →
//!   clone `csi-snap-<uuid>` → remove the temporary snapshot (librbd keeps
//!   it in the trash namespace while the clone needs it) → snapshot
//!   `csi-snap-<uuid>@csi-snap-<uuid>`.
//! - CreateVolume from a snapshot: clone the snapshot image's snapshot.
//! - CreateVolume from a volume: temporary snapshot of the source → clone →
//!   remove the temporary snapshot.
//!
//! A new image whose chain (its number of ancestors) would exceed
//! `--max-clone-depth` is flattened before the call returns, so no chain is
//! ever longer. Deleting an image that has clones flattens them first
//! ([`flatten_children`]): no delete is blocked by a child and no child is
//! broken; librbd's flatten copies only the objects the child lacks, so a
//! delete killed in the middle continues where it stopped when retried.

use std::time::{Duration, Instant, SystemTime};

use ceph::{ImageInfo, ImageOptions, Rbd};
use csi_core::pb;
use csi_core::validate::{self, Capacity};
use csi_core::Error;
use tracing::{info, warn};

use crate::connection::ceph_err;
use crate::journal::{self, Entry, CONTENT_SOURCE_KEY, SNAPSHOTS, SOURCE_KEY, VOLUMES};
use crate::params::{CreateParams, SnapshotParams};
use crate::volume_id::VolumeId;

/// Prefix of the temporary snapshots made on a source for a clone or a snapshot.
pub const TMP_SNAP_PREFIX: &str = "csi-tmp-";

/// Sizes are rounded up to this (as ceph-csi does), unless the limit forbids it.
pub const SIZE_ROUND: u64 = 1 << 20;
/// ... then to this.
pub const SIZE_ROUND_MIN: u64 = 4096;
/// The size of a volume whose request names none.
pub const DEFAULT_SIZE: u64 = 1 << 30;

/// The image size for a capacity range: the wanted size rounded up to 1 MiB
/// (4 KiB if the limit forbids that), at least `min`.
pub fn pick_size(cap: &Capacity, min: u64) -> Result<u64, Error> {
    let want = cap.required.or(cap.limit).unwrap_or(DEFAULT_SIZE).max(min).max(SIZE_ROUND_MIN);
    for round in [SIZE_ROUND, SIZE_ROUND_MIN] {
        let size = want.div_ceil(round) * round;
        if cap.check(size).is_ok() {
            return Ok(size);
        }
    }
    Err(validate::out_of_range(format!(
        "no size that RBD can store (a multiple of {SIZE_ROUND_MIN} bytes, at least {min}) is within {cap}"
    )))
}

/// A pool's name from the pool ID of a volume or snapshot ID.
pub fn pool_name(rbd: &dyn Rbd, id: &VolumeId) -> Result<Option<String>, Error> {
    match rbd.pool_name(id.pool_id) {
        Ok(p) => Ok(Some(p)),
        Err(ceph::Error::NotFound(_)) => Ok(None),
        Err(e) => Err(ceph_err(e)),
    }
}

fn pool_id(rbd: &dyn Rbd, pool: &str) -> Result<i64, Error> {
    rbd.pool_id(pool).map_err(|e| match e {
        ceph::Error::NotFound(_) => Error::InvalidArgument(format!("pool {pool:?} does not exist")),
        e => ceph_err(e),
    })
}

fn info_opt(rbd: &dyn Rbd, pool: &str, image: &str) -> Result<Option<ImageInfo>, Error> {
    match rbd.image_info(pool, image) {
        Ok(i) => Ok(Some(i)),
        Err(ceph::Error::NotFound(_)) => Ok(None),
        Err(e) => Err(ceph_err(e)),
    }
}

fn ok_if<T>(r: ceph::Result<T>, pred: fn(&ceph::Error) -> bool) -> Result<(), Error> {
    match r {
        Ok(_) => Ok(()),
        Err(e) if pred(&e) => Ok(()),
        Err(e) => Err(ceph_err(e)),
    }
}

/// A status from `crate::attach` as this crate's error, keeping its code.
fn status_err(s: tonic::Status) -> Error {
    let m = s.message().to_string();
    match s.code() {
        tonic::Code::NotFound => Error::NotFound(m),
        tonic::Code::FailedPrecondition => Error::FailedPrecondition(m),
        tonic::Code::PermissionDenied => Error::PermissionDenied(m),
        tonic::Code::DeadlineExceeded | tonic::Code::Unavailable => Error::Unavailable(m),
        tonic::Code::InvalidArgument => Error::InvalidArgument(m),
        tonic::Code::ResourceExhausted => Error::ResourceExhausted(m),
        _ => Error::Internal(m),
    }
}

fn exists(e: &ceph::Error) -> bool {
    matches!(e, ceph::Error::Exists(_))
}

fn not_found(e: &ceph::Error) -> bool {
    matches!(e, ceph::Error::NotFound(_))
}

/// The number of ancestors of `pool/image` (0: not a clone).
pub fn ancestors(rbd: &dyn Rbd, pool: &str, image: &str) -> Result<u32, Error> {
    let (mut pool, mut image) = (pool.to_string(), image.to_string());
    let mut n = 0;
    while let Some(parent) = rbd.image_info(&pool, &image).map_err(ceph_err)?.parent {
        n += 1;
        if n > 64 {
            return Err(Error::Internal(format!("image {pool}/{image}: a clone chain longer than 64")));
        }
        (pool, image) = (parent.pool, parent.image);
    }
    Ok(n)
}

/// Flattens `pool/image` if its chain is longer than `max_depth`.
fn flatten_past(rbd: &dyn Rbd, pool: &str, image: &str, max_depth: u32) -> Result<(), Error> {
    let depth = ancestors(rbd, pool, image)?;
    if depth > max_depth {
        let started = std::time::Instant::now();
        rbd.flatten_image(pool, image).map_err(ceph_err)?;
        info!(pool, image, depth, max_depth, ms = started.elapsed().as_millis() as u64, "clone flattened");
    }
    Ok(())
}

/// Flattens every clone of `pool/image` (of any of its snapshots, trashed
/// ones included), so the image can go without breaking them.
fn flatten_children(rbd: &dyn Rbd, pool: &str, image: &str) -> Result<(), Error> {
    let children = match rbd.all_children(pool, image) {
        Ok(c) => c,
        Err(ceph::Error::NotFound(_)) => return Ok(()),
        Err(e) => return Err(ceph_err(e)),
    };
    for (cpool, child) in children {
        let started = std::time::Instant::now();
        info!(pool, image, child_pool = cpool, child, "flattening a child before the delete");
        match rbd.flatten_image(&cpool, &child) {
            // Gone or flattened meanwhile: nothing depends on us any more.
            Ok(()) | Err(ceph::Error::NotFound(_)) | Err(ceph::Error::InvalidArgument(_)) => {}
            Err(e) => return Err(ceph_err(e)),
        }
        info!(pool, image, child_pool = cpool, child, ms = started.elapsed().as_millis() as u64, "child flattened");
    }
    Ok(())
}

/// A clone needs layering; the other features as requested.
fn clone_options(p: &CreateParams) -> ImageOptions {
    let mut features = p.features.clone();
    if !features.iter().any(|f| f == "layering") {
        features.insert(0, "layering".to_string());
    }
    ImageOptions { features, data_pool: p.data_pool.clone(), order: None }
}

pub use csi_core::source::{content_source_from, content_source_key};

/// A resolved content source: the image (and snapshot) to clone from.
#[derive(Debug)]
enum Source {
    None,
    /// Clone this snapshot image's snapshot of the same name.
    Snapshot {
        pool: String,
        image: String,
        size: u64,
    },
    /// Clone this volume's image through a temporary snapshot.
    Volume {
        pool: String,
        image: String,
        size: u64,
    },
}

fn resolve_source(rbd: &dyn Rbd, cluster_id: &str, key: &str) -> Result<Source, Error> {
    let Some((kind, id)) = key.split_once(':') else { return Ok(Source::None) };
    let what = if kind == "snapshot" { "snapshot" } else { "source volume" };
    let nf = || Error::NotFound(format!("{what} {id:?} not found"));
    let vid = VolumeId::parse(id).map_err(|_| nf())?;
    if vid.cluster_id != cluster_id {
        return Err(Error::InvalidArgument(format!(
            "{what} {id:?} is in cluster {:?}, the new volume in {cluster_id:?}: csi-rbd clones within a cluster",
            vid.cluster_id
        )));
    }
    let pool = pool_name(rbd, &vid)?.ok_or_else(nf)?;
    let jkind = if kind == "snapshot" { SNAPSHOTS } else { VOLUMES };
    let entry = journal::get_uuid(rbd, &pool, jkind, &vid.uuid).map_err(ceph_err)?.ok_or_else(nf)?;
    if entry.image_id.is_none() {
        return Err(Error::NotFound(format!("{what} {id:?} is not complete yet")));
    }
    let info = info_opt(rbd, &pool, &entry.image)?.ok_or_else(nf)?;
    Ok(if kind == "snapshot" {
        Source::Snapshot { pool, image: entry.image, size: info.size }
    } else {
        Source::Volume { pool, image: entry.image, size: info.size }
    })
}

/// The volume a request gets back.
pub struct Made {
    pub volume: pb::Volume,
    pub pool: String,
}

/// CreateVolume's body.
pub fn create_volume(
    rbd: &dyn Rbd,
    name: &str,
    p: &CreateParams,
    cap: Capacity,
    source_key: &str,
    max_depth: u32,
) -> Result<Made, Error> {
    let pool_id = pool_id(rbd, &p.pool)?;
    let source = resolve_source(rbd, &p.cluster_id, source_key)?;
    let src_size = match &source {
        Source::None => 0,
        Source::Snapshot { size, .. } | Source::Volume { size, .. } => *size,
    };
    if cap.limit.is_some_and(|l| l < src_size) {
        return Err(validate::out_of_range(format!(
            "the content source has {src_size} bytes, more than the limit {cap}"
        )));
    }
    let size = pick_size(&cap, src_size)?;
    // The journal stores no empty values: no source, no key (read back as "").
    let attrs: Vec<(&str, &str)> =
        if source_key.is_empty() { Vec::new() } else { vec![(CONTENT_SOURCE_KEY, source_key)] };
    let entry = match journal::lookup(rbd, &p.pool, VOLUMES, name, &p.volume_prefix, &attrs).map_err(ceph_err)? {
        Some(e) => e,
        None => journal::reserve(rbd, &p.pool, VOLUMES, name, &p.volume_prefix, &attrs).map_err(ceph_err)?,
    };
    let had = entry.attrs.get(CONTENT_SOURCE_KEY).map(String::as_str).unwrap_or("");
    if had != source_key {
        return Err(validate::already_exists("volume", name, &format!("it was created from {had:?}")));
    }
    let image = entry.image.clone();
    let info = match info_opt(rbd, &p.pool, &image)? {
        Some(info) if entry.image_id.is_some() => {
            // Complete: a retry. Same request only if the size fits.
            if cap.check(info.size).is_err() {
                return Err(validate::already_exists(
                    "volume",
                    name,
                    &format!("it has {} bytes, outside {cap}", info.size),
                ));
            }
            info
        }
        found => {
            match (&found, &source) {
                (None, _) => {}
                (Some(_), Source::None) => info!(name, image, "adopting the image of an interrupted CreateVolume"),
                (Some(_), _) => {
                    // A clone cut short may be half made (librbd creates the
                    // image, then links its parent) or half flattened; it was
                    // never returned (the entry has no mark), so nobody uses
                    // it: start it again.
                    warn!(name, image, "discarding the unfinished clone of an interrupted CreateVolume");
                    discard_clone(rbd, &p.pool, &image, &entry.uuid, &source, STALE_WATCH_WAIT)?;
                }
            }
            if found.is_none() || !matches!(source, Source::None) {
                make_image(rbd, &p.pool, &image, &entry.uuid, size, p, &source)?;
            }
            finish_image(rbd, &p.pool, &image, &entry.uuid, size, &source, max_depth)?
        }
    };
    if entry.image_id.is_none() {
        journal::mark_complete(rbd, &p.pool, VOLUMES, &entry.uuid, &info.id).map_err(ceph_err)?;
    }
    let id = VolumeId::new(&p.cluster_id, pool_id, &entry.uuid).map_err(|e| Error::Internal(e.to_string()))?;
    Ok(Made {
        volume: pb::Volume {
            volume_id: id.to_string(),
            capacity_bytes: info.size as i64,
            volume_context: p.volume_context(&image),
            content_source: content_source_from(source_key),
            accessible_topology: Vec::new(),
        },
        pool: p.pool.clone(),
    })
}

fn make_image(
    rbd: &dyn Rbd,
    pool: &str,
    image: &str,
    uuid: &str,
    size: u64,
    p: &CreateParams,
    source: &Source,
) -> Result<(), Error> {
    match source {
        Source::None => {
            let opts = ImageOptions { features: p.features.clone(), data_pool: p.data_pool.clone(), order: None };
            ok_if(rbd.create_image(pool, image, size, &opts), exists)
        }
        Source::Snapshot { pool: sp, image: simg, .. } => {
            ok_if(rbd.clone_image(sp, simg, simg, pool, image, &clone_options(p)), exists)
        }
        Source::Volume { pool: sp, image: simg, .. } => {
            let tmp = format!("{TMP_SNAP_PREFIX}{uuid}");
            ok_if(rbd.snap_create(sp, simg, &tmp), exists)?;
            ok_if(rbd.clone_image(sp, simg, &tmp, pool, image, &clone_options(p)), exists)
        }
    }
}

/// How long a discard waits for the watch of an interrupted CreateVolume's
/// client to go: the OSD drops a dead client's watch after
/// `osd_client_watch_timeout` (30 s by default), plus a margin.
pub const STALE_WATCH_WAIT: Duration = Duration::from_secs(35);

/// Removes an unfinished clone and the temporary snapshot it was cloned from.
///
/// The clone was never returned (its journal entry has no completion mark),
/// so no node maps it: a client still watching it is the controller that was
/// making it. librbd's remove cannot take the exclusive lock from that client
/// while its watch stands (EBUSY after ~10 s). A dead controller's watch
/// lapses at the OSD's watch timeout, and librbd then breaks its lock itself;
/// so the discard waits for the watchers to go, bounded by `wait`. A watch
/// that outlives the bound belongs to a live controller still at work on the
/// same name: ABORTED (an operation for this volume is in progress), and
/// nothing is touched.
fn discard_clone(
    rbd: &dyn Rbd,
    pool: &str,
    image: &str,
    uuid: &str,
    source: &Source,
    wait: Duration,
) -> Result<(), Error> {
    let deadline = Instant::now() + wait;
    let mut pause = Duration::from_millis(50);
    loop {
        let watchers = match rbd.image_watchers(pool, image) {
            Ok(w) => w,
            Err(ceph::Error::NotFound(_)) => break,
            Err(e) => return Err(ceph_err(e)),
        };
        if watchers.is_empty() {
            break;
        }
        let who: Vec<&str> = watchers.iter().map(|w| w.address.as_str()).collect();
        if Instant::now() >= deadline {
            return Err(Error::Aborted(format!(
                "image {pool}/{image} of an unfinished CreateVolume is still open by {} after {} s: \
                 another controller is still creating this volume; retry later",
                who.join(", "),
                wait.as_secs()
            )));
        }
        info!(pool, image, watchers = ?who, "waiting for the interrupted CreateVolume's watch to lapse");
        std::thread::sleep(pause.min(deadline.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(500));
    }
    ok_if(rbd.remove_image(pool, image), not_found)?;
    if let Source::Volume { pool: sp, image: simg, .. } = source {
        ok_if(rbd.snap_remove(sp, simg, &format!("{TMP_SNAP_PREFIX}{uuid}")), not_found)?;
    }
    Ok(())
}

/// Flattens a clone whose chain is longer than `max_depth`, drops the
/// temporary snapshot of a volume source (into the trash namespace while
/// the clone needs it), and grows the image to `size`: every step idempotent.
fn finish_image(
    rbd: &dyn Rbd,
    pool: &str,
    image: &str,
    uuid: &str,
    size: u64,
    source: &Source,
    max_depth: u32,
) -> Result<ImageInfo, Error> {
    flatten_past(rbd, pool, image, max_depth)?;
    let info = rbd.image_info(pool, image).map_err(ceph_err)?;
    if let Source::Volume { pool: sp, image: simg, .. } = source {
        ok_if(rbd.snap_remove(sp, simg, &format!("{TMP_SNAP_PREFIX}{uuid}")), not_found)?;
    }
    if info.size < size {
        rbd.resize_image(pool, image, size).map_err(ceph_err)?;
    }
    rbd.image_info(pool, image).map_err(ceph_err)
}

/// DeleteVolume's body: watchers refuse it; an ID not in the journal is a
/// volume already gone (or never ours): nothing is touched.
pub fn delete_volume(rbd: &dyn Rbd, id: &VolumeId) -> Result<(), Error> {
    let Some(pool) = pool_name(rbd, id)? else {
        warn!(volume_id = %id, "DeleteVolume: the pool is gone: nothing to delete");
        return Ok(());
    };
    let Some(entry) = journal::get_uuid(rbd, &pool, VOLUMES, &id.uuid).map_err(ceph_err)? else {
        info!(volume_id = %id, pool, "DeleteVolume: not in the journal: already deleted, nothing touched");
        return Ok(());
    };
    // Published (ControllerPublishVolume or a stage holds the attach lock):
    // the CO unpublishes first; a dead node is fenced by that unpublish.
    let holders = crate::attach::holders(rbd, &pool, &entry.image).map_err(status_err)?;
    if !holders.is_empty() {
        return Err(Error::FailedPrecondition(format!(
            "image {pool}/{} is attached read-write to node(s) {holders:?}: unpublish it first",
            entry.image
        )));
    }
    remove_image_checked(rbd, &pool, &entry.image, &entry.uuid)?;
    // The attach object (h3's records) goes with its image.
    ok_if(rbd.remove_object(&pool, &crate::attach::object(&entry.image)), not_found)?;
    journal::remove(rbd, &pool, VOLUMES, &entry).map_err(ceph_err)?;
    info!(volume_id = %id, pool, image = entry.image, "volume deleted");
    Ok(())
}

/// Removes an image unless a client has it open or mapped (FAILED_PRECONDITION
/// naming the watchers). Its clones are flattened first; its snapshots of
/// ours (temporary ones, a snapshot image's own) go with it.
fn remove_image_checked(rbd: &dyn Rbd, pool: &str, image: &str, uuid: &str) -> Result<(), Error> {
    let watchers = match rbd.image_watchers(pool, image) {
        Ok(w) => w,
        Err(ceph::Error::NotFound(_)) => return Ok(()),
        Err(e) => return Err(ceph_err(e)),
    };
    if !watchers.is_empty() {
        let who: Vec<&str> = watchers.iter().map(|w| w.address.as_str()).collect();
        return Err(Error::FailedPrecondition(format!(
            "image {pool}/{image} is in use (mapped or open) by {}: not deleted",
            who.join(", ")
        )));
    }
    flatten_children(rbd, pool, image)?;
    for s in rbd.snap_list(pool, image).map_err(ceph_err)? {
        if s.name.starts_with(TMP_SNAP_PREFIX) || s.name.ends_with(uuid) {
            if !rbd.children(pool, image, &s.name).map_err(ceph_err)?.is_empty() {
                return Err(Error::FailedPrecondition(format!(
                    "image {pool}/{image}: snapshot {} has clones in progress: retry later",
                    s.name
                )));
            }
            ok_if(rbd.snap_remove(pool, image, &s.name), not_found)?;
        }
    }
    match rbd.remove_image(pool, image) {
        Ok(()) | Err(ceph::Error::NotFound(_)) => Ok(()),
        Err(ceph::Error::Busy(m)) => {
            Err(Error::FailedPrecondition(format!("image {pool}/{image} cannot be removed now: {m}")))
        }
        Err(e) => Err(ceph_err(e)),
    }
}

/// The volume of an ID, if it exists: (pool, entry, image info).
pub fn find_volume(rbd: &dyn Rbd, id: &VolumeId) -> Result<Option<(String, Entry, ImageInfo)>, Error> {
    let Some(pool) = pool_name(rbd, id)? else { return Ok(None) };
    let Some(entry) = journal::get_uuid(rbd, &pool, VOLUMES, &id.uuid).map_err(ceph_err)? else {
        return Ok(None);
    };
    let Some(info) = info_opt(rbd, &pool, &entry.image)? else { return Ok(None) };
    Ok(Some((pool, entry, info)))
}

/// ControllerExpandVolume's body: the new size (never shrinks).
pub fn expand_volume(rbd: &dyn Rbd, id: &VolumeId, cap: &Capacity) -> Result<u64, Error> {
    let (pool, entry, info) = find_volume(rbd, id)?.ok_or_else(|| validate::volume_not_found(&id.to_string()))?;
    let size = pick_size(cap, 0)?;
    if info.size >= size {
        return Ok(info.size);
    }
    rbd.resize_image(&pool, &entry.image, size).map_err(ceph_err)?;
    info!(volume_id = %id, from = info.size, to = size, "volume expanded");
    Ok(size)
}

/// The snapshot a request gets back.
pub fn snapshot_message(
    cluster_id: &str,
    pool_id: i64,
    entry: &Entry,
    size: u64,
    created: SystemTime,
) -> Result<pb::Snapshot, Error> {
    let id = VolumeId::new(cluster_id, pool_id, &entry.uuid).map_err(|e| Error::Internal(e.to_string()))?;
    let source = entry.attrs.get(SOURCE_KEY).map(String::as_str).unwrap_or("");
    // The source image's name ends with its UUID (any prefix).
    let source_volume_id = source
        .get(source.len().saturating_sub(36)..)
        .and_then(|u| VolumeId::new(cluster_id, pool_id, u).ok())
        .map(|v| v.to_string())
        .unwrap_or_default();
    let d = created.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    Ok(pb::Snapshot {
        size_bytes: size as i64,
        snapshot_id: id.to_string(),
        source_volume_id,
        creation_time: Some(prost_types::Timestamp { seconds: d.as_secs() as i64, nanos: d.subsec_nanos() as i32 }),
        ready_to_use: true,
        group_snapshot_id: String::new(),
    })
}

/// CreateSnapshot's body.
pub fn create_snapshot(
    rbd: &dyn Rbd,
    name: &str,
    src: &VolumeId,
    sp: &SnapshotParams,
    max_depth: u32,
) -> Result<(String, pb::Snapshot), Error> {
    let nf = || Error::NotFound(format!("source volume {:?} not found", src.to_string()));
    let pool = pool_name(rbd, src)?.ok_or_else(nf)?;
    let src_entry = journal::get_uuid(rbd, &pool, VOLUMES, &src.uuid).map_err(ceph_err)?.ok_or_else(nf)?;
    info_opt(rbd, &pool, &src_entry.image)?.ok_or_else(nf)?;
    let attrs = [(SOURCE_KEY, src_entry.image.as_str())];
    let entry = match journal::lookup(rbd, &pool, SNAPSHOTS, name, &sp.snapshot_prefix, &attrs).map_err(ceph_err)? {
        Some(e) => e,
        None => journal::reserve(rbd, &pool, SNAPSHOTS, name, &sp.snapshot_prefix, &attrs).map_err(ceph_err)?,
    };
    let had = entry.attrs.get(SOURCE_KEY).map(String::as_str).unwrap_or("");
    if had != src_entry.image {
        return Err(validate::already_exists("snapshot", name, &format!("it is a snapshot of image {had:?}")));
    }
    let image = entry.image.clone();
    if entry.image_id.is_none() {
        let tmp = format!("{TMP_SNAP_PREFIX}{}", entry.uuid);
        if info_opt(rbd, &pool, &image)?.is_some() {
            // Cut short earlier (see create_volume): never returned, start again.
            warn!(name, image, "discarding the unfinished snapshot image of an interrupted CreateSnapshot");
            // Killed after its snapshot was made: nothing was cloned from it
            // (the entry has no mark), so it goes with the image.
            ok_if(rbd.snap_remove(&pool, &image, &image), not_found)?;
            ok_if(rbd.remove_image(&pool, &image), not_found)?;
            ok_if(rbd.snap_remove(&pool, &src_entry.image, &tmp), not_found)?;
        }
        {
            ok_if(rbd.snap_create(&pool, &src_entry.image, &tmp), exists)?;
            let opts =
                ImageOptions { features: vec!["layering".into(), "deep-flatten".into()], data_pool: None, order: None };
            ok_if(rbd.clone_image(&pool, &src_entry.image, &tmp, &pool, &image, &opts), exists)?;
        }
        flatten_past(rbd, &pool, &image, max_depth)?;
        let info = rbd.image_info(&pool, &image).map_err(ceph_err)?;
        ok_if(rbd.snap_remove(&pool, &src_entry.image, &tmp), not_found)?;
        ok_if(rbd.snap_create(&pool, &image, &image), exists)?;
        journal::mark_complete(rbd, &pool, SNAPSHOTS, &entry.uuid, &info.id).map_err(ceph_err)?;
    }
    let pool_id = pool_id(rbd, &pool)?;
    let snap = rbd
        .snap_list(&pool, &image)
        .map_err(ceph_err)?
        .into_iter()
        .find(|s| s.name == image)
        .ok_or_else(|| Error::Internal(format!("snapshot {pool}/{image}@{image} vanished")))?;
    Ok((pool, snapshot_message(&src.cluster_id, pool_id, &entry, snap.size, snap.created)?))
}

/// One snapshot by ID, if it exists and is complete.
pub fn find_snapshot(rbd: &dyn Rbd, id: &VolumeId) -> Result<Option<pb::Snapshot>, Error> {
    let Some(pool) = pool_name(rbd, id)? else { return Ok(None) };
    let Some(entry) = journal::get_uuid(rbd, &pool, SNAPSHOTS, &id.uuid).map_err(ceph_err)? else {
        return Ok(None);
    };
    if entry.image_id.is_none() {
        return Ok(None);
    }
    let snaps = match rbd.snap_list(&pool, &entry.image) {
        Ok(s) => s,
        Err(ceph::Error::NotFound(_)) => return Ok(None),
        Err(e) => return Err(ceph_err(e)),
    };
    let Some(s) = snaps.into_iter().find(|s| s.name == entry.image) else { return Ok(None) };
    Ok(Some(snapshot_message(&id.cluster_id, id.pool_id, &entry, s.size, s.created)?))
}

/// DeleteSnapshot's body: the snapshot image, any temporary snapshot left
/// on the source by an interrupted CreateSnapshot, then the journal entry.
pub fn delete_snapshot(rbd: &dyn Rbd, id: &VolumeId) -> Result<(), Error> {
    let Some(pool) = pool_name(rbd, id)? else { return Ok(()) };
    let Some(entry) = journal::get_uuid(rbd, &pool, SNAPSHOTS, &id.uuid).map_err(ceph_err)? else {
        info!(snapshot_id = %id, "DeleteSnapshot: not in the journal: already deleted, nothing touched");
        return Ok(());
    };
    remove_image_checked(rbd, &pool, &entry.image, &entry.uuid)?;
    if let Some(src) = entry.attrs.get(SOURCE_KEY) {
        match rbd.snap_remove(&pool, src, &format!("{TMP_SNAP_PREFIX}{}", entry.uuid)) {
            Ok(()) | Err(ceph::Error::NotFound(_)) => {}
            Err(e) => return Err(ceph_err(e)),
        }
    }
    journal::remove(rbd, &pool, SNAPSHOTS, &entry).map_err(ceph_err)?;
    info!(snapshot_id = %id, pool, image = entry.image, "snapshot deleted");
    Ok(())
}

/// Every complete entry of a journal in `pool`: (uuid, entry).
pub fn list_entries(rbd: &dyn Rbd, pool: &str, kind: journal::Kind) -> Result<Vec<Entry>, Error> {
    let mut out = Vec::new();
    let mut after = String::new();
    loop {
        let page = journal::list(rbd, pool, kind, &after, 256).map_err(ceph_err)?;
        let Some((last, _)) = page.last().cloned() else { break };
        for (_, uuid) in &page {
            if let Some(e) = journal::get_uuid(rbd, pool, kind, uuid).map_err(ceph_err)? {
                if e.image_id.is_some() {
                    out.push(e);
                }
            }
        }
        after = last;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_to_a_mebibyte_unless_the_limit_forbids_it() {
        let c = |required, limit| Capacity { required, limit };
        assert_eq!(pick_size(&c(None, None), 0).unwrap(), DEFAULT_SIZE);
        assert_eq!(pick_size(&c(Some(1), None), 0).unwrap(), SIZE_ROUND);
        assert_eq!(pick_size(&c(Some(SIZE_ROUND + 1), None), 0).unwrap(), 2 * SIZE_ROUND);
        assert_eq!(pick_size(&c(Some(5000), Some(10000)), 0).unwrap(), 8192);
        assert_eq!(pick_size(&c(None, Some(3 << 20)), 0).unwrap(), 3 << 20);
        assert_eq!(pick_size(&c(Some(10), None), 5 << 20).unwrap(), 5 << 20, "at least the source");
        assert!(matches!(pick_size(&c(Some(4097), Some(4100)), 0), Err(Error::OutOfRange(_))));
    }
}
