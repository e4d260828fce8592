//! Policy with real traffic: containers in namespaces on a bridge in a node namespace,
//! `cni-policy` chained after the network plugin, policy files as users write them, and TCP,
//! UDP and ICMP/ICMPv6 probes whose answers (or silence) are the kernel's verdict. Every Drop
//! case is next to a Pass case over the same path, so silence means the policy dropped it.
//! Root; needs cni-bridge built next to cni-policy and /usr/lib/cni/{bridge,host-local}.

mod world;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use testkit::probe::{Probe, Stream};
use world::{answered, eventually, expect, probe, Network, Want, World, P};
use Want::{Drop, Pass};

/// db (namespace prod) takes TCP 5432, UDP 9000 and echo requests from web only; web may only
/// talk to db and to the node (egress); other is unrestricted.
const WEB_DB: &str = r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: db-from-web, namespace: prod}
spec:
  podSelector: {matchLabels: {app: db}}
  ingress:
  - from: [{podSelector: {matchLabels: {app: web}}}]
    ports: [{protocol: TCP, port: 5432}, {protocol: UDP, port: 9000}]
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: db-ping, namespace: prod}
spec:
  selector: app == 'db'
  ingress:
  - {action: Allow, protocol: ICMP, icmp: {type: 8}, source: {selector: app == 'web'}}
  - {action: Allow, protocol: ICMPv6, icmp: {type: 128}, source: {selector: app == 'web'}}
---
apiVersion: projectcalico.org/v3
kind: NetworkPolicy
metadata: {name: web-out, namespace: prod}
spec:
  selector: app == 'web'
  types: [Egress]
  egress:
  - {action: Allow, destination: {selector: app == 'db'}}
  - {action: Allow, destination: {nets: [10.66.0.1/32, 'fd66::1/128']}}
"#;

#[test]
fn allowed_flows_pass_and_denied_are_dropped_both_directions_ipv4_and_ipv6() {
    let mut w = World::new(Network::Bridge);
    w.write_policy("web-db.yaml", WEB_DB);
    let web = w.add("prod", "web", &[("app", "web")]);
    let db = w.add("prod", "db", &[("app", "db")]);
    let other = w.add("prod", "other", &[("app", "other")]);
    let node = w.node.path().to_path_buf();
    w.serve(&node);
    for (fam, web_a, db_a, other_a, gw) in
        [("v4", web.v4(), db.v4(), other.v4(), w.gw4()), ("v6", web.v6(), db.v6(), other.v6(), w.gw6())]
    {
        expect(
            &format!("{fam}: ingress of db, egress of web, replies, the unselected"),
            &[
                ("web->db tcp 5432", probe(web.path(), db_a, P::Tcp(5432)), Pass),
                ("web->db udp 9000", probe(web.path(), db_a, P::Udp(9000)), Pass),
                ("web->db ping", probe(web.path(), db_a, P::Ping), Pass),
                ("web->db tcp 80 (port not allowed)", probe(web.path(), db_a, P::Tcp(80)), Drop),
                ("web->db udp 5432 (protocol not allowed)", probe(web.path(), db_a, P::Udp(5432)), Drop),
                ("other->db tcp 5432 (peer not allowed)", probe(other.path(), db_a, P::Tcp(5432)), Drop),
                ("other->db ping", probe(other.path(), db_a, P::Ping), Drop),
                ("node->db tcp 5432 (not a pod)", probe(&node, db_a, P::Tcp(5432)), Drop),
                ("web->other tcp 80 (web egress)", probe(web.path(), other_a, P::Tcp(80)), Drop),
                ("web->other ping (web egress)", probe(web.path(), other_a, P::Ping), Drop),
                ("web->node tcp 80 (egress to the gateway)", probe(web.path(), gw, P::Tcp(80)), Pass),
                ("other->web tcp 80 (web ingress unrestricted)", probe(other.path(), web_a, P::Tcp(80)), Pass),
                ("db->web udp 443 (db egress unrestricted)", probe(db.path(), web_a, P::Udp(443)), Pass),
                ("db->other tcp 80", probe(db.path(), other_a, P::Tcp(80)), Pass),
                ("node->other ping", probe(&node, other_a, P::Ping), Pass),
                ("other->node tcp 443", probe(other.path(), gw, P::Tcp(443)), Pass),
            ],
        );
    }
}

