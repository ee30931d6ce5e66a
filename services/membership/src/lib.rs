//! `freshet-membership`: which storage workers exist, and which of them lead
//! and replicate each shard.
//!
//! - Workers register with their availability zone and address and then
//!   heartbeat; a worker is alive while its last heartbeat is recent.
//! - The shard map is owned here. Every change (a placement, a tombstone) is
//!   written to the Postgres change log in one transaction with the shard
//!   rows it describes, and only after the commit is it broadcast to
//!   subscribers, in version order.
//! - `Subscribe` streams the log from any version: the missing changes from
//!   Postgres, then live ones; a snapshot first when the subscriber is new or
//!   too far behind.
//!
//! Every entry handed out is stamped with a validity time on the timer
//! service's clock (`route_ttl` from now); receivers must revalidate it after.

mod failover;
mod placement;

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use freshet_metastore::{EntryKey, MetaStore, SealedSegmentRow, ShardRow, StreamRow, WorkerRow};
use freshet_proto::prost::Message as _;
use freshet_proto::v1::membership_server::{Membership, MembershipServer};
use freshet_proto::v1::shard_map_event::Event;
use freshet_proto::v1::*;
use freshet_timer_client::{TimerClient, TimerClientConfig};
use tokio::net::TcpListener;
use tokio::sync::{broadcast, mpsc, Mutex};
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

/// Subscribers further behind than this many versions get a snapshot.
const SNAPSHOT_THRESHOLD: i64 = 1_000;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "freshet-membership", about = "Freshet membership service")]
pub struct Config {
    #[arg(
        long,
        env = "FRESHET_MEMBERSHIP_LISTEN",
        default_value = "127.0.0.1:7052"
    )]
    pub listen: String,
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/freshet"
    )]
    pub database_url: String,
    #[arg(long, env = "FRESHET_TIMER_ADDR", default_value = "127.0.0.1:7051")]
    pub timer_addr: String,
    /// A worker with no heartbeat for this long is considered dead.
    #[arg(long, env = "FRESHET_HEARTBEAT_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub heartbeat_timeout: Duration,
    /// How long a handed-out shard-map entry stays valid.
    #[arg(long, env = "FRESHET_ROUTE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub route_ttl: Duration,
    /// How long one heartbeat lets a worker act as a leader. Must be shorter
    /// than the heartbeat timeout: see the safety argument in `failover.rs`.
    #[arg(long, env = "FRESHET_LEASE_DURATION", default_value = "5s", value_parser = humantime::parse_duration)]
    pub lease_duration: Duration,
    /// How often dead leaders are looked for.
    #[arg(long, env = "FRESHET_FAILOVER_CHECK_INTERVAL", default_value = "500ms", value_parser = humantime::parse_duration)]
    pub failover_check_interval: Duration,
}

impl Config {
    /// Checks the settings that safety depends on.
    pub fn validate(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.lease_duration + failover::LEASE_MARGIN < self.heartbeat_timeout,
            "--lease-duration ({:?}) plus a {:?} margin must be shorter than --heartbeat-timeout ({:?})",
            self.lease_duration,
            failover::LEASE_MARGIN,
            self.heartbeat_timeout
        );
        Ok(())
    }
}

/// The Membership gRPC service.
#[derive(Clone)]
pub struct MembershipService {
    inner: Arc<Inner>,
}

struct Inner {
    store: MetaStore,
    timer: TimerClient,
    heartbeat_timeout: Duration,
    route_ttl: Duration,
    failover_check_interval: Duration,
    /// Committed changes, in version order.
    changes: broadcast::Sender<ShardMapEntry>,
    /// Serialises change batches so commits and broadcasts keep one order.
    write_lock: Mutex<()>,
    /// Cancelled at shutdown so subscriptions end and the server can drain.
    closing: CancellationToken,
    /// How long a heartbeat lets a worker lead (see `failover.rs`).
    lease_duration: Duration,
    /// The newest change-log version committed (this is its only writer).
    head_version: std::sync::atomic::AtomicI64,
    /// Workers whose shards are being failed over right now: they get no
    /// lease until the move is published (see `failover.rs`).
    deposing: std::sync::Mutex<std::collections::HashSet<String>>,
    /// Timer time (latest bound) each worker was last heard from.
    last_heard: std::sync::Mutex<HashMap<String, i64>>,
    storage: std::sync::Mutex<
        HashMap<
            String,
            freshet_proto::v1::storage_client::StorageClient<freshet_server::TracedChannel>,
        >,
    >,
}

