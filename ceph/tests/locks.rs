//! cls_lock locks, fencing (blocklist) and watchers on a real cluster:
//! the pieces exclusive attach is built from.

mod common;

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use ceph::{Error, Guard};

const LOCK: &str = "csi-rbd-attach";

#[test]
fn an_exclusive_lock_has_one_holder_and_can_be_broken() {
    let c = common::cluster();
    let a = common::connect(&c);
    let b = common::connect(&c);
    let oid = "csi.rbd.attach.csi-vol-1";

    assert!(a.lockers("rbd", oid, LOCK).unwrap().is_empty(), "missing object: no lockers");
    assert!(a.lock_cookies("rbd", oid, LOCK).unwrap().is_empty(), "missing object: no cookies");
    a.lock_exclusive("rbd", oid, LOCK, "node-a", r#"{"node":"node-a"}"#).unwrap();
    a.lock_exclusive("rbd", oid, LOCK, "node-a", r#"{"node":"node-a"}"#).unwrap(); // renew: idempotent

    let held = a.lockers("rbd", oid, LOCK).unwrap();
    assert_eq!(held.len(), 1, "{held:?}");
    let l = &held[0];
    assert!(l.client.starts_with("client."), "{l:?}");
    assert_eq!(l.cookie, "node-a");
    assert_eq!(l.description, r#"{"node":"node-a"}"#);
    assert_eq!(l.address, a.client_address().unwrap(), "the holder's address is the one to blocklist");
    // The cookies alone (one round trip), from either client.
    assert_eq!(a.lock_cookies("rbd", oid, LOCK).unwrap(), ["node-a"]);
    assert_eq!(b.lock_cookies("rbd", oid, LOCK).unwrap(), ["node-a"]);
    // The CLI agrees.
    let cli: serde_json::Value =
        serde_json::from_slice(&c.rados(&["-p", "rbd", "lock", "info", oid, LOCK, "--format", "json"]).unwrap())
            .unwrap();
    let cl = &cli["lockers"][0];
    assert_eq!(cl["name"], l.client.as_str(), "{cli}");
    assert_eq!(cl["cookie"], "node-a");
    assert_eq!(cl["description"], l.description.as_str());

    // Another client, whatever the cookie, and the same client with
    // another cookie: Busy, naming the object.
    for (r, cookie) in [(&b, "node-b"), (&b, "node-a"), (&a, "node-b")] {
        let e = r.lock_exclusive("rbd", oid, LOCK, cookie, "{}").unwrap_err();
        assert!(matches!(e, Error::Busy(ref m) if m.contains(oid)), "{cookie}: {e:?}");
    }
    // The lock lives beside omap data on the same object.
    a.omap_set("rbd", oid, &[("node.node-a", b"{}")], &Guard::None).unwrap();
    assert_eq!(a.lockers("rbd", oid, LOCK).unwrap().len(), 1);

    // b takes over: break a's lock, then lock.
    b.break_lock("rbd", oid, LOCK, &l.client, &l.cookie).unwrap();
    b.break_lock("rbd", oid, LOCK, &l.client, &l.cookie).unwrap(); // gone: fine
    assert!(b.lockers("rbd", oid, LOCK).unwrap().is_empty());
    b.lock_exclusive("rbd", oid, LOCK, "node-b", r#"{"node":"node-b"}"#).unwrap();
    let held = a.lockers("rbd", oid, LOCK).unwrap();
    assert_eq!((held.len(), held[0].cookie.as_str()), (1, "node-b"));
    assert!(matches!(a.lock_exclusive("rbd", oid, LOCK, "node-a", "{}"), Err(Error::Busy(_))));
    let e = b.break_lock("rbd", oid, LOCK, "not-an-entity", "x").unwrap_err();
    assert!(matches!(e, Error::InvalidArgument(_)), "{e:?}");
}

/// A fenced (blocklisted) client's next write fails, quickly, while
/// others go on; its lock can then be broken and taken.
#[test]
fn a_blocklisted_client_can_no_longer_write() {
    let c = common::cluster();
    let admin = common::connect(&c);
    let victim = ceph::connect(&common::spec(&c, Duration::from_secs(5))).unwrap();
    let addr = victim.client_address().unwrap();
    let re_ok = addr
        .split_once('/')
        .is_some_and(|(ipport, nonce)| ipport.starts_with(&c.host(1).to_string()) && nonce.parse::<u64>().is_ok());
    assert!(re_ok, "client address {addr:?} is IP:PORT/NONCE on the bridge");

    victim.omap_set("rbd", "fenced", &[("k", b"before")], &Guard::None).unwrap();
    victim.lock_exclusive("rbd", "fenced", LOCK, "node-a", "{}").unwrap();

    admin.blocklist_add(&addr, Duration::from_secs(600)).unwrap();
    // (`ceph osd blocklist ls --format json` prints two JSON documents.)
    let ls = c.ceph(&["osd", "blocklist", "ls", "--format", "json"]).unwrap();
    assert!(ls.contains(&format!(r#""addr":"{addr}""#)), "{addr} in {ls}");

    let t = Instant::now();
    let e = victim.omap_set("rbd", "fenced", &[("k", b"after")], &Guard::None).unwrap_err();
    let took = t.elapsed();
    eprintln!("blocklisted write: {e} ({took:.2?})");
    assert!(matches!(e, Error::PermissionDenied(ref m) if m.contains("blocklisted")), "{e:?}");
    assert!(took < Duration::from_secs(8), "took {took:?}");
    assert_eq!(admin.omap_get("rbd", "fenced", &["k"]).unwrap()["k"], b"before", "the write did not land");

    let l = admin.lockers("rbd", "fenced", LOCK).unwrap().remove(0);
    assert_eq!(l.address, addr);
    admin.break_lock("rbd", "fenced", LOCK, &l.client, &l.cookie).unwrap();
    admin.lock_exclusive("rbd", "fenced", LOCK, "node-b", "{}").unwrap();
    admin.omap_set("rbd", "fenced", &[("k", b"new owner")], &Guard::None).unwrap();
    // An expiry of zero is the cluster's default; a bad address is refused.
    assert!(matches!(admin.blocklist_add("not an address", Duration::ZERO), Err(Error::InvalidArgument(_))));
}

/// Watchers are the clients that have an image open; opening read-only
/// (as image_info and image_watchers do) adds none.
#[test]
fn watchers_show_who_has_an_image_open() {
    let c = common::cluster();
    let r = common::connect(&c);
    r.create_image("rbd", "watched", 1 << 20, &Default::default()).unwrap();
    assert!(r.image_watchers("rbd", "watched").unwrap().is_empty());
    let id = r.image_info("rbd", "watched").unwrap().id;

    let conf = c.conf();
    let mut child = Command::new("rados")
        .args(["-c", &conf.to_string_lossy(), "-p", "rbd", "watch", &format!("rbd_header.{id}")])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let ws = loop {
        let ws = r.image_watchers("rbd", "watched").unwrap();
        if !ws.is_empty() || Instant::now() > deadline {
            break ws;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let busy = r.remove_image("rbd", "watched");
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(ws.len(), 1, "{ws:?}");
    assert!(ws[0].address.starts_with(&c.host(1).to_string()), "{ws:?}");
    let e = busy.unwrap_err();
    assert!(matches!(e, Error::Busy(ref m) if m.contains("rbd/watched")), "{e:?}");
}