/// Tiers, order, Pass and Log. Tier `security` (order 100) passes web's traffic on to the
/// default tier and denies other's; in the default tier, `deny-9000` (order 10) comes before
/// `allow-tcp` (order 20); `audit` (order 5) logs TCP to 7777.
fn tiered(deny_order: u32) -> String {
    format!(
        r#"
apiVersion: projectcalico.org/v3
kind: Tier
metadata: {{name: security}}
spec: {{order: 100}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: security.db}}
spec:
  tier: security
  selector: app == 'db'
  ingress:
  - {{action: Pass, source: {{selector: app == 'web'}}}}
  - {{action: Deny, source: {{selector: app == 'other'}}}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: audit}}
spec:
  order: 5
  selector: app == 'db'
  ingress:
  - {{action: Log, protocol: TCP, destination: {{ports: [7777]}}}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: deny-9000}}
spec:
  order: {deny_order}
  selector: app == 'db'
  ingress:
  - {{action: Deny, protocol: TCP, destination: {{ports: [9000]}}}}
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {{name: allow-tcp}}
spec:
  order: 20
  selector: app == 'db'
  ingress:
  - {{action: Allow, protocol: TCP}}
"#
    )
}

#[test]
fn calico_tiers_order_pass_and_log() {
    let mut w = World::new(Network::Bridge);
    w.write_policy("tiers.yaml", &tiered(10));
    let web = w.add("prod", "web", &[("app", "web")]);
    let db = w.add("prod", "db", &[("app", "db")]);
    let other = w.add("dev", "other", &[("app", "other")]);
    let third = w.add("dev", "third", &[("app", "third")]);
    for db_a in [db.v4(), db.v6()] {
        expect(
            &format!("deny-9000 before allow-tcp, to {db_a}"),
            &[
                ("web->db 80: passed by security, allowed by allow-tcp", probe(web.path(), db_a, P::Tcp(80)), Pass),
                ("web->db 9000: passed, denied by deny-9000 (order 10)", probe(web.path(), db_a, P::Tcp(9000)), Drop),
                ("other->db 80: denied in the security tier", probe(other.path(), db_a, P::Tcp(80)), Drop),
                ("third->db 80: end of the security tier", probe(third.path(), db_a, P::Tcp(80)), Drop),
                ("web->db udp 80: passed, end of the default tier", probe(web.path(), db_a, P::Udp(80)), Drop),
            ],
        );
    }
    // Order decides: deny-9000 after allow-tcp no longer denies anything. The edit reaches the
    // kernel with the next change of the node (here a container's ADD).
    w.write_policy("tiers.yaml", &tiered(30));
    let _late = w.add_quiet("dev", "late", &[("app", "late")]);
    expect(
        "allow-tcp (order 20) before deny-9000 (order 30)",
        &[
            ("web->db 9000", probe(web.path(), db.v4(), P::Tcp(9000)), Pass),
            ("web->db 9000 v6", probe(web.path(), db.v6(), P::Tcp(9000)), Pass),
            ("other->db 9000", probe(other.path(), db.v4(), P::Tcp(9000)), Drop),
        ],
    );

    // Log: the log statement of a non-initial namespace reaches the kernel log only with
    // net.netfilter.nf_log_all_netns=1 (this VM and CI: readable dmesg).
    let _log = LogAllNetns::on();
    let logged = |src: &Path, port: u16, sport: u16| {
        let p = Probe {
            kind: testkit::probe::ProbeKind::Tcp { dst: SocketAddr::new(db.v4(), port), src_port: sport },
            ..Probe::tcp(src, SocketAddr::new(db.v4(), port))
        };
        assert!(answered(&p), "web->db {port} from port {sport} must pass");
        format!("SPT={sport} DPT={port} ")
    };
    // Source ports no line of the kernel log names yet (it keeps earlier runs' lines).
    let log = dmesg();
    let start = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().subsec_nanos();
    let sport = (0..40_000u32)
        .map(|i| 20_000 + ((start + 2 * i) % 40_000) as u16)
        .find(|p| !log.contains(&format!("SPT={p} ")) && !log.contains(&format!("SPT={} ", p + 1)))
        .expect("a source port the kernel log does not name");
    let hit = logged(web.path(), 7777, sport);
    let miss = logged(web.path(), 80, sport + 1);
    eventually(Duration::from_secs(5), &format!("kernel log line with {hit:?}"), || dmesg().contains(&hit));
    // The line names the policy and the rule: compile.rs's prefix `cnp <in|out> <policy> #<rule>`
    // (audit's first ingress rule), followed by the kernel's fields.
    let log = dmesg();
    let line = log.lines().find(|l| l.contains(&hit)).expect("the logged line");
    let fields = line.find(" IN=").map(|i| &line[..i]).unwrap_or_else(|| panic!("no IN= in {line:?}"));
    assert!(fields.ends_with("cnp in audit #0"), "the log line names another policy or rule: {line:?}");
    assert!(!dmesg().contains(&miss), "TCP to 80 matches no Log rule but was logged");
}

