//! Request checks that return the CSI spec's gRPC codes.
//!
//! Every Controller and Node RPC starts by checking its required fields;
//! doing it here keeps the messages (and so csi-sanity's expectations)
//! identical across drivers. Also: the in-flight operation lock the spec's
//! "operation pending for volume → ABORTED" rule needs.

use std::collections::HashSet;
use std::sync::{Arc, Mutex};

use crate::error::{Error, Result};
use crate::pb;
use crate::pb::volume_capability::access_mode::Mode as AccessMode;
use crate::pb::volume_capability::AccessType;

/// The spec's general limit for string fields, in bytes.
pub const MAX_STRING_BYTES: usize = 128;

fn require(value: &str, what: &str) -> Result<()> {
    if value.is_empty() {
        Err(Error::InvalidArgument(format!("{what} missing in request")))
    } else {
        Ok(())
    }
}

/// `volume_id` is required by every RPC that names a volume.
pub fn require_volume_id(volume_id: &str) -> Result<()> {
    require(volume_id, "volume id")
}

/// `snapshot_id` (DeleteSnapshot, GetSnapshot) or `source_volume_id`.
pub fn require_snapshot_id(snapshot_id: &str) -> Result<()> {
    require(snapshot_id, "snapshot id")
}

/// `node_id` (ControllerPublishVolume).
pub fn require_node_id(node_id: &str) -> Result<()> {
    require(node_id, "node id")
}

/// `target_path` (NodePublishVolume, NodeUnpublishVolume).
pub fn require_target_path(target_path: &str) -> Result<()> {
    require(target_path, "target path")
}

/// `staging_target_path` (NodeStageVolume, NodeUnstageVolume).
pub fn require_staging_path(staging_target_path: &str) -> Result<()> {
    require(staging_target_path, "staging target path")
}

/// `volume_path` (NodeExpandVolume, NodeGetVolumeStats).
pub fn require_volume_path(volume_path: &str) -> Result<()> {
    require(volume_path, "volume path")
}

/// `volume_path` of NodeGetVolumeStats: present, and absolute. The spec
/// makes it absolute, but a relative one names no volume either, and
/// NOT_FOUND is what the spec and csi-sanity ask for when no volume is at
/// the path (csi-sanity sends `some/path`).
pub fn require_stats_path(volume_path: &str) -> Result<()> {
    require_volume_path(volume_path)?;
    if !std::path::Path::new(volume_path).is_absolute() {
        return Err(Error::NotFound(format!(
            "no volume at {volume_path:?}: not an absolute path, so nothing is published there"
        )));
    }
    Ok(())
}

/// ValidateVolumeCapabilities's answer once the volume is known to exist:
/// confirmed (echoing the request's context, capabilities and parameters)
/// when every capability is one `support` allows, otherwise unconfirmed
/// with the first refusal as the message.
pub fn confirm_capabilities(
    req: pb::ValidateVolumeCapabilitiesRequest,
    support: &CapabilitySupport,
) -> pb::ValidateVolumeCapabilitiesResponse {
    if let Some(e) = req.volume_capabilities.iter().find_map(|c| check_capability(c, support).err()) {
        return pb::ValidateVolumeCapabilitiesResponse { confirmed: None, message: e.to_string() };
    }
    pb::ValidateVolumeCapabilitiesResponse {
        confirmed: Some(pb::validate_volume_capabilities_response::Confirmed {
            volume_context: req.volume_context,
            volume_capabilities: req.volume_capabilities,
            parameters: req.parameters,
            mutable_parameters: req.mutable_parameters,
        }),
        message: String::new(),
    }
}

/// The `name` of CreateVolume / CreateSnapshot: present, within the spec's
/// 128 bytes, and free of the control characters the spec bans.
pub fn require_name(name: &str) -> Result<()> {
    require(name, "name")?;
    if name.len() > MAX_STRING_BYTES {
        return Err(Error::InvalidArgument(format!(
            "name is {} bytes, more than the {MAX_STRING_BYTES} the spec allows",
            name.len()
        )));
    }
    let banned =
        |c: char| matches!(c, '\u{0}'..='\u{8}' | '\u{b}' | '\u{c}' | '\u{e}'..='\u{1f}' | '\u{7f}'..='\u{9f}');
    if name.chars().any(banned) {
        return Err(Error::InvalidArgument("name contains a control character the spec bans".into()));
    }
    Ok(())
}

