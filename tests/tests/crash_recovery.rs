//! Storage workers are real processes here: kill -9 one while producers
//! write, restart it, and every acknowledged record is still there; a torn
//! tail left by the crash is truncated, never served.

use std::collections::HashSet;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::PutRecordsRequestEntry;
use freshet_e2e::{
    create_active_stream, read_shard, wait_until, Cluster, ClusterOptions, WorkerMode,
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
    for stream in std::fs::read_dir(&shards_dir)? {
        for shard in std::fs::read_dir(stream?.path())? {
            let mut segments: Vec<_> = std::fs::read_dir(shard?.path())?
                .map(|e| e.map(|e| e.path()))
                .collect::<Result<_, _>>()?;
            segments.sort();
            if let Some(last) = segments.last() {
                let mut file = std::fs::OpenOptions::new().append(true).open(last)?;
                file.write_all(&500u32.to_le_bytes())?;
                file.write_all(&[0xAB; 37])?;
                torn += 1;
            }
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

    let acknowledged: Arc<Mutex<Vec<String>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let mut producers = Vec::new();
    for producer in 0..4 {
        let client = client.clone();
        let acknowledged = acknowledged.clone();
        let stop = stop.clone();
        producers.push(tokio::spawn(async move {
            let mut batch_number = 0;
            // Bounded: stops when told, or after 400 batches at most.
            while !stop.load(Ordering::Relaxed) && batch_number < 400 {
                let payloads: Vec<String> = (0..20)
                    .map(|i| format!("p{producer}-b{batch_number}-r{i}"))
                    .collect();
                let entries = payloads
                    .iter()
                    .map(|p| {
                        PutRecordsRequestEntry::builder()
                            .partition_key(p)
                            .data(Blob::new(p.as_bytes()))
                            .build()
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                batch_number += 1;
                let Ok(output) = client
                    .put_records()
                    .stream_name("durable")
                    .set_records(Some(entries))
                    .send()
                    .await
                else {
                    continue;
                };
                let mut acked = acknowledged.lock().unwrap_or_else(|p| p.into_inner());
                for (payload, result) in payloads.iter().zip(output.records) {
                    if result.error_code.is_none() {
                        acked.push(payload.clone());
                    }
                }
            }
            anyhow::Ok(())
        }));
    }

    let acked_count = || acknowledged.lock().unwrap_or_else(|p| p.into_inner()).len();
    wait_until(Duration::from_secs(60), || async { acked_count() >= 400 }).await?;
    let victim = 0;
    cluster.kill_worker(victim).await?;
    let at_kill = acked_count();
    let torn = tear_tails(&cluster.workers[victim].data_dir)?;
    assert!(torn > 0, "the killed worker led at least one shard");
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.start_worker(victim).await?;
    cluster.wait_for_workers_alive().await?;
    // Writes flow again to every shard, including the restarted worker's.
    wait_until(Duration::from_secs(60), || async {
        acked_count() >= at_kill + 400
    })
    .await?;
    stop.store(true, Ordering::Relaxed);
    for producer in producers {
        producer.await??;
    }

    let expected: HashSet<String> = acknowledged
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .cloned()
        .collect();
    let mut seen = HashSet::new();
    let shards = client
        .list_shards()
        .stream_name("durable")
        .send()
        .await?
        .shards
        .unwrap_or_default();
    for shard in shards {
        for record in read_shard(&client, "durable", &shard.shard_id).await? {
            let payload = String::from_utf8(record.data.into_inner())?;
            assert!(payload.starts_with('p'), "garbage served: {payload:?}");
            assert!(
                seen.insert(payload.clone()),
                "record {payload} served twice"
            );
        }
    }
    let missing: Vec<&String> = expected.difference(&seen).collect();
    assert!(
        missing.is_empty(),
        "{} acknowledged records lost, e.g. {:?}",
        missing.len(),
        missing.first()
    );
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
