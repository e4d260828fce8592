//! The command line of the agent and the admin commands (clap derive).
//!
//! `main` looks at `CNI_COMMAND` first: with it set the binary is the CNI
//! plugin and nothing here is built or run, so the plugin's start-up is not
//! charged for clap.

use clap::{Parser, Subcommand};

use crate::agent::{go_style_flags, AgentFlags, EtcdFlags};

#[derive(Debug, Parser)]
#[command(
    name = "cni-overlay",
    about = "VXLAN overlay across hosts: the per-host agent (a drop-in for flanneld in etcd mode) and its admin commands",
    after_help = "With CNI_COMMAND set, cni-overlay is the CNI plugin (type \"cni-overlay\").\n\
                  Flags also take flanneld's single-dash form (-etcd-endpoints=…).\n\
                  Log level: CNI_OVERLAY_LOG=debug|info|warn (stderr).",
    args_override_self = true,
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// The per-host daemon: leases the host's subnet, creates the VXLAN device, writes the
    /// subnet file and routes to every other host's subnet
    Agent(AgentFlags),
    /// Lists the host leases: subnet, public IP, backend, VTEP MAC, expiry, IPv6 subnet and
    /// public IPv6
    Leases(EtcdFlags),
    /// Deletes a host's lease; every agent then removes that host's routes
    RemoveHost {
        #[command(flatten)]
        etcd: EtcdFlags,
        /// The host's SUBNET (10.244.3.0/24), or its PublicIP or PublicIPv6
        #[arg(value_name = "SUBNET|PUBLIC-IP")]
        target: String,
    },
    /// Prints a shell completion script
    Completions {
        #[arg(value_name = "SHELL")]
        shell: clap_complete::Shell,
    },
}

impl Cli {
    /// Parses `args` (without the program name); flanneld's `-flag` form is
    /// accepted after the command word.
    pub fn try_parse_args(args: &[String]) -> Result<Cli, clap::Error> {
        let (cmd, rest) = match args.split_first() {
            Some((c, r)) => (vec![c.clone()], go_style_flags(r)),
            None => (vec![], vec![]),
        };
        Cli::try_parse_from(std::iter::once("cni-overlay".to_string()).chain(cmd).chain(rest))
    }

