//! csi-suite's one error type, for what starts and stops the real parts
//! (nfs-ganesha, a driver process). A spec's failure is not one of these:
//! it is its message (`csi::Res`).

/// Why a server or driver of the tests could not be started or used.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file, process or socket operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with its object.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// nfs-ganesha exited or did not accept connections in time.
    #[error("{0}")]
    Ganesha(String),
    /// The test Ceph cluster could not be set up or a `ceph`/`rbd` command failed.
    #[error("{0}")]
    Ceph(String),
    /// A driver process exited or did not serve in time.
    #[error("{0}")]
    Driver(String),
}

impl Error {
    /// An I/O error with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { what: what.into(), source }
    }
}

/// For callers whose errors are messages (the suite's `Res`, testkit's `R`).
impl From<Error> for String {
    fn from(e: Error) -> String {
        e.to_string()
    }
}

/// Result of this crate's fixtures.
pub type Result<T, E = Error> = std::result::Result<T, E>;
