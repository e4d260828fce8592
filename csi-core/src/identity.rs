//! The Identity service, the same for every driver.
//!
//! GetPluginInfo answers the driver name and version; GetPluginCapabilities
//! is derived from what the driver implements; Probe runs a check the
//! driver supplies (e.g. "is the NFS server reachable").

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tonic::{Request, Response, Status};

use crate::error::Result;
use crate::pb;
use crate::pb::plugin_capability::service::Type as ServiceType;
use crate::pb::plugin_capability::volume_expansion::Type as ExpansionType;
use crate::pb::plugin_capability::{Service, Type as CapType, VolumeExpansion};

type ProbeFn = dyn Fn() -> Pin<Box<dyn Future<Output = Result<bool>> + Send>> + Send + Sync;

/// The Identity service of one driver.
#[derive(Clone)]
pub struct Identity {
    name: String,
    vendor_version: String,
    manifest: HashMap<String, String>,
    controller: bool,
    accessibility_constraints: bool,
    expansion: Option<ExpansionType>,
    probe: Arc<ProbeFn>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("name", &self.name)
            .field("vendor_version", &self.vendor_version)
            .field("controller", &self.controller)
            .field("accessibility_constraints", &self.accessibility_constraints)
            .field("expansion", &self.expansion)
            .finish_non_exhaustive()
    }
}

impl Identity {
    /// A plugin named `name` (the `--driver-name`), reporting csi-core's
    /// version until [`Identity::vendor_version`] says otherwise, always ready.
    pub fn new(name: impl Into<String>) -> Self {
        Identity {
            name: name.into(),
            vendor_version: crate::VERSION.to_string(),
            manifest: HashMap::new(),
            controller: false,
            accessibility_constraints: false,
            expansion: None,
            probe: Arc::new(|| Box::pin(async { Ok(true) })),
        }
    }

    /// The driver's own version (pass `env!("CARGO_PKG_VERSION")`).
    pub fn vendor_version(mut self, v: impl Into<String>) -> Self {
        self.vendor_version = v.into();
        self
    }

    /// Adds a manifest entry (opaque to the CO; e.g. the git commit).
    pub fn manifest(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.manifest.insert(key.into(), value.into());
        self
    }

    /// Reports CONTROLLER_SERVICE. The server runner sets this when the
    /// driver has a Controller, whatever `--mode` serves: the spec wants
    /// every instance of a plugin to report the same capabilities.
    pub fn controller(mut self, yes: bool) -> Self {
        self.controller = yes;
        self
    }

    /// Reports VOLUME_ACCESSIBILITY_CONSTRAINTS (volumes not reachable from
    /// every node, e.g. zonal disks).
    pub fn accessibility_constraints(mut self, yes: bool) -> Self {
        self.accessibility_constraints = yes;
        self
    }

    /// Reports the VolumeExpansion capability (ONLINE or OFFLINE).
    pub fn volume_expansion(mut self, t: ExpansionType) -> Self {
        self.expansion = Some(t);
        self
    }

    /// Probe runs `check`: `Ok(true)` ready, `Ok(false)` still starting,
    /// `Err` unhealthy (use FailedPrecondition, as the spec says).
    pub fn probe<F, Fut>(mut self, check: F) -> Self
    where
        F: Fn() -> Fut + Send + Sync + 'static,
        Fut: Future<Output = Result<bool>> + Send + 'static,
    {
        self.probe = Arc::new(move || Box::pin(check()));
        self
    }

    /// The plugin name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Whether CONTROLLER_SERVICE is reported.
    pub fn has_controller(&self) -> bool {
        self.controller
    }

    fn capabilities(&self) -> Vec<pb::PluginCapability> {
        let service =
            |t: ServiceType| pb::PluginCapability { r#type: Some(CapType::Service(Service { r#type: t as i32 })) };
        let mut caps = Vec::new();
        if self.controller {
            caps.push(service(ServiceType::ControllerService));
        }
        if self.accessibility_constraints {
            caps.push(service(ServiceType::VolumeAccessibilityConstraints));
        }
        if let Some(t) = self.expansion {
            caps.push(pb::PluginCapability {
                r#type: Some(CapType::VolumeExpansion(VolumeExpansion { r#type: t as i32 })),
            });
        }
        caps
    }
}

#[tonic::async_trait]
impl pb::identity_server::Identity for Identity {
    async fn get_plugin_info(
        &self,
        _: Request<pb::GetPluginInfoRequest>,
    ) -> Result<Response<pb::GetPluginInfoResponse>, Status> {
        Ok(Response::new(pb::GetPluginInfoResponse {
            name: self.name.clone(),
            vendor_version: self.vendor_version.clone(),
            manifest: self.manifest.clone(),
        }))
    }

    async fn get_plugin_capabilities(
        &self,
        _: Request<pb::GetPluginCapabilitiesRequest>,
    ) -> Result<Response<pb::GetPluginCapabilitiesResponse>, Status> {
        Ok(Response::new(pb::GetPluginCapabilitiesResponse { capabilities: self.capabilities() }))
    }

    async fn probe(&self, _: Request<pb::ProbeRequest>) -> Result<Response<pb::ProbeResponse>, Status> {
        let ready = (self.probe)().await?;
        Ok(Response::new(pb::ProbeResponse { ready: Some(ready) }))
    }
}
