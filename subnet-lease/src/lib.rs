//! Flannel-compatible subnet leases in etcd (v3 API): the overlay's control
//! plane. Each host leases one pod subnet of a cluster-wide network.
//!
//! Layout (Flannel's, so a Flannel agent and ours can share one etcd):
//!
//! * `<prefix>/config`: the network JSON, see [`NetworkConfig`].
//! * `<prefix>/subnets/<ip>-<len>` (dual stack: `<ip>-<len>&<ip6>-<len6>`):
//!   one key per host, value = [`LeaseAttrs`] JSON, attached to an etcd
//!   lease whose TTL is the subnet lease's TTL. A key without an etcd lease
//!   is a *reservation* (never expires; created by an admin).
//!
//! [`SubnetManager`] is the client: [`SubnetManager::acquire`] (Flannel's
//! acquire order), [`SubnetManager::renew`] (etcd lease keep-alive),
//! [`SubnetManager::leases`], [`SubnetManager::watch`] (a [`Watcher`]
//! stream of [`Event`]s that survives compaction and etcd restarts) and
//! [`SubnetManager::remove`].
//!
//! ```no_run
//! use std::time::Duration;
//! use subnet_lease::{EtcdConfig, LeaseAttrs, SubnetManager};
//! # async fn f() -> subnet_lease::Result<()> {
//! let sm = SubnetManager::connect(&EtcdConfig::default()).await?;
//! let cfg = sm.network_config().await?;
//! let attrs = LeaseAttrs::new("192.168.1.10".parse().unwrap(), "vxlan", serde_json::json!({"VNI": 1}));
//! let lease = sm.acquire(&cfg, &attrs, None, Duration::from_secs(24 * 3600)).await?;
//! let (_all, rev) = sm.leases().await?;
//! let mut events = sm.watch(rev);
//! while let Some(ev) = events.next().await { /* program routes */ let _ = ev; }
//! sm.renew(&lease).await?;
//! # Ok(()) }
//! ```

use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde::{Deserialize, Serialize};

mod config;
mod manager;
pub mod subnet_file;
mod watch;

pub use config::{Backend, BackendKind, NetworkConfig, DEFAULT_VNI, DEFAULT_VXLAN_PORT, MAX_VNI};
pub use etcd_kv::EtcdConfig;
pub use manager::{SubnetManager, RACE_RETRIES, REQUEST_TIMEOUT};
pub use watch::Watcher;

/// Flannel's default `--etcd-prefix`.
pub const DEFAULT_PREFIX: &str = "/coreos.com/network";

/// A lease's value: Flannel's `LeaseAttrs` JSON, field names exactly
/// Flannel's (`PublicIP`, `PublicIPv6`, `BackendType`, `BackendData`,
/// `BackendV6Data`). Like Flannel, `PublicIPv6` is written as `null` when
/// absent and the three backend fields are left out when empty.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LeaseAttrs {
    #[serde(rename = "PublicIP")]
    pub public_ip: Ipv4Addr,
    #[serde(rename = "PublicIPv6", default)]
    pub public_ipv6: Option<Ipv6Addr>,
    #[serde(rename = "BackendType", default, skip_serializing_if = "String::is_empty")]
    pub backend_type: String,
    /// e.g. vxlan: `{"VNI":1,"VtepMAC":"aa:bb:cc:dd:ee:ff"}`; `null` = none.
    #[serde(rename = "BackendData", default, skip_serializing_if = "serde_json::Value::is_null")]
    pub backend_data: serde_json::Value,
    #[serde(rename = "BackendV6Data", default, skip_serializing_if = "Option::is_none")]
    pub backend_v6_data: Option<serde_json::Value>,
}

impl LeaseAttrs {
    /// IPv4-only attributes.
    pub fn new(public_ip: Ipv4Addr, backend_type: &str, backend_data: serde_json::Value) -> LeaseAttrs {
        LeaseAttrs {
            public_ip,
            public_ipv6: None,
            backend_type: backend_type.to_string(),
            backend_data,
            backend_v6_data: None,
        }
    }

