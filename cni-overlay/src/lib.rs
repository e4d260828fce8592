//! VXLAN overlay across hosts (Flannel class): filled by the cluster IPAM + overlay issue; nothing here yet.
