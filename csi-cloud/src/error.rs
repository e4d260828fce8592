//! csi-cloud's one error type and its single mapping onto gRPC codes.
//!
//! Request checks, pagination and time bounds come from csi-core as
//! [`csi_core::Error`] (already classified by CSI code); a failed AWS call
//! becomes [`Error::Aws`] with the class `crate::aws` gave its AWS error
//! code. Every message says what was being done and with which volume,
//! snapshot or instance ("attach vol-1 to i-2 as /dev/xvdba: ...").

/// How an AWS error code is answered over CSI (docs/csi-cloud.md, "Error codes").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AwsClass {
    /// The volume, snapshot or instance does not exist or its ID is malformed: NOT_FOUND.
    NotFound,
    /// The request's parameters were refused: INVALID_ARGUMENT.
    Invalid,
    /// The object is in a state that forbids the call (in use, wrong zone): FAILED_PRECONDITION.
    Precondition,
    /// A quota or limit was hit (volumes per node, volumes, snapshots, IOPS): RESOURCE_EXHAUSTED.
    Exhausted,
    /// Throttled, or AWS (or the network to it) failed for now, after the SDK's own retries: UNAVAILABLE.
    Unavailable,
    /// The credentials may not do this: PERMISSION_DENIED.
    Denied,
    /// The credentials are missing or wrong: UNAUTHENTICATED.
    Unauthenticated,
    /// The same client token came with other parameters: ALREADY_EXISTS.
    Conflict,
    /// Anything else: INTERNAL.
    Other,
}

/// What went wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A CSI-level failure (bad request, a bad page token, a time bound).
    #[error(transparent)]
    Csi(#[from] csi_core::Error),
    /// An AWS API call failed.
    #[error("{what}: {code}: {message}")]
    Aws {
        /// What was being done, with its objects ("detach vol-1 from i-2").
        what: String,
        /// AWS's error code (`InvalidVolume.NotFound`), or the SDK's failure kind.
        code: String,
        /// AWS's message, or the SDK's.
        message: String,
        /// The CSI class of `code`.
        class: AwsClass,
    },
    /// The AWS SDK could not be set up (region, endpoint, credentials chain).
    #[error("AWS configuration: {0}")]
    Config(String),

    // Snapshot export/import (h5).
    /// Data that does not match its checksum (a snapshot block): DATA_LOSS.
    #[error("{0}")]
    Integrity(String),
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The gRPC code the CSI spec prescribes.
    pub fn code(&self) -> tonic::Code {
        use tonic::Code;
        match self {
            Error::Csi(e) => e.code(),
            Error::Aws { class, .. } => match class {
                AwsClass::NotFound => Code::NotFound,
                AwsClass::Invalid => Code::InvalidArgument,
                AwsClass::Precondition => Code::FailedPrecondition,
                AwsClass::Exhausted => Code::ResourceExhausted,
                AwsClass::Unavailable => Code::Unavailable,
                AwsClass::Denied => Code::PermissionDenied,
                AwsClass::Unauthenticated => Code::Unauthenticated,
                AwsClass::Conflict => Code::AlreadyExists,
                AwsClass::Other => Code::Internal,
            },
            Error::Config(_) => Code::FailedPrecondition,
            Error::Integrity(_) => Code::DataLoss,
        }
    }

    /// An AWS error of this class (NOT_FOUND on deletes is success, ...).
    pub fn is_aws(&self, class: AwsClass) -> bool {
        matches!(self, Error::Aws { class: c, .. } if *c == class)
    }

    /// AWS's error code, for the few the controller handles itself.
    pub fn aws_code(&self) -> Option<&str> {
        match self {
            Error::Aws { code, .. } => Some(code),
            _ => None,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> Self {
        tonic::Status::new(e.code(), e.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_map_to_the_spec_codes_and_messages_keep_the_context() {
        let e = Error::Aws {
            what: "attach vol-1 to i-2 as /dev/xvdba".into(),
            code: "AttachmentLimitExceeded".into(),
            message: "limit".into(),
            class: AwsClass::Exhausted,
        };
        let s: tonic::Status = e.into();
        assert_eq!(s.code(), tonic::Code::ResourceExhausted);
        assert_eq!(s.message(), "attach vol-1 to i-2 as /dev/xvdba: AttachmentLimitExceeded: limit");
        let s: tonic::Status = Error::from(csi_core::Error::NotFound("volume vol-1".into())).into();
        assert_eq!(s.code(), tonic::Code::NotFound);
    }
}
