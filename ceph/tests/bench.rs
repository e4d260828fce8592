//! Speed of the bindings against the `rbd` CLI doing the same on the same
//! cluster: connect, and a create + remove image pair (median of 20).
//! A benchmark that prints (`--nocapture`), not an assertion on speed.

mod common;

use std::time::{Duration, Instant};

const RUNS: usize = 20;
const MIB: u64 = 1 << 20;

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

#[test]
fn bench_connect_and_create_remove_against_the_rbd_cli() {
    let c = common::cluster();
    let spec = common::spec(&c, Duration::from_secs(10));
    let opts = ceph::ImageOptions {
        features: ["layering", "exclusive-lock", "object-map", "fast-diff", "deep-flatten"].map(String::from).to_vec(),
        ..Default::default()
    };
    let features = opts.features.join(",");

    let connect: Vec<Duration> = (0..RUNS)
        .map(|_| {
            let t = Instant::now();
            let r = ceph::connect(&spec).unwrap();
            let d = t.elapsed();
            drop(r);
            d
        })
        .collect();

    let r = ceph::connect(&spec).unwrap();
    let pair: Vec<Duration> = (0..RUNS)
        .map(|i| {
            let name = format!("lib-{i}");
            let t = Instant::now();
            r.create_image("rbd", &name, 64 * MIB, &opts).unwrap();
            r.remove_image("rbd", &name).unwrap();
            t.elapsed()
        })
        .collect();

    // What a fresh process pays: connect, create, remove.
    let fresh: Vec<Duration> = (0..RUNS)
        .map(|i| {
            let name = format!("fresh-{i}");
            let t = Instant::now();
            let r = ceph::connect(&spec).unwrap();
            r.create_image("rbd", &name, 64 * MIB, &opts).unwrap();
            r.remove_image("rbd", &name).unwrap();
            drop(r);
            t.elapsed()
        })
        .collect();

    let cli: Vec<Duration> = (0..RUNS)
        .map(|i| {
            let spec = format!("rbd/cli-{i}");
            let t = Instant::now();
            c.rbd(&["create", "--size", "64M", "--image-feature", &features, &spec]).unwrap();
            c.rbd(&["rm", "--no-progress", &spec]).unwrap();
            t.elapsed()
        })
        .collect();

    assert!(r.list_images("rbd").unwrap().is_empty(), "every image was removed");
    let (mc, mp, mf, ml) = (median(connect), median(pair), median(fresh), median(cli));
    eprintln!("ceph bench (median of {RUNS}):");
    eprintln!("  connect                                  {mc:>10.2?}");
    eprintln!("  create+remove, shared connection         {mp:>10.2?}");
    eprintln!("  connect+create+remove (fresh connection) {mf:>10.2?}");
    eprintln!("  rbd create + rbd rm (two CLI processes)  {ml:>10.2?}");
    eprintln!(
        "  CLI / shared connection: {:.1}x, CLI / fresh connection: {:.1}x",
        ml.as_secs_f64() / mp.as_secs_f64(),
        ml.as_secs_f64() / mf.as_secs_f64()
    );
}
