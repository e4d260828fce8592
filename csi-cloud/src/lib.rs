//! CSI driver for AWS EBS.

pub mod device;
pub mod node;
