//! Three copies in three zones: every acknowledged batch is on the leader
//! and its replicas, and a replica killed with -9 — or cut off from its
//! leader by a partition — catches up from the leader afterwards (from its
//! trim horizon, if its oldest records expired): no gap, no duplicate,
//! identical logs.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context as _;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use freshet_e2e::{
    create_active_stream, stream_arn, wait_until, Cluster, ClusterOptions, WorkerMode,
};
use freshet_log::{LogConfig, ShardLog, StoredRecord};
use freshet_proto::v1::storage_client::StorageClient;
use freshet_proto::v1::{
    AppendKey, AppendRequest, AppendResponse, DescribeShardRequest, GetShardTailRequest,
    RecordToAppend, ShardState,
};
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
                let end = replica.describe_shard(DescribeShardRequest { shard: entry.key.clone() }).await;
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

/// Writes `batches` PutRecords of ten 200-byte records to the shard that
/// owns `hash_key` of `stream`; how many records were acknowledged.
async fn fill_shard(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    hash_key: &str,
    batches: usize,
) -> anyhow::Result<usize> {
    let mut acknowledged = 0;
    for batch in 0..batches {
        let entries = (0..10)
            .map(|i| {
                PutRecordsRequestEntry::builder()
                    .partition_key(format!("k{batch}-{i}"))
                    .explicit_hash_key(hash_key)
                    .data(Blob::new(vec![b'x'; 200]))
                    .build()
            })
            .collect::<Result<Vec<_>, _>>()?;
        let sent = client
            .put_records()
            .stream_name(stream)
            .set_records(Some(entries))
            .send();
        if let Ok(Ok(output)) = tokio::time::timeout(Duration::from_secs(10), sent).await {
            acknowledged += output
                .records
                .iter()
                .filter(|r| r.error_code.is_none())
                .count();
        }
    }
    Ok(acknowledged)
}

/// The committed end and trim horizon of `entry`'s leader, if it answers.
async fn leader_tail(
    cluster: &Cluster,
    entry: &ShardMapEntry,
) -> Option<freshet_proto::v1::GetShardTailResponse> {
    let mut leader = StorageClient::new(cluster.channel(&entry.leader_address).ok()?);
    let tail = leader
        .get_shard_tail(GetShardTailRequest {
            shard: entry.key.clone(),
            epoch: entry.epoch,
        })
        .await
        .ok()?;
    Some(tail.into_inner())
}

/// Hole 4 of issue 13. Retention runs fast here (a retention hour lasts
/// 100 ms, so a stream keeps records 2.4 s). A shard's leader in zone a is
/// killed once every copy has trimmed its oldest records; the new leader's
/// log no longer starts at 0, and the spare worker of zone a, added as a
/// learner, holds nothing. It must restart its log at the new leader's
/// horizon, catch up from there and become a voter — proven by then
/// killing the other surviving copy: writes still need, and get, its
/// acknowledgement.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replacement_replica_catches_up_from_a_trimmed_log() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with(ClusterOptions {
        worker_mode: WorkerMode::Process,
        worker_zones: vec!["az-a", "az-b", "az-c", "az-a"],
        retention: freshet_e2e::Retention {
            segment_bytes: 2_048,
            hour: Duration::from_millis(100),
            check_interval: Duration::from_millis(200),
        },
        ..ClusterOptions::short_leases()
    })
    .await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "expiring", 3).await?;
    let map = cluster.frontend.router().map().clone();
    let entries = || map.read(|m| m.stream_entries(&stream_arn("expiring")));
    freshet_e2e::wait_until(Duration::from_secs(10), || async { entries().len() == 3 }).await?;
    let entry = entries()
        .into_iter()
        .find(|e| e.leader_worker_id.ends_with("az-a"))
        .ok_or_else(|| anyhow::anyhow!("no shard led from zone a"))?;
    let current = || {
        entries()
            .into_iter()
            .find(|e| e.starting_hash_key == entry.starting_hash_key)
            .expect("the shard stays in the map")
    };
    let old_leader = cluster.worker_index(&entry.leader_worker_id)?;
    let spare_id = cluster
        .workers
        .iter()
        .find(|w| w.zone == "az-a" && w.worker_id != entry.leader_worker_id)
        .map(|w| w.worker_id.clone())
        .expect("the spare in zone a");
    let hash_key = entry.starting_hash_key.clone();

    // Sealed segments fill, then expire on every copy.
    assert_eq!(fill_shard(&client, "expiring", &hash_key, 20).await?, 200);
    freshet_e2e::wait_until(Duration::from_secs(20), || async {
        leader_tail(&cluster, &entry)
            .await
            .is_some_and(|tail| tail.trim_horizon_offset > 0)
    })
    .await?;
    // The replicas trim on the same schedule.
    tokio::time::sleep(Duration::from_secs(1)).await;

    cluster.kill_worker(old_leader).await?;
    freshet_e2e::wait_until(Duration::from_secs(30), || async {
        current().leader_worker_id != entry.leader_worker_id
    })
    .await?;
    let tail = leader_tail(&cluster, &current())
        .await
        .ok_or_else(|| anyhow::anyhow!("the new leader answers no tail"))?;
    assert!(
        tail.trim_horizon_offset > 0,
        "the new leader's oldest records expired (the case under test)"
    );

    // The spare joins as a learner, restarts at the horizon, catches up
    // and becomes a voter; writes keep the reconfiguration moving.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        fill_shard(&client, "expiring", &hash_key, 1).await?;
        let voters = freshet_shardmap::voters_of(&current());
        if !voters.is_joint() && voters.contains(&spare_id) {
            break;
        }
        anyhow::ensure!(
            std::time::Instant::now() < deadline,
            "the spare never became a voter: {:?}",
            current()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // The other surviving copy dies: the leader and the spare alone make
    // the majority, so every acknowledged write is on the spare.
    let led = current();
    let other = led
        .replica_worker_ids
        .iter()
        .find(|id| **id != spare_id)
        .cloned()
        .expect("a third copy");
    cluster.kill_worker(cluster.worker_index(&other)?).await?;
    assert_eq!(
        fill_shard(&client, "expiring", &hash_key, 5).await?,
        50,
        "the spare acknowledges as a voter"
    );
    let spare_address = led
        .replica_worker_ids
        .iter()
        .position(|id| *id == spare_id)
        .map(|i| led.replica_addresses[i].clone())
        .expect("the spare's address");
    let tail = leader_tail(&cluster, &led)
        .await
        .ok_or_else(|| anyhow::anyhow!("the leader answers no tail"))?;
    let mut copy = StorageClient::new(cluster.channel(&spare_address)?);
    let described = copy
        .describe_shard(DescribeShardRequest {
            shard: led.key.clone(),
        })
        .await?
        .into_inner();
    assert!(
        described.trim_horizon_offset > 0,
        "the spare's log starts at the leader's horizon"
    );
    let end = described.next_offset;
    assert!(
        end >= tail.next_offset,
        "the spare ends at {end}, before the leader's committed {}",
        tail.next_offset
    );
    cluster.shutdown().await;
    Ok(())
}

