//! The local IPAM library: host-local compatible address management, with
//! no etcd and no async runtime, so a plugin that embeds it (`cni-bridge`)
//! stays small and quick to exec. The `cni-ipam` plugin binary and its
//! cluster mode live in the `cni-ipam` and `cluster-ipam` crates.
//!
//! Config, allocation order and the on-disk layout follow
//! containernetworking's `host-local` (v1.1.1 verified by running it), so
//! both can share a `dataDir` and exclude each other through the same
//! `lock` file. On top of host-local: crash-safe lease creation, idempotent
//! ADD, STATUS and GC. See `docs/cni-ipam.md`.
//!
//! Embedding: a main plugin calls the verbs of [`LocalIpam`] in-process
//! with its own [`Context`]; the IPAM section is read from `ctx.raw["ipam"]`:
//!
//! ```no_run
//! use cni_core::Plugin;
//! # fn f(ctx: &cni_core::Context) -> cni_core::Result<()> {
//! let result = ipam::LocalIpam.add(ctx)?; // ips (no interface index), routes, dns
//! # Ok(()) }
//! ```
//!
//! The allocator ([`alloc`]) is pure logic over the [`store::Store`] trait;
//! [`store::disk::DiskStore`] is the on-disk implementation.

pub mod alloc;
pub mod config;
pub mod range;
pub mod store;

use cni_core::{CniResult, Context, Error, Plugin, Result};

pub use config::IpamConfig;
pub use store::disk::DiskStore;

/// CNI error code (plugin-defined range) for "no address left in a range
/// set". The message names the range set: `no IP addresses available in
/// range set N: <ranges>`.
pub const CODE_EXHAUSTED: u32 = 110;

/// The local store only (host-local semantics), without any cluster code,
/// for plugins that embed the IPAM in-process and should stay small and
/// quick to exec: a config with `ipam.cluster` is refused with code 7, so
/// such a caller checks [`is_cluster_config`] first and execs `cni-ipam`
/// (whose `Ipam` serves both modes).
#[derive(Debug, Clone, Copy, Default)]
pub struct LocalIpam;

/// Whether the IPAM section asks for a cluster mode (`ipam.cluster`).
pub fn is_cluster_config(ctx: &Context) -> bool {
    config::ipam_section(ctx).ok().and_then(|s| s.get("cluster")).is_some_and(|v| !v.is_null())
}

/// The disk store of `network` under `data_dir`, refusing names that
/// cannot name a directory.
pub fn disk_store(data_dir: &std::path::Path, network: &str) -> Result<DiskStore> {
    // cni-core validated the name for binary calls; in-process callers may
    // hand us anything, and it becomes a directory name.
    if network.is_empty() || network == "." || network == ".." || network.contains(['/', '\0']) {
        return Err(Error::config(format!("network name {network:?} cannot name a store directory")));
    }
    Ok(DiskStore::new(data_dir, network))
}

fn refuse_cluster(ctx: &Context) -> Result<()> {
    if is_cluster_config(ctx) {
        return Err(Error::config("ipam.cluster is served by the cni-ipam binary, not the in-process local IPAM"));
    }
    Ok(())
}

impl Plugin for LocalIpam {
    fn add(&self, ctx: &Context) -> Result<CniResult> {
        refuse_cluster(ctx)?;
        let conf = IpamConfig::from_ctx(ctx)?;
        let store = disk_store(&conf.data_dir, &conf.network)?;
        alloc::add(&store, &conf, &ctx.container_id, &ctx.ifname)
    }

    fn del(&self, ctx: &Context) -> Result<()> {
        refuse_cluster(ctx)?;
        let (data_dir, network) = config::store_location(ctx)?;
        let store = disk_store(&data_dir, &network)?;
        alloc::release(&store, &ctx.container_id, &ctx.ifname).map(|_| ())
    }

    fn check(&self, ctx: &Context) -> Result<()> {
        refuse_cluster(ctx)?;
        let conf = IpamConfig::from_ctx(ctx)?;
        let store = disk_store(&conf.data_dir, &conf.network)?;
        let prev = ctx.prev_result()?;
        alloc::check(&store, &conf, &ctx.container_id, &ctx.ifname, prev.as_ref())
    }

    fn status(&self, ctx: &Context) -> Result<()> {
        refuse_cluster(ctx)?;
        let conf = IpamConfig::from_ctx(ctx)?;
        let store = disk_store(&conf.data_dir, &conf.network)?;
        alloc::status(&store, &conf)
    }

    fn gc(&self, ctx: &Context) -> Result<()> {
        refuse_cluster(ctx)?;
        let valid = ctx.gc_valid();
        let (data_dir, network) = config::store_location(ctx)?;
        let store = disk_store(&data_dir, &network)?;
        let report = alloc::gc(&store, valid)?;
        tracing::info!(released = report.released.len(), kept = report.kept, "GC done");
        Ok(())
    }
}
