//! What the migration runner needs to know about a CSI backend: how to run
//! its driver, what to ask CreateVolume for, whether a volume can be used
//! by two nodes at once, and how a volume is taken over after its node
//! died. `csi-nfs` implements it now; `csi-rbd` and `csi-cloud` plug in the
//! same way (their own server fixture, parameters and takeover path).
//!
//! What the driver can do (stage, controller publish) is not part of the
//! trait: the runner asks the driver (`NodeGetCapabilities`,
//! `ControllerGetCapabilities`) exactly as the kubelet and the
//! external-attacher do.

use std::collections::HashMap;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use csi_core::pb;
use csi_core::pb::volume_capability::access_mode::Mode;

use csi_suite::ganesha::Ganesha;
use testkit::util::R;

/// How a volume whose node died is brought up on another node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Takeover {
    /// The volume is multi-node: the new node stages and publishes it while
    /// the dead node's attachment is left as it is (NFS).
    SharedAttach,
    /// The old node's attachment must be removed first: ControllerUnpublish
    /// for the dead node (a force detach / fence), then the new node's
    /// ControllerPublish (block devices: rbd, cloud disks).
    DetachDeadNodeFirst,
}

/// A CSI backend the migration runner can drive.
pub trait VolumeBackend {
    /// A short name for reports (`csi-nfs`).
    fn name(&self) -> &str;
    /// The driver binary.
    fn driver(&self) -> &Path;
    /// Extra driver arguments for the controller (besides --endpoint/--mode).
    fn controller_args(&self) -> Vec<String>;
    /// Extra driver arguments for a node (besides --endpoint/--mode/--node-id).
    fn node_args(&self) -> Vec<String>;
    /// CreateVolume parameters (the StorageClass).
    fn create_params(&self) -> HashMap<String, String>;
    /// The capability the pod asks for (a RWX filesystem for NFS).
    fn capability(&self) -> pb::VolumeCapability;
    /// Whether two nodes may have the volume read-write at once. If not, a
    /// second node's NodeStage/ControllerPublish must fail with
    /// FAILED_PRECONDITION and change nothing.
    fn can_share(&self) -> bool;
    /// The documented takeover path after a node died.
    fn takeover(&self) -> Takeover;
    /// One sentence for the report: what the takeover does.
    fn takeover_doc(&self) -> &'static str;
    /// What the kernel must have for the node side (checked before the lab
    /// is built), e.g. `nfs4` in /proc/filesystems.
    fn check_kernel(&self) -> R<()>;
}

/// csi-nfs with a throwaway nfs-ganesha in the root netns, reached by the
/// lab's hosts on the mgmt gateway address.
pub struct NfsBackend {
    driver: PathBuf,
    server: Ganesha,
    address: Ipv4Addr,
}

impl NfsBackend {
    /// Starts the server; `address` is where the hosts reach it.
    pub fn start(driver: PathBuf, address: Ipv4Addr) -> R<NfsBackend> {
        if !driver.is_file() {
            return Err(format!(
                "{} not found: build it (cargo build --release -p csi-nfs) or pass --csi-nfs",
                driver.display()
            ));
        }
        let server =
            Ganesha::start().map_err(|e| format!("start nfs-ganesha (scripts/testbed.sh installs it): {e}"))?;
        Ok(NfsBackend { driver, server, address })
    }

    /// The server fixture (its export dir, port).
    pub fn server(&self) -> &Ganesha {
        &self.server
    }

    /// `server:/export` as the hosts mount it, and the mount options.
    pub fn export(&self) -> (String, String) {
        (format!("{}:/export", self.address), format!("port={}", self.server.port()))
    }
}

impl VolumeBackend for NfsBackend {
    fn name(&self) -> &str {
        "csi-nfs"
    }

    fn driver(&self) -> &Path {
        &self.driver
    }

    fn controller_args(&self) -> Vec<String> {
        vec![format!("--mount-options=port={}", self.server.port()), "--state-dir={dir}/state".into()]
    }

    fn node_args(&self) -> Vec<String> {
        vec![format!("--mount-options=port={}", self.server.port())]
    }

    fn create_params(&self) -> HashMap<String, String> {
        [("server", self.address.to_string()), ("share", "/export".into())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect()
    }

    fn capability(&self) -> pb::VolumeCapability {
        pb::VolumeCapability {
            access_mode: Some(pb::volume_capability::AccessMode { mode: Mode::MultiNodeMultiWriter as i32 }),
            access_type: Some(pb::volume_capability::AccessType::Mount(Default::default())),
        }
    }

    fn can_share(&self) -> bool {
        true
    }

    fn takeover(&self) -> Takeover {
        Takeover::SharedAttach
    }

    fn takeover_doc(&self) -> &'static str {
        "NFS volumes are multi-node: the new node publishes the volume at once; the dead node's \
         mount is left as the crash left it and its NFSv4 state expires with its lease on the server"
    }

    fn check_kernel(&self) -> R<()> {
        nfs_client_check()
    }
}

/// Ok if this kernel has an NFSv4 client (after `modprobe nfsv4`, which may
/// fail harmlessly when the module is built in or absent).
pub fn nfs_client_check() -> R<()> {
    let has = || std::fs::read_to_string("/proc/filesystems").is_ok_and(|t| t.lines().any(|l| l.ends_with("\tnfs4")));
    if !has() {
        let _ = std::process::Command::new("modprobe").arg("nfsv4").output();
    }
    if has() {
        Ok(())
    } else {
        Err("this kernel has no NFSv4 client (no nfs4 in /proc/filesystems after `modprobe nfsv4`): \
             run the migration in a guest kernel that has one: \
             scripts/guest/run.sh scripts/guest/migrate.sh (see docs/migration.md)"
            .into())
    }
}
