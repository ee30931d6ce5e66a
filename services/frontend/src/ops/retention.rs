//! IncreaseStreamRetentionPeriod and DecreaseStreamRetentionPeriod: the
//! period (24 to 8,760 hours) is checked here, the direction against the
//! stream's current period by the control plane under the stream's row
//! lock (`services/control-plane/src/retention.rs`). Readers and workers
//! apply the new period as its shard-map entries arrive.

use freshet_proto::v1::UpdateRetentionPeriodRequest;
use serde::Deserialize;

use super::StreamTarget;
use crate::auth::Caller;
use crate::error::{KinesisError, KinesisResult, Violations};
use crate::Frontend;

/// The shortest and longest retention periods Kinesis allows, in hours.
pub const MIN_RETENTION_HOURS: i64 = 24;
pub const MAX_RETENTION_HOURS: i64 = 8_760;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RetentionPeriodInput {
    #[serde(flatten)]
    pub target: StreamTarget,
    pub retention_period_hours: Option<i64>,
}

pub async fn increase_stream_retention_period(
    frontend: &Frontend,
    caller: &Caller,
    input: RetentionPeriodInput,
) -> KinesisResult<()> {
    change(frontend, caller, input, true).await
}

pub async fn decrease_stream_retention_period(
    frontend: &Frontend,
    caller: &Caller,
    input: RetentionPeriodInput,
) -> KinesisResult<()> {
    change(frontend, caller, input, false).await
}

async fn change(
    frontend: &Frontend,
    caller: &Caller,
    input: RetentionPeriodInput,
    increase: bool,
) -> KinesisResult<()> {
    let mut violations = Violations::default();
    input.target.check(&mut violations);
    violations.check_required(
        input.retention_period_hours.as_ref(),
        "retentionPeriodHours",
    );
    violations.into_result()?;
    let hours = input.retention_period_hours.unwrap_or(MIN_RETENTION_HOURS);
    check_period(hours)?;
    let stream = input.target.resolve(caller).await?;
    frontend
        .control_plane
        .clone()
        .update_retention_period(UpdateRetentionPeriodRequest {
            account_id: stream.account_id.clone(),
            region: stream.region.clone(),
            stream_name: stream.stream_name.clone(),
            retention_hours: u32::try_from(hours).unwrap_or(u32::MAX),
            increase,
        })
        .await
        .map_err(|status| KinesisError::from_status(&status))?;
    Ok(())
}

/// A period outside 24..=8760 hours, with Kinesis's messages. The model
/// gives the member no range, so this is InvalidArgumentException, not
/// ValidationException.
fn check_period(hours: i64) -> KinesisResult<()> {
    if hours < MIN_RETENTION_HOURS {
        return Err(KinesisError::invalid_argument(format!(
            "Minimum allowed retention period is {MIN_RETENTION_HOURS} hours. Requested retention period ({hours} hours) is too short."
        )));
    }
    if hours > MAX_RETENTION_HOURS {
        return Err(KinesisError::invalid_argument(format!(
            "Maximum allowed retention period is {MAX_RETENTION_HOURS} hours. Requested retention period ({hours} hours) is too long."
        )));
    }
    Ok(())
}