fn dmesg() -> String {
    testkit::util::run("dmesg", &[]).unwrap_or_else(|e| panic!("dmesg: {e}"))
}

/// Turns net.netfilter.nf_log_all_netns on and back to what it was.
struct LogAllNetns(String);

impl LogAllNetns {
    fn on() -> LogAllNetns {
        let p = "/proc/sys/net/netfilter/nf_log_all_netns";
        let was = std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{p}: {e}"));
        std::fs::write(p, "1").unwrap_or_else(|e| panic!("{p}: {e}"));
        LogAllNetns(was.trim().to_string())
    }
}

impl std::ops::Drop for LogAllNetns {
    fn drop(&mut self) {
        let _ = std::fs::write("/proc/sys/net/netfilter/nf_log_all_netns", &self.0);
    }
}

#[test]
fn kubernetes_ip_block_except_and_end_port() {
    let mut w = World::new(Network::Bridge);
    let web = w.add("prod", "web", &[("app", "web")]);
    let db = w.add("prod", "db", &[("app", "db")]);
    let other = w.add("prod", "other", &[("app", "other")]);
    let yaml = format!(
        r#"
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {{name: web-egress, namespace: prod}}
spec:
  podSelector: {{matchLabels: {{app: web}}}}
  policyTypes: [Egress]
  egress:
  - to:
    - ipBlock: {{cidr: 10.66.0.0/24, except: [{o4}/32]}}
    - ipBlock: {{cidr: 'fd66::/64', except: ['{o6}/128']}}
    ports: [{{protocol: TCP, port: 8000, endPort: 8010}}]
"#,
        o4 = other.v4(),
        o6 = other.v6()
    );
    w.write_policy("web-egress.yaml", &yaml);
    let _trigger = w.add_quiet("prod", "trigger", &[("app", "trigger")]);
    for (db_a, other_a) in [(db.v4(), other.v4()), (db.v6(), other.v6())] {
        expect(
            &format!("ipBlock with except, port 8000-8010, to {db_a}"),
            &[
                ("web->db 8005 (in range, in cidr)", probe(web.path(), db_a, P::Tcp(8005)), Pass),
                ("web->db 8011 (past endPort)", probe(web.path(), db_a, P::Tcp(8011)), Drop),
                ("web->db 7999 (before port)", probe(web.path(), db_a, P::Tcp(7999)), Drop),
                ("web->db udp 8005 (protocol)", probe(web.path(), db_a, P::Udp(8005)), Drop),
                ("web->other 8005 (excepted)", probe(web.path(), other_a, P::Tcp(8005)), Drop),
                ("db->other 8005 (db not selected)", probe(db.path(), other_a, P::Tcp(8005)), Pass),
            ],
        );
    }
}

