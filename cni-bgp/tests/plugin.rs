//! The `cni-bgp` CNI plugin on real namespaces and links: each test's
//! "host" is a network namespace of its own with no default route, the
//! containers are namespaces too, and the real binary runs inside the host
//! namespace (`ip netns exec`) with the in-process `cni-ipam` on disk.

use std::io::Write;
use std::process::{Command, Stdio};

use serde_json::{json, Value};

use cni_bgp::names;
use testkit::util::{sh, uniq};

fn must(cmd: &str) -> String {
    let (ok, out) = sh(cmd);
    assert!(ok, "`{cmd}` failed: {out}");
    out
}

/// A test host: its namespace, container namespaces and directories, all
/// removed on drop (also when the test fails).
struct Host {
    name: String,
    ns: String,
    dir: String,
    conf: Value,
    containers: Vec<String>,
}

impl Host {
    fn new(subnet: &str) -> Host {
        assert!(nix::unistd::Uid::effective().is_root(), "these tests need root (netns, links)");
        let u = uniq();
        let name = format!("bg{u}");
        let ns = format!("{name}h");
        let dir = format!("/tmp/cni-bgp-plugin-{u}");
        must(&format!("ip netns add {ns}"));
        must(&format!("ip -n {ns} link set lo up"));
        let conf = json!({
            "cniVersion": "1.1.0", "name": name, "type": "cni-bgp",
            "dataDir": format!("{dir}/records"), "stateDir": format!("{dir}/state"),
            "ipam": {"type": "cni-ipam", "ranges": [[{"subnet": subnet}]], "dataDir": format!("{dir}/ipam")},
        });
        Host { name, ns, dir, conf, containers: vec![] }
    }

    fn container(&mut self) -> String {
        let c = format!("{}c{}", self.name, self.containers.len());
        must(&format!("ip netns add {c}"));
        must(&format!("ip -n {c} link set lo up"));
        self.containers.push(c.clone());
        c
    }

    fn call_with(&self, cmd: &str, cid: &str, netns: &str, conf: &Value) -> (bool, Value) {
        let out = self.spawn(cmd, cid, netns, conf).wait_with_output().unwrap();
        (out.status.success(), serde_json::from_slice(&out.stdout).unwrap_or(Value::Null))
    }

    /// The plugin running in the host namespace (`ip netns exec` execs it: its pid is the plugin's).
    fn spawn(&self, cmd: &str, cid: &str, netns: &str, conf: &Value) -> std::process::Child {
        let mut child = Command::new("ip")
            .args(["netns", "exec", &self.ns, env!("CARGO_BIN_EXE_cni-bgp")])
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", if netns.is_empty() { String::new() } else { format!("/var/run/netns/{netns}") })
            .env("CNI_IFNAME", "eth0")
            .env("CNI_PATH", "/usr/lib/cni")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn cni-bgp");
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        child
    }

    fn call(&self, cmd: &str, cid: &str, netns: &str) -> (bool, Value) {
        self.call_with(cmd, cid, netns, &self.conf)
    }

    fn add(&self, cid: &str, netns: &str) -> Value {
        let (ok, v) = self.call("ADD", cid, netns);
        assert!(ok, "ADD {cid} failed: {v}");
        v
    }

    fn check(&self, cid: &str, netns: &str, prev: &Value) -> (bool, Value) {
        let mut conf = self.conf.clone();
        conf["prevResult"] = prev.clone();
        self.call_with("CHECK", cid, netns, &conf)
    }

    fn gc(&self, valid: &[&str]) -> (bool, Value) {
        let mut conf = self.conf.clone();
        let list: Vec<Value> = valid.iter().map(|c| json!({"containerID": c, "ifname": "eth0"})).collect();
        conf["cni.dev/valid-attachments"] = json!(list);
        self.call_with("GC", "", "", &conf)
    }

    /// A link that is not ours under `name` (a veth: this kernel has no dummy links).
    fn foreign(&self, name: &str) {
        let (ok, out) = self.sh(&format!("ip link add {name} type veth peer name x{}", &name[4..]));
        assert!(ok, "create {name}: {out}");
    }

    fn sh(&self, cmd: &str) -> (bool, String) {
        sh(&format!("ip netns exec {} {cmd}", self.ns))
    }

