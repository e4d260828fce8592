//! Interoperability: our plugins mixed with the reference ones, and our
//! bridge chained (libcni-style) with the reference `tuning` and `portmap`.

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value};

use crate::chain::{add_list, check_list, del_list, NetList, RuntimeConf};
use crate::checks::{container_ip, CheckResult, Ctr, Suite, Verdict, IFNAME};
use testkit::net::{iptables_rules_matching, Range, SubnetClaim, TestNet};
use testkit::plugin::PluginSet;
use testkit::util::{ip, next_id, pid, unique_link, Context, R};
use testkit::{bail, ensure};

/// Core checks run for mixed bridge/IPAM pairs (versions both sides list).
pub const MIXED_CHECKS: [&str; 7] = [
    "version",
    "add-result-1.0.0",
    "ping-peer-and-gateway",
    "check-passes",
    "del-twice",
    "del-netns-gone",
    "ip-reuse-after-del",
];

/// A network config for `bridge_type` + `ipam_type` at `version`.
pub fn bridge_conf(bridge_type: &str, ipam_type: &str, version: &str, ip_masq: bool) -> Value {
    json!({
        "cniVersion": version,
        "name": "cft",
        "type": bridge_type,
        "bridge": "cft0",
        "isGateway": true,
        "ipMasq": ip_masq,
        "ipam": {"type": ipam_type, "ranges": [[{"subnet": "10.224.0.0/24"}]], "dataDir": "/tmp/cft"}
    })
}

/// Runs [`MIXED_CHECKS`] for one bridge/IPAM pairing; names are prefixed with `label/`.
pub fn mixed_pair(label: &str, ps: PluginSet, bridge_type: &str, ipam_type: &str) -> R<Vec<CheckResult>> {
    let base = bridge_conf(bridge_type, ipam_type, "1.0.0", false);
    let suite = Suite::new(ps, base)?;
    let only: Vec<String> = MIXED_CHECKS.iter().map(|s| s.to_string()).collect();
    let mut res = suite.run(&only, true)?;
    for r in &mut res {
        r.name = format!("{label}/{}", r.name);
    }
    Ok(res)
}

/// A link deleted on drop.
struct LinkGuard(String);

impl Drop for LinkGuard {
    fn drop(&mut self) {
        let _ = ip(&["link", "del", "dev", &self.0]);
    }
}

/// Binds a TCP listener on 0.0.0.0:`port` inside the netns at `ns_path`.
/// The socket is created by a short-lived thread that has setns'd into the
/// namespace; the socket stays in that namespace afterwards.
pub fn listen_in_netns(ns_path: &str, port: u16) -> R<TcpListener> {
    let path = ns_path.to_string();
    std::thread::spawn(move || -> R<TcpListener> {
        let f = std::fs::File::open(&path).ctx(format!("open {path}"))?;
        nix::sched::setns(f.as_fd(), nix::sched::CloneFlags::CLONE_NEWNET).ctx("setns")?;
        TcpListener::bind(("0.0.0.0", port)).ctx(format!("bind :{port} in {path}"))
    })
    .join()
    .map_err(|_| "listener thread panicked".to_string())?
}

/// Serves one connection: writes `token` to the first client, then returns.
fn serve_once(l: TcpListener, token: String) -> mpsc::Receiver<R<SocketAddr>> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = l.set_nonblocking(false);
        let r = l.accept().ctx("accept").and_then(|(mut s, peer)| {
            s.write_all(token.as_bytes()).ctx("write")?;
            Ok(peer)
        });
        let _ = tx.send(r);
    });
    rx
}

fn connect_read(addr: SocketAddr) -> R<String> {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).ctx(format!("connect {addr}"))?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ctx("timeout")?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ctx("read")?;
    Ok(buf)
}

