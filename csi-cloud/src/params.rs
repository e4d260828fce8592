//! CreateVolume's and ControllerModifyVolume's parameters, parsed without
//! I/O. Keys are case-insensitive, as aws-ebs-csi-driver's; an unknown key
//! is INVALID_ARGUMENT rather than silently ignored.

use std::collections::HashMap;

use csi_core::Error;

/// Volume types EBS offers (`standard` is the previous-generation magnetic).
pub const VOLUME_TYPES: &[&str] = &["gp3", "gp2", "io1", "io2", "st1", "sc1", "standard"];

/// The type used when a StorageClass names none.
pub const DEFAULT_TYPE: &str = "gp3";

/// Largest size per type, GiB (io2 Block Express: 64 TiB; the rest 16 TiB;
/// `standard`: 1 TiB).
pub fn max_gib(volume_type: &str) -> u64 {
    match volume_type {
        "io2" => 65_536,
        "standard" => 1_024,
        _ => 16_384,
    }
}

/// Smallest size per type, GiB (st1/sc1: 125; io1/io2: 4).
pub fn min_gib(volume_type: &str) -> u64 {
    match volume_type {
        "st1" | "sc1" => 125,
        "io1" | "io2" => 4,
        _ => 1,
    }
}

/// Most IOPS per type, and per GiB (io1 50, io2 1000, gp3 500).
fn iops_limits(volume_type: &str) -> Option<(i64, i64)> {
    match volume_type {
        "io1" => Some((64_000, 50)),
        "io2" => Some((256_000, 1_000)),
        "gp3" => Some((80_000, 500)),
        _ => None,
    }
}

/// Keys the external-provisioner adds with `--extra-create-metadata`.
pub const PVC_NAME: &str = "csi.storage.k8s.io/pvc/name";
/// See [`PVC_NAME`].
pub const PVC_NAMESPACE: &str = "csi.storage.k8s.io/pvc/namespace";
/// See [`PVC_NAME`].
pub const PV_NAME: &str = "csi.storage.k8s.io/pv/name";

/// A StorageClass's parameters for a new volume.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CreateParams {
    /// `type`: one of [`VOLUME_TYPES`], default [`DEFAULT_TYPE`].
    pub volume_type: String,
    /// `iops`: provisioned IOPS (gp3, io1, io2).
    pub iops: Option<i64>,
    /// `iopsPerGB`: IOPS per GiB of the size (io1, io2, gp3); wins over nothing, loses to `iops`.
    pub iops_per_gb: Option<i64>,
    /// `allowAutoIOPSPerGBIncrease`: raise IOPS to the type's minimum when
    /// `iopsPerGB` × size is below it.
    pub allow_iops_increase: bool,
    /// `throughput`: MiB/s (gp3).
    pub throughput: Option<i32>,
    /// `encrypted`.
    pub encrypted: bool,
    /// `kmsKeyId`: the key (ARN) to encrypt with; implies nothing without `encrypted`.
    pub kms_key_id: Option<String>,
    /// `tagSpecification_N: "key=value"`, in N order, values templated.
    pub tags: Vec<(String, String)>,
    /// The PVC and PV the volume is for, when the provisioner passes them.
    pub pvc_name: Option<String>,
    /// See `pvc_name`.
    pub pvc_namespace: Option<String>,
    /// See `pvc_name`.
    pub pv_name: Option<String>,
}

fn bad(key: &str, value: &str, why: &str) -> Error {
    Error::InvalidArgument(format!("parameter {key}={value:?}: {why}"))
}

fn parse_num<T: std::str::FromStr + PartialOrd + Default>(key: &str, v: &str) -> Result<T, Error> {
    match v.trim().parse::<T>() {
        Ok(n) if n > T::default() => Ok(n),
        _ => Err(bad(key, v, "expected a positive whole number")),
    }
}

fn parse_bool(key: &str, v: &str) -> Result<bool, Error> {
    match v.trim().to_ascii_lowercase().as_str() {
        "true" => Ok(true),
        "false" => Ok(false),
        _ => Err(bad(key, v, "expected true or false")),
    }
}