    /// The `cali…` links of the host namespace.
    fn cali_links(&self) -> Vec<String> {
        let out = self.sh("ip -o link show").1;
        let mut v: Vec<String> = out
            .lines()
            .filter_map(|l| l.split(": ").nth(1))
            .map(|n| n.split('@').next().unwrap().to_string())
            .filter(|n| names::is_cali(n))
            .collect();
        v.sort();
        v
    }

    /// The addresses leased in the IPAM store.
    fn leases(&self) -> Vec<String> {
        let dir = std::path::Path::new(&self.dir).join("ipam").join(&self.name);
        let mut out: Vec<String> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.parse::<std::net::IpAddr>().is_ok())
            .collect();
        out.sort();
        out
    }

    fn records(&self) -> usize {
        std::fs::read_dir(format!("{}/records", self.dir)).map(|d| d.count()).unwrap_or(0)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        for c in &self.containers {
            sh(&format!("ip netns del {c} 2>/dev/null"));
        }
        sh(&format!("ip netns del {} 2>/dev/null", self.ns));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ip_of(result: &Value) -> String {
    result["ips"][0]["address"].as_str().unwrap().split('/').next().unwrap().to_string()
}

/// True as soon as an echo request is answered; at most three tries of 1 s each.
fn ping(ns: &str, ip: &str) -> bool {
    (0..3).any(|_| sh(&format!("ip netns exec {ns} ping -c1 -W1 {ip} >/dev/null 2>&1")).0)
}

#[test]
fn containers_reach_each_other_and_the_host_through_host_routes_without_a_bridge_or_default_route() {
    let mut h = Host::new("10.61.0.0/24");
    // The host's own address (on lo): the host namespace has no default route at all.
    must(&format!("ip -n {} addr add 192.168.61.1/32 dev lo", h.ns));
    assert!(!h.sh("ip route show default").1.contains("default"), "the host must have no default route");
    let (c1, c2) = (h.container(), h.container());
    let r1 = h.add("cid-a", &c1);
    let r2 = h.add("cid-b", &c2);
    let (ip1, ip2) = (ip_of(&r1), ip_of(&r2));

    // The result: host end and container end, /32, default via 169.254.1.1.
    let veth = names::host_veth("cid-a", "eth0");
    assert_eq!(r1["interfaces"][0]["name"], veth.as_str());
    assert_eq!(r1["interfaces"][0]["mac"], "ee:ee:ee:ee:ee:ee");
    assert_eq!(r1["interfaces"][1]["sandbox"], format!("/var/run/netns/{c1}"));
    assert!(r1["ips"][0]["address"].as_str().unwrap().ends_with("/32"), "{r1}");
    assert_eq!(r1["ips"][0]["interface"], 1);
    assert_eq!(r1["routes"], json!([{"dst": "0.0.0.0/0", "gw": "169.254.1.1"}]));

    // Host side: no bridge, no address, the Calico MAC, proxy ARP, a /32 route.
    let link = h.sh(&format!("ip -d link show {veth}")).1;
    assert!(link.contains("link/ether ee:ee:ee:ee:ee:ee"), "{link}");
    assert!(!link.contains("master"), "{link}");
    assert!(link.contains(&format!("alias cni-bgp net={} cid=cid-a if=eth0", h.name)), "{link}");
    assert!(!h.sh(&format!("ip -4 addr show dev {veth}")).1.contains("inet "), "the host end has no address");
    assert_eq!(h.sh(&format!("cat /proc/sys/net/ipv4/conf/{veth}/proxy_arp")).1.trim(), "1");
    let routes = h.sh("ip route show").1;
    assert!(routes.contains(&format!("{ip1} dev {veth} scope link")), "{routes}");
    assert!(!h.sh("ip link show type bridge").1.contains("state"), "no bridge on the host");

    // Container side: /32, link route and default via 169.254.1.1, permanent neighbour.
    let caddr = must(&format!("ip -n {c1} -4 addr show dev eth0"));
    assert!(caddr.contains(&format!("inet {ip1}/32")), "{caddr}");
    let croutes = must(&format!("ip -n {c1} route show"));
    assert!(croutes.contains("default via 169.254.1.1 dev eth0"), "{croutes}");
    assert!(croutes.contains("169.254.1.1 dev eth0 scope link"), "{croutes}");
    let neigh = must(&format!("ip -n {c1} neigh show dev eth0"));
    assert!(neigh.contains("169.254.1.1 lladdr ee:ee:ee:ee:ee:ee PERMANENT"), "{neigh}");

    assert!(ping(&c1, &ip2), "container to container through the host's /32 routes");
    assert!(ping(&c2, &ip1), "and back");
    assert!(ping(&c1, "192.168.61.1"), "container to the host's address");
    assert!(h.sh(&format!("ping -c1 -W1 {ip2}")).0, "host to container");

    // What makes it work without a default route: the permanent entry. Without
    // it the container's ARP for 169.254.1.1 goes unanswered (proxy ARP only
    // answers for addresses the host routes).
    must(&format!("ip -n {c1} neigh del 169.254.1.1 dev eth0"));
    assert!(!ping(&c1, &ip2), "no neighbour entry, no default route on the host: no answer");
}

#[test]
fn dual_stack_containers_route_v6_via_the_host_link_local() {
    let mut h = Host::new("10.69.0.0/24");
    h.conf["ipam"]["ranges"] = json!([[{"subnet": "10.69.0.0/24"}], [{"subnet": "fd00:69::/64"}]]);
    h.conf["mtu"] = json!(1400);
    let (c1, c2) = (h.container(), h.container());
    let r1 = h.add("cid-6a", &c1);
    let r2 = h.add("cid-6b", &c2);
    let v6 = |r: &Value| -> String {
        let a = r["ips"].as_array().unwrap().iter().find(|i| i["address"].as_str().unwrap().contains(':')).unwrap();
        let a = a["address"].as_str().unwrap();
        assert!(a.ends_with("/128"), "{r}");
        a.split('/').next().unwrap().to_string()
    };
    let (a1, a2) = (v6(&r1), v6(&r2));
    assert!(
        r1["routes"].as_array().unwrap().contains(&json!({"dst": "::/0", "gw": "fe80::ecee:eeff:feee:eeee"})),
        "{r1}"
    );
    let croutes = must(&format!("ip -n {c1} -6 route show"));
    assert!(croutes.contains("default via fe80::ecee:eeff:feee:eeee dev eth0"), "{croutes}");
    let veth = names::host_veth("cid-6a", "eth0");
    assert!(h.sh(&format!("ip link show {veth}")).1.contains("mtu 1400"), "mtu on the host end");
    assert!(must(&format!("ip -n {c1} link show eth0")).contains("mtu 1400"), "mtu in the container");
    assert_eq!(r1["interfaces"][1]["mtu"], 1400);
    let hroutes = h.sh("ip -6 route show").1;
    assert!(hroutes.contains(&format!("{a1} dev {veth}")), "{hroutes}");
    assert_eq!(h.sh("cat /proc/sys/net/ipv6/conf/all/forwarding").1.trim(), "1");
    // The host end's link-local address is there once DAD is done: wait for it.
    let ll_ready = |host: &Host, v: &str| {
        (0..50).any(|_| {
            let out = host.sh(&format!("ip -6 addr show dev {v} scope link")).1;
            out.contains("fe80::ecee:eeff:feee:eeee") && !out.contains("tentative") || {
                std::thread::sleep(std::time::Duration::from_millis(100));
                false
            }
        })
    };
    assert!(ll_ready(&h, &veth) && ll_ready(&h, &names::host_veth("cid-6b", "eth0")));
    let ping6 =
        |ns: &str, ip: &str| (0..3).any(|_| sh(&format!("ip netns exec {ns} ping -6 -c1 -W1 {ip} >/dev/null 2>&1")).0);
    assert!(ping6(&c1, &a2), "v6 container to container");
    assert!(ping(&c1, &ip_of(&r2)), "and v4 alongside");
    let (ok, v) = h.check("cid-6a", &c1, &r1);
    assert!(ok, "CHECK of a dual-stack attachment: {v}");
}

/// The IPv6 next hop in a host namespace whose new links would get a
/// stable-privacy link-local (mode 3) or none at all (mode 1): ADD makes
/// the host end's address the EUI-64 one the container routes through,
/// and CHECK notices when it is gone.
fn v6_gateway_with_host_addr_gen_mode(mode: u8) {
    let mut h = Host::new("10.71.0.0/24");
    h.conf["ipam"]["ranges"] = json!([[{"subnet": "10.71.0.0/24"}], [{"subnet": "fd00:71::/64"}]]);
    must(&format!("ip netns exec {} sysctl -qw net.ipv6.conf.default.stable_secret=fd00:1:2:3:4:5:6:7", h.ns));
    must(&format!("ip netns exec {} sysctl -qw net.ipv6.conf.default.addr_gen_mode={mode}", h.ns));
    let (c1, c2) = (h.container(), h.container());
    let r1 = h.add("cid-g1", &c1);
    let r2 = h.add("cid-g2", &c2);
    let v6 = |r: &Value| -> String {
        let a = r["ips"].as_array().unwrap().iter().find(|i| i["address"].as_str().unwrap().contains(':')).unwrap();
        a["address"].as_str().unwrap().split('/').next().unwrap().to_string()
    };
    let veth1 = names::host_veth("cid-g1", "eth0");
    let ll = format!("{}", names::GATEWAY_V6);
    let ready = |v: &str| {
        (0..50).any(|_| {
            let out = h.sh(&format!("ip -6 addr show dev {v} scope link")).1;
            out.contains(&ll) && !out.contains("tentative") || {
                std::thread::sleep(std::time::Duration::from_millis(100));
                false
            }
        })
    };
    assert!(
        ready(&veth1) && ready(&names::host_veth("cid-g2", "eth0")),
        "addr_gen_mode={mode}: the host end has {ll}: {}",
        h.sh(&format!("ip -6 addr show dev {veth1}")).1
    );
    let (a1, a2) = (v6(&r1), v6(&r2));
    let ping6 =
        |ns: &str, ip: &str| (0..3).any(|_| sh(&format!("ip netns exec {ns} ping -6 -c1 -W1 {ip} >/dev/null 2>&1")).0);
    assert!(ping6(&c1, &a2) && ping6(&c2, &a1), "addr_gen_mode={mode}: v6 container to container");
    let (ok, v) = h.check("cid-g1", &c1, &r1);
    assert!(ok, "CHECK: {v}");
    must(&format!("ip netns exec {} ip -6 addr del {ll}/64 dev {veth1}", h.ns));
    let (ok, v) = h.check("cid-g1", &c1, &r1);
    assert!(!ok && v["code"] == 120, "CHECK without the gateway address: {v}");
    assert!(v["msg"].as_str().unwrap().contains(&ll), "{v}");
}

#[test]
fn v6_gateway_exists_with_stable_privacy_addresses_on_the_host() {
    v6_gateway_with_host_addr_gen_mode(3);
}

#[test]
fn v6_gateway_exists_with_no_automatic_addresses_on_the_host() {
    v6_gateway_with_host_addr_gen_mode(1);
}

#[test]
fn a_failed_add_leaves_nothing_behind() {
    let mut h = Host::new("10.62.0.0/24");
    // Two addresses in the pool.
    h.conf["ipam"]["ranges"] =
        json!([[{"subnet": "10.62.0.0/24", "rangeStart": "10.62.0.10", "rangeEnd": "10.62.0.11"}]]);
    let c = h.container();

    // A foreign link under the name this attachment would get: refused and untouched.
    let taken = names::host_veth("cid-taken", "eth0");
    h.foreign(&taken);
    let (ok, err) = h.call("ADD", "cid-taken", &c);
    assert!(!ok, "ADD over a foreign link must fail");
    assert!(err["msg"].as_str().unwrap_or_default().contains("not this attachment's"), "{err}");
    assert!(h.sh(&format!("ip link show {taken} type veth")).0, "the foreign link stays");
    assert!(h.leases().is_empty(), "the lease was released: {:?}", h.leases());
    assert_eq!(h.records(), 0, "no record left");
    assert!(!sh(&format!("ip -n {c} link show eth0")).0, "no container end left");
    // DEL of the failed attachment does not touch the foreign link either.
    assert!(h.call("DEL", "cid-taken", &c).0);
    assert!(h.sh(&format!("ip link show {taken}")).0, "DEL left the foreign link alone");
    h.sh(&format!("ip link del {taken}"));

    // IPAM exhausted: the third ADD fails before any link exists.
    let (c1, c2, c3) = (h.container(), h.container(), h.container());
    h.add("cid-1", &c1);
    h.add("cid-2", &c2);
    let before = h.cali_links();
    let (ok, err) = h.call("ADD", "cid-3", &c3);
    assert!(!ok, "the pool is exhausted: {err}");
    assert_eq!(h.cali_links(), before, "no link for the failed ADD");
    assert!(!sh(&format!("ip -n {c3} link show eth0")).0);
    assert_eq!(h.leases().len(), 2);
    assert_eq!(h.records(), 2);
}

#[test]
fn del_is_idempotent_and_works_without_the_container() {
    let mut h = Host::new("10.63.0.0/24");
    let c = h.container();
    let r = h.add("cid-d", &c);
    let ip = ip_of(&r);
    assert!(h.call("DEL", "cid-d", &c).0);
    assert!(h.cali_links().is_empty());
    assert!(!h.sh("ip route show").1.contains(&ip), "host route gone with the link");
    assert!(h.leases().is_empty());
    assert_eq!(h.records(), 0);
    let (ok, v) = h.call("DEL", "cid-d", &c);
    assert!(ok, "second DEL: {v}");

    // The container's namespace deleted before DEL, then DEL without CNI_NETNS.
    let c2 = h.container();
    h.add("cid-e", &c2);
    must(&format!("ip netns del {c2}"));
    let (ok, v) = h.call("DEL", "cid-e", "");
    assert!(ok, "DEL with no netns: {v}");
    assert!(h.cali_links().is_empty(), "the veth died with the netns, nothing left: {:?}", h.cali_links());
    assert!(h.leases().is_empty(), "lease released without the netns");
    assert!(h.call("DEL", "cid-e", "").0, "and again");
}

#[test]
fn check_passes_then_detects_a_removed_host_route_and_neighbour() {
    let mut h = Host::new("10.64.0.0/24");
    let c = h.container();
    let r = h.add("cid-k", &c);
    let ip = ip_of(&r);
    let (ok, v) = h.check("cid-k", &c, &r);
    assert!(ok, "CHECK right after ADD: {v}");

    h.sh(&format!("ip route del {ip}/32"));
    let (ok, v) = h.check("cid-k", &c, &r);
    assert!(!ok);
    assert!(v["msg"].as_str().unwrap().contains("host route"), "{v}");
    let veth = names::host_veth("cid-k", "eth0");
    h.sh(&format!("ip route add {ip}/32 dev {veth} scope link"));
    assert!(h.check("cid-k", &c, &r).0, "repaired");

    must(&format!("ip -n {c} neigh del 169.254.1.1 dev eth0"));
    let (ok, v) = h.check("cid-k", &c, &r);
    assert!(!ok);
    assert!(v["msg"].as_str().unwrap().contains("neighbour"), "{v}");
}

#[test]
fn gc_removes_only_stale_attachments_of_its_own_network() {
    let mut h = Host::new("10.65.0.0/24");
    let (c1, c2) = (h.container(), h.container());
    let keep = h.add("cid-keep", &c1);
    h.add("cid-stale", &c2);
    // A Calico-shaped link that is not ours (no alias, no record), and one of another network.
    let foreign = names::host_veth("someone-else", "eth0");
    h.foreign(&foreign);
    let other_net = names::host_veth("other-net", "eth0");
    h.foreign(&other_net);
    h.sh(&format!("ip link set {other_net} alias 'cni-bgp net=othernet cid=other-net if=eth0'"));

    let (ok, v) = h.gc(&["cid-keep"]);
    assert!(ok, "GC: {v}");
    let mut want = vec![names::host_veth("cid-keep", "eth0"), foreign.clone(), other_net.clone()];
    want.sort();
    assert_eq!(h.cali_links(), want);
    assert_eq!(h.leases().len(), 1, "the stale lease was collected");
    assert_eq!(h.records(), 1);
    let (ok, v) = h.check("cid-keep", &c1, &keep);
    assert!(ok, "the valid attachment still checks: {v}");
}

#[test]
fn status_is_code_50_without_a_ready_agent() {
    let h = Host::new("10.66.0.0/24");
    let state = format!("{}/state", h.dir);
    let sock = format!("{state}/status.sock");

    let (ok, v) = h.call("STATUS", "", "");
    assert!(!ok);
    assert_eq!(v["code"], 50, "{v}");
    assert!(v["msg"].as_str().unwrap().contains(&sock), "names the path: {v}");

    // A stale socket file left by a killed agent: nobody listens.
    std::fs::create_dir_all(&state).unwrap();
    drop(std::os::unix::net::UnixListener::bind(&sock).unwrap());
    assert!(std::path::Path::new(&sock).exists());
    let (ok, v) = h.call("STATUS", "", "");
    assert!(!ok);
    assert_eq!(v["code"], 50, "{v}");
    assert!(v["msg"].as_str().unwrap().contains(&sock), "{v}");

    // An agent that answers "not ready", then one that answers ready.
    std::fs::remove_file(&sock).unwrap();
    let listener = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let agent = std::thread::spawn(move || {
        for ready in [false, true] {
            let (mut s, _) = listener.accept().unwrap();
            let a = cni_bgp::status::Answer { ready, message: (!ready).then(|| "no BGP session yet".into()) };
            s.write_all(a.to_line().as_bytes()).unwrap();
        }
    });
    let (ok, v) = h.call("STATUS", "", "");
    assert!(!ok);
    assert_eq!(v["code"], 50, "{v}");
    assert!(v["details"].as_str().unwrap_or_default().contains("no BGP session yet"), "{v}");
    let (ok, v) = h.call("STATUS", "", "");
    assert!(ok, "ready agent: {v}");
    agent.join().unwrap();
}

#[test]
fn nat_outgoing_masquerades_traffic_leaving_the_pool() {
    let mut h = Host::new("10.67.0.0/24");
    // An outside peer on a link of the host; it has no route back to the pool.
    let peer = h.container();
    must(&format!("ip link add {}o type veth peer name up0 netns {peer}", h.name));
    must(&format!("ip link set {}o netns {}", h.name, h.ns));
    h.sh(&format!("ip link set {}o name up0", h.name));
    h.sh("ip addr add 198.51.100.1/24 dev up0");
    h.sh("ip link set up0 up");
    must(&format!("ip -n {peer} addr add 198.51.100.2/24 dev up0"));
    must(&format!("ip -n {peer} link set up0 up"));

    let c = h.container();
    h.add("cid-plain", &c);
    assert!(!ping(&c, "198.51.100.2"), "without natOutgoing the peer cannot answer the pool address");
    assert!(h.call("DEL", "cid-plain", &c).0);

    h.conf["natOutgoing"] = json!(true);
    let r = h.add("cid-nat", &c);
    assert!(ping(&c, "198.51.100.2"), "masqueraded to the host's address, the peer answers");
    let table = names::nft_table(&h.name);
    let rules = h.sh(&format!("nft list table inet {table}")).1;
    assert!(rules.contains("ip saddr 10.67.0.0/24 ip daddr != 10.67.0.0/24"), "{rules}");
    assert!(rules.contains("masquerade"), "{rules}");
    // Inside the pool nothing is masqueraded: the host reaches the container at its own address.
    assert!(h.sh(&format!("ping -c1 -W1 {}", ip_of(&r))).0);

    // GC with no valid attachment left removes the network's table.
    assert!(h.gc(&[]).0);
    assert!(!h.sh(&format!("nft list table inet {table}")).0, "table removed by GC");
}

#[test]
fn version_lists_the_supported_versions() {
    let h = Host::new("10.68.0.0/24");
    let (ok, v) = h.call_with("VERSION", "", "", &json!({"cniVersion": "1.1.0"}));
    assert!(ok, "{v}");
    let versions = v["supportedVersions"].as_array().unwrap();
    for want in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        assert!(versions.iter().any(|x| x == want), "{want} in {v}");
    }
}

