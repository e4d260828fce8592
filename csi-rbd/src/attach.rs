//! Exclusive attach: an image is attached read-write to one node at most.
//!
//! Per image, one RADOS object `csi.rbd.attach.<image>` in the image's pool:
//!
//! - the read-write attachment is a cls_lock exclusive lock `csi-rbd-attach`
//!   on it, cookie = the node ID, description `{"node": ID}`. Whoever takes
//!   it (ControllerPublishVolume through [`publish`], or NodeStageVolume
//!   through [`claim`]) takes it for the node; a second node gets
//!   FAILED_PRECONDITION naming the holder. Any client may take it again
//!   for the same node (the controller publishes, the node stages: two
//!   librados clients, one node), so "held" means "a lock whose cookie is
//!   this node";
//! - omap key `node.<ID>` = [`NodeAttachment`]: what the node mapped, above
//!   all its client's address (`IP:0/NONCE`) as Ceph sees it: what fencing
//!   blocklists;
//! - omap key `fs` = `ext4` or `xfs` ([`filesystem`]): the filesystem a
//!   read-write stage made or mounted on the image. A hint that lets the
//!   next stage (a migration) mount without probing the device first; the
//!   mount checks the superblock itself, and a failed mount falls back to
//!   the probe. Nothing is ever formatted on the hint's word, which is
//!   why a new image's stage may write it with [`record`] before its mkfs
//!   has finished.
//!
//! Why our own object and not the image header's exclusive lock: krbd and
//! librbd take and pass that lock among themselves on every write (it is
//! cooperative: a second mapper asks for it and gets it), so it cannot say
//! "node B may not map this". cls_lock on an object only the driver uses
//! is never released behind our back.
//!
//! Read-only attachments take no lock (many readers stay possible) but are
//! refused while another node holds the image read-write: a reader would
//! see a filesystem changing under it.
//!
//! Fencing ([`unpublish`], [`fence`], `csi-rbd takeover`): a node that
//! staged and never unstaged (it died, or hangs) is blocklisted by the exact
//! client address it recorded, before its lock is broken, so that it can
//! never write again even if it comes back; the same machine after a
//! reboot has a new nonce and is not affected.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ceph::Rbd;
use serde::{Deserialize, Serialize};
use tonic::Status;

/// The cls_lock name.
pub const LOCK_NAME: &str = "csi-rbd-attach";
/// Prefix of the per-image attach object.
pub const OBJECT_PREFIX: &str = "csi.rbd.attach.";
/// Prefix of a node's omap key in it.
pub const NODE_KEY_PREFIX: &str = "node.";
/// How long a fenced client stays blocklisted. Long: a node that hung and
/// comes back must not write again; its next client has a new nonce anyway.
pub const BLOCKLIST_EXPIRE: Duration = Duration::from_secs(24 * 3600);

/// The attach object of `image`.
pub fn object(image: &str) -> String {
    format!("{OBJECT_PREFIX}{image}")
}

fn node_key(node: &str) -> String {
    format!("{NODE_KEY_PREFIX}{node}")
}

/// What a node recorded when it staged (omap `node.<ID>`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeAttachment {
    /// The node's Ceph client address for this image (`IP:0/NONCE`); empty
    /// when it could not be determined.
    pub client_addr: String,
    /// krbd or rbd-nbd.
    pub mounter: String,
    /// The device on the node.
    pub device: String,
    /// Mapped read-only.
    pub readonly: bool,
    /// When (seconds since the epoch).
    pub staged_at: u64,
}

impl NodeAttachment {
    /// A record stamped now.
    pub fn new(client_addr: &str, mounter: &str, device: &str, readonly: bool) -> NodeAttachment {
        let staged_at = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
        NodeAttachment {
            client_addr: client_addr.into(),
            mounter: mounter.into(),
            device: device.into(),
            readonly,
            staged_at,
        }
    }
}

/// A Ceph error as the gRPC status the CSI spec asks for.
pub fn status(e: ceph::Error) -> Status {
    use ceph::Error as E;
    match e {
        E::NotFound(m) => Status::not_found(m),
        E::Exists(m) => Status::already_exists(m),
        E::Busy(m) | E::Conflict(m) => Status::failed_precondition(m),
        E::PermissionDenied(m) => Status::permission_denied(m),
        E::Timeout(m) => Status::deadline_exceeded(m),
        E::NoSpace(m) => Status::resource_exhausted(m),
        E::InvalidArgument(m) => Status::invalid_argument(m),
        other => Status::internal(other.to_string()),
    }
}

/// The nodes holding the read-write lock (normally zero or one): the
/// cookies, in one round trip.
pub fn holders(rbd: &dyn Rbd, pool: &str, image: &str) -> Result<Vec<String>, Status> {
    let mut nodes: Vec<String> = rbd.lock_cookies(pool, &object(image), LOCK_NAME).map_err(status)?;
    nodes.sort();
    nodes.dedup();
    Ok(nodes)
}

