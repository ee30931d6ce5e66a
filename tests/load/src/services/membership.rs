//! Membership: its reads (the workers, the shard-map snapshot), the fan-out
//! of one change-log entry to many subscribers, and heartbeats from many
//! workers.

use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use freshet_proto::v1::membership_client::MembershipClient;
use freshet_proto::v1::shard_map_event::Event;
use freshet_proto::v1::{
    HeartbeatRequest, ListWorkersRequest, RegisterWorkerRequest, RepublishStreamRequest,
    SubscribeRequest,
};
use prost::Message as _;
use tokio::sync::watch;
use tokio::time::Instant;

use crate::driver::{Done, Failure, FnScenario};
use crate::grpc::{self, AuthChannel};
use crate::report::Heading;
use crate::setup::{self, Cleanups, Context, Prepared};
use crate::throwaway::{self, ThrowawayMembership};

#[derive(Debug, clap::Subcommand)]
pub enum Scenario {
    /// ListWorkers: every registered worker (one Postgres read).
    ListWorkers,
    /// Subscribe from version 0 and take only the first message: the
    /// snapshot of the whole live shard map (what a new subscriber gets).
    Snapshot {
        /// Streams to make first, so the map has something in it (spread
        /// over accounts, five each, for the control plane's call rate).
        #[arg(long, default_value_t = 0)]
        streams: usize,
        /// Shards of each stream made.
        #[arg(long, default_value_t = 4)]
        shards: u32,
    },
    /// N subscribers follow the change log; each call republishes the one
    /// shard of a stream made for the run (RepublishStream) and lasts until
    /// every subscriber has received the change. One call at a time.
    Fanout {
        /// Subscribers, each on its own connection.
        #[arg(long, default_value_t = 32)]
        subscribers: usize,
    },
    /// Heartbeats from simulated workers (registered first, in a zone of
    /// their own). By default against a membership this tool starts on a
    /// throwaway database, since live simulated workers would be given
    /// real shards (docs/load-tests.md).
    Heartbeat {
        /// Simulated workers; call n heartbeats worker n mod N.
        #[arg(long, default_value_t = 100)]
        workers: usize,
        /// Heartbeat the membership at --target instead: only for one whose
        /// database no real worker or stream uses.
        #[arg(long)]
        throwaway_target: bool,
        /// The membership binary to start [default: freshet-membership
        /// next to this binary].
        #[arg(long, value_name = "PATH")]
        membership_bin: Option<PathBuf>,
        /// Postgres server for the throwaway database (URL without a
        /// database).
        #[arg(
            long,
            env = "FRESHET_PG_SERVER",
            default_value = "postgres://postgres@127.0.0.1:5432"
        )]
        pg_server: String,
    },
}

pub async fn prepare(
    context: &Context,
    scenario: Scenario,
    cleanups: &mut Cleanups,
) -> anyhow::Result<Prepared> {
    let target = context
        .target_or(&context.addresses.membership_addr)
        .to_owned();
    match scenario {
        Scenario::ListWorkers => list_workers(context, target),
        Scenario::Snapshot { streams, shards } => {
            fill_map(context, streams, shards, cleanups).await?;
            snapshot(context, target, streams, shards)
        }
        Scenario::Fanout { subscribers } => fanout(context, target, subscribers, cleanups).await,
        Scenario::Heartbeat {
            workers,
            throwaway_target,
            membership_bin,
            pg_server,
        } => {
            heartbeat(
                context,
                workers,
                throwaway_target,
                membership_bin,
                &pg_server,
                cleanups,
            )
            .await
        }
    }
}

fn clients(context: &Context, target: &str) -> anyhow::Result<Vec<MembershipClient<AuthChannel>>> {
    Ok(grpc::channels(target, &context.token, context.connections)?
        .into_iter()
        .map(grpc::membership)
        .collect())
}

fn heading(scenario: &str, target: String, items_are: &str, setup: Vec<String>) -> Heading {
    Heading {
        service: "membership".into(),
        scenario: scenario.into(),
        target,
        items_are: items_are.into(),
        setup,
    }
}

