//! Serves a driver's Identity, Controller and Node services on its endpoint.
//!
//! Unix sockets are created with mode 0600 (bound under a temporary name,
//! chmod-ed, then renamed into place, so no client ever sees a wider mode),
//! a stale socket left by a crash is removed first, and the socket is
//! removed again on shutdown. Each RPC is logged with its method, duration
//! and status code; request bodies are never logged (they carry secrets).
//! With `--metrics-address` the same layer counts it ([`crate::metrics`])
//! and the metrics are served on that address ([`run_with_metrics`]).

use std::future::Future;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use tokio::net::{TcpListener, UnixListener};
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::transport::Server;

use crate::error::{Error, Result};
use crate::flags::{Endpoint, Flags, Mode};
use crate::identity::Identity;
use crate::metrics::RpcMetrics;
use crate::pb::controller_server::{Controller, ControllerServer};
use crate::pb::identity_server::IdentityServer;
use crate::pb::node_server::{Node, NodeServer};

/// How long in-flight RPCs may run on after SIGTERM/SIGINT before the
/// server stops anyway (kubelet's default grace period is 30 s; a mount is
/// bounded by 20 s in csi-nfs).
pub const SHUTDOWN_GRACE: std::time::Duration = std::time::Duration::from_secs(10);

/// What a driver serves: Identity always, Controller and Node if it has them.
#[derive(Debug)]
pub struct Plugin<C, N> {
    /// The Identity service (its CONTROLLER_SERVICE capability is set from `controller`).
    pub identity: Identity,
    /// The Controller implementation, if the driver has one.
    pub controller: Option<C>,
    /// The Node implementation, if the driver has one.
    pub node: Option<N>,
}

/// A driver's first call: a panic anywhere, also in a request's task that the
/// runtime would catch, ends the process after the usual report, so the
/// orchestrator restarts the driver rather than it serving on with a poisoned
/// lock or a dead task. Release builds unwind (the test harness needs it);
/// this keeps the abort they had.
pub fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
}

/// Serves `plugin` per `flags` until SIGTERM or SIGINT.
pub async fn run<C, N>(flags: &Flags, plugin: Plugin<C, N>) -> Result<()>
where
    C: Controller,
    N: Node,
{
    run_with_metrics(flags, plugin, prom_endpoint::Registry::default()).await
}

/// [`run`], and with `--metrics-address` the metrics: every call counted by
/// the server ([`RpcMetrics`]) plus whatever the driver registered in
/// `registry`. The metrics listener is bound before the CSI endpoint, so a
/// bad or busy address stops the driver at start-up. Without the flag
/// nothing listens and `registry` is dropped.
pub async fn run_with_metrics<C, N>(
    flags: &Flags,
    plugin: Plugin<C, N>,
    mut registry: prom_endpoint::Registry,
) -> Result<()>
where
    C: Controller,
    N: Node,
{
    let Some(addr) = flags.metrics_address else {
        return serve(&flags.endpoint, flags.mode, plugin, shutdown_signal()).await;
    };
    let rpc = RpcMetrics::register(&mut registry);
    let _endpoint = prom_endpoint::serve(addr, registry).await.map_err(|e| Error::Usage(e.to_string()))?;
    serve_with(&flags.endpoint, flags.mode, plugin, shutdown_signal(), Some(rpc)).await
}

/// Serves `plugin` on `endpoint` until `shutdown` completes; `mode` picks
/// which of Controller and Node are served.
pub async fn serve<C, N, F>(endpoint: &Endpoint, mode: Mode, plugin: Plugin<C, N>, shutdown: F) -> Result<()>
where
    C: Controller,
    N: Node,
    F: Future<Output = ()> + Send,
{
    serve_with(endpoint, mode, plugin, shutdown, None).await
}

/// [`serve`], counting every call in `metrics` when given.
pub async fn serve_with<C, N, F>(
    endpoint: &Endpoint,
    mode: Mode,
    plugin: Plugin<C, N>,
    shutdown: F,
    metrics: Option<RpcMetrics>,
) -> Result<()>
where
    C: Controller,
    N: Node,
    F: Future<Output = ()> + Send,
{
    let Plugin { identity, controller, node } = plugin;
    let identity = identity.controller(controller.is_some());
    let controller = controller.filter(|_| mode.controller());
    let node = node.filter(|_| mode.node());
    tracing::info!(
        %endpoint,
        driver = identity.name(),
        controller = controller.is_some(),
        node = node.is_some(),
        "serving CSI"
    );
    let router = Server::builder()
        .layer(RpcLogLayer { metrics })
        .add_service(IdentityServer::new(identity))
        .add_optional_service(controller.map(ControllerServer::new))
        .add_optional_service(node.map(NodeServer::new));

    // After the signal, in-flight RPCs get SHUTDOWN_GRACE to finish. Clients
    // that merely keep a connection open (kubelet, sidecars, a test that still
    // holds a channel) must not keep the driver alive past it: tonic's graceful
    // shutdown alone would wait for them for ever.
    let (fired_tx, fired_rx) = tokio::sync::oneshot::channel::<()>();
    let shutdown = async move {
        shutdown.await;
        let _ = fired_tx.send(());
    };
    let grace = async move {
        if fired_rx.await.is_ok() {
            tokio::time::sleep(SHUTDOWN_GRACE).await;
            tracing::warn!(after = ?SHUTDOWN_GRACE, "connections still open after the shutdown grace period; exiting");
        } else {
            std::future::pending::<()>().await;
        }
    };
    match endpoint {
        Endpoint::Unix(path) => {
            let (listener, _socket) = bind_unix(path)?;
            let served = tokio::select! {
                r = router.serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown) => r,
                () = grace => Ok(()),
            };
            // `_socket` removes the socket file when dropped, here or on error.
            served.map_err(|e| Error::Internal(format!("serve on {endpoint}: {e}")))
        }
        Endpoint::Tcp(addr) => {
            let listener = TcpListener::bind(addr).await.map_err(|e| Error::io(format!("listen on {endpoint}"), e))?;
            let served = tokio::select! {
                r = router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), shutdown) => r,
                () = grace => Ok(()),
            };
            served.map_err(|e| Error::Internal(format!("serve on {endpoint}: {e}")))
        }
    }
}

