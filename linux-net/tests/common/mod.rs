//! Set-up shared by the kernel tests (`nft_state`, `nft_txn`, `vxlan`, and policy's
//! `compile_kernel`, which includes this file by path): network namespaces named
//! `<prefix><pid><tag>` behind a Drop guard that deletes them, with everything inside, even
//! when an assertion fails, and a command runner that fails the test on a non-zero exit.

#![allow(dead_code)]

use std::net::IpAddr;
use std::path::PathBuf;
use std::process::Command;

use ipnetwork::IpNetwork;
use linux_net::netns::NetNs;

/// Network namespaces `<prefix><pid><tag>`, created on construction (after removing
/// leftovers of a previous run with the same pid) and deleted when dropped.
pub struct Namespaces(pub Vec<String>);

impl Namespaces {
    /// `prefix` keeps one test file's namespaces apart from another's (and from other
    /// engineers' tests on the same machine).
    pub fn new(prefix: &str, tags: &[&str]) -> Namespaces {
        let guard = Namespaces(tags.iter().map(|t| format!("{prefix}{}{t}", std::process::id())).collect());
        for ns in &guard.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
            sh(&["ip", "netns", "add", ns]);
        }
        guard
    }

    pub fn name(&self, i: usize) -> &str {
        &self.0[i]
    }

    pub fn open(&self, i: usize) -> NetNs {
        NetNs::open(&PathBuf::from(format!("/run/netns/{}", self.0[i]))).expect("open netns")
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        for ns in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// Runs `args[0]` with the rest as arguments; its stdout, or a failed test naming the
/// command and its stderr.
pub fn sh(args: &[&str]) -> String {
    let out = Command::new(args[0]).args(&args[1..]).output().expect("exec");
    assert!(out.status.success(), "{args:?} failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

pub fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

pub fn net(s: &str) -> IpNetwork {
    s.parse().unwrap()
}
