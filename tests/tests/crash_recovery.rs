//! Storage workers are real processes here: kill -9 one while producers
//! write, restart it, and every acknowledged record is still there; a torn
//! tail left by the crash is truncated, never served; a copy damaged on
//! disk is moved aside and rebuilt from its peers.

use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use freshet_e2e::load::{assert_acknowledged_readable_once, Producers};
use freshet_e2e::{
    create_active_stream, segment_dir, stream_arn, wait_until, Cluster, ClusterOptions, WorkerMode,
};

/// Appends a half-written frame to the newest segment of every shard the
/// worker holds, as a crash in the middle of a write leaves behind.
fn tear_tails(data_dir: &std::path::Path) -> anyhow::Result<usize> {
    use std::io::Write;
    let mut torn = 0;
    let shards_dir = data_dir.join("shards");
    if !shards_dir.exists() {
        return Ok(0);
    }
    // shards/<stream uid>/<shard id>/<segment of the shard's log>/<files>
    let mut logs = Vec::new();
    for stream in std::fs::read_dir(&shards_dir)? {
        for shard in std::fs::read_dir(stream?.path())? {
            for segment in std::fs::read_dir(shard?.path())? {
                logs.push(segment?.path());
            }
        }
    }
    for log in logs {
        let mut segments: Vec<_> = std::fs::read_dir(log)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|p| p.extension().is_some_and(|e| e == "log"))
            .collect();
        segments.sort();
        if let Some(last) = segments.last() {
            let mut file = std::fs::OpenOptions::new().append(true).open(last)?;
            file.write_all(&500u32.to_le_bytes())?;
            file.write_all(&[0xAB; 37])?;
            torn += 1;
        }
    }
    Ok(torn)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_worker_killed_mid_write_loses_no_acknowledged_record() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with(ClusterOptions {
        worker_mode: WorkerMode::Process,
        ..ClusterOptions::default()
    })
    .await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "durable", 6).await?;

    let producers = Producers::start(&client, "durable", 4, 20);
    let acked_count = || producers.count();
    wait_until(Duration::from_secs(60), || async { acked_count() >= 400 }).await?;
    let victim = 0;
    let victim_id = cluster.workers[victim].worker_id.clone();
    let map = cluster.frontend.router().map().clone();
    let led_epochs = || -> Vec<(String, u64)> {
        map.read(|m| m.stream_entries(&stream_arn("durable")))
            .into_iter()
            .filter(|e| e.leader_worker_id == victim_id)
            .map(|e| (e.key.clone().unwrap_or_default().shard_id, e.epoch))
            .collect()
    };
    let before = led_epochs();
    cluster.kill_worker(victim).await?;
    let at_kill = acked_count();
    let torn = tear_tails(&cluster.workers[victim].data_dir)?;
    assert!(torn > 0, "the killed worker led at least one shard");
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.start_worker(victim).await?;
    cluster.wait_for_workers_alive().await?;
    // A restarted leader leads at a new epoch: it has forgotten what it
    // sent its replicas but never wrote, so it must not reuse the old one.
    wait_until(Duration::from_secs(30), || async {
        let now = led_epochs();
        before
            .iter()
            .all(|(shard, epoch)| now.iter().any(|(s, e)| s == shard && e > epoch))
    })
    .await?;
    // Writes flow again to every shard, including the restarted worker's.
    wait_until(Duration::from_secs(60), || async {
        acked_count() >= at_kill + 400
    })
    .await?;
    let acknowledged = producers.stop().await?;
    assert_acknowledged_readable_once(&client, "durable", &acknowledged).await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_that_was_down_while_its_stream_was_deleted_removes_the_data() -> anyhow::Result<()>
{
    let mut cluster = Cluster::start_with(ClusterOptions {
        worker_mode: WorkerMode::Process,
        ..ClusterOptions::default()
    })
    .await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "doomed", 1).await?;
    client
        .put_record()
        .stream_name("doomed")
        .partition_key("k")
        .data(Blob::new("x"))
        .send()
        .await?;
    let data_dirs: Vec<std::path::PathBuf> =
        cluster.workers.iter().map(|w| w.data_dir.clone()).collect();
    let shard_dirs = |index: usize| -> usize {
        std::fs::read_dir(data_dirs[index].join("shards"))
            .map(|streams| {
                streams
                    .flatten()
                    .map(|stream| {
                        std::fs::read_dir(stream.path())
                            .map(|d| d.count())
                            .unwrap_or(0)
                    })
                    .sum()
            })
            .unwrap_or(0)
    };
    // Every copy holds the shard once the write is replicated.
    wait_until(Duration::from_secs(30), || async {
        (0..3).all(|i| shard_dirs(i) == 1)
    })
    .await?;

    cluster.kill_worker(2).await?;
    client.delete_stream().stream_name("doomed").send().await?;
    cluster.start_worker(2).await?;
    cluster.wait_for_workers_alive().await?;
    wait_until(Duration::from_secs(30), || async { shard_dirs(2) == 0 }).await?;
    cluster.shutdown().await;
    Ok(())
}

