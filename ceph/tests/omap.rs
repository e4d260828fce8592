//! omap objects on a real cluster: reads of missing objects, paging, and
//! the guards, which must hold atomically with the write even when two
//! controllers race.

mod common;

use ceph::{Error, Guard};
use std::sync::{Arc, Barrier};

#[test]
fn omap_reads_writes_pages_and_removes() {
    let c = common::cluster();
    let r = common::connect(&c);
    let (pool, oid) = ("rbd", "csi.test.omap");

    assert!(r.omap_get(pool, oid, &["a"]).unwrap().is_empty(), "missing object reads as empty");
    assert!(r.omap_list(pool, oid, "", 10).unwrap().is_empty());
    r.omap_remove(pool, oid, &["a"]).unwrap();
    r.remove_object(pool, oid).unwrap();

    r.omap_set(pool, oid, &[("a", b"1"), ("b", b"2"), ("c", b"\x00\xff")], &Guard::None).unwrap();
    let got = r.omap_get(pool, oid, &["a", "c", "zz"]).unwrap();
    assert_eq!(got.len(), 2, "{got:?}");
    assert_eq!(got["a"], b"1");
    assert_eq!(got["c"], b"\x00\xff", "binary values survive");
    // The CLI sees the same keys.
    let keys = String::from_utf8(c.rados(&["-p", pool, "listomapkeys", oid]).unwrap()).unwrap();
    assert_eq!(keys.lines().collect::<Vec<_>>(), ["a", "b", "c"]);

    // Paging: 250 more keys, read 100 at a time after the last key.
    let many: Vec<(String, Vec<u8>)> = (0..250).map(|i| (format!("k{i:04}"), format!("v{i}").into_bytes())).collect();
    let refs: Vec<(&str, &[u8])> = many.iter().map(|(k, v)| (k.as_str(), v.as_slice())).collect();
    r.omap_set(pool, oid, &refs, &Guard::None).unwrap();
    let mut seen = Vec::new();
    let mut after = String::new();
    loop {
        let page = r.omap_list(pool, oid, &after, 100).unwrap();
        assert!(page.len() <= 100);
        seen.extend(page.iter().map(|(k, _)| k.clone()));
        if page.len() < 100 {
            break;
        }
        after = page.last().unwrap().0.clone();
    }
    assert_eq!(seen.len(), 253, "all keys once");
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "in key order, no repeats");
    assert_eq!(r.omap_list(pool, oid, "k0099", 1).unwrap(), [("k0100".to_string(), b"v100".to_vec())]);
    assert_eq!(r.omap_list(pool, oid, "", 5000).unwrap().len(), 253, "one call past a page");

    r.omap_remove(pool, oid, &["a", "nope"]).unwrap();
    assert!(r.omap_get(pool, oid, &["a"]).unwrap().is_empty());
    assert_eq!(r.omap_get(pool, oid, &["b"]).unwrap()["b"], b"2");
    r.remove_object(pool, oid).unwrap();
    assert!(c.rados(&["-p", pool, "stat", oid]).is_err(), "object gone");
    r.remove_object(pool, oid).unwrap();

    // Bad input: empty values (they would read as absent to a guard), NULs.
    assert!(matches!(r.omap_set(pool, oid, &[("e", b"")], &Guard::None), Err(Error::InvalidArgument(_))));
    assert!(matches!(r.omap_set(pool, "x\0y", &[("e", b"1")], &Guard::None), Err(Error::InvalidArgument(_))));
    assert!(matches!(r.omap_get("no-such-pool", oid, &["a"]), Err(Error::NotFound(m)) if m.contains("no-such-pool")));
}

