//! docs/csi-rbd-internals.md (or docs/csi-rbd.md, once the page is folded
//! in there) against the code: the errno table against
//! `Error::from_errno`, and the allowlist counts against build.rs.

use std::collections::BTreeSet;

const HEADING: &str = "Errors of the ceph crate";

/// The page that holds this crate's section.
fn page() -> &'static str {
    ["docs/csi-rbd.md", "docs/csi-rbd-internals.md"]
        .into_iter()
        .find(|p| {
            let f = docs_check::workspace_root().join(p);
            std::fs::read_to_string(f).is_ok_and(|s| s.contains(HEADING))
        })
        .unwrap_or_else(|| panic!("no docs page has a section {HEADING:?}"))
}

fn errno(name: &str) -> i32 {
    match name {
        "ENOENT" => libc::ENOENT,
        "EEXIST" => libc::EEXIST,
        "EBUSY" => libc::EBUSY,
        "ENOTEMPTY" => libc::ENOTEMPTY,
        "ECANCELED" => libc::ECANCELED,
        "EACCES" => libc::EACCES,
        "EPERM" => libc::EPERM,
        "ESHUTDOWN" => libc::ESHUTDOWN,
        "ETIMEDOUT" => libc::ETIMEDOUT,
        "ENOSPC" => libc::ENOSPC,
        "EDQUOT" => libc::EDQUOT,
        "EINVAL" => libc::EINVAL,
        "ERANGE" => libc::ERANGE,
        "EIO" => libc::EIO,
        "ENODATA" => libc::ENODATA,
        other => panic!("the errno table names {other}: add it to this test"),
    }
}

#[test]
fn the_errno_table_is_what_the_code_does() {
    let t = docs_check::table_under(page(), HEADING);
    let mut variants = BTreeSet::new();
    for row in &t.rows {
        let variant = row[1].code.first().unwrap_or_else(|| panic!("no variant in {row:?}")).clone();
        variants.insert(variant.clone());
        let errnos: Vec<&String> = row[0].code.iter().filter(|c| c.starts_with('E')).collect();
        assert!(!errnos.is_empty(), "row {row:?} names no errno");
        for e in errnos {
            let got = format!("{:?}", ceph::Error::from_errno("op", errno(e)));
            assert!(got.starts_with(&variant), "{e}: the page says {variant}, the code gives {got}");
        }
    }
    let all: BTreeSet<String> = [
        "NotFound",
        "Exists",
        "Busy",
        "Conflict",
        "PermissionDenied",
        "Timeout",
        "NoSpace",
        "InvalidArgument",
        "Other",
    ]
    .map(String::from)
    .into();
    assert_eq!(variants, all, "every variant has its row");
}

#[test]
fn the_allowlist_counts_are_build_rs() {
    let build = docs_check::read("ceph/build.rs");
    let count = |list: &str| {
        let start = build.find(&format!("const {list}: &[&str] = &[")).unwrap_or_else(|| panic!("{list} in build.rs"));
        let body = &build[start..];
        let body = &body[body.find('[').unwrap() + 1..];
        let body = &body[body.find('[').unwrap() + 1..body.find("];").unwrap()];
        body.matches('"').count() / 2
    };
    let functions = count("RADOS_FUNCTIONS") + count("RBD_FUNCTIONS");
    let types = count("TYPES");
    let doc = docs_check::read(page());
    let claim = format!("allowlists only the {functions} functions, {types} types");
    assert!(doc.split_whitespace().collect::<Vec<_>>().join(" ").contains(&claim), "the page should say {claim:?}");
}
