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
pub mod feed;

pub use consumers::{ConsumerLookups, Logged};
pub use feed::Feeds;

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
/// How long an ended subscription waits for the control plane to hear it
/// ended before its subscriber is told.
const RELEASE_WAIT: Duration = Duration::from_millis(300);
/// `next_offset` before the start is resolved.
const UNKNOWN: u64 = u64::MAX;
/// Ended subscriptions kept to report while the control plane cannot be
/// reached; beyond this the oldest are not reported (their claims expire).
const MAX_ENDED: usize = 10_000;

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
    /// report racing ahead of the claim would read as taken over; one
    /// whose claim was never answered is not the control plane's to judge).
    claimed: AtomicBool,
    started: Instant,
}

impl Progress {
    /// Its claim at the control plane was answered.
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
            age_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
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
        self.registry.give_back(&self.progress);
    }
}

/// A subscription allowed by this frontend's rules, not started yet.
pub struct Ticket {
    key: SlotKey,
    id: u64,
    /// Where it will be; its holder names its claim.
    pub progress: Arc<Progress>,
    /// The holder of this frontend's previous subscription of the same
    /// (consumer, shard), which has ended: its claim is not in the way.
    pub ended_holder: Option<String>,
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

    /// Whether a subscription of `consumer` to `shard_id` may start at
    /// `now` by this frontend's rules; its ticket if so. Nothing changes
    /// until [`Subscriptions::admit`] (after the control plane's claim).
    pub fn check(
        &self,
        consumer: &ConsumerArn,
        shard_id: &str,
        now: Instant,
    ) -> Result<Ticket, Refusal> {
        let key = (consumer.to_string(), shard_id.to_owned());
        let slots = self.lock();
        let previous = slots.get(&key);
        Self::refusal(previous, now, || self.live.available_permits() > 0)?;
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        Ok(Ticket {
            ended_holder: previous
                .filter(|slot| slot.takeover.is_none())
                .map(|slot| slot.progress.holder.clone()),
            progress: Arc::new(Progress {
                holder: format!("{}/{id}", self.frontend_id),
                consumer: consumer.clone(),
                shard_id: shard_id.to_owned(),
                next_offset: AtomicU64::new(UNKNOWN),
                tip_offset: AtomicU64::new(0),
                millis_behind: AtomicI64::new(0),
                claimed: AtomicBool::new(false),
                started: now,
            }),
            key,
            id,
        })
    }

    /// This frontend's rules for the slot `previous` at `now`; `room`:
    /// whether a new subscription fits under the limit.
    fn refusal(
        previous: Option<&Slot>,
        now: Instant,
        room: impl Fn() -> bool,
    ) -> Result<(), Refusal> {
        if let Some(slot) = previous {
            let age = now.saturating_duration_since(slot.started);
            if slot.takeover.is_some() && age < TAKEOVER_AFTER {
                return Err(Refusal::InUse);
            }
            if age < CALL_INTERVAL {
                return Err(Refusal::TooFrequent);
            }
        }
        let takes_over = previous.is_some_and(|slot| slot.takeover.is_some());
        if !takes_over && !room() {
            return Err(Refusal::TooMany);
        }
        Ok(())
    }

    /// Starts the subscription `ticket` stands for, checking this
    /// frontend's rules again (another call may have come first); a live
    /// subscription it replaces is told to end (taken over). Refused, the
    /// ticket's claim is given back at the next report.
    pub fn admit(self: &Arc<Self>, ticket: Ticket, now: Instant) -> Result<Held, Refusal> {
        let mut slots = self.lock();
        if slots.len() > SWEEP_ABOVE {
            slots.retain(|_, slot| {
                slot.takeover.is_some()
                    || now.saturating_duration_since(slot.started) < TAKEOVER_AFTER
            });
        }
        let previous = slots.get(&ticket.key);
        let checked = Self::refusal(previous, now, || self.live.available_permits() > 0);
        let permit = match checked {
            Ok(()) => self.live.clone().try_acquire_owned().ok(),
            Err(refusal) => {
                drop(slots);
                self.give_back(&ticket.progress);
                return Err(refusal);
            }
        };
        let (takeover, taken_over) = oneshot::channel();
        let previous = slots.insert(
            ticket.key.clone(),
            Slot {
                id: ticket.id,
                started: now,
                takeover: Some(takeover),
                progress: ticket.progress.clone(),
            },
        );
        if let Some(ended) = previous.and_then(|slot| slot.takeover) {
            let _ = ended.send(());
        }
        Ok(Held {
            registry: self.clone(),
            key: ticket.key,
            id: ticket.id,
            taken_over,
            progress: ticket.progress,
            _permit: permit,
        })
    }

