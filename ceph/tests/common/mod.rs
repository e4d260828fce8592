//! A real single-node cluster per test and a connection to it as
//! client.admin.

#![allow(dead_code)]

use std::sync::Arc;
use std::time::Duration;

use csi_suite::ceph::Ceph;

pub fn cluster() -> Ceph {
    Ceph::start().expect("start a Ceph cluster (scripts/testbed.sh installs ceph-mon ceph-osd ceph-common)")
}

pub fn spec(c: &Ceph, timeout: Duration) -> ceph::ConnectSpec {
    ceph::ConnectSpec { monitors: c.monitors(), user: "admin".into(), key: c.admin_key().to_string(), timeout }
}

pub fn connect(c: &Ceph) -> Arc<dyn ceph::Rbd> {
    ceph::connect(&spec(c, Duration::from_secs(10))).expect("connect as client.admin")
}

/// Runs `rbd ARGS --format json` and parses it.
pub fn rbd_json(c: &Ceph, args: &[&str]) -> serde_json::Value {
    let mut a = args.to_vec();
    a.extend(["--format", "json"]);
    let out = c.rbd(&a).unwrap_or_else(|e| panic!("rbd {args:?}: {e}"));
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("rbd {args:?}: {e}: {out}"))
}
