//! `<prefix>/config`: Flannel's network JSON.
//!
//! Keys, defaults and checks follow Flannel's `ParseConfig` +
//! `CheckNetworkConfig` (pkg/subnet/config.go) and its vxlan backend:
//!
//! * `Network` is the only required key.
//! * `SubnetLen` defaults to 24 when the Network is /22 or larger, else to
//!   netlen+2 (four subnets); a Network longer than /28 is refused; a given
//!   SubnetLen must be at most 30 and at least netlen+2.
//! * `SubnetMin` defaults to the subnet after the Network's first one,
//!   `SubnetMax` to the Network's last subnet; given ones must lie inside
//!   the Network and on a SubnetLen boundary. The same for `IPv6SubnetLen`
//!   (default 64 for /62 or larger, max 126, Network at most /124),
//!   `IPv6SubnetMin` and `IPv6SubnetMax`.
//! * Key names match case-insensitively and `null` means "not set", like
//!   Go's `encoding/json`. Unknown keys are ignored with a warning.
//!
//! Deliberate differences: only the `vxlan` and `host-gw` backends exist
//! here (Flannel's default is `udp`; ours, for a missing `Backend` or
//! `Backend.Type`, is `vxlan`); `EnableIPv4: false` (IPv6-only) is refused;
//! `Backend.GBP`/`Backend.Learning` set to true are refused rather than
//! silently ignored; `SubnetMin > SubnetMax` is refused.

use std::net::{Ipv4Addr, Ipv6Addr};

use ipnetwork::{Ipv4Network, Ipv6Network};
use serde_json::{json, Map, Value};

use super::{Error, Result};

/// Flannel's vxlan default VNI.
pub const DEFAULT_VNI: u32 = 1;
/// The Linux kernel's VXLAN port, Flannel's default on Linux.
pub const DEFAULT_VXLAN_PORT: u16 = 8472;
/// A VNI is 24 bits.
pub const MAX_VNI: u32 = (1 << 24) - 1;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendKind {
    #[default]
    Vxlan,
    HostGw,
}

impl BackendKind {
    /// Flannel's `Backend.Type` string (also the lease's `BackendType`).
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Vxlan => "vxlan",
            BackendKind::HostGw => "host-gw",
        }
    }
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `Backend` of the network JSON. `vni`, `port`, `direct_routing` and
/// `mtu` only mean something for vxlan.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    pub kind: BackendKind,
    pub vni: u32,
    pub port: u16,
    pub direct_routing: bool,
    /// VXLAN device MTU; None: the external interface's MTU minus overhead.
    pub mtu: Option<u32>,
}

impl Default for Backend {
    fn default() -> Self {
        Backend {
            kind: BackendKind::Vxlan,
            vni: DEFAULT_VNI,
            port: DEFAULT_VXLAN_PORT,
            direct_routing: false,
            mtu: None,
        }
    }
}

/// The parsed and checked network config, defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NetworkConfig {
    pub network: Ipv4Network,
    pub subnet_len: u8,
    pub subnet_min: Ipv4Addr,
    pub subnet_max: Ipv4Addr,
    pub enable_ipv6: bool,
    pub ipv6_network: Option<Ipv6Network>,
    /// 0 when IPv6 is off.
    pub ipv6_subnet_len: u8,
    /// Some when IPv6 is on.
    pub ipv6_subnet_min: Option<Ipv6Addr>,
    pub ipv6_subnet_max: Option<Ipv6Addr>,
    pub backend: Backend,
}

/// Key lookup with Go `encoding/json` rules: exact name first, then
/// case-insensitive; `null` is "absent".
struct Obj<'a> {
    map: &'a Map<String, Value>,
    /// "" or "Backend." (for messages)
    path: &'static str,
    known: &'static [&'static str],
}

