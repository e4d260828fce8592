//! csi-nfs's controller against a real nfs-ganesha: the userspace client
//! (`csi_nfs::nfs`) first, then the `csi-nfs` binary served on a unix socket
//! and driven over gRPC. Each test starts its own server (see
//! `conformance::ganesha`), so tests run in parallel; every server, socket
//! and temp dir is removed by a Drop guard, even when a check fails.
//!
//! `cargo test --release -p conformance --test csi_nfs_controller -- --test-threads=2`

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use conformance::ganesha::Ganesha;
use csi_nfs::nfs::{self, Client, FileType, Target};

fn ganesha() -> Ganesha {
    Ganesha::start().expect("start nfs-ganesha (apt-get install nfs-ganesha nfs-ganesha-vfs)")
}

fn target(g: &Ganesha, export: &str) -> Target {
    Target {
        server: "127.0.0.1".into(),
        export: export.into(),
        port: Some(g.port()),
        version: 4,
        timeout: Duration::from_secs(3),
    }
}

fn mode(p: &Path) -> u32 {
    std::fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
}

mod client {
    use super::*;

    #[test]
    fn makes_stats_renames_and_removes_directories_on_the_server() {
        let g = ganesha();
        let mut c = Client::connect(&target(&g, "/export")).unwrap();
        c.mkdir("a", 0o750).unwrap();
        assert_eq!(mode(&g.root().join("a")), 0o750, "umask 0: the mode asked for is the mode made");
        c.mkdir_all("a/b/c", 0o755).unwrap();
        assert!(g.root().join("a/b/c").is_dir());
        c.chmod("a/b", 0o2770).unwrap();
        c.chown("a/b", 1234, 5678).unwrap();
        let st = c.stat("a/b").unwrap();
        assert_eq!((st.kind, st.mode, st.uid, st.gid), (FileType::Dir, 0o2770, 1234, 5678));
        let md = std::fs::metadata(g.root().join("a/b")).unwrap();
        assert_eq!((md.uid(), md.gid()), (1234, 5678), "the server's file has the new owner");
        c.rename("a/b", "a/renamed").unwrap();
        assert!(g.root().join("a/renamed/c").is_dir());
        let names: Vec<_> = c.read_dir("a").unwrap().into_iter().map(|e| (e.name, e.kind)).collect();
        assert_eq!(names, vec![("renamed".to_string(), FileType::Dir)]);
        assert!(c.mkdir("a", 0o755).unwrap_err().is_exists());
        assert!(c.stat("nope").unwrap_err().is_not_found());
        assert_eq!(c.try_stat("nope").unwrap(), None);
        c.remove_all("a").unwrap();
        assert!(!g.root().join("a").exists());
        c.remove_all("a").unwrap();
    }

