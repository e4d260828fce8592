//! Integration tests of `linux_net::nft` against the running kernel.
//!
//! They need root (CAP_NET_ADMIN) and the `nft` CLI, which is used here
//! (and only here) to read back what the netlink code wrote. Every test uses
//! its own table name (pid + test name) and a Drop guard that deletes it, so
//! tests run in parallel and clean up even when an assertion fails.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::process::Command;
use std::time::{Duration, Instant};

use ipnetwork::IpNetwork;
use linux_net::nft::{self, Family, NftError};

// ---------------------------------------------------------------------------
// helpers
// ---------------------------------------------------------------------------

/// Deletes `<family> <name>` when dropped (and before use, in case a previous
/// run with the same pid left it behind).
struct TableGuard {
    family: Family,
    name: String,
}

impl TableGuard {
    fn new(family: Family, test: &str) -> Self {
        let name = format!("cnit_{}_{test}", std::process::id());
        let _ = Command::new("nft").args(["delete", "table", family.as_str(), &name]).output();
        TableGuard { family, name }
    }
}

impl Drop for TableGuard {
    fn drop(&mut self) {
        let _ = Command::new("nft").args(["delete", "table", self.family.as_str(), &self.name]).output();
    }
}

/// Runs `nft <args>`, panics on failure, returns stdout.
fn nft_cmd(args: &[&str]) -> String {
    let out = Command::new("nft").args(args).output().expect("exec nft");
    assert!(out.status.success(), "nft {args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn table_exists(family: Family, table: &str) -> bool {
    Command::new("nft").args(["list", "table", family.as_str(), table]).output().expect("exec nft").status.success()
}

/// Rule lines of `nft list table` output (everything inside a chain that is
/// not the hook/policy line or a brace).
fn rule_lines(listing: &str) -> Vec<String> {
    listing
        .lines()
        .map(str::trim)
        .filter(|l| {
            !l.is_empty()
                && !l.starts_with("table ")
                && !l.starts_with("chain ")
                && !l.starts_with("type ")
                && *l != "}"
        })
        .map(String::from)
        .collect()
}

/// `# handle N` of every rule of `<family> <table>`, in listing order. A
/// rewritten rule gets a new handle, so equal handles prove "no write".
fn rule_handles(family: Family, table: &str) -> Vec<String> {
    rule_lines(&nft_cmd(&["-a", "list", "table", family.as_str(), table]))
        .iter()
        .filter_map(|l| l.rsplit_once("# handle ").map(|(_, h)| h.to_string()))
        .collect()
}

fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}

// ---------------------------------------------------------------------------
// masquerade
// ---------------------------------------------------------------------------

#[test]
fn masquerade_ipv4_reads_back() {
    let t = TableGuard::new(Family::Inet, "masq4");
    let subnet = net("10.99.0.0/24");
    nft::ensure_masquerade(&t.name, "testnet", subnet).unwrap();

    let chain = nft::masq_chain_name(subnet);
    let listing = nft_cmd(&["list", "table", "inet", &t.name]);
    assert!(listing.contains(&format!("chain {chain} {{")), "{listing}");
    assert!(listing.contains("type nat hook postrouting priority srcnat; policy accept;"), "{listing}");
    assert_eq!(
        rule_lines(&listing),
        [concat!(
            "ip saddr 10.99.0.0/24 ip daddr != 10.99.0.0/24 ip daddr != 224.0.0.0/4 masquerade ",
            "comment \"cni-bridge net=testnet subnet=10.99.0.0/24\""
        )],
        "{listing}"
    );

    // The JSON view agrees (one rule, with its comment).
    let json = nft_cmd(&["-j", "list", "table", "inet", &t.name]);
    assert_eq!(json.matches("\"rule\":").count(), 1, "{json}");
    assert!(json.contains("\"comment\": \"cni-bridge net=testnet subnet=10.99.0.0/24\""), "{json}");
    assert!(json.contains("\"masquerade\""), "{json}");
}

