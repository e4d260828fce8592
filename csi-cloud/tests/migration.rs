//! A volume moves between nodes through the controller, as it does when a
//! pod is rescheduled: one `csi-cloud --mode controller` and two
//! `csi-cloud --mode node` processes (instances A and B in moto, each with
//! its own state dir and paths), called over gRPC as a CO calls them. The
//! data plane is the one stand-in issue #15 allows (`common/ec2_host.rs`:
//! what moto says is attached to A or B appears as a loop device under the
//! volume's by-id name, the image kept across detaches).
//!
//! Asserted as a user sees it: the file written on A is on B, byte for
//! byte; B cannot take a volume A still holds (FAILED_PRECONDITION naming
//! A); after A dies (its instance stopped in EC2, its node gone), the
//! controller's forced detach frees the volume and B gets A's data.

mod common;

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};
use std::time::Instant;

use aws_sdk_ec2::types::{InstanceType, Placement};
use common::ec2_host::Ec2Host;
use common::process;
use csi_cloud::aws::Clients;
use csi_core::pb::{self, volume_capability as vc};
use pb::controller_client::ControllerClient;
use pb::node_client::NodeClient;
use sha2::{Digest, Sha256};
use testkit::moto::Moto;
use testkit::service::ServiceProcess;
use tonic::transport::Channel;
use tonic::Code;

const ZONE: &str = "us-east-1a";
const GIB: i64 = 1 << 30;

fn cap() -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(vc::AccessType::Mount(vc::MountVolume { fs_type: "ext4".into(), ..Default::default() })),
        access_mode: Some(vc::AccessMode { mode: vc::access_mode::Mode::SingleNodeWriter as i32 }),
    }
}

/// A node plugin and the paths the CO gives it for one volume.
struct NodeSide {
    id: String,
    proc: ServiceProcess,
    client: NodeClient<Channel>,
}

impl NodeSide {
    async fn start(name: &str, moto: &Moto, id: &str) -> NodeSide {
        let proc = process::start(name, moto, &["--mode", "node", "--node-id", id]);
        let client = NodeClient::new(process::channel(&proc).await);
        NodeSide { id: id.to_string(), proc, client }
    }

    fn staging(&self, vol: &str) -> PathBuf {
        let p = self.proc.dir().join("plugins").join(vol).join("globalmount");
        std::fs::create_dir_all(&p).unwrap();
        p
    }

    fn target(&self, vol: &str) -> PathBuf {
        let p = self.proc.dir().join("pods").join(vol);
        std::fs::create_dir_all(&p).unwrap();
        p.join("mount")
    }

