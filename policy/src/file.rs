//! Policy files: YAML streams of several documents, each dispatched on `apiVersion` + `kind`
//! and mapped onto the model. Unknown fields are refused (a typo must not silently widen or
//! narrow a policy), and every error names the file, the line and the field.
//!
//! Values that need checking (selectors, CIDRs, ports, protocols) are checked while they are
//! deserialized, so serde_yaml_ng attaches the line and the field path to the error. The few
//! checks that need the whole document report the line where the document starts.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ipnetwork::IpNetwork;
use serde::de::{self, Deserializer, IgnoredAny};
use serde::Deserialize;
use serde_yaml_ng::Value;

use crate::model::{
    proto, Action, Direction, EndpointSelector, EntityMatch, IcmpMatch, IpVersion, NamespaceMatch, Origin, Policy,
    PolicyKind, PolicySet, PortRange, Rule, Tier, TierDefault, DEFAULT_TIER, DEFAULT_TIER_ORDER, K8S_POLICY_ORDER,
};
use crate::selector::{K8sLabelSelector, Selector};
use crate::Error;

/// Parses the text of one file (`file` is only for messages).
pub fn parse_str(file: &Path, text: &str) -> Result<PolicySet, Error> {
    let mut set = PolicySet::default();
    parse_into(&mut set, file, text, true)?;
    Ok(set)
}

/// Adds the documents of `text` to `set`; `lists`: a `List` document may hold items (not
/// within another list's items).
fn parse_into(set: &mut PolicySet, file: &Path, text: &str, lists: bool) -> Result<(), Error> {
    // Two passes over the same stream in step: the first reads each document as a plain
    // value to learn its kind, the second deserializes it as that kind. Both report lines
    // counted from the start of the file.
    let typed = serde_yaml_ng::Deserializer::from_str(text);
    let starts = document_starts(text);
    for (index, (plain, doc)) in serde_yaml_ng::Deserializer::from_str(text).zip(typed).enumerate() {
        let d_line = |value: &Value| DocAnchor {
            start: starts.get(index).copied().unwrap_or(1),
            end: starts.get(index + 1).copied().unwrap_or(usize::MAX),
            name: value.get("metadata").and_then(|m| m.get("name")).and_then(Value::as_str).map(str::to_string),
        };
        let value = Value::deserialize(plain).map_err(|e| yaml_error(file, &e))?;
        if value.is_null() {
            IgnoredAny::deserialize(doc).map_err(|e| yaml_error(file, &e))?;
            continue;
        }
        let field = |k: &str| value.get(k).and_then(Value::as_str).map(str::to_string);
        let (api, kind) = (field("apiVersion").unwrap_or_default(), field("kind").unwrap_or_default());
        match (api.as_str(), kind.as_str()) {
            ("projectcalico.org/v3", "NetworkPolicy" | "GlobalNetworkPolicy") => {
                let global = kind == "GlobalNetworkPolicy";
                let d: CalicoDoc = CalicoDoc::deserialize(doc).map_err(|e| yaml_error(file, &e))?;
                let mut p = d.into_policy(global).map_err(|m| doc_error(file, text, &d_line(&value), m))?;
                p.origin = origin(file, text, &d_line(&value));
                add_policy(set, p)?;
            }
            ("projectcalico.org/v3", "Tier") => {
                let d: TierDoc = TierDoc::deserialize(doc).map_err(|e| yaml_error(file, &e))?;
                if set.tiers.iter().any(|t| t.name == d.metadata.name) {
                    let m = format!("metadata.name: tier {:?} declared twice", d.metadata.name);
                    return Err(doc_error(file, text, &d_line(&value), m));
                }
                // Calico fixes the default tier: order 1000000, defaultAction Deny.
                let fixed = d.metadata.name == DEFAULT_TIER
                    && (d.spec.order.is_some_and(|o| o != DEFAULT_TIER_ORDER)
                        || d.spec.default_action.is_some_and(|a| a != TierDefault::Deny));
                if fixed {
                    let m = format!(
                        "spec: the {DEFAULT_TIER:?} tier has order {DEFAULT_TIER_ORDER} and defaultAction Deny"
                    );
                    return Err(doc_error(file, text, &d_line(&value), m));
                }
                set.tiers.push(Tier {
                    name: d.metadata.name,
                    order: d.spec.order,
                    default_action: d.spec.default_action.unwrap_or(TierDefault::Deny),
                });
            }
            ("networking.k8s.io/v1", "NetworkPolicy") => {
                let d: K8sDoc = K8sDoc::deserialize(doc).map_err(|e| yaml_error(file, &e))?;
                let mut p = d.into_policy();
                p.origin = origin(file, text, &d_line(&value));
                add_policy(set, p)?;
            }
            ("v1", "Namespace") => {
                let d: NamespaceDoc = NamespaceDoc::deserialize(doc).map_err(|e| yaml_error(file, &e))?;
                set.namespace_labels.insert(d.metadata.name, d.metadata.labels);
            }
            ("v1", "List")
            | ("networking.k8s.io/v1", "NetworkPolicyList")
            | ("projectcalico.org/v3", "NetworkPolicyList" | "GlobalNetworkPolicyList")
                if lists =>
            {
                let d: ListDoc = ListDoc::deserialize(doc).map_err(|e| yaml_error(file, &e))?;
                let anchor = d_line(&value);
                let items = list_items(text, anchor.start, anchor.end);
                if items.len() != d.items.len() {
                    let m = "items: write a list's items as a block sequence (`- apiVersion: …`), as kubectl does"
                        .to_string();
                    return Err(doc_error(file, text, &anchor, m));
                }
                for (first_line, item) in items {
                    // Padded with empty lines so the item's lines keep their numbers.
                    let padded = format!("{}{item}", "\n".repeat(first_line - 1));
                    parse_into(set, file, &padded, false)?;
                }
            }
            _ => {
                let m = format!(
                    "apiVersion {api:?} kind {kind:?} is not supported (projectcalico.org/v3 NetworkPolicy, \
                     GlobalNetworkPolicy, Tier; networking.k8s.io/v1 NetworkPolicy; v1 Namespace)"
                );
                return Err(doc_error(file, text, &d_line(&value), m));
            }
        }
    }
    Ok(())
}

