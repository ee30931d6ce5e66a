//! Enhanced fan-out on this frontend: the SubscribeToShard subscriptions
//! it holds, under Kinesis's rules for them, and the event-stream framing
//! they are answered in (`event_stream.rs`). The operation itself — where
//! a subscription starts, and the upstream that pushes its records from
//! the shard's leader — is `ops/records/subscribe.rs`.
//!
//! The rules, per (consumer, shard), enforced by [`Subscriptions::admit`]
//! here and by the control plane's claims across frontends
//! (`services/control-plane/src/subscriptions.rs`):
//! - at most one live subscription: a second one within 5 s of the first is
//!   refused (ResourceInUseException); one after that takes over, and the
//!   first ends with a ResourceInUseException event;
//! - at most one call per second (LimitExceededException);
//! - and, for this frontend's memory, at most `--max-subscriptions` live
//!   subscriptions in all (LimitExceededException).
//!
//! Every second (and as soon as one ends) this frontend reports where its
//! subscriptions are ([`report_loop`]); the answer names those another
//! frontend took over, which end here as if taken over locally. The
//! positions reported are what each consumer's lag is measured from.

mod consumers;
pub mod event_stream;

pub use consumers::ConsumerLookups;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use freshet_proto::v1::control_plane_client::ControlPlaneClient;
use freshet_proto::v1::{ReportSubscriptionsRequest, SubscriptionKey, SubscriptionReport};
use freshet_server::TracedChannel;
use freshet_types::ConsumerArn;
use tokio::sync::{oneshot, Notify, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

/// A subscription younger than this cannot be taken over.
pub const TAKEOVER_AFTER: Duration = Duration::from_secs(5);
/// Calls per (consumer, shard): one per this long.
pub const CALL_INTERVAL: Duration = Duration::from_secs(1);
/// Slots kept before ended ones are swept away.
const SWEEP_ABOVE: usize = 1024;
/// How often the subscriptions are reported to the control plane.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// `next_offset` before the start is resolved.
const UNKNOWN: u64 = u64::MAX;

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

/// Where one subscription is, as its upstream updates it and the reports
/// read it.
pub struct Progress {
    /// Unique per subscription: this frontend's id and the subscription's.
    pub holder: String,
    consumer: ConsumerArn,
    shard_id: String,
    next_offset: AtomicU64,
    tip_offset: AtomicU64,
    millis_behind: AtomicI64,
    /// Set once its claim was answered: reported only from then on (a
    /// report racing ahead of the claim would read as taken over).
    claimed: AtomicBool,
}

impl Progress {
    /// Its claim at the control plane was answered (or could not be made).
    pub fn claimed(&self) {
        self.claimed.store(true, Ordering::Release);
    }

    fn is_claimed(&self) -> bool {
        self.claimed.load(Ordering::Acquire)
    }

    /// Records that the records below `next_offset` were delivered, the
    /// committed log reaching `tip_offset`, and the last event's
    /// MillisBehindLatest.
    pub fn delivered(&self, next_offset: u64, tip_offset: u64, millis_behind: i64) {
        self.next_offset.store(next_offset, Ordering::Relaxed);
        self.tip_offset
            .fetch_max(tip_offset.max(next_offset), Ordering::Relaxed);
        self.millis_behind.store(millis_behind, Ordering::Relaxed);
    }

    fn report(&self, ended: bool) -> SubscriptionReport {
        let next = self.next_offset.load(Ordering::Relaxed);
        SubscriptionReport {
            key: Some(SubscriptionKey {
                consumer_arn: self.consumer.to_string(),
                shard_id: self.shard_id.clone(),
            }),
            holder: self.holder.clone(),
            account_id: self.consumer.stream.account_id.clone(),
            region: self.consumer.stream.region.clone(),
            stream_name: self.consumer.stream.stream_name.clone(),
            next_offset: (next != UNKNOWN).then_some(next),
            tip_offset: self.tip_offset.load(Ordering::Relaxed),
            millis_behind: self.millis_behind.load(Ordering::Relaxed),
            ended,
        }
    }
}

struct Slot {
    id: u64,
    started: Instant,
    /// Set while the subscription runs: sending on it ends it, taken over.
    takeover: Option<oneshot::Sender<()>>,
    progress: Arc<Progress>,
}

/// The subscriptions this frontend holds.
pub struct Subscriptions {
    /// This frontend, in holder names.
    frontend_id: String,
    slots: Mutex<HashMap<SlotKey, Slot>>,
    live: Arc<Semaphore>,
    next_id: AtomicU64,
    /// Subscriptions that ended and are not reported as ended yet.
    ended: Mutex<Vec<Arc<Progress>>>,
    /// Wakes the report loop (a subscription ended).
    report_now: Notify,
}

/// A running subscription's place: while it is held, the (consumer, shard)
/// counts as subscribed here. Dropping it frees the place.
pub struct Held {
    registry: Arc<Subscriptions>,
    key: SlotKey,
    id: u64,
    /// Resolves when a newer subscription took this one over.
    pub taken_over: oneshot::Receiver<()>,
    /// Where it is (its upstream updates it).
    pub progress: Arc<Progress>,
    /// The holder of this frontend's previous subscription of the same
    /// (consumer, shard), which has ended: its claim is not in the way.
    pub ended_holder: Option<String>,
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
        drop(slots);
        self.registry
            .ended
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(self.progress.clone());
        self.registry.report_now.notify_one();
    }
}

