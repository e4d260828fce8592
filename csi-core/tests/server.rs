//! The server runner end to end: a tiny driver served on a unix socket in a
//! temp dir, called through the generated tonic clients.

use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use csi_core::flags::{Endpoint, Mode};
use csi_core::identity::Identity;
use csi_core::pb::controller_client::ControllerClient;
use csi_core::pb::identity_client::IdentityClient;
use csi_core::pb::node_client::NodeClient;
use csi_core::pb::{self, plugin_capability, volume_capability};
use csi_core::server::{serve, Plugin};
use csi_core::validate::{self, CapabilitySupport, InFlight};
use csi_core::Error;
use tokio::sync::{oneshot, Notify};
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

/// A driver that validates like a real one and keeps nothing.
#[derive(Clone, Default)]
struct TestDriver {
    in_flight: InFlight,
    /// DeleteVolume of a volume named "slow-*" signals `entered` and waits for `release`.
    entered: Arc<Notify>,
    release: Arc<Notify>,
}

#[tonic::async_trait]
impl pb::controller_server::Controller for TestDriver {
    async fn create_volume(
        &self,
        req: Request<pb::CreateVolumeRequest>,
    ) -> Result<Response<pb::CreateVolumeResponse>, Status> {
        let req = req.into_inner();
        validate::require_name(&req.name)?;
        validate::require_capabilities(&req.volume_capabilities, &CapabilitySupport::SHARED_FILESYSTEM)?;
        let capacity = validate::capacity_range(req.capacity_range.as_ref())?;
        let _op = self.in_flight.lock_key("name", &req.name)?;
        Ok(Response::new(pb::CreateVolumeResponse {
            volume: Some(pb::Volume {
                volume_id: format!("vol-{}", req.name),
                capacity_bytes: capacity.pick(1 << 20, 0)? as i64,
                ..Default::default()
            }),
        }))
    }

    async fn delete_volume(
        &self,
        req: Request<pb::DeleteVolumeRequest>,
    ) -> Result<Response<pb::DeleteVolumeResponse>, Status> {
        let req = req.into_inner();
        validate::require_volume_id(&req.volume_id)?;
        let _op = self.in_flight.lock(&req.volume_id)?;
        if req.volume_id.starts_with("slow-") {
            self.entered.notify_one();
            self.release.notified().await;
        }
        Ok(Response::new(pb::DeleteVolumeResponse {}))
    }
}

#[tonic::async_trait]
impl pb::node_server::Node for TestDriver {
    async fn node_publish_volume(
        &self,
        req: Request<pb::NodePublishVolumeRequest>,
    ) -> Result<Response<pb::NodePublishVolumeResponse>, Status> {
        let req = req.into_inner();
        validate::require_volume_id(&req.volume_id)?;
        validate::require_target_path(&req.target_path)?;
        validate::require_capability(req.volume_capability.as_ref(), &CapabilitySupport::SHARED_FILESYSTEM)?;
        Ok(Response::new(pb::NodePublishVolumeResponse {}))
    }

    async fn node_get_info(
        &self,
        _: Request<pb::NodeGetInfoRequest>,
    ) -> Result<Response<pb::NodeGetInfoResponse>, Status> {
        Ok(Response::new(pb::NodeGetInfoResponse { node_id: "node-1".into(), ..Default::default() }))
    }
}

struct Running {
    socket: PathBuf,
    channel: Channel,
    stop: oneshot::Sender<()>,
    done: tokio::task::JoinHandle<csi_core::Result<()>>,
}

impl Running {
    async fn stop(self) -> csi_core::Result<()> {
        let _ = self.stop.send(());
        drop(self.channel);
        tokio::time::timeout(Duration::from_secs(10), self.done)
            .await
            .expect("server stops within 10 s")
            .expect("server task")
    }
}

