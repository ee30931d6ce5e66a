//! SubscribeToShard with the AWS SDK for Rust: records pushed as they
//! commit, every one once and in order, a continuation that resumes
//! exactly (also when the shard is idle), the 5-second takeover rule, the
//! children at a split shard's end, and the refusals before a stream starts.

use std::time::Duration;

use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError;
use aws_sdk_kinesis::types::{
    ShardIteratorType, SubscribeToShardEvent, SubscribeToShardEventStream,
};
use freshet_e2e::fan_out::{
    keep_reading, position, register_consumer, subscribe, Events, Received,
};
use freshet_e2e::raw_http::kinesis_http1;
use freshet_e2e::{create_active_stream, kinesis_client_h2c, stream_arn, wait_until, Cluster};

const SHARD: &str = "shardId-000000000000";

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

/// Reads `events` (heartbeats, records) until the subscription ends; it
/// must end with a ResourceInUseException event (taken over, or its
/// consumer gone), within 20 s.
async fn assert_taken_over(events: &mut Events) -> anyhow::Result<()> {
    let ended = tokio::time::timeout(Duration::from_secs(20), async {
        loop {
            match events.recv().await {
                Ok(Some(_)) => continue,
                Ok(None) => anyhow::bail!("the subscription ended without saying why"),
                Err(error) => break Ok(error),
            }
        }
    })
    .await
    .map_err(|_| anyhow::anyhow!("the subscription was not ended within 20 s"))??;
    anyhow::ensure!(
        matches!(
            ended.as_service_error(),
            Some(SubscribeToShardEventStreamError::ResourceInUseException(_))
        ),
        "{ended:?}"
    );
    Ok(())
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
async fn over_http1_a_subscriber_gets_every_record_once_in_order_and_resumes_from_its_continuation(
) -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    every_record_once_and_resumed(&cluster.kinesis()).await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_http2_a_subscriber_gets_every_record_once_in_order_and_resumes_from_its_continuation(
) -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    every_record_once_and_resumed(&kinesis_client_h2c(&cluster.endpoint)).await?;
    cluster.shutdown().await;
    Ok(())
}

