//! Tags on streams and consumers: AddTagsToStream, RemoveTagsFromStream and
//! ListTagsForStream by stream name or ARN; TagResource, UntagResource and
//! ListTagsForResource by the ARN of a stream or of a consumer; and the
//! Tags of CreateStream and RegisterStreamConsumer (checked here with
//! [`check_tags`]).
//!
//! What the model constrains (entries, lengths) is a ValidationException;
//! what Kinesis itself refuses — characters outside its set, the reserved
//! `aws:` prefix, more than 50 tags on one resource — is an
//! InvalidArgumentException, before anything changes. The control plane
//! stores them (`services/control-plane/src/tags.rs`).

use std::collections::HashMap;

use freshet_proto::v1::{
    ListTagsRequest, Tag, TagResourceRequest, TagTarget, UntagResourceRequest,
};
use freshet_types::{ConsumerArn, StreamArn};
use serde::Deserialize;
use serde_json::{json, Value};

use super::StreamTarget;
use crate::auth::Caller;
use crate::error::{KinesisError, KinesisResult, Violations};
use crate::Frontend;

/// The most tags one resource may have.
pub const TAGS_PER_RESOURCE: usize = 50;
/// ListTagsForStream's page when the request gives no Limit.
const DEFAULT_LIST_LIMIT: usize = 10;

/// Whether a character may appear in a tag: Unicode letters and digits,
/// spaces (no tabs or line breaks), and `_ . / = + - % @ :`.
fn allowed(c: char) -> bool {
    c.is_alphanumeric() || (c.is_whitespace() && !c.is_control()) || "_./=+-%@:".contains(c)
}

/// Checks a Tags map against the model's limits (Kinesis's own rules come
/// after the violations are reported: [`refuse_bad_tags`]).
pub fn check_tags(tags: Option<&HashMap<String, String>>, violations: &mut Violations) {
    let Some(tags) = tags else {
        return;
    };
    if tags.is_empty() || tags.len() > 200 {
        violations.add(
            Some(&tags.len().to_string()),
            "tags",
            "Member must have length less than or equal to 200 and greater than or equal to 1",
        );
    }
    for (key, value) in tags {
        violations.check_length(Some(key), "tags.key", 1, 128);
        violations.check_length(Some(value), "tags.value", 0, 256);
    }
}

/// Kinesis's rules for tags that passed the model's: checked after the
/// violations are reported.
pub fn refuse_bad_tags<'a>(
    keys: impl IntoIterator<Item = &'a String>,
    values: impl IntoIterator<Item = &'a String>,
) -> KinesisResult<()> {
    let keys: Vec<&String> = keys.into_iter().collect();
    let texts = keys.iter().copied().chain(values);
    for text in texts {
        if !text.chars().all(allowed) {
            return Err(KinesisError::invalid_argument(
                "Some tags contain invalid characters. Valid characters: Unicode letters, digits, white space, _ . / = + - % @ :.",
            ));
        }
    }
    if let Some(key) = keys
        .iter()
        .find(|key| key.to_lowercase().starts_with("aws:"))
    {
        return Err(KinesisError::invalid_argument(format!(
            "Tag key {key} starts with aws:, which is reserved for AWS's own tags."
        )));
    }
    Ok(())
}

/// `tags` in the control plane's shape, by key.
pub fn tag_list(tags: &HashMap<String, String>) -> Vec<Tag> {
    let mut list: Vec<Tag> = tags
        .iter()
        .map(|(key, value)| Tag {
            key: key.clone(),
            value: value.clone(),
        })
        .collect();
    list.sort_by(|a, b| a.key.cmp(&b.key));
    list
}

/// Checks CreateStream's or RegisterStreamConsumer's Tags fully: they land
/// on a resource without tags, so at most 50.
pub fn checked_new_tags(tags: Option<&HashMap<String, String>>) -> KinesisResult<Vec<Tag>> {
    let Some(tags) = tags else {
        return Ok(Vec::new());
    };
    refuse_bad_tags(tags.keys(), tags.values())?;
    if tags.len() > TAGS_PER_RESOURCE {
        return Err(KinesisError::invalid_argument(format!(
            "A resource may have at most {TAGS_PER_RESOURCE} tags; {} were given.",
            tags.len()
        )));
    }
    Ok(tag_list(tags))
}

