//! The Node service: mounts `server:/share/subdir` at the target path with
//! the kernel NFS client, through `mount(2)` (no `mount.nfs` helper).
//!
//! What the kernel needs that `mount.nfs` would otherwise add: the server's
//! address as `addr=` (the source's host name is only a label to the
//! kernel), and for NFSv4 the file system type `nfs4`. Without an explicit
//! version we ask for 4.2 and step down to 4.1 and 4.0, as `mount.nfs` does.
//!
//! Every call that can reach the server is bounded in time, so a dead server
//! never hangs the node plugin: the mount ([`MOUNT_TIMEOUT`]), the unmount
//! (csi-core escalates to a forced, lazy unmount) and statvfs for
//! NodeGetVolumeStats (which then reports an abnormal volume condition).

use std::net::{IpAddr, ToSocketAddrs};
use std::path::Path;
use std::time::Duration;

use csi_core::mount::{self, MsFlags};
use csi_core::node::blocking;
use csi_core::pb;
use csi_core::pb::node_service_capability::rpc::Type as NodeCap;
use csi_core::pb::volume_capability::access_mode::Mode as AccessMode;
use csi_core::validate::{self, CapabilitySupport, InFlight};
use csi_core::Error;
use nix::errno::Errno;
use tonic::{Request, Response, Status};

use crate::volume::VolumeId;

/// Bound on one `mount(2)` attempt.
pub const MOUNT_TIMEOUT: Duration = Duration::from_secs(20);
/// Bound on each unmount step (a dead server: plain, then forced + lazy).
pub const UNMOUNT_TIMEOUT: Duration = Duration::from_secs(5);
/// Bound on statvfs for NodeGetVolumeStats.
pub const STATS_TIMEOUT: Duration = Duration::from_secs(5);

/// NFSv4 minor versions tried, newest first, when no version is given.
const V4_MINORS: [&str; 3] = ["4.2", "4.1", "4.0"];

/// csi-nfs's Node service.
#[derive(Debug)]
pub struct NodeService {
    node_id: String,
    config: crate::Config,
    in_flight: InFlight,
}

impl NodeService {
    /// The node service of node `node_id`.
    pub fn new(node_id: &str, config: crate::Config) -> Self {
        Self { node_id: node_id.to_string(), config, in_flight: InFlight::default() }
    }
}

/// Where and how to mount one volume, decided without I/O.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MountPlan {
    /// `server:/share/subdir` (`[v6addr]:/…` for an IPv6 literal).
    pub source: String,
    /// Host part of the source, resolved to `addr=` at mount time.
    pub server: String,
    /// Generic mount flags taken out of the options (ro, nosuid, …).
    pub flags: MsFlags,
    /// NFS options for the kernel, without `vers` and `addr`.
    pub nfs_options: Vec<String>,
    /// The NFS version asked for (`vers=`/`nfsvers=`), if any.
    pub version: Option<String>,
    /// `mountPermissions` from the volume context: the mode the volume's
    /// root should have.
    pub permissions: Option<u32>,
}

