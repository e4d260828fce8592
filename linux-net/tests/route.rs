//! `route::batch` and `route::list_protocol` against the running kernel, in
//! a private network namespace (named with the pid; a Drop guard deletes it
//! even when an assertion fails). Needs root and `ip`.

use std::path::PathBuf;
use std::process::Command;

use ipnetwork::IpNetwork;
use linux_net::netns::NetNs;
use linux_net::route::{self, Op, Route, RouteKind};

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let ns = Ns(format!("lnrt{}{tag}", std::process::id()));
        let _ = Command::new("ip").args(["netns", "del", &ns.0]).output();
        ip(&["netns", "add", &ns.0]);
        // A veth pair inside the namespace (no dummy driver on every test kernel).
        ns.ip(&["link", "add", "v0", "type", "veth", "peer", "v1"]);
        ns.ip(&["addr", "add", "10.66.0.1/24", "dev", "v0"]);
        ns.ip(&["addr", "add", "fd66::1/64", "dev", "v0", "nodad"]);
        ns.ip(&["link", "set", "v1", "up"]);
        ns.ip(&["link", "set", "v0", "up"]);
        ns
    }

    fn ip(&self, args: &[&str]) -> String {
        let mut all = vec!["-n", &self.0];
        all.extend_from_slice(args);
        ip(&all)
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn ip(args: &[&str]) -> String {
    let out = Command::new("ip").args(args).output().expect("exec ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn ours(dst: &str, gw: Option<&str>) -> Route {
    let dst: IpNetwork = dst.parse().expect("dst");
    let mut r = match gw {
        Some(gw) => Route::new(dst, Some(gw.parse().expect("gw")), None),
        None => Route::blackhole(dst),
    };
    r.protocol = Some(77);
    r
}

#[test]
fn a_batch_applies_in_order_and_reports_only_the_refused_ops() {
    let ns = Ns::new("a");
    let mut nl = NetNs::open(&PathBuf::from(format!("/run/netns/{}", ns.0))).expect("ns").netlink().expect("nl");
    let index =
        ns.ip(&["-o", "link", "show", "v0"]).split(':').next().expect("index").trim().parse::<u32>().expect("n");

    // Far more ops than one window, IPv4 and IPv6, unicast, onlink and blackhole.
    let mut ops: Vec<Op> = (0..1500u32)
        .map(|i| Op::Add(ours(&format!("10.{}.{}.0/24", 100 + i / 256, i % 256), Some("10.66.0.2"))))
        .collect();
    ops.push(Op::Add(ours("2001:db8:66::/48", Some("fd66::2"))));
    ops.push(Op::Add(ours("10.67.0.0/16", None)));
    let mut onlink = ours("10.68.0.0/16", Some("192.0.2.9"));
    onlink.oif = Some(index);
    onlink.onlink = true;
    ops.push(Op::Add(onlink));
    ops.push(Op::Add(ours("10.69.0.0/16", Some("192.0.2.9")))); // not on-link: refused
    ops.push(Op::Add(ours("10.100.0.0/24", Some("10.66.0.3")))); // exists: refused
    ops.push(Op::Replace(ours("10.100.1.0/24", Some("10.66.0.3"))));
    ops.push(Op::Delete(ours("10.100.2.0/24", Some("10.66.0.2"))));
    ops.push(Op::Delete(ours("10.100.2.0/24", Some("10.66.0.2")))); // already gone: fine
    let failed = route::batch(&mut nl, &ops).expect("batch");
    let at: Vec<usize> = failed.iter().map(|(i, _)| *i).collect();
    assert_eq!(at, [1503, 1504], "{failed:?}");
    assert!(failed[0].1.to_string().contains("add route 10.69.0.0/16 via 192.0.2.9"), "{}", failed[0].1);
    assert!(failed[1].1.is_exists(), "{}", failed[1].1);

    let v4 = route::list_protocol(&mut nl, false, 254, 77).expect("list");
    assert_eq!(v4.len(), 1500 - 1 + 2, "1500 adds, one deleted, a blackhole and the onlink route");
    let bh = v4.iter().find(|r| r.dst.to_string() == "10.67.0.0/16").expect("blackhole listed");
    assert_eq!((bh.kind, bh.gw, bh.protocol), (RouteKind::Blackhole, None, Some(77)));
    let ol = v4.iter().find(|r| r.dst.to_string() == "10.68.0.0/16").expect("onlink listed");
    assert!(ol.onlink && ol.oif == Some(index));
    let re = v4.iter().find(|r| r.dst.to_string() == "10.100.1.0/24").expect("replaced");
    assert_eq!(re.gw, Some("10.66.0.3".parse().expect("ip")));
    assert_eq!(route::list_protocol(&mut nl, true, 254, 77).expect("list v6").len(), 1);
    assert!(ns.ip(&["route", "show", "10.100.2.0/24"]).is_empty());

    // Another protocol's route, and another table's, are not listed and not deleted by ours.
    ns.ip(&["route", "add", "10.70.0.0/16", "via", "10.66.0.2", "proto", "static"]);
    ns.ip(&["route", "add", "10.71.0.0/16", "via", "10.66.0.2", "proto", "77", "table", "100"]);
    let v4 = route::list_protocol(&mut nl, false, 254, 77).expect("list");
    assert!(!v4.iter().any(|r| r.dst.to_string() == "10.70.0.0/16" || r.dst.to_string() == "10.71.0.0/16"));
    assert_eq!(route::list_protocol(&mut nl, false, 100, 77).expect("table 100").len(), 1);
    let failed = route::batch(&mut nl, &[Op::Delete(ours("10.70.0.0/16", Some("10.66.0.2")))]).expect("batch");
    assert!(failed.is_empty(), "no route of ours there: already gone");
    assert!(!ns.ip(&["route", "show", "10.70.0.0/16"]).is_empty(), "the static route survives");
}