fn internal(error: anyhow::Error) -> Status {
    tracing::error!("membership request failed to {error:#}");
    Status::internal(format!("{error:#}"))
}

impl MembershipService {
    pub fn new(store: MetaStore, timer: TimerClient, config: &Config) -> MembershipService {
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
                last_heard: std::sync::Mutex::new(HashMap::new()),
                deposing: std::sync::Mutex::new(std::collections::HashSet::new()),
                storage: std::sync::Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Stamps an entry with its validity: `route_ttl` past the earliest
    /// possible timer time; already stale if the timer is unreachable.
    fn stamp(&self, mut entry: ShardMapEntry) -> ShardMapEntry {
        entry.valid_until_micros = self.inner.timer.deadline_after(self.inner.route_ttl);
        entry
    }

    fn alive(&self, worker: &WorkerRow) -> bool {
        worker.seconds_since_heartbeat < self.inner.heartbeat_timeout.as_secs_f64()
    }

    /// The registered workers that heartbeat recently enough.
    async fn alive_workers(&self) -> Result<Vec<WorkerRow>, Status> {
        Ok(self
            .inner
            .store
            .list_workers()
            .await
            .map_err(internal)?
            .into_iter()
            .filter(|w| self.alive(w))
            .collect())
    }

    /// Chooses workers for new shards (distinct zones) and builds their rows.
    async fn placed_rows(
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
            .map_err(|reason| Status::unavailable(reason.to_string()))?;
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
                state: "OPEN".to_owned(),
                leader_worker_id: chosen.leader,
                replica_worker_ids: chosen.replicas,
                epoch: 1,
                segment_index: 0,
                segment_start_offset: 0,
                sealed_segments: Vec::new(),
            })
            .collect())
    }

    /// Publishes one step of a split or merge; ABORTED if a row changed
    /// meanwhile (a failover), so the caller may read again and retry.
    async fn publish_reshard(
        &self,
        stream: &StreamRow,
        changes: Vec<(ShardRow, Change)>,
    ) -> Result<Vec<ShardMapEntry>, Status> {
        let entries = self
            .publish_changes(stream, changes)
            .await
            .map_err(|error| Status::aborted(format!("{error:#}")))?;
        Ok(entries.into_iter().map(|e| self.stamp(e)).collect())
    }

    /// The stream, unless it is gone or being deleted.
    async fn live_stream(&self, stream_uid: i64) -> Result<StreamRow, Status> {
        self.inner
            .store
            .get_stream_by_uid(stream_uid)
            .await
            .map_err(internal)?
            .filter(|s| s.status != "DELETING")
            .ok_or_else(|| Status::not_found(format!("stream {stream_uid} does not exist")))
    }

    /// Writes shard rows and their change-log entries in one transaction,
    /// then broadcasts the entries.
    async fn publish(
        &self,
        stream: &StreamRow,
        shards: Vec<ShardRow>,
        change: Change,
    ) -> anyhow::Result<Vec<ShardMapEntry>> {
        let changes = shards.into_iter().map(|shard| (shard, change)).collect();
        self.publish_changes(stream, changes).await
    }

    /// Like [`MembershipService::publish`], with a change of its own for
    /// each row (a split closes a parent and places children in one batch).
    async fn publish_changes(
        &self,
        stream: &StreamRow,
        changes: Vec<(ShardRow, Change)>,
    ) -> anyhow::Result<Vec<ShardMapEntry>> {
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
        let removing = changes.iter().all(|(_, kind)| *kind == Change::Remove);
        let republishing = changes.iter().all(|(_, kind)| *kind == Change::Republish);
        if stream.status == "DELETING" && !removing {
            // Its tombstones are (about to be) published: nothing may
            // bring its shards back.
            anyhow::ensure!(
                republishing,
                "stream {} is being deleted",
                stream.stream_name
            );
            return Ok(Vec::new());
        }
        let current: HashMap<String, ShardRow> = self
            .inner
            .store
            .shards_of(stream.stream_uid)
            .await?
            .into_iter()
            .map(|row| (row.shard_id.clone(), row))
            .collect();
        let current_replicas: HashMap<String, Vec<String>> = current
            .iter()
            .map(|(id, row)| (id.clone(), row.replica_worker_ids.clone()))
            .collect();
        let changes: Vec<(ShardRow, Change)> = if removing {
            // Every shard, children created meanwhile included.
            current
                .into_values()
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
        let mut batch = self.inner.store.begin_changes().await?;
        let mut entries = Vec::with_capacity(shards.len());
        for (shard, kind) in shards.iter().zip(kinds.iter().copied()) {
            match kind {
                Change::Place => batch.insert_shard(shard).await?,
                Change::MoveLeadership => batch.update_placement(shard).await?,
                Change::BeginClosing => batch.begin_closing(shard).await?,
                Change::FinishClosing => batch.finish_closing(shard).await?,
                Change::Reopen => batch.reopen(shard).await?,
                Change::Relocate => batch.relocate(shard).await?,
                Change::AddReplicas => {
                    let read = current_replicas
                        .get(&shard.shard_id)
                        .cloned()
                        .unwrap_or_default();
                    batch.set_replicas(shard, &read).await?
                }
                Change::Republish | Change::Remove => {}
            }
            let tombstones = kind == Change::Remove;
            let state = match (tombstones, shard.state.as_str()) {
                (true, _) => ShardState::Deleted,
                (false, "CLOSED") => ShardState::Closed,
                (false, "CLOSING") => ShardState::Closing,
                (false, _) => ShardState::Open,
            };
            let entry = entry_for(stream, shard, &workers, batch.next_version(), state);
            let key = EntryKey {
                stream_uid: stream.stream_uid,
                shard_id: &shard.shard_id,
                account_id: &stream.account_id,
                stream_name: &stream.stream_name,
            };
            batch
                .record(&key, &entry.encode_to_vec(), tombstones)
                .await?;
            entries.push(entry);
        }
        batch.commit().await?;
        if let Some(last) = entries.last() {
            self.inner
                .head_version
                .fetch_max(last.version, std::sync::atomic::Ordering::AcqRel);
        }
        for entry in &entries {
            // No receivers is fine: nobody is subscribed yet.
            let _ = self.inner.changes.send(entry.clone());
        }
        Ok(entries)
    }
}