    /// The completion script for `shell`.
    pub fn completions(shell: clap_complete::Shell) -> Vec<u8> {
        let mut out = Vec::new();
        clap_complete::generate(shell, &mut <Cli as clap::CommandFactory>::command(), "cni-overlay", &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    use std::net::{Ipv4Addr, SocketAddr};
    use std::time::Duration;

    use super::*;
    use crate::agent::AgentArgs;

    fn s(v: &[&str]) -> Vec<String> {
        v.iter().map(|x| x.to_string()).collect()
    }

    fn agent(v: &[&str]) -> AgentArgs {
        match Cli::try_parse_args(&s(v)).unwrap_or_else(|e| panic!("{v:?}: {e}")).cmd {
            Cmd::Agent(f) => AgentArgs::from_flags(&f).unwrap(),
            other => panic!("{other:?}"),
        }
    }

    fn err(v: &[&str]) -> String {
        Cli::try_parse_args(&s(v)).unwrap_err().render().to_string()
    }

    #[test]
    fn agent_defaults_are_flanneld_s() {
        let a = agent(&["agent"]);
        assert_eq!(a.etcd.endpoints, ["http://127.0.0.1:2379"]);
        assert_eq!(a.etcd.prefix, "/coreos.com/network");
        assert_eq!((a.etcd.ca_file.clone(), a.etcd.cert_file.clone(), a.etcd.key_file.clone()), (None, None, None));
        assert_eq!(a.subnet_file, std::path::Path::new("/run/flannel/subnet.env"));
        assert!(!a.ip_masq);
        assert_eq!(a.healthz, None);
        assert_eq!(a.metrics, None);
        assert_eq!(a.lease_ttl, Duration::from_secs(24 * 3600));
        assert_eq!(a.renew_margin, Duration::from_secs(3600));
        assert_eq!((a.public_ip, a.public_ipv6, a.iface.clone()), (None, None, None));
    }

    #[test]
    fn the_documented_invocations_parse() {
        // docs/cni-overlay.md, "Running it".
        let a = agent(&[
            "agent",
            "--etcd-endpoints",
            "http://10.0.0.1:2379",
            "--iface",
            "eth0",
            "--ip-masq",
            "--healthz-port",
            "8471",
        ]);
        assert_eq!(a.etcd.endpoints, ["http://10.0.0.1:2379"]);
        assert_eq!(a.iface.as_deref(), Some("eth0"));
        assert!(a.ip_masq);
        assert_eq!(a.healthz, Some(SocketAddr::from((Ipv4Addr::UNSPECIFIED, 8471))));

        // Every flag of the table, both value forms.
        let a = agent(&[
            "agent",
            "--etcd-endpoints=https://e1:2379,https://e2:2379",
            "--etcd-prefix",
            "/my/net",
            "--etcd-cafile",
            "/ca.pem",
            "--etcd-certfile=/c.pem",
            "--etcd-keyfile",
            "/k.pem",
            "--public-ip",
            "192.168.1.2",
            "--public-ipv6=fd00::2",
            "--iface",
            "10.0.0.5",
            "--subnet-file",
            "/tmp/s.env",
            "--ip-masq=false",
            "--healthz-ip",
            "127.0.0.1",
            "--healthz-port=9000",
            "--subnet-lease-ttl",
            "6s",
            "--subnet-lease-renew-margin",
            "5",
            "--metrics-address=[::]:9471",
        ]);
        assert_eq!(a.etcd.endpoints, ["https://e1:2379", "https://e2:2379"]);
        assert_eq!(a.etcd.prefix, "/my/net");
        assert_eq!(a.etcd.ca_file.as_deref(), Some(std::path::Path::new("/ca.pem")));
        assert_eq!(a.etcd.cert_file.as_deref(), Some(std::path::Path::new("/c.pem")));
        assert_eq!(a.etcd.key_file.as_deref(), Some(std::path::Path::new("/k.pem")));
        assert_eq!(a.public_ip, Some("192.168.1.2".parse().unwrap()));
        assert_eq!(a.public_ipv6, Some("fd00::2".parse().unwrap()));
        assert_eq!(a.iface.as_deref(), Some("10.0.0.5"));
        assert_eq!(a.subnet_file, std::path::Path::new("/tmp/s.env"));
        assert!(!a.ip_masq);
        assert_eq!(a.healthz, Some("127.0.0.1:9000".parse().unwrap()));
        assert_eq!(a.lease_ttl, Duration::from_secs(6));
        assert_eq!(a.metrics, Some("[::]:9471".parse().unwrap()));
        // A margin of at least the TTL renews at half of it (the tests' "TTL 6 s, renew every 3 s").
        assert_eq!(a.renew_margin, Duration::from_secs(3));

        assert_eq!(agent(&["agent", "--subnet-lease-ttl", "15m"]).lease_ttl, Duration::from_secs(900));
        assert_eq!(agent(&["agent", "--subnet-lease-ttl=2h"]).renew_margin, Duration::from_secs(3600));
        assert_eq!(agent(&["agent", "--subnet-lease-ttl", "90"]).lease_ttl, Duration::from_secs(90));
        assert!(agent(&["agent", "--ip-masq=1"]).ip_masq);
        assert!(agent(&["agent", "--ip-masq=true"]).ip_masq);
        // flanneld's single-dash flags, and the last of a repeated flag wins (Go's flag package).
        let a = agent(&["agent", "-etcd-endpoints=http://a:1", "-iface", "eth1", "-ip-masq", "-iface=eth2"]);
        assert_eq!(
            (a.etcd.endpoints.as_slice(), a.iface.as_deref(), a.ip_masq),
            (&["http://a:1".to_string()][..], Some("eth2"), true)
        );

        // Admin commands.
        let cli =
            Cli::try_parse_args(&s(&["leases", "--etcd-endpoints", "http://a:1", "--etcd-prefix", "/p"])).unwrap();
        let Cmd::Leases(f) = cli.cmd else { panic!() };
        let etcd = f.config().unwrap();
        assert_eq!((etcd.endpoints, etcd.prefix), (vec!["http://a:1".to_string()], "/p".to_string()));
        let Cmd::Leases(f) = Cli::try_parse_args(&s(&["leases"])).unwrap().cmd else { panic!() };
        assert_eq!(f.config().unwrap().prefix, "/coreos.com/network");
        for target in ["10.244.3.0/24", "192.168.1.2", "fd00::2"] {
            let cli = Cli::try_parse_args(&s(&["remove-host", "--etcd-endpoints", "http://a:1", target])).unwrap();
            assert!(matches!(&cli.cmd, Cmd::RemoveHost { target: t, .. } if t == target), "{target}");
        }
    }

    #[test]
    fn bad_flags_are_usage_errors_that_name_them() {
        for (args, want) in [
            (&["agent", "--bogus"][..], "--bogus"),
            (&["agent", "--public-ip", "fd00::1"], "--public-ip"),
            (&["agent", "--public-ipv6", "10.0.0.1"], "--public-ipv6"),
            (&["agent", "--healthz-port", "70000"], "--healthz-port"),
            (&["agent", "--healthz-ip", "x"], "--healthz-ip"),
            (&["agent", "--subnet-lease-ttl", "0s"], "positive duration"),
            (&["agent", "--subnet-lease-ttl", "1d"], "--subnet-lease-ttl"),
            (&["agent", "--subnet-lease-renew-margin", "1h"], "--subnet-lease-renew-margin"),
            (&["agent", "--ip-masq=maybe"], "--ip-masq"),
            (&["agent", "--metrics-address", "localhost:9471"], "IP:PORT"),
            (&["agent", "--metrics-address", "9471"], "--metrics-address"),
            (&["agent", "--etcd-endpoints", "127.0.0.1:2379"], "not an http://"),
            (&["agent", "--etcd-endpoints", ","], "no endpoint"),
            (&["agent", "--etcd-certfile", "/c"], "--etcd-keyfile"),
            (&["agent", "--iface"], "--iface"),
            (&["leases", "--iface", "eth0"], "--iface"),
            (&["remove-host", "--etcd-endpoints", "http://a:1"], "SUBNET|PUBLIC-IP"),
            (&["remove-host", "a", "b"], "'b'"),
            (&["bogus"], "bogus"),
        ] {
            let e = err(args);
            assert!(e.contains(want), "{args:?}: {want} missing in {e}");
        }
        // TLS files with an http:// endpoint: caught before any connection.
        let Cmd::Agent(f) = Cli::try_parse_args(&s(&["agent", "--etcd-cafile", "/ca"])).unwrap().cmd else { panic!() };
        assert!(AgentArgs::from_flags(&f).unwrap_err().to_string().contains("not https://"));
        // No command: the help, as an error (exit 2).
        assert!(Cli::try_parse_args(&[]).unwrap_err().use_stderr());
    }

    #[test]
    fn help_lists_every_documented_flag_and_completions_are_generated() {
        let help = err(&["agent", "--help"]);
        for flag in [
            "--etcd-endpoints",
            "--etcd-prefix",
            "--etcd-cafile",
            "--etcd-certfile",
            "--etcd-keyfile",
            "--public-ip",
            "--public-ipv6",
            "--iface",
            "--subnet-file",
            "--ip-masq",
            "--healthz-ip",
            "--healthz-port",
            "--subnet-lease-ttl",
            "--subnet-lease-renew-margin",
            "--metrics-address",
            "http://127.0.0.1:2379",
            "/coreos.com/network",
            "/run/flannel/subnet.env",
            "24h",
        ] {
            assert!(help.contains(flag), "{flag} missing in\n{help}");
        }
        for args in [&["--help"][..], &["help"], &["help", "agent"], &["remove-host", "-h"]] {
            assert!(!Cli::try_parse_args(&s(args)).unwrap_err().use_stderr(), "{args:?}");
        }
        let bash = String::from_utf8(Cli::completions(clap_complete::Shell::Bash)).unwrap();
        assert!(bash.contains("remove-host") && bash.contains("--subnet-lease-ttl"), "{bash}");
    }
}
