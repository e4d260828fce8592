//! The CNI side (`type: "cni-overlay"`): turns the host's subnet file into a
//! `cni-bridge` + `cni-ipam` config and delegates to them, like Flannel's CNI
//! plugin does with `bridge` + `host-local`.
//!
//! The rendered delegate config is saved per container in `dataDir`, so DEL
//! replays exactly what ADD used even after the host's subnet changed.

use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_json::{json, Map, Value};

use cni_core::delegate;
use cni_core::{Attachment, CniResult};
use cni_core::{Code, Command, Context, Error, Plugin, Result};
use subnet_lease::subnet_file::{read_subnet_file, SubnetFile};

pub const DEFAULT_SUBNET_FILE: &str = "/run/flannel/subnet.env";
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/flannel";

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

    fn saved(&self, container_id: &str, ifname: &str) -> PathBuf {
        self.data_dir().join(format!("{container_id}-{ifname}"))
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

fn save(path: &Path, conf: &Value) -> Result<()> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(format!("create {}", dir.display()), e))?;
    }
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, serde_json::to_vec(conf).unwrap_or_default())
        .and_then(|_| std::fs::rename(&tmp, path))
        .map_err(|e| Error::io(format!("save delegate config {}", path.display()), e))
}

fn load(path: &Path) -> Result<Option<Value>> {
    match std::fs::read(path) {
        Ok(b) => serde_json::from_slice(&b)
            .map(Some)
            .map_err(|e| Error::new(Code::Decode, format!("decode {}", path.display())).with_details(e)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(format!("read {}", path.display()), e)),
    }
}

impl Plugin for Overlay {
    fn add(&self, ctx: &Context) -> Result<CniResult> {
        let conf = OverlayConf::parse(ctx)?;
        let sn = subnet(&conf, Code::TryAgainLater)?;
        let d = render(ctx, &conf, &sn);
        let path = conf.saved(&ctx.container_id, &ctx.ifname);
        save(&path, &d)?;
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
        let path = conf.saved(&ctx.container_id, &ctx.ifname);
        let Some(d) = load(&path)? else {
            return Ok(()); // never added, or already deleted
        };
        delegate::exec(&delegate_type(&d), Command::Del, ctx, &with_prev(&d, ctx))?;
        std::fs::remove_file(&path).or_else(ignore_missing).map_err(|e| Error::io("remove saved config", e))
    }

    fn check(&self, ctx: &Context) -> Result<()> {
        let conf = OverlayConf::parse(ctx)?;
        let path = conf.saved(&ctx.container_id, &ctx.ifname);
        let d = load(&path)?.ok_or_else(|| {
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
        let valid: Vec<Attachment> = ctx.conf.gc_valid_attachments().unwrap_or_default().to_vec();
        let mut errors = Vec::new();
        // Saved configs of attachments the runtime no longer knows.
        if let Ok(dir) = std::fs::read_dir(conf.data_dir()) {
            for entry in dir.flatten() {
                let name = entry.file_name().to_string_lossy().into_owned();
                let keep = valid.iter().any(|a| name == format!("{}-{}", a.container_id, a.ifname));
                let is_file = entry.file_type().is_ok_and(|t| t.is_file());
                if is_file && !keep && !name.ends_with(".tmp") {
                    if let Err(e) = std::fs::remove_file(entry.path()) {
                        errors.push(format!("remove {name}: {e}"));
                    }
                }
            }
        }
        // The delegates collect their own state (leases, ports) with the same list.
        if let Ok(sn) = subnet(&conf, Code::Unavailable) {
            let mut d = render(ctx, &conf, &sn);
            d["cni.dev/valid-attachments"] = serde_json::to_value(&valid).unwrap_or_default();
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
