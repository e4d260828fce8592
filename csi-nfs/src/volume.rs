//! Volume IDs and CreateVolume parameters, without I/O.
//!
//! The volume ID is csi-driver-nfs's: `server#share#subdir#uuid#onDelete`
//! (`#` cannot appear in a host name, and `share`/`subdir` are stored
//! without leading or trailing `/`). `uuid` is the PV name when the
//! subdirectory came from a `subDir` parameter (so two volumes whose
//! templates expand alike stay distinct), and empty otherwise; `onDelete`
//! is empty when the default applies. The legacy form
//! `server/share/subdir` is still accepted.

use std::collections::HashMap;

use csi_core::Error;

/// Separator of the volume ID's fields.
pub const SEPARATOR: char = '#';

/// What DeleteVolume does with the volume's directory.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum OnDelete {
    /// Remove it and everything in it (the default).
    #[default]
    Delete,
    /// Leave it as it is.
    Retain,
    /// Rename it to `archived-<subdir>` beside it.
    Archive,
}

impl OnDelete {
    /// Parses `delete`, `retain` or `archive` (case-insensitive).
    pub fn parse(s: &str) -> Result<OnDelete, Error> {
        match s.to_ascii_lowercase().as_str() {
            "delete" => Ok(OnDelete::Delete),
            "retain" => Ok(OnDelete::Retain),
            "archive" => Ok(OnDelete::Archive),
            _ => Err(Error::InvalidArgument(format!("onDelete {s:?}: expected delete, retain or archive"))),
        }
    }

    /// The parameter spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            OnDelete::Delete => "delete",
            OnDelete::Retain => "retain",
            OnDelete::Archive => "archive",
        }
    }
}

/// Where a volume lives: `server:/share/subdir`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VolumeId {
    /// NFS server host name or address.
    pub server: String,
    /// Exported path on the server, without leading or trailing `/`.
    pub share: String,
    /// The volume's directory inside the share, without leading or trailing `/`.
    pub subdir: String,
    /// The PV name when `subdir` came from a `subDir` parameter, else empty.
    pub uuid: String,
    /// `None` when the ID carries no onDelete field (the driver default applies).
    pub on_delete: Option<OnDelete>,
}

impl VolumeId {
    /// Parses a volume ID (the `#` form, or the legacy `server/share/subdir`).
    pub fn parse(id: &str) -> Result<VolumeId, Error> {
        let bad = |why: &str| Error::NotFound(format!("volume id {id:?}: {why}"));
        if id.contains(SEPARATOR) {
            let parts: Vec<&str> = id.split(SEPARATOR).collect();
            if parts.len() < 3 || parts.len() > 5 {
                return Err(bad("expected server#share#subdir[#uuid[#onDelete]]"));
            }
            let field = |i: usize| parts.get(i).copied().unwrap_or("");
            let on_delete = match field(4) {
                "" => None,
                s => Some(OnDelete::parse(s).map_err(|_| bad("unknown onDelete"))?),
            };
            let v = VolumeId {
                server: field(0).to_string(),
                share: trim(field(1)),
                subdir: trim(field(2)),
                uuid: field(3).to_string(),
                on_delete,
            };
            if v.server.is_empty() || v.subdir.is_empty() {
                return Err(bad("server or subdir empty"));
            }
            return Ok(v);
        }
        // Legacy: server/share/subdir, the subdir being the last component.
        let (server, rest) = id.split_once('/').ok_or_else(|| bad("not a csi-nfs volume id"))?;
        let rest = trim(rest);
        let (share, subdir) = rest.rsplit_once('/').ok_or_else(|| bad("legacy id needs server/share/subdir"))?;
        if server.is_empty() || subdir.is_empty() {
            return Err(bad("server or subdir empty"));
        }
        Ok(VolumeId {
            server: server.to_string(),
            share: trim(share),
            subdir: subdir.to_string(),
            uuid: String::new(),
            on_delete: None,
        })
    }

    /// The export path as mounted: `/share`.
    pub fn share_path(&self) -> String {
        format!("/{}", self.share)
    }

    /// The volume's directory relative to the server's pseudo root: `/share/subdir`.
    pub fn path(&self) -> String {
        if self.share.is_empty() {
            format!("/{}", self.subdir)
        } else {
            format!("/{}/{}", self.share, self.subdir)
        }
    }

    /// `server:/share/subdir`, the source of a kernel NFS mount.
    pub fn source(&self) -> String {
        format!("{}:{}", self.server, self.path())
    }
}

