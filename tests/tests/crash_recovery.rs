//! Storage workers are real processes here: kill -9 one while producers
//! write, restart it, and every acknowledged record is still there; a torn
//! tail left by the crash is truncated, never served.

use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use freshet_e2e::load::{assert_acknowledged_readable_once, Producers};
use freshet_e2e::{
    create_active_stream, stream_arn, wait_until, Cluster, ClusterOptions, WorkerMode,
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
