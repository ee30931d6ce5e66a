//! An account's limits: DescribeLimits, counted from the account's streams
//! as they are, and the refusal when a change would pass the on-demand
//! streams limit (enforced under the account's lock,
//! `libs/metastore/src/limits.rs`).

use freshet_errors::ErrorCode;
use freshet_metastore::AccountLimits;
use freshet_proto::v1::{DescribeLimitsRequest, DescribeLimitsResponse};
use tonic::Status;

use crate::{internal, ControlPlaneService};

/// Kinesis's default quota of on-demand streams per account and region.
pub const DEFAULT_ON_DEMAND_STREAM_LIMIT: u32 = 50;

/// The refusal of a stream that would pass the on-demand streams limit.
pub(crate) fn over_on_demand_limit(account_id: &str, region: &str, limit: u32) -> Status {
    ErrorCode::LimitExceeded.status(format!(
        "Account {account_id} already has {limit} streams in ON_DEMAND mode in {region}, the most it may have."
    ))
}

impl ControlPlaneService {
    /// The limits every account has here.
    pub(crate) fn account_limits(&self) -> AccountLimits {
        AccountLimits {
            shards: self.shard_limit,
            on_demand_streams: self.on_demand_stream_limit,
        }
    }

    pub(crate) async fn describe_limits_checked(
        &self,
        request: DescribeLimitsRequest,
    ) -> Result<DescribeLimitsResponse, Status> {
        self.rate_limits
            .check("DescribeLimits", &request.account_id, "")?;
        let usage = self
            .store
            .account_usage(&request.account_id, &request.region)
            .await
            .map_err(internal)?;
        let limits = self.account_limits();
        Ok(DescribeLimitsResponse {
            shard_limit: limits.shards,
            open_shard_count: u32::try_from(usage.open_shards).unwrap_or(u32::MAX),
            on_demand_stream_count: u32::try_from(usage.on_demand_streams).unwrap_or(u32::MAX),
            on_demand_stream_count_limit: limits.on_demand_streams,
        })
    }
}