impl<'a> Obj<'a> {
    fn get(&self, key: &str) -> Option<&'a Value> {
        let v =
            self.map.get(key).or_else(|| self.map.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))?;
        (!v.is_null()).then_some(v)
    }

    fn warn_unknown(&self) {
        for k in self.map.keys() {
            if !self.known.iter().any(|n| n.eq_ignore_ascii_case(k)) {
                tracing::warn!("network config: ignoring unknown key {}{k}", self.path);
            }
        }
    }

    fn bad(&self, key: &str, what: &str, v: &Value) -> Error {
        Error::InvalidConfig(format!("{}{key}: expected {what}, got {v}", self.path))
    }

    fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.get(key).map(|v| v.as_bool().ok_or_else(|| self.bad(key, "true or false", v))).transpose()
    }

    fn uint(&self, key: &str, max: u64) -> Result<Option<u64>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => {
                let n = v.as_u64().ok_or_else(|| self.bad(key, "a non-negative integer", v))?;
                if n > max {
                    return Err(Error::InvalidConfig(format!(
                        "{}{key} {n} is out of range (at most {max})",
                        self.path
                    )));
                }
                Ok(Some(n))
            }
        }
    }

    fn str(&self, key: &str) -> Result<Option<&'a str>> {
        self.get(key).map(|v| v.as_str().ok_or_else(|| self.bad(key, "a string", v))).transpose()
    }

    fn parsed<T: std::str::FromStr>(&self, key: &str, what: &str) -> Result<Option<T>> {
        match self.str(key)? {
            None => Ok(None),
            // ipnetwork reads "10.0.0.0" as a /32; Go's ParseCIDR wants the prefix.
            Some(s) if what.contains("CIDR") && !s.contains('/') => {
                Err(Error::InvalidConfig(format!("{}{key} {s:?} is not {what}", self.path)))
            }
            Some(s) => s
                .trim()
                .parse()
                .map(Some)
                .map_err(|_| Error::InvalidConfig(format!("{}{key} {s:?} is not {what}", self.path))),
        }
    }
}

const TOP_KEYS: &[&str] = &[
    "Network",
    "SubnetLen",
    "SubnetMin",
    "SubnetMax",
    "EnableIPv4",
    "EnableIPv6",
    "IPv6Network",
    "IPv6SubnetLen",
    "IPv6SubnetMin",
    "IPv6SubnetMax",
    "Backend",
    // Flannel keys with no meaning here.
    "EnableNFTables",
];
const BACKEND_KEYS: &[&str] = &["Type", "VNI", "Port", "DirectRouting", "MTU", "GBP", "Learning", "MacPrefix"];

fn invalid(msg: String) -> Error {
    Error::InvalidConfig(msg)
}

