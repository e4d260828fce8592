//! csi-nfs's Node service with a real kernel NFS client and a real NFS server.
//!
//! The host kernel has no NFS client. This test binary (`harness = false`)
//! therefore has two halves. Run by `cargo test`, [`host`] starts
//! nfs-ganesha on the host, boots ONE guest kernel (`scripts/guest/run.sh`,
//! QEMU user network: the guest reaches the host's server at 10.0.2.2) and
//! runs this same binary in it with `--in-guest`
//! (`scripts/guest/csi-nfs.sh`). [`guest`] then runs every check of
//! [`GUEST_CHECKS`] in turn; each starts its own `csi-nfs` (all services,
//! unix socket) and drives it over gRPC. The host requires a
//! `check NAME ... ok` line from the guest for every check, then inspects
//! the server's side.
//!
//! A missing prerequisite (ganesha, vng, qemu, the guest kernel:
//! `scripts/testbed.sh` installs them) fails the test; it never skips.

// A harness-less test: its report goes to stdout, as libtest's does.
#![allow(clippy::print_stdout)]

mod common;

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use csi_core::pb;
use csi_core::pb::controller_client::ControllerClient;
use csi_core::pb::node_client::NodeClient;
use csi_suite::csi_process::DriverProcess;
use csi_suite::ganesha::Ganesha;
use tonic::transport::Channel;
use tonic::Code;

/// Set (to the server's port) only inside the guest.
const PORT_ENV: &str = "CSI_NFS_GUEST_PORT";
/// The port of a second server that serves NFSv4.1 only (inside the guest).
const PORT41_ENV: &str = "CSI_NFS_GUEST_PORT41";
/// Where the guest finds the staged binaries ([`common::GuestBins`]).
const BIN_DIR_ENV: &str = "CSI_NFS_GUEST_BIN_DIR";
/// The directory made on the 4.1-only server for the guest to publish.
const VOL41: &str = "vol41";
/// The host as the guest sees it on QEMU's user network.
const SERVER: &str = "10.0.2.2";

/// Every check run in the guest, in order (one blackholes the server for a
/// while, so they run one at a time); the host requires each to pass.
const GUEST_CHECKS: &[(&str, fn())] = &[
    ("conformance_csi_suite_passes_with_zero_failures", conformance_csi_suite_passes_with_zero_failures),
    ("data_survives_unpublish_and_publish_on_another_target", data_survives_unpublish_and_publish_on_another_target),
    ("read_only_publish_refuses_writes", read_only_publish_refuses_writes),
    (
        "root_squash_non_root_writer_sees_uid_gid_and_permissions",
        root_squash_non_root_writer_sees_uid_gid_and_permissions,
    ),
    ("dead_server_unpublish_and_stats_return_in_bounded_time", dead_server_unpublish_and_stats_return_in_bounded_time),
    ("nfs_4_1_only_server_is_mounted_and_holds_data", nfs_4_1_only_server_is_mounted_and_holds_data),
    (
        "controller_provisions_on_a_4_1_only_server_through_the_kernel_client",
        controller_provisions_on_a_4_1_only_server_through_the_kernel_client,
    ),
];

fn main() {
    // cargo passes libtest's flags (e.g. --test-threads) to this binary too:
    // only --in-guest matters.
    if std::env::args().any(|a| a == "--in-guest") {
        std::process::exit(guest());
    }
    if std::env::args().any(|a| a == "--list") {
        return; // `cargo test -- --list`: nothing to list for a harness-less test
    }
    host();
    println!("csi_nfs_node: node service in a guest kernel ... ok");
}

/// Inside the guest: every check, a panic failing only that check (its
/// guards still clean up while unwinding). Returns the exit status.
fn guest() -> i32 {
    let mut failed = 0;
    for (name, check) in GUEST_CHECKS {
        let started = Instant::now();
        match std::panic::catch_unwind(check) {
            Ok(()) => println!("check {name} ... ok ({:?})", started.elapsed()),
            Err(_) => {
                failed += 1;
                println!("check {name} ... FAILED ({:?}; panic message above)", started.elapsed());
            }
        }
    }
    println!("{} checks: {} passed, {failed} failed", GUEST_CHECKS.len(), GUEST_CHECKS.len() - failed);
    i32::from(failed > 0)
}

