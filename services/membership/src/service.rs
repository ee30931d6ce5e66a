//! The membership service's state: the metastore, the timer, the
//! broadcast of committed changes, and what failover tracks per worker.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use freshet_errors::ErrorCode;
use freshet_metastore::{
    LoggedChange, LoggedKind, MetaStore, MetastoreError, ShardRow, StreamRow, WorkerRow,
};
use freshet_proto::prost::Message as _;
use freshet_proto::v1::{ConsumerEntry, ShardMapEntry, ShardToPlace};
use freshet_timer_client::TimerClient;
use freshet_types::{ShardState, StreamStatus};
use tokio::sync::{broadcast, Mutex};
use tokio_util::sync::CancellationToken;
use tonic::Status;

use crate::config::Config;
use crate::placement;

/// The Membership gRPC service.
#[derive(Clone)]
pub struct MembershipService {
    pub(crate) inner: Arc<Inner>,
}

/// One committed change-log entry: a shard's or a consumer's.
#[derive(Debug, Clone)]
pub(crate) enum Logged {
    Shard(Box<ShardMapEntry>),
    Consumer(ConsumerEntry),
}

impl Logged {
    pub(crate) fn version(&self) -> i64 {
        match self {
            Logged::Shard(entry) => entry.version,
            Logged::Consumer(entry) => entry.version,
        }
    }

    /// A change-log row, decoded by its kind.
    pub(crate) fn decode(change: &LoggedChange) -> Result<Logged, MetastoreError> {
        let corrupt = |error: freshet_proto::prost::DecodeError| {
            MetastoreError::Corrupt(format!("change-log entry {}: {error}", change.version))
        };
        Ok(match change.kind {
            LoggedKind::Shard => Logged::Shard(Box::new(
                ShardMapEntry::decode(change.entry.as_slice()).map_err(corrupt)?,
            )),
            LoggedKind::Consumer => {
                Logged::Consumer(ConsumerEntry::decode(change.entry.as_slice()).map_err(corrupt)?)
            }
        })
    }
}

/// A change as it is broadcast: the entry, and when it committed.
#[derive(Debug, Clone)]
pub(crate) struct Committed {
    pub change: Logged,
    pub at: std::time::Instant,
}

pub(crate) struct Inner {
    pub(crate) store: MetaStore,
    pub(crate) timer: TimerClient,
    pub(crate) heartbeat_timeout: Duration,
    pub(crate) route_ttl: Duration,
    pub(crate) failover_check_interval: Duration,
    /// Committed changes, in version order.
    pub(crate) changes: broadcast::Sender<Committed>,
    pub(crate) metrics: crate::metrics::MembershipMetrics,
    /// Serialises change batches so commits and broadcasts keep one order.
    pub(crate) write_lock: Mutex<()>,
    /// Cancelled at shutdown so subscriptions end and the server can drain.
    pub(crate) closing: CancellationToken,
    /// How long a heartbeat lets a worker lead (see `failover.rs`).
    pub(crate) lease_duration: Duration,
    /// The newest change-log version committed (this is its only writer).
    pub(crate) head_version: std::sync::atomic::AtomicI64,
    /// Workers whose shards are being failed over right now: they get no
    /// lease until the move is published (see `failover.rs`).
    pub(crate) deposing: std::sync::Mutex<std::collections::HashSet<String>>,
    /// When failover last logged that a shard waits for its voters.
    pub(crate) waits_logged: std::sync::Mutex<HashMap<String, std::time::Instant>>,
    /// When each worker was last heard from, on the timer's clock.
    pub(crate) last_heard: std::sync::Mutex<crate::silences::Silences>,
    /// Set when a change-log commit's outcome is unknown (it failed, but
    /// may have committed): until the head is read back from Postgres and
    /// whatever committed is broadcast, no lease is granted — a lease
    /// carries the head its holder must have applied, and a stale head
    /// could let a deposed leader act (`publish.rs`, `settle_head`).
    pub(crate) head_uncertain: std::sync::atomic::AtomicBool,
    /// The Postgres session of that commit, ended before the head is read
    /// back (a COMMIT it has not carried out yet is then rolled back).
    pub(crate) uncertain_backend: std::sync::Mutex<Option<i32>>,
    /// Clients of the storage workers failover asks about their copies.
    pub(crate) storage: freshet_server::StorageClients,
    /// The failover loop and the subscriptions' tasks.
    pub(crate) tasks: freshet_server::Tasks,
    /// The deployment's internal token: presented on calls, required of callers.
    pub(crate) token: freshet_server::InternalToken,
}

/// A metastore failure as a gRPC status: a conflict stays recognisable
/// (ABORTED: read again and retry), the rest is internal.
pub(crate) fn store_error(error: MetastoreError) -> Status {
    let code = error.code();
    if code == ErrorCode::Internal {
        tracing::error!("membership request failed: {error}");
    }
    code.status(error.to_string())
}

