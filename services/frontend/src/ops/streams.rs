//! Control-plane operations: CreateStream, DeleteStream, DescribeStream,
//! DescribeStreamSummary, ListStreams, ListShards. Each validates its whole
//! input first, then calls the control plane.

use std::collections::HashMap;

use freshet_errors::ErrorCode;
use freshet_proto::v1::{
    self as proto, CreateStreamRequest, DeleteStreamRequest, DescribeStreamRequest,
    ListStreamsRequest, ShardInfo, StreamInfo,
};
use freshet_types::{ShardId, StreamArn, StreamMode, StreamStatus};
use serde::Deserialize;
use serde_json::{json, Value};

use super::shard_filter::Selection;
use super::{epoch_seconds, StreamTarget};
use crate::auth::Caller;
use crate::error::{KinesisError, KinesisResult, Violations};
use crate::iterator::Domain;
use crate::Frontend;

/// NextTokens expire like Kinesis's (ExpiredNextTokenException).
const NEXT_TOKEN_LIFETIME_MS: i64 = 300_000;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct StreamModeDetails {
    pub stream_mode: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct CreateStreamInput {
    pub stream_name: Option<String>,
    pub shard_count: Option<i64>,
    pub stream_mode_details: Option<StreamModeDetails>,
    pub tags: Option<HashMap<String, String>>,
    pub warm_throughput_mi_bps: Option<i64>,
    #[serde(rename = "MaxRecordSizeInKiB")]
    pub max_record_size_in_kib: Option<i64>,
    pub record_distribution_strategy: Option<String>,
}

pub(crate) fn check_stream_mode(
    details: Option<&StreamModeDetails>,
    violations: &mut Violations,
) -> StreamMode {
    let Some(details) = details else {
        return StreamMode::Provisioned;
    };
    let Some(text) = details.stream_mode.as_deref() else {
        violations.add(
            None,
            "streamModeDetails.streamMode",
            "Member must not be null",
        );
        return StreamMode::Provisioned;
    };
    match text.parse::<StreamMode>() {
        Ok(mode) => mode,
        Err(_) => {
            let other = text;
            violations.add(
                Some(other),
                "streamModeDetails.streamMode",
                "Member must satisfy enum value set: [PROVISIONED, ON_DEMAND]",
            );
            StreamMode::Provisioned
        }
    }
}

pub async fn create_stream(
    frontend: &Frontend,
    caller: &Caller,
    input: CreateStreamInput,
) -> KinesisResult<()> {
    let mut violations = Violations::default();
    violations.check_required(input.stream_name.as_ref(), "streamName");
    violations.check_stream_name(input.stream_name.as_deref(), "streamName");
    violations.check_range(input.shard_count, "shardCount", 1, i64::from(i32::MAX));
    violations.check_range(
        input.max_record_size_in_kib,
        "maxRecordSizeInKiB",
        1024,
        10240,
    );
    violations.check_range(
        input.warm_throughput_mi_bps,
        "warmThroughputMiBps",
        0,
        i64::from(i32::MAX),
    );
    let mode = check_stream_mode(input.stream_mode_details.as_ref(), &mut violations);
    super::tags::check_tags(input.tags.as_ref(), &mut violations);
    if let Some(strategy) = input.record_distribution_strategy.as_deref() {
        if strategy != "AUTO" && strategy != "USER_PARTITION_KEY" {
            violations.add(
                Some(strategy),
                "recordDistributionStrategy",
                "Member must satisfy enum value set: [AUTO, USER_PARTITION_KEY]",
            );
        }
    }
    violations.into_result()?;
    let stream = caller.own_stream(input.stream_name.as_deref().unwrap_or_default());
    caller.authorize_stream(&stream).await?;

    if mode == StreamMode::Provisioned && input.shard_count.is_none() {
        return Err(KinesisError::invalid_argument(
            "ShardCount is required for a stream in PROVISIONED mode.",
        ));
    }
    let tags = super::tags::checked_new_tags(input.tags.as_ref())?;
    if !tags.is_empty() {
        caller
            .authorize_stream_also("kinesis:AddTagsToStream", &stream)
            .await?;
    }
    let request = CreateStreamRequest {
        account_id: stream.account_id,
        region: stream.region,
        stream_name: stream.stream_name,
        shard_count: input.shard_count.map(|n| n as u32).unwrap_or(0),
        stream_mode: proto::StreamMode::from(mode) as i32,
        max_record_size_kib: input.max_record_size_in_kib.map(|n| n as u32).unwrap_or(0),
        warm_throughput_mibps: input.warm_throughput_mi_bps.map(|n| n as u32).unwrap_or(0),
        tags,
        auto_record_distribution: input.record_distribution_strategy.as_deref() == Some("AUTO"),
    };
    frontend
        .control_plane
        .clone()
        .create_stream(request)
        .await
        .map_err(|status| KinesisError::from_status(&status))?;
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DeleteStreamInput {
    #[serde(flatten)]
    pub target: StreamTarget,
    pub enforce_consumer_deletion: Option<bool>,
}

pub async fn delete_stream(
    frontend: &Frontend,
    caller: &Caller,
    input: DeleteStreamInput,
) -> KinesisResult<()> {
    let mut violations = Violations::default();
    input.target.check(&mut violations);
    violations.into_result()?;
    let stream = input.target.resolve(caller).await?;
    frontend
        .control_plane
        .clone()
        .delete_stream(DeleteStreamRequest {
            account_id: stream.account_id,
            region: stream.region,
            stream_name: stream.stream_name,
            enforce_consumer_deletion: input.enforce_consumer_deletion.unwrap_or(false),
        })
        .await
        .map_err(|status| KinesisError::from_status(&status))?;
    Ok(())
}

/// The stream as the control plane describes it, for `api_operation`.
pub(crate) async fn fetch_stream(
    frontend: &Frontend,
    stream: &StreamArn,
    api_operation: &str,
) -> KinesisResult<StreamInfo> {
    frontend
        .control_plane
        .clone()
        .describe_stream(DescribeStreamRequest {
            account_id: stream.account_id.clone(),
            region: stream.region.clone(),
            stream_name: stream.stream_name.clone(),
            api_operation: api_operation.to_owned(),
        })
        .await
        .map_err(|status| KinesisError::from_status(&status))?
        .into_inner()
        .stream
        .ok_or_else(|| KinesisError::internal("control plane returned no stream"))
}

/// The stream's mode as Kinesis spells it.
fn mode_name(stream: &StreamInfo) -> KinesisResult<&'static str> {
    StreamMode::try_from(stream.stream_mode())
        .map(StreamMode::as_str)
        .map_err(|error| KinesisError::internal(error.to_string()))
}

/// The stream's status as Kinesis spells it.
fn status_name(stream: &StreamInfo) -> KinesisResult<&'static str> {
    StreamStatus::try_from(stream.status())
        .map(StreamStatus::as_str)
        .map_err(|error| KinesisError::internal(error.to_string()))
}

