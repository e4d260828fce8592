//! Names a plugin derives from an attachment, so that DEL, CHECK and GC
//! find what ADD made: a stable hash, the alias of a host veth, the file
//! name of an attachment's record, an nftables table name. Each plugin
//! passes its own name or prefix, so two plugins' objects never look alike.

/// FNV-1a 64: stable across releases and machines (unlike std's hasher).
pub fn fnv64(parts: &[&str]) -> u64 {
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

/// Alias of a host veth: `<plugin> net=<network> cid=<container> if=<ifname>`.
pub fn veth_alias(plugin: &str, network: &str, container_id: &str, ifname: &str) -> String {
    format!("{plugin} net={network} cid={container_id} if={ifname}")
}

/// Reads an alias written by [`veth_alias`] for `plugin` back into
/// (network, container, ifname); `None` for another plugin's or a foreign alias.
pub fn parse_veth_alias<'a>(plugin: &str, alias: &'a str) -> Option<(&'a str, &'a str, &'a str)> {
    let rest = alias.strip_prefix(plugin)?.strip_prefix(" net=")?;
    let (net, rest) = rest.split_once(" cid=")?;
    let (cid, ifname) = rest.split_once(" if=")?;
    Some((net, cid, ifname))
}

/// File name of an attachment's record: network and container ID cannot
/// hold `+` (CNI's name rules), so the name is unique per attachment, and it
/// has no other dot-separated suffix than `.json`.
pub fn record_name(network: &str, container_id: &str, ifname: &str) -> String {
    format!("{network}+{container_id}+{ifname}.json")
}

/// nftables table of one network: `<prefix>_<network, lowercase, other
/// characters as _>_<4 hex digits of its hash>` (the hash keeps networks
/// that differ only in case or punctuation apart).
pub fn nft_table(prefix: &str, network: &str) -> String {
    let clean: String =
        network.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    format!("{prefix}_{clean}_{:04x}", fnv64(&[network]) & 0xffff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hash_is_fnv1a_and_separates_parts() {
        assert_eq!(fnv64(&[""]), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv64(&["a"]), 0xaf63_dc4c_8601_ec8c);
        assert_ne!(fnv64(&["ab", "c"]), fnv64(&["a", "bc"]));
    }

    #[test]
    fn aliases_round_trip_and_another_plugins_is_not_ours() {
        let a = veth_alias("cni-bgp", "net1", "c1", "eth0");
        assert_eq!(a, "cni-bgp net=net1 cid=c1 if=eth0");
        assert_eq!(parse_veth_alias("cni-bgp", &a), Some(("net1", "c1", "eth0")));
        assert_eq!(parse_veth_alias("cni-bridge", &a), None);
        assert_eq!(parse_veth_alias("cni-bg", &a), None);
        assert_eq!(parse_veth_alias("cni-bgp", "cni-bgp net=x"), None);
    }

    #[test]
    fn records_and_tables_are_distinct_per_attachment_and_network() {
        assert_ne!(record_name("n", "a", "b+c"), record_name("n", "a.b", "c"));
        assert_eq!(record_name("n", "c", "eth0"), "n+c+eth0.json");
        let t = nft_table("cni_x", "My-Net");
        assert!(t.starts_with("cni_x_my_net_") && t.len() == "cni_x_my_net_".len() + 4, "{t}");
        assert_ne!(t, nft_table("cni_x", "my-net"));
    }
}
