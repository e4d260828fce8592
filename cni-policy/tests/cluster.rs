//! Selectors that see the endpoints of every host, shared through a real etcd: two "hosts"
//! (node namespaces, each with its own bridge, pods, policy and state directories) routed to
//! each other over a veth link, etcd listening on host A's end of that link. A policy on host
//! B denies ingress from `app == 'bad'` and allows the rest; packets from host A's pods show
//! whether B's sets hold their addresses. And what happens when etcd does not answer.
//! Root; needs cni-bridge built next to cni-policy and etcd in PATH (or $ETCD_BIN).

mod world;

use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use etcd_kv::testing::EtcdCluster;
use serde_json::{json, Value};
use testkit::probe::in_netns;
use testkit::util::sh;
use world::{answered, eventually, expect, probe, Network, Want, World, P};
use Want::{Drop, Pass};

/// B's policy: its `srv` pods take nothing from `app == 'bad'` pods, anything from the rest.
const DENY_BAD: &str = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: deny-bad}
spec:
  selector: app == 'srv'
  ingress:
  - {action: Deny, source: {selector: app == 'bad'}}
  - {action: Allow}
"#;

/// A world whose network is `sub4`/`sub6` (gateway `.1`), default routes in the pods, and
/// these cni-policy keys (`etcdEndpoints`, …).
fn host(sub4: &str, sub6: &str, keys: Value) -> World {
    let mut w = World::new(Network::Bridge);
    let ipam_dir = w.node.dir.join("ipam");
    let list = w.list_mut();
    list["plugins"][0]["isDefaultGateway"] = json!(true);
    list["plugins"][0]["ipam"] = testkit::node::ipam("cni-ipam", sub4, sub6, &ipam_dir);
    for (k, v) in keys.as_object().unwrap() {
        list["plugins"][1][k] = v.clone();
    }
    w
}

fn cluster_keys(etcd: &str, prefix: &str, node: &str) -> Value {
    json!({"etcdEndpoints": [etcd], "etcdPrefix": prefix, "nodeName": node})
}

/// A unique short tag for link names and the etcd prefix.
fn tag() -> String {
    format!("{:x}{:x}", std::process::id() & 0xffff, testkit::util::uniq() & 0xfff)
}

/// Whether the kernel's `table inet cni-policy` on `w`'s node holds `addr` in a set.
fn in_sets(w: &World, addr: IpAddr) -> bool {
    let out = std::process::Command::new("ip")
        .args(["netns", "exec", w.node.name(), "nft", "-j", "list", "table", "inet", "cni-policy"])
        .output()
        .expect("nft");
    assert!(out.status.success(), "nft: {}", String::from_utf8_lossy(&out.stderr));
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    v["nftables"].as_array().unwrap().iter().filter_map(|o| o.get("set")).any(|s| {
        s["name"].as_str().is_some_and(|n| n.starts_with("sel"))
            && s["elem"].as_array().is_some_and(|e| e.iter().any(|x| x.as_str() == Some(&addr.to_string())))
    })
}

