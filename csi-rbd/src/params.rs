//! CreateVolume and CreateSnapshot parameters, parsed and checked without
//! I/O, spelled as ceph-csi's `rbd.csi.ceph.com` StorageClasses spell them
//! (keys are case-sensitive, as in ceph-csi).
//!
//! An unknown key is INVALID_ARGUMENT naming it, so a typo in a
//! StorageClass fails the first PVC instead of being silently ignored. The
//! CO's own keys (`csi.storage.k8s.io/*`: the PVC/PV names, the secret
//! references ceph-csi StorageClasses carry) are accepted and ignored, except
//! `csi.storage.k8s.io/fstype`, which is ours.

use std::collections::{BTreeMap, HashMap};

use csi_core::Error;

/// The CO's key prefix: accepted, ignored unless listed in [`PARAMETERS`].
pub const CO_PREFIX: &str = "csi.storage.k8s.io/";

/// The StorageClass parameters CreateVolume accepts (case-sensitive).
/// Anything else is INVALID_ARGUMENT, except other `csi.storage.k8s.io/*`
/// keys. The controller docs list exactly these.
pub const PARAMETERS: &[&str] = &[
    "clusterID",
    "pool",
    "dataPool",
    "imageFeatures",
    "mapOptions",
    "unmapOptions",
    "mounter",
    "csi.storage.k8s.io/fstype",
    "volumeNamePrefix",
    "snapshotNamePrefix",
];

/// The VolumeSnapshotClass parameters CreateSnapshot accepts (the snapshot
/// lives in its source volume's pool and cluster; `clusterID` must name
/// the source volume's cluster).
pub const SNAPSHOT_PARAMETERS: &[&str] = &["clusterID", "snapshotNamePrefix"];

/// ceph-csi parameters this driver does not implement: named in the error
/// so that a migrated StorageClass says what to remove.
const CEPH_CSI_UNSUPPORTED: &[&str] = &[
    "encrypted",
    "encryptionKMSID",
    "encryptionType",
    "thickProvision",
    "tryOtherMounters",
    "mkfsOptions",
    "journalPool",
    "radosNamespace",
    "stripeUnit",
    "stripeCount",
    "objectSize",
    "topologyConstrainedPools",
    "cephLogDir",
    "cephLogStrategy",
];

/// Default `imageFeatures` (ceph-csi's recommended set; krbd maps all of
/// them since Linux 5.3).
pub const DEFAULT_FEATURES: &str = "layering,exclusive-lock,object-map,fast-diff,deep-flatten";

/// The krbd option added to `mapOptions` when it sets no `ms_mode`: the
/// kernel client cannot talk to a msgr2-only monitor (port 3300) without it,
/// and `prefer-crc` still works with a v1 monitor.
pub const DEFAULT_MS_MODE: &str = "ms_mode=prefer-crc";

/// Default `volumeNamePrefix`.
pub const DEFAULT_VOLUME_PREFIX: &str = "csi-vol-";
/// Default `snapshotNamePrefix`.
pub const DEFAULT_SNAPSHOT_PREFIX: &str = "csi-snap-";
/// Default `csi.storage.k8s.io/fstype`.
pub const DEFAULT_FSTYPE: &str = "ext4";

/// A feature `imageFeatures` may name, what it needs, and whether krbd maps it.
struct Feature {
    name: &'static str,
    needs: Option<&'static str>,
    krbd: bool,
}

/// The features ceph-csi accepts, in the order they are written back.
const FEATURES: &[Feature] = &[
    Feature { name: "layering", needs: None, krbd: true },
    Feature { name: "exclusive-lock", needs: None, krbd: true },
    Feature { name: "object-map", needs: Some("exclusive-lock"), krbd: true },
    Feature { name: "fast-diff", needs: Some("object-map"), krbd: true },
    Feature { name: "deep-flatten", needs: None, krbd: true },
    // The kernel client cannot map a journaled image: rbd-nbd only.
    Feature { name: "journaling", needs: Some("exclusive-lock"), krbd: false },
];

/// How the node maps the image (`mounter`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Mounter {
    /// The kernel RBD client (the default).
    #[default]
    Krbd,
    /// rbd-nbd: librbd in userspace behind an NBD device.
    RbdNbd,
}

