//! The incremental compiler (`policy::compile::Compiler`) against `compile()` from scratch:
//! random policies and endpoints, then random changes (endpoints added, removed, relabelled,
//! readdressed, a policy's rules edited, a policy's selector changed, a policy added), and
//! after each one the compiler's tables and endpoint information must equal `compile()`'s
//! for its policies and endpoints, and every object that differs from the state before the
//! change must be among the changes it reports (the engine sends only those). Seeds are
//! fixed; `INCREMENTAL_SEEDS=n` runs more (the failing seed is printed).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;

use linux_net::nft::TableState;
use policy::compile::{compile, Compiled, Compiler};
use policy::engine::Changes;
use policy::{Endpoint, PolicySet};

/// splitmix64 (`testkit::rng`): a seed printed by CI reproduces the run here.
use testkit::rng::{Draw as _, SplitMix64 as Rng};

const NAMESPACES: [&str; 3] = ["prod", "dev", "ops"];
const APPS: [&str; 4] = ["web", "db", "api", "cache"];
const ROLES: [&str; 2] = ["front", "back"];

fn selector(r: &mut Rng) -> String {
    let (app, app2, role) = (*r.pick(&APPS), *r.pick(&APPS), *r.pick(&ROLES));
    match r.below(9) {
        0 => "all()".into(),
        1 | 2 => format!("app == '{app}'"),
        3 => format!("app != '{app}'"),
        4 => format!("app in {{'{app}', '{app2}'}}"),
        5 => "has(role)".into(),
        6 => format!("role == '{role}' && app != '{app}'"),
        7 => format!("app == '{app}' || role == '{role}'"),
        _ => format!("!(app == '{app}')"),
    }
}

fn net(r: &mut Rng) -> String {
    if r.chance(70) {
        format!("10.{}.{}.0/{}", r.below(3), r.below(4), r.pick(&[24, 28, 30, 32]))
    } else {
        format!("'fd00:{:x}::/{}'", r.below(3), r.pick(&[64, 96, 128]))
    }
}

fn list(r: &mut Rng, f: fn(&mut Rng) -> String) -> String {
    let n = 1 + r.below(3);
    format!("[{}]", (0..n).map(|_| f(r)).collect::<Vec<_>>().join(", "))
}

fn port(r: &mut Rng) -> String {
    let a = 1 + r.below(200) as u16 * 50;
    if r.chance(30) {
        format!("'{a}:{}'", a + r.below(100) as u16)
    } else {
        a.to_string()
    }
}

fn rule(r: &mut Rng) -> String {
    let action = *r.pick(&["Allow", "Allow", "Deny", "Pass", "Log"]);
    let mut f = vec![format!("action: {action}")];
    let ports = match r.below(5) {
        0 | 1 => {
            f.push("protocol: TCP".into());
            true
        }
        2 => {
            f.push("protocol: UDP".into());
            true
        }
        3 => {
            f.push("protocol: ICMP".into());
            f.push(format!("icmp: {{type: {}}}", r.pick(&[0, 8])));
            f.push("ipVersion: 4".into());
            false
        }
        _ => false,
    };
    let v4_only = f.iter().any(|x| x == "ipVersion: 4");
    for side in ["source", "destination"] {
        let mut e = Vec::new();
        if r.chance(30) {
            let mut nets = list(r, net);
            if v4_only {
                nets = format!("[10.{}.0.0/16]", r.below(3));
            }
            e.push(format!("nets: {nets}"));
        }
        if r.chance(35) {
            e.push(format!("selector: \"{}\"", selector(r)));
        }
        if r.chance(10) {
            e.push(format!("notSelector: \"{}\"", selector(r)));
        }
        if r.chance(10) {
            e.push(format!("namespaceSelector: \"projectcalico.org/name == '{}'\"", r.pick(&NAMESPACES)));
        }
        if ports && side == "destination" && r.chance(50) {
            e.push(format!("ports: {}", list(r, port)));
        }
        if !e.is_empty() {
            f.push(format!("{side}: {{{}}}", e.join(", ")));
        }
    }
    format!("  - {{{}}}\n", f.join(", "))
}

