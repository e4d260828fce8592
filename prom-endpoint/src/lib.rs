//! The Prometheus endpoint shared by the long-running binaries (the overlay
//! agent, the CSI drivers).
//!
//! - Metrics are built with [`prometheus_client`] (the Prometheus project's
//!   own Rust client, re-exported here so every user builds against one
//!   version) and registered in one [`Registry`] per process;
//! - [`serve`] binds `--metrics-address` and answers `GET /metrics` with the
//!   Prometheus text format (version 0.0.4), or OpenMetrics text when the
//!   scraper asks for it in `Accept`. Any other path is 404, any other
//!   method 405. Nothing is bound when the flag is absent: callers only
//!   call [`serve`] when it is given;
//! - [`parse_address`] is the flag's parser: `IP:PORT` or `[IPv6]:PORT`,
//!   with an error that says what was expected;
//! - [`FnGauge`] and [`FnCounter`] read a value at scrape time (a pool
//!   size, a counter kept in a static), so the code that owns the value
//!   does not need to know about metrics;
//! - [`scrape`], [`parse_text`] and [`value`] read an endpoint back the way
//!   Prometheus would, for the tests that check what an operator sees.
//!
//! The listener is hyper's HTTP/1.1 server, already in every user's
//! dependency tree through tonic. Each connection is its own task with a
//! header read timeout, so a slow or stuck scraper never holds up the
//! binary's own work, and encoding a registry of a few dozen series takes
//! microseconds.

use std::convert::Infallible;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
pub use prometheus_client;
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
pub use prometheus_client::registry::Registry;

/// How long a scraper may take to send its request headers.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

/// The buckets (seconds) of the latency histograms: 1 ms to 30 s, the range
/// of a CSI call or a reconcile pass, about three per decade.
pub const LATENCY_BUCKETS: [f64; 14] =
    [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// The errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The address could not be bound (in use, not ours, no permission).
    #[error("--metrics-address {addr}: cannot listen: {source}")]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// Why the bind failed.
        #[source]
        source: std::io::Error,
    },
}

/// Parses `--metrics-address`: `IP:PORT` (`127.0.0.1:9101`, `0.0.0.0:9101`)
/// or `[IPv6]:PORT` (`[::]:9101`). Port 0 picks a free port (tests).
pub fn parse_address(s: &str) -> Result<SocketAddr, String> {
    s.parse::<SocketAddr>()
        .map_err(|_| format!("{s:?} is not IP:PORT (e.g. 127.0.0.1:9101, 0.0.0.0:9101 or [::]:9101)"))
}

/// A running metrics endpoint; dropping it stops the listener.
#[derive(Debug)]
pub struct Endpoint {
    local: SocketAddr,
    task: tokio::task::JoinHandle<()>,
}

impl Endpoint {
    /// The address actually bound (the port is known even when 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
}

