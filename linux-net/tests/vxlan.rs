//! Integration tests of `linux_net::{vxlan, neigh}` and the route additions
//! against the running kernel: a Flannel-style L3 VXLAN overlay between two
//! network namespaces joined by a veth "underlay".
//!
//! They need root (CAP_NET_ADMIN), `ip` (netns creation, `ip netns exec`),
//! `ping` and `tcpdump`. Every test works in its own namespaces (named with
//! the pid and the test), which a Drop guard deletes even when an assertion
//! fails; links inside a namespace are private to it.

use std::io::{BufRead, BufReader, Read};
use std::net::IpAddr;
use std::process::{Child, Command, Stdio};

use ipnetwork::IpNetwork;
use linux_net::link::{self, Link, VethSpec};
use linux_net::netlink::Netlink;
use linux_net::netns::NetNs;
use linux_net::route::{self, Route};
use linux_net::vxlan::{ensure_vxlan, vxlan_info, VxlanInfo, VxlanSpec};
use linux_net::{addr, neigh};

mod common;
use common::{ip, net, sh, Namespaces};

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/// Kills (and reaps) a child process when dropped, e.g. a tcpdump left
/// behind by a failed assertion.
struct ChildGuard(Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = self.0.as_mut() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn up(nl: &mut Netlink, name: &str) -> Link {
    let l = link::get(nl, name).unwrap().unwrap_or_else(|| panic!("no link {name}"));
    link::set_up(nl, l.index, true).unwrap();
    l
}

/// A veth pair `ul0` (in `a`, up) <-> `peer` (in `b`, brought up), the
/// underlay; returns the two ends' ifindexes.
fn underlay(nla: &mut Netlink, nlb: &mut Netlink, b: &NetNs, peer: &str) -> (u32, u32) {
    let ul_a = link::create_veth(
        nla,
        &VethSpec { host: "ul0", peer, peer_ns_fd: b.fd(), mtu: None, peer_mac: None, master: None },
    )
    .unwrap();
    let ul_b = up(nlb, peer);
    (ul_a.index, ul_b.index)
}

fn spec<'a>(name: &'a str, vni: u32, local: &str, underlay: u32) -> VxlanSpec<'a> {
    VxlanSpec {
        name,
        vni,
        port: 8472,
        local: Some(ip(local)),
        underlay: Some(underlay),
        mtu: None,
        learning: false,
        mac: None,
    }
}

// ---------------------------------------------------------------------------
// the overlay: ping over VXLAN between two "hosts", seen on the underlay
// ---------------------------------------------------------------------------

/// One host's half of a Flannel L3 overlay: what the other host needs to
/// know about it.
struct Vtep {
    underlay_ip: IpAddr,
    inner: IpAddr,
    subnet: IpNetwork,
    link: Link,
}

fn host(nl: &mut Netlink, ul_index: u32, underlay_ip: &str, inner: &str, subnet: &str) -> Vtep {
    addr::add(nl, ul_index, net(&format!("{underlay_ip}/24")), true).unwrap();
    up(nl, "lo");
    let vx = ensure_vxlan(nl, &spec("flannel.1", 1, underlay_ip, ul_index)).unwrap();
    assert!(vx.up, "created up");
    assert_eq!(vx.kind.as_deref(), Some("vxlan"));
    assert_eq!(vx.mtu, 1450, "underlay MTU - 50");
    addr::add(nl, vx.index, net(&format!("{inner}/32")), true).unwrap();
    Vtep { underlay_ip: ip(underlay_ip), inner: ip(inner), subnet: net(subnet), link: vx }
}

/// Programs `local` to reach `remote`'s subnet the way Flannel does.
fn peer(nl: &mut Netlink, local: &Vtep, remote: &Vtep) {
    let mac = remote.link.mac.unwrap();
    neigh::neigh_replace(nl, local.link.index, remote.inner, mac).unwrap();
    neigh::fdb_replace(nl, local.link.index, mac, remote.underlay_ip).unwrap();
    let mut r = Route::new(remote.subnet, Some(remote.inner), Some(local.link.index));
    r.onlink = true;
    route::replace(nl, &r).unwrap();
}

