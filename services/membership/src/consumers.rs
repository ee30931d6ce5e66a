//! Enhanced fan-out consumers through the change log: the control plane
//! decides when a consumer is registered, deregistered or done with a
//! transition; membership, the log's only writer, changes the consumer rows
//! and records one entry per row changed in the same transaction, then
//! broadcasts them — so a frontend learns a consumer's status as it
//! commits, as it learns a shard's.
//!
//! Invariant (enforced under the publishing lock, as for shards): a stream
//! being deleted gets no new consumer, so none outlives the tombstones its
//! deletion publishes (`publish.rs` removes its consumers in that batch).

use freshet_errors::ErrorCode;
use freshet_metastore::{ConsumerLimits, MetastoreError, RegisterOutcome};
use freshet_proto::v1::{
    DeregisterConsumerRequest, DeregisterConsumerResponse, FinishConsumerTransitionsRequest,
    FinishConsumerTransitionsResponse, RegisterConsumerOutcome, RegisterConsumerRequest,
    RegisterConsumerResponse,
};
use freshet_types::{StreamArn, StreamStatus};
use tonic::Status;

use crate::publish::{consumer_entry, record_consumer, record_consumers};
use crate::service::{store_error, Logged};
use crate::MembershipService;

impl MembershipService {
    pub(crate) async fn register_consumer_logged(
        &self,
        request: RegisterConsumerRequest,
    ) -> Result<RegisterConsumerResponse, Status> {
        if request.consumer_name.is_empty()
            || request.max_per_stream <= 0
            || request.max_creating_per_account <= 0
        {
            return Err(
                ErrorCode::InvalidArgument.status("consumer_name and positive limits are required")
            );
        }
        let _serialised = self.inner.write_lock.lock().await;
        let stream = self
            .inner
            .store
            .get_stream_by_uid(request.stream_uid)
            .await
            .map_err(store_error)?
            .filter(|stream| stream.status != StreamStatus::Deleting)
            .ok_or_else(|| {
                ErrorCode::ResourceNotFound
                    .status(format!("Stream {} not found.", request.stream_uid))
            })?;
        // The consumer's ARN is built on the stream's own.
        let stream_arn = StreamArn::parse(&stream.stream_arn).ok_or_else(|| {
            ErrorCode::Internal.status(format!("stream {} has a bad ARN", stream.stream_uid))
        })?;
        let mut batch = self.begin_batch().await.map_err(store_error)?;
        let limits = ConsumerLimits {
            per_stream: request.max_per_stream,
            creating_per_account: request.max_creating_per_account,
        };
        let tags: Vec<(String, String)> = request
            .tags
            .iter()
            .map(|tag| (tag.key.clone(), tag.value.clone()))
            .collect();
        let outcome = batch
            .register_consumer(
                stream.stream_uid,
                &stream_arn,
                &request.consumer_name,
                limits,
                &tags,
            )
            .await
            .map_err(store_error)?;
        let (outcome, logged) = match &outcome {
            RegisterOutcome::Registered(row) => {
                let logged = record_consumer(&mut batch, row, false)
                    .await
                    .map_err(store_error)?;
                (RegisterConsumerOutcome::Registered, Some(logged))
            }
            RegisterOutcome::NameTaken => (RegisterConsumerOutcome::NameTaken, None),
            RegisterOutcome::StreamFull => (RegisterConsumerOutcome::StreamFull, None),
            RegisterOutcome::TooManyCreating => (RegisterConsumerOutcome::TooManyCreating, None),
            // Dropped uncommitted: the registration is rolled back.
            RegisterOutcome::TooManyTags => {
                return Err(ErrorCode::InvalidArgument.status(format!(
                    "A consumer may have at most {} tags.",
                    freshet_metastore::TAGS_PER_RESOURCE
                )))
            }
        };
        let consumer = match &logged {
            Some(Logged::Consumer(entry)) => Some(entry.clone()),
            _ => None,
        };
        self.commit_locked(batch, logged.into_iter().collect())
            .await
            .map_err(store_error)?;
        Ok(RegisterConsumerResponse {
            outcome: outcome as i32,
            consumer,
        })
    }

    pub(crate) async fn deregister_consumer_logged(
        &self,
        request: DeregisterConsumerRequest,
    ) -> Result<DeregisterConsumerResponse, Status> {
        let _serialised = self.inner.write_lock.lock().await;
        let mut batch = self.begin_batch().await.map_err(store_error)?;
        let row = batch
            .deregister_consumer(request.stream_uid, &request.consumer_arn, request.now_ms)
            .await
            .map_err(store_error)?;
        let logged = record_consumers(&mut batch, row.iter().map(|r| (r, false)).collect())
            .await
            .map_err(store_error)?;
        self.commit_locked(batch, logged)
            .await
            .map_err(store_error)?;
        Ok(DeregisterConsumerResponse {
            consumer: row.map(|row| consumer_entry(&row, false)),
        })
    }

    pub(crate) async fn finish_consumer_transitions_logged(
        &self,
        request: FinishConsumerTransitionsRequest,
    ) -> Result<FinishConsumerTransitionsResponse, Status> {
        let _serialised = self.inner.write_lock.lock().await;
        let mut batch = self.begin_batch().await.map_err(store_error)?;
        let done = batch
            .finish_consumer_transitions(request.now_ms, request.delay_ms)
            .await
            .map_err(store_error)?;
        let changed = (done.activated.iter().map(|row| (row, false)))
            .chain(done.removed.iter().map(|row| (row, true)))
            .collect();
        let logged = record_consumers(&mut batch, changed)
            .await
            .map_err(store_error)?;
        self.commit_locked(batch, logged)
            .await
            .map_err(store_error)?;
        Ok(FinishConsumerTransitionsResponse {
            activated: done.activated.len() as u64,
            removed: done.removed.len() as u64,
            next_due_ms: done.next_due_ms.unwrap_or(0),
        })
    }

    /// Removes the consumers of a stream that has no shards to publish
    /// tombstones for (its placement never committed): with their own
    /// tombstones, so no map keeps them. A stream with shards loses its
    /// consumers in the batch that removes its shards (`publish.rs`).
    pub(crate) async fn remove_consumers_of_shardless(
        &self,
        stream_uid: i64,
    ) -> Result<(), MetastoreError> {
        let _serialised = self.inner.write_lock.lock().await;
        let mut batch = self.begin_batch().await?;
        let removed = batch.remove_consumers_of(stream_uid).await?;
        let logged =
            record_consumers(&mut batch, removed.iter().map(|r| (r, true)).collect()).await?;
        self.commit_locked(batch, logged).await
    }
}
