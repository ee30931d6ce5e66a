//! On-demand capacity through the AWS SDK: the scaler splits shards that
//! are offered more than they can take and merges idle ones after its
//! cool-down, never below the stream's floor; warm throughput raises that
//! floor at once and needs the account's billing commitment, as in Kinesis.

use std::time::Duration;

use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::types::{
    MinimumThroughputBillingCommitmentInput, MinimumThroughputBillingCommitmentInputStatus,
    MinimumThroughputBillingCommitmentOutputStatus, StreamMode, StreamModeDetails, StreamStatus,
};
use freshet_control_plane::ScalerConfig;
use freshet_e2e::load::{assert_acknowledged_readable_once, Producers};
use freshet_e2e::{wait_until, Cluster, ClusterOptions};

async fn open_shards(client: &aws_sdk_kinesis::Client, stream: &str) -> usize {
    client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .ok()
        .and_then(|r| r.stream_description_summary)
        .map_or(0, |s| s.open_shard_count as usize)
}

async fn is_active(client: &aws_sdk_kinesis::Client, stream: &str) -> bool {
    client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .ok()
        .and_then(|r| r.stream_description_summary)
        .is_some_and(|s| s.stream_status == StreamStatus::Active)
}

async fn create_on_demand(client: &aws_sdk_kinesis::Client, stream: &str) -> anyhow::Result<()> {
    client
        .create_stream()
        .stream_name(stream)
        .stream_mode_details(
            StreamModeDetails::builder()
                .stream_mode(StreamMode::OnDemand)
                .build()?,
        )
        .send()
        .await?;
    wait_until(Duration::from_secs(10), || is_active(client, stream)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_on_demand_stream_grows_under_load_and_shrinks_back_when_idle() -> anyhow::Result<()> {
    // Small shards (100 records/s) so a test's producers overload them.
    let cluster = Cluster::start_with(ClusterOptions {
        scaler: ScalerConfig {
            scaler_interval: Duration::from_millis(300),
            scale_down_cooldown: Duration::from_secs(2),
            shard_write_records_per_sec: 100,
            on_demand_max_shards: 12,
            ..ScalerConfig::default()
        },
        ..ClusterOptions::default()
    })
    .await?;
    let client = cluster.kinesis();
    create_on_demand(&client, "surge").await?;
    assert_eq!(
        open_shards(&client, "surge").await,
        4,
        "on-demand starts at 4"
    );

    let producers = Producers::start(&client, "surge", 4, 50);
    wait_until(Duration::from_secs(60), || async {
        open_shards(&client, "surge").await > 4
    })
    .await?;
    let acknowledged = producers.stop().await?;
    let peak = open_shards(&client, "surge").await;
    assert!(peak <= 12, "grew past the stream's cap: {peak}");

    // Idle: after the cool-down, neighbours merge back — down to the floor.
    wait_until(Duration::from_secs(60), || async {
        open_shards(&client, "surge").await < peak && is_active(&client, "surge").await
    })
    .await?;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        open_shards(&client, "surge").await >= 4,
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
    create_on_demand(&client, "warm").await?;

    let refused = client
        .update_stream_warm_throughput()
        .stream_name("warm")
        .warm_throughput_mibps(8)
        .send()
        .await
        .expect_err("no billing commitment yet");
    assert_eq!(refused.code(), Some("InvalidArgumentException"));
    let summary = client
        .describe_stream_summary()
        .stream_name("warm")
        .send()
        .await?;
    assert!(summary
        .stream_description_summary
        .and_then(|s| s.warm_throughput)
        .is_none());

    let enabled = client
        .update_account_settings()
        .minimum_throughput_billing_commitment(
            MinimumThroughputBillingCommitmentInput::builder()
                .status(MinimumThroughputBillingCommitmentInputStatus::Enabled)
                .build()?,
        )
        .send()
        .await?
        .minimum_throughput_billing_commitment
        .ok_or_else(|| anyhow::anyhow!("no commitment in the answer"))?;
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
        open_shards(&client, "warm").await >= 8 && is_active(&client, "warm").await
    })
    .await?;
    let warm = client
        .describe_stream_summary()
        .stream_name("warm")
        .send()
        .await?
        .stream_description_summary
        .and_then(|s| s.warm_throughput)
        .ok_or_else(|| anyhow::anyhow!("no WarmThroughput described"))?;
    assert_eq!(warm.target_mibps, Some(8));
    assert!(warm.current_mibps >= Some(8));

    // A provisioned stream cannot have warm throughput.
    client
        .create_stream()
        .stream_name("fixed")
        .shard_count(1)
        .send()
        .await?;
    wait_until(Duration::from_secs(10), || is_active(&client, "fixed")).await?;
    let refused = client
        .update_stream_warm_throughput()
        .stream_name("fixed")
        .warm_throughput_mibps(2)
        .send()
        .await
        .expect_err("provisioned");
    assert_eq!(refused.code(), Some("InvalidArgumentException"));

    // Disabling before 24 h keeps the commitment until its earliest end.
    let pending = client
        .update_account_settings()
        .minimum_throughput_billing_commitment(
            MinimumThroughputBillingCommitmentInput::builder()
                .status(MinimumThroughputBillingCommitmentInputStatus::Disabled)
                .build()?,
        )
        .send()
        .await?
        .minimum_throughput_billing_commitment
        .ok_or_else(|| anyhow::anyhow!("no commitment in the answer"))?;
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
