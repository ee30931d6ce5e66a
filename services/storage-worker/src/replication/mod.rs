//! Leader → replica replication of one shard's batches.
//!
//! While the leader writes and fsyncs a batch (still invisible to readers),
//! it sends the same batch to every replica named in its shard-map entry —
//! the two overlap, since the writer task alone decides where the batch
//! goes (`writer/mod.rs`, `commit_batch`) — and waits until its own write and
//! enough replicas' fsyncs are done: a majority of the copies by default
//! (the leader counts as one), or all of them. Only then is the batch
//! committed (visible to readers) and acknowledged.
//!
//! A replica that restarted or fell behind answers with where its log ends;
//! the leader then sends it the missing records (read from its own log,
//! committed or not) before the new batch, so a replica's log is always a
//! prefix of the leader's — no gap, no duplicate. A replica that misses
//! records the leader no longer holds (expired under retention) is first
//! restarted at the leader's trim horizon (`InstallSnapshot`); it counts as
//! holding the log only once it has caught up from there.
//!
//! A batch that did not reach enough replicas is not acknowledged, but it
//! stays in the leader's log and becomes visible once a later batch commits
//! (as after a client timeout: unacknowledged is not the same as absent).
//!
//! Every request carries the leader's epoch and its epoch history
//! (`freshet-log`'s `epochs.rs`). A replica refuses an older epoch under its
//! log's writer lock, and on first contact with a new leader drops exactly
//! the records the new leader never had (KIP-101's leader-epoch truncation).
//! A new leader commits records left from earlier epochs only once enough
//! replicas hold its whole log *and* have adopted its epoch — Raft's rule
//! that a leader commits earlier terms' entries only through its own.
//!
//! Which copies count is the shard's voting configuration
//! (`libs/types/src/voters.rs`): a batch needs a majority of every voter
//! set, and learners count for nothing. However many voters a shard has at
//! the moment, a batch needs at least `min_ack_copies` of them (2 by
//! default): a shard whose voting replicas are all gone refuses writes
//! rather than acknowledge them on a single disk. Once the batch commits,
//! the leader tells membership which copies hold its log while the voters
//! may move on (a joint configuration, learners: [`Replicator::report_replicas`]).
//!
//! Here: the batch's way out and the ack rule; `catch_up.rs` — bringing a
//! lagging replica up (records from the leader's log, or a restart at the
//! leader's trim horizon); `reports.rs` — what the leader tells membership.

mod catch_up;
mod ends;
mod replica;
mod reports;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use freshet_log::{NewRecord, ShardLog};
use freshet_metrics::Gauge;
use freshet_proto::v1::membership_client::MembershipClient;
use freshet_proto::v1::storage_client::StorageClient;
use freshet_proto::v1::{
    EpochStart, RecordToAppend, ReportReplicasRequest, ShardKey, ShardMapEntry,
};
use freshet_server::TracedChannel;
use freshet_shardmap::{voters_of, SharedShardMap};
use freshet_types::Voters;

use crate::error::WriteError;
use crate::layout::SegmentKey;
use crate::lease::Lease;
use crate::metrics::{CopyLabels, WorkerMetrics};
pub use catch_up::{next_run, CatchUpRun};
use catch_up::{ReplicaTarget, SendOutcome};
pub use ends::ReplicaEnds;
pub use replica::{write_as_replica, ReplicaWrite, ReplicaWrote};
pub use reports::copies_holding_log;

/// How long the leader waits for one replica's answer.
const REPLICA_TIMEOUT: Duration = Duration::from_secs(2);
/// Records per catch-up request.
const CATCH_UP_RECORDS: usize = 1_000;
const CATCH_UP_BYTES: u64 = 4 * 1024 * 1024;
/// Requests one replica may take to catch up before this batch gives up on it.
const MAX_ROUNDS: usize = 64;

/// A record as a `Replicate` request carries it (the data is shared, not
/// copied), with its append mark.
fn to_wire(
    partition_key: &str,
    data: &bytes::Bytes,
    ends_append: Option<freshet_log::AppendMark>,
) -> RecordToAppend {
    RecordToAppend {
        partition_key: partition_key.to_owned(),
        data: data.clone(),
        explicit_hash_key: String::new(),
        ends_append: ends_append.map(|mark| freshet_proto::v1::AppendMark {
            key: Some(key_to_wire(mark.key)),
            records: mark.records,
        }),
    }
}

pub(crate) fn key_to_wire(key: freshet_log::AppendKey) -> freshet_proto::v1::AppendKey {
    freshet_proto::v1::AppendKey {
        frontend: key.frontend,
        call: key.call,
    }
}

pub(crate) fn key_from_wire(key: &freshet_proto::v1::AppendKey) -> freshet_log::AppendKey {
    freshet_log::AppendKey {
        frontend: key.frontend,
        call: key.call,
    }
}

