//! `conformance bench policy` (root; nftables, iptables-restore, ipset, iperf3):
//! * the baseline it compares against is right: the Felix-style iptables ruleset that
//!   `bench_policy::ipt` renders, loaded into a node namespace, drops exactly the flows the
//!   reference evaluator (`policy::evaluate_path`) denies, for TCP to every port the generated
//!   rules name between the bench's two containers;
//! * a small run of the whole bench (the CLI, JSON) measures every number for both sides.
//!
//! Numbers are not asserted (a shared machine); that each was measured is.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::Command;
use std::time::{Duration, Instant};

use conformance::bench_policy::{gen, ipt, net};
use policy::{evaluate_path, Packet, Verdict};
use serde_json::Value;

#[test]
fn the_iptables_baseline_gives_the_reference_evaluators_verdicts() {
    let mut w = gen::generate(12, 1000, net::CLIENT_IF, net::SERVER_IF).unwrap();
    let (c, s) = (gen::addr_of(w.client), gen::addr_of(w.server));
    // Generated rules never match the client's traffic (by design): on top, policies ordered
    // first that do, with every action, ranges, notPorts and a second tier.
    let (cp, sp) = (gen::profile_of(w.client), gen::profile_of(w.server));
    let extra = format!(
        "apiVersion: projectcalico.org/v3
kind: Tier
metadata:
  name: first
spec:
  order: 10
  defaultAction: Pass
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: first.gate
spec:
  tier: first
  order: 1
  selector: app == 'app{sp}'
  types: [Ingress]
  ingress:
  - action: Deny
    protocol: TCP
    destination:
      ports: [7400]
  - action: Allow
    protocol: TCP
    destination:
      ports: [7401]
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: t-ingress
spec:
  order: 0.5
  selector: app == 'app{sp}'
  types: [Ingress]
  ingress:
  - action: Deny
    protocol: TCP
    destination:
      ports: [7100]
  - action: Pass
    protocol: TCP
    destination:
      ports: ['7200:7202']
  - action: Allow
    protocol: TCP
    source:
      selector: app == 'app{cp}'
    destination:
      ports: [7100, '7300:7303', 7500]
  - action: Allow
    protocol: TCP
    source:
      nets: [{c}/32, 172.16.0.0/24]
    destination:
      notPorts: ['7000:7799']
---
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata:
  name: t-egress
spec:
  order: 0.5
  selector: app == 'app{cp}'
  types: [Egress]
  egress:
  - action: Deny
    protocol: TCP
    destination:
      ports: [7302]
  - action: Allow
    protocol: TCP
    destination:
      selector: app == 'app{sp}'
      ports: ['7000:7999']
"
    );
    w.set.extend(policy::parse_str(std::path::Path::new("extra.yaml"), &extra).unwrap());
    let topo = net::Topology::new(c, s).unwrap();
    let rs = ipt::render(&w.set, &w.endpoints).unwrap();
    topo.node_exec(&["ipset", "restore"], &rs.ipset_file()).unwrap();
    topo.node_exec(&["iptables-restore"], &rs.restore_file()).unwrap();
    // Every destination port and range end the rules name, and the bench's ports.
    let mut ports = BTreeSet::from([gen::IPERF_PORT, gen::CONNECT_PORT, gen::DENIED_PORT]);
    let mine = [7099, 7100, 7101, 7199, 7200, 7202, 7203, 7299, 7300, 7302, 7303, 7304, 7400, 7401, 7500, 7999, 8000];
    ports.extend(mine);
    for p in &w.set.policies {
        for r in p.ingress.iter().chain(&p.egress) {
            for pr in r.destination.ports.iter().chain(&r.destination.not_ports) {
                ports.insert(pr.first);
                ports.insert(pr.last);
            }
        }
    }
    // Every port the evaluator allows (a reset comes back at once) and some it denies (each
    // waits out the timeout).
    let verdicts: Vec<(u16, Verdict)> = ports
        .into_iter()
        .map(|port| (port, evaluate_path(&w.set, &w.endpoints, &Packet::tcp(c.into(), 40000, s.into(), port))))
        .collect();
    let allowed = verdicts.iter().filter(|v| v.1 == Verdict::Allow);
    let denied = verdicts.iter().filter(|v| v.1 == Verdict::Deny && mine.contains(&v.0));
    let denied = denied.chain(verdicts.iter().filter(|v| v.1 == Verdict::Deny).step_by(9).take(8));
    let mut checked = (0, 0);
    eprintln!(
        "verdicts of the ports the test adds: {:?}",
        verdicts.iter().filter(|v| mine.contains(&v.0)).collect::<Vec<_>>()
    );
    let mut wrong = Vec::new();
    for &(port, want) in allowed.chain(denied) {
        // A dropped SYN times out; one that got through is answered (reset, or the iperf
        // port's nothing-listens reset) at once.
        let dropped = net::dropped(&topo, port, Duration::from_millis(400)).unwrap();
        let got = if dropped { Verdict::Deny } else { Verdict::Allow };
        if got != want {
            wrong.push(format!("TCP {c} -> {s}:{port}: kernel {got:?}, evaluator {want:?}"));
        }
        if want == Verdict::Allow {
            checked.0 += 1;
        } else {
            checked.1 += 1;
        }
    }
    let _ = topo.clear();
    assert!(wrong.is_empty(), "{}", wrong.join("\n"));
    // Both verdicts were exercised, and rules besides the bench's own allowed some ports.
    assert!(checked.0 >= 6 && checked.1 >= 8, "allowed/denied ports checked: {checked:?}");
}

fn conformance() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_conformance"))
}

fn positive(v: &Value, what: &str) {
    let x = v.as_f64().unwrap_or_else(|| panic!("{what} is not a number: {v}"));
    assert!(x.is_finite() && x > 0.0, "{what} = {x}");
}

#[test]
fn a_small_bench_policy_measures_both_sides() {
    let t = Instant::now();
    let out = Command::new(conformance())
        .args(["bench", "policy", "--endpoints", "40", "--rules", "60", "--n", "1", "--connects", "200"])
        .args(["--iperf-secs", "1", "--round-trips", "2000", "--json"])
        .output()
        .expect("run conformance");
    let (so, se) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    eprintln!("bench policy: {:?} in {:.1} s\n{so}{se}", out.status, t.elapsed().as_secs_f64());
    assert!(out.status.success(), "bench policy failed:\n{so}\n{se}");
    let r: Value = serde_json::from_str(so.trim()).unwrap_or_else(|e| panic!("not JSON ({e}):\n{so}"));
    assert_eq!((r["endpoints"].as_u64(), r["rules"].as_u64()), (Some(40), Some(62)));
    assert!(r["iptablesBackend"].as_str().is_some_and(|b| b.starts_with("nft") || b.starts_with("legacy")));
    for side in ["ours", "iptables"] {
        let s = &r[side];
        for k in
            ["fullKernelMs", "editKernelMs", "addKernelMs", "connectsPerS", "connectCpuUs", "roundTripCpuUs", "gbps"]
        {
            positive(&s[k][0], &format!("{side}.{k}"));
        }
        positive(&s["rules"], &format!("{side}.rules"));
        assert_eq!(s["deltas"], true, "{side}: edit and add applied as deltas");
    }
    positive(&r["ours"]["addNewEngineMs"][0], "ours.addNewEngineMs");
    for side in ["none", "conntrack"] {
        for k in ["connectsPerS", "connectCpuUs", "roundTripCpuUs", "gbps"] {
            positive(&r[side][k][0], &format!("{side}.{k}"));
        }
    }
}
