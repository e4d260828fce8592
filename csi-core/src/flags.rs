//! The command line every CSI driver shares, built with `clap`.
//!
//! `--endpoint`, `--node-id`, `--driver-name`, `--mode`, `--log-level`,
//! `--metrics-address`, in
//! `--flag value` or `--flag=value` form; a driver may register a few
//! flags of its own ([`ExtraFlag`]). Anything else is a usage error that
//! names the flag, because a typo in a DaemonSet's args should stop the
//! pod, not be ignored. [`CommonArgs`] is the clap definition of the common
//! flags, for a driver that builds its own command with clap's derive
//! (`#[command(flatten)]`); [`Flags::parse`] and [`Flags::from_env`] serve a
//! driver that only adds [`ExtraFlag`]s, and [`command`] is the whole
//! command (help text, completions).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;

use clap::builder::NonEmptyStringValueParser;
use clap::{Arg, ArgAction, Command, FromArgMatches as _};

use crate::error::{Error, Result};

/// Default `--endpoint`: where the Kubernetes sidecars look for the socket.
pub const DEFAULT_ENDPOINT: &str = "unix:///csi/csi.sock";
/// Default `--log-level`.
pub const DEFAULT_LOG_LEVEL: &str = "info";

/// Where the gRPC server listens.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Endpoint {
    /// `unix:///path/to.sock` (also `unix:/path` and a bare absolute path).
    Unix(PathBuf),
    /// `tcp://host:port`.
    Tcp(String),
}

impl FromStr for Endpoint {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        let bad = |why: &str| Error::Usage(format!("--endpoint {s:?}: {why}"));
        if let Some(rest) = s.strip_prefix("unix://").or_else(|| s.strip_prefix("unix:")) {
            if !rest.starts_with('/') {
                return Err(bad("the socket path must be absolute (unix:///path)"));
            }
            Ok(Endpoint::Unix(PathBuf::from(rest)))
        } else if let Some(rest) = s.strip_prefix("tcp://") {
            match rest.rsplit_once(':') {
                Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                    Ok(Endpoint::Tcp(rest.to_string()))
                }
                _ => Err(bad("expected tcp://host:port")),
            }
        } else if s.starts_with('/') {
            Ok(Endpoint::Unix(PathBuf::from(s)))
        } else {
            Err(bad("expected unix:///path or tcp://host:port"))
        }
    }
}

impl std::fmt::Display for Endpoint {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Endpoint::Unix(p) => write!(f, "unix://{}", p.display()),
            Endpoint::Tcp(a) => write!(f, "tcp://{a}"),
        }
    }
}

/// Which services this process serves (Identity is always served).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// Identity + Controller (the provisioner's sidecar pod).
    Controller,
    /// Identity + Node (the per-node DaemonSet).
    Node,
    /// Everything in one process.
    All,
}

impl Mode {
    /// Serve the Controller service?
    pub fn controller(self) -> bool {
        matches!(self, Mode::Controller | Mode::All)
    }

    /// Serve the Node service?
    pub fn node(self) -> bool {
        matches!(self, Mode::Node | Mode::All)
    }
}

impl FromStr for Mode {
    type Err = Error;

    fn from_str(s: &str) -> Result<Self> {
        match s {
            "controller" => Ok(Mode::Controller),
            "node" => Ok(Mode::Node),
            "all" => Ok(Mode::All),
            _ => Err(Error::Usage(format!("--mode {s:?}: expected controller, node or all"))),
        }
    }
}

/// A driver-specific flag, accepted alongside the common ones.
#[derive(Clone, Copy, Debug)]
pub struct ExtraFlag {
    /// Name without the leading dashes, e.g. `working-mount-dir`.
    pub name: &'static str,
    /// Default value, if any (shown in the usage text).
    pub default: Option<&'static str>,
    /// One line for the usage text.
    pub help: &'static str,
}

