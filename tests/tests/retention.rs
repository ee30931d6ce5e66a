//! Retention with the AWS SDK for Rust: IncreaseStreamRetentionPeriod and
//! DecreaseStreamRetentionPeriod change how long records are served — to
//! the record, not to the file — and workers trim the files that expired.
//! An increase keeps what had not yet expired and never brings back what
//! had; a decrease hides the older records at once; records written right
//! after a change are served. A retention hour lasts a fraction of a
//! second here (`Retention::hour`), the same in every service.

use std::time::{Duration, Instant};

use aws_sdk_kinesis::primitives::Blob;
use freshet_e2e::{
    create_active_stream, error_code, read_shard, segment_dir, wait_until, Cluster, ClusterOptions,
    Retention,
};

/// One retention hour in these tests: 24 hours last 6 s, 48 hours 12 s.
const HOUR: Duration = Duration::from_millis(250);

fn hours(n: u32) -> Duration {
    HOUR * n
}

fn cluster_options(check_interval: Duration) -> ClusterOptions {
    ClusterOptions {
        retention: Retention {
            segment_bytes: 4_096,
            hour: HOUR,
            check_interval,
        },
        ..ClusterOptions::default()
    }
}

/// Writes one record and returns when it was written (before the call, so
/// its arrival time is no earlier).
async fn put(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    data: &str,
) -> anyhow::Result<Instant> {
    let before = Instant::now();
    client
        .put_record()
        .stream_name(stream)
        .partition_key("k")
        .data(Blob::new(data.as_bytes()))
        .send()
        .await?;
    Ok(before)
}

/// The data of every record served from TRIM_HORIZON.
async fn served(client: &aws_sdk_kinesis::Client, stream: &str) -> anyhow::Result<Vec<String>> {
    Ok(read_shard(client, stream, "shardId-000000000000")
        .await?
        .into_iter()
        .map(|r| String::from_utf8_lossy(r.data.as_ref()).into_owned())
        .collect())
}

async fn retention_hours(client: &aws_sdk_kinesis::Client, stream: &str) -> anyhow::Result<i32> {
    Ok(client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await?
        .stream_description_summary
        .map(|s| s.retention_period_hours)
        .unwrap_or_default())
}

