//! The `ipam` section of a network config, host-local compatible.
//!
//! Parsed from `ctx.raw["ipam"]` plus the capability inputs a runtime adds
//! (`runtimeConfig.ipRanges`, `runtimeConfig.ips`, `args.cni.ips`, CNI_ARGS
//! `IP=`). Every validation failure is code 7 with a message that names the
//! offending field.

use std::net::IpAddr;
use std::path::{Path, PathBuf};

use cni_core::{Context, Dns, Error, Result, Route};
use ipnetwork::IpNetwork;
use serde::Deserialize;
use serde_json::Value;

use crate::range::{Range, RangeSet};

/// host-local's default `dataDir`.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
/// The default with `ipam.cluster` (affine blocks): a tmpfs that boot
/// empties. etcd holds the blocks; the local leases only mirror this
/// boot's containers, so stale ones cannot outlive a reboot (host-local's
/// classic leak after an unclean restart), and a lease costs no disk inode.
pub const CLUSTER_DEFAULT_DATA_DIR: &str = "/run/cni-ipam";

/// A fully validated IPAM configuration for one invocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpamConfig {
    /// The network name: the store's directory under `data_dir`.
    pub network: String,
    pub data_dir: PathBuf,
    /// One address is leased from each set, in this order.
    pub range_sets: Vec<RangeSet>,
    pub routes: Vec<Route>,
    /// `resolvConf`: read (by [`IpamConfig::dns`]) only when a result is built.
    pub resolv_conf: Option<PathBuf>,
    /// Addresses the runtime asked for, from all three sources, deduplicated.
    pub requested: Vec<IpAddr>,
}

#[derive(Deserialize)]
struct RawRange {
    subnet: Option<String>,
    #[serde(rename = "rangeStart")]
    range_start: Option<String>,
    #[serde(rename = "rangeEnd")]
    range_end: Option<String>,
    gateway: Option<String>,
}

#[derive(Deserialize)]
struct RawIpam {
    #[serde(default)]
    ranges: Option<Vec<Vec<RawRange>>>,
    // Legacy single range.
    subnet: Option<String>,
    #[serde(rename = "rangeStart")]
    range_start: Option<String>,
    #[serde(rename = "rangeEnd")]
    range_end: Option<String>,
    gateway: Option<String>,
    #[serde(default)]
    routes: Option<Vec<Route>>,
    #[serde(rename = "resolvConf")]
    resolv_conf: Option<String>,
}

/// The `ipam` object of the network config (code 7 when missing or not an object).
pub fn ipam_section(ctx: &Context) -> Result<&Value> {
    match ctx.raw.get("ipam") {
        Some(v) if v.is_object() => Ok(v),
        Some(_) => Err(Error::config("\"ipam\" must be an object")),
        None => Err(Error::config("network config has no \"ipam\" section")),
    }
}

/// `dataDir`, or the default of the mode (local or `cluster`).
pub fn data_dir_of(ipam: &Value) -> Result<PathBuf> {
    let default = match ipam.get("cluster") {
        None | Some(Value::Null) => DEFAULT_DATA_DIR,
        Some(_) => CLUSTER_DEFAULT_DATA_DIR,
    };
    match ipam.get("dataDir") {
        None | Some(Value::Null) => Ok(PathBuf::from(default)),
        Some(Value::String(s)) if !s.is_empty() => Ok(PathBuf::from(s)),
        Some(Value::String(_)) => Ok(PathBuf::from(default)),
        Some(other) => Err(Error::config(format!("ipam.dataDir must be a string, got {other}"))),
    }
}

/// Only what DEL and GC need: the network's store location. Lenient on
/// purpose: a DEL must clean up even when the ranges no longer validate.
pub fn store_location(ctx: &Context) -> Result<(PathBuf, String)> {
    let ipam = ipam_section(ctx)?;
    Ok((data_dir_of(ipam)?, ctx.conf.name.clone()))
}

fn parse_ip(what: &str, s: &str) -> Result<IpAddr> {
    s.trim().parse().map_err(|_| Error::config(format!("{what}: invalid IP address {s:?}")))
}

fn parse_opt_ip(what: &str, s: &Option<String>) -> Result<Option<IpAddr>> {
    match s.as_deref().map(str::trim) {
        None | Some("") => Ok(None),
        Some(s) => parse_ip(what, s).map(Some),
    }
}

/// An address, or the address part of `addr/len` (runtimeConfig.ips form).
fn parse_requested(what: &str, s: &str) -> Result<IpAddr> {
    let s = s.trim();
    match s.split_once('/') {
        Some(_) => s
            .parse::<IpNetwork>()
            .map(|n| n.ip())
            .map_err(|_| Error::config(format!("{what}: invalid IP address {s:?}"))),
        None => parse_ip(what, s),
    }
}

