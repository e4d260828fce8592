//! The journal: which image serves which CSI name, kept in RADOS omaps in
//! the volume's pool with ceph-csi's object and key names, so volumes made
//! by ceph-csi are found by csi-rbd and the other way round.
//!
//! ```text
//! csi.volumes.default          csi.volume.<CSI name> = <uuid>
//! csi.volume.<uuid>            csi.volname = <CSI name>, csi.imagename = csi-vol-<uuid>,
//!                              csi.imageid = <RBD image ID, once the image is complete>
//! csi.snaps.default            csi.snap.<CSI name> = <uuid>
//! csi.snap.<uuid>              csi.snapname = <CSI name>, csi.imagename = csi-snap-<uuid>,
//!                              csi.source = <source image name>, csi.imageid = ...
//! ```
//!
//! (ceph-csi may write `<pool ID hex>/<uuid>` as the directory value when
//! the journal and the image are in different pools; csi-rbd reads the
//! UUID from either form and always writes the plain one.)
//!
//! Reservation, atomic across controllers and crash-safe:
//! 1. the name's key in the directory is written with a guard that it is
//!    absent (`Guard::Absent`): of two controllers racing for one name one
//!    wins, the other adopts the winner's UUID;
//! 2. the per-UUID object gets the name and image name;
//! 3. the caller makes the image (and finishes a clone);
//! 4. `csi.imageid` marks the entry complete.
//!
//! A controller killed anywhere leaves state that a retry of the same name
//! adopts: a directory key without its UUID object gets the object
//! ([`lookup`] fills it in), a UUID object without image gets the image, an
//! image without mark is finished and marked (an empty image) or made again
//! (a clone, which librbd may have left half made; without the mark it was
//! never returned to anyone). Deletion runs the other way
//! (image, directory key, UUID object), so a retried DeleteVolume finishes
//! it. An image that is not in the journal is never touched.

use std::collections::BTreeMap;

use ceph::{Guard, Rbd};

/// One kind of journal (volumes or snapshots).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Kind {
    /// The directory object (`csi.volumes.default`).
    pub directory: &'static str,
    /// Prefix of the name keys in the directory and of the per-UUID objects.
    pub prefix: &'static str,
    /// The key holding the CSI name in the per-UUID object.
    pub name_key: &'static str,
}

/// Volumes.
pub const VOLUMES: Kind = Kind { directory: "csi.volumes.default", prefix: "csi.volume.", name_key: "csi.volname" };
/// Snapshots.
pub const SNAPSHOTS: Kind = Kind { directory: "csi.snaps.default", prefix: "csi.snap.", name_key: "csi.snapname" };

/// The image name key in a per-UUID object.
pub const IMAGE_NAME_KEY: &str = "csi.imagename";
/// The image ID key: written once the image is complete.
pub const IMAGE_ID_KEY: &str = "csi.imageid";
/// A snapshot's source image.
pub const SOURCE_KEY: &str = "csi.source";
/// csi-rbd's own: the request's content source (`volume:<id>`,
/// `snapshot:<id>`, or empty), so that a retry with another source is
/// ALREADY_EXISTS. ceph-csi ignores keys it does not know.
pub const CONTENT_SOURCE_KEY: &str = "csi-rbd.contentsource";

/// A journal entry.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    /// The UUID: the volume (snapshot) ID's last part and the image name's suffix.
    pub uuid: String,
    /// The CSI name.
    pub name: String,
    /// The image.
    pub image: String,
    /// The image ID, once the entry is complete.
    pub image_id: Option<String>,
    /// Every other attribute of the per-UUID object.
    pub attrs: BTreeMap<String, String>,
}

/// The per-UUID object's name.
pub fn uuid_object(kind: Kind, uuid: &str) -> String {
    format!("{}{uuid}", kind.prefix)
}

fn name_key(kind: Kind, name: &str) -> String {
    format!("{}{name}", kind.prefix)
}

fn text(v: &[u8]) -> String {
    String::from_utf8_lossy(v).into_owned()
}

