//! The Controller service against moto (a real EC2 API emulator on
//! loopback, started per test by `testkit::moto`): every path and its CSI
//! codes. Where moto is more lenient than EC2 (a second attachment, client
//! tokens), the test asserts the driver's own check, which is what real EC2
//! users rely on too. Each test uses its own driver name, so the
//! `<driver>/cluster` tag keeps its ListVolumes/ListSnapshots to its own.

use std::collections::HashMap;

use aws_sdk_ec2::types::{Filter, InstanceType, Placement};
use csi_cloud::aws::Clients;
use csi_cloud::controller::ControllerService;
use csi_core::pb::{self, controller_server::Controller, volume_capability as vc};
use testkit::moto::Moto;
use tonic::{Code, Request};

struct Fixture {
    _moto: Moto,
    clients: Clients,
    svc: ControllerService,
    driver: String,
}

fn config(driver: &str) -> csi_cloud::Config {
    csi_cloud::Config {
        driver_name: driver.to_string(),
        default_zone: None,
        extra_tags: vec![("team".into(), "storage".into())],
    }
}

fn fixture(test: &str) -> Fixture {
    let moto = Moto::start().expect("moto_server (scripts/testbed.sh installs it)");
    let clients = Clients::for_emulator(&moto.endpoint(), testkit::moto::REGION, "testing", "testing");
    let driver = format!("{test}.ebs.csi.test");
    let svc = ControllerService::new(clients.clone(), config(&driver));
    Fixture { _moto: moto, clients, svc, driver }
}

fn mount_cap() -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(vc::AccessType::Mount(vc::MountVolume::default())),
        access_mode: Some(vc::AccessMode { mode: vc::access_mode::Mode::SingleNodeWriter as i32 }),
    }
}

fn block_cap() -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(vc::AccessType::Block(vc::BlockVolume {})),
        access_mode: Some(vc::AccessMode { mode: vc::access_mode::Mode::SingleNodeWriter as i32 }),
    }
}

fn create_req(name: &str, bytes: i64, params: &[(&str, &str)]) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        name: name.to_string(),
        capacity_range: Some(pb::CapacityRange { required_bytes: bytes, limit_bytes: 0 }),
        volume_capabilities: vec![mount_cap()],
        parameters: params.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    }
}

fn zone_req(zone: &str) -> pb::TopologyRequirement {
    let t = pb::Topology { segments: HashMap::from([(csi_cloud::ZONE_KEY.to_string(), zone.to_string())]) };
    pb::TopologyRequirement { requisite: vec![t.clone()], preferred: vec![t] }
}

const GIB: i64 = 1 << 30;

impl Fixture {
    async fn create(&self, req: pb::CreateVolumeRequest) -> Result<pb::Volume, tonic::Status> {
        Ok(self.svc.create_volume(Request::new(req)).await?.into_inner().volume.unwrap())
    }

    async fn describe(&self, id: &str) -> aws_sdk_ec2::types::Volume {
        let out = self.clients.ec2.describe_volumes().volume_ids(id).send().await.unwrap();
        out.volumes()[0].clone()
    }

    async fn instances(&self, n: i32, zone: &str) -> Vec<String> {
        let out = self
            .clients
            .ec2
            .run_instances()
            .image_id("ami-12c6146b")
            .min_count(n)
            .max_count(n)
            .instance_type(InstanceType::M5Large)
            .placement(Placement::builder().availability_zone(zone).build())
            .send()
            .await
            .unwrap();
        out.instances().iter().map(|i| i.instance_id().unwrap().to_string()).collect()
    }

    async fn publish(&self, vol: &str, node: &str) -> Result<String, tonic::Status> {
        let r = self
            .svc
            .controller_publish_volume(Request::new(pb::ControllerPublishVolumeRequest {
                volume_id: vol.into(),
                node_id: node.into(),
                volume_capability: Some(mount_cap()),
                ..Default::default()
            }))
            .await?
            .into_inner();
        Ok(r.publish_context["devicePath"].clone())
    }

