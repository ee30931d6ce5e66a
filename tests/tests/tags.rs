//! Tags on streams and consumers with the AWS SDK for Rust: set at
//! creation and registration, added (overwriting), paged and removed by
//! stream name and by ARN, Kinesis's limits and exceptions before anything
//! changes, and a stream created again under its name starting untagged.

use std::collections::BTreeMap;
use std::time::Duration;

use freshet_e2e::fan_out::register_consumer;
use freshet_e2e::{create_active_stream, stream_arn, wait_until, Cluster};

use freshet_e2e::error_code as code;

/// Every tag of the stream, by key, paging through ListTagsForStream.
async fn stream_tags(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    let mut tags = BTreeMap::new();
    let mut start: Option<String> = None;
    loop {
        let page = client
            .list_tags_for_stream()
            .stream_name(stream)
            .set_exclusive_start_tag_key(start.clone())
            .limit(2)
            .send()
            .await?;
        anyhow::ensure!(page.tags.len() <= 2, "a page of {}", page.tags.len());
        for tag in &page.tags {
            tags.insert(tag.key.clone(), tag.value.clone().unwrap_or_default());
        }
        if !page.has_more_tags {
            return Ok(tags);
        }
        start = page.tags.last().map(|t| t.key.clone());
    }
}

/// Every tag of the resource `arn`.
async fn resource_tags(
    client: &aws_sdk_kinesis::Client,
    arn: &str,
) -> anyhow::Result<BTreeMap<String, String>> {
    Ok(client
        .list_tags_for_resource()
        .resource_arn(arn)
        .send()
        .await?
        .tags
        .unwrap_or_default()
        .into_iter()
        .map(|tag| (tag.key, tag.value.unwrap_or_default()))
        .collect())
}