impl std::fmt::Display for VolumeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let on_delete = self.on_delete.map(OnDelete::as_str).unwrap_or("");
        write!(f, "{}#{}#{}#{}#{}", self.server, self.share, self.subdir, self.uuid, on_delete)
    }
}

fn trim(s: &str) -> String {
    s.trim_matches('/').to_string()
}

/// The directory on each share that holds the controller's metadata
/// records and snapshots; never a volume's subdirectory.
pub const META_DIR: &str = ".csi-nfs";

/// The CO's own keys (`csi.storage.k8s.io/pvc/name`, ...): accepted, and
/// used only for `subDir` templates.
const CO_PREFIX: &str = "csi.storage.k8s.io/";

/// The StorageClass parameters CreateVolume accepts (case-insensitive), as
/// csi-driver-nfs spells them. Any other key is INVALID_ARGUMENT, except the
/// CO's `csi.storage.k8s.io/*` keys. docs/csi-nfs.md lists exactly these
/// (`csi-nfs/tests/docs_params.rs` compares the two).
pub const PARAMETERS: &[&str] =
    &["server", "share", "subDir", "mountPermissions", "uid", "gid", "onDelete", "mountOptions"];

/// The VolumeSnapshotClass parameters CreateSnapshot accepts (case-insensitive;
/// `server` and `share` must name the source volume's). The same rules for
/// other keys as [`PARAMETERS`].
pub const SNAPSHOT_PARAMETERS: &[&str] = &["server", "share", "mountOptions"];

/// CreateVolume's parameters, checked, with the subdirectory resolved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateParams {
    /// Where the volume lives and what DeleteVolume does with it.
    pub id: VolumeId,
    /// `mountPermissions`: chmod of the volume's directory.
    pub mount_permissions: Option<u32>,
    /// `uid`: owner of the volume's directory.
    pub uid: Option<u32>,
    /// `gid`: group of the volume's directory.
    pub gid: Option<u32>,
    /// `mountOptions` of the request, else the driver's `--mount-options`.
    pub mount_options: String,
    /// `share` as the user wrote it (volume_context keeps it).
    pub share_param: String,
}

impl CreateParams {
    /// Parses CreateVolume `params` for volume `name`. Keys are
    /// case-insensitive, as in csi-driver-nfs; an unknown key is
    /// INVALID_ARGUMENT, except the CO's `csi.storage.k8s.io/*` keys.
    pub fn parse(name: &str, params: &HashMap<String, String>, default_mount_options: &str) -> Result<Self, Error> {
        let bad = |m: String| Error::InvalidArgument(m);
        let (mut server, mut share, mut subdir, mut on_delete) = (None, String::new(), None, None);
        let (mut perms, mut uid, mut gid, mut opts) = (None, None, None, None);
        let mut templates: Vec<(&str, &str)> = Vec::new();
        for (k, v) in params {
            let key = k.to_ascii_lowercase();
            if !key.starts_with(CO_PREFIX) && !PARAMETERS.iter().any(|p| p.eq_ignore_ascii_case(k)) {
                return Err(bad(format!("invalid parameter {k:?}")));
            }
            match key.as_str() {
                "server" => server = Some(v.trim().to_string()),
                "share" => share = v.clone(),
                "subdir" => subdir = Some(v.clone()),
                "ondelete" if !v.is_empty() => on_delete = Some(OnDelete::parse(v)?),
                "ondelete" => {}
                "mountpermissions" if !v.is_empty() => {
                    let m = u32::from_str_radix(v, 8)
                        .ok()
                        .filter(|m| *m <= 0o7777)
                        .ok_or_else(|| bad(format!("mountPermissions {v:?}: expected an octal mode such as 0777")))?;
                    // 0 means "no chmod", as in csi-driver-nfs.
                    perms = (m != 0).then_some(m);
                }
                "mountpermissions" => {}
                "uid" => uid = Some(parse_id("uid", v)?),
                "gid" => gid = Some(parse_id("gid", v)?),
                "mountoptions" => opts = Some(v.trim().to_string()),
                "csi.storage.k8s.io/pvc/name" => templates.push(("${pvc.metadata.name}", v)),
                "csi.storage.k8s.io/pvc/namespace" => templates.push(("${pvc.metadata.namespace}", v)),
                "csi.storage.k8s.io/pv/name" => templates.push(("${pv.metadata.name}", v)),
                key if key.starts_with(CO_PREFIX) => {}
                _ => return Err(bad(format!("invalid parameter {k:?}"))),
            }
        }
        let server = server.filter(|s| !s.is_empty()).ok_or_else(|| bad("parameter server is required".into()))?;
        if server.contains(SEPARATOR) || server.contains('/') {
            return Err(bad(format!("server {server:?}: a host name or address")));
        }
        if share.contains(SEPARATOR) || share.split('/').any(|c| c == "..") {
            return Err(bad(format!("share {share:?}: must not contain '#' or '..'")));
        }
        let (subdir, uuid) = match subdir.filter(|s| !s.is_empty()) {
            None => (name.to_string(), String::new()),
            Some(t) => {
                let mut d = t.clone();
                for (pat, val) in &templates {
                    d = d.replace(pat, val);
                }
                if d.contains("${") {
                    return Err(bad(format!(
                        "subDir {t:?}: template not resolved ({d:?}); the CO must pass \
                         csi.storage.k8s.io/pvc/name, pvc/namespace and pv/name (external-provisioner \
                         --extra-create-metadata)"
                    )));
                }
                (d, name.to_string())
            }
        };
        let subdir = trim(&subdir);
        if subdir.is_empty()
            || subdir.contains(SEPARATOR)
            || subdir.split('/').any(|c| c.is_empty() || c == "." || c == "..")
            || subdir.split('/').next() == Some(META_DIR)
        {
            return Err(bad(format!("subDir {subdir:?}: must be a relative path inside the share, not {META_DIR}")));
        }
        let mount_options = opts.unwrap_or_else(|| default_mount_options.trim().to_string());
        MountOptions::parse(&mount_options)?;
        Ok(CreateParams {
            // Like csi-driver-nfs, the ID names only a non-default policy.
            id: VolumeId {
                server,
                share: trim(&share),
                subdir,
                uuid,
                on_delete: on_delete.filter(|o| *o != OnDelete::Delete),
            },
            mount_permissions: perms,
            uid,
            gid,
            mount_options,
            share_param: share,
        })
    }