#[test]
fn masquerade_is_idempotent() {
    let t = TableGuard::new(Family::Inet, "masqidem");
    let subnet = net("10.98.0.0/16");
    for _ in 0..3 {
        nft::ensure_masquerade(&t.name, "n1", subnet).unwrap();
    }
    let listing = nft_cmd(&["list", "table", "inet", &t.name]);
    let rules = rule_lines(&listing);
    assert_eq!(rules.len(), 1, "{listing}");
    assert_eq!(listing.matches("chain masq_").count(), 1, "{listing}");

    // A second subnet gets its own chain; the first one is untouched.
    nft::ensure_masquerade(&t.name, "n1", net("10.97.0.0/16")).unwrap();
    nft::ensure_masquerade(&t.name, "n1", subnet).unwrap();
    let listing = nft_cmd(&["list", "table", "inet", &t.name]);
    assert_eq!(listing.matches("chain masq_").count(), 2, "{listing}");
    assert_eq!(rule_lines(&listing).len(), 2, "{listing}");
    assert_eq!(listing.matches("ip saddr 10.98.0.0/16 ").count(), 1, "{listing}");
    assert_eq!(listing.matches("ip saddr 10.97.0.0/16 ").count(), 1, "{listing}");
}

#[test]
fn ensure_leaves_a_correct_rule_alone() {
    let t = TableGuard::new(Family::Inet, "noop");
    for s in ["10.90.0.0/24", "10.90.16.0/20", "fd00:90::/64", "fd00:91::/60", "10.89.0.1/32"] {
        nft::ensure_masquerade(&t.name, "noopnet", net(s)).unwrap();
    }
    let before = rule_handles(Family::Inet, &t.name);
    assert_eq!(before.len(), 5);
    for s in ["10.90.0.0/24", "10.90.16.0/20", "fd00:90::/64", "fd00:91::/60", "10.89.0.1/32"] {
        nft::ensure_masquerade(&t.name, "noopnet", net(s)).unwrap();
    }
    assert_eq!(rule_handles(Family::Inet, &t.name), before, "a correct rule was rewritten");

    let b = TableGuard::new(Family::Bridge, "noop");
    nft::ensure_macspoofchk(&b.name, "c1", "n", CID, "eth0", "veth_noop", MAC).unwrap();
    let before = rule_handles(Family::Bridge, &b.name);
    nft::ensure_macspoofchk(&b.name, "c1", "n", CID, "eth0", "veth_noop", MAC).unwrap();
    assert_eq!(rule_handles(Family::Bridge, &b.name), before, "a correct rule was rewritten");
    // any difference is a rewrite
    nft::ensure_macspoofchk(&b.name, "c1", "n", CID, "eth1", "veth_noop", MAC).unwrap();
    let after = rule_handles(Family::Bridge, &b.name);
    assert_eq!(after.len(), 1);
    assert_ne!(after, before);
}

/// The exact rule `ensure_masquerade(table, "n", 10.88.0.0/24)` writes, added by `nft`.
fn add_our_masq_rule(table: &str, chain: &str) {
    let rule = "ip saddr 10.88.0.0/24 ip daddr != 10.88.0.0/24 ip daddr != 224.0.0.0/4 masquerade \
                comment \"cni-bridge net=n subnet=10.88.0.0/24\"";
    let mut args = vec!["add", "rule", "inet", table, chain];
    args.extend(rule.split_whitespace());
    nft_cmd(&args);
}

#[test]
fn right_rule_in_wrong_chain_is_not_accepted() {
    let t = TableGuard::new(Family::Inet, "wrongchain");
    let subnet = net("10.88.0.0/24");
    let chain = nft::masq_chain_name(subnet);
    // A regular chain (no hook, so it never sees a packet) holding the
    // exact rule ensure_masquerade would write: that is not "in place".
    nft_cmd(&["add", "table", "inet", &t.name]);
    nft_cmd(&["add", "chain", "inet", &t.name, &chain]);
    add_our_masq_rule(&t.name, &chain);
    let err = nft::ensure_masquerade(&t.name, "n", subnet).unwrap_err();
    assert!(matches!(err, NftError::Kernel { .. }), "{err:?}");

    // Same for a base chain at the wrong priority.
    nft_cmd(&["delete", "chain", "inet", &t.name, &chain]);
    nft_cmd(&["add", "chain", "inet", &t.name, &chain, "{ type nat hook postrouting priority 50; }"]);
    add_our_masq_rule(&t.name, &chain);
    let err = nft::ensure_masquerade(&t.name, "n", subnet).unwrap_err();
    assert!(matches!(err, NftError::Kernel { .. }), "{err:?}");
}