/// What volume capabilities a driver can honour.
#[derive(Clone, Copy, Debug)]
pub struct CapabilitySupport {
    /// Raw block volumes (`access_type: block`).
    pub block: bool,
    /// Access modes the driver accepts; an empty slice accepts every known mode.
    pub modes: &'static [AccessMode],
}

impl CapabilitySupport {
    /// A shared filesystem (NFS): mounts only, every access mode.
    pub const SHARED_FILESYSTEM: CapabilitySupport = CapabilitySupport { block: false, modes: &[] };
}

/// Checks one capability: an access type, a known access mode, and both
/// supported by the driver. Failures are INVALID_ARGUMENT.
pub fn check_capability(cap: &pb::VolumeCapability, support: &CapabilitySupport) -> Result<()> {
    match &cap.access_type {
        None => return Err(Error::InvalidArgument("volume capability has no access type (block or mount)".into())),
        Some(AccessType::Block(_)) if !support.block => {
            return Err(Error::InvalidArgument("block access type is not supported by this driver".into()))
        }
        Some(_) => {}
    }
    let raw = cap
        .access_mode
        .as_ref()
        .ok_or_else(|| Error::InvalidArgument("volume capability has no access mode".into()))?
        .mode;
    let mode = match AccessMode::try_from(raw) {
        Ok(AccessMode::Unknown) | Err(_) => {
            return Err(Error::InvalidArgument(format!("unknown access mode {raw} in volume capability")))
        }
        Ok(m) => m,
    };
    if !support.modes.is_empty() && !support.modes.contains(&mode) {
        return Err(Error::InvalidArgument(format!(
            "access mode {} is not supported by this driver",
            mode.as_str_name()
        )));
    }
    Ok(())
}

/// `volume_capabilities` (CreateVolume, ValidateVolumeCapabilities): non-empty,
/// each one valid and supported.
pub fn require_capabilities(caps: &[pb::VolumeCapability], support: &CapabilitySupport) -> Result<()> {
    if caps.is_empty() {
        return Err(Error::InvalidArgument("volume capabilities missing in request".into()));
    }
    caps.iter().try_for_each(|c| check_capability(c, support))
}

/// `volume_capability` (ControllerPublish, NodeStage, NodePublish): present and valid.
pub fn require_capability<'a>(
    cap: Option<&'a pb::VolumeCapability>,
    support: &CapabilitySupport,
) -> Result<&'a pb::VolumeCapability> {
    let cap = cap.ok_or_else(|| Error::InvalidArgument("volume capability missing in request".into()))?;
    check_capability(cap, support)?;
    Ok(cap)
}

/// A checked capacity range: `None` where the CO left the bound unset (0).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capacity {
    /// The volume must be at least this big.
    pub required: Option<u64>,
    /// The volume must not be bigger than this.
    pub limit: Option<u64>,
}

impl Capacity {
    /// The size to provision: `required`, else `limit`, else `default`,
    /// raised to `min` (backends have a minimum size) when the limit allows.
    /// OUT_OF_RANGE when no size in the range is possible.
    pub fn pick(&self, default: u64, min: u64) -> Result<u64> {
        let want = self.required.or(self.limit).unwrap_or(default).max(min);
        self.check(want)?;
        Ok(want)
    }

    /// OUT_OF_RANGE unless `size` is within the range (for an existing volume,
    /// a snapshot source, or an expansion).
    pub fn check(&self, size: u64) -> Result<()> {
        if self.required.is_some_and(|r| size < r) || self.limit.is_some_and(|l| size > l) {
            return Err(out_of_range(format!("size {size} bytes is outside the requested range {self}")));
        }
        Ok(())
    }
}

impl std::fmt::Display for Capacity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let b = |v: Option<u64>| v.map_or("unset".to_string(), |v| v.to_string());
        write!(f, "[required {}, limit {}]", b(self.required), b(self.limit))
    }
}

