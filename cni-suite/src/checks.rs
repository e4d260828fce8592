//! The conformance checks: each one builds its own uniquely named network
//! and namespaces, drives the plugin under test as a process, observes the
//! result with `ip`/`ping`, and cleans up through Drop guards.

use std::collections::BTreeSet;
use std::net::IpAddr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::time::Instant;

use cni_core::version::cmp_str;
use ipnetwork::IpNetwork;
use serde_json::{json, Value};

use testkit::net::{Range, TestNet};
use testkit::netns::Netns;
use testkit::plugin::{Outcome, PluginSet, Request};
pub use testkit::report::{CheckResult, Verdict};
use testkit::util::{clip, ip, Context, R};
use testkit::{bail, ensure};

/// The interface name every check asks for.
pub const IFNAME: &str = "eth0";

/// Result versions the `add-result-<v>` checks cover.
pub const RESULT_VERSIONS: [&str; 4] = ["0.3.1", "0.4.0", "1.0.0", "1.1.0"];

/// What a check function returns when it did not fail.
pub enum Done {
    Pass(String),
    Skip(String),
}

type CheckFn = fn(&Suite, &str) -> R<Done>;

/// One named check of the catalog.
pub struct CheckDef {
    pub name: String,
    pub about: String,
    run: CheckFn,
    param: String,
}

/// Every check, in the order the suite runs them.
pub fn catalog() -> Vec<CheckDef> {
    let mut v = Vec::new();
    let mut push = |name: &str, about: &str, run: CheckFn, param: &str| {
        v.push(CheckDef { name: name.into(), about: about.into(), run, param: param.into() })
    };
    push("version", "VERSION prints cniVersion and a non-empty supportedVersions list", check_version, "");
    for ver in RESULT_VERSIONS {
        push(
            &format!("add-result-{ver}"),
            &format!(
                "ADD at cniVersion {ver}: result shape (cniVersion, ips[].version only before 1.0, \
                 interfaces/sandbox, interface indexes) and the address really on eth0; skipped if \
                 VERSION does not list {ver}"
            ),
            check_add_result,
            ver,
        );
    }
    push(
        "add-cniversion-wins",
        "ADD whose config carries cniVersion 1.0.0 (then 0.4.0, if listed) and cniVersions \
         [0.4.0, 1.0.0, 1.1.0]: the result is in cniVersion, the version the runtime chose, with \
         that version's shape; skipped if VERSION lacks 1.0.0",
        check_cniversion_wins,
        "",
    );
    push("ping-peer-and-gateway", "two containers on one network ping each other and the gateway", check_ping, "");
    push("check-passes", "CHECK with prevResult = the ADD result exits 0", check_check_passes, "");
    push(
        "check-detects-drift",
        "after `ip addr flush dev eth0` in the container, CHECK fails with a JSON error code",
        check_check_drift,
        "",
    );
    push("del-twice", "DEL removes eth0 from the netns and a second DEL also exits 0", check_del_twice, "");
    push(
        "del-netns-gone",
        "netns deleted, then DEL (CNI_NETNS = the dead path, prevResult) exits 0 and the IP is free again",
        check_del_netns_gone,
        "path",
    );
    push(
        "del-no-netns",
        "netns deleted, then DEL without CNI_NETNS and without prevResult exits 0 and the IP is free again",
        check_del_netns_gone,
        "unset",
    );
    push(
        "del-never-added",
        "DEL for a container never added (with and without CNI_NETNS) exits 0",
        check_del_never_added,
        "",
    );
    push(
        "ip-reuse-after-del",
        "one-address range: ADD, DEL, then another container's ADD gets the same address",
        check_ip_reuse,
        "",
    );
    push(
        "range-exhausted",
        "one-address range: 2nd ADD fails with a JSON error code; DEL of the failed container \
         does not free the 1st one's IP; after DEL of the 1st the IP is reusable",
        check_range_exhausted,
        "",
    );
    push(
        "error-garbage-json",
        "ADD with unparsable stdin fails with code 6 (decode) or 7 (invalid config)",
        check_error,
        "garbage",
    );
    push("error-missing-ifname", "ADD without CNI_IFNAME fails with code 4", check_error, "ifname");
    push("error-missing-netns", "ADD without CNI_NETNS fails with code 4", check_error, "netns");
    push("error-unknown-version", "ADD with cniVersion 9.9.9 fails with code 1", check_error, "version");
    push("error-unknown-command", "CNI_COMMAND=FROBNICATE fails with code 4", check_error, "command");
    push("status", "STATUS (cniVersion 1.1.0) exits 0; skipped if VERSION lacks 1.1.0", check_status, "");
    push(
        "status-exhausted",
        "STATUS fails with code 50 while the one-address range is used up, and exits 0 again after DEL",
        check_status_exhausted,
        "",
    );
    push(
        "gc-frees-invalid",
        "three containers fill a 3-address range; GC with valid-attachments naming one frees the \
         other two (two new ADDs get exactly their IPs, a third fails) and the kept one still pings",
        check_gc,
        "",
    );
    push(
        "gc-without-list-keeps-all",
        "two containers fill a 2-address range; GC with neither cni.dev/valid-attachments nor \
         cni.dev/attachments removes nothing: both keep their IPs, ping each other and the \
         gateway, pass CHECK, and a 3rd ADD still fails. A refusal must be a JSON error (the \
         detail names its code; 7 expected)",
        check_gc_without_list,
        "",
    );
    push(
        "gc-empty-list-frees-all",
        "two containers fill a 2-address range, their netns are deleted; GC with \
         \"cni.dev/valid-attachments\": [] (the spec's key only) exits 0 and frees both IPs: two \
         new ADDs get exactly them and ping each other",
        check_gc_empty_list,
        "",
    );
    push(
        "concurrent-24",
        "24 concurrent ADDs all succeed with unique, configured IPs; 24 concurrent DELs exit 0",
        check_concurrent,
        "24",
    );
    push(
        "results-cached-del",
        "DEL with prevResult = the cached ADD result exits 0, removes eth0 and frees the IP",
        check_cached_del,
        "",
    );
    v
}