fn held_elsewhere(pool: &str, image: &str, holder: &str) -> Status {
    Status::failed_precondition(format!(
        "rbd image {pool}/{image} is attached read-write to node {holder:?}: unstage it there first \
         (if node {holder:?} is dead: ControllerUnpublishVolume for it, or `csi-rbd takeover`, fences it)"
    ))
}

/// Takes the read-write attachment for `node`: Ok when taken now or
/// already held for `node`; FAILED_PRECONDITION naming the holder when
/// another node holds it.
pub fn claim(rbd: &dyn Rbd, pool: &str, image: &str, node: &str) -> Result<(), Status> {
    let oid = object(image);
    let description = serde_json::json!({ "node": node }).to_string();
    // Twice at most: the holder may release between our lock and our look.
    for _ in 0..2 {
        match rbd.lock_exclusive(pool, &oid, LOCK_NAME, node, &description) {
            Ok(()) => return Ok(()),
            // This very client holds it with this cookie already.
            Err(ceph::Error::Exists(_)) => return Ok(()),
            Err(ceph::Error::Busy(_)) => {
                let held = holders(rbd, pool, image)?;
                if held.iter().any(|h| h == node) {
                    return Ok(());
                }
                if let Some(other) = held.first() {
                    return Err(held_elsewhere(pool, image, other));
                }
            }
            Err(e) => return Err(status(e)),
        }
    }
    Err(Status::aborted(format!("rbd image {pool}/{image}: attach lock changed hands twice; retry")))
}

/// ControllerPublishVolume: [`claim`] for read-write; for read-only, a
/// check that no other node holds the image read-write.
pub fn publish(rbd: &dyn Rbd, pool: &str, image: &str, node: &str, readonly: bool) -> Result<(), Status> {
    if !readonly {
        return claim(rbd, pool, image, node);
    }
    match holders(rbd, pool, image)?.into_iter().find(|h| h != node) {
        Some(other) => Err(held_elsewhere(pool, image, &other)),
        None => Ok(()),
    }
}

/// NodeStageVolume's look before it maps a read-write stage: Ok(true) when
/// `node` holds the read-write attachment already (in a CO's flow
/// ControllerPublishVolume claimed it, from the controller's client),
/// Ok(false) when nobody does, FAILED_PRECONDITION naming the holder
/// otherwise. One round trip. A stage refused here maps nothing: the
/// kernel's map of an image with `object-map` reads the partition table,
/// which takes the image's exclusive lock from its owner, and from a dead
/// owner whose watch has not expired yet only after that watch times out
/// (30 s), then blocklisting it: a refused node must not do either.
pub fn held_here(rbd: &dyn Rbd, pool: &str, image: &str, node: &str) -> Result<bool, Status> {
    let held = holders(rbd, pool, image)?;
    if held.iter().any(|h| h == node) {
        return Ok(true);
    }
    match held.first() {
        Some(other) => Err(held_elsewhere(pool, image, other)),
        None => Ok(false),
    }
}

/// NodeStageVolume's claim, after [`held_here`] (`held`: its answer; a
/// read-write stage it found held here needs nothing more). Otherwise as
/// [`publish`]: the lock for read-write (a node that took it since the
/// look is named), the check that no other node holds it for read-only.
pub fn claim_at_stage(
    rbd: &dyn Rbd,
    pool: &str,
    image: &str,
    node: &str,
    readonly: bool,
    held: bool,
) -> Result<(), Status> {
    if readonly {
        return publish(rbd, pool, image, node, true);
    }
    if held {
        return Ok(());
    }
    claim(rbd, pool, image, node)
}

/// NodeStageVolume, once mapped: records what `node` mapped, and with
/// `fs` the image's filesystem hint ([`remember_filesystem`]) in the same
/// write.
pub fn record(
    rbd: &dyn Rbd,
    pool: &str,
    image: &str,
    node: &str,
    a: &NodeAttachment,
    fs: Option<&str>,
) -> Result<(), Status> {
    let v = serde_json::to_vec(a).map_err(|e| Status::internal(format!("encode attachment: {e}")))?;
    let key = node_key(node);
    let mut entries: Vec<(&str, &[u8])> = vec![(&key, &v)];
    if let Some(fs) = fs {
        entries.push((FS_KEY, fs.as_bytes()));
    }
    rbd.omap_set(pool, &object(image), &entries, &ceph::Guard::None).map_err(status)
}

/// The omap key of the filesystem hint in the attach object.
pub const FS_KEY: &str = "fs";

/// The filesystem a read-write stage last made or mounted on the image,
/// if one recorded it (see the module's doc: a hint, checked by the mount).
pub fn filesystem(rbd: &dyn Rbd, pool: &str, image: &str) -> Result<Option<String>, Status> {
    let m = rbd.omap_get(pool, &object(image), &[FS_KEY]).map_err(status)?;
    Ok(m.get(FS_KEY).and_then(|v| String::from_utf8(v.clone()).ok()))
}