fn parse_type(key: &str, v: &str) -> Result<String, Error> {
    let t = v.trim().to_ascii_lowercase();
    if VOLUME_TYPES.contains(&t.as_str()) {
        Ok(t)
    } else {
        Err(bad(key, v, &format!("expected one of {}", VOLUME_TYPES.join(", "))))
    }
}

impl CreateParams {
    /// Parses CreateVolume's `parameters`.
    pub fn parse(params: &HashMap<String, String>) -> Result<CreateParams, Error> {
        let mut p = CreateParams { volume_type: DEFAULT_TYPE.to_string(), ..Default::default() };
        let mut tag_specs: Vec<(u32, String, String)> = Vec::new();
        for (key, value) in params {
            let lower = key.to_ascii_lowercase();
            match lower.as_str() {
                "type" => p.volume_type = parse_type(key, value)?,
                "iops" => p.iops = Some(parse_num(key, value)?),
                "iopspergb" => p.iops_per_gb = Some(parse_num(key, value)?),
                "allowautoiopspergbincrease" => p.allow_iops_increase = parse_bool(key, value)?,
                "throughput" => p.throughput = Some(parse_num(key, value)?),
                "encrypted" => p.encrypted = parse_bool(key, value)?,
                "kmskeyid" => p.kms_key_id = Some(value.trim().to_string()).filter(|k| !k.is_empty()),
                PVC_NAME => p.pvc_name = Some(value.clone()),
                PVC_NAMESPACE => p.pvc_namespace = Some(value.clone()),
                PV_NAME => p.pv_name = Some(value.clone()),
                // The node's business (the capability carries it too).
                "csi.storage.k8s.io/fstype" | "fstype" => {}
                k if k.starts_with("tagspecification_") => {
                    let n = k["tagspecification_".len()..]
                        .parse::<u32>()
                        .map_err(|_| bad(key, value, "expected tagSpecification_<number>"))?;
                    let (k, v) = value.split_once('=').ok_or_else(|| bad(key, value, "expected key=value"))?;
                    if k.trim().is_empty() {
                        return Err(bad(key, value, "the tag key is empty"));
                    }
                    tag_specs.push((n, k.trim().to_string(), v.trim().to_string()));
                }
                // Other keys the provisioner adds for everyone.
                k if k.starts_with("csi.storage.k8s.io/") => {}
                _ => return Err(bad(key, value, "unknown parameter (docs/csi-cloud.md, \"CreateVolume parameters\")")),
            }
        }
        tag_specs.sort();
        for (_, k, v) in tag_specs {
            let v = p.template(&v);
            p.tags.push((k, v));
        }
        if p.throughput.is_some() && p.volume_type != "gp3" {
            return Err(Error::InvalidArgument(format!(
                "parameter throughput: only gp3 takes it, not {}",
                p.volume_type
            )));
        }
        if (p.iops.is_some() || p.iops_per_gb.is_some()) && iops_limits(&p.volume_type).is_none() {
            return Err(Error::InvalidArgument(format!(
                "parameters iops/iopsPerGB: {} volumes have no provisioned IOPS",
                p.volume_type
            )));
        }
        if p.kms_key_id.is_some() && !p.encrypted {
            return Err(Error::InvalidArgument("parameter kmsKeyId needs encrypted=true".into()));
        }
        Ok(p)
    }

    /// CreateVolume's `parameters` with its `mutable_parameters` (a
    /// VolumeAttributesClass's) over them: the CSI spec gives those
    /// precedence, and only what ControllerModifyVolume takes (type, iops,
    /// throughput) is allowed there; anything else is INVALID_ARGUMENT.
    pub fn parse_with_mutable(
        params: &HashMap<String, String>,
        mutable: &HashMap<String, String>,
    ) -> Result<CreateParams, Error> {
        if mutable.is_empty() {
            return CreateParams::parse(params);
        }
        ModifyParams::parse(mutable)?;
        let mut merged: HashMap<String, String> = params
            .iter()
            .filter(|(k, _)| !mutable.keys().any(|m| m.eq_ignore_ascii_case(k)))
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        merged.extend(mutable.iter().map(|(k, v)| (k.clone(), v.clone())));
        CreateParams::parse(&merged)
    }

