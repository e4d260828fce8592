//! `conformance demo`: three containers on one bridge network, addresses
//! and pings printed, then a full teardown that is verified to leave nothing.

use std::fmt::Write as _;
use std::net::IpAddr;

use cni_core::version::cmp_str;

use cni_suite::checks::{container_ip, plugin_versions, Ctr, IFNAME, RESULT_VERSIONS};
use cni_suite::interop::bridge_conf;
use testkit::net::{iptables_rules_matching, nft_tables_matching, remove_traces, Range, TestNet};
use testkit::plugin::{PluginSet, Request};
use testkit::util::{ip, R};

pub struct DemoOpts {
    pub ps: PluginSet,
    pub bridge_type: String,
    pub ipam_type: String,
}

/// Runs the demo, streaming its narrative to `out`. Ok(true) if every ping
/// worked and nothing was left behind.
pub fn run(o: &DemoOpts, out: &mut dyn FnMut(&str)) -> R<bool> {
    let versions = plugin_versions(&o.ps, &o.bridge_type)
        .ok_or_else(|| format!("{} does not answer VERSION (looked in {})", o.bridge_type, o.ps.cni_path()))?;
    let version = versions
        .iter()
        .filter(|v| RESULT_VERSIONS.contains(&v.as_str()))
        .max_by(|a, b| cmp_str(a, b))
        .cloned()
        .ok_or("plugin supports none of 0.3.1..1.1.0")?;
    let mut net =
        Some(TestNet::new(&bridge_conf(&o.bridge_type, &o.ipam_type, &version, true), &version, Range::Full)?);
    let (name, bridge, data_dir, gw) = {
        let n = net.as_ref().ok_or("no net")?;
        (n.name.clone(), n.bridge.clone(), n.data_dir.clone(), n.gateway())
    };
    out(&format!(
        "network {name}: type {} + ipam {}, bridge {bridge}, subnet {}, isGateway, ipMasq, cniVersion {version}",
        o.bridge_type,
        o.ipam_type,
        net.as_ref().map(|n| n.subnet().to_string()).unwrap_or_default()
    ));
    let mut ctrs = Vec::new();
    let mut all_ok = true;
    for k in 0..3 {
        let c = Ctr::new()?;
        let n = net.as_ref().ok_or("no net")?;
        let r = o.ps.exec(&o.bridge_type, &Request::container("ADD", &n.conf, &c.id, Some(c.ns.path()), IFNAME));
        if !r.success() {
            return Err(format!("ADD container {k} failed: {}", r.describe()));
        }
        let res = r.json().unwrap_or_default();
        let cip = container_ip(&res, &c)?;
        let link = c.ns.link(IFNAME).ok_or("eth0 missing after ADD")?;
        let mut line = format!("container {k} (netns {}): {IFNAME}", c.ns.name());
        for (a, l) in &link.addrs {
            let _ = write!(line, " {a}/{l}");
        }
        let _ = write!(line, " mac {} mtu {} (ADD {:.1} ms)", link.mac, link.mtu, r.elapsed.as_secs_f64() * 1e3);
        out(&line);
        ctrs.push((c, res, cip.ip()));
    }
    let names = ["container 0", "container 1", "container 2"];
    for i in 0..ctrs.len() {
        for j in 0..ctrs.len() {
            if i == j {
                continue;
            }
            let dst = ctrs[j].2;
            all_ok &= ping_line(out, &ctrs[i].0, names[i], names[j], dst);
        }
        if let Some(g) = gw {
            all_ok &= ping_line(out, &ctrs[i].0, names[i], "gateway", g);
        }
    }
    out("teardown: DEL each container, delete netns, bridge, nft table, IPAM state");
    let mut ns_names = Vec::new();
    let n = net.as_ref().ok_or("no net")?;
    for (k, (mut c, res, _)) in ctrs.into_iter().enumerate() {
        let mut conf = n.conf.clone();
        conf["prevResult"] = res;
        let r = o.ps.exec(&o.bridge_type, &Request::container("DEL", &conf, &c.id, Some(c.ns.path()), IFNAME));
        if !r.success() {
            out(&format!("DEL container {k} FAILED: {}", r.describe()));
            all_ok = false;
        }
        ns_names.push(c.ns.name().to_string());
        c.ns.delete()?;
    }
    // What the plugin's DELs left for the operator (the bridge is expected:
    // plugins keep it; rules or tables naming the network are not).
    let mut kept = Vec::new();
    if ip(&["link", "show", "dev", &bridge]).is_ok() {
        kept.push(format!("bridge {bridge}"));
    }
    for (f, t) in nft_tables_matching(&name, Some(&bridge))? {
        kept.push(format!("nft table {f} {t}"));
    }
    let rules = iptables_rules_matching(&name)?.len();
    if rules > 0 {
        kept.push(format!("{rules} iptables rules"));
    }
    out(&format!(
        "after the DELs the plugin kept: {}; removing them",
        if kept.is_empty() { "nothing".to_string() } else { kept.join(", ") }
    ));
    remove_traces(&name, Some(&bridge));
    net.take(); // drops the guard: data dir and subnet claim
    let mut left = Vec::new();
    let listed = ip(&["netns", "list"]).unwrap_or_default();
    for ns in &ns_names {
        if listed.lines().any(|l| l.split_whitespace().next() == Some(ns)) {
            left.push(format!("netns {ns}"));
        }
    }
    if ip(&["link", "show", "dev", &bridge]).is_ok() {
        left.push(format!("bridge {bridge}"));
    }
    for (f, t) in nft_tables_matching(&name, Some(&bridge))? {
        left.push(format!("nft table {f} {t}"));
    }
    for (t, r) in iptables_rules_matching(&name)? {
        left.push(format!("iptables -t {t} {r}"));
    }
    if data_dir.exists() {
        left.push(format!("dir {}", data_dir.display()));
    }
    if left.is_empty() {
        out("nothing left: netns, bridge, nft/iptables rules and IPAM state are gone");
    } else {
        out(&format!("LEFT BEHIND: {}", left.join(", ")));
        all_ok = false;
    }
    Ok(all_ok)
}

