//! csi-nfs's `--metrics-address` as an operator sees it: the real binary
//! against a real nfs-ganesha, known calls made over gRPC, then `/metrics`
//! scraped over HTTP and every count checked. Without the flag the driver
//! listens on no TCP port at all; a bad or busy address stops it at start.
//!
//! `cargo build --release -p csi-nfs && cargo test --release -p conformance --test csi_nfs_metrics -- --test-threads=2`

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use csi_core::pb::controller_client::ControllerClient;
use csi_core::pb::identity_client::IdentityClient;
use csi_core::pb::{self, volume_capability as vc};
use csi_suite::csi_process::DriverProcess;
use csi_suite::ganesha::Ganesha;
use prom_endpoint::{parse_text, scrape, value, Sample};
use tonic::Code;

fn binary() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    // target/release/deps/<test> -> target/release/csi-nfs
    let bin = exe.parent().and_then(std::path::Path::parent).unwrap().join("csi-nfs");
    assert!(bin.is_file(), "{} missing: run `cargo build --release -p csi-nfs` first", bin.display());
    bin
}

/// A loopback port nobody listens on right now (the kernel's pick).
fn free_port() -> SocketAddr {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap()
}

fn create_req(g: &Ganesha, name: &str) -> pb::CreateVolumeRequest {
    let params: HashMap<String, String> = [
        ("server", "127.0.0.1".to_string()),
        ("share", "/export".to_string()),
        ("mountOptions", format!("port={},nfsvers=4.1", g.port())),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    pb::CreateVolumeRequest {
        name: name.into(),
        capacity_range: Some(pb::CapacityRange { required_bytes: 1 << 30, limit_bytes: 0 }),
        volume_capabilities: vec![pb::VolumeCapability {
            access_type: Some(vc::AccessType::Mount(vc::MountVolume::default())),
            access_mode: Some(vc::AccessMode { mode: vc::access_mode::Mode::MultiNodeMultiWriter as i32 }),
        }],
        parameters: params,
        ..Default::default()
    }
}

async fn scrape_now(addr: SocketAddr) -> (String, Vec<Sample>) {
    let body = tokio::task::spawn_blocking(move || scrape(addr, Duration::from_secs(5)))
        .await
        .unwrap()
        .unwrap_or_else(|e| panic!("scrape {addr}: {e}"));
    let samples = parse_text(&body).unwrap();
    (body, samples)
}

fn listening_sockets_of(pid: u32) -> usize {
    testkit::util::tcp_listeners_of(pid).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn counts_every_call_by_method_and_code_and_reports_the_nfs_pool() {
    let g = Ganesha::start().expect("start nfs-ganesha (apt-get install nfs-ganesha nfs-ganesha-vfs)");
    let addr = free_port();
    let args: Vec<String> = ["--mode", "controller", "--node-id", "test", "--state-dir={dir}/state"]
        .into_iter()
        .map(String::from)
        .chain([format!("--metrics-address={addr}")])
        .collect();
    let p = DriverProcess::start(&binary(), "csi-nfs-metrics", &args).expect("start csi-nfs");
    assert_eq!(listening_sockets_of(p.pid()), 1, "one TCP listener: the metrics endpoint");

    // Before any call: the series of the driver's own metrics, no calls counted.
    let (body, s) = scrape_now(addr).await;
    assert_eq!(value(&s, "csi_nfs_shares_known", &[]), Some(0.0), "{body}");
    assert_eq!(value(&s, "csi_nfs_connections_open", &[]), Some(0.0), "{body}");
    assert!(!body.contains("csi_operations_total{"), "{body}");

    let channel = p.channel().await.unwrap();
    let mut ctl = ControllerClient::new(channel.clone());
    let mut id = IdentityClient::new(channel);
    const N: usize = 3;
    let mut ids = Vec::new();
    for i in 0..N {
        let v = ctl.create_volume(create_req(&g, &format!("pvc-m{i}"))).await.unwrap().into_inner().volume.unwrap();
        ids.push(v.volume_id);
    }
    let e = ctl.create_volume(create_req(&g, "")).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    ctl.delete_volume(pb::DeleteVolumeRequest { volume_id: ids[0].clone(), ..Default::default() }).await.unwrap();
    let e = ctl.delete_volume(pb::DeleteVolumeRequest::default()).await.unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument);
    id.get_plugin_info(pb::GetPluginInfoRequest::default()).await.unwrap();
    id.probe(pb::ProbeRequest::default()).await.unwrap();
    id.probe(pb::ProbeRequest::default()).await.unwrap();

    let (body, s) = scrape_now(addr).await;
    let v = |name: &str, labels: &[(&str, &str)]| value(&s, name, labels);
    let cv = "/csi.v1.Controller/CreateVolume";
    let dv = "/csi.v1.Controller/DeleteVolume";
    let ops = "csi_operations_total";
    assert_eq!(v(ops, &[("method", cv), ("code", "OK")]), Some(N as f64), "{body}");
    assert_eq!(v(ops, &[("method", cv), ("code", "InvalidArgument")]), Some(1.0), "{body}");
    assert_eq!(v(ops, &[("method", dv), ("code", "OK")]), Some(1.0), "{body}");
    assert_eq!(v(ops, &[("method", dv), ("code", "InvalidArgument")]), Some(1.0), "{body}");
    assert_eq!(v(ops, &[("method", "/csi.v1.Identity/GetPluginInfo"), ("code", "OK")]), Some(1.0), "{body}");
    assert_eq!(v(ops, &[("method", "/csi.v1.Identity/Probe"), ("code", "OK")]), Some(2.0), "{body}");
    let total: f64 = s.iter().filter(|x| x.name == ops).map(|x| x.value).sum();
    assert_eq!(total, (N + 1 + 2 + 3) as f64, "no other call was counted:\n{body}");

    // One latency observation per call, each bucket cumulative.
    let h = "csi_operation_duration_seconds";
    assert_eq!(v(&format!("{h}_count"), &[("method", cv)]), Some((N + 1) as f64), "{body}");
    assert_eq!(v(&format!("{h}_bucket"), &[("method", cv), ("le", "+Inf")]), Some((N + 1) as f64), "{body}");
    assert_eq!(v(&format!("{h}_count"), &[("method", dv)]), Some(2.0), "{body}");
    let sum = v(&format!("{h}_sum"), &[("method", cv)]).unwrap();
    assert!(sum > 0.0 && sum < 30.0, "{sum}");
    assert!(body.contains(&format!("# TYPE {h} histogram")), "{body}");

    // The driver's own: one share known; the pool holds every connection it
    // opened (no call is running), and reused one for the later calls.
    assert_eq!(v("csi_nfs_shares_known", &[]), Some(1.0), "{body}");
    let open = v("csi_nfs_connections_open", &[]).unwrap();
    let idle = v("csi_nfs_connections_idle", &[]).unwrap();
    assert!(open >= 1.0 && open == idle, "open {open}, idle {idle}:\n{body}");
    let connects = v("csi_nfs_connects_total", &[]).unwrap();
    let reuses = v("csi_nfs_connection_reuses_total", &[]).unwrap();
    assert!(connects >= 1.0 && reuses >= 1.0, "connects {connects}, reuses {reuses}:\n{body}");
    // Each call that reached the server (N creates, one delete) took one connection.
    assert_eq!(connects + reuses, (N + 1) as f64, "connects {connects}, reuses {reuses}:\n{body}");
    eprintln!("NFS pool after {} calls to the server: {connects} connects, {reuses} reuses, {open} open", N + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_flag_nothing_listens() {
    let p = DriverProcess::start(&binary(), "csi-nfs-nometrics", &["--mode".into(), "all".into()]).expect("start");
    // It serves CSI...
    let mut id = IdentityClient::new(p.channel().await.unwrap());
    id.probe(pb::ProbeRequest::default()).await.unwrap();
    // ...and holds no TCP listener at all.
    assert_eq!(listening_sockets_of(p.pid()), 0, "csi-nfs without --metrics-address listens on TCP");
}

/// Runs the driver and waits for it to exit; (exit code, stderr).
fn run_to_exit(args: &[String]) -> (Option<i32>, String) {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("csi.sock");
    let mut child = Command::new(binary())
        .arg(format!("--endpoint=unix://{}", sock.display()))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if started.elapsed() > Duration::from_secs(20) {
            let _ = child.kill();
            panic!("csi-nfs {args:?} still running after 20 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
    assert!(!sock.exists(), "the CSI socket was created although the metrics address was bad");
    (status.code(), err)
}

#[test]
fn a_bad_or_busy_address_stops_the_driver_at_start() {
    let (code, err) = run_to_exit(&["--metrics-address=localhost:9".into()]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--metrics-address") && err.contains("IP:PORT"), "{err}");

    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap();
    let (code, err) = run_to_exit(&[format!("--metrics-address={addr}")]);
    assert_eq!(code, Some(1), "{err}");
    assert!(err.contains(&format!("--metrics-address {addr}: cannot listen")), "{err}");
}