    #[test]
    fn writes_reads_and_copies_trees_with_symlinks_modes_and_owners() {
        let g = ganesha();
        let root = g.root();
        std::fs::create_dir_all(root.join("src/sub")).unwrap();
        let big: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(root.join("src/big"), &big).unwrap();
        std::fs::write(root.join("src/sub/small"), b"hello").unwrap();
        std::fs::set_permissions(root.join("src/sub/small"), std::fs::Permissions::from_mode(0o640)).unwrap();
        std::os::unix::fs::chown(root.join("src/sub/small"), Some(1000), Some(1001)).unwrap();
        std::os::unix::fs::symlink("sub/small", root.join("src/link")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", root.join("src/abs")).unwrap();

        let mut c = Client::connect(&target(&g, "export")).unwrap();
        c.copy_tree("src", "dst").unwrap();
        assert_eq!(std::fs::read(root.join("dst/big")).unwrap(), big);
        assert_eq!(std::fs::read(root.join("dst/sub/small")).unwrap(), b"hello");
        assert_eq!(mode(&root.join("dst/sub/small")), 0o640);
        let md = std::fs::metadata(root.join("dst/sub/small")).unwrap();
        assert_eq!((md.uid(), md.gid()), (1000, 1001));
        assert_eq!(std::fs::read_link(root.join("dst/link")).unwrap(), Path::new("sub/small"));
        assert_eq!(std::fs::read_link(root.join("dst/abs")).unwrap(), Path::new("/etc/passwd"));
        assert_eq!(c.lstat("dst/abs").unwrap().kind, FileType::Symlink);

        c.write_file_atomic("meta.json", b"{\"a\":1}", 0o600).unwrap();
        assert_eq!(c.read_file("meta.json").unwrap(), b"{\"a\":1}");
        c.write_file_atomic("meta.json", b"{}", 0o600).unwrap();
        assert_eq!(c.read_file("meta.json").unwrap(), b"{}");
        assert_eq!(c.read_dir("").unwrap().len(), 3, "no temp file left: {:?}", c.read_dir("").unwrap());

        // remove_all removes symlinks, never what they point to.
        c.remove_all("dst").unwrap();
        assert!(!root.join("dst").exists());
        assert!(root.join("src/sub/small").exists() && Path::new("/etc/passwd").exists());
        let fs = c.statvfs("").unwrap();
        assert!(fs.total_bytes > 0 && fs.available_bytes > 0 && fs.available_bytes <= fs.total_bytes, "{fs:?}");
    }

    #[test]
    fn root_squash_turns_root_into_nobody_and_chown_fails_clearly() {
        let g = ganesha();
        let mut c = Client::connect(&target(&g, "/squash")).unwrap();
        c.mkdir("v", 0o755).unwrap();
        let md = std::fs::metadata(g.squash_root().join("v")).unwrap();
        assert_eq!((md.uid(), md.gid()), (65534, 65534), "root is squashed to the anonymous ids");
        let e = c.chown("v", 1000, 1000).unwrap_err();
        assert!(matches!(e.errno, libc::EPERM | libc::EACCES), "{e:?}");
        let msg = csi_core::Error::from(e).to_string();
        assert!(msg.contains("chown 1000:1000 v"), "{msg}");
    }

    #[test]
    fn a_missing_export_is_not_found_and_a_dead_server_unavailable() {
        let mut g = ganesha();
        let e = Client::connect(&target(&g, "/nope")).unwrap_err();
        assert!(e.is_not_found() || e.errno == libc::EACCES, "{e:?}");
        g.stop();
        let e = Client::connect(&target(&g, "/export")).unwrap_err();
        assert!(e.is_unreachable(), "{e:?}");
        assert!(matches!(csi_core::Error::from(e), csi_core::Error::Unavailable(_)));
    }

    #[test]
    fn a_hung_server_fails_within_the_timeout() {
        let g = ganesha();
        let mut c = Client::connect(&target(&g, "/export")).unwrap();
        g.freeze();
        let started = Instant::now();
        let e = c.mkdir("x", 0o755).unwrap_err();
        let took = started.elapsed();
        eprintln!("hung server, call with a 3 s bound failed after {took:?}: {e}");
        assert!(took < Duration::from_secs(10), "{took:?}");
        assert!(e.is_unreachable(), "{e:?}");
        let started = Instant::now();
        let e = Client::connect(&target(&g, "/export")).unwrap_err();
        let took = started.elapsed();
        eprintln!("hung server, connect with a 3 s bound failed after {took:?}: {e}");
        assert!(took < Duration::from_secs(10), "{took:?}");
        assert!(e.is_unreachable(), "{e:?}");
        g.thaw();
    }

    /// The number behind "a fresh connection per RPC" in nfs.rs.
    #[test]
    fn connect_cost() {
        let g = ganesha();
        let t = target(&g, "/export");
        Client::connect(&t).unwrap();
        let n = 50;
        let started = Instant::now();
        for _ in 0..n {
            let mut c = Client::connect(&t).unwrap();
            c.stat("").unwrap();
        }
        let per = started.elapsed() / n;
        eprintln!("connect + mount + stat: {per:?} per connection ({n} runs)");
        let mut c = Client::connect(&t).unwrap();
        let started = Instant::now();
        for _ in 0..n {
            c.stat("").unwrap();
        }
        eprintln!("stat on an open connection: {:?}", started.elapsed() / n);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn run_connects_on_a_blocking_thread() {
        let g = ganesha();
        let made = nfs::run(target(&g, "/export"), |c| {
            c.mkdir("r", 0o700)?;
            c.stat("r")
        })
        .await
        .unwrap();
        assert_eq!(made.mode, 0o700);
    }
}
