//! Names derived from the attachment, so DEL and GC find what ADD made
//! without any state file: the host veth, nft tables and chains.

pub use cni_core::names::fnv64;

/// Host-side veth of an attachment: `veth` + 11 hex digits (15 chars, the
/// kernel's limit). The reference plugin's random names are 12 chars, so
/// ours are told apart by length.
pub fn host_veth(network: &str, container_id: &str, ifname: &str) -> String {
    format!("veth{:011x}", fnv64(&[network, container_id, ifname]) & 0xfff_ffff_ffff)
}

pub fn is_our_veth(name: &str) -> bool {
    name.len() == 15 && name.starts_with("veth") && name[4..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// MAC of a host veth, set in the request that creates it: locally
/// administered, unicast, 46 bits of hash over (network, veth name). The
/// kernel ignores an alias in that request, so until the alias is set (or
/// forever, if the ADD is killed first) this is what marks the link as this
/// network's: GC and a repeated ADD recompute it from the link's name.
pub fn host_veth_mac(network: &str, veth: &str) -> [u8; 6] {
    let h = fnv64(&["cni-bridge host veth", network, veth]).to_be_bytes();
    [(h[2] & 0xfc) | 0x02, h[3], h[4], h[5], h[6], h[7]]
}

/// Alias of a host veth: `cni-bridge net=<network> cid=<container> if=<ifname>`.
pub fn veth_alias(network: &str, container_id: &str, ifname: &str) -> String {
    cni_core::names::veth_alias("cni-bridge", network, container_id, ifname)
}

/// Reads an alias written by [`veth_alias`] back into (network, container, ifname).
pub fn parse_veth_alias(alias: &str) -> Option<(&str, &str, &str)> {
    cni_core::names::parse_veth_alias("cni-bridge", alias)
}

/// nftables table of one network (inet family for masquerade, bridge family for macspoofchk).
pub fn nft_table(network: &str) -> String {
    cni_core::names::nft_table("cni_bridge", network)
}

/// The macspoofchk chain of one attachment.
pub fn mac_chain(container_id: &str, ifname: &str) -> String {
    format!("mac_{:012x}", fnv64(&[container_id, ifname]) & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_stable_kernel_sized_and_distinct() {
        let a = host_veth("net", "c1", "eth0");
        assert_eq!(a, host_veth("net", "c1", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(is_our_veth(&a));
        assert_ne!(a, host_veth("net", "c1", "eth1"));
        assert_ne!(a, host_veth("net2", "c1", "eth0"));
        assert!(!is_our_veth("veth1234abcd"));
    }

    #[test]
    fn host_macs_are_local_unicast_and_per_network() {
        let v = host_veth("net", "c1", "eth0");
        let m = host_veth_mac("net", &v);
        assert_eq!(m, host_veth_mac("net", &v));
        assert_eq!(m[0] & 0x03, 0x02, "locally administered unicast");
        assert_ne!(m, host_veth_mac("net2", &v));
        assert_ne!(m, host_veth_mac("net", &host_veth("net", "c2", "eth0")));
    }

    #[test]
    fn aliases_round_trip() {
        let a = veth_alias("net-1", "abc.def", "eth0");
        assert_eq!(parse_veth_alias(&a), Some(("net-1", "abc.def", "eth0")));
        assert_eq!(parse_veth_alias("something else"), None);
    }

    #[test]
    fn table_names_are_nft_identifiers() {
        let t = nft_table("My-net.v2");
        assert!(t.starts_with("cni_bridge_my_net_v2_"));
        assert!(t.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
        assert_ne!(nft_table("a-b"), nft_table("a_b"));
    }
}