#[test]
fn ping_across_the_overlay_is_vxlan_on_the_underlay() {
    let ns = Namespaces::new("vxt", &["pa", "pb"]);
    let (a, b) = (ns.open(0), ns.open(1));
    let (mut nla, mut nlb) = (a.netlink().unwrap(), b.netlink().unwrap());
    let (ul_a, ul_b) = underlay(&mut nla, &mut nlb, &b, "ul0");

    let ha = host(&mut nla, ul_a, "192.168.77.1", "10.77.1.0", "10.77.1.0/24");
    let hb = host(&mut nlb, ul_b, "192.168.77.2", "10.77.2.0", "10.77.2.0/24");
    assert_eq!(
        vxlan_info(&mut nla, "flannel.1").unwrap(),
        Some(VxlanInfo { vni: 1, port: 8472, local: Some(ha.underlay_ip), underlay: Some(ul_a), learning: false })
    );
    // Twice: everything is replace-semantics, as an agent resync would do.
    for _ in 0..2 {
        peer(&mut nla, &ha, &hb);
        peer(&mut nlb, &hb, &ha);
    }
    assert_eq!(neigh::neigh_list(&mut nla, ha.link.index).unwrap(), [(hb.inner, hb.link.mac.unwrap())]);
    assert_eq!(neigh::fdb_list(&mut nla, ha.link.index).unwrap(), [(hb.link.mac.unwrap(), hb.underlay_ip)]);
    let routes = route::list_oif(&mut nla, false, ha.link.index).unwrap();
    let to_b: Vec<&Route> = routes.iter().filter(|r| r.dst == hb.subnet).collect();
    assert_eq!(to_b.len(), 1, "{routes:?}");
    assert_eq!(to_b[0].gw, Some(hb.inner));
    assert_eq!(to_b[0].oif, Some(ha.link.index));
    assert!(to_b[0].onlink, "onlink read back: {:?}", to_b[0]);
    assert_eq!(to_b[0].table, Some(254));
    let shown = sh(&["ip", "-n", ns.name(0), "route", "show", "dev", "flannel.1"]);
    assert!(shown.contains("10.77.2.0/24 via 10.77.2.0 onlink"), "{shown}");

    // Capture on A's underlay while A pings B's inner address.
    let mut dump = ChildGuard(Some(
        Command::new("ip")
            .args(["netns", "exec", ns.name(0), "timeout", "20", "tcpdump", "-i", "ul0", "-n", "-l", "-c", "1"])
            .args(["-T", "vxlan", "udp", "port", "8472"])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn tcpdump"),
    ));
    let mut stderr = BufReader::new(dump.0.as_mut().unwrap().stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        let n = stderr.read_line(&mut line).unwrap();
        seen.push_str(&line);
        assert!(n > 0, "tcpdump exited before listening: {seen}");
        if line.contains("listening on") {
            break;
        }
    }
    let ping = Command::new("ip")
        .args(["netns", "exec", ns.name(0), "ping", "-c", "3", "-i", "0.2", "-W", "2", &hb.inner.to_string()])
        .output()
        .unwrap();
    assert!(ping.status.success(), "ping over the overlay failed: {}", String::from_utf8_lossy(&ping.stdout));

    let mut child = dump.0.take().unwrap();
    let status = child.wait().unwrap();
    let mut out = String::new();
    child.stdout.take().unwrap().read_to_string(&mut out).unwrap();
    let _ = stderr.read_to_string(&mut seen);
    assert!(status.success(), "tcpdump saw no VXLAN packet: {out} {seen}");
    // e.g. "IP 192.168.77.1.39427 > 192.168.77.2.8472: VXLAN, flags [I] (0x08), vni 1
    //       IP 10.77.1.0 > 10.77.2.0: ICMP echo request, ..."
    assert!(out.contains("192.168.77.1.") && out.contains("> 192.168.77.2.8472"), "{out}");
    assert!(out.contains("vni 1"), "{out}");
    assert!(out.contains("10.77.1.0 > 10.77.2.0"), "inner packet: {out}");
}

// ---------------------------------------------------------------------------
// ensure_vxlan: keep a matching link, recreate a different one
// ---------------------------------------------------------------------------