/// What a published change does to the shard rows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Change {
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
    /// More replicas, same leader and epoch (`failover::repair`).
    AddReplicas,
    /// A CLOSING shard continues OPEN in its next segment, on other
    /// workers, at the next epoch (worker balancing).
    Relocate,
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
    state: ShardState,
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
    }
}

fn decode_entry(bytes: &[u8]) -> Result<ShardMapEntry, Status> {
    ShardMapEntry::decode(bytes)
        .map_err(|error| Status::internal(format!("corrupt change-log entry: {error}")))
}

type EventStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<ShardMapEvent, Status>> + Send>>;

#[tonic::async_trait]
impl Membership for MembershipService {
    async fn register_worker(
        &self,
        request: Request<RegisterWorkerRequest>,
    ) -> Result<Response<RegisterWorkerResponse>, Status> {
        let request = request.into_inner();
        if request.worker_id.is_empty()
            || request.address.is_empty()
            || request.availability_zone.is_empty()
        {
            return Err(Status::invalid_argument(
                "worker_id, availability_zone and address are required",
            ));
        }
        self.inner
            .store
            .upsert_worker(
                &request.worker_id,
                &request.availability_zone,
                &request.address,
            )
            .await
            .map_err(internal)?;
        tracing::info!(
            worker_id = request.worker_id,
            az = request.availability_zone,
            address = request.address,
            "worker registered"
        );
        failover::heard_from(&self.inner, &request.worker_id);
        // A restarted worker may come back on a new address: republish its
        // shards so routes follow it — and give the shards it leads a new
        // epoch: a restarted leader has forgotten which batches it sent its
        // replicas but failed to write itself, so it must not write again
        // at an epoch whose offsets they may hold with other records (the
        // new epoch makes them drop such a tail). Done on every
        // registration, so a failed republish is repaired by the next one.
        self.republish_worker_shards(&request.worker_id)
            .await
            .map_err(internal)?;
        Ok(Response::new(RegisterWorkerResponse {}))
    }

