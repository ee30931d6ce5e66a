//! The routing lookup: fresh snapshot hit → stale, so re-read from the cache
//! service → the cache fills a Redis miss from Postgres.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use freshet_proto::v1::shard_map_cache_client::ShardMapCacheClient;
use freshet_proto::v1::{CacheSource, GetStreamShardsRequest, ShardMapEntry, ShardState};
use freshet_server::TracedChannel;
use freshet_timer_client::TimerClient;
use freshet_types::{HashKey, HashKeyRange, StreamArn};

use crate::map::SharedShardMap;

/// Where a route came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RouteSource {
    /// The local snapshot, every entry valid by the timer's clock.
    FreshSnapshot,
    /// The cache service answered from Redis.
    CacheRedis,
    /// The cache service missed Redis and read Postgres.
    CacheDatabase,
    /// The cache service was unreachable; the stale snapshot was used.
    StaleSnapshot,
}

/// The shards of one stream, as routing knows them.
#[derive(Debug, Clone)]
pub struct StreamRoute {
    /// Sorted by shard id.
    pub entries: Vec<ShardMapEntry>,
    pub source: RouteSource,
    /// The open shards' hash-key ranges, parsed once per route (a
    /// PutRecords looks up 500 keys), sorted by start: (range, index into
    /// `entries`).
    open_ranges: Vec<(HashKeyRange, usize)>,
}

impl StreamRoute {
    pub fn new(entries: Vec<ShardMapEntry>, source: RouteSource) -> StreamRoute {
        let mut open_ranges: Vec<(HashKeyRange, usize)> = entries
            .iter()
            .enumerate()
            .filter(|(_, e)| e.state() == ShardState::Open)
            .filter_map(|(index, e)| {
                let start = HashKey::parse_decimal(&e.starting_hash_key).ok()?;
                let end = HashKey::parse_decimal(&e.ending_hash_key).ok()?;
                Some((HashKeyRange { start, end }, index))
            })
            .collect();
        open_ranges.sort_by_key(|(range, _)| range.start);
        StreamRoute {
            entries,
            source,
            open_ranges,
        }
    }

    /// The shard-level metrics the stream has switched on (every entry of
    /// a stream carries the same set).
    pub fn shard_level_metrics(&self) -> freshet_types::ShardLevelMetrics {
        freshet_types::ShardLevelMetrics::from_bits(
            self.entries.first().map_or(0, |e| e.shard_level_metrics),
        )
    }

    /// Whether the stream spreads records itself (AUTO record
    /// distribution; every entry of a stream carries the same setting).
    pub fn auto_record_distribution(&self) -> bool {
        self.entries
            .first()
            .is_some_and(|e| e.auto_record_distribution)
    }

    /// A hash key in the `n`-th open shard (counting round, in hash-key
    /// order), `salt` picking where in its range: records given
    /// consecutive `n` go to every open shard in turn — how AUTO record
    /// distribution spreads them evenly — and land all over each shard's
    /// range, so a split of the shard (at its records' median key) halves
    /// them, and a record routed again after a split lands in either child.
    pub fn spread_hash_key(&self, n: u64, salt: u128) -> Option<HashKey> {
        let count = u64::try_from(self.open_ranges.len())
            .ok()
            .filter(|c| *c > 0)?;
        let index = usize::try_from(n % count).ok()?;
        self.open_ranges.get(index).map(|(range, _)| {
            // A range of every key is 2^128 wide: any salt is in it.
            match range.end.0.saturating_sub(range.start.0).checked_add(1) {
                Some(width) => HashKey(range.start.0 + salt % width),
                None => HashKey(salt),
            }
        })
    }

    /// The open shard whose hash-key range holds `hash_key`.
    pub fn shard_for_hash_key(&self, hash_key: HashKey) -> Option<&ShardMapEntry> {
        // Open shards' ranges do not overlap: the one that may hold the key
        // is the last one starting at or below it.
        let after = self
            .open_ranges
            .partition_point(|(range, _)| range.start <= hash_key);
        let (range, index) = self.open_ranges.get(after.checked_sub(1)?)?;
        range.contains(hash_key).then(|| &self.entries[*index])
    }

