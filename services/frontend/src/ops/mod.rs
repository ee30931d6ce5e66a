//! Operation dispatch and what the operations share: request parsing,
//! stream addressing (StreamName or StreamARN), and storage clients.

mod capacity;
mod consumers;
mod distribution;
mod monitoring;
mod policies;
mod records;
mod replies;
mod reshard;
mod retention;
mod shard_filter;
mod shard_reads;
mod streams;
mod tags;

use freshet_errors::ErrorCode;

use freshet_proto::v1::storage_client::StorageClient;
use freshet_server::TracedChannel;
use freshet_types::StreamArn;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::auth::Caller;
use crate::error::{KinesisError, KinesisResult, Violations};
use crate::Frontend;

/// Parses a JSON request body; malformed JSON or a wrongly typed member is a
/// SerializationException, as in Kinesis.
pub(crate) fn parse<T: DeserializeOwned>(body: &[u8]) -> KinesisResult<T> {
    let body: &[u8] = if body.iter().all(u8::is_ascii_whitespace) {
        b"{}"
    } else {
        body
    };
    serde_json::from_slice(body).map_err(|error| KinesisError::serialization(error.to_string()))
}

/// A reply body built as a JSON value (control-plane operations, where a
/// few allocations per call do not matter).
fn text_of(value: Value) -> Option<String> {
    Some(value.to_string())
}

/// A reply body serialized straight from typed, borrowed data: the
/// data-plane operations, whose replies carry up to 10,000 records.
pub(crate) fn to_json_text<T: serde::Serialize>(reply: &T) -> KinesisResult<String> {
    serde_json::to_string(reply)
        .map_err(|error| KinesisError::internal(format!("encode the reply: {error}")))
}

/// What an operation answers with.
pub enum Reply {
    /// The JSON text of its reply; `None` for an empty 200 response.
    Json(Option<String>),
    /// SubscribeToShard's event stream, produced as it is sent.
    EventStream(axum::body::Body),
}

/// Runs one operation.
/// `body` is the request's JSON form (CBOR is read into it first); the
/// protocol says how SubscribeToShard's events are written.
pub async fn serve(
    frontend: &std::sync::Arc<Frontend>,
    operation: &str,
    caller: &Caller,
    body: &[u8],
    protocol: crate::cbor::Protocol,
) -> KinesisResult<Reply> {
    if operation == "SubscribeToShard" {
        return records::subscribe_to_shard(frontend, caller, parse(body)?, protocol)
            .await
            .map(Reply::EventStream);
    }
    dispatch(frontend, operation, caller, body)
        .await
        .map(Reply::Json)
}

