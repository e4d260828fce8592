//! Flannel-compatible subnet leases against a real etcd (one per test, on
//! free ports, killed on drop): `subnet_lease` and the subnet file.

use std::collections::HashSet;
use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use etcd_kv::testing::EtcdServer;
use ipnetwork::Ipv4Network;
use serde_json::{json, Value};
use subnet_lease::subnet_file::{read_subnet_file, write_subnet_file, SubnetFile};
use subnet_lease::{
    subnet_key, Error, EtcdConfig, Event, Lease, LeaseAttrs, NetworkConfig, SubnetManager, Watcher, REQUEST_TIMEOUT,
};

const CONFIG_KEY: &str = "/coreos.com/network/config";
const PREFIX: &str = "/coreos.com/network/subnets/";
const HOUR: Duration = Duration::from_secs(3600);

fn attrs(last: u8) -> LeaseAttrs {
    LeaseAttrs::new(
        Ipv4Addr::new(192, 168, 0, last),
        "vxlan",
        json!({"VNI": 1, "VtepMAC": format!("0e:00:00:00:00:{last:02x}")}),
    )
}

fn net(s: &str) -> Ipv4Network {
    s.parse().unwrap()
}

/// etcd with `config` at the default prefix, and a manager on it.
async fn setup(config: &str) -> (EtcdServer, SubnetManager, NetworkConfig) {
    let etcd = EtcdServer::start().expect("start etcd");
    etcd.etcdctl(&["put", CONFIG_KEY, config]).unwrap();
    let sm = SubnetManager::connect(&etcd.etcd_config()).await.unwrap();
    let cfg = sm.network_config().await.unwrap();
    (etcd, sm, cfg)
}

async fn raw(etcd: &EtcdServer) -> etcd_client::Client {
    etcd_client::Client::connect([etcd.endpoint()], None).await.unwrap()
}

async fn next_event(w: &mut Watcher, within: Duration) -> Event {
    tokio::time::timeout(within, w.next()).await.expect("no watch event in time").expect("watch ended")
}

/// Waits for an event matching `want`, skipping others (e.g. a Resync).
async fn wait_for(w: &mut Watcher, within: Duration, want: impl Fn(&Event) -> bool) -> Event {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let ev = next_event(w, left).await;
        if want(&ev) {
            return ev;
        }
    }
}

fn subnets(leases: &[Lease]) -> HashSet<Ipv4Network> {
    leases.iter().map(|l| l.subnet).collect()
}

