//! The CNI side (`type: "cni-overlay"`): turns the host's subnet file into a
//! `cni-bridge` + `cni-ipam` config and delegates to them, like Flannel's CNI
//! plugin does with `bridge` + `host-local`.
//!
//! The rendered delegate config is saved per attachment in `dataDir`, so DEL
//! replays exactly what ADD used even after the host's subnet changed. Each
//! record names its network, container and ifname, and GC removes only
//! records of that shape, of its own network, under the name ADD gave them:
//! never a file it did not write.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Map, Value};

use cni_core::delegate;
use cni_core::{Attachment, CniResult};
use cni_core::{Code, Command, Context, Error, Plugin, Result};
use subnet_lease::subnet_file::{read_subnet_file, SubnetFile};

pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
/// Our own directory: Flannel's CNI plugin keeps its files in
/// [`LEGACY_DATA_DIR`], and a directory shared with it is not ours to collect.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/cni-overlay";
/// Where earlier releases saved records by default (Flannel's directory).
/// DEL and CHECK still read a record of ours there, so containers added
/// before an upgrade are deleted cleanly; GC never looks there.
pub const LEGACY_DATA_DIR: &str = "/var/lib/cni/flannel";
/// The `kind` of a saved record.
const RECORD_KIND: &str = "cni-overlay/delegate-v1";

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct OverlayConf {
    #[serde(default)]
    subnet_file: Option<PathBuf>,
    #[serde(default)]
    data_dir: Option<PathBuf>,
    /// Keys merged over the generated delegate config (`name`/`ipam` are ours to set).
    #[serde(default)]
    delegate: Option<Map<String, Value>>,
}

impl OverlayConf {
    fn parse(ctx: &Context) -> Result<OverlayConf> {
        let c: OverlayConf = serde_json::from_value(ctx.raw.clone())
            .map_err(|e| Error::config("invalid cni-overlay config").with_details(e))?;
        if let Some(d) = &c.delegate {
            for k in ["name", "ipam", "cniVersion"] {
                if d.contains_key(k) {
                    return Err(Error::config(format!("delegate may not set {k:?}"))
                        .with_details("cni-overlay derives it from the network config and the subnet file"));
                }
            }
        }
        Ok(c)
    }

    fn subnet_file(&self) -> &Path {
        self.subnet_file.as_deref().unwrap_or(Path::new(DEFAULT_SUBNET_FILE))
    }

    fn data_dir(&self) -> &Path {
        self.data_dir.as_deref().unwrap_or(Path::new(DEFAULT_DATA_DIR))
    }

    fn saved(&self, network: &str, container_id: &str, ifname: &str) -> PathBuf {
        self.data_dir().join(record_name(network, container_id, ifname))
    }

    /// The record an earlier release saved in Flannel's directory, when the
    /// config leaves `dataDir` at its default.
    fn legacy(&self, container_id: &str, ifname: &str) -> Option<PathBuf> {
        match self.data_dir {
            Some(_) => None,
            None => Some(Path::new(LEGACY_DATA_DIR).join(format!("{container_id}-{ifname}"))),
        }
    }
}

pub use cni_core::names::record_name;

/// What ADD saves: the attachment and the delegate config it ran.
#[derive(Debug, serde::Serialize, Deserialize)]
struct Record {
    kind: String,
    network: String,
    #[serde(rename = "containerID")]
    container_id: String,
    ifname: String,
    delegate: Value,
}

impl Record {
    fn new(ctx: &Context, delegate: Value) -> Record {
        Record {
            kind: RECORD_KIND.to_string(),
            network: ctx.conf.name.clone(),
            container_id: ctx.container_id.clone(),
            ifname: ctx.ifname.clone(),
            delegate,
        }
    }

    /// A file is one of our records only if it parses as one and sits under
    /// the name ADD gives that record (a temp file: that name + `.tmp`).
    fn ours(file_name: &str, bytes: &[u8]) -> Option<Record> {
        let r: Record = serde_json::from_slice(bytes).ok()?;
        let name = record_name(&r.network, &r.container_id, &r.ifname);
        let named_right = file_name == name || file_name == format!("{name}.tmp");
        (r.kind == RECORD_KIND && named_right).then_some(r)
    }
}

pub struct Overlay;

/// Reads the agent's subnet file; its absence means the host is not ready (code 50/11).
fn subnet(conf: &OverlayConf, code: Code) -> Result<SubnetFile> {
    read_subnet_file(conf.subnet_file()).map_err(|e| {
        Error::new(code, format!("host not ready: cannot read {}", conf.subnet_file().display()))
            .with_details(format!("{e}; is the cni-overlay agent running?"))
    })
}

