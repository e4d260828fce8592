//! The `ipam.cluster` section of a network config (`mode: "blocks"`).

use std::path::PathBuf;

use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;

use super::{BlockError, Result};
use etcd_kv::EtcdConfig;

/// Default `etcdPrefix` of the blocks mode.
pub const DEFAULT_PREFIX: &str = "/cni-ipam";
/// Default `blockSize` for an IPv4 pool (64 addresses, 61 allocatable).
pub const DEFAULT_BLOCK_SIZE_V4: u8 = 26;
/// Default `blockSize` for an IPv6 pool (Calico's).
pub const DEFAULT_BLOCK_SIZE_V6: u8 = 122;

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Raw {
    mode: Option<String>,
    etcd_endpoints: Option<Vec<String>>,
    etcd_prefix: Option<String>,
    etcd_ca_file: Option<String>,
    etcd_cert_file: Option<String>,
    etcd_key_file: Option<String>,
    pool: Option<String>,
    block_size: Option<u8>,
    strict_affinity: Option<bool>,
    host: Option<String>,
}

/// A validated `ipam.cluster` section.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Endpoints, TLS files and `etcdPrefix` (no trailing `/`).
    pub etcd: EtcdConfig,
    /// The network name (the CNI config's `name`): keys live under
    /// `<prefix>/<network>/blocks/`.
    pub network: String,
    pub pool: IpNetwork,
    pub block_size: u8,
    pub strict_affinity: bool,
    /// This host's name (default: the machine's hostname).
    pub host: String,
}

fn bad(msg: impl Into<String>) -> BlockError {
    BlockError::Config(msg.into())
}

/// A host name usable in block records and as an admin argument.
pub fn check_host(host: &str) -> Result<()> {
    if host.is_empty() || host.len() > 253 || host.contains(|c: char| c == '/' || c.is_whitespace() || c.is_control()) {
        return Err(bad(format!("host {host:?} must be 1-253 characters without '/' or whitespace")));
    }
    Ok(())
}

/// The machine's hostname (uname nodename).
pub fn machine_hostname() -> Result<String> {
    nix::unistd::gethostname()
        .map_err(|e| bad(format!("host is not set and the hostname cannot be read: {e}")))?
        .into_string()
        .map_err(|_| bad("host is not set and the hostname is not UTF-8"))
}

impl ClusterConfig {
    /// Parses `ipam.cluster` of network `network`. Every error is
    /// [`BlockError::Config`] (code 7) naming the key.
    pub fn parse(network: &str, v: &Value) -> Result<ClusterConfig> {
        if !v.is_object() {
            return Err(bad("must be an object"));
        }
        let raw = Raw::deserialize(v).map_err(|e| bad(e.to_string()))?;
        match raw.mode.as_deref() {
            Some("blocks") => {}
            Some(m) => return Err(bad(format!("mode {m:?} is not supported: use \"blocks\""))),
            None => return Err(bad("mode is required: use \"blocks\"")),
        }
        let endpoints = raw.etcd_endpoints.unwrap_or_default();
        if endpoints.is_empty() {
            return Err(bad("etcdEndpoints is required, e.g. [\"http://127.0.0.1:2379\"]"));
        }
        if let Some(e) = endpoints.iter().find(|e| !(e.starts_with("http://") || e.starts_with("https://"))) {
            return Err(bad(format!("etcdEndpoints: {e:?} is not an http:// or https:// URL")));
        }
        let prefix = raw.etcd_prefix.unwrap_or_else(|| DEFAULT_PREFIX.to_string());
        let prefix = prefix.trim_end_matches('/');
        if !prefix.starts_with('/') {
            return Err(bad(format!("etcdPrefix {prefix:?} must start with '/'")));
        }
        let pool_s = raw.pool.ok_or_else(|| bad("pool is required, e.g. \"10.200.0.0/16\""))?;
        let pool: IpNetwork = pool_s.parse().map_err(|_| bad(format!("pool {pool_s:?} is not a CIDR")))?;
        if pool.ip() != pool.network() {
            return Err(bad(format!(
                "pool {pool} has host bits set (the network is {}/{})",
                pool.network(),
                pool.prefix()
            )));
        }
        let (bits, default_size) =
            if pool.is_ipv4() { (32, DEFAULT_BLOCK_SIZE_V4) } else { (128, DEFAULT_BLOCK_SIZE_V6) };
        let block_size = raw.block_size.unwrap_or(default_size);
        if block_size + 2 > bits {
            return Err(bad(format!("blockSize {block_size} leaves no address to hand out: at most {}", bits - 2)));
        }
        if block_size < pool.prefix() {
            return Err(bad(format!(
                "blockSize {block_size} is larger than pool {pool}: it must be >= {}",
                pool.prefix()
            )));
        }
        let host = match raw.host.filter(|h| !h.is_empty()) {
            Some(h) => h,
            None => machine_hostname()?,
        };
        check_host(&host)?;
        let file = |s: Option<String>| s.filter(|s| !s.is_empty()).map(PathBuf::from);
        Ok(ClusterConfig {
            etcd: EtcdConfig {
                endpoints,
                prefix: prefix.to_string(),
                ca_file: file(raw.etcd_ca_file),
                cert_file: file(raw.etcd_cert_file),
                key_file: file(raw.etcd_key_file),
            },
            network: network.to_string(),
            pool,
            block_size,
            strict_affinity: raw.strict_affinity.unwrap_or(false),
            host,
        })
    }

