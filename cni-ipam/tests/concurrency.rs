//! 24 `cni-ipam` processes ADD at once on one network: all succeed, every
//! address is unique, and the store agrees with what they printed.

mod common;

use std::collections::BTreeSet;

use common::*;
use serde_json::json;

#[test]
fn concurrent_adds_get_unique_addresses() {
    const N: usize = 24;
    let t = TestDir::new("conc");
    let conf = t.conf("conc", json!({"ranges":[[{"subnet":"10.30.0.0/24"}],[{"subnet":"fd30::/120"}]]}));
    let children: Vec<_> = (0..N).map(|i| spawn(BIN, "ADD", &format!("ctr{i}"), "eth0", &conf, "")).collect();
    let mut seen = BTreeSet::new();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "ctr{i}: {}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let addrs = addresses(&v);
        assert_eq!(addrs.len(), 2, "{v}");
        for a in addrs {
            let ip = ip_of(&a);
            assert!(seen.insert(ip.clone()), "{ip} handed out twice");
            assert_eq!(leases(&t.net_dir("conc"))[&ip], format!("ctr{i}\r\neth0"), "store disagrees for {ip}");
        }
    }
    assert_eq!(seen.len(), 2 * N);
    assert_eq!(leases(&t.net_dir("conc")).len(), 2 * N);
    assert!(files_with_prefix(&t.net_dir("conc"), ".tmp.").is_empty());
}