fn tags(pairs: &[(&str, &str)]) -> BTreeMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_are_set_added_paged_and_removed_by_name_and_by_arn() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    client
        .create_stream()
        .stream_name("tagged")
        .shard_count(1)
        .tags("team", "data")
        .tags("cost-center", "42")
        .send()
        .await?;
    wait_until(Duration::from_secs(10), || async {
        client
            .describe_stream_summary()
            .stream_name("tagged")
            .send()
            .await
            .ok()
            .and_then(|d| d.stream_description_summary)
            .is_some_and(|s| s.stream_status == aws_sdk_kinesis::types::StreamStatus::Active)
    })
    .await?;
    assert_eq!(
        stream_tags(&client, "tagged").await?,
        tags(&[("cost-center", "42"), ("team", "data")])
    );

    // Added by name: a key given again is overwritten.
    client
        .add_tags_to_stream()
        .stream_name("tagged")
        .tags("team", "platform")
        .tags("env", "prod")
        .tags("owner", "")
        .tags("Billing", "monthly")
        .send()
        .await?;
    // (Pages of two, by key in byte order: capitals first, none skipped.)
    let expected = tags(&[
        ("Billing", "monthly"),
        ("cost-center", "42"),
        ("env", "prod"),
        ("owner", ""),
        ("team", "platform"),
    ]);
    assert_eq!(stream_tags(&client, "tagged").await?, expected);
    // The default page is 10; a start key that is not there starts after
    // where it would be.
    let page = client
        .list_tags_for_stream()
        .stream_name("tagged")
        .exclusive_start_tag_key("d")
        .send()
        .await?;
    let keys: Vec<&str> = page.tags.iter().map(|t| t.key.as_str()).collect();
    assert_eq!(keys, ["env", "owner", "team"]);
    assert!(!page.has_more_tags);

    // The same tags through the ARN operations.
    let arn = stream_arn("tagged").to_string();
    assert_eq!(resource_tags(&client, &arn).await?, expected);
    client
        .untag_resource()
        .resource_arn(&arn)
        .tag_keys("owner")
        .tag_keys("Billing")
        .tag_keys("not-there")
        .send()
        .await?;
    client
        .remove_tags_from_stream()
        .stream_name("tagged")
        .tag_keys("env")
        .send()
        .await?;
    client
        .tag_resource()
        .resource_arn(&arn)
        .tags("tier", "gold")
        .send()
        .await?;
    assert_eq!(
        stream_tags(&client, "tagged").await?,
        tags(&[
            ("cost-center", "42"),
            ("team", "platform"),
            ("tier", "gold")
        ])
    );

    // A consumer's tags are its own.
    let consumer = client
        .register_stream_consumer()
        .stream_arn(&arn)
        .consumer_name("reader")
        .tags("app", "billing")
        .send()
        .await?
        .consumer
        .map(|c| c.consumer_arn)
        .ok_or_else(|| anyhow::anyhow!("no consumer"))?;
    assert_eq!(
        resource_tags(&client, &consumer).await?,
        tags(&[("app", "billing")])
    );
    client
        .tag_resource()
        .resource_arn(&consumer)
        .tags("stage", "beta")
        .send()
        .await?;
    assert_eq!(
        resource_tags(&client, &consumer).await?,
        tags(&[("app", "billing"), ("stage", "beta")])
    );
    assert_eq!(
        stream_tags(&client, "tagged").await?.len(),
        3,
        "the stream's are unchanged"
    );

    // Deleted and created again under its name: untagged.
    client
        .delete_stream()
        .stream_name("tagged")
        .enforce_consumer_deletion(true)
        .send()
        .await?;
    wait_until(Duration::from_secs(20), || async {
        client
            .describe_stream_summary()
            .stream_name("tagged")
            .send()
            .await
            .is_err()
    })
    .await?;
    create_active_stream(&client, "tagged", 1).await?;
    assert!(stream_tags(&client, "tagged").await?.is_empty());
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_tags_get_kinesis_exceptions_and_change_nothing() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "strict", 1).await?;
    client
        .add_tags_to_stream()
        .stream_name("strict")
        .tags("kept", "yes")
        .send()
        .await?;

    // More than 50 on one resource, counting those it has.
    let mut add = client.add_tags_to_stream().stream_name("strict");
    for i in 0..50 {
        add = add.tags(format!("key-{i:02}"), "v");
    }
    let refused = add.send().await.expect_err("51 tags");
    assert_eq!(code(&refused), "InvalidArgumentException");
    // The reserved prefix, and characters outside Kinesis's set.
    for (key, value) in [
        ("aws:owner", "me"),
        ("bad#key", "v"),
        ("fine", "bad<value>"),
    ] {
        let refused = client
            .add_tags_to_stream()
            .stream_name("strict")
            .tags(key, value)
            .send()
            .await
            .expect_err(key);
        assert_eq!(code(&refused), "InvalidArgumentException", "{key}={value}");
    }
    // The model's limits.
    let refused = client
        .add_tags_to_stream()
        .stream_name("strict")
        .tags("k".repeat(129), "v")
        .send()
        .await
        .expect_err("a 129-character key");
    assert_eq!(code(&refused), "ValidationException");
    let refused = client
        .list_tags_for_stream()
        .stream_name("strict")
        .limit(51)
        .send()
        .await
        .expect_err("limit 51");
    assert_eq!(code(&refused), "ValidationException");
    let refused = client
        .create_stream()
        .stream_name("strict-2")
        .shard_count(1)
        .tags("aws:cloudformation:stack-name", "x")
        .send()
        .await
        .expect_err("a reserved key at creation");
    assert_eq!(code(&refused), "InvalidArgumentException");
    // Nothing changed; nothing was created.
    assert_eq!(
        stream_tags(&client, "strict").await?,
        tags(&[("kept", "yes")])
    );
    let missing = client
        .describe_stream_summary()
        .stream_name("strict-2")
        .send()
        .await
        .expect_err("not created");
    assert_eq!(code(&missing), "ResourceNotFoundException");

    // Unknown resources.
    let missing = client
        .list_tags_for_stream()
        .stream_name("absent")
        .send()
        .await
        .expect_err("no such stream");
    assert_eq!(code(&missing), "ResourceNotFoundException");
    let consumer = format!("{}/consumer/nobody:1700000000", stream_arn("strict"));
    let missing = client
        .list_tags_for_resource()
        .resource_arn(&consumer)
        .send()
        .await
        .expect_err("no such consumer");
    assert_eq!(code(&missing), "ResourceNotFoundException");
    let malformed = client
        .tag_resource()
        .resource_arn("arn:aws:s3:::bucket")
        .tags("k", "v")
        .send()
        .await
        .expect_err("not a Kinesis ARN");
    assert_eq!(code(&malformed), "ValidationException");
    // A consumer that exists takes tags; registered with bad ones, it is
    // not registered.
    let refused = client
        .register_stream_consumer()
        .stream_arn(stream_arn("strict").to_string())
        .consumer_name("tagged-badly")
        .tags("aws:x", "y")
        .send()
        .await
        .expect_err("a reserved key at registration");
    assert_eq!(code(&refused), "InvalidArgumentException");
    let listed = client
        .list_stream_consumers()
        .stream_arn(stream_arn("strict").to_string())
        .send()
        .await?;
    assert!(listed.consumers.unwrap_or_default().is_empty());
    let reader = register_consumer(&client, "strict", "reader").await?;
    assert!(resource_tags(&client, &reader).await?.is_empty());
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_additions_never_pass_fifty_tags_together() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "raced", 1).await?;
    // Two callers add 30 different tags each at once: each alone fits,
    // both together would make 60.
    let add = |prefix: &'static str| {
        let mut call = client.add_tags_to_stream().stream_name("raced");
        for i in 0..30 {
            call = call.tags(format!("{prefix}-{i:02}"), "v");
        }
        call.send()
    };
    let (first, second) = tokio::join!(add("left"), add("right"));
    let refused: Vec<String> = [first.err(), second.err()]
        .into_iter()
        .flatten()
        .map(|error| code(&error))
        .collect();
    assert_eq!(refused, ["InvalidArgumentException"], "exactly one fits");
    assert_eq!(stream_tags(&client, "raced").await?.len(), 30);
    cluster.shutdown().await;
    Ok(())
}