/// On the host: the server, one guest boot, and what the server holds after.
fn host() {
    let server = Ganesha::start().expect("start nfs-ganesha (scripts/testbed.sh installs it)");
    // A server that speaks NFSv4.1 only, with one volume directory the
    // controller cannot make there (libnfs 4.0 speaks 4.0).
    let server41 = Ganesha::start_with_minor_versions("1").expect("start a 4.1-only nfs-ganesha");
    std::fs::create_dir(server41.root().join(VOL41)).unwrap();
    std::fs::set_permissions(server41.root().join(VOL41), std::fs::Permissions::from_mode(0o777)).unwrap();
    let exe = std::env::current_exe().expect("own path");
    let bins = common::GuestBins::stage(
        "csi-nfs",
        &[
            (exe, "csi_nfs_node"),
            (common::our_dir().join("csi-nfs"), "csi-nfs"),
            (common::conformance_bin(), "conformance"),
        ],
    );
    let (port, port41) = (server.port().to_string(), server41.port().to_string());
    let (status, stdout) = common::run_in_guest(
        "scripts/guest/csi-nfs.sh",
        &[bins.dir.join("csi_nfs_node").as_os_str(), port.as_ref(), port41.as_ref(), bins.dir.as_os_str()],
        &[("GUEST_NETWORK", "user"), ("GUEST_MODULES", "nfsv4 nf_tables"), ("GUEST_TIMEOUT", "600")],
    );
    for (name, _) in GUEST_CHECKS {
        assert!(stdout.contains(&format!("check {name} ... ok")), "guest check {name} did not pass (output above)");
    }
    assert!(status.success(), "guest script failed: {status:?}");

    // What the guest's non-root writer made is on the server with its owner.
    let squashed = server.squash_root();
    let file = find_file(&squashed, "written-by-1000").expect("the squash export holds the writer's file");
    let meta = std::fs::metadata(&file).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!((meta.uid(), meta.gid()), (1000, 1000), "{}", file.display());
    // Every volume the guest tests and the suite made was deleted again.
    let left: Vec<String> = std::fs::read_dir(server.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| !n.starts_with('.'))
        .collect();
    assert!(left.is_empty(), "volumes left on the share: {left:?}");
    // What the guest wrote over NFSv4.1 is on the 4.1-only server.
    for name in ["written-over-4.1-negotiated", "written-over-4.1-asked"] {
        let f = server41.root().join(VOL41).join(name);
        assert_eq!(std::fs::read(&f).unwrap_or_default(), name.as_bytes(), "{}", f.display());
    }
    // The controller made volumes there (through the kernel client): the
    // archived one holds what the pod wrote, the deleted ones are gone, and
    // so are all their records.
    let on41: Vec<String> = std::fs::read_dir(server41.root())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    let archived: Vec<&String> = on41.iter().filter(|n| n.starts_with("archived-k41-auto-")).collect();
    assert_eq!(archived.len(), 1, "one archived volume on the 4.1-only server: {on41:?}");
    let f = server41.root().join(archived[0]).join(K41_FILE);
    assert_eq!(std::fs::read(&f).unwrap_or_default(), K41_FILE.as_bytes(), "{}", f.display());
    assert!(!on41.iter().any(|n| n.starts_with("k41-")), "deleted volumes left on the 4.1-only server: {on41:?}");
    let records = server41.root().join(".csi-nfs/volumes");
    let left: Vec<_> =
        std::fs::read_dir(&records).map(|d| d.flatten().map(|e| e.file_name()).collect()).unwrap_or_default();
    assert!(left.is_empty(), "volume records left on the 4.1-only server: {left:?}");
}

/// `conformance`: the staged copy inside the guest, the built one elsewhere.
fn conformance_bin() -> PathBuf {
    match std::env::var_os(BIN_DIR_ENV) {
        Some(d) => PathBuf::from(d).join("conformance"),
        None => common::conformance_bin(),
    }
}

