//! The chained plugin after the real cni-bridge, in network namespaces: what the runtime sees
//! (results, error codes), what the registry holds, and what the kernel's `cni-policy` tables
//! hold. (Packets through the tables are the policy tests' subject.)

mod common;

use common::*;
use serde_json::{json, Value};

fn endpoint<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["endpoints"].as_array().unwrap().iter().find(|e| e["name"] == name)
}

fn mapped(h: &Host, addr: &str) -> bool {
    h.map_keys().iter().any(|(_, k)| k == addr)
}

#[test]
fn add_registers_and_protects_check_passes_del_forgets_idempotently() {
    let mut h = Host::new();
    h.write_policy("10-web.yaml", ALLOW_WEB);
    h.write_policy("20-pod.yaml", PIN_WEB_0);
    let c = h.container();
    // Off before ADD, so the test sees ADD turn them on.
    let sysctls = "net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables";
    let set_sysctls = |v: u8| {
        let (ok, _) = testkit::util::sh(&format!(
            "ip netns exec {} sysctl -q -w net.bridge.bridge-nf-call-iptables={v} net.bridge.bridge-nf-call-ip6tables={v}",
            h.ns
        ));
        assert!(ok, "set the bridge-nf-call sysctls in {}", h.ns);
    };
    set_sysctls(0);
    let args = "IgnoreUnknown=1;K8S_POD_NAMESPACE=prod;K8S_POD_NAME=web-0";
    // A label of the pod-name key in args.cni.labels loses to K8S_POD_NAME.
    let labels = json!({"args": {"cni": {"labels": [{"key": "app", "value": "web"},
                                                    {"key": "cni-policy/pod-name", "value": "spoofed"}]}}});
    let (bridge_res, (ok, res)) = h.add("c1", &c, args, labels);
    assert!(ok, "cni-policy ADD: {res}");
    // A chained plugin passes the previous result on unchanged.
    assert_eq!(res, bridge_res);

    // Registered with what prevResult and CNI_ARGS said.
    let st = h.status();
    let ep = endpoint(&st, "c1/eth0").unwrap_or_else(|| panic!("no c1/eth0 in {st}"));
    assert_eq!(ep["namespace"], "prod");
    assert_eq!(ep["pod"], "web-0");
    assert_eq!(ep["labels"], json!({"app": "web", "cni-policy/pod-name": "web-0"}));
    assert_eq!(ep["enforced"], true);
    let want: Vec<Value> = addrs(&bridge_res).into_iter().map(Value::from).collect();
    assert_eq!(ep["addrs"].as_array().unwrap(), &want);
    let host_if = ep["hostIfname"].as_str().unwrap().to_string();
    assert_ne!(host_if, h.bridge, "the host side is the veth, not the bridge");
    assert_eq!(ep["bridged"], true);
    // A selector on the pod name selects it.
    assert_eq!(ep["policies"], json!(["allow-web", "pin-web-0"]));
    assert!(ep["rules"].as_u64().unwrap() > 0, "{ep}");
    assert_eq!(ep["inForce"], true);
    assert_eq!(st["policyDir"], json!(h.policy_dir()));

    // In force in the kernel before ADD returned: every address is dispatched, and the rule
    // count the compiler reports is what the kernel lists.
    for a in addrs(&bridge_res) {
        assert!(mapped(&h, &a), "{a} not in the verdict maps: {:?}", h.map_keys());
    }
    assert_eq!(st["rules"].as_u64().unwrap() as usize, h.kernel_rules());
    // Bridged traffic is made to meet the inet hooks.
    let (_, v) = testkit::util::sh(&format!("ip netns exec {} sysctl -n {sysctls}", h.ns));
    assert_eq!(v.split_whitespace().collect::<Vec<_>>(), ["1", "1"]);

    let (ok, v) = h.plugin("cni-policy", "CHECK", "c1", Some(&c), args, &h.policy_conf(Some(&bridge_res)));
    assert!(ok, "CHECK: {v}");
    // Turned off behind our back: CHECK and STATUS say bridged traffic bypasses the policy.
    set_sysctls(0);
    let (ok, v) = h.plugin("cni-policy", "CHECK", "c1", Some(&c), args, &h.policy_conf(Some(&bridge_res)));
    assert!(!ok && v["code"] == 120 && v["msg"].as_str().unwrap().contains("bridge-nf-call"), "{v}");
    let (ok, v) = h.plugin("cni-policy", "STATUS", "", None, "", &h.policy_conf(None));
    assert!(!ok && v["code"] == 50 && v["msg"].as_str().unwrap().contains("bridge-nf-call"), "{v}");
    set_sysctls(1);
    // The table removed behind our back: CHECK says so; the next apply (here a repeated ADD)
    // puts it back whole and CHECK passes again.
    assert!(testkit::util::sh(&format!("ip netns exec {} nft delete table inet cni-policy", h.ns)).0);
    let (ok, v) = h.plugin("cni-policy", "CHECK", "c1", Some(&c), args, &h.policy_conf(Some(&bridge_res)));
    assert!(!ok && v["code"] == 120, "CHECK without the table: {v}");
    assert_eq!(endpoint(&h.status(), "c1/eth0").unwrap()["inForce"], false);
    let mut again = h.policy_conf(Some(&bridge_res));
    again["args"] = json!({"cni": {"labels": [{"key": "app", "value": "web"}]}});
    let (ok, v) = h.plugin("cni-policy", "ADD", "c1", Some(&c), args, &again);
    assert!(ok, "repeated ADD: {v}");
    let (ok, v) = h.plugin("cni-policy", "CHECK", "c1", Some(&c), args, &h.policy_conf(Some(&bridge_res)));
    assert!(ok, "CHECK after the table came back: {v}");
    // CHECK of an attachment that was never added fails.
    let (ok, v) = h.plugin("cni-policy", "CHECK", "nope", Some(&c), "", &h.policy_conf(Some(&bridge_res)));
    assert!(!ok && v["code"].as_u64().is_some(), "{v}");

    // DEL forgets it and takes it out of the kernel; a second DEL is fine.
    let (ok, v) = h.del("c1", Some(&c));
    assert!(ok, "DEL: {v}");
    assert!(endpoint(&h.status(), "c1/eth0").is_none());
    for a in addrs(&bridge_res) {
        assert!(!mapped(&h, &a), "{a} still mapped after DEL");
    }
    let (ok, v) = h.plugin("cni-policy", "DEL", "c1", None, "", &h.policy_conf(None));
    assert!(ok, "second DEL: {v}");
    // And so is a DEL before anything ever ran (no state directory).
    let mut fresh = h.policy_conf(None);
    fresh["stateDir"] = json!(h.tmp.path().join("never"));
    let (ok, v) = h.plugin("cni-policy", "DEL", "c9", None, "", &fresh);
    assert!(ok, "DEL without state: {v}");
    assert!(!h.tmp.path().join("never").exists(), "DEL must not create state");
}

