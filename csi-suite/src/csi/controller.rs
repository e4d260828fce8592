//! csi-sanity's "Controller Service [Controller Server]", "ExpandVolume
//! [Controller Server]" and "ModifyVolume [Controller Server]" specs, plus
//! ListVolumes pagination and ControllerGetVolume in the same style.

use std::collections::BTreeSet;

use csi_core::pb;
use tonic::Code;

use super::{ensure, expect_code, ok, spec, Cap, CtrlCap, Ctx, Res, Spec, IDEMPOTENT_COUNT, MAX_NAME_LENGTH};

const D: &str = "Controller Service [Controller Server]";
const CDV: Cap = Cap::Ctrl(CtrlCap::CreateDeleteVolume);
const CDS: Cap = Cap::Ctrl(CtrlCap::CreateDeleteSnapshot);
const LIST: Cap = Cap::Ctrl(CtrlCap::ListVolumes);
const PUB: Cap = Cap::Ctrl(CtrlCap::PublishUnpublishVolume);
const CLONE: Cap = Cap::Ctrl(CtrlCap::CloneVolume);
const MODIFY: Cap = Cap::Ctrl(CtrlCap::ModifyVolume);
const EXPAND: Cap = Cap::Ctrl(CtrlCap::ExpandVolume);
const GET: Cap = Cap::Ctrl(CtrlCap::GetVolume);