/// Records written before and during a subscription arrive once and in
/// order; an idle subscription keeps sending its continuation; a new
/// subscription after it resumes exactly; LATEST starts at the tip.
async fn every_record_once_and_resumed(client: &aws_sdk_kinesis::Client) -> anyhow::Result<()> {
    let client = client.clone();
    create_active_stream(&client, "pushed", 1).await?;
    let consumer = register_consumer(&client, "pushed", "reader").await?;
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
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_subscription_is_refused_for_five_seconds_then_takes_over() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    // Over HTTP/2, as KCL subscribes.
    let client = kinesis_client_h2c(&cluster.endpoint);
    create_active_stream(&client, "taken", 1).await?;
    let consumer = register_consumer(&client, "taken", "reader").await?;
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
    assert_taken_over(&mut first).await?;
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
    let consumer = register_consumer(&client, "split", "reader").await?;
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
    let consumer = register_consumer(&client, "guarded", "reader").await?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_failover_during_a_subscription_loses_and_repeats_nothing() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with(freshet_e2e::ClusterOptions {
        worker_mode: freshet_e2e::WorkerMode::Process,
        ..freshet_e2e::ClusterOptions::short_leases()
    })
    .await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "failing", 1).await?;
    let consumer = register_consumer(&client, "failing", "reader").await?;
    let received = Received::default();
    let subscriptions = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let reader = keep_reading(
        client.clone(),
        consumer,
        SHARD,
        received.clone(),
        subscriptions.clone(),
    );
    let producers = freshet_e2e::load::Producers::start(&client, "failing", 3, 20);
    wait_until(Duration::from_secs(60), || async {
        producers.count() >= 300
    })
    .await?;

    let leader = cluster
        .only_entry("failing")
        .ok_or_else(|| anyhow::anyhow!("no entry"))?
        .leader_worker_id;
    let victim = cluster.worker_index(&leader)?;
    cluster.kill_worker(victim).await?;
    wait_until(Duration::from_secs(60), || async {
        cluster
            .only_entry("failing")
            .is_some_and(|e| e.leader_worker_id != leader)
    })
    .await?;
    let resumed_from = producers.count();
    wait_until(Duration::from_secs(60), || async {
        producers.count() >= resumed_from + 300
    })
    .await?;
    let acknowledged = producers.stop().await?;

    // Everything acknowledged reaches the subscriber...
    wait_until(Duration::from_secs(60), || async {
        let got = received.lock().unwrap_or_else(|p| p.into_inner());
        let seen: std::collections::HashSet<&String> = got.iter().map(|(_, d)| d).collect();
        acknowledged.iter().all(|a| seen.contains(a))
    })
    .await?;
    reader.abort();
    // ...once, in the shard's order.
    let got = received.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let distinct: std::collections::HashSet<&String> = got.iter().map(|(_, d)| d).collect();
    assert_eq!(distinct.len(), got.len(), "a record was delivered twice");
    assert!(
        got.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "records arrived out of order"
    );
    // The subscription itself followed the new leader: it did not end.
    assert_eq!(
        subscriptions.load(std::sync::atomic::Ordering::Relaxed),
        1,
        "the subscription ended at the failover"
    );
    eprintln!(
        "{} records acknowledged, {} delivered across the failover",
        acknowledged.len(),
        got.len()
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deregistering_the_consumer_ends_its_subscriptions() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "leaving", 1).await?;
    let consumer = register_consumer(&client, "leaving", "reader").await?;
    let mut events = subscribe(
        &client,
        &consumer,
        SHARD,
        position(ShardIteratorType::Latest, None)?,
    )
    .await?;
    client
        .deregister_stream_consumer()
        .consumer_arn(&consumer)
        .send()
        .await?;
    // Heartbeats until the subscription learns it, then the reason.
    assert_taken_over(&mut events).await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_takeover_rule_holds_across_frontends() -> anyhow::Result<()> {
    let mut cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    let other = freshet_e2e::kinesis_client(&cluster.start_another_frontend().await?);
    create_active_stream(&client, "balanced", 1).await?;
    let consumer = register_consumer(&client, "balanced", "reader").await?;
    let mut first = subscribe(
        &client,
        &consumer,
        SHARD,
        position(ShardIteratorType::TrimHorizon, None)?,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    // Through another frontend, as a load balancer would send it.
    let refused = other
        .subscribe_to_shard()
        .consumer_arn(&consumer)
        .shard_id(SHARD)
        .starting_position(position(ShardIteratorType::TrimHorizon, None)?)
        .send()
        .await
        .expect_err("the first is younger than 5 s, on another frontend");
    assert_eq!(
        refused.as_service_error().and_then(|e| e.code()),
        Some("ResourceInUseException")
    );
    tokio::time::sleep(Duration::from_secs(5)).await;
    let mut second = subscribe(
        &other,
        &consumer,
        SHARD,
        position(ShardIteratorType::TrimHorizon, None)?,
    )
    .await?;
    // The first frontend learns it at its next report, and ends the first.
    assert_taken_over(&mut first).await?;
    put(&client, "balanced", 0..1).await?;
    let (data, _) = read_records(&mut second, 1).await?;
    assert_eq!(data, names(0..1));
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_consumers_lag_is_measured_against_the_tip() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "lagging", 1).await?;
    let consumer = register_consumer(&client, "lagging", "reader").await?;
    client
        .register_stream_consumer()
        .stream_arn(stream_arn("lagging").to_string())
        .consumer_name("idle")
        .send()
        .await?;
    put(&client, "lagging", 0..10).await?;
    let mut events = subscribe(
        &client,
        &consumer,
        SHARD,
        position(ShardIteratorType::TrimHorizon, None)?,
    )
    .await?;
    read_records(&mut events, 10).await?;
    drop(events);
    // Written after the reader left: it is that far behind.
    put(&client, "lagging", 10..25).await?;
    let admin = |args: Vec<&str>| {
        let control_plane = cluster.control_plane_addr.clone();
        let args: Vec<String> = args.into_iter().map(str::to_owned).collect();
        async move {
            let output =
                tokio::process::Command::new(freshet_e2e::workspace_binary("freshet-admin")?)
                    .args(["--control-plane-addr", &control_plane])
                    .args(&args)
                    .output()
                    .await?;
            anyhow::ensure!(
                output.status.success(),
                "freshet-admin: {}",
                String::from_utf8_lossy(&output.stderr)
            );
            anyhow::Ok(String::from_utf8(output.stdout)?)
        }
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let table = loop {
        let table = admin(vec!["consumers", "lag", "lagging"]).await?;
        if table.contains("reader\tshardId-000000000000\tno\t15\t") {
            break table;
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "unexpected lag table:\n{table}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    // A consumer that never read has no position.
    assert!(
        table.contains("idle\tshardId-000000000000\tno\t-\t-"),
        "{table}"
    );
    cluster.shutdown().await;
    Ok(())
}

/// Writes `count` records of 100 KiB, ten per PutRecords, numbered from
/// `first`, pausing `pause` after each PutRecords.
async fn put_large(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    (first, count): (usize, usize),
    pause: Duration,
) -> anyhow::Result<()> {
    for batch in (first..first + count).collect::<Vec<_>>().chunks(10) {
        let entries = batch
            .iter()
            .map(|i| {
                let mut data = format!("record-{i}|").into_bytes();
                data.resize(100 * 1024, b'.');
                aws_sdk_kinesis::types::PutRecordsRequestEntry::builder()
                    .partition_key(format!("k{i}"))
                    .data(Blob::new(data))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let out = client
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries))
            .send()
            .await?;
        anyhow::ensure!(out.failed_record_count == Some(0), "a record failed");
        tokio::time::sleep(pause).await;
    }
    Ok(())
}

/// Reads `count` records of [`put_large`], returning their numbers.
async fn read_large(events: &mut Events, count: usize) -> anyhow::Result<Vec<usize>> {
    let mut got = Vec::new();
    while got.len() < count {
        let event = next_event(events)
            .await?
            .ok_or_else(|| anyhow::anyhow!("the stream ended after {} records", got.len()))?;
        for record in &event.records {
            let data = record.data.as_ref();
            let end = data.iter().position(|b| *b == b'|').unwrap_or(data.len());
            let name = std::str::from_utf8(&data[..end])?;
            got.push(name.trim_start_matches("record-").parse()?);
        }
    }
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_at_the_tip_share_one_upstream_and_a_slow_one_catches_up_alone(
) -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "shared", 1).await?;
    let mut consumers = Vec::new();
    for name in ["fast-0", "fast-1", "fast-2", "slow"] {
        consumers.push(register_consumer(&client, "shared", name).await?);
    }
    put_large(&client, "shared", (0, 10), Duration::ZERO).await?;
    let mut subscriptions = Vec::new();
    for consumer in &consumers {
        let from = position(ShardIteratorType::TrimHorizon, None)?;
        subscriptions.push(subscribe(&client, consumer, SHARD, from).await?);
    }
    // Everyone reads what was there (on upstreams of their own), then
    // waits at the tip: on the one upstream they share.
    for events in &mut subscriptions {
        assert_eq!(read_large(events, 10).await?, (0..10).collect::<Vec<_>>());
    }
    let frontend = cluster.frontend.clone();
    wait_until(Duration::from_secs(10), || async {
        frontend.fan_out_upstreams() == (1, 0)
    })
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "upstreams (shared, own): {:?}",
            cluster.frontend.fan_out_upstreams()
        )
    })?;

    // The slow subscriber stops reading while 20 MiB are written at about
    // 1.6 MiB/s: more than the feed and the socket buffers on the way to
    // the slow one hold, slower than each subscriber's 2 MiB/s. The others
    // are not held back by it.
    let mut slow = subscriptions
        .pop()
        .ok_or_else(|| anyhow::anyhow!("no slow one"))?;
    let writer = {
        let client = client.clone();
        tokio::spawn(async move {
            put_large(&client, "shared", (10, 200), Duration::from_millis(600)).await
        })
    };
    // Each fast one reads at its own pace, all at once.
    let fast: Vec<_> = subscriptions
        .drain(..)
        .map(|mut events| {
            tokio::spawn(async move {
                let got = read_large(&mut events, 200).await?;
                anyhow::Ok((got, events))
            })
        })
        .collect();
    for reader in fast {
        let (got, events) = reader.await??;
        assert_eq!(got, (10..210).collect::<Vec<_>>());
        subscriptions.push(events);
    }
    writer.await??;
    assert_eq!(
        cluster.frontend.fan_out_fell_behind(),
        0,
        "the slow one has not read yet; the fast ones kept up"
    );
    // Back, it catches up on an upstream of its own: every record once,
    // in order.
    assert_eq!(
        read_large(&mut slow, 200).await?,
        (10..210).collect::<Vec<_>>()
    );
    assert!(
        cluster.frontend.fan_out_fell_behind() >= 1,
        "the slow one fell out of the feed and caught up alone"
    );
    subscriptions.push(slow);
    // And all of them share the tip again.
    wait_until(Duration::from_secs(10), || async {
        frontend.fan_out_upstreams() == (1, 0)
    })
    .await
    .map_err(|_| {
        anyhow::anyhow!(
            "upstreams (shared, own) after catching up: {:?}",
            cluster.frontend.fan_out_upstreams()
        )
    })?;
    drop(subscriptions);
    // Nobody left to read it: the feed closes.
    wait_until(Duration::from_secs(10), || async {
        frontend.fan_out_upstreams() == (0, 0)
    })
    .await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_shards_end_their_subscriptions_with_the_shard_continuing_both() -> anyhow::Result<()>
{
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "merged", 2).await?;
    let consumer = register_consumer(&client, "merged", "reader").await?;
    let parents = freshet_e2e::shard_ids(&client, "merged").await?;
    let mut subscriptions = Vec::new();
    for shard in &parents {
        let from = position(ShardIteratorType::TrimHorizon, None)?;
        subscriptions.push(subscribe(&client, &consumer, shard, from).await?);
    }
    put(&client, "merged", 0..20).await?;
    client
        .merge_shards()
        .stream_name("merged")
        .shard_to_merge(&parents[0])
        .adjacent_shard_to_merge(&parents[1])
        .send()
        .await?;
    // Each parent's subscriber gets its records, then the one child.
    let mut delivered = Vec::new();
    let mut children = Vec::new();
    for events in &mut subscriptions {
        let last = loop {
            let event = next_event(events)
                .await?
                .ok_or_else(|| anyhow::anyhow!("ended without children"))?;
            for record in &event.records {
                delivered.push(String::from_utf8(record.data.clone().into_inner())?);
            }
            if event.child_shards.is_some() {
                break event;
            }
        };
        let [child] = last.child_shards.unwrap_or_default().try_into().map_err(
            |other: Vec<aws_sdk_kinesis::types::ChildShard>| {
                anyhow::anyhow!("one child expected: {other:?}")
            },
        )?;
        assert_eq!(child.parent_shards, parents);
        children.push(child.shard_id);
        assert!(
            next_event(events).await?.is_none(),
            "ended at the shard's end"
        );
    }
    assert_eq!(
        children[0], children[1],
        "both parents continue in one child"
    );
    delivered.sort();
    let mut expected = names(0..20);
    expected.sort();
    assert_eq!(
        delivered, expected,
        "every record once, from one parent or the other"
    );

    // The child is subscribed to like any shard.
    let from = position(ShardIteratorType::TrimHorizon, None)?;
    let mut child = subscribe(&client, &consumer, &children[0], from).await?;
    put(&client, "merged", 20..25).await?;
    let (data, _) = read_records(&mut child, 5).await?;
    assert_eq!(data, names(20..25));
    cluster.shutdown().await;
    Ok(())
}
