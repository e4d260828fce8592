//! Snapshot export and import through the EBS direct APIs, against moto
//! (a real EBS API server on loopback), from and to loop devices attached
//! by the hypervisor stand-in (`common/hypervisor.rs`).
//!
//! moto is started through `testkit::moto::EBS_LAUNCHER`, which corrects
//! three of its EBS direct answers to what EBS documents, and only those:
//! `BlockSize` is 524288 (moto says 512, and the driver refuses anything
//! but EBS's); the EC2 snapshot is `pending` until CompleteSnapshot (moto
//! says `completed` from the start, which would make the export's wait
//! for completion pass without showing it); ListChangedBlocks follows
//! `ParentSnapshotId` (moto ignores the parent, so it lists a parent's
//! blocks as changed and misses the child's new ones). Every other request
//! and answer is moto's own (docs/csi-cloud.md, "moto").
//!
//! What moto still does not model is not asserted: ListSnapshotBlocks of a
//! child lists only the blocks sent to it (EBS lists the inherited ones
//! too), so the child is restored here onto a disk that holds its parent,
//! incrementally (ListChangedBlocks), which gives the same bytes on both.

mod common;

use std::time::Duration;

use common::hypervisor::EbsDisk;
use csi_cloud::snapshot_io::{self, ExportOptions, ImportOptions, Manifest, BLOCK_SIZE};

const MIB: u64 = 1 << 20;
const DISK: u64 = 64 * MIB;
const BLOCKS: u64 = DISK / BLOCK_SIZE;

fn block(seed: u64) -> Vec<u8> {
    let mut r = testkit::rng::SplitMix64(seed);
    (0..BLOCK_SIZE / 8).flat_map(|_| r.next().to_le_bytes()).collect()
}

fn whole(disk: &EbsDisk) -> Vec<u8> {
    disk.read_at(0, DISK as usize)
}

async fn listed(ebs: &aws_sdk_ebs::Client, snap: &str) -> usize {
    let out = ebs.list_snapshot_blocks().snapshot_id(snap).send().await.unwrap();
    assert_eq!(out.block_size(), Some(BLOCK_SIZE as i32));
    out.blocks().len()
}

fn export_opts(source: &str, parent: Option<&Manifest>, concurrency: usize) -> ExportOptions {
    ExportOptions {
        source: source.into(),
        parent: parent.map(|m| m.snapshot_id.clone()),
        parent_manifest: parent.cloned(),
        volume_size_gib: None,
        description: "h5 test".into(),
        tags: vec![("test".into(), "snapshot_io".into())],
        concurrency,
        timeout_minutes: 10,
        progress: false,
        wait: Some(Duration::from_secs(60)),
    }
}

