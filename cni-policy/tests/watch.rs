//! `cni-policy watch`: re-applies on a file change, keeps the policy in force on a bad file,
//! exits 0 on SIGTERM. Asserted on what the kernel's table holds.

mod common;

use std::io::{BufRead, BufReader};
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use serde_json::json;
use testkit::util::wait_until;

const T: Duration = Duration::from_secs(20);

/// Kills the daemon if the test ends before it does (a failed assertion).
struct Reap(std::process::Child);

impl Drop for Reap {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

#[test]
fn watch_reapplies_on_change_and_keeps_the_old_policy_on_a_bad_file() {
    let mut h = Host::new();
    let c = h.container();
    // An endpoint registered by the plugin with an empty policy directory: nothing selects it.
    let (_, (ok, v)) = h.add("w1", &c, "K8S_POD_NAMESPACE=prod", labels(&[("app", "web")]));
    assert!(ok, "{v}");
    let empty_rules = h.kernel_rules();

    let mut child = Reap(h.spawn_watch());
    let child = &mut child.0;
    // Ready once it has applied (and logged) the directory as it is.
    let rx = log_lines(child);
    assert!(wait_log(&rx, "policy applied", T), "watch never applied");

    // A new file: applied without anyone calling anything.
    h.write_policy("10-web.yaml", ALLOW_WEB);
    assert!(
        wait_until(T, || h.status()["endpoints"][0]["policies"] == json!(["allow-web"])
            && h.kernel_rules() == h.status()["rules"].as_u64().unwrap() as usize
            && h.kernel_rules() != empty_rules),
        "the new policy never reached the kernel: {} rules",
        h.kernel_rules()
    );
    let good = h.nft_table("inet").unwrap();

    // A bad file: logged with file, line and field; the kernel keeps the policy in force.
    h.write_policy("20-bad.yaml", BAD_ACTION);
    assert!(wait_log(&rx, "20-bad.yaml:8", T), "the bad file was not reported");
    assert_eq!(h.nft_table("inet").unwrap(), good, "a bad file changed the policy in force");

    // Fixed: applied again (the bad file removed, the web policy edited to another port).
    std::fs::remove_file(h.policy_dir().join("20-bad.yaml")).unwrap();
    h.write_policy("10-web.yaml", &ALLOW_WEB.replace("ports: [80]", "ports: [80, 443]"));
    assert!(wait_until(T, || h.nft_table("inet").is_some_and(|t| t != good)), "the edit never reached the kernel");
    assert_eq!(h.kernel_rules(), h.status()["rules"].as_u64().unwrap() as usize);
    // Through the daemon's incremental compiler: deltas of what changed, never a replace.
    let applied: Vec<String> = std::iter::from_fn(|| rx.recv_timeout(Duration::from_millis(500)).ok())
        .filter(|l| l.contains("policy applied"))
        .collect();
    assert!(applied.iter().any(|l| l.contains("full=false") && !l.contains(" ops=0 ")), "{applied:?}");
    assert!(!applied.iter().any(|l| l.contains("full=true")), "{applied:?}");

    // SIGTERM: exit status 0.
    let pid = nix::unistd::Pid::from_raw(child.id() as i32);
    // `ip netns exec` execs the command in place: the child is cni-policy itself.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM).unwrap();
    let mut status = None;
    assert!(wait_until(T, || {
        status = child.try_wait().unwrap();
        status.is_some()
    }));
    assert_eq!(status.unwrap().code(), Some(0), "watch exit status on SIGTERM");
}

/// The daemon's stderr as a channel of lines (echoed to the test's stderr).
fn log_lines(child: &mut std::process::Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel::<String>();
    let stderr = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("watch: {line}");
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits up to `t` for a line containing `pat`.
fn wait_log(rx: &mpsc::Receiver<String>, pat: &str, t: Duration) -> bool {
    let end = std::time::Instant::now() + t;
    while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(pat) => return true,
            Ok(_) => {}
            Err(_) => return false,
        }
    }
    false
}

fn sysctls(h: &Host) -> String {
    testkit::util::sh(&format!(
        "ip netns exec {} sysctl -n net.bridge.bridge-nf-call-iptables net.bridge.bridge-nf-call-ip6tables",
        h.ns
    ))
    .1
    .split_whitespace()
    .collect::<Vec<_>>()
    .join(" ")
}

/// Someone deletes our table (or turns bridge-nf-call off): the resync tick puts it back within
/// the interval, with no file change and no CNI call.
#[test]
fn watch_heals_a_deleted_table_and_the_bridge_sysctls_within_the_resync_interval() {
    let mut h = Host::new();
    h.write_policy("10-web.yaml", ALLOW_WEB);
    let c = h.container();
    let web = labels(&[("app", "web")]);
    h.add_ok("r1", &c, "", web);
    let mut child = Reap(h.spawn_watch_with(&h.policy_dir(), &["--resync-interval", "1s"]));
    let rx = log_lines(&mut child.0);
    assert!(wait_log(&rx, "policy applied", T), "watch never applied");
    let rules = h.kernel_rules();
    assert!(rules > 0);

    assert!(testkit::util::sh(&format!("ip netns exec {} nft delete table inet cni-policy", h.ns)).0);
    assert!(h.nft_table("inet").is_none());
    // Within the interval (1 s) plus the apply; the bound leaves room for a loaded machine.
    let start = std::time::Instant::now();
    assert!(
        wait_until(Duration::from_secs(5), || h.nft_table("inet").is_some() && h.kernel_rules() == rules),
        "the deleted table was not put back"
    );
    eprintln!("healed in {:?}", start.elapsed());
    assert_eq!(h.status()["endpoints"][0]["inForce"], true);

    assert!(
        testkit::util::sh(&format!(
            "ip netns exec {} sysctl -q -w net.bridge.bridge-nf-call-iptables=0 net.bridge.bridge-nf-call-ip6tables=0",
            h.ns
        ))
        .0
    );
    assert!(wait_until(Duration::from_secs(5), || sysctls(&h) == "1 1"), "bridge-nf-call left off: {}", sysctls(&h));
}