/// A real partition: one replica is cut off from everyone who dials it —
/// its leader's replication included — while it keeps heartbeating to
/// membership, under load from four producers. The two other copies go on
/// acknowledging; the cut-off copy falls behind; healed, it catches up to
/// exactly the leader's log, and every acknowledged record is read back
/// once.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_cut_off_from_its_leader_falls_behind_and_catches_up_when_healed(
) -> anyhow::Result<()> {
    use freshet_e2e::load::{assert_acknowledged_readable_once, Producers};

    let mut cluster = Cluster::start_with(ClusterOptions {
        worker_mode: WorkerMode::Process,
        worker_proxies: true,
        ..ClusterOptions::default()
    })
    .await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "partitioned", 1).await?;
    let entry = || cluster.only_entry("partitioned");
    freshet_e2e::wait_until(Duration::from_secs(10), || async { entry().is_some() }).await?;
    let first = entry().expect("the shard");
    let cut_id = first.replica_worker_ids[1].clone();
    let cut = cluster.worker_index(&cut_id)?;
    let cut_listen = cluster.workers[cut]
        .listen
        .clone()
        .expect("a worker behind a proxy");
    let leader_listen = cluster.workers[cluster.worker_index(&first.leader_worker_id)?]
        .listen
        .clone()
        .expect("a worker behind a proxy");

    let producers = Producers::start(&client, "partitioned", 4, 10);
    freshet_e2e::wait_until(Duration::from_secs(60), || async {
        producers.count() >= 200
    })
    .await?;
    cluster.cut_worker(cut)?;
    let at_cut = producers.count();
    freshet_e2e::wait_until(Duration::from_secs(60), || async {
        producers.count() >= at_cut + 400
    })
    .await
    .context("writes stopped while one replica was cut off")?;
    let (Some(behind), Some(leader_end)) = (
        cluster
            .describe_copy(&cut_listen, &first)
            .await
            .map(|d| d.next_offset),
        cluster
            .describe_copy(&leader_listen, &first)
            .await
            .map(|d| d.next_offset),
    ) else {
        anyhow::bail!("a copy did not answer on its own port");
    };
    assert!(
        behind < leader_end,
        "the cut-off copy kept up ({behind} of {leader_end})"
    );
    let still = entry().expect("the shard");
    assert_eq!(
        (still.epoch, still.leader_worker_id.as_str()),
        (first.epoch, first.leader_worker_id.as_str()),
        "no failover: the leader and membership still talk"
    );

    cluster.heal_worker(cut)?;
    let at_heal = producers.count();
    freshet_e2e::wait_until(Duration::from_secs(60), || async {
        producers.count() >= at_heal + 200
    })
    .await?;
    let acknowledged = producers.stop().await?;
    freshet_e2e::wait_until(Duration::from_secs(60), || async {
        let (copy, leader) = (
            cluster
                .describe_copy(&cut_listen, &first)
                .await
                .map(|d| d.next_offset),
            cluster
                .describe_copy(&leader_listen, &first)
                .await
                .map(|d| d.next_offset),
        );
        copy.is_some() && copy == leader
    })
    .await
    .context("the healed copy did not catch up")?;
    assert_acknowledged_readable_once(&client, "partitioned", &acknowledged).await?;
    let last = entry().expect("the shard");
    cluster.stop_workers().await;
    let leader = shard_log(&cluster, &last.leader_worker_id, &last)?;
    let healed = shard_log(&cluster, &cut_id, &last)?;
    assert!(
        healed == leader,
        "the healed copy differs from the leader's"
    );
    cluster.shutdown().await;
    Ok(())
}

