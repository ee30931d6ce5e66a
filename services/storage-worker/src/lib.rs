//! `freshet-storage-worker`: durable per-shard record logs.
//!
//! A worker registers with membership (id, availability zone, address),
//! heartbeats, and follows the shard-map change log to learn which shards it
//! leads. Records live only here, in one `freshet-log` directory per shard
//! segment under `--data-dir` (`shards/<stream uid>/<shard id>/<segment>`):
//! a shard that worker balancing moved continues in a new segment on other
//! workers, and the sealed ones stay, read-only, where they were written.
//!
//! Where to start reading:
//! - `service.rs` — the gRPC surface: every call's epoch and leadership are
//!   checked against this worker's own shard-map snapshot (a caller with an
//!   older epoch, or a worker that is not the leader, is refused), then
//! - `registry.rs` — the shard segments open here (opened and recovered on
//!   first use), each with
//! - `writer/` — its group-commit writer: appends are batched, written and
//!   fsynced together, and acknowledged only after the fsync; `keys.rs`
//!   there keeps an append sent twice under one key from landing twice.
//! - `layout.rs` — where segments live on disk; `error.rs` — why a write
//!   failed, and whether that means "nothing written".
//! - `freshet-log` (libs/log) — segments, checksums, torn-tail recovery,
//!   indexes, retention.
//!
//! - `replication/` — the leader sends each batch to the shard's replicas
//!   (in other zones) and commits it once enough copies have fsynced it;
//!   lagging replicas are caught up from the leader's log, and a replica
//!   that missed an epoch change drops what the new leader never had.
//! - `follow.rs` — pushes committed records to a frontend's SubscribeToShard
//!   upstream as they commit (the commit point is a watch channel).
//! - `throttle.rs` — per-shard write and read limits (token buckets);
//!   `load.rs` — what each shard is asked to take, for the scaler.
//! - `lease.rs` — a leader commits only while its lease from membership
//!   holds (the safety argument is in `services/membership/src/failover.rs`).
//! - `disk.rs` — the data directory's id: a worker back with a replaced
//!   disk rebuilds the copies it lost before they vote or lead.

mod disk;
mod error;
mod follow;
mod layout;
mod lease;
mod load;
mod metrics;
mod registry;
mod replication;
mod service;
mod throttle;
mod writer;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use freshet_log::{LogConfig, ShardLog};
use freshet_proto::v1::membership_client::MembershipClient;
use freshet_proto::v1::storage_server::StorageServer;
use freshet_proto::v1::{HeartbeatRequest, RegisterWorkerRequest};
use freshet_server::TracedChannel;
use freshet_server::{MembershipAddr, Tasks};
use freshet_shardmap::SharedShardMap;
use tokio::net::TcpListener;
use tokio_util::task::TaskTracker;

use layout::SegmentKey;
use registry::ShardRegistry;
pub use replication::{AckCopies, AckRule};
pub use service::StorageService;
pub use throttle::ShardLimits;
pub use writer::GROUP_COMMIT_MAX_BYTES;

