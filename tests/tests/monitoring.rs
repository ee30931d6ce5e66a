//! Enhanced monitoring with the AWS SDK for Rust: EnableEnhancedMonitoring
//! and DisableEnhancedMonitoring answer what was on before and after,
//! DescribeStreamSummary reports it, and the frontend's shard-level
//! metrics follow the switch, stream by stream.

use std::time::Duration;

use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::MetricsName;
use freshet_e2e::{create_active_stream, stream_arn, wait_until, Cluster};

/// The value of the frontend's metric line for `stream` starting with
/// `family`, if there is one.
fn shard_metric(cluster: &Cluster, family: &str, stream: &str) -> Option<f64> {
    let text = cluster.frontend.registry.encode();
    text.lines()
        .filter(|line| line.starts_with(&format!("{family}{{")))
        .filter(|line| line.contains(&format!("StreamName=\"{stream}\"")))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .reduce(|a, b| a + b)
}

/// The set the frontend's routes carry for `stream`.
fn routed_metrics(cluster: &Cluster, stream: &str) -> Option<u32> {
    cluster
        .frontend
        .router()
        .map()
        .read(|m| m.stream_entries(&stream_arn(stream)))
        .first()
        .map(|e| e.shard_level_metrics)
}

async fn put(client: &aws_sdk_kinesis::Client, stream: &str) -> anyhow::Result<()> {
    client
        .put_record()
        .stream_name(stream)
        .partition_key("k")
        .data(Blob::new("watched"))
        .send()
        .await?;
    Ok(())
}

fn names(metrics: Option<&[MetricsName]>) -> Vec<String> {
    metrics
        .unwrap_or_default()
        .iter()
        .map(|m| m.as_str().to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shard_level_metrics_follow_enhanced_monitoring_stream_by_stream() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "watched", 1).await?;
    create_active_stream(&client, "unwatched", 1).await?;

    let enabled = client
        .enable_enhanced_monitoring()
        .stream_name("watched")
        .shard_level_metrics(MetricsName::IncomingBytes)
        .shard_level_metrics(MetricsName::IteratorAgeMilliseconds)
        .send()
        .await?;
    assert!(names(enabled.current_shard_level_metrics.as_deref()).is_empty());
    assert_eq!(
        names(enabled.desired_shard_level_metrics.as_deref()),
        ["IncomingBytes", "IteratorAgeMilliseconds"]
    );
    let summary = client
        .describe_stream_summary()
        .stream_name("watched")
        .send()
        .await?
        .stream_description_summary
        .ok_or_else(|| anyhow::anyhow!("no summary"))?;
    assert_eq!(
        names(
            summary.enhanced_monitoring[0]
                .shard_level_metrics
                .as_deref()
        ),
        ["IncomingBytes", "IteratorAgeMilliseconds"]
    );

    // Once the frontend's routes carry the set, writes are counted per
    // shard for that metric of that stream only.
    wait_until(Duration::from_secs(10), || async {
        routed_metrics(&cluster, "watched") == Some(1 | 64)
    })
    .await?;
    put(&client, "watched").await?;
    put(&client, "unwatched").await?;
    assert!(
        shard_metric(&cluster, "kinesis_shard_IncomingBytes_total", "watched")
            .is_some_and(|v| v > 0.0)
    );
    assert!(shard_metric(&cluster, "kinesis_shard_IncomingRecords_total", "watched").is_none());
    assert!(shard_metric(&cluster, "kinesis_shard_IncomingBytes_total", "unwatched").is_none());

    // ALL, then some off again.
    let all = client
        .enable_enhanced_monitoring()
        .stream_arn(stream_arn("watched").to_string())
        .shard_level_metrics(MetricsName::All)
        .send()
        .await?;
    assert_eq!(names(all.desired_shard_level_metrics.as_deref()).len(), 7);
    let disabled = client
        .disable_enhanced_monitoring()
        .stream_name("watched")
        .shard_level_metrics(MetricsName::All)
        .send()
        .await?;
    assert_eq!(
        names(disabled.current_shard_level_metrics.as_deref()).len(),
        7
    );
    assert!(names(disabled.desired_shard_level_metrics.as_deref()).is_empty());
    wait_until(Duration::from_secs(10), || async {
        routed_metrics(&cluster, "watched") == Some(0)
    })
    .await?;
    let before = shard_metric(&cluster, "kinesis_shard_IncomingBytes_total", "watched");
    put(&client, "watched").await?;
    assert_eq!(
        shard_metric(&cluster, "kinesis_shard_IncomingBytes_total", "watched"),
        before,
        "switched off: no longer counted per shard"
    );

    // Refusals.
    let unknown = client
        .enable_enhanced_monitoring()
        .stream_name("watched")
        .shard_level_metrics(MetricsName::from("IncomingCats"))
        .send()
        .await
        .expect_err("an unknown metric");
    assert_eq!(
        unknown.as_service_error().and_then(|e| e.code()),
        Some("ValidationException")
    );
    let missing = client
        .enable_enhanced_monitoring()
        .stream_name("absent")
        .shard_level_metrics(MetricsName::All)
        .send()
        .await
        .expect_err("no such stream");
    assert_eq!(
        missing.as_service_error().and_then(|e| e.code()),
        Some("ResourceNotFoundException")
    );
    cluster.shutdown().await;
    Ok(())
}