/// Checks a `capacity_range`: no negative bound, and required ≤ limit when
/// both are set (INVALID_ARGUMENT otherwise). An absent range is all-unset.
pub fn capacity_range(range: Option<&pb::CapacityRange>) -> Result<Capacity> {
    let Some(r) = range else {
        return Ok(Capacity::default());
    };
    let bound = |v: i64, what: &str| -> Result<Option<u64>> {
        match v {
            0 => Ok(None),
            v if v < 0 => Err(Error::InvalidArgument(format!("capacity range {what} is negative ({v})"))),
            v => Ok(Some(v as u64)),
        }
    };
    let c =
        Capacity { required: bound(r.required_bytes, "required_bytes")?, limit: bound(r.limit_bytes, "limit_bytes")? };
    if let (Some(req), Some(lim)) = (c.required, c.limit) {
        if req > lim {
            return Err(Error::InvalidArgument(format!(
                "capacity range required_bytes {req} exceeds limit_bytes {lim}"
            )));
        }
    }
    Ok(c)
}

/// OUT_OF_RANGE: the plugin cannot provide the requested size.
pub fn out_of_range(msg: impl Into<String>) -> Error {
    Error::OutOfRange(msg.into())
}

/// ALREADY_EXISTS: `name` exists with attributes incompatible with the request
/// (CreateVolume / CreateSnapshot idempotency).
pub fn already_exists(kind: &str, name: &str, why: &str) -> Error {
    Error::AlreadyExists(format!("{kind} {name:?} already exists and is incompatible with the request: {why}"))
}

/// NOT_FOUND for a volume.
pub fn volume_not_found(volume_id: &str) -> Error {
    Error::NotFound(format!("volume {volume_id:?} not found"))
}

/// The keys with an operation in flight. Cloning shares the set.
///
/// The CO should never send two operations for one volume at once, but
/// after a restart it can; the second one gets ABORTED and is retried with
/// back-off, as the spec says.
#[derive(Clone, Debug, Default)]
pub struct InFlight {
    keys: Arc<Mutex<HashSet<String>>>,
}

/// Holds a key of an [`InFlight`] set until dropped.
#[derive(Debug)]
pub struct InFlightGuard {
    keys: Arc<Mutex<HashSet<String>>>,
    key: String,
}