    /// The volume context the node mounts from.
    pub fn volume_context(&self) -> HashMap<String, String> {
        let mut c = HashMap::new();
        c.insert("server".to_string(), self.id.server.clone());
        c.insert("share".to_string(), self.id.share_path());
        c.insert("subdir".to_string(), self.id.subdir.clone());
        if let Some(m) = self.mount_permissions {
            c.insert("mountPermissions".to_string(), format!("{m:o}"));
        }
        if !self.mount_options.is_empty() {
            c.insert("mountOptions".to_string(), self.mount_options.clone());
        }
        c
    }
}

fn parse_id(key: &str, v: &str) -> Result<u32, Error> {
    v.trim().parse::<u32>().map_err(|_| Error::InvalidArgument(format!("{key} {v:?}: expected a number")))
}

impl VolumeId {
    /// The CO's name of the volume: the uuid field when set, else the
    /// subdirectory (csi-driver-nfs's rule, so it holds for its IDs too).
    pub fn name(&self) -> &str {
        if self.uuid.is_empty() {
            &self.subdir
        } else {
            &self.uuid
        }
    }

    /// Where DeleteVolume's `archive` puts the directory: `archived-<subdir>`
    /// in the share, csi-driver-nfs's name.
    pub fn archived_subdir(&self) -> String {
        format!("archived-{}", self.subdir)
    }
}

/// The NFS options the controller's own connection uses, from a
/// `mountOptions` string: `port=`, `nfsvers=`/`vers=`. The others are for
/// the node's kernel mount.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MountOptions {
    /// `port=N`; `None` for the protocol's default.
    pub port: Option<u16>,
    /// 3 or 4; 4 when not given (no portmapper needed).
    pub version: u32,
    /// The NFSv4 minor version asked for (`nfsvers=4.1`: 1), if any.
    pub minor: Option<u32>,
}

impl MountOptions {
    /// Parses a comma-separated option list.
    pub fn parse(s: &str) -> Result<MountOptions, Error> {
        let mut o = MountOptions { port: None, version: 4, minor: None };
        for opt in s.split(',').map(str::trim).filter(|o| !o.is_empty()) {
            let (k, v) = opt.split_once('=').unwrap_or((opt, ""));
            match k {
                "port" => {
                    let p: u16 =
                        v.parse().map_err(|_| Error::InvalidArgument(format!("mount option {opt:?}: bad port")))?;
                    o.port = (p != 0).then_some(p);
                }
                "nfsvers" | "vers" => {
                    (o.version, o.minor) = match v.split_once('.').unwrap_or((v, "")) {
                        ("3", _) => (3, None),
                        ("4", "") => (4, None),
                        ("4", m) if m.parse::<u32>().is_ok() => (4, m.parse().ok()),
                        _ => {
                            return Err(Error::InvalidArgument(format!(
                                "mount option {opt:?}: NFS version 3 or 4 (4.0, 4.1, 4.2)"
                            )))
                        }
                    }
                }
                _ => {}
            }
        }
        Ok(o)
    }
}

