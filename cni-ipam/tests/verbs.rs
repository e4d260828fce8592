//! The five verbs against the real disk store, in-process (as the bridge
//! calls them) and through the binary.

mod common;

use cni_core::{Code, Plugin};
use cni_ipam::Ipam;
use common::*;
use ipam::CODE_EXHAUSTED;
use serde_json::{json, Value};

fn add(conf: &Value, id: &str) -> cni_core::Result<cni_core::CniResult> {
    Ipam.add(&ctx("ADD", id, "eth0", conf, ""))
}

fn add_ips(conf: &Value, id: &str) -> Vec<String> {
    add(conf, id).unwrap_or_else(|e| panic!("ADD {id}: {e}")).ips.iter().map(|c| c.address.to_string()).collect()
}

fn del(conf: &Value, id: &str) {
    Ipam.del(&ctx("DEL", id, "eth0", conf, "")).unwrap_or_else(|e| panic!("DEL {id}: {e}"));
}

#[test]
fn round_robin_gateway_skipped_release_and_reuse() {
    let t = TestDir::new("rr");
    let conf = t.conf("rr", json!({"ranges":[[{"subnet":"10.10.0.0/29"}]]}));
    assert_eq!(add_ips(&conf, "c1"), ["10.10.0.2/29"]); // .1 is the gateway
    assert_eq!(add_ips(&conf, "c2"), ["10.10.0.3/29"]);
    del(&conf, "c1");
    // Round-robin: the freed .2 is not reused until the walk wraps.
    assert_eq!(add_ips(&conf, "c3"), ["10.10.0.4/29"]);
    assert_eq!(add_ips(&conf, "c4"), ["10.10.0.5/29"]);
    assert_eq!(add_ips(&conf, "c5"), ["10.10.0.6/29"]);
    assert_eq!(add_ips(&conf, "c6"), ["10.10.0.2/29"]);
    let leases = leases(&t.net_dir("rr"));
    assert_eq!(leases["10.10.0.2"], "c6\r\neth0");
    assert_eq!(std::fs::read_to_string(t.net_dir("rr").join("last_reserved_ip.0")).unwrap(), "10.10.0.2");
}

#[test]
fn exhausted_range_set_is_code_110_and_status_50() {
    let t = TestDir::new("full");
    let conf = t.conf("full", json!({"subnet":"10.11.0.0/30"})); // one usable address
    let status = |conf: &Value| Ipam.status(&ctx("STATUS", "", "", conf, ""));
    status(&conf).unwrap();
    assert_eq!(add_ips(&conf, "c1"), ["10.11.0.2/30"]);
    let e = add(&conf, "c2").unwrap_err();
    assert_eq!(e.code, Code::Other(CODE_EXHAUSTED));
    assert_eq!(e.msg, "no IP addresses available in range set 0: 10.11.0.1-10.11.0.2");
    let e = status(&conf).unwrap_err();
    assert_eq!(e.code, Code::Unavailable);
    assert!(e.msg.contains("range set 0"), "{e}");
    del(&conf, "c1");
    status(&conf).unwrap();

    // Through the binary: the error object carries code 110.
    add_ips(&conf, "c1");
    let (ok, v) = run_json(BIN, "ADD", "c2", "eth0", &conf, "");
    assert!(!ok);
    assert_eq!(v["code"], 110);
    let (ok, v) = run_json(BIN, "STATUS", "", "", &conf, "");
    assert!(!ok);
    assert_eq!(v["code"], 50);
}

#[test]
fn status_50_when_data_dir_is_not_writable() {
    let t = TestDir::new("ro");
    let file = t.data_dir.join("a-file");
    std::fs::write(&file, "x").unwrap();
    let mut conf = t.conf("ro", json!({"subnet":"10.12.0.0/24"}));
    conf["ipam"]["dataDir"] = json!(file.join("below").to_str().unwrap());
    let e = Ipam.status(&ctx("STATUS", "", "", &conf, "")).unwrap_err();
    assert_eq!(e.code, Code::Unavailable);
    assert!(e.msg.contains("not writable"), "{e}");
}

