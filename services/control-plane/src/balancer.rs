//! Worker balancing: moves a shard off a storage worker that is asked to
//! take more than it should, without copying any stored record.
//!
//! Each balancing round weighs every live worker by the load offered to the
//! shards it leads (`Storage/ShardLoads`, read by the scaler's tick), as a
//! fraction of one worker's write capacity. When the busiest worker is at
//! `balance_at` or more, one of its shards moves to the least busy worker —
//! the shard whose move brings the two closest to even — if that takes at
//! least [`MIN_GAIN`] off the busiest worker's load (so a lone hot shard
//! never bounces between workers, and noise under even load moves
//! nothing). One move per round; a moved shard stays put for
//! `balance_cooldown`.
//!
//! A move is a *relocation* (the talk's "close it and move the rest of it
//! to open a new shard on another worker", but keeping the shard's id):
//!
//! 1. membership marks the shard CLOSING, so its leader refuses appends
//!    before writing them and the frontend routes them again;
//! 2. the leader seals it (`Storage/SealShard`): everything written is
//!    committed with its replicas, and the answer is where its log ends;
//! 3. membership publishes the shard OPEN again at the next epoch, its
//!    current segment sealed at that offset and kept, read-only, on the
//!    workers that hold it, and a new segment led by the chosen worker
//!    (replicas in the other zones) that starts at that offset.
//!
//! Sequence numbers keep rising across the move (the shard's sequence base
//! is unchanged and offsets continue), readers cross from one segment to
//! the next without noticing, and writers wait only for the seal. A move
//! that fails is abandoned: the shard is reopened where it was.

use freshet_types::StreamStatus;
use std::collections::HashMap;
use std::time::Duration;

use freshet_metastore::WorkerRow;
use freshet_proto::v1::{CloseShardsRequest, RelocateShardRequest};
use tokio::time::Instant;

use crate::ControlPlaneService;

/// How long a move may wait for its seal — less than the frontend keeps
/// rerouting refused appends (5 s), so writers never see the move.
const MOVE_SEAL_PATIENCE: Duration = Duration::from_secs(3);
/// The least a move must take off the busiest worker, as a fraction of one
/// worker's capacity.
pub(crate) const MIN_GAIN: f64 = 0.1;
/// A worker silent for longer is not given shards.
const LIVE_WORKER_SECONDS: f64 = 5.0;

/// What one shard's leader reported it is offered.
#[derive(Debug, Clone)]
pub(crate) struct ShardRate {
    pub stream_uid: i64,
    pub shard_id: String,
    /// The worker that leads it (and reported it).
    pub worker_id: String,
    pub bytes_per_sec: f64,
    pub records_per_sec: f64,
}

/// One shard to move.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Move {
    pub stream_uid: i64,
    pub shard_id: String,
    pub from: String,
    pub to: String,
}

/// How the balancer weighs workers.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Weights {
    pub worker_bytes_per_sec: f64,
    pub worker_records_per_sec: f64,
    /// A worker at this fraction of its capacity or more is overloaded.
    pub balance_at: f64,
}

impl Weights {
    /// A shard's load as a fraction of one worker's capacity.
    fn of(&self, rate: &ShardRate) -> f64 {
        (rate.bytes_per_sec / self.worker_bytes_per_sec)
            .max(rate.records_per_sec / self.worker_records_per_sec)
    }
}

/// The move that best relieves the busiest worker, if it is overloaded.
/// `workers` are the live workers; `movable` says which shards may move
/// now (their stream is ACTIVE and they have not moved recently).
pub(crate) fn choose_move(
    workers: &[String],
    rates: &[ShardRate],
    weights: Weights,
    movable: impl Fn(&ShardRate) -> bool,
) -> Option<Move> {
    let mut load: HashMap<&str, f64> = workers.iter().map(|w| (w.as_str(), 0.0)).collect();
    for rate in rates {
        if let Some(total) = load.get_mut(rate.worker_id.as_str()) {
            *total += weights.of(rate);
        }
    }
    let by_load = |a: &(&&str, &f64), b: &(&&str, &f64)| a.1.total_cmp(b.1).then(b.0.cmp(a.0));
    let (&busiest, &high) = load.iter().max_by(by_load)?;
    let (&idlest, &low) = load.iter().min_by(by_load)?;
    if high < weights.balance_at || busiest == idlest {
        return None;
    }
    // Moving a shard of load `s` leaves max(high - s, low + s) as the
    // busier of the two: it must end clearly below `high`, as low as it can.
    let after = |s: f64| (high - s).max(low + s);
    rates
        .iter()
        .filter(|r| r.worker_id == busiest && movable(r))
        .map(|r| (r, weights.of(r)))
        .filter(|(_, s)| high - after(*s) >= MIN_GAIN)
        .min_by(|a, b| after(a.1).total_cmp(&after(b.1)))
        .map(|(r, _)| Move {
            stream_uid: r.stream_uid,
            shard_id: r.shard_id.clone(),
            from: busiest.to_owned(),
            to: idlest.to_owned(),
        })
}

