//! The control plane: stream lifecycle calls, at and past the call rates
//! Kinesis documents and the control plane enforces per account
//! (`services/control-plane/src/rate_limits.rs`: CreateStream and
//! ListStreams 5/s, DescribeStream and UpdateShardCount 10/s,
//! DescribeStreamSummary 20/s, ListShards 1000/s per stream). Past them the
//! expected answer is LimitExceeded, counted as the error kind
//! `ResourceExhausted/LimitExceeded (rate)`. `--accounts` spreads calls over
//! accounts to find what the service itself can do.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use freshet_proto::v1::control_plane_client::ControlPlaneClient;
use freshet_proto::v1::{
    CreateStreamRequest, DescribeStreamRequest, ListStreamsRequest, UpdateShardCountRequest,
};

use crate::driver::{Done, FnScenario};
use crate::grpc::{self, AuthChannel};
use crate::report::Heading;
use crate::setup::{self, Cleanups, Context, Prepared};

#[derive(Debug, clap::Args)]
pub struct Spread {
    /// Spread calls over this many accounts (--account, --account + 1, …):
    /// the rates are per account.
    #[arg(long, default_value_t = 1)]
    accounts: u64,
    /// Streams made per account for the run [default: 16 for
    /// update-shard-count, else 1]; calls go round them.
    #[arg(long)]
    streams: Option<usize>,
    /// Shards of each stream made (update-shard-count doubles and halves
    /// it).
    #[arg(long, default_value_t = 1)]
    shards: u32,
}

#[derive(Debug, clap::Subcommand)]
pub enum Scenario {
    /// DescribeStream (10/s per account).
    Describe(Spread),
    /// DescribeStreamSummary (20/s per account).
    DescribeSummary(Spread),
    /// ListShards (1000/s per stream), answered from DescribeStream.
    ListShards(Spread),
    /// ListStreams (5/s per account).
    List(Spread),
    /// CreateStream of a new stream per call (5/s per account); every
    /// stream made is deleted afterwards.
    Create(Spread),
    /// UpdateShardCount, doubling or halving streams in turn (10/s per
    /// account; a stream at most 10 times in 24 h, and not while UPDATING).
    UpdateShardCount(Spread),
}

/// Streams made for a run, by account, and deleted after it.
struct Streams {
    accounts: Vec<String>,
    names: Vec<String>,
}

async fn make_streams(
    context: &Context,
    cleanups: &mut Cleanups,
    spread: &Spread,
    count: usize,
    what: &str,
) -> anyhow::Result<Streams> {
    let accounts: Vec<String> = (0..spread.accounts.max(1))
        .map(|i| context.account(i))
        .collect();
    let names: Vec<String> = (0..count.max(1))
        .map(|i| format!("{}-{i}", context.stream_name(what)))
        .collect();
    let client = context.control_plane()?;
    if !context.keep {
        let (client, accounts, names, region) = (
            client.clone(),
            accounts.clone(),
            names.clone(),
            context.region.clone(),
        );
        cleanups.push(move || delete_all(client, region, accounts, names));
    }
    let mut creating = tokio::task::JoinSet::new();
    for account in &accounts {
        let (client, account, names, region, shards) = (
            client.clone(),
            account.clone(),
            names.clone(),
            context.region.clone(),
            spread.shards,
        );
        creating.spawn(async move {
            for name in &names {
                setup::create_stream(&client, &account, &region, name, shards).await?;
            }
            anyhow::Ok(())
        });
    }
    while let Some(created) = creating.join_next().await {
        created??;
    }
    Ok(Streams { accounts, names })
}

/// Deletes `names` in every one of `accounts`, accounts in parallel.
async fn delete_all(
    client: ControlPlaneClient<AuthChannel>,
    region: String,
    accounts: Vec<String>,
    names: Vec<String>,
) {
    let mut deleting = tokio::task::JoinSet::new();
    for account in accounts {
        let (client, region, names) = (client.clone(), region.clone(), names.clone());
        deleting.spawn(async move {
            for name in &names {
                setup::delete_stream(&client, &account, &region, name).await;
            }
        });
    }
    while deleting.join_next().await.is_some() {}
}

