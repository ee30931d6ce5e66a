//! Record distribution: UpdateStreamRecordDistributionStrategy switches an
//! on-demand stream between AUTO (the frontends spread its records evenly
//! over its open shards) and USER_PARTITION_KEY (the partition key picks
//! the shard). The strategy lives on the stream's row, checked against its
//! mode under the row lock (`MetaStore::set_record_distribution`; a mode
//! change checks it back, `MetaStore::set_stream_mode`), and travels to
//! the frontends in the stream's shard-map entries, published again.

use freshet_errors::ErrorCode;
use freshet_metastore::DistributionChange;
use freshet_proto::v1::{UpdateRecordDistributionRequest, UpdateRecordDistributionResponse};
use freshet_types::{StreamArn, StreamStatus};
use tonic::Status;

use crate::{internal, reshard, ControlPlaneService, NamesStream};

impl NamesStream for UpdateRecordDistributionRequest {
    fn stream_arn(&self) -> StreamArn {
        StreamArn::new(&self.region, &self.account_id, &self.stream_name)
    }
}

/// The answer to a provisioned stream asked to take a strategy.
pub(crate) fn only_on_demand() -> Status {
    ErrorCode::InvalidArgument.status(
        "The record distribution strategy is only supported for streams in ON_DEMAND capacity mode.",
    )
}

impl ControlPlaneService {
    pub(crate) async fn update_record_distribution_checked(
        &self,
        request: UpdateRecordDistributionRequest,
    ) -> Result<UpdateRecordDistributionResponse, Status> {
        self.rate_limits.check(
            "UpdateStreamRecordDistributionStrategy",
            &request.account_id,
            &request.stream_name,
        )?;
        let stream = self.existing_stream(&request).await?;
        if stream.status != StreamStatus::Active {
            return Err(reshard::not_active(&stream));
        }
        let change = self
            .store
            .set_record_distribution(stream.stream_uid, request.auto)
            .await
            .map_err(internal)?;
        match change {
            DistributionChange::Changed => {}
            DistributionChange::NotOnDemand => return Err(only_on_demand()),
            DistributionChange::NotActive => {
                let now = self.existing_stream(&request).await?;
                return Err(reshard::not_active(&now));
            }
        }
        // Always, even when nothing changed: a retry after a publish that
        // failed must still bring the frontends up to date.
        self.republish(stream.stream_uid, "the stream's record distribution")
            .await?;
        Ok(UpdateRecordDistributionResponse {})
    }
}