impl InFlight {
    /// Claims `volume_id`, or ABORTED when another operation holds it.
    pub fn lock(&self, volume_id: &str) -> Result<InFlightGuard> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        if !keys.insert(volume_id.to_string()) {
            return Err(Error::Aborted(format!("an operation with the given volume id {volume_id} already exists")));
        }
        Ok(InFlightGuard { keys: Arc::clone(&self.keys), key: volume_id.to_string() })
    }

    /// Claims any other key (a CreateVolume name, a snapshot id), same rules.
    pub fn lock_key(&self, kind: &str, key: &str) -> Result<InFlightGuard> {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        let k = format!("{kind}\0{key}");
        if !keys.insert(k.clone()) {
            return Err(Error::Aborted(format!("an operation with the given {kind} {key} already exists")));
        }
        Ok(InFlightGuard { keys: Arc::clone(&self.keys), key: k })
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut keys = self.keys.lock().unwrap_or_else(|p| p.into_inner());
        keys.remove(&self.key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pb::volume_capability::{AccessMode as Am, BlockVolume, MountVolume};
    use tonic::Code;

    fn cap(block: bool, mode: i32) -> pb::VolumeCapability {
        pb::VolumeCapability {
            access_type: Some(if block {
                AccessType::Block(BlockVolume {})
            } else {
                AccessType::Mount(MountVolume::default())
            }),
            access_mode: Some(Am { mode }),
        }
    }

    #[test]
    fn required_fields() {
        assert_eq!(require_volume_id("").unwrap_err().code(), Code::InvalidArgument);
        assert!(require_volume_id("v").is_ok());
        assert_eq!(require_target_path("").unwrap_err().to_string(), "target path missing in request");
        assert_eq!(require_name(&"n".repeat(129)).unwrap_err().code(), Code::InvalidArgument);
        assert!(require_name(&"n".repeat(128)).is_ok());
        assert!(require_name("a\u{1}b").is_err());
        assert!(require_name("with space\tand tab").is_ok());
    }

    #[test]
    fn capabilities_are_confirmed_with_the_request_echoed_or_refused_with_a_message() {
        use pb::volume_capability::{AccessMode as Am, AccessType as At, BlockVolume, MountVolume};
        let cap = |t: At| pb::VolumeCapability {
            access_type: Some(t),
            access_mode: Some(Am { mode: AccessMode::SingleNodeWriter as i32 }),
        };
        let req = |c: pb::VolumeCapability| pb::ValidateVolumeCapabilitiesRequest {
            volume_id: "v".into(),
            volume_context: [("k".to_string(), "x".to_string())].into(),
            volume_capabilities: vec![c],
            ..Default::default()
        };
        let ok =
            confirm_capabilities(req(cap(At::Mount(MountVolume::default()))), &CapabilitySupport::SHARED_FILESYSTEM);
        let confirmed = ok.confirmed.expect("a mount capability is confirmed");
        assert_eq!((confirmed.volume_context["k"].as_str(), confirmed.volume_capabilities.len()), ("x", 1));
        assert!(ok.message.is_empty());
        let no = confirm_capabilities(req(cap(At::Block(BlockVolume {}))), &CapabilitySupport::SHARED_FILESYSTEM);
        assert!(no.confirmed.is_none() && !no.message.is_empty(), "{no:?}");
    }

    #[test]
    fn a_stats_path_is_present_and_absolute() {
        assert_eq!(require_stats_path("").unwrap_err().to_string(), "volume path missing in request");
        assert_eq!(require_stats_path("some/path").unwrap_err().code(), Code::NotFound);
        assert!(require_stats_path("/var/lib/kubelet/x").is_ok());
        assert_eq!(require_volume_path("").unwrap_err().code(), Code::InvalidArgument);
        assert!(require_volume_path("some/path").is_ok());
    }

    #[test]
    fn capabilities() {
        let fs = CapabilitySupport::SHARED_FILESYSTEM;
        assert!(require_capabilities(&[cap(false, 5)], &fs).is_ok());
        assert!(require_capabilities(&[cap(false, 7)], &fs).is_ok());
        let e = require_capabilities(&[], &fs).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        let e = require_capabilities(&[cap(false, 1), cap(true, 1)], &fs).unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument);
        assert!(e.to_string().contains("block"), "{e}");
        for bad_mode in [0, 8, -1] {
            let e = require_capabilities(&[cap(false, bad_mode)], &fs).unwrap_err();
            assert_eq!(e.code(), Code::InvalidArgument, "mode {bad_mode}");
        }
        let mut no_type = cap(false, 1);
        no_type.access_type = None;
        assert!(require_capabilities(&[no_type], &fs).is_err());
        let single = CapabilitySupport { block: true, modes: &[AccessMode::SingleNodeWriter] };
        assert!(require_capability(Some(&cap(true, 1)), &single).is_ok());
        assert!(require_capability(Some(&cap(true, 5)), &single).is_err());
        assert!(require_capability(None, &single).is_err());
    }

    #[test]
    fn capacity() {
        let r = |req, lim| pb::CapacityRange { required_bytes: req, limit_bytes: lim };
        assert_eq!(capacity_range(None).unwrap(), Capacity::default());
        let c = capacity_range(Some(&r(10, 20))).unwrap();
        assert_eq!(c.pick(5, 0).unwrap(), 10);
        assert_eq!(c.pick(5, 15).unwrap(), 15);
        assert_eq!(c.pick(5, 30).unwrap_err().code(), Code::OutOfRange);
        assert_eq!(c.check(21).unwrap_err().code(), Code::OutOfRange);
        assert_eq!(capacity_range(Some(&r(20, 10))).unwrap_err().code(), Code::InvalidArgument);
        assert_eq!(capacity_range(Some(&r(-1, 0))).unwrap_err().code(), Code::InvalidArgument);
        let only_limit = capacity_range(Some(&r(0, 7))).unwrap();
        assert_eq!(only_limit.pick(100, 0).unwrap(), 7);
    }

    #[test]
    fn in_flight_lock_is_released_on_drop() {
        let locks = InFlight::default();
        let g = locks.lock("vol-1").unwrap();
        let e = locks.clone().lock("vol-1").unwrap_err();
        assert_eq!(e.code(), Code::Aborted);
        assert_eq!(e.to_string(), "an operation with the given volume id vol-1 already exists");
        assert!(locks.lock("vol-2").is_ok());
        assert!(locks.lock_key("name", "vol-1").is_ok(), "kinds are separate");
        drop(g);
        assert!(locks.lock("vol-1").is_ok());
    }

    #[test]
    fn already_exists_is_its_code() {
        assert_eq!(already_exists("volume", "pvc-1", "capacity differs").code(), Code::AlreadyExists);
    }
}
