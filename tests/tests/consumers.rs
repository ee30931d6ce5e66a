//! Enhanced fan-out consumers' registry, driven with the AWS SDK for Rust:
//! the CREATING → ACTIVE → DELETING → gone lifecycle KCL relies on, every
//! way of naming a consumer, paging, Kinesis's limits and exceptions, and
//! what consumers change about DeleteStream and DescribeStreamSummary —
//! and every change reaching the frontends through the change log.

use std::time::Duration;

use aws_sdk_kinesis::types::ConsumerStatus;
use freshet_e2e::fan_out::register_consumer;
use freshet_e2e::raw_http::kinesis_http1;
use freshet_e2e::{create_active_stream, stream_arn, wait_until, Cluster, ClusterOptions};

use freshet_e2e::error_code as code;

async fn status_of(client: &aws_sdk_kinesis::Client, consumer_arn: &str) -> Option<ConsumerStatus> {
    client
        .describe_stream_consumer()
        .consumer_arn(consumer_arn)
        .send()
        .await
        .ok()
        .and_then(|d| d.consumer_description)
        .map(|d| d.consumer_status)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_is_registered_described_listed_and_deregistered() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "orders", 1).await?;
    let orders = stream_arn("orders").to_string();

    let registered = client
        .register_stream_consumer()
        .stream_arn(&orders)
        .consumer_name("billing")
        .send()
        .await?
        .consumer
        .expect("a consumer");
    assert_eq!(registered.consumer_status, ConsumerStatus::Creating);
    assert_eq!(registered.consumer_name, "billing");
    let created = registered.consumer_creation_timestamp.secs();
    assert_eq!(
        registered.consumer_arn,
        format!("{orders}/consumer/billing:{created}"),
        "the ARN ends in the second it was registered"
    );
    let arn = registered.consumer_arn.clone();

    // ACTIVE well inside the ten one-second polls KCL allows.
    wait_until(Duration::from_secs(3), || async {
        status_of(&client, &arn).await == Some(ConsumerStatus::Active)
    })
    .await?;

    // The same consumer by stream and name, with its stream.
    let by_name = client
        .describe_stream_consumer()
        .stream_arn(&orders)
        .consumer_name("billing")
        .send()
        .await?
        .consumer_description
        .expect("a description");
    assert_eq!(by_name.consumer_arn, arn);
    assert_eq!(by_name.stream_arn, orders);

    // A name is unique on its stream, in any status.
    let again = client
        .register_stream_consumer()
        .stream_arn(&orders)
        .consumer_name("billing")
        .send()
        .await
        .expect_err("the name is taken");
    assert_eq!(code(&again), "ResourceInUseException");

    let summary = client
        .describe_stream_summary()
        .stream_name("orders")
        .send()
        .await?
        .stream_description_summary
        .expect("a summary");
    assert_eq!(summary.consumer_count, Some(1));

    // A stream with consumers is deleted only when the caller insists.
    let refused = client
        .delete_stream()
        .stream_name("orders")
        .send()
        .await
        .expect_err("consumers are registered");
    assert_eq!(code(&refused), "ResourceInUseException");
    assert!(freshet_e2e::is_active(&client, "orders").await);

    client
        .deregister_stream_consumer()
        .consumer_arn(&arn)
        .send()
        .await?;
    assert_eq!(
        status_of(&client, &arn).await,
        Some(ConsumerStatus::Deleting)
    );
    wait_until(Duration::from_secs(5), || async {
        let gone = client
            .describe_stream_consumer()
            .consumer_arn(&arn)
            .send()
            .await;
        gone.is_err_and(|e| code(&e) == "ResourceNotFoundException")
    })
    .await?;

    // Registered again, the name is another consumer with another ARN.
    let second = register_consumer(&client, "orders", "billing").await?;
    assert_ne!(second, arn);
    let old = client
        .describe_stream_consumer()
        .consumer_arn(&arn)
        .send()
        .await
        .expect_err("the old ARN names no consumer");
    assert_eq!(code(&old), "ResourceNotFoundException");

    client
        .delete_stream()
        .stream_name("orders")
        .enforce_consumer_deletion(true)
        .send()
        .await?;
    let after = client
        .describe_stream_consumer()
        .consumer_arn(&second)
        .send()
        .await
        .expect_err("the stream is gone, and its consumers with it");
    assert_eq!(code(&after), "ResourceNotFoundException");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumers_are_listed_by_name_in_pages() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "pages", 1).await?;
    let pages = stream_arn("pages").to_string();
    for name in ["c", "a", "b"] {
        register_consumer(&client, "pages", name).await?;
    }

    let mut names = Vec::new();
    let mut token = None;
    loop {
        let page = client
            .list_stream_consumers()
            .stream_arn(&pages)
            .max_results(2)
            .set_next_token(token.take())
            .send()
            .await?;
        let consumers = page.consumers.unwrap_or_default();
        assert!(consumers.len() <= 2);
        names.extend(consumers.into_iter().map(|c| c.consumer_name));
        match page.next_token {
            Some(next) => token = Some(next),
            None => break,
        }
    }
    assert_eq!(names, ["a", "b", "c"]);

    // The stream's creation time selects it; another time names no stream.
    let created = client
        .describe_stream_summary()
        .stream_name("pages")
        .send()
        .await?
        .stream_description_summary
        .expect("a summary")
        .stream_creation_timestamp;
    let listed = client
        .list_stream_consumers()
        .stream_arn(&pages)
        .stream_creation_timestamp(created)
        .send()
        .await?;
    assert_eq!(listed.consumers.unwrap_or_default().len(), 3);
    let elsewhen = aws_sdk_kinesis::primitives::DateTime::from_secs(created.secs() - 3600);
    let missing = client
        .list_stream_consumers()
        .stream_arn(&pages)
        .stream_creation_timestamp(elsewhen)
        .send()
        .await
        .expect_err("no stream was created then");
    assert_eq!(code(&missing), "ResourceNotFoundException");

    // A token is for its own stream, and not with a creation time.
    let first = client
        .list_stream_consumers()
        .stream_arn(&pages)
        .max_results(1)
        .send()
        .await?;
    let token = first.next_token.expect("more pages");
    let both = client
        .list_stream_consumers()
        .stream_arn(&pages)
        .next_token(&token)
        .stream_creation_timestamp(created)
        .send()
        .await
        .expect_err("NextToken with StreamCreationTimestamp");
    assert_eq!(code(&both), "InvalidArgumentException");
    create_active_stream(&client, "other", 1).await?;
    let foreign = client
        .list_stream_consumers()
        .stream_arn(stream_arn("other").to_string())
        .next_token(&token)
        .send()
        .await
        .expect_err("the token lists another stream");
    assert_eq!(code(&foreign), "InvalidArgumentException");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_stay_within_kinesis_limits() -> anyhow::Result<()> {
    // Long enough that five registrations are surely still CREATING when
    // the sixth arrives, on any machine.
    let cluster = Cluster::start_with(ClusterOptions {
        consumer_transition: Duration::from_secs(4),
        ..ClusterOptions::default()
    })
    .await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "busy", 1).await?;
    let busy = stream_arn("busy").to_string();
    let register = |name: String| {
        let client = client.clone();
        let busy = busy.clone();
        async move {
            client
                .register_stream_consumer()
                .stream_arn(busy)
                .consumer_name(name)
                .send()
                .await
        }
    };

    // Five CREATING at once per account; the sixth waits for them.
    for i in 0..5 {
        register(format!("c{i}")).await?;
    }
    let sixth = register("c5".into()).await.expect_err("five are CREATING");
    assert_eq!(code(&sixth), "LimitExceededException");
    let listed = client
        .list_stream_consumers()
        .stream_arn(&busy)
        .send()
        .await?
        .consumers
        .unwrap_or_default();
    assert_eq!(listed.len(), 5, "the refused registration left nothing");

    // Twenty per stream.
    for batch in 1..4 {
        wait_until(Duration::from_secs(20), || async {
            client
                .list_stream_consumers()
                .stream_arn(&busy)
                .send()
                .await
                .is_ok_and(|l| {
                    l.consumers
                        .unwrap_or_default()
                        .iter()
                        .all(|c| c.consumer_status == ConsumerStatus::Active)
                })
        })
        .await?;
        for i in 0..5 {
            register(format!("c{}", batch * 5 + i)).await?;
        }
    }
    let over = register("c20".into())
        .await
        .expect_err("twenty is the most");
    assert_eq!(code(&over), "LimitExceededException");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_consumer_requests_get_kinesis_exceptions_and_change_nothing() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    let address = cluster.endpoint.trim_start_matches("http://").to_owned();
    create_active_stream(&client, "strict", 1).await?;
    let strict = stream_arn("strict").to_string();

    let cases: Vec<(&str, String, &str)> = vec![
        (
            "RegisterStreamConsumer",
            format!(r#"{{"StreamARN":"{strict}"}}"#),
            "ValidationException",
        ),
        (
            "RegisterStreamConsumer",
            format!(r#"{{"StreamARN":"{strict}","ConsumerName":"has space"}}"#),
            "ValidationException",
        ),
        (
            "RegisterStreamConsumer",
            format!(
                r#"{{"StreamARN":"{strict}","ConsumerName":"{}"}}"#,
                "x".repeat(129)
            ),
            "ValidationException",
        ),
        (
            "RegisterStreamConsumer",
            r#"{"StreamARN":"not-an-arn","ConsumerName":"c"}"#.to_owned(),
            "ValidationException",
        ),
        (
            "RegisterStreamConsumer",
            format!(r#"{{"StreamARN":"{strict}","ConsumerName":7}}"#),
            "SerializationException",
        ),
        (
            "RegisterStreamConsumer",
            format!(r#"{{"StreamARN":"{strict}/consumer/c:1","ConsumerName":"c"}}"#),
            "InvalidArgumentException",
        ),
        (
            "RegisterStreamConsumer",
            format!(
                r#"{{"StreamARN":"{}","ConsumerName":"c"}}"#,
                stream_arn("absent")
            ),
            "ResourceNotFoundException",
        ),
        (
            "DescribeStreamConsumer",
            format!(r#"{{"StreamARN":"{strict}"}}"#),
            "InvalidArgumentException",
        ),
        (
            "DescribeStreamConsumer",
            "{}".to_owned(),
            "InvalidArgumentException",
        ),
        (
            "DescribeStreamConsumer",
            format!(r#"{{"ConsumerARN":"{strict}"}}"#),
            "ValidationException",
        ),
        (
            "DescribeStreamConsumer",
            format!(r#"{{"ConsumerARN":"{strict}/consumer/ghost:1700000000"}}"#),
            "ResourceNotFoundException",
        ),
        (
            "DescribeStreamConsumer",
            format!(r#"{{"StreamARN":"{strict}","ConsumerName":"ghost"}}"#),
            "ResourceNotFoundException",
        ),
        (
            "DeregisterStreamConsumer",
            format!(r#"{{"ConsumerARN":"{strict}/consumer/ghost:1700000000"}}"#),
            "ResourceNotFoundException",
        ),
        (
            "ListStreamConsumers",
            "{}".to_owned(),
            "ValidationException",
        ),
        (
            "ListStreamConsumers",
            format!(r#"{{"StreamARN":"{strict}","MaxResults":0}}"#),
            "ValidationException",
        ),
        (
            "ListStreamConsumers",
            format!(r#"{{"StreamARN":"{strict}","NextToken":"forged"}}"#),
            "InvalidArgumentException",
        ),
    ];
    for (operation, body, expected) in cases {
        let answer = kinesis_http1(&address, operation, &body).await?;
        assert_eq!(
            answer.error_type(),
            expected,
            "{operation} {body}: {}",
            answer.body
        );
        assert_eq!(answer.status, 400, "{operation} {body}");
    }
    let listed = client
        .list_stream_consumers()
        .stream_arn(&strict)
        .send()
        .await?;
    assert!(listed.consumers.unwrap_or_default().is_empty());
    cluster.shutdown().await;
    Ok(())
}

/// The frontend's view of a consumer, from the change log alone.
fn logged(cluster: &Cluster, arn: &str) -> Option<freshet_proto::v1::ConsumerStatus> {
    cluster
        .frontend
        .router()
        .map()
        .read(|map| map.consumer(arn).map(|entry| entry.status()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consumer_changes_reach_the_frontends_through_the_change_log() -> anyhow::Result<()> {
    use freshet_proto::v1::shard_map_event::Event;
    use freshet_proto::v1::ConsumerStatus as Logged;

    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "logged", 1).await?;
    let arn = client
        .register_stream_consumer()
        .stream_arn(stream_arn("logged").to_string())
        .consumer_name("reader")
        .send()
        .await?
        .consumer
        .map(|c| c.consumer_arn)
        .ok_or_else(|| anyhow::anyhow!("no consumer"))?;
    // Registered, then ACTIVE: each step as the log commits it.
    wait_until(Duration::from_secs(10), || async {
        logged(&cluster, &arn) == Some(Logged::Active)
    })
    .await?;
    assert_eq!(status_of(&client, &arn).await, Some(ConsumerStatus::Active));

    // A subscriber from the start gets the consumer in its snapshot.
    let mut membership =
        freshet_server::membership_client(cluster.channel(&cluster.membership_addr)?);
    let mut events = membership
        .subscribe(freshet_proto::v1::SubscribeRequest { from_version: 0 })
        .await?
        .into_inner();
    let first = events.message().await?.and_then(|e| e.event);
    let Some(Event::Snapshot(snapshot)) = first else {
        anyhow::bail!("a snapshot first, got {first:?}");
    };
    assert!(
        snapshot
            .consumers
            .iter()
            .any(|c| c.consumer_arn == arn && c.status() == Logged::Active),
        "{:?}",
        snapshot.consumers
    );

    // Deregistered: DELETING, then gone.
    client
        .deregister_stream_consumer()
        .consumer_arn(&arn)
        .send()
        .await?;
    let deleting_or_gone = || async { logged(&cluster, &arn) != Some(Logged::Active) };
    wait_until(Duration::from_secs(10), deleting_or_gone).await?;
    wait_until(Duration::from_secs(10), || async {
        logged(&cluster, &arn).is_none()
    })
    .await?;
    // The live stream carried each of those changes, in version order.
    let mut seen = Vec::new();
    while seen.last().is_none_or(|(_, removed)| !removed) {
        let event = tokio::time::timeout(Duration::from_secs(10), events.message())
            .await??
            .and_then(|e| e.event);
        if let Some(Event::Consumer(entry)) = event {
            if entry.consumer_arn == arn {
                seen.push((entry.status(), entry.removed));
            }
        }
    }
    assert_eq!(
        seen,
        [(Logged::Deleting, false), (Logged::Deleting, true)],
        "deregistered, then removed"
    );

    // A deleted stream's consumers go with it, in the deletion's batch.
    let second = register_consumer(&client, "logged", "second").await?;
    wait_until(Duration::from_secs(10), || async {
        logged(&cluster, &second) == Some(Logged::Active)
    })
    .await?;
    client
        .delete_stream()
        .stream_name("logged")
        .enforce_consumer_deletion(true)
        .send()
        .await?;
    wait_until(Duration::from_secs(10), || async {
        logged(&cluster, &second).is_none()
    })
    .await?;
    cluster.shutdown().await;
    Ok(())
}
