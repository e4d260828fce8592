//! The files in deploy/ (docs/install.md): every YAML file parses, document by document, into
//! Kubernetes objects; every command line given to our binaries (the containers' `command` +
//! `args` and exec probes, the systemd units' `ExecStart`) is accepted by the real binary; the
//! cni-bgp agent, its readiness probe and its conflists agree on the state dir, the etcd prefix
//! and where the TLS files are; the CSI sockets the
//! sidecars dial are the one the driver serves, and kubelet's registration path is where that
//! socket is on the host; the node plugin's pod directory is mounted with Bidirectional
//! propagation; the driver name agrees everywhere with the binary's default; StorageClass
//! parameters and conflist keys are documented ones (the docs tables are held to the code by
//! the plugins' own `tests/docs_*.rs`).
//!
//! Every conflist also passes STATUS with the real plugins (its `dataDir`s moved to a temp
//! dir, the overlay given a subnet file, the cluster IPAM pointed at a throw-away etcd, with
//! TLS when the conflist names TLS files), so each config parses and validates as the plugins
//! read it. `cni-bgp`'s STATUS needs its live agent (conformance/tests/bgp_suite.rs runs the
//! suite with one): here it must parse the config and answer code 50 naming the agent, and its
//! IPAM section must pass `cni-ipam`'s STATUS.
//!
//! Needs `cni-bridge`, `cni-ipam`, `cni-overlay`, `cni-bgp`, `cni-policy`, `csi-nfs` and `csi-rbd` built beside
//! the test (`cargo build --release --workspace`) and etcd installed; fails saying so otherwise.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use docs_check::{help_flags, read, run_help, table_under, workspace_root, Table, CNI_SPEC_KEYS};
use serde::Deserialize;
use serde_json::Value;

/// Every file under deploy/, relative to the workspace root.
fn deploy_files() -> Vec<String> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else {
                out.push(p);
            }
        }
    }
    let root = workspace_root();
    let mut files = Vec::new();
    walk(&root.join("deploy"), &mut files);
    files.sort();
    files.iter().map(|p| p.strip_prefix(&root).unwrap().to_string_lossy().into_owned()).collect()
}

/// The documents of a YAML file (empty ones dropped), as JSON values.
fn yaml_docs(rel: &str) -> Vec<Value> {
    let text = read(rel);
    serde_yaml_ng::Deserializer::from_str(&text)
        .enumerate()
        .map(|(i, d)| Value::deserialize(d).unwrap_or_else(|e| panic!("{rel}: document {i}: {e}")))
        .filter(|v| !v.is_null())
        .collect()
}

/// One of our binaries, built beside this test.
fn binary(name: &str) -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>/deps/<test>");
    let p = dir.join(name);
    assert!(
        p.is_file(),
        "{} is missing: build it first (cargo build --release -p cni-bridge -p cni-ipam -p cni-overlay -p cni-bgp -p csi-nfs -p csi-rbd)",
        p.display()
    );
    p
}

/// `$(VAR)` replaced as kubelet does: from the container's `env` (a literal value, or a sample
/// for a `fieldRef` or the etcd Secret's endpoints).
fn expand(arg: &str, env: &[Value]) -> String {
    let mut s = arg.to_string();
    for e in env {
        let name = e["name"].as_str().unwrap_or_default();
        let value = match (&e["value"], e["valueFrom"]["fieldRef"]["fieldPath"].as_str()) {
            (Value::String(v), _) => v.clone(),
            (_, Some("status.podIP")) => "10.0.0.9".into(),
            (_, Some("spec.nodeName")) => "node-1".into(),
            (_, Some("status.hostIP")) => "10.0.0.11".into(),
            _ if e["valueFrom"]["secretKeyRef"]["key"] == "etcd-endpoints" => {
                "https://10.0.0.1:2379,https://10.0.0.2:2379".into()
            }
            other => panic!("env {name}: no sample for {other:?}"),
        };
        s = s.replace(&format!("$({name})"), &value);
    }
    assert!(!s.contains("$("), "{arg}: a variable the container's env does not define");
    s
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array().map(|a| a.iter().map(|x| x.as_str().expect("a string").to_string()).collect()).unwrap_or_default()
}