#[test]
fn add_without_prev_result_is_code_7() {
    let h = Host::new();
    let c = "cpolnone";
    let (ok, v) = h.plugin("cni-policy", "ADD", "c1", Some(c), "", &h.policy_conf(None));
    assert!(!ok);
    assert_eq!(v["code"], 7);
    assert_eq!(v["msg"], "cni-policy must be chained after a network plugin");
    assert!(h.state_dir().join("endpoints").read_dir().map_or(true, |mut d| d.next().is_none()));
}

/// `status` while the policy directory does not parse: exit status 1, the error on stderr, the
/// endpoints and the error in the JSON.
fn status_with_error(h: &Host) -> (i32, Value, String) {
    let sd = h.state_dir();
    let (code, out, err) = h.cli(&["status", "--state-dir", sd.to_str().unwrap(), "--json"]);
    (code, serde_json::from_str(&out).unwrap_or_else(|e| panic!("status JSON: {e}: {out} {err}")), err)
}

/// The rendered inet table (`nft list table`), for what the rules say.
fn nft_text(h: &Host) -> String {
    testkit::util::sh(&format!("ip netns exec {} nft list table inet cni-policy", h.ns)).1
}

#[test]
fn a_bad_policy_file_keeps_the_last_good_set_in_force_for_add_label_del_and_status_says_50() {
    let mut h = Host::new();
    h.write_policy("10-web.yaml", ALLOW_WEB);
    let c1 = h.container();
    let web = labels(&[("app", "web")]);
    let res1 = h.add_ok("c1", &c1, "", web.clone());
    // The set that loaded is kept, byte for byte.
    let good = h.state_dir().join("policy-good");
    assert_eq!(std::fs::read_to_string(good.join("10-web.yaml")).unwrap(), ALLOW_WEB);
    assert!(nft_text(&h).contains("dport 80 accept"), "{}", nft_text(&h));

    let status_conf = h.policy_conf(None);
    let (ok, v) = h.plugin("cni-policy", "STATUS", "", None, "", &status_conf);
    assert!(ok, "STATUS with good files: {v}");

    // One typo, and an edit of the good file in the same directory: the directory does not
    // parse, so neither reaches the kernel.
    h.write_policy("20-bad.yaml", BAD_ACTION);
    h.write_policy("10-web.yaml", &ALLOW_WEB.replace("ports: [80]", "ports: [443]"));
    let c2 = h.container();
    let (res2, (ok, v)) = h.add("c2", &c2, "", web.clone());
    assert!(ok, "ADD with a bad file applies the last good set: {v}");
    let text = nft_text(&h);
    assert!(text.contains("dport 80 accept") && !text.contains("443"), "the bad directory leaked in: {text}");
    for a in addrs(&res1).into_iter().chain(addrs(&res2)) {
        assert!(mapped(&h, &a), "{a} not mapped");
    }
    assert_eq!(std::fs::read_to_string(good.join("10-web.yaml")).unwrap(), ALLOW_WEB, "the good copy changed");
    assert!(!good.join("20-bad.yaml").exists());

    // STATUS still reports the directory.
    let (ok, v) = h.plugin("cni-policy", "STATUS", "", None, "", &status_conf);
    assert!(!ok);
    assert_eq!(v["code"], 50, "{v}");
    assert!(v["details"].as_str().unwrap().contains("20-bad.yaml:8"), "{v}");

    // `status`: the error and the endpoints (with the set in force), exit status 1.
    let (code, st, err) = status_with_error(&h);
    assert_eq!(code, 1);
    assert!(err.contains("20-bad.yaml:8") && err.contains("spec.ingress[0].action"), "{err}");
    assert!(st["policyError"].as_str().unwrap().contains("20-bad.yaml:8"), "{st}");
    let eps = st["endpoints"].as_array().unwrap();
    assert_eq!(eps.len(), 2, "{st}");
    for e in eps {
        assert_eq!(e["policies"], json!(["allow-web"]), "{e}");
        assert_eq!(e["inForce"], true, "{e}");
    }
    assert_eq!(st["rules"].as_u64().unwrap() as usize, h.kernel_rules());

    // `label` too: relabelled and re-applied with the last good set.
    let sd = h.state_dir();
    let (code, _, err) = h.cli(&["label", "--state-dir", sd.to_str().unwrap(), "c2", "app=db"]);
    assert_eq!(code, 0, "{err}");
    let (_, st, _) = status_with_error(&h);
    assert_eq!(endpoint(&st, "c2/eth0").unwrap()["policies"], json!([]), "{st}");
    assert_eq!(st["rules"].as_u64().unwrap() as usize, h.kernel_rules());

    // DEL too: c1 leaves the kernel at once (not only the registry).
    let (ok, v) = h.del("c1", Some(&c1));
    assert!(ok, "DEL with a bad policy dir: {v}");
    for a in addrs(&res1) {
        assert!(!mapped(&h, &a), "{a} still mapped after DEL");
    }
    let (_, st, _) = status_with_error(&h);
    assert_eq!(st["rules"].as_u64().unwrap() as usize, h.kernel_rules());

    // Fixed: the next ADD applies the directory and it becomes the good set.
    std::fs::remove_file(h.policy_dir().join("20-bad.yaml")).unwrap();
    let c3 = h.container();
    let web = labels(&[("app", "web")]);
    h.add_ok("c3", &c3, "", web);
    assert!(nft_text(&h).contains("dport 443 accept"));
    assert!(std::fs::read_to_string(good.join("10-web.yaml")).unwrap().contains("[443]"));
}