/// The items of a list document written as a block sequence under a top-level `items:` key,
/// within lines `start..end` of `text`: each item's first line and its text, un-indented so
/// it reads as a document of its own (line for line, so positions stay right).
fn list_items(text: &str, start: usize, end: usize) -> Vec<(usize, String)> {
    let lines: Vec<&str> = text.lines().collect();
    let last = end.saturating_sub(1).min(lines.len());
    let Some(key) = (start.saturating_sub(1)..last).find(|&i| lines[i].trim_end() == "items:") else {
        return Vec::new();
    };
    let mut items: Vec<(usize, String)> = Vec::new();
    let mut indent = None;
    for (i, line) in lines.iter().enumerate().take(last).skip(key + 1) {
        let content = line.trim_start();
        if content.is_empty() || content.starts_with('#') {
            if let Some((_, t)) = items.last_mut() {
                t.push('\n');
            }
            continue;
        }
        let ind = line.len() - content.len();
        let dash = content == "-" || content.starts_with("- ");
        match indent {
            None if dash => indent = Some(ind),
            None => break,
            Some(n) if ind < n || (ind == n && !dash) => break,
            Some(_) => {}
        }
        let n = indent.expect("set above");
        if ind == n && dash {
            // The item's first key moves left as much as its other lines (by the `- `).
            let rest = content[1..].trim_start_matches(' ');
            let pad = content.len() - rest.len();
            items.push((i + 1, format!("{}{rest}\n", " ".repeat(pad.saturating_sub(2)))));
        } else if let Some((_, t)) = items.last_mut() {
            t.push_str(line.get(n + 2..).unwrap_or(""));
            t.push('\n');
        }
    }
    items
}

fn origin(file: &Path, text: &str, anchor: &DocAnchor) -> Origin {
    Origin { file: file.to_path_buf(), line: anchor.line(text).unwrap_or(1) }
}

/// Adds a policy unless one of the same kind, namespace and name exists: the API server
/// would keep only one of them, and which one a reader could not tell.
fn add_policy(set: &mut PolicySet, p: Policy) -> Result<(), Error> {
    if let Some(old) = set.policies.iter().find(|o| o.kind == p.kind && o.namespace == p.namespace && o.name == p.name)
    {
        return Err(Error::File {
            file: p.origin.file.clone(),
            line: Some(p.origin.line),
            message: format!(
                "metadata.name: {:?} {:?}{} is already defined at {}:{}",
                p.kind,
                p.name,
                p.namespace.as_ref().map_or(String::new(), |ns| format!(" in namespace {ns:?}")),
                old.origin.file.display(),
                old.origin.line
            ),
        });
    }
    set.policies.push(p);
    Ok(())
}

/// Reads and parses one file.
pub fn load_file(path: &Path) -> Result<PolicySet, Error> {
    let text = std::fs::read_to_string(path).map_err(|source| Error::Io { path: path.to_path_buf(), source })?;
    parse_str(path, &text)
}

