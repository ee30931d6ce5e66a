//! SubscribeToShard subscriptions across every frontend: who holds each
//! (consumer, shard), and where each consumer has got to — the claims that
//! make Kinesis's 5-second takeover rule hold behind a load balancer, and
//! the positions each consumer's lag is measured from.
//!
//! Soft state, in memory: frontends report their subscriptions every
//! second, so a control plane that takes over has them again within a
//! second (a claim it does not know is taken by the report that names it).
//! Positions of consumers that stopped reading are kept for an hour.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use freshet_metrics::{EncodeLabelSet, Family, Gauge, Registry};
use freshet_proto::v1::{
    ClaimOutcome, ConsumerLagRequest, ConsumerLagResponse, GetShardTailRequest,
    ReportSubscriptionsRequest, ReportSubscriptionsResponse, ShardKey, ShardLag, SubscriptionKey,
    SubscriptionReport,
};
use freshet_types::{ConsumerArn, ShardState, StreamArn};
use tokio::time::Instant;
use tonic::Status;

use crate::{internal, ControlPlaneService, NamesStream};

/// A claim younger than this cannot be taken over.
const TAKEOVER_AFTER: Duration = Duration::from_secs(5);
/// One claim per (consumer, shard) per this long.
const CALL_INTERVAL: Duration = Duration::from_secs(1);
/// A live claim its frontend has not reported for this long is over (the
/// frontend died or was cut off).
const UNREPORTED_FOR: Duration = Duration::from_secs(5);
/// How long the position of a consumer that stopped reading is kept.
const POSITION_KEPT_FOR: Duration = Duration::from_secs(3600);

/// Where one (consumer, shard) stands.
struct Claim {
    holder: String,
    claimed_at: Instant,
    reported_at: Instant,
    /// A subscription is running (reported and not ended).
    live: bool,
    next_offset: Option<u64>,
    tip_offset: u64,
    millis_behind: i64,
}

impl Claim {
    fn is_live(&self, now: Instant) -> bool {
        self.live
            && now.saturating_duration_since(self.reported_at.max(self.claimed_at)) < UNREPORTED_FOR
    }
}

/// Labels of the lag gauges: the consumer's stream, the consumer, the shard.
#[allow(non_snake_case)]
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct LagLabels {
    StreamName: String,
    AccountId: String,
    Region: String,
    ConsumerName: String,
    ShardId: String,
}

/// Every (consumer, shard) claimed or reported.
#[derive(Default)]
pub(crate) struct SubscriptionClaims {
    claims: Mutex<HashMap<(String, String), Claim>>,
    lag_records: Family<LagLabels, Gauge>,
    lag_millis: Family<LagLabels, Gauge>,
}

fn labels(consumer_arn: &str, shard_id: &str) -> Option<LagLabels> {
    let arn = ConsumerArn::parse(consumer_arn)?;
    Some(LagLabels {
        StreamName: arn.stream.stream_name,
        AccountId: arn.stream.account_id,
        Region: arn.stream.region,
        ConsumerName: arn.consumer_name,
        ShardId: shard_id.to_owned(),
    })
}

