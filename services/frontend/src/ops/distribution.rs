//! UpdateStreamRecordDistributionStrategy: switches an on-demand stream
//! between AUTO (records spread evenly over its open shards, partition keys
//! and explicit hash keys ignored) and USER_PARTITION_KEY (the default).
//! The stream is named by ARN only, as the API requires; the control plane
//! checks its mode (`services/control-plane/src/distribution.rs`), and the
//! setting reaches PutRecord and PutRecords in the stream's shard-map
//! entries (`records/put.rs`).

use freshet_proto::v1::UpdateRecordDistributionRequest;
use serde::Deserialize;

use super::StreamTarget;
use crate::auth::Caller;
use crate::error::{KinesisError, KinesisResult, Violations};
use crate::Frontend;

/// The strategies the model allows, as its ValidationException lists them.
const STRATEGIES: &str = "[AUTO, USER_PARTITION_KEY]";

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RecordDistributionInput {
    #[serde(flatten)]
    pub target: StreamTarget,
    pub record_distribution_strategy: Option<String>,
}

pub async fn update_stream_record_distribution_strategy(
    frontend: &Frontend,
    caller: &Caller,
    input: RecordDistributionInput,
) -> KinesisResult<()> {
    let mut violations = Violations::default();
    input.target.check(&mut violations);
    violations.check_required(input.target.stream_arn.as_deref(), "streamARN");
    let strategy = input.record_distribution_strategy.as_deref();
    violations.check_required(strategy, "recordDistributionStrategy");
    if let Some(text) = strategy.filter(|s| !matches!(*s, "AUTO" | "USER_PARTITION_KEY")) {
        violations.add(
            Some(text),
            "recordDistributionStrategy",
            &format!("Member must satisfy enum value set: {STRATEGIES}"),
        );
    }
    violations.into_result()?;
    let stream = input.target.resolve(caller).await?;
    frontend
        .control_plane
        .clone()
        .update_record_distribution(UpdateRecordDistributionRequest {
            account_id: stream.account_id.clone(),
            region: stream.region.clone(),
            stream_name: stream.stream_name.clone(),
            auto: strategy == Some("AUTO"),
        })
        .await
        .map_err(|status| KinesisError::from_status(&status))?;
    Ok(())
}