fn import_opts(snapshot: &str, target: &str, onto_parent: Option<&str>, concurrency: usize) -> ImportOptions {
    ImportOptions {
        snapshot_id: snapshot.into(),
        target: target.into(),
        concurrency,
        progress: false,
        onto_parent: onto_parent.map(str::to_string),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_import_and_an_incremental_export_through_moto() {
    let dir = tempfile::Builder::new().prefix("h5-snap-").tempdir_in("/var/tmp").unwrap();
    let moto = testkit::moto::Moto::start_ebs_corrected(dir.path()).unwrap();
    let clients = csi_cloud::aws::Clients::for_emulator(&moto.endpoint(), testkit::moto::REGION, "testing", "testing");
    let ebs = &clients.ebs;

    // The source: 128 blocks, 8 full of data, one with 3 bytes, the rest zeros.
    let a = EbsDisk::attach(DISK);
    let full = [0u64, 1, 2, 5, 17, 64, 100, 127];
    for i in full {
        a.write_at(i * BLOCK_SIZE, &block(i));
    }
    a.write_at(50 * BLOCK_SIZE + 1000, b"abc");

    let r1 = snapshot_io::export(&clients, export_opts(&a.loop_dev, None, 16)).await.unwrap();
    eprintln!("full export: {r1:?}");
    // It returned once EC2 said completed (pending until CompleteSnapshot).
    assert_eq!((r1.state.as_str(), r1.completion_polls), ("completed", 1));
    let described = clients.ec2.describe_snapshots().snapshot_ids(&r1.snapshot_id).send().await.unwrap();
    assert_eq!(described.snapshots()[0].state().map(|s| s.as_str()), Some("completed"));
    assert_eq!(r1.blocks_read, BLOCKS);
    assert_eq!(r1.blocks_sent, 9, "8 data blocks and the 3-byte one");
    assert_eq!(r1.blocks_zero_skipped, BLOCKS - 9);
    assert_eq!(r1.volume_size_gib, 1);
    assert_eq!(listed(ebs, &r1.snapshot_id).await, 9, "moto holds what was sent");
    assert_eq!(r1.manifest.blocks.len(), 9);

    // Import onto another blank disk: the same 64 MiB.
    let b = EbsDisk::attach(DISK);
    let i1 = snapshot_io::import(ebs, import_opts(&r1.snapshot_id, &b.loop_dev, None, 16)).await.unwrap();
    assert_eq!((i1.blocks_written, i1.blocks_zeroed), (9, 0));
    let original = whole(&a);
    assert!(whole(&b) == original, "the imported disk differs from the source");

    // Change the source: block 2 new data, block 5 zeroed, block 90 new,
    // block 17 rewritten with the same bytes (not a change).
    a.write_at(2 * BLOCK_SIZE, &block(1002));
    a.write_at(5 * BLOCK_SIZE, &vec![0u8; BLOCK_SIZE as usize]);
    a.write_at(90 * BLOCK_SIZE, &block(90));
    a.write_at(17 * BLOCK_SIZE, &block(17));
    // The manifest goes through its file, as from the CLI.
    let mpath = dir.path().join("snap1.manifest.json");
    r1.manifest.save(&mpath).unwrap();
    let m1 = Manifest::load(&mpath).unwrap();
    let r2 = snapshot_io::export(&clients, export_opts(&a.loop_dev, Some(&m1), 16)).await.unwrap();
    eprintln!("incremental export: {r2:?}");
    assert_eq!(r2.blocks_sent, 3, "blocks 2 and 90 changed, block 5 became zeros");
    assert_eq!(r2.blocks_unchanged_skipped, 7, "0, 1, 17, 50, 64, 100, 127 unchanged");
    assert_eq!(r2.blocks_zero_skipped, BLOCKS - 10);
    assert_eq!(listed(ebs, &r2.snapshot_id).await, 3, "moto holds exactly the blocks sent to the child");
    assert_eq!(r2.manifest.blocks.len(), 9, "the child's manifest: the parent's with the changes");
    assert!(!r2.manifest.blocks.contains_key(&5) && r2.manifest.blocks.contains_key(&90));

    // The child onto the disk that holds its parent, incrementally: only the
    // blocks ListChangedBlocks names (2, 90 and the zeroed 5, which the child
    // holds as a block of zeros), and the disk is the changed source.
    let i2 =
        snapshot_io::import(ebs, import_opts(&r2.snapshot_id, &b.loop_dev, Some(&r1.snapshot_id), 4)).await.unwrap();
    eprintln!("incremental import: {i2:?}");
    assert_eq!((i2.blocks_written, i2.blocks_zeroed), (3, 0), "exactly the changed blocks");
    assert_eq!(i2.onto_parent.as_deref(), Some(r1.snapshot_id.as_str()));
    assert!(whole(&b) == whole(&a), "after the incremental import the disk differs from the source");
    // And back: the parent onto the disk holding the child. Block 90 is only
    // in the child: the parent has no block there, so it becomes zeros.
    let back =
        snapshot_io::import(ebs, import_opts(&r1.snapshot_id, &b.loop_dev, Some(&r2.snapshot_id), 4)).await.unwrap();
    assert_eq!((back.blocks_written, back.blocks_zeroed), (2, 1), "blocks 2 and 5 fetched, 90 zeroed");
    assert!(whole(&b) == original, "rolled back to the parent, the disk differs from the first export's source");

    // A parent manifest of another snapshot is refused before anything is sent.
    let wrong = Manifest { snapshot_id: "snap-0000".into(), ..m1.clone() };
    let e = snapshot_io::export(
        &clients,
        ExportOptions { parent: Some(r1.snapshot_id.clone()), ..export_opts(&a.loop_dev, Some(&wrong), 4) },
    )
    .await
    .unwrap_err();
    assert!(e.to_string().contains("not of the parent"), "{e}");
    // An unknown snapshot: NOT_FOUND from EBS, named.
    let x = dir.path().join("x.img");
    let e = snapshot_io::import(ebs, import_opts("snap-0123456789abcdef0", x.to_str().unwrap(), None, 4))
        .await
        .unwrap_err();
    assert!(e.to_string().contains("snap-0123456789abcdef0"), "{e}");

    // A snapshot never completed: the wait polls with backoff and gives up
    // at its bound, DEADLINE_EXCEEDED naming the snapshot and its state.
    let open = ebs.start_snapshot().volume_size(1).timeout(10).send().await.unwrap();
    let open = open.snapshot_id().unwrap();
    let t = std::time::Instant::now();
    let e = snapshot_io::completion::wait_completed(&clients.ec2, open, Duration::from_secs(2)).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::DeadlineExceeded, "{e}");
    assert!(e.to_string().contains(open) && e.to_string().contains("still pending after"), "{e}");
    // It never sleeps past the bound (the last poll's own time may add a little).
    assert!(t.elapsed() < Duration::from_secs(3), "gave up at its bound: {:?}", t.elapsed());

    // The CLI: export the changed disk into an image file's snapshot and back.
    let bin = env!("CARGO_BIN_EXE_csi-cloud");
    let run = |args: &[&str]| {
        let out = std::process::Command::new(bin)
            .arg("snapshot")
            .args(args)
            .args(["--aws-endpoint-url", &moto.endpoint()])
            .envs(moto.env())
            .output()
            .unwrap();
        assert!(out.status.success(), "csi-cloud snapshot {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let manifest_out = dir.path().join("cli.manifest.json");
    let rep =
        run(&["export", "--source", &a.loop_dev, "--manifest-out", manifest_out.to_str().unwrap(), "--no-progress"]);
    assert_eq!(rep["blocks_sent"], 9);
    assert_eq!(rep["state"], "completed");
    assert_eq!(rep["completion_polls"], 1, "the CLI waits by default");
    let nowait = run(&["export", "--source", &a.loop_dev, "--no-wait", "--no-progress"]);
    assert_eq!(nowait["completion_polls"], 0, "--no-wait: CompleteSnapshot's answer");
    let snap = rep["snapshot_id"].as_str().unwrap().to_string();
    let img = dir.path().join("restored.img");
    let rep = run(&[
        "import",
        "--snapshot-id",
        &snap,
        "--target",
        img.to_str().unwrap(),
        "--concurrency",
        "8",
        "--no-progress",
    ]);
    assert_eq!(rep["blocks_written"], 9);
    let f = std::fs::File::open(&img).unwrap();
    assert_eq!(f.metadata().unwrap().len(), 1 << 30, "a missing image file becomes the snapshot's size");
    let mut head = vec![0u8; DISK as usize];
    std::os::unix::fs::FileExt::read_exact_at(&f, &mut head, 0).unwrap();
    assert!(head == whole(&a), "the restored image differs from the source");
    // Sparse past the source's end: no data to seek to.
    let past = nix::unistd::lseek(&f, DISK as i64, nix::unistd::Whence::SeekData);
    assert_eq!(past, Err(nix::errno::Errno::ENXIO), "data written past the source's end");
    assert_eq!(Manifest::load(&manifest_out).unwrap().snapshot_id, snap);

    // What parallel transfers buy against this moto: a disk full of data,
    // exported and imported one block at a time and 16 at a time (printed for
    // docs/csi-cloud.md; moto, a Python process, is the bottleneck here).
    let c = EbsDisk::attach(DISK);
    for i in 0..BLOCKS {
        c.write_at(i * BLOCK_SIZE, &block(10_000 + i));
    }
    for conc in [1, 16] {
        let r = snapshot_io::export(&clients, export_opts(&c.loop_dev, None, conc)).await.unwrap();
        assert_eq!(r.blocks_sent, BLOCKS);
        let d = EbsDisk::attach(DISK);
        let i = snapshot_io::import(ebs, import_opts(&r.snapshot_id, &d.loop_dev, None, conc)).await.unwrap();
        assert!(whole(&d) == whole(&c));
        eprintln!(
            "MEASURE concurrency {conc}: export {:.1} MiB/s ({:.2} s), import {:.1} MiB/s ({:.2} s)",
            r.read_mib_per_s, r.seconds, i.write_mib_per_s, i.seconds
        );
    }
}
