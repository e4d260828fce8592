//! The controller against a real single-node Ceph cluster, the driver run as
//! a process on a unix socket (`--mode controller`, no kernel RBD needed):
//! what a CSI user sees (codes, IDs, images in the pool, contents).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use csi_core::pb::controller_client::ControllerClient;
use csi_core::pb::{self, volume_capability as vc, volume_content_source as vcs};
use csi_suite::ceph::Ceph;
use csi_suite::csi_process::DriverProcess;
use tonic::transport::Channel;
use tonic::Code;

const MIB: i64 = 1 << 20;
const CLUSTER: &str = "test-cluster";
const VOL_DIR: &str = "csi.volumes.default";

fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_csi-rbd"))
}

fn cluster() -> Ceph {
    Ceph::start().expect("start a Ceph cluster (scripts/testbed.sh installs ceph-mon ceph-osd ceph-common)")
}

/// A controller with `config` as its cluster config.
fn driver(config: &str, extra: &[&str]) -> DriverProcess {
    let mut args = vec![
        "--mode=controller".to_string(),
        "--node-id=ctrl".to_string(),
        "--cluster-config={dir}/config.json".to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let d = DriverProcess::start(&bin(), "csi-rbd-ctrl", &args).expect("start csi-rbd");
    std::fs::write(d.dir().join("config.json"), config).unwrap();
    d
}

async fn client(d: &DriverProcess) -> ControllerClient<Channel> {
    ControllerClient::new(d.channel().await.expect("connect to the driver"))
}

fn secrets(key: &str) -> HashMap<String, String> {
    HashMap::from([("userID".to_string(), "admin".to_string()), ("userKey".to_string(), key.to_string())])
}

fn params() -> HashMap<String, String> {
    HashMap::from([("clusterID".to_string(), CLUSTER.to_string()), ("pool".to_string(), "rbd".to_string())])
}

fn mount_cap() -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(vc::AccessType::Mount(vc::MountVolume::default())),
        access_mode: Some(vc::AccessMode { mode: vc::access_mode::Mode::SingleNodeWriter as i32 }),
    }
}

fn create_req(name: &str, bytes: i64, key: &str) -> pb::CreateVolumeRequest {
    pb::CreateVolumeRequest {
        name: name.to_string(),
        capacity_range: Some(pb::CapacityRange { required_bytes: bytes, limit_bytes: 0 }),
        volume_capabilities: vec![mount_cap()],
        parameters: params(),
        secrets: secrets(key),
        ..Default::default()
    }
}

/// The images of pool `rbd`, sorted.
fn images(c: &Ceph) -> Vec<String> {
    let out = c.rbd(&["ls", "rbd", "--format", "json"]).unwrap();
    let mut v: Vec<String> = serde_json::from_str(&out).unwrap();
    v.sort();
    v
}

fn omap_keys(c: &Ceph, oid: &str) -> Vec<String> {
    match c.rados(&["-p", "rbd", "listomapkeys", oid]) {
        Ok(out) => String::from_utf8_lossy(&out).lines().map(str::to_string).collect(),
        Err(_) => Vec::new(),
    }
}

fn image_of(v: &pb::Volume) -> String {
    v.volume_context["imageName"].clone()
}

/// sha256 of an image's whole contents (`rbd export`).
fn image_hash(c: &Ceph, dir: &Path, spec: &str) -> String {
    let f = dir.join("export.img");
    let _ = std::fs::remove_file(&f);
    c.rbd(&["export", "--no-progress", spec, f.to_str().unwrap()]).unwrap();
    let out = Command::new("sha256sum").arg(&f).output().unwrap();
    let _ = std::fs::remove_file(&f);
    String::from_utf8_lossy(&out.stdout).split_whitespace().next().unwrap().to_string()
}

/// Writes `bytes` of random data at the start of image `spec`, through an
/// image diff (the CLI has no "write into an existing image"). The diff
/// carries its image's size, so the data image has `spec`'s size.
fn write_random(c: &Ceph, dir: &Path, spec: &str, bytes: usize, tag: &str) {
    let info: serde_json::Value = serde_json::from_str(&c.rbd(&["info", spec, "--format", "json"]).unwrap()).unwrap();
    let size = info["size"].as_u64().unwrap() as usize;
    assert!(bytes <= size);
    let data = dir.join(format!("data-{tag}"));
    let mut buf = vec![0u8; size];
    std::fs::File::open("/dev/urandom").and_then(|mut f| std::io::Read::read_exact(&mut f, &mut buf[..bytes])).unwrap();
    std::fs::write(&data, &buf).unwrap();
    let tmp = format!("rbd/tmp-data-{tag}");
    c.rbd(&["import", "--no-progress", data.to_str().unwrap(), &tmp]).unwrap();
    let diff = dir.join(format!("diff-{tag}"));
    c.rbd(&["export-diff", "--no-progress", &tmp, diff.to_str().unwrap()]).unwrap();
    c.rbd(&["import-diff", "--no-progress", diff.to_str().unwrap(), spec]).unwrap();
    c.rbd(&["rm", "--no-progress", &tmp]).unwrap();
    let _ = std::fs::remove_file(&data);
    let _ = std::fs::remove_file(&diff);
}

