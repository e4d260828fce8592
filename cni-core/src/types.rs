//! Wire types of the CNI spec and their per-version encodings.
//!
//! Internally a result is always the 1.1.0 shape ([`CniResult`]); it is
//! decoded from any version we accept and encoded into the version the
//! config asked for with [`CniResult::to_json`].

use std::net::IpAddr;

use ipnetwork::IpNetwork;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};

use crate::error::{Code, Error, Result};
use crate::version::Version;

/// The fields every network configuration carries; plugins parse their own
/// keys from [`crate::Context::raw`].
#[derive(Debug, Clone, Default, Deserialize)]
pub struct NetConf {
    #[serde(rename = "cniVersion", default)]
    pub cni_version: Option<String>,
    #[serde(rename = "cniVersions", default)]
    pub cni_versions: Option<Vec<String>>,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(default)]
    pub ipam: Option<Value>,
    #[serde(rename = "prevResult", default)]
    pub prev_result: Option<Value>,
    #[serde(rename = "runtimeConfig", default)]
    pub runtime_config: Option<Value>,
    #[serde(default)]
    pub args: Option<Value>,
    #[serde(rename = "cni.dev/valid-attachments", default)]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// Older spelling injected by libcni >= 1.2.3 beside the one above.
    #[serde(rename = "cni.dev/attachments", default)]
    pub attachments: Option<Vec<Attachment>>,
    /// Where to write logs (our extension); stderr when absent.
    #[serde(rename = "logFile", default)]
    pub log_file: Option<String>,
    /// `error`, `warn` (default), `info`, `debug` or `trace` (our extension).
    #[serde(rename = "logLevel", default)]
    pub log_level: Option<String>,
}

impl NetConf {
    /// The IPAM plugin's `type`, if the config delegates to one.
    pub fn ipam_type(&self) -> Option<&str> {
        self.ipam.as_ref()?.get("type")?.as_str().filter(|s| !s.is_empty())
    }

    /// The attachments GC must keep, whichever key the runtime used.
    pub fn gc_valid_attachments(&self) -> Option<&[Attachment]> {
        self.valid_attachments.as_deref().or(self.attachments.as_deref())
    }
}

