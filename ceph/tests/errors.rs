//! Failures a user sees: a wrong key, an unreachable or hung cluster.
//! Each must come back as the right variant, naming what failed, within
//! the connection's timeout plus a small margin.

mod common;

use std::time::{Duration, Instant};

use ceph::Error;

const TIMEOUT: Duration = Duration::from_secs(3);
/// The bound asserted for anything given TIMEOUT.
const BOUND: Duration = Duration::from_secs(8);

fn timed<T>(f: impl FnOnce() -> T) -> (T, Duration) {
    let t = Instant::now();
    let r = f();
    (r, t.elapsed())
}

#[test]
fn a_wrong_key_or_unknown_user_is_permission_denied() {
    let c = common::cluster();
    let other_key = c.add_user("other", &["mon", "profile rbd", "osd", "profile rbd"]).unwrap();
    let mut s = common::spec(&c, TIMEOUT);
    s.key = other_key.clone();
    let (r, took) = timed(|| ceph::connect(&s));
    let e = r.unwrap_err();
    assert!(matches!(e, Error::PermissionDenied(ref m) if m.contains("client.admin")), "{e:?}");
    assert!(!e.to_string().contains(&other_key), "the key is never in a message: {e}");
    assert!(took < BOUND, "wrong key took {took:?}");
    eprintln!("wrong key: {e} ({took:.2?})");

    let mut s = common::spec(&c, TIMEOUT);
    s.user = "nobody".into();
    let (r, took) = timed(|| ceph::connect(&s));
    let e = r.unwrap_err();
    assert!(matches!(e, Error::PermissionDenied(ref m) if m.contains("client.nobody")), "{e:?}");
    assert!(took < BOUND, "unknown user took {took:?}");

    // A user whose caps do not cover a pool: PermissionDenied on use.
    c.ceph(&["osd", "pool", "create", "other-pool", "8"]).unwrap();
    let mut s = common::spec(&c, TIMEOUT);
    s.user = "other".into();
    s.key = other_key;
    let r = ceph::connect(&s).unwrap();
    let limited = c.add_user("limited", &["mon", "profile rbd", "osd", "profile rbd pool=rbd"]).unwrap();
    r.create_image("rbd", "ok", 1 << 20, &Default::default()).unwrap();
    s.user = "limited".into();
    s.key = limited;
    let r = ceph::connect(&s).unwrap();
    let e = r.omap_set("other-pool", "x", &[("k", b"v")], &ceph::Guard::None).unwrap_err();
    assert!(matches!(e, Error::PermissionDenied(ref m) if m.contains("other-pool/x")), "{e:?}");

    // Bad spec input.
    let mut s = common::spec(&c, TIMEOUT);
    s.user = "client.admin".into();
    assert!(matches!(ceph::connect(&s), Err(Error::InvalidArgument(_))));
    s.user = "admin".into();
    s.monitors.clear();
    assert!(matches!(ceph::connect(&s), Err(Error::InvalidArgument(_))));
}

#[test]
fn no_monitor_or_a_hung_cluster_is_a_timeout_within_the_bound() {
    let c = common::cluster();

    // Nothing listens on this port of the monitor's host (refused), and
    // nothing at all answers at .200 of the bridge (dropped).
    for mon in [format!("{}:3301", c.host(1)), format!("{}:3300", c.host(200))] {
        let mut s = common::spec(&c, TIMEOUT);
        s.monitors = vec![mon.clone()];
        let (r, took) = timed(|| ceph::connect(&s));
        let e = r.unwrap_err();
        assert!(matches!(e, Error::Timeout(ref m) if m.contains(&mon)), "{mon}: {e:?}");
        assert!(took >= TIMEOUT - Duration::from_millis(500) && took < BOUND, "{mon}: took {took:?}");
        eprintln!("no monitor at {mon}: {e} ({took:.2?})");
    }

    // Connected, then the cluster hangs: every kind of call times out.
    let r = ceph::connect(&common::spec(&c, TIMEOUT)).unwrap();
    r.create_image("rbd", "img", 1 << 20, &Default::default()).unwrap();
    c.freeze();
    type Call<'a> = Box<dyn Fn() -> Result<(), Error> + 'a>;
    let checks: Vec<(&str, Call<'_>)> = vec![
        ("omap_get", Box::new(|| r.omap_get("rbd", "obj", &["k"]).map(drop))),
        ("omap_set", Box::new(|| r.omap_set("rbd", "obj", &[("k", b"v")], &ceph::Guard::None))),
        ("image_info", Box::new(|| r.image_info("rbd", "img").map(drop))),
        ("pool_stats", Box::new(|| r.pool_stats("rbd").map(drop))),
    ];
    for (what, f) in &checks {
        let (res, took) = timed(f);
        let e = res.unwrap_err();
        assert!(matches!(e, Error::Timeout(_)), "{what} on a frozen cluster: {e:?}");
        assert!(took < BOUND, "{what}: took {took:?}");
        eprintln!("frozen cluster, {what}: {e} ({took:.2?})");
    }
    // A new connection to the frozen cluster.
    let (res, took) = timed(|| ceph::connect(&common::spec(&c, TIMEOUT)));
    let e = res.unwrap_err();
    assert!(matches!(e, Error::Timeout(_)), "connect to a frozen cluster: {e:?}");
    assert!(took < BOUND, "connect to a frozen cluster took {took:?}");
    eprintln!("frozen cluster, connect: {e} ({took:.2?})");
    c.thaw();
    // The old connection recovers once the cluster is back.
    let deadline = Instant::now() + Duration::from_secs(30);
    while r.image_info("rbd", "img").is_err() {
        assert!(Instant::now() < deadline, "no recovery after thaw");
        std::thread::sleep(Duration::from_millis(200));
    }
}