/// Sleeps until `at`, if it is still ahead.
async fn sleep_until(at: Instant) {
    tokio::time::sleep(at.saturating_duration_since(Instant::now())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_increase_keeps_unexpired_records_and_a_decrease_hides_older_ones_at_once(
) -> anyhow::Result<()> {
    let cluster = Cluster::start_with(cluster_options(Duration::from_millis(200))).await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "kept", 1).await?;

    // Enough to fill a few log files, so the oldest can be trimmed whole.
    let first = put(&client, "kept", "first").await?;
    for i in 0..12 {
        put(&client, "kept", &format!("{i:0>1000}")).await?;
    }
    client
        .increase_stream_retention_period()
        .stream_name("kept")
        .retention_period_hours(48)
        .send()
        .await?;
    assert_eq!(retention_hours(&client, "kept").await?, 48);

    // Past 24 hours, within 48: the first record is still served.
    sleep_until(first + hours(24) + Duration::from_secs(1)).await;
    let read_at = Instant::now();
    let records = served(&client, "kept").await?;
    if Instant::now() < first + hours(48) {
        assert_eq!(
            records.first().map(String::as_str),
            Some("first"),
            "kept by the increase"
        );
        assert_eq!(records.len(), 13);
    }
    anyhow::ensure!(read_at > first + hours(24));

    // Back to 24 hours: everything written so far is older, so nothing is
    // served from that moment on; a record written right after is.
    client
        .decrease_stream_retention_period()
        .stream_name("kept")
        .retention_period_hours(24)
        .send()
        .await?;
    put(&client, "kept", "after the decrease").await?;
    assert_eq!(served(&client, "kept").await?, ["after the decrease"]);

    // And the workers trim the expired files: the oldest log file of every
    // copy goes.
    let entry = cluster.only_entry("kept").expect("the shard");
    let first_file = "00000000000000000000.log";
    wait_until(Duration::from_secs(30), || async {
        cluster.workers.iter().all(|worker| {
            !segment_dir(&worker.data_dir, &entry)
                .join(first_file)
                .exists()
        })
    })
    .await?;
    assert_eq!(served(&client, "kept").await?, ["after the decrease"]);
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn records_expire_to_the_record_and_an_increase_never_brings_them_back() -> anyhow::Result<()>
{
    // Workers never get round to trimming here: what hides expired
    // records is the read side alone.
    let cluster = Cluster::start_with(cluster_options(Duration::from_secs(3_600))).await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "expiring", 1).await?;
    let old = put(&client, "expiring", "old").await?;
    tokio::time::sleep(hours(12)).await;
    put(&client, "expiring", "newer").await?;

    // The old record is past 24 hours, the newer one is not: in one file,
    // one is served and the other not.
    sleep_until(old + hours(24) + Duration::from_millis(500)).await;
    let records = served(&client, "expiring").await?;
    assert!(!records.contains(&"old".to_owned()), "{records:?}");
    if Instant::now() < old + hours(36) {
        assert_eq!(records, ["newer"]);
    }
    let entry = cluster.only_entry("expiring").expect("the shard");
    for worker in &cluster.workers {
        let dir = segment_dir(&worker.data_dir, &entry);
        assert!(dir.join("00000000000000000000.log").exists(), "not trimmed");
    }

    // A longer period does not bring the expired record back; the newer
    // one stays, and one written now is served.
    client
        .increase_stream_retention_period()
        .stream_name("expiring")
        .retention_period_hours(100)
        .send()
        .await?;
    put(&client, "expiring", "after the increase").await?;
    let records = served(&client, "expiring").await?;
    assert!(!records.contains(&"old".to_owned()), "{records:?}");
    assert_eq!(
        records.last().map(String::as_str),
        Some("after the increase")
    );
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn retention_changes_are_checked_before_anything_changes() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "checked", 1).await?;
    assert_eq!(retention_hours(&client, "checked").await?, 24);

    let refused = |hours: i32, increase: bool| {
        let client = client.clone();
        async move {
            let (code, message) = if increase {
                let error = client
                    .increase_stream_retention_period()
                    .stream_name("checked")
                    .retention_period_hours(hours)
                    .send()
                    .await
                    .expect_err("refused");
                (
                    error_code(&error),
                    error
                        .as_service_error()
                        .and_then(|e| e.message().map(str::to_owned)),
                )
            } else {
                let error = client
                    .decrease_stream_retention_period()
                    .stream_name("checked")
                    .retention_period_hours(hours)
                    .send()
                    .await
                    .expect_err("refused");
                (
                    error_code(&error),
                    error
                        .as_service_error()
                        .and_then(|e| e.message().map(str::to_owned)),
                )
            };
            (code, message.unwrap_or_default())
        }
    };
    use aws_sdk_kinesis::error::ProvideErrorMetadata as _;
    assert_eq!(
        refused(23, true).await,
        (
            "InvalidArgumentException".to_owned(),
            "Minimum allowed retention period is 24 hours. Requested retention period (23 hours) is too short.".to_owned()
        )
    );
    assert_eq!(
        refused(8_761, true).await,
        (
            "InvalidArgumentException".to_owned(),
            "Maximum allowed retention period is 8760 hours. Requested retention period (8761 hours) is too long.".to_owned()
        )
    );
    assert_eq!(
        refused(48, false).await,
        (
            "InvalidArgumentException".to_owned(),
            "Requested retention period (48 hours) for stream checked can not be longer than existing retention period (24 hours). Use IncreaseRetentionPeriod API.".to_owned()
        )
    );
    client
        .increase_stream_retention_period()
        .stream_name("checked")
        .retention_period_hours(8_760)
        .send()
        .await?;
    assert_eq!(
        refused(100, true).await,
        (
            "InvalidArgumentException".to_owned(),
            "Requested retention period (100 hours) for stream checked can not be shorter than existing retention period (8760 hours). Use DecreaseRetentionPeriod API.".to_owned()
        )
    );
    assert_eq!(retention_hours(&client, "checked").await?, 8_760);
    // The same period either way changes nothing and is no error.
    client
        .decrease_stream_retention_period()
        .stream_name("checked")
        .retention_period_hours(8_760)
        .send()
        .await?;
    client
        .decrease_stream_retention_period()
        .stream_name("checked")
        .retention_period_hours(24)
        .send()
        .await?;
    assert_eq!(retention_hours(&client, "checked").await?, 24);

    let missing = client
        .increase_stream_retention_period()
        .stream_name("missing")
        .retention_period_hours(48)
        .send()
        .await
        .expect_err("no such stream");
    assert_eq!(error_code(&missing), "ResourceNotFoundException");
    let unnamed = client
        .increase_stream_retention_period()
        .retention_period_hours(48)
        .send()
        .await
        .expect_err("no stream named");
    assert_eq!(error_code(&unnamed), "InvalidArgumentException");
    cluster.shutdown().await;
    Ok(())
}
