//! cni-bridge features in real network namespaces with real packets.
//! Each test uses its own bridge, subnet, netns names and data dir, and
//! cleans up through Drop guards even when an assertion fails.

use std::process::{Command, Stdio};

use serde_json::{json, Value};

use testkit::util::{sh, uniq};

/// A test network: bridge, namespaces, data dir and nft tables, removed on drop.
struct Net {
    name: String,
    bridge: String,
    dir: String,
    conf: Value,
    netns: Vec<String>,
    extra_cleanup: Vec<String>,
}

impl Net {
    fn new(subnet: &str, extra: Value) -> Net {
        let u = uniq();
        let name = format!("bt{u}");
        let bridge = format!("btbr{u}");
        let dir = format!("/tmp/cni-bridge-test-{u}");
        let mut conf = json!({
            "cniVersion": "1.1.0", "name": name, "type": "cni-bridge", "bridge": bridge,
            "isGateway": true,
            "ipam": {"type": "cni-ipam", "ranges": [[{"subnet": subnet}]], "dataDir": dir},
        });
        for (k, v) in extra.as_object().unwrap() {
            conf[k] = v.clone();
        }
        Net { name, bridge, dir, conf, netns: vec![], extra_cleanup: vec![] }
    }

    fn netns(&mut self) -> String {
        let ns = format!("{}n{}", self.name, self.netns.len());
        assert!(sh(&format!("ip netns add {ns}")).0);
        self.netns.push(ns.clone());
        ns
    }

