//! csi-cloud's Node service on real devices: loop devices attached by the
//! test's hypervisor stand-in (`common/hypervisor.rs`, the only stand-in
//! issue #15 allows), real mkfs, mounts and bind mounts. Run as root.
//!
//! The service is called in-process through its gRPC trait, with the CSI
//! messages a CO sends; what is asserted is what a user sees: the data on
//! the volume, the spec's codes, the sizes.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::hypervisor::EbsDisk;
use csi_cloud::node::{Node, NodeConfig};
use csi_core::pb;
use csi_core::pb::node_server::Node as _;
use csi_core::pb::volume_capability::access_mode::Mode;
use csi_core::pb::volume_capability::{AccessMode, AccessType, BlockVolume, MountVolume};
use tonic::{Code, Request};

const MIB: u64 = 1 << 20;

/// One node: its state dir, and a place for staging and target paths.
/// Unmounts what a failed test left there on drop.
struct Scene {
    node: Node,
    dir: tempfile::TempDir,
}

impl Scene {
    fn new(name: &str) -> Scene {
        let dir = tempfile::Builder::new().prefix(&format!("h5-node-{name}-")).tempdir_in("/var/tmp").unwrap();
        let node = Node::new(NodeConfig {
            node_id: format!("i-0{name}"),
            zone: "us-east-1a".into(),
            max_volumes: 26,
            state_dir: dir.path().join("state"),
            device_wait: Duration::from_millis(500),
        });
        Scene { node, dir }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    async fn stage(&self, vol: &str, staging: &Path, cap: pb::VolumeCapability) -> Result<(), tonic::Status> {
        self.node
            .node_stage_volume(Request::new(pb::NodeStageVolumeRequest {
                volume_id: vol.into(),
                staging_target_path: staging.to_string_lossy().into(),
                volume_capability: Some(cap),
                publish_context: [("devicePath".to_string(), "/dev/xvdba".to_string())].into_iter().collect(),
                ..Default::default()
            }))
            .await
            .map(drop)
    }

    async fn unstage(&self, vol: &str, staging: &Path) -> Result<(), tonic::Status> {
        self.node
            .node_unstage_volume(Request::new(pb::NodeUnstageVolumeRequest {
                volume_id: vol.into(),
                staging_target_path: staging.to_string_lossy().into(),
            }))
            .await
            .map(drop)
    }

    async fn publish(
        &self,
        vol: &str,
        staging: &Path,
        target: &Path,
        cap: pb::VolumeCapability,
        readonly: bool,
    ) -> Result<(), tonic::Status> {
        self.node
            .node_publish_volume(Request::new(pb::NodePublishVolumeRequest {
                volume_id: vol.into(),
                staging_target_path: staging.to_string_lossy().into(),
                target_path: target.to_string_lossy().into(),
                volume_capability: Some(cap),
                readonly,
                ..Default::default()
            }))
            .await
            .map(drop)
    }

    async fn unpublish(&self, vol: &str, target: &Path) -> Result<(), tonic::Status> {
        self.node
            .node_unpublish_volume(Request::new(pb::NodeUnpublishVolumeRequest {
                volume_id: vol.into(),
                target_path: target.to_string_lossy().into(),
            }))
            .await
            .map(drop)
    }

    async fn stats(&self, vol: &str, path: &Path) -> Result<pb::NodeGetVolumeStatsResponse, tonic::Status> {
        self.node
            .node_get_volume_stats(Request::new(pb::NodeGetVolumeStatsRequest {
                volume_id: vol.into(),
                volume_path: path.to_string_lossy().into(),
                ..Default::default()
            }))
            .await
            .map(|r| r.into_inner())
    }
}

impl Drop for Scene {
    fn drop(&mut self) {
        // A failed test's mounts, deepest first.
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let mut ours: Vec<&str> = table
            .lines()
            .filter_map(|l| l.split(' ').nth(4))
            .filter(|m| Path::new(m).starts_with(self.dir.path()))
            .collect();
        ours.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in ours {
            let _ = nix::mount::umount2(m, nix::mount::MntFlags::MNT_DETACH);
        }
    }
}

fn mount_cap(fs: &str, mode: Mode) -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(AccessType::Mount(MountVolume { fs_type: fs.into(), ..Default::default() })),
        access_mode: Some(AccessMode { mode: mode as i32 }),
    }
}

fn block_cap() -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(AccessType::Block(BlockVolume {})),
        access_mode: Some(AccessMode { mode: Mode::SingleNodeWriter as i32 }),
    }
}

