//! Storage workers: Append and Read at each shard's leader, and Replicate
//! at its replicas, for a stream made for the run (through the control
//! plane; routes from the cache, as a frontend finds them).
//!
//! Replicate is measured only in the one form a replica accepts without
//! writing anything: a re-send of records it already holds, at its current
//! epoch (a leader's retry after a lost answer). Sending a replica records
//! its leader never wrote would break the rule every copy relies on — a
//! replica's log is a prefix of its leader's — and a later batch of the
//! leader's at those offsets would be taken as already held. So each call
//! carries `first_offset + records <= the replica's end` (read with
//! DescribeShard at set-up, and only from replicas already at the shard's
//! epoch), `leader_committed_offset` 0 (a commit point only moves forward)
//! and an *empty* epoch history, which the replica refuses before touching
//! its log if the request would make it adopt a new epoch. What it measures
//! is the call, decoding, the epoch checks and the log's writer lock, not
//! the write and fsync; those show in Append (the leader writes, fsyncs,
//! then replicates to both replicas, which write and fsync, before it
//! answers). docs/load-tests.md has both.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use anyhow::Context as _;
use bytes::Bytes;
use freshet_proto::v1::read_request::Start;
use freshet_proto::v1::storage_client::StorageClient;
use freshet_proto::v1::{
    AppendRequest, DescribeShardRequest, EpochStart, ReadRequest, ReplicateRequest, ShardKey,
    ShardMapEntry,
};

use crate::driver::{Done, Failure, FnScenario};
use crate::grpc::{self, AuthChannel, Token};
use crate::report::Heading;
use crate::setup::{self, Cleanups, Context, Prepared};

#[derive(Debug, clap::Args)]
pub struct Shape {
    /// Shards of the stream made for the run; calls go round them.
    #[arg(long, default_value_t = 4)]
    shards: u32,
    /// Records per call [default: 1 for append and replicate, 100 for read].
    #[arg(long)]
    batch: Option<usize>,
    /// Bytes of data per record.
    #[arg(long, default_value_t = 100)]
    record_size: usize,
}

#[derive(Debug, clap::Subcommand)]
pub enum Scenario {
    /// Append to each shard's leader (acknowledged once durable on enough
    /// copies).
    Append(Shape),
    /// Read committed records from each shard's leader, cycling through
    /// what was written at set-up.
    Read {
        #[command(flatten)]
        shape: Shape,
        /// Records written to each shard before the run.
        #[arg(long, default_value_t = 2000)]
        prefill: u64,
    },
    /// Replicate, as a re-send of records each replica already holds
    /// (nothing is written; see docs/load-tests.md for why).
    Replicate {
        #[command(flatten)]
        shape: Shape,
        /// Records written to each shard before the run (what re-sends
        /// cover).
        #[arg(long, default_value_t = 2000)]
        prefill: u64,
    },
}

/// One shard's leader as last looked up.
#[derive(Clone)]
struct Route {
    key: ShardKey,
    epoch: u64,
    segment: u32,
    leader_address: String,
    leader: StorageClient<AuthChannel>,
}

/// Clients by worker address, each made once.
struct Clients {
    token: Token,
    by_address: Mutex<HashMap<String, StorageClient<AuthChannel>>>,
}

impl Clients {
    fn get(&self, address: &str) -> anyhow::Result<StorageClient<AuthChannel>> {
        let mut clients = self.by_address.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(client) = clients.get(address) {
            return Ok(client.clone());
        }
        let client = grpc::storage(grpc::channel(address, &self.token)?);
        clients.insert(address.to_owned(), client.clone());
        Ok(client)
    }
}

/// The routes of the driven shards, looked up again (in the background,
/// one lookup at a time) when a worker refuses a call as routed with a
/// stale epoch or to a worker that no longer leads: what a frontend does.
struct Routes {
    current: RwLock<Arc<Vec<Route>>>,
    refreshing: AtomicBool,
    refreshed: AtomicU64,
    clients: Arc<Clients>,
    lookup: Lookup,
}

#[derive(Clone)]
struct Lookup {
    cache_addr: String,
    token: Token,
    account: String,
    stream: String,
    region: String,
    timeout: Duration,
}

impl Lookup {
    async fn entries(&self) -> anyhow::Result<Vec<ShardMapEntry>> {
        let mut cache = grpc::cache(grpc::channel(&self.cache_addr, &self.token)?);
        let answer = cache
            .get_stream_shards(grpc::request(
                freshet_proto::v1::GetStreamShardsRequest {
                    account_id: self.account.clone(),
                    stream_name: self.stream.clone(),
                    region: self.region.clone(),
                },
                self.timeout,
            ))
            .await
            .map_err(|status| {
                anyhow::anyhow!("{}: {}", grpc::kind_of(&status), status.message())
            })?;
        Ok(answer.into_inner().entries)
    }
}

