//! Per-shard throughput limits, enforced by the shard's leader: writes over
//! 1,000 records/s or 1 MiB/s and reads over 5 calls/s get
//! ProvisionedThroughputExceededException (per record in PutRecords), and
//! nothing refused is written.

use std::time::Duration;

use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType};
use freshet_e2e::{create_active_stream, read_stream, Cluster, ClusterOptions};
use freshet_storage_worker::ShardLimits;

async fn limited_cluster() -> anyhow::Result<Cluster> {
    Cluster::start_with(ClusterOptions {
        shard_limits: ShardLimits::KINESIS,
        shard_level_metrics: true,
        ..ClusterOptions::default()
    })
    .await
}

/// A client that shows throttling instead of retrying it (the SDK retries
/// ProvisionedThroughputExceededException with backoff by default).
fn client_without_retries(cluster: &Cluster) -> aws_sdk_kinesis::Client {
    let config = cluster
        .kinesis()
        .config()
        .to_builder()
        .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled())
        .build();
    aws_sdk_kinesis::Client::from_conf(config)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_over_a_shards_limit_are_refused_per_record_and_not_written() -> anyhow::Result<()> {
    let cluster = limited_cluster().await?;
    let client = client_without_retries(&cluster);
    create_active_stream(&client, "limited", 1).await?;
    // Six full batches at once: 3,000 records against 1,000 records/s.
    let started = tokio::time::Instant::now();
    let batches = (0..6).map(|batch| {
        let client = client.clone();
        async move {
            let entries = (0..500)
                .map(|i| {
                    PutRecordsRequestEntry::builder()
                        .partition_key(format!("k{i}"))
                        .data(Blob::new(format!("b{batch}-r{i}")))
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()?;
            anyhow::Ok(
                client
                    .put_records()
                    .stream_name("limited")
                    .set_records(Some(entries))
                    .send()
                    .await?,
            )
        }
    });
    let outputs = futures::future::try_join_all(batches).await?;
    let elapsed = started.elapsed().as_secs_f64();
    let (mut acknowledged, mut throttled) = (0usize, 0usize);
    for output in &outputs {
        for record in &output.records {
            match record.error_code() {
                None => acknowledged += 1,
                Some("ProvisionedThroughputExceededException") => {
                    throttled += 1;
                    assert!(record.error_message().unwrap_or_default().starts_with(
                        "Rate exceeded for shard shardId-000000000000 in stream limited"
                    ));
                }
                Some(other) => anyhow::bail!("unexpected error {other}"),
            }
        }
        assert_eq!(
            output.failed_record_count,
            Some(
                output
                    .records
                    .iter()
                    .filter(|r| r.error_code().is_some())
                    .count() as i32
            )
        );
    }
    // One second's worth to start with, then 1,000 more per second.
    let allowed = 1_000.0 + 1_000.0 * elapsed;
    assert!(
        (acknowledged as f64) <= allowed + 1.0,
        "{acknowledged} acknowledged in {elapsed:.2} s"
    );
    assert!(throttled > 0);
    // A PutRecord is refused whole once the bytes limit is spent:
    // 200 KiB records against 1 MiB/s.
    let large = Blob::new(vec![b'x'; 200 * 1024]);
    let mut refused = None;
    for _ in 0..30 {
        match client
            .put_record()
            .stream_name("limited")
            .partition_key("large")
            .data(large.clone())
            .send()
            .await
        {
            Ok(_) => acknowledged += 1,
            Err(error) => {
                refused = Some(error);
                break;
            }
        }
    }
    let refused =
        refused.ok_or_else(|| anyhow::anyhow!("6 MiB of PutRecord calls were all served"))?;
    assert_eq!(
        refused.code(),
        Some("ProvisionedThroughputExceededException")
    );

    // Nothing refused was written: exactly the acknowledged records are there.
    tokio::time::sleep(Duration::from_secs(1)).await;
    let stored = read_stream(&client, "limited").await?;
    assert_eq!(stored.len(), acknowledged);

    // The stream's metrics count what the callers were told: every
    // refused record of the batches, and the refused PutRecord.
    let metrics = cluster.frontend.registry.encode();
    let series = |name: &str| {
        let prefix = format!(
            "{name}{{StreamName=\"limited\",AccountId=\"000000000000\",Region=\"us-east-1\"}} "
        );
        metrics
            .lines()
            .find_map(|line| line.strip_prefix(prefix.as_str()))
            .and_then(|value| value.trim().parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    assert_eq!(
        series("kinesis_PutRecords_ThrottledRecords_total"),
        throttled as f64
    );
    assert_eq!(
        series("kinesis_WriteProvisionedThroughputExceeded_total"),
        throttled as f64 + 1.0
    );
    assert_eq!(series("kinesis_IncomingRecords_total"), acknowledged as f64);
    let per_shard = format!(
        "kinesis_shard_WriteProvisionedThroughputExceeded_total{{StreamName=\"limited\",AccountId=\"000000000000\",Region=\"us-east-1\",ShardId=\"shardId-000000000000\"}} {}",
        throttled + 1
    );
    assert!(metrics.contains(&per_shard), "{metrics}");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sixth_read_within_a_second_is_throttled() -> anyhow::Result<()> {
    let cluster = limited_cluster().await?;
    let client = client_without_retries(&cluster);
    create_active_stream(&client, "polled", 1).await?;
    let iterator = client
        .get_shard_iterator()
        .stream_name("polled")
        .shard_id("shardId-000000000000")
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await?
        .shard_iterator
        .unwrap_or_default();
    let mut refused = None;
    for _ in 0..30 {
        if let Err(error) = client.get_records().shard_iterator(&iterator).send().await {
            refused = Some(error);
            break;
        }
    }
    let refused =
        refused.ok_or_else(|| anyhow::anyhow!("thirty reads in a row were all served"))?;
    assert_eq!(
        refused.code(),
        Some("ProvisionedThroughputExceededException")
    );
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    client
        .get_records()
        .shard_iterator(&iterator)
        .send()
        .await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_record_passes_a_full_shard_then_the_shard_refills() -> anyhow::Result<()> {
    let cluster = limited_cluster().await?;
    let client = client_without_retries(&cluster);
    create_active_stream(&client, "large", 1).await?;
    let arn = client
        .describe_stream_summary()
        .stream_name("large")
        .send()
        .await?
        .stream_description_summary
        .map(|s| s.stream_arn)
        .unwrap_or_default();
    let six_mib = Blob::new(vec![b'x'; 6 * 1024 * 1024]);
    let put_large = || {
        client
            .put_record()
            .stream_name("large")
            .partition_key("big")
            .data(six_mib.clone())
            .send()
    };
    let too_large = put_large().await.expect_err("over the stream's 1 MiB");
    assert_eq!(too_large.code(), Some("ValidationException"));

    let out_of_range = client
        .update_max_record_size()
        .stream_arn(&arn)
        .max_record_size_in_kib(1023)
        .send()
        .await
        .expect_err("below 1024 KiB");
    assert_eq!(out_of_range.code(), Some("ValidationException"));
    client
        .update_max_record_size()
        .stream_arn(&arn)
        .max_record_size_in_kib(10240)
        .send()
        .await?;

    // A full 1 MiB/s bucket lets the 6 MiB record through ...
    let mut passed = false;
    for _ in 0..100 {
        match put_large().await {
            Ok(_) => {
                passed = true;
                break;
            }
            Err(error) if error.code() == Some("ValidationException") => {
                // The new limit is still on its way through the change log.
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(error) => anyhow::bail!("unexpected error {error:?}"),
        }
    }
    assert!(passed, "a 6 MiB record never passed");
    // ... and leaves the shard in debt: the next write is refused ...
    let refused = client
        .put_record()
        .stream_name("large")
        .partition_key("small")
        .data(Blob::new("x"))
        .send()
        .await
        .expect_err("the shard is in debt");
    assert_eq!(
        refused.code(),
        Some("ProvisionedThroughputExceededException")
    );
    // ... until it has refilled at 1 MiB/s (5 MiB of debt: 5 s).
    tokio::time::sleep(Duration::from_millis(5_500)).await;
    client
        .put_record()
        .stream_name("large")
        .partition_key("small")
        .data(Blob::new("x"))
        .send()
        .await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_plane_calls_over_their_rate_get_limit_exceeded() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(ClusterOptions {
        api_rate_limits: true,
        ..ClusterOptions::default()
    })
    .await?;
    let client = client_without_retries(&cluster);
    // ListStreams allows 5 calls a second per account: of 30 at once,
    // most are refused, whatever the machine's speed.
    let calls = (0..30).map(|_| client.list_streams().send());
    let outcomes = futures::future::join_all(calls).await;
    let refused: Vec<_> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(refused.len() >= 20, "only {} of 30 refused", refused.len());
    for error in refused {
        assert_eq!(error.code(), Some("LimitExceededException"));
    }
    // Other operations have their own rates.
    client
        .create_stream()
        .stream_name("rated")
        .shard_count(1)
        .send()
        .await?;
    cluster.shutdown().await;
    Ok(())
}
