//! Names derived from the attachment, so DEL, CHECK and GC find what ADD
//! made: the host veth, its alias, the attachment record, the nft table.

/// FNV-1a 64: stable across releases and machines (unlike std's hasher).
fn fnv64(parts: &[&str]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            // A separator byte no name contains, so ("ab","c") != ("a","bc").
            h = (h ^ 0xff).wrapping_mul(0x0100_0000_01b3);
        }
        for b in p.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
    }
    h
}

/// The MAC of every host-side veth (Calico's): the container's gateway
/// 169.254.1.1 resolves to it, so no per-host address is ever needed.
pub const HOST_MAC: [u8; 6] = [0xee; 6];

/// The container's IPv4 next hop: link-local, never on the wire, answered
/// by the permanent neighbour entry ADD installs in the container.
pub const GATEWAY_V4: std::net::Ipv4Addr = std::net::Ipv4Addr::new(169, 254, 1, 1);

/// The container's IPv6 next hop: the host side's EUI-64 link-local address
/// (derived from [`HOST_MAC`] by the kernel).
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
    format!("cni-bgp net={network} cid={container_id} if={ifname}")
}

/// Reads an alias written by [`veth_alias`] back into (network, container, ifname).
pub fn parse_veth_alias(alias: &str) -> Option<(&str, &str, &str)> {
    let rest = alias.strip_prefix("cni-bgp net=")?;
    let (net, rest) = rest.split_once(" cid=")?;
    let (cid, ifname) = rest.split_once(" if=")?;
    Some((net, cid, ifname))
}

/// File name of an attachment's record: network and container ID cannot
/// hold `+` (CNI's name rules), so the name is unique per attachment.
pub fn record_name(network: &str, container_id: &str, ifname: &str) -> String {
    format!("{network}+{container_id}+{ifname}.json")
}

/// nftables table (inet) of one network's `natOutgoing` rules.
pub fn nft_table(network: &str) -> String {
    let clean: String =
        network.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    format!("cni_bgp_{clean}_{:04x}", fnv64(&[network]) & 0xffff)
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
