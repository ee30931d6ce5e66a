//! The leader lease: a worker acknowledges writes only while membership's
//! last heartbeat answer lets it (see the safety argument in
//! `services/membership/src/failover.rs`).
//!
//! The lease runs on this worker's monotonic clock from the moment the
//! heartbeat was *sent* (so it ends no later than membership believes),
//! shortened by a drift allowance, and counts only once the shard map has
//! applied the change-log version that came with it.

use std::sync::Mutex;
use std::time::Duration;

use freshet_shardmap::SharedShardMap;
use tokio::time::Instant;

/// Assumed worst-case rate difference between clocks: 1 %.
const DRIFT_DIVISOR: u32 = 100;

#[derive(Debug, Clone, Copy)]
struct Grant {
    valid_until: Instant,
    min_version: i64,
}

/// This worker's current lease.
#[derive(Default)]
pub struct Lease {
    grant: Mutex<Option<Grant>>,
}

impl Lease {
    /// Records a grant from a heartbeat sent at `sent_at`.
    pub fn renew(&self, sent_at: Instant, duration: Duration, min_version: i64) {
        let valid_until = sent_at + duration - duration / DRIFT_DIVISOR;
        *self.grant.lock().unwrap_or_else(|p| p.into_inner()) = Some(Grant {
            valid_until,
            min_version,
        });
    }

    /// Forgets the lease (membership no longer knows this worker).
    pub fn revoke(&self) {
        *self.grant.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Whether this worker may acknowledge writes as a leader right now.
    pub fn is_held(&self, map: &SharedShardMap) -> bool {
        let grant = *self.grant.lock().unwrap_or_else(|p| p.into_inner());
        grant.is_some_and(|grant| {
            Instant::now() < grant.valid_until
                && map.read(|m| m.applied_version()) >= grant.min_version
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_lease_ends_before_its_duration_measured_from_the_send() {
        let lease = Lease::default();
        let map = SharedShardMap::default();
        assert!(!lease.is_held(&map), "no lease before the first heartbeat");
        let sent_at = Instant::now();
        tokio::time::advance(Duration::from_millis(100)).await;
        lease.renew(sent_at, Duration::from_secs(10), 0);
        assert!(lease.is_held(&map));
        tokio::time::advance(Duration::from_millis(9_800)).await;
        assert!(
            !lease.is_held(&map),
            "9.9 s after sending, the drift allowance has ended it"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_lease_waits_for_the_shard_map_to_catch_up() {
        let lease = Lease::default();
        let map = SharedShardMap::default();
        lease.renew(Instant::now(), Duration::from_secs(10), 5);
        assert!(!lease.is_held(&map), "the map has not seen version 5");
        map.write(|m| m.replace_with_snapshot(Vec::new(), 5));
        assert!(lease.is_held(&map));
        lease.revoke();
        assert!(!lease.is_held(&map));
    }
}
