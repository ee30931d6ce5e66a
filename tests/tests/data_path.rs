//! The Kinesis data path end to end, driven by the AWS SDK for Rust.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType};
use freshet_e2e::{create_active_stream, read_shard, Cluster};
use freshet_types::HashKey;

const KEYS: usize = 1_000;
const WRITERS: usize = 8;
const RECORDS_PER_WRITER: usize = 1_250;
const PUT_RECORD_CALLS_PER_WRITER: usize = 250;

fn payload(key: usize, n: usize) -> String {
    format!("key-{key}/n-{n}/{}", "x".repeat(key % 50))
}

/// Writes 10,000 records over 1,000 keys with PutRecord and PutRecords and
/// returns, per key, the payloads in the order they were acknowledged.
async fn write_records(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> anyhow::Result<HashMap<String, Vec<String>>> {
    let mut writers = Vec::new();
    for writer in 0..WRITERS {
        let client = client.clone();
        let stream = stream.to_owned();
        writers.push(tokio::spawn(async move {
            // This writer owns the keys k with k % WRITERS == writer, so the
            // order it acknowledges records in is each key's order.
            let keys: Vec<usize> = (0..KEYS).filter(|k| k % WRITERS == writer).collect();
            let mut next_n: HashMap<usize, usize> = HashMap::new();
            let mut acknowledged: HashMap<String, Vec<String>> = HashMap::new();
            let mut pending = (0..RECORDS_PER_WRITER)
                .map(|i| keys[i % keys.len()])
                .peekable();
            let mut sent = 0;
            while sent < PUT_RECORD_CALLS_PER_WRITER {
                let key = pending.next().expect("records left");
                let n = next_n.entry(key).or_default();
                let data = payload(key, *n);
                *n += 1;
                client
                    .put_record()
                    .stream_name(&stream)
                    .partition_key(key.to_string())
                    .data(Blob::new(data.clone()))
                    .send()
                    .await?;
                acknowledged.entry(key.to_string()).or_default().push(data);
                sent += 1;
            }
            while pending.peek().is_some() {
                let mut batch = Vec::new();
                let mut entries = Vec::new();
                for key in pending.by_ref().take(250) {
                    let n = next_n.entry(key).or_default();
                    let data = payload(key, *n);
                    *n += 1;
                    entries.push(
                        PutRecordsRequestEntry::builder()
                            .partition_key(key.to_string())
                            .data(Blob::new(data.clone()))
                            .build()?,
                    );
                    batch.push((key, data));
                }
                let output = client
                    .put_records()
                    .stream_name(&stream)
                    .set_records(Some(entries))
                    .send()
                    .await?;
                anyhow::ensure!(
                    output.failed_record_count.unwrap_or(0) == 0,
                    "PutRecords failed records: {output:?}"
                );
                for (key, data) in batch {
                    acknowledged.entry(key.to_string()).or_default().push(data);
                }
            }
            anyhow::Ok(acknowledged)
        }));
    }
    let mut all = HashMap::new();
    for writer in writers {
        all.extend(writer.await??);
    }
    Ok(all)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_record_comes_back_once_in_key_order_in_the_shard_its_key_hashes_to(
) -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "clicks", 4).await?;
    let expected = write_records(&client, "clicks").await?;
    assert_eq!(
        expected.values().map(Vec::len).sum::<usize>(),
        WRITERS * RECORDS_PER_WRITER
    );

    let shards = client
        .list_shards()
        .stream_name("clicks")
        .send()
        .await?
        .shards
        .unwrap_or_default();
    assert_eq!(shards.len(), 4);
    let mut read_back: HashMap<String, Vec<String>> = HashMap::new();
    for shard in &shards {
        let range = shard.hash_key_range.as_ref().expect("hash key range");
        let start: u128 = range.starting_hash_key.parse()?;
        let end: u128 = range.ending_hash_key.parse()?;
        let records = read_shard(&client, "clicks", &shard.shard_id).await?;
        let mut previous: Option<u128> = None;
        for record in records {
            let key = record.partition_key.clone().unwrap_or_default();
            let hash = HashKey::of_partition_key(&key).0;
            assert!(
                start <= hash && hash <= end,
                "key {key} read from {} whose range excludes it",
                shard.shard_id
            );
            let sequence: u128 = record.sequence_number.parse()?;
            assert!(
                previous.is_none_or(|p| p < sequence),
                "sequence numbers must increase within a shard"
            );
            previous = Some(sequence);
            read_back
                .entry(key)
                .or_default()
                .push(String::from_utf8(record.data.into_inner())?);
        }
    }
    // Same keys, and for each key the same payloads in the same order:
    // nothing lost, nothing duplicated, per-key order kept.
    let expected: BTreeMap<_, _> = expected.into_iter().collect();
    let read_back: BTreeMap<_, _> = read_back.into_iter().collect();
    assert_eq!(read_back.len(), KEYS);
    assert!(
        read_back == expected,
        "records read back differ from the acknowledged ones"
    );
    cluster.shutdown().await;
    Ok(())
}