/// The worker's decisions, as pure functions of a shard's log and of what
/// the worker has heard: which appends a round writes and when the others
/// are answered (`writer/keys.rs`), where a closing shard can be sealed
/// (`writer/mod.rs`, `sealed_end`), a batch written again after its fsync
/// failed (`UnwrittenBatch`), which replicas count towards a commit
/// (`replication/ends.rs`) and hold the log for a report
/// (`replication/reports.rs`), what a lagging replica is sent next
/// (`replication/catch_up.rs`) and what a replica does with a batch
/// (`replication/replica.rs`). The service's tasks call them; so does the
/// deterministic simulator (`tests/sim`), which runs them under seeded
/// faults exactly as the service does.
pub mod decisions {
    pub use crate::error::WriteError;
    pub use crate::replication::{
        copies_holding_log, next_run, write_as_replica, CatchUpRun, ReplicaEnds, ReplicaWrite,
        ReplicaWrote,
    };
    pub use crate::writer::{
        sealed_end, Answer, AppendAnswer, Awaiting, Leadership, PendingAppend, Sealed, SortedRound,
        UnwrittenBatch, KEYS_NEEDED_FOR_MS,
    };
}

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "freshet-storage-worker", about = "Freshet storage worker")]
pub struct Config {
    #[arg(long, env = "FRESHET_WORKER_LISTEN", default_value = "127.0.0.1:7061")]
    pub listen: String,
    /// Address other services reach this worker at (default: the bound one).
    #[arg(long, env = "FRESHET_WORKER_ADVERTISE")]
    pub advertise: Option<String>,
    #[arg(long, env = "FRESHET_WORKER_ID")]
    pub worker_id: String,
    #[arg(long, env = "FRESHET_WORKER_AZ")]
    pub availability_zone: String,
    #[arg(long, env = "FRESHET_WORKER_DATA_DIR")]
    pub data_dir: PathBuf,
    #[command(flatten)]
    pub membership: MembershipAddr,
    #[arg(long, env = "FRESHET_HEARTBEAT_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// How often expired segments are looked for.
    #[arg(long, env = "FRESHET_RETENTION_CHECK_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub retention_check_interval: Duration,
    /// How long one hour of a stream's retention period lasts. Only tests
    /// and demos shorten it, to watch retention (and replicas catching up
    /// from a trimmed log) without waiting a day.
    #[command(flatten)]
    pub retention: freshet_server::RetentionHour,
    /// Copies that must hold a batch before it is acknowledged.
    #[arg(
        long,
        env = "FRESHET_ACK_COPIES",
        value_enum,
        default_value = "majority"
    )]
    pub ack_copies: AckCopies,
    /// Voting copies, the leader's included, that must hold every acknowledged
    /// batch whatever the shard's placement: with the default 2, a shard
    /// whose replicas are all gone refuses writes instead of acknowledging
    /// them on one disk. Set 1 only for a single-worker setup.
    #[arg(long, env = "FRESHET_MIN_ACK_COPIES", default_value_t = 2)]
    pub min_ack_copies: usize,
    /// Per-shard write limit in bytes per second (0: none); Kinesis's 1 MiB.
    #[arg(long, env = "FRESHET_SHARD_WRITE_BYTES_PER_SEC", default_value_t = ShardLimits::KINESIS.write_bytes)]
    pub shard_write_bytes_per_sec: u64,
    /// Per-shard write limit in records per second (0: none); Kinesis's 1,000.
    #[arg(long, env = "FRESHET_SHARD_WRITE_RECORDS_PER_SEC", default_value_t = ShardLimits::KINESIS.write_records)]
    pub shard_write_records_per_sec: u64,
    /// Per-shard read limit in bytes per second (0: none); Kinesis's 2 MiB.
    #[arg(long, env = "FRESHET_SHARD_READ_BYTES_PER_SEC", default_value_t = ShardLimits::KINESIS.read_bytes)]
    pub shard_read_bytes_per_sec: u64,
    /// Per-shard GetRecords calls per second (0: none); Kinesis's 5.
    #[arg(long, env = "FRESHET_SHARD_READ_CALLS_PER_SEC", default_value_t = ShardLimits::KINESIS.read_calls)]
    pub shard_read_calls_per_sec: u64,
    /// A segment is sealed at this size.
    #[arg(long, env = "FRESHET_SEGMENT_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub segment_bytes: u64,
    #[command(flatten)]
    pub internal: freshet_server::InternalTokenFlag,
    #[command(flatten)]
    pub observability: freshet_server::ObservabilityFlags,
    #[command(flatten)]
    pub auth: freshet_server::AuthFlags,
}