#[test]
fn masquerade_repairs_drift() {
    let t = TableGuard::new(Family::Inet, "masqdrift");
    let subnet = net("10.91.0.0/24");
    let chain = nft::masq_chain_name(subnet);
    nft::ensure_masquerade(&t.name, "n1", subnet).unwrap();
    // someone appends a rule by hand: the next ensure flushes it away
    nft_cmd(&["add", "rule", "inet", &t.name, &chain, "counter"]);
    nft::ensure_masquerade(&t.name, "n1", subnet).unwrap();
    let listing = nft_cmd(&["list", "table", "inet", &t.name]);
    assert_eq!(rule_lines(&listing).len(), 1, "{listing}");
    assert!(!listing.contains("counter"), "{listing}");
    // same subnet, other network name: the comment is rewritten
    nft::ensure_masquerade(&t.name, "n2", subnet).unwrap();
    let listing = nft_cmd(&["list", "table", "inet", &t.name]);
    let rules = rule_lines(&listing);
    assert_eq!(rules.len(), 1, "{listing}");
    assert!(rules[0].ends_with("comment \"cni-bridge net=n2 subnet=10.91.0.0/24\""), "{listing}");
    // the rule replaced by hand with a different one is rewritten too
    nft_cmd(&["flush", "chain", "inet", &t.name, &chain]);
    nft_cmd(&[
        "add",
        "rule",
        "inet",
        &t.name,
        &chain,
        "ip",
        "saddr",
        "10.91.0.0/24",
        "masquerade",
        "comment",
        "\"cni-bridge net=n2 subnet=10.91.0.0/24\"",
    ]);
    nft::ensure_masquerade(&t.name, "n2", subnet).unwrap();
    let listing = nft_cmd(&["list", "table", "inet", &t.name]);
    assert_eq!(
        rule_lines(&listing),
        [concat!(
            "ip saddr 10.91.0.0/24 ip daddr != 10.91.0.0/24 ip daddr != 224.0.0.0/4 masquerade ",
            "comment \"cni-bridge net=n2 subnet=10.91.0.0/24\""
        )],
        "{listing}"
    );
}

#[test]
fn masquerade_ipv6() {
    let t = TableGuard::new(Family::Inet, "masq6");
    nft::ensure_masquerade(&t.name, "v6net", net("fd00:99::/64")).unwrap();
    nft::ensure_masquerade(&t.name, "v6net", net("fd00:99::/64")).unwrap();
    let listing = nft_cmd(&["list", "table", "inet", &t.name]);
    assert_eq!(
        rule_lines(&listing),
        [concat!(
            "ip6 saddr fd00:99::/64 ip6 daddr != fd00:99::/64 ip6 daddr != ff00::/8 masquerade ",
            "comment \"cni-bridge net=v6net subnet=fd00:99::/64\""
        )],
        "{listing}"
    );
}

#[test]
fn masquerade_unaligned_prefix_and_host_bits() {
    let t = TableGuard::new(Family::Inet, "masqodd");
    // host bits set, non byte-aligned prefixes (v4 and v6)
    nft::ensure_masquerade(&t.name, "odd", net("10.96.3.4/12")).unwrap();
    nft::ensure_masquerade(&t.name, "odd6", net("fd00:1234:5678::1/60")).unwrap();
    let listing = nft_cmd(&["list", "table", "inet", &t.name]);
    let rules = rule_lines(&listing);
    assert!(
        rules.contains(
            &concat!(
                "ip saddr 10.96.0.0/12 ip daddr != 10.96.0.0/12 ip daddr != 224.0.0.0/4 masquerade ",
                "comment \"cni-bridge net=odd subnet=10.96.0.0/12\""
            )
            .to_string()
        ),
        "{listing}"
    );
    assert!(
        rules.contains(
            &concat!(
                "ip6 saddr fd00:1234:5678::/60 ip6 daddr != fd00:1234:5678::/60 ip6 daddr != ff00::/8 ",
                "masquerade comment \"cni-bridge net=odd6 subnet=fd00:1234:5678::/60\""
            )
            .to_string()
        ),
        "{listing}"
    );
    // host bits do not change the chain
    assert_eq!(nft::masq_chain_name(net("10.96.3.4/12")), nft::masq_chain_name(net("10.96.0.0/12")));
}

