//! Cluster IPAM with affine blocks (Calico-style), the `ipam.cluster` mode
//! of the `cni-ipam` plugin: a pool CIDR is cut into blocks
//! (default /26); a host claims whole blocks in etcd with a create-if-absent
//! transaction and hands out addresses inside them. See
//! `docs/cluster-ipam.md`, section "Affine blocks".
//!
//! A network has one pool (`pool`) or several (`pools`), IPv4 and IPv6
//! mixed: an ADD takes one address per family, from a cached block with
//! room first, then from the first pool in config order that has one for
//! this host (see "Several pools and dual stack" in the docs).
//!
//! * [`ClusterConfig`]: the `ipam.cluster` section (`mode: "blocks"`).
//! * [`BlockClient`]: the etcd side (async): `<prefix>/<network>/blocks/<ip>-<len>`
//!   keys holding [`BlockValue`] JSON, compare-and-swap on create and on
//!   `mod_revision`.
//! * [`verbs`]: the CNI verbs in cluster mode (sync; a tokio runtime and an
//!   etcd connection are only set up when etcd is needed).
//! * [`admin`]: `remove-host` and `blocks` (library functions) and [`cli`]
//!   (the `cni-ipam remove-host|blocks` commands).
//!
//! Two allocation modes, chosen by `strictAffinity`:
//!
//! * `true`: a host's blocks are *exclusive* (never lent). Addresses inside
//!   them come from the local disk store with the blocks as its ranges, with
//!   no etcd round trip. etcd is contacted only to claim a block when the
//!   host's blocks are full, and the host's local allocations are published
//!   into its block records in batch at every block claim and every GC.
//! * `false` (default): Calico's model. Every allocation, own or borrowed,
//!   is recorded in the block record with a CAS on its `mod_revision`: one
//!   etcd transaction per address, and borrowing from another host's block
//!   is race-free because the owner allocates the same way. The local store
//!   mirrors the host's addresses (idempotent ADD, CHECK).

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

pub mod admin;
mod cache;
pub mod cli;
mod client;
mod config;
pub mod verbs;

pub use admin::{list_blocks, remove_host, RemoveReport};
pub use client::{BlockClient, ADMIN_DEADLINE, PLUGIN_DEADLINE};
pub use config::{ClusterConfig, DEFAULT_BLOCK_SIZE_V4, DEFAULT_BLOCK_SIZE_V6, DEFAULT_PREFIX};

use ipam::range::{from_u128, to_u128, Range};
use ipam::store::StoreError;

/// One address's record in a block: who holds it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Allocation {
    /// `<containerID>/<ifname>`.
    pub handle: String,
    /// The host that allocated it (the block's owner, or a borrower).
    pub host: String,
}

/// The JSON value of a block key.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct BlockValue {
    /// The host the block is affine to; empty once that host was removed
    /// while other hosts still held borrowed addresses in it.
    pub host: String,
    /// Claimed by a `strictAffinity` host: never lent, and its
    /// `allocations` are published in batch (they may lag the host).
    #[serde(default)]
    pub exclusive: bool,
    #[serde(default)]
    pub allocations: BTreeMap<IpAddr, Allocation>,
}

impl BlockValue {
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("BlockValue serializes")
    }

    /// How many of the allocations were made by a host other than the owner.
    pub fn borrowed(&self) -> usize {
        self.allocations.values().filter(|a| a.host != self.host).count()
    }
}

/// A block as read from etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Block {
    pub cidr: IpNetwork,
    pub value: BlockValue,
    /// The key's `mod_revision`: the CAS guard for the next write.
    pub mod_revision: i64,
}

impl Block {
    /// The first address of this block that `taken` does not reject, in
    /// address order (network, gateway and broadcast excluded).
    pub fn first_free(&self, taken: impl Fn(IpAddr) -> bool) -> Option<IpAddr> {
        block_addresses(self.cidr).find(|ip| !self.value.allocations.contains_key(ip) && !taken(*ip))
    }
}

/// `<container_id>/<ifname>` (container IDs never hold a `/`).
pub fn handle(container_id: &str, ifname: &str) -> String {
    format!("{container_id}/{ifname}")
}

/// The key suffix of a block: `<ip>-<len>`.
pub fn block_key(cidr: IpNetwork) -> String {
    format!("{}-{}", cidr.network(), cidr.prefix())
}

/// Parses `<ip>-<len>` (or a full key ending in one).
pub fn parse_block_key(key: &str) -> Option<IpNetwork> {
    let last = key.rsplit('/').next().unwrap_or(key);
    let (ip, len) = last.rsplit_once('-')?;
    let net = IpNetwork::new(ip.parse().ok()?, len.parse().ok()?).ok()?;
    (net.ip() == net.network()).then_some(net)
}

/// The allocation range of a block: host-local's defaults (gateway =
/// network + 1, never handed out; no network or broadcast address).
pub fn block_range(cidr: IpNetwork) -> Range {
    Range::new(cidr, None, None, None).expect("blocks leave at least 2 host bits (checked in the config)")
}