#[test]
fn guards_hold_atomically_with_the_write() {
    let c = common::cluster();
    let r = common::connect(&c);
    let pool = "rbd";

    // Equals on a missing object: Conflict, and no object is left behind.
    let e = r.omap_set(pool, "g1", &[("k", b"new")], &Guard::Equals("k".into(), b"old".to_vec())).unwrap_err();
    assert!(matches!(e, Error::Conflict(ref m) if m.contains("rbd/g1")), "{e:?}");
    assert!(c.rados(&["-p", pool, "stat", "g1"]).is_err(), "a failed guard creates nothing");

    // Absent on a missing object: creates it with the entries.
    r.omap_set(pool, "g1", &[("name", b"uuid-1"), ("other", b"x")], &Guard::Absent(vec!["name".into()])).unwrap();
    // Absent again: Conflict, nothing written (not even the other key).
    let e = r
        .omap_set(pool, "g1", &[("name", b"uuid-2"), ("third", b"y")], &Guard::Absent(vec!["name".into()]))
        .unwrap_err();
    assert!(matches!(e, Error::Conflict(_)), "{e:?}");
    let got = r.omap_get(pool, "g1", &["name", "third"]).unwrap();
    assert_eq!(got.get("name").map(Vec::as_slice), Some(&b"uuid-1"[..]));
    assert!(!got.contains_key("third"), "the failed op wrote nothing");
    // Absent with several keys: any one present fails it.
    assert!(matches!(
        r.omap_set(pool, "g1", &[("z", b"1")], &Guard::Absent(vec!["q".into(), "other".into()])),
        Err(Error::Conflict(_))
    ));
    r.omap_set(pool, "g1", &[("z", b"1")], &Guard::Absent(vec!["q".into(), "r".into()])).unwrap();

    // Equals: only the current value lets the write through.
    assert!(matches!(
        r.omap_set(pool, "g1", &[("name", b"uuid-3")], &Guard::Equals("name".into(), b"uuid-0".to_vec())),
        Err(Error::Conflict(_))
    ));
    r.omap_set(pool, "g1", &[("name", b"uuid-3")], &Guard::Equals("name".into(), b"uuid-1".to_vec())).unwrap();
    assert_eq!(r.omap_get(pool, "g1", &["name"]).unwrap()["name"], b"uuid-3");
    // A guard alone (no entries) is a pure check.
    r.omap_set(pool, "g1", &[], &Guard::Equals("name".into(), b"uuid-3".to_vec())).unwrap();
}

/// Two controllers (two connections) claim the same names at the same
/// instant: for every name exactly one wins and the stored value is the
/// winner's. Then both increment one counter with compare-and-set: no
/// increment is lost.
#[test]
fn racing_clients_never_both_win_a_guard() {
    let c = common::cluster();
    let a = common::connect(&c);
    let b = common::connect(&c);
    const ROUNDS: usize = 40;
    let barrier = Arc::new(Barrier::new(2));
    let claim = |r: Arc<dyn ceph::Rbd>, me: &'static str, barrier: Arc<Barrier>| {
        std::thread::spawn(move || {
            let mut wins = Vec::new();
            for i in 0..ROUNDS {
                let key = format!("csi.volume.pvc-{i}");
                barrier.wait();
                match r.omap_set("rbd", "csi.volumes.race", &[(&key, me.as_bytes())], &Guard::Absent(vec![key.clone()]))
                {
                    Ok(()) => wins.push(i),
                    Err(Error::Conflict(_)) => {}
                    Err(e) => panic!("{me} round {i}: {e}"),
                }
            }
            wins
        })
    };
    let ta = claim(a.clone(), "a", barrier.clone());
    let tb = claim(b.clone(), "b", barrier.clone());
    let (wa, wb) = (ta.join().unwrap(), tb.join().unwrap());
    assert_eq!(wa.len() + wb.len(), ROUNDS, "exactly one winner per name: a won {wa:?}, b won {wb:?}");
    let stored = a.omap_list("rbd", "csi.volumes.race", "", 1000).unwrap();
    assert_eq!(stored.len(), ROUNDS);
    for (k, v) in &stored {
        let i: usize = k.trim_start_matches("csi.volume.pvc-").parse().unwrap();
        let winner = if wa.contains(&i) { "a" } else { "b" };
        assert_eq!(v, winner.as_bytes(), "{k}: the stored value is the winner's");
    }
    eprintln!("claim race: a won {}, b won {} of {ROUNDS}", wa.len(), wb.len());

    // Compare-and-set counter.
    a.omap_set("rbd", "csi.counter", &[("n", b"0")], &Guard::None).unwrap();
    const INCS: usize = 25;
    let inc = |r: Arc<dyn ceph::Rbd>, barrier: Arc<Barrier>| {
        std::thread::spawn(move || {
            barrier.wait();
            let mut conflicts = 0;
            for _ in 0..INCS {
                loop {
                    let cur = r.omap_get("rbd", "csi.counter", &["n"]).unwrap()["n"].clone();
                    let n: usize = String::from_utf8(cur.clone()).unwrap().parse().unwrap();
                    let next = (n + 1).to_string();
                    match r.omap_set("rbd", "csi.counter", &[("n", next.as_bytes())], &Guard::Equals("n".into(), cur)) {
                        Ok(()) => break,
                        Err(Error::Conflict(_)) => conflicts += 1,
                        Err(e) => panic!("{e}"),
                    }
                }
            }
            conflicts
        })
    };
    let (ca, cb) = (inc(a.clone(), barrier.clone()), inc(b, barrier));
    let conflicts = ca.join().unwrap() + cb.join().unwrap();
    let n = a.omap_get("rbd", "csi.counter", &["n"]).unwrap()["n"].clone();
    assert_eq!(n, (2 * INCS).to_string().into_bytes(), "no lost update ({conflicts} conflicts retried)");
    eprintln!("counter race: {conflicts} conflicts retried, final {}", 2 * INCS);
}
