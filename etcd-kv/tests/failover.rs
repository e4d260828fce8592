//! `EtcdClient` against a real three-member etcd: a dead or leaderless
//! member is skipped, writes are never sent twice, and a client survives
//! the whole cluster going away and coming back.

use std::time::{Duration, Instant};

use etcd_kv::testing::EtcdCluster;
use etcd_kv::{not_delivered, EtcdClient, EtcdConfig, Retry, Timeouts};

const PLUGIN: Timeouts =
    Timeouts { connect: Duration::from_millis(500), request: Duration::from_secs(1), keep_alive: None };

async fn put(c: &EtcdClient, key: &str, value: &str) -> etcd_kv::Result<()> {
    let (k, v) = (key.to_string(), value.to_string());
    c.call("put", Retry::Once, move |mut cl| {
        let (k, v) = (k.clone(), v.clone());
        async move { cl.put(k, v, None).await }
    })
    .await
    .map(|_| ())
}

async fn get(c: &EtcdClient, key: &str) -> etcd_kv::Result<Option<String>> {
    let k = key.to_string();
    let r = c
        .call("get", Retry::Idempotent, move |mut cl| {
            let k = k.clone();
            async move { cl.get(k, None).await }
        })
        .await?;
    Ok(r.kvs().first().map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
}

#[tokio::test(flavor = "current_thread")]
async fn a_dead_member_is_skipped_by_every_call_and_writes_land_once() {
    let mut cluster = EtcdCluster::start(3).expect("three-member etcd");
    let mut cfg = cluster.etcd_config();
    // The member killed is a follower, listed first: the cluster keeps its
    // leader, so no election stands between the dead member and the calls
    // (calls during an election are the etcd_cluster tests' subject).
    let leader = cluster.wait_leader(Duration::from_secs(10)).expect("a leader");
    let victim = (leader + 1) % 3;
    cfg.endpoints.swap(0, victim);

    // The raw error of a refused connection is recognised as "not sent".
    cluster.kill(victim);
    let dead = EtcdConfig { endpoints: vec![cfg.endpoints[0].clone()], ..cfg.clone() };
    let mut raw = etcd_kv::etcd_client::Client::connect(&dead.endpoints, None).await.unwrap();
    let e = raw.get("k", None).await.unwrap_err();
    assert!(not_delivered(&e), "a refused connection must count as not delivered: {e:?}");

    // First endpoint dead: every call of a fresh client (as each plugin
    // process is) and of a long-lived one succeeds at once.
    let long = EtcdClient::new(&cfg, PLUGIN).unwrap();
    for i in 0..30 {
        let fresh = EtcdClient::new(&cfg, PLUGIN).unwrap();
        let t = Instant::now();
        put(&fresh, &format!("/t/{i}"), "v").await.unwrap_or_else(|e| panic!("put {i}: {e}"));
        assert!(t.elapsed() < Duration::from_millis(500), "put {i} took {:?}", t.elapsed());
        assert_eq!(get(&long, &format!("/t/{i}")).await.unwrap().as_deref(), Some("v"));
    }
    let out = cluster.etcdctl(&["get", "/t/", "--prefix", "--keys-only"]).unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).lines().filter(|l| !l.is_empty()).count(), 30);

    // Every member down: Unavailable naming every endpoint, at once.
    for i in 0..3 {
        cluster.kill(i);
    }
    let t = Instant::now();
    let e = put(&long, "/t/x", "v").await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    for ep in &cfg.endpoints {
        assert!(e.to_string().contains(ep.as_str()), "{e} does not name {ep}");
    }
    assert!(t.elapsed() < Duration::from_secs(1), "{:?}", t.elapsed());

    // Back: the same client works again, nothing restarted.
    cluster.start_all().unwrap();
    cluster.wait_leader(Duration::from_secs(10)).unwrap();
    put(&long, "/t/back", "v").await.unwrap();
    assert_eq!(get(&long, "/t/back").await.unwrap().as_deref(), Some("v"));
}