/// Records `fs` as the image's filesystem (after a read-write stage made
/// or mounted it).
pub fn remember_filesystem(rbd: &dyn Rbd, pool: &str, image: &str, fs: &str) -> Result<(), Status> {
    rbd.omap_set(pool, &object(image), &[(FS_KEY, fs.as_bytes())], &ceph::Guard::None).map_err(status)
}

/// What `node` recorded, if anything.
pub fn recorded(rbd: &dyn Rbd, pool: &str, image: &str, node: &str) -> Result<Option<NodeAttachment>, Status> {
    let key = node_key(node);
    let m = rbd.omap_get(pool, &object(image), &[&key]).map_err(status)?;
    Ok(m.get(&key).map(|v| serde_json::from_slice(v).unwrap_or_default()))
}

/// The nodes the image is attached to: those holding the read-write lock
/// and those with a stage record (read-only readers too), sorted. What
/// ListVolumes reports as `published_node_ids`.
pub fn nodes(rbd: &dyn Rbd, pool: &str, image: &str) -> Result<Vec<String>, Status> {
    let mut out = holders(rbd, pool, image)?;
    let mut after = String::new();
    loop {
        let page = rbd.omap_list(pool, &object(image), &after, 256).map_err(status)?;
        let Some((last, _)) = page.last() else {
            break;
        };
        after = last.clone();
        let full = page.len() < 256;
        out.extend(page.into_iter().filter_map(|(k, _)| k.strip_prefix(NODE_KEY_PREFIX).map(str::to_string)));
        if full {
            break;
        }
    }
    out.sort();
    out.dedup();
    Ok(out)
}

/// Breaks every lock held for `node`; returns how many.
fn break_locks(rbd: &dyn Rbd, pool: &str, image: &str, node: &str) -> Result<usize, Status> {
    let oid = object(image);
    let mine: Vec<ceph::Locker> =
        rbd.lockers(pool, &oid, LOCK_NAME).map_err(status)?.into_iter().filter(|l| l.cookie == node).collect();
    for l in &mine {
        rbd.break_lock(pool, &oid, LOCK_NAME, &l.client, &l.cookie).map_err(status)?;
    }
    Ok(mine.len())
}

/// NodeUnstageVolume, once unmapped: forgets `node`'s record and releases
/// its lock.
/// The record's removal and the lock's lookup and break are independent
/// and run side by side (two round trips on the unstage's path, not three).
pub fn release(rbd: &dyn Rbd, pool: &str, image: &str, node: &str) -> Result<(), Status> {
    let oid = object(image);
    let key = node_key(node);
    let (forgotten, broken) = std::thread::scope(|s| {
        let forget = s.spawn(|| rbd.omap_remove(pool, &oid, &[&key]).map_err(status));
        let broken = break_locks(rbd, pool, image, node);
        (forget.join().unwrap_or_else(|_| Err(Status::internal("remove the attachment record: panicked"))), broken)
    });
    forgotten.and(broken.map(drop))
}

/// What [`fence`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Fenced {
    /// The client address blocklisted, if the node had recorded one.
    pub blocklisted: Option<String>,
    /// Locks broken.
    pub locks_broken: usize,
}

/// Takes the image away from `node`: if it staged and never unstaged, its
/// recorded client address is blocklisted first (it can never write to the
/// image again), then its lock is broken and its record removed. A node
/// that unstaged cleanly left nothing: nothing is done. Idempotent.
pub fn fence(rbd: &dyn Rbd, pool: &str, image: &str, node: &str) -> Result<Fenced, Status> {
    let mut done = Fenced::default();
    if let Some(a) = recorded(rbd, pool, image, node)? {
        if !a.client_addr.is_empty() {
            rbd.blocklist_add(&a.client_addr, BLOCKLIST_EXPIRE).map_err(status)?;
            tracing::warn!(pool, image, node, client = %a.client_addr, "fenced: client blocklisted");
            done.blocklisted = Some(a.client_addr);
        }
    }
    done.locks_broken = break_locks(rbd, pool, image, node)?;
    rbd.omap_remove(pool, &object(image), &[&node_key(node)]).map_err(status)?;
    Ok(done)
}

/// ControllerUnpublishVolume: [`fence`] (a no-op when the node unstaged).
pub fn unpublish(rbd: &dyn Rbd, pool: &str, image: &str, node: &str) -> Result<(), Status> {
    fence(rbd, pool, image, node).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert_eq!(object("csi-vol-1"), "csi.rbd.attach.csi-vol-1");
        assert_eq!(node_key("a"), "node.a");
        let a = NodeAttachment::new("10.0.0.1:0/123", "krbd", "/dev/rbd0", false);
        let j = serde_json::to_string(&a).unwrap();
        assert!(j.contains("\"client_addr\":\"10.0.0.1:0/123\""), "{j}");
        assert!(a.staged_at > 0);
    }
}
