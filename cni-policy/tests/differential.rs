//! The differential test: seeded random policy files (Calico tiers, orders, Allow/Deny/Pass/Log,
//! nets, selectors, namespace selectors, ports, ICMP; Kubernetes pod/namespace selectors,
//! ipBlock with except, ports with endPort), random endpoints and labels in two namespaces,
//! random first packets between them and the node. For every packet, what the kernel does
//! (a probe through the real namespaces is answered or not) must equal
//! `policy::eval::evaluate_path`, the reference evaluator written from the specifications.
//! Each seed runs a first batch of packets, then four changes in a random order (a policy
//! edited or removed under `cni-policy watch`, a DEL, a relabel, a new ADD), each followed by a
//! batch judged against the new state, so the engine's incremental updates are compared too.
//! Draws whose batch the evaluator would judge (nearly) all one way are drawn again.
//!
//! Each seed is printed; `POLICY_DIFF_SEED=N` runs that seed alone, with the same policies,
//! endpoints, addresses, changes and packets. `POLICY_DIFF_SEEDS` and `POLICY_DIFF_PACKETS`
//! change how many seeds and packets per batch (default 7 seeds × 5 batches × 48: about 75 s
//! on 2 cores). A seed picks the network too: mostly cni-bridge (bridged), a quarter the
//! reference `ptp` (routed veths, the shape of cni-bgp's; its ADDs are slower).
//! Root; cni-bridge next to cni-policy, /usr/lib/cni/{ptp,host-local}.

mod world;

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use policy::{evaluate, Direction, Endpoint, Packet, PolicySet, Verdict};
use testkit::node::Container;
use testkit::probe::{run_all, Outcome, Probe, ProbeKind};
use world::{eventually, Network, World, PORTS};

/// splitmix64 (`testkit::rng`): a seed printed by CI reproduces the run here.
use testkit::rng::{Draw as _, SplitMix64 as Rng};

const NAMESPACES: [&str; 2] = ["prod", "dev"];
const APPS: [&str; 4] = ["web", "db", "api", "cache"];
const ROLES: [&str; 2] = ["front", "back"];

/// A participant: an endpoint (a container) or the node itself (not an endpoint).
struct Member {
    name: String,
    netns: PathBuf,
    v4: IpAddr,
    v6: IpAddr,
}

impl Member {
    fn addr(&self, v6: bool) -> IpAddr {
        if v6 {
            self.v6
        } else {
            self.v4
        }
    }
}

fn calico_selector(r: &mut Rng) -> String {
    let app = *r.pick(&APPS);
    let app2 = *r.pick(&APPS);
    let role = *r.pick(&ROLES);
    match r.below(11) {
        0 => "all()".into(),
        1 | 2 => format!("app == '{app}'"),
        3 => format!("app != '{app}'"),
        4 => format!("app in {{'{app}', '{app2}'}}"),
        5 => format!("app not in {{'{app}'}}"),
        6 => "has(role)".into(),
        7 => "!has(role)".into(),
        8 => format!("role == '{role}' && app != '{app}'"),
        9 => format!("app == '{app}' || role == '{role}'"),
        _ => format!("!(app == '{app}')"),
    }
}

fn namespace_selector(r: &mut Rng) -> String {
    match r.below(3) {
        0 => "env == 'production'".into(),
        1 => format!("projectcalico.org/name == '{}'", r.pick(&NAMESPACES)),
        _ => "all()".into(),
    }
}

/// A CIDR around one of the members' addresses (canonical: host bits cleared).
fn net(r: &mut Rng, members: &[Member], v6: bool) -> String {
    let m = r.pick(members);
    match m.addr(v6) {
        IpAddr::V4(a) => {
            let len = *r.pick(&[32u32, 31, 30, 28, 26, 24, 16]);
            let mask = if len == 0 { 0 } else { u32::MAX << (32 - len) };
            format!("{}/{len}", Ipv4Addr::from(u32::from(a) & mask))
        }
        IpAddr::V6(a) => {
            let len = *r.pick(&[128u32, 127, 126, 124, 120, 64, 48]);
            let mask = u128::MAX << (128 - len);
            format!("'{}/{len}'", Ipv6Addr::from(u128::from(a) & mask))
        }
    }
}