impl Drop for Endpoint {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Binds `addr` and serves `registry` on `GET /metrics` from a task of the
/// current tokio runtime. The bind happens before this returns, so a bad
/// or busy address is an error at start-up, not a log line later.
pub async fn serve(addr: SocketAddr, registry: Registry) -> Result<Endpoint, Error> {
    let listener = tokio::net::TcpListener::bind(addr).await.map_err(|source| Error::Bind { addr, source })?;
    let local = listener.local_addr().map_err(|source| Error::Bind { addr, source })?;
    let registry = Arc::new(registry);
    tracing::info!(address = %local, "serving metrics on /metrics");
    let task = tokio::spawn(async move {
        loop {
            let stream = match listener.accept().await {
                Ok((s, _)) => s,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!("metrics endpoint: accept: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let registry = registry.clone();
            tokio::spawn(async move {
                let svc = hyper::service::service_fn(move |req| {
                    let registry = registry.clone();
                    async move { Ok::<_, Infallible>(respond(&registry, &req)) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .serve_connection(TokioIo::new(stream), svc);
                if let Err(e) = conn.await {
                    tracing::debug!("metrics endpoint: connection: {e}");
                }
            });
        }
    });
    Ok(Endpoint { local, task })
}

/// The content type of the Prometheus text format (0.0.4).
pub const PROMETHEUS_TEXT: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;
/// The content type of OpenMetrics text (1.0.0).
pub const OPENMETRICS_TEXT: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

fn respond(registry: &Registry, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    let reply = |status: StatusCode, ctype: &str, body: String| {
        let mut r = Response::new(Full::new(Bytes::from(body)));
        *r.status_mut() = status;
        if let Ok(v) = ctype.parse() {
            r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
        }
        r
    };
    if req.uri().path() != "/metrics" {
        return reply(StatusCode::NOT_FOUND, "text/plain", "not found: metrics are on /metrics\n".into());
    }
    if req.method() != Method::GET && req.method() != Method::HEAD {
        let mut r = reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET /metrics\n".into());
        r.headers_mut().insert(hyper::header::ALLOW, hyper::header::HeaderValue::from_static("GET, HEAD"));
        return r;
    }
    let openmetrics = req
        .headers()
        .get(hyper::header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/openmetrics-text"));
    match encode(registry, openmetrics) {
        Ok(body) => reply(StatusCode::OK, if openmetrics { OPENMETRICS_TEXT } else { PROMETHEUS_TEXT }, body),
        Err(e) => reply(StatusCode::INTERNAL_SERVER_ERROR, "text/plain", format!("encode metrics: {e}\n")),
    }
}

/// The registry in the Prometheus text format (0.0.4), or OpenMetrics text
/// (ending in `# EOF`).
pub fn encode(registry: &Registry, openmetrics: bool) -> Result<String, std::fmt::Error> {
    let mut out = String::with_capacity(4096);
    if openmetrics {
        prometheus_client::encoding::text::encode(&mut out, registry)?;
    } else {
        prometheus_client::encoding::prometheus_text::encode(&mut out, registry)?;
    }
    Ok(out)
}

type ReadFn = Arc<dyn Fn() -> i64 + Send + Sync>;

/// A gauge whose value is read from `f` at every scrape.
pub struct FnGauge {
    name: &'static str,
    help: &'static str,
    f: ReadFn,
}

impl FnGauge {
    /// Registers a gauge `name` (without the registry's prefix) read from `f`.
    pub fn register(
        registry: &mut Registry,
        name: &'static str,
        help: &'static str,
        f: impl Fn() -> i64 + Send + Sync + 'static,
    ) {
        registry.register_collector(Box::new(FnGauge { name, help, f: Arc::new(f) }));
    }
}

impl std::fmt::Debug for FnGauge {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnGauge").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Collector for FnGauge {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let g = ConstGauge::new((self.f)());
        let m = encoder.encode_descriptor(self.name, self.help, None, g.metric_type())?;
        g.encode(m)
    }
}

/// A counter whose value is read from `f` at every scrape (`f` must never
/// decrease). Its name gets the `_total` suffix.
pub struct FnCounter {
    name: &'static str,
    help: &'static str,
    f: Arc<dyn Fn() -> u64 + Send + Sync>,
}

impl FnCounter {
    /// Registers a counter `name` (without `_total`) read from `f`.
    pub fn register(
        registry: &mut Registry,
        name: &'static str,
        help: &'static str,
        f: impl Fn() -> u64 + Send + Sync + 'static,
    ) {
        registry.register_collector(Box::new(FnCounter { name, help, f: Arc::new(f) }));
    }
}

impl std::fmt::Debug for FnCounter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FnCounter").field("name", &self.name).finish_non_exhaustive()
    }
}

impl Collector for FnCounter {
    fn encode(&self, mut encoder: DescriptorEncoder<'_>) -> Result<(), std::fmt::Error> {
        let c = ConstCounter::new((self.f)());
        let m = encoder.encode_descriptor(self.name, self.help, None, c.metric_type())?;
        c.encode(m)
    }
}

/// One sample of a scrape: metric name, labels (sorted by name), value.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    /// The series' name, e.g. `csi_operations_total`.
    pub name: String,
    /// Its labels, sorted by name.
    pub labels: Vec<(String, String)>,
    /// Its value.
    pub value: f64,
}

/// Parses Prometheus text (as served by [`serve`]) into samples, for tests
/// and tools that read an endpoint. Comments and blank lines are skipped;
/// a line that does not parse is an error naming it.
pub fn parse_text(text: &str) -> Result<Vec<Sample>, String> {
    let mut out = Vec::new();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = || format!("cannot parse metrics line {line:?}");
        let (series, value) = line.rsplit_once(' ').ok_or_else(bad)?;
        let value = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v.parse::<f64>().map_err(|_| bad())?,
        };
        let (name, labels) = match series.split_once('{') {
            None => (series.to_string(), Vec::new()),
            Some((name, rest)) => {
                let body = rest.strip_suffix('}').ok_or_else(bad)?;
                let mut labels = Vec::new();
                let mut s = body;
                while !s.is_empty() {
                    let (k, r) = s.split_once("=\"").ok_or_else(bad)?;
                    let mut v = String::new();
                    let mut chars = r.char_indices();
                    let end = loop {
                        match chars.next() {
                            Some((_, '\\')) => match chars.next() {
                                Some((_, 'n')) => v.push('\n'),
                                Some((_, c)) => v.push(c),
                                None => return Err(bad()),
                            },
                            Some((i, '"')) => break i,
                            Some((_, c)) => v.push(c),
                            None => return Err(bad()),
                        }
                    };
                    labels.push((k.trim().to_string(), v));
                    s = r[end + 1..].trim_start_matches(',');
                }
                labels.sort();
                (name.to_string(), labels)
            }
        };
        out.push(Sample { name, labels, value });
    }
    Ok(out)
}

/// The value of the series `name` with exactly `labels` (any order), if
/// the scrape has it.
pub fn value(samples: &[Sample], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut want: Vec<(String, String)> = labels.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
    want.sort();
    samples.iter().find(|s| s.name == name && s.labels == want).map(|s| s.value)
}

/// Fetches `http://addr/metrics` with a plain HTTP/1.1 GET (blocking, for
/// tests and tools) and returns the body. Errors say what went wrong.
pub fn scrape(addr: SocketAddr, timeout: Duration) -> Result<String, String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect_timeout(&addr, timeout).map_err(|e| format!("connect {addr}: {e}"))?;
    s.set_read_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(timeout)).map_err(|e| e.to_string())?;
    let mut req = String::new();
    let _ = write!(req, "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).map_err(|e| format!("send to {addr}: {e}"))?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).map_err(|e| format!("read from {addr}: {e}"))?;
    let resp = String::from_utf8(resp).map_err(|_| format!("{addr}: response is not UTF-8"))?;
    let (head, body) = resp.split_once("\r\n\r\n").ok_or_else(|| format!("{addr}: no HTTP header in {resp:?}"))?;
    let status = head.lines().next().unwrap_or_default();
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("{addr}: {status}"));
    }
    Ok(body.to_string())
}
