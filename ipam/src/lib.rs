//! `cni-ipam`: a host-local compatible IPAM plugin.
//!
//! Config, allocation order and the on-disk layout follow
//! containernetworking's `host-local` (v1.1.1 verified by running it), so
//! both can share a `dataDir` and exclude each other through the same
//! `lock` file. On top of host-local: crash-safe lease creation, idempotent
//! ADD, STATUS and GC. See `docs/cni-ipam.md`.
//!
//! Embedding: a main plugin calls the verbs of [`Ipam`] in-process with its
//! own [`Context`]; the IPAM section is read from `ctx.raw["ipam"]`:
//!
//! ```no_run
//! use cni_core::Plugin;
//! # fn f(ctx: &cni_core::Context) -> cni_core::Result<()> {
//! let result = ipam::Ipam.add(ctx)?; // ips (no interface index), routes, dns
//! # Ok(()) }
//! ```
//!
//! The allocator ([`alloc`]) is pure logic over the [`store::Store`] trait;
//! [`store::disk::DiskStore`] is the on-disk implementation.

pub mod alloc;
#[cfg(feature = "cluster")]
pub mod cluster;
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

/// The plugin. Stateless: every call reads its config from the context.
#[derive(Debug, Clone, Copy, Default)]
pub struct Ipam;

pub(crate) fn disk_store(data_dir: &std::path::Path, network: &str) -> Result<DiskStore> {
    // cni-core validated the name for binary calls; in-process callers may
    // hand us anything, and it becomes a directory name.
    if network.is_empty() || network == "." || network == ".." || network.contains(['/', '\0']) {
        return Err(Error::config(format!("network name {network:?} cannot name a store directory")));
    }
    Ok(DiskStore::new(data_dir, network))
}

/// Cluster mode (`ipam.cluster`): the affine-blocks verbs take over.
#[cfg(feature = "cluster")]
fn cluster(ctx: &Context) -> Result<Option<cluster::blocks::ClusterConfig>> {
    cluster::blocks::verbs::cluster_config(ctx)
}

#[cfg(not(feature = "cluster"))]
fn cluster(ctx: &Context) -> Result<Option<std::convert::Infallible>> {
    match config::ipam_section(ctx)?.get("cluster") {
        None | Some(serde_json::Value::Null) => Ok(None),
        Some(_) => Err(Error::config("ipam.cluster needs cni-ipam built with the \"cluster\" feature")),
    }
}

impl Plugin for Ipam {
    fn add(&self, ctx: &Context) -> Result<CniResult> {
        if let Some(cc) = cluster(ctx)? {
            #[cfg(feature = "cluster")]
            return cluster::blocks::verbs::add(ctx, &cc);
            #[cfg(not(feature = "cluster"))]
            match cc {}
        }
        let conf = IpamConfig::from_ctx(ctx)?;
        let store = disk_store(&conf.data_dir, &conf.network)?;
        alloc::add(&store, &conf, &ctx.container_id, &ctx.ifname)
    }

    fn del(&self, ctx: &Context) -> Result<()> {
        if let Some(cc) = cluster(ctx)? {
            #[cfg(feature = "cluster")]
            return cluster::blocks::verbs::del(ctx, &cc);
            #[cfg(not(feature = "cluster"))]
            match cc {}
        }
        let (data_dir, network) = config::store_location(ctx)?;
        let store = disk_store(&data_dir, &network)?;
        alloc::release(&store, &ctx.container_id, &ctx.ifname).map(|_| ())
    }

    fn check(&self, ctx: &Context) -> Result<()> {
        if let Some(cc) = cluster(ctx)? {
            #[cfg(feature = "cluster")]
            return cluster::blocks::verbs::check(ctx, &cc);
            #[cfg(not(feature = "cluster"))]
            match cc {}
        }
        let conf = IpamConfig::from_ctx(ctx)?;
        let store = disk_store(&conf.data_dir, &conf.network)?;
        let prev = ctx.prev_result()?;
        alloc::check(&store, &conf, &ctx.container_id, &ctx.ifname, prev.as_ref())
    }

    fn status(&self, ctx: &Context) -> Result<()> {
        if let Some(cc) = cluster(ctx)? {
            #[cfg(feature = "cluster")]
            return cluster::blocks::verbs::status(ctx, &cc);
            #[cfg(not(feature = "cluster"))]
            match cc {}
        }
        let conf = IpamConfig::from_ctx(ctx)?;
        let store = disk_store(&conf.data_dir, &conf.network)?;
        alloc::status(&store, &conf)
    }

    fn gc(&self, ctx: &Context) -> Result<()> {
        let given = ["cni.dev/valid-attachments", "cni.dev/attachments"].iter().any(|k| ctx.raw.get(*k).is_some());
        if !given {
            // Refuse rather than treat "no list" as "nothing is valid".
            return Err(Error::config(
                "GC needs \"cni.dev/valid-attachments\" in the config; refusing to release every lease",
            ));
        }
        let valid = ctx.conf.gc_valid_attachments().unwrap_or(&[]);
        if let Some(cc) = cluster(ctx)? {
            #[cfg(feature = "cluster")]
            return cluster::blocks::verbs::gc(ctx, &cc, valid);
            #[cfg(not(feature = "cluster"))]
            match cc {}
        }
        let (data_dir, network) = config::store_location(ctx)?;
        let store = disk_store(&data_dir, &network)?;
        let report = alloc::gc(&store, valid)?;
        tracing::info!(released = report.released.len(), kept = report.kept, "GC done");
        Ok(())
    }
}