fn ping_line(out: &mut dyn FnMut(&str), from: &Ctr, fname: &str, tname: &str, dst: IpAddr) -> bool {
    let (ok, text) = from.ns.exec(&["ping", "-c", "1", "-W", "2", &dst.to_string()]);
    let rtt = text.split("time=").nth(1).and_then(|s| s.split_whitespace().next()).unwrap_or("?");
    if ok {
        out(&format!("ping {fname} -> {tname} ({dst}): ok, rtt {rtt} ms"));
    } else {
        out(&format!("ping {fname} -> {tname} ({dst}): FAILED"));
    }
    ok
}

/// `conformance demo --overlay`: three hosts (two on one segment, one behind
/// a router), real etcd, one `cni-overlay agent` per host, one container per
/// host attached with the cni-overlay plugin; every pair pings, one VXLAN
/// packet is shown on the underlay, then everything is removed and checked.
/// Ok(true) if every ping worked and nothing was left behind.
pub fn run_overlay(plugin_dir: &std::path::Path, out: &mut dyn FnMut(&str)) -> R<bool> {
    use crate::bench_overlay::{overlay_bin, OverlayLab, NETWORK};
    use std::time::Duration;

    let bin = overlay_bin(plugin_dir)?;
    let mut all_ok = true;
    let mut o = OverlayLab::new("demo", bin)?;
    let a = o.lab.segment("192.168.71.0/24")?;
    let b = o.lab.segment("192.168.72.0/24")?;
    let hosts = [o.lab.host(a)?, o.lab.host(a)?, o.lab.host(b)?];
    let router = o.lab.router(&[a, b])?;
    out(&format!("lab {}: etcd {}, network config {NETWORK}", o.lab.prefix(), o.lab.etcd_url().unwrap_or_default()));
    out(&format!(
        "underlay: host 0 {} and host 1 {} on {}, host 2 {} on {} behind router {} ({} / {})",
        o.lab.host_ip(hosts[0]),
        o.lab.host_ip(hosts[1]),
        o.lab.segment_net(a),
        o.lab.host_ip(hosts[2]),
        o.lab.segment_net(b),
        router.0,
        o.lab.host_ip_on(router, a).map(|x| x.to_string()).unwrap_or_default(),
        o.lab.host_ip_on(router, b).map(|x| x.to_string()).unwrap_or_default(),
    ));
    for h in hosts {
        o.spawn_agent(h)?;
    }
    let mut subnets = Vec::new();
    for (k, h) in hosts.iter().enumerate() {
        let s = o.wait_agent(*h, Duration::from_secs(15))?;
        out(&format!("host {k} (netns {}): agent leased subnet {s}", o.lab.host_ns(*h)));
        subnets.push(s);
    }
    let mut ctrs = Vec::new();
    for (k, h) in hosts.iter().enumerate() {
        let (c, ip, _) = o.container(*h)?;
        let mtu = o.lab.exec_ok(c, &["cat", "/sys/class/net/eth0/mtu"]).unwrap_or_default();
        out(&format!(
            "container {k} on host {k} (netns {}): eth0 {ip} mtu {} (in {})",
            o.lab.container_id(c),
            mtu.trim(),
            subnets[k]
        ));
        ctrs.push((c, ip));
    }
    let cap = o.lab.capture(hosts[0], "eth0", "udp port 8472", 1, Duration::from_secs(10))?;
    for (i, (c, _)) in ctrs.iter().enumerate() {
        for (j, (_, ip)) in ctrs.iter().enumerate() {
            if i == j {
                continue;
            }
            let t = std::time::Instant::now();
            let ok = o.lab.ping_until(*c, *ip, Duration::from_secs(5));
            let (_, text) = match o.lab.exec(*c, &["ping", "-c", "1", "-W", "2", &ip.to_string()]) {
                Ok(x) => (x.status.success(), String::from_utf8_lossy(&x.stdout).into_owned()),
                Err(e) => (false, e),
            };
            let rtt = text.split("time=").nth(1).and_then(|s| s.split_whitespace().next()).unwrap_or("?");
            if ok {
                out(&format!(
                    "ping container {i} -> container {j} ({ip}): ok, rtt {rtt} ms (first answer after {:.0} ms)",
                    t.elapsed().as_secs_f64() * 1e3
                ));
            } else {
                out(&format!("ping container {i} -> container {j} ({ip}): FAILED"));
                all_ok = false;
            }
        }
    }
    let seen = cap.wait();
    match seen.lines().find(|l| l.contains(".8472")) {
        Some(l) => out(&format!("VXLAN on host 0's underlay eth0: {l}")),
        None => {
            out(&format!("no VXLAN packet captured on host 0's eth0: {seen}"));
            all_ok = false;
        }
    }
    out("teardown: DEL each container with the plugin, stop the agents, remove the lab (netns, links, etcd, dirs)");
    for (k, (c, _)) in ctrs.iter().enumerate() {
        let h = hosts[k];
        let (ok, v) = o.lab.cni(h, &o.bin, "DEL", *c, "eth0", &o.plugin_conf(h), &[])?;
        if !ok {
            out(&format!("DEL container {k} FAILED: {v}"));
            all_ok = false;
        }
    }
    for g in o.agents.iter_mut().filter_map(Option::take) {
        g.terminate(Duration::from_secs(5));
    }
    let names = o.lab.netns_names();
    let links = o.lab.root_links();
    let dir = o.lab.dir().to_path_buf();
    drop(o);
    let left = lab_leftovers(&names, &links, &dir);
    if left.is_empty() {
        out(&format!(
            "nothing left: {} netns, {} root links, etcd, agents and the lab dir are gone",
            names.len(),
            links.len()
        ));
    } else {
        out(&format!("LEFT BEHIND: {}", left.join(", ")));
        all_ok = false;
    }
    Ok(all_ok)
}

/// What a dropped lab left: its netns, root links and dir that still exist
/// (`names`, `links`, `dir` taken from the lab before the drop).
pub fn lab_leftovers(names: &[String], links: &[String], dir: &std::path::Path) -> Vec<String> {
    let mut left = Vec::new();
    let listed = ip(&["netns", "list"]).unwrap_or_default();
    for ns in names {
        if listed.lines().any(|l| l.split_whitespace().next() == Some(ns.as_str())) {
            left.push(format!("netns {ns}"));
        }
    }
    for l in links {
        if ip(&["link", "show", "dev", l]).is_ok() {
            left.push(format!("link {l}"));
        }
    }
    if dir.exists() {
        left.push(format!("dir {}", dir.display()));
    }
    left
}
