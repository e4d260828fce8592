//! Per-check networks: a unique name, bridge, subnet and data dir derived
//! from the user's config, and a Drop guard that removes everything the
//! plugin may have left behind (bridge link, IPAM state, nft tables and
//! iptables rules carrying the network's name).

use std::fs::OpenOptions;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;

use ipnetwork::{IpNetwork, Ipv4Network};
use serde_json::{json, Value};

use crate::bail;
use crate::util::{have_tool, ip, next_id, parse_b36, pid, pid_alive, run, unique_link, unique_name, Context, R};

/// Where subnet claims live: one file per /24 in use, holding the owner's pid.
const CLAIM_DIR: &str = "/run/cft-claims";

/// The /24s are carved out of this block (test traffic never leaves the host).
const POOL_BASE: [u8; 2] = [10, 224];
const POOL_SLOTS: u32 = 4096; // 10.224.0.0/12

/// An exclusively claimed /24, released on drop.
#[derive(Debug)]
pub struct SubnetClaim {
    pub net: Ipv4Network,
    file: PathBuf,
}

impl SubnetClaim {
    /// Claims a /24 that no other run holds and that overlaps no host route.
    pub fn new() -> R<SubnetClaim> {
        std::fs::create_dir_all(CLAIM_DIR).ctx("create claim dir")?;
        let routes = host_routes();
        let start = (pid().wrapping_mul(97) + next_id().wrapping_mul(13)) % POOL_SLOTS;
        for i in 0..POOL_SLOTS {
            let slot = (start + i) % POOL_SLOTS;
            let a = Ipv4Addr::new(POOL_BASE[0], POOL_BASE[1] + (slot / 256) as u8, (slot % 256) as u8, 0);
            let net = Ipv4Network::new(a, 24).map_err(|e| e.to_string())?;
            if routes.iter().any(|r| overlaps(r, &net)) {
                continue;
            }
            let file = PathBuf::from(format!("{CLAIM_DIR}/{a}-24"));
            for _ in 0..2 {
                match OpenOptions::new().write(true).create_new(true).open(&file) {
                    Ok(mut f) => {
                        let _ = write!(f, "{}", pid());
                        return Ok(SubnetClaim { net, file });
                    }
                    Err(_) => {
                        // Reclaim the slot of a run that died without cleaning up.
                        let owner = std::fs::read_to_string(&file).ok().and_then(|s| s.trim().parse::<u32>().ok());
                        match owner {
                            Some(p) if !pid_alive(p) => {
                                let _ = std::fs::remove_file(&file);
                            }
                            _ => break,
                        }
                    }
                }
            }
        }
        bail!("no free /24 left in 10.224.0.0/12")
    }

    /// `.n` of the subnet.
    pub fn host(&self, n: u8) -> Ipv4Addr {
        let o = self.net.network().octets();
        Ipv4Addr::new(o[0], o[1], o[2], n)
    }
}

