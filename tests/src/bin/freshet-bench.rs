//! `freshet-bench` (run by `just bench`): throughput and latency of the data
//! path through the frontend, against the `just dev` topology of release
//! binaries on this machine, next to what the disk itself allows.
//!
//! Every scenario is bounded in time and stops by itself; all traffic stays
//! on 127.0.0.1. Prints one Markdown table. In the SubscribeToShard rows,
//! records/s and MB/s are what all subscribers together received, and the
//! latencies run from a PutRecord's acknowledgement to the event carrying
//! the record.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, ShardIteratorType};
use freshet_e2e::topology::DevTopology;
use freshet_e2e::{create_active_stream, kinesis_client};

const SCENARIO_SECONDS: u64 = 10;
const SHARDS: i32 = 4;

/// Latencies of completed calls, and what they carried.
#[derive(Default)]
struct Samples {
    latencies: Vec<Duration>,
    records: u64,
    bytes: u64,
}

impl Samples {
    fn merge(&mut self, other: Samples) {
        self.latencies.extend(other.latencies);
        self.records += other.records;
        self.bytes += other.bytes;
    }

    fn percentile(&mut self, p: f64) -> f64 {
        if self.latencies.is_empty() {
            return f64::NAN;
        }
        self.latencies.sort_unstable();
        let index = ((self.latencies.len() as f64 - 1.0) * p).round() as usize;
        self.latencies[index].as_secs_f64() * 1000.0
    }
}

struct Row {
    scenario: String,
    calls_per_second: f64,
    records_per_second: f64,
    megabytes_per_second: f64,
    p50_ms: f64,
    p99_ms: f64,
    p999_ms: f64,
}

fn row(scenario: &str, mut samples: Samples, elapsed: Duration) -> Row {
    let seconds = elapsed.as_secs_f64();
    Row {
        scenario: scenario.to_owned(),
        calls_per_second: samples.latencies.len() as f64 / seconds,
        records_per_second: samples.records as f64 / seconds,
        megabytes_per_second: samples.bytes as f64 / seconds / 1_000_000.0,
        p50_ms: samples.percentile(0.50),
        p99_ms: samples.percentile(0.99),
        p999_ms: samples.percentile(0.999),
    }
}

/// Runs one task per client, each `client_loop(its number, deadline)`
/// until the scenario's time is up, and merges what they measured.
async fn run_clients<F, Fut>(clients: usize, client_loop: F) -> anyhow::Result<(Samples, Duration)>
where
    F: Fn(usize, Instant) -> Fut,
    Fut: std::future::Future<Output = anyhow::Result<Samples>> + Send + 'static,
{
    let start = Instant::now();
    let deadline = start + Duration::from_secs(SCENARIO_SECONDS);
    let tasks: Vec<_> = (0..clients)
        .map(|worker| tokio::spawn(client_loop(worker, deadline)))
        .collect();
    let mut all = Samples::default();
    for task in tasks {
        all.merge(task.await??);
    }
    Ok((all, start.elapsed()))
}

/// `clients` concurrent loops of PutRecords with `batch` records of `size`
/// bytes each, for the scenario's duration.
async fn put_records(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    clients: usize,
    batch: usize,
    size: usize,
) -> anyhow::Result<(Samples, Duration)> {
    let payload = Blob::new(vec![b'f'; size]);
    run_clients(clients, |worker, deadline| {
        let (client, stream, payload) = (client.clone(), stream.to_owned(), payload.clone());
        async move {
            let mut samples = Samples::default();
            let mut n = 0u64;
            while Instant::now() < deadline {
                let entries = (0..batch)
                    .map(|i| {
                        n += 1;
                        PutRecordsRequestEntry::builder()
                            .partition_key(format!("{worker}-{n}-{i}"))
                            .data(payload.clone())
                            .build()
                    })
                    .collect::<Result<Vec<_>, _>>()?;
                let sent = Instant::now();
                let output = client
                    .put_records()
                    .stream_name(&stream)
                    .set_records(Some(entries))
                    .send()
                    .await?;
                samples.latencies.push(sent.elapsed());
                let ok = (batch as i32 - output.failed_record_count.unwrap_or(0)) as u64;
                samples.records += ok;
                samples.bytes += ok * size as u64;
            }
            anyhow::Ok(samples)
        }
    })
    .await
}