impl NetworkConfig {
    /// Parses and checks Flannel's network JSON, filling in its defaults.
    /// Errors name the offending key.
    pub fn parse(json: &[u8]) -> Result<NetworkConfig> {
        let root: Value = serde_json::from_slice(json).map_err(|e| invalid(format!("not valid JSON: {e}")))?;
        let map = root.as_object().ok_or_else(|| invalid(format!("expected a JSON object, got {root}")))?;
        let top = Obj { map, path: "", known: TOP_KEYS };
        top.warn_unknown();

        if top.bool("EnableIPv4")? == Some(false) {
            return Err(invalid("EnableIPv4 is false: IPv6-only networks are not supported".into()));
        }

        // Network (required). Like Flannel, host bits are dropped.
        let network: Ipv4Network = top
            .parsed("Network", "an IPv4 CIDR (e.g. \"10.244.0.0/16\")")?
            .ok_or_else(|| invalid("Network is missing: it is the one required key (e.g. \"10.244.0.0/16\")".into()))?;
        let network = Ipv4Network::new(network.network(), network.prefix()).expect("valid prefix");
        let netlen = network.prefix();

        let subnet_len = match top.uint("SubnetLen", 32)? {
            Some(n) if n > 0 => {
                let n = n as u8;
                if n > 30 {
                    return Err(invalid(format!("SubnetLen {n} is too long: at most 30 (a /31 or /32 holds no pods)")));
                }
                if n < netlen + 2 {
                    return Err(invalid(format!(
                        "SubnetLen {n} is too short for Network {network}: it must be at least {} so the Network \
                         holds four or more subnets (the first one is never leased)",
                        netlen + 2
                    )));
                }
                n
            }
            _ if netlen > 28 => {
                return Err(invalid(format!("Network {network} is too small: the smallest usable Network is a /28")));
            }
            _ if netlen <= 22 => 24,
            _ => netlen + 2,
        };
        let size = 1u32 << (32 - subnet_len);
        let mask = u32::MAX << (32 - subnet_len);
        let net_first = u32::from(network.network());
        let net_last = u32::from(network.broadcast());

        let check4 = |key: &str, ip: Ipv4Addr| -> Result<()> {
            if !network.contains(ip) {
                return Err(invalid(format!("{key} {ip} is outside Network {network}")));
            }
            if u32::from(ip) & mask != u32::from(ip) {
                return Err(invalid(format!("{key} {ip} is not on a /{subnet_len} (SubnetLen) boundary")));
            }
            Ok(())
        };
        let unset4 = |ip: Option<Ipv4Addr>| ip.filter(|ip| !ip.is_unspecified());
        let subnet_min = match unset4(top.parsed("SubnetMin", "an IPv4 address")?) {
            Some(ip) => check4("SubnetMin", ip).map(|_| ip)?,
            None => Ipv4Addr::from(net_first + size),
        };
        let subnet_max = match unset4(top.parsed("SubnetMax", "an IPv4 address")?) {
            Some(ip) => check4("SubnetMax", ip).map(|_| ip)?,
            None => Ipv4Addr::from(net_last & mask),
        };
        if subnet_min > subnet_max {
            return Err(invalid(format!("SubnetMin {subnet_min} is greater than SubnetMax {subnet_max}")));
        }

        // IPv6.
        let enable_ipv6 = top.bool("EnableIPv6")?.unwrap_or(false);
        let (mut ipv6_network, mut ipv6_subnet_len, mut ipv6_subnet_min, mut ipv6_subnet_max) = (None, 0, None, None);
        if enable_ipv6 {
            let net6: Ipv6Network = top
                .parsed("IPv6Network", "an IPv6 CIDR (e.g. \"fd00:10:244::/56\")")?
                .ok_or_else(|| invalid("EnableIPv6 is true but IPv6Network is missing".into()))?;
            let net6 = Ipv6Network::new(net6.network(), net6.prefix()).expect("valid prefix");
            let netlen6 = net6.prefix();
            let len6 = match top.uint("IPv6SubnetLen", 128)? {
                Some(n) if n > 0 => {
                    let n = n as u8;
                    if n > 126 {
                        return Err(invalid(format!("IPv6SubnetLen {n} is too long: at most 126")));
                    }
                    if n < netlen6 + 2 {
                        return Err(invalid(format!(
                            "IPv6SubnetLen {n} is too short for IPv6Network {net6}: it must be at least {} so the \
                             network holds four or more subnets",
                            netlen6 + 2
                        )));
                    }
                    n
                }
                _ if netlen6 > 124 => {
                    return Err(invalid(format!(
                        "IPv6Network {net6} is too small: the smallest usable IPv6Network is a /124"
                    )));
                }
                _ if netlen6 <= 62 => 64,
                _ => netlen6 + 2,
            };
            let size6 = 1u128 << (128 - len6);
            let mask6 = u128::MAX << (128 - len6);
            let first6 = u128::from(net6.network());
            let last6 = first6 | !(u128::MAX.checked_shl(128 - netlen6 as u32).unwrap_or(0));
            let check6 = |key: &str, ip: Ipv6Addr| -> Result<()> {
                if !net6.contains(ip) {
                    return Err(invalid(format!("{key} {ip} is outside IPv6Network {net6}")));
                }
                if u128::from(ip) & mask6 != u128::from(ip) {
                    return Err(invalid(format!("{key} {ip} is not on a /{len6} (IPv6SubnetLen) boundary")));
                }
                Ok(())
            };
            let unset6 = |ip: Option<Ipv6Addr>| ip.filter(|ip| !ip.is_unspecified());
            let min6 = match unset6(top.parsed("IPv6SubnetMin", "an IPv6 address")?) {
                Some(ip) => check6("IPv6SubnetMin", ip).map(|_| ip)?,
                None => Ipv6Addr::from(first6 + size6),
            };
            let max6 = match unset6(top.parsed("IPv6SubnetMax", "an IPv6 address")?) {
                Some(ip) => check6("IPv6SubnetMax", ip).map(|_| ip)?,
                None => Ipv6Addr::from(last6 & mask6),
            };
            if min6 > max6 {
                return Err(invalid(format!("IPv6SubnetMin {min6} is greater than IPv6SubnetMax {max6}")));
            }
            (ipv6_network, ipv6_subnet_len, ipv6_subnet_min, ipv6_subnet_max) =
                (Some(net6), len6, Some(min6), Some(max6));
        }

        let backend = match top.get("Backend") {
            None => Backend::default(),
            Some(Value::Object(b)) => parse_backend(&Obj { map: b, path: "Backend.", known: BACKEND_KEYS })?,
            Some(v) => return Err(top.bad("Backend", "an object (e.g. {\"Type\": \"vxlan\"})", v)),
        };

        Ok(NetworkConfig {
            network,
            subnet_len,
            subnet_min,
            subnet_max,
            enable_ipv6,
            ipv6_network,
            ipv6_subnet_len,
            ipv6_subnet_min,
            ipv6_subnet_max,
            backend,
        })
    }

