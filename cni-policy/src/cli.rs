//! The operator's commands (clap derive). `main` looks at `CNI_COMMAND` first: with it set the
//! binary is the plugin and nothing here runs.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use clap::{Parser, Subcommand};
use serde::Serialize;

use crate::cluster::{self, SharedEndpoint};
use crate::reconcile::{self, Change};
use crate::registry::{EndpointRecord, StateConfig, StateDir};
use crate::{Error, Result, DEFAULT_POLICY_DIR, DEFAULT_STATE_DIR};

#[derive(Debug, Parser)]
#[command(
    name = "cni-policy",
    about = "ACL policy from Calico and Kubernetes policy files, enforced with nftables, for any CNI network",
    after_help = "With CNI_COMMAND set, cni-policy is the chained CNI plugin (type \"cni-policy\").\n\
                  Log level: CNI_POLICY_LOG=debug|info|warn (stderr).",
    arg_required_else_help = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub cmd: Cmd,
}

#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Applies the policy files of DIR and re-applies them whenever they change (foreground;
    /// SIGTERM or SIGINT stops it). A file that does not parse is logged with its file, line
    /// and field, and the policy in force stays as it was
    Watch {
        /// The policy directory (every *.yaml and *.yml file in it)
        #[arg(long, value_name = "DIR")]
        dir: PathBuf,
        #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// How often the tables are verified in force (and put back if not): 10s, 500ms, 2m
        #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = parse_interval)]
        resync_interval: std::time::Duration,
        /// Share endpoints with the other hosts through this etcd (comma-separated URLs); the
        /// default is the plugin's etcdEndpoints recorded in the state directory, if any
        #[arg(long, value_name = "URLS")]
        etcd_endpoints: Option<etcd_kv::flags::Endpoints>,
        /// Key prefix in etcd (with --etcd-endpoints; default /cni-policy)
        #[arg(long, value_name = "PREFIX", requires = "etcd_endpoints")]
        etcd_prefix: Option<String>,
        #[command(flatten)]
        etcd_tls: etcd_kv::flags::TlsFlags,
        /// This host's name in the etcd keys (with --etcd-endpoints; default the hostname)
        #[arg(long, value_name = "NAME", requires = "etcd_endpoints")]
        node_name: Option<String>,
    },
    /// Validates policy files without applying them: OK, or each error with its file, line and
    /// field (exit status 1)
    Check {
        #[arg(value_name = "FILE", required = true)]
        files: Vec<PathBuf>,
    },
    /// Lists the endpoints, the policies that select each one and the rendered rule counts
    Status {
        #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        /// Print JSON instead of a table
        #[arg(long)]
        json: bool,
    },
    /// Changes the labels of a container's endpoints and their policy at once (key=value sets,
    /// key- removes)
    Label {
        #[arg(long, value_name = "DIR", default_value = DEFAULT_STATE_DIR)]
        state_dir: PathBuf,
        #[arg(value_name = "CONTAINER_ID")]
        container_id: String,
        #[arg(value_name = "key=value|key-", required = true)]
        labels: Vec<String>,
    },
}