/// Runs one operation answered in JSON; the text of its reply, `Ok(None)`
/// for an empty 200 response.
pub async fn dispatch(
    frontend: &Frontend,
    operation: &str,
    caller: &Caller,
    body: &[u8],
) -> KinesisResult<Option<String>> {
    match operation {
        "CreateStream" => streams::create_stream(frontend, caller, parse(body)?)
            .await
            .map(|()| None),
        "DeleteStream" => streams::delete_stream(frontend, caller, parse(body)?)
            .await
            .map(|()| None),
        "DescribeStream" => streams::describe_stream(frontend, caller, parse(body)?)
            .await
            .map(text_of),
        "DescribeStreamSummary" => streams::describe_stream_summary(frontend, caller, parse(body)?)
            .await
            .map(text_of),
        "ListStreams" => streams::list_streams(frontend, caller, parse(body)?)
            .await
            .map(text_of),
        "ListShards" => streams::list_shards(frontend, caller, parse(body)?)
            .await
            .map(text_of),
        "PutRecord" => records::put_record(frontend, caller, parse(body)?)
            .await
            .map(Some),
        "PutRecords" => records::put_records(frontend, caller, parse(body)?)
            .await
            .map(Some),
        "GetShardIterator" => records::get_shard_iterator(frontend, caller, parse(body)?)
            .await
            .map(text_of),
        "GetRecords" => records::get_records(frontend, caller, parse(body)?)
            .await
            .map(Some),
        "SplitShard" => reshard::split_shard(frontend, caller, parse(body)?)
            .await
            .map(|()| None),
        "MergeShards" => reshard::merge_shards(frontend, caller, parse(body)?)
            .await
            .map(|()| None),
        "UpdateShardCount" => reshard::update_shard_count(frontend, caller, parse(body)?)
            .await
            .map(text_of),
        "UpdateMaxRecordSize" => reshard::update_max_record_size(frontend, caller, parse(body)?)
            .await
            .map(|()| None),
        "UpdateStreamMode" => capacity::update_stream_mode(frontend, caller, parse(body)?)
            .await
            .map(|()| None),
        "UpdateStreamWarmThroughput" => {
            capacity::update_stream_warm_throughput(frontend, caller, parse(body)?)
                .await
                .map(text_of)
        }
        "UpdateAccountSettings" => {
            capacity::update_account_settings(frontend, caller, parse(body)?)
                .await
                .map(text_of)
        }
        "PutResourcePolicy" => policies::put_resource_policy(frontend, caller, parse(body)?)
            .await
            .map(|()| None),
        "GetResourcePolicy" => policies::get_resource_policy(frontend, caller, parse(body)?)
            .await
            .map(text_of),
        "DeleteResourcePolicy" => policies::delete_resource_policy(frontend, caller, parse(body)?)
            .await
            .map(|()| None),
        "RegisterStreamConsumer" => {
            consumers::register_stream_consumer(frontend, caller, parse(body)?)
                .await
                .map(text_of)
        }
        "DescribeStreamConsumer" => {
            consumers::describe_stream_consumer(frontend, caller, parse(body)?)
                .await
                .map(text_of)
        }
        "ListStreamConsumers" => consumers::list_stream_consumers(frontend, caller, parse(body)?)
            .await
            .map(text_of),
        "DeregisterStreamConsumer" => {
            consumers::deregister_stream_consumer(frontend, caller, parse(body)?)
                .await
                .map(|()| None)
        }
        "AddTagsToStream" => tags::add_tags_to_stream(frontend, caller, parse(body)?)
            .await
            .map(|()| None),
        "RemoveTagsFromStream" => tags::remove_tags_from_stream(frontend, caller, parse(body)?)
            .await
            .map(|()| None),
        "ListTagsForStream" => tags::list_tags_for_stream(frontend, caller, parse(body)?)
            .await
            .map(text_of),
        "TagResource" => tags::tag_resource(frontend, caller, parse(body)?)
            .await
            .map(|()| None),
        "UntagResource" => tags::untag_resource(frontend, caller, parse(body)?)
            .await
            .map(|()| None),
        "ListTagsForResource" => tags::list_tags_for_resource(frontend, caller, parse(body)?)
            .await
            .map(text_of),
        "EnableEnhancedMonitoring" => {
            monitoring::enable_enhanced_monitoring(frontend, caller, parse(body)?)
                .await
                .map(text_of)
        }
        "DisableEnhancedMonitoring" => {
            monitoring::disable_enhanced_monitoring(frontend, caller, parse(body)?)
                .await
                .map(text_of)
        }
        "IncreaseStreamRetentionPeriod" => {
            retention::increase_stream_retention_period(frontend, caller, parse(body)?)
                .await
                .map(|()| None)
        }
        "DecreaseStreamRetentionPeriod" => {
            retention::decrease_stream_retention_period(frontend, caller, parse(body)?)
                .await
                .map(|()| None)
        }
        "UpdateStreamRecordDistributionStrategy" => {
            distribution::update_stream_record_distribution_strategy(frontend, caller, parse(body)?)
                .await
                .map(|()| None)
        }
        "DescribeLimits" => {
            let _: serde_json::Map<String, Value> = parse(body)?;
            capacity::describe_limits(frontend, caller)
                .await
                .map(text_of)
        }
        "DescribeAccountSettings" => {
            let _: serde_json::Map<String, Value> = parse(body)?;
            capacity::describe_account_settings(frontend, caller)
                .await
                .map(text_of)
        }
        other => Err(unknown_operation(other)),
    }
}

