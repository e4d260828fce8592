//! Snapshots, clone v2, flatten, children and image metadata on a real
//! cluster; contents compared through `rbd export`.

mod common;

use std::path::Path;

use ceph::{Error, ImageOptions, ParentSpec};

const MIB: u64 = 1 << 20;

fn features() -> ImageOptions {
    ImageOptions {
        features: ["layering", "exclusive-lock", "object-map", "fast-diff", "deep-flatten"].map(String::from).to_vec(),
        ..Default::default()
    }
}

/// `rbd export SPEC -` → bytes.
fn export(c: &csi_suite::ceph::Ceph, spec: &str) -> Vec<u8> {
    let f = c.dir().join(format!("export-{}", spec.replace(['/', '@'], "_")));
    let p = f.to_string_lossy().into_owned();
    c.rbd(&["export", spec, &p]).unwrap();
    let b = std::fs::read(&f).unwrap();
    std::fs::remove_file(&f).unwrap();
    b
}

fn import(c: &csi_suite::ceph::Ceph, data: &[u8], spec: &str) {
    let f = c.dir().join("import");
    std::fs::write(&f, data).unwrap();
    let p = Path::new(&f).to_string_lossy().into_owned();
    c.rbd(&["import", "--image-feature", "layering,exclusive-lock,object-map,fast-diff,deep-flatten", &p, spec])
        .unwrap();
}

