//! Enhanced fan-out consumers: registration under Kinesis's limits,
//! lookups by stream and name (or by ARN: name and registration second),
//! deregistration, and the loop that finishes CREATING and DELETING.
//!
//! A consumer is CREATING for a while after it registers (half a second
//! by default, `--consumer-transition-ms`), then ACTIVE; DELETING for as
//! long after it deregisters, then gone. The times
//! live in Postgres, so a control plane that takes over finishes what its
//! predecessor left (the loop runs first thing on takeover).
//!
//! This service decides (rates, limits, which consumer a request names);
//! every change is made by membership, which records it in the change log
//! with the rows (`services/membership/src/consumers.rs`), so frontends
//! learn a consumer's status as it commits. Lookups read Postgres here.

use std::time::Duration;

use freshet_errors::ErrorCode;
use freshet_metastore::{ConsumerLimits, ConsumerRow, StreamRow};
use freshet_proto::v1::{self as proto, *};
use freshet_types::{ConsumerArn, StreamArn};
use tonic::Status;

use crate::{internal, now_ms, ControlPlaneService, NamesStream};

/// How long a consumer stays CREATING, and DELETING, unless configured
/// (KCL polls for ACTIVE ten times a second apart; kinesis-mock also takes
/// 500 ms).
pub const DEFAULT_TRANSITION: Duration = Duration::from_millis(500);

/// Kinesis's limits: 20 consumers per stream (the 50 of On-demand
/// Advantage streams do not apply: Freshet has no such streams), and 5
/// CREATING at once per account.
pub const LIMITS: ConsumerLimits = ConsumerLimits {
    per_stream: 20,
    creating_per_account: 5,
};

/// The longest the consumer loop sleeps when nothing is pending (a
/// registration wakes it at once).
const IDLE_POLL: Duration = Duration::from_secs(5);

impl NamesStream for RegisterStreamConsumerRequest {
    fn stream_arn(&self) -> StreamArn {
        StreamArn::new(&self.region, &self.account_id, &self.stream_name)
    }
}
impl NamesStream for ConsumerSelector {
    fn stream_arn(&self) -> StreamArn {
        StreamArn::new(&self.region, &self.account_id, &self.stream_name)
    }
}
impl NamesStream for ListStreamConsumersRequest {
    fn stream_arn(&self) -> StreamArn {
        StreamArn::new(&self.region, &self.account_id, &self.stream_name)
    }
}

fn consumer_info(row: &ConsumerRow, stream: &StreamRow) -> ConsumerInfo {
    ConsumerInfo {
        consumer_name: row.consumer_name.clone(),
        consumer_arn: row.consumer_arn.clone(),
        status: proto::ConsumerStatus::from(row.status) as i32,
        created_at_ms: row.created_at_ms,
        stream_arn: stream.stream_arn.clone(),
        stream_uid: stream.stream_uid,
    }
}

/// A consumer as the change log carries it, answered as the row would be.
fn consumer_info_of(entry: &ConsumerEntry, stream: &StreamRow) -> ConsumerInfo {
    ConsumerInfo {
        consumer_name: entry.consumer_name.clone(),
        consumer_arn: entry.consumer_arn.clone(),
        status: entry.status,
        created_at_ms: entry.created_at_ms,
        stream_arn: stream.stream_arn.clone(),
        stream_uid: stream.stream_uid,
    }
}

fn consumer_not_found(selector: &ConsumerSelector) -> Status {
    let stream = selector.stream_arn();
    let message = if selector.created_epoch_seconds == 0 {
        format!(
            "Consumer {} under stream {stream} not found.",
            selector.consumer_name
        )
    } else {
        format!(
            "Consumer {} not found.",
            ConsumerArn::new(
                stream,
                &selector.consumer_name,
                selector.created_epoch_seconds
            )
        )
    };
    ErrorCode::ResourceNotFound.status(message)
}

/// Whether a StreamCreationTimestamp names the stream created at
/// `created_at_ms`: to the millisecond, or to the second when it is a
/// whole second (boto3 drops the fraction).
fn same_creation_time(given_ms: i64, created_at_ms: i64) -> bool {
    given_ms == created_at_ms
        || (given_ms.rem_euclid(1000) == 0
            && given_ms.div_euclid(1000) == created_at_ms.div_euclid(1000))
}

impl ControlPlaneService {
    pub(crate) async fn register_consumer_checked(
        &self,
        request: RegisterStreamConsumerRequest,
    ) -> Result<ConsumerInfo, Status> {
        self.rate_limits.check(
            "RegisterStreamConsumer",
            &request.account_id,
            &request.stream_name,
        )?;
        let stream = self.existing_stream(&request).await?;
        let registered = self
            .membership
            .clone()
            .register_consumer(RegisterConsumerRequest {
                stream_uid: stream.stream_uid,
                consumer_name: request.consumer_name.clone(),
                max_per_stream: LIMITS.per_stream,
                max_creating_per_account: LIMITS.creating_per_account,
                tags: request.tags.clone(),
            })
            .await
            .map_err(|status| {
                // Deleted meanwhile: said with the stream's name.
                if ErrorCode::of_status(&status) == ErrorCode::ResourceNotFound {
                    ErrorCode::ResourceNotFound
                        .status(format!("Stream {} not found.", stream.stream_arn))
                } else {
                    status
                }
            })?
            .into_inner();
        match (registered.outcome(), registered.consumer) {
            (RegisterConsumerOutcome::Registered, Some(entry)) => {
                tracing::info!(consumer = entry.consumer_arn, "consumer registered");
                self.consumer_transitions.notify_one();
                Ok(consumer_info_of(&entry, &stream))
            }
            (RegisterConsumerOutcome::NameTaken, _) => Err(ErrorCode::ResourceInUse.status(format!(
                "Consumer {} under stream {} already exists.",
                request.consumer_name, stream.stream_arn
            ))),
            (RegisterConsumerOutcome::StreamFull, _) => Err(ErrorCode::LimitExceeded.status(format!(
                "Stream {} already has {} registered consumers, the most a stream may have.",
                stream.stream_arn, LIMITS.per_stream
            ))),
            (RegisterConsumerOutcome::TooManyCreating, _) => {
                Err(ErrorCode::LimitExceeded.status(format!(
                    "Account {} already has {} consumers in CREATING status; wait for them to become ACTIVE.",
                    request.account_id, LIMITS.creating_per_account
                )))
            }
            (outcome, _) => Err(internal(anyhow::anyhow!(
                "membership answered a registration with {outcome:?}"
            ))),
        }
    }

