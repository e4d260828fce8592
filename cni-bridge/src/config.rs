//! The bridge's own config keys (the reference bridge's, same names and defaults).

use serde::Deserialize;

use cni_core::{Context, Error, Result};

#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BridgeConf {
    #[serde(default = "default_bridge")]
    pub bridge: String,
    #[serde(default)]
    pub is_gateway: bool,
    #[serde(default)]
    pub is_default_gateway: bool,
    #[serde(default)]
    pub force_address: bool,
    #[serde(default)]
    pub ip_masq: bool,
    /// Accepted for compatibility; masquerade is always nftables over netlink.
    #[serde(default)]
    pub ip_masq_backend: Option<String>,
    #[serde(default)]
    pub mtu: Option<u32>,
    #[serde(default)]
    pub hairpin_mode: bool,
    #[serde(default)]
    pub promisc_mode: bool,
    #[serde(default)]
    pub vlan: Option<u16>,
    #[serde(default)]
    pub vlan_trunk: Vec<Trunk>,
    #[serde(default = "yes")]
    pub preserve_default_vlan: bool,
    #[serde(default, rename = "macspoofchk")]
    pub mac_spoof_check: bool,
    #[serde(default, rename = "enabledad")]
    pub enable_dad: bool,
    #[serde(default)]
    pub port_isolation: bool,
    #[serde(default)]
    pub disable_container_interface: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct Trunk {
    #[serde(default)]
    pub id: Option<u16>,
    #[serde(default, rename = "minID")]
    pub min_id: Option<u16>,
    #[serde(default, rename = "maxID")]
    pub max_id: Option<u16>,
}

fn default_bridge() -> String {
    "cni0".to_string()
}

fn yes() -> bool {
    true
}

impl BridgeConf {
    pub fn parse(ctx: &Context) -> Result<BridgeConf> {
        let mut c: BridgeConf = serde_json::from_value(ctx.raw.clone())
            .map_err(|e| Error::config("invalid bridge config").with_details(e))?;
        if c.is_default_gateway {
            c.is_gateway = true;
        }
        c.validate(ctx)?;
        Ok(c)
    }

    fn validate(&self, ctx: &Context) -> Result<()> {
        if self.bridge.is_empty() || self.bridge.len() > 15 || self.bridge.contains(['/', ':', ' ']) {
            return Err(Error::config("invalid bridge name").with_details(format!("{:?}", self.bridge)));
        }
        if self.hairpin_mode && self.promisc_mode {
            return Err(Error::config("cannot set hairpin mode and promiscuous mode at the same time"));
        }
        if let Some(mtu) = self.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(Error::config("invalid mtu").with_details(format!("{mtu} is outside 68..65535")));
            }
        }
        if let Some(v) = self.vlan {
            if v > 4094 {
                return Err(Error::config("invalid VLAN ID").with_details(format!("{v} (must be 0-4094)")));
            }
            if v > 0 && !self.vlan_trunk.is_empty() {
                return Err(Error::config("cannot set vlan and vlanTrunk at the same time"));
            }
        }
        self.trunk_vids()?;
        if self.disable_container_interface && ctx.conf.ipam_type().is_some() {
            return Err(Error::config("cannot use IPAM when disableContainerInterface is set"));
        }
        if let Some(b) = &self.ip_masq_backend {
            if b != "iptables" && b != "nftables" {
                return Err(Error::config("invalid ipMasqBackend").with_details(format!("{b:?}: iptables or nftables")));
            }
        }
        Ok(())
    }

    pub fn access_vlan(&self) -> Option<u16> {
        self.vlan.filter(|v| *v > 0)
    }

    /// Every VLAN id of `vlanTrunk`, expanded and checked.
    pub fn trunk_vids(&self) -> Result<Vec<u16>> {
        let mut out = Vec::new();
        for t in &self.vlan_trunk {
            let bad = |what: String| Error::config("invalid vlanTrunk").with_details(what);
            match (t.id, t.min_id, t.max_id) {
                (Some(id), None, None) => {
                    if !(1..=4094).contains(&id) {
                        return Err(bad(format!("id {id} is outside 1-4094")));
                    }
                    out.push(id);
                }
                (None, Some(lo), Some(hi)) => {
                    if !(1..=4094).contains(&lo) || !(1..=4094).contains(&hi) || lo > hi {
                        return Err(bad(format!("range {lo}-{hi} must be within 1-4094 and ordered")));
                    }
                    out.extend(lo..=hi);
                }
                _ => return Err(bad("each entry is {\"id\"} or {\"minID\",\"maxID\"}".into())),
            }
        }
        out.sort_unstable();
        out.dedup();
        Ok(out)
    }

    pub fn vlan_filtering(&self) -> bool {
        self.access_vlan().is_some() || !self.vlan_trunk.is_empty()
    }
}

/// The container MAC asked for through runtimeConfig `mac`, `args.cni.mac` or CNI_ARGS `MAC`.
pub fn requested_mac(ctx: &Context) -> Result<Option<[u8; 6]>> {
    let from_rt = ctx.conf.runtime_config.as_ref().and_then(|r| r.get("mac")).and_then(|m| m.as_str());
    let from_args = ctx.conf.args.as_ref().and_then(|a| a.pointer("/cni/mac")).and_then(|m| m.as_str());
    let from_env = ctx.args.get("MAC");
    match from_rt.or(from_args).or(from_env) {
        None | Some("") => Ok(None),
        Some(s) => linux_net::link::parse_mac(s)
            .map(Some)
            .ok_or_else(|| Error::config("invalid MAC address requested").with_details(format!("{s:?}"))),
    }
}