/// The value of `--flag` in `argv` (`--flag=v` or `--flag v`).
fn flag(argv: &[String], name: &str) -> Option<String> {
    let long = format!("--{name}");
    argv.iter().enumerate().find_map(|(i, a)| {
        a.strip_prefix(&format!("{long}=")).map(str::to_string).or_else(|| (*a == long).then(|| argv[i + 1].clone()))
    })
}

/// Runs the binary with `argv` and `--help` appended: clap reads every flag and value before it
/// reaches `--help`, so an unknown flag or a bad value fails (exit 2) and exit 0 means accepted.
fn accepted_by(bin: &str, argv: &[String]) {
    let mut args: Vec<&str> = argv.iter().map(String::as_str).collect();
    args.push("--help");
    run_help(&binary(bin), &args);
}

/// A container's command line, `$(VAR)`s expanded; `None` unless it runs one of our binaries.
fn our_argv(c: &Value) -> Option<(String, Vec<String>)> {
    let env = c["env"].as_array().cloned().unwrap_or_default();
    let mut argv: Vec<String> = strs(&c["command"]);
    argv.extend(strs(&c["args"]));
    let argv: Vec<String> = argv.iter().map(|a| expand(a, &env)).collect();
    let bin = Path::new(argv.first()?).file_name()?.to_string_lossy().into_owned();
    ours(bin, &argv)
}

/// `(binary name, its arguments)` when `argv[0]` is one of our daemons' binaries.
fn ours(bin: String, argv: &[String]) -> Option<(String, Vec<String>)> {
    ["csi-nfs", "csi-rbd", "cni-overlay", "cni-bgp"].contains(&bin.as_str()).then(|| (bin, argv[1..].to_vec()))
}

/// A container's exec probes that run one of our binaries: (probe, binary, arguments).
fn our_probes(c: &Value) -> Vec<(String, String, Vec<String>)> {
    ["readinessProbe", "livenessProbe", "startupProbe"]
        .iter()
        .filter_map(|k| {
            let argv = strs(&c[*k]["exec"]["command"]);
            let bin = Path::new(argv.first()?).file_name()?.to_string_lossy().into_owned();
            ours(bin, &argv).map(|(b, a)| (k.to_string(), b, a))
        })
        .collect()
}

fn default_driver_name(bin: &str) -> String {
    let help = run_help(&binary(bin), &["--help"]);
    help_flags(&help)
        .into_iter()
        .find(|(f, _)| f == "driver-name")
        .and_then(|(_, d)| d)
        .unwrap_or_else(|| panic!("{bin} --help shows the default --driver-name"))
}

/// What differs between the CSI drivers' manifests.
struct CsiDeploy {
    bin: &'static str,
    /// ControllerPublish (external-attacher, CSIDriver attachRequired).
    attach: bool,
    /// Node stage/unstage: kubelet's plugins dir (staging paths) shared Bidirectional too.
    stage: bool,
}

const CSI_DRIVERS: [CsiDeploy; 2] = [
    CsiDeploy { bin: "csi-nfs", attach: false, stage: false },
    CsiDeploy { bin: "csi-rbd", attach: true, stage: true },
];