    fn call(&self, cmd: &str, cid: &str, ns: &str, ifname: &str, conf: &Value, args: &str) -> (bool, Value) {
        let mut child = Command::new(env!("CARGO_BIN_EXE_cni-bridge"))
            .env("CNI_COMMAND", cmd)
            .env("CNI_CONTAINERID", cid)
            .env("CNI_NETNS", if ns.is_empty() { String::new() } else { format!("/var/run/netns/{ns}") })
            .env("CNI_IFNAME", ifname)
            .env("CNI_PATH", "/usr/lib/cni")
            .env("CNI_ARGS", args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("spawn cni-bridge");
        use std::io::Write;
        child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
        let out = child.wait_with_output().unwrap();
        let v = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        (out.status.success(), v)
    }

    fn add(&self, cid: &str, ns: &str) -> Value {
        let (ok, v) = self.call("ADD", cid, ns, "eth0", &self.conf, "");
        assert!(ok, "ADD {cid} failed: {v}");
        v
    }

    fn del(&self, cid: &str, ns: &str) {
        let (ok, v) = self.call("DEL", cid, ns, "eth0", &self.conf, "");
        assert!(ok, "DEL {cid} failed: {v}");
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in &self.netns {
            sh(&format!("ip netns del {ns} 2>/dev/null"));
        }
        for c in &self.extra_cleanup {
            sh(c);
        }
        sh(&format!("ip link del {} 2>/dev/null", self.bridge));
        let table = cni_bridge::names::nft_table(&self.name);
        sh(&format!("nft delete table inet {table} 2>/dev/null; nft delete table bridge {table} 2>/dev/null"));
        sh(&format!("rm -f {}/{table}.*", cni_bridge::MASQ_MARKER_DIR));
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn ip_of(result: &Value, i: usize) -> String {
    result["ips"][i]["address"].as_str().unwrap().split('/').next().unwrap().to_string()
}

fn ping(ns: &str, ip: &str) -> bool {
    let ping = if ip.contains(':') { "ping -6" } else { "ping" };
    sh(&format!("ip netns exec {ns} {ping} -c1 -W1 {ip} >/dev/null 2>&1")).0
}

/// Sends one UDP datagram from `from_ns` to `to_ip:port` and returns the
/// source address the receiver in `to_ns` saw. The receiver says `ready`
/// once its socket is bound; only then is the datagram sent.
fn udp_source_seen(from_ns: &str, to_ns: &str, to_ip: &str) -> String {
    use std::io::{BufRead, BufReader};
    let port = 40000 + (uniq() % 20000);
    let recv = format!(
        "import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.bind(('0.0.0.0',{port}));print('ready',flush=True);d,a=s.recvfrom(64);print(a[0])"
    );
    let mut child = Command::new("ip")
        .args(["netns", "exec", to_ns, "timeout", "5", "python3", "-c", &recv])
        .stdout(Stdio::piped())
        .spawn()
        .expect("spawn the UDP receiver (python3)");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    assert_eq!(first, "ready", "UDP receiver in {to_ns} did not start");
    sh(&format!(
        "ip netns exec {from_ns} python3 -c \"import socket;s=socket.socket(socket.AF_INET,socket.SOCK_DGRAM);s.sendto(b'x',('{to_ip}',{port}))\""
    ));
    let seen = lines.next().and_then(|l| l.ok()).unwrap_or_default();
    let _ = child.wait();
    seen.trim().to_string()
}

/// An "outside" host: a netns joined to the host by a veth, with a route back to nothing
/// but the host, so only masqueraded traffic can be answered.
fn outside(net: &mut Net, u: u32) -> (String, String) {
    let ns = net.netns();
    let (h, o) = (format!("bto{u}h"), format!("bto{u}o"));
    let third = u % 200 + 20;
    assert!(sh(&format!(
        "ip link add {h} type veth peer name {o} netns {ns} && ip addr add 192.168.{third}.1/24 dev {h} && ip link set {h} up && \
         ip -n {ns} addr add 192.168.{third}.2/24 dev {o} && ip -n {ns} link set {o} up"
    ))
    .0);
    net.extra_cleanup.push(format!("ip link del {h} 2>/dev/null"));
    (ns, format!("192.168.{third}"))
}

#[test]
fn masquerade_rewrites_the_source_only_when_ip_masq_is_set() {
    let u = uniq();
    let mut net =
        Net::new(&format!("10.{}.{}.0/24", 150 + u % 50, u % 250), json!({"isDefaultGateway": true, "ipMasq": true}));
    let c = net.netns();
    let (out_ns, out_net) = outside(&mut net, u);
    let r = net.add("c1", &c);
    let seen = udp_source_seen(&c, &out_ns, &format!("{out_net}.2"));
    assert_eq!(seen, format!("{out_net}.1"), "with ipMasq the outside host sees the host's address");
    let (ok, rules) = sh(&format!("nft list table inet {}", cni_bridge::names::nft_table(&net.name)));
    assert!(ok && rules.contains("masquerade"), "{rules}");
    net.del("c1", &c);

    // Same network without ipMasq: the container's own address arrives (and no reply route is needed to see it).
    net.conf["ipMasq"] = json!(false);
    sh(&format!("nft delete table inet {}", cni_bridge::names::nft_table(&net.name)));
    let r2 = net.add("c2", &c);
    let seen = udp_source_seen(&c, &out_ns, &format!("{out_net}.2"));
    assert_eq!(seen, ip_of(&r2, 0));
    let _ = r;
}

/// The masquerade rule is installed by a network's first ADD and then only
/// checked by handle (a marker in `MASQ_MARKER_DIR`). Whatever happens to it
/// behind our back, the next ADD notices and re-installs it: packets of an
/// existing container are masqueraded again.
#[test]
fn masquerade_deleted_behind_our_back_is_reinstalled_by_the_next_add() {
    let u = uniq();
    let mut net =
        Net::new(&format!("10.{}.{}.0/24", 150 + u % 50, u % 250), json!({"isDefaultGateway": true, "ipMasq": true}));
    let table = cni_bridge::names::nft_table(&net.name);
    let c = net.netns();
    let (out_ns, out_net) = outside(&mut net, u);
    let to = format!("{out_net}.2");
    let host = format!("{out_net}.1");
    let r1 = net.add("c1", &c);
    let own = ip_of(&r1, 0);
    assert_eq!(udp_source_seen(&c, &out_ns, &to), host, "first ADD installs the masquerade");
    let marker_of = |t: &str| {
        std::fs::read_dir(cni_bridge::MASQ_MARKER_DIR)
            .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().starts_with(&format!("{t}."))).count())
            .unwrap_or(0)
    };
    assert_eq!(marker_of(&table), 1, "the first ADD records where its rule is");
    let mut add_another = |i: usize| {
        let ns = net.netns();
        net.add(&format!("x{i}"), &ns);
    };

    // Table deleted: without the rule the outside sees the container's own address ...
    assert!(sh(&format!("nft delete table inet {table}")).0);
    assert_eq!(udp_source_seen(&c, &out_ns, &to), own, "no rule, no masquerade");
    // ... until the next ADD on the network, which notices and re-installs it.
    add_another(1);
    assert_eq!(udp_source_seen(&c, &out_ns, &to), host, "re-installed after the table was deleted");

    // Chain flushed (table and chain stay, the rule goes).
    let chain = sh(&format!("nft list table inet {table} | awk '/chain masq_/ {{print $2}}'")).1.trim().to_string();
    assert!(sh(&format!("nft flush chain inet {table} {chain}")).0);
    assert_eq!(udp_source_seen(&c, &out_ns, &to), own);
    add_another(2);
    assert_eq!(udp_source_seen(&c, &out_ns, &to), host, "re-installed after the chain was flushed");

    // A rule slipped in before ours that lets packets through unmasqueraded.
    assert!(sh(&format!("nft insert rule inet {table} {chain} accept")).0);
    assert_eq!(udp_source_seen(&c, &out_ns, &to), own);
    add_another(3);
    assert_eq!(udp_source_seen(&c, &out_ns, &to), host, "foreign rule removed");
    let (_, rules) = sh(&format!("nft list chain inet {table} {chain}"));
    assert_eq!(rules.matches("masquerade").count(), 1, "{rules}");
    assert!(!rules.lines().any(|l| l.trim() == "accept"), "{rules}");

    // Steady state: more ADDs leave the rule alone (same handle, nothing written).
    let handle = || sh(&format!("nft -a list chain inet {table} {chain} | awk '/masquerade/ {{print $NF}}'")).1;
    let before = handle();
    add_another(4);
    assert_eq!(handle(), before);

    // GC with nothing valid removes the table and forgets the marker.
    let mut gc = net.conf.clone();
    gc["cni.dev/valid-attachments"] = json!([]);
    let (ok, v) = net.call("GC", "", "", "", &gc, "");
    assert!(ok, "GC failed: {v}");
    assert_eq!(marker_of(&table), 0, "GC forgets the marker with the table");
}

#[test]
fn isolated_ports_cannot_reach_each_other_but_reach_the_gateway() {
    let u = uniq();
    let mut net = Net::new(&format!("10.{}.{}.0/24", 100 + u % 50, u % 250), json!({"portIsolation": true}));
    let (a, b) = (net.netns(), net.netns());
    let ra = net.add("a", &a);
    let rb = net.add("b", &b);
    assert!(ping(&a, ra["ips"][0]["gateway"].as_str().unwrap()));
    assert!(!ping(&a, &ip_of(&rb, 0)), "isolated ports must not talk to each other");
    let host = ra["interfaces"][1]["name"].as_str().unwrap();
    assert_eq!(sh(&format!("cat /sys/class/net/{host}/brport/isolated")).1.trim(), "1");
}

#[test]
fn hairpin_mtu_and_requested_mac_are_applied() {
    let u = uniq();
    let mut net = Net::new(&format!("10.{}.{}.0/24", 200 + u % 50, u % 250), json!({"hairpinMode": true, "mtu": 1400}));
    let a = net.netns();
    let (ok, r) = net.call("ADD", "a", &a, "eth0", &net.conf, "IgnoreUnknown=1;MAC=0a:58:0a:0b:0c:0d");
    assert!(ok, "{r}");
    let host = r["interfaces"][1]["name"].as_str().unwrap();
    assert_eq!(sh(&format!("cat /sys/class/net/{host}/brport/hairpin_mode")).1.trim(), "1");
    assert_eq!(sh(&format!("ip netns exec {a} cat /sys/class/net/eth0/mtu")).1.trim(), "1400");
    assert_eq!(sh(&format!("ip netns exec {a} cat /sys/class/net/eth0/address")).1.trim(), "0a:58:0a:0b:0c:0d");
    assert_eq!(r["interfaces"][2]["mac"], "0a:58:0a:0b:0c:0d");
    assert_eq!(r["interfaces"][2]["mtu"], 1400);

    // runtimeConfig.mac (the `mac` capability) works too.
    let b = net.netns();
    let mut conf = net.conf.clone();
    conf["runtimeConfig"] = json!({"mac": "0a:58:0a:0b:0c:0e"});
    let (ok, r) = net.call("ADD", "b", &b, "eth0", &conf, "");
    assert!(ok, "{r}");
    assert_eq!(sh(&format!("ip netns exec {b} cat /sys/class/net/eth0/address")).1.trim(), "0a:58:0a:0b:0c:0e");
}

#[test]
fn macspoofchk_drops_frames_from_a_changed_mac_and_del_removes_the_chain() {
    let u = uniq();
    let mut net = Net::new(&format!("10.{}.{}.0/24", 20 + u % 30, u % 250), json!({"macspoofchk": true}));
    let (a, b) = (net.netns(), net.netns());
    let _ra = net.add("a", &a);
    let rb = net.add("b", &b);
    assert!(ping(&a, &ip_of(&rb, 0)));
    sh(&format!(
        "ip -n {a} link set eth0 address 0a:58:de:ad:be:ef; ip -n {a} neigh flush all; ip -n {b} neigh flush all"
    ));
    assert!(!ping(&a, &ip_of(&rb, 0)), "spoofed source MAC must be dropped");
    let table = cni_bridge::names::nft_table(&net.name);
    let chain = cni_bridge::names::mac_chain("a", "eth0");
    assert!(sh(&format!("nft list chain bridge {table} {chain}")).0);
    net.del("a", &a);
    assert!(!sh(&format!("nft list chain bridge {table} {chain} 2>/dev/null")).0, "DEL removes the chain");
}

#[test]
fn dual_stack_addresses_work_at_once() {
    let u = uniq();
    let mut net = Net::new(&format!("10.{}.{}.0/24", 210 + u % 40, u % 250), json!({}));
    net.conf["ipam"]["ranges"] = json!([[{"subnet": format!("10.{}.{}.0/24", 210 + u % 40, u % 250)}],
                                        [{"subnet": format!("fd00:{:x}::/64", u % 0xffff)}]]);
    let (a, b) = (net.netns(), net.netns());
    let ra = net.add("a", &a);
    let rb = net.add("b", &b);
    assert_eq!(ra["ips"].as_array().unwrap().len(), 2);
    let v6 = ip_of(&rb, 1);
    assert!(v6.contains(':'));
    assert!(ping(&a, &v6), "IPv6 works without waiting for DAD");
    assert!(ping(&a, ra["ips"][1]["gateway"].as_str().unwrap()));
}

#[test]
fn a_failed_add_rolls_back_the_veth_and_the_lease() {
    let u = uniq();
    let mut net = Net::new(&format!("10.{}.{}.0/24", 90 + u % 10, u % 250), json!({}));
    // A route via a gateway that is not on any link: the kernel refuses it late in ADD.
    net.conf["ipam"]["routes"] = json!([{"dst": "10.254.0.0/16", "gw": "192.0.2.77"}]);
    let a = net.netns();
    let (ok, err) = net.call("ADD", "a", &a, "eth0", &net.conf, "");
    assert!(!ok);
    assert!(err["code"].as_u64().is_some(), "{err}");
    let host = cni_bridge::names::host_veth(&net.name, "a", "eth0");
    assert!(!sh(&format!("ip link show {host} 2>/dev/null")).0, "host veth left behind");
    assert!(!sh(&format!("ip -n {a} link show eth0 2>/dev/null")).0, "container veth left behind");
    let leases = sh(&format!("grep -l '^a' {}/{}/* 2>/dev/null", net.dir, net.name)).1;
    assert!(leases.trim().is_empty(), "lease not released: {leases}");
}

#[test]
fn a_foreign_bridge_address_needs_force_address() {
    let u = uniq();
    let sub = format!("10.{}.{}", 60 + u % 30, u % 250);
    let mut net = Net::new(&format!("{sub}.0/24"), json!({}));
    sh(&format!("ip link add {} type bridge && ip addr add 172.31.{}.1/24 dev {}", net.bridge, u % 250, net.bridge));
    let a = net.netns();
    let (ok, err) = net.call("ADD", "a", &a, "eth0", &net.conf, "");
    assert!(!ok, "a different address on the bridge must be refused");
    assert!(err["msg"].as_str().unwrap().contains("already has an IP address"), "{err}");
    net.conf["forceAddress"] = json!(true);
    net.add("a", &a);
    let (_, addrs) = sh(&format!("ip -4 -o addr show dev {}", net.bridge));
    assert!(addrs.contains(&format!("{sub}.1/24")) && !addrs.contains("172.31."), "{addrs}");
}

#[test]
fn disabled_container_interface_stays_down_and_ipam_is_refused() {
    let u = uniq();
    let mut net = Net::new(&format!("10.{}.{}.0/24", 30 + u % 20, u % 250), json!({"disableContainerInterface": true}));
    let a = net.netns();
    let (ok, err) = net.call("ADD", "a", &a, "eth0", &net.conf, "");
    assert!(!ok && err["code"] == 7, "{err}");
    let mut conf = net.conf.clone();
    conf.as_object_mut().unwrap().remove("ipam");
    let (ok, r) = net.call("ADD", "a", &a, "eth0", &conf, "");
    assert!(ok, "{r}");
    let (_, state) = sh(&format!("ip -n {a} -o link show eth0"));
    assert!(!state.contains(",UP") && !state.contains("<UP"), "{state}");
}

#[test]
fn gc_removes_ports_and_leases_of_stale_attachments_only() {
    let u = uniq();
    let mut net = Net::new(&format!("10.{}.{}.0/24", 120 + u % 30, u % 250), json!({"ipMasq": true}));
    let (a, b) = (net.netns(), net.netns());
    let ra = net.add("a", &a);
    let rb = net.add("b", &b);
    let mut gc = net.conf.clone();
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "a", "ifname": "eth0"}]);
    let (ok, v) = net.call("GC", "", "", "", &gc, "");
    assert!(ok, "{v}");
    let hb = rb["interfaces"][1]["name"].as_str().unwrap();
    assert!(!sh(&format!("ip link show {hb} 2>/dev/null")).0, "stale port survived GC");
    assert!(sh(&format!("ip link show {}", ra["interfaces"][1]["name"].as_str().unwrap())).0);
    assert!(ping(&a, ra["ips"][0]["gateway"].as_str().unwrap()), "valid attachment still works");
    let lease_b = format!("{}/{}/{}", net.dir, net.name, ip_of(&rb, 0));
    assert!(!std::path::Path::new(&lease_b).exists(), "stale lease survived GC");

    // Nothing valid any more: the network's masquerade table goes too.
    gc["cni.dev/valid-attachments"] = json!([]);
    let (ok, v) = net.call("GC", "", "", "", &gc, "");
    assert!(ok, "{v}");
    assert!(!sh(&format!("nft list table inet {} 2>/dev/null", cni_bridge::names::nft_table(&net.name))).0);
}