    /// Reports `progress` as ended at the next report (a claim it may hold
    /// is let go).
    fn give_back(&self, progress: &Arc<Progress>) {
        let mut ended = self.ended.lock().unwrap_or_else(|p| p.into_inner());
        if ended.len() < MAX_ENDED {
            ended.push(progress.clone());
        }
        drop(ended);
        self.report_now.notify_one();
    }

    /// What to report: every live subscription, and those that ended
    /// since the last report (also returned, to report again if this
    /// report fails).
    fn reports(&self) -> (Vec<SubscriptionReport>, Vec<Arc<Progress>>) {
        let ended: Vec<Arc<Progress>> =
            std::mem::take(&mut *self.ended.lock().unwrap_or_else(|p| p.into_inner()));
        let ended: Vec<Arc<Progress>> = ended.into_iter().filter(|p| p.is_claimed()).collect();
        let mut reports: Vec<SubscriptionReport> =
            ended.iter().map(|progress| progress.report(true)).collect();
        reports.extend(
            self.lock()
                .values()
                .filter(|slot| slot.takeover.is_some() && slot.progress.is_claimed())
                .map(|slot| slot.progress.report(false)),
        );
        (reports, ended)
    }

    /// Tells the control plane at once that `progress` ended, so the
    /// client, told next, may subscribe again anywhere straight away
    /// (bounded: the next report says it anyway).
    pub async fn release_now(
        &self,
        progress: &Progress,
        control_plane: &ControlPlaneClient<TracedChannel>,
    ) {
        if !progress.is_claimed() {
            return;
        }
        let request = freshet_server::request_with_deadline(
            ReportSubscriptionsRequest {
                subscriptions: vec![progress.report(true)],
            },
            RELEASE_WAIT,
        );
        let _ = control_plane.clone().report_subscriptions(request).await;
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
        let (reports, ended) = subscriptions.reports();
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
                tracing::warn!(message = status.message(), "subscriptions not reported");
                // Ended ones are reported again next time.
                for progress in ended {
                    subscriptions.give_back(&progress);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks and admits at once (as if the control plane said yes).
    fn begin(
        subscriptions: &Arc<Subscriptions>,
        shard: &str,
        now: Instant,
    ) -> Result<Held, Refusal> {
        let ticket = subscriptions.check(&arn(), shard, now)?;
        subscriptions.admit(ticket, now)
    }

    fn arn() -> ConsumerArn {
        ConsumerArn::parse("arn:aws:kinesis:us-east-1:000000000000:stream/s/consumer/c:1")
            .expect("an ARN")
    }
    const SHARD: &str = "shardId-000000000000";

    #[tokio::test(start_paused = true)]
    async fn a_second_subscription_within_five_seconds_is_refused_and_after_takes_over() {
        let subscriptions = Subscriptions::new(10);
        let start = Instant::now();
        let mut first = begin(&subscriptions, SHARD, start).expect("admitted");
        assert_eq!(
            begin(&subscriptions, SHARD, start + Duration::from_secs(4)).err(),
            Some(Refusal::InUse)
        );
        // Another shard, or another consumer, is another subscription.
        let _other = begin(&subscriptions, "shardId-000000000001", start).expect("another shard");
        assert!(first.taken_over.try_recv().is_err(), "still running");
        let second =
            begin(&subscriptions, SHARD, start + Duration::from_secs(5)).expect("takes over");
        assert!(first.taken_over.try_recv().is_ok(), "told to end");
        drop(first);
        // The old one ending does not free the new one's place.
        assert_eq!(
            begin(&subscriptions, SHARD, start + Duration::from_secs(6)).err(),
            Some(Refusal::InUse)
        );
        drop(second);
    }

    #[tokio::test(start_paused = true)]
    async fn a_consumer_may_subscribe_to_a_shard_once_a_second() {
        let subscriptions = Subscriptions::new(10);
        let start = Instant::now();
        drop(begin(&subscriptions, SHARD, start).expect("admitted"));
        assert_eq!(
            begin(&subscriptions, SHARD, start + Duration::from_millis(500)).err(),
            Some(Refusal::TooFrequent)
        );
        assert!(begin(&subscriptions, SHARD, start + Duration::from_secs(1)).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn a_frontend_holds_at_most_its_limit_of_subscriptions() {
        let subscriptions = Subscriptions::new(2);
        let now = Instant::now();
        let a = begin(&subscriptions, "a", now).expect("first");
        let _b = begin(&subscriptions, "b", now).expect("second");
        assert_eq!(
            begin(&subscriptions, "c", now).err(),
            Some(Refusal::TooMany)
        );
        assert_eq!(subscriptions.live(), 2);
        drop(a);
        assert!(begin(&subscriptions, "c", now).is_ok());
    }
}