    async fn unpublish(&self, vol: &str, node: &str) -> Result<(), tonic::Status> {
        self.svc
            .controller_unpublish_volume(Request::new(pb::ControllerUnpublishVolumeRequest {
                volume_id: vol.into(),
                node_id: node.into(),
                ..Default::default()
            }))
            .await
            .map(|_| ())
    }

    async fn tagged(&self, key: &str, value: &str) -> Vec<String> {
        let out = self
            .clients
            .ec2
            .describe_volumes()
            .filters(Filter::builder().name(format!("tag:{key}")).values(value).build())
            .send()
            .await
            .unwrap();
        out.volumes().iter().filter_map(|v| v.volume_id()).map(str::to_string).collect()
    }
}

fn tags_of(v: &aws_sdk_ec2::types::Volume) -> HashMap<String, String> {
    v.tags().iter().map(|t| (t.key().unwrap().to_string(), t.value().unwrap().to_string())).collect()
}

#[tokio::test]
async fn create_applies_parameters_and_a_retry_or_restart_finds_the_same_volume() {
    let f = fixture("create");
    let mut req = create_req(
        "pvc-create-1",
        7 * GIB + GIB / 2,
        &[
            ("type", "gp3"),
            ("iops", "4000"),
            ("Throughput", "250"),
            ("encrypted", "true"),
            ("kmsKeyId", "arn:aws:kms:us-east-1:123456789012:key/k1"),
            ("tagSpecification_1", "owner={{ .PVCNamespace }}/{{ .PVCName }}"),
            ("csi.storage.k8s.io/pvc/name", "data"),
            ("csi.storage.k8s.io/pvc/namespace", "db"),
        ],
    );
    req.accessibility_requirements = Some(zone_req("us-east-1b"));
    let v = f.create(req.clone()).await.unwrap();
    assert_eq!(v.capacity_bytes, 8 * GIB, "EBS sizes are whole GiB, rounded up");
    assert_eq!(v.accessible_topology[0].segments[csi_cloud::ZONE_KEY], "us-east-1b");
    let ec2 = f.describe(&v.volume_id).await;
    assert_eq!(ec2.volume_type().unwrap().as_str(), "gp3");
    assert_eq!((ec2.iops(), ec2.throughput(), ec2.encrypted()), (Some(4000), Some(250), Some(true)));
    assert_eq!(ec2.kms_key_id(), Some("arn:aws:kms:us-east-1:123456789012:key/k1"));
    let tags = tags_of(&ec2);
    assert_eq!(tags["CSIVolumeName"], "pvc-create-1");
    assert_eq!(tags[&format!("{}/cluster", f.driver)], "true");
    assert_eq!(tags["kubernetes.io/created-for/pvc/name"], "data");
    assert_eq!(tags["owner"], "db/data");
    assert_eq!(tags["team"], "storage", "--extra-tags");

    // The CO's retry, and a restarted controller (nothing in memory): the
    // same volume, found by its name tag (moto ignores ClientToken, so this
    // is the lookup alone).
    assert_eq!(f.create(req.clone()).await.unwrap().volume_id, v.volume_id);
    let restarted = ControllerService::new(f.clients.clone(), config(&f.driver));
    let again = restarted.create_volume(Request::new(req.clone())).await.unwrap().into_inner();
    assert_eq!(again.volume.unwrap().volume_id, v.volume_id);
    assert_eq!(f.tagged("CSIVolumeName", "pvc-create-1").await, vec![v.volume_id.clone()]);

    // Same name, other size or type: ALREADY_EXISTS.
    let mut bigger = req.clone();
    bigger.capacity_range = Some(pb::CapacityRange { required_bytes: 10 * GIB, limit_bytes: 0 });
    assert_eq!(f.create(bigger).await.unwrap_err().code(), Code::AlreadyExists);
    let other_type = create_req("pvc-create-1", 8 * GIB, &[("type", "io2"), ("iops", "200")]);
    assert_eq!(f.create(other_type).await.unwrap_err().code(), Code::AlreadyExists);

    // No topology: the region's first zone; concurrent creates of one name: one volume.
    let plain = create_req("pvc-create-2", 0, &[]);
    let (a, b) = tokio::join!(f.create(plain.clone()), f.create(plain.clone()));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_eq!(a.volume_id, b.volume_id);
    assert_eq!(a.capacity_bytes, 100 * GIB, "no capacity range: 100 GiB");
    assert_eq!(a.accessible_topology[0].segments[csi_cloud::ZONE_KEY], "us-east-1a");

    // Deleted, then created again under the same name: a new volume.
    f.svc
        .delete_volume(Request::new(pb::DeleteVolumeRequest { volume_id: a.volume_id.clone(), ..Default::default() }))
        .await
        .unwrap();
    let c = f.create(plain).await.unwrap();
    assert_ne!(c.volume_id, a.volume_id);

    // Bad requests.
    for (req, code) in [
        (create_req("pvc-bad", GIB, &[("type", "gp9")]), Code::InvalidArgument),
        (create_req("pvc-bad", GIB, &[("colour", "red")]), Code::InvalidArgument),
        (create_req("", GIB, &[]), Code::InvalidArgument),
        (create_req("pvc-bad", 20_000 * GIB, &[]), Code::OutOfRange),
    ] {
        let e = f.create(req.clone()).await.unwrap_err();
        assert_eq!(e.code(), code, "{req:?}: {e:?}");
    }
    assert!(f.tagged("CSIVolumeName", "pvc-bad").await.is_empty(), "a refused request creates nothing");
}

