//! Publishing shard-map changes: shard rows and their change-log entries
//! written in one transaction, then broadcast to subscribers in version
//! order. Every shard change membership makes goes through
//! [`MembershipService::publish_changes`]; consumer changes
//! (`consumers.rs`) share the commit and broadcast,
//! [`MembershipService::commit_locked`].

use std::collections::HashMap;
use std::sync::atomic::Ordering;

use freshet_errors::ErrorCode;
use freshet_metastore::{
    ChangeBatch, ConsumerRow, EntryKey, MetastoreError, ShardRow, StreamRow, WorkerRow,
};
use freshet_proto::prost::Message as _;
use freshet_proto::v1::{self as proto, ConsumerEntry, SealedSegment, ShardKey, ShardMapEntry};
use freshet_types::{ShardState, StreamStatus};
use tonic::Status;

use crate::service::Logged;
use crate::MembershipService;

impl MembershipService {
    /// Publishes one step of a split or merge; ABORTED if a row changed
    /// meanwhile (a failover), so the caller may read again and retry.
    pub(crate) async fn publish_reshard(
        &self,
        stream: &StreamRow,
        changes: Vec<(ShardRow, Change)>,
    ) -> Result<Vec<ShardMapEntry>, Status> {
        let entries = self
            .publish_changes(stream, changes)
            .await
            .map_err(|error| ErrorCode::Conflict.status(error.to_string()))?;
        Ok(entries.into_iter().map(|e| self.stamp(e)).collect())
    }

    /// Writes shard rows and their change-log entries in one transaction,
    /// then broadcasts the entries.
    pub(crate) async fn publish(
        &self,
        stream: &StreamRow,
        shards: Vec<ShardRow>,
        change: Change,
    ) -> Result<Vec<ShardMapEntry>, MetastoreError> {
        let changes = shards.into_iter().map(|shard| (shard, change)).collect();
        self.publish_changes(stream, changes).await
    }

    /// Like [`MembershipService::publish`], with a change of its own for
    /// each row (a split closes a parent and places children in one batch).
    pub(crate) async fn publish_changes(
        &self,
        stream: &StreamRow,
        changes: Vec<(ShardRow, Change)>,
    ) -> Result<Vec<ShardMapEntry>, MetastoreError> {
        self.publish_decided(stream, |_| Ok(changes)).await
    }

