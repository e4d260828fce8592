//! The crate's one error type, and its single mapping onto gRPC status codes.
//!
//! Every variant names the CSI error class it belongs to, so a driver picks
//! the code by picking the variant, and the mapping to `tonic::Status`
//! happens once, at the edge (`From<Error> for Status`).

use std::time::Duration;

/// What went wrong, classified by the gRPC code the CSI spec asks for.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A required field is missing or a field has a value the plugin rejects.
    #[error("{0}")]
    InvalidArgument(String),
    /// The volume, snapshot or node the request names does not exist.
    #[error("{0}")]
    NotFound(String),
    /// The object exists with attributes incompatible with the request.
    #[error("{0}")]
    AlreadyExists(String),
    /// The object is in a state that forbids the operation (in use, published elsewhere).
    #[error("{0}")]
    FailedPrecondition(String),
    /// A requested size the plugin cannot provide.
    #[error("{0}")]
    OutOfRange(String),
    /// No capacity, or the node has reached its volume limit.
    #[error("{0}")]
    ResourceExhausted(String),
    /// Another operation on the same volume (or snapshot) is in flight.
    #[error("{0}")]
    Aborted(String),
    /// The RPC or the option is not implemented by this plugin.
    #[error("{0}")]
    Unimplemented(String),
    /// The identity behind the secrets may not do this.
    #[error("{0}")]
    PermissionDenied(String),
    /// The secrets are missing or wrong.
    #[error("{0}")]
    Unauthenticated(String),
    /// The backend cannot be reached right now; the caller may retry.
    #[error("{0}")]
    Unavailable(String),
    /// An operation did not finish within its time bound.
    #[error("{what}: not finished after {after:?}")]
    Timeout {
        /// What was being done, with its object ("unmount /var/lib/...").
        what: String,
        /// The bound that was exceeded.
        after: Duration,
    },
    /// A system call failed.
    #[error("{what}: {errno}")]
    Sys {
        /// What was being done, with its object.
        what: String,
        /// The kernel's answer.
        errno: nix::errno::Errno,
    },
    /// An I/O operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with its object.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A bad command line; never crosses gRPC.
    #[error("{0}")]
    Usage(String),
    /// Anything else: a bug or an unexpected backend answer.
    #[error("{0}")]
    Internal(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The gRPC status code the CSI spec prescribes for this error.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::InvalidArgument(_) | Error::Usage(_) => Code::InvalidArgument,
            Error::NotFound(_) => Code::NotFound,
            Error::AlreadyExists(_) => Code::AlreadyExists,
            Error::FailedPrecondition(_) => Code::FailedPrecondition,
            Error::OutOfRange(_) => Code::OutOfRange,
            Error::ResourceExhausted(_) => Code::ResourceExhausted,
            Error::Aborted(_) => Code::Aborted,
            Error::Unimplemented(_) => Code::Unimplemented,
            Error::PermissionDenied(_) => Code::PermissionDenied,
            Error::Unauthenticated(_) => Code::Unauthenticated,
            Error::Unavailable(_) => Code::Unavailable,
            Error::Timeout { .. } => Code::DeadlineExceeded,
            Error::Sys { .. } | Error::Io { .. } | Error::Internal(_) => Code::Internal,
        }
    }

    /// A failed system call, with what was being done.
    pub fn sys(what: impl Into<String>, errno: nix::errno::Errno) -> Self {
        Error::Sys { what: what.into(), errno }
    }

    /// A failed I/O operation, with what was being done.
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io { what: what.into(), source }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        // The spec wants `details` empty and `message` human readable.
        tonic::Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variants_map_to_the_spec_codes() {
        let s: tonic::Status = Error::Aborted("busy".into()).into();
        assert_eq!(s.code(), tonic::Code::Aborted);
        assert_eq!(s.message(), "busy");
        let s: tonic::Status = Error::sys("mount /x", nix::errno::Errno::EPERM).into();
        assert_eq!(s.code(), tonic::Code::Internal);
        assert!(s.message().starts_with("mount /x: EPERM"), "{}", s.message());
        let s: tonic::Status = Error::Timeout { what: "unmount /x".into(), after: Duration::from_secs(2) }.into();
        assert_eq!(s.code(), tonic::Code::DeadlineExceeded);
    }
}