#[tokio::test]
async fn publish_attaches_once_and_refuses_a_second_instance() {
    let f = fixture("publish");
    let nodes = f.instances(2, "us-east-1a").await;
    let (a, b) = (&nodes[0], &nodes[1]);
    let mut req = create_req("pvc-pub", GIB, &[]);
    req.accessibility_requirements = Some(zone_req("us-east-1a"));
    let vol = f.create(req).await.unwrap().volume_id;

    let dev = f.publish(&vol, a).await.unwrap();
    assert!(dev.starts_with("/dev/xvd"), "{dev}");
    assert_eq!(f.publish(&vol, a).await.unwrap(), dev, "a retry answers the same device");
    let ec2 = f.describe(&vol).await;
    assert_eq!(ec2.attachments().len(), 1);
    assert_eq!(ec2.attachments()[0].state().unwrap().as_str(), "attached");

    // moto would move the volume; real EBS refuses; the driver refuses first.
    let e = f.publish(&vol, b).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains(a.as_str()) && e.message().contains(&vol), "{}", e.message());
    assert_eq!(f.describe(&vol).await.attachments()[0].instance_id(), Some(a.as_str()), "still on A");

    let got = f
        .svc
        .controller_get_volume(Request::new(pb::ControllerGetVolumeRequest { volume_id: vol.clone() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.status.unwrap().published_node_ids, vec![a.clone()]);

    // Unpublish (twice: idempotent), then B can have it.
    f.unpublish(&vol, a).await.unwrap();
    f.unpublish(&vol, a).await.unwrap();
    assert!(f.describe(&vol).await.attachments().is_empty());
    assert_eq!(f.publish(&vol, b).await.unwrap(), "/dev/xvdba");

    // A just-released name rests: A's next attachment gets another one.
    let mut req2 = create_req("pvc-pub-2", GIB, &[]);
    req2.accessibility_requirements = Some(zone_req("us-east-1a"));
    let vol2 = f.create(req2).await.unwrap().volume_id;
    let dev2 = f.publish(&vol2, a).await.unwrap();
    assert_ne!(dev2, dev, "the name A released is not handed out again at once");

    // Unknown volume or node: NOT_FOUND, naming it; another zone: FAILED_PRECONDITION.
    let e = f.publish("vol-0123456789abcdef0", a).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("vol-0123456789abcdef0"), "{}", e.message());
    let e = f.publish(&vol2, "i-0123456789abcdef0").await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    assert!(e.message().contains("i-0123456789abcdef0"), "{}", e.message());
    let far = f.instances(1, "us-east-1c").await;
    f.unpublish(&vol2, a).await.unwrap();
    let e = f.publish(&vol2, &far[0]).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");

    // Deleting an attached volume: FAILED_PRECONDITION naming the instance;
    // a volume already gone: success.
    let e = f
        .svc
        .delete_volume(Request::new(pb::DeleteVolumeRequest { volume_id: vol.clone(), ..Default::default() }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition);
    assert!(e.message().contains(b.as_str()), "{}", e.message());
    for id in [vol2.as_str(), vol2.as_str(), "vol-0123456789abcdef0"] {
        f.svc
            .delete_volume(Request::new(pb::DeleteVolumeRequest { volume_id: id.into(), ..Default::default() }))
            .await
            .unwrap();
    }
    f.unpublish(&vol2, a).await.expect("unpublish of a deleted volume is done");
}

#[tokio::test]
async fn the_node_limit_is_resource_exhausted() {
    let f = fixture("limit");
    let node = f.instances(1, "us-east-1a").await.remove(0);
    let limit = f
        .clients
        .ec2
        .describe_instance_types()
        .instance_types(InstanceType::M5Large)
        .send()
        .await
        .unwrap()
        .instance_types()[0]
        .ebs_info()
        .unwrap()
        .maximum_ebs_attachments()
        .unwrap() as usize;
    // The root volume takes one slot.
    let mut devices = std::collections::HashSet::new();
    for i in 0..limit - 1 {
        let mut req = create_req(&format!("pvc-limit-{i}"), GIB, &[]);
        req.accessibility_requirements = Some(zone_req("us-east-1a"));
        let vol = f.create(req).await.unwrap().volume_id;
        assert!(devices.insert(f.publish(&vol, &node).await.unwrap()), "device names are unique");
    }
    let mut req = create_req("pvc-limit-last", GIB, &[]);
    req.accessibility_requirements = Some(zone_req("us-east-1a"));
    let vol = f.create(req).await.unwrap().volume_id;
    let e = f.publish(&vol, &node).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains(&node) && e.message().contains(&vol), "{}", e.message());
    assert!(f.describe(&vol).await.attachments().is_empty());
}

