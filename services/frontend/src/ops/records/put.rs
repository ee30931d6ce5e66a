//! PutRecord and PutRecords: every record validated before any is
//! written, then appended through `reroute.rs`.

use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use bytes::Bytes;
use freshet_errors::ErrorCode;
use freshet_proto::v1::RecordToAppend;
use freshet_shardmap::StreamRoute;
use freshet_types::HashKey;
use serde::Deserialize;

use super::super::replies::{PutRecordReply, PutRecordsEntryReply, PutRecordsReply};
use super::super::{to_json_text, StreamTarget};
use super::reroute::append_records;
use super::{dry_run_error, route_stream, shard_id_of};
use crate::auth::Caller;
use crate::error::{KinesisError, KinesisResult, Violations};
use crate::metrics::EntryOutcome;
use crate::Frontend;

/// A PutRecords request carries at most this much data plus keys.
const MAX_PUT_RECORDS_BYTES: usize = 10 * 1024 * 1024;
/// The largest record the API model allows (MaxRecordSizeInKiB = 10240).
const MAX_RECORD_BYTES_MODEL: usize = 10 * 1024 * 1024;

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
    /// Empty when the producer gave none (allowed only with AUTO record
    /// distribution: see [`distribute`]).
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
                ends_append: None,
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
    // Optional in the model: a stream with AUTO record distribution needs
    // none (`distribute` requires it of the others).
    let key = partition_key.as_deref();
    if key.is_some_and(|key| !(1..=256).contains(&key.chars().count())) {
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
            if !HashKey::matches_pattern(text) {
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
    let Some(data) = data else {
        return Ok(None);
    };
    let partition_key = partition_key.unwrap_or_default();
    Ok(Some(CheckedRecord {
        hash_key: explicit.unwrap_or_else(|| HashKey::of_partition_key(&partition_key)),
        partition_key,
        explicit: explicit.is_some(),
        data,
    }))
}

/// Where in its shard's range the `n`-th spread record lands: 128 bits
/// mixed from `n` (splitmix64 twice), so keys cover every range evenly.
fn spread_salt(n: u64) -> u128 {
    fn mix(mut z: u64) -> u64 {
        z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    (u128::from(mix(n)) << 64) | u128::from(mix(n ^ 0xD1B5_4A32_D192_ED03))
}

/// Places records by the stream's record distribution strategy, once its
/// route is known. AUTO: each record goes to the next open shard in turn
/// (a counter this frontend keeps), whatever its partition key and
/// explicit hash key — records are spread evenly, and a key is optional.
/// USER_PARTITION_KEY: every record must carry a partition key (`field`
/// names the member by record index in the error message).
fn distribute(
    frontend: &Frontend,
    route: &StreamRoute,
    records: &mut [CheckedRecord],
    field: &dyn Fn(usize) -> String,
) -> KinesisResult<()> {
    if route.auto_record_distribution() {
        let first = frontend.next_spread(records.len());
        for (n, record) in (first..).zip(records.iter_mut()) {
            // The key chosen travels as an explicit hash key: the leader
            // samples load where records really went (the scaler splits
            // there), and a record routed again stays on it.
            match route.spread_hash_key(n, spread_salt(n)) {
                Some(hash_key) => {
                    record.hash_key = hash_key;
                    record.explicit = true;
                }
                // No open shard on this route (a reshard under way): the
                // record waits for one like any other (`reroute.rs`).
                None => record.explicit = false,
            }
        }
        return Ok(());
    }
    // Optional in the model, so a missing key is the service's refusal,
    // not a validation error.
    match records.iter().position(|r| r.partition_key.is_empty()) {
        Some(index) => Err(KinesisError::invalid_argument(format!(
            "{} is required: the stream uses the USER_PARTITION_KEY record distribution strategy.",
            field(index)
        ))),
        None => Ok(()),
    }
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
    let started = std::time::Instant::now();
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
    let mut record = record.ok_or_else(|| KinesisError::validation("record is incomplete"))?;
    let stream = input.target.resolve(caller).await?;
    let route = route_stream(frontend, &stream).await?;
    check_stream_record_size(&route, &[&record])?;
    if route.auto_record_distribution() && input.sequence_number_for_ordering.is_some() {
        return Err(KinesisError::invalid_argument(
            "SequenceNumberForOrdering is not supported for a stream that uses the AUTO record distribution strategy.",
        ));
    }
    distribute(frontend, &route, std::slice::from_mut(&mut record), &|_| {
        "The PartitionKey".to_owned()
    })?;
    if input.dry_run == Some(true) {
        return Err(dry_run_error());
    }
    // SequenceNumberForOrdering needs no extra work: every sequence number
    // we assign is larger than any this stream has returned before on the
    // same shard (and children's are larger than their parents').
    let bytes = (record.data.len() + record.partition_key.len()) as u64;
    let enabled = route.shard_level_metrics();
    let target = frontend
        .metrics
        .per_shard(enabled)
        .then(|| route.shard_for_hash_key(record.hash_key).map(shard_id_of))
        .flatten();
    let landed = append_records(frontend, &stream, route, vec![record.into_append()])
        .await
        .into_iter()
        .next()
        .unwrap_or_else(|| Err(KinesisError::internal("record was not written")));
    frontend.metrics.put_record(
        (&stream, enabled),
        started,
        bytes,
        match &landed {
            Ok(landed) => Ok(&landed.shard_id),
            Err(error) => Err((entry_outcome(error), target.as_deref())),
        },
    );
    let landed = landed?;
    let span = tracing::Span::current();
    span.record("aws.kinesis.shard_id", &*landed.shard_id);
    span.record(
        "aws.kinesis.sequence_number",
        tracing::field::display(&landed.sequence_number),
    );
    span.record("messaging.batch.message_count", 1);
    to_json_text(&PutRecordReply {
        shard_id: &landed.shard_id,
        sequence_number: landed.sequence_number,
        encryption_type: "NONE",
    })
}

/// How a record that was not written counts in the stream's metrics.
fn entry_outcome(error: &KinesisError) -> EntryOutcome {
    if error.code == ErrorCode::ProvisionedThroughputExceeded {
        EntryOutcome::Throttled
    } else {
        EntryOutcome::Failed
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutRecordsEntry {
    pub data: Option<String>,
    pub partition_key: Option<String>,
    pub explicit_hash_key: Option<String>,
}

/// Most records one PutRecords may carry.
const MAX_PUT_RECORDS: usize = 500;

/// PutRecords' input. The stream's fields are spelt out rather than
/// flattened from [`StreamTarget`]: serde buffers every field of a struct
/// with a flattened member, which would materialise the whole `Records`
/// list before its length could be checked.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutRecordsInput {
    pub stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
    pub stream_id: Option<String>,
    pub records: Option<CappedRecords>,
    pub dry_run: Option<bool>,
}

impl PutRecordsInput {
    fn target(&self) -> StreamTarget {
        StreamTarget {
            stream_name: self.stream_name.clone(),
            stream_arn: self.stream_arn.clone(),
            stream_id: self.stream_id.clone(),
        }
    }
}

/// PutRecords' `Records`: the first [`MAX_PUT_RECORDS`] entries are kept;
/// the rest are read past without being built, and only counted, so a body
/// of millions of `{}` costs the memory of 500 records.
#[derive(Debug, Default)]
pub struct CappedRecords {
    pub kept: Vec<PutRecordsEntry>,
    /// Every entry, kept or not.
    pub total: usize,
}

impl<'de> Deserialize<'de> for CappedRecords {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = CappedRecords;

            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a list of records")
            }

            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<CappedRecords, A::Error> {
                let mut records = CappedRecords::default();
                loop {
                    let more = if records.kept.len() < MAX_PUT_RECORDS {
                        seq.next_element::<PutRecordsEntry>()?
                            .map(|entry| records.kept.push(entry))
                            .is_some()
                    } else {
                        seq.next_element::<serde::de::IgnoredAny>()?.is_some()
                    };
                    if !more {
                        return Ok(records);
                    }
                    records.total += 1;
                }
            }
        }
        deserializer.deserialize_seq(Entries)
    }
}