async fn put(client: &aws_sdk_kinesis::Client, stream: &str, data: &str) -> anyhow::Result<String> {
    Ok(client
        .put_record()
        .stream_name(stream)
        .partition_key("k")
        .data(Blob::new(data))
        .send()
        .await?
        .sequence_number)
}

async fn read_from(
    client: &aws_sdk_kinesis::Client,
    iterator: Option<String>,
) -> anyhow::Result<(Vec<String>, Option<String>)> {
    let output = client
        .get_records()
        .shard_iterator(iterator.expect("an iterator"))
        .send()
        .await?;
    let data = output
        .records
        .iter()
        .map(|r| String::from_utf8_lossy(r.data.as_ref()).into_owned())
        .collect();
    Ok((data, output.next_shard_iterator))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn iterators_start_where_their_type_says() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "positions", 1).await?;
    let shard = "shardId-000000000000";
    let iterator = |kind: ShardIteratorType| {
        client
            .get_shard_iterator()
            .stream_name("positions")
            .shard_id(shard)
            .shard_iterator_type(kind)
    };

    let latest_before = iterator(ShardIteratorType::Latest)
        .send()
        .await?
        .shard_iterator;
    let first = put(&client, "positions", "r1").await?;
    let second = put(&client, "positions", "r2").await?;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let third = put(&client, "positions", "r3").await?;
    assert!(
        first.parse::<u128>()? < second.parse::<u128>()?
            && second.parse::<u128>()? < third.parse::<u128>()?
    );

    // LATEST taken before the writes sees exactly them; taken now, nothing.
    assert_eq!(
        read_from(&client, latest_before).await?.0,
        ["r1", "r2", "r3"]
    );
    let (nothing, next) = read_from(
        &client,
        iterator(ShardIteratorType::Latest)
            .send()
            .await?
            .shard_iterator,
    )
    .await?;
    assert!(nothing.is_empty());
    let fourth = put(&client, "positions", "r4").await?;
    assert_eq!(read_from(&client, next).await?.0, ["r4"]);

    let at = iterator(ShardIteratorType::AtSequenceNumber)
        .starting_sequence_number(&second)
        .send()
        .await?
        .shard_iterator;
    assert_eq!(read_from(&client, at).await?.0, ["r2", "r3", "r4"]);
    let after = iterator(ShardIteratorType::AfterSequenceNumber)
        .starting_sequence_number(&second)
        .send()
        .await?
        .shard_iterator;
    assert_eq!(read_from(&client, after).await?.0, ["r3", "r4"]);
    let trim = iterator(ShardIteratorType::TrimHorizon)
        .send()
        .await?
        .shard_iterator;
    assert_eq!(read_from(&client, trim).await?.0, ["r1", "r2", "r3", "r4"]);

    // AT_TIMESTAMP: the arrival time of r3 selects r3 onwards.
    let all = client
        .get_records()
        .shard_iterator(
            iterator(ShardIteratorType::TrimHorizon)
                .send()
                .await?
                .shard_iterator
                .expect("iterator"),
        )
        .send()
        .await?;
    let third_arrival = all.records[2]
        .approximate_arrival_timestamp
        .expect("arrival time");
    let at_time = iterator(ShardIteratorType::AtTimestamp)
        .timestamp(third_arrival)
        .send()
        .await?
        .shard_iterator;
    assert_eq!(read_from(&client, at_time).await?.0, ["r3", "r4"]);
    let long_ago = iterator(ShardIteratorType::AtTimestamp)
        .timestamp(aws_sdk_kinesis::primitives::DateTime::from_secs(1))
        .send()
        .await?
        .shard_iterator;
    assert_eq!(
        read_from(&client, long_ago).await?.0,
        ["r1", "r2", "r3", "r4"]
    );

    // SequenceNumberForOrdering: the next record sorts after the one named.
    let ordered = client
        .put_record()
        .stream_name("positions")
        .partition_key("k")
        .data(Blob::new("r5"))
        .sequence_number_for_ordering(&fourth)
        .send()
        .await?;
    assert!(ordered.sequence_number.parse::<u128>()? > fourth.parse::<u128>()?);
    assert_eq!(all.millis_behind_latest, Some(0));
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn explicit_hash_keys_pick_the_shard_and_arns_address_the_stream() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "explicit", 2).await?;
    let arn = client
        .describe_stream_summary()
        .stream_name("explicit")
        .send()
        .await?
        .stream_description_summary
        .expect("summary")
        .stream_arn;
    assert_eq!(
        arn,
        "arn:aws:kinesis:us-east-1:000000000000:stream/explicit"
    );
    let high = client
        .put_record()
        .stream_arn(&arn)
        .partition_key("any")
        .explicit_hash_key("340282366920938463463374607431768211455")
        .data(Blob::new("top"))
        .send()
        .await?;
    assert_eq!(high.shard_id, "shardId-000000000001");
    let low = client
        .put_record()
        .stream_arn(&arn)
        .partition_key("any")
        .explicit_hash_key("0")
        .data(Blob::new("bottom"))
        .send()
        .await?;
    assert_eq!(low.shard_id, "shardId-000000000000");
    let records = read_shard(&client, "explicit", "shardId-000000000001").await?;
    assert_eq!(records.len(), 1);
    assert_eq!(records[0].data.as_ref(), b"top");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_get_records_response_is_capped_at_10_mib() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "large", 1).await?;
    for batch in 0..2 {
        let entries = (0..6)
            .map(|i| {
                PutRecordsRequestEntry::builder()
                    .partition_key(format!("k{batch}-{i}"))
                    .data(Blob::new(vec![b'a' + i as u8; 1_000_000]))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let output = client
            .put_records()
            .stream_name("large")
            .set_records(Some(entries))
            .send()
            .await?;
        assert_eq!(output.failed_record_count, Some(0));
    }
    let iterator = client
        .get_shard_iterator()
        .stream_name("large")
        .shard_id("shardId-000000000000")
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await?
        .shard_iterator;
    let first = client
        .get_records()
        .shard_iterator(iterator.expect("iterator"))
        .send()
        .await?;
    let first_bytes: usize = first.records.iter().map(|r| r.data.as_ref().len()).sum();
    assert!(
        first_bytes <= 10 * 1024 * 1024,
        "{first_bytes} bytes in one response"
    );
    assert!(first.records.len() < 12);
    assert!(first.millis_behind_latest.is_some());
    let rest = client
        .get_records()
        .shard_iterator(first.next_shard_iterator.expect("next"))
        .send()
        .await?;
    assert_eq!(first.records.len() + rest.records.len(), 12);
    cluster.shutdown().await;
    Ok(())
}

/// Concurrent requests' appends to one shard share calls to its leader
/// (the frontend's coalescer): each caller must still be told the sequence
/// numbers of its own records, and only of those.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_callers_each_get_the_sequence_numbers_of_their_own_records(
) -> anyhow::Result<()> {
    const CALLERS: usize = 16;
    const CALLS_PER_CALLER: usize = 30;
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "one-shard", 1).await?;
    let mut callers = Vec::new();
    for caller in 0..CALLERS {
        let (client, stream) = (client.clone(), "one-shard".to_owned());
        callers.push(tokio::spawn(async move {
            let mut told: Vec<(String, String)> = Vec::new();
            for call in 0..CALLS_PER_CALLER {
                // Callers alternate single records and batches of 1–5, so
                // calls of different sizes share the leader's calls.
                if (caller + call) % 2 == 0 {
                    let data = format!("c{caller}/call{call}");
                    let output = client
                        .put_record()
                        .stream_name(&stream)
                        .partition_key(format!("k{caller}"))
                        .data(Blob::new(data.clone()))
                        .send()
                        .await?;
                    told.push((output.sequence_number, data));
                } else {
                    let datas: Vec<String> = (0..=(call % 5))
                        .map(|i| format!("c{caller}/call{call}/{i}"))
                        .collect();
                    let entries = datas
                        .iter()
                        .map(|data| {
                            PutRecordsRequestEntry::builder()
                                .partition_key(format!("k{caller}"))
                                .data(Blob::new(data.clone()))
                                .build()
                        })
                        .collect::<Result<Vec<_>, _>>()?;
                    let output = client
                        .put_records()
                        .stream_name(&stream)
                        .set_records(Some(entries))
                        .send()
                        .await?;
                    anyhow::ensure!(output.failed_record_count.unwrap_or(0) == 0);
                    for (entry, data) in output.records.into_iter().zip(datas) {
                        let sequence = entry.sequence_number.expect("a sequence number");
                        told.push((sequence, data));
                    }
                }
            }
            anyhow::Ok(told)
        }));
    }
    let mut told: BTreeMap<u128, String> = BTreeMap::new();
    for caller in callers {
        for (sequence, data) in caller.await?? {
            let previous = told.insert(sequence.parse()?, data.clone());
            assert!(
                previous.is_none(),
                "sequence number {sequence} was given to two records ({data})"
            );
        }
    }
    let shard = freshet_e2e::shard_ids(&client, "one-shard").await?;
    let stored: BTreeMap<u128, String> = read_shard(&client, "one-shard", &shard[0])
        .await?
        .into_iter()
        .map(|record| {
            Ok((
                record.sequence_number.parse()?,
                String::from_utf8(record.data.into_inner())?,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
    assert_eq!(stored.len(), told.len(), "records stored vs acknowledged");
    assert!(
        stored == told,
        "a caller was told a sequence number that holds another record"
    );
    cluster.shutdown().await;
    Ok(())
}
