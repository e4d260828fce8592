//! `conformance csi` (the CSI sanity suite, all of it, node specs included)
//! against csi-rbd and a real Ceph cluster: zero failures, nothing
//! filtered, and no image left in the pool afterwards.
//!
//! One spec is left out: "ControllerPublishVolume should fail when the node
//! does not exist" ([`NOT_APPLICABLE`]): csi-rbd's nodes register nowhere
//! the controller can read (a node gets credentials only with NodeStage,
//! after ControllerPublish), so a node it has never seen is published like
//! any other, as docs/csi-rbd.md says; refusing it would refuse every new node.
//!
//! The host kernel has no `rbd`, so the node service cannot run here: this
//! test starts a throwaway cluster ([`csi_suite::ceph::Ceph`], on a bridge
//! of its own), writes ceph-csi's config.json, the StorageClass-style
//! parameters and the secrets (every RPC's section: `userID`, `userKey`),
//! and boots ONE guest kernel on the cluster's bridge
//! (`scripts/guest/csi-rbd-suite.sh`) that runs `csi-rbd --mode all` and
//! the suite against it. The host reads the suite's summary from the
//! guest's output, then looks at the pool itself.
//!
//! Needs `csi-rbd` next to the `conformance` binary
//! (`cargo build --release -p csi-rbd -p conformance`); a missing binary,
//! Ceph or guest kernel fails the test, never skips it.

mod common;

use std::os::unix::fs::PermissionsExt;

use csi_suite::ceph::Ceph;
use csi_suite::csi::config::SECRET_KINDS;

/// The `clusterID` of the test's config.json.
const CLUSTER_ID: &str = "suite";
/// Each spec's volume: small, so that mkfs.ext4 under the emulated CPU is quick
/// (the images are thin either way).
const VOLUME_SIZE: u64 = 64 << 20;

/// The one spec that cannot apply (see the module docs).
const NOT_APPLICABLE: &str = "ControllerPublishVolume should fail when the node does not exist";

/// The counts of the suite's last line:
/// `94 specs: P passed, F failed, S skipped (capability not advertised), X filtered`.
#[derive(Debug, PartialEq)]
struct Summary {
    total: usize,
    passed: usize,
    failed: usize,
    skipped: usize,
    filtered: usize,
}

fn summary(stdout: &str) -> Option<Summary> {
    let line = stdout.lines().rev().find(|l| l.contains(" specs: ") && l.contains(" passed"))?;
    let (total, rest) = line.trim().split_once(" specs: ")?;
    let count = |word: &str| -> Option<usize> {
        rest.split(", ").find_map(|part| {
            let (n, what) = part.split_once(' ')?;
            what.starts_with(word).then(|| n.parse().ok()).flatten()
        })
    };
    Some(Summary {
        total: total.parse().ok()?,
        passed: count("passed")?,
        failed: count("failed")?,
        skipped: count("skipped").unwrap_or(0),
        filtered: count("filtered").unwrap_or(0),
    })
}

#[test]
fn summary_lines_parse() {
    let s = summary("x\n94 specs: 45 passed, 0 failed, 23 skipped (capability not advertised), 26 filtered\n");
    assert_eq!(s, Some(Summary { total: 94, passed: 45, failed: 0, skipped: 23, filtered: 26 }));
    let s = summary("94 specs: 93 passed, 1 failed, 0 skipped (capability not advertised), 0 filtered");
    assert_eq!(s.map(|s| s.failed), Some(1));
    assert_eq!(summary("no summary here"), None);
}

#[test]
fn every_spec_passes_against_csi_rbd_on_ceph_in_a_guest_and_no_image_is_left() {
    common::require_root();
    let mut c = Ceph::start().expect("start ceph (scripts/testbed.sh installs ceph-mon ceph-osd ceph-common)");
    // GetCapacity's pool statistics come from the manager.
    c.start_mgr().expect("start ceph-mgr (scripts/testbed.sh installs it)");
    let work = common::TempDir::new("csi-rbd-suite");
    let write = |name: &str, text: String| {
        let p = work.0.join(name);
        std::fs::write(&p, text).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    };
    write("config.json", c.cluster_config_json(CLUSTER_ID));
    write("params.json", serde_json::json!({"clusterID": CLUSTER_ID, "pool": "rbd"}).to_string());
    let user = serde_json::json!({"userID": "admin", "userKey": c.admin_key()});
    let secrets: serde_json::Map<String, serde_json::Value> =
        SECRET_KINDS.iter().map(|k| (k.to_string(), user.clone())).collect();
    write("secrets.json", serde_json::Value::Object(secrets).to_string());

    let bins = common::GuestBins::stage(
        "csi-rbd-suite",
        &[(common::our_dir().join("csi-rbd"), "csi-rbd"), (common::conformance_bin(), "conformance")],
    );
    let addr = format!("{}/{}", c.host(10), c.prefix_len());
    let net = format!("bridge:{}", c.bridge());
    let size = VOLUME_SIZE.to_string();
    let (status, stdout) = common::run_in_guest(
        "scripts/guest/csi-rbd-suite.sh",
        &[
            bins.dir.join("conformance").as_os_str(),
            bins.dir.join("csi-rbd").as_os_str(),
            work.0.as_os_str(),
            "--volume-size".as_ref(),
            size.as_ref(),
            "--rpc-timeout".as_ref(),
            "120".as_ref(),
            "--skip".as_ref(),
            NOT_APPLICABLE.as_ref(),
        ],
        &[("GUEST_NETWORK", &net), ("GUEST_ADDR", &addr), ("GUEST_MODULES", "rbd"), ("GUEST_TIMEOUT", "1500")],
    );

    let s = summary(&stdout).unwrap_or_else(|| panic!("the guest printed no suite summary ({status:?}, output above)"));
    eprintln!("csi-rbd suite: {s:?}");
    // Every problem at once, so that one run shows them all.
    let mut problems = Vec::new();
    if s.failed != 0 {
        problems.push(format!("{} specs failed (output above)", s.failed));
    }
    if s.filtered != 1 {
        problems.push(format!("{} specs filtered: only {NOT_APPLICABLE:?} may be", s.filtered));
    }
    if s.passed + s.skipped + s.filtered + s.failed != s.total {
        problems.push(format!("counts do not add up: {s:?}"));
    }
    if s.passed < 80 {
        problems.push(format!(
            "only {} of {} specs passed: capabilities csi-rbd should advertise are missing",
            s.passed, s.total
        ));
    }
    if !status.success() {
        problems.push(format!("guest script failed: {status:?}"));
    }
    let left: Vec<&str> = stdout.lines().filter(|l| l.starts_with("LEFT: ")).collect();
    if !left.is_empty() {
        problems.push(format!("the run left devices or mounts in the guest: {left:?}"));
    }
    // The pool: no image (volumes, and the csi-snap-* images behind snapshots), nothing in the trash.
    let images = c.rbd(&["ls", "rbd"]).expect("rbd ls");
    if !images.trim().is_empty() {
        problems.push(format!("images left in the pool: {}", images.split_whitespace().collect::<Vec<_>>().join(" ")));
    }
    let trash = c.rbd(&["trash", "ls", "rbd"]).expect("rbd trash ls");
    if !trash.trim().is_empty() {
        problems.push(format!("images left in the pool's trash: {trash}"));
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}