/// The pool's MAX AVAIL once the manager reports it.
fn max_avail(c: &Ceph, pool: &str) -> i64 {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let df = c.ceph_json(&["df"]).unwrap();
        let found = df["pools"].as_array().and_then(|ps| ps.iter().find(|p| p["name"] == pool).cloned());
        if let Some(m) = found.and_then(|p| p["stats"]["max_avail"].as_i64()).filter(|m| *m > 0) {
            return m;
        }
        assert!(Instant::now() < deadline, "ceph-mgr never reported pool {pool}: {df}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// The client addresses the driver logged on each connect, in order.
fn connected_clients(log: &str) -> Vec<String> {
    log.lines()
        .filter(|l| l.contains("connected to the cluster"))
        .filter_map(|l| l.split("client=").nth(1))
        .map(|v| v.split_whitespace().next().unwrap_or("").trim_matches('"').to_string())
        .collect()
}

/// The number of ancestors of image `spec` (`rbd info`'s parent links).
fn depth(c: &Ceph, spec: &str) -> usize {
    let mut spec = spec.to_string();
    let mut n = 0;
    loop {
        let info: serde_json::Value =
            serde_json::from_str(&c.rbd(&["info", &spec, "--format", "json"]).unwrap()).unwrap();
        let Some(p) = info.get("parent") else { return n };
        n += 1;
        assert!(n <= 64, "{spec}: endless chain");
        spec = format!("{}/{}", p["pool"].as_str().unwrap(), p["image"].as_str().unwrap());
    }
}

fn scratch(hint: &str) -> tempfile::TempDir {
    tempfile::Builder::new().prefix(hint).tempdir().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn volumes_are_idempotent_concurrent_safe_expandable_listed_and_deleted() {
    let mut c = cluster();
    let key = c.admin_key().to_string();
    let d = driver(&c.cluster_config_json(CLUSTER), &[]);
    let mut ctl = client(&d).await;

    // Create; the image is in the pool with the journal entries of ceph-csi.
    let started = Instant::now();
    let v = ctl.create_volume(create_req("pvc-a", 10 * MIB + 1, &key)).await.unwrap().into_inner().volume.unwrap();
    let first_ms = started.elapsed().as_millis();
    assert_eq!(v.capacity_bytes, 11 * MIB, "rounded up to a MiB");
    let id = csi_rbd::volume_id::VolumeId::parse(&v.volume_id).unwrap();
    assert_eq!(id.cluster_id, CLUSTER);
    let image = image_of(&v);
    assert_eq!(image, format!("csi-vol-{}", id.uuid));
    assert_eq!(images(&c), vec![image.clone()]);
    assert_eq!(v.volume_context["mapOptions"], "ms_mode=prefer-crc");
    assert_eq!(v.volume_context["pool"], "rbd");
    assert_eq!(omap_keys(&c, VOL_DIR), ["csi.volume.pvc-a"]);
    let per = omap_keys(&c, &format!("csi.volume.{}", id.uuid));
    for k in ["csi.imagename", "csi.volname", "csi.imageid"] {
        assert!(per.contains(&k.to_string()), "{k} in {per:?}");
    }
    let info: serde_json::Value =
        serde_json::from_str(&c.rbd(&["info", &format!("rbd/{image}"), "--format", "json"]).unwrap()).unwrap();
    assert_eq!(info["size"], 11 * MIB);
    let features: Vec<&str> = info["features"].as_array().unwrap().iter().map(|f| f.as_str().unwrap()).collect();
    assert_eq!(features, ["layering", "exclusive-lock", "object-map", "fast-diff", "deep-flatten"]);

    // A retry: the same volume, no second image; the cached connection
    // makes it cheaper than the first call (which connected).
    let started = Instant::now();
    let again = ctl.create_volume(create_req("pvc-a", 10 * MIB + 1, &key)).await.unwrap().into_inner().volume.unwrap();
    let retry_ms = started.elapsed().as_millis();
    assert_eq!(again.volume_id, v.volume_id);
    assert_eq!(images(&c).len(), 1);
    eprintln!("CreateVolume: first {first_ms} ms (connect + create), retry {retry_ms} ms (cached connection)");
    // Same name, a size the image cannot satisfy: ALREADY_EXISTS.
    let e = ctl.create_volume(create_req("pvc-a", 64 * MIB, &key)).await.unwrap_err();
    assert_eq!(e.code(), Code::AlreadyExists, "{e:?}");
    // Two writers on two nodes: refused up front.
    let mut rwx = create_req("pvc-rwx", MIB, &key);
    rwx.volume_capabilities[0].access_mode =
        Some(vc::AccessMode { mode: vc::access_mode::Mode::MultiNodeMultiWriter as i32 });
    assert_eq!(ctl.create_volume(rwx).await.unwrap_err().code(), Code::InvalidArgument);
    // Bad parameters name the key.
    let mut bad = create_req("pvc-bad", MIB, &key);
    bad.parameters.insert("imageFeature".into(), "layering".into());
    let e = ctl.create_volume(bad).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("imageFeature"), "{e:?}");
    let mut nopool = create_req("pvc-bad", MIB, &key);
    nopool.parameters.insert("pool".into(), "no-such-pool".into());
    let e = ctl.create_volume(nopool).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("no-such-pool"), "{e:?}");
    let mut nocluster = create_req("pvc-bad", MIB, &key);
    nocluster.parameters.insert("clusterID".into(), "elsewhere".into());
    let e = ctl.create_volume(nocluster).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("elsewhere"), "{e:?}");
    let mut nosecret = create_req("pvc-bad", MIB, &key);
    nosecret.secrets.remove("userKey");
    let e = ctl.create_volume(nosecret).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    assert!(e.message().contains("userKey"), "{e:?}");
    // No secrets at all, on an RPC whose secrets StorageClasses always name.
    let e = ctl
        .delete_volume(pb::DeleteVolumeRequest { volume_id: v.volume_id.clone(), secrets: HashMap::new() })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");

    // N concurrent CreateVolume for one name on one controller, and on a
    // second controller at the same time: one image, one ID.
    let d2 = driver(&c.cluster_config_json(CLUSTER), &[]);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let ch = if i % 2 == 0 { d.channel().await.unwrap() } else { d2.channel().await.unwrap() };
        let key = key.clone();
        tasks.push(tokio::spawn(async move {
            ControllerClient::new(ch).create_volume(create_req("pvc-race", 8 * MIB, &key)).await
        }));
    }
    let mut ids = Vec::new();
    for t in tasks {
        let r = t.await.unwrap();
        ids.push(
            r.expect("every concurrent CreateVolume succeeds (no ABORTED)").into_inner().volume.unwrap().volume_id,
        );
    }
    ids.dedup();
    assert_eq!(ids.len(), 1, "{ids:?}");
    assert_eq!(images(&c).len(), 2, "{:?}", images(&c));
    drop(d2);

    // Expand: grows, never shrinks, the node grows the filesystem.
    let r = ctl
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: v.volume_id.clone(),
            capacity_range: Some(pb::CapacityRange { required_bytes: 32 * MIB, limit_bytes: 0 }),
            secrets: secrets(&key),
            volume_capability: Some(mount_cap()),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.capacity_bytes, 32 * MIB);
    assert!(r.node_expansion_required);
    let info: serde_json::Value =
        serde_json::from_str(&c.rbd(&["info", &format!("rbd/{image}"), "--format", "json"]).unwrap()).unwrap();
    assert_eq!(info["size"], 32 * MIB);
    let r = ctl
        .controller_expand_volume(pb::ControllerExpandVolumeRequest {
            volume_id: v.volume_id.clone(),
            capacity_range: Some(pb::CapacityRange { required_bytes: 16 * MIB, limit_bytes: 0 }),
            secrets: secrets(&key),
            volume_capability: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.capacity_bytes, 32 * MIB, "no shrink");

    // ControllerGetVolume (no secrets: the cached connection).
    let got = ctl
        .controller_get_volume(pb::ControllerGetVolumeRequest { volume_id: v.volume_id.clone() })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(got.volume.as_ref().unwrap().capacity_bytes, 32 * MIB);
    let missing = v.volume_id.replace(&id.uuid, "00000000-0000-4000-8000-000000000000");
    let e = ctl.controller_get_volume(pb::ControllerGetVolumeRequest { volume_id: missing.clone() }).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);

    // ListVolumes with pagination: 5 volumes, pages of 2.
    for i in 0..3 {
        ctl.create_volume(create_req(&format!("pvc-list-{i}"), MIB, &key)).await.unwrap();
    }
    let mut seen = Vec::new();
    let mut token = String::new();
    let mut pages = 0;
    loop {
        let r = ctl
            .list_volumes(pb::ListVolumesRequest { max_entries: 2, starting_token: token.clone() })
            .await
            .unwrap()
            .into_inner();
        assert!(r.entries.len() <= 2);
        seen.extend(r.entries.into_iter().map(|e| e.volume.unwrap()));
        pages += 1;
        if r.next_token.is_empty() {
            break;
        }
        token = r.next_token;
    }
    assert_eq!(pages, 3);
    let mut listed: Vec<&str> = seen.iter().map(|v| v.volume_id.as_str()).collect();
    listed.sort();
    listed.dedup();
    assert_eq!(listed.len(), 5, "{listed:?}");
    assert!(seen.iter().any(|s| s.volume_id == v.volume_id && s.capacity_bytes == 32 * MIB));
    let e =
        ctl.list_volumes(pb::ListVolumesRequest { max_entries: 2, starting_token: "bogus".into() }).await.unwrap_err();
    assert_eq!(e.code(), Code::Aborted);

    // A mapped (watched) image is never deleted: FAILED_PRECONDITION
    // naming the watcher. `rbd watch` keeps a watch on the header.
    let mut watch = Command::new("rbd")
        .args(["-c", c.conf().to_str().unwrap(), "watch", &format!("rbd/{image}")])
        // It watches until its stdin closes.
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(d.dir().join("watch.log")).unwrap())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let s: serde_json::Value =
            serde_json::from_str(&c.rbd(&["status", &format!("rbd/{image}"), "--format", "json"]).unwrap()).unwrap();
        if s["watchers"].as_array().is_some_and(|w| !w.is_empty()) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "rbd watch never registered: {s}; exited: {:?}; {}",
            watch.try_wait(),
            std::fs::read_to_string(d.dir().join("watch.log")).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let e = ctl
        .delete_volume(pb::DeleteVolumeRequest { volume_id: v.volume_id.clone(), secrets: secrets(&key) })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("in use") && e.message().contains(&c.host(1).to_string()), "{e:?}");
    assert!(images(&c).contains(&image));
    let _ = watch.kill();
    let _ = watch.wait();

    // Delete (watch gone: the OSD drops it at once on a clean close, or
    // after its timeout): retried until done, then again (idempotent).
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match ctl
            .delete_volume(pb::DeleteVolumeRequest { volume_id: v.volume_id.clone(), secrets: secrets(&key) })
            .await
        {
            Ok(_) => break,
            Err(e) if e.code() == Code::FailedPrecondition && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(500)).await
            }
            Err(e) => panic!("DeleteVolume: {e:?}"),
        }
    }
    assert!(!images(&c).contains(&image));
    assert!(!omap_keys(&c, VOL_DIR).contains(&"csi.volume.pvc-a".to_string()));
    assert!(omap_keys(&c, &format!("csi.volume.{}", id.uuid)).is_empty());
    ctl.delete_volume(pb::DeleteVolumeRequest { volume_id: v.volume_id.clone(), secrets: secrets(&key) })
        .await
        .unwrap();
    ctl.delete_volume(pb::DeleteVolumeRequest { volume_id: "not-an-rbd-id".into(), secrets: secrets(&key) })
        .await
        .unwrap();
    // An image that is not in the journal is never touched, even when an
    // ID names it.
    c.rbd(&["create", "--size", "1M", "rbd/csi-vol-00000000-0000-4000-8000-0000000000aa"]).unwrap();
    let foreign = v.volume_id.replace(&id.uuid, "00000000-0000-4000-8000-0000000000aa");
    ctl.delete_volume(pb::DeleteVolumeRequest { volume_id: foreign, secrets: secrets(&key) }).await.unwrap();
    assert!(images(&c).contains(&"csi-vol-00000000-0000-4000-8000-0000000000aa".to_string()));

    // GetCapacity: the pool's MAX AVAIL as the manager reports it.
    // The monitor's `df` (MAX AVAIL) comes from a manager since Nautilus.
    c.start_mgr().expect("start ceph-mgr");
    let max_avail = max_avail(&c, "rbd");
    let cap = ctl
        .get_capacity(pb::GetCapacityRequest { parameters: params(), ..Default::default() })
        .await
        .unwrap()
        .into_inner();
    // Stored data moves the figure a little between the two reads.
    assert!((cap.available_capacity - max_avail).abs() <= 64 * MIB, "{} vs df {max_avail}", cap.available_capacity);
    // Without parameters: nothing to measure, 0.
    let none = ctl.get_capacity(pb::GetCapacityRequest::default()).await.unwrap().into_inner();
    assert_eq!(none.available_capacity, 0);

    // The key never reaches the log.
    let log = d.log();
    assert!(!log.contains(&key), "the userKey is in the driver log");
    assert!(log.contains("volume ready"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_restores_and_clones_have_the_source_s_contents() {
    let c = cluster();
    let key = c.admin_key().to_string();
    let d = driver(&c.cluster_config_json(CLUSTER), &[]);
    let mut ctl = client(&d).await;
    let dir = scratch("csi-rbd-snap");

    let src = ctl.create_volume(create_req("pvc-src", 16 * MIB, &key)).await.unwrap().into_inner().volume.unwrap();
    let src_spec = format!("rbd/{}", image_of(&src));
    write_random(&c, dir.path(), &src_spec, 4 << 20, "1");
    let before = image_hash(&c, dir.path(), &src_spec);

    let snap_req = |name: &str, source: &str| pb::CreateSnapshotRequest {
        source_volume_id: source.to_string(),
        name: name.to_string(),
        secrets: secrets(&key),
        parameters: HashMap::from([("clusterID".to_string(), CLUSTER.to_string())]),
    };
    let snap = ctl.create_snapshot(snap_req("snap-1", &src.volume_id)).await.unwrap().into_inner().snapshot.unwrap();
    assert!(snap.ready_to_use);
    assert_eq!(snap.source_volume_id, src.volume_id);
    assert_eq!(snap.size_bytes, 16 * MIB);
    let again = ctl.create_snapshot(snap_req("snap-1", &src.volume_id)).await.unwrap().into_inner().snapshot.unwrap();
    assert_eq!(again.snapshot_id, snap.snapshot_id, "a retry returns the same snapshot");
    assert_eq!(omap_keys(&c, "csi.snaps.default"), ["csi.snap.snap-1"]);
    // The source has no snapshot left behind (the temporary one is gone).
    let snaps: serde_json::Value =
        serde_json::from_str(&c.rbd(&["snap", "ls", &src_spec, "--format", "json"]).unwrap()).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 0, "{snaps}");

    // The source changes after the snapshot: the snapshot does not.
    write_random(&c, dir.path(), &src_spec, 2 << 20, "2");
    let after = image_hash(&c, dir.path(), &src_spec);
    assert_ne!(before, after);

    // Restore: the snapshot's contents.
    let mut restore = create_req("pvc-restore", 16 * MIB, &key);
    restore.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(vcs::Type::Snapshot(vcs::SnapshotSource { snapshot_id: snap.snapshot_id.clone() })),
    });
    let restored = ctl.create_volume(restore.clone()).await.unwrap().into_inner().volume.unwrap();
    assert_eq!(image_hash(&c, dir.path(), &format!("rbd/{}", image_of(&restored))), before);
    // Same name, other source: ALREADY_EXISTS.
    let mut other = restore.clone();
    other.volume_content_source = None;
    assert_eq!(ctl.create_volume(other).await.unwrap_err().code(), Code::AlreadyExists);

    // Clone of the (changed) source volume: its current contents.
    let mut clone = create_req("pvc-clone", 16 * MIB, &key);
    clone.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(vcs::Type::Volume(vcs::VolumeSource { volume_id: src.volume_id.clone() })),
    });
    let cloned = ctl.create_volume(clone).await.unwrap().into_inner().volume.unwrap();
    assert_eq!(image_hash(&c, dir.path(), &format!("rbd/{}", image_of(&cloned))), after);
    // Copy-on-write: the restore's parent is the snapshot image, the
    // clone's the source (depth 2 and 1, within the default limit of 4).
    assert_eq!(depth(&c, &format!("rbd/{}", image_of(&restored))), 2);
    assert_eq!(depth(&c, &format!("rbd/{}", image_of(&cloned))), 1);
    // A restore bigger than the snapshot is grown; smaller is OUT_OF_RANGE.
    let mut big = create_req("pvc-big", 32 * MIB, &key);
    big.volume_content_source = restore.volume_content_source.clone();
    let big = ctl.create_volume(big).await.unwrap().into_inner().volume.unwrap();
    assert_eq!(big.capacity_bytes, 32 * MIB);
    let mut small = create_req("pvc-small", 8 * MIB, &key);
    small.capacity_range = Some(pb::CapacityRange { required_bytes: 8 * MIB, limit_bytes: 8 * MIB });
    small.volume_content_source = restore.volume_content_source.clone();
    assert_eq!(ctl.create_volume(small).await.unwrap_err().code(), Code::OutOfRange);

    // ListSnapshots: by ID, by source, all, paginated.
    let snap2 = ctl.create_snapshot(snap_req("snap-2", &src.volume_id)).await.unwrap().into_inner().snapshot.unwrap();
    let snap3 =
        ctl.create_snapshot(snap_req("snap-3", &cloned.volume_id)).await.unwrap().into_inner().snapshot.unwrap();
    let list = |req: pb::ListSnapshotsRequest| {
        let mut ctl = ctl.clone();
        async move { ctl.list_snapshots(req).await.unwrap().into_inner() }
    };
    let by_id = list(pb::ListSnapshotsRequest {
        snapshot_id: snap2.snapshot_id.clone(),
        secrets: secrets(&key),
        ..Default::default()
    })
    .await;
    assert_eq!(by_id.entries.len(), 1);
    assert_eq!(by_id.entries[0].snapshot.as_ref().unwrap().snapshot_id, snap2.snapshot_id);
    let by_src = list(pb::ListSnapshotsRequest {
        source_volume_id: src.volume_id.clone(),
        secrets: secrets(&key),
        ..Default::default()
    })
    .await;
    let mut ids: Vec<String> =
        by_src.entries.iter().map(|e| e.snapshot.as_ref().unwrap().snapshot_id.clone()).collect();
    ids.sort();
    let mut want = vec![snap.snapshot_id.clone(), snap2.snapshot_id.clone()];
    want.sort();
    assert_eq!(ids, want);
    let mut token = String::new();
    let mut all = Vec::new();
    loop {
        let r = list(pb::ListSnapshotsRequest { max_entries: 2, starting_token: token.clone(), ..Default::default() })
            .await;
        all.extend(r.entries.into_iter().map(|e| e.snapshot.unwrap().snapshot_id));
        if r.next_token.is_empty() {
            break;
        }
        token = r.next_token;
    }
    all.sort();
    let mut want = vec![snap.snapshot_id.clone(), snap2.snapshot_id.clone(), snap3.snapshot_id.clone()];
    want.sort();
    assert_eq!(all, want);

    // The source volume is deleted while its snapshots live; the snapshot
    // still restores.
    ctl.delete_volume(pb::DeleteVolumeRequest { volume_id: src.volume_id.clone(), secrets: secrets(&key) })
        .await
        .unwrap();
    let mut restore2 = restore.clone();
    restore2.name = "pvc-restore-2".into();
    let r2 = ctl.create_volume(restore2).await.unwrap().into_inner().volume.unwrap();
    assert_eq!(image_hash(&c, dir.path(), &format!("rbd/{}", image_of(&r2))), before);
    assert_eq!(image_hash(&c, dir.path(), &format!("rbd/{}", image_of(&cloned))), after, "the clone lives on");

    // Delete everything: the pool ends empty, journal included. The
    // snapshots go first: the volumes restored from them stay intact.
    for s in [&snap, &snap2, &snap3] {
        for _ in 0..2 {
            ctl.delete_snapshot(pb::DeleteSnapshotRequest {
                snapshot_id: s.snapshot_id.clone(),
                secrets: secrets(&key),
            })
            .await
            .unwrap();
        }
    }
    for v in [&restored, &r2] {
        assert_eq!(
            image_hash(&c, dir.path(), &format!("rbd/{}", image_of(v))),
            before,
            "restore after its snapshot went"
        );
    }
    for v in [&restored, &cloned, &big, &r2] {
        ctl.delete_volume(pb::DeleteVolumeRequest { volume_id: v.volume_id.clone(), secrets: secrets(&key) })
            .await
            .unwrap();
    }
    assert_eq!(images(&c), Vec::<String>::new());
    assert!(omap_keys(&c, VOL_DIR).is_empty(), "{:?}", omap_keys(&c, VOL_DIR));
    assert!(omap_keys(&c, "csi.snaps.default").is_empty());
}