#[test]
fn ensure_vxlan_keeps_a_matching_link_and_recreates_a_different_one() {
    let ns = Namespaces::new("vxt", &["e"]);
    let h = ns.open(0);
    let mut nl = h.netlink().unwrap();
    let mut nl2 = h.netlink().unwrap();
    let (ul, _) = underlay(&mut nl, &mut nl2, &h, "ul1");
    addr::add(&mut nl, ul, net("192.168.78.1/24"), true).unwrap();
    addr::add(&mut nl, ul, net("fd00:78::1/64"), true).unwrap();

    assert_eq!(vxlan_info(&mut nl, "flannel.7").unwrap(), None, "absent");
    assert_eq!(vxlan_info(&mut nl, "ul0").unwrap(), None, "not a vxlan");

    let mut s = spec("flannel.7", 7, "192.168.78.1", ul);
    let first = ensure_vxlan(&mut nl, &s).unwrap();
    assert!(first.up);
    assert_eq!(first.mtu, 1450);
    let info = VxlanInfo { vni: 7, port: 8472, local: Some(ip("192.168.78.1")), underlay: Some(ul), learning: false };
    assert_eq!(vxlan_info(&mut nl, "flannel.7").unwrap(), Some(info.clone()));

    // Same spec: the very same link.
    assert_eq!(ensure_vxlan(&mut nl, &s).unwrap(), first);
    // Down (e.g. by an admin): brought back up, not recreated.
    link::set_up(&mut nl, first.index, false).unwrap();
    let again = ensure_vxlan(&mut nl, &s).unwrap();
    assert_eq!((again.index, again.up), (first.index, true));
    // MTU, learning and MAC are changed in place.
    s.mtu = Some(1400);
    s.learning = true;
    s.mac = Some([0x02, 0x42, 0, 0, 0, 7]);
    let tuned = ensure_vxlan(&mut nl, &s).unwrap();
    assert_eq!((tuned.index, tuned.mtu, tuned.mac, tuned.up), (first.index, 1400, s.mac, true));
    assert_eq!(vxlan_info(&mut nl, "flannel.7").unwrap(), Some(VxlanInfo { learning: true, ..info.clone() }));
    s.learning = false;
    assert_eq!(ensure_vxlan(&mut nl, &s).unwrap().index, first.index);
    assert_eq!(vxlan_info(&mut nl, "flannel.7").unwrap(), Some(info.clone()));
    // Port 0 = "the kernel's default": any existing port is accepted.
    s.port = 0;
    assert_eq!(ensure_vxlan(&mut nl, &s).unwrap().index, first.index);
    s.port = 8472;

    // Each identity change recreates the link (new ifindex), with the new identity.
    let mut last = first.index;
    let mut recreated = |nl: &mut Netlink, s: &VxlanSpec<'_>, want: VxlanInfo| {
        let l = ensure_vxlan(nl, s).unwrap();
        assert_ne!(l.index, last, "recreated for {want:?}");
        assert!(l.up);
        assert_eq!(l.name, "flannel.7");
        assert_eq!(vxlan_info(nl, "flannel.7").unwrap(), Some(want));
        assert_eq!(ensure_vxlan(nl, s).unwrap().index, l.index, "then kept");
        last = l.index;
        l
    };
    s.vni = 8;
    let l = recreated(&mut nl, &s, VxlanInfo { vni: 8, ..info.clone() });
    assert_eq!((l.mtu, l.mac), (1400, s.mac), "created with the requested MTU and MAC");
    s.port = 4789;
    recreated(&mut nl, &s, VxlanInfo { vni: 8, port: 4789, ..info.clone() });
    s.local = None;
    recreated(&mut nl, &s, VxlanInfo { vni: 8, port: 4789, local: None, ..info.clone() });
    s.underlay = None;
    recreated(&mut nl, &s, VxlanInfo { vni: 8, port: 4789, local: None, underlay: None, learning: false });
    s.local = Some(ip("fd00:78::1"));
    s.underlay = Some(ul);
    recreated(&mut nl, &s, VxlanInfo { vni: 8, port: 4789, local: s.local, underlay: Some(ul), learning: false });
    assert_eq!(link::list(&mut nl).unwrap().iter().filter(|l| l.kind.as_deref() == Some("vxlan")).count(), 1);

    // A non-vxlan link squatting the name is replaced.
    let squatter = link::create_veth(
        &mut nl,
        &VethSpec { host: "flannel.9", peer: "sq1", peer_ns_fd: h.fd(), mtu: None, peer_mac: None, master: None },
    )
    .unwrap();
    let s9 = spec("flannel.9", 9, "192.168.78.1", ul);
    let l9 = ensure_vxlan(&mut nl, &s9).unwrap();
    assert_ne!(l9.index, squatter.index);
    assert_eq!(l9.kind.as_deref(), Some("vxlan"));
    assert_eq!(vxlan_info(&mut nl, "flannel.9").unwrap().map(|i| i.vni), Some(9));

    // Another name with the same VNI/port/local: the kernel refuses (EEXIST),
    // and that is reported rather than mistaken for a concurrent creator.
    let err = ensure_vxlan(&mut nl, &VxlanSpec { name: "other.9", ..s9.clone() }).unwrap_err();
    assert!(err.is_exists(), "{err}");
    assert_eq!(link::get(&mut nl, "other.9").unwrap(), None);
    assert_eq!(link::get(&mut nl, "flannel.9").unwrap().map(|l| l.index), Some(l9.index), "left alone");
}