pub fn specs() -> Vec<Spec> {
    let e = "ExpandVolume [Controller Server]";
    let m = "ModifyVolume [Controller Server]";
    vec![
        spec!(format!("{D} ControllerGetCapabilities should return appropriate capabilities"), [], capabilities),
        spec!(
            format!("{D} GetCapacity should return capacity (no optional values added)"),
            [Cap::Ctrl(CtrlCap::GetCapacity)],
            get_capacity
        ),
        spec!(format!("{D} ListVolumes should return appropriate values (no optional values added)"), [LIST], list_plain),
        spec!(format!("{D} ListVolumes should fail when an invalid starting_token is passed"), [LIST], list_bad_token),
        spec!(
            format!("{D} ListVolumes check the presence of new volumes and absence of deleted ones in the volume list"),
            [LIST, CDV],
            list_presence
        ),
        spec!(
            format!("{D} ListVolumes should return next token when a limited number of entries are requested"),
            [LIST, CDV],
            list_pagination
        ),
        spec!(format!("{D} CreateVolume should fail when no name is provided"), [CDV], create_no_name),
        spec!(format!("{D} CreateVolume should fail when no volume capabilities are provided"), [CDV], create_no_caps),
        spec!(format!("{D} CreateVolume should return appropriate values SingleNodeWriter NoCapacity"), [CDV], create_no_capacity),
        spec!(
            format!("{D} CreateVolume should return appropriate values SingleNodeWriter WithCapacity 1Gi"),
            [CDV],
            create_with_capacity
        ),
        spec!(
            format!("{D} CreateVolume should not fail when requesting to create a volume with already existing name and same capacity"),
            [CDV],
            create_twice_same
        ),
        spec!(
            format!("{D} CreateVolume should fail when requesting to create a volume with already existing name and different capacity"),
            [CDV],
            create_twice_different
        ),
        spec!(format!("{D} CreateVolume should not fail when creating volume with maximum-length name"), [CDV], create_max_name),
        spec!(format!("{D} CreateVolume should create volume from an existing source snapshot"), [CDV, CDS], create_from_snapshot),
        spec!(
            format!("{D} CreateVolume should fail when the volume source snapshot is not found"),
            [CDV, CDS],
            create_from_missing_snapshot
        ),
        spec!(format!("{D} CreateVolume should create volume from an existing source volume"), [CDV, CLONE], create_clone),
        spec!(
            format!("{D} CreateVolume should fail when the volume source volume is not found"),
            [CDV, CLONE],
            create_clone_of_missing
        ),
        spec!(format!("{D} CreateVolume should create volume with a volume attribute class"), [CDV, MODIFY], create_with_vac),
        spec!(
            format!("{D} CreateVolume should not create volume with an invalid volume attribute class"),
            [CDV, MODIFY],
            create_with_bad_vac
        ),
        spec!(format!("{D} DeleteVolume should fail when no volume id is provided"), [CDV], delete_no_id),
        spec!(format!("{D} DeleteVolume should succeed when an invalid volume id is used"), [CDV], delete_invalid_id),
        spec!(format!("{D} DeleteVolume should return appropriate values (no optional values added)"), [CDV], delete_plain),
        spec!(format!("{D} ValidateVolumeCapabilities should fail when no volume id is provided"), [], validate_no_id),
        spec!(format!("{D} ValidateVolumeCapabilities should fail when no volume capabilities are provided"), [CDV], validate_no_caps),
        spec!(
            format!("{D} ValidateVolumeCapabilities should return appropriate values (no optional values added)"),
            [CDV],
            validate_plain
        ),
        spec!(format!("{D} ValidateVolumeCapabilities should fail when the requested volume does not exist"), [], validate_missing),
        spec!(format!("{D} ControllerPublishVolume should fail when no volume id is provided"), [PUB], publish_no_volume),
        spec!(format!("{D} ControllerPublishVolume should fail when no node id is provided"), [PUB], publish_no_node),
        spec!(format!("{D} ControllerPublishVolume should fail when no volume capability is provided"), [PUB], publish_no_cap),
        spec!(format!("{D} ControllerPublishVolume should fail when the volume does not exist"), [PUB], publish_missing_volume),
        spec!(format!("{D} ControllerPublishVolume should fail when the node does not exist"), [PUB, CDV], publish_missing_node),
        spec!(
            format!("{D} ControllerPublishVolume should fail when the volume is already published but is incompatible"),
            [PUB, CDV, Cap::Ctrl(CtrlCap::PublishReadonly)],
            publish_incompatible
        ),
        spec!(format!("{D} volume lifecycle should work"), [PUB, CDV], lifecycle_once),
        spec!(format!("{D} volume lifecycle should be idempotent"), [PUB, CDV], lifecycle_idempotent),
        spec!(format!("{D} ControllerUnpublishVolume should fail when no volume id is provided"), [PUB], unpublish_no_volume),
        spec!(format!("{D} ControllerGetVolume should fail when no volume id is provided"), [GET], get_volume_no_id),
        spec!(format!("{D} ControllerGetVolume should fail when the volume does not exist"), [GET], get_volume_missing),
        spec!(format!("{D} ControllerGetVolume should return appropriate values"), [GET, CDV], get_volume_plain),
        spec!(format!("{e} should fail if no volume id is given"), [EXPAND], expand_no_id),
        spec!(format!("{e} should fail if no capacity range is given"), [EXPAND], expand_no_range),
        spec!(format!("{e} should work"), [EXPAND, CDV], expand_works),
        spec!(format!("{m} should fail if no volume id is given"), [MODIFY], modify_no_id),
        spec!(format!("{m} should fail if volume does not exist"), [MODIFY], modify_missing),
        spec!(
            format!("{m} should fail if specified mutable parameters are not supported by the volume"),
            [MODIFY, CDV],
            modify_unsupported
        ),
        spec!(format!("{m} should modify a volume created without a volume attribute class"), [MODIFY, CDV], modify_plain),
        spec!(format!("{m} should modify a volume created with a volume attribute class"), [MODIFY, CDV], modify_with_vac),
        spec!(
            format!("{m} should fail to modify a volume created with a volume attribute class if new mutable parameters are not supported by volume"),
            [MODIFY, CDV],
            modify_with_vac_unsupported
        ),
    ]
}

// ---- ControllerGetCapabilities, GetCapacity --------------------------------------