/// What a driver decides about its command line.
#[derive(Clone, Copy, Debug)]
pub struct Defaults {
    /// The binary name, for the usage text.
    pub program: &'static str,
    /// Default `--driver-name`, e.g. `nfs.csi.k8s.io`.
    pub driver_name: &'static str,
    /// The driver's own flags.
    pub extra: &'static [ExtraFlag],
}

/// The common flags as clap arguments. `--driver-name` has no default here
/// (it is the driver's, see [`Defaults`]); [`command`] adds it.
#[derive(clap::Args, Clone, Debug, PartialEq, Eq)]
pub struct CommonArgs {
    /// unix:///path/to.sock or tcp://host:port
    #[arg(long, value_name = "URL", default_value = DEFAULT_ENDPOINT)]
    pub endpoint: Endpoint,
    /// This node's ID in NodeGetInfo [default: the host name]
    #[arg(long, value_name = "ID", value_parser = NonEmptyStringValueParser::new())]
    pub node_id: Option<String>,
    /// Plugin name in GetPluginInfo
    #[arg(long, value_name = "NAME")]
    pub driver_name: Option<String>,
    /// Which services to serve besides Identity
    #[arg(long, value_enum, value_name = "MODE", default_value_t = Mode::All)]
    pub mode: Mode,
    /// error, warn, info, debug or trace
    #[arg(long, value_name = "LEVEL", default_value = DEFAULT_LOG_LEVEL, value_parser = level_arg)]
    pub log_level: String,
    /// Serve Prometheus metrics on http://ADDR:PORT/metrics [default: off]
    #[arg(long, value_name = "ADDR:PORT", value_parser = prom_endpoint::parse_address)]
    pub metrics_address: Option<SocketAddr>,
}

fn level_arg(s: &str) -> std::result::Result<String, String> {
    parse_level(s).map(|_| s.to_string()).map_err(|_| "expected error, warn, info, debug or trace".to_string())
}

/// The parsed command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Flags {
    /// `--endpoint`, default [`DEFAULT_ENDPOINT`].
    pub endpoint: Endpoint,
    /// `--node-id`, default the host name.
    pub node_id: String,
    /// `--driver-name`, default [`Defaults::driver_name`].
    pub driver_name: String,
    /// `--mode`, default `all`.
    pub mode: Mode,
    /// `--log-level` (error, warn, info, debug, trace), default `info`.
    pub log_level: String,
    /// `--metrics-address`: where Prometheus metrics are served; `None`
    /// (the default): no metrics listener.
    pub metrics_address: Option<SocketAddr>,
    /// The driver's own flags: every registered name with its value or default.
    pub extra: BTreeMap<String, String>,
}

/// The whole command for a driver: the common flags (with the driver's
/// `--driver-name` default) and its [`ExtraFlag`]s.
pub fn command(d: &Defaults) -> Command {
    use clap::Args as _;
    let mut cmd = CommonArgs::augment_args(Command::new(d.program))
        .about("A CSI driver: serves Identity and, per --mode, Controller and Node over gRPC")
        .long_about(None::<&str>)
        .mut_arg("driver_name", |a| a.default_value(d.driver_name))
        .args_override_self(true);
    for f in d.extra {
        let mut a = Arg::new(f.name).long(f.name).value_name("VALUE").help(f.help).action(ArgAction::Set);
        if let Some(def) = f.default {
            a = a.default_value(def);
        }
        cmd = cmd.arg(a);
    }
    cmd
}

