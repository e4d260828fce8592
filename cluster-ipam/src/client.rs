//! [`BlockClient`]: block records in etcd, written only by transactions
//! (create-if-absent, or compare-and-swap on the key's `mod_revision`).

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use etcd_client::{Compare, CompareOp, GetOptions, Txn, TxnOp};
use etcd_kv::{EtcdClient, EtcdConfig, Retry, Timeouts};
use ipnetwork::IpNetwork;

use super::{block_key, parse_block_key, Block, BlockError, BlockValue, Result};

/// Budget for all etcd work of one plugin call (connect included). Past it
/// the call fails with code 11 and leaves nothing behind locally.
pub const PLUGIN_DEADLINE: Duration = Duration::from_secs(2);
/// Budget of an admin command.
pub const ADMIN_DEADLINE: Duration = Duration::from_secs(20);
/// Per endpoint: a dead member costs at most this before the next one is
/// tried, within [`PLUGIN_DEADLINE`].
const PLUGIN_TIMEOUTS: Timeouts =
    Timeouts { connect: Duration::from_millis(500), request: Duration::from_secs(1), keep_alive: None };

/// Block records of one network: `<prefix>/<network>/blocks/<ip>-<len>`.
#[derive(Clone)]
pub struct BlockClient {
    etcd: Arc<EtcdClient>,
    /// `<prefix>/<network>/blocks/`
    root: String,
}

impl std::fmt::Debug for BlockClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BlockClient").field("etcd", &self.etcd.endpoints_desc()).field("root", &self.root).finish()
    }
}

/// The key prefix of a network's blocks.
pub fn blocks_root(prefix: &str, network: &str) -> String {
    let prefix = prefix.trim_end_matches('/');
    let prefix = if prefix.is_empty() { super::DEFAULT_PREFIX } else { prefix };
    format!("{prefix}/{network}/blocks/")
}

/// Runs `f` on a fresh current-thread tokio runtime with an overall
/// `deadline`; past it the result is [`etcd_kv::Error::Unavailable`]. The
/// runtime exists only for this call, so the local fast path never pays
/// for one.
pub fn block_on<T>(endpoints: &[String], deadline: Duration, f: impl Future<Output = Result<T>>) -> Result<T> {
    let unavailable = |reason: String| -> BlockError {
        etcd_kv::Error::Unavailable { endpoints: endpoints.join(","), reason }.into()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| unavailable(format!("cannot start a runtime: {e}")))?;
    rt.block_on(async {
        match tokio::time::timeout(deadline, f).await {
            Ok(r) => r,
            Err(_) => Err(unavailable(format!("no answer within {deadline:?}"))),
        }
    })
}

impl BlockClient {
    /// A client for `network`'s blocks. Does not wait for etcd: the first
    /// request does (bounded by the caller's deadline).
    pub async fn connect(etcd: &EtcdConfig, network: &str) -> Result<BlockClient> {
        let client = EtcdClient::new(etcd, PLUGIN_TIMEOUTS).map_err(|e| match e {
            etcd_kv::Error::InvalidSettings(m) => BlockError::Config(format!("etcd: {m}")),
            e => e.into(),
        })?;
        Ok(BlockClient { etcd: Arc::new(client), root: blocks_root(&etcd.prefix, network) })
    }

    /// `<prefix>/<network>/blocks/`
    pub fn root(&self) -> &str {
        &self.root
    }

    /// The full key of a block.
    pub fn key(&self, cidr: IpNetwork) -> String {
        format!("{}{}", self.root, block_key(cidr))
    }

