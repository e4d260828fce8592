//! Dual stack (Flannel's `EnableIPv6`) across hosts in the lab: a second
//! VXLAN device `flannel-v6.<VNI>` over the IPv6 underlay, containers with an
//! IPv4 and an IPv6 address, IPv6 between containers on different hosts.

mod common;

use std::net::{IpAddr, Ipv6Addr};
use std::process::Command;
use std::time::Duration;

use common::{bin, subnet6_of, subnet_of, udp_source, Overlay};
use serde_json::{json, Value};
use testkit::lab::HostId;

const IPV6_NETWORK: &str = "fd00:10:245::/56";

fn dual_conf(backend: Value) -> Value {
    json!({"Network": "10.245.0.0/16", "SubnetLen": 24, "EnableIPv6": true, "IPv6Network": IPV6_NETWORK,
           "IPv6SubnetLen": 64, "Backend": backend})
}

/// `ip -j link show NAME` in host `h`, with details.
fn link_json(o: &Overlay, h: HostId, name: &str) -> Value {
    let out = o.lab.exec_ok(h, &["ip", "-d", "-j", "link", "show", name]).unwrap();
    serde_json::from_str::<Value>(&out).unwrap()[0].clone()
}

fn v6(ips: &[IpAddr]) -> Ipv6Addr {
    ips.iter()
        .find_map(|ip| match ip {
            IpAddr::V6(a) => Some(*a),
            _ => None,
        })
        .unwrap_or_else(|| panic!("no IPv6 address in {ips:?}"))
}

