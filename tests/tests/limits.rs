//! DescribeLimits with the AWS SDK for Rust: the counts move as streams
//! are created, resharded, switched to on-demand and deleted, and the
//! on-demand streams limit it reports is the one CreateStream and
//! UpdateStreamMode enforce.

use std::time::Duration;

use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::types::{StreamMode, StreamModeDetails};
use freshet_e2e::{create_active_stream, stream_arn, wait_until, Cluster, ClusterOptions};

/// (ShardLimit, OpenShardCount, OnDemandStreamCount, OnDemandStreamCountLimit).
async fn limits(client: &aws_sdk_kinesis::Client) -> anyhow::Result<(i32, i32, i32, i32)> {
    let limits = client.describe_limits().send().await?;
    Ok((
        limits.shard_limit,
        limits.open_shard_count,
        limits.on_demand_stream_count,
        limits.on_demand_stream_count_limit,
    ))
}

fn on_demand() -> anyhow::Result<StreamModeDetails> {
    Ok(StreamModeDetails::builder()
        .stream_mode(StreamMode::OnDemand)
        .build()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn describe_limits_counts_what_the_account_has_and_the_limits_hold() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(ClusterOptions {
        shard_limit: 20,
        on_demand_stream_limit: 2,
        ..ClusterOptions::default()
    })
    .await?;
    let client = cluster.kinesis();
    assert_eq!(limits(&client).await?, (20, 0, 0, 2));

    create_active_stream(&client, "provisioned", 3).await?;
    assert_eq!(limits(&client).await?, (20, 3, 0, 2));
    // A split closes one shard and opens two.
    client
        .split_shard()
        .stream_name("provisioned")
        .shard_to_split("shardId-000000000000")
        .new_starting_hash_key((1u128 << 125).to_string())
        .send()
        .await?;
    wait_until(Duration::from_secs(20), || async {
        limits(&client).await.ok() == Some((20, 4, 0, 2))
    })
    .await?;

    // On-demand streams count, up to the limit.
    client
        .create_stream()
        .stream_name("on-demand")
        .stream_mode_details(on_demand()?)
        .send()
        .await?;
    wait_until(Duration::from_secs(20), || {
        freshet_e2e::is_active(&client, "on-demand")
    })
    .await?;
    assert_eq!(limits(&client).await?, (20, 8, 1, 2));
    client
        .update_stream_mode()
        .stream_arn(stream_arn("provisioned").to_string())
        .stream_mode_details(on_demand()?)
        .send()
        .await?;
    wait_until(Duration::from_secs(20), || async {
        limits(&client).await.ok().map(|l| l.2) == Some(2)
    })
    .await?;
    let refused = client
        .create_stream()
        .stream_name("one-too-many")
        .stream_mode_details(on_demand()?)
        .send()
        .await
        .expect_err("a third on-demand stream");
    assert_eq!(
        refused.as_service_error().and_then(|e| e.code()),
        Some("LimitExceededException")
    );
    create_active_stream(&client, "third", 1).await?;
    let refused = client
        .update_stream_mode()
        .stream_arn(stream_arn("third").to_string())
        .stream_mode_details(on_demand()?)
        .send()
        .await
        .expect_err("a third on-demand stream, by a mode change");
    assert_eq!(
        refused.as_service_error().and_then(|e| e.code()),
        Some("LimitExceededException")
    );

    // Deleted, it counts no more.
    client
        .delete_stream()
        .stream_name("on-demand")
        .send()
        .await?;
    wait_until(Duration::from_secs(20), || async {
        limits(&client).await.ok().map(|l| l.2) == Some(1)
    })
    .await?;
    cluster.shutdown().await;
    Ok(())
}
