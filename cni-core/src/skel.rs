//! The environment contract and verb dispatch: what a plugin's `main` calls.
//!
//! `run` reads `CNI_*` and stdin, validates them the way the spec and
//! libcni's skel do, negotiates the version, calls the plugin's verb and
//! prints exactly one thing on stdout: the result, the version info, or the
//! error object. Logs go through `tracing` to stderr or a file.

use std::io::{Read, Write};
use std::path::PathBuf;

use serde_json::{json, Value};

use crate::args::CniArgs;
use crate::error::{Code, Error, Result};
use crate::types::{CniResult, NetConf};
use crate::version::{self, Version, SUPPORTED};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(s: &str) -> Option<Command> {
        Some(match s {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Command::Add => "ADD",
            Command::Del => "DEL",
            Command::Check => "CHECK",
            Command::Status => "STATUS",
            Command::Gc => "GC",
            Command::Version => "VERSION",
        }
    }

    /// Variables the spec requires for this verb (besides CNI_COMMAND).
    fn required_env(self) -> &'static [&'static str] {
        match self {
            Command::Add | Command::Check => &["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"],
            Command::Del => &["CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"],
            Command::Status | Command::Gc => &["CNI_PATH"],
            Command::Version => &[],
        }
    }

    /// The oldest config version that may carry this verb.
    fn min_version(self) -> Version {
        match self {
            Command::Check => Version::V0_4_0,
            Command::Status | Command::Gc => Version::V1_1_0,
            _ => Version::V0_3_0,
        }
    }
}

/// The keys a runtime sends the GC list under (libcni >= 1.2.3 sends both).
const GC_LIST_KEYS: [&str; 2] = ["cni.dev/valid-attachments", "cni.dev/attachments"];

/// Everything a verb needs: the validated environment and the config.
#[derive(Debug, Clone)]
pub struct Context {
    pub command: Command,
    /// Empty for STATUS and GC.
    pub container_id: String,
    /// Absent on DEL when the runtime no longer has the netns.
    pub netns: Option<PathBuf>,
    pub ifname: String,
    pub args: CniArgs,
    pub path: Vec<PathBuf>,
    /// Version negotiated from `cniVersion`/`cniVersions`; results are printed in it.
    pub version: Version,
    pub conf: NetConf,
    /// The whole config as received on stdin (plugins parse their own keys).
    pub raw: Value,
}

impl Context {
    /// The previous plugin's result in a chain, if any.
    pub fn prev_result(&self) -> Result<Option<CniResult>> {
        match &self.conf.prev_result {
            None | Some(Value::Null) => Ok(None),
            Some(v) => CniResult::from_json(v).map(Some),
        }
    }

    /// The attachments a GC must keep, exactly as the runtime sent them. A GC
    /// context always has the list (empty or null means "nothing is valid"):
    /// [`Context::from_parts`] refuses a GC without it. Empty for other verbs.
    pub fn gc_valid(&self) -> &[crate::types::Attachment] {
        self.conf.gc_valid_attachments().unwrap_or(&[])
    }

