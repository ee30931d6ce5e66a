//! Data-plane operations: PutRecord, PutRecords, GetShardIterator,
//! GetRecords.
//!
//! # The write path
//! validate every record → look up the stream's route (snapshot, else
//! cache) → pick each record's shard by MD5(partition key) or its
//! ExplicitHashKey → one append per shard to its leader, in parallel,
//! carrying the epoch the route names — concurrent requests' appends to one
//! shard share `Append` calls (`coalescer.rs`) → answer with sequence
//! numbers.
//!
//! A write refused with FAILED_PRECONDITION (stale epoch, not the leader) or
//! ABORTED (the worker does not know the placement yet) was refused before
//! anything was written, so it is retried once on a freshly read route; no
//! other failure is retried, since the write may have happened.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use freshet_proto::v1::read_request::Start;
use freshet_proto::v1::{GetShardTailRequest, RecordToAppend, ShardKey, ShardMapEntry, ShardState};
use freshet_shardmap::StreamRoute;
use freshet_types::{HashKey, SequenceNumber};
use serde::Deserialize;
use serde_json::{json, Value};

use super::replies::{
    GetRecordsReply, PutRecordReply, PutRecordsEntryReply, PutRecordsReply, ReadRecords,
};
use super::shard_reads::read_shard;
use super::streams::normalize_shard_id;
use super::{to_json_text, StreamTarget};
use crate::error::{KinesisError, KinesisResult, Violations};
use crate::http_api::Caller;
use crate::iterator::{Position, ShardIterator};
use crate::Frontend;

/// Shard iterators are valid for five minutes.
const ITERATOR_LIFETIME_MS: i64 = 300_000;
/// A PutRecords request carries at most this much data plus keys.
const MAX_PUT_RECORDS_BYTES: usize = 10 * 1024 * 1024;
/// The largest record the API model allows (MaxRecordSizeInKiB = 10240).
const MAX_RECORD_BYTES_MODEL: usize = 10 * 1024 * 1024;

fn dry_run_error() -> KinesisError {
    KinesisError::new(
        "DryRunOperationException",
        "The request was rejected because the DryRun parameter was specified",
    )
}

fn decode_data(data: Option<&str>) -> KinesisResult<Option<Bytes>> {
    data.map(|text| {
        STANDARD.decode(text).map(Bytes::from).map_err(|error| {
            KinesisError::serialization(format!("Base64 decoding of Data failed: {error}"))
        })
    })
    .transpose()
}

/// A record after validation: which key it hashes to and what it carries.
struct CheckedRecord {
    partition_key: String,
    hash_key: HashKey,
    /// Whether the producer chose `hash_key` (ExplicitHashKey).
    explicit: bool,
    data: Bytes,
}

impl CheckedRecord {
    /// The record as its shard's leader takes it.
    fn into_append(self) -> (HashKey, RecordToAppend) {
        let explicit_hash_key = if self.explicit {
            self.hash_key.to_string()
        } else {
            String::new()
        };
        (
            self.hash_key,
            RecordToAppend {
                partition_key: self.partition_key,
                data: self.data,
                explicit_hash_key,
            },
        )
    }
}

