//! Flannel's subnet file (`/run/flannel/subnet.env`): what the agent hands
//! to the CNI side.
//!
//! ```text
//! FLANNEL_NETWORK=10.244.0.0/16
//! FLANNEL_SUBNET=10.244.1.1/24
//! FLANNEL_IPV6_NETWORK=fd00:10::/48      (dual stack only)
//! FLANNEL_IPV6_SUBNET=fd00:10:0:1::1/64  (dual stack only)
//! FLANNEL_MTU=1450
//! FLANNEL_IPMASQ=true
//! ```
//!
//! `FLANNEL_SUBNET` is the lease's first usable address with the lease's
//! prefix length (the bridge gateway), not the subnet itself. Writes are
//! atomic: a temp file in the same directory, fsync, `rename(2)`.

use std::io::{self, Write};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::Path;

use ipnetwork::{Ipv4Network, Ipv6Network};

use crate::{Lease, NetworkConfig};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetFile {
    /// FLANNEL_NETWORK
    pub network: Ipv4Network,
    /// FLANNEL_SUBNET: first usable IP / lease prefix, e.g. 10.244.1.1/24.
    pub subnet: Ipv4Network,
    /// FLANNEL_IPV6_NETWORK
    pub ipv6_network: Option<Ipv6Network>,
    /// FLANNEL_IPV6_SUBNET: first usable IP / lease prefix.
    pub ipv6_subnet: Option<Ipv6Network>,
    /// FLANNEL_MTU (the pod MTU)
    pub mtu: u32,
    /// FLANNEL_IPMASQ
    pub ipmasq: bool,
}

impl SubnetFile {
    /// The file for `lease` under `cfg`.
    pub fn new(cfg: &NetworkConfig, lease: &Lease, mtu: u32, ipmasq: bool) -> SubnetFile {
        let first4 = Ipv4Addr::from(u32::from(lease.subnet.network()).wrapping_add(1));
        let subnet = Ipv4Network::new(first4, lease.subnet.prefix()).expect("valid prefix");
        let (ipv6_network, ipv6_subnet) = match (cfg.enable_ipv6, cfg.ipv6_network, lease.ipv6_subnet) {
            (true, Some(net6), Some(sn6)) => {
                let first6 = Ipv6Addr::from(u128::from(sn6.network()).wrapping_add(1));
                (Some(net6), Some(Ipv6Network::new(first6, sn6.prefix()).expect("valid prefix")))
            }
            _ => (None, None),
        };
        SubnetFile { network: cfg.network, subnet, ipv6_network, ipv6_subnet, mtu, ipmasq }
    }

    /// The leased subnet (host bits cleared): `previous` for
    /// `SubnetManager::acquire` after an agent restart.
    pub fn lease_subnet(&self) -> Ipv4Network {
        Ipv4Network::new(self.subnet.network(), self.subnet.prefix()).expect("valid prefix")
    }

    /// The leased IPv6 subnet, if any.
    pub fn lease_ipv6_subnet(&self) -> Option<Ipv6Network> {
        self.ipv6_subnet.map(|s| Ipv6Network::new(s.network(), s.prefix()).expect("valid prefix"))
    }

    /// The file's text, in Flannel's line order.
    pub fn render(&self) -> String {
        let mut s = format!("FLANNEL_NETWORK={}\nFLANNEL_SUBNET={}\n", self.network, self.subnet);
        if let (Some(n), Some(sn)) = (self.ipv6_network, self.ipv6_subnet) {
            s.push_str(&format!("FLANNEL_IPV6_NETWORK={n}\nFLANNEL_IPV6_SUBNET={sn}\n"));
        }
        s.push_str(&format!("FLANNEL_MTU={}\nFLANNEL_IPMASQ={}\n", self.mtu, self.ipmasq));
        s
    }

