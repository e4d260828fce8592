//! CSI driver for NFS: filled by the CSI core + csi-nfs issue; nothing here yet.
