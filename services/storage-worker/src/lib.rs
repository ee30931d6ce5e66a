//! `freshet-storage-worker`: durable per-shard record logs.
//!
//! A worker registers with membership (id, availability zone, address),
//! heartbeats, and follows the shard-map change log to learn which shards it
//! leads. Records live only here, in one `freshet-log` directory per shard
//! under `--data-dir`.
//!
//! Where to start reading:
//! - `service.rs` — the gRPC surface: every call's epoch and leadership are
//!   checked against this worker's own shard-map snapshot (a caller with an
//!   older epoch, or a worker that is not the leader, is refused), then
//! - `shards.rs` — the group-commit writer: appends are batched, written and
//!   fsynced together, and acknowledged only after the fsync.
//! - `freshet-log` (libs/log) — segments, checksums, torn-tail recovery,
//!   indexes, retention.
//!
//! - `replication.rs` — the leader sends each batch to the shard's replicas
//!   (in other zones) and commits it once enough copies have fsynced it;
//!   lagging replicas are caught up from the leader's log.
//!
//! Leader failover (epoch bumps, fencing of a deposed leader) is not here yet.

mod lease;
mod replication;
mod service;
mod shards;

use std::future::Future;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use freshet_log::LogConfig;
use freshet_proto::v1::membership_client::MembershipClient;
use freshet_proto::v1::storage_server::StorageServer;
use freshet_proto::v1::{HeartbeatRequest, RegisterWorkerRequest};
use freshet_server::TracedChannel;
use freshet_shardmap::SharedShardMap;
use tokio::net::TcpListener;

pub use replication::AckCopies;
pub use service::StorageService;
use shards::ShardRegistry;
pub use shards::GROUP_COMMIT_MAX_BYTES;

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
    #[arg(
        long,
        env = "FRESHET_MEMBERSHIP_ADDR",
        default_value = "127.0.0.1:7052"
    )]
    pub membership_addr: String,
    #[arg(long, env = "FRESHET_HEARTBEAT_INTERVAL", default_value = "2s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// How often expired segments are looked for.
    #[arg(long, env = "FRESHET_RETENTION_CHECK_INTERVAL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub retention_check_interval: Duration,
    /// Copies that must hold a batch before it is acknowledged.
    #[arg(
        long,
        env = "FRESHET_ACK_COPIES",
        value_enum,
        default_value = "majority"
    )]
    pub ack_copies: AckCopies,
    /// A segment is sealed at this size.
    #[arg(long, env = "FRESHET_SEGMENT_BYTES", default_value_t = 64 * 1024 * 1024)]
    pub segment_bytes: u64,
}

/// Registers with membership (retrying until it answers), then heartbeats
/// forever, registering again if membership forgot this worker.
async fn stay_registered(
    mut membership: MembershipClient<TracedChannel>,
    registration: RegisterWorkerRequest,
    interval: Duration,
    lease: Arc<lease::Lease>,
) {
    let mut must_register = true;
    loop {
        if must_register {
            match membership.register_worker(registration.clone()).await {
                // Heartbeat at once: the lease comes with heartbeats.
                Ok(_) => must_register = false,
                Err(status) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "failed to register with membership")
                }
            }
        }
        if !must_register {
            let heartbeat = HeartbeatRequest {
                worker_id: registration.worker_id.clone(),
            };
            let sent_at = tokio::time::Instant::now();
            match membership.heartbeat(heartbeat).await {
                Ok(response) => {
                    let response = response.into_inner();
                    if response.known {
                        let duration = Duration::from_micros(
                            u64::try_from(response.lease_duration_micros).unwrap_or(0),
                        );
                        lease.renew(sent_at, duration, response.lease_min_version);
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

/// Trims expired segments of every open shard.
async fn enforce_retention(map: SharedShardMap, shards: Arc<ShardRegistry>, interval: Duration) {
    loop {
        tokio::time::sleep(interval).await;
        for ((stream_uid, shard_id), shard) in shards.open_shards() {
            let Some(hours) = map.read(|m| m.get(stream_uid, &shard_id).map(|e| e.retention_hours))
            else {
                continue;
            };
            let cutoff = shards::now_ms() - i64::from(hours.max(1)) * 3_600_000;
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

/// Removes the data of shards whose stream was deleted.
async fn remove_deleted_shards(map: SharedShardMap, shards: Arc<ShardRegistry>) {
    loop {
        let changed = map.changed();
        for (key, _) in shards.open_shards() {
            if map.read(|m| m.is_deleted(key.0, &key.1)) {
                shards.remove(&key).await;
                tracing::info!(
                    stream_uid = key.0,
                    shard_id = key.1,
                    "removed deleted shard"
                );
            }
        }
        changed.await;
    }
}

/// Removes the data of shards this worker no longer holds: streams deleted
/// while it was down (a snapshot carries no tombstones), or shards failed
/// over away from it. Runs once the shard map has caught up, then every
/// `interval`.
async fn remove_orphaned_shards(
    worker_id: String,
    map: SharedShardMap,
    shards: Arc<ShardRegistry>,
    interval: Duration,
) {
    while map.read(|m| m.applied_version()) == 0 {
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        for key in shards.stored_shards().await {
            let holds = map.read(|m| {
                m.get(key.0, &key.1).is_some_and(|e| {
                    e.leader_worker_id == worker_id || e.replica_worker_ids.contains(&worker_id)
                })
            });
            if !holds {
                shards.remove(&key).await;
                tracing::info!(
                    stream_uid = key.0,
                    shard_id = key.1,
                    "removed data of a shard this worker no longer holds"
                );
            }
        }
        tokio::time::sleep(interval).await;
    }
}

/// Serves the worker on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let address = match &config.advertise {
        Some(address) => address.clone(),
        None => listener
            .local_addr()
            .context("read bound address")?
            .to_string(),
    };
    tokio::fs::create_dir_all(&config.data_dir)
        .await
        .with_context(|| format!("create data directory {}", config.data_dir.display()))?;
    let membership_channel = freshet_server::grpc_channel(&config.membership_addr)?;
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
        config.ack_copies,
        lease.clone(),
    ));
    let shards = Arc::new(ShardRegistry::new(
        config.data_dir.clone(),
        log_config,
        replication,
    ));

    let registration = RegisterWorkerRequest {
        worker_id: config.worker_id.clone(),
        availability_zone: config.availability_zone.clone(),
        address: address.clone(),
    };
    let background = [
        tokio::spawn(stay_registered(
            MembershipClient::new(membership_channel),
            registration,
            config.heartbeat_interval,
            lease.clone(),
        )),
        tokio::spawn(enforce_retention(
            map.clone(),
            shards.clone(),
            config.retention_check_interval,
        )),
        tokio::spawn(remove_deleted_shards(map.clone(), shards.clone())),
        tokio::spawn(remove_orphaned_shards(
            config.worker_id.clone(),
            map.clone(),
            shards.clone(),
            config.retention_check_interval,
        )),
    ];

    let service = StorageService {
        worker_id: config.worker_id.clone(),
        map,
        shards,
        lease,
    };
    tracing::info!(worker_id = config.worker_id, az = config.availability_zone, %address, "storage worker serving grpc");
    let router = freshet_server::grpc_server().add_service(
        StorageServer::new(service)
            .max_decoding_message_size(64 * 1024 * 1024)
            .max_encoding_message_size(64 * 1024 * 1024),
    );
    let result = freshet_server::serve_grpc(router, listener, shutdown).await;
    for task in background {
        task.abort();
    }
    result
}
