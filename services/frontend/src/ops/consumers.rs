//! Enhanced fan-out consumers: RegisterStreamConsumer,
//! DescribeStreamConsumer, ListStreamConsumers and DeregisterStreamConsumer.
//! The control plane keeps them (Postgres); this validates, authorizes and
//! shapes the answers.
//!
//! Which resource each operation is authorized on, as in IAM: Register and
//! List act on the stream; Describe and Deregister on the consumer's ARN —
//! when the request names the consumer by stream and name, its ARN is
//! looked up first and nothing is answered or changed until the caller is
//! allowed on it.

use freshet_proto::v1::{
    ConsumerInfo, ConsumerSelector, ListStreamConsumersRequest, RegisterStreamConsumerRequest,
};
use freshet_types::{ConsumerArn, StreamArn};
use serde::Deserialize;
use serde_json::{json, Value};

use super::streams::{open_token, seal_token, PageToken};
use super::{epoch_seconds, StreamTarget};
use crate::auth::Caller;
use crate::error::{KinesisError, KinesisResult, Violations};
use crate::Frontend;

/// The pattern of a consumer ARN, as the API model gives it.
const CONSUMER_ARN_PATTERN: &str = "^(arn):aws.*:kinesis:.*:\\d{12}:.*stream\\/[a-zA-Z0-9_.-]+\\/consumer\\/[a-zA-Z0-9_.-]+:[0-9]+";

/// ListStreamConsumers' default and largest page.
const MAX_CONSUMERS_PER_PAGE: usize = 100;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct RegisterStreamConsumerInput {
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
    pub consumer_name: Option<String>,
    pub stream_id: Option<String>,
    pub tags: Option<std::collections::HashMap<String, String>>,
}

/// DescribeStreamConsumer's and DeregisterStreamConsumer's input: a
/// consumer ARN, or a stream ARN and a consumer name.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ConsumerTargetInput {
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
    pub consumer_name: Option<String>,
    #[serde(rename = "ConsumerARN")]
    pub consumer_arn: Option<String>,
    pub stream_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ListStreamConsumersInput {
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
    pub next_token: Option<String>,
    pub max_results: Option<i64>,
    pub stream_creation_timestamp: Option<f64>,
    pub stream_id: Option<String>,
}

/// Checks a StreamARN member (required or not) and a StreamId.
fn check_stream(
    stream_arn: Option<&String>,
    stream_id: Option<&String>,
    required: bool,
    violations: &mut Violations,
) {
    if required {
        violations.check_required(stream_arn, "streamARN");
    }
    StreamTarget {
        stream_name: None,
        stream_arn: stream_arn.cloned(),
        stream_id: stream_id.cloned(),
    }
    .check(violations);
}

fn check_consumer_name(name: Option<&str>, violations: &mut Violations) {
    violations.check_length(name, "consumerName", 1, 128);
    if let Some(name) = name.filter(|name| !name.is_empty() && name.chars().count() <= 128) {
        if !freshet_types::is_valid_consumer_name(name) {
            violations.add(
                Some(name),
                "consumerName",
                "Member must satisfy regular expression pattern: [a-zA-Z0-9_.-]+",
            );
        }
    }
}

fn check_consumer_arn(arn: Option<&str>, violations: &mut Violations) {
    violations.check_length(arn, "consumerARN", 1, 2048);
    if let Some(arn) = arn.filter(|arn| !arn.is_empty() && arn.len() <= 2048) {
        if ConsumerArn::parse(arn).is_none() {
            violations.add(
                Some(arn),
                "consumerARN",
                &format!("Member must satisfy regular expression pattern: {CONSUMER_ARN_PATTERN}"),
            );
        }
    }
}

/// The stream a StreamARN names, in the request's region (only a stream
/// ARN is a stream ARN here: a consumer's is refused).
fn stream_of(caller: &Caller, text: &str) -> KinesisResult<StreamArn> {
    if ConsumerArn::parse(text).is_some() {
        return Err(KinesisError::invalid_argument(format!(
            "StreamARN {text} is a consumer ARN; give the stream's ARN."
        )));
    }
    super::StreamTarget {
        stream_name: None,
        stream_arn: Some(text.to_owned()),
        stream_id: None,
    }
    .stream(caller)
}