#[test]
fn requested_ip_via_cni_args_args_and_runtime_config() {
    let t = TestDir::new("req");
    let base = t.conf("req", json!({"ranges":[[{"subnet":"10.13.0.0/24"}]]}));

    let r = Ipam.add(&ctx("ADD", "a1", "eth0", &base, "IgnoreUnknown=1;IP=10.13.0.50")).unwrap();
    assert_eq!(r.ips[0].address.to_string(), "10.13.0.50/24");

    let mut c = base.clone();
    c["args"] = json!({"cni":{"ips":["10.13.0.51"]}});
    assert_eq!(add_ips(&c, "a2"), ["10.13.0.51/24"]);

    let mut c = base.clone();
    c["runtimeConfig"] = json!({"ips":["10.13.0.52/24"]});
    assert_eq!(add_ips(&c, "a3"), ["10.13.0.52/24"]);

    // Taken by someone else.
    let e = Ipam.add(&ctx("ADD", "a4", "eth0", &base, "IP=10.13.0.50")).unwrap_err();
    assert_eq!(e.code, Code::InvalidConfig);
    assert!(e.msg.contains("10.13.0.50 is not available"), "{e}");
    // Outside every range.
    let e = Ipam.add(&ctx("ADD", "a4", "eth0", &base, "IP=192.168.1.1")).unwrap_err();
    assert_eq!(e.code, Code::InvalidConfig);
    assert!(e.msg.contains("not in any configured range"), "{e}");
    // The failed attempts left nothing behind.
    assert_eq!(leases(&t.net_dir("req")).len(), 3);

    // Comma-separated CNI_ARGS for a dual-stack config, via the binary.
    let dual = t.conf("req2", json!({"ranges":[[{"subnet":"10.14.0.0/24"}],[{"subnet":"fd14::/64"}]]}));
    let (ok, v) = run_json(BIN, "ADD", "a5", "eth0", &dual, "IP=10.14.0.9,fd14::9");
    assert!(ok, "{v}");
    assert_eq!(addresses(&v), ["10.14.0.9/24", "fd14::9/64"]);
}

#[test]
fn idempotent_re_add_and_del_twice() {
    let t = TestDir::new("idem");
    let conf = t.conf("idem", json!({"ranges":[[{"subnet":"10.15.0.0/24"}]]}));
    let first = add_ips(&conf, "c1");
    add_ips(&conf, "c2");
    assert_eq!(add_ips(&conf, "c1"), first, "re-ADD must return the same lease");
    assert_eq!(leases(&t.net_dir("idem")).len(), 2);
    // Same container, other interface: a second lease.
    let other = Ipam.add(&ctx("ADD", "c1", "net1", &conf, "")).unwrap().ips[0].address.to_string();
    assert_ne!(other, first[0]);
    del(&conf, "c1");
    del(&conf, "c1");
    // DEL of something never added, even for a network never used.
    del(&conf, "never");
    let fresh = t.conf("unused", json!({"subnet":"10.16.0.0/24"}));
    del(&fresh, "never");
    let left = leases(&t.net_dir("idem"));
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(left.values().any(|v| v == "c1\r\nnet1"));
    // DEL needs no netns and no valid ranges.
    let mut broken = conf.clone();
    broken["ipam"]["ranges"] = json!([[{"subnet":"bogus"}]]);
    let (ok, v) = run_json(BIN, "DEL", "c2", "eth0", &broken, "");
    assert!(ok, "{v}");
    assert_eq!(leases(&t.net_dir("idem")).len(), 1);
}

