//! ListShards's ShardFilter with the AWS SDK for Rust, over a stream with a
//! split and a merge at known times: each filter type lists what the API
//! reference says, across pages, and shards closed before the trim horizon
//! drop out as they expire. A retention hour lasts a second here, so the
//! stream's 24-hour trim horizon passes its start 24 s after creation.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::{ShardFilter, ShardFilterType};
use freshet_e2e::{create_active_stream, wait_until, Cluster, ClusterOptions, Retention};

const HOUR: Duration = Duration::from_secs(1);

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// The ids ListShards lists with `filter`, two per page.
async fn listed(
    client: &aws_sdk_kinesis::Client,
    filter: Option<ShardFilter>,
) -> anyhow::Result<Vec<String>> {
    let mut ids = Vec::new();
    let mut page = client
        .list_shards()
        .stream_name("filtered")
        .set_shard_filter(filter)
        .max_results(2)
        .send()
        .await?;
    loop {
        ids.extend(
            page.shards
                .unwrap_or_default()
                .into_iter()
                .map(|s| s.shard_id),
        );
        let Some(token) = page.next_token else {
            return Ok(ids);
        };
        page = client
            .list_shards()
            .next_token(token)
            .max_results(2)
            .send()
            .await?;
    }
}

fn filter(kind: ShardFilterType, at_ms: Option<i64>) -> Option<ShardFilter> {
    Some(
        ShardFilter::builder()
            .r#type(kind)
            .set_timestamp(at_ms.map(DateTime::from_millis))
            .build()
            .expect("a filter"),
    )
}

fn ids(numbers: &[u32]) -> Vec<String> {
    numbers.iter().map(|n| format!("shardId-{n:012}")).collect()
}

/// Waits until every shard in `closed` has an ending sequence number.
async fn wait_closed(client: &aws_sdk_kinesis::Client, closed: &[u32]) -> anyhow::Result<()> {
    let wanted = ids(closed);
    wait_until(Duration::from_secs(30), || async {
        let Ok(page) = client.list_shards().stream_name("filtered").send().await else {
            return false;
        };
        page.shards.unwrap_or_default().iter().all(|s| {
            !wanted.contains(&s.shard_id)
                || s.sequence_number_range
                    .as_ref()
                    .is_some_and(|r| r.ending_sequence_number.is_some())
        })
    })
    .await
}

async fn wait_active(client: &aws_sdk_kinesis::Client) -> anyhow::Result<()> {
    wait_until(Duration::from_secs(30), || async {
        freshet_e2e::is_active(client, "filtered").await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn shard_filters_list_what_the_api_reference_says_around_a_split_and_a_merge(
) -> anyhow::Result<()> {
    let cluster = Cluster::start_with(ClusterOptions {
        retention: Retention {
            hour: HOUR,
            ..Retention::default()
        },
        ..ClusterOptions::default()
    })
    .await?;
    let client = cluster.kinesis();
    let created = Instant::now();
    create_active_stream(&client, "filtered", 2).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let before_split = now_ms();
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Shard 0 splits into 2 and 3; then 3 merges with 1 into 4.
    let first_end: u128 = u128::MAX / 2;
    client
        .split_shard()
        .stream_name("filtered")
        .shard_to_split("shardId-000000000000")
        .new_starting_hash_key((first_end / 2).to_string())
        .send()
        .await?;
    wait_active(&client).await?;
    wait_closed(&client, &[0]).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let between = now_ms();
    tokio::time::sleep(Duration::from_millis(300)).await;
    client
        .merge_shards()
        .stream_name("filtered")
        .shard_to_merge("shardId-000000000003")
        .adjacent_shard_to_merge("shardId-000000000001")
        .send()
        .await?;
    wait_active(&client).await?;
    wait_closed(&client, &[0, 1, 3]).await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    let after_merge = now_ms();

    // Nothing has expired while the trim horizon is still the stream's
    // start (24 s after its creation).
    let table = [
        (None, ids(&[0, 1, 2, 3, 4])),
        (
            filter(ShardFilterType::FromTrimHorizon, None),
            ids(&[0, 1, 2, 3, 4]),
        ),
        (filter(ShardFilterType::AtTrimHorizon, None), ids(&[0, 1])),
        (filter(ShardFilterType::AtLatest, None), ids(&[2, 4])),
        (
            filter(ShardFilterType::AtTimestamp, Some(before_split)),
            ids(&[0, 1]),
        ),
        (
            filter(ShardFilterType::AtTimestamp, Some(between)),
            ids(&[1, 2, 3]),
        ),
        (
            filter(ShardFilterType::AtTimestamp, Some(after_merge)),
            ids(&[2, 4]),
        ),
        (
            filter(ShardFilterType::FromTimestamp, Some(between)),
            ids(&[1, 2, 3, 4]),
        ),
        (
            filter(ShardFilterType::FromTimestamp, Some(after_merge)),
            ids(&[2, 4]),
        ),
        (
            filter(ShardFilterType::FromTimestamp, Some(0)),
            ids(&[0, 1, 2, 3, 4]),
        ),
        (
            Some(
                ShardFilter::builder()
                    .r#type(ShardFilterType::AfterShardId)
                    .shard_id("shardId-000000000001")
                    .build()?,
            ),
            ids(&[2, 3, 4]),
        ),
    ];
    for (shard_filter, expected) in &table {
        let got = listed(&client, shard_filter.clone()).await?;
        if created.elapsed() < HOUR * 23 {
            assert_eq!(&got, expected, "{shard_filter:?}");
        }
    }

    // Once the trim horizon passes the merge, the shards closed before it
    // have expired: only the open ones are listed, whatever the filter.
    wait_until(HOUR * 24 + Duration::from_secs(30), || async {
        listed(&client, None)
            .await
            .is_ok_and(|got| got == ids(&[2, 4]))
    })
    .await?;
    let expired_after_merge_ms = now_ms() - after_merge;
    eprintln!("shards 1 and 3 expired {expired_after_merge_ms} ms after the merge");
    assert!(
        expired_after_merge_ms >= (HOUR * 24).as_millis() as i64 - 2_000,
        "shards expired {expired_after_merge_ms} ms after the merge, before the trim horizon passed them"
    );
    let described: Vec<String> = client
        .describe_stream()
        .stream_name("filtered")
        .send()
        .await?
        .stream_description
        .map(|d| d.shards.into_iter().map(|s| s.shard_id).collect())
        .unwrap_or_default();
    assert_eq!(described, ids(&[2, 4]), "DescribeStream drops them too");
    assert_eq!(
        listed(&client, filter(ShardFilterType::AtTrimHorizon, None)).await?,
        ids(&[2, 4])
    );
    assert_eq!(
        listed(&client, filter(ShardFilterType::FromTimestamp, Some(0))).await?,
        ids(&[2, 4])
    );
    cluster.shutdown().await;
    Ok(())
}
