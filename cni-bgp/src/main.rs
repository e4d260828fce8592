//! `cni-bgp`: the CNI plugin when CNI_COMMAND is set; otherwise the node
//! agent (`agent`) and the commands `status`, `routes`, `config show|set`,
//! `peer add|remove`, `nodes`, `completions` (`--help` for all).

use std::io::Write;

use clap::Parser;
use cni_bgp::cli::{self, Cli};

fn main() {
    // The CNI path first, before any argument parsing: clap is never touched there.
    if std::env::var_os("CNI_COMMAND").is_some() {
        cni_core::skel::run(&cni_bgp::plugin::Bgp);
    }
    cni_core::skel::abort_on_panic();
    let cli = Cli::try_parse().unwrap_or_else(|e| e.exit());
    let level = match &cli.cmd {
        cli::Cmd::Agent(f) => f.log_level,
        _ => std::env::var("CNI_BGP_LOG").ok().and_then(|l| l.parse().ok()).unwrap_or(tracing::Level::WARN),
    };
    // The level applies to our crates; the etcd client's transport (tonic,
    // hyper, tower) logs at warn at most, or its debug lines drown ours.
    let ours = ["cni_bgp", "bgp", "etcd_kv", "linux_net", "cluster_ipam"];
    let filter = tracing_subscriber::filter::Targets::new()
        .with_targets(ours.map(|t| (t, level)))
        .with_default(level.min(tracing::Level::WARN));
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr).with_ansi(false))
        .with(filter)
        .try_init();
    let rt = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("cni-bgp: start runtime: {e}");
            std::process::exit(1);
        }
    };
    match rt.block_on(cli::run(cli.cmd)) {
        Ok(out) => {
            let _ = std::io::stdout().write_all(out.as_bytes());
        }
        Err(f) => {
            eprintln!("cni-bgp: {}", f.message);
            std::process::exit(f.code);
        }
    }
}
