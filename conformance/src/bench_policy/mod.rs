//! `conformance bench policy`: our policy engine (the `policy` crate's compiler and its
//! nftables engine) against the same rules rendered as a Felix-style linear iptables ruleset
//! (`iptables-restore` + ipsets), in the same run and the same network namespaces:
//! a full apply from nothing, one policy edit and one endpoint add on top, and what a
//! connection and a stream cost with the policy against without. Numbers are printed, never
//! asserted; a ruleset that does not drop the denied flow or does not pass the allowed one
//! fails the run (it would be measuring nothing).
//!
//! [`gen`] makes the workload, [`ipt`] renders the baseline, [`net`] is the traffic side.

pub mod gen;
pub mod ipt;
pub mod net;
mod ours;

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use testkit::util::{median, next_id, unique_name, R};
use testkit::{bail, ensure};

use gen::{CONNECT_PORT, DENIED_PORT, IPERF_PORT};

pub struct Opts {
    pub endpoints: usize,
    pub rules: usize,
    /// Rounds: every number is a median over them.
    pub n: usize,
    /// TCP connections per connection-rate sample.
    pub connects: usize,
    pub iperf_secs: u32,
    /// One-byte round trips over an established connection per CPU sample.
    pub round_trips: usize,
    /// Only the iptables side and the no-policy numbers.
    pub baseline_only: bool,
}

/// The iptables that `iptables-restore` is (Debian's alternatives pick one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum IptablesBackend {
    Nft,
    Legacy,
}