impl Mounter {
    /// The value in the parameter and in `volume_context`.
    pub fn as_str(self) -> &'static str {
        match self {
            Mounter::Krbd => "krbd",
            Mounter::RbdNbd => "rbd-nbd",
        }
    }

    fn parse(v: &str) -> Result<Mounter, Error> {
        match v {
            "" | "krbd" | "rbd" => Ok(Mounter::Krbd),
            "rbd-nbd" | "nbd" => Ok(Mounter::RbdNbd),
            _ => Err(Error::InvalidArgument(format!("mounter {v:?}: expected krbd or rbd-nbd"))),
        }
    }
}

/// CreateVolume's parameters, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CreateParams {
    /// `clusterID`: a key of the cluster config.
    pub cluster_id: String,
    /// `pool`: where the image and its journal entries live.
    pub pool: String,
    /// `dataPool`: an erasure-coded pool for the image's data, if any.
    pub data_pool: Option<String>,
    /// `imageFeatures`, checked and in canonical order.
    pub features: Vec<String>,
    /// `mapOptions` for the chosen mounter, with `ms_mode` added for krbd.
    pub map_options: String,
    /// `unmapOptions` for the chosen mounter.
    pub unmap_options: String,
    /// `mounter`.
    pub mounter: Mounter,
    /// `csi.storage.k8s.io/fstype`: `ext4` or `xfs`.
    pub fs_type: String,
    /// `volumeNamePrefix`.
    pub volume_prefix: String,
    /// `snapshotNamePrefix`.
    pub snapshot_prefix: String,
}

/// CreateSnapshot's parameters, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotParams {
    /// `clusterID`, if given (must be the source volume's).
    pub cluster_id: Option<String>,
    /// `snapshotNamePrefix`.
    pub snapshot_prefix: String,
}

fn unknown_key(k: &str) -> Error {
    if CEPH_CSI_UNSUPPORTED.contains(&k) {
        Error::InvalidArgument(format!("parameter {k:?} (a ceph-csi parameter) is not supported by csi-rbd"))
    } else {
        Error::InvalidArgument(format!("invalid parameter {k:?}"))
    }
}

/// Rejects every key that is neither in `allowed` nor a CO key; the error
/// names all of them, sorted.
fn check_keys(params: &HashMap<String, String>, allowed: &[&str]) -> Result<(), Error> {
    let mut bad: Vec<&str> =
        params.keys().map(String::as_str).filter(|k| !allowed.contains(k) && !k.starts_with(CO_PREFIX)).collect();
    bad.sort_unstable();
    match bad.as_slice() {
        [] => Ok(()),
        [one] => Err(unknown_key(one)),
        many => Err(Error::InvalidArgument(format!("invalid parameters {many:?}"))),
    }
}

impl CreateParams {
    /// Parses CreateVolume's `parameters`.
    pub fn parse(params: &HashMap<String, String>) -> Result<CreateParams, Error> {
        check_keys(params, PARAMETERS)?;
        let get = |k: &str| params.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        let bad = |m: String| Error::InvalidArgument(m);
        let cluster_id = get("clusterID").ok_or_else(|| bad("parameter clusterID is required".into()))?;
        if cluster_id.len() > crate::config::MAX_CLUSTER_ID_LEN {
            return Err(bad(format!(
                "clusterID {cluster_id:?} is longer than {} characters",
                crate::config::MAX_CLUSTER_ID_LEN
            )));
        }
        let pool = get("pool").ok_or_else(|| bad("parameter pool is required".into()))?;
        check_pool_name("pool", pool)?;
        let data_pool = get("dataPool").map(str::to_string);
        if let Some(d) = &data_pool {
            check_pool_name("dataPool", d)?;
        }
        let mounter = Mounter::parse(get("mounter").unwrap_or(""))?;
        let features = parse_features(get("imageFeatures").unwrap_or(DEFAULT_FEATURES), mounter)?;
        let map_options = map_options(get("mapOptions").unwrap_or(""), mounter, true)?;
        let unmap_options = map_options_for(get("unmapOptions").unwrap_or(""), mounter, "unmapOptions")?;
        let fs_type = match get("csi.storage.k8s.io/fstype").unwrap_or(DEFAULT_FSTYPE) {
            t @ ("ext4" | "xfs") => t.to_string(),
            t => return Err(bad(format!("csi.storage.k8s.io/fstype {t:?}: expected ext4 or xfs"))),
        };
        let volume_prefix = prefix("volumeNamePrefix", get("volumeNamePrefix").unwrap_or(DEFAULT_VOLUME_PREFIX))?;
        let snapshot_prefix =
            prefix("snapshotNamePrefix", get("snapshotNamePrefix").unwrap_or(DEFAULT_SNAPSHOT_PREFIX))?;
        Ok(CreateParams {
            cluster_id: cluster_id.to_string(),
            pool: pool.to_string(),
            data_pool,
            features,
            map_options,
            unmap_options,
            mounter,
            fs_type,
            volume_prefix,
            snapshot_prefix,
        })
    }

