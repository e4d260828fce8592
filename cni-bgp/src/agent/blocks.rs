//! The IPAM blocks under the prefix, kept current from etcd: one listing,
//! then a watch from its revision. Every change sends the whole set (a few
//! hundred blocks at most), so the consumer needs no diffing of its own. A
//! broken or compacted watch lists again and starts over from that read:
//! nothing is missed, at worst a snapshot is sent twice.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use cluster_ipam::BlockValue;
use etcd_kv::etcd_client::{EventType, GetOptions, WatchOptions};
use etcd_kv::{EtcdClient, Retry};
use ipnetwork::IpNetwork;
use tokio::sync::mpsc;

use super::prefixes::block_of_key;
use crate::Error;

/// Every block by its key.
pub type Blocks = BTreeMap<String, (IpNetwork, BlockValue)>;

fn decode(prefix: &str, key: &[u8], value: &[u8]) -> Option<(String, (IpNetwork, BlockValue))> {
    let key = String::from_utf8_lossy(key).to_string();
    let cidr = block_of_key(prefix, &key)?;
    match serde_json::from_slice::<BlockValue>(value) {
        Ok(v) => Some((key, (cidr, v))),
        Err(e) => {
            tracing::warn!(%key, "ignoring a block whose value is not a block record: {e}");
            None
        }
    }
}

/// Lists every block under `prefix`, and the revision of the read.
pub async fn list(etcd: &EtcdClient, prefix: &str) -> Result<(Blocks, i64), Error> {
    let p = format!("{prefix}/");
    let resp = etcd
        .call("list IPAM blocks", Retry::Idempotent, move |mut c| {
            let p = p.clone();
            async move { c.get(p, Some(GetOptions::new().with_prefix())).await }
        })
        .await?;
    let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
    let blocks = resp.kvs().iter().filter_map(|kv| decode(prefix, kv.key(), kv.value())).collect();
    Ok((blocks, rev))
}

/// Sends the whole block set after every change, starting after the
/// revision `rev` of the listing `blocks`. Ends when the receiver is dropped.
pub fn watch(etcd: Arc<EtcdClient>, prefix: String, blocks: Blocks, rev: i64) -> mpsc::Receiver<Blocks> {
    let (tx, rx) = mpsc::channel(16);
    tokio::spawn(async move { watch_loop(&etcd, &prefix, blocks, rev, tx).await });
    rx
}

async fn watch_loop(etcd: &EtcdClient, prefix: &str, mut blocks: Blocks, mut rev: i64, tx: mpsc::Sender<Blocks>) {
    let mut backoff = Duration::from_millis(100);
    let mut relist = false;
    loop {
        if tx.is_closed() {
            return;
        }
        if relist {
            match list(etcd, prefix).await {
                // Every way back to the top of the loop sets `relist` again.
                Ok((b, r)) => {
                    rev = r;
                    if b != blocks {
                        blocks = b;
                        if tx.send(blocks.clone()).await.is_err() {
                            return;
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!("IPAM blocks: {e}");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(5));
                    continue;
                }
            }
        }
        let opts = WatchOptions::new().with_prefix().with_start_revision(rev + 1);
        let (handle, mut stream) = match etcd.start_watch(format!("{prefix}/"), opts).await {
            Ok(x) => x,
            Err(e) => {
                tracing::warn!("IPAM blocks watch: {e}");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                relist = true;
                continue;
            }
        };
        loop {
            let resp = tokio::select! {
                r = stream.message() => r,
                _ = tx.closed() => return,
            };
            let resp = match resp {
                Ok(Some(r)) => r,
                Ok(None) | Err(_) => {
                    tracing::warn!("IPAM blocks watch: stream broke; listing again");
                    etcd.stream_failed(handle);
                    relist = true;
                    break;
                }
            };
            if resp.compact_revision() > 0 || resp.canceled() {
                tracing::warn!("IPAM blocks watch: revision {} compacted or watch canceled; listing again", rev + 1);
                relist = true;
                break;
            }
            backoff = Duration::from_millis(100);
            let mut changed = false;
            for ev in resp.events() {
                let Some(kv) = ev.kv() else { continue };
                rev = rev.max(kv.mod_revision());
                let key = String::from_utf8_lossy(kv.key()).to_string();
                if block_of_key(prefix, &key).is_none() {
                    continue;
                }
                changed = true;
                if ev.event_type() == EventType::Put {
                    match decode(prefix, kv.key(), kv.value()) {
                        Some((k, v)) => blocks.insert(k, v),
                        None => blocks.remove(&key),
                    };
                } else {
                    blocks.remove(&key);
                }
            }
            if changed && tx.send(blocks.clone()).await.is_err() {
                return;
            }
        }
    }
}