/// The plugin under test and the facts the checks share.
pub struct Suite {
    pub ps: PluginSet,
    pub base: Value,
    pub plugin_type: String,
    /// Versions both the plugin and (if found) its IPAM plugin list.
    pub supported: Vec<String>,
    /// The version checks use unless they test a specific one.
    pub version: String,
    pub notes: Vec<String>,
}

/// What VERSION returns, or None when the plugin cannot answer.
pub fn plugin_versions(ps: &PluginSet, ty: &str) -> Option<Vec<String>> {
    let o = ps.exec(ty, &Request::new("VERSION", &json!({"cniVersion": "0.4.0"})));
    let j = o.json()?;
    Some(j["supportedVersions"].as_array()?.iter().filter_map(|v| v.as_str().map(str::to_string)).collect())
}

impl Suite {
    pub fn new(ps: PluginSet, base: Value) -> R<Suite> {
        let plugin_type = base["type"].as_str().filter(|s| !s.is_empty()).ok_or("config has no \"type\"")?.to_string();
        ensure!(ps.find(&plugin_type).is_some(), "plugin {plugin_type:?} not found in {}", ps.cni_path());
        ensure!(base["ipam"].is_object(), "config has no \"ipam\" object (the suite needs an IPAM-backed network)");
        let mut notes = Vec::new();
        let mut supported = plugin_versions(&ps, &plugin_type).unwrap_or_default();
        if let Some(ipam) = base["ipam"]["type"].as_str() {
            if ipam != plugin_type && ps.find(ipam).is_some() {
                if let Some(iv) = plugin_versions(&ps, ipam) {
                    let dropped: Vec<String> = supported.iter().filter(|v| !iv.contains(v)).cloned().collect();
                    if !dropped.is_empty() {
                        notes.push(format!(
                            "IPAM plugin {ipam} lacks {}; those versions are treated as unsupported",
                            dropped.join(", ")
                        ));
                    }
                    supported.retain(|v| iv.contains(v));
                }
            }
        }
        let wanted = base["cniVersion"].as_str().unwrap_or("1.0.0").to_string();
        let version = if supported.contains(&wanted) || supported.is_empty() {
            wanted.clone()
        } else {
            let best = supported
                .iter()
                .filter(|v| RESULT_VERSIONS.contains(&v.as_str()))
                .max_by(|a, b| cmp_str(a, b))
                .cloned()
                .unwrap_or(wanted.clone());
            notes.push(format!(
                "config asks for cniVersion {wanted}, which the plugin does not list; checks use {best}"
            ));
            best
        };
        Ok(Suite { ps, base, plugin_type, supported, version, notes })
    }

    pub fn supports(&self, v: &str) -> bool {
        self.supported.iter().any(|s| s == v)
    }

    /// Runs the catalog (or the checks `only` names; a trailing `*` is a prefix match).
    pub fn run(&self, only: &[String], progress: bool) -> R<Vec<CheckResult>> {
        let cat = catalog();
        for o in only {
            ensure!(cat.iter().any(|c| matches(o, &c.name)), "unknown check {o:?} (see `conformance list`)");
        }
        let mut out = Vec::new();
        for c in cat {
            if !only.is_empty() && !only.iter().any(|o| matches(o, &c.name)) {
                continue;
            }
            if testkit::util::interrupted() {
                out.push(CheckResult {
                    name: c.name.clone(),
                    verdict: Verdict::Fail,
                    detail: "not run: interrupted".into(),
                    seconds: 0.0,
                });
                continue;
            }
            let t = Instant::now();
            let r = catch_unwind(AssertUnwindSafe(|| (c.run)(self, &c.param)));
            let (verdict, detail) = match r {
                Ok(Ok(Done::Pass(d))) => (Verdict::Pass, d),
                Ok(Ok(Done::Skip(d))) => (Verdict::Skip, d),
                Ok(Err(e)) => (Verdict::Fail, e),
                Err(p) => (
                    Verdict::Fail,
                    format!(
                        "check panicked: {}",
                        p.downcast_ref::<String>()
                            .cloned()
                            .or_else(|| p.downcast_ref::<&str>().map(|s| s.to_string()))
                            .unwrap_or_default()
                    ),
                ),
            };
            let res = CheckResult { name: c.name.clone(), verdict, detail, seconds: t.elapsed().as_secs_f64() };
            if progress {
                res.print_progress();
            }
            out.push(res);
        }
        Ok(out)
    }

    fn exec(&self, req: &Request) -> Outcome {
        self.ps.exec(&self.plugin_type, req)
    }

    fn add(&self, net: &TestNet, c: &Ctr, ver: &str) -> Outcome {
        self.exec(&Request::container("ADD", &net.conf_at(ver), &c.id, Some(c.ns.path()), IFNAME))
    }