#[test]
fn dual_stack_gets_one_address_per_range_set() {
    let t = TestDir::new("dual");
    let conf = t.conf(
        "dual",
        json!({"ranges":[
            [{"subnet":"10.17.0.0/24","rangeStart":"10.17.0.100","rangeEnd":"10.17.0.101"},
             {"subnet":"10.17.1.0/24"}],
            [{"subnet":"fd17::/64","gateway":"fd17::ffff"}]
        ],
        "routes":[{"dst":"0.0.0.0/0"},{"dst":"::/0","gw":"fd17::ffff"}]}),
    );
    let r = add(&conf, "c1").unwrap();
    let ips: Vec<String> = r.ips.iter().map(|c| c.address.to_string()).collect();
    assert_eq!(ips, ["10.17.0.100/24", "fd17::1/64"]);
    assert_eq!(r.ips[0].gateway.unwrap().to_string(), "10.17.0.1");
    assert_eq!(r.ips[1].gateway.unwrap().to_string(), "fd17::ffff");
    assert!(r.interfaces.is_empty());
    assert!(r.ips.iter().all(|c| c.interface.is_none()));
    assert_eq!(r.routes.len(), 2);
    assert_eq!(add_ips(&conf, "c2"), ["10.17.0.101/24", "fd17::2/64"]);
    // The first range is used up: the set continues in the second one.
    assert_eq!(add_ips(&conf, "c3"), ["10.17.1.2/24", "fd17::3/64"]);
    let dir = t.net_dir("dual");
    assert!(dir.join("last_reserved_ip.0").exists() && dir.join("last_reserved_ip.1").exists());
    del(&conf, "c2");
    assert_eq!(leases(&dir).len(), 4);
}

#[test]
fn result_shape_routes_dns_and_versions() {
    let t = TestDir::new("shape");
    let resolv = t.data_dir.join("resolv.conf");
    std::fs::write(&resolv, "nameserver 10.0.0.53\nsearch svc.local local\noptions ndots:5\ndomain local\n").unwrap();
    let mut conf = t.conf(
        "shape",
        json!({"subnet":"10.18.0.0/24","routes":[{"dst":"0.0.0.0/0","gw":"10.18.0.254"}],
               "resolvConf": resolv.to_str().unwrap()}),
    );
    let (ok, v) = run_json(BIN, "ADD", "c1", "eth0", &conf, "");
    assert!(ok, "{v}");
    assert_eq!(
        v,
        json!({"cniVersion":"1.1.0",
            "ips":[{"address":"10.18.0.2/24","gateway":"10.18.0.1"}],
            "routes":[{"dst":"0.0.0.0/0","gw":"10.18.0.254"}],
            "dns":{"nameservers":["10.0.0.53"],"domain":"local","search":["svc.local","local"],"options":["ndots:5"]}})
    );
    conf["cniVersion"] = json!("0.4.0");
    let (ok, v) = run_json(BIN, "ADD", "c2", "eth0", &conf, "");
    assert!(ok, "{v}");
    assert_eq!(v["ips"][0]["version"], "4");
    // A missing resolvConf fails before anything is leased.
    conf["ipam"]["resolvConf"] = json!("/nonexistent/resolv.conf");
    let (ok, v) = run_json(BIN, "ADD", "c3", "eth0", &conf, "");
    assert!(!ok);
    assert_eq!(v["code"], 5);
    assert_eq!(leases(&t.net_dir("shape")).len(), 2);
}

#[test]
fn config_errors_are_code_7() {
    let t = TestDir::new("cfg");
    for (ipam, want) in [
        (json!({"ranges":[[{"subnet":"10.19.0.0/24","rangeStart":"10.20.0.1"}]]}), "not in subnet"),
        (json!({"ranges":[[{"subnet":"10.19.0.0/24"}],[{"subnet":"10.19.0.0/16"}]]}), "overlaps"),
        (
            json!({"ranges":[[{"subnet":"10.19.0.0/24","rangeStart":"10.19.0.9","rangeEnd":"10.19.0.2"}]]}),
            "after rangeEnd",
        ),
        (json!({"ranges":[[{"subnet":"10.19.0.0/24x"}]]}), "invalid subnet"),
        (json!({}), "no IP ranges"),
    ] {
        let conf = t.conf("cfg", ipam.clone());
        let (ok, v) = run_json(BIN, "ADD", "c1", "eth0", &conf, "");
        assert!(!ok);
        assert_eq!(v["code"], 7, "{ipam}: {v}");
        assert!(v["msg"].as_str().unwrap().contains(want), "{ipam}: {v}");
    }
}

