//! The etcd client shared by the overlay's subnet leases (`subnet-lease`)
//! and the affine-blocks IPAM (`cluster-ipam`): client settings
//! ([`EtcdConfig`]), the one error type ([`Error`]) and a wrapper
//! ([`EtcdClient`]) that fails over between endpoints.
//!
//! Why a wrapper: `etcd-client` puts every endpoint behind one tower
//! balancer, which keeps sending requests to an endpoint whose server is
//! gone (each such request fails at once), so a cluster that has lost one
//! member of three fails a third of the calls although it has quorum.
//! [`EtcdClient`] keeps one channel per endpoint and tries them in order,
//! starting with the last one that answered:
//!
//! * a request that certainly did not reach etcd (the connection was
//!   refused or could not be set up, or the member answered "no leader"
//!   before doing anything) goes to the next endpoint;
//! * a request that may have been applied (the connection broke after it
//!   was sent, or no answer in time) is retried on the next endpoint only
//!   when it is idempotent ([`Retry::Idempotent`]); a write is reported as
//!   [`Error::Unavailable`] so the caller (who knows what it wrote) decides.
//!
//! See `docs/cluster-ipam.md`, "etcd client".

use std::future::Future;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

pub use etcd_client;
use etcd_client::{Client, ConnectOptions};

pub mod flags;
pub mod testing;

/// Where etcd is and how to reach it (Flannel's `--etcd-endpoints`,
/// `--etcd-prefix`, `--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile`).
///
/// `prefix` is the key prefix of the user (empty: that user's default; a
/// trailing `/` is ignored). Endpoints are URLs (`http://127.0.0.1:2379`,
/// `https://…`); with any TLS file set they must all be `https://`. A
/// client certificate needs both `cert_file` and `key_file`; `ca_file`
/// alone gives server-verified TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EtcdConfig {
    pub endpoints: Vec<String>,
    pub prefix: String,
    pub ca_file: Option<PathBuf>,
    pub cert_file: Option<PathBuf>,
    pub key_file: Option<PathBuf>,
}

impl Default for EtcdConfig {
    /// `http://127.0.0.1:2379`, the user's default prefix.
    fn default() -> Self {
        EtcdConfig {
            endpoints: vec!["http://127.0.0.1:2379".to_string()],
            prefix: String::new(),
            ca_file: None,
            cert_file: None,
            key_file: None,
        }
    }
}

impl EtcdConfig {
    /// Whether any TLS file is set.
    pub fn uses_tls(&self) -> bool {
        self.ca_file.is_some() || self.cert_file.is_some() || self.key_file.is_some()
    }

    /// With TLS files set, every endpoint must be `https://`: what each
    /// command line checks before contacting etcd.
    pub fn check_tls_endpoints(&self) -> Result<(), String> {
        if self.uses_tls() {
            if let Some(e) = self.endpoints.iter().find(|e| !e.starts_with("https://")) {
                return Err(format!("--etcd-endpoints: {e:?} is not https:// but TLS files are set"));
            }
        }
        Ok(())
    }
}

/// An `--etcd-endpoints` value, as every command line takes it: split at
/// commas, blanks around and empty entries ignored; each must be an
/// `http://` or `https://` URL, and there must be at least one.
pub fn parse_endpoints(v: &str) -> Result<Vec<String>, String> {
    let list: Vec<String> = v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(String::from).collect();
    if list.is_empty() {
        return Err("no endpoint given".into());
    }
    if let Some(e) = list.iter().find(|e| !(e.starts_with("http://") || e.starts_with("https://"))) {
        return Err(format!("{e:?} is not an http:// or https:// URL"));
    }
    Ok(list)
}

/// etcd errors, for every user of etcd in the workspace.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// No endpoint could be reached, answered in time, or had a leader.
    /// Retry later; the CNI side maps this to code 11 ("try again later").
    /// `reason` says what each endpoint tried did.
    #[error("etcd unavailable at {endpoints}: {reason}")]
    Unavailable { endpoints: String, reason: String },
    /// etcd answered with an error.
    #[error("etcd {op} failed: {source}")]
    Etcd {
        op: &'static str,
        #[source]
        source: etcd_client::Error,
    },
    /// Bad client settings (endpoints, TLS files).
    #[error("invalid etcd client settings: {0}")]
    InvalidSettings(String),
}