fn find_file(dir: &Path, name: &str) -> Option<PathBuf> {
    for e in std::fs::read_dir(dir).ok()? {
        let p = e.ok()?.path();
        if p.file_name().is_some_and(|n| n == name) {
            return Some(p);
        }
        if p.is_dir() {
            if let Some(f) = find_file(&p, name) {
                return Some(f);
            }
        }
    }
    None
}

// ---------------------------------------------------------------------------
// Guest side.

/// A `csi-nfs` serving every service on a socket of its own, stopped on drop.
struct Driver {
    p: DriverProcess,
    port: u16,
}

impl Driver {
    fn start() -> Driver {
        let port: u16 = std::env::var(PORT_ENV)
            .unwrap_or_else(|_| panic!("{PORT_ENV} unset: the checks run inside the guest only (--in-guest)"))
            .parse()
            .unwrap();
        let args: Vec<String> =
            ["--mode", "all", "--node-id", "guest", "--log-level", "debug", "--state-dir={dir}/state"]
                .iter()
                .map(|s| s.to_string())
                .chain([format!("--mount-options=port={port}")])
                .collect();
        // The driver logs to a file (shown if the test fails), so the console
        // keeps libtest's "test … ok" lines whole for the host to read.
        let p = DriverProcess::start(&common::our_dir().join("csi-nfs"), "csi-nfs-guest", &args).unwrap();
        Driver { p, port }
    }

    fn endpoint(&self) -> String {
        self.p.endpoint()
    }

    fn channel(&self, rt: &tokio::runtime::Runtime) -> Channel {
        rt.block_on(self.p.channel()).unwrap()
    }

    fn target(&self, name: &str) -> PathBuf {
        self.p.dir().join("pods").join(name).join("mount")
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap()
}

fn mount_cap(mode: pb::volume_capability::access_mode::Mode) -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_mode: Some(pb::volume_capability::AccessMode { mode: mode as i32 }),
        access_type: Some(pb::volume_capability::AccessType::Mount(Default::default())),
    }
}

fn rwx() -> pb::VolumeCapability {
    mount_cap(pb::volume_capability::access_mode::Mode::MultiNodeMultiWriter)
}

/// CreateVolume on `share` with extra `params`; returns the volume.
fn create(rt: &tokio::runtime::Runtime, ch: &Channel, name: &str, share: &str, params: &[(&str, &str)]) -> pb::Volume {
    let mut parameters: HashMap<String, String> =
        [("server", SERVER), ("share", share)].iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    parameters.extend(params.iter().map(|(k, v)| (k.to_string(), v.to_string())));
    let req = pb::CreateVolumeRequest {
        name: name.into(),
        volume_capabilities: vec![rwx()],
        parameters,
        ..Default::default()
    };
    rt.block_on(ControllerClient::new(ch.clone()).create_volume(req))
        .unwrap_or_else(|e| panic!("CreateVolume {name}: {e}"))
        .into_inner()
        .volume
        .expect("a volume")
}

fn delete(rt: &tokio::runtime::Runtime, ch: &Channel, volume_id: &str) {
    let req = pb::DeleteVolumeRequest { volume_id: volume_id.into(), ..Default::default() };
    rt.block_on(ControllerClient::new(ch.clone()).delete_volume(req)).unwrap_or_else(|e| panic!("DeleteVolume: {e}"));
}

fn publish(
    rt: &tokio::runtime::Runtime,
    ch: &Channel,
    vol: &pb::Volume,
    target: &Path,
    readonly: bool,
) -> Result<(), tonic::Status> {
    let req = pb::NodePublishVolumeRequest {
        volume_id: vol.volume_id.clone(),
        target_path: target.display().to_string(),
        volume_capability: Some(rwx()),
        readonly,
        volume_context: vol.volume_context.clone(),
        ..Default::default()
    };
    rt.block_on(NodeClient::new(ch.clone()).node_publish_volume(req)).map(|_| ())
}

