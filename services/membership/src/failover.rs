//! Leader failover: a shard whose leader stopped heartbeating is handed to
//! its most up-to-date live replica, under a new epoch.
//!
//! # Safety argument (why a deposed leader can never acknowledge a write)
//!
//! A leader may acknowledge (commit) a batch only while it holds a **lease**
//! (`services/storage-worker/src/lease.rs`). A lease comes with each
//! heartbeat answer and lasts `lease_duration`, measured on the worker's own
//! monotonic and boot clocks (the boot clock runs on through a VM suspend)
//! from the moment it *sent* that heartbeat, shortened by a
//! drift allowance. Membership fails a leader over only when
//!
//! 1. Postgres has recorded no heartbeat from it for `heartbeat_timeout`, and
//! 2. the **timer service's** clock proves it: the earliest possible timer
//!    time is more than `heartbeat_timeout` past the latest possible timer
//!    time at which membership last heard from it.
//!
//! Every heartbeat was sent before membership heard it, so the worker's last
//! lease ended at most `lease_duration` after (2)'s reference point; since
//! `lease_duration + LEASE_MARGIN < heartbeat_timeout` (checked at start),
//! the old lease has surely run out before the new epoch is published, even
//! allowing for clock drift up to the margin. A worker that comes back (a
//! SIGSTOPped process, a healed partition) gets a new lease only together
//! with the change-log version current at that moment, and may use it only
//! once its shard map has applied that version — by then it knows it was
//! deposed. Independently, replicas refuse batches from an older epoch
//! (checked again under the log's writer lock, so a late request cannot
//! slip in after a newer leader's).
//!
//! # Why the promoted copy has every acknowledged record
//!
//! Which copies count is the shard's *voting configuration*
//! (`libs/types/src/voters.rs`): a stable set of voters or, while it
//! changes, a joint one — from the committed set to the next. Replicas
//! outside it are *learners*: they receive every batch and count for
//! nothing.
//!
//! 1. **Commit.** A leader acknowledges a batch only once a majority of
//!    every voter set holds it, and at least `min_ack_copies` voters
//!    (`services/storage-worker/src/replication/`). It commits under the
//!    configuration in its own shard map: the row's, or — until it applies
//!    a change it asked for itself — the one before (a joint configuration
//!    being left, or a stable one gaining voters). Each of those quorums
//!    holds a majority of the row's *committed* set.
//! 2. **Election.** Failover promotes a copy only after hearing from every
//!    live voter, and only when the answers include more of the committed
//!    set than any majority of it leaves out
//!    ([`freshet_types::Voters::election_has_heard_enough`]); otherwise the
//!    shard waits — unavailable, never lossy. So a copy of every
//!    acknowledged batch answered. The copy with the greatest `(last_epoch,
//!    end)` is promoted — the epoch its log is current with (its epoch
//!    history, `libs/log/src/epochs.rs`), then its length: Raft's election
//!    rule. A copy current with a newer epoch holds everything that epoch's
//!    leader held when it took over, and a new leader commits earlier
//!    records only once a quorum is current with its epoch, so that copy
//!    holds every acknowledged batch too; among copies of one epoch, each
//!    is a prefix of that epoch's leader's log, and the longest holds the
//!    most.
//! 3. **Reconfiguration.** The answering voters become the next set. The
//!    deposed leader keeps its vote, dead or not (and the new leader keeps
//!    sending to it), until the next set holds every acknowledged batch on
//!    a majority: at once if a majority of it is at the winner's position
//!    (same last epoch and end: the same log), otherwise through a joint
//!    configuration that the new leader's `ReportReplicas` ends once it has
//!    committed its log, through the start of its own epoch, on a majority
//!    of both sets (`reconfigure.rs`). When too few committed voters are
//!    left for a joint configuration ever to commit, the copies at the
//!    winner's position alone become the committed set (they hold every
//!    acknowledged batch) and the other answering voters follow as
//!    learners; a joint configuration whose next set loses a member goes
//!    back to its committed set, if a majority of that holds the log. New
//!    copies join as learners and become voters the same way, once they
//!    hold the leader's whole committed log — from its trim horizon, when
//!    its oldest records expired: the leader restarts a copy that ends
//!    below it there (`InstallSnapshot`, `libs/log/src/restart.rs`), so a
//!    learner is never stuck empty while the shard runs on two copies.
//!    This closes hole 1 of issue 13: after a first
//!    failover that left a lagging copy C beside the new leader B, the
//!    loss of B cannot elect C alone while the deposed A — holding what C
//!    lacks — still has a vote.
//!    A copy found damaged on disk and being rebuilt (`libs/log/src/rebuild.rs`)
//!    may lack records it acknowledged: its answer is heard but is no vote
//!    and it is no candidate ([`CopyAnswer::Rebuilding`]); a leader whose
//!    copy is rebuilding commits nothing and asks to step down
//!    ([`Deposition::SteppedDown`]).
//! 4. **Orphans.** A worker removes its copy of a segment only once no
//!    entry names it (`services/storage-worker/src/lib.rs`): after the
//!    configuration without it is committed.
//!
//! If the timer service is unreachable, (2) cannot be proven and nothing
//! fails over: availability waits, safety does not. A heartbeat that can be
//! recorded neither in Postgres nor against the timer gets no lease (a
//! failover could follow that never saw it); one heard while the timer was
//! away has its silence counted from the timer's return (`silences.rs`); and
//! while a change-log commit's outcome is unknown, no lease is granted
//! until the head is read back and broadcast (`publish.rs`,
//! `settle_head`) — a lease carries the head its holder must have applied.