/// One attachment named in a GC request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CniResult {
    pub interfaces: Vec<Interface>,
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Interface {
    pub name: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub mac: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub sandbox: String,
    #[serde(rename = "socketPath", default, skip_serializing_if = "String::is_empty")]
    pub socket_path: String,
    #[serde(rename = "pciID", default, skip_serializing_if = "String::is_empty")]
    pub pci_id: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IpConfig {
    /// Address with the prefix length of its subnet, e.g. `10.1.0.5/24`.
    #[serde(with = "net_str")]
    pub address: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interface: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Route {
    #[serde(with = "net_str")]
    pub dst: IpNetwork,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gw: Option<IpAddr>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mtu: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub advmss: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub priority: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub table: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scope: Option<u8>,
}

impl Route {
    pub fn new(dst: IpNetwork, gw: Option<IpAddr>) -> Route {
        Route { dst, gw, mtu: None, advmss: None, priority: None, table: None, scope: None }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub domain: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self == &Dns::default()
    }
}

/// Serde helper: CIDRs as `"addr/len"` strings, keeping host bits.
pub mod net_str {
    use ipnetwork::IpNetwork;
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(n: &IpNetwork, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(n)
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<IpNetwork, D::Error> {
        let s = String::deserialize(d)?;
        // A bare address is a host route.
        if !s.contains('/') {
            let ip: std::net::IpAddr = s.parse().map_err(serde::de::Error::custom)?;
            return Ok(IpNetwork::from(ip));
        }
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Deserialize)]
struct AnyResult {
    #[serde(default)]
    interfaces: Vec<Interface>,
    #[serde(default)]
    ips: Vec<AnyIp>,
    #[serde(default)]
    routes: Vec<Route>,
    #[serde(default)]
    dns: Dns,
}

#[derive(Deserialize)]
struct AnyIp {
    #[serde(default)]
    version: Option<String>,
    #[serde(with = "net_str")]
    address: IpNetwork,
    #[serde(default)]
    gateway: Option<IpAddr>,
    #[serde(default)]
    interface: Option<usize>,
}

impl CniResult {
    /// Decodes a result of any version we accept (0.3.0 and later shapes).
    pub fn from_json(v: &Value) -> Result<CniResult> {
        if v.get("ip4").is_some() || v.get("ip6").is_some() {
            return Err(Error::new(Code::IncompatibleVersion, "results before 0.3.0 are not supported"));
        }
        let any: AnyResult =
            serde_json::from_value(v.clone()).map_err(|e| Error::new(Code::Decode, "decode result").with_details(e))?;
        let mut ips = Vec::with_capacity(any.ips.len());
        for ip in any.ips {
            if let Some(ver) = ip.version.as_deref() {
                let want = if ip.address.is_ipv4() { "4" } else { "6" };
                if ver != want {
                    return Err(Error::new(Code::Decode, "decode result")
                        .with_details(format!("ip {} says version {ver}", ip.address)));
                }
            }
            ips.push(IpConfig { address: ip.address, gateway: ip.gateway, interface: ip.interface });
        }
        Ok(CniResult { interfaces: any.interfaces, ips, routes: any.routes, dns: any.dns })
    }

    /// Encodes the result in the shape of `version`.
    pub fn to_json(&self, version: Version) -> Value {
        let mut out = Map::new();
        out.insert("cniVersion".into(), json!(version.as_str()));
        if !self.interfaces.is_empty() {
            let ifs: Vec<Value> = self
                .interfaces
                .iter()
                .map(|i| {
                    let mut i = i.clone();
                    if version < Version::V1_1_0 {
                        i.mtu = None;
                        i.socket_path.clear();
                        i.pci_id.clear();
                    }
                    serde_json::to_value(i).unwrap_or_default()
                })
                .collect();
            out.insert("interfaces".into(), Value::Array(ifs));
        }
        if !self.ips.is_empty() {
            let ips: Vec<Value> = self
                .ips
                .iter()
                .map(|ip| {
                    let mut v = serde_json::to_value(ip).unwrap_or_default();
                    if version.ips_carry_version() {
                        let fam = if ip.address.is_ipv4() { "4" } else { "6" };
                        v["version"] = json!(fam);
                    }
                    v
                })
                .collect();
            out.insert("ips".into(), Value::Array(ips));
        }
        if !self.routes.is_empty() {
            let routes: Vec<Value> = self
                .routes
                .iter()
                .map(|r| {
                    let r = if version < Version::V1_1_0 { Route::new(r.dst, r.gw) } else { r.clone() };
                    serde_json::to_value(r).unwrap_or_default()
                })
                .collect();
            out.insert("routes".into(), Value::Array(routes));
        }
        if !self.dns.is_empty() {
            out.insert("dns".into(), serde_json::to_value(&self.dns).unwrap_or_default());
        }
        Value::Object(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> CniResult {
        CniResult {
            interfaces: vec![Interface {
                name: "eth0".into(),
                mac: "0a:58:0a:01:00:05".into(),
                mtu: Some(1450),
                sandbox: "/var/run/netns/x".into(),
                ..Default::default()
            }],
            ips: vec![
                IpConfig {
                    address: "10.1.0.5/24".parse().unwrap(),
                    gateway: Some("10.1.0.1".parse().unwrap()),
                    interface: Some(0),
                },
                IpConfig { address: "fd00::5/64".parse().unwrap(), gateway: None, interface: Some(0) },
            ],
            routes: vec![Route {
                priority: Some(10),
                ..Route::new("0.0.0.0/0".parse().unwrap(), Some("10.1.0.1".parse().unwrap()))
            }],
            dns: Dns::default(),
        }
    }

    #[test]
    fn old_versions_carry_ip_version_and_drop_new_fields() {
        let j = sample().to_json(Version::V0_4_0);
        assert_eq!(j["cniVersion"], "0.4.0");
        assert_eq!(j["ips"][0]["version"], "4");
        assert_eq!(j["ips"][1]["version"], "6");
        assert!(j["interfaces"][0].get("mtu").is_none());
        assert!(j["routes"][0].get("priority").is_none());
    }

    #[test]
    fn v1_results_have_no_ip_version_and_1_1_keeps_mtu() {
        let j = sample().to_json(Version::V1_0_0);
        assert!(j["ips"][0].get("version").is_none());
        assert!(j["interfaces"][0].get("mtu").is_none());
        let j = sample().to_json(Version::V1_1_0);
        assert_eq!(j["interfaces"][0]["mtu"], 1450);
        assert_eq!(j["routes"][0]["priority"], 10);
        assert_eq!(j["ips"][0]["address"], "10.1.0.5/24");
    }

    #[test]
    fn every_shape_decodes_back_to_the_same_result() {
        let full = sample();
        let back = CniResult::from_json(&full.to_json(Version::V1_1_0)).unwrap();
        assert_eq!(back, full);
        let old = CniResult::from_json(&full.to_json(Version::V0_3_1)).unwrap();
        assert_eq!(old.ips, full.ips);
    }

    #[test]
    fn mismatched_ip_version_is_a_decode_error() {
        let v = json!({"cniVersion":"0.4.0","ips":[{"version":"6","address":"10.0.0.2/24"}]});
        assert_eq!(CniResult::from_json(&v).unwrap_err().code, Code::Decode);
    }
}
