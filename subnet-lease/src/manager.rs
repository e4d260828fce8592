//! [`SubnetManager`]: the etcd side of subnet leases.

use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::net::Ipv4Addr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Client, Compare, CompareOp, GetOptions, KeyValue, PutOptions, Txn, TxnOp};
use etcd_kv::{is_not_found, EtcdClient, Retry, Timeouts, LEASE_NOT_FOUND};
use ipnetwork::{Ipv4Network, Ipv6Network};

use super::Error;
use super::{
    parse_subnet_key, subnet_key, EtcdConfig, Lease, LeaseAttrs, NetworkConfig, Result, Watcher, DEFAULT_PREFIX,
};

/// Flannel's `raceRetries`: how many lost creation races `acquire` takes.
pub const RACE_RETRIES: u32 = 10;
/// Deadline of every etcd request on one endpoint; past it the next
/// endpoint is tried (reads) or the call fails with
/// [`etcd_kv::Error::Unavailable`] (writes).
pub const REQUEST_TIMEOUT: Duration = Timeouts::DAEMON.request;
/// At most this many free subnets are considered for a random pick.
const PICK_AMONG: usize = 100;

/// Client for Flannel-layout subnet leases. Cheap to share by reference;
/// all methods take `&self`. Must be created and used inside one tokio
/// runtime (the gRPC channel's worker runs there).
///
/// Failure model: every request has a [`REQUEST_TIMEOUT`] deadline per
/// endpoint; the shared [`EtcdClient`] fails over to the next endpoint
/// when one is down, and rebuilds a failed endpoint's connection for its
/// next use, so the manager recovers on its own once etcd is back (member
/// restart, network partition). When no endpoint answers, calls fail with
/// [`etcd_kv::Error::Unavailable`]. Nothing else is retried behind the
/// caller's back except lost creation races in `acquire`.
pub struct SubnetManager {
    pub(super) inner: Arc<Inner>,
}

pub(super) struct Inner {
    pub(super) etcd: EtcdClient,
    /// `<prefix>/subnets/`
    pub(super) subnets_prefix: String,
    config_key: String,
}

impl std::fmt::Debug for SubnetManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SubnetManager")
            .field("etcd", &self.inner.etcd.endpoints_desc())
            .field("prefix", &self.inner.subnets_prefix)
            .finish()
    }
}

/// A random index below `n` (> 0); no `rand` dependency needed for this.
fn random_below(n: usize) -> usize {
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(SEQ.fetch_add(1, Ordering::Relaxed));
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    h.write_u128(now.as_nanos());
    (h.finish() % n as u64) as usize
}