impl Flags {
    /// Parses `args` (without the program name). A usage error's message
    /// names the flag and ends with the usage line; `--help` returns the
    /// help text as the error.
    pub fn parse<I, S>(args: I, defaults: &Defaults) -> Result<Flags>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        Flags::try_parse(args, defaults).map_err(|e| match e {
            ParseError::Clap(e) => Error::Usage(e.render().to_string().trim_end().to_string()),
            ParseError::Other(e) => e,
        })
    }

    fn try_parse<I, S>(args: I, defaults: &Defaults) -> std::result::Result<Flags, ParseError>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let argv = std::iter::once(defaults.program.to_string()).chain(args.into_iter().map(Into::into));
        let m = command(defaults).try_get_matches_from(argv).map_err(ParseError::Clap)?;
        let c = CommonArgs::from_arg_matches(&m).map_err(ParseError::Clap)?;
        let extra = defaults
            .extra
            .iter()
            .filter_map(|f| m.get_one::<String>(f.name).map(|v| (f.name.to_string(), v.clone())))
            .collect();
        let node_id = match c.node_id {
            Some(n) => n,
            None => nix::unistd::gethostname()
                .map_err(|e| ParseError::Other(Error::sys("read the host name for --node-id", e)))?
                .to_string_lossy()
                .into_owned(),
        };
        Ok(Flags {
            endpoint: c.endpoint,
            node_id,
            driver_name: c.driver_name.unwrap_or_else(|| defaults.driver_name.to_string()),
            mode: c.mode,
            log_level: c.log_level,
            metrics_address: c.metrics_address,
            extra,
        })
    }

    /// Parses the process's arguments. `--help` prints the help on stdout
    /// and exits 0; a bad command line prints the error on stderr and exits 2.
    pub fn from_env(defaults: &Defaults) -> Flags {
        match Flags::try_parse(std::env::args().skip(1), defaults) {
            Ok(f) => f,
            Err(ParseError::Clap(e)) => e.exit(),
            Err(ParseError::Other(e)) => {
                eprintln!("{}: {e}", defaults.program);
                std::process::exit(2);
            }
        }
    }

    /// A driver flag's value (its default when not given).
    pub fn extra(&self, name: &str) -> Option<&str> {
        self.extra.get(name).map(String::as_str)
    }
}

enum ParseError {
    Clap(clap::Error),
    Other(Error),
}

/// The help text for a driver.
pub fn usage(d: &Defaults) -> String {
    command(d).render_help().to_string()
}

fn parse_level(s: &str) -> Result<tracing::Level> {
    s.parse::<tracing::Level>()
        .map_err(|_| Error::Usage(format!("--log-level {s:?}: expected error, warn, info, debug or trace")))
}

