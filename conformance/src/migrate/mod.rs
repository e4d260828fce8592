//! `conformance migrate`: a container moves from host A to host B of a
//! three-host overlay lab and keeps its data (a CSI volume) and its
//! reachability, with our binaries driven in the kubelet's and the
//! external-attacher's order (docs/migration.md has the order and its
//! sources).
//!
//! * [`World`]: the lab (3 hosts, a router, etcd, one `cni-overlay agent` per
//!   host), the CSI controller, one CSI node plugin per host (in the host's
//!   netns, so with its own mount namespace = the host's mounts) and a client
//!   container on host C.
//! * [`World::start_pod`] / [`World::stop_pod`]: the calls a pod start / stop
//!   makes, each timed as a [`Step`].
//! * [`run`]: the clean move, the bad sequences, the unclean move (host A
//!   killed), teardown; [`Report`] prints them or gives the JSON.
//! * [`backend`]: the [`backend::VolumeBackend`] trait and csi-nfs.
//! * [`workload`]: the container's program (data set + TCP echo).
//! * [`bench`]: `conformance bench migrate`.

pub mod backend;
pub mod bench;
pub mod workload;

use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tonic::transport::Channel;

use csi_core::pb;
use csi_core::pb::controller_client::ControllerClient;
use csi_core::pb::node_client::NodeClient;
use csi_suite::csi_process::DriverProcess;
use testkit::ensure;
use testkit::lab::{ContainerId, HostId, Node, ProcessGuard};
use testkit::util::{Context as _, R};

use crate::bench_overlay::{overlay_bin, OverlayLab};
use backend::{NfsBackend, Takeover, VolumeBackend};

/// The TCP echo port of the workload (inside the container netns).
pub const ECHO_PORT: u16 = 7070;
/// How long a gRPC call may take.
const RPC_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the workload may take to verify and write its data.
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// What `conformance migrate` runs.
#[derive(Debug, Clone)]
pub struct Opts {
    /// Where cni-overlay and csi-nfs are.
    pub plugin_dir: PathBuf,
    /// The big file's size in MiB (plus three 64 KiB files).
    pub data_mib: usize,
    /// Also the unclean move (host A killed).
    pub unclean: bool,
    /// Also the bad sequences.
    pub bad: bool,
}

/// One timed step of a move.
#[derive(Debug, Clone)]
pub struct Step {
    pub name: String,
    pub ms: f64,
    /// One of our binaries' calls (a CSI RPC or a CNI plugin run), as opposed
    /// to the workload or a check.
    pub ours: bool,
    pub ok: bool,
    pub detail: String,
}

/// One move (clean or unclean) and what it verified.
#[derive(Debug, Clone, Default)]
pub struct Move {
    pub kind: String,
    pub steps: Vec<Step>,
    pub old_ip: String,
    pub new_ip: String,
    pub files_written: usize,
    pub files_verified: usize,
    pub checksums_equal: bool,
    pub echo: String,
    pub ping_ok: bool,
    pub old_ip_released: bool,
    pub notes: Vec<String>,
}

impl Move {
    pub fn total_ms(&self) -> f64 {
        self.steps.iter().map(|s| s.ms).sum()
    }
    pub fn ours_ms(&self) -> f64 {
        self.steps.iter().filter(|s| s.ours).map(|s| s.ms).sum()
    }
    pub fn ok(&self) -> bool {
        self.steps.iter().all(|s| s.ok) && self.checksums_equal && self.ping_ok && self.old_ip_released
    }
    fn to_json(&self) -> Value {
        json!({
            "kind": self.kind,
            "ok": self.ok(),
            "total_ms": round(self.total_ms()),
            "ours_ms": round(self.ours_ms()),
            "old_ip": self.old_ip,
            "new_ip": self.new_ip,
            "files_written_on_source": self.files_written,
            "files_verified_on_target": self.files_verified,
            "checksums_equal": self.checksums_equal,
            "ping_new_ip": self.ping_ok,
            "echo_reply": self.echo,
            "old_ip_released": self.old_ip_released,
            "notes": self.notes,
            "steps": self.steps.iter().map(|s| json!({
                "name": s.name, "ms": round(s.ms), "ours": s.ours, "ok": s.ok, "detail": s.detail,
            })).collect::<Vec<_>>(),
        })
    }
}

/// One bad sequence: the spec's answer and whether anything changed.
#[derive(Debug, Clone)]
pub struct Bad {
    pub name: String,
    pub expected: String,
    pub got: String,
    pub state_unchanged: bool,
    pub applies: bool,
    pub detail: String,
}

impl Bad {
    pub fn ok(&self) -> bool {
        !self.applies || (self.expected == self.got && self.state_unchanged)
    }
}

/// Everything `conformance migrate` found.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub backend: String,
    pub stage_unstage: bool,
    pub publish_unpublish: bool,
    pub lab: Vec<String>,
    pub moves: Vec<Move>,
    pub bad: Vec<Bad>,
    pub takeover: String,
    pub overlay_after_kill: Vec<String>,
    pub teardown_left: Vec<String>,
    pub teardown_done: bool,
}

fn round(ms: f64) -> f64 {
    (ms * 10.0).round() / 10.0
}

impl Report {
    pub fn ok(&self) -> bool {
        !self.moves.is_empty()
            && self.moves.iter().all(Move::ok)
            && self.bad.iter().all(Bad::ok)
            && self.teardown_done
            && self.teardown_left.is_empty()
    }

    pub fn to_json(&self) -> Value {
        json!({
            "ok": self.ok(),
            "backend": self.backend,
            "network": "cni-overlay",
            "capabilities": {"stage_unstage_volume": self.stage_unstage, "publish_unpublish_volume": self.publish_unpublish},
            "lab": self.lab,
            "moves": self.moves.iter().map(Move::to_json).collect::<Vec<_>>(),
            "bad_sequences": self.bad.iter().map(|b| json!({
                "name": b.name, "applies": b.applies, "expected": b.expected, "got": b.got,
                "state_unchanged": b.state_unchanged, "ok": b.ok(), "detail": b.detail,
            })).collect::<Vec<_>>(),
            "takeover": self.takeover,
            "overlay_after_kill": self.overlay_after_kill,
            "teardown": {"done": self.teardown_done, "left": self.teardown_left},
        })
    }

