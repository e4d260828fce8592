//! What the node and exclusivity tests share: a real Ceph cluster, guest
//! kernels as nodes (the host kernel has no rbd), images made with the
//! `rbd` CLI, and CSI requests for the node plugin in each guest.

#![allow(dead_code)]

use std::collections::HashMap;
use std::time::Duration;

use csi_core::pb;
use csi_core::pb::node_client::NodeClient;
use csi_core::pb::volume_capability::access_mode::Mode;
use csi_core::pb::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use csi_suite::ceph::Ceph;
use csi_suite::guest::{Guest, GuestConfig, NODE_CSI_PORT};
use tonic::transport::Channel;

/// The clusterID of the test's config.json.
pub const CLUSTER_ID: &str = "test-cluster";
/// How long a guest gets to boot and serve (TCG, machine shared with others).
pub const BOOT_TIMEOUT: Duration = Duration::from_secs(300);

/// A cluster and its config.json, in the cluster's dir under /tmp: the
/// guests see the host's /tmp (files made before they boot).
pub struct Cluster {
    pub ceph: Ceph,
    pub config: std::path::PathBuf,
}

impl Cluster {
    pub fn start() -> Cluster {
        let ceph = Ceph::start().expect("start the Ceph cluster (scripts/testbed.sh installs it)");
        let config = ceph.dir().join("config.json");
        std::fs::write(&config, ceph.cluster_config_json(CLUSTER_ID)).unwrap();
        Cluster { ceph, config }
    }

    /// Boots node `name` at `.host` (10 and up) running `csi-rbd --mode node`,
    /// at debug level: the guest's console (its path is printed) then holds
    /// every stage's and unstage's step times, where a slow one spent them.
    pub fn boot(&self, name: &str, host: u8) -> Guest {
        let args: Vec<String> = [
            "--mode",
            "node",
            "--node-id",
            name,
            "--cluster-config",
            &self.config.display().to_string(),
            "--state-dir",
            "/var/lib/csi-rbd",
            "--log-level",
            "debug",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let cfg = GuestConfig::node(
            name,
            self.ceph.bridge(),
            self.ceph.host(host),
            self.ceph.prefix_len(),
            std::path::Path::new(env!("CARGO_BIN_EXE_csi-rbd")),
            &args,
        );
        Guest::boot(&cfg).expect("boot guest")
    }

    /// Makes image `name` of `mib` MiB in pool rbd (the rbd CLI's default features).
    pub fn image(&self, name: &str, mib: u64) {
        self.ceph.rbd(&["create", "--size", &format!("{mib}M"), name]).unwrap();
    }

    /// pool rbd's ID.
    pub fn pool_id(&self) -> i64 {
        let v = self.ceph.ceph_json(&["osd", "pool", "ls", "detail"]).unwrap();
        v.as_array().unwrap().iter().find(|p| p["pool_name"] == "rbd").unwrap()["pool_id"].as_i64().unwrap()
    }

    /// The node holding image's attach lock (`rados lock info`, JSON).
    pub fn lock_holders(&self, image: &str) -> Vec<String> {
        let obj = format!("csi.rbd.attach.{image}");
        let out = match self.ceph.rados(&["-p", "rbd", "lock", "info", &obj, "csi-rbd-attach", "--format", "json"]) {
            Ok(o) => o,
            Err(_) => return Vec::new(),
        };
        let v: serde_json::Value = serde_json::from_slice(&out).unwrap_or_default();
        v["lockers"]
            .as_array()
            .map(|a| a.iter().filter_map(|l| l["cookie"].as_str().map(str::to_string)).collect())
            .unwrap_or_default()
    }

    /// What `node` recorded in image's attach object (`rados getomapval`
    /// into a file: the value as written, JSON).
    pub fn attachment(&self, image: &str, node: &str) -> serde_json::Value {
        let out = self.ceph.dir().join(format!("omap-{image}-{node}.json"));
        let obj = format!("csi.rbd.attach.{image}");
        let key = format!("node.{node}");
        self.ceph.rados(&["-p", "rbd", "getomapval", &obj, &key, &out.display().to_string()]).unwrap();
        let v = serde_json::from_slice(&std::fs::read(&out).unwrap()).unwrap();
        let _ = std::fs::remove_file(&out);
        v
    }

    /// The filesystem hint in image's attach object (omap key `fs`), if any.
    pub fn fs_hint(&self, image: &str) -> Option<String> {
        let out = self.ceph.dir().join(format!("omap-{image}-fs"));
        let obj = format!("csi.rbd.attach.{image}");
        self.ceph.rados(&["-p", "rbd", "getomapval", &obj, "fs", &out.display().to_string()]).ok()?;
        let v = std::fs::read_to_string(&out).ok();
        let _ = std::fs::remove_file(&out);
        v
    }

    /// Sets image's filesystem hint (as a stage on another node would have).
    pub fn set_fs_hint(&self, image: &str, fs: &str) {
        let obj = format!("csi.rbd.attach.{image}");
        self.ceph.rados(&["-p", "rbd", "setomapval", &obj, "fs", fs]).unwrap();
    }

    /// `ceph osd blocklist ls` (JSON) addresses. Ceph 16 prints two JSON
    /// lists one after the other (addresses, then ranges).
    pub fn blocklist(&self) -> Vec<String> {
        let out = self.ceph.ceph(&["osd", "blocklist", "ls", "--format", "json"]).unwrap();
        serde_json::Deserializer::from_str(&out)
            .into_iter::<serde_json::Value>()
            .map(|v| v.unwrap())
            .flat_map(|v| v.as_array().cloned().unwrap_or_default())
            .filter_map(|e| e["addr"].as_str().map(str::to_string))
            .collect()
    }

    pub fn secrets(&self) -> HashMap<String, String> {
        HashMap::from([
            ("userID".to_string(), "admin".to_string()),
            ("userKey".to_string(), self.ceph.admin_key().to_string()),
        ])
    }

    /// A volume ID for image `csi-vol-<uuid>` in pool rbd.
    pub fn volume_id(&self, uuid: &str) -> String {
        csi_rbd::volume_id::VolumeId::new(CLUSTER_ID, self.pool_id(), uuid).unwrap().to_string()
    }
}

pub async fn node(g: &mut Guest) -> NodeClient<Channel> {
    NodeClient::new(g.wait_csi(NODE_CSI_PORT, BOOT_TIMEOUT).await.expect("node plugin ready"))
}

pub fn mount_cap(fs: &str, mode: Mode) -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume { fs_type: fs.into(), ..Default::default() })),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

