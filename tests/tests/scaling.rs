//! On-demand capacity through the AWS SDK: the scaler splits shards that
//! are offered more than they can take and merges idle ones after its
//! cool-down, never below the stream's floor; warm throughput raises that
//! floor at once and needs the account's billing commitment, as in Kinesis.

use std::time::Duration;

use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::types::MinimumThroughputBillingCommitmentOutputStatus;
use freshet_control_plane::ScalerConfig;
use freshet_e2e::load::{assert_acknowledged_readable_once, Producers};
use freshet_e2e::{
    create_active_stream, create_on_demand_stream, is_active, open_shard_count,
    set_billing_commitment, stream_summary, wait_until, Cluster, ClusterOptions,
};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_on_demand_stream_grows_under_load_and_shrinks_back_when_idle() -> anyhow::Result<()> {
    // Small shards (100 records/s) so a test's producers overload them.
    let cluster = Cluster::start_with(ClusterOptions {
        scaler: ScalerConfig {
            scaler_interval: Duration::from_millis(300),
            scale_down_cooldown: Duration::from_secs(2),
            shard_write_records_per_sec: 100,
            on_demand_max_shards: 12,
            // Shards stay with their workers (balancing.rs tests moves).
            balance_at: f64::INFINITY,
            ..ScalerConfig::default()
        },
        ..ClusterOptions::default()
    })
    .await?;
    let client = cluster.kinesis();
    create_on_demand_stream(&client, "surge", None).await?;
    assert_eq!(
        open_shard_count(&client, "surge").await,
        4,
        "on-demand starts at 4"
    );

    let producers = Producers::start(&client, "surge", 4, 50);
    wait_until(Duration::from_secs(60), || async {
        open_shard_count(&client, "surge").await > 4
    })
    .await?;
    let acknowledged = producers.stop().await?;
    let peak = open_shard_count(&client, "surge").await;
    assert!(peak <= 12, "grew past the stream's cap: {peak}");

    // Idle: after the cool-down, neighbours merge back — down to the floor.
    wait_until(Duration::from_secs(60), || async {
        open_shard_count(&client, "surge").await < peak && is_active(&client, "surge").await
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        open_shard_count(&client, "surge").await >= 4,
        "shrank below the floor"
    );
    assert_acknowledged_readable_once(&client, "surge", &acknowledged).await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn warm_throughput_needs_the_commitment_and_adds_capacity_at_once() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_on_demand_stream(&client, "warm", None).await?;

    let refused = client
        .update_stream_warm_throughput()
        .stream_name("warm")
        .warm_throughput_mibps(8)
        .send()
        .await
        .expect_err("no billing commitment yet");
    assert_eq!(refused.code(), Some("InvalidArgumentException"));
    assert!(stream_summary(&client, "warm")
        .await
        .and_then(|s| s.warm_throughput)
        .is_none());

    let enabled = set_billing_commitment(&client, true).await?;
    assert_eq!(
        enabled.status,
        MinimumThroughputBillingCommitmentOutputStatus::Enabled
    );
    assert!(enabled.earliest_allowed_end_at.is_some());

    let warmed = client
        .update_stream_warm_throughput()
        .stream_name("warm")
        .warm_throughput_mibps(8)
        .send()
        .await?
        .warm_throughput
        .ok_or_else(|| anyhow::anyhow!("no warm throughput in the answer"))?;
    assert_eq!(warmed.target_mibps, Some(8));
    assert_eq!(warmed.current_mibps, Some(4));
    wait_until(Duration::from_secs(30), || async {
        open_shard_count(&client, "warm").await >= 8 && is_active(&client, "warm").await
    })
    .await?;
    let warm = stream_summary(&client, "warm")
        .await
        .and_then(|s| s.warm_throughput)
        .ok_or_else(|| anyhow::anyhow!("no WarmThroughput described"))?;
    assert_eq!(warm.target_mibps, Some(8));
    assert!(warm.current_mibps >= Some(8));

    // A provisioned stream cannot have warm throughput.
    create_active_stream(&client, "fixed", 1).await?;
    let refused = client
        .update_stream_warm_throughput()
        .stream_name("fixed")
        .warm_throughput_mibps(2)
        .send()
        .await
        .expect_err("provisioned");
    assert_eq!(refused.code(), Some("InvalidArgumentException"));

    // Disabling before 24 h keeps the commitment until its earliest end.
    let pending = set_billing_commitment(&client, false).await?;
    assert_eq!(
        pending.status,
        MinimumThroughputBillingCommitmentOutputStatus::EnabledUntilEarliestAllowedEnd
    );
    let described = client
        .describe_account_settings()
        .send()
        .await?
        .minimum_throughput_billing_commitment
        .ok_or_else(|| anyhow::anyhow!("no commitment described"))?;
    assert_eq!(described.status, pending.status);
    cluster.shutdown().await;
    Ok(())
}
