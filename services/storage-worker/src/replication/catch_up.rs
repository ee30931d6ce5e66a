//! Bringing replicas up to the leader's log: the idle leader's catch-up
//! round, and for each replica the requests that send it what it misses —
//! records from the leader's log, or, below the leader's trim horizon, a
//! restart of its log there (`InstallSnapshot`).

use std::sync::Arc;
use std::time::Duration;

use freshet_log::{NewRecord, ShardLog};
use freshet_proto::v1::{
    EpochStart, InstallSnapshotRequest, RecordToAppend, ReplicateRequest, ShardKey,
};

use super::{
    begin_leading, epochs_to_wire, to_wire, LocalBatch, ReplicationContext, Replicator,
    CATCH_UP_BYTES, CATCH_UP_RECORDS, MAX_ROUNDS,
};

use crate::error::WriteError;

impl Replicator {
    /// While the shard is idle: brings every replica whose log end is not
    /// known to match the leader's up to date, passes on the commit point,
    /// and commits the leader's whole log once enough copies hold it.
    /// Bounded by `deadline` per replica.
    pub async fn catch_up(&mut self, log: &Arc<ShardLog>, deadline: Duration) {
        // A worker without a lease sends nothing: it may have been deposed.
        let Some(entry) = self
            .entry()
            .filter(|e| e.leader_worker_id == self.context.worker_id)
            .filter(|_| self.holds_lease())
        else {
            return;
        };
        self.forget_ends_of_other_epochs(&entry);
        if log.rebuilding_until().is_some() {
            self.step_down(&entry);
            return;
        }
        if let Err(error) = begin_leading(log, entry.epoch).await {
            tracing::warn!(shard_id = self.shard.shard_id, %error, "cannot take up leadership");
            return;
        }
        let target = log.next_offset();
        let committed = log.committed_offset();
        let epochs = epochs_to_wire(log);
        for (worker_id, address) in entry
            .replica_worker_ids
            .iter()
            .zip(&entry.replica_addresses)
        {
            if self.replica_ends.get(worker_id) == Some(target) {
                continue;
            }
            let replica = ReplicaTarget {
                context: &self.context,
                shard: &self.shard,
                epoch: entry.epoch,
                epochs: &epochs,
                address,
                leader_end: target,
            };
            let known = self.replica_ends.get(worker_id);
            let outcome =
                tokio::time::timeout(deadline, replica.bring_up_to(log, known, target, committed))
                    .await;
            self.replica_ends.heard(worker_id, outcome.ok().flatten());
        }
        // A new leader (after failover or restart) may hold records that
        // were acknowledged under its predecessor but not yet marked
        // committed here. Once enough replicas hold the whole log — and so,
        // having answered this epoch, its start — all of it is committed.
        if committed < target && self.enough_replicas_hold(target) && self.holds_lease() {
            log.commit(target);
        }
        self.report_replicas(log);
    }
}

pub(super) struct ReplicaTarget<'a> {
    pub(super) context: &'a ReplicationContext,
    pub(super) shard: &'a ShardKey,
    pub(super) epoch: u64,
    /// The leader's epoch history, sent with every request.
    pub(super) epochs: &'a [EpochStart],
    pub(super) address: &'a str,
    /// Where the leader's log ends (with the batch being sent, if any).
    pub(super) leader_end: u64,
}

pub(super) struct SendOutcome {
    pub(super) acknowledged: bool,
    /// Where the replica's log ends now, if known.
    pub(super) end: Option<u64>,
}

