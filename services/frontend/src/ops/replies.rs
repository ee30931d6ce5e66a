//! The data-plane replies (PutRecord, PutRecords, GetRecords), serialized
//! straight from the records they describe.
//!
//! A GetRecords reply may carry 10,000 records and a PutRecords reply 500:
//! building a `serde_json::Value` per record (a map, its keys, a base64
//! string, a sequence-number string) cost more CPU than everything else the
//! frontend does for them. These types borrow the records and write base64,
//! sequence numbers and timestamps directly into the reply text.

use base64::display::Base64Display;
use base64::engine::general_purpose::STANDARD;
use freshet_proto::v1::StoredRecord;
use freshet_types::SequenceNumber;
use serde::ser::{SerializeSeq, Serializer};
use serde::Serialize;
use serde_json::Value;

/// Bytes as the JSON protocol carries blobs: standard base64, written
/// without an intermediate string.
struct Base64<'a>(&'a [u8]);

impl Serialize for Base64<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&Base64Display::new(self.0, &STANDARD))
    }
}

/// A sequence number as its decimal string.
struct Decimal(SequenceNumber);

impl Serialize for Decimal {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(&self.0)
    }
}

/// Epoch seconds with millisecond precision, as the JSON protocol writes
/// timestamps.
pub(crate) fn epoch_seconds(ms: i64) -> f64 {
    ms as f64 / 1000.0
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutRecordReply<'a> {
    pub shard_id: &'a str,
    #[serde(serialize_with = "decimal")]
    pub sequence_number: SequenceNumber,
    pub encryption_type: &'static str,
}

fn decimal<S: Serializer>(number: &SequenceNumber, serializer: S) -> Result<S::Ok, S::Error> {
    Decimal(*number).serialize(serializer)
}

/// One entry of a PutRecords reply: where the record landed, or why not.
#[derive(Serialize)]
#[serde(untagged)]
pub enum PutRecordsEntryReply<'a> {
    #[serde(rename_all = "PascalCase")]
    Landed {
        #[serde(serialize_with = "decimal")]
        sequence_number: SequenceNumber,
        shard_id: &'a str,
    },
    #[serde(rename_all = "PascalCase")]
    Failed {
        error_code: &'a str,
        error_message: &'a str,
    },
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct PutRecordsReply<'a> {
    pub failed_record_count: usize,
    pub records: Vec<PutRecordsEntryReply<'a>>,
    pub encryption_type: &'static str,
}

/// The records of one read, as GetRecords returns them.
pub struct ReadRecords<'a> {
    pub sequence_base: u64,
    pub records: &'a [StoredRecord],
}

impl Serialize for ReadRecords<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut seq = serializer.serialize_seq(Some(self.records.len()))?;
        for record in self.records {
            seq.serialize_element(&RecordReply {
                sequence_number: Decimal(SequenceNumber {
                    base: self.sequence_base,
                    offset: record.offset,
                }),
                approximate_arrival_timestamp: epoch_seconds(record.arrival_ms),
                data: Base64(&record.data),
                partition_key: &record.partition_key,
            })?;
        }
        seq.end()
    }
}

#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
struct RecordReply<'a> {
    sequence_number: Decimal,
    approximate_arrival_timestamp: f64,
    data: Base64<'a>,
    /// Absent for a record written without one (AUTO record distribution).
    #[serde(skip_serializing_if = "str::is_empty")]
    partition_key: &'a str,
}

/// A GetRecords reply: an open shard's carries the next iterator; the end
/// of a closed shard carries the shards that continue its keys instead.
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct GetRecordsReply<'a> {
    pub records: ReadRecords<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_shard_iterator: Option<String>,
    pub millis_behind_latest: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child_shards: Option<Vec<Value>>,
}

/// The payload of one `SubscribeToShardEvent`: records with the
/// continuation to resume after them; the end of a closed shard carries no
/// continuation and the shards that continue its keys instead (KCL refuses
/// any other combination).
#[derive(Serialize)]
#[serde(rename_all = "PascalCase")]
pub struct SubscribeToShardEventReply<'a> {
    pub records: ReadRecords<'a>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub continuation_sequence_number: Option<String>,
    pub millis_behind_latest: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub child_shards: Option<Vec<Value>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(offset: u64, data: &'static [u8], key: &str) -> StoredRecord {
        StoredRecord {
            offset,
            arrival_ms: 1_764_000_000_123,
            partition_key: key.to_owned(),
            data: bytes::Bytes::from_static(data),
        }
    }

    #[test]
    fn a_get_records_reply_reads_as_the_json_protocol_writes_it() {
        let records = [record(7, b"hello", "k\"1"), record(8, b"", "k2")];
        let reply = GetRecordsReply {
            records: ReadRecords {
                sequence_base: 3,
                records: &records,
            },
            next_shard_iterator: Some("AAAA".to_owned()),
            millis_behind_latest: 12,
            child_shards: None,
        };
        let text = serde_json::to_string(&reply).expect("serializes");
        let value: Value = serde_json::from_str(&text).expect("is JSON");
        let first = SequenceNumber { base: 3, offset: 7 }.to_string();
        assert_eq!(value["Records"][0]["SequenceNumber"], first.as_str());
        assert_eq!(value["Records"][0]["Data"], "aGVsbG8=");
        assert_eq!(value["Records"][0]["PartitionKey"], "k\"1");
        assert_eq!(
            value["Records"][0]["ApproximateArrivalTimestamp"],
            serde_json::json!(1_764_000_000.123)
        );
        assert_eq!(value["Records"][1]["Data"], "");
        assert_eq!(value["NextShardIterator"], "AAAA");
        assert_eq!(value["MillisBehindLatest"], 12);
        assert!(value.get("ChildShards").is_none());
    }

    #[test]
    fn a_put_records_reply_lists_landed_and_failed_entries_in_order() {
        let reply = PutRecordsReply {
            failed_record_count: 1,
            records: vec![
                PutRecordsEntryReply::Landed {
                    sequence_number: SequenceNumber { base: 1, offset: 0 },
                    shard_id: "shardId-000000000000",
                },
                PutRecordsEntryReply::Failed {
                    error_code: "ProvisionedThroughputExceededException",
                    error_message: "Rate exceeded",
                },
            ],
            encryption_type: "NONE",
        };
        let value: Value =
            serde_json::from_str(&serde_json::to_string(&reply).expect("serializes"))
                .expect("is JSON");
        assert_eq!(value["FailedRecordCount"], 1);
        assert_eq!(value["Records"][0]["ShardId"], "shardId-000000000000");
        assert_eq!(
            value["Records"][0]["SequenceNumber"],
            SequenceNumber { base: 1, offset: 0 }.to_string().as_str()
        );
        assert!(value["Records"][0].get("ErrorCode").is_none());
        assert_eq!(
            value["Records"][1]["ErrorCode"],
            "ProvisionedThroughputExceededException"
        );
        assert!(value["Records"][1].get("SequenceNumber").is_none());
        assert_eq!(value["EncryptionType"], "NONE");
    }
}