fn nets(r: &mut Rng, members: &[Member], version: Option<bool>) -> String {
    let n = 1 + r.below(2);
    let mut v = Vec::new();
    for _ in 0..n {
        let v6 = version.unwrap_or_else(|| r.chance(50));
        v.push(net(r, members, v6));
    }
    format!("[{}]", v.join(", "))
}

fn port(r: &mut Rng) -> String {
    match r.below(4) {
        0 => {
            let a = *r.pick(&PORTS);
            let b = *r.pick(&PORTS);
            format!("'{}:{}'", a.min(b), a.max(b))
        }
        _ => r.pick(&PORTS).to_string(),
    }
}

fn ports(r: &mut Rng) -> String {
    let n = 1 + r.below(2);
    format!("[{}]", (0..n).map(|_| port(r)).collect::<Vec<_>>().join(", "))
}

/// Source ports the probes use: 30000–59999; rules sometimes match part of that.
fn source_ports(r: &mut Rng) -> String {
    let a = 30_000 + r.below(30_000);
    let b = a + r.below(15_000);
    format!("['{a}:{}']", b.min(59_999))
}

/// One side of a Calico rule: `(yaml fields, nothing)`.
fn entity(r: &mut Rng, members: &[Member], version: Option<bool>, with_ports: bool, source: bool) -> Vec<String> {
    let mut f = Vec::new();
    if r.chance(30) {
        f.push(format!("nets: {}", nets(r, members, version)));
    }
    if r.chance(12) {
        f.push(format!("notNets: {}", nets(r, members, version)));
    }
    if r.chance(30) {
        f.push(format!("selector: \"{}\"", calico_selector(r)));
    }
    if r.chance(10) {
        f.push(format!("notSelector: \"{}\"", calico_selector(r)));
    }
    if r.chance(12) {
        f.push(format!("namespaceSelector: \"{}\"", namespace_selector(r)));
    }
    if with_ports {
        if source {
            if r.chance(10) {
                f.push(format!("ports: {}", source_ports(r)));
            }
        } else {
            if r.chance(50) {
                f.push(format!("ports: {}", ports(r)));
            }
            if r.chance(12) {
                f.push(format!("notPorts: {}", ports(r)));
            }
        }
    }
    f
}

fn calico_rule(r: &mut Rng, members: &[Member]) -> String {
    let action = *r.pick(&["Allow", "Allow", "Allow", "Deny", "Deny", "Pass", "Log"]);
    let mut f = vec![format!("action: {action}")];
    // The protocol, and which family the rule's nets may be in.
    let (mut with_ports, mut version, mut not_icmp) = (false, None, false);
    match r.below(7) {
        0 | 1 => {
            f.push("protocol: TCP".into());
            with_ports = true;
        }
        2 => {
            f.push("protocol: UDP".into());
            with_ports = true;
        }
        3 => {
            f.push("protocol: ICMP".into());
            version = Some(false);
            match r.below(3) {
                0 => f.push(format!("icmp: {{type: {}}}", r.pick(&[8, 13]))),
                1 => f.push(format!("icmp: {{type: 8, code: {}}}", r.below(2))),
                _ => f.push("notICMP: {type: 13}".into()),
            }
        }
        4 => {
            f.push("protocol: ICMPv6".into());
            version = Some(true);
            if r.chance(60) {
                f.push(format!("icmp: {{type: 128, code: {}}}", r.below(2)));
            }
        }
        5 => {
            let p = *r.pick(&["TCP", "UDP", "ICMP"]);
            not_icmp = p == "ICMP";
            f.push(format!("notProtocol: {p}"));
        }
        _ => {}
    }
    if version.is_none() && r.chance(20) {
        // notProtocol ICMP with ipVersion 6 is refused, as Calico's validator does.
        let v6 = r.chance(50) && !not_icmp;
        version = Some(v6);
        f.push(format!("ipVersion: {}", if v6 { 6 } else { 4 }));
    }
    let src = entity(r, members, version, with_ports, true);
    let dst = entity(r, members, version, with_ports, false);
    if !src.is_empty() {
        f.push(format!("source: {{{}}}", src.join(", ")));
    }
    if !dst.is_empty() {
        f.push(format!("destination: {{{}}}", dst.join(", ")));
    }
    format!("  - {{{}}}\n", f.join(", "))
}

