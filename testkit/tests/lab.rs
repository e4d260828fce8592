//! The multi-host lab (testkit::lab) on real namespaces: L2 segments,
//! a router between segments, captures, etcd over the mgmt network,
//! processes, containers and CNI execution, and a teardown that leaves
//! nothing behind (also when the test panics). Needs root.

use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::lab::{HostId, Lab, Node};
use testkit::util::{pid_alive, run, R};

fn require_root() {
    assert!(nix::unistd::geteuid().is_root(), "the lab creates network namespaces and bridges: run as root");
}

/// What a lab made, captured before dropping it.
struct Made {
    netns: Vec<String>,
    links: Vec<String>,
    dir: PathBuf,
}

impl Made {
    fn of(lab: &Lab) -> Made {
        Made { netns: lab.netns_names(), links: lab.root_links(), dir: lab.dir().to_path_buf() }
    }

    /// Asserts that no netns, root-netns link or temp dir of the lab is left.
    fn assert_gone(&self) {
        assert!(!self.netns.is_empty() && !self.links.is_empty());
        let listed = run("ip", &["netns", "list"]).expect("ip netns list");
        let names: Vec<&str> = listed.lines().filter_map(|l| l.split_whitespace().next()).collect();
        for n in &self.netns {
            assert!(!names.contains(&n.as_str()), "netns {n} left behind:\n{listed}");
        }
        let links = run("ip", &["-j", "link", "show"]).expect("ip link");
        let v: Value = serde_json::from_str(&links).expect("ip -j link json");
        let ifnames: Vec<&str> = v.as_array().into_iter().flatten().filter_map(|l| l["ifname"].as_str()).collect();
        for l in &self.links {
            assert!(!ifnames.contains(&l.as_str()), "link {l} left behind: {ifnames:?}");
        }
        assert!(!self.dir.exists(), "{} left behind", self.dir.display());
    }
}

fn mtu(lab: &Lab, h: HostId, ifname: &str) -> R<u64> {
    let out = lab.exec_ok(h, &["ip", "-j", "link", "show", "dev", ifname])?;
    let v: Value = serde_json::from_str(&out).map_err(|e| e.to_string())?;
    v[0]["mtu"].as_u64().ok_or_else(|| format!("no mtu in {out}"))
}

#[test]
fn three_hosts_on_one_segment_ping_each_other() -> R<()> {
    require_root();
    let mut lab = Lab::new("seg")?;
    let s = lab.segment("192.168.77.0/24")?;
    let hosts = [lab.host(s)?, lab.host(s)?, lab.host_with_mtu(s, 1400)?];
    let ips: Vec<Ipv4Addr> = hosts.iter().map(|h| lab.host_ip(*h)).collect();
    assert_eq!(ips, ["192.168.77.1", "192.168.77.2", "192.168.77.3"].map(|a| a.parse::<Ipv4Addr>().unwrap()));
    assert_eq!(mtu(&lab, hosts[0], "eth0")?, 1500);
    assert_eq!(mtu(&lab, hosts[2], "eth0")?, 1400);
    for a in hosts {
        for b in hosts {
            if a != b {
                assert!(lab.ping(a, lab.host_ip(b)), "{} -> {}", lab.host_ns(a), lab.host_ip(b));
            }
        }
        // The mgmt network: the root netns side and the other hosts.
        assert!(lab.ping(a, lab.mgmt_gateway()), "{} -> mgmt gateway", lab.host_ns(a));
    }
    assert!(lab.ping(hosts[0], lab.mgmt_ip(hosts[1])));
    // Nothing answers outside the segment (no default route, no router).
    assert!(!lab.ping(hosts[0], Ipv4Addr::new(192, 168, 78, 1)));
    let made = Made::of(&lab);
    drop(lab);
    made.assert_gone();
    Ok(())
}