fn status_name(info: &ConsumerInfo) -> KinesisResult<&'static str> {
    freshet_types::ConsumerStatus::try_from(info.status())
        .map(freshet_types::ConsumerStatus::as_str)
        .map_err(|error| KinesisError::internal(error.to_string()))
}

/// A consumer as RegisterStreamConsumer and ListStreamConsumers show it.
fn consumer_json(info: &ConsumerInfo) -> KinesisResult<Value> {
    Ok(json!({
        "ConsumerName": info.consumer_name,
        "ConsumerARN": info.consumer_arn,
        "ConsumerStatus": status_name(info)?,
        "ConsumerCreationTimestamp": epoch_seconds(info.created_at_ms),
    }))
}

pub async fn register_stream_consumer(
    frontend: &Frontend,
    caller: &Caller,
    input: RegisterStreamConsumerInput,
) -> KinesisResult<Value> {
    let mut violations = Violations::default();
    check_stream(
        input.stream_arn.as_ref(),
        input.stream_id.as_ref(),
        true,
        &mut violations,
    );
    violations.check_required(input.consumer_name.as_ref(), "consumerName");
    check_consumer_name(input.consumer_name.as_deref(), &mut violations);
    super::tags::check_tags(input.tags.as_ref(), &mut violations);
    violations.into_result()?;
    let tags = super::tags::checked_new_tags(input.tags.as_ref())?;
    let stream = stream_of(caller, input.stream_arn.as_deref().unwrap_or_default())?;
    caller.authorize_stream(&stream).await?;
    if !tags.is_empty() {
        // The consumer's ARN does not exist yet: its stream's stands in.
        caller
            .authorize_stream_also("kinesis:TagResource", &stream)
            .await?;
    }
    let info = frontend
        .control_plane
        .clone()
        .register_stream_consumer(RegisterStreamConsumerRequest {
            account_id: stream.account_id,
            region: stream.region,
            stream_name: stream.stream_name,
            consumer_name: input.consumer_name.unwrap_or_default(),
            tags,
        })
        .await
        .map_err(|status| KinesisError::from_status(&status))?
        .into_inner();
    Ok(json!({ "Consumer": consumer_json(&info)? }))
}

/// The consumer a Describe or Deregister names, looked up for
/// `api_operation`, once the caller is allowed on its ARN.
async fn authorized_consumer(
    frontend: &Frontend,
    caller: &Caller,
    input: ConsumerTargetInput,
    api_operation: &str,
) -> KinesisResult<ConsumerInfo> {
    let mut violations = Violations::default();
    check_stream(
        input.stream_arn.as_ref(),
        input.stream_id.as_ref(),
        false,
        &mut violations,
    );
    check_consumer_name(input.consumer_name.as_deref(), &mut violations);
    check_consumer_arn(input.consumer_arn.as_deref(), &mut violations);
    violations.into_result()?;
    let selector = match (&input.consumer_arn, &input.stream_arn, &input.consumer_name) {
        (Some(arn), None, None) => {
            let arn = ConsumerArn::parse(arn).ok_or_else(|| {
                KinesisError::invalid_argument(format!("Invalid ConsumerARN: {arn}"))
            })?;
            let arn = caller.consumer_in_region(arn)?;
            // Allowed on the ARN the caller named before anything is read.
            caller.authorize_consumer(&arn).await?;
            selector_of(
                &arn.stream,
                &arn.consumer_name,
                arn.created_epoch_seconds,
                api_operation,
            )
        }
        (None, Some(stream), Some(name)) => {
            let stream = stream_of(caller, stream)?;
            selector_of(&stream, name, 0, api_operation)
        }
        _ => {
            return Err(KinesisError::invalid_argument(
                "Give either ConsumerARN, or both StreamARN and ConsumerName.",
            ))
        }
    };
    let info = frontend
        .control_plane
        .clone()
        .describe_stream_consumer(selector)
        .await
        .map_err(|status| KinesisError::from_status(&status))?
        .into_inner();
    if input.consumer_arn.is_none() {
        let arn = ConsumerArn::parse(&info.consumer_arn).ok_or_else(|| {
            KinesisError::internal("the control plane returned a malformed consumer ARN")
        })?;
        caller.authorize_consumer(&arn).await?;
    }
    Ok(info)
}