fn unpublish(rt: &tokio::runtime::Runtime, ch: &Channel, vol: &pb::Volume, target: &Path) -> Result<(), tonic::Status> {
    let req =
        pb::NodeUnpublishVolumeRequest { volume_id: vol.volume_id.clone(), target_path: target.display().to_string() };
    rt.block_on(NodeClient::new(ch.clone()).node_unpublish_volume(req)).map(|_| ())
}

fn stats(rt: &tokio::runtime::Runtime, ch: &Channel, vol: &pb::Volume, path: &Path) -> pb::NodeGetVolumeStatsResponse {
    let req = pb::NodeGetVolumeStatsRequest {
        volume_id: vol.volume_id.clone(),
        volume_path: path.display().to_string(),
        ..Default::default()
    };
    rt.block_on(NodeClient::new(ch.clone()).node_get_volume_stats(req)).expect("NodeGetVolumeStats").into_inner()
}

fn is_mounted(path: &Path) -> bool {
    csi_core::mount::is_mount_point(path).unwrap()
}

fn unique(prefix: &str) -> String {
    static N: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    format!("{prefix}-{}-{n}", std::process::id())
}

/// Runs `sh -c script` as uid/gid `id` (setpriv, util-linux).
fn as_user(id: u32, script: &str) -> std::process::Output {
    Command::new("setpriv")
        .args([format!("--reuid={id}"), format!("--regid={id}"), "--clear-groups".into()])
        .args(["sh", "-c", script])
        .output()
        .expect("setpriv")
}

/// A server that serves NFSv4.1 only: the node mounts it with the version
/// negotiated (4.2 refused, 4.1 taken) and with `nfsvers=4.1` asked for,
/// data written lands on the server, stats work, unpublish cleans up.
fn nfs_4_1_only_server_is_mounted_and_holds_data() {
    let port41: u16 = std::env::var(PORT41_ENV).expect("CSI_NFS_GUEST_PORT41").parse().unwrap();
    let d = Driver::start();
    let rt = rt();
    let ch = d.channel(&rt);
    for (tag, options) in [("negotiated", format!("port={port41}")), ("asked", format!("port={port41},nfsvers=4.1"))] {
        let vol = pb::Volume {
            volume_id: format!("{SERVER}#export#{VOL41}##"),
            volume_context: [
                ("server", SERVER.to_string()),
                ("share", "/export".to_string()),
                ("subdir", VOL41.to_string()),
                ("mountOptions", options),
            ]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect(),
            ..Default::default()
        };
        let target = d.target(&format!("v41-{tag}"));
        publish(&rt, &ch, &vol, &target, false).unwrap_or_else(|e| panic!("publish ({tag}): {e}"));
        let table = csi_core::mount::mounts().unwrap();
        let m = csi_core::mount::find_mount(&table, &target).unwrap().expect("mounted").clone();
        assert!(m.fs_type == "nfs4" && m.super_options.contains("vers=4.1"), "({tag}) {m:?}");
        let name = format!("written-over-4.1-{tag}");
        std::fs::write(target.join(&name), name.as_bytes()).unwrap();
        let st = stats(&rt, &ch, &vol, &target);
        assert!(!st.volume_condition.expect("condition").abnormal);
        unpublish(&rt, &ch, &vol, &target).unwrap();
        assert!(!target.exists());
    }
}

/// What the pod writes into the volumes the controller makes on the 4.1-only server.
const K41_FILE: &str = "written-into-a-volume-made-over-4.1";