#[test]
fn snapshots_clones_flatten_and_metadata() {
    let c = common::cluster();
    let r = common::connect(&c);
    c.create_pool("clones").unwrap();

    // A parent with known contents.
    let data: Vec<u8> = (0..8 * MIB as usize).map(|i| (i * 7 % 251) as u8).collect();
    import(&c, &data, "rbd/parent");
    assert!(r.snap_list("rbd", "parent").unwrap().is_empty());

    let before = std::time::SystemTime::now() - std::time::Duration::from_secs(5);
    r.snap_create("rbd", "parent", "s1").unwrap();
    let e = r.snap_create("rbd", "parent", "s1").unwrap_err();
    assert!(matches!(e, Error::Exists(ref m) if m.contains("rbd/parent@s1")), "{e:?}");
    let snaps = r.snap_list("rbd", "parent").unwrap();
    assert_eq!(snaps.len(), 1);
    assert_eq!((snaps[0].name.as_str(), snaps[0].size), ("s1", 8 * MIB));
    assert!(snaps[0].created > before, "{:?}", snaps[0].created);
    let cli = common::rbd_json(&c, &["snap", "ls", "rbd/parent"]);
    assert_eq!(cli[0]["id"], snaps[0].id);
    assert_eq!(r.image_info("rbd", "parent").unwrap().snapshot_count, 1);
    let e = r.remove_image("rbd", "parent").unwrap_err();
    assert!(matches!(e, Error::Busy(ref m) if m.contains("rbd/parent")), "with snapshots: {e:?}");

    // Clone v2 into another pool, no protect.
    r.clone_image("rbd", "parent", "s1", "clones", "child", &features()).unwrap();
    let info = r.image_info("clones", "child").unwrap();
    assert_eq!(info.parent, Some(ParentSpec { pool: "rbd".into(), image: "parent".into(), snap: "s1".into() }));
    assert_eq!(info.size, 8 * MIB);
    assert_eq!(r.children("rbd", "parent", "s1").unwrap(), [("clones".to_string(), "child".to_string())]);
    assert_eq!(export(&c, "clones/child"), data, "the clone reads the parent's data");
    let e = r.clone_image("rbd", "parent", "nope", "clones", "child2", &features()).unwrap_err();
    assert!(matches!(e, Error::NotFound(ref m) if m.contains("rbd/parent@nope")), "{e:?}");
    assert!(matches!(r.children("rbd", "parent", "nope"), Err(Error::NotFound(_))));
    // A clone of a clone: the depth ceph-csi flattens past.
    r.snap_create("clones", "child", "c1").unwrap();
    r.clone_image("clones", "child", "c1", "clones", "grandchild", &features()).unwrap();
    assert_eq!(r.image_info("clones", "grandchild").unwrap().parent.unwrap().image, "child");

    // Flatten: the data stays, the link goes.
    r.flatten_image("clones", "grandchild").unwrap();
    assert_eq!(r.image_info("clones", "grandchild").unwrap().parent, None);
    assert!(r.children("clones", "child", "c1").unwrap().is_empty());
    assert_eq!(export(&c, "clones/grandchild"), data);

    // Removing a snapshot that still has a clone v2 child moves it to the
    // trash namespace; the clone keeps working and lists no more.
    r.snap_remove("rbd", "parent", "s1").unwrap();
    assert!(r.snap_list("rbd", "parent").unwrap().is_empty());
    assert_eq!(export(&c, "clones/child"), data);
    let e = r.snap_remove("rbd", "parent", "s1").unwrap_err();
    assert!(matches!(e, Error::NotFound(ref m) if m.contains("rbd/parent@s1")), "{e:?}");

    // Image data through the crate: the same bytes as rbd export, from the
    // image and from a snapshot, and writes that land.
    assert_eq!(r.read_image("clones", "child", None, 0, data.len()).unwrap(), data);
    assert_eq!(
        r.read_image("clones", "child", None, 8 * MIB - 10, 100).unwrap(),
        &data[data.len() - 10..],
        "short at the end"
    );
    r.write_image("clones", "grandchild", MIB, b"overwritten").unwrap();
    let mut want = data.clone();
    want[MIB as usize..MIB as usize + 11].copy_from_slice(b"overwritten");
    assert_eq!(export(&c, "clones/grandchild"), want);
    assert_eq!(r.read_image("clones", "child", Some("c1"), 0, data.len()).unwrap(), data, "snapshot read");
    assert!(matches!(r.read_image("clones", "child", Some("nope"), 0, 1), Err(Error::NotFound(_))));
    assert!(r.write_image("clones", "grandchild", 8 * MIB, b"past the end").is_err());

    // Metadata.
    assert_eq!(r.metadata_get("clones", "child", "csi.volname").unwrap(), None);
    r.metadata_set("clones", "child", "csi.volname", "pvc-1234").unwrap();
    assert_eq!(r.metadata_get("clones", "child", "csi.volname").unwrap().as_deref(), Some("pvc-1234"));
    assert_eq!(c.rbd(&["image-meta", "get", "clones/child", "csi.volname"]).unwrap(), "pvc-1234");
    let long = "x".repeat(5000);
    r.metadata_set("clones", "child", "long", &long).unwrap();
    assert_eq!(r.metadata_get("clones", "child", "long").unwrap(), Some(long), "buffer grows");
    assert!(matches!(r.metadata_get("clones", "nope", "k"), Err(Error::NotFound(_))));
}

#[test]
fn pool_stats_match_the_monitor() {
    let mut c = common::cluster();
    let r = common::connect(&c);
    // Without a manager the monitor's df has no pools.
    let e = r.pool_stats("rbd").unwrap_err();
    assert!(matches!(e, Error::Other { errno: libc::ENODATA, ref op } if op.contains("ceph-mgr")), "{e:?}");
    assert!(matches!(r.pool_stats("nope"), Err(Error::NotFound(m)) if m.contains("nope")));
    let t = std::time::Instant::now();
    c.start_mgr().unwrap();
    eprintln!("mgr up in {:.2?}", t.elapsed());
    let s = r.pool_stats("rbd").unwrap();
    let df = c.ceph_json(&["df"]).unwrap();
    let p = df["pools"].as_array().unwrap().iter().find(|p| p["name"] == "rbd").unwrap();
    let cli_avail = p["stats"]["max_avail"].as_u64().unwrap();
    assert!(s.max_avail > 0 && s.max_avail.abs_diff(cli_avail) <= cli_avail / 10, "{s:?} vs {p}");
    assert!(s.max_avail < 4 << 30, "memstore is 2 GiB: {s:?}");
    assert!(matches!(r.pool_stats("nope"), Err(Error::NotFound(m)) if m.contains("nope")));
}