fn calico_policy(r: &mut Rng, members: &[Member], i: usize, tiered: bool) -> String {
    let global = r.chance(50);
    let tier = if tiered && r.chance(40) { "t1" } else { "default" };
    let name = if tier == "default" { format!("p{i}") } else { format!("t1.p{i}") };
    let mut y = String::from("apiVersion: projectcalico.org/v3\n");
    if global {
        let _ = writeln!(y, "kind: GlobalNetworkPolicy\nmetadata: {{name: {name}}}");
    } else {
        let _ = writeln!(y, "kind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {}}}", r.pick(&NAMESPACES));
    }
    y.push_str("spec:\n");
    if tier != "default" {
        y.push_str("  tier: t1\n");
    }
    if r.chance(80) {
        let _ = writeln!(y, "  order: {}", 10 * (1 + r.below(5)));
    }
    let _ = writeln!(y, "  selector: \"{}\"", calico_selector(r));
    if global && r.chance(25) {
        let _ = writeln!(y, "  namespaceSelector: \"{}\"", namespace_selector(r));
    }
    let (ni, ne) = (r.below(4), r.below(4));
    if r.chance(60) {
        let types = match r.below(3) {
            0 => "[Ingress]",
            1 => "[Egress]",
            _ => "[Ingress, Egress]",
        };
        let _ = writeln!(y, "  types: {types}");
    }
    for (key, n) in [("ingress", ni), ("egress", ne)] {
        if n > 0 {
            let _ = writeln!(y, "  {key}:");
            for _ in 0..n {
                y.push_str(&calico_rule(r, members));
            }
        }
    }
    y
}

fn k8s_label_selector(r: &mut Rng) -> String {
    match r.below(5) {
        0 => "{}".into(),
        1 | 2 => format!("{{matchLabels: {{app: {}}}}}", r.pick(&APPS)),
        3 => format!(
            "{{matchExpressions: [{{key: app, operator: {}, values: [{}, {}]}}]}}",
            r.pick(&["In", "NotIn"]),
            r.pick(&APPS),
            r.pick(&APPS)
        ),
        _ => format!("{{matchExpressions: [{{key: role, operator: {}}}]}}", r.pick(&["Exists", "DoesNotExist"])),
    }
}

fn k8s_peer(r: &mut Rng, members: &[Member]) -> String {
    match r.below(4) {
        0 => format!("{{podSelector: {}}}", k8s_label_selector(r)),
        1 => format!(
            "{{namespaceSelector: {{matchLabels: {{kubernetes.io/metadata.name: {}}}}}, podSelector: {}}}",
            r.pick(&NAMESPACES),
            k8s_label_selector(r)
        ),
        2 => "{namespaceSelector: {matchLabels: {env: production}}}".into(),
        _ => {
            let v6 = r.chance(50);
            let m = r.pick(members);
            let (cidr, except) = if v6 {
                let base = u128::from(match m.v6 {
                    IpAddr::V6(a) => a,
                    _ => unreachable!(),
                });
                let len = *r.pick(&[120u32, 124, 64]);
                let c = base & (u128::MAX << (128 - len));
                (format!("'{}/{len}'", Ipv6Addr::from(c)), format!("'{}/128'", m.v6))
            } else {
                let base = u32::from(match m.v4 {
                    IpAddr::V4(a) => a,
                    _ => unreachable!(),
                });
                let len = *r.pick(&[24u32, 28, 30]);
                let c = base & (u32::MAX << (32 - len));
                (format!("{}/{len}", Ipv4Addr::from(c)), format!("{}/32", m.v4))
            };
            if r.chance(60) {
                format!("{{ipBlock: {{cidr: {cidr}, except: [{except}]}}}}")
            } else {
                format!("{{ipBlock: {{cidr: {cidr}}}}}")
            }
        }
    }
}

