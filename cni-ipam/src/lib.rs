//! `cni-ipam`: the IPAM plugin. Without `ipam.cluster` it is the local,
//! host-local compatible IPAM ([`ipam::LocalIpam`], see `docs/cni-ipam.md`);
//! with `ipam.cluster` the affine-blocks verbs of [`cluster_ipam`] serve the
//! call (`docs/cluster-ipam.md`).
//!
//! Embedding: a main plugin may call the verbs of [`Ipam`] in-process with
//! its own [`Context`]; the IPAM section is read from `ctx.raw["ipam"]`:
//!
//! ```no_run
//! use cni_core::Plugin;
//! # fn f(ctx: &cni_core::Context) -> cni_core::Result<()> {
//! let result = cni_ipam::Ipam.add(ctx)?; // ips (no interface index), routes, dns
//! # Ok(()) }
//! ```
//!
//! A plugin that only needs the local mode embeds [`ipam::LocalIpam`]
//! instead and so links neither etcd nor tokio.

use cni_core::{CniResult, Context, Plugin, Result};
use ipam::LocalIpam;

/// The plugin. Stateless: every call reads its config from the context.
/// With `ipam.cluster` set the cluster verbs serve the call; otherwise it is
/// [`LocalIpam`].
#[derive(Debug, Clone, Copy, Default)]
pub struct Ipam;

/// Cluster mode (`ipam.cluster`), when the config names one.
fn cluster(ctx: &Context) -> Result<Option<cluster_ipam::ClusterConfig>> {
    cluster_ipam::verbs::cluster_config(ctx)
}

impl Plugin for Ipam {
    fn add(&self, ctx: &Context) -> Result<CniResult> {
        match cluster(ctx)? {
            Some(cc) => cluster_ipam::verbs::add(ctx, &cc),
            None => LocalIpam.add(ctx),
        }
    }

    fn del(&self, ctx: &Context) -> Result<()> {
        match cluster(ctx)? {
            Some(cc) => cluster_ipam::verbs::del(ctx, &cc),
            None => LocalIpam.del(ctx),
        }
    }

    fn check(&self, ctx: &Context) -> Result<()> {
        match cluster(ctx)? {
            Some(cc) => cluster_ipam::verbs::check(ctx, &cc),
            None => LocalIpam.check(ctx),
        }
    }

    fn status(&self, ctx: &Context) -> Result<()> {
        match cluster(ctx)? {
            Some(cc) => cluster_ipam::verbs::status(ctx, &cc),
            None => LocalIpam.status(ctx),
        }
    }

    fn gc(&self, ctx: &Context) -> Result<()> {
        // cni-core refuses a GC without the runtime's list, so it is the runtime's own.
        match cluster(ctx)? {
            Some(cc) => cluster_ipam::verbs::gc(ctx, &cc, ctx.gc_valid()),
            None => LocalIpam.gc(ctx),
        }
    }
}
