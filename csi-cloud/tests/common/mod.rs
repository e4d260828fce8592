//! Fixtures shared by csi-cloud's tests: the hypervisor stand-in (the
//! attached disks, and the instance metadata service it serves).

pub mod hypervisor;
pub mod imds;
