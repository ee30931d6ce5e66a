//! Enhanced monitoring: EnableEnhancedMonitoring and
//! DisableEnhancedMonitoring switch a stream's shard-level metrics on and
//! off (`ALL` names every one); the answer says which were on before and
//! which are after. The set reaches this frontend's metrics in the
//! stream's shard-map entries (`metrics.rs`).

use freshet_proto::v1::UpdateShardLevelMetricsRequest;
use freshet_types::{ShardLevelMetric, ShardLevelMetrics};
use serde::Deserialize;
use serde_json::{json, Value};

use super::StreamTarget;
use crate::auth::Caller;
use crate::error::{KinesisError, KinesisResult, Violations};
use crate::Frontend;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct EnhancedMonitoringInput {
    #[serde(flatten)]
    pub target: StreamTarget,
    pub shard_level_metrics: Option<Vec<String>>,
}

/// The enum values the model allows, as its ValidationException lists them.
const METRIC_NAMES: &str = "[IncomingBytes, IncomingRecords, OutgoingBytes, OutgoingRecords, WriteProvisionedThroughputExceeded, ReadProvisionedThroughputExceeded, IteratorAgeMilliseconds, ALL]";

pub async fn enable_enhanced_monitoring(
    frontend: &Frontend,
    caller: &Caller,
    input: EnhancedMonitoringInput,
) -> KinesisResult<Value> {
    switch(frontend, caller, input, true).await
}

pub async fn disable_enhanced_monitoring(
    frontend: &Frontend,
    caller: &Caller,
    input: EnhancedMonitoringInput,
) -> KinesisResult<Value> {
    switch(frontend, caller, input, false).await
}

async fn switch(
    frontend: &Frontend,
    caller: &Caller,
    input: EnhancedMonitoringInput,
    enable: bool,
) -> KinesisResult<Value> {
    let mut violations = Violations::default();
    input.target.check(&mut violations);
    violations.check_required(input.shard_level_metrics.as_ref(), "shardLevelMetrics");
    let given = input.shard_level_metrics.is_some();
    let names = input.shard_level_metrics.unwrap_or_default();
    if given && input_is_out_of_range(&names) {
        violations.add(
            Some(&names.len().to_string()),
            "shardLevelMetrics",
            "Member must have length less than or equal to 7 and greater than or equal to 1",
        );
    }
    for name in &names {
        if name != "ALL" && ShardLevelMetric::parse(name).is_none() {
            violations.add(
                Some(name),
                "shardLevelMetrics.member",
                &format!("Member must satisfy enum value set: {METRIC_NAMES}"),
            );
        }
    }
    violations.into_result()?;
    let metrics = ShardLevelMetrics::parse(names.iter().map(String::as_str))
        .map_err(|name| KinesisError::invalid_argument(format!("Unknown metric {name}.")))?;
    let stream = input.target.resolve(caller).await?;
    let answer = frontend
        .control_plane
        .clone()
        .update_shard_level_metrics(UpdateShardLevelMetricsRequest {
            account_id: stream.account_id.clone(),
            region: stream.region.clone(),
            stream_name: stream.stream_name.clone(),
            enable,
            metrics: metrics.bits(),
        })
        .await
        .map_err(|status| KinesisError::from_status(&status))?
        .into_inner();
    Ok(json!({
        "StreamName": answer.stream_name,
        "StreamARN": answer.stream_arn,
        "CurrentShardLevelMetrics": ShardLevelMetrics::from_bits(answer.current).names(),
        "DesiredShardLevelMetrics": ShardLevelMetrics::from_bits(answer.desired).names(),
    }))
}

fn input_is_out_of_range(names: &[String]) -> bool {
    names.is_empty() || names.len() > 7
}

/// A stream's EnhancedMonitoring member, as DescribeStream and
/// DescribeStreamSummary answer it.
pub fn enhanced_monitoring(bits: u32) -> Value {
    json!([{ "ShardLevelMetrics": ShardLevelMetrics::from_bits(bits).names() }])
}
