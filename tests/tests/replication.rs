//! Three copies in three zones: every acknowledged batch is on the leader
//! and its replicas, and a replica killed with -9 catches up from the
//! leader afterwards — no gap, no duplicate, identical logs.

use std::collections::HashSet;
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use freshet_e2e::{create_active_stream, stream_arn, Cluster, ClusterOptions, WorkerMode};
use freshet_log::{LogConfig, ShardLog, StoredRecord};
use freshet_proto::v1::storage_client::StorageClient;
use freshet_proto::v1::{GetShardTailRequest, ReplicateRequest};
use freshet_shardmap::ShardMapEntry;

/// Writes `count` records to the shard that owns `hash_key`; returns the
/// payloads that were acknowledged.
async fn write_to_shard(
    client: &aws_sdk_kinesis::Client,
    hash_key: &str,
    tag: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let mut acknowledged = Vec::new();
    for batch in 0..count / 10 {
        let payloads: Vec<String> = (0..10)
            .map(|i| format!("{tag}-{hash_key}-{batch}-{i}"))
            .collect();
        let entries = payloads
            .iter()
            .map(|p| {
                PutRecordsRequestEntry::builder()
                    .partition_key(p)
                    .explicit_hash_key(hash_key)
                    .data(Blob::new(p.as_bytes()))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let output = match client
            .put_records()
            .stream_name("copies")
            .set_records(Some(entries))
            .send()
            .await
        {
            Ok(output) => output,
            Err(error) => {
                eprintln!("PutRecords failed: {error:?}");
                continue;
            }
        };
        for (payload, result) in payloads.into_iter().zip(output.records) {
            match result.error_code {
                None => acknowledged.push(payload),
                Some(code) => eprintln!("record failed: {code} {:?}", result.error_message),
            }
        }
    }
    Ok(acknowledged)
}

fn shard_log(
    cluster: &Cluster,
    worker_id: &str,
    entry: &ShardMapEntry,
) -> anyhow::Result<Vec<StoredRecord>> {
    let worker = cluster
        .workers
        .iter()
        .find(|w| w.worker_id == worker_id)
        .ok_or_else(|| anyhow::anyhow!("no worker {worker_id}"))?;
    let key = entry.key.clone().unwrap_or_default();
    let dir = worker
        .data_dir
        .join("shards")
        .join(key.stream_uid.to_string())
        .join(&key.shard_id)
        .join(entry.segment_index.to_string());
    let log = ShardLog::open(&dir, LogConfig::default())?;
    // Everything on disk, committed or not: a replica learns the commit
    // point of the last batch only with the leader's next request.
    Ok(log.read_uncommitted(0, usize::MAX, u64::MAX)?.records)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_copy_holds_the_same_records_even_after_a_replica_was_killed() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with(ClusterOptions {
        worker_mode: WorkerMode::Process,
        ..ClusterOptions::default()
    })
    .await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "copies", 3).await?;
    let map = cluster.frontend.router().map().clone();
    freshet_e2e::wait_until(std::time::Duration::from_secs(10), || {
        let map = map.clone();
        async move { map.read(|m| m.stream_entries(&stream_arn("copies")).len()) == 3 }
    })
    .await?;
    let entries = map.read(|m| m.stream_entries(&stream_arn("copies")));
    for entry in &entries {
        assert_eq!(entry.replica_worker_ids.len(), 2, "three copies per shard");
    }

    let mut acknowledged = HashSet::new();
    for entry in &entries {
        acknowledged
            .extend(write_to_shard(&client, &entry.starting_hash_key, "before", 100).await?);
    }
    assert_eq!(
        acknowledged.len(),
        300,
        "all copies up: every write is acknowledged"
    );

    // Kill a replica of shard 0 (it leads another shard).
    let victim_id = entries[0].replica_worker_ids[0].clone();
    let victim = cluster
        .workers
        .iter()
        .position(|w| w.worker_id == victim_id)
        .expect("victim");
    cluster.kill_worker(victim).await?;
    for (index, entry) in entries.iter().enumerate() {
        let written = write_to_shard(
            &client,
            &entry.starting_hash_key,
            &format!("during-{index}"),
            50,
        )
        .await?;
        if entry.replica_worker_ids.contains(&victim_id) {
            assert_eq!(
                written.len(),
                50,
                "one replica down: a majority still acknowledges"
            );
        }
        acknowledged.extend(written);
    }
    let before_restart = map.read(|m| m.stream_entries(&stream_arn("copies")));
    cluster.start_worker(victim).await?;
    cluster.wait_for_workers_alive().await?;
    // Once the restarted replica's new address is published, the leaders
    // bring it up to date on their own, with no further writes.
    freshet_e2e::wait_until(Duration::from_secs(30), || async {
        let now = map.read(|m| m.stream_entries(&stream_arn("copies")));
        now.iter()
            .zip(&before_restart)
            .all(|(after, before)| after.version > before.version)
    })
    .await?;
    let entries = map.read(|m| m.stream_entries(&stream_arn("copies")));
    for entry in entries
        .iter()
        .filter(|e| e.replica_worker_ids.contains(&victim_id))
    {
        let position = entry
            .replica_worker_ids
            .iter()
            .position(|id| *id == victim_id)
            .expect("replica");
        let address = entry.replica_addresses[position].clone();
        let leader = StorageClient::new(cluster.channel(&entry.leader_address)?);
        let replica = StorageClient::new(cluster.channel(&address)?);
        freshet_e2e::wait_until(Duration::from_secs(30), || {
            let (mut leader, mut replica, entry) = (leader.clone(), replica.clone(), entry.clone());
            async move {
                let tail = leader.get_shard_tail(GetShardTailRequest { shard: entry.key.clone(), epoch: entry.epoch }).await;
                // An empty Replicate only reports where the replica's log ends.
                let probe = ReplicateRequest { shard: entry.key.clone(), epoch: entry.epoch, ..Default::default() };
                let end = replica.replicate(probe).await;
                matches!((tail, end), (Ok(tail), Ok(end)) if end.get_ref().next_offset == tail.get_ref().next_offset)
            }
        })
        .await?;
    }
    for (index, entry) in entries.iter().enumerate() {
        let written = write_to_shard(
            &client,
            &entry.starting_hash_key,
            &format!("after-{index}"),
            30,
        )
        .await?;
        acknowledged.extend(written);
    }

    let entries = map.read(|m| m.stream_entries(&stream_arn("copies")));
    cluster.stop_workers().await;
    let mut stored = HashSet::new();
    for entry in &entries {
        let leader = shard_log(&cluster, &entry.leader_worker_id, entry)?;
        for record in &leader {
            stored.insert(String::from_utf8(record.data.to_vec())?);
        }
        for replica in &entry.replica_worker_ids {
            let copy = shard_log(&cluster, replica, entry)?;
            assert_eq!(
                copy.len(),
                leader.len(),
                "{replica} holds a different number of records of {:?}",
                entry.key
            );
            assert!(
                copy == leader,
                "{replica}'s copy of {:?} differs from the leader's",
                entry.key
            );
        }
    }
    let lost: Vec<&String> = acknowledged.difference(&stored).collect();
    assert!(
        lost.is_empty(),
        "{} acknowledged records missing, e.g. {:?}",
        lost.len(),
        lost.first()
    );
    cluster.shutdown().await;
    Ok(())
}