#[test]
fn a_new_container_is_covered_before_its_first_packet() {
    let mut w = World::new(Network::Bridge);
    w.write_policy("web-db.yaml", WEB_DB);
    let web = w.add("prod", "web", &[("app", "web")]);
    let other = w.add("prod", "other", &[("app", "other")]);
    // A new db: its own ingress policy is in force when ADD returns. The first packet each
    // peer sends it is the probe (ADD only waited for the links' carrier, without traffic).
    let db = w.add("prod", "db", &[("app", "db")]);
    expect(
        "first packets to a new db",
        &[
            ("other->db 5432", probe(other.path(), db.v4(), P::Tcp(5432)), Drop),
            ("other->db 5432 v6", probe(other.path(), db.v6(), P::Tcp(5432)), Drop),
            ("web->db 5432", probe(web.path(), db.v4(), P::Tcp(5432)), Pass),
            ("web->db 5432 v6", probe(web.path(), db.v6(), P::Tcp(5432)), Pass),
        ],
    );
    // A new web: its address is in db's allowed set, and its egress is restricted, at once.
    let web2 = w.add("prod", "web2", &[("app", "web")]);
    expect(
        "first packets of a new web",
        &[
            ("web2->db 5432", probe(web2.path(), db.v4(), P::Tcp(5432)), Pass),
            ("web2->other 80 (egress)", probe(web2.path(), other.v6(), P::Tcp(80)), Drop),
            ("web2->db ping v6", probe(web2.path(), db.v6(), P::Ping), Pass),
        ],
    );
    // DEL forgets it.
    let addr = web2.v4();
    w.del(web2);
    let st = w.status();
    assert!(
        !st["endpoints"].as_array().unwrap().iter().any(|e| e["addrs"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a == &addr.to_string())),
        "DEL left {addr} in the registry: {st}"
    );
}

#[test]
fn a_relabel_changes_the_verdict_at_once() {
    let mut w = World::new(Network::Bridge);
    w.write_policy("web-db.yaml", WEB_DB);
    let db = w.add("prod", "db", &[("app", "db")]);
    let x = w.add("prod", "x", &[("app", "other"), ("team", "a")]);
    let y = w.add("prod", "y", &[("app", "other")]);
    expect(
        "before",
        &[
            ("x->db 5432", probe(x.path(), db.v4(), P::Tcp(5432)), Drop),
            ("x->db 80", probe(x.path(), db.v6(), P::Tcp(80)), Drop),
            ("db->x 80 (control)", probe(db.path(), x.v4(), P::Tcp(80)), Pass),
        ],
    );
    // x becomes a web: allowed into db, and its own egress now limited to db and the node.
    w.label(&x, &["app=web"]);
    expect(
        "x relabelled app=web",
        &[
            ("x->db 5432", probe(x.path(), db.v4(), P::Tcp(5432)), Pass),
            ("x->db 5432 v6", probe(x.path(), db.v6(), P::Tcp(5432)), Pass),
            ("x->db 80 (port)", probe(x.path(), db.v4(), P::Tcp(80)), Drop),
        ],
    );
    let labels = &w.status()["endpoints"].as_array().unwrap().iter().find(|e| e["containerID"] == x.id()).unwrap()
        ["labels"]
        .clone();
    assert_eq!(labels["app"], "web", "{labels}");
    assert_eq!(labels["team"], "a", "{labels}");
    // db loses its label: no policy selects it any more, everyone may reach it.
    w.label(&db, &["app-"]);
    expect(
        "db unlabelled",
        &[
            ("y->db 80", probe(y.path(), db.v4(), P::Tcp(80)), Pass),
            ("x->db 80 (x is still a web: egress to a non-db)", probe(x.path(), db.v4(), P::Tcp(80)), Drop),
        ],
    );
}

#[test]
fn a_policy_edit_does_not_cut_an_established_tcp_stream() {
    let mut w = World::new(Network::Bridge);
    w.write_policy("web-db.yaml", WEB_DB);
    let web = w.add("prod", "web", &[("app", "web")]);
    let db = w.add("prod", "db", &[("app", "db")]);
    w.watch();
    wait_applied(&w, 1);
    let streams = [
        Stream::start(web.path(), SocketAddr::new(db.v4(), 5432)).unwrap(),
        Stream::start(web.path(), SocketAddr::new(db.v6(), 5432)).unwrap(),
    ];
    for s in &streams {
        s.advance(50, Duration::from_secs(5)).unwrap();
    }
    // New connections to 5432 are no longer allowed; the established ones stay.
    w.write_policy("web-db.yaml", &WEB_DB.replace("port: 5432", "port: 5433"));
    wait_applied(&w, 2);
    expect(
        "after the edit",
        &[
            ("web->db 5432 new", probe(web.path(), db.v4(), P::Tcp(5432)), Drop),
            ("web->db 5433 new", probe(web.path(), db.v4(), P::Tcp(5433)), Pass),
        ],
    );
    for s in &streams {
        s.advance(50, Duration::from_secs(5)).unwrap();
    }
    // And a policy added for it changes nothing either.
    w.write_policy("more.yaml", &tiered(10));
    wait_applied(&w, 3);
    for s in streams {
        s.advance(50, Duration::from_secs(5)).unwrap();
        let st = s.stop().unwrap();
        eprintln!("stream: {} round trips, longest {:?}", st.round_trips, st.longest_round_trip);
    }
}