#[test]
fn check_verb() {
    let t = TestDir::new("check");
    let mut conf = t.conf("check", json!({"ranges":[[{"subnet":"10.21.0.0/24"}],[{"subnet":"fd21::/64"}]]}));
    let r = add(&conf, "c1").unwrap();
    Ipam.check(&ctx("CHECK", "c1", "eth0", &conf, "")).unwrap();
    conf["prevResult"] = r.to_json(cni_core::Version::V1_1_0);
    Ipam.check(&ctx("CHECK", "c1", "eth0", &conf, "")).unwrap();
    let (ok, v) = run_json(BIN, "CHECK", "c1", "eth0", &conf, "");
    assert!(ok, "{v}");
    let e = Ipam.check(&ctx("CHECK", "c2", "eth0", &conf, "")).unwrap_err();
    assert_eq!(e.code, Code::UnknownContainer);
    conf["prevResult"]["ips"][0]["address"] = json!("10.21.0.77/24");
    let e = Ipam.check(&ctx("CHECK", "c1", "eth0", &conf, "")).unwrap_err();
    assert_eq!(e.code, Code::InvalidConfig);
    assert!(e.msg.contains("10.21.0.77"), "{e}");
}

#[test]
fn gc_keeps_valid_attachments_and_frees_the_rest() {
    let t = TestDir::new("gc");
    let mut conf = t.conf("gc", json!({"ranges":[[{"subnet":"10.22.0.0/24"}]]}));
    for id in ["keep1", "drop1", "drop2"] {
        add_ips(&conf, id);
    }
    Ipam.add(&ctx("ADD", "keep1", "net1", &conf, "")).unwrap();
    let dir = t.net_dir("gc");
    std::fs::write(dir.join("10.22.0.200"), "keep1").unwrap(); // old format, valid ID
    std::fs::write(dir.join("10.22.0.201"), "gone").unwrap(); // old format, stale
    std::fs::write(dir.join("10.22.0.202"), "").unwrap(); // crashed host-local writer

    // Without the list GC refuses to touch anything (cni-core refuses it for
    // every plugin: the real binary answers code 7 and releases nothing).
    let (ok, v) = run_json(BIN, "GC", "", "", &conf, "");
    assert!(!ok, "GC without the list must fail: {v}");
    assert_eq!(v["code"], 7, "{v}");
    assert!(v["details"].as_str().unwrap_or_default().contains("cni.dev/valid-attachments"), "{v}");
    assert_eq!(leases(&dir).len(), 7);

    conf["cni.dev/valid-attachments"] = json!([{"containerID":"keep1","ifname":"eth0"}]);
    let (ok, v) = run_json(BIN, "GC", "", "", &conf, "");
    assert!(ok, "{v}");
    let left = leases(&dir);
    assert_eq!(left.values().cloned().collect::<Vec<_>>(), ["keep1\r\neth0", "keep1"], "{left:?}");
    assert!(files_with_prefix(&dir, ".att.drop").is_empty());
    assert!(files_with_prefix(&dir, ".att.keep1@net1").is_empty());
    assert_eq!(files_with_prefix(&dir, ".att.keep1@eth0").len(), 1);

    // The older key spelling and an explicit null list both work.
    conf.as_object_mut().unwrap().remove("cni.dev/valid-attachments");
    conf["cni.dev/attachments"] = Value::Null;
    Ipam.gc(&ctx("GC", "", "", &conf, "")).unwrap();
    assert!(leases(&dir).is_empty());
}