fn build_range(where_: &str, r: &RawRange) -> Result<Range> {
    let subnet_s = r
        .subnet
        .as_deref()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::config(format!("{where_}: missing \"subnet\"")))?;
    let subnet: IpNetwork =
        subnet_s.parse().map_err(|_| Error::config(format!("{where_}: invalid subnet CIDR {subnet_s:?}")))?;
    Range::new(
        subnet,
        parse_opt_ip(&format!("{where_}.rangeStart"), &r.range_start)?,
        parse_opt_ip(&format!("{where_}.rangeEnd"), &r.range_end)?,
        parse_opt_ip(&format!("{where_}.gateway"), &r.gateway)?,
    )
    .map_err(|m| Error::config(format!("{where_}: {m}")))
}

fn build_sets(what: &str, raw: &[Vec<RawRange>]) -> Result<Vec<RangeSet>> {
    let mut sets = Vec::with_capacity(raw.len());
    for (i, set) in raw.iter().enumerate() {
        let mut ranges = Vec::with_capacity(set.len());
        for (j, r) in set.iter().enumerate() {
            ranges.push(build_range(&format!("{what}[{i}][{j}]"), r)?);
        }
        sets.push(RangeSet::new(ranges).map_err(|m| Error::config(format!("{what}[{i}]: {m}")))?);
    }
    Ok(sets)
}

fn decode<'a, T: Deserialize<'a>>(what: &str, v: &'a Value) -> Result<T> {
    T::deserialize(v).map_err(|e| Error::config(format!("invalid {what}")).with_details(e))
}

impl IpamConfig {
    /// Parses and validates everything ADD, CHECK and STATUS need.
    pub fn from_ctx(ctx: &Context) -> Result<IpamConfig> {
        Self::parse(ctx, true)
    }

    /// Everything but the ranges, for stores that bring their own (cluster
    /// mode: the host's blocks). `range_sets` is empty; static `ranges`,
    /// `subnet` or `runtimeConfig.ipRanges` are refused (code 7), since
    /// they would silently be ignored.
    pub fn without_ranges(ctx: &Context, why: &str) -> Result<IpamConfig> {
        let conf = Self::parse(ctx, false)?;
        if !conf.range_sets.is_empty() {
            return Err(Error::config(format!(
                "ipam.ranges, ipam.subnet and runtimeConfig.ipRanges cannot be used {why}"
            )));
        }
        Ok(conf)
    }

    fn parse(ctx: &Context, need_ranges: bool) -> Result<IpamConfig> {
        let ipam_v = ipam_section(ctx)?;
        let data_dir = data_dir_of(ipam_v)?;
        let raw: RawIpam = decode("ipam section", ipam_v)?;

        let runtime = ctx.raw.get("runtimeConfig").filter(|v| !v.is_null());
        let runtime_ranges: Option<Vec<Vec<RawRange>>> = match runtime.and_then(|r| r.get("ipRanges")) {
            None | Some(Value::Null) => None,
            Some(v) => Some(decode("runtimeConfig.ipRanges", v)?),
        };

        let range_sets = match runtime_ranges.filter(|r| !r.is_empty()) {
            // The ipRanges capability replaces the static ranges.
            Some(rt) => build_sets("runtimeConfig.ipRanges", &rt)?,
            None => {
                let mut sets = Vec::new();
                if raw.subnet.as_deref().is_some_and(|s| !s.trim().is_empty()) {
                    // Legacy single range goes first, as in host-local.
                    let legacy = RawRange {
                        subnet: raw.subnet.clone(),
                        range_start: raw.range_start.clone(),
                        range_end: raw.range_end.clone(),
                        gateway: raw.gateway.clone(),
                    };
                    let r = build_range("ipam", &legacy)?;
                    sets.push(RangeSet::new(vec![r]).map_err(Error::config)?);
                }
                if let Some(ranges) = &raw.ranges {
                    sets.extend(build_sets("ipam.ranges", ranges)?);
                }
                sets
            }
        };
        if range_sets.is_empty() && need_ranges {
            return Err(Error::config("no IP ranges configured: set ipam.ranges (or ipam.subnet)"));
        }
        for (i, a) in range_sets.iter().enumerate() {
            for (j, b) in range_sets.iter().enumerate().skip(i + 1) {
                if a.overlaps(b) {
                    return Err(Error::config(format!("range set {i} ({a}) overlaps with range set {j} ({b})")));
                }
            }
        }

        let mut requested: Vec<IpAddr> = Vec::new();
        let mut push = |ip: IpAddr| {
            if !requested.contains(&ip) {
                requested.push(ip);
            }
        };
        if let Some(v) = ctx.args.get("IP") {
            for part in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
                push(parse_requested("CNI_ARGS IP", part)?);
            }
        }
        if let Some(ips) =
            ctx.raw.get("args").and_then(|a| a.get("cni")).and_then(|c| c.get("ips")).filter(|v| !v.is_null())
        {
            let list: Vec<String> = decode("args.cni.ips", ips)?;
            for s in &list {
                push(parse_requested("args.cni.ips", s)?);
            }
        }
        if let Some(ips) = runtime.and_then(|r| r.get("ips")).filter(|v| !v.is_null()) {
            let list: Vec<String> = decode("runtimeConfig.ips", ips)?;
            for s in &list {
                push(parse_requested("runtimeConfig.ips", s)?);
            }
        }