    /// Builds a context from explicit parts (used by tests and in-process callers).
    pub fn from_parts(env: &dyn Fn(&str) -> Option<String>, stdin: &[u8]) -> Result<Context> {
        let command = match env("CNI_COMMAND").filter(|s| !s.is_empty()) {
            None => return Err(Error::env("required env variables [CNI_COMMAND] missing")),
            Some(c) => {
                Command::parse(&c).ok_or_else(|| Error::env("unknown CNI_COMMAND").with_details(format!("{c:?}")))?
            }
        };
        let missing: Vec<&str> =
            command.required_env().iter().copied().filter(|k| env(k).is_none_or(|v| v.is_empty())).collect();
        if !missing.is_empty() {
            return Err(Error::env(format!("required env variables [{}] missing", missing.join(","))));
        }
        let container_id = env("CNI_CONTAINERID").unwrap_or_default();
        let ifname = env("CNI_IFNAME").unwrap_or_default();
        if matches!(command, Command::Add | Command::Del | Command::Check) {
            validate_container_id(&container_id)?;
            validate_ifname(&ifname)?;
        }
        let args = CniArgs::parse(&env("CNI_ARGS").unwrap_or_default())?;
        let path =
            env("CNI_PATH").unwrap_or_default().split(':').filter(|p| !p.is_empty()).map(PathBuf::from).collect();
        let netns = env("CNI_NETNS").filter(|s| !s.is_empty()).map(PathBuf::from);

        let raw: Value = serde_json::from_slice(stdin)
            .map_err(|e| Error::new(Code::Decode, "decode network config").with_details(e))?;
        if !raw.is_object() {
            return Err(Error::new(Code::Decode, "decode network config").with_details("not a JSON object"));
        }
        let conf: NetConf = serde_json::from_value(raw.clone())
            .map_err(|e| Error::new(Code::Decode, "decode network config").with_details(e))?;
        let version = version::negotiate(conf.cni_version.as_deref(), conf.cni_versions.as_deref())?;
        if version < command.min_version() {
            return Err(Error::new(
                Code::IncompatibleVersion,
                format!("config version {version} does not allow {}", command.as_str()),
            )
            .with_details(format!("{} needs cniVersion >= {}", command.as_str(), command.min_version())));
        }
        validate_network_name(&conf.name)?;
        if conf.plugin_type.is_empty() {
            return Err(Error::config("network config has no \"type\""));
        }
        // Read as "nothing is valid", a missing list would delete every
        // attachment of the network: refused here, once, for every plugin. A
        // key that is present is the runtime's list even when null (libcni
        // marshals an empty Go slice as null).
        if command == Command::Gc && !GC_LIST_KEYS.iter().any(|k| raw.get(*k).is_some()) {
            return Err(Error::config("GC needs the list of valid attachments").with_details(
                "\"cni.dev/valid-attachments\" is missing from the config; refusing to collect anything",
            ));
        }
        Ok(Context { command, container_id, netns, ifname, args, path, version, conf, raw })
    }
}