    /// What the node needs to stage the volume (contract §2).
    pub fn volume_context(&self, image: &str) -> HashMap<String, String> {
        let mut c = HashMap::from([
            ("clusterID".to_string(), self.cluster_id.clone()),
            ("pool".to_string(), self.pool.clone()),
            ("imageName".to_string(), image.to_string()),
            ("imageFeatures".to_string(), self.features.join(",")),
            ("mapOptions".to_string(), self.map_options.clone()),
            ("unmapOptions".to_string(), self.unmap_options.clone()),
            ("mounter".to_string(), self.mounter.as_str().to_string()),
        ]);
        if let Some(d) = &self.data_pool {
            c.insert("dataPool".to_string(), d.clone());
        }
        c
    }
}

impl SnapshotParams {
    /// Parses CreateSnapshot's `parameters`.
    pub fn parse(params: &HashMap<String, String>) -> Result<SnapshotParams, Error> {
        check_keys(params, SNAPSHOT_PARAMETERS)?;
        let get = |k: &str| params.get(k).map(|v| v.trim()).filter(|v| !v.is_empty());
        Ok(SnapshotParams {
            cluster_id: get("clusterID").map(str::to_string),
            snapshot_prefix: prefix(
                "snapshotNamePrefix",
                get("snapshotNamePrefix").unwrap_or(DEFAULT_SNAPSHOT_PREFIX),
            )?,
        })
    }
}

fn check_pool_name(what: &str, p: &str) -> Result<(), Error> {
    if p.len() > 255 || p.chars().any(|c| c.is_control() || c == '/' || c == '@') {
        return Err(Error::InvalidArgument(format!("{what} {p:?}: not a pool name")));
    }
    Ok(())
}

/// Image name prefixes: the image is `<prefix><uuid>`, so only characters
/// that are safe in an RBD image name and in a log line.
fn prefix(what: &str, p: &str) -> Result<String, Error> {
    if p.is_empty() || p.len() > 64 || !p.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
        return Err(Error::InvalidArgument(format!(
            "{what} {p:?}: 1 to 64 characters among letters, digits, '-', '_' and '.'"
        )));
    }
    Ok(p.to_string())
}

/// Checks `imageFeatures` (a comma-separated list) by ceph-csi's rules: every
/// name known, each feature's dependency present, `journaling` only with
/// rbd-nbd. Returns the set in canonical order, without repeats.
pub fn parse_features(list: &str, mounter: Mounter) -> Result<Vec<String>, Error> {
    let names: Vec<&str> = list.split(',').map(str::trim).filter(|s| !s.is_empty()).collect();
    let mut unknown: Vec<&str> = names.iter().copied().filter(|n| !FEATURES.iter().any(|f| f.name == *n)).collect();
    unknown.dedup();
    if !unknown.is_empty() {
        let known: Vec<&str> = FEATURES.iter().map(|f| f.name).collect();
        return Err(Error::InvalidArgument(format!(
            "imageFeatures: unknown feature(s) {unknown:?}; known: {}",
            known.join(", ")
        )));
    }
    for f in FEATURES.iter().filter(|f| names.contains(&f.name)) {
        if let Some(need) = f.needs {
            if !names.contains(&need) {
                return Err(Error::InvalidArgument(format!("imageFeatures: {} needs {need}", f.name)));
            }
        }
        if !f.krbd && mounter == Mounter::Krbd {
            return Err(Error::InvalidArgument(format!(
                "imageFeatures: the kernel RBD client cannot map an image with {}; use mounter rbd-nbd",
                f.name
            )));
        }
    }
    Ok(FEATURES.iter().filter(|f| names.contains(&f.name)).map(|f| f.name.to_string()).collect())
}