        Ok(IpamConfig {
            network: ctx.conf.name.clone(),
            data_dir,
            range_sets,
            routes: raw.routes.unwrap_or_default(),
            resolv_conf: raw.resolv_conf.filter(|s| !s.trim().is_empty()).map(PathBuf::from),
            requested,
        })
    }

    /// The `dns` of the result: `resolvConf` parsed, or empty.
    pub fn dns(&self) -> Result<Dns> {
        match &self.resolv_conf {
            None => Ok(Dns::default()),
            Some(p) => parse_resolv_conf(p),
        }
    }

    /// The index of the range set holding `ip`.
    pub fn set_for(&self, ip: IpAddr) -> Option<usize> {
        self.range_sets.iter().position(|s| s.contains(ip))
    }
}

/// Reads a resolv.conf into the result's `dns` the way host-local does:
/// `nameserver` lines append, `domain` sets, `search` and `options` append
/// their words; `#`/`;` comments are skipped.
pub fn parse_resolv_conf(path: &Path) -> Result<Dns> {
    let text =
        std::fs::read_to_string(path).map_err(|e| Error::io(format!("read resolvConf {}", path.display()), e))?;
    Ok(parse_resolv_text(&text))
}

pub fn parse_resolv_text(text: &str) -> Dns {
    let mut dns = Dns::default();
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') || line.starts_with(';') {
            continue;
        }
        let mut words = line.split_whitespace();
        let Some(key) = words.next() else { continue };
        let rest: Vec<String> = words.map(str::to_string).collect();
        match key {
            "nameserver" => dns.nameservers.extend(rest.into_iter().take(1)),
            "domain" => {
                if let Some(d) = rest.into_iter().next() {
                    dns.domain = d;
                }
            }
            "search" => dns.search.extend(rest),
            "options" => dns.options.extend(rest),
            _ => {}
        }
    }
    dns
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn ctx(conf: Value, cni_args: &str) -> Context {
        let stdin = conf.to_string();
        let args = cni_args.to_string();
        let env = move |k: &str| -> Option<String> {
            match k {
                "CNI_COMMAND" => Some("ADD".into()),
                "CNI_CONTAINERID" => Some("c1".into()),
                "CNI_NETNS" => Some("/proc/self/ns/net".into()),
                "CNI_IFNAME" => Some("eth0".into()),
                "CNI_PATH" => Some("/x".into()),
                "CNI_ARGS" => Some(args.clone()),
                _ => None,
            }
        };
        Context::from_parts(&env, stdin.as_bytes()).unwrap()
    }

    fn conf(ipam: Value) -> Value {
        json!({"cniVersion":"1.1.0","name":"net1","type":"cni-ipam","ipam":ipam})
    }

    #[test]
    fn legacy_subnet_goes_first_and_defaults_apply() {
        let c = IpamConfig::from_ctx(&ctx(
            conf(json!({"subnet":"10.1.0.0/24","ranges":[[{"subnet":"fd00::/64"}]],
                "routes":[{"dst":"0.0.0.0/0"},{"dst":"10.9.0.0/16","gw":"10.1.0.254"}]})),
            "",
        ))
        .unwrap();
        assert_eq!(c.range_sets.len(), 2);
        assert!(c.range_sets[0].is_ipv4());
        assert_eq!(c.range_sets[0].ranges[0].gateway.to_string(), "10.1.0.1");
        assert_eq!(c.data_dir, PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(c.routes.len(), 2);
        assert_eq!(c.routes[1].gw.unwrap().to_string(), "10.1.0.254");
        assert_eq!(c.network, "net1");
    }

    #[test]
    fn cluster_mode_keeps_its_leases_on_tmpfs_by_default() {
        let dir = |v: Value| data_dir_of(&v).unwrap();
        assert_eq!(dir(json!({"cluster": {"mode": "blocks"}})), PathBuf::from(CLUSTER_DEFAULT_DATA_DIR));
        assert_eq!(dir(json!({"cluster": {"mode": "blocks"}, "dataDir": "/x"})), PathBuf::from("/x"));
        assert_eq!(dir(json!({"cluster": null})), PathBuf::from(DEFAULT_DATA_DIR));
        assert_eq!(dir(json!({})), PathBuf::from(DEFAULT_DATA_DIR));
    }

    #[test]
    fn requested_ips_from_all_three_sources() {
        let mut v = conf(json!({"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"fd00::/64"}]]}));
        v["args"] = json!({"cni":{"ips":["fd00::9"]}});
        v["runtimeConfig"] = json!({"ips":["10.1.0.7/24"]});
        let c = IpamConfig::from_ctx(&ctx(v, "IgnoreUnknown=1;IP=10.1.0.7, 10.1.0.8")).unwrap();
        let want: Vec<IpAddr> = ["10.1.0.7", "10.1.0.8", "fd00::9"].iter().map(|s| s.parse().unwrap()).collect();
        assert_eq!(c.requested, want);
    }

    #[test]
    fn ip_ranges_capability_replaces_static_ranges() {
        let mut v = conf(json!({"ranges":[[{"subnet":"10.1.0.0/24"}]]}));
        v["runtimeConfig"] = json!({"ipRanges":[[{"subnet":"10.7.0.0/24"}]]});
        let c = IpamConfig::from_ctx(&ctx(v, "")).unwrap();
        assert_eq!(c.range_sets.len(), 1);
        assert_eq!(c.range_sets[0].ranges[0].subnet.to_string(), "10.7.0.0/24");
    }

    #[test]
    fn invalid_configs_are_code_7_with_a_clear_message() {
        let cases = [
            (json!({}), "no IP ranges"),
            (json!({"ranges":[[{"subnet":"10.1.0.0/33"}]]}), "invalid subnet CIDR"),
            (
                json!({"ranges":[[{"subnet":"10.1.0.0/24","rangeStart":"10.2.0.1"}]]}),
                "rangeStart 10.2.0.1 is not in subnet",
            ),
            (
                json!({"ranges":[[{"subnet":"10.1.0.0/24","rangeStart":"10.1.0.9","rangeEnd":"10.1.0.3"}]]}),
                "after rangeEnd",
            ),
            (json!({"ranges":[[{"subnet":"10.1.0.0/24"}],[{"subnet":"10.1.0.0/25"}]]}), "overlaps with range set 1"),
            (json!({"ranges":[[{"subnet":"10.1.0.0/24"},{"subnet":"10.1.0.128/25"}]]}), "overlap"),
            (json!({"ranges":[[{"rangeStart":"10.1.0.1"}]]}), "missing \"subnet\""),
            (json!({"ranges":"10.0.0.0/8"}), "invalid ipam section"),
            (json!({"subnet":"10.0.0.0/24","routes":[{"dst":"nope"}]}), "invalid ipam section"),
        ];
        for (ipam, want) in cases {
            let e = IpamConfig::from_ctx(&ctx(conf(ipam.clone()), "")).unwrap_err();
            assert_eq!(e.code, cni_core::Code::InvalidConfig, "{ipam}");
            assert!(e.msg.contains(want), "{ipam}: {e}");
        }
        let no_ipam = json!({"cniVersion":"1.1.0","name":"n","type":"cni-ipam"});
        assert_eq!(IpamConfig::from_ctx(&ctx(no_ipam, "")).unwrap_err().code, cni_core::Code::InvalidConfig);
        let bad_ip = IpamConfig::from_ctx(&ctx(conf(json!({"subnet":"10.0.0.0/24"})), "IP=10.0.0.300")).unwrap_err();
        assert!(bad_ip.msg.contains("CNI_ARGS IP"), "{bad_ip}");
    }

    #[test]
    fn resolv_conf_parsing() {
        let d = parse_resolv_text(
            "# c\nnameserver 1.1.1.1\nnameserver 8.8.8.8\n; x\ndomain example.com\nsearch a.b c.d\noptions ndots:5 edns0\n",
        );
        assert_eq!(d.nameservers, ["1.1.1.1", "8.8.8.8"]);
        assert_eq!(d.domain, "example.com");
        assert_eq!(d.search, ["a.b", "c.d"]);
        assert_eq!(d.options, ["ndots:5", "edns0"]);
    }
}