    /// ADD that must succeed and print a JSON result; returns (result, container IP).
    fn add_ok(&self, net: &TestNet, c: &Ctr, ver: &str) -> R<(Value, IpNetwork)> {
        let o = self.add(net, c, ver);
        ensure!(o.success(), "ADD {} failed: {}", c.id, o.describe());
        let r = o.json().ok_or_else(|| format!("ADD {} printed no JSON: {}", c.id, o.describe()))?;
        let ip = container_ip(&r, c)?;
        Ok((r, ip))
    }

    /// DEL with CNI_NETNS = the container's path and prevResult when the version allows it.
    fn del(&self, net: &TestNet, c: &Ctr, ver: &str, prev: Option<&Value>) -> Outcome {
        let conf = match prev {
            Some(p) if cmp_str(ver, "0.4.0").is_ge() => net.conf_prev(ver, p),
            _ => net.conf_at(ver),
        };
        self.exec(&Request::container("DEL", &conf, &c.id, Some(c.ns.path()), IFNAME))
    }

    fn del_ok(&self, net: &TestNet, c: &Ctr, ver: &str, prev: Option<&Value>) -> R<()> {
        let o = self.del(net, c, ver, prev);
        ensure!(o.success(), "DEL {} failed: {}", c.id, o.describe());
        Ok(())
    }

    fn status(&self, net: &TestNet) -> Outcome {
        self.exec(&Request::new("STATUS", &net.conf_at("1.1.0")))
    }

    fn ver_at_least(&self, v: &str) -> bool {
        cmp_str(&self.version, v).is_ge()
    }
}

fn matches(pattern: &str, name: &str) -> bool {
    match pattern.strip_suffix('*') {
        Some(p) => name.starts_with(p),
        None => pattern == name,
    }
}

/// A "container": a fresh netns and a container ID derived from its name.
pub struct Ctr {
    pub ns: Netns,
    pub id: String,
}

impl Ctr {
    pub fn new() -> R<Ctr> {
        let ns = Netns::new()?;
        let id = format!("{}-ctr", ns.name());
        Ok(Ctr { ns, id })
    }
}

/// The address the result assigns to the container's interface (or the first one).
pub fn container_ip(res: &Value, c: &Ctr) -> R<IpNetwork> {
    let ifs = res["interfaces"].as_array().cloned().unwrap_or_default();
    let idx = ifs.iter().position(|i| i["name"] == IFNAME && i["sandbox"] == c.ns.path());
    let ips = res["ips"].as_array().cloned().unwrap_or_default();
    let pick = ips
        .iter()
        .find(|ip| idx.is_some() && ip["interface"].as_u64().map(|x| x as usize) == idx)
        .or(ips.first())
        .ok_or_else(|| format!("result has no ips: {res}"))?;
    pick["address"].as_str().ok_or("ips[].address missing")?.parse().ctx("parse ips[].address")
}

/// Validates an ADD result against the spec shape for `ver` and the netns.
pub fn validate_result(res: &Value, ver: &str, c: &Ctr) -> R<String> {
    ensure!(res["cniVersion"] == ver, "result cniVersion is {} but the config asked for {ver}", res["cniVersion"]);
    cni_core::CniResult::from_json(res).map_err(|e| format!("result does not decode: {e}"))?;
    let ifs = res["interfaces"].as_array().ok_or("result has no interfaces array")?;
    let idx = ifs.iter().position(|i| i["name"] == IFNAME && i["sandbox"] == c.ns.path()).ok_or_else(|| {
        format!("no interfaces[] entry named {IFNAME} with sandbox {}: {}", c.ns.path(), Value::Array(ifs.clone()))
    })?;
    let ips = res["ips"].as_array().ok_or("result has no ips array")?;
    ensure!(!ips.is_empty(), "result has an empty ips array");
    let old = cmp_str(ver, "1.0.0").is_lt();
    let mut on_ctr: Vec<IpNetwork> = Vec::new();
    for ip in ips {
        let a: IpNetwork = ip["address"].as_str().ok_or("ips[].address missing")?.parse().ctx("parse ips[].address")?;
        let fam = if a.is_ipv4() { "4" } else { "6" };
        match (old, ip.get("version")) {
            (true, Some(v)) if v == fam => {}
            (true, v) => bail!("{ver} result: ips[] {a} has version {v:?}, want \"{fam}\""),
            (false, None) => {}
            (false, Some(v)) => bail!("{ver} result: ips[] {a} carries version {v} (1.x has none)"),
        }
        if let Some(i) = ip.get("interface") {
            let i = i.as_u64().ok_or("ips[].interface is not a number")? as usize;
            ensure!(i < ifs.len(), "ips[] {a} has interface index {i} but there are {} interfaces", ifs.len());
            if i == idx {
                on_ctr.push(a);
            }
        }
    }
    ensure!(!on_ctr.is_empty(), "no ips[] entry has interface = {idx} (the container's {IFNAME})");
    let link = c.ns.link(IFNAME).ok_or_else(|| format!("{IFNAME} missing in netns {}", c.ns.name()))?;
    for a in &on_ctr {
        ensure!(
            link.addrs.contains(&(a.ip(), a.prefix())),
            "{a} is in the result but not on {IFNAME} (ip -j addr says {:?})",
            link.addrs
        );
    }
    if let Some(mac) = ifs[idx]["mac"].as_str().filter(|m| !m.is_empty()) {
        ensure!(mac.eq_ignore_ascii_case(&link.mac), "result mac {mac} != {IFNAME} mac {}", link.mac);
    }
    ensure!(link.up, "{IFNAME} is not up");
    Ok(format!("{} on {IFNAME}, mac ok", on_ctr.iter().map(|a| a.to_string()).collect::<Vec<_>>().join(",")))
}