#[tokio::test]
async fn unpublish_from_a_dead_instance_succeeds() {
    let f = fixture("dead");
    let node = f.instances(1, "us-east-1a").await.remove(0);
    let mut req = create_req("pvc-dead", GIB, &[]);
    req.accessibility_requirements = Some(zone_req("us-east-1a"));
    let vol = f.create(req).await.unwrap().volume_id;
    f.publish(&vol, &node).await.unwrap();
    f.clients.ec2.terminate_instances().instance_ids(&node).send().await.unwrap();
    f.unpublish(&vol, &node).await.unwrap();
    assert!(f.describe(&vol).await.attachments().is_empty());
    // The volume can go to another node now.
    let other = f.instances(1, "us-east-1a").await.remove(0);
    f.publish(&vol, &other).await.unwrap();
    // A stopped instance keeps its attachments (in moto as in EC2): the
    // detach goes out forced, and the volume is free.
    f.clients.ec2.stop_instances().instance_ids(&other).send().await.unwrap();
    f.unpublish(&vol, &other).await.unwrap();
    assert!(f.describe(&vol).await.attachments().is_empty());
}

#[tokio::test]
async fn list_volumes_pages_through_the_drivers_volumes_with_published_nodes() {
    let f = fixture("list");
    let node = f.instances(1, "us-east-1a").await.remove(0);
    let mut ids = Vec::new();
    for i in 0..5 {
        let mut req = create_req(&format!("pvc-list-{i}"), GIB, &[]);
        req.accessibility_requirements = Some(zone_req("us-east-1a"));
        ids.push(f.create(req).await.unwrap().volume_id);
    }
    f.publish(&ids[2], &node).await.unwrap();
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = f
            .svc
            .list_volumes(Request::new(pb::ListVolumesRequest { max_entries: 2, starting_token: token.clone() }))
            .await
            .unwrap()
            .into_inner();
        assert!(r.entries.len() <= 2);
        for e in r.entries {
            let v = e.volume.unwrap();
            let published = e.status.unwrap().published_node_ids;
            assert_eq!(published, if v.volume_id == ids[2] { vec![node.clone()] } else { vec![] });
            seen.push(v.volume_id);
        }
        pages += 1;
        if r.next_token.is_empty() {
            break;
        }
        token = r.next_token;
    }
    seen.sort();
    ids.sort();
    assert_eq!((seen, pages), (ids, 3), "every volume once, in pages of 2; only this driver's");
    let e = f
        .svc
        .list_volumes(Request::new(pb::ListVolumesRequest { max_entries: 2, starting_token: "bogus".into() }))
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::Aborted);
}

