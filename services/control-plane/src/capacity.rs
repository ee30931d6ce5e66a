//! On-demand capacity settings: UpdateStreamMode, warm throughput
//! (CreateStream's WarmThroughputMiBps, UpdateStreamWarmThroughput, the
//! WarmThroughput of DescribeStreamSummary) and the account's minimum
//! throughput billing commitment (UpdateAccountSettings,
//! DescribeAccountSettings), which warm throughput requires, as in Kinesis.
//!
//! Warm throughput sets a floor the scaler keeps (`scaler.rs`): at least
//! enough shards for that many MiB/s of writes. Raising it splits the
//! widest shards at once (the stream is UPDATING until the capacity
//! exists); lowering it lets the scaler merge idle shards after its
//! cool-down.

use freshet_errors::ErrorCode;
use freshet_metastore::{ModeChange, StreamRow};
use freshet_proto::v1::*;
use freshet_types::{StreamMode, StreamStatus};
use tonic::{Request, Response, Status};

use crate::scaler::{decide, Decision, ShardView};
use crate::{internal, requested_mode, reshard, ControlPlaneService, NamesStream as _};

/// Most warm throughput an on-demand stream may ask for (10 GiB/s).
const MAX_WARM_MIBPS: u32 = 10 * 1024;

fn not_eligible(account_id: &str) -> Status {
    ErrorCode::InvalidArgument.status(format!(
        "Warm throughput is only supported for on-demand streams in accounts with MinimumThroughputBillingCommitment enabled; account {account_id} does not qualify for this request."
    ))
}

impl ControlPlaneService {
    /// Checks a requested warm throughput (0: none): on-demand streams in
    /// accounts with the commitment only, at most 10 GiB/s.
    pub(crate) async fn check_warm_throughput(
        &self,
        account_id: &str,
        mode: StreamMode,
        mibps: u32,
    ) -> Result<Option<u32>, Status> {
        if mibps == 0 {
            return Ok(None);
        }
        if mode != StreamMode::OnDemand {
            return Err(not_eligible(account_id));
        }
        let commitment = self.store.commitment(account_id).await.map_err(internal)?;
        if !commitment.is_active() {
            return Err(not_eligible(account_id));
        }
        if mibps > MAX_WARM_MIBPS {
            return Err(ErrorCode::LimitExceeded.status(format!(
                "Warm throughput of {mibps} MiBps exceeds the limit of {MAX_WARM_MIBPS} MiBps for an on-demand stream."
            )));
        }
        Ok(Some(mibps))
    }

    /// The WarmThroughput a description shows: on-demand streams in
    /// accounts with the commitment only.
    pub(crate) async fn warm_throughput_of(
        &self,
        stream: &StreamRow,
        open_shards: u32,
    ) -> Result<Option<WarmThroughput>, Status> {
        if stream.stream_mode != StreamMode::OnDemand {
            return Ok(None);
        }
        let commitment = self
            .store
            .commitment(&stream.account_id)
            .await
            .map_err(internal)?;
        if !commitment.is_active() {
            return Ok(None);
        }
        Ok(Some(WarmThroughput {
            target_mibps: stream
                .warm_throughput_mibps
                .and_then(|m| u32::try_from(m).ok())
                .unwrap_or(0),
            current_mibps: self.scaler.mibps_of(open_shards),
        }))
    }

    /// Splits shards now until the stream reaches its capacity floor
    /// (UPDATING meanwhile); nothing to do if it is already there.
    async fn grow_to_floor(&self, stream: StreamRow) -> Result<(), Status> {
        let open: Vec<ShardView> = self
            .store
            .shards_of(stream.stream_uid)
            .await
            .map_err(internal)?
            .into_iter()
            .filter(|r| r.is_open_in(&stream))
            .filter_map(|r| {
                Some(ShardView {
                    range: reshard::range_of(&r).ok()?,
                    shard_id: r.shard_id,
                    utilization: None,
                    median: None,
                })
            })
            .collect();
        let floor = self.capacity_floor(&stream);
        if let Decision::Grow(steps) = decide(&open, floor, &self.scaler, false) {
            self.begin_update(&stream).await?;
            // Each round splits every shard at most once; the scaler's
            // later ticks finish the job if one round is not enough.
            self.spawn_steps(stream, steps, None);
        }
        Ok(())
    }
}