/// The log directory of `entry`'s current segment on a worker.
/// Where `worker_id`'s copy of the shard ends, and whether it is being
/// rebuilt, if it answers.
async fn copy_state(
    cluster: &Cluster,
    entry: &freshet_shardmap::ShardMapEntry,
    worker_id: &str,
) -> Option<(u64, bool)> {
    let index = entry
        .replica_worker_ids
        .iter()
        .position(|id| id == worker_id)?;
    let described = cluster
        .describe_copy(entry.replica_addresses.get(index)?, entry)
        .await?;
    Some((described.next_offset, described.rebuilding))
}

/// Where the leader's log ends, if it answers.
async fn leader_end(cluster: &Cluster, entry: &freshet_shardmap::ShardMapEntry) -> Option<u64> {
    Some(
        cluster
            .describe_copy(&entry.leader_address, entry)
            .await?
            .next_offset,
    )
}

/// Hole 5 of issue 13: a flipped byte in the middle of a committed,
/// sealed segment of one replica's copy. When the replica restarts, the
/// damage is found, the copy is moved aside (not truncated to what
/// survived) and rebuilt from the leader; it holds exactly the leader's
/// records afterwards, and readers never see a damaged record.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_copy_with_a_flipped_byte_is_moved_aside_and_rebuilt() -> anyhow::Result<()> {
    flip_a_byte_of_one_copy(Copy::Replica).await
}

/// The same with the leader's copy: back from the restart it finds its copy
/// damaged, refuses to lead and steps down; another voter leads, writes go
/// on, and the old leader's copy is rebuilt as a replica.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_leader_whose_copy_is_damaged_steps_down_and_is_rebuilt() -> anyhow::Result<()> {
    flip_a_byte_of_one_copy(Copy::Leader).await
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Copy {
    Leader,
    Replica,
}