    /// `{{ .PVCName }}`, `{{ .PVCNamespace }}` and `{{ .PVName }}` in a tag
    /// value, as aws-ebs-csi-driver's templates (empty when unknown).
    fn template(&self, v: &str) -> String {
        let mut out = v.to_string();
        for (names, value) in [
            (["{{ .PVCName }}", "{{.PVCName}}"], &self.pvc_name),
            (["{{ .PVCNamespace }}", "{{.PVCNamespace}}"], &self.pvc_namespace),
            (["{{ .PVName }}", "{{.PVName}}"], &self.pv_name),
        ] {
            for n in names {
                out = out.replace(n, value.as_deref().unwrap_or(""));
            }
        }
        out
    }

    /// The IOPS to ask for a volume of `gib`: `iops`, else `iopsPerGB` × size
    /// (capped at the type's maximum; raised to its minimum only with
    /// `allowAutoIOPSPerGBIncrease`), else none (EBS's default).
    pub fn iops_for(&self, gib: u64) -> Result<Option<i64>, Error> {
        let Some((max, per_gib)) = iops_limits(&self.volume_type) else { return Ok(None) };
        let iops = match (self.iops, self.iops_per_gb) {
            (Some(i), _) => i,
            (None, Some(per)) => {
                let min = if self.volume_type == "gp3" { 3_000 } else { 100 };
                let want = per.saturating_mul(gib as i64).min(max);
                if want < min {
                    if !self.allow_iops_increase {
                        return Err(Error::InvalidArgument(format!(
                            "iopsPerGB {per} × {gib} GiB = {want} IOPS is below {}'s minimum {min} \
                             (allowAutoIOPSPerGBIncrease=true raises it)",
                            self.volume_type
                        )));
                    }
                    min
                } else {
                    want
                }
            }
            (None, None) => return Ok(None),
        };
        // gp3's baseline 3000 IOPS comes with every size.
        let baseline = if self.volume_type == "gp3" { 3_000 } else { 0 };
        if iops > max || (iops > baseline && iops > per_gib.saturating_mul(gib as i64)) {
            return Err(Error::InvalidArgument(format!(
                "{iops} IOPS for a {gib} GiB {} volume: at most {max} and {per_gib} per GiB",
                self.volume_type
            )));
        }
        Ok(Some(iops))
    }
}

/// ControllerModifyVolume's `mutable_parameters`: what ModifyVolume changes.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ModifyParams {
    /// `type`.
    pub volume_type: Option<String>,
    /// `iops`.
    pub iops: Option<i32>,
    /// `throughput` (MiB/s).
    pub throughput: Option<i32>,
}

