//! Fixtures shared by csi-cloud's tests.

pub mod hypervisor;