pub async fn prepare(
    context: &Context,
    scenario: Scenario,
    cleanups: &mut Cleanups,
) -> anyhow::Result<Prepared> {
    let target = context
        .target_or(&context.addresses.control_plane_addr)
        .to_owned();
    let clients: Vec<_> = grpc::channels(&target, &context.token, context.connections)?
        .into_iter()
        .map(grpc::control_plane)
        .collect();
    let clients = Arc::new(clients);
    let timeout = context.timeout;
    let region = context.region.clone();
    let (name, spread) = match &scenario {
        Scenario::Describe(s) => ("describe", s),
        Scenario::DescribeSummary(s) => ("describe-summary", s),
        Scenario::ListShards(s) => ("list-shards", s),
        Scenario::List(s) => ("list", s),
        Scenario::Create(s) => ("create", s),
        Scenario::UpdateShardCount(s) => ("update-shard-count", s),
    };
    let accounts = spread.accounts.max(1);
    let shards = spread.shards.max(1);
    let mut setup_lines = vec![format!(
        "{accounts} account(s) from {}, region {region}",
        context.account(0)
    )];
    let client_for = {
        let clients = clients.clone();
        move |seq: u64| clients[seq as usize % clients.len()].clone()
    };

    let scenario: Arc<dyn crate::driver::Scenario> = match scenario {
        Scenario::Describe(_) | Scenario::DescribeSummary(_) | Scenario::ListShards(_) => {
            let count = spread.streams.unwrap_or(1);
            let streams = make_streams(context, cleanups, spread, count, "cp").await?;
            setup_lines.push(format!(
                "{count} stream(s) of {shards} shard(s) per account"
            ));
            let operation = match name {
                "describe" => "DescribeStream",
                "describe-summary" => "DescribeStreamSummary",
                _ => "ListShards",
            };
            let streams = Arc::new(streams);
            Arc::new(FnScenario(move |seq: u64| {
                let mut client = client_for(seq);
                let (account, stream) = pick(&streams, seq);
                let request = DescribeStreamRequest {
                    account_id: account,
                    stream_name: stream,
                    region: region.clone(),
                    api_operation: operation.into(),
                };
                async move {
                    let answer = client
                        .describe_stream(grpc::request(request, timeout))
                        .await
                        .map_err(grpc::failure)?
                        .into_inner();
                    let shards = answer.stream.map_or(0, |s| s.shards.len() as u64);
                    Ok(Done::items(shards))
                }
            }))
        }
        Scenario::List(_) => {
            let count = spread.streams.unwrap_or(1);
            make_streams(context, cleanups, spread, count, "cp").await?;
            setup_lines.push(format!("{count} stream(s) per account"));
            let accounts_list: Vec<String> = (0..accounts).map(|i| context.account(i)).collect();
            Arc::new(FnScenario(move |seq: u64| {
                let mut client = client_for(seq);
                let request = ListStreamsRequest {
                    account_id: accounts_list[seq as usize % accounts_list.len()].clone(),
                    region: region.clone(),
                };
                async move {
                    let answer = client
                        .list_streams(grpc::request(request, timeout))
                        .await
                        .map_err(grpc::failure)?
                        .into_inner();
                    Ok(Done::items(answer.streams.len() as u64))
                }
            }))
        }
        Scenario::Create(_) => {
            let made: Arc<Mutex<Vec<(String, String)>>> = Arc::default();
            if !context.keep {
                let (made, client, region) = (
                    made.clone(),
                    context.control_plane()?,
                    context.region.clone(),
                );
                cleanups.push(move || async move {
                    let made = std::mem::take(&mut *made.lock().unwrap_or_else(|p| p.into_inner()));
                    if !made.is_empty() {
                        eprintln!(
                            "freshet-load: deleting {} streams made by the run",
                            made.len()
                        );
                    }
                    let mut by_account: std::collections::BTreeMap<String, Vec<String>> =
                        Default::default();
                    for (account, name) in made {
                        by_account.entry(account).or_default().push(name);
                    }
                    let mut deleting = tokio::task::JoinSet::new();
                    for (account, names) in by_account {
                        let (client, region) = (client.clone(), region.clone());
                        deleting.spawn(async move {
                            for name in &names {
                                setup::delete_stream(&client, &account, &region, name).await;
                            }
                        });
                    }
                    while deleting.join_next().await.is_some() {}
                });
            }
            setup_lines.push(format!(
                "a new stream of {shards} shard(s) per call, deleted after the run"
            ));
            let prefix = context.stream_name("cp-new");
            let first_account = context.account;
            Arc::new(FnScenario(move |seq: u64| {
                let mut client = client_for(seq);
                let account = format!("{:012}", first_account + seq % accounts);
                let stream = format!("{prefix}-{seq}");
                let request = CreateStreamRequest {
                    account_id: account.clone(),
                    region: region.clone(),
                    stream_name: stream.clone(),
                    shard_count: shards,
                    ..CreateStreamRequest::default()
                };
                // Listed for deletion before it is asked for: a call cut off
                // by the driver's timeout may still make the stream, and
                // deleting one that was never made is only NotFound.
                made.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push((account, stream));
                async move {
                    let answer = client.create_stream(grpc::request(request, timeout)).await;
                    answer.map_err(grpc::failure)?;
                    Ok(Done::items(u64::from(shards)))
                }
            }))
        }
        Scenario::UpdateShardCount(_) => {
            let count = spread.streams.unwrap_or(16);
            let streams = make_streams(context, cleanups, spread, count, "cp-scale").await?;
            setup_lines.push(format!(
                "{count} stream(s) of {shards} shard(s) per account, each scaled to {} and back in turn",
                shards * 2
            ));
            let believed: Arc<Vec<AtomicU32>> = Arc::new(
                (0..streams.accounts.len() * streams.names.len())
                    .map(|_| AtomicU32::new(shards))
                    .collect(),
            );
            let streams = Arc::new(streams);
            let turns = Arc::new(Turns::default());
            Arc::new(FnScenario(move |seq: u64| {
                let mut client = client_for(seq);
                // Streams in turn, but a call refused for the rate hands
                // its stream to the next one: plain round robin would give
                // the admitted calls to every other stream only (at twice
                // the rate every second call is refused) and spend their
                // ten scalings a day twice as fast.
                let turn = turns.next();
                let (account_index, name_index) = pick_index(&streams, turn);
                let slot = account_index * streams.names.len() + name_index;
                let (account, stream) = pick(&streams, turn);
                let current = believed[slot].load(Ordering::Relaxed);
                let target = if current == shards {
                    shards * 2
                } else {
                    shards
                };
                let request = UpdateShardCountRequest {
                    account_id: account,
                    stream_name: stream,
                    region: region.clone(),
                    target_shard_count: target,
                };
                let believed = believed.clone();
                let turns = turns.clone();
                async move {
                    let answer = client
                        .update_shard_count(grpc::request(request, timeout))
                        .await;
                    if let Err(status) = &answer {
                        if grpc::kind_of(status).ends_with("(rate)") {
                            turns.give_back(turn);
                        }
                    }
                    answer.map_err(grpc::failure)?;
                    believed[slot].store(target, Ordering::Relaxed);
                    Ok(Done::items(1))
                }
            }))
        }
    };
    Ok(Prepared {
        scenario,
        heading: Heading {
            service: "control-plane".into(),
            scenario: name.into(),
            target,
            items_are: match name {
                "describe" | "describe-summary" | "list-shards" => "shards described",
                "list" => "streams listed",
                "create" => "shards created",
                _ => "updates",
            }
            .into(),
            setup: setup_lines,
        },
        max_concurrency: None,
        keep_alive: None,
    })
}

