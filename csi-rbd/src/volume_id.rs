//! The volume ID, in ceph-csi's encoding so that PersistentVolumes made by
//! ceph-csi keep working and any controller instance can serve any volume:
//!
//! ```text
//! 0001-0009-rook-ceph-0000000000000002-92837648-1431-11eb-8990-0242ac110005
//! ^ver ^len ^clusterID ^pool ID (16 hex) ^object UUID
//! ```
//!
//! - `ver`: the encoding version, 4 hex digits (`0001`);
//! - `len`: the length of the clusterID, 4 hex digits;
//! - the clusterID itself (1 to 36 characters, may contain `-`);
//! - the pool's numeric ID, 16 hex digits;
//! - the UUID that names the image (`<volumeNamePrefix><uuid>`, by default
//!   `csi-vol-<uuid>`) and its journal entries.
//!
//! Snapshot IDs use the same encoding (the UUID names `csi-snap-<uuid>`).

use std::fmt;

use crate::config::MAX_CLUSTER_ID_LEN;

/// The encoding version this driver writes and reads.
pub const VERSION: u16 = 1;

/// A decoded volume (or snapshot) ID.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct VolumeId {
    /// The cluster, a key of the cluster config.
    pub cluster_id: String,
    /// The pool's numeric ID in that cluster.
    pub pool_id: i64,
    /// The object UUID (lower-case, 36 characters with dashes).
    pub uuid: String,
}

/// Why an ID does not decode; the message says which part is wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("volume ID {id:?} is not a csi-rbd/ceph-csi ID: {reason}")]
pub struct InvalidId {
    /// The ID as given.
    pub id: String,
    /// What is wrong with it.
    pub reason: String,
}

impl VolumeId {
    /// Checks the parts and builds an ID.
    pub fn new(cluster_id: &str, pool_id: i64, uuid: &str) -> Result<VolumeId, InvalidId> {
        let id = VolumeId { cluster_id: cluster_id.to_string(), pool_id, uuid: uuid.to_ascii_lowercase() };
        let bad = |reason: String| InvalidId { id: format!("{id:?}"), reason };
        if cluster_id.is_empty() || cluster_id.len() > MAX_CLUSTER_ID_LEN {
            return Err(bad(format!("the clusterID must have 1 to {MAX_CLUSTER_ID_LEN} characters")));
        }
        if pool_id < 0 {
            return Err(bad(format!("pool ID {pool_id} is negative")));
        }
        if !is_uuid(&id.uuid) {
            return Err(bad(format!("{uuid:?} is not a UUID")));
        }
        Ok(id)
    }

    /// Decodes an ID.
    pub fn parse(s: &str) -> Result<VolumeId, InvalidId> {
        let bad = |reason: &str| InvalidId { id: s.to_string(), reason: reason.to_string() };
        if !s.is_ascii() {
            return Err(bad("not ASCII"));
        }
        let (ver, rest) = s.split_at_checked(4).ok_or_else(|| bad("too short"))?;
        if u16::from_str_radix(ver, 16).ok() != Some(VERSION) {
            return Err(bad("the encoding version must be 0001"));
        }
        let rest = rest.strip_prefix('-').ok_or_else(|| bad("expected '-' after the version"))?;
        let (len, rest) = rest.split_at_checked(4).ok_or_else(|| bad("too short"))?;
        let len = usize::from_str_radix(len, 16).map_err(|_| bad("the clusterID length is not 4 hex digits"))?;
        let rest = rest.strip_prefix('-').ok_or_else(|| bad("expected '-' after the clusterID length"))?;
        let (cluster, rest) = rest.split_at_checked(len).ok_or_else(|| bad("shorter than its clusterID length"))?;
        let rest = rest.strip_prefix('-').ok_or_else(|| bad("expected '-' after the clusterID"))?;
        let (pool, rest) = rest.split_at_checked(16).ok_or_else(|| bad("too short for the pool ID"))?;
        if !pool.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(bad("the pool ID is not 16 hex digits"));
        }
        let pool = i64::from_str_radix(pool, 16).map_err(|_| bad("the pool ID is out of range"))?;
        let uuid = rest.strip_prefix('-').ok_or_else(|| bad("expected '-' after the pool ID"))?;
        VolumeId::new(cluster, pool, uuid).map_err(|e| bad(&e.reason))
    }
}

impl fmt::Display for VolumeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{VERSION:04x}-{:04x}-{}-{:016x}-{}", self.cluster_id.len(), self.cluster_id, self.pool_id, self.uuid)
    }
}

/// `8-4-4-4-12` hex digits, lower-case.
pub fn is_uuid(s: &str) -> bool {
    let b = s.as_bytes();
    b.len() == 36
        && b.iter().enumerate().all(|(i, &c)| match i {
            8 | 13 | 18 | 23 => c == b'-',
            _ => c.is_ascii_digit() || (b'a'..=b'f').contains(&c),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ceph_csi_ids_decode_and_encode_to_the_same_text() {
        for s in [
            "0001-0009-rook-ceph-0000000000000002-92837648-1431-11eb-8990-0242ac110005",
            "0001-0024-7635de36-ab1f-4a70-98a2-a1bd80ba77c4-0000000000000006-6e696bba-064f-11ec-a251-0242ac110002",
        ] {
            let id = VolumeId::parse(s).unwrap();
            assert_eq!(id.to_string(), s);
        }
        let id = VolumeId::parse("0001-0009-rook-ceph-0000000000000002-92837648-1431-11eb-8990-0242ac110005").unwrap();
        assert_eq!(id.cluster_id, "rook-ceph");
        assert_eq!(id.pool_id, 2);
        assert_eq!(id.uuid, "92837648-1431-11eb-8990-0242ac110005");
    }

    #[test]
    fn a_new_id_round_trips() {
        let id = VolumeId::new("c-1", 0x1f, "0a0b0c0d-0000-4000-8000-00000000000f").unwrap();
        assert_eq!(id.to_string(), "0001-0003-c-1-000000000000001f-0a0b0c0d-0000-4000-8000-00000000000f");
        assert_eq!(VolumeId::parse(&id.to_string()).unwrap(), id);
    }

    #[test]
    fn malformed_ids_say_what_is_wrong() {
        let cases = [
            ("", "too short"),
            ("0002-0001-a-0000000000000001-92837648-1431-11eb-8990-0242ac110005", "version"),
            ("0001-0005-a-0000000000000001-92837648-1431-11eb-8990-0242ac110005", "'-'"),
            ("0001-0001-a-00000000000000zz-92837648-1431-11eb-8990-0242ac110005", "16 hex"),
            ("0001-0001-a-0000000000000001-not-a-uuid", "UUID"),
            ("0001-0000--0000000000000001-92837648-1431-11eb-8990-0242ac110005", "1 to 36"),
            ("server#share#dir#uuid#", "version"),
            ("0001-0001-é-0000000000000001-92837648-1431-11eb-8990-0242ac110005", "ASCII"),
        ];
        for (s, want) in cases {
            let e = VolumeId::parse(s).unwrap_err().to_string();
            assert!(e.contains(want), "{s:?}: {e} (want {want:?})");
        }
    }
}
