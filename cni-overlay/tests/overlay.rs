//! cni-overlay across hosts in the lab: real etcd, one agent per host
//! namespace, containers attached through the CNI plugin, real packets.
//! The lab's segments are bridges in a private switch namespace, so hosts
//! reach each other's containers only through what the agents program.

mod common;

use std::net::Ipv4Addr;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{bin, conf, subnet_of, udp_source, Overlay};
use serde_json::json;
use testkit::lab::{ContainerId, HostId, Node};

#[test]
fn containers_on_three_hosts_talk_over_vxlan_and_hosts_join_and_leave() {
    let mut o = Overlay::new("ovl3", conf(json!({})), &["--ip-masq"]);
    let seg = o.lab.segment("192.168.60.0/24").unwrap();
    let hosts: Vec<HostId> = (0..3).map(|_| o.lab.host(seg).unwrap()).collect();
    for h in &hosts {
        o.start_agent(*h);
    }
    let env = o.subnet_env(hosts[0]);
    assert!(env.contains("FLANNEL_NETWORK=10.244.0.0/16") && env.contains("FLANNEL_MTU=1450"), "{env}");
    assert!(env.contains("FLANNEL_IPMASQ=true"), "{env}");
    let subnets: Vec<String> = hosts.iter().map(|h| subnet_of(&o.subnet_env(*h))).collect();
    assert!(subnets[0] != subnets[1] && subnets[1] != subnets[2] && subnets[0] != subnets[2], "{subnets:?}");

    let ctrs: Vec<(ContainerId, Ipv4Addr)> = hosts.iter().map(|h| o.container(*h)).collect();
    let mtu = o.lab.exec_ok(ctrs[0].0, &["cat", "/sys/class/net/eth0/mtu"]).unwrap();
    assert_eq!(mtu.trim(), "1450", "container MTU = underlay 1500 - 50");

    // Cross-host traffic is VXLAN on the wire.
    let cap = o.lab.capture(hosts[0], "eth0", "udp port 8472", 1, Duration::from_secs(5)).unwrap();
    for (i, (a, _)) in ctrs.iter().enumerate() {
        for (j, (_, ip)) in ctrs.iter().enumerate() {
            if i != j {
                assert!(o.lab.ping_until(*a, *ip, Duration::from_secs(5)), "container {i} -> {j} ({ip})");
            }
        }
    }
    let seen = cap.wait();
    assert!(seen.contains(".8472"), "no VXLAN packet on the underlay: {seen}");

    // --ip-masq masquerades only traffic leaving the Network: container sources survive between hosts,
    // while a datagram to another host's underlay address leaves with its host's address.
    assert_eq!(udp_source(&o.lab, ctrs[0].0, ctrs[1].0, ctrs[1].1.into()), ctrs[0].1.to_string());
    let h1_ip = o.lab.host_ip(hosts[1]);
    assert_eq!(udp_source(&o.lab, ctrs[0].0, hosts[1], h1_ip.into()), o.lab.host_ip(hosts[0]).to_string());

    // A fourth host joins and is reachable from all.
    let h4 = o.lab.host(seg).unwrap();
    o.start_agent(h4);
    let (c4, ip4) = o.container(h4);
    for (c, ip) in &ctrs {
        assert!(o.lab.ping_until(*c, ip4, Duration::from_secs(5)), "to the new host's container");
        assert!(o.lab.ping_until(c4, *ip, Duration::from_secs(5)), "from the new host's container");
    }
    let leases =
        Command::new(bin()).args(["leases", "--etcd-endpoints", &o.lab.etcd_local_url().unwrap()]).output().unwrap();
    let table = String::from_utf8_lossy(&leases.stdout);
    assert_eq!(table.lines().count(), 5, "header + 4 leases:\n{table}");

    // Removing the fourth host removes its routes everywhere and tears it down.
    let s4 = subnet_of(&o.subnet_env(h4));
    o.remove_host(&s4);
    for h in &hosts {
        o.wait_routes(*h, |r| !r.contains(&s4), "route to the removed host should vanish");
    }
    let g4 = o.agents[h4.0].take().unwrap();
    assert!(g4.wait_timeout(Duration::from_secs(10)).is_some_and(|s| !s.success()), "agent exits on lease loss");
    assert!(!o.subnet_file(h4).exists(), "subnet file removed after lease loss");
    assert!(o.lab.exec(h4, &["ip", "link", "show", "flannel.1"]).unwrap().status.code() != Some(0), "device removed");

    // STATUS says 50 while the host is not ready, DEL still works.
    let (ok, v) = o.lab.cni(h4, &bin(), "STATUS", c4, "eth0", &o.plugin_conf(h4), &[]).unwrap();
    assert!(!ok && v["code"] == 50, "{v}");
    let (ok, v) = o.lab.cni(h4, &bin(), "DEL", c4, "eth0", &o.plugin_conf(h4), &[]).unwrap();
    assert!(ok, "{v}");
}