fn check_version(s: &Suite, _: &str) -> R<Done> {
    let o = s.exec(&Request::new("VERSION", &json!({"cniVersion": s.version})));
    ensure!(o.success(), "VERSION failed: {}", o.describe());
    let j = o.json().ok_or_else(|| format!("VERSION printed no JSON: {}", o.describe()))?;
    ensure!(j["cniVersion"].is_string(), "VERSION output has no cniVersion: {j}");
    let list: Vec<&str> = j["supportedVersions"]
        .as_array()
        .ok_or_else(|| format!("VERSION output has no supportedVersions: {j}"))?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    ensure!(!list.is_empty(), "supportedVersions is empty");
    Ok(Done::Pass(format!("supports {}", list.join(" "))))
}

fn check_add_result(s: &Suite, ver: &str) -> R<Done> {
    if !s.supports(ver) {
        return Ok(Done::Skip(format!("VERSION does not list {ver}")));
    }
    let net = TestNet::new(&s.base, ver, Range::Full)?;
    let c = Ctr::new()?;
    let (res, _) = s.add_ok(&net, &c, ver)?;
    let d = validate_result(&res, ver, &c)?;
    s.del_ok(&net, &c, ver, Some(&res))?;
    Ok(Done::Pass(d))
}

/// The versions the runtime may list; `cniVersion` names the one it chose.
const CNI_VERSIONS_LIST: [&str; 3] = ["0.4.0", "1.0.0", "1.1.0"];

fn check_cniversion_wins(s: &Suite, _: &str) -> R<Done> {
    if !s.supports("1.0.0") {
        return Ok(Done::Skip(format!("VERSION lacks 1.0.0 (has {})", s.supported.join(" "))));
    }
    let mut done = Vec::new();
    for chosen in ["1.0.0", "0.4.0"].into_iter().filter(|v| s.supports(v)) {
        let net = TestNet::new(&s.base, chosen, Range::Full)?;
        let mut conf = net.conf_at(chosen);
        conf["cniVersions"] = json!(CNI_VERSIONS_LIST);
        let c = Ctr::new()?;
        let o = s.exec(&Request::container("ADD", &conf, &c.id, Some(c.ns.path()), IFNAME));
        ensure!(o.success(), "ADD with cniVersion {chosen} and cniVersions failed: {}", o.describe());
        let res = o.json().ok_or_else(|| format!("ADD printed no JSON: {}", o.describe()))?;
        let shape = validate_result(&res, chosen, &c).map_err(|e| {
            format!(
                "cniVersion {chosen} with cniVersions {CNI_VERSIONS_LIST:?}: {e} (the runtime's cniVersion must win)"
            )
        });
        let mut del_conf = conf.clone();
        del_conf["prevResult"] = res.clone();
        let od = s.exec(&Request::container("DEL", &del_conf, &c.id, Some(c.ns.path()), IFNAME));
        shape?;
        ensure!(od.success(), "DEL with cniVersion {chosen} and cniVersions failed: {}", od.describe());
        done.push(chosen);
    }
    Ok(Done::Pass(format!("result in cniVersion {} although cniVersions lists 1.1.0", done.join(", then "))))
}

fn check_ping(s: &Suite, _: &str) -> R<Done> {
    let net = TestNet::new(&s.base, &s.version, Range::Full)?;
    let a = Ctr::new()?;
    let b = Ctr::new()?;
    let (ra, ipa) = s.add_ok(&net, &a, &s.version)?;
    let (rb, ipb) = s.add_ok(&net, &b, &s.version)?;
    a.ns.ping(ipb.ip())?;
    b.ns.ping(ipa.ip())?;
    let mut d = format!("{} <-> {}", ipa.ip(), ipb.ip());
    match net.gateway() {
        Some(gw) => {
            a.ns.ping(gw)?;
            b.ns.ping(gw)?;
            d.push_str(&format!(", both -> gateway {gw}"));
        }
        None => d.push_str(" (isGateway is off: gateway not pinged)"),
    }
    s.del_ok(&net, &a, &s.version, Some(&ra))?;
    s.del_ok(&net, &b, &s.version, Some(&rb))?;
    Ok(Done::Pass(d))
}

fn check_request(s: &Suite, net: &TestNet, c: &Ctr, prev: &Value) -> Outcome {
    s.exec(&Request::container("CHECK", &net.conf_prev(&s.version, prev), &c.id, Some(c.ns.path()), IFNAME))
}

fn check_check_passes(s: &Suite, _: &str) -> R<Done> {
    if !s.ver_at_least("0.4.0") {
        return Ok(Done::Skip(format!("CHECK needs 0.4.0, using {}", s.version)));
    }
    let net = TestNet::new(&s.base, &s.version, Range::Full)?;
    let c = Ctr::new()?;
    let (res, _) = s.add_ok(&net, &c, &s.version)?;
    let o = check_request(s, &net, &c, &res);
    ensure!(o.success(), "CHECK right after ADD failed: {}", o.describe());
    s.del_ok(&net, &c, &s.version, Some(&res))?;
    Ok(Done::Pass("CHECK exit 0".into()))
}