impl Drop for SubnetClaim {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

fn overlaps(a: &Ipv4Network, b: &Ipv4Network) -> bool {
    a.contains(b.network()) || b.contains(a.network())
}

/// IPv4 destinations of every route in every table (default route excluded).
fn host_routes() -> Vec<Ipv4Network> {
    let Ok(out) = ip(&["-4", "-j", "route", "show", "table", "all"]) else {
        return Vec::new();
    };
    let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
    v.as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| r["dst"].as_str())
                .filter(|d| *d != "default")
                .filter_map(|d| {
                    if d.contains('/') {
                        d.parse().ok()
                    } else {
                        d.parse::<Ipv4Addr>().ok().map(Ipv4Network::from)
                    }
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Which part of the subnet the IPAM may hand out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Range {
    /// The whole subnet (IPAM defaults: .2 - .254, gateway .1).
    Full,
    /// Exactly `n` addresses starting at .10 (`rangeStart`..`rangeEnd`; with
    /// `ipam.cluster`, /30 blocks of one address each, see [`cluster_pools`]).
    Tiny(u8),
}

/// `ipam.cluster.pools` (cni-ipam's cluster blocks mode) for `range` in the
/// claimed /24. Full: the /24 in blocks of `block_size`. Tiny(n): /30 blocks,
/// each holding exactly one address (network, gateway and broadcast are
/// never handed out), in pools of 2^k blocks from .8 on, one pool per bit of
/// n (n ≤ 31): Tiny(1) is .8/30 (address .10), Tiny(3) is .8/29 and .16/30.
fn cluster_pools(claim: &SubnetClaim, range: Range, block_size: u8) -> Value {
    let k = match range {
        Range::Full => return json!([{"cidr": claim.net.to_string(), "blockSize": block_size}]),
        Range::Tiny(k) => u32::from(k.clamp(1, 31)),
    };
    let mut pools = Vec::new();
    let mut offset = 8u32;
    for bit in (0..6).rev().filter(|b| k & (1 << b) != 0) {
        let size = 4u32 << bit;
        offset = offset.div_ceil(size) * size;
        let start = claim.host(offset as u8);
        pools.push(json!({"cidr": format!("{start}/{}", 30 - bit), "blockSize": 30}));
        offset += size;
    }
    Value::Array(pools)
}

/// A unique network derived from the user's config; removes all traces on drop.
#[derive(Debug)]
pub struct TestNet {
    pub name: String,
    pub bridge: String,
    pub claim: SubnetClaim,
    pub data_dir: PathBuf,
    /// The derived config (name, cniVersion, bridge, ipam ranges, dataDir overridden).
    pub conf: Value,
}

impl TestNet {
    pub fn new(base: &Value, version: &str, range: Range) -> R<TestNet> {
        let n = next_id();
        let name = unique_name(n);
        let bridge = unique_link(n);
        let claim = SubnetClaim::new()?;
        let data_dir = std::env::temp_dir().join(format!("{name}-ipam"));
        let mut conf = base.clone();
        let Some(obj) = conf.as_object_mut() else {
            bail!("network config is not a JSON object");
        };
        obj.insert("name".into(), json!(name));
        obj.insert("cniVersion".into(), json!(version));
        obj.remove("cniVersions");
        obj.insert("bridge".into(), json!(bridge));
        if let Some(ipam) = obj.get_mut("ipam").and_then(Value::as_object_mut) {
            for k in ["subnet", "rangeStart", "rangeEnd", "gateway"] {
                ipam.remove(k);
            }
            if let Some(cluster) = ipam.get_mut("cluster").and_then(Value::as_object_mut) {
                // cni-ipam's cluster blocks mode refuses `ranges`: the pools are the range.
                let bs = cluster.get("blockSize").and_then(Value::as_u64).filter(|b| (24..=30).contains(b));
                for k in ["pool", "pools", "blockSize"] {
                    cluster.remove(k);
                }
                cluster.insert("pools".into(), cluster_pools(&claim, range, bs.unwrap_or(26) as u8));
            } else {
                let mut r = json!({"subnet": claim.net.to_string()});
                if let Range::Tiny(k) = range {
                    r["rangeStart"] = json!(claim.host(10).to_string());
                    r["rangeEnd"] = json!(claim.host(10 + k.max(1) - 1).to_string());
                }
                ipam.insert("ranges".into(), json!([[r]]));
            }
            ipam.insert("dataDir".into(), json!(data_dir.display().to_string()));
        }
        Ok(TestNet { name, bridge, claim, data_dir, conf })
    }

    /// The config at another cniVersion.
    pub fn conf_at(&self, version: &str) -> Value {
        let mut c = self.conf.clone();
        c["cniVersion"] = json!(version);
        c
    }

    /// The config with `prevResult` set.
    pub fn conf_prev(&self, version: &str, prev: &Value) -> Value {
        let mut c = self.conf_at(version);
        c["prevResult"] = prev.clone();
        c
    }

    /// The gateway the plugin should have put on the bridge, if the config asks for one.
    pub fn gateway(&self) -> Option<IpAddr> {
        let gw =
            self.conf["isGateway"].as_bool() == Some(true) || self.conf["isDefaultGateway"].as_bool() == Some(true);
        gw.then(|| IpAddr::V4(self.claim.host(1)))
    }

    pub fn subnet(&self) -> IpNetwork {
        IpNetwork::V4(self.claim.net)
    }
}

impl Drop for TestNet {
    fn drop(&mut self) {
        remove_traces(&self.name, Some(&self.bridge));
        let _ = std::fs::remove_dir_all(&self.data_dir);
    }
}

/// Removes a bridge link plus every nft table and iptables rule/chain
/// that carries the network's (unique) name. Best effort, idempotent.
pub fn remove_traces(net_name: &str, bridge: Option<&str>) {
    if let Some(b) = bridge {
        if ip(&["link", "show", "dev", b]).is_ok() {
            let _ = ip(&["link", "del", "dev", b]);
        }
    }
    // Best effort: cleanup of what a check may have left; the checks themselves
    // call the *_matching functions and fail when they cannot look.
    for (family, table) in nft_tables_matching(net_name, bridge).unwrap_or_default() {
        let _ = run("nft", &["delete", "table", &family, &table]);
    }
    remove_iptables_rules(net_name);
    remove_masq_markers(net_name);
}

/// Where cni-bridge remembers its masquerade rules' handles (its
/// `MASQ_MARKER_DIR`; testkit does not link the plugin).
const MASQ_MARKER_DIR: &str = "/run/cni-bridge/masq";

/// Whether `file` is one of cni-bridge's masquerade markers of `net_name`:
/// `<table>.<chain>`, the table being `cni_bridge_<name, lowercased,
/// non-alphanumerics as _>_<4 hex digits>` (cni-bridge's `names::nft_table`).
/// The hex digits and the dot after them keep network `a` from matching
/// `a_b`'s markers.
fn is_masq_marker_of(file: &str, net_name: &str) -> bool {
    let clean: String =
        net_name.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '_' }).collect();
    let Some(rest) = file.strip_prefix(&format!("cni_bridge_{clean}_")) else { return false };
    let (Some(hash), Some(chain)) = (rest.get(..4), rest.get(4..)) else { return false };
    hash.chars().all(|c| c.is_ascii_hexdigit()) && chain.len() > 1 && chain.starts_with('.')
}

/// Deletes cni-bridge's masquerade markers of the network, which its GC
/// removes only once it deletes the table itself.
fn remove_masq_markers(net_name: &str) {
    let Ok(dir) = std::fs::read_dir(MASQ_MARKER_DIR) else { return };
    for e in dir.flatten() {
        if e.file_name().to_str().is_some_and(|n| is_masq_marker_of(n, net_name)) {
            let _ = std::fs::remove_file(e.path());
        }
    }
}

/// The tokens a plugin may have derived from the network name for its nft table.
fn name_variants(net_name: &str, bridge: Option<&str>) -> Vec<String> {
    let mut v = vec![net_name.to_string(), net_name.replace(['-', '.'], "_"), net_name.replace(['-', '.'], "")];
    if let Some(b) = bridge {
        v.push(b.to_string());
        v.push(b.replace('-', "_"));
    }
    v
}

/// nft tables whose name contains the network's name (or its bridge's).
/// A missing `nft` or an unreadable ruleset is an error, never "nothing left".
pub fn nft_tables_matching(net_name: &str, bridge: Option<&str>) -> R<Vec<(String, String)>> {
    if !have_tool("nft") {
        bail!("nft is not installed (apt-get install nftables): cannot check for leftover tables");
    }
    let out = run("nft", &["-j", "list", "tables"])?;
    let v: Value = serde_json::from_str(&out).ctx("nft -j list tables")?;
    let variants = name_variants(net_name, bridge);
    Ok(v["nftables"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|e| {
                    let t = e.get("table")?;
                    let name = t["name"].as_str()?;
                    let fam = t["family"].as_str()?;
                    variants.iter().any(|x| name.contains(x.as_str())).then(|| (fam.to_string(), name.to_string()))
                })
                .collect()
        })
        .unwrap_or_default())
}

