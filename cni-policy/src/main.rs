//! `cni-policy`: the chained CNI plugin when CNI_COMMAND is set; otherwise
//! `cni-policy watch|check|status|label` (`--help` for all).

use std::io::Write;

use clap::Parser;
use cni_policy::cli::{self, Cli, Cmd};
use cni_policy::{plugin, watch};

fn main() {
    // The CNI path first, before any argument parsing.
    if std::env::var_os("CNI_COMMAND").is_some() {
        cni_core::skel::run(&plugin::PolicyPlugin);
    }
    cni_core::skel::abort_on_panic();
    let cli = Cli::parse();
    let level = std::env::var("CNI_POLICY_LOG").ok().and_then(|l| l.parse().ok()).unwrap_or(tracing::Level::INFO);
    let _ = tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).with_ansi(false).try_init();
    let code = match cli.cmd {
        Cmd::Watch { dir, state_dir, resync_interval, etcd_endpoints, etcd_prefix, etcd_tls, node_name } => {
            match cli::watch_cluster(
                &state_dir,
                etcd_endpoints.as_ref(),
                etcd_prefix.as_deref(),
                &etcd_tls,
                node_name.as_deref(),
            )
            .and_then(|cluster| watch::run(&dir, &state_dir, resync_interval, cluster))
            {
                Ok(()) => 0,
                Err(e @ cni_policy::Error::DirMismatch { .. }) => {
                    fail("watch", &e);
                    2
                }
                Err(e) => fail("watch", &e),
            }
        }
        Cmd::Check { files } => match cli::check_files(&files) {
            Ok(()) => out("OK\n"),
            Err(errors) => {
                for e in errors {
                    eprintln!("{e}");
                }
                1
            }
        },
        Cmd::Status { state_dir, json } => match cli::status(&state_dir) {
            Ok(s) => {
                let printed = if json {
                    out(&format!("{}\n", serde_json::to_string_pretty(&s).unwrap_or_default()))
                } else {
                    out(&cli::status_table(&s))
                };
                // The endpoints first, then the error: an operator sees both.
                match &s.policy_error {
                    Some(e) => {
                        eprintln!("cni-policy status: {e}");
                        1
                    }
                    None => printed,
                }
            }
            Err(e) => fail("status", &e),
        },
        Cmd::Label { state_dir, container_id, labels } => match cli::label(&state_dir, &container_id, &labels) {
            Ok(changed) => {
                let names: Vec<&str> = changed.iter().map(|r| r.name.as_str()).collect();
                out(&format!("relabelled {}\n", names.join(" ")))
            }
            Err(e) => fail("label", &e),
        },
    };
    std::process::exit(code);
}

fn out(s: &str) -> i32 {
    let mut o = std::io::stdout().lock();
    if o.write_all(s.as_bytes()).and_then(|_| o.flush()).is_err() {
        return 1;
    }
    0
}

fn fail(cmd: &str, e: &cni_policy::Error) -> i32 {
    eprintln!("cni-policy {cmd}: {e}");
    1
}
