//! The Storage gRPC service: epoch and leadership checks, then the log.

use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;

use freshet_errors::ErrorCode;
use freshet_log::{AppendMark, EpochHistory, LogError, NewRecord};
use freshet_proto::v1::read_request::Start;
use freshet_proto::v1::storage_server::Storage;
use freshet_proto::v1::*;
use freshet_shardmap::SharedShardMap;
use tonic::{Request, Response, Status};

use crate::layout::SegmentKey;
use crate::lease::Lease;
use crate::load::OfferedRecord;
use crate::registry::ShardRegistry;
use crate::replication::{
    key_from_wire, mark_from_wire, wire_checksum, write_as_replica, ReplicaWrite, ReplicaWrote,
};
use crate::writer::{AppendAnswer, OpenShard};

/// How long a request waits for this worker's snapshot to learn of a
/// placement the caller already knows about.
const PLACEMENT_WAIT: Duration = Duration::from_secs(3);

/// 256 characters of up to 4 UTF-8 bytes each.
const MAX_PARTITION_KEY_BYTES: usize = 1024;

/// Largest read a single call returns.
const MAX_READ_BYTES: u64 = 10 * 1024 * 1024;

/// Records as a caller sent them, as the log stores them.
fn into_log_records(records: Vec<RecordToAppend>) -> Vec<NewRecord> {
    records
        .into_iter()
        .map(|record| NewRecord {
            ends_append: mark_from_wire(&record),
            partition_key: record.partition_key,
            data: record.data,
        })
        .collect()
}

#[derive(Clone)]
pub struct StorageService {
    pub(crate) worker_id: String,
    pub(crate) map: SharedShardMap,
    pub(crate) shards: Arc<ShardRegistry>,
    pub(crate) lease: Arc<Lease>,
    /// Cancelled as the worker starts shutting down: ends every `Follow`.
    pub(crate) follows_stop: tokio_util::sync::CancellationToken,
    /// One hour of retention, in milliseconds (shorter only in tests).
    pub(crate) retention_hour_ms: i64,
}

impl StorageService {
    /// The arrival time from which `key`'s records are served now (see
    /// `freshet_shardmap::unexpired_from`): reads start no earlier, whether
    /// or not the files holding older records have been trimmed yet.
    pub(crate) fn unexpired_from(&self, key: Option<&ShardKey>) -> i64 {
        let now_ms = crate::writer::now_ms();
        key.and_then(|key| {
            self.map.read(|map| {
                map.get(key.stream_uid, &key.shard_id).map(|entry| {
                    freshet_shardmap::unexpired_from(entry, now_ms, self.retention_hour_ms)
                })
            })
        })
        .unwrap_or(i64::MIN)
    }
}

/// What a request may do with the shard.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    /// Appends from the frontend: the leader of an open shard only.
    Write,
    /// An append sent again to resolve an unknown outcome: the leader of
    /// the shard, open or not (see `AppendRequest.resolving`).
    Resolve,
    /// Reads of the current segment (`None`: the current one, whichever it
    /// is): the leader only (replicas serve reads after failover arrives).
    /// Reads of a sealed segment: any complete copy of it.
    Read { segment: Option<u32> },
    /// Batches from the leader: a replica of the shard only.
    Replicate,
    /// Sealing a CLOSING shard: its leader, holding a lease.
    Seal,
}

