//! Leader failover with real processes: kill -9 the leader of a shard while
//! producers write; membership promotes the most up-to-date replica under a
//! new epoch; every acknowledged record is read back exactly once. And a
//! leader frozen with SIGSTOP past its lease acknowledges nothing once it
//! wakes up.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use freshet_e2e::load::{assert_acknowledged_readable_once, Producers};
use freshet_e2e::{
    create_active_stream, stream_arn, wait_until, Cluster, ClusterOptions, WorkerMode,
};
use freshet_proto::v1::storage_client::StorageClient;
use freshet_proto::v1::{
    AppendRequest, DescribeShardRequest, EpochStart, RecordToAppend, ReplicateRequest,
};
use freshet_shardmap::ShardMapEntry;

fn fast_failover() -> ClusterOptions {
    ClusterOptions {
        worker_mode: WorkerMode::Process,
        ..ClusterOptions::short_leases()
    }
}

async fn entries(
    cluster: &Cluster,
    stream: &str,
    shards: usize,
) -> anyhow::Result<Vec<ShardMapEntry>> {
    let map = cluster.frontend.router().map().clone();
    wait_until(Duration::from_secs(10), || {
        let map = map.clone();
        async move { map.read(|m| m.stream_entries(&stream_arn(stream)).len()) == shards }
    })
    .await?;
    Ok(map.read(|m| m.stream_entries(&stream_arn(stream))))
}