impl MountPlan {
    /// Builds the plan for `volume_id` with the volume context (as
    /// CreateVolume returned it), the mount options in order of precedence
    /// (the capability's `mount_flags` first, then the context's
    /// `mountOptions`, then the driver default) and `readonly`.
    pub fn new(
        volume_id: &str,
        context: &std::collections::HashMap<String, String>,
        mount_flags: &[String],
        default_options: &str,
        readonly: bool,
    ) -> Result<MountPlan, Error> {
        let (server, share, subdir) = match context.get("server") {
            Some(server) => (
                server.clone(),
                context.get("share").cloned().unwrap_or_default(),
                context.get("subdir").cloned().unwrap_or_default(),
            ),
            None => {
                let id = VolumeId::parse(volume_id)?;
                (id.server, id.share, id.subdir)
            }
        };
        if server.is_empty() {
            return Err(Error::InvalidArgument(format!("volume {volume_id}: no NFS server in the volume context")));
        }
        let path: String = [share.trim_matches('/'), subdir.trim_matches('/')]
            .iter()
            .filter(|p| !p.is_empty())
            .fold(String::new(), |acc, p| format!("{acc}/{p}"));
        let path = if path.is_empty() { "/".to_string() } else { path };
        let host = if server.parse::<std::net::Ipv6Addr>().is_ok() { format!("[{server}]") } else { server.clone() };

        // The first source that gives any option wins, as in csi-driver-nfs
        // (PV mountOptions override the StorageClass's, which override the driver's).
        let context_opts = context.get("mountOptions").map(String::as_str).unwrap_or("");
        let chosen: Vec<String> = if !mount_flags.is_empty() {
            mount_flags.iter().flat_map(|f| split_options(f)).collect()
        } else if !context_opts.is_empty() {
            split_options(context_opts)
        } else {
            split_options(default_options)
        };

        let mut flags = if readonly { MsFlags::MS_RDONLY } else { MsFlags::empty() };
        let mut nfs_options = Vec::new();
        let mut version = None;
        for opt in chosen {
            let (key, value) = match opt.split_once('=') {
                Some((k, v)) => (k.to_string(), Some(v.to_string())),
                None => (opt.clone(), None),
            };
            match (key.as_str(), value) {
                ("vers" | "nfsvers", Some(v)) => version = Some(v),
                ("vers" | "nfsvers", None) => {
                    return Err(Error::InvalidArgument(format!("mount option {opt:?} needs a value")))
                }
                ("ro", None) => flags |= MsFlags::MS_RDONLY,
                ("rw", None) => {}
                ("nosuid", None) => flags |= MsFlags::MS_NOSUID,
                ("nodev", None) => flags |= MsFlags::MS_NODEV,
                ("noexec", None) => flags |= MsFlags::MS_NOEXEC,
                ("noatime", None) => flags |= MsFlags::MS_NOATIME,
                ("nodiratime", None) => flags |= MsFlags::MS_NODIRATIME,
                ("relatime", None) => flags |= MsFlags::MS_RELATIME,
                ("sync", None) => flags |= MsFlags::MS_SYNCHRONOUS,
                ("dirsync", None) => flags |= MsFlags::MS_DIRSYNC,
                // Options of the mount.nfs helper, not of the kernel.
                ("defaults" | "_netdev" | "bg" | "fg" | "auto" | "noauto" | "user" | "nouser", None) => {}
                ("retry", Some(_)) => {}
                ("addr", Some(_)) => {
                    return Err(Error::InvalidArgument(
                        "mount option addr= is set by the driver from the server name".into(),
                    ))
                }
                _ => nfs_options.push(opt),
            }
        }
        let permissions = match context.get("mountPermissions") {
            None => None,
            Some(s) if s.is_empty() => None,
            Some(s) => match u32::from_str_radix(s, 8) {
                Ok(0) => None,
                Ok(m) if m <= 0o7777 => Some(m),
                _ => return Err(Error::InvalidArgument(format!("mountPermissions {s:?} is not an octal mode"))),
            },
        };
        Ok(MountPlan { source: format!("{host}:{path}"), server, flags, nfs_options, version, permissions })
    }

    /// The `(fstype, data)` attempts for the kernel, in order, given the
    /// server's address.
    pub fn attempts(&self, addr: IpAddr) -> Vec<(&'static str, String)> {
        let with = |vers: &str| {
            let mut opts = vec![format!("vers={vers}")];
            opts.extend(self.nfs_options.iter().cloned());
            opts.push(format!("addr={addr}"));
            opts.join(",")
        };
        match self.version.as_deref() {
            None | Some("4") => V4_MINORS.iter().map(|v| ("nfs4", with(v))).collect(),
            Some(v) if v.starts_with('4') => vec![("nfs4", with(v))],
            Some(v) => vec![("nfs", with(v))],
        }
    }
}

fn split_options(s: &str) -> Vec<String> {
    s.split(',').map(str::trim).filter(|o| !o.is_empty()).map(str::to_string).collect()
}