impl Error {
    /// True when etcd is unreachable or leaderless: a retry may succeed.
    pub fn is_unavailable(&self) -> bool {
        match self {
            Error::Unavailable { .. } => true,
            Error::Etcd { source, .. } => is_transport_error(source),
            Error::InvalidSettings(_) => false,
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// etcd-client's message for a keep-alive answered with TTL 0.
pub const LEASE_NOT_FOUND: &str = "lease not found";

/// gRPC status codes (numeric, so tonic's enum need not be matched).
mod grpc_code {
    pub const CANCELLED: i32 = 1;
    pub const UNKNOWN: i32 = 2;
    pub const DEADLINE_EXCEEDED: i32 = 4;
    pub const NOT_FOUND: i32 = 5;
    pub const UNAVAILABLE: i32 = 14;
}

/// Connection-level failures and leaderless members (as opposed to etcd
/// refusing a request): a later try, or another member, may succeed.
pub fn is_transport_error(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    match e {
        E::LeaseKeepAliveError(m) => m != LEASE_NOT_FOUND,
        E::TransportError(_) | E::IoError(_) | E::WatchError(_) => true,
        E::GRpcStatus(s) => {
            let code = s.code() as i32;
            matches!(code, grpc_code::UNAVAILABLE | grpc_code::DEADLINE_EXCEEDED | grpc_code::CANCELLED)
                || (code == grpc_code::UNKNOWN && {
                    let m = s.message().to_ascii_lowercase();
                    m.contains("transport") || m.contains("connect") || m.contains("not ready") || m.contains("broken pipe")
                })
                // etcd: "etcdserver: no leader", "leader changed", "request timed out"
                || s.message().contains("no leader")
                || s.message().contains("leader changed")
                || s.message().contains("request timed out")
        }
        _ => false,
    }
}

/// True when the request certainly never reached etcd's state machine:
/// the connection could not be set up (refused, unreachable, TLS), or the
/// member rejected it up front because it has no leader (the client sends
/// `require-leader`). Such a request can go to another member, write or not.
pub fn not_delivered(e: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    let chain_has_connect_error = |mut err: Option<&(dyn std::error::Error + 'static)>| {
        while let Some(x) = err {
            if x.downcast_ref::<tonic::ConnectError>().is_some() {
                return true;
            }
            err = x.source();
        }
        false
    };
    match e {
        E::GRpcStatus(s) => {
            let m = s.message();
            m.contains("no leader")
                || chain_has_connect_error(std::error::Error::source(s))
                || m.contains("tcp connect error")
                || m.contains("error trying to connect")
                || m.contains("Connection refused")
        }
        E::TransportError(t) => chain_has_connect_error(Some(t)),
        _ => false,
    }
}

/// A `NOT_FOUND` answer (e.g. revoking a lease that is already gone).
pub fn is_not_found(e: &etcd_client::Error) -> bool {
    matches!(e, etcd_client::Error::GRpcStatus(s) if s.code() as i32 == grpc_code::NOT_FOUND || s.message().contains("not found"))
}

/// Timeouts of an [`EtcdClient`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// TCP (and TLS) connection set-up, per endpoint.
    pub connect: Duration,
    /// One request on one endpoint; past it the endpoint counts as failed.
    pub request: Duration,
    /// HTTP/2 keep-alive pings (interval, timeout): they break a stream on
    /// a dead connection. None: no pings (short-lived plugin calls).
    pub keep_alive: Option<(Duration, Duration)>,
}

impl Timeouts {
    /// A long-lived daemon: 3 s connect, 5 s per request, pings every 10 s.
    pub const DAEMON: Timeouts = Timeouts {
        connect: Duration::from_secs(3),
        request: Duration::from_secs(5),
        keep_alive: Some((Duration::from_secs(10), Duration::from_secs(5))),
    };
}

/// How a call may be retried on another endpoint after a failure that may
/// have reached etcd (a broken connection, no answer in time).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Reads, keep-alives, revokes: doing it twice is harmless.
    Idempotent,
    /// Writes (transactions, puts, grants): only a request that certainly
    /// did not reach etcd ([`not_delivered`]) goes to the next endpoint.
    Once,
}

/// ConnectOptions for one endpoint: timeouts, keep-alive, require-leader
/// and TLS. Checks the TLS files and the endpoints' schemes.
pub fn connect_options(cfg: &EtcdConfig, t: &Timeouts) -> Result<ConnectOptions> {
    // No gRPC-level request timeout: EtcdClient::call bounds each request
    // itself (and says so in the error); a watch stream has none.
    let mut opts = ConnectOptions::new().with_connect_timeout(t.connect).with_require_leader(true);
    if let Some((interval, timeout)) = t.keep_alive {
        opts = opts.with_keep_alive(interval, timeout);
    }
    if cfg.uses_tls() {
        let read = |what: &str, p: &std::path::Path| {
            std::fs::read(p).map_err(|e| Error::InvalidSettings(format!("cannot read {what} {}: {e}", p.display())))
        };
        let mut tls = etcd_client::TlsOptions::new();
        if let Some(ca) = &cfg.ca_file {
            tls = tls.ca_certificate(etcd_client::Certificate::from_pem(read("CA file", ca)?));
        }
        match (&cfg.cert_file, &cfg.key_file) {
            (Some(cert), Some(key)) => {
                tls = tls.identity(etcd_client::Identity::from_pem(read("cert file", cert)?, read("key file", key)?));
            }
            (None, None) => {}
            _ => {
                return Err(Error::InvalidSettings(
                    "a client certificate needs both the cert file and the key file".into(),
                ))
            }
        }
        if let Some(e) = cfg.endpoints.iter().find(|e| !e.starts_with("https://")) {
            return Err(Error::InvalidSettings(format!(
                "endpoint {e:?} is not https:// but TLS files are set: use https:// endpoints"
            )));
        }
        opts = opts.with_tls(tls);
    }
    Ok(opts)
}

/// An etcd client over several endpoints with ordered failover (see the
/// crate docs). Cheap to share by reference; must be used inside one tokio
/// runtime (the channels' workers run there). No I/O until the first call.
pub struct EtcdClient {
    endpoints: Vec<String>,
    options: ConnectOptions,
    timeouts: Timeouts,
    desc: String,
    state: Mutex<State>,
}

struct State {
    /// Where the next call starts: the last endpoint that answered, or the
    /// one after the last that failed.
    preferred: usize,
    /// One client (channel) per endpoint, built on first use and rebuilt
    /// after a failure; the number is a generation so that two callers
    /// that saw the same failure rebuild it once.
    clients: Vec<(u64, Option<Client>)>,
}

impl std::fmt::Debug for EtcdClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EtcdClient").field("endpoints", &self.desc).finish()
    }
}

