//! Guards the field and enum numbers of csi.proto: the wire contract with
//! every CO and sidecar. Each expected byte string is hand-computed from the
//! spec's field numbers (tag byte = field_number << 3 | wire_type; wire
//! type 0 = varint, 2 = length-delimited).

use std::collections::HashMap;

use csi_core::pb::{self, volume_capability as vc};
use prost::Message;

fn map(k: &str, v: &str) -> HashMap<String, String> {
    HashMap::from([(k.to_string(), v.to_string())])
}

/// A map entry {"k": "v"}: key is field 1, value field 2.
const ENTRY_KV: [u8; 6] = [0x0a, 1, b'k', 0x12, 1, b'v'];

fn with_prefix(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut v = vec![tag, body.len() as u8];
    v.extend_from_slice(body);
    v
}

#[test]
fn create_volume_request_fields() {
    let enc = |r: pb::CreateVolumeRequest| r.encode_to_vec();
    // name = 1
    assert_eq!(enc(pb::CreateVolumeRequest { name: "n".into(), ..Default::default() }), [0x0a, 1, b'n']);
    // capacity_range = 2 { required_bytes = 1, limit_bytes = 2 }
    assert_eq!(
        enc(pb::CreateVolumeRequest {
            capacity_range: Some(pb::CapacityRange { required_bytes: 5, limit_bytes: 6 }),
            ..Default::default()
        }),
        [0x12, 4, 0x08, 5, 0x10, 6]
    );
    // volume_capabilities = 3 { access_mode = 3 { mode = 1 } }
    assert_eq!(
        enc(pb::CreateVolumeRequest {
            volume_capabilities: vec![pb::VolumeCapability {
                access_type: None,
                access_mode: Some(vc::AccessMode { mode: 7 }),
            }],
            ..Default::default()
        }),
        [0x1a, 4, 0x1a, 2, 0x08, 7]
    );
    // parameters = 4, secrets = 5, mutable_parameters = 8
    assert_eq!(
        enc(pb::CreateVolumeRequest { parameters: map("k", "v"), ..Default::default() }),
        with_prefix(0x22, &ENTRY_KV)
    );
    assert_eq!(
        enc(pb::CreateVolumeRequest { secrets: map("k", "v"), ..Default::default() }),
        with_prefix(0x2a, &ENTRY_KV)
    );
    assert_eq!(
        enc(pb::CreateVolumeRequest { mutable_parameters: map("k", "v"), ..Default::default() }),
        with_prefix(0x42, &ENTRY_KV)
    );
    // volume_content_source = 6 { snapshot = 1 { snapshot_id = 1 } }
    assert_eq!(
        enc(pb::CreateVolumeRequest {
            volume_content_source: Some(pb::VolumeContentSource {
                r#type: Some(pb::volume_content_source::Type::Snapshot(pb::volume_content_source::SnapshotSource {
                    snapshot_id: "s".into()
                })),
            }),
            ..Default::default()
        }),
        [0x32, 5, 0x0a, 3, 0x0a, 1, b's']
    );
    // ... or volume = 2 { volume_id = 1 }
    assert_eq!(
        enc(pb::CreateVolumeRequest {
            volume_content_source: Some(pb::VolumeContentSource {
                r#type: Some(pb::volume_content_source::Type::Volume(pb::volume_content_source::VolumeSource {
                    volume_id: "v".into()
                })),
            }),
            ..Default::default()
        }),
        [0x32, 5, 0x12, 3, 0x0a, 1, b'v']
    );
    // accessibility_requirements = 7 { requisite = 1 {}, preferred = 2 {} }
    assert_eq!(
        enc(pb::CreateVolumeRequest {
            accessibility_requirements: Some(pb::TopologyRequirement {
                requisite: vec![pb::Topology::default()],
                preferred: vec![pb::Topology::default()],
            }),
            ..Default::default()
        }),
        [0x3a, 4, 0x0a, 0, 0x12, 0]
    );
}

#[test]
fn volume_capability_fields() {
    let block =
        pb::VolumeCapability { access_type: Some(vc::AccessType::Block(vc::BlockVolume {})), access_mode: None };
    assert_eq!(block.encode_to_vec(), [0x0a, 0]);
    let mount = pb::VolumeCapability {
        access_type: Some(vc::AccessType::Mount(vc::MountVolume {
            fs_type: "x".into(),
            mount_flags: vec!["y".into()],
            volume_mount_group: "z".into(),
        })),
        access_mode: Some(vc::AccessMode { mode: 1 }),
    };
    assert_eq!(mount.encode_to_vec(), [0x12, 9, 0x0a, 1, b'x', 0x12, 1, b'y', 0x1a, 1, b'z', 0x1a, 2, 0x08, 1]);
}