/// iptables rules whose comment names the network (reference plugins tag
/// them `name: "<net>" id: "<cid>"`), as (table, rule line) pairs.
/// A missing `iptables-save` or a failed dump is an error, never "no rules".
pub fn iptables_rules_matching(net_name: &str) -> R<Vec<(String, String)>> {
    if !have_tool("iptables-save") {
        bail!("iptables-save is not installed (apt-get install iptables): cannot check for leftover rules");
    }
    let needle = format!("name: \\\"{net_name}\\\"");
    let mut found = Vec::new();
    for table in ["nat", "filter", "mangle"] {
        let out = run("iptables-save", &["-t", table])?;
        for l in out.lines() {
            if l.starts_with("-A ") && l.contains(&needle) {
                found.push((table.to_string(), l.to_string()));
            }
        }
    }
    Ok(found)
}

fn remove_iptables_rules(net_name: &str) {
    let rules = iptables_rules_matching(net_name).unwrap_or_default();
    let mut chains: Vec<(String, String)> = Vec::new();
    for (table, line) in &rules {
        let mut words = crate::util::shell_words(line);
        if let Some(j) = words.iter().position(|w| w == "-j") {
            if let Some(t) = words.get(j + 1) {
                if t.starts_with("CNI-") && !t.starts_with("CNI-HOSTPORT") {
                    chains.push((table.clone(), t.clone()));
                }
            }
        }
        if words.first().map(String::as_str) == Some("-A") {
            words[0] = "-D".into();
        }
        let mut args: Vec<&str> = vec!["-w", "5", "-t", table];
        args.extend(words.iter().map(String::as_str));
        let _ = run("iptables", &args);
    }
    chains.sort();
    chains.dedup();
    for (table, chain) in chains {
        let _ = run("iptables", &["-w", "5", "-t", &table, "-F", &chain]);
        let _ = run("iptables", &["-w", "5", "-t", &table, "-X", &chain]);
    }
}

