//! Holds docs/ to the code, for the plugins' `tests/docs_*.rs`.
//!
//! - [`tables`] / [`table_under`]: the tables of a markdown page as a CommonMark (GFM)
//!   parser sees them, each with the heading it sits under;
//! - [`serde_keys`], [`str_list`], [`has_str_literal`]: what a source file accepts, read
//!   with `syn` from the source itself: the names serde derives for a struct (with
//!   `rename_all`, `rename`, `alias`), and the string lists a parser validates against.
//!   Most config structs are private to their crate, so a test cannot reflect them; reading
//!   the source means a field added, renamed or dropped shows up in the comparison;
//! - [`clap_flags`] and [`help_flags`]: the long flags of a clap command, from the command
//!   itself or from a binary's `--help`;
//! - [`same_keys`]: the comparison, both ways, with a message that says which side to fix.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use pulldown_cmark::{Event, Options, Parser, Tag, TagEnd};

/// The workspace root, found at run time ([`testkit::util::workspace_root`]):
/// the docs read are the checkout's under test, even when the build dir was
/// last filled from another checkout.
pub fn workspace_root() -> PathBuf {
    testkit::util::workspace_root()
}

/// Reads `rel` (relative to the workspace root), panicking with the path on failure.
pub fn read(rel: &str) -> String {
    let p = workspace_root().join(rel);
    std::fs::read_to_string(&p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

/// One cell: its text (code spans keep their backticks) and its code spans alone.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cell {
    pub text: String,
    pub code: Vec<String>,
}

/// One markdown table and the heading it sits under.
#[derive(Debug, Clone, Default)]
pub struct Table {
    /// The text of the nearest heading above the table.
    pub heading: String,
    pub header: Vec<String>,
    pub rows: Vec<Vec<Cell>>,
}

impl Table {
    /// The keys a row documents: the code spans of its first cell, each cut at the first
    /// blank (`--endpoint URL` documents `--endpoint`).
    pub fn row_keys(row: &[Cell]) -> Vec<String> {
        row.first()
            .map(|c| c.code.iter().filter_map(|s| s.split_whitespace().next().map(str::to_string)).collect())
            .unwrap_or_default()
    }

    /// Every key the first column documents.
    pub fn keys(&self) -> BTreeSet<String> {
        self.rows.iter().flat_map(|r| Table::row_keys(r)).collect()
    }

    /// The cell of column `col` (by header text) in the row documenting `key`.
    pub fn cell(&self, key: &str, col: &str) -> Option<&Cell> {
        let i = self.header.iter().position(|h| h.eq_ignore_ascii_case(col))?;
        self.rows.iter().find(|r| Table::row_keys(r).iter().any(|k| k == key)).and_then(|r| r.get(i))
    }
}

/// Every table of a markdown text, in order.
pub fn tables(markdown: &str) -> Vec<Table> {
    let mut out = Vec::new();
    let (mut heading, mut in_heading) = (String::new(), false);
    let mut table: Option<Table> = None;
    let mut row: Vec<Cell> = Vec::new();
    let mut cell: Option<Cell> = None;
    let mut in_head = false;
    for ev in Parser::new_ext(markdown, Options::ENABLE_TABLES) {
        match ev {
            Event::Start(Tag::Heading { .. }) => {
                heading.clear();
                in_heading = true;
            }
            Event::End(TagEnd::Heading(_)) => in_heading = false,
            Event::Start(Tag::Table(_)) => table = Some(Table { heading: heading.clone(), ..Table::default() }),
            Event::End(TagEnd::Table) => out.extend(table.take()),
            Event::Start(Tag::TableHead) => in_head = true,
            Event::End(TagEnd::TableHead) => {
                in_head = false;
                if let Some(t) = table.as_mut() {
                    t.header = row.drain(..).map(|c| c.text.trim().to_string()).collect();
                }
            }
            Event::Start(Tag::TableRow) => row.clear(),
            Event::End(TagEnd::TableRow) => {
                if let (Some(t), false) = (table.as_mut(), in_head) {
                    t.rows.push(std::mem::take(&mut row));
                }
            }
            Event::Start(Tag::TableCell) => cell = Some(Cell::default()),
            Event::End(TagEnd::TableCell) => {
                if let Some(mut c) = cell.take() {
                    c.text = c.text.trim().to_string();
                    row.push(c);
                }
            }
            Event::Text(t) => {
                if let Some(c) = cell.as_mut() {
                    c.text.push_str(&t);
                } else if in_heading {
                    heading.push_str(&t);
                }
            }
            Event::Code(t) => {
                if let Some(c) = cell.as_mut() {
                    c.text.push('`');
                    c.text.push_str(&t);
                    c.text.push('`');
                    c.code.push(t.to_string());
                } else if in_heading {
                    heading.push_str(&t);
                }
            }
            Event::SoftBreak | Event::HardBreak => {
                if let Some(c) = cell.as_mut() {
                    c.text.push(' ');
                }
            }
            _ => {}
        }
    }
    out
}

/// The first table under a heading that contains `heading` (the table must come before the
/// next heading), from the page `page` (relative to the workspace root).
pub fn table_under(page: &str, heading: &str) -> Table {
    tables(&read(page))
        .into_iter()
        .find(|t| t.heading.contains(heading))
        .unwrap_or_else(|| panic!("{page}: no table under a heading containing {heading:?}"))
}

/// How serde's `rename_all` turns a field name into a key.
fn rename_all(rule: &str, field: &str) -> String {
    let pascal = || {
        let mut s = String::new();
        let mut up = true;
        for ch in field.chars() {
            if ch == '_' {
                up = true;
            } else if up {
                s.extend(ch.to_uppercase());
                up = false;
            } else {
                s.push(ch);
            }
        }
        s
    };
    match rule {
        "camelCase" => {
            let p = pascal();
            let mut cs = p.chars();
            cs.next().map(|f| f.to_lowercase().chain(cs).collect()).unwrap_or_default()
        }
        "PascalCase" => pascal(),
        "snake_case" => field.to_string(),
        "lowercase" => field.to_lowercase(),
        "kebab-case" => field.replace('_', "-"),
        "SCREAMING_SNAKE_CASE" => field.to_uppercase(),
        other => panic!("rename_all = {other:?}: not handled by docs-check"),
    }
}

fn parse_file(rel: &str) -> syn::File {
    syn::parse_file(&read(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// Every item of a file, modules' items included.
fn all_items(items: &[syn::Item], out: &mut Vec<syn::Item>) {
    for it in items {
        if let syn::Item::Mod(m) = it {
            if let Some((_, inner)) = &m.content {
                all_items(inner, out);
            }
        }
        out.push(it.clone());
    }
}

fn items(rel: &str) -> Vec<syn::Item> {
    let mut out = Vec::new();
    all_items(&parse_file(rel).items, &mut out);
    out
}

/// The `name = "value"` and bare `name` entries of the `#[serde(...)]` attributes.
fn serde_attrs(attrs: &[syn::Attribute]) -> Vec<(String, Option<String>)> {
    let mut out = Vec::new();
    for a in attrs.iter().filter(|a| a.path().is_ident("serde")) {
        a.parse_nested_meta(|m| {
            let name = m.path.get_ident().map(|i| i.to_string()).unwrap_or_default();
            if m.input.peek(syn::Token![=]) {
                let v = m.value()?;
                // `default = "path"` and the like: a string; `rename(deserialize = "x")` is not
                // used in this workspace and fails below.
                let s: syn::LitStr = v.parse()?;
                out.push((name, Some(s.value())));
            } else if m.input.peek(syn::token::Paren) {
                return Err(m.error(format!("serde({name}(…)) is not handled by docs-check")));
            } else {
                out.push((name, None));
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("serde attribute: {e}"));
    }
    out
}

/// The keys serde accepts when deserializing struct `name` of source file `rel`: each
/// field's `rename`, else its name under the struct's `rename_all`, plus its `alias`es;
/// fields with `skip`/`skip_deserializing` are left out. `flatten` panics (its keys live in
/// another type: list that one too).
pub fn serde_keys(rel: &str, name: &str) -> BTreeSet<String> {
    let st = items(rel)
        .into_iter()
        .find_map(|it| match it {
            syn::Item::Struct(s) if s.ident == name => Some(s),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{rel}: no struct {name}"));
    let rule = serde_attrs(&st.attrs).into_iter().find(|(k, _)| k == "rename_all").and_then(|(_, v)| v);
    let mut keys = BTreeSet::new();
    for f in &st.fields {
        let ident = f.ident.as_ref().unwrap_or_else(|| panic!("{rel}: {name} has unnamed fields")).to_string();
        let ident = ident.trim_start_matches("r#").to_string();
        let attrs = serde_attrs(&f.attrs);
        if attrs.iter().any(|(k, _)| k == "skip" || k == "skip_deserializing") {
            continue;
        }
        if attrs.iter().any(|(k, _)| k == "flatten") {
            panic!("{rel}: {name}.{ident} is #[serde(flatten)]: compare the flattened type's keys instead");
        }
        let key = match attrs.iter().find(|(k, _)| k == "rename") {
            Some((_, Some(r))) => r.clone(),
            _ => match &rule {
                Some(r) => rename_all(r, &ident),
                None => ident.clone(),
            },
        };
        keys.insert(key);
        keys.extend(attrs.into_iter().filter(|(k, _)| k == "alias").filter_map(|(_, v)| v));
    }
    keys
}

/// The string literals of `const name: &[&str] = &[...]` (or `[&str; N]`) in file `rel`.
pub fn str_list(rel: &str, name: &str) -> Vec<String> {
    let expr = items(rel)
        .into_iter()
        .find_map(|it| match it {
            syn::Item::Const(c) if c.ident == name => Some(*c.expr),
            syn::Item::Static(s) if s.ident == name => Some(*s.expr),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{rel}: no const {name}"));
    let expr = match expr {
        syn::Expr::Reference(r) => *r.expr,
        e => e,
    };
    let syn::Expr::Array(arr) = expr else { panic!("{rel}: {name} is not an array of string literals") };
    arr.elems
        .iter()
        .map(|e| match e {
            syn::Expr::Lit(syn::ExprLit { lit: syn::Lit::Str(s), .. }) => s.value(),
            _ => panic!("{rel}: {name} holds something other than string literals"),
        })
        .collect()
}

/// Whether source file `rel` contains the string literal `s` (for keys a parser reads by
/// hand, e.g. `ipam.get("dataDir")`).
pub fn has_str_literal(rel: &str, s: &str) -> bool {
    read(rel).contains(&format!("{s:?}"))
}

/// The keys the CNI spec defines for every network config (and that libcni injects):
/// plugins document only their own keys and our extensions beside these.
pub const CNI_SPEC_KEYS: &[&str] = &[
    "cniVersion",
    "cniVersions",
    "name",
    "type",
    "ipam",
    "dns",
    "prevResult",
    "runtimeConfig",
    "capabilities",
    "args",
    "cni.dev/valid-attachments",
    "cni.dev/attachments",
];

/// The top-level keys every plugin of ours reads beyond the spec's (cni-core's `NetConf`
/// minus [`CNI_SPEC_KEYS`]): `logFile`, `logLevel`.
pub fn cni_extension_keys() -> BTreeSet<String> {
    serde_keys("cni-core/src/types.rs", "NetConf")
        .into_iter()
        .filter(|k| !CNI_SPEC_KEYS.contains(&k.as_str()))
        .collect()
}

/// `keys` with `prefix` in front of each (`ranges[][].` + `subnet`).
pub fn prefixed(prefix: &str, keys: impl IntoIterator<Item = String>) -> BTreeSet<String> {
    keys.into_iter().map(|k| format!("{prefix}{k}")).collect()
}

/// A command's long flags (without `--`) and their default values (joined with `,` when
/// there are several), without `--help` and `--version`.
pub fn clap_flags(cmd: &clap::Command) -> Vec<(String, Option<String>)> {
    cmd.get_arguments()
        .filter_map(|a| {
            let long = a.get_long()?;
            if long == "help" || long == "version" {
                return None;
            }
            let d: Vec<String> = a.get_default_values().iter().map(|v| v.to_string_lossy().into_owned()).collect();
            Some((long.to_string(), (!d.is_empty()).then(|| d.join(","))))
        })
        .collect()
}

/// The long flags a clap `--help` text lists (without `--`), with the `[default: …]` each
/// shows, without `--help` and `--version`.
pub fn help_flags(help: &str) -> Vec<(String, Option<String>)> {
    let mut out: Vec<(String, Option<String>)> = Vec::new();
    let mut current: Option<usize> = None;
    for line in help.lines() {
        let t = line.trim_start();
        // `--flag …` or `-f, --flag …`; not a `- value: …` line of "Possible values".
        let long = t.strip_prefix("--").or_else(|| {
            let b = t.as_bytes();
            (b.len() > 6 && b[0] == b'-' && b[1].is_ascii_alphanumeric() && t[2..].starts_with(", --")).then(|| &t[6..])
        });
        if let (Some(rest), true) = (long, line.starts_with("  ")) {
            current = None;
            let flag: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '-').collect();
            if !flag.is_empty() && flag != "help" && flag != "version" {
                out.push((flag, None));
                current = Some(out.len() - 1);
            }
        } else if !line.is_empty() && !line.starts_with(' ') {
            current = None;
        }
        if let (Some(i), Some(d)) = (current, t.find("[default: ")) {
            let rest = &t[d + "[default: ".len()..];
            let d = &rest[..rest.find(']').unwrap_or(rest.len())];
            // clap shows an empty default as `""`.
            out[i].1 = Some(if d == "\"\"" { String::new() } else { d.to_string() });
        }
    }
    out
}

/// Runs `bin args…` with `CNI_COMMAND` unset and returns its stdout; panics unless it exits 0.
pub fn run_help(bin: &Path, args: &[&str]) -> String {
    let out = std::process::Command::new(bin)
        .args(args)
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    assert!(
        out.status.success(),
        "{} {args:?}: {}\n{}",
        bin.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Compares what a page documents with what the code accepts, both ways. The message names
/// the keys on each side, `what` says which table and which code.
pub fn same_keys(
    what: &str,
    documented: &BTreeSet<String>,
    in_code: &BTreeSet<String>,
) -> std::result::Result<(), String> {
    let undocumented: Vec<_> = in_code.difference(documented).collect();
    let unknown: Vec<_> = documented.difference(in_code).collect();
    if undocumented.is_empty() && unknown.is_empty() {
        return Ok(());
    }
    let mut m = format!("{what}: the docs table and the code disagree");
    if !undocumented.is_empty() {
        m += &format!("\n  in the code but not in the table (add a row): {undocumented:?}");
    }
    if !unknown.is_empty() {
        m += &format!("\n  in the table but not in the code (remove or rename the row): {unknown:?}");
    }
    Err(m)
}

/// [`same_keys`], panicking with its message.
pub fn assert_same_keys(what: &str, documented: &BTreeSet<String>, in_code: &BTreeSet<String>) {
    if let Err(m) = same_keys(what, documented, in_code) {
        panic!("{m}");
    }
}

/// Checks that each flag's default (when it has a non-empty one) appears in the `default`
/// column of its row. Returns the flags whose row lacks it.
pub fn defaults_missing(table: &Table, flags: &[(String, Option<String>)], prefix: &str) -> Vec<String> {
    flags
        .iter()
        .filter_map(|(f, d)| {
            let d = d.as_deref().filter(|d| !d.is_empty())?;
            let key = format!("{prefix}{f}");
            let cell = table.cell(&key, "default")?;
            (!cell.text.contains(d)).then(|| format!("{key}: default {d:?} not in {:?}", cell.text))
        })
        .collect()
}

/// The keys of a flag list, with `prefix` (`--`).
pub fn flag_keys(flags: &[(String, Option<String>)], prefix: &str) -> BTreeSet<String> {
    flags.iter().map(|(f, _)| format!("{prefix}{f}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn tables_keep_their_heading_code_spans_and_escaped_pipes() {
        let md = "# Page\n\n## Flags\n\nText.\n\n| flag | default | meaning |\n|---|---|---|\n\
                  | `--endpoint URL` | `unix:///csi/csi.sock` | a \\| b |\n\
                  | `--etcd-cafile`, `--etcd-keyfile` | – | TLS |\n\n## Other\n\n| a | b |\n|---|---|\n| `x` | y |\n";
        let t = tables(md);
        assert_eq!(t.len(), 2);
        assert_eq!((t[0].heading.as_str(), t[1].heading.as_str()), ("Flags", "Other"));
        assert_eq!(t[0].header, ["flag", "default", "meaning"]);
        assert_eq!(t[0].keys(), set(&["--endpoint", "--etcd-cafile", "--etcd-keyfile"]));
        assert_eq!(t[0].rows[0][2].text, "a | b");
        assert_eq!(t[0].cell("--etcd-keyfile", "meaning").unwrap().text, "TLS");
        assert_eq!(t[0].cell("--endpoint", "default").unwrap().code, ["unix:///csi/csi.sock"]);
    }

    #[test]
    fn serde_names_follow_rename_all_rename_and_alias() {
        assert_eq!(rename_all("camelCase", "etcd_ca_file"), "etcdCaFile");
        assert_eq!(rename_all("camelCase", "mtu"), "mtu");
        assert_eq!(rename_all("PascalCase", "subnet_len"), "SubnetLen");
        assert_eq!(rename_all("kebab-case", "a_b"), "a-b");
        let dir = std::env::temp_dir().join(format!("docs-check-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let f = dir.join("x.rs");
        std::fs::write(
            &f,
            r#"mod inner {
                #[derive(Deserialize)]
                #[serde(deny_unknown_fields, rename_all = "camelCase")]
                struct Raw {
                    is_gateway: bool,
                    #[serde(default, rename = "macspoofchk")]
                    mac_spoof_check: bool,
                    #[serde(alias = "oldName")]
                    new_name: u8,
                    #[serde(skip)]
                    cache: u8,
                    r#type: String,
                }
            }
            const KEYS: &[&str] = &["Type", "VNI"];"#,
        )
        .unwrap();
        // read() is relative to the workspace root: go through an absolute path.
        let rel = f.to_str().unwrap();
        let keys = serde_keys(rel, "Raw");
        assert_eq!(keys, set(&["isGateway", "macspoofchk", "newName", "oldName", "type"]));
        assert_eq!(str_list(rel, "KEYS"), ["Type", "VNI"]);
        assert!(has_str_literal(rel, "VNI") && !has_str_literal(rel, "Port"));
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn both_directions_fail() {
        let doc = set(&["a", "b"]);
        assert!(same_keys("t", &doc, &set(&["a", "b"])).is_ok());
        let e = same_keys("t", &doc, &set(&["a", "c"])).unwrap_err();
        assert!(e.contains("add a row): [\"c\"]") && e.contains("rename the row): [\"b\"]"), "{e}");
    }

    #[test]
    fn help_text_flags_and_defaults() {
        let help = "Usage: x [OPTIONS]\n\nOptions:\n      --endpoint <URL>\n          where\n\n          [default: unix:///csi/csi.sock]\n\n      --node-id <ID>  this node\n      --mode <MODE>\n          m\n\n          Possible values:\n          - a: x\n\n          [default: all]\n\n      --opts <V>  o [default: \"\"]\n  -v, --verbose  v\n  -h, --help  Print help\n";
        assert_eq!(
            help_flags(help),
            [
                ("endpoint".to_string(), Some("unix:///csi/csi.sock".to_string())),
                ("node-id".to_string(), None),
                ("mode".to_string(), Some("all".to_string())),
                ("opts".to_string(), Some(String::new())),
                ("verbose".to_string(), None),
            ]
        );
    }
}
