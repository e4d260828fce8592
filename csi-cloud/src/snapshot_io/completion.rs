//! Waiting for an exported snapshot to become usable.
//!
//! CompleteSnapshot only asks EBS to seal the snapshot: its answer is
//! usually `pending`, and EBS finishes it in the background (seconds to
//! minutes, more for big snapshots). A volume can be created from it, and
//! its blocks read, once EC2's DescribeSnapshots says `completed`; a
//! snapshot EBS could not finish says `error` with a state message. The
//! export waits for one of the two ([`wait_completed`]), polling with
//! backoff, so the CLI returns a usable snapshot, or says why not.

use std::time::Duration;

use aws_sdk_ec2::types::{Snapshot, SnapshotState};

use crate::aws::classify;
use crate::error::AwsClass;
use crate::Error;

/// The first pause between two DescribeSnapshots polls; it doubles up to [`POLL_MAX`].
pub const POLL_FIRST: Duration = Duration::from_millis(500);
/// The longest pause between two polls.
pub const POLL_MAX: Duration = Duration::from_secs(15);
/// How long the export waits by default (`--wait-timeout-minutes`).
pub const DEFAULT_WAIT_MINUTES: u64 = 60;

/// What one DescribeSnapshots answer means for the wait.
#[derive(Debug, PartialEq, Eq)]
pub enum Completion {
    /// Usable.
    Completed,
    /// Not yet: the state EC2 reported (`pending`, or `not visible yet`
    /// while EC2's describe calls catch up with a new snapshot).
    Waiting(String),
}

/// The wait's verdict on one answer: completed, still waiting, or (state
/// `error`) an error naming the snapshot and EBS's reason.
pub fn completion(snapshot_id: &str, found: Option<&Snapshot>) -> Result<Completion, Error> {
    let Some(s) = found else { return Ok(Completion::Waiting("not visible yet".into())) };
    match s.state() {
        Some(SnapshotState::Completed) => Ok(Completion::Completed),
        Some(SnapshotState::Error) => Err(csi_core::Error::Internal(format!(
            "EBS failed snapshot {snapshot_id}: {}",
            s.state_message().filter(|m| !m.is_empty()).unwrap_or("state error, no message")
        ))
        .into()),
        Some(other) => Ok(Completion::Waiting(other.as_str().to_string())),
        None => Ok(Completion::Waiting("no state".into())),
    }
}

/// Polls DescribeSnapshots for `snapshot_id` (at once, then after
/// [`POLL_FIRST`], doubling to [`POLL_MAX`]) until it is `completed`, for at
/// most `timeout`. Returns the number of polls. `error`: the failure EBS
/// reports; past `timeout`: DEADLINE_EXCEEDED naming the last state.
pub async fn wait_completed(ec2: &aws_sdk_ec2::Client, snapshot_id: &str, timeout: Duration) -> Result<u32, Error> {
    let start = tokio::time::Instant::now();
    let mut pause = POLL_FIRST;
    let mut polls = 0;
    loop {
        polls += 1;
        let found = match ec2.describe_snapshots().snapshot_ids(snapshot_id).send().await {
            Ok(out) => out.snapshots().iter().find(|s| s.snapshot_id() == Some(snapshot_id)).cloned(),
            Err(e) => match classify(format!("describe snapshot {snapshot_id}"), e) {
                // EC2's describe calls can lag behind a new snapshot.
                e if e.is_aws(AwsClass::NotFound) => None,
                e => return Err(e),
            },
        };
        let why = match completion(snapshot_id, found.as_ref())? {
            Completion::Completed => return Ok(polls),
            Completion::Waiting(why) => why,
        };
        if start.elapsed() + pause > timeout {
            return Err(csi_core::Error::Timeout {
                what: format!("snapshot {snapshot_id} becoming completed (still {why} after {polls} polls)"),
                after: timeout,
            }
            .into());
        }
        tracing::debug!(snapshot = snapshot_id, state = %why, ?pause, "waiting for the snapshot to complete");
        tokio::time::sleep(pause).await;
        pause = (pause * 2).min(POLL_MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_decide_the_wait() {
        let s = |state: SnapshotState, msg: Option<&str>| {
            Snapshot::builder().snapshot_id("snap-1").state(state).set_state_message(msg.map(str::to_string)).build()
        };
        assert_eq!(completion("snap-1", Some(&s(SnapshotState::Completed, None))).unwrap(), Completion::Completed);
        assert_eq!(
            completion("snap-1", Some(&s(SnapshotState::Pending, None))).unwrap(),
            Completion::Waiting("pending".into())
        );
        assert_eq!(completion("snap-1", None).unwrap(), Completion::Waiting("not visible yet".into()));
        let e = completion("snap-1", Some(&s(SnapshotState::Error, Some("KMS key disabled")))).unwrap_err();
        assert_eq!(e.to_string(), "EBS failed snapshot snap-1: KMS key disabled");
        assert_eq!(e.code(), tonic::Code::Internal);
        let e = completion("snap-1", Some(&s(SnapshotState::Error, None))).unwrap_err();
        assert!(e.to_string().ends_with("state error, no message"), "{e}");
    }
}