impl StorageService {
    /// A freshly started worker gets its lease with its first heartbeat;
    /// wait for it briefly rather than refuse.
    async fn wait_for_lease(&self, deadline: tokio::time::Instant) -> Result<(), Status> {
        while !self.lease.is_held(&self.map) {
            if tokio::time::Instant::now() >= deadline {
                return Err(ErrorCode::NotWritten.status(format!(
                    "not leader: worker {} holds no leader lease",
                    self.worker_id
                )));
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        Ok(())
    }

    /// Checks the caller's epoch and this worker's role against this
    /// worker's own view of the shard map, waiting briefly if that view is
    /// behind the caller's, and opens the shard.
    pub(crate) async fn authorize(
        &self,
        shard: Option<&freshet_proto::v1::ShardKey>,
        epoch: u64,
        access: Access,
    ) -> Result<Arc<OpenShard>, Status> {
        let shard = shard.ok_or_else(|| ErrorCode::InvalidArgument.status("shard is required"))?;
        let deadline = tokio::time::Instant::now() + PLACEMENT_WAIT;
        let entry = loop {
            let changed = self.map.changed();
            let (entry, deleted) = self.map.read(|m| {
                (
                    m.get(shard.stream_uid, &shard.shard_id).cloned(),
                    m.is_deleted(shard.stream_uid, &shard.shard_id),
                )
            });
            if deleted {
                return Err(ErrorCode::ResourceNotFound.status(format!(
                    "shard {} of stream {} was deleted",
                    shard.shard_id, shard.stream_uid
                )));
            }
            match entry {
                Some(entry) if entry.epoch >= epoch => break entry,
                _ => {
                    if tokio::time::timeout_at(deadline, changed).await.is_err() {
                        // Refused before anything was written, so the caller
                        // may safely retry elsewhere.
                        return Err(ErrorCode::NotWritten.status(format!(
                            "shard {} of stream {} at epoch {epoch} is not (yet) known to worker {}",
                            shard.shard_id, shard.stream_uid, self.worker_id
                        )));
                    }
                }
            }
        };
        if entry.epoch > epoch {
            return Err(ErrorCode::NotWritten.status(format!(
                "stale epoch: the request carries epoch {epoch}, shard {} is at epoch {}",
                shard.shard_id, entry.epoch
            )));
        }
        if let Access::Read {
            segment: Some(segment),
        } = access
        {
            if segment < entry.segment_index {
                return self.open_sealed(&entry, segment).await;
            }
            if segment > entry.segment_index {
                return Err(ErrorCode::NotWritten.status(format!(
                    "segment {segment} of shard {} is not open (the current one is {})",
                    shard.shard_id, entry.segment_index
                )));
            }
        }
        let role_ok = match access {
            Access::Write | Access::Resolve | Access::Read { .. } | Access::Seal => {
                entry.leader_worker_id == self.worker_id
            }
            Access::Replicate => entry.replica_worker_ids.contains(&self.worker_id),
        };
        if !role_ok {
            return Err(ErrorCode::NotWritten.status(format!(
                "not leader: shard {} is led by {}",
                shard.shard_id, entry.leader_worker_id
            )));
        }
        if matches!(access, Access::Write | Access::Resolve | Access::Seal) {
            // Refused before anything is written, so the caller may retry.
            self.wait_for_lease(deadline).await?;
        }
        if access == Access::Seal && entry.state() != ShardState::Closing {
            return Err(ErrorCode::NotWritten
                .status(format!("shard {} is not being closed", shard.shard_id)));
        }
        // (A resolving append may reach a closing or closed shard: its
        // writer answers from the log, and writes nothing there.)
        if access == Access::Write && entry.state() != ShardState::Open {
            return Err(ErrorCode::NotWritten.status(format!("shard {} is closed", shard.shard_id)));
        }
        let key = SegmentKey::new(shard.stream_uid, &shard.shard_id, entry.segment_index);
        self.shards
            .get_current(&key, &entry)
            .await
            .map_err(|error| {
                ErrorCode::Internal.status(format!("open shard {}: {error}", shard.shard_id))
            })
    }

    /// This worker's copy of a sealed segment, if it holds all of it.
    async fn open_sealed(
        &self,
        entry: &ShardMapEntry,
        index: u32,
    ) -> Result<Arc<OpenShard>, Status> {
        let shard = entry
            .key
            .as_ref()
            .ok_or_else(|| ErrorCode::InvalidArgument.status("shard is required"))?;
        let key = SegmentKey::new(shard.stream_uid, &shard.shard_id, index);
        let no_copy = || {
            ErrorCode::NotWritten.status(format!(
                "worker {} holds no copy of segment {index} of shard {}",
                self.worker_id, key.shard_id
            ))
        };
        let sealed = entry
            .sealed_segments
            .iter()
            .find(|s| s.index == index)
            .filter(|s| s.worker_ids.contains(&self.worker_id))
            .ok_or_else(no_copy)?;
        let shard = self
            .shards
            .get_stored(&key, entry.sequence_base, sealed.start_offset, i64::MIN)
            .await
            .map_err(|error| {
                ErrorCode::Internal.status(format!("open shard {}: {error}", key.shard_id))
            })?
            .ok_or_else(no_copy)?;
        // A copy at the epoch the segment was sealed at holds that
        // leader's records (one content per offset per epoch); ending where
        // the segment ends, it holds all of them. A copy the seal did not
        // reach may lag or hold a tail an earlier leader never committed.
        let (last_epoch, end) = shard.log.election_position();
        if last_epoch != sealed.final_epoch || end != sealed.end_offset {
            return Err(ErrorCode::NotWritten.status(format!(
                "this copy of segment {index} of shard {} is incomplete (epoch {last_epoch}, end {end}; sealed at epoch {}, end {})",
                key.shard_id, sealed.final_epoch, sealed.end_offset
            )));
        }
        // Every record of a sealed segment was committed before the seal.
        shard.log.commit(sealed.end_offset);
        Ok(shard)
    }
}

/// What `Follow` answers with: committed records as they commit
/// (`follow.rs`).
pub(crate) type FollowStream =
    std::pin::Pin<Box<dyn tokio_stream::Stream<Item = Result<ReadResponse, Status>> + Send>>;

/// Committed records of `shard`'s log from `start` (unset: its trim
/// horizon), at most `max_records` (clamped to 1..10000) and about
/// `max_bytes` (0 or above 10 MiB: 10 MiB), read off the async threads.
///
/// Invariant (retention): no record that arrived before `unexpired_from`
/// is served — the start moves past them, so records expire exactly when
/// the stream's retention says, though files are trimmed whole and later.
pub(crate) async fn read_committed(
    shard: &OpenShard,
    start: Option<Start>,
    unexpired_from: i64,
    max_records: u32,
    max_bytes: u64,
) -> Result<ReadResponse, Status> {
    let log = shard.log.clone();
    let max_records = max_records.clamp(1, 10_000) as usize;
    let max_bytes = if max_bytes == 0 {
        MAX_READ_BYTES
    } else {
        max_bytes.min(MAX_READ_BYTES)
    };
    let (batch, next_in_log) = tokio::task::spawn_blocking(move || {
        let from = match start {
            Some(Start::AtOffset(offset)) => offset,
            // Never past the commit point: a record above it may be
            // replaced after a failover, and one that replaces it could
            // match the time too.
            Some(Start::AtTimestampMs(timestamp)) => log
                .offset_at_timestamp(timestamp)?
                .min(log.committed_offset()),
            None => log.trim_horizon(),
        };
        let next_in_log = log.committed_offset();
        let from = from.max(log.offset_at_timestamp(unexpired_from)?.min(next_in_log));
        log.read(from, max_records, max_bytes)
            .map(|batch| (batch, next_in_log))
    })
    .await
    .map_err(|e| ErrorCode::Internal.status(format!("read task failed: {e}")))?
    .map_err(|e| ErrorCode::Internal.status(e.to_string()))?;
    let millis_behind_latest = match (batch.records.last(), batch.latest_arrival_ms) {
        (Some(last), Some(latest)) if batch.next_offset < next_in_log => {
            (latest - last.arrival_ms).max(0)
        }
        _ => 0,
    };
    Ok(ReadResponse {
        records: batch
            .records
            .into_iter()
            .map(|r| StoredRecord {
                offset: r.offset,
                arrival_ms: r.arrival_ms,
                partition_key: r.partition_key,
                data: r.data,
            })
            .collect(),
        next_offset: batch.next_offset,
        millis_behind_latest,
        sequence_base: shard.sequence_base,
        committed_offset: next_in_log,
    })
}

#[tonic::async_trait]
impl Storage for StorageService {
    async fn append(
        &self,
        request: Request<AppendRequest>,
    ) -> Result<Response<AppendResponse>, Status> {
        let request = request.into_inner();
        if request.records.is_empty() {
            return Err(ErrorCode::InvalidArgument.status("an append needs at least one record"));
        }
        // Refuse what the log cannot frame before it joins a group commit,
        // where it would fail every other caller's records too.
        if let Some(record) = request
            .records
            .iter()
            .find(|r| r.partition_key.len() > MAX_PARTITION_KEY_BYTES)
        {
            return Err(ErrorCode::InvalidArgument.status(format!(
                "partition key of {} bytes exceeds {MAX_PARTITION_KEY_BYTES}",
                record.partition_key.len()
            )));
        }
        let key = request.key.as_ref().map(key_from_wire);
        if request.resolving && key.is_none() {
            return Err(ErrorCode::InvalidArgument.status("a resolving append needs its key"));
        }
        let access = if request.resolving {
            Access::Resolve
        } else {
            Access::Write
        };
        let shard = self
            .authorize(request.shard.as_ref(), request.epoch, access)
            .await?;
        let requested = request.records.len();
        // Over the shard's write limit: a prefix is written, the rest
        // refused. Not for a resolving append: its first attempt passed
        // the limit (an attempt refused whole is not resolved), and a
        // refusal now would report as not written records that were.
        let admitted = if request.resolving {
            requested
        } else {
            let admitted = shard.throttle.admit_writes(
                request
                    .records
                    .iter()
                    .map(|r| r.data.len() + r.partition_key.len()),
            );
            shard.load.record(
                request.records.iter().map(|r| OfferedRecord {
                    partition_key: &r.partition_key,
                    explicit_hash_key: &r.explicit_hash_key,
                    size: r.data.len() + r.partition_key.len(),
                }),
                requested - admitted,
            );
            admitted
        };
        if admitted == 0 {
            return Err(
                ErrorCode::ProvisionedThroughputExceeded.status("the shard's write limit is spent")
            );
        }
        let mut records: Vec<NewRecord> = request
            .records
            .into_iter()
            .take(admitted)
            .map(|r| NewRecord::new(r.partition_key, r.data))
            .collect();
        if let (Some(key), Some(last)) = (key, records.last_mut()) {
            last.ends_append = Some(AppendMark {
                key,
                records: u32::try_from(admitted).unwrap_or(u32::MAX),
            });
        }
        let answer = shard
            .append(records, request.epoch, request.resolving)
            .await
            // NotWritten (the frontend routes again and retries) or
            // MaybeWritten (the frontend resolves it with the key).
            .map_err(|error| error.append_code().status(error.to_string()))?;
        Ok(Response::new(match answer {
            AppendAnswer::Landed { appended, records } => AppendResponse {
                first_offset: appended.first_offset,
                sequence_base: shard.sequence_base,
                arrival_ms: appended.arrival_ms,
                throttled: u32::try_from(requested.saturating_sub(records as usize))
                    .unwrap_or(u32::MAX),
                absent: false,
            },
            AppendAnswer::Absent => AppendResponse {
                absent: true,
                ..AppendResponse::default()
            },
        }))
    }

    async fn read(&self, request: Request<ReadRequest>) -> Result<Response<ReadResponse>, Status> {
        let request = request.into_inner();
        let shard = self
            .authorize(
                request.shard.as_ref(),
                request.epoch,
                Access::Read {
                    segment: Some(request.segment),
                },
            )
            .await?;
        if !shard.throttle.admit_read() {
            return Err(
                ErrorCode::ProvisionedThroughputExceeded.status("the shard's read limit is spent")
            );
        }
        let response = read_committed(
            &shard,
            request.start,
            self.unexpired_from(request.shard.as_ref()),
            request.max_records,
            request.max_bytes,
        )
        .await?;
        shard.throttle.charge_read(
            response
                .records
                .iter()
                .map(|r| r.data.len() + r.partition_key.len())
                .sum(),
        );
        Ok(Response::new(response))
    }

    type FollowStream = FollowStream;

    async fn follow(
        &self,
        request: Request<FollowRequest>,
    ) -> Result<Response<Self::FollowStream>, Status> {
        self.follow_segment(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn get_shard_tail(
        &self,
        request: Request<GetShardTailRequest>,
    ) -> Result<Response<GetShardTailResponse>, Status> {
        let request = request.into_inner();
        let shard = self
            .authorize(
                request.shard.as_ref(),
                request.epoch,
                Access::Read { segment: None },
            )
            .await?;
        Ok(Response::new(GetShardTailResponse {
            next_offset: shard.log.committed_offset(),
            trim_horizon_offset: shard.log.trim_horizon(),
            sequence_base: shard.sequence_base,
        }))
    }

    async fn replicate(
        &self,
        request: Request<ReplicateRequest>,
    ) -> Result<Response<ReplicateResponse>, Status> {
        let request = request.into_inner();
        let shard = self
            .authorize(request.shard.as_ref(), request.epoch, Access::Replicate)
            .await?;
        let log = shard.log.clone();
        let checksum = wire_checksum(&request.records);
        if checksum != request.records_crc32 {
            return Err(ErrorCode::InvalidArgument.status(format!(
                "the batch's checksum is {checksum:#010x}, the leader sent {:#010x}: damaged on the way, not written",
                request.records_crc32
            )));
        }
        let records = into_log_records(request.records);
        let leader_epochs = epochs_from_wire(&request.leader_epochs)?;
        let (epoch, first_offset, arrival_ms, committed) = (
            request.epoch,
            request.first_offset,
            request.arrival_ms,
            request.leader_committed_offset,
        );
        // The log repeats the epoch check under its writer's lock: the
        // check in `authorize` above may be overtaken by a newer leader's
        // request before this one is written.
        let sent = records.len();
        let write_started = std::time::Instant::now();
        let leader_end = request.leader_next_offset;
        let replicated = tokio::task::spawn_blocking(move || {
            write_as_replica(
                &log,
                &ReplicaWrite {
                    epoch,
                    leader_epochs: &leader_epochs,
                    leader_end,
                    first_offset,
                    arrival_ms,
                    records: &records,
                    leader_committed: committed,
                },
            )
        })
        .instrument(tracing::info_span!(
            "write_fsync",
            otel.name = "storage.write_fsync",
            first_offset,
        ))
        .await;
        let write_time = write_started.elapsed();
        let ReplicaWrote { replicated, wrote } = replicated
            .map_err(|e| ErrorCode::Internal.status(format!("replicate task failed: {e}")))?
            .map_err(replica_write_status)?;
        // Probes, refusals and re-sends of records already held wrote
        // nothing to time.
        if sent > 0 && wrote {
            self.shards
                .metrics()
                .fsync_seconds
                .get_or_create(&crate::metrics::RoleLabel { role: "replica" })
                .observe(write_time.as_secs_f64());
        }
        Ok(Response::new(ReplicateResponse {
            accepted: replicated.accepted,
            next_offset: replicated.next_offset,
        }))
    }

    async fn install_snapshot(
        &self,
        request: Request<InstallSnapshotRequest>,
    ) -> Result<Response<ReplicateResponse>, Status> {
        let request = request.into_inner();
        let shard = self
            .authorize(request.shard.as_ref(), request.epoch, Access::Replicate)
            .await?;
        let leader_epochs = epochs_from_wire(&request.leader_epochs)?;
        let shard_id = request.shard.map(|s| s.shard_id).unwrap_or_default();
        let (log, epoch, start_offset) = (shard.log.clone(), request.epoch, request.start_offset);
        let restarted = tokio::task::spawn_blocking(move || {
            log.restart_at(epoch, &leader_epochs, start_offset)
        })
        .await
        .map_err(|e| ErrorCode::Internal.status(format!("restart task failed: {e}")))?
        .map_err(replica_write_status)?;
        if restarted.accepted {
            tracing::info!(
                shard_id,
                start_offset,
                "restarted this copy's log at the leader's trim horizon"
            );
        }
        Ok(Response::new(ReplicateResponse {
            accepted: restarted.accepted,
            next_offset: restarted.next_offset,
        }))
    }

    async fn seal_shard(
        &self,
        request: Request<SealShardRequest>,
    ) -> Result<Response<SealShardResponse>, Status> {
        let request = request.into_inner();
        let shard = self
            .authorize(request.shard.as_ref(), request.epoch, Access::Seal)
            .await?;
        let sealed = shard
            .seal(request.epoch)
            .await
            .map_err(|error| ErrorCode::Unavailable.status(error.to_string()))?;
        Ok(Response::new(SealShardResponse {
            ending_offset: sealed.ending_offset,
            last_arrival_ms: sealed.last_arrival_ms.unwrap_or(0),
        }))
    }

    async fn shard_loads(
        &self,
        _request: Request<ShardLoadsRequest>,
    ) -> Result<Response<ShardLoadsResponse>, Status> {
        let open: std::collections::HashMap<SegmentKey, Arc<OpenShard>> =
            self.shards.open_shards().into_iter().collect();
        // Every open shard this worker leads — opened here or not yet (a
        // shard nobody has written to is still a shard with no load).
        let led: Vec<SegmentKey> = self.map.read(|m| {
            m.entries()
                .filter(|e| e.leader_worker_id == self.worker_id && e.state() == ShardState::Open)
                .filter_map(SegmentKey::current)
                .collect()
        });
        let loads = led
            .into_iter()
            .map(|key| {
                let shard = freshet_proto::v1::ShardKey {
                    stream_uid: key.stream_uid,
                    shard_id: key.shard_id.clone(),
                };
                let Some(opened) = open.get(&key) else {
                    // Meter 0: "not opened here"; nothing offered.
                    return ShardLoad {
                        shard: Some(shard),
                        ..ShardLoad::default()
                    };
                };
                let reading = opened.load.read();
                ShardLoad {
                    shard: Some(shard),
                    meter_id: opened.load.id,
                    offered_bytes: reading.offered_bytes,
                    offered_records: reading.offered_records,
                    throttled_records: reading.throttled_records,
                    median_hash_key: reading
                        .median_hash_key
                        .map(|k| k.to_string())
                        .unwrap_or_default(),
                }
            })
            .collect();
        Ok(Response::new(ShardLoadsResponse { loads }))
    }

    async fn describe_shard(
        &self,
        request: Request<DescribeShardRequest>,
    ) -> Result<Response<DescribeShardResponse>, Status> {
        let shard = request
            .into_inner()
            .shard
            .ok_or_else(|| ErrorCode::InvalidArgument.status("shard is required"))?;
        let entry = self
            .map
            .read(|m| m.get(shard.stream_uid, &shard.shard_id).cloned())
            .ok_or_else(|| {
                ErrorCode::ResourceNotFound.status(format!(
                    "shard {} is not in this worker's shard map",
                    shard.shard_id
                ))
            })?;
        let key = SegmentKey::new(shard.stream_uid, &shard.shard_id, entry.segment_index);
        let open = self
            .shards
            .get_current(&key, &entry)
            .await
            .map_err(|error| {
                ErrorCode::Internal.status(format!("open shard {}: {error}", key.shard_id))
            })?;
        let (last_epoch, next_offset) = open.log.election_position();
        Ok(Response::new(DescribeShardResponse {
            next_offset,
            committed_offset: open.log.committed_offset(),
            last_epoch,
            epochs: crate::replication::epochs_to_wire(&open.log),
            trim_horizon_offset: open.log.trim_horizon(),
            rebuilding: open.log.rebuilding_until().is_some(),
        }))
    }
}

/// A leader's epoch history as sent on the wire; refused unless ordered.
fn epochs_from_wire(entries: &[EpochStart]) -> Result<EpochHistory, Status> {
    EpochHistory::from_entries(
        entries
            .iter()
            .map(|e| freshet_log::EpochStart {
                epoch: e.epoch,
                start_offset: e.start_offset,
            })
            .collect(),
    )
    .map_err(|error| ErrorCode::InvalidArgument.status(error.to_string()))
}

/// How a replica reports a leader's write it refused or failed.
fn replica_write_status(error: LogError) -> Status {
    match error {
        LogError::StaleEpoch { .. } => {
            ErrorCode::NotWritten.status(format!("stale epoch: {error}"))
        }
        LogError::BadEpochHistory(_) => ErrorCode::InvalidArgument.status(error.to_string()),
        LogError::Diverged { .. } => {
            tracing::error!(%error, "refused a leader's batch that disagrees with this copy");
            ErrorCode::Internal.status(error.to_string())
        }
        error => ErrorCode::Internal.status(error.to_string()),
    }
}