/// Waits until shard `shard_id` is led by someone other than `old_leader`.
async fn wait_for_new_leader(
    cluster: &Cluster,
    stream: &str,
    shard_id: &str,
    old_leader: &str,
) -> anyhow::Result<ShardMapEntry> {
    let map = cluster.frontend.router().map().clone();
    let moved = || {
        map.read(|m| m.stream_entries(&stream_arn(stream)))
            .into_iter()
            .find(|e| {
                e.key.as_ref().is_some_and(|k| k.shard_id == shard_id)
                    && e.leader_worker_id != old_leader
            })
    };
    wait_until(Duration::from_secs(60), || async { moved().is_some() }).await?;
    moved().ok_or_else(|| anyhow::anyhow!("no new leader"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn killing_a_leader_under_load_loses_no_acknowledged_record() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with(fast_failover()).await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "failover", 3).await?;
    let before = entries(&cluster, "failover", 3).await?;
    let producers = Producers::start(&client, "failover", 4, 20);
    wait_until(Duration::from_secs(60), || async {
        producers.count() >= 400
    })
    .await?;

    let victim_id = before[0].leader_worker_id.clone();
    let shard_id = before[0].key.clone().unwrap_or_default().shard_id;
    let victim = cluster
        .workers
        .iter()
        .position(|w| w.worker_id == victim_id)
        .expect("victim");
    let killed_at = Instant::now();
    cluster.kill_worker(victim).await?;
    let moved = wait_for_new_leader(&cluster, "failover", &shard_id, &victim_id).await?;
    let window = killed_at.elapsed();
    assert_eq!(
        moved.epoch,
        before[0].epoch + 1,
        "a failover bumps the epoch"
    );
    assert!(
        before[0]
            .replica_worker_ids
            .contains(&moved.leader_worker_id),
        "a replica is promoted"
    );
    eprintln!(
        "shard {shard_id} was without a leader for {window:?} (heartbeat timeout 2 s, lease 1 s)"
    );

    // Writes to the failed-over shard flow again.
    let resumed_from = producers.count();
    wait_until(Duration::from_secs(60), || async {
        producers.count() >= resumed_from + 400
    })
    .await?;
    // The killed worker comes back: the shards that lost it get it back,
    // first as a learner and, once it holds the leader's log, as a voter
    // (three voting copies again), and it catches up from the leader.
    cluster.start_worker(victim).await?;
    let map = cluster.frontend.router().map().clone();
    let placement = || {
        map.read(|m| m.stream_entries(&stream_arn("failover")))
            .into_iter()
            .find(|e| e.key.as_ref().is_some_and(|k| k.shard_id == shard_id))
    };
    wait_until(Duration::from_secs(60), || async {
        placement().is_some_and(|e| {
            e.replica_worker_ids.contains(&victim_id)
                && e.voter_ids.contains(&victim_id)
                && e.voter_ids.len() == 3
                && e.next_voter_ids.is_empty()
        })
    })
    .await?;
    let acknowledged = producers.stop().await?;
    let repaired = placement().ok_or_else(|| anyhow::anyhow!("shard vanished"))?;
    assert_eq!(repaired.replica_worker_ids.len(), 2, "{repaired:?}");
    let position = repaired
        .replica_worker_ids
        .iter()
        .position(|id| *id == victim_id)
        .expect("victim is a replica");
    let leader = StorageClient::new(cluster.channel(&repaired.leader_address)?);
    let copy = StorageClient::new(cluster.channel(&repaired.replica_addresses[position])?);
    wait_until(Duration::from_secs(60), || {
        let (mut leader, mut copy, key) = (leader.clone(), copy.clone(), repaired.key.clone());
        async move {
            let request = || DescribeShardRequest { shard: key.clone() };
            match (
                leader.describe_shard(request()).await,
                copy.describe_shard(request()).await,
            ) {
                (Ok(l), Ok(c)) => l.into_inner().next_offset == c.into_inner().next_offset,
                _ => false,
            }
        }
    })
    .await?;
    assert_acknowledged_readable_once(&client, "failover", &acknowledged).await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_frozen_past_its_lease_acknowledges_nothing_when_it_wakes() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(fast_failover()).await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "frozen", 1).await?;
    let before = entries(&cluster, "frozen", 1).await?.remove(0);
    let producers = Producers::start(&client, "frozen", 2, 20);
    wait_until(Duration::from_secs(60), || async {
        producers.count() >= 200
    })
    .await?;

    let victim = cluster
        .workers
        .iter()
        .position(|w| w.worker_id == before.leader_worker_id)
        .expect("victim");
    let pid = nix::unistd::Pid::from_raw(cluster.worker_pid(victim).expect("a process") as i32);
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP)?;
    let shard_id = before.key.clone().unwrap_or_default().shard_id;
    let moved =
        wait_for_new_leader(&cluster, "frozen", &shard_id, &before.leader_worker_id).await?;
    let resumed_from = producers.count();
    wait_until(Duration::from_secs(60), || async {
        producers.count() >= resumed_from + 200
    })
    .await?;

    // Wake the deposed leader and hammer it with the old epoch, as a
    // frontend with a stale route would: it must acknowledge nothing.
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGCONT)?;
    let mut old_leader = StorageClient::new(cluster.channel(&before.leader_address)?);
    let deadline = Instant::now() + Duration::from_secs(3);
    let mut attempts = 0;
    while Instant::now() < deadline {
        attempts += 1;
        let append = AppendRequest {
            shard: before.key.clone(),
            epoch: before.epoch,
            records: vec![RecordToAppend {
                partition_key: "stale".to_owned(),
                data: bytes::Bytes::from_static(b"written through a deposed leader"),
                ..RecordToAppend::default()
            }],
            ..AppendRequest::default()
        };
        let outcome = old_leader.append(append).await;
        assert!(
            outcome.is_err(),
            "the deposed leader acknowledged a write: {outcome:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(attempts > 5);
    assert_eq!(moved.epoch, before.epoch + 1);

    // Its replication is fenced too: a batch it sends with the old epoch is
    // refused by the new leader's replicas, whose copies stay as they were.
    for address in &moved.replica_addresses {
        let mut replica = StorageClient::new(cluster.channel(address)?);
        let describe = || DescribeShardRequest {
            shard: moved.key.clone(),
        };
        let end_before = replica.describe_shard(describe()).await?.into_inner();
        let data = bytes::Bytes::from_static(b"replicated by a deposed leader");
        let late = replica
            .replicate(ReplicateRequest {
                shard: before.key.clone(),
                epoch: before.epoch,
                first_offset: end_before.next_offset,
                arrival_ms: 0,
                records_crc32: freshet_log::batch_checksum([("stale", &data[..], None)]),
                leader_next_offset: end_before.next_offset + 1,
                records: vec![RecordToAppend {
                    partition_key: "stale".to_owned(),
                    data: data.clone(),
                    ..RecordToAppend::default()
                }],
                leader_committed_offset: end_before.next_offset + 1,
                leader_epochs: vec![EpochStart {
                    epoch: before.epoch,
                    start_offset: 0,
                }],
            })
            .await;
        let refused = late.expect_err("a replica accepted a batch from a deposed leader");
        assert_eq!(
            refused.code(),
            tonic::Code::FailedPrecondition,
            "{refused:?}"
        );
        let end_after = replica.describe_shard(describe()).await?.into_inner();
        assert!(end_after.next_offset >= end_before.next_offset);
        assert!(end_after.last_epoch >= moved.epoch, "{end_after:?}");
    }

    let acknowledged = producers.stop().await?;
    assert_acknowledged_readable_once(&client, "frozen", &acknowledged).await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replacement_replica_in_the_lost_zone_is_filled_from_the_others() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with(ClusterOptions {
        worker_zones: vec!["az-a", "az-a", "az-b", "az-b", "az-c", "az-c"],
        ..fast_failover()
    })
    .await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "refill", 1).await?;
    let before = entries(&cluster, "refill", 1).await?.remove(0);
    let producers = Producers::start(&client, "refill", 2, 20);
    wait_until(Duration::from_secs(60), || async {
        producers.count() >= 200
    })
    .await?;
    let acknowledged = producers.stop().await?;

    let zone_by_worker: std::collections::HashMap<String, &'static str> = cluster
        .workers
        .iter()
        .map(|w| (w.worker_id.clone(), w.zone))
        .collect();
    let zone_of = |id: &str| zone_by_worker.get(id).copied();
    let lost_zone = zone_of(&before.leader_worker_id);
    let victim = cluster
        .workers
        .iter()
        .position(|w| w.worker_id == before.leader_worker_id)
        .expect("victim");
    cluster.kill_worker(victim).await?;
    let shard_id = before.key.clone().unwrap_or_default().shard_id;
    let moved =
        wait_for_new_leader(&cluster, "refill", &shard_id, &before.leader_worker_id).await?;

    // Three copies again, one of them in the zone that lost its worker.
    assert_eq!(moved.replica_worker_ids.len(), 2, "{moved:?}");
    let zones: HashSet<_> = std::iter::once(&moved.leader_worker_id)
        .chain(&moved.replica_worker_ids)
        .map(|id| zone_of(id))
        .collect();
    assert_eq!(zones.len(), 3);
    assert!(zones.contains(&lost_zone));

    // The newcomer catches up from the new leader without any new write.
    let leader = StorageClient::new(cluster.channel(&moved.leader_address)?);
    let tail = leader
        .clone()
        .describe_shard(freshet_proto::v1::DescribeShardRequest {
            shard: moved.key.clone(),
        })
        .await?
        .into_inner()
        .next_offset;
    assert!(tail >= acknowledged.len() as u64);
    for address in &moved.replica_addresses {
        let replica = StorageClient::new(cluster.channel(address)?);
        wait_until(Duration::from_secs(30), || {
            let (mut replica, key) = (replica.clone(), moved.key.clone());
            async move {
                let described = replica
                    .describe_shard(freshet_proto::v1::DescribeShardRequest { shard: key })
                    .await;
                described.is_ok_and(|d| d.into_inner().next_offset == tail)
            }
        })
        .await?;
    }
    // With enough copies holding its whole log, the new leader commits it:
    // what its predecessor acknowledged becomes readable with no new write.
    wait_until(Duration::from_secs(30), || {
        let (mut leader, key) = (leader.clone(), moved.key.clone());
        async move {
            let described = leader
                .describe_shard(freshet_proto::v1::DescribeShardRequest { shard: key })
                .await;
            described.is_ok_and(|d| d.into_inner().committed_offset == tail)
        }
    })
    .await?;
    assert_acknowledged_readable_once(&client, "refill", &acknowledged).await?;
    cluster.shutdown().await;
    Ok(())
}
