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
