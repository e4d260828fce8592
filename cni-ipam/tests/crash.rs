//! kill -9 at random instants: the store never loses a lease of a live
//! container, never leases an address twice, and keeps nothing for
//! containers the runtime has deleted.
//!
//! The test plays the runtime: it runs `cni-ipam` ADD or DEL, SIGKILLs it
//! after a random delay (or lets it finish), and after a killed ADD either
//! issues the DEL a runtime would or retries the ADD (idempotent path);
//! a killed DEL is retried. A container is live once an ADD completed and
//! printed its result.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::ExitStatusExt;
use std::time::{Duration, Instant};

use common::*;
use serde_json::{json, Value};

const ITERATIONS: usize = 500;
const TIME_BUDGET: Duration = Duration::from_secs(30);
const MAX_LIVE: usize = 24;

#[derive(Default, Debug)]
struct Stats {
    runs: usize,
    kills_landed: usize,
    kills_after_exit: usize,
    killed_add_left_lease: usize,
    killed_add_left_partial: usize,
    killed_add_left_marker_only: usize,
    killed_left_temp: usize,
    killed_left_shared_spare: usize,
    killed_del_left_lease: usize,
    retried_adds: usize,
}

struct World {
    t: TestDir,
    conf: Value,
    live: BTreeMap<String, Vec<String>>,
    stats: Stats,
}

const NET: &str = "crash";

impl World {
    fn dir(&self) -> std::path::PathBuf {
        self.t.net_dir(NET)
    }

    fn owned_by(&self, id: &str) -> Vec<String> {
        let want = format!("{id}\r\neth0");
        leases(&self.dir()).into_iter().filter(|(_, v)| *v == want).map(|(k, _)| k).collect()
    }

    /// Runs to completion; panics on failure.
    fn must(&mut self, cmd: &str, id: &str) -> Value {
        let (ok, v) = run_json(BIN, cmd, id, "eth0", &self.conf, "");
        assert!(ok, "{cmd} {id} failed: {v}");
        v
    }

    fn record_add(&mut self, id: &str, v: &Value) {
        let ips: Vec<String> = addresses(v).iter().map(|a| ip_of(a)).collect();
        assert_eq!(ips.len(), 2, "{v}");
        self.live.insert(id.to_string(), ips);
    }

    /// Runs `cmd`, killing it after `kill_after` if still running.
    /// Returns Some(output) when it completed, None when the kill landed.
    fn attempt(&mut self, cmd: &str, id: &str, kill_after: Option<Duration>) -> Option<(bool, Value)> {
        self.stats.runs += 1;
        let mut child = spawn(BIN, cmd, id, "eth0", &self.conf, "");
        if let Some(d) = kill_after {
            if !d.is_zero() {
                std::thread::sleep(d);
            }
            let _ = child.kill();
        }
        let out = child.wait_with_output().unwrap();
        if out.status.signal() == Some(libc::SIGKILL) {
            self.stats.kills_landed += 1;
            return None;
        }
        if kill_after.is_some() {
            self.stats.kills_after_exit += 1;
        }
        let v = if out.stdout.is_empty() { Value::Null } else { serde_json::from_slice(&out.stdout).unwrap() };
        Some((out.status.success(), v))
    }

    /// Counts what a killed writer left behind (evidence the kill landed
    /// inside the locked section).
    fn note_leftovers(&mut self) {
        let dir = self.dir();
        if !files_with_prefix(&dir, ".tmp.").is_empty() {
            self.stats.killed_left_temp += 1;
        }
        let shared = files_with_prefix(&dir, ".spare.")
            .iter()
            .any(|s| std::fs::symlink_metadata(dir.join(s)).is_ok_and(|m| m.nlink() > 1));
        if shared {
            self.stats.killed_left_shared_spare += 1;
        }
    }

    fn check(&self, when: &str) {
        let leases = leases(&self.dir());
        let mut seen = BTreeSet::new();
        for (id, ips) in &self.live {
            for ip in ips {
                assert!(seen.insert(ip.clone()), "{when}: {ip} given to two live containers");
                assert_eq!(
                    leases.get(ip).map(String::as_str),
                    Some(format!("{id}\r\neth0").as_str()),
                    "{when}: lease of live {id} at {ip} lost or wrong"
                );
            }
            // The index of the idempotent ADD must cover every lease.
            assert!(self.dir().join(format!(".att.{id}@eth0")).exists(), "{when}: live {id} has no attachment marker");
        }
        for (ip, owner) in &leases {
            let id = owner.split("\r\n").next().unwrap_or("");
            let ok = self.live.get(id).is_some_and(|ips| ips.contains(ip) && *owner == format!("{id}\r\neth0"));
            assert!(ok, "{when}: lease {ip} -> {owner:?} belongs to no live container");
        }
    }
}