fn route_of(entry: &ShardMapEntry, clients: &Clients) -> anyhow::Result<Route> {
    Ok(Route {
        key: entry.key.clone().context("entry without a key")?,
        epoch: entry.epoch,
        segment: entry.segment_index,
        leader_address: entry.leader_address.clone(),
        leader: clients.get(&entry.leader_address)?,
    })
}

impl Routes {
    fn pick(&self, seq: u64) -> Route {
        let routes = self
            .current
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        routes[seq as usize % routes.len()].clone()
    }

    fn len(&self) -> usize {
        self.current.read().unwrap_or_else(|p| p.into_inner()).len()
    }

    /// Counts a failed call; a refusal before writing (stale route) starts
    /// a lookup of fresh routes.
    fn failed(self: &Arc<Self>, status: tonic::Status) -> Failure {
        let failure = grpc::failure(status);
        if failure.kind.ends_with("/NotWritten") && !self.refreshing.swap(true, Ordering::AcqRel) {
            let routes = self.clone();
            tokio::spawn(async move {
                if let Ok(entries) = routes.lookup.entries().await {
                    let old = routes
                        .current
                        .read()
                        .unwrap_or_else(|p| p.into_inner())
                        .clone();
                    let fresh: Vec<Route> = old
                        .iter()
                        .map(|route| {
                            entries
                                .iter()
                                .find(|e| e.key.as_ref() == Some(&route.key))
                                .and_then(|e| route_of(e, &routes.clients).ok())
                                .unwrap_or_else(|| route.clone())
                        })
                        .collect();
                    *routes.current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(fresh);
                    routes.refreshed.fetch_add(1, Ordering::Relaxed);
                }
                // At most one lookup every 200 ms.
                tokio::time::sleep(Duration::from_millis(200)).await;
                routes.refreshing.store(false, Ordering::Release);
            });
        }
        failure
    }
}