/// The server's address for `addr=`: an IP literal as is, a name resolved
/// (first answer, IPv4 preferred as mount.nfs does).
fn resolve(server: &str) -> Result<IpAddr, Error> {
    if let Ok(ip) = server.parse::<IpAddr>() {
        return Ok(ip);
    }
    let addrs: Vec<IpAddr> = (server, 2049)
        .to_socket_addrs()
        .map_err(|e| Error::Unavailable(format!("resolve NFS server {server:?}: {e}")))?
        .map(|a| a.ip())
        .collect();
    addrs
        .iter()
        .find(|a| a.is_ipv4())
        .or_else(|| addrs.first())
        .copied()
        .ok_or_else(|| Error::Unavailable(format!("NFS server {server:?} has no address")))
}

/// Mounts per `plan` at `target` (which exists), trying each version in turn
/// (also the controller's mounts of share roots, `crate::nfs::kernel`).
pub(crate) fn mount_nfs(plan: &MountPlan, target: &Path) -> Result<(), Error> {
    let addr = resolve(&plan.server)?;
    let mut last = None;
    for (fstype, data) in plan.attempts(addr) {
        match mount::mount(&plan.source, target, fstype, plan.flags, Some(&data), MOUNT_TIMEOUT) {
            Ok(()) => return Ok(()),
            // The server does not speak this minor version: try the next one.
            Err(e @ Error::Sys { errno: Errno::EPROTONOSUPPORT | Errno::EINVAL, .. }) => last = Some(e),
            Err(e) => return Err(mount_error(plan, e)),
        }
    }
    Err(mount_error(plan, last.unwrap_or_else(|| Error::Internal("no mount attempt".into()))))
}

/// Classifies a failed mount by what the user can do about it.
fn mount_error(plan: &MountPlan, e: Error) -> Error {
    match e {
        Error::Sys { errno: Errno::ENOENT, .. } => {
            Error::NotFound(format!("{} does not exist on the server: {e}", plan.source))
        }
        Error::Sys { errno: Errno::EACCES | Errno::EPERM, .. } => {
            Error::PermissionDenied(format!("the server refused {}: {e}", plan.source))
        }
        Error::Sys {
            errno: Errno::ECONNREFUSED | Errno::ETIMEDOUT | Errno::EHOSTUNREACH | Errno::ENETUNREACH, ..
        } => Error::Unavailable(format!("NFS server of {} unreachable: {e}", plan.source)),
        e => e,
    }
}

/// NodePublishVolume's work once the request is checked.
fn publish(plan: &MountPlan, target: &Path, single_writer: bool) -> Result<(), Error> {
    let table = mount::mounts()?;
    if single_writer {
        // SINGLE_NODE_SINGLE_WRITER: one target path on this node at most.
        if let Some(other) =
            table.iter().find(|m| m.source == plan.source && m.fs_type.starts_with("nfs") && m.mount_point != target)
        {
            return Err(Error::FailedPrecondition(format!(
                "volume {} has access mode SINGLE_NODE_SINGLE_WRITER and is already published at {}",
                plan.source,
                other.mount_point.display()
            )));
        }
    }
    if let Some(m) = mount::find_mount(&table, target)? {
        // Idempotent: the same volume with the same read-only-ness is success.
        let same_ro = m.read_only() == plan.flags.contains(MsFlags::MS_RDONLY);
        if m.source == plan.source && m.fs_type.starts_with("nfs") && same_ro {
            return Ok(());
        }
        return Err(Error::AlreadyExists(format!(
            "{} is already a mount of {} ({}), not of {} as asked",
            target.display(),
            m.source,
            if m.read_only() { "read-only" } else { "read-write" },
            plan.source
        )));
    }
    let created = !target.exists();
    std::fs::create_dir_all(target).map_err(|e| Error::io(format!("create target {}", target.display()), e))?;
    let undo_dir = |e: Error| {
        if created {
            let _ = std::fs::remove_dir(target);
        }
        e
    };
    mount_nfs(plan, target).map_err(undo_dir)?;
    if let Some(mode) = plan.permissions.filter(|_| !plan.flags.contains(MsFlags::MS_RDONLY)) {
        if let Err(e) = apply_permissions(target, mode) {
            // Root squash turns the node's root into nobody: it cannot chmod
            // a directory it does not own. The controller already set the mode
            // when it made the directory, so this is worth a warning, not a
            // failed publish.
            tracing::warn!(target = %target.display(), "mountPermissions {mode:o} not applied: {e}");
        }
    }
    Ok(())
}

