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
    pools: Option<Vec<RawPool>>,
    strict_affinity: Option<bool>,
    host: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct RawPool {
    cidr: Option<String>,
    block_size: Option<u8>,
}

/// One IP pool: a CIDR cut into blocks of `block_size`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Pool {
    pub cidr: IpNetwork,
    pub block_size: u8,
}

/// A validated `ipam.cluster` section.
///
/// `pool` and `block_size` are those of one pool: the first of `pools` as
/// parsed, and the pool itself in a per-pool view ([`ClusterConfig::views`]),
/// which is what the block code works on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterConfig {
    /// Endpoints, TLS files and `etcdPrefix` (no trailing `/`).
    pub etcd: EtcdConfig,
    /// The network name (the CNI config's `name`): keys live under
    /// `<prefix>/<network>/blocks/`.
    pub network: String,
    pub pool: IpNetwork,
    pub block_size: u8,
    /// Every pool, in config order (`pool`/`blockSize` give one).
    pub pools: Vec<Pool>,
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

fn overlaps(a: IpNetwork, b: IpNetwork) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// Validates one pool; `key` and `size_key` name its config keys in errors.
fn parse_pool(key: &str, size_key: &str, cidr: Option<String>, block_size: Option<u8>) -> Result<Pool> {
    let pool_s = cidr.ok_or_else(|| bad(format!("{key} is required, e.g. \"10.200.0.0/16\"")))?;
    let pool: IpNetwork = pool_s.parse().map_err(|_| bad(format!("{key} {pool_s:?} is not a CIDR")))?;
    if pool.ip() != pool.network() {
        return Err(bad(format!(
            "{key} {pool} has host bits set (the network is {}/{})",
            pool.network(),
            pool.prefix()
        )));
    }
    let (bits, default_size) = if pool.is_ipv4() { (32, DEFAULT_BLOCK_SIZE_V4) } else { (128, DEFAULT_BLOCK_SIZE_V6) };
    let block_size = block_size.unwrap_or(default_size);
    if block_size + 2 > bits {
        return Err(bad(format!("{size_key} {block_size} leaves no address to hand out: at most {}", bits - 2)));
    }
    if block_size < pool.prefix() {
        return Err(bad(format!(
            "{size_key} {block_size} is larger than {key} {pool}: it must be >= {}",
            pool.prefix()
        )));
    }
    Ok(Pool { cidr: pool, block_size })
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
        let pools = match (raw.pool, raw.pools) {
            (Some(_), Some(_)) => return Err(bad("pool and pools are mutually exclusive: use one")),
            (None, None) => return Err(bad("pool is required, e.g. \"10.200.0.0/16\" (or pools, a list)")),
            (Some(p), None) => vec![parse_pool("pool", "blockSize", Some(p), raw.block_size)?],
            (None, Some(list)) => {
                if raw.block_size.is_some() {
                    return Err(bad("blockSize goes inside each entry of pools, not next to it"));
                }
                if list.is_empty() {
                    return Err(bad("pools must list at least one pool"));
                }
                let mut pools: Vec<Pool> = Vec::new();
                for (i, rp) in list.into_iter().enumerate() {
                    let p = parse_pool(
                        &format!("pools[{i}].cidr"),
                        &format!("pools[{i}].blockSize"),
                        rp.cidr,
                        rp.block_size,
                    )?;
                    if let Some(q) =
                        pools.iter().find(|q| q.cidr.is_ipv4() == p.cidr.is_ipv4() && overlaps(q.cidr, p.cidr))
                    {
                        return Err(bad(format!("pools[{i}].cidr {} overlaps pool {}", p.cidr, q.cidr)));
                    }
                    pools.push(p);
                }
                pools
            }
        };
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
            pool: pools[0].cidr,
            block_size: pools[0].block_size,
            pools,
            strict_affinity: raw.strict_affinity.unwrap_or(false),
            host,
        })
    }

    /// One config per pool, in config order, each with `pool` and
    /// `block_size` set to that pool.
    pub fn views(&self) -> Vec<ClusterConfig> {
        self.pools.iter().map(|p| ClusterConfig { pool: p.cidr, block_size: p.block_size, ..self.clone() }).collect()
    }

    /// The per-pool views of one family (`v4`: IPv4), in config order.
    pub fn family(&self, v4: bool) -> Vec<ClusterConfig> {
        self.views().into_iter().filter(|v| v.pool.is_ipv4() == v4).collect()
    }

    /// The view of the pool holding `ip`.
    pub fn pool_of(&self, ip: std::net::IpAddr) -> Option<ClusterConfig> {
        self.views().into_iter().find(|v| v.pool.contains(ip))
    }

    /// Whether `ip` is in one of the pools.
    pub fn in_pools(&self, ip: std::net::IpAddr) -> bool {
        self.pools.iter().any(|p| p.cidr.contains(ip))
    }

    /// Whether this (view's) pool is the first of the config: its local
    /// files keep the names of the single-pool layout (`blocks.json`, …).
    pub fn is_first_pool(&self) -> bool {
        self.pools.first().map(|p| p.cidr) == Some(self.pool)
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
            (json!({"pools":[{"cidr":"10.0.0.0/8"}]}), "pool and pools are mutually exclusive"),
            (json!({"pool":null,"pools":[]}), "pools must list at least one pool"),
            (json!({"pool":null,"blockSize":24,"pools":[{"cidr":"10.0.0.0/8"}]}), "blockSize goes inside"),
            (
                json!({"pool":null,"pools":[{"cidr":"10.0.0.0/8"},{"cidr":"10.1.0.0/16"}]}),
                "pools[1].cidr 10.1.0.0/16 overlaps pool 10.0.0.0/8",
            ),
            (
                json!({"pool":null,"pools":[{"cidr":"fd00::/64","blockSize":127}]}),
                "pools[0].blockSize 127 leaves no address",
            ),
            (json!({"pool":null,"pools":[{"blockSize":24}]}), "pools[0].cidr is required"),
            (json!({"pool":null,"pools":[{"cidr":"10.0.0.0/8","size":24}]}), "unknown field `size`"),
        ];
        for (patch, want) in cases {
            let mut v = base.clone();
            for (k, x) in patch.as_object().unwrap() {
                v[k] = x.clone();
            }
            let e = ClusterConfig::parse("n", &v).unwrap_err().to_string();
            assert!(e.starts_with("invalid ipam.cluster config: ") && e.contains(want), "{v}: {e}");
        }

        let d = ClusterConfig::parse(
            "n",
            &json!({"mode":"blocks","etcdEndpoints":["http://e:1"],"host":"h","pools":[
                {"cidr":"10.1.0.0/24","blockSize":28},{"cidr":"fd00:1::/64"},{"cidr":"10.2.0.0/24"}]}),
        )
        .unwrap();
        assert_eq!((d.pool.to_string(), d.block_size), ("10.1.0.0/24".to_string(), 28));
        let v4: Vec<(String, u8)> = d.family(true).iter().map(|v| (v.pool.to_string(), v.block_size)).collect();
        assert_eq!(v4, [("10.1.0.0/24".to_string(), 28), ("10.2.0.0/24".to_string(), 26)]);
        let v6 = d.family(false);
        assert_eq!((v6.len(), v6[0].block_size, v6[0].is_first_pool()), (1, 122, false));
        assert!(d.family(true)[0].is_first_pool());
        assert_eq!(d.pool_of("10.2.0.9".parse().unwrap()).unwrap().pool.to_string(), "10.2.0.0/24");
        assert!(d.in_pools("fd00:1::5".parse().unwrap()) && !d.in_pools("10.3.0.1".parse().unwrap()));
    }
}