    pub fn shard(&self, shard_id: &str) -> Option<&ShardMapEntry> {
        self.entries
            .iter()
            .find(|e| e.key.as_ref().is_some_and(|k| k.shard_id == shard_id))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RouteError {
    #[error("shard map unavailable: the cache service failed ({0}) and no local entry exists")]
    Unavailable(String),
}

/// Counters of which branch each lookup took.
#[derive(Debug, Default)]
pub struct RouterStats {
    pub fresh_hits: AtomicU64,
    pub cache_redis: AtomicU64,
    pub cache_database: AtomicU64,
    pub stale_served: AtomicU64,
    pub not_found: AtomicU64,
}

impl RouterStats {
    pub fn snapshot(&self) -> [u64; 5] {
        [
            self.fresh_hits.load(Ordering::Relaxed),
            self.cache_redis.load(Ordering::Relaxed),
            self.cache_database.load(Ordering::Relaxed),
            self.stale_served.load(Ordering::Relaxed),
            self.not_found.load(Ordering::Relaxed),
        ]
    }
}

/// Answers "where are this stream's shards?".
#[derive(Clone)]
pub struct Router {
    map: SharedShardMap,
    cache: ShardMapCacheClient<TracedChannel>,
    timer: TimerClient,
    stats: Arc<RouterStats>,
}

impl Router {
    pub fn new(map: SharedShardMap, cache_channel: TracedChannel, timer: TimerClient) -> Router {
        Router {
            map,
            cache: freshet_server::cache_client(cache_channel),
            timer,
            stats: Arc::default(),
        }
    }

    pub fn map(&self) -> &SharedShardMap {
        &self.map
    }

    pub fn stats(&self) -> &RouterStats {
        &self.stats
    }

    /// The shards of the stream `arn` names, or `None` if it does not exist.
    pub async fn stream_route(&self, arn: &StreamArn) -> Result<Option<StreamRoute>, RouteError> {
        let local = self.map.read(|m| m.stream_entries(arn));
        // Fresh only if the timer proves every entry is still within its
        // validity; an unsynchronised timer proves nothing.
        let fresh = !local.is_empty()
            && self.timer.now().is_some_and(|now| {
                local
                    .iter()
                    .all(|e| now.is_surely_before(e.valid_until_micros))
            });
        if fresh {
            self.stats.fresh_hits.fetch_add(1, Ordering::Relaxed);
            return Ok(Some(StreamRoute::new(local, RouteSource::FreshSnapshot)));
        }

        let mut request = tonic::Request::new(GetStreamShardsRequest {
            account_id: arn.account_id.clone(),
            region: arn.region.clone(),
            stream_name: arn.stream_name.clone(),
        });
        request.set_timeout(Duration::from_secs(2));
        let mut cache = self.cache.clone();
        match cache.get_stream_shards(request).await {
            Ok(response) => {
                let response = response.into_inner();
                let source = match response.source() {
                    CacheSource::Database => {
                        self.stats.cache_database.fetch_add(1, Ordering::Relaxed);
                        RouteSource::CacheDatabase
                    }
                    _ => {
                        self.stats.cache_redis.fetch_add(1, Ordering::Relaxed);
                        RouteSource::CacheRedis
                    }
                };
                if response.entries.is_empty() {
                    self.stats.not_found.fetch_add(1, Ordering::Relaxed);
                    // The stream may have been deleted: drop what we held.
                    if !local.is_empty() {
                        self.map.write(|m| m.expire_stream(arn));
                    }
                    return Ok(None);
                }
                let served_uid = response
                    .entries
                    .iter()
                    .filter_map(|e| e.key.as_ref().map(|k| k.stream_uid))
                    .max();
                let entries = self.map.write(|m| {
                    for entry in response.entries {
                        m.upsert(entry);
                    }
                    m.stream_entries(arn)
                });
                // If the local map knows a newer incarnation than the cache
                // served, it wins (the cache will catch up).
                let entries = if entries
                    .iter()
                    .any(|e| e.key.as_ref().map(|k| k.stream_uid) >= served_uid)
                {
                    entries
                } else {
                    Vec::new()
                };
                Ok((!entries.is_empty()).then(|| StreamRoute::new(entries, source)))
            }
            Err(status) if !local.is_empty() => {
                tracing::warn!(code = ?status.code(), message = status.message(), stream = %arn, "cache unavailable, routing with a stale entry");
                self.stats.stale_served.fetch_add(1, Ordering::Relaxed);
                Ok(Some(StreamRoute::new(local, RouteSource::StaleSnapshot)))
            }
            Err(status) => Err(RouteError::Unavailable(format!(
                "{:?}: {}",
                status.code(),
                status.message()
            ))),
        }
    }

    /// Marks a stream's entries stale (after a worker said "not leader").
    pub fn invalidate(&self, arn: &StreamArn) {
        self.map.write(|m| m.expire_stream(arn));
    }
}

#[cfg(test)]
mod tests {
    use freshet_proto::v1::ShardKey;

    use super::*;

    fn entry(shard_id: &str, start: u128, end: u128, state: ShardState) -> ShardMapEntry {
        ShardMapEntry {
            key: Some(ShardKey {
                stream_uid: 1,
                shard_id: shard_id.to_owned(),
            }),
            starting_hash_key: start.to_string(),
            ending_hash_key: end.to_string(),
            state: state as i32,
            ..Default::default()
        }
    }

    #[test]
    fn spread_keys_take_every_open_shard_in_turn_anywhere_in_its_range() {
        let route = StreamRoute::new(
            vec![
                entry("shardId-000000000000", 0, u128::MAX, ShardState::Closed),
                entry(
                    "shardId-000000000001",
                    1 << 127,
                    u128::MAX,
                    ShardState::Open,
                ),
                entry("shardId-000000000002", 0, (1 << 127) - 1, ShardState::Open),
            ],
            RouteSource::FreshSnapshot,
        );
        let shard_of = |n: u64, salt: u128| {
            let key = route.spread_hash_key(n, salt).expect("an open shard");
            route
                .shard_for_hash_key(key)
                .map(|e| e.key.clone().unwrap_or_default().shard_id)
        };
        let turns: Vec<_> = (0..4).map(|n| shard_of(n, u128::MAX)).collect();
        assert_eq!(
            turns,
            ["shardId-000000000002", "shardId-000000000001"]
                .repeat(2)
                .into_iter()
                .map(|s| Some(s.to_owned()))
                .collect::<Vec<_>>()
        );
        // The salt picks the place in the range, never outside it.
        assert_eq!(route.spread_hash_key(1, 0), Some(HashKey(1 << 127)));
        assert_eq!(route.spread_hash_key(1, 5), Some(HashKey((1 << 127) + 5)));
        assert_eq!(
            route.spread_hash_key(0, u128::MAX),
            Some(HashKey((1 << 127) - 1))
        );
        // A full-range shard takes the salt as it is.
        let whole = StreamRoute::new(
            vec![entry(
                "shardId-000000000000",
                0,
                u128::MAX,
                ShardState::Open,
            )],
            RouteSource::FreshSnapshot,
        );
        assert_eq!(whole.spread_hash_key(7, u128::MAX), Some(HashKey::MAX));
        let none = StreamRoute::new(Vec::new(), RouteSource::FreshSnapshot);
        assert_eq!(none.spread_hash_key(0, 0), None);
    }

    #[test]
    fn a_hash_key_routes_to_the_open_shard_whose_range_holds_it() {
        // shard 0 was split into 1 and 2; 1 and 2 listed out of key order.
        let route = StreamRoute::new(
            vec![
                entry("shardId-000000000000", 0, u128::MAX, ShardState::Closed),
                entry(
                    "shardId-000000000001",
                    1 << 127,
                    u128::MAX,
                    ShardState::Open,
                ),
                entry("shardId-000000000002", 0, (1 << 127) - 1, ShardState::Open),
            ],
            RouteSource::FreshSnapshot,
        );
        let shard_of = |key: u128| {
            route
                .shard_for_hash_key(HashKey(key))
                .and_then(|e| e.key.as_ref())
                .map(|k| k.shard_id.as_str())
        };
        assert_eq!(shard_of(0), Some("shardId-000000000002"));
        assert_eq!(shard_of((1 << 127) - 1), Some("shardId-000000000002"));
        assert_eq!(shard_of(1 << 127), Some("shardId-000000000001"));
        assert_eq!(shard_of(u128::MAX), Some("shardId-000000000001"));
    }

    #[test]
    fn a_key_in_no_open_shard_has_no_route() {
        // The upper half's shard is closing (not open) while it is merged.
        let route = StreamRoute::new(
            vec![
                entry("shardId-000000000000", 0, (1 << 127) - 1, ShardState::Open),
                entry(
                    "shardId-000000000001",
                    1 << 127,
                    u128::MAX,
                    ShardState::Closing,
                ),
            ],
            RouteSource::FreshSnapshot,
        );
        assert!(route.shard_for_hash_key(HashKey(5)).is_some());
        assert!(route.shard_for_hash_key(HashKey(1 << 127)).is_none());
        assert!(route.shard_for_hash_key(HashKey(u128::MAX)).is_none());
    }
}
