//! Plugin chaining the way libcni does it (`AddNetworkList`,
//! `DelNetworkList`, `CheckNetworkList`): every plugin gets the list's
//! `name` and `cniVersion`, the previous result as `prevResult`, and the
//! runtime's capability arguments filtered by its `capabilities` map as
//! `runtimeConfig`. DEL runs in reverse with `prevResult` = the cached
//! (final) ADD result.

use cni_core::version::cmp_str;
use serde_json::{json, Map, Value};

use testkit::plugin::{Outcome, PluginSet, Request};
use testkit::util::R;
use testkit::{bail, ensure};

/// A network configuration list (`.conflist`).
#[derive(Debug, Clone)]
pub struct NetList {
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
}

impl NetList {
    pub fn from_json(v: &Value) -> R<NetList> {
        let plugins = v["plugins"].as_array().cloned().ok_or("conflist has no plugins array")?;
        ensure!(!plugins.is_empty(), "conflist has an empty plugins array");
        Ok(NetList {
            name: v["name"].as_str().unwrap_or_default().to_string(),
            cni_version: v["cniVersion"].as_str().unwrap_or_default().to_string(),
            plugins,
        })
    }
}

/// The per-attachment runtime parameters.
#[derive(Debug, Clone)]
pub struct RuntimeConf {
    pub container_id: String,
    pub netns: Option<String>,
    pub ifname: String,
    /// `CNI_ARGS` pairs.
    pub args: Vec<(String, String)>,
    /// Capability arguments, e.g. `portMappings`.
    pub capability_args: Map<String, Value>,
}

/// libcni's `buildOneConfig` + `injectRuntimeConfig`.
pub fn build_one(plugin: &Value, list: &NetList, prev: Option<&Value>, rt: &RuntimeConf) -> Value {
    let mut c = plugin.clone();
    c["name"] = json!(list.name);
    c["cniVersion"] = json!(list.cni_version);
    if let Some(p) = prev {
        c["prevResult"] = p.clone();
    }
    let mut runtime = Map::new();
    if let Some(caps) = plugin["capabilities"].as_object() {
        for (k, enabled) in caps {
            if enabled.as_bool() == Some(true) {
                if let Some(v) = rt.capability_args.get(k) {
                    runtime.insert(k.clone(), v.clone());
                }
            }
        }
    }
    if !runtime.is_empty() {
        c["runtimeConfig"] = Value::Object(runtime);
    }
    c
}

fn request(command: &str, conf: &Value, rt: &RuntimeConf) -> Request {
    let mut r = Request::container(command, conf, &rt.container_id, rt.netns.as_deref(), &rt.ifname);
    if !rt.args.is_empty() {
        let a = rt.args.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(";");
        r = r.set("CNI_ARGS", &a);
    }
    r
}

fn plugin_type(p: &Value) -> R<&str> {
    p["type"].as_str().filter(|s| !s.is_empty()).ok_or_else(|| "plugin config without type".to_string())
}

fn fail(ty: &str, verb: &str, o: &Outcome) -> String {
    format!("{ty} {verb}: {}", o.describe())
}

/// ADD every plugin in order; returns the final result (cache it for DEL).
pub fn add_list(ps: &PluginSet, list: &NetList, rt: &RuntimeConf) -> R<Value> {
    let mut prev: Option<Value> = None;
    for p in &list.plugins {
        let ty = plugin_type(p)?;
        let conf = build_one(p, list, prev.as_ref(), rt);
        let o = ps.exec(ty, &request("ADD", &conf, rt));
        if !o.success() {
            bail!("{}", fail(ty, "ADD", &o));
        }
        match o.json() {
            Some(r) => prev = Some(r),
            None => bail!("{ty} ADD printed no JSON result: {}", o.describe()),
        }
    }
    prev.ok_or_else(|| "empty chain".to_string())
}

/// CHECK every plugin in order with the cached result.
pub fn check_list(ps: &PluginSet, list: &NetList, rt: &RuntimeConf, cached: &Value) -> R<()> {
    for p in &list.plugins {
        let ty = plugin_type(p)?;
        let conf = build_one(p, list, Some(cached), rt);
        let o = ps.exec(ty, &request("CHECK", &conf, rt));
        if !o.success() {
            bail!("{}", fail(ty, "CHECK", &o));
        }
    }
    Ok(())
}

/// DEL every plugin in reverse order; `prevResult` only for lists at 0.4.0+.
/// Like libcni it stops at the first failure.
pub fn del_list(ps: &PluginSet, list: &NetList, rt: &RuntimeConf, cached: Option<&Value>) -> R<()> {
    let prev = cached.filter(|_| cmp_str(&list.cni_version, "0.4.0").is_ge());
    for p in list.plugins.iter().rev() {
        let ty = plugin_type(p)?;
        let conf = build_one(p, list, prev, rt);
        let o = ps.exec(ty, &request("DEL", &conf, rt));
        if !o.success() {
            bail!("{}", fail(ty, "DEL", &o));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn runtime_config_is_filtered_by_capabilities() {
        let list = NetList { name: "n".into(), cni_version: "1.0.0".into(), plugins: vec![] };
        let mut caps = Map::new();
        caps.insert("portMappings".into(), json!([{"hostPort": 1}]));
        caps.insert("mac".into(), json!("aa:bb:cc:dd:ee:ff"));
        let rt = RuntimeConf {
            container_id: "c".into(),
            netns: None,
            ifname: "eth0".into(),
            args: vec![],
            capability_args: caps,
        };
        let p = json!({"type":"portmap","capabilities":{"portMappings":true,"mac":false}});
        let c = build_one(&p, &list, Some(&json!({"cniVersion":"1.0.0"})), &rt);
        assert_eq!(c["name"], "n");
        assert_eq!(c["cniVersion"], "1.0.0");
        assert_eq!(c["runtimeConfig"]["portMappings"][0]["hostPort"], 1);
        assert!(c["runtimeConfig"].get("mac").is_none());
        assert_eq!(c["prevResult"]["cniVersion"], "1.0.0");
        let plain = build_one(&json!({"type":"tuning"}), &list, None, &rt);
        assert!(plain.get("runtimeConfig").is_none());
        assert!(plain.get("prevResult").is_none());
    }
}