/// Whether a line of the daemon's log says the policy in force stays (with the plugin's
/// last-good set the daemon applies that set again: "applying the last policy set that loaded";
/// without one, "unchanged").
fn kept(line: &str) -> bool {
    line.contains("unchanged") || line.contains("stays in force") || line.contains("last policy set that loaded")
}

/// Waits until the daemon has logged `n` applies.
fn wait_applied(w: &World, n: usize) {
    let end = std::time::Instant::now() + Duration::from_secs(10);
    while w.watch_log().matches("policy applied").count() < n {
        assert!(
            std::time::Instant::now() < end,
            "not within 10 s: {n} applies by cni-policy watch; its log:\n{}",
            w.watch_log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    if w.watch_log().contains("changed without an inotify event") {
        eprintln!("warning: cni-policy watch applied a change only on its resync tick:\n{}", w.watch_log());
    }
}

#[test]
fn a_bad_file_leaves_the_old_policy_in_force() {
    let mut w = World::new(Network::Bridge);
    w.write_policy("web-db.yaml", WEB_DB);
    let web = w.add("prod", "web", &[("app", "web")]);
    let db = w.add("prod", "db", &[("app", "db")]);
    let other = w.add("prod", "other", &[("app", "other")]);
    w.watch();
    wait_applied(&w, 1);
    let in_force = |what: &str| {
        expect(
            what,
            &[
                ("web->db 5432", probe(web.path(), db.v4(), P::Tcp(5432)), Pass),
                ("other->db 5432", probe(other.path(), db.v4(), P::Tcp(5432)), Drop),
                ("other->db 5432 v6", probe(other.path(), db.v6(), P::Tcp(5432)), Drop),
            ],
        )
    };
    in_force("before");
    // A typo in the policy file (an unknown field): rejected with its name and line, the old
    // policy stays.
    let typo = WEB_DB.replace("podSelector: {matchLabels: {app: db}}", "podSelectr: {matchLabels: {app: db}}");
    w.write_policy("web-db.yaml", &typo);
    eventually(Duration::from_secs(10), "the daemon reports web-db.yaml", || {
        w.watch_log().lines().any(|l| l.contains("web-db.yaml:") && kept(l))
    });
    in_force("after a bad edit");
    let check = w.cli(&["check", w.policy_dir.join("web-db.yaml").to_str().unwrap()]);
    assert!(
        !check.success() && (check.stdout.clone() + &check.stderr).contains("podSelectr"),
        "cni-policy check must name the field: {}",
        check.describe()
    );
    // Put right again, then a second file that is not YAML at all: same.
    w.write_policy("web-db.yaml", WEB_DB);
    wait_applied(&w, 2);
    w.write_policy("zz-broken.yaml", "apiVersion: [unclosed\n");
    eventually(Duration::from_secs(10), "the daemon reports zz-broken.yaml", || {
        w.watch_log().lines().any(|l| l.contains("zz-broken.yaml:") && kept(l))
    });
    in_force("after a broken file");
    // Fixed: the new content applies (db now takes other instead of web).
    w.remove_policy("zz-broken.yaml");
    w.write_policy("web-db.yaml", &WEB_DB.replace("{app: web}}}]", "{app: other}}}]"));
    // A reload of a bad directory also ends in `policy applied` (the last good set, again), so
    // the count of those lines cannot tell this apply: wait for its effect.
    eventually(Duration::from_secs(10), "the fixed files applied", || {
        answered(&probe(other.path(), db.v4(), P::Tcp(5432)))
    });
    expect(
        "after the fix",
        &[
            ("other->db 5432", probe(other.path(), db.v4(), P::Tcp(5432)), Pass),
            ("web->db 5432", probe(web.path(), db.v4(), P::Tcp(5432)), Drop),
            ("other->db 5432 v6", probe(other.path(), db.v6(), P::Tcp(5432)), Pass),
        ],
    );
}

/// `cni-policy label` while a file of the directory does not parse: the labels change and the
/// last policy set that loaded (kept by the plugin's ADD) applies to the new labels; the
/// error names the bad file. Without this, a typo would freeze every relabel.
#[test]
fn a_relabel_with_a_bad_file_applies_the_last_good_policy() {
    let mut w = World::new(Network::Bridge);
    w.write_policy("web-db.yaml", WEB_DB);
    let web = w.add("prod", "web", &[("app", "web")]);
    let db = w.add("prod", "db", &[("app", "db")]);
    let x = w.add("prod", "x", &[("app", "other")]);
    expect(
        "before",
        &[
            ("web->db 5432", probe(web.path(), db.v4(), P::Tcp(5432)), Pass),
            ("x->db 5432", probe(x.path(), db.v4(), P::Tcp(5432)), Drop),
        ],
    );
    w.write_policy("zz-broken.yaml", "apiVersion: [unclosed\n");
    // x becomes a web under the last good set (WEB_DB): let into db, on 5432 only.
    let sd = w.state_dir.display().to_string();
    let out = w.cli(&["label", "--state-dir", &sd, x.id(), "app=web"]);
    assert!(out.success(), "label with a bad file in the directory: {}", out.describe());
    assert!(out.stderr.contains("zz-broken.yaml"), "label must name the bad file: {}", out.describe());
    expect(
        "x relabelled app=web, the last good set in force",
        &[
            ("x->db 5432", probe(x.path(), db.v4(), P::Tcp(5432)), Pass),
            ("x->db 5432 v6", probe(x.path(), db.v6(), P::Tcp(5432)), Pass),
            ("x->db 80 (port)", probe(x.path(), db.v4(), P::Tcp(80)), Drop),
            ("web->db 5432", probe(web.path(), db.v4(), P::Tcp(5432)), Pass),
        ],
    );
    // And web stops being one: dropped at once, the bad file still there.
    w.label(&web, &["app=other"]);
    expect(
        "web relabelled app=other",
        &[
            ("web->db 5432", probe(web.path(), db.v4(), P::Tcp(5432)), Drop),
            ("x->db 5432", probe(x.path(), db.v4(), P::Tcp(5432)), Pass),
        ],
    );
    // status lists the endpoints and, as the directory does not parse, exits 1 naming the file.
    let out = w.cli(&["status", "--state-dir", &sd, "--json"]);
    assert!(!out.success() && out.stderr.contains("zz-broken.yaml"), "status: {}", out.describe());
    let st = out.json().unwrap_or_else(|| panic!("status is not JSON: {}", out.stdout));
    let labels = |c: &testkit::node::Container| {
        st["endpoints"].as_array().unwrap().iter().find(|e| e["containerID"] == c.id()).unwrap()["labels"]["app"]
            .clone()
    };
    assert_eq!(labels(&x), "web", "{st}");
    assert_eq!(labels(&web), "other", "{st}");
}

#[test]
fn chained_after_the_reference_bridge() {
    let mut w = World::new(Network::ReferenceBridge);
    w.write_policy("web-db.yaml", WEB_DB);
    let web = w.add("prod", "web", &[("app", "web")]);
    let db = w.add("prod", "db", &[("app", "db")]);
    let other = w.add("prod", "other", &[("app", "other")]);
    for (db_a, other_a) in [(db.v4(), other.v4()), (db.v6(), other.v6())] {
        expect(
            &format!("reference bridge, to {db_a}"),
            &[
                ("web->db 5432", probe(web.path(), db_a, P::Tcp(5432)), Pass),
                ("web->db ping", probe(web.path(), db_a, P::Ping), Pass),
                ("other->db 5432", probe(other.path(), db_a, P::Tcp(5432)), Drop),
                ("web->other 80 (egress)", probe(web.path(), other_a, P::Tcp(80)), Drop),
                ("other->web 80", probe(other.path(), web.v4(), P::Tcp(80)), Pass),
            ],
        );
    }
    // CHECK passes for a protected container, DEL removes it.
    w.node.verb(&db, "CHECK").unwrap_or_else(|e| panic!("{e}"));
    w.del(other);
}

#[test]
fn routed_veths_without_a_bridge() {
    let mut w = World::new(Network::ReferencePtp);
    w.write_policy("web-db.yaml", WEB_DB);
    let web = w.add("prod", "web", &[("app", "web")]);
    let db = w.add("prod", "db", &[("app", "db")]);
    let other = w.add("prod", "other", &[("app", "other")]);
    let node = w.node.path().to_path_buf();
    w.serve(&node);
    let st = w.status();
    assert!(
        st["endpoints"].as_array().unwrap().iter().all(|e| e["bridged"] == false && e["hostIfname"].is_string()),
        "routed endpoints: {st}"
    );
    for (fam, db_a, other_a, gw) in [("v4", db.v4(), other.v4(), w.gw4()), ("v6", db.v6(), other.v6(), w.gw6())] {
        expect(
            &format!("{fam}: routed through the node"),
            &[
                ("web->db 5432", probe(web.path(), db_a, P::Tcp(5432)), Pass),
                ("web->db udp 9000", probe(web.path(), db_a, P::Udp(9000)), Pass),
                ("web->db ping", probe(web.path(), db_a, P::Ping), Pass),
                ("other->db 5432", probe(other.path(), db_a, P::Tcp(5432)), Drop),
                ("node->db 5432", probe(&node, db_a, P::Tcp(5432)), Drop),
                ("web->other 80 (egress)", probe(web.path(), other_a, P::Tcp(80)), Drop),
                ("web->node 443", probe(web.path(), gw, P::Tcp(443)), Pass),
                ("other->db 80 from an unrestricted peer", probe(other.path(), db_a, P::Tcp(80)), Drop),
                ("db->other 80", probe(db.path(), other_a, P::Tcp(80)), Pass),
            ],
        );
    }
}

/// A container that takes another endpoint's address gets nothing through with it: web may
/// send UDP 9000 to db, other may not, and other sending as web is dropped by the anti-spoof
/// chain of its host interface (bridge port or routed veth), before any policy.
fn forged_source_is_dropped(net: Network) {
    let mut w = World::new(net);
    w.write_policy("web-db.yaml", WEB_DB);
    let web = w.add("prod", "web", &[("app", "web")]);
    let db = w.add("prod", "db", &[("app", "db")]);
    let other = w.add("prod", "other", &[("app", "other")]);
    let ifname = other.spec.ifname.clone();
    for (web_a, db_a, len) in [(web.v4(), db.v4(), "32"), (web.v6(), db.v6(), "128")] {
        // A legitimate packet first (db's policy drops it), so other knows db's MAC and the
        // forged one is the only new thing.
        assert!(!answered(&probe(other.path(), db_a, P::Udp(9000))), "other->db udp 9000 must be dropped");
        let dst = SocketAddr::new(db_a, 9000);
        let sink = w.echo(db.path(), 9000);
        // Control: from web itself, db receives it.
        let real = SocketAddr::new(web_a, 41_001);
        testkit::probe::udp_send_from(web.path(), real, dst).unwrap();
        assert!(sink.udp_received_from(real, Duration::from_secs(2)), "{net:?}: web->db udp 9000 did not arrive");
        // Forged: web's address on other's interface.
        let (ok, out) = other.ns.exec(&["ip", "addr", "add", &format!("{web_a}/{len}"), "dev", &ifname, "nodad"]);
        assert!(ok, "add {web_a} to other: {out}");
        let forged = SocketAddr::new(web_a, 41_002);
        testkit::probe::udp_send_from(other.path(), forged, dst).unwrap();
        assert!(
            !sink.udp_received_from(forged, testkit::probe::DROP_WAIT),
            "{net:?}: a datagram from other claiming {web_a} reached db"
        );
    }
}

#[test]
fn a_forged_source_address_is_dropped_on_a_bridge_port() {
    forged_source_is_dropped(Network::Bridge);
}

#[test]
fn a_forged_source_address_is_dropped_on_a_routed_veth() {
    forged_source_is_dropped(Network::ReferencePtp);
}