/// Every `*.yaml` and `*.yml` file of `dir` (not its subdirectories), in name order: all
/// their policies, or the first error.
pub fn load_dir(dir: &Path) -> Result<PolicySet, Error> {
    let mut set = PolicySet::default();
    for f in dir_files(dir)? {
        let more = load_file(&f)?;
        merge(&mut set, &f, more)?;
    }
    Ok(set)
}

/// The policy files of `dir`, as [`load_dir`] reads them: every `*.yaml` and `*.yml` file
/// directly in it, in name order.
pub fn dir_files(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let io = |source| Error::Io { path: dir.to_path_buf(), source };
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir).map_err(io)? {
        let path = entry.map_err(io)?.path();
        let yaml = path.extension().is_some_and(|e| e == "yaml" || e == "yml");
        if yaml && path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Parses files already read, `(path, text)` in order, into one set, as [`load_dir`] does
/// (a policy or tier defined twice across them is an error naming the later file).
pub fn parse_files(files: &[(PathBuf, String)]) -> Result<PolicySet, Error> {
    let mut set = PolicySet::default();
    for (f, text) in files {
        merge(&mut set, f, parse_str(f, text)?)?;
    }
    Ok(set)
}

/// Adds what file `f` said to `set`: a policy or tier already defined is an error naming `f`.
fn merge(set: &mut PolicySet, f: &Path, more: PolicySet) -> Result<(), Error> {
    for p in more.policies {
        add_policy(set, p)?;
    }
    for t in more.tiers {
        if set.tiers.iter().any(|o| o.name == t.name) {
            return Err(Error::File {
                file: f.to_path_buf(),
                line: None,
                message: format!("metadata.name: tier {:?} is declared in an earlier file too", t.name),
            });
        }
        set.tiers.push(t);
    }
    set.namespace_labels.extend(more.namespace_labels);
    Ok(())
}

// ---- errors -------------------------------------------------------------------------------

fn yaml_error(file: &Path, e: &serde_yaml_ng::Error) -> Error {
    let mut message = e.to_string();
    // The location goes in front, as `file:line:`.
    if let Some(i) = message.rfind(" at line ") {
        message.truncate(i);
    }
    Error::File { file: file.to_path_buf(), line: e.location().map(|l| l.line()), message }
}

/// An error about a whole document: the line where its `kind:` (or its first key) is.
fn doc_error(file: &Path, text: &str, anchor: &DocAnchor, message: String) -> Error {
    Error::File { file: file.to_path_buf(), line: anchor.line(text), message }
}

/// The first line of each document: line 1, then each `---` line after some content (a
/// leading `---` opens the first document rather than a second).
fn document_starts(text: &str) -> Vec<usize> {
    let mut starts = vec![1];
    let mut content = false;
    for (i, l) in text.lines().enumerate() {
        let marker = l == "---" || l.starts_with("--- ") || l.starts_with("---\t");
        if marker && content {
            starts.push(i + 1);
        } else if marker {
            *starts.last_mut().expect("one") = i + 1;
        }
        content |= marker || !(l.trim().is_empty() || l.trim_start().starts_with('#'));
    }
    starts
}

/// Where a document is: plain values carry no positions, so the error points at the
/// document's `name:` line (or its first line).
struct DocAnchor {
    start: usize,
    end: usize,
    name: Option<String>,
}

impl DocAnchor {
    fn line(&self, text: &str) -> Option<usize> {
        let found = self.name.as_ref().and_then(|name| {
            text.lines().enumerate().skip(self.start - 1).take(self.end.saturating_sub(self.start)).find_map(
                |(i, l)| {
                    let v = l
                        .trim_start()
                        .trim_start_matches("metadata:")
                        .trim_start()
                        .trim_start_matches('{')
                        .trim_start();
                    let v = v.strip_prefix("name:")?;
                    let v = v.split([',', '}']).next().unwrap_or(v).trim().trim_matches(|c| c == '"' || c == '\'');
                    (v == name).then_some(i + 1)
                },
            )
        });
        // Else its first line with content (a list item is parsed after blank lines that
        // keep its line numbers).
        let first = || {
            text.lines().enumerate().skip(self.start - 1).take(self.end.saturating_sub(self.start)).find_map(
                |(i, l)| {
                    let l = l.trim();
                    (!(l.is_empty() || l.starts_with('#') || l.starts_with("---"))).then_some(i + 1)
                },
            )
        };
        Some(found.or_else(first).unwrap_or(self.start))
    }
}

// ---- shared field types -------------------------------------------------------------------

/// A list of objects (`kubectl get -o yaml` of several): its items are read as documents.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ListDoc {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    #[serde(default)]
    #[allow(dead_code)]
    metadata: Option<IgnoredAny>,
    items: Vec<IgnoredAny>,
}