/// Pseudo-random bytes (seeded, so a failure replays).
fn payload(seed: u64, len: usize) -> Vec<u8> {
    let mut r = testkit::rng::SplitMix64(seed);
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        v.extend_from_slice(&r.next().to_le_bytes());
    }
    v.truncate(len);
    v
}

fn blkid_type(dev: &str) -> String {
    let out = std::process::Command::new("blkid").args(["-p", "-o", "value", "-s", "TYPE", dev]).output().unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn code(r: Result<impl std::fmt::Debug, tonic::Status>) -> Code {
    r.expect_err("expected an error").code()
}

#[test]
fn prerequisites_are_here() {
    // No silent skips: a host without these fails here, by name.
    for tool in ["losetup", "blkid", "mkfs.ext4", "mkfs.xfs", "resize2fs", "xfs_growfs"] {
        assert!(testkit::util::have_tool(tool), "{tool} is missing (xfsprogs, e2fsprogs, util-linux)");
    }
    assert!(nix::unistd::geteuid().is_root(), "the node tests mount: run them as root");
}

/// Stage on node A (blank: formatted), write, unpublish and unstage; the
/// same disk staged on node B (its own state dir and staging path) shows
/// the data, byte for byte, and was not formatted again (an xfs request
/// mounts the ext4 that is there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn data_written_on_node_a_is_intact_on_node_b_and_never_reformatted() {
    let disk = EbsDisk::attach(128 * MIB);
    let vol = disk.volume_id.clone();
    let (a, b) = (Scene::new("a"), Scene::new("b"));
    let data = payload(0x5eed_0015, 3 * MIB as usize + 17);

    let (staging, target) = (a.path("staging"), a.path("target"));
    a.stage(&vol, &staging, mount_cap("ext4", Mode::SingleNodeWriter)).await.unwrap();
    assert_eq!(blkid_type(&disk.loop_dev), "ext4", "a blank device gets the asked filesystem");
    a.publish(&vol, &staging, &target, mount_cap("ext4", Mode::SingleNodeWriter), false).await.unwrap();
    std::fs::write(target.join("data.bin"), &data).unwrap();
    let uuid_before = disk.read_at(1024, 1024);
    a.unpublish(&vol, &target).await.unwrap();
    a.unstage(&vol, &staging).await.unwrap();
    assert!(!csi_core::mount::is_mount_point(&staging).unwrap());

    // Node B asks for xfs: the ext4 on the disk is mounted, not replaced.
    let (staging_b, target_b) = (b.path("staging"), b.path("target"));
    b.stage(&vol, &staging_b, mount_cap("xfs", Mode::SingleNodeWriter)).await.unwrap();
    assert_eq!(blkid_type(&disk.loop_dev), "ext4");
    b.publish(&vol, &staging_b, &target_b, mount_cap("xfs", Mode::SingleNodeWriter), false).await.unwrap();
    assert!(std::fs::read(target_b.join("data.bin")).unwrap() == data, "the data differs on node B");
    b.unpublish(&vol, &target_b).await.unwrap();
    b.unstage(&vol, &staging_b).await.unwrap();
    // The superblock (its UUID, mount count aside) is the one node A made.
    assert_eq!(disk.read_at(1024 + 0x68, 16), uuid_before[0x68..0x78].to_vec(), "the filesystem UUID changed");
}

/// A device with something on it that is not ext4 or xfs is refused with
/// FAILED_PRECONDITION and left as it was.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_with_foreign_content_is_never_formatted() {
    let disk = EbsDisk::attach(64 * MIB);
    let s = Scene::new("foreign");
    let out = std::process::Command::new("mkfs.ext2").args(["-q", "-F", &disk.loop_dev]).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    let before = disk.read_at(0, 64 << 10);
    // ext2 is no filesystem of ours, but it is content: refused.
    let e = s.stage(&disk.volume_id, &s.path("staging"), mount_cap("ext4", Mode::SingleNodeWriter)).await;
    assert_eq!(code(e), Code::FailedPrecondition);
    assert_eq!(disk.read_at(0, 64 << 10), before);
    assert_eq!(blkid_type(&disk.loop_dev), "ext2");
    s.unstage(&disk.volume_id, &s.path("staging")).await.unwrap();
}