/// Completes on the first SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (signal(SignalKind::terminate()), signal(SignalKind::interrupt())) else {
        tracing::error!("cannot install SIGTERM/SIGINT handlers; serving until killed");
        return std::future::pending().await;
    };
    let which = tokio::select! {
        _ = term.recv() => "SIGTERM",
        _ = int.recv() => "SIGINT",
    };
    tracing::info!(signal = which, "shutting down");
}

/// Removes the socket file when dropped.
#[derive(Debug)]
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        match std::fs::remove_file(&self.0) {
            Ok(()) => tracing::debug!(path = %self.0.display(), "removed socket"),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => tracing::warn!(path = %self.0.display(), "remove socket: {e}"),
        }
    }
}

fn bind_unix(path: &Path) -> Result<(UnixListener, SocketFile)> {
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => {
            // Left behind by a previous run that did not shut down cleanly.
            std::fs::remove_file(path).map_err(|e| Error::io(format!("remove stale socket {}", path.display()), e))?;
            tracing::info!(path = %path.display(), "removed stale socket");
        }
        Ok(_) => {
            return Err(Error::Usage(format!(
                "--endpoint {}: exists and is not a socket; refusing to replace it",
                path.display()
            )))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(Error::io(format!("inspect {}", path.display()), e)),
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create socket directory {}", dir.display()), e))?;
    }
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".{}.tmp", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let _ = std::fs::remove_file(&tmp);
    let listener = UnixListener::bind(&tmp).map_err(|e| Error::io(format!("bind {}", tmp.display()), e))?;
    let placed = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| Error::io(format!("chmod 0600 {}", tmp.display()), e))
        .and_then(|()| {
            std::fs::rename(&tmp, path)
                .map_err(|e| Error::io(format!("rename {} to {}", tmp.display(), path.display()), e))
        });
    if let Err(e) = placed {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok((listener, SocketFile(path.to_path_buf())))
}

/// Logs one line per RPC: method, duration, gRPC status code; and counts
/// it in the metrics, when they are on.
#[derive(Clone, Debug)]
struct RpcLogLayer {
    metrics: Option<RpcMetrics>,
}

impl<S> tower::Layer<S> for RpcLogLayer {
    type Service = RpcLog<S>;

    fn layer(&self, inner: S) -> RpcLog<S> {
        RpcLog { inner, metrics: self.metrics.clone() }
    }
}

#[derive(Clone, Debug)]
struct RpcLog<S> {
    inner: S,
    metrics: Option<RpcMetrics>,
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, RB> tower::Service<http::Request<B>> for RpcLog<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<RB>>,
    S::Future: Send + 'static,
    S::Error: std::fmt::Display,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let method = req.uri().path().to_owned();
        let start = Instant::now();
        let fut = self.inner.call(req);
        let metrics = self.metrics.clone();
        Box::pin(async move {
            let res = fut.await;
            let secs = start.elapsed().as_secs_f64();
            let ms = secs * 1000.0;
            match &res {
                Ok(resp) => {
                    // A unary error is a trailers-only response: grpc-status
                    // in the headers. A success carries it in the trailers.
                    let code = resp
                        .headers()
                        .get("grpc-status")
                        .and_then(|v| v.to_str().ok())
                        .and_then(|v| v.parse::<i32>().ok())
                        .map_or(tonic::Code::Ok, tonic::Code::from_i32);
                    log_rpc(&method, ms, code, resp.headers().get("grpc-message"));
                    if let Some(m) = &metrics {
                        m.observe(&method, code, secs);
                    }
                }
                Err(e) => {
                    tracing::warn!(%method, ms, "rpc failed in transport: {e}");
                    if let Some(m) = &metrics {
                        m.observe(&method, tonic::Code::Unknown, secs);
                    }
                }
            }
            res
        })
    }
}

fn log_rpc(method: &str, ms: f64, code: tonic::Code, message: Option<&http::HeaderValue>) {
    let message = message.and_then(|m| m.to_str().ok()).map(percent_decode).unwrap_or_default();
    let code_name = format!("{code:?}");
    if code == tonic::Code::Ok {
        // Probe comes every few seconds from the liveness sidecar.
        if method.ends_with("/Probe") {
            tracing::debug!(method, ms, code = code_name, "rpc");
        } else {
            tracing::info!(method, ms, code = code_name, "rpc");
        }
    } else {
        tracing::warn!(method, ms, code = code_name, message, "rpc");
    }
}

/// grpc-message is percent-encoded on the wire.
fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn grpc_message_is_decoded() {
        assert_eq!(super::percent_decode("a%20b%25"), "a b%");
        assert_eq!(super::percent_decode("trailing%2"), "trailing%2");
        assert_eq!(super::percent_decode("%"), "%");
    }
}