    /// Publishes the changes `decide` makes from the stream's shard rows
    /// as they are under the publishing lock — for a change that must be
    /// decided on the current rows, not on rows read earlier (a voting
    /// configuration moved on, replicas added).
    pub(crate) async fn publish_decided(
        &self,
        stream: &StreamRow,
        decide: impl FnOnce(
            &HashMap<String, ShardRow>,
        ) -> Result<Vec<(ShardRow, Change)>, MetastoreError>,
    ) -> Result<Vec<ShardMapEntry>, MetastoreError> {
        let _serialised = self.inner.write_lock.lock().await;
        // Under the lock, the stream and its rows as they are *now*: a
        // failover, a resharding step or a deletion may have committed since
        // the caller read them.
        let Some(stream) = self
            .inner
            .store
            .get_stream_by_uid(stream.stream_uid)
            .await?
        else {
            return Ok(Vec::new());
        };
        let current: HashMap<String, ShardRow> = self
            .inner
            .store
            .shards_of(stream.stream_uid)
            .await?
            .into_iter()
            .map(|row| (row.shard_id.clone(), row))
            .collect();
        let current_state: HashMap<String, ShardState> = current
            .iter()
            .map(|(id, row)| (id.clone(), row.state))
            .collect();
        let changes = decide(&current)?;
        if changes.is_empty() {
            return Ok(Vec::new());
        }
        let removing = changes.iter().all(|(_, kind)| *kind == Change::Remove);
        let republishing = changes.iter().all(|(_, kind)| *kind == Change::Republish);
        if stream.status == StreamStatus::Deleting && !removing {
            // Its tombstones are (about to be) published: nothing may
            // bring its shards back.
            if !republishing {
                return Err(MetastoreError::Conflict(format!(
                    "stream {} is being deleted",
                    stream.stream_name
                )));
            }
            return Ok(Vec::new());
        }
        let changes: Vec<(ShardRow, Change)> = if removing {
            // Every shard, children created meanwhile included.
            current
                .values()
                .cloned()
                .map(|row| (row, Change::Remove))
                .collect()
        } else {
            changes
                .into_iter()
                .filter_map(|(row, kind)| match kind {
                    // Rebuilt from the row as it is now.
                    Change::Republish => current.get(&row.shard_id).cloned().map(|r| (r, kind)),
                    // Guarded by conditional UPDATEs on the epoch and state
                    // the caller read (`libs/metastore`, `ChangeBatch`).
                    _ => Some((row, kind)),
                })
                .collect()
        };
        // A state change must be one the shard's state machine allows from
        // the state it is in now (the metastore's guarded update checks the
        // same rule against the row it changes).
        for (row, kind) in &changes {
            let Some(now) = current_state.get(&row.shard_id) else {
                continue;
            };
            if kind.changes_state() && !now.may_become(row.state) {
                return Err(MetastoreError::Conflict(format!(
                    "shard {} is {now}: it may not become {}",
                    row.shard_id, row.state
                )));
            }
        }
        let (shards, kinds): (Vec<ShardRow>, Vec<Change>) = changes.into_iter().unzip();
        let stream = &stream;
        // Read addresses under the lock, so a concurrent re-registration's
        // republish cannot be overtaken by entries carrying the old address.
        let workers: HashMap<String, WorkerRow> = self
            .inner
            .store
            .list_workers()
            .await?
            .into_iter()
            .map(|w| (w.worker_id.clone(), w))
            .collect();
        let mut batch = self.begin_batch().await?;
        let mut entries = Vec::with_capacity(shards.len());
        for (shard, kind) in shards.iter().zip(kinds.iter().copied()) {
            match kind {
                Change::Place => batch.insert_shard(shard).await?,
                Change::MoveLeadership => batch.update_placement(shard).await?,
                Change::BeginClosing => batch.begin_closing(shard).await?,
                Change::FinishClosing => batch.finish_closing(shard).await?,
                Change::Reopen => batch.reopen(shard).await?,
                Change::Relocate => batch.relocate(shard).await?,
                Change::AddReplicas | Change::Reconfigure => {
                    let read = current.get(&shard.shard_id).ok_or_else(|| {
                        MetastoreError::Conflict(format!("shard {} is gone", shard.shard_id))
                    })?;
                    batch.reconfigure(shard, read).await?
                }
                Change::Republish | Change::Remove => {}
            }
            let tombstones = kind == Change::Remove;
            let state = if tombstones {
                proto::ShardState::Deleted
            } else {
                shard.state.into()
            };
            let entry = entry_for(stream, shard, &workers, batch.next_version(), state);
            let key = EntryKey {
                stream_uid: stream.stream_uid,
                shard_id: &shard.shard_id,
                account_id: &stream.account_id,
                region: &stream.region,
                stream_name: &stream.stream_name,
            };
            batch
                .record(&key, &entry.encode_to_vec(), tombstones)
                .await?;
            entries.push(entry);
        }
        let mut logged: Vec<Logged> = entries
            .iter()
            .map(|entry| Logged::Shard(Box::new(entry.clone())))
            .collect();
        if removing {
            // The stream's consumers go with it, ordered with its
            // tombstones (a frontend drops them as it drops the shards).
            let removed = batch.remove_consumers_of(stream.stream_uid).await?;
            logged.extend(
                record_consumers(&mut batch, removed.iter().map(|r| (r, true)).collect()).await?,
            );
        }
        self.commit_locked(batch, logged).await?;
        Ok(entries)
    }

    /// Commits `batch`, whose recorded entries are `logged`, and broadcasts
    /// them; called under the publishing lock (`Inner::write_lock`), with
    /// any uncertain head settled first. A commit whose outcome is unknown
    /// is settled here: `Ok` if it committed after all.
    pub(crate) async fn commit_locked(
        &self,
        batch: ChangeBatch,
        logged: Vec<Logged>,
    ) -> Result<(), MetastoreError> {
        let backend = batch.backend();
        if let Err(error) = batch.commit().await {
            // The COMMIT may have reached Postgres before the error did:
            // the outcome is unknown until the head is read back.
            self.inner.head_uncertain.store(true, Ordering::Release);
            *self
                .inner
                .uncertain_backend
                .lock()
                .unwrap_or_else(|p| p.into_inner()) = Some(backend);
            tracing::warn!("change-log commit failed, outcome unknown: {error}");
            self.settle_head_locked().await?;
            let committed = logged
                .last()
                .is_some_and(|e| e.version() <= self.inner.head_version.load(Ordering::Acquire));
            // Committed after all: broadcast by `settle_head_locked`.
            return if committed { Ok(()) } else { Err(error) };
        }
        if let Some(last) = logged.last() {
            self.inner
                .head_version
                .fetch_max(last.version(), Ordering::AcqRel);
        }
        self.broadcast(logged);
        Ok(())
    }

    /// Begins a change batch under the publishing lock, once whatever an
    /// earlier commit with an unknown outcome left is broadcast (so
    /// versions reach subscribers in order).
    pub(crate) async fn begin_batch(&self) -> Result<ChangeBatch, MetastoreError> {
        if self.inner.head_uncertain.load(Ordering::Acquire) {
            self.settle_head_locked().await?;
        }
        self.inner.store.begin_changes().await
    }

