//! SubscribeToShard with the AWS SDK for Rust: records pushed as they
//! commit, every one once and in order, a continuation that resumes
//! exactly (also when the shard is idle), the 5-second takeover rule, the
//! children at a split shard's end, and the refusals before a stream starts.

use std::time::Duration;

use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError;
use aws_sdk_kinesis::types::{
    ConsumerStatus, ShardIteratorType, StartingPosition, SubscribeToShardEvent,
    SubscribeToShardEventStream,
};
use freshet_e2e::raw_http::kinesis_http1;
use freshet_e2e::{create_active_stream, stream_arn, wait_until, Cluster};

type Events = aws_sdk_kinesis::primitives::event_stream::EventReceiver<
    SubscribeToShardEventStream,
    SubscribeToShardEventStreamError,
>;

const SHARD: &str = "shardId-000000000000";

async fn register_active(client: &aws_sdk_kinesis::Client, stream: &str) -> anyhow::Result<String> {
    let arn = client
        .register_stream_consumer()
        .stream_arn(stream_arn(stream).to_string())
        .consumer_name("reader")
        .send()
        .await?
        .consumer
        .map(|c| c.consumer_arn)
        .ok_or_else(|| anyhow::anyhow!("no consumer"))?;
    wait_until(Duration::from_secs(10), || async {
        client
            .describe_stream_consumer()
            .consumer_arn(&arn)
            .send()
            .await
            .ok()
            .and_then(|d| d.consumer_description)
            .is_some_and(|d| d.consumer_status == ConsumerStatus::Active)
    })
    .await?;
    Ok(arn)
}

fn position(kind: ShardIteratorType, sequence: Option<&str>) -> anyhow::Result<StartingPosition> {
    Ok(StartingPosition::builder()
        .r#type(kind)
        .set_sequence_number(sequence.map(str::to_owned))
        .build()?)
}

async fn subscribe(
    client: &aws_sdk_kinesis::Client,
    consumer: &str,
    shard: &str,
    from: StartingPosition,
) -> anyhow::Result<Events> {
    let output = client
        .subscribe_to_shard()
        .consumer_arn(consumer)
        .shard_id(shard)
        .starting_position(from)
        .send()
        .await?;
    Ok(output.event_stream)
}

/// The next event, or `None` when the stream ended; an error event is an
/// error.
async fn next_event(events: &mut Events) -> anyhow::Result<Option<SubscribeToShardEvent>> {
    let received = tokio::time::timeout(Duration::from_secs(20), events.recv())
        .await
        .map_err(|_| anyhow::anyhow!("no event within 20 s"))??;
    match received {
        Some(SubscribeToShardEventStream::SubscribeToShardEvent(event)) => Ok(Some(event)),
        Some(other) => anyhow::bail!("unexpected event {other:?}"),
        None => Ok(None),
    }
}

/// Reads events until `count` records arrived; the records' data and the
/// last event's continuation.
async fn read_records(events: &mut Events, count: usize) -> anyhow::Result<(Vec<String>, String)> {
    let mut data = Vec::new();
    let mut continuation = String::new();
    while data.len() < count {
        let event = next_event(events)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the stream ended after {} records", data.len()))?;
        for record in &event.records {
            data.push(String::from_utf8(record.data.clone().into_inner())?);
        }
        anyhow::ensure!(
            !event.continuation_sequence_number.is_empty(),
            "an event of an open shard without continuation"
        );
        continuation = event.continuation_sequence_number.clone();
    }
    Ok((data, continuation))
}

async fn put(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    range: std::ops::Range<usize>,
) -> anyhow::Result<()> {
    for i in range {
        client
            .put_record()
            .stream_name(stream)
            .partition_key(format!("k{i}"))
            .data(Blob::new(format!("record-{i}")))
            .send()
            .await?;
    }
    Ok(())
}