/// Sends `tracing` output to stderr at the flags' level. Call once at start.
/// The gRPC stack's own events (h2's frames, hyper, tower, tonic) stop at
/// info: `debug` is for the driver's steps, and h2 alone would log every
/// frame of every call. Colour only when stderr is a terminal: kubelet and
/// the tests send it to a file, where escape codes break every grep.
pub fn init_logging(level: &str) -> Result<()> {
    use std::io::IsTerminal as _;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let level = parse_level(level)?;
    let stack = level.min(tracing::Level::INFO);
    let filter = tracing_subscriber::filter::Targets::new()
        .with_default(level)
        .with_targets(["h2", "hyper", "hyper_util", "tower", "tonic"].map(|t| (t, stack)));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_max_level(level)
        .with_target(false)
        .finish()
        .with(filter)
        .try_init()
        .map_err(|e| Error::Internal(format!("install the log subscriber: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Defaults = Defaults {
        program: "csi-test",
        driver_name: "test.csi.example.com",
        extra: &[ExtraFlag { name: "working-mount-dir", default: Some("/tmp"), help: "where the controller mounts" }],
    };

    #[test]
    fn defaults() {
        let f = Flags::parse(Vec::<String>::new(), &D).unwrap();
        assert_eq!(f.endpoint, Endpoint::Unix("/csi/csi.sock".into()));
        assert_eq!(f.driver_name, "test.csi.example.com");
        assert_eq!(f.mode, Mode::All);
        assert_eq!(f.log_level, "info");
        assert_eq!(f.metrics_address, None);
        assert!(!f.node_id.is_empty());
        assert_eq!(f.extra("working-mount-dir"), Some("/tmp"));
    }

    #[test]
    fn both_forms_and_every_flag() {
        let f = Flags::parse(
            [
                "--endpoint=tcp://127.0.0.1:10000",
                "--node-id",
                "n1",
                "--driver-name=x.example.com",
                "--mode",
                "node",
                "--log-level=debug",
                "--metrics-address",
                "127.0.0.1:9810",
                "--working-mount-dir",
                "/w",
            ],
            &D,
        )
        .unwrap();
        assert_eq!(f.endpoint, Endpoint::Tcp("127.0.0.1:10000".into()));
        assert_eq!(f.node_id, "n1");
        assert_eq!(f.driver_name, "x.example.com");
        assert_eq!(f.mode, Mode::Node);
        assert!(f.mode.node() && !f.mode.controller());
        assert_eq!(f.log_level, "debug");
        assert_eq!(f.metrics_address, Some("127.0.0.1:9810".parse().unwrap()));
        assert_eq!(f.extra("working-mount-dir"), Some("/w"));
    }

    #[test]
    fn errors_name_the_problem() {
        let e = Flags::parse(["--endpiont=unix:///x"], &D).unwrap_err().to_string();
        assert!(e.contains("unexpected argument '--endpiont'"), "{e}");
        assert!(e.contains("Usage: csi-test"), "{e}");
        let e = Flags::parse(["--mode", "both"], &D).unwrap_err().to_string();
        assert!(e.contains("--mode") && e.contains("controller, node, all"), "{e}");
        let e = Flags::parse(["--node-id"], &D).unwrap_err().to_string();
        assert!(e.contains("a value is required for '--node-id <ID>'"), "{e}");
        let e = Flags::parse(["--node-id="], &D).unwrap_err().to_string();
        assert!(e.contains("--node-id"), "{e}");
        let e = Flags::parse(["--endpoint", "unix://relative.sock"], &D).unwrap_err().to_string();
        assert!(e.contains("absolute"), "{e}");
        let e = Flags::parse(["--endpoint", "tcp://:x"], &D).unwrap_err().to_string();
        assert!(e.contains("tcp://host:port"), "{e}");
        let e = Flags::parse(["--metrics-address", "localhost:9810"], &D).unwrap_err().to_string();
        assert!(e.contains("--metrics-address") && e.contains("IP:PORT"), "{e}");
        let e = Flags::parse(["--log-level", "loud"], &D).unwrap_err().to_string();
        assert!(e.contains("--log-level") && e.contains("debug"), "{e}");
        assert!(Flags::parse(["stray"], &D).is_err());
    }

    #[test]
    fn help_lists_every_flag_with_the_drivers_defaults() {
        let h = Flags::parse(["--help"], &D).unwrap_err().to_string();
        for want in [
            "--endpoint",
            "--node-id",
            "--driver-name",
            "--mode",
            "--log-level",
            "--metrics-address",
            "--working-mount-dir",
        ] {
            assert!(h.contains(want), "{want} missing from\n{h}");
        }
        assert!(h.contains("[default: test.csi.example.com]") && h.contains("[default: /tmp]"), "{h}");
        assert!(h.contains("[default: unix:///csi/csi.sock]"), "{h}");
        assert_eq!(usage(&D), command(&D).render_help().to_string());
    }

    #[test]
    fn the_last_of_a_repeated_flag_wins() {
        let f = Flags::parse(["--mode", "node", "--mode=controller"], &D).unwrap();
        assert_eq!(f.mode, Mode::Controller);
    }

    #[test]
    fn endpoint_forms() {
        assert_eq!("unix:/run/csi.sock".parse::<Endpoint>().unwrap(), Endpoint::Unix("/run/csi.sock".into()));
        assert_eq!("/run/csi.sock".parse::<Endpoint>().unwrap(), Endpoint::Unix("/run/csi.sock".into()));
        assert_eq!(Endpoint::Unix("/a.sock".into()).to_string(), "unix:///a.sock");
    }
}