fn id_chars_ok(s: &str) -> bool {
    let mut chars = s.chars();
    chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
        && chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn validate_container_id(id: &str) -> Result<()> {
    if id_chars_ok(id) {
        Ok(())
    } else {
        Err(Error::env("invalid characters in CNI_CONTAINERID").with_details(format!("{id:?}")))
    }
}

fn validate_ifname(name: &str) -> Result<()> {
    let bad = name.is_empty()
        || name.len() > 15
        || name == "."
        || name == ".."
        || name.chars().any(|c| c == '/' || c == ':' || c.is_whitespace());
    if bad {
        Err(Error::env("invalid CNI_IFNAME").with_details(format!("{name:?}: 1-15 chars, no '/', ':' or spaces")))
    } else {
        Ok(())
    }
}

fn validate_network_name(name: &str) -> Result<()> {
    if name.is_empty() {
        return Err(Error::config("network config has no \"name\""));
    }
    if !id_chars_ok(name) {
        return Err(Error::config("invalid characters in network name").with_details(format!("{name:?}")));
    }
    Ok(())
}

/// A CNI plugin: the five verbs over a validated [`Context`].
pub trait Plugin {
    fn add(&self, ctx: &Context) -> Result<CniResult>;
    fn del(&self, ctx: &Context) -> Result<()>;
    fn check(&self, ctx: &Context) -> Result<()>;
    fn status(&self, ctx: &Context) -> Result<()>;
    fn gc(&self, ctx: &Context) -> Result<()>;
}

/// Defines a plugin binary's C `main` (use with `#![no_main]` in `main.rs`).
///
/// A CNI plugin is a process per operation, so process start-up is part of
/// every ADD. Skipping std's runtime set-up (stack-guard discovery through
/// `/proc/self/maps`, the SIGSEGV alt stack) saves ~0.1 ms per call; args,
/// environment and stdio work as usual. A panic ends in [`install_panic_hook`].
/// [`run`] ignores SIGPIPE itself, as std's runtime would have: a write to a
/// connection the peer has closed (an etcd member killed mid-request) must be
/// an error the plugin answers with, not a signal that kills it silently.
#[macro_export]
macro_rules! plugin_main {
    ($plugin:expr) => {
        #[no_mangle]
        pub extern "C" fn main(_argc: i32, _argv: *const *const u8) -> i32 {
            $crate::skel::run(&$plugin)
        }
    };
}

/// Set to a verb (e.g. `ADD`), makes the plugin panic in that verb once the
/// config is parsed: the tests' way to prove every shipped plugin binary
/// still answers with a CNI error object when something panics.
pub const PANIC_FOR_TEST: &str = "CNI_PANIC_FOR_TEST";

/// What a plugin binary's `main` calls. Never returns.
pub fn run(plugin: &dyn Plugin) -> ! {
    // SAFETY: setting a signal's disposition to SIG_IGN has no handler to race
    // with, and no other thread exists yet.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    install_panic_hook();
    let env = |k: &str| std::env::var(k).ok();
    let ok = dispatch(plugin, &env, &mut std::io::stdin(), &mut std::io::stdout());
    std::process::exit(if ok { 0 } else { 1 })
}

/// The version the error object of a panic is printed in: the config's, once known.
static ANSWER_VERSION: std::sync::Mutex<Option<String>> = std::sync::Mutex::new(None);

fn set_answer_version(v: &str) {
    if let Ok(mut g) = ANSWER_VERSION.lock() {
        *g = Some(v.to_string());
    }
}

/// A plugin must always answer with a CNI error object, whether the build
/// unwinds (release, tests) or aborts (the shipped `plugin` profile). The hook
/// runs before either: it prints the error (code 999, the panic message) on
/// stdout, flushes it and exits non-zero itself, so nothing unwinds into
/// `dispatch` and no later code runs.
pub fn install_panic_hook() {
    std::panic::set_hook(Box::new(|info| {
        let what = info
            .payload()
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| info.payload().downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "unknown panic payload".to_string());
        let place = info.location().map(|l| format!(" at {}:{}", l.file(), l.line())).unwrap_or_default();
        // try_lock: a panic while the lock is held must still answer.
        let version = ANSWER_VERSION
            .try_lock()
            .ok()
            .and_then(|g| g.clone())
            .unwrap_or_else(|| Version::LATEST.as_str().to_string());
        let err = Error::internal(format!("plugin panicked: {what}")).with_details(place.trim_start());
        let _ = writeln!(std::io::stderr(), "{err}");
        let mut out = std::io::stdout().lock();
        let _ = writeln!(out, "{}", err.to_json(&version));
        let _ = out.flush();
        std::process::exit(1);
    }));
}

/// For the long-running commands next to a plugin (agents, watchers): a panic
/// anywhere, also in a task the runtime would otherwise catch, ends the process
/// after the usual report, so a supervisor restarts it instead of it running on
/// without the task. Release builds unwind (the test harness needs it); this
/// keeps the abort they had.
pub fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        std::process::abort();
    }));
}

