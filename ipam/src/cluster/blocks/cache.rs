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
use crate::store::StoreError;

pub const CACHE_FILE: &str = "blocks.json";
const CACHE_TEMP: &str = ".tmp.blocks";

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BlockCache {
    pub pool: Option<IpNetwork>,
    pub block_size: u8,
    pub host: String,
    pub blocks: Vec<IpNetwork>,
}

impl BlockCache {
    pub fn path(dir: &Path) -> PathBuf {
        dir.join(CACHE_FILE)
    }

    /// The cached blocks that still fit `cc` (a changed pool, block size or
    /// host makes the cache empty rather than wrong).
    pub fn read(dir: &Path, cc: &ClusterConfig) -> Result<BlockCache> {
        let p = Self::path(dir);
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
    pub fn write(&self, dir: &Path) -> Result<()> {
        let tmp = dir.join(CACHE_TEMP);
        let target = Self::path(dir);
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