#[test]
fn masquerade_failure_is_atomic_and_names_the_op() {
    let t = TableGuard::new(Family::Inet, "masqerr");
    let subnet = net("10.95.0.0/24");
    let chain = nft::masq_chain_name(subnet);
    // A regular (non-base) chain squatting on the name, with one rule in it.
    nft_cmd(&["add", "table", "inet", &t.name]);
    nft_cmd(&["add", "chain", "inet", &t.name, &chain]);
    nft_cmd(&["add", "rule", "inet", &t.name, &chain, "counter", "comment", "\"keep\""]);

    let err = nft::ensure_masquerade(&t.name, "n", subnet).unwrap_err();
    // The kernel refuses to turn a regular chain into a base chain
    // (EOPNOTSUPP for the policy on 6.x, EEXIST for the hook elsewhere).
    let NftError::Kernel { op, errno } = &err else {
        panic!("expected a kernel error, got {err:?}");
    };
    assert!([libc::EEXIST, libc::EOPNOTSUPP].contains(errno), "{err}");
    assert_eq!(op, &format!("add chain {chain} in table inet {}", t.name));
    let name = if *errno == libc::EEXIST { "EEXIST" } else { "EOPNOTSUPP" };
    assert_eq!(err.to_string(), format!("add chain {chain} in table inet {}: {name}", t.name));
    // The flush in the same batch was rolled back: the rule is still there.
    let listing = nft_cmd(&["list", "table", "inet", &t.name]);
    assert_eq!(rule_lines(&listing), ["counter packets 0 bytes 0 comment \"keep\""], "{listing}");
}

fn stats(mut samples: Vec<Duration>) -> String {
    samples.sort();
    let n = samples.len();
    format!(
        "min {:?}, median {:?}, p90 {:?}, max {:?} (n={n})",
        samples[0],
        samples[n / 2],
        samples[n * 9 / 10],
        samples[n - 1]
    )
}

fn timed(n: usize, mut f: impl FnMut(usize)) -> Vec<Duration> {
    (0..n)
        .map(|i| {
            let s = Instant::now();
            f(i);
            s.elapsed()
        })
        .collect()
}

#[test]
fn masquerade_timing() {
    let t = TableGuard::new(Family::Inet, "masqtime");
    let subnet = net("10.94.0.0/24");
    // First call: creates table + chain + rule (may autoload nf_nat modules).
    let cold = timed(1, |_| nft::ensure_masquerade(&t.name, "timing", subnet).unwrap());
    // Steady state (every container ADD on an existing network): read-only.
    let warm = timed(50, |_| nft::ensure_masquerade(&t.name, "timing", subnet).unwrap());
    // Fresh subnets: one creating batch each.
    let fresh = timed(20, |i| {
        let s = net(&format!("10.{}.{}.0/24", 200 + i / 200, i % 200));
        nft::ensure_masquerade(&t.name, "timing", s).unwrap()
    });
    // Rewrite of an existing rule (comment changes): the batch is as fast,
    // but closing the socket waits for the kernel's deferred destruction.
    let rewrite = timed(10, |i| nft::ensure_masquerade(&t.name, &format!("timing{i}"), subnet).unwrap());
    let list = timed(20, |_| {
        nft::list_chains(Family::Inet, &t.name).unwrap();
    });
    let del = timed(1, |_| nft::delete_table(Family::Inet, &t.name).unwrap());
    eprintln!("ensure_masquerade, first call (creates table+chain+rule): {:?}", cold[0]);
    eprintln!("ensure_masquerade, already in place: {}", stats(warm.clone()));
    eprintln!("ensure_masquerade, new subnet chain: {}", stats(fresh.clone()));
    eprintln!("ensure_masquerade, rewrite existing rule: {}", stats(rewrite));
    eprintln!("list_chains (21 chains): {}", stats(list));
    eprintln!("delete_table (21 chains): {:?}", del[0]);
    // Generous bounds: tests run in parallel, unoptimised, on small VMs.
    let median = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    assert!(median(warm) < Duration::from_millis(2));
    assert!(median(fresh) < Duration::from_millis(3));
    assert!(!table_exists(Family::Inet, &t.name));
}

// ---------------------------------------------------------------------------
// delete_table
// ---------------------------------------------------------------------------

#[test]
fn delete_table_missing_is_ok() {
    let t = TableGuard::new(Family::Inet, "delmissing");
    nft::delete_table(Family::Inet, &t.name).unwrap();
    nft::delete_table(Family::Bridge, &t.name).unwrap();
    nft::delete_table(Family::Ip, &t.name).unwrap();
    nft::delete_table(Family::Ip6, &t.name).unwrap();
}