impl Inner {
    /// Runs one etcd request with the deadline, failover and error mapping.
    pub(super) async fn call<T, F, Fut>(&self, op: &'static str, retry: Retry, f: F) -> Result<T>
    where
        F: Fn(Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        Ok(self.etcd.call(op, retry, f).await?)
    }

    pub(super) fn key(&self, subnet: Ipv4Network, ipv6_subnet: Option<Ipv6Network>) -> String {
        format!("{}{}", self.subnets_prefix, subnet_key(subnet, ipv6_subnet))
    }

    /// Decodes one `<prefix>/subnets/...` record (TTL not looked up).
    pub(super) fn lease_from_kv(&self, kv: &KeyValue) -> Result<Lease, String> {
        let key = String::from_utf8_lossy(kv.key());
        let (subnet, ipv6_subnet) = parse_subnet_key(&key).ok_or_else(|| format!("{key}: not a subnet key"))?;
        let attrs: LeaseAttrs =
            serde_json::from_slice(kv.value()).map_err(|e| format!("{key}: bad lease JSON: {e}"))?;
        Ok(Lease { subnet, ipv6_subnet, attrs, etcd_lease: kv.lease(), expires_in: None, revision: kv.mod_revision() })
    }

    /// Time left on an etcd lease (0 when already gone).
    pub(super) async fn ttl_of(&self, id: i64) -> Result<Duration> {
        let resp =
            self.call("lease time-to-live", Retry::Idempotent, move |mut c| async move {
                c.lease_time_to_live(id, None).await
            })
            .await?;
        Ok(Duration::from_secs(resp.ttl().max(0) as u64))
    }

    /// All leases (bad records skipped with a warning) and the revision.
    pub(super) async fn list(&self, with_ttl: bool) -> Result<(Vec<Lease>, i64)> {
        let prefix = self.subnets_prefix.clone();
        let resp = self
            .call("list subnets", Retry::Idempotent, move |mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let revision = resp.header().map(|h| h.revision()).unwrap_or(0);
        let mut leases = Vec::with_capacity(resp.kvs().len());
        for kv in resp.kvs() {
            match self.lease_from_kv(kv) {
                Ok(l) => leases.push(l),
                Err(e) => tracing::warn!("ignoring bad subnet record {e}"),
            }
        }
        if with_ttl {
            for l in leases.iter_mut().filter(|l| l.etcd_lease != 0) {
                l.expires_in = Some(self.ttl_of(l.etcd_lease).await?);
            }
        }
        Ok((leases, revision))
    }

    async fn revoke_quietly(&self, id: i64) {
        if id == 0 {
            return;
        }
        match self.call("lease revoke", Retry::Idempotent, move |mut c| async move { c.lease_revoke(id).await }).await {
            Ok(_) => {}
            Err(Error::Etcd(etcd_kv::Error::Etcd { source, .. })) if is_not_found(&source) => {}
            Err(e) => tracing::warn!("could not revoke etcd lease {id:x}: {e}"),
        }
    }
}

/// Progress of one `acquire`: the etcd lease granted for it (granted once,
/// reused over race retries, revoked if it ends up unused).
struct Grant {
    id: i64,
    ttl: i64,
    used: bool,
}

impl SubnetManager {
    /// Connects and checks that etcd answers (an [`etcd_kv::Error::Unavailable`]
    /// otherwise, so admin commands fail fast; an agent retries).
    pub async fn connect(cfg: &EtcdConfig) -> Result<SubnetManager> {
        let etcd = EtcdClient::new(cfg, Timeouts::DAEMON)?;
        let prefix = cfg.prefix.trim_end_matches('/');
        let prefix = if prefix.is_empty() { DEFAULT_PREFIX } else { prefix };
        let inner =
            Inner { etcd, subnets_prefix: format!("{prefix}/subnets/"), config_key: format!("{prefix}/config") };
        let key = inner.config_key.clone();
        let probe = inner.call("connect", Retry::Idempotent, move |mut c| {
            let key = key.clone();
            async move { c.get(key, Some(GetOptions::new().with_count_only())).await }
        });
        match probe.await {
            Ok(_) => Ok(SubnetManager { inner: Arc::new(inner) }),
            Err(Error::Etcd(etcd_kv::Error::Unavailable { endpoints, reason })) if cfg.uses_tls() => {
                let reason = format!("{reason} (TLS in use: check the CA file and the client certificate)");
                Err(etcd_kv::Error::Unavailable { endpoints, reason }.into())
            }
            Err(e) => Err(e),
        }
    }

    /// `<prefix>/config`, the etcd key of the network JSON.
    pub fn config_key(&self) -> &str {
        &self.inner.config_key
    }

    /// `<prefix>/subnets/`, the etcd prefix of the leases.
    pub fn subnets_prefix(&self) -> &str {
        &self.inner.subnets_prefix
    }

    /// Reads and checks `<prefix>/config`.
    pub async fn network_config(&self) -> Result<NetworkConfig> {
        let key = self.inner.config_key.clone();
        let resp = self
            .inner
            .call("get network config", Retry::Idempotent, move |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        match resp.kvs().first() {
            None => Err(Error::ConfigNotFound { key: self.inner.config_key.clone() }),
            Some(kv) => NetworkConfig::parse(kv.value()),
        }
    }

    /// Checks `json` and writes it to `<prefix>/config` (admin command).
    pub async fn set_network_config(&self, json: &[u8]) -> Result<NetworkConfig> {
        let cfg = NetworkConfig::parse(json)?;
        let (key, value) = (self.inner.config_key.clone(), json.to_vec());
        self.inner
            .call("put network config", Retry::Idempotent, move |mut c| {
                let (key, value) = (key.clone(), value.clone());
                async move { c.put(key, value, None).await }
            })
            .await?;
        Ok(cfg)
    }

    /// Acquires this host's subnet (IPv4, or dual stack with a fresh IPv6
    /// subnet when the config enables IPv6). See [`Self::acquire_dual`].
    pub async fn acquire(
        &self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        previous: Option<Ipv4Network>,
        ttl: Duration,
    ) -> Result<Lease> {
        self.acquire_dual(cfg, attrs, previous, None, ttl).await
    }

    /// Flannel's acquire order:
    /// 1. an existing lease whose `PublicIP` is ours is re-taken (attributes
    ///    rewritten, a new etcd lease of `ttl` attached, the old one
    ///    revoked) if it still fits `cfg`; if it does not fit it is deleted;
    /// 2. `previous` (from the old subnet file) if free and fitting (with
    ///    `previous_v6` for the IPv6 half when IPv6 is on, else a random one);
    /// 3. a random one among the first <= 100 free subnets in
    ///    `SubnetMin..=SubnetMax`.
    ///
    /// A new key is created by a txn `If(Version(<ip>-<len>*) == 0) Then
    /// Put(key, attrs, lease)`; the compare covers every key with the same
    /// IPv4 subnet, dual-stack ones included. A lost race is retried up to
    /// [`RACE_RETRIES`] times; no free subnet is [`Error::PoolExhausted`].
    /// `ttl` is rounded up to whole seconds (etcd enforces a minimum of
    /// about 2 s with default timing); a key that is a reservation (no etcd
    /// lease) stays one.
    pub async fn acquire_dual(
        &self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        previous: Option<Ipv4Network>,
        previous_v6: Option<Ipv6Network>,
        ttl: Duration,
    ) -> Result<Lease> {
        if ttl.is_zero() {
            return Err(Error::InvalidTtl("a lease TTL must be at least 1 s".into()));
        }
        let ttl_secs = ttl.as_secs() as i64 + i64::from(ttl.subsec_nanos() > 0);
        let mut grant = None;
        let result = self.acquire_loop(cfg, attrs, previous, previous_v6, ttl_secs, &mut grant).await;
        if let Some(g) = grant.filter(|g| !g.used) {
            self.inner.revoke_quietly(g.id).await;
        }
        result
    }

    async fn grant(&self, ttl_secs: i64, grant: &mut Option<Grant>) -> Result<(i64, i64)> {
        if let Some(g) = grant {
            return Ok((g.id, g.ttl));
        }
        let resp = self
            .inner
            .call("lease grant", Retry::Once, move |mut c| async move { c.lease_grant(ttl_secs, None).await })
            .await?;
        *grant = Some(Grant { id: resp.id(), ttl: resp.ttl(), used: false });
        Ok((resp.id(), resp.ttl()))
    }

    async fn acquire_loop(
        &self,
        cfg: &NetworkConfig,
        attrs: &LeaseAttrs,
        previous: Option<Ipv4Network>,
        previous_v6: Option<Ipv6Network>,
        ttl_secs: i64,
        grant: &mut Option<Grant>,
    ) -> Result<Lease> {
        let inner = &self.inner;
        let value = attrs.to_json();
        for attempt in 0..RACE_RETRIES {
            if attempt > 0 {
                // Lost a race: let the winner's write settle, spread retries.
                tokio::time::sleep(Duration::from_millis(5 + random_below(25) as u64)).await;
            }
            let (mut leases, _) = inner.list(false).await?;

            // (1) Our own lease (same PublicIP).
            if let Some(pos) = leases.iter().position(|l| l.attrs.public_ip == attrs.public_ip) {
                let own = leases[pos].clone();
                let key = inner.key(own.subnet, own.ipv6_subnet);
                if cfg.is_compatible(own.subnet, own.ipv6_subnet) {
                    let (lease_id, ttl) =
                        if own.is_reservation() { (0, 0) } else { self.grant(ttl_secs, grant).await? };
                    let put = if lease_id == 0 { None } else { Some(PutOptions::new().with_lease(lease_id)) };
                    let txn = Txn::new()
                        .when(vec![Compare::mod_revision(key.clone(), CompareOp::Equal, own.revision)])
                        .and_then(vec![TxnOp::put(key.clone(), value.clone(), put)]);
                    let resp = inner
                        .call("re-take own lease", Retry::Once, move |mut c| {
                            let txn = txn.clone();
                            async move { c.txn(txn).await }
                        })
                        .await?;
                    if !resp.succeeded() {
                        continue;
                    }
                    if let Some(g) = grant.as_mut() {
                        g.used = lease_id != 0;
                    }
                    if own.etcd_lease != 0 && own.etcd_lease != lease_id {
                        inner.revoke_quietly(own.etcd_lease).await;
                    }
                    tracing::info!(subnet = %own.subnet, public_ip = %attrs.public_ip, "re-took existing lease");
                    return Ok(Lease {
                        subnet: own.subnet,
                        ipv6_subnet: own.ipv6_subnet,
                        attrs: attrs.clone(),
                        etcd_lease: lease_id,
                        expires_in: (lease_id != 0).then(|| Duration::from_secs(ttl.max(0) as u64)),
                        revision: resp.header().map(|h| h.revision()).unwrap_or(0),
                    });
                }
                tracing::info!(subnet = %own.subnet, "lease for our PublicIP does not fit the network config: deleting it");
                let txn = Txn::new()
                    .when(vec![Compare::mod_revision(key.clone(), CompareOp::Equal, own.revision)])
                    .and_then(vec![TxnOp::delete(key, None)]);
                let resp = inner
                    .call("delete stale own lease", Retry::Once, move |mut c| {
                        let txn = txn.clone();
                        async move { c.txn(txn).await }
                    })
                    .await?;
                if !resp.succeeded() {
                    continue;
                }
                inner.revoke_quietly(own.etcd_lease).await;
                leases.remove(pos);
            }

            // (2) The previous subnet, (3) a random free one.
            let (subnet, ipv6_subnet) = pick(cfg, &leases, previous, previous_v6)?;
            let (lease_id, ttl) = self.grant(ttl_secs, grant).await?;
            let key = inner.key(subnet, ipv6_subnet);
            let v4_prefix = inner.key(subnet, None);
            let txn = Txn::new()
                .when(vec![Compare::version(v4_prefix, CompareOp::Equal, 0).with_prefix()])
                .and_then(vec![TxnOp::put(key, value.clone(), Some(PutOptions::new().with_lease(lease_id)))]);
            let resp = inner
                .call("create lease", Retry::Once, move |mut c| {
                    let txn = txn.clone();
                    async move { c.txn(txn).await }
                })
                .await?;
            if !resp.succeeded() {
                tracing::debug!(%subnet, attempt, "lost the race for a subnet, retrying");
                continue;
            }
            if let Some(g) = grant.as_mut() {
                g.used = true;
            }
            tracing::info!(%subnet, ?ipv6_subnet, public_ip = %attrs.public_ip, "acquired subnet lease");
            return Ok(Lease {
                subnet,
                ipv6_subnet,
                attrs: attrs.clone(),
                etcd_lease: lease_id,
                expires_in: Some(Duration::from_secs(ttl.max(0) as u64)),
                revision: resp.header().map(|h| h.revision()).unwrap_or(0),
            });
        }
        Err(Error::TooManyRaces(RACE_RETRIES))
    }

    /// Keeps the lease alive: one etcd keep-alive (resets the TTL to the
    /// granted one), then checks the key is still there and still ours.
    /// Call it well within the TTL (e.g. every TTL/3).
    /// [`Error::LeaseLost`] when the etcd lease expired or was revoked, or
    /// the key was deleted or re-attached to another etcd lease; the agent
    /// must then acquire again. For a reservation only the key is checked.
    pub async fn renew(&self, lease: &Lease) -> Result<()> {
        let inner = &self.inner;
        let lost = |reason: String| Err(Error::LeaseLost { subnet: lease.subnet, reason });
        if lease.etcd_lease != 0 {
            let id = lease.etcd_lease;
            // etcd-client's keep_alive() sends the first keep-alive itself and
            // fails with "lease not found" when etcd answers TTL 0.
            let alive = inner
                .call("lease keep-alive", Retry::Idempotent, move |mut c| async move {
                    match c.lease_keep_alive(id).await {
                        Ok(_) => Ok(true),
                        Err(etcd_client::Error::LeaseKeepAliveError(m)) if m == LEASE_NOT_FOUND => Ok(false),
                        Err(e) => Err(e),
                    }
                })
                .await?;
            if !alive {
                return lost(format!("etcd lease {id:x} has expired or was revoked"));
            }
        }
        let key = inner.key(lease.subnet, lease.ipv6_subnet);
        let k = key.clone();
        let resp = inner
            .call("check lease key", Retry::Idempotent, move |mut c| {
                let k = k.clone();
                async move { c.get(k, None).await }
            })
            .await?;
        match resp.kvs().first() {
            None => {
                inner.revoke_quietly(lease.etcd_lease).await;
                lost(format!("key {key} was deleted"))
            }
            Some(kv) if kv.lease() != lease.etcd_lease => {
                inner.revoke_quietly(lease.etcd_lease).await;
                lost(format!("key {key} now belongs to etcd lease {:x} (re-acquired elsewhere)", kv.lease()))
            }
            Some(_) => Ok(()),
        }
    }

    /// Every lease (with its time left) and the revision they were read at;
    /// pass the revision to [`Self::watch`].
    pub async fn leases(&self) -> Result<(Vec<Lease>, i64)> {
        self.inner.list(true).await
    }

    /// Events for `<prefix>/subnets/` after `revision` (see [`Watcher`]).
    /// Must be called inside a tokio runtime; dropping the watcher stops it.
    pub fn watch(&self, revision: i64) -> Watcher {
        Watcher::spawn(self.inner.clone(), revision)
    }

    /// Admin "remove host": deletes the lease key(s) of `subnet` (dual-stack
    /// keys included) and revokes their etcd lease. Ok(false) if absent.
    pub async fn remove(&self, subnet: Ipv4Network) -> Result<bool> {
        let inner = &self.inner;
        let prefix = inner.key(subnet, None);
        let resp = inner
            .call("find lease", Retry::Idempotent, move |mut c| {
                let prefix = prefix.clone();
                async move { c.get(prefix, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let mut removed = false;
        for kv in resp.kvs() {
            let key = String::from_utf8_lossy(kv.key()).into_owned();
            if parse_subnet_key(&key).map(|(sn, _)| sn) != Some(subnet) {
                continue;
            }
            let k = key.clone();
            let del = inner
                .call("delete lease", Retry::Idempotent, move |mut c| {
                    let k = k.clone();
                    async move { c.delete(k, None).await }
                })
                .await?;
            removed |= del.deleted() > 0;
            inner.revoke_quietly(kv.lease()).await;
            tracing::info!(%key, "removed subnet lease");
        }
        Ok(removed)
    }
}

/// Steps (2) and (3) of the acquire order.
fn pick(
    cfg: &NetworkConfig,
    leases: &[Lease],
    previous: Option<Ipv4Network>,
    previous_v6: Option<Ipv6Network>,
) -> Result<(Ipv4Network, Option<Ipv6Network>)> {
    let free4 = |sn: Ipv4Network| !leases.iter().any(|l| overlaps4(l.subnet, sn));
    let free6 = |sn: Ipv6Network| !leases.iter().filter_map(|l| l.ipv6_subnet).any(|l| overlaps6(l, sn));

    let v4 = match previous.filter(|p| cfg.is_compatible_v4(*p)) {
        Some(p) if free4(p) => {
            tracing::info!(subnet = %p, "reusing the previous subnet");
            p
        }
        other => {
            if let Some(p) = previous {
                tracing::info!(subnet = %p, taken = other.is_some(), "previous subnet is taken or does not fit the config");
            }
            let size = 1u32 << (32 - cfg.subnet_len);
            let (min, max) = (u32::from(cfg.subnet_min), u32::from(cfg.subnet_max));
            let mut free = Vec::new();
            let mut ip = min;
            while ip <= max && free.len() < PICK_AMONG {
                let sn = Ipv4Network::new(Ipv4Addr::from(ip), cfg.subnet_len).expect("valid prefix");
                if free4(sn) {
                    free.push(sn);
                }
                match ip.checked_add(size) {
                    Some(n) => ip = n,
                    None => break,
                }
            }
            if free.is_empty() {
                return Err(Error::PoolExhausted {
                    network: cfg.network,
                    subnet_len: cfg.subnet_len,
                    min: cfg.subnet_min,
                    max: cfg.subnet_max,
                    total: cfg.pool_size(),
                });
            }
            free[random_below(free.len())]
        }
    };
    if !cfg.enable_ipv6 {
        return Ok((v4, None));
    }
    if let Some(p6) = previous_v6.filter(|p| cfg.is_compatible_v6(*p) && free6(*p)) {
        return Ok((v4, Some(p6)));
    }
    let (Some(net6), Some(min6), Some(max6)) = (cfg.ipv6_network, cfg.ipv6_subnet_min, cfg.ipv6_subnet_max) else {
        return Err(Error::InvalidConfig("EnableIPv6 is true but IPv6Network is missing".into()));
    };
    let size6 = 1u128 << (128 - cfg.ipv6_subnet_len);
    let mut free = Vec::new();
    let mut ip = u128::from(min6);
    while ip <= u128::from(max6) && free.len() < PICK_AMONG {
        let sn = Ipv6Network::new(ip.into(), cfg.ipv6_subnet_len).expect("valid prefix");
        if free6(sn) {
            free.push(sn);
        }
        match ip.checked_add(size6) {
            Some(n) => ip = n,
            None => break,
        }
    }
    if free.is_empty() {
        return Err(Error::Ipv6PoolExhausted { network: net6, subnet_len: cfg.ipv6_subnet_len, min: min6, max: max6 });
    }
    Ok((v4, Some(free[random_below(free.len())])))
}

fn overlaps4(a: Ipv4Network, b: Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

fn overlaps6(a: Ipv6Network, b: Ipv6Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(s: &str) -> NetworkConfig {
        NetworkConfig::parse(s.as_bytes()).unwrap()
    }

    fn lease(sn: &str) -> Lease {
        Lease {
            subnet: sn.parse().unwrap(),
            ipv6_subnet: None,
            attrs: LeaseAttrs::new(Ipv4Addr::new(1, 1, 1, 1), "vxlan", serde_json::Value::Null),
            etcd_lease: 1,
            expires_in: None,
            revision: 1,
        }
    }

    #[test]
    fn pick_previous_then_random_then_exhausted() {
        let c = cfg(r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.1.0","SubnetMax":"10.0.3.0"}"#);
        let prev: Ipv4Network = "10.0.2.0/24".parse().unwrap();
        assert_eq!(pick(&c, &[], Some(prev), None).unwrap(), (prev, None));
        // taken (also by an overlapping reservation), or out of range: random pick
        for taken in [vec![lease("10.0.2.0/24")], vec![lease("10.0.0.0/22")]] {
            match pick(&c, &taken, Some(prev), None) {
                Ok((sn, _)) => assert!(taken.iter().all(|l| !overlaps4(l.subnet, sn)), "{sn}"),
                Err(e) => assert!(matches!(e, Error::PoolExhausted { total: 3, .. }), "{e}"),
            }
        }
        let (sn, _) =
            pick(&c, &[lease("10.0.1.0/24"), lease("10.0.3.0/24")], Some("10.0.9.0/24".parse().unwrap()), None)
                .unwrap();
        assert_eq!(sn, prev);
        let all = [lease("10.0.1.0/24"), lease("10.0.2.0/24"), lease("10.0.3.0/24")];
        let e = pick(&c, &all, None, None).unwrap_err();
        assert_eq!(
            e.to_string(),
            "subnet pool exhausted: all 3 /24 subnets of Network 10.0.0.0/16 between SubnetMin 10.0.1.0 and SubnetMax \
             10.0.3.0 are leased; remove stale hosts or widen the range"
        );
    }

    #[test]
    fn pick_dual_stack() {
        let c = cfg(r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/62"}"#);
        let (sn, sn6) = pick(&c, &[], None, None).unwrap();
        assert!(c.is_compatible(sn, sn6), "{sn} {sn6:?}");
        let prev6: Ipv6Network = "fd00:0:0:2::/64".parse().unwrap();
        assert_eq!(pick(&c, &[], Some("10.0.7.0/24".parse().unwrap()), Some(prev6)).unwrap().1, Some(prev6));
    }

    #[test]
    fn random_is_spread() {
        let mut seen = [false; 10];
        for _ in 0..200 {
            seen[random_below(10)] = true;
        }
        assert!(seen.iter().all(|s| *s));
    }
}