    /// Sends committed entries to the subscribers, in version order.
    fn broadcast(&self, logged: Vec<Logged>) {
        let at = std::time::Instant::now();
        for change in logged {
            // No receivers is fine: nobody is subscribed yet.
            let _ = self
                .inner
                .changes
                .send(crate::service::Committed { change, at });
        }
    }

    /// After a change-log commit whose outcome was unknown: reads what
    /// Postgres holds past the broadcast head, broadcasts it, and lets
    /// leases be granted again. Retried by the failover loop until
    /// Postgres answers.
    pub(crate) async fn settle_head(&self) -> Result<(), MetastoreError> {
        if !self.inner.head_uncertain.load(Ordering::Acquire) {
            return Ok(());
        }
        let _serialised = self.inner.write_lock.lock().await;
        self.settle_head_locked().await
    }

    /// [`MembershipService::settle_head`] under the publishing lock.
    async fn settle_head_locked(&self) -> Result<(), MetastoreError> {
        let mut head = self.inner.head_version.load(Ordering::Acquire);
        let backend = *self
            .inner
            .uncertain_backend
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let changes = self
            .inner
            .store
            .settled_changes_after(head, backend)
            .await?;
        let mut logged = Vec::with_capacity(changes.len());
        for change in &changes {
            logged.push(Logged::decode(change)?);
            head = change.version;
        }
        self.inner.head_version.fetch_max(head, Ordering::AcqRel);
        self.broadcast(logged);
        *self
            .inner
            .uncertain_backend
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = None;
        self.inner.head_uncertain.store(false, Ordering::Release);
        tracing::info!(head, "change-log head settled");
        Ok(())
    }

    /// Publishes every shard a (re-)registered worker holds again, and
    /// gives the shards it leads a new epoch (see `register_worker`).
    pub(crate) async fn republish_worker_shards(
        &self,
        worker_id: &str,
    ) -> Result<(), MetastoreError> {
        let shards = self.inner.store.shards_on_worker(worker_id).await?;
        let mut by_stream: std::collections::BTreeMap<i64, Vec<ShardRow>> =
            std::collections::BTreeMap::new();
        for shard in shards {
            by_stream.entry(shard.stream_uid).or_default().push(shard);
        }
        for (stream_uid, shards) in by_stream {
            // A stream being deleted already has (or is about to get) its
            // tombstones; republishing would bring it back to life.
            if let Some(stream) = self.inner.store.get_stream_by_uid(stream_uid).await? {
                if stream.status != StreamStatus::Deleting {
                    // Decided on the rows as they are under the lock: a
                    // same-epoch change (voters, learners) made since they
                    // were read is kept, not undone.
                    let ids: Vec<String> = shards.into_iter().map(|r| r.shard_id).collect();
                    self.publish_decided(&stream, |current| {
                        Ok(ids
                            .iter()
                            .filter_map(|id| current.get(id))
                            .filter(|row| holds_a_copy(row, worker_id))
                            .map(|row| {
                                if row.leader_worker_id == worker_id {
                                    let epoch = row.epoch + 1;
                                    (
                                        ShardRow {
                                            epoch,
                                            ..row.clone()
                                        },
                                        Change::MoveLeadership,
                                    )
                                } else {
                                    (row.clone(), Change::Republish)
                                }
                            })
                            .collect())
                    })
                    .await?;
                }
            }
        }
        Ok(())
    }
}

/// Whether `worker_id` holds a copy of the shard: of its current segment,
/// as leader or replica, or of a sealed one.
fn holds_a_copy(row: &ShardRow, worker_id: &str) -> bool {
    row.leader_worker_id == worker_id
        || row.replica_worker_ids.iter().any(|id| id == worker_id)
        || row
            .sealed_segments
            .iter()
            .any(|s| s.worker_ids.iter().any(|id| id == worker_id))
}

/// What a published change does to the shard rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Change {
    /// New shards: insert their rows.
    Place,
    /// Same rows, fresh entries (a worker's address changed).
    Republish,
    /// New leader, replicas and epoch (failover).
    MoveLeadership,
    /// The stream is gone: tombstones.
    Remove,
    /// An open shard starts being sealed (CLOSING; same epoch and placement).
    BeginClosing,
    /// A sealed shard is CLOSED with its ending offset.
    FinishClosing,
    /// An abandoned split or merge: CLOSING back to OPEN.
    Reopen,
    /// More replicas (learners), same leader, voters and epoch
    /// (`failover::repair`); decided on the current row.
    AddReplicas,
    /// Voters and replicas changed at the leader's word, same leader and
    /// epoch (`reconfigure.rs`); decided on the current row.
    Reconfigure,
    /// A CLOSING shard continues OPEN in its next segment, on other
    /// workers, at the next epoch (worker balancing).
    Relocate,
}