/// Removes what runs of this tool that are no longer alive left behind:
/// `cft-<pid>-<n>` namespaces, `cft<pid36>-<n36>` bridge/veth links, data
/// dirs and subnet claims. Returns a description of what was removed.
pub fn sweep_dead_runs() -> Vec<String> {
    let mut removed = Vec::new();
    let dead = |p: Option<u32>| p.is_some_and(|p| !pid_alive(p) && p != pid());
    if let Ok(out) = ip(&["netns", "list"]) {
        for line in out.lines() {
            let Some(name) = line.split_whitespace().next() else {
                continue;
            };
            let p = name.strip_prefix("cft-").and_then(|r| r.split('-').next()).and_then(|p| p.parse().ok());
            if dead(p) && ip(&["netns", "del", name]).is_ok() {
                removed.push(format!("netns {name}"));
            }
        }
    }
    if let Ok(out) = ip(&["-d", "-j", "link", "show"]) {
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        for l in v.as_array().into_iter().flatten() {
            let Some(name) = l["ifname"].as_str() else {
                continue;
            };
            let kind = l["linkinfo"]["info_kind"].as_str().unwrap_or("");
            let p = name
                .strip_prefix("cft")
                .and_then(|r| r.split_once('-'))
                .filter(|(_, n)| parse_b36(n).is_some())
                .and_then(|(p, _)| parse_b36(p));
            if matches!(kind, "bridge" | "veth") && dead(p) && ip(&["link", "del", "dev", name]).is_ok() {
                removed.push(format!("link {name}"));
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(std::env::temp_dir()) {
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let p = name.strip_prefix("cft-").and_then(|r| r.split('-').next()).and_then(|p| p.parse().ok());
            if dead(p) {
                let net: String = name.trim_end_matches("-ipam").to_string();
                remove_traces(&net, None);
                if std::fs::remove_dir_all(e.path()).is_ok() {
                    removed.push(format!("dir {}", e.path().display()));
                }
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir(CLAIM_DIR) {
        for e in rd.flatten() {
            let owner = std::fs::read_to_string(e.path()).ok().and_then(|s| s.trim().parse().ok());
            if dead(owner) && std::fs::remove_file(e.path()).is_ok() {
                removed.push(format!("claim {}", e.file_name().to_string_lossy()));
            }
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cluster_pools_hold_exactly_the_tiny_ranges_size() {
        let claim = SubnetClaim { net: "10.230.7.0/24".parse().unwrap(), file: PathBuf::from("/nonexistent") };
        let pools = |r| cluster_pools(&claim, r, 26).to_string();
        assert_eq!(pools(Range::Full), r#"[{"blockSize":26,"cidr":"10.230.7.0/24"}]"#);
        assert_eq!(pools(Range::Tiny(1)), r#"[{"blockSize":30,"cidr":"10.230.7.8/30"}]"#);
        assert_eq!(pools(Range::Tiny(2)), r#"[{"blockSize":30,"cidr":"10.230.7.8/29"}]"#);
        assert_eq!(
            pools(Range::Tiny(3)),
            r#"[{"blockSize":30,"cidr":"10.230.7.8/29"},{"blockSize":30,"cidr":"10.230.7.16/30"}]"#
        );
        // One allocatable address per /30 block: n blocks in all, none overlapping, inside the /24.
        for n in 1..=31u8 {
            let v = cluster_pools(&claim, Range::Tiny(n), 26);
            let nets: Vec<Ipv4Network> =
                v.as_array().unwrap().iter().map(|p| p["cidr"].as_str().unwrap().parse().unwrap()).collect();
            let blocks: u32 = nets.iter().map(|p| 1u32 << (30 - p.prefix())).sum();
            assert_eq!(blocks, u32::from(n), "{v}");
            for (i, a) in nets.iter().enumerate() {
                assert!(claim.net.contains(a.network()) && claim.net.contains(a.broadcast()), "{v}");
                assert!(nets[i + 1..].iter().all(|b| !overlaps(a, b)), "{v}");
            }
        }
    }

    #[test]
    fn masq_markers_match_only_their_network() {
        assert!(is_masq_marker_of("cni_bridge_cft_12_3_0a1f.masq_0123abcd", "cft-12-3"));
        assert!(is_masq_marker_of("cni_bridge_my_net_ffff.masq_00000000", "My.Net"));
        assert!(!is_masq_marker_of("cni_bridge_cft_12_30_0a1f.masq_0123abcd", "cft-12-3"));
        assert!(!is_masq_marker_of("cni_bridge_cft_12_3_x_0a1f.masq_0123abcd", "cft-12-3"));
        assert!(!is_masq_marker_of("cni_bridge_cft_12_3_0a1f.", "cft-12-3"));
        assert!(!is_masq_marker_of("cni_bridge_cft_12_3_0a1f", "cft-12-3"));
        assert!(!is_masq_marker_of("cni_bridge_cft_12_3_0a1g.masq_0123abcd", "cft-12-3"));
    }

    /// Real files in cni-bridge's marker directory: the network's go, a
    /// network whose name extends it keeps its own.
    #[test]
    fn remove_traces_deletes_the_networks_masq_markers() {
        let n = next_id();
        let net = unique_name(n);
        let other = format!("{net}0");
        let clean = |s: &str| s.replace('-', "_");
        std::fs::create_dir_all(MASQ_MARKER_DIR).unwrap();
        let dir = std::path::Path::new(MASQ_MARKER_DIR);
        let ours = [
            dir.join(format!("cni_bridge_{}_1a2b.masq_0000abcd", clean(&net))),
            dir.join(format!("cni_bridge_{}_1a2b.masq_1111abcd", clean(&net))),
        ];
        let theirs = dir.join(format!("cni_bridge_{}_3c4d.masq_0000abcd", clean(&other)));
        for p in ours.iter().chain([&theirs]) {
            std::fs::write(p, "7").unwrap();
        }
        remove_traces(&net, None);
        let left: Vec<_> = ours.iter().filter(|p| p.exists()).collect();
        let kept = theirs.exists();
        let _ = std::fs::remove_file(&theirs);
        assert!(left.is_empty(), "markers left behind: {left:?}");
        assert!(kept, "another network's marker was deleted");
    }
}
