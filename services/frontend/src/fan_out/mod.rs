//! Enhanced fan-out on this frontend: the SubscribeToShard subscriptions
//! it holds, under Kinesis's rules for them, and the event-stream framing
//! they are answered in (`event_stream.rs`). The operation itself — where
//! a subscription starts, and the upstream that pushes its records from
//! the shard's leader — is `ops/records/subscribe.rs`.
//!
//! The rules, per (consumer, shard), enforced by [`Subscriptions::admit`]:
//! - at most one live subscription: a second one within 5 s of the first is
//!   refused (ResourceInUseException); one after that takes over, and the
//!   first ends with a ResourceInUseException event;
//! - at most one call per second (LimitExceededException);
//! - and, for this frontend's memory, at most `--max-subscriptions` live
//!   subscriptions in all (LimitExceededException).
//!
//! Subscriptions are held per frontend: two frontends each let one
//! subscription of a (consumer, shard) run.

mod consumers;
pub mod event_stream;

pub use consumers::ConsumerLookups;

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// A subscription younger than this cannot be taken over.
pub const TAKEOVER_AFTER: Duration = Duration::from_secs(5);
/// Calls per (consumer, shard): one per this long.
pub const CALL_INTERVAL: Duration = Duration::from_secs(1);
/// Slots kept before ended ones are swept away.
const SWEEP_ABOVE: usize = 1024;

/// Why a subscription was not admitted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// The (consumer, shard) has a subscription younger than 5 s.
    InUse,
    /// The (consumer, shard) was subscribed to less than a second ago.
    TooFrequent,
    /// This frontend holds as many subscriptions as it may.
    TooMany,
}

type SlotKey = (String, String);

struct Slot {
    id: u64,
    started: Instant,
    /// Set while the subscription runs: sending on it ends it, taken over.
    takeover: Option<oneshot::Sender<()>>,
}

/// The subscriptions this frontend holds.
pub struct Subscriptions {
    slots: Mutex<HashMap<SlotKey, Slot>>,
    live: Arc<Semaphore>,
    next_id: AtomicU64,
}

/// A running subscription's place: while it is held, the (consumer, shard)
/// counts as subscribed here. Dropping it frees the place.
pub struct Held {
    registry: Arc<Subscriptions>,
    key: SlotKey,
    id: u64,
    /// Resolves when a newer subscription took this one over.
    pub taken_over: oneshot::Receiver<()>,
    /// None for one that took over a live subscription at the limit: the
    /// place it takes is the one the old subscription gives up.
    _permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Held {
    fn drop(&mut self) {
        let mut slots = self.registry.lock();
        if let Some(slot) = slots.get_mut(&self.key) {
            if slot.id == self.id {
                slot.takeover = None;
            }
        }
    }
}

impl Subscriptions {
    pub fn new(max_live: usize) -> Arc<Subscriptions> {
        Arc::new(Subscriptions {
            slots: Mutex::new(HashMap::new()),
            live: Arc::new(Semaphore::new(max_live.clamp(1, Semaphore::MAX_PERMITS))),
            next_id: AtomicU64::new(1),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<SlotKey, Slot>> {
        self.slots.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Subscriptions live now.
    #[cfg(test)]
    pub fn live(&self) -> usize {
        self.lock()
            .values()
            .filter(|s| s.takeover.is_some())
            .count()
    }

    /// Admits a subscription of `consumer_arn` to `shard_id` at `now`, or
    /// says why not. A live one at least 5 s old is told to end (taken over).
    pub fn admit(
        self: &Arc<Self>,
        consumer_arn: &str,
        shard_id: &str,
        now: Instant,
    ) -> Result<Held, Refusal> {
        let key = (consumer_arn.to_owned(), shard_id.to_owned());
        let mut slots = self.lock();
        if slots.len() > SWEEP_ABOVE {
            slots.retain(|_, slot| {
                slot.takeover.is_some()
                    || now.saturating_duration_since(slot.started) < TAKEOVER_AFTER
            });
        }
        if let Some(slot) = slots.get(&key) {
            let age = now.saturating_duration_since(slot.started);
            if slot.takeover.is_some() && age < TAKEOVER_AFTER {
                return Err(Refusal::InUse);
            }
            if age < CALL_INTERVAL {
                return Err(Refusal::TooFrequent);
            }
        }
        let takes_over = slots.get(&key).is_some_and(|slot| slot.takeover.is_some());
        let permit = match self.live.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) if takes_over => None,
            Err(_) => return Err(Refusal::TooMany),
        };
        let (takeover, taken_over) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let previous = slots.insert(
            key.clone(),
            Slot {
                id,
                started: now,
                takeover: Some(takeover),
            },
        );
        if let Some(ended) = previous.and_then(|slot| slot.takeover) {
            let _ = ended.send(());
        }
        Ok(Held {
            registry: self.clone(),
            key,
            id,
            taken_over,
            _permit: permit,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ARN: &str = "arn:aws:kinesis:us-east-1:000000000000:stream/s/consumer/c:1";
    const SHARD: &str = "shardId-000000000000";

    #[tokio::test(start_paused = true)]
    async fn a_second_subscription_within_five_seconds_is_refused_and_after_takes_over() {
        let subscriptions = Subscriptions::new(10);
        let start = Instant::now();
        let mut first = subscriptions.admit(ARN, SHARD, start).expect("admitted");
        assert_eq!(
            subscriptions
                .admit(ARN, SHARD, start + Duration::from_secs(4))
                .err(),
            Some(Refusal::InUse)
        );
        // Another shard, or another consumer, is another subscription.
        let _other = subscriptions
            .admit(ARN, "shardId-000000000001", start)
            .expect("another shard");
        assert!(first.taken_over.try_recv().is_err(), "still running");
        let second = subscriptions
            .admit(ARN, SHARD, start + Duration::from_secs(5))
            .expect("takes over");
        assert!(first.taken_over.try_recv().is_ok(), "told to end");
        drop(first);
        // The old one ending does not free the new one's place.
        assert_eq!(
            subscriptions
                .admit(ARN, SHARD, start + Duration::from_secs(6))
                .err(),
            Some(Refusal::InUse)
        );
        drop(second);
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumer_may_subscribe_to_a_shard_once_a_second() {
        let subscriptions = Subscriptions::new(10);
        let start = Instant::now();
        drop(subscriptions.admit(ARN, SHARD, start).expect("admitted"));
        assert_eq!(
            subscriptions
                .admit(ARN, SHARD, start + Duration::from_millis(500))
                .err(),
            Some(Refusal::TooFrequent)
        );
        assert!(subscriptions
            .admit(ARN, SHARD, start + Duration::from_secs(1))
            .is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_frontend_holds_at_most_its_limit_of_subscriptions() {
        let subscriptions = Subscriptions::new(2);
        let now = Instant::now();
        let a = subscriptions.admit(ARN, "a", now).expect("first");
        let _b = subscriptions.admit(ARN, "b", now).expect("second");
        assert_eq!(
            subscriptions.admit(ARN, "c", now).err(),
            Some(Refusal::TooMany)
        );
        assert_eq!(subscriptions.live(), 2);
        drop(a);
        assert!(subscriptions.admit(ARN, "c", now).is_ok());
    }
}