async fn capabilities(c: &mut Ctx) -> Res {
    use pb::controller_service_capability::Type;
    let r = ok("ControllerGetCapabilities", c.ctrl_caps(pb::ControllerGetCapabilitiesRequest {}).await)?;
    for cap in &r.capabilities {
        match cap.r#type {
            Some(Type::Rpc(rpc)) => {
                let t = CtrlCap::try_from(rpc.r#type).ok().filter(|t| *t != CtrlCap::Unknown);
                ensure!(t.is_some(), "unknown controller capability {}", rpc.r#type);
            }
            None => return Err("a controller capability with no rpc".into()),
        }
    }
    Ok(())
}

/// Any capacity (0 included) is an answer.
async fn get_capacity(c: &mut Ctx) -> Res {
    ok("GetCapacity", c.get_capacity(pb::GetCapacityRequest::default()).await).map(drop)
}

// ---- ListVolumes -----------------------------------------------------------------

async fn list_plain(c: &mut Ctx) -> Res {
    let r = ok("ListVolumes", c.list_volumes(pb::ListVolumesRequest::default()).await)?;
    for e in &r.entries {
        let v = e.volume.as_ref().ok_or("ListVolumes: an entry without a volume")?;
        ensure!(!v.volume_id.is_empty(), "ListVolumes: a volume without volume_id");
    }
    Ok(())
}

async fn list_bad_token(c: &mut Ctx) -> Res {
    let req = pb::ListVolumesRequest { starting_token: "invalid-token".into(), ..Default::default() };
    expect_code("ListVolumes", c.list_volumes(req).await, Code::Aborted)
}

/// Every volume ID, following next_token (bounded, in case a driver loops).
async fn all_volume_ids(c: &mut Ctx) -> Res<Vec<String>> {
    let mut ids = Vec::new();
    let mut token = String::new();
    for _ in 0..1000 {
        let req = pb::ListVolumesRequest { starting_token: token.clone(), ..Default::default() };
        let r = ok("ListVolumes", c.list_volumes(req).await)?;
        ids.extend(r.entries.iter().filter_map(|e| e.volume.as_ref()).map(|v| v.volume_id.clone()));
        if r.next_token.is_empty() {
            return Ok(ids);
        }
        token = r.next_token;
    }
    Err("ListVolumes: next_token never became empty after 1000 pages".into())
}

/// csi-sanity compares counts; we check our volume's ID itself, which
/// other users of the same backend cannot disturb.
async fn list_presence(c: &mut Ctx) -> Res {
    let before = all_volume_ids(c).await?;
    let vol = c.must_create_volume(c.required_req(&c.unique("sanity-list"))).await?;
    ensure!(!before.contains(&vol.volume_id), "ListVolumes listed {} before it was created", vol.volume_id);
    let during = all_volume_ids(c).await?;
    ensure!(during.contains(&vol.volume_id), "ListVolumes does not list the new volume {}", vol.volume_id);
    ok("DeleteVolume", c.delete_volume(c.delete_req(&vol.volume_id)).await)?;
    let after = all_volume_ids(c).await?;
    ensure!(!after.contains(&vol.volume_id), "ListVolumes still lists the deleted volume {}", vol.volume_id);
    Ok(())
}

/// Mirrors csi-sanity's ListSnapshots pagination spec: with at least three
/// volumes, max_entries 2 returns two and a next_token, and that token
/// returns the rest, without repeats. (csi-sanity's own ListVolumes
/// pagination spec is disabled upstream, and it deletes volumes it did not
/// create; this one only creates and deletes its own.)
async fn list_pagination(c: &mut Ctx) -> Res {
    const MAX: i32 = 2;
    let existing = all_volume_ids(c).await?;
    for _ in existing.len()..3 {
        c.must_create_volume(c.required_req(&c.unique("sanity-list-page"))).await?;
    }
    let total = all_volume_ids(c).await?.len();
    let first = ok(
        "ListVolumes (max_entries 2)",
        c.list_volumes(pb::ListVolumesRequest { max_entries: MAX, ..Default::default() }).await,
    )?;
    ensure!(first.entries.len() == MAX as usize, "max_entries 2 returned {} entries", first.entries.len());
    ensure!(!first.next_token.is_empty(), "max_entries 2 of {total} volumes returned no next_token");
    let rest = ok(
        "ListVolumes (starting_token)",
        c.list_volumes(pb::ListVolumesRequest { starting_token: first.next_token.clone(), ..Default::default() }).await,
    )?;
    let ids = |r: &pb::ListVolumesResponse| -> Vec<String> {
        r.entries.iter().filter_map(|e| e.volume.as_ref()).map(|v| v.volume_id.clone()).collect()
    };
    let (a, b) = (ids(&first), ids(&rest));
    ensure!(
        b.len() == total - a.len(),
        "the second page holds {} entries, expected the remaining {} of {total}",
        b.len(),
        total - a.len()
    );
    let union: BTreeSet<&String> = a.iter().chain(b.iter()).collect();
    ensure!(union.len() == a.len() + b.len(), "a volume is listed on both pages: {a:?} / {b:?}");
    Ok(())
}

// ---- CreateVolume ----------------------------------------------------------------

async fn create_no_name(c: &mut Ctx) -> Res {
    let mut req = c.create_req("", None);
    req.volume_capabilities.clear();
    expect_code("CreateVolume", c.create_volume(req).await, Code::InvalidArgument)
}

async fn create_no_caps(c: &mut Ctx) -> Res {
    let mut req = c.create_req(&c.unique("sanity-controller-create-no-volume-capabilities"), None);
    req.volume_capabilities.clear();
    expect_code("CreateVolume", c.create_volume(req).await, Code::InvalidArgument)
}

fn capacity_ok(v: &pb::Volume, size: i64) -> Res {
    ensure!(
        v.capacity_bytes == 0 || v.capacity_bytes >= size,
        "capacity_bytes {} is below the required {size} (and not 0, \"unknown\")",
        v.capacity_bytes
    );
    Ok(())
}

/// csi-sanity's spec of this name sends required_bytes too (the name is historical).
async fn create_no_capacity(c: &mut Ctx) -> Res {
    c.must_create_volume(c.required_req(&c.unique("sanity-controller-create-single-no-capacity"))).await.map(drop)
}

/// OUT_OF_RANGE is the spec's answer for a size a plugin cannot provide;
/// csi-sanity skips then, we pass and say so (a skip here would not be
/// about an advertised capability).
async fn create_with_capacity(c: &mut Ctx) -> Res {
    let req = c.required_req(&c.unique("sanity-controller-create-single-with-capacity"));
    match c.create_volume(req).await {
        Err(st) if st.code() == Code::OutOfRange => {
            eprintln!(
                "note: CreateVolume with required_bytes {} answered OUT_OF_RANGE: {}",
                c.volume_size(),
                st.message()
            );
            Ok(())
        }
        r => {
            let v = ok("CreateVolume", r)?.volume.ok_or("CreateVolume: no volume in the response")?;
            ensure!(!v.volume_id.is_empty(), "CreateVolume: no volume_id");
            capacity_ok(&v, c.volume_size())
        }
    }
}

async fn create_twice_same(c: &mut Ctx) -> Res {
    let name = c.unique("sanity-controller-create-twice");
    let v1 = c.must_create_volume(c.required_req(&name)).await?;
    capacity_ok(&v1, c.volume_size())?;
    let v2 = c.must_create_volume(c.required_req(&name)).await?;
    capacity_ok(&v2, c.volume_size())?;
    ensure!(
        v1.volume_id == v2.volume_id,
        "the second CreateVolume returned {} instead of {}",
        v2.volume_id,
        v1.volume_id
    );
    Ok(())
}

/// As csi-sanity: the first volume is asked for exactly the test size (a
/// limit too), so a capacity it reports must be that size; 0 ("unknown")
/// is accepted, where csi-sanity skips the rest.
async fn create_twice_different(c: &mut Ctx) -> Res {
    let name = c.unique("sanity-controller-create-twice-different");
    let v1 = c.must_create_volume(c.sized_req(&name)).await?;
    ensure!(
        v1.capacity_bytes == 0 || v1.capacity_bytes == c.volume_size(),
        "asked for exactly {} bytes (required = limit), got capacity_bytes {}",
        c.volume_size(),
        v1.capacity_bytes
    );
    let size2 = 2 * c.volume_size();
    let req = c.create_req(&name, Some(pb::CapacityRange { required_bytes: size2, limit_bytes: size2 }));
    expect_code("CreateVolume (same name, twice the size)", c.create_volume(req).await, Code::AlreadyExists)
}

async fn create_max_name(c: &mut Ctx) -> Res {
    let name = c.unique_len("sanity-controller-create-maxlen", MAX_NAME_LENGTH);
    let v = c.must_create_volume(c.required_req(&name)).await?;
    capacity_ok(&v, c.volume_size())
}

/// Repeats CreateSnapshot (idempotent) until the snapshot is ready to use, for up to two minutes.
pub async fn ready_snapshot(c: &mut Ctx, name: &str, source: &str) -> Res<pb::Snapshot> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let s = c.must_create_snapshot(c.snapshot_req(name, source)).await?;
        if s.ready_to_use {
            return Ok(s);
        }
        ensure!(std::time::Instant::now() < deadline, "snapshot {} not ready_to_use after 2 minutes", s.snapshot_id);
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}

