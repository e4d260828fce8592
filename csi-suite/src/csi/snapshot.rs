//! csi-sanity's "ListSnapshots [Controller Server]", "GetSnapshot
//! [Controller Server]", "DeleteSnapshot [Controller Server]" and
//! "CreateSnapshot [Controller Server]" specs.

use csi_core::pb;
use tonic::Code;

use super::{ensure, expect_code, ok, spec, verify_snapshot, Cap, CtrlCap, Ctx, Res, Spec, MAX_NAME_LENGTH};

const CDV: Cap = Cap::Ctrl(CtrlCap::CreateDeleteVolume);
const CDS: Cap = Cap::Ctrl(CtrlCap::CreateDeleteSnapshot);
const LIST: Cap = Cap::Ctrl(CtrlCap::ListSnapshots);
const GET: Cap = Cap::Ctrl(CtrlCap::GetSnapshot);

pub fn specs() -> Vec<Spec> {
    let l = "ListSnapshots [Controller Server]";
    let g = "GetSnapshot [Controller Server]";
    let d = "DeleteSnapshot [Controller Server]";
    let c = "CreateSnapshot [Controller Server]";
    vec![
        spec!(format!("{l} should return appropriate values (no optional values added)"), [LIST], list_plain),
        spec!(format!("{l} should return snapshots that match the specified snapshot id"), [LIST, CDS, CDV], list_by_id),
        spec!(format!("{l} should return empty when the specified snapshot id does not exist"), [LIST], list_missing_id),
        spec!(
            format!("{l} should return snapshots that match the specified source volume id"),
            [LIST, CDS, CDV],
            list_by_source
        ),
        spec!(
            format!("{l} should return empty when the specified source volume id does not exist"),
            [LIST],
            list_missing_source
        ),
        spec!(format!("{l} check the presence of new snapshots in the snapshot list"), [LIST, CDS, CDV], list_presence),
        spec!(
            format!("{l} should return next token when a limited number of entries are requested"),
            [LIST, CDS, CDV],
            list_pagination
        ),
        spec!(format!("{g} should return an error"), [GET], get_no_id),
        spec!(format!("{g} should return snapshot that match the specified snapshot id"), [GET, CDS, CDV], get_by_id),
        spec!(format!("{g} should return an error when the specified snapshot id does not exist"), [GET], get_missing),
        spec!(format!("{d} should fail when no snapshot id is provided"), [CDS], delete_no_id),
        spec!(format!("{d} should succeed when an invalid snapshot id is used"), [CDS], delete_invalid_id),
        spec!(format!("{d} should return appropriate values (no optional values added)"), [CDS, CDV], delete_plain),
        spec!(format!("{c} should fail when no name is provided"), [CDS], create_no_name),
        spec!(format!("{c} should fail when no source volume id is provided"), [CDS], create_no_source),
        spec!(
            format!("{c} should succeed when requesting to create a snapshot with already existing name and same source volume ID"),
            [CDS, CDV],
            create_twice_same
        ),
        spec!(
            format!("{c} should fail when requesting to create a snapshot with already existing name and different source volume ID"),
            [CDS, CDV],
            create_twice_different
        ),
        spec!(format!("{c} should succeed when creating snapshot with maximum-length name"), [CDS, CDV], create_max_name),
    ]
}

// ---- ListSnapshots -------------------------------------------------------------------

async fn list(c: &mut Ctx, req: pb::ListSnapshotsRequest) -> Res<Vec<pb::Snapshot>> {
    let r = ok("ListSnapshots", c.list_snapshots(req).await)?;
    let mut v = Vec::new();
    for e in r.entries {
        let s = e.snapshot.ok_or("ListSnapshots: an entry without a snapshot")?;
        verify_snapshot("ListSnapshots", &s)?;
        v.push(s);
    }
    Ok(v)
}

async fn list_plain(c: &mut Ctx) -> Res {
    list(c, c.list_snapshots_req()).await.map(drop)
}

/// Three snapshots of three volumes; the middle one is the one to find.
async fn three_snapshots(c: &mut Ctx, prefix: &str, tag: &str) -> Res<pb::Snapshot> {
    let mut target = None;
    for (i, kind) in ["unrelated", "target", "unrelated"].into_iter().enumerate() {
        let name = c.unique(&format!("{prefix}-snapshot-{kind}-{tag}"));
        let (s, _) = c.must_create_snapshot_of_new_volume(&format!("{prefix}-volume-{kind}-{tag}"), &name).await?;
        if i == 1 {
            target = Some(s);
        }
    }
    target.ok_or_else(|| "no target snapshot".into())
}

