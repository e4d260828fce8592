//! A volume's content source kept as a string in a driver's records
//! (csi-nfs's JSON records, csi-rbd's omap journal), and read back for
//! ListVolumes.

use crate::pb::{self, volume_content_source as vcs};

/// `snapshot:<id>`, `volume:<id>`, or empty when there is no source.
pub fn content_source_key(src: Option<&pb::VolumeContentSource>) -> String {
    match src.and_then(|s| s.r#type.as_ref()) {
        None => String::new(),
        Some(vcs::Type::Snapshot(s)) => format!("snapshot:{}", s.snapshot_id),
        Some(vcs::Type::Volume(v)) => format!("volume:{}", v.volume_id),
    }
}

/// The content source of a key made by [`content_source_key`]; `None` for
/// an empty or unknown key.
pub fn content_source_from(key: &str) -> Option<pb::VolumeContentSource> {
    let (kind, id) = key.split_once(':')?;
    let r#type = match kind {
        "snapshot" => vcs::Type::Snapshot(vcs::SnapshotSource { snapshot_id: id.to_string() }),
        "volume" => vcs::Type::Volume(vcs::VolumeSource { volume_id: id.to_string() }),
        _ => return None,
    };
    Some(pb::VolumeContentSource { r#type: Some(r#type) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn content_sources_round_trip_through_records() {
        for key in ["snapshot:s#e#n#p#v", "volume:s#e#d##", "snapshot:0001-0001-a-0000000000000001-x", "volume:v"] {
            let src = content_source_from(key).unwrap();
            assert_eq!(content_source_key(Some(&src)), key);
        }
        assert_eq!(content_source_key(None), "");
        assert!(content_source_from("").is_none());
        assert!(content_source_from("image:x").is_none());
    }
}
