//! A replica's side of `Replicate`: what it does with a batch its leader
//! sent, once `service.rs` has checked that its own shard-map entry names
//! it a replica at the request's epoch. Pure over the log, so the
//! simulator (`tests/sim`) runs this very code.

use freshet_log::{EpochHistory, LogError, NewRecord, Replicated, ShardLog};

/// One `Replicate` request, as the log takes it.
pub struct ReplicaWrite<'a> {
    /// The leader's epoch; the log refuses an older one under its writer's
    /// lock (another leader's request may overtake the service's check).
    pub epoch: u64,
    /// The leader's epoch history: this copy drops exactly the records the
    /// leader never had before it writes (KIP-101).
    pub leader_epochs: &'a EpochHistory,
    /// Where the leader's log ends, the batch included: a copy being
    /// rebuilt must reach it before it may vote again.
    pub leader_end: u64,
    pub first_offset: u64,
    pub arrival_ms: i64,
    pub records: &'a [NewRecord],
    /// The leader's commit point when it sent the batch.
    pub leader_committed: u64,
}

/// What a replica's write came to.
#[derive(Debug, Clone, Copy)]
pub struct ReplicaWrote {
    pub replicated: Replicated,
    /// Whether the log grew (a probe, a refusal or a batch already held
    /// writes nothing).
    pub wrote: bool,
}

/// Writes the leader's batch into this copy's log (blocking: it fsyncs),
/// then commits what the leader had committed.
///
/// Invariant: after `replicate` the log is a prefix of the leader's, so
/// whatever of it the leader committed is committed here too (clamped to
/// this copy's end by the log).
pub fn write_as_replica(
    log: &ShardLog,
    write: &ReplicaWrite<'_>,
) -> Result<ReplicaWrote, LogError> {
    log.hear_leader(write.epoch, write.leader_end)?;
    let end_before = log.next_offset();
    let replicated = log.replicate(
        write.epoch,
        write.leader_epochs,
        write.first_offset,
        write.arrival_ms,
        write.records,
    )?;
    log.commit(write.leader_committed);
    Ok(ReplicaWrote {
        replicated,
        wrote: replicated.next_offset > end_before,
    })
}