impl IptablesBackend {
    pub fn detect() -> R<IptablesBackend> {
        let v = testkit::util::run("iptables-restore", &["-V"])?;
        if v.contains("nf_tables") {
            Ok(IptablesBackend::Nft)
        } else if v.contains("legacy") {
            Ok(IptablesBackend::Legacy)
        } else {
            bail!("iptables-restore -V: cannot tell the backend from {v:?}")
        }
    }
    fn name(self) -> &'static str {
        match self {
            IptablesBackend::Nft => "nft (iptables-nft, the kernel's nf_tables with xtables matches)",
            IptablesBackend::Legacy => "legacy (x_tables)",
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// Samples of one side (ours or iptables): times in ms.
#[derive(Default, Debug, Clone)]
pub struct Side {
    /// Compile / render time (userspace, no kernel).
    pub full_compile: Vec<f64>,
    /// Loading into the kernel (ours: one nftables transaction; iptables: ipset restore +
    /// iptables-restore).
    pub full_kernel: Vec<f64>,
    pub edit_compile: Vec<f64>,
    pub edit_kernel: Vec<f64>,
    pub add_compile: Vec<f64>,
    pub add_kernel: Vec<f64>,
    /// Ours: the kernel's part of the apply (sending the batch, collecting the acks).
    pub full_commit: Vec<f64>,
    pub edit_commit: Vec<f64>,
    pub add_commit: Vec<f64>,
    /// Ours: the endpoint add through a new engine reading the state file (the plugin's ADD).
    pub add_fresh_kernel: Vec<f64>,
    pub connects_per_s: Vec<f64>,
    /// The connecting thread's CPU per connection (µs): the path's cost, load-independent.
    pub connect_cpu_us: Vec<f64>,
    /// Client and server threads' CPU per one-byte round trip over an established
    /// connection (µs): two established packets' whole path, load-independent.
    pub round_trip_cpu_us: Vec<f64>,
    pub gbps: Vec<f64>,
    /// Rules in the kernel after the full apply.
    pub rules: usize,
    /// What the edit and the add touched (chains rewritten, or netlink operations).
    pub edit_touched: usize,
    pub add_touched: usize,
    /// Whether every edit and add was applied as a delta (ours; iptables always is).
    pub deltas: bool,
}

#[derive(Default, Debug)]
pub struct Report {
    pub endpoints: usize,
    pub rules: usize,
    pub policies: usize,
    pub n: usize,
    pub connects: usize,
    pub iperf_secs: u32,
    pub round_trips: usize,
    pub backend: String,
    pub congestion_control: String,
    /// No policy and no conntrack: an empty node namespace.
    pub none: Side,
    /// No policy, conntrack on (what every policy turns on): the baseline of the goal.
    pub conntrack: Side,
    pub ours: Option<Side>,
    pub iptables: Side,
    /// Chains of the iptables file, and rules a connection between the two endpoints walks.
    pub ipt_chains: usize,
}

fn total(a: &[f64], b: &[f64]) -> Vec<f64> {
    a.iter().zip(b).map(|(x, y)| x + y).collect()
}

/// Runs the bench; `progress` gets a line per step (stderr).
pub fn run(o: &Opts, progress: &mut dyn FnMut(&str)) -> R<Report> {
    ensure!(o.n >= 1, "--n must be at least 1");
    ensure!(o.connects >= 1, "--connects must be at least 1");
    ensure!(o.round_trips >= 1, "--round-trips must be at least 1");
    for tool in ["iptables-restore", "ipset", "iperf3", "nft", "ip", "ss"] {
        ensure!(testkit::util::have_tool(tool), "{tool} not found (scripts/testbed.sh installs it)");
    }
    let backend = IptablesBackend::detect()?;
    let w = gen::generate(o.endpoints, o.rules, net::CLIENT_IF, net::SERVER_IF)?;
    let (ca, sa) = (gen::addr_of(w.client), gen::addr_of(w.server));
    progress(&format!(
        "policy bench: {} endpoints, {} rules in {} policies; iptables backend {}",
        w.endpoints.len(),
        w.rules,
        w.set.policies.len(),
        backend.name()
    ));
    let topo = net::Topology::new(ca, sa)?;
    let state_dir = std::env::temp_dir().join(format!("{}-policybench", unique_name(next_id())));
    let res = rounds(o, &w, &topo, &state_dir, progress);
    let _ = topo.clear();
    let _ = std::fs::remove_dir_all(&state_dir);
    let (none, conntrack, ours, iptables, ipt_chains) = res?;
    let cc = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_congestion_control").unwrap_or_default();
    Ok(Report {
        endpoints: w.endpoints.len(),
        rules: w.rules,
        policies: w.set.policies.len(),
        n: o.n,
        connects: o.connects,
        iperf_secs: o.iperf_secs,
        round_trips: o.round_trips,
        backend: backend.name().to_string(),
        congestion_control: cc.trim().to_string(),
        none,
        conntrack,
        ours,
        iptables,
        ipt_chains,
    })
}

type Sides = (Side, Side, Option<Side>, Side, usize);

/// Ctrl-C (or SIGTERM) ends the run between steps, the namespaces and tables cleaned up.
fn not_interrupted() -> R<()> {
    ensure!(!testkit::util::interrupted(), "interrupted");
    Ok(())
}

fn traffic(topo: &net::Topology, o: &Opts, side: &mut Side, what: &str, check_drop: bool) -> R<()> {
    not_interrupted()?;
    if check_drop {
        ensure!(
            net::dropped(topo, DENIED_PORT, Duration::from_millis(500))?,
            "{what}: a connection to port {DENIED_PORT}, which the policy denies, was not dropped"
        );
    }
    let (rate, cpu) = net::connect_rate(topo, CONNECT_PORT, o.connects)?;
    side.connects_per_s.push(rate);
    side.connect_cpu_us.push(cpu);
    // The connections were reset (no TIME_WAIT), so the port is free for the round trips.
    side.round_trip_cpu_us.push(net::round_trip_cpu(topo, CONNECT_PORT, o.round_trips)?);
    side.gbps.push(net::iperf(topo, IPERF_PORT, o.iperf_secs)?);
    Ok(())
}

fn rounds(
    o: &Opts,
    w: &gen::Workload,
    topo: &net::Topology,
    state_dir: &std::path::Path,
    progress: &mut dyn FnMut(&str),
) -> R<Sides> {
    // The baseline's three states: the workload, after the edit, after the endpoint add.
    let t = Instant::now();
    let base = ipt::render(&w.set, &w.endpoints)?;
    let render_ms = ms(t.elapsed());
    let mut edited_set = w.set.clone();
    let edited_name = gen::edit(&mut edited_set)?;
    let t = Instant::now();
    let edited = ipt::render(&edited_set, &w.endpoints)?;
    let edit_render_ms = ms(t.elapsed());
    let mut more = w.endpoints.clone();
    more.push(gen::endpoint(w.endpoints.len(), None));
    let t = Instant::now();
    let added = ipt::render(&edited_set, &more)?;
    let add_render_ms = ms(t.elapsed());
    let edit_delta = base.delta(&edited);
    let add_delta = edited.delta(&added);
    progress(&format!(
        "iptables ruleset: {} rules in {} chains, {} ipsets; the edit of {edited_name} rewrites {} chains, the add {}",
        base.rule_count(),
        base.chains.len() + 3,
        base.sets.len(),
        edit_delta.chains,
        add_delta.chains
    ));
    let (ipset_file, restore_file) = (base.ipset_file(), base.restore_file());
    let inputs = std::sync::Arc::new(ours::Inputs {
        set: w.set.clone(),
        endpoints: w.endpoints.clone(),
        edited: edited_set.clone(),
        more: more.clone(),
    });

    let mut none = Side::default();
    let mut conntrack = Side::default();
    let mut ours = (!o.baseline_only).then(Side::default);
    let mut ipt = Side {
        rules: base.rule_count(),
        edit_touched: edit_delta.chains,
        add_touched: add_delta.chains,
        deltas: true,
        ..Side::default()
    };
    // The sides take turns within a round, in reverse order every other round, so that a
    // change of the machine's load during a run spreads over all of them alike.
    let mut order = [Which::None, Which::Conntrack, Which::Ours, Which::Iptables];
    for round in 0..o.n {
        for which in order {
            not_interrupted()?;
            progress(&format!("round {} of {}: {}", round + 1, o.n, which.name()));
            topo.clear()?;
            match which {
                Which::None => traffic(topo, o, &mut none, "no policy", false)?,
                Which::Conntrack => {
                    net::conntrack_only(topo)?;
                    traffic(topo, o, &mut conntrack, "no policy, conntrack on", false)?;
                    let n = net::conntrack_count(topo)?;
                    ensure!(n > 0, "no policy, conntrack on: the node namespace tracks no connection");
                }
                Which::Ours => {
                    let Some(s) = ours.as_mut() else { continue };
                    let _ = std::fs::remove_dir_all(state_dir);
                    ours::round(topo, &inputs, state_dir, s, |s| traffic(topo, o, s, "ours", round == 0))?;
                }
                Which::Iptables => {
                    let k1 = topo.node_exec(&["ipset", "restore"], &ipset_file)?;
                    let k2 = topo.node_exec(&["iptables-restore"], &restore_file)?;
                    ipt.full_compile.push(render_ms);
                    ipt.full_kernel.push(ms(k1 + k2));
                    traffic(topo, o, &mut ipt, "iptables", round == 0)?;
                    let load = |d: &ipt::Delta| -> R<f64> {
                        let mut t = Duration::ZERO;
                        if !d.ipset_before.is_empty() {
                            t += topo.node_exec(&["ipset", "restore"], &d.ipset_before)?;
                        }
                        t += topo.node_exec(&["iptables-restore", "--noflush"], &d.iptables)?;
                        if !d.ipset_after.is_empty() {
                            t += topo.node_exec(&["ipset", "restore"], &d.ipset_after)?;
                        }
                        Ok(ms(t))
                    };
                    ipt.edit_compile.push(edit_render_ms);
                    ipt.edit_kernel.push(load(&edit_delta)?);
                    ipt.add_compile.push(add_render_ms);
                    ipt.add_kernel.push(load(&add_delta)?);
                    if round == 0 {
                        // The deltas must leave exactly what a full load of the final state gives.
                        let got = topo.node_exec_out(&["iptables-save", "-t", "filter"])?;
                        topo.clear()?;
                        topo.node_exec(&["ipset", "restore"], &added.ipset_file())?;
                        topo.node_exec(&["iptables-restore"], &added.restore_file())?;
                        let want = topo.node_exec_out(&["iptables-save", "-t", "filter"])?;
                        ensure!(
                            rules_of(&got) == rules_of(&want),
                            "iptables: edit + add deltas differ from a full load of the final ruleset"
                        );
                    }
                }
            }
            topo.clear()?;
        }
        order.reverse();
    }
    Ok((none, conntrack, ours, ipt, base.chains.len() + 3))
}

/// The four sides of a round.
#[derive(Debug, Clone, Copy)]
enum Which {
    None,
    Conntrack,
    Ours,
    Iptables,
}

impl Which {
    fn name(self) -> &'static str {
        match self {
            Which::None => "no policy",
            Which::Conntrack => "no policy, conntrack on",
            Which::Ours => "ours",
            Which::Iptables => "iptables",
        }
    }
}

/// The rule lines of `iptables-save` output, sorted per chain (counters and comments off).
fn rules_of(save: &str) -> Vec<String> {
    let mut v: Vec<String> = save.lines().filter(|l| l.starts_with("-A ")).map(str::to_string).collect();
    v.sort();
    v
}

fn med(v: &[f64]) -> f64 {
    median(v)
}

impl Report {
    pub fn table(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "== policy: {} endpoints, {} rules in {} policies; medians of {} rounds; iptables backend {}",
            self.endpoints, self.rules, self.policies, self.n, self.backend
        );
        let i = &self.iptables;
        let row = |s: &mut String, what: &str, ours: Option<f64>, base: Option<f64>, goal: &str, met: Option<bool>| {
            let f = |v: Option<f64>| v.map_or("-".to_string(), |v| format!("{v:.1}"));
            let r = match (ours, base) {
                (Some(o), Some(b)) => format!("{:.1}x", b / o),
                _ => "-".to_string(),
            };
            let m = match met {
                Some(true) => "met",
                Some(false) => "NOT met",
                None => "",
            };
            let _ = writeln!(s, "{what:<46} {:>10} {:>10} {r:>9}  {goal} {m}", f(ours), f(base));
        };
        let _ = writeln!(s, "{:<46} {:>10} {:>10} {:>9}  goal", "ms", "ours", "iptables", "ipt/ours");
        let t = |a: &[f64], b: &[f64]| med(&total(a, b));
        let o = self.ours.as_ref();
        let ok = |v: Option<f64>, goal: f64| v.map(|v| v < goal);
        let full = o.map(|o| t(&o.full_compile, &o.full_kernel));
        row(
            &mut s,
            "full apply from nothing, total",
            full,
            Some(t(&i.full_compile, &i.full_kernel)),
            "< 100 ms",
            ok(full, 100.0),
        );
        row(
            &mut s,
            "  compile (ours) / render (iptables)",
            o.map(|o| med(&o.full_compile)),
            Some(med(&i.full_compile)),
            "",
            None,
        );
        row(
            &mut s,
            "  apply (engine) / ipset + iptables-restore",
            o.map(|o| med(&o.full_kernel)),
            Some(med(&i.full_kernel)),
            "",
            None,
        );
        row(&mut s, "    of which the kernel's commit", o.map(|o| med(&o.full_commit)), None, "", None);
        let edit = o.map(|o| t(&o.edit_compile, &o.edit_kernel));
        row(
            &mut s,
            "one policy edit on top, total",
            edit,
            Some(t(&i.edit_compile, &i.edit_kernel)),
            "< 5 ms",
            ok(edit, 5.0),
        );
        row(&mut s, "  compile / render", o.map(|o| med(&o.edit_compile)), Some(med(&i.edit_compile)), "", None);
        row(
            &mut s,
            "  apply (delta) / iptables-restore --noflush",
            o.map(|o| med(&o.edit_kernel)),
            Some(med(&i.edit_kernel)),
            "< 5 ms",
            ok(o.map(|o| med(&o.edit_kernel)), 5.0),
        );
        row(&mut s, "    of which the kernel's commit", o.map(|o| med(&o.edit_commit)), None, "", None);
        let add = o.map(|o| t(&o.add_compile, &o.add_kernel));
        row(
            &mut s,
            "one endpoint add on top, total",
            add,
            Some(t(&i.add_compile, &i.add_kernel)),
            "< 5 ms",
            ok(add, 5.0),
        );
        row(&mut s, "  compile / render", o.map(|o| med(&o.add_compile)), Some(med(&i.add_compile)), "", None);
        row(
            &mut s,
            "  apply (delta) / ipset + --noflush",
            o.map(|o| med(&o.add_kernel)),
            Some(med(&i.add_kernel)),
            "< 5 ms",
            ok(o.map(|o| med(&o.add_kernel)), 5.0),
        );
        row(&mut s, "    of which the kernel's commit", o.map(|o| med(&o.add_commit)), None, "", None);
        row(&mut s, "  apply by a new engine (plugin ADD)", o.map(|o| med(&o.add_fresh_kernel)), None, "", None);
        let _ = writeln!(
            s,
            "rules in the kernel: ours {}, iptables {} in {} chains; the edit rewrote {} iptables chains{}, the add {}{}",
            o.map_or("-".into(), |o| o.rules.to_string()),
            i.rules,
            self.ipt_chains,
            i.edit_touched,
            o.map_or(String::new(), |o| format!(" (ours {} netlink ops)", o.edit_touched)),
            i.add_touched,
            o.map_or(String::new(), |o| format!(" (ours {} netlink ops)", o.add_touched)),
        );
        if let Some(o) = o {
            if !o.deltas {
                let _ = writeln!(s, "note: an edit or add of ours was applied as a full replace, not a delta");
            }
        }
        let _ = writeln!(
            s,
            "== traffic between two containers on one bridge (TCP; {} connects and {} one-byte round trips per sample, iperf3 {} s one stream, congestion control {}); median [min-max] of {} rounds",
            self.connects, self.round_trips, self.iperf_secs, self.congestion_control, self.n
        );
        let (n, c) = (&self.none, &self.conntrack);
        let _ = writeln!(s, "{:<40} {:>20} {:>20} {:>20} {:>20}", "", "no policy", "conntrack on", "ours", "iptables");
        let traffic_row = |s: &mut String, what: &str, get: &dyn Fn(&Side) -> &[f64], prec: usize| {
            let cell = |x: Option<&Side>| {
                x.map_or("-".to_string(), |x| {
                    let v = get(x);
                    let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
                    let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                    format!("{:.p$} [{lo:.p$}-{hi:.p$}]", med(v), p = prec)
                })
            };
            let _ = writeln!(
                s,
                "{what:<40} {:>20} {:>20} {:>20} {:>20}",
                cell(Some(n)),
                cell(Some(c)),
                cell(o),
                cell(Some(i))
            );
        };
        traffic_row(&mut s, "connections/s", &|x| &x.connects_per_s, 0);
        traffic_row(&mut s, "CPU per connection, µs (connecting thread)", &|x| &x.connect_cpu_us, 1);
        traffic_row(&mut s, "CPU per round trip, µs (both threads)", &|x| &x.round_trip_cpu_us, 2);
        traffic_row(&mut s, "iperf3 Gbit/s", &|x| &x.gbps, 2);
        let ratios = |s: &mut String, base: &Side, what: &str| {
            let cr = |x: &Side| med(&x.connects_per_s) / med(&base.connects_per_s);
            let tr = |x: &Side| med(&x.gbps) / med(&base.gbps);
            let _ = writeln!(
                s,
                "ratio to {what}: connections/s ours {} iptables {:.2}; throughput ours {} iptables {:.2}",
                o.map_or("-".into(), |o| format!("{:.2}", cr(o))),
                cr(i),
                o.map_or("-".into(), |o| format!("{:.3}", tr(o))),
                tr(i),
            );
        };
        ratios(&mut s, c, "no policy, conntrack on");
        ratios(&mut s, n, "no policy, no conntrack");
        let rt = |x: &Side| med(&x.round_trip_cpu_us) - med(&c.round_trip_cpu_us);
        let _ = writeln!(
            s,
            "an established packet's cost over conntrack alone (half the round trip's extra CPU): ours {} ns, iptables {:.0} ns; conntrack over none {:.0} ns",
            o.map_or("-".into(), |o| format!("{:.0}", rt(o) * 500.0)),
            rt(i) * 500.0,
            (med(&c.round_trip_cpu_us) - med(&n.round_trip_cpu_us)) * 500.0
        );
        // The goal is judged on each round's own pair (ours and conntrack-on ran next to each
        // other), the median of those ratios: a drift of the machine's speed over the run
        // moves both halves of a pair, where it would move a ratio of medians.
        let paired = |x: &Side| -> Vec<f64> { x.gbps.iter().zip(&c.gbps).map(|(a, b)| a / b).collect() };
        let spread = |v: &[f64]| {
            let lo = v.iter().copied().fold(f64::INFINITY, f64::min);
            let hi = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
            format!("[{lo:.3}-{hi:.3}]")
        };
        let ip = paired(i);
        let _ = writeln!(
            s,
            "throughput per round, paired with conntrack on (median [min-max]): ours {}, iptables {:.3} {}",
            o.map_or("-".into(), |o| {
                let v = paired(o);
                format!("{:.3} {}", med(&v), spread(&v))
            }),
            med(&ip),
            spread(&ip)
        );
        let goal = o.map(|o| med(&paired(o)));
        let _ = writeln!(
            s,
            "goal: throughput with our policy >= 0.95 of without (conntrack on both, paired per round): {}",
            goal.map_or("not measured".to_string(), |g| format!(
                "{g:.3}, {}",
                if g >= 0.95 { "met" } else { "NOT met" }
            ))
        );
        if let Some(o) = o {
            let _ = writeln!(
                s,
                "ratio ours/iptables: connections/s {:.2}, CPU per connection {:.2}, CPU per round trip {:.2}, throughput {:.2}",
                med(&o.connects_per_s) / med(&i.connects_per_s),
                med(&o.connect_cpu_us) / med(&i.connect_cpu_us),
                med(&o.round_trip_cpu_us) / med(&i.round_trip_cpu_us),
                med(&o.gbps) / med(&i.gbps)
            );
        }
        s
    }