    async fn heartbeat(
        &self,
        request: Request<HeartbeatRequest>,
    ) -> Result<Response<HeartbeatResponse>, Status> {
        let worker_id = request.into_inner().worker_id;
        let known = match self.inner.store.heartbeat(&worker_id).await {
            Ok(known) => known,
            // Postgres unreachable: nothing can fail over meanwhile (that
            // needs Postgres), so a worker heard from before keeps leading.
            Err(error) if failover::was_heard(&self.inner, &worker_id) => {
                tracing::warn!("heartbeat from {worker_id} not recorded: failed to {error:#}");
                true
            }
            Err(error) => return Err(internal(error)),
        };
        if !known {
            return Ok(Response::new(HeartbeatResponse::default()));
        }
        failover::heard_from(&self.inner, &worker_id);
        if failover::is_being_deposed(&self.inner, &worker_id) {
            // Heard, so the failover will see it alive and stand down; but
            // no lease until it has decided.
            return Ok(Response::new(HeartbeatResponse {
                known,
                ..HeartbeatResponse::default()
            }));
        }
        // Every change committed so far — a failover of this worker's shards
        // included — must reach the worker before its new lease counts.
        let lease_min_version = self
            .inner
            .head_version
            .load(std::sync::atomic::Ordering::Acquire);
        Ok(Response::new(HeartbeatResponse {
            known,
            lease_duration_micros: i64::try_from(self.inner.lease_duration.as_micros())
                .unwrap_or(i64::MAX),
            lease_min_version,
        }))
    }

    async fn list_workers(
        &self,
        _request: Request<ListWorkersRequest>,
    ) -> Result<Response<ListWorkersResponse>, Status> {
        let workers = self.inner.store.list_workers().await.map_err(internal)?;
        Ok(Response::new(ListWorkersResponse {
            workers: workers
                .iter()
                .map(|w| Worker {
                    worker_id: w.worker_id.clone(),
                    availability_zone: w.availability_zone.clone(),
                    address: w.address.clone(),
                    alive: self.alive(w),
                })
                .collect(),
        }))
    }

    async fn place_shards(
        &self,
        request: Request<PlaceShardsRequest>,
    ) -> Result<Response<PlaceShardsResponse>, Status> {
        let request = request.into_inner();
        let stream = self
            .inner
            .store
            .get_stream_by_uid(request.stream_uid)
            .await
            .map_err(internal)?
            .ok_or_else(|| {
                Status::not_found(format!("stream {} does not exist", request.stream_uid))
            })?;
        let rows = self.placed_rows(&stream, &request.shards).await?;
        let entries = self
            .publish(&stream, rows, Change::Place)
            .await
            .map_err(internal)?;
        Ok(Response::new(PlaceShardsResponse {
            entries: entries.into_iter().map(|e| self.stamp(e)).collect(),
        }))
    }