#[test]
fn delete_table_removes_everything() {
    let t = TableGuard::new(Family::Inet, "delfull");
    nft::ensure_masquerade(&t.name, "n", net("10.93.0.0/24")).unwrap();
    nft::ensure_masquerade(&t.name, "n", net("fd00:93::/64")).unwrap();
    assert!(table_exists(Family::Inet, &t.name));
    nft::delete_table(Family::Inet, &t.name).unwrap();
    assert!(!table_exists(Family::Inet, &t.name));
    nft::delete_table(Family::Inet, &t.name).unwrap();

    // family matters: an `ip` table of the same name is another table
    nft_cmd(&["add", "table", "ip", &t.name]);
    nft::delete_table(Family::Inet, &t.name).unwrap();
    assert!(table_exists(Family::Ip, &t.name));
    nft::delete_table(Family::Ip, &t.name).unwrap();
    assert!(!table_exists(Family::Ip, &t.name));
}

// ---------------------------------------------------------------------------
// MAC spoof check, list_chains, delete_chain
// ---------------------------------------------------------------------------

const MAC: [u8; 6] = [0x02, 0x42, 0xac, 0x11, 0x00, 0x02];
const CID: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

#[test]
fn macspoofchk_reads_back_and_is_idempotent() {
    let t = TableGuard::new(Family::Bridge, "mac");
    for _ in 0..2 {
        nft::ensure_macspoofchk(&t.name, "mac_c1", "mynet", CID, "eth0", "vethc1", MAC).unwrap();
    }
    let listing = nft_cmd(&["list", "table", "bridge", &t.name]);
    assert!(listing.contains("chain mac_c1 {"), "{listing}");
    assert!(listing.contains("type filter hook prerouting priority"), "{listing}");
    // nft prints -300 in a bridge table as `dstnat`
    assert!(listing.contains("priority dstnat; policy accept;") || listing.contains("priority -300;"), "{listing}");
    assert_eq!(
        rule_lines(&listing),
        [format!(
            "iifname \"vethc1\" ether saddr != 02:42:ac:11:00:02 drop comment \"cni-bridge macspoofchk net=mynet cid={CID} if=eth0\""
        )],
        "{listing}"
    );

    // A new MAC replaces the rule rather than adding one.
    let mac2 = [0x0a, 0x58, 0x0a, 0xf4, 0x01, 0xff];
    nft::ensure_macspoofchk(&t.name, "mac_c1", "mynet", CID, "eth0", "vethc1", mac2).unwrap();
    let listing = nft_cmd(&["list", "table", "bridge", &t.name]);
    let rules = rule_lines(&listing);
    assert_eq!(rules.len(), 1, "{listing}");
    assert!(rules[0].starts_with("iifname \"vethc1\" ether saddr != 0a:58:0a:f4:01:ff drop"), "{listing}");
}

#[test]
fn macspoofchk_rejects_bad_ifname_without_touching_kernel() {
    let t = TableGuard::new(Family::Bridge, "macbad");
    let err = nft::ensure_macspoofchk(&t.name, "c", "n", CID, "eth0", "sixteen-chars-xx", MAC).unwrap_err();
    assert!(matches!(err, NftError::Invalid(_)), "{err:?}");
    assert!(!table_exists(Family::Bridge, &t.name));
}

#[test]
fn list_chains_returns_first_rule_comment() {
    let t = TableGuard::new(Family::Bridge, "list");
    assert_eq!(nft::list_chains(Family::Bridge, &t.name).unwrap(), []);

    nft::ensure_macspoofchk(&t.name, "mac_a", "n1", "cid-a", "eth0", "veth_a", MAC).unwrap();
    nft::ensure_macspoofchk(&t.name, "mac_b", "n1", "cid-b", "net1", "veth_b", MAC).unwrap();
    // a chain without rules, and a chain whose first rule has no comment
    nft_cmd(&["add", "chain", "bridge", &t.name, "empty"]);
    nft_cmd(&["add", "chain", "bridge", &t.name, "nocomment"]);
    nft_cmd(&["add", "rule", "bridge", &t.name, "nocomment", "counter"]);
    nft_cmd(&["add", "rule", "bridge", &t.name, "nocomment", "counter", "comment", "\"second\""]);

    let mut chains = nft::list_chains(Family::Bridge, &t.name).unwrap();
    chains.sort();
    assert_eq!(
        chains,
        [
            ("empty".to_string(), None),
            ("mac_a".to_string(), Some("cni-bridge macspoofchk net=n1 cid=cid-a if=eth0".to_string())),
            ("mac_b".to_string(), Some("cni-bridge macspoofchk net=n1 cid=cid-b if=net1".to_string())),
            ("nocomment".to_string(), None),
        ]
    );
    // same name, other family: nothing
    assert_eq!(nft::list_chains(Family::Inet, &t.name).unwrap(), []);
}