async fn list_by_id(c: &mut Ctx) -> Res {
    let target = three_snapshots(c, "listSnapshots", "s").await?;
    let mut req = c.list_snapshots_req();
    req.snapshot_id = target.snapshot_id.clone();
    let got = list(c, req).await?;
    ensure!(got.len() == 1, "filtering by snapshot_id returned {} snapshots, expected 1", got.len());
    ensure!(
        got[0].snapshot_id == target.snapshot_id,
        "got snapshot {}, expected {}",
        got[0].snapshot_id,
        target.snapshot_id
    );
    Ok(())
}

async fn list_missing_id(c: &mut Ctx) -> Res {
    let mut req = c.list_snapshots_req();
    req.snapshot_id = "none-exist-id".into();
    let got = list(c, req).await?;
    ensure!(got.is_empty(), "a snapshot_id that does not exist returned {} snapshots", got.len());
    Ok(())
}

async fn list_by_source(c: &mut Ctx) -> Res {
    let target = three_snapshots(c, "listSnapshots", "v").await?;
    let mut req = c.list_snapshots_req();
    req.source_volume_id = target.source_volume_id.clone();
    let got = list(c, req).await?;
    ensure!(got.len() == 1, "filtering by source_volume_id returned {} snapshots, expected 1", got.len());
    ensure!(
        got[0].source_volume_id == target.source_volume_id,
        "got a snapshot of {}, expected one of {}",
        got[0].source_volume_id,
        target.source_volume_id
    );
    Ok(())
}

async fn list_missing_source(c: &mut Ctx) -> Res {
    let mut req = c.list_snapshots_req();
    req.source_volume_id = c.fake_volume_id();
    let got = list(c, req).await?;
    ensure!(got.is_empty(), "a source_volume_id that does not exist returned {} snapshots", got.len());
    Ok(())
}

async fn list_presence(c: &mut Ctx) -> Res {
    let before = list(c, c.list_snapshots_req()).await?.len();
    let name = c.unique("listSnapshots-snapshot-3");
    let (s, _) = c.must_create_snapshot_of_new_volume("listSnapshots-volume-3", &name).await?;
    let during = list(c, c.list_snapshots_req()).await?;
    ensure!(
        during.len() == before + 1,
        "{} snapshots listed after creating one, expected {}",
        during.len(),
        before + 1
    );
    ensure!(during.iter().any(|x| x.snapshot_id == s.snapshot_id), "the new snapshot {} is not listed", s.snapshot_id);
    ok("DeleteSnapshot", c.delete_snapshot(c.delete_snapshot_req(&s.snapshot_id)).await)?;
    let after = list(c, c.list_snapshots_req()).await?;
    ensure!(after.len() == before, "{} snapshots listed after deleting it, expected {before}", after.len());
    ensure!(
        !after.iter().any(|x| x.snapshot_id == s.snapshot_id),
        "the deleted snapshot {} is still listed",
        s.snapshot_id
    );
    Ok(())
}

/// At least five snapshots; max_entries 2 gives two and a token, and the
/// token (without max_entries) gives all the others at once.
async fn list_pagination(c: &mut Ctx) -> Res {
    const MAX: usize = 2;
    let existing = list(c, c.list_snapshots_req()).await?.len();
    for i in existing..5 {
        let name = c.unique(&format!("snapshot{i}"));
        c.must_create_snapshot_of_new_volume(&format!("volume{i}"), &name).await?;
    }
    let total = existing.max(5);
    let mut req = c.list_snapshots_req();
    req.max_entries = MAX as i32;
    let first = ok("ListSnapshots (max_entries 2)", c.list_snapshots(req).await)?;
    ensure!(first.entries.len() == MAX, "max_entries 2 returned {} entries", first.entries.len());
    ensure!(!first.next_token.is_empty(), "max_entries 2 of {total} snapshots returned no next_token");
    let mut req = c.list_snapshots_req();
    req.starting_token = first.next_token;
    let rest = ok("ListSnapshots (starting_token)", c.list_snapshots(req).await)?;
    ensure!(
        rest.entries.len() == total - MAX,
        "the token returned {} entries, expected the remaining {}",
        rest.entries.len(),
        total - MAX
    );
    Ok(())
}

// ---- GetSnapshot (csi-sanity accepts any error; we ask for the spec's code) ----------

