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
    let (_, (ok, v)) = h.add(
        "w1",
        &c,
        "K8S_POD_NAMESPACE=prod",
        json!({"args": {"cni": {"labels": [{"key": "app", "value": "web"}]}}}),
    );
    assert!(ok, "{v}");
    let empty_rules = h.kernel_rules();

    let mut child = Reap(h.spawn_watch());
    let child = &mut child.0;
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
    // Ready once it has applied (and logged) the directory as it is.
    let wait_log = |pat: &str| -> bool {
        let end = std::time::Instant::now() + T;
        while let Some(left) = end.checked_duration_since(std::time::Instant::now()) {
            match rx.recv_timeout(left) {
                Ok(l) if l.contains(pat) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
        false
    };
    assert!(wait_log("policy applied"), "watch never applied");

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
    assert!(wait_log("20-bad.yaml:8"), "the bad file was not reported");
    assert_eq!(h.nft_table("inet").unwrap(), good, "a bad file changed the policy in force");

    // Fixed: applied again (the bad file removed, the web policy edited to another port).
    std::fs::remove_file(h.policy_dir().join("20-bad.yaml")).unwrap();
    h.write_policy("10-web.yaml", &ALLOW_WEB.replace("ports: [80]", "ports: [80, 443]"));
    assert!(wait_until(T, || h.nft_table("inet").is_some_and(|t| t != good)), "the edit never reached the kernel");
    assert_eq!(h.kernel_rules(), h.status()["rules"].as_u64().unwrap() as usize);

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
