//! The CNI verbs in cluster mode (`ipam.cluster.mode: "blocks"`).
//!
//! Every verb holds the network's local lock (the disk store's `flock`) for
//! its whole run, etcd work included, so one host's calls never race each
//! other; only other hosts (and admin commands) race in etcd, and every
//! etcd write is a transaction guarded by absence or `mod_revision`.
//!
//! The etcd part of a call runs on a tokio runtime made for that call and
//! is bounded by [`PLUGIN_DEADLINE`] (connect included); unreachable etcd is
//! code 11. An ADD that fails leaves no local lease, and a block is only
//! ever created whole (one transaction).

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use cni_core::{Attachment, CniResult, Code, Context, Error, IpConfig, Result as CniRes};
use ipnetwork::IpNetwork;
use serde_json::Value;

use super::cache::{self, BlockCache};
use super::client::block_on;
use super::{
    block_key, block_range, handle, Allocation, Block, BlockClient, BlockError, BlockValue, ClusterConfig, Result,
    PLUGIN_DEADLINE,
};
use ipam::alloc;
use ipam::config::IpamConfig;
use ipam::range::{to_u128, Range, RangeSet};
use ipam::store::{Lease, Locked, Owner, Store};
use ipam::CODE_EXHAUSTED;

/// Budget of the etcd part of a GC (it may touch every block).
pub const GC_DEADLINE: Duration = Duration::from_secs(10);
/// Upper bound on create attempts when other hosts keep winning blocks.
const CLAIM_TRIES: u32 = 64;
/// The batch publish at claim time must not eat the claim's deadline.
const PUBLISH_BUDGET: Duration = Duration::from_millis(500);

/// The `ipam.cluster` section, when the config has one.
pub fn cluster_config(ctx: &Context) -> CniRes<Option<ClusterConfig>> {
    let ipam = ipam::config::ipam_section(ctx)?;
    match ipam.get("cluster") {
        None | Some(Value::Null) => Ok(None),
        Some(v) => Ok(Some(ClusterConfig::parse(&ctx.conf.name, v)?)),
    }
}

fn common_config(ctx: &Context) -> CniRes<IpamConfig> {
    IpamConfig::without_ranges(ctx, "together with ipam.cluster (the ranges are the host's blocks)")
}

/// The requested address of each family (`IP=`, `ips`, `runtimeConfig.ips`):
/// (IPv4, IPv6). Only without strictAffinity (a strict host allocates only
/// in its own exclusive blocks, so it could not follow a container); at
/// most one per family; inside a pool, and an allocatable address of its
/// block (not the network, gateway or broadcast address). Code 7 otherwise.
fn requested_per_family(cc: &ClusterConfig, requested: &[IpAddr]) -> CniRes<(Option<IpAddr>, Option<IpAddr>)> {
    if requested.is_empty() {
        return Ok((None, None));
    }
    if cc.strict_affinity {
        return Err(Error::config(
            "requesting specific IP addresses needs ipam.cluster.strictAffinity false (a strict host allocates only \
             in its own blocks)",
        ));
    }
    let (mut v4, mut v6) = (None, None);
    for &ip in requested {
        let Some(view) = cc.pool_of(ip) else {
            return Err(Error::config(format!("requested IP address {ip} is not in any pool of ipam.cluster")));
        };
        let block = block_of(&view, ip);
        if !super::block_addresses(block).any(|a| a == ip) {
            return Err(Error::config(format!(
                "requested IP address {ip} is the network, gateway or broadcast address of block {block}"
            )));
        }
        let slot = if ip.is_ipv4() { &mut v4 } else { &mut v6 };
        if let Some(other) = slot.replace(ip) {
            return Err(Error::config(format!(
                "requested IP addresses {other} and {ip} are of one family; one address per family"
            )));
        }
    }
    Ok((v4, v6))
}

/// The block of `view`'s pool that holds `ip`.
fn block_of(view: &ClusterConfig, ip: IpAddr) -> IpNetwork {
    let n = IpNetwork::new(ip, view.block_size).expect("block size checked in the config");
    IpNetwork::new(n.network(), view.block_size).expect("block size checked in the config")
}

/// The result entry of `ip`: inside one of our blocks (of any pool) it
/// carries the block's prefix and gateway (block network + 1); a borrowed
/// address is a host route (/32, /128) without gateway, to be routed by the
/// main plugin.
fn ip_config(ip: IpAddr, caches: &[BlockCache]) -> IpConfig {
    match caches.iter().find_map(|c| c.contains_ip(ip)) {
        Some(block) => IpConfig {
            address: IpNetwork::new(ip, block.prefix()).expect("block prefix"),
            gateway: Some(block_range(block).gateway),
            interface: None,
        },
        None => IpConfig {
            address: IpNetwork::new(ip, if ip.is_ipv4() { 32 } else { 128 }).expect("host prefix"),
            gateway: None,
            interface: None,
        },
    }
}

fn owner_handle(owner: &Owner) -> String {
    match owner {
        Owner::Attachment { container_id, ifname } => handle(container_id, ifname),
        Owner::ContainerOnly(id) => id.clone(),
        Owner::Unknown(_) | Owner::Unreadable(_) => "?".to_string(),
    }
}

/// The block caches of `views`, in the same order.
fn read_caches(dir: &Path, views: &[ClusterConfig]) -> Result<Vec<BlockCache>> {
    views.iter().map(|v| BlockCache::read(dir, v)).collect()
}