/// A `Replicate` record's append mark, as the log stores it (a mark
/// without a key is no mark).
pub(crate) fn mark_from_wire(record: &RecordToAppend) -> Option<freshet_log::AppendMark> {
    let mark = record.ends_append.as_ref()?;
    Some(freshet_log::AppendMark {
        key: key_from_wire(mark.key.as_ref()?),
        records: mark.records,
    })
}

/// The checksum a `Replicate` request carries over its records.
pub(crate) fn wire_checksum(records: &[RecordToAppend]) -> u32 {
    freshet_log::batch_checksum(
        records
            .iter()
            .map(|r| (r.partition_key.as_str(), &r.data[..], mark_from_wire(r))),
    )
}

/// How many copies must hold a batch before it is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum AckCopies {
    /// More than half of the shard's copies (2 of 3).
    Majority,
    /// Every copy.
    All,
}

/// When a leader may acknowledge a batch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AckRule {
    pub copies: AckCopies,
    /// Voters, the leader's copy included, that must hold every
    /// acknowledged batch whatever the shard's configuration.
    pub min_voters: usize,
}

impl AckRule {
    /// Whether the copies for which `holds` is true (the leader's among
    /// them) may acknowledge a batch: a majority of every voter set (or,
    /// for `All`, every voter of the newest one too), and at least
    /// `min_voters` voters in all. Learners count for nothing.
    pub fn is_met(self, voters: &Voters, holds: impl Fn(&str) -> bool) -> bool {
        let quorum = match self.copies {
            AckCopies::Majority => voters.is_quorum(&holds),
            AckCopies::All => voters.all_of_newest_hold(&holds),
        };
        quorum && voters.members().into_iter().filter(|id| holds(id)).count() >= self.min_voters
    }
}

/// A copy's epoch history as a `Replicate` request (or a `DescribeShard`
/// answer) carries it.
pub(crate) fn epochs_to_wire(log: &ShardLog) -> Vec<EpochStart> {
    log.epoch_history()
        .entries()
        .iter()
        .map(|e| EpochStart {
            epoch: e.epoch,
            start_offset: e.start_offset,
        })
        .collect()
}

/// Makes `log` the writer of `epoch` (durably, off the async threads).
pub async fn begin_leading(log: &Arc<ShardLog>, epoch: u64) -> Result<(), WriteError> {
    if log.latest_epoch() == epoch {
        return Ok(());
    }
    let log = log.clone();
    tokio::task::spawn_blocking(move || log.begin_leading(epoch))
        .await
        .map_err(|e| WriteError::task("begin-leading", e))??;
    Ok(())
}

/// What every shard's replicator shares.
pub struct ReplicationContext {
    /// This worker: only a shard's leader replicates it.
    pub worker_id: String,
    pub map: SharedShardMap,
    /// A batch is committed only while this worker holds its leader lease.
    pub lease: Arc<Lease>,
    pub ack: AckRule,
    pub metrics: Arc<WorkerMetrics>,
    clients: freshet_server::StorageClients,
    /// Where a leader reports which copies hold its log (`ReportReplicas`).
    membership: MembershipClient<TracedChannel>,
}

impl ReplicationContext {
    pub fn new(
        worker_id: String,
        map: SharedShardMap,
        ack: AckRule,
        lease: Arc<Lease>,
        token: &freshet_server::InternalToken,
        metrics: Arc<WorkerMetrics>,
        membership: MembershipClient<TracedChannel>,
    ) -> ReplicationContext {
        ReplicationContext {
            worker_id,
            map,
            lease,
            ack,
            metrics,
            clients: freshet_server::StorageClients::new(token),
            membership,
        }
    }

    fn client(&self, address: &str) -> Result<StorageClient<TracedChannel>, WriteError> {
        self.clients
            .get(address)
            .map_err(|e| WriteError::Replication(e.to_string()))
    }
}

/// The replication state of one shard on its leader.
pub struct Replicator {
    context: Arc<ReplicationContext>,
    shard: ShardKey,
    /// The segment of the shard's log this replicator writes: it acts only
    /// while that is the shard's current segment.
    segment: u32,
    /// Where each replica's log ends, as far as the leader knows, at the
    /// current epoch (`ends.rs`).
    replica_ends: ReplicaEnds,
    /// Each replica's lag gauge, and where its log last ended (kept across
    /// epochs and silences: what the gauge measures from). Removed from
    /// the worker's metrics with the replicator.
    lag: HashMap<String, (Gauge, Option<u64>)>,
    /// The last `ReportReplicas` sent, and when: the same report is not
    /// repeated more often than [`REPORT_REPEAT`].
    last_report: Option<(ReportReplicasRequest, std::time::Instant)>,
    /// When this leader last asked membership to let another voter lead
    /// (its copy is rebuilding); asked again at most every [`REPORT_REPEAT`].
    last_step_down: Option<std::time::Instant>,
}