#[test]
fn a_link_left_without_its_alias_is_recognised_by_the_record_only() {
    // What an ADD killed between creating the veth and setting its alias
    // leaves: the link under our name, no alias, and the attachment's record.
    let h = Host::new("10.70.0.0/24");
    let (killed_del, killed_gc, no_record) =
        (names::host_veth("cid-kd", "eth0"), names::host_veth("cid-kg", "eth0"), names::host_veth("cid-nr", "eth0"));
    for l in [&killed_del, &killed_gc, &no_record] {
        h.foreign(l);
    }
    write_record_for(&h, "cid-kd");
    write_record_for(&h, "cid-kg");

    assert!(h.call("DEL", "cid-nr", "").0);
    assert!(h.sh(&format!("ip link show {no_record}")).0, "no alias, no record: not ours, DEL leaves it");
    assert!(h.call("DEL", "cid-kd", "").0);
    assert!(!h.sh(&format!("ip link show {killed_del}")).0, "DEL removed the link its record names");
    assert_eq!(h.records(), 1);
    let (ok, v) = h.gc(&[]);
    assert!(ok, "{v}");
    assert_eq!(h.cali_links(), vec![no_record], "GC removed the recorded link only");
    assert_eq!(h.records(), 0);

    // A re-ADD of an attachment whose killed ADD left link and record replaces the link.
    let mut h = h;
    must(&format!("ip -n {} addr add 192.168.70.1/32 dev lo", h.ns)); // a source address for the host's ping
    let c = h.container();
    let again = names::host_veth("cid-ka", "eth0");
    h.foreign(&again);
    write_record_for(&h, "cid-ka");
    let r = h.add("cid-ka", &c);
    assert_eq!(r["interfaces"][0]["name"], again.as_str());
    assert!(h.sh(&format!("ip -d link show {again}")).1.contains("alias cni-bgp"), "the new link has its alias");
    assert!(ping_host(&h, &ip_of(&r)), "and works");
}