#[test]
fn a_bad_policy_file_without_a_last_good_set_fails_add_with_file_line_field() {
    let mut h = Host::new();
    h.write_policy("10-web.yaml", ALLOW_WEB);
    h.write_policy("20-bad.yaml", BAD_ACTION);
    let c1 = h.container();
    let (res1, (ok, v)) = h.add("c1", &c1, "", json!({}));
    assert!(!ok, "ADD with a bad file and no good set must fail");
    assert_eq!(v["code"], 7, "{v}");
    assert_eq!(v["msg"], "policyDir does not parse");
    let details = v["details"].as_str().unwrap();
    assert!(details.contains("20-bad.yaml:8"), "file and line: {details}");
    assert!(details.contains("spec.ingress[0].action"), "field: {details}");
    // Rolled back: not registered, nothing in the kernel, no good set.
    assert!(endpoint(&h.status_or_null(), "c1/eth0").is_none());
    assert!(h.nft_table("inet").is_none());
    assert!(!h.state_dir().join("policy-good").exists());
    for a in addrs(&res1) {
        assert!(!mapped(&h, &a));
    }
    let (ok, v) = h.plugin("cni-policy", "STATUS", "", None, "", &h.policy_conf(None));
    assert!(!ok && v["code"] == 50, "{v}");
}