/// Our (or any) bridge chained with reference `tuning` and `portmap`, the
/// way libcni runs a conflist. Verifies tuning's sysctl and MAC inside the
/// netns, a real TCP connection through the port mapping, CHECK of the
/// whole chain, then DEL in reverse with the final result as prevResult.
pub fn chain_tuning_portmap(ps: &PluginSet, bridge_type: &str, ipam_type: &str) -> R<String> {
    let version = "1.0.0";
    let net = TestNet::new(&bridge_conf(bridge_type, ipam_type, version, false), version, Range::Full)?;
    // A dedicated host address for the port mapping, on a link of its own.
    let host_claim = SubnetClaim::new()?;
    let host_ip = host_claim.host(1);
    // (A veth pair: not every kernel here has the dummy driver.)
    let hostlink = LinkGuard(unique_link(next_id()));
    let peer = unique_link(next_id());
    ip(&["link", "add", &hostlink.0, "type", "veth", "peer", "name", &peer]).ctx("create host veth")?;
    ip(&["addr", "add", &format!("{host_ip}/32"), "dev", &hostlink.0]).ctx("address host veth")?;
    ip(&["link", "set", &peer, "up"]).ctx("host veth peer up")?;
    ip(&["link", "set", &hostlink.0, "up"]).ctx("host veth up")?;

    let mut bridge = net.conf.clone();
    if let Some(o) = bridge.as_object_mut() {
        o.remove("name");
        o.remove("cniVersion");
        o.insert("isDefaultGateway".into(), json!(true));
    }
    let mac = format!("0a:58:{:02x}:{:02x}:{:02x}:{:02x}", (pid() >> 8) as u8, pid() as u8, next_id() as u8, 0x42);
    let host_port: u16 = 20000 + ((pid() as u16).wrapping_mul(7).wrapping_add(next_id() as u16 * 131)) % 20000;
    let list = NetList {
        name: net.name.clone(),
        cni_version: version.into(),
        plugins: vec![
            bridge,
            json!({"type": "tuning", "mac": mac, "sysctl": {"net.ipv4.conf.eth0.arp_notify": "1"}}),
            json!({"type": "portmap", "capabilities": {"portMappings": true}, "snat": true}),
        ],
    };
    let c = Ctr::new()?;
    let mut caps = Map::new();
    caps.insert(
        "portMappings".into(),
        json!([{"hostPort": host_port, "containerPort": 8080, "protocol": "tcp", "hostIP": host_ip.to_string()}]),
    );
    let rt = RuntimeConf {
        container_id: c.id.clone(),
        netns: Some(c.ns.path().to_string()),
        ifname: IFNAME.into(),
        args: vec![],
        capability_args: caps,
    };
    let result = add_list(ps, &list, &rt)?;
    // From here on, make sure the chain is torn down even if a step fails.
    let outcome = (|| -> R<String> {
        let cip = container_ip(&result, &c)?;
        c.ns.expect_addr(IFNAME, cip.ip(), cip.prefix())?;
        // tuning: MAC in the result and on the link, sysctl in the netns.
        let link = c.ns.link(IFNAME).ok_or("eth0 missing")?;
        ensure!(link.mac.eq_ignore_ascii_case(&mac), "tuning mac not applied: link has {}", link.mac);
        let rmac = result["interfaces"]
            .as_array()
            .and_then(|a| a.iter().find(|i| i["sandbox"] == c.ns.path()))
            .and_then(|i| i["mac"].as_str())
            .unwrap_or("");
        ensure!(rmac.eq_ignore_ascii_case(&mac), "final result's eth0 mac is {rmac:?}, want {mac}");
        let (ok, v) = c.ns.exec(&["sysctl", "-n", "net.ipv4.conf.eth0.arp_notify"]);
        ensure!(ok && v.trim() == "1", "tuning sysctl not applied: {}", v.trim());
        ensure!(result["cniVersion"] == version, "final result cniVersion {}", result["cniVersion"]);
        // CHECK the chain with the final result, as libcni does, minus
        // portmap: reference portmap 1.1.1's CHECK always looks for an IPv6
        // DNAT chain when ip6tables exists and fails for IPv4-only mappings.
        let mut checked = list.clone();
        checked.plugins.retain(|p| p["type"] != "portmap");
        check_list(ps, &checked, &rt, &result)?;
        // portmap: a real TCP connection host -> hostIP:hostPort -> container:8080.
        let l = listen_in_netns(c.ns.path(), 8080)?;
        let token = format!("cft-hello-{}-{host_port}", pid());
        let rx = serve_once(l, token.clone());
        let t = Instant::now();
        let got = connect_read(SocketAddr::new(IpAddr::V4(host_ip), host_port))?;
        ensure!(got == token, "read {got:?} through the port mapping, want {token:?}");
        let peer = rx.recv_timeout(Duration::from_secs(5)).ctx("server")??;
        Ok(format!(
            "mac+sysctl applied; {host_ip}:{host_port} -> {}:8080 served (peer {peer}, {:.1} ms); CHECK (bridge+tuning) ok",
            cip.ip(),
            t.elapsed().as_secs_f64() * 1e3
        ))
    })();
    let del = del_list(ps, &list, &rt, Some(&result));
    let d = outcome?;
    del?;
    ensure!(c.ns.link(IFNAME).is_none(), "eth0 still in the netns after chained DEL");
    let left = iptables_rules_matching(&net.name)?;
    ensure!(left.is_empty(), "iptables rules left after chained DEL: {:?}", left);
    // The mapping must be gone: nothing listens on the host address itself.
    if let Ok(s) = connect_read(SocketAddr::new(IpAddr::V4(host_ip), host_port)) {
        bail!("port mapping still answers after DEL: {s:?}");
    }
    Ok(d)
}

fn as_result(name: &str, t: Instant, r: R<String>) -> CheckResult {
    let (verdict, detail) = match r {
        Ok(d) => (Verdict::Pass, d),
        Err(e) => (Verdict::Fail, e),
    };
    let res = CheckResult { name: name.into(), verdict, detail, seconds: t.elapsed().as_secs_f64() };
    res.print_progress();
    res
}

/// Every interop scenario: ours = `cni-bridge`/`cni-ipam` in `ours`,
/// reference = `bridge`/`host-local`/`tuning`/`portmap` in `reference`.
pub fn run_all(ours: &Path, reference: &Path) -> Vec<CheckResult> {
    let mut out = Vec::new();
    let mut push_mixed = |label: &str, ps: PluginSet, b: &str, i: &str| {
        let t = Instant::now();
        match mixed_pair(label, ps, b, i) {
            Ok(mut v) => out.append(&mut v),
            Err(e) => out.push(as_result(label, t, Err(e))),
        }
    };
    push_mixed("cni-bridge+host-local", PluginSet::new(ours).with_dir(reference), "cni-bridge", "host-local");
    push_mixed("bridge+cni-ipam", PluginSet::new(reference).with_dir(ours), "bridge", "cni-ipam");
    let t = Instant::now();
    out.push(as_result(
        "chain/cni-bridge+tuning+portmap",
        t,
        chain_tuning_portmap(&PluginSet::new(ours).with_dir(reference), "cni-bridge", "cni-ipam"),
    ));
    out
}

/// Directory of the running binary (where cargo puts every workspace binary).
pub fn own_dir() -> PathBuf {
    std::env::current_exe().ok().and_then(|p| p.parent().map(Path::to_path_buf)).unwrap_or_else(|| PathBuf::from("."))
}