#[test]
fn dual_stack_containers_ping6_across_hosts_over_ipv6_vxlan() {
    let mut o = Overlay::new("ovl6", dual_conf(json!({"Type": "vxlan"})), &["--ip-masq"]);
    let a = o.lab.segment_with_ipv6("192.168.71.0/24", "fd00:71::/64").unwrap();
    let b = o.lab.segment_with_ipv6("192.168.72.0/24", "fd00:72::/64").unwrap();
    let h1 = o.lab.host(a).unwrap();
    let h2 = o.lab.host(a).unwrap();
    o.lab.router(&[a, b]).unwrap();
    let h3 = o.lab.host(b).unwrap();
    let hosts = [h1, h2, h3];
    o.start_agent(h1);
    o.start_agent(h2);
    // flanneld's --public-ipv6; the others find theirs on --iface.
    let h3_ip6 = o.lab.host_ip6(h3).unwrap().to_string();
    o.start_agent_with(h3, &["--public-ipv6", &h3_ip6]);

    // Subnet file: the IPv6 pair, and one MTU that fits both devices.
    let env = o.subnet_env(h1);
    assert!(env.contains(&format!("FLANNEL_IPV6_NETWORK={IPV6_NETWORK}")), "{env}");
    assert!(env.contains("FLANNEL_MTU=1430"), "dual stack: underlay 1500 - 70 (IPv6 VXLAN overhead):\n{env}");
    let subnets6: Vec<String> = hosts.iter().map(|h| subnet6_of(&o.subnet_env(*h))).collect();
    assert!(subnets6[0] != subnets6[1] && subnets6[1] != subnets6[2] && subnets6[0] != subnets6[2], "{subnets6:?}");

    // The devices: flannel-v6.1 is VXLAN over the host's IPv6 address, MTU underlay - 70.
    for h in hosts {
        let l6 = link_json(&o, h, "flannel-v6.1");
        let info = &l6["linkinfo"]["info_data"];
        assert_eq!(info["id"], 1, "{l6}");
        assert_eq!(info["local6"].as_str(), Some(o.lab.host_ip6(h).unwrap().to_string().as_str()), "{l6}");
        assert_eq!(info["port"], 8472, "{l6}");
        assert_eq!(l6["mtu"], 1430, "{l6}");
        assert_eq!(link_json(&o, h, "flannel.1")["mtu"], 1450);
        let addrs = o.lab.exec_ok(h, &["ip", "-6", "addr", "show", "dev", "flannel-v6.1"]).unwrap();
        let sn6 = subnet6_of(&o.subnet_env(h));
        let vtep6 = sn6.split('/').next().unwrap();
        assert!(addrs.contains(&format!("inet6 {vtep6}/128")), "VTEP address = the v6 subnet's network /128:\n{addrs}");
    }

    // The lease in etcd: dual-stack key, PublicIPv6 and BackendV6Data with flannel-v6.1's MAC.
    let kv = o.etcdctl(&["get", "--prefix", "/coreos.com/network/subnets/"]);
    let lines: Vec<&str> = kv.lines().collect();
    let s3 = subnet_of(&o.subnet_env(h3));
    let s3_6 = subnet6_of(&o.subnet_env(h3));
    let key3 = format!("/coreos.com/network/subnets/{}&{}", s3.replace('/', "-"), s3_6.replace('/', "-"));
    let pos = lines.iter().position(|l| *l == key3).unwrap_or_else(|| panic!("no key {key3}:\n{kv}"));
    let lease: Value = serde_json::from_str(lines[pos + 1]).unwrap();
    assert_eq!(lease["PublicIPv6"].as_str(), Some(h3_ip6.as_str()), "{lease}");
    assert_eq!(lease["PublicIP"].as_str(), Some(o.lab.host_ip(h3).to_string().as_str()), "{lease}");
    assert_eq!(lease["BackendV6Data"]["VNI"], 1, "{lease}");
    assert_eq!(lease["BackendV6Data"]["VtepMAC"], link_json(&o, h3, "flannel-v6.1")["address"], "{lease}");
    assert_eq!(lease["BackendData"]["VtepMAC"], link_json(&o, h3, "flannel.1")["address"], "{lease}");

    // h1 reaches h3's IPv6 subnet through flannel-v6.1, next hop = h3's v6 VTEP address.
    let vtep3 = s3_6.split('/').next().unwrap().to_string();
    o.wait_routes6(
        h1,
        |r| r.lines().any(|l| l.starts_with(&s3_6) && l.contains(&format!("via {vtep3} dev flannel-v6.1"))),
        "onlink route to h3's IPv6 subnet",
    );
    let neigh = o.lab.exec_ok(h1, &["ip", "-6", "neigh", "show", "dev", "flannel-v6.1"]).unwrap();
    assert!(neigh.contains(&vtep3) && neigh.contains("PERMANENT"), "{neigh}");
    let fdb = o.lab.exec_ok(h1, &["bridge", "fdb", "show", "dev", "flannel-v6.1"]).unwrap();
    assert!(fdb.contains(&format!("dst {h3_ip6}")), "FDB entry to h3's PublicIPv6:\n{fdb}");

    // Containers get both families; eth0's MTU fits flannel-v6.
    let ctrs: Vec<_> = hosts.iter().map(|h| o.attach(*h)).collect();
    for (c, ips) in &ctrs {
        assert!(ips.iter().any(IpAddr::is_ipv4) && ips.iter().any(IpAddr::is_ipv6), "{ips:?}");
        let mtu = o.lab.exec_ok(*c, &["cat", "/sys/class/net/eth0/mtu"]).unwrap();
        assert_eq!(mtu.trim(), "1430");
        let r6 = o.lab.exec_ok(*c, &["ip", "-6", "route", "show"]).unwrap();
        assert!(r6.contains(IPV6_NETWORK) && r6.contains("default via"), "container IPv6 routes:\n{r6}");
    }

    // IPv6 between containers on different hosts is VXLAN over the IPv6 underlay.
    let cap = o.lab.capture(h1, "eth0", "ip6 and udp port 8472", 2, Duration::from_secs(10)).unwrap();
    for (i, (c, _)) in ctrs.iter().enumerate() {
        for (j, (_, ips)) in ctrs.iter().enumerate() {
            if i != j {
                let dst = v6(ips);
                assert!(o.lab.ping_until(*c, dst, Duration::from_secs(5)), "container {i} -> {j} ({dst})");
            }
        }
    }
    let seen = cap.wait();
    assert!(seen.contains("IP6") && seen.contains(".8472"), "no IPv6 VXLAN packet on the underlay: {seen}");
    // IPv4 still works, over the IPv4 underlay.
    let cap4 = o.lab.capture(h1, "eth0", "ip and udp port 8472", 1, Duration::from_secs(5)).unwrap();
    let ip3 = ctrs[2].1.iter().find(|ip| ip.is_ipv4()).copied().unwrap();
    assert!(o.lab.ping_until(ctrs[0].0, ip3, Duration::from_secs(5)), "IPv4 across the router");
    assert!(cap4.wait().contains(".8472"));
    // --ip-masq for IPv6: the source survives between containers (across the router), and a
    // datagram leaving IPv6Network (to h2's underlay address) leaves with h1's address.
    let src = udp_source(&o.lab, ctrs[0].0, ctrs[2].0, v6(&ctrs[2].1).into());
    assert_eq!(src, v6(&ctrs[0].1).to_string(), "container IPv6 source preserved");
    let h2_ip6 = o.lab.host_ip6(h2).unwrap();
    let src = udp_source(&o.lab, ctrs[0].0, h2, h2_ip6.into());
    assert_eq!(src, o.lab.host_ip6(h1).unwrap().to_string(), "IPv6 leaving the network is masqueraded");

    // The largest IPv6 packet the MTU allows goes through unfragmented (1430 - 40 - 8 = 1382
    // bytes of payload), one byte more is refused locally.
    let dst3 = v6(&ctrs[2].1).to_string();
    let big = |size: &str| o.lab.exec(ctrs[0].0, &["ping", "-6", "-c", "1", "-W", "2", "-M", "do", "-s", size, &dst3]);
    let ok = big("1382").unwrap();
    assert!(ok.status.success(), "1430-byte IPv6 packet: {}", String::from_utf8_lossy(&ok.stdout));
    assert!(!big("1383").unwrap().status.success(), "1431 bytes exceed the pod MTU");

    // Removing h3 removes its IPv6 routes, neighbour and FDB entries everywhere; h3 tears down.
    let out = Command::new(bin())
        .args(["remove-host", "--etcd-endpoints", &o.lab.etcd_local_url().unwrap(), &s3])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for h in [h1, h2] {
        o.wait_routes6(h, |r| !r.contains(&s3_6), "IPv6 route to the removed host should vanish");
        o.wait_routes(h, |r| !r.contains(&s3), "IPv4 route to the removed host should vanish");
        let neigh = o.lab.exec_ok(h, &["ip", "-6", "neigh", "show", "dev", "flannel-v6.1"]).unwrap();
        assert!(!neigh.contains(&vtep3), "{neigh}");
        let fdb = o.lab.exec_ok(h, &["bridge", "fdb", "show", "dev", "flannel-v6.1"]).unwrap();
        assert!(!fdb.contains(&h3_ip6), "{fdb}");
    }
    let g3 = o.agents[h3.0].take().unwrap();
    assert!(g3.wait_timeout(Duration::from_secs(10)).is_some_and(|s| !s.success()), "agent exits on lease loss");
    let links = o.lab.exec_ok(h3, &["ip", "-o", "link"]).unwrap();
    assert!(!links.contains("flannel"), "both devices removed after lease loss:\n{links}");
    // The two remaining hosts still talk IPv6.
    assert!(o.lab.ping_until(ctrs[0].0, v6(&ctrs[1].1), Duration::from_secs(5)));
}