/// Raw block: the device node is bound onto the target file; bytes written
/// through it are on the disk.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raw_block_volumes_are_the_device_itself() {
    use std::os::unix::fs::FileExt;
    let disk = EbsDisk::attach(64 * MIB);
    let s = Scene::new("block");
    let vol = disk.volume_id.clone();
    let (staging, target) = (s.path("staging"), s.path("pods/p1/dev"));
    s.stage(&vol, &staging, block_cap()).await.unwrap();
    s.stage(&vol, &staging, block_cap()).await.unwrap();
    s.publish(&vol, &staging, &target, block_cap(), false).await.unwrap();
    s.publish(&vol, &staging, &target, block_cap(), false).await.unwrap();
    let data = payload(7, 1 << 16);
    let f = std::fs::OpenOptions::new().read(true).write(true).open(&target).unwrap();
    f.write_all_at(&data, 5 * MIB).unwrap();
    f.sync_all().unwrap();
    drop(f);
    assert!(disk.read_at(5 * MIB, data.len()) == data, "the bytes are not on the disk");
    assert_eq!(blkid_type(&disk.loop_dev), "", "a block volume is never formatted");
    let st = s.stats(&vol, &target).await.unwrap();
    assert_eq!(st.usage[0].total, (64 * MIB) as i64);
    // A filesystem publish of a block stage is refused.
    let e = s.publish(&vol, &staging, &s.path("t2"), mount_cap("ext4", Mode::SingleNodeWriter), false).await;
    assert_eq!(code(e), Code::InvalidArgument);
    s.unpublish(&vol, &target).await.unwrap();
    s.unpublish(&vol, &target).await.unwrap();
    assert!(!target.exists());
    s.unstage(&vol, &staging).await.unwrap();
    s.unstage(&vol, &staging).await.unwrap();
}

/// Does this process hold CAP_SYS_RESOURCE? Online ext4 growth
/// (EXT4_IOC_RESIZE_FS) needs it (capability bit 24); the development VM's root lacks it, CI's has it.
fn have_cap_sys_resource() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let eff = status.lines().find_map(|l| l.strip_prefix("CapEff:")).unwrap().trim();
    u64::from_str_radix(eff, 16).unwrap() & (1 << 24) != 0
}

/// The volume grows under the node (ModifyVolume); NodeExpandVolume grows
/// the filesystem, and the stats show it. xfs always; ext4 where the
/// kernel lets root resize online (CAP_SYS_RESOURCE); without it, the
/// user sees resize2fs's refusal, named, and the data untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expand_grows_the_filesystem_and_stats_show_it() {
    for fs in ["xfs", "ext4"] {
        let disk = EbsDisk::attach(320 * MIB);
        let s = Scene::new(&format!("expand-{fs}"));
        let vol = disk.volume_id.clone();
        let (staging, target) = (s.path("staging"), s.path("target"));
        let cap = mount_cap(fs, Mode::SingleNodeWriter);
        s.stage(&vol, &staging, cap.clone()).await.unwrap();
        s.publish(&vol, &staging, &target, cap.clone(), false).await.unwrap();
        std::fs::write(target.join("f"), payload(1, MIB as usize)).unwrap();
        let bytes = |r: &pb::NodeGetVolumeStatsResponse| {
            r.usage.iter().find(|u| u.unit == pb::volume_usage::Unit::Bytes as i32).cloned().unwrap()
        };
        let before = bytes(&s.stats(&vol, &target).await.unwrap());
        assert!(before.used >= MIB as i64 && before.total > before.used, "{fs}: {before:?}");
        let inodes = s.stats(&vol, &target).await.unwrap();
        assert!(inodes.usage.iter().any(|u| u.unit == pb::volume_usage::Unit::Inodes as i32 && u.used > 0));

        // Not grown yet: the node waits RESIZE_WAIT, so ask for what is there first.
        disk.grow(640 * MIB);
        let r = s
            .node
            .node_expand_volume(Request::new(pb::NodeExpandVolumeRequest {
                volume_id: vol.clone(),
                volume_path: target.to_string_lossy().into(),
                capacity_range: Some(pb::CapacityRange { required_bytes: (640 * MIB) as i64, limit_bytes: 0 }),
                ..Default::default()
            }))
            .await;
        if fs == "ext4" && !have_cap_sys_resource() {
            let e = r.unwrap_err();
            assert!(e.message().contains("resize2fs") && e.message().contains("Permission denied"), "{e:?}");
            eprintln!("NOTE: ext4 online growth not checked here: this host's root lacks CAP_SYS_RESOURCE");
        } else {
            assert_eq!(r.unwrap().into_inner().capacity_bytes, (640 * MIB) as i64);
            let after = bytes(&s.stats(&vol, &target).await.unwrap());
            assert!(after.total > before.total + (250 * MIB) as i64, "{fs}: {before:?} -> {after:?}");
        }
        assert!(std::fs::read(target.join("f")).unwrap() == payload(1, MIB as usize));
        s.unpublish(&vol, &target).await.unwrap();
        s.unstage(&vol, &staging).await.unwrap();
    }
}