    /// The JSON stored in etcd.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("LeaseAttrs serializes")
    }
}

/// One host's subnet lease as stored in etcd.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub subnet: Ipv4Network,
    pub ipv6_subnet: Option<Ipv6Network>,
    pub attrs: LeaseAttrs,
    /// The etcd lease the key is attached to; 0 for a reservation.
    pub etcd_lease: i64,
    /// Time left before etcd deletes the key, as of when it was read (None:
    /// a reservation, or not looked up).
    pub expires_in: Option<Duration>,
    /// The key's `mod_revision`.
    pub revision: i64,
}

impl Lease {
    /// The key under `<prefix>/subnets/`, e.g. `10.5.34.0-24`.
    pub fn key(&self) -> String {
        subnet_key(self.subnet, self.ipv6_subnet)
    }

    /// A key with no etcd lease: never expires.
    pub fn is_reservation(&self) -> bool {
        self.etcd_lease == 0
    }
}

/// What [`Watcher`] yields.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A lease was created or updated (re-acquired with new attributes).
    Added(Lease),
    /// A lease's key was deleted (expired, revoked or removed by an admin).
    Removed { subnet: Ipv4Network, ipv6_subnet: Option<Ipv6Network> },
    /// The incremental stream broke (compaction, lost connection, etcd
    /// restart): this is the full current list. Replace, don't merge.
    Resync(Vec<Lease>),
}

/// Errors of [`SubnetManager`] and [`NetworkConfig::parse`].
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// etcd unreachable, slow, leaderless, or refusing a request; bad client
    /// settings ([`etcd_kv::Error`], shared with the blocks IPAM).
    #[error(transparent)]
    Etcd(#[from] etcd_kv::Error),
    #[error(
        "no network config at {key}: create it with the etcd v3 API, e.g. \
         etcdctl put {key} '{{\"Network\": \"10.244.0.0/16\", \"Backend\": {{\"Type\": \"vxlan\"}}}}'"
    )]
    ConfigNotFound { key: String },
    /// The network JSON is unusable; the message names the key.
    #[error("invalid network config: {0}")]
    InvalidConfig(String),
    /// A lease TTL of zero.
    #[error("invalid lease TTL: {0}")]
    InvalidTtl(String),
    #[error(
        "subnet pool exhausted: all {total} /{subnet_len} subnets of Network {network} between SubnetMin {min} and \
         SubnetMax {max} are leased; remove stale hosts or widen the range"
    )]
    PoolExhausted { network: Ipv4Network, subnet_len: u8, min: Ipv4Addr, max: Ipv4Addr, total: u64 },
    #[error(
        "IPv6 subnet pool exhausted: all /{subnet_len} subnets of IPv6Network {network} between IPv6SubnetMin {min} \
         and IPv6SubnetMax {max} are leased"
    )]
    Ipv6PoolExhausted { network: Ipv6Network, subnet_len: u8, min: Ipv6Addr, max: Ipv6Addr },
    /// Another host took the chosen subnet first, `RACE_RETRIES` times.
    #[error("could not acquire a subnet: another host took the chosen subnet first {0} times in a row")]
    TooManyRaces(u32),
    /// The lease is gone (expired, revoked, removed or taken over): the
    /// agent must acquire again (Flannel: "Lease has been revoked").
    #[error("lease for {subnet} lost: {reason}")]
    LeaseLost { subnet: Ipv4Network, reason: String },
}

