//! The fuzz target of this crate's parsers (`fuzz/fuzz_targets/types_parsers.rs`),
//! also replayed over the checked-in corpus by `tests/fuzz_corpus.rs`:
//! each parser must agree with a simple reference implementation and
//! round-trip through its text form.

use crate::{ConsumerArn, HashKey, SequenceNumber, ShardId, StreamArn};

/// A decimal in `0..=max` without leading zeros, digit by digit.
fn reference_decimal(text: &str, max_digits: usize) -> Option<u128> {
    if text.is_empty() || text.len() > max_digits || (text.len() > 1 && text.starts_with('0')) {
        return None;
    }
    text.bytes().try_fold(0u128, |value, b| {
        let digit = u128::from(b.checked_sub(b'0').filter(|d| *d <= 9)?);
        value.checked_mul(10)?.checked_add(digit)
    })
}

/// Checks every parser on `data` (as UTF-8 text); panics on disagreement.
pub fn exercise(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let hash_key = HashKey::parse_decimal(text).ok().map(|k| k.0);
    assert_eq!(hash_key, reference_decimal(text, 39), "hash key {text:?}");
    if let Some(key) = hash_key {
        assert_eq!(HashKey(key).to_string(), text);
    }

    let sequence_pattern = !text.is_empty()
        && text.len() <= 129
        && text.bytes().all(|b| b.is_ascii_digit())
        && (text.len() == 1 || !text.starts_with('0'));
    match SequenceNumber::parse(text) {
        Ok(parsed) => {
            assert!(sequence_pattern, "sequence number {text:?} accepted");
            let value = parsed.map(SequenceNumber::to_u128);
            assert_eq!(
                value,
                reference_decimal(text, 129),
                "sequence number {text:?}"
            );
            if let Some(sequence) = parsed {
                assert_eq!(sequence.to_string(), text, "sequence number round trip");
            }
        }
        Err(_) => assert!(!sequence_pattern, "sequence number {text:?} refused"),
    }

    // `shardId-` and 1 to 12 digits (leading zeros allowed) that fit a u32.
    let reference_shard = text.strip_prefix("shardId-").and_then(|digits| {
        let well_formed =
            (1..=12).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit());
        if !well_formed {
            return None;
        }
        let value = digits.bytes().try_fold(0u64, |v, b| {
            v.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        })?;
        u32::try_from(value).ok()
    });
    assert_eq!(
        ShardId::parse(text).map(|s| s.0),
        reference_shard,
        "shard id {text:?}"
    );

    if let Some(arn) = StreamArn::parse(text) {
        assert!(text.starts_with("arn:aws") && text.contains(":kinesis:"));
        assert_eq!(
            StreamArn::parse(&arn.to_string()),
            Some(arn),
            "arn round trip"
        );
    }

    if let Some(arn) = ConsumerArn::parse(text) {
        assert!(text.len() <= crate::MAX_CONSUMER_ARN_LEN);
        assert_eq!(
            ConsumerArn::parse(&arn.to_string()),
            Some(arn),
            "consumer arn round trip"
        );
    }
}
