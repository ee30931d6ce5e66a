//! `freshet-control-plane`: stream lifecycle (create, delete, describe,
//! list; the rpcs are in `handlers.rs`), resharding (`reshard.rs`:
//! SplitShard, MergeShards, UpdateShardCount), the scaler of on-demand
//! streams (`scaler.rs`), worker balancing (`balancer.rs`), warm throughput
//! and account settings (`capacity.rs`), limits (`limits.rs`), enhanced
//! monitoring (`monitoring.rs`), tags (`tags.rs`), enhanced fan-out
//! consumers (`consumers.rs`, `subscriptions.rs`), and identities
//! (`identities.rs`: users and access keys, their secrets sealed under the
//! master key by `sealing.rs`). `active.rs` runs it: one control plane acts
//! at a time, the others stand by.
//!
//! A stream's shards split the 128-bit hash-key space evenly; membership
//! places each on workers in distinct availability zones and publishes the
//! placement in the change log. Requests arrive already validated by the
//! frontend; every error carries its `freshet_errors::ErrorCode`, which the
//! frontend shows as that code's Kinesis exception.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use freshet_errors::ErrorCode;
use freshet_metastore::{ActiveLock, ActiveRole, MetaStore, MetastoreError, StreamRow};
use freshet_proto::v1::control_plane_server::ControlPlaneServer;
use freshet_proto::v1::identities_server::IdentitiesServer;
use freshet_proto::v1::membership_client::MembershipClient;
use freshet_proto::v1::{self as proto, *};
use freshet_server::{DatabaseUrl, MembershipAddr, StorageClients, Tasks, TracedChannel};
use freshet_types::{ShardId, StreamArn, StreamMode};
use tokio::net::TcpListener;
use tonic::Status;

mod active;
mod balancer;
mod capacity;
mod consumers;
mod distribution;
mod handlers;
pub mod identities;
mod limits;
mod metrics;
mod monitoring;
mod rate_limits;
mod reshard;
mod retention;
mod scaler;
pub mod sealing;
mod subscriptions;
mod tags;

pub use active::{run, serve, RunError, DEFAULT_METRICS_ADDR};

pub use scaler::ScalerConfig;

/// The API operation a DescribeStream call serves (the frontend answers
/// three operations from it, each with its own rate).
fn api_operation(name: &str) -> &'static str {
    match name {
        "DescribeStreamSummary" => "DescribeStreamSummary",
        "ListShards" => "ListShards",
        _ => "DescribeStream",
    }
}

/// A request that names one stream by account, region and name.
pub(crate) trait NamesStream {
    fn stream_arn(&self) -> StreamArn;
}

macro_rules! names_stream {
    ($($request:ty),* $(,)?) => {
        $(impl NamesStream for $request {
            fn stream_arn(&self) -> StreamArn {
                StreamArn::new(&self.region, &self.account_id, &self.stream_name)
            }
        })*
    };
}

names_stream!(
    freshet_proto::v1::UpdateStreamModeRequest,
    freshet_proto::v1::UpdateStreamWarmThroughputRequest,
    freshet_proto::v1::UpdateMaxRecordSizeRequest,
    freshet_proto::v1::SplitShardRequest,
    freshet_proto::v1::MergeShardsRequest,
    freshet_proto::v1::UpdateShardCountRequest,
    freshet_proto::v1::DeleteStreamRequest,
    freshet_proto::v1::DescribeStreamRequest,
);