    async fn remove_stream(
        &self,
        request: Request<RemoveStreamRequest>,
    ) -> Result<Response<RemoveStreamResponse>, Status> {
        let stream_uid = request.into_inner().stream_uid;
        let Some(stream) = self
            .inner
            .store
            .get_stream_by_uid(stream_uid)
            .await
            .map_err(internal)?
        else {
            return Ok(Response::new(RemoveStreamResponse {}));
        };
        let shards = self
            .inner
            .store
            .shards_of(stream_uid)
            .await
            .map_err(internal)?;
        self.publish(&stream, shards, Change::Remove)
            .await
            .map_err(internal)?;
        Ok(Response::new(RemoveStreamResponse {}))
    }

    async fn close_shards(
        &self,
        request: Request<CloseShardsRequest>,
    ) -> Result<Response<CloseShardsResponse>, Status> {
        let request = request.into_inner();
        let stream = self.live_stream(request.stream_uid).await?;
        let rows = self
            .inner
            .store
            .shards_of(stream.stream_uid)
            .await
            .map_err(internal)?;
        let mut changes = Vec::with_capacity(request.shard_ids.len());
        for shard_id in &request.shard_ids {
            let row = rows
                .iter()
                .find(|r| &r.shard_id == shard_id)
                .ok_or_else(|| Status::not_found(format!("shard {shard_id} does not exist")))?;
            match row.state.as_str() {
                // Asked again after a lost answer: already being sealed.
                "CLOSING" => changes.push((row.clone(), Change::Republish)),
                "OPEN" => changes.push((
                    ShardRow {
                        state: "CLOSING".to_owned(),
                        ..row.clone()
                    },
                    Change::BeginClosing,
                )),
                _ => {
                    return Err(Status::failed_precondition(format!(
                        "shard {shard_id} is already closed"
                    )))
                }
            }
        }
        Ok(Response::new(CloseShardsResponse {
            entries: self.publish_reshard(&stream, changes).await?,
        }))
    }

    async fn reopen_shards(
        &self,
        request: Request<CloseShardsRequest>,
    ) -> Result<Response<CloseShardsResponse>, Status> {
        let request = request.into_inner();
        let stream = self.live_stream(request.stream_uid).await?;
        let changes: Vec<(ShardRow, Change)> = self
            .inner
            .store
            .shards_of(stream.stream_uid)
            .await
            .map_err(internal)?
            .into_iter()
            .filter(|r| r.state == "CLOSING" && request.shard_ids.contains(&r.shard_id))
            .map(|r| {
                (
                    ShardRow {
                        state: "OPEN".to_owned(),
                        ..r
                    },
                    Change::Reopen,
                )
            })
            .collect();
        Ok(Response::new(CloseShardsResponse {
            entries: self.publish_reshard(&stream, changes).await?,
        }))
    }

    async fn complete_reshard(
        &self,
        request: Request<CompleteReshardRequest>,
    ) -> Result<Response<CompleteReshardResponse>, Status> {
        let request = request.into_inner();
        let stream = self.live_stream(request.stream_uid).await?;
        let rows = self
            .inner
            .store
            .shards_of(stream.stream_uid)
            .await
            .map_err(internal)?;
        let mut changes = Vec::new();
        for sealed in &request.sealed {
            let row = rows
                .iter()
                .find(|r| r.shard_id == sealed.shard_id)
                .ok_or_else(|| {
                    Status::not_found(format!("shard {} does not exist", sealed.shard_id))
                })?;
            changes.push((
                ShardRow {
                    state: "CLOSED".to_owned(),
                    ending_offset: Some(sealed.ending_offset),
                    ..row.clone()
                },
                Change::FinishClosing,
            ));
        }
        let children = self.placed_rows(&stream, &request.children).await?;
        changes.extend(children.into_iter().map(|row| (row, Change::Place)));
        Ok(Response::new(CompleteReshardResponse {
            entries: self.publish_reshard(&stream, changes).await?,
        }))
    }