impl SubscriptionClaims {
    pub(crate) fn register_in(&self, registry: &Registry) {
        registry.register(
            "freshet_consumer_lag_records",
            "Committed records of a shard an enhanced fan-out consumer has not been sent yet",
            self.lag_records.clone(),
        );
        registry.register(
            "freshet_consumer_lag_milliseconds",
            "MillisBehindLatest of the last event sent to an enhanced fan-out consumer on a shard",
            self.lag_millis.clone(),
        );
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), Claim>> {
        self.claims.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Claims `key` for `holder` at `now`, under Kinesis's rules.
    pub(crate) fn claim(
        &self,
        key: &SubscriptionKey,
        holder: &str,
        ended_holder: &str,
        now: Instant,
    ) -> ClaimOutcome {
        let mut claims = self.lock();
        let id = (key.consumer_arn.clone(), key.shard_id.clone());
        if let Some(claim) = claims.get(&id) {
            let age = now.saturating_duration_since(claim.claimed_at);
            let ended = !ended_holder.is_empty() && claim.holder == ended_holder;
            if claim.is_live(now) && !ended && age < TAKEOVER_AFTER {
                return ClaimOutcome::InUse;
            }
            if age < CALL_INTERVAL {
                return ClaimOutcome::TooFrequent;
            }
        }
        let (next_offset, tip_offset, millis_behind) = claims.get(&id).map_or((None, 0, 0), |c| {
            (c.next_offset, c.tip_offset, c.millis_behind)
        });
        claims.insert(
            id,
            Claim {
                holder: holder.to_owned(),
                claimed_at: now,
                reported_at: now,
                live: true,
                next_offset,
                tip_offset,
                millis_behind,
            },
        );
        ClaimOutcome::Claimed
    }

    /// Takes a frontend's report; the holders among it whose claims are
    /// another's now.
    pub(crate) fn report(&self, reports: &[SubscriptionReport], now: Instant) -> Vec<String> {
        let mut claims = self.lock();
        let mut taken_over = Vec::new();
        for report in reports {
            let Some(key) = &report.key else { continue };
            let id = (key.consumer_arn.clone(), key.shard_id.clone());
            let started = now
                .checked_sub(Duration::from_millis(report.age_ms))
                .unwrap_or(now);
            if report.ended && !claims.contains_key(&id) {
                // Nothing to let go of.
                continue;
            }
            let claim = claims.entry(id).or_insert_with(|| Claim {
                // A claim this control plane never saw (it took over
                // since): the reporter holds it, from when it started.
                holder: report.holder.clone(),
                claimed_at: started,
                reported_at: now,
                live: true,
                next_offset: None,
                tip_offset: 0,
                millis_behind: 0,
            });
            if claim.holder != report.holder {
                if report.ended {
                    continue;
                }
                if claim.is_live(now) {
                    taken_over.push(report.holder.clone());
                    continue;
                }
                // The holder on record is gone: the reporter's is the one
                // running.
                claim.holder = report.holder.clone();
                claim.claimed_at = started;
            }
            claim.reported_at = now;
            claim.live = !report.ended;
            if report.next_offset.is_some() {
                claim.next_offset = report.next_offset;
            }
            claim.tip_offset = claim.tip_offset.max(report.tip_offset);
            claim.millis_behind = report.millis_behind;
            if let (Some(labels), Some(next)) =
                (labels(&key.consumer_arn, &key.shard_id), claim.next_offset)
            {
                let behind = claim.tip_offset.saturating_sub(next);
                self.lag_records
                    .get_or_create(&labels)
                    .set(i64::try_from(behind).unwrap_or(i64::MAX));
                self.lag_millis
                    .get_or_create(&labels)
                    .set(claim.millis_behind);
            }
        }
        // Positions of consumers long gone are let go (and their gauges).
        claims.retain(|(arn, shard), claim| {
            let keep = claim.is_live(now)
                || now.saturating_duration_since(claim.reported_at) < POSITION_KEPT_FOR;
            if !keep {
                if let Some(labels) = labels(arn, shard) {
                    self.lag_records.remove(&labels);
                    self.lag_millis.remove(&labels);
                }
            }
            keep
        });
        taken_over
    }

    /// Where `consumer_arn` stands on `shard_id`: live, next offset, tip,
    /// millis behind.
    fn position(
        &self,
        consumer_arn: &str,
        shard_id: &str,
        now: Instant,
    ) -> Option<(bool, Option<u64>, u64, i64)> {
        let claims = self.lock();
        claims
            .get(&(consumer_arn.to_owned(), shard_id.to_owned()))
            .map(|c| (c.is_live(now), c.next_offset, c.tip_offset, c.millis_behind))
    }
}

impl NamesStream for ConsumerLagRequest {
    fn stream_arn(&self) -> StreamArn {
        StreamArn::new(&self.region, &self.account_id, &self.stream_name)
    }
}

impl ControlPlaneService {
    pub(crate) async fn report_subscriptions_impl(
        &self,
        request: ReportSubscriptionsRequest,
    ) -> ReportSubscriptionsResponse {
        ReportSubscriptionsResponse {
            taken_over: self
                .subscription_claims
                .report(&request.subscriptions, Instant::now()),
        }
    }

    /// Every registered consumer's lag on every shard of the stream, each
    /// against the tip its leader reports now (a shard whose leader does
    /// not answer: against the tip last reported).
    pub(crate) async fn consumer_lag_impl(
        &self,
        request: ConsumerLagRequest,
    ) -> Result<ConsumerLagResponse, Status> {
        let stream = self.existing_stream(&request).await?;
        let consumers = self
            .store
            .consumers_of(stream.stream_uid)
            .await
            .map_err(internal)?;
        let shards = self
            .store
            .shards_of(stream.stream_uid)
            .await
            .map_err(internal)?;
        let workers = self.store.list_workers().await.map_err(internal)?;
        let now = Instant::now();
        let mut lags = Vec::new();
        // Every leader asked at once, each for 2 s at most.
        let tips = futures::future::join_all(shards.iter().map(|shard| async {
            match shard.state {
                ShardState::Closed => shard.ending_offset,
                _ => self.tip_of(stream.stream_uid, shard, &workers).await,
            }
        }))
        .await;
        for (shard, tip) in shards.iter().zip(tips) {
            for consumer in &consumers {
                let position =
                    self.subscription_claims
                        .position(&consumer.consumer_arn, &shard.shard_id, now);
                let (subscribed, next, reported_tip, millis) = position.unwrap_or_default();
                let tip = tip.unwrap_or(reported_tip).max(reported_tip);
                lags.push(ShardLag {
                    consumer_name: consumer.consumer_name.clone(),
                    shard_id: shard.shard_id.clone(),
                    subscribed,
                    known: next.is_some(),
                    records_behind: next.map_or(0, |next| tip.saturating_sub(next)),
                    millis_behind: if next.is_some_and(|next| next >= tip) {
                        0
                    } else {
                        millis
                    },
                });
            }
        }
        Ok(ConsumerLagResponse { lags })
    }