impl Error {
    /// True when etcd is unreachable or leaderless: a retry may succeed.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Error::Etcd(e) if e.is_unavailable())
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// `<ip>-<len>` or, dual stack, `<ip>-<len>&<ip6>-<len6>` (Flannel's
/// `MakeSubnetKey`).
pub fn subnet_key(subnet: Ipv4Network, ipv6_subnet: Option<Ipv6Network>) -> String {
    match ipv6_subnet {
        None => format!("{}-{}", subnet.ip(), subnet.prefix()),
        Some(v6) => format!("{}-{}&{}-{}", subnet.ip(), subnet.prefix(), v6.ip(), v6.prefix()),
    }
}

/// Parses a subnet key or a full etcd key ending in one (the part after the
/// last `/`); None when it is not a subnet key. Accepts what Flannel's
/// `(\d+\.\d+.\d+.\d+)-(\d+)(?:&([a-f\d:]+)-(\d+))?$` accepts and parses.
pub fn parse_subnet_key(key: &str) -> Option<(Ipv4Network, Option<Ipv6Network>)> {
    let last = key.rsplit('/').next().unwrap_or(key);
    let (v4, v6) = match last.split_once('&') {
        Some((a, b)) => (a, Some(b)),
        None => (last, None),
    };
    fn split_len(s: &str, max: u8) -> Option<(&str, u8)> {
        let (ip, len) = s.rsplit_once('-')?;
        if len.is_empty() || len.len() > 3 || !len.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        let len: u8 = len.parse().ok()?;
        (len <= max).then_some((ip, len))
    }
    let (ip, len) = split_len(v4, 32)?;
    let subnet = Ipv4Network::new(ip.parse().ok()?, len).ok()?;
    let ipv6_subnet = match v6 {
        None => None,
        Some(v6) => {
            let (ip6, len6) = split_len(v6, 128)?;
            if !ip6.bytes().all(|b| b.is_ascii_hexdigit() || b == b':') {
                return None;
            }
            Some(Ipv6Network::new(ip6.parse().ok()?, len6).ok()?)
        }
    };
    Some((subnet, ipv6_subnet))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn key_round_trip() {
        let sn: Ipv4Network = "10.5.34.0/24".parse().unwrap();
        assert_eq!(subnet_key(sn, None), "10.5.34.0-24");
        assert_eq!(parse_subnet_key("/coreos.com/network/subnets/10.5.34.0-24"), Some((sn, None)));
        let sn6: Ipv6Network = "fc00::/64".parse().unwrap();
        assert_eq!(subnet_key(sn, Some(sn6)), "10.5.34.0-24&fc00::-64");
        assert_eq!(parse_subnet_key("/x/subnets/10.5.34.0-24&fc00::-64"), Some((sn, Some(sn6))));
        for bad in ["config", "10.5.34.0", "10.5.34.0-", "10.5.34.0-33", "10.5.34-24", "10.5.34.0-24&fc00::", "a-24"] {
            assert_eq!(parse_subnet_key(bad), None, "{bad}");
        }
    }

    #[test]
    fn lease_attrs_json_is_flannels() {
        let a = LeaseAttrs::new("1.2.3.4".parse().unwrap(), "vxlan", serde_json::json!({"VNI":1,"VtepMAC":"aa:bb"}));
        assert_eq!(
            a.to_json(),
            r#"{"PublicIP":"1.2.3.4","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"aa:bb"}}"#
        );
        // Flannel's own output, incl. a dual-stack one.
        let f = r#"{"PublicIP":"10.0.0.2","PublicIPv6":"fd00::2","BackendType":"vxlan","BackendData":{"VNI":1},"BackendV6Data":{"VNI":1}}"#;
        let b: LeaseAttrs = serde_json::from_str(f).unwrap();
        assert_eq!(b.public_ipv6, Some("fd00::2".parse().unwrap()));
        assert_eq!(b.backend_v6_data, Some(serde_json::json!({"VNI":1})));
        assert_eq!(b.to_json(), f);
        let c: LeaseAttrs = serde_json::from_str(r#"{"PublicIP":"10.0.0.3"}"#).unwrap();
        assert_eq!(c.backend_type, "");
        assert!(c.backend_data.is_null());
    }
}
