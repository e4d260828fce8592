//! Affine blocks (`ipam.cluster.mode: "blocks"`) against a real etcd (one per
//! test, on free ports, killed on drop): the plugin verbs in-process and
//! through the binary, and the admin commands.

mod common;

use std::collections::{BTreeMap, HashSet};
use std::net::IpAddr;
use std::process::Command;
use std::time::{Duration, Instant};

use cluster_ipam::{list_blocks, Block};
use cni_core::{Code, Plugin};
use cni_ipam::Ipam;
use common::{addresses, ctx, ip_of, leases, run_json, try_ctx, TestDir, BIN};
use etcd_kv::testing::EtcdServer;
use etcd_kv::EtcdConfig;
use serde_json::{json, Value};

const NET: &str = "blocknet";

/// One simulated host: its own dataDir and host name, one network config.
struct Host {
    dir: TestDir,
    name: String,
    conf: Value,
}

impl Host {
    fn new(etcd: &EtcdServer, name: &str, cluster: Value) -> Host {
        let dir = TestDir::new(&format!("blocks-{name}"));
        let mut c = json!({"mode": "blocks", "etcdEndpoints": [etcd.endpoint()], "host": name});
        for (k, v) in cluster.as_object().unwrap() {
            c[k] = v.clone();
        }
        let conf = dir.conf(NET, json!({"cluster": c}));
        Host { dir, name: name.to_string(), conf }
    }

    fn add(&self, id: &str) -> cni_core::Result<Value> {
        Ipam.add(&ctx("ADD", id, "eth0", &self.conf, "")).map(|r| r.to_json(cni_core::Version::V1_1_0))
    }

    /// ADD that must succeed; returns "ip/len".
    fn add_ok(&self, id: &str) -> String {
        let r = self.add(id).unwrap_or_else(|e| panic!("{}: ADD {id}: {e}", self.name));
        addresses(&r).remove(0)
    }

    fn del(&self, id: &str) -> cni_core::Result<()> {
        Ipam.del(&ctx("DEL", id, "eth0", &self.conf, ""))
    }

    fn gc(&self, valid: &[&str]) -> cni_core::Result<()> {
        let mut conf = self.conf.clone();
        conf["cni.dev/valid-attachments"] =
            Value::Array(valid.iter().map(|id| json!({"containerID": id, "ifname": "eth0"})).collect());
        Ipam.gc(&ctx("GC", "", "", &conf, ""))
    }

    /// Local leases: ip -> "id\r\nifname".
    fn local(&self) -> BTreeMap<String, String> {
        leases(&self.dir.net_dir(NET))
    }

    fn cached_blocks(&self) -> Vec<String> {
        let p = self.dir.net_dir(NET).join("blocks.json");
        let Ok(s) = std::fs::read_to_string(p) else { return Vec::new() };
        let v: Value = serde_json::from_str(&s).unwrap();
        v["blocks"].as_array().unwrap().iter().map(|b| b.as_str().unwrap().to_string()).collect()
    }
}

fn etcd_cfg(etcd: &EtcdServer) -> EtcdConfig {
    EtcdConfig { prefix: "/cni-ipam".into(), ..etcd.etcd_config() }
}

/// The network's blocks as etcd has them.
fn blocks(etcd: &EtcdServer) -> Vec<Block> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(list_blocks(&etcd_cfg(etcd), NET)).expect("list blocks")
}

/// ip -> (host, handle) over every block.
fn etcd_allocations(etcd: &EtcdServer) -> BTreeMap<IpAddr, (String, String)> {
    blocks(etcd)
        .into_iter()
        .flat_map(|b| b.value.allocations.into_iter().map(|(ip, a)| (ip, (a.host, a.handle))))
        .collect()
}

/// Writes straight into etcd a record of `host` for `handle` at the last
/// address of `host`'s first block, as a plugin killed between its etcd and
/// its local write leaves it. Returns the address.
fn plant_record(etcd: &EtcdServer, host: &str, handle: &str) -> IpAddr {
    let mut blk = blocks(etcd).into_iter().find(|x| x.value.host == host).unwrap();
    let ip: IpAddr = cluster_ipam::block_addresses(blk.cidr).last().unwrap();
    let rec = cluster_ipam::Allocation { handle: handle.into(), host: host.into() };
    blk.value.allocations.insert(ip, rec);
    let key = format!("/cni-ipam/{NET}/blocks/{}", cluster_ipam::block_key(blk.cidr));
    etcd.etcdctl(&["put", &key, &blk.value.to_json()]).unwrap();
    ip
}

fn in_block(addr: &str, block: &str) -> bool {
    let block: ipnetwork::IpNetwork = block.parse().unwrap();
    block.contains(ip_of(addr).parse().unwrap())
}