impl MembershipService {
    pub fn new(
        store: MetaStore,
        timer: TimerClient,
        config: &Config,
        token: &freshet_server::InternalToken,
    ) -> MembershipService {
        let (changes, _) = broadcast::channel(4096);
        MembershipService {
            inner: Arc::new(Inner {
                store,
                timer,
                heartbeat_timeout: config.heartbeat_timeout,
                route_ttl: config.route_ttl,
                failover_check_interval: config.failover_check_interval,
                changes,
                write_lock: Mutex::new(()),
                closing: CancellationToken::new(),
                lease_duration: config.lease_duration,
                head_version: std::sync::atomic::AtomicI64::new(0),
                head_uncertain: std::sync::atomic::AtomicBool::new(false),
                uncertain_backend: std::sync::Mutex::new(None),
                last_heard: std::sync::Mutex::new(crate::silences::Silences::default()),
                waits_logged: std::sync::Mutex::new(HashMap::new()),
                deposing: std::sync::Mutex::new(std::collections::HashSet::new()),
                storage: freshet_server::StorageClients::new(token),
                token: token.clone(),
                tasks: freshet_server::Tasks::new(),
                metrics: crate::metrics::MembershipMetrics::default(),
            }),
        }
    }

    /// Stamps an entry with its validity: `route_ttl` past the earliest
    /// possible timer time; already stale if the timer is unreachable.
    pub(crate) fn stamp(&self, mut entry: ShardMapEntry) -> ShardMapEntry {
        entry.valid_until_micros = self.inner.timer.deadline_after(self.inner.route_ttl);
        entry
    }

    pub(crate) fn alive(&self, worker: &WorkerRow) -> bool {
        worker.seconds_since_heartbeat < self.inner.heartbeat_timeout.as_secs_f64()
    }

    /// The registered workers that heartbeat recently enough.
    pub(crate) async fn alive_workers(&self) -> Result<Vec<WorkerRow>, Status> {
        Ok(self
            .inner
            .store
            .list_workers()
            .await
            .map_err(store_error)?
            .into_iter()
            .filter(|w| self.alive(w))
            .collect())
    }

    /// Chooses workers for new shards (distinct zones) and builds their rows.
    pub(crate) async fn placed_rows(
        &self,
        stream: &StreamRow,
        shards: &[ShardToPlace],
    ) -> Result<Vec<ShardRow>, Status> {
        let alive = self.alive_workers().await?;
        // Rotates leaders across workers: by stream, then by the number of
        // the first shard (the low bits of its sequence base, less one).
        let first_shard_number = shards
            .first()
            .map_or(0, |s| (s.sequence_base & 0xFF_FFFF).saturating_sub(1));
        let seed = (stream.stream_uid as u64).wrapping_add(first_shard_number);
        let plan = placement::place(&alive, shards.len(), seed)
            .map_err(|reason| ErrorCode::Unavailable.status(reason.to_string()))?;
        Ok(shards
            .iter()
            .zip(plan)
            .map(|(shard, chosen)| ShardRow {
                stream_uid: stream.stream_uid,
                shard_id: shard.shard_id.clone(),
                starting_hash_key: shard.starting_hash_key.clone(),
                ending_hash_key: shard.ending_hash_key.clone(),
                parent_shard_id: Some(shard.parent_shard_id.clone()).filter(|s| !s.is_empty()),
                adjacent_parent_shard_id: Some(shard.adjacent_parent_shard_id.clone())
                    .filter(|s| !s.is_empty()),
                sequence_base: shard.sequence_base,
                ending_offset: None,
                state: ShardState::Open,
                // A new shard starts empty on every copy: all of them vote.
                voters: freshet_types::Voters::Stable(
                    std::iter::once(chosen.leader.clone())
                        .chain(chosen.replicas.iter().cloned())
                        .collect(),
                ),
                leader_worker_id: chosen.leader,
                replica_worker_ids: chosen.replicas,
                epoch: 1,
                close_generation: 0,
                segment_index: 0,
                segment_start_offset: 0,
                sealed_segments: Vec::new(),
            })
            .collect())
    }

    /// The stream, unless it is gone or being deleted.
    pub(crate) async fn live_stream(&self, stream_uid: i64) -> Result<StreamRow, Status> {
        self.inner
            .store
            .get_stream_by_uid(stream_uid)
            .await
            .map_err(store_error)?
            .filter(|s| s.status != StreamStatus::Deleting)
            .ok_or_else(|| {
                ErrorCode::ResourceNotFound.status(format!("stream {stream_uid} does not exist"))
            })
    }

    /// The stream (unless it is gone or being deleted) and its shards.
    pub(crate) async fn live_stream_and_shards(
        &self,
        stream_uid: i64,
    ) -> Result<(StreamRow, Vec<ShardRow>), Status> {
        let stream = self.live_stream(stream_uid).await?;
        let shards = self
            .inner
            .store
            .shards_of(stream_uid)
            .await
            .map_err(store_error)?;
        Ok((stream, shards))
    }
}