    /// Flannel's JSON for this config, defaults spelled out (what an admin
    /// command writes to `<prefix>/config`). Parses back to `self`.
    pub fn to_json(&self) -> String {
        let mut v = json!({
            "Network": self.network.to_string(),
            "SubnetLen": self.subnet_len,
            "SubnetMin": self.subnet_min.to_string(),
            "SubnetMax": self.subnet_max.to_string(),
        });
        if self.enable_ipv6 {
            v["EnableIPv6"] = json!(true);
            v["IPv6Network"] = json!(self.ipv6_network.map(|n| n.to_string()));
            v["IPv6SubnetLen"] = json!(self.ipv6_subnet_len);
            v["IPv6SubnetMin"] = json!(self.ipv6_subnet_min.map(|n| n.to_string()));
            v["IPv6SubnetMax"] = json!(self.ipv6_subnet_max.map(|n| n.to_string()));
        }
        let b = &self.backend;
        v["Backend"] = match b.kind {
            BackendKind::HostGw => json!({"Type": "host-gw"}),
            BackendKind::Vxlan => {
                let mut o = json!({"Type": "vxlan", "VNI": b.vni, "Port": b.port, "DirectRouting": b.direct_routing});
                if let Some(mtu) = b.mtu {
                    o["MTU"] = json!(mtu);
                }
                o
            }
        };
        v.to_string()
    }

    /// Number of `/subnet_len` subnets in `subnet_min..=subnet_max`.
    pub fn pool_size(&self) -> u64 {
        ((u32::from(self.subnet_max) - u32::from(self.subnet_min)) as u64 >> (32 - self.subnet_len)) + 1
    }

    /// Whether a lease of these subnets may be (re)used under this config
    /// (Flannel's `isSubnetConfigCompat` + `isIPv6SubnetConfigCompat`, plus
    /// alignment).
    pub fn is_compatible(&self, subnet: Ipv4Network, ipv6_subnet: Option<Ipv6Network>) -> bool {
        let v6 = match (self.enable_ipv6, ipv6_subnet) {
            (false, v6) => v6.is_none(),
            (true, None) => false,
            (true, Some(sn6)) => self.is_compatible_v6(sn6),
        };
        self.is_compatible_v4(subnet) && v6
    }

