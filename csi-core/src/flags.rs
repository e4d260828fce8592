//! The command line every CSI driver shares.
//!
//! `--endpoint`, `--node-id`, `--driver-name`, `--mode`, `--log-level`, in
//! `--flag value` or `--flag=value` form; a driver may register a few
//! flags of its own ([`ExtraFlag`]). Anything else is a usage error that
//! names the flag, because a typo in a DaemonSet's args should stop the
//! pod, not be ignored.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::str::FromStr;

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
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
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
    /// The driver's own flags: every registered name with its value or default.
    pub extra: BTreeMap<String, String>,
}

impl Flags {
    /// Parses `args` (without the program name).
    pub fn parse<I, S>(args: I, defaults: &Defaults) -> Result<Flags>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        let mut endpoint = None;
        let mut node_id = None;
        let mut driver_name = None;
        let mut mode = None;
        let mut log_level = None;
        let mut extra: BTreeMap<String, String> =
            defaults.extra.iter().filter_map(|f| f.default.map(|d| (f.name.to_string(), d.to_string()))).collect();

        let mut args = args.into_iter().map(Into::into);
        while let Some(arg) = args.next() {
            if arg == "-h" || arg == "--help" {
                return Err(Error::Usage(usage(defaults)));
            }
            let Some(body) = arg.strip_prefix("--") else {
                return Err(Error::Usage(format!("unexpected argument {arg:?}\n\n{}", usage(defaults))));
            };
            let (name, inline) = match body.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (body.to_string(), None),
            };
            let known = matches!(name.as_str(), "endpoint" | "node-id" | "driver-name" | "mode" | "log-level")
                || defaults.extra.iter().any(|f| f.name == name);
            if !known {
                return Err(Error::Usage(format!("unknown flag --{name}\n\n{}", usage(defaults))));
            }
            let value = match inline {
                Some(v) => v,
                None => args.next().ok_or_else(|| Error::Usage(format!("flag --{name} needs a value")))?,
            };
            match name.as_str() {
                "endpoint" => endpoint = Some(value.parse()?),
                "node-id" => node_id = Some(value),
                "driver-name" => driver_name = Some(value),
                "mode" => mode = Some(value.parse()?),
                "log-level" => {
                    parse_level(&value)?;
                    log_level = Some(value)
                }
                _ => {
                    extra.insert(name, value);
                }
            }
        }

        let node_id = match node_id {
            Some(n) if n.is_empty() => return Err(Error::Usage("--node-id is empty".into())),
            Some(n) => n,
            None => nix::unistd::gethostname()
                .map_err(|e| Error::sys("read the host name for --node-id", e))?
                .to_string_lossy()
                .into_owned(),
        };
        Ok(Flags {
            endpoint: match endpoint {
                Some(e) => e,
                None => DEFAULT_ENDPOINT.parse()?,
            },
            node_id,
            driver_name: driver_name.unwrap_or_else(|| defaults.driver_name.to_string()),
            mode: mode.unwrap_or(Mode::All),
            log_level: log_level.unwrap_or_else(|| DEFAULT_LOG_LEVEL.to_string()),
            extra,
        })
    }

    /// Parses the process's arguments; prints the usage error to stderr and
    /// exits with status 2 on a bad command line (0 for `--help`).
    pub fn from_env(defaults: &Defaults) -> Flags {
        let args: Vec<String> = std::env::args().skip(1).collect();
        let help = args.iter().any(|a| a == "-h" || a == "--help");
        match Flags::parse(args, defaults) {
            Ok(f) => f,
            Err(e) => {
                eprintln!("{e}");
                std::process::exit(if help { 0 } else { 2 });
            }
        }
    }

    /// A driver flag's value (its default when not given).
    pub fn extra(&self, name: &str) -> Option<&str> {
        self.extra.get(name).map(String::as_str)
    }
}

/// The usage text for a driver.
pub fn usage(d: &Defaults) -> String {
    let mut u = format!(
        "usage: {} [flags]\n\n\
         \x20 --endpoint URL     unix:///path/to.sock or tcp://host:port (default {DEFAULT_ENDPOINT})\n\
         \x20 --node-id ID       this node's ID in NodeGetInfo (default: the host name)\n\
         \x20 --driver-name NAME plugin name in GetPluginInfo (default {})\n\
         \x20 --mode MODE        controller, node or all (default all)\n\
         \x20 --log-level LEVEL  error, warn, info, debug or trace (default {DEFAULT_LOG_LEVEL})\n",
        d.program, d.driver_name
    );
    for f in d.extra {
        let _ = write!(u, "  --{} VALUE  {}", f.name, f.help);
        if let Some(def) = f.default {
            let _ = write!(u, " (default {def})");
        }
        u.push('\n');
    }
    u
}

fn parse_level(s: &str) -> Result<tracing::Level> {
    s.parse::<tracing::Level>()
        .map_err(|_| Error::Usage(format!("--log-level {s:?}: expected error, warn, info, debug or trace")))
}

/// Sends `tracing` output to stderr at the flags' level. Call once at start.
pub fn init_logging(level: &str) -> Result<()> {
    let level = parse_level(level)?;
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .with_target(false)
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
        assert_eq!(f.extra("working-mount-dir"), Some("/w"));
    }

    #[test]
    fn errors_name_the_problem() {
        let e = Flags::parse(["--endpiont=unix:///x"], &D).unwrap_err();
        assert!(e.to_string().starts_with("unknown flag --endpiont"), "{e}");
        assert!(e.to_string().contains("usage: csi-test"), "{e}");
        let e = Flags::parse(["--mode", "both"], &D).unwrap_err();
        assert!(e.to_string().contains("controller, node or all"), "{e}");
        let e = Flags::parse(["--node-id"], &D).unwrap_err();
        assert_eq!(e.to_string(), "flag --node-id needs a value");
        let e = Flags::parse(["--endpoint", "unix://relative.sock"], &D).unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
        let e = Flags::parse(["--endpoint", "tcp://:x"], &D).unwrap_err();
        assert!(e.to_string().contains("tcp://host:port"), "{e}");
        assert!(Flags::parse(["--log-level", "loud"], &D).is_err());
        assert!(Flags::parse(["stray"], &D).is_err());
    }

    #[test]
    fn endpoint_forms() {
        assert_eq!("unix:/run/csi.sock".parse::<Endpoint>().unwrap(), Endpoint::Unix("/run/csi.sock".into()));
        assert_eq!("/run/csi.sock".parse::<Endpoint>().unwrap(), Endpoint::Unix("/run/csi.sock".into()));
        assert_eq!(Endpoint::Unix("/a.sock".into()).to_string(), "unix:///a.sock");
    }
}