impl EtcdClient {
    /// Checks the settings; connects lazily.
    pub fn new(cfg: &EtcdConfig, timeouts: Timeouts) -> Result<EtcdClient> {
        if cfg.endpoints.is_empty() {
            return Err(Error::InvalidSettings("no etcd endpoints".into()));
        }
        if let Some(e) = cfg.endpoints.iter().find(|e| !(e.starts_with("http://") || e.starts_with("https://"))) {
            return Err(Error::InvalidSettings(format!("endpoint {e:?} is not an http:// or https:// URL")));
        }
        let options = connect_options(cfg, &timeouts)?;
        Ok(EtcdClient {
            endpoints: cfg.endpoints.clone(),
            options,
            timeouts,
            desc: cfg.endpoints.join(","),
            state: Mutex::new(State { preferred: 0, clients: vec![(0, None); cfg.endpoints.len()] }),
        })
    }

    /// The endpoints, comma-separated (for messages).
    pub fn endpoints_desc(&self) -> &str {
        &self.desc
    }

    pub fn timeouts(&self) -> Timeouts {
        self.timeouts
    }

    /// An [`Error::Unavailable`] naming every endpoint.
    pub fn unavailable(&self, reason: impl Into<String>) -> Error {
        Error::Unavailable { endpoints: self.desc.clone(), reason: reason.into() }
    }

    /// The client of endpoint `i` (built if needed) and its generation.
    async fn client(&self, i: usize) -> Result<(u64, Client)> {
        if let (g, Some(c)) = &self.state.lock().unwrap().clients[i] {
            return Ok((*g, c.clone()));
        }
        // Client::connect with one endpoint only builds the channel: no I/O.
        let c = Client::connect([&self.endpoints[i]], Some(self.options.clone())).await.map_err(|e| match e {
            etcd_client::Error::InvalidArgs(_) | etcd_client::Error::InvalidUri(_) => {
                Error::InvalidSettings(format!("endpoint {:?}: {e}", self.endpoints[i]))
            }
            e => self.unavailable(format!("{}: {e}", self.endpoints[i])),
        })?;
        let mut st = self.state.lock().unwrap();
        let slot = &mut st.clients[i];
        match &slot.1 {
            Some(existing) => Ok((slot.0, existing.clone())),
            None => {
                slot.1 = Some(c.clone());
                Ok((slot.0, c))
            }
        }
    }

    /// Drops endpoint `i`'s channel (a fresh one next time) unless someone
    /// already did since `generation`, and moves the start of the next call
    /// past it.
    fn failed(&self, i: usize, generation: u64) {
        let mut st = self.state.lock().unwrap();
        if st.clients[i].0 == generation {
            st.clients[i] = (generation + 1, None);
        }
        if st.preferred == i {
            st.preferred = (i + 1) % self.endpoints.len();
        }
    }

