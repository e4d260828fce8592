//! 100k prefixes from one peer with one attribute set: insert time and memory per route,
//! measured with a counting allocator and printed (not asserted: machines differ). What is
//! asserted: the 100k routes share one attribute set, and withdrawing them frees the memory.

#[path = "rib_common/mod.rs"]
mod common;

use std::alloc::{GlobalAlloc, Layout, System};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use bgp::packet::{AttrValue, Nlri, Prefix, Update};
use common::*;

struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: forwards to the system allocator, only counting bytes.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        LIVE.fetch_add(l.size() as isize, Ordering::Relaxed);
        // SAFETY: same layout contract as ours.
        unsafe { System.alloc(l) }
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        LIVE.fetch_sub(l.size() as isize, Ordering::Relaxed);
        // SAFETY: `p` came from `alloc` with `l`.
        unsafe { System.dealloc(p, l) }
    }
    unsafe fn realloc(&self, p: *mut u8, l: Layout, n: usize) -> *mut u8 {
        LIVE.fetch_add(n as isize - l.size() as isize, Ordering::Relaxed);
        // SAFETY: as `GlobalAlloc::realloc` requires of us.
        unsafe { System.realloc(p, l, n) }
    }
}

#[global_allocator]
static A: Counting = Counting;

const N: u32 = 100_000;

/// The allocation counter is global: one measurement at a time.
static SERIAL: Mutex<()> = Mutex::new(());

#[test]
fn insert_100k_prefixes_from_one_peer() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut r = rib(false);
    let e = peer(&mut r, 2, 65002, false);
    let _ = r.updates(e);
    // UPDATEs as the peer would send them: ~1000 /24s each, one attribute set.
    let c = caps(false);
    let prefixes: Vec<Nlri> = (0..N)
        .map(|i| Nlri::from(Prefix::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)).into(), 24).expect("prefix")))
        .collect();
    let ups: Vec<Update> = prefixes
        .chunks(1000)
        .map(|ch| {
            wire(
                Update::new(attrs(&[65002, 65100], vec![AttrValue::NextHop(Ipv4Addr::new(192, 0, 2, 2))]), ch.to_vec()),
                &c,
            )
        })
        .collect();
    let before = LIVE.load(Ordering::Relaxed);
    let t = Instant::now();
    let mut changes = 0;
    for u in &ups {
        changes += r.receive(e, u).expect("receive").len();
    }
    let dt = t.elapsed();
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    assert_eq!(changes, N as usize);
    assert_eq!(r.loc_rib().len(), N as usize);
    assert_eq!(r.attr_sets(), 1, "one attribute set for {N} routes");
    eprintln!(
        "RIB: {N} prefixes from one peer: {:.0} ms ({:.2} µs/route), {:.1} MiB live, {} bytes/route (Loc-RIB + Adj-RIB-In, no peer to export to)",
        dt.as_secs_f64() * 1e3,
        dt.as_secs_f64() * 1e6 / f64::from(N),
        bytes as f64 / (1 << 20) as f64,
        bytes / N as isize
    );

    // A second peer's session: the whole table goes to its Adj-RIB-Out (one exported set).
    let before = LIVE.load(Ordering::Relaxed);
    let t = Instant::now();
    let e2 = peer(&mut r, 3, 65003, false);
    let out = r.updates(e2).expect("updates");
    let dt = t.elapsed();
    let msgs = out.len();
    drop(out);
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    assert_eq!(r.attr_sets(), 2);
    assert_eq!(r.adj_rib_out(e2).expect("out").len(), N as usize);
    eprintln!("RIB: {msgs} UPDATEs");
    eprintln!(
        "RIB: Adj-RIB-Out of {N} routes for one eBGP peer and their UPDATEs: {:.0} ms, {} bytes/route",
        dt.as_secs_f64() * 1e3,
        bytes / N as isize
    );

    let t = Instant::now();
    let d = r.peer_down(e, false).expect("down");
    assert_eq!(d.changes.len(), N as usize);
    eprintln!("RIB: peer down withdrawing {N} routes: {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    assert_eq!(r.attr_sets(), 0);
}

/// The other extreme: every route its own attribute set (MED = i). Interning must stay cheap
/// (no quadratic collection) and withdrawing frees the sets.
#[test]
fn insert_100k_prefixes_with_distinct_attribute_sets() {
    let _one = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut r = rib(false);
    let e = peer(&mut r, 2, 65002, false);
    let c = caps(false);
    let ups: Vec<Update> = (0..N)
        .map(|i| {
            let p = Nlri::from(Prefix::new(Ipv4Addr::from(0x0a00_0000 + (i << 8)).into(), 24).expect("prefix"));
            let extra = vec![AttrValue::NextHop(Ipv4Addr::new(192, 0, 2, 2)), AttrValue::Med(i)];
            wire(Update::new(attrs(&[65002, 65100], extra), vec![p]), &c)
        })
        .collect();
    let before = LIVE.load(Ordering::Relaxed);
    let t = Instant::now();
    for u in &ups {
        r.receive(e, u).expect("receive");
    }
    let dt = t.elapsed();
    let bytes = LIVE.load(Ordering::Relaxed) - before;
    assert_eq!(r.attr_sets(), N as usize);
    eprintln!(
        "RIB: {N} prefixes, one attribute set each: {:.0} ms ({:.2} µs/route), {} bytes/route",
        dt.as_secs_f64() * 1e3,
        dt.as_secs_f64() * 1e6 / f64::from(N),
        bytes / N as isize
    );
    let w: Vec<Update> = ups.iter().map(|u| Update { withdrawn: u.nlri.clone(), ..Update::default() }).collect();
    let t = Instant::now();
    for u in &w {
        r.receive(e, u).expect("withdraw");
    }
    eprintln!("RIB: {N} withdrawals, one UPDATE each: {:.0} ms", t.elapsed().as_secs_f64() * 1e3);
    assert_eq!(r.attr_sets(), 0);
    assert!(r.loc_rib().is_empty());
}