pub async fn prepare(
    context: &Context,
    scenario: Scenario,
    cleanups: &mut Cleanups,
) -> anyhow::Result<Prepared> {
    let (name, shape, prefill) = match scenario {
        Scenario::Append(shape) => ("append", shape, 0),
        Scenario::Read { shape, prefill } => ("read", shape, prefill),
        Scenario::Replicate { shape, prefill } => ("replicate", shape, prefill),
    };
    let batch = shape
        .batch
        .unwrap_or(if name == "read" { 100 } else { 1 })
        .max(1);
    let account = context.account(0);
    let stream = context.stream_name("storage");
    setup::create_streams(
        context,
        cleanups,
        &account,
        std::slice::from_ref(&stream),
        shape.shards.max(1),
    )
    .await?;
    let entries = setup::open_shards(context, &account, &stream).await?;
    let clients = Arc::new(Clients {
        token: context.token.clone(),
        by_address: Mutex::default(),
    });
    let all: Vec<Route> = entries
        .iter()
        .map(|entry| route_of(entry, &clients))
        .collect::<anyhow::Result<_>>()?;
    let payload = Bytes::from(vec![b'x'; shape.record_size]);
    if prefill > 0 {
        let started = tokio::time::Instant::now();
        for route in &all {
            fill(route, prefill, &payload, context.timeout).await?;
        }
        eprintln!(
            "freshet-load: wrote {prefill} records to each of {} shards in {:.1} s",
            all.len(),
            started.elapsed().as_secs_f64()
        );
    }
    let leaders: Vec<&str> = {
        let mut leaders: Vec<&str> = all.iter().map(|r| r.leader_address.as_str()).collect();
        leaders.sort_unstable();
        leaders.dedup();
        leaders
    };
    let mut setup_lines = vec![format!(
        "stream {stream}: {} shards, leaders {}; {batch} record(s) of {} B per call",
        all.len(),
        leaders.join(", "),
        shape.record_size
    )];
    let timeout = context.timeout;

    if name == "replicate" {
        return replicate(context, &entries, &clients, batch, payload, setup_lines).await;
    }

    let driven: Vec<Route> = match &context.target {
        Some(target) => {
            let led: Vec<Route> = all
                .iter()
                .filter(|r| &r.leader_address == target)
                .cloned()
                .collect();
            anyhow::ensure!(
                !led.is_empty(),
                "the worker at {target} leads none of the stream's shards (their leaders: {})",
                leaders.join(", ")
            );
            setup_lines.push(format!(
                "driving only the {} shard(s) {target} leads",
                led.len()
            ));
            led
        }
        None => all,
    };
    let target = context
        .target
        .clone()
        .unwrap_or_else(|| "each shard's leader".to_owned());
    let routes = Arc::new(Routes {
        current: RwLock::new(Arc::new(driven)),
        refreshing: AtomicBool::new(false),
        refreshed: AtomicU64::new(0),
        clients,
        lookup: Lookup {
            cache_addr: context.addresses.cache_addr.clone(),
            token: context.token.clone(),
            account,
            stream,
            region: context.region.clone(),
            timeout,
        },
    });
    let size = shape.record_size as u64;
    let scenario: Arc<dyn crate::driver::Scenario> = if name == "append" {
        Arc::new(FnScenario(move |seq: u64| {
            let routes = routes.clone();
            let route = routes.pick(seq);
            let request = AppendRequest {
                shard: Some(route.key.clone()),
                epoch: route.epoch,
                records: setup::records(seq, batch, &payload),
                key: None,
                resolving: false,
            };
            let mut leader = route.leader;
            async move {
                let answer = leader
                    .append(grpc::request(request, timeout))
                    .await
                    .map_err(|status| routes.failed(status))?
                    .into_inner();
                let throttled = u64::from(answer.throttled);
                let written = (batch as u64).saturating_sub(throttled);
                Ok(Done::items(written)
                    .with_bytes(written * size)
                    .note("records refused by the shard's write limit", throttled)
                    .note(
                        "routes looked up again",
                        routes.refreshed.swap(0, Ordering::Relaxed),
                    ))
            }
        }))
    } else {
        setup_lines.push(format!(
            "reads of {batch} records from offsets cycling through the {prefill} written per shard"
        ));
        let shards = routes.len() as u64;
        Arc::new(FnScenario(move |seq: u64| {
            let routes = routes.clone();
            let route = routes.pick(seq);
            let round = seq / shards.max(1);
            let offset = (round * batch as u64) % prefill.max(1);
            let request = ReadRequest {
                shard: Some(route.key.clone()),
                epoch: route.epoch,
                start: Some(Start::AtOffset(offset)),
                max_records: u32::try_from(batch).unwrap_or(u32::MAX),
                max_bytes: 0,
                segment: route.segment,
            };
            let mut leader = route.leader;
            async move {
                let answer = leader
                    .read(grpc::request(request, timeout))
                    .await
                    .map_err(|status| routes.failed(status))?
                    .into_inner();
                let bytes: u64 = answer.records.iter().map(|r| r.data.len() as u64).sum();
                Ok(Done::items(answer.records.len() as u64)
                    .with_bytes(bytes)
                    .note(
                        "routes looked up again",
                        routes.refreshed.swap(0, Ordering::Relaxed),
                    ))
            }
        }))
    };
    Ok(Prepared {
        scenario,
        heading: Heading {
            service: "storage-worker".into(),
            scenario: name.into(),
            target,
            items_are: "records".into(),
            setup: setup_lines,
        },
        max_concurrency: None,
        keep_alive: None,
    })
}

