//! The files `conformance csi` reads: volume parameters (`--params`,
//! `--mutable-params`) and secrets (`--secrets`).
//!
//! Both accept JSON or the small YAML subset csi-sanity's files use, so a
//! `--csi.testvolumeparameters` or `--csi.secrets` file works unchanged:
//!
//! ```text
//! # parameters: a flat map            # secrets: one map per RPC
//! server: 127.0.0.1                    CreateVolumeSecret:
//! share: /export                         user: alice
//!                                      DeleteVolumeSecret:
//!                                        user: alice
//! ```
//!
//! JSON: `{"server": "127.0.0.1", "share": "/export"}` and
//! `{"CreateVolumeSecret": {"user": "alice"}}`. Numbers and booleans in JSON
//! parameters become their text; anything nested is an error, as is an
//! unknown secrets section (a typo would otherwise silently send no secret).

use std::collections::{BTreeMap, HashMap};

use serde_json::Value;

use super::Res;

/// The secrets sections csi-sanity knows, one per RPC that carries secrets.
pub const SECRET_KINDS: &[&str] = &[
    "CreateVolumeSecret",
    "DeleteVolumeSecret",
    "ControllerPublishVolumeSecret",
    "ControllerUnpublishVolumeSecret",
    "ControllerValidateVolumeCapabilitiesSecret",
    "NodeStageVolumeSecret",
    "NodePublishVolumeSecret",
    "CreateSnapshotSecret",
    "DeleteSnapshotSecret",
    "ControllerExpandVolumeSecret",
    "ControllerModifyVolumeSecret",
    "ListSnapshotsSecret",
    "GetSnapshotSecret",
    "NodeExpandVolumeSecret",
];

/// Secrets per RPC; a missing section means "send no secrets".
#[derive(Clone, Debug, Default)]
pub struct Secrets(BTreeMap<String, HashMap<String, String>>);

impl Secrets {
    /// The map for one section of [`SECRET_KINDS`] (empty if absent).
    pub fn get(&self, kind: &str) -> HashMap<String, String> {
        debug_assert!(SECRET_KINDS.contains(&kind), "unknown secrets kind {kind}");
        self.0.get(kind).cloned().unwrap_or_default()
    }