pub async fn put_records(
    frontend: &Frontend,
    caller: &Caller,
    input: PutRecordsInput,
) -> KinesisResult<String> {
    let started = std::time::Instant::now();
    let mut violations = Violations::default();
    let target = input.target();
    target.check(&mut violations);
    violations.check_required(input.records.as_ref(), "records");
    let CappedRecords {
        kept: entries,
        total,
    } = input.records.unwrap_or_default();
    if total == 0 {
        violations.add(
            Some("[]"),
            "records",
            "Member must have length greater than or equal to 1",
        );
    } else if total > MAX_PUT_RECORDS {
        violations.add(
            None,
            "records",
            "Member must have length less than or equal to 500",
        );
    }
    let mut checked = Vec::with_capacity(entries.len());
    if total <= MAX_PUT_RECORDS {
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
    let mut records: Vec<CheckedRecord> = checked.into_iter().flatten().collect();
    let total: usize = records
        .iter()
        .map(|r| r.data.len() + r.partition_key.len())
        .sum();
    if total > MAX_PUT_RECORDS_BYTES {
        return Err(KinesisError::invalid_argument(format!(
            "Records size exceeds 10 MiB limit: the request carries {total} bytes of data and partition keys"
        )));
    }
    let stream = target.resolve(caller).await?;
    let route = route_stream(frontend, &stream).await?;
    check_stream_record_size(&route, &records.iter().collect::<Vec<_>>())?;
    distribute(frontend, &route, &mut records, &|index| {
        format!("The PartitionKey of Records[{index}]")
    })?;
    if input.dry_run == Some(true) {
        return Err(dry_run_error());
    }

    let sizes: Vec<u64> = records
        .iter()
        .map(|r| (r.data.len() + r.partition_key.len()) as u64)
        .collect();
    // The shard each record was meant for, for shard-level metrics.
    let enabled = route.shard_level_metrics();
    let targets: Vec<Option<String>> = if frontend.metrics.per_shard(enabled) {
        records
            .iter()
            .map(|r| route.shard_for_hash_key(r.hash_key).map(shard_id_of))
            .collect()
    } else {
        Vec::new()
    };
    let records = records
        .into_iter()
        .map(CheckedRecord::into_append)
        .collect();
    tracing::Span::current().record("messaging.batch.message_count", sizes.len());
    let outcomes = append_records(frontend, &stream, route, records).await;
    frontend.metrics.put_records(
        (&stream, enabled),
        started,
        outcomes
            .iter()
            .zip(&sizes)
            .enumerate()
            .map(|(index, (outcome, size))| match outcome {
                Ok(landed) => (EntryOutcome::Landed, *size, Some(&*landed.shard_id)),
                Err(error) => (
                    entry_outcome(error),
                    *size,
                    targets.get(index).and_then(Option::as_deref),
                ),
            }),
    );
    let mut failed_record_count = 0;
    let entries = outcomes
        .iter()
        .map(|outcome| match outcome {
            Ok(landed) => PutRecordsEntryReply::Landed {
                sequence_number: landed.sequence_number,
                shard_id: &landed.shard_id,
            },
            Err(error) if error.code == ErrorCode::ProvisionedThroughputExceeded => {
                failed_record_count += 1;
                PutRecordsEntryReply::Failed {
                    error_code: error.exception(),
                    error_message: &error.message,
                }
            }
            Err(error) => {
                tracing::warn!(code = %error.code, message = %error.message, "part of a PutRecords failed");
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

#[cfg(test)]
mod tests {
    use super::*;

    fn records_of(body: &str) -> CappedRecords {
        serde_json::from_str::<PutRecordsInput>(body)
            .expect("parsed")
            .records
            .expect("records")
    }

    #[test]
    fn records_past_the_500th_are_counted_not_built() {
        let entries = vec![r#"{"PartitionKey":"k","Data":"aGk="}"#; 600].join(",");
        let records = records_of(&format!(r#"{{"StreamName":"s","Records":[{entries}]}}"#));
        assert_eq!(records.total, 600);
        assert_eq!(records.kept.len(), MAX_PUT_RECORDS);
        // Past the cap, anything is read past: a bad entry is not an error
        // of the body, only one more record over the limit.
        let mixed = format!(
            r#"{{"Records":[{}, 1, "x", [], null]}}"#,
            vec!["{}"; 500].join(",")
        );
        let records = records_of(&mixed);
        assert_eq!((records.kept.len(), records.total), (500, 504));
    }

    #[test]
    fn a_short_list_is_kept_whole() {
        let records = records_of(r#"{"Records":[{"PartitionKey":"a"},{"PartitionKey":"b"}]}"#);
        assert_eq!(records.total, 2);
        let keys: Vec<_> = records
            .kept
            .iter()
            .map(|r| r.partition_key.as_deref())
            .collect();
        assert_eq!(keys, [Some("a"), Some("b")]);
        assert_eq!(records_of(r#"{"Records":[]}"#).total, 0);
    }
}