#[test]
fn enum_numbers() {
    use vc::access_mode::Mode;
    assert_eq!(Mode::Unknown as i32, 0);
    assert_eq!(Mode::SingleNodeWriter as i32, 1);
    assert_eq!(Mode::SingleNodeReaderOnly as i32, 2);
    assert_eq!(Mode::MultiNodeReaderOnly as i32, 3);
    assert_eq!(Mode::MultiNodeSingleWriter as i32, 4);
    assert_eq!(Mode::MultiNodeMultiWriter as i32, 5);
    assert_eq!(Mode::SingleNodeSingleWriter as i32, 6);
    assert_eq!(Mode::SingleNodeMultiWriter as i32, 7);

    use pb::plugin_capability::service::Type as S;
    assert_eq!(S::ControllerService as i32, 1);
    assert_eq!(S::VolumeAccessibilityConstraints as i32, 2);
    assert_eq!(S::GroupControllerService as i32, 3);
    assert_eq!(S::SnapshotMetadataService as i32, 4);
    use pb::plugin_capability::volume_expansion::Type as E;
    assert_eq!((E::Online as i32, E::Offline as i32), (1, 2));

    use pb::controller_service_capability::rpc::Type as C;
    let controller = [
        (C::CreateDeleteVolume, 1),
        (C::PublishUnpublishVolume, 2),
        (C::ListVolumes, 3),
        (C::GetCapacity, 4),
        (C::CreateDeleteSnapshot, 5),
        (C::ListSnapshots, 6),
        (C::CloneVolume, 7),
        (C::PublishReadonly, 8),
        (C::ExpandVolume, 9),
        (C::ListVolumesPublishedNodes, 10),
        (C::VolumeCondition, 11),
        (C::GetVolume, 12),
        (C::SingleNodeMultiWriter, 13),
        (C::ModifyVolume, 14),
        (C::GetSnapshot, 15),
    ];
    for (t, n) in controller {
        assert_eq!(t as i32, n, "{t:?}");
    }
    use pb::node_service_capability::rpc::Type as N;
    let node = [
        (N::StageUnstageVolume, 1),
        (N::GetVolumeStats, 2),
        (N::ExpandVolume, 3),
        (N::VolumeCondition, 4),
        (N::SingleNodeMultiWriter, 5),
        (N::VolumeMountGroup, 6),
    ];
    for (t, n) in node {
        assert_eq!(t as i32, n, "{t:?}");
    }
    use pb::volume_usage::Unit;
    assert_eq!((Unit::Bytes as i32, Unit::Inodes as i32), (1, 2));
}

#[test]
fn node_stage_and_publish_fields() {
    let stage = pb::NodeStageVolumeRequest {
        volume_id: "v".into(),                                    // 1
        publish_context: map("k", "v"),                           // 2
        staging_target_path: "s".into(),                          // 3
        volume_capability: Some(pb::VolumeCapability::default()), // 4
        secrets: map("k", "v"),                                   // 5
        volume_context: map("k", "v"),                            // 6
    };
    let mut want = vec![0x0a, 1, b'v'];
    want.extend(with_prefix(0x12, &ENTRY_KV));
    want.extend([0x1a, 1, b's', 0x22, 0]);
    want.extend(with_prefix(0x2a, &ENTRY_KV));
    want.extend(with_prefix(0x32, &ENTRY_KV));
    assert_eq!(stage.encode_to_vec(), want);

    let publish = pb::NodePublishVolumeRequest {
        volume_id: "v".into(),                                    // 1
        publish_context: map("k", "v"),                           // 2
        staging_target_path: "s".into(),                          // 3
        target_path: "t".into(),                                  // 4
        volume_capability: Some(pb::VolumeCapability::default()), // 5
        readonly: true,                                           // 6
        secrets: map("k", "v"),                                   // 7
        volume_context: map("k", "v"),                            // 8
    };
    let mut want = vec![0x0a, 1, b'v'];
    want.extend(with_prefix(0x12, &ENTRY_KV));
    want.extend([0x1a, 1, b's', 0x22, 1, b't', 0x2a, 0, 0x30, 1]);
    want.extend(with_prefix(0x3a, &ENTRY_KV));
    want.extend(with_prefix(0x42, &ENTRY_KV));
    assert_eq!(publish.encode_to_vec(), want);

    let unpublish = pb::NodeUnpublishVolumeRequest { volume_id: "v".into(), target_path: "t".into() };
    assert_eq!(unpublish.encode_to_vec(), [0x0a, 1, b'v', 0x12, 1, b't']);
}

