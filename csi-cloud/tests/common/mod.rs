//! Fixtures shared by csi-cloud's tests: the hypervisor stand-in (the
//! attached disks, the instance metadata service it serves, and the data
//! plane of whole instances behind moto's attachments), and the driver as a
//! process.

pub mod ec2_host;
pub mod hypervisor;
pub mod imds;
pub mod process;
