//! Running another plugin (usually IPAM) the way a runtime would: found in
//! `CNI_PATH`, config on stdin, result or error on stdout.
//!
//! Delegates older than our negotiated version (the reference `host-local`
//! stops at 1.0.0) are retried at the highest version they support, and GC
//! and STATUS are only forwarded to delegates that speak 1.1.0.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};

use serde_json::Value;

use crate::error::{Code, Error, Result};
use crate::skel::{Command, Context};
use crate::types::CniResult;
use crate::version::{self, Version};

/// Finds `plugin` in the `CNI_PATH` directories.
pub fn find(plugin: &str, path: &[PathBuf]) -> Result<PathBuf> {
    if plugin.is_empty() || plugin.contains('/') {
        return Err(Error::config("invalid plugin type").with_details(format!("{plugin:?}")));
    }
    path.iter().map(|dir| dir.join(plugin)).find(|p| p.is_file()).ok_or_else(|| {
        Error::config(format!("failed to find plugin {plugin:?} in CNI_PATH")).with_details(format!("{path:?}"))
    })
}

/// Runs `plugin` with `command` and `conf` on stdin; returns its stdout on success.
pub fn exec(plugin: &str, command: Command, ctx: &Context, conf: &Value) -> Result<Vec<u8>> {
    let bin = find(plugin, &ctx.path)?;
    exec_path(&bin, command, ctx, conf)
}

fn exec_path(bin: &Path, command: Command, ctx: &Context, conf: &Value) -> Result<Vec<u8>> {
    let args: Vec<String> = ctx.args.0.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let path = std::env::join_paths(&ctx.path).unwrap_or_default();
    let mut child = Proc::new(bin)
        .env("CNI_COMMAND", command.as_str())
        .env("CNI_CONTAINERID", &ctx.container_id)
        .env("CNI_NETNS", ctx.netns.as_deref().unwrap_or(Path::new("")))
        .env("CNI_IFNAME", &ctx.ifname)
        .env("CNI_ARGS", args.join(";"))
        .env("CNI_PATH", path)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| Error::io(format!("exec {}", bin.display()), e))?;
    let input = serde_json::to_vec(conf).unwrap_or_default();
    if let Some(mut stdin) = child.stdin.take() {
        // A delegate may exit without reading stdin; that is its answer, not ours to fail.
        let _ = stdin.write_all(&input);
    }
    let out = child.wait_with_output().map_err(|e| Error::io(format!("wait for {}", bin.display()), e))?;
    if out.status.success() {
        return Ok(out.stdout);
    }
    let name = bin.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    Err(Error::from_json(&out.stdout).map(|e| e.context(format!("{name} {}", command.as_str()))).unwrap_or_else(|| {
        Error::internal(format!("{name} {} failed ({})", command.as_str(), out.status))
            .with_details(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }))
}

/// The versions a delegate says it supports (its VERSION answer).
pub fn supported_versions(plugin: &str, ctx: &Context) -> Result<Vec<String>> {
    let out = exec(plugin, Command::Version, ctx, &serde_json::json!({"cniVersion": ctx.version.as_str()}))?;
    let v: Value = serde_json::from_slice(&out)
        .map_err(|e| Error::new(Code::Decode, format!("decode {plugin} VERSION")).with_details(e))?;
    Ok(v["supportedVersions"]
        .as_array()
        .map(|a| a.iter().filter_map(|s| s.as_str().map(str::to_string)).collect())
        .unwrap_or_default())
}

fn speaks(plugin: &str, ctx: &Context, want: Version) -> Result<bool> {
    Ok(supported_versions(plugin, ctx)?.iter().any(|v| version::cmp_str(v, want.as_str()).is_ge()))
}

/// Runs a verb on a delegate; when the delegate rejects our version (code 1)
/// the call is retried once at the highest version both sides support.
fn exec_negotiated(plugin: &str, command: Command, ctx: &Context, conf: &Value) -> Result<Vec<u8>> {
    match exec(plugin, command, ctx, conf) {
        Err(e) if e.code == Code::IncompatibleVersion => {
            let theirs = supported_versions(plugin, ctx)?;
            let common =
                theirs.iter().filter_map(|v| Version::parse(v)).filter(|v| *v <= ctx.version).max().ok_or(e)?;
            let mut conf = conf.clone();
            if let Some(o) = conf.as_object_mut() {
                o.insert("cniVersion".into(), Value::from(common.as_str()));
                o.remove("cniVersions");
                if common < Version::V0_4_0 {
                    o.remove("prevResult");
                }
            }
            exec(plugin, command, ctx, &conf)
        }
        other => other,
    }
}

/// IPAM ADD through `CNI_PATH`.
pub fn ipam_add(plugin: &str, ctx: &Context, conf: &Value) -> Result<CniResult> {
    let out = exec_negotiated(plugin, Command::Add, ctx, conf)?;
    let v: Value = serde_json::from_slice(&out)
        .map_err(|e| Error::new(Code::Decode, format!("decode {plugin} result")).with_details(e))?;
    CniResult::from_json(&v)
}

/// IPAM DEL/CHECK through `CNI_PATH`.
pub fn ipam_verb(plugin: &str, command: Command, ctx: &Context, conf: &Value) -> Result<()> {
    exec_negotiated(plugin, command, ctx, conf).map(|_| ())
}

/// GC or STATUS forwarded to a delegate, only if it implements 1.1.0.
/// Returns false when the delegate is too old and the caller must answer alone.
pub fn forward_if_supported(plugin: &str, command: Command, ctx: &Context, conf: &Value) -> Result<bool> {
    if !speaks(plugin, ctx, Version::V1_1_0)? {
        tracing::debug!(plugin, "delegate does not speak 1.1.0; not forwarding {}", command.as_str());
        return Ok(false);
    }
    exec(plugin, command, ctx, conf)?;
    Ok(true)
}
