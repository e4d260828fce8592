//! `cni-ipam remove-host …` and `cni-ipam blocks …`: the admin commands the
//! plugin binary runs when `CNI_COMMAND` is unset and arguments are given.

use std::io::Write;

use clap::builder::NonEmptyStringValueParser;
use clap::{Args, Parser, Subcommand};

use super::client::{block_on, ADMIN_DEADLINE};
use super::{block_range, list_blocks, remove_host, DEFAULT_PREFIX};
use etcd_kv::flags::{Endpoints, TlsFlags};
use etcd_kv::EtcdConfig;

/// The admin commands (clap derive). The CNI path never builds this: main
/// decides on `CNI_COMMAND` and `argc` before any parsing.
#[derive(Debug, Parser)]
#[command(
    name = "cni-ipam",
    about = "Admin commands of cni-ipam's cluster (affine blocks) mode",
    after_help = "Without arguments, or with CNI_COMMAND set, cni-ipam is the CNI plugin.",
    args_override_self = true,
    subcommand_required = true
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Frees HOST's blocks and every allocation recorded for it
    ///
    /// Blocks in which other hosts still borrow addresses are kept without a host until the
    /// last one is freed. Run it only for a host that is gone.
    RemoveHost {
        #[command(flatten)]
        target: Target,
        /// The host's name, as in `ipam.cluster.host` (default: its hostname)
        #[arg(value_name = "HOST", value_parser = parse_host)]
        host: String,
    },
    /// Lists the network's blocks with their host and allocation counts
    Blocks {
        #[command(flatten)]
        target: Target,
    },
}

/// Which etcd and which network: the flags both commands take.
#[derive(Debug, Args)]
struct Target {
    /// etcd endpoints, comma-separated http:// or https:// URLs
    #[arg(long, value_name = "URL[,URL…]", required = true)]
    etcd_endpoints: Endpoints,
    /// Key prefix (the ipam.cluster etcdPrefix)
    #[arg(long, value_name = "P", default_value = DEFAULT_PREFIX, value_parser = NonEmptyStringValueParser::new())]
    etcd_prefix: String,
    #[command(flatten)]
    tls: TlsFlags,
    /// The network's name (the config's `name`)
    #[arg(long, value_name = "NAME", required = true, value_parser = NonEmptyStringValueParser::new())]
    network: String,
}

/// HOST: what a block record may carry (1-253 characters, no `/` or blanks).
fn parse_host(h: &str) -> Result<String, String> {
    super::config::check_host(h).map(|()| h.to_string()).map_err(|e| e.to_string())
}

impl Target {
    fn etcd(&self) -> Result<EtcdConfig, String> {
        self.tls.config(&self.etcd_endpoints, &self.etcd_prefix)
    }
}

fn parse(args: &[String]) -> Result<Cli, clap::Error> {
    Cli::try_parse_from(std::iter::once("cni-ipam").chain(args.iter().map(String::as_str)))
}

fn run(cli: Cli, out: &mut dyn Write) -> Result<(), String> {
    let io = |e: std::io::Error| e.to_string();
    match cli.cmd {
        Cmd::RemoveHost { target, host } => {
            let (etcd, network) = (target.etcd()?, target.network);
            let r = block_on(&etcd.endpoints, ADMIN_DEADLINE, remove_host(&etcd, &network, &host))
                .map_err(|e| e.to_string())?;
            writeln!(
                out,
                "removed host {host} from network {network}: {} block(s) freed, {} allocation(s) freed",
                r.blocks_freed.len(),
                r.allocations_freed
            )
            .map_err(io)?;
            for b in &r.blocks_freed {
                writeln!(out, "  freed {b}").map_err(io)?;
            }
            for b in &r.blocks_orphaned {
                writeln!(out, "  kept {b} without a host: other hosts still borrow addresses in it").map_err(io)?;
            }
            Ok(())
        }
        Cmd::Blocks { target } => {
            let (etcd, network) = (target.etcd()?, target.network);
            let blocks =
                block_on(&etcd.endpoints, ADMIN_DEADLINE, list_blocks(&etcd, &network)).map_err(|e| e.to_string())?;
            writeln!(
                out,
                "{:<24} {:<20} {:>9} {:>8} {:>6} {:>9}",
                "BLOCK", "HOST", "ALLOCATED", "BORROWED", "FREE", "EXCLUSIVE"
            )
            .map_err(io)?;
            for b in &blocks {
                let cap = block_range(b.cidr).capacity();
                let used = b.value.allocations.len() as u128;
                let host = if b.value.host.is_empty() { "-" } else { b.value.host.as_str() };
                writeln!(
                    out,
                    "{:<24} {:<20} {:>9} {:>8} {:>6} {:>9}",
                    b.cidr.to_string(),
                    host,
                    used,
                    b.value.borrowed(),
                    cap.saturating_sub(used),
                    if b.value.exclusive { "yes" } else { "no" }
                )
                .map_err(io)?;
            }
            Ok(())
        }
    }
}