#[tokio::test]
async fn snapshots_create_list_filter_page_restore_and_delete() {
    let f = fixture("snap");
    let mut req = create_req("pvc-snap-src", 3 * GIB, &[]);
    req.accessibility_requirements = Some(zone_req("us-east-1a"));
    let vol = f.create(req).await.unwrap().volume_id;
    let other = f.create(create_req("pvc-snap-other", GIB, &[])).await.unwrap().volume_id;

    let snap = |name: &str, src: &str| pb::CreateSnapshotRequest {
        source_volume_id: src.into(),
        name: name.into(),
        ..Default::default()
    };
    let s1 = f.svc.create_snapshot(Request::new(snap("snap-1", &vol))).await.unwrap().into_inner().snapshot.unwrap();
    assert_eq!((s1.source_volume_id.as_str(), s1.size_bytes), (vol.as_str(), 3 * GIB));
    assert!(s1.creation_time.is_some());
    let again = f.svc.create_snapshot(Request::new(snap("snap-1", &vol))).await.unwrap().into_inner();
    assert_eq!(again.snapshot.unwrap().snapshot_id, s1.snapshot_id, "idempotent by name");
    let e = f.svc.create_snapshot(Request::new(snap("snap-1", &other))).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists);
    let e = f.svc.create_snapshot(Request::new(snap("snap-x", "vol-0123456789abcdef0"))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    for name in ["snap-2", "snap-3"] {
        f.svc.create_snapshot(Request::new(snap(name, &vol))).await.unwrap();
    }
    let s4 = f.svc.create_snapshot(Request::new(snap("snap-4", &other))).await.unwrap().into_inner().snapshot.unwrap();

    let list = |max: i32, token: &str, vol: &str, id: &str| pb::ListSnapshotsRequest {
        max_entries: max,
        starting_token: token.into(),
        source_volume_id: vol.into(),
        snapshot_id: id.into(),
        ..Default::default()
    };
    let p1 = f.svc.list_snapshots(Request::new(list(2, "", "", ""))).await.unwrap().into_inner();
    assert_eq!(p1.entries.len(), 2);
    let p2 = f.svc.list_snapshots(Request::new(list(2, &p1.next_token, "", ""))).await.unwrap().into_inner();
    assert_eq!((p2.entries.len(), p2.next_token.as_str()), (2, ""), "4 snapshots of this driver, none of moto's own");
    let by_vol = f.svc.list_snapshots(Request::new(list(0, "", &vol, ""))).await.unwrap().into_inner();
    assert_eq!(by_vol.entries.len(), 3);
    let by_id = f.svc.list_snapshots(Request::new(list(0, "", "", &s4.snapshot_id))).await.unwrap().into_inner();
    assert_eq!(by_id.entries[0].snapshot.as_ref().unwrap().source_volume_id, other);
    let none = f.svc.list_snapshots(Request::new(list(0, "", "", "snap-0123456789abcdef0"))).await.unwrap();
    assert!(none.into_inner().entries.is_empty());

    // A volume from the snapshot: its size at least the snapshot's.
    let mut from = create_req("pvc-from-snap", GIB, &[]);
    from.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(pb::volume_content_source::Type::Snapshot(pb::volume_content_source::SnapshotSource {
            snapshot_id: s1.snapshot_id.clone(),
        })),
    });
    let restored = f.create(from.clone()).await.unwrap();
    assert_eq!(restored.capacity_bytes, 3 * GIB);
    assert_eq!(restored.content_source, from.volume_content_source);
    assert_eq!(f.describe(&restored.volume_id).await.snapshot_id(), Some(s1.snapshot_id.as_str()));
    if let Some(pb::volume_content_source::Type::Snapshot(s)) =
        from.volume_content_source.as_mut().and_then(|s| s.r#type.as_mut())
    {
        s.snapshot_id = "snap-0123456789abcdef0".into();
    }
    from.name = "pvc-from-missing".into();
    assert_eq!(f.create(from).await.unwrap_err().code(), Code::NotFound);

    for id in [s1.snapshot_id.as_str(), s1.snapshot_id.as_str(), "snap-0123456789abcdef0"] {
        f.svc
            .delete_snapshot(Request::new(pb::DeleteSnapshotRequest { snapshot_id: id.into(), ..Default::default() }))
            .await
            .unwrap();
    }
    let after = f.svc.list_snapshots(Request::new(list(0, "", &vol, ""))).await.unwrap().into_inner();
    assert_eq!(after.entries.len(), 2);
}

