//! GetShardIterator and GetRecords: iterators are signed positions; a
//! read follows the shard across its segments and, at a closed shard's
//! end, names the shards that continue its keys.

use freshet_errors::ErrorCode;
use freshet_proto::v1::read_request::Start;
use freshet_proto::v1::{ShardMapEntry, ShardState};
use freshet_shardmap::StreamRoute;
use freshet_types::SequenceNumber;
use serde::Deserialize;
use serde_json::{json, Value};

use super::super::replies::{GetRecordsReply, ReadRecords};
use super::super::shard_reads::read_shard;
use super::super::streams::normalize_shard_id;
use super::super::{to_json_text, StreamTarget};
use super::{
    dry_run_error, rate_exceeded, refused_before_acting, route_stream, shard_id_of, shard_tail,
};
use crate::auth::Caller;
use crate::error::{KinesisError, KinesisResult, Violations};
use crate::iterator::{Position, ShardIterator};
use crate::metrics::ReadOutcome;
use crate::Frontend;

/// Shard iterators are valid for five minutes.
const ITERATOR_LIFETIME_MS: i64 = 300_000;

/// The shards that continue a closed shard's keys, as GetRecords lists them.
pub(super) fn child_shards(route: &StreamRoute, parent: &str) -> Vec<Value> {
    route
        .entries
        .iter()
        .filter(|child| child.parent_shard_id == parent || child.adjacent_parent_shard_id == parent)
        .map(|child| {
            let parents: Vec<&String> = [&child.parent_shard_id, &child.adjacent_parent_shard_id]
                .into_iter()
                .filter(|p| !p.is_empty())
                .collect();
            json!({
                "ShardId": shard_id_of(child),
                "ParentShards": parents,
                "HashKeyRange": {
                    "StartingHashKey": child.starting_hash_key,
                    "EndingHashKey": child.ending_hash_key,
                },
            })
        })
        .collect()
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetShardIteratorInput {
    #[serde(flatten)]
    pub target: StreamTarget,
    pub shard_id: Option<String>,
    pub shard_iterator_type: Option<String>,
    pub starting_sequence_number: Option<String>,
    pub timestamp: Option<f64>,
    pub dry_run: Option<bool>,
}

const ITERATOR_TYPES: [&str; 5] = [
    "AT_SEQUENCE_NUMBER",
    "AFTER_SEQUENCE_NUMBER",
    "TRIM_HORIZON",
    "LATEST",
    "AT_TIMESTAMP",
];

pub async fn get_shard_iterator(
    frontend: &Frontend,
    caller: &Caller,
    input: GetShardIteratorInput,
) -> KinesisResult<Value> {
    let mut violations = Violations::default();
    input.target.check(&mut violations);
    violations.check_required(input.shard_id.as_ref(), "shardId");
    super::super::streams::check_shard_id(input.shard_id.as_deref(), "shardId", &mut violations);
    violations.check_required(input.shard_iterator_type.as_ref(), "shardIteratorType");
    if let Some(kind) = input.shard_iterator_type.as_deref() {
        if !ITERATOR_TYPES.contains(&kind) {
            violations.add(Some(kind), "shardIteratorType", "Member must satisfy enum value set: [AFTER_SEQUENCE_NUMBER, AT_SEQUENCE_NUMBER, AT_TIMESTAMP, TRIM_HORIZON, LATEST]");
        }
    }
    if let Some(sequence) = input.starting_sequence_number.as_deref() {
        if !freshet_types::is_sequence_number_pattern(sequence) {
            violations.add(
                Some(sequence),
                "startingSequenceNumber",
                "Member must satisfy regular expression pattern: 0|([1-9]\\d{0,128})",
            );
        }
    }
    violations.into_result()?;
    let kind = input.shard_iterator_type.as_deref().unwrap_or_default();
    let stream = input.target.resolve(caller).await?;
    let shard_id = normalize_shard_id(input.shard_id.as_deref().unwrap_or_default());
    let needs_sequence = matches!(kind, "AT_SEQUENCE_NUMBER" | "AFTER_SEQUENCE_NUMBER");
    if needs_sequence && input.starting_sequence_number.is_none() {
        return Err(KinesisError::invalid_argument(format!(
            "StartingSequenceNumber must be specified for ShardIteratorType {kind}."
        )));
    }
    if !needs_sequence && input.starting_sequence_number.is_some() {
        return Err(KinesisError::invalid_argument(format!(
            "StartingSequenceNumber cannot be specified for ShardIteratorType {kind}."
        )));
    }
    if kind == "AT_TIMESTAMP" && input.timestamp.is_none() {
        return Err(KinesisError::invalid_argument(
            "Timestamp must be specified for ShardIteratorType AT_TIMESTAMP.",
        ));
    }
    if kind != "AT_TIMESTAMP" && input.timestamp.is_some() {
        return Err(KinesisError::invalid_argument(format!(
            "Timestamp cannot be specified for ShardIteratorType {kind}."
        )));
    }
    let route = route_stream(frontend, &stream).await?;
    let entry = route.shard(&shard_id).cloned().ok_or_else(|| {
        KinesisError::resource_not_found(format!(
            "Shard {shard_id} in stream {} under account {} does not exist",
            stream.stream_name, stream.account_id
        ))
    })?;
    let position = match kind {
        "TRIM_HORIZON" => Position::AtOffset(0),
        "AT_TIMESTAMP" => {
            Position::AtTimestampMs((input.timestamp.unwrap_or_default() * 1000.0).round() as i64)
        }
        "LATEST" => Position::AtOffset(shard_tail(frontend, &entry).await?),
        _ => {
            let text = input
                .starting_sequence_number
                .as_deref()
                .unwrap_or_default();
            let sequence = SequenceNumber::parse(text)
                .ok()
                .flatten()
                .filter(|s| s.base == entry.sequence_base)
                .ok_or_else(|| {
                    KinesisError::invalid_argument(format!(
                        "StartingSequenceNumber {text} used in GetShardIterator on shard {shard_id} in stream {} under account {} is invalid because it did not come from this stream.",
                        stream.stream_name, stream.account_id
                    ))
                })?;
            if kind == "AFTER_SEQUENCE_NUMBER" {
                Position::AtOffset(sequence.offset.saturating_add(1))
            } else {
                Position::AtOffset(sequence.offset)
            }
        }
    };
    if input.dry_run == Some(true) {
        return Err(dry_run_error());
    }
    let iterator = ShardIterator {
        issued_ms: frontend.now_ms(),
        stream_uid: entry.key.as_ref().map(|k| k.stream_uid).unwrap_or_default(),
        stream_created_ms: entry.stream_created_at_ms,
        position,
        stream,
        shard_id,
    };
    Ok(json!({ "ShardIterator": frontend.signer.encode_iterator(&iterator) }))
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetRecordsInput {
    pub shard_iterator: Option<String>,
    pub limit: Option<i64>,
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
    pub stream_id: Option<String>,
    pub dry_run: Option<bool>,
}

pub async fn get_records(
    frontend: &Frontend,
    caller: &Caller,
    input: GetRecordsInput,
) -> KinesisResult<String> {
    let started = std::time::Instant::now();
    let mut violations = Violations::default();
    violations.check_required(input.shard_iterator.as_ref(), "shardIterator");
    violations.check_length(input.shard_iterator.as_deref(), "shardIterator", 1, 512);
    violations.check_range(input.limit, "limit", 1, 10_000);
    StreamTarget {
        stream_name: None,
        stream_arn: input.stream_arn.clone(),
        stream_id: input.stream_id.clone(),
    }
    .check(&mut violations);
    violations.into_result()?;
    let text = input.shard_iterator.as_deref().unwrap_or_default();
    // An iterator may name another account's stream (one its resource
    // policy lets the caller read): the caller is authorized on the stream
    // the iterator names, now, whoever it was issued to.
    let iterator = frontend
        .signer
        .decode_iterator(text)
        .filter(|it| it.stream.region == caller.region)
        .ok_or_else(|| KinesisError::invalid_argument("Invalid ShardIterator."))?;
    caller.authorize_stream(&iterator.stream).await?;
    if let Some(arn) = input
        .stream_arn
        .as_deref()
        .and_then(freshet_types::StreamArn::parse)
    {
        if arn.account_id != iterator.stream.account_id
            || arn.stream_name != iterator.stream.stream_name
        {
            return Err(KinesisError::invalid_argument(format!(
                "The shard iterator does not belong to stream {}.",
                arn.stream_name
            )));
        }
    }
    let now = frontend.now_ms();
    if now.saturating_sub(iterator.issued_ms) > ITERATOR_LIFETIME_MS {
        return Err(KinesisError::new(
            ErrorCode::ExpiredIterator,
            format!(
                "Iterator expired. The iterator was created at time {} while right now it is {} which is further in the future than the tolerated delay of {ITERATOR_LIFETIME_MS} milliseconds.",
                iterator.issued_ms, now
            ),
        ));
    }
    if input.dry_run == Some(true) {
        return Err(dry_run_error());
    }
    let not_found = || {
        KinesisError::resource_not_found(format!(
            "Shard {} in stream {} under account {} does not exist",
            iterator.shard_id, iterator.stream.stream_name, iterator.stream.account_id
        ))
    };
    let stream_route = route_stream(frontend, &iterator.stream).await?;
    let mut entry = stream_route
        .shard(&iterator.shard_id)
        .filter(|e| e.key.as_ref().map(|k| k.stream_uid) == Some(iterator.stream_uid))
        .cloned()
        .ok_or_else(not_found)?;
    let start = match iterator.position {
        Position::AtOffset(offset) => Start::AtOffset(offset),
        Position::AtTimestampMs(ms) => Start::AtTimestampMs(ms),
    };
    let limit = input.limit.unwrap_or(10_000) as u32;
    let mut attempt = 0;
    let (read, from_sealed_segment) = loop {
        match read_shard(frontend, &entry, start, limit).await {
            Ok(read) => break (read.response, read.sealed),
            Err(status)
                if ErrorCode::of_status(&status) == ErrorCode::ProvisionedThroughputExceeded =>
            {
                frontend.metrics.get_records(
                    (&iterator.stream, enabled_metrics(&entry)),
                    &iterator.shard_id,
                    started,
                    None,
                );
                return Err(rate_exceeded(&entry));
            }
            Err(status) if attempt == 0 && refused_before_acting(&status) => {
                attempt += 1;
                frontend.router.invalidate(&iterator.stream);
                let fresh = route_stream(frontend, &iterator.stream).await?;
                entry = fresh
                    .shard(&iterator.shard_id)
                    .filter(|e| e.key.as_ref().map(|k| k.stream_uid) == Some(iterator.stream_uid))
                    .cloned()
                    .ok_or_else(not_found)?;
            }
            Err(status) => {
                return Err(KinesisError::internal(format!(
                    "read from {} failed: {}",
                    iterator.shard_id,
                    status.message()
                )));
            }
        }
    };
    // A sealed segment knows nothing newer than its own end: how far
    // behind its last record is, is measured against now.
    let millis_behind_latest = if from_sealed_segment {
        read.records
            .last()
            .map_or(0, |last| (now - last.arrival_ms).max(0))
    } else {
        read.millis_behind_latest
    };
    let span = tracing::Span::current();
    span.record("aws.kinesis.shard_id", iterator.shard_id.as_str());
    span.record("messaging.batch.message_count", read.records.len());
    frontend.metrics.get_records(
        (&iterator.stream, enabled_metrics(&entry)),
        &iterator.shard_id,
        started,
        Some(&ReadOutcome {
            records: read.records.len() as u64,
            bytes: read
                .records
                .iter()
                .map(|r| (r.data.len() + r.partition_key.len()) as u64)
                .sum(),
            iterator_age_ms: read
                .records
                .last()
                .map_or(0, |last| (now - last.arrival_ms).max(0)),
        }),
    );
    let records = ReadRecords {
        sequence_base: read.sequence_base,
        records: &read.records,
    };
    // The end of a closed shard: no next iterator, and the shards that
    // continue its keys (read them next, as Kinesis documents).
    if entry.state() == ShardState::Closed && read.next_offset >= entry.ending_offset {
        let mut children = child_shards(&stream_route, &iterator.shard_id);
        if children.is_empty() {
            // The parent's closing arrived before its children did.
            frontend.router.invalidate(&iterator.stream);
            let fresh = route_stream(frontend, &iterator.stream).await?;
            children = child_shards(&fresh, &iterator.shard_id);
        }
        // A closed shard always has children; until they are known here,
        // the caller keeps an iterator and asks again rather than being
        // told the shard ended with no successors.
        if !children.is_empty() {
            return to_json_text(&GetRecordsReply {
                records,
                next_shard_iterator: None,
                millis_behind_latest: 0,
                child_shards: Some(children),
            });
        }
    }
    let next = ShardIterator {
        issued_ms: now,
        position: Position::AtOffset(read.next_offset),
        ..iterator
    };
    to_json_text(&GetRecordsReply {
        records,
        next_shard_iterator: Some(frontend.signer.encode_iterator(&next)),
        millis_behind_latest,
        child_shards: None,
    })
}

/// The shard-level metrics the entry's stream has switched on.
fn enabled_metrics(entry: &ShardMapEntry) -> freshet_types::ShardLevelMetrics {
    freshet_types::ShardLevelMetrics::from_bits(entry.shard_level_metrics)
}
