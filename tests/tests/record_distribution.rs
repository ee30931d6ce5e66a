//! Record distribution with the AWS SDK for Rust: an on-demand stream
//! switched to AUTO spreads records evenly over its open shards, whatever
//! their partition keys and explicit hash keys, and takes records without a
//! partition key (read back without one); USER_PARTITION_KEY requires a
//! key; provisioned streams have no strategy and refuse AUTO.

use std::collections::BTreeMap;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{
    PutRecordsRequestEntry, RecordDistributionStrategy, StreamMode, StreamModeDetails,
};
use freshet_e2e::{
    create_active_stream, create_on_demand_stream, error_code, read_shard, shard_ids, stream_arn,
    Cluster,
};

async fn strategy(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> anyhow::Result<Option<RecordDistributionStrategy>> {
    Ok(client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await?
        .stream_description_summary
        .and_then(|s| s.record_distribution_strategy))
}

/// How many records each shard of the stream holds.
async fn records_per_shard(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> anyhow::Result<BTreeMap<String, usize>> {
    let mut counts = BTreeMap::new();
    for shard in shard_ids(client, stream).await? {
        let records = read_shard(client, stream, &shard).await?;
        counts.insert(shard, records.len());
    }
    Ok(counts)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn auto_spreads_one_partition_key_over_every_shard() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_on_demand_stream(&client, "spread", None).await?;
    assert_eq!(
        strategy(&client, "spread").await?,
        Some(RecordDistributionStrategy::UserPartitionKey)
    );

    // Without AUTO, a record needs a partition key.
    let keyless = client
        .put_record()
        .stream_name("spread")
        .data(Blob::new("no key"))
        .send()
        .await
        .expect_err("a partition key is required");
    assert_eq!(error_code(&keyless), "InvalidArgumentException");

    client
        .update_stream_record_distribution_strategy()
        .stream_arn(stream_arn("spread").to_string())
        .record_distribution_strategy(RecordDistributionStrategy::Auto)
        .send()
        .await?;
    assert_eq!(
        strategy(&client, "spread").await?,
        Some(RecordDistributionStrategy::Auto)
    );

    // One partition key, 400 records: every open shard gets its share.
    let entries: Vec<PutRecordsRequestEntry> = (0..400)
        .map(|i| {
            PutRecordsRequestEntry::builder()
                .partition_key("always-the-same")
                .data(Blob::new(format!("record-{i}")))
                .build()
        })
        .collect::<Result<_, _>>()?;
    let put = client
        .put_records()
        .stream_name("spread")
        .set_records(Some(entries))
        .send()
        .await?;
    assert_eq!(put.failed_record_count, Some(0));
    // An explicit hash key is ignored too, and a key may be left out.
    for i in 0..8 {
        client
            .put_record()
            .stream_name("spread")
            .partition_key("always-the-same")
            .explicit_hash_key("0")
            .data(Blob::new(format!("explicit-{i}")))
            .send()
            .await?;
    }
    let without_key = client
        .put_record()
        .stream_name("spread")
        .data(Blob::new("no key"))
        .send()
        .await?;
    let counts = records_per_shard(&client, "spread").await?;
    assert_eq!(counts.len(), 4, "{counts:?}");
    assert_eq!(counts.values().sum::<usize>(), 409);
    for (shard, count) in &counts {
        // Round robin from one frontend: 102 or 103 each.
        assert!(
            (102..=103).contains(count),
            "{shard} holds {count}: {counts:?}"
        );
    }
    // Read back: the keyless record has no PartitionKey; the others keep
    // the key their producer gave.
    let records = read_shard(&client, "spread", &without_key.shard_id).await?;
    let keyless = records
        .iter()
        .find(|r| r.data.as_ref() == b"no key")
        .expect("the keyless record");
    assert_eq!(keyless.partition_key, None);
    assert!(records
        .iter()
        .filter(|r| r.data.as_ref() != b"no key")
        .all(|r| r.partition_key.as_deref() == Some("always-the-same")));
    // With AUTO, SequenceNumberForOrdering has nothing to order.
    let ordered = client
        .put_record()
        .stream_name("spread")
        .partition_key("k")
        .sequence_number_for_ordering(&without_key.sequence_number)
        .data(Blob::new("ordered"))
        .send()
        .await
        .expect_err("refused");
    assert_eq!(error_code(&ordered), "InvalidArgumentException");

    // Back to USER_PARTITION_KEY: one key, one shard.
    client
        .update_stream_record_distribution_strategy()
        .stream_arn(stream_arn("spread").to_string())
        .record_distribution_strategy(RecordDistributionStrategy::UserPartitionKey)
        .send()
        .await?;
    let mut landed = std::collections::BTreeSet::new();
    for i in 0..8 {
        let put = client
            .put_record()
            .stream_name("spread")
            .partition_key("always-the-same")
            .data(Blob::new(format!("keyed-{i}")))
            .send()
            .await?;
        landed.insert(put.shard_id);
    }
    assert_eq!(landed.len(), 1, "{landed:?}");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn only_on_demand_streams_have_a_strategy() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "provisioned", 2).await?;
    assert_eq!(strategy(&client, "provisioned").await?, None);
    let refused = client
        .update_stream_record_distribution_strategy()
        .stream_arn(stream_arn("provisioned").to_string())
        .record_distribution_strategy(RecordDistributionStrategy::Auto)
        .send()
        .await
        .expect_err("provisioned");
    assert_eq!(error_code(&refused), "InvalidArgumentException");
    let created = client
        .create_stream()
        .stream_name("provisioned-auto")
        .shard_count(1)
        .record_distribution_strategy(RecordDistributionStrategy::Auto)
        .send()
        .await
        .expect_err("provisioned");
    assert_eq!(error_code(&created), "InvalidArgumentException");
    let missing = client
        .update_stream_record_distribution_strategy()
        .stream_arn(stream_arn("missing").to_string())
        .record_distribution_strategy(RecordDistributionStrategy::Auto)
        .send()
        .await
        .expect_err("missing");
    assert_eq!(error_code(&missing), "ResourceNotFoundException");

    // Created with AUTO; it cannot become provisioned while it uses it.
    client
        .create_stream()
        .stream_name("auto")
        .stream_mode_details(
            StreamModeDetails::builder()
                .stream_mode(StreamMode::OnDemand)
                .build()?,
        )
        .record_distribution_strategy(RecordDistributionStrategy::Auto)
        .send()
        .await?;
    freshet_e2e::wait_until(std::time::Duration::from_secs(60), || {
        freshet_e2e::is_active(&client, "auto")
    })
    .await?;
    assert_eq!(
        strategy(&client, "auto").await?,
        Some(RecordDistributionStrategy::Auto)
    );
    let to_provisioned = client
        .update_stream_mode()
        .stream_arn(stream_arn("auto").to_string())
        .stream_mode_details(
            StreamModeDetails::builder()
                .stream_mode(StreamMode::Provisioned)
                .build()?,
        )
        .send()
        .await
        .expect_err("AUTO is on-demand only");
    assert_eq!(error_code(&to_provisioned), "InvalidArgumentException");
    assert_eq!(
        strategy(&client, "auto").await?,
        Some(RecordDistributionStrategy::Auto)
    );
    cluster.shutdown().await;
    Ok(())
}
