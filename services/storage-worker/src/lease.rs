//! The leader lease: a worker acknowledges writes only while membership's
//! last heartbeat answer lets it (see the safety argument in
//! `services/membership/src/failover.rs`).
//!
//! The lease runs from the moment the heartbeat was *sent* (so it ends no
//! later than membership believes), shortened by a drift allowance, and
//! counts only once the shard map has applied the change-log version that
//! came with it. It is measured twice and must hold on both clocks: on the
//! runtime's monotonic clock, and on CLOCK_BOOTTIME, which — unlike
//! CLOCK_MONOTONIC — keeps counting while the machine is suspended, so a
//! worker whose VM was paused past its lease does not wake up believing it
//! still leads.

use std::sync::Mutex;
use std::time::Duration;

use freshet_shardmap::SharedShardMap;
use tokio::time::Instant;

/// Assumed worst-case rate difference between clocks: 1 %.
const DRIFT_DIVISOR: u32 = 100;

/// Time since boot, suspensions included (`None` where the clock is missing).
fn boot_time() -> Option<Duration> {
    let now = nix::time::clock_gettime(nix::time::ClockId::CLOCK_BOOTTIME).ok()?;
    Some(Duration::new(
        u64::try_from(now.tv_sec()).ok()?,
        u32::try_from(now.tv_nsec()).ok()?,
    ))
}

/// When a heartbeat was sent, on both clocks a lease is measured on.
#[derive(Debug, Clone, Copy)]
pub struct SentAt {
    monotonic: Instant,
    boot: Option<Duration>,
}

impl SentAt {
    pub fn now() -> SentAt {
        SentAt {
            monotonic: Instant::now(),
            boot: boot_time(),
        }
    }
}

#[derive(Debug, Clone, Copy)]
struct Grant {
    valid_until: Instant,
    /// The same end on CLOCK_BOOTTIME.
    valid_until_boot: Option<Duration>,
    min_version: i64,
}

/// This worker's current lease.
#[derive(Default)]
pub struct Lease {
    grant: Mutex<Option<Grant>>,
}

impl Lease {
    /// Records a grant from a heartbeat sent at `sent_at`.
    pub fn renew(&self, sent_at: SentAt, duration: Duration, min_version: i64) {
        let usable = duration - duration / DRIFT_DIVISOR;
        *self.grant.lock().unwrap_or_else(|p| p.into_inner()) = Some(Grant {
            valid_until: sent_at.monotonic + usable,
            valid_until_boot: sent_at.boot.map(|boot| boot + usable),
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
            let boot_ok = match (grant.valid_until_boot, boot_time()) {
                (Some(until), Some(now)) => now < until,
                (None, _) => true,
                (Some(_), None) => false,
            };
            Instant::now() < grant.valid_until
                && boot_ok
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
        let sent_at = SentAt::now();
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
        lease.renew(SentAt::now(), Duration::from_secs(10), 5);
        assert!(!lease.is_held(&map), "the map has not seen version 5");
        map.write(|m| m.replace_with_snapshot(Vec::new(), 5));
        assert!(lease.is_held(&map));
        lease.revoke();
        assert!(!lease.is_held(&map));
    }

    #[test]
    fn a_lease_ends_on_the_boot_clock_even_if_the_monotonic_one_stood_still() {
        let lease = Lease::default();
        let map = SharedShardMap::default();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("runtime");
        runtime.block_on(async {
            // As after a suspend: the boot clock says the lease began long ago.
            let sent_at = SentAt {
                monotonic: Instant::now(),
                boot: boot_time().map(|now| now.saturating_sub(Duration::from_secs(60))),
            };
            lease.renew(sent_at, Duration::from_secs(10), 0);
            assert!(!lease.is_held(&map));
        });
    }
}