#[test]
fn list_chains_of_masquerade_table() {
    let t = TableGuard::new(Family::Inet, "listmasq");
    let s4 = net("10.92.0.0/24");
    let s6 = net("fd00:92::/64");
    nft::ensure_masquerade(&t.name, "netx", s4).unwrap();
    nft::ensure_masquerade(&t.name, "netx", s6).unwrap();
    let mut chains = nft::list_chains(Family::Inet, &t.name).unwrap();
    chains.sort();
    let mut want = vec![
        (nft::masq_chain_name(s4), Some("cni-bridge net=netx subnet=10.92.0.0/24".to_string())),
        (nft::masq_chain_name(s6), Some("cni-bridge net=netx subnet=fd00:92::/64".to_string())),
    ];
    want.sort();
    assert_eq!(chains, want);
}

#[test]
fn delete_chain_removes_only_that_chain() {
    let t = TableGuard::new(Family::Bridge, "delchain");
    // absent table, absent chain: both fine
    nft::delete_chain(Family::Bridge, &t.name, "mac_a").unwrap();
    nft::ensure_macspoofchk(&t.name, "mac_a", "n", "a", "eth0", "veth_a", MAC).unwrap();
    nft::ensure_macspoofchk(&t.name, "mac_b", "n", "b", "eth0", "veth_b", MAC).unwrap();
    nft::delete_chain(Family::Bridge, &t.name, "nope").unwrap();

    nft::delete_chain(Family::Bridge, &t.name, "mac_a").unwrap();
    let listing = nft_cmd(&["list", "table", "bridge", &t.name]);
    assert!(!listing.contains("chain mac_a"), "{listing}");
    assert!(listing.contains("chain mac_b"), "{listing}");
    assert_eq!(rule_lines(&listing).len(), 1, "{listing}");
    let chains = nft::list_chains(Family::Bridge, &t.name).unwrap();
    assert_eq!(chains.len(), 1);
    assert_eq!(chains[0].0, "mac_b");

    nft::delete_chain(Family::Bridge, &t.name, "mac_a").unwrap();
    nft::delete_chain(Family::Bridge, &t.name, "mac_b").unwrap();
    assert_eq!(nft::list_chains(Family::Bridge, &t.name).unwrap(), []);
    assert!(table_exists(Family::Bridge, &t.name), "the table itself stays");
}

// ---------------------------------------------------------------------------
// real packets: client ns -> router ns (masquerade) -> server ns
// ---------------------------------------------------------------------------

/// Deletes the named network namespaces (and with them the veths and the
/// nft tables inside) when dropped.
struct NetnsGuard(Vec<String>);

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("exec");
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
}

fn ping_ok(ns: &str, dst: &str) -> bool {
    Command::new("ip")
        .args(["netns", "exec", ns, "ping", "-c1", "-W1", "-q", dst])
        .output()
        .expect("exec ping")
        .status
        .success()
}

/// Runs `f` on a thread that has entered network namespace `ns`.
fn in_netns<T: Send>(ns: &str, f: impl FnOnce() -> T + Send) -> T {
    let file = File::open(format!("/run/netns/{ns}")).expect("open netns");
    std::thread::scope(|s| {
        s.spawn(|| {
            // SAFETY: plain syscall on a valid fd; only this thread moves.
            let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
            assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
            f()
        })
        .join()
        .unwrap()
    })
}