/// How often the same report of which copies hold the log may be repeated.
const REPORT_REPEAT: Duration = Duration::from_secs(2);

/// A batch the leader has made durable locally.
pub struct LocalBatch<'a> {
    /// The epoch the leader writes it under; replicas refuse older ones.
    pub epoch: u64,
    pub first_offset: u64,
    pub arrival_ms: i64,
    pub records: &'a [NewRecord],
}

impl Replicator {
    pub fn new(context: Arc<ReplicationContext>, key: &SegmentKey) -> Replicator {
        Replicator {
            context,
            shard: ShardKey {
                stream_uid: key.stream_uid,
                shard_id: key.shard_id.clone(),
            },
            segment: key.segment,
            replica_ends: ReplicaEnds::default(),
            lag: HashMap::new(),
            last_report: None,
            last_step_down: None,
        }
    }

    fn lag_labels(&self, replica: &str) -> CopyLabels {
        CopyLabels {
            shard: format!("{}/{}", self.shard.stream_uid, self.shard.shard_id),
            replica: replica.to_owned(),
        }
    }

    /// Sets `replica`'s lag behind `leader_end`: from where it says its log
    /// ends, or, when it did not answer, from where it last did (the whole
    /// log if it never has), so a silent replica's lag keeps growing.
    fn record_lag(&mut self, replica: &str, leader_end: u64, answered_end: Option<u64>) {
        if !self.lag.contains_key(replica) {
            let gauge = self
                .context
                .metrics
                .replication_lag_records
                .get_or_create(&self.lag_labels(replica))
                .clone();
            self.lag.insert(replica.to_owned(), (gauge, None));
        }
        if let Some((gauge, last_end)) = self.lag.get_mut(replica) {
            if answered_end.is_some() {
                *last_end = answered_end;
            }
            let behind = leader_end.saturating_sub(last_end.unwrap_or(0));
            gauge.set(i64::try_from(behind).unwrap_or(i64::MAX));
        }
    }

    /// The worker's metrics, which its shards' writers record into.
    pub fn metrics(&self) -> &WorkerMetrics {
        &self.context.metrics
    }

    /// The epoch at which this worker leads the shard now, if it does.
    pub fn leading_epoch(&self) -> Option<u64> {
        self.entry()
            .filter(|e| e.leader_worker_id == self.context.worker_id)
            .map(|e| e.epoch)
    }

    /// Whether the shard is open for writes (not closing or closed).
    pub fn is_open(&self) -> bool {
        self.entry()
            .is_some_and(|e| e.state() == freshet_proto::v1::ShardState::Open)
    }

    /// Whether this worker may commit as a leader right now.
    pub fn holds_lease(&self) -> bool {
        self.context.lease.is_held(&self.context.map)
    }

    /// Forgets where replicas' logs end when the epoch changes (a replica
    /// counts only once it has answered the current one), and forgets
    /// workers no longer placed (one placed again is asked afresh).
    fn forget_ends_of_other_epochs(&mut self, entry: &ShardMapEntry) {
        self.replica_ends
            .follow(entry.epoch, &entry.replica_worker_ids);
    }

    /// The shard's entry while this replicator's segment is its current
    /// one (a sealed segment's log has no writer and no replicas).
    fn entry(&self) -> Option<ShardMapEntry> {
        self.context
            .map
            .read(|m| m.get(self.shard.stream_uid, &self.shard.shard_id).cloned())
            .filter(|e| e.segment_index == self.segment)
    }