#[test]
fn gc_drops_only_this_networks_entries_the_runtime_no_longer_lists() {
    let mut h = Host::new();
    h.write_policy("10-web.yaml", ALLOW_WEB);
    let mut res = vec![];
    for cid in ["g1", "g2", "g3"] {
        let c = h.container();
        let r = h.add_ok(cid, &c, "", json!({}));
        res.push(r);
    }
    // g3 belongs to another network sharing the state directory.
    let sd = h.state_dir();
    let p = sd.join("endpoints/g3@eth0.json");
    let mut e: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    e["network"] = json!("other-net");
    std::fs::write(&p, e.to_string()).unwrap();

    let mut gc = h.policy_conf(None);
    gc["cni.dev/valid-attachments"] = json!([{"containerID": "g1", "ifname": "eth0"}]);
    let (ok, v) = h.plugin("cni-policy", "GC", "", None, "", &gc);
    assert!(ok, "GC: {v}");
    let st = h.status();
    let names: Vec<&str> = st["endpoints"].as_array().unwrap().iter().map(|e| e["name"].as_str().unwrap()).collect();
    assert_eq!(names, ["g1/eth0", "g3/eth0"]);
    for a in addrs(&res[1]) {
        assert!(!mapped(&h, &a), "g2's {a} still mapped after GC");
    }
    for a in addrs(&res[0]).into_iter().chain(addrs(&res[2])) {
        assert!(mapped(&h, &a), "{a} must stay");
    }
}