/// A file written in two steps (open, part, pause, rest, close): nothing is applied until it is
/// closed. The first part alone is a valid policy that would select the endpoint with no rule
/// (deny all ingress): applied on IN_MODIFY, it would cut the endpoint off while the editor
/// pauses.
#[test]
fn a_file_written_in_two_steps_is_applied_only_after_close() {
    use std::io::Write;
    let mut h = Host::new();
    let c = h.container();
    let web = labels(&[("app", "web")]);
    h.add_ok("p1", &c, "", web);
    let empty = h.nft_table("inet").unwrap();
    let mut child = Reap(h.spawn_watch_with(&h.policy_dir(), &["--resync-interval", "1m"]));
    let rx = log_lines(&mut child.0);
    assert!(wait_log(&rx, "policy applied", T), "watch never applied");

    let (head, tail) = ALLOW_WEB.split_at(ALLOW_WEB.find("  ingress:").unwrap());
    assert!(policy::parse_str(std::path::Path::new("x.yaml"), head).is_ok(), "the first part is a policy alone");
    let mut f = std::fs::File::create(h.policy_dir().join("10-web.yaml")).unwrap();
    f.write_all(head.as_bytes()).unwrap();
    f.sync_all().unwrap();
    // The writer pauses (the scenario, not a synchronisation): during it no apply may happen.
    assert!(!wait_log(&rx, "policy applied", Duration::from_millis(1500)), "a half-written file was applied");
    assert_eq!(h.nft_table("inet").unwrap(), empty, "the kernel changed while the file was open");
    f.write_all(tail.as_bytes()).unwrap();
    drop(f);
    assert!(wait_log(&rx, "policy applied", T), "the closed file was not applied");
    assert_eq!(h.status()["endpoints"][0]["policies"], json!(["allow-web"]));
    let text = testkit::util::sh(&format!("ip netns exec {} nft list table inet cni-policy", h.ns)).1;
    assert!(text.contains("dport 80 accept"), "{text}");
}

/// `watch --dir` must be the plugin's policyDir (recorded in the state directory): else exit 2.
#[test]
fn watch_refuses_another_directory_than_the_plugins() {
    let mut h = Host::new();
    let c = h.container();
    h.add_ok("d1", &c, "", json!({}));
    let other = h.tmp.path().join("other.d");
    std::fs::create_dir_all(&other).unwrap();
    let child = h.spawn_watch_with(&other, &[]);
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("other.d") && err.contains(h.policy_dir().to_str().unwrap()), "{err}");
    // The plugin's own directory is accepted (the earlier tests run it).
}

/// A change inotify on the policy directory cannot see (the target of a symlink edited where it
/// lives, as with files kept elsewhere and linked in) is still applied: the resync tick compares
/// the directory's fingerprint, through symlinks, with the one of the last reload.
#[test]
fn a_change_inotify_does_not_report_is_applied_within_the_resync_interval() {
    let mut h = Host::new();
    let outside = h.state_dir().with_file_name("outside");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("10-web.yaml"), ALLOW_WEB).unwrap();
    std::os::unix::fs::symlink(outside.join("10-web.yaml"), h.policy_dir().join("10-web.yaml")).unwrap();
    let c = h.container();
    let web = json!({"args": {"cni": {"labels": [{"key": "app", "value": "web"}]}}});
    let (_, (ok, v)) = h.add("f1", &c, "", web);
    assert!(ok, "{v}");
    let mut child = Reap(h.spawn_watch_with(&h.policy_dir(), &["--resync-interval", "1s"]));
    let rx = log_lines(&mut child.0);
    assert!(wait_log(&rx, "policy applied", T), "watch never applied");
    let before = h.kernel_rules();
    // Two more ports: more rules in the policy's chain. Written beside the link's target, so the
    // watched directory itself sees no event.
    let tmp = outside.join(".10-web.yaml.tmp");
    std::fs::write(
        &tmp,
        ALLOW_WEB.replace(
            "ports: [80]",
            "ports: [80]\n  - action: Allow\n    protocol: UDP\n    destination:\n      ports: [53]",
        ),
    )
    .unwrap();
    std::fs::rename(&tmp, outside.join("10-web.yaml")).unwrap();
    assert!(
        wait_log(&rx, "changed without an inotify event", Duration::from_secs(5)),
        "the resync tick did not notice"
    );
    assert!(
        wait_until(Duration::from_secs(5), || h.kernel_rules() > before),
        "the edited policy never reached the kernel"
    );
}