async fn create_from_snapshot(c: &mut Ctx) -> Res {
    let v1 = c.must_create_volume(c.required_req(&c.unique("sanity-controller-source-vol"))).await?;
    let snap = ready_snapshot(c, &c.unique("sanity-controller-snap-from-vol"), &v1.volume_id).await?;
    let mut req = c.required_req(&c.unique("sanity-controller-vol-from-snap"));
    req.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Snapshot(pb::volume_content_source::SnapshotSource {
            snapshot_id: snap.snapshot_id.clone(),
        })),
    });
    let v2 = c.must_create_volume(req).await?;
    ensure!(v2.content_source.is_some(), "the volume created from snapshot {} has no content_source", snap.snapshot_id);
    Ok(())
}

async fn create_from_missing_snapshot(c: &mut Ctx) -> Res {
    let mut req = c.required_req(&c.unique("sanity-controller-vol-from-snap"));
    req.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Snapshot(pb::volume_content_source::SnapshotSource {
            snapshot_id: "non-existing-snapshot-id".into(),
        })),
    });
    expect_code("CreateVolume", c.create_volume(req).await, Code::NotFound)
}

fn clone_source(id: &str) -> Option<pb::VolumeContentSource> {
    Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Volume(pb::volume_content_source::VolumeSource {
            volume_id: id.to_string(),
        })),
    })
}