#[test]
fn router_joins_two_segments_and_capture_sees_the_icmp() -> R<()> {
    require_root();
    let mut lab = Lab::new("rtr")?;
    let (a, b) = (lab.segment("192.168.81.0/24")?, lab.segment("192.168.82.0/24")?);
    let ha = lab.host(a)?; // before the router: route added by router()
    let r = lab.router(&[a, b])?;
    let hb = lab.host(b)?; // after the router: route added by host()
    assert_eq!(lab.host_ip_on(r, a), Some(Ipv4Addr::new(192, 168, 81, 254)));
    assert_eq!(lab.host_ip_on(r, b), Some(Ipv4Addr::new(192, 168, 82, 254)));
    assert_eq!(lab.hosts(), vec![ha, hb]);
    let (ipa, ipb) = (lab.host_ip(ha), lab.host_ip(hb));

    let cap = lab.capture(ha, "eth0", "icmp", 2, Duration::from_secs(5))?;
    // The same packets on the wire of segment B: the router's port in the switch netns.
    let port = lab.switch_port(r, b).ok_or("router has no port on b")?;
    let wire = lab.capture(Node::Switch, &port, "icmp", 2, Duration::from_secs(5))?;
    assert!(lab.ping(ha, ipb), "{ipa} -> {ipb} through the router");
    let lines = cap.wait();
    assert!(lines.contains(&format!("{ipa} > {ipb}: ICMP echo request")), "capture:\n{lines}");
    assert!(lines.contains(&format!("{ipb} > {ipa}: ICMP echo reply")), "capture:\n{lines}");
    let lines = wire.wait();
    assert!(lines.contains(&format!("{ipa} > {ipb}: ICMP echo request")), "capture on {port}:\n{lines}");

    // What the overlay will do: VXLAN between the hosts, across the router.
    let wire = lab.capture(Node::Switch, &port, "udp port 4789", 1, Duration::from_secs(5))?;
    for (h, local, remote, addr) in [(ha, ipa, ipb, "10.99.0.1/24"), (hb, ipb, ipa, "10.99.0.2/24")] {
        let (l, r) = (local.to_string(), remote.to_string());
        lab.exec_ok(
            h,
            &["ip", "link", "add", "vx0", "type", "vxlan", "id", "42", "local", &l, "remote", &r, "dstport", "4789"],
        )?;
        lab.exec_ok(h, &["ip", "addr", "add", addr, "dev", "vx0"])?;
        lab.exec_ok(h, &["ip", "link", "set", "vx0", "up"])?;
    }
    assert!(lab.ping(ha, Ipv4Addr::new(10, 99, 0, 2)), "ping over VXLAN across the router");
    let lines = wire.wait();
    assert!(lines.contains(&format!("{ipa}.")) && lines.contains("VXLAN"), "capture on {port}:\n{lines}");

    // One routed hop: the TTL went down by one.
    let out = lab.exec_ok(hb, &["ping", "-c", "1", "-W", "1", &ipa.to_string()])?;
    assert!(out.contains("ttl=63"), "{out}");
    // A third segment that no router serves stays unreachable.
    let c = lab.segment("192.168.83.0/24")?;
    let hc = lab.host(c)?;
    assert!(!lab.ping(hc, ipa) && !lab.ping(ha, lab.host_ip(hc)));
    // The root netns routes nothing between segments: it has no leg on them.
    assert!(run("ip", &["-4", "addr", "show"])?.lines().all(|l| !l.contains("192.168.8")));

    // A missing interface is a capture error, not a hang.
    let err = lab.capture(ha, "nope0", "", 1, Duration::from_secs(1)).unwrap_err();
    assert!(err.contains("nope0"), "{err}");

    let made = Made::of(&lab);
    drop(lab);
    made.assert_gone();
    Ok(())
}

#[test]
fn dual_stack_segments_route_ipv6_through_the_router() -> R<()> {
    require_root();
    let mut lab = Lab::new("rtr6")?;
    let a = lab.segment_with_ipv6("192.168.84.0/24", "fd00:84::/64")?;
    let b = lab.segment_with_ipv6("192.168.85.0/24", "fd00:85::/64")?;
    let plain = lab.segment("192.168.86.0/24")?;
    let (h1, h2) = (lab.host(a)?, lab.host(a)?);
    let r = lab.router(&[a, b, plain])?;
    let h3 = lab.host(b)?;
    let h4 = lab.host(plain)?;
    assert_eq!(lab.segment_net6(a), Some("fd00:84::/64".parse().unwrap()));
    assert_eq!(lab.segment_net6(plain), None);
    assert_eq!(lab.host_ip6(h1), Some(Ipv6Addr::new(0xfd00, 0x84, 0, 0, 0, 0, 0, 1)));
    assert_eq!(lab.host_ip6(h2), Some(Ipv6Addr::new(0xfd00, 0x84, 0, 0, 0, 0, 0, 2)));
    assert_eq!(lab.host_ip6(r), Some(Ipv6Addr::new(0xfd00, 0x84, 0, 0, 0, 0, 0, 0xfe)));
    assert_eq!(lab.host_ip6(h4), None);
    let (ip1, ip2, ip3) = (lab.host_ip6(h1).unwrap(), lab.host_ip6(h2).unwrap(), lab.host_ip6(h3).unwrap());
    // Usable at once (nodad), both ways, on the segment and across the router
    // (forwarded first: the router has not talked to h3 before).
    let cap = lab.capture(h3, "eth0", "icmp6 and ip6[40] == 128", 1, Duration::from_secs(5))?;
    for (from, to) in [(h1, ip3), (h1, ip2), (h2, ip1), (h3, ip1), (h3, ip2)] {
        assert!(lab.ping(from, to), "{} -> {to}", lab.host_ns(from));
    }
    assert!(cap.wait().contains(&format!("{ip1} > {ip3}: ICMP6, echo request")));
    let out = lab.exec_ok(h3, &["ping", "-c", "1", "-W", "1", &ip1.to_string()])?;
    assert!(out.contains("ttl=63"), "one routed hop: {out}");
    // IPv4 is as before, and the IPv4-only segment has no IPv6.
    assert!(lab.ping(h1, lab.host_ip(h4)) && lab.ping(h4, lab.host_ip(h3)));
    assert!(!lab.exec_ok(h4, &["ip", "-6", "addr", "show", "dev", "eth0"])?.contains("inet6"));
    let made = Made::of(&lab);
    drop(lab);
    made.assert_gone();
    Ok(())
}

