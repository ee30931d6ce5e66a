//! What a leader tells membership: which copies hold its log (so the
//! shard's voters may move on), and that it must step down (its copy is
//! being rebuilt).

use freshet_log::ShardLog;
use freshet_proto::v1::{ReportReplicasRequest, ShardMapEntry, StepDownRequest};
use freshet_shardmap::voters_of;

use super::{ReplicaEnds, Replicator, REPORT_REPEAT};

/// The copies that hold a leader's whole log at `epoch` — the leader,
/// then each of `replicas` that answered this epoch with its log ending at
/// or past what is needed — or `None` before the leader's log has begun
/// this epoch or any replica has answered at it. Pure: the simulator
/// reports by it too.
///
/// A copy holds every committed batch once it holds this leader's log
/// through its commit point and through the start of its epoch: batches
/// committed under earlier leaders all lie below that start (this copy was
/// elected holding them), later ones below the commit point. Having
/// answered at this epoch, the copy adopted this leader's history, so its
/// records there are this leader's.
pub fn copies_holding_log(
    log: &ShardLog,
    ends: &ReplicaEnds,
    leader: &str,
    epoch: u64,
    replicas: &[String],
) -> Option<Vec<String>> {
    let epoch_start = log
        .epoch_history()
        .entries()
        .last()
        .filter(|e| e.epoch == epoch)
        .map(|e| e.start_offset)?;
    let needed_end = log.committed_offset().max(epoch_start);
    let holding = ends.holding(leader, epoch, replicas, needed_end);
    (!holding.is_empty()).then_some(holding)
}

impl Replicator {
    /// Tells membership which copies hold this leader's whole log up to
    /// its commit point, while the shard's voters may move on: its
    /// configuration is joint, or it has learners. Membership decides what
    /// follows (`services/membership/src/reconfigure.rs`). Sent in the
    /// background; the same report is repeated at most every
    /// [`REPORT_REPEAT`].
    pub fn report_replicas(&mut self, log: &ShardLog) {
        let Some(entry) = self
            .entry()
            .filter(|e| e.leader_worker_id == self.context.worker_id)
        else {
            return;
        };
        let voters = voters_of(&entry);
        let has_learners = entry
            .replica_worker_ids
            .iter()
            .any(|id| !voters.contains(id));
        if !voters.is_joint() && !has_learners {
            return;
        }
        if !self.holds_lease() {
            return;
        }
        let Some(holding) = copies_holding_log(
            log,
            &self.replica_ends,
            &self.context.worker_id,
            entry.epoch,
            &entry.replica_worker_ids,
        ) else {
            return;
        };
        let (voter_ids, next_voter_ids) = voters.to_lists();
        let report = ReportReplicasRequest {
            shard: Some(self.shard.clone()),
            epoch: entry.epoch,
            voter_ids,
            next_voter_ids,
            holding,
        };
        if self
            .last_report
            .as_ref()
            .is_some_and(|(last, at)| *last == report && at.elapsed() < REPORT_REPEAT)
        {
            return;
        }
        self.last_report = Some((report.clone(), std::time::Instant::now()));
        let mut membership = self.context.membership.clone();
        let shard_id = self.shard.shard_id.clone();
        tokio::spawn(async move {
            match membership.report_replicas(report).await {
                Ok(answer) if answer.get_ref().changed => {
                    tracing::info!(shard_id, "membership moved the shard's voters on")
                }
                Ok(_) => {}
                Err(status) => {
                    tracing::debug!(shard_id, code = ?status.code(), message = status.message(), "replica report not taken")
                }
            }
        });
    }

    /// Asks membership to let another voter lead: this copy is rebuilt
    /// after damage on disk and refuses to lead until it holds what it
    /// once held (`freshet_log::open_or_rebuild`). Sent in the background.
    pub(super) fn step_down(&mut self, entry: &ShardMapEntry) {
        if self
            .last_step_down
            .is_some_and(|at| at.elapsed() < REPORT_REPEAT)
        {
            return;
        }
        self.last_step_down = Some(std::time::Instant::now());
        let request = StepDownRequest {
            shard: Some(self.shard.clone()),
            epoch: entry.epoch,
            worker_id: self.context.worker_id.clone(),
        };
        let mut membership = self.context.membership.clone();
        let shard_id = self.shard.shard_id.clone();
        tokio::spawn(async move {
            match membership.step_down(request).await {
                Ok(answer) if answer.get_ref().moved => {
                    tracing::warn!(
                        shard_id,
                        "stepped down: another voter leads while this copy is rebuilt"
                    )
                }
                Ok(_) => tracing::warn!(
                    shard_id,
                    "asked to step down; the shard waits for its voters"
                ),
                Err(status) => {
                    tracing::warn!(shard_id, code = ?status.code(), message = status.message(), "step-down refused")
                }
            }
        });
    }
}