#[test]
fn a_max_clone_depth_outside_0_to_16_is_refused_at_start() {
    for bad in ["17", "-1", "four", ""] {
        let sock = scratch("csi-rbd-depth");
        // Bounded: a value wrongly accepted would serve (exit 124, not 2).
        let out = Command::new("timeout")
            .arg("10")
            .arg(bin())
            .args(["--mode=controller", "--node-id=ctrl", &format!("--max-clone-depth={bad}")])
            .arg(format!("--endpoint=unix://{}/csi.sock", sock.path().display()))
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{bad:?}: {err}");
        assert!(err.contains("--max-clone-depth: expected a number from 0 to 16"), "{bad:?}: {err}");
    }
}

/// The image of a snapshot (`csi-snap-<uuid>`, the ID's UUID).
fn snap_image(s: &pb::Snapshot) -> String {
    format!("csi-snap-{}", &s.snapshot_id[s.snapshot_id.len() - 36..])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_copy_on_write_and_chains_are_flattened_past_the_depth_limit() {
    let c = cluster();
    let key = c.admin_key().to_string();
    let config = c.cluster_config_json(CLUSTER);
    let dir = scratch("csi-rbd-cow");
    // The default --max-clone-depth (4), and a controller that flattens
    // every clone (the cost copy-on-write saves).
    let d = driver(&config, &[]);
    let flat = driver(&config, &["--max-clone-depth=0"]);
    let mut ctl = client(&d).await;
    let mut flat_ctl = client(&flat).await;
    let src = ctl.create_volume(create_req("pvc-cow-src", 256 * MIB, &key)).await.unwrap().into_inner().volume.unwrap();
    let src_spec = format!("rbd/{}", image_of(&src));
    write_random(&c, dir.path(), &src_spec, 64 << 20, "cow");
    let hash = image_hash(&c, dir.path(), &src_spec);
    let snap_req = |name: &str, source: &str| pb::CreateSnapshotRequest {
        source_volume_id: source.to_string(),
        name: name.to_string(),
        secrets: secrets(&key),
        parameters: HashMap::from([("clusterID".to_string(), CLUSTER.to_string())]),
    };
    let from = |name: &str, source: vcs::Type| {
        let mut r = create_req(name, 256 * MIB, &key);
        r.volume_content_source = Some(pb::VolumeContentSource { r#type: Some(source) });
        r
    };
    let of_snap = |s: &pb::Snapshot| vcs::Type::Snapshot(vcs::SnapshotSource { snapshot_id: s.snapshot_id.clone() });
    let of_vol = |v: &pb::Volume| vcs::Type::Volume(vcs::VolumeSource { volume_id: v.volume_id.clone() });
    let snap_spec = |s: &pb::Snapshot| format!("rbd/{0}@{0}", snap_image(s));
    let vol_spec = |v: &pb::Volume| format!("rbd/{}", image_of(v));

    let t = Instant::now();
    let s1 = ctl.create_snapshot(snap_req("snap-cow", &src.volume_id)).await.unwrap().into_inner().snapshot.unwrap();
    let cow_time = t.elapsed();
    let t = Instant::now();
    let sf =
        flat_ctl.create_snapshot(snap_req("snap-flat", &src.volume_id)).await.unwrap().into_inner().snapshot.unwrap();
    let flat_time = t.elapsed();
    eprintln!(
        "CreateSnapshot of a 256 MiB volume holding 64 MiB: copy-on-write {:.3} s, flattened {:.3} s",
        cow_time.as_secs_f64(),
        flat_time.as_secs_f64()
    );
    let s1_image = format!("rbd/{}", snap_image(&s1));
    let parent: serde_json::Value =
        serde_json::from_str(&c.rbd(&["info", &s1_image, "--format", "json"]).unwrap()).unwrap();
    assert_eq!(parent["parent"]["image"], image_of(&src), "the snapshot image is a clone of the source: {parent}");
    assert_eq!(depth(&c, &format!("rbd/{}", snap_image(&sf))), 0, "--max-clone-depth=0 flattens");
    assert_eq!(image_hash(&c, dir.path(), &snap_spec(&s1)), hash);
    assert_eq!(image_hash(&c, dir.path(), &snap_spec(&sf)), hash);
    // The source keeps no snapshot of ours (the temporary ones are gone).
    let snaps: serde_json::Value =
        serde_json::from_str(&c.rbd(&["snap", "ls", &src_spec, "--format", "json"]).unwrap()).unwrap();
    assert_eq!(snaps.as_array().unwrap().len(), 0, "{snaps}");

    // A chain: snapshot (1) → restore (2) → clone (3) → snapshot (4) →
    // restore (5 > 4: flattened, 0) → clone (1). Every image holds the data.
    let c0 = ctl.create_volume(from("pvc-c0", of_vol(&src))).await.unwrap().into_inner().volume.unwrap();
    let r1 = ctl.create_volume(from("pvc-r1", of_snap(&s1))).await.unwrap().into_inner().volume.unwrap();
    let c1 = ctl.create_volume(from("pvc-c1", of_vol(&r1))).await.unwrap().into_inner().volume.unwrap();
    let s2 = ctl.create_snapshot(snap_req("snap-2", &c1.volume_id)).await.unwrap().into_inner().snapshot.unwrap();
    let r2 = ctl.create_volume(from("pvc-r2", of_snap(&s2))).await.unwrap().into_inner().volume.unwrap();
    let c2 = ctl.create_volume(from("pvc-c2", of_vol(&r2))).await.unwrap().into_inner().volume.unwrap();
    let depths: Vec<usize> = [vol_spec(&c0), vol_spec(&r1), vol_spec(&c1), format!("rbd/{}", snap_image(&s2))]
        .iter()
        .chain([vol_spec(&r2), vol_spec(&c2)].iter())
        .map(|s| depth(&c, s))
        .collect();
    assert_eq!(depths, [1, 2, 3, 4, 0, 1], "c0 r1 c1 s2 r2 c2");
    for v in [&c0, &r1, &c1, &r2, &c2] {
        assert_eq!(image_hash(&c, dir.path(), &vol_spec(v)), hash, "{}", image_of(v));
    }
    assert_eq!(image_hash(&c, dir.path(), &snap_spec(&s2)), hash);
    assert!(d.log().contains("clone flattened"), "{}", d.log());

    // The source goes while its snapshots and clones live: they are
    // flattened first and keep its data.
    ctl.delete_volume(pb::DeleteVolumeRequest { volume_id: src.volume_id.clone(), secrets: secrets(&key) })
        .await
        .unwrap();
    assert!(!images(&c).contains(&image_of(&src)));
    assert_eq!(depth(&c, &vol_spec(&c0)), 0);
    assert_eq!(depth(&c, &s1_image), 0);
    for spec in [vol_spec(&c0), snap_spec(&s1), vol_spec(&r1), vol_spec(&c1)] {
        assert_eq!(image_hash(&c, dir.path(), &spec), hash, "{spec}");
    }
    // A snapshot goes while volumes restored from it live: intact.
    for s in [&s1, &s2] {
        ctl.delete_snapshot(pb::DeleteSnapshotRequest { snapshot_id: s.snapshot_id.clone(), secrets: secrets(&key) })
            .await
            .unwrap();
    }
    assert_eq!(depth(&c, &vol_spec(&r1)), 0);
    assert_eq!(depth(&c, &vol_spec(&c1)), 1);
    for v in [&r1, &c1, &r2, &c2] {
        assert_eq!(image_hash(&c, dir.path(), &vol_spec(v)), hash, "{}", image_of(v));
    }

    // Everything else goes (parents before children too): the pool ends
    // empty, journals and trashed snapshots included.
    flat_ctl
        .delete_snapshot(pb::DeleteSnapshotRequest { snapshot_id: sf.snapshot_id.clone(), secrets: secrets(&key) })
        .await
        .unwrap();
    for v in [&r1, &c1, &r2, &c2, &c0] {
        ctl.delete_volume(pb::DeleteVolumeRequest { volume_id: v.volume_id.clone(), secrets: secrets(&key) })
            .await
            .unwrap();
    }
    assert_eq!(images(&c), Vec::<String>::new());
    assert!(omap_keys(&c, VOL_DIR).is_empty(), "{:?}", omap_keys(&c, VOL_DIR));
    assert!(omap_keys(&c, "csi.snaps.default").is_empty());
}

/// Where the controller is killed during a CreateVolume that clones a volume.
#[derive(Clone, Copy, Debug)]
enum KillAt {
    /// As soon as the name's reservation is in the journal.
    Reserved,
    /// As soon as the clone's image exists (the flatten is running).
    ImageMade,
}

/// The watchers of an image (`rbd status`).
fn watchers(c: &Ceph, spec: &str) -> Vec<serde_json::Value> {
    let out = c.rbd(&["status", spec, "--format", "json"]).unwrap();
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    v["watchers"].as_array().cloned().unwrap_or_default()
}

/// Opens `spec` in a `rbd watch` process, waits until its watch is
/// registered, and SIGKILLs it: the watch stays at the OSD, as a killed
/// controller's does, until the watch timeout.
fn leave_a_stale_watch(c: &Ceph, spec: &str) {
    let before = watchers(c, spec).len();
    let conf = c.conf();
    let mut child = Command::new("rbd")
        .args(["-c", conf.to_str().unwrap(), "--admin-socket", "", "watch", spec])
        // It watches until a line arrives on its stdin: a pipe kept open.
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rbd watch");
    let deadline = Instant::now() + Duration::from_secs(20);
    while watchers(c, spec).len() <= before {
        assert!(Instant::now() < deadline, "rbd watch never registered a watch on {spec}");
        if child.try_wait().unwrap().is_some() {
            let out = child.wait_with_output().unwrap();
            panic!("rbd watch {spec} exited: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(!watchers(c, spec).is_empty(), "the killed client's watch is gone at once: the test proves nothing");
}

/// The controller of the kill test's CreateVolume rounds: every clone is
/// flattened (`--max-clone-depth=0`), so the kill lands in a flatten.
const FLATTEN_ALL: &[&str] = &["--max-clone-depth=0"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_controller_killed_in_createvolume_leaves_exactly_one_image_after_the_retry() {
    let c = cluster();
    let key = c.admin_key().to_string();
    let config = c.cluster_config_json(CLUSTER);
    let dir = scratch("csi-rbd-kill");
    // A source big enough that the clone's flatten takes a while, so the
    // kill lands between the reservation and the end of CreateVolume.
    let d = driver(&config, &[]);
    let mut ctl = client(&d).await;
    let src = ctl.create_volume(create_req("pvc-src", 64 * MIB, &key)).await.unwrap().into_inner().volume.unwrap();
    let src_spec = format!("rbd/{}", image_of(&src));
    write_random(&c, dir.path(), &src_spec, 48 << 20, "k");
    let src_hash = image_hash(&c, dir.path(), &src_spec);
    drop(ctl);
    drop(d);
    let mut want = vec![image_of(&src)];
    for (round, at) in [KillAt::Reserved, KillAt::ImageMade].into_iter().enumerate() {
        let name = format!("pvc-killed-{round}");
        let mut req = create_req(&name, 64 * MIB, &key);
        req.volume_content_source = Some(pb::VolumeContentSource {
            r#type: Some(vcs::Type::Volume(vcs::VolumeSource { volume_id: src.volume_id.clone() })),
        });
        let d = driver(&config, FLATTEN_ALL);
        let ctl = client(&d).await;
        let before = images(&c).len();
        let pending = {
            let mut ctl = ctl.clone();
            let req = req.clone();
            tokio::spawn(async move { ctl.create_volume(req).await })
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let reached = match at {
                KillAt::Reserved => omap_keys(&c, VOL_DIR).contains(&format!("csi.volume.{name}")),
                KillAt::ImageMade => images(&c).len() > before,
            };
            if reached {
                break;
            }
            assert!(Instant::now() < deadline && !pending.is_finished(), "{at:?} never seen before the call ended");
            std::thread::sleep(Duration::from_millis(2));
        }
        let pid = nix::unistd::Pid::from_raw(d.pid() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL).unwrap();
        let r = pending.await.unwrap();
        assert!(r.is_err(), "{at:?}: the call was cut by the kill: {r:?}");
        eprintln!("killed at {at:?}: images then {:?}", images(&c));
        drop(ctl);
        drop(d);
        if matches!(at, KillAt::ImageMade) {
            // Whether the killed controller's own watch on the clone is still
            // up depends on where the kill landed; a client killed while it
            // watches the unfinished clone makes that case certain: the OSD
            // keeps a dead client's watch for its watch timeout (30 s).
            let unfinished: Vec<String> = images(&c).into_iter().filter(|i| !want.contains(i)).collect();
            assert_eq!(unfinished.len(), 1, "{unfinished:?}");
            leave_a_stale_watch(&c, &format!("rbd/{}", unfinished[0]));
        }

        // A new controller, the retry: exactly one image for the name, the
        // source's contents, and no temporary snapshot left on the source.
        let d = driver(&config, FLATTEN_ALL);
        let mut ctl = client(&d).await;
        let v = ctl.create_volume(req.clone()).await.unwrap().into_inner().volume.unwrap();
        let again = ctl.create_volume(req).await.unwrap().into_inner().volume.unwrap();
        assert_eq!(v.volume_id, again.volume_id);
        want.push(image_of(&v));
        want.sort();
        assert_eq!(images(&c), want, "{at:?}: one image per name, no orphan");
        assert_eq!(image_hash(&c, dir.path(), &format!("rbd/{}", image_of(&v))), src_hash, "{at:?}");
        let snaps: serde_json::Value =
            serde_json::from_str(&c.rbd(&["snap", "ls", &src_spec, "--format", "json"]).unwrap()).unwrap();
        assert_eq!(snaps.as_array().unwrap().len(), 0, "{at:?}: {snaps}");
        assert_eq!(omap_keys(&c, VOL_DIR).len(), want.len());
        if matches!(at, KillAt::ImageMade) {
            assert!(d.log().contains("discarding the unfinished clone"), "{}", d.log());
            assert!(d.log().contains("waiting for the interrupted CreateVolume's watch to lapse"), "{}", d.log());
        }
    }

    // A copy-on-write clone (default depth limit), then DeleteVolume of its
    // source killed while it flattens the clone: the retry finishes the
    // flatten and the delete, and the clone keeps the source's contents.
    let d = driver(&config, &[]);
    let mut ctl = client(&d).await;
    let mut req = create_req("pvc-cow", 64 * MIB, &key);
    req.volume_content_source = Some(pb::VolumeContentSource {
        r#type: Some(vcs::Type::Volume(vcs::VolumeSource { volume_id: src.volume_id.clone() })),
    });
    let cow = ctl.create_volume(req).await.unwrap().into_inner().volume.unwrap();
    let cow_spec = format!("rbd/{}", image_of(&cow));
    assert_eq!(depth(&c, &cow_spec), 1);
    let pending = {
        let mut ctl = ctl.clone();
        let id = src.volume_id.clone();
        let key = key.clone();
        tokio::spawn(async move {
            ctl.delete_volume(pb::DeleteVolumeRequest { volume_id: id, secrets: secrets(&key) }).await
        })
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !d.log().contains("flattening a child before the delete") {
        assert!(Instant::now() < deadline && !pending.is_finished(), "the flatten was never seen: {}", d.log());
        std::thread::sleep(Duration::from_millis(2));
    }
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(d.pid() as i32), nix::sys::signal::Signal::SIGKILL).unwrap();
    let r = pending.await.unwrap();
    assert!(r.is_err(), "the delete was cut by the kill: {r:?}");
    eprintln!("killed in DeleteVolume's flatten: depth of the clone then {}", depth(&c, &cow_spec));
    drop(ctl);
    drop(d);
    let d = driver(&config, &[]);
    let mut ctl = client(&d).await;
    for _ in 0..2 {
        ctl.delete_volume(pb::DeleteVolumeRequest { volume_id: src.volume_id.clone(), secrets: secrets(&key) })
            .await
            .unwrap();
    }
    want.retain(|i| *i != image_of(&src));
    want.push(image_of(&cow));
    want.sort();
    assert_eq!(images(&c), want, "the source is gone, every clone stays");
    assert_eq!(depth(&c, &cow_spec), 0, "flattened");
    assert_eq!(image_hash(&c, dir.path(), &cow_spec), src_hash);
    assert!(!omap_keys(&c, VOL_DIR).contains(&"csi.volume.pvc-src".to_string()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_key_and_an_unreachable_monitor_fail_fast_with_clear_codes() {
    let c = cluster();
    let key = c.admin_key().to_string();
    // A second cluster ID whose monitor address answers nothing (a host of
    // the test bridge with no daemon).
    let dead = format!("{}:3300", c.host(250));
    let config = serde_json::json!([
        {"clusterID": CLUSTER, "monitors": c.monitors()},
        {"clusterID": "dead", "monitors": [dead]},
    ])
    .to_string();
    let d = driver(&config, &["--ceph-timeout=3"]);
    let mut ctl = client(&d).await;

    // A wrong key (valid base64, another secret): UNAUTHENTICATED, quickly.
    let wrong = "AQBtZXh3AAAAABAAAAAAAAAAAAAAAAAAAAAAAA==";
    let started = Instant::now();
    let e = ctl.create_volume(create_req("pvc-w", MIB, wrong)).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.code(), Code::Unauthenticated, "{e:?}");
    assert!(e.message().contains(CLUSTER), "{e:?}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    // The right key right after: works (the wrong one was not cached).
    ctl.create_volume(create_req("pvc-w", MIB, &key)).await.unwrap();

    // An unreachable monitor: UNAVAILABLE within --ceph-timeout (3 s) plus slack.
    let mut req = create_req("pvc-dead", MIB, &key);
    req.parameters.insert("clusterID".into(), "dead".into());
    let started = Instant::now();
    let e = ctl.create_volume(req).await.unwrap_err();
    let took = started.elapsed();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains(&dead), "{e:?}");
    assert!(took < Duration::from_secs(8), "{took:?}");
    eprintln!("unreachable monitor answered in {took:?}");

    // The controller's own client blocklisted (by an admin, or a fence
    // aimed at the wrong address): that call fails UNAVAILABLE, the
    // connection is dropped, and the retry reconnects with a new address.
    let clients = connected_clients(&d.log());
    assert_eq!(clients.len(), 1, "{clients:?}");
    c.ceph(&["osd", "blocklist", "add", &clients[0]]).unwrap();
    let e = ctl.create_volume(create_req("pvc-bl", MIB, &key)).await.unwrap_err();
    assert_eq!(e.code(), Code::Unavailable, "{e:?}");
    assert!(e.message().contains("blocklisted"), "{e:?}");
    ctl.create_volume(create_req("pvc-bl", MIB, &key)).await.unwrap();
    let clients = connected_clients(&d.log());
    assert_eq!(clients.len(), 2, "{clients:?}");
    assert_ne!(clients[0], clients[1]);

    // A hung cluster (daemons stopped) after connecting: a bounded error, not a hang.
    c.freeze();
    let started = Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(30), ctl.create_volume(create_req("pvc-frozen", MIB, &key))).await;
    c.thaw();
    let took = started.elapsed();
    let e = r.expect("CreateVolume on a hung cluster returns within 30 s").unwrap_err();
    assert!(matches!(e.code(), Code::Unavailable | Code::DeadlineExceeded), "{e:?}");
    eprintln!("hung cluster answered {:?} in {took:?}", e.code());

    let log = d.log();
    assert!(!log.contains(&key) && !log.contains(wrong), "a key is in the driver log");
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cached_connection_saves_the_connect_on_every_call() {
    let c = cluster();
    let key = c.admin_key().to_string();
    let d = driver(&c.cluster_config_json(CLUSTER), &[]);
    let mut ctl = client(&d).await;
    let v = ctl.create_volume(create_req("pvc-m", MIB, &key)).await.unwrap().into_inner().volume.unwrap();
    let validate = |key: &str, user: &str| pb::ValidateVolumeCapabilitiesRequest {
        volume_id: v.volume_id.clone(),
        volume_capabilities: vec![mount_cap()],
        secrets: HashMap::from([("userID".to_string(), user.to_string()), ("userKey".to_string(), key.to_string())]),
        ..Default::default()
    };
    // The same secrets each time: one connection, reused.
    let mut cached = Vec::new();
    for _ in 0..12 {
        let t = Instant::now();
        let r = ctl.validate_volume_capabilities(validate(&key, "admin")).await.unwrap().into_inner();
        cached.push(t.elapsed());
        assert!(r.confirmed.is_some());
    }
    // A user the controller has not seen each time: a connection each time.
    let mut fresh = Vec::new();
    for i in 0..12 {
        let user = format!("csi-{i}");
        let k = c.add_user(&user, &["mon", "profile rbd", "osd", "profile rbd"]).unwrap();
        let t = Instant::now();
        let r = ctl.validate_volume_capabilities(validate(&k, &user)).await.unwrap().into_inner();
        fresh.push(t.elapsed());
        assert!(r.confirmed.is_some());
    }
    let (mc, mf) = (median(cached), median(fresh));
    eprintln!(
        "ValidateVolumeCapabilities median: cached connection {mc:?}, new connection {mf:?} ({:.1}x)",
        mf.as_secs_f64() / mc.as_secs_f64()
    );
    assert!(mc < mf, "cached {mc:?} vs new {mf:?}");
}

fn publish_req(
    volume_id: &str,
    node: &str,
    mode: vc::access_mode::Mode,
    key: &str,
) -> pb::ControllerPublishVolumeRequest {
    pb::ControllerPublishVolumeRequest {
        volume_id: volume_id.to_string(),
        node_id: node.to_string(),
        volume_capability: Some(pb::VolumeCapability {
            access_type: Some(vc::AccessType::Mount(vc::MountVolume::default())),
            access_mode: Some(vc::AccessMode { mode: mode as i32 }),
        }),
        readonly: false,
        secrets: secrets(key),
        volume_context: HashMap::new(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_gives_one_node_read_write_and_unpublish_frees_it() {
    use vc::access_mode::Mode;
    let c = cluster();
    let key = c.admin_key().to_string();
    let d = driver(&c.cluster_config_json(CLUSTER), &[]);
    let mut ctl = client(&d).await;
    let v = ctl.create_volume(create_req("pvc-pub", MIB, &key)).await.unwrap().into_inner().volume.unwrap();
    let unpublish = |node: &str| pb::ControllerUnpublishVolumeRequest {
        volume_id: v.volume_id.clone(),
        node_id: node.to_string(),
        secrets: secrets(&key),
    };
    let published = |ctl: &mut ControllerClient<Channel>| {
        let mut ctl = ctl.clone();
        let id = v.volume_id.clone();
        async move {
            let r = ctl.controller_get_volume(pb::ControllerGetVolumeRequest { volume_id: id }).await.unwrap();
            r.into_inner().status.unwrap().published_node_ids
        }
    };

    ctl.controller_publish_volume(publish_req(&v.volume_id, "node-a", Mode::SingleNodeWriter, &key)).await.unwrap();
    // Again for the same node: fine (idempotent).
    ctl.controller_publish_volume(publish_req(&v.volume_id, "node-a", Mode::SingleNodeWriter, &key)).await.unwrap();
    // Another node, read-write or read-only: FAILED_PRECONDITION naming node-a.
    for mode in [Mode::SingleNodeWriter, Mode::MultiNodeReaderOnly] {
        let e = ctl.controller_publish_volume(publish_req(&v.volume_id, "node-b", mode, &key)).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{mode:?}: {e:?}");
        assert!(e.message().contains("node-a"), "{e:?}");
    }
    // The same node, now read-only: incompatible with its read-write publication.
    let mut ro = publish_req(&v.volume_id, "node-a", Mode::SingleNodeWriter, &key);
    ro.readonly = true;
    assert_eq!(ctl.controller_publish_volume(ro).await.unwrap_err().code(), Code::AlreadyExists);
    assert_eq!(published(&mut ctl).await, ["node-a"]);
    let listed = ctl.list_volumes(pb::ListVolumesRequest::default()).await.unwrap().into_inner();
    let entry = listed.entries.iter().find(|e| e.volume.as_ref().unwrap().volume_id == v.volume_id).unwrap();
    assert_eq!(entry.status.as_ref().unwrap().published_node_ids, ["node-a"]);
    // A published volume is not deleted under its node.
    let e = ctl
        .delete_volume(pb::DeleteVolumeRequest { volume_id: v.volume_id.clone(), secrets: secrets(&key) })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("node-a"), "{e:?}");

    // Unpublished from node-a (twice: idempotent), node-b gets it.
    ctl.controller_unpublish_volume(unpublish("node-a")).await.unwrap();
    ctl.controller_unpublish_volume(unpublish("node-a")).await.unwrap();
    assert!(published(&mut ctl).await.is_empty());
    ctl.controller_publish_volume(publish_req(&v.volume_id, "node-b", Mode::SingleNodeWriter, &key)).await.unwrap();
    assert_eq!(published(&mut ctl).await, ["node-b"]);
    // Unpublish without a node ID: from every node.
    ctl.controller_unpublish_volume(unpublish("")).await.unwrap();
    assert!(published(&mut ctl).await.is_empty());
    // Read-only for many nodes once nobody writes.
    ctl.controller_publish_volume(publish_req(&v.volume_id, "node-c", Mode::MultiNodeReaderOnly, &key)).await.unwrap();
    ctl.controller_publish_volume(publish_req(&v.volume_id, "node-d", Mode::MultiNodeReaderOnly, &key)).await.unwrap();
    // A volume that does not exist: NOT_FOUND to publish, OK to unpublish.
    let missing = v.volume_id.replace(&v.volume_id[v.volume_id.len() - 36..], "00000000-0000-4000-8000-000000000000");
    let e =
        ctl.controller_publish_volume(publish_req(&missing, "node-a", Mode::SingleNodeWriter, &key)).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound, "{e:?}");
    ctl.controller_unpublish_volume(pb::ControllerUnpublishVolumeRequest {
        volume_id: missing,
        node_id: "node-a".into(),
        secrets: secrets(&key),
    })
    .await
    .unwrap();
    // Deleted with its attach object.
    ctl.delete_volume(pb::DeleteVolumeRequest { volume_id: v.volume_id.clone(), secrets: secrets(&key) })
        .await
        .unwrap();
    let objects = String::from_utf8_lossy(&c.rados(&["-p", "rbd", "ls"]).unwrap()).into_owned();
    assert!(!objects.contains("csi.rbd.attach."), "{objects}");
}