/// Validates one record's members. `field` names a member as the error
/// message does (`partitionKey`, or `records.3.member.partitionKey` in a
/// PutRecords); it is called only for a member that fails a check.
fn check_record(
    partition_key: Option<String>,
    explicit_hash_key: Option<&str>,
    data: Option<Bytes>,
    field: &dyn Fn(&str) -> String,
    violations: &mut Violations,
) -> KinesisResult<Option<CheckedRecord>> {
    // The checks below, without building a field name for a member that
    // passes them (PutRecords checks 500 records per call).
    let key = partition_key.as_deref();
    if !key.is_some_and(|key| (1..=256).contains(&key.chars().count())) {
        violations.check_required(key, &field("partitionKey"));
        violations.check_length(key, &field("partitionKey"), 1, 256);
    }
    match &data {
        None => violations.check_required(data.as_ref(), &field("data")),
        Some(data) if data.len() > MAX_RECORD_BYTES_MODEL => violations.add(
            None,
            &field("data"),
            &format!("Member must have length less than or equal to {MAX_RECORD_BYTES_MODEL}"),
        ),
        Some(_) => {}
    }
    let explicit = match explicit_hash_key {
        Some(text) => {
            let well_formed = !text.is_empty()
                && text.len() <= 39
                && text.bytes().all(|b| b.is_ascii_digit())
                && (text == "0" || !text.starts_with('0'));
            if !well_formed {
                violations.add(
                    Some(text),
                    &field("explicitHashKey"),
                    "Member must satisfy regular expression pattern: 0|([1-9]\\d{0,38})",
                );
                None
            } else {
                Some(HashKey::parse_decimal(text).map_err(|_| {
                    KinesisError::invalid_argument(format!(
                        "Invalid ExplicitHashKey. ExplicitHashKey must be in the range: [0, 2^128-1]. Specified value was {text}"
                    ))
                })?)
            }
        }
        None => None,
    };
    let (Some(partition_key), Some(data)) = (partition_key, data) else {
        return Ok(None);
    };
    Ok(Some(CheckedRecord {
        hash_key: explicit.unwrap_or_else(|| HashKey::of_partition_key(&partition_key)),
        partition_key,
        explicit: explicit.is_some(),
        data,
    }))
}

/// Looks the stream up; `ResourceNotFoundException` if it does not exist.
async fn route_stream(
    frontend: &Frontend,
    caller: &Caller,
    stream_name: &str,
) -> KinesisResult<StreamRoute> {
    frontend
        .router
        .stream_route(&caller.account_id, stream_name)
        .await
        .map_err(|error| KinesisError::internal(error.to_string()))?
        .ok_or_else(|| KinesisError::stream_not_found(stream_name, &caller.account_id))
}

fn shard_key(entry: &ShardMapEntry) -> Option<ShardKey> {
    entry.key.clone()
}

fn shard_id_of(entry: &ShardMapEntry) -> String {
    entry
        .key
        .as_ref()
        .map(|k| k.shard_id.clone())
        .unwrap_or_default()
}

/// Whether a storage error means "refused before writing" (safe to retry).
fn refused_before_writing(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::FailedPrecondition | tonic::Code::Aborted
    )
}

/// A shard's write or read limit is spent (the records or call refused
/// were not written or served).
fn rate_exceeded(entry: &ShardMapEntry) -> KinesisError {
    KinesisError::new(
        "ProvisionedThroughputExceededException",
        format!(
            "Rate exceeded for shard {} in stream {} under account {}.",
            shard_id_of(entry),
            entry.stream_name,
            entry.account_id
        ),
    )
}