    /// The closing summary.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        s.push_str(&format!(
            "migration summary ({} over cni-overlay; STAGE_UNSTAGE_VOLUME {}, PUBLISH_UNPUBLISH_VOLUME {})\n",
            self.backend,
            yes(self.stage_unstage),
            yes(self.publish_unpublish)
        ));
        for m in &self.moves {
            s.push_str(&format!(
                "  {} move: {} -> {}; {} files written on the source, {} verified on the target, checksums {}; \
                 ping {} {}; echo {:?}; old address {}; total {:.0} ms, our calls {:.0} ms: {}\n",
                m.kind,
                m.old_ip,
                m.new_ip,
                m.files_written,
                m.files_verified,
                if m.checksums_equal { "equal" } else { "DIFFER" },
                m.new_ip,
                if m.ping_ok { "ok" } else { "FAILED" },
                m.echo,
                if m.old_ip_released { "no longer answers" } else { "STILL ANSWERS" },
                m.total_ms(),
                m.ours_ms(),
                if m.ok() { "OK" } else { "FAILED" }
            ));
            for n in &m.notes {
                s.push_str(&format!("    {n}\n"));
            }
        }
        for b in &self.bad {
            if b.applies {
                s.push_str(&format!(
                    "  bad sequence {}: expected {}, got {}, state {}: {}\n",
                    b.name,
                    b.expected,
                    b.got,
                    if b.state_unchanged { "unchanged" } else { "CHANGED" },
                    if b.ok() { "OK" } else { "FAILED" }
                ));
            } else {
                s.push_str(&format!("  bad sequence {}: does not apply ({})\n", b.name, b.detail));
            }
        }
        for l in &self.overlay_after_kill {
            s.push_str(&format!("  overlay after the kill: {l}\n"));
        }
        s.push_str(&format!(
            "  teardown: {}\n",
            if !self.teardown_done {
                "not done".to_string()
            } else if self.teardown_left.is_empty() {
                "nothing left (netns, links, etcd, agents, drivers, mounts, volumes, lab dir)".to_string()
            } else {
                format!("LEFT BEHIND: {}", self.teardown_left.join(", "))
            }
        ));
        s.push_str(if self.ok() { "migrate: OK\n" } else { "migrate: FAILED\n" });
        s
    }
}

fn yes(b: bool) -> &'static str {
    if b {
        "advertised"
    } else {
        "not advertised"
    }
}

/// A CSI node plugin on a lab host.
struct NodePlugin {
    proc: Option<ProcessGuard>,
    ch: Channel,
    node_id: String,
}

/// A pod: its volume, sandbox and container.
pub struct Pod {
    name: String,
    host: HostId,
    vol: pb::Volume,
    publish_context: std::collections::HashMap<String, String>,
    c: Option<ContainerId>,
    ip: Option<Ipv4Addr>,
    proc: Option<ProcessGuard>,
    ready: Value,
}

/// The lab, the drivers and the client container on host C.
pub struct World {
    pub o: OverlayLab,
    pub backend: NfsBackend,
    rt: tokio::runtime::Runtime,
    _controller: DriverProcess,
    ctrl: Channel,
    nodes: Vec<Option<NodePlugin>>,
    /// Hosts A, B, C.
    pub hosts: [HostId; 3],
    client: ContainerId,
    stage: bool,
    publish: bool,
    exe: PathBuf,
    data_bytes: usize,
    seq: u32,
    /// A host that crashed: its netns and its node plugin's mount namespace,
    /// held open so the dead NFS mount stays as the crash left it until
    /// the teardown releases it ([`World::release_dead`]).
    dead: Option<(HostId, std::fs::File)>,
}

/// Bound on releasing a crashed host's NFS mount at teardown.
const DEAD_MOUNT_TIMEOUT: Duration = Duration::from_secs(30);

fn host_name(k: usize) -> &'static str {
    ["A", "B", "C"][k.min(2)]
}

