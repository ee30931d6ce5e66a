//! Kinesis's control-plane call limits (LimitExceededException when over),
//! as token buckets holding one second of each rate: per account for most
//! operations, per stream for ListShards and most consumer operations.
//! Enforced here, in the one service every frontend's control-plane call
//! passes through.
//!
//! A full bucket is the same as no bucket, so full ones are swept away:
//! the table holds only what was used in about the last second, however
//! many accounts or (nonexistent) stream names callers make up.

use freshet_errors::ErrorCode;
use std::collections::HashMap;
use std::sync::Mutex;

use std::time::Duration;

use tokio::time::Instant;
use tonic::Status;

/// Calls per second an operation allows, and over what.
fn limit_of(operation: &str) -> Option<(f64, PerStream)> {
    let account = |rate: f64| Some((rate, PerStream(false)));
    match operation {
        "CreateStream"
        | "DeleteStream"
        | "ListStreams"
        | "SplitShard"
        | "MergeShards"
        | "UpdateStreamWarmThroughput"
        | "UpdateAccountSettings"
        | "UpdateStreamMode"
        | "AddTagsToStream"
        | "RemoveTagsFromStream"
        | "ListTagsForStream"
        | "TagResource"
        | "UntagResource"
        | "ListTagsForResource"
        | "EnableEnhancedMonitoring"
        | "DisableEnhancedMonitoring"
        | "IncreaseStreamRetentionPeriod"
        | "DecreaseStreamRetentionPeriod"
        | "UpdateStreamRecordDistributionStrategy" => account(5.0),
        "DescribeLimits" => account(1.0),
        "DescribeStream" | "UpdateShardCount" => account(10.0),
        "DescribeStreamSummary" => account(20.0),
        "ListShards" => Some((1000.0, PerStream(true))),
        // Enhanced fan-out consumers, as the current API model gives them.
        "RegisterStreamConsumer" => account(5.0),
        "DescribeStreamConsumer" => Some((20.0, PerStream(true))),
        "ListStreamConsumers" | "DeregisterStreamConsumer" => Some((5.0, PerStream(true))),
        _ => None,
    }
}

#[derive(Clone, Copy)]
struct PerStream(bool);

struct Bucket {
    rate: f64,
    tokens: f64,
    refilled_at: Instant,
}

impl Bucket {
    /// Whether the bucket has refilled by `now`: it then holds nothing a
    /// fresh one would not.
    fn is_full_at(&self, now: Instant) -> bool {
        let elapsed = now
            .saturating_duration_since(self.refilled_at)
            .as_secs_f64();
        self.tokens + elapsed * self.rate >= self.rate
    }
}

/// Buckets kept before full ones are swept away.
const SWEEP_ABOVE: usize = 1024;

struct Buckets {
    by_key: HashMap<(String, String, &'static str), Bucket>,
    swept_at: Instant,
}

/// The buckets, created on first use.
pub struct ApiRateLimits {
    enabled: bool,
    buckets: Mutex<Buckets>,
}

impl ApiRateLimits {
    pub fn new(enabled: bool) -> ApiRateLimits {
        ApiRateLimits {
            enabled,
            buckets: Mutex::new(Buckets {
                by_key: HashMap::new(),
                swept_at: Instant::now(),
            }),
        }
    }

    /// Buckets held.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.buckets
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .by_key
            .len()
    }

    /// Takes one call of `operation` by `account_id` (on `stream_name`);
    /// LimitExceededException when the rate is spent.
    pub fn check(
        &self,
        operation: &'static str,
        account_id: &str,
        stream_name: &str,
    ) -> Result<(), Status> {
        let Some((rate, PerStream(per_stream))) = limit_of(operation).filter(|_| self.enabled)
        else {
            return Ok(());
        };
        let stream = if per_stream { stream_name } else { "" };
        let now = Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if buckets.by_key.len() > SWEEP_ABOVE
            && now.saturating_duration_since(buckets.swept_at) >= Duration::from_secs(1)
        {
            buckets.by_key.retain(|_, bucket| !bucket.is_full_at(now));
            buckets.swept_at = now;
        }
        let bucket = buckets
            .by_key
            .entry((account_id.to_owned(), stream.to_owned(), operation))
            .or_insert(Bucket {
                rate,
                tokens: rate,
                refilled_at: now,
            });
        let elapsed = now
            .saturating_duration_since(bucket.refilled_at)
            .as_secs_f64();
        bucket.tokens = (bucket.tokens + elapsed * bucket.rate).min(bucket.rate);
        bucket.refilled_at = now;
        if bucket.tokens < 1.0 {
            return Err(ErrorCode::LimitExceeded.status(if per_stream {
                format!("Rate exceeded for stream {stream_name} under account {account_id}.")
            } else {
                format!("Rate exceeded for {operation} for account {account_id}.")
            }));
        }
        bucket.tokens -= 1.0;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn five_creates_a_second_per_account() {
        let limits = ApiRateLimits::new(true);
        for _ in 0..5 {
            assert!(limits.check("CreateStream", "a", "s").is_ok());
        }
        let refused = limits.check("CreateStream", "a", "s").expect_err("sixth");
        assert_eq!(refused.code(), tonic::Code::ResourceExhausted);
        assert!(
            limits.check("CreateStream", "b", "s").is_ok(),
            "another account"
        );
        assert!(limits.check("DescribeStreamSummary", "a", "s").is_ok());
        tokio::time::advance(std::time::Duration::from_millis(200)).await;
        assert!(
            limits.check("CreateStream", "a", "s").is_ok(),
            "refilled one"
        );
        assert!(ApiRateLimits::new(false)
            .check("CreateStream", "a", "s")
            .is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn spent_buckets_are_kept_and_refilled_ones_swept_away() {
        let limits = ApiRateLimits::new(true);
        tokio::time::advance(Duration::from_millis(1100)).await;
        for _ in 0..5 {
            assert!(limits.check("CreateStream", "a", "").is_ok());
        }
        // Names made up by the thousand (streams that do not exist).
        for name in 0..2 * SWEEP_ABOVE {
            assert!(limits
                .check("ListShards", "a", &format!("missing-{name}"))
                .is_ok());
        }
        // A sweep now forgets nothing still spending its second.
        assert!(
            limits.check("CreateStream", "a", "").is_err(),
            "the spent bucket is remembered"
        );
        assert!(limits.len() > 2 * SWEEP_ABOVE);
        tokio::time::advance(Duration::from_millis(1100)).await;
        assert!(limits.check("ListShards", "a", "one-more").is_ok());
        assert!(limits.len() <= 2, "{} buckets held", limits.len());
    }
}
