//! `cni-overlay`: a CNI plugin when CNI_COMMAND is set; otherwise
//! `cni-overlay agent [flanneld flags]`, `cni-overlay leases [etcd flags]`,
//! `cni-overlay remove-host [etcd flags] SUBNET|PUBLIC-IP`.

use std::io::Write;

use cni_overlay::agent::{self, AgentArgs, AgentError};
use cni_overlay::{admin, plugin};

const USAGE: &str = "usage:
  cni-overlay agent [--etcd-endpoints URLS] [--etcd-prefix P] [--etcd-cafile F --etcd-certfile F --etcd-keyfile F]
                    [--public-ip IP] [--public-ipv6 IP6] [--iface NAME|IP] [--subnet-file F] [--ip-masq]
                    [--healthz-ip IP --healthz-port N] [--subnet-lease-ttl 24h] [--subnet-lease-renew-margin MINUTES]
  cni-overlay leases [--etcd-endpoints URLS] [--etcd-prefix P]
  cni-overlay remove-host [--etcd-endpoints URLS] [--etcd-prefix P] SUBNET|PUBLIC-IP
  (SUBNET, or the host's PublicIP or PublicIPv6)
  (with CNI_COMMAND set it is the CNI plugin, type \"cni-overlay\")";

fn main() {
    if std::env::var_os("CNI_COMMAND").is_some() {
        cni_core::skel::run(&plugin::Overlay);
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let Some(cmd) = args.first().cloned() else {
        eprintln!("{USAGE}");
        std::process::exit(2);
    };
    let level = std::env::var("CNI_OVERLAY_LOG").ok().and_then(|l| l.parse().ok()).unwrap_or(tracing::Level::INFO);
    let _ = tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).with_ansi(false).try_init();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cni-overlay: start runtime: {e}");
            std::process::exit(1);
        }
    };
    let outcome: Result<Option<String>, AgentError> = rt.block_on(async {
        match cmd.as_str() {
            "agent" => agent::run(AgentArgs::parse(&args[1..])?).await.map(|_| None),
            "leases" => admin::leases(&AgentArgs::parse(&args[1..])?).await.map(Some),
            "remove-host" => {
                let (target, flags) = args[1..].split_last().ok_or_else(|| AgentError::Usage(USAGE.into()))?;
                admin::remove_host(&AgentArgs::parse(flags)?, target).await.map(Some)
            }
            "-h" | "--help" | "help" => Ok(Some(format!("{USAGE}\n"))),
            other => Err(AgentError::Usage(format!("unknown command {other:?}\n{USAGE}"))),
        }
    });
    match outcome {
        Ok(out) => {
            if let Some(out) = out {
                let _ = std::io::stdout().write_all(out.as_bytes());
            }
        }
        Err(e) => {
            eprintln!("cni-overlay {cmd}: {e}");
            std::process::exit(match e {
                AgentError::Usage(_) => 2,
                _ => 1,
            });
        }
    }
}