/// Registers with membership (retrying until it answers), then heartbeats
/// forever, registering again if membership forgot this worker.
async fn stay_registered(
    mut membership: MembershipClient<TracedChannel>,
    mut registration: RegisterWorkerRequest,
    interval: Duration,
    lease: Arc<lease::Lease>,
    metrics: Arc<metrics::WorkerMetrics>,
    mut disk: Disk,
) {
    let mut must_register = true;
    loop {
        if must_register {
            match membership.register_worker(registration.clone()).await {
                // Heartbeat at once: the lease comes with heartbeats.
                Ok(answer) => match disk.confirm(answer.into_inner().lost_copies).await {
                    // A new disk id is durable now: registering again
                    // with it confirmed makes membership remember it.
                    Ok(()) if !registration.disk_confirmed => {
                        registration.disk_confirmed = true;
                        continue;
                    }
                    // Membership has this disk's id and every lost copy
                    // is marked: logs may be created again.
                    Ok(()) => {
                        disk.shards.set_unconfirmed_disk(false);
                        must_register = false;
                    }
                    Err(error) => {
                        tracing::warn!(%error, "cannot mark the copies lost with the old disk; registering again")
                    }
                },
                Err(status) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "failed to register with membership")
                }
            }
        }
        if !must_register {
            let heartbeat = HeartbeatRequest {
                worker_id: registration.worker_id.clone(),
            };
            let sent_at = lease::SentAt::now();
            match membership.heartbeat(heartbeat).await {
                Ok(response) => {
                    let response = response.into_inner();
                    if response.known {
                        let duration = Duration::from_micros(
                            u64::try_from(response.lease_duration_micros).unwrap_or(0),
                        );
                        lease.renew(sent_at, duration, response.lease_min_version);
                        metrics.lease_renewals.inc();
                    } else {
                        lease.revoke();
                        must_register = true;
                    }
                }
                Err(status) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "heartbeat failed")
                }
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// The data directory's identity and what must happen once membership
/// has answered a registration with it (`disk.rs`).
struct Disk {
    identity: disk::DiskIdentity,
    data_dir: PathBuf,
    shards: Arc<ShardRegistry>,
}

impl Disk {
    /// Marks the copies lost with a replaced disk to be rebuilt, then makes
    /// a new directory's id durable.
    async fn confirm(
        &mut self,
        lost_copies: Vec<freshet_proto::v1::LostCopy>,
    ) -> Result<(), String> {
        if !lost_copies.is_empty() {
            tracing::warn!(
                lost = lost_copies.len(),
                "this worker's disk was replaced: its copies are rebuilt from their peers before they vote or lead"
            );
        }
        for lost in lost_copies {
            let Some(shard) = lost.shard else { continue };
            let key = SegmentKey::new(shard.stream_uid, &shard.shard_id, lost.segment);
            self.shards
                .mark_lost(&key)
                .await
                .map_err(|error| format!("{}: {error}", shard.shard_id))?;
        }
        if self.identity.fresh {
            let (mut identity, data_dir) = (self.identity.clone(), self.data_dir.clone());
            self.identity = tokio::task::spawn_blocking(move || {
                identity.make_durable(&data_dir).map(|()| identity)
            })
            .await
            .map_err(|error| error.to_string())?
            .map_err(|error| format!("write the disk id: {error}"))?;
        }
        Ok(())
    }
}

/// Trims expired records of every shard segment stored here — open, or
/// sealed and kept for reads since the shard moved on.
async fn enforce_retention(
    map: SharedShardMap,
    shards: Arc<ShardRegistry>,
    interval: Duration,
    retention: freshet_server::RetentionHour,
) {
    let hour_ms = retention.millis();
    loop {
        tokio::time::sleep(interval).await;
        for key in shards.stored_shards().await {
            let (stream_uid, shard_id) = (key.stream_uid, key.shard_id.clone());
            let now_ms = writer::now_ms();
            let Some((cutoff, sequence_base, start, floor)) = map.read(|m| {
                m.get(stream_uid, &shard_id).and_then(|e| {
                    let floor = if key.segment == e.segment_index {
                        layout::arrival_floor(e)
                    } else {
                        i64::MIN
                    };
                    let cutoff = freshet_shardmap::unexpired_from(e, now_ms, hour_ms);
                    layout::segment_start(e, key.segment)
                        .map(|start| (cutoff, e.sequence_base, start, floor))
                })
            }) else {
                continue;
            };
            if sealed_segment_expired(&map, &key, cutoff - EXPIRED_SEGMENT_GRACE_MS) {
                shards.remove(&key).await;
                tracing::info!(
                    stream_uid,
                    shard_id,
                    segment = key.segment,
                    "removed an expired sealed segment"
                );
                continue;
            }
            let Ok(Some(shard)) = shards.get_stored(&key, sequence_base, start, floor).await else {
                continue;
            };
            let log = shard.log.clone();
            match tokio::task::spawn_blocking(move || log.trim_older_than(cutoff)).await {
                Ok(Ok(0)) => {}
                Ok(Ok(removed)) => {
                    tracing::info!(stream_uid, shard_id, removed, "trimmed expired segments")
                }
                Ok(Err(error)) => {
                    tracing::warn!(%error, stream_uid, shard_id, "retention trim failed")
                }
                Err(error) => tracing::warn!(%error, "retention task failed"),
            }
        }
    }
}