fn k8s_ports(r: &mut Rng) -> String {
    let n = 1 + r.below(2);
    let v: Vec<String> = (0..n)
        .map(|_| {
            let proto = *r.pick(&["TCP", "UDP"]);
            let p = *r.pick(&PORTS);
            if r.chance(40) {
                let e = p + r.below(3000) as u16;
                format!("{{protocol: {proto}, port: {p}, endPort: {e}}}")
            } else {
                format!("{{protocol: {proto}, port: {p}}}")
            }
        })
        .collect();
    format!("[{}]", v.join(", "))
}

fn k8s_policy(r: &mut Rng, members: &[Member], i: usize) -> String {
    let mut y = format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: k{i}, namespace: {}}}\nspec:\n  podSelector: {}\n",
        r.pick(&NAMESPACES),
        k8s_label_selector(r)
    );
    let types = match r.below(3) {
        0 => vec!["Ingress"],
        1 => vec!["Egress"],
        _ => vec!["Ingress", "Egress"],
    };
    let _ = writeln!(y, "  policyTypes: [{}]", types.join(", "));
    for t in types {
        let (key, peers) = if t == "Ingress" { ("ingress", "from") } else { ("egress", "to") };
        let n = r.below(3);
        if n == 0 {
            continue;
        }
        let _ = writeln!(y, "  {key}:");
        for _ in 0..n {
            let mut f = Vec::new();
            if r.chance(70) {
                let np = 1 + r.below(2);
                let ps: Vec<String> = (0..np).map(|_| k8s_peer(r, members)).collect();
                f.push(format!("{peers}: [{}]", ps.join(", ")));
            }
            if r.chance(60) {
                f.push(format!("ports: {}", k8s_ports(r)));
            }
            let _ = writeln!(y, "  - {{{}}}", f.join(", "));
        }
    }
    y
}

