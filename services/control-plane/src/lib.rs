//! `freshet-control-plane`: stream lifecycle (create, delete, describe,
//! list), resharding (`reshard.rs`: SplitShard, MergeShards,
//! UpdateShardCount), the scaler of on-demand streams (`scaler.rs`), worker
//! balancing (`balancer.rs`), warm throughput and account settings
//! (`capacity.rs`), enhanced fan-out consumers (`consumers.rs`), and identities (`identities.rs`: users and access keys,
//! their secrets sealed under the master key by `sealing.rs`). `active.rs`
//! runs it: one control plane acts at a time, the others stand by.
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
use freshet_metastore::{
    ActiveLock, ActiveRole, MetaStore, MetastoreError, NewStream, NewStreamOutcome, StreamRow,
};
use freshet_proto::v1::control_plane_server::{ControlPlane, ControlPlaneServer};
use freshet_proto::v1::identities_server::IdentitiesServer;
use freshet_proto::v1::membership_client::MembershipClient;
use freshet_proto::v1::{self as proto, *};
use freshet_server::{DatabaseUrl, MembershipAddr, StorageClients, Tasks, TracedChannel};
use freshet_types::{
    HashKeyRange, SequenceNumber, ShardId, ShardState, StreamArn, StreamMode, StreamStatus,
};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

mod active;
mod balancer;
mod capacity;
mod consumers;
pub mod identities;
mod limits;
mod metrics;
mod monitoring;
mod rate_limits;
mod reshard;
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
        }
    }
}

