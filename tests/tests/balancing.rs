//! Worker balancing: a storage worker asked to lead more than its capacity
//! hands one of its shards to the least busy worker. The shard's current
//! segment is sealed where it is and the shard continues in a new segment
//! on other workers, so no stored record is copied — and clients see the
//! same shard, rising sequence numbers, every acknowledged record once and
//! each key in acknowledgement order, whichever segment they read.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType};
use freshet_control_plane::ScalerConfig;
use freshet_e2e::fan_out;
use freshet_e2e::load::WriterLoops;
use freshet_e2e::{
    create_active_stream, read_shard, stream_arn, wait_until, Cluster, ClusterOptions, WorkerMode,
};
use freshet_shardmap::ShardMapEntry;

const KEYS_PER_SHARD: usize = 4;

/// Balancing on a tiny worker capacity (20 KB/s), quickly, each shard
/// moving at most once in a test; the scaler never reshapes the stream.
fn balancing(worker_zones: Vec<&'static str>, worker_mode: WorkerMode) -> ClusterOptions {
    let defaults = ClusterOptions::default();
    ClusterOptions {
        worker_zones,
        worker_mode,
        scaler: ScalerConfig {
            scaler_interval: Duration::from_millis(300),
            balance_interval: Duration::from_millis(300),
            balance_at: 0.8,
            balance_cooldown: Duration::from_secs(3_600),
            worker_write_bytes_per_sec: 20_000,
            worker_write_records_per_sec: 1_000_000,
            ..defaults.scaler.clone()
        },
        ..defaults
    }
}

fn entries(cluster: &Cluster, stream: &str) -> Vec<ShardMapEntry> {
    cluster
        .frontend
        .router()
        .map()
        .read(|m| m.stream_entries(&stream_arn(stream)))
}

fn shard_id(entry: &ShardMapEntry) -> String {
    entry.key.clone().unwrap_or_default().shard_id
}

/// Two shards led by the same worker (there are more shards than workers).
fn two_shards_of_one_worker(entries: &[ShardMapEntry]) -> (String, ShardMapEntry, ShardMapEntry) {
    let mut by_leader: HashMap<&str, Vec<&ShardMapEntry>> = HashMap::new();
    for entry in entries {
        by_leader
            .entry(entry.leader_worker_id.as_str())
            .or_default()
            .push(entry);
    }
    let (leader, led) = by_leader
        .into_iter()
        .find(|(_, led)| led.len() >= 2)
        .expect("more shards than workers");
    (leader.to_owned(), led[0].clone(), led[1].clone())
}