fn etcdctl(lab: &Lab, h: HostId, url: &str, args: &[&str]) -> R<String> {
    let mut argv =
        vec!["env", "ETCDCTL_API=3", "etcdctl", "--endpoints", url, "--dial-timeout=1s", "--command-timeout=3s"];
    argv.extend_from_slice(args);
    lab.exec_ok(h, &argv)
}

#[test]
fn etcd_reachable_from_a_host_and_keeps_data_across_restart() -> R<()> {
    require_root();
    let mut lab = Lab::new("etcd")?;
    let s = lab.segment("192.168.90.0/24")?;
    let h = lab.host(s)?;
    let url = lab.start_etcd()?;
    assert!(url.starts_with(&format!("http://{}:", lab.mgmt_gateway())), "{url}");
    assert_eq!(lab.start_etcd()?, url, "start_etcd is idempotent");
    etcdctl(&lab, h, &url, &["put", "/lab/key", "v1"])?;
    assert_eq!(etcdctl(&lab, h, &url, &["get", "--print-value-only", "/lab/key"])?.trim(), "v1");

    let pid1 = lab.etcd_process().map(|p| p.pid()).ok_or("etcd not running")?;
    let url2 = lab.restart_etcd()?;
    assert_eq!(url2, url, "same ports after restart");
    let pid2 = lab.etcd_process().map(|p| p.pid()).ok_or("etcd not running")?;
    assert_ne!(pid1, pid2);
    assert!(!pid_alive(pid1), "old etcd still running");
    assert_eq!(etcdctl(&lab, h, &url, &["get", "--print-value-only", "/lab/key"])?.trim(), "v1");

    lab.stop_etcd()?;
    assert!(lab.etcd_process().is_none() && !pid_alive(pid2));
    assert!(etcdctl(&lab, h, &url, &["--command-timeout=1s", "get", "/lab/key"]).is_err(), "etcd answered after stop");
    let url3 = lab.restart_etcd()?;
    assert_eq!(etcdctl(&lab, h, &url3, &["get", "--print-value-only", "/lab/key"])?.trim(), "v1");
    let pid3 = lab.etcd_process().map(|p| p.pid()).ok_or("etcd not running")?;

    let made = Made::of(&lab);
    drop(lab);
    assert!(!pid_alive(pid3), "etcd survived the lab");
    made.assert_gone();
    Ok(())
}

const FAKE_PLUGIN: &str = r#"#!/bin/sh
conf=$(cat)
if [ "$CNI_COMMAND" = BAD ]; then
  echo '{"cniVersion":"1.0.0","code":7,"msg":"bad command"}'
  echo "bad command on stderr" >&2
  exit 1
fi
printf '{"hostNetns":"%s","netns":"%s","cmd":"%s","ifname":"%s","cid":"%s","args":"%s","path":"%s","conf":%s}\n' \
  "$(ip netns identify)" "$CNI_NETNS" "$CNI_COMMAND" "$CNI_IFNAME" "$CNI_CONTAINERID" "$CNI_ARGS" "$CNI_PATH" "$conf"
"#;

fn wait_for(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    f()
}