    /// How many blocks the pool has (saturating).
    pub fn block_count(&self) -> u128 {
        let shift = u32::from(self.block_size - self.pool.prefix());
        1u128.checked_shl(shift).unwrap_or(u128::MAX)
    }

    /// Block number `i` of the pool (`i < block_count()`).
    pub fn block(&self, i: u128) -> IpNetwork {
        let bits: u32 = if self.pool.is_ipv4() { 32 } else { 128 };
        let base = ipam::range::to_u128(self.pool.network());
        let ip = ipam::range::from_u128(self.pool.network(), base + (i << (bits - u32::from(self.block_size))));
        IpNetwork::new(ip, self.block_size).expect("valid prefix")
    }

    /// Whether `cidr` is one of this pool's blocks.
    pub fn is_block(&self, cidr: IpNetwork) -> bool {
        cidr.prefix() == self.block_size && cidr.is_ipv4() == self.pool.is_ipv4() && self.pool.contains(cidr.network())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_and_validation() {
        let c = ClusterConfig::parse(
            "net",
            &json!({"mode":"blocks","etcdEndpoints":["http://127.0.0.1:2379"],"pool":"10.200.0.0/16","host":"node-a"}),
        )
        .unwrap();
        assert_eq!((c.block_size, c.strict_affinity, c.etcd.prefix.as_str()), (26, false, "/cni-ipam"));
        assert_eq!(c.block_count(), 1024);
        assert_eq!(c.block(1).to_string(), "10.200.0.64/26");
        assert!(c.is_block("10.200.255.192/26".parse().unwrap()));
        assert!(!c.is_block("10.201.0.0/26".parse().unwrap()));
        let v6 = ClusterConfig::parse("n", &json!({"mode":"blocks","etcdEndpoints":["http://e:1"],"pool":"fd00::/64"}))
            .unwrap();
        assert_eq!(v6.block_size, 122);
        assert!(!v6.host.is_empty(), "defaults to the hostname");

        let base = json!({"mode":"blocks","etcdEndpoints":["http://127.0.0.1:2379"],"pool":"10.200.0.0/16"});
        let cases = [
            (json!({"mode":"ranges"}), "mode \"ranges\" is not supported"),
            (json!({"mode":null}), "mode is required"),
            (json!({"etcdEndpoints":[]}), "etcdEndpoints is required"),
            (json!({"etcdEndpoints":["127.0.0.1:2379"]}), "not an http:// or https:// URL"),
            (json!({"pool":"10.200.0.1/16"}), "host bits set"),
            (json!({"pool":"nope"}), "pool \"nope\" is not a CIDR"),
            (json!({"pool":null}), "pool is required"),
            (json!({"blockSize":31}), "blockSize 31 leaves no address"),
            (json!({"blockSize":8}), "blockSize 8 is larger than pool"),
            (json!({"blockSise":24}), "unknown field `blockSise`"),
            (json!({"strictAffinity":"yes"}), "invalid type"),
            (json!({"host":"a/b"}), "host \"a/b\""),
            (json!({"etcdPrefix":"cni"}), "must start with '/'"),
        ];
        for (patch, want) in cases {
            let mut v = base.clone();
            for (k, x) in patch.as_object().unwrap() {
                v[k] = x.clone();
            }
            let e = ClusterConfig::parse("n", &v).unwrap_err().to_string();
            assert!(e.starts_with("invalid ipam.cluster config: ") && e.contains(want), "{v}: {e}");
        }
    }
}