/// The names of the remote endpoints `cni-policy status --json` lists, with their node.
fn remote_names(w: &World) -> Vec<(String, String)> {
    let s = w.status();
    s["remoteEndpoints"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| (e["node"].as_str().unwrap().to_string(), e["name"].as_str().unwrap().to_string()))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_selector_on_one_host_matches_pods_of_another_host_and_follows_relabel_and_del() {
    let t = tag();
    let prefix = format!("/cni-policy-test-{t}");
    // Host A and host B first without etcd settings: the link (and etcd on it) comes next.
    let (la, lb) = (format!("h4a{t}"), format!("h4b{t}"));
    let etcd_url = "http://10.255.0.1";
    let mut a = host("10.71.0.0/24", "fd71::/64", json!({}));
    let mut b = host("10.72.0.0/24", "fd72::/64", json!({}));
    // The hosts' link: 10.255.0.1 (A) / .2 (B), fdff::1/2; each routes the other's pod subnets.
    let link = format!(
        "ip link add {la} netns {na} type veth peer name {lb} netns {nb} && \
         ip -n {na} addr add 10.255.0.1/30 dev {la} && ip -n {nb} addr add 10.255.0.2/30 dev {lb} && \
         ip -n {na} addr add fdff::1/64 dev {la} nodad && ip -n {nb} addr add fdff::2/64 dev {lb} nodad && \
         ip -n {na} link set {la} up && ip -n {nb} link set {lb} up && \
         ip -n {na} route add 10.72.0.0/24 via 10.255.0.2 && ip -n {nb} route add 10.71.0.0/24 via 10.255.0.1 && \
         ip -n {na} route add fd72::/64 via fdff::2 && ip -n {nb} route add fd71::/64 via fdff::1",
        na = a.node.name(),
        nb = b.node.name()
    );
    assert!(sh(&link).0, "link the hosts: {link}");
    testkit::probe::wait_carrier(a.node.name(), &la, Duration::from_secs(10)).unwrap();
    testkit::probe::wait_carrier(b.node.name(), &lb, Duration::from_secs(10)).unwrap();
    // etcd on host A's end of the link: both hosts reach it (B over the link).
    let etcd = in_netns(a.node.path(), || EtcdCluster::start_on(1, "10.255.0.1".parse().unwrap()))
        .unwrap()
        .expect("start etcd on host A");
    let endpoint = etcd.endpoints()[0].clone();
    assert!(endpoint.starts_with(etcd_url), "{endpoint}");
    for (w, node) in [(&mut a, "host-a"), (&mut b, "host-b")] {
        let keys = cluster_keys(&endpoint, &prefix, node);
        for (k, v) in keys.as_object().unwrap() {
            w.list_mut()["plugins"][1][k] = v.clone();
        }
    }

    b.write_policy("deny-bad.yaml", DENY_BAD);
    let bad = a.add("default", "bad", &[("app", "bad")]);
    let good = a.add("default", "good", &[("app", "good")]);
    // B's ADD reads A's records (one range read) before it compiles: srv is covered before its
    // first packet, remote pods included.
    let srv = b.add("default", "srv", &[("app", "srv")]);
    let verdicts = |what: &str, bad_want: Want, good_want: Want| {
        expect(
            what,
            &[
                ("A bad -> B srv tcp 80 (v4)", probe(bad.path(), srv.v4(), P::Tcp(80)), bad_want),
                ("A bad -> B srv tcp 80 (v6)", probe(bad.path(), srv.v6(), P::Tcp(80)), bad_want),
                ("A good -> B srv tcp 80 (v4)", probe(good.path(), srv.v4(), P::Tcp(80)), good_want),
                ("A good -> B srv udp 9000 (v6)", probe(good.path(), srv.v6(), P::Udp(9000)), good_want),
            ],
        )
    };
    verdicts("B's Deny from app == 'bad' drops A's bad pod, not A's good one", Drop, Pass);
    let mut want = vec![
        ("host-a".to_string(), format!("{}/eth0", bad.id())),
        ("host-a".to_string(), format!("{}/eth0", good.id())),
    ];
    want.sort();
    let mut got = remote_names(&b);
    got.sort();
    assert_eq!(got, want, "B's status lists A's pods as remote endpoints of host-a");

    // B's daemon watches etcd: a relabel on A reaches B's sets within a bounded time.
    b.watch_with(&["--etcd-endpoints", &endpoint, "--etcd-prefix", &prefix, "--node-name", "host-b"]);
    let bounded = Duration::from_secs(5);
    eventually(Duration::from_secs(10), "B's watch is running", || b.watch_log().contains("watching the other hosts"));
    // The pod's address is in B's `app == 'bad'` set (the policy's only selector set) until B
    // re-applies the relabel.
    let bad_addr = bad.v4();
    let was_bad = |w: &World| in_sets(w, bad_addr);
    assert!(was_bad(&b), "before the relabel B's app == 'bad' set holds {bad_addr}");
    let t0 = std::time::Instant::now();
    a.label(&bad, &["app=good"]);
    let label_returned = t0.elapsed();
    eventually(bounded, "B re-applies after the relabel", || !was_bad(&b));
    eprintln!("label on host A returned after {label_returned:?}; host B's sets followed after {:?}", t0.elapsed());
    eventually(bounded, "the relabelled pod gets through to B's srv", || {
        answered(&probe(bad.path(), srv.v4(), P::Tcp(80)))
    });
    a.label(&good, &["app=bad"]);
    eventually(bounded, "the pod relabelled bad is dropped at B's srv", || {
        !answered(&probe(good.path(), srv.v4(), P::Tcp(80)))
    });
    verdicts("after the relabels the verdicts swapped", Pass, Drop);
    // Leftover check: the rest of the world's verdicts stand (B's srv still answers A's node).
    assert!(answered(&probe(a.node.path(), srv.v4(), P::Tcp(80))), "A's node (not a pod) -> B srv");

    // DEL of the (now bad) pod on A: its addresses leave B's sets.
    let gone = good.addrs();
    assert!(gone.iter().all(|ip| in_sets(&b, *ip)), "before DEL B's sets hold {gone:?}");
    let t0 = std::time::Instant::now();
    a.del(good);
    let del_returned = t0.elapsed();
    eventually(bounded, "the deleted pod's addresses leave B's sets", || !gone.iter().any(|ip| in_sets(&b, *ip)));
    eprintln!(
        "DEL on host A returned after {del_returned:?}; its addresses left host B's sets after {:?}",
        t0.elapsed()
    );
    assert_eq!(remote_names(&b), vec![("host-a".to_string(), format!("{}/eth0", bad.id()))]);
    verdicts_after_del(&bad, &srv);
    drop(etcd);
}

fn verdicts_after_del(bad: &testkit::node::Container, srv: &testkit::node::Container) {
    expect(
        "the remaining A pod (now good) still passes",
        &[("A (relabelled good) -> B srv tcp 443", probe(bad.path(), srv.v4(), P::Tcp(443)), Pass)],
    );
}

/// The failure behaviour chosen (docs/cni-policy.md, "When etcd does not answer"): an ADD on a
/// host that never read etcd fails with code 11 and changes nothing; once read, ADD, DEL and
/// `label` while etcd is down succeed with the remote endpoints last read, the pod's policy in
/// force before ADD returns, nothing published; once etcd is back a GC deletes this host's
/// records the registry no longer has (and publishes what is missing), and `cni-policy watch`
/// publishes what differs.
#[test]
fn with_etcd_down_add_is_covered_locally_and_published_by_gc_and_the_watch_once_etcd_is_back() {
    let t = tag();
    let prefix = format!("/cni-policy-test-{t}");
    let mut w = host("10.73.0.0/24", "fd73::/64", json!({}));
    let node_path = w.node.path().to_path_buf();
    let mut etcd = in_netns(&node_path, || EtcdCluster::start_on(1, "127.0.0.1".parse().unwrap()))
        .unwrap()
        .expect("start etcd in the node");
    let endpoint = etcd.endpoints()[0].clone();
    for (k, v) in cluster_keys(&endpoint, &prefix, "solo").as_object().unwrap() {
        w.list_mut()["plugins"][1][k] = v.clone();
    }
    w.write_policy("deny-bad.yaml", DENY_BAD);
    // This host's records in etcd: key (after `<prefix>/endpoints/solo/`) → labels.
    let records = |etcd: &EtcdCluster| -> Vec<(String, Value)> {
        let out = in_netns(&node_path, || etcd.etcdctl(&["get", "--prefix", &prefix])).unwrap().expect("etcdctl");
        assert!(out.status.success(), "etcdctl: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines: Vec<&str> = text.lines().filter(|l| !l.is_empty()).collect();
        let own = format!("{prefix}/endpoints/solo/");
        lines
            .chunks(2)
            .map(|kv| {
                let key = kv[0].strip_prefix(&own).unwrap_or_else(|| panic!("a key of another host: {}", kv[0]));
                let v: Value = serde_json::from_str(kv[1]).unwrap();
                (key.to_string(), v["labels"].clone())
            })
            .collect()
    };
    let keys = |etcd: &EtcdCluster| -> Vec<String> { records(etcd).into_iter().map(|(k, _)| k).collect() };
    let key = |c: &testkit::node::Container| format!("{}@eth0", c.id());

    // 1. Never read etcd and etcd down: ADD fails with code 11, no registry entry, no record.
    etcd.kill(0);
    let mut list = w.list_mut().clone();
    for p in list["plugins"].as_array_mut().unwrap() {
        p["args"] = json!({"cni": {"labels": [{"key": "app", "value": "srv"}]}});
    }
    let err = w.node.add(&list, testkit::node::ContainerSpec::pod("default", "first")).unwrap_err();
    assert!(err.contains("\"code\":11"), "code 11 (try again later): {err}");
    let registered = std::fs::read_dir(w.state_dir.join("endpoints")).map(|d| d.count()).unwrap_or(0);
    assert_eq!(registered, 0, "nothing registered");
    assert!(!w.state_dir.join("remote.json").exists(), "no remote cache");
    in_netns(&node_path, || etcd.start_again(0)).unwrap().expect("etcd again");
    assert!(keys(&etcd).is_empty(), "no record of the failed ADD");

    // 2. etcd up: ADDs read it (the remote cache now exists) and publish.
    let srv = w.add("default", "srv", &[("app", "srv")]);
    let old = w.add("default", "old", &[("app", "old")]);
    let mut want = vec![key(&srv), key(&old)];
    want.sort();
    assert_eq!(keys(&etcd), want, "both published before ADD returned");

    // 3. etcd down again: ADD succeeds, and the pod's policy is in force before it returns;
    //    DEL succeeds; nothing reaches etcd.
    etcd.kill(0);
    let bad = w.add("default", "bad", &[("app", "bad")]);
    let good = w.add("default", "good", &[("app", "good")]);
    expect(
        "pods added while etcd is down are covered at once (local selectors)",
        &[
            ("bad -> srv tcp 80", probe(bad.path(), srv.v4(), P::Tcp(80)), Drop),
            ("good -> srv tcp 80", probe(good.path(), srv.v4(), P::Tcp(80)), Pass),
        ],
    );
    let s = w.status();
    let in_force = s["endpoints"].as_array().unwrap().iter().all(|e| e["inForce"] == json!(true));
    assert!(in_force, "every endpoint in force: {s}");
    w.del(good);
    w.del(old);
    in_netns(&node_path, || etcd.start_again(0)).unwrap().expect("etcd again");
    assert_eq!(keys(&etcd), want, "nothing was published or deleted while etcd was down");

    // 4. GC (the runtime lists srv and bad): old's stale record goes, bad is published.
    let mut gc = w.list_mut()["plugins"][1].clone();
    gc["cniVersion"] = json!("1.1.0");
    gc["name"] = json!("polnet");
    gc["cni.dev/valid-attachments"] =
        json!([{"containerID": srv.id(), "ifname": "eth0"}, {"containerID": bad.id(), "ifname": "eth0"}]);
    let out = w.node.exec_plugin(&gc, "GC", &testkit::node::ContainerSpec::new(), "");
    assert!(out.success(), "GC: {}", out.describe());
    let mut want = vec![key(&srv), key(&bad)];
    want.sort();
    assert_eq!(keys(&etcd), want, "GC deleted the stale record and published the missing one");

    // 5. A relabel while etcd is down succeeds here; the watch, started once etcd is back with
    //    the settings the plugin recorded, publishes it.
    etcd.kill(0);
    w.label(&bad, &["app=worse"]);
    expect(
        "the relabel is in force here at once",
        &[("bad (now worse) -> srv tcp 80", probe(bad.path(), srv.v4(), P::Tcp(80)), Pass)],
    );
    in_netns(&node_path, || etcd.start_again(0)).unwrap().expect("etcd again");
    let labels_of_bad = |etcd: &EtcdCluster| records(etcd).into_iter().find(|(k, _)| *k == key(&bad)).map(|(_, l)| l);
    assert_eq!(labels_of_bad(&etcd).unwrap()["app"], json!("bad"), "the relabel was not published while etcd was down");
    w.watch();
    eventually(Duration::from_secs(10), "the watch publishes the relabel", || {
        labels_of_bad(&etcd).is_some_and(|l| l["app"] == json!("worse"))
    });
    assert_eq!(keys(&etcd), want);
    assert!(Path::new(&w.state_dir).join("remote.json").is_file());
}