#[tokio::test]
async fn unreachable_etcd_missing_and_bad_config() {
    // Nothing listens on a fresh free port.
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = EtcdConfig { endpoints: vec![format!("http://127.0.0.1:{port}")], ..EtcdConfig::default() };
    let t = Instant::now();
    let e = SubnetManager::connect(&cfg).await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    assert!(e.to_string().starts_with(&format!("etcd unavailable at http://127.0.0.1:{port}")), "{e}");
    assert!(t.elapsed() < Duration::from_secs(6), "took {:?}", t.elapsed());

    let bad = EtcdConfig { cert_file: Some("/nonexistent.pem".into()), ..cfg.clone() };
    let e = SubnetManager::connect(&bad).await.unwrap_err();
    assert!(matches!(e, Error::Etcd(etcd_kv::Error::InvalidSettings(_))) && !e.is_unavailable(), "{e}");

    let etcd = EtcdServer::start().unwrap();
    let sm = SubnetManager::connect(&etcd.etcd_config()).await.unwrap();
    let e = sm.network_config().await.unwrap_err();
    assert!(matches!(e, Error::ConfigNotFound { .. }), "{e}");
    assert!(e.to_string().contains("etcdctl put /coreos.com/network/config"), "{e}");
    etcd.etcdctl(&["put", CONFIG_KEY, r#"{"Network":"10.0.0.0/16","Backend":{"Type":"udp"}}"#]).unwrap();
    let e = sm.network_config().await.unwrap_err();
    assert_eq!(e.to_string(), "invalid network config: Backend.Type \"udp\" is not supported: use vxlan or host-gw");
    // The admin path validates before writing.
    assert!(sm.set_network_config(br#"{"Network":"10.0.0.0/30"}"#).await.is_err());
    let c = sm.set_network_config(br#"{"Network":"10.7.0.0/16"}"#).await.unwrap();
    assert_eq!(sm.network_config().await.unwrap(), c);

    // A custom prefix.
    let cfg2 = EtcdConfig { prefix: "/my/net/".into(), ..etcd.etcd_config() };
    let sm2 = SubnetManager::connect(&cfg2).await.unwrap();
    assert_eq!(sm2.config_key(), "/my/net/config");
    assert_eq!(sm2.subnets_prefix(), "/my/net/subnets/");
}

#[tokio::test]
async fn acquire_writes_flannel_record_and_reacquire_keeps_subnet() {
    let (etcd, sm, cfg) = setup(r#"{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}"#).await;
    let mut raw = raw(&etcd).await;

    let a = attrs(1);
    let lease = sm.acquire(&cfg, &a, None, Duration::from_secs(60)).await.unwrap();
    assert!(cfg.is_compatible(lease.subnet, None), "{}", lease.subnet);
    assert_ne!(lease.etcd_lease, 0);
    assert_eq!(lease.expires_in, Some(Duration::from_secs(60)));

    // The record, read back raw: Flannel's key and JSON field names.
    let key = format!("{PREFIX}{}", subnet_key(lease.subnet, None));
    assert_eq!(key, format!("{PREFIX}{}-24", lease.subnet.ip()));
    let resp = raw.get(key.as_str(), None).await.unwrap();
    let kv = &resp.kvs()[0];
    let v: Value = serde_json::from_slice(kv.value()).unwrap();
    assert_eq!(
        v,
        json!({"PublicIP":"192.168.0.1","PublicIPv6":null,"BackendType":"vxlan",
               "BackendData":{"VNI":1,"VtepMAC":"0e:00:00:00:00:01"}})
    );
    let mut names: Vec<&String> = v.as_object().unwrap().keys().collect();
    names.sort();
    assert_eq!(names, ["BackendData", "BackendType", "PublicIP", "PublicIPv6"]);
    assert_eq!(kv.lease(), lease.etcd_lease);
    assert_eq!(kv.mod_revision(), lease.revision);
    let ttl = raw.lease_time_to_live(lease.etcd_lease, None).await.unwrap();
    assert!((55..=60).contains(&ttl.granted_ttl()) && (55..=60).contains(&ttl.ttl()), "{ttl:?}");

    // leases() sees it with its time left.
    let (all, rev) = sm.leases().await.unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!((all[0].subnet, &all[0].attrs, all[0].etcd_lease), (lease.subnet, &a, lease.etcd_lease));
    assert!(all[0].expires_in.unwrap() > Duration::from_secs(55));
    assert!(rev >= lease.revision);

    // Agent restart (new manager, new backend data): same subnet, attrs
    // updated, a new etcd lease, the old one revoked.
    let sm2 = SubnetManager::connect(&etcd.etcd_config()).await.unwrap();
    let mut a2 = a.clone();
    a2.backend_data = json!({"VNI": 1, "VtepMAC": "0e:00:00:00:00:99"});
    let again = sm2.acquire(&cfg, &a2, Some(net("10.5.77.0/24")), HOUR).await.unwrap();
    assert_eq!(again.subnet, lease.subnet);
    assert_ne!(again.etcd_lease, lease.etcd_lease);
    let resp = raw.get(key.as_str(), None).await.unwrap();
    assert_eq!(resp.kvs()[0].lease(), again.etcd_lease);
    assert_eq!(
        serde_json::from_slice::<Value>(resp.kvs()[0].value()).unwrap()["BackendData"]["VtepMAC"],
        "0e:00:00:00:00:99"
    );
    assert_eq!(raw.lease_time_to_live(lease.etcd_lease, None).await.unwrap().ttl(), -1, "old etcd lease revoked");
    assert!(matches!(sm.renew(&lease).await, Err(Error::LeaseLost { .. })));
    sm2.renew(&again).await.unwrap();

    // `previous` is honoured for a new host when free and in range...
    let b = sm.acquire(&cfg, &attrs(2), Some(net("10.5.77.0/24")), HOUR).await.unwrap();
    assert_eq!(b.subnet, net("10.5.77.0/24"));
    // ...not when taken or outside SubnetMin..SubnetMax.
    let c = sm.acquire(&cfg, &attrs(3), Some(net("10.5.77.0/24")), HOUR).await.unwrap();
    assert!(c.subnet != b.subnet && c.subnet != lease.subnet);
    let d = sm.acquire(&cfg, &attrs(4), Some(net("10.5.0.0/24")), HOUR).await.unwrap();
    assert_ne!(d.subnet, net("10.5.0.0/24"));
    assert_eq!(subnets(&sm.leases().await.unwrap().0).len(), 4);

    // A lease that no longer fits the config is deleted and replaced.
    etcd.etcdctl(&["put", CONFIG_KEY, r#"{"Network":"10.5.0.0/16","SubnetLen":25}"#]).unwrap();
    let cfg25 = sm.network_config().await.unwrap();
    let e = sm.acquire(&cfg25, &attrs(4), None, HOUR).await.unwrap();
    assert_eq!(e.subnet.prefix(), 25);
    let left = sm.leases().await.unwrap().0;
    assert!(!subnets(&left).contains(&d.subnet));
    assert_eq!(left.iter().filter(|l| l.attrs.public_ip == attrs(4).public_ip).count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_hosts_race_for_twenty_subnets() {
    let (etcd, _sm, cfg) =
        setup(r#"{"Network":"10.10.0.0/16","SubnetLen":24,"SubnetMin":"10.10.1.0","SubnetMax":"10.10.20.0"}"#).await;
    assert_eq!(cfg.pool_size(), 20);
    let mut managers = Vec::new();
    for _ in 0..30 {
        managers.push(Arc::new(SubnetManager::connect(&etcd.etcd_config()).await.unwrap()));
    }
    let t = Instant::now();
    let mut set = tokio::task::JoinSet::new();
    for (i, sm) in managers.iter().enumerate() {
        let (sm, cfg) = (sm.clone(), cfg.clone());
        set.spawn(async move { sm.acquire(&cfg, &attrs(10 + i as u8), None, HOUR).await });
    }
    let results = set.join_all().await;
    let elapsed = t.elapsed();
    let won: Vec<&Lease> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let lost: Vec<&Error> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert_eq!(won.len(), 20, "errors: {lost:?}");
    assert_eq!(lost.len(), 10);
    for e in &lost {
        assert!(matches!(e, Error::PoolExhausted { total: 20, .. }), "{e}");
        assert_eq!(
            e.to_string(),
            "subnet pool exhausted: all 20 /24 subnets of Network 10.10.0.0/16 between SubnetMin 10.10.1.0 and \
             SubnetMax 10.10.20.0 are leased; remove stale hosts or widen the range"
        );
    }
    for (i, a) in won.iter().enumerate() {
        assert!(cfg.is_compatible(a.subnet, None));
        for b in &won[i + 1..] {
            assert!(!a.subnet.contains(b.subnet.network()) && !b.subnet.contains(a.subnet.network()));
        }
    }
    let (stored, _) = managers[0].leases().await.unwrap();
    assert_eq!(stored.len(), 20);
    assert_eq!(subnets(&stored), won.iter().map(|l| l.subnet).collect());
    // Winners' etcd leases are the ones attached; losers left none behind.
    let mut raw = raw(&etcd).await;
    let live = raw.leases().await.unwrap();
    assert_eq!(live.leases().len(), 20, "unused etcd leases revoked");
    eprintln!("30 acquirers over 20 subnets: {elapsed:?}");
}

#[tokio::test]
async fn lease_expires_without_renew_and_renew_keeps_it_alive() {
    let (_etcd, sm, cfg) = setup(r#"{"Network":"10.20.0.0/16"}"#).await;
    let ttl = Duration::from_secs(2);
    let idle = sm.acquire(&cfg, &attrs(1), None, ttl).await.unwrap();
    let kept = sm.acquire(&cfg, &attrs(2), None, ttl).await.unwrap();
    let (_, rev) = sm.leases().await.unwrap();
    let mut w = sm.watch(rev);

    let t = Instant::now();
    let mut renewals = 0;
    let mut removed_after = None;
    // Renew for at least 4.5 s (2x the TTL), and until the expiry was seen.
    while (t.elapsed() < Duration::from_millis(4500) || removed_after.is_none())
        && t.elapsed() < Duration::from_secs(10)
    {
        sm.renew(&kept).await.unwrap();
        renewals += 1;
        while let Some(ev) = w.try_next() {
            match ev {
                Event::Removed { subnet, .. } if subnet == idle.subnet => removed_after = Some(t.elapsed()),
                other => panic!("unexpected {other:?}"),
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    let removed_after = removed_after.expect("idle lease expired and the watch saw it");
    assert!(
        removed_after >= Duration::from_millis(1500) && removed_after < Duration::from_secs(8),
        "{removed_after:?}"
    );
    let (left, _) = sm.leases().await.unwrap();
    assert_eq!(subnets(&left), HashSet::from([kept.subnet]), "renewed lease outlived its 2 s TTL");
    let e = sm.renew(&idle).await.unwrap_err();
    assert!(matches!(e, Error::LeaseLost { .. }) && !e.is_unavailable(), "{e}");
    assert!(e.to_string().contains("has expired or was revoked"), "{e}");
    eprintln!("expired after {removed_after:?}; {renewals} renewals kept the other alive");
}

#[tokio::test]
async fn watch_sees_other_hosts_and_resyncs_after_compaction() {
    let (etcd, sm, cfg) = setup(r#"{"Network":"10.30.0.0/16"}"#).await;
    let other = SubnetManager::connect(&etcd.etcd_config()).await.unwrap();
    let mine = sm.acquire(&cfg, &attrs(1), None, HOUR).await.unwrap();
    let (start, rev0) = sm.leases().await.unwrap();
    assert_eq!(start.len(), 1);
    let mut w = sm.watch(rev0);

    let b = other.acquire(&cfg, &attrs(2), None, HOUR).await.unwrap();
    match next_event(&mut w, Duration::from_secs(5)).await {
        Event::Added(l) => {
            assert_eq!((l.subnet, &l.attrs, l.etcd_lease), (b.subnet, &attrs(2), b.etcd_lease));
            assert!(l.expires_in.unwrap() > Duration::from_secs(3500));
        }
        other => panic!("{other:?}"),
    }
    assert!(other.remove(b.subnet).await.unwrap());
    assert_eq!(
        next_event(&mut w, Duration::from_secs(5)).await,
        Event::Removed { subnet: b.subnet, ipv6_subnet: None }
    );
    // A foreign, non-subnet key under the prefix is ignored.
    etcd.etcdctl(&["put", &format!("{PREFIX}garbage"), "x"]).unwrap();
    let c = other.acquire(&cfg, &attrs(3), None, HOUR).await.unwrap();
    assert!(matches!(next_event(&mut w, Duration::from_secs(5)).await, Event::Added(l) if l.subnet == c.subnet));

    // Compact past rev0: a watcher starting there gets the full list.
    let (_, now) = sm.leases().await.unwrap();
    etcd.etcdctl(&["compact", &now.to_string()]).unwrap();
    let mut late = sm.watch(rev0);
    match next_event(&mut late, Duration::from_secs(5)).await {
        Event::Resync(list) => assert_eq!(subnets(&list), HashSet::from([mine.subnet, c.subnet])),
        other => panic!("{other:?}"),
    }
    // ...and goes on from there.
    let d = other.acquire(&cfg, &attrs(4), None, HOUR).await.unwrap();
    assert!(matches!(next_event(&mut late, Duration::from_secs(5)).await, Event::Added(l) if l.subnet == d.subnet));
    // The first watcher, live through the compaction, just continues.
    assert!(matches!(next_event(&mut w, Duration::from_secs(5)).await, Event::Added(l) if l.subnet == d.subnet));
    // watch(0) starts with a Resync.
    let mut fresh = sm.watch(0);
    assert!(matches!(next_event(&mut fresh, Duration::from_secs(5)).await, Event::Resync(l) if l.len() == 3));
}

#[tokio::test]
async fn survives_etcd_restart() {
    let (mut etcd, sm, cfg) = setup(r#"{"Network":"10.40.0.0/16"}"#).await;
    let lease = sm.acquire(&cfg, &attrs(1), None, Duration::from_secs(30)).await.unwrap();
    let (_, rev) = sm.leases().await.unwrap();
    let mut w = sm.watch(rev);
    tokio::time::sleep(Duration::from_millis(200)).await;

    etcd.kill();
    let t = Instant::now();
    let e = sm.leases().await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    let e = sm.renew(&lease).await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    let down_errors = t.elapsed();
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(w.try_next().is_none(), "nothing while etcd is down");

    etcd.start_again().unwrap();
    let t = Instant::now();
    let (list, _) = loop {
        match sm.leases().await {
            Ok(v) => break v,
            Err(e) if e.is_unavailable() && t.elapsed() < Duration::from_secs(15) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("no recovery: {e}"),
        }
    };
    let recovered = t.elapsed();
    assert_eq!(subnets(&list), HashSet::from([lease.subnet]));
    sm.renew(&lease).await.unwrap();

    // The watch resumes: one Resync, then live events again.
    match next_event(&mut w, Duration::from_secs(10)).await {
        Event::Resync(l) => assert_eq!(subnets(&l), HashSet::from([lease.subnet])),
        other => panic!("{other:?}"),
    }
    let resynced = t.elapsed();
    let other = SubnetManager::connect(&etcd.etcd_config()).await.unwrap();
    let b = other.acquire(&cfg, &attrs(2), None, HOUR).await.unwrap();
    let ev = wait_for(&mut w, Duration::from_secs(5), |e| !matches!(e, Event::Resync(_))).await;
    assert!(matches!(&ev, Event::Added(l) if l.subnet == b.subnet), "{ev:?}");
    // And the manager still acquires.
    sm.acquire(&cfg, &attrs(3), None, HOUR).await.unwrap();
    eprintln!(
        "down: errors after {down_errors:?}; up: calls ok after {recovered:?}, watch resynced after {resynced:?}"
    );
}

#[tokio::test]
async fn remove_deletes_revokes_and_watch_sees_it() {
    let (etcd, sm, cfg) = setup(r#"{"Network":"10.50.0.0/16"}"#).await;
    let a = sm.acquire(&cfg, &attrs(1), None, HOUR).await.unwrap();
    let (_, rev) = sm.leases().await.unwrap();
    let mut w = sm.watch(rev);
    assert!(sm.remove(a.subnet).await.unwrap());
    assert_eq!(
        next_event(&mut w, Duration::from_secs(5)).await,
        Event::Removed { subnet: a.subnet, ipv6_subnet: None }
    );
    assert!(!sm.remove(a.subnet).await.unwrap());
    let mut raw = raw(&etcd).await;
    assert_eq!(raw.lease_time_to_live(a.etcd_lease, None).await.unwrap().ttl(), -1, "etcd lease revoked");
    let e = sm.renew(&a).await.unwrap_err();
    assert!(matches!(e, Error::LeaseLost { .. }), "{e}");

    // A reservation (no etcd lease) is re-taken by its owner, kept a
    // reservation, and never handed to anyone else.
    let key = format!("{PREFIX}10.50.1.0-24");
    etcd.etcdctl(&["put", &key, r#"{"PublicIP":"192.168.0.9","BackendType":"vxlan"}"#]).unwrap();
    let own = sm.acquire(&cfg, &attrs(9), None, HOUR).await.unwrap();
    assert_eq!((own.subnet, own.etcd_lease, own.expires_in), (net("10.50.1.0/24"), 0, None));
    assert!(own.is_reservation());
    sm.renew(&own).await.unwrap();
    let other = sm.acquire(&cfg, &attrs(8), Some(net("10.50.1.0/24")), HOUR).await.unwrap();
    assert_ne!(other.subnet, own.subnet);
    assert_eq!(raw.get(key.as_str(), None).await.unwrap().kvs()[0].lease(), 0);
}

#[tokio::test]
async fn dual_stack_keys() {
    let (etcd, sm, cfg) =
        setup(r#"{"Network":"10.60.0.0/16","EnableIPv6":true,"IPv6Network":"fd00:60::/48","IPv6SubnetLen":64}"#).await;
    let mut a = attrs(1);
    a.public_ipv6 = Some("fd00::1".parse().unwrap());
    a.backend_v6_data = Some(json!({"VNI": 1, "VtepMAC": "0e:00:00:00:01:01"}));
    let prev6 = "fd00:60:0:7::/64".parse().unwrap();
    let l = sm.acquire_dual(&cfg, &a, Some(net("10.60.7.0/24")), Some(prev6), HOUR).await.unwrap();
    assert_eq!((l.subnet, l.ipv6_subnet), (net("10.60.7.0/24"), Some(prev6)));
    let key = format!("{PREFIX}10.60.7.0-24&fd00:60:0:7::-64");
    let out = etcd.etcdctl(&["get", &key, "--print-value-only"]).unwrap();
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["PublicIPv6"], "fd00::1");
    assert_eq!(v["BackendV6Data"]["VtepMAC"], "0e:00:00:00:01:01");
    // A taken previous subnet is not reused, whatever the IPv6 half.
    let b = sm.acquire_dual(&cfg, &attrs(2), Some(net("10.60.7.0/24")), None, HOUR).await.unwrap();
    assert_ne!(b.subnet, l.subnet);
    assert!(cfg.is_compatible(b.subnet, b.ipv6_subnet) && b.ipv6_subnet != l.ipv6_subnet);
    let (all, _) = sm.leases().await.unwrap();
    assert!(all.iter().any(|x| x.subnet == l.subnet && x.ipv6_subnet == Some(prev6)));
    assert!(sm.remove(l.subnet).await.unwrap());
    assert_eq!(sm.leases().await.unwrap().0.len(), 1);

    // Subnet file for the dual-stack lease.
    let f = SubnetFile::new(&cfg, &l, 1450, true);
    assert_eq!(
        f.render(),
        "FLANNEL_NETWORK=10.60.0.0/16\nFLANNEL_SUBNET=10.60.7.1/24\nFLANNEL_IPV6_NETWORK=fd00:60::/48\n\
         FLANNEL_IPV6_SUBNET=fd00:60:0:7::1/64\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    );
    assert_eq!(f.lease_ipv6_subnet(), Some(prev6));
}

#[test]
fn subnet_file_round_trip() {
    use std::os::unix::fs::PermissionsExt;
    let dir = std::env::temp_dir().join(format!("subnet-file-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("run/flannel/subnet.env");
    let cfg = NetworkConfig::parse(br#"{"Network":"10.244.0.0/16"}"#).unwrap();
    let lease = Lease {
        subnet: net("10.244.1.0/24"),
        ipv6_subnet: None,
        attrs: attrs(1),
        etcd_lease: 7,
        expires_in: None,
        revision: 1,
    };
    let f = SubnetFile::new(&cfg, &lease, 1450, true);
    write_subnet_file(&path, &f).unwrap();
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "FLANNEL_NETWORK=10.244.0.0/16\nFLANNEL_SUBNET=10.244.1.1/24\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=true\n"
    );
    let back = read_subnet_file(&path).unwrap();
    assert_eq!(back, f);
    assert_eq!(back.lease_subnet(), lease.subnet);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o644);

    // Rewrite keeps the file's mode and leaves no temp file behind.
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    let g = SubnetFile { mtu: 1400, ipmasq: false, ..f };
    write_subnet_file(&path, &g).unwrap();
    assert_eq!(read_subnet_file(&path).unwrap(), g);
    assert_eq!(std::fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
    let names: Vec<_> = std::fs::read_dir(path.parent().unwrap()).unwrap().map(|e| e.unwrap().file_name()).collect();
    assert_eq!(names, ["subnet.env"]);
    let e = read_subnet_file(dir.join("missing.env")).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn hung_etcd_times_out_then_recovers() {
    let (etcd, sm, cfg) = setup(r#"{"Network":"10.80.0.0/16"}"#).await;
    let lease = sm.acquire(&cfg, &attrs(1), None, Duration::from_secs(30)).await.unwrap();
    let (_, rev) = sm.leases().await.unwrap();
    let mut w = sm.watch(rev);

    etcd.freeze();
    let t = Instant::now();
    let e = sm.leases().await.unwrap_err();
    let took = t.elapsed();
    assert!(e.is_unavailable() && e.to_string().contains("no answer within 5s"), "{e}");
    assert!(took >= REQUEST_TIMEOUT && took < REQUEST_TIMEOUT + Duration::from_secs(2), "{took:?}");
    etcd.thaw();

    let t = Instant::now();
    loop {
        match sm.renew(&lease).await {
            Ok(()) => break,
            Err(e) if e.is_unavailable() && t.elapsed() < Duration::from_secs(10) => {
                tokio::time::sleep(Duration::from_millis(100)).await
            }
            Err(e) => panic!("no recovery: {e}"),
        }
    }
    // The watcher sees the new host: live, or in the Resync it does once its
    // own timed-out request is noticed (which may come after this acquire).
    let other = SubnetManager::connect(&etcd.etcd_config()).await.unwrap();
    let b = other.acquire(&cfg, &attrs(2), None, HOUR).await.unwrap();
    wait_for(&mut w, Duration::from_secs(10), |e| match e {
        Event::Added(l) => l.subnet == b.subnet,
        Event::Resync(list) => subnets(list).contains(&b.subnet),
        Event::Removed { .. } => panic!("{e:?}"),
    })
    .await;
    eprintln!("frozen etcd: unavailable after {took:?}, renew ok again {:?} after thaw", t.elapsed());
}

#[tokio::test]
async fn tls_with_client_certificates() {
    // A missing openssl CLI (scripts/testbed.sh installs it) fails the test: no silent skip.
    let etcd = EtcdServer::start_tls().unwrap_or_else(|e| panic!("TLS etcd (needs the openssl CLI): {e}"));
    assert!(etcd.endpoint().starts_with("https://"));
    etcd.etcdctl(&["put", CONFIG_KEY, r#"{"Network":"10.70.0.0/16"}"#]).unwrap();
    let sm = SubnetManager::connect(&etcd.etcd_config()).await.unwrap();
    let cfg = sm.network_config().await.unwrap();
    let a = sm.acquire(&cfg, &attrs(1), None, HOUR).await.unwrap();
    sm.renew(&a).await.unwrap();
    let (_, rev) = sm.leases().await.unwrap();
    let mut w = sm.watch(rev);
    let b = sm.acquire(&cfg, &attrs(2), None, HOUR).await.unwrap();
    assert!(matches!(next_event(&mut w, Duration::from_secs(5)).await, Event::Added(l) if l.subnet == b.subnet));

    // The server wants a client certificate.
    let no_cert = EtcdConfig { cert_file: None, key_file: None, ..etcd.etcd_config() };
    let e = SubnetManager::connect(&no_cert).await.unwrap_err();
    assert!(e.is_unavailable(), "{e}");
    eprintln!("without a client certificate: {e}");
    // Settings mistakes are named.
    let half = EtcdConfig { key_file: None, ..etcd.etcd_config() };
    let e = SubnetManager::connect(&half).await.unwrap_err();
    assert_eq!(
        e.to_string(),
        "invalid etcd client settings: a client certificate needs both the cert file and the key file"
    );
    let http = EtcdConfig { endpoints: vec![etcd.endpoint().replace("https://", "http://")], ..etcd.etcd_config() };
    let e = SubnetManager::connect(&http).await.unwrap_err();
    assert!(
        matches!(e, Error::Etcd(etcd_kv::Error::InvalidSettings(_)))
            && e.to_string().contains("use https:// endpoints"),
        "{e}"
    );
}