#[test]
fn direct_routing_uses_plain_routes_on_the_segment_and_vxlan_across_the_router() {
    let mut o =
        Overlay::new("ovldr", conf(json!({"Backend": {"Type": "vxlan", "DirectRouting": true}})), &["--ip-masq"]);
    let a = o.lab.segment("192.168.61.0/24").unwrap();
    let b = o.lab.segment("192.168.62.0/24").unwrap();
    let h1 = o.lab.host(a).unwrap();
    let h2 = o.lab.host(a).unwrap();
    let h3 = o.lab.host(b).unwrap();
    o.lab.router(&[a, b]).unwrap();
    for h in [h1, h2, h3] {
        o.start_agent(h);
    }
    let (c1, _) = o.container(h1);
    let (_, ip2) = o.container(h2);
    let (_, ip3) = o.container(h3);
    let s2 = subnet_of(&o.subnet_env(h2));
    let s3 = subnet_of(&o.subnet_env(h3));
    let h2_ip = o.lab.host_ip(h2);
    o.wait_routes(h1, |r| r.contains(&format!("{s2} via {h2_ip} dev eth0")), "same segment: plain route");
    o.wait_routes(
        h1,
        |r| r.lines().any(|l| l.starts_with(&s3) && l.contains("flannel.1") && l.contains("onlink")),
        "across the router: VXLAN",
    );
    assert!(o.lab.ping_until(c1, ip2, Duration::from_secs(5)), "same segment, plain route");
    let cap = o.lab.capture(h1, "eth0", "udp port 8472", 1, Duration::from_secs(5)).unwrap();
    assert!(o.lab.ping_until(c1, ip3, Duration::from_secs(5)), "through the router");
    assert!(cap.wait().contains(".8472"), "cross-segment traffic is VXLAN");
}

#[test]
fn agent_restart_keeps_the_subnet_and_an_established_tcp_stream_and_etcd_restart_is_survived() {
    let mut o = Overlay::new("ovlrs", conf(json!({})), &[]);
    let seg = o.lab.segment("192.168.63.0/24").unwrap();
    let h1 = o.lab.host(seg).unwrap();
    let h2 = o.lab.host(seg).unwrap();
    o.start_agent(h1);
    o.start_agent(h2);
    let (c1, _) = o.container(h1);
    let (c2, ip2) = o.container(h2);
    let before = subnet_of(&o.subnet_env(h1));

    // A TCP stream from c1 to c2 that must survive h1's agent restart.
    let flag = o.lab.dir().join("go-on");
    let server = "import socket\ns=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);s.bind(('0.0.0.0',7777));s.listen(1)\nprint('listening',flush=True)\nc,_=s.accept()\nwhile True:\n d=c.recv(64)\n if not d: break\n c.sendall(d)\n";
    let srv = o.lab.spawn(c2, "python3", &["-c", server], &[]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !srv.log().contains("listening") {
        assert!(srv.is_running(), "TCP server exited: {}", srv.log());
        assert!(Instant::now() < deadline, "TCP server not listening: {}", srv.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let client = format!(
        "import socket,os,time\nc=socket.create_connection(('{ip2}',7777),timeout=5)\nc.sendall(b'one');assert c.recv(64)==b'one'\nprint('first',flush=True)\nwhile not os.path.exists('{}'): time.sleep(0.05)\nc.sendall(b'two');assert c.recv(64)==b'two'\nprint('second',flush=True)\n",
        flag.display()
    );
    let cl = o.lab.spawn(c1, "python3", &["-c", &client], &[]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !cl.log().contains("first") {
        assert!(Instant::now() < deadline, "stream never started: {}", cl.log());
        std::thread::sleep(Duration::from_millis(50));
    }
    let old = o.stop_agent(h1);
    assert!(o.subnet_file(h1).exists(), "shutdown keeps the subnet file:\n{}", old.log());
    o.start_agent(h1);
    assert_eq!(subnet_of(&o.subnet_env(h1)), before, "restart keeps the subnet");
    std::fs::write(&flag, b"").unwrap();
    assert!(cl.wait_timeout(Duration::from_secs(10)).is_some_and(|s| s.success()), "stream cut: {}", cl.log());
    assert!(cl.log().contains("second"));

    // etcd restarts: agents reconnect and a host that joins afterwards is reachable.
    o.lab.restart_etcd().unwrap();
    let h3 = o.lab.host(seg).unwrap();
    o.start_agent(h3);
    let (_, ip3) = o.container(h3);
    assert!(
        o.lab.ping_until(c1, ip3, Duration::from_secs(10)),
        "h1's agent learned of h3 after the etcd restart:\n{}",
        o.agents[h1.0].as_ref().map(|g| g.log()).unwrap_or_default()
    );
    assert!(o.lab.ping_until(c2, ip3, Duration::from_secs(10)));
}

#[test]
fn a_bad_config_is_a_clear_error_and_programs_nothing() {
    let mut o = Overlay::new("ovlbad", json!({"Network": "10.244.0.0/16", "Backend": {"Type": "udp"}}), &[]);
    let seg = o.lab.segment("192.168.64.0/24").unwrap();
    let h = o.lab.host(seg).unwrap();
    let args = o.agent_args(h);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let g = o.lab.spawn(h, bin().to_str().unwrap(), &args, &[]).unwrap();
    let status = g.wait_timeout(Duration::from_secs(15)).expect("agent exits on a bad config");
    assert!(!status.success());
    assert!(g.log().contains("udp") && g.log().contains("vxlan"), "error names the problem: {}", g.log());
    assert!(!Path::new(&o.subnet_file(h)).exists());
    let links = o.lab.exec_ok(h, &["ip", "-o", "link"]).unwrap();
    assert!(!links.contains("flannel"), "nothing half-programmed: {links}");
    let _ = Node::Root;
}
