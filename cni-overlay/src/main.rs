//! `cni-overlay`: a CNI plugin when CNI_COMMAND is set; otherwise
//! `cni-overlay agent [flanneld flags]`, `cni-overlay leases [etcd flags]`,
//! `cni-overlay remove-host [etcd flags] SUBNET|PUBLIC-IP` (`--help` for all).

use std::io::Write;

use cni_overlay::agent::{self, AgentArgs, AgentError};
use cni_overlay::cli::{Cli, Cmd};
use cni_overlay::{admin, plugin};

fn main() {
    // The CNI path first, before any argument parsing: clap is never touched there.
    if std::env::var_os("CNI_COMMAND").is_some() {
        cni_core::skel::run(&plugin::Overlay);
    }
    cni_core::skel::abort_on_panic();
    let args: Vec<String> = std::env::args().skip(1).collect();
    let cli = Cli::try_parse_args(&args).unwrap_or_else(|e| e.exit());
    let name = args.first().cloned().unwrap_or_default();
    if let Cmd::Completions { shell } = cli.cmd {
        let _ = std::io::stdout().write_all(&Cli::completions(shell));
        return;
    }
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
        match cli.cmd {
            Cmd::Agent(flags) => agent::run(AgentArgs::from_flags(&flags)?).await.map(|_| None),
            Cmd::Leases(etcd) => admin::leases(&etcd.config()?).await.map(Some),
            Cmd::RemoveHost { etcd, target } => admin::remove_host(&etcd.config()?, &target).await.map(Some),
            Cmd::Completions { .. } => Ok(None),
        }
    });
    match outcome {
        Ok(out) => {
            if let Some(out) = out {
                let _ = std::io::stdout().write_all(out.as_bytes());
            }
        }
        Err(e) => {
            eprintln!("cni-overlay {name}: {e}");
            std::process::exit(match e {
                AgentError::Usage(_) => 2,
                _ => 1,
            });
        }
    }
}
