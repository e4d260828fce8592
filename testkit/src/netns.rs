//! Named network namespaces ("containers") with a Drop guard, and what the
//! suite observes inside them (addresses, links, pings).

use std::net::IpAddr;
use std::process::{Command, Stdio};

use serde_json::Value;

use crate::util::{ip, next_id, unique_name, Context, R, SYS_PATH};
use crate::{bail, ensure};

/// A network namespace created with `ip netns add cft-<pid>-<n>`; deleted on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
    path: String,
    deleted: bool,
}

impl Netns {
    pub fn new() -> R<Netns> {
        let name = unique_name(next_id());
        ip(&["netns", "add", &name]).ctx("create netns")?;
        let ns = Netns { path: format!("/var/run/netns/{name}"), name, deleted: false };
        ip(&["-n", &ns.name, "link", "set", "lo", "up"]).ctx("bring lo up")?;
        Ok(ns)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// The path passed as `CNI_NETNS`.
    pub fn path(&self) -> &str {
        &self.path
    }

    /// Deletes the namespace now (its veth ends die with it).
    pub fn delete(&mut self) -> R<()> {
        if !self.deleted {
            ip(&["netns", "del", &self.name]).ctx("delete netns")?;
            self.deleted = true;
        }
        Ok(())
    }

    /// Runs a command inside the namespace; returns (success, combined output).
    pub fn exec(&self, args: &[&str]) -> (bool, String) {
        let out = Command::new("ip")
            .args(["netns", "exec", &self.name])
            .args(args)
            .env("PATH", SYS_PATH)
            .stdin(Stdio::null())
            .output();
        match out {
            Ok(o) => (
                o.status.success(),
                format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr)),
            ),
            Err(e) => (false, format!("spawn ip netns exec: {e}")),
        }
    }

    /// Pings `dst` from inside the namespace (up to 3 tries of one echo).
    pub fn ping(&self, dst: IpAddr) -> R<()> {
        let d = dst.to_string();
        let mut last = String::new();
        for _ in 0..3 {
            let (ok, out) = self.exec(&["ping", "-c", "1", "-W", "2", "-q", &d]);
            if ok {
                return Ok(());
            }
            last = out;
        }
        bail!("ping {} -> {d} failed: {}", self.name, crate::util::clip(&last, 160))
    }

    /// `ip -j addr show dev IFNAME` inside the namespace, or None if the link is absent.
    pub fn link(&self, ifname: &str) -> Option<LinkInfo> {
        let out = ip(&["-n", &self.name, "-j", "addr", "show", "dev", ifname]).ok()?;
        let v: Value = serde_json::from_str(&out).ok()?;
        let l = v.as_array()?.first()?;
        let addrs = l["addr_info"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|ai| {
                        let ip: IpAddr = ai["local"].as_str()?.parse().ok()?;
                        let len = ai["prefixlen"].as_u64()? as u8;
                        Some((ip, len))
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(LinkInfo {
            mac: l["address"].as_str().unwrap_or("").to_string(),
            mtu: l["mtu"].as_u64().unwrap_or(0) as u32,
            up: l["operstate"].as_str() == Some("UP")
                || l["flags"].as_array().is_some_and(|f| f.iter().any(|x| x == "UP")),
            addrs,
        })
    }

    /// Fails unless `addr/len` is configured on `ifname` in this namespace.
    pub fn expect_addr(&self, ifname: &str, addr: IpAddr, len: u8) -> R<()> {
        let Some(l) = self.link(ifname) else {
            bail!("{ifname} does not exist in netns {}", self.name);
        };
        ensure!(
            l.addrs.contains(&(addr, len)),
            "{addr}/{len} is not configured on {ifname} in {} (has {:?})",
            self.name,
            l.addrs
        );
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if !self.deleted {
            let _ = ip(&["netns", "del", &self.name]);
        }
    }
}

/// What `ip -j addr` says about one link.
#[derive(Debug, Clone)]
pub struct LinkInfo {
    pub mac: String,
    pub mtu: u32,
    pub up: bool,
    pub addrs: Vec<(IpAddr, u8)>,
}