    /// Parses the file's text. Blank lines, `#` comments, an `export `
    /// prefix, quotes around values and unknown keys are tolerated;
    /// FLANNEL_NETWORK, FLANNEL_SUBNET, FLANNEL_MTU and FLANNEL_IPMASQ are
    /// required.
    pub fn parse(text: &str) -> io::Result<SubnetFile> {
        let bad = |msg: String| io::Error::new(io::ErrorKind::InvalidData, msg);
        let (mut network, mut subnet, mut net6, mut sn6, mut mtu, mut ipmasq) = (None, None, None, None, None, None);
        for (no, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let line = line.strip_prefix("export ").unwrap_or(line);
            let Some((k, v)) = line.split_once('=') else {
                return Err(bad(format!("line {}: expected KEY=VALUE, got {line:?}", no + 1)));
            };
            let v = v.trim().trim_matches('"');
            let k = k.trim();
            fn p<T: std::str::FromStr>(k: &str, v: &str) -> io::Result<T> {
                v.parse().map_err(|_| io::Error::new(io::ErrorKind::InvalidData, format!("{k}={v}: bad value")))
            }
            match k {
                "FLANNEL_NETWORK" => network = Some(p::<Ipv4Network>(k, v)?),
                "FLANNEL_SUBNET" => subnet = Some(p::<Ipv4Network>(k, v)?),
                "FLANNEL_IPV6_NETWORK" => net6 = Some(p::<Ipv6Network>(k, v)?),
                "FLANNEL_IPV6_SUBNET" => sn6 = Some(p::<Ipv6Network>(k, v)?),
                "FLANNEL_MTU" => mtu = Some(p::<u32>(k, v)?),
                "FLANNEL_IPMASQ" => ipmasq = Some(p::<bool>(k, v)?),
                _ => {}
            }
        }
        let missing = |k: &str| bad(format!("{k} is missing"));
        Ok(SubnetFile {
            network: network.ok_or_else(|| missing("FLANNEL_NETWORK"))?,
            subnet: subnet.ok_or_else(|| missing("FLANNEL_SUBNET"))?,
            ipv6_network: net6,
            ipv6_subnet: sn6,
            mtu: mtu.ok_or_else(|| missing("FLANNEL_MTU"))?,
            ipmasq: ipmasq.ok_or_else(|| missing("FLANNEL_IPMASQ"))?,
        })
    }
}

/// Writes `file` to `path` atomically (temp file in the same directory,
/// fsync, rename, directory fsync). Creates the directory (0755) if needed;
/// keeps an existing file's permissions, else 0644.
pub fn write_subnet_file(path: impl AsRef<Path>, file: &SubnetFile) -> io::Result<()> {
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let path = path.as_ref();
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    let name = path.file_name().ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "no file name"))?;
    let mode = std::fs::metadata(path).map(|m| m.permissions().mode() & 0o7777).unwrap_or(0o644);
    let tmp = dir.join(format!(".{}.tmp.{}", name.to_string_lossy(), std::process::id()));
    let result = (|| {
        let mut f = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(mode).open(&tmp)?;
        f.set_permissions(std::fs::Permissions::from_mode(mode))?;
        f.write_all(file.render().as_bytes())?;
        f.sync_all()?;
        drop(f);
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result
}

/// Reads and parses a subnet file.
pub fn read_subnet_file(path: impl AsRef<Path>) -> io::Result<SubnetFile> {
    let path = path.as_ref();
    let text = std::fs::read_to_string(path)?;
    SubnetFile::parse(&text).map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_flannel_output() {
        let f = SubnetFile::parse(
            "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
        )
        .unwrap();
        assert_eq!(f.lease_subnet(), "10.244.1.0/24".parse().unwrap());
        assert_eq!((f.mtu, f.ipmasq, f.ipv6_subnet), (1450, true, None));
        let e =
            SubnetFile::parse("FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n").unwrap_err();
        assert_eq!(e.to_string(), "FLANNEL_SUBNET is missing");
        let e = SubnetFile::parse("FLANNEL_MTU=big").unwrap_err();
        assert_eq!(e.to_string(), "FLANNEL_MTU=big: bad value");
    }
}