use std::collections::HashMap;
use std::time::Duration;

use freshet_metastore::{ShardRow, WorkerRow};
use freshet_proto::v1::{DescribeShardRequest, ShardKey};

use crate::placement::{self, CopyPosition, Election};
use crate::publish::Change;
use crate::service::Inner;
use crate::silences::Silences;
use crate::MembershipService;
use freshet_types::StreamStatus;

/// How long a replica may take to say how long its copy is.
const DESCRIBE_SHARD_DEADLINE: Duration = Duration::from_secs(2);

/// Copies a shard keeps when enough zones are alive.
const COPIES: usize = placement::COPIES;

/// Records that a worker was heard from just now. Whether that time is
/// known on the timer's clock (false while the timer is unreachable).
pub(crate) fn heard_from(inner: &Inner, worker_id: &str) -> bool {
    let now = inner.timer.now();
    silences(inner).heard_from(worker_id, now)
}

fn silences(inner: &Inner) -> std::sync::MutexGuard<'_, Silences> {
    inner.last_heard.lock().unwrap_or_else(|p| p.into_inner())
}

/// Whether a failover of this worker's shards is in progress.
pub(crate) fn is_being_deposed(inner: &Inner, worker_id: &str) -> bool {
    inner
        .deposing
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .contains(worker_id)
}

/// Whether this process has heard from the worker since it started.
pub(crate) fn was_heard(inner: &Inner, worker_id: &str) -> bool {
    silences(inner).was_heard(worker_id)
}

/// Whether the timer proves `worker` has been silent longer than the timeout.
fn surely_silent(inner: &Inner, worker_id: &str) -> bool {
    let now = inner.timer.now();
    let timeout = i64::try_from(inner.heartbeat_timeout.as_micros()).unwrap_or(i64::MAX);
    silences(inner).surely_silent(worker_id, now, timeout)
}

/// Runs forever: looks for dead leaders and fails their shards over.
pub(crate) async fn watch_leaders(service: MembershipService) {
    loop {
        tokio::time::sleep(service.inner.failover_check_interval).await;
        if let Err(error) = check_once(&service).await {
            tracing::warn!("failover check failed to {error:#}");
        }
    }
}

async fn check_once(service: &MembershipService) -> anyhow::Result<()> {
    let inner = &service.inner;
    // Leases wait for a change-log head left uncertain by a failed commit.
    service.settle_head().await?;
    let workers = inner.store.list_workers().await?;
    let live: HashMap<String, WorkerRow> = workers
        .iter()
        .filter(|w| service.alive(w))
        .map(|w| (w.worker_id.clone(), w.clone()))
        .collect();
    inner
        .metrics
        .workers_alive
        .set(i64::try_from(live.len()).unwrap_or(i64::MAX));
    if let Err(error) = repair(service, &live).await {
        tracing::warn!("placement repair failed to {error:#}");
    }
    for worker in workers.iter().filter(|w| !service.alive(w)) {
        if !surely_silent(inner, &worker.worker_id) {
            continue;
        }
        // From here until the moves are published, the worker gets no lease
        // even if it heartbeats (and a heartbeat makes the moves stand down).
        inner
            .deposing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(worker.worker_id.clone());
        let shards = inner.store.shards_led_by(&worker.worker_id).await;
        for shard in shards.into_iter().flatten() {
            if let Err(error) = fail_over(service, shard, &live, Deposition::Silent).await {
                tracing::warn!("failover failed to {error:#}");
            }
        }
        inner
            .deposing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&worker.worker_id);
    }
    Ok(())
}