    pub(crate) fn is_compatible_v4(&self, subnet: Ipv4Network) -> bool {
        subnet.prefix() == self.subnet_len
            && subnet.ip() == subnet.network()
            && subnet.ip() >= self.subnet_min
            && subnet.ip() <= self.subnet_max
    }

    pub(crate) fn is_compatible_v6(&self, sn6: Ipv6Network) -> bool {
        match (self.ipv6_subnet_min, self.ipv6_subnet_max) {
            (Some(min), Some(max)) => {
                sn6.prefix() == self.ipv6_subnet_len && sn6.ip() == sn6.network() && sn6.ip() >= min && sn6.ip() <= max
            }
            _ => false,
        }
    }
}

fn parse_backend(b: &Obj<'_>) -> Result<Backend> {
    b.warn_unknown();
    let kind = match b.str("Type")? {
        None | Some("vxlan") => BackendKind::Vxlan,
        Some("host-gw") => BackendKind::HostGw,
        Some(other) => {
            return Err(invalid(format!("Backend.Type {other:?} is not supported: use vxlan or host-gw")));
        }
    };
    let mut be = Backend { kind, ..Backend::default() };
    if kind == BackendKind::Vxlan {
        if let Some(vni) = b.get("VNI") {
            let n = vni.as_u64().ok_or_else(|| b.bad("VNI", "a non-negative integer", vni))?;
            if n > MAX_VNI as u64 {
                return Err(invalid(format!("Backend.VNI {n} is out of range: a VXLAN VNI is 0..=16777215")));
            }
            be.vni = n as u32;
        }
        be.port = match b.uint("Port", u16::MAX as u64)? {
            None | Some(0) => DEFAULT_VXLAN_PORT,
            Some(p) => p as u16,
        };
        be.direct_routing = b.bool("DirectRouting")?.unwrap_or(false);
        be.mtu = match b.uint("MTU", u32::MAX as u64)? {
            None | Some(0) => None,
            Some(m) if !(68..=65535).contains(&m) => {
                return Err(invalid(format!("Backend.MTU {m} is out of range: 68..=65535")));
            }
            Some(m) => Some(m as u32),
        };
        for key in ["GBP", "Learning"] {
            if b.bool(key)? == Some(true) {
                return Err(invalid(format!("Backend.{key} true is not supported (VXLAN runs in L3 mode)")));
            }
        }
    }
    Ok(be)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<NetworkConfig> {
        NetworkConfig::parse(s.as_bytes())
    }

    fn err(s: &str) -> String {
        parse(s).unwrap_err().to_string()
    }

    #[test]
    fn defaults() {
        let c = parse(r#"{"Network":"10.244.0.0/16"}"#).unwrap();
        assert_eq!(c.network, "10.244.0.0/16".parse().unwrap());
        assert_eq!(c.subnet_len, 24);
        assert_eq!(c.subnet_min, Ipv4Addr::new(10, 244, 1, 0));
        assert_eq!(c.subnet_max, Ipv4Addr::new(10, 244, 255, 0));
        assert_eq!(c.pool_size(), 255);
        assert!(!c.enable_ipv6);
        assert_eq!(c.ipv6_network, None);
        assert_eq!(c.backend, Backend::default());
        assert_eq!(c.backend.kind, BackendKind::Vxlan);
        assert_eq!((c.backend.vni, c.backend.port, c.backend.direct_routing, c.backend.mtu), (1, 8472, false, None));

        // /22 still gives /24s; smaller networks are split in four.
        assert_eq!(parse(r#"{"Network":"10.0.0.0/22"}"#).unwrap().subnet_len, 24);
        let c = parse(r#"{"Network":"10.0.0.0/25"}"#).unwrap();
        assert_eq!(
            (c.subnet_len, c.subnet_min, c.subnet_max),
            (27, "10.0.0.32".parse().unwrap(), "10.0.0.96".parse().unwrap())
        );
        let c = parse(r#"{"Network":"10.0.0.0/28"}"#).unwrap();
        assert_eq!((c.subnet_len, c.pool_size()), (30, 3));

        // Host bits dropped like Flannel; keys case-insensitive; null = unset.
        let c = parse(r#"{"network":"10.1.2.3/16","subnetlen":null,"backend":{"type":"host-gw"}}"#).unwrap();
        assert_eq!(c.network, "10.1.0.0/16".parse().unwrap());
        assert_eq!(c.backend.kind, BackendKind::HostGw);

        let c = parse(
            r#"{"Network":"10.0.0.0/8","SubnetLen":20,"SubnetMin":"10.10.0.0","SubnetMax":"10.99.240.0",
                "Backend":{"Type":"vxlan","VNI":4096,"Port":4789,"DirectRouting":true,"MTU":1450}}"#,
        )
        .unwrap();
        assert_eq!((c.subnet_len, c.pool_size()), (20, (0x0a63f000u64 - 0x0a0a0000) / 4096 + 1));
        assert_eq!(
            c.backend,
            Backend { kind: BackendKind::Vxlan, vni: 4096, port: 4789, direct_routing: true, mtu: Some(1450) }
        );

        // IPv6 defaults.
        let c = parse(r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/48"}"#).unwrap();
        assert_eq!(c.ipv6_subnet_len, 64);
        assert_eq!(c.ipv6_subnet_min, Some("fd00:10:0:1::".parse().unwrap()));
        assert_eq!(c.ipv6_subnet_max, Some("fd00:10:0:ffff::".parse().unwrap()));
        let c = parse(r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/120"}"#).unwrap();
        assert_eq!(c.ipv6_subnet_len, 122);

        // to_json round trip.
        for s in [
            r#"{"Network":"10.244.0.0/16"}"#,
            r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:10::/48","Backend":{"Type":"vxlan","MTU":1400}}"#,
            r#"{"Network":"10.0.0.0/16","Backend":{"Type":"host-gw"}}"#,
        ] {
            let c = parse(s).unwrap();
            assert_eq!(NetworkConfig::parse(c.to_json().as_bytes()).unwrap(), c, "{s}");
        }
    }

    #[test]
    fn validation_errors_name_the_key() {
        let cases: &[(&str, &str)] = &[
            ("[]", "expected a JSON object"),
            ("{", "not valid JSON"),
            ("{}", "Network is missing"),
            (r#"{"Network":"10.0.0.0"}"#, "Network \"10.0.0.0\" is not an IPv4 CIDR"),
            (r#"{"Network":"fd00::/64"}"#, "Network \"fd00::/64\" is not an IPv4 CIDR"),
            (r#"{"Network":10}"#, "Network: expected a string, got 10"),
            (r#"{"Network":"10.0.0.0/29"}"#, "Network 10.0.0.0/29 is too small"),
            (
                r#"{"Network":"10.0.0.0/16","SubnetLen":16}"#,
                "SubnetLen 16 is too short for Network 10.0.0.0/16: it must be at least 18",
            ),
            (r#"{"Network":"10.0.0.0/16","SubnetLen":17}"#, "SubnetLen 17 is too short"),
            (r#"{"Network":"10.0.0.0/16","SubnetLen":31}"#, "SubnetLen 31 is too long"),
            (r#"{"Network":"10.0.0.0/16","SubnetLen":"24"}"#, "SubnetLen: expected a non-negative integer"),
            (r#"{"Network":"10.0.0.0/16","SubnetLen":-1}"#, "SubnetLen: expected a non-negative integer"),
            (r#"{"Network":"10.0.0.0/16","SubnetLen":40}"#, "SubnetLen 40 is out of range"),
            (
                r#"{"Network":"10.0.0.0/16","SubnetMin":"10.1.0.0"}"#,
                "SubnetMin 10.1.0.0 is outside Network 10.0.0.0/16",
            ),
            (r#"{"Network":"10.0.0.0/16","SubnetMax":"11.0.0.0"}"#, "SubnetMax 11.0.0.0 is outside Network"),
            (
                r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.1.5"}"#,
                "SubnetMin 10.0.1.5 is not on a /24 (SubnetLen) boundary",
            ),
            (r#"{"Network":"10.0.0.0/16","SubnetMin":"x"}"#, "SubnetMin \"x\" is not an IPv4 address"),
            (
                r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.9.0","SubnetMax":"10.0.3.0"}"#,
                "SubnetMin 10.0.9.0 is greater than SubnetMax 10.0.3.0",
            ),
            (r#"{"Network":"10.0.0.0/16","EnableIPv4":false}"#, "EnableIPv4 is false"),
            (r#"{"Network":"10.0.0.0/16","EnableIPv6":true}"#, "EnableIPv6 is true but IPv6Network is missing"),
            (r#"{"Network":"10.0.0.0/16","EnableIPv6":"yes"}"#, "EnableIPv6: expected true or false"),
            (
                r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"10.0.0.0/8"}"#,
                "IPv6Network \"10.0.0.0/8\" is not an IPv6 CIDR",
            ),
            (
                r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/125"}"#,
                "IPv6Network fd00::/125 is too small",
            ),
            (
                r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/64","IPv6SubnetLen":65}"#,
                "IPv6SubnetLen 65 is too short",
            ),
            (
                r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/64","IPv6SubnetLen":127}"#,
                "IPv6SubnetLen 127 is too long",
            ),
            (
                r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMin":"fd01::"}"#,
                "IPv6SubnetMin fd01:: is outside IPv6Network fd00::/48",
            ),
            (
                r#"{"Network":"10.0.0.0/16","EnableIPv6":true,"IPv6Network":"fd00::/48","IPv6SubnetMax":"fd00::1"}"#,
                "IPv6SubnetMax fd00::1 is not on a /64",
            ),
            (r#"{"Network":"10.0.0.0/16","Backend":"vxlan"}"#, "Backend: expected an object"),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"Type":"udp"}}"#,
                "Backend.Type \"udp\" is not supported: use vxlan or host-gw",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"Type":"wireguard"}}"#,
                "Backend.Type \"wireguard\" is not supported",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","VNI":16777216}}"#,
                "Backend.VNI 16777216 is out of range: a VXLAN VNI is 0..=16777215",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","VNI":"1"}}"#,
                "Backend.VNI: expected a non-negative integer",
            ),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","Port":70000}}"#,
                "Backend.Port 70000 is out of range",
            ),
            (r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","MTU":20}}"#, "Backend.MTU 20 is out of range"),
            (r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","GBP":true}}"#, "Backend.GBP true is not supported"),
            (
                r#"{"Network":"10.0.0.0/16","Backend":{"Type":"vxlan","DirectRouting":1}}"#,
                "Backend.DirectRouting: expected true or false",
            ),
        ];
        for (json, want) in cases {
            let got = err(json);
            assert!(got.contains(want), "{json}: got {got:?}, want {want:?}");
            assert!(got.starts_with("invalid network config: "), "{got}");
        }
    }

    #[test]
    fn compatibility() {
        let c = parse(r#"{"Network":"10.0.0.0/16","SubnetMin":"10.0.5.0","SubnetMax":"10.0.9.0"}"#).unwrap();
        assert!(c.is_compatible("10.0.5.0/24".parse().unwrap(), None));
        assert!(c.is_compatible("10.0.9.0/24".parse().unwrap(), None));
        assert!(!c.is_compatible("10.0.4.0/24".parse().unwrap(), None));
        assert!(!c.is_compatible("10.0.10.0/24".parse().unwrap(), None));
        assert!(!c.is_compatible("10.0.6.0/25".parse().unwrap(), None));
        assert!(!c.is_compatible("10.0.6.1/24".parse().unwrap(), None));
        assert!(!c.is_compatible("10.0.6.0/24".parse().unwrap(), Some("fd00::/64".parse().unwrap())));
    }
}