/// A document of the random file, and what it is (so a change can replace or remove it).
#[derive(Clone)]
struct Doc {
    yaml: String,
    kind: DocKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum DocKind {
    /// The Namespace and the Tier: kept through every change.
    Head,
    Calico(usize),
    K8s(usize),
}

/// A random policy file, as its documents; `tiered` says whether it has tier `t1`.
fn policy_docs(r: &mut Rng, members: &[Member]) -> (Vec<Doc>, bool) {
    let head = |yaml: String| Doc { yaml, kind: DocKind::Head };
    let mut docs =
        vec![head("apiVersion: v1\nkind: Namespace\nmetadata: {name: prod, labels: {env: production}}\n".into())];
    let tiered = r.chance(50);
    if tiered {
        let default = if r.chance(50) { "Deny" } else { "Pass" };
        docs.push(head(format!(
            "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {{name: t1}}\nspec: {{order: 50, defaultAction: {default}}}\n"
        )));
    }
    for i in 0..1 + r.below(4) {
        docs.push(Doc { yaml: calico_policy(r, members, i, tiered), kind: DocKind::Calico(i) });
    }
    for i in 0..r.below(3) {
        docs.push(Doc { yaml: k8s_policy(r, members, i), kind: DocKind::K8s(i) });
    }
    (docs, tiered)
}

fn file_text(docs: &[Doc]) -> String {
    docs.iter().map(|d| d.yaml.as_str()).collect::<Vec<_>>().join("---\n")
}

/// A random first packet between two members (at least one an endpoint), with its probe.
fn packet(r: &mut Rng, members: &[Member], n_endpoints: usize, seq: usize) -> (Packet, Probe, String, String) {
    let (s, d) = loop {
        let (s, d) = (r.below(members.len()), r.below(members.len()));
        if s != d && (s < n_endpoints || d < n_endpoints) {
            break (s, d);
        }
    };
    let (src, dst) = (&members[s], &members[d]);
    let v6 = r.chance(50);
    let (sa, da) = (src.addr(v6), dst.addr(v6));
    // Unique per packet, so no probe is ever the reply of an earlier connection.
    let sport = 30_000 + (seq as u16) * 7 + r.below(7) as u16;
    let dport = *r.pick(&PORTS);
    let (pkt, kind) = match r.below(10) {
        0..=3 => {
            (Packet::tcp(sa, sport, da, dport), ProbeKind::Tcp { dst: SocketAddr::new(da, dport), src_port: sport })
        }
        4..=6 => {
            (Packet::udp(sa, sport, da, dport), ProbeKind::Udp { dst: SocketAddr::new(da, dport), src_port: sport })
        }
        _ => {
            let t = if v6 { 128 } else { *r.pick(&[8, 8, 13]) };
            let code = if t == 13 { 0 } else { r.below(2) as u8 };
            (Packet::icmp(sa, da, t, code), ProbeKind::Icmp { dst: da, icmp_type: t, code })
        }
    };
    let probe = Probe { netns: src.netns.clone(), kind, wait: Duration::from_secs(1) };
    (pkt, probe, src.name.clone(), dst.name.clone())
}

fn endpoints_of(status: &serde_json::Value) -> Vec<Endpoint> {
    status["endpoints"]
        .as_array()
        .expect("status endpoints")
        .iter()
        .map(|e| {
            serde_json::from_value::<StatusEndpoint>(e.clone())
                .unwrap_or_else(|err| panic!("status endpoint {e}: {err}"))
                .into()
        })
        .collect()
}

#[derive(serde::Deserialize)]
struct StatusEndpoint {
    name: String,
    namespace: String,
    labels: BTreeMap<String, String>,
    addrs: Vec<IpAddr>,
    #[serde(rename = "hostIfname")]
    host_ifname: Option<String>,
    bridged: bool,
}

impl From<StatusEndpoint> for Endpoint {
    fn from(s: StatusEndpoint) -> Endpoint {
        Endpoint {
            name: s.name,
            namespace: s.namespace,
            labels: s.labels,
            addrs: s.addrs,
            host_ifname: s.host_ifname,
            bridged: s.bridged,
            remote: None,
        }
    }
}

/// Why the evaluator decided as it did, for a failure report.
fn explain(set: &PolicySet, eps: &[Endpoint], pkt: &Packet) -> String {
    let owner = |a: IpAddr| eps.iter().find(|e| e.addrs.contains(&a));
    let mut s = String::new();
    if let Some(e) = owner(pkt.src) {
        let ev = evaluate(set, eps, e, Direction::Egress, pkt);
        let _ = write!(s, "egress of {}: {:?} by {:?}; ", e.name, ev.verdict, ev.decided_by);
    }
    if let Some(e) = owner(pkt.dst) {
        let ev = evaluate(set, eps, e, Direction::Ingress, pkt);
        let _ = write!(s, "ingress of {}: {:?} by {:?}", e.name, ev.verdict, ev.decided_by);
    }
    s
}

/// A batch of random first packets (source ports from `seq` on) and their probes.
type Batch = Vec<(Packet, Probe, String, String)>;

fn batch(r: &mut Rng, members: &[Member], seq: &mut usize, n: usize) -> Batch {
    let n_endpoints = members.len() - 1;
    let b = (0..n).map(|i| packet(r, members, n_endpoints, *seq + i)).collect();
    *seq += n;
    b
}

/// How many packets of a batch the evaluator allows.
fn allowed(set: &PolicySet, eps: &[Endpoint], b: &Batch) -> usize {
    b.iter().filter(|p| policy::evaluate_path(set, eps, &p.0) == Verdict::Allow).count()
}

/// Whether a batch tells allow from deny: at least an eighth of its packets each way.
fn mixed(allowed: usize, n: usize) -> bool {
    let least = n.div_ceil(8);
    allowed >= least && n - allowed >= least
}

/// How many draws `balanced` makes at most.
const TRIES: usize = 30;

/// Draws (with `draw`) a policy file and a batch until the evaluator's verdicts are mixed, up
/// to [`TRIES`] draws (then the last draw is taken and the seed's output says so). The draws come
/// from the seed's generator, so a seed still reproduces. Returns the file's documents, the
/// batch, and how many draws were refused.
fn balanced(
    r: &mut Rng,
    members: &[Member],
    eps: &[Endpoint],
    seq: &mut usize,
    n: usize,
    mut draw: impl FnMut(&mut Rng) -> Vec<Doc>,
) -> (Vec<Doc>, Batch, usize) {
    let start = *seq;
    let mut tries = 0;
    loop {
        *seq = start;
        let docs = draw(r);
        let b = batch(r, members, seq, n);
        let set = parse(&file_text(&docs));
        if mixed(allowed(&set, eps, &b), n) || tries + 1 == TRIES {
            return (docs, b, tries);
        }
        tries += 1;
    }
}

fn parse(yaml: &str) -> PolicySet {
    policy::parse_str(Path::new("random.yaml"), yaml)
        .unwrap_or_else(|e| panic!("the generator wrote a file the parser refuses: {e}\n{yaml}"))
}

/// A change between two batches of a seed; every seed makes each once, in a random order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
    /// A policy replaced by a new random one of the same name, or removed from the file.
    EditOrRemovePolicy,
    /// An endpoint's DEL.
    Del,
    /// `cni-policy label`: a new `app`, `role` set or removed.
    Relabel,
    /// A new endpoint's ADD.
    Add,
}