/// How current a live replica's copy of the shard is — `(last_epoch,
/// next_offset)`, compared in that order — or `None` if it did not say.
/// What a voter said of its copy when asked before an election.
pub(crate) enum CopyAnswer {
    /// Its (last epoch, end).
    At(CopyPosition),
    /// It is rebuilt after damage on disk and may lack records it once
    /// acknowledged: heard, but no vote (and not a candidate).
    Rebuilding,
}

pub(crate) async fn copy_position(
    inner: &Inner,
    address: &str,
    shard: &ShardRow,
) -> Option<CopyAnswer> {
    let mut client = inner.storage.get(address).ok()?;
    let request = freshet_server::request_with_deadline(
        DescribeShardRequest {
            shard: Some(ShardKey {
                stream_uid: shard.stream_uid,
                shard_id: shard.shard_id.clone(),
            }),
        },
        DESCRIBE_SHARD_DEADLINE,
    );
    client.describe_shard(request).await.ok().map(|r| {
        let r = r.into_inner();
        if r.rebuilding {
            CopyAnswer::Rebuilding
        } else {
            CopyAnswer::At((r.last_epoch, r.next_offset))
        }
    })
}

/// Gives shards kept on fewer than three workers a copy again: a live
/// worker in a zone the shard does not use yet (a worker that came back
/// after its shards were failed over away, or a new one), as a *learner*.
/// Same leader, epoch and voters: the leader sends it every batch and fills
/// it from its log (`services/storage-worker/src/replication/`), and
/// reports it once it holds the whole log; only then does it become a
/// voter (`reconfigure.rs`).
async fn repair(
    service: &MembershipService,
    live: &HashMap<String, WorkerRow>,
) -> anyhow::Result<()> {
    let inner = &service.inner;
    for shard in inner.store.under_replicated_shards(COPIES).await? {
        let Some(stream) = inner.store.get_stream_by_uid(shard.stream_uid).await? else {
            continue;
        };
        let live_workers: Vec<&WorkerRow> = live.values().collect();
        // Decided on the row as it is under the publishing lock: a failover
        // or a configuration change may have moved it on since.
        let added = service
            .publish_decided(&stream, |current| {
                let Some(row) = current.get(&shard.shard_id) else {
                    return Ok(Vec::new());
                };
                Ok(with_spare_learner(row, live, &live_workers)
                    .map(|row| vec![(row, Change::AddReplicas)])
                    .unwrap_or_default())
            })
            .await?;
        for entry in added {
            tracing::info!(
                shard_id = entry.key.map(|k| k.shard_id).unwrap_or_default(),
                replicas = ?entry.replica_worker_ids,
                "added a learner to an under-replicated shard"
            );
        }
    }
    Ok(())
}

/// `row` with a spare learner added, if it has fewer than [`COPIES`] copies
/// and its whole placement is alive (a dead member is failover's business
/// first) and a live worker in an unused zone is free.
fn with_spare_learner(
    row: &ShardRow,
    live: &HashMap<String, WorkerRow>,
    live_workers: &[&WorkerRow],
) -> Option<ShardRow> {
    if 1 + row.replica_worker_ids.len() >= COPIES {
        return None;
    }
    let placed: Vec<&WorkerRow> = std::iter::once(&row.leader_worker_id)
        .chain(&row.replica_worker_ids)
        .map(|id| live.get(id))
        .collect::<Option<Vec<_>>>()?;
    let spare = placement::spare_replica(&placed, live_workers)?;
    let mut replicas = row.replica_worker_ids.clone();
    replicas.push(spare.worker_id.clone());
    Some(ShardRow {
        replica_worker_ids: replicas,
        ..row.clone()
    })
}

/// Why a shard's leader is replaced.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Deposition {
    /// It has been silent past the heartbeat timeout.
    Silent,
    /// It asked to step down: its copy is rebuilt after damage on disk, so
    /// it cannot lead (and commits nothing while it stays leader).
    SteppedDown,
}