/// `clients` concurrent loops of single-record PutRecord calls.
async fn put_record(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    clients: usize,
    size: usize,
) -> anyhow::Result<(Samples, Duration)> {
    let payload = Blob::new(vec![b'f'; size]);
    run_clients(clients, |worker, deadline| {
        let (client, stream, payload) = (client.clone(), stream.to_owned(), payload.clone());
        async move {
            let mut samples = Samples::default();
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let sent = Instant::now();
                client
                    .put_record()
                    .stream_name(&stream)
                    .partition_key(format!("{worker}-{n}"))
                    .data(payload.clone())
                    .send()
                    .await?;
                samples.latencies.push(sent.elapsed());
                samples.records += 1;
                samples.bytes += size as u64;
            }
            anyhow::Ok(samples)
        }
    })
    .await
}

/// Like [`put_record`], from kept-alive raw HTTP/1.1 connections instead of
/// the SDK: what the server does when its client costs next to nothing.
async fn put_record_raw(
    endpoint: &str,
    stream: &str,
    clients: usize,
    size: usize,
) -> anyhow::Result<(Samples, Duration)> {
    use base64::Engine as _;
    let address = endpoint.trim_start_matches("http://").to_owned();
    let data = base64::engine::general_purpose::STANDARD.encode(vec![b'f'; size]);
    run_clients(clients, |worker, deadline| {
        let (address, stream, data) = (address.clone(), stream.to_owned(), data.clone());
        async move {
            let mut connection = freshet_e2e::raw_http::KeepAliveClient::connect(&address).await?;
            let mut samples = Samples::default();
            let mut n = 0u64;
            while Instant::now() < deadline {
                n += 1;
                let body = format!(
                    r#"{{"StreamName":"{stream}","PartitionKey":"{worker}-{n}","Data":"{data}"}}"#
                );
                let sent = Instant::now();
                let (status, answer) = connection.call("PutRecord", body.as_bytes()).await?;
                anyhow::ensure!(
                    status == 200,
                    "PutRecord answered {status}: {}",
                    String::from_utf8_lossy(&answer)
                );
                samples.latencies.push(sent.elapsed());
                samples.records += 1;
                samples.bytes += size as u64;
            }
            anyhow::Ok(samples)
        }
    })
    .await
}