/// chmod of the mounted volume root when its mode differs (bounded: it is a
/// call to the server).
fn apply_permissions(target: &Path, mode: u32) -> Result<(), Error> {
    use nix::fcntl::AT_FDCWD;
    use nix::sys::stat::{fchmodat, stat, FchmodatFlags, Mode};
    let t = target.to_path_buf();
    mount::bounded_call(format!("chmod {mode:o} {}", target.display()), STATS_TIMEOUT, move || {
        if stat(&t)?.st_mode & 0o7777 == mode {
            return Ok(());
        }
        fchmodat(AT_FDCWD, &t, Mode::from_bits_truncate(mode), FchmodatFlags::FollowSymlink)
    })
}

#[tonic::async_trait]
impl pb::node_server::Node for NodeService {
    async fn node_publish_volume(
        &self,
        req: Request<pb::NodePublishVolumeRequest>,
    ) -> Result<Response<pb::NodePublishVolumeResponse>, Status> {
        let req = req.into_inner();
        validate::require_volume_id(&req.volume_id)?;
        validate::require_target_path(&req.target_path)?;
        let cap = validate::require_capability(req.volume_capability.as_ref(), &CapabilitySupport::SHARED_FILESYSTEM)?;
        let mount_flags = match &cap.access_type {
            Some(pb::volume_capability::AccessType::Mount(m)) => m.mount_flags.clone(),
            _ => Vec::new(),
        };
        let plan = MountPlan::new(
            &req.volume_id,
            &req.volume_context,
            &mount_flags,
            &self.config.mount_options,
            req.readonly,
        )?;
        let single_writer =
            cap.access_mode.as_ref().is_some_and(|m| m.mode == AccessMode::SingleNodeSingleWriter as i32);
        let target = mount::normalize(Path::new(&req.target_path))?;
        let _guard = self.in_flight.lock(&req.volume_id)?;
        blocking(move || publish(&plan, &target, single_writer)).await?;
        Ok(Response::new(pb::NodePublishVolumeResponse {}))
    }

    async fn node_unpublish_volume(
        &self,
        req: Request<pb::NodeUnpublishVolumeRequest>,
    ) -> Result<Response<pb::NodeUnpublishVolumeResponse>, Status> {
        csi_core::node::unpublish(&self.in_flight, req.into_inner(), UNMOUNT_TIMEOUT).await
    }

    async fn node_get_volume_stats(
        &self,
        req: Request<pb::NodeGetVolumeStatsRequest>,
    ) -> Result<Response<pb::NodeGetVolumeStatsResponse>, Status> {
        let req = req.into_inner();
        validate::require_volume_id(&req.volume_id)?;
        validate::require_stats_path(&req.volume_path)?;
        let path = mount::normalize(Path::new(&req.volume_path))?;
        // A server that stopped answering is an abnormal volume condition.
        let resp = blocking(move || csi_core::node::filesystem_stats(&path, STATS_TIMEOUT)).await?;
        Ok(Response::new(resp))
    }

    async fn node_get_capabilities(
        &self,
        _: Request<pb::NodeGetCapabilitiesRequest>,
    ) -> Result<Response<pb::NodeGetCapabilitiesResponse>, Status> {
        Ok(Response::new(pb::NodeGetCapabilitiesResponse {
            capabilities: csi_core::caps::node([
                NodeCap::GetVolumeStats,
                NodeCap::VolumeCondition,
                NodeCap::SingleNodeMultiWriter,
            ]),
        }))
    }