#[test]
fn dual_stack_direct_routing_uses_plain_ipv6_routes_on_the_segment_and_vxlan_across_the_router() {
    let mut o = Overlay::new("ovl6dr", dual_conf(json!({"Type": "vxlan", "DirectRouting": true})), &[]);
    let a = o.lab.segment_with_ipv6("192.168.73.0/24", "fd00:73::/64").unwrap();
    let b = o.lab.segment_with_ipv6("192.168.74.0/24", "fd00:74::/64").unwrap();
    let h1 = o.lab.host(a).unwrap();
    let h2 = o.lab.host(a).unwrap();
    o.lab.router(&[a, b]).unwrap();
    let h3 = o.lab.host(b).unwrap();
    for h in [h1, h2, h3] {
        o.start_agent(h);
    }
    let (c1, _) = o.attach(h1);
    let (_, ips2) = o.attach(h2);
    let (_, ips3) = o.attach(h3);
    let s2 = subnet6_of(&o.subnet_env(h2));
    let s3 = subnet6_of(&o.subnet_env(h3));
    let h2_ip6 = o.lab.host_ip6(h2).unwrap();
    o.wait_routes6(h1, |r| r.contains(&format!("{s2} via {h2_ip6} dev eth0")), "same segment: plain IPv6 route");
    o.wait_routes6(
        h1,
        |r| r.lines().any(|l| l.starts_with(&s3) && l.contains("flannel-v6.1") && l.contains("onlink")),
        "across the router: IPv6 VXLAN",
    );
    let cap = o.lab.capture(h1, "eth0", "ip6 and udp port 8472", 1, Duration::from_secs(5)).unwrap();
    assert!(o.lab.ping_until(c1, v6(&ips3), Duration::from_secs(5)), "through the router");
    assert!(cap.wait().contains(".8472"), "cross-segment IPv6 traffic is VXLAN");
    let cap = o.lab.capture(h1, "eth0", "ip6 and udp port 8472", 1, Duration::from_secs(2)).unwrap();
    assert!(o.lab.ping_until(c1, v6(&ips2), Duration::from_secs(5)), "same segment, plain route");
    assert!(!cap.wait().contains(".8472"), "same-segment IPv6 traffic is not encapsulated");
}

