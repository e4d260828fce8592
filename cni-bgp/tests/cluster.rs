//! The cluster-wide BGP config and node registry against a real etcd:
//! registration, lease expiry, the typed watch, a bad config written behind
//! the CLI's back, and the `cni-bgp` binary's admin commands (exit codes,
//! tables, --json, concurrent writers).

use std::process::{Command, Output};
use std::sync::Arc;
use std::time::{Duration, Instant};

use cni_bgp::cluster::{BgpStore, ClusterBgpConfig, ClusterEvent, NodeRecord};
use cni_bgp::Error;
use etcd_kv::testing::EtcdServer;
use etcd_kv::EtcdConfig;
use tokio::sync::mpsc::Receiver;

fn store(etcd: &EtcdServer, prefix: &str) -> Arc<BgpStore> {
    Arc::new(BgpStore::new(&EtcdConfig { prefix: prefix.into(), ..etcd.etcd_config() }).unwrap())
}

fn node(name: &str, last: u8) -> NodeRecord {
    NodeRecord {
        name: name.into(),
        ipv4: [10, 99, 0, last].into(),
        ipv6: None,
        as_number: None,
        route_reflector: false,
        cluster_id: None,
    }
}

/// The next event, within `within`.
async fn next(rx: &mut Receiver<ClusterEvent>, within: Duration) -> ClusterEvent {
    tokio::time::timeout(within, rx.recv()).await.expect("no watch event in time").expect("watch ended")
}

fn cli(etcd: &EtcdServer, prefix: &str, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cni-bgp"))
        .args(args)
        .args(["--etcd-endpoints", &etcd.endpoint(), "--etcd-prefix", prefix])
        .env_remove("CNI_COMMAND")
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(o.status.success(), "{o:?}");
    String::from_utf8(o.stdout.clone()).unwrap()
}

fn failed(o: &Output, code: i32) -> String {
    assert_eq!(o.status.code(), Some(code), "{o:?}");
    assert!(o.stdout.is_empty(), "{o:?}");
    String::from_utf8(o.stderr.clone()).unwrap()
}