/// Fails `shard` over from its leader: promotes the most current voter,
/// after hearing from every live one (see [`placement::elect`]). Whether a
/// new leader was published.
pub(crate) async fn fail_over(
    service: &MembershipService,
    shard: ShardRow,
    live: &HashMap<String, WorkerRow>,
    why: Deposition,
) -> anyhow::Result<bool> {
    let inner = &service.inner;
    let Some(stream) = inner.store.get_stream_by_uid(shard.stream_uid).await? else {
        return Ok(false);
    };
    if stream.status == StreamStatus::Deleting {
        return Ok(false);
    }
    let mut candidates = Vec::new();
    let voters = shard
        .voters
        .members()
        .into_iter()
        .filter(|id| *id != shard.leader_worker_id)
        .filter_map(|id| live.get(id));
    for voter in voters {
        match copy_position(inner, &voter.address, &shard).await {
            Some(CopyAnswer::At(position)) => candidates.push((position, voter.clone())),
            Some(CopyAnswer::Rebuilding) => {
                tracing::warn!(
                    shard_id = shard.shard_id,
                    replica = voter.worker_id,
                    "a voter's copy is being rebuilt after damage on disk: it gets no vote"
                );
            }
            None => {
                // A live voter that does not answer may hold the longest
                // log (an acknowledged batch): never promote without it.
                tracing::warn!(
                    shard_id = shard.shard_id,
                    replica = voter.worker_id,
                    "a live voter did not say how long its copy is; failover waits"
                );
                return Ok(false);
            }
        }
    }
    let answers: Vec<(CopyPosition, &WorkerRow)> = candidates
        .iter()
        .map(|(position, w)| (*position, w))
        .collect();
    let live_workers: Vec<&WorkerRow> = live.values().collect();
    let promotion = match placement::elect(
        &shard.leader_worker_id,
        &shard.voters,
        &shard.learners(),
        &answers,
        &live_workers,
    ) {
        Election::Promote(promotion) => promotion,
        Election::Wait { answering, needed } => {
            if !first_wait_in_a_while(inner, &shard) {
                return Ok(false);
            }
            tracing::warn!(
                shard_id = shard.shard_id,
                leader = shard.leader_worker_id,
                answering,
                needed,
                voters = ?shard.voters,
                "leader is dead and too few of the committed voters answer to be sure of every acknowledged record: the shard waits"
            );
            return Ok(false);
        }
    };
    let (last_epoch, end) = promotion.position;
    let moved = ShardRow {
        leader_worker_id: promotion.leader,
        replica_worker_ids: promotion.replicas,
        voters: promotion.voters,
        epoch: shard.epoch + 1,
        ..shard.clone()
    };
    tracing::warn!(
        stream_name = stream.stream_name,
        shard_id = shard.shard_id,
        old_leader = shard.leader_worker_id,
        new_leader = moved.leader_worker_id,
        epoch = moved.epoch,
        copy_end = end,
        copy_epoch = last_epoch,
        voters = ?moved.voters,
        "failing over shard"
    );
    // The old leader may have spoken up while the replicas were asked.
    if why == Deposition::Silent && !surely_silent(inner, &shard.leader_worker_id) {
        tracing::info!(
            shard_id = shard.shard_id,
            leader = shard.leader_worker_id,
            "leader heard from again; failover stands down"
        );
        return Ok(false);
    }
    // Published only if nothing moved the shard on while its voters were
    // asked (a report, a repair, a re-registration): decided on that row.
    let published = service
        .publish_decided(&stream, |current| {
            let unchanged = current
                .get(&shard.shard_id)
                .is_some_and(|now| same_placement(now, &shard));
            Ok(if unchanged {
                vec![(moved, Change::MoveLeadership)]
            } else {
                Vec::new()
            })
        })
        .await?;
    if published.is_empty() {
        tracing::info!(
            shard_id = shard.shard_id,
            "shard changed while failing over; the next check decides again"
        );
        return Ok(false);
    }
    inner.metrics.failovers.inc();
    Ok(true)
}

/// Whether two rows of a shard place and count its copies the same way.
fn same_placement(a: &ShardRow, b: &ShardRow) -> bool {
    a.epoch == b.epoch
        && a.state == b.state
        && a.close_generation == b.close_generation
        && a.leader_worker_id == b.leader_worker_id
        && a.replica_worker_ids == b.replica_worker_ids
        && a.voters == b.voters
}

/// How often a shard that waits for its voters is logged again.
const WAIT_LOG_INTERVAL: Duration = Duration::from_secs(10);

/// Whether a shard's wait for its voters was not logged in the last
/// [`WAIT_LOG_INTERVAL`] (failover checks it several times a second).
fn first_wait_in_a_while(inner: &Inner, shard: &ShardRow) -> bool {
    let key = format!("{}/{}/{}", shard.stream_uid, shard.shard_id, shard.epoch);
    let now = std::time::Instant::now();
    let mut logged = inner.waits_logged.lock().unwrap_or_else(|p| p.into_inner());
    logged.retain(|_, at| now.duration_since(*at) < WAIT_LOG_INTERVAL);
    if logged.contains_key(&key) {
        return false;
    }
    logged.insert(key, now);
    true
}