async fn create_clone(c: &mut Ctx) -> Res {
    let v1 = c.must_create_volume(c.required_req(&c.unique("sanity-controller-source-vol"))).await?;
    let mut req = c.required_req(&c.unique("sanity-controller-vol-from-vol"));
    req.volume_content_source = clone_source(&v1.volume_id);
    c.must_create_volume(req).await.map(drop)
}

async fn create_clone_of_missing(c: &mut Ctx) -> Res {
    let mut req = c.required_req(&c.unique("sanity-controller-vol-from-vol"));
    req.volume_content_source = clone_source(&c.fake_volume_id());
    expect_code("CreateVolume", c.create_volume(req).await, Code::NotFound)
}

fn fake_mutable() -> std::collections::HashMap<String, String> {
    [("XXX_FakeKey".to_string(), "XXX_FakeValue".to_string())].into()
}

async fn create_with_vac(c: &mut Ctx) -> Res {
    let mut req = c.required_req(&c.unique("sanity-controller-vol-with-mutable-parameters"));
    req.mutable_parameters = c.s.opts.mutable_params.clone();
    c.must_create_volume(req).await.map(drop)
}

async fn create_with_bad_vac(c: &mut Ctx) -> Res {
    let mut req = c.required_req(&c.unique("sanity-controller-vol-with-mutable-parameters"));
    req.mutable_parameters = fake_mutable();
    expect_code("CreateVolume", c.create_volume(req).await, Code::InvalidArgument)
}

