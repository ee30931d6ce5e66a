//! What each shard is asked to take, for the control plane's scaler:
//! offered bytes and records (written or refused by the shard's limit),
//! refusals, and a sample of the offered hash keys, whose median is where a
//! split would divide the load evenly.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use freshet_types::HashKey;

/// Every how many offered records one hash key is sampled.
const SAMPLE_EVERY: u64 = 4;
/// Hash keys kept (the most recent ones).
const SAMPLES_KEPT: usize = 1024;

static NEXT_METER_ID: AtomicU64 = AtomicU64::new(1);

pub struct LoadMeter {
    /// Unique per meter in this process, so a reader can tell a reopened
    /// shard's fresh counters from old ones.
    pub id: u64,
    offered_bytes: AtomicU64,
    offered_records: AtomicU64,
    throttled_records: AtomicU64,
    samples: Mutex<VecDeque<u128>>,
}

/// A reading of a meter.
pub struct LoadReading {
    pub offered_bytes: u64,
    pub offered_records: u64,
    pub throttled_records: u64,
    pub median_hash_key: Option<HashKey>,
}

impl Default for LoadMeter {
    fn default() -> Self {
        LoadMeter {
            id: NEXT_METER_ID.fetch_add(1, Ordering::Relaxed),
            offered_bytes: AtomicU64::new(0),
            offered_records: AtomicU64::new(0),
            throttled_records: AtomicU64::new(0),
            samples: Mutex::new(VecDeque::with_capacity(SAMPLES_KEPT)),
        }
    }
}

/// One record offered to a shard, as the meter sees it.
pub struct OfferedRecord<'a> {
    pub partition_key: &'a str,
    /// The producer's ExplicitHashKey (decimal), or empty.
    pub explicit_hash_key: &'a str,
    pub size: usize,
}

impl OfferedRecord<'_> {
    /// Where the record lands in the hash-key space.
    fn hash_key(&self) -> u128 {
        HashKey::parse_decimal(self.explicit_hash_key)
            .unwrap_or_else(|_| HashKey::of_partition_key(self.partition_key))
            .0
    }
}

impl LoadMeter {
    /// Counts an append: every record's place and size, and how many of
    /// them the limit refused.
    pub fn record<'a>(
        &self,
        records: impl IntoIterator<Item = OfferedRecord<'a>>,
        throttled: usize,
    ) {
        let mut bytes = 0;
        let mut count = 0;
        let before = self.offered_records.load(Ordering::Relaxed);
        let mut sampled = Vec::new();
        for record in records {
            if (before + count).is_multiple_of(SAMPLE_EVERY) {
                sampled.push(record.hash_key());
            }
            bytes += record.size as u64;
            count += 1;
        }
        self.offered_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.offered_records.fetch_add(count, Ordering::Relaxed);
        self.throttled_records
            .fetch_add(throttled as u64, Ordering::Relaxed);
        if !sampled.is_empty() {
            let mut samples = self.samples.lock().unwrap_or_else(|p| p.into_inner());
            for key in sampled {
                if samples.len() == SAMPLES_KEPT {
                    samples.pop_front();
                }
                samples.push_back(key);
            }
        }
    }

    pub fn read(&self) -> LoadReading {
        let mut keys: Vec<u128> = self
            .samples
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .copied()
            .collect();
        keys.sort_unstable();
        LoadReading {
            offered_bytes: self.offered_bytes.load(Ordering::Relaxed),
            offered_records: self.offered_records.load(Ordering::Relaxed),
            throttled_records: self.throttled_records.load(Ordering::Relaxed),
            median_hash_key: keys.get(keys.len() / 2).map(|k| HashKey(*k)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_median_follows_where_the_load_is() {
        let meter = LoadMeter::default();
        let keys: Vec<String> = (0..4000).map(|i| format!("key-{i}")).collect();
        meter.record(
            keys.iter().map(|k| OfferedRecord {
                partition_key: k,
                explicit_hash_key: "",
                size: 10,
            }),
            7,
        );
        let reading = meter.read();
        assert_eq!(reading.offered_records, 4000);
        assert_eq!(reading.offered_bytes, 40_000);
        assert_eq!(reading.throttled_records, 7);
        let median = reading.median_hash_key.expect("sampled").0;
        let below = keys
            .iter()
            .filter(|k| HashKey::of_partition_key(k).0 < median)
            .count();
        assert!(
            (1_600..2_400).contains(&below),
            "{below} of 4000 below the median"
        );
    }

    #[test]
    fn an_explicit_hash_key_is_sampled_where_it_points() {
        let meter = LoadMeter::default();
        let place = HashKey(u128::MAX / 3).to_string();
        meter.record(
            (0..400).map(|_| OfferedRecord {
                partition_key: "same-key",
                explicit_hash_key: &place,
                size: 1,
            }),
            0,
        );
        assert_eq!(
            meter.read().median_hash_key,
            Some(HashKey(u128::MAX / 3)),
            "not the partition key's hash"
        );
    }
}
