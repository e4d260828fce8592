//! `link::ensure_bridge` against the running kernel, in a private network
//! namespace (named with the pid; a Drop guard deletes it even when an
//! assertion fails): the ioctl fast path for an existing bridge must give
//! exactly what the netlink lookup gives, and every state it cannot vouch
//! for (down, not promiscuous, not a bridge, gone and made again) must get
//! the full treatment. Needs root and `ip`.

use std::path::PathBuf;
use std::process::Command;

use linux_net::link::{self, BridgeSpec};
use linux_net::netns::NetNs;

struct Ns(String);

impl Ns {
    fn new(tag: &str) -> Ns {
        let ns = Ns(format!("lnbr{}{tag}", std::process::id()));
        let _ = Command::new("ip").args(["netns", "del", &ns.0]).output();
        ip(&["netns", "add", &ns.0]);
        ns
    }

    fn open(&self) -> NetNs {
        NetNs::open(&PathBuf::from(format!("/run/netns/{}", self.0))).expect("open netns")
    }

    fn ip(&self, args: &[&str]) {
        let mut all = vec!["-n", &self.0];
        all.extend_from_slice(args);
        ip(&all);
    }
}

impl Drop for Ns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("exec ip");
    assert!(out.status.success(), "ip {args:?}: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn an_existing_bridge_is_found_with_its_current_index_and_state_is_repaired() {
    let ns = Ns::new("a");
    let mut nl = ns.open().netlink().expect("netlink in netns");
    let spec = BridgeSpec { name: "br-fast", ..Default::default() };

    // Created by the first call, found (fast path) by the second: same index as RTM_GETLINK's.
    let created = link::ensure_bridge(&mut nl, &spec).expect("create");
    let found = link::ensure_bridge(&mut nl, &spec).expect("find");
    let kernel = link::get(&mut nl, "br-fast").expect("get").expect("bridge exists");
    assert_eq!(found.index, kernel.index);
    assert_eq!(created.index, kernel.index);
    assert_eq!(found.kind.as_deref(), Some("bridge"));
    assert!(found.up && kernel.up);

    // Down: brought up again.
    ns.ip(&["link", "set", "br-fast", "down"]);
    let l = link::ensure_bridge(&mut nl, &spec).expect("bring up");
    assert!(l.up);
    assert!(link::get(&mut nl, "br-fast").unwrap().unwrap().up, "the bridge is up again");

    // Promiscuous mode asked for and missing: set.
    let promisc = BridgeSpec { promisc: true, ..spec.clone() };
    link::ensure_bridge(&mut nl, &promisc).expect("promisc");
    assert!(link::get(&mut nl, "br-fast").unwrap().unwrap().promisc);
    assert!(link::ensure_bridge(&mut nl, &promisc).expect("promisc, found").promisc);

    // Deleted and made again under the same name: the new index, never the old one.
    ns.ip(&["link", "del", "br-fast"]);
    ns.ip(&["link", "add", "br-fast", "type", "bridge"]);
    ns.ip(&["link", "set", "br-fast", "up"]);
    let again = link::ensure_bridge(&mut nl, &spec).expect("recreated");
    let kernel = link::get(&mut nl, "br-fast").unwrap().unwrap();
    assert_ne!(again.index, found.index);
    assert_eq!(again.index, kernel.index);
}

#[test]
fn a_link_of_that_name_that_is_not_a_bridge_is_refused() {
    let ns = Ns::new("b");
    let mut nl = ns.open().netlink().expect("netlink in netns");
    ns.ip(&["link", "add", "br-fake", "type", "veth", "peer", "name", "br-fake-peer"]);
    ns.ip(&["link", "set", "br-fake", "up"]);
    let e = link::ensure_bridge(&mut nl, &BridgeSpec { name: "br-fake", ..Default::default() })
        .expect_err("a veth is no bridge");
    assert!(e.to_string().contains("it is a veth"), "{e}");
}

/// The bridge's MAC as the kernel reports it now.
fn mac_of(ns: &Ns, dev: &str) -> String {
    let out = Command::new("ip").args(["-n", &ns.0, "-br", "link", "show", dev]).output().expect("exec ip");
    assert!(out.status.success(), "ip link show {dev}: {}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace().nth(2).unwrap_or_else(|| panic!("no MAC in {text:?}")).to_string()
}

#[test]
fn the_bridge_keeps_its_mac_when_ports_come_and_go() {
    // A bridge whose address the kernel assigned takes its lowest port's MAC: each port added
    // or removed could then change the gateway's MAC under the containers' neighbour caches.
    let ns = Ns::new("m");
    let mut nl = ns.open().netlink().expect("netlink in netns");
    link::ensure_bridge(&mut nl, &BridgeSpec { name: "br-mac", ..Default::default() }).expect("create");
    let mac = mac_of(&ns, "br-mac");
    // The lowest unicast MAC there is, then one above it, as ports.
    for (port, peer, port_mac) in [("pm0", "pm0p", "02:00:00:00:00:01"), ("pm1", "pm1p", "02:00:00:00:00:02")] {
        ns.ip(&["link", "add", port, "address", port_mac, "type", "veth", "peer", "name", peer]);
        ns.ip(&["link", "set", port, "master", "br-mac", "up"]);
        assert_eq!(mac_of(&ns, "br-mac"), mac, "the bridge's MAC changed when {port} ({port_mac}) joined");
    }
    ns.ip(&["link", "del", "pm0"]);
    assert_eq!(mac_of(&ns, "br-mac"), mac, "the bridge's MAC changed when a port left");
}