/// The part of `metadata` we read; the fields `kubectl get -o yaml` adds are accepted and
/// ignored so exported files load unchanged.
#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct Meta {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    #[allow(dead_code)]
    annotations: BTreeMap<String, String>,
    #[serde(default)]
    #[allow(dead_code)]
    uid: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    resource_version: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    generation: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    creation_timestamp: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    managed_fields: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    owner_references: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    finalizers: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    deletion_timestamp: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    deletion_grace_period_seconds: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    generate_name: Option<IgnoredAny>,
    #[serde(default)]
    #[allow(dead_code)]
    self_link: Option<IgnoredAny>,
}

#[derive(Deserialize, Clone, Copy)]
enum Dir {
    Ingress,
    Egress,
}

impl From<Dir> for Direction {
    fn from(d: Dir) -> Direction {
        match d {
            Dir::Ingress => Direction::Ingress,
            Dir::Egress => Direction::Egress,
        }
    }
}

/// A scalar as written: checked inside the deserializer's visit, so serde_yaml_ng puts the
/// field's own path and line on the error.
enum Scalar<'a> {
    Int(i128),
    Str(&'a str),
}

fn scalar<'de, D, T, F>(d: D, expecting: &'static str, f: F) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(Scalar<'_>) -> Result<T, String>,
{
    struct V<F>(F, &'static str);
    impl<T, F: FnOnce(Scalar<'_>) -> Result<T, String>> de::Visitor<'_> for V<F> {
        type Value = T;
        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.1)
        }
        fn visit_str<E: de::Error>(self, v: &str) -> Result<T, E> {
            (self.0)(Scalar::Str(v)).map_err(E::custom)
        }
        fn visit_i64<E: de::Error>(self, v: i64) -> Result<T, E> {
            (self.0)(Scalar::Int(v.into())).map_err(E::custom)
        }
        fn visit_u64<E: de::Error>(self, v: u64) -> Result<T, E> {
            (self.0)(Scalar::Int(v.into())).map_err(E::custom)
        }
    }
    d.deserialize_any(V(f, expecting))
}

/// A string scalar.
fn string<'de, D, T, F>(d: D, expecting: &'static str, f: F) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    F: FnOnce(&str) -> Result<T, String>,
{
    scalar(d, expecting, |s| match s {
        Scalar::Str(s) => f(s),
        Scalar::Int(i) => f(&i.to_string()),
    })
}

/// A Calico selector string, parsed where it is read.
struct Sel(Selector);

impl<'de> Deserialize<'de> for Sel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string(d, "a selector", |s| Selector::parse(s).map(Sel).map_err(|e| e.to_string()))
    }
}

/// A Kubernetes label selector, mapped where it is read.
struct K8sSel(Selector);

impl<'de> Deserialize<'de> for K8sSel {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = K8sLabelSelector::deserialize(d)?;
        Selector::from_k8s(&s).map(K8sSel).map_err(de::Error::custom)
    }
}

/// A CIDR (or a single address).
struct Net(IpNetwork);

impl<'de> Deserialize<'de> for Net {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        string(d, "a CIDR", |s| s.parse::<IpNetwork>().map(Net).map_err(|e| format!("{s:?} is not a CIDR: {e}")))
    }
}

/// A protocol: a name (any case) or a number 1–255.
struct Proto(u8);

impl<'de> Deserialize<'de> for Proto {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        scalar(d, "a protocol name or number", |v| match v {
            Scalar::Int(n @ 1..=255) => Ok(Proto(n as u8)),
            Scalar::Int(n) => Err(format!("protocol number {n} is not in 1..=255")),
            Scalar::Str(s) => match s.to_ascii_lowercase().as_str() {
                "tcp" => Ok(Proto(proto::TCP)),
                "udp" => Ok(Proto(proto::UDP)),
                "icmp" => Ok(Proto(proto::ICMP)),
                "icmpv6" => Ok(Proto(proto::ICMPV6)),
                "sctp" => Ok(Proto(proto::SCTP)),
                "udplite" => Ok(Proto(proto::UDPLITE)),
                _ => Err(format!("unknown protocol {s:?} (TCP, UDP, ICMP, ICMPv6, SCTP, UDPLite or a number 1-255)")),
            },
        })
    }
}

fn named_port_error(name: &str) -> String {
    format!("named port {name:?} is not supported: give the port number (docs/policy.md)")
}

fn port_number(s: &str) -> Option<u16> {
    s.trim().parse::<u16>().ok()
}

/// A Calico port: a number, `"first:last"`, or (refused) a name.
struct CalicoPort(PortRange);