fn shard_json(shard: &ShardInfo) -> Value {
    let mut value = json!({
        "ShardId": shard.shard_id,
        "HashKeyRange": {
            "StartingHashKey": shard.starting_hash_key,
            "EndingHashKey": shard.ending_hash_key,
        },
        "SequenceNumberRange": { "StartingSequenceNumber": shard.starting_sequence_number },
    });
    if !shard.parent_shard_id.is_empty() {
        value["ParentShardId"] = json!(shard.parent_shard_id);
    }
    if !shard.adjacent_parent_shard_id.is_empty() {
        value["AdjacentParentShardId"] = json!(shard.adjacent_parent_shard_id);
    }
    if !shard.ending_sequence_number.is_empty() {
        value["SequenceNumberRange"]["EndingSequenceNumber"] = json!(shard.ending_sequence_number);
    }
    value
}

pub(crate) fn check_shard_id(value: Option<&str>, field: &str, violations: &mut Violations) {
    violations.check_length(value, field, 1, 128);
    if let Some(id) = value {
        if !id.is_empty() && !freshet_types::is_valid_stream_name(id) {
            violations.add(
                value,
                field,
                "Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+",
            );
        }
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct DescribeStreamInput {
    #[serde(flatten)]
    pub target: StreamTarget,
    pub limit: Option<i64>,
    pub exclusive_start_shard_id: Option<String>,
}

pub async fn describe_stream(
    frontend: &Frontend,
    caller: &Caller,
    input: DescribeStreamInput,
) -> KinesisResult<Value> {
    let mut violations = Violations::default();
    input.target.check(&mut violations);
    violations.check_range(input.limit, "limit", 1, 10_000);
    check_shard_id(
        input.exclusive_start_shard_id.as_deref(),
        "exclusiveStartShardId",
        &mut violations,
    );
    violations.into_result()?;
    let stream = fetch_stream(
        frontend,
        &input.target.resolve(caller).await?,
        "DescribeStream",
    )
    .await?;
    // The default is 100, and so is the most one call returns.
    let limit = input.limit.unwrap_or(100).min(100) as usize;
    let after = input
        .exclusive_start_shard_id
        .as_deref()
        .map(normalize_shard_id);
    // As ListShards: a shard closed before the trim horizon has expired.
    let trim_horizon_ms = frontend.trim_horizon_ms(&stream);
    let remaining: Vec<&ShardInfo> = stream
        .shards
        .iter()
        .filter(|s| {
            after
                .as_deref()
                .is_none_or(|after| s.shard_id.as_str() > after)
        })
        .filter(|s| Selection::FromTrimHorizon.selects(s, trim_horizon_ms))
        .collect();
    let shards: Vec<Value> = remaining
        .iter()
        .take(limit)
        .map(|s| shard_json(s))
        .collect();
    Ok(json!({
        "StreamDescription": {
            "StreamName": stream.stream_name,
            "StreamARN": stream.stream_arn,
            "StreamStatus": status_name(&stream)?,
            "StreamModeDetails": { "StreamMode": mode_name(&stream)? },
            "Shards": shards,
            "HasMoreShards": remaining.len() > limit,
            "RetentionPeriodHours": stream.retention_hours,
            "StreamCreationTimestamp": epoch_seconds(stream.created_at_ms),
            "EnhancedMonitoring": super::monitoring::enhanced_monitoring(stream.shard_level_metrics),
            "EncryptionType": "NONE",
        }
    }))
}

pub async fn describe_stream_summary(
    frontend: &Frontend,
    caller: &Caller,
    input: StreamTarget,
) -> KinesisResult<Value> {
    let mut violations = Violations::default();
    input.check(&mut violations);
    violations.into_result()?;
    let stream = fetch_stream(
        frontend,
        &input.resolve(caller).await?,
        "DescribeStreamSummary",
    )
    .await?;
    let mut summary = json!({
        "StreamDescriptionSummary": {
            "StreamName": stream.stream_name,
            "StreamARN": stream.stream_arn,
            "StreamStatus": status_name(&stream)?,
            "StreamModeDetails": { "StreamMode": mode_name(&stream)? },
            "RetentionPeriodHours": stream.retention_hours,
            "StreamCreationTimestamp": epoch_seconds(stream.created_at_ms),
            "EnhancedMonitoring": super::monitoring::enhanced_monitoring(stream.shard_level_metrics),
            "EncryptionType": "NONE",
            "OpenShardCount": stream.open_shard_count,
            "ConsumerCount": stream.consumer_count,
            "MaxRecordSizeInKiB": stream.max_record_size_kib,
            "ChannelCount": 0,
            "QueueCount": 0,
        }
    });
    // Only on-demand streams have a record distribution strategy.
    if mode_name(&stream)? == "ON_DEMAND" {
        summary["StreamDescriptionSummary"]["RecordDistributionStrategy"] =
            json!(if stream.auto_record_distribution {
                "AUTO"
            } else {
                "USER_PARTITION_KEY"
            });
    }
    if let Some(warm) = &stream.warm_throughput {
        summary["StreamDescriptionSummary"]["WarmThroughput"] = json!({
            "TargetMiBps": warm.target_mibps,
            "CurrentMiBps": warm.current_mibps,
        });
    }
    Ok(summary)
}

/// `shardId-7` is accepted for `shardId-000000000007`, as Kinesis does.
pub(crate) fn normalize_shard_id(text: &str) -> String {
    ShardId::parse(text)
        .map(|id| id.to_string())
        .unwrap_or_else(|| text.to_owned())
}

/// What a NextToken carries.
#[derive(Debug, serde::Serialize, Deserialize)]
pub(crate) struct PageToken {
    /// The stream's ARN (ListShards, ListStreamConsumers) — empty for ListStreams.
    pub s: String,
    /// Exclusive start: the last stream name, shard id or consumer name returned.
    pub a: String,
    /// Issued at, ms.
    pub t: i64,
    /// ListShards: the shard filter type, if any (kept across pages).
    #[serde(default)]
    pub f: Option<String>,
    /// ListShards: the shard filter's timestamp (ms), if any.
    #[serde(default)]
    pub ts: Option<i64>,
}

pub(crate) fn seal_token(frontend: &Frontend, token: &PageToken) -> String {
    frontend.signer.seal(
        Domain::NextToken,
        &serde_json::to_vec(token).unwrap_or_default(),
    )
}

pub(crate) fn open_token(frontend: &Frontend, text: &str) -> KinesisResult<PageToken> {
    let token: PageToken = frontend
        .signer
        .open(Domain::NextToken, text)
        .and_then(|bytes| serde_json::from_slice(&bytes).ok())
        .ok_or_else(|| KinesisError::invalid_argument(format!("Invalid NextToken: {text}")))?;
    if frontend.now_ms().saturating_sub(token.t) > NEXT_TOKEN_LIFETIME_MS {
        return Err(KinesisError::new(
            ErrorCode::ExpiredNextToken,
            "The NextToken has expired.",
        ));
    }
    Ok(token)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListStreamsInput {
    pub limit: Option<i64>,
    pub exclusive_start_stream_name: Option<String>,
    pub next_token: Option<String>,
}

pub async fn list_streams(
    frontend: &Frontend,
    caller: &Caller,
    input: ListStreamsInput,
) -> KinesisResult<Value> {
    let mut violations = Violations::default();
    violations.check_range(input.limit, "limit", 1, 10_000);
    violations.check_stream_name(
        input.exclusive_start_stream_name.as_deref(),
        "exclusiveStartStreamName",
    );
    violations.check_length(input.next_token.as_deref(), "nextToken", 1, 1_048_576);
    violations.into_result()?;
    caller.authorize("*").await?;
    if input.next_token.is_some() && input.exclusive_start_stream_name.is_some() {
        return Err(KinesisError::invalid_argument(
            "NextToken and ExclusiveStartStreamName cannot be provided together.",
        ));
    }
    let after = match input.next_token.as_deref() {
        Some(token) => Some(open_token(frontend, token)?.a),
        None => input.exclusive_start_stream_name,
    };
    // The default is 100, and so is the most one call returns.
    let limit = input.limit.unwrap_or(100).min(100) as usize;
    let streams = frontend
        .control_plane
        .clone()
        .list_streams(ListStreamsRequest {
            account_id: caller.account_id.clone(),
            region: caller.region.clone(),
        })
        .await
        .map_err(|status| KinesisError::from_status(&status))?
        .into_inner()
        .streams;
    let remaining: Vec<&StreamInfo> = streams
        .iter()
        .filter(|s| {
            after
                .as_deref()
                .is_none_or(|after| s.stream_name.as_str() > after)
        })
        .collect();
    let page = &remaining[..remaining.len().min(limit)];
    let has_more = remaining.len() > limit;
    let mut output = json!({
        "StreamNames": page.iter().map(|s| s.stream_name.clone()).collect::<Vec<_>>(),
        "HasMoreStreams": has_more,
        "StreamSummaries": page.iter().map(|s| Ok(json!({
            "StreamName": s.stream_name,
            "StreamARN": s.stream_arn,
            "StreamStatus": status_name(s)?,
            "StreamModeDetails": { "StreamMode": mode_name(s)? },
            "StreamCreationTimestamp": epoch_seconds(s.created_at_ms),
        }))).collect::<KinesisResult<Vec<_>>>()?,
    });
    if let (true, Some(last)) = (has_more, page.last()) {
        output["NextToken"] = json!(seal_token(
            frontend,
            &PageToken {
                s: String::new(),
                a: last.stream_name.clone(),
                t: frontend.now_ms(),
                f: None,
                ts: None,
            }
        ));
    }
    Ok(output)
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ShardFilter {
    #[serde(rename = "Type")]
    pub filter_type: Option<String>,
    pub shard_id: Option<String>,
    pub timestamp: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListShardsInput {
    #[serde(flatten)]
    pub target: StreamTarget,
    pub next_token: Option<String>,
    pub exclusive_start_shard_id: Option<String>,
    pub max_results: Option<i64>,
    pub stream_creation_timestamp: Option<f64>,
    pub shard_filter: Option<ShardFilter>,
}

const SHARD_FILTER_TYPES: [&str; 6] = [
    "AFTER_SHARD_ID",
    "AT_TRIM_HORIZON",
    "FROM_TRIM_HORIZON",
    "AT_LATEST",
    "AT_TIMESTAMP",
    "FROM_TIMESTAMP",
];

pub async fn list_shards(
    frontend: &Frontend,
    caller: &Caller,
    input: ListShardsInput,
) -> KinesisResult<Value> {
    let mut violations = Violations::default();
    input.target.check(&mut violations);
    violations.check_length(input.next_token.as_deref(), "nextToken", 1, 1_048_576);
    check_shard_id(
        input.exclusive_start_shard_id.as_deref(),
        "exclusiveStartShardId",
        &mut violations,
    );
    violations.check_range(input.max_results, "maxResults", 1, 10_000);
    if let Some(filter) = &input.shard_filter {
        violations.check_required(filter.filter_type.as_ref(), "shardFilter.type");
        if let Some(kind) = filter.filter_type.as_deref() {
            if !SHARD_FILTER_TYPES.contains(&kind) {
                violations.add(
                    Some(kind),
                    "shardFilter.type",
                    &format!(
                        "Member must satisfy enum value set: [{}]",
                        SHARD_FILTER_TYPES.join(", ")
                    ),
                );
            }
        }
        check_shard_id(
            filter.shard_id.as_deref(),
            "shardFilter.shardId",
            &mut violations,
        );
    }
    violations.into_result()?;

    let token = match input.next_token.as_deref() {
        Some(text) => {
            if input.target.stream_name.is_some() || input.target.stream_arn.is_some() {
                return Err(KinesisError::invalid_argument(
                    "NextToken and StreamName cannot be provided together.",
                ));
            }
            if input.exclusive_start_shard_id.is_some() || input.shard_filter.is_some() {
                return Err(KinesisError::invalid_argument(
                    "NextToken cannot be combined with ExclusiveStartShardId or ShardFilter.",
                ));
            }
            Some(open_token(frontend, text)?)
        }
        None => None,
    };
    let (filter_type, filter_timestamp_ms) = match (&token, &input.shard_filter) {
        (Some(token), _) => (token.f.clone(), token.ts),
        (None, Some(filter)) => (
            filter.filter_type.clone(),
            filter
                .timestamp
                .map(|seconds| (seconds * 1000.0).round() as i64),
        ),
        (None, None) => (None, None),
    };
    if let Some(filter) = &input.shard_filter {
        match filter.filter_type.as_deref() {
            Some("AFTER_SHARD_ID") if filter.shard_id.is_none() => {
                return Err(KinesisError::invalid_argument(
                    "ShardId must be specified for ShardFilter type AFTER_SHARD_ID.",
                ));
            }
            Some("AT_TIMESTAMP" | "FROM_TIMESTAMP") if filter.timestamp.is_none() => {
                return Err(KinesisError::invalid_argument("Timestamp must be specified for ShardFilter types AT_TIMESTAMP and FROM_TIMESTAMP."));
            }
            _ => {}
        }
    }
    let target = match &token {
        Some(token) => {
            let stream = StreamArn::parse(&token.s)
                .filter(|stream| stream.region == caller.region)
                .ok_or_else(|| {
                    KinesisError::invalid_argument(format!(
                        "Invalid NextToken: {}",
                        input.next_token.as_deref().unwrap_or_default()
                    ))
                })?;
            caller.authorize_stream(&stream).await?;
            stream
        }
        None => input.target.resolve(caller).await?,
    };
    let stream = fetch_stream(frontend, &target, "ListShards").await?;
    if let Some(created) = input.stream_creation_timestamp {
        if (created * 1000.0).round() as i64 != stream.created_at_ms {
            return Err(KinesisError::resource_not_found(format!(
                "Stream {} under account {} with the given creation timestamp not found.",
                target.stream_name, target.account_id
            )));
        }
    }
    let after = match (&token, &input.exclusive_start_shard_id, &input.shard_filter) {
        (Some(token), _, _) => Some(token.a.clone()),
        (None, Some(id), _) => Some(normalize_shard_id(id)),
        (None, None, Some(filter)) if filter.filter_type.as_deref() == Some("AFTER_SHARD_ID") => {
            filter.shard_id.as_deref().map(normalize_shard_id)
        }
        _ => None,
    };
    let selection = Selection::of(filter_type.as_deref(), filter_timestamp_ms);
    let trim_horizon_ms = frontend.trim_horizon_ms(&stream);
    let remaining: Vec<&ShardInfo> = stream
        .shards
        .iter()
        .filter(|s| {
            after
                .as_deref()
                .is_none_or(|after| s.shard_id.as_str() > after)
        })
        .filter(|s| selection.selects(s, trim_horizon_ms))
        .collect();
    // The default is 1,000, and so is the most one call returns.
    let limit = input.max_results.unwrap_or(1000).min(1000) as usize;
    let page = &remaining[..remaining.len().min(limit)];
    let mut output = json!({ "Shards": page.iter().map(|s| shard_json(s)).collect::<Vec<_>>() });
    if let (true, Some(last)) = (remaining.len() > limit, page.last()) {
        output["NextToken"] = json!(seal_token(
            frontend,
            &PageToken {
                s: target.to_string(),
                a: last.shard_id.clone(),
                t: frontend.now_ms(),
                f: filter_type,
                ts: filter_timestamp_ms,
            }
        ));
    }
    Ok(output)
}
