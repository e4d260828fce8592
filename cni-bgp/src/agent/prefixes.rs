//! What this node advertises: a pure function of the IPAM blocks in etcd
//! (no I/O, unit-tested).
//!
//! * Every block whose `host` is this node (any network under the prefix):
//!   advertised whole, and blackholed in the kernel (`Fib::set_own_blocks`).
//! * Every address allocated by this node (`allocations[ip].host`) in a
//!   block of another host (borrowed, or left behind when its host was
//!   removed): a /32 (/128), which wins over the owner's block everywhere.

use std::collections::{BTreeMap, BTreeSet};

use cluster_ipam::BlockValue;
use ipnetwork::IpNetwork;

/// What to advertise and what to blackhole.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Advertised {
    /// Blocks affine to this node.
    pub own_blocks: Vec<IpNetwork>,
    /// `own_blocks` and the /32 (/128) of each borrowed address.
    pub prefixes: Vec<IpNetwork>,
}

/// `blocks`: every block under the prefix, keyed by its etcd key.
pub fn advertised(node: &str, blocks: &BTreeMap<String, (IpNetwork, BlockValue)>) -> Advertised {
    let mut own = BTreeSet::new();
    let mut borrowed = BTreeSet::new();
    for (cidr, v) in blocks.values() {
        if v.host == node {
            own.insert(*cidr);
            continue;
        }
        for (ip, a) in &v.allocations {
            if a.host == node && cidr.contains(*ip) {
                let len = if ip.is_ipv4() { 32 } else { 128 };
                borrowed.insert(IpNetwork::new(*ip, len).expect("host prefix length"));
            }
        }
    }
    // Two networks may hold the same block CIDR (their pools overlap): one route.
    let own_blocks: Vec<IpNetwork> = own.into_iter().collect();
    let mut prefixes: BTreeSet<IpNetwork> = own_blocks.iter().copied().collect();
    prefixes.extend(borrowed);
    Advertised { own_blocks, prefixes: prefixes.into_iter().collect() }
}

/// The block CIDR of a key `<prefix>/<network>/blocks/<ip>-<len>`, or None
/// for any other key under the prefix (the BGP config, node records, …).
pub fn block_of_key(prefix: &str, key: &str) -> Option<IpNetwork> {
    let rest = key.strip_prefix(prefix)?.strip_prefix('/')?;
    let mut parts = rest.split('/');
    let (Some(network), Some("blocks"), Some(last), None) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    if network.is_empty() {
        return None;
    }
    cluster_ipam::parse_block_key(last)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cluster_ipam::Allocation;

    fn block(host: &str, allocs: &[(&str, &str)]) -> BlockValue {
        BlockValue {
            host: host.into(),
            exclusive: false,
            allocations: allocs
                .iter()
                .map(|(ip, h)| {
                    (ip.parse().unwrap(), Allocation { handle: format!("c-{ip}/eth0"), host: h.to_string() })
                })
                .collect(),
        }
    }

    fn map(v: &[(&str, &str, BlockValue)]) -> BTreeMap<String, (IpNetwork, BlockValue)> {
        v.iter()
            .map(|(net, cidr, b)| {
                let c: IpNetwork = cidr.parse().unwrap();
                (format!("/p/{net}/blocks/{}-{}", c.ip(), c.prefix()), (c, b.clone()))
            })
            .collect()
    }

    fn strs(v: &[IpNetwork]) -> Vec<String> {
        v.iter().map(|p| p.to_string()).collect()
    }

    #[test]
    fn own_blocks_of_every_network_and_borrowed_addresses() {
        let m = map(&[
            ("net-a", "10.64.0.0/26", block("n1", &[("10.64.0.2", "n1"), ("10.64.0.3", "n2")])),
            ("net-a", "10.64.0.64/26", block("n2", &[("10.64.0.66", "n1"), ("10.64.0.67", "n2")])),
            ("net-b", "10.65.0.0/26", block("n1", &[])),
            ("net-b", "fd10::/122", block("n1", &[])),
            ("net-b", "fd10::40/122", block("n3", &[("fd10::42", "n1")])),
            // A block whose host was removed; n1 still holds an address in it.
            ("net-b", "10.65.0.64/26", block("", &[("10.65.0.70", "n1")])),
            ("net-c", "10.66.0.0/26", block("n2", &[])),
        ]);
        let a = advertised("n1", &m);
        assert_eq!(strs(&a.own_blocks), ["10.64.0.0/26", "10.65.0.0/26", "fd10::/122"]);
        assert_eq!(
            strs(&a.prefixes),
            ["10.64.0.0/26", "10.64.0.66/32", "10.65.0.0/26", "10.65.0.70/32", "fd10::/122", "fd10::42/128"]
        );
        let a2 = advertised("n2", &m);
        assert_eq!(strs(&a2.own_blocks), ["10.64.0.64/26", "10.66.0.0/26"]);
        assert_eq!(strs(&a2.prefixes), ["10.64.0.3/32", "10.64.0.64/26", "10.66.0.0/26"]);
        assert_eq!(advertised("n9", &m), Advertised::default());
    }

    #[test]
    fn block_keys() {
        assert_eq!(block_of_key("/p", "/p/net-a/blocks/10.64.0.0-26"), Some("10.64.0.0/26".parse().unwrap()));
        assert_eq!(block_of_key("/p", "/p/net-a/blocks/fd10::40-122"), Some("fd10::40/122".parse().unwrap()));
        assert_eq!(block_of_key("/p", "/p/bgp/nodes/n1"), None);
        assert_eq!(block_of_key("/p", "/p/bgp/config"), None);
        assert_eq!(block_of_key("/p", "/p/net-a/blocks/10.64.0.1-26"), None);
        assert_eq!(block_of_key("/p", "/p/net-a/handles/x"), None);
        assert_eq!(block_of_key("/p", "/px/net-a/blocks/10.64.0.0-26"), None);
        assert_eq!(block_of_key("/p", "/p//blocks/10.64.0.0-26"), None);
    }
}