// ---------------------------------------------------------------------------
// neighbour and FDB entries
// ---------------------------------------------------------------------------

#[test]
fn neigh_and_fdb_entries_replace_list_and_delete() {
    let ns = Namespaces::new("vxt", &["n"]);
    let h = ns.open(0);
    let mut nl = h.netlink().unwrap();
    let mut nl2 = h.netlink().unwrap();
    let (ul, _) = underlay(&mut nl, &mut nl2, &h, "ul1");
    addr::add(&mut nl, ul, net("192.168.79.1/24"), true).unwrap();
    let vx = ensure_vxlan(&mut nl, &spec("flannel.1", 1, "192.168.79.1", ul)).unwrap();
    let (i, other) = (vx.index, ul);
    let m1 = [0x0a, 0x58, 0x0a, 0x4f, 0x02, 0x00];
    let m2 = [0x0a, 0x58, 0x0a, 0x4f, 0x03, 0x00];
    let (v4, v6) = (ip("10.79.2.0"), ip("fd00:79:2::"));

    // Neighbours: replace twice = one entry; replace with another MAC updates it.
    assert_eq!(neigh::neigh_list(&mut nl, i).unwrap(), []);
    neigh::neigh_replace(&mut nl, i, v4, m1).unwrap();
    neigh::neigh_replace(&mut nl, i, v4, m1).unwrap();
    assert_eq!(neigh::neigh_list(&mut nl, i).unwrap(), [(v4, m1)]);
    neigh::neigh_replace(&mut nl, i, v4, m2).unwrap();
    neigh::neigh_replace(&mut nl, i, v6, m1).unwrap();
    neigh::neigh_replace(&mut nl, i, v6, m1).unwrap();
    assert_eq!(neigh::neigh_list(&mut nl, i).unwrap(), [(v4, m2), (v6, m1)]);
    let shown = sh(&["ip", "-n", ns.name(0), "neigh", "show", "dev", "flannel.1"]);
    assert!(shown.contains("10.79.2.0 lladdr 0a:58:0a:4f:03:00 PERMANENT"), "{shown}");
    assert!(shown.contains("fd00:79:2:: lladdr 0a:58:0a:4f:02:00 PERMANENT"), "{shown}");
    // Only this link's entries, and only permanent ones.
    neigh::neigh_replace(&mut nl, other, v4, m1).unwrap();
    let ns0 = ns.name(0);
    sh(&[
        "ip",
        "-n",
        ns0,
        "neigh",
        "add",
        "10.79.9.9",
        "lladdr",
        "0a:00:00:00:00:09",
        "dev",
        "flannel.1",
        "nud",
        "stale",
    ]);
    assert_eq!(neigh::neigh_list(&mut nl, i).unwrap(), [(v4, m2), (v6, m1)]);
    assert_eq!(neigh::neigh_list(&mut nl, other).unwrap(), [(v4, m1)]);
    // Delete: true, then false.
    assert!(neigh::neigh_del(&mut nl, i, v4).unwrap());
    assert!(!neigh::neigh_del(&mut nl, i, v4).unwrap());
    assert!(neigh::neigh_del(&mut nl, i, v6).unwrap());
    assert!(!neigh::neigh_del(&mut nl, i, v6).unwrap());
    assert_eq!(neigh::neigh_list(&mut nl, i).unwrap(), []);
    assert_eq!(neigh::neigh_list(&mut nl, other).unwrap(), [(v4, m1)], "other link untouched");

    // FDB: replace twice = one entry; replace with another VTEP moves it.
    let (d1, d2, d3, d6) = (ip("192.168.79.2"), ip("192.168.79.3"), ip("192.168.79.4"), ip("fd00:79::3"));
    assert_eq!(neigh::fdb_list(&mut nl, i).unwrap(), []);
    neigh::fdb_replace(&mut nl, i, m1, d1).unwrap();
    neigh::fdb_replace(&mut nl, i, m1, d1).unwrap();
    assert_eq!(neigh::fdb_list(&mut nl, i).unwrap(), [(m1, d1)]);
    neigh::fdb_replace(&mut nl, i, m1, d2).unwrap();
    assert_eq!(neigh::fdb_list(&mut nl, i).unwrap(), [(m1, d2)]);
    // The remote's family must be the link's (its local/group address's).
    let err = neigh::fdb_replace(&mut nl, i, m2, d6).unwrap_err();
    assert_eq!(err.errno(), Some(nix::errno::Errno::EAFNOSUPPORT), "{err}");
    neigh::fdb_replace(&mut nl, i, m2, d3).unwrap();
    let mut fdb = neigh::fdb_list(&mut nl, i).unwrap();
    fdb.sort();
    assert_eq!(fdb, [(m1, d2), (m2, d3)]);
    let shown = sh(&["bridge", "-n", ns.name(0), "fdb", "show", "dev", "flannel.1"]);
    assert!(shown.contains("0a:58:0a:4f:02:00 dst 192.168.79.3 self permanent"), "{shown}");
    assert!(shown.contains("0a:58:0a:4f:03:00 dst 192.168.79.4 self permanent"), "{shown}");
    // Delete: wrong VTEP is "absent"; then true, then false.
    assert!(!neigh::fdb_del(&mut nl, i, m1, d1).unwrap());
    assert_eq!(neigh::fdb_list(&mut nl, i).unwrap().len(), 2, "nothing deleted");
    assert!(neigh::fdb_del(&mut nl, i, m1, d2).unwrap());
    assert!(!neigh::fdb_del(&mut nl, i, m1, d2).unwrap());
    assert!(neigh::fdb_del(&mut nl, i, m2, d3).unwrap());
    assert!(!neigh::fdb_del(&mut nl, i, m2, d3).unwrap());
    assert_eq!(neigh::fdb_list(&mut nl, i).unwrap(), []);

    // An IPv6 underlay: IPv6 remotes.
    addr::add(&mut nl, ul, net("fd00:79::1/64"), true).unwrap();
    let vx6 = ensure_vxlan(&mut nl, &spec("flannel.6", 6, "fd00:79::1", ul)).unwrap();
    neigh::fdb_replace(&mut nl, vx6.index, m1, d6).unwrap();
    neigh::fdb_replace(&mut nl, vx6.index, m1, d6).unwrap();
    assert_eq!(neigh::fdb_list(&mut nl, vx6.index).unwrap(), [(m1, d6)]);
    assert_eq!(neigh::fdb_list(&mut nl, i).unwrap(), [], "per link");
    assert!(neigh::fdb_del(&mut nl, vx6.index, m1, d6).unwrap());
    assert!(!neigh::fdb_del(&mut nl, vx6.index, m1, d6).unwrap());
    assert_eq!(neigh::fdb_list(&mut nl, vx6.index).unwrap(), []);
}
