//! The crate's one error type: which kernel operation failed on which object, and the errno.

use nix::errno::Errno;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The kernel refused a request: `op` says what was asked of which object.
    #[error("{op}: {errno}")]
    Kernel { op: String, errno: Errno },
    /// A local I/O failure (opening a netns file, a sysctl, a socket).
    #[error("{op}: {source}")]
    Io { op: String, source: std::io::Error },
    /// The kernel answered with something we could not decode.
    #[error("{op}: malformed netlink reply: {detail}")]
    Decode { op: String, detail: String },
    #[error("{0} not found")]
    NotFound(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(op: impl Into<String>, source: std::io::Error) -> Error {
        Error::Io { op: op.into(), source }
    }

    /// The errno behind a kernel refusal, if that is what this is.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Kernel { errno, .. } => Some(*errno),
            Error::Io { source, .. } => source.raw_os_error().map(Errno::from_raw),
            _ => None,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::NotFound(_)) || matches!(self.errno(), Some(Errno::ENODEV | Errno::ENOENT | Errno::ESRCH))
    }

    pub fn is_exists(&self) -> bool {
        self.errno() == Some(Errno::EEXIST)
    }
}