impl<'de> Deserialize<'de> for CalicoPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let range = |first: u16, last: u16| {
            if first > last {
                Err(format!("port range {first}:{last} is empty"))
            } else {
                Ok(CalicoPort(PortRange { first, last }))
            }
        };
        scalar(d, "a port number or \"first:last\"", |v| match v {
            Scalar::Int(n) => match u16::try_from(n) {
                Ok(p) => range(p, p),
                Err(_) => Err(format!("port {n} is not in 0..=65535")),
            },
            Scalar::Str(s) => {
                if let Some(p) = port_number(s) {
                    return range(p, p);
                }
                if let Some((a, b)) = s.split_once(':') {
                    if let (Some(a), Some(b)) = (port_number(a), port_number(b)) {
                        return range(a, b);
                    }
                    return Err(format!("port range {s:?} is not first:last in 0..=65535"));
                }
                Err(named_port_error(s))
            }
        })
    }
}

// ---- Calico -------------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CalicoDoc {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: Meta,
    #[serde(default)]
    spec: CalicoSpec,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CalicoSpec {
    tier: Option<String>,
    order: Option<f64>,
    selector: Option<Sel>,
    namespace_selector: Option<Sel>,
    types: Option<Vec<Dir>>,
    #[serde(default)]
    ingress: Vec<CalicoRule>,
    #[serde(default)]
    egress: Vec<CalicoRule>,
    /// A scheduling hint for Calico's own dataplane; nothing to do here.
    #[allow(dead_code)]
    performance_hints: Option<IgnoredAny>,
}

