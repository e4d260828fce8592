//! NodeGetInfo's identity, zone and volume limit as the node finds them at
//! start: from the instance metadata service (IMDSv2), from the
//! environment, from EC2 (moto) and from the flags.
//!
//! The metadata service is served by the hypervisor on EC2
//! (169.254.169.254); here `common::imds::Imds` plays that part of the
//! hypervisor stand-in (the only stand-in issue #15 allows), on loopback,
//! with IMDSv2's session token enforced. aws-config's client finds it
//! through `AWS_EC2_METADATA_SERVICE_ENDPOINT`, as on a host whose metadata
//! endpoint is moved.

mod common;

use aws_sdk_ec2::types::{InstanceType, Placement};
use csi_cloud::node::info::{resolve, InfoFlags};
use csi_core::pb::node_server::Node as _;

fn set_env(k: &str, v: Option<&str>) {
    // One test in this binary: nothing else reads the environment meanwhile.
    match v {
        Some(v) => std::env::set_var(k, v),
        None => std::env::remove_var(k),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_zone_and_limit_from_metadata_environment_ec2_and_flags() {
    // 1. On EC2: everything from the metadata (an m5.large, two ENIs, one extra mapping).
    let imds = common::imds::Imds::start(&[
        ("instance-id", "i-0123456789abcdef0"),
        ("placement/availability-zone", "eu-west-1b"),
        ("instance-type", "m5.large"),
        ("network/interfaces/macs/", "0e:00:00:00:00:01/\n0e:00:00:00:00:02/"),
        ("block-device-mapping/", "ami\nebs1\nroot"),
    ])
    .await;
    set_env("AWS_EC2_METADATA_DISABLED", None);
    set_env("AWS_EC2_METADATA_SERVICE_ENDPOINT", Some(&imds.endpoint()));
    set_env("AWS_AVAILABILITY_ZONE", Some("us-east-1c"));
    let flags = InfoFlags { node_id: String::new(), attach_limit: -1, reserved: -1 };
    let got = resolve(&flags, None).await.unwrap();
    assert_eq!(got.node_id, "i-0123456789abcdef0");
    assert_eq!(got.zone, "eu-west-1b", "the metadata's zone comes before AWS_AVAILABILITY_ZONE");
    assert_eq!(got.instance_type, "m5.large");
    // 28 Nitro slots - 2 ENIs - (1 mapping + root).
    assert_eq!(got.max_volumes, 24);
    assert!(imds.tokens_issued() >= 1, "IMDSv2: a session token was asked for");
    assert!(imds.refused() == 0, "every read carried its token");
    // The flags win over the metadata.
    let got = resolve(&InfoFlags { node_id: "i-0aaa".into(), attach_limit: 7, reserved: -1 }, None).await.unwrap();
    assert_eq!((got.node_id.as_str(), got.max_volumes), ("i-0aaa", 7));
    let got = resolve(&InfoFlags { reserved: 0, ..flags.clone() }, None).await.unwrap();
    assert_eq!(got.max_volumes, 26);
    drop(imds);

    // 2. No metadata service (nothing listens there): the flags and the environment.
    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
    set_env("AWS_EC2_METADATA_SERVICE_ENDPOINT", Some(&format!("http://{closed}")));
    let t = std::time::Instant::now();
    let got = resolve(&InfoFlags { node_id: "i-0bbb".into(), attach_limit: 25, reserved: -1 }, None).await.unwrap();
    assert_eq!((got.node_id.as_str(), got.zone.as_str(), got.max_volumes), ("i-0bbb", "us-east-1c", 25));
    assert!(t.elapsed() < std::time::Duration::from_secs(30), "metadata reads are bounded");
    // No node ID anywhere: a start-up error that says what to set.
    let e = resolve(&flags, None).await.unwrap_err();
    assert!(e.to_string().contains("--node-id"), "{e}");

    // 3. No metadata, no AWS_AVAILABILITY_ZONE: EC2 DescribeInstances (moto) names the zone and type.
    set_env("AWS_EC2_METADATA_DISABLED", Some("true"));
    set_env("AWS_AVAILABILITY_ZONE", None);
    let moto = testkit::moto::Moto::start().unwrap();
    let clients = csi_cloud::aws::Clients::for_emulator(&moto.endpoint(), testkit::moto::REGION, "testing", "testing");
    let out = clients
        .ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .min_count(1)
        .max_count(1)
        .instance_type(InstanceType::M4Large)
        .placement(Placement::builder().availability_zone("us-east-1b").build())
        .send()
        .await
        .unwrap();
    let id = out.instances()[0].instance_id().unwrap().to_string();
    let got =
        resolve(&InfoFlags { node_id: id.clone(), attach_limit: -1, reserved: -1 }, Some(&clients.ec2)).await.unwrap();
    assert_eq!(got.zone, "us-east-1b");
    assert_eq!(got.instance_type, "m4.large");
    assert_eq!(got.max_volumes, 38, "Xen: 39 - root");
    // An instance EC2 does not know: NOT_FOUND, named.
    let e = resolve(&InfoFlags { node_id: "i-0ffffffffffffffff".into(), ..flags.clone() }, Some(&clients.ec2))
        .await
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{e}");
    assert!(e.to_string().contains("i-0ffffffffffffffff"), "{e}");

    // 4. The service answers NodeGetInfo with what was found, and both zone keys.
    let node = csi_cloud::node::Node::new(csi_cloud::node::NodeConfig {
        node_id: got.node_id.clone(),
        zone: got.zone.clone(),
        max_volumes: got.max_volumes,
        state_dir: std::env::temp_dir().join("h5-unused"),
        device_wait: std::time::Duration::from_secs(1),
    });
    let info = node.node_get_info(tonic::Request::new(Default::default())).await.unwrap().into_inner();
    assert_eq!((info.node_id, info.max_volumes_per_node), (id, 38));
    let seg = info.accessible_topology.unwrap().segments;
    assert_eq!(seg.get(csi_cloud::ZONE_KEY).map(String::as_str), Some("us-east-1b"));
    assert_eq!(seg.get(csi_cloud::ZONE_KEY_DRIVER).map(String::as_str), Some("us-east-1b"));
}
