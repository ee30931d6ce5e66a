//! Retention: IncreaseStreamRetentionPeriod and
//! DecreaseStreamRetentionPeriod change how long a stream's records are
//! served. The period and the stream's expired-before floor live on its
//! row (`MetaStore::update_retention`) and travel to the frontends and
//! workers in its shard-map entries, published again with them; both
//! serve records from `freshet_shardmap::unexpired_from` on, and workers
//! trim the files wholly before it.

use freshet_errors::ErrorCode;
use freshet_metastore::{RetentionChange, RetentionUpdate};
use freshet_proto::v1::{UpdateRetentionPeriodRequest, UpdateRetentionPeriodResponse};
use freshet_types::{StreamArn, StreamStatus};
use tonic::Status;

use crate::{internal, now_ms, reshard, ControlPlaneService, NamesStream};

/// How long a retention change may take to reach every frontend and
/// worker: 30 s (a republish; the control plane's call to membership times
/// out well before), scaled with the retention hour where tests shorten it
/// — the shortest period (24 hours) always dwarfs it.
fn publish_margin_ms(hour_ms: i64) -> i64 {
    hour_ms / 120
}

impl NamesStream for UpdateRetentionPeriodRequest {
    fn stream_arn(&self) -> StreamArn {
        StreamArn::new(&self.region, &self.account_id, &self.stream_name)
    }
}

impl ControlPlaneService {
    pub(crate) async fn update_retention_period_checked(
        &self,
        request: UpdateRetentionPeriodRequest,
    ) -> Result<UpdateRetentionPeriodResponse, Status> {
        let operation = if request.increase {
            "IncreaseStreamRetentionPeriod"
        } else {
            "DecreaseStreamRetentionPeriod"
        };
        self.rate_limits
            .check(operation, &request.account_id, &request.stream_name)?;
        let stream = self.existing_stream(&request).await?;
        if stream.status != StreamStatus::Active {
            return Err(reshard::not_active(&stream));
        }
        let hours = i32::try_from(request.retention_hours)
            .map_err(|_| ErrorCode::InvalidArgument.status("retention period out of range"))?;
        let change = self
            .store
            .update_retention(
                stream.stream_uid,
                RetentionUpdate {
                    hours,
                    increase: request.increase,
                    // Readers apply the new period only once its entries
                    // reach them: until then they expire by the old one.
                    // The floor is set that much later, so nothing they
                    // hid meanwhile shows again (records that were about
                    // to expire anyway may expire up to the margin early).
                    now_ms: now_ms() + publish_margin_ms(self.retention_hour_ms),
                    hour_ms: self.retention_hour_ms,
                },
            )
            .await
            .map_err(internal)?;
        let previous_hours = match change {
            RetentionChange::Changed { previous_hours } => previous_hours,
            RetentionChange::WrongDirection { current_hours } => {
                let (way, other) = if request.increase {
                    ("shorter", "DecreaseRetentionPeriod")
                } else {
                    ("longer", "IncreaseRetentionPeriod")
                };
                return Err(ErrorCode::InvalidArgument.status(format!(
                    "Requested retention period ({hours} hours) for stream {} can not be {way} than existing retention period ({current_hours} hours). Use {other} API.",
                    stream.stream_name
                )));
            }
            RetentionChange::NotActive => {
                let now = self.existing_stream(&request).await?;
                return Err(reshard::not_active(&now));
            }
        };
        // Always, even when nothing changed: a retry after a publish that
        // failed must still bring the frontends and workers up to date.
        self.republish(stream.stream_uid, "the stream's retention period")
            .await?;
        Ok(UpdateRetentionPeriodResponse {
            previous_hours: u32::try_from(previous_hours).unwrap_or(0),
        })
    }
}