/// ADD in cluster mode: one address per family that has a pool (IPv4
/// first, then IPv6). If a later family fails, the addresses this ADD took
/// for the earlier ones are released again (etcd record and local lease),
/// so a failed ADD leaves nothing behind.
pub fn add(ctx: &Context, cc: &ClusterConfig) -> CniRes<CniResult> {
    let mut conf = common_config(ctx)?;
    let dns = conf.dns()?;
    let store = ipam::disk_store(&conf.data_dir, &conf.network)?;
    let locked = store.lock()?;
    let (cid, ifname) = (ctx.container_id.as_str(), ctx.ifname.as_str());
    let held_all: Vec<IpAddr> = locked.leased_to(cid, ifname)?;
    if cc.strict_affinity && !held_all.iter().any(|ip| cc.in_pools(*ip)) {
        if let Some(ips) = strict_fast_path(cc, &mut conf, &*locked, store.dir(), cid, ifname)? {
            return Ok(CniResult { interfaces: Vec::new(), ips, routes: conf.routes.clone(), dns });
        }
    }
    let (want4, want6) = requested_per_family(cc, &conf.requested)?;
    let mut ips = Vec::new();
    // Addresses this ADD took, with their pool: undone if a later family fails.
    let mut fresh: Vec<(ClusterConfig, IpAddr)> = Vec::new();
    for v4 in [true, false] {
        let views = cc.family(v4);
        let want = if v4 { want4 } else { want6 };
        if views.is_empty() {
            continue;
        }
        let caches = read_caches(store.dir(), &views)?;
        if let Some(ip) = held_all.iter().copied().find(|ip| views.iter().any(|v| v.pool.contains(*ip))) {
            if let Some(w) = want.filter(|w| *w != ip) {
                undo_fresh(&*locked, store.dir(), &fresh, cid, ifname);
                return Err(Error::config(format!("requested IP address {w}, but {cid}/{ifname} already holds {ip}")));
            }
            tracing::info!(%ip, "attachment already holds an address; reusing it");
            ips.push(ip_config(ip, &caches));
            continue;
        }
        let got = if let Some(w) = want {
            add_requested(&views, &*locked, store.dir(), caches, cid, ifname, w)
        } else if cc.strict_affinity {
            // The allocator keeps its round-robin position in slot 0; the
            // fast path keeps one per family (slot = the family's place).
            let slot = usize::from(!v4 && !cc.family(true).is_empty());
            let saved = if slot == 0 { None } else { locked.last_reserved(0).ok().flatten() };
            let got = add_strict(&views, &mut conf, &*locked, store.dir(), caches, cid, ifname);
            if let (Ok((_, ipc)), 1) = (&got, slot) {
                let moved = locked.set_last_reserved(1, ipc.address.ip());
                if let Err(e) = saved.map_or(Ok(()), |ip| locked.set_last_reserved(0, ip)).and(moved) {
                    tracing::warn!("cannot record last reserved IP: {e}");
                }
            }
            got
        } else {
            add_shared(&views, &*locked, store.dir(), caches, cid, ifname)
        };
        match got {
            Ok((view, ipc)) => {
                fresh.push((view, ipc.address.ip()));
                ips.push(ipc);
            }
            Err(e) => {
                undo_fresh(&*locked, store.dir(), &fresh, cid, ifname);
                if held_all.is_empty() {
                    if let Err(re) = locked.forget(cid, ifname) {
                        tracing::warn!("rollback: {re}");
                    }
                }
                return Err(e);
            }
        }
    }
    Ok(CniResult { interfaces: Vec::new(), ips, routes: conf.routes.clone(), dns })
}