/// A Calico policy `p<i>` (namespaced or global, maybe in tier t1), with `sel` as selector.
fn calico(r: &mut Rng, i: usize, sel: &str, rules_seed: u64) -> String {
    let global = i.is_multiple_of(2);
    let tier = i.is_multiple_of(3);
    let name = if tier { format!("t1.p{i}") } else { format!("p{i}") };
    let mut y = String::from("apiVersion: projectcalico.org/v3\n");
    if global {
        let _ = writeln!(y, "kind: GlobalNetworkPolicy\nmetadata: {{name: {name}}}");
    } else {
        let _ = writeln!(y, "kind: NetworkPolicy\nmetadata: {{name: {name}, namespace: {}}}", NAMESPACES[i % 3]);
    }
    y.push_str("spec:\n");
    if tier {
        y.push_str("  tier: t1\n");
    }
    let _ = writeln!(y, "  order: {}", 10 * (1 + i % 4));
    let _ = writeln!(y, "  selector: \"{sel}\"");
    let _ = writeln!(y, "  types: {}", ["[Ingress]", "[Egress]", "[Ingress, Egress]"][i % 3]);
    let mut rr = Rng(rules_seed);
    for key in ["ingress", "egress"] {
        let n = rr.below(4);
        if n > 0 {
            let _ = writeln!(y, "  {key}:");
            for _ in 0..n {
                y.push_str(&rule(&mut rr));
            }
        }
    }
    let _ = r;
    y
}

fn k8s(i: usize, app: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {{name: k{i}, namespace: prod}}\nspec:\n  podSelector: {{matchLabels: {{app: {app}}}}}\n  policyTypes: [Ingress]\n  ingress:\n  - from: [{{podSelector: {{matchLabels: {{role: front}}}}}}]\n    ports: [{{protocol: TCP, port: {}}}]\n",
        8000 + i
    )
}

/// The policies: `(selector, rules seed)` per Calico policy, plus `k8s` Kubernetes ones.
struct Spec {
    calico: Vec<(String, u64)>,
    k8s: Vec<String>,
    tier_pass: bool,
}

fn render(r: &mut Rng, s: &Spec) -> PolicySet {
    let mut docs = vec![
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: prod, labels: {env: production}}\n".to_string(),
        format!(
            "apiVersion: projectcalico.org/v3\nkind: Tier\nmetadata: {{name: t1}}\nspec: {{order: 50, defaultAction: {}}}\n",
            if s.tier_pass { "Pass" } else { "Deny" }
        ),
    ];
    for (i, (sel, seed)) in s.calico.iter().enumerate() {
        docs.push(calico(r, i, sel, *seed));
    }
    for (i, app) in s.k8s.iter().enumerate() {
        docs.push(k8s(i, app));
    }
    let text = docs.join("---\n");
    policy::parse_str(Path::new("random.yaml"), &text).unwrap_or_else(|e| panic!("{e}\n{text}"))
}

fn endpoint(r: &mut Rng, n: usize) -> Endpoint {
    let mut labels = BTreeMap::new();
    if r.chance(90) {
        labels.insert("app".to_string(), r.pick(&APPS).to_string());
    }
    if r.chance(60) {
        labels.insert("role".to_string(), r.pick(&ROLES).to_string());
    }
    labels.insert("pod".to_string(), format!("pod{n}"));
    Endpoint {
        name: format!("c{n:04}/eth0"),
        namespace: r.pick(&NAMESPACES).to_string(),
        labels,
        addrs: addrs(r, n),
        host_ifname: r.chance(85).then(|| format!("veth{n:04}")),
        bridged: r.chance(50),
        remote: None,
    }
}

