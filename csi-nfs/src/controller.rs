//! The Controller service: volumes are directories on the share, made over
//! NFS from userspace.

/// csi-nfs's Controller service.
#[derive(Debug, Default)]
pub struct ControllerService {
    config: crate::Config,
}

impl ControllerService {
    /// A controller with no state yet.
    pub fn new(config: crate::Config) -> Self {
        Self { config }
    }

    /// The driver-wide settings.
    pub fn config(&self) -> &crate::Config {
        &self.config
    }
}

#[tonic::async_trait]
impl csi_core::pb::controller_server::Controller for ControllerService {}