/// The shards that continue a closed shard's keys, as GetRecords lists them.
fn child_shards(route: &StreamRoute, parent: &str) -> Vec<Value> {
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

/// How long a write keeps being routed again after refusals made before
/// anything was written: a failover, or its shard being closed by a split
/// or merge while the children are not yet open.
const REROUTE_DEADLINE: Duration = Duration::from_secs(5);

/// Where one record landed.
struct Landed {
    /// Shared by every record of one append.
    shard_id: Arc<str>,
    sequence_number: SequenceNumber,
}

/// Appends records to the open shards that cover their hash keys, one
/// append per shard. A group its worker refused before writing is routed
/// again on a fresh route and retried until [`REROUTE_DEADLINE`]; nothing
/// else is retried, since it may have been written (the client decides).
/// Answers per record, in input order.
async fn append_records(
    frontend: &Frontend,
    caller: &Caller,
    stream_name: &str,
    mut route: StreamRoute,
    records: Vec<(HashKey, RecordToAppend)>,
) -> Vec<KinesisResult<Landed>> {
    let deadline = tokio::time::Instant::now() + REROUTE_DEADLINE;
    let mut results: Vec<Option<KinesisResult<Landed>>> = records.iter().map(|_| None).collect();
    let mut pending: Vec<usize> = (0..records.len()).collect();
    let mut round = 0u32;
    while !pending.is_empty() {
        // Group by shard; a key whose shard is being closed waits a round.
        let mut by_shard: BTreeMap<String, (ShardMapEntry, Vec<usize>)> = BTreeMap::new();
        let mut waiting = Vec::new();
        for index in pending {
            match route.shard_for_hash_key(records[index].0) {
                Some(entry) => by_shard
                    .entry(shard_id_of(entry))
                    .or_insert_with(|| (entry.clone(), Vec::new()))
                    .1
                    .push(index),
                None => waiting.push(index),
            }
        }
        let appends = by_shard.into_values().map(|(entry, indexes)| {
            let batch: Vec<RecordToAppend> =
                indexes.iter().map(|&i| records[i].1.clone()).collect();
            async move {
                let appended = match frontend.appends.append(&entry, batch).await {
                    Ok(appended) => appended,
                    Err(error) => return (entry, indexes, Err(Err(error))),
                };
                let outcome = match appended {
                    Ok(share) => Ok(share),
                    Err(status) if refused_before_writing(&status) => Err(Ok(status)),
                    Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                        Err(Err(rate_exceeded(&entry)))
                    }
                    Err(status) => Err(Err(KinesisError::internal(format!(
                        "append to {} failed: {}",
                        shard_id_of(&entry),
                        status.message()
                    )))),
                };
                (entry, indexes, outcome)
            }
        });
        pending = waiting;
        for (entry, indexes, outcome) in futures::future::join_all(appends).await {
            match outcome {
                Ok(appended) => {
                    let shard_id: Arc<str> = shard_id_of(&entry).into();
                    let written = indexes.len().saturating_sub(appended.throttled as usize);
                    for (position, index) in indexes.into_iter().enumerate() {
                        if position >= written {
                            results[index] = Some(Err(rate_exceeded(&entry)));
                            continue;
                        }
                        results[index] = Some(Ok(Landed {
                            shard_id: shard_id.clone(),
                            sequence_number: SequenceNumber {
                                base: appended.sequence_base,
                                offset: appended.first_offset + position as u64,
                            },
                        }));
                    }
                }
                Err(Ok(refusal)) => {
                    tracing::debug!(
                        shard_id = shard_id_of(&entry),
                        message = refusal.message(),
                        "append refused before writing; routing again"
                    );
                    pending.extend(indexes);
                }
                Err(Err(error)) => {
                    for index in indexes {
                        results[index] = Some(Err(error.clone()));
                    }
                }
            }
        }
        if pending.is_empty() {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            for index in pending.drain(..) {
                results[index] = Some(Err(KinesisError::internal(
                    "the shard for this record was unavailable (failover or resharding under way)",
                )));
            }
            break;
        }
        round += 1;
        tokio::time::sleep(Duration::from_millis(u64::from(round.min(10)) * 10)).await;
        frontend.router.invalidate(&caller.account_id, stream_name);
        match route_stream(frontend, caller, stream_name).await {
            Ok(fresh) => route = fresh,
            Err(error) => {
                for index in pending.drain(..) {
                    results[index] = Some(Err(error.clone()));
                }
            }
        }
    }
    results
        .into_iter()
        .map(|r| r.unwrap_or_else(|| Err(KinesisError::internal("record was not written"))))
        .collect()
}

