//! The ControlPlane rpcs: each checks its request (rates, names, the
//! stream's state) and hands the work to the module that owns it —
//! streams and resharding here and in `reshard.rs`, capacity in
//! `capacity.rs`, consumers in `consumers.rs`, subscriptions in
//! `subscriptions.rs`, tags in `tags.rs`, limits in `limits.rs`,
//! enhanced monitoring in `monitoring.rs`.

use freshet_errors::ErrorCode;
use freshet_metastore::{NewStream, NewStreamOutcome};
use freshet_proto::v1::control_plane_server::ControlPlane;
use freshet_proto::v1::*;
use freshet_types::{
    HashKeyRange, SequenceNumber, ShardId, ShardState, StreamArn, StreamMode, StreamStatus,
};
use tonic::{Request, Response, Status};

use crate::{
    api_operation, distribution, internal, limits, now_ms, requested_mode, reshard, sequence_base,
    tags, ControlPlaneService, DEFAULT_MAX_RECORD_SIZE_KIB, DEFAULT_RETENTION_HOURS,
    ON_DEMAND_INITIAL_SHARDS,
};

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

    async fn update_record_distribution(
        &self,
        request: Request<UpdateRecordDistributionRequest>,
    ) -> Result<Response<UpdateRecordDistributionResponse>, Status> {
        self.update_record_distribution_checked(request.into_inner())
            .await
            .map(Response::new)
    }

    async fn update_retention_period(
        &self,
        request: Request<UpdateRetentionPeriodRequest>,
    ) -> Result<Response<UpdateRetentionPeriodResponse>, Status> {
        self.update_retention_period_checked(request.into_inner())
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
        if request.auto_record_distribution && mode != StreamMode::OnDemand {
            return Err(distribution::only_on_demand());
        }
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
            auto_record_distribution: request.auto_record_distribution,
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
            .shards_with_lifetimes(stream.stream_uid)
            .await
            .map_err(internal)?;
        let open = rows
            .iter()
            .filter(|(s, _)| s.state != ShardState::Closed)
            .count() as u32;
        let shards = rows
            .into_iter()
            .map(|(row, lifetime)| ShardInfo {
                opened_at_ms: lifetime.opened_at_ms,
                closed_at_ms: lifetime.closed_at_ms.unwrap_or_default(),
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