    /// Sends `batch` to the replicas; Ok once enough have it durably.
    pub async fn replicate(
        &mut self,
        log: &Arc<ShardLog>,
        batch: LocalBatch<'_>,
    ) -> Result<(), WriteError> {
        let entry = self
            .entry()
            .filter(|e| e.leader_worker_id == self.context.worker_id && e.epoch == batch.epoch)
            .ok_or_else(|| {
                WriteError::LostLeadership(
                    "this worker no longer leads the shard at the batch's epoch".to_owned(),
                )
            })?;
        self.forget_ends_of_other_epochs(&entry);
        let replicas: Vec<(String, String)> = entry
            .replica_worker_ids
            .iter()
            .cloned()
            .zip(entry.replica_addresses.iter().cloned())
            .collect();
        let voters = voters_of(&entry);
        let leader = self.context.worker_id.clone();
        let placed = |id: &str| id == leader || entry.replica_worker_ids.iter().any(|r| r == id);
        if !self.quorum(&voters, placed) {
            return Err(WriteError::Replication(format!(
                "the shard's voters ({voters:?}) cannot make a quorum of its {} copies placed with {} needed",
                replicas.len() + 1,
                self.context.ack.min_voters
            )));
        }
        if replicas.is_empty() {
            return Ok(());
        }
        let committed = log.committed_offset();
        let epochs = epochs_to_wire(log);
        let leader_end = batch.first_offset + batch.records.len() as u64;
        let records: Vec<RecordToAppend> = batch
            .records
            .iter()
            .map(|r| to_wire(&r.partition_key, &r.data, r.ends_append))
            .collect();
        let sends = replicas.iter().map(|(worker_id, address)| {
            let known_end = self.replica_ends.get(worker_id);
            let replica = ReplicaTarget {
                context: &self.context,
                shard: &self.shard,
                epoch: entry.epoch,
                epochs: &epochs,
                address,
                leader_end,
            };
            let records = &records;
            let batch = &batch;
            async move {
                let outcome = tokio::time::timeout(
                    REPLICA_TIMEOUT,
                    replica.send(log, known_end, batch, records, committed),
                )
                .await
                .unwrap_or(SendOutcome {
                    acknowledged: false,
                    end: None,
                });
                (worker_id.clone(), outcome)
            }
        });
        let mut acknowledged: Vec<String> = Vec::new();
        let outcomes = futures::future::join_all(sends).await;
        for (worker_id, outcome) in outcomes {
            self.record_lag(&worker_id, leader_end, outcome.end);
            self.replica_ends.heard(&worker_id, outcome.end);
            if outcome.acknowledged {
                acknowledged.push(worker_id);
            }
        }
        if self.quorum(&voters, |id| {
            id == leader || acknowledged.iter().any(|a| a == id)
        }) {
            Ok(())
        } else {
            Err(WriteError::Replication(format!(
                "the replicas that acknowledged ({acknowledged:?}) make no quorum of {voters:?}"
            )))
        }
    }

    /// Whether the copies for which `holds` is true may acknowledge.
    fn quorum(&self, voters: &Voters, holds: impl Fn(&str) -> bool) -> bool {
        self.context.ack.is_met(voters, holds)
    }
}

impl Drop for Replicator {
    /// A shard that closes, moves away or is deleted leaves no lag series
    /// behind.
    fn drop(&mut self) {
        for replica in self.lag.keys() {
            self.context
                .metrics
                .replication_lag_records
                .remove(&self.lag_labels(replica));
        }
    }
}

impl Replicator {
    /// Whether enough replicas have answered the current epoch with a log
    /// ending at `end` — holding all of it, at this epoch (what a seal
    /// needs: those copies can serve the sealed segment on their own).
    pub fn enough_replicas_hold(&self, end: u64) -> bool {
        let Some(entry) = self.entry() else {
            return false;
        };
        self.replica_ends.quorum(
            self.context.ack,
            &voters_of(&entry),
            &self.context.worker_id,
            entry.epoch,
            |held| held == end,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::{AckCopies, AckRule};
    use freshet_types::Voters;

    fn ids(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn met(copies: AckCopies, voters: &Voters, min_voters: usize, holders: &[&str]) -> bool {
        let rule = AckRule { copies, min_voters };
        rule.is_met(voters, |id| holders.contains(&id))
    }

    #[test]
    fn a_majority_counts_the_leader_as_one_copy() {
        let three = Voters::Stable(ids(&["l", "r1", "r2"]));
        assert!(met(AckCopies::Majority, &three, 1, &["l", "r1"]), "2 of 3");
        assert!(!met(AckCopies::Majority, &three, 1, &["l"]));
        assert!(!met(AckCopies::All, &three, 1, &["l", "r1"]));
        assert!(met(AckCopies::All, &three, 1, &["l", "r1", "r2"]));
        let alone = Voters::Stable(ids(&["l"]));
        assert!(met(AckCopies::Majority, &alone, 1, &["l"]), "a lone copy");
    }

    #[test]
    fn a_shard_without_enough_voters_cannot_meet_two_copies() {
        let alone = Voters::Stable(ids(&["l"]));
        assert!(!met(AckCopies::Majority, &alone, 2, &["l"]));
        // A learner holding the batch does not make a second copy.
        assert!(!met(AckCopies::Majority, &alone, 2, &["l", "learner"]));
    }

    #[test]
    fn a_joint_configuration_needs_a_majority_of_each_set() {
        let joint = Voters::Joint {
            committed: ids(&["dead", "l", "r1"]),
            next: ids(&["l", "r1"]),
        };
        assert!(met(AckCopies::Majority, &joint, 2, &["l", "r1"]));
        assert!(!met(AckCopies::Majority, &joint, 2, &["l", "dead"]));
        assert!(!met(AckCopies::Majority, &joint, 2, &["l", "learner"]));
    }
}