#[test]
fn masquerade_translates_real_packets() {
    assert!(Command::new("ping").arg("-V").output().is_ok(), "ping missing: run scripts/testbed.sh");
    let pid = std::process::id();
    let (a, r, s) = (format!("cnit{pid}a"), format!("cnit{pid}r"), format!("cnit{pid}s"));
    let _guard = NetnsGuard(vec![a.clone(), r.clone(), s.clone()]);
    for ns in [&a, &r, &s] {
        let _ = Command::new("ip").args(["netns", "del", ns]).output();
        sh(&["ip", "netns", "add", ns]);
        sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
    }
    // client a0 (10.99.7.2) <-> r0 (10.99.7.1) router r1 (192.0.2.1) <-> s0 (192.0.2.2) server
    sh(&["ip", "-n", &a, "link", "add", "a0", "type", "veth", "peer", "name", "r0", "netns", &r]);
    sh(&["ip", "-n", &r, "link", "add", "r1", "type", "veth", "peer", "name", "s0", "netns", &s]);
    sh(&["ip", "-n", &a, "addr", "add", "10.99.7.2/24", "dev", "a0"]);
    sh(&["ip", "-n", &r, "addr", "add", "10.99.7.1/24", "dev", "r0"]);
    sh(&["ip", "-n", &r, "addr", "add", "192.0.2.1/24", "dev", "r1"]);
    sh(&["ip", "-n", &s, "addr", "add", "192.0.2.2/24", "dev", "s0"]);
    for (ns, dev) in [(&a, "a0"), (&r, "r0"), (&r, "r1"), (&s, "s0")] {
        sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
    }
    sh(&["ip", "-n", &a, "route", "add", "default", "via", "10.99.7.1"]);
    sh(&["ip", "netns", "exec", &r, "sysctl", "-qw", "net.ipv4.ip_forward=1"]);

    // The server has no route back to 10.99.7.0/24: without NAT no reply.
    assert!(ping_ok(&r, "192.0.2.2"), "router cannot reach server");
    assert!(!ping_ok(&a, "192.0.2.2"), "reply came back without masquerade");

    let table = format!("cnit_{pid}_pkt");
    in_netns(&r, || nft::ensure_masquerade(&table, "pktnet", net("10.99.7.0/24"))).unwrap();
    assert!(ping_ok(&a, "192.0.2.2"), "masqueraded ping got no reply");

    // And the rule is gone with the table.
    in_netns(&r, || nft::delete_table(Family::Inet, &table)).unwrap();
    assert!(!ping_ok(&a, "192.0.2.2"), "masquerade still active after delete_table");
}

/// The handle fast path (`ensure_masquerade_known`) never trusts a handle
/// blindly: every change behind our back is noticed on the next call and
/// repaired, and a correct rule is left alone (same handle, no write).
#[test]
fn known_handle_notices_every_change_behind_our_back() {
    let t = TableGuard::new(Family::Inet, "known");
    let subnet = net("10.86.0.0/24");
    let chain = nft::masq_chain_name(subnet);
    let want = [concat!(
        "ip saddr 10.86.0.0/24 ip daddr != 10.86.0.0/24 ip daddr != 224.0.0.0/4 masquerade ",
        "comment \"cni-bridge net=n subnet=10.86.0.0/24\""
    )];
    let in_place = |known: Option<u64>| -> u64 {
        let h = nft::ensure_masquerade_known(&t.name, "n", subnet, known).unwrap().expect("handle read back");
        let listing = nft_cmd(&["list", "table", "inet", &t.name]);
        assert_eq!(rule_lines(&listing), want, "{listing}");
        assert_eq!(rule_handles(Family::Inet, &t.name), [h.to_string()], "returned handle is the rule's");
        h
    };
    let h = in_place(None);
    assert_eq!(in_place(Some(h)), h, "a correct rule is left alone");

    // rule flushed: the handle is gone, the rule comes back under a new one
    nft_cmd(&["flush", "chain", "inet", &t.name, &chain]);
    let h = in_place(Some(h));
    // a rule inserted before ours (it could accept packets before the masquerade)
    nft_cmd(&["insert", "rule", "inet", &t.name, &chain, "accept"]);
    let h = in_place(Some(h));
    // the chain's policy turned to drop
    nft_cmd(&["add", "chain", "inet", &t.name, &chain, "{ type nat hook postrouting priority 100; policy drop; }"]);
    let h = in_place(Some(h));
    assert!(nft_cmd(&["list", "table", "inet", &t.name]).contains("policy accept"));
    // table deleted and recreated by us elsewhere: handles restart, the content decides
    nft_cmd(&["delete", "table", "inet", &t.name]);
    let h2 = in_place(Some(h));
    // a handle that never was ours: the full check finds the rule in place, no write
    assert_eq!(in_place(Some(h2 + 1000)), h2);
    assert_eq!(in_place(Some(0)), h2);
}