async fn flip_a_byte_of_one_copy(damaged: Copy) -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with(ClusterOptions {
        worker_mode: WorkerMode::Process,
        retention: freshet_e2e::Retention {
            segment_bytes: 4_096,
            ..freshet_e2e::Retention::default()
        },
        ..ClusterOptions::default()
    })
    .await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "flipped", 1).await?;
    wait_until(Duration::from_secs(10), || async {
        cluster.only_entry("flipped").is_some()
    })
    .await?;
    let producers = Producers::start(&client, "flipped", 4, 20);
    wait_until(Duration::from_secs(60), || async {
        producers.count() >= 600
    })
    .await?;

    let first = cluster.only_entry("flipped").expect("the shard");
    let victim_id = match damaged {
        Copy::Leader => first.leader_worker_id.clone(),
        Copy::Replica => first.replica_worker_ids[0].clone(),
    };
    let victim = cluster
        .workers
        .iter()
        .position(|w| w.worker_id == victim_id)
        .expect("the replica");
    cluster.kill_worker(victim).await?;
    let data_dir = cluster.workers[victim].data_dir.clone();
    let mut segments: Vec<_> = std::fs::read_dir(segment_dir(&data_dir, &first))?
        .map(|e| e.map(|e| e.path()))
        .collect::<Result<Vec<_>, _>>()?
        .into_iter()
        .filter(|p| p.extension().is_some_and(|e| e == "log"))
        .collect();
    segments.sort();
    anyhow::ensure!(segments.len() >= 2, "no sealed segment: {segments:?}");
    let mut bytes = std::fs::read(&segments[0])?;
    let middle = bytes.len() / 2;
    bytes[middle] ^= 0x20;
    std::fs::write(&segments[0], &bytes)?;

    cluster.start_worker(victim).await?;
    cluster.wait_for_workers_alive().await?;
    let at_restart = producers.count();
    wait_until(Duration::from_secs(60), || async {
        producers.count() >= at_restart + 200
    })
    .await?;
    let acknowledged = producers.stop().await?;
    // Detected: the damaged copy was moved aside, not trimmed in place
    // (once the restarted worker opened it: acknowledgements need only a
    // majority, so they may come before).
    let damaged_dir = data_dir.join("damaged");
    wait_until(Duration::from_secs(60), || async {
        std::fs::read_dir(&damaged_dir).is_ok_and(|entries| entries.count() >= 1)
    })
    .await
    .map_err(|_| anyhow::anyhow!("the damaged copy was not moved aside"))?;
    let moved_aside: Vec<_> = std::fs::read_dir(&damaged_dir)?.collect();
    assert_eq!(moved_aside.len(), 1, "one damaged copy kept for inspection");
    if damaged == Copy::Leader {
        let now = cluster.only_entry("flipped").expect("the shard");
        assert_ne!(
            now.leader_worker_id, victim_id,
            "the damaged leader stepped down"
        );
    }
    // Rebuilt: the copy is no longer rebuilding and ends where the leader does.
    wait_until(Duration::from_secs(60), || async {
        let Some(now) = cluster.only_entry("flipped") else {
            return false;
        };
        match (
            copy_state(&cluster, &now, &victim_id).await,
            leader_end(&cluster, &now).await,
        ) {
            (Some((end, rebuilding)), Some(leader)) => !rebuilding && end == leader,
            _ => false,
        }
    })
    .await?;
    assert_acknowledged_readable_once(&client, "flipped", &acknowledged).await?;

    let last = cluster.only_entry("flipped").expect("the shard");
    cluster.stop_workers().await;
    let read = |worker_id: &str| -> anyhow::Result<Vec<freshet_log::StoredRecord>> {
        let worker = cluster
            .workers
            .iter()
            .find(|w| w.worker_id == worker_id)
            .ok_or_else(|| anyhow::anyhow!("no worker {worker_id}"))?;
        let log = freshet_log::ShardLog::open(
            &segment_dir(&worker.data_dir, &last),
            freshet_log::LogConfig::default(),
        )?;
        Ok(log.read_uncommitted(0, usize::MAX, u64::MAX)?.records)
    };
    let leader = read(&last.leader_worker_id)?;
    let rebuilt = read(&victim_id)?;
    assert_eq!(rebuilt.len(), leader.len());
    assert!(
        rebuilt == leader,
        "the rebuilt copy differs from the leader's"
    );
    cluster.shutdown().await;
    Ok(())
}

/// Only a leader whose copy is being rebuilt may step down: it commits
/// nothing, while a healthy leader holds a lease under which it could
/// still acknowledge writes at its epoch after another voter took over.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_healthy_leader_cannot_step_down() -> anyhow::Result<()> {
    use freshet_proto::v1::membership_client::MembershipClient;
    use freshet_proto::v1::StepDownRequest;

    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "steady", 1).await?;
    let entry = || cluster.only_entry("steady");
    wait_until(Duration::from_secs(10), || async { entry().is_some() }).await?;
    let before = entry().expect("the shard");
    // The leader's copy must exist for it to say it is intact.
    client
        .put_record()
        .stream_name("steady")
        .partition_key("k")
        .data(Blob::new("x"))
        .send()
        .await?;
    let mut membership = MembershipClient::new(cluster.channel(&cluster.membership_addr)?);
    let refused = membership
        .step_down(StepDownRequest {
            shard: before.key.clone(),
            epoch: before.epoch,
            worker_id: before.leader_worker_id.clone(),
        })
        .await
        .expect_err("a healthy leader stepped down");
    assert_eq!(
        refused.code(),
        tonic::Code::FailedPrecondition,
        "{refused:?}"
    );
    let after = entry().expect("the shard");
    assert_eq!(
        (after.leader_worker_id, after.epoch),
        (before.leader_worker_id, before.epoch)
    );
    cluster.shutdown().await;
    Ok(())
}
