//! The userspace NFS client (libnfs) the controller works through.
