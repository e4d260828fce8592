//! The `csi-cloud` binary as a child process on a unix socket of its own,
//! pointed at a moto: what a CO (or `conformance csi`) talks to. The process
//! handling is testkit's [`ServiceProcess`], shared with csi-suite's drivers.

#![allow(dead_code)]

use std::path::PathBuf;

use testkit::service::ServiceProcess;

/// The binary cargo built for these tests.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_csi-cloud"))
}

/// Starts `csi-cloud --endpoint unix://<dir>/csi.sock --state-dir <dir>/state ARGS`
/// with moto's environment, and returns once the socket exists.
pub fn start(name: &str, moto: &testkit::moto::Moto, args: &[&str]) -> ServiceProcess {
    let mut all: Vec<String> = ["--state-dir={dir}/state", "--log-level", "info"].map(String::from).into();
    all.extend(args.iter().map(|a| a.to_string()));
    ServiceProcess::start(&bin(), &format!("csi-cloud-{name}"), &all, moto.env())
        .unwrap_or_else(|e| panic!("csi-cloud {name}: {e}"))
}

/// A gRPC channel to `driver`.
pub async fn channel(driver: &ServiceProcess) -> tonic::transport::Channel {
    csi_core::client::connect(&csi_core::flags::Endpoint::Unix(driver.socket())).await.unwrap()
}
