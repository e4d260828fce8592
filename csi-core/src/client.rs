//! Connecting to a CSI endpoint as a client (tests, `conformance csi`).

use hyper_util::rt::TokioIo;
use tonic::transport::{Channel, Endpoint as TonicEndpoint, Uri};

use crate::error::{Error, Result};
use crate::flags::Endpoint;

/// A gRPC channel to `endpoint` (a unix socket or tcp://host:port).
pub async fn connect(endpoint: &Endpoint) -> Result<Channel> {
    match endpoint {
        Endpoint::Unix(path) => {
            let path = path.clone();
            // The URI is required by tonic but unused: the connector dials the socket.
            TonicEndpoint::from_static("http://[::1]:1")
                .connect_with_connector(tower::service_fn(move |_: Uri| {
                    let path = path.clone();
                    async move {
                        let stream = tokio::net::UnixStream::connect(path).await?;
                        Ok::<_, std::io::Error>(TokioIo::new(stream))
                    }
                }))
                .await
                .map_err(|e| Error::Unavailable(format!("connect to {endpoint}: {e}")))
        }
        Endpoint::Tcp(addr) => TonicEndpoint::from_shared(format!("http://{addr}"))
            .map_err(|e| Error::Usage(format!("endpoint {endpoint}: {e}")))?
            .connect()
            .await
            .map_err(|e| Error::Unavailable(format!("connect to {endpoint}: {e}"))),
    }
}