/// Runs one invocation; false once the error object has been printed.
pub fn dispatch(
    plugin: &dyn Plugin,
    env: &dyn Fn(&str) -> Option<String>,
    stdin: &mut dyn Read,
    stdout: &mut dyn Write,
) -> bool {
    let mut fallback_version = Version::LATEST.as_str().to_string();
    let outcome = (|| -> Result<Option<Value>> {
        if env("CNI_COMMAND").as_deref() == Some("VERSION") {
            let mut buf = Vec::new();
            let _ = stdin.read_to_end(&mut buf);
            let asked = serde_json::from_slice::<Value>(&buf)
                .ok()
                .and_then(|v| v.get("cniVersion").and_then(|s| s.as_str()).map(str::to_string))
                .unwrap_or_else(|| Version::LATEST.as_str().to_string());
            return Ok(Some(json!({
                "cniVersion": asked,
                "supportedVersions": SUPPORTED.iter().map(|v| v.as_str()).collect::<Vec<_>>(),
            })));
        }
        let mut buf = Vec::new();
        stdin.read_to_end(&mut buf).map_err(|e| Error::io("read network config from stdin", e))?;
        if let Some(v) = serde_json::from_slice::<Value>(&buf)
            .ok()
            .and_then(|v| v.get("cniVersion").and_then(|s| s.as_str()).map(str::to_string))
        {
            fallback_version = v;
            set_answer_version(&fallback_version);
        }
        let ctx = Context::from_parts(env, &buf)?;
        fallback_version = ctx.version.as_str().to_string();
        set_answer_version(&fallback_version);
        crate::log::init(&ctx.conf);
        let span = tracing::info_span!(
            "cni",
            cmd = ctx.command.as_str(),
            net = %ctx.conf.name,
            cid = %ctx.container_id,
            ifname = %ctx.ifname
        );
        let _g = span.enter();
        if env(PANIC_FOR_TEST).is_some_and(|v| v == ctx.command.as_str()) {
            panic!("{PANIC_FOR_TEST} asked for a panic in {}", ctx.command.as_str());
        }
        let out = match ctx.command {
            Command::Add => Some(plugin.add(&ctx)?.to_json(ctx.version)),
            Command::Del => plugin.del(&ctx).map(|_| None)?,
            Command::Check => plugin.check(&ctx).map(|_| None)?,
            Command::Status => plugin.status(&ctx).map(|_| None)?,
            Command::Gc => plugin.gc(&ctx).map(|_| None)?,
            Command::Version => None,
        };
        Ok(out)
    })();
    match outcome {
        // A result the runtime cannot read is a failure: it exits non-zero
        // (the runtime calls DEL for an ADD whose result it never got).
        Ok(Some(v)) => match writeln!(stdout, "{v}").and_then(|_| stdout.flush()) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!("write the result to stdout: {e}");
                false
            }
        },
        Ok(None) => true,
        Err(e) => {
            tracing::warn!(code = e.code.as_u32(), "{e}");
            let _ = writeln!(stdout, "{}", e.to_json(&fallback_version));
            let _ = stdout.flush();
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    struct Echo;
    impl Plugin for Echo {
        fn add(&self, ctx: &Context) -> Result<CniResult> {
            Ok(ctx.prev_result()?.unwrap_or_default())
        }
        fn del(&self, _: &Context) -> Result<()> {
            Ok(())
        }
        fn check(&self, _: &Context) -> Result<()> {
            Ok(())
        }
        fn status(&self, _: &Context) -> Result<()> {
            Err(Error::new(Code::Unavailable, "not ready"))
        }
        fn gc(&self, _: &Context) -> Result<()> {
            Ok(())
        }
    }

    fn call(vars: &[(&str, &str)], stdin: &str) -> (bool, Value) {
        let map: HashMap<String, String> = vars.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        let env = move |k: &str| map.get(k).cloned();
        let mut out = Vec::new();
        let ok = dispatch(&Echo, &env, &mut stdin.as_bytes(), &mut out);
        let v = if out.is_empty() { Value::Null } else { serde_json::from_slice(&out).unwrap() };
        (ok, v)
    }

    const ADD: &[(&str, &str)] = &[
        ("CNI_COMMAND", "ADD"),
        ("CNI_CONTAINERID", "c1"),
        ("CNI_NETNS", "/var/run/netns/x"),
        ("CNI_IFNAME", "eth0"),
        ("CNI_PATH", "/opt/cni/bin"),
    ];

    #[test]
    fn version_lists_every_supported_version() {
        let (ok, v) = call(&[("CNI_COMMAND", "VERSION")], "");
        assert!(ok);
        assert_eq!(v["supportedVersions"].as_array().unwrap().len(), 5);
    }

    #[test]
    fn env_and_config_errors_carry_the_spec_codes() {
        let conf = r#"{"cniVersion":"1.1.0","name":"n","type":"t"}"#;
        assert_eq!(call(&[], conf).1["code"], 4);
        assert_eq!(call(&[("CNI_COMMAND", "FROB")], conf).1["code"], 4);
        assert_eq!(call(&ADD[..3], conf).1["code"], 4); // no CNI_IFNAME
        assert_eq!(call(ADD, "{not json").1["code"], 6);
        assert_eq!(call(ADD, r#"{"cniVersion":"1.1.0","type":"t"}"#).1["code"], 7);
        assert_eq!(call(ADD, r#"{"cniVersion":"7.0.0","name":"n","type":"t"}"#).1["code"], 1);
        let (ok, v) = call(&[("CNI_COMMAND", "STATUS"), ("CNI_PATH", "/x")], conf);
        assert!(!ok);
        assert_eq!(v["code"], 50);
        let old = r#"{"cniVersion":"0.3.1","name":"n","type":"t"}"#;
        assert_eq!(call(&[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")], old).1["code"], 1);
    }

    #[test]
    fn add_prints_prev_result_in_the_configs_version() {
        let conf = r#"{"cniVersion":"0.4.0","name":"n","type":"t",
            "prevResult":{"cniVersion":"1.1.0","ips":[{"address":"10.0.0.2/24"}]}}"#;
        let (ok, v) = call(ADD, conf);
        assert!(ok);
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["ips"][0]["version"], "4");
    }

    #[test]
    fn gc_without_the_valid_list_is_refused_with_code_7() {
        let gc = &[("CNI_COMMAND", "GC"), ("CNI_PATH", "/x")];
        let (ok, v) = call(gc, r#"{"cniVersion":"1.1.0","name":"n","type":"t"}"#);
        assert!(!ok);
        assert_eq!(v["code"], 7);
        assert!(v["details"].as_str().unwrap().contains("cni.dev/valid-attachments"), "{v}");
        // An explicit empty list is the runtime saying "nothing is valid"; either key
        // counts, and so does null (what libcni sends for an empty Go slice).
        let (ok, v) = call(gc, r#"{"cniVersion":"1.1.0","name":"n","type":"t","cni.dev/valid-attachments":null}"#);
        assert!(ok, "{v}");
        let (ok, v) = call(gc, r#"{"cniVersion":"1.1.0","name":"n","type":"t","cni.dev/valid-attachments":[]}"#);
        assert!(ok, "{v}");
        let (ok, v) = call(gc, r#"{"cniVersion":"1.1.0","name":"n","type":"t","cni.dev/attachments":[]}"#);
        assert!(ok, "{v}");
    }

    #[test]
    fn add_answers_in_the_runtimes_cni_version_not_the_lists_highest() {
        let conf = r#"{"cniVersion":"0.4.0","cniVersions":["0.4.0","1.0.0","1.1.0"],"name":"n","type":"t",
            "prevResult":{"cniVersion":"1.1.0","ips":[{"address":"10.0.0.2/24"}]}}"#;
        let (ok, v) = call(ADD, conf);
        assert!(ok, "{v}");
        assert_eq!(v["cniVersion"], "0.4.0");
        assert_eq!(v["ips"][0]["version"], "4");
    }

    #[test]
    fn bad_container_ids_and_ifnames_are_rejected() {
        let conf = r#"{"cniVersion":"1.0.0","name":"n","type":"t"}"#;
        let mut vars = ADD.to_vec();
        vars[1] = ("CNI_CONTAINERID", "-bad");
        assert_eq!(call(&vars, conf).1["code"], 4);
        let mut vars = ADD.to_vec();
        vars[3] = ("CNI_IFNAME", "this-name-is-too-long");
        assert_eq!(call(&vars, conf).1["code"], 4);
    }
}
