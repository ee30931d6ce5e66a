//! Per-shard throughput limits, as token buckets, enforced by the shard's
//! leader — the one place every write and read of the shard passes, however
//! many frontends there are.
//!
//! Writes: 1 MiB/s and 1,000 records/s; reads: 2 MiB/s and 5 calls/s (the
//! Kinesis defaults; each is a worker setting, 0 for no limit). A bucket
//! holds one second of its rate. A record is admitted while the bucket has
//! room for it — or, however large, when the bucket is full: then the bucket
//! goes into debt and the shard is refused until it has refilled (a 10 MiB
//! record costs ten seconds of a 1 MiB/s shard, the "tank that refills").
//! Reads are charged after they happen, so a 10 MiB read makes the next
//! ones wait about five seconds, as Kinesis documents.

use std::sync::Mutex;

use tokio::time::Instant;

/// A shard's limits, per second; 0 means unlimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardLimits {
    pub write_bytes: u64,
    pub write_records: u64,
    pub read_bytes: u64,
    pub read_calls: u64,
}

impl ShardLimits {
    /// What a Kinesis shard allows.
    pub const KINESIS: ShardLimits = ShardLimits {
        write_bytes: 1024 * 1024,
        write_records: 1000,
        read_bytes: 2 * 1024 * 1024,
        read_calls: 5,
    };

    pub const UNLIMITED: ShardLimits = ShardLimits {
        write_bytes: 0,
        write_records: 0,
        read_bytes: 0,
        read_calls: 0,
    };
}

/// Tokens refilled at `rate` per second up to one second's worth.
#[derive(Debug)]
struct Bucket {
    /// Per second; 0: unlimited.
    rate: f64,
    /// May go negative (debt).
    tokens: f64,
    refilled_at: Instant,
}

impl Bucket {
    fn new(rate: u64, now: Instant) -> Bucket {
        Bucket {
            rate: rate as f64,
            tokens: rate as f64,
            refilled_at: now,
        }
    }

    fn unlimited(&self) -> bool {
        self.rate == 0.0
    }

    fn refill(&mut self, now: Instant) {
        let elapsed = now.saturating_duration_since(self.refilled_at);
        self.tokens = (self.tokens + elapsed.as_secs_f64() * self.rate).min(self.rate);
        self.refilled_at = now;
    }

    fn is_full(&self) -> bool {
        self.tokens >= self.rate
    }

    /// Whether `amount` may be taken now: it fits, or the bucket is full.
    fn admits(&self, amount: f64) -> bool {
        self.unlimited() || amount <= self.tokens || self.is_full()
    }

    fn take(&mut self, amount: f64) {
        if !self.unlimited() {
            self.tokens -= amount;
        }
    }

    fn in_debt(&self) -> bool {
        !self.unlimited() && self.tokens < 0.0
    }
}

struct Buckets {
    write_bytes: Bucket,
    write_records: Bucket,
    read_bytes: Bucket,
    read_calls: Bucket,
}

/// The buckets of one shard.
pub struct ShardThrottle {
    buckets: Mutex<Buckets>,
}

impl ShardThrottle {
    pub fn new(limits: ShardLimits) -> ShardThrottle {
        let now = Instant::now();
        ShardThrottle {
            buckets: Mutex::new(Buckets {
                write_bytes: Bucket::new(limits.write_bytes, now),
                write_records: Bucket::new(limits.write_records, now),
                read_bytes: Bucket::new(limits.read_bytes, now),
                read_calls: Bucket::new(limits.read_calls, now),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buckets> {
        self.buckets.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How many of these records (by size, in order) may be written now;
    /// their cost is taken. The rest are refused.
    pub fn admit_writes(&self, sizes: impl IntoIterator<Item = usize>) -> usize {
        let mut buckets = self.lock();
        let now = Instant::now();
        buckets.write_bytes.refill(now);
        buckets.write_records.refill(now);
        let mut admitted = 0;
        for size in sizes {
            let size = size as f64;
            if !(buckets.write_bytes.admits(size) && buckets.write_records.admits(1.0)) {
                break;
            }
            buckets.write_bytes.take(size);
            buckets.write_records.take(1.0);
            admitted += 1;
        }
        admitted
    }

    /// Whether a read may start now (one call's token is taken if so).
    pub fn admit_read(&self) -> bool {
        let mut buckets = self.lock();
        let now = Instant::now();
        buckets.read_bytes.refill(now);
        buckets.read_calls.refill(now);
        if buckets.read_bytes.in_debt() || !buckets.read_calls.admits(1.0) {
            return false;
        }
        buckets.read_calls.take(1.0);
        true
    }

    /// Charges what a read returned (it may put the shard into debt).
    pub fn charge_read(&self, bytes: usize) {
        self.lock().read_bytes.take(bytes as f64);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// How long a bucket of `rate` per second takes to pay off `debt`.
    fn refill_time(debt: u64, rate: u64) -> Duration {
        Duration::from_secs_f64(debt as f64 / rate as f64)
    }

    #[tokio::test(start_paused = true)]
    async fn a_shard_takes_a_second_of_its_rate_then_refills() {
        let throttle = ShardThrottle::new(ShardLimits::KINESIS);
        assert_eq!(throttle.admit_writes(std::iter::repeat_n(100, 1500)), 1000);
        assert_eq!(
            throttle.admit_writes([100]),
            0,
            "the records bucket is empty"
        );
        tokio::time::advance(Duration::from_millis(100)).await;
        assert_eq!(throttle.admit_writes(std::iter::repeat_n(100, 500)), 100);
    }

    #[tokio::test(start_paused = true)]
    async fn a_large_record_passes_a_full_bucket_and_leaves_it_in_debt() {
        let throttle = ShardThrottle::new(ShardLimits::KINESIS);
        let ten_mib = 10 * 1024 * 1024;
        assert_eq!(
            throttle.admit_writes([ten_mib]),
            1,
            "a full tank lets it through"
        );
        assert_eq!(throttle.admit_writes([1]), 0, "then the shard is in debt");
        tokio::time::advance(refill_time(9 * 1024 * 1024, 1024 * 1024)).await;
        tokio::time::advance(Duration::from_millis(10)).await;
        assert_eq!(
            throttle.admit_writes([1]),
            1,
            "nine seconds later it has refilled"
        );
        assert_eq!(
            throttle.admit_writes([2 * 1024 * 1024]),
            0,
            "a record larger than what is left waits for a full bucket"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn five_reads_a_second_and_a_large_read_costs_later_ones() {
        let throttle = ShardThrottle::new(ShardLimits::KINESIS);
        for _ in 0..5 {
            assert!(throttle.admit_read());
        }
        assert!(!throttle.admit_read(), "a sixth call within the second");
        tokio::time::advance(Duration::from_secs(1)).await;
        assert!(throttle.admit_read());
        throttle.charge_read(10 * 1024 * 1024);
        tokio::time::advance(Duration::from_secs(3)).await;
        assert!(!throttle.admit_read(), "still paying for 10 MiB at 2 MiB/s");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(throttle.admit_read());
    }

    #[test]
    fn unlimited_admits_everything() {
        let throttle = ShardThrottle::new(ShardLimits::UNLIMITED);
        assert_eq!(
            throttle.admit_writes(std::iter::repeat_n(1 << 20, 100)),
            100
        );
        for _ in 0..100 {
            assert!(throttle.admit_read());
        }
    }
}
