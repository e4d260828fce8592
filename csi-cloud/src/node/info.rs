//! Who and where this node is, for NodeGetInfo, found once at start:
//!
//! - the instance ID: `--node-id`, else the instance metadata service;
//! - the zone: the metadata's `placement/availability-zone`, else
//!   `AWS_AVAILABILITY_ZONE`, else EC2 DescribeInstances of the instance;
//! - the volume limit ([`super::limits`]) from `--volume-attach-limit`, or
//!   the instance type, its network interfaces and its launch-time block
//!   device mappings (metadata, else DescribeInstances for the type and
//!   interfaces; mappings then count as none).
//!
//! The metadata service is read with aws-config's IMDSv2 client (a session
//! token first, then the reads), which honours `AWS_EC2_METADATA_SERVICE_ENDPOINT`;
//! `AWS_EC2_METADATA_DISABLED=true` skips it. Every read is bounded by
//! [`IMDS_TIMEOUT`]: off EC2 (or in a pod without a hop to it) the node
//! still starts, from its flags and the environment.

use std::time::Duration;

use super::limits::{self, Inputs};
use crate::aws::classify;
use crate::Error;

/// Bound on one metadata read (token included).
pub const IMDS_TIMEOUT: Duration = Duration::from_secs(3);

/// The node's identity flags.
#[derive(Clone, Debug, Default)]
pub struct InfoFlags {
    /// `--node-id`; empty: from the metadata.
    pub node_id: String,
    /// `--volume-attach-limit`; negative: computed.
    pub attach_limit: i64,
    /// `--reserved-volume-attachments`; negative: from the metadata.
    pub reserved: i64,
}

/// What NodeGetInfo answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NodeInfo {
    /// The instance ID.
    pub node_id: String,
    /// The availability zone.
    pub zone: String,
    /// `max_volumes_per_node` (0: no limit stated).
    pub max_volumes: i64,
    /// The instance type, when known.
    pub instance_type: String,
}

/// Reads the instance metadata service, each read bounded.
struct Imds(Option<aws_config::imds::Client>);

impl Imds {
    fn new() -> Imds {
        let disabled = std::env::var("AWS_EC2_METADATA_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"));
        if disabled {
            return Imds(None);
        }
        Imds(Some(
            aws_config::imds::Client::builder()
                .connect_timeout(Duration::from_secs(1))
                .read_timeout(Duration::from_secs(2))
                .max_attempts(2)
                .build(),
        ))
    }

    /// `path` under `/latest/meta-data/`, or None (no service, no answer, not there).
    async fn get(&self, path: &str) -> Option<String> {
        let c = self.0.as_ref()?;
        let full = format!("/latest/meta-data/{path}");
        match tokio::time::timeout(IMDS_TIMEOUT, c.get(&full)).await {
            Ok(Ok(v)) => Some(String::from(v).trim().to_string()).filter(|s| !s.is_empty()),
            Ok(Err(e)) => {
                tracing::debug!(path = %full, "instance metadata: {e}");
                None
            }
            Err(_) => {
                tracing::debug!(path = %full, "instance metadata: no answer within {IMDS_TIMEOUT:?}");
                None
            }
        }
    }
}

/// What DescribeInstances says of the instance.
#[derive(Default)]
struct Described {
    zone: Option<String>,
    instance_type: Option<String>,
    enis: Option<i64>,
}

async fn describe(ec2: &aws_sdk_ec2::Client, id: &str) -> Result<Described, Error> {
    let out = ec2
        .describe_instances()
        .instance_ids(id)
        .send()
        .await
        .map_err(|e| classify(format!("describe instance {id} (the node's zone)"), e))?;
    let inst = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find(|i| i.instance_id() == Some(id))
        .ok_or_else(|| csi_core::Error::NotFound(format!("instance {id}: EC2 does not know it")))?;
    Ok(Described {
        zone: inst.placement().and_then(|p| p.availability_zone()).map(str::to_string),
        instance_type: inst.instance_type().map(|t| t.as_str().to_string()),
        enis: Some(inst.network_interfaces().len() as i64),
    })
}

/// Finds the node's identity, zone and volume limit. `ec2` is asked only
/// for what the metadata and the environment do not say.
pub async fn resolve(flags: &InfoFlags, ec2: Option<&aws_sdk_ec2::Client>) -> Result<NodeInfo, Error> {
    let imds = Imds::new();
    let node_id = match flags.node_id.trim() {
        "" => imds.get("instance-id").await.ok_or_else(|| {
            Error::Config(
                "no --node-id, and the instance metadata service did not name the instance (off EC2? set --node-id)"
                    .into(),
            )
        })?,
        id => id.to_string(),
    };
    let mut zone = imds.get("placement/availability-zone").await;
    if zone.is_none() {
        zone = std::env::var("AWS_AVAILABILITY_ZONE").ok().filter(|z| !z.is_empty());
    }
    let mut instance_type = imds.get("instance-type").await;
    let mut enis =
        imds.get("network/interfaces/macs/").await.map(|s| s.lines().filter(|l| !l.trim().is_empty()).count() as i64);
    let mappings = imds
        .get("block-device-mapping/")
        .await
        .map(|s| s.lines().filter(|l| l.trim().starts_with("ebs")).count() as i64)
        .unwrap_or(0);
    let need_type = flags.attach_limit < 0 && (instance_type.is_none() || enis.is_none());
    if zone.is_none() || need_type {
        let ec2 = ec2.ok_or_else(|| {
            Error::Config(format!("the zone of {node_id} is unknown: no instance metadata, no AWS_AVAILABILITY_ZONE"))
        })?;
        let d = describe(ec2, &node_id).await?;
        zone = zone.or(d.zone);
        instance_type = instance_type.or(d.instance_type);
        enis = enis.or(d.enis);
    }
    let zone = zone.ok_or_else(|| Error::Config(format!("EC2 names no zone for {node_id}")))?;
    let instance_type = instance_type.unwrap_or_default();
    let max_volumes = limits::max_volumes(&Inputs {
        attach_limit: (flags.attach_limit >= 0).then_some(flags.attach_limit),
        reserved: (flags.reserved >= 0).then_some(flags.reserved),
        instance_type: instance_type.clone(),
        enis: enis.unwrap_or(1),
        block_device_mappings: mappings,
    });
    if max_volumes == 0 {
        tracing::warn!(node = %node_id, "instance type unknown: no volume limit stated (set --volume-attach-limit)");
    }
    tracing::info!(node = %node_id, %zone, %instance_type, max_volumes, "node identity");
    Ok(NodeInfo { node_id, zone, max_volumes, instance_type })
}
