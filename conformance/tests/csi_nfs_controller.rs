//! csi-nfs's controller against a real nfs-ganesha: the userspace client
//! (`csi_nfs::nfs`) first, then the `csi-nfs` binary served on a unix socket
//! and driven over gRPC. Each test starts its own server (see
//! `csi_suite::ganesha`), so tests run in parallel; every server, socket
//! and temp dir is removed by a Drop guard, even when a check fails.
//!
//! `cargo test --release -p conformance --test csi_nfs_controller -- --test-threads=2`

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::{Duration, Instant};

use csi_nfs::nfs::{self, Client, FileType, ShareFs, Target};
use csi_suite::ganesha::Ganesha;

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

    /// The numbers behind the connection pool (csi-nfs/src/nfs/pool.rs).
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

    /// nfs::run keeps a connection for the next call, but never one the
    /// server closed (restart) or one a call broke (a hung server).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_pool_reuses_connections_but_never_a_closed_or_broken_one() {
        use csi_nfs::nfs::pool;
        let mut g = ganesha();
        let mut t = target(&g, "/export");
        t.timeout = Duration::from_secs(2);
        nfs::run(t.clone(), |c| c.mkdir("p", 0o755)).await.unwrap();
        assert_eq!(pool::idle(&t), 1, "the connection went back to the pool");
        let (_, reused_before) = pool::counters();
        for _ in 0..5 {
            nfs::run(t.clone(), |c| c.stat("p")).await.unwrap();
        }
        assert!(pool::counters().1 >= reused_before + 5, "five calls reused the pooled connection");
        assert_eq!(pool::idle(&t), 1, "still one connection: {:?}", pool::counters());
        // A call that fails on the server's side (ENOENT) keeps the connection.
        assert!(nfs::run(t.clone(), |c| c.stat("nope")).await.unwrap_err().is_not_found());
        assert_eq!(pool::idle(&t), 1);

        // The server restarts: the pooled connection is closed under us, and
        // the next call must work on a new one, not fail on the dead one.
        g.restart().unwrap();
        let st = nfs::run(t.clone(), |c| c.stat("p")).await.unwrap();
        assert_eq!(st.kind, FileType::Dir);

        // A hung server: the call times out, the connection is not kept.
        g.freeze();
        let e = nfs::run(t.clone(), |c| c.stat("p")).await.unwrap_err();
        assert!(e.is_unreachable(), "{e:?}");
        assert_eq!(pool::idle(&t), 0, "a connection a timeout broke went back to the pool");
        g.thaw();
        nfs::run(t.clone(), |c| c.rmdir("p")).await.unwrap();
        assert!(!g.root().join("p").exists());
    }

    /// libnfs 4.0 speaks NFSv4.0 only: a server serving just 4.1 refuses it
    /// (NFS4ERR_MINOR_VERS_MISMATCH), and the controller says so with
    /// FAILED_PRECONDITION instead of an UNAVAILABLE that invites retries.
    #[test]
    fn a_server_without_nfs_4_0_is_refused_with_the_reason() {
        let g = Ganesha::start_with_minor_versions("1").expect("start nfs-ganesha");
        let e = Client::connect(&target(&g, "/export")).unwrap_err();
        assert_eq!(e.errno, libc::EPROTONOSUPPORT, "{e:?}");
        assert!(!e.is_unreachable(), "{e:?}");
        let msg = match csi_core::Error::from(e) {
            csi_core::Error::FailedPrecondition(m) => m,
            other => panic!("expected FAILED_PRECONDITION, got {other:?}"),
        };
        assert!(msg.contains("NFSv4.0") && msg.contains("libnfs"), "{msg}");
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

/// The `csi-nfs` binary serving Identity + Controller on a unix socket in
/// a temp dir; killed and its dir removed on drop.
mod driver {
    use std::collections::HashMap;
    use std::path::PathBuf;

    use csi_core::pb::controller_client::ControllerClient;
    use csi_core::pb::{self, volume_capability as vc};
    use csi_suite::csi_process::DriverProcess;
    use tonic::transport::Channel;

    use super::*;

    /// Fields drop in order: the client's connection closes before the
    /// driver is asked to stop.
    pub struct Driver {
        pub client: ControllerClient<Channel>,
        p: DriverProcess,
    }

    fn binary() -> PathBuf {
        let exe = std::env::current_exe().unwrap();
        // target/release/deps/<test> -> target/release/csi-nfs
        let bin = exe.parent().and_then(Path::parent).unwrap().join("csi-nfs");
        assert!(bin.is_file(), "{} missing: run `cargo build --release -p csi-nfs` first", bin.display());
        bin
    }

    impl Driver {
        pub async fn start(mount_options: &str) -> Driver {
            Driver::start_with_state(mount_options, "{dir}/state").await
        }

        /// A controller that keeps its known shares in `state_dir`
        /// (`{dir}`: the driver's own temp dir).
        pub async fn start_with_state(mount_options: &str, state_dir: &str) -> Driver {
            Driver::start_with_args(mount_options, &[&format!("--state-dir={state_dir}")]).await
        }

        /// A controller with more flags (`{dir}`: the driver's own temp dir).
        pub async fn start_with_args(mount_options: &str, extra: &[&str]) -> Driver {
            let args = ["--mode", "controller", "--node-id", "test", "--log-level", "debug"].map(String::from);
            let args: Vec<String> = args
                .into_iter()
                .chain([format!("--mount-options={mount_options}")])
                .chain(extra.iter().map(|a| a.to_string()))
                .collect();
            let p = DriverProcess::start(&binary(), "csi-nfs-ctl", &args).expect("start csi-nfs");
            let channel = p.channel().await.expect("connect");
            Driver { client: ControllerClient::new(channel), p }
        }

        pub fn log(&self) -> String {
            self.p.log()
        }
    }

    pub fn mount_cap(mode: vc::access_mode::Mode) -> pb::VolumeCapability {
        pb::VolumeCapability {
            access_type: Some(vc::AccessType::Mount(vc::MountVolume::default())),
            access_mode: Some(vc::AccessMode { mode: mode as i32 }),
        }
    }

    pub fn params(g: &Ganesha, export: &str, extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut p: HashMap<String, String> = [("server", "127.0.0.1".to_string()), ("share", export.to_string())]
            .into_iter()
            .map(|(k, v)| (k.to_string(), v))
            .collect();
        p.insert("mountOptions".into(), format!("port={},nfsvers=4.1", g.port()));
        for (k, v) in extra {
            p.insert(k.to_string(), v.to_string());
        }
        p
    }

    pub fn create_req(name: &str, params: HashMap<String, String>) -> pb::CreateVolumeRequest {
        pb::CreateVolumeRequest {
            name: name.into(),
            capacity_range: Some(pb::CapacityRange { required_bytes: 1 << 30, limit_bytes: 0 }),
            volume_capabilities: vec![mount_cap(vc::access_mode::Mode::MultiNodeMultiWriter)],
            parameters: params,
            ..Default::default()
        }
    }
}

mod controller {
    use std::collections::{BTreeSet, HashMap};

    use csi_core::pb::{self, volume_capability as vc, volume_content_source as vcs};
    use tonic::Code;

    use super::driver::{create_req, mount_cap, params, Driver};
    use super::*;

    /// The share's entries, metadata dir left out.
    fn listing(dir: &Path) -> BTreeSet<String> {
        std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|n| n != ".csi-nfs")
            .collect()
    }

    async fn create(d: &mut Driver, req: pb::CreateVolumeRequest) -> Result<pb::Volume, tonic::Status> {
        d.client.create_volume(req).await.map(|r| r.into_inner().volume.unwrap())
    }

    async fn delete(d: &mut Driver, id: &str) {
        d.client
            .delete_volume(pb::DeleteVolumeRequest { volume_id: id.into(), ..Default::default() })
            .await
            .unwrap_or_else(|e| panic!("delete {id}: {e:?}"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn create_makes_the_directory_with_mode_owner_and_context_and_is_idempotent() {
        let g = ganesha();
        let mut d = Driver::start("").await;
        let p = params(&g, "/export", &[("mountPermissions", "0750"), ("uid", "1001"), ("gid", "2002")]);
        let started = Instant::now();
        let v = create(&mut d, create_req("pvc-a", p.clone())).await.unwrap();
        eprintln!("CreateVolume (mkdir, chmod, chown, record): {:?}", started.elapsed());
        assert_eq!(v.volume_id, "127.0.0.1#export#pvc-a##");
        assert_eq!(v.capacity_bytes, 1 << 30);
        let ctx = &v.volume_context;
        assert_eq!(ctx["server"], "127.0.0.1");
        assert_eq!(ctx["share"], "/export");
        assert_eq!(ctx["subdir"], "pvc-a");
        assert_eq!(ctx["mountPermissions"], "750");
        assert_eq!(ctx["mountOptions"], format!("port={},nfsvers=4.1", g.port()));
        let dir = g.root().join("pvc-a");
        let md = std::fs::metadata(&dir).unwrap();
        assert_eq!((mode(&dir), md.uid(), md.gid()), (0o750, 1001, 2002));
        assert_eq!(mode(&g.root()), 0o755, "the share root is never chmod-ed");

        // The same request again: the same volume.
        let again = create(&mut d, create_req("pvc-a", p.clone())).await.unwrap();
        assert_eq!(again, v);
        // Same name, other size or parameters: ALREADY_EXISTS.
        let mut bigger = create_req("pvc-a", p.clone());
        bigger.capacity_range = Some(pb::CapacityRange { required_bytes: 2 << 30, limit_bytes: 0 });
        assert_eq!(create(&mut d, bigger).await.unwrap_err().code(), Code::AlreadyExists);
        let mut other = p.clone();
        other.insert("mountPermissions".into(), "0700".into());
        assert_eq!(create(&mut d, create_req("pvc-a", other)).await.unwrap_err().code(), Code::AlreadyExists);

        delete(&mut d, &v.volume_id).await;
        assert!(!dir.exists());
        delete(&mut d, &v.volume_id).await;
        assert!(listing(&g.root()).is_empty());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn bad_requests_get_the_spec_codes_and_leave_nothing() {
        let g = ganesha();
        let mut d = Driver::start("").await;
        let p = params(&g, "/export", &[]);
        let mut no_name = create_req("", p.clone());
        assert_eq!(create(&mut d, no_name.clone()).await.unwrap_err().code(), Code::InvalidArgument);
        no_name.name = "x".into();
        no_name.volume_capabilities.clear();
        assert_eq!(create(&mut d, no_name).await.unwrap_err().code(), Code::InvalidArgument);
        let mut block = create_req("x", p.clone());
        block.volume_capabilities[0].access_type = Some(vc::AccessType::Block(vc::BlockVolume {}));
        assert_eq!(create(&mut d, block).await.unwrap_err().code(), Code::InvalidArgument);
        let mut range = create_req("x", p.clone());
        range.capacity_range = Some(pb::CapacityRange { required_bytes: 10, limit_bytes: 5 });
        assert_eq!(create(&mut d, range).await.unwrap_err().code(), Code::InvalidArgument);
        let mut unknown = p.clone();
        unknown.insert("colour".into(), "blue".into());
        assert_eq!(create(&mut d, create_req("x", unknown)).await.unwrap_err().code(), Code::InvalidArgument);
        let mut template = p.clone();
        template.insert("subDir".into(), "${pvc.metadata.name}".into());
        let e = create(&mut d, create_req("x", template)).await.unwrap_err();
        assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
        let mut from = create_req("x", p.clone());
        from.volume_content_source = Some(pb::VolumeContentSource {
            r#type: Some(vcs::Type::Volume(vcs::VolumeSource { volume_id: "127.0.0.1#export#nope##".into() })),
        });
        assert_eq!(create(&mut d, from).await.unwrap_err().code(), Code::NotFound);
        assert!(listing(&g.root()).is_empty(), "{:?}", listing(&g.root()));
        // An ID we never made: DeleteVolume succeeds (idempotent), as in csi-driver-nfs.
        delete(&mut d, "not-a-volume-id").await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn subdir_templates_and_each_on_delete_policy() {
        let g = ganesha();
        let mut d = Driver::start("").await;
        let tpl = |policy: &str| {
            params(
                &g,
                "/export",
                &[
                    ("subDir", "${pvc.metadata.namespace}-${pvc.metadata.name}"),
                    ("csi.storage.k8s.io/pvc/namespace", "ns"),
                    ("csi.storage.k8s.io/pvc/name", policy),
                    ("csi.storage.k8s.io/pv/name", "ignored"),
                    ("onDelete", policy),
                ],
            )
        };
        let del = create(&mut d, create_req("pv-del", tpl("delete"))).await.unwrap();
        let ret = create(&mut d, create_req("pv-ret", tpl("retain"))).await.unwrap();
        let arc = create(&mut d, create_req("pv-arc", tpl("archive"))).await.unwrap();
        assert_eq!(del.volume_id, "127.0.0.1#export#ns-delete#pv-del#");
        assert_eq!(ret.volume_id, "127.0.0.1#export#ns-retain#pv-ret#retain");
        assert_eq!(arc.volume_id, "127.0.0.1#export#ns-archive#pv-arc#archive");
        std::fs::write(g.root().join("ns-archive/data"), b"keep me").unwrap();
        for v in [&del, &ret, &arc] {
            delete(&mut d, &v.volume_id).await;
        }
        let left = listing(&g.root());
        assert_eq!(left, ["archived-ns-archive", "ns-retain"].into_iter().map(String::from).collect());
        assert_eq!(std::fs::read(g.root().join("archived-ns-archive/data")).unwrap(), b"keep me");
        // Records are gone for all three.
        assert_eq!(std::fs::read_dir(g.root().join(".csi-nfs/volumes")).unwrap().count(), 0);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn twenty_parallel_creates_of_one_name_make_one_directory_and_one_id() {
        let g = ganesha();
        let d = Driver::start("").await;
        let p = params(&g, "/export", &[]);
        let started = Instant::now();
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let mut c = d.client.clone();
                let r = create_req("pvc-same", p.clone());
                tokio::spawn(async move { c.create_volume(r).await })
            })
            .collect();
        let mut ids = BTreeSet::new();
        for t in tasks {
            ids.insert(t.await.unwrap().expect("every caller succeeds").into_inner().volume.unwrap().volume_id);
        }
        eprintln!("20 parallel CreateVolume, one name: {:?}", started.elapsed());
        assert_eq!(ids.len(), 1, "{ids:?}");
        assert_eq!(listing(&g.root()), BTreeSet::from(["pvc-same".to_string()]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn twenty_parallel_creates_of_different_names_then_deletes_leave_the_share_empty() {
        let g = ganesha();
        let d = Driver::start("").await;
        let p = params(&g, "/export", &[]);
        let started = Instant::now();
        let tasks: Vec<_> = (0..20)
            .map(|i| {
                let mut c = d.client.clone();
                let r = create_req(&format!("pvc-{i:02}"), p.clone());
                tokio::spawn(async move { c.create_volume(r).await })
            })
            .collect();
        let mut ids = Vec::new();
        for t in tasks {
            ids.push(t.await.unwrap().unwrap().into_inner().volume.unwrap().volume_id);
        }
        eprintln!("20 parallel CreateVolume, 20 names: {:?}", started.elapsed());
        assert_eq!(listing(&g.root()).len(), 20);
        let tasks: Vec<_> = ids
            .into_iter()
            .map(|id| {
                let mut c = d.client.clone();
                tokio::spawn(async move {
                    c.delete_volume(pb::DeleteVolumeRequest { volume_id: id, ..Default::default() }).await
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        assert!(listing(&g.root()).is_empty(), "{:?}", listing(&g.root()));
        assert_eq!(std::fs::read_dir(g.root().join(".csi-nfs/volumes")).unwrap().count(), 0);
    }

    /// Root squash: the controller runs as root, the server makes root
    /// nobody, so a chown by root is refused. The controller then makes the
    /// directory as uid:gid themselves (their AUTH_SYS identity), and the
    /// volume is theirs with its mountPermissions. Where uid:gid may not
    /// write the share root either, the user gets PERMISSION_DENIED naming
    /// the cause, and nothing is left.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn on_a_root_squashed_share_the_volume_is_made_as_its_owner() {
        let g = ganesha();
        let mut d = Driver::start("").await;
        let p = params(&g, "/squash", &[("uid", "1000"), ("gid", "1000"), ("mountPermissions", "0770")]);
        let v = create(&mut d, create_req("pvc-sq", p)).await.expect("CreateVolume with uid/gid on a squashed share");
        let dir = g.squash_root().join("pvc-sq");
        let md = std::fs::metadata(&dir).unwrap();
        assert_eq!((md.uid(), md.gid(), mode(&dir)), (1000, 1000, 0o770));
        delete(&mut d, &v.volume_id).await;
        assert!(!dir.exists(), "DeleteVolume removed the owner's directory");

        // The owner cannot write a 0755 root-owned parent: clear refusal, nothing left.
        std::fs::create_dir(g.squash_root().join("closed")).unwrap();
        let p = params(&g, "/squash", &[("uid", "1000"), ("gid", "1000"), ("subDir", "closed/${pvc.metadata.name}")]);
        let mut req = create_req("pvc-sq3", p);
        req.parameters.insert("csi.storage.k8s.io/pvc/name".into(), "pvc-sq3".into());
        let e = create(&mut d, req).await.unwrap_err();
        eprintln!("root squash + uid/gid, parent not writable: {:?}: {}", e.code(), e.message());
        assert!(matches!(e.code(), Code::PermissionDenied), "{e:?}");
        assert!(e.message().contains("squash"), "{}", e.message());
        assert!(listing(&g.squash_root().join("closed")).is_empty());
        std::fs::remove_dir(g.squash_root().join("closed")).unwrap();

        // Without uid/gid the volume is made, owned by the anonymous user;
        // mountPermissions works because the owner (nobody) may chmod.
        let p = params(&g, "/squash", &[("mountPermissions", "0777")]);
        let v = create(&mut d, create_req("pvc-sq2", p)).await.unwrap();
        let dir = g.squash_root().join("pvc-sq2");
        let md = std::fs::metadata(&dir).unwrap();
        eprintln!(
            "root squash, no uid/gid: {} owned by {}:{} mode {:o}",
            dir.display(),
            md.uid(),
            md.gid(),
            mode(&dir)
        );
        assert_eq!((md.uid(), md.gid(), mode(&dir)), (65534, 65534, 0o777));
        delete(&mut d, &v.volume_id).await;
        assert!(!dir.exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_stopped_server_is_unavailable_quickly_and_nothing_is_left() {
        let mut g = ganesha();
        let mut d = Driver::start("").await;
        let p = params(&g, "/export", &[]);
        g.stop();
        let started = Instant::now();
        let e = create(&mut d, create_req("pvc-down", p.clone())).await.unwrap_err();
        let took = started.elapsed();
        eprintln!("server down: {:?} after {took:?}: {}", e.code(), e.message());
        assert!(matches!(e.code(), Code::Unavailable | Code::DeadlineExceeded), "{e:?}");
        assert!(e.message().contains("127.0.0.1"), "the message names the server: {}", e.message());
        assert!(took < Duration::from_secs(15), "{took:?}");
        g.restart().unwrap();
        assert!(listing(&g.root()).is_empty());
        let v = create(&mut d, create_req("pvc-down", p)).await.unwrap();
        assert!(g.root().join("pvc-down").is_dir());
        delete(&mut d, &v.volume_id).await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn snapshots_and_clones_carry_the_files() {
        let g = ganesha();
        let mut d = Driver::start("").await;
        let p = params(&g, "/export", &[]);
        let src = create(&mut d, create_req("pvc-src", p.clone())).await.unwrap();
        std::fs::create_dir(g.root().join("pvc-src/sub")).unwrap();
        std::fs::write(g.root().join("pvc-src/sub/file"), b"snapshot me").unwrap();
        std::os::unix::fs::symlink("sub/file", g.root().join("pvc-src/link")).unwrap();

        let snap_req = pb::CreateSnapshotRequest {
            source_volume_id: src.volume_id.clone(),
            name: "snap-1".into(),
            parameters: [("mountOptions".to_string(), format!("port={}", g.port()))].into(),
            ..Default::default()
        };
        let started = Instant::now();
        let snap = d.client.create_snapshot(snap_req.clone()).await.unwrap().into_inner().snapshot.unwrap();
        eprintln!("CreateSnapshot of 1 file: {:?}", started.elapsed());
        assert!(snap.ready_to_use && snap.creation_time.is_some());
        assert_eq!(snap.size_bytes, 11, "the bytes copied");
        assert_eq!(snap.source_volume_id, src.volume_id);
        assert_eq!(snap.snapshot_id, "127.0.0.1#export#snap-1#.csi-nfs/snapshots/snap-1#pvc-src");
        let again = d.client.create_snapshot(snap_req.clone()).await.unwrap().into_inner().snapshot.unwrap();
        assert_eq!(again, snap, "idempotent on the name");
        // The snapshot does not follow later writes to the volume.
        std::fs::write(g.root().join("pvc-src/sub/file"), b"changed").unwrap();

        let other = create(&mut d, create_req("pvc-other", p.clone())).await.unwrap();
        let mut clash = snap_req.clone();
        clash.source_volume_id = other.volume_id.clone();
        assert_eq!(d.client.create_snapshot(clash).await.unwrap_err().code(), Code::AlreadyExists);

        let mut from_snap = create_req("pvc-from-snap", p.clone());
        from_snap.volume_content_source = Some(pb::VolumeContentSource {
            r#type: Some(vcs::Type::Snapshot(vcs::SnapshotSource { snapshot_id: snap.snapshot_id.clone() })),
        });
        let restored = create(&mut d, from_snap).await.unwrap();
        assert!(restored.content_source.is_some());
        assert_eq!(std::fs::read(g.root().join("pvc-from-snap/sub/file")).unwrap(), b"snapshot me");
        assert_eq!(std::fs::read_link(g.root().join("pvc-from-snap/link")).unwrap(), Path::new("sub/file"));

        let mut clone = create_req("pvc-clone", p.clone());
        clone.volume_content_source = Some(pb::VolumeContentSource {
            r#type: Some(vcs::Type::Volume(vcs::VolumeSource { volume_id: src.volume_id.clone() })),
        });
        create(&mut d, clone).await.unwrap();
        assert_eq!(std::fs::read(g.root().join("pvc-clone/sub/file")).unwrap(), b"changed");

        let listed = d
            .client
            .list_snapshots(pb::ListSnapshotsRequest { source_volume_id: src.volume_id.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(listed.entries.len(), 1);
        let by_id = d
            .client
            .list_snapshots(pb::ListSnapshotsRequest { snapshot_id: snap.snapshot_id.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(by_id.entries[0].snapshot.as_ref().unwrap(), &snap);

        // Made-up IDs never delete a volume or the metadata.
        for id in ["127.0.0.1#export#pvc-src#pvc-src#x", "127.0.0.1#export#n#pvc-src#x"] {
            let req = pb::DeleteSnapshotRequest { snapshot_id: id.into(), ..Default::default() };
            let r = d.client.delete_snapshot(req).await;
            assert!(r.is_ok() || r.as_ref().unwrap_err().code() == Code::FailedPrecondition, "{r:?}");
        }
        delete(&mut d, "127.0.0.1#export#.csi-nfs##").await;
        assert!(g.root().join("pvc-src/sub/file").exists() && g.root().join(".csi-nfs/volumes").is_dir());

        let del = pb::DeleteSnapshotRequest { snapshot_id: snap.snapshot_id.clone(), ..Default::default() };
        d.client.delete_snapshot(del.clone()).await.unwrap();
        d.client.delete_snapshot(del).await.unwrap();
        assert!(!g.root().join(".csi-nfs/snapshots/snap-1").exists());
        let mut from_gone = create_req("pvc-from-gone", p.clone());
        from_gone.volume_content_source = Some(pb::VolumeContentSource {
            r#type: Some(vcs::Type::Snapshot(vcs::SnapshotSource { snapshot_id: snap.snapshot_id.clone() })),
        });
        assert_eq!(create(&mut d, from_gone).await.unwrap_err().code(), Code::NotFound);
        assert!(!g.root().join("pvc-from-gone").exists());
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn expand_validate_list_and_capacity() {
        let g = ganesha();
        let mut d = Driver::start(&format!("port={}", g.port())).await;
        // No mountOptions in the request: the driver's --mount-options apply.
        let mut p = params(&g, "/export", &[]);
        p.remove("mountOptions");
        let mut ids = Vec::new();
        for i in 0..5 {
            ids.push(create(&mut d, create_req(&format!("pvc-l{i}"), p.clone())).await.unwrap().volume_id);
        }
        let unknown = "127.0.0.1#export#nope##".to_string();

        let exp = d
            .client
            .controller_expand_volume(pb::ControllerExpandVolumeRequest {
                volume_id: ids[0].clone(),
                capacity_range: Some(pb::CapacityRange { required_bytes: 5 << 30, limit_bytes: 0 }),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!((exp.capacity_bytes, exp.node_expansion_required), (5 << 30, false));
        let e = d
            .client
            .controller_expand_volume(pb::ControllerExpandVolumeRequest {
                volume_id: unknown.clone(),
                capacity_range: Some(pb::CapacityRange { required_bytes: 1, limit_bytes: 0 }),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);

        use vc::access_mode::Mode;
        let caps: Vec<_> = [
            Mode::SingleNodeWriter,
            Mode::SingleNodeReaderOnly,
            Mode::MultiNodeReaderOnly,
            Mode::MultiNodeSingleWriter,
            Mode::MultiNodeMultiWriter,
            Mode::SingleNodeSingleWriter,
            Mode::SingleNodeMultiWriter,
        ]
        .into_iter()
        .map(mount_cap)
        .collect();
        let ok = d
            .client
            .validate_volume_capabilities(pb::ValidateVolumeCapabilitiesRequest {
                volume_id: ids[0].clone(),
                volume_capabilities: caps.clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(ok.confirmed.unwrap().volume_capabilities, caps);
        let e = d
            .client
            .validate_volume_capabilities(pb::ValidateVolumeCapabilitiesRequest {
                volume_id: unknown,
                volume_capabilities: caps,
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::NotFound);

        let mut seen = Vec::new();
        let mut token = String::new();
        loop {
            let r = d
                .client
                .list_volumes(pb::ListVolumesRequest { max_entries: 2, starting_token: token.clone() })
                .await
                .unwrap()
                .into_inner();
            assert!(r.entries.len() <= 2);
            seen.extend(r.entries.into_iter().map(|e| e.volume.unwrap().volume_id));
            if r.next_token.is_empty() {
                break;
            }
            token = r.next_token;
        }
        ids.sort();
        assert_eq!(seen, ids);
        let e = d
            .client
            .list_volumes(pb::ListVolumesRequest { max_entries: 2, starting_token: "garbage".into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Aborted);

        let cap = d
            .client
            .get_capacity(pb::GetCapacityRequest { parameters: p.clone(), ..Default::default() })
            .await
            .unwrap()
            .into_inner();
        assert!(cap.available_capacity > 0, "{cap:?}");
        // Parameters are OPTIONAL in the spec: no server, nothing to measure, 0.
        let none = d.client.get_capacity(pb::GetCapacityRequest::default()).await.unwrap().into_inner();
        assert_eq!(none.available_capacity, 0);

        let caps = d.client.controller_get_capabilities(pb::ControllerGetCapabilitiesRequest {}).await.unwrap();
        assert_eq!(caps.into_inner().capabilities.len(), 8);
        let e = d.client.controller_publish_volume(pb::ControllerPublishVolumeRequest::default()).await.unwrap_err();
        assert_eq!(e.code(), Code::Unimplemented);
        let _ = HashMap::<(), ()>::new();
        assert!(!d.log().contains("panicked"));
    }

    fn volume_ids(r: &pb::ListVolumesResponse) -> Vec<String> {
        r.entries.iter().map(|e| e.volume.as_ref().unwrap().volume_id.clone()).collect()
    }

    async fn list_all(d: &mut Driver) -> Vec<String> {
        volume_ids(&d.client.list_volumes(pb::ListVolumesRequest::default()).await.unwrap().into_inner())
    }

    /// A restarted controller lists the volumes and snapshots it listed
    /// before (the known shares are in --state-dir), without any call
    /// naming their share first; one without that state lists nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_restarted_controller_lists_the_same_volumes_and_snapshots() {
        let g = ganesha();
        let state = tempfile::tempdir().unwrap();
        let state_dir = state.path().display().to_string();
        let p = params(&g, "/export", &[]);
        let mut d = Driver::start_with_state("", &state_dir).await;
        let mut ids = Vec::new();
        for n in ["r-1", "r-2", "r-3"] {
            ids.push(create(&mut d, create_req(n, p.clone())).await.unwrap().volume_id);
        }
        ids.sort();
        let snap = d
            .client
            .create_snapshot(pb::CreateSnapshotRequest {
                name: "r-snap".into(),
                source_volume_id: ids[0].clone(),
                ..Default::default()
            })
            .await
            .unwrap()
            .into_inner()
            .snapshot
            .unwrap();
        assert_eq!(list_all(&mut d).await, ids);
        drop(d);

        let mut d = Driver::start_with_state("", &state_dir).await;
        assert_eq!(list_all(&mut d).await, ids, "the restarted controller lists the same volumes");
        let snaps = d.client.list_snapshots(pb::ListSnapshotsRequest::default()).await.unwrap().into_inner();
        let snap_ids: Vec<String> =
            snaps.entries.iter().map(|e| e.snapshot.as_ref().unwrap().snapshot_id.clone()).collect();
        assert_eq!(snap_ids, vec![snap.snapshot_id.clone()]);

        // Without the state, a fresh controller knows no share: nothing listed.
        let mut fresh = Driver::start("").await;
        assert_eq!(list_all(&mut fresh).await, Vec::<String>::new());
        drop(fresh);

        // Everything deleted: the share is forgotten at the next listing and
        // stays forgotten after another restart.
        d.client
            .delete_snapshot(pb::DeleteSnapshotRequest { snapshot_id: snap.snapshot_id, ..Default::default() })
            .await
            .unwrap();
        for id in &ids {
            delete(&mut d, id).await;
        }
        assert_eq!(list_all(&mut d).await, Vec::<String>::new());
        let saved = std::fs::read_to_string(state.path().join("shares.json")).unwrap();
        assert!(!saved.contains("export"), "an empty share is forgotten: {saved}");
        drop(d);
        let mut d = Driver::start_with_state("", &state_dir).await;
        assert_eq!(list_all(&mut d).await, Vec::<String>::new());
        assert!(!d.log().contains("panicked"));
    }

    /// Entries added and removed between pages: every volume that stayed is
    /// listed exactly once, and the token still works when the entry it
    /// points after was deleted.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn pages_stay_exact_when_volumes_come_and_go_between_them() {
        let g = ganesha();
        let p = params(&g, "/export", &[]);
        let mut d = Driver::start("").await;
        let mut id = HashMap::new();
        for n in ["pg-1", "pg-2", "pg-3", "pg-4", "pg-5"] {
            id.insert(n, create(&mut d, create_req(n, p.clone())).await.unwrap().volume_id);
        }
        let first = d
            .client
            .list_volumes(pb::ListVolumesRequest { max_entries: 2, starting_token: String::new() })
            .await
            .unwrap()
            .into_inner();
        assert_eq!(volume_ids(&first), vec![id["pg-1"].clone(), id["pg-2"].clone()]);
        // The last entry of the page and an earlier one go; one volume is
        // added before the token's position and one after it.
        delete(&mut d, &id["pg-2"]).await;
        delete(&mut d, &id["pg-1"]).await;
        let before = create(&mut d, create_req("pg-0", p.clone())).await.unwrap().volume_id;
        let after = create(&mut d, create_req("pg-9", p.clone())).await.unwrap().volume_id;
        let mut rest = Vec::new();
        let mut token = first.next_token;
        while !token.is_empty() {
            let r = d
                .client
                .list_volumes(pb::ListVolumesRequest { max_entries: 2, starting_token: token.clone() })
                .await
                .unwrap()
                .into_inner();
            assert!(r.entries.len() <= 2);
            rest.extend(volume_ids(&r));
            token = r.next_token;
        }
        assert_eq!(rest, vec![id["pg-3"].clone(), id["pg-4"].clone(), id["pg-5"].clone(), after.clone()]);
        assert!(!rest.contains(&before), "an entry before the token is not repeated");
        // Tokens are ours: anything else is ABORTED, as the spec says.
        let e = d
            .client
            .list_volumes(pb::ListVolumesRequest { max_entries: 2, starting_token: "2".into() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::Aborted);
        for v in rest.iter().chain([&before]) {
            delete(&mut d, v).await;
        }
    }

    /// On this host (no kernel NFS client) the controller cannot speak to a
    /// 4.1-only server: libnfs 4.0 speaks 4.0, and there is no kernel client
    /// to fall back on (the guest test `csi_nfs_node` provisions there
    /// through it). It says exactly that, quickly, and leaves nothing.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn create_volume_on_a_server_without_nfs_4_0_is_failed_precondition() {
        assert!(!nfs::kernel::client_available(), "this test is for a host without a kernel NFS client");
        let g = Ganesha::start_with_minor_versions("1").expect("start nfs-ganesha");
        let mut d = Driver::start("").await;
        for (name, options) in
            [("v41", format!("port={}", g.port())), ("v41-asked", format!("port={},nfsvers=4.1", g.port()))]
        {
            let started = Instant::now();
            let e = create(&mut d, create_req(name, params(&g, "/export", &[("mountOptions", &options)])))
                .await
                .unwrap_err();
            assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
            let m = e.message();
            assert!(m.contains("libnfs 4.0") && m.contains("NFSv4.0") && m.contains("no kernel NFS client"), "{m}");
            assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
        }
        let e = d
            .client
            .get_capacity(pb::GetCapacityRequest { parameters: params(&g, "/export", &[]), ..Default::default() })
            .await
            .unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(listing(&g.root()).is_empty());
    }

    /// `--provisioner=kernel` on a host without a kernel NFS client: every
    /// call that reaches a share is FAILED_PRECONDITION saying so, even on a
    /// server libnfs could speak to; `--provisioner=libnfs` works there.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_provisioner_flag_forces_a_backend() {
        let g = ganesha();
        let mut d = Driver::start_with_args("", &["--provisioner=kernel"]).await;
        let e = create(&mut d, create_req("k1", params(&g, "/export", &[]))).await.unwrap_err();
        assert_eq!(e.code(), Code::FailedPrecondition, "{e:?}");
        assert!(e.message().contains("--provisioner=kernel") && e.message().contains("no kernel NFS client"), "{e:?}");
        assert!(listing(&g.root()).is_empty());
        let mut d = Driver::start_with_args("", &["--provisioner=libnfs"]).await;
        let v = create(&mut d, create_req("l1", params(&g, "/export", &[]))).await.unwrap();
        assert!(g.root().join("l1").is_dir());
        delete(&mut d, &v.volume_id).await;
        assert!(!g.root().join("l1").exists());
        let g41 = Ganesha::start_with_minor_versions("1").expect("start nfs-ganesha");
        let e = create(&mut d, create_req("l2", params(&g41, "/export", &[]))).await.unwrap_err();
        assert!(e.message().contains("--provisioner=libnfs rules out the kernel NFS client"), "{e:?}");
    }
}
