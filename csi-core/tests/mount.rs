//! Mount helpers against the real kernel: tmpfs and bind mounts in temp
//! dirs (no loop devices, no network). Needs root; CI runs as root, and the
//! tests say so and pass trivially elsewhere.

use std::path::Path;
use std::time::{Duration, Instant};

use csi_core::mount::{self, MsFlags};
use csi_core::Error;

const T: Duration = Duration::from_secs(5);

fn root() -> bool {
    let yes = nix::unistd::geteuid().is_root();
    if !yes {
        eprintln!("skipped: mount tests need root");
    }
    yes
}

fn tmpfs(target: &Path) {
    mount::mount("csi-core-test", target, "tmpfs", MsFlags::MS_NOSUID | MsFlags::MS_NODEV, Some("size=1m"), T).unwrap();
}

#[test]
fn tmpfs_mount_is_seen_and_unmounted() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("vol");
    std::fs::create_dir(&target).unwrap();
    assert!(!mount::is_mount_point(&target).unwrap());

    tmpfs(&target);
    assert!(mount::is_mount_point(&target).unwrap());
    let table = mount::mounts().unwrap();
    let m = mount::find_mount(&table, &target).unwrap().unwrap();
    assert_eq!(m.fs_type, "tmpfs");
    assert_eq!(m.source, "csi-core-test");
    std::fs::write(target.join("f"), b"data").unwrap();

    mount::unmount(&target, T).unwrap();
    assert!(!mount::is_mount_point(&target).unwrap());
    assert!(!target.join("f").exists(), "the data lived on the tmpfs");
    // Unmounting what is not mounted is fine (Unpublish is retried).
    mount::unmount(&target, T).unwrap();
    mount::unmount(&dir.path().join("missing"), T).unwrap();
}

#[test]
fn read_only_bind_mount() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (src, rw, ro) = (dir.path().join("src"), dir.path().join("rw"), dir.path().join("ro"));
    for d in [&src, &rw, &ro] {
        std::fs::create_dir(d).unwrap();
    }
    tmpfs(&src);
    std::fs::write(src.join("f"), b"hello").unwrap();

    mount::bind_mount(&src, &rw, false, T).unwrap();
    mount::bind_mount(&src, &ro, true, T).unwrap();
    let table = mount::mounts().unwrap();
    assert!(!mount::find_mount(&table, &rw).unwrap().unwrap().read_only());
    assert!(mount::find_mount(&table, &ro).unwrap().unwrap().read_only());

    assert_eq!(std::fs::read(ro.join("f")).unwrap(), b"hello");
    let err = std::fs::write(ro.join("g"), b"x").unwrap_err();
    assert_eq!(err.raw_os_error(), Some(libc::EROFS));
    std::fs::write(rw.join("g"), b"x").unwrap();
    assert_eq!(std::fs::read(src.join("g")).unwrap(), b"x", "bind shows the same files");

    for d in [&ro, &rw, &src] {
        mount::cleanup_target(d, T).unwrap();
        assert!(!d.exists());
    }
}

#[test]
fn cleanup_peels_stacked_mounts_and_removes_the_target() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("with space");
    std::fs::create_dir(&target).unwrap();
    tmpfs(&target);
    tmpfs(&target);
    assert!(mount::is_mount_point(&target).unwrap(), "found through the \\040 escape");

    mount::cleanup_target(&target, T).unwrap();
    assert!(!mount::is_mount_point(&target).unwrap());
    assert!(!target.exists());
    // Again: nothing left to do is success.
    mount::cleanup_target(&target, T).unwrap();

    // A plain directory is just removed; a file (a block volume's target) too.
    std::fs::create_dir(&target).unwrap();
    mount::cleanup_target(&target, T).unwrap();
    assert!(!target.exists());
    std::fs::write(&target, b"").unwrap();
    mount::cleanup_target(&target, T).unwrap();
    assert!(!target.exists());
}

#[test]
fn a_busy_mount_is_detached_lazily_within_the_bound() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("busy");
    std::fs::create_dir(&target).unwrap();
    tmpfs(&target);
    // An open file keeps the mount busy: a plain umount gets EBUSY.
    let cwd_holder = std::fs::File::create(target.join("open")).unwrap();
    let busy = mount::umount2(&target, mount::MntFlags::empty(), T).unwrap_err();
    assert!(matches!(busy, Error::Sys { errno: nix::errno::Errno::EBUSY, .. }), "{busy}");

    let start = Instant::now();
    mount::cleanup_target(&target, T).unwrap();
    assert!(start.elapsed() < T, "took {:?}", start.elapsed());
    assert!(!mount::is_mount_point(&target).unwrap());
    assert!(!target.exists());
    drop(cwd_holder);
}

#[test]
fn a_failing_mount_reports_the_errno() {
    if !root() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let err = mount::mount("x", &dir.path().join("missing"), "tmpfs", MsFlags::empty(), None, T).unwrap_err();
    assert!(matches!(err, Error::Sys { errno: nix::errno::Errno::ENOENT, .. }), "{err}");
    assert!(err.to_string().starts_with("mount tmpfs x at "), "{err}");
    assert_eq!(tonic::Status::from(err).code(), tonic::Code::Internal);
}