/// Checks a ResourceARN member (and the StreamId beside it) against the
/// model: required, 1–2048 characters, a Kinesis stream, channel or queue
/// ARN of a 12-digit account.
pub(crate) fn check_resource_arn(
    resource_arn: Option<&str>,
    stream_id: Option<&str>,
    violations: &mut Violations,
) {
    StreamTarget {
        stream_name: None,
        stream_arn: None,
        stream_id: stream_id.map(str::to_owned),
    }
    .check(violations);
    violations.check_required(resource_arn, "resourceARN");
    violations.check_length(resource_arn, "resourceARN", 1, 2048);
    let text = resource_arn.unwrap_or_default();
    let well_formed = text.starts_with("arn:aws")
        && text.split(':').nth(2) == Some("kinesis")
        && text
            .split(':')
            .nth(4)
            .is_some_and(|a| a.len() == 12 && a.bytes().all(|b| b.is_ascii_digit()))
        && ["stream/", "channel/", "queue/"].iter().any(|kind| {
            // `(stream|channel|queue)/\S+`: something after the slash, and
            // no white space in it.
            text.split_once(kind)
                .is_some_and(|(_, rest)| !rest.is_empty() && !rest.chars().any(char::is_whitespace))
        });
    if resource_arn.is_some() && !well_formed {
        violations.add(
            Some(text),
            "resourceARN",
            "Member must satisfy regular expression pattern: arn:aws.*:kinesis:.*:\\d{12}:.*(stream|channel|queue)/\\S+",
        );
    }
}

/// How a request names its stream. `StreamId` is accepted (and checked)
/// but never used or returned: returning it makes newer AWS clients send
/// requests to AWS's own endpoints instead of ours.
#[derive(Debug, Default, Clone, serde::Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct StreamTarget {
    pub stream_name: Option<String>,
    #[serde(rename = "StreamARN")]
    pub stream_arn: Option<String>,
    pub stream_id: Option<String>,
}

impl StreamTarget {
    pub fn check(&self, violations: &mut Violations) {
        violations.check_stream_name(self.stream_name.as_deref(), "streamName");
        violations.check_length(self.stream_arn.as_deref(), "streamARN", 1, 2048);
        if let Some(arn) = self.stream_arn.as_deref() {
            if !arn.is_empty() && StreamArn::parse(arn).is_none() {
                violations.add(Some(arn), "streamARN", "Member must satisfy regular expression pattern: arn:aws.*:kinesis:.*:\\d{12}:stream/\\S+");
            }
        }
        if let Some(id) = self.stream_id.as_deref() {
            let valid = id.len() == 24
                && id.bytes().enumerate().all(|(i, b)| {
                    if i == 20 {
                        b == b'-'
                    } else {
                        b.is_ascii_lowercase() || b.is_ascii_digit()
                    }
                });
            if !valid {
                violations.add(
                    Some(id),
                    "streamId",
                    "Member must satisfy regular expression pattern: [a-z0-9]{20}-[a-z0-9]{3}",
                );
            }
        }
    }

    /// The stream the request names, once the caller is authorized to act
    /// on it (`access.rs`). A StreamName names a stream of the caller's
    /// account in the request's region; a StreamARN may name another
    /// account's stream, which its resource policy must then allow.
    pub async fn resolve(&self, caller: &Caller) -> KinesisResult<StreamArn> {
        let stream = self.stream(caller)?;
        caller.authorize_stream(&stream).await?;
        Ok(stream)
    }

    /// The stream named, before any authorization.
    pub(crate) fn stream(&self, caller: &Caller) -> KinesisResult<StreamArn> {
        let from_arn = self.stream_arn.as_deref().and_then(StreamArn::parse);
        match (&self.stream_name, from_arn) {
            (None, None) => Err(KinesisError::invalid_argument(
                "Either StreamName or StreamARN must be provided.",
            )),
            (Some(name), None) => Ok(caller.own_stream(name)),
            (name, Some(arn)) => {
                // The ARN's pattern allows any non-space name; the name in
                // it passes the same checks as a StreamName.
                if !freshet_types::is_valid_stream_name(&arn.stream_name) {
                    return Err(KinesisError::invalid_argument(format!(
                        "The stream name in StreamARN must be 1 to 128 of [a-zA-Z0-9_.-], not '{}'.",
                        arn.stream_name
                    )));
                }
                if name.as_ref().is_some_and(|name| *name != arn.stream_name) {
                    return Err(KinesisError::invalid_argument(
                        "StreamName and StreamARN name different streams.",
                    ));
                }
                // Streams live in a region: this endpoint serves the
                // request's region only.
                if arn.region != caller.region {
                    return Err(KinesisError::stream_not_found(&arn));
                }
                // Rebuilt in this deployment's partition (`aws`), the form
                // every key and index holds.
                Ok(StreamArn::new(
                    &arn.region,
                    &arn.account_id,
                    &arn.stream_name,
                ))
            }
        }
    }
}