/// The delegate config: Flannel's defaults, then the user's `delegate` overrides.
fn render(ctx: &Context, conf: &OverlayConf, sn: &SubnetFile) -> Value {
    // The file names the first usable address (Flannel's format); a range wants the network.
    let net = |n: ipnetwork::IpNetwork| ipnetwork::IpNetwork::new(n.network(), n.prefix()).expect("same prefix");
    let mut ranges = vec![json!([{ "subnet": net(sn.subnet.into()).to_string() }])];
    let mut routes = vec![json!({ "dst": sn.network.to_string() })];
    if let (Some(net6), Some(sub6)) = (sn.ipv6_network, sn.ipv6_subnet) {
        ranges.push(json!([{ "subnet": net(sub6.into()).to_string() }]));
        routes.push(json!({ "dst": net6.to_string() }));
    }
    let mut d = json!({
        "cniVersion": ctx.version.as_str(),
        "name": ctx.conf.name,
        "type": "cni-bridge",
        "bridge": "cni0",
        "isGateway": true,
        "ipMasq": !sn.ipmasq,
        "mtu": sn.mtu,
        "ipam": {
            "type": "cni-ipam",
            "ranges": ranges,
            "routes": routes,
        },
    });
    // With an explicit dataDir, all of this host's CNI state (saved delegate
    // configs and address leases) lives under it.
    if let Some(dir) = &conf.data_dir {
        d["ipam"]["dataDir"] = json!(dir.join("ipam"));
    }
    if let Some(over) = &conf.delegate {
        for (k, v) in over {
            d[k] = v.clone();
        }
    }
    for k in ["runtimeConfig", "args", "logFile", "logLevel"] {
        if let Some(v) = ctx.raw.get(k) {
            d[k] = v.clone();
        }
    }
    d
}

fn with_prev(conf: &Value, ctx: &Context) -> Value {
    let mut c = conf.clone();
    if let Some(p) = &ctx.conf.prev_result {
        c["prevResult"] = p.clone();
    }
    c["cniVersion"] = json!(ctx.version.as_str());
    c
}

fn delegate_type(conf: &Value) -> String {
    conf["type"].as_str().unwrap_or("cni-bridge").to_string()
}

/// Writes `rec` to `path` through a temp file of its own (`<name>.tmp`: the
/// record name is unique per attachment, so two containers never share it).
fn save(path: &Path, rec: &Record) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    }
    let tmp = tmp_path(path);
    std::fs::write(&tmp, serde_json::to_vec(rec).unwrap_or_default())
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| Error::io(format!("save delegate config {}", path.display()), e))
}

fn tmp_path(path: &Path) -> PathBuf {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(".tmp");
    PathBuf::from(tmp)
}

/// The delegate config ADD saved for this attachment: our record, or a
/// record an earlier release left in Flannel's directory (see
/// [`LEGACY_DATA_DIR`]). Returns the file it came from.
fn load(ctx: &Context, conf: &OverlayConf) -> Result<Option<(PathBuf, Value)>> {
    let path = conf.saved(&ctx.conf.name, &ctx.container_id, &ctx.ifname);
    if let Some(b) = read(&path)? {
        let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        let rec = Record::ours(&name, &b)
            .ok_or_else(|| Error::new(Code::Decode, format!("{} is not a cni-overlay record", path.display())))?;
        return Ok(Some((path, rec.delegate)));
    }
    if let Some(old) = conf.legacy(&ctx.container_id, &ctx.ifname) {
        if let Some(b) = read(&old)? {
            // Ours only if it is the delegate config we rendered for this network.
            let v: Value = serde_json::from_slice(&b).unwrap_or_default();
            if v["name"] == ctx.conf.name.as_str() && v["ipam"]["type"] == "cni-ipam" {
                return Ok(Some((old, v)));
            }
        }
    }
    Ok(None)
}

fn read(path: &Path) -> Result<Option<Vec<u8>>> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
    }
}

impl Plugin for Overlay {
    fn add(&self, ctx: &Context) -> Result<CniResult> {
        let conf = OverlayConf::parse(ctx)?;
        let sn = subnet(&conf, Code::TryAgainLater)?;
        let d = render(ctx, &conf, &sn);
        let path = conf.saved(&ctx.conf.name, &ctx.container_id, &ctx.ifname);
        save(&path, &Record::new(ctx, d.clone()))?;
        let out = delegate::exec(&delegate_type(&d), Command::Add, ctx, &with_prev(&d, ctx));
        match out {
            Ok(bytes) => {
                let v: Value = serde_json::from_slice(&bytes)
                    .map_err(|e| Error::new(Code::Decode, "decode delegate result").with_details(e))?;
                CniResult::from_json(&v)
            }
            Err(e) => {
                // The delegate rolled its own work back; drop our record of it too.
                let _ = std::fs::remove_file(&path);
                Err(e)
            }
        }
    }

    fn del(&self, ctx: &Context) -> Result<()> {
        let conf = OverlayConf::parse(ctx)?;
        let Some((path, d)) = load(ctx, &conf)? else {
            return Ok(()); // never added, or already deleted
        };
        delegate::exec(&delegate_type(&d), Command::Del, ctx, &with_prev(&d, ctx))?;
        std::fs::remove_file(&path).or_else(ignore_missing).map_err(|e| Error::io("remove saved config", e))
    }