    /// The consumer `selector` names, on its stream.
    async fn selected_consumer(
        &self,
        selector: &ConsumerSelector,
    ) -> Result<(ConsumerRow, StreamRow), Status> {
        let stream = self.existing_stream(selector).await?;
        let row = self
            .store
            .consumer(stream.stream_uid, &selector.consumer_name)
            .await
            .map_err(internal)?
            .filter(|row| {
                selector.created_epoch_seconds == 0
                    || u64::try_from(row.created_at_ms.div_euclid(1000)).ok()
                        == Some(selector.created_epoch_seconds)
            })
            .ok_or_else(|| consumer_not_found(selector))?;
        Ok((row, stream))
    }

    pub(crate) async fn describe_consumer_checked(
        &self,
        selector: ConsumerSelector,
    ) -> Result<ConsumerInfo, Status> {
        // A subscription's lookup is not a Describe, and a Deregister's is
        // charged to Deregister's own rate when it acts.
        if !matches!(
            selector.api_operation.as_str(),
            "SubscribeToShard" | "DeregisterStreamConsumer"
        ) {
            self.rate_limits.check(
                "DescribeStreamConsumer",
                &selector.account_id,
                &selector.stream_name,
            )?;
        }
        let (row, stream) = self.selected_consumer(&selector).await?;
        Ok(consumer_info(&row, &stream))
    }

    pub(crate) async fn list_consumers_checked(
        &self,
        request: ListStreamConsumersRequest,
    ) -> Result<ListStreamConsumersResponse, Status> {
        self.rate_limits.check(
            "ListStreamConsumers",
            &request.account_id,
            &request.stream_name,
        )?;
        let stream = self.existing_stream(&request).await?;
        if request.stream_created_at_ms != 0
            && !same_creation_time(request.stream_created_at_ms, stream.created_at_ms)
        {
            return Err(ErrorCode::ResourceNotFound.status(format!(
                "Stream {} created at the given StreamCreationTimestamp not found.",
                stream.stream_arn
            )));
        }
        let rows = self
            .store
            .consumers_of(stream.stream_uid)
            .await
            .map_err(internal)?;
        Ok(ListStreamConsumersResponse {
            consumers: rows.iter().map(|row| consumer_info(row, &stream)).collect(),
            stream_arn: stream.stream_arn,
        })
    }

    pub(crate) async fn deregister_consumer_checked(
        &self,
        selector: ConsumerSelector,
    ) -> Result<ConsumerInfo, Status> {
        self.rate_limits.check(
            "DeregisterStreamConsumer",
            &selector.account_id,
            &selector.stream_name,
        )?;
        let (row, stream) = self.selected_consumer(&selector).await?;
        let entry = self
            .membership
            .clone()
            .deregister_consumer(DeregisterConsumerRequest {
                stream_uid: stream.stream_uid,
                consumer_arn: row.consumer_arn.clone(),
                now_ms: now_ms(),
            })
            .await?
            .into_inner()
            .consumer
            .ok_or_else(|| consumer_not_found(&selector))?;
        tracing::info!(consumer = entry.consumer_arn, "consumer deregistered");
        self.consumer_transitions.notify_one();
        Ok(consumer_info_of(&entry, &stream))
    }
}

/// Finishes consumer transitions as they fall due, for as long as this
/// control plane is active: CREATING → ACTIVE and DELETING → gone, each
/// the configured transition time after it began.
pub(crate) async fn run_consumer_transitions(service: ControlPlaneService) {
    let delay_ms = i64::try_from(service.consumer_transition.as_millis()).unwrap_or(500);
    loop {
        let finished = service
            .membership
            .clone()
            .finish_consumer_transitions(FinishConsumerTransitionsRequest {
                now_ms: now_ms(),
                delay_ms,
            })
            .await;
        let wait = match finished.map(tonic::Response::into_inner) {
            Ok(done) => {
                if done.activated > 0 || done.removed > 0 {
                    tracing::debug!(
                        activated = done.activated,
                        removed = done.removed,
                        "consumer transitions finished"
                    );
                }
                if done.next_due_ms == 0 {
                    IDLE_POLL
                } else {
                    let until = u64::try_from(done.next_due_ms - now_ms()).unwrap_or(0);
                    Duration::from_millis(until.max(10)).min(IDLE_POLL)
                }
            }
            Err(status) => {
                tracing::warn!(
                    code = ?status.code(),
                    message = status.message(),
                    "consumer transitions failed"
                );
                Duration::from_secs(1)
            }
        };
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            () = service.consumer_transitions.notified() => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_creation_timestamp_matches_to_the_millisecond_or_to_a_whole_second() {
        let created = 1_700_000_000_123;
        assert!(same_creation_time(created, created));
        assert!(same_creation_time(1_700_000_000_000, created));
        assert!(!same_creation_time(1_700_000_000_124, created));
        assert!(!same_creation_time(1_700_000_001_000, created));
    }
}
