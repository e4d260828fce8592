//! The etcd flags every command line shares, as clap arguments to flatten
//! into a command's own (`cluster-ipam`, `cni-overlay agent`, the BGP
//! agent next): the names, help and checks are then the same everywhere.
//! `--etcd-endpoints` and `--etcd-prefix` stay with each command, because
//! their defaults and whether they are required differ; their values parse
//! with [`Endpoints`] and check with [`TlsFlags::config`].

use std::path::PathBuf;
use std::str::FromStr;

use crate::{parse_endpoints, EtcdConfig};

/// `--etcd-cafile`, `--etcd-certfile`, `--etcd-keyfile` (Flannel's names).
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct TlsFlags {
    /// CA certificate for TLS to etcd (endpoints must be https://)
    #[arg(long, value_name = "FILE")]
    pub etcd_cafile: Option<PathBuf>,
    /// Client certificate for TLS to etcd (with --etcd-keyfile)
    #[arg(long, value_name = "FILE", requires = "etcd_keyfile")]
    pub etcd_certfile: Option<PathBuf>,
    /// Client key for TLS to etcd (with --etcd-certfile)
    #[arg(long, value_name = "FILE", requires = "etcd_certfile")]
    pub etcd_keyfile: Option<PathBuf>,
}

impl TlsFlags {
    /// The client settings for these endpoints and prefix; with a TLS file
    /// set, every endpoint must be `https://`.
    pub fn config(&self, endpoints: &Endpoints, prefix: &str) -> Result<EtcdConfig, String> {
        let etcd = EtcdConfig {
            endpoints: endpoints.0.clone(),
            prefix: prefix.to_string(),
            ca_file: self.etcd_cafile.clone(),
            cert_file: self.etcd_certfile.clone(),
            key_file: self.etcd_keyfile.clone(),
        };
        etcd.check_tls_endpoints()?;
        Ok(etcd)
    }
}

/// An `--etcd-endpoints` value ([`parse_endpoints`]'s rules).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoints(pub Vec<String>);

impl FromStr for Endpoints {
    type Err = String;
    fn from_str(v: &str) -> Result<Endpoints, String> {
        parse_endpoints(v).map(Endpoints)
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Cmd {
        #[arg(long, default_value = "http://127.0.0.1:2379")]
        etcd_endpoints: Endpoints,
        #[command(flatten)]
        tls: TlsFlags,
    }

    #[test]
    fn tls_files_need_https_endpoints_and_come_as_a_pair() {
        let c = Cmd::try_parse_from(["x", "--etcd-cafile", "/ca.pem"]).unwrap();
        let e = c.tls.config(&c.etcd_endpoints, "/p").unwrap_err();
        assert!(e.contains("is not https://"), "{e}");
        let c =
            Cmd::try_parse_from(["x", "--etcd-endpoints", "https://a:2379, https://b:2379,", "--etcd-cafile", "/ca"])
                .unwrap();
        let cfg = c.tls.config(&c.etcd_endpoints, "/p").unwrap();
        assert_eq!(cfg.endpoints, ["https://a:2379", "https://b:2379"]);
        assert_eq!(cfg.ca_file.as_deref(), Some(std::path::Path::new("/ca")));
        let e = Cmd::try_parse_from(["x", "--etcd-certfile", "/c"]).unwrap_err().to_string();
        assert!(e.contains("--etcd-keyfile"), "{e}");
        let e = Cmd::try_parse_from(["x", "--etcd-endpoints", "a:2379"]).unwrap_err().to_string();
        assert!(e.contains("is not an http:// or https:// URL"), "{e}");
    }
}