/// Shards a new on-demand stream starts with (4 MiB/s, 4,000 records/s).
pub const ON_DEMAND_INITIAL_SHARDS: u32 = 4;
pub const DEFAULT_RETENTION_HOURS: i32 = 24;
pub const DEFAULT_MAX_RECORD_SIZE_KIB: u32 = 1024;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "freshet-control-plane", about = "Freshet control plane")]
pub struct Config {
    #[arg(
        long,
        env = "FRESHET_CONTROL_PLANE_LISTEN",
        default_value = "127.0.0.1:7054"
    )]
    pub listen: String,
    #[command(flatten)]
    pub database: DatabaseUrl,
    #[command(flatten)]
    pub membership: MembershipAddr,
    /// Open shards an account may have across its streams.
    #[arg(long, env = "FRESHET_SHARD_LIMIT", default_value_t = 1000)]
    pub shard_limit: u32,
    #[command(flatten)]
    pub scaler: ScalerConfig,
    /// Enforce Kinesis's control-plane call rates (LimitExceededException).
    #[arg(long, env = "FRESHET_API_RATE_LIMITS", default_value_t = true, action = clap::ArgAction::Set)]
    pub api_rate_limits: bool,
    /// How long a consumer stays CREATING after it registers (then
    /// ACTIVE), and DELETING after it deregisters (then gone).
    #[arg(long, env = "FRESHET_CONSUMER_TRANSITION_MS", default_value_t = 500)]
    pub consumer_transition_ms: u64,
    /// On-demand streams an account may have in a region (Kinesis's
    /// default quota: 50).
    #[arg(long, env = "FRESHET_ON_DEMAND_STREAM_LIMIT", default_value_t = 50)]
    pub on_demand_stream_limit: u32,
    /// How long one hour of a stream's retention period lasts (shorter
    /// only in tests).
    #[command(flatten)]
    pub retention: freshet_server::RetentionHour,
    #[command(flatten)]
    pub auth: freshet_server::AuthFlags,
    /// File holding the master key that seals access-key secrets (base64 of
    /// 32 bytes). Required in secure mode (or FRESHET_MASTER_KEY).
    #[arg(long, env = "FRESHET_MASTER_KEY_FILE", value_name = "PATH")]
    pub master_key_file: Option<std::path::PathBuf>,
    /// The master key itself (base64 of 32 bytes), when not in a file.
    #[arg(long, env = "FRESHET_MASTER_KEY", hide_env_values = true)]
    pub master_key: Option<String>,
    #[command(flatten)]
    pub bootstrap: identities::BootstrapKey,
    #[command(flatten)]
    pub internal: freshet_server::InternalTokenFlag,
    #[command(flatten)]
    pub observability: freshet_server::ObservabilityFlags,
    #[command(flatten)]
    pub admin: freshet_server::AdminTokenFlag,
}

/// The ControlPlane gRPC service.
#[derive(Clone)]
pub struct ControlPlaneService {
    store: MetaStore,
    membership: MembershipClient<TracedChannel>,
    shard_limit: u32,
    scaler: std::sync::Arc<ScalerConfig>,
    rate_limits: std::sync::Arc<rate_limits::ApiRateLimits>,
    /// Held while a stream's shards change shape or move, one change at a
    /// time per stream.
    stream_locks:
        std::sync::Arc<std::sync::Mutex<HashMap<i64, std::sync::Arc<tokio::sync::Mutex<()>>>>>,
    /// Clients of the storage workers (seals, load readings).
    storage: std::sync::Arc<StorageClients>,
    /// The scaler loop and the resharding steps under way.
    tasks: Tasks,
    metrics: std::sync::Arc<metrics::ControlPlaneMetrics>,
    /// Wakes the consumer loop when a consumer starts a transition.
    consumer_transitions: std::sync::Arc<tokio::sync::Notify>,
    /// How long CREATING and DELETING last.
    consumer_transition: Duration,
    /// On-demand streams an account may have in a region.
    on_demand_stream_limit: u32,
    /// One retention hour, in milliseconds (shorter only in tests).
    retention_hour_ms: i64,
    /// SubscribeToShard subscriptions across the frontends, and where
    /// each consumer has got to.
    subscription_claims: std::sync::Arc<subscriptions::SubscriptionClaims>,
}