/// Hole 6 of issue 13, at the leader: an append sent again under its key
/// (the frontend did not learn its outcome) is answered with where it
/// landed the first time, and written once; a key the shard does not hold
/// is written; and once a split has closed the shard, a resolving append
/// whose key it does not hold is told it is absent — it never landed, and
/// never will.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_append_sent_again_under_its_key_lands_once() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "keyed", 1).await?;
    wait_until(Duration::from_secs(10), || async {
        cluster.only_entry("keyed").is_some()
    })
    .await?;
    let entry = cluster.only_entry("keyed").context("an entry")?;
    let shard_id = entry.key.as_ref().context("a key")?.shard_id.clone();
    let mut leader = StorageClient::new(cluster.channel(&entry.leader_address)?);
    let request = |entry: &ShardMapEntry, call: u64, resolving: bool, tag: &str| AppendRequest {
        shard: entry.key.clone(),
        epoch: entry.epoch,
        records: (0..3)
            .map(|i| RecordToAppend {
                partition_key: "k".to_owned(),
                data: format!("{tag}-{i}").into_bytes().into(),
                ..RecordToAppend::default()
            })
            .collect(),
        key: Some(AppendKey { frontend: 7, call }),
        resolving,
    };
    let landed = |answer: &AppendResponse| (answer.first_offset, answer.throttled, answer.absent);

    let first = leader
        .append(request(&entry, 1, false, "a"))
        .await?
        .into_inner();
    for resolving in [true, false] {
        let again = leader
            .append(request(&entry, 1, resolving, "a"))
            .await?
            .into_inner();
        assert_eq!(landed(&again), landed(&first), "resolving: {resolving}");
    }
    let fresh = leader
        .append(request(&entry, 2, true, "b"))
        .await?
        .into_inner();
    assert_eq!(landed(&fresh), (first.first_offset + 3, 0, false));
    let unkeyed = AppendRequest {
        key: None,
        ..request(&entry, 0, true, "c")
    };
    let refused = leader.append(unkeyed).await.expect_err("no key");
    assert_eq!(refused.code(), tonic::Code::InvalidArgument);
    let data: Vec<String> = freshet_e2e::read_stream(&client, "keyed")
        .await?
        .into_iter()
        .map(|r| String::from_utf8_lossy(r.data.as_ref()).into_owned())
        .collect();
    assert_eq!(data, ["a-0", "a-1", "a-2", "b-0", "b-1", "b-2"]);

    client
        .split_shard()
        .stream_name("keyed")
        .shard_to_split(&shard_id)
        .new_starting_hash_key((u128::MAX / 2).to_string())
        .send()
        .await?;
    let closed = || {
        cluster
            .entry("keyed", &shard_id)
            .filter(|e| e.state() == ShardState::Closed)
    };
    wait_until(Duration::from_secs(20), || async { closed().is_some() }).await?;
    let closed = closed().context("closed")?;
    let mut leader = StorageClient::new(cluster.channel(&closed.leader_address)?);
    let absent = leader
        .append(request(&closed, 3, true, "d"))
        .await?
        .into_inner();
    assert!(absent.absent, "{absent:?}");
    let held = leader
        .append(request(&closed, 2, true, "b"))
        .await?
        .into_inner();
    assert_eq!(landed(&held), landed(&fresh));
    // Not resolving: a closed shard refuses it before anything is written.
    let refused = leader
        .append(request(&closed, 4, false, "e"))
        .await
        .expect_err("closed");
    assert_eq!(
        freshet_errors::ErrorCode::of_status(&refused),
        freshet_errors::ErrorCode::NotWritten
    );
    cluster.shutdown().await;
    Ok(())
}