struct Seed {
    seed: u64,
    net: Network,
    w: World,
    /// Live endpoints: their member name and container.
    live: Vec<(String, Container)>,
    node: PathBuf,
    docs: Vec<Doc>,
    tiered: bool,
    applies: usize,
    next: usize,
    started: Instant,
}

impl Seed {
    /// The endpoints, then the node (last).
    fn members(&self) -> Vec<Member> {
        let mut m: Vec<Member> = self
            .live
            .iter()
            .map(|(name, c)| Member { name: name.clone(), netns: c.path().to_path_buf(), v4: c.v4(), v6: c.v6() })
            .collect();
        m.push(Member { name: "node".into(), netns: self.node.clone(), v4: self.w.gw4(), v6: self.w.gw6() });
        m
    }

    fn add(&mut self, r: &mut Rng) {
        let ns = *r.pick(&NAMESPACES);
        let mut labels = vec![("app", *r.pick(&APPS))];
        if r.chance(60) {
            labels.push(("role", *r.pick(&ROLES)));
        }
        let name = format!("e{}", self.next);
        self.next += 1;
        let c = self.w.add(ns, &name, &labels);
        self.live.push((name, c));
    }

    /// Writes the file and waits for `watch` to apply it (its `policy applied` lines).
    fn apply_file(&mut self) {
        self.w.write_policy("random.yaml", &file_text(&self.docs));
        self.applies += 1;
        let want = self.applies;
        eventually(Duration::from_secs(10), "cni-policy watch applies the edited file", || {
            self.w.watch_log().matches("policy applied").count() >= want
        });
    }