/// Every call repeated is a no-op; read-only publish is read-only; the
/// never-staged and never-mounted paths behave as the spec says.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeats_read_only_and_paths_never_mounted() {
    let disk = EbsDisk::attach(64 * MIB);
    let s = Scene::new("idem");
    let vol = disk.volume_id.clone();
    let cap = mount_cap("", Mode::SingleNodeWriter);
    let (staging, target, ro) = (s.path("staging"), s.path("target"), s.path("ro"));
    // Unstage / unpublish of what was never staged or mounted: OK.
    s.unstage(&vol, &staging).await.unwrap();
    s.unpublish(&vol, &target).await.unwrap();
    // Publish before stage: NOT_FOUND.
    assert_eq!(code(s.publish(&vol, &staging, &target, cap.clone(), false).await), Code::NotFound);

    for _ in 0..2 {
        s.stage(&vol, &staging, cap.clone()).await.unwrap();
    }
    assert_eq!(blkid_type(&disk.loop_dev), "ext4", "no fs type: ext4");
    // Staged elsewhere, or as block: ALREADY_EXISTS.
    assert_eq!(code(s.stage(&vol, &s.path("other"), cap.clone()).await), Code::AlreadyExists);
    assert_eq!(code(s.stage(&vol, &staging, block_cap()).await), Code::AlreadyExists);
    for _ in 0..2 {
        s.publish(&vol, &staging, &target, cap.clone(), false).await.unwrap();
        s.publish(&vol, &staging, &ro, cap.clone(), true).await.unwrap();
    }
    std::fs::write(target.join("rw"), b"x").unwrap();
    let e = std::fs::write(ro.join("nope"), b"x").unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EROFS), "{e}");
    assert_eq!(std::fs::read(ro.join("rw")).unwrap(), b"x");
    // The same target read-only now: ALREADY_EXISTS.
    assert_eq!(code(s.publish(&vol, &staging, &target, cap.clone(), true).await), Code::AlreadyExists);
    for p in [&target, &ro] {
        s.unpublish(&vol, p).await.unwrap();
        s.unpublish(&vol, p).await.unwrap();
        assert!(!p.exists());
    }
    s.unstage(&vol, &staging).await.unwrap();
    s.unstage(&vol, &staging).await.unwrap();
    assert!(!csi_core::mount::is_mount_point(&staging).unwrap());
    assert_eq!(code(s.stats(&vol, &staging).await), Code::NotFound);
}

/// A volume not attached here: NOT_FOUND within the device wait, naming it;
/// a malformed ID too; and the node answers with no EBS device on the host.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_volumes_are_not_found_and_info_needs_no_device() {
    let s = Scene::new("unknown");
    let vol = common::hypervisor::unique_volume_id();
    let t = std::time::Instant::now();
    let e = s.stage(&vol, &s.path("staging"), mount_cap("ext4", Mode::SingleNodeWriter)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(e.message().contains(&vol) && e.message().contains("xvdba"), "{}", e.message());
    assert!(t.elapsed() < Duration::from_secs(5));
    assert_eq!(code(s.stage("vol-zz", &s.path("staging"), block_cap()).await), Code::NotFound);
    assert_eq!(code(s.stats(&vol, &s.path("staging")).await), Code::NotFound);
    let e = s
        .node
        .node_expand_volume(Request::new(pb::NodeExpandVolumeRequest {
            volume_id: vol.clone(),
            volume_path: s.path("staging").to_string_lossy().into(),
            ..Default::default()
        }))
        .await;
    assert_eq!(code(e), Code::NotFound);

    let info = s.node.node_get_info(Request::new(pb::NodeGetInfoRequest {})).await.unwrap().into_inner();
    assert_eq!(info.node_id, "i-0unknown");
    assert_eq!(info.max_volumes_per_node, 26);
    let seg = info.accessible_topology.unwrap().segments;
    assert_eq!(seg.get("topology.ebs.csi.aws.com/zone").map(String::as_str), Some("us-east-1a"));
    assert_eq!(seg.get("topology.kubernetes.io/zone").map(String::as_str), Some("us-east-1a"));
}