/// Turns round the streams, with turns given back by refused calls taken
/// first.
#[derive(Default)]
struct Turns {
    next: std::sync::atomic::AtomicU64,
    given_back: Mutex<std::collections::VecDeque<u64>>,
}

impl Turns {
    fn next(&self) -> u64 {
        let given_back = self
            .given_back
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        given_back.unwrap_or_else(|| self.next.fetch_add(1, Ordering::Relaxed))
    }

    fn give_back(&self, turn: u64) {
        self.given_back
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(turn);
    }
}

/// The (account, stream) call `seq` goes to: accounts in turn, then
/// streams.
fn pick(streams: &Streams, seq: u64) -> (String, String) {
    let (account, name) = pick_index(streams, seq);
    (
        streams.accounts[account].clone(),
        streams.names[name].clone(),
    )
}

/// The indices of the account and the stream call `seq` goes to.
fn pick_index(streams: &Streams, seq: u64) -> (usize, usize) {
    let accounts = streams.accounts.len().max(1) as u64;
    let names = streams.names.len().max(1) as u64;
    (
        (seq % accounts) as usize,
        ((seq / accounts) % names) as usize,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_refused_turn_goes_to_the_next_call() {
        let turns = Turns::default();
        assert_eq!(turns.next(), 0);
        assert_eq!(turns.next(), 1);
        turns.give_back(1);
        assert_eq!(turns.next(), 1);
        assert_eq!(turns.next(), 2);
    }

    #[test]
    fn calls_go_round_accounts_then_streams() {
        let streams = Streams {
            accounts: vec!["a".into(), "b".into()],
            names: vec!["x".into(), "y".into(), "z".into()],
        };
        let picked: Vec<(String, String)> = (0..6).map(|seq| pick(&streams, seq)).collect();
        let expected = [
            ("a", "x"),
            ("b", "x"),
            ("a", "y"),
            ("b", "y"),
            ("a", "z"),
            ("b", "z"),
        ];
        for (got, want) in picked.iter().zip(expected) {
            assert_eq!((got.0.as_str(), got.1.as_str()), want);
        }
    }
}