/// Its addresses: usually its own, sometimes one another endpoint may have too.
fn addrs(r: &mut Rng, n: usize) -> Vec<IpAddr> {
    let mut v = vec![IpAddr::V4(Ipv4Addr::new(10, (n % 3) as u8, (n / 250) as u8, (n % 250) as u8 + 1))];
    if r.chance(40) {
        v.push(IpAddr::V6(Ipv6Addr::new(0xfd00, (n % 3) as u16, 0, 0, 0, 0, 0, n as u16 + 1)));
    }
    if r.chance(8) {
        v.push(IpAddr::V4(Ipv4Addr::new(10, 1, 0, 1 + r.below(5) as u8)));
    }
    v
}

/// Names of objects (any kind) that differ between two tables.
fn differing(a: &TableState, b: &TableState) -> Vec<String> {
    let mut v = Vec::new();
    for (n, x) in &a.sets {
        if b.sets.get(n) != Some(x) {
            v.push(n.clone());
        }
    }
    for n in b.sets.keys().filter(|n| !a.sets.contains_key(*n)) {
        v.push(n.clone());
    }
    for (n, x) in &a.maps {
        if b.maps.get(n) != Some(x) {
            v.push(n.clone());
        }
    }
    for n in b.maps.keys().filter(|n| !a.maps.contains_key(*n)) {
        v.push(n.clone());
    }
    for (n, x) in &a.chains {
        if b.chains.get(n) != Some(x) {
            v.push(n.clone());
        }
    }
    for n in b.chains.keys().filter(|n| !a.chains.contains_key(*n)) {
        v.push(n.clone());
    }
    v
}

fn same(c: &Compiler, what: &str, seed: u64, step: usize) {
    let want = compile(c.policies(), &c.endpoints());
    let got: &Compiled = c.compiled();
    for (g, w) in got.tables.iter().zip(&want.tables) {
        let d = differing(g, w);
        assert!(d.is_empty(), "seed {seed} step {step} ({what}): table {:?} differs from compile() in {d:?}", g.table);
    }
    assert_eq!(got.tables.len(), want.tables.len());
    for (name, w) in &want.endpoints {
        assert_eq!(got.endpoints.get(name), Some(w), "seed {seed} step {step} ({what}): endpoint {name}");
    }
    assert_eq!(got.endpoints.len(), want.endpoints.len(), "seed {seed} step {step} ({what})");
}

fn covered(before: &Compiled, c: &Compiler, ch: &Changes, what: &str, seed: u64, step: usize) {
    if ch.all {
        return;
    }
    for (b, a) in before.tables.iter().zip(&c.compiled().tables) {
        for n in differing(b, a) {
            assert!(
                ch.objects.contains(&(a.table.clone(), n.clone())),
                "seed {seed} step {step} ({what}): {n} in {:?} changed but is not among the changes",
                a.table
            );
        }
    }
}

/// Whether the inet base chains start with the guard of routed interfaces (egress, ingress):
/// only while some endpoint has a routed interface in that direction's map.
fn inet_guard(c: &Compiled) -> [bool; 2] {
    let guard = |chain: &str| {
        c.tables[0].chains[chain]
            .rules
            .iter()
            .any(|r| matches!(r.action, Some(linux_net::nft::Action::IfNameVmap { .. })))
    };
    [guard("egress-in"), guard("ingress-out")]
}

