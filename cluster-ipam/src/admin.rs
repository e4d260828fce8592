//! Admin operations on a network's blocks (async; the CLI in [`super::cli`]
//! wraps them).

use ipnetwork::IpNetwork;

use super::{Block, BlockClient, Result};
use etcd_kv::EtcdConfig;

/// Every block of `network`, in address order.
pub async fn list_blocks(etcd: &EtcdConfig, network: &str) -> Result<Vec<Block>> {
    BlockClient::connect(etcd, network).await?.list().await
}

/// What [`remove_host`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RemoveReport {
    /// The host's blocks, deleted with every allocation in them.
    pub blocks_freed: Vec<IpNetwork>,
    /// The host's blocks that other hosts still borrow from: kept without
    /// an owner (only their borrowed addresses), deleted by the DEL or GC
    /// that frees the last one. Nobody claims them meanwhile; non-strict
    /// hosts may still borrow from them.
    pub blocks_orphaned: Vec<IpNetwork>,
    /// Allocation records dropped (the host's own, in any block).
    pub allocations_freed: usize,
}

/// Removes a host: frees its blocks and every allocation recorded for it
/// (in its own blocks and addresses it borrowed from others). Every write is
/// a CAS on the block's `mod_revision`, so it is safe while other hosts
/// allocate. Run it only once the host is gone: a live host would go on
/// using its cached blocks under strictAffinity.
pub async fn remove_host(etcd: &EtcdConfig, network: &str, host: &str) -> Result<RemoveReport> {
    super::config::check_host(host)?;
    let client = BlockClient::connect(etcd, network).await?;
    let mut report = RemoveReport::default();
    for b in client.list().await? {
        let touches = b.value.host == host || b.value.allocations.values().any(|a| a.host == host);
        if !touches {
            continue;
        }
        let cidr = b.cidr;
        let mut dropped = 0;
        let mut owned = false;
        let after = client
            .modify(b, |cur| {
                let mut v = cur.value.clone();
                v.allocations.retain(|_, a| a.host != host);
                dropped = cur.value.allocations.len() - v.allocations.len();
                owned = v.host == host;
                if owned {
                    v.host = String::new();
                    v.exclusive = false;
                }
                super::verbs::finish_change(cur, v)
            })
            .await?;
        report.allocations_freed += dropped;
        if owned {
            match after {
                None => report.blocks_freed.push(cidr),
                Some(_) => report.blocks_orphaned.push(cidr),
            }
        }
    }
    tracing::info!(host, ?report, "removed host");
    Ok(report)
}