impl Subscriptions {
    pub fn new(max_live: usize) -> Arc<Subscriptions> {
        Arc::new(Subscriptions {
            frontend_id: uuid::Uuid::new_v4().to_string(),
            slots: Mutex::new(HashMap::new()),
            live: Arc::new(Semaphore::new(max_live.clamp(1, Semaphore::MAX_PERMITS))),
            next_id: AtomicU64::new(1),
            ended: Mutex::new(Vec::new()),
            report_now: Notify::new(),
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

    /// Admits a subscription of `consumer` to `shard_id` at `now`, or says
    /// why not. A live one at least 5 s old is told to end (taken over).
    pub fn admit(
        self: &Arc<Self>,
        consumer: &ConsumerArn,
        shard_id: &str,
        now: Instant,
    ) -> Result<Held, Refusal> {
        let key = (consumer.to_string(), shard_id.to_owned());
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
        let ended_holder = slots
            .get(&key)
            .filter(|slot| slot.takeover.is_none())
            .map(|slot| slot.progress.holder.clone());
        let permit = match self.live.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) if takes_over => None,
            Err(_) => return Err(Refusal::TooMany),
        };
        let (takeover, taken_over) = oneshot::channel();
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let progress = Arc::new(Progress {
            holder: format!("{}/{id}", self.frontend_id),
            consumer: consumer.clone(),
            shard_id: shard_id.to_owned(),
            next_offset: AtomicU64::new(UNKNOWN),
            tip_offset: AtomicU64::new(0),
            millis_behind: AtomicI64::new(0),
            claimed: AtomicBool::new(false),
        });
        let previous = slots.insert(
            key.clone(),
            Slot {
                id,
                started: now,
                takeover: Some(takeover),
                progress: progress.clone(),
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
            progress,
            ended_holder,
            _permit: permit,
        })
    }

    /// What to report: every live subscription, and those that ended
    /// since the last report.
    fn reports(&self) -> Vec<SubscriptionReport> {
        let ended: Vec<Arc<Progress>> =
            std::mem::take(&mut *self.ended.lock().unwrap_or_else(|p| p.into_inner()));
        let mut reports: Vec<SubscriptionReport> = ended
            .iter()
            .filter(|progress| progress.is_claimed())
            .map(|progress| progress.report(true))
            .collect();
        reports.extend(
            self.lock()
                .values()
                .filter(|slot| slot.takeover.is_some() && slot.progress.is_claimed())
                .map(|slot| slot.progress.report(false)),
        );
        reports
    }

    /// Ends the subscriptions `holders` names (another frontend took them
    /// over).
    fn take_over(&self, holders: &[String]) {
        let mut slots = self.lock();
        for slot in slots.values_mut() {
            if holders.contains(&slot.progress.holder) {
                if let Some(takeover) = slot.takeover.take() {
                    let _ = takeover.send(());
                }
            }
        }
    }
}

/// Reports this frontend's subscriptions to the control plane every second
/// (and at once when one ends), and ends those it says were taken over.
pub async fn report_loop(
    subscriptions: Arc<Subscriptions>,
    control_plane: ControlPlaneClient<TracedChannel>,
) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(REPORT_EVERY) => {}
            () = subscriptions.report_now.notified() => {}
        }
        let reports = subscriptions.reports();
        if reports.is_empty() {
            continue;
        }
        let request = freshet_server::request_with_deadline(
            ReportSubscriptionsRequest {
                subscriptions: reports,
            },
            Duration::from_secs(2),
        );
        match control_plane.clone().report_subscriptions(request).await {
            Ok(answer) => subscriptions.take_over(&answer.into_inner().taken_over),
            Err(status) => {
                tracing::debug!(message = status.message(), "subscriptions not reported");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn arn() -> ConsumerArn {
        ConsumerArn::parse("arn:aws:kinesis:us-east-1:000000000000:stream/s/consumer/c:1")
            .expect("an ARN")
    }
    const SHARD: &str = "shardId-000000000000";

    #[tokio::test(start_paused = true)]
    async fn a_second_subscription_within_five_seconds_is_refused_and_after_takes_over() {
        let subscriptions = Subscriptions::new(10);
        let start = Instant::now();
        let mut first = subscriptions.admit(&arn(), SHARD, start).expect("admitted");
        assert_eq!(
            subscriptions
                .admit(&arn(), SHARD, start + Duration::from_secs(4))
                .err(),
            Some(Refusal::InUse)
        );
        // Another shard, or another consumer, is another subscription.
        let _other = subscriptions
            .admit(&arn(), "shardId-000000000001", start)
            .expect("another shard");
        assert!(first.taken_over.try_recv().is_err(), "still running");
        let second = subscriptions
            .admit(&arn(), SHARD, start + Duration::from_secs(5))
            .expect("takes over");
        assert!(first.taken_over.try_recv().is_ok(), "told to end");
        drop(first);
        // The old one ending does not free the new one's place.
        assert_eq!(
            subscriptions
                .admit(&arn(), SHARD, start + Duration::from_secs(6))
                .err(),
            Some(Refusal::InUse)
        );
        drop(second);
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumer_may_subscribe_to_a_shard_once_a_second() {
        let subscriptions = Subscriptions::new(10);
        let start = Instant::now();
        drop(subscriptions.admit(&arn(), SHARD, start).expect("admitted"));
        assert_eq!(
            subscriptions
                .admit(&arn(), SHARD, start + Duration::from_millis(500))
                .err(),
            Some(Refusal::TooFrequent)
        );
        assert!(subscriptions
            .admit(&arn(), SHARD, start + Duration::from_secs(1))
            .is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_frontend_holds_at_most_its_limit_of_subscriptions() {
        let subscriptions = Subscriptions::new(2);
        let now = Instant::now();
        let a = subscriptions.admit(&arn(), "a", now).expect("first");
        let _b = subscriptions.admit(&arn(), "b", now).expect("second");
        assert_eq!(
            subscriptions.admit(&arn(), "c", now).err(),
            Some(Refusal::TooMany)
        );
        assert_eq!(subscriptions.live(), 2);
        drop(a);
        assert!(subscriptions.admit(&arn(), "c", now).is_ok());
    }
}