async fn get_no_id(c: &mut Ctx) -> Res {
    let req = pb::GetSnapshotRequest { snapshot_id: String::new(), secrets: c.secret("GetSnapshotSecret") };
    expect_code("GetSnapshot", c.get_snapshot(req).await, Code::InvalidArgument)
}

async fn get_by_id(c: &mut Ctx) -> Res {
    let target = three_snapshots(c, "getSnapshot", "s").await?;
    let req =
        pb::GetSnapshotRequest { snapshot_id: target.snapshot_id.clone(), secrets: c.secret("GetSnapshotSecret") };
    let r = ok("GetSnapshot", c.get_snapshot(req).await)?;
    let got = r.snapshot.ok_or("GetSnapshot: no snapshot in the response")?;
    verify_snapshot("GetSnapshot", &got)?;
    ensure!(
        got.snapshot_id == target.snapshot_id,
        "GetSnapshot returned {} for {}",
        got.snapshot_id,
        target.snapshot_id
    );
    Ok(())
}

async fn get_missing(c: &mut Ctx) -> Res {
    let req = pb::GetSnapshotRequest { snapshot_id: "none-exist-id".into(), secrets: c.secret("GetSnapshotSecret") };
    expect_code("GetSnapshot", c.get_snapshot(req).await, Code::NotFound)
}

// ---- DeleteSnapshot ------------------------------------------------------------------

async fn delete_no_id(c: &mut Ctx) -> Res {
    expect_code("DeleteSnapshot", c.delete_snapshot(c.delete_snapshot_req("")).await, Code::InvalidArgument)
}

async fn delete_invalid_id(c: &mut Ctx) -> Res {
    ok("DeleteSnapshot", c.delete_snapshot(c.delete_snapshot_req("reallyfakesnapshotid")).await).map(drop)
}

/// Creates a volume and a snapshot; the snapshot is deleted by the cleanup,
/// which fails the spec if DeleteSnapshot fails (as in csi-sanity).
async fn delete_plain(c: &mut Ctx) -> Res {
    let name = c.unique("DeleteSnapshot-snapshot-1");
    let (s, _) = c.must_create_snapshot_of_new_volume("DeleteSnapshot-volume-1", &name).await?;
    ok("DeleteSnapshot", c.delete_snapshot(c.delete_snapshot_req(&s.snapshot_id)).await).map(drop)
}

// ---- CreateSnapshot ------------------------------------------------------------------

async fn create_no_name(c: &mut Ctx) -> Res {
    expect_code("CreateSnapshot", c.create_snapshot(c.snapshot_req("", "testId")).await, Code::InvalidArgument)
}

async fn create_no_source(c: &mut Ctx) -> Res {
    expect_code("CreateSnapshot", c.create_snapshot(c.snapshot_req("name", "")).await, Code::InvalidArgument)
}

async fn create_twice_same(c: &mut Ctx) -> Res {
    let v = c.must_create_volume(c.required_req(&c.unique("CreateSnapshot-volume-1"))).await?;
    let req = c.snapshot_req(&c.unique("CreateSnapshot-snapshot-1"), &v.volume_id);
    let s1 = c.must_create_snapshot(req.clone()).await?;
    let s2 = c.must_create_snapshot(req).await?;
    ensure!(
        s1.snapshot_id == s2.snapshot_id,
        "the second CreateSnapshot returned {} instead of {}",
        s2.snapshot_id,
        s1.snapshot_id
    );
    Ok(())
}

async fn create_twice_different(c: &mut Ctx) -> Res {
    let name = c.unique("CreateSnapshot-snapshot-2");
    c.must_create_snapshot_of_new_volume("CreateSnapshot-volume-2", &name).await?;
    let v2 = c.must_create_volume(c.required_req(&c.unique("CreateSnapshot-volume-3"))).await?;
    let req = c.snapshot_req(&name, &v2.volume_id);
    expect_code("CreateSnapshot (same name, another volume)", c.create_snapshot(req).await, Code::AlreadyExists)
}

async fn create_max_name(c: &mut Ctx) -> Res {
    let v = c.must_create_volume(c.required_req(&c.unique("CreateSnapshot-volume-maxlen-name"))).await?;
    let req = c.snapshot_req(&c.unique_len("CreateSnapshot-snapshot-maxlen", MAX_NAME_LENGTH), &v.volume_id);
    c.must_create_snapshot(req.clone()).await?;
    c.must_create_snapshot(req).await.map(drop)
}
