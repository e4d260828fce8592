//! csi-rbd's node service on one node (a guest kernel on a real Ceph
//! cluster's bridge), every single-node scenario batched into one boot:
//! stage/publish/write, idempotency, expansion while published, read-only
//! publish, xfs, the filesystem hint (and its fallback to the probe), an
//! image written outside the driver (data, a filesystem, a clone of it:
//! probed, never formatted over a filesystem), a raw block volume, the rbd-nbd mounter, the volume ID
//! fallback, NOT_FOUND for a missing image, PERMISSION_DENIED for a wrong
//! key, a restarted plugin working from the stage record, and unstage with
//! the cluster frozen (bounded in time).

mod node_common;

use std::time::{Duration, Instant};

use csi_core::pb;
use csi_core::pb::volume_capability::access_mode::Mode;
use node_common::*;
use tonic::Code;

/// Waits (bounded) for the node's log line of a mkfs for `volume`.
fn mkfs_logged(g: &csi_suite::guest::Guest, volume: &str) {
    let needle = format!("for volume {volume}: the device probe found it blank");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !g.log().contains(&needle) {
        assert!(Instant::now() < deadline, "no mkfs line for {volume} in the node's log");
        // Bounded poll: the guest's console reaches its log file a little later.
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Unstage with a frozen cluster: unmount (5 s, then lazy) + unmap (10 s,
/// then forced, 10 s) + lock release (5 s), with margin for TCG.
const FROZEN_UNSTAGE_BOUND: Duration = Duration::from_secs(45);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_node_stages_publishes_expands_and_unstages_every_kind_of_volume() {
    let c = Cluster::start();
    let mut g = c.boot("node-a", 10);
    let mut n = node(&mut g).await;

    // Info and capabilities.
    let info = n.node_get_info(pb::NodeGetInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.node_id, "node-a");
    let caps = n.node_get_capabilities(pb::NodeGetCapabilitiesRequest {}).await.unwrap().into_inner();
    assert_eq!(caps.capabilities.len(), 5, "{caps:?}");

    // A missing image: NOT_FOUND, nothing left mapped or locked.
    let missing = Vol::with_context("no-such-image", &[]);
    let e = n.node_stage_volume(missing.stage_req(&c, mount_cap("ext4", Mode::SingleNodeWriter))).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    assert!(c.lock_holders("no-such-image").is_empty());
    assert_eq!(g.sh_ok("ls /sys/bus/rbd/devices | wc -l").unwrap(), "0");

    // A wrong key: PERMISSION_DENIED, within the connection's bound.
    c.image("vol-ext4", 64);
    let v = Vol::with_context("vol-ext4", &[]);
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    let mut bad = v.stage_req(&c, cap.clone());
    let other = std::process::Command::new("ceph-authtool").arg("--gen-print-key").output().unwrap();
    let other_key = String::from_utf8(other.stdout).unwrap().trim().to_string();
    bad.secrets.insert("userKey".into(), other_key.clone());
    let t = Instant::now();
    let e = n.node_stage_volume(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(t.elapsed() < Duration::from_secs(20), "wrong key answered after {:?}", t.elapsed());
    assert!(!e.message().contains(&other_key), "the key is in the error: {}", e.message());
    assert_eq!(g.sh_ok("ls /sys/bus/rbd/devices | wc -l").unwrap(), "0");

    // ext4: stage (twice), publish, write, stats.
    let t = Instant::now();
    n.node_stage_volume(v.stage_req(&c, cap.clone())).await.unwrap();
    eprintln!("stage (map + mkfs.ext4 + mount) took {:?}", t.elapsed());
    // A new image's stage records the filesystem it made as the image's
    // hint, in the same write as the attachment (the client to fence).
    assert_eq!(c.fs_hint("vol-ext4").as_deref(), Some("ext4"));
    assert!(c.attachment("vol-ext4", "node-a")["client_addr"].as_str().is_some_and(|a| !a.is_empty()));
    n.node_stage_volume(v.stage_req(&c, cap.clone())).await.expect("a second stage is idempotent");
    assert_eq!(c.lock_holders("vol-ext4"), vec!["node-a"]);
    n.node_publish_volume(v.publish_req(1, cap.clone(), false)).await.unwrap();
    n.node_publish_volume(v.publish_req(1, cap.clone(), false)).await.expect("a second publish is idempotent");
    let sum = write_data(&g, &format!("{}/data", v.target(1)), 4);
    let stats = n
        .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
            volume_id: v.id.clone(),
            volume_path: v.target(1),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    let bytes_before = stats.usage[0].total;
    assert!(bytes_before > 40 << 20 && bytes_before <= 64 << 20, "{stats:?}");
    assert!(stats.usage[1].total > 0, "inodes: {stats:?}");

    // Expand while published: the kernel sees the new size, the fs grows.
    c.ceph.rbd(&["resize", "--size", "128M", "vol-ext4"]).unwrap();
    let r = n
        .node_expand_volume(pb::NodeExpandVolumeRequest {
            volume_id: v.id.clone(),
            volume_path: v.target(1),
            capacity_range: Some(pb::CapacityRange { required_bytes: 128 << 20, limit_bytes: 0 }),
            staging_target_path: v.staging(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.capacity_bytes, 128 << 20);
    let df: i64 = g.sh_ok(&format!("df -B1 --output=size {} | tail -n1", v.target(1))).unwrap().trim().parse().unwrap();
    assert!(df > 100 << 20, "df after expand: {df}");
    let stats = n
        .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
            volume_id: v.id.clone(),
            volume_path: v.target(1),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert!(stats.usage[0].total > bytes_before + (50 << 20), "{bytes_before} → {stats:?}");
    assert_eq!(sha(&g, &format!("{}/data", v.target(1))), sum);

    // Read-only publish of the same staged volume: writes refused.
    n.node_publish_volume(v.publish_req(2, cap.clone(), true)).await.unwrap();
    let (rc, out) = g.sh(&format!("touch {}/x", v.target(2))).unwrap();
    assert_ne!(rc, 0, "a write to the read-only publish succeeded: {out}");
    assert!(out.contains("Read-only"), "{out}");
    assert_eq!(sha(&g, &format!("{}/data", v.target(2))), sum);

    // Unpublish (twice, and a path never published), unstage (twice).
    for t in [1, 2, 1, 9] {
        n.node_unpublish_volume(v.unpublish_req(t)).await.unwrap();
    }
    assert_eq!(g.sh(&format!("test -e {}", v.target(1))).unwrap().0, 1, "target path left behind");
    n.node_unstage_volume(v.unstage_req()).await.unwrap();
    n.node_unstage_volume(v.unstage_req()).await.expect("a second unstage is idempotent");
    assert_eq!(g.sh_ok("ls /sys/bus/rbd/devices | wc -l").unwrap(), "0", "still mapped");
    assert!(c.lock_holders("vol-ext4").is_empty(), "lock not released");
    assert_eq!(g.sh_ok("ls /var/lib/csi-rbd | wc -l").unwrap(), "0", "stage record left");

    // xfs, named by its volume ID only (no context: the ID's pool, csi-vol-<uuid>).
    let uuid = "5a0f0a8e-3c1e-4f7e-9d2b-0123456789ab";
    let image = format!("csi-vol-{uuid}");
    c.image(&image, 320);
    let vx = Vol { id: c.volume_id(uuid), image: image.clone(), context: Default::default() };
    let capx = mount_cap("xfs", Mode::SingleNodeWriter);
    n.node_stage_volume(vx.stage_req(&c, capx.clone())).await.unwrap();
    n.node_publish_volume(vx.publish_req(1, capx.clone(), false)).await.unwrap();
    assert_eq!(g.sh_ok(&format!("stat -f -c %T {}", vx.target(1))).unwrap(), "xfs");
    let sumx = write_data(&g, &format!("{}/data", vx.target(1)), 2);
    n.node_unpublish_volume(vx.unpublish_req(1)).await.unwrap();
    n.node_unstage_volume(vx.unstage_req()).await.unwrap();
    // Staged again: the filesystem is found, not made again.
    n.node_stage_volume(vx.stage_req(&c, capx.clone())).await.unwrap();
    n.node_publish_volume(vx.publish_req(1, capx.clone(), false)).await.unwrap();
    assert_eq!(sha(&g, &format!("{}/data", vx.target(1))), sumx, "data lost: mkfs ran on a device with a filesystem?");
    n.node_unpublish_volume(vx.unpublish_req(1)).await.unwrap();
    n.node_unstage_volume(vx.unstage_req()).await.unwrap();
    // The first stage recorded xfs in the image's attach object; the second
    // mounted on that hint, without probing (the data above is intact).
    assert_eq!(c.fs_hint(&image).as_deref(), Some("xfs"));
    // A wrong hint costs a failed mount, then the probe decides: the xfs is
    // mounted with its data, not formatted, and the hint is corrected.
    c.set_fs_hint(&image, "ext4");
    n.node_stage_volume(vx.stage_req(&c, capx.clone())).await.unwrap();
    n.node_publish_volume(vx.publish_req(1, capx.clone(), false)).await.unwrap();
    assert_eq!(g.sh_ok(&format!("stat -f -c %T {}", vx.target(1))).unwrap(), "xfs");
    assert_eq!(sha(&g, &format!("{}/data", vx.target(1))), sumx, "data lost after a wrong filesystem hint");
    assert_eq!(c.fs_hint(&image).as_deref(), Some("xfs"), "the stage did not correct the hint");
    n.node_unpublish_volume(vx.unpublish_req(1)).await.unwrap();
    n.node_unstage_volume(vx.unstage_req()).await.unwrap();
    // A hint on a device that holds no filesystem of ours (swap): the mount
    // fails, the probe names it, the stage is refused and the device is
    // left as it was (never formatted on the hint's word).
    let swap = c.ceph.dir().join("swap.img");
    std::fs::File::create(&swap).unwrap().set_len(32 << 20).unwrap();
    let out = std::process::Command::new("mkswap").arg(&swap).output().unwrap();
    assert!(out.status.success(), "{out:?}");
    c.ceph.rbd(&["import", "--no-progress", &swap.display().to_string(), "vol-swap"]).unwrap();
    c.set_fs_hint("vol-swap", "ext4");
    let vs = Vol::with_context("vol-swap", &[]);
    let e = n.node_stage_volume(vs.stage_req(&c, cap.clone())).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("swap"), "{e:?}");
    assert_eq!(g.sh_ok("ls /sys/bus/rbd/devices | wc -l").unwrap(), "0", "left mapped");
    assert!(c.lock_holders("vol-swap").is_empty(), "lock not released");
    let back = c.ceph.dir().join("swap.back");
    c.ceph.rbd(&["export", "--no-progress", "vol-swap", &back.display().to_string()]).unwrap();
    assert!(std::fs::read(&back).unwrap() == std::fs::read(&swap).unwrap(), "the swap image was written to");

    // A hint on a blank device: what a new image's stage leaves when it dies
    // or fails after that write, before its mkfs finished (the hint goes
    // with the attachment, before mkfs). The mount fails, the probe finds
    // the device blank, and only then is it formatted.
    c.image("vol-early-hint", 64);
    c.set_fs_hint("vol-early-hint", "ext4");
    let ve = Vol::with_context("vol-early-hint", &[]);
    n.node_stage_volume(ve.stage_req(&c, cap.clone())).await.unwrap();
    n.node_publish_volume(ve.publish_req(1, cap.clone(), false)).await.unwrap();
    assert_eq!(g.sh_ok(&format!("findmnt -n -o FSTYPE {}", ve.staging())).unwrap(), "ext4");
    let sume = write_data(&g, &format!("{}/data", ve.target(1)), 1);
    n.node_unpublish_volume(ve.unpublish_req(1)).await.unwrap();
    n.node_unstage_volume(ve.unstage_req()).await.unwrap();
    // Staged again on the (now true) hint: mounted, not formatted.
    n.node_stage_volume(ve.stage_req(&c, cap.clone())).await.unwrap();
    n.node_publish_volume(ve.publish_req(1, cap.clone(), false)).await.unwrap();
    assert_eq!(sha(&g, &format!("{}/data", ve.target(1))), sume, "data lost on the second stage");
    n.node_unpublish_volume(ve.unpublish_req(1)).await.unwrap();
    n.node_unstage_volume(ve.unstage_req()).await.unwrap();
    assert_eq!(c.fs_hint("vol-early-hint").as_deref(), Some("ext4"));

    // Every mkfs is logged with the volume: the new images above were
    // formatted (the probe found them blank).
    mkfs_logged(&g, &v.id);
    mkfs_logged(&g, &vx.id);
    // Data written through the kernel client (a raw block stage, as an
    // admin's `rbd map` would), no filesystem signature, zeros at both
    // ends: the device probe finds it blank, and it is formatted.
    c.image("vol-krbd-data", 64);
    let vd = Vol::with_context("vol-krbd-data", &[]);
    n.node_stage_volume(vd.stage_req(&c, block_cap())).await.unwrap();
    n.node_publish_volume(vd.publish_req(1, block_cap(), false)).await.unwrap();
    g.sh_ok(&format!(
        "head -c 1048576 /dev/urandom | dd of={} bs=1M seek=16 oflag=direct status=none && sync",
        vd.target(1)
    ))
    .unwrap();
    n.node_unpublish_volume(vd.unpublish_req(1)).await.unwrap();
    n.node_unstage_volume(vd.unstage_req()).await.unwrap();
    n.node_stage_volume(vd.stage_req(&c, cap.clone())).await.unwrap();
    mkfs_logged(&g, &vd.id);
    n.node_unstage_volume(vd.unstage_req()).await.unwrap();
    // A filesystem made through the kernel client, outside the driver (no
    // hint): probed, found, mounted with its data, never formatted.
    c.image("vol-krbd-fs", 64);
    let vk = Vol::with_context("vol-krbd-fs", &[]);
    n.node_stage_volume(vk.stage_req(&c, block_cap())).await.unwrap();
    n.node_publish_volume(vk.publish_req(1, block_cap(), false)).await.unwrap();
    let sumk = g
        .sh_ok(&format!(
            "mkfs.ext4 -q -F {dev} && mkdir -p /run/krbd-fs && mount {dev} /run/krbd-fs && \
             head -c 1048576 /dev/urandom > /run/krbd-fs/data && sha256sum < /run/krbd-fs/data && \
             umount /run/krbd-fs",
            dev = vk.target(1)
        ))
        .unwrap();
    let sumk = sumk.split_whitespace().next().unwrap().to_string();
    n.node_unpublish_volume(vk.unpublish_req(1)).await.unwrap();
    n.node_unstage_volume(vk.unstage_req()).await.unwrap();
    assert_eq!(c.fs_hint("vol-krbd-fs"), None, "a block stage recorded a filesystem");
    n.node_stage_volume(vk.stage_req(&c, cap.clone())).await.unwrap();
    n.node_publish_volume(vk.publish_req(1, cap.clone(), false)).await.unwrap();
    assert_eq!(sha(&g, &format!("{}/data", vk.target(1))), sumk, "a filesystem made outside the driver was formatted");
    assert!(!g.log().contains(&format!("for volume {}:", vk.id)), "mkfs ran on vol-krbd-fs");
    n.node_unpublish_volume(vk.unpublish_req(1)).await.unwrap();
    n.node_unstage_volume(vk.unstage_req()).await.unwrap();
    // A clone of its snapshot: no data object of its own, but a parent
    // with a filesystem. Probed (never trusted blank), mounted with the data.
    c.ceph.rbd(&["snap", "create", "vol-krbd-fs@s1"]).unwrap();
    c.ceph.rbd(&["snap", "protect", "vol-krbd-fs@s1"]).unwrap();
    c.ceph.rbd(&["clone", "vol-krbd-fs@s1", "vol-krbd-clone"]).unwrap();
    let vc = Vol::with_context("vol-krbd-clone", &[]);
    n.node_stage_volume(vc.stage_req(&c, cap.clone())).await.unwrap();
    n.node_publish_volume(vc.publish_req(1, cap.clone(), false)).await.unwrap();
    assert_eq!(sha(&g, &format!("{}/data", vc.target(1))), sumk, "the clone of a filesystem was formatted");
    assert!(!g.log().contains(&format!("for volume {}:", vc.id)), "mkfs ran on vol-krbd-clone");
    n.node_unpublish_volume(vc.unpublish_req(1)).await.unwrap();
    n.node_unstage_volume(vc.unstage_req()).await.unwrap();

    // Raw block: write and read through the published device file.
    c.image("vol-block", 32);
    let vb = Vol::with_context("vol-block", &[]);
    n.node_stage_volume(vb.stage_req(&c, block_cap())).await.unwrap();
    n.node_publish_volume(vb.publish_req(1, block_cap(), false)).await.unwrap();
    let dev = vb.target(1);
    let sumb = g
        .sh_ok(&format!(
            "head -c 1048576 /dev/urandom > /run/blk && dd if=/run/blk of={dev} bs=1M oflag=direct status=none && sync && \
             dd if={dev} bs=1M count=1 iflag=direct status=none | sha256sum && sha256sum < /run/blk"
        ))
        .unwrap();
    let sums: Vec<&str> = sumb.lines().map(|l| l.split_whitespace().next().unwrap()).collect();
    assert_eq!(sums.len(), 2, "{sumb}");
    assert_eq!(sums[0], sums[1], "read back differs from what was written");
    let stats = n
        .node_get_volume_stats(pb::NodeGetVolumeStatsRequest {
            volume_id: vb.id.clone(),
            volume_path: dev.clone(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(stats.usage[0].total, 32 << 20, "{stats:?}");
    n.node_unpublish_volume(vb.unpublish_req(1)).await.unwrap();
    n.node_unstage_volume(vb.unstage_req()).await.unwrap();

    // rbd-nbd mounter.
    c.image("vol-nbd", 64);
    let vn = Vol::with_context("vol-nbd", &[("mounter", "rbd-nbd")]);
    n.node_stage_volume(vn.stage_req(&c, cap.clone())).await.unwrap();
    n.node_publish_volume(vn.publish_req(1, cap.clone(), false)).await.unwrap();
    let src = g.sh_ok(&format!("findmnt -n -o SOURCE {}", vn.staging())).unwrap();
    assert!(src.starts_with("/dev/nbd"), "staged from {src}");
    let sumn = write_data(&g, &format!("{}/data", vn.target(1)), 2);
    // rbd-nbd's client (the watcher that came with the map) is recorded for fencing.
    let rec = c.attachment("vol-nbd", "node-a");
    let addr = rec["client_addr"].as_str().unwrap_or_default();
    assert!(addr.starts_with(&format!("{}:", g.addr())), "recorded client of rbd-nbd: {rec}");
    assert_eq!(rec["mounter"], "rbd-nbd", "{rec}");
    assert_eq!(sha(&g, &format!("{}/data", vn.target(1))), sumn);
    assert_eq!(
        g.sh_ok("ls -A /var/lib/csi-rbd/ | grep -c nbd-key || true").unwrap(),
        "0",
        "rbd-nbd keyfile left behind"
    );
    n.node_unpublish_volume(vn.unpublish_req(1)).await.unwrap();
    n.node_unstage_volume(vn.unstage_req()).await.unwrap();
    assert_eq!(
        g.sh_ok("rbd-nbd list-mapped --format json").unwrap().trim_matches(|c| c == '[' || c == ']' || c == '\n'),
        ""
    );
    assert!(c.lock_holders("vol-nbd").is_empty());

    // A restarted plugin (a second process, nothing in memory) publishes and
    // unstages from the stage record alone.
    c.image("vol-restart", 64);
    let vr = Vol::with_context("vol-restart", &[]);
    n.node_stage_volume(vr.stage_req(&c, cap.clone())).await.unwrap();
    n.node_publish_volume(vr.publish_req(1, cap.clone(), false)).await.unwrap();
    let sumr = write_data(&g, &format!("{}/data", vr.target(1)), 1);
    let second = format!("{}:10002", g.addr());
    g.sh_ok(&format!(
        "setsid nohup {} --mode node --node-id node-a --cluster-config {} --state-dir /var/lib/csi-rbd \
         --endpoint tcp://{second} >/run/second-plugin.log 2>&1 < /dev/null & echo $! > /run/second-plugin.pid",
        env!("CARGO_BIN_EXE_csi-rbd"),
        c.config.display()
    ))
    .unwrap();
    let mut n2 = {
        let ep = csi_core::flags::Endpoint::Tcp(second.clone());
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match csi_core::client::connect(&ep).await {
                Ok(ch) => break csi_core::pb::node_client::NodeClient::new(ch),
                Err(e) if Instant::now() > deadline => panic!("second plugin at {second}: {e}"),
                // Bounded poll for the second process's listener.
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        }
    };
    n2.node_publish_volume(vr.publish_req(2, cap.clone(), true)).await.unwrap();
    assert_eq!(sha(&g, &format!("{}/data", vr.target(2))), sumr);
    for t in [1, 2] {
        n2.node_unpublish_volume(vr.unpublish_req(t)).await.unwrap();
    }
    n2.node_unstage_volume(vr.unstage_req()).await.unwrap();
    assert_eq!(g.sh_ok("ls /sys/bus/rbd/devices | wc -l").unwrap(), "0");
    assert!(c.lock_holders("vol-restart").is_empty(), "the restarted plugin did not release the lock");
    g.sh_ok("kill $(cat /run/second-plugin.pid)").unwrap();

    // Unstage with the cluster frozen: bounded, and the device is gone.
    c.image("vol-frozen", 64);
    let vf = Vol::with_context("vol-frozen", &[]);
    n.node_stage_volume(vf.stage_req(&c, cap.clone())).await.unwrap();
    n.node_publish_volume(vf.publish_req(1, cap.clone(), false)).await.unwrap();
    write_data(&g, &format!("{}/data", vf.target(1)), 1);
    n.node_unpublish_volume(vf.unpublish_req(1)).await.unwrap();
    c.ceph.freeze();
    let t = Instant::now();
    let r = n.node_unstage_volume(vf.unstage_req()).await;
    let took = t.elapsed();
    c.ceph.thaw();
    eprintln!("unstage with the cluster frozen took {took:?}: {r:?}");
    r.expect("unstage with a frozen cluster");
    assert!(took < FROZEN_UNSTAGE_BOUND, "unstage with a frozen cluster took {took:?}");
    assert_eq!(g.sh_ok(&format!("findmnt -n {} | wc -l", vf.staging())).unwrap(), "0");
    // Once the cluster answers again, the kernel finishes the removal.
    g.sh_ok("for i in $(seq 600); do [ -z \"$(ls /sys/bus/rbd/devices)\" ] && exit 0; sleep 0.1; done; ls -l /sys/bus/rbd/devices; exit 1")
        .expect("the device is gone within 60 s of the thaw");
    // The lock the frozen cluster kept: ControllerUnpublishVolume fences and breaks it.
    assert_eq!(c.lock_holders("vol-frozen"), vec!["node-a"]);
}