    /// Probes a batch; mismatches as report lines.
    fn run(&self, what: &str, set: &PolicySet, eps: &[Endpoint], b: &Batch) -> Vec<String> {
        let probes: Vec<Probe> = b.iter().map(|p| p.1.clone()).collect();
        let got = run_all(&probes);
        let seed = self.seed;
        let mut bad = Vec::new();
        let mut allowed = 0;
        for ((pkt, _, from, to), got) in b.iter().zip(got) {
            let kernel = match got {
                Ok(Outcome::Answered) => Verdict::Allow,
                Ok(Outcome::Silent) => Verdict::Deny,
                Ok(Outcome::Refused) => panic!("seed {seed}: {pkt:?} refused: every member serves every port"),
                Err(e) => panic!("seed {seed}: probe {pkt:?}: {e}"),
            };
            let want = policy::evaluate_path(set, eps, pkt);
            allowed += usize::from(want == Verdict::Allow);
            if kernel != want {
                bad.push(format!(
                    "  {from} -> {to} {pkt:?}: kernel {kernel:?}, evaluator {want:?} ({})",
                    explain(set, eps, pkt)
                ));
            }
        }
        let n = b.len();
        eprintln!(
            "seed {seed} ({:?}) {what}: allow {allowed} / deny {} of {n}, the kernel disagrees on {} (at {:.1} s)",
            self.net,
            n - allowed,
            bad.len(),
            self.started.elapsed().as_secs_f64()
        );
        if !bad.is_empty() {
            // At once: a later seed's panic must not hide them.
            eprintln!("{}", bad.join("\n"));
            let out = self.w.node.exec(Path::new("/usr/sbin/nft"), &["list", "ruleset"], &[], b"");
            let ruleset = if out.success() { out.stdout } else { format!("(nft list ruleset: {})", out.describe()) };
            let mut eps_txt = String::new();
            for e in eps {
                let _ = writeln!(eps_txt, "  {} ns={} labels={:?} addrs={:?}", e.name, e.namespace, e.labels, e.addrs);
            }
            bad.insert(
                0,
                format!(
                    "seed {seed} ({:?}) {what}: {} of {n} packets disagree\nendpoints:\n{eps_txt}policy file:\n{}",
                    self.net,
                    bad.len(),
                    file_text(&self.docs)
                ),
            );
            bad.push(format!("ruleset:\n{ruleset}"));
        }
        bad
    }
}