/// Every allocatable address of a block, in order.
pub fn block_addresses(cidr: IpNetwork) -> impl Iterator<Item = IpAddr> {
    let r = block_range(cidr);
    (to_u128(r.start)..=to_u128(r.end)).map(move |n| from_u128(r.start, n)).filter(move |ip| r.allocatable(*ip))
}

/// Errors of cluster mode; mapped to CNI codes once, in
/// `From<BlockError> for cni_core::Error`.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The `ipam.cluster` section is unusable (code 7).
    #[error("invalid ipam.cluster config: {0}")]
    Config(String),
    /// etcd unreachable, slow or leaderless (code 11), or refusing a request
    /// (code 5); the one etcd error type, shared with the subnet leases.
    #[error(transparent)]
    Etcd(#[from] etcd_kv::Error),
    /// No address left for this host (code 110).
    #[error("no IP addresses available in pool {pool} for host {host}: {detail}")]
    Exhausted { pool: IpNetwork, host: String, detail: String },
    /// No address left for this host in any pool of a family (code 110).
    #[error("no IP addresses available in pools {pools} for host {host}: {detail}")]
    PoolsExhausted { pools: String, host: String, detail: String },
    /// A requested address (`ips`) that is allocated to another attachment
    /// or in another host's exclusive block (code 7, as host-local's
    /// "already leased").
    #[error("{0}")]
    Requested(String),
    /// Other writers kept changing the block under us (code 11: retry).
    #[error("block {block} changed under us {tries} times in a row; try again")]
    TooManyRaces { block: String, tries: u32 },
    #[error(transparent)]
    Store(#[from] StoreError),
}

impl BlockError {
    /// True when a retry later may succeed (etcd down, slow or contended).
    pub fn is_unavailable(&self) -> bool {
        match self {
            BlockError::TooManyRaces { .. } => true,
            BlockError::Etcd(e) => e.is_unavailable(),
            _ => false,
        }
    }
}

pub type Result<T, E = BlockError> = std::result::Result<T, E>;

impl From<BlockError> for cni_core::Error {
    fn from(e: BlockError) -> Self {
        use cni_core::{Code, Error};
        match e {
            BlockError::Config(m) => Error::config(format!("invalid ipam.cluster config: {m}")),
            BlockError::Requested(m) => Error::config(m),
            BlockError::Exhausted { .. } | BlockError::PoolsExhausted { .. } => {
                Error::new(Code::Other(ipam::CODE_EXHAUSTED), e.to_string())
            }
            BlockError::Store(s) => s.into(),
            e if e.is_unavailable() => {
                Error::new(Code::TryAgainLater, "cluster IPAM: etcd unavailable, try again later").with_details(&e)
            }
            e => Error::new(Code::Io, "cluster IPAM: etcd request failed").with_details(&e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block_json_and_keys() {
        let mut v = BlockValue { host: "node-a".into(), exclusive: false, allocations: BTreeMap::new() };
        v.allocations
            .insert("10.0.0.2".parse().unwrap(), Allocation { handle: "c1/eth0".into(), host: "node-a".into() });
        v.allocations
            .insert("10.0.0.10".parse().unwrap(), Allocation { handle: "c2/eth0".into(), host: "node-b".into() });
        let j = v.to_json();
        assert_eq!(
            j,
            r#"{"host":"node-a","exclusive":false,"allocations":{"10.0.0.2":{"handle":"c1/eth0","host":"node-a"},"10.0.0.10":{"handle":"c2/eth0","host":"node-b"}}}"#
        );
        assert_eq!(serde_json::from_str::<BlockValue>(&j).unwrap(), v);
        assert_eq!(v.borrowed(), 1);
        let min: BlockValue = serde_json::from_str(r#"{"host":"h"}"#).unwrap();
        assert!(min.allocations.is_empty() && !min.exclusive);
        let n: IpNetwork = "10.200.1.64/26".parse().unwrap();
        assert_eq!(block_key(n), "10.200.1.64-26");
        assert_eq!(parse_block_key("/cni-ipam/net/blocks/10.200.1.64-26"), Some(n));
        assert_eq!(parse_block_key("fd00::40-122"), Some("fd00::40/122".parse().unwrap()));
        for bad in ["10.200.1.65-26", "x-26", "10.0.0.0", "10.0.0.0-33"] {
            assert_eq!(parse_block_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn first_free_skips_reserved_and_allocated() {
        let mut b = Block { cidr: "10.0.0.0/29".parse().unwrap(), value: BlockValue::default(), mod_revision: 1 };
        assert_eq!(b.first_free(|_| false), Some("10.0.0.2".parse().unwrap()));
        b.value.allocations.insert("10.0.0.2".parse().unwrap(), Allocation { handle: "a/b".into(), host: "h".into() });
        assert_eq!(b.first_free(|ip| ip == "10.0.0.3".parse::<IpAddr>().unwrap()), Some("10.0.0.4".parse().unwrap()));
        assert_eq!(b.first_free(|_| true), None);
    }
}