fn check_check_drift(s: &Suite, _: &str) -> R<Done> {
    if !s.ver_at_least("0.4.0") {
        return Ok(Done::Skip(format!("CHECK needs 0.4.0, using {}", s.version)));
    }
    let net = TestNet::new(&s.base, &s.version, Range::Full)?;
    let c = Ctr::new()?;
    let (res, _) = s.add_ok(&net, &c, &s.version)?;
    ip(&["-n", c.ns.name(), "addr", "flush", "dev", IFNAME]).ctx("flush addresses")?;
    let o = check_request(s, &net, &c, &res);
    ensure!(!o.success(), "CHECK exited 0 although eth0 lost its address");
    let code = o.error_code().ok_or_else(|| format!("CHECK failed without a JSON error code: {}", o.describe()))?;
    s.del_ok(&net, &c, &s.version, Some(&res))?;
    let msg = o.json().map(|j| j["msg"].to_string()).unwrap_or_default();
    Ok(Done::Pass(format!("CHECK failed with code {code}: {msg}")))
}

fn check_del_twice(s: &Suite, _: &str) -> R<Done> {
    let net = TestNet::new(&s.base, &s.version, Range::Full)?;
    let c = Ctr::new()?;
    let (res, _) = s.add_ok(&net, &c, &s.version)?;
    s.del_ok(&net, &c, &s.version, Some(&res))?;
    ensure!(c.ns.link(IFNAME).is_none(), "{IFNAME} still exists in the netns after DEL");
    let o = s.del(&net, &c, &s.version, Some(&res));
    ensure!(o.success(), "second DEL failed: {}", o.describe());
    Ok(Done::Pass("eth0 removed; 2nd DEL exit 0".into()))
}

/// `mode` "path": CNI_NETNS names the deleted netns and prevResult is passed;
/// "unset": neither CNI_NETNS nor prevResult.
fn check_del_netns_gone(s: &Suite, mode: &str) -> R<Done> {
    let net = TestNet::new(&s.base, &s.version, Range::Tiny(1))?;
    let mut a = Ctr::new()?;
    let (res, ipa) = s.add_ok(&net, &a, &s.version)?;
    let path = a.ns.path().to_string();
    a.ns.delete()?;
    let req = if mode == "path" {
        let conf = if s.ver_at_least("0.4.0") { net.conf_prev(&s.version, &res) } else { net.conf_at(&s.version) };
        Request::container("DEL", &conf, &a.id, Some(&path), IFNAME)
    } else {
        Request::container("DEL", &net.conf_at(&s.version), &a.id, None, IFNAME)
    };
    let o = s.exec(&req);
    ensure!(o.success(), "DEL with the netns gone failed: {}", o.describe());
    let b = Ctr::new()?;
    let ob = s.add(&net, &b, &s.version);
    ensure!(
        ob.success(),
        "IP {} was not released by DEL with the netns gone: the next ADD in the one-address range failed: {}",
        ipa.ip(),
        ob.describe()
    );
    let rb = ob.json().unwrap_or_default();
    let ipb = container_ip(&rb, &b)?;
    ensure!(ipb.ip() == ipa.ip(), "re-ADD got {ipb}, expected the released {ipa}");
    s.del_ok(&net, &b, &s.version, Some(&rb))?;
    Ok(Done::Pass(format!("DEL exit 0; {} handed out again", ipa.ip())))
}

fn check_del_never_added(s: &Suite, _: &str) -> R<Done> {
    let net = TestNet::new(&s.base, &s.version, Range::Full)?;
    let c = Ctr::new()?;
    let o = s.del(&net, &c, &s.version, None);
    ensure!(o.success(), "DEL of a never-added container failed: {}", o.describe());
    let o = s.exec(&Request::container("DEL", &net.conf_at(&s.version), &c.id, None, IFNAME));
    ensure!(o.success(), "DEL of a never-added container without CNI_NETNS failed: {}", o.describe());
    Ok(Done::Pass("exit 0 with and without CNI_NETNS".into()))
}

fn check_ip_reuse(s: &Suite, _: &str) -> R<Done> {
    let net = TestNet::new(&s.base, &s.version, Range::Tiny(1))?;
    let a = Ctr::new()?;
    let (ra, ipa) = s.add_ok(&net, &a, &s.version)?;
    s.del_ok(&net, &a, &s.version, Some(&ra))?;
    let b = Ctr::new()?;
    let ob = s.add(&net, &b, &s.version);
    ensure!(
        ob.success(),
        "ADD after DEL in a one-address range failed (IP {} not released): {}",
        ipa.ip(),
        ob.describe()
    );
    let rb = ob.json().unwrap_or_default();
    let ipb = container_ip(&rb, &b)?;
    ensure!(ipb.ip() == ipa.ip(), "got {ipb}, expected {ipa}");
    b.ns.expect_addr(IFNAME, ipb.ip(), ipb.prefix())?;
    s.del_ok(&net, &b, &s.version, Some(&rb))?;
    Ok(Done::Pass(format!("{} reused", ipa.ip())))
}

