//! Kinesis domain values shared by every Freshet crate: hash keys and their
//! ranges, shard ids, sequence numbers, stream names and ARNs.
//!
//! Everything here is pure (no I/O) and validates on construction, so code
//! that holds one of these types can trust it. The states kept as text in
//! Postgres (stream status and mode, shard state, commitment status) are
//! enums in [`state`].

use std::fmt;

pub mod calendar;
mod consumer;
#[doc(hidden)]
pub mod fuzzing;
pub mod identity;
mod shard_metrics;
pub mod state;
pub mod voters;
pub use consumer::{is_valid_consumer_name, ConsumerArn, MAX_CONSUMER_ARN_LEN};
pub use identity::{AccessKeyId, AccountId, Principal};
pub use shard_metrics::{ShardLevelMetric, ShardLevelMetrics};
pub use state::{
    AccessKeyStatus, CommitmentStatus, ConsumerStatus, ShardState, StreamMode, StreamStatus,
    UnknownState,
};
pub use voters::Voters;

use md5::{Digest, Md5};

/// A value that failed validation; the message is meant for the caller.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidValue(pub String);

/// A position in the 128-bit hash-key space that partition keys map to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct HashKey(pub u128);

impl HashKey {
    pub const MAX: HashKey = HashKey(u128::MAX);

    /// The MD5 of the partition key's UTF-8 bytes, read as a big-endian
    /// 128-bit integer: exactly how Kinesis picks a shard.
    pub fn of_partition_key(partition_key: &str) -> HashKey {
        let digest: [u8; 16] = Md5::digest(partition_key.as_bytes()).into();
        HashKey(u128::from_be_bytes(digest))
    }

    /// Parses a decimal `ExplicitHashKey`; it must lie in 0..=2^128-1.
    /// Whether `text` has a hash key's form in the API model
    /// (`0|([1-9]\d{0,38})`): one that does not, is a ValidationException;
    /// one that does but passes 2^128-1, an InvalidArgumentException.
    pub fn matches_pattern(text: &str) -> bool {
        !text.is_empty()
            && text.len() <= 39
            && text.bytes().all(|b| b.is_ascii_digit())
            && (text == "0" || !text.starts_with('0'))
    }

    pub fn parse_decimal(text: &str) -> Result<HashKey, InvalidValue> {
        if !Self::matches_pattern(text) {
            return Err(InvalidValue(format!(
                "Value '{text}' is not a valid hash key: it must be a decimal integer in [0, 2^128-1]"
            )));
        }
        text.parse::<u128>().map(HashKey).map_err(|_| {
            InvalidValue(format!(
                "Value '{text}' is out of range: hash keys must be in [0, 2^128-1]"
            ))
        })
    }
}

impl fmt::Display for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// An inclusive range of hash keys owned by one shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashKeyRange {
    pub start: HashKey,
    pub end: HashKey,
}

impl HashKeyRange {
    pub fn contains(&self, key: HashKey) -> bool {
        self.start <= key && key <= self.end
    }

    /// Splits the whole key space into `count` contiguous ranges of equal
    /// size (the last takes the remainder), as CreateStream does.
    pub fn split_evenly(count: u32) -> Vec<HashKeyRange> {
        assert!(count > 0, "a stream has at least one shard");
        if count == 1 {
            return vec![HashKeyRange {
                start: HashKey(0),
                end: HashKey::MAX,
            }];
        }
        let count = u128::from(count);
        // (2^128) / count without overflowing: (MAX / count) plus a correction.
        let mut width = u128::MAX / count;
        if u128::MAX % count == count - 1 {
            width += 1;
        }
        (0..count)
            .map(|index| {
                let start = index * width;
                let end = if index == count - 1 {
                    u128::MAX
                } else {
                    start + width - 1
                };
                HashKeyRange {
                    start: HashKey(start),
                    end: HashKey(end),
                }
            })
            .collect()
    }
}

/// A Kinesis shard id, `shardId-` followed by twelve digits.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShardId(pub u32);

impl ShardId {
    /// Parses `shardId-000000000003`; like Kinesis it also accepts the
    /// unpadded `shardId-3`.
    pub fn parse(text: &str) -> Option<ShardId> {
        let digits = text.strip_prefix("shardId-")?;
        if digits.is_empty() || digits.len() > 12 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return None;
        }
        digits.parse().ok().map(ShardId)
    }
}

impl fmt::Display for ShardId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "shardId-{:012}", self.0)
    }
}

/// A record's sequence number: `base << 64 | offset`, where `base` is fixed
/// per shard (children get larger bases than their parents) and `offset` is
/// the record's dense position in the shard's log. As a decimal string it
/// therefore compares correctly as a big integer, and strictly increases in
/// the order records were acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SequenceNumber {
    pub base: u64,
    pub offset: u64,
}

impl SequenceNumber {
    pub fn to_u128(self) -> u128 {
        (u128::from(self.base) << 64) | u128::from(self.offset)
    }

    pub fn from_u128(value: u128) -> SequenceNumber {
        SequenceNumber {
            base: (value >> 64) as u64,
            offset: value as u64,
        }
    }

    /// Parses the decimal form (`^(0|([1-9]\d{0,128}))$`). Values too large
    /// to be one of ours are reported as `None` after the pattern check.
    pub fn parse(text: &str) -> Result<Option<SequenceNumber>, InvalidValue> {
        if !is_sequence_number_pattern(text) {
            return Err(InvalidValue(format!(
                "Value '{text}' does not satisfy the sequence number pattern ^(0|([1-9]\\d{{0,128}}))$"
            )));
        }
        Ok(text.parse::<u128>().ok().map(SequenceNumber::from_u128))
    }
}

