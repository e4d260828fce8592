//! The AWS side: building the EC2 and EBS clients from the usual AWS
//! environment and files, and classifying AWS errors into CSI codes.
//!
//! Region, credentials and endpoint come from aws-config's default chains
//! (`AWS_REGION`, `AWS_ACCESS_KEY_ID`..., `~/.aws/config` and
//! `credentials`, web identity, ECS/EKS container credentials, instance
//! metadata); `--aws-endpoint-url` (or `AWS_ENDPOINT_URL`, which aws-config
//! reads itself) points both clients at an emulator. The SDK retries
//! throttling and transient failures itself (standard mode,
//! [`MAX_ATTEMPTS`] attempts with exponential backoff) before an error
//! reaches [`classify`].

use aws_config::retry::RetryConfig;
use aws_config::BehaviorVersion;
use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};

use crate::error::{AwsClass, Error, Result};

/// Attempts per AWS call, the first included (the SDK's default is 3).
pub const MAX_ATTEMPTS: u32 = 5;

/// The clients of one driver process.
#[derive(Clone, Debug)]
pub struct Clients {
    /// EC2: volumes, attachments, snapshots, instances.
    pub ec2: aws_sdk_ec2::Client,
    /// EBS direct APIs: snapshot blocks.
    pub ebs: aws_sdk_ebs::Client,
    /// The region the clients talk to.
    pub region: String,
}

impl Clients {
    /// Loads the AWS configuration; `endpoint_url` overrides the endpoint of
    /// both services (an emulator), else `AWS_ENDPOINT_URL` or AWS's own.
    pub async fn load(endpoint_url: Option<&str>) -> Result<Clients> {
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS));
        if let Some(url) = endpoint_url.filter(|u| !u.is_empty()) {
            loader = loader.endpoint_url(url);
        }
        let config = loader.load().await;
        let region = config
            .region()
            .map(|r| r.to_string())
            .ok_or_else(|| Error::Config("no region: set AWS_REGION or a region in ~/.aws/config".into()))?;
        Ok(Clients { ec2: aws_sdk_ec2::Client::new(&config), ebs: aws_sdk_ebs::Client::new(&config), region })
    }
}

impl Clients {
    /// Clients for an emulator: `endpoint_url`, `region` and fixed
    /// credentials, nothing read from the environment (tests, benchmarks).
    pub fn for_emulator(endpoint_url: &str, region: &str, key_id: &str, secret: &str) -> Clients {
        let config = aws_config::SdkConfig::builder()
            .behavior_version(BehaviorVersion::latest())
            .endpoint_url(endpoint_url)
            .region(aws_config::Region::new(region.to_string()))
            .credentials_provider(aws_sdk_ec2::config::SharedCredentialsProvider::new(
                aws_sdk_ec2::config::Credentials::new(key_id, secret, None, None, "static"),
            ))
            .retry_config(RetryConfig::standard().with_max_attempts(MAX_ATTEMPTS))
            .build();
        Clients {
            ec2: aws_sdk_ec2::Client::new(&config),
            ebs: aws_sdk_ebs::Client::new(&config),
            region: region.into(),
        }
    }
}

/// The CSI class of an AWS error code (docs/csi-cloud.md, "Error codes").
pub fn class_of(code: &str) -> AwsClass {
    match code {
        "InvalidVolume.NotFound"
        | "InvalidVolumeID.Malformed"
        | "InvalidInstanceID.NotFound"
        | "InvalidInstanceID.Malformed"
        | "InvalidSnapshot.NotFound"
        | "InvalidSnapshotID.Malformed"
        | "InvalidAttachment.NotFound"
        | "ResourceNotFoundException" => AwsClass::NotFound,
        "VolumeInUse"
        | "IncorrectState"
        | "IncorrectInstanceState"
        | "IncorrectModificationState"
        | "InvalidVolume.ZoneMismatch"
        | "InvalidSnapshot.InUse"
        | "InvalidDevice.InUse" => AwsClass::Precondition,
        "AttachmentLimitExceeded"
        | "VolumeLimitExceeded"
        | "SnapshotLimitExceeded"
        | "MaxIOPSLimitExceeded"
        | "InsufficientVolumeCapacity"
        | "VolumeModificationRateExceeded"
        | "ServiceQuotaExceededException" => AwsClass::Exhausted,
        "RequestLimitExceeded"
        | "Throttling"
        | "ThrottlingException"
        | "RequestThrottledException"
        | "ServiceUnavailable"
        | "Unavailable"
        | "InternalError"
        | "InternalServerException"
        | "dispatch failure"
        | "timeout"
        | "response error" => AwsClass::Unavailable,
        "InvalidParameterValue"
        | "InvalidParameter"
        | "InvalidParameterCombination"
        | "MissingParameter"
        | "UnknownParameter"
        | "InvalidKMSKey.NotFound"
        | "InvalidKmsKey.NotFound"
        | "InvalidZone.NotFound"
        | "InvalidAvailabilityZone"
        | "ValidationException" => AwsClass::Invalid,
        "UnauthorizedOperation" | "AccessDeniedException" | "AccessDenied" => AwsClass::Denied,
        "AuthFailure" | "InvalidClientTokenId" | "SignatureDoesNotMatch" | "MissingAuthenticationToken" => {
            AwsClass::Unauthenticated
        }
        "IdempotentParameterMismatch" | "ConflictException" => AwsClass::Conflict,
        _ => AwsClass::Other,
    }
}

/// A failed SDK call as [`Error::Aws`]: the service's error code when it
/// answered, else the SDK's failure kind (no answer is UNAVAILABLE).
pub fn classify<E, R>(what: impl Into<String>, e: SdkError<E, R>) -> Error
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug,
{
    let (code, message) = match &e {
        SdkError::DispatchFailure(d) => ("dispatch failure".to_string(), format!("{d:?}")),
        SdkError::TimeoutError(_) => ("timeout".to_string(), "no answer in time".to_string()),
        SdkError::ResponseError(r) => ("response error".to_string(), format!("{r:?}")),
        SdkError::ConstructionFailure(c) => ("construction failure".to_string(), format!("{c:?}")),
        _ => (
            e.code().unwrap_or("unknown").to_string(),
            e.message().map(str::to_string).unwrap_or_else(|| aws_sdk_ec2::error::DisplayErrorContext(&e).to_string()),
        ),
    };
    let class = class_of(&code);
    Error::Aws { what: what.into(), code, message, class }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_users_meet_have_the_class_the_docs_name() {
        for (code, class) in [
            ("InvalidVolume.NotFound", AwsClass::NotFound),
            ("InvalidInstanceID.Malformed", AwsClass::NotFound),
            ("VolumeInUse", AwsClass::Precondition),
            ("AttachmentLimitExceeded", AwsClass::Exhausted),
            ("RequestLimitExceeded", AwsClass::Unavailable),
            ("UnauthorizedOperation", AwsClass::Denied),
            ("IdempotentParameterMismatch", AwsClass::Conflict),
            ("SomethingNew", AwsClass::Other),
        ] {
            assert_eq!(class_of(code), class, "{code}");
        }
    }
}
