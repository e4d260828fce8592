//! Admin commands: what `etcdctl ls <prefix>/subnets` shows for Flannel, and
//! removing a host (its lease and so, on every other host, its routes).

use std::net::IpAddr;

use ipnetwork::Ipv4Network;

use crate::agent::AgentError;
use subnet_lease::{EtcdConfig, Lease, SubnetManager};

/// `cni-overlay leases [etcd flags]`: one line per host lease; dual-stack
/// leases show their IPv6 subnet and public address too.
pub async fn leases(etcd: &EtcdConfig) -> Result<String, AgentError> {
    let sm = SubnetManager::connect(etcd).await?;
    let (leases, _) = sm.leases().await?;
    Ok(format_leases(&leases))
}

fn format_leases(leases: &[Lease]) -> String {
    let row = |cols: [&str; 7]| {
        format!(
            "{:<20} {:<16} {:<10} {:<19} {:<11} {:<24} {}\n",
            cols[0], cols[1], cols[2], cols[3], cols[4], cols[5], cols[6]
        )
    };
    let mut out = row(["SUBNET", "PUBLIC IP", "BACKEND", "VTEP MAC", "EXPIRES IN", "IPV6 SUBNET", "PUBLIC IPV6"]);
    for l in leases {
        let mac = l.attrs.backend_data.get("VtepMAC").and_then(|m| m.as_str()).unwrap_or("-").to_string();
        let ttl = l.expires_in.map(|d| format!("{}s", d.as_secs())).unwrap_or_else(|| "-".into());
        let v6 = l.ipv6_subnet.map(|n| n.to_string()).unwrap_or_else(|| "-".into());
        let pub6 = l.attrs.public_ipv6.map(|a| a.to_string()).unwrap_or_else(|| "-".into());
        let (subnet, public) = (l.subnet.to_string(), l.attrs.public_ip.to_string());
        out += &row([&subnet, &public, &l.attrs.backend_type, &mac, &ttl, &v6, &pub6]);
    }
    out
}

/// `cni-overlay remove-host [etcd flags] <SUBNET|PUBLIC-IP>`.
pub async fn remove_host(etcd: &EtcdConfig, which: &str) -> Result<String, AgentError> {
    let sm = SubnetManager::connect(etcd).await?;
    let subnet: Ipv4Network = if let Ok(n) = which.parse::<Ipv4Network>() {
        n
    } else if let Ok(ip) = which.parse::<IpAddr>() {
        let (leases, _) = sm.leases().await?;
        leases
            .iter()
            .find(|l| match ip {
                IpAddr::V4(v4) => l.attrs.public_ip == v4,
                IpAddr::V6(v6) => l.attrs.public_ipv6 == Some(v6),
            })
            .map(|l| l.subnet)
            .ok_or_else(|| AgentError::Usage(format!("no lease has public address {ip}")))?
    } else {
        return Err(AgentError::Usage(format!("{which:?} is neither a subnet nor an IPv4/IPv6 address")));
    };
    if sm.remove(subnet).await? {
        Ok(format!("removed lease {subnet}\n"))
    } else {
        Err(AgentError::Usage(format!("no lease for {subnet}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use subnet_lease::LeaseAttrs;

    #[test]
    fn a_dual_stack_lease_lists_both_halves() {
        let mut attrs = LeaseAttrs::new(
            "192.168.1.2".parse().unwrap(),
            "vxlan",
            serde_json::json!({"VtepMAC": "0e:00:00:00:00:01"}),
        );
        attrs.public_ipv6 = Some("fd00::2".parse().unwrap());
        let lease = Lease {
            subnet: "10.244.3.0/24".parse().unwrap(),
            ipv6_subnet: Some("fd10:0:0:3::/64".parse().unwrap()),
            attrs,
            etcd_lease: 7,
            expires_in: Some(std::time::Duration::from_secs(90)),
            revision: 1,
        };
        let out = format_leases(&[lease]);
        let line = out.lines().nth(1).expect("one lease line");
        for want in ["10.244.3.0/24", "192.168.1.2", "vxlan", "0e:00:00:00:00:01", "90s", "fd10:0:0:3::/64", "fd00::2"]
        {
            assert!(line.contains(want), "{want} missing in {line:?}");
        }
    }
}
