//! Exclusive attach with two nodes (two guest kernels on a real Ceph
//! cluster's bridge), batched into one pair of boots:
//!
//! 1. write on A, unstage, stage on B: the data is intact;
//!    Read-only many: refused while A holds the image read-write, then
//!    staged on both, no lock;
//! 2. NodeStage on A and B at once: exactly one wins, the other gets
//!    FAILED_PRECONDITION naming the winner;
//! 3. A dies (its guest SIGKILLed, no unstage) with two volumes staged;
//!    B cannot have them (refused at once, nothing mapped); takeover (`csi-rbd takeover` for one,
//!    `attach::unpublish` — ControllerUnpublishVolume's path — for the
//!    other) fences A's clients; B stages both at once with the data
//!    fsynced before the kill intact, and A's clients are blocklisted;
//!    A reboots at the same address and stages and writes again (a new
//!    client, a new nonce: the blocklist is for the dead client only).

mod node_common;

use std::time::{Duration, Instant};

use csi_core::pb::volume_capability::access_mode::Mode;
use node_common::*;
use tonic::Code;

/// Kill → B staged, asserted. The goal is under 10 s; under TCG on a
/// shared machine a stage alone (map + mount) takes seconds.
const TAKEOVER_BOUND: Duration = Duration::from_secs(30);
/// Kill → B's stage refused (the image still held by the dead A): one look
/// at the attach lock, no map. Far below the OSD's watch timeout (30 s),
/// which a map of the image would wait out.
const REFUSED_BOUND: Duration = Duration::from_secs(10);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_image_is_never_staged_on_two_nodes_and_moves_off_a_dead_node_in_seconds() {
    let c = Cluster::start();
    let mut ga = c.boot("node-a", 10);
    let mut gb = c.boot("node-b", 11);
    let mut a = node(&mut ga).await;
    let mut b = node(&mut gb).await;
    let cap = mount_cap("ext4", Mode::SingleNodeWriter);
    // The controller's view of attachments (librados from the host).
    let rbd = ceph::connect(&ceph::ConnectSpec {
        monitors: c.ceph.monitors(),
        user: "admin".into(),
        key: c.ceph.admin_key().into(),
        timeout: Duration::from_secs(15),
    })
    .unwrap();

    // 1. A writes, unstages; B stages and reads the same bytes.
    c.image("moved", 64);
    let v = Vol::with_context("moved", &[]);
    a.node_stage_volume(v.stage_req(&c, cap.clone())).await.unwrap();
    a.node_publish_volume(v.publish_req(1, cap.clone(), false)).await.unwrap();
    let sum = write_data(&ga, &format!("{}/data", v.target(1)), 8);
    let e = b.node_stage_volume(v.stage_req(&c, cap.clone())).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("\"node-a\""), "the message names the holder: {}", e.message());
    assert_eq!(gb.sh_ok("ls /sys/bus/rbd/devices | wc -l").unwrap(), "0", "B mapped an image A holds");
    a.node_unpublish_volume(v.unpublish_req(1)).await.unwrap();
    a.node_unstage_volume(v.unstage_req()).await.unwrap();
    b.node_stage_volume(v.stage_req(&c, cap.clone())).await.unwrap();
    b.node_publish_volume(v.publish_req(1, cap.clone(), false)).await.unwrap();
    assert_eq!(sha(&gb, &format!("{}/data", v.target(1))), sum, "data changed on the way from A to B");
    b.node_unpublish_volume(v.unpublish_req(1)).await.unwrap();
    b.node_unstage_volume(v.unstage_req()).await.unwrap();

    // 1b. Read-only many: refused while a node holds the image read-write,
    // then any number of readers, no lock.
    let rox = mount_cap("ext4", Mode::MultiNodeReaderOnly);
    a.node_stage_volume(v.stage_req(&c, cap.clone())).await.unwrap();
    let e = b.node_stage_volume(v.stage_req(&c, rox.clone())).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
    assert!(e.message().contains("\"node-a\""), "{}", e.message());
    a.node_unstage_volume(v.unstage_req()).await.unwrap();
    for (n, g) in [(&mut a, &ga), (&mut b, &gb)] {
        n.node_stage_volume(v.stage_req(&c, rox.clone())).await.expect("read-only stage");
        n.node_publish_volume(v.publish_req(1, rox.clone(), true)).await.unwrap();
        assert_eq!(sha(g, &format!("{}/data", v.target(1))), sum);
        assert_ne!(g.sh(&format!("touch {}/x", v.target(1))).unwrap().0, 0, "a read-only stage took a write");
    }
    assert!(c.lock_holders("moved").is_empty(), "read-only stages take no lock");
    assert_eq!(csi_rbd::attach::nodes(rbd.as_ref(), "rbd", "moved").unwrap(), vec!["node-a", "node-b"]);
    for n in [&mut a, &mut b] {
        n.node_unpublish_volume(v.unpublish_req(1)).await.unwrap();
        n.node_unstage_volume(v.unstage_req()).await.unwrap();
    }

    // 2. Both at once: one winner, the loser told who won.
    c.image("raced", 64);
    let r = Vol::with_context("raced", &[]);
    let (ra, rb) = tokio::join!(
        a.node_stage_volume(r.stage_req(&c, cap.clone())),
        b.node_stage_volume(r.stage_req(&c, cap.clone()))
    );
    let (winner, loser_err, loser_g) = match (&ra, &rb) {
        (Ok(_), Err(e)) => ("node-a", e.clone(), &gb),
        (Err(e), Ok(_)) => ("node-b", e.clone(), &ga),
        _ => panic!("exactly one stage must win: A {ra:?}, B {rb:?}"),
    };
    eprintln!("race won by {winner}");
    assert_eq!(loser_err.code(), Code::FailedPrecondition, "{loser_err:?}");
    assert!(loser_err.message().contains(&format!("\"{winner}\"")), "{}", loser_err.message());
    assert_eq!(loser_g.sh_ok("ls /sys/bus/rbd/devices | wc -l").unwrap(), "0", "the loser left a mapping");
    assert_eq!(c.lock_holders("raced"), vec![winner.to_string()]);
    let w = if winner == "node-a" { &mut a } else { &mut b };
    w.node_unstage_volume(r.unstage_req()).await.unwrap();

    // 3. A dies holding two volumes.
    let vols = [Vol::with_context("orphan-1", &[]), Vol::with_context("orphan-2", &[])];
    let mut sums = Vec::new();
    let mut clients = Vec::new();
    for v in &vols {
        c.image(&v.image, 64);
        a.node_stage_volume(v.stage_req(&c, cap.clone())).await.unwrap();
        a.node_publish_volume(v.publish_req(1, cap.clone(), false)).await.unwrap();
        sums.push(write_data(&ga, &format!("{}/data", v.target(1)), 4));
        let dev = ga.sh_ok(&format!("findmnt -n -o SOURCE {}", v.staging())).unwrap();
        let id = dev.trim_start_matches("/dev/rbd");
        clients.push(ga.sh_ok(&format!("cat /sys/bus/rbd/devices/{id}/client_addr")).unwrap());
    }
    assert_ne!(clients[0], clients[1], "every mapping has a client of its own (noshare)");
    let killed = Instant::now();
    ga.kill();
    drop(a);
    let e = b.node_stage_volume(vols[0].stage_req(&c, cap.clone())).await.unwrap_err();
    assert_eq!(e.code(), Code::FailedPrecondition, "a dead node's lock still holds until takeover: {e:?}");
    let refused = killed.elapsed();
    // Refused before anything is mapped: a map would read the partition
    // table, which waits for the dead holder's exclusive lock on the image
    // header until its watch times out (30 s; what this step took before).
    assert!(refused < REFUSED_BOUND, "the refused stage took {refused:?}");

    // Takeover by hand for the first volume: the admin command, key from the environment.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_csi-rbd"))
        .args(["takeover", "--cluster-config", &c.config.display().to_string(), "--node", "node-a"])
        .args(["--volume-id", &vols[0].id, "--pool", "rbd", "--image", &vols[0].image])
        .env("CEPH_USER_KEY", c.ceph.admin_key())
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "takeover: {said} {}", String::from_utf8_lossy(&out.stderr));
    assert!(said.contains(&clients[0]), "takeover names the fenced client: {said}");
    let fenced = killed.elapsed();
    b.node_stage_volume(vols[0].stage_req(&c, cap.clone())).await.expect("B stages after the takeover");
    let migrated = killed.elapsed();
    // Where a slow takeover spends its time.
    eprintln!(
        "MEASURE takeover phases: B refused at {:.2} s, takeover command done at {:.2} s, B staged at {:.2} s",
        refused.as_secs_f64(),
        fenced.as_secs_f64(),
        migrated.as_secs_f64()
    );

    // The second through ControllerUnpublishVolume's path.
    csi_rbd::attach::unpublish(rbd.as_ref(), "rbd", &vols[1].image, "node-a").unwrap();
    csi_rbd::attach::unpublish(rbd.as_ref(), "rbd", &vols[1].image, "node-a").expect("unpublish is idempotent");
    b.node_stage_volume(vols[1].stage_req(&c, cap.clone())).await.expect("B stages after ControllerUnpublish");

    eprintln!("MEASURE takeover: node A killed → volume staged on node B in {:.2} s", migrated.as_secs_f64());
    // Node A reboots (same address) while B takes over: its new kernel
    // client has a new nonce, so the blocklist does not touch it.
    let mut ga = c.boot("node-a", 10);
    assert!(migrated < TAKEOVER_BOUND, "kill → B staged took {migrated:?}");
    for (v, sum) in vols.iter().zip(&sums) {
        b.node_publish_volume(v.publish_req(1, cap.clone(), false)).await.unwrap();
        assert_eq!(
            &sha(&gb, &format!("{}/data", v.target(1))),
            sum,
            "data fsynced on A before the kill is not intact on B"
        );
        assert_eq!(c.lock_holders(&v.image), vec!["node-b"]);
        assert_eq!(csi_rbd::attach::nodes(rbd.as_ref(), "rbd", &v.image).unwrap(), vec!["node-b"]);
    }
    let blocked = c.blocklist();
    for cl in &clients {
        assert!(blocked.iter().any(|b| b == cl), "A's client {cl} is not blocklisted: {blocked:?}");
    }
    for v in &vols {
        b.node_unpublish_volume(v.unpublish_req(1)).await.unwrap();
        b.node_unstage_volume(v.unstage_req()).await.unwrap();
    }

    // The rebooted A, at the address whose old clients are blocklisted, stages and writes.
    let mut a = node(&mut ga).await;
    a.node_stage_volume(vols[0].stage_req(&c, cap.clone())).await.expect("the rebooted node A stages");
    a.node_publish_volume(vols[0].publish_req(1, cap.clone(), false)).await.unwrap();
    assert_eq!(sha(&ga, &format!("{}/data", vols[0].target(1))), sums[0]);
    write_data(&ga, &format!("{}/more", vols[0].target(1)), 1);
    let id = ga.sh_ok(&format!("findmnt -n -o SOURCE {}", vols[0].staging())).unwrap();
    let addr =
        ga.sh_ok(&format!("cat /sys/bus/rbd/devices/{}/client_addr", id.trim_start_matches("/dev/rbd"))).unwrap();
    assert!(addr.starts_with(&format!("{}:", ga.addr())) && !clients.contains(&addr), "{addr} vs {clients:?}");
    a.node_unpublish_volume(vols[0].unpublish_req(1)).await.unwrap();
    a.node_unstage_volume(vols[0].unstage_req()).await.unwrap();
}