/// Appends `count` records to a shard through its leader, 500 a call,
/// waiting out the shard's write limit.
async fn fill(route: &Route, count: u64, payload: &Bytes, timeout: Duration) -> anyhow::Result<()> {
    let mut written = 0u64;
    let mut leader = route.leader.clone();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(120);
    while written < count {
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "prefilling {} took over 2 minutes",
            route.key.shard_id
        );
        let take = (count - written).min(500) as usize;
        let request = AppendRequest {
            shard: Some(route.key.clone()),
            epoch: route.epoch,
            // One record repeated: a re-send (`replicate`) can then offer
            // at any offset exactly what the replica holds there.
            records: setup::records(0, 1, payload)
                .into_iter()
                .cycle()
                .take(take)
                .collect(),
            // Unkeyed: no append mark, so every record is the same.
            key: None,
            resolving: false,
        };
        match leader.append(grpc::request(request, timeout)).await {
            Ok(answer) => {
                let answer = answer.into_inner();
                written += take as u64 - u64::from(answer.throttled);
                if answer.throttled > 0 {
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
            Err(status) if status.code() == tonic::Code::ResourceExhausted => {
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
            Err(status) => anyhow::bail!(
                "prefill Append to {} at {}: {}: {}",
                route.key.shard_id,
                route.leader_address,
                grpc::kind_of(&status),
                status.message()
            ),
        }
    }
    Ok(())
}

/// A replica the re-send may go to, with where its log ended at set-up.
#[derive(Clone)]
struct Replica {
    key: ShardKey,
    epoch: u64,
    address: String,
    client: StorageClient<AuthChannel>,
    end: u64,
    /// The copy's epoch history: a re-send must carry exactly it.
    epochs: Vec<EpochStart>,
}

async fn replicate(
    context: &Context,
    entries: &[ShardMapEntry],
    clients: &Clients,
    batch: usize,
    payload: Bytes,
    mut setup_lines: Vec<String>,
) -> anyhow::Result<Prepared> {
    let mut replicas = Vec::new();
    let mut skipped = Vec::new();
    for entry in entries {
        let key = entry.key.clone().context("entry without a key")?;
        for address in &entry.replica_addresses {
            if address.is_empty() {
                continue;
            }
            if context.target.as_ref().is_some_and(|t| t != address) {
                continue;
            }
            let mut client = clients.get(address)?;
            // Waits for the replica to have taken the leader's epoch (the
            // leader probes idle replicas every 500 ms).
            let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
            loop {
                let described = client
                    .describe_shard(grpc::request(
                        DescribeShardRequest {
                            shard: Some(key.clone()),
                        },
                        context.timeout,
                    ))
                    .await
                    .map_err(|status| {
                        anyhow::anyhow!(
                            "DescribeShard {} at {address}: {}: {}",
                            key.shard_id,
                            grpc::kind_of(&status),
                            status.message()
                        )
                    })?
                    .into_inner();
                if described.last_epoch == entry.epoch && described.next_offset >= batch as u64 {
                    replicas.push(Replica {
                        key: key.clone(),
                        epoch: entry.epoch,
                        epochs: described.epochs,
                        address: address.clone(),
                        client: client.clone(),
                        end: described.next_offset,
                    });
                    break;
                }
                if tokio::time::Instant::now() >= deadline {
                    skipped.push(format!(
                        "{} at {address} (epoch {} of {}, {} records)",
                        key.shard_id, described.last_epoch, entry.epoch, described.next_offset
                    ));
                    break;
                }
                tokio::time::sleep(Duration::from_millis(200)).await;
            }
        }
    }
    anyhow::ensure!(
        !replicas.is_empty(),
        "no replica is at its shard's epoch with at least {batch} records{}",
        if skipped.is_empty() {
            String::new()
        } else {
            format!(" (skipped: {})", skipped.join("; "))
        }
    );
    let mut addresses: Vec<&str> = replicas.iter().map(|r| r.address.as_str()).collect();
    addresses.sort_unstable();
    addresses.dedup();
    setup_lines.push(format!(
        "re-sends to {} replica copies on {} (nothing written: see docs/load-tests.md)",
        replicas.len(),
        addresses.join(", ")
    ));
    if !skipped.is_empty() {
        setup_lines.push(format!(
            "skipped, not at the shard's epoch: {}",
            skipped.join("; ")
        ));
    }
    let target = context
        .target
        .clone()
        .unwrap_or_else(|| "each shard's replicas".to_owned());
    let replicas = Arc::new(replicas);
    let timeout = context.timeout;
    let size = payload.len() as u64;
    // What `fill` wrote at every offset, so what the replica holds.
    let records: Vec<_> = setup::records(0, 1, &payload)
        .into_iter()
        .cycle()
        .take(batch)
        .collect();
    let records_crc32 = freshet_log::batch_checksum(
        records
            .iter()
            .map(|r| (r.partition_key.as_str(), &r.data[..], None)),
    );
    let scenario = FnScenario(move |seq: u64| {
        let replica = replicas[seq as usize % replicas.len()].clone();
        let round = seq / replicas.len() as u64;
        let span = replica.end - batch as u64 + 1;
        let first_offset = (round * batch as u64) % span;
        let request = ReplicateRequest {
            shard: Some(replica.key.clone()),
            epoch: replica.epoch,
            first_offset,
            arrival_ms: 0,
            records: records.clone(),
            // Never moves a commit point (it only moves forward) ...
            leader_committed_offset: 0,
            // ... and, at the copy's epoch with its own history, adopts
            // nothing.
            leader_epochs: replica.epochs.clone(),
            records_crc32,
            leader_next_offset: replica.end,
        };
        let mut client = replica.client;
        async move {
            let answer = client
                .replicate(grpc::request(request, timeout))
                .await
                .map_err(grpc::failure)?
                .into_inner();
            if !answer.accepted || answer.next_offset < first_offset + batch as u64 {
                return Err(Failure::new(
                    "not accepted",
                    format!(
                        "the replica answered accepted={} next_offset={} for offsets from {first_offset}",
                        answer.accepted, answer.next_offset
                    ),
                ));
            }
            Ok(Done::items(batch as u64).with_bytes(batch as u64 * size))
        }
    });
    Ok(Prepared {
        scenario: Arc::new(scenario),
        heading: Heading {
            service: "storage-worker".into(),
            scenario: "replicate".into(),
            target,
            items_are: "records re-sent".into(),
            setup: setup_lines,
        },
        max_concurrency: None,
        keep_alive: None,
    })
}
