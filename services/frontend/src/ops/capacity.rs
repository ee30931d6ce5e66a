//! Capacity settings: UpdateStreamMode, UpdateStreamWarmThroughput,
//! UpdateAccountSettings and DescribeAccountSettings. Each validates its
//! whole input, then asks the control plane.

use freshet_proto::v1::{
    self as proto, AccountSettings, DescribeAccountSettingsRequest, UpdateAccountSettingsRequest,
    UpdateStreamModeRequest, UpdateStreamWarmThroughputRequest,
};
use freshet_types::CommitmentStatus;
use serde::Deserialize;
use serde_json::{json, Value};

use super::streams::{check_stream_mode, StreamModeDetails};
use super::{epoch_seconds, StreamTarget};
use crate::auth::Caller;
use crate::error::{KinesisError, KinesisResult, Violations};
use crate::Frontend;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateStreamModeInput {
    #[serde(flatten)]
    pub target: StreamTarget,
    pub stream_mode_details: Option<StreamModeDetails>,
    pub warm_throughput_mi_bps: Option<i64>,
}

pub async fn update_stream_mode(
    frontend: &Frontend,
    caller: &Caller,
    input: UpdateStreamModeInput,
) -> KinesisResult<()> {
    let mut violations = Violations::default();
    input.target.check(&mut violations);
    violations.check_required(input.target.stream_arn.as_deref(), "streamARN");
    violations.check_required(input.stream_mode_details.as_ref(), "streamModeDetails");
    let mode = check_stream_mode(input.stream_mode_details.as_ref(), &mut violations);
    violations.check_range(
        input.warm_throughput_mi_bps,
        "warmThroughputMiBps",
        0,
        i64::from(i32::MAX),
    );
    violations.into_result()?;
    let stream = input.target.resolve(caller).await?;
    frontend
        .control_plane
        .clone()
        .update_stream_mode(UpdateStreamModeRequest {
            account_id: stream.account_id,
            region: stream.region,
            stream_name: stream.stream_name,
            stream_mode: proto::StreamMode::from(mode) as i32,
            warm_throughput_mibps: input.warm_throughput_mi_bps.map_or(0, |n| n as u32),
        })
        .await
        .map_err(|status| KinesisError::from_status(&status))?;
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateStreamWarmThroughputInput {
    #[serde(flatten)]
    pub target: StreamTarget,
    pub warm_throughput_mi_bps: Option<i64>,
}

pub async fn update_stream_warm_throughput(
    frontend: &Frontend,
    caller: &Caller,
    input: UpdateStreamWarmThroughputInput,
) -> KinesisResult<Value> {
    let mut violations = Violations::default();
    input.target.check(&mut violations);
    violations.check_required(input.warm_throughput_mi_bps.as_ref(), "warmThroughputMiBps");
    violations.check_range(
        input.warm_throughput_mi_bps,
        "warmThroughputMiBps",
        0,
        i64::from(i32::MAX),
    );
    violations.into_result()?;
    let stream = input.target.resolve(caller).await?;
    let answer = frontend
        .control_plane
        .clone()
        .update_stream_warm_throughput(UpdateStreamWarmThroughputRequest {
            account_id: stream.account_id.clone(),
            region: stream.region.clone(),
            stream_name: stream.stream_name.clone(),
            warm_throughput_mibps: input.warm_throughput_mi_bps.map_or(0, |n| n as u32),
        })
        .await
        .map_err(|status| KinesisError::from_status(&status))?
        .into_inner();
    let warm = answer.warm_throughput.unwrap_or_default();
    Ok(json!({
        "StreamARN": stream.to_string(),
        "StreamName": stream.stream_name,
        "WarmThroughput": { "TargetMiBps": warm.target_mibps, "CurrentMiBps": warm.current_mibps },
    }))
}

fn settings_json(settings: AccountSettings) -> KinesisResult<Value> {
    let status = CommitmentStatus::try_from(settings.commitment_status())
        .map_err(|error| KinesisError::internal(error.to_string()))?;
    let mut commitment = json!({ "Status": status.as_str() });
    for (field, ms) in [
        ("StartedAt", settings.started_at_ms),
        ("EndedAt", settings.ended_at_ms),
        ("EarliestAllowedEndAt", settings.earliest_allowed_end_at_ms),
    ] {
        if ms > 0 {
            commitment[field] = json!(epoch_seconds(ms));
        }
    }
    Ok(json!({ "MinimumThroughputBillingCommitment": commitment }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CommitmentInput {
    pub status: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateAccountSettingsInput {
    pub minimum_throughput_billing_commitment: Option<CommitmentInput>,
}

pub async fn update_account_settings(
    frontend: &Frontend,
    caller: &Caller,
    input: UpdateAccountSettingsInput,
) -> KinesisResult<Value> {
    let mut violations = Violations::default();
    violations.check_required(
        input.minimum_throughput_billing_commitment.as_ref(),
        "minimumThroughputBillingCommitment",
    );
    let status = input
        .minimum_throughput_billing_commitment
        .as_ref()
        .and_then(|c| c.status.as_deref());
    if input.minimum_throughput_billing_commitment.is_some() {
        violations.check_required(status, "minimumThroughputBillingCommitment.status");
    }
    // Only these two may be asked for; ENABLED_UNTIL_EARLIEST_ALLOWED_END
    // is what a too-early disable shows.
    let wanted = status.map(str::parse::<CommitmentStatus>);
    if let (Some(text), Some(Ok(CommitmentStatus::EnabledUntilEarliestAllowedEnd) | Err(_))) =
        (status, &wanted)
    {
        violations.add(
            Some(text),
            "minimumThroughputBillingCommitment.status",
            "Member must satisfy enum value set: [ENABLED, DISABLED]",
        );
    }
    violations.into_result()?;
    caller.authorize("*").await?;
    let settings = frontend
        .control_plane
        .clone()
        .update_account_settings(UpdateAccountSettingsRequest {
            account_id: caller.account_id.clone(),
            enable_commitment: wanted == Some(Ok(CommitmentStatus::Enabled)),
        })
        .await
        .map_err(|status| KinesisError::from_status(&status))?
        .into_inner();
    settings_json(settings)
}

pub async fn describe_account_settings(
    frontend: &Frontend,
    caller: &Caller,
) -> KinesisResult<Value> {
    caller.authorize("*").await?;
    let settings = frontend
        .control_plane
        .clone()
        .describe_account_settings(DescribeAccountSettingsRequest {
            account_id: caller.account_id.clone(),
        })
        .await
        .map_err(|status| KinesisError::from_status(&status))?
        .into_inner();
    settings_json(settings)
}

/// DescribeLimits: the account's shard and on-demand stream limits in the
/// request's region, and what it uses of them now.
pub async fn describe_limits(frontend: &Frontend, caller: &Caller) -> KinesisResult<Value> {
    caller.authorize("*").await?;
    let limits = frontend
        .control_plane
        .clone()
        .describe_limits(freshet_proto::v1::DescribeLimitsRequest {
            account_id: caller.account_id.clone(),
            region: caller.region.clone(),
        })
        .await
        .map_err(|status| KinesisError::from_status(&status))?
        .into_inner();
    Ok(serde_json::json!({
        "ShardLimit": limits.shard_limit,
        "OpenShardCount": limits.open_shard_count,
        "OnDemandStreamCount": limits.on_demand_stream_count,
        "OnDemandStreamCountLimit": limits.on_demand_stream_count_limit,
    }))
}