async fn start_with(dir: &Path, mode: Mode, identity: Identity, driver: TestDriver) -> Running {
    let socket = dir.join("plugin").join("csi.sock");
    let endpoint = Endpoint::Unix(socket.clone());
    let (stop, stopped) = oneshot::channel::<()>();
    let plugin = Plugin { identity, controller: Some(driver.clone()), node: Some(driver) };
    let ep = endpoint.clone();
    let done = tokio::spawn(async move {
        serve(&ep, mode, plugin, async {
            let _ = stopped.await;
        })
        .await
    });
    // Ready when GetPluginInfo answers (a stale socket may exist before that).
    let mut channel = None;
    for _ in 0..500 {
        if let Ok(c) = csi_core::client::connect(&endpoint).await {
            if IdentityClient::new(c.clone()).get_plugin_info(pb::GetPluginInfoRequest {}).await.is_ok() {
                channel = Some(c);
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let channel = channel.expect("server answers on the unix socket");
    Running { socket, channel, stop, done }
}

async fn start(dir: &Path, mode: Mode) -> Running {
    start_with(dir, mode, Identity::new("test.csi.example.com"), TestDriver::default()).await
}

fn code<T>(r: Result<Response<T>, Status>) -> Code {
    match r {
        Ok(_) => panic!("expected an error"),
        Err(st) => st.code(),
    }
}

fn mount_cap(mode: volume_capability::access_mode::Mode) -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(volume_capability::AccessType::Mount(Default::default())),
        access_mode: Some(volume_capability::AccessMode { mode: mode as i32 }),
    }
}

fn block_cap() -> pb::VolumeCapability {
    pb::VolumeCapability {
        access_type: Some(volume_capability::AccessType::Block(Default::default())),
        access_mode: Some(volume_capability::AccessMode {
            mode: volume_capability::access_mode::Mode::SingleNodeWriter as i32,
        }),
    }
}

#[tokio::test]
async fn identity_over_a_0600_unix_socket_and_shutdown_removes_it() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), Mode::All).await;

    let meta = std::fs::symlink_metadata(&srv.socket).unwrap();
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);

    let mut id = IdentityClient::new(srv.channel.clone());
    let info = id.get_plugin_info(pb::GetPluginInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.name, "test.csi.example.com");
    assert_eq!(info.vendor_version, csi_core::VERSION);

    let caps = id.get_plugin_capabilities(pb::GetPluginCapabilitiesRequest {}).await.unwrap().into_inner();
    let controller = plugin_capability::service::Type::ControllerService as i32;
    assert!(caps.capabilities.iter().any(|c| matches!(
        c.r#type,
        Some(plugin_capability::Type::Service(plugin_capability::Service { r#type })) if r#type == controller
    )));
    assert_eq!(caps.capabilities.len(), 1, "{caps:?}");

    let probe = id.probe(pb::ProbeRequest {}).await.unwrap().into_inner();
    assert_eq!(probe.ready, Some(true));

    let socket = srv.socket.clone();
    srv.stop().await.unwrap();
    assert!(!socket.exists(), "socket removed on shutdown");
}

#[tokio::test]
async fn requests_failing_validation_get_the_spec_codes() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), Mode::All).await;
    let mut ctl = ControllerClient::new(srv.channel.clone());
    let mut node = NodeClient::new(srv.channel.clone());
    use volume_capability::access_mode::Mode as M;

    let ok = ctl
        .create_volume(pb::CreateVolumeRequest {
            name: "pvc-1".into(),
            volume_capabilities: vec![mount_cap(M::MultiNodeMultiWriter)],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(ok.volume.unwrap().volume_id, "vol-pvc-1");

    let empty_name = ctl
        .create_volume(pb::CreateVolumeRequest {
            volume_capabilities: vec![mount_cap(M::SingleNodeWriter)],
            ..Default::default()
        })
        .await;
    assert_eq!(code(empty_name), Code::InvalidArgument);

    let no_caps = ctl.create_volume(pb::CreateVolumeRequest { name: "pvc-2".into(), ..Default::default() }).await;
    assert_eq!(code(no_caps), Code::InvalidArgument);

    let block = ctl
        .create_volume(pb::CreateVolumeRequest {
            name: "pvc-3".into(),
            volume_capabilities: vec![block_cap()],
            ..Default::default()
        })
        .await;
    let st = block.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    assert!(st.message().contains("block"), "{}", st.message());

    let inverted = ctl
        .create_volume(pb::CreateVolumeRequest {
            name: "pvc-4".into(),
            volume_capabilities: vec![mount_cap(M::SingleNodeWriter)],
            capacity_range: Some(pb::CapacityRange { required_bytes: 2, limit_bytes: 1 }),
            ..Default::default()
        })
        .await;
    assert_eq!(code(inverted), Code::InvalidArgument);

    let st = ctl.delete_volume(pb::DeleteVolumeRequest::default()).await.unwrap_err();
    assert_eq!(st.code(), Code::InvalidArgument);
    assert_eq!(st.message(), "volume id missing in request");

    let no_target = node
        .node_publish_volume(pb::NodePublishVolumeRequest {
            volume_id: "v".into(),
            volume_capability: Some(mount_cap(M::SingleNodeWriter)),
            ..Default::default()
        })
        .await;
    assert_eq!(code(no_target), Code::InvalidArgument);

    let unknown_mode = node
        .node_publish_volume(pb::NodePublishVolumeRequest {
            volume_id: "v".into(),
            target_path: "/t".into(),
            volume_capability: Some(pb::VolumeCapability {
                access_type: Some(volume_capability::AccessType::Mount(Default::default())),
                access_mode: Some(volume_capability::AccessMode { mode: 42 }),
            }),
            ..Default::default()
        })
        .await;
    assert_eq!(code(unknown_mode), Code::InvalidArgument);

    // Not implemented by the driver: the generated default answers UNIMPLEMENTED.
    let st = ctl.list_snapshots(pb::ListSnapshotsRequest::default()).await.unwrap_err();
    assert_eq!(st.code(), Code::Unimplemented);

    srv.stop().await.unwrap();
}

#[tokio::test]
async fn a_second_operation_on_a_busy_volume_is_aborted() {
    let dir = tempfile::tempdir().unwrap();
    let driver = TestDriver::default();
    let srv = start_with(dir.path(), Mode::Controller, Identity::new("test.csi.example.com"), driver.clone()).await;
    let mut first = ControllerClient::new(srv.channel.clone());
    let mut second = ControllerClient::new(srv.channel.clone());

    let entered = driver.entered.notified();
    let running = tokio::spawn(async move {
        first.delete_volume(pb::DeleteVolumeRequest { volume_id: "slow-1".into(), ..Default::default() }).await
    });
    entered.await;

    let st = second
        .delete_volume(pb::DeleteVolumeRequest { volume_id: "slow-1".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Aborted);
    assert_eq!(st.message(), "an operation with the given volume id slow-1 already exists");
    // Another volume is not blocked.
    second.delete_volume(pb::DeleteVolumeRequest { volume_id: "other".into(), ..Default::default() }).await.unwrap();

    driver.release.notify_one();
    running.await.unwrap().unwrap();
    // Released on completion: the retry succeeds.
    let retry = tokio::spawn({
        let mut c = ControllerClient::new(srv.channel.clone());
        async move { c.delete_volume(pb::DeleteVolumeRequest { volume_id: "slow-1".into(), ..Default::default() }).await }
    });
    driver.entered.notified().await;
    driver.release.notify_one();
    retry.await.unwrap().unwrap();

    srv.stop().await.unwrap();
}

#[tokio::test]
async fn mode_picks_the_services_but_not_the_capabilities() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), Mode::Node).await;
    let st = ControllerClient::new(srv.channel.clone())
        .delete_volume(pb::DeleteVolumeRequest { volume_id: "v".into(), ..Default::default() })
        .await
        .unwrap_err();
    assert_eq!(st.code(), Code::Unimplemented, "controller not served in node mode");
    let info =
        NodeClient::new(srv.channel.clone()).node_get_info(pb::NodeGetInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.node_id, "node-1");
    // Every instance of a plugin reports the same capabilities (spec).
    let caps = IdentityClient::new(srv.channel.clone())
        .get_plugin_capabilities(pb::GetPluginCapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(caps.capabilities.len(), 1);
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn probe_reports_the_driver_check() {
    let dir = tempfile::tempdir().unwrap();
    let identity = Identity::new("test.csi.example.com")
        .vendor_version("9.9.9")
        .probe(|| async { Err(Error::FailedPrecondition("backend unreachable".into())) });
    let srv = start_with(dir.path(), Mode::All, identity, TestDriver::default()).await;
    let mut id = IdentityClient::new(srv.channel.clone());
    let st = id.probe(pb::ProbeRequest {}).await.unwrap_err();
    assert_eq!(st.code(), Code::FailedPrecondition);
    assert_eq!(st.message(), "backend unreachable");
    let info = id.get_plugin_info(pb::GetPluginInfoRequest {}).await.unwrap().into_inner();
    assert_eq!(info.vendor_version, "9.9.9");
    srv.stop().await.unwrap();
}

#[tokio::test]
async fn a_stale_socket_is_replaced_but_a_regular_file_is_not() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("plugin").join("csi.sock");
    std::fs::create_dir_all(socket.parent().unwrap()).unwrap();
    // A socket nobody listens on any more, as a crashed driver leaves it.
    drop(std::os::unix::net::UnixListener::bind(&socket).unwrap());
    assert!(socket.exists());
    let srv = start(dir.path(), Mode::All).await;
    IdentityClient::new(srv.channel.clone()).probe(pb::ProbeRequest {}).await.unwrap();
    srv.stop().await.unwrap();

    std::fs::write(&socket, b"not a socket").unwrap();
    let plugin =
        Plugin::<TestDriver, TestDriver> { identity: Identity::new("x.example.com"), controller: None, node: None };
    let err = serve(&Endpoint::Unix(socket.clone()), Mode::All, plugin, async {}).await.unwrap_err();
    assert!(err.to_string().contains("not a socket"), "{err}");
    assert_eq!(std::fs::read(&socket).unwrap(), b"not a socket");
}