#[tonic::async_trait]
impl ControlPlane for ControlPlaneService {
    async fn register_stream_consumer(
        &self,
        request: Request<RegisterStreamConsumerRequest>,
    ) -> Result<Response<ConsumerInfo>, Status> {
        self.register_consumer_checked(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn describe_stream_consumer(
        &self,
        request: Request<ConsumerSelector>,
    ) -> Result<Response<ConsumerInfo>, Status> {
        self.describe_consumer_checked(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn list_stream_consumers(
        &self,
        request: Request<ListStreamConsumersRequest>,
    ) -> Result<Response<ListStreamConsumersResponse>, Status> {
        self.list_consumers_checked(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn deregister_stream_consumer(
        &self,
        request: Request<ConsumerSelector>,
    ) -> Result<Response<ConsumerInfo>, Status> {
        self.deregister_consumer_checked(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn claim_subscription(
        &self,
        request: Request<ClaimSubscriptionRequest>,
    ) -> Result<Response<ClaimSubscriptionResponse>, Status> {
        let request = request.into_inner();
        let key = request
            .key
            .ok_or_else(|| ErrorCode::InvalidArgument.status("a claim names its subscription"))?;
        let outcome = self.subscription_claims.claim(
            &key,
            &request.holder,
            &request.ended_holder,
            tokio::time::Instant::now(),
        );
        Ok(Response::new(ClaimSubscriptionResponse {
            outcome: outcome as i32,
        }))
    }

    async fn report_subscriptions(
        &self,
        request: Request<ReportSubscriptionsRequest>,
    ) -> Result<Response<ReportSubscriptionsResponse>, Status> {
        Ok(Response::new(
            self.report_subscriptions_impl(request.into_inner()).await,
        ))
    }

    async fn consumer_lag(
        &self,
        request: Request<ConsumerLagRequest>,
    ) -> Result<Response<ConsumerLagResponse>, Status> {
        self.consumer_lag_impl(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn describe_limits(
        &self,
        request: Request<DescribeLimitsRequest>,
    ) -> Result<Response<DescribeLimitsResponse>, Status> {
        self.describe_limits_checked(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn update_shard_level_metrics(
        &self,
        request: Request<UpdateShardLevelMetricsRequest>,
    ) -> Result<Response<UpdateShardLevelMetricsResponse>, Status> {
        self.update_shard_level_metrics_checked(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn tag_resource(
        &self,
        request: Request<TagResourceRequest>,
    ) -> Result<Response<TagResourceResponse>, Status> {
        self.tag_resource_checked(request.into_inner()).await?;
        Ok(Response::new(TagResourceResponse {}))
    }

    async fn untag_resource(
        &self,
        request: Request<UntagResourceRequest>,
    ) -> Result<Response<UntagResourceResponse>, Status> {
        self.untag_resource_checked(request.into_inner()).await?;
        Ok(Response::new(UntagResourceResponse {}))
    }

    async fn list_tags(
        &self,
        request: Request<ListTagsRequest>,
    ) -> Result<Response<ListTagsResponse>, Status> {
        self.list_tags_checked(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn put_resource_policy(
        &self,
        request: Request<PutResourcePolicyRequest>,
    ) -> Result<Response<PutResourcePolicyResponse>, Status> {
        let request = request.into_inner();
        let account: freshet_types::AccountId =
            request
                .account_id
                .parse()
                .map_err(|e: freshet_types::identity::BadAccountId| {
                    ErrorCode::InvalidArgument.status(e.to_string())
                })?;
        self.store
            .put_resource_policy(&request.resource_arn, &account, &request.document)
            .await
            .map_err(internal)?;
        tracing::info!(resource = request.resource_arn, "resource policy set");
        Ok(Response::new(PutResourcePolicyResponse {}))
    }

    async fn get_resource_policy(
        &self,
        request: Request<GetResourcePolicyRequest>,
    ) -> Result<Response<GetResourcePolicyResponse>, Status> {
        let document = self
            .store
            .resource_policy(&request.into_inner().resource_arn)
            .await
            .map_err(internal)?;
        Ok(Response::new(GetResourcePolicyResponse {
            found: document.is_some(),
            document: document.unwrap_or_default(),
        }))
    }

    async fn delete_resource_policy(
        &self,
        request: Request<DeleteResourcePolicyRequest>,
    ) -> Result<Response<DeleteResourcePolicyResponse>, Status> {
        let arn = request.into_inner().resource_arn;
        if !self
            .store
            .delete_resource_policy(&arn)
            .await
            .map_err(internal)?
        {
            return Err(ErrorCode::ResourceNotFound
                .status(format!("No resource policy found for resource ARN {arn}.")));
        }
        tracing::info!(resource = arn, "resource policy removed");
        Ok(Response::new(DeleteResourcePolicyResponse {}))
    }

    async fn create_stream(
        &self,
        request: Request<CreateStreamRequest>,
    ) -> Result<Response<CreateStreamResponse>, Status> {
        let request = request.into_inner();
        self.rate_limits
            .check("CreateStream", &request.account_id, &request.stream_name)?;
        let mode = requested_mode(request.stream_mode());
        let warm = self
            .check_warm_throughput(&request.account_id, mode, request.warm_throughput_mibps)
            .await?;
        let shard_count = match (mode, request.shard_count) {
            (StreamMode::OnDemand, 0) => warm.map_or(ON_DEMAND_INITIAL_SHARDS, |mibps| {
                self.scaler
                    .shards_for_mibps(mibps)
                    .max(ON_DEMAND_INITIAL_SHARDS)
            }),
            (_, 0) => {
                return Err(ErrorCode::InvalidArgument
                    .status("ShardCount is required for a PROVISIONED stream"))
            }
            (_, count) => count,
        };
        let arn = StreamArn::new(&request.region, &request.account_id, &request.stream_name);
        let max_record_size_kib = if request.max_record_size_kib == 0 {
            DEFAULT_MAX_RECORD_SIZE_KIB
        } else {
            request.max_record_size_kib
        };
        let new_stream = NewStream {
            arn: &arn,
            stream_mode: mode,
            retention_hours: DEFAULT_RETENTION_HOURS,
            max_record_size_kib: i32::try_from(max_record_size_kib).unwrap_or(1024),
            created_at_ms: now_ms(),
            tags: &tags::tag_pairs(&request.tags),
        };
        let outcome = self
            .store
            .insert_stream(&new_stream, shard_count, self.account_limits())
            .await
            .map_err(internal)?;
        let stream_uid = match outcome {
            NewStreamOutcome::Created(stream_uid) => stream_uid,
            NewStreamOutcome::OverOnDemandLimit => {
                return Err(limits::over_on_demand_limit(
                    &request.account_id,
                    &request.region,
                    self.on_demand_stream_limit,
                ));
            }
            NewStreamOutcome::TooManyTags => {
                return Err(ErrorCode::InvalidArgument.status(format!(
                    "A stream may have at most {} tags.",
                    freshet_metastore::TAGS_PER_RESOURCE
                )));
            }
            NewStreamOutcome::NameTaken => {
                return Err(ErrorCode::ResourceInUse.status(format!(
                    "Stream {} under account {} already exists.",
                    request.stream_name, request.account_id
                )));
            }
            NewStreamOutcome::OverShardLimit { used } => {
                return Err(ErrorCode::LimitExceeded.status(format!(
                    "This request would exceed the shard limit for the account {} in {}. Current shard count for the account: {used}. \
                     Limit: {}. Number of additional shards that would have resulted from this request: {shard_count}. \
                     Refer to the AWS Service Limits page (https://docs.aws.amazon.com/general/latest/gr/aws_service_limits.html) \
                     for current limits and how to request higher limits.",
                    request.account_id, request.region, self.shard_limit
                )));
            }
        };

        let shards = HashKeyRange::split_evenly(shard_count)
            .into_iter()
            .enumerate()
            .map(|(index, range)| {
                let shard_id = ShardId(index as u32);
                ShardToPlace {
                    shard_id: shard_id.to_string(),
                    starting_hash_key: range.start.to_string(),
                    ending_hash_key: range.end.to_string(),
                    parent_shard_id: String::new(),
                    adjacent_parent_shard_id: String::new(),
                    sequence_base: sequence_base(stream_uid, shard_id),
                }
            })
            .collect();
        let placement = PlaceShardsRequest {
            stream_uid,
            account_id: request.account_id.clone(),
            stream_name: request.stream_name.clone(),
            stream_arn: arn.to_string(),
            stream_created_at_ms: new_stream.created_at_ms,
            retention_hours: DEFAULT_RETENTION_HOURS as u32,
            max_record_size_kib,
            shards,
        };
        let mut membership = self.membership.clone();
        if let Err(status) = membership.place_shards(placement).await {
            // Leave nothing behind: the placement may have committed even
            // if its answer was lost, so publish tombstones before the row goes.
            let removal = RemoveStreamRequest { stream_uid };
            if let Err(status) = membership.remove_stream(removal).await {
                tracing::error!(
                    message = status.message(),
                    "failed to remove shards after a failed placement"
                );
            }
            if let Err(error) = self.store.delete_stream(stream_uid).await {
                tracing::error!("failed to {error:#} after a failed placement");
            }
            return Err(ErrorCode::Unavailable.status(format!(
                "could not place the stream's shards: {}",
                status.message()
            )));
        }
        if let Some(mibps) = warm {
            self.store
                .set_warm_throughput(stream_uid, i32::try_from(mibps).ok())
                .await
                .map_err(internal)?;
        }
        self.store
            .set_stream_status(stream_uid, StreamStatus::Active)
            .await
            .map_err(internal)?;
        tracing::info!(
            account_id = request.account_id,
            stream_name = request.stream_name,
            shard_count,
            "stream created"
        );
        Ok(Response::new(CreateStreamResponse {}))
    }

    async fn delete_stream(
        &self,
        request: Request<DeleteStreamRequest>,
    ) -> Result<Response<DeleteStreamResponse>, Status> {
        let request = request.into_inner();
        self.rate_limits
            .check("DeleteStream", &request.account_id, &request.stream_name)?;
        let stream = self.existing_stream(&request).await?;
        if !request.enforce_consumer_deletion && self.registered_consumers(&stream).await? > 0 {
            return Err(ErrorCode::ResourceInUse.status(format!(
                "Stream {} has registered consumers; deregister them or set EnforceConsumerDeletion.",
                stream.stream_arn
            )));
        }
        self.store
            .set_stream_status(stream.stream_uid, StreamStatus::Deleting)
            .await
            .map_err(internal)?;
        let mut membership = self.membership.clone();
        membership
            .remove_stream(RemoveStreamRequest {
                stream_uid: stream.stream_uid,
            })
            .await
            .map_err(|status| {
                ErrorCode::Unavailable.status(format!(
                    "could not remove the stream's shards: {}",
                    status.message()
                ))
            })?;
        self.store
            .delete_stream(stream.stream_uid)
            .await
            .map_err(internal)?;
        tracing::info!(
            account_id = request.account_id,
            stream_name = request.stream_name,
            "stream deleted"
        );
        Ok(Response::new(DeleteStreamResponse {}))
    }

    async fn describe_stream(
        &self,
        request: Request<DescribeStreamRequest>,
    ) -> Result<Response<DescribeStreamResponse>, Status> {
        let request = request.into_inner();
        self.rate_limits.check(
            api_operation(&request.api_operation),
            &request.account_id,
            &request.stream_name,
        )?;
        let stream = self.existing_stream(&request).await?;
        let rows = self
            .store
            .shards_of(stream.stream_uid)
            .await
            .map_err(internal)?;
        let open = rows
            .iter()
            .filter(|s| s.state != ShardState::Closed)
            .count() as u32;
        let shards = rows
            .into_iter()
            .map(|row| ShardInfo {
                starting_sequence_number: SequenceNumber {
                    base: row.sequence_base,
                    offset: 0,
                }
                .to_string(),
                ending_sequence_number: row
                    .ending_offset
                    .map(|end| {
                        SequenceNumber {
                            base: row.sequence_base,
                            offset: end.saturating_sub(1),
                        }
                        .to_string()
                    })
                    .unwrap_or_default(),
                shard_id: row.shard_id,
                parent_shard_id: row.parent_shard_id.unwrap_or_default(),
                adjacent_parent_shard_id: row.adjacent_parent_shard_id.unwrap_or_default(),
                starting_hash_key: row.starting_hash_key,
                ending_hash_key: row.ending_hash_key,
            })
            .collect();
        let warm = self.warm_throughput_of(&stream, open).await?;
        let consumers = self.registered_consumers(&stream).await?;
        Ok(Response::new(DescribeStreamResponse {
            stream: Some(self.stream_info(&stream, shards, open, consumers, warm)),
        }))
    }

    async fn split_shard(
        &self,
        request: Request<SplitShardRequest>,
    ) -> Result<Response<SplitShardResponse>, Status> {
        let request = request.into_inner();
        self.rate_limits
            .check("SplitShard", &request.account_id, &request.stream_name)?;
        self.split_shard_checked(request).await?;
        Ok(Response::new(SplitShardResponse {}))
    }

    async fn merge_shards(
        &self,
        request: Request<MergeShardsRequest>,
    ) -> Result<Response<MergeShardsResponse>, Status> {
        let request = request.into_inner();
        self.rate_limits
            .check("MergeShards", &request.account_id, &request.stream_name)?;
        self.merge_shards_checked(request).await?;
        Ok(Response::new(MergeShardsResponse {}))
    }

    async fn update_shard_count(
        &self,
        request: Request<UpdateShardCountRequest>,
    ) -> Result<Response<UpdateShardCountResponse>, Status> {
        Ok(Response::new(
            self.update_shard_count_checked({
                let request = request.into_inner();
                self.rate_limits.check(
                    "UpdateShardCount",
                    &request.account_id,
                    &request.stream_name,
                )?;
                request
            })
            .await?,
        ))
    }

    async fn update_max_record_size(
        &self,
        request: Request<UpdateMaxRecordSizeRequest>,
    ) -> Result<Response<UpdateMaxRecordSizeResponse>, Status> {
        let request = request.into_inner();
        let stream = self.existing_stream(&request).await?;
        if stream.status != StreamStatus::Active {
            return Err(reshard::not_active(&stream));
        }
        let kib = i32::try_from(request.max_record_size_kib)
            .map_err(|_| ErrorCode::InvalidArgument.status("MaxRecordSizeInKiB is out of range"))?;
        self.store
            .set_max_record_size(stream.stream_uid, kib)
            .await
            .map_err(internal)?;
        // Shard-map entries carry the limit the frontends check.
        self.republish(stream.stream_uid, "the new record size")
            .await?;
        Ok(Response::new(UpdateMaxRecordSizeResponse {}))
    }

    async fn update_stream_mode(
        &self,
        request: Request<UpdateStreamModeRequest>,
    ) -> Result<Response<UpdateStreamModeResponse>, Status> {
        let check = request.get_ref();
        self.rate_limits
            .check("UpdateStreamMode", &check.account_id, &check.stream_name)?;
        self.update_stream_mode_impl(request).await
    }

    async fn update_stream_warm_throughput(
        &self,
        request: Request<UpdateStreamWarmThroughputRequest>,
    ) -> Result<Response<UpdateStreamWarmThroughputResponse>, Status> {
        let check = request.get_ref();
        self.rate_limits.check(
            "UpdateStreamWarmThroughput",
            &check.account_id,
            &check.stream_name,
        )?;
        self.update_stream_warm_throughput_impl(request).await
    }

    async fn update_account_settings(
        &self,
        request: Request<UpdateAccountSettingsRequest>,
    ) -> Result<Response<AccountSettings>, Status> {
        let request = request.into_inner();
        self.rate_limits
            .check("UpdateAccountSettings", &request.account_id, "")?;
        self.account_settings_impl(&request.account_id, Some(request.enable_commitment))
            .await
    }

    async fn describe_account_settings(
        &self,
        request: Request<DescribeAccountSettingsRequest>,
    ) -> Result<Response<AccountSettings>, Status> {
        self.account_settings_impl(&request.into_inner().account_id, None)
            .await
    }

    async fn list_streams(
        &self,
        request: Request<ListStreamsRequest>,
    ) -> Result<Response<ListStreamsResponse>, Status> {
        let ListStreamsRequest { account_id, region } = request.into_inner();
        self.rate_limits.check("ListStreams", &account_id, "")?;
        let rows = self
            .store
            .list_streams(&account_id, &region)
            .await
            .map_err(internal)?;
        Ok(Response::new(ListStreamsResponse {
            streams: rows
                .iter()
                .map(|row| self.stream_info(row, Vec::new(), 0, 0, None))
                .collect(),
        }))
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