impl Change {
    /// Whether the change moves a shard from one state to another.
    fn changes_state(self) -> bool {
        matches!(
            self,
            Change::BeginClosing | Change::FinishClosing | Change::Reopen | Change::Relocate
        )
    }
}

/// Records `row`'s change in `batch` (as `removed` when it is gone); the
/// entry recorded.
pub(crate) async fn record_consumer(
    batch: &mut ChangeBatch,
    row: &ConsumerRow,
    removed: bool,
) -> Result<Logged, MetastoreError> {
    let entry = ConsumerEntry {
        version: batch.next_version(),
        ..consumer_entry(row, removed)
    };
    batch
        .record_consumer(row.stream_uid, &row.consumer_name, &entry.encode_to_vec())
        .await?;
    Ok(Logged::Consumer(entry))
}

/// Records each row's change in `batch` (`true`: it is gone); the entries
/// recorded, in order.
pub(crate) async fn record_consumers(
    batch: &mut ChangeBatch,
    rows: Vec<(&ConsumerRow, bool)>,
) -> Result<Vec<Logged>, MetastoreError> {
    let mut logged = Vec::new();
    for (row, removed) in rows {
        logged.push(record_consumer(batch, row, removed).await?);
    }
    Ok(logged)
}

/// `row` as the change log carries it (version 0: a snapshot's).
pub(crate) fn consumer_entry(row: &ConsumerRow, removed: bool) -> ConsumerEntry {
    ConsumerEntry {
        version: 0,
        stream_uid: row.stream_uid,
        consumer_name: row.consumer_name.clone(),
        consumer_arn: row.consumer_arn.clone(),
        status: proto::ConsumerStatus::from(row.status) as i32,
        created_at_ms: row.created_at_ms,
        removed,
    }
}

/// A worker's address ("" for one membership does not know).
fn address_of(workers: &HashMap<String, WorkerRow>, worker_id: &str) -> String {
    workers
        .get(worker_id)
        .map(|w| w.address.clone())
        .unwrap_or_default()
}

/// Builds the entry describing `shard` at `version`.
fn entry_for(
    stream: &StreamRow,
    shard: &ShardRow,
    workers: &HashMap<String, WorkerRow>,
    version: i64,
    state: proto::ShardState,
) -> ShardMapEntry {
    ShardMapEntry {
        key: Some(ShardKey {
            stream_uid: stream.stream_uid,
            shard_id: shard.shard_id.clone(),
        }),
        version,
        account_id: stream.account_id.clone(),
        stream_name: stream.stream_name.clone(),
        stream_arn: stream.stream_arn.clone(),
        stream_created_at_ms: stream.created_at_ms,
        starting_hash_key: shard.starting_hash_key.clone(),
        ending_hash_key: shard.ending_hash_key.clone(),
        state: state as i32,
        parent_shard_id: shard.parent_shard_id.clone().unwrap_or_default(),
        adjacent_parent_shard_id: shard.adjacent_parent_shard_id.clone().unwrap_or_default(),
        sequence_base: shard.sequence_base,
        leader_worker_id: shard.leader_worker_id.clone(),
        leader_address: address_of(workers, &shard.leader_worker_id),
        replica_worker_ids: shard.replica_worker_ids.clone(),
        replica_addresses: shard
            .replica_worker_ids
            .iter()
            .map(|id| address_of(workers, id))
            .collect(),
        close_generation: shard.close_generation,
        voter_ids: shard.voters.to_lists().0,
        next_voter_ids: shard.voters.to_lists().1,
        epoch: shard.epoch,
        ending_offset: shard.ending_offset.unwrap_or(0),
        segment_index: shard.segment_index,
        segment_start_offset: shard.segment_start_offset,
        sealed_segments: shard
            .sealed_segments
            .iter()
            .map(|segment| SealedSegment {
                index: segment.index,
                start_offset: segment.start_offset,
                end_offset: segment.end_offset,
                final_epoch: segment.final_epoch,
                last_arrival_ms: segment.last_arrival_ms,
                worker_ids: segment.worker_ids.clone(),
                addresses: segment
                    .worker_ids
                    .iter()
                    .map(|id| address_of(workers, id))
                    .collect(),
            })
            .collect(),
        valid_until_micros: 0,
        retention_hours: u32::try_from(stream.retention_hours).unwrap_or(24),
        max_record_size_kib: u32::try_from(stream.max_record_size_kib).unwrap_or(1024),
        shard_level_metrics: stream.shard_level_metrics.bits(),
        expired_before_ms: stream.expired_before_ms,
        auto_record_distribution: stream.auto_record_distribution,
    }
}