/// Splits ceph-csi's option syntax: either a plain list (for the mounter in
/// use) or `krbd:a,b;nbd:c` with a list per mounter. Returns the list for
/// `mounter`.
fn map_options_for(v: &str, mounter: Mounter, what: &str) -> Result<String, Error> {
    if !v.contains(':') || !v.split(';').all(|part| part.trim().split_once(':').is_some()) {
        // ms_mode=... has no ':'; a plain list.
        if v.contains(';') {
            return Err(Error::InvalidArgument(format!(
                "{what} {v:?}: expected a comma-separated list or krbd:...;nbd:..."
            )));
        }
        return Ok(clean_list(v));
    }
    let mut per: BTreeMap<&str, String> = BTreeMap::new();
    for part in v.split(';').map(str::trim).filter(|p| !p.is_empty()) {
        let (m, opts) = part.split_once(':').unwrap_or(("", part));
        let m = match m.trim() {
            "krbd" => "krbd",
            "nbd" | "rbd-nbd" => "nbd",
            other => {
                return Err(Error::InvalidArgument(format!(
                    "{what} {v:?}: unknown mounter {other:?} (expected krbd: or nbd:)"
                )))
            }
        };
        per.insert(m, clean_list(opts));
    }
    let key = if mounter == Mounter::Krbd { "krbd" } else { "nbd" };
    Ok(per.remove(key).unwrap_or_default())
}

fn clean_list(v: &str) -> String {
    v.split(',').map(str::trim).filter(|s| !s.is_empty()).collect::<Vec<_>>().join(",")
}