fn check_tag_keys(keys: Option<&Vec<String>>, violations: &mut Violations) {
    violations.check_required(keys, "tagKeys");
    if let Some(keys) = keys {
        if keys.is_empty() || keys.len() > 50 {
            violations.add(
                Some(&keys.len().to_string()),
                "tagKeys",
                "Member must have length less than or equal to 50 and greater than or equal to 1",
            );
        }
        for key in keys {
            violations.check_length(Some(key), "tagKeys.member", 1, 128);
        }
    }
}

fn target_of(stream: &StreamArn, consumer: Option<&ConsumerArn>, operation: &str) -> TagTarget {
    TagTarget {
        account_id: stream.account_id.clone(),
        region: stream.region.clone(),
        stream_name: stream.stream_name.clone(),
        consumer_name: consumer
            .map(|c| c.consumer_name.clone())
            .unwrap_or_default(),
        consumer_created_epoch_seconds: consumer.map_or(0, |c| c.created_epoch_seconds),
        api_operation: operation.to_owned(),
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct AddTagsToStreamInput {
    #[serde(flatten)]
    pub target: StreamTarget,
    pub tags: Option<HashMap<String, String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RemoveTagsFromStreamInput {
    #[serde(flatten)]
    pub target: StreamTarget,
    pub tag_keys: Option<Vec<String>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListTagsForStreamInput {
    #[serde(flatten)]
    pub target: StreamTarget,
    pub exclusive_start_tag_key: Option<String>,
    pub limit: Option<i64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ResourceTagsInput {
    #[serde(rename = "ResourceARN")]
    pub resource_arn: Option<String>,
    pub stream_id: Option<String>,
    pub tags: Option<HashMap<String, String>>,
    pub tag_keys: Option<Vec<String>>,
}

pub async fn add_tags_to_stream(
    frontend: &Frontend,
    caller: &Caller,
    input: AddTagsToStreamInput,
) -> KinesisResult<()> {
    let mut violations = Violations::default();
    input.target.check(&mut violations);
    violations.check_required(input.tags.as_ref(), "tags");
    check_tags(input.tags.as_ref(), &mut violations);
    violations.into_result()?;
    let tags = input.tags.unwrap_or_default();
    refuse_bad_tags(tags.keys(), tags.values())?;
    let stream = input.target.resolve(caller).await?;
    tag(frontend, target_of(&stream, None, "AddTagsToStream"), &tags).await
}

pub async fn remove_tags_from_stream(
    frontend: &Frontend,
    caller: &Caller,
    input: RemoveTagsFromStreamInput,
) -> KinesisResult<()> {
    let mut violations = Violations::default();
    input.target.check(&mut violations);
    check_tag_keys(input.tag_keys.as_ref(), &mut violations);
    violations.into_result()?;
    let keys = input.tag_keys.unwrap_or_default();
    refuse_bad_tags(keys.iter(), std::iter::empty())?;
    let stream = input.target.resolve(caller).await?;
    untag(
        frontend,
        target_of(&stream, None, "RemoveTagsFromStream"),
        keys,
    )
    .await
}

pub async fn list_tags_for_stream(
    frontend: &Frontend,
    caller: &Caller,
    input: ListTagsForStreamInput,
) -> KinesisResult<Value> {
    let mut violations = Violations::default();
    input.target.check(&mut violations);
    violations.check_length(
        input.exclusive_start_tag_key.as_deref(),
        "exclusiveStartTagKey",
        1,
        128,
    );
    violations.check_range(input.limit, "limit", 1, 50);
    violations.into_result()?;
    let stream = input.target.resolve(caller).await?;
    let tags = list(frontend, target_of(&stream, None, "ListTagsForStream")).await?;
    let limit = input
        .limit
        .and_then(|n| usize::try_from(n).ok())
        .unwrap_or(DEFAULT_LIST_LIMIT);
    // By key (in byte order, as the control plane answers them), after the
    // exclusive start (a key that is not there starts after where it
    // would be).
    let after: Vec<&Tag> = tags
        .iter()
        .filter(|tag| {
            input
                .exclusive_start_tag_key
                .as_deref()
                .is_none_or(|start| tag.key.as_str() > start)
        })
        .collect();
    let page: Vec<Value> = after
        .iter()
        .take(limit)
        .map(|tag| json!({ "Key": tag.key, "Value": tag.value }))
        .collect();
    Ok(json!({ "Tags": page, "HasMoreTags": after.len() > limit }))
}

/// The stream or consumer a ResourceARN names, once the caller may act on
/// it: (its stream, the consumer if it is one).
async fn resource(
    caller: &Caller,
    input: &ResourceTagsInput,
    violations: Violations,
) -> KinesisResult<(StreamArn, Option<ConsumerArn>)> {
    let mut violations = violations;
    super::check_resource_arn(
        input.resource_arn.as_deref(),
        input.stream_id.as_deref(),
        &mut violations,
    );
    violations.into_result()?;
    let text = input.resource_arn.as_deref().unwrap_or_default();
    let not_found = || KinesisError::resource_not_found(format!("Resource {text} not found."));
    if text.contains("/consumer/") {
        let arn = ConsumerArn::parse(text).ok_or_else(not_found)?;
        let arn = caller.consumer_in_region(arn)?;
        caller.authorize_consumer(&arn).await?;
        return Ok((arn.stream.clone(), Some(arn)));
    }
    // Rebuilt in this deployment's partition, the form policies are kept
    // under (another partition's spelling must not miss the stream's).
    let stream = StreamArn::parse(text)
        .filter(|arn| {
            !arn.stream_name.contains('/') && freshet_types::is_valid_stream_name(&arn.stream_name)
        })
        .map(|arn| StreamArn::new(&arn.region, &arn.account_id, &arn.stream_name))
        .ok_or_else(not_found)?;
    if stream.region != caller.own_stream(&stream.stream_name).region {
        return Err(not_found());
    }
    caller.authorize_stream(&stream).await?;
    Ok((stream, None))
}

pub async fn tag_resource(
    frontend: &Frontend,
    caller: &Caller,
    input: ResourceTagsInput,
) -> KinesisResult<()> {
    let mut violations = Violations::default();
    violations.check_required(input.tags.as_ref(), "tags");
    check_tags(input.tags.as_ref(), &mut violations);
    let (stream, consumer) = resource(caller, &input, violations).await?;
    let tags = input.tags.unwrap_or_default();
    refuse_bad_tags(tags.keys(), tags.values())?;
    tag(
        frontend,
        target_of(&stream, consumer.as_ref(), "TagResource"),
        &tags,
    )
    .await
}

pub async fn untag_resource(
    frontend: &Frontend,
    caller: &Caller,
    input: ResourceTagsInput,
) -> KinesisResult<()> {
    let mut violations = Violations::default();
    check_tag_keys(input.tag_keys.as_ref(), &mut violations);
    let (stream, consumer) = resource(caller, &input, violations).await?;
    let keys = input.tag_keys.unwrap_or_default();
    refuse_bad_tags(keys.iter(), std::iter::empty())?;
    untag(
        frontend,
        target_of(&stream, consumer.as_ref(), "UntagResource"),
        keys,
    )
    .await
}

pub async fn list_tags_for_resource(
    frontend: &Frontend,
    caller: &Caller,
    input: ResourceTagsInput,
) -> KinesisResult<Value> {
    let (stream, consumer) = resource(caller, &input, Violations::default()).await?;
    let tags = list(
        frontend,
        target_of(&stream, consumer.as_ref(), "ListTagsForResource"),
    )
    .await?;
    let tags: Vec<Value> = tags
        .iter()
        .map(|tag| json!({ "Key": tag.key, "Value": tag.value }))
        .collect();
    Ok(json!({ "Tags": tags }))
}

async fn tag(
    frontend: &Frontend,
    target: TagTarget,
    tags: &HashMap<String, String>,
) -> KinesisResult<()> {
    frontend
        .control_plane
        .clone()
        .tag_resource(TagResourceRequest {
            target: Some(target),
            tags: tag_list(tags),
        })
        .await
        .map_err(|status| KinesisError::from_status(&status))?;
    Ok(())
}

async fn untag(frontend: &Frontend, target: TagTarget, keys: Vec<String>) -> KinesisResult<()> {
    frontend
        .control_plane
        .clone()
        .untag_resource(UntagResourceRequest {
            target: Some(target),
            keys,
        })
        .await
        .map_err(|status| KinesisError::from_status(&status))?;
    Ok(())
}

async fn list(frontend: &Frontend, target: TagTarget) -> KinesisResult<Vec<Tag>> {
    Ok(frontend
        .control_plane
        .clone()
        .list_tags(ListTagsRequest {
            target: Some(target),
        })
        .await
        .map_err(|status| KinesisError::from_status(&status))?
        .into_inner()
        .tags)
}