impl World {
    /// Builds everything; `out` gets one line per thing made.
    pub fn new(o: &Opts, out: &mut dyn FnMut(&str)) -> R<World> {
        backend::nfs_client_check()?;
        let bin = overlay_bin(&o.plugin_dir)?;
        let exe = std::env::current_exe().ctx("own path")?;
        let mut ol = OverlayLab::new("migrate", bin)?;
        let sa = ol.lab.segment("192.168.93.0/24")?;
        let sb = ol.lab.segment("192.168.94.0/24")?;
        let hosts = [ol.lab.host(sa)?, ol.lab.host(sa)?, ol.lab.host(sb)?];
        ol.lab.router(&[sa, sb])?;
        let gw = ol.lab.mgmt_gateway();
        let backend = NfsBackend::start(o.plugin_dir.join("csi-nfs"), gw)?;
        out(&format!(
            "lab {}: etcd {}, NFS server nfs-ganesha {}:/export port {} (root netns, over the mgmt network)",
            ol.lab.prefix(),
            ol.lab.etcd_url().unwrap_or_default(),
            gw,
            backend.server().port()
        ));
        for h in hosts {
            ol.spawn_agent(h)?;
        }
        for (k, h) in hosts.iter().enumerate() {
            let s = ol.wait_agent(*h, Duration::from_secs(60))?;
            out(&format!(
                "host {} (netns {}): underlay {}, overlay subnet {s}",
                host_name(k),
                ol.lab.host_ns(*h),
                ol.lab.host_ip(*h)
            ));
        }
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ctx("tokio")?;
        let mut cargs = vec!["--mode".to_string(), "controller".into(), "--node-id".into(), "controller".into()];
        cargs.extend(backend.controller_args());
        let controller = DriverProcess::start(backend.driver(), "migrate-ctrl", &cargs)?;
        let ctrl = rt.block_on(controller.channel())?;
        let mut w = World {
            o: ol,
            backend,
            rt,
            _controller: controller,
            ctrl,
            nodes: Vec::new(),
            hosts,
            client: ContainerId(0),
            stage: false,
            publish: false,
            exe,
            data_bytes: o.data_mib.max(1) << 20,
            seq: 0,
            dead: None,
        };
        for (k, h) in hosts.iter().enumerate().take(2) {
            w.start_node(*h, host_name(k))?;
        }
        let caps = w
            .call(
                NodeClient::new(w.node(hosts[0])?.ch.clone()).node_get_capabilities(pb::NodeGetCapabilitiesRequest {}),
            )
            .map_err(|e| format!("NodeGetCapabilities: {e}"))?;
        w.stage = caps.capabilities.iter().any(|c| {
            matches!(&c.r#type, Some(pb::node_service_capability::Type::Rpc(r))
                if r.r#type == pb::node_service_capability::rpc::Type::StageUnstageVolume as i32)
        });
        let caps = w
            .call(
                ControllerClient::new(w.ctrl.clone())
                    .controller_get_capabilities(pb::ControllerGetCapabilitiesRequest {}),
            )
            .map_err(|e| format!("ControllerGetCapabilities: {e}"))?;
        w.publish = caps.capabilities.iter().any(|c| {
            matches!(&c.r#type, Some(pb::controller_service_capability::Type::Rpc(r))
                if r.r#type == pb::controller_service_capability::rpc::Type::PublishUnpublishVolume as i32)
        });
        out(&format!(
            "{}: controller in the root netns, a node plugin on hosts A and B; STAGE_UNSTAGE_VOLUME {}, \
             PUBLISH_UNPUBLISH_VOLUME {}",
            w.backend.name(),
            yes(w.stage),
            yes(w.publish)
        ));
        let (client, cip, _) = w.o.container(hosts[2])?;
        w.client = client;
        out(&format!("client container on host C: {cip}"));
        Ok(w)
    }

    /// STAGE_UNSTAGE_VOLUME and PUBLISH_UNPUBLISH_VOLUME as the driver advertises them.
    pub fn caps(&self) -> (bool, bool) {
        (self.stage, self.publish)
    }

    fn start_node(&mut self, h: HostId, name: &str) -> R<()> {
        let dir = self.o.lab.dir().join(format!("node-{name}"));
        std::fs::create_dir_all(&dir).ctx("node dir")?;
        let sock = dir.join("csi.sock");
        let node_id = format!("host-{name}");
        let mut args = vec![
            format!("--endpoint=unix://{}", sock.display()),
            "--mode".into(),
            "node".into(),
            "--node-id".into(),
            node_id.clone(),
        ];
        args.extend(self.backend.node_args());
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let p = self.o.lab.spawn(h, &self.backend.driver().display().to_string(), &args, &[])?;
        let started = Instant::now();
        while !sock.exists() {
            ensure!(p.is_running(), "{} node on host {name} exited:\n{}", self.backend.name(), p.log());
            ensure!(started.elapsed() < Duration::from_secs(30), "node on host {name}: no socket:\n{}", p.log());
            std::thread::sleep(Duration::from_millis(10));
        }
        let ch = self
            .rt
            .block_on(csi_core::client::connect(&csi_core::flags::Endpoint::Unix(sock)))
            .map_err(|e| e.to_string())?;
        while self.nodes.len() <= h.0 {
            self.nodes.push(None);
        }
        self.nodes[h.0] = Some(NodePlugin { proc: Some(p), ch, node_id });
        Ok(())
    }

    fn node(&self, h: HostId) -> R<&NodePlugin> {
        self.nodes.get(h.0).and_then(Option::as_ref).ok_or_else(|| format!("no node plugin on host {}", h.0))
    }

    fn call<T>(
        &self,
        f: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, tonic::Status> {
        self.rt.block_on(async {
            match tokio::time::timeout(RPC_TIMEOUT, f).await {
                Ok(r) => r.map(tonic::Response::into_inner),
                Err(_) => Err(tonic::Status::deadline_exceeded(format!("no answer in {RPC_TIMEOUT:?}"))),
            }
        })
    }

    fn label(&self, h: HostId) -> &'static str {
        host_name(self.hosts.iter().position(|x| *x == h).unwrap_or(2))
    }

    /// kubelet's per-pod volume path and the staging path.
    fn target(&self, pod: &Pod, h: HostId) -> PathBuf {
        self.o
            .lab
            .dir()
            .join(format!("kubelet-{}", self.label(h)))
            .join("pods")
            .join(&pod.name)
            .join("volumes/kubernetes.io~csi/pv/mount")
    }

    fn staging(&self, pod: &Pod, h: HostId) -> PathBuf {
        self.o
            .lab
            .dir()
            .join(format!("kubelet-{}", self.label(h)))
            .join("plugins/kubernetes.io/csi")
            .join(&pod.name)
            .join("globalmount")
    }

    /// CreateVolume (the external-provisioner's call).
    pub fn create_volume(&mut self, out: &mut dyn FnMut(&str)) -> R<Pod> {
        self.seq += 1;
        let name = format!("pv-migrate-{}-{}", std::process::id(), self.seq);
        let t = Instant::now();
        let req = pb::CreateVolumeRequest {
            name: name.clone(),
            volume_capabilities: vec![self.backend.capability()],
            parameters: self.backend.create_params(),
            ..Default::default()
        };
        let vol = self
            .call(ControllerClient::new(self.ctrl.clone()).create_volume(req))
            .map_err(|e| format!("CreateVolume {name}: {e}"))?
            .volume
            .ok_or("CreateVolume returned no volume")?;
        out(&format!("CreateVolume {name}: {} ({:.0} ms)", vol.volume_id, t.elapsed().as_secs_f64() * 1e3));
        Ok(Pod {
            name: format!("pod{}", self.seq),
            host: self.hosts[0],
            vol,
            publish_context: Default::default(),
            c: None,
            ip: None,
            proc: None,
            ready: Value::Null,
        })
    }

    /// DeleteVolume.
    pub fn delete_volume(&self, pod: &Pod) -> R<()> {
        let req = pb::DeleteVolumeRequest { volume_id: pod.vol.volume_id.clone(), ..Default::default() };
        self.call(ControllerClient::new(self.ctrl.clone()).delete_volume(req))
            .map(|_| ())
            .map_err(|e| format!("DeleteVolume {}: {e}", pod.vol.volume_id))
    }

    fn step<T>(
        steps: &mut Vec<Step>,
        out: &mut dyn FnMut(&str),
        name: &str,
        ours: bool,
        f: impl FnOnce() -> R<(T, String)>,
    ) -> R<T> {
        let t = Instant::now();
        let r = f();
        let ms = t.elapsed().as_secs_f64() * 1e3;
        match r {
            Ok((v, detail)) => {
                out(&format!("  {name:<44} {ms:>8.1} ms  {detail}"));
                steps.push(Step { name: name.into(), ms, ours, ok: true, detail });
                Ok(v)
            }
            Err(e) => {
                out(&format!("  {name:<44} {ms:>8.1} ms  FAILED: {e}"));
                steps.push(Step { name: name.into(), ms, ours, ok: false, detail: e.clone() });
                Err(e)
            }
        }
    }

    fn rpc_detail<T>(r: Result<T, tonic::Status>, what: &str) -> R<(T, String)> {
        r.map(|v| (v, "OK".to_string())).map_err(|e| format!("{what}: {:?} {}", e.code(), e.message()))
    }

    /// The attach and mount side of a pod start on `h` (ControllerPublish,
    /// NodeStage, NodePublish as advertised): what the attach-detach
    /// controller / external-attacher and the kubelet's volume manager do
    /// before the sandbox exists.
    pub fn attach(&mut self, pod: &mut Pod, h: HostId, steps: &mut Vec<Step>, out: &mut dyn FnMut(&str)) -> R<()> {
        pod.host = h;
        let label = self.label(h);
        let node_id = self.node(h)?.node_id.clone();
        if self.publish {
            let req = pb::ControllerPublishVolumeRequest {
                volume_id: pod.vol.volume_id.clone(),
                node_id: node_id.clone(),
                volume_capability: Some(self.backend.capability()),
                volume_context: pod.vol.volume_context.clone(),
                ..Default::default()
            };
            let mut cli = ControllerClient::new(self.ctrl.clone());
            let fut = cli.controller_publish_volume(req);
            let r = Self::step(steps, out, &format!("ControllerPublishVolume {label}"), true, || {
                Self::rpc_detail(self.call(fut), "ControllerPublishVolume")
            })?;
            pod.publish_context = r.publish_context;
        }
        let ch = self.node(h)?.ch.clone();
        let staging = self.staging(pod, h);
        if self.stage {
            std::fs::create_dir_all(&staging).ctx("staging dir")?;
            let req = pb::NodeStageVolumeRequest {
                volume_id: pod.vol.volume_id.clone(),
                publish_context: pod.publish_context.clone(),
                staging_target_path: staging.display().to_string(),
                volume_capability: Some(self.backend.capability()),
                volume_context: pod.vol.volume_context.clone(),
                ..Default::default()
            };
            let mut cli = NodeClient::new(ch.clone());
            let fut = cli.node_stage_volume(req);
            Self::step(steps, out, &format!("NodeStageVolume {label}"), true, || {
                Self::rpc_detail(self.call(fut), "NodeStageVolume")
            })?;
        }
        let target = self.target(pod, h);
        if let Some(p) = target.parent() {
            std::fs::create_dir_all(p).ctx("pod volume dir")?;
        }
        let req = pb::NodePublishVolumeRequest {
            volume_id: pod.vol.volume_id.clone(),
            publish_context: pod.publish_context.clone(),
            staging_target_path: if self.stage { staging.display().to_string() } else { String::new() },
            target_path: target.display().to_string(),
            volume_capability: Some(self.backend.capability()),
            readonly: false,
            volume_context: pod.vol.volume_context.clone(),
            ..Default::default()
        };
        let mut cli = NodeClient::new(ch);
        let fut = cli.node_publish_volume(req);
        Self::step(steps, out, &format!("NodePublishVolume {label}"), true, || {
            Self::rpc_detail(self.call(fut), "NodePublishVolume")
        })?;
        Ok(())
    }

    /// RunPodSandbox's network part (CNI ADD) and the container start; then
    /// host C's client reaches it (ping and TCP echo).
    pub fn run_pod(&mut self, pod: &mut Pod, steps: &mut Vec<Step>, out: &mut dyn FnMut(&str), mv: &mut Move) -> R<()> {
        let h = pod.host;
        let label = self.label(h);
        let c = self.o.lab.container(h)?;
        pod.c = Some(c);
        let conf = self.o.plugin_conf(h);
        let bin = self.o.bin.clone();
        let lab = &self.o.lab;
        let ip: Ipv4Addr = Self::step(steps, out, &format!("CNI ADD {label} (RunPodSandbox)"), true, || {
            let (ok, r) = lab.cni(h, &bin, "ADD", c, "eth0", &conf, &[])?;
            ensure!(ok, "ADD on host {label}: {r}");
            let ip: Ipv4Addr = r["ips"][0]["address"]
                .as_str()
                .and_then(|a| a.split('/').next())
                .and_then(|a| a.parse().ok())
                .ok_or_else(|| format!("no IPv4 in the ADD result: {r}"))?;
            Ok((ip, format!("eth0 {ip}")))
        })?;
        pod.ip = Some(ip);
        mv.new_ip = ip.to_string();
        let node_pid = self.node(h)?.proc.as_ref().map(ProcessGuard::pid).ok_or("node plugin gone")?;
        let target = self.target(pod, h);
        let tag = format!("{}-{}-{}", pod.name, label, self.seq);
        self.seq += 1;
        let (exe, bytes) = (self.exe.display().to_string(), self.data_bytes.to_string());
        let netns = lab.container_path(c);
        let mnt = format!("--mount=/proc/{node_pid}/ns/mnt");
        let net = format!("--net={netns}");
        let tgt = target.display().to_string();
        let port = ECHO_PORT.to_string();
        let args = [
            mnt.as_str(),
            &net,
            "--",
            "unshare",
            "--mount",
            "--propagation",
            "slave",
            &exe,
            "migrate-workload",
            "--dir",
            &tgt,
            "--tag",
            &tag,
            "--port",
            &port,
            "--bytes",
            &bytes,
        ];
        let ready: Value =
            Self::step(steps, out, &format!("container start {label} (verify + write data)"), false, || {
                let g = lab.spawn(Node::Root, "nsenter", &args, &[])?;
                let started = Instant::now();
                let line = loop {
                    if let Some(l) = g.log().lines().find_map(|l| l.strip_prefix("READY ").map(str::to_string)) {
                        break l;
                    }
                    ensure!(g.is_running(), "the workload exited:\n{}", g.log());
                    ensure!(
                        started.elapsed() < READY_TIMEOUT,
                        "the workload not ready in {READY_TIMEOUT:?}:\n{}",
                        g.log()
                    );
                    std::thread::sleep(Duration::from_millis(20));
                };
                let v: Value = serde_json::from_str(&line).ctx("READY json")?;
                let (nv, nw) =
                    (v["verified"].as_array().map_or(0, Vec::len), v["written"].as_array().map_or(0, Vec::len));
                let bad = v["mismatches"].as_array().map_or(0, Vec::len);
                pod.proc = Some(g);
                Ok((v, format!("{nv} files verified ({bad} mismatches), {nw} written and fsync'd")))
            })?;
        pod.ready = ready;
        let client = self.client;
        mv.ping_ok = Self::step(steps, out, &format!("host C -> {ip} ping"), false, || {
            let ok = lab.ping_until(client, ip, Duration::from_secs(20));
            ensure!(ok, "no answer from {ip}");
            Ok((true, "answers".to_string()))
        })
        .is_ok();
        mv.echo = Self::step(steps, out, &format!("host C -> {ip}:{ECHO_PORT} TCP echo"), false, || {
            let script = format!("exec 3<>/dev/tcp/{ip}/{ECHO_PORT} && echo hello >&3 && head -n1 <&3");
            let reply = lab.exec_ok(client, &["timeout", "10", "bash", "-c", &script])?;
            let reply = reply.trim().to_string();
            ensure!(reply == format!("{tag} hello"), "echo answered {reply:?}, not from {tag}");
            Ok((reply.clone(), format!("{reply:?}")))
        })
        .unwrap_or_default();
        Ok(())
    }

    /// A clean pod stop on its host: container stop, CNI DEL (StopPodSandbox),
    /// NodeUnpublish, NodeUnstage, ControllerUnpublish (as advertised).
    pub fn stop_pod(&mut self, pod: &mut Pod, steps: &mut Vec<Step>, out: &mut dyn FnMut(&str)) -> R<()> {
        let h = pod.host;
        let label = self.label(h);
        if let Some(g) = pod.proc.take() {
            Self::step(steps, out, &format!("container stop {label}"), false, || {
                g.terminate(Duration::from_secs(5));
                Ok(((), "SIGTERM".to_string()))
            })?;
        }
        if let Some(c) = pod.c.take() {
            let conf = self.o.plugin_conf(h);
            let bin = self.o.bin.clone();
            let lab = &self.o.lab;
            Self::step(steps, out, &format!("CNI DEL {label} (StopPodSandbox)"), true, || {
                let (ok, r) = lab.cni(h, &bin, "DEL", c, "eth0", &conf, &[])?;
                ensure!(ok, "DEL on host {label}: {r}");
                Ok(((), "OK".to_string()))
            })?;
            self.o.lab.remove_container(c)?;
        }
        let ch = self.node(h)?.ch.clone();
        let target = self.target(pod, h);
        let req = pb::NodeUnpublishVolumeRequest {
            volume_id: pod.vol.volume_id.clone(),
            target_path: target.display().to_string(),
        };
        let mut cli = NodeClient::new(ch.clone());
        let fut = cli.node_unpublish_volume(req);
        Self::step(steps, out, &format!("NodeUnpublishVolume {label}"), true, || {
            Self::rpc_detail(self.call(fut), "NodeUnpublishVolume")
        })?;
        if self.stage {
            let req = pb::NodeUnstageVolumeRequest {
                volume_id: pod.vol.volume_id.clone(),
                staging_target_path: self.staging(pod, h).display().to_string(),
            };
            let mut cli = NodeClient::new(ch);
            let fut = cli.node_unstage_volume(req);
            Self::step(steps, out, &format!("NodeUnstageVolume {label}"), true, || {
                Self::rpc_detail(self.call(fut), "NodeUnstageVolume")
            })?;
        }
        if self.publish {
            let req = pb::ControllerUnpublishVolumeRequest {
                volume_id: pod.vol.volume_id.clone(),
                node_id: self.node(h)?.node_id.clone(),
                ..Default::default()
            };
            let mut cli = ControllerClient::new(self.ctrl.clone());
            let fut = cli.controller_unpublish_volume(req);
            Self::step(steps, out, &format!("ControllerUnpublishVolume {label}"), true, || {
                Self::rpc_detail(self.call(fut), "ControllerUnpublishVolume")
            })?;
        }
        Ok(())
    }

    /// Host C's client pings `ip` once (1 s): true if it does NOT answer.
    fn released(&self, ip: Option<Ipv4Addr>) -> bool {
        ip.is_some_and(|ip| !self.o.lab.ping(self.client, ip))
    }

    /// Compares what the source wrote with what the target verified.
    fn compare(mv: &mut Move, source: &Value, target: &Value) {
        let written = source["written"].as_array().cloned().unwrap_or_default();
        let verified = target["verified"].as_array().cloned().unwrap_or_default();
        mv.files_written = written.len();
        mv.files_verified = verified.len();
        let ok = target["mismatches"].as_array().is_some_and(Vec::is_empty)
            && !written.is_empty()
            && written.iter().all(|w| verified.iter().any(|v| v["file"] == w["file"] && v["sha256"] == w["sha256"]));
        mv.checksums_equal = ok;
    }

    /// The clean move of `pod` (running on A) to B.
    pub fn clean_move(&mut self, pod: &mut Pod, to: HostId, out: &mut dyn FnMut(&str)) -> R<Move> {
        let mut mv = Move {
            kind: "clean".into(),
            old_ip: pod.ip.map(|i| i.to_string()).unwrap_or_default(),
            ..Default::default()
        };
        let mut steps = Vec::new();
        let source = pod.ready.clone();
        let old_ip = pod.ip;
        let r = (|| {
            self.stop_pod(pod, &mut steps, out)?;
            self.attach(pod, to, &mut steps, out)?;
            self.run_pod(pod, &mut steps, out, &mut mv)
        })();
        mv.steps = steps;
        r?;
        mv.old_ip_released = self.released(old_ip);
        out(&format!(
            "  old address {} {}",
            mv.old_ip,
            if mv.old_ip_released { "no longer answers" } else { "STILL ANSWERS" }
        ));
        Self::compare(&mut mv, &source, &pod.ready);
        Ok(mv)
    }

    /// Starts `pod` on `h` (attach, sandbox, container) as a move's first half.
    pub fn first_start(&mut self, pod: &mut Pod, h: HostId, out: &mut dyn FnMut(&str)) -> R<Vec<Step>> {
        let mut steps = Vec::new();
        let mut mv = Move::default();
        self.attach(pod, h, &mut steps, out)?;
        self.run_pod(pod, &mut steps, out, &mut mv)?;
        ensure!(mv.ping_ok && !mv.echo.is_empty(), "the pod on host {} is not reachable", self.label(h));
        Ok(steps)
    }

    /// Host A dies with the pod on it; the pod comes up on B through the
    /// backend's takeover path.
    pub fn unclean_move(&mut self, pod: &mut Pod, out: &mut dyn FnMut(&str), report: &mut Report) -> R<Move> {
        let (a, b, c) = (self.hosts[0], self.hosts[1], self.hosts[2]);
        let mut mv = Move {
            kind: "unclean".into(),
            old_ip: pod.ip.map(|i| i.to_string()).unwrap_or_default(),
            ..Default::default()
        };
        let mut steps = Vec::new();
        let source = pod.ready.clone();
        let old_ip = pod.ip;
        let a_subnet =
            crate::bench_overlay::subnet_of(&std::fs::read_to_string(self.o.subnet_file(a)).unwrap_or_default());
        let r = (|| -> R<()> {
            let workload = pod.proc.take();
            let node = self.nodes.get_mut(a.0).and_then(Option::take);
            let agent = self.o.agents.get_mut(a.0).and_then(Option::take);
            let cid = pod.c.take();
            // Hold A's mount namespace: its NFS mount outlives A's processes,
            // so their deaths cannot end the NFS session (a crashed host sends nothing).
            let node_proc = node.and_then(|mut n| n.proc.take());
            if let Some(p) = &node_proc {
                let ns = format!("/proc/{}/ns/mnt", p.pid());
                self.dead = Some((a, std::fs::File::open(&ns).ctx(format!("open {ns}"))?));
            }
            let lab = &self.o.lab;
            Self::step(&mut steps, out, "host A crashes", false, || {
                // First cut A off: its underlay and mgmt links go down, so the NFS
                // server and the overlay hear nothing more from it, not even a close.
                for dev in ["eth0", "mgmt"] {
                    lab.exec_ok(a, &["ip", "link", "set", dev, "down"])?;
                }
                // Then everything of A dies at once: no NodeUnpublish, no CNI DEL.
                for g in [workload, node_proc, agent].into_iter().flatten() {
                    g.kill();
                }
                Ok((
                    (),
                    "eth0 and mgmt down first, then workload, node plugin and agent SIGKILLed; \
                     A's NFS mount left as it was"
                        .to_string(),
                ))
            })?;
            if let Some(cid) = cid {
                self.o.lab.remove_container(cid)?;
            }
            if self.backend.takeover() == Takeover::DetachDeadNodeFirst && self.publish {
                let req = pb::ControllerUnpublishVolumeRequest {
                    volume_id: pod.vol.volume_id.clone(),
                    node_id: "host-A".into(),
                    ..Default::default()
                };
                let mut cli = ControllerClient::new(self.ctrl.clone());
                let fut = cli.controller_unpublish_volume(req);
                Self::step(&mut steps, out, "ControllerUnpublishVolume A (dead node)", true, || {
                    Self::rpc_detail(self.call(fut), "ControllerUnpublishVolume")
                })?;
            }
            pod.c = None;
            self.attach(pod, b, &mut steps, out)?;
            self.run_pod(pod, &mut steps, out, &mut mv)
        })();
        mv.steps = steps;
        r?;
        mv.notes.push(format!("takeover: {}", self.backend.takeover_doc()));
        // Evidence of a crash, not a shutdown: A's NFS mount was still there while B took over.
        mv.notes.push(match self.dead_nfs_mounts(false) {
            Ok(m) if !m.is_empty() => format!("host A's NFS mount still in place after B took over: {}", m.join(", ")),
            Ok(_) => "host A's NFS mount: NONE left in its mount namespace".to_string(),
            Err(e) => format!("host A's NFS mount: not readable: {e}"),
        });
        Self::compare(&mut mv, &source, &pod.ready);
        // The overlay: A's lease stays until its TTL; `cni-overlay remove-host` is the operator's step.
        let url = self.o.etcd_local()?;
        let bin = self.o.bin.display().to_string();
        let leases = testkit::util::run(&bin, &["leases", "--etcd-endpoints", &url]).unwrap_or_else(|e| e);
        if let Some(s) = a_subnet {
            let line = leases.lines().find(|l| l.starts_with(&s.to_string())).unwrap_or("(none)").to_string();
            report.overlay_after_kill.push(format!("A's lease is still in etcd after the kill: {}", line.trim()));
            let t = Instant::now();
            let removed = testkit::util::run(&bin, &["remove-host", "--etcd-endpoints", &url, &s.to_string()]);
            let net = s.to_string();
            let mut gone = false;
            while t.elapsed() < Duration::from_secs(20) {
                let routes = self.o.lab.exec_ok(c, &["ip", "route", "show", &net]).unwrap_or_default();
                if routes.trim().is_empty() {
                    gone = true;
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            report.overlay_after_kill.push(format!(
                "`cni-overlay remove-host {net}`: {}; host C's route to {net} {} ({:.0} ms)",
                match &removed {
                    Ok(_) => "ok".to_string(),
                    Err(e) => format!("FAILED: {e}"),
                },
                if gone { "removed" } else { "STILL THERE" },
                t.elapsed().as_secs_f64() * 1e3
            ));
            mv.old_ip_released = removed.is_ok() && gone && self.released(old_ip);
        } else {
            report.overlay_after_kill.push("A's subnet file was not readable".into());
        }
        out(&format!(
            "  old address {} {}",
            mv.old_ip,
            if mv.old_ip_released { "released (lease removed, no answer)" } else { "NOT RELEASED" }
        ));
        Ok(mv)
    }

    /// The mounts every live node plugin sees under the lab's dir.
    fn mount_state(&self) -> Vec<String> {
        let dir = self.o.lab.dir().display().to_string();
        let mut all = Vec::new();
        for n in self.nodes.iter().flatten() {
            if let Some(p) = &n.proc {
                let info = std::fs::read_to_string(format!("/proc/{}/mountinfo", p.pid())).unwrap_or_default();
                let mut m: Vec<String> = info
                    .lines()
                    .filter_map(|l| l.split_whitespace().nth(4))
                    .filter(|mp| mp.starts_with(&dir))
                    .map(|mp| format!("{}:{mp}", n.node_id))
                    .collect();
                all.append(&mut m);
            }
        }
        all.sort();
        all
    }

    fn code(r: Result<(), tonic::Status>) -> String {
        match r {
            Ok(()) => "OK".into(),
            Err(e) => format!("{:?}", e.code()),
        }
    }

    /// The bad sequences, with `pod` published read-write on B and host A alive.
    pub fn bad_sequences(&mut self, pod: &Pod, out: &mut dyn FnMut(&str)) -> R<Vec<Bad>> {
        let (a, _b) = (self.hosts[0], self.hosts[1]);
        let mut res = Vec::new();
        let fresh = self.create_volume(out)?;
        // 1. ControllerUnpublish of a volume never published.
        let before = self.mount_state();
        let req = pb::ControllerUnpublishVolumeRequest {
            volume_id: fresh.vol.volume_id.clone(),
            node_id: self.node(a)?.node_id.clone(),
            ..Default::default()
        };
        let got = Self::code(
            self.call(ControllerClient::new(self.ctrl.clone()).controller_unpublish_volume(req)).map(|_| ()),
        );
        let (expected, why) = if self.publish {
            ("OK", "spec: not attached -> OK (it can be regarded as unpublished)")
        } else {
            ("Unimplemented", "the driver does not advertise PUBLISH_UNPUBLISH_VOLUME -> UNIMPLEMENTED")
        };
        let still = self.validate(&fresh);
        res.push(Bad {
            name: "ControllerUnpublishVolume of a never-published volume".into(),
            expected: expected.into(),
            got,
            state_unchanged: before == self.mount_state() && still,
            applies: true,
            detail: format!("{why}; the volume still validates: {still}"),
        });
        // 2. NodePublish before NodeStage.
        if self.stage {
            let before = self.mount_state();
            let t = self.target(&fresh, a);
            let req = pb::NodePublishVolumeRequest {
                volume_id: fresh.vol.volume_id.clone(),
                target_path: t.display().to_string(),
                volume_capability: Some(self.backend.capability()),
                volume_context: fresh.vol.volume_context.clone(),
                ..Default::default()
            };
            let got =
                Self::code(self.call(NodeClient::new(self.node(a)?.ch.clone()).node_publish_volume(req)).map(|_| ()));
            res.push(Bad {
                name: "NodePublishVolume before NodeStageVolume".into(),
                expected: "FailedPrecondition".into(),
                got,
                state_unchanged: before == self.mount_state(),
                applies: true,
                detail: "spec: STAGE_UNSTAGE_VOLUME advertised and no staging_target_path -> FAILED_PRECONDITION"
                    .into(),
            });
        } else {
            res.push(Bad {
                name: "NodePublishVolume before NodeStageVolume".into(),
                expected: "-".into(),
                got: "-".into(),
                state_unchanged: true,
                applies: false,
                detail: format!(
                    "{} does not advertise STAGE_UNSTAGE_VOLUME: NodePublish is the only node call",
                    self.backend.name()
                ),
            });
        }
        // 3. The volume on host A while B has it read-write.
        let before = self.mount_state();
        let mut steps = Vec::new();
        let mut probe = Pod {
            name: format!("{}-second", pod.name),
            host: a,
            vol: pod.vol.clone(),
            publish_context: Default::default(),
            c: None,
            ip: None,
            proc: None,
            ready: Value::Null,
        };
        let mut quiet = |_: &str| {};
        let r = self.attach(&mut probe, a, &mut steps, &mut quiet);
        let mut got = match &r {
            Ok(()) => "OK".to_string(),
            Err(e) => e.split_once(": ").and_then(|(_, c)| c.split_whitespace().next()).unwrap_or(e).to_string(),
        };
        let which = steps.last().map(|s| s.name.clone()).unwrap_or_default();
        let (expected, unchanged, detail) = if self.backend.can_share() {
            // It can share: the second node sees the same data; then it lets go again.
            let t = self.target(&probe, a);
            let node_pid = self.node(a)?.proc.as_ref().map(ProcessGuard::pid).unwrap_or(0);
            let seen = std::process::Command::new("nsenter")
                .arg(format!("--mount=/proc/{node_pid}/ns/mnt"))
                .args(["--", "cat"])
                .arg(t.join(workload::MANIFEST))
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).lines().count())
                .unwrap_or(0);
            if r.is_ok() && seen == 0 {
                got = "OK, but host A saw no data".into();
            }
            let mut undo = Vec::new();
            let undone = r.is_ok() && self.stop_pod(&mut probe, &mut undo, &mut quiet).is_ok();
            (
                "OK",
                undone && before == self.mount_state(),
                format!(
                    "{} is multi-node: {which} on A succeeds while B has it read-write; A sees the manifest's {seen} \
                     files, then unpublishes",
                    self.backend.name()
                ),
            )
        } else {
            ("FailedPrecondition", before == self.mount_state(), format!("{which} on A while B has it RW"))
        };
        res.push(Bad {
            name: "the volume on host A while host B has it read-write".into(),
            expected: expected.into(),
            got,
            state_unchanged: unchanged,
            applies: true,
            detail,
        });
        self.delete_volume(&fresh)?;
        for b in &res {
            out(&format!(
                "  bad sequence {}: expected {}, got {}, state {}",
                b.name,
                b.expected,
                b.got,
                if b.state_unchanged { "unchanged" } else { "CHANGED" }
            ));
        }
        Ok(res)
    }

    fn validate(&self, pod: &Pod) -> bool {
        let req = pb::ValidateVolumeCapabilitiesRequest {
            volume_id: pod.vol.volume_id.clone(),
            volume_capabilities: vec![self.backend.capability()],
            volume_context: pod.vol.volume_context.clone(),
            ..Default::default()
        };
        self.call(ControllerClient::new(self.ctrl.clone()).validate_volume_capabilities(req))
            .is_ok_and(|r| r.confirmed.is_some())
    }

    /// Stops `pod` wherever it is and deletes its volume.
    pub fn finish(&mut self, pod: &mut Pod) -> R<()> {
        let mut steps = Vec::new();
        self.stop_pod(pod, &mut steps, &mut |_| {})?;
        self.delete_volume(pod)
    }

    /// Releases a crashed host's NFS mount, bounded: its mgmt link comes back
    /// up so the server answers the dead client's last calls (a real host
    /// would have rebooted instead), then a forced, lazy umount of every
    /// NFS mount under the lab's dir in its mount namespace. Returns what
    /// failed.
    fn release_dead(&mut self) -> Vec<String> {
        let mut left = Vec::new();
        let Some((h, _)) = self.dead else { return left };
        if let Err(e) = self.o.lab.exec_ok(h, &["ip", "link", "set", "mgmt", "up"]) {
            left.push(format!("host A's mgmt link not back up: {e}"));
        }
        match self.dead_nfs_mounts(true).and_then(|_| self.dead_nfs_mounts(false)) {
            Ok(still) => left.extend(still.iter().map(|m| format!("host A's dead NFS mount {m}"))),
            Err(e) => left.push(format!("host A's dead NFS mount: {e}")),
        }
        self.dead = None;
        left
    }

    /// The NFS mounts under the lab's dir in the crashed host's held mount
    /// namespace; with `umount`, each gets `umount2(MNT_FORCE | MNT_DETACH)`.
    /// Bounded by [`DEAD_MOUNT_TIMEOUT`].
    fn dead_nfs_mounts(&self, umount: bool) -> R<Vec<String>> {
        use std::os::fd::AsRawFd as _;
        let Some((h, ns)) = &self.dead else { return Ok(Vec::new()) };
        let mnt = PathBuf::from(format!("/proc/self/fd/{}", ns.as_raw_fd()));
        let net = PathBuf::from(format!("/var/run/netns/{}", self.o.lab.host_ns(*h)));
        let dir = self.o.lab.dir().display().to_string();
        let r = linux_net::netns::run_in_bounded(&net, Some(&mnt), DEAD_MOUNT_TIMEOUT, move || -> R<Vec<String>> {
            let info = std::fs::read_to_string("/proc/thread-self/mountinfo").ctx("mountinfo")?;
            let table = csi_core::mount::parse_mountinfo(&info).map_err(|e| e.to_string())?;
            let mut found = Vec::new();
            for m in table.iter().filter(|m| m.fs_type.starts_with("nfs") && m.mount_point.starts_with(&dir)) {
                if umount {
                    let flags = nix::mount::MntFlags::MNT_FORCE | nix::mount::MntFlags::MNT_DETACH;
                    nix::mount::umount2(&m.mount_point, flags)
                        .map_err(|e| format!("umount -f -l {}: {e}", m.mount_point.display()))?;
                }
                found.push(m.mount_point.display().to_string());
            }
            Ok(found)
        })
        .map_err(|e| e.to_string())?;
        r.ok_or_else(|| format!("no return in {DEAD_MOUNT_TIMEOUT:?}"))?
    }

    /// Tears everything down and returns what is left (netns, links, dir, volumes on the server).
    pub fn teardown(mut self) -> Vec<String> {
        let dead = self.release_dead();
        let names = self.o.lab.netns_names();
        let links = self.o.lab.root_links();
        let dir = self.o.lab.dir().to_path_buf();
        for n in self.nodes.iter_mut().flatten() {
            if let Some(p) = n.proc.take() {
                p.terminate(Duration::from_secs(5));
            }
        }
        for g in self.o.agents.iter_mut().filter_map(Option::take) {
            g.terminate(Duration::from_secs(5));
        }
        let export = self.backend.server().root();
        let mut left: Vec<String> = std::fs::read_dir(&export)
            .map(|d| {
                d.flatten()
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .filter(|n| !n.starts_with('.'))
                    .map(|n| format!("volume {n} on the server"))
                    .collect()
            })
            .unwrap_or_default();
        let World { o, backend, _controller, .. } = self;
        drop(_controller);
        drop(o);
        drop(backend);
        left.extend(dead);
        left.extend(crate::demo::lab_leftovers(&names, &links, &dir));
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let d = dir.display().to_string();
        left.extend(mounts.lines().filter(|l| l.contains(&d)).map(|l| format!("mount {l}")));
        left
    }
}

/// Runs the whole scenario: clean move, bad sequences, unclean move, teardown.
pub fn run(o: &Opts, out: &mut dyn FnMut(&str)) -> R<Report> {
    let mut w = World::new(o, out)?;
    let (stage, publish) = w.caps();
    let mut report = Report {
        backend: w.backend.name().to_string(),
        stage_unstage: stage,
        publish_unpublish: publish,
        takeover: w.backend.takeover_doc().to_string(),
        ..Default::default()
    };
    for (k, h) in w.hosts.iter().enumerate() {
        report.lab.push(format!(
            "host {} netns {} underlay {} subnet {}",
            host_name(k),
            w.o.lab.host_ns(*h),
            w.o.lab.host_ip(*h),
            std::fs::read_to_string(w.o.subnet_file(*h))
                .ok()
                .and_then(|e| crate::bench_overlay::subnet_of(&e))
                .map(|s| s.to_string())
                .unwrap_or_default()
        ));
    }
    let r = scenario(&mut w, o, out, &mut report);
    if let Err(e) = &r {
        out(&format!("FAILED: {e}"));
    }
    out("teardown: pods, volumes, drivers, agents, etcd, NFS server, lab (netns, links, dir)");
    report.teardown_left = w.teardown();
    report.teardown_done = r.is_ok();
    Ok(report)
}

fn scenario(w: &mut World, o: &Opts, out: &mut dyn FnMut(&str), report: &mut Report) -> R<()> {
    let (a, b) = (w.hosts[0], w.hosts[1]);
    out("== clean move: a container with its volume from host A to host B");
    let mut pod = w.create_volume(out)?;
    out("  start on host A");
    w.first_start(&mut pod, a, out)?;
    out("  move to host B");
    let mv = w.clean_move(&mut pod, b, out)?;
    out(&format!("  clean move: total {:.0} ms, our calls {:.0} ms", mv.total_ms(), mv.ours_ms()));
    report.moves.push(mv);
    if o.bad {
        out("== bad sequences (the volume is read-write on host B)");
        report.bad = w.bad_sequences(&pod, out)?;
    }
    w.finish(&mut pod)?;
    if o.unclean {
        out("== unclean move: host A dies with the container on it");
        let mut pod = w.create_volume(out)?;
        out("  start on host A");
        w.first_start(&mut pod, a, out)?;
        let mv = w.unclean_move(&mut pod, out, report)?;
        out(&format!("  unclean move: total {:.0} ms, our calls {:.0} ms", mv.total_ms(), mv.ours_ms()));
        report.moves.push(mv);
        w.finish(&mut pod)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn step(name: &str, ms: f64, ours: bool, ok: bool) -> Step {
        Step { name: name.into(), ms, ours, ok, detail: String::new() }
    }

    fn good_move() -> Move {
        Move {
            kind: "clean".into(),
            steps: vec![
                step("container stop A", 5.0, false, true),
                step("CNI DEL A (StopPodSandbox)", 10.0, true, true),
                step("NodeUnpublishVolume A", 20.0, true, true),
            ],
            checksums_equal: true,
            ping_ok: true,
            old_ip_released: true,
            ..Default::default()
        }
    }

    #[test]
    fn our_time_counts_only_our_calls_and_any_failure_fails_the_report() {
        let m = good_move();
        assert_eq!((m.total_ms(), m.ours_ms()), (35.0, 30.0));
        let mut r = Report { moves: vec![m], teardown_done: true, ..Default::default() };
        assert!(r.ok());
        assert_eq!(r.to_json()["moves"][0]["ours_ms"], 30.0);
        // A bad sequence that does not apply does not fail the run; one with the wrong code does.
        r.bad.push(Bad {
            name: "n/a".into(),
            expected: "-".into(),
            got: "-".into(),
            state_unchanged: true,
            applies: false,
            detail: String::new(),
        });
        assert!(r.ok());
        r.bad.push(Bad {
            name: "x".into(),
            expected: "Unimplemented".into(),
            got: "OK".into(),
            state_unchanged: true,
            applies: true,
            detail: String::new(),
        });
        assert!(!r.ok() && r.summary().ends_with("migrate: FAILED\n"));
        r.bad.pop();
        for broken in [
            |m: &mut Move| m.checksums_equal = false,
            |m: &mut Move| m.ping_ok = false,
            |m: &mut Move| m.old_ip_released = false,
            |m: &mut Move| m.steps[1].ok = false,
        ] {
            let mut r2 = r.clone();
            broken(&mut r2.moves[0]);
            assert!(!r2.ok());
        }
        r.teardown_left.push("netns x".into());
        assert!(!r.ok());
        assert!(!Report::default().ok(), "a run with no move is not a success");
    }
}
