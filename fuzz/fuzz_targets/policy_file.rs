//! Any policy file: parsing never panics, an error always names the file, and what parses can
//! be evaluated for any endpoint without panicking.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
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
            ..Endpoint::default()
        },
        Endpoint {
            name: "b".into(),
            namespace: "prod".into(),
            labels: Default::default(),
            addrs: vec!["10.0.0.2".parse().unwrap()],
            ..Endpoint::default()
        },
    ];
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