/// One seed: a node, 4 random endpoints, a random policy file applied by `cni-policy watch`,
/// a batch of `n` packets; then the four changes in a random order, each followed by a batch
/// judged against the new state. Mismatches, as lines of a report (empty: the kernel agreed
/// on every packet of every batch).
fn run_seed(seed: u64, n: usize) -> Vec<String> {
    let mut r = Rng(seed);
    // Mostly bridged (cni-bridge); a quarter of the seeds routed veths (the reference ptp).
    let net = if r.chance(25) { Network::ReferencePtp } else { Network::Bridge };
    let w = World::new(net);
    let node = w.node.path().to_path_buf();
    let mut s = Seed {
        seed,
        net,
        w,
        live: Vec::new(),
        node,
        docs: Vec::new(),
        tiered: false,
        applies: 0,
        next: 0,
        started: Instant::now(),
    };
    // Endpoints first, with no policy yet (addresses are handed out in order, so a seed always
    // gives the same); the registry's endpoints then judge the draws of the file.
    for _ in 0..4 {
        s.add(&mut r);
    }
    let node = s.node.clone();
    s.w.serve(&node);
    let mut seq = 0;
    let eps = endpoints_of(&s.w.status());
    let members = s.members();
    let (docs, b, refused) = balanced(&mut r, &members, &eps, &mut seq, n, |r| {
        let (d, t) = policy_docs(r, &members);
        s.tiered = t;
        d
    });
    if refused > 0 {
        eprintln!("seed {seed}: the file drawn again {refused} times (all or nearly all packets one way)");
    }
    s.docs = docs;
    // The file arrives under the daemon, which applies it at start.
    s.w.write_policy("random.yaml", &file_text(&s.docs));
    s.w.watch();
    s.applies = 1;
    eventually(Duration::from_secs(10), "cni-policy watch applies the file", || {
        s.w.watch_log().matches("policy applied").count() >= 1
    });
    let mut bad = s.run("first", &parse(&file_text(&s.docs)), &eps, &b);

    let mut changes = vec![Change::EditOrRemovePolicy, Change::Del, Change::Relabel, Change::Add];
    for i in (1..changes.len()).rev() {
        changes.swap(i, r.below(i + 1));
    }
    for change in changes {
        let what = match change {
            Change::EditOrRemovePolicy => {
                let policies: Vec<usize> = (0..s.docs.len()).filter(|&i| s.docs[i].kind != DocKind::Head).collect();
                let i = *r.pick(&policies);
                let members = s.members();
                let eps = endpoints_of(&s.w.status());
                if policies.len() > 1 && r.chance(40) {
                    let what = format!("after removing {}", doc_name(&s.docs[i]));
                    s.docs.remove(i);
                    s.apply_file();
                    what
                } else {
                    let (old, tiered) = (s.docs.clone(), s.tiered);
                    let kind = old[i].kind;
                    let (docs, b, refused) = balanced(&mut r, &members, &eps, &mut seq, n, |r| {
                        let mut d = old.clone();
                        d[i].yaml = match kind {
                            DocKind::Calico(k) => calico_policy(r, &members, k, tiered),
                            DocKind::K8s(k) => k8s_policy(r, &members, k),
                            DocKind::Head => unreachable!(),
                        };
                        d
                    });
                    let what = format!("after editing {} ({refused} draws redrawn)", doc_name(&docs[i]));
                    s.docs = docs;
                    s.apply_file();
                    bad.extend(s.run(&what, &parse(&file_text(&s.docs)), &eps, &b));
                    continue;
                }
            }
            Change::Del => {
                let (name, c) = s.live.remove(r.below(s.live.len()));
                s.w.del(c);
                format!("after DEL of {name}")
            }
            Change::Relabel => {
                let (name, c) = r.pick(&s.live);
                let app = format!("app={}", r.pick(&APPS));
                let role = if r.chance(50) { format!("role={}", r.pick(&ROLES)) } else { "role-".into() };
                s.w.label(c, &[&app, &role]);
                format!("after label {name} {app} {role}")
            }
            Change::Add => {
                s.add(&mut r);
                format!("after ADD of {}", s.live.last().unwrap().0)
            }
        };
        // The change is made; the packets are drawn again while the batch is all (or nearly
        // all) one way, as far as the policy in force lets them be mixed.
        let eps = endpoints_of(&s.w.status());
        let docs = s.docs.clone();
        let (_, b, refused) = balanced(&mut r, &s.members(), &eps, &mut seq, n, |_| docs.clone());
        bad.extend(s.run(&format!("{what} ({refused} batches redrawn)"), &parse(&file_text(&s.docs)), &eps, &b));
    }
    bad
}

/// `kind name` of a policy document, for the seed's output.
fn doc_name(d: &Doc) -> String {
    match d.kind {
        DocKind::Calico(i) => format!("Calico p{i}"),
        DocKind::K8s(i) => format!("Kubernetes k{i}"),
        DocKind::Head => "the head".into(),
    }
}

#[test]
fn kernel_verdicts_equal_the_reference_evaluator() {
    let env = |k: &str| std::env::var(k).ok().and_then(|v| v.parse::<u64>().ok());
    let n = env("POLICY_DIFF_PACKETS").unwrap_or(48) as usize;
    let seeds: Vec<u64> = match env("POLICY_DIFF_SEED") {
        Some(s) => vec![s],
        None => {
            let base =
                std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() % 1_000_000;
            (0..env("POLICY_DIFF_SEEDS").unwrap_or(7)).map(|i| base * 100 + i).collect()
        }
    };
    let started = Instant::now();
    let mut failures = Vec::new();
    for seed in seeds.iter().copied() {
        let t = Instant::now();
        let bad = run_seed(seed, n);
        eprintln!("seed {seed}: {:.1} s", t.elapsed().as_secs_f64());
        if !bad.is_empty() {
            failures.push(bad.join("\n"));
        }
    }
    eprintln!("{} seeds × 5 batches × {n} packets in {:.1} s", seeds.len(), started.elapsed().as_secs_f64());
    assert!(
        failures.is_empty(),
        "{}\n\nreproduce one with POLICY_DIFF_SEED=<seed> cargo test --release -p cni-policy --test differential",
        failures.join("\n\n")
    );
}