// ---- DeleteVolume ----------------------------------------------------------------

async fn delete_no_id(c: &mut Ctx) -> Res {
    expect_code("DeleteVolume", c.delete_volume(c.delete_req("")).await, Code::InvalidArgument)
}

/// A volume that does not exist is already deleted: success.
async fn delete_invalid_id(c: &mut Ctx) -> Res {
    ok("DeleteVolume", c.delete_volume(c.delete_req("fake-vol-id")).await).map(drop)
}

async fn delete_plain(c: &mut Ctx) -> Res {
    let v = c.must_create_volume(c.required_req(&c.unique("sanity-controller-create-appropriate"))).await?;
    ok("DeleteVolume", c.delete_volume(c.delete_req(&v.volume_id)).await).map(drop)
}

// ---- ValidateVolumeCapabilities ---------------------------------------------------

fn validate_req(c: &Ctx, id: &str, caps: Vec<pb::VolumeCapability>) -> pb::ValidateVolumeCapabilitiesRequest {
    pb::ValidateVolumeCapabilitiesRequest {
        volume_id: id.to_string(),
        volume_capabilities: caps,
        secrets: c.secret("ControllerValidateVolumeCapabilitiesSecret"),
        ..Default::default()
    }
}

async fn validate_no_id(c: &mut Ctx) -> Res {
    expect_code("ValidateVolumeCapabilities", c.validate(validate_req(c, "", vec![])).await, Code::InvalidArgument)
}

async fn validate_no_caps(c: &mut Ctx) -> Res {
    let v = c.must_create_volume(c.required_req(&c.unique("sanity-controller-validate-nocaps"))).await?;
    expect_code(
        "ValidateVolumeCapabilities",
        c.validate(validate_req(c, &v.volume_id, vec![])).await,
        Code::InvalidArgument,
    )
}

/// If the plugin confirms, it must say which capabilities it confirmed.
async fn validate_plain(c: &mut Ctx) -> Res {
    let v = c.must_create_volume(c.required_req(&c.unique("sanity-controller-validate"))).await?;
    let r = ok("ValidateVolumeCapabilities", c.validate(validate_req(c, &v.volume_id, vec![c.snw()])).await)?;
    if let Some(conf) = &r.confirmed {
        ensure!(!conf.volume_capabilities.is_empty(), "confirmed is set but lists no volume_capabilities");
    }
    Ok(())
}

async fn validate_missing(c: &mut Ctx) -> Res {
    let req = validate_req(c, &c.fake_volume_id(), vec![c.snw()]);
    expect_code("ValidateVolumeCapabilities", c.validate(req).await, Code::NotFound)
}

// ---- ControllerPublishVolume / Unpublish / lifecycle -------------------------------

fn publish_req(
    c: &Ctx,
    volume: &str,
    node: &str,
    cap: Option<pb::VolumeCapability>,
) -> pb::ControllerPublishVolumeRequest {
    pb::ControllerPublishVolumeRequest {
        volume_id: volume.to_string(),
        node_id: node.to_string(),
        volume_capability: cap,
        secrets: c.secret("ControllerPublishVolumeSecret"),
        ..Default::default()
    }
}

async fn publish_no_volume(c: &mut Ctx) -> Res {
    let req = publish_req(c, "", "", None);
    expect_code("ControllerPublishVolume", c.ctrl_publish(req).await, Code::InvalidArgument)
}

async fn publish_no_node(c: &mut Ctx) -> Res {
    let req = publish_req(c, &c.fake_volume_id(), "", None);
    expect_code("ControllerPublishVolume", c.ctrl_publish(req).await, Code::InvalidArgument)
}

async fn publish_no_cap(c: &mut Ctx) -> Res {
    let req = publish_req(c, &c.fake_volume_id(), &c.fake_node_id(), None);
    expect_code("ControllerPublishVolume", c.ctrl_publish(req).await, Code::InvalidArgument)
}