/// How long after its records expire a sealed segment's copy is removed:
/// readers skip it from the moment they expire (by the timer's clock), so a
/// copy outlives that by a margin for clock differences.
const EXPIRED_SEGMENT_GRACE_MS: i64 = 3_600_000;

/// Whether `key` is a sealed segment of its shard whose newest record
/// arrived before `cutoff_ms` (none of its records is served any more).
fn sealed_segment_expired(map: &SharedShardMap, key: &SegmentKey, cutoff_ms: i64) -> bool {
    map.read(|m| {
        m.get(key.stream_uid, &key.shard_id).is_some_and(|entry| {
            entry.sealed_segments.iter().any(|s| {
                s.index == key.segment && s.last_arrival_ms > 0 && s.last_arrival_ms < cutoff_ms
            })
        })
    })
}

/// Removes the data of shards whose stream was deleted.
async fn remove_deleted_shards(map: SharedShardMap, shards: Arc<ShardRegistry>) {
    loop {
        let changed = map.changed();
        for (key, _) in shards.open_shards() {
            if map.read(|m| m.is_deleted(key.stream_uid, &key.shard_id)) {
                shards.remove(&key).await;
                tracing::info!(
                    stream_uid = key.stream_uid,
                    shard_id = key.shard_id,
                    segment = key.segment,
                    "removed deleted shard"
                );
            }
        }
        changed.await;
    }
}

/// How long a shard's data outlives its placement on this worker.
const ORPHAN_GRACE: Duration = Duration::from_secs(5);

/// Removes the data of shards this worker no longer holds: streams deleted
/// while it was down (a snapshot carries no tombstones), or shards failed
/// over away from it. Runs once the shard map has caught up.
async fn remove_orphaned_shards(
    worker_id: String,
    map: SharedShardMap,
    shards: Arc<ShardRegistry>,
) {
    while map.read(|m| m.applied_version()) == 0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // A shard is removed only when two scans, `ORPHAN_GRACE` apart, both
    // find it unplaced here — not leader, replica or voter — in a map that
    // membership's change log built, in commit order: what membership
    // committed confirms the copy is no longer needed. A placement briefly
    // missing from a snapshot (or a move that is rolled back) does not cost
    // a copy.
    let mut unplaced_last_scan = std::collections::HashSet::new();
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let mut unplaced = std::collections::HashSet::new();
        for key in shards.stored_shards().await {
            let holds = map.read(|m| {
                m.get(key.stream_uid, &key.shard_id)
                    .is_some_and(|e| places_segment_here(e, key.segment, &worker_id))
            });
            if holds {
                continue;
            }
            if unplaced_last_scan.contains(&key) {
                shards.remove(&key).await;
                tracing::info!(
                    stream_uid = key.stream_uid,
                    shard_id = key.shard_id,
                    segment = key.segment,
                    "removed data of a shard this worker no longer holds"
                );
            } else {
                unplaced.insert(key);
            }
        }
        unplaced_last_scan = unplaced;
        tokio::time::sleep(ORPHAN_GRACE).await;
    }
}

/// Whether `entry` places segment `segment` of its shard on `worker_id`:
/// the current segment as leader or replica, or a sealed one it holds.
fn places_segment_here(
    entry: &freshet_proto::v1::ShardMapEntry,
    segment: u32,
    worker_id: &str,
) -> bool {
    if segment == entry.segment_index {
        // A voter is always placed; counted on its own as well, so a copy
        // that still has a vote is never removed whatever the lists say.
        return entry.leader_worker_id == worker_id
            || entry.replica_worker_ids.iter().any(|id| id == worker_id)
            || freshet_shardmap::voters_of(entry).contains(worker_id);
    }
    entry
        .sealed_segments
        .iter()
        .any(|s| s.index == segment && s.worker_ids.iter().any(|id| id == worker_id))
}

/// How often each open shard's commit point is checkpointed to disk.
const COMMIT_CHECKPOINT_INTERVAL: Duration = Duration::from_secs(1);

/// Checkpoints every open shard's commit point now and then (see
/// `freshet-log`: after a restart, reads resume from the checkpoint).
async fn checkpoint_commit_points(shards: Arc<ShardRegistry>) {
    loop {
        tokio::time::sleep(COMMIT_CHECKPOINT_INTERVAL).await;
        checkpoint_all(&shards).await;
    }
}