/// Parses `body` as the input of operation number `selector` (of every
/// operation served), for the fuzz target of the frontend's inputs: each
/// either parses or is refused as a SerializationException, in memory
/// bounded by the body's size (PutRecords stops at its 501st record).
pub(crate) fn parse_any_input(selector: u8, body: &[u8]) -> bool {
    fn parses<T: DeserializeOwned>(body: &[u8]) -> bool {
        match parse::<T>(body) {
            Ok(_) => true,
            Err(error) => {
                assert_eq!(error.exception(), "SerializationException");
                false
            }
        }
    }
    match selector % 27 {
        0 => parses::<streams::CreateStreamInput>(body),
        1 => parses::<streams::DeleteStreamInput>(body),
        2 => parses::<streams::DescribeStreamInput>(body),
        3 => parses::<StreamTarget>(body),
        4 => parses::<streams::ListStreamsInput>(body),
        5 => parses::<streams::ListShardsInput>(body),
        6 => parses::<records::PutRecordInput>(body),
        7 => parses::<records::PutRecordsInput>(body),
        8 => parses::<records::GetShardIteratorInput>(body),
        9 => parses::<records::GetRecordsInput>(body),
        10 => parses::<reshard::SplitShardInput>(body),
        11 => parses::<reshard::MergeShardsInput>(body),
        12 => parses::<reshard::UpdateShardCountInput>(body),
        13 => parses::<reshard::UpdateMaxRecordSizeInput>(body),
        14 => parses::<capacity::UpdateStreamModeInput>(body),
        15 => parses::<capacity::UpdateStreamWarmThroughputInput>(body),
        16 => parses::<capacity::UpdateAccountSettingsInput>(body),
        17 => parses::<policies::ResourcePolicyInput>(body),
        18 => parses::<consumers::RegisterStreamConsumerInput>(body),
        19 => parses::<consumers::ConsumerTargetInput>(body),
        20 => parses::<records::SubscribeToShardInput>(body),
        21 => parses::<tags::AddTagsToStreamInput>(body),
        22 => parses::<tags::RemoveTagsFromStreamInput>(body),
        23 => parses::<tags::ListTagsForStreamInput>(body),
        24 => parses::<tags::ResourceTagsInput>(body),
        25 => parses::<monitoring::EnhancedMonitoringInput>(body),
        _ => parses::<consumers::ListStreamConsumersInput>(body),
    }
}

/// One lazily connected client per storage worker address.
pub struct StoragePool {
    clients: freshet_server::StorageClients,
}

impl StoragePool {
    /// Clients whose calls present the deployment's internal token.
    pub fn new(token: &freshet_server::InternalToken) -> StoragePool {
        StoragePool {
            clients: freshet_server::StorageClients::new(token),
        }
    }

    /// Clients for SubscribeToShard's `Follow` streams, on connections of
    /// their own (see `StorageClients::for_streams`).
    pub fn for_follows(token: &freshet_server::InternalToken) -> StoragePool {
        StoragePool {
            clients: freshet_server::StorageClients::for_streams(token),
        }
    }

    pub fn client(&self, address: &str) -> KinesisResult<StorageClient<TracedChannel>> {
        self.clients
            .get(address)
            .map_err(|error| KinesisError::internal(error.to_string()))
    }
}

/// Epoch seconds with millisecond precision, as the JSON protocol writes timestamps.
pub(crate) fn epoch_seconds(ms: i64) -> Value {
    serde_json::Number::from_f64(replies::epoch_seconds(ms))
        .map(Value::Number)
        .unwrap_or(Value::Null)
}