/// What the balancer remembers between rounds.
#[derive(Default)]
pub(crate) struct BalancerState {
    /// When each shard last moved.
    moved_at: HashMap<(i64, String), Instant>,
    next_round: Option<Instant>,
}

impl BalancerState {
    /// Whether a round is due (and if so, schedules the next one).
    pub(crate) fn round_due(&mut self, interval: Duration) -> bool {
        let now = Instant::now();
        if self.next_round.is_some_and(|next| now < next) {
            return false;
        }
        self.next_round = Some(now + interval);
        true
    }
}

/// One balancing round: at most one move.
pub(crate) async fn balance(
    service: &ControlPlaneService,
    state: &mut BalancerState,
    workers: &[WorkerRow],
    rates: &[ShardRate],
) -> anyhow::Result<()> {
    service.reopen_abandoned_moves().await?;
    let config = &service.scaler;
    let live: Vec<String> = workers
        .iter()
        .filter(|w| w.seconds_since_heartbeat < LIVE_WORKER_SECONDS)
        .map(|w| w.worker_id.clone())
        .collect();
    let mut active = std::collections::HashSet::new();
    for stream in service
        .store
        .streams_with_status(StreamStatus::Active)
        .await?
    {
        active.insert(stream.stream_uid);
    }
    let cooldown = config.balance_cooldown;
    let weights = Weights {
        worker_bytes_per_sec: config.worker_write_bytes_per_sec.max(1) as f64,
        worker_records_per_sec: config.worker_write_records_per_sec.max(1) as f64,
        balance_at: config.balance_at,
    };
    let chosen = choose_move(&live, rates, weights, |rate| {
        active.contains(&rate.stream_uid)
            && state
                .moved_at
                .get(&(rate.stream_uid, rate.shard_id.clone()))
                .is_none_or(|at| at.elapsed() >= cooldown)
    });
    let Some(chosen) = chosen else {
        return Ok(());
    };
    tracing::info!(
        stream_uid = chosen.stream_uid,
        shard_id = chosen.shard_id,
        from = chosen.from,
        to = chosen.to,
        "moving a shard off an overloaded worker"
    );
    state
        .moved_at
        .insert((chosen.stream_uid, chosen.shard_id.clone()), Instant::now());
    service.relocate(&chosen).await?;
    service.metrics.balancer_moves.inc();
    Ok(())
}

