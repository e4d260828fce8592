//! csi-sanity's "Node Service" specs, plus NodeGetVolumeStats on a
//! published volume and its volume condition.
//!
//! Paths are csi-sanity's: the suite creates the target path's *parent* and
//! the staging directory (per spec, under `--mount-dir`); the driver must
//! create the target path itself and remove it in NodeUnpublishVolume. When
//! STAGE_UNSTAGE_VOLUME is not advertised, the flows below skip staging and
//! still publish and unpublish; ControllerPublish happens only when
//! PUBLISH_UNPUBLISH_VOLUME is advertised.
//!
//! Where csi-sanity sends the relative path `some/path` for "a path the
//! volume is not at" and expects NOT_FOUND, we send it too, and then an
//! absolute path that does not exist (inside the spec's directory): both
//! must be NOT_FOUND, so a driver that passes here passes csi-sanity, and one
//! that only answers relative paths right does not pass.

use std::collections::HashMap;
use std::path::Path;

use csi_core::pb;
use tonic::Code;

use super::{ensure, expect_code, ok, spec, Cap, CtrlCap, Ctx, NodeCap, PluginSvc, Res, Spec, IDEMPOTENT_COUNT};

const D: &str = "Node Service";
const CDV: Cap = Cap::Ctrl(CtrlCap::CreateDeleteVolume);
const STAGE: Cap = Cap::Node(NodeCap::StageUnstageVolume);
const STATS: Cap = Cap::Node(NodeCap::GetVolumeStats);
const NEXP: Cap = Cap::Node(NodeCap::ExpandVolume);
const CTRL: Cap = Cap::Plugin(PluginSvc::ControllerService);
const SNMW: Cap = Cap::Node(NodeCap::SingleNodeMultiWriter);

/// csi-sanity's relative "path where no volume is".
const SOME_PATH: &str = "some/path";

pub fn specs() -> Vec<Spec> {
    vec![
        spec!(format!("{D} NodeGetCapabilities should return appropriate capabilities"), [], capabilities),
        spec!(format!("{D} NodeGetInfo should return appropriate values"), [], info),
        spec!(format!("{D} NodePublishVolume should fail when no volume id is provided"), [], publish_no_id),
        spec!(format!("{D} NodePublishVolume should fail when no target path is provided"), [], publish_no_target),
        spec!(format!("{D} NodePublishVolume should fail when no volume capability is provided"), [], publish_no_cap),
        spec!(
            format!("{D} NodePublishVolume with single node multi writer capability should fail when volume with single node single writer access mode is already mounted at a different target path"),
            [SNMW, CDV],
            publish_snsw_twice
        ),
        spec!(format!("{D} NodeUnpublishVolume should fail when no volume id is provided"), [], unpublish_no_id),
        spec!(format!("{D} NodeUnpublishVolume should fail when no target path is provided"), [], unpublish_no_target),
        spec!(format!("{D} NodeUnpublishVolume should remove target path"), [CDV], unpublish_removes_target),
        spec!(format!("{D} NodeStageVolume should fail when no volume id is provided"), [STAGE], stage_no_id),
        spec!(
            format!("{D} NodeStageVolume should fail when no staging target path is provided"),
            [STAGE],
            stage_no_path
        ),
        spec!(
            format!("{D} NodeStageVolume should fail when no volume capability is provided"),
            [STAGE, CDV],
            stage_no_cap
        ),
        spec!(format!("{D} NodeUnstageVolume should fail when no volume id is provided"), [STAGE], unstage_no_id),
        spec!(
            format!("{D} NodeUnstageVolume should fail when no staging target path is provided"),
            [STAGE],
            unstage_no_path
        ),
        spec!(format!("{D} NodeGetVolumeStats should fail when no volume id is provided"), [STATS], stats_no_id),
        spec!(format!("{D} NodeGetVolumeStats should fail when no volume path is provided"), [STATS], stats_no_path),
        spec!(format!("{D} NodeGetVolumeStats should fail when volume is not found"), [STATS], stats_missing_volume),
        spec!(
            format!("{D} NodeGetVolumeStats should fail when volume does not exist on the specified path"),
            [STATS, CDV],
            stats_wrong_path
        ),
        spec!(format!("{D} NodeGetVolumeStats should return appropriate values"), [STATS, CDV], stats_plain),
        spec!(
            format!("{D} NodeGetVolumeStats should report the volume condition"),
            [STATS, Cap::Node(NodeCap::VolumeCondition), CDV],
            stats_condition
        ),
        spec!(format!("{D} NodeExpandVolume should fail when no volume id is provided"), [NEXP], expand_no_id),
        spec!(format!("{D} NodeExpandVolume should fail when no volume path is provided"), [NEXP, CDV], expand_no_path),
        spec!(format!("{D} NodeExpandVolume should fail when volume is not found"), [NEXP], expand_missing),
        spec!(
            format!("{D} NodeExpandVolume should work if node-expand is called after node-publish"),
            [NEXP, CDV],
            expand_after_publish
        ),
        spec!(format!("{D} should work"), [CTRL, CDV], works),
        spec!(format!("{D} should be idempotent"), [CTRL, CDV], idempotent),
    ]
}

