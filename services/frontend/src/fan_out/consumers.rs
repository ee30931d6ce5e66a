//! Which consumers are ACTIVE, as SubscribeToShard and every running
//! subscription ask (each subscription every few seconds): answered by the
//! control plane, an ACTIVE answer reused for two seconds, so a thousand
//! subscriptions cost a handful of lookups a second, not hundreds.

use std::time::Duration;

use freshet_proto::v1::control_plane_client::ControlPlaneClient;
use freshet_proto::v1::{ConsumerInfo, ConsumerSelector, ConsumerStatus};
use freshet_server::TracedChannel;
use freshet_types::ConsumerArn;
use moka::sync::Cache;

use crate::error::{KinesisError, KinesisResult};

/// How long an ACTIVE answer is reused: a deregistration reaches the
/// subscriptions within this (plus their own checking interval).
const ACTIVE_TTL: Duration = Duration::from_secs(2);
const CACHED_CONSUMERS: u64 = 10_000;

/// Consumers by ARN, from the control plane.
pub struct ConsumerLookups {
    control_plane: ControlPlaneClient<TracedChannel>,
    active: Cache<String, ConsumerInfo>,
}

impl ConsumerLookups {
    pub fn new(control_plane: ControlPlaneClient<TracedChannel>) -> ConsumerLookups {
        ConsumerLookups {
            control_plane,
            active: Cache::builder()
                .max_capacity(CACHED_CONSUMERS)
                .time_to_live(ACTIVE_TTL)
                .build(),
        }
    }

    /// The consumer `arn` names, in any status (ResourceNotFoundException
    /// if none). Only an ACTIVE one is answered from the cache.
    pub async fn look_up(&self, arn: &ConsumerArn) -> KinesisResult<ConsumerInfo> {
        let key = arn.to_string();
        if let Some(info) = self.active.get(&key) {
            return Ok(info);
        }
        let info = self
            .control_plane
            .clone()
            .describe_stream_consumer(freshet_server::request_with_deadline(
                ConsumerSelector {
                    account_id: arn.stream.account_id.clone(),
                    region: arn.stream.region.clone(),
                    stream_name: arn.stream.stream_name.clone(),
                    consumer_name: arn.consumer_name.clone(),
                    created_epoch_seconds: arn.created_epoch_seconds,
                    // Not counted against DescribeStreamConsumer's rate.
                    api_operation: "SubscribeToShard".to_owned(),
                },
                Duration::from_secs(5),
            ))
            .await
            .map_err(|status| KinesisError::from_status(&status))?
            .into_inner();
        if info.status() == ConsumerStatus::Active {
            self.active.insert(key, info.clone());
        }
        Ok(info)
    }
}