#[test]
fn stats_info_and_probe_fields() {
    let stats = pb::NodeGetVolumeStatsResponse {
        usage: vec![pb::VolumeUsage { available: 1, total: 2, used: 3, unit: pb::volume_usage::Unit::Bytes as i32 }],
        volume_condition: Some(pb::VolumeCondition { abnormal: true, message: "m".into() }),
    };
    assert_eq!(stats.encode_to_vec(), [0x0a, 8, 0x08, 1, 0x10, 2, 0x18, 3, 0x20, 1, 0x12, 5, 0x08, 1, 0x12, 1, b'm']);
    let req = pb::NodeGetVolumeStatsRequest {
        volume_id: "v".into(),
        volume_path: "p".into(),
        staging_target_path: "s".into(),
    };
    assert_eq!(req.encode_to_vec(), [0x0a, 1, b'v', 0x12, 1, b'p', 0x1a, 1, b's']);

    let info = pb::NodeGetInfoResponse {
        node_id: "n".into(),
        max_volumes_per_node: 9,
        accessible_topology: Some(pb::Topology::default()),
    };
    assert_eq!(info.encode_to_vec(), [0x0a, 1, b'n', 0x10, 9, 0x1a, 0]);

    // ready is a google.protobuf.BoolValue: a message whose field 1 is the bool.
    let ready = pb::ProbeResponse { ready: Some(true) };
    assert_eq!(ready.encode_to_vec(), [0x0a, 2, 0x08, 1]);
    let not_ready = pb::ProbeResponse { ready: Some(false) };
    assert_eq!(not_ready.encode_to_vec(), [0x0a, 0]);
    assert_eq!(pb::ProbeResponse { ready: None }.encode_to_vec(), Vec::<u8>::new());

    let plugin_info =
        pb::GetPluginInfoResponse { name: "n".into(), vendor_version: "1".into(), manifest: map("k", "v") };
    let mut want = vec![0x0a, 1, b'n', 0x12, 1, b'1'];
    want.extend(with_prefix(0x1a, &ENTRY_KV));
    assert_eq!(plugin_info.encode_to_vec(), want);
}

#[test]
fn controller_message_fields() {
    let publish = pb::ControllerPublishVolumeRequest {
        volume_id: "v".into(),
        node_id: "n".into(),
        volume_capability: Some(pb::VolumeCapability::default()),
        readonly: true,
        secrets: map("k", "v"),
        volume_context: map("k", "v"),
    };
    let mut want = vec![0x0a, 1, b'v', 0x12, 1, b'n', 0x1a, 0, 0x20, 1];
    want.extend(with_prefix(0x2a, &ENTRY_KV));
    want.extend(with_prefix(0x32, &ENTRY_KV));
    assert_eq!(publish.encode_to_vec(), want);

    let validate = pb::ValidateVolumeCapabilitiesRequest {
        volume_id: "v".into(),
        mutable_parameters: map("k", "v"),
        ..Default::default()
    };
    let mut want = vec![0x0a, 1, b'v'];
    want.extend(with_prefix(0x32, &ENTRY_KV));
    assert_eq!(validate.encode_to_vec(), want);

    let modify = pb::ControllerModifyVolumeRequest {
        volume_id: "v".into(),
        secrets: map("k", "v"),
        mutable_parameters: map("k", "v"),
    };
    let mut want = vec![0x0a, 1, b'v'];
    want.extend(with_prefix(0x12, &ENTRY_KV));
    want.extend(with_prefix(0x1a, &ENTRY_KV));
    assert_eq!(modify.encode_to_vec(), want);

    let snapshot = pb::Snapshot {
        size_bytes: 1,
        snapshot_id: "s".into(),
        source_volume_id: "v".into(),
        creation_time: Some(prost_types::Timestamp { seconds: 2, nanos: 0 }),
        ready_to_use: true,
        group_snapshot_id: "g".into(),
    };
    assert_eq!(
        snapshot.encode_to_vec(),
        [0x08, 1, 0x12, 1, b's', 0x1a, 1, b'v', 0x22, 2, 0x08, 2, 0x28, 1, 0x32, 1, b'g']
    );

    let list = pb::ListSnapshotsRequest {
        max_entries: 3,
        starting_token: "t".into(),
        source_volume_id: "v".into(),
        snapshot_id: "s".into(),
        secrets: map("k", "v"),
    };
    let mut want = vec![0x08, 3, 0x12, 1, b't', 0x1a, 1, b'v', 0x22, 1, b's'];
    want.extend(with_prefix(0x2a, &ENTRY_KV));
    assert_eq!(list.encode_to_vec(), want);

    let expand = pb::ControllerExpandVolumeResponse { capacity_bytes: 4, node_expansion_required: true };
    assert_eq!(expand.encode_to_vec(), [0x08, 4, 0x10, 1]);

    let capacity =
        pb::GetCapacityResponse { available_capacity: 1, maximum_volume_size: Some(2), minimum_volume_size: Some(3) };
    assert_eq!(capacity.encode_to_vec(), [0x08, 1, 0x12, 2, 0x08, 2, 0x1a, 2, 0x08, 3]);

    let node_expand = pb::NodeExpandVolumeRequest {
        volume_id: "v".into(),
        volume_path: "p".into(),
        capacity_range: Some(pb::CapacityRange::default()),
        staging_target_path: "s".into(),
        volume_capability: Some(pb::VolumeCapability::default()),
        secrets: map("k", "v"),
    };
    let mut want = vec![0x0a, 1, b'v', 0x12, 1, b'p', 0x1a, 0, 0x22, 1, b's', 0x2a, 0];
    want.extend(with_prefix(0x32, &ENTRY_KV));
    assert_eq!(node_expand.encode_to_vec(), want);
}

#[test]
fn method_paths_are_the_specs() {
    assert_eq!(pb::identity_server::SERVICE_NAME, "csi.v1.Identity");
    assert_eq!(pb::controller_server::SERVICE_NAME, "csi.v1.Controller");
    assert_eq!(pb::node_server::SERVICE_NAME, "csi.v1.Node");
}
