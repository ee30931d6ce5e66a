//! Enhanced fan-out consumers' names and ARNs.
//!
//! A consumer ARN names its stream, the consumer and the second it was
//! registered: `arn:aws:kinesis:<region>:<account>:stream/<stream>/consumer/<name>:<epoch seconds>`.
//! Registering a name again after deregistering it gives a new ARN, so a
//! reader holding the old one is not handed the new consumer.

use std::fmt;

use crate::{is_valid_stream_name, StreamArn};

/// The longest consumer ARN the API accepts.
pub const MAX_CONSUMER_ARN_LEN: usize = 2048;

/// Whether `name` is a valid consumer name: 1..=128 of `[a-zA-Z0-9_.-]`
/// (the same rule as a stream name's).
pub fn is_valid_consumer_name(name: &str) -> bool {
    is_valid_stream_name(name)
}

/// The parts of a consumer ARN.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerArn {
    pub stream: StreamArn,
    pub consumer_name: String,
    /// When the consumer was registered, in whole seconds since the epoch.
    pub created_epoch_seconds: u64,
}

impl ConsumerArn {
    pub fn new(stream: StreamArn, consumer_name: &str, created_epoch_seconds: u64) -> ConsumerArn {
        ConsumerArn {
            stream,
            consumer_name: consumer_name.to_owned(),
            created_epoch_seconds,
        }
    }

    /// Parses a consumer ARN; `None` unless its stream part is a stream ARN
    /// with a valid stream name, its consumer name is valid and its
    /// creation time is a number of seconds, within 2048 characters.
    pub fn parse(text: &str) -> Option<ConsumerArn> {
        if text.len() > MAX_CONSUMER_ARN_LEN {
            return None;
        }
        let (stream_part, seconds) = text.rsplit_once(':')?;
        let (stream_text, consumer_name) = stream_part.rsplit_once("/consumer/")?;
        let stream = StreamArn::parse(stream_text)?;
        let valid = is_valid_stream_name(&stream.stream_name)
            && is_valid_consumer_name(consumer_name)
            && !seconds.is_empty()
            && seconds.bytes().all(|b| b.is_ascii_digit());
        if !valid {
            return None;
        }
        Some(ConsumerArn {
            stream,
            consumer_name: consumer_name.to_owned(),
            created_epoch_seconds: seconds.parse().ok()?,
        })
    }
}

impl fmt::Display for ConsumerArn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/consumer/{}:{}",
            self.stream, self.consumer_name, self.created_epoch_seconds
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn consumer_arns_round_trip() {
        let stream = StreamArn::new("us-east-1", "000000000000", "orders");
        let arn = ConsumerArn::new(stream, "billing-v2", 1_679_992_900);
        let text = arn.to_string();
        assert_eq!(
            text,
            "arn:aws:kinesis:us-east-1:000000000000:stream/orders/consumer/billing-v2:1679992900"
        );
        assert_eq!(ConsumerArn::parse(&text), Some(arn));
    }

    #[test]
    fn malformed_consumer_arns_are_refused() {
        let refused = [
            // No creation time, or not a number.
            "arn:aws:kinesis:us-east-1:000000000000:stream/orders/consumer/c",
            "arn:aws:kinesis:us-east-1:000000000000:stream/orders/consumer/c:",
            "arn:aws:kinesis:us-east-1:000000000000:stream/orders/consumer/c:12x",
            // A stream ARN, not a consumer's.
            "arn:aws:kinesis:us-east-1:000000000000:stream/orders",
            // Names outside the pattern.
            "arn:aws:kinesis:us-east-1:000000000000:stream/or ders/consumer/c:1",
            "arn:aws:kinesis:us-east-1:000000000000:stream/orders/consumer/c@d:1",
            "arn:aws:kinesis:us-east-1:000000000000:stream/orders/consumer/:1",
            // Not a twelve-digit account, not Kinesis.
            "arn:aws:kinesis:us-east-1:123:stream/orders/consumer/c:1",
            "arn:aws:sqs:us-east-1:000000000000:stream/orders/consumer/c:1",
        ];
        for text in refused {
            assert_eq!(ConsumerArn::parse(text), None, "{text}");
        }
        let long_name = "c".repeat(129);
        let too_long =
            format!("arn:aws:kinesis:us-east-1:000000000000:stream/orders/consumer/{long_name}:1");
        assert_eq!(ConsumerArn::parse(&too_long), None);
        let huge = format!("{}:1", "a".repeat(MAX_CONSUMER_ARN_LEN));
        assert_eq!(ConsumerArn::parse(&huge), None);
    }

    #[test]
    fn consumer_names_follow_the_pattern() {
        assert!(is_valid_consumer_name("a.b-c_D9"));
        assert!(!is_valid_consumer_name(""));
        assert!(!is_valid_consumer_name("has/slash"));
        assert!(!is_valid_consumer_name(&"x".repeat(129)));
    }
}