async fn publish_missing_volume(c: &mut Ctx) -> Res {
    let req = publish_req(c, &c.fake_volume_id(), &c.fake_node_id(), Some(c.snw()));
    expect_code("ControllerPublishVolume", c.ctrl_publish(req).await, Code::NotFound)
}

async fn publish_missing_node(c: &mut Ctx) -> Res {
    let v = c.must_create_volume(c.required_req(&c.unique("sanity-controller-wrong-node"))).await?;
    let req = publish_req(c, &v.volume_id, &c.fake_node_id(), Some(c.snw()));
    expect_code("ControllerPublishVolume", c.ctrl_publish(req).await, Code::NotFound)
}

async fn node_id(c: &mut Ctx) -> Res<pb::NodeGetInfoResponse> {
    let ni = ok("NodeGetInfo", c.node_info(pb::NodeGetInfoRequest {}).await)?;
    ensure!(!ni.node_id.is_empty(), "NodeGetInfo: empty node_id");
    Ok(ni)
}

async fn publish_incompatible(c: &mut Ctx) -> Res {
    let v = c.must_create_volume(c.required_req(&c.unique("sanity-controller-published-incompatible"))).await?;
    let ni = node_id(c).await?;
    let mut req = publish_req(c, &v.volume_id, &ni.node_id, Some(c.snw()));
    ok("ControllerPublishVolume", c.ctrl_publish(req.clone()).await)?;
    req.readonly = true;
    expect_code("ControllerPublishVolume (again, readonly)", c.ctrl_publish(req).await, Code::AlreadyExists)
}

/// Create, publish `count` times, unpublish `count` times, delete; every
/// call must succeed (csi-sanity leaves the unpublish to its cleanup).
async fn lifecycle(c: &mut Ctx, count: usize) -> Res {
    let ni = node_id(c).await?;
    let mut req = c.required_req(&c.unique(&format!("sanity-controller-publish-{count}")));
    req.accessibility_requirements =
        ni.accessible_topology.clone().map(|t| pb::TopologyRequirement { requisite: vec![t], preferred: vec![] });
    let v = c.must_create_volume(req).await?;
    for i in 0..count {
        ok(&format!("ControllerPublishVolume #{}", i + 1), c.ctrl_publish(c.ctrl_publish_req(&v, &ni.node_id)).await)?;
    }
    for i in 0..count {
        let req = c.ctrl_unpublish_req(&v.volume_id, &ni.node_id);
        ok(&format!("ControllerUnpublishVolume #{}", i + 1), c.ctrl_unpublish(req).await)?;
    }
    ok("DeleteVolume", c.delete_volume(c.delete_req(&v.volume_id)).await).map(drop)
}

async fn lifecycle_once(c: &mut Ctx) -> Res {
    lifecycle(c, 1).await
}

async fn lifecycle_idempotent(c: &mut Ctx) -> Res {
    lifecycle(c, IDEMPOTENT_COUNT).await
}

async fn unpublish_no_volume(c: &mut Ctx) -> Res {
    let req = c.ctrl_unpublish_req("", "");
    expect_code("ControllerUnpublishVolume", c.ctrl_unpublish(req).await, Code::InvalidArgument)
}

// ---- ControllerGetVolume (GET_VOLUME; not in csi-sanity) --------------------------

async fn get_volume_no_id(c: &mut Ctx) -> Res {
    let r = c.ctrl_get_volume(pb::ControllerGetVolumeRequest { volume_id: String::new() }).await;
    expect_code("ControllerGetVolume", r, Code::InvalidArgument)
}

async fn get_volume_missing(c: &mut Ctx) -> Res {
    let r = c.ctrl_get_volume(pb::ControllerGetVolumeRequest { volume_id: c.fake_volume_id() }).await;
    expect_code("ControllerGetVolume", r, Code::NotFound)
}

