//! Enhanced monitoring: EnableEnhancedMonitoring and
//! DisableEnhancedMonitoring switch a stream's shard-level metrics on and
//! off. The set lives on the stream's row (changed in one statement, so
//! two calls cannot lose each other's metrics) and travels to the
//! frontends in the stream's shard-map entries, which are published again
//! with it; a frontend keeps per-shard metrics for what the entry says
//! (`services/frontend/src/metrics.rs`).

use freshet_proto::v1::{UpdateShardLevelMetricsRequest, UpdateShardLevelMetricsResponse};
use freshet_types::{ShardLevelMetrics, StreamArn, StreamStatus};
use tonic::Status;

use crate::{internal, reshard, ControlPlaneService, NamesStream};

impl NamesStream for UpdateShardLevelMetricsRequest {
    fn stream_arn(&self) -> StreamArn {
        StreamArn::new(&self.region, &self.account_id, &self.stream_name)
    }
}

impl ControlPlaneService {
    pub(crate) async fn update_shard_level_metrics_checked(
        &self,
        request: UpdateShardLevelMetricsRequest,
    ) -> Result<UpdateShardLevelMetricsResponse, Status> {
        let operation = if request.enable {
            "EnableEnhancedMonitoring"
        } else {
            "DisableEnhancedMonitoring"
        };
        self.rate_limits
            .check(operation, &request.account_id, &request.stream_name)?;
        let stream = self.existing_stream(&request).await?;
        if stream.status != StreamStatus::Active {
            return Err(reshard::not_active(&stream));
        }
        let updated = self
            .store
            .update_shard_level_metrics(
                stream.stream_uid,
                request.enable,
                ShardLevelMetrics::from_bits(request.metrics),
            )
            .await
            .map_err(internal)?;
        let Some((current, desired)) = updated else {
            // No longer ACTIVE (being deleted meanwhile), or gone.
            let now = self.existing_stream(&request).await?;
            return Err(reshard::not_active(&now));
        };
        // Always, even when nothing changed: a retry after a publish that
        // failed must still bring the frontends up to date.
        self.republish(stream.stream_uid, "the stream's shard-level metrics")
            .await?;
        Ok(UpdateShardLevelMetricsResponse {
            stream_name: stream.stream_name,
            stream_arn: stream.stream_arn,
            current: current.bits(),
            desired: desired.bits(),
        })
    }
}