async fn capabilities(c: &mut Ctx) -> Res {
    use pb::node_service_capability::Type;
    let r = ok("NodeGetCapabilities", c.node_caps(pb::NodeGetCapabilitiesRequest {}).await)?;
    for cap in &r.capabilities {
        match cap.r#type {
            Some(Type::Rpc(rpc)) => {
                ensure!(NodeCap::try_from(rpc.r#type).is_ok(), "unknown node capability {}", rpc.r#type)
            }
            None => return Err("a node capability with no rpc".into()),
        }
    }
    Ok(())
}

async fn info(c: &mut Ctx) -> Res {
    let ni = ok("NodeGetInfo", c.node_info(pb::NodeGetInfoRequest {}).await)?;
    ensure!(!ni.node_id.is_empty(), "NodeGetInfo: empty node_id");
    ensure!(ni.max_volumes_per_node >= 0, "NodeGetInfo: negative max_volumes_per_node {}", ni.max_volumes_per_node);
    if c.s.caps.plugin_node.contains(&(PluginSvc::VolumeAccessibilityConstraints as i32)) {
        ensure!(
            ni.accessible_topology.is_some(),
            "VOLUME_ACCESSIBILITY_CONSTRAINTS is advertised but NodeGetInfo has no accessible_topology"
        );
    }
    Ok(())
}

// ---- argument checks ---------------------------------------------------------------

fn publish_req(c: &Ctx, volume: &str, target: &str, cap: Option<pb::VolumeCapability>) -> pb::NodePublishVolumeRequest {
    pb::NodePublishVolumeRequest {
        volume_id: volume.to_string(),
        target_path: target.to_string(),
        volume_capability: cap,
        secrets: c.secret("NodePublishVolumeSecret"),
        ..Default::default()
    }
}

async fn publish_no_id(c: &mut Ctx) -> Res {
    let req = publish_req(c, "", "", None);
    expect_code("NodePublishVolume", c.node_publish(req).await, Code::InvalidArgument)
}

async fn publish_no_target(c: &mut Ctx) -> Res {
    let req = publish_req(c, &c.fake_volume_id(), "", None);
    expect_code("NodePublishVolume", c.node_publish(req).await, Code::InvalidArgument)
}

async fn publish_no_cap(c: &mut Ctx) -> Res {
    let target = c.target_path()?;
    let req = publish_req(c, &c.fake_volume_id(), &target, None);
    expect_code("NodePublishVolume", c.node_publish(req).await, Code::InvalidArgument)
}

async fn unpublish_no_id(c: &mut Ctx) -> Res {
    let req = pb::NodeUnpublishVolumeRequest::default();
    expect_code("NodeUnpublishVolume", c.node_unpublish(req).await, Code::InvalidArgument)
}

async fn unpublish_no_target(c: &mut Ctx) -> Res {
    let req = pb::NodeUnpublishVolumeRequest { volume_id: c.fake_volume_id(), target_path: String::new() };
    expect_code("NodeUnpublishVolume", c.node_unpublish(req).await, Code::InvalidArgument)
}

fn mock_device() -> HashMap<String, String> {
    [("device".to_string(), "/dev/mock".to_string())].into()
}

fn stage_req(c: &Ctx, volume: &str, path: &str, cap: Option<pb::VolumeCapability>) -> pb::NodeStageVolumeRequest {
    pb::NodeStageVolumeRequest {
        volume_id: volume.to_string(),
        staging_target_path: path.to_string(),
        volume_capability: cap,
        publish_context: mock_device(),
        secrets: c.secret("NodeStageVolumeSecret"),
        ..Default::default()
    }
}

async fn stage_no_id(c: &mut Ctx) -> Res {
    let staging = c.staging_path()?;
    let req = stage_req(c, "", &staging, Some(c.snw()));
    expect_code("NodeStageVolume", c.node_stage(req).await, Code::InvalidArgument)
}

async fn stage_no_path(c: &mut Ctx) -> Res {
    let req = stage_req(c, &c.fake_volume_id(), "", Some(c.snw()));
    expect_code("NodeStageVolume", c.node_stage(req).await, Code::InvalidArgument)
}

async fn stage_no_cap(c: &mut Ctx) -> Res {
    let v = c.must_create_volume(c.create_req(&c.unique("sanity-node-stage-nocaps"), None)).await?;
    let staging = c.staging_path()?;
    let req = stage_req(c, &v.volume_id, &staging, None);
    expect_code("NodeStageVolume", c.node_stage(req).await, Code::InvalidArgument)
}

async fn unstage_no_id(c: &mut Ctx) -> Res {
    let staging = c.staging_path()?;
    let req = pb::NodeUnstageVolumeRequest { volume_id: String::new(), staging_target_path: staging };
    expect_code("NodeUnstageVolume", c.node_unstage(req).await, Code::InvalidArgument)
}

async fn unstage_no_path(c: &mut Ctx) -> Res {
    let req = pb::NodeUnstageVolumeRequest { volume_id: c.fake_volume_id(), staging_target_path: String::new() };
    expect_code("NodeUnstageVolume", c.node_unstage(req).await, Code::InvalidArgument)
}

// ---- a volume on this node: create, [controller publish], [stage], publish ------------

/// A volume made usable on this node, and how to undo it.
struct Published {
    vol: pb::Volume,
    node_id: String,
    /// Set when ControllerPublishVolume was called.
    ctrl_published: bool,
    /// The staging path, when the driver stages.
    staging: Option<String>,
    target: String,
}

/// Creates a volume and publishes it on this node, each step `count` times
/// (csi-sanity's runControllerTest).
async fn publish_new(c: &mut Ctx, prefix: &str, count: usize) -> Res<Published> {
    let cap = c.snw();
    let (vol, node_id) = create_for_node(c, prefix, cap.clone()).await?;
    publish(c, vol, node_id, count, cap).await
}

/// A volume for this node (honouring its topology) with capability `cap`,
/// and the node's ID.
async fn create_for_node(c: &mut Ctx, prefix: &str, cap: pb::VolumeCapability) -> Res<(pb::Volume, String)> {
    let ni = ok("NodeGetInfo", c.node_info(pb::NodeGetInfoRequest {}).await)?;
    ensure!(!ni.node_id.is_empty(), "NodeGetInfo: empty node_id");
    let mut req = c.required_req(&c.unique(prefix));
    req.volume_capabilities = vec![cap];
    req.accessibility_requirements =
        ni.accessible_topology.clone().map(|t| pb::TopologyRequirement { requisite: vec![t], preferred: vec![] });
    Ok((c.must_create_volume(req).await?, ni.node_id))
}

/// [Controller publish,] [stage `count` times,] publish `count` times, with `cap`.
async fn publish(
    c: &mut Ctx,
    vol: pb::Volume,
    node_id: String,
    count: usize,
    cap: pb::VolumeCapability,
) -> Res<Published> {
    let mut publish_context = HashMap::new();
    let ctrl_published = c.has(Cap::Ctrl(CtrlCap::PublishUnpublishVolume));
    if ctrl_published {
        let mut req = c.ctrl_publish_req(&vol, &node_id);
        req.volume_capability = Some(cap.clone());
        let r = ok("ControllerPublishVolume", c.ctrl_publish(req).await)?;
        publish_context = r.publish_context;
    }
    let staging = if c.has(Cap::Node(NodeCap::StageUnstageVolume)) { Some(c.staging_path()?) } else { None };
    if let Some(path) = &staging {
        for i in 0..count {
            let req = pb::NodeStageVolumeRequest {
                volume_id: vol.volume_id.clone(),
                publish_context: publish_context.clone(),
                staging_target_path: path.clone(),
                volume_capability: Some(cap.clone()),
                secrets: c.secret("NodeStageVolumeSecret"),
                volume_context: vol.volume_context.clone(),
            };
            ok(&format!("NodeStageVolume #{}", i + 1), c.node_stage(req).await)?;
        }
    }
    let target = c.target_path()?;
    for i in 0..count {
        let req = pb::NodePublishVolumeRequest {
            volume_id: vol.volume_id.clone(),
            publish_context: publish_context.clone(),
            staging_target_path: staging.clone().unwrap_or_default(),
            target_path: target.clone(),
            volume_capability: Some(cap.clone()),
            readonly: false,
            secrets: c.secret("NodePublishVolumeSecret"),
            volume_context: vol.volume_context.clone(),
        };
        ok(&format!("NodePublishVolume #{}", i + 1), c.node_publish(req).await)?;
    }
    ensure!(exists(&target), "NodePublishVolume succeeded but the target path {target} does not exist");
    Ok(Published { vol, node_id, ctrl_published, staging, target })
}

/// Undoes [`publish_new`], each step `count` times, then deletes the volume.
async fn unpublish_all(c: &mut Ctx, p: &Published, count: usize) -> Res {
    let id = &p.vol.volume_id;
    for i in 0..count {
        let req = pb::NodeUnpublishVolumeRequest { volume_id: id.clone(), target_path: p.target.clone() };
        ok(&format!("NodeUnpublishVolume #{}", i + 1), c.node_unpublish(req).await)?;
    }
    if let Some(path) = &p.staging {
        for i in 0..count {
            let req = pb::NodeUnstageVolumeRequest { volume_id: id.clone(), staging_target_path: path.clone() };
            ok(&format!("NodeUnstageVolume #{}", i + 1), c.node_unstage(req).await)?;
        }
    }
    if p.ctrl_published {
        ok("ControllerUnpublishVolume", c.ctrl_unpublish(c.ctrl_unpublish_req(id, &p.node_id)).await)?;
    }
    ok("DeleteVolume", c.delete_volume(c.delete_req(id)).await).map(drop)
}

/// lstat, so that a dangling symlink counts as present.
fn exists(p: &str) -> bool {
    Path::new(p).symlink_metadata().is_ok()
}

fn stats_req(p: &Published) -> pb::NodeGetVolumeStatsRequest {
    pb::NodeGetVolumeStatsRequest {
        volume_id: p.vol.volume_id.clone(),
        volume_path: p.target.clone(),
        staging_target_path: p.staging.clone().unwrap_or_default(),
    }
}

/// Usage is reported, in known units, with no negative numbers.
fn check_usage(r: &pb::NodeGetVolumeStatsResponse) -> Res {
    use pb::volume_usage::Unit;
    ensure!(!r.usage.is_empty(), "NodeGetVolumeStats: no usage");
    for u in &r.usage {
        let unit = Unit::try_from(u.unit).unwrap_or(Unit::Unknown);
        ensure!(unit != Unit::Unknown, "NodeGetVolumeStats: usage with unit {} (REQUIRED: BYTES or INODES)", u.unit);
        ensure!(
            u.available >= 0 && u.total >= 0 && u.used >= 0,
            "NodeGetVolumeStats: negative {:?} usage: available {} total {} used {}",
            unit,
            u.available,
            u.total,
            u.used
        );
    }
    Ok(())
}

/// The whole flow once, or `count` times per step; stats in between when advertised.
async fn full_flow(c: &mut Ctx, count: usize) -> Res {
    let p = publish_new(c, &format!("sanity-node-full-{count}"), count).await?;
    if c.has(STATS) {
        let r = ok("NodeGetVolumeStats", c.node_stats(stats_req(&p)).await)?;
        check_usage(&r)?;
    }
    unpublish_all(c, &p, count).await
}

async fn works(c: &mut Ctx) -> Res {
    full_flow(c, 1).await
}

async fn idempotent(c: &mut Ctx) -> Res {
    full_flow(c, IDEMPOTENT_COUNT).await
}

/// A SINGLE_NODE_SINGLE_WRITER volume published at one target may not be
/// published at another: FAILED_PRECONDITION (the spec's code for "not
/// MULTI_NODE, already published elsewhere").
async fn publish_snsw_twice(c: &mut Ctx) -> Res {
    let cap = c.mount_cap(pb::volume_capability::access_mode::Mode::SingleNodeSingleWriter);
    let (vol, node_id) = create_for_node(c, "sanity-node-publish-single-node-single-writer", cap.clone()).await?;
    let p = publish(c, vol, node_id, 1, cap.clone()).await?;
    let other = format!("{}/other_target", c.target_parent()?);
    let req = pb::NodePublishVolumeRequest {
        volume_id: p.vol.volume_id.clone(),
        staging_target_path: p.staging.clone().unwrap_or_default(),
        target_path: other,
        volume_capability: Some(cap),
        secrets: c.secret("NodePublishVolumeSecret"),
        volume_context: p.vol.volume_context.clone(),
        ..Default::default()
    };
    expect_code("NodePublishVolume (a second target)", c.node_publish(req).await, Code::FailedPrecondition)
}

/// The SP creates the target path and MUST remove it in NodeUnpublishVolume.
async fn unpublish_removes_target(c: &mut Ctx) -> Res {
    let p = publish_new(c, "sanity-node-unpublish-volume", 1).await?;
    let req = pb::NodeUnpublishVolumeRequest { volume_id: p.vol.volume_id.clone(), target_path: p.target.clone() };
    ok("NodeUnpublishVolume", c.node_unpublish(req).await)?;
    ensure!(!exists(&p.target), "the target path {} still exists after NodeUnpublishVolume", p.target);
    Ok(())
}

// ---- NodeGetVolumeStats ----------------------------------------------------------------

async fn stats_no_id(c: &mut Ctx) -> Res {
    let req = pb::NodeGetVolumeStatsRequest { volume_path: SOME_PATH.into(), ..Default::default() };
    expect_code("NodeGetVolumeStats", c.node_stats(req).await, Code::InvalidArgument)
}

/// NodeGetVolumeStats of `volume` at `some/path` and at an absolute path
/// that does not exist: NOT_FOUND both times.
async fn stats_not_found_at_absent_paths(c: &mut Ctx, volume: &str) -> Res {
    for path in [SOME_PATH.to_string(), c.absent_path()?] {
        let req = pb::NodeGetVolumeStatsRequest {
            volume_id: volume.to_string(),
            volume_path: path.clone(),
            ..Default::default()
        };
        expect_code(&format!("NodeGetVolumeStats at {path:?}"), c.node_stats(req).await, Code::NotFound)?;
    }
    Ok(())
}

async fn stats_no_path(c: &mut Ctx) -> Res {
    let req = pb::NodeGetVolumeStatsRequest { volume_id: c.fake_volume_id(), ..Default::default() };
    expect_code("NodeGetVolumeStats", c.node_stats(req).await, Code::InvalidArgument)
}

async fn stats_missing_volume(c: &mut Ctx) -> Res {
    let id = c.fake_volume_id();
    stats_not_found_at_absent_paths(c, &id).await
}

async fn stats_wrong_path(c: &mut Ctx) -> Res {
    let p = publish_new(c, "sanity-node-get-volume-stats", 1).await?;
    stats_not_found_at_absent_paths(c, &p.vol.volume_id).await
}

async fn stats_plain(c: &mut Ctx) -> Res {
    let p = publish_new(c, "sanity-node-volume-stats", 1).await?;
    let r = ok("NodeGetVolumeStats", c.node_stats(stats_req(&p)).await)?;
    check_usage(&r)
}

/// With node VOLUME_CONDITION advertised, stats carry a condition, and a
/// freshly published volume is not abnormal.
async fn stats_condition(c: &mut Ctx) -> Res {
    let p = publish_new(c, "sanity-node-volume-condition", 1).await?;
    let r = ok("NodeGetVolumeStats", c.node_stats(stats_req(&p)).await)?;
    let cond =
        r.volume_condition.ok_or("VOLUME_CONDITION is advertised but NodeGetVolumeStats has no volume_condition")?;
    ensure!(!cond.abnormal, "a freshly published volume is reported abnormal: {}", cond.message);
    Ok(())
}

// ---- NodeExpandVolume -------------------------------------------------------------------

fn node_expand_req(c: &Ctx, volume: &str, path: &str) -> pb::NodeExpandVolumeRequest {
    pb::NodeExpandVolumeRequest {
        volume_id: volume.to_string(),
        volume_path: path.to_string(),
        volume_capability: Some(c.snw()),
        secrets: c.secret("NodeExpandVolumeSecret"),
        ..Default::default()
    }
}

async fn expand_no_id(c: &mut Ctx) -> Res {
    let parent = c.target_parent()?;
    let req = node_expand_req(c, "", &parent);
    expect_code("NodeExpandVolume", c.node_expand(req).await, Code::InvalidArgument)
}

async fn expand_no_path(c: &mut Ctx) -> Res {
    let v = c.must_create_volume(c.required_req(&c.unique("sanity-node-expand-volume-valid-id"))).await?;
    let req = node_expand_req(c, &v.volume_id, "");
    expect_code("NodeExpandVolume", c.node_expand(req).await, Code::InvalidArgument)
}

/// As csi-sanity (`some/path`, no capability), then at an absolute path.
async fn expand_missing(c: &mut Ctx) -> Res {
    for path in [SOME_PATH.to_string(), c.absent_path()?] {
        let mut req = node_expand_req(c, &c.fake_volume_id(), &path);
        req.volume_capability = None;
        req.secrets.clear();
        expect_code(&format!("NodeExpandVolume at {path:?}"), c.node_expand(req).await, Code::NotFound)?;
    }
    Ok(())
}

/// As csi-sanity: controller expansion (when advertised) before publishing,
/// node expansion of the published volume after.
async fn expand_after_publish(c: &mut Ctx) -> Res {
    let cap = c.snw();
    let (vol, node_id) = create_for_node(c, "sanity-node-expand-volume", cap).await?;
    if c.has(Cap::Ctrl(CtrlCap::ExpandVolume)) {
        let mut req = c.expand_req(&vol.volume_id);
        req.volume_capability = None;
        let r = ok("ControllerExpandVolume", c.ctrl_expand(req).await)?;
        ensure!(
            r.capacity_bytes == c.expand_size(),
            "ControllerExpandVolume returned capacity_bytes {}, expected {}",
            r.capacity_bytes,
            c.expand_size()
        );
    }
    let cap = c.snw();
    let p = publish(c, vol, node_id, 1, cap).await?;
    let mut req = node_expand_req(c, &p.vol.volume_id, &p.target);
    req.capacity_range = Some(pb::CapacityRange { required_bytes: c.expand_size(), limit_bytes: 0 });
    req.staging_target_path = p.staging.clone().unwrap_or_default();
    ok("NodeExpandVolume", c.node_expand(req).await).map(drop)
}
