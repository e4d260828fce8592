//! The Node service: mounts `server:/share/subdir` at the target path with
//! the kernel NFS client.

/// csi-nfs's Node service.
#[derive(Debug)]
pub struct NodeService {
    node_id: String,
    config: crate::Config,
}

impl NodeService {
    /// The node service of node `node_id`.
    pub fn new(node_id: &str, config: crate::Config) -> Self {
        Self { node_id: node_id.to_string(), config }
    }
}

#[tonic::async_trait]
impl csi_core::pb::node_server::Node for NodeService {}