#[test]
fn kill_9_at_random_instants_keeps_the_store_consistent() {
    let t = TestDir::new("crash");
    let conf = t.conf(NET, json!({"ranges":[[{"subnet":"10.40.0.0/26"}],[{"subnet":"fd40::/122"}]]}));
    let mut w = World { t, conf, live: BTreeMap::new(), stats: Stats::default() };
    let mut rng = rng_from_time();
    let started = Instant::now();
    let mut iterations = 0;
    while iterations < ITERATIONS && started.elapsed() < TIME_BUDGET {
        iterations += 1;
        let kill_after = match rng.below(10) {
            0 | 1 => None,
            _ => Some(Duration::from_micros(rng.below(2001))),
        };
        let do_add = w.live.is_empty() || (w.live.len() < MAX_LIVE && rng.below(100) < 65);
        if do_add {
            let id = format!("k{iterations}");
            match w.attempt("ADD", &id, kill_after) {
                Some((true, v)) => w.record_add(&id, &v),
                Some((false, v)) => panic!("ADD {id} failed: {v}"),
                None => {
                    let owned = w.owned_by(&id).len();
                    let marker = w.dir().join(format!(".att.{id}@eth0")).exists();
                    match owned {
                        2 => w.stats.killed_add_left_lease += 1,
                        1 => w.stats.killed_add_left_partial += 1,
                        _ if marker => w.stats.killed_add_left_marker_only += 1,
                        _ => {}
                    }
                    w.note_leftovers();
                    // A lease without its marker would defeat idempotent ADD.
                    assert!(owned == 0 || marker, "killed ADD {id}: lease without marker");
                    if rng.below(100) < 30 {
                        w.stats.retried_adds += 1;
                        let v = w.must("ADD", &id);
                        w.record_add(&id, &v);
                        if owned == 2 {
                            assert_eq!(
                                BTreeSet::from_iter(w.live[&id].clone()),
                                BTreeSet::from_iter(w.owned_by(&id)),
                                "retried ADD {id} did not return the existing lease"
                            );
                        }
                    } else {
                        w.must("DEL", &id);
                    }
                }
            }
        } else {
            // Mostly live containers; sometimes one that is already gone.
            let id = if rng.below(10) == 0 {
                format!("k{}", rng.below(iterations as u64))
            } else {
                let n = rng.below(w.live.len() as u64) as usize;
                w.live.keys().nth(n).unwrap().clone()
            };
            match w.attempt("DEL", &id, kill_after) {
                Some((true, _)) => {}
                Some((false, v)) => panic!("DEL {id} failed: {v}"),
                None => {
                    if !w.owned_by(&id).is_empty() {
                        w.stats.killed_del_left_lease += 1;
                    }
                    w.note_leftovers();
                    w.must("DEL", &id);
                }
            }
            w.live.remove(&id);
        }
        if iterations % 25 == 0 {
            w.check(&format!("iteration {iterations}"));
        }
    }
    w.check("end");

    // One more ADD and DEL clear whatever a killed writer left.
    let v = w.must("ADD", "final");
    w.record_add("final", &v);
    w.check("after final ADD");
    w.must("DEL", "final");
    w.live.remove("final");
    w.check("after final DEL");
    let dir = w.dir();
    assert!(files_with_prefix(&dir, ".tmp.").is_empty(), "temp files remain");
    // Recycled inodes: bounded, and none is still another file's name.
    let spares = files_with_prefix(&dir, ".spare.");
    assert!(spares.len() <= ipam::store::disk::SPARE_SLOTS, "{spares:?}");
    for s in &spares {
        let md = std::fs::symlink_metadata(dir.join(s)).unwrap();
        assert_eq!(md.nlink(), 1, "spare {s} shares its inode");
    }
    let markers = files_with_prefix(&dir, ".att.");
    for m in &markers {
        let id = m.trim_start_matches(".att.").split('@').next().unwrap();
        assert!(w.live.contains_key(id), "marker {m} of a deleted container");
    }

    eprintln!(
        "crash test: {iterations} iterations in {:.1}s, {} live at the end\n{:#?}",
        started.elapsed().as_secs_f64(),
        w.live.len(),
        w.stats
    );
    assert!(w.stats.kills_landed > 0, "no kill landed: the test tested nothing");
}