/// The keys of a CNI config object that are neither the spec's nor documented in `table`,
/// recursing into arrays (`ranges[][].subnet`), and into `cluster` / `delegate` with their
/// own tables.
fn undocumented(obj: &Value, table: &BTreeSet<String>, prefix: &str, out: &mut Vec<String>) {
    let Some(map) = obj.as_object() else { return };
    for (k, v) in map {
        let path = format!("{prefix}{k}");
        if prefix.is_empty() && CNI_SPEC_KEYS.contains(&k.as_str()) && k != "ipam" {
            continue;
        }
        let ipam = prefix.is_empty() && k == "ipam";
        if !ipam && !table.contains(&path) {
            out.push(path.clone());
            continue;
        }
        match (k.as_str(), v) {
            ("ipam", _) if prefix.is_empty() => {
                undocumented(v, &table_under("docs/cni-ipam.md", "Configuration (ipam section)").keys(), "", out)
            }
            ("cluster", _) => {
                undocumented(v, &table_under("docs/cluster-ipam.md", "Config (ipam.cluster)").keys(), "", out)
            }
            ("delegate", _) => undocumented(v, &table_under("docs/cni-bridge.md", "Config fields").keys(), "", out),
            (_, Value::Array(items)) => {
                for it in items {
                    match it {
                        Value::Object(_) => undocumented(it, table, &format!("{path}[]."), out),
                        Value::Array(inner) => {
                            for x in inner {
                                undocumented(x, table, &format!("{path}[][]."), out);
                            }
                        }
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
}

/// A conflist: well-formed, plugins of ours, and only keys the pages document.
fn check_conflist(what: &str, text: &str) {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(v["cniVersion"].is_string() && v["name"].is_string(), "{what}: cniVersion and name");
    let plugins = v["plugins"].as_array().filter(|p| !p.is_empty()).unwrap_or_else(|| panic!("{what}: no plugins"));
    for p in plugins {
        let table: Table = match p["type"].as_str() {
            Some("cni-bridge") => table_under("docs/cni-bridge.md", "Config fields"),
            Some("cni-overlay") => table_under("docs/cni-overlay.md", "The plugin"),
            Some("cni-bgp") => table_under("docs/cni-bgp.md", "Config fields"),
            Some("cni-policy") => table_under("docs/cni-policy.md", "Config fields"),
            other => panic!("{what}: plugin type {other:?} is not one of ours"),
        };
        let mut bad = Vec::new();
        undocumented(p, &table.keys(), "", &mut bad);
        assert!(bad.is_empty(), "{what}: keys no docs table lists: {bad:?}");
    }
}

#[test]
fn every_yaml_file_is_well_formed_kubernetes_objects() {
    let yamls: Vec<String> =
        deploy_files().into_iter().filter(|f| f.ends_with(".yaml") || f.ends_with(".yml")).collect();
    assert!(yamls.len() >= 5, "deploy/ has {yamls:?}");
    for f in &yamls {
        let docs = yaml_docs(f);
        assert!(!docs.is_empty(), "{f}: no document");
        for d in docs {
            for key in ["apiVersion", "kind"] {
                assert!(d[key].is_string(), "{f}: a document without {key}: {d}");
            }
            assert!(d["metadata"]["name"].is_string(), "{f}: {} without metadata.name", d["kind"]);
            if let Some(spec) = pod_spec(&d) {
                let names: Vec<_> =
                    containers(spec).iter().map(|c| c["name"].as_str().unwrap_or("").to_string()).collect();
                assert!(names.iter().all(|n| !n.is_empty()), "{f}: a container without a name");
                let vols: BTreeSet<String> = spec["volumes"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|v| v["name"].as_str().map(str::to_string))
                    .collect();
                for c in containers(spec) {
                    for m in c["volumeMounts"].as_array().into_iter().flatten() {
                        assert!(
                            m["name"].as_str().is_some_and(|n| vols.contains(n)),
                            "{f}: {} mounts an undeclared volume {}",
                            c["name"],
                            m["name"]
                        );
                    }
                }
            }
        }
    }
}

fn pod_spec(d: &Value) -> Option<&Value> {
    matches!(d["kind"].as_str(), Some("Deployment" | "DaemonSet" | "StatefulSet"))
        .then(|| &d["spec"]["template"]["spec"])
}

fn containers(spec: &Value) -> Vec<&Value> {
    ["initContainers", "containers"].iter().flat_map(|k| spec[*k].as_array().into_iter().flatten()).collect()
}

#[test]
fn our_binaries_accept_every_command_line_the_manifests_give_them() {
    let mut seen = BTreeSet::new();
    for f in deploy_files().into_iter().filter(|f| f.ends_with(".yaml")) {
        for d in yaml_docs(&f) {
            let Some(spec) = pod_spec(&d) else { continue };
            for c in containers(spec) {
                if let Some((bin, argv)) = our_argv(c) {
                    accepted_by(&bin, &argv);
                    seen.insert(bin);
                }
                for (probe, bin, argv) in our_probes(c) {
                    accepted_by(&bin, &argv);
                    seen.insert(format!("{bin} ({probe})"));
                }
            }
        }
    }
    // The systemd units.
    for f in deploy_files().into_iter().filter(|f| f.ends_with(".service")) {
        let text = read(&f).replace("\\\n", " ");
        let exec =
            text.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap_or_else(|| panic!("{f}: no ExecStart"));
        let argv: Vec<String> = exec.split_whitespace().map(str::to_string).collect();
        let bin = Path::new(&argv[0]).file_name().unwrap().to_string_lossy().into_owned();
        accepted_by(&bin, &argv[1..]);
        seen.insert(format!("{bin} (systemd)"));
    }
    let want: BTreeSet<String> = [
        "cni-overlay",
        "cni-overlay (systemd)",
        "cni-bgp",
        "cni-bgp (systemd)",
        "cni-bgp (readinessProbe)",
        "csi-nfs",
        "csi-rbd",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(seen, want, "the manifests should run each of our daemons");
}

#[test]
fn the_csi_sockets_and_kubelet_paths_line_up() {
    for d in &CSI_DRIVERS {
        csi_sockets_and_kubelet_paths_line_up(d);
    }
}

fn csi_sockets_and_kubelet_paths_line_up(cd: &CsiDeploy) {
    let bin = cd.bin;
    let driver = default_driver_name(bin);
    let mut checked = Vec::new();
    for f in [format!("deploy/{bin}/controller.yaml"), format!("deploy/{bin}/node.yaml")] {
        let f = f.as_str();
        for d in yaml_docs(f) {
            let Some(spec) = pod_spec(&d) else { continue };
            let cs = containers(spec);
            let (ours, argv) = cs
                .iter()
                .find_map(|c| our_argv(c).filter(|(b, _)| b == bin).map(|(_, a)| (*c, a)))
                .unwrap_or_else(|| panic!("{f}: no {bin} container"));
            assert_eq!(flag(&argv, "driver-name").unwrap_or(driver.clone()), driver, "{f}");
            let endpoint = flag(&argv, "endpoint").unwrap_or_else(|| panic!("{f}: {bin} without --endpoint"));
            let sock = endpoint.strip_prefix("unix://").unwrap_or_else(|| panic!("{f}: {endpoint} is not unix://"));
            let sock_dir = Path::new(sock).parent().unwrap().to_str().unwrap().to_string();
            let mount_of = |c: &Value, dir: &str| {
                c["volumeMounts"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|m| m["mountPath"] == dir)
                    .map(|m| m["name"].clone())
            };
            let sock_vol =
                mount_of(ours, &sock_dir).unwrap_or_else(|| panic!("{f}: {bin} has no volume at {sock_dir}"));
            let mode = flag(&argv, "mode").unwrap_or_else(|| "all".into());
            let mut sidecars = 0;
            for c in &cs {
                let env = c["env"].as_array().cloned().unwrap_or_default();
                let args: Vec<String> = strs(&c["args"]).iter().map(|a| expand(a, &env)).collect();
                if let Some(addr) = flag(&args, "csi-address") {
                    assert_eq!(addr, sock, "{f}: {} dials another socket", c["name"]);
                    assert_eq!(
                        mount_of(c, &sock_dir),
                        Some(sock_vol.clone()),
                        "{f}: {} sees another {sock_dir}",
                        c["name"]
                    );
                    sidecars += 1;
                }
                if let Some(reg) = flag(&args, "kubelet-registration-path") {
                    let vol = spec["volumes"].as_array().unwrap().iter().find(|v| v["name"] == sock_vol).unwrap();
                    let host =
                        vol["hostPath"]["path"].as_str().unwrap_or_else(|| panic!("{f}: socket dir is no hostPath"));
                    let file = Path::new(sock).file_name().unwrap().to_str().unwrap();
                    assert_eq!(reg, format!("{host}/{file}"), "{f}: kubelet would look for the socket elsewhere");
                    assert!(mount_of(c, "/registration").is_some(), "{f}: registrar without /registration");
                }
            }
            if mode == "node" {
                assert_eq!(d["kind"], "DaemonSet", "{f}");
                assert_eq!(ours["securityContext"]["privileged"], true, "{f}: the node plugin mounts");
                let mut shared = vec!["/var/lib/kubelet/pods"];
                if cd.stage {
                    shared.push("/var/lib/kubelet/plugins");
                }
                for dir in shared {
                    let m = ours["volumeMounts"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|m| m["mountPath"] == dir)
                        .unwrap_or_else(|| panic!("{f}: {bin} node without {dir}"));
                    assert_eq!(m["mountPropagation"], "Bidirectional", "{f}: {dir}");
                }
                assert_eq!(spec["hostNetwork"], true, "{f}: kernel mounts connect from the mounting process's netns");
                assert_eq!(sidecars, 2, "{f}: node-driver-registrar and livenessprobe");
            } else {
                assert_eq!(mode, "controller", "{f}");
                assert_eq!(d["kind"], "Deployment", "{f}");
                // provisioner, snapshotter, resizer, livenessprobe, and the attacher iff ControllerPublish.
                let attacher = cs.iter().any(|c| c["image"].as_str().unwrap_or("").contains("csi-attacher"));
                assert_eq!(attacher, cd.attach, "{f}: csi-attacher");
                assert_eq!(sidecars, 4 + usize::from(cd.attach), "{f}");
            }
            checked.push(mode);
        }
    }
    assert_eq!(checked, ["controller", "node"]);

    let objs: Vec<Value> = yaml_docs(&format!("deploy/{bin}/csidriver.yaml"))
        .into_iter()
        .chain(yaml_docs(&format!("deploy/{bin}/storageclass.yaml")))
        .collect();
    let by_kind = |k: &str| objs.iter().find(|o| o["kind"] == k).unwrap_or_else(|| panic!("{bin}: no {k}"));
    assert_eq!(by_kind("CSIDriver")["metadata"]["name"], driver.as_str());
    assert_eq!(by_kind("CSIDriver")["spec"]["attachRequired"], cd.attach, "{bin}: ControllerPublish");
    assert_eq!(by_kind("StorageClass")["provisioner"], driver.as_str());
    assert_eq!(by_kind("VolumeSnapshotClass")["driver"], driver.as_str());
}

#[test]
fn storageclass_parameters_and_conflists_use_only_documented_keys() {
    for bin in ["csi-nfs", "csi-rbd"] {
        let page = format!("docs/{bin}.md");
        let params = table_under(&page, "CreateVolume parameters").keys();
        for d in yaml_docs(&format!("deploy/{bin}/storageclass.yaml")) {
            if d["kind"] != "StorageClass" {
                continue;
            }
            for k in d["parameters"].as_object().expect("parameters").keys() {
                // Parameters are case-insensitive in csi-nfs (csi-driver-nfs's rule), exact in csi-rbd (ceph-csi's).
                let known = params.iter().any(|p| if bin == "csi-nfs" { p.eq_ignore_ascii_case(k) } else { p == k });
                assert!(known || k.starts_with("csi.storage.k8s.io/"), "StorageClass parameter {k} is not in {page}");
            }
        }
    }
    let lists = conflists();
    for (what, text) in &lists {
        check_conflist(what, text);
    }
    let n = lists.len();
    assert!(n >= 6, "{n} conflists checked");
}

#[test]
fn an_undocumented_key_or_a_bad_flag_is_caught() {
    // The checks above can fail: a key no table lists, and a flag the binary refuses.
    let mut bad = Vec::new();
    let p: Value = serde_json::json!({"type": "cni-bridge", "bridge": "cni0", "bridgeName": "x",
        "ipam": {"type": "cni-ipam", "ranges": [[{"subnet": "10.0.0.0/24", "rangeBegin": "10.0.0.5"}]]}});
    undocumented(&p, &table_under("docs/cni-bridge.md", "Config fields").keys(), "", &mut bad);
    assert_eq!(bad, ["bridgeName", "ranges[][].rangeBegin"]);
    let out = std::process::Command::new(binary("csi-nfs"))
        .args(["--mode=controller", "--no-such-flag", "--help"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
    let out = std::process::Command::new(binary("cni-overlay"))
        .args(["agent", "--public-ip=not-an-ip", "--help"])
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", String::from_utf8_lossy(&out.stderr));
}

/// Every conflist of deploy/ (files and ConfigMaps): (where, text).
fn conflists() -> Vec<(String, String)> {
    let mut out = Vec::new();
    for f in deploy_files() {
        if f.ends_with(".conflist") {
            out.push((f.clone(), read(&f)));
        } else if f.ends_with(".yaml") {
            for d in yaml_docs(&f) {
                for (k, v) in d["data"].as_object().into_iter().flatten().filter(|(k, _)| k.ends_with(".conflist")) {
                    out.push((format!("{f} {k}"), v.as_str().unwrap().to_string()));
                }
            }
        }
    }
    out
}

/// Runs plugin `ty` with `CNI_COMMAND=STATUS` and `conf` on stdin, `CNI_PATH` the directory of
/// our binaries.
fn status(ty: &str, conf: &Value) -> std::process::Output {
    use std::io::Write;
    let bin = binary(ty);
    let mut child = std::process::Command::new(&bin)
        .env("CNI_COMMAND", "STATUS")
        .env("CNI_PATH", bin.parent().unwrap())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    child.stdin.take().unwrap().write_all(conf.to_string().as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

#[test]
fn every_conflist_passes_status_with_the_real_plugins() {
    let etcd = etcd_kv::testing::EtcdServer::start().expect("start etcd (is it installed?)");
    let tmp = tempfile::tempdir().unwrap();
    let subnet_file = tmp.path().join("subnet.env");
    std::fs::write(
        &subnet_file,
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.3.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n",
    )
    .unwrap();
    // The delegates, found through CNI_PATH.
    binary("cni-bridge");
    binary("cni-ipam");
    // For a conflist that names etcd TLS files: an etcd that requires client certificates.
    let mut etcd_tls: Option<etcd_kv::testing::EtcdServer> = None;
    let mut n = 0;
    for (i, (what, text)) in conflists().into_iter().enumerate() {
        let list: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{what}: {e}"));
        for p in list["plugins"].as_array().unwrap() {
            let mut conf = p.clone();
            conf["name"] = list["name"].clone();
            conf["cniVersion"] = list["cniVersion"].clone();
            let data = tmp.path().join(format!("data-{i}"));
            if conf["type"] == "cni-overlay" {
                conf["subnetFile"] = Value::String(subnet_file.to_string_lossy().into_owned());
                conf["dataDir"] = Value::String(data.to_string_lossy().into_owned());
            }
            if conf["ipam"].is_object() {
                conf["ipam"]["dataDir"] = Value::String(data.to_string_lossy().into_owned());
                let cluster = &mut conf["ipam"]["cluster"];
                if cluster.is_object() && cluster["etcdCaFile"].is_string() {
                    let e = etcd_tls.get_or_insert_with(|| {
                        etcd_kv::testing::EtcdServer::start_tls().expect("start etcd with TLS (needs openssl)")
                    });
                    let tls = e.tls_files().expect("TLS files");
                    cluster["etcdEndpoints"] = serde_json::json!([e.endpoint()]);
                    cluster["etcdCaFile"] = serde_json::json!(tls.ca);
                    cluster["etcdCertFile"] = serde_json::json!(tls.client_cert);
                    cluster["etcdKeyFile"] = serde_json::json!(tls.client_key);
                } else if cluster.is_object() {
                    cluster["etcdEndpoints"] = serde_json::json!([etcd.endpoint()]);
                }
            }
            if conf["type"] == "cni-policy" {
                // Its policy directory (empty: no policy parses) and registry, moved to the temp dir.
                let pd = tmp.path().join(format!("policy-{i}"));
                std::fs::create_dir_all(&pd).unwrap();
                conf["policyDir"] = Value::String(pd.to_string_lossy().into_owned());
                conf["stateDir"] = Value::String(data.to_string_lossy().into_owned());
            }
            let ty = conf["type"].as_str().unwrap().to_string();
            if ty == "cni-bgp" {
                // No agent on this (empty) state dir: code 50 naming it, after the config parsed.
                conf["stateDir"] = Value::String(tmp.path().join(format!("state-{i}")).to_string_lossy().into_owned());
                let out = status(&ty, &conf);
                let err: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
                assert!(
                    err["code"] == 50 && err["msg"].as_str().is_some_and(|m| m.contains("cni-bgp agent")),
                    "{what}: STATUS of cni-bgp without its agent: {}\n{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            // cni-bgp's own IPAM check is cni-ipam's STATUS on the same config.
            let ty = if ty == "cni-bgp" { "cni-ipam".to_string() } else { ty };
            let out = status(&ty, &conf);
            assert!(
                out.status.success() && out.stdout.is_empty(),
                "{what}: STATUS of {ty}: {}\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            n += 1;
        }
    }
    assert!(n >= 6, "{n} plugin configs checked");
    assert!(etcd_tls.is_some(), "no conflist with etcd TLS was checked");
    // And STATUS can fail: the overlay without its subnet file is not ready (code 50).
    std::fs::remove_file(&subnet_file).unwrap();
    let conf = serde_json::json!({"cniVersion": "1.1.0", "name": "overlay", "type": "cni-overlay",
        "subnetFile": subnet_file, "dataDir": tmp.path().join("x")});
    let out = status("cni-overlay", &conf);
    let err: Value = serde_json::from_slice(&out.stdout).expect("a CNI error on stdout");
    assert_eq!(err["code"], 50, "{err}");
}

/// The value of `--flag` in `argv`, else the binary's default as `--help` shows it.
fn flag_or_default(bin: &str, sub: &str, argv: &[String], name: &str) -> String {
    flag(argv, name).unwrap_or_else(|| {
        let help = run_help(&binary(bin), &[sub, "--help"]);
        help_flags(&help)
            .into_iter()
            .find(|(f, _)| f == name)
            .and_then(|(_, d)| d)
            .unwrap_or_else(|| panic!("{bin} {sub} --help shows no default for --{name}"))
    })
}

/// The cni-bgp plugin entries of a conflist's text.
fn bgp_plugins(what: &str, text: &str) -> Vec<Value> {
    let v: Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{what}: {e}"));
    v["plugins"].as_array().into_iter().flatten().filter(|p| p["type"] == "cni-bgp").cloned().collect()
}

/// The cni-bgp agent and the conflist it serves (the plugin's STATUS asks the agent's
/// `status.sock`; the plugin's IPAM writes the blocks the agent advertises) agree: state dir,
/// etcd prefix, and, in the DaemonSet, a hostPath state dir shared with the host, the node name
/// from the downward API, TLS files from the etcd Secret, and a readiness probe on the same
/// state dir.
#[test]
fn the_bgp_agent_and_its_conflists_line_up() {
    const DEFAULT_STATE_DIR: &str = "/run/cni-bgp";
    let agent_default = flag_or_default("cni-bgp", "agent", &[], "state-dir");
    assert_eq!(agent_default, DEFAULT_STATE_DIR, "the agent's default --state-dir");
    let fields = table_under("docs/cni-bgp.md", "Config fields");
    let plugin_default = fields.cell("stateDir", "Default").map(|c| c.text.clone()).unwrap_or_default();
    assert!(plugin_default.contains(DEFAULT_STATE_DIR), "the plugin's stateDir default: {plugin_default}");
    let prefix_default = flag_or_default("cni-bgp", "agent", &[], "etcd-prefix");
    let line_up = |what: &str, argv: &[String], conflist: &str| {
        let plugins = bgp_plugins(what, conflist);
        assert_eq!(plugins.len(), 1, "{what}: one cni-bgp plugin");
        let p = &plugins[0];
        let state = flag(argv, "state-dir").unwrap_or(agent_default.clone());
        assert_eq!(p["stateDir"].as_str().unwrap_or(DEFAULT_STATE_DIR), state, "{what}: stateDir");
        let prefix = flag(argv, "etcd-prefix").unwrap_or(prefix_default.clone());
        let cluster = &p["ipam"]["cluster"];
        assert_eq!(cluster["mode"], "blocks", "{what}: the agent advertises cni-ipam's cluster blocks");
        assert_eq!(cluster["etcdPrefix"].as_str().unwrap_or("/cni-ipam"), prefix, "{what}: etcdPrefix");
        state
    };

    // systemd: the unit with deploy/cni/10-bgp.conflist.
    let unit = read("deploy/cni-bgp/cni-bgp-agent.service").replace("\\\n", " ");
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).expect("ExecStart");
    let argv: Vec<String> = exec.split_whitespace().skip(1).map(str::to_string).collect();
    assert_eq!(argv.first().map(String::as_str), Some("agent"));
    let endpoints = flag(&argv, "etcd-endpoints").expect("--etcd-endpoints");
    let conflist = read("deploy/cni/10-bgp.conflist");
    line_up("the unit and deploy/cni/10-bgp.conflist", &argv, &conflist);
    let p = &bgp_plugins("10-bgp.conflist", &conflist)[0];
    assert_eq!(strs(&p["ipam"]["cluster"]["etcdEndpoints"]).join(","), endpoints, "the unit's etcd is the conflist's");

    // Kubernetes: the DaemonSet with its ConfigMap's conflist.
    let f = "deploy/cni-bgp/cni-bgp.yaml";
    let docs = yaml_docs(f);
    let conflist = docs
        .iter()
        .find_map(|d| d["data"]["10-bgp.conflist"].as_str())
        .unwrap_or_else(|| panic!("{f}: no ConfigMap with 10-bgp.conflist"));
    let ds = docs.iter().find(|d| d["kind"] == "DaemonSet").unwrap_or_else(|| panic!("{f}: no DaemonSet"));
    let spec = &ds["spec"]["template"]["spec"];
    assert_eq!(spec["hostNetwork"], true, "{f}: the agent peers and routes in the host's netns");
    let agent = spec["containers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| our_argv(c).is_some_and(|(b, a)| b == "cni-bgp" && a.first().map(String::as_str) == Some("agent")))
        .unwrap_or_else(|| panic!("{f}: no cni-bgp agent container"));
    let (_, argv) = our_argv(agent).unwrap();
    let state = line_up(f, &argv, conflist);
    let volume = |name: &Value| {
        spec["volumes"].as_array().into_iter().flatten().find(|v| v["name"] == *name).cloned().unwrap_or_default()
    };
    let mount_at = |dir: &str| {
        agent["volumeMounts"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|m| m["mountPath"].as_str().is_some_and(|p| dir == p || dir.starts_with(&format!("{p}/"))))
            .max_by_key(|m| m["mountPath"].as_str().unwrap_or_default().len())
            .map(|m| volume(&m["name"]))
            .unwrap_or_else(|| panic!("{f}: the agent has nothing mounted at {dir}"))
    };
    assert_eq!(mount_at(&state)["hostPath"]["path"], state.as_str(), "{f}: the state dir is the host's");
    // The node name from the downward API.
    let raw: Vec<String> = strs(&agent["args"]);
    let node_var = flag(&raw, "node-name").and_then(|v| v.strip_prefix("$(")?.strip_suffix(')').map(str::to_string));
    let node_var = node_var.unwrap_or_else(|| panic!("{f}: --node-name=$(VAR)"));
    let env = agent["env"].as_array().cloned().unwrap_or_default();
    let from = env.iter().find(|e| e["name"] == node_var.as_str()).expect("the node name's env");
    assert_eq!(from["valueFrom"]["fieldRef"]["fieldPath"], "spec.nodeName", "{f}");
    // etcd endpoints and TLS files from one Secret.
    let secret = |v: &Value| v["secret"]["secretName"].as_str().map(str::to_string);
    let ep_var = flag(&raw, "etcd-endpoints").expect("--etcd-endpoints");
    let ep_env = env.iter().find(|e| format!("$({})", e["name"].as_str().unwrap_or_default()) == ep_var);
    let ep_secret = ep_env.and_then(|e| e["valueFrom"]["secretKeyRef"]["name"].as_str()).map(str::to_string);
    assert!(ep_secret.is_some(), "{f}: --etcd-endpoints from a Secret");
    for tls in ["etcd-cafile", "etcd-certfile", "etcd-keyfile"] {
        let file = flag(&argv, tls).unwrap_or_else(|| panic!("{f}: --{tls}"));
        let v = mount_at(Path::new(&file).parent().unwrap().to_str().unwrap());
        assert_eq!(secret(&v), ep_secret, "{f}: --{tls} {file} from the endpoints' Secret");
        let name = Path::new(&file).file_name().unwrap().to_str().unwrap();
        assert!(
            v["secret"]["items"].as_array().into_iter().flatten().any(|it| it["path"] == name),
            "{f}: the Secret volume has no {name}"
        );
    }
    // The CNI side reads TLS files on the host, where the init container copies them.
    let cluster = &bgp_plugins(f, conflist)[0]["ipam"]["cluster"];
    let init = spec["initContainers"][0]["args"][0].as_str().expect("install-cni script");
    for key in ["etcdCaFile", "etcdCertFile", "etcdKeyFile"] {
        let file = cluster[key].as_str().unwrap_or_else(|| panic!("{f}: ipam.cluster.{key}"));
        let name = Path::new(file).file_name().unwrap().to_str().unwrap();
        let dir = Path::new(file).parent().unwrap().to_str().unwrap();
        let installed = init.contains(&format!("/host{dir}/$f")) && init.contains(name);
        assert!(installed, "{f}: {key} {file} is not installed");
    }
    // Ready only when the agent on this state dir says so.
    let probes = our_probes(agent);
    let (_, _, probe) = probes.iter().find(|(k, _, _)| k == "readinessProbe").expect("a readiness probe");
    assert_eq!(probe.first().map(String::as_str), Some("status"), "{f}: readiness is `cni-bgp status`");
    assert_eq!(flag(probe, "state-dir").unwrap_or(agent_default.clone()), state, "{f}: the probe asks this agent");
}