    pub fn to_json(&self) -> Value {
        let side = |x: &Side| {
            json!({
                "fullCompileMs": x.full_compile, "fullKernelMs": x.full_kernel,
                "editCompileMs": x.edit_compile, "editKernelMs": x.edit_kernel,
                "addCompileMs": x.add_compile, "addKernelMs": x.add_kernel,
                "fullCommitMs": x.full_commit, "editCommitMs": x.edit_commit, "addCommitMs": x.add_commit,
                "addNewEngineMs": x.add_fresh_kernel,
                "connectsPerS": x.connects_per_s, "connectCpuUs": x.connect_cpu_us,
                "roundTripCpuUs": x.round_trip_cpu_us, "gbps": x.gbps, "rules": x.rules,
                "editTouched": x.edit_touched, "addTouched": x.add_touched, "deltas": x.deltas,
            })
        };
        json!({
            "endpoints": self.endpoints, "rules": self.rules, "policies": self.policies, "n": self.n,
            "connects": self.connects, "roundTrips": self.round_trips, "iperfSecs": self.iperf_secs,
            "iptablesBackend": self.backend,
            "congestionControl": self.congestion_control,
            "none": side(&self.none), "conntrack": side(&self.conntrack), "ours": self.ours.as_ref().map(side), "iptables": side(&self.iptables),
            "iptablesChains": self.ipt_chains,
        })
    }
}
