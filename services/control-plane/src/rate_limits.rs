//! Kinesis's control-plane call limits (LimitExceededException when over),
//! as token buckets holding one second of each rate: per account for most
//! operations, per stream for ListShards. Enforced here, in the one service
//! every frontend's control-plane call passes through.

use freshet_errors::ErrorCode;
use std::collections::HashMap;
use std::sync::Mutex;

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
        | "UpdateStreamMode" => account(5.0),
        "DescribeStream" | "UpdateShardCount" => account(10.0),
        "DescribeStreamSummary" => account(20.0),
        "ListShards" => Some((1000.0, PerStream(true))),
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

/// The buckets, created on first use.
pub struct ApiRateLimits {
    enabled: bool,
    buckets: Mutex<HashMap<(String, String, &'static str), Bucket>>,
}

impl ApiRateLimits {
    pub fn new(enabled: bool) -> ApiRateLimits {
        ApiRateLimits {
            enabled,
            buckets: Mutex::new(HashMap::new()),
        }
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
        let bucket = buckets
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
}