fn list_workers(context: &Context, target: String) -> anyhow::Result<Prepared> {
    let clients = clients(context, &target)?;
    let timeout = context.timeout;
    let scenario = FnScenario(move |seq: u64| {
        let mut client = clients[seq as usize % clients.len()].clone();
        async move {
            let workers = client
                .list_workers(grpc::request(ListWorkersRequest {}, timeout))
                .await
                .map_err(grpc::failure)?
                .into_inner()
                .workers;
            Ok(Done::items(workers.len() as u64))
        }
    });
    Ok(Prepared {
        scenario: Arc::new(scenario),
        heading: heading("list-workers", target, "workers", vec![]),
        max_concurrency: None,
        keep_alive: None,
    })
}

/// Makes `streams` streams of `shards` shards, five per account, accounts
/// in parallel; deleted after the run.
async fn fill_map(
    context: &Context,
    streams: usize,
    shards: u32,
    cleanups: &mut Cleanups,
) -> anyhow::Result<()> {
    let per_account = 5;
    let mut making = tokio::task::JoinSet::new();
    for index in 0..streams.div_ceil(per_account) {
        let context = context.clone();
        let account = context.account(index as u64);
        let names: Vec<String> = (0..per_account.min(streams - index * per_account))
            .map(|i| format!("{}-{i}", context.stream_name(&format!("map{index}"))))
            .collect();
        making.spawn(async move {
            let mut own = Cleanups::default();
            let made = setup::create_streams(&context, &mut own, &account, &names, shards).await;
            (own, made)
        });
    }
    let mut first_error = None;
    while let Some(joined) = making.join_next().await {
        let (own, made) = joined.context("a stream-making task failed")?;
        cleanups.push(move || own.run());
        if let Err(error) = made {
            first_error.get_or_insert(error);
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn snapshot(
    context: &Context,
    target: String,
    streams: usize,
    shards: u32,
) -> anyhow::Result<Prepared> {
    let clients = clients(context, &target)?;
    let timeout = context.timeout;
    let scenario = FnScenario(move |seq: u64| {
        let mut client = clients[seq as usize % clients.len()].clone();
        async move {
            let mut events = client
                .subscribe(grpc::request(SubscribeRequest { from_version: 0 }, timeout))
                .await
                .map_err(grpc::failure)?
                .into_inner();
            match events.message().await.map_err(grpc::failure)? {
                Some(event) => match event.event {
                    Some(Event::Snapshot(snapshot)) => {
                        Ok(Done::items(snapshot.entries.len() as u64)
                            .with_bytes(snapshot.encoded_len() as u64))
                    }
                    _ => Err(Failure::new(
                        "no snapshot",
                        "the first message from version 0 was not a snapshot",
                    )),
                },
                None => Err(Failure::new("no snapshot", "the stream ended at once")),
            }
        }
    });
    Ok(Prepared {
        scenario: Arc::new(scenario),
        heading: heading(
            "snapshot",
            target,
            "entries",
            vec![
                "Subscribe(from_version 0), first message only; bytes are the snapshot's encoded size".into(),
                format!("{streams} stream(s) of {shards} shards made for the run, besides what the map held"),
            ],
        ),
        max_concurrency: None,
        keep_alive: None,
    })
}

/// What one subscriber has seen of the watched stream: the newest version
/// of its entry and when that arrived.
#[derive(Debug, Clone, Copy)]
struct Seen {
    synced: bool,
    version: i64,
    at: Option<Instant>,
}

/// Aborts the subscribers when the run is over.
struct Subscribers(Vec<tokio::task::JoinHandle<()>>);

impl Drop for Subscribers {
    fn drop(&mut self) {
        for task in &self.0 {
            task.abort();
        }
    }
}

/// Follows membership's change log as a service does (resubscribing from
/// the last version on an end), reporting the watched stream's changes.
async fn follow(
    channel: AuthChannel,
    stream_uid: i64,
    seen: watch::Sender<Seen>,
    resubscribed: Arc<AtomicU64>,
) {
    let mut last = 0i64;
    loop {
        let mut client = grpc::membership(channel.clone());
        if let Ok(answer) = client
            .subscribe(SubscribeRequest { from_version: last })
            .await
        {
            let mut events = answer.into_inner();
            while let Ok(Some(event)) = events.message().await {
                match event.event {
                    Some(Event::Snapshot(snapshot)) => {
                        last = snapshot.version;
                        let version = snapshot
                            .entries
                            .iter()
                            .filter(|e| e.key.as_ref().is_some_and(|k| k.stream_uid == stream_uid))
                            .map(|e| e.version)
                            .max()
                            .unwrap_or(0);
                        seen.send_modify(|s| {
                            s.synced = true;
                            s.version = s.version.max(version);
                        });
                    }
                    Some(Event::Change(entry)) => {
                        last = last.max(entry.version);
                        if entry
                            .key
                            .as_ref()
                            .is_some_and(|k| k.stream_uid == stream_uid)
                        {
                            let at = Instant::now();
                            seen.send_modify(|s| {
                                if entry.version > s.version {
                                    s.version = entry.version;
                                    s.at = Some(at);
                                }
                            });
                        }
                    }
                    Some(Event::Consumer(entry)) => last = last.max(entry.version),
                    None => {}
                }
            }
        }
        resubscribed.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn fanout(
    context: &Context,
    target: String,
    subscribers: usize,
    cleanups: &mut Cleanups,
) -> anyhow::Result<Prepared> {
    anyhow::ensure!(subscribers > 0, "--subscribers must be at least 1");
    let account = context.account(0);
    let name = context.stream_name("fanout");
    setup::create_streams(context, cleanups, &account, std::slice::from_ref(&name), 1).await?;
    let shards = setup::open_shards(context, &account, &name).await?;
    let stream_uid = shards
        .first()
        .and_then(|entry| entry.key.as_ref())
        .map(|key| key.stream_uid)
        .context("the fan-out stream has no shard")?;

    let resubscribed = Arc::new(AtomicU64::new(0));
    let mut watchers = Vec::with_capacity(subscribers);
    let mut tasks = Vec::with_capacity(subscribers);
    for _ in 0..subscribers {
        let (sender, receiver) = watch::channel(Seen {
            synced: false,
            version: 0,
            at: None,
        });
        let channel = grpc::channel(&target, &context.token)?;
        tasks.push(tokio::spawn(follow(
            channel,
            stream_uid,
            sender,
            resubscribed.clone(),
        )));
        watchers.push(receiver);
    }
    let keep_alive = Subscribers(tasks);
    let synced = tokio::time::timeout(Duration::from_secs(30), async {
        for watcher in &watchers {
            let mut watcher = watcher.clone();
            watcher.wait_for(|seen| seen.synced).await?;
        }
        anyhow::Ok(())
    })
    .await;
    anyhow::ensure!(
        matches!(synced, Ok(Ok(()))),
        "not every subscriber got its snapshot from {target} within 30 s"
    );

    let membership = grpc::membership(grpc::channel(&target, &context.token)?);
    let timeout = context.timeout;
    let watchers = Arc::new(watchers);
    let scenario = FnScenario(move |_seq: u64| {
        let mut membership = membership.clone();
        let watchers = watchers.clone();
        let resubscribed = resubscribed.clone();
        async move {
            let before: Vec<i64> = watchers.iter().map(|w| w.borrow().version).collect();
            let sent = Instant::now();
            membership
                .republish_stream(grpc::request(
                    RepublishStreamRequest { stream_uid },
                    timeout,
                ))
                .await
                .map_err(grpc::failure)?;
            let answered = sent.elapsed();
            let mut first: Option<Instant> = None;
            let mut last: Option<Instant> = None;
            for (watcher, before) in watchers.iter().zip(before) {
                let mut watcher = watcher.clone();
                let seen = *watcher
                    .wait_for(|seen| seen.version > before)
                    .await
                    .map_err(|_| Failure::new("subscriber gone", "a subscriber task ended"))?;
                if let Some(at) = seen.at {
                    first = Some(first.map_or(at, |f| f.min(at)));
                    last = Some(last.map_or(at, |l| l.max(at)));
                }
            }
            let mut done = Done::items(watchers.len() as u64)
                .sample("RepublishStream answered", answered)
                .note(
                    "subscriptions restarted",
                    resubscribed.swap(0, Ordering::Relaxed),
                );
            if let (Some(first), Some(last)) = (first, last) {
                done = done
                    .sample(
                        "first subscriber has it",
                        first.saturating_duration_since(sent),
                    )
                    .sample(
                        "last subscriber has it",
                        last.saturating_duration_since(sent),
                    );
            }
            Ok(done)
        }
    });
    Ok(Prepared {
        scenario: Arc::new(scenario),
        heading: heading(
            "fanout",
            target,
            "subscribers reached",
            vec![
                format!("{subscribers} subscribers, one connection each"),
                format!("change: RepublishStream of stream {name} (1 shard, uid {stream_uid}); latency = until the last subscriber has it"),
            ],
        ),
        max_concurrency: Some(1),
        keep_alive: Some(Box::new(keep_alive)),
    })
}

async fn heartbeat(
    context: &Context,
    workers: usize,
    throwaway_target: bool,
    membership_bin: Option<PathBuf>,
    pg_server: &str,
    cleanups: &mut Cleanups,
) -> anyhow::Result<Prepared> {
    anyhow::ensure!(workers > 0, "--workers must be at least 1");
    let target = match (&context.target, throwaway_target) {
        (Some(target), true) => target.clone(),
        (None, true) => anyhow::bail!("--throwaway-target needs --target"),
        (Some(_), false) => anyhow::bail!(
            "heartbeat registers simulated workers, which a membership would place real \
             shards on: it starts a membership of its own on a throwaway database. Pass \
             --throwaway-target as well only if the membership at --target is such a one"
        ),
        (None, false) => {
            let bin = membership_bin
                .or_else(throwaway::default_membership_bin)
                .context("cannot tell where freshet-membership is: pass --membership-bin")?;
            let membership = ThrowawayMembership::start(
                &bin,
                pg_server,
                &context.addresses.timer_addr,
                context.internal_token.as_deref(),
                &context.token,
            )
            .await?;
            let address = membership.address.clone();
            cleanups.push(move || membership.stop());
            address
        }
    };
    let clients = clients(context, &target)?;
    let ids: Vec<String> = (0..workers)
        .map(|i| format!("load-sim-{}-{i}", context.run_id))
        .collect();
    let registering = Instant::now();
    for chunk in ids.chunks(16) {
        let mut calls = tokio::task::JoinSet::new();
        for id in chunk {
            let mut client = clients[0].clone();
            let request = RegisterWorkerRequest {
                worker_id: id.clone(),
                availability_zone: "load-sim".into(),
                // Never dialled: nothing is placed on a simulated worker.
                address: "127.0.0.1:1".into(),
                disk_id: String::new(),
                disk_confirmed: false,
            };
            let timeout = context.timeout;
            calls.spawn(async move {
                client
                    .register_worker(grpc::request(request, timeout))
                    .await
            });
        }
        while let Some(joined) = calls.join_next().await {
            joined.context("register task")?.map_err(|status| {
                anyhow::anyhow!(
                    "RegisterWorker: {}: {}",
                    grpc::kind_of(&status),
                    status.message()
                )
            })?;
        }
    }
    let registered_in = registering.elapsed();
    let ids = Arc::new(ids);
    let timeout = context.timeout;
    let scenario = FnScenario(move |seq: u64| {
        let mut client = clients[seq as usize % clients.len()].clone();
        let worker_id = ids[seq as usize % ids.len()].clone();
        async move {
            let answer = client
                .heartbeat(grpc::request(HeartbeatRequest { worker_id }, timeout))
                .await
                .map_err(grpc::failure)?
                .into_inner();
            if !answer.known {
                return Err(Failure::new(
                    "unknown worker",
                    "membership does not know the simulated worker",
                ));
            }
            Ok(Done::items(1))
        }
    });
    let where_ = if throwaway_target {
        "the membership at --target (declared throwaway)".to_owned()
    } else {
        format!(
            "a throwaway membership on its own database (timer {})",
            context.addresses.timer_addr
        )
    };
    Ok(Prepared {
        scenario: Arc::new(scenario),
        heading: heading(
            "heartbeat",
            target,
            "heartbeats",
            vec![
                format!("{workers} simulated workers in zone load-sim, registered in {:.2} s, against {where_}", registered_in.as_secs_f64()),
            ],
        ),
        max_concurrency: None,
        keep_alive: None,
    })
}