#[derive(Deserialize, Clone, Copy)]
enum CalicoAction {
    Allow,
    Deny,
    Log,
    Pass,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CalicoIcmp {
    #[serde(rename = "type")]
    icmp_type: Option<u8>,
    code: Option<u8>,
}

impl CalicoIcmp {
    /// Calico's `ICMPFields`: type 0–254 (255 is refused), code 0–255 and only with a type;
    /// `{}` (neither) puts no condition on the message.
    fn to_match(&self) -> Result<Option<IcmpMatch>, String> {
        match (self.icmp_type, self.code) {
            (Some(255), _) => Err("icmp type 255 is not in 0..=254".into()),
            (Some(icmp_type), code) => Ok(Some(IcmpMatch { icmp_type, code })),
            (None, Some(_)) => Err("ICMP code specified without an ICMP type".into()),
            (None, None) => Ok(None),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CalicoRuleFields {
    action: CalicoAction,
    protocol: Option<Proto>,
    not_protocol: Option<Proto>,
    icmp: Option<CalicoIcmp>,
    #[serde(rename = "notICMP")]
    not_icmp: Option<CalicoIcmp>,
    ip_version: Option<u8>,
    #[serde(default)]
    source: CalicoEntity,
    #[serde(default)]
    destination: CalicoEntity,
    /// Annotations of the rule.
    #[allow(dead_code)]
    metadata: Option<IgnoredAny>,
}

/// A rule whose fields agree with each other (checked as it is read, for the line number).
struct CalicoRule {
    rule: Rule,
    source: CalicoEntity,
    destination: CalicoEntity,
}

impl<'de> Deserialize<'de> for CalicoRule {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = CalicoRuleFields::deserialize(d)?;
        let err = de::Error::custom;
        let ip_version = match f.ip_version {
            None => None,
            Some(4) => Some(IpVersion::V4),
            Some(6) => Some(IpVersion::V6),
            Some(v) => return Err(err(format!("ipVersion {v}: must be 4 or 6"))),
        };
        let protocol = f.protocol.map(|p| p.0);
        let with_ports = [&f.source, &f.destination].iter().any(|e| !e.ports.is_empty() || !e.not_ports.is_empty());
        if with_ports && !protocol.is_some_and(proto::has_ports) {
            return Err(err("ports and notPorts need protocol TCP, UDP, SCTP or UDPLite".to_string()));
        }
        let is_icmp = |p: Option<u8>| p == Some(proto::ICMP) || p == Some(proto::ICMPV6);
        if (f.icmp.is_some() || f.not_icmp.is_some()) && !is_icmp(protocol) {
            return Err(err("icmp and notICMP need protocol ICMP or ICMPv6".to_string()));
        }
        let icmp = f.icmp.as_ref().map(CalicoIcmp::to_match).transpose().map_err(err)?.flatten();
        let not_icmp = f.not_icmp.as_ref().map(CalicoIcmp::to_match).transpose().map_err(err)?.flatten();
        // Calico's Rule validation: ICMP is IPv4's, ICMPv6 IPv6's.
        for (field, p) in [("protocol", protocol), ("notProtocol", f.not_protocol.as_ref().map(|p| p.0))] {
            let family = match p {
                Some(proto::ICMP) => Some((IpVersion::V4, "ICMP", 4)),
                Some(proto::ICMPV6) => Some((IpVersion::V6, "ICMPv6", 6)),
                _ => None,
            };
            if let Some((v, name, n)) = family {
                if ip_version.is_some_and(|iv| iv != v) {
                    return Err(err(format!("{field} {name} requires ipVersion {n}")));
                }
            }
        }
        // Calico's rule validation: with an ipVersion, every CIDR of the rule is of that
        // version (a rule whose nets are all of the other version would match nothing).
        if let Some(iv) = ip_version {
            for (side, e) in [("source", &f.source), ("destination", &f.destination)] {
                for (name, nets) in [("nets", &e.nets), ("notNets", &e.not_nets)] {
                    let other = nets.iter().find(|n| (n.0.is_ipv4()) != (iv == IpVersion::V4));
                    if let Some(n) = other {
                        let (nv, rv) = if iv == IpVersion::V4 { (6, 4) } else { (4, 6) };
                        return Err(err(format!("{side}.{name}: {} is an IPv{nv} CIDR but ipVersion is {rv}", n.0)));
                    }
                }
            }
        }
        let action = match f.action {
            CalicoAction::Allow => Action::Allow,
            CalicoAction::Deny => Action::Deny,
            CalicoAction::Log => Action::Log,
            CalicoAction::Pass => Action::Pass,
        };
        let rule = Rule {
            action,
            ip_version,
            protocol,
            not_protocol: f.not_protocol.map(|p| p.0),
            icmp,
            not_icmp,
            source: EntityMatch::default(),
            destination: EntityMatch::default(),
        };
        Ok(CalicoRule { rule, source: f.source, destination: f.destination })
    }
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct CalicoEntity {
    #[serde(default)]
    nets: Vec<Net>,
    #[serde(default)]
    not_nets: Vec<Net>,
    selector: Option<Sel>,
    not_selector: Option<Sel>,
    namespace_selector: Option<Sel>,
    #[serde(default)]
    ports: Vec<CalicoPort>,
    #[serde(default)]
    not_ports: Vec<CalicoPort>,
}

impl CalicoEntity {
    /// `namespace`: the policy's, for a namespaced policy (its selectors look there unless a
    /// `namespaceSelector` says otherwise).
    ///
    /// As Calico's rule conversion does (libcalico-go `updateprocessors/rules.go`,
    /// `getEndpointSelector`): the namespace scope (`namespaceSelector`, else a namespaced
    /// policy's own namespace) narrows the *positive* endpoint match as soon as any of
    /// `selector`, `notSelector` or `namespaceSelector` is given, while `notSelector` itself is
    /// matched against the endpoints of every namespace.
    fn to_match(&self, namespace: Option<&str>) -> EntityMatch {
        let namespaces = match (&self.namespace_selector, namespace) {
            (Some(s), _) => Some(NamespaceMatch::Selector(s.0.clone())),
            (None, Some(ns)) => Some(NamespaceMatch::Named(ns.to_string())),
            (None, None) => None,
        };
        let any_selector = self.selector.is_some() || self.not_selector.is_some() || self.namespace_selector.is_some();
        let endpoints = match (&self.selector, &namespaces) {
            (Some(s), ns) => {
                Some(EndpointSelector { namespaces: ns.clone().unwrap_or(NamespaceMatch::Any), labels: s.0.clone() })
            }
            (None, Some(ns)) if any_selector => {
                Some(EndpointSelector { namespaces: ns.clone(), labels: Selector::All })
            }
            (None, _) => None,
        };
        let not_endpoints = self
            .not_selector
            .as_ref()
            .map(|s| EndpointSelector { namespaces: NamespaceMatch::Any, labels: s.0.clone() });
        EntityMatch {
            nets: self.nets.iter().map(|n| n.0).collect(),
            not_nets: self.not_nets.iter().map(|n| n.0).collect(),
            endpoints,
            not_endpoints,
            ports: self.ports.iter().map(|p| p.0).collect(),
            not_ports: self.not_ports.iter().map(|p| p.0).collect(),
        }
    }
}

impl CalicoDoc {
    fn into_policy(self, global: bool) -> Result<Policy, String> {
        let s = self.spec;
        let namespace = if global {
            if self.metadata.namespace.is_some() {
                return Err("metadata.namespace: a GlobalNetworkPolicy has no namespace".into());
            }
            None
        } else {
            if s.namespace_selector.is_some() {
                return Err("spec.namespaceSelector: only a GlobalNetworkPolicy has one (a NetworkPolicy applies to its own namespace)".into());
            }
            Some(self.metadata.namespace.unwrap_or_else(|| "default".into()))
        };
        // Calico's default: Ingress, plus Egress when there are egress rules, and only Egress
        // when there are egress rules and no ingress rules.
        let types: Vec<Direction> = match s.types {
            Some(t) => {
                let mut t: Vec<Direction> = t.into_iter().map(Direction::from).collect();
                t.sort();
                t.dedup();
                t
            }
            None if s.egress.is_empty() => vec![Direction::Ingress],
            None if s.ingress.is_empty() => vec![Direction::Egress],
            None => vec![Direction::Ingress, Direction::Egress],
        };
        let ns = namespace.as_deref();
        let rules = |v: Vec<CalicoRule>| {
            v.into_iter()
                .map(|r| Rule { source: r.source.to_match(ns), destination: r.destination.to_match(ns), ..r.rule })
                .collect::<Vec<_>>()
        };
        Ok(Policy {
            origin: Origin::default(),
            kind: if global { PolicyKind::CalicoGlobalNetworkPolicy } else { PolicyKind::CalicoNetworkPolicy },
            name: self.metadata.name,
            tier: s.tier.unwrap_or_else(|| DEFAULT_TIER.into()),
            order: s.order,
            selector: s.selector.map_or(Selector::All, |s| s.0),
            namespace_selector: s.namespace_selector.map(|s| s.0),
            types,
            ingress: rules(s.ingress),
            egress: rules(s.egress),
            namespace,
        })
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TierDoc {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: Meta,
    #[serde(default)]
    spec: TierSpec,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct TierSpec {
    order: Option<f64>,
    default_action: Option<TierDefault>,
}

impl<'de> Deserialize<'de> for TierDefault {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        match String::deserialize(d)?.as_str() {
            "Deny" => Ok(TierDefault::Deny),
            "Pass" => Ok(TierDefault::Pass),
            other => Err(de::Error::custom(format!("defaultAction {other:?}: Deny or Pass"))),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NamespaceDoc {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: Meta,
    #[allow(dead_code)]
    spec: Option<IgnoredAny>,
    #[allow(dead_code)]
    status: Option<IgnoredAny>,
}

// ---- Kubernetes ---------------------------------------------------------------------------

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct K8sDoc {
    #[allow(dead_code)]
    api_version: String,
    #[allow(dead_code)]
    kind: String,
    metadata: Meta,
    spec: K8sSpec,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct K8sSpec {
    pod_selector: K8sSel,
    policy_types: Option<Vec<Dir>>,
    #[serde(default)]
    ingress: Vec<K8sIngress>,
    #[serde(default)]
    egress: Vec<K8sEgress>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct K8sIngress {
    #[serde(default)]
    from: Vec<K8sPeer>,
    #[serde(default)]
    ports: Vec<K8sPort>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct K8sEgress {
    #[serde(default)]
    to: Vec<K8sPeer>,
    #[serde(default)]
    ports: Vec<K8sPort>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct K8sPeerFields {
    pod_selector: Option<K8sSel>,
    namespace_selector: Option<K8sSel>,
    ip_block: Option<K8sIpBlock>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct K8sIpBlock {
    cidr: Net,
    #[serde(default)]
    except: Vec<Net>,
}

/// A peer, as the remote side of a rule (ingress source, egress destination); its
/// namespace-less selectors look in the policy's namespace, resolved in `into_policy`.
enum K8sPeer {
    IpBlock { cidr: IpNetwork, except: Vec<IpNetwork> },
    Pods { pods: Selector, namespaces: Option<Selector> },
}

impl<'de> Deserialize<'de> for K8sPeer {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = K8sPeerFields::deserialize(d)?;
        match (f.ip_block, f.pod_selector, f.namespace_selector) {
            (Some(b), None, None) => {
                let cidr = b.cidr.0;
                let mut except = Vec::new();
                for e in b.except {
                    let inside = e.0.is_ipv4() == cidr.is_ipv4()
                        && e.0.prefix() >= cidr.prefix()
                        && cidr.contains(e.0.network());
                    if !inside {
                        return Err(de::Error::custom(format!("ipBlock.except {} is not inside cidr {cidr}", e.0)));
                    }
                    except.push(e.0);
                }
                Ok(K8sPeer::IpBlock { cidr, except })
            }
            (Some(_), _, _) => {
                Err(de::Error::custom("ipBlock cannot be combined with podSelector or namespaceSelector"))
            }
            (None, None, None) => Err(de::Error::custom("a peer needs podSelector, namespaceSelector or ipBlock")),
            (None, pods, namespaces) => {
                Ok(K8sPeer::Pods { pods: pods.map_or(Selector::All, |s| s.0), namespaces: namespaces.map(|s| s.0) })
            }
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct K8sPortFields {
    protocol: Option<String>,
    port: Option<K8sPortNumber>,
    end_port: Option<u16>,
}

/// `port`: a number 1–65535 (names are refused).
struct K8sPortNumber(u16);

impl<'de> Deserialize<'de> for K8sPortNumber {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        scalar(d, "a port number", |v| match v {
            Scalar::Int(n) => match u16::try_from(n) {
                Ok(p) if p > 0 => Ok(K8sPortNumber(p)),
                _ => Err(format!("port {n} is not in 1..=65535")),
            },
            Scalar::Str(s) => match port_number(s) {
                Some(p) if p > 0 => Ok(K8sPortNumber(p)),
                _ => Err(named_port_error(s)),
            },
        })
    }
}

/// A port entry: protocol (TCP by default) and an optional port range.
struct K8sPort {
    protocol: u8,
    ports: Option<PortRange>,
}

impl<'de> Deserialize<'de> for K8sPort {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let f = K8sPortFields::deserialize(d)?;
        let err = de::Error::custom;
        let protocol = match f.protocol.as_deref() {
            None | Some("TCP") => proto::TCP,
            Some("UDP") => proto::UDP,
            Some("SCTP") => proto::SCTP,
            Some(p) => return Err(err(format!("protocol {p:?}: TCP, UDP or SCTP"))),
        };
        let port = f.port.map(|p| p.0);
        let ports = match (port, f.end_port) {
            (None, None) => None,
            (None, Some(_)) => return Err(err("endPort needs port".to_string())),
            (Some(p), None) => Some(PortRange { first: p, last: p }),
            (Some(p), Some(e)) if e >= p => Some(PortRange { first: p, last: e }),
            (Some(p), Some(e)) => return Err(err(format!("endPort {e} is below port {p}"))),
        };
        Ok(K8sPort { protocol, ports })
    }
}

impl K8sDoc {
    fn into_policy(self) -> Policy {
        let ns = self.metadata.namespace.unwrap_or_else(|| "default".into());
        let s = self.spec;
        // Kubernetes' default: Ingress always, Egress when there are egress rules.
        let types: Vec<Direction> = match s.policy_types {
            Some(t) => {
                let mut t: Vec<Direction> = t.into_iter().map(Direction::from).collect();
                t.sort();
                t.dedup();
                t
            }
            None if s.egress.is_empty() => vec![Direction::Ingress],
            None => vec![Direction::Ingress, Direction::Egress],
        };
        let peer = |p: &K8sPeer| match p {
            K8sPeer::IpBlock { cidr, except } => {
                EntityMatch { nets: vec![*cidr], not_nets: except.clone(), ..EntityMatch::default() }
            }
            K8sPeer::Pods { pods, namespaces } => EntityMatch {
                endpoints: Some(EndpointSelector {
                    namespaces: match namespaces {
                        Some(n) => NamespaceMatch::Selector(n.clone()),
                        None => NamespaceMatch::Named(ns.clone()),
                    },
                    labels: pods.clone(),
                }),
                ..EntityMatch::default()
            },
        };
        // One Allow rule per (peer, port entry): peers OR'ed, port entries OR'ed; an empty
        // list means "any".
        let rules = |peers: &[K8sPeer], ports: &[K8sPort], ingress: bool| {
            let remotes: Vec<EntityMatch> =
                if peers.is_empty() { vec![EntityMatch::default()] } else { peers.iter().map(peer).collect() };
            let mut out = Vec::new();
            for remote in &remotes {
                let mut push = |protocol: Option<u8>, range: Option<PortRange>| {
                    // Kubernetes' ports are the destination's, in both directions.
                    let ports: Vec<PortRange> = range.into_iter().collect();
                    let (source, destination) = if ingress {
                        (remote.clone(), EntityMatch { ports, ..EntityMatch::default() })
                    } else {
                        (EntityMatch::default(), EntityMatch { ports, ..remote.clone() })
                    };
                    out.push(Rule { protocol, source, destination, ..Rule::any(Action::Allow) });
                };
                if ports.is_empty() {
                    push(None, None);
                }
                for p in ports {
                    push(Some(p.protocol), p.ports);
                }
            }
            out
        };
        Policy {
            origin: Origin::default(),
            kind: PolicyKind::KubernetesNetworkPolicy,
            name: self.metadata.name,
            namespace: Some(ns.clone()),
            tier: DEFAULT_TIER.into(),
            order: Some(K8S_POLICY_ORDER),
            selector: s.pod_selector.0,
            namespace_selector: None,
            types,
            ingress: s.ingress.iter().flat_map(|r| rules(&r.from, &r.ports, true)).collect(),
            egress: s.egress.iter().flat_map(|r| rules(&r.to, &r.ports, false)).collect(),
        }
    }
}