/// What `status --json` prints (the shape the contract fixes).
#[derive(Debug, Clone, Serialize)]
pub struct Status {
    #[serde(rename = "policyDir")]
    pub policy_dir: PathBuf,
    /// Why the policy directory is not what is in force (`file:line: field: what`); the
    /// endpoints are then shown with the last good set (or with none, if there is none).
    #[serde(rename = "policyError", skip_serializing_if = "Option::is_none")]
    pub policy_error: Option<String>,
    pub endpoints: Vec<EndpointStatus>,
    /// Other hosts' endpoints (cluster mode), as last read from etcd: their addresses are in
    /// the selector sets here, nothing else of them.
    #[serde(rename = "remoteEndpoints", skip_serializing_if = "Vec::is_empty")]
    pub remote_endpoints: Vec<SharedEndpoint>,
    /// nft rules in total.
    pub rules: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointStatus {
    pub name: String,
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
    pub network: String,
    pub namespace: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub addrs: Vec<std::net::IpAddr>,
    #[serde(rename = "hostIfname")]
    pub host_ifname: Option<String>,
    pub bridged: bool,
    /// False for an attachment registered with `allowUnenforceable`: no host-side interface,
    /// its traffic is not filtered here.
    pub enforced: bool,
    /// Policies that apply to it, in evaluation order (`ns/name` or `name`).
    pub policies: Vec<String>,
    /// Rules its traffic can traverse.
    pub rules: usize,
    /// The kernel has its dispatch entries and chains as compiled (`Engine::check`).
    #[serde(rename = "inForce")]
    pub in_force: bool,
}

/// The policy directory a state directory's writers used (`DEFAULT_POLICY_DIR` before any).
pub fn policy_dir_of(state: &StateDir) -> Result<PathBuf> {
    Ok(state.config()?.map(|c| c.policy_dir).unwrap_or_else(|| PathBuf::from(DEFAULT_POLICY_DIR)))
}

/// Compiles the registry with the recorded policy directory, as the writers did.
pub fn status(state_dir: &Path) -> Result<Status> {
    let state = StateDir::new(state_dir);
    let policy_dir = policy_dir_of(&state)?;
    // Read only: `status` takes no lock and writes nothing.
    let (set, policy_error) = match reconcile::load_or_last_good(&state, &policy_dir, false) {
        Ok(l) => (l.set, l.error.map(|e| format!("{e} (the last good set is in force)"))),
        Err(e @ (Error::Policy(_) | Error::NoPolicyDir(_))) => {
            (policy::PolicySet::default(), Some(format!("{e} (and there is no last good set)")))
        }
        Err(e) => return Err(e),
    };
    let records = state.list()?;
    let remote_endpoints = cluster::read_cache(&state)?.unwrap_or_default();
    let remotes: Vec<policy::Endpoint> = remote_endpoints.iter().map(SharedEndpoint::endpoint).collect();
    let c = reconcile::compile(&set, &records, &remotes);
    let engine = reconcile::engine(&state);
    let endpoints = records
        .into_iter()
        .map(|r| EndpointStatus {
            in_force: reconcile::check(&engine, &c, &r.name).is_ok(),
            policies: c.policies_of(&r.name),
            rules: c.endpoint_rules(&r.name),
            name: r.name,
            container_id: r.container_id,
            ifname: r.ifname,
            network: r.network,
            namespace: r.namespace,
            pod: r.pod,
            labels: r.labels,
            addrs: r.addrs,
            host_ifname: r.host_ifname,
            bridged: r.bridged,
            enforced: r.enforced,
        })
        .collect();
    Ok(Status { policy_dir, policy_error, endpoints, remote_endpoints, rules: c.rule_count() })
}

/// The table for humans.
pub fn status_table(s: &Status) -> String {
    let mut out = format!("policy dir: {}\n", s.policy_dir.display());
    if let Some(e) = &s.policy_error {
        let _ = writeln!(out, "POLICY ERROR: {e}");
    }
    let head = ["ENDPOINT", "NAMESPACE", "ADDRESSES", "HOST IF", "LABELS", "POLICIES", "RULES", "IN FORCE"];
    let mut rows: Vec<[String; 8]> = vec![head.map(str::to_string)];
    for e in &s.endpoints {
        let labels: Vec<String> = e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        let addrs: Vec<String> = e.addrs.iter().map(|a| a.to_string()).collect();
        let host = match (&e.host_ifname, e.bridged) {
            (Some(h), true) => format!("{h} (bridge port)"),
            (Some(h), false) => h.clone(),
            (None, _) => "-".into(),
        };
        let or_dash = |v: Vec<String>| if v.is_empty() { "-".to_string() } else { v.join(",") };
        rows.push([
            e.name.clone(),
            e.namespace.clone(),
            or_dash(addrs),
            host,
            or_dash(labels),
            or_dash(e.policies.clone()),
            e.rules.to_string(),
            match (e.enforced, e.in_force) {
                (false, _) => "NO (no host-side interface)",
                (true, true) => "yes",
                (true, false) => "NO",
            }
            .to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..8).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
    for r in &rows {
        let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
        let _ = writeln!(out, "{}", line.join("  ").trim_end());
    }
    if !s.remote_endpoints.is_empty() {
        let _ = writeln!(out, "\nremote endpoints (other hosts, as last read from etcd; selector sets only):");
        let mut rows: Vec<[String; 5]> =
            vec![["NODE", "ENDPOINT", "NAMESPACE", "ADDRESSES", "LABELS"].map(str::to_string)];
        for e in &s.remote_endpoints {
            let labels: Vec<String> = e.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
            let addrs: Vec<String> = e.addrs.iter().map(ToString::to_string).collect();
            rows.push([e.node.clone(), e.name.clone(), e.namespace.clone(), addrs.join(","), labels.join(",")]);
        }
        let widths: Vec<usize> = (0..5).map(|i| rows.iter().map(|r| r[i].len()).max().unwrap_or(0)).collect();
        for r in &rows {
            let line: Vec<String> = r.iter().zip(&widths).map(|(c, w)| format!("{c:<w$}")).collect();
            let _ = writeln!(out, "{}", line.join("  ").trim_end());
        }
    }
    let remote = match s.remote_endpoints.len() {
        0 => String::new(),
        n => format!(", {n} remote endpoints"),
    };
    let _ = writeln!(out, "{} endpoints{remote}, {} rules", s.endpoints.len(), s.rules);
    out
}

/// Validates each file on its own and then all of them together (as one directory would be
/// read): `Ok` or every error, one per line.
pub fn check_files(files: &[PathBuf]) -> Result<(), Vec<String>> {
    let mut errors = Vec::new();
    let mut all = policy::PolicySet::default();
    for f in files {
        match policy::load_file(f) {
            Ok(set) => all.extend(set),
            Err(e) => errors.push(e.to_string()),
        }
    }
    if errors.is_empty() {
        // Duplicate names across the files are what a directory of them would reject.
        let mut seen: BTreeMap<(String, Option<String>, String), &policy::Policy> = BTreeMap::new();
        for p in &all.policies {
            let key = (format!("{:?}", p.kind), p.namespace.clone(), p.name.clone());
            if let Some(old) = seen.insert(key, p) {
                errors.push(format!(
                    "{}:{}: metadata.name: {:?} is already defined at {}:{}",
                    p.origin.file.display(),
                    p.origin.line,
                    p.name,
                    old.origin.file.display(),
                    old.origin.line
                ));
            }
        }
    }
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// `watch`'s cluster settings: its flags, or without `--etcd-endpoints` the plugin's recorded in
/// the state directory (`None`: this host's endpoints only).
pub fn watch_cluster(
    state_dir: &Path,
    endpoints: Option<&etcd_kv::flags::Endpoints>,
    prefix: Option<&str>,
    tls: &etcd_kv::flags::TlsFlags,
    node: Option<&str>,
) -> Result<Option<cluster::ClusterConf>> {
    match endpoints {
        Some(eps) => {
            let etcd = tls.config(eps, prefix.unwrap_or(cluster::DEFAULT_PREFIX)).map_err(Error::Cluster)?;
            cluster::ClusterConf::new(etcd, node.map(str::to_string)).map(Some)
        }
        None if *tls != etcd_kv::flags::TlsFlags::default() => {
            Err(Error::Cluster("the --etcd-* TLS files need --etcd-endpoints".into()))
        }
        None => cluster::settings(&StateDir::new(state_dir)),
    }
}

/// `--resync-interval`: a positive number with `ms`, `s` or `m` (a bare number is seconds).
pub fn parse_interval(s: &str) -> Result<std::time::Duration, String> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().map_err(|_| format!("{s:?}: want a number with ms, s or m"))?;
    let d = match unit {
        "ms" => std::time::Duration::from_millis(n),
        "" | "s" => std::time::Duration::from_secs(n),
        "m" => std::time::Duration::from_secs(n * 60),
        _ => return Err(format!("{s:?}: the unit is ms, s or m")),
    };
    if d.is_zero() {
        return Err(format!("{s:?}: must be more than 0"));
    }
    Ok(d)
}

/// One `label` argument: `key=value` sets, `key-` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelEdit {
    Set(String, String),
    Remove(String),
}

pub fn parse_label(arg: &str) -> Result<LabelEdit> {
    let bad = || Error::BadLabel(arg.to_string());
    let ok_key = |k: &str| !k.is_empty() && !k.chars().any(|c| c.is_whitespace() || c == '=');
    if let Some((k, v)) = arg.split_once('=') {
        if !ok_key(k) || v.chars().any(char::is_whitespace) {
            return Err(bad());
        }
        return Ok(LabelEdit::Set(k.into(), v.into()));
    }
    match arg.strip_suffix('-') {
        Some(k) if ok_key(k) => Ok(LabelEdit::Remove(k.into())),
        _ => Err(bad()),
    }
}

/// Relabels every endpoint of `container_id` and re-applies, under the lock: the registry and
/// the kernel change together or not at all. Returns the endpoints changed.
pub fn label(state_dir: &Path, container_id: &str, args: &[String]) -> Result<Vec<EndpointRecord>> {
    let edits = args.iter().map(|a| parse_label(a)).collect::<Result<Vec<_>>>()?;
    let state = StateDir::new(state_dir);
    if !state.exists() {
        return Err(Error::UnknownContainer(container_id.to_string()));
    }
    let _lock = state.lock()?;
    let mut mine: Vec<EndpointRecord> = state.list()?.into_iter().filter(|r| r.container_id == container_id).collect();
    if mine.is_empty() {
        return Err(Error::UnknownContainer(container_id.to_string()));
    }
    for r in &mut mine {
        for e in &edits {
            match e {
                LabelEdit::Set(k, v) => r.labels.insert(k.clone(), v.clone()),
                LabelEdit::Remove(k) => r.labels.remove(k),
            };
        }
    }
    let policy_dir = policy_dir_of(&state)?;
    let set = reconcile::load_or_last_good(&state, &policy_dir, true)?.set;
    // Cluster mode (the plugin recorded its etcd settings): read the other hosts' endpoints
    // first, publish the new labels after (or, etcd down, `watch` does once it answers).
    let read = match cluster::settings(&state)? {
        Some(cc) => cluster::before_change(&state, &cc, false)?,
        None => None,
    };
    reconcile::commit(&state, &reconcile::engine(&state), &set, &Change { put: mine.clone(), remove: vec![] })?;
    state.set_config(&StateConfig { policy_dir })?;
    cluster::after_change(&state, read);
    Ok(mine)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_arguments() {
        assert_eq!(parse_label("app=web").unwrap(), LabelEdit::Set("app".into(), "web".into()));
        assert_eq!(parse_label("app=").unwrap(), LabelEdit::Set("app".into(), "".into()));
        assert_eq!(parse_label("example.com/tier-").unwrap(), LabelEdit::Remove("example.com/tier".into()));
        for bad in ["app", "-", "=web", "a b=c", "app=x y"] {
            assert!(parse_label(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn resync_intervals() {
        use std::time::Duration;
        assert_eq!(parse_interval("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_interval("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_interval("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_interval("2m"), Ok(Duration::from_secs(120)));
        for bad in ["", "0s", "s", "1h", "-1s", "1.5s"] {
            assert!(parse_interval(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn cli_shapes() {
        let c = Cli::try_parse_from(["cni-policy", "watch", "--dir", "/p"]).unwrap();
        match c.cmd {
            Cmd::Watch { dir, state_dir, resync_interval, .. } => {
                assert_eq!(dir, Path::new("/p"));
                assert_eq!(state_dir, Path::new(DEFAULT_STATE_DIR));
                assert_eq!(resync_interval, std::time::Duration::from_secs(10));
            }
            other => panic!("{other:?}"),
        }
        let c = Cli::try_parse_from(["cni-policy", "label", "--state-dir", "/s", "c1", "a=b", "c-"]).unwrap();
        assert!(matches!(c.cmd, Cmd::Label { ref labels, .. } if labels.len() == 2));
        assert!(Cli::try_parse_from(["cni-policy", "check"]).is_err(), "check needs a file");
        assert!(Cli::try_parse_from(["cni-policy", "label", "c1"]).is_err(), "label needs a label");
        assert!(Cli::try_parse_from(["cni-policy", "watch"]).is_err(), "watch needs --dir");
        for needs_endpoints in [["--etcd-prefix", "/p"], ["--node-name", "n"]] {
            let mut args = vec!["cni-policy", "watch", "--dir", "/p"];
            args.extend(needs_endpoints);
            assert!(Cli::try_parse_from(&args).is_err(), "{needs_endpoints:?} needs --etcd-endpoints");
        }
        let c = Cli::try_parse_from([
            "cni-policy",
            "watch",
            "--dir",
            "/p",
            "--etcd-endpoints",
            "http://a:2379,http://b:2379",
            "--node-name",
            "n1",
        ])
        .unwrap();
        let Cmd::Watch { state_dir, etcd_endpoints, etcd_prefix, etcd_tls, node_name, .. } = c.cmd else {
            panic!("watch")
        };
        let cc =
            watch_cluster(&state_dir, etcd_endpoints.as_ref(), etcd_prefix.as_deref(), &etcd_tls, node_name.as_deref())
                .unwrap()
                .unwrap();
        assert_eq!(cc.endpoints, ["http://a:2379", "http://b:2379"]);
        assert_eq!((cc.prefix.as_str(), cc.node.as_str()), (crate::cluster::DEFAULT_PREFIX, "n1"));
        // TLS files without endpoints: an error, not silently this host only.
        let tls = etcd_kv::flags::TlsFlags { etcd_cafile: Some("/ca".into()), ..Default::default() };
        let d = tempfile::tempdir().unwrap();
        assert!(watch_cluster(d.path(), None, None, &tls, None).is_err());
        assert_eq!(watch_cluster(d.path(), None, None, &Default::default(), None).unwrap(), None);
    }

    #[test]
    fn check_reports_file_line_and_field_and_cross_file_duplicates() {
        let d = tempfile::tempdir().unwrap();
        let good = d.path().join("a.yaml");
        std::fs::write(
            &good,
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: g\nspec:\n  selector: all()\n",
        )
        .unwrap();
        assert_eq!(check_files(std::slice::from_ref(&good)), Ok(()));
        let bad = d.path().join("b.yaml");
        std::fs::write(
            &bad,
            "apiVersion: projectcalico.org/v3\nkind: GlobalNetworkPolicy\nmetadata:\n  name: h\nspec:\n  selector: all()\n  ingress:\n  - action: Frob\n",
        )
        .unwrap();
        let errs = check_files(&[good.clone(), bad]).unwrap_err();
        assert_eq!(errs.len(), 1);
        assert!(errs[0].contains("b.yaml:") && errs[0].contains("ingress[0].action"), "{errs:?}");
        let dup = d.path().join("c.yaml");
        std::fs::copy(&good, &dup).unwrap();
        let errs = check_files(&[good, dup]).unwrap_err();
        assert!(errs[0].contains("c.yaml:4") && errs[0].contains("already defined"), "{errs:?}");
    }
}
