//! `<dataDir>/<network>/blocks.json`: the blocks this host has claimed, so
//! the ADD fast path knows its ranges without asking etcd. Read and written
//! only under the store's lock; replaced atomically (temp file, fsync,
//! rename). host-local and the disk store ignore the name (not an address).
//!
//! Losing it is safe: blocks of this host that etcd knows and the cache
//! does not are adopted again at the next block claim.

use std::fs;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};

use super::{ClusterConfig, Result};
use ipam::store::StoreError;

pub const CACHE_FILE: &str = "blocks.json";

/// The name of one of a pool's local files. The config's first pool keeps
/// the single-pool names (`blocks.json`, `blocks.full`, `blocks.claiming`);
/// every other pool's carry its CIDR: `blocks-<ip>-<len>.json`, `.full`,
/// `.claiming`. `ext` is `json`, `full` or `claiming`.
pub fn file_name(cc: &ClusterConfig, ext: &str) -> String {
    if cc.is_first_pool() {
        match ext {
            "json" => CACHE_FILE,
            "full" => FULL_FILE,
            _ => CLAIMING_FILE,
        }
        .to_string()
    } else {
        format!("blocks-{}.{ext}", super::block_key(cc.pool))
    }
}

fn temp_name(cc: &ClusterConfig, ext: &str) -> String {
    format!(".tmp.{}", file_name(cc, ext))
}
/// Blocks of the cache known to be full: written when an ADD finds every
/// block it tried full (just before it claims another), removed before
/// anything in the store is released. While it exists its blocks have no
/// free address, so an ADD tries only the others and a claim does not
/// start with a scan of every address the host holds. Losing it costs one
/// such scan; a stale one (releases by another tool) costs a block.
pub const FULL_FILE: &str = "blocks.full";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockCache {
    pub pool: Option<IpNetwork>,
    pub block_size: u8,
    pub host: String,
    pub blocks: Vec<IpNetwork>,
}

impl BlockCache {
    pub fn path(dir: &Path, cc: &ClusterConfig) -> PathBuf {
        dir.join(file_name(cc, "json"))
    }

    /// The cached blocks that still fit `cc` (a changed pool, block size or
    /// host makes the cache empty rather than wrong).
    pub fn read(dir: &Path, cc: &ClusterConfig) -> Result<BlockCache> {
        let p = Self::path(dir, cc);
        let bytes = match fs::read(&p) {
            Ok(b) => b,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(Self::empty(cc)),
            Err(e) => return Err(StoreError::io("read", p, e).into()),
        };
        let c: BlockCache = match serde_json::from_slice(&bytes) {
            Ok(c) => c,
            Err(e) => {
                tracing::warn!(path = %p.display(), "ignoring unreadable block cache: {e}");
                return Ok(Self::empty(cc));
            }
        };
        if c.pool != Some(cc.pool) || c.block_size != cc.block_size || c.host != cc.host {
            tracing::info!(path = %p.display(), "block cache is for another pool, block size or host; ignoring it");
            return Ok(Self::empty(cc));
        }
        Ok(BlockCache { blocks: c.blocks.into_iter().filter(|b| cc.is_block(*b)).collect(), ..c })
    }

    pub fn empty(cc: &ClusterConfig) -> BlockCache {
        BlockCache { pool: Some(cc.pool), block_size: cc.block_size, host: cc.host.clone(), blocks: Vec::new() }
    }

    pub fn contains_ip(&self, ip: std::net::IpAddr) -> Option<IpNetwork> {
        self.blocks.iter().copied().find(|b| b.contains(ip))
    }

    /// Atomically replaces the file (the store directory must exist).
    pub fn write(&self, dir: &Path, cc: &ClusterConfig) -> Result<()> {
        let tmp = dir.join(temp_name(cc, "json"));
        let target = Self::path(dir, cc);
        let _ = fs::remove_file(&tmp);
        let mut body = serde_json::to_vec(self).expect("cache serializes");
        body.push(b'\n');
        let written = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o644)
            .open(&tmp)
            .and_then(|mut f| f.write_all(&body).and_then(|()| f.sync_all()));
        if let Err(e) = written.and_then(|()| fs::rename(&tmp, &target)) {
            let _ = fs::remove_file(&tmp);
            return Err(StoreError::io("write", target, e).into());
        }
        Ok(())
    }
}

/// The blocks [`FULL_FILE`] names (none when it is missing or unreadable).
pub fn read_full(dir: &Path, cc: &ClusterConfig) -> Vec<IpNetwork> {
    match fs::read(dir.join(file_name(cc, "full"))) {
        Ok(b) => serde_json::from_slice(&b).unwrap_or_default(),
        Err(_) => Vec::new(),
    }
}

/// Records `blocks` as full. Best effort and without fsync: the file is a
/// hint whose loss costs time, never an address.
pub fn write_full(dir: &Path, cc: &ClusterConfig, blocks: &[IpNetwork]) {
    let tmp = dir.join(temp_name(cc, "full"));
    let body = serde_json::to_vec(blocks).expect("blocks serialize");
    if let Err(e) = fs::write(&tmp, body).and_then(|()| fs::rename(&tmp, dir.join(file_name(cc, "full")))) {
        let _ = fs::remove_file(&tmp);
        tracing::warn!("cannot record full blocks: {e}");
    }
}

/// Forgets which blocks are full, in every pool: every release calls this
/// first, since the block it frees an address in is no longer full.
pub fn clear_full(dir: &Path, cc: &ClusterConfig) -> Result<()> {
    for view in cc.views() {
        let p = dir.join(file_name(&view, "full"));
        match fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io("remove", p, e).into()),
        }
    }
    Ok(())
}

/// The block a non-strict ADD is about to create with its record in it,
/// written before the create transaction: if the answer is lost (deadline,
/// kill), the runtime's retried ADD reads this block first and finds its
/// record there instead of claiming another block.
pub const CLAIMING_FILE: &str = "blocks.claiming";

/// The block [`CLAIMING_FILE`] names, if any.
pub fn read_claiming(dir: &Path, cc: &ClusterConfig) -> Option<IpNetwork> {
    serde_json::from_slice(&fs::read(dir.join(file_name(cc, "claiming"))).ok()?).ok()
}

/// Records that `block` is about to be created (atomic rename, no fsync:
/// its loss can cost one leaked record, which DEL's full search frees).
pub fn write_claiming(dir: &Path, cc: &ClusterConfig, block: IpNetwork) -> std::io::Result<()> {
    let tmp = dir.join(temp_name(cc, "claiming"));
    let body = serde_json::to_vec(&block).expect("block serializes");
    fs::write(&tmp, body).and_then(|()| fs::rename(&tmp, dir.join(file_name(cc, "claiming"))))
}
