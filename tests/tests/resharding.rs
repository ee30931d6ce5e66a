//! Resharding under load, through the AWS SDK: SplitShard, MergeShards and
//! UpdateShardCount while keyed producers write. A consumer that reads every
//! parent to its end before its children sees each key's records in the
//! order they were acknowledged, and finds every acknowledged record.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{Shard, ShardIteratorType, StreamStatus};
use freshet_e2e::load::WriterLoops;
use freshet_e2e::{create_active_stream, wait_until, Cluster};

const KEYS: usize = 12;

/// One task per partition key, each writing `key:0`, `key:1`, ... and
/// waiting for every acknowledgement, so a key's acknowledgement order is
/// its number order. Remembers the acknowledged numbers per key.
fn start_keyed_producers(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> WriterLoops<HashMap<String, Vec<u64>>> {
    WriterLoops::spawn(KEYS, |k, writer| {
        let (client, stream) = (client.clone(), stream.to_owned());
        async move {
            let key = format!("key-{k}");
            // Bounded: stops when told, or after this many records.
            for n in 0..5_000u64 {
                if writer.stopping() {
                    break;
                }
                let sent = client
                    .put_record()
                    .stream_name(&stream)
                    .partition_key(&key)
                    .data(Blob::new(format!("{key}:{n}")))
                    .send()
                    .await;
                if sent.is_ok() {
                    writer.acknowledge(|acked: &mut HashMap<String, Vec<u64>>| {
                        acked.entry(key.clone()).or_default().push(n);
                    });
                } else {
                    // Not acknowledged: never retried, so a key's
                    // acknowledged numbers only increase.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
            anyhow::Ok(())
        }
    })
}

async fn status(client: &aws_sdk_kinesis::Client, stream: &str) -> Option<StreamStatus> {
    freshet_e2e::stream_summary(client, stream)
        .await
        .map(|s| s.stream_status)
}

async fn wait_active(client: &aws_sdk_kinesis::Client, stream: &str) -> anyhow::Result<()> {
    wait_until(Duration::from_secs(60), || async {
        status(client, stream).await == Some(StreamStatus::Active)
    })
    .await
}

async fn shards(client: &aws_sdk_kinesis::Client, stream: &str) -> anyhow::Result<Vec<Shard>> {
    Ok(client
        .list_shards()
        .stream_name(stream)
        .send()
        .await?
        .shards
        .unwrap_or_default())
}

fn is_open(shard: &Shard) -> bool {
    shard
        .sequence_number_range
        .as_ref()
        .is_some_and(|r| r.ending_sequence_number.is_none())
}

/// Reads one shard from TRIM_HORIZON: a closed shard to its end (checking
/// that the end names its children), an open one until it is caught up.
async fn read_whole_shard(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    shard: &Shard,
    children: &[String],
) -> anyhow::Result<Vec<String>> {
    let mut iterator = client
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(&shard.shard_id)
        .shard_iterator_type(ShardIteratorType::TrimHorizon)
        .send()
        .await?
        .shard_iterator;
    let mut payloads = Vec::new();
    while let Some(current) = iterator {
        let page = client.get_records().shard_iterator(current).send().await?;
        let empty = page.records.is_empty();
        for record in &page.records {
            payloads.push(String::from_utf8(record.data.clone().into_inner())?);
        }
        iterator = page.next_shard_iterator;
        if iterator.is_none() {
            anyhow::ensure!(!is_open(shard), "an open shard {} ended", shard.shard_id);
            let mut listed: Vec<String> = page
                .child_shards
                .unwrap_or_default()
                .into_iter()
                .map(|c| c.shard_id)
                .collect();
            listed.sort();
            anyhow::ensure!(
                listed == children,
                "the end of {} lists children {listed:?}, expected {children:?}",
                shard.shard_id
            );
        }
        if empty && is_open(shard) {
            break;
        }
    }
    Ok(payloads)
}

/// Reads every shard, each only after all of its parents, and returns the
/// numbers read per key in that order.
async fn read_in_lineage_order(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> anyhow::Result<HashMap<String, Vec<u64>>> {
    let all = shards(client, stream).await?;
    let parents_of = |s: &Shard| -> Vec<String> {
        [&s.parent_shard_id, &s.adjacent_parent_shard_id]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    };
    let mut done: HashSet<String> = HashSet::new();
    let mut per_key: HashMap<String, Vec<u64>> = HashMap::new();
    while done.len() < all.len() {
        let ready: Vec<&Shard> = all
            .iter()
            .filter(|s| !done.contains(&s.shard_id))
            .filter(|s| parents_of(s).iter().all(|p| done.contains(p)))
            .collect();
        anyhow::ensure!(!ready.is_empty(), "shard lineage has a cycle");
        for shard in ready {
            let mut children: Vec<String> = all
                .iter()
                .filter(|c| parents_of(c).contains(&shard.shard_id))
                .map(|c| c.shard_id.clone())
                .collect();
            children.sort();
            for payload in read_whole_shard(client, stream, shard, &children).await? {
                let (key, n) = payload
                    .rsplit_once(':')
                    .ok_or_else(|| anyhow::anyhow!("garbage served: {payload}"))?;
                per_key.entry(key.to_owned()).or_default().push(n.parse()?);
            }
            done.insert(shard.shard_id.clone());
        }
    }
    Ok(per_key)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn splits_and_merges_under_load_keep_every_key_in_acknowledgement_order() -> anyhow::Result<()>
{
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    let stream = "reshaped";
    create_active_stream(&client, stream, 2).await?;
    let producers = start_keyed_producers(&client, stream);
    let progress = |at_least: usize| {
        let producers = &producers;
        wait_until(Duration::from_secs(60), move || async move {
            producers.count() >= at_least
        })
    };
    progress(200).await?;

    // Split shard 0 in the middle of its range.
    let first = shards(&client, stream).await?.remove(0);
    let range = first.hash_key_range.clone().expect("range");
    let (start, end): (u128, u128) = (
        range.starting_hash_key.parse()?,
        range.ending_hash_key.parse()?,
    );
    client
        .split_shard()
        .stream_name(stream)
        .shard_to_split(&first.shard_id)
        .new_starting_hash_key((start + (end - start) / 2).to_string())
        .send()
        .await?;
    wait_active(&client, stream).await?;
    let after_split = producers.count();
    progress(after_split + 200).await?;

    // Merge the split's upper child with the old shard 1.
    let open: Vec<Shard> = shards(&client, stream)
        .await?
        .into_iter()
        .filter(is_open)
        .collect();
    assert_eq!(open.len(), 3, "{open:?}");
    let mut by_start = open.clone();
    by_start.sort_by_key(|s| {
        s.hash_key_range
            .as_ref()
            .and_then(|r| r.starting_hash_key.parse::<u128>().ok())
    });
    client
        .merge_shards()
        .stream_name(stream)
        .shard_to_merge(&by_start[1].shard_id)
        .adjacent_shard_to_merge(&by_start[2].shard_id)
        .send()
        .await?;
    wait_active(&client, stream).await?;
    let after_merge = producers.count();
    progress(after_merge + 200).await?;

    // And scale uniformly to four shards.
    let scaled = client
        .update_shard_count()
        .stream_name(stream)
        .target_shard_count(4)
        .scaling_type(aws_sdk_kinesis::types::ScalingType::UniformScaling)
        .send()
        .await?;
    assert_eq!(scaled.current_shard_count, Some(2));
    assert_eq!(scaled.target_shard_count, Some(4));
    wait_active(&client, stream).await?;
    let after_scaling = producers.count();
    progress(after_scaling + 200).await?;
    let acknowledged = producers.stop().await?;

    let open: Vec<Shard> = shards(&client, stream)
        .await?
        .into_iter()
        .filter(is_open)
        .collect();
    assert_eq!(open.len(), 4);
    let read = read_in_lineage_order(&client, stream).await?;
    for (key, acked) in &acknowledged {
        let seen = read.get(key).cloned().unwrap_or_default();
        // What was read of this key never goes backwards (a retried write
        // the client gave up on may appear once more; dedupe first).
        let mut first_seen = Vec::new();
        let mut set = HashSet::new();
        for n in seen {
            if set.insert(n) {
                first_seen.push(n);
            }
        }
        assert!(
            first_seen.windows(2).all(|w| w[0] < w[1]),
            "{key} read out of order: {first_seen:?}"
        );
        let missing: Vec<&u64> = acked.iter().filter(|n| !set.contains(n)).collect();
        assert!(
            missing.is_empty(),
            "{key}: acknowledged {missing:?} never read"
        );
    }
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resharding_requests_are_checked_as_kinesis_checks_them() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "checked", 3).await?;
    let all = shards(&client, "checked").await?;

    let outside = client
        .split_shard()
        .stream_name("checked")
        .shard_to_split(&all[0].shard_id)
        .new_starting_hash_key("0")
        .send()
        .await
        .expect_err("a key outside the shard");
    assert_eq!(code(&outside), "InvalidArgumentException");

    // Of a hash key's form but past 2^128-1: Kinesis's own rule, not the
    // model's; a key not of that form is the model's.
    let past_the_end = client
        .split_shard()
        .stream_name("checked")
        .shard_to_split(&all[2].shard_id)
        .new_starting_hash_key("340282366920938463463374607431768211456")
        .send()
        .await
        .expect_err("2^128");
    assert_eq!(code(&past_the_end), "InvalidArgumentException");
    let malformed = client
        .split_shard()
        .stream_name("checked")
        .shard_to_split(&all[2].shard_id)
        .new_starting_hash_key("012")
        .send()
        .await
        .expect_err("a leading zero");
    assert_eq!(code(&malformed), "ValidationException");

    let unknown = client
        .split_shard()
        .stream_name("checked")
        .shard_to_split("shardId-000000000099")
        .new_starting_hash_key("5")
        .send()
        .await
        .expect_err("no such shard");
    assert_eq!(code(&unknown), "ResourceNotFoundException");

    let apart = client
        .merge_shards()
        .stream_name("checked")
        .shard_to_merge(&all[0].shard_id)
        .adjacent_shard_to_merge(&all[2].shard_id)
        .send()
        .await
        .expect_err("not adjacent");
    assert_eq!(code(&apart), "InvalidArgumentException");

    let too_far = client
        .update_shard_count()
        .stream_name("checked")
        .target_shard_count(7)
        .scaling_type(aws_sdk_kinesis::types::ScalingType::UniformScaling)
        .send()
        .await
        .expect_err("more than double");
    assert_eq!(code(&too_far), "LimitExceededException");

    // Nothing above changed the stream.
    assert_eq!(shards(&client, "checked").await?.len(), 3);
    assert_eq!(status(&client, "checked").await, Some(StreamStatus::Active));

    // A merge, then the merged parents are no longer eligible.
    client
        .merge_shards()
        .stream_name("checked")
        .shard_to_merge(&all[0].shard_id)
        .adjacent_shard_to_merge(&all[1].shard_id)
        .send()
        .await?;
    wait_active(&client, "checked").await?;
    let again = client
        .split_shard()
        .stream_name("checked")
        .shard_to_split(&all[0].shard_id)
        .new_starting_hash_key("12345")
        .send()
        .await
        .expect_err("a closed shard");
    assert_eq!(code(&again), "InvalidArgumentException");
    let merged = shards(&client, "checked").await?;
    assert_eq!(merged.len(), 4);
    let child = &merged[3];
    assert_eq!(
        child.parent_shard_id.as_deref(),
        Some(all[0].shard_id.as_str())
    );
    assert_eq!(
        child.adjacent_parent_shard_id.as_deref(),
        Some(all[1].shard_id.as_str())
    );
    // Children's sequence numbers sort after their parents'.
    let child_start: u128 = child
        .sequence_number_range
        .as_ref()
        .map(|r| r.starting_sequence_number.parse())
        .transpose()?
        .unwrap_or(0);
    for parent in &all[..2] {
        let parent_end: u128 = parent_end(&client, &parent.shard_id).await?;
        assert!(parent_end < child_start);
    }
    cluster.shutdown().await;
    Ok(())
}

fn code<E: aws_sdk_kinesis::error::ProvideErrorMetadata, R>(
    error: &aws_sdk_kinesis::error::SdkError<E, R>,
) -> String {
    use aws_sdk_kinesis::error::ProvideErrorMetadata as _;
    error.code().unwrap_or_default().to_owned()
}

async fn parent_end(client: &aws_sdk_kinesis::Client, shard_id: &str) -> anyhow::Result<u128> {
    let listed = shards(client, "checked").await?;
    let shard = listed
        .iter()
        .find(|s| s.shard_id == shard_id)
        .ok_or_else(|| anyhow::anyhow!("{shard_id} not listed"))?;
    let end = shard
        .sequence_number_range
        .as_ref()
        .and_then(|r| r.ending_sequence_number.clone())
        .ok_or_else(|| anyhow::anyhow!("{shard_id} has no ending sequence number"))?;
    Ok(end.parse()?)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_control_plane_restarted_mid_split_reopens_the_parent() -> anyhow::Result<()> {
    use freshet_proto::v1::membership_client::MembershipClient;
    use freshet_proto::v1::CloseShardsRequest;

    let mut cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "interrupted", 2).await?;
    // What a control plane that stopped halfway through a split leaves
    // behind: the stream UPDATING, the parent CLOSING, no children.
    let pool = sqlx::PgPool::connect(&cluster.database_url).await?;
    let stream_uid: i64 =
        sqlx::query_scalar("SELECT stream_uid FROM streams WHERE stream_name = 'interrupted'")
            .fetch_one(&pool)
            .await?;
    sqlx::query("UPDATE streams SET status = 'UPDATING' WHERE stream_uid = $1")
        .bind(stream_uid)
        .execute(&pool)
        .await?;
    MembershipClient::new(cluster.channel(&cluster.membership_addr)?)
        .close_shards(CloseShardsRequest {
            stream_uid,
            shard_ids: vec!["shardId-000000000000".to_owned()],
        })
        .await?;
    assert_eq!(
        status(&client, "interrupted").await,
        Some(StreamStatus::Updating)
    );

    // A control plane restarting on the same database finishes the update
    // before it serves: the parent is open again, the stream ACTIVE.
    cluster.stop_control_plane().await;
    let config = cluster.control_plane_config();
    cluster.restart_control_plane(config).await?;
    wait_active(&client, "interrupted").await?;
    let open: Vec<Shard> = shards(&client, "interrupted")
        .await?
        .into_iter()
        .filter(is_open)
        .collect();
    assert_eq!(open.len(), 2, "no shard closed, no child opened: {open:?}");
    wait_until(Duration::from_secs(30), || async {
        client
            .put_record()
            .stream_name("interrupted")
            .partition_key("k")
            .explicit_hash_key("0")
            .data(Blob::new("after the restart"))
            .send()
            .await
            .is_ok()
    })
    .await?;
    cluster.shutdown().await;
    Ok(())
}
