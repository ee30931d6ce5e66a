//! `freshet-shardmap`: the in-memory shard-map snapshot every frontend,
//! cache node and storage worker builds from the membership change log, and
//! the routing lookup of the talk: **fresh hit → (stale) cache → (miss) database**.
//!
//! - [`ShardMap`] applies changes by per-entry version, so a duplicated or
//!   reordered change is absorbed; a gap in the change stream is reported so
//!   the subscriber resubscribes (and gets a snapshot if far behind).
//! - [`follow_change_log`] keeps a [`SharedShardMap`] current from membership.
//! - [`Router`] answers "where are this stream's shards?" from the snapshot
//!   while its entries are valid by the timer service's clock, and otherwise
//!   re-reads them from the cache service (which falls back to Postgres).
//!
//! Correctness never depends on an entry being fresh: storage workers check
//! the leadership epoch on every call. Validity times bound how long a stale
//! route is tried; they only affect liveness.

pub mod fuzzing;
mod map;
mod router;
mod subscriber;

pub use map::{ApplyOutcome, EntryId, ShardMap, SharedShardMap};
pub use router::{RouteError, RouteSource, Router, RouterStats, StreamRoute};
pub use subscriber::{follow_change_log, Subscription};

pub use freshet_proto::v1::{ShardMapEntry, ShardState};

/// Whose copies of `entry`'s current segment vote (see
/// [`freshet_types::Voters`]). An entry published before voters were
/// recorded names none: then every copy votes, as it did.
pub fn voters_of(entry: &ShardMapEntry) -> freshet_types::Voters {
    if entry.voter_ids.is_empty() {
        return freshet_types::Voters::Stable(
            std::iter::once(entry.leader_worker_id.clone())
                .chain(entry.replica_worker_ids.iter().cloned())
                .collect(),
        );
    }
    freshet_types::Voters::from_lists(&entry.voter_ids, &entry.next_voter_ids)
}

/// The arrival time (ms since the Unix epoch) from which `entry`'s records
/// are still served at `now_ms`: those within the stream's retention
/// period, and never one that had expired before a retention increase
/// (`ShardMapEntry.expired_before_ms`). Readers start no earlier, and
/// workers trim what arrived before it — one rule for both, so what is
/// kept and what is served agree. `hour_ms` is one retention hour
/// (shorter only in tests).
pub fn unexpired_from(entry: &ShardMapEntry, now_ms: i64, hour_ms: i64) -> i64 {
    unexpired_since(
        entry.retention_hours,
        entry.expired_before_ms,
        now_ms,
        hour_ms,
    )
}

/// [`unexpired_from`] for a stream's retention period and expired-before
/// floor: the stream's trim horizon, as a time.
pub fn unexpired_since(
    retention_hours: u32,
    expired_before_ms: i64,
    now_ms: i64,
    hour_ms: i64,
) -> i64 {
    let retention_ms = i64::from(retention_hours.max(1)).saturating_mul(hour_ms);
    now_ms.saturating_sub(retention_ms).max(expired_before_ms)
}