/// A snapshot: a copy of a volume's directory at
/// `<share>/.csi-nfs/snapshots/<name>` on the source volume's share.
///
/// Its ID has csi-driver-nfs's five fields, `server#share#name#path#src`,
/// where `path` is the copy's directory in the share and `src` the source
/// volume's name; csi-driver-nfs's own IDs (path = name, a tarball) parse
/// but [`SnapshotId::is_ours`] is false.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotId {
    /// NFS server.
    pub server: String,
    /// Share, without leading or trailing `/`.
    pub share: String,
    /// The snapshot's name (the CO's CreateSnapshot name).
    pub name: String,
    /// The copy's directory relative to the share.
    pub path: String,
    /// The source volume's name.
    pub src: String,
}

impl SnapshotId {
    /// The directory a snapshot named `name` is copied into.
    pub fn path_for(name: &str) -> String {
        format!("{META_DIR}/snapshots/{}", escape(name))
    }

    /// Parses a snapshot ID; anything else is NOT_FOUND.
    pub fn parse(id: &str) -> Result<SnapshotId, Error> {
        let parts: Vec<&str> = id.split(SEPARATOR).collect();
        if parts.len() != 5 || parts[0].is_empty() || parts[2].is_empty() || parts[3].is_empty() {
            return Err(Error::NotFound(format!("snapshot id {id:?}: expected server#share#name#path#source")));
        }
        if parts[3].split('/').any(|c| c == "..") {
            return Err(Error::NotFound(format!("snapshot id {id:?}: bad path")));
        }
        Ok(SnapshotId {
            server: parts[0].to_string(),
            share: trim(parts[1]),
            name: parts[2].to_string(),
            path: trim(parts[3]),
            src: parts[4].to_string(),
        })
    }

    /// Whether the snapshot is a directory copy made by this driver.
    pub fn is_ours(&self) -> bool {
        self.path == Self::path_for(&self.name)
    }
}

impl std::fmt::Display for SnapshotId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}#{}#{}#{}#{}", self.server, self.share, self.name, self.path, self.src)
    }
}