    /// The section names present (never the values: they are secret).
    pub fn sections(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Parses a flat string map (JSON object or `key: value` lines).
pub fn parse_map(text: &str) -> Res<HashMap<String, String>> {
    if text.trim_start().starts_with('{') {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("JSON: {e}"))?;
        return json_map(&v, "the top level");
    }
    let mut out = HashMap::new();
    for (n, line) in lines(text) {
        if line.starts_with([' ', '\t']) {
            return Err(format!("line {n}: nested values are not supported in a parameters file"));
        }
        let (k, v) = key_value(n, line)?;
        if v.is_empty() && line.trim_end().ends_with(':') {
            return Err(format!("line {n}: {k:?} has no value"));
        }
        out.insert(k, v);
    }
    Ok(out)
}

/// Parses a secrets file (JSON object of objects, or csi-sanity's YAML form).
pub fn parse_secrets(text: &str) -> Res<Secrets> {
    let mut out: BTreeMap<String, HashMap<String, String>> = BTreeMap::new();
    if text.trim_start().starts_with('{') {
        let v: Value = serde_json::from_str(text).map_err(|e| format!("JSON: {e}"))?;
        let obj = v.as_object().ok_or("a secrets file must be an object of objects")?;
        for (kind, m) in obj {
            known_kind(kind)?;
            out.insert(kind.clone(), json_map(m, kind)?);
        }
        return Ok(Secrets(out));
    }
    let mut section: Option<String> = None;
    for (n, line) in lines(text) {
        if line.starts_with([' ', '\t']) {
            let kind = section.as_ref().ok_or_else(|| format!("line {n}: an indented line outside a section"))?;
            let (k, v) = key_value(n, line.trim_start())?;
            out.entry(kind.clone()).or_default().insert(k, v);
        } else {
            let (k, v) = key_value(n, line)?;
            if !v.is_empty() && v != "{}" {
                return Err(format!("line {n}: expected \"{k}:\" followed by indented key: value lines"));
            }
            known_kind(&k)?;
            out.entry(k.clone()).or_default();
            section = Some(k);
        }
    }
    Ok(Secrets(out))
}

fn known_kind(k: &str) -> Res<()> {
    if SECRET_KINDS.contains(&k) {
        Ok(())
    } else {
        Err(format!("unknown secrets section {k:?} (known: {})", SECRET_KINDS.join(", ")))
    }
}

fn json_map(v: &Value, what: &str) -> Res<HashMap<String, String>> {
    let obj = v.as_object().ok_or_else(|| format!("{what}: expected an object of strings"))?;
    obj.iter()
        .map(|(k, v)| match v {
            Value::String(s) => Ok((k.clone(), s.clone())),
            Value::Number(_) | Value::Bool(_) => Ok((k.clone(), v.to_string())),
            _ => Err(format!("{what}: {k:?} must be a string, number or boolean")),
        })
        .collect()
}

/// Non-blank, non-comment lines with their 1-based numbers.
fn lines(text: &str) -> impl Iterator<Item = (usize, &str)> {
    text.lines().enumerate().map(|(i, l)| (i + 1, l)).filter(|(_, l)| {
        let t = l.trim();
        !t.is_empty() && !t.starts_with('#') && t != "---"
    })
}

fn key_value(n: usize, line: &str) -> Res<(String, String)> {
    let (k, v) = line.split_once(':').ok_or_else(|| format!("line {n}: expected key: value"))?;
    let k = unquote(k.trim());
    if k.is_empty() {
        return Err(format!("line {n}: empty key"));
    }
    Ok((k, unquote(v.trim())))
}

fn unquote(s: &str) -> String {
    for q in ['"', '\''] {
        if s.len() >= 2 && s.starts_with(q) && s.ends_with(q) {
            return s[1..s.len() - 1].to_string();
        }
    }
    s.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_json_and_yaml_agree() {
        let j = parse_map(r#"{"server": "127.0.0.1", "share": "/export", "n": 3, "ro": false}"#).unwrap();
        let y = parse_map("# comment\nserver: 127.0.0.1\nshare: \"/export\"\nn: 3\nro: 'false'\n").unwrap();
        assert_eq!(j, y);
        assert_eq!(j["server"], "127.0.0.1");
        assert_eq!(j["n"], "3");
    }

    #[test]
    fn params_values_may_contain_colons() {
        let m = parse_map("mountOptions: nfsvers=4.1,port=2049\nurl: http://x:1/y\n").unwrap();
        assert_eq!(m["url"], "http://x:1/y");
    }

    #[test]
    fn params_reject_nesting_and_garbage() {
        assert!(parse_map("a:\n  b: c\n").is_err());
        assert!(parse_map("just words\n").is_err());
        assert!(parse_map(r#"{"a": {"b": "c"}}"#).is_err());
        assert!(parse_map(r#"["a"]"#).is_err());
    }

    #[test]
    fn secrets_yaml_like_csi_sanity() {
        let s = parse_secrets(
            "CreateVolumeSecret:\n  secretKey: secretval1\nDeleteVolumeSecret:\n  secretKey: secretval2\n\
             NodePublishVolumeSecret: {}\n",
        )
        .unwrap();
        assert_eq!(s.get("CreateVolumeSecret")["secretKey"], "secretval1");
        assert_eq!(s.get("DeleteVolumeSecret")["secretKey"], "secretval2");
        assert!(s.get("NodePublishVolumeSecret").is_empty());
        assert!(s.get("ListSnapshotsSecret").is_empty());
        assert_eq!(s.sections(), vec!["CreateVolumeSecret", "DeleteVolumeSecret", "NodePublishVolumeSecret"]);
    }

    #[test]
    fn secrets_json() {
        let s = parse_secrets(r#"{"CreateSnapshotSecret": {"k": "v"}}"#).unwrap();
        assert_eq!(s.get("CreateSnapshotSecret")["k"], "v");
    }

    #[test]
    fn secrets_reject_unknown_sections_and_stray_lines() {
        assert!(parse_secrets("CreateVolumeSecrets:\n  k: v\n").unwrap_err().contains("unknown secrets section"));
        assert!(parse_secrets("  k: v\n").is_err());
        assert!(parse_secrets("CreateVolumeSecret: v\n").is_err());
        assert!(parse_secrets(r#"{"Bogus": {}}"#).is_err());
    }
}