#[tokio::test]
async fn nodes_join_change_and_leave_when_their_agent_stops_refreshing() {
    let etcd = EtcdServer::start().expect("start etcd");
    let s = store(&etcd, "/t-bgp-nodes");
    let (_, _, rev) = s.nodes().await.unwrap();
    let mut rx = s.watch(rev);

    let n1 = node("n1", 1);
    let reg1 = s.register(&n1, Duration::from_secs(2)).await.unwrap();
    assert_eq!(next(&mut rx, Duration::from_secs(5)).await, ClusterEvent::NodeJoined(n1.clone()));
    assert_eq!(s.nodes().await.unwrap().0, std::slice::from_ref(&n1));

    // A second node, kept alive by refreshes, and a change of n1's record.
    let n2 = NodeRecord { ipv6: Some("fd00::2".parse().unwrap()), as_number: Some(65002), ..node("n2", 2) };
    let mut reg2 = s.register(&n2, Duration::from_secs(2)).await.unwrap();
    assert_eq!(next(&mut rx, Duration::from_secs(5)).await, ClusterEvent::NodeJoined(n2.clone()));
    let n1b = NodeRecord { route_reflector: true, cluster_id: Some([1, 1, 1, 1].into()), ..n1.clone() };
    let reg1b = s.register(&n1b, Duration::from_secs(2)).await.unwrap();
    assert_ne!(reg1b.lease, reg1.lease);
    assert_eq!(next(&mut rx, Duration::from_secs(5)).await, ClusterEvent::NodeChanged(n1b.clone()));

    // n1 is not refreshed (its agent died): its key expires, the watch says
    // it left; n2 refreshed every 500 ms stays through the same time.
    let start = Instant::now();
    let left = loop {
        reg2 = s.refresh(&n2, reg2).await.unwrap();
        match tokio::time::timeout(Duration::from_millis(500), rx.recv()).await {
            Ok(Some(ev)) => break ev,
            Ok(None) => panic!("watch ended"),
            Err(_) => assert!(start.elapsed() < Duration::from_secs(15), "n1 never expired"),
        }
    };
    assert_eq!(left, ClusterEvent::NodeLeft("n1".into()));
    assert!(start.elapsed() >= Duration::from_secs(1), "expired too early: {:?}", start.elapsed());
    assert_eq!(s.nodes().await.unwrap().0, std::slice::from_ref(&n2));
    // Once n1 expired, refreshing its old registration registers it again.
    let reg1c = s.refresh(&n1b, reg1b).await.unwrap();
    assert_ne!(reg1c.lease, reg1b.lease);
    assert_eq!(next(&mut rx, Duration::from_secs(5)).await, ClusterEvent::NodeJoined(n1b.clone()));

    // An orderly stop removes the record at once; `nodes` shows what is left.
    s.deregister(reg2).await.unwrap();
    assert_eq!(next(&mut rx, Duration::from_secs(5)).await, ClusterEvent::NodeLeft("n2".into()));
    let table = ok(&cli(&etcd, "/t-bgp-nodes", &["nodes"]));
    assert_eq!(
        table,
        "NODE  IPV4       IPV6  AS         ROUTE REFLECTOR\nn1    10.99.0.1  -     (cluster)  yes, cluster 1.1.1.1\n"
    );
    let json: Vec<NodeRecord> = serde_json::from_str(&ok(&cli(&etcd, "/t-bgp-nodes", &["nodes", "--json"]))).unwrap();
    assert_eq!(json, [n1b]);

    // A record written behind the agents' back that breaks the rules is
    // reported, not taken.
    let o = etcd.etcdctl(&["put", "/t-bgp-nodes/bgp/nodes/bad", r#"{"name":"bad","ipv4":"10.0.0.1","as":0}"#]).unwrap();
    assert!(o.status.success(), "{o:?}");
    match next(&mut rx, Duration::from_secs(5)).await {
        ClusterEvent::NodeRejected { name, error } => {
            assert_eq!(name, "bad");
            assert!(error.contains("bgp/nodes/bad: as: AS 0 is reserved"), "{error}");
        }
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_bad_config_in_etcd_is_rejected_by_the_watch_and_the_running_one_stays() {
    let etcd = EtcdServer::start().expect("start etcd");
    let p = "/t-bgp-config";
    let s = store(&etcd, p);
    let (c, rev) = s.config().await.unwrap();
    assert_eq!(c, ClusterBgpConfig::default());
    let mut rx = s.watch(rev);

    let o = ok(&cli(&etcd, p, &["config", "set", "--as", "65010", "--mesh", "off"]));
    assert!(o.contains("AS                 65010\nNODE-TO-NODE MESH  off\n"), "{o}");
    let want = ClusterBgpConfig { as_number: 65010, node_to_node_mesh: false, ..Default::default() };
    assert_eq!(next(&mut rx, Duration::from_secs(5)).await, ClusterEvent::ConfigChanged(want.clone()));

    // Written with etcdctl, past the CLI's checks: rejected, with the key.
    for (bad, says) in [
        (r#"{"asNumber":0}"#, "asNumber: AS 0 is reserved"),
        (
            r#"{"peers":[{"address":"10.0.0.1","as":65001},{"address":"10.0.0.1","as":65001}]}"#,
            "peers[1]: duplicate peer",
        ),
        (r#"{"peers":[{"address":"10.0.0.x","as":65001}]}"#, "peers[0].address: \"10.0.0.x\" is not an IP address"),
        (r#"{"routeReflectors":[{"node":"a","clusterId":"1.1.1.1"},{"node":"b"}]}"#, "routeReflectors[1].clusterId"),
        ("not json", "bgp/config: expected"),
    ] {
        let o = etcd.etcdctl(&["put", &format!("{p}/bgp/config"), bad]).unwrap();
        assert!(o.status.success(), "{o:?}");
        match next(&mut rx, Duration::from_secs(5)).await {
            ClusterEvent::ConfigRejected { error } => {
                assert!(error.contains(says), "{bad}: {error}");
                assert!(error.ends_with("the running config stays"), "{error}");
            }
            other => panic!("{bad}: {other:?}"),
        }
        // The CLI refuses to show it, naming the key (exit 2: invalid).
        let e = failed(&cli(&etcd, p, &["config", "show"]), 2);
        assert!(e.contains(says), "{e}");
    }
    // A valid config again is applied; deleting the key means the defaults.
    let o = etcd.etcdctl(&["put", &format!("{p}/bgp/config"), &want.to_json()]).unwrap();
    assert!(o.status.success(), "{o:?}");
    assert_eq!(next(&mut rx, Duration::from_secs(5)).await, ClusterEvent::ConfigChanged(want));
    let o = etcd.etcdctl(&["del", &format!("{p}/bgp/config")]).unwrap();
    assert!(o.status.success(), "{o:?}");
    assert_eq!(next(&mut rx, Duration::from_secs(5)).await, ClusterEvent::ConfigChanged(ClusterBgpConfig::default()));
}

#[test]
fn the_cli_edits_the_config_with_exit_codes_for_scripts() {
    let etcd = EtcdServer::start().expect("start etcd");
    let p = "/t-bgp-cli";
    let show = |args: &[&str]| -> ClusterBgpConfig { serde_json::from_str(&ok(&cli(&etcd, p, args))).unwrap() };
    assert_eq!(show(&["config", "show", "--json"]), ClusterBgpConfig::default());

    let c = show(&["peer", "add", "192.0.2.1,65001", "--json"]);
    let c2 = show(&["peer", "add", "192.0.2.1,65001", "--node", "n1", "--json"]);
    assert_eq!(c.peers.len() + 1, c2.peers.len());
    let c = show(&["config", "set", "--route-reflector", "rr1", "--json"]);
    assert_eq!((c.route_reflectors.len(), c.route_reflectors[0].cluster_id), (1, None));
    let table = ok(&cli(&etcd, p, &["config", "show"]));
    assert_eq!(
        table,
        "AS                 64512\nNODE-TO-NODE MESH  on\n\n\
         PEER       AS     NODE\n192.0.2.1  65001  (all)\n192.0.2.1  65001  n1\n\n\
         ROUTE REFLECTOR  CLUSTER ID\nrr1              (router ID)\n"
    );

    // Invalid edits: exit 2, nothing written.
    let e = failed(&cli(&etcd, p, &["peer", "add", "192.0.2.1,65009"]), 2);
    assert!(e.contains("peers[2]: duplicate peer 192.0.2.1"), "{e}");
    let e = failed(&cli(&etcd, p, &["config", "set", "--route-reflector", "rr2"]), 2);
    assert!(e.contains("routeReflectors[0].clusterId: route reflector rr1 needs a cluster ID"), "{e}");
    let e = failed(&cli(&etcd, p, &["peer", "remove", "192.0.2.7"]), 2);
    assert!(e.contains("no peer 192.0.2.7"), "{e}");
    let e = failed(&cli(&etcd, p, &["config", "set", "--as", "0"]), 2);
    assert!(e.contains("asNumber: AS 0 is reserved"), "{e}");
    let e = failed(&cli(&etcd, p, &["peer", "add", "192.0.2.300,65001"]), 2);
    assert!(e.contains("is not an IP address"), "{e}");
    assert_eq!(show(&["config", "show", "--json"]), c);

    // Two reflectors with a shared cluster ID; removing peers by scope.
    let c =
        show(&["config", "set", "--route-reflector", "rr1,10.0.0.1", "--route-reflector", "rr2,10.0.0.1", "--json"]);
    assert_eq!(
        c.route_reflectors.iter().map(|r| r.cluster_id.unwrap().to_string()).collect::<Vec<_>>(),
        ["10.0.0.1"; 2]
    );
    let c = show(&["peer", "remove", "192.0.2.1", "--node", "n1", "--json"]);
    assert_eq!(c.peers.len(), 1);
    assert_eq!(c.peers[0].node, None);
    let c = show(&["config", "set", "--no-route-reflector", "rr2", "--no-route-reflector", "rr1", "--json"]);
    assert!(c.route_reflectors.is_empty());

    // etcd unreachable: exit 1, with the endpoint in the message.
    let o = Command::new(env!("CARGO_BIN_EXE_cni-bgp"))
        .args(["config", "show", "--etcd-endpoints", "http://127.0.0.1:1"])
        .output()
        .unwrap();
    let e = failed(&o, 1);
    assert!(e.contains("etcd unavailable at http://127.0.0.1:1"), "{e}");
    let o = Command::new(env!("CARGO_BIN_EXE_cni-bgp")).args(["completions", "bash"]).output().unwrap();
    assert!(ok(&o).contains("peer"), "{o:?}");
    // A usage error: exit 2.
    let o = Command::new(env!("CARGO_BIN_EXE_cni-bgp")).args(["peer", "add"]).output().unwrap();
    failed(&o, 2);
}

#[test]
fn concurrent_peer_adds_from_several_cli_processes_all_land() {
    let etcd = EtcdServer::start().expect("start etcd");
    let p = "/t-bgp-race";
    const N: usize = 8;
    let children: Vec<_> = (0..N)
        .map(|i| {
            Command::new(env!("CARGO_BIN_EXE_cni-bgp"))
                .args(["peer", "add", &format!("198.51.100.{},{}", i + 1, 65100 + i), "--json"])
                .args(["--etcd-endpoints", &etcd.endpoint(), "--etcd-prefix", p])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for c in children {
        ok(&c.wait_with_output().unwrap());
    }
    let c: ClusterBgpConfig = serde_json::from_str(&ok(&cli(&etcd, p, &["config", "show", "--json"]))).unwrap();
    let mut got: Vec<String> = c.peers.iter().map(|p| format!("{},{}", p.address, p.as_number)).collect();
    got.sort();
    let mut want: Vec<String> = (0..N).map(|i| format!("198.51.100.{},{}", i + 1, 65100 + i)).collect();
    want.sort();
    assert_eq!(got, want);
}

#[tokio::test]
async fn the_watch_survives_an_etcd_restart_and_says_resync_after_a_compaction() {
    let mut etcd = EtcdServer::start().expect("start etcd");
    let p = "/t-bgp-restart";
    let s = store(&etcd, p);
    let (_, rev) = s.config().await.unwrap();
    let mut rx = s.watch(rev);
    let set = |n: u32| {
        s.update_config(move |c| {
            c.as_number = n;
            Ok(())
        })
    };
    set(65001).await.unwrap();
    assert!(
        matches!(next(&mut rx, Duration::from_secs(5)).await, ClusterEvent::ConfigChanged(c) if c.as_number == 65001)
    );

    // etcd dies and comes back: the same watch delivers the next change.
    etcd.restart().unwrap();
    // The first call on the old channel may fail as unavailable (the
    // client then builds a new one): the agent retries, so does this.
    let mut tries = 0;
    while let Err(e) = set(65002).await {
        tries += 1;
        assert!(tries < 3 && matches!(&e, Error::Etcd(e) if e.is_unavailable()), "{e}");
    }
    assert!(
        matches!(next(&mut rx, Duration::from_secs(15)).await, ClusterEvent::ConfigChanged(c) if c.as_number == 65002)
    );

    // A watch from a revision etcd compacted away: Resync, then the end.
    let (_, old) = s.config().await.unwrap();
    set(65003).await.unwrap();
    set(65004).await.unwrap();
    let (_, now) = s.config().await.unwrap();
    let o = etcd.etcdctl(&["compact", &now.to_string()]).unwrap();
    assert!(o.status.success(), "{o:?}");
    let mut rx = s.watch(old);
    assert_eq!(next(&mut rx, Duration::from_secs(5)).await, ClusterEvent::Resync);
    assert_eq!(tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.unwrap(), None);
}

#[test]
fn the_cli_speaks_tls_to_etcd_with_the_shared_flags() {
    let etcd = EtcdServer::start_tls().expect("start etcd with TLS");
    let t = etcd.tls_files().unwrap();
    let run = |extra: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_cni-bgp"))
            .args(["peer", "add", "203.0.113.1,65001", "--json", "--etcd-endpoints", &etcd.endpoint()])
            .args(extra)
            .output()
            .unwrap()
    };
    let (ca, cert, key) = (t.ca.to_str().unwrap(), t.client_cert.to_str().unwrap(), t.client_key.to_str().unwrap());
    let c: ClusterBgpConfig =
        serde_json::from_str(&ok(&run(&["--etcd-cafile", ca, "--etcd-certfile", cert, "--etcd-keyfile", key])))
            .unwrap();
    assert_eq!(c.peers.len(), 1);
    // No client certificate: etcd refuses (exit 1). A cert without its key: usage (exit 2).
    failed(&run(&["--etcd-cafile", ca]), 1);
    let e = failed(&run(&["--etcd-cafile", ca, "--etcd-certfile", cert]), 2);
    assert!(e.contains("--etcd-keyfile"), "{e}");
    // TLS files with an http:// endpoint: usage (exit 2).
    let o = Command::new(env!("CARGO_BIN_EXE_cni-bgp"))
        .args(["nodes", "--etcd-endpoints", "http://127.0.0.1:1", "--etcd-cafile", ca])
        .output()
        .unwrap();
    let e = failed(&o, 2);
    assert!(e.contains("is not https://"), "{e}");
}
