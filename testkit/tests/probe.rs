//! The probes against a real path: two namespaces joined by a veth pair, IPv4 and IPv6; an
//! nftables drop rule in the receiving namespace turns answered probes into silent ones. Root.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use testkit::netns::Netns;
use testkit::probe::{run_all, wait_carrier, EchoServer, Outcome, Probe, Stream};
use testkit::util::{ip, run, uniq};

struct Pair {
    a: Netns,
    b: Netns,
}

fn pair() -> Pair {
    let (a, b) = (Netns::new().expect("netns a"), Netns::new().expect("netns b"));
    let n = uniq();
    let (la, lb) = (format!("pra{n}"), format!("prb{n}"));
    ip(&["-n", a.name(), "link", "add", &la, "type", "veth", "peer", "name", &lb, "netns", b.name()]).unwrap();
    for (ns, l, v4, v6) in [(&a, &la, "10.255.77.1/24", "fd00:77::1/64"), (&b, &lb, "10.255.77.2/24", "fd00:77::2/64")]
    {
        ip(&["-n", ns.name(), "addr", "add", v4, "dev", l]).unwrap();
        ip(&["-n", ns.name(), "addr", "add", v6, "dev", l, "nodad"]).unwrap();
        ip(&["-n", ns.name(), "link", "set", l, "up"]).unwrap();
    }
    wait_carrier(a.name(), &la, Duration::from_secs(5)).unwrap();
    wait_carrier(b.name(), &lb, Duration::from_secs(5)).unwrap();
    Pair { a, b }
}

fn p(ns: &Netns) -> &Path {
    Path::new(ns.path())
}

#[test]
fn probes_are_answered_on_an_open_path_and_silent_behind_a_drop() {
    let pr = pair();
    let echo = EchoServer::start(p(&pr.b), 7001).unwrap();
    let (b4, b6): (IpAddr, IpAddr) = ("10.255.77.2".parse().unwrap(), "fd00:77::2".parse().unwrap());
    let probes = |port: u16| {
        let mut v = Vec::new();
        for dst in [b4, b6] {
            v.push(Probe::tcp(p(&pr.a), SocketAddr::new(dst, port)));
            v.push(Probe::udp(p(&pr.a), SocketAddr::new(dst, port)));
            v.push(Probe::ping(p(&pr.a), dst));
        }
        v.push(Probe {
            kind: testkit::probe::ProbeKind::Icmp { dst: b4, icmp_type: 13, code: 0 },
            ..Probe::ping(p(&pr.a), b4)
        });
        v
    };
    let got: Vec<Outcome> = run_all(&probes(7001)).into_iter().map(|r| r.unwrap()).collect();
    assert!(got.iter().all(|o| *o == Outcome::Answered), "open path: {got:?}");
    // A closed port: TCP is reset, UDP gets port unreachable.
    let got: Vec<Outcome> = run_all(&probes(7002)).into_iter().map(|r| r.unwrap()).collect();
    assert_eq!(got[0], Outcome::Refused, "{got:?}");
    assert_eq!(got[1], Outcome::Refused, "{got:?}");

    // Conntrack in a namespace starts with the first ruleset that uses it: before the stream.
    let nft = |rules: &str| {
        let file = std::env::temp_dir().join(format!("probe-rules-{}.nft", uniq()));
        std::fs::write(&file, rules).unwrap();
        let r = run("ip", &["netns", "exec", pr.b.name(), "nft", "-f", file.to_str().unwrap()]);
        let _ = std::fs::remove_file(&file);
        r.unwrap();
    };
    nft("table inet probe_t {\n chain in {\n type filter hook input priority 0\n ct state established accept\n }\n}\n");
    let stream = Stream::start(p(&pr.a), SocketAddr::new(b6, 7001)).unwrap();
    stream.advance(20, Duration::from_secs(5)).unwrap();
    nft("add rule inet probe_t in tcp dport 7001 drop\nadd rule inet probe_t in udp dport 7001 drop\n\
         add rule inet probe_t in icmp type { echo-request, timestamp-request } drop\n\
         add rule inet probe_t in icmpv6 type echo-request drop\n");
    let got: Vec<Outcome> = run_all(&probes(7001)).into_iter().map(|r| r.unwrap()).collect();
    assert!(got.iter().all(|o| *o == Outcome::Silent), "behind a drop: {got:?}");
    // The receiver's record: a datagram that arrived, and one the drop rule kept away.
    let a4: IpAddr = "10.255.77.1".parse().unwrap();
    let (early, late) = (SocketAddr::new(a4, 41_001), SocketAddr::new(a4, 41_002));
    let echo3 = EchoServer::start(p(&pr.b), 7003).unwrap();
    testkit::probe::udp_send_from(p(&pr.a), late, SocketAddr::new(b4, 7003)).unwrap();
    assert!(echo3.udp_received_from(late, Duration::from_secs(2)), "7003 is open");
    testkit::probe::udp_send_from(p(&pr.a), early, SocketAddr::new(b4, 7001)).unwrap();
    assert!(!echo.udp_received_from(early, Duration::from_millis(300)), "7001 is dropped");
    // A drop in the sender's own output path: the send fails with EPERM, the probe is silent.
    let out = "table inet probe_o {\n chain out {\n type filter hook output priority 0\n udp dport 7003 drop\n }\n}\n";
    let file = std::env::temp_dir().join(format!("probe-rules-{}.nft", uniq()));
    std::fs::write(&file, out).unwrap();
    let r = run("ip", &["netns", "exec", pr.a.name(), "nft", "-f", file.to_str().unwrap()]);
    let _ = std::fs::remove_file(&file);
    r.unwrap();
    assert_eq!(Probe::udp(p(&pr.a), SocketAddr::new(b4, 7003)).run().unwrap(), Outcome::Silent);
    // The established stream is untouched by the new rules.
    stream.advance(20, Duration::from_secs(5)).unwrap();
    let stats = stream.stop().unwrap();
    assert!(stats.round_trips >= 40, "{stats:?}");
}