fn check_range_exhausted(s: &Suite, _: &str) -> R<Done> {
    let net = TestNet::new(&s.base, &s.version, Range::Tiny(1))?;
    let a = Ctr::new()?;
    let (ra, ipa) = s.add_ok(&net, &a, &s.version)?;
    let b = Ctr::new()?;
    let ob = s.add(&net, &b, &s.version);
    ensure!(!ob.success(), "2nd ADD in a one-address range succeeded: {}", ob.describe());
    let code = ob.error_code().ok_or_else(|| format!("2nd ADD failed without a JSON error code: {}", ob.describe()))?;
    // A runtime DELs after a failed ADD; that must not free A's address.
    let od = s.del(&net, &b, &s.version, None);
    ensure!(od.success(), "DEL after the failed ADD failed: {}", od.describe());
    let c = Ctr::new()?;
    let oc = s.add(&net, &c, &s.version);
    if oc.success() {
        let _ = s.del(&net, &c, &s.version, oc.json().as_ref());
        bail!("DEL of the container whose ADD failed released {} (still used by the first container)", ipa.ip());
    }
    let _ = s.del(&net, &c, &s.version, None);
    s.del_ok(&net, &a, &s.version, Some(&ra))?;
    let d = Ctr::new()?;
    let (rd, ipd) =
        s.add_ok(&net, &d, &s.version).map_err(|e| format!("IP {} not reusable after DEL: {e}", ipa.ip()))?;
    ensure!(ipd.ip() == ipa.ip(), "got {ipd} after DEL, expected {ipa}");
    s.del_ok(&net, &d, &s.version, Some(&rd))?;
    let msg = ob.json().map(|j| j["msg"].to_string()).unwrap_or_default();
    Ok(Done::Pass(format!("exhausted: code {code} {}; reusable after DEL", clip(&msg, 60))))
}

fn check_error(s: &Suite, kind: &str) -> R<Done> {
    let net = TestNet::new(&s.base, &s.version, Range::Full)?;
    let c = Ctr::new()?;
    let base = Request::container("ADD", &net.conf_at(&s.version), &c.id, Some(c.ns.path()), IFNAME);
    let (req, want): (Request, &[u64]) = match kind {
        "garbage" => (base.raw_stdin(b"{\"cniVersion\": \"1.0.0\", \"name\": ,,, this is not JSON"), &[6, 7]),
        "ifname" => (base.unset("CNI_IFNAME"), &[4]),
        "netns" => (base.unset("CNI_NETNS"), &[4]),
        "version" => (Request::container("ADD", &net.conf_at("9.9.9"), &c.id, Some(c.ns.path()), IFNAME), &[1]),
        "command" => (base.set("CNI_COMMAND", "FROBNICATE"), &[4]),
        _ => bail!("unknown error check {kind}"),
    };
    let o = s.exec(&req);
    if o.success() {
        // Do not leak what a wrongly successful ADD created.
        let _ = s.del(&net, &c, &s.version, None);
        bail!("plugin exited 0: {}", o.describe());
    }
    let code = o.error_code().ok_or_else(|| format!("no JSON error with a code on stdout: {}", o.describe()))?;
    ensure!(want.contains(&code), "error code {code}, want {want:?}: {}", o.describe());
    let msg = o.json().map(|j| j["msg"].to_string()).unwrap_or_default();
    Ok(Done::Pass(format!("code {code}: {}", clip(&msg, 70))))
}

fn lacks_1_1(s: &Suite) -> Option<Done> {
    (!s.supports("1.1.0"))
        .then(|| Done::Skip(format!("VERSION lacks 1.1.0 (has {}); STATUS/GC need 1.1.0", s.supported.join(" "))))
}

fn check_status(s: &Suite, _: &str) -> R<Done> {
    if let Some(d) = lacks_1_1(s) {
        return Ok(d);
    }
    let net = TestNet::new(&s.base, "1.1.0", Range::Full)?;
    let o = s.status(&net);
    ensure!(o.success(), "STATUS failed: {}", o.describe());
    Ok(Done::Pass("STATUS exit 0".into()))
}

fn check_status_exhausted(s: &Suite, _: &str) -> R<Done> {
    if let Some(d) = lacks_1_1(s) {
        return Ok(d);
    }
    let net = TestNet::new(&s.base, "1.1.0", Range::Tiny(1))?;
    let o = s.status(&net);
    ensure!(o.success(), "STATUS on an empty range failed: {}", o.describe());
    let a = Ctr::new()?;
    let (ra, _) = s.add_ok(&net, &a, "1.1.0")?;
    let o = s.status(&net);
    ensure!(!o.success(), "STATUS exited 0 although the range is exhausted");
    let code = o.error_code();
    ensure!(code == Some(50), "STATUS with an exhausted range: want code 50, got {code:?}: {}", o.describe());
    s.del_ok(&net, &a, "1.1.0", Some(&ra))?;
    let o = s.status(&net);
    ensure!(o.success(), "STATUS still failing after the address was released: {}", o.describe());
    Ok(Done::Pass("code 50 while exhausted, 0 after DEL".into()))
}

