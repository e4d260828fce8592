//! A CSI driver binary run as a child process on a unix socket of its own:
//! what the csi-nfs tests, `bench csi-nfs` and the guest tests all need.
//! The process itself is testkit's [`ServiceProcess`] (csi-cloud's tests use
//! it directly); this adds the gRPC channel and this crate's errors.

use std::path::{Path, PathBuf};

use testkit::service::ServiceProcess;

use crate::{Error, Result};

/// A driver serving on `<dir>/csi.sock`, its stderr in `<dir>/driver.log`.
/// Dropping it sends SIGTERM (SIGKILL if it lingers), detaches what is
/// still mounted under `dir` and removes `dir` ([`ServiceProcess`]).
#[derive(Debug)]
pub struct DriverProcess(ServiceProcess);

impl DriverProcess {
    /// Starts `bin --endpoint=unix://<dir>/csi.sock ARGS…` in a fresh temp
    /// dir named after `hint`, and returns once the socket exists. `{dir}`
    /// in an argument is replaced by that directory (e.g. a state directory
    /// of the driver's own, removed with it).
    pub fn start(bin: &Path, hint: &str, args: &[String]) -> Result<DriverProcess> {
        ServiceProcess::start(bin, hint, args, std::iter::empty::<(&str, &str)>())
            .map(DriverProcess)
            .map_err(Error::Driver)
    }

    /// The driver's process ID.
    pub fn pid(&self) -> u32 {
        self.0.pid()
    }

    /// The driver's directory (socket, log; scratch space for the caller).
    pub fn dir(&self) -> &Path {
        self.0.dir()
    }

    /// The socket path.
    pub fn socket(&self) -> PathBuf {
        self.0.socket()
    }

    /// `unix:///…/csi.sock`.
    pub fn endpoint(&self) -> String {
        self.0.endpoint()
    }

    /// A gRPC channel to the driver.
    pub async fn channel(&self) -> Result<tonic::transport::Channel> {
        csi_core::client::connect(&csi_core::flags::Endpoint::Unix(self.socket()))
            .await
            .map_err(|e| Error::Driver(format!("connect to {}: {e}", self.endpoint())))
    }

    /// What the driver logged so far.
    pub fn log(&self) -> String {
        self.0.log()
    }
}