impl ReplicaTarget<'_> {
    async fn call(
        &self,
        first_offset: u64,
        arrival_ms: i64,
        records: Vec<RecordToAppend>,
        committed: u64,
    ) -> Result<(bool, u64), WriteError> {
        let mut client = self.context.client(self.address)?;
        let records_crc32 = super::wire_checksum(&records);
        let response = client
            .replicate(ReplicateRequest {
                shard: Some(self.shard.clone()),
                epoch: self.epoch,
                first_offset,
                arrival_ms,
                records,
                leader_committed_offset: committed,
                leader_epochs: self.epochs.to_vec(),
                records_crc32,
                leader_next_offset: self.leader_end,
            })
            .await
            .map_err(|status| {
                WriteError::Replication(format!("{:?}: {}", status.code(), status.message()))
            })?
            .into_inner();
        Ok((response.accepted, response.next_offset))
    }

    /// Restarts a replica whose log ends below `horizon` (what it misses
    /// has expired here) at `horizon`; answers where its log ends.
    async fn install_snapshot(&self, horizon: u64) -> Result<(bool, u64), WriteError> {
        let mut client = self.context.client(self.address)?;
        let response = client
            .install_snapshot(InstallSnapshotRequest {
                shard: Some(self.shard.clone()),
                epoch: self.epoch,
                start_offset: horizon,
                leader_epochs: self.epochs.to_vec(),
            })
            .await
            .map_err(|status| {
                WriteError::Replication(format!("{:?}: {}", status.code(), status.message()))
            })?
            .into_inner();
        Ok((response.accepted, response.next_offset))
    }

    /// Brings the replica up to `batch.first_offset` if needed, then sends
    /// the batch.
    pub(super) async fn send(
        &self,
        log: &Arc<ShardLog>,
        known_end: Option<u64>,
        batch: &LocalBatch<'_>,
        records: &[RecordToAppend],
        committed: u64,
    ) -> SendOutcome {
        let mut end = known_end.unwrap_or(batch.first_offset);
        for _ in 0..MAX_ROUNDS {
            if end > batch.first_offset {
                // The replica holds a tail this leader does not have (it
                // was written under an earlier leader and never
                // acknowledged): sending the batch makes it truncate.
                end = batch.first_offset;
            }
            let result = if end == batch.first_offset {
                self.call(
                    batch.first_offset,
                    batch.arrival_ms,
                    records.to_vec(),
                    committed,
                )
                .await
            } else {
                self.catch_up_step(log, end, batch.first_offset, committed)
                    .await
            };
            match result {
                Ok((true, new_end)) if end == batch.first_offset => {
                    return SendOutcome {
                        acknowledged: new_end >= batch.first_offset + records.len() as u64,
                        end: Some(new_end),
                    };
                }
                Ok((_, new_end)) => end = new_end,
                Err(error) => {
                    tracing::debug!(shard_id = self.shard.shard_id, replica = self.address, %error, "replication failed");
                    return SendOutcome {
                        acknowledged: false,
                        end: None,
                    };
                }
            }
        }
        SendOutcome {
            acknowledged: false,
            end: Some(end),
        }
    }

    /// Probes the replica's log end if unknown, then sends what it misses
    /// up to `target`. Returns where its log ends, if it answered.
    async fn bring_up_to(
        &self,
        log: &Arc<ShardLog>,
        known: Option<u64>,
        target: u64,
        committed: u64,
    ) -> Option<u64> {
        let mut end = match known {
            Some(end) => end,
            None => self.call(target, 0, Vec::new(), committed).await.ok()?.1,
        };
        for _ in 0..MAX_ROUNDS {
            if end >= target {
                break;
            }
            end = self
                .catch_up_step(log, end, target, committed)
                .await
                .ok()?
                .1;
        }
        Some(end)
    }

    /// Sends the replica the next run of records it misses (one run shares
    /// one arrival time, as the leader's batch did).
    async fn catch_up_step(
        &self,
        log: &Arc<ShardLog>,
        from: u64,
        until: u64,
        committed: u64,
    ) -> Result<(bool, u64), WriteError> {
        let horizon = log.trim_horizon();
        if from < horizon {
            return self.install_snapshot(horizon).await;
        }
        let reader = log.clone();
        let run = tokio::task::spawn_blocking(move || next_run(&reader, from, until))
            .await
            .map_err(|e| WriteError::task("catch-up read", e))??;
        let records = run
            .records
            .iter()
            .map(|r| to_wire(&r.partition_key, &r.data, r.ends_append))
            .collect();
        self.call(run.first_offset, run.arrival_ms, records, committed)
            .await
    }
}

/// The next records a replica whose log ends at `from` is sent.
#[derive(Debug)]
pub struct CatchUpRun {
    pub first_offset: u64,
    /// One arrival time: the records of one write share it.
    pub arrival_ms: i64,
    pub records: Vec<NewRecord>,
}

/// Reads the next run of records a replica misses from `from` (below
/// `until`, the leader's end when the catch-up began): records sharing one
/// arrival time, as one leader's batch did, ending at the end of a write.
///
/// Invariant: a run ends at the end of a write, however large (its batch
/// went to replicas as one message once already), so a copy never holds
/// part of an append, whose key is on its last record (it would be written
/// again whole after a failover). Pure over the log: the simulator
/// (`tests/sim`) sends what this reads.
pub fn next_run(log: &ShardLog, from: u64, until: u64) -> Result<CatchUpRun, WriteError> {
    let mut missing = log.read_uncommitted(from, CATCH_UP_RECORDS, CATCH_UP_BYTES)?;
    while let Some(next) = missing
        .records
        .last()
        .filter(|r| r.write_continues)
        .map(|r| r.offset + 1)
    {
        let more = log.read_uncommitted(next, CATCH_UP_RECORDS, CATCH_UP_BYTES)?;
        if more.records.is_empty() {
            break;
        }
        missing.records.extend(more.records);
    }
    let Some(first) = missing.records.first().filter(|r| r.offset == from) else {
        // Retention trimmed it since the horizon was read: the next
        // catch-up round (or batch) restarts the replica at the new
        // horizon.
        return Err(WriteError::Replication(format!(
            "the leader's log no longer holds offset {from}"
        )));
    };
    let arrival_ms = first.arrival_ms;
    let mut records: Vec<NewRecord> = Vec::new();
    let mut whole = 0;
    for record in missing
        .records
        .iter()
        .take_while(|r| r.arrival_ms == arrival_ms && r.offset < until)
    {
        records.push(NewRecord {
            partition_key: record.partition_key.clone(),
            data: record.data.clone(),
            ends_append: record.ends_append,
        });
        if !record.write_continues {
            whole = records.len();
        }
    }
    if whole == 0 {
        return Err(WriteError::Replication(format!(
            "the write at offset {from} does not end in the leader's log"
        )));
    }
    records.truncate(whole);
    Ok(CatchUpRun {
        first_offset: from,
        arrival_ms,
        records,
    })
}