/// Operations of the current Kinesis API that are not served yet: they get
/// a clear "not implemented" error rather than UnknownOperationException.
const NOT_YET_IMPLEMENTED: &[&str] = &[
    "AcknowledgeDeadLetterQueueRecords",
    "AcknowledgeQueueRecords",
    "CreateChannel",
    "CreateQueue",
    "DeleteChannel",
    "DeleteQueue",
    "DescribeChannel",
    "DescribeQueue",
    "ListChannels",
    "ListQueues",
    "ReceiveDeadLetterQueueRecords",
    "ReceiveQueueRecords",
    "RestoreDeadLetterQueueRecords",
    "StartStreamEncryption",
    "StopStreamEncryption",
    "UpdateChannel",
    "UpdateDeadLetterQueueRecordsVisibility",
    "UpdateQueue",
    "UpdateQueueRecordsVisibility",
];

/// Decides what an `X-Amz-Target` names, for the dispatcher's fallback.
pub fn unknown_operation(operation: &str) -> KinesisError {
    if NOT_YET_IMPLEMENTED.contains(&operation) {
        KinesisError::not_implemented(operation)
    } else {
        KinesisError::new(ErrorCode::UnknownOperation, "")
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::resource_policies::ResourcePolicies;

    fn caller() -> Caller {
        let nowhere =
            freshet_server::grpc_channel("127.0.0.1:1", &freshet_server::InternalToken::none())
                .expect("a lazy channel");
        Caller {
            account_id: "123456789012".into(),
            principal: freshet_types::Principal::Root {
                account: "123456789012".parse().expect("account"),
            },
            region: "us-east-1".into(),
            policies: Arc::from([]),
            action: "kinesis:DescribeStream".into(),
            source: None,
            resource_policies: Arc::new(ResourcePolicies::new(
                freshet_proto::v1::control_plane_client::ControlPlaneClient::new(nowhere),
            )),
        }
    }

    #[test]
    fn a_resource_arn_names_something_after_its_kind() {
        let refused = |arn: &str| {
            let mut violations = Violations::default();
            check_resource_arn(Some(arn), None, &mut violations);
            violations.into_result().is_err()
        };
        assert!(!refused(
            "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
        ));
        assert!(refused("arn:aws:kinesis:us-east-1:123456789012:stream/"));
        assert!(refused("arn:aws:kinesis:us-east-1:123456789012:stream/a b"));
        assert!(refused(
            "arn:aws:kinesis:us-east-1:123456789012:table/orders"
        ));
    }

    fn by_arn(arn: &str) -> StreamTarget {
        StreamTarget {
            stream_arn: Some(arn.to_owned()),
            ..StreamTarget::default()
        }
    }

    #[tokio::test]
    async fn a_stream_arn_names_a_stream_whose_name_passes_the_stream_name_checks() {
        let caller = caller();
        assert_eq!(
            by_arn("arn:aws:kinesis:us-east-1:123456789012:stream/orders.v2")
                .stream(&caller)
                .expect("valid")
                .stream_name,
            "orders.v2"
        );
        for bad in [
            "arn:aws:kinesis:us-east-1:123456789012:stream/a/b",
            "arn:aws:kinesis:us-east-1:123456789012:stream/caf\u{e9}",
            &format!(
                "arn:aws:kinesis:us-east-1:123456789012:stream/{}",
                "x".repeat(129)
            ),
        ] {
            assert_eq!(
                by_arn(bad).stream(&caller).err().map(|e| e.exception()),
                Some("InvalidArgumentException"),
                "{bad}"
            );
        }
    }

    #[tokio::test]
    async fn a_name_is_the_callers_own_stream_and_an_arn_may_be_another_accounts() {
        let caller = caller();
        let own = StreamTarget {
            stream_name: Some("orders".into()),
            ..StreamTarget::default()
        };
        assert_eq!(
            own.stream(&caller).expect("valid").to_string(),
            "arn:aws:kinesis:us-east-1:123456789012:stream/orders"
        );
        // Whether the other account lets the caller in is for its resource
        // policy to say (access.rs), not for the name lookup.
        assert_eq!(
            by_arn("arn:aws:kinesis:us-east-1:999999999999:stream/orders")
                .stream(&caller)
                .expect("another account's stream")
                .account_id,
            "999999999999"
        );
        // This endpoint serves its request's region only.
        assert_eq!(
            by_arn("arn:aws:kinesis:eu-west-1:123456789012:stream/orders")
                .stream(&caller)
                .err()
                .map(|e| e.exception()),
            Some("ResourceNotFoundException")
        );
    }
}