    async fn relocate_shard(
        &self,
        request: Request<RelocateShardRequest>,
    ) -> Result<Response<RelocateShardResponse>, Status> {
        let request = request.into_inner();
        let stream = self.live_stream(request.stream_uid).await?;
        let store = &self.inner.store;
        let row = store
            .shards_of(stream.stream_uid)
            .await
            .map_err(internal)?
            .into_iter()
            .find(|r| r.shard_id == request.shard_id)
            .ok_or_else(|| {
                Status::not_found(format!("shard {} does not exist", request.shard_id))
            })?;
        if row.state != "CLOSING" || row.epoch != request.epoch {
            return Err(Status::failed_precondition(format!(
                "shard {} is not being closed at epoch {}",
                row.shard_id, request.epoch
            )));
        }
        if request.ending_offset < row.segment_start_offset {
            return Err(Status::invalid_argument(format!(
                "segment {} of shard {} starts at offset {}, after the ending offset {}",
                row.segment_index, row.shard_id, row.segment_start_offset, request.ending_offset
            )));
        }
        let alive = self.alive_workers().await?;
        let leader = alive
            .iter()
            .find(|w| w.worker_id == request.leader_worker_id)
            .ok_or_else(|| {
                Status::failed_precondition(format!(
                    "worker {} is not a live storage worker",
                    request.leader_worker_id
                ))
            })?;
        let copies = store.copies_per_worker().await.map_err(internal)?;
        let placement = placement::place_next_segment(&alive, leader, &copies);
        let mut sealed_segments = row.sealed_segments.clone();
        sealed_segments.push(SealedSegmentRow {
            index: row.segment_index,
            start_offset: row.segment_start_offset,
            end_offset: request.ending_offset,
            final_epoch: row.epoch,
            last_arrival_ms: request.last_arrival_ms,
            worker_ids: std::iter::once(row.leader_worker_id.clone())
                .chain(row.replica_worker_ids.iter().cloned())
                .collect(),
        });
        let next = ShardRow {
            state: "OPEN".to_owned(),
            leader_worker_id: placement.leader,
            replica_worker_ids: placement.replicas,
            epoch: row.epoch + 1,
            segment_index: row.segment_index + 1,
            segment_start_offset: request.ending_offset,
            sealed_segments,
            ..row
        };
        let entry = self
            .publish_reshard(&stream, vec![(next, Change::Relocate)])
            .await?
            .pop();
        Ok(Response::new(RelocateShardResponse { entry }))
    }

    async fn republish_stream(
        &self,
        request: Request<RepublishStreamRequest>,
    ) -> Result<Response<RepublishStreamResponse>, Status> {
        let stream = self.live_stream(request.into_inner().stream_uid).await?;
        let shards = self
            .inner
            .store
            .shards_of(stream.stream_uid)
            .await
            .map_err(internal)?;
        self.publish(&stream, shards, Change::Republish)
            .await
            .map_err(internal)?;
        Ok(Response::new(RepublishStreamResponse {}))
    }

    type SubscribeStream = EventStream;

