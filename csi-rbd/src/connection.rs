//! Cluster connections, cached per (monitors, user, key).
//!
//! Connecting to a cluster (monitor session, cephx handshake, OSD map) costs
//! tens of milliseconds and a thread pool inside librados; every RPC would
//! pay it. So connections are kept: the key of the cache is the monitors, the
//! user and a hash of the secret key (SipHash with this process's random
//! keys, so two different secrets never share a connection and the secret
//! itself is not kept as a map key). The connection object holds the key as
//! librados needs it; it is never logged.
//!
//! RPCs without secrets (ListVolumes, GetCapacity, ControllerGetVolume) use
//! the connection most recently made for their clusterID; before any call
//! with secrets for that cluster they answer FAILED_PRECONDITION, saying so.
//!
//! Errors, as a ceph-csi user would want to read them:
//! - missing `userID`/`userKey` or an unknown clusterID: INVALID_ARGUMENT;
//! - a wrong key: UNAUTHENTICATED (cephx refused the secrets);
//! - no monitor answers within `--ceph-timeout`: UNAVAILABLE, naming the
//!   monitors and the bound;
//! - the controller's own client blocklisted (by an admin, or a fence
//!   gone wrong): UNAVAILABLE once, the connection is dropped, and the
//!   retry reconnects.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use csi_core::redact::Secrets;
use csi_core::Error;

use crate::config::{ClusterConfig, ConfigError};

/// How many connections are kept (each is a librados client with threads).
pub const MAX_CACHED: usize = 16;

/// The secret keys a CSI secret must carry (ceph-csi's names).
pub const USER_ID: &str = "userID";
/// See [`USER_ID`].
pub const USER_KEY: &str = "userKey";

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Key {
    monitors: Vec<String>,
    user: String,
    secret_hash: u64,
}

/// A connection with what it was made for.
#[derive(Clone, Debug)]
pub struct Conn {
    /// The cluster's ID in the cluster config.
    pub cluster_id: String,
    /// The connection.
    pub rbd: Arc<dyn ceph::Rbd>,
}

/// The cache.
#[derive(Debug)]
pub struct Connections {
    config_path: std::path::PathBuf,
    timeout: Duration,
    hasher: std::collections::hash_map::RandomState,
    cache: Mutex<HashMap<Key, Arc<dyn ceph::Rbd>>>,
    /// clusterID → the connection last made or used with secrets.
    latest: Mutex<HashMap<String, Arc<dyn ceph::Rbd>>>,
    connects: AtomicU64,
    reuses: AtomicU64,
}

impl Connections {
    /// An empty cache reading the cluster config at `config_path`.
    pub fn new(config_path: std::path::PathBuf, timeout: Duration) -> Self {
        Connections {
            config_path,
            timeout,
            hasher: Default::default(),
            cache: Mutex::default(),
            latest: Mutex::default(),
            connects: AtomicU64::new(0),
            reuses: AtomicU64::new(0),
        }
    }

    /// The bound on connecting and on each Ceph call (`--ceph-timeout`).
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// (connections made, calls served by a cached connection).
    pub fn counters(&self) -> (u64, u64) {
        (self.connects.load(Ordering::Relaxed), self.reuses.load(Ordering::Relaxed))
    }