fn names(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!("record-{i}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_gets_every_record_once_in_order_and_resumes_from_its_continuation(
) -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "pushed", 1).await?;
    let consumer = register_active(&client, "pushed").await?;
    put(&client, "pushed", 0..20).await?;

    let mut events = subscribe(
        &client,
        &consumer,
        SHARD,
        position(ShardIteratorType::TrimHorizon, None)?,
    )
    .await?;
    let (before, _) = read_records(&mut events, 20).await?;
    assert_eq!(before, names(0..20), "what was there, in order");
    // Written while subscribed: pushed as it commits.
    put(&client, "pushed", 20..40).await?;
    let (during, continuation) = read_records(&mut events, 20).await?;
    assert_eq!(during, names(20..40));

    // Idle: empty events keep coming, their continuation where the records
    // left it.
    let idle = next_event(&mut events).await?.expect("a heartbeat");
    assert!(idle.records.is_empty());
    assert_eq!(idle.continuation_sequence_number, continuation);
    assert_eq!(idle.millis_behind_latest, 0);
    drop(events);

    // Resubscribed after the continuation (as KCL does), nothing is lost
    // or repeated.
    put(&client, "pushed", 40..45).await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut resumed = subscribe(
        &client,
        &consumer,
        SHARD,
        position(ShardIteratorType::AfterSequenceNumber, Some(&continuation))?,
    )
    .await?;
    let (after, _) = read_records(&mut resumed, 5).await?;
    assert_eq!(after, names(40..45));
    drop(resumed);

    // LATEST starts after what is there; AT_SEQUENCE_NUMBER at a record.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let mut latest = subscribe(
        &client,
        &consumer,
        SHARD,
        position(ShardIteratorType::Latest, None)?,
    )
    .await?;
    put(&client, "pushed", 45..46).await?;
    let (newest, _) = read_records(&mut latest, 1).await?;
    assert_eq!(newest, names(45..46));
    drop(latest);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_subscription_is_refused_for_five_seconds_then_takes_over() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "taken", 1).await?;
    let consumer = register_active(&client, "taken").await?;
    let mut first = subscribe(
        &client,
        &consumer,
        SHARD,
        position(ShardIteratorType::TrimHorizon, None)?,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let refused = client
        .subscribe_to_shard()
        .consumer_arn(&consumer)
        .shard_id(SHARD)
        .starting_position(position(ShardIteratorType::TrimHorizon, None)?)
        .send()
        .await
        .expect_err("the first is younger than 5 s");
    assert_eq!(
        refused.as_service_error().and_then(|e| e.code()),
        Some("ResourceInUseException")
    );

    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut second = subscribe(
        &client,
        &consumer,
        SHARD,
        position(ShardIteratorType::TrimHorizon, None)?,
    )
    .await?;
    // The first ends with ResourceInUseException (after any heartbeats).
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), first.recv()).await? {
            Ok(Some(_)) => continue,
            Ok(None) => anyhow::bail!("the first ended without saying why"),
            Err(error) => break error,
        }
    };
    assert!(
        matches!(
            ended.as_service_error(),
            Some(SubscribeToShardEventStreamError::ResourceInUseException(_))
        ),
        "{ended:?}"
    );
    // The second runs on.
    put(&client, "taken", 0..1).await?;
    let (data, _) = read_records(&mut second, 1).await?;
    assert_eq!(data, names(0..1));
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_shard_ends_its_subscription_with_its_children() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "split", 1).await?;
    let consumer = register_active(&client, "split").await?;
    put(&client, "split", 0..10).await?;
    let mut events = subscribe(
        &client,
        &consumer,
        SHARD,
        position(ShardIteratorType::TrimHorizon, None)?,
    )
    .await?;
    let (data, _) = read_records(&mut events, 10).await?;
    assert_eq!(data, names(0..10));
    client
        .split_shard()
        .stream_name("split")
        .shard_to_split(SHARD)
        .new_starting_hash_key((1u128 << 127).to_string())
        .send()
        .await?;
    // Heartbeats until the parent closes; then one last event naming its
    // children, with no continuation; then the stream ends.
    let last = loop {
        let event = next_event(&mut events)
            .await?
            .ok_or_else(|| anyhow::anyhow!("ended without children"))?;
        assert!(
            event.records.is_empty(),
            "nothing was written after the split began"
        );
        if event.child_shards.is_some() {
            break event;
        }
        assert!(!event.continuation_sequence_number.is_empty());
    };
    // (The SDK models the member as required: absent reads as empty.)
    assert_eq!(last.continuation_sequence_number, "");
    let children = last.child_shards.unwrap_or_default();
    assert_eq!(children.len(), 2, "{children:?}");
    for child in &children {
        assert_eq!(child.parent_shards, [SHARD]);
    }
    assert!(
        next_event(&mut events).await?.is_none(),
        "the stream ends at the shard's end"
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_subscriptions_are_refused_before_any_event() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    let address = cluster.endpoint.trim_start_matches("http://").to_owned();
    create_active_stream(&client, "guarded", 1).await?;
    create_active_stream(&client, "elsewhere", 1).await?;
    let consumer = register_active(&client, "guarded").await?;
    let foreign_sequence = client
        .put_record()
        .stream_name("elsewhere")
        .partition_key("k")
        .data(Blob::new("x"))
        .send()
        .await?
        .sequence_number;
    let ghost = format!("{}/consumer/ghost:1700000000", stream_arn("guarded"));

    let cases: Vec<(String, &str)> = vec![
        (
            r#"{"ShardId":"shardId-000000000000","StartingPosition":{"Type":"LATEST"}}"#.to_owned(),
            "ValidationException",
        ),
        (
            format!(r#"{{"ConsumerARN":"{consumer}","ShardId":"shardId-000000000000"}}"#),
            "ValidationException",
        ),
        (
            format!(
                r#"{{"ConsumerARN":"{consumer}","ShardId":"shardId-000000000000","StartingPosition":{{"Type":"SOMEWHERE"}}}}"#
            ),
            "ValidationException",
        ),
        (
            format!(
                r#"{{"ConsumerARN":"{consumer}","ShardId":"shardId-000000000000","StartingPosition":{{"Type":"AT_SEQUENCE_NUMBER"}}}}"#
            ),
            "InvalidArgumentException",
        ),
        (
            format!(
                r#"{{"ConsumerARN":"{consumer}","ShardId":"shardId-000000000000","StartingPosition":{{"Type":"LATEST","SequenceNumber":"1"}}}}"#
            ),
            "InvalidArgumentException",
        ),
        (
            format!(
                r#"{{"ConsumerARN":"{consumer}","ShardId":"shardId-000000000000","StartingPosition":{{"Type":"AT_SEQUENCE_NUMBER","SequenceNumber":"{foreign_sequence}"}}}}"#
            ),
            "InvalidArgumentException",
        ),
        (
            format!(
                r#"{{"ConsumerARN":"{consumer}","ShardId":"shardId-000000000009","StartingPosition":{{"Type":"LATEST"}}}}"#
            ),
            "ResourceNotFoundException",
        ),
        (
            format!(
                r#"{{"ConsumerARN":"{ghost}","ShardId":"shardId-000000000000","StartingPosition":{{"Type":"LATEST"}}}}"#
            ),
            "ResourceNotFoundException",
        ),
        (
            format!(
                r#"{{"ConsumerARN":"{consumer}","ShardId":7,"StartingPosition":{{"Type":"LATEST"}}}}"#
            ),
            "SerializationException",
        ),
    ];
    for (body, expected) in cases {
        let answer = kinesis_http1(&address, "SubscribeToShard", &body).await?;
        assert_eq!(answer.error_type(), expected, "{body}: {}", answer.body);
        assert_eq!(answer.status, 400, "{body}");
    }
    cluster.shutdown().await;
    Ok(())
}