    async fn subscribe(
        &self,
        request: Request<SubscribeRequest>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let from_version = request.into_inner().from_version.max(0);
        // Listen before reading Postgres so nothing committed in between is
        // missed; versions already sent are skipped below.
        let mut live = self.inner.changes.subscribe();
        let (sender, receiver) = mpsc::channel::<Result<ShardMapEvent, Status>>(256);
        let service = self.clone();
        tokio::spawn(async move {
            let mut last_sent = match service.catch_up(from_version, &sender).await {
                Ok(last) => last,
                Err(status) => {
                    let _ = sender.send(Err(status)).await;
                    return;
                }
            };
            loop {
                let received = tokio::select! {
                    received = live.recv() => received,
                    () = service.inner.closing.cancelled() => return,
                    // The subscriber went away: do not wait for a change to notice.
                    () = sender.closed() => return,
                };
                match received {
                    Ok(entry) if entry.version <= last_sent => {}
                    Ok(entry) => {
                        last_sent = entry.version;
                        let event = ShardMapEvent {
                            event: Some(Event::Change(service.stamp(entry))),
                        };
                        if sender.send(Ok(event)).await.is_err() {
                            return;
                        }
                    }
                    Err(broadcast::error::RecvError::Lagged(skipped)) => {
                        // End the stream; the subscriber resubscribes from its
                        // last applied version and catches up from Postgres.
                        tracing::warn!(skipped, "subscriber lagged behind the change log");
                        return;
                    }
                    Err(broadcast::error::RecvError::Closed) => return,
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(receiver))))
    }
}

impl MembershipService {
    async fn republish_worker_shards(&self, worker_id: &str) -> anyhow::Result<()> {
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
                if stream.status != "DELETING" {
                    let changes = shards
                        .into_iter()
                        .map(|row| {
                            if row.leader_worker_id == worker_id {
                                let epoch = row.epoch + 1;
                                (ShardRow { epoch, ..row }, Change::MoveLeadership)
                            } else {
                                (row, Change::Republish)
                            }
                        })
                        .collect();
                    self.publish_changes(&stream, changes).await?;
                }
            }
        }
        Ok(())
    }

    /// Sends what a subscriber at `from_version` is missing; returns the
    /// last version sent.
    async fn catch_up(
        &self,
        from_version: i64,
        sender: &mpsc::Sender<Result<ShardMapEvent, Status>>,
    ) -> Result<i64, Status> {
        let store = &self.inner.store;
        let head = store.latest_version().await.map_err(internal)?;
        if from_version == 0 || head - from_version > SNAPSHOT_THRESHOLD || from_version > head {
            let (entries, version) = store.snapshot().await.map_err(internal)?;
            let entries = entries
                .iter()
                .map(|bytes| decode_entry(bytes).map(|e| self.stamp(e)))
                .collect::<Result<_, _>>()?;
            let event = ShardMapEvent {
                event: Some(Event::Snapshot(ShardMapSnapshot { entries, version })),
            };
            sender
                .send(Ok(event))
                .await
                .map_err(|_| Status::cancelled("subscriber left"))?;
            return Ok(version);
        }
        let mut last_sent = from_version;
        loop {
            let changes = store
                .changes_after(last_sent, 500)
                .await
                .map_err(internal)?;
            if changes.is_empty() {
                return Ok(last_sent);
            }
            for (version, bytes) in changes {
                let event = ShardMapEvent {
                    event: Some(Event::Change(self.stamp(decode_entry(&bytes)?))),
                };
                sender
                    .send(Ok(event))
                    .await
                    .map_err(|_| Status::cancelled("subscriber left"))?;
                last_sent = version;
            }
        }
    }
}

/// Serves membership on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let pool = freshet_metastore::connect_url_and_migrate(&config.database_url, 10).await?;
    let timer = TimerClient::spawn(
        freshet_server::grpc_channel(&config.timer_addr)?,
        TimerClientConfig::default(),
    );
    config.validate()?;
    serve(
        MembershipService::new(MetaStore::new(pool), timer, &config),
        listener,
        shutdown,
    )
    .await
}

/// Serves an already-built service (tests build their own).
pub async fn serve(
    service: MembershipService,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    tracing::info!(addr = %listener.local_addr()?, "membership serving grpc");
    let head = service.inner.store.latest_version().await?;
    service
        .inner
        .head_version
        .fetch_max(head, std::sync::atomic::Ordering::AcqRel);
    let failover = tokio::spawn(failover::watch_leaders(service.clone()));
    let closing = service.inner.closing.clone();
    let shutdown = async move {
        shutdown.await;
        // Subscriptions never end on their own: end them so draining can finish.
        closing.cancel();
    };
    let router = freshet_server::grpc_server().add_service(
        MembershipServer::new(service)
            .max_encoding_message_size(256 * 1024 * 1024)
            .max_decoding_message_size(16 * 1024 * 1024),
    );
    let result = freshet_server::serve_grpc(router, listener, shutdown).await;
    failover.abort();
    result
}
