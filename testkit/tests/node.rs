//! A node namespace with the reference `bridge` + `host-local` plugins (/usr/lib/cni): two
//! containers reach each other and the node over IPv4 and IPv6 as soon as ADD has returned,
//! and DEL takes their host side away. Root.

use std::net::SocketAddr;
use std::time::Duration;

use serde_json::json;
use testkit::node::{ipam, ContainerSpec, Node};
use testkit::plugin::PluginSet;
use testkit::probe::{run_all, EchoServer, Outcome, Probe};
use testkit::util::ip;

#[test]
fn containers_on_a_reference_bridge_in_a_node_namespace() {
    let plugins = PluginSet::new("/usr/lib/cni");
    assert!(
        plugins.find("bridge").is_some(),
        "/usr/lib/cni/bridge is missing (apt-get install containernetworking-plugins)"
    );
    let node = Node::new(plugins).unwrap();
    let list = json!({"cniVersion": "1.0.0", "name": "nodetest", "plugins": [{
        "type": "bridge", "bridge": "nbr0", "isGateway": true,
        "ipam": ipam("host-local", "10.88.0.0/24", "fd88::/64", &node.dir.join("ipam")),
    }]});
    let a = node.add(&list, ContainerSpec::new()).unwrap();
    let b = node.add(&list, ContainerSpec::pod("ns1", "b")).unwrap();
    let _echo = EchoServer::start(b.path(), 8080).unwrap();
    let gw4 = "10.88.0.1".parse().unwrap();
    let mut probes = vec![Probe::ping(a.path(), gw4), Probe::ping(node.path(), a.v4())];
    for dst in [b.v4(), b.v6()] {
        probes.push(Probe::ping(a.path(), dst));
        probes.push(Probe::tcp(a.path(), SocketAddr::new(dst, 8080)));
        probes.push(Probe::udp(node.path(), SocketAddr::new(dst, 8080)));
    }
    let got: Vec<Outcome> = run_all(&probes).into_iter().map(|r| r.unwrap()).collect();
    assert!(got.iter().all(|o| *o == Outcome::Answered), "{got:?}");
    let host = b.host_ifname().expect("host veth in the result");
    node.remove(b).unwrap();
    assert!(ip(&["-n", node.name(), "link", "show", "dev", &host]).is_err(), "{host} survived DEL");
    let got = Probe::ping(a.path(), gw4).wait(Duration::from_secs(2)).run().unwrap();
    assert_eq!(got, Outcome::Answered);
}