impl ControlPlaneService {
    /// Moves one shard's writes to another worker (see the module docs).
    /// Skipped, successfully, if the stream is changing shape meanwhile.
    pub(crate) async fn relocate(&self, chosen: &Move) -> anyhow::Result<()> {
        let Ok(_changing) = self.stream_lock(chosen.stream_uid).try_lock_owned() else {
            return Ok(());
        };
        let Some(stream) = self
            .store
            .get_stream_by_uid(chosen.stream_uid)
            .await?
            .filter(|s| s.status == StreamStatus::Active)
        else {
            return Ok(());
        };
        let mut membership = self.membership.clone();
        let moved = async {
            // Its answer may be lost after it took effect: any failure from
            // here on reopens the shard.
            let closed = membership
                .close_shards(CloseShardsRequest {
                    stream_uid: stream.stream_uid,
                    shard_ids: vec![chosen.shard_id.clone()],
                })
                .await
                .map_err(|s| anyhow::anyhow!("close {}: {}", chosen.shard_id, s.message()))?
                .into_inner()
                .entries;
            let close_generation = crate::reshard::close_generation_of(&closed, &chosen.shard_id)?;
            let sealed = self
                .seal(&stream, &chosen.shard_id, MOVE_SEAL_PATIENCE)
                .await?;
            membership
                .relocate_shard(RelocateShardRequest {
                    stream_uid: stream.stream_uid,
                    shard_id: chosen.shard_id.clone(),
                    epoch: sealed.epoch,
                    ending_offset: sealed.ending_offset,
                    leader_worker_id: chosen.to.clone(),
                    last_arrival_ms: sealed.last_arrival_ms,
                    close_generation,
                })
                .await
                .map_err(|s| anyhow::anyhow!("relocate {}: {}", chosen.shard_id, s.message()))?;
            anyhow::Ok(())
        }
        .await;
        if let Err(error) = moved {
            tracing::warn!(
                shard_id = chosen.shard_id,
                "moving the shard failed to {error:#}; reopening it where it was"
            );
            // A failover racing the reopen fails its epoch guard; reading
            // the rows again settles it. Should every try fail, the next
            // balancing round tries again (`reopen_abandoned_moves`).
            for _ in 0..3 {
                match self.reopen_closing_shards(&stream).await {
                    Ok(()) => break,
                    Err(error) => {
                        tracing::warn!("reopening failed to {error:#}; retrying");
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
        Ok(())
    }

    /// Reopens shards left CLOSING in ACTIVE streams by a move that did not
    /// finish — cut short by a control-plane restart, or whose reopening
    /// failed — unless a change of that stream is under way. Runs at
    /// start-up and every balancing round.
    pub(crate) async fn reopen_abandoned_moves(&self) -> anyhow::Result<()> {
        for stream in self.store.active_streams_with_closing_shards().await? {
            let Ok(_changing) = self.stream_lock(stream.stream_uid).try_lock_owned() else {
                continue;
            };
            tracing::warn!(
                stream_name = stream.stream_name,
                "reopening a shard whose move was abandoned"
            );
            // One stream that cannot be settled now does not hold up the
            // others (nor the round's move): the next round tries again.
            if let Err(error) = self.reopen_closing_shards(&stream).await {
                tracing::warn!(
                    stream_name = stream.stream_name,
                    "reopening failed to {error:#}"
                );
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rate(worker: &str, shard: &str, bytes: f64) -> ShardRate {
        ShardRate {
            stream_uid: 1,
            shard_id: shard.to_owned(),
            worker_id: worker.to_owned(),
            bytes_per_sec: bytes,
            records_per_sec: 0.0,
        }
    }

    fn weights() -> Weights {
        Weights {
            worker_bytes_per_sec: 100.0,
            worker_records_per_sec: 1_000.0,
            balance_at: 0.8,
        }
    }

    fn workers() -> Vec<String> {
        ["w1", "w2", "w3"].map(str::to_owned).to_vec()
    }

    #[test]
    fn the_shard_that_evens_out_the_two_workers_moves_to_the_idlest() {
        let rates = [
            rate("w1", "a", 60.0),
            rate("w1", "b", 35.0),
            rate("w1", "c", 5.0),
            rate("w2", "d", 30.0),
            rate("w3", "e", 10.0),
        ];
        let chosen = choose_move(&workers(), &rates, weights(), |_| true).expect("a move");
        // w1 at 1.0, w3 at 0.1: moving b (0.35) leaves 0.65 / 0.45, the
        // most even of the choices.
        assert_eq!(
            chosen,
            Move {
                stream_uid: 1,
                shard_id: "b".to_owned(),
                from: "w1".to_owned(),
                to: "w3".to_owned(),
            }
        );
    }

    #[test]
    fn noise_between_evenly_loaded_workers_moves_nothing() {
        // Four equally hot shards on three workers: any move leaves some
        // worker with two of them.
        let rates = [
            rate("w1", "a", 50.0),
            rate("w1", "b", 52.0),
            rate("w2", "c", 49.0),
            rate("w3", "d", 51.0),
        ];
        assert_eq!(choose_move(&workers(), &rates, weights(), |_| true), None);
    }

    #[test]
    fn nothing_moves_below_the_threshold() {
        let rates = [rate("w1", "a", 70.0), rate("w2", "b", 0.0)];
        assert_eq!(choose_move(&workers(), &rates, weights(), |_| true), None);
    }

    #[test]
    fn a_lone_hot_shard_does_not_bounce_between_workers() {
        let rates = [rate("w1", "a", 150.0)];
        assert_eq!(
            choose_move(&workers(), &rates, weights(), |_| true),
            None,
            "its new worker would be as overloaded as the old one"
        );
    }

    #[test]
    fn shards_that_may_not_move_stay() {
        let rates = [rate("w1", "a", 50.0), rate("w1", "b", 45.0)];
        let chosen =
            choose_move(&workers(), &rates, weights(), |r| r.shard_id == "b").expect("a move");
        assert_eq!(chosen.shard_id, "b");
        assert_eq!(choose_move(&workers(), &rates, weights(), |_| false), None);
    }

    #[test]
    fn a_worker_that_is_not_live_gets_nothing() {
        let rates = [rate("w1", "a", 50.0), rate("w1", "b", 45.0)];
        let chosen = choose_move(
            &["w1".to_owned(), "w2".to_owned()],
            &rates,
            weights(),
            |_| true,
        )
        .expect("a move");
        assert_eq!(chosen.to, "w2");
    }
}
