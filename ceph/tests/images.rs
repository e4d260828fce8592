//! Pools and images on a real cluster, checked against the `rbd` CLI.

mod common;

use ceph::{Error, ImageOptions};

const MIB: u64 = 1 << 20;

fn csi_features() -> ImageOptions {
    ImageOptions {
        features: ["layering", "exclusive-lock", "object-map", "fast-diff", "deep-flatten"].map(String::from).to_vec(),
        data_pool: None,
        order: None,
    }
}

#[test]
fn pools_and_images_create_inspect_resize_list_remove() {
    let c = common::cluster();
    let r = common::connect(&c);

    let id = r.pool_id("rbd").unwrap();
    let osd_pools = c.ceph_json(&["osd", "pool", "ls", "detail"]).unwrap();
    let cli_id = osd_pools.as_array().unwrap().iter().find(|p| p["pool_name"] == "rbd").unwrap()["pool_id"].as_i64();
    assert_eq!(Some(id), cli_id);
    assert_eq!(r.pool_name(id).unwrap(), "rbd");
    assert!(matches!(r.pool_id("nope"), Err(Error::NotFound(m)) if m.contains("nope")));
    assert!(matches!(r.pool_name(9999), Err(Error::NotFound(m)) if m.contains("9999")));
    // A pool made after connecting is found (librados refreshes its map).
    c.create_pool("later").unwrap();
    assert!(r.pool_id("later").unwrap() > id);

    r.create_image("rbd", "csi-vol-1", 64 * MIB, &csi_features()).unwrap();
    let e = r.create_image("rbd", "csi-vol-1", 64 * MIB, &csi_features()).unwrap_err();
    assert!(matches!(e, Error::Exists(ref m) if m.contains("rbd/csi-vol-1")), "{e:?}");
    let cli = common::rbd_json(&c, &["info", "rbd/csi-vol-1"]);
    assert_eq!(cli["size"], 64 * MIB);
    assert_eq!(cli["format"], 2);
    let info = r.image_info("rbd", "csi-vol-1").unwrap();
    assert_eq!(info.name, "csi-vol-1");
    assert_eq!(info.size, 64 * MIB);
    assert_eq!(Some(info.id.as_str()), cli["id"].as_str());
    assert_eq!(info.features, csi_features().features);
    let cli_features: Vec<String> =
        cli["features"].as_array().unwrap().iter().map(|f| f.as_str().unwrap().to_string()).collect();
    assert_eq!(info.features, cli_features);
    assert_eq!(info.parent, None);
    assert_eq!(info.snapshot_count, 0);

    // Defaults, an explicit order, and a separate data pool.
    r.create_image("rbd", "plain", MIB, &ImageOptions::default()).unwrap();
    assert!(r.image_info("rbd", "plain").unwrap().features.contains(&"layering".to_string()));
    let o = ImageOptions { features: vec!["layering".into()], data_pool: Some("later".into()), order: Some(23) };
    r.create_image("rbd", "with-data-pool", 16 * MIB, &o).unwrap();
    let cli = common::rbd_json(&c, &["info", "rbd/with-data-pool"]);
    assert_eq!(cli["order"], 23);
    assert_eq!(cli["data_pool"], "later");
    let bad = ImageOptions { features: vec!["warp-drive".into()], ..Default::default() };
    assert!(
        matches!(r.create_image("rbd", "bad", MIB, &bad), Err(Error::InvalidArgument(m)) if m.contains("warp-drive"))
    );
    assert!(matches!(
        r.create_image("rbd", "bad\0name", MIB, &ImageOptions::default()),
        Err(Error::InvalidArgument(_))
    ));

    let mut names = r.list_images("rbd").unwrap();
    names.sort();
    assert_eq!(names, ["csi-vol-1", "plain", "with-data-pool"]);
    assert!(r.list_images("later").unwrap().is_empty(), "data objects are not images");

    r.resize_image("rbd", "csi-vol-1", 128 * MIB).unwrap();
    assert_eq!(common::rbd_json(&c, &["info", "rbd/csi-vol-1"])["size"], 128 * MIB);
    r.resize_image("rbd", "csi-vol-1", 128 * MIB).unwrap();
    let e = r.resize_image("rbd", "csi-vol-1", 64 * MIB).unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(ref m) if m.contains("rbd/csi-vol-1")), "shrink: {e:?}");
    assert_eq!(r.image_info("rbd", "csi-vol-1").unwrap().size, 128 * MIB);

    for n in ["csi-vol-1", "plain", "with-data-pool"] {
        r.remove_image("rbd", n).unwrap();
    }
    let e = r.remove_image("rbd", "csi-vol-1").unwrap_err();
    assert!(matches!(e, Error::NotFound(ref m) if m.contains("rbd/csi-vol-1")), "{e:?}");
    assert!(matches!(r.image_info("rbd", "csi-vol-1"), Err(Error::NotFound(_))));
    assert!(r.list_images("rbd").unwrap().is_empty());
    assert!(c.rbd(&["ls", "rbd"]).unwrap().is_empty());
}

/// Many threads share one connection.
#[test]
fn one_connection_serves_many_threads() {
    let c = common::cluster();
    let r = common::connect(&c);
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let r = r.clone();
            std::thread::spawn(move || {
                for i in 0..5 {
                    let name = format!("t{t}-{i}");
                    r.create_image("rbd", &name, MIB, &csi_features()).unwrap();
                    assert_eq!(r.image_info("rbd", &name).unwrap().size, MIB);
                    r.omap_set("rbd", &format!("obj-{t}"), &[(&name, b"1")], &ceph::Guard::None).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(r.list_images("rbd").unwrap().len(), 40);
    for t in 0..8 {
        assert_eq!(r.omap_list("rbd", &format!("obj-{t}"), "", 100).unwrap().len(), 5);
    }
}
