//! CSI driver for Ceph RBD: filled by the csi-rbd issue; nothing here yet.