    /// NodeStage and NodePublish, with the publish context the controller gave.
    async fn mount(&mut self, vol: &str, context: &HashMap<String, String>) -> PathBuf {
        let staging = self.staging(vol);
        let target = self.target(vol);
        self.client
            .node_stage_volume(pb::NodeStageVolumeRequest {
                volume_id: vol.into(),
                publish_context: context.clone(),
                staging_target_path: staging.to_string_lossy().into(),
                volume_capability: Some(cap()),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("NodeStage {vol} on {}: {e}", self.id));
        self.client
            .node_publish_volume(pb::NodePublishVolumeRequest {
                volume_id: vol.into(),
                publish_context: context.clone(),
                staging_target_path: staging.to_string_lossy().into(),
                target_path: target.to_string_lossy().into(),
                volume_capability: Some(cap()),
                ..Default::default()
            })
            .await
            .unwrap_or_else(|e| panic!("NodePublish {vol} on {}: {e}", self.id));
        target
    }

    /// NodeUnpublish and NodeUnstage.
    async fn unmount(&mut self, vol: &str) {
        let target = self.target(vol);
        self.client
            .node_unpublish_volume(pb::NodeUnpublishVolumeRequest {
                volume_id: vol.into(),
                target_path: target.to_string_lossy().into(),
            })
            .await
            .unwrap_or_else(|e| panic!("NodeUnpublish {vol} on {}: {e}", self.id));
        self.client
            .node_unstage_volume(pb::NodeUnstageVolumeRequest {
                volume_id: vol.into(),
                staging_target_path: self.staging(vol).to_string_lossy().into(),
            })
            .await
            .unwrap_or_else(|e| panic!("NodeUnstage {vol} on {}: {e}", self.id));
        let left: Vec<String> =
            testkit::service::mounts_under(self.proc.dir()).into_iter().filter(|m| m.contains(vol)).collect();
        assert_eq!(left, Vec::<String>::new(), "{} still mounts {vol}", self.id);
    }
}

async fn publish(
    ctl: &mut ControllerClient<Channel>,
    vol: &str,
    node: &str,
) -> Result<HashMap<String, String>, tonic::Status> {
    ctl.controller_publish_volume(pb::ControllerPublishVolumeRequest {
        volume_id: vol.into(),
        node_id: node.into(),
        volume_capability: Some(cap()),
        ..Default::default()
    })
    .await
    .map(|r| r.into_inner().publish_context)
}

async fn unpublish(ctl: &mut ControllerClient<Channel>, vol: &str, node: &str) {
    ctl.controller_unpublish_volume(pb::ControllerUnpublishVolumeRequest {
        volume_id: vol.into(),
        node_id: node.into(),
        ..Default::default()
    })
    .await
    .unwrap_or_else(|e| panic!("ControllerUnpublish {vol} from {node}: {e}"));
}

async fn published_nodes(ctl: &mut ControllerClient<Channel>, vol: &str) -> Vec<String> {
    let r =
        ctl.controller_get_volume(pb::ControllerGetVolumeRequest { volume_id: vol.into() }).await.unwrap().into_inner();
    r.status.map(|s| s.published_node_ids).unwrap_or_default()
}

/// Writes 4 MiB of seeded pseudo-random data as `dir/data`, fsynced; its SHA-256.
fn write_data(dir: &Path, seed: u64) -> Vec<u8> {
    use std::io::Write;
    let mut r = testkit::rng::SplitMix64(seed);
    let data: Vec<u8> = (0..(4 << 20) / 8).flat_map(|_| r.next().to_le_bytes()).collect();
    let mut f = std::fs::File::create(dir.join("data")).unwrap();
    f.write_all(&data).unwrap();
    f.sync_all().unwrap();
    Sha256::digest(&data).to_vec()
}

fn read_sum(dir: &Path) -> Vec<u8> {
    Sha256::digest(std::fs::read(dir.join("data")).unwrap()).to_vec()
}

/// How long after now `link` appears, polled every 10 ms for at most the
/// node's default `--device-wait` (10 s): the stand-in's lag, which that
/// wait must cover.
fn device_lag(link: &Path) -> std::time::Duration {
    let t = Instant::now();
    while !link.exists() {
        assert!(t.elapsed() < std::time::Duration::from_secs(10), "{} did not appear within 10 s", link.display());
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    t.elapsed()
}

async fn volume_ids(c: &Clients) -> BTreeSet<String> {
    let out = c.ec2.describe_volumes().send().await.unwrap();
    out.volumes().iter().filter_map(|v| v.volume_id()).map(str::to_string).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_volume_moves_from_node_a_to_node_b_with_its_data_also_when_a_dies() {
    let started = Instant::now();
    let moto = Moto::start().expect("moto_server (scripts/testbed.sh installs it)");
    let clients = Clients::for_emulator(&moto.endpoint(), testkit::moto::REGION, "testing", "testing");
    let out = clients
        .ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .min_count(2)
        .max_count(2)
        .instance_type(InstanceType::M5Large)
        .placement(Placement::builder().availability_zone(ZONE).build())
        .send()
        .await
        .unwrap();
    let ids: Vec<String> = out.instances().iter().map(|i| i.instance_id().unwrap().to_string()).collect();
    let (a_id, b_id) = (ids[0].clone(), ids[1].clone());
    let root_volumes = volume_ids(&clients).await;

    let host = Ec2Host::start(&moto.endpoint(), &ids);
    let controller = process::start("controller", &moto, &["--mode", "controller", "--default-zone", ZONE]);
    let mut ctl = ControllerClient::new(process::channel(&controller).await);
    let mut a = NodeSide::start("node-a", &moto, &a_id).await;
    let mut b = NodeSide::start("node-b", &moto, &b_id).await;
    for n in [&mut a, &mut b] {
        let info = n.client.node_get_info(pb::NodeGetInfoRequest {}).await.unwrap().into_inner();
        assert_eq!(info.node_id, n.id);
    }

    let create = |name: &str| pb::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(pb::CapacityRange { required_bytes: GIB, limit_bytes: 0 }),
        volume_capabilities: vec![cap()],
        parameters: [("type".to_string(), "gp3".to_string())].into(),
        ..Default::default()
    };
    let vol = ctl.create_volume(create("pvc-migrate")).await.unwrap().into_inner().volume.unwrap().volume_id;

    // On A: attach, stage, publish, write.
    let ctx = publish(&mut ctl, &vol, &a_id).await.expect("ControllerPublish to A");
    assert!(ctx.get("devicePath").is_some_and(|d| d.starts_with("/dev/xvd")), "{ctx:?}");
    let on_a = a.mount(&vol, &ctx).await;
    let sum = write_data(&on_a, 1);
    assert_eq!(published_nodes(&mut ctl, &vol).await, vec![a_id.clone()]);

    // B cannot take it while A holds it.
    let e = publish(&mut ctl, &vol, &b_id).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(e.message().contains(&a_id), "the refusal must name A's instance: {e}");
    assert_eq!(published_nodes(&mut ctl, &vol).await, vec![a_id.clone()], "the refusal moved the volume");

    // A lets go: unpublish, unstage, detach. The host no longer has it.
    a.unmount(&vol).await;
    unpublish(&mut ctl, &vol, &a_id).await;
    assert_eq!(published_nodes(&mut ctl, &vol).await, Vec::<String>::new());
    host.settle();
    assert!(!host.exposed().contains_key(&vol), "still exposed after the detach: {:?}", host.exposed());
    let link = csi_cloud::device::nvme_path(&vol).unwrap();
    assert!(!link.exists(), "{} is still on the host after the detach", link.display());

    // On B: the same data.
    let ctx = publish(&mut ctl, &vol, &b_id).await.expect("ControllerPublish to B");
    let lag = device_lag(&link);
    eprintln!(
        "MEASURE the stand-in's device appeared {:.0} ms after ControllerPublish returned",
        lag.as_secs_f64() * 1e3
    );
    let on_b = b.mount(&vol, &ctx).await;
    assert_eq!(read_sum(&on_b), sum, "the data written on A differs on B");
    assert_eq!(host.exposed().get(&vol), Some(&b_id));
    assert!(link.exists(), "{} is not on the host after the attach to B", link.display());
    assert_eq!(published_nodes(&mut ctl, &vol).await, vec![b_id.clone()]);

    // A second volume on A, and then A dies without unpublishing: its
    // instance stops in EC2, its node plugin and mounts are gone.
    let vol2 = ctl.create_volume(create("pvc-migrate-dead-node")).await.unwrap().into_inner().volume.unwrap().volume_id;
    let ctx = publish(&mut ctl, &vol2, &a_id).await.expect("ControllerPublish of the second volume to A");
    let on_a = a.mount(&vol2, &ctx).await;
    let sum2 = write_data(&on_a, 2);
    a.proc.kill();
    assert!(testkit::service::unmount_under(a.proc.dir()) > 0, "A's mounts were not there");
    clients.ec2.stop_instances().instance_ids(&a_id).send().await.unwrap();

    // EC2 still shows the attachment: B is refused, naming A.
    let e = publish(&mut ctl, &vol2, &b_id).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e}");
    assert!(e.message().contains(&a_id), "the refusal must name A's instance: {e}");
    // The CO's unpublish from the dead node: a forced detach frees it.
    unpublish(&mut ctl, &vol2, &a_id).await;
    let log = controller.log();
    assert!(!log.contains('\x1b'), "colour codes in a log file:\n{log}");
    assert!(
        log.lines().any(|l| l.contains(&vol2) && l.contains("forced=true")),
        "the detach from the stopped instance was not forced:\n{log}"
    );
    assert_eq!(published_nodes(&mut ctl, &vol2).await, Vec::<String>::new());
    let ctx = publish(&mut ctl, &vol2, &b_id).await.expect("ControllerPublish to B after A died");
    let on_b2 = b.mount(&vol2, &ctx).await;
    assert_eq!(read_sum(&on_b2), sum2, "the data written on A before it died differs on B");
    assert_eq!(read_sum(&on_b), sum, "the first volume changed meanwhile");

    // Done: nothing left in moto or on the host.
    for v in [&vol, &vol2] {
        b.unmount(v).await;
        unpublish(&mut ctl, v, &b_id).await;
        ctl.delete_volume(pb::DeleteVolumeRequest { volume_id: v.clone(), ..Default::default() })
            .await
            .unwrap_or_else(|e| panic!("DeleteVolume {v}: {e}"));
    }
    assert_eq!(volume_ids(&clients).await, root_volumes);
    assert_eq!(testkit::service::mounts_under(b.proc.dir()), Vec::<String>::new());
    host.settle();
    let exposed: BTreeSet<String> = host.exposed().into_keys().collect();
    assert_eq!(exposed, root_volumes, "only the instances' root volumes may stay attached");
    let images: Vec<_> = std::fs::read_dir(host.image_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains(&vol[4..]) || n.contains(&vol2[4..]))
        .collect();
    assert!(images.is_empty(), "deleted volumes' images left: {images:?}");
    eprintln!("MEASURE migration test: {:.1} s", started.elapsed().as_secs_f64());
}