/// strictAffinity, the common case: every family has a cached block with
/// room. One local allocation over one range set per family (the open
/// blocks of the family's first pool that has any), as host-local does for
/// dual stack: all or nothing, and each family keeps its own round-robin
/// position. None when a family has no open block or its blocks turn out
/// full; the per-family path then takes over.
fn strict_fast_path(
    cc: &ClusterConfig,
    conf: &mut IpamConfig,
    locked: &dyn Locked,
    dir: &Path,
    cid: &str,
    ifname: &str,
) -> CniRes<Option<Vec<IpConfig>>> {
    let mut sets = Vec::new();
    for v4 in [true, false] {
        let views = cc.family(v4);
        if views.is_empty() {
            continue;
        }
        let mut open = Vec::new();
        for v in &views {
            let cache = BlockCache::read(dir, v)?;
            let full = cache::read_full(dir, v);
            open = cache.blocks.iter().filter(|b| !full.contains(b)).map(|b| block_range(*b)).collect();
            if !open.is_empty() {
                break;
            }
        }
        if open.is_empty() {
            return Ok(None);
        }
        sets.push(RangeSet::new(open).map_err(Error::config)?);
    }
    conf.range_sets = sets;
    match alloc::allocate_locked(locked, conf, cid, ifname) {
        Ok(ips) => Ok(Some(ips)),
        Err(e) if e.code == Code::Other(CODE_EXHAUSTED) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Releases the addresses an ADD took before a later family failed: the
/// etcd record first (non-strict; a strict host's record is published in
/// batch), then the local lease and the attachment's marker.
fn undo_fresh(locked: &dyn Locked, dir: &Path, fresh: &[(ClusterConfig, IpAddr)], cid: &str, ifname: &str) {
    if fresh.is_empty() {
        return;
    }
    let h = handle(cid, ifname);
    for (view, ip) in fresh {
        if !view.strict_affinity {
            if let Err(e) = block_on(&view.etcd.endpoints, PLUGIN_DEADLINE, release_held(view, &h, &[*ip])) {
                tracing::error!(%ip, "rollback of the etcd allocation failed (GC will free it): {e}");
            }
        }
        if let Err(e) = cache::clear_full(dir, view) {
            tracing::warn!("rollback: {e}");
        }
        match locked.release_ip(*ip) {
            Ok(_) => tracing::info!(%ip, "released after a failed ADD"),
            Err(e) => tracing::error!(%ip, "rollback of the local lease failed: {e}"),
        }
    }
}

/// The code-110 error of a family none of whose pools has an address: one
/// pool's own error, or every pool's reason in config order.
fn family_exhausted(cc: &ClusterConfig, errors: Vec<BlockError>) -> BlockError {
    if errors.len() == 1 {
        return errors.into_iter().next().expect("one error");
    }
    let detail = errors
        .iter()
        .map(|e| match e {
            BlockError::Exhausted { pool, detail, .. } => format!("pool {pool}: {detail}"),
            e => e.to_string(),
        })
        .collect::<Vec<_>>()
        .join("; ");
    let pools = errors
        .iter()
        .filter_map(|e| match e {
            BlockError::Exhausted { pool, .. } => Some(pool.to_string()),
            _ => None,
        })
        .collect::<Vec<_>>()
        .join(", ");
    BlockError::PoolsExhausted { pools, host: cc.host.clone(), detail }
}

/// strictAffinity: the local store with the host's blocks as ranges; etcd
/// only when they are full. Among the family's pools (`views`, config
/// order): first a cached block with room, pools in order, without etcd;
/// then a new block, claimed in the first pool that has one.
fn add_strict(
    views: &[ClusterConfig],
    conf: &mut IpamConfig,
    locked: &dyn Locked,
    dir: &Path,
    mut caches: Vec<BlockCache>,
    cid: &str,
    ifname: &str,
) -> CniRes<(ClusterConfig, IpConfig)> {
    let mut full: Vec<Vec<IpNetwork>> = views.iter().map(|v| cache::read_full(dir, v)).collect();
    for _ in 0..3 {
        for (i, cache) in caches.iter().enumerate() {
            let open: Vec<Range> =
                cache.blocks.iter().filter(|b| !full[i].contains(b)).map(|b| block_range(*b)).collect();
            if open.is_empty() {
                continue;
            }
            conf.range_sets = vec![RangeSet::new(open).map_err(Error::config)?];
            match alloc::allocate_locked(locked, conf, cid, ifname) {
                Err(e) if e.code == Code::Other(CODE_EXHAUSTED) => {}
                Err(e) => return Err(e),
                Ok(mut got) => return Ok((views[i].clone(), got.remove(0))),
            }
        }
        // Slow path: every cached block is full (or there is none yet).
        let mut exhausted = Vec::new();
        let mut claimed = None;
        for (i, v) in views.iter().enumerate() {
            let known = caches[i].blocks.clone();
            match block_on(&v.etcd.endpoints, PLUGIN_DEADLINE, claim_strict(v, &known, &full[i], dir)) {
                Ok(got) => {
                    claimed = Some((i, got));
                    break;
                }
                Err(e @ BlockError::Exhausted { .. }) => exhausted.push(e),
                Err(e) => return Err(e.into()),
            }
        }
        let Some((i, got)) = claimed else {
            return Err(family_exhausted(&views[0], exhausted).into());
        };
        // Every pool tried so far is full locally: remember it.
        for j in 0..i {
            cache::write_full(dir, &views[j], &caches[j].blocks);
            full[j] = caches[j].blocks.clone();
        }
        let known = caches[i].blocks.clone();
        let cache = &mut caches[i];
        cache.blocks.extend(got);
        cache.blocks.sort_by_key(|b| to_u128(b.network()));
        cache.blocks.dedup();
        cache.write(dir, &views[i])?;
        cache::write_full(dir, &views[i], &known);
        full[i] = known;
    }
    Err(BlockError::Exhausted {
        pool: views[0].pool,
        host: views[0].host.clone(),
        detail: "new blocks were claimed but are already full".into(),
    }
    .into())
}

/// The local leases inside `cidr`, read by name (a block's worth of
/// lookups instead of a scan of the whole store).
fn block_leases(dir: &Path, cidr: IpNetwork) -> Vec<Lease> {
    super::block_addresses(cidr)
        .filter_map(|ip| match std::fs::read_to_string(dir.join(ip.to_string())) {
            Ok(s) => Some(Lease { ip, owner: Owner::parse(&s) }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => Some(Lease { ip, owner: Owner::Unreadable(e.to_string()) }),
        })
        .collect()
}

/// Claims a block for a host whose blocks are all full, then publishes
/// our allocations into those of our blocks whose record is short of a
/// full block (all of them are full locally at this point, so a complete
/// record is current but for handle churn, which GC publishes).
///
/// With no block cached (a new host, or a lost cache) it lists every block
/// with its value and adopts those etcd says are ours instead of claiming.
/// Otherwise it lists only the taken keys (the values hold every
/// allocation of the pool) and reads just the blocks that filled since the
/// last claim (`known` minus `full`); a block that a timed-out claim left
/// in etcd is GC's to adopt or give back.
async fn claim_strict(
    cc: &ClusterConfig,
    known: &[IpNetwork],
    full: &[IpNetwork],
    dir: &Path,
) -> Result<Vec<IpNetwork>> {
    let client = BlockClient::connect(&cc.etcd, &cc.network).await?;
    let (taken, mine) = if known.is_empty() {
        let blocks = client.list().await?;
        let mine: Vec<Block> =
            blocks.iter().filter(|b| b.value.host == cc.host && cc.is_block(b.cidr)).cloned().collect();
        (blocks.into_iter().map(|b| b.cidr).collect(), mine)
    } else {
        // Concurrent requests on the one connection: the keys, and the blocks that filled.
        let filled = async {
            let mut mine = Vec::new();
            for cidr in known.iter().filter(|c| !full.contains(c)) {
                if let Some(b) = client.get(*cidr).await? {
                    if b.value.host == cc.host {
                        mine.push(b);
                    }
                }
            }
            Ok::<_, BlockError>(mine)
        };
        let (taken, mine) = tokio::join!(client.list_cidrs(), filled);
        (taken?, mine?)
    };
    let adopted: Vec<IpNetwork> = mine.iter().map(|b| b.cidr).filter(|c| !known.contains(c)).collect();
    let owned = known.len().max(mine.len());
    let stale: Vec<Block> = mine
        .into_iter()
        .filter(|b| {
            let recorded = b.value.allocations.values().filter(|a| a.host == cc.host).count() as u128;
            recorded < block_range(b.cidr).capacity()
        })
        .collect();
    let leases: Vec<Lease> = stale.iter().flat_map(|b| block_leases(dir, b.cidr)).collect();
    // The claim and the publish touch different keys: both at once.
    let claiming = async {
        if !adopted.is_empty() {
            tracing::info!(?adopted, "adopting blocks of this host found in etcd");
            return Ok(adopted);
        }
        let base = BlockValue { host: cc.host.clone(), exclusive: true, allocations: BTreeMap::new() };
        match claim_new(&client, cc, &taken, |_| Some(base.clone())).await? {
            Some(b) => Ok(vec![b.cidr]),
            None => Err(BlockError::Exhausted {
                pool: cc.pool,
                host: cc.host.clone(),
                detail: format!(
                    "every /{} block is claimed, this host's {owned} block(s) are full, and strictAffinity is true \
                     (no borrowing from other hosts)",
                    cc.block_size
                ),
            }),
        }
    };
    let publishing = async {
        match tokio::time::timeout(PUBLISH_BUDGET, publish(&client, cc, &stale, &leases)).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("publishing allocations to etcd failed (the next GC retries): {e}"),
            Err(_) => tracing::warn!("publishing allocations to etcd timed out (the next GC retries)"),
        }
    };
    let (new, ()) = tokio::join!(claiming, publishing);
    new
}

/// The block records of this host's local leases inside `cidr`.
fn local_records(cc: &ClusterConfig, leases: &[Lease], cidr: IpNetwork) -> BTreeMap<IpAddr, Allocation> {
    leases
        .iter()
        .filter(|l| cidr.contains(l.ip))
        .map(|l| (l.ip, Allocation { handle: owner_handle(&l.owner), host: cc.host.clone() }))
        .collect()
}

/// The address `b` records for this host's attachment `h` (an ADD retried
/// after its answer was lost).
fn recorded_for(cc: &ClusterConfig, b: &Block, h: &str) -> Option<IpAddr> {
    let (ip, _) = b.value.allocations.iter().find(|(_, a)| a.host == cc.host && a.handle == h)?;
    tracing::info!(%ip, block = %b.cidr, "etcd already records an address for this attachment; reusing it");
    Some(*ip)
}

/// strictAffinity: writes the local leases of each of our blocks as its
/// `allocations` (other hosts' records, if any, are kept).
async fn publish(client: &BlockClient, cc: &ClusterConfig, mine: &[Block], leases: &[Lease]) -> Result<()> {
    for b in mine {
        let own = local_records(cc, leases, b.cidr);
        client
            .modify(b.clone(), |cur| {
                if cur.value.host != cc.host {
                    return None; // removed (remove-host) since we listed it
                }
                let mut v = cur.value.clone();
                v.allocations.retain(|_, a| a.host != cc.host);
                v.allocations.extend(own.clone());
                v.exclusive = true;
                (v != cur.value).then_some(Some(v))
            })
            .await?;
    }
    Ok(())
}

/// Stable per-host starting point, so hosts claiming at once spread over
/// the pool instead of all racing for its first free block.
fn start_index(host: &str, n: u128) -> u128 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in host.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    u128::from(h) % n
}

/// Creates the first unclaimed block (from this host's starting point) with
/// the value `make` gives for it (None: skip that block). Lost races move on
/// to the next one. None when no block is unclaimed.
async fn claim_new(
    client: &BlockClient,
    cc: &ClusterConfig,
    claimed: &[IpNetwork],
    make: impl Fn(IpNetwork) -> Option<BlockValue>,
) -> Result<Option<Block>> {
    let taken: HashSet<u128> = claimed.iter().map(|c| to_u128(c.network())).collect();
    // Records of another size (a changed blockSize) must not be overlapped.
    let odd: Vec<(u128, u128)> = claimed
        .iter()
        .filter(|c| c.prefix() != cc.block_size && c.is_ipv4() == cc.pool.is_ipv4())
        .map(|c| (to_u128(c.network()), to_u128(c.broadcast())))
        .collect();
    let overlaps_odd = |c: IpNetwork| {
        let (lo, hi) = (to_u128(c.network()), to_u128(c.broadcast()));
        odd.iter().any(|&(a, b)| lo <= b && a <= hi)
    };
    let n = cc.block_count();
    let start = start_index(&cc.host, n);
    let mut tries = 0;
    let mut i: u128 = 0;
    while i < n {
        let cidr = cc.block((start + i) % n);
        i += 1;
        if taken.contains(&to_u128(cidr.network())) || overlaps_odd(cidr) {
            continue;
        }
        let Some(value) = make(cidr) else { continue };
        if tries == CLAIM_TRIES {
            return Err(BlockError::TooManyRaces { block: block_key(cidr), tries });
        }
        tries += 1;
        if let Some(b) = client.create(cidr, &value).await? {
            tracing::info!(block = %cidr, host = %cc.host, "claimed block");
            return Ok(Some(b));
        }
        tracing::debug!(block = %cidr, "another host claimed the block first");
    }
    Ok(None)
}

/// Non-strict ADD: the allocation is recorded in etcd first (CAS), then
/// mirrored in the local store; a local failure undoes the etcd record.
fn add_shared(
    views: &[ClusterConfig],
    locked: &dyn Locked,
    dir: &Path,
    mut caches: Vec<BlockCache>,
    cid: &str,
    ifname: &str,
) -> CniRes<(ClusterConfig, IpConfig)> {
    let h = handle(cid, ifname);
    // A stale local lease must not be handed out twice.
    let taken = |ip: IpAddr| locked.is_reserved(ip).unwrap_or(true);
    let cached: Vec<Vec<IpNetwork>> = caches.iter().map(|c| c.blocks.clone()).collect();
    let endpoints = &views[0].etcd.endpoints;
    let (i, ip, own) = block_on(endpoints, PLUGIN_DEADLINE, allocate_family(views, &h, &taken, &cached, dir))?;
    let view = &views[i];
    let undo = |e: Error| -> Error {
        if let Err(re) = block_on(endpoints, PLUGIN_DEADLINE, release_held(view, &h, &[ip])) {
            tracing::error!(%ip, "rollback of the etcd allocation failed (GC will free it): {re}");
        }
        e
    };
    if own != caches[i].blocks {
        caches[i].blocks = own;
        if let Err(e) = caches[i].write(dir, view) {
            return Err(undo(e.into()));
        }
    }
    match locked.reserve(cid, ifname, ip) {
        Ok(true) => Ok((view.clone(), ip_config(ip, &caches))),
        Ok(false) => Err(undo(Error::new(Code::Io, format!("{ip} is recorded free in etcd but leased locally")))),
        Err(e) => Err(undo(e.into())),
    }
}

/// Non-strict ADD of a requested address (`ips`): recorded in etcd in the
/// block that holds it, whoever that block is affine to, then mirrored in
/// the local store. This is how an address follows its container to
/// another host: the new host borrows it from the old host's block (a /32
/// or /128 in the result, which the routing agent advertises). A block
/// nobody has claimed yet is claimed for this host with the record in it.
/// Refused (code 7) when the address is allocated to another attachment or
/// lies in another host's exclusive (strictAffinity) block.
#[allow(clippy::too_many_arguments)]
fn add_requested(
    views: &[ClusterConfig],
    locked: &dyn Locked,
    dir: &Path,
    mut caches: Vec<BlockCache>,
    cid: &str,
    ifname: &str,
    ip: IpAddr,
) -> CniRes<(ClusterConfig, IpConfig)> {
    let i = views.iter().position(|v| v.pool.contains(ip)).expect("checked in requested_per_family");
    let view = &views[i];
    let h = handle(cid, ifname);
    if locked.is_reserved(ip)? {
        return Err(Error::config(format!("requested IP address {ip} is not available: already leased on this host")));
    }
    let endpoints = &view.etcd.endpoints;
    let claimed = block_on(endpoints, PLUGIN_DEADLINE, take_requested(view, &h, ip))?;
    let undo = |e: Error| -> Error {
        if let Err(re) = block_on(endpoints, PLUGIN_DEADLINE, release_held(view, &h, &[ip])) {
            tracing::error!(%ip, "rollback of the etcd allocation failed (GC will free it): {re}");
        }
        e
    };
    if let Some(cidr) = claimed {
        let cache = &mut caches[i];
        cache.blocks.push(cidr);
        cache.blocks.sort_by_key(|b| to_u128(b.network()));
        cache.blocks.dedup();
        if let Err(e) = cache.write(dir, view) {
            return Err(undo(e.into()));
        }
    }
    match locked.reserve(cid, ifname, ip) {
        Ok(true) => Ok((view.clone(), ip_config(ip, &caches))),
        Ok(false) => Err(undo(Error::new(Code::Io, format!("{ip} is recorded free in etcd but leased locally")))),
        Err(e) => Err(undo(e.into())),
    }
}

/// The etcd side of [`add_requested`]: records `ip` for handle `h` of this
/// host in its block (CAS), creating the block for this host if nobody has
/// it. Returns the block's CIDR when this call claimed it.
async fn take_requested(cc: &ClusterConfig, h: &str, ip: IpAddr) -> Result<Option<IpNetwork>> {
    let client = BlockClient::connect(&cc.etcd, &cc.network).await?;
    let cidr = block_of(cc, ip);
    let rec = Allocation { handle: h.to_string(), host: cc.host.clone() };
    for _ in 0..CLAIM_TRIES {
        let Some(b) = client.get(cidr).await? else {
            let mut v = BlockValue { host: cc.host.clone(), exclusive: false, allocations: BTreeMap::new() };
            v.allocations.insert(ip, rec.clone());
            if client.create(cidr, &v).await?.is_some() {
                tracing::info!(block = %cidr, %ip, "claimed the block of a requested address");
                return Ok(Some(cidr));
            }
            continue; // someone claimed it in between: take the address from their block
        };
        let mut refused = None;
        let written = client
            .modify(b, |cur| {
                refused = None;
                match cur.value.allocations.get(&ip) {
                    Some(a) if *a == rec => return None, // a retried ADD
                    Some(a) => {
                        refused = Some(format!("it is allocated to {} on host {}", a.handle, a.host));
                        return None;
                    }
                    None => {}
                }
                if cur.value.exclusive && cur.value.host != cc.host {
                    refused =
                        Some(format!("block {} is exclusive to host {} (strictAffinity)", cur.cidr, cur.value.host));
                    return None;
                }
                let mut v = cur.value.clone();
                v.allocations.insert(ip, rec.clone());
                Some(Some(v))
            })
            .await?;
        if let Some(why) = refused {
            return Err(BlockError::Requested(format!("requested IP address {ip} is not available: {why}")));
        }
        match written {
            Some(b) => {
                if b.value.host != cc.host {
                    tracing::info!(%ip, block = %b.cidr, owner = %b.value.host, "borrowed the requested address");
                }
                return Ok(None);
            }
            None => continue, // the block was deleted in between: claim it
        }
    }
    Err(BlockError::TooManyRaces { block: block_key(cidr), tries: CLAIM_TRIES })
}

/// The etcd side of a non-strict ADD over the pools of one family
/// (`views`, config order). Returns the pool's index, the address and that
/// pool's blocks of this host afterwards.
///
/// 1. The cached blocks of every pool, in pool order, one key read each
///    (a record of this attachment found there is returned: a retried ADD).
/// 2. Then each pool in turn as [`allocate_shared`] does it (a new block,
///    a lost claim, adoption, borrowing); the next pool only when this one
///    has no address for this host at all (code 110).
async fn allocate_family(
    views: &[ClusterConfig],
    h: &str,
    taken: &dyn Fn(IpAddr) -> bool,
    cached: &[Vec<IpNetwork>],
    dir: &Path,
) -> Result<(usize, IpAddr, Vec<IpNetwork>)> {
    let client = BlockClient::connect(&views[0].etcd, &views[0].network).await?;
    if views.len() > 1 {
        for (i, cc) in views.iter().enumerate() {
            let rec = Allocation { handle: h.to_string(), host: cc.host.clone() };
            let is_mine = |v: &BlockValue| v.host == cc.host;
            for cidr in cached[i].iter().rev() {
                let Some(b) = client.get(*cidr).await? else { continue };
                if !is_mine(&b.value) {
                    continue;
                }
                if let Some(ip) = recorded_for(cc, &b, h) {
                    return Ok((i, ip, cached[i].clone()));
                }
                if let Some(ip) = try_take(&client, &b, &rec, taken, &is_mine).await? {
                    return Ok((i, ip, cached[i].clone()));
                }
            }
        }
    }
    let mut exhausted = Vec::new();
    for (i, cc) in views.iter().enumerate() {
        match allocate_shared(&client, cc, h, taken, &cached[i], dir).await {
            Ok((ip, own)) => return Ok((i, ip, own)),
            Err(e @ BlockError::Exhausted { .. }) => exhausted.push(e),
            Err(e) => return Err(e),
        }
    }
    Err(family_exhausted(&views[0], exhausted))
}

/// Takes one free address of `block` for `rec` with a CAS on the block,
/// re-reading it after a lost race. `may_use` re-checks the block's owner
/// and mode on every attempt.
async fn try_take(
    client: &BlockClient,
    block: &Block,
    rec: &Allocation,
    taken: &dyn Fn(IpAddr) -> bool,
    may_use: &dyn Fn(&BlockValue) -> bool,
) -> Result<Option<IpAddr>> {
    let mut picked = None;
    client
        .modify(block.clone(), |cur| {
            picked = None;
            if !may_use(&cur.value) {
                return None;
            }
            let ip = cur.first_free(taken)?;
            picked = Some(ip);
            let mut v = cur.value.clone();
            v.allocations.insert(ip, rec.clone());
            Some(Some(v))
        })
        .await?;
    Ok(picked)
}

/// The etcd side of a non-strict ADD. Returns the address and the host's
/// blocks afterwards.
///
/// With cached blocks, the pool is never listed with its values:
/// 1. the host's cached blocks are read one key each, newest first, and
///    the address taken by CAS in the first with room (a record of this
///    attachment found there is returned: a retried ADD);
/// 2. the block named by [`cache::CLAIMING_FILE`] (a claim whose answer
///    was lost) is read the same way;
/// 3. the taken block keys are listed without values and a new block is
///    created with the record in it (the claiming file written first).
///
/// Only a host without a cache (its first ADD, or the first after a
/// reboot emptied the tmpfs dataDir) lists every block with its value, to
/// adopt its blocks and find a lost ADD's record; and so does an ADD when
/// no block is left unclaimed and it must borrow from another host.
async fn allocate_shared(
    client: &BlockClient,
    cc: &ClusterConfig,
    h: &str,
    taken: &dyn Fn(IpAddr) -> bool,
    cached: &[IpNetwork],
    dir: &Path,
) -> Result<(IpAddr, Vec<IpNetwork>)> {
    let client = client.clone();
    let rec = Allocation { handle: h.to_string(), host: cc.host.clone() };
    let is_mine = |v: &BlockValue| v.host == cc.host;
    let mut own: Vec<IpNetwork> = cached.to_vec();
    if !cached.is_empty() {
        let claiming = cache::read_claiming(dir, cc).filter(|c| !cached.contains(c) && cc.is_block(*c));
        let candidates = cached.iter().rev().copied().chain(claiming);
        for cidr in candidates {
            let Some(b) = client.get(cidr).await? else { continue };
            if !is_mine(&b.value) {
                continue;
            }
            if !own.contains(&cidr) {
                own.push(cidr);
                own.sort_by_key(|c| to_u128(c.network()));
            }
            if let Some(ip) = recorded_for(cc, &b, h) {
                return Ok((ip, own));
            }
            if let Some(ip) = try_take(&client, &b, &rec, taken, &is_mine).await? {
                return Ok((ip, own));
            }
        }
        let claimed = client.list_cidrs().await?;
        if let Some(b) = claim_shared(&client, cc, &claimed, &rec, taken, dir).await? {
            let ip = *b.value.allocations.keys().next().expect("made with one allocation");
            own.push(b.cidr);
            own.sort_by_key(|c| to_u128(c.network()));
            return Ok((ip, own));
        }
    }

    // No cache, or nothing left to claim: every block with its value.
    let blocks = client.list().await?;
    own = blocks.iter().filter(|b| b.value.host == cc.host && cc.is_block(b.cidr)).map(|b| b.cidr).collect();
    // An ADD retried after its answer was lost: the record is already there
    // (in a block of this family; another pool's answers the same).
    for b in blocks.iter().filter(|b| b.cidr.is_ipv4() == cc.pool.is_ipv4()) {
        if let Some(ip) = recorded_for(cc, b, h) {
            return Ok((ip, own));
        }
    }
    for b in blocks.iter().filter(|b| b.value.host == cc.host && cc.is_block(b.cidr)) {
        if let Some(ip) = try_take(&client, b, &rec, taken, &is_mine).await? {
            return Ok((ip, own));
        }
    }
    let claimed: Vec<IpNetwork> = blocks.iter().map(|b| b.cidr).collect();
    if let Some(b) = claim_shared(&client, cc, &claimed, &rec, taken, dir).await? {
        let ip = *b.value.allocations.keys().next().expect("made with one allocation");
        own.push(b.cidr);
        own.sort_by_key(|c| to_u128(c.network()));
        return Ok((ip, own));
    }

    let lendable = |v: &BlockValue| v.host != cc.host && !v.exclusive;
    for b in blocks.iter().filter(|b| lendable(&b.value) && cc.is_block(b.cidr)) {
        if let Some(ip) = try_take(&client, b, &rec, taken, &lendable).await? {
            tracing::info!(%ip, block = %b.cidr, owner = %b.value.host, "borrowed an address from another host's block");
            return Ok((ip, own));
        }
    }
    Err(BlockError::Exhausted {
        pool: cc.pool,
        host: cc.host.clone(),
        detail: format!(
            "every /{} block is claimed, this host's {} block(s) are full, and no other host's non-exclusive block \
             has a free address to lend",
            cc.block_size,
            own.len()
        ),
    })
}

/// Claims a new block holding `rec` at its first free address, writing
/// [`cache::CLAIMING_FILE`] before each create.
async fn claim_shared(
    client: &BlockClient,
    cc: &ClusterConfig,
    claimed: &[IpNetwork],
    rec: &Allocation,
    taken: &dyn Fn(IpAddr) -> bool,
    dir: &Path,
) -> Result<Option<Block>> {
    let make = |cidr: IpNetwork| {
        let fresh = Block { cidr, value: BlockValue::default(), mod_revision: 0 };
        let ip = fresh.first_free(taken)?;
        if let Err(e) = cache::write_claiming(dir, cc, cidr) {
            tracing::warn!(block = %cidr, "cannot record the block being claimed: {e}");
        }
        let mut v = BlockValue { host: cc.host.clone(), exclusive: false, allocations: BTreeMap::new() };
        v.allocations.insert(ip, rec.clone());
        Some(v)
    };
    claim_new(client, cc, claimed, make).await
}

/// Drops every etcd record of this host for handle `h` (deleting an
/// owner-less block once empty). Returns the freed addresses.
async fn release_handle(cc: &ClusterConfig, h: &str) -> Result<Vec<IpAddr>> {
    let client = BlockClient::connect(&cc.etcd, &cc.network).await?;
    let mut freed = Vec::new();
    for b in client.list().await? {
        let mine = |a: &Allocation| a.host == cc.host && a.handle == h;
        if !b.value.allocations.values().any(mine) {
            continue;
        }
        let mut gone = Vec::new();
        client
            .modify(b, |cur| {
                gone = cur.value.allocations.iter().filter(|(_, a)| mine(a)).map(|(ip, _)| *ip).collect();
                let mut v = cur.value.clone();
                v.allocations.retain(|_, a| !mine(a));
                finish_change(cur, v)
            })
            .await?;
        freed.extend(gone);
    }
    if !freed.is_empty() {
        tracing::info!(?freed, handle = h, "freed allocations in etcd");
    }
    Ok(freed)
}

/// The `modify` decision for a new value: no change, update, or delete an
/// owner-less block that has nothing left.
pub(super) fn finish_change(cur: &Block, v: BlockValue) -> Option<Option<BlockValue>> {
    if v == cur.value {
        None
    } else if v.host.is_empty() && v.allocations.is_empty() {
        Some(None)
    } else {
        Some(Some(v))
    }
}

/// DEL in cluster mode. Non-strict: etcd first (so a failure leaves the
/// local lease for the retry), then the local lease. strictAffinity: local
/// only, plus etcd for an address outside our blocks (borrowed earlier).
pub fn del(ctx: &Context, cc: &ClusterConfig) -> CniRes<()> {
    let (data_dir, network) = ipam::config::store_location(ctx)?;
    let store = ipam::disk_store(&data_dir, &network)?;
    let locked = store.lock()?;
    let h = handle(&ctx.container_id, &ctx.ifname);
    cache::clear_full(store.dir(), cc)?;
    if cc.strict_affinity {
        let released = locked.release(&ctx.container_id, &ctx.ifname)?;
        let caches = read_caches(store.dir(), &cc.views())?;
        let outside = |ip: &IpAddr| cc.in_pools(*ip) && caches.iter().all(|c| c.contains_ip(*ip).is_none());
        if released.iter().any(outside) {
            block_on(&cc.etcd.endpoints, PLUGIN_DEADLINE, release_handle(cc, &h))?;
        }
        tracing::info!(?released, "released leases");
    } else {
        let held: Vec<IpAddr> =
            locked.leased_to(&ctx.container_id, &ctx.ifname)?.into_iter().filter(|ip| cc.in_pools(*ip)).collect();
        block_on(&cc.etcd.endpoints, PLUGIN_DEADLINE, release_held(cc, &h, &held))?;
        let released = locked.release(&ctx.container_id, &ctx.ifname)?;
        tracing::info!(?released, "released leases");
    }
    Ok(())
}

/// Non-strict DEL in etcd: the blocks of the attachment's local leases are
/// read one key each and the records dropped there. Only when that finds
/// nothing to drop (no local lease: a repeated DEL, or an ADD whose answer
/// was lost after etcd recorded it) is every block listed, as
/// [`release_handle`] does.
async fn release_held(cc: &ClusterConfig, h: &str, held: &[IpAddr]) -> Result<Vec<IpAddr>> {
    if held.is_empty() {
        return release_handle(cc, h).await;
    }
    let client = BlockClient::connect(&cc.etcd, &cc.network).await?;
    let mut freed = Vec::new();
    for ip in held {
        // The block of the pool holding the address (its blockSize).
        let size = cc.pool_of(*ip).map_or(cc.block_size, |v| v.block_size);
        let cidr = IpNetwork::new(*ip, size).map_err(|e| BlockError::Config(e.to_string()))?;
        let cidr = IpNetwork::new(cidr.network(), size).map_err(|e| BlockError::Config(e.to_string()))?;
        let Some(b) = client.get(cidr).await? else { continue };
        let mine = |a: &Allocation| a.host == cc.host && a.handle == h;
        if !b.value.allocations.get(ip).is_some_and(mine) {
            continue;
        }
        client
            .modify(b, |cur| {
                let mut v = cur.value.clone();
                if !v.allocations.get(ip).is_some_and(mine) {
                    return None;
                }
                v.allocations.remove(ip);
                finish_change(cur, v)
            })
            .await?;
        freed.push(*ip);
    }
    if freed.is_empty() {
        // The record is not where the local lease says (a block of another
        // size after a blockSize change): look everywhere.
        return release_handle(cc, h).await;
    }
    tracing::info!(?freed, handle = h, "freed allocations in etcd");
    Ok(freed)
}

/// CHECK: the attachment holds an address of a pool of each family that
/// has one, and `prevResult` agrees with the local store.
pub fn check(ctx: &Context, cc: &ClusterConfig) -> CniRes<()> {
    let mut conf = common_config(ctx)?;
    conf.range_sets = Vec::new();
    for v4 in [true, false] {
        let pools = cc.family(v4);
        if pools.is_empty() {
            continue;
        }
        let ranges =
            pools.iter().map(|v| Range::new(v.pool, None, None, None)).collect::<std::result::Result<Vec<_>, _>>();
        conf.range_sets.push(RangeSet::new(ranges.map_err(Error::config)?).map_err(Error::config)?);
    }
    let store = ipam::disk_store(&conf.data_dir, &conf.network)?;
    let prev = ctx.prev_result()?;
    alloc::check(&store, &conf, &ctx.container_id, &ctx.ifname, prev.as_ref())
}

/// STATUS: the local store must be writable, and etcd must answer (with a
/// leader) whenever the next ADD would need it: always in non-strict mode
/// (every ADD records its address there), under strictAffinity when the
/// host has no block with room left. Either failure is code 50 ("the
/// plugin is not available"), so a runtime stops sending ADDs that would
/// fail with 11.
///
/// Under strictAffinity STATUS also answers 50 when the next ADD would fail
/// with 110: the host's blocks have no address that is not leased locally
/// (the host is the only allocator in its exclusive blocks, so its leases
/// are exact) and every block of the family's pools is claimed in etcd
/// (counted by key, without values). Non-strict, an exhausted pool is not
/// detected: an ADD may still borrow, and knowing that takes every
/// block's value, too much for a call runtimes repeat every few seconds.
pub fn status(ctx: &Context, cc: &ClusterConfig) -> CniRes<()> {
    let conf = common_config(ctx)?;
    let store = ipam::disk_store(&conf.data_dir, &conf.network)?;
    store.check_writable().map_err(|e| Error::new(Code::Unavailable, "IPAM store is not writable").with_details(e))?;
    if !cc.strict_affinity {
        return probe_etcd(cc);
    }
    let taken: HashSet<IpAddr> = store
        .reserved_ips()
        .map_err(|e| Error::new(Code::Unavailable, "cannot read the IPAM store").with_details(e))?
        .into_iter()
        .collect();
    // The families whose cached blocks are all used up locally.
    let mut full = Vec::new();
    for v4 in [true, false] {
        let views = cc.family(v4);
        if views.is_empty() {
            continue;
        }
        let mut room = false;
        for v in &views {
            let cache = BlockCache::read(store.dir(), v)?;
            room |= cache.blocks.iter().any(|b| super::block_addresses(*b).any(|ip| !taken.contains(&ip)));
        }
        if !room {
            full.push(views);
        }
    }
    if full.is_empty() {
        return Ok(());
    }
    let claimed = block_on(&cc.etcd.endpoints, PLUGIN_DEADLINE, async {
        BlockClient::connect(&cc.etcd, &cc.network).await?.list_cidrs().await
    })
    .map_err(|e| Error::new(Code::Unavailable, "cluster IPAM: etcd unavailable, ADDs would fail").with_details(&e))?;
    for views in full {
        let free = views.iter().any(|v| {
            let taken = claimed.iter().filter(|b| v.is_block(**b)).count() as u128;
            taken < v.block_count()
        });
        if !free {
            let pools: Vec<String> = views.iter().map(|v| v.pool.to_string()).collect();
            return Err(Error::new(
                Code::Unavailable,
                format!("no IP addresses available in pool {} for host {}", pools.join(", "), cc.host),
            )
            .with_details("every block is claimed, this host's blocks are full, and strictAffinity is true"));
        }
    }
    Ok(())
}

/// The etcd part of a non-strict STATUS: a linearizable count of the
/// network's block keys, so it needs a member with a leader.
fn probe_etcd(cc: &ClusterConfig) -> CniRes<()> {
    block_on(&cc.etcd.endpoints, PLUGIN_DEADLINE, async {
        BlockClient::connect(&cc.etcd, &cc.network).await?.probe().await
    })
    .map(|_| ())
    .map_err(|e| Error::new(Code::Unavailable, "cluster IPAM: etcd unavailable, ADDs would fail").with_details(&e))
}

/// GC: the local GC, then in etcd every record of this host whose handle
/// is not valid is dropped; under strictAffinity our blocks' records are
/// replaced by the local leases (the batch publish). Empty blocks but one
/// go back to the pool; the cache follows etcd.
pub fn gc(ctx: &Context, cc: &ClusterConfig, valid: &[Attachment]) -> CniRes<()> {
    let (data_dir, network) = ipam::config::store_location(ctx)?;
    let store = ipam::disk_store(&data_dir, &network)?;
    let locked = store.lock()?;
    cache::clear_full(store.dir(), cc)?;
    let local = alloc::gc_locked(&*locked, valid);
    let leases = locked.leases()?;
    let valid: HashSet<String> = valid.iter().map(|a| handle(&a.container_id, &a.ifname)).collect();
    let remote = block_on(&cc.etcd.endpoints, GC_DEADLINE, gc_etcd(cc, &valid, &leases));
    let report = local?;
    let outcome = remote?;
    // Blocks of ours the cache misses (a claim whose answer timed out), and
    // blocks given back; per pool.
    for view in cc.views() {
        let mut cache = BlockCache::read(store.dir(), &view)?;
        let missing: Vec<IpNetwork> =
            outcome.ours.iter().copied().filter(|b| view.is_block(*b) && !cache.blocks.contains(b)).collect();
        if !missing.is_empty() || cache.blocks.iter().any(|b| outcome.released.contains(b)) {
            if !missing.is_empty() {
                tracing::info!(?missing, "adopting blocks of this host found in etcd");
            }
            cache.blocks.retain(|b| !outcome.released.contains(b));
            cache.blocks.extend(missing);
            cache.blocks.sort_by_key(|b| to_u128(b.network()));
            cache.write(store.dir(), &view)?;
        }
    }
    tracing::info!(
        released = report.released.len(),
        kept = report.kept,
        etcd_freed = outcome.freed,
        blocks_released = outcome.released.len(),
        "GC done"
    );
    Ok(())
}

/// What the etcd part of a GC did.
struct GcOutcome {
    /// Records of this host dropped.
    freed: usize,
    /// This host's blocks afterwards.
    ours: Vec<IpNetwork>,
    /// This host's blocks given back to the pool.
    released: Vec<IpNetwork>,
}

/// Drops invalid records of this host (under strictAffinity: rewrites our
/// blocks from the local leases), then gives back every block of this host
/// that is empty in etcd and locally, but one: a host keeps at least one
/// block, so a quiet host does not claim anew for its next container.
/// Like Calico's release of empty blocks, without its grace period: GC
/// holds the local lock, so no ADD of this host races it, and the delete
/// is a CAS, so a borrower's CAS in between keeps the block.
async fn gc_etcd(cc: &ClusterConfig, valid: &HashSet<String>, leases: &[Lease]) -> Result<GcOutcome> {
    let client = BlockClient::connect(&cc.etcd, &cc.network).await?;
    let mut freed = 0;
    // This host's blocks as written, and whether the local store has no lease in them.
    let mut ours: Vec<(Block, bool)> = Vec::new();
    for b in client.list().await? {
        let local = local_records(cc, leases, b.cidr);
        let local_empty = local.is_empty();
        let mut dropped = 0;
        let now = client
            .modify(b, |cur| {
                let mut v = cur.value.clone();
                if cc.strict_affinity && cur.value.host == cc.host {
                    v.allocations.retain(|_, a| a.host != cc.host);
                    v.allocations.extend(local.clone());
                } else {
                    v.allocations.retain(|_, a| a.host != cc.host || valid.contains(&a.handle));
                }
                dropped = cur.value.allocations.keys().filter(|ip| !v.allocations.contains_key(ip)).count();
                finish_change(cur, v)
            })
            .await?;
        freed += dropped;
        if let Some(now) = now.filter(|n| n.value.host == cc.host && cc.views().iter().any(|v| v.is_block(n.cidr))) {
            ours.push((now, local_empty));
        }
    }
    let empty = |(b, local_empty): &&(Block, bool)| *local_empty && b.value.allocations.is_empty();
    let mut released = Vec::new();
    // Per pool: the host keeps one block in each.
    for view in cc.views() {
        let in_pool: Vec<&(Block, bool)> = ours.iter().filter(|(b, _)| view.is_block(b.cidr)).collect();
        let mut keep_one = in_pool.iter().all(empty);
        // Highest addresses first: the one kept is where this host's claims went last.
        for (b, _) in in_pool.into_iter().rev().filter(empty) {
            if std::mem::take(&mut keep_one) {
                continue;
            }
            if client.delete(b).await? {
                tracing::info!(block = %b.cidr, "gave an empty block back to the pool");
                released.push(b.cidr);
            }
        }
    }
    let ours = ours.into_iter().map(|(b, _)| b.cidr).filter(|c| !released.contains(c)).collect();
    Ok(GcOutcome { freed, ours, released })
}
