//! Which consumers are ACTIVE, as SubscribeToShard and every running
//! subscription ask. Consumers travel through membership's change log like
//! shards, so the answer is this frontend's shard map — a registration, an
//! activation or a deregistration reaches it as it commits. A consumer the
//! map has not heard of (it was registered a moment ago, or the map is
//! resyncing) is asked of the control plane, an ACTIVE answer reused for
//! two seconds.

use std::time::Duration;

use freshet_proto::v1::control_plane_client::ControlPlaneClient;
use freshet_proto::v1::{ConsumerInfo, ConsumerSelector, ConsumerStatus};
use freshet_server::TracedChannel;
use freshet_shardmap::SharedShardMap;
use freshet_types::ConsumerArn;
use moka::sync::Cache;

use crate::error::{KinesisError, KinesisResult};

/// How long an ACTIVE answer from the control plane is reused.
const ACTIVE_TTL: Duration = Duration::from_secs(2);
const CACHED_CONSUMERS: u64 = 10_000;

/// What this frontend's map says of a consumer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Logged {
    /// Its status, by the newest change the map applied.
    Status(ConsumerStatus),
    /// The log said it was removed.
    Removed,
    /// The map has not heard of it (yet).
    Unheard,
}

/// Consumers by ARN: from the change log, else from the control plane.
pub struct ConsumerLookups {
    map: SharedShardMap,
    control_plane: ControlPlaneClient<TracedChannel>,
    active: Cache<String, ConsumerInfo>,
}

impl ConsumerLookups {
    pub fn new(
        map: SharedShardMap,
        control_plane: ControlPlaneClient<TracedChannel>,
    ) -> ConsumerLookups {
        ConsumerLookups {
            map,
            control_plane,
            active: Cache::builder()
                .max_capacity(CACHED_CONSUMERS)
                .time_to_live(ACTIVE_TTL)
                .build(),
        }
    }

    /// What the change log last said of the consumer, as far as this
    /// frontend's map has heard.
    pub fn logged(&self, arn: &ConsumerArn) -> Logged {
        let key = arn.to_string();
        self.map.read(|map| match map.consumer(&key) {
            Some(entry) => Logged::Status(entry.status()),
            None if map.consumer_removed(&key) => Logged::Removed,
            None => Logged::Unheard,
        })
    }

    /// The consumer `arn` names, in any status (ResourceNotFoundException
    /// if none): from the change log when the map holds it ACTIVE or
    /// DELETING (a CREATING entry may be the map lagging the control
    /// plane: asked there).
    pub async fn look_up(&self, arn: &ConsumerArn) -> KinesisResult<ConsumerInfo> {
        let key = arn.to_string();
        let logged = self.map.read(|map| {
            if map.consumer_removed(&key) {
                // Gone by the log: a cached ACTIVE answer is stale.
                self.active.invalidate(&key);
            }
            map.consumer(&key)
                .filter(|entry| {
                    matches!(
                        entry.status(),
                        ConsumerStatus::Active | ConsumerStatus::Deleting
                    )
                })
                .map(|entry| ConsumerInfo {
                    consumer_name: entry.consumer_name.clone(),
                    consumer_arn: entry.consumer_arn.clone(),
                    status: entry.status,
                    created_at_ms: entry.created_at_ms,
                    stream_arn: arn.stream.to_string(),
                    stream_uid: entry.stream_uid,
                })
        });
        if let Some(info) = logged {
            return Ok(info);
        }
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