/// The volume comes back under its ID; with VOLUME_CONDITION advertised, its
/// status carries a condition.
async fn get_volume_plain(c: &mut Ctx) -> Res {
    let v = c.must_create_volume(c.required_req(&c.unique("sanity-controller-get-volume"))).await?;
    let r = ok(
        "ControllerGetVolume",
        c.ctrl_get_volume(pb::ControllerGetVolumeRequest { volume_id: v.volume_id.clone() }).await,
    )?;
    let got = r.volume.ok_or("ControllerGetVolume: no volume in the response")?;
    ensure!(got.volume_id == v.volume_id, "ControllerGetVolume returned volume {} for {}", got.volume_id, v.volume_id);
    let status = r.status.ok_or("ControllerGetVolume: no status (REQUIRED by the spec)")?;
    if c.has(Cap::Ctrl(CtrlCap::VolumeCondition)) {
        let cond =
            status.volume_condition.ok_or("VOLUME_CONDITION is advertised but status has no volume_condition")?;
        ensure!(!cond.abnormal, "a fresh volume is reported abnormal: {}", cond.message);
    }
    Ok(())
}

// ---- ExpandVolume ------------------------------------------------------------------

async fn expand_no_id(c: &mut Ctx) -> Res {
    expect_code("ControllerExpandVolume", c.ctrl_expand(c.expand_req("")).await, Code::InvalidArgument)
}

/// Mirrors csi-sanity, which also leaves the volume ID empty here.
async fn expand_no_range(c: &mut Ctx) -> Res {
    let mut req = c.expand_req("");
    req.capacity_range = None;
    req.volume_capability = None;
    expect_code("ControllerExpandVolume", c.ctrl_expand(req).await, Code::InvalidArgument)
}

async fn expand_works(c: &mut Ctx) -> Res {
    let v = c.must_create_volume(c.required_req(&c.unique("sanity-expand-volume"))).await?;
    let r = ok("ControllerExpandVolume", c.ctrl_expand(c.expand_req(&v.volume_id)).await)?;
    ensure!(
        r.capacity_bytes == c.expand_size(),
        "ControllerExpandVolume returned capacity_bytes {}, expected {}",
        r.capacity_bytes,
        c.expand_size()
    );
    Ok(())
}

// ---- ModifyVolume --------------------------------------------------------------------

async fn modify_no_id(c: &mut Ctx) -> Res {
    expect_code("ControllerModifyVolume", c.ctrl_modify(c.modify_req("")).await, Code::InvalidArgument)
}

async fn modify_missing(c: &mut Ctx) -> Res {
    expect_code("ControllerModifyVolume", c.ctrl_modify(c.modify_req("non-existing-volume-id")).await, Code::NotFound)
}

async fn modify_unsupported(c: &mut Ctx) -> Res {
    let v = c.must_create_volume(c.required_req(&c.unique("sanity-modify-volume"))).await?;
    let mut req = c.modify_req(&v.volume_id);
    req.mutable_parameters = fake_mutable();
    expect_code("ControllerModifyVolume", c.ctrl_modify(req).await, Code::InvalidArgument)
}

async fn modify_plain(c: &mut Ctx) -> Res {
    let v = c.must_create_volume(c.required_req(&c.unique("sanity-modify-volume"))).await?;
    ok("ControllerModifyVolume", c.ctrl_modify(c.modify_req(&v.volume_id)).await).map(drop)
}

async fn create_with_mutable(c: &mut Ctx) -> Res<pb::Volume> {
    let mut req = c.required_req(&c.unique("sanity-modify-volume"));
    req.mutable_parameters = c.s.opts.mutable_params.clone();
    c.must_create_volume(req).await
}

async fn modify_with_vac(c: &mut Ctx) -> Res {
    let v = create_with_mutable(c).await?;
    ok("ControllerModifyVolume", c.ctrl_modify(c.modify_req(&v.volume_id)).await).map(drop)
}

async fn modify_with_vac_unsupported(c: &mut Ctx) -> Res {
    let v = create_with_mutable(c).await?;
    let mut req = c.modify_req(&v.volume_id);
    req.mutable_parameters = fake_mutable();
    expect_code("ControllerModifyVolume", c.ctrl_modify(req).await, Code::InvalidArgument)
}
