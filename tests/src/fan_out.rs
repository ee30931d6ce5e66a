//! Enhanced fan-out from a test's side, with the AWS SDK for Rust:
//! registering a consumer and waiting for it to be ACTIVE, subscribing,
//! and a reader that keeps subscribing after its continuation as KCL does.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError;
use aws_sdk_kinesis::types::{
    ConsumerStatus, ShardIteratorType, StartingPosition, SubscribeToShardEventStream,
};

use crate::{stream_arn, wait_until};

/// A subscription's events, as the SDK hands them over.
pub type Events = aws_sdk_kinesis::primitives::event_stream::EventReceiver<
    SubscribeToShardEventStream,
    SubscribeToShardEventStreamError,
>;

/// Registers consumer `name` of `stream`; its ARN once it is ACTIVE.
pub async fn register_consumer(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    name: &str,
) -> anyhow::Result<String> {
    let arn = client
        .register_stream_consumer()
        .stream_arn(stream_arn(stream).to_string())
        .consumer_name(name)
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

pub fn position(
    kind: ShardIteratorType,
    sequence: Option<&str>,
) -> anyhow::Result<StartingPosition> {
    Ok(StartingPosition::builder()
        .r#type(kind)
        .set_sequence_number(sequence.map(str::to_owned))
        .build()?)
}

/// Subscribes `consumer` to `shard`; fails unless the initial-response
/// arrives within 10 s.
pub async fn subscribe(
    client: &aws_sdk_kinesis::Client,
    consumer: &str,
    shard: &str,
    from: StartingPosition,
) -> anyhow::Result<Events> {
    // The SDK's send() returns once the initial-response event arrived:
    // a server that never sends it leaves it waiting here.
    let sent = client
        .subscribe_to_shard()
        .consumer_arn(consumer)
        .shard_id(shard)
        .starting_position(from)
        .send();
    let output = tokio::time::timeout(Duration::from_secs(10), sent)
        .await
        .map_err(|_| anyhow::anyhow!("no initial-response within 10 s"))?
        .map_err(|error| {
            anyhow::anyhow!(
                "SubscribeToShard failed: {:?} {:?}",
                error.as_service_error().and_then(|e| e.code()),
                error.as_service_error().and_then(|e| e.message())
            )
        })?;
    Ok(output.event_stream)
}

/// What a subscriber received: (sequence number, data) in arrival order.
pub type Received = Arc<Mutex<Vec<(u128, String)>>>;

/// Reads `shard` from its start for as long as it runs, subscribing again
/// after its continuation whenever a subscription ends (as KCL does);
/// `subscriptions` counts the subscriptions it made.
pub fn keep_reading(
    client: aws_sdk_kinesis::Client,
    consumer: String,
    shard: &str,
    received: Received,
    subscriptions: Arc<AtomicUsize>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    let shard = shard.to_owned();
    tokio::spawn(async move {
        let mut from = position(ShardIteratorType::TrimHorizon, None)?;
        loop {
            let mut events = match subscribe(&client, &consumer, &shard, from.clone()).await {
                Ok(events) => {
                    subscriptions.fetch_add(1, Ordering::Relaxed);
                    events
                }
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(1100)).await;
                    continue;
                }
            };
            while let Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(event))) =
                events.recv().await
            {
                let mut got = received.lock().unwrap_or_else(|p| p.into_inner());
                for record in &event.records {
                    got.push((
                        record.sequence_number.parse()?,
                        String::from_utf8(record.data.clone().into_inner())?,
                    ));
                }
                drop(got);
                from = position(
                    ShardIteratorType::AfterSequenceNumber,
                    Some(&event.continuation_sequence_number),
                )?;
            }
            tokio::time::sleep(Duration::from_millis(1100)).await;
        }
    })
}
