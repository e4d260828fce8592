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

/// Every capability is a known service or volume-expansion type, on the
/// node endpoint and (as csi-sanity) on a separate controller endpoint.
async fn plugin_capabilities(c: &mut Ctx) -> Res {
    let r = ok("GetPluginCapabilities", c.plugin_caps(pb::GetPluginCapabilitiesRequest {}).await)?;
    check_plugin_capabilities(&r)?;
    if c.split_controller() {
        let r = ok(
            "GetPluginCapabilities (controller endpoint)",
            c.ctrl_plugin_caps(pb::GetPluginCapabilitiesRequest {}).await,
        )?;
        check_plugin_capabilities(&r).map_err(|e| format!("controller endpoint: {e}"))?;
    }
    Ok(())
}

fn check_plugin_capabilities(r: &pb::GetPluginCapabilitiesResponse) -> Res {
    use pb::plugin_capability::{service, volume_expansion, Type};
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
    ok("Probe", c.probe(pb::ProbeRequest {}).await)?;
    if c.split_controller() {
        ok("Probe (controller endpoint)", c.ctrl_probe(pb::ProbeRequest {}).await)?;
    }
    Ok(())
}

/// A name csi-sanity accepts (≤ 63 characters, letters at both ends) and a
/// vendor version, on each endpoint.
async fn plugin_info(c: &mut Ctx) -> Res {
    let r = ok("GetPluginInfo", c.plugin_info(pb::GetPluginInfoRequest {}).await)?;
    check_plugin_info(&r)?;
    if c.split_controller() {
        let r = ok("GetPluginInfo (controller endpoint)", c.ctrl_plugin_info(pb::GetPluginInfoRequest {}).await)?;
        check_plugin_info(&r).map_err(|e| format!("controller endpoint: {e}"))?;
    }
    Ok(())
}

fn check_plugin_info(r: &pb::GetPluginInfoResponse) -> Res {
    ensure!(!r.name.is_empty(), "GetPluginInfo: empty name");
    ensure!(r.name.len() <= 63, "GetPluginInfo: name {:?} is longer than 63 characters", r.name);
    ensure!(valid_driver_name(&r.name), "GetPluginInfo: name {:?} is not of the form the spec requires", r.name);
    ensure!(!r.vendor_version.is_empty(), "GetPluginInfo: empty vendor_version (REQUIRED by the spec)");
    Ok(())
}

/// csi-sanity's form, which is stricter than the spec's: a letter first and
/// last (the spec allows digits there), letters, digits, `-`, `.` and `_`
/// between, at least two characters (csi-sanity's pattern needs both ends).
fn valid_driver_name(n: &str) -> bool {
    let b = n.as_bytes();
    b.len() >= 2
        && b[0].is_ascii_alphabetic()
        && b[b.len() - 1].is_ascii_alphabetic()
        && b.iter().all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'.' | b'_'))
}

#[cfg(test)]
mod tests {
    #[test]
    fn driver_names() {
        use super::valid_driver_name as v;
        assert!(v("nfs.csi.k8s.io"));
        assert!(v("hostpath.csi.k8s.io"));
        assert!(!v("csi2"), "csi-sanity wants a letter last");
        assert!(!v("2csi"), "and first");
        assert!(!v("a"), "and two ends");
        assert!(!v("abc-"));
        assert!(!v(".abc"));
        assert!(!v("a b"));
        assert!(!v(""));
    }
}
