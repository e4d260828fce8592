//! csi-sanity's "Identity Service" specs.

use csi_core::pb;

use super::{ensure, ok, spec, Ctx, Res, Spec};

const D: &str = "Identity Service";

pub fn specs() -> Vec<Spec> {
    vec![
        spec!(format!("{D} GetPluginCapabilities should return appropriate capabilities"), [], plugin_capabilities),
        spec!(format!("{D} Probe should return appropriate information"), [], probe),
        spec!(format!("{D} GetPluginInfo should return appropriate information"), [], plugin_info),
    ]
}

/// Every capability is a known service or volume-expansion type.
async fn plugin_capabilities(c: &mut Ctx) -> Res {
    use pb::plugin_capability::{service, volume_expansion, Type};
    let r = ok("GetPluginCapabilities", c.plugin_caps(pb::GetPluginCapabilitiesRequest {}).await)?;
    for cap in &r.capabilities {
        match cap.r#type {
            Some(Type::Service(s)) => {
                let t = service::Type::try_from(s.r#type).ok().filter(|t| *t != service::Type::Unknown);
                ensure!(t.is_some(), "unknown plugin service type {}", s.r#type);
            }
            Some(Type::VolumeExpansion(v)) => {
                let t =
                    volume_expansion::Type::try_from(v.r#type).ok().filter(|t| *t != volume_expansion::Type::Unknown);
                ensure!(t.is_some(), "unknown volume expansion type {}", v.r#type);
            }
            None => return Err("a plugin capability with no type".into()),
        }
    }
    Ok(())
}

async fn probe(c: &mut Ctx) -> Res {
    ok("Probe", c.probe(pb::ProbeRequest {}).await).map(drop)
}

/// A name CSI accepts (≤ 63 characters, domain-name-like) and a vendor version.
async fn plugin_info(c: &mut Ctx) -> Res {
    let r = ok("GetPluginInfo", c.plugin_info(pb::GetPluginInfoRequest {}).await)?;
    ensure!(!r.name.is_empty(), "GetPluginInfo: empty name");
    ensure!(r.name.len() <= 63, "GetPluginInfo: name {:?} is longer than 63 characters", r.name);
    ensure!(valid_driver_name(&r.name), "GetPluginInfo: name {:?} is not of the form the spec requires", r.name);
    ensure!(!r.vendor_version.is_empty(), "GetPluginInfo: empty vendor_version (REQUIRED by the spec)");
    Ok(())
}

/// The spec's form: alphanumeric first and last, with letters, digits, `-`
/// and `.` between (csi-sanity also lets `_` through, and so do we; it wants
/// letters at both ends, which the spec does not).
fn valid_driver_name(n: &str) -> bool {
    let b = n.as_bytes();
    !b.is_empty()
        && b[0].is_ascii_alphanumeric()
        && b[b.len() - 1].is_ascii_alphanumeric()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn driver_names() {
        use super::valid_driver_name as v;
        assert!(v("nfs.csi.k8s.io"));
        assert!(v("hostpath.csi.k8s.io"));
        assert!(v("csi2"));
        assert!(v("a"));
        assert!(!v("abc-"));
        assert!(!v(".abc"));
        assert!(!v("a b"));
        assert!(!v(""));
    }
}
