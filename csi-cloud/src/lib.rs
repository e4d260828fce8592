//! CSI driver for AWS EBS: filled by the csi-cloud issue; nothing here yet.