    async fn node_get_info(
        &self,
        _: Request<pb::NodeGetInfoRequest>,
    ) -> Result<Response<pb::NodeGetInfoResponse>, Status> {
        // No topology: an NFS server is reachable from every node.
        Ok(Response::new(pb::NodeGetInfoResponse { node_id: self.node_id.clone(), ..Default::default() }))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;

    fn ctx(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_source_comes_from_the_context_or_else_the_volume_id() {
        let c = ctx(&[("server", "nfs1"), ("share", "/export/"), ("subdir", "pvc-1")]);
        let p = MountPlan::new("ignored", &c, &[], "", false).unwrap();
        assert_eq!(p.source, "nfs1:/export/pvc-1");
        let p = MountPlan::new("10.0.0.9#srv/nfs#pvc-2##", &HashMap::new(), &[], "", false).unwrap();
        assert_eq!(p.source, "10.0.0.9:/srv/nfs/pvc-2");
        let p = MountPlan::new("x", &ctx(&[("server", "fd00::1"), ("share", "/e")]), &[], "", false).unwrap();
        assert_eq!(p.source, "[fd00::1]:/e");
        assert!(matches!(MountPlan::new("garbage", &HashMap::new(), &[], "", false), Err(Error::NotFound(_))));
    }

    #[test]
    fn capability_flags_win_over_context_options_over_driver_defaults() {
        let c = ctx(&[("server", "s"), ("share", "e"), ("mountOptions", "nfsvers=4.1,hard")]);
        let p = MountPlan::new("v", &c, &["vers=3".into(), "nolock,ro".into()], "port=2050", false).unwrap();
        assert_eq!(p.version.as_deref(), Some("3"));
        assert_eq!(p.nfs_options, vec!["nolock"]);
        assert!(p.flags.contains(MsFlags::MS_RDONLY));
        let p = MountPlan::new("v", &c, &[], "port=2050", false).unwrap();
        assert_eq!((p.version.as_deref(), p.nfs_options.clone()), (Some("4.1"), vec!["hard".to_string()]));
        let p = MountPlan::new("v", &ctx(&[("server", "s")]), &[], "port=2050, noatime", true).unwrap();
        assert_eq!(p.nfs_options, vec!["port=2050"]);
        assert!(p.flags.contains(MsFlags::MS_NOATIME | MsFlags::MS_RDONLY));
    }

    #[test]
    fn the_kernel_gets_nfs4_with_addr_and_falls_back_through_minor_versions() {
        let p = MountPlan::new("v", &ctx(&[("server", "s"), ("share", "e")]), &[], "port=20490", false).unwrap();
        let a = p.attempts("10.0.2.2".parse().unwrap());
        assert_eq!(
            a,
            vec![
                ("nfs4", "vers=4.2,port=20490,addr=10.0.2.2".to_string()),
                ("nfs4", "vers=4.1,port=20490,addr=10.0.2.2".to_string()),
                ("nfs4", "vers=4.0,port=20490,addr=10.0.2.2".to_string()),
            ]
        );
        let p = MountPlan::new("v", &ctx(&[("server", "s")]), &["nfsvers=3".into()], "", false).unwrap();
        assert_eq!(p.attempts("::1".parse().unwrap()), vec![("nfs", "vers=3,addr=::1".to_string())]);
    }

    #[test]
    fn bad_options_are_invalid_arguments() {
        let s = ctx(&[("server", "s")]);
        assert!(matches!(MountPlan::new("v", &s, &["addr=1.2.3.4".into()], "", false), Err(Error::InvalidArgument(_))));
        assert!(matches!(MountPlan::new("v", &s, &["vers".into()], "", false), Err(Error::InvalidArgument(_))));
        let bad_mode = ctx(&[("server", "s"), ("mountPermissions", "0x77")]);
        assert!(matches!(MountPlan::new("v", &bad_mode, &[], "", false), Err(Error::InvalidArgument(_))));
        let mode = ctx(&[("server", "s"), ("mountPermissions", "0775")]);
        assert_eq!(MountPlan::new("v", &mode, &[], "", false).unwrap().permissions, Some(0o775));
        assert!(matches!(MountPlan::new("v", &ctx(&[("server", "")]), &[], "", false), Err(Error::InvalidArgument(_))));
    }

    #[test]
    fn names_resolve_and_literals_pass_through() {
        assert_eq!(resolve("127.0.0.1").unwrap(), "127.0.0.1".parse::<IpAddr>().unwrap());
        assert!(resolve("localhost").unwrap().is_loopback());
        assert!(matches!(resolve("no-such-host.invalid"), Err(Error::Unavailable(_))));
    }
}