impl ControlPlaneService {
    pub(crate) async fn update_stream_mode_impl(
        &self,
        request: Request<UpdateStreamModeRequest>,
    ) -> Result<Response<UpdateStreamModeResponse>, Status> {
        let request = request.into_inner();
        let stream = self.existing_stream(&request).await?;
        if stream.status != StreamStatus::Active {
            return Err(reshard::not_active(&stream));
        }
        let mode = requested_mode(request.stream_mode());
        let warm = self
            .check_warm_throughput(&request.account_id, mode, request.warm_throughput_mibps)
            .await?;
        let changed = self
            .store
            .set_stream_mode(
                &request.stream_arn(),
                stream.stream_uid,
                mode,
                self.on_demand_stream_limit,
            )
            .await
            .map_err(internal)?;
        match changed {
            ModeChange::Changed => {}
            ModeChange::OverOnDemandLimit => {
                return Err(crate::limits::over_on_demand_limit(
                    &request.account_id,
                    &request.region,
                    self.on_demand_stream_limit,
                ));
            }
            ModeChange::UsesAutoDistribution => {
                return Err(ErrorCode::InvalidArgument.status(format!(
                    "Stream {} uses the AUTO record distribution strategy, which only on-demand streams support. \
                     Set USER_PARTITION_KEY with UpdateStreamRecordDistributionStrategy before switching it to PROVISIONED.",
                    request.stream_name
                )));
            }
        }
        if let Some(mibps) = warm {
            self.store
                .set_warm_throughput(stream.stream_uid, i32::try_from(mibps).ok())
                .await
                .map_err(internal)?;
        }
        if mode == StreamMode::OnDemand {
            let stream = self.existing_stream(&request).await?;
            self.grow_to_floor(stream).await?;
        }
        Ok(Response::new(UpdateStreamModeResponse {}))
    }

    pub(crate) async fn update_stream_warm_throughput_impl(
        &self,
        request: Request<UpdateStreamWarmThroughputRequest>,
    ) -> Result<Response<UpdateStreamWarmThroughputResponse>, Status> {
        let request = request.into_inner();
        let stream = self.existing_stream(&request).await?;
        let mode = stream.stream_mode;
        // Zero is a valid target here: it releases the warm capacity.
        let target = request.warm_throughput_mibps;
        if target > 0 {
            self.check_warm_throughput(&request.account_id, mode, target)
                .await?;
        } else if mode != StreamMode::OnDemand {
            return Err(not_eligible(&request.account_id));
        }
        if stream.status != StreamStatus::Active {
            return Err(reshard::not_active(&stream));
        }
        self.store
            .set_warm_throughput(
                stream.stream_uid,
                Some(i32::try_from(target).unwrap_or(i32::MAX)),
            )
            .await
            .map_err(internal)?;
        let stream = self.existing_stream(&request).await?;
        let open = self
            .store
            .shards_of(stream.stream_uid)
            .await
            .map_err(internal)?
            .iter()
            .filter(|r| r.is_open_in(&stream))
            .count() as u32;
        self.grow_to_floor(stream).await?;
        Ok(Response::new(UpdateStreamWarmThroughputResponse {
            warm_throughput: Some(WarmThroughput {
                target_mibps: target,
                current_mibps: self.scaler.mibps_of(open),
            }),
        }))
    }

    pub(crate) async fn account_settings_impl(
        &self,
        account_id: &str,
        enable: Option<bool>,
    ) -> Result<Response<AccountSettings>, Status> {
        if let Some(enable) = enable {
            self.store
                .set_commitment(account_id, enable)
                .await
                .map_err(internal)?;
        }
        let commitment = self.store.commitment(account_id).await.map_err(internal)?;
        Ok(Response::new(AccountSettings {
            commitment_status: freshet_proto::v1::CommitmentStatus::from(commitment.status) as i32,
            started_at_ms: commitment
                .started_at_ms
                .filter(|_| commitment.is_active())
                .unwrap_or(0),
            ended_at_ms: commitment.ends_at_ms.unwrap_or(0),
            earliest_allowed_end_at_ms: commitment
                .earliest_end_ms
                .filter(|_| commitment.is_active())
                .unwrap_or(0),
        }))
    }
}