fn selector_of(
    stream: &StreamArn,
    consumer_name: &str,
    created_epoch_seconds: u64,
    api_operation: &str,
) -> ConsumerSelector {
    ConsumerSelector {
        account_id: stream.account_id.clone(),
        region: stream.region.clone(),
        stream_name: stream.stream_name.clone(),
        consumer_name: consumer_name.to_owned(),
        created_epoch_seconds,
        api_operation: api_operation.to_owned(),
    }
}

pub async fn describe_stream_consumer(
    frontend: &Frontend,
    caller: &Caller,
    input: ConsumerTargetInput,
) -> KinesisResult<Value> {
    let info = authorized_consumer(frontend, caller, input, "DescribeStreamConsumer").await?;
    let mut description = consumer_json(&info)?;
    description["StreamARN"] = json!(info.stream_arn);
    Ok(json!({ "ConsumerDescription": description }))
}

pub async fn deregister_stream_consumer(
    frontend: &Frontend,
    caller: &Caller,
    input: ConsumerTargetInput,
) -> KinesisResult<()> {
    let info = authorized_consumer(frontend, caller, input, "DeregisterStreamConsumer").await?;
    let arn = ConsumerArn::parse(&info.consumer_arn).ok_or_else(|| {
        KinesisError::internal("the control plane returned a malformed consumer ARN")
    })?;
    frontend
        .control_plane
        .clone()
        .deregister_stream_consumer(selector_of(
            &arn.stream,
            &arn.consumer_name,
            arn.created_epoch_seconds,
            "DeregisterStreamConsumer",
        ))
        .await
        .map_err(|status| KinesisError::from_status(&status))?;
    Ok(())
}

pub async fn list_stream_consumers(
    frontend: &Frontend,
    caller: &Caller,
    input: ListStreamConsumersInput,
) -> KinesisResult<Value> {
    let mut violations = Violations::default();
    check_stream(
        input.stream_arn.as_ref(),
        input.stream_id.as_ref(),
        true,
        &mut violations,
    );
    violations.check_length(input.next_token.as_deref(), "nextToken", 1, 1_048_576);
    violations.check_range(input.max_results, "maxResults", 1, 10_000);
    violations.into_result()?;
    if input.next_token.is_some() && input.stream_creation_timestamp.is_some() {
        return Err(KinesisError::invalid_argument(
            "NextToken and StreamCreationTimestamp cannot be provided together.",
        ));
    }
    let stream = stream_of(caller, input.stream_arn.as_deref().unwrap_or_default())?;
    caller.authorize_stream(&stream).await?;
    let after = match input.next_token.as_deref() {
        Some(text) => {
            let token: PageToken = open_token(frontend, text)?;
            if token.s != stream.to_string() {
                return Err(KinesisError::invalid_argument(format!(
                    "Invalid NextToken: it lists the consumers of another stream than {stream}."
                )));
            }
            Some(token.a)
        }
        None => None,
    };
    let created_ms = input
        .stream_creation_timestamp
        .filter(|seconds| seconds.is_finite())
        .map(|seconds| (seconds * 1000.0).round() as i64)
        .unwrap_or(0);
    let listed = frontend
        .control_plane
        .clone()
        .list_stream_consumers(ListStreamConsumersRequest {
            account_id: stream.account_id.clone(),
            region: stream.region.clone(),
            stream_name: stream.stream_name.clone(),
            stream_created_at_ms: created_ms,
        })
        .await
        .map_err(|status| KinesisError::from_status(&status))?
        .into_inner();
    let limit = input
        .max_results
        .map_or(MAX_CONSUMERS_PER_PAGE, |n| usize::try_from(n).unwrap_or(1))
        .clamp(1, MAX_CONSUMERS_PER_PAGE);
    let remaining: Vec<&ConsumerInfo> = listed
        .consumers
        .iter()
        .filter(|c| {
            after
                .as_deref()
                .is_none_or(|after| c.consumer_name.as_str() > after)
        })
        .collect();
    let page = &remaining[..remaining.len().min(limit)];
    let mut output = json!({
        "Consumers": page.iter().map(|c| consumer_json(c)).collect::<KinesisResult<Vec<_>>>()?,
    });
    if let (true, Some(last)) = (remaining.len() > limit, page.last()) {
        output["NextToken"] = json!(seal_token(
            frontend,
            &PageToken {
                s: stream.to_string(),
                a: last.consumer_name.clone(),
                t: frontend.now_ms(),
                f: None,
                ts: None,
            }
        ));
    }
    Ok(output)
}