#[tokio::test]
async fn expand_and_modify_change_the_volume() {
    let f = fixture("modify");
    let vol = f.create(create_req("pvc-mod", GIB, &[])).await.unwrap().volume_id;
    let expand = |bytes: i64, cap: pb::VolumeCapability| pb::ControllerExpandVolumeRequest {
        volume_id: vol.clone(),
        capacity_range: Some(pb::CapacityRange { required_bytes: bytes, limit_bytes: 0 }),
        volume_capability: Some(cap),
        ..Default::default()
    };
    let r = f.svc.controller_expand_volume(Request::new(expand(4 * GIB + 1, mount_cap()))).await.unwrap().into_inner();
    assert_eq!((r.capacity_bytes, r.node_expansion_required), (5 * GIB, true));
    assert_eq!(f.describe(&vol).await.size(), Some(5));
    let r = f.svc.controller_expand_volume(Request::new(expand(2 * GIB, block_cap()))).await.unwrap().into_inner();
    assert_eq!(
        (r.capacity_bytes, r.node_expansion_required),
        (5 * GIB, false),
        "never shrinks; block needs no node step"
    );
    let mut missing = expand(GIB, mount_cap());
    missing.volume_id = "vol-0123456789abcdef0".into();
    assert_eq!(f.svc.controller_expand_volume(Request::new(missing)).await.unwrap_err().code(), Code::NotFound);

    let modify = |kv: &[(&str, &str)], id: &str| pb::ControllerModifyVolumeRequest {
        volume_id: id.into(),
        mutable_parameters: kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
        ..Default::default()
    };
    f.svc.controller_modify_volume(Request::new(modify(&[("type", "io2"), ("iops", "2000")], &vol))).await.unwrap();
    let v = f.describe(&vol).await;
    assert_eq!((v.volume_type().unwrap().as_str(), v.iops()), ("io2", Some(2000)));
    for (kv, id, code) in [
        (vec![("size", "9")], vol.as_str(), Code::InvalidArgument),
        (vec![("type", "gp9")], vol.as_str(), Code::InvalidArgument),
        (vec![("type", "gp3")], "vol-0123456789abcdef0", Code::NotFound),
    ] {
        let e = f.svc.controller_modify_volume(Request::new(modify(&kv, id))).await.unwrap_err();
        assert_eq!(e.code(), code, "{kv:?}: {e:?}");
    }
}