/// `mapOptions` for `mounter`; for krbd, `ms_mode=prefer-crc` is added when
/// the list sets no `ms_mode` (`add_ms_mode`).
pub fn map_options(v: &str, mounter: Mounter, add_ms_mode: bool) -> Result<String, Error> {
    let mut opts = map_options_for(v, mounter, "mapOptions")?;
    for o in opts.split(',').filter(|o| !o.is_empty()) {
        if o.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Error::InvalidArgument(format!("mapOptions: option {o:?} contains a blank")));
        }
        // The key goes to the kernel through the node's secret handling,
        // never through an option a user could read back.
        if o.starts_with("secret=") || o.starts_with("key=") || o.starts_with("name=") {
            return Err(Error::InvalidArgument(format!(
                "mapOptions: {:?} is set by the driver from the secrets",
                o.split('=').next().unwrap_or(o)
            )));
        }
    }
    if mounter == Mounter::Krbd && add_ms_mode && !opts.split(',').any(|o| o.starts_with("ms_mode=")) {
        opts = if opts.is_empty() { DEFAULT_MS_MODE.to_string() } else { format!("{opts},{DEFAULT_MS_MODE}") };
    }
    Ok(opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kv(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    fn base() -> HashMap<String, String> {
        kv(&[("clusterID", "rook-ceph"), ("pool", "replicapool")])
    }

    fn with(extra: &[(&str, &str)]) -> HashMap<String, String> {
        let mut p = base();
        p.extend(kv(extra));
        p
    }

    fn err(p: &HashMap<String, String>) -> String {
        match CreateParams::parse(p) {
            Err(Error::InvalidArgument(m)) => m,
            other => panic!("{p:?}: expected INVALID_ARGUMENT, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_ceph_csi_s_with_ms_mode_for_the_kernel_client() {
        let p = CreateParams::parse(&base()).unwrap();
        assert_eq!(p.cluster_id, "rook-ceph");
        assert_eq!(p.pool, "replicapool");
        assert_eq!(p.data_pool, None);
        assert_eq!(p.features.join(","), DEFAULT_FEATURES);
        assert_eq!(p.map_options, "ms_mode=prefer-crc");
        assert_eq!(p.unmap_options, "");
        assert_eq!(p.mounter, Mounter::Krbd);
        assert_eq!(p.fs_type, "ext4");
        assert_eq!(p.volume_prefix, "csi-vol-");
        assert_eq!(p.snapshot_prefix, "csi-snap-");
        let c = p.volume_context("csi-vol-x");
        assert_eq!(c["imageName"], "csi-vol-x");
        assert_eq!(c["mapOptions"], "ms_mode=prefer-crc");
        assert_eq!(c["mounter"], "krbd");
        assert_eq!(c["clusterID"], "rook-ceph");
        assert_eq!(c["pool"], "replicapool");
        assert_eq!(c["imageFeatures"], DEFAULT_FEATURES);
        assert!(!c.contains_key("dataPool"));
    }

    #[test]
    fn cluster_id_and_pool_are_required() {
        assert!(err(&kv(&[("pool", "p")])).contains("clusterID is required"));
        assert!(err(&kv(&[("clusterID", "c")])).contains("pool is required"));
        assert!(err(&kv(&[("clusterID", "c"), ("pool", " ")])).contains("pool is required"));
        assert!(err(&with(&[("clusterID", &"x".repeat(37))])).contains("longer than 36"));
        assert!(err(&with(&[("pool", "a/b")])).contains("not a pool name"));
    }

    #[test]
    fn unknown_keys_are_rejected_by_name_and_co_keys_ignored() {
        let m = err(&with(&[("pol", "x")]));
        assert!(m.contains("\"pol\""), "{m}");
        let m = err(&with(&[("zz", "1"), ("aa", "2")]));
        assert!(m.contains(r#"["aa", "zz"]"#), "{m}");
        let m = err(&with(&[("encrypted", "true")]));
        assert!(m.contains("ceph-csi parameter") && m.contains("encrypted"), "{m}");
        // Case matters, as in ceph-csi.
        assert!(err(&with(&[("ClusterId", "c")])).contains("ClusterId"));
        // A ceph-csi StorageClass's secret references and the CO's metadata.
        let p = CreateParams::parse(&with(&[
            ("csi.storage.k8s.io/provisioner-secret-name", "csi-rbd-secret"),
            ("csi.storage.k8s.io/provisioner-secret-namespace", "ceph"),
            ("csi.storage.k8s.io/node-stage-secret-name", "csi-rbd-secret"),
            ("csi.storage.k8s.io/controller-expand-secret-name", "csi-rbd-secret"),
            ("csi.storage.k8s.io/pvc/name", "data"),
        ]))
        .unwrap();
        assert_eq!(p.pool, "replicapool");
    }

    #[test]
    fn every_listed_parameter_is_accepted() {
        let value = |k: &str| match k {
            "clusterID" => "c",
            "pool" => "p",
            "dataPool" => "ec-data",
            "imageFeatures" => "layering",
            "mapOptions" => "lock_on_read",
            "unmapOptions" => "force",
            "mounter" => "rbd-nbd",
            "csi.storage.k8s.io/fstype" => "xfs",
            "volumeNamePrefix" => "k8s-",
            "snapshotNamePrefix" => "k8s-snap-",
            other => panic!("PARAMETERS has {other:?}: give it a valid value here"),
        };
        for k in PARAMETERS {
            let p = with(&[(k, value(k))]);
            CreateParams::parse(&p).unwrap_or_else(|e| panic!("{k}: {e}"));
        }
        let all: HashMap<String, String> = PARAMETERS.iter().map(|k| (k.to_string(), value(k).to_string())).collect();
        let p = CreateParams::parse(&all).unwrap();
        assert_eq!(p.data_pool.as_deref(), Some("ec-data"));
        assert_eq!(p.fs_type, "xfs");
        assert_eq!(p.mounter, Mounter::RbdNbd);
        assert_eq!(p.volume_prefix, "k8s-");
        assert_eq!(p.volume_context("k8s-1")["dataPool"], "ec-data");
        // rbd-nbd talks msgr2 through librbd: no kernel ms_mode added.
        assert_eq!(p.map_options, "lock_on_read");
    }

    #[test]
    fn image_features_follow_ceph_csi_s_rules() {
        let f = |s: &str, m| parse_features(s, m);
        assert_eq!(f("layering", Mounter::Krbd).unwrap(), ["layering"]);
        assert_eq!(
            f(" deep-flatten, layering ,layering", Mounter::Krbd).unwrap(),
            ["layering", "deep-flatten"],
            "canonical order, no repeats"
        );
        let e = f("layering,exclusive-lock,object-map,fast-diff", Mounter::Krbd).unwrap();
        assert_eq!(e.len(), 4);
        let msg = |r: Result<Vec<String>, Error>| r.unwrap_err().to_string();
        assert!(msg(f("layering,object-map", Mounter::Krbd)).contains("object-map needs exclusive-lock"));
        assert!(msg(f("exclusive-lock,fast-diff", Mounter::Krbd)).contains("fast-diff needs object-map"));
        assert!(msg(f("layering,striping", Mounter::Krbd)).contains("unknown feature(s) [\"striping\"]"));
        assert!(msg(f("exclusive-lock,journaling", Mounter::Krbd)).contains("rbd-nbd"));
        assert_eq!(f("exclusive-lock,journaling", Mounter::RbdNbd).unwrap(), ["exclusive-lock", "journaling"]);
        assert!(msg(f("journaling", Mounter::RbdNbd)).contains("journaling needs exclusive-lock"));
        // Through CreateParams, with the mounter of the same request.
        assert!(err(&with(&[("imageFeatures", "object-map")])).contains("needs exclusive-lock"));
        let p = CreateParams::parse(&with(&[("imageFeatures", "exclusive-lock,journaling"), ("mounter", "rbd-nbd")]))
            .unwrap();
        assert_eq!(p.features, ["exclusive-lock", "journaling"]);
        // Empty: the default set.
        assert_eq!(CreateParams::parse(&with(&[("imageFeatures", "")])).unwrap().features.join(","), DEFAULT_FEATURES);
    }

    #[test]
    fn map_options_always_let_the_kernel_reach_a_msgr2_monitor() {
        let m = |v: &str| CreateParams::parse(&with(&[("mapOptions", v)])).map(|p| p.map_options);
        assert_eq!(m("").unwrap(), "ms_mode=prefer-crc");
        assert_eq!(m("lock_on_read,queue_depth=1024").unwrap(), "lock_on_read,queue_depth=1024,ms_mode=prefer-crc");
        assert_eq!(m("ms_mode=secure").unwrap(), "ms_mode=secure", "the user's ms_mode wins");
        assert_eq!(m("ms_mode=legacy , noshare").unwrap(), "ms_mode=legacy,noshare");
        // ceph-csi's per-mounter form.
        assert_eq!(m("krbd:lock_on_read;nbd:try-netlink").unwrap(), "lock_on_read,ms_mode=prefer-crc");
        assert_eq!(m("nbd:try-netlink").unwrap(), "ms_mode=prefer-crc");
        let p =
            CreateParams::parse(&with(&[("mapOptions", "krbd:lock_on_read;nbd:try-netlink"), ("mounter", "rbd-nbd")]))
                .unwrap();
        assert_eq!(p.map_options, "try-netlink");
        assert!(m("xyz:a").unwrap_err().to_string().contains("unknown mounter"));
        assert!(m("a;b").unwrap_err().to_string().contains("krbd:...;nbd:..."));
        assert!(m("secret=AQD").unwrap_err().to_string().contains("from the secrets"));
        let u = |v: &str| CreateParams::parse(&with(&[("unmapOptions", v)])).map(|p| p.unmap_options);
        assert_eq!(u("force").unwrap(), "force");
        assert_eq!(u("krbd:force;nbd:").unwrap(), "force");
    }

    #[test]
    fn mounter_fstype_and_prefixes_are_checked() {
        assert!(err(&with(&[("mounter", "fuse")])).contains("expected krbd or rbd-nbd"));
        assert_eq!(CreateParams::parse(&with(&[("mounter", "krbd")])).unwrap().mounter, Mounter::Krbd);
        assert!(err(&with(&[("csi.storage.k8s.io/fstype", "btrfs")])).contains("expected ext4 or xfs"));
        assert!(err(&with(&[("volumeNamePrefix", "a/b")])).contains("volumeNamePrefix"));
        assert!(err(&with(&[("snapshotNamePrefix", &"x".repeat(65))])).contains("1 to 64"));
    }

    #[test]
    fn snapshot_parameters() {
        let s = SnapshotParams::parse(&kv(&[("clusterID", "c"), ("csi.storage.k8s.io/snapshotter-secret-name", "s")]))
            .unwrap();
        assert_eq!(s, SnapshotParams { cluster_id: Some("c".into()), snapshot_prefix: "csi-snap-".into() });
        assert_eq!(SnapshotParams::parse(&kv(&[("snapshotNamePrefix", "x-")])).unwrap().snapshot_prefix, "x-");
        let e = SnapshotParams::parse(&kv(&[("pool", "p")])).unwrap_err().to_string();
        assert!(e.contains("\"pool\""), "{e}");
    }
}