    /// Where the shard's committed log ends, asked of its leader.
    async fn tip_of(
        &self,
        stream_uid: i64,
        shard: &freshet_metastore::ShardRow,
        workers: &[freshet_metastore::WorkerRow],
    ) -> Option<u64> {
        let address = workers
            .iter()
            .find(|w| w.worker_id == shard.leader_worker_id)
            .map(|w| w.address.clone())?;
        let mut client = self.storage.get(&address).ok()?;
        let request = freshet_server::request_with_deadline(
            GetShardTailRequest {
                shard: Some(ShardKey {
                    stream_uid,
                    shard_id: shard.shard_id.clone(),
                }),
                epoch: shard.epoch,
            },
            Duration::from_secs(2),
        );
        client
            .get_shard_tail(request)
            .await
            .ok()
            .map(|tail| tail.into_inner().next_offset)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> SubscriptionKey {
        SubscriptionKey {
            consumer_arn: "arn:aws:kinesis:us-east-1:000000000000:stream/s/consumer/c:1".into(),
            shard_id: "shardId-000000000000".into(),
        }
    }

    fn report(holder: &str, next: u64, tip: u64) -> SubscriptionReport {
        SubscriptionReport {
            key: Some(key()),
            holder: holder.into(),
            account_id: "000000000000".into(),
            region: "us-east-1".into(),
            stream_name: "s".into(),
            next_offset: Some(next),
            tip_offset: tip,
            millis_behind: 7,
            ended: false,
            age_ms: 0,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_control_plane_that_took_over_learns_claims_from_reports_with_their_age() {
        let claims = SubscriptionClaims::default();
        let now = Instant::now() + Duration::from_secs(600);
        // A subscription four minutes old, reported to a new control plane.
        let mut old = report("a/1", 10, 15);
        old.age_ms = 240_000;
        assert!(claims.report(&[old], now).is_empty());
        // Its age counts: it may be taken over at once.
        assert_eq!(claims.claim(&key(), "b/1", "", now), ClaimOutcome::Claimed);
        // An ended report of a claim never seen is nothing to keep.
        let other = SubscriptionKey {
            shard_id: "shardId-000000000001".into(),
            ..key()
        };
        let mut ended = report("c/1", 1, 1);
        ended.key = Some(other.clone());
        ended.ended = true;
        claims.report(&[ended], now);
        assert_eq!(
            claims.position(&other.consumer_arn, &other.shard_id, now),
            None
        );
        // A live report whose claim's holder has gone takes the claim.
        let mut gone = report("b/1", 11, 15);
        gone.ended = true;
        claims.report(&[gone], now);
        assert!(claims.report(&[report("d/1", 12, 15)], now).is_empty());
        assert_eq!(
            claims.position(&key().consumer_arn, &key().shard_id, now),
            Some((true, Some(12), 15, 7))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_claim_on_another_frontend_is_refused_for_five_seconds_then_taken_over() {
        let claims = SubscriptionClaims::default();
        let start = Instant::now();
        assert_eq!(
            claims.claim(&key(), "a/1", "", start),
            ClaimOutcome::Claimed
        );
        let soon = start + Duration::from_secs(3);
        assert!(claims.report(&[report("a/1", 10, 15)], soon).is_empty());
        assert_eq!(claims.claim(&key(), "b/1", "", soon), ClaimOutcome::InUse);
        // Unless the claimant says that one was its own and has ended.
        assert_eq!(
            claims.claim(&key(), "a/2", "a/1", soon + Duration::from_secs(1)),
            ClaimOutcome::Claimed
        );
        let later = start + Duration::from_secs(10);
        assert_eq!(
            claims.claim(&key(), "b/1", "", later),
            ClaimOutcome::Claimed
        );
        // The previous holder learns it from its next report.
        assert_eq!(claims.report(&[report("a/2", 11, 15)], later), ["a/2"]);
        // Ended at once, it still allows one call a second, at most.
        let mut ended = report("b/1", 11, 15);
        ended.ended = true;
        claims.report(&[ended], later + Duration::from_millis(200));
        assert_eq!(
            claims.claim(&key(), "c/1", "", later + Duration::from_millis(500)),
            ClaimOutcome::TooFrequent
        );
        assert_eq!(
            claims.claim(&key(), "c/1", "", later + Duration::from_secs(1)),
            ClaimOutcome::Claimed
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_frontend_that_stops_reporting_loses_its_claim_and_positions_make_the_lag() {
        let claims = SubscriptionClaims::default();
        let start = Instant::now();
        assert_eq!(
            claims.claim(&key(), "a/1", "", start),
            ClaimOutcome::Claimed
        );
        claims.report(&[report("a/1", 10, 15)], start);
        assert_eq!(
            claims.position(&key().consumer_arn, &key().shard_id, start),
            Some((true, Some(10), 15, 7))
        );
        // Silent for 5 s: over, whatever its age, and its position stays.
        let silent = start + Duration::from_secs(6);
        assert_eq!(
            claims.claim(&key(), "b/1", "", silent),
            ClaimOutcome::Claimed
        );
        assert_eq!(
            claims.position(&key().consumer_arn, &key().shard_id, silent),
            Some((true, Some(10), 15, 7))
        );
    }
}