fn admin(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(BIN).env_remove("CNI_COMMAND").args(args).output().expect("run cni-ipam");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn eight_hosts_racing_for_eight_blocks_each_get_one() {
    let etcd = EtcdServer::start().expect("start etcd");
    // 10.210.0.0/24 in /27 blocks: exactly 8 blocks, so the hosts must collide.
    let cluster = json!({"pool": "10.210.0.0/24", "blockSize": 27, "strictAffinity": true});
    let hosts: Vec<Host> = (0..8).map(|i| Host::new(&etcd, &format!("node-{i}"), cluster.clone())).collect();
    let barrier = std::sync::Barrier::new(hosts.len());
    let got: Vec<(String, Vec<String>)> = std::thread::scope(|s| {
        let handles: Vec<_> = hosts
            .iter()
            .map(|h| {
                let barrier = &barrier;
                s.spawn(move || {
                    barrier.wait();
                    let ips: Vec<String> = (0..3).map(|k| h.add_ok(&format!("{}-c{k}", h.name))).collect();
                    (h.name.clone(), ips)
                })
            })
            .collect();
        handles.into_iter().map(|t| t.join().unwrap()).collect()
    });

    let in_etcd = blocks(&etcd);
    assert_eq!(in_etcd.len(), 8, "{in_etcd:?}");
    let owners: HashSet<&str> = in_etcd.iter().map(|b| b.value.host.as_str()).collect();
    assert_eq!(owners.len(), 8, "every host owns exactly one block: {in_etcd:?}");
    let mut all = HashSet::new();
    for (name, ips) in &got {
        let block = in_etcd.iter().find(|b| &b.value.host == name).unwrap().cidr.to_string();
        let h = hosts.iter().find(|h| &h.name == name).unwrap();
        assert_eq!(h.cached_blocks(), std::slice::from_ref(&block));
        for ip in ips {
            assert!(in_block(ip, &block), "{name}: {ip} outside its block {block}");
            assert!(all.insert(ip_of(ip)), "{ip} handed out twice");
        }
    }
    // A ninth host finds every block taken: strictAffinity means no borrowing.
    let late = Host::new(&etcd, "node-late", cluster);
    let e = late.add("late-c0").unwrap_err();
    assert_eq!(e.code, Code::Other(ipam::CODE_EXHAUSTED), "{e}");
    assert!(e.msg.contains("pool 10.210.0.0/24") && e.msg.contains("strictAffinity"), "{e}");
    assert!(late.local().is_empty());
}

#[test]
fn a_host_fills_its_block_then_claims_a_second_and_publishes_on_claim_and_gc() {
    let etcd = EtcdServer::start().expect("start etcd");
    // /28 blocks: 16 addresses, 13 handed out (no network, gateway, broadcast).
    let a = Host::new(&etcd, "node-a", json!({"pool": "10.211.0.0/24", "blockSize": 28, "strictAffinity": true}));
    let first: Vec<String> = (0..13).map(|i| a.add_ok(&format!("c{i}"))).collect();
    let blocks1 = a.cached_blocks();
    assert_eq!(blocks1.len(), 1);
    let b1 = blocks1[0].clone();
    let b1net: ipnetwork::IpNetwork = b1.parse().unwrap();
    for ip in &first {
        assert!(in_block(ip, &b1) && ip.ends_with("/28"), "{ip} in {b1}");
    }
    let r = a.add("c0").unwrap();
    assert_eq!(addresses(&r), [first[0].clone()], "ADD is idempotent");
    assert_eq!(r["ips"][0]["gateway"].as_str().unwrap(), cluster_ipam::block_range(b1net).gateway.to_string());
    // Published only in batch: nothing recorded before the next claim.
    assert!(etcd_allocations(&etcd).is_empty());

    let fourteenth = a.add_ok("c13");
    let cached = a.cached_blocks();
    assert_eq!(cached.len(), 2, "{cached:?}");
    let b2 = cached.iter().find(|b| **b != b1).unwrap();
    assert!(in_block(&fourteenth, b2), "{fourteenth} in the new block {b2}");
    let in_etcd = blocks(&etcd);
    assert_eq!(in_etcd.len(), 2);
    assert!(in_etcd.iter().all(|b| b.value.host == "node-a" && b.value.exclusive));
    // The claim published the full block's 13 allocations with their handles.
    let recs = etcd_allocations(&etcd);
    assert_eq!(recs.len(), 13, "{recs:?}");
    for (i, ip) in first.iter().enumerate() {
        let want = ("node-a".to_string(), format!("c{i}/eth0"));
        assert_eq!(recs[&ip_of(ip).parse::<IpAddr>().unwrap()], want);
    }
    // GC publishes too: c13 appears, the orphans c5..c12 go, locally and in etcd.
    let valid = ["c0", "c1", "c2", "c3", "c4", "c13"];
    a.gc(&valid).unwrap();
    let recs = etcd_allocations(&etcd);
    let handles: HashSet<String> = recs.values().map(|(_, h)| h.clone()).collect();
    let want: HashSet<String> = valid.iter().map(|v| format!("{v}/eth0")).collect();
    assert_eq!(handles, want);
    assert_eq!(a.local().len(), 6);

    // The binary serves cluster mode too (fast path: no etcd round trip needed).
    let (ok, v) = run_json(BIN, "ADD", "bin-c1", "eth0", &a.conf, "");
    assert!(ok, "{v}");
    assert!(addresses(&v)[0].ends_with("/28"), "{v}");
    let (ok, v) = run_json(BIN, "DEL", "bin-c1", "eth0", &a.conf, "");
    assert!(ok, "{v}");
}

#[test]
fn a_freed_address_in_a_full_block_is_reused_before_a_new_claim_and_gc_handles_unknown_blocks() {
    let etcd = EtcdServer::start().expect("start etcd");
    let a = Host::new(&etcd, "node-a", json!({"pool": "10.218.0.0/24", "blockSize": 28, "strictAffinity": true}));
    let first: Vec<String> = (0..14).map(|i| a.add_ok(&format!("c{i}"))).collect();
    let cached = a.cached_blocks();
    assert_eq!(cached.len(), 2, "the 14th ADD claimed a second block: {cached:?}");
    let full_file = a.dir.net_dir(NET).join("blocks.full");
    assert!(full_file.exists(), "the claim recorded the first block as full");
    // Freeing an address of the full block makes it the next one handed out
    // (after the open block fills), not a reason for a third block.
    a.del("c3").unwrap();
    assert!(!full_file.exists(), "a release forgets which blocks are full");
    let second: Vec<String> = (14..27).map(|i| a.add_ok(&format!("c{i}"))).collect();
    assert!(second.contains(&first[3]), "{} reused: {second:?}", first[3]);
    assert_eq!(a.cached_blocks().len(), 2, "no third block while an address was free");
    assert_eq!(blocks(&etcd).len(), 2);
    a.add_ok("c27");
    assert_eq!(a.cached_blocks().len(), 3, "both blocks full: a third is claimed");

    // A block of ours that the cache misses (a claim whose answer timed out): claims list
    // keys only and do not see it. It is empty (strict records mirror the local leases), so
    // GC gives it back instead of leaving it claimed for ever.
    let put_block = |cidr: &str, host: &str, exclusive: bool, handle: Option<&str>| {
        let cidr: ipnetwork::IpNetwork = cidr.parse().unwrap();
        let key = format!("/cni-ipam/{NET}/blocks/{}", cluster_ipam::block_key(cidr));
        let mut value = cluster_ipam::BlockValue { host: host.into(), exclusive, ..Default::default() };
        if let Some(h) = handle {
            let ip = cluster_ipam::block_addresses(cidr).next().unwrap();
            value.allocations.insert(ip, cluster_ipam::Allocation { handle: h.into(), host: host.into() });
        }
        etcd.etcdctl(&["put", &key, &value.to_json()]).unwrap();
        cidr.to_string()
    };
    let lost = put_block("10.218.0.240/28", "node-a", true, None);
    let valid: Vec<String> = (0..28).filter(|i| *i != 3).map(|i| format!("c{i}")).collect();
    a.gc(&valid.iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    assert!(!a.cached_blocks().contains(&lost), "{:?}", a.cached_blocks());
    assert!(!blocks(&etcd).iter().any(|b| b.cidr.to_string() == lost), "given back");
    // Non-strict, the lost block holds the retried ADD's record: GC adopts it.
    let n = Host::new(&etcd, "node-n", json!({"pool": "10.218.1.0/24", "blockSize": 28}));
    n.add_ok("n0");
    let lost = put_block("10.218.1.240/28", "node-n", false, Some("n1/eth0"));
    n.gc(&["n0", "n1"]).unwrap();
    assert!(n.cached_blocks().contains(&lost), "{:?}", n.cached_blocks());
}

#[test]
fn gc_gives_empty_blocks_back_but_keeps_one_and_never_one_a_borrower_uses() {
    let etcd = EtcdServer::start().expect("start etcd");
    // strictAffinity: 14 ADDs take two /28 blocks; with c13 gone the second is empty.
    let a = Host::new(&etcd, "node-a", json!({"pool": "10.219.0.0/24", "blockSize": 28, "strictAffinity": true}));
    let ids: Vec<String> = (0..14).map(|i| format!("c{i}")).collect();
    for id in &ids {
        a.add_ok(id);
    }
    let before = a.cached_blocks();
    assert_eq!(before.len(), 2);
    a.del("c13").unwrap();
    a.gc(&ids[..13].iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    let after = a.cached_blocks();
    assert_eq!(after.len(), 1, "the empty block was given back: {after:?}");
    let in_etcd: Vec<String> = blocks(&etcd).iter().map(|b| b.cidr.to_string()).collect();
    assert_eq!(in_etcd, after, "etcd and the cache agree");
    assert_eq!(etcd_allocations(&etcd).len(), 13, "the full block's records are intact");
    // The full block makes the next ADD claim again; then everything goes: of two empty
    // blocks the host keeps one, the highest (where its claims go last).
    a.add_ok("late");
    let two = a.cached_blocks();
    assert_eq!(two.len(), 2);
    for id in ids[..13].iter().map(String::as_str).chain(["late"]) {
        a.del(id).unwrap();
    }
    a.gc(&[]).unwrap();
    let highest = two.iter().max_by_key(|b| b.parse::<ipnetwork::IpNetwork>().unwrap().network()).unwrap();
    assert_eq!(a.cached_blocks(), std::slice::from_ref(highest));
    assert_eq!(blocks(&etcd).len(), 1);
    assert!(etcd_allocations(&etcd).is_empty());

    // Non-strict: a block another host borrows from is not empty, so it stays.
    let cluster = json!({"pool": "10.219.1.0/27", "blockSize": 28});
    let (p, q) = (Host::new(&etcd, "node-p", cluster.clone()), Host::new(&etcd, "node-q", cluster));
    for id in &ids {
        p.add_ok(id);
    }
    assert_eq!(p.cached_blocks().len(), 2, "p owns both blocks of its pool");
    p.del("c13").unwrap();
    let borrowed = q.add_ok("q0");
    assert!(borrowed.ends_with("/32"), "q borrows: {borrowed}");
    p.gc(&ids[..13].iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    assert_eq!(p.cached_blocks().len(), 2, "a borrowed address keeps the block");
    q.del("q0").unwrap();
    p.gc(&ids[..13].iter().map(String::as_str).collect::<Vec<_>>()).unwrap();
    assert_eq!(p.cached_blocks().len(), 1, "empty once the borrower left: given back");
    assert!(q.add_ok("q1").ends_with("/28"), "q can now claim the freed block as its own");
}

#[test]
fn fast_path_works_with_etcd_down_and_a_needed_claim_fails_with_code_11_leaving_nothing() {
    let mut etcd = EtcdServer::start().expect("start etcd");
    let a = Host::new(&etcd, "node-a", json!({"pool": "10.212.0.0/24", "blockSize": 28, "strictAffinity": true}));
    a.add_ok("c0");
    etcd.kill();

    // Inside the claimed block: local only, so etcd being down does not matter.
    let t = Instant::now();
    for i in 1..13 {
        a.add_ok(&format!("c{i}"));
    }
    assert!(t.elapsed() < Duration::from_secs(1), "fast path took {:?}", t.elapsed());
    a.del("c5").unwrap();
    a.add_ok("c5");

    // The block is full: a claim is needed and etcd is unreachable.
    let t = Instant::now();
    let e = a.add("c13").unwrap_err();
    let took = t.elapsed();
    assert_eq!(e.code, Code::TryAgainLater, "{e}");
    assert!(took < Duration::from_millis(2600), "gave up after {took:?}");
    assert_eq!(a.local().len(), 13, "no lease for c13");
    assert!(!a.local().values().any(|o| o.starts_with("c13")));
    assert_eq!(a.cached_blocks().len(), 1);
    assert!(common::files_with_prefix(&a.dir.net_dir(NET), ".att.c13").is_empty());

    etcd.start_again().unwrap();
    assert_eq!(blocks(&etcd).len(), 1, "no half-claimed block");
    let ip = a.add_ok("c13");
    assert_eq!(a.cached_blocks().len(), 2);
    assert!(in_block(&ip, &a.cached_blocks().into_iter().find(|b| in_block(&ip, b)).unwrap()));

    // Non-strict: every ADD needs etcd; down means code 11 and no local lease.
    let b = Host::new(&etcd, "node-b", json!({"pool": "10.212.0.0/24", "blockSize": 28}));
    b.add_ok("b0");
    etcd.kill();
    let e = b.add("b1").unwrap_err();
    assert_eq!(e.code, Code::TryAgainLater, "{e}");
    assert_eq!(b.local().len(), 1);
    etcd.start_again().unwrap();
    b.add_ok("b1");
    assert_eq!(etcd_allocations(&etcd).values().filter(|(h, _)| h == "node-b").count(), 2);
}

#[test]
fn non_strict_hosts_borrow_when_the_pool_is_exhausted_and_del_frees_borrowed_addresses() {
    let etcd = EtcdServer::start().expect("start etcd");
    // Two /28 blocks in the pool.
    let cluster = json!({"pool": "10.213.0.0/27", "blockSize": 28});
    let a = Host::new(&etcd, "node-a", cluster.clone());
    let b = Host::new(&etcd, "node-b", cluster.clone());
    let c = Host::new(&etcd, "node-c", cluster);
    let a0 = a.add_ok("a0");
    let b0 = b.add_ok("b0");
    assert!(a0.ends_with("/28") && b0.ends_with("/28"));
    // Every allocation is recorded in etcd at once, with its handle.
    let recs = etcd_allocations(&etcd);
    assert_eq!(recs[&ip_of(&a0).parse::<IpAddr>().unwrap()], ("node-a".into(), "a0/eth0".into()));
    // An ADD retried after its answer was lost (etcd has the record, the local store has not)
    // gets the recorded address, found on the fast path through a's cached block.
    let lost = plant_record(&etcd, "node-a", "lost/eth0");
    assert_eq!(ip_of(&a.add_ok("lost")), lost.to_string());
    assert_eq!(etcd_allocations(&etcd).len(), 3, "no second record for the retried ADD");

    // c has no block and none is left: it borrows one address.
    let r = c.add("c0").unwrap();
    let c0 = addresses(&r).remove(0);
    assert!(c0.ends_with("/32"), "a borrowed address is a host route: {r}");
    assert!(r["ips"][0].get("gateway").is_none(), "{r}");
    let owner = blocks(&etcd).into_iter().find(|bl| bl.cidr.contains(ip_of(&c0).parse().unwrap())).unwrap();
    assert_ne!(owner.value.host, "node-c");
    assert_eq!(owner.value.allocations[&ip_of(&c0).parse::<IpAddr>().unwrap()].host, "node-c");
    assert!(c.cached_blocks().is_empty());
    assert_eq!(c.local().len(), 1);

    // Fill everything: 26 addresses in total.
    let mut n = 3;
    while c.add(&format!("c{n}")).is_ok() {
        n += 1;
        assert!(n < 40);
    }
    assert_eq!(etcd_allocations(&etcd).len(), 26);
    let e = a.add("a-last").unwrap_err();
    assert_eq!(e.code, Code::Other(ipam::CODE_EXHAUSTED), "{e}");
    assert!(e.msg.contains("no IP addresses available in pool 10.213.0.0/27"), "{e}");
    assert_eq!(a.local().len(), 2, "a0 and lost");

    // DEL of a borrowed address frees it in etcd, and its owner can use it.
    c.del("c0").unwrap();
    assert!(!etcd_allocations(&etcd).contains_key(&ip_of(&c0).parse::<IpAddr>().unwrap()));
    assert!(c.local().values().all(|o| !o.starts_with("c0\r")));
    let again = if owner.value.host == "node-a" { a.add_ok("a1") } else { b.add_ok("b1") };
    assert_eq!(ip_of(&again), ip_of(&c0));
    // A second DEL is fine.
    c.del("c0").unwrap();
}

/// The ADD context of `id` on `host` asking for `ip` (`runtimeConfig.ips`, the `ips` capability).
fn add_requesting(host: &Host, id: &str, ip: &str) -> cni_core::Result<Value> {
    let mut conf = host.conf.clone();
    conf["runtimeConfig"] = json!({"ips": [ip]});
    Ipam.add(&ctx("ADD", id, "eth0", &conf, "")).map(|r| r.to_json(cni_core::Version::V1_1_0))
}

#[test]
fn a_requested_address_follows_its_container_to_another_host() {
    let etcd = EtcdServer::start().expect("start etcd");
    // Four /28 blocks.
    let cluster = json!({"pool": "10.219.0.0/26", "blockSize": 28});
    let a = Host::new(&etcd, "node-a", cluster.clone());
    let b = Host::new(&etcd, "node-b", cluster.clone());
    let a0 = ip_of(&a.add_ok("a0"));
    let b0 = b.add_ok("b0");
    let ip: IpAddr = a0.parse().unwrap();

    // While a0 holds it, nobody else gets it: code 7 naming the holder.
    let e = add_requesting(&b, "moved", &a0).unwrap_err();
    assert_eq!(e.code, Code::InvalidConfig, "{e}");
    assert!(e.msg.contains("allocated to a0/eth0 on host node-a"), "{e}");
    assert!(b.local().values().all(|o| !o.starts_with("moved\r")), "no lease left by the refused ADD");

    // The container leaves host a; host b asks for its address and borrows it from a's block.
    a.del("a0").unwrap();
    let r = add_requesting(&b, "moved", &format!("{a0}/28")).unwrap();
    assert_eq!(addresses(&r), [format!("{a0}/32")], "a borrowed address is a host route: {r}");
    assert!(r["ips"][0].get("gateway").is_none(), "{r}");
    let owner = blocks(&etcd).into_iter().find(|bl| bl.cidr.contains(ip)).unwrap();
    assert_eq!(owner.value.host, "node-a", "the block stays a's");
    assert_eq!(
        owner.value.allocations[&ip],
        cluster_ipam::Allocation { handle: "moved/eth0".into(), host: "node-b".into() }
    );
    assert!(!b.cached_blocks().contains(&owner.cidr.to_string()));
    // A retried ADD gets the same address and writes no second record.
    assert_eq!(addresses(&add_requesting(&b, "moved", &a0).unwrap()), [format!("{a0}/32")]);
    assert_eq!(etcd_allocations(&etcd).len(), 2);
    // The same attachment asking for another address is refused.
    let e = add_requesting(&b, "moved", &ip_of(&b0)).unwrap_err();
    assert!(e.msg.contains(&format!("but moved/eth0 already holds {a0}")), "{e}");
    // a's next ADD does not get it.
    assert_ne!(ip_of(&a.add_ok("a1")), a0);

    // An address in a block nobody has claimed: b claims that block.
    let taken: HashSet<String> = blocks(&etcd).iter().map(|bl| bl.cidr.to_string()).collect();
    let free = ["10.219.0.0/28", "10.219.0.16/28", "10.219.0.32/28", "10.219.0.48/28"]
        .into_iter()
        .find(|c| !taken.contains(*c))
        .unwrap();
    let want = ip_of(free).parse::<std::net::Ipv4Addr>().unwrap();
    let want = std::net::Ipv4Addr::from(u32::from(want) + 5).to_string();
    let r = add_requesting(&b, "fresh", &want).unwrap();
    assert_eq!(addresses(&r), [format!("{want}/28")], "{r}");
    assert!(b.cached_blocks().contains(&free.to_string()), "{:?}", b.cached_blocks());
    assert_eq!(blocks(&etcd).into_iter().find(|bl| bl.cidr.to_string() == free).unwrap().value.host, "node-b");

    // Bad requests are code 7 with the reason.
    let gw = std::net::Ipv4Addr::from(u32::from(ip_of(free).parse::<std::net::Ipv4Addr>().unwrap()) + 1).to_string();
    for (req, why) in [(gw.as_str(), "gateway"), ("10.99.0.5", "not in any pool")] {
        let e = add_requesting(&b, "bad", req).unwrap_err();
        assert_eq!(e.code, Code::InvalidConfig, "{e}");
        assert!(e.msg.contains(why), "{req}: {e}");
    }
    let strict = Host::new(&etcd, "node-s", json!({"pool": "10.219.0.0/26", "blockSize": 28, "strictAffinity": true}));
    let e = add_requesting(&strict, "s0", "10.219.0.60").unwrap_err();
    assert!(e.msg.contains("strictAffinity false"), "{e}");

    // DEL on b frees the borrowed record; the address is a's to hand out again.
    b.del("moved").unwrap();
    assert!(!etcd_allocations(&etcd).contains_key(&ip));
    // Through the binary, as a runtime with the ips capability calls it.
    let mut conf = a.conf.clone();
    conf["runtimeConfig"] = json!({"ips": [format!("{a0}/28")]});
    let (ok, v) = run_json(BIN, "ADD", "back", "eth0", &conf, "");
    assert!(ok, "{v}");
    assert_eq!(addresses(&v), [format!("{a0}/28")], "back in its own block: {v}");
}

#[test]
fn strict_affinity_never_lends_and_reports_exhaustion() {
    let etcd = EtcdServer::start().expect("start etcd");
    let cluster = json!({"pool": "10.214.0.0/27", "blockSize": 28, "strictAffinity": true});
    let a = Host::new(&etcd, "node-a", cluster.clone());
    let b = Host::new(&etcd, "node-b", cluster.clone());
    a.add_ok("a0");
    b.add_ok("b0");
    // A non-strict host may not borrow from exclusive blocks either.
    let c = Host::new(&etcd, "node-c", json!({"pool": "10.214.0.0/27", "blockSize": 28}));
    for h in [&Host::new(&etcd, "node-d", cluster), &c] {
        let e = h.add("x0").unwrap_err();
        assert_eq!(e.code, Code::Other(ipam::CODE_EXHAUSTED), "{e}");
        assert!(e.msg.contains("pool 10.214.0.0/27"), "{e}");
        assert!(h.local().is_empty());
    }
    assert!(etcd_allocations(&etcd).is_empty());
}

#[test]
fn remove_host_frees_its_blocks_and_allocations_and_others_can_claim_them() {
    let etcd = EtcdServer::start().expect("start etcd");
    let cluster = json!({"pool": "10.215.0.0/27", "blockSize": 28});
    let a = Host::new(&etcd, "node-a", cluster.clone());
    let b = Host::new(&etcd, "node-b", cluster.clone());
    let a0 = a.add_ok("a0");
    a.add_ok("a1");
    b.add_ok("b0");
    let ep = etcd.endpoint();
    let (ok, out, err) = admin(&["blocks", "--etcd-endpoints", &ep, "--network", NET]);
    assert!(ok, "{err}");
    let line_a = out.lines().find(|l| l.contains("node-a")).unwrap_or_else(|| panic!("{out}"));
    assert!(line_a.split_whitespace().collect::<Vec<_>>()[1..4] == ["node-a", "2", "0"], "{out}");

    let (ok, out, err) =
        admin(&["remove-host", "--etcd-endpoints", &ep, "--etcd-prefix", "/cni-ipam", "--network", NET, "node-a"]);
    assert!(ok, "{err}");
    assert!(out.contains("1 block(s) freed, 2 allocation(s) freed"), "{out}");
    let left = blocks(&etcd);
    assert_eq!(left.len(), 1);
    assert_eq!(left[0].value.host, "node-b");
    // A new host claims the freed block and gets its first address again.
    let c = Host::new(&etcd, "node-c", cluster);
    let c0 = c.add_ok("c0");
    assert_eq!(c0, a0);
    assert_eq!(blocks(&etcd).iter().filter(|b| b.value.host == "node-c").count(), 1);

    // b fills its block, then borrows from c's; removing c keeps c's block
    // without an owner for b's borrowed address, until that goes too.
    for n in 1..13 {
        b.add_ok(&format!("b{n}"));
    }
    let borrowed = b.add_ok("b-borrow");
    assert!(borrowed.ends_with("/32"), "{borrowed}");
    let (ok, out, err) = admin(&["remove-host", "--etcd-endpoints", &ep, "--network", NET, "node-c"]);
    assert!(ok, "{err}");
    assert!(out.contains("0 block(s) freed, 1 allocation(s) freed") && out.contains("kept 10.215.0."), "{out}");
    let orphan = blocks(&etcd).into_iter().find(|bl| bl.value.host.is_empty()).expect("orphaned block");
    assert_eq!(orphan.value.allocations.len(), 1);
    b.del("b-borrow").unwrap();
    assert!(blocks(&etcd).iter().all(|bl| !bl.value.host.is_empty()), "the empty orphan is deleted");

    let (ok, _, err) = admin(&["remove-host", "--etcd-endpoints", &ep, "--network", NET]);
    assert!(!ok && err.contains("<HOST>"), "{err}");
    let (ok, _, err) = admin(&["bogus"]);
    assert!(!ok && err.contains("Usage:"), "{err}");
}

#[test]
fn gc_frees_orphans_in_etcd_and_locally() {
    let etcd = EtcdServer::start().expect("start etcd");
    let cluster = json!({"pool": "10.216.0.0/26", "blockSize": 28});
    let a = Host::new(&etcd, "node-a", cluster.clone());
    let b = Host::new(&etcd, "node-b", cluster);
    for id in ["a0", "a1", "a2"] {
        a.add_ok(id);
    }
    b.add_ok("b0");
    // A record of node-a with no local lease (e.g. an ADD whose answer was lost).
    plant_record(&etcd, "node-a", "gone/eth0");

    a.gc(&["a1"]).unwrap();
    let recs = etcd_allocations(&etcd);
    let left: Vec<&str> = recs.values().map(|(_, h)| h.as_str()).collect();
    assert_eq!(left.len(), 2, "{recs:?}");
    assert!(left.contains(&"a1/eth0") && left.contains(&"b0/eth0"), "other hosts' records are not touched: {recs:?}");
    assert_eq!(a.local().values().cloned().collect::<Vec<_>>(), ["a1\r\neth0"]);
    // GC without the key is refused (by cni-core, before any plugin runs), as in local mode.
    let e = try_ctx("GC", "", "", &a.conf, "").unwrap_err();
    assert_eq!(e.code, Code::InvalidConfig);
}

#[test]
fn invalid_cluster_config_is_code_7() {
    let dir = TestDir::new("blocks-bad");
    let cases = [
        (json!({"mode": "blocks", "pool": "10.0.0.0/16"}), "etcdEndpoints is required"),
        (json!({"mode": "ipip", "etcdEndpoints": ["http://127.0.0.1:1"], "pool": "10.0.0.0/16"}), "mode \"ipip\""),
        (
            json!({"mode": "blocks", "etcdEndpoints": ["http://127.0.0.1:1"], "pool": "10.0.0.0/16", "blockSize": 8}),
            "blockSize 8",
        ),
    ];
    for (cluster, want) in cases {
        let conf = dir.conf(NET, json!({"cluster": cluster}));
        let e = Ipam.add(&ctx("ADD", "c1", "eth0", &conf, "")).unwrap_err();
        assert_eq!(e.code, Code::InvalidConfig, "{e}");
        assert!(e.msg.contains("invalid ipam.cluster config") && e.msg.contains(want), "{e}");
    }
    let conf = dir.conf(
        NET,
        json!({"ranges": [[{"subnet": "10.0.0.0/24"}]],
               "cluster": {"mode": "blocks", "etcdEndpoints": ["http://127.0.0.1:1"], "pool": "10.0.0.0/16"}}),
    );
    let e = Ipam.add(&ctx("ADD", "c1", "eth0", &conf, "")).unwrap_err();
    assert_eq!(e.code, Code::InvalidConfig);
    assert!(e.msg.contains("ipam.ranges") && e.msg.contains("ipam.cluster"), "{e}");
}

#[test]
fn a_changed_block_size_never_overlaps_existing_blocks() {
    let etcd = EtcdServer::start().expect("start etcd");
    let a = Host::new(&etcd, "node-a", json!({"pool": "10.217.0.0/26", "blockSize": 27, "strictAffinity": true}));
    a.add_ok("a0");
    // The other hosts run with /28 blocks: two of the four overlap a's /27.
    let small = json!({"pool": "10.217.0.0/26", "blockSize": 28, "strictAffinity": true});
    let others: Vec<Host> = ["node-b", "node-c", "node-d"].iter().map(|n| Host::new(&etcd, n, small.clone())).collect();
    let results: Vec<_> = others.iter().map(|h| h.add(&format!("{}-0", h.name))).collect();
    assert!(results[0].is_ok() && results[1].is_ok(), "{results:?}");
    assert_eq!(results[2].as_ref().unwrap_err().code, Code::Other(ipam::CODE_EXHAUSTED));
    let all = blocks(&etcd);
    for (i, x) in all.iter().enumerate() {
        for y in &all[i + 1..] {
            assert!(!x.cidr.contains(y.cidr.network()) && !y.cidr.contains(x.cidr.network()), "{x:?} overlaps {y:?}");
        }
    }
}

/// 40 blocks of other hosts in 10.219.0.0/22, each with 60 records:
/// listing the network with its values sends well over 100 kB.
fn plant_busy_blocks(etcd: &EtcdServer) {
    for i in 0..40u32 {
        let cidr: ipnetwork::IpNetwork = format!("10.219.{}.{}/26", i / 4, (i % 4) * 64).parse().unwrap();
        let mut value = cluster_ipam::BlockValue { host: format!("other-{i}"), exclusive: false, ..Default::default() };
        for (n, ip) in cluster_ipam::block_addresses(cidr).take(60).enumerate() {
            value.allocations.insert(
                ip,
                cluster_ipam::Allocation { handle: format!("{:064x}/eth0", n), host: format!("other-{i}") },
            );
        }
        let key = format!("/cni-ipam/{NET}/blocks/{}", cluster_ipam::block_key(cidr));
        etcd.etcdctl(&["put", &key, &value.to_json()]).unwrap();
    }
}

/// Bytes etcd has sent to gRPC clients so far (its Prometheus counter).
fn etcd_sent_bytes(etcd: &EtcdServer) -> f64 {
    use std::io::{Read, Write};
    let port = etcd.endpoint().rsplit(':').next().unwrap().parse::<u16>().unwrap();
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").unwrap();
    let mut body = String::new();
    s.read_to_string(&mut body).unwrap();
    body.lines()
        .find(|l| l.starts_with("etcd_network_client_grpc_sent_bytes_total "))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .expect("etcd_network_client_grpc_sent_bytes_total in /metrics")
}

#[test]
fn non_strict_del_reads_only_its_block_and_status_reports_50_when_etcd_is_needed_and_gone() {
    let mut etcd = EtcdServer::start().unwrap();
    plant_busy_blocks(&etcd);
    let h = Host::new(&etcd, "node-s", json!({"pool": "10.219.0.0/16"}));
    let ip = h.add_ok("s0");
    h.add_ok("s1");
    let listing = {
        let before = etcd_sent_bytes(&etcd);
        etcd.etcdctl(&["get", "/cni-ipam/", "--prefix"]).unwrap();
        etcd_sent_bytes(&etcd) - before
    };
    assert!(listing > 100_000.0, "the pool listing is big: {listing} bytes");

    // DEL with a local lease: one block read and one CAS, not the listing.
    let before = etcd_sent_bytes(&etcd);
    h.del("s0").unwrap();
    let del = etcd_sent_bytes(&etcd) - before;
    eprintln!("non-strict DEL: {del} bytes from etcd; listing the pool: {listing} bytes");
    assert!(del < listing / 20.0, "DEL received {del} bytes from etcd; the listing is {listing}");
    let recs = etcd_allocations(&etcd);
    assert!(!recs.contains_key(&ip_of(&ip).parse::<IpAddr>().unwrap()), "record freed");
    assert!(recs.values().any(|(host, handle)| handle == "s1/eth0" && host == "node-s"), "the other stays");
    // A repeated DEL (no local lease left) still works, by looking everywhere.
    h.del("s0").unwrap();

    // STATUS: non-strict needs etcd for every ADD.
    let status = |host: &Host| Ipam.status(&ctx("STATUS", "", "", &host.conf, ""));
    status(&h).unwrap();
    let strict = Host::new(&etcd, "node-t", json!({"pool": "10.219.0.0/16", "strictAffinity": true}));
    strict.add_ok("t0"); // claims a block with room left
    etcd.kill();
    let e = status(&h).unwrap_err();
    assert_eq!(e.code, Code::Unavailable, "{e}");
    assert!(e.to_string().contains(&etcd.endpoint()), "names the endpoint: {e}");
    let (ok, v) = run_json(BIN, "STATUS", "", "", &h.conf, "");
    assert!(!ok && v["code"] == 50, "{v}");
    // strictAffinity with room in its block: ADDs work without etcd, so STATUS is fine.
    status(&strict).unwrap();
    strict.add_ok("t1");
    etcd.start_again().unwrap();
    status(&h).unwrap();
}

/// Under strictAffinity STATUS says 50 exactly when the next ADD would get 110: the host's
/// blocks are used up locally and every block of the pool is claimed.
#[test]
fn strict_status_reports_50_when_the_pool_is_used_up_and_0_once_an_address_is_free() {
    let etcd = EtcdServer::start().unwrap();
    // Two /30 blocks of one address each.
    let cluster = json!({"pool": "10.219.8.0/29", "blockSize": 30, "strictAffinity": true});
    let a = Host::new(&etcd, "node-a", cluster.clone());
    let b = Host::new(&etcd, "node-b", cluster);
    let status = |host: &Host| Ipam.status(&ctx("STATUS", "", "", &host.conf, ""));
    status(&a).unwrap();
    a.add_ok("a0");
    // a's block is used up, but a free block is left to claim.
    status(&a).unwrap();
    b.add_ok("b0");
    for (h, name) in [(&a, "node-a"), (&b, "node-b")] {
        let e = status(h).unwrap_err();
        assert_eq!(e.code, Code::Unavailable, "{e}");
        let want = format!("no IP addresses available in pool 10.219.8.0/29 for host {name}");
        assert!(e.to_string().contains(&want), "{e}");
    }
    // The ADD agrees.
    let e = a.add("a1").unwrap_err();
    assert_eq!(e.code, Code::Other(110), "{e}");
    let (ok, v) = run_json(BIN, "STATUS", "", "", &a.conf, "");
    assert!(!ok && v["code"] == 50, "{v}");
    // A freed address is room again (local, no etcd needed); b is still full.
    a.del("a0").unwrap();
    status(&a).unwrap();
    assert_eq!(status(&b).unwrap_err().code, Code::Unavailable);
}

#[test]
fn non_strict_add_with_full_cached_blocks_claims_without_listing_and_finds_a_lost_claims_record() {
    let etcd = EtcdServer::start().unwrap();
    plant_busy_blocks(&etcd);
    let listing = {
        let before = etcd_sent_bytes(&etcd);
        etcd.etcdctl(&["get", "/cni-ipam/", "--prefix"]).unwrap();
        etcd_sent_bytes(&etcd) - before
    };
    let h = Host::new(&etcd, "node-u", json!({"pool": "10.220.0.0/24", "blockSize": 28}));
    let first: Vec<String> = (0..13).map(|i| h.add_ok(&format!("u{i}"))).collect();
    assert_eq!(h.cached_blocks().len(), 1, "13 addresses fill one /28");

    // The cached block is full: the 14th ADD claims a second block from the
    // keys alone.
    let before = etcd_sent_bytes(&etcd);
    let fourteenth = h.add_ok("u13");
    let claim = etcd_sent_bytes(&etcd) - before;
    eprintln!("non-strict ADD with a full cached block: {claim} bytes from etcd; listing: {listing} bytes");
    assert!(claim < listing / 20.0, "the claiming ADD received {claim} bytes; the listing is {listing}");
    assert_eq!(h.cached_blocks().len(), 2);
    assert!(!first.contains(&fourteenth));
    for i in 14..26 {
        h.add_ok(&format!("u{i}"));
    }

    // Both blocks full. A claim whose answer was lost left a third block in
    // etcd with this attachment's record, and the claiming marker: the
    // retried ADD returns that address and claims nothing more.
    let cached = h.cached_blocks();
    let lost: ipnetwork::IpNetwork =
        (0..16).map(|i| format!("10.220.0.{}/28", i * 16)).find(|c| !cached.contains(c)).unwrap().parse().unwrap();
    let lost_ip = cluster_ipam::block_addresses(lost).next().unwrap();
    let mut value = cluster_ipam::BlockValue { host: "node-u".into(), exclusive: false, ..Default::default() };
    value.allocations.insert(lost_ip, cluster_ipam::Allocation { handle: "lost/eth0".into(), host: "node-u".into() });
    let key = format!("/cni-ipam/{NET}/blocks/{}", cluster_ipam::block_key(lost));
    etcd.etcdctl(&["put", &key, &value.to_json()]).unwrap();
    std::fs::write(h.dir.net_dir(NET).join("blocks.claiming"), format!("\"{lost}\"")).unwrap();
    let got = h.add_ok("lost");
    assert_eq!(ip_of(&got), lost_ip.to_string(), "the recorded address");
    assert_eq!(h.cached_blocks().len(), 3, "the lost block is adopted: {:?}", h.cached_blocks());
    let mine = blocks(&etcd).into_iter().filter(|b| b.value.host == "node-u").count();
    assert_eq!(mine, 3, "no fourth block");
    let records = etcd_allocations(&etcd);
    assert_eq!(records.values().filter(|(host, handle)| host == "node-u" && handle == "lost/eth0").count(), 1);
    assert_eq!(records.values().filter(|(host, _)| host == "node-u").count(), 27);
}

// ---- Several pools and dual stack (`pools`) ----

impl Host {
    /// ADD that must succeed; returns every "ip/len" of the result.
    fn add_all(&self, id: &str) -> Vec<String> {
        let r = self.add(id).unwrap_or_else(|e| panic!("{}: ADD {id}: {e}", self.name));
        addresses(&r)
    }

    /// The blocks cached for a pool other than the config's first.
    fn cached_blocks_of(&self, pool_key: &str) -> Vec<String> {
        let p = self.dir.net_dir(NET).join(format!("blocks-{pool_key}.json"));
        let Ok(s) = std::fs::read_to_string(p) else { return Vec::new() };
        let v: Value = serde_json::from_str(&s).unwrap();
        v["blocks"].as_array().unwrap().iter().map(|b| b.as_str().unwrap().to_string()).collect()
    }
}

fn net(s: &str) -> ipnetwork::IpNetwork {
    s.parse().unwrap()
}

/// The etcd records of `handle`: address -> host.
fn records_of(etcd: &EtcdServer, handle: &str) -> BTreeMap<IpAddr, String> {
    etcd_allocations(etcd).into_iter().filter(|(_, (_, h))| h == handle).map(|(ip, (host, _))| (ip, host)).collect()
}

const V4_POOL: &str = "10.230.0.0/24";
const V6_POOL: &str = "fd00:230::/120";

fn dual_stack(strict: bool) -> Value {
    json!({"pools": [{"cidr": V4_POOL, "blockSize": 28}, {"cidr": V6_POOL, "blockSize": 124}], "strictAffinity": strict})
}

#[test]
fn dual_stack_add_gives_one_v4_and_one_v6_and_del_and_gc_free_both() {
    let etcd = EtcdServer::start().expect("start etcd");
    for strict in [false, true] {
        let a = Host::new(&etcd, &format!("node-ds-{strict}"), dual_stack(strict));
        let got = a.add_all("c1");
        assert_eq!(got.len(), 2, "strict={strict}: one address per family: {got:?}");
        let (v4, v6) = (net(&got[0]), net(&got[1]));
        assert!(v4.is_ipv4() && net(V4_POOL).contains(v4.ip()) && v4.prefix() == 28, "{got:?}");
        assert!(v6.is_ipv6() && net(V6_POOL).contains(v6.ip()) && v6.prefix() == 124, "{got:?}");
        let r = a.add("c1").unwrap();
        assert_eq!(addresses(&r), got, "ADD is idempotent for both families");
        let gw6 = cluster_ipam::block_range(net(&a.cached_blocks_of("fd00:230::-120")[0])).gateway;
        assert_eq!(r["ips"][1]["gateway"].as_str().unwrap(), gw6.to_string());
        assert_eq!(a.local().len(), 2);
        // CHECK wants an address of each family, and prevResult to match.
        let mut with_prev = a.conf.clone();
        with_prev["prevResult"] = r.clone();
        Ipam.check(&ctx("CHECK", "c1", "eth0", &with_prev, "")).unwrap();
        Ipam.status(&ctx("STATUS", "", "", &a.conf, "")).unwrap();
        if !strict {
            // Non-strict: both recorded in etcd before the ADD returned.
            let recs = records_of(&etcd, "c1/eth0");
            let want: Vec<IpAddr> = vec![v4.ip(), v6.ip()];
            assert_eq!(recs.keys().copied().collect::<Vec<_>>(), want, "{recs:?}");
        }

        a.del("c1").unwrap();
        assert!(a.local().is_empty(), "DEL frees both locally: {:?}", a.local());
        a.gc(&[]).unwrap(); // strict: publish, so etcd shows what is left
        assert!(records_of(&etcd, "c1/eth0").is_empty(), "DEL frees both in etcd");

        let keep = a.add_all("c2");
        let gone = a.add_all("c3");
        assert_eq!((keep.len(), gone.len()), (2, 2));
        if strict {
            // The local allocator's round robin, kept per family (as host-local's
            // range sets): c1's freed addresses are not handed out again at once.
            assert!(keep[0] != got[0] && keep[1] != got[1], "{keep:?} after {got:?}");
        }
        a.gc(&["c2"]).unwrap();
        let local: Vec<String> = a.local().keys().cloned().collect();
        let want: Vec<String> = keep.iter().map(|x| ip_of(x)).collect();
        assert_eq!(local, want, "GC keeps c2's two addresses and frees c3's");
        assert!(records_of(&etcd, "c3/eth0").is_empty(), "GC frees both of c3 in etcd");
        let recs = records_of(&etcd, "c2/eth0");
        assert_eq!(recs.len(), 2, "c2 stays recorded for both families: {recs:?}");
        a.del("c2").unwrap();
    }

    // Through the binary, as a runtime runs it: one result with both.
    let b = Host::new(&etcd, "node-ds-bin", dual_stack(false));
    let (ok, v) = run_json(BIN, "ADD", "bin-ds", "eth0", &b.conf, "");
    assert!(ok, "{v}");
    let got = addresses(&v);
    assert_eq!(got.len(), 2, "{v}");
    assert!(net(&got[0]).is_ipv4() && net(&got[1]).is_ipv6(), "{v}");
    let (ok, v) = run_json(BIN, "DEL", "bin-ds", "eth0", &b.conf, "");
    assert!(ok, "{v}");
    assert!(records_of(&etcd, "bin-ds/eth0").is_empty() && b.local().is_empty());
}

#[test]
fn a_full_v6_pool_fails_the_add_with_110_and_releases_its_v4_address() {
    let etcd = EtcdServer::start().expect("start etcd");
    // One /124 block: the whole IPv6 pool.
    let v6_pool = "fd00:231::/124";
    let room = cluster_ipam::block_addresses(net(v6_pool)).count();
    for strict in [false, true] {
        let cluster = json!({"pools": [{"cidr": "10.231.0.0/24", "blockSize": 28},
                                       {"cidr": v6_pool, "blockSize": 124}], "strictAffinity": strict});
        let a = Host::new(&etcd, &format!("node-v6full-{strict}"), cluster);
        for i in 0..room {
            assert_eq!(a.add_all(&format!("c{i}")).len(), 2);
        }
        let before_local = a.local();
        let before_etcd = etcd_allocations(&etcd);
        let e = a.add("one-too-many").unwrap_err();
        assert_eq!(e.code, Code::Other(ipam::CODE_EXHAUSTED), "strict={strict}: {e}");
        assert!(e.msg.contains(&format!("pool {v6_pool}")) && e.msg.contains("node-v6full"), "{e}");
        // The IPv4 address it took first is released: nothing half-done.
        assert_eq!(a.local(), before_local, "strict={strict}: no lease left behind");
        assert!(records_of(&etcd, "one-too-many/eth0").is_empty());
        if !strict {
            // (A strict claim attempt publishes the host's full blocks: etcd changes there.)
            assert_eq!(etcd_allocations(&etcd), before_etcd, "etcd as before the failed ADD");
        }
        let markers = common::files_with_prefix(&a.dir.net_dir(NET), ".att.one-too-many");
        assert!(markers.is_empty(), "{markers:?}");
        // A DEL frees room; the retried ADD then gets both.
        a.del("c0").unwrap();
        assert_eq!(a.add_all("one-too-many").len(), 2);
        // Give the pool back for the next mode.
        for i in 1..room {
            a.del(&format!("c{i}")).unwrap();
        }
        a.del("one-too-many").unwrap();
        let removed = admin(&["remove-host", "--etcd-endpoints", &etcd.endpoint(), "--network", NET, &a.name]);
        assert!(removed.0, "{removed:?}");
    }
}

#[test]
fn two_v4_pools_the_second_is_used_when_the_first_is_exhausted() {
    let etcd = EtcdServer::start().expect("start etcd");
    for strict in [false, true] {
        // Each pool is one /28 block of 13 addresses.
        let (p1, p2) = if strict { ("10.232.1.0/28", "10.232.2.0/28") } else { ("10.233.1.0/28", "10.233.2.0/28") };
        let cluster = json!({"pools": [{"cidr": p1, "blockSize": 28}, {"cidr": p2, "blockSize": 28}],
                             "strictAffinity": strict});
        let a = Host::new(&etcd, &format!("node-2p-{strict}"), cluster);
        let room = cluster_ipam::block_addresses(net(p1)).count();
        for i in 0..room {
            let got = a.add_all(&format!("c{i}"));
            assert_eq!(got.len(), 1, "one address per family: {got:?}");
            assert!(net(p1).contains(net(&got[0]).ip()), "strict={strict}: {got:?} from the first pool");
        }
        assert!(a.cached_blocks_of(&p2.replace('/', "-")).is_empty(), "the second pool untouched so far");
        let next = a.add_all("c-next");
        assert!(net(p2).contains(net(&next[0]).ip()), "strict={strict}: {next:?} from the second pool");
        assert_eq!(a.cached_blocks_of(&p2.replace('/', "-")), [p2.to_string()]);
        assert_eq!(a.cached_blocks(), [p1.to_string()]);
        // An address freed in the first pool is used before the second pool's.
        a.del("c3").unwrap();
        let back = a.add_all("c-back");
        assert!(net(p1).contains(net(&back[0]).ip()), "strict={strict}: config order: {back:?}");
        // Both full: 110 naming both pools.
        for i in 1..room {
            a.add_all(&format!("d{i}"));
        }
        let e = a.add("late").unwrap_err();
        assert_eq!(e.code, Code::Other(ipam::CODE_EXHAUSTED), "strict={strict}: {e}");
        assert!(e.msg.contains(&format!("pools {p1}, {p2}")), "{e}");
        assert!(!a.local().values().any(|o| o.starts_with("late")));
        // GC covers both pools.
        a.gc(&["c0", "d1"]).unwrap();
        let left: Vec<String> = a.local().values().cloned().collect();
        assert_eq!(left, ["c0\r\neth0", "d1\r\neth0"], "strict={strict}");
        let recs = etcd_allocations(&etcd);
        let mine: Vec<&String> = recs
            .iter()
            .filter(|(ip, _)| net(p1).contains(**ip) || net(p2).contains(**ip))
            .map(|(_, (_, h))| h)
            .collect();
        assert_eq!(mine, ["c0/eth0", "d1/eth0"], "strict={strict}: {recs:?}");
    }
}

/// The binary: with `CNI_COMMAND` set it is the plugin whatever its
/// arguments (clap never sees them); without it, `help` is on stdout with
/// exit 0 and a usage error on stderr with exit 1. No etcd needed.
#[test]
fn the_cni_path_ignores_arguments_and_admin_help_is_on_stdout() {
    let out = Command::new(BIN)
        .env("CNI_COMMAND", "VERSION")
        .args(["blocks", "--help"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("run cni-ipam");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let v: serde_json::Value =
        serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("not the VERSION answer ({e}): {stdout}"));
    assert!(out.status.success() && v["supportedVersions"].is_array(), "{v}");

    let (ok, out, _) = admin(&["--help"]);
    assert!(ok && out.contains("remove-host") && out.contains("blocks") && out.contains("CNI_COMMAND"), "{out}");
    let (ok, out, _) = admin(&["help", "remove-host"]);
    assert!(ok && out.contains("--etcd-endpoints") && out.contains("<HOST>"), "{out}");
    let out = Command::new(BIN).env_remove("CNI_COMMAND").args(["blocks", "--network", "n"]).output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(out.stdout.is_empty() && err.contains("--etcd-endpoints"), "{err}");
}