#[test]
fn label_relabels_and_reapplies_status_shows_it() {
    let mut h = Host::new();
    h.write_policy("10-db.yaml", DB_ONLY_FROM_WEB);
    let c = h.container();
    h.add_ok("l1", &c, "K8S_POD_NAMESPACE=prod", json!({}));
    let st = h.status();
    assert_eq!(endpoint(&st, "l1/eth0").unwrap()["policies"], json!([]));
    let rules_before = h.kernel_rules();

    let sd = h.state_dir();
    let sd = sd.to_str().unwrap();
    let (code, out, err) = h.cli(&["label", "--state-dir", sd, "l1", "role=db", "tier=backend"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("l1/eth0"), "{out}");
    let st = h.status();
    let ep = endpoint(&st, "l1/eth0").unwrap();
    assert_eq!(ep["labels"], json!({"role": "db", "tier": "backend"}));
    assert_eq!(ep["policies"], json!(["prod/db"]));
    // The kernel changed with the registry.
    assert_eq!(st["rules"].as_u64().unwrap() as usize, h.kernel_rules());
    assert_ne!(h.kernel_rules(), rules_before);

    let (code, _, err) = h.cli(&["label", "--state-dir", sd, "l1", "role-"]);
    assert_eq!(code, 0, "{err}");
    let st = h.status();
    let ep = endpoint(&st, "l1/eth0").unwrap();
    assert_eq!(ep["labels"], json!({"tier": "backend"}));
    assert_eq!(ep["policies"], json!([]));
    assert_eq!(h.kernel_rules(), rules_before);

    let (code, _, err) = h.cli(&["label", "--state-dir", sd, "ghost", "a=b"]);
    assert_eq!(code, 1);
    assert!(err.contains("ghost"), "{err}");
    let (code, _, err) = h.cli(&["label", "--state-dir", sd, "l1", "bad label"]);
    assert_eq!(code, 1);
    assert!(err.contains("bad label"), "{err}");

    // The table for humans names the endpoint and its labels.
    let (code, out, _) = h.cli(&["status", "--state-dir", sd]);
    assert_eq!(code, 0);
    assert!(out.contains("l1/eth0") && out.contains("tier=backend"), "{out}");
}

#[test]
fn check_command_validates_files() {
    let h = Host::new();
    h.write_policy("a.yaml", ALLOW_WEB);
    h.write_policy("b.yaml", BAD_ACTION);
    let a = h.policy_dir().join("a.yaml");
    let b = h.policy_dir().join("b.yaml");
    let (code, out, _) = h.cli(&["check", a.to_str().unwrap()]);
    assert_eq!((code, out.as_str()), (0, "OK\n"));
    let (code, out, err) = h.cli(&["check", a.to_str().unwrap(), b.to_str().unwrap()]);
    assert_eq!(code, 1);
    assert!(out.is_empty());
    assert!(err.contains("b.yaml:8") && err.contains("spec.ingress[0].action"), "{err}");
}

trait StatusOrNull {
    fn status_or_null(&self) -> Value;
}

impl StatusOrNull for Host {
    /// `status` while the policy directory does not parse fails: read the registry instead.
    fn status_or_null(&self) -> Value {
        let mut eps = vec![];
        if let Ok(d) = std::fs::read_dir(self.state_dir().join("endpoints")) {
            for e in d.flatten() {
                if e.path().extension().is_some_and(|x| x == "json") {
                    eps.push(serde_json::from_slice::<Value>(&std::fs::read(e.path()).unwrap()).unwrap());
                }
            }
        }
        json!({"endpoints": eps})
    }
}

/// Another vendor's plugins before cni-policy: the reference `bridge` (a bridge port) and the
/// reference `ptp` (a routed veth, no bridge), from containernetworking/plugins.
#[test]
fn chained_after_the_reference_bridge_and_ptp() {
    let mut h = Host::new();
    h.write_policy("10-web.yaml", ALLOW_WEB);
    let web = labels(&[("app", "web")]);
    for (i, ty) in ["bridge", "ptp"].into_iter().enumerate() {
        let c = h.container();
        let cid = format!("ref{i}");
        let mut net = json!({
            "cniVersion": "1.0.0", "name": h.network, "type": ty, "isGateway": true,
            "ipam": {"type": "host-local", "dataDir": h.tmp.path().join("host-local"),
                     "ranges": [[{"subnet": format!("10.79.{i}.0/24")}]]},
        });
        if ty == "bridge" {
            net["bridge"] = json!(format!("cpref{}", h.u));
        }
        let (ok, res) = h.reference(ty, "ADD", &cid, &c, &net);
        assert!(ok, "reference {ty} ADD: {res}");
        let mut conf = h.policy_conf(Some(&res));
        conf["cniVersion"] = json!("1.0.0");
        conf["args"] = web["args"].clone();
        let (ok, out) = h.plugin("cni-policy", "ADD", &cid, Some(&c), "", &conf);
        assert!(ok, "cni-policy after {ty}: {out}");
        // The same result (the reference prints an empty `dns: {}` that ours leaves out).
        let decode = |v: &Value| cni_core::CniResult::from_json(v).unwrap();
        assert_eq!(decode(&out), decode(&res), "prevResult unchanged");
        assert_eq!(out["cniVersion"], "1.0.0");
        let st = h.status();
        let ep = endpoint(&st, &format!("{cid}/eth0")).unwrap();
        assert_eq!(ep["bridged"], ty == "bridge", "{ep}");
        let host = ep["hostIfname"].as_str().unwrap();
        assert!(res["interfaces"].as_array().unwrap().iter().any(|i| i["name"] == host && i.get("sandbox").is_none()));
        assert_eq!(ep["policies"], json!(["allow-web"]));
        for a in addrs(&res) {
            assert!(mapped(&h, &a), "{a} not mapped after {ty}");
        }
        let (ok, v) = h.plugin("cni-policy", "CHECK", &cid, Some(&c), "", &conf);
        assert!(ok, "CHECK after {ty}: {v}");
    }
    assert_eq!(h.status()["rules"].as_u64().unwrap() as usize, h.kernel_rules());
}

/// ADDs racing each other: the lock serialises registry change + compile + apply, so every
/// endpoint ends registered and in the kernel (a lost update would leave one out).
#[test]
fn concurrent_adds_all_end_in_force() {
    let mut h = Host::new();
    h.write_policy("10-web.yaml", ALLOW_WEB);
    let web = labels(&[("app", "web")]);
    // The network plugin first, one by one (its own concurrency is not this test's subject).
    let mut prevs = vec![];
    for i in 0..8 {
        let c = h.container();
        let cid = format!("cc{i}");
        let (ok, res) = h.plugin("cni-bridge", "ADD", &cid, Some(&c), "", &h.bridge_conf());
        assert!(ok, "{res}");
        prevs.push((cid, c, res));
    }
    let h = &h;
    std::thread::scope(|s| {
        let runs: Vec<_> = prevs
            .iter()
            .map(|(cid, c, res)| {
                let mut conf = h.policy_conf(Some(res));
                conf["args"] = web["args"].clone();
                s.spawn(move || h.plugin("cni-policy", "ADD", cid, Some(c), "", &conf))
            })
            .collect();
        for r in runs {
            let (ok, v) = r.join().unwrap();
            assert!(ok, "{v}");
        }
    });
    let st = h.status();
    assert_eq!(st["endpoints"].as_array().unwrap().len(), 8);
    for (_, _, res) in &prevs {
        for a in addrs(res) {
            assert!(mapped(h, &a), "{a} lost in a race");
        }
    }
    assert_eq!(st["rules"].as_u64().unwrap() as usize, h.kernel_rules());
}

/// Dispatch is keyed on addresses: a second endpoint claiming a registered address is refused
/// (code 121, naming the holder), and neither the registry nor the kernel changes.
#[test]
fn an_address_registered_to_another_endpoint_is_refused() {
    let mut h = Host::new();
    h.write_policy("10-web.yaml", ALLOW_WEB);
    let c1 = h.container();
    let res1 = h.add_ok("a1", &c1, "", json!({}));
    let before = h.nft_table("inet").unwrap();
    // A result that names a1's address for another container (a buggy or overlapping IPAM).
    let c2 = h.container();
    let mut forged = res1.clone();
    forged["interfaces"][2]["sandbox"] = json!(format!("/var/run/netns/{c2}"));
    let (ok, v) = h.plugin("cni-policy", "ADD", "a2", Some(&c2), "", &h.policy_conf(Some(&forged)));
    assert!(!ok);
    assert_eq!(v["code"], 121, "{v}");
    assert!(v["msg"].as_str().unwrap().contains("a1/eth0"), "{v}");
    let names: Vec<Value> = h.status()["endpoints"].as_array().unwrap().iter().map(|e| e["name"].clone()).collect();
    assert_eq!(names, [json!("a1/eth0")]);
    assert_eq!(h.nft_table("inet").unwrap(), before);
    // Re-ADD of the holder itself is not a conflict.
    let (ok, v) = h.plugin("cni-policy", "ADD", "a1", Some(&c1), "", &h.policy_conf(Some(&res1)));
    assert!(ok, "{v}");
}

/// The reference macvlan: no host-side interface, the container's packets leave through the
/// parent device and never meet this host's netfilter. ADD refuses (code 7, saying why) unless
/// `allowUnenforceable`; then the endpoint is registered for selectors and shown unenforced.
#[test]
fn an_attachment_without_a_host_side_interface_is_refused_unless_allowed() {
    let mut h = Host::new();
    h.write_policy("10-from-mv.yaml", ALLOW_FROM_MV);
    let parent = format!("cpmv{}", h.u);
    assert!(
        testkit::util::sh(&format!(
            "ip -n {ns} link add {parent} type veth peer name {parent}p && ip -n {ns} link set {parent} up",
            ns = h.ns
        ))
        .0,
        "a parent for macvlan (a veth: the kernel has no dummy)"
    );
    let c = h.container();
    let net = json!({
        "cniVersion": "1.0.0", "name": h.network, "type": "macvlan", "master": parent, "mode": "bridge",
        "ipam": {"type": "host-local", "dataDir": h.tmp.path().join("host-local"),
                 "ranges": [[{"subnet": "10.78.0.0/24"}]]},
    });
    let (ok, res) = h.reference("macvlan", "ADD", "mv1", &c, &net);
    assert!(ok, "reference macvlan ADD: {res}");
    let mut conf = h.policy_conf(Some(&res));
    conf["cniVersion"] = json!("1.0.0");
    conf["args"] = json!({"cni": {"labels": [{"key": "app", "value": "mv"}]}});
    let (ok, v) = h.plugin("cni-policy", "ADD", "mv1", Some(&c), "", &conf);
    assert!(!ok, "macvlan must be refused: {v}");
    assert_eq!(v["code"], 7, "{v}");
    assert_eq!(
        v["msg"],
        "eth0 has no host-side interface: its traffic does not cross this host's netfilter, so policy cannot be enforced"
    );
    assert!(v["details"].as_str().unwrap().contains("allowUnenforceable"), "{v}");
    assert!(endpoint(&h.status_or_null(), "mv1/eth0").is_none(), "refused, yet registered");

    // A policed web endpoint whose policy allows from app == 'mv'.
    let cw = h.container();
    let web = labels(&[("app", "web")]);
    h.add_ok("w1", &cw, "", web);
    assert!(!in_a_set(&h, &addrs(&res)[0]), "the macvlan address is in a set before it is registered");

    // Opted in: registered, selectable, shown as not enforced.
    conf["allowUnenforceable"] = json!(true);
    let (ok, v) = h.plugin("cni-policy", "ADD", "mv1", Some(&c), "", &conf);
    assert!(ok, "with allowUnenforceable: {v}");
    let st = h.status();
    let ep = endpoint(&st, "mv1/eth0").unwrap();
    assert_eq!(ep["enforced"], false, "{ep}");
    assert_eq!(ep["hostIfname"], Value::Null, "{ep}");
    assert_eq!(endpoint(&st, "w1/eth0").unwrap()["enforced"], true);
    // The web endpoint's rule selects it: its address is in the selector's set.
    assert!(in_a_set(&h, &addrs(&res)[0]), "the macvlan address is not in any set: {}", nft_text(&h));
    let sd = h.state_dir();
    let (code, out, _) = h.cli(&["status", "--state-dir", sd.to_str().unwrap()]);
    assert_eq!(code, 0);
    assert!(out.lines().any(|l| l.starts_with("mv1/eth0") && l.contains("no host-side interface")), "{out}");
}

/// Whether `addr` is an element of a named set of the inet table (not a verdict map).
fn in_a_set(h: &Host, addr: &str) -> bool {
    let Some(t) = h.nft_table("inet") else { return false };
    t["nftables"].as_array().unwrap().iter().filter_map(|o| o.get("set")).any(|s| {
        s["elem"].as_array().is_some_and(|es| es.iter().any(|e| e.to_string().contains(&format!("\"{addr}\""))))
    })
}

const ALLOW_FROM_MV: &str = "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: from-mv
spec:
  selector: app == 'web'
  types: [Ingress]
  ingress:
  - action: Allow
    source:
      selector: app == 'mv'
";

const PIN_WEB_0: &str = "apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: pin-web-0
spec:
  order: 20
  selector: cni-policy/pod-name == 'web-0'
  types: [Egress]
  egress:
  - action: Allow
";

/// Two networks with different `stateDir`s on one host: the second must not take the tables
/// over while the first still protects containers (each would strip the other's endpoints).
#[test]
fn a_second_state_dir_is_refused_with_code_7_and_changes_nothing() {
    let mut h = Host::new();
    h.write_policy("10-web.yaml", ALLOW_WEB);
    let c1 = h.container();
    let res1 = h.add_ok("s1", &c1, "", json!({}));
    let before = h.nft_table("inet").unwrap();
    let other = h.state_dir().with_file_name("other-state");
    let c2 = h.container();
    let (_, (ok, v)) = h.add("s2", &c2, "", json!({ "stateDir": other }));
    assert!(!ok);
    assert_eq!(v["code"], 7, "{v}");
    assert_eq!(v["msg"], "another stateDir manages this host's policy tables", "{v}");
    let details = v["details"].as_str().unwrap();
    assert!(details.contains(h.state_dir().to_str().unwrap()) && details.contains("other-state"), "{v}");
    assert_eq!(h.nft_table("inet").unwrap(), before, "the first state dir's tables changed");
    for a in addrs(&res1) {
        assert!(mapped(&h, &a), "{a} of the first state dir's container lost its dispatch entry");
    }
    let left = other.join("endpoints").read_dir().map_or(0, |d| d.count());
    assert_eq!(left, 0, "the refused ADD left a registry entry");
}