/// Checks the stream's own maximum record size (MaxRecordSizeInKiB).
fn check_stream_record_size(route: &StreamRoute, records: &[&CheckedRecord]) -> KinesisResult<()> {
    let max_kib = route
        .entries
        .first()
        .map(|e| e.max_record_size_kib)
        .filter(|k| *k > 0)
        .unwrap_or(1024);
    let max_bytes = max_kib as usize * 1024;
    for record in records {
        if record.data.len() + record.partition_key.len() > max_bytes {
            return Err(KinesisError::validation(format!(
                "1 validation error detected: Value at 'data' failed to satisfy constraint: Member must have length less than or equal to {max_bytes}"
            )));
        }
    }
    Ok(())
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutRecordInput {
    #[serde(flatten)]
    pub target: StreamTarget,
    pub data: Option<String>,
    pub partition_key: Option<String>,
    pub explicit_hash_key: Option<String>,
    pub sequence_number_for_ordering: Option<String>,
    pub dry_run: Option<bool>,
}

pub async fn put_record(
    frontend: &Frontend,
    caller: &Caller,
    input: PutRecordInput,
) -> KinesisResult<String> {
    let mut violations = Violations::default();
    input.target.check(&mut violations);
    let data = decode_data(input.data.as_deref())?;
    let record = check_record(
        input.partition_key,
        input.explicit_hash_key.as_deref(),
        data,
        &|member| member.to_owned(),
        &mut violations,
    )?;
    if let Some(ordering) = input.sequence_number_for_ordering.as_deref() {
        if !freshet_types::is_sequence_number_pattern(ordering) {
            violations.add(
                Some(ordering),
                "sequenceNumberForOrdering",
                "Member must satisfy regular expression pattern: 0|([1-9]\\d{0,128})",
            );
        }
    }
    violations.into_result()?;
    let record = record.ok_or_else(|| KinesisError::validation("record is incomplete"))?;
    let stream_name = input.target.resolve(caller)?;
    let route = route_stream(frontend, caller, &stream_name).await?;
    check_stream_record_size(&route, &[&record])?;
    if input.dry_run == Some(true) {
        return Err(dry_run_error());
    }
    // SequenceNumberForOrdering needs no extra work: every sequence number
    // we assign is larger than any this stream has returned before on the
    // same shard (and children's are larger than their parents').
    let landed = append_records(
        frontend,
        caller,
        &stream_name,
        route,
        vec![record.into_append()],
    )
    .await
    .into_iter()
    .next()
    .unwrap_or_else(|| Err(KinesisError::internal("record was not written")))?;
    to_json_text(&PutRecordReply {
        shard_id: &landed.shard_id,
        sequence_number: landed.sequence_number,
        encryption_type: "NONE",
    })
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutRecordsEntry {
    pub data: Option<String>,
    pub partition_key: Option<String>,
    pub explicit_hash_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutRecordsInput {
    #[serde(flatten)]
    pub target: StreamTarget,
    pub records: Option<Vec<PutRecordsEntry>>,
    pub dry_run: Option<bool>,
}

pub async fn put_records(
    frontend: &Frontend,
    caller: &Caller,
    input: PutRecordsInput,
) -> KinesisResult<String> {
    let mut violations = Violations::default();
    input.target.check(&mut violations);
    violations.check_required(input.records.as_ref(), "records");
    let entries = input.records.unwrap_or_default();
    if entries.is_empty() {
        violations.add(
            Some("[]"),
            "records",
            "Member must have length greater than or equal to 1",
        );
    } else if entries.len() > 500 {
        violations.add(
            None,
            "records",
            "Member must have length less than or equal to 500",
        );
    }
    let mut checked = Vec::with_capacity(entries.len());
    if entries.len() <= 500 {
        for (index, entry) in entries.into_iter().enumerate() {
            let data = decode_data(entry.data.as_deref())?;
            checked.push(check_record(
                entry.partition_key,
                entry.explicit_hash_key.as_deref(),
                data,
                &|member| format!("records.{}.member.{member}", index + 1),
                &mut violations,
            )?);
        }
    }
    violations.into_result()?;
    let records: Vec<CheckedRecord> = checked.into_iter().flatten().collect();
    let total: usize = records
        .iter()
        .map(|r| r.data.len() + r.partition_key.len())
        .sum();
    if total > MAX_PUT_RECORDS_BYTES {
        return Err(KinesisError::invalid_argument(format!(
            "Records size exceeds 10 MiB limit: the request carries {total} bytes of data and partition keys"
        )));
    }
    let stream_name = input.target.resolve(caller)?;
    let route = route_stream(frontend, caller, &stream_name).await?;
    check_stream_record_size(&route, &records.iter().collect::<Vec<_>>())?;
    if input.dry_run == Some(true) {
        return Err(dry_run_error());
    }

    let records = records
        .into_iter()
        .map(CheckedRecord::into_append)
        .collect();
    let outcomes = append_records(frontend, caller, &stream_name, route, records).await;
    let mut failed_record_count = 0;
    let entries = outcomes
        .iter()
        .map(|outcome| match outcome {
            Ok(landed) => PutRecordsEntryReply::Landed {
                sequence_number: landed.sequence_number,
                shard_id: &landed.shard_id,
            },
            Err(error) if error.code == "ProvisionedThroughputExceededException" => {
                failed_record_count += 1;
                PutRecordsEntryReply::Failed {
                    error_code: error.code,
                    error_message: &error.message,
                }
            }
            Err(error) => {
                tracing::warn!(code = error.code, message = %error.message, "part of a PutRecords failed");
                failed_record_count += 1;
                PutRecordsEntryReply::Failed {
                    error_code: "InternalFailure",
                    error_message: "Internal service failure.",
                }
            }
        })
        .collect();
    to_json_text(&PutRecordsReply {
        failed_record_count,
        records: entries,
        encryption_type: "NONE",
    })
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
    violations.check_length(input.shard_id.as_deref(), "shardId", 1, 128);
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
    let stream_name = input.target.resolve(caller)?;
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
    let route = route_stream(frontend, caller, &stream_name).await?;
    let entry = route.shard(&shard_id).cloned().ok_or_else(|| {
        KinesisError::resource_not_found(format!(
            "Shard {shard_id} in stream {stream_name} under account {} does not exist",
            caller.account_id
        ))
    })?;
    let position = match kind {
        "TRIM_HORIZON" => Position::AtOffset(0),
        "AT_TIMESTAMP" => {
            Position::AtTimestampMs((input.timestamp.unwrap_or_default() * 1000.0).round() as i64)
        }
        "LATEST" => {
            let mut client = frontend.storage.client(&entry.leader_address)?;
            let tail = client
                .get_shard_tail(frontend.storage_request(GetShardTailRequest {
                    shard: shard_key(&entry),
                    epoch: entry.epoch,
                }))
                .await
                .map_err(|status| {
                    KinesisError::internal(format!(
                        "read the tail of {shard_id}: {}",
                        status.message()
                    ))
                })?
                .into_inner();
            Position::AtOffset(tail.next_offset)
        }
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
                        "StartingSequenceNumber {text} used in GetShardIterator on shard {shard_id} in stream {stream_name} under account {} is invalid because it did not come from this stream.",
                        caller.account_id
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
        account_id: caller.account_id.clone(),
        stream_name,
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
    let iterator = frontend
        .signer
        .decode_iterator(text)
        .filter(|it| it.account_id == caller.account_id)
        .ok_or_else(|| KinesisError::invalid_argument("Invalid ShardIterator."))?;
    if let Some(arn) = input
        .stream_arn
        .as_deref()
        .and_then(freshet_types::StreamArn::parse)
    {
        if arn.account_id != caller.account_id || arn.stream_name != iterator.stream_name {
            return Err(KinesisError::invalid_argument(format!(
                "The shard iterator does not belong to stream {}.",
                arn.stream_name
            )));
        }
    }
    let now = frontend.now_ms();
    if now - iterator.issued_ms > ITERATOR_LIFETIME_MS {
        return Err(KinesisError::new(
            "ExpiredIteratorException",
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
            iterator.shard_id, iterator.stream_name, caller.account_id
        ))
    };
    let stream_route = route_stream(frontend, caller, &iterator.stream_name).await?;
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
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                return Err(rate_exceeded(&entry));
            }
            Err(status) if attempt == 0 && refused_before_writing(&status) => {
                attempt += 1;
                frontend
                    .router
                    .invalidate(&caller.account_id, &iterator.stream_name);
                let fresh = route_stream(frontend, caller, &iterator.stream_name).await?;
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
            frontend
                .router
                .invalidate(&caller.account_id, &iterator.stream_name);
            let fresh = route_stream(frontend, caller, &iterator.stream_name).await?;
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
