//! Admin commands: what `etcdctl ls <prefix>/subnets` shows for Flannel, and
//! removing a host (its lease and so, on every other host, its routes).

use std::net::Ipv4Addr;

use ipnetwork::Ipv4Network;

use crate::agent::{AgentArgs, AgentError};
use ipam::cluster::subnet::SubnetManager;

/// `cni-overlay leases [etcd flags]`: one line per host lease.
pub async fn leases(args: &AgentArgs) -> Result<String, AgentError> {
    let sm = SubnetManager::connect(&args.etcd).await?;
    let (leases, _) = sm.leases().await?;
    let mut out =
        format!("{:<20} {:<16} {:<10} {:<19} {}\n", "SUBNET", "PUBLIC IP", "BACKEND", "VTEP MAC", "EXPIRES IN");
    for l in leases {
        let mac = l.attrs.backend_data.get("VtepMAC").and_then(|m| m.as_str()).unwrap_or("-").to_string();
        let ttl = l.expires_in.map(|d| format!("{}s", d.as_secs())).unwrap_or_else(|| "-".into());
        out +=
            &format!("{:<20} {:<16} {:<10} {:<19} {}\n", l.subnet, l.attrs.public_ip, l.attrs.backend_type, mac, ttl);
    }
    Ok(out)
}

/// `cni-overlay remove-host [etcd flags] <SUBNET|PUBLIC-IP>`.
pub async fn remove_host(args: &AgentArgs, which: &str) -> Result<String, AgentError> {
    let sm = SubnetManager::connect(&args.etcd).await?;
    let subnet: Ipv4Network = if let Ok(n) = which.parse::<Ipv4Network>() {
        n
    } else if let Ok(ip) = which.parse::<Ipv4Addr>() {
        let (leases, _) = sm.leases().await?;
        leases
            .iter()
            .find(|l| l.attrs.public_ip == ip)
            .map(|l| l.subnet)
            .ok_or_else(|| AgentError::Usage(format!("no lease has PublicIP {ip}")))?
    } else {
        return Err(AgentError::Usage(format!("{which:?} is neither a subnet nor an IPv4 address")));
    };
    if sm.remove(subnet).await? {
        Ok(format!("removed lease {subnet}\n"))
    } else {
        Err(AgentError::Usage(format!("no lease for {subnet}")))
    }
}