/// Whether `text` matches Kinesis's SequenceNumber pattern.
pub fn is_sequence_number_pattern(text: &str) -> bool {
    !text.is_empty()
        && text.len() <= 129
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text == "0" || !text.starts_with('0'))
}

impl fmt::Display for SequenceNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.to_u128())
    }
}

/// Whether `name` is a valid stream name: 1..=128 of `[a-zA-Z0-9_.-]`.
pub fn is_valid_stream_name(name: &str) -> bool {
    (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'.' || b == b'-')
}

/// The parts of a stream ARN, `arn:aws:kinesis:<region>:<account>:stream/<name>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StreamArn {
    pub partition: String,
    pub region: String,
    pub account_id: String,
    pub stream_name: String,
}

impl StreamArn {
    pub fn new(region: &str, account_id: &str, stream_name: &str) -> StreamArn {
        StreamArn {
            partition: "aws".to_owned(),
            region: region.to_owned(),
            account_id: account_id.to_owned(),
            stream_name: stream_name.to_owned(),
        }
    }

    /// Parses a stream ARN; `None` unless it matches
    /// `arn:aws.*:kinesis:.*:\d{12}:stream/\S+`.
    pub fn parse(text: &str) -> Option<StreamArn> {
        let mut parts = text.splitn(6, ':');
        let (arn, partition, service, region, account, resource) = (
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
            parts.next()?,
        );
        let stream_name = resource.strip_prefix("stream/")?;
        let valid = arn == "arn"
            && partition.starts_with("aws")
            && service == "kinesis"
            && account.len() == 12
            && account.bytes().all(|b| b.is_ascii_digit())
            && !stream_name.is_empty()
            && !stream_name.chars().any(char::is_whitespace);
        valid.then(|| StreamArn {
            partition: partition.to_owned(),
            region: region.to_owned(),
            account_id: account.to_owned(),
            stream_name: stream_name.to_owned(),
        })
    }
}

impl fmt::Display for StreamArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "arn:{}:kinesis:{}:{}:stream/{}",
            self.partition, self.region, self.account_id, self.stream_name
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_key_hash_is_big_endian_md5() {
        // md5("a") = 0cc175b9c0f1b6a831c399e269772661
        assert_eq!(
            HashKey::of_partition_key("a").0,
            0x0cc175b9c0f1b6a831c399e269772661
        );
    }

    #[test]
    fn even_split_covers_the_space_without_gaps() {
        for count in [1u32, 2, 3, 4, 7, 10, 1000] {
            let ranges = HashKeyRange::split_evenly(count);
            assert_eq!(ranges.len(), count as usize);
            assert_eq!(ranges[0].start, HashKey(0));
            assert_eq!(ranges.last().map(|r| r.end), Some(HashKey::MAX));
            for pair in ranges.windows(2) {
                assert_eq!(pair[0].end.0 + 1, pair[1].start.0);
            }
        }
        // Kinesis's own 2-shard split point.
        assert_eq!(
            HashKeyRange::split_evenly(2)[1].start.to_string(),
            "170141183460469231731687303715884105728"
        );
    }

    #[test]
    fn explicit_hash_keys_are_bounded() {
        assert_eq!(HashKey::parse_decimal("0"), Ok(HashKey(0)));
        assert_eq!(
            HashKey::parse_decimal("340282366920938463463374607431768211455"),
            Ok(HashKey::MAX)
        );
        assert!(HashKey::parse_decimal("340282366920938463463374607431768211456").is_err());
        assert!(HashKey::parse_decimal("01").is_err());
        assert!(HashKey::parse_decimal("-1").is_err());
        assert!(HashKey::parse_decimal("").is_err());
    }

    #[test]
    fn shard_ids_round_trip_and_accept_short_form() {
        assert_eq!(ShardId(7).to_string(), "shardId-000000000007");
        assert_eq!(ShardId::parse("shardId-000000000007"), Some(ShardId(7)));
        assert_eq!(ShardId::parse("shardId-7"), Some(ShardId(7)));
        assert_eq!(ShardId::parse("shard-7"), None);
        assert_eq!(ShardId::parse("shardId-"), None);
    }

    #[test]
    fn sequence_numbers_order_as_big_integers() {
        let a = SequenceNumber {
            base: 5,
            offset: u64::MAX,
        };
        let b = SequenceNumber { base: 6, offset: 0 };
        assert!(a < b);
        let (a_text, b_text) = (a.to_string(), b.to_string());
        assert!(a_text.parse::<u128>().unwrap() < b_text.parse::<u128>().unwrap());
        assert_eq!(SequenceNumber::parse(&b_text), Ok(Some(b)));
        assert!(SequenceNumber::parse("007").is_err());
        assert_eq!(SequenceNumber::parse(&"9".repeat(60)), Ok(None));
    }

    #[test]
    fn stream_arns_round_trip() {
        let arn = StreamArn::new("us-east-1", "000000000000", "orders");
        let text = arn.to_string();
        assert_eq!(text, "arn:aws:kinesis:us-east-1:000000000000:stream/orders");
        assert_eq!(StreamArn::parse(&text), Some(arn));
        assert_eq!(
            StreamArn::parse("arn:aws:kinesis:us-east-1:123:stream/x"),
            None
        );
        assert_eq!(
            StreamArn::parse("arn:aws:s3:us-east-1:000000000000:stream/x"),
            None
        );
    }

    #[test]
    fn stream_names_follow_the_pattern() {
        assert!(is_valid_stream_name("a.b-c_D9"));
        assert!(!is_valid_stream_name(""));
        assert!(!is_valid_stream_name("has space"));
        assert!(!is_valid_stream_name(&"x".repeat(129)));
    }
}