    /// Connections currently cached.
    pub fn cached(&self) -> usize {
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).len()
    }

    /// The monitors of `cluster_id` (INVALID_ARGUMENT if the config has no
    /// such cluster; INTERNAL if the file is unreadable or invalid).
    pub fn monitors(&self, cluster_id: &str) -> Result<Vec<String>, Error> {
        let config = ClusterConfig::load(&self.config_path).map_err(|e| match e {
            ConfigError::UnknownCluster(_) => Error::InvalidArgument(e.to_string()),
            e => Error::Internal(e.to_string()),
        })?;
        config
            .cluster(cluster_id)
            .map(|c| c.monitors.clone())
            .map_err(|e| Error::InvalidArgument(format!("{e} ({})", self.config_path.display())))
    }

    /// A connection to `cluster_id` as the user of `secrets`, cached or new
    /// (connecting runs on a blocking thread, bounded by the timeout).
    pub async fn get(&self, cluster_id: &str, secrets: &Secrets) -> Result<Conn, Error> {
        let user = secrets.get(USER_ID).map(str::trim).filter(|s| !s.is_empty());
        let secret = secrets.get(USER_KEY).map(str::trim).filter(|s| !s.is_empty());
        let (Some(user), Some(secret)) = (user, secret) else {
            return Err(Error::InvalidArgument(format!(
                "secrets {USER_ID} and {USER_KEY} are required (got keys {:?})",
                secrets.keys()
            )));
        };
        let user = user.strip_prefix("client.").unwrap_or(user).to_string();
        let monitors = self.monitors(cluster_id)?;
        let key = Key { monitors: monitors.clone(), user: user.clone(), secret_hash: self.hasher.hash_one(secret) };
        let cached = self.cache.lock().unwrap_or_else(|e| e.into_inner()).get(&key).cloned();
        let rbd = match cached {
            Some(rbd) => {
                self.reuses.fetch_add(1, Ordering::Relaxed);
                rbd
            }
            None => {
                let spec = ceph::ConnectSpec {
                    monitors: monitors.clone(),
                    user,
                    key: secret.to_string(),
                    timeout: self.timeout,
                };
                let started = std::time::Instant::now();
                let rbd = tokio::task::spawn_blocking(move || ceph::connect(&spec))
                    .await
                    .map_err(|e| Error::Internal(format!("connect task: {e}")))?
                    .map_err(|e| connect_error(e, cluster_id, &monitors, self.timeout))?;
                self.connects.fetch_add(1, Ordering::Relaxed);
                tracing::info!(
                    cluster_id,
                    monitors = monitors.join(","),
                    client = rbd.client_address().unwrap_or_default(),
                    ms = started.elapsed().as_millis() as u64,
                    "connected to the cluster"
                );
                let mut cache = self.cache.lock().unwrap_or_else(|e| e.into_inner());
                if cache.len() >= MAX_CACHED {
                    // Any one: they are all cheap to make again.
                    if let Some(k) = cache.keys().next().cloned() {
                        cache.remove(&k);
                    }
                }
                Arc::clone(cache.entry(key).or_insert(rbd))
            }
        };
        self.latest.lock().unwrap_or_else(|e| e.into_inner()).insert(cluster_id.to_string(), Arc::clone(&rbd));
        Ok(Conn { cluster_id: cluster_id.to_string(), rbd })
    }

    /// The connection last used for `cluster_id`, for RPCs that carry no
    /// secrets; FAILED_PRECONDITION before any RPC with secrets for it.
    pub fn latest(&self, cluster_id: &str) -> Result<Conn, Error> {
        self.latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(cluster_id)
            .map(|rbd| Conn { cluster_id: cluster_id.to_string(), rbd: Arc::clone(rbd) })
            .ok_or_else(|| {
                Error::FailedPrecondition(format!(
                    "no credentials for clusterID {cluster_id:?} yet: this RPC carries no secrets, and the \
                     controller has not served a call with secrets for that cluster since it started"
                ))
            })
    }

    /// Drops `rbd` from the cache when `e` says its client was blocklisted:
    /// such a connection never works again, and the next call makes a new
    /// one (with a new client address). Returns `e`, saying so.
    pub fn drop_if_blocklisted(&self, rbd: &Arc<dyn ceph::Rbd>, e: Error) -> Error {
        let Error::PermissionDenied(m) = &e else { return e };
        if !m.contains("blocklisted") {
            return e;
        }
        self.cache.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, c| !Arc::ptr_eq(c, rbd));
        self.latest.lock().unwrap_or_else(|e| e.into_inner()).retain(|_, c| !Arc::ptr_eq(c, rbd));
        tracing::warn!("{m}: connection dropped, the next call reconnects");
        Error::Unavailable(format!("{m}: the controller's connection was blocklisted and is dropped; retry"))
    }

    /// Every cluster with a connection, for listings.
    pub fn all_latest(&self) -> Vec<Conn> {
        let mut v: Vec<Conn> = self
            .latest
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .map(|(c, rbd)| Conn { cluster_id: c.clone(), rbd: Arc::clone(rbd) })
            .collect();
        v.sort_by(|a, b| a.cluster_id.cmp(&b.cluster_id));
        v
    }
}

fn connect_error(e: ceph::Error, cluster_id: &str, monitors: &[String], timeout: Duration) -> Error {
    match e {
        ceph::Error::PermissionDenied(m) => Error::Unauthenticated(format!(
            "clusterID {cluster_id:?}: the cluster refused the secrets' userID/userKey ({m})"
        )),
        ceph::Error::Timeout(m) => Error::Unavailable(format!(
            "clusterID {cluster_id:?}: no monitor of {} answered within {timeout:?} ({m})",
            monitors.join(",")
        )),
        e => Error::Unavailable(format!("clusterID {cluster_id:?}: cannot connect to {}: {e}", monitors.join(","))),
    }
}

/// Maps a Ceph error to the CSI code at the edge.
pub fn ceph_err(e: ceph::Error) -> Error {
    match e {
        ceph::Error::NotFound(m) => Error::NotFound(m),
        ceph::Error::Exists(m) => Error::AlreadyExists(m),
        ceph::Error::Busy(m) => Error::FailedPrecondition(m),
        ceph::Error::Conflict(m) => Error::Aborted(m),
        ceph::Error::PermissionDenied(m) => Error::PermissionDenied(m),
        ceph::Error::Timeout(m) => Error::Unavailable(m),
        ceph::Error::NoSpace(m) => Error::ResourceExhausted(m),
        ceph::Error::InvalidArgument(m) => Error::InvalidArgument(m),
        e @ ceph::Error::Other { .. } => Error::Internal(e.to_string()),
    }
}