/// Runs seed `seed`; returns how many changes turned the inet guard rule of a direction on or
/// off (the first routed endpoint came, the last went).
fn run(seed: u64) -> usize {
    let mut r = Rng(seed);
    let mut spec = Spec {
        calico: (0..2 + r.below(5)).map(|_| (selector(&mut r), r.next())).collect(),
        k8s: (0..r.below(3)).map(|_| r.pick(&APPS).to_string()).collect(),
        tier_pass: r.chance(50),
    };
    let mut next = 0;
    let mut eps = Vec::new();
    for _ in 0..r.below(12) {
        eps.push(endpoint(&mut r, next));
        next += 1;
    }
    let set = render(&mut r, &spec);
    let mut c = Compiler::new(set, &eps);
    same(&c, "new", seed, 0);
    assert!(c.changes().all);
    c.applied();
    let mut flips = 0;
    for step in 1..=40 {
        let before = c.compiled().clone();
        let names: Vec<String> = c.endpoints().iter().map(|e| e.name.clone()).collect();
        let what = match r.below(9) {
            0 | 1 => {
                c.put_endpoint(endpoint(&mut r, next));
                next += 1;
                "add"
            }
            2 if !names.is_empty() => {
                let n = r.pick(&names).clone();
                c.remove_endpoint(&n);
                "remove"
            }
            3 if !names.is_empty() => {
                let mut e = c.endpoints()[r.below(names.len())].clone();
                let fresh = endpoint(&mut r, 9999);
                e.labels = fresh.labels;
                if r.chance(30) {
                    e.namespace = fresh.namespace;
                }
                c.put_endpoint(e);
                "relabel"
            }
            4 if !names.is_empty() => {
                let i = r.below(names.len());
                let mut e = c.endpoints()[i].clone();
                e.addrs = addrs(&mut r, 500 + i);
                c.put_endpoint(e);
                "readdress"
            }
            5 | 6 => {
                let i = r.below(spec.calico.len());
                spec.calico[i].1 = r.next();
                let set = render(&mut r, &spec);
                c.set_policies(set);
                "edit rules"
            }
            7 => {
                if r.chance(50) {
                    let i = r.below(spec.calico.len());
                    spec.calico[i].0 = selector(&mut r);
                } else {
                    spec.calico.push((selector(&mut r), r.next()));
                }
                let set = render(&mut r, &spec);
                c.set_policies(set);
                "edit selection"
            }
            _ => {
                // the registry as a list: some gone, some changed, some new
                let mut list = c.endpoints();
                list.retain(|_| r.chance(80));
                for e in list.iter_mut() {
                    if r.chance(20) {
                        e.labels = endpoint(&mut r, 9999).labels;
                    }
                }
                for _ in 0..r.below(3) {
                    list.push(endpoint(&mut r, next));
                    next += 1;
                }
                c.set_endpoints(&list);
                "set endpoints"
            }
        };
        same(&c, what, seed, step);
        covered(&before, &c, &c.changes(), what, seed, step);
        flips += usize::from(inet_guard(&before) != inet_guard(c.compiled()));
        if r.chance(70) {
            c.applied();
        }
    }
    flips
}