pub fn block_cap() -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
    }
}

/// A volume: its ID and context (image in pool rbd).
#[derive(Clone, Debug)]
pub struct Vol {
    pub id: String,
    pub image: String,
    pub context: HashMap<String, String>,
}

impl Vol {
    /// A volume named by its context (as CreateVolume returns it).
    pub fn with_context(image: &str, extra: &[(&str, &str)]) -> Vol {
        let mut context = HashMap::from([
            ("clusterID".to_string(), CLUSTER_ID.to_string()),
            ("pool".to_string(), "rbd".to_string()),
            ("imageName".to_string(), image.to_string()),
        ]);
        for (k, v) in extra {
            context.insert(k.to_string(), v.to_string());
        }
        Vol { id: format!("static-{image}"), image: image.into(), context }
    }

    pub fn staging(&self) -> String {
        format!("/run/csi-test/{}/staging", self.image)
    }

    pub fn target(&self, n: u32) -> String {
        format!("/run/csi-test/{}/target-{n}", self.image)
    }

    pub fn stage_req(&self, c: &Cluster, cap: pb::VolumeCapability) -> pb::NodeStageVolumeRequest {
        pb::NodeStageVolumeRequest {
            volume_id: self.id.clone(),
            staging_target_path: self.staging(),
            volume_capability: Some(cap),
            secrets: c.secrets(),
            volume_context: self.context.clone(),
            ..Default::default()
        }
    }

    pub fn unstage_req(&self) -> pb::NodeUnstageVolumeRequest {
        pb::NodeUnstageVolumeRequest { volume_id: self.id.clone(), staging_target_path: self.staging() }
    }

    pub fn publish_req(&self, n: u32, cap: pb::VolumeCapability, readonly: bool) -> pb::NodePublishVolumeRequest {
        pb::NodePublishVolumeRequest {
            volume_id: self.id.clone(),
            staging_target_path: self.staging(),
            target_path: self.target(n),
            volume_capability: Some(cap),
            readonly,
            volume_context: self.context.clone(),
            ..Default::default()
        }
    }

    pub fn unpublish_req(&self, n: u32) -> pb::NodeUnpublishVolumeRequest {
        pb::NodeUnpublishVolumeRequest { volume_id: self.id.clone(), target_path: self.target(n) }
    }
}

/// Writes `mib` MiB of random data to `file` in the guest, fsyncs it, and
/// returns its sha256.
pub fn write_data(g: &Guest, file: &str, mib: u32) -> String {
    let out = g
        .sh_ok(&format!(
            "dd if=/dev/urandom of={file} bs=1M count={mib} conv=fsync status=none && sync && sha256sum {file}"
        ))
        .expect("write data in the guest");
    out.split_whitespace().next().unwrap().to_string()
}

pub fn sha(g: &Guest, file: &str) -> String {
    let out = g.sh_ok(&format!("sha256sum {file}")).expect("sha256sum in the guest");
    out.split_whitespace().next().unwrap().to_string()
}
