//! Any policy file: parsing never panics, an error always names the file, and what parses can
//! be evaluated for any endpoint without panicking, and compiles for a few synthetic endpoints
//! (bridged, routed, without a host interface) into tables that validate and whose netlink
//! messages build (a rule the kernel would refuse is a compiler bug: the bad file must have
//! been refused by the parser instead).
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use linux_net::nft::{TableState, Transaction};
use policy::model::{Direction, Endpoint};
use policy::{evaluate, Error, Packet};

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else { return };
    let set = match policy::parse_str(Path::new("fuzz.yaml"), text) {
        Ok(set) => set,
        Err(Error::File { file, .. }) => {
            assert_eq!(file, Path::new("fuzz.yaml"));
            return;
        }
        Err(e) => panic!("not a file error: {e}"),
    };
    let eps = [
        Endpoint {
            name: "a".into(),
            namespace: "default".into(),
            labels: [("app".to_string(), "web".to_string())].into(),
            addrs: vec!["10.0.0.1".parse().unwrap(), "fd00::1".parse().unwrap()],
            host_ifname: Some("veth0123456789a".into()),
            bridged: true,
            remote: None,
        },
        Endpoint {
            name: "b".into(),
            namespace: "prod".into(),
            labels: Default::default(),
            addrs: vec!["10.0.0.2".parse().unwrap()],
            host_ifname: Some("cali1".into()),
            bridged: false,
            remote: None,
        },
        Endpoint {
            name: "c".into(),
            namespace: "prod".into(),
            labels: [("app".to_string(), "db".to_string()), ("tier".to_string(), "x".to_string())].into(),
            addrs: vec!["fd00::3".parse().unwrap()],
            ..Endpoint::default()
        },
    ];
    let compiled = policy::compile::compile(&set, &eps);
    for t in &compiled.tables {
        t.validate().unwrap_or_else(|e| panic!("table {:?} does not validate: {e}", t.table));
        TableState::replace(t, &mut Transaction::new()).unwrap_or_else(|e| panic!("table {:?}: {e}", t.table));
    }
    let pkts = [
        Packet::tcp("10.0.0.2".parse().unwrap(), 1000, "10.0.0.1".parse().unwrap(), 80),
        Packet::udp("192.0.2.1".parse().unwrap(), 53, "10.0.0.1".parse().unwrap(), 8000),
        Packet::icmp("fd00::2".parse().unwrap(), "fd00::1".parse().unwrap(), 128, 0),
    ];
    for p in &pkts {
        for dir in [Direction::Ingress, Direction::Egress] {
            let _ = evaluate(&set, &eps, &eps[0], dir, p);
        }
    }
});