/// Keyed writers aimed at chosen shards (by ExplicitHashKey): one task per
/// shard sends PutRecords of `key:n` for each of its keys and waits for the
/// answer, so a key's acknowledgement order is its number order.
fn start_shard_writers(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    targets: &[ShardMapEntry],
) -> WriterLoops<HashMap<String, Vec<u64>>> {
    WriterLoops::spawn(targets.len(), |target, writer| {
        let (client, stream) = (client.clone(), stream.to_owned());
        let entry = &targets[target];
        let (shard, hash_key) = (shard_id(entry), entry.starting_hash_key.clone());
        async move {
            let keys: Vec<String> = (0..KEYS_PER_SHARD)
                .map(|k| format!("{shard}/key-{k}"))
                .collect();
            let padding = "x".repeat(200);
            // Bounded: stops when told, or after this many batches.
            for n in 0..20_000u64 {
                if writer.stopping() {
                    break;
                }
                let entries = keys
                    .iter()
                    .map(|key| {
                        PutRecordsRequestEntry::builder()
                            .partition_key(key)
                            .explicit_hash_key(&hash_key)
                            .data(Blob::new(format!("{key}:{n}:{padding}")))
                            .build()
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let sent = client
                    .put_records()
                    .stream_name(&stream)
                    .set_records(Some(entries))
                    .send()
                    .await;
                let Ok(output) = sent else {
                    // Not acknowledged and never retried: a key's
                    // later records may still follow it.
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                writer.acknowledge(|acked: &mut HashMap<String, Vec<u64>>| {
                    for (key, result) in keys.iter().zip(output.records) {
                        if result.error_code.is_none() {
                            acked.entry(key.clone()).or_default().push(n);
                        }
                    }
                });
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            anyhow::Ok(())
        }
    })
}

/// Waits until one of `candidates` continues in a second segment.
async fn wait_for_a_move(
    cluster: &Cluster,
    stream: &str,
    candidates: &[String],
) -> anyhow::Result<ShardMapEntry> {
    let moved = || {
        entries(cluster, stream)
            .into_iter()
            .find(|e| candidates.contains(&shard_id(e)) && e.segment_index > 0)
    };
    wait_until(Duration::from_secs(90), || async { moved().is_some() }).await?;
    moved().ok_or_else(|| anyhow::anyhow!("no shard moved"))
}

/// Reads `shard` from TRIM_HORIZON: sequence numbers rise, every
/// acknowledged record of its keys is there once, each key in order.
async fn assert_shard_reads_in_order(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    shard: &str,
    acknowledged: &HashMap<String, Vec<u64>>,
) -> anyhow::Result<()> {
    // A restarted or failed-over copy serves its records once it has
    // committed them again: read until everything shows or time is up.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let records = read_shard(client, stream, shard).await?;
        let mut previous_sequence = 0u128;
        let mut read: HashMap<String, Vec<u64>> = HashMap::new();
        for record in &records {
            let sequence: u128 = record.sequence_number.parse()?;
            anyhow::ensure!(sequence > previous_sequence, "sequence numbers must rise");
            previous_sequence = sequence;
            let text = String::from_utf8(record.data.clone().into_inner())?;
            let mut parts = text.split(':');
            let (Some(key), Some(n)) = (parts.next(), parts.next()) else {
                anyhow::bail!("garbage served: {text:?}");
            };
            anyhow::ensure!(
                record.partition_key.as_deref() == Some(key),
                "{text:?} under the wrong key"
            );
            read.entry(key.to_owned()).or_default().push(n.parse()?);
        }
        let mut missing = 0;
        for (key, acked) in acknowledged.iter().filter(|(k, _)| k.starts_with(shard)) {
            let numbers = read.get(key).cloned().unwrap_or_default();
            let mut sorted = numbers.clone();
            sorted.sort_unstable();
            anyhow::ensure!(numbers == sorted, "{key} read out of order");
            let unique: HashSet<u64> = numbers.iter().copied().collect();
            anyhow::ensure!(unique.len() == numbers.len(), "{key} has a record twice");
            missing += acked.iter().filter(|n| !unique.contains(n)).count();
        }
        if missing == 0 {
            return Ok(());
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "{missing} acknowledged records of {shard} are not read back"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The directories a worker stores segments of `shard` in.
fn stored_segments(cluster: &Cluster, worker: &str, stream_uid: i64, shard: &str) -> Vec<u32> {
    let Some(handle) = cluster.workers.iter().find(|w| w.worker_id == worker) else {
        return Vec::new();
    };
    let dir = handle
        .data_dir
        .join("shards")
        .join(stream_uid.to_string())
        .join(shard);
    let mut segments: Vec<u32> = std::fs::read_dir(dir)
        .map(|entries| {
            entries
                .filter_map(Result::ok)
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    segments.sort_unstable();
    segments
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn an_overloaded_worker_hands_a_shard_on_without_copying_its_records() -> anyhow::Result<()> {
    let zones = vec!["az-a", "az-b", "az-c", "az-a", "az-b", "az-c"];
    let cluster = Cluster::start_with(balancing(zones, WorkerMode::InProcess)).await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "busy", 8).await?;
    wait_until(Duration::from_secs(10), || async {
        entries(&cluster, "busy").len() == 8
    })
    .await?;
    let before = entries(&cluster, "busy");
    let (busy_worker, first, second) = two_shards_of_one_worker(&before);
    let hot = [shard_id(&first), shard_id(&second)];
    let writers = start_shard_writers(&client, "busy", &[first.clone(), second.clone()]);

    let moved = wait_for_a_move(&cluster, "busy", &hot).await?;
    let original = before
        .iter()
        .find(|e| shard_id(e) == shard_id(&moved))
        .expect("the moved shard was there before");
    assert_ne!(
        moved.leader_worker_id, busy_worker,
        "it left the busy worker"
    );
    assert_eq!(moved.epoch, original.epoch + 1, "a move starts a new epoch");
    assert_eq!(moved.sequence_base, original.sequence_base);
    let [sealed] = moved.sealed_segments.as_slice() else {
        panic!("one sealed segment expected: {:?}", moved.sealed_segments);
    };
    assert_eq!((sealed.index, sealed.start_offset), (0, 0));
    assert_eq!(sealed.end_offset, moved.segment_start_offset);
    assert!(
        sealed.end_offset > 0,
        "records were written before the move"
    );
    assert_eq!(
        sealed.worker_ids[0], busy_worker,
        "the sealed segment stays with its leader"
    );

    // Writes continue in the new segment.
    let at_move = writers.count();
    wait_until(Duration::from_secs(60), || async {
        writers.count() >= at_move + 100
    })
    .await?;
    let acknowledged = writers.stop().await?;

    // Nothing was copied: only the sealed segment's own copies hold it,
    // and the new segment lives on the new placement only.
    let stream_uid = moved.key.as_ref().map(|k| k.stream_uid).unwrap_or_default();
    let moved_id = shard_id(&moved);
    let new_copies: Vec<&String> = std::iter::once(&moved.leader_worker_id)
        .chain(&moved.replica_worker_ids)
        .collect();
    for worker in &cluster.workers {
        let stored = stored_segments(&cluster, &worker.worker_id, stream_uid, &moved_id);
        let expected: Vec<u32> = [
            (sealed.worker_ids.contains(&worker.worker_id)).then_some(0),
            new_copies.contains(&&worker.worker_id).then_some(1),
        ]
        .into_iter()
        .flatten()
        .collect();
        assert_eq!(
            stored, expected,
            "segments of {moved_id} stored on {}",
            worker.worker_id
        );
    }

    // The client sees the same shards, and reads cross the move.
    let listed = freshet_e2e::shard_ids(&client, "busy").await?;
    assert_eq!(listed.len(), 8, "a move opens no shard");
    for shard in &hot {
        assert_shard_reads_in_order(&client, "busy", shard, &acknowledged).await?;
    }
    let all = read_shard(&client, "busy", &moved_id).await?;
    let boundary = usize::try_from(sealed.end_offset)?;
    assert!(all.len() > boundary, "records on both sides of the move");
    // An iterator at the last record of the sealed segment reads on into
    // the new one; one at a timestamp finds the oldest record.
    let last_sealed = &all[boundary - 1];
    let mut iterator = client
        .get_shard_iterator()
        .stream_name("busy")
        .shard_id(&moved_id)
        .shard_iterator_type(ShardIteratorType::AtSequenceNumber)
        .starting_sequence_number(&last_sealed.sequence_number)
        .send()
        .await?
        .shard_iterator;
    let mut crossed = Vec::new();
    while crossed.len() < 2 {
        let page = client
            .get_records()
            .shard_iterator(iterator.take().expect("an open shard has a next iterator"))
            .limit(1)
            .send()
            .await?;
        crossed.extend(page.records);
        iterator = page.next_shard_iterator;
    }
    assert_eq!(crossed[0].sequence_number, last_sealed.sequence_number);
    assert_eq!(crossed[1].sequence_number, all[boundary].sequence_number);
    let from_start = client
        .get_shard_iterator()
        .stream_name("busy")
        .shard_id(&moved_id)
        .shard_iterator_type(ShardIteratorType::AtTimestamp)
        .timestamp(aws_sdk_kinesis::primitives::DateTime::from_secs(0))
        .send()
        .await?
        .shard_iterator;
    let first_page = client
        .get_records()
        .set_shard_iterator(from_start)
        .limit(1)
        .send()
        .await?;
    assert_eq!(
        first_page.records.first().map(|r| &r.sequence_number),
        Some(&all[0].sequence_number)
    );
    cluster.shutdown().await;
    Ok(())
}

/// A subscriber of a shard that moves keeps its subscription: it follows
/// the sealed segment to its end and the new segment on from there, every
/// acknowledged record once, each key in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscription_follows_its_shard_across_a_move() -> anyhow::Result<()> {
    let zones = vec!["az-a", "az-b", "az-c", "az-a", "az-b", "az-c"];
    let cluster = Cluster::start_with(balancing(zones, WorkerMode::InProcess)).await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "followed", 8).await?;
    wait_until(Duration::from_secs(10), || async {
        entries(&cluster, "followed").len() == 8
    })
    .await?;
    let (_, first, second) = two_shards_of_one_worker(&entries(&cluster, "followed"));
    let hot = [shard_id(&first), shard_id(&second)];
    let consumer = fan_out::register_consumer(&client, "followed", "reader").await?;
    let readers: Vec<_> = hot
        .iter()
        .map(|shard| {
            let received = fan_out::Received::default();
            let subscriptions = Arc::new(AtomicUsize::new(0));
            let task = fan_out::keep_reading(
                client.clone(),
                consumer.clone(),
                shard,
                received.clone(),
                subscriptions.clone(),
            );
            (shard.clone(), received, subscriptions, task)
        })
        .collect();
    let writers = start_shard_writers(&client, "followed", &[first, second]);
    let moved = wait_for_a_move(&cluster, "followed", &hot).await?;
    let at_move = writers.count();
    wait_until(Duration::from_secs(60), || async {
        writers.count() >= at_move + 100
    })
    .await?;
    let acknowledged = writers.stop().await?;

    let moved_id = shard_id(&moved);
    let (_, received, subscriptions, _) = readers
        .iter()
        .find(|(shard, ..)| *shard == moved_id)
        .ok_or_else(|| anyhow::anyhow!("the moved shard had no reader"))?;
    let expected: HashSet<(String, u64)> = acknowledged
        .iter()
        .filter(|(key, _)| key.starts_with(&format!("{moved_id}/")))
        .flat_map(|(key, ns)| ns.iter().map(|n| (key.clone(), *n)))
        .collect();
    let delivered = || {
        let got = received.lock().unwrap_or_else(|p| p.into_inner()).clone();
        got.into_iter()
            .map(|(sequence, data)| {
                let mut parts = data.splitn(3, ':');
                let key = parts.next().unwrap_or_default().to_owned();
                let n: u64 = parts
                    .next()
                    .and_then(|n| n.parse().ok())
                    .unwrap_or(u64::MAX);
                (sequence, key, n)
            })
            .collect::<Vec<_>>()
    };
    wait_until(Duration::from_secs(60), || async {
        let got: HashSet<(String, u64)> = delivered().into_iter().map(|(_, k, n)| (k, n)).collect();
        expected.is_subset(&got)
    })
    .await
    .map_err(|_| anyhow::anyhow!("acknowledged records of {moved_id} were not delivered"))?;
    let got = delivered();
    let distinct: HashSet<(&String, u64)> = got.iter().map(|(_, k, n)| (k, *n)).collect();
    assert_eq!(distinct.len(), got.len(), "a record was delivered twice");
    assert!(
        got.windows(2).all(|pair| pair[0].0 < pair[1].0),
        "records arrived out of sequence order"
    );
    let mut last: HashMap<&String, u64> = HashMap::new();
    for (_, key, n) in &got {
        let previous = last.insert(key, *n);
        assert!(previous.is_none_or(|p| p < *n), "{key} out of order");
    }
    assert_eq!(
        subscriptions.load(Ordering::Relaxed),
        1,
        "the subscription ended at the move"
    );
    for (.., task) in &readers {
        task.abort();
    }
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sealed_segment_outlives_the_worker_that_wrote_it() -> anyhow::Result<()> {
    let zones = vec!["az-a", "az-b", "az-c", "az-a"];
    let options = ClusterOptions {
        heartbeat_timeout: Duration::from_secs(2),
        lease_duration: Duration::from_secs(1),
        worker_heartbeat_interval: Duration::from_millis(200),
        ..balancing(zones, WorkerMode::Process)
    };
    let mut cluster = Cluster::start_with(options).await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "outlived", 6).await?;
    wait_until(Duration::from_secs(10), || async {
        entries(&cluster, "outlived").len() == 6
    })
    .await?;
    let (busy_worker, first, second) = two_shards_of_one_worker(&entries(&cluster, "outlived"));
    let hot = [shard_id(&first), shard_id(&second)];
    let writers = start_shard_writers(&client, "outlived", &[first, second]);
    let moved = wait_for_a_move(&cluster, "outlived", &hot).await?;
    let at_move = writers.count();
    wait_until(Duration::from_secs(60), || async {
        writers.count() >= at_move + 50
    })
    .await?;

    // kill -9 the worker that led the sealed segment (and still leads the
    // other hot shard) while the writers go on; that shard fails over.
    let victim = cluster
        .workers
        .iter()
        .position(|w| w.worker_id == busy_worker)
        .expect("the busy worker");
    assert_ne!(moved.leader_worker_id, busy_worker);
    cluster.kill_worker(victim).await?;
    let stayed = hot
        .iter()
        .find(|s| **s != shard_id(&moved))
        .cloned()
        .expect("the other hot shard");
    wait_until(Duration::from_secs(60), || async {
        entries(&cluster, "outlived")
            .iter()
            .any(|e| shard_id(e) == stayed && e.leader_worker_id != busy_worker)
    })
    .await?;
    let at_kill = writers.count();
    wait_until(Duration::from_secs(60), || async {
        writers.count() >= at_kill + 50
    })
    .await?;
    let acknowledged = writers.stop().await?;

    // The sealed segment is served by its other copies; the shard the
    // victim still led failed over; nothing acknowledged is lost.
    for shard in &hot {
        assert_shard_reads_in_order(&client, "outlived", shard, &acknowledged).await?;
    }
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_move_interrupted_by_a_control_plane_restart_is_abandoned() -> anyhow::Result<()> {
    use freshet_proto::v1::membership_client::MembershipClient;
    use freshet_proto::v1::{CloseShardsRequest, RelocateShardRequest};

    let mut cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "unmoved", 2).await?;
    let pool = sqlx::PgPool::connect(&cluster.database_url).await?;
    let stream_uid: i64 =
        sqlx::query_scalar("SELECT stream_uid FROM streams WHERE stream_name = 'unmoved'")
            .fetch_one(&pool)
            .await?;
    let mut membership = MembershipClient::new(cluster.channel(&cluster.membership_addr)?);
    let shard = "shardId-000000000000".to_owned();
    let open = entries(&cluster, "unmoved")
        .into_iter()
        .find(|e| shard_id(e) == shard)
        .expect("shard 0");
    // Membership moves only a shard being closed, at the epoch it closed at.
    let refused = membership
        .relocate_shard(RelocateShardRequest {
            stream_uid,
            shard_id: shard.clone(),
            epoch: open.epoch,
            ending_offset: 0,
            leader_worker_id: open.replica_worker_ids[0].clone(),
            last_arrival_ms: 0,
            close_generation: open.close_generation,
        })
        .await
        .expect_err("an open shard is not moved");
    assert_eq!(refused.code(), tonic::Code::FailedPrecondition);

    // What a control plane that stopped halfway through a move leaves
    // behind: the stream ACTIVE, one shard CLOSING.
    membership
        .close_shards(CloseShardsRequest {
            stream_uid,
            shard_ids: vec![shard.clone()],
        })
        .await?;
    let state: String =
        sqlx::query_scalar("SELECT state FROM shards WHERE stream_uid = $1 AND shard_id = $2")
            .bind(stream_uid)
            .bind(&shard)
            .fetch_one(&pool)
            .await?;
    assert_eq!(state, "CLOSING");

    // A control plane restarting on the same database reopens it.
    cluster.stop_control_plane().await;
    let config = freshet_control_plane::Config {
        observability: freshet_server::ObservabilityFlags::without_metrics(),
        scaler: balancing(Vec::new(), WorkerMode::InProcess).scaler,
        ..cluster.control_plane_config()
    };
    cluster.restart_control_plane(config).await?;
    wait_until(Duration::from_secs(30), || async {
        client
            .put_record()
            .stream_name("unmoved")
            .partition_key("k")
            .explicit_hash_key("0")
            .data(Blob::new("after the restart"))
            .send()
            .await
            .is_ok()
    })
    .await?;
    let reopened = entries(&cluster, "unmoved")
        .into_iter()
        .find(|e| shard_id(e) == shard)
        .expect("shard 0");
    assert_eq!(reopened.segment_index, 0, "it was reopened where it was");
    assert_eq!(reopened.leader_worker_id, open.leader_worker_id);

    // A move whose reopening failed is given up by the next balancing
    // round of a running control plane, too.
    membership
        .close_shards(CloseShardsRequest {
            stream_uid,
            shard_ids: vec![shard.clone()],
        })
        .await?;
    wait_until(Duration::from_secs(30), || async {
        let state: Option<String> =
            sqlx::query_scalar("SELECT state FROM shards WHERE stream_uid = $1 AND shard_id = $2")
                .bind(stream_uid)
                .bind(&shard)
                .fetch_optional(&pool)
                .await
                .ok()
                .flatten();
        state.as_deref() == Some("OPEN")
    })
    .await?;
    cluster.shutdown().await;
    Ok(())
}