/// The controller on a server that serves NFSv4.1 only, which libnfs 4.0
/// cannot speak to: it provisions through the kernel NFS client, with the
/// version negotiated (libnfs refused, then the kernel) and with
/// `nfsvers=4.1` asked for (the kernel at once). Each volume is idempotent,
/// listed, measured, published, written, read back on another target and
/// deleted (one archived, for the host to find the data on the server). A
/// blackholed server fails CreateVolume in bounded time and the next calls
/// work once it is back; a stopped controller leaves no mount behind.
fn controller_provisions_on_a_4_1_only_server_through_the_kernel_client() {
    use csi_nfs::nfs::kernel;
    assert!(kernel::client_available(), "the guest kernel has an NFS client");
    let port41: u16 = std::env::var(PORT41_ENV).expect("CSI_NFS_GUEST_PORT41").parse().unwrap();
    let d = Driver::start();
    // Should a call hang, the console shows where: the driver's log and the
    // NFS mounts, after 240 s (the whole check takes about a minute).
    let (done, watch) = std::sync::mpsc::channel::<()>();
    let log = d.p.dir().join("driver.log");
    std::thread::spawn(move || {
        if watch.recv_timeout(Duration::from_secs(240)) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            let text = std::fs::read_to_string(&log).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(80).collect();
            eprintln!("k41: still running after 240 s; driver log tail:");
            for l in tail.iter().rev() {
                eprintln!("  {l}");
            }
            let mi = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
            for l in mi.lines().filter(|l| l.contains(" nfs")) {
                eprintln!("  mount: {l}");
            }
        }
    });
    let rt = rt();
    let ch = d.channel(&rt);
    let mut ctl = ControllerClient::new(ch.clone());
    let mut vols = Vec::new();
    for (tag, options, on_delete) in
        [("auto", format!("port={port41}"), "archive"), ("asked", format!("port={port41},nfsvers=4.1"), "delete")]
    {
        let name = unique(&format!("k41-{tag}"));
        let params = [("mountOptions", options.as_str()), ("onDelete", on_delete), ("mountPermissions", "0775")];
        let started = Instant::now();
        let vol = create(&rt, &ch, &name, "/export", &params);
        eprintln!("CreateVolume on the 4.1-only server ({tag}): {:?}", started.elapsed());
        assert_eq!(create(&rt, &ch, &name, "/export", &params).volume_id, vol.volume_id, "({tag}) idempotent");
        eprintln!("k41 ({tag}): idempotent");
        let other = [("mountOptions", options.as_str()), ("onDelete", on_delete), ("mountPermissions", "0700")];
        let req = pb::CreateVolumeRequest {
            name: name.clone(),
            volume_capabilities: vec![rwx()],
            parameters: [("server", SERVER), ("share", "/export")]
                .into_iter()
                .chain(other)
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let e = rt.block_on(ctl.create_volume(req)).expect_err("same name, other parameters");
        assert_eq!(e.code(), Code::AlreadyExists, "({tag}) {e}");
        let cap = rt
            .block_on(
                ctl.get_capacity(pb::GetCapacityRequest {
                    parameters: [("server", SERVER), ("share", "/export"), ("mountOptions", options.as_str())]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
            )
            .expect("GetCapacity")
            .into_inner();
        assert!(cap.available_capacity > 0, "({tag}) {cap:?}");
        eprintln!("k41 ({tag}): capacity {}", cap.available_capacity);

        let t = d.target(&format!("{name}-a"));
        publish(&rt, &ch, &vol, &t, false).unwrap_or_else(|e| panic!("publish ({tag}): {e}"));
        let mode = std::fs::metadata(&t).unwrap().permissions().mode() & 0o7777;
        assert_eq!(mode, 0o775, "({tag}) mountPermissions as the controller set them");
        std::fs::write(t.join(K41_FILE), K41_FILE).unwrap();
        unpublish(&rt, &ch, &vol, &t).unwrap();
        let t2 = d.target(&format!("{name}-b"));
        publish(&rt, &ch, &vol, &t2, false).unwrap();
        assert_eq!(std::fs::read(t2.join(K41_FILE)).unwrap(), K41_FILE.as_bytes(), "({tag}) read back");
        unpublish(&rt, &ch, &vol, &t2).unwrap();
        eprintln!("k41 ({tag}): written and read back");
        vols.push(vol);
    }
    let listed = |ctl: &mut ControllerClient<Channel>| -> Vec<String> {
        let r = rt.block_on(ctl.list_volumes(pb::ListVolumesRequest::default())).expect("ListVolumes").into_inner();
        r.entries.into_iter().filter_map(|e| e.volume).map(|v| v.volume_id).collect()
    };
    let ids = listed(&mut ctl);
    assert!(vols.iter().all(|v| ids.contains(&v.volume_id)), "ListVolumes {ids:?}");
    eprintln!("k41: made, published, written, listed; deleting");
    for vol in &vols {
        delete(&rt, &ch, &vol.volume_id);
    }
    let ids = listed(&mut ctl);
    assert!(!vols.iter().any(|v| ids.contains(&v.volume_id)), "deleted volumes still listed: {ids:?}");

    // The server stops answering: CreateVolume fails in bounded time
    // (the controller's soft mount), and nothing hangs.
    eprintln!("k41: blackholing the 4.1-only server");
    {
        let _blackhole = Blackhole::new(port41);
        let started = Instant::now();
        let req = pb::CreateVolumeRequest {
            name: unique("k41-dead"),
            volume_capabilities: vec![rwx()],
            parameters: [("server", SERVER), ("share", "/export")]
                .into_iter()
                .chain([("mountOptions", format!("port={port41},nfsvers=4.1").as_str())])
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        };
        let e = rt
            .block_on(async { tokio::time::timeout(Duration::from_secs(120), ctl.create_volume(req)).await })
            .expect("CreateVolume returns within 120 s")
            .expect_err("CreateVolume with the server gone");
        let took = started.elapsed();
        eprintln!("CreateVolume on a dead 4.1-only server (kernel client): {:?} after {took:?}", e.code());
        assert!(matches!(e.code(), Code::Unavailable | Code::DeadlineExceeded), "{e}");
        assert!(took < Duration::from_secs(60), "CreateVolume took {took:?}");
    }

    // Back: the controller mounts again.
    eprintln!("k41: server back");
    let started = Instant::now();
    let vol =
        create(&rt, &ch, &unique("k41-back"), "/export", &[("mountOptions", &format!("port={port41},nfsvers=4.1"))]);
    delete(&rt, &ch, &vol.volume_id);
    eprintln!("k41: create and delete once the server is back: {:?}", started.elapsed());
    drop((ctl, ch));
    drop(d);
    let _ = done.send(());
    let table = csi_core::mount::mounts().unwrap();
    let left: Vec<_> =
        table.iter().filter(|m| m.mount_point.starts_with(kernel::DEFAULT_MOUNT_DIR)).map(|m| &m.mount_point).collect();
    assert!(left.is_empty(), "a stopped controller left its mounts: {left:?}");
}

fn data_survives_unpublish_and_publish_on_another_target() {
    let d = Driver::start();
    let rt = rt();
    let ch = d.channel(&rt);
    let vol = create(&rt, &ch, &unique("survive"), "/export", &[]);
    let (a, b) = (d.target("pod-a"), d.target("pod-b"));

    publish(&rt, &ch, &vol, &a, false).expect("publish on pod-a");
    assert!(is_mounted(&a), "{} is not a mount point after NodePublish", a.display());
    publish(&rt, &ch, &vol, &a, false).expect("a repeated publish is idempotent");
    let payload: Vec<u8> = (0..1_000_000u32).map(|i| (i * 7 % 251) as u8).collect();
    {
        let mut f = std::fs::File::create(a.join("data.bin")).unwrap();
        f.write_all(&payload).unwrap();
        f.sync_all().unwrap();
    }
    let st = stats(&rt, &ch, &vol, &a);
    let cond = st.volume_condition.expect("volume condition");
    assert!(!cond.abnormal, "{}", cond.message);
    let bytes = st.usage.iter().find(|u| u.unit == pb::volume_usage::Unit::Bytes as i32).expect("byte usage");
    assert!(bytes.total > 0 && bytes.used > 0, "{bytes:?}");

    unpublish(&rt, &ch, &vol, &a).expect("unpublish pod-a");
    assert!(!a.exists(), "the target is removed after NodeUnpublish");
    unpublish(&rt, &ch, &vol, &a).expect("a repeated unpublish is idempotent");

    // The "container moved": another target, same volume, same bytes.
    publish(&rt, &ch, &vol, &b, false).expect("publish on pod-b");
    let mut read = Vec::new();
    std::fs::File::open(b.join("data.bin")).unwrap().read_to_end(&mut read).unwrap();
    assert!(read == payload, "data changed across unpublish/publish");
    unpublish(&rt, &ch, &vol, &b).expect("unpublish pod-b");
    delete(&rt, &ch, &vol.volume_id);
}

fn read_only_publish_refuses_writes() {
    let d = Driver::start();
    let rt = rt();
    let ch = d.channel(&rt);
    let vol = create(&rt, &ch, &unique("ro"), "/export", &[]);
    let (rw, ro) = (d.target("writer"), d.target("reader"));
    publish(&rt, &ch, &vol, &rw, false).unwrap();
    std::fs::write(rw.join("hello"), b"hi").unwrap();
    publish(&rt, &ch, &vol, &ro, true).unwrap();
    assert_eq!(std::fs::read(ro.join("hello")).unwrap(), b"hi");
    let err = std::fs::write(ro.join("nope"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS), "{err}");
    // The same target asked read-write now is a different publish: ALREADY_EXISTS.
    let err = publish(&rt, &ch, &vol, &ro, false).unwrap_err();
    assert_eq!(err.code(), Code::AlreadyExists, "{err}");
    unpublish(&rt, &ch, &vol, &ro).unwrap();
    unpublish(&rt, &ch, &vol, &rw).unwrap();
    delete(&rt, &ch, &vol.volume_id);
}

fn root_squash_non_root_writer_sees_uid_gid_and_permissions() {
    let d = Driver::start();
    let rt = rt();
    let ch = d.channel(&rt);
    let vol = create(
        &rt,
        &ch,
        &unique("squash"),
        "/squash",
        &[("uid", "1000"), ("gid", "1000"), ("mountPermissions", "0770")],
    );
    let t = d.target("app");
    publish(&rt, &ch, &vol, &t, false).expect("publish on a root-squashed export");
    // Root on the node is squashed too, and may not even look inside: ask as the pod's user.
    let seen = as_user(1000, &format!("stat -c '%u %g %a' {}", t.display()));
    assert_eq!(String::from_utf8_lossy(&seen.stdout).trim(), "1000 1000 770", "volume root as the pod sees it");

    let ok = as_user(1000, &format!("echo data > {}/written-by-1000", t.display()));
    assert!(ok.status.success(), "uid 1000 cannot write: {}", String::from_utf8_lossy(&ok.stderr));
    let other = as_user(2000, &format!("echo data > {}/written-by-2000", t.display()));
    assert!(!other.status.success(), "uid 2000 could write into a 0770 volume of 1000:1000");
    // Root on the node is squashed to nobody: the server, not the node, decides.
    let root_write = std::fs::write(t.join("written-by-root"), b"x").unwrap_err();
    assert_eq!(root_write.raw_os_error(), Some(libc::EACCES), "{root_write}");
    let f = as_user(1000, &format!("stat -c '%u %g' {}/written-by-1000", t.display()));
    assert_eq!(String::from_utf8_lossy(&f.stdout).trim(), "1000 1000");
    unpublish(&rt, &ch, &vol, &t).unwrap();
    // The file stays for the host-side check; the volume is retained by design
    // of this test (deleting it would remove the evidence): it lives on /squash.
}

fn dead_server_unpublish_and_stats_return_in_bounded_time() {
    let d = Driver::start();
    let rt = rt();
    let ch = d.channel(&rt);
    let vol = create(&rt, &ch, &unique("dead"), "/export", &[]);
    let t = d.target("victim");
    publish(&rt, &ch, &vol, &t, false).unwrap();
    std::fs::write(t.join("before"), b"x").unwrap();

    // The server "dies": every packet to it is dropped from now on.
    let _blackhole = Blackhole::new(d.port);
    // A process of the pod is stuck on the dead mount, as in real life.
    let mut stuck = Command::new("stat").arg(t.join("before")).stdout(Stdio::null()).spawn().unwrap();

    let started = Instant::now();
    let st = stats(&rt, &ch, &vol, &t);
    let cond = st.volume_condition.clone().expect("volume condition");
    assert!(cond.abnormal, "stats of a dead server's volume report it as healthy: {st:?}");
    eprintln!("NodeGetVolumeStats with a dead server: {:?}, {}", started.elapsed(), cond.message);
    assert!(started.elapsed() < Duration::from_secs(15), "stats took {:?}", started.elapsed());

    let started = Instant::now();
    let leaked = unique("leak");
    let req = pb::CreateVolumeRequest {
        name: leaked.clone(),
        volume_capabilities: vec![rwx()],
        parameters: [("server", SERVER), ("share", "/export")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    let err = rt
        .block_on(ControllerClient::new(ch.clone()).create_volume(req))
        .expect_err("CreateVolume with the server gone");
    assert!(
        matches!(err.code(), Code::Unavailable | Code::DeadlineExceeded),
        "CreateVolume against a dead server: {err}"
    );
    let took = started.elapsed();
    eprintln!("CreateVolume with a dead server: {:?} after {took:?}", err.code());
    assert!(took < Duration::from_secs(30), "CreateVolume took {took:?}");

    let started = Instant::now();
    unpublish(&rt, &ch, &vol, &t).expect("NodeUnpublish with the server gone");
    let took = started.elapsed();
    eprintln!("NodeUnpublish with a dead server took {took:?}");
    assert!(took < Duration::from_secs(20), "NodeUnpublish took {took:?}");
    assert!(!is_mounted(&t) && !t.exists(), "target still there after NodeUnpublish");
    let _ = stuck.kill();
    let _ = stuck.wait();

    // The server is back: nothing of the failed CreateVolume was left on it.
    drop(_blackhole);
    let check = d.target("check");
    let whole = pb::Volume {
        volume_id: format!("{SERVER}#export#..#"),
        volume_context: [("server", SERVER), ("share", "/export"), ("subdir", "")]
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        ..Default::default()
    };
    publish(&rt, &ch, &whole, &check, true).expect("mount the share root to look");
    let names: Vec<String> =
        std::fs::read_dir(&check).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    unpublish(&rt, &ch, &whole, &check).unwrap();
    assert!(!names.iter().any(|n| n.contains(&leaked)), "failed CreateVolume left {names:?}");
    delete(&rt, &ch, &vol.volume_id);
}

/// Drops every packet to the NFS server's port until dropped (nftables).
struct Blackhole {
    table: String,
}

impl Blackhole {
    fn new(port: u16) -> Blackhole {
        let table = unique("csinfsdead").replace('-', "_");
        let rules = format!(
            "table inet {table} {{\n chain out {{\n type filter hook output priority 0; tcp dport {port} drop\n }}\n}}\n"
        );
        let out = Command::new("nft")
            .args(["-f", "-"])
            .stdin(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .and_then(|mut c| {
                c.stdin.take().unwrap().write_all(rules.as_bytes())?;
                c.wait_with_output()
            })
            .expect("run nft");
        assert!(out.status.success(), "nft blackhole: {}", String::from_utf8_lossy(&out.stderr));
        Blackhole { table }
    }
}

impl Drop for Blackhole {
    fn drop(&mut self) {
        let _ = Command::new("nft").args(["delete", "table", "inet", &self.table]).status();
    }
}

fn conformance_csi_suite_passes_with_zero_failures() {
    let d = Driver::start();
    let params = d.p.dir().join("params.json");
    std::fs::write(&params, format!(r#"{{"server":"{SERVER}","share":"/export"}}"#)).unwrap();
    let out = Command::new(conformance_bin())
        .args(["csi", "--endpoint", &d.endpoint(), "--params"])
        .arg(&params)
        .arg("--mount-dir")
        .arg(d.p.dir().join("sanity"))
        .output()
        .expect("run conformance csi");
    let stdout = String::from_utf8_lossy(&out.stdout);
    eprintln!("{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "conformance csi failed against csi-nfs");
    assert!(stdout.contains(" 0 failed"), "summary without '0 failed'");
}
