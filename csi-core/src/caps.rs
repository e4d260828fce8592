//! The capability lists of ControllerGetCapabilities and
//! NodeGetCapabilities, from the RPC types a driver supports.

use crate::pb::{self, controller_service_capability as csc, node_service_capability as nsc};

/// ControllerGetCapabilities's list: one RPC capability per type, in order.
pub fn controller(types: impl IntoIterator<Item = csc::rpc::Type>) -> Vec<pb::ControllerServiceCapability> {
    types
        .into_iter()
        .map(|t| pb::ControllerServiceCapability { r#type: Some(csc::Type::Rpc(csc::Rpc { r#type: t as i32 })) })
        .collect()
}

/// NodeGetCapabilities's list: one RPC capability per type, in order.
pub fn node(types: impl IntoIterator<Item = nsc::rpc::Type>) -> Vec<pb::NodeServiceCapability> {
    types
        .into_iter()
        .map(|t| pb::NodeServiceCapability { r#type: Some(nsc::Type::Rpc(nsc::Rpc { r#type: t as i32 })) })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_type_becomes_one_rpc_capability_in_order() {
        use csc::rpc::Type as C;
        let c = controller([C::CreateDeleteVolume, C::ListVolumes]);
        let got: Vec<_> = c.iter().map(|c| c.r#type).collect();
        assert_eq!(
            got,
            vec![
                Some(csc::Type::Rpc(csc::Rpc { r#type: C::CreateDeleteVolume as i32 })),
                Some(csc::Type::Rpc(csc::Rpc { r#type: C::ListVolumes as i32 })),
            ]
        );
        let n = node([nsc::rpc::Type::GetVolumeStats]);
        assert_eq!(n[0].r#type, Some(nsc::Type::Rpc(nsc::Rpc { r#type: nsc::rpc::Type::GetVolumeStats as i32 })));
        assert!(node([]).is_empty());
    }
}