    fn answered(&self, i: usize) {
        self.state.lock().unwrap().preferred = i;
    }

    /// Runs one etcd request, failing over between endpoints (see the
    /// crate docs for which failures go to the next endpoint). `f` builds
    /// the request for a client; it may be called once per endpoint.
    pub async fn call<T, F, Fut>(&self, op: &'static str, retry: Retry, f: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        let n = self.endpoints.len();
        let start = self.state.lock().unwrap().preferred;
        let mut reasons = Vec::new();
        for k in 0..n {
            let i = (start + k) % n;
            let ep = &self.endpoints[i];
            let (generation, client) = self.client(i).await?;
            match tokio::time::timeout(self.timeouts.request, f(client)).await {
                Ok(Ok(v)) => {
                    self.answered(i);
                    return Ok(v);
                }
                Ok(Err(e)) if !is_transport_error(&e) => return Err(Error::Etcd { op, source: e }),
                Ok(Err(e)) => {
                    self.failed(i, generation);
                    let delivered = !not_delivered(&e);
                    tracing::debug!(endpoint = %ep, op, delivered, "etcd request failed: {e}");
                    reasons.push(format!("{ep}: {e}"));
                    if delivered && retry == Retry::Once {
                        break;
                    }
                }
                Err(_) => {
                    self.failed(i, generation);
                    tracing::debug!(endpoint = %ep, op, "etcd request timed out");
                    reasons.push(format!("{ep}: no answer within {:?}", self.timeouts.request));
                    if retry == Retry::Once {
                        break;
                    }
                }
            }
        }
        Err(self.unavailable(format!("{op}: {}", reasons.join("; "))))
    }

    /// A client for a long-lived stream (a watch), from the preferred
    /// endpoint, with what [`Self::stream_failed`] needs.
    pub async fn stream_client(&self) -> Result<(StreamHandle, Client)> {
        let i = self.state.lock().unwrap().preferred;
        let (generation, c) = self.client(i).await?;
        Ok((StreamHandle { endpoint: i, generation }, c))
    }

    /// The stream of `h` broke on a transport failure: the next stream
    /// starts on the next endpoint with a fresh channel.
    pub fn stream_failed(&self, h: StreamHandle) {
        self.failed(h.endpoint, h.generation)
    }

    /// Starts a watch of `key` with `opts` on the preferred endpoint, waiting
    /// at most the request timeout for the server to take it. On failure the
    /// endpoint is marked failed where the transport (or the silence) is the
    /// cause, and the reason comes back in words for the caller's log line
    /// and backoff.
    pub async fn start_watch(
        &self,
        key: String,
        opts: etcd_client::WatchOptions,
    ) -> std::result::Result<(StreamHandle, etcd_client::WatchStream), String> {
        let (handle, mut client) = self.stream_client().await.map_err(|e| e.to_string())?;
        match tokio::time::timeout(self.timeouts.request, client.watch(key, Some(opts))).await {
            Ok(Ok(stream)) => Ok((handle, stream)),
            Ok(Err(e)) => {
                if is_transport_error(&e) {
                    self.stream_failed(handle);
                }
                Err(format!("cannot start: {e}"))
            }
            Err(_) => {
                self.stream_failed(handle);
                Err("no answer to the watch request".into())
            }
        }
    }
}

/// Which endpoint (and channel generation) a stream runs on.
#[derive(Debug, Clone, Copy)]
pub struct StreamHandle {
    endpoint: usize,
    generation: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn settings_are_checked_before_any_io() {
        let bad = |cfg: EtcdConfig| EtcdClient::new(&cfg, Timeouts::DAEMON).unwrap_err().to_string();
        assert_eq!(
            bad(EtcdConfig { endpoints: vec![], ..EtcdConfig::default() }),
            "invalid etcd client settings: no etcd endpoints"
        );
        assert!(bad(EtcdConfig { endpoints: vec!["127.0.0.1:2379".into()], ..EtcdConfig::default() })
            .contains("is not an http:// or https:// URL"));
        assert!(bad(EtcdConfig { ca_file: Some("/nonexistent.pem".into()), ..EtcdConfig::default() })
            .contains("cannot read CA file /nonexistent.pem"));
        assert!(bad(EtcdConfig { cert_file: Some("/nonexistent.pem".into()), ..EtcdConfig::default() })
            .contains("needs both the cert file and the key file"));
    }
}