/// A failure of the control plane's own work as a gRPC status: a
/// metastore conflict stays recognisable, the rest is internal.
fn internal(error: impl Into<anyhow::Error>) -> Status {
    let error = error.into();
    let code = error
        .downcast_ref::<MetastoreError>()
        .map_or(ErrorCode::Internal, MetastoreError::code);
    if code == ErrorCode::Internal {
        tracing::error!("control-plane request failed to {error:#}");
    }
    code.status(format!("{error:#}"))
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn not_found(stream_name: &str, account_id: &str) -> Status {
    ErrorCode::ResourceNotFound.status(format!(
        "Stream {stream_name} under account {account_id} not found."
    ))
}

/// The mode a request asks for: UNSPECIFIED is PROVISIONED, as Kinesis
/// creates a stream without StreamModeDetails.
fn requested_mode(wire: proto::StreamMode) -> StreamMode {
    StreamMode::try_from(wire).unwrap_or(StreamMode::Provisioned)
}

/// Every sequence number of a shard is `base << 64 | offset`. The stream's
/// uid in the high bits keeps incarnations apart; the shard number below it
/// makes children (always numbered after their parents) sort after them.
pub fn sequence_base(stream_uid: i64, shard: ShardId) -> u64 {
    ((stream_uid as u64) << 24) | (u64::from(shard.0) + 1)
}

impl ControlPlaneService {
    pub fn new(
        store: MetaStore,
        membership_channel: TracedChannel,
        shard_limit: u32,
        scaler: ScalerConfig,
        api_rate_limits: bool,
        token: &freshet_server::InternalToken,
    ) -> ControlPlaneService {
        ControlPlaneService {
            store,
            membership: freshet_server::membership_client(membership_channel),
            shard_limit,
            scaler: std::sync::Arc::new(scaler),
            rate_limits: std::sync::Arc::new(rate_limits::ApiRateLimits::new(api_rate_limits)),
            stream_locks: Default::default(),
            storage: std::sync::Arc::new(StorageClients::new(token)),
            tasks: Tasks::new(),
            metrics: Default::default(),
            consumer_transitions: Default::default(),
            consumer_transition: consumers::DEFAULT_TRANSITION,
            on_demand_stream_limit: limits::DEFAULT_ON_DEMAND_STREAM_LIMIT,
            retention_hour_ms: freshet_server::RetentionHour::default().millis(),
            subscription_claims: Default::default(),
        }
    }

    /// The lock held while a stream's shards are resharded or moved.
    pub(crate) fn stream_lock(&self, stream_uid: i64) -> std::sync::Arc<tokio::sync::Mutex<()>> {
        self.stream_locks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(stream_uid)
            .or_default()
            .clone()
    }

    /// The stream `request` names, or NOT_FOUND with Kinesis's message.
    async fn existing_stream(&self, request: &impl NamesStream) -> Result<StreamRow, Status> {
        let arn = request.stream_arn();
        self.store
            .get_stream(&arn)
            .await
            .map_err(internal)?
            .ok_or_else(|| not_found(&arn.stream_name, &arn.account_id))
    }

    /// Consumers registered on the stream (CREATING or ACTIVE).
    async fn registered_consumers(&self, stream: &StreamRow) -> Result<u32, Status> {
        Ok(self
            .store
            .registered_consumer_counts(&[stream.stream_uid])
            .await
            .map_err(internal)?
            .get(&stream.stream_uid)
            .copied()
            .unwrap_or(0))
    }

    /// Publishes the stream's shard-map entries again, built from its
    /// rows as they are now (a stream-wide setting they carry changed):
    /// `what` says which, if it fails.
    pub(crate) async fn republish(&self, stream_uid: i64, what: &str) -> Result<(), Status> {
        self.membership
            .clone()
            .republish_stream(RepublishStreamRequest { stream_uid })
            .await
            .map_err(|status| {
                ErrorCode::Unavailable
                    .status(format!("could not publish {what}: {}", status.message()))
            })?;
        Ok(())
    }

    fn stream_info(
        &self,
        row: &StreamRow,
        shards: Vec<ShardInfo>,
        open_shard_count: u32,
        consumer_count: u32,
        warm_throughput: Option<WarmThroughput>,
    ) -> StreamInfo {
        StreamInfo {
            stream_name: row.stream_name.clone(),
            stream_arn: row.stream_arn.clone(),
            status: proto::StreamStatus::from(row.status) as i32,
            stream_mode: proto::StreamMode::from(row.stream_mode) as i32,
            retention_hours: u32::try_from(row.retention_hours).unwrap_or(24),
            created_at_ms: row.created_at_ms,
            max_record_size_kib: u32::try_from(row.max_record_size_kib)
                .unwrap_or(DEFAULT_MAX_RECORD_SIZE_KIB),
            open_shard_count,
            consumer_count,
            shards,
            warm_throughput,
            shard_level_metrics: row.shard_level_metrics.bits(),
            expired_before_ms: row.expired_before_ms,
            auto_record_distribution: row.auto_record_distribution,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn children_sequence_bases_exceed_parents_and_streams_stay_apart() {
        assert!(sequence_base(7, ShardId(5)) > sequence_base(7, ShardId(4)));
        assert!(sequence_base(8, ShardId(0)) > sequence_base(7, ShardId(1000)));
    }
}