#[tokio::test]
async fn tcp_endpoint() {
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let endpoint: Endpoint = format!("tcp://127.0.0.1:{port}").parse().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let ep = endpoint.clone();
    let done = tokio::spawn(async move {
        let plugin = Plugin::<TestDriver, TestDriver> {
            identity: Identity::new("tcp.example.com"),
            controller: None,
            node: None,
        };
        serve(&ep, Mode::All, plugin, async {
            let _ = stopped.await;
        })
        .await
    });
    let mut channel = None;
    for _ in 0..200 {
        if let Ok(c) = csi_core::client::connect(&endpoint).await {
            channel = Some(c);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let info = IdentityClient::new(channel.expect("server listening"))
        .get_plugin_info(pb::GetPluginInfoRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(info.name, "tcp.example.com");
    let _ = stop.send(());
    done.await.unwrap().unwrap();
}

#[tokio::test]
async fn a_client_that_stops_answering_cannot_keep_the_server_alive() {
    let dir = tempfile::tempdir().unwrap();
    let srv = start(dir.path(), Mode::All).await;
    // A client whose runtime is stuck: it holds its connection and never
    // answers the server's GOAWAY (a wedged sidecar; a test blocked in wait()).
    let ep = Endpoint::Unix(srv.socket.clone());
    let (ready_tx, ready_rx) = oneshot::channel();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let ch = rt.block_on(async {
            let c = csi_core::client::connect(&ep).await.unwrap();
            IdentityClient::new(c.clone()).probe(pb::ProbeRequest {}).await.unwrap();
            c
        });
        ready_tx.send(()).unwrap();
        std::thread::sleep(csi_core::server::SHUTDOWN_GRACE + Duration::from_secs(10));
        drop(ch);
    });
    ready_rx.await.unwrap();
    let _ = srv.stop.send(());
    drop(srv.channel);
    let done = tokio::time::timeout(csi_core::server::SHUTDOWN_GRACE + Duration::from_secs(5), srv.done)
        .await
        .expect("server stops within the grace period although a client holds a connection");
    done.expect("server task").expect("clean exit");
    assert!(!srv.socket.exists(), "socket removed on shutdown");
}
