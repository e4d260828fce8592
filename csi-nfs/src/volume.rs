//! Volume IDs and CreateVolume parameters, without I/O.
//!
//! The volume ID is csi-driver-nfs's: `server#share#subdir#uuid#onDelete`
//! (`#` cannot appear in a host name, and `share`/`subdir` are stored
//! without leading or trailing `/`). `uuid` is the PV name when the
//! subdirectory came from a `subDir` parameter (so two volumes whose
//! templates expand alike stay distinct), and empty otherwise; `onDelete`
//! is empty when the default applies. The legacy form
//! `server/share/subdir` is still accepted.

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

    #[test]
    fn garbage_is_not_found() {
        for id in ["", "nohash", "a#b", "#share#sub", "s#share#", "s#h#d#u#explode", "a#b#c#d#e#f"] {
            assert!(matches!(VolumeId::parse(id), Err(Error::NotFound(_))), "{id}");
        }
    }
}
