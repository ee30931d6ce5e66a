//! Tags on streams and consumers: the resource a request names (a stream,
//! or one of its consumers by name and registration second), Kinesis's
//! rates for the tagging operations, and the 50-tags-per-resource limit
//! (checked and written in one transaction, `libs/metastore/src/tags.rs`).
//! The frontend has checked the tags' form.

use freshet_errors::ErrorCode;
use freshet_metastore::{StreamRow, TagOutcome, TAGS_PER_RESOURCE};
use freshet_proto::v1::{
    ListTagsRequest, ListTagsResponse, Tag, TagResourceRequest, TagTarget, UntagResourceRequest,
};
use freshet_types::{ConsumerArn, StreamArn, StreamStatus};
use tonic::Status;

use crate::{internal, ControlPlaneService, NamesStream};

/// The operations a tagging request may come from (each has its rate).
const TAGGING_OPERATIONS: [&str; 6] = [
    "AddTagsToStream",
    "RemoveTagsFromStream",
    "ListTagsForStream",
    "TagResource",
    "UntagResource",
    "ListTagsForResource",
];

impl NamesStream for TagTarget {
    fn stream_arn(&self) -> StreamArn {
        StreamArn::new(&self.region, &self.account_id, &self.stream_name)
    }
}

/// The tags a request carries, as (key, value) pairs.
pub(crate) fn tag_pairs(tags: &[Tag]) -> Vec<(String, String)> {
    tags.iter()
        .map(|tag| (tag.key.clone(), tag.value.clone()))
        .collect()
}

/// Tags change while the stream is ACTIVE or UPDATING, not while it is
/// being created or deleted (ResourceInUseException).
fn changeable(stream: &StreamRow) -> Result<(), Status> {
    if matches!(
        stream.status,
        StreamStatus::Creating | StreamStatus::Deleting
    ) {
        return Err(ErrorCode::ResourceInUse.status(format!(
            "Stream {} is {}: tags can be changed once it is ACTIVE.",
            stream.stream_name, stream.status
        )));
    }
    Ok(())
}

impl ControlPlaneService {
    /// The stream, and the ARN of the resource the target names (the
    /// stream's, or its consumer's), after the operation's rate.
    async fn tagged_resource(
        &self,
        target: Option<&TagTarget>,
    ) -> Result<(StreamRow, String), Status> {
        let target =
            target.ok_or_else(|| ErrorCode::InvalidArgument.status("target is required"))?;
        let operation = TAGGING_OPERATIONS
            .iter()
            .find(|name| **name == target.api_operation)
            .ok_or_else(|| {
                ErrorCode::InvalidArgument.status(format!(
                    "{} is not a tagging operation",
                    target.api_operation
                ))
            })?;
        self.rate_limits
            .check(operation, &target.account_id, &target.stream_name)?;
        let stream = self.existing_stream(target).await?;
        if target.consumer_name.is_empty() {
            let arn = stream.stream_arn.clone();
            return Ok((stream, arn));
        }
        let wanted = ConsumerArn::new(
            target.stream_arn(),
            &target.consumer_name,
            target.consumer_created_epoch_seconds,
        );
        let consumer = self
            .store
            .consumer(stream.stream_uid, &target.consumer_name)
            .await
            .map_err(internal)?
            .filter(|row| row.consumer_arn == wanted.to_string())
            .ok_or_else(|| {
                ErrorCode::ResourceNotFound.status(format!("Consumer {wanted} not found."))
            })?;
        Ok((stream, consumer.consumer_arn))
    }

    pub(crate) async fn tag_resource_checked(
        &self,
        request: TagResourceRequest,
    ) -> Result<(), Status> {
        let (stream, arn) = self.tagged_resource(request.target.as_ref()).await?;
        changeable(&stream)?;
        let outcome = self
            .store
            .tag_resource(stream.stream_uid, &arn, &tag_pairs(&request.tags))
            .await
            .map_err(internal)?;
        match outcome {
            TagOutcome::Tagged => Ok(()),
            TagOutcome::TooMany => Err(ErrorCode::InvalidArgument.status(format!(
                "Failed to add tags to {arn} because a resource may have at most {TAGS_PER_RESOURCE} tags."
            ))),
            TagOutcome::NotFound => {
                Err(ErrorCode::ResourceNotFound.status(format!("Resource {arn} not found.")))
            }
        }
    }

    pub(crate) async fn untag_resource_checked(
        &self,
        request: UntagResourceRequest,
    ) -> Result<(), Status> {
        let (stream, arn) = self.tagged_resource(request.target.as_ref()).await?;
        changeable(&stream)?;
        self.store
            .untag_resource(stream.stream_uid, &arn, &request.keys)
            .await
            .map_err(internal)
    }

    pub(crate) async fn list_tags_checked(
        &self,
        request: ListTagsRequest,
    ) -> Result<ListTagsResponse, Status> {
        let (stream, arn) = self.tagged_resource(request.target.as_ref()).await?;
        let tags = self
            .store
            .tags_of(stream.stream_uid, &arn)
            .await
            .map_err(internal)?
            .into_iter()
            .map(|(key, value)| Tag { key, value })
            .collect();
        Ok(ListTagsResponse { tags })
    }
}