impl ModifyParams {
    /// Parses `mutable_parameters`; anything but type, iops and throughput is INVALID_ARGUMENT.
    pub fn parse(params: &HashMap<String, String>) -> Result<ModifyParams, Error> {
        let mut p = ModifyParams::default();
        for (key, value) in params {
            match key.to_ascii_lowercase().as_str() {
                "type" => p.volume_type = Some(parse_type(key, value)?),
                "iops" => p.iops = Some(parse_num(key, value)?),
                "throughput" => p.throughput = Some(parse_num(key, value)?),
                _ => return Err(bad(key, value, "not modifiable (type, iops and throughput are)")),
            }
        }
        if p == ModifyParams::default() {
            return Err(Error::InvalidArgument("mutable_parameters: nothing to change".into()));
        }
        Ok(p)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn map(kv: &[(&str, &str)]) -> HashMap<String, String> {
        kv.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect()
    }

    #[test]
    fn keys_are_case_insensitive_and_tags_keep_their_order_and_templates() {
        let p = CreateParams::parse(&map(&[
            ("Type", "IO2"),
            ("IOPSPERGB", "50"),
            ("Encrypted", "true"),
            ("kmsKeyId", "arn:aws:kms:us-east-1:1:key/k"),
            ("tagSpecification_2", "team=storage"),
            ("tagSpecification_1", "owner={{ .PVCNamespace }}/{{ .PVCName }}"),
            (PVC_NAME, "data"),
            (PVC_NAMESPACE, "db"),
            ("csi.storage.k8s.io/fstype", "xfs"),
        ]))
        .unwrap();
        assert_eq!(p.volume_type, "io2");
        assert_eq!(p.tags, vec![("owner".into(), "db/data".into()), ("team".into(), "storage".into())]);
        assert_eq!(p.iops_for(10).unwrap(), Some(500));
        assert!(p.encrypted);
    }

    #[test]
    fn bad_parameters_are_refused_with_their_key() {
        for (kv, needle) in [
            (vec![("type", "gp9")], "type"),
            (vec![("iops", "-3")], "iops"),
            (vec![("color", "red")], "color"),
            (vec![("type", "gp2"), ("throughput", "200")], "throughput"),
            (vec![("type", "st1"), ("iops", "200")], "iops"),
            (vec![("kmsKeyId", "k")], "kmsKeyId"),
            (vec![("tagSpecification_x", "a=b")], "tagSpecification_x"),
            (vec![("tagSpecification_1", "novalue")], "tagSpecification_1"),
        ] {
            let e = CreateParams::parse(&map(&kv)).unwrap_err();
            assert!(matches!(&e, Error::InvalidArgument(m) if m.contains(needle)), "{kv:?}: {e}");
        }
    }

    #[test]
    fn iops_per_gb_is_capped_and_raised_only_when_allowed() {
        let p = CreateParams::parse(&map(&[("type", "io1"), ("iopsPerGB", "50")])).unwrap();
        assert_eq!(p.iops_for(2000).unwrap(), Some(64_000));
        let p = CreateParams::parse(&map(&[("type", "io1"), ("iopsPerGB", "10")])).unwrap();
        assert!(p.iops_for(4).is_err());
        let p =
            CreateParams::parse(&map(&[("type", "io1"), ("iopsPerGB", "10"), ("allowAutoIOPSPerGBIncrease", "true")]))
                .unwrap();
        assert_eq!(p.iops_for(4).unwrap(), Some(100));
        assert_eq!(CreateParams::parse(&HashMap::new()).unwrap().iops_for(10).unwrap(), None);
    }

    #[test]
    fn mutable_parameters_win_at_creation_and_only_modifiable_keys_pass() {
        let p = CreateParams::parse_with_mutable(
            &map(&[("type", "gp3"), ("Throughput", "125"), ("encrypted", "true")]),
            &map(&[("throughput", "200"), ("IOPS", "4000")]),
        )
        .unwrap();
        assert_eq!((p.volume_type.as_str(), p.throughput, p.iops, p.encrypted), ("gp3", Some(200), Some(4000), true));
        let p = CreateParams::parse_with_mutable(&map(&[("type", "gp3")]), &HashMap::new()).unwrap();
        assert_eq!(p.throughput, None);
        for bad in [vec![("XXX_FakeKey", "XXX_FakeValue")], vec![("encrypted", "true")], vec![("type", "gp9")]] {
            let e = CreateParams::parse_with_mutable(&map(&[("type", "gp3")]), &map(&bad)).unwrap_err();
            assert!(matches!(e, Error::InvalidArgument(_)), "{bad:?}: {e}");
        }
        // The merged set is checked as a whole: throughput on gp2 is refused.
        let e = CreateParams::parse_with_mutable(&map(&[("throughput", "200")]), &map(&[("type", "gp2")])).unwrap_err();
        assert!(matches!(&e, Error::InvalidArgument(m) if m.contains("throughput")), "{e}");
    }

    #[test]
    fn modify_takes_three_keys() {
        let p = ModifyParams::parse(&map(&[("type", "io2"), ("IOPS", "4000")])).unwrap();
        assert_eq!((p.volume_type.as_deref(), p.iops, p.throughput), (Some("io2"), Some(4000), None));
        assert!(ModifyParams::parse(&map(&[("size", "3")])).is_err());
        assert!(ModifyParams::parse(&HashMap::new()).is_err());
    }
}