async fn checkpoint_all(shards: &ShardRegistry) {
    let logs: Vec<(SegmentKey, Arc<ShardLog>)> = shards
        .open_shards()
        .into_iter()
        .map(|(key, shard)| (key, shard.log.clone()))
        .collect();
    checkpoint_logs(&logs).await;
}

async fn checkpoint_logs(logs: &[(SegmentKey, Arc<ShardLog>)]) {
    for (key, log) in logs {
        let log = log.clone();
        let result = tokio::task::spawn_blocking(move || log.persist_commit_point()).await;
        match result {
            Ok(Ok(_)) => {}
            Ok(Err(error)) => {
                tracing::warn!(stream_uid = key.stream_uid, shard_id = key.shard_id, %error, "failed to checkpoint commit point")
            }
            Err(error) => tracing::warn!(%error, "commit checkpoint task failed"),
        }
    }
}

/// Where a storage worker serves its metrics unless told otherwise.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9160";

/// Why the worker could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Token(#[from] freshet_server::BadInternalToken),
    /// The listener's own address could not be read.
    #[error("read the bound address: {0}")]
    Address(#[source] std::io::Error),
    #[error("create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("move shard logs into their segment directories: {0}")]
    LayoutUpgrade(#[source] std::io::Error),
    #[error("layout upgrade task failed: {0}")]
    LayoutTask(#[source] tokio::task::JoinError),
    #[error(transparent)]
    BadAddress(#[from] freshet_server::BadAddress),
    #[error(transparent)]
    Serve(#[from] freshet_server::ServeError),
    #[error(transparent)]
    Metrics(std::io::Error),
    #[error("read the data directory's disk id: {0}")]
    DiskIdentity(#[source] std::io::Error),
}

/// Serves the worker on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let address = match &config.advertise {
        Some(address) => address.clone(),
        None => listener
            .local_addr()
            .map_err(RunError::Address)?
            .to_string(),
    };
    tokio::fs::create_dir_all(&config.data_dir)
        .await
        .map_err(|source| RunError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
    let token = config.internal.token_for(config.auth.mode)?;
    let metrics = freshet_server::Metrics::bind(&config.observability, DEFAULT_METRICS_ADDR)
        .await
        .map_err(RunError::Metrics)?;
    let worker_metrics = Arc::new(metrics::WorkerMetrics::register(metrics.registry()));
    let membership_channel = freshet_server::grpc_channel(&config.membership.addr, &token)?;
    let map = SharedShardMap::default();
    let _subscription =
        freshet_shardmap::follow_change_log(membership_channel.clone(), map.clone(), None);
    let log_config = LogConfig {
        segment_max_bytes: config.segment_bytes,
        ..LogConfig::default()
    };
    let lease = Arc::new(lease::Lease::default());
    let replication = Arc::new(replication::ReplicationContext::new(
        config.worker_id.clone(),
        map.clone(),
        replication::AckRule {
            copies: config.ack_copies,
            min_voters: config.min_ack_copies,
        },
        lease.clone(),
        &token,
        worker_metrics.clone(),
        freshet_server::membership_client(membership_channel.clone()),
    ));
    let limits = ShardLimits {
        write_bytes: config.shard_write_bytes_per_sec,
        write_records: config.shard_write_records_per_sec,
        read_bytes: config.shard_read_bytes_per_sec,
        read_calls: config.shard_read_calls_per_sec,
    };
    let data_dir = config.data_dir.clone();
    tokio::task::spawn_blocking(move || layout::move_unsegmented_logs(&data_dir))
        .await
        .map_err(RunError::LayoutTask)?
        .map_err(RunError::LayoutUpgrade)?;
    // The shards' writer tasks, and the loops that look after the shards.
    let writers = TaskTracker::new();
    let background = Tasks::new();
    let shards = Arc::new(ShardRegistry::new(
        config.data_dir.clone(),
        log_config,
        replication,
        limits,
        writers.clone(),
    ));

    let data_dir = config.data_dir.clone();
    let identity = tokio::task::spawn_blocking(move || disk::DiskIdentity::load_or_make(&data_dir))
        .await
        .map_err(|error| RunError::DiskIdentity(std::io::Error::other(error)))?
        .map_err(RunError::DiskIdentity)?;
    // Until membership has answered a registration with this disk's id
    // confirmed, no log is created: one that a replaced disk lost must be
    // marked before anything could open it empty (`disk.rs`).
    shards.set_unconfirmed_disk(true);
    let registration = RegisterWorkerRequest {
        worker_id: config.worker_id.clone(),
        availability_zone: config.availability_zone.clone(),
        address: address.clone(),
        disk_id: identity.id.clone(),
        disk_confirmed: !identity.fresh,
    };
    background.spawn_loop(stay_registered(
        freshet_server::membership_client(membership_channel),
        registration,
        config.heartbeat_interval,
        lease.clone(),
        worker_metrics.clone(),
        Disk {
            identity,
            data_dir: config.data_dir.clone(),
            shards: shards.clone(),
        },
    ));
    background.spawn_loop(enforce_retention(
        map.clone(),
        shards.clone(),
        config.retention_check_interval,
        config.retention,
    ));
    background.spawn_loop(remove_deleted_shards(map.clone(), shards.clone()));
    background.spawn_loop(checkpoint_commit_points(shards.clone()));
    background.spawn_loop(remove_orphaned_shards(
        config.worker_id.clone(),
        map.clone(),
        shards.clone(),
    ));

    // Follow streams never end on their own: they end as shutdown begins,
    // so the drain below waits for none of them.
    let follows_stop = tokio_util::sync::CancellationToken::new();
    let shutdown = {
        let follows_stop = follows_stop.clone();
        async move {
            shutdown.await;
            follows_stop.cancel();
        }
    };
    let service = StorageService {
        worker_id: config.worker_id.clone(),
        map,
        shards: shards.clone(),
        lease,
        follows_stop,
        retention_hour_ms: config.retention.millis(),
    };
    tracing::info!(worker_id = config.worker_id, az = config.availability_zone, %address, "storage worker serving grpc");
    let router = freshet_server::grpc_server(&token, &metrics).add_service(
        StorageServer::new(service)
            .max_decoding_message_size(freshet_server::STORAGE_MESSAGE_LIMIT)
            .max_encoding_message_size(freshet_server::STORAGE_MESSAGE_LIMIT),
    );
    // Stop accepting, then drain the requests in flight: every append they
    // carry is answered (or, past the drain deadline, cut as a crash would).
    let served =
        freshet_server::serve_grpc(router, "freshet.v1.Storage", listener, metrics, shutdown).await;
    // No new work: stop the loops, then close the shards, which ends each
    // writer task once it has finished the batch it holds.
    background.stop(freshet_server::TASK_STOP_DEADLINE).await;
    let logs = shards.close_all();
    writers.close();
    if tokio::time::timeout(freshet_server::TASK_STOP_DEADLINE, writers.wait())
        .await
        .is_err()
    {
        tracing::warn!(left = writers.len(), "shard writers did not finish in time");
    }
    // A clean stop leaves every commit point on disk, so reads resume at once.
    checkpoint_logs(&logs).await;
    Ok(served?)
}

#[cfg(test)]
mod tests {
    use super::places_segment_here;
    use freshet_proto::v1::{SealedSegment, ShardMapEntry};

    fn entry() -> ShardMapEntry {
        ShardMapEntry {
            leader_worker_id: "b".to_owned(),
            replica_worker_ids: vec!["c".to_owned()],
            segment_index: 1,
            sealed_segments: vec![SealedSegment {
                index: 0,
                worker_ids: vec!["a".to_owned(), "b".to_owned(), "c".to_owned()],
                ..SealedSegment::default()
            }],
            ..ShardMapEntry::default()
        }
    }

    #[test]
    fn a_copy_is_kept_while_it_is_placed_or_still_has_a_vote() {
        let mut entry = entry();
        assert!(places_segment_here(&entry, 1, "b"), "the leader");
        assert!(places_segment_here(&entry, 1, "c"), "a replica");
        assert!(places_segment_here(&entry, 0, "a"), "a sealed copy");
        assert!(!places_segment_here(&entry, 1, "a"), "no longer placed");
        // A deposed leader that still votes (a joint configuration) keeps
        // its copy even if no list places it.
        entry.voter_ids = vec!["a".to_owned(), "b".to_owned(), "c".to_owned()];
        entry.next_voter_ids = vec!["b".to_owned(), "c".to_owned()];
        assert!(places_segment_here(&entry, 1, "a"));
    }
}