/// Reads every shard from TRIM_HORIZON to its end, one reader per shard.
async fn get_records(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> anyhow::Result<(Samples, Duration)> {
    let shards = freshet_e2e::shard_ids(client, stream).await?;
    let start = Instant::now();
    let deadline = start + Duration::from_secs(6 * SCENARIO_SECONDS);
    let mut tasks = Vec::new();
    for shard in shards {
        let client = client.clone();
        let stream = stream.to_owned();
        tasks.push(tokio::spawn(async move {
            let mut samples = Samples::default();
            let mut iterator = client
                .get_shard_iterator()
                .stream_name(&stream)
                .shard_id(&shard)
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await?
                .shard_iterator;
            while let Some(current) = iterator {
                if Instant::now() > deadline {
                    break;
                }
                let sent = Instant::now();
                let page = client
                    .get_records()
                    .shard_iterator(current)
                    .limit(10_000)
                    .send()
                    .await?;
                samples.latencies.push(sent.elapsed());
                if page.records.is_empty() {
                    break;
                }
                samples.records += page.records.len() as u64;
                samples.bytes += page
                    .records
                    .iter()
                    .map(|r| r.data.as_ref().len() as u64)
                    .sum::<u64>();
                iterator = page.next_shard_iterator;
            }
            anyhow::Ok(samples)
        }));
    }
    let mut all = Samples::default();
    for task in tasks {
        all.merge(task.await??);
    }
    Ok((all, start.elapsed()))
}

/// Registers `count` consumers of `stream` (five at a time: no more may be
/// CREATING at once) and waits until all are ACTIVE; their ARNs.
async fn register_consumers(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    count: usize,
) -> anyhow::Result<Vec<String>> {
    let stream_arn = freshet_e2e::stream_arn(stream).to_string();
    let mut arns = Vec::new();
    for batch in (0..count).collect::<Vec<_>>().chunks(5) {
        for i in batch {
            let consumer = client
                .register_stream_consumer()
                .stream_arn(&stream_arn)
                .consumer_name(format!("bench-{i}"))
                .send()
                .await?
                .consumer
                .context("no consumer")?;
            arns.push(consumer.consumer_arn);
        }
        freshet_e2e::wait_until(Duration::from_secs(20), || async {
            let listed = client
                .list_stream_consumers()
                .stream_arn(&stream_arn)
                .send()
                .await;
            listed.is_ok_and(|l| {
                l.consumers
                    .unwrap_or_default()
                    .iter()
                    .all(|c| c.consumer_status == aws_sdk_kinesis::types::ConsumerStatus::Active)
            })
        })
        .await?;
    }
    Ok(arns)
}

/// What the subscribers of a fan-out scenario saw: for each record id,
/// when each subscriber got it.
type Arrivals = Vec<Vec<(u64, Instant)>>;

/// Subscribes every consumer to the stream's one shard at LATEST and
/// records when each record (its id in its first 8 bytes) arrives, until
/// `until`; also the bytes each received.
async fn subscribe_all(
    client: &aws_sdk_kinesis::Client,
    consumers: &[String],
    until: Instant,
) -> anyhow::Result<Vec<tokio::task::JoinHandle<anyhow::Result<(Vec<(u64, Instant)>, u64)>>>> {
    use aws_sdk_kinesis::types::{StartingPosition, SubscribeToShardEventStream};
    let mut readers = Vec::new();
    for consumer in consumers {
        let mut events = client
            .subscribe_to_shard()
            .consumer_arn(consumer)
            .shard_id("shardId-000000000000")
            .starting_position(
                StartingPosition::builder()
                    .r#type(ShardIteratorType::Latest)
                    .build()?,
            )
            .send()
            .await?
            .event_stream;
        readers.push(tokio::spawn(async move {
            let mut arrivals = Vec::new();
            let mut bytes = 0u64;
            while Instant::now() < until {
                let remaining = until.saturating_duration_since(Instant::now());
                let Ok(received) = tokio::time::timeout(remaining, events.recv()).await else {
                    break;
                };
                let Some(SubscribeToShardEventStream::SubscribeToShardEvent(event)) = received?
                else {
                    break;
                };
                let at = Instant::now();
                for record in &event.records {
                    let data = record.data.as_ref();
                    bytes += data.len() as u64;
                    if let Some(id) = data.get(..8).and_then(|b| <[u8; 8]>::try_from(b).ok()) {
                        arrivals.push((u64::from_be_bytes(id), at));
                    }
                }
            }
            anyhow::Ok((arrivals, bytes))
        }));
    }
    Ok(readers)
}

/// Records written once every 2 ms (moderate load) to a one-shard stream
/// read by `consumers` subscribers: from each PutRecord's acknowledgement
/// to the event that carries the record, per subscriber.
async fn fan_out_latency(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    consumers: &[String],
) -> anyhow::Result<(Samples, Duration)> {
    let start = Instant::now();
    let deadline = start + Duration::from_secs(SCENARIO_SECONDS);
    let readers = subscribe_all(client, consumers, deadline + Duration::from_secs(2)).await?;
    let mut acked = Vec::new();
    let mut ticks = tokio::time::interval(Duration::from_millis(2));
    let mut id = 0u64;
    while Instant::now() < deadline {
        ticks.tick().await;
        let mut data = id.to_be_bytes().to_vec();
        data.resize(100, b'f');
        client
            .put_record()
            .stream_name(stream)
            .partition_key(format!("k{id}"))
            .data(Blob::new(data))
            .send()
            .await?;
        acked.push(Instant::now());
        id += 1;
    }
    let elapsed = start.elapsed();
    let mut samples = Samples::default();
    let mut arrivals: Arrivals = Vec::new();
    for reader in readers {
        let (seen, bytes) = reader.await??;
        samples.bytes += bytes;
        arrivals.push(seen);
    }
    for seen in &arrivals {
        anyhow::ensure!(
            seen.len() == acked.len(),
            "a subscriber got {} of the {} records",
            seen.len(),
            acked.len()
        );
        for (id, at) in seen {
            let acknowledged = acked[usize::try_from(*id)?];
            // An event may arrive before the writer has its answer: 0.
            samples
                .latencies
                .push(at.saturating_duration_since(acknowledged));
            samples.records += 1;
        }
    }
    Ok((samples, elapsed))
}

/// As many 100 × 1 KiB PutRecords as 4 writers manage, read by every
/// subscriber: what all of them together receive (each is paced to
/// 2 MiB/s, as in Kinesis).
async fn fan_out_egress(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    consumers: &[String],
) -> anyhow::Result<(Samples, Duration)> {
    let start = Instant::now();
    let readers = subscribe_all(
        client,
        consumers,
        start + Duration::from_secs(SCENARIO_SECONDS),
    )
    .await?;
    let (written, _) = put_records(client, stream, 4, 100, 1024).await?;
    let mut samples = Samples {
        latencies: written.latencies,
        ..Samples::default()
    };
    for reader in readers {
        let (seen, bytes) = reader.await??;
        samples.records += seen.len() as u64;
        samples.bytes += bytes;
    }
    Ok((samples, start.elapsed()))
}

/// The fields of `/proc/<pid>/stat` after the parenthesised command
/// (state, ppid, pgrp, ..., utime at index 11, stime at 12).
fn stat_fields(proc_dir: &std::path::Path) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(proc_dir.join("stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// Every Freshet process in the process group `group`: its name and
/// `/proc` directory.
fn freshet_processes(group: u32) -> Vec<(String, std::path::PathBuf)> {
    let mut found = Vec::new();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Some(fields) = stat_fields(&path) else {
            continue;
        };
        let pgrp: Option<u32> = fields.get(2).and_then(|v| v.parse().ok());
        let name = std::fs::read_to_string(path.join("comm"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        if pgrp == Some(group) && name.starts_with("freshet-") {
            found.push((name, path));
        }
    }
    found.sort();
    found
}

/// CPU time (user + system) used so far by each Freshet process of the
/// group, by process name (workers summed), and by this client.
fn cpu_seconds(group: Option<u32>) -> std::collections::BTreeMap<String, f64> {
    // Clock ticks per second (100 on Linux unless `getconf` says otherwise).
    static TICKS: std::sync::OnceLock<f64> = std::sync::OnceLock::new();
    let ticks = *TICKS.get_or_init(|| {
        std::process::Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse::<f64>().ok())
            .filter(|t| *t > 0.0)
            .unwrap_or(100.0)
    });
    let used = |dir: &std::path::Path| -> f64 {
        stat_fields(dir)
            .map(|f| {
                let field = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
                (field(11) + field(12)) / ticks
            })
            .unwrap_or(0.0)
    };
    let mut totals = std::collections::BTreeMap::new();
    *totals.entry("client (AWS SDK)".to_owned()).or_insert(0.0) +=
        used(std::path::Path::new("/proc/self"));
    for (name, dir) in group.map(freshet_processes).unwrap_or_default() {
        *totals.entry(name).or_insert(0.0) += used(&dir);
    }
    totals
}

/// Cores each process used between two `cpu_seconds` readings.
fn cores_used(
    before: &std::collections::BTreeMap<String, f64>,
    after: &std::collections::BTreeMap<String, f64>,
    elapsed: Duration,
) -> String {
    after
        .iter()
        .map(|(name, seconds)| {
            let spent = seconds - before.get(name).copied().unwrap_or(0.0);
            format!("{name} {:.2}", spent / elapsed.as_secs_f64())
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Peak resident memory (VmHWM) of every Freshet process in the process
/// group `group`, as `name: MiB` pairs.
fn peak_memory(group: u32) -> Vec<(String, u64)> {
    let mut found = Vec::new();
    for (name, path) in freshet_processes(group) {
        let peak_kib = std::fs::read_to_string(path.join("status"))
            .unwrap_or_default()
            .lines()
            .find_map(|line| line.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .unwrap_or(0);
        found.push((name, peak_kib / 1024));
    }
    found.sort();
    found
}

/// The disk's own limits: 4 KiB write+fdatasync per second, and sequential
/// write bandwidth with one fsync at the end.
fn measure_disk(dir: &std::path::Path) -> anyhow::Result<(f64, f64)> {
    use std::io::Write;
    let path = dir.join("fsync-probe");
    let mut file = std::fs::File::create(&path)?;
    let block = vec![7u8; 4096];
    let start = Instant::now();
    let mut syncs = 0u64;
    while start.elapsed() < Duration::from_secs(3) {
        file.write_all(&block)?;
        file.sync_data()?;
        syncs += 1;
    }
    let fsyncs_per_second = syncs as f64 / start.elapsed().as_secs_f64();
    let path = dir.join("bandwidth-probe");
    let mut file = std::fs::File::create(&path)?;
    let chunk = vec![9u8; 1024 * 1024];
    let start = Instant::now();
    for _ in 0..512 {
        file.write_all(&chunk)?;
    }
    file.sync_all()?;
    let megabytes_per_second = 512.0 * 1.048_576 / start.elapsed().as_secs_f64();
    std::fs::remove_file(&path)?;
    Ok((fsyncs_per_second, megabytes_per_second))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let workspace = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let bin_dir = std::env::var("FRESHET_BIN_DIR")
        .unwrap_or_else(|_| workspace.join("target/release").display().to_string());
    let data_dir = tempfile::tempdir_in(&workspace).context("temp dir on the workspace's disk")?;
    let (fsyncs, disk_mbps) = measure_disk(data_dir.path())?;

    for ack_copies in ["majority", "all"] {
        run_scenarios(&workspace, &bin_dir, data_dir.path(), ack_copies).await?;
    }
    println!();
    println!("disk under the data directory: {fsyncs:.0} fsyncs/s (4 KiB write + fdatasync), {disk_mbps:.0} MB/s sequential write");
    println!(
        "machine: {} cores; everything (client, services, Postgres, Redis) on it",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(0)
    );
    Ok(())
}

/// Starts the topology with the given acknowledgement policy, runs every
/// scenario against it, prints the table, and stops it.
async fn run_scenarios(
    workspace: &std::path::Path,
    bin_dir: &str,
    data_root: &std::path::Path,
    ack_copies: &str,
) -> anyhow::Result<()> {
    let data_dir = data_root.join(ack_copies);
    // The engine's own limits are measured, not Kinesis's per-shard quotas
    // (1 MiB/s and 1,000 records/s would cap a 4-shard stream).
    let topology = DevTopology::start(
        workspace,
        bin_dir,
        &data_dir,
        &format!("bench_{ack_copies}"),
        &[
            ("FRESHET_ACK_COPIES", ack_copies),
            ("FRESHET_SHARD_WRITE_BYTES_PER_SEC", "0"),
            ("FRESHET_SHARD_WRITE_RECORDS_PER_SEC", "0"),
            ("FRESHET_SHARD_READ_BYTES_PER_SEC", "0"),
            ("FRESHET_SHARD_READ_CALLS_PER_SEC", "0"),
            // Shards stay where they were placed: a move would pause writes.
            ("FRESHET_BALANCE_AT", "inf"),
        ],
    )
    .await?;
    let client = kinesis_client(&topology.endpoint);
    let client = Arc::new(client);
    let group = topology.pid();
    let mut rows = Vec::new();
    let mut cpu = Vec::new();
    // `FRESHET_BENCH_ONLY=PutRecord` (any part of a scenario's name) runs
    // just the matching scenarios (GetRecords reads what PutRecords wrote).
    let only = std::env::var("FRESHET_BENCH_ONLY").unwrap_or_default();
    let wanted = |name: &str| name.contains(only.as_str());
    let mut measure = |name: &str, samples: Samples, elapsed: Duration, before| {
        cpu.push(format!(
            "{name}: {}",
            cores_used(&before, &cpu_seconds(group), elapsed)
        ));
        rows.push(row(name, samples, elapsed));
    };
    let small = "PutRecords 500 × 100 B, 8 clients";
    let reads = "GetRecords (Limit 10000), 1 reader per shard";
    if wanted(small) || wanted(reads) {
        create_active_stream(&client, "bench-small", SHARDS).await?;
        let before = cpu_seconds(group);
        let (samples, elapsed) = put_records(&client, "bench-small", 8, 500, 100).await?;
        measure(small, samples, elapsed, before);
        if wanted(reads) {
            let before = cpu_seconds(group);
            let (samples, elapsed) = get_records(&client, "bench-small").await?;
            measure(reads, samples, elapsed, before);
        }
    }
    let large = "PutRecords 10 × 100 KiB, 8 clients";
    if wanted(large) {
        create_active_stream(&client, "bench-large", SHARDS).await?;
        let before = cpu_seconds(group);
        let (samples, elapsed) = put_records(&client, "bench-large", 8, 10, 100 * 1024).await?;
        measure(large, samples, elapsed, before);
    }
    let single = "PutRecord 100 B, 16 clients";
    if wanted(single) {
        create_active_stream(&client, "bench-single", SHARDS).await?;
        let before = cpu_seconds(group);
        let (samples, elapsed) = put_record(&client, "bench-single", 16, 100).await?;
        measure(single, samples, elapsed, before);
    }
    let raw = "PutRecord 100 B, 16 raw HTTP/1.1 clients (no SDK)";
    if wanted(raw) {
        create_active_stream(&client, "bench-raw", SHARDS).await?;
        let before = cpu_seconds(group);
        let (samples, elapsed) = put_record_raw(&topology.endpoint, "bench-raw", 16, 100).await?;
        measure(raw, samples, elapsed, before);
    }

    for consumers in [1usize, 5, 20] {
        let latency = format!("SubscribeToShard, {consumers} consumers of 1 shard: ack → event (PutRecord every 2 ms)");
        let egress = format!("SubscribeToShard, {consumers} consumers of 1 shard: egress (4 × PutRecords 100 × 1 KiB)");
        if !wanted(&latency) && !wanted(&egress) {
            continue;
        }
        let stream = format!("bench-fanout-{consumers}");
        create_active_stream(&client, &stream, 1).await?;
        let arns = register_consumers(&client, &stream, consumers).await?;
        if wanted(&latency) {
            let before = cpu_seconds(group);
            let (samples, elapsed) = fan_out_latency(&client, &stream, &arns).await?;
            measure(&latency, samples, elapsed, before);
        }
        if wanted(&egress) {
            // A consumer subscribes to a shard once a second at most.
            tokio::time::sleep(Duration::from_millis(1100)).await;
            let before = cpu_seconds(group);
            let (samples, elapsed) = fan_out_egress(&client, &stream, &arns).await?;
            measure(&egress, samples, elapsed, before);
        }
    }

    println!();
    println!("acknowledged when durable on: {ack_copies} of the copies");
    println!();
    println!("| scenario | calls/s | records/s | MB/s | p50 ms | p99 ms | p99.9 ms |");
    println!("|---|---:|---:|---:|---:|---:|---:|");
    for r in &rows {
        println!(
            "| {} | {:.0} | {:.0} | {:.1} | {:.1} | {:.1} | {:.1} |",
            r.scenario,
            r.calls_per_second,
            r.records_per_second,
            r.megabytes_per_second,
            r.p50_ms,
            r.p99_ms,
            r.p999_ms
        );
    }

    println!();
    println!("cores used per process (CPU seconds / elapsed seconds):");
    for line in &cpu {
        println!("- {line}");
    }
    if let Some(pid) = topology.pid() {
        let memory: Vec<String> = peak_memory(pid)
            .into_iter()
            .map(|(name, mib)| format!("{name} {mib} MiB"))
            .collect();
        println!();
        println!("peak resident memory: {}", memory.join(", "));
    }
    topology.stop().await;
    Ok(())
}