/// A CO name as one path component: `%` and `/` escaped (`%25`, `%2F`),
/// and a leading `.` (`%2E`) so no name is `.`, `..` or hidden.
pub fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for (i, c) in name.chars().enumerate() {
        match c {
            '%' => out.push_str("%25"),
            '/' => out.push_str("%2F"),
            '.' if i == 0 => out.push_str("%2E"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_the_csi_driver_nfs_form() {
        let id = "10.0.0.1#srv/nfs#pvc-1#pvc-1#archive";
        let v = VolumeId::parse(id).unwrap();
        assert_eq!(v.server, "10.0.0.1");
        assert_eq!(v.share, "srv/nfs");
        assert_eq!(v.subdir, "pvc-1");
        assert_eq!(v.on_delete, Some(OnDelete::Archive));
        assert_eq!(v.to_string(), id);
        assert_eq!(v.source(), "10.0.0.1:/srv/nfs/pvc-1");
    }

    #[test]
    fn reads_ids_with_empty_uuid_and_on_delete_as_seen_in_the_field() {
        let v = VolumeId::parse("nfs-server#mnt/default/talos#pvc-b833##").unwrap();
        assert_eq!(
            (v.share.as_str(), v.subdir.as_str(), v.uuid.as_str(), v.on_delete),
            ("mnt/default/talos", "pvc-b833", "", None)
        );
    }

    #[test]
    fn reads_the_legacy_slash_form() {
        let v = VolumeId::parse("server/export/dir/pvc-2").unwrap();
        assert_eq!((v.server.as_str(), v.share.as_str(), v.subdir.as_str()), ("server", "export/dir", "pvc-2"));
    }

    fn params(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn the_default_subdir_is_the_name_and_the_uuid_stays_empty() {
        let p = CreateParams::parse("pvc-1", &params(&[("server", "nfs"), ("share", "/export/")]), "").unwrap();
        assert_eq!(p.id.to_string(), "nfs#export#pvc-1##");
        assert_eq!(p.id.name(), "pvc-1");
        let c = p.volume_context();
        assert_eq!((c["server"].as_str(), c["share"].as_str(), c["subdir"].as_str()), ("nfs", "/export", "pvc-1"));
        assert!(!c.contains_key("mountOptions") && !c.contains_key("mountPermissions"));
    }

    #[test]
    fn subdir_templates_come_from_the_co_keys_and_the_uuid_is_the_name() {
        let p = CreateParams::parse(
            "pvc-9",
            &params(&[
                ("Server", "nfs"),
                ("subDir", "${pvc.metadata.namespace}/${pvc.metadata.name}-${pv.metadata.name}"),
                ("csi.storage.k8s.io/pvc/name", "data"),
                ("csi.storage.k8s.io/pvc/namespace", "ns1"),
                ("csi.storage.k8s.io/pv/name", "pvc-9"),
                ("csi.storage.k8s.io/provisioner-secret-name", "x"),
                ("onDelete", "Archive"),
                ("mountPermissions", "0750"),
                ("uid", "1000"),
                ("gid", "2000"),
            ]),
            "nfsvers=4.1",
        )
        .unwrap();
        assert_eq!(p.id.to_string(), "nfs##ns1/data-pvc-9#pvc-9#archive");
        assert_eq!((p.mount_permissions, p.uid, p.gid), (Some(0o750), Some(1000), Some(2000)));
        assert_eq!(p.mount_options, "nfsvers=4.1", "the driver default when the request has none");
        assert_eq!(p.id.name(), "pvc-9");
        assert_eq!(p.id.archived_subdir(), "archived-ns1/data-pvc-9");
    }

    #[test]
    fn bad_parameters_are_invalid_argument() {
        for kv in [
            vec![("share", "/e")],
            vec![("server", "s"), ("colour", "blue")],
            vec![("server", "s"), ("subDir", "${pvc.metadata.name}")],
            vec![("server", "s"), ("subDir", "a/../b")],
            vec![("server", "s"), ("subDir", ".csi-nfs/x")],
            vec![("server", "s"), ("mountPermissions", "0x777")],
            vec![("server", "s"), ("mountPermissions", "99999")],
            vec![("server", "s"), ("uid", "-1")],
            vec![("server", "s"), ("onDelete", "shred")],
            vec![("server", "s"), ("mountOptions", "nfsvers=2")],
            vec![("server", "s"), ("mountOptions", "port=http")],
            vec![("server", "a#b")],
        ] {
            let r = CreateParams::parse("n", &params(&kv), "");
            assert!(matches!(r, Err(Error::InvalidArgument(_))), "{kv:?}: {r:?}");
        }
    }

    #[test]
    fn mount_options_give_the_controller_its_port_and_version() {
        assert_eq!(MountOptions::parse("").unwrap(), MountOptions { port: None, version: 4, minor: None });
        assert_eq!(
            MountOptions::parse("hard, nfsvers=3,port=20490,timeo=600").unwrap(),
            MountOptions { port: Some(20490), version: 3, minor: None }
        );
        assert_eq!(MountOptions::parse("vers=4.2").unwrap().version, 4);
        assert_eq!(MountOptions::parse("vers=4.2").unwrap().minor, Some(2));
        assert_eq!(MountOptions::parse("nfsvers=4").unwrap().minor, None);
        assert!(MountOptions::parse("nfsvers=4.x").is_err());
    }

    #[test]
    fn snapshot_ids_round_trip_and_tell_csi_driver_nfs_tarballs_apart() {
        let id = SnapshotId {
            server: "s".into(),
            share: "export".into(),
            name: "snap-1".into(),
            path: SnapshotId::path_for("snap-1"),
            src: "pvc-1".into(),
        };
        let text = id.to_string();
        assert_eq!(text, "s#export#snap-1#.csi-nfs/snapshots/snap-1#pvc-1");
        assert_eq!(SnapshotId::parse(&text).unwrap(), id);
        assert!(id.is_ours());
        assert!(!SnapshotId::parse("s#export#snap-1#snap-1#pvc-1").unwrap().is_ours());
        for bad in ["", "a#b#c#d", "s#e#n#../x#v"] {
            assert!(matches!(SnapshotId::parse(bad), Err(Error::NotFound(_))), "{bad}");
        }
        assert_eq!(escape("a/b%c"), "a%2Fb%25c");
        assert_eq!(escape(".."), "%2E.");
    }

    #[test]
    fn garbage_is_not_found() {
        for id in ["", "nohash", "a#b", "#share#sub", "s#share#", "s#h#d#u#explode", "a#b#c#d#e#f"] {
            assert!(matches!(VolumeId::parse(id), Err(Error::NotFound(_))), "{id}");
        }
    }
}