/// The UUID in a directory value (`<uuid>` or ceph-csi's `<pool hex>/<uuid>`).
fn uuid_of(value: &str) -> Option<String> {
    let u = value.rsplit('/').next().unwrap_or(value).to_ascii_lowercase();
    crate::volume_id::is_uuid(&u).then_some(u)
}

/// The entry for CSI `name` in `pool`, if reserved. A directory key whose
/// UUID object is missing (a controller killed between the two writes) is
/// completed with `image_prefix` and `attrs`, so the caller adopts it.
pub fn lookup(
    rbd: &dyn Rbd,
    pool: &str,
    kind: Kind,
    name: &str,
    image_prefix: &str,
    attrs: &[(&str, &str)],
) -> ceph::Result<Option<Entry>> {
    let key = name_key(kind, name);
    let dir = rbd.omap_get(pool, kind.directory, &[&key])?;
    let Some(value) = dir.get(&key) else { return Ok(None) };
    let value = text(value);
    let uuid = uuid_of(&value).ok_or_else(|| {
        ceph::Error::InvalidArgument(format!("journal {pool}/{}: {key} = {value:?} is not a UUID", kind.directory))
    })?;
    match get_uuid(rbd, pool, kind, &uuid)? {
        Some(e) if e.name == name => Ok(Some(e)),
        Some(e) => Err(ceph::Error::InvalidArgument(format!(
            "journal {pool}: {key} points to {uuid}, whose object names {:?}: inconsistent, left as is",
            e.name
        ))),
        None => {
            tracing::warn!(
                pool,
                name,
                uuid,
                "journal: reservation without its UUID object (interrupted): completing it"
            );
            let image = format!("{image_prefix}{uuid}");
            write_uuid_object(rbd, pool, kind, &uuid, name, &image, attrs)?;
            Ok(get_uuid(rbd, pool, kind, &uuid)?)
        }
    }
}

/// The entry of `uuid` (from a volume or snapshot ID), if its object exists.
pub fn get_uuid(rbd: &dyn Rbd, pool: &str, kind: Kind, uuid: &str) -> ceph::Result<Option<Entry>> {
    let obj = uuid_object(kind, uuid);
    let all = rbd.omap_list(pool, &obj, "", 1024)?;
    if all.is_empty() {
        return Ok(None);
    }
    let mut attrs: BTreeMap<String, String> = all.into_iter().map(|(k, v)| (k, text(&v))).collect();
    let (Some(name), Some(image)) = (attrs.remove(kind.name_key), attrs.remove(IMAGE_NAME_KEY)) else {
        return Err(ceph::Error::InvalidArgument(format!(
            "journal {pool}/{obj}: no {} or {IMAGE_NAME_KEY}",
            kind.name_key
        )));
    };
    let image_id = attrs.remove(IMAGE_ID_KEY).filter(|s| !s.is_empty());
    Ok(Some(Entry { uuid: uuid.to_string(), name, image, image_id, attrs }))
}

fn write_uuid_object(
    rbd: &dyn Rbd,
    pool: &str,
    kind: Kind,
    uuid: &str,
    name: &str,
    image: &str,
    attrs: &[(&str, &str)],
) -> ceph::Result<()> {
    let mut entries: Vec<(&str, &[u8])> = vec![(kind.name_key, name.as_bytes()), (IMAGE_NAME_KEY, image.as_bytes())];
    entries.extend(attrs.iter().map(|(k, v)| (*k, v.as_bytes())));
    rbd.omap_set(pool, &uuid_object(kind, uuid), &entries, &Guard::Absent(vec![kind.name_key.to_string()])).or_else(
        |e| match e {
            // Already written (by us before a crash, or a racing adopter):
            // the directory key, written first and guarded, decided the owner.
            ceph::Error::Conflict(_) => Ok(()),
            e => Err(e),
        },
    )
}