fn check_gc(s: &Suite, _: &str) -> R<Done> {
    if let Some(d) = lacks_1_1(s) {
        return Ok(d);
    }
    let v = "1.1.0";
    let net = TestNet::new(&s.base, v, Range::Tiny(3))?;
    let a = Ctr::new()?;
    let mut b = Ctr::new()?;
    let mut c = Ctr::new()?;
    let (ra, ipa) = s.add_ok(&net, &a, v)?;
    let (_, ipb) = s.add_ok(&net, &b, v)?;
    let (_, ipc) = s.add_ok(&net, &c, v)?;
    // The runtime lost B and C (their netns are gone) but never DELed them.
    b.ns.delete()?;
    c.ns.delete()?;
    let valid = json!([{"containerID": a.id, "ifname": IFNAME}]);
    let mut conf = net.conf_at(v);
    conf["cni.dev/valid-attachments"] = valid.clone();
    conf["cni.dev/attachments"] = valid;
    let o = s.exec(&Request::new("GC", &conf));
    ensure!(o.success(), "GC failed: {}", o.describe());
    let d = Ctr::new()?;
    let e = Ctr::new()?;
    let (rd, ipd) = s.add_ok(&net, &d, v).map_err(|x| format!("GC did not free the stale IPs: {x}"))?;
    let (re, ipe) = s.add_ok(&net, &e, v).map_err(|x| format!("GC freed only one of two stale IPs: {x}"))?;
    ensure!(
        ipd.ip() != ipa.ip() && ipe.ip() != ipa.ip(),
        "GC freed the kept attachment's IP {}: a new container got it",
        ipa.ip()
    );
    let got: BTreeSet<IpAddr> = [ipd.ip(), ipe.ip()].into();
    let want: BTreeSet<IpAddr> = [ipb.ip(), ipc.ip()].into();
    ensure!(got == want, "new ADDs got {got:?}, expected the freed {want:?}");
    let f = Ctr::new()?;
    let of = s.add(&net, &f, v);
    if of.success() {
        bail!("GC freed the kept attachment's IP {}: a 4th ADD succeeded", ipa.ip());
    }
    let _ = s.del(&net, &f, v, None);
    a.ns.expect_addr(IFNAME, ipa.ip(), ipa.prefix()).map_err(|x| format!("kept attachment damaged by GC: {x}"))?;
    a.ns.ping(ipd.ip()).map_err(|x| format!("kept attachment cannot reach a new one: {x}"))?;
    if let Some(gw) = net.gateway() {
        a.ns.ping(gw)?;
    }
    s.del_ok(&net, &d, v, Some(&rd))?;
    s.del_ok(&net, &e, v, Some(&re))?;
    s.del_ok(&net, &a, v, Some(&ra))?;
    Ok(Done::Pass(format!("freed {} and {}; kept {} pings", ipb.ip(), ipc.ip(), ipa.ip())))
}

/// The CNI 1.1 spec says the runtime MUST send the list of valid attachments
/// with GC; it does not say what a plugin does without it. Removing nothing is
/// the hard requirement here (a missing list is not "nothing is valid"); a
/// refusal must still be a spec error object, and its code is reported.
fn check_gc_without_list(s: &Suite, _: &str) -> R<Done> {
    if let Some(d) = lacks_1_1(s) {
        return Ok(d);
    }
    let v = "1.1.0";
    let net = TestNet::new(&s.base, v, Range::Tiny(2))?;
    let a = Ctr::new()?;
    let b = Ctr::new()?;
    let (ra, ipa) = s.add_ok(&net, &a, v)?;
    let (rb, ipb) = s.add_ok(&net, &b, v)?;
    let mut conf = net.conf_at(v);
    if let Some(m) = conf.as_object_mut() {
        m.remove("cni.dev/valid-attachments");
        m.remove("cni.dev/attachments");
    }
    let o = s.exec(&Request::new("GC", &conf));
    let answer = if o.success() {
        "GC exited 0".to_string()
    } else {
        let code =
            o.error_code().ok_or_else(|| format!("GC failed without a JSON error with a code: {}", o.describe()))?;
        let msg = o.json().map(|j| j["msg"].to_string()).unwrap_or_default();
        let note = if code == 7 { "" } else { " (7, invalid network config, expected)" };
        format!("refused with code {code}{note}: {}", clip(&msg, 60))
    };
    for (c, ipc) in [(&a, ipa), (&b, ipb)] {
        c.ns.expect_addr(IFNAME, ipc.ip(), ipc.prefix())
            .map_err(|x| format!("GC without the list ({answer}) damaged {}: {x}", c.id))?;
    }
    a.ns.ping(ipb.ip()).map_err(|x| format!("after GC without the list ({answer}): {x}"))?;
    b.ns.ping(ipa.ip()).map_err(|x| format!("after GC without the list ({answer}): {x}"))?;
    if let Some(gw) = net.gateway() {
        a.ns.ping(gw).map_err(|x| format!("after GC without the list ({answer}): {x}"))?;
    }
    for (c, r) in [(&a, &ra), (&b, &rb)] {
        let o = s.exec(&Request::container("CHECK", &net.conf_prev(v, r), &c.id, Some(c.ns.path()), IFNAME));
        ensure!(o.success(), "CHECK of {} fails after GC without the list ({answer}): {}", c.id, o.describe());
    }
    let c = Ctr::new()?;
    let oc = s.add(&net, &c, v);
    if oc.success() {
        let got = oc.json().and_then(|r| container_ip(&r, &c).ok()).map(|x| x.to_string()).unwrap_or_default();
        let _ = s.del(&net, &c, v, oc.json().as_ref());
        bail!("GC without the list ({answer}) released a lease: a 3rd ADD in the 2-address range got {got}");
    }
    let _ = s.del(&net, &c, v, None);
    s.del_ok(&net, &a, v, Some(&ra))?;
    s.del_ok(&net, &b, v, Some(&rb))?;
    Ok(Done::Pass(format!("{answer}; {} and {} kept, ping, CHECK ok; leases kept", ipa.ip(), ipb.ip())))
}