    /// One etcd request with failover (see [`EtcdClient::call`]).
    async fn call<T, F, Fut>(&self, op: &'static str, retry: Retry, f: F) -> Result<T>
    where
        F: Fn(etcd_client::Client) -> Fut,
        Fut: Future<Output = Result<T, etcd_client::Error>>,
    {
        Ok(self.etcd.call(op, retry, f).await?)
    }

    fn decode(&self, kv: &etcd_client::KeyValue) -> Option<Block> {
        let key = String::from_utf8_lossy(kv.key());
        let Some(cidr) = parse_block_key(&key) else {
            tracing::warn!(%key, "ignoring a key under blocks/ that is not <ip>-<len>");
            return None;
        };
        match serde_json::from_slice::<BlockValue>(kv.value()) {
            Ok(value) => Some(Block { cidr, value, mod_revision: kv.mod_revision() }),
            Err(e) => {
                // Kept out of every pick: a key we cannot read is taken.
                tracing::warn!(%key, "unreadable block record: {e}");
                Some(Block {
                    cidr,
                    value: BlockValue { host: "?".into(), exclusive: true, ..BlockValue::default() },
                    mod_revision: kv.mod_revision(),
                })
            }
        }
    }

    /// Every block of the network, in address order.
    pub async fn list(&self) -> Result<Vec<Block>> {
        let root = self.root.clone();
        let resp = self
            .call("list blocks", Retry::Idempotent, move |mut c| {
                let root = root.clone();
                async move { c.get(root, Some(GetOptions::new().with_prefix())).await }
            })
            .await?;
        let mut blocks: Vec<Block> = resp.kvs().iter().filter_map(|kv| self.decode(kv)).collect();
        blocks.sort_by_key(|b| (ipam::range::to_u128(b.cidr.network()), b.cidr.prefix()));
        Ok(blocks)
    }

    /// The claimed blocks' CIDRs only (no values: a claim needs to know
    /// what is taken, and the values hold every allocation of the pool).
    pub async fn list_cidrs(&self) -> Result<Vec<IpNetwork>> {
        let root = self.root.clone();
        let resp = self
            .call("list blocks", Retry::Idempotent, move |mut c| {
                let root = root.clone();
                async move { c.get(root, Some(GetOptions::new().with_prefix().with_keys_only())).await }
            })
            .await?;
        Ok(resp.kvs().iter().filter_map(|kv| parse_block_key(&String::from_utf8_lossy(kv.key()))).collect())
    }

    /// A linearizable count of the network's block keys: succeeds only when
    /// a member with a leader answers, i.e. when a write could commit.
    pub async fn probe(&self) -> Result<i64> {
        let root = self.root.clone();
        let resp = self
            .call("probe", Retry::Idempotent, move |mut c| {
                let root = root.clone();
                async move { c.get(root, Some(GetOptions::new().with_prefix().with_count_only())).await }
            })
            .await?;
        Ok(resp.count())
    }

    /// One block, if claimed.
    pub async fn get(&self, cidr: IpNetwork) -> Result<Option<Block>> {
        let key = self.key(cidr);
        let resp = self
            .call("get block", Retry::Idempotent, move |mut c| {
                let key = key.clone();
                async move { c.get(key, None).await }
            })
            .await?;
        Ok(resp.kvs().first().and_then(|kv| self.decode(kv)))
    }

    /// Creates the block key only if it does not exist (`Version == 0`).
    /// The new block on success, None when someone else has it.
    pub async fn create(&self, cidr: IpNetwork, value: &BlockValue) -> Result<Option<Block>> {
        let key = self.key(cidr);
        self.put_if("claim block", Compare::version(key.clone(), CompareOp::Equal, 0), key, cidr, value).await
    }

    /// Replaces `old`'s value with `value` if the key is unchanged since
    /// `old` was read. The updated block, or None when it changed.
    pub async fn update(&self, old: &Block, value: &BlockValue) -> Result<Option<Block>> {
        let key = self.key(old.cidr);
        let unchanged = Compare::mod_revision(key.clone(), CompareOp::Equal, old.mod_revision);
        self.put_if("update block", unchanged, key, old.cidr, value).await
    }

    /// Puts `value` at `key` (block `cidr`) in one transaction guarded by
    /// `cond`. The block as written, or None when `cond` did not hold.
    async fn put_if(
        &self,
        op: &'static str,
        cond: Compare,
        key: String,
        cidr: IpNetwork,
        value: &BlockValue,
    ) -> Result<Option<Block>> {
        let txn = Txn::new().when(vec![cond]).and_then(vec![TxnOp::put(key, value.to_json(), None)]);
        let resp = self
            .call(op, Retry::Once, move |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        if !resp.succeeded() {
            return Ok(None);
        }
        let rev = resp.header().map(|h| h.revision()).unwrap_or(0);
        Ok(Some(Block { cidr, value: value.clone(), mod_revision: rev }))
    }

    /// Deletes `old`'s key if unchanged since it was read.
    pub async fn delete(&self, old: &Block) -> Result<bool> {
        let key = self.key(old.cidr);
        let txn = Txn::new()
            .when(vec![Compare::mod_revision(key.clone(), CompareOp::Equal, old.mod_revision)])
            .and_then(vec![TxnOp::delete(key, None)]);
        let resp = self
            .call("delete block", Retry::Once, move |mut c| {
                let txn = txn.clone();
                async move { c.txn(txn).await }
            })
            .await?;
        Ok(resp.succeeded())
    }

    /// Read-modify-write of one block with CAS, retried on conflicts:
    /// `change` gets the current block and returns the new value, `None`
    /// for "no change", or `Some(None)` to delete the key. Returns the
    /// block as written (None when deleted or absent).
    pub async fn modify(
        &self,
        mut block: Block,
        mut change: impl FnMut(&Block) -> Option<Option<BlockValue>>,
    ) -> Result<Option<Block>> {
        const TRIES: u32 = 16;
        for _ in 0..TRIES {
            let outcome = match change(&block) {
                None => return Ok(Some(block)),
                Some(Some(v)) => self.update(&block, &v).await?.map(Some),
                Some(None) => self.delete(&block).await?.then_some(None),
            };
            if let Some(done) = outcome {
                return Ok(done);
            }
            match self.get(block.cidr).await? {
                Some(b) => block = b,
                None => return Ok(None),
            }
        }
        Err(BlockError::TooManyRaces { block: block_key(block.cidr), tries: TRIES })
    }
}