#[test]
fn dual_stack_host_gw_routes_both_families_via_the_peers_public_addresses() {
    let mut o = Overlay::new("ovl6gw", dual_conf(json!({"Type": "host-gw"})), &[]);
    let a = o.lab.segment_with_ipv6("192.168.75.0/24", "fd00:75::/64").unwrap();
    let h1 = o.lab.host(a).unwrap();
    let h2 = o.lab.host(a).unwrap();
    o.start_agent(h1);
    o.start_agent(h2);
    assert!(o.subnet_env(h1).contains("FLANNEL_MTU=1500"), "host-gw: no encapsulation");
    let (c1, ips1) = o.attach(h1);
    let (c2, ips2) = o.attach(h2);
    let s2 = subnet6_of(&o.subnet_env(h2));
    let h2_ip6 = o.lab.host_ip6(h2).unwrap();
    o.wait_routes6(h1, |r| r.contains(&format!("{s2} via {h2_ip6} dev eth0")), "host-gw IPv6 route");
    let links = o.lab.exec_ok(h1, &["ip", "-o", "link"]).unwrap();
    assert!(!links.contains("flannel"), "host-gw creates no device:\n{links}");
    assert!(o.lab.ping_until(c1, v6(&ips2), Duration::from_secs(5)));
    assert!(o.lab.ping_until(c2, v6(&ips1), Duration::from_secs(5)));
    assert!(o.lab.ping_until(c1, ips2[0], Duration::from_secs(5)), "IPv4 too");
}

#[test]
fn enable_ipv6_without_an_ipv6_underlay_is_a_clear_error_and_programs_nothing() {
    let mut o = Overlay::new("ovl6no", dual_conf(json!({"Type": "vxlan"})), &[]);
    let seg = o.lab.segment("192.168.76.0/24").unwrap();
    let h = o.lab.host(seg).unwrap();
    let args = o.agent_args(h);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let g = o.lab.spawn(h, bin().to_str().unwrap(), &args, &[]).unwrap();
    let status = g.wait_timeout(Duration::from_secs(15)).expect("agent exits");
    assert!(!status.success());
    let log = g.log();
    assert!(log.contains("EnableIPv6") && log.contains("eth0") && log.contains("--public-ipv6"), "{log}");
    assert!(!o.subnet_file(h).exists());
    let links = o.lab.exec_ok(h, &["ip", "-o", "link"]).unwrap();
    assert!(!links.contains("flannel"), "nothing half-programmed: {links}");
    assert!(
        o.etcdctl(&["get", "--prefix", "--keys-only", "/coreos.com/network/subnets/"]).trim().is_empty(),
        "no lease"
    );
}
