//! The crate's one error type: librados/librbd's negative errno values
//! mapped to what a caller decides on, each message naming the operation
//! and the object (pool, image, object ID).

/// What went wrong, with the operation and object in the message.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The pool, image, snapshot or object does not exist (ENOENT).
    #[error("{0}")]
    NotFound(String),
    /// It already exists (EEXIST).
    #[error("{0}")]
    Exists(String),
    /// A lock is held by another client, the image has watchers, snapshots
    /// or children (EBUSY, ENOTEMPTY).
    #[error("{0}")]
    Busy(String),
    /// The guard of a conditional write failed (ECANCELED).
    #[error("{0}")]
    Conflict(String),
    /// Wrong key, missing caps, or this client is blocklisted (EACCES,
    /// EPERM, EBLOCKLISTED).
    #[error("{0}")]
    PermissionDenied(String),
    /// No monitor answered, or the cluster did not answer within the
    /// connection's timeout (ETIMEDOUT).
    #[error("{0}")]
    Timeout(String),
    /// The pool or cluster is full, or a quota is reached (ENOSPC, EDQUOT).
    #[error("{0}")]
    NoSpace(String),
    /// A name with a NUL byte, an unknown feature, a shrink (EINVAL, ERANGE).
    #[error("{0}")]
    InvalidArgument(String),
    /// Any other errno.
    #[error("{op}: {}", std::io::Error::from_raw_os_error(*errno))]
    Other { op: String, errno: i32 },
}

/// This crate's result.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Ceph's EBLOCKLISTED (an alias of ESHUTDOWN on Linux).
pub(crate) const EBLOCKLISTED: i32 = libc::ESHUTDOWN;

impl Error {
    /// Maps a positive errno from operation `op` (which names the object).
    pub fn from_errno(op: &str, errno: i32) -> Error {
        let m = |what: &str| format!("{op}: {what}");
        match errno {
            libc::ENOENT => Error::NotFound(m("not found")),
            libc::EEXIST => Error::Exists(m("already exists")),
            libc::EBUSY => Error::Busy(m("busy (lock held by another client, or watchers)")),
            libc::ENOTEMPTY => Error::Busy(m("busy (has snapshots or children)")),
            libc::ECANCELED => Error::Conflict(m("guard failed (the object changed)")),
            libc::EACCES | libc::EPERM => Error::PermissionDenied(m("permission denied (wrong key or missing caps)")),
            EBLOCKLISTED => Error::PermissionDenied(m("this client is blocklisted")),
            libc::ETIMEDOUT => Error::Timeout(m("timed out")),
            libc::ENOSPC | libc::EDQUOT => Error::NoSpace(m("no space (pool full or quota reached)")),
            libc::EINVAL | libc::ERANGE => {
                Error::InvalidArgument(m(&std::io::Error::from_raw_os_error(errno).to_string()))
            }
            _ => Error::Other { op: op.to_string(), errno },
        }
    }
}

/// Turns a librados/librbd return value (negative errno on failure) into
/// a result, naming the operation only on failure.
pub(crate) fn check(rc: i64, op: impl FnOnce() -> String) -> Result<i64> {
    if rc < 0 {
        Err(Error::from_errno(&op(), (-rc) as i32))
    } else {
        Ok(rc)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errnos_map_to_the_variants_and_name_the_operation() {
        type Is = fn(&Error) -> bool;
        let cases: &[(i32, Is)] = &[
            (libc::ENOENT, |e| matches!(e, Error::NotFound(_))),
            (libc::EEXIST, |e| matches!(e, Error::Exists(_))),
            (libc::EBUSY, |e| matches!(e, Error::Busy(_))),
            (libc::ENOTEMPTY, |e| matches!(e, Error::Busy(_))),
            (libc::ECANCELED, |e| matches!(e, Error::Conflict(_))),
            (libc::EACCES, |e| matches!(e, Error::PermissionDenied(_))),
            (libc::EPERM, |e| matches!(e, Error::PermissionDenied(_))),
            (libc::ESHUTDOWN, |e| matches!(e, Error::PermissionDenied(_))),
            (libc::ETIMEDOUT, |e| matches!(e, Error::Timeout(_))),
            (libc::ENOSPC, |e| matches!(e, Error::NoSpace(_))),
            (libc::EDQUOT, |e| matches!(e, Error::NoSpace(_))),
            (libc::EINVAL, |e| matches!(e, Error::InvalidArgument(_))),
            (libc::ERANGE, |e| matches!(e, Error::InvalidArgument(_))),
            (libc::EIO, |e| matches!(e, Error::Other { errno: libc::EIO, .. })),
        ];
        for (errno, is) in cases {
            let e = Error::from_errno("open image rbd/img-1", *errno);
            assert!(is(&e), "errno {errno} gave {e:?}");
            assert!(e.to_string().starts_with("open image rbd/img-1: "), "{e}");
        }
        assert!(check(0, || unreachable!()).is_ok());
        assert!(matches!(check(-(libc::ENOENT as i64), || "x".into()), Err(Error::NotFound(_))));
    }
}
