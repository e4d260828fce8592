//! Names derived from the attachment, so DEL, CHECK and GC find what ADD
//! made: the host veth, its alias, the attachment record, the nft table.

use cni_core::names::fnv64;

/// The MAC of every host-side veth (Calico's): the container's gateway
/// 169.254.1.1 resolves to it, so no per-host address is ever needed.
pub const HOST_MAC: [u8; 6] = [0xee; 6];

/// The container's IPv4 next hop: link-local, never on the wire, answered
/// by the permanent neighbour entry ADD installs in the container.
pub const GATEWAY_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 1, 1);

/// The container's IPv6 next hop: the host side's EUI-64 link-local address
/// (derived from [`HOST_MAC`] by the kernel; ADD sets the host veth's
/// addrgenmode to eui64, so the host's `addr_gen_mode` default does not
/// matter, and CHECK verifies the address is there).
pub const GATEWAY_V6: std::net::Ipv6Addr = std::net::Ipv6Addr::new(0xfe80, 0, 0, 0, 0xecee, 0xeeff, 0xfeee, 0xeeee);

/// Host-side veth of an attachment: `cali` + 11 hex digits of a hash of
/// (container ID, ifname): 15 characters, the kernel's limit, as Calico's.
pub fn host_veth(container_id: &str, ifname: &str) -> String {
    format!("cali{:011x}", fnv64(&[container_id, ifname]) & 0xfff_ffff_ffff)
}

/// Whether `name` has the shape of [`host_veth`] (Calico's names have it too:
/// the shape alone never proves a link is ours).
pub fn is_cali(name: &str) -> bool {
    name.len() == 15 && name.starts_with("cali") && name[4..].bytes().all(|b| b.is_ascii_hexdigit())
}

/// Alias of a host veth: `cni-bgp net=<network> cid=<container> if=<ifname>`.
pub fn veth_alias(network: &str, container_id: &str, ifname: &str) -> String {
    cni_core::names::veth_alias("cni-bgp", network, container_id, ifname)
}

/// Reads an alias written by [`veth_alias`] back into (network, container, ifname).
pub fn parse_veth_alias(alias: &str) -> Option<(&str, &str, &str)> {
    cni_core::names::parse_veth_alias("cni-bgp", alias)
}

/// File name of an attachment's record: network and container ID cannot
/// hold `+` (CNI's name rules), so the name is unique per attachment.
pub fn record_name(network: &str, container_id: &str, ifname: &str) -> String {
    cni_core::names::record_name(network, container_id, ifname)
}

/// nftables table (inet) of one network's `natOutgoing` rules.
pub fn nft_table(network: &str) -> String {
    cni_core::names::nft_table("cni_bgp", network)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn veth_names_are_calico_shaped_stable_and_distinct() {
        let a = host_veth("c1", "eth0");
        assert_eq!(a, host_veth("c1", "eth0"));
        assert_eq!(a.len(), 15);
        assert!(is_cali(&a));
        assert_ne!(a, host_veth("c1", "eth1"));
        assert_ne!(a, host_veth("c2", "eth0"));
        assert!(!is_cali("cali12345"));
        assert!(!is_cali("veth0123456789a"));
    }

    #[test]
    fn aliases_round_trip() {
        let a = veth_alias("net-1", "abc.def", "eth0");
        assert_eq!(parse_veth_alias(&a), Some(("net-1", "abc.def", "eth0")));
        assert_eq!(parse_veth_alias("cni-bridge net=a cid=b if=c"), None);
    }

    #[test]
    fn the_v6_gateway_is_the_eui64_of_the_host_mac() {
        let m = HOST_MAC;
        let eui = [m[0] ^ 0x02, m[1], m[2], 0xff, 0xfe, m[3], m[4], m[5]];
        let mut o = [0u8; 16];
        o[0] = 0xfe;
        o[1] = 0x80;
        o[8..].copy_from_slice(&eui);
        assert_eq!(std::net::Ipv6Addr::from(o), GATEWAY_V6);
    }
}
