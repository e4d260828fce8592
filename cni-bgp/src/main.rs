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
    let cli = Cli::try_parse().unwrap_or_else(|e| e.exit());
    let level = match &cli.cmd {
        cli::Cmd::Agent(f) => f.log_level,
        _ => std::env::var("CNI_BGP_LOG").ok().and_then(|l| l.parse().ok()).unwrap_or(tracing::Level::WARN),
    };
    let _ = tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).with_ansi(false).try_init();
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