#[test]
fn processes_containers_and_cni_run_in_the_right_netns() -> R<()> {
    require_root();
    let mut lab = Lab::new("proc")?;
    let s = lab.segment("192.168.95.0/24")?;
    let h = lab.host(s)?;
    let c = lab.container(h)?;
    assert_eq!(lab.container_host(c), h);

    let g = lab.spawn(
        h,
        "sh",
        &["-c", "echo hello from $(ip netns identify) $LABVAR; exec sleep 60"],
        &[("LABVAR", "x1")],
    )?;
    assert!(wait_for(Duration::from_secs(3), || g.log().contains("hello")), "log: {}", g.log());
    assert!(g.log().contains(&format!("hello from {} x1", lab.host_ns(h))), "log: {}", g.log());
    assert!(g.is_running());
    let in_ctr = lab.spawn(c, "sleep", &["60"], &[])?;
    let (p1, p2) = (g.pid(), in_ctr.pid());
    assert!(g.terminate(Duration::from_secs(2)).is_some() && !pid_alive(p1));

    let dir = lab.dir().join("plugins");
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let plugin = dir.join("fake");
    std::fs::write(&plugin, FAKE_PLUGIN).map_err(|e| e.to_string())?;
    run("chmod", &["+x", &plugin.display().to_string()])?;
    let conf = json!({"cniVersion": "1.0.0", "name": "labnet", "type": "fake"});
    let (ok, v) = lab.cni(h, &plugin, "ADD", c, "eth0", &conf, &[("CNI_ARGS", "K=V")])?;
    assert!(ok, "{v}");
    assert_eq!(v["hostNetns"], lab.host_ns(h), "plugin runs inside the host netns: {v}");
    assert_eq!(v["netns"], lab.container_path(c).as_str());
    assert_eq!(v["cid"], lab.container_id(c));
    assert_eq!((v["cmd"].as_str(), v["ifname"].as_str(), v["args"].as_str()), (Some("ADD"), Some("eth0"), Some("K=V")));
    assert_eq!(Path::new(v["path"].as_str().unwrap_or("")), dir);
    assert_eq!(v["conf"], conf);
    let (ok, v) = lab.cni(h, &plugin, "BAD", c, "eth0", &conf, &[])?;
    assert!(!ok && v["code"] == 7, "{v}");
    let log = std::fs::read_to_string(lab.dir().join("cni.log")).map_err(|e| e.to_string())?;
    assert!(log.contains("bad command on stderr"), "{log}");

    assert!(lab.ping(c, Ipv4Addr::LOCALHOST), "container lo is up");
    lab.remove_container(c)?;

    let made = Made::of(&lab);
    drop(lab);
    assert!(!pid_alive(p2), "a process in a container survived the lab");
    drop(in_ctr); // a guard outliving its lab is harmless
    made.assert_gone();
    Ok(())
}

#[test]
fn a_panicking_test_still_leaves_nothing() {
    require_root();
    let made = std::sync::Mutex::new(None);
    let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let mut lab = Lab::new("panic").expect("lab");
        let s = lab.segment("192.168.99.0/24").expect("segment");
        let h = lab.host(s).expect("host");
        let g = lab.spawn(h, "sleep", &["60"], &[]).expect("spawn");
        *made.lock().unwrap() = Some((Made::of(&lab), g.pid()));
        std::mem::forget(g); // only the lab can clean it up now
        panic!("boom (expected by the test)");
    }));
    assert!(r.is_err());
    let (made, pid) = made.into_inner().unwrap().expect("lab was built");
    assert!(!pid_alive(pid), "process survived the panic");
    made.assert_gone();
}

#[test]
fn sweep_kills_a_dead_labs_process_and_waits_for_it() {
    require_root();
    // An owner pid that is certainly dead: a child we started and reaped.
    let mut gone = std::process::Command::new("true").spawn().expect("spawn true");
    let dead = gone.id();
    gone.wait().expect("wait true");
    assert!(!pid_alive(dead));
    let mut orphan = std::process::Command::new("sleep")
        .arg("60")
        .env(testkit::lab::LAB_ENV, format!("cft-{dead}-lab9"))
        .spawn()
        .expect("spawn sleep");
    let removed = testkit::lab::sweep_dead_labs();
    // Another test of this binary may start a lab (whose Lab::new sweeps too)
    // between the spawn and our sweep, and kill it first: then our report
    // does not name it, but it is killed all the same.
    let mine = format!("process {} of dead lab owner {dead}", orphan.id());
    let st = if removed.contains(&mine) {
        // Ours killed it, and waited: it has exited by the time the sweep returns.
        orphan.try_wait().expect("try_wait").expect("the swept process has exited when the sweep returns")
    } else {
        eprintln!("a concurrent sweep took {mine:?} (ours reported {removed:?})");
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(st) = orphan.try_wait().expect("try_wait") {
                break st;
            }
            assert!(Instant::now() < deadline, "the dead lab's process still runs 5 s after the sweep");
            std::thread::sleep(Duration::from_millis(5));
        }
    };
    use std::os::unix::process::ExitStatusExt;
    assert_eq!(st.signal(), Some(libc::SIGKILL), "the swept process was killed: {st:?}");
}