fn write_record_for(h: &Host, cid: &str) {
    let dir = format!("{}/records", h.dir);
    std::fs::create_dir_all(&dir).unwrap();
    let rec = json!({"kind": "cni-bgp/attachment-v1", "network": h.name, "containerID": cid, "ifname": "eth0",
        "hostVeth": names::host_veth(cid, "eth0")});
    std::fs::write(format!("{dir}/{}+{cid}+eth0.json", h.name), rec.to_string()).unwrap();
}

fn ping_host(h: &Host, ip: &str) -> bool {
    (0..3).any(|_| h.sh(&format!("ping -c1 -W1 {ip}")).0)
}

/// A small deterministic generator for kill points (replayable from its seed).
struct Lcg(u64);

impl Lcg {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1_442_695_040_888_963_407);
        self.0 >> 33
    }
}

#[test]
fn adds_killed_at_random_points_leave_nothing_gc_cannot_attribute() {
    const KILLS: usize = 16;
    let mut h = Host::new("10.71.0.0/24");
    must(&format!("ip -n {} addr add 192.168.71.1/32 dev lo", h.ns));
    let mut up: Vec<String> = Vec::new();
    let mut took = std::time::Duration::MAX;
    for i in 0..3 {
        let c = h.container();
        let t = std::time::Instant::now();
        h.add(&format!("w{i}"), &c);
        took = took.min(t.elapsed());
        up.push(format!("w{i}"));
    }
    let seed = std::env::var("KILL_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64
    });
    eprintln!("SIGKILL points: seed {seed} (KILL_SEED to replay), one ADD takes {took:?}");
    let mut rng = Lcg(seed);
    let mut killed: Vec<(String, String)> = Vec::new();
    for i in 0..KILLS {
        let c = h.container();
        let cid = format!("k{i}");
        // Anywhere from exec to past a whole ADD.
        let at = std::time::Duration::from_micros(rng.next() % (took.as_micros() as u64 * 2 + 1));
        let mut child = h.spawn("ADD", &cid, &c, &h.conf);
        let start = std::time::Instant::now();
        while start.elapsed() < at {
            std::hint::spin_loop();
        }
        let _ = child.kill();
        if child.wait_with_output().unwrap().status.success() {
            up.push(cid);
        } else {
            killed.push((cid, c));
        }
    }
    eprintln!("{} ADDs killed, {} finished first", killed.len(), up.len() - 3);
    assert!(!killed.is_empty(), "no ADD was killed: the kill points missed");

    let valid: Vec<&str> = up.iter().map(String::as_str).collect();
    let (ok, v) = h.gc(&valid);
    assert!(ok, "GC: {v}");
    let mut want: Vec<String> = up.iter().map(|c| names::host_veth(c, "eth0")).collect();
    want.sort();
    assert_eq!(h.cali_links(), want, "exactly the host veths of the containers that came up");
    assert_eq!(h.leases().len(), up.len(), "one lease per container that came up");
    assert_eq!(h.records(), up.len(), "one record per container that came up");

    // Every killed container can be added again and works.
    for (cid, c) in &killed {
        let r = h.add(cid, c);
        assert!(ping_host(&h, &ip_of(&r)), "{cid} re-added and reachable");
    }
}