/// Runs an admin command; returns the process exit code: 0, or 1 on any
/// error (usage errors with clap's message and usage line, on stderr; help
/// goes to stdout with 0).
pub fn main(args: &[String]) -> i32 {
    let cli = match parse(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 1 } else { 0 };
        }
    };
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    match run(cli, &mut out) {
        Ok(()) => 0,
        Err(e) => {
            let _ = out.flush();
            eprintln!("cni-ipam: {e}");
            1
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn target(cli: &Cli) -> &Target {
        match &cli.cmd {
            Cmd::RemoveHost { target, .. } | Cmd::Blocks { target } => target,
        }
    }

    fn err(v: &[&str]) -> String {
        parse(&s(v)).unwrap_err().render().to_string()
    }

    #[test]
    fn the_documented_invocations_parse() {
        // docs/cluster-ipam.md, "Admin commands".
        let cli = parse(&s(&["blocks", "--etcd-endpoints", "http://127.0.0.1:2379", "--network", "podnet"])).unwrap();
        let etcd = target(&cli).etcd().unwrap();
        assert_eq!(etcd.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(etcd.prefix, "/cni-ipam");
        assert_eq!(target(&cli).network, "podnet");
        assert!(matches!(cli.cmd, Cmd::Blocks { .. }));

        let cli = parse(&s(&[
            "remove-host",
            "--etcd-endpoints",
            "http://127.0.0.1:2379",
            "--etcd-prefix",
            "/p",
            "--network",
            "podnet",
            "node-a",
        ]))
        .unwrap();
        assert_eq!(target(&cli).etcd().unwrap().prefix, "/p");
        assert!(matches!(&cli.cmd, Cmd::RemoveHost { host, .. } if host == "node-a"));

        // `--flag=value`, several endpoints, HOST anywhere, the last repeated flag wins.
        let cli = parse(&s(&[
            "remove-host",
            "node-b",
            "--etcd-endpoints=http://a:1, http://b:2,",
            "--network=n1",
            "--network=n2",
        ]))
        .unwrap();
        assert_eq!(target(&cli).etcd().unwrap().endpoints, ["http://a:1", "http://b:2"]);
        assert_eq!(target(&cli).network, "n2");
        assert!(matches!(&cli.cmd, Cmd::RemoveHost { host, .. } if host == "node-b"));

        // TLS.
        let cli = parse(&s(&[
            "blocks",
            "--etcd-endpoints",
            "https://e:2379",
            "--network",
            "n",
            "--etcd-cafile",
            "/ca.pem",
            "--etcd-certfile",
            "/c.pem",
            "--etcd-keyfile",
            "/k.pem",
        ]))
        .unwrap();
        let etcd = target(&cli).etcd().unwrap();
        assert_eq!(etcd.ca_file.as_deref(), Some(std::path::Path::new("/ca.pem")));
        assert_eq!(etcd.cert_file.as_deref(), Some(std::path::Path::new("/c.pem")));
        assert_eq!(etcd.key_file.as_deref(), Some(std::path::Path::new("/k.pem")));
    }

    #[test]
    fn bad_invocations_name_what_is_wrong() {
        assert!(err(&["blocks", "--network", "n"]).contains("--etcd-endpoints"));
        assert!(err(&["blocks", "--etcd-endpoints", "http://a:1"]).contains("--network"));
        assert!(err(&["blocks", "--etcd-endpoints", "http://a:1", "--network", ""]).contains("--network"));
        assert!(err(&["blocks", "--bogus"]).contains("--bogus"));
        assert!(err(&["blocks", "--etcd-endpoints", "http://a:1", "--network"]).contains("--network"));
        assert!(err(&["blocks", "--etcd-endpoints", "http://a:1", "--network", "n", "extra"]).contains("extra"));
        assert!(err(&["blocks", "--etcd-endpoints", "a:2379", "--network", "n"]).contains("not an http://"));
        assert!(err(&["blocks", "--etcd-endpoints", " , ", "--network", "n"]).contains("no endpoint"));
        assert!(err(&["remove-host", "--etcd-endpoints", "http://a:1", "--network", "n"]).contains("<HOST>"));
        assert!(
            err(&["remove-host", "--etcd-endpoints", "http://a:1", "--network", "n", "a/b"]).contains("without '/'")
        );
        assert!(err(&["blocks", "--etcd-endpoints", "http://a:1", "--network", "n", "--etcd-certfile", "/c"])
            .contains("--etcd-keyfile"));
        assert!(err(&["bogus"]).contains("Usage:"));
        assert!(err(&[]).contains("Usage:"));
        let cli =
            parse(&s(&["blocks", "--etcd-endpoints", "http://a:1", "--network", "n", "--etcd-cafile", "/ca"])).unwrap();
        assert!(target(&cli).etcd().unwrap_err().contains("not https://"));
    }

    #[test]
    fn help_is_not_an_error_and_lists_every_flag() {
        for args in [&["--help"][..], &["help"], &["-h"], &["blocks", "--help"], &["help", "remove-host"]] {
            let e = parse(&s(args)).unwrap_err();
            assert!(!e.use_stderr(), "{args:?} is help, on stdout");
        }
        let help = parse(&s(&["remove-host", "--help"])).unwrap_err().render().to_string();
        for flag in [
            "--etcd-endpoints",
            "--etcd-prefix",
            "--etcd-cafile",
            "--etcd-certfile",
            "--etcd-keyfile",
            "--network",
            "<HOST>",
            "/cni-ipam",
        ] {
            assert!(help.contains(flag), "{flag} missing in\n{help}");
        }
        // The binary's exit codes (1 on a usage error, 0 for help): cni-ipam/tests/etcd_blocks.rs.
    }
}
