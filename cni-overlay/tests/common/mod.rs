//! Shared by the overlay tests: a lab with a real etcd and one
//! `cni-overlay agent` per host, containers attached through the plugin.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use etcd_kv::testing::EtcdCluster;
use serde_json::{json, Value};
use testkit::lab::{ContainerId, HostId, Lab, Node, ProcessGuard};

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_cni-overlay"))
}

pub struct Overlay {
    /// A multi-member etcd on the mgmt bridge, used instead of the lab's own.
    pub cluster: Option<EtcdCluster>,
    pub lab: Lab,
    pub agents: Vec<Option<ProcessGuard>>,
    pub extra_args: Vec<String>,
}

impl Overlay {
    pub fn new(hint: &str, config: Value, extra_args: &[&str]) -> Overlay {
        let mut lab = Lab::new(hint).expect("lab");
        lab.start_etcd().expect("etcd");
        let o = Overlay {
            cluster: None,
            lab,
            agents: vec![],
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        o.etcdctl(&["put", "/coreos.com/network/config", &config.to_string()]);
        o
    }

    /// Like [`Overlay::new`] with an etcd cluster of `members` on the mgmt
    /// bridge (reachable from every host) instead of the lab's single etcd.
    pub fn with_cluster(hint: &str, members: usize, config: Value, extra_args: &[&str]) -> Overlay {
        let lab = Lab::new(hint).expect("lab");
        let cluster = EtcdCluster::start_on(members, lab.mgmt_gateway().into()).expect("etcd cluster");
        let o = Overlay {
            cluster: Some(cluster),
            lab,
            agents: vec![],
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        o.etcdctl(&["put", "/coreos.com/network/config", &config.to_string()]);
        o
    }

    /// The etcd endpoints as the hosts reach them, comma-separated.
    pub fn etcd_endpoints(&self) -> String {
        match &self.cluster {
            Some(c) => c.endpoints().join(","),
            None => self.lab.etcd_url().unwrap(),
        }
    }

    pub fn etcdctl(&self, args: &[&str]) -> String {
        if let Some(c) = &self.cluster {
            let out = c.etcdctl(args).unwrap_or_else(|e| panic!("{e}"));
            return String::from_utf8_lossy(&out.stdout).into_owned();
        }
        let url = self.lab.etcd_local_url().expect("etcd running");
        let out =
            Command::new("etcdctl").env("ETCDCTL_API", "3").arg("--endpoints").arg(&url).args(args).output().unwrap();
        assert!(out.status.success(), "etcdctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn state_dir(&self, h: HostId) -> PathBuf {
        self.lab.dir().join(format!("host{}", h.0))
    }

    pub fn subnet_file(&self, h: HostId) -> PathBuf {
        self.state_dir(h).join("subnet.env")
    }

    pub fn agent_args(&self, h: HostId) -> Vec<String> {
        let mut a = vec![
            "agent".to_string(),
            "--etcd-endpoints".into(),
            self.etcd_endpoints(),
            "--iface".into(),
            "eth0".into(),
            "--subnet-file".into(),
            self.subnet_file(h).display().to_string(),
        ];
        a.extend(self.extra_args.iter().cloned());
        a
    }

    /// Starts the agent of host `h` and waits until its subnet file exists.
    pub fn start_agent(&mut self, h: HostId) {
        self.start_agent_with(h, &[]);
    }

    /// [`Overlay::start_agent`] with more flags for this host only.
    pub fn start_agent_with(&mut self, h: HostId, extra: &[&str]) {
        let mut args = self.agent_args(h);
        args.extend(extra.iter().map(|s| s.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let guard = self.lab.spawn(h, bin().to_str().unwrap(), &args, &[("CNI_OVERLAY_LOG", "info")]).unwrap();
        while self.agents.len() <= h.0 {
            self.agents.push(None);
        }
        let deadline = Instant::now() + Duration::from_secs(15);
        while !self.subnet_file(h).exists() {
            assert!(guard.is_running(), "agent on host {} exited:\n{}", h.0, guard.log());
            assert!(Instant::now() < deadline, "agent on host {} not ready:\n{}", h.0, guard.log());
            std::thread::sleep(Duration::from_millis(50));
        }
        self.agents[h.0] = Some(guard);
    }

    pub fn stop_agent(&mut self, h: HostId) -> ProcessGuard {
        let g = self.agents[h.0].take().expect("agent running");
        g.terminate(Duration::from_secs(5));
        g
    }

    /// `cni-overlay remove-host TARGET` against the lab's etcd; must succeed.
    pub fn remove_host(&self, target: &str) {
        let out = Command::new(bin())
            .args(["remove-host", "--etcd-endpoints", &self.lab.etcd_local_url().unwrap(), target])
            .output()
            .unwrap();
        assert!(out.status.success(), "remove-host {target}: {}", String::from_utf8_lossy(&out.stderr));
    }

    pub fn subnet_env(&self, h: HostId) -> String {
        std::fs::read_to_string(self.subnet_file(h)).unwrap()
    }

    pub fn plugin_conf(&self, h: HostId) -> Value {
        json!({
            "cniVersion": "1.1.0", "name": "overlay", "type": "cni-overlay",
            "subnetFile": self.subnet_file(h), "dataDir": self.state_dir(h).join("cni"),
            // What kube-flannel's conflist passes.
            "delegate": {"hairpinMode": true, "isDefaultGateway": true},
        })
    }

    /// A container on host `h`, attached through the plugin; returns it and its IPv4.
    pub fn container(&mut self, h: HostId) -> (ContainerId, Ipv4Addr) {
        let (c, ips) = self.attach(h);
        match ips[0] {
            IpAddr::V4(ip) => (c, ip),
            other => panic!("first address is not IPv4: {other}"),
        }
    }

    /// A container on host `h`, attached through the plugin; returns it and
    /// every address of the ADD result, in order.
    pub fn attach(&mut self, h: HostId) -> (ContainerId, Vec<IpAddr>) {
        let c = self.lab.container(h).unwrap();
        let (ok, r) = self.lab.cni(h, &bin(), "ADD", c, "eth0", &self.plugin_conf(h), &[]).unwrap();
        assert!(ok, "ADD on host {}: {r}", h.0);
        let ips = r["ips"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["address"].as_str().unwrap().split('/').next().unwrap().parse().unwrap())
            .collect();
        (c, ips)
    }

    pub fn routes(&self, h: HostId) -> String {
        self.lab.exec_ok(h, &["ip", "-4", "route", "show"]).unwrap()
    }

    pub fn routes6(&self, h: HostId) -> String {
        self.lab.exec_ok(h, &["ip", "-6", "route", "show"]).unwrap()
    }

    pub fn wait_routes(&self, h: HostId, pred: impl Fn(&str) -> bool, what: &str) {
        self.wait_routes_of(h, false, pred, what)
    }

    pub fn wait_routes6(&self, h: HostId, pred: impl Fn(&str) -> bool, what: &str) {
        self.wait_routes_of(h, true, pred, what)
    }

    fn wait_routes_of(&self, h: HostId, v6: bool, pred: impl Fn(&str) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let r = if v6 { self.routes6(h) } else { self.routes(h) };
            if pred(&r) {
                return;
            }
            assert!(Instant::now() < deadline, "host {}: {what}; routes:\n{r}", h.0);
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// The leased IPv4 subnet from a subnet file's text (`FLANNEL_SUBNET` is its first address).
pub fn subnet_of(env: &str) -> String {
    let line = env.lines().find(|l| l.starts_with("FLANNEL_SUBNET=")).expect("FLANNEL_SUBNET");
    let (ip, len) = line["FLANNEL_SUBNET=".len()..].split_once('/').unwrap();
    let ip: Ipv4Addr = ip.parse().unwrap();
    format!("{}/{len}", Ipv4Addr::from(u32::from(ip) - 1))
}

pub fn conf(extra: Value) -> Value {
    let mut c = json!({"Network": "10.244.0.0/16", "SubnetLen": 24, "Backend": {"Type": "vxlan"}});
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    c
}

/// The leased IPv6 subnet from a subnet file's text (`FLANNEL_IPV6_SUBNET`).
pub fn subnet6_of(env: &str) -> String {
    let line = env.lines().find(|l| l.starts_with("FLANNEL_IPV6_SUBNET=")).expect("FLANNEL_IPV6_SUBNET");
    let (ip, len) = line["FLANNEL_IPV6_SUBNET=".len()..].split_once('/').unwrap();
    let ip: std::net::Ipv6Addr = ip.parse().unwrap();
    format!("{}/{len}", std::net::Ipv6Addr::from(u128::from(ip) - 1))
}

/// The source address a UDP receiver in `to` sees for a datagram that
/// `from` sends to `to_ip` (either family). The receiver prints `ready` once
/// bound; the datagram goes only after that.
pub fn udp_source(lab: &Lab, from: impl Into<Node>, to: impl Into<Node>, to_ip: IpAddr) -> String {
    let port = 40000 + std::process::id() % 20000;
    let (family, any) = if to_ip.is_ipv4() { ("AF_INET", "0.0.0.0") } else { ("AF_INET6", "::") };
    let recv = format!(
        "import socket;s=socket.socket(socket.{family},socket.SOCK_DGRAM);s.bind(('{any}',{port}));s.settimeout(5);print('ready',flush=True);d,a=s.recvfrom(64);print(a[0])"
    );
    let g = lab.spawn(to, "python3", &["-c", &recv], &[]).unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !g.log().contains("ready") {
        assert!(g.is_running() || g.log().contains("ready"), "UDP receiver exited: {}", g.log());
        assert!(Instant::now() < deadline, "UDP receiver not ready: {}", g.log());
        std::thread::sleep(Duration::from_millis(10));
    }
    let send =
        format!("import socket;s=socket.socket(socket.{family},socket.SOCK_DGRAM);s.sendto(b'x',('{to_ip}',{port}))");
    lab.exec_ok(from, &["python3", "-c", &send]).unwrap();
    g.wait_timeout(Duration::from_secs(6));
    g.log().lines().rfind(|l| l.trim() != "ready").unwrap_or_default().trim().to_string()
}