/// Reserves CSI `name`: a new UUID, unless another controller reserved the
/// name first (then its entry). The image is `<image_prefix><uuid>`.
pub fn reserve(
    rbd: &dyn Rbd,
    pool: &str,
    kind: Kind,
    name: &str,
    image_prefix: &str,
    attrs: &[(&str, &str)],
) -> ceph::Result<Entry> {
    let uuid = new_uuid();
    let key = name_key(kind, name);
    match rbd.omap_set(pool, kind.directory, &[(&key, uuid.as_bytes())], &Guard::Absent(vec![key.clone()])) {
        Ok(()) => {}
        Err(ceph::Error::Conflict(_)) => {
            tracing::info!(pool, name, "journal: another controller reserved this name first: adopting its entry");
            return lookup(rbd, pool, kind, name, image_prefix, attrs)?
                .ok_or_else(|| ceph::Error::Conflict(format!("journal {pool}: {key} appeared and vanished: retry")));
        }
        Err(e) => return Err(e),
    }
    let image = format!("{image_prefix}{uuid}");
    write_uuid_object(rbd, pool, kind, &uuid, name, &image, attrs)?;
    get_uuid(rbd, pool, kind, &uuid)?
        .ok_or_else(|| ceph::Error::NotFound(format!("journal {pool}/{}: vanished", uuid_object(kind, &uuid))))
}

/// Marks the entry complete with the image's ID.
pub fn mark_complete(rbd: &dyn Rbd, pool: &str, kind: Kind, uuid: &str, image_id: &str) -> ceph::Result<()> {
    rbd.omap_set(pool, &uuid_object(kind, uuid), &[(IMAGE_ID_KEY, image_id.as_bytes())], &Guard::None)
}

/// Removes the entry (after its image is gone): the directory key (only if
/// it still points to this UUID), then the UUID object.
pub fn remove(rbd: &dyn Rbd, pool: &str, kind: Kind, entry: &Entry) -> ceph::Result<()> {
    let key = name_key(kind, &entry.name);
    let dir = rbd.omap_get(pool, kind.directory, &[&key])?;
    if dir.get(&key).and_then(|v| uuid_of(&text(v))).as_deref() == Some(entry.uuid.as_str()) {
        rbd.omap_remove(pool, kind.directory, &[&key])?;
    }
    rbd.remove_object(pool, &uuid_object(kind, &entry.uuid))
}

/// A page of the directory: (CSI name, UUID) after name `after`.
pub fn list(rbd: &dyn Rbd, pool: &str, kind: Kind, after: &str, max: usize) -> ceph::Result<Vec<(String, String)>> {
    let start = if after.is_empty() { String::new() } else { name_key(kind, after) };
    Ok(rbd
        .omap_list(pool, kind.directory, &start, max)?
        .into_iter()
        .filter_map(|(k, v)| Some((k.strip_prefix(kind.prefix)?.to_string(), uuid_of(&text(&v))?)))
        .collect())
}

/// A random (version 4) UUID, from the kernel's random source.
pub fn new_uuid() -> String {
    let mut b = [0u8; 16];
    let mut filled = 0;
    while filled < b.len() {
        // SAFETY: getrandom(2) writes at most len bytes into the buffer.
        let n = unsafe { libc::getrandom(b[filled..].as_mut_ptr().cast(), b.len() - filled, 0) };
        if n > 0 {
            filled += n as usize;
        }
    }
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!("{}-{}-{}-{}-{}", &h[0..8], &h[8..12], &h[12..16], &h[16..20], &h[20..32])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uuids_are_v4_and_distinct() {
        let a = new_uuid();
        assert!(crate::volume_id::is_uuid(&a), "{a}");
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, new_uuid());
    }

    #[test]
    fn directory_values_of_both_forms_give_the_uuid() {
        let u = "92837648-1431-11eb-8990-0242ac110005";
        assert_eq!(uuid_of(u).as_deref(), Some(u));
        assert_eq!(uuid_of(&format!("0000000000000002/{u}")).as_deref(), Some(u));
        assert_eq!(uuid_of("garbage"), None);
        assert_eq!(uuid_object(VOLUMES, u), format!("csi.volume.{u}"));
        assert_eq!(uuid_object(SNAPSHOTS, u), format!("csi.snap.{u}"));
    }
}