    fn check(&self, ctx: &Context) -> Result<()> {
        let conf = OverlayConf::parse(ctx)?;
        let (_, d) = load(ctx, &conf)?.ok_or_else(|| {
            Error::new(Code::UnknownContainer, format!("no saved config for {} {}", ctx.container_id, ctx.ifname))
        })?;
        delegate::exec(&delegate_type(&d), Command::Check, ctx, &with_prev(&d, ctx)).map(|_| ())
    }

    fn status(&self, ctx: &Context) -> Result<()> {
        let conf = OverlayConf::parse(ctx)?;
        let sn = subnet(&conf, Code::Unavailable)?;
        let d = render(ctx, &conf, &sn);
        delegate::exec(&delegate_type(&d), Command::Status, ctx, &with_prev(&d, ctx)).map(|_| ())
    }

    fn gc(&self, ctx: &Context) -> Result<()> {
        let conf = OverlayConf::parse(ctx)?;
        // cni-core refused a GC without the runtime's list: this is that list.
        let valid: &[Attachment] = ctx.gc_valid();
        let mut errors = Vec::new();
        let mut saved: Option<Value> = None;
        // Our records of this network's attachments the runtime no longer knows.
        // Anything else in the directory (other networks, files we did not
        // write) is not ours to judge.
        if let Ok(dir) = std::fs::read_dir(conf.data_dir()) {
            for entry in dir.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                if !entry.file_type().is_ok_and(|t| t.is_file()) || !name.contains(".json") {
                    continue;
                }
                let Ok(bytes) = std::fs::read(entry.path()) else { continue };
                let Some(rec) = Record::ours(&name, &bytes) else { continue };
                if rec.network == ctx.conf.name && saved.is_none() {
                    saved = Some(rec.delegate.clone());
                }
                let keep = rec.network != ctx.conf.name
                    || valid.iter().any(|a| a.container_id == rec.container_id && a.ifname == rec.ifname);
                if !keep {
                    if let Err(e) = std::fs::remove_file(entry.path()).or_else(ignore_missing) {
                        errors.push(format!("remove {name}: {e}"));
                    }
                }
            }
        }
        // The delegates collect their own state (leases, ports) with the list
        // exactly as the runtime sent it, under the keys it used. Without the
        // agent's subnet file, a config ADD saved still names the delegates
        // and their store (IPAM keys its store by network and dataDir, not range).
        let d = match subnet(&conf, Code::Unavailable) {
            Ok(sn) => Some(render(ctx, &conf, &sn)),
            Err(e) => {
                if saved.is_none() {
                    tracing::warn!("{e}; no saved config of this network either: nothing to forward GC to");
                }
                saved
            }
        };
        if let Some(mut d) = d {
            d["cniVersion"] = json!(ctx.version.as_str());
            for k in ["cni.dev/valid-attachments", "cni.dev/attachments"] {
                if let Some(v) = ctx.raw.get(k) {
                    d[k] = v.clone();
                }
            }
            if let Err(e) = delegate::exec(&delegate_type(&d), Command::Gc, ctx, &d) {
                errors.push(e.to_string());
            }
        }
        if errors.is_empty() {
            Ok(())
        } else {
            Err(Error::internal("GC finished with errors").with_details(errors.join("; ")))
        }
    }
}

fn ignore_missing(e: std::io::Error) -> std::io::Result<()> {
    if e.kind() == std::io::ErrorKind::NotFound {
        Ok(())
    } else {
        Err(e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn record_and_temp_names_are_unique_per_attachment() {
        let dir = Path::new("/d");
        let ab = dir.join(record_name("net", "a.b", "eth0"));
        let ac = dir.join(record_name("net", "a.c", "eth0"));
        assert_ne!(ab, ac);
        assert_ne!(tmp_path(&ab), tmp_path(&ac));
        assert_eq!(tmp_path(&ab), Path::new("/d/net+a.b+eth0.json.tmp"));
        // Network names and container IDs cannot hold '+' (CNI's charset), so the split is unambiguous.
        assert_ne!(record_name("n", "a", "b+c"), record_name("n", "a.b", "c"));
        assert_ne!(record_name("n", "a.b", "eth0"), record_name("n", "a", "b.eth0"));
        assert_ne!(record_name("n1", "c", "eth0"), record_name("n2", "c", "eth0"));
    }

    #[test]
    fn only_our_records_under_their_own_names_are_ours() {
        let rec = serde_json::json!({"kind": RECORD_KIND, "network": "n", "containerID": "c.1", "ifname": "eth0",
            "delegate": {"type": "cni-bridge"}});
        let bytes = rec.to_string().into_bytes();
        assert!(Record::ours("n+c.1+eth0.json", &bytes).is_some());
        assert!(Record::ours("n+c.1+eth0.json.tmp", &bytes).is_some());
        assert!(Record::ours("c.1-eth0", &bytes).is_none(), "renamed: not the file ADD wrote");
        assert!(Record::ours("n+c.1+eth0.json", br#"{"type":"bridge","name":"cbr0"}"#).is_none());
        let other_kind = rec.to_string().replace(RECORD_KIND, "flannel").into_bytes();
        assert!(Record::ours("n+c.1+eth0.json", &other_kind).is_none());
    }
}
