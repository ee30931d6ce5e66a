//! Operations that change a stream's shape: SplitShard, MergeShards,
//! UpdateShardCount (the control plane answers at once and reshards in the
//! background while the stream is UPDATING) and UpdateMaxRecordSize. Each
//! validates its whole input first.

use freshet_proto::v1::{
    MergeShardsRequest, SplitShardRequest, UpdateMaxRecordSizeRequest, UpdateShardCountRequest,
};
use serde::Deserialize;
use serde_json::{json, Value};

use super::streams::check_shard_id;
use super::StreamTarget;
use crate::auth::Caller;
use crate::error::{KinesisError, KinesisResult, Violations};
use crate::Frontend;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct SplitShardInput {
    #[serde(flatten)]
    pub target: StreamTarget,
    pub shard_to_split: Option<String>,
    pub new_starting_hash_key: Option<String>,
}

pub async fn split_shard(
    frontend: &Frontend,
    caller: &Caller,
    input: SplitShardInput,
) -> KinesisResult<()> {
    let mut violations = Violations::default();
    input.target.check(&mut violations);
    violations.check_required(input.shard_to_split.as_deref(), "shardToSplit");
    check_shard_id(
        input.shard_to_split.as_deref(),
        "shardToSplit",
        &mut violations,
    );
    violations.check_required(input.new_starting_hash_key.as_deref(), "newStartingHashKey");
    if let Some(key) = input.new_starting_hash_key.as_deref() {
        if !freshet_types::HashKey::matches_pattern(key) {
            violations.add(
                Some(key),
                "newStartingHashKey",
                "Member must satisfy regular expression pattern: 0|([1-9]\\d{0,38})",
            );
        }
    }
    violations.into_result()?;
    // The form is right; the value may still be past the last hash key.
    if let Some(key) = input.new_starting_hash_key.as_deref() {
        freshet_types::HashKey::parse_decimal(key).map_err(|_| {
            KinesisError::invalid_argument(format!(
                "Invalid NewStartingHashKey. NewStartingHashKey must be in the range: [0, 2^128-1]. Specified value was {key}"
            ))
        })?;
    }
    let stream = input.target.resolve(caller).await?;
    frontend
        .control_plane
        .clone()
        .split_shard(SplitShardRequest {
            account_id: stream.account_id,
            region: stream.region,
            stream_name: stream.stream_name,
            shard_to_split: input.shard_to_split.unwrap_or_default(),
            new_starting_hash_key: input.new_starting_hash_key.unwrap_or_default(),
        })
        .await
        .map_err(|status| KinesisError::from_status(&status))?;
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct MergeShardsInput {
    #[serde(flatten)]
    pub target: StreamTarget,
    pub shard_to_merge: Option<String>,
    pub adjacent_shard_to_merge: Option<String>,
}

pub async fn merge_shards(
    frontend: &Frontend,
    caller: &Caller,
    input: MergeShardsInput,
) -> KinesisResult<()> {
    let mut violations = Violations::default();
    input.target.check(&mut violations);
    violations.check_required(input.shard_to_merge.as_deref(), "shardToMerge");
    check_shard_id(
        input.shard_to_merge.as_deref(),
        "shardToMerge",
        &mut violations,
    );
    violations.check_required(
        input.adjacent_shard_to_merge.as_deref(),
        "adjacentShardToMerge",
    );
    check_shard_id(
        input.adjacent_shard_to_merge.as_deref(),
        "adjacentShardToMerge",
        &mut violations,
    );
    violations.into_result()?;
    let stream = input.target.resolve(caller).await?;
    frontend
        .control_plane
        .clone()
        .merge_shards(MergeShardsRequest {
            account_id: stream.account_id,
            region: stream.region,
            stream_name: stream.stream_name,
            shard_to_merge: input.shard_to_merge.unwrap_or_default(),
            adjacent_shard_to_merge: input.adjacent_shard_to_merge.unwrap_or_default(),
        })
        .await
        .map_err(|status| KinesisError::from_status(&status))?;
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateShardCountInput {
    #[serde(flatten)]
    pub target: StreamTarget,
    pub target_shard_count: Option<i64>,
    pub scaling_type: Option<String>,
}

pub async fn update_shard_count(
    frontend: &Frontend,
    caller: &Caller,
    input: UpdateShardCountInput,
) -> KinesisResult<Value> {
    let mut violations = Violations::default();
    input.target.check(&mut violations);
    violations.check_required(input.target_shard_count.as_ref(), "targetShardCount");
    // The model's only bound is the minimum; the most shards a stream
    // may have is the control plane's limit (LimitExceededException).
    violations.check_range(input.target_shard_count, "targetShardCount", 1, i64::MAX);
    violations.check_required(input.scaling_type.as_deref(), "scalingType");
    if let Some(kind) = input.scaling_type.as_deref() {
        if kind != "UNIFORM_SCALING" {
            violations.add(
                Some(kind),
                "scalingType",
                "Member must satisfy enum value set: [UNIFORM_SCALING]",
            );
        }
    }
    violations.into_result()?;
    let stream = input.target.resolve(caller).await?;
    let target = u32::try_from(input.target_shard_count.unwrap_or(1)).unwrap_or(u32::MAX);
    let answer = frontend
        .control_plane
        .clone()
        .update_shard_count(UpdateShardCountRequest {
            account_id: stream.account_id.clone(),
            region: stream.region.clone(),
            stream_name: stream.stream_name.clone(),
            target_shard_count: target,
        })
        .await
        .map_err(|status| KinesisError::from_status(&status))?
        .into_inner();
    Ok(json!({
        "StreamName": stream.stream_name,
        "StreamARN": stream.to_string(),
        "CurrentShardCount": answer.current_shard_count,
        "TargetShardCount": answer.target_shard_count,
    }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct UpdateMaxRecordSizeInput {
    #[serde(flatten)]
    pub target: StreamTarget,
    #[serde(rename = "MaxRecordSizeInKiB")]
    pub max_record_size_in_kib: Option<i64>,
}

pub async fn update_max_record_size(
    frontend: &Frontend,
    caller: &Caller,
    input: UpdateMaxRecordSizeInput,
) -> KinesisResult<()> {
    let mut violations = Violations::default();
    input.target.check(&mut violations);
    violations.check_required(input.max_record_size_in_kib.as_ref(), "maxRecordSizeInKiB");
    violations.check_range(
        input.max_record_size_in_kib,
        "maxRecordSizeInKiB",
        1024,
        10240,
    );
    violations.into_result()?;
    let stream = input.target.resolve(caller).await?;
    frontend
        .control_plane
        .clone()
        .update_max_record_size(UpdateMaxRecordSizeRequest {
            account_id: stream.account_id.clone(),
            region: stream.region.clone(),
            stream_name: stream.stream_name.clone(),
            max_record_size_kib: u32::try_from(input.max_record_size_in_kib.unwrap_or(1024))
                .unwrap_or(1024),
        })
        .await
        .map_err(|status| KinesisError::from_status(&status))?;
    // This frontend's own route picks the new limit up at once.
    frontend.router.invalidate(&stream);
    Ok(())
}