fn check_gc_empty_list(s: &Suite, _: &str) -> R<Done> {
    if let Some(d) = lacks_1_1(s) {
        return Ok(d);
    }
    let v = "1.1.0";
    let net = TestNet::new(&s.base, v, Range::Tiny(2))?;
    let mut a = Ctr::new()?;
    let mut b = Ctr::new()?;
    let (_, ipa) = s.add_ok(&net, &a, v)?;
    let (_, ipb) = s.add_ok(&net, &b, v)?;
    // The runtime lost both (their netns are gone) and lists nothing as valid.
    a.ns.delete()?;
    b.ns.delete()?;
    let mut conf = net.conf_at(v);
    conf["cni.dev/valid-attachments"] = json!([]);
    let o = s.exec(&Request::new("GC", &conf));
    ensure!(o.success(), "GC with an empty valid-attachments list failed: {}", o.describe());
    let d = Ctr::new()?;
    let e = Ctr::new()?;
    let (rd, ipd) = s.add_ok(&net, &d, v).map_err(|x| format!("GC with [] freed neither IP: {x}"))?;
    let (re, ipe) = s.add_ok(&net, &e, v).map_err(|x| format!("GC with [] freed only one of two IPs: {x}"))?;
    let got: BTreeSet<IpAddr> = [ipd.ip(), ipe.ip()].into();
    let want: BTreeSet<IpAddr> = [ipa.ip(), ipb.ip()].into();
    ensure!(got == want, "new ADDs got {got:?}, expected the freed {want:?}");
    d.ns.ping(ipe.ip()).map_err(|x| format!("after GC with []: {x}"))?;
    s.del_ok(&net, &d, v, Some(&rd))?;
    s.del_ok(&net, &e, v, Some(&re))?;
    Ok(Done::Pass(format!("freed {} and {}; new containers got them and ping", ipa.ip(), ipb.ip())))
}

fn check_concurrent(s: &Suite, n: &str) -> R<Done> {
    let n: usize = n.parse().unwrap_or(24);
    let net = TestNet::new(&s.base, &s.version, Range::Full)?;
    let ctrs = (0..n).map(|_| Ctr::new()).collect::<R<Vec<_>>>()?;
    let t = Instant::now();
    let outs: Vec<Outcome> = std::thread::scope(|sc| {
        let hs: Vec<_> = ctrs.iter().map(|c| sc.spawn(|| s.add(&net, c, &s.version))).collect();
        hs.into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Outcome::spawn_failed("ADD thread panicked".into())))
            .collect()
    });
    let add_wall = t.elapsed();
    let mut errs = Vec::new();
    let mut ips: Vec<(usize, IpNetwork)> = Vec::new();
    let mut results: Vec<Option<Value>> = vec![None; n];
    for (i, o) in outs.iter().enumerate() {
        if !o.success() {
            errs.push(format!("#{i}: {}", o.describe()));
            continue;
        }
        let r = o.json().unwrap_or_default();
        match container_ip(&r, &ctrs[i]) {
            Ok(ip) => ips.push((i, ip)),
            Err(e) => errs.push(format!("#{i}: {e}")),
        }
        results[i] = Some(r);
    }
    let uniq: BTreeSet<IpAddr> = ips.iter().map(|(_, a)| a.ip()).collect();
    for (i, a) in &ips {
        if let Err(e) = ctrs[*i].ns.expect_addr(IFNAME, a.ip(), a.prefix()) {
            errs.push(format!("#{i}: {e}"));
        }
    }
    let dels: Vec<Outcome> = std::thread::scope(|sc| {
        let hs: Vec<_> =
            ctrs.iter().zip(results.iter()).map(|(c, r)| sc.spawn(|| s.del(&net, c, &s.version, r.as_ref()))).collect();
        hs.into_iter().filter_map(|h| h.join().ok()).collect()
    });
    ensure!(errs.is_empty(), "{} of {n} concurrent ADDs failed: {}", errs.len(), clip(&errs.join(" | "), 400));
    ensure!(uniq.len() == n, "only {} unique IPs among {n} successful ADDs", uniq.len());
    let bad: Vec<String> =
        dels.iter().enumerate().filter(|(_, o)| !o.success()).map(|(i, o)| format!("#{i}: {}", o.describe())).collect();
    ensure!(bad.is_empty() && dels.len() == n, "concurrent DELs failed: {}", clip(&bad.join(" | "), 400));
    Ok(Done::Pass(format!("{n} unique IPs, ADD wall {:.0} ms", add_wall.as_secs_f64() * 1e3)))
}

fn check_cached_del(s: &Suite, _: &str) -> R<Done> {
    if !s.ver_at_least("0.4.0") {
        return Ok(Done::Skip(format!("prevResult on DEL needs 0.4.0, using {}", s.version)));
    }
    let net = TestNet::new(&s.base, &s.version, Range::Tiny(1))?;
    let a = Ctr::new()?;
    let (ra, ipa) = s.add_ok(&net, &a, &s.version)?;
    let o = s.exec(&Request::container("DEL", &net.conf_prev(&s.version, &ra), &a.id, Some(a.ns.path()), IFNAME));
    ensure!(o.success(), "DEL with prevResult failed: {}", o.describe());
    ensure!(a.ns.link(IFNAME).is_none(), "{IFNAME} still exists after DEL with prevResult");
    let b = Ctr::new()?;
    let (rb, ipb) =
        s.add_ok(&net, &b, &s.version).map_err(|e| format!("IP not released by DEL with prevResult: {e}"))?;
    ensure!(ipb.ip() == ipa.ip(), "got {ipb}, expected {ipa}");
    s.del_ok(&net, &b, &s.version, Some(&rb))?;
    Ok(Done::Pass("DEL with prevResult exit 0, eth0 gone, IP free".into()))
}