#[test]
fn the_incremental_compiler_gives_what_compile_gives_after_every_change() {
    let n: u64 = std::env::var("INCREMENTAL_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(150);
    // endpoints are bridge ports or routed at random: the guard rule of the inet base chains
    // comes and goes with the routed ones, and the delta must follow it
    let flips: usize = (0..n).map(run).sum();
    assert!(flips > 0, "no change turned the inet guard rule on or off in {n} seeds");
}

#[test]
fn an_endpoint_add_and_a_rule_edit_change_only_their_objects() {
    let mut r = Rng(7);
    let spec = Spec { calico: (0..6).map(|_| (selector(&mut r), r.next())).collect(), k8s: vec![], tier_pass: false };
    let eps: Vec<Endpoint> = (0..50).map(|i| endpoint(&mut r, i)).collect();
    let set = render(&mut r, &spec);
    let mut c = Compiler::new(set.clone(), &eps);
    c.applied();
    assert!(c.changes().is_empty());
    let total: usize = c.compiled().tables.iter().map(|t| t.sets.len() + t.maps.len() + t.chains.len()).sum();
    c.put_endpoint(endpoint(&mut r, 50));
    let ch = c.changes();
    assert!(!ch.all && !ch.objects.is_empty());
    assert!(ch.objects.len() * 4 < total, "an add touches {} of {total} objects", ch.objects.len());
    c.applied();
    let mut edited = set.clone();
    let p = edited.policies.iter_mut().find(|p| !p.ingress.is_empty() || !p.egress.is_empty()).unwrap();
    if p.ingress.is_empty() {
        p.egress.pop();
    } else {
        p.ingress.pop();
    }
    c.set_policies(edited);
    let ch = c.changes();
    assert!(!ch.all, "a rule edit is not a rebuild");
    assert!(ch.objects.len() * 4 < total, "an edit touches {} of {total} objects", ch.objects.len());
    same(&c, "edit", 7, 1);
}

/// A rule whose selector picks no address of a family makes no nft rule for that family, and
/// its set is not made; the incremental compiler remakes the policy chain when the selector's
/// set turns non-empty (an endpoint with the only IPv6 address it picks added, or relabelled
/// into it) and empty again (removed, relabelled out), and a `notSelector` on an empty set
/// still matches every packet of the family.
#[test]
fn a_selector_turning_empty_or_not_in_a_family_remakes_its_policy_chain() {
    let yaml = r#"
apiVersion: projectcalico.org/v3
kind: GlobalNetworkPolicy
metadata: {name: solo}
spec:
  selector: app == 'web'
  types: [Ingress]
  ingress:
  - {action: Allow, protocol: TCP, source: {selector: "app == 'solo'"}, destination: {ports: [80]}}
  - {action: Deny, protocol: UDP, source: {notSelector: "app == 'solo'"}}
"#;
    let set = policy::parse_str(Path::new("solo.yaml"), yaml).unwrap();
    let ep = |name: &str, app: &str, addrs: &[&str]| Endpoint {
        name: name.to_string(),
        namespace: "prod".to_string(),
        labels: BTreeMap::from([("app".to_string(), app.to_string())]),
        addrs: addrs.iter().map(|a| a.parse().unwrap()).collect(),
        host_ifname: Some(format!("veth-{name}")),
        bridged: false,
        remote: None,
    };
    // (sel4 sets, sel6 sets, rules in the policy chain)
    let shape = |c: &Compiled| {
        let t = &c.tables[0];
        let sets = |p: &str| t.sets.keys().filter(|n| n.starts_with(p)).count();
        let chain = t.chains.iter().find(|(n, _)| n.starts_with("pol-i-solo-")).map(|(_, c)| c.rules.len());
        (sets("sel4-"), sets("sel6-"), chain.unwrap_or(0))
    };
    let web = ep("web", "web", &["10.0.0.1", "fd00::1"]);
    let mut c = Compiler::new(set, std::slice::from_ref(&web));
    same(&c, "no solo", 1, 0);
    // nobody is `solo`: the Allow makes no rule, the Deny one per family (not in an empty set:
    // no set lookup at all)
    assert_eq!(shape(c.compiled()), (0, 0, 2));
    c.applied();
    let mut step = 0;
    let mut check = |c: &mut Compiler, what: &str, want: (usize, usize, usize), before: &Compiled| {
        step += 1;
        same(c, what, 1, step);
        covered(before, c, &c.changes(), what, 1, step);
        assert_eq!(shape(c.compiled()), want, "{what}");
        c.applied();
    };
    let before = c.compiled().clone();
    c.put_endpoint(ep("solo4", "solo", &["10.0.0.2"]));
    check(&mut c, "an IPv4 solo added", (1, 0, 3), &before);
    let before = c.compiled().clone();
    c.put_endpoint(ep("solo6", "solo", &["10.0.0.3", "fd00::3"]));
    check(&mut c, "the only IPv6 solo added", (1, 1, 4), &before);
    let before = c.compiled().clone();
    c.put_endpoint(ep("solo6", "other", &["10.0.0.3", "fd00::3"]));
    check(&mut c, "the only IPv6 solo relabelled out", (1, 0, 3), &before);
    let before = c.compiled().clone();
    c.put_endpoint(ep("solo6", "solo", &["10.0.0.3", "fd00::3"]));
    check(&mut c, "relabelled back in", (1, 1, 4), &before);
    let before = c.compiled().clone();
    c.remove_endpoint("solo6");
    check(&mut c, "the only IPv6 solo removed", (1, 0, 3), &before);
    let before = c.compiled().clone();
    c.remove_endpoint("solo4");
    check(&mut c, "the last solo removed", (0, 0, 2), &before);
}
