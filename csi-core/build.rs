//! Generates the CSI messages and the tonic client/server stubs from
//! proto/csi.proto (needs `protoc`; scripts/testbed.sh installs it).

/// Messages that carry a `secrets` map. prost's derived Debug would print
/// the map, so these get a hand-written, redacting Debug in src/redact.rs.
pub const WITH_SECRETS: &[&str] = &[
    "CreateVolumeRequest",
    "DeleteVolumeRequest",
    "ControllerPublishVolumeRequest",
    "ControllerUnpublishVolumeRequest",
    "ValidateVolumeCapabilitiesRequest",
    "ControllerModifyVolumeRequest",
    "CreateSnapshotRequest",
    "DeleteSnapshotRequest",
    "ListSnapshotsRequest",
    "GetSnapshotRequest",
    "ControllerExpandVolumeRequest",
    "NodeStageVolumeRequest",
    "NodePublishVolumeRequest",
    "NodeExpandVolumeRequest",
];

fn main() -> Result<(), Box<dyn std::error::Error>> {
    println!("cargo:rerun-if-changed=proto/csi.proto");
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        // Unimplemented RPCs answer UNIMPLEMENTED, as the spec asks, without
        // every driver writing the stubs out.
        .generate_default_stubs(true)
        .skip_debug(WITH_SECRETS.iter().map(|m| format!(".csi.v1.{m}")))
        .compile_protos(&["proto/csi.proto"], &["proto"])?;
    Ok(())
}
