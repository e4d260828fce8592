//! Secrets never reach a log line.
//!
//! prost derives `Debug` for every message, which would print `secrets`
//! maps verbatim to anyone who writes `debug!(?request)`. build.rs turns
//! that derive off for the 14 messages that carry secrets, and this module
//! gives them a `Debug` that prints every other field and only the *keys*
//! of the secrets. The impls destructure the message, so a field added to
//! the proto without being listed here is a compile error, not a leak.
//!
//! Drivers that keep secrets around take them out of the request into a
//! [`Secrets`], whose `Debug` is redacting too.

use std::collections::HashMap;
use std::fmt;

use crate::pb;

/// A CSI `secrets` map whose `Debug` shows the keys, never the values.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secrets(HashMap<String, String>);

impl Secrets {
    /// The value for `key`, if the CO passed one.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    /// True when the CO passed no secrets.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The keys, sorted (for messages that say which secret is missing).
    pub fn keys(&self) -> Vec<&str> {
        let mut keys: Vec<&str> = self.0.keys().map(String::as_str).collect();
        keys.sort_unstable();
        keys
    }

    /// The underlying map, for code that must pass the values on.
    pub fn expose(&self) -> &HashMap<String, String> {
        &self.0
    }
}

impl From<HashMap<String, String>> for Secrets {
    fn from(map: HashMap<String, String>) -> Self {
        Secrets(map)
    }
}

impl fmt::Debug for Secrets {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        Redacted(&self.0).fmt(f)
    }
}

/// Formats a secrets map as its sorted keys, each with a placeholder value.
struct Redacted<'a>(&'a HashMap<String, String>);

impl fmt::Debug for Redacted<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut keys: Vec<&String> = self.0.keys().collect();
        keys.sort_unstable();
        f.debug_map().entries(keys.into_iter().map(|k| (k, format_args!("<redacted>")))).finish()
    }
}

macro_rules! redacting_debug {
    ($($ty:ident { $($field:ident),* $(,)? })*) => {$(
        impl fmt::Debug for pb::$ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                let pb::$ty { $($field,)* secrets } = self;
                f.debug_struct(stringify!($ty))
                    $(.field(stringify!($field), $field))*
                    .field("secrets", &Redacted(secrets))
                    .finish()
            }
        }
    )*};
}

redacting_debug! {
    CreateVolumeRequest {
        name, capacity_range, volume_capabilities, parameters,
        volume_content_source, accessibility_requirements, mutable_parameters,
    }
    DeleteVolumeRequest { volume_id }
    ControllerPublishVolumeRequest {
        volume_id, node_id, volume_capability, readonly, volume_context,
    }
    ControllerUnpublishVolumeRequest { volume_id, node_id }
    ValidateVolumeCapabilitiesRequest {
        volume_id, volume_context, volume_capabilities, parameters, mutable_parameters,
    }
    ControllerModifyVolumeRequest { volume_id, mutable_parameters }
    CreateSnapshotRequest { source_volume_id, name, parameters }
    DeleteSnapshotRequest { snapshot_id }
    ListSnapshotsRequest { max_entries, starting_token, source_volume_id, snapshot_id }
    GetSnapshotRequest { snapshot_id }
    ControllerExpandVolumeRequest { volume_id, capacity_range, volume_capability }
    NodeStageVolumeRequest {
        volume_id, publish_context, staging_target_path, volume_capability, volume_context,
    }
    NodePublishVolumeRequest {
        volume_id, publish_context, staging_target_path, target_path,
        volume_capability, readonly, volume_context,
    }
    NodeExpandVolumeRequest {
        volume_id, volume_path, capacity_range, staging_target_path, volume_capability,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SECRET: &str = "hunter2-do-not-log";

    fn secrets() -> HashMap<String, String> {
        HashMap::from([("password".to_string(), SECRET.to_string())])
    }

    fn assert_redacted(dbg: String) {
        assert!(!dbg.contains(SECRET), "secret leaked: {dbg}");
        assert!(dbg.contains("password"), "keys should stay visible: {dbg}");
    }

    #[test]
    fn every_message_with_secrets_redacts_them() {
        let s = secrets;
        assert_redacted(format!(
            "{:?}",
            pb::CreateVolumeRequest { name: "pvc-1".into(), secrets: s(), ..Default::default() }
        ));
        assert_redacted(format!("{:?}", pb::DeleteVolumeRequest { secrets: s(), ..Default::default() }));
        assert_redacted(format!("{:?}", pb::ControllerPublishVolumeRequest { secrets: s(), ..Default::default() }));
        assert_redacted(format!("{:?}", pb::ControllerUnpublishVolumeRequest { secrets: s(), ..Default::default() }));
        assert_redacted(format!("{:?}", pb::ValidateVolumeCapabilitiesRequest { secrets: s(), ..Default::default() }));
        assert_redacted(format!("{:?}", pb::ControllerModifyVolumeRequest { secrets: s(), ..Default::default() }));
        assert_redacted(format!("{:?}", pb::CreateSnapshotRequest { secrets: s(), ..Default::default() }));
        assert_redacted(format!("{:?}", pb::DeleteSnapshotRequest { secrets: s(), ..Default::default() }));
        assert_redacted(format!("{:?}", pb::ListSnapshotsRequest { secrets: s(), ..Default::default() }));
        assert_redacted(format!("{:?}", pb::GetSnapshotRequest { secrets: s(), ..Default::default() }));
        assert_redacted(format!("{:?}", pb::ControllerExpandVolumeRequest { secrets: s(), ..Default::default() }));
        assert_redacted(format!("{:?}", pb::NodeStageVolumeRequest { secrets: s(), ..Default::default() }));
        assert_redacted(format!("{:?}", pb::NodePublishVolumeRequest { secrets: s(), ..Default::default() }));
        assert_redacted(format!("{:?}", pb::NodeExpandVolumeRequest { secrets: s(), ..Default::default() }));
        assert_redacted(format!("{:?}", Secrets::from(s())));
    }

    #[test]
    fn other_fields_still_show() {
        let dbg = format!(
            "{:?}",
            pb::NodePublishVolumeRequest {
                volume_id: "vol-7".into(),
                target_path: "/mnt/t".into(),
                secrets: secrets(),
                ..Default::default()
            }
        );
        assert!(dbg.contains("vol-7") && dbg.contains("/mnt/t"), "{dbg}");
    }
}
