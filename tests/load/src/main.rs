//! `freshet-load`: drives one Freshet service through its own API and reports its latency distribution, throughput and errors.
//!
//! One subcommand per service (`timer`, `membership`, `cache`,
//! `control-plane`, `storage-worker`, `frontend`), each with the scenarios
//! that service offers. The pacing (closed or open loop), bounds, warm-up,
//! histograms and report are the same for all of them (`driver.rs`,
//! `report.rs`); `services/` holds only what each call is.
//! `docs/load-tests.md` says how to run it and what the numbers mean.

mod cpu;
mod driver;
mod grpc;
mod http;
mod progress;
mod report;
mod services;
mod setup;
mod sigv4;
mod throwaway;

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, Parser, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::driver::{Live, Mode, Plan};
use crate::report::Report;
use crate::setup::{Cleanups, Context};

#[derive(Debug, Parser)]
#[command(
    name = "freshet-load",
    about = "Load tests for one Freshet service at a time, through its own API",
    after_help = "Every option is accepted after the scenario too: \
                  `freshet-load cache hit --rate 2000 --duration 20s --json`."
)]
struct Cli {
    #[command(flatten)]
    run: RunArgs,
    #[command(flatten)]
    addresses: Addresses,
    #[command(subcommand)]
    service: Service,
}

/// Pacing, bounds and output, shared by every scenario.
#[derive(Debug, Args)]
struct RunArgs {
    /// Address of the service under load (host:port; the frontend's as
    /// http://host:port). Default: its `just dev` address. For
    /// storage-worker: drive only the shards this worker leads.
    #[arg(long, global = true, value_name = "ADDR")]
    target: Option<String>,
    /// The deployment's internal token (secure mode; see docs/security.md).
    #[arg(
        long,
        global = true,
        env = "FRESHET_INTERNAL_TOKEN",
        hide_env_values = true
    )]
    internal_token: Option<String>,
    /// Closed loop: this many callers. Open loop (with --rate): at most this
    /// many calls in flight [default: 8 closed, 256 open].
    #[arg(long, global = true, value_name = "N")]
    concurrency: Option<usize>,
    /// Open loop: calls due per second on a fixed schedule; latency counts
    /// from each call's due time (coordinated omission corrected).
    #[arg(long, global = true, value_name = "PER_SECOND")]
    rate: Option<f64>,
    /// Time before measuring starts (calls made, not counted): `2`, `500ms`.
    #[arg(long, global = true, default_value = "2", value_parser = parse_seconds)]
    warmup: Duration,
    /// How long to measure after the warm-up: `10`, `1m`.
    #[arg(long, global = true, default_value = "10", value_parser = parse_seconds)]
    duration: Duration,
    /// Stop after this many measured calls (or at --duration, whichever is
    /// first).
    #[arg(long, global = true, value_name = "N")]
    requests: Option<u64>,
    /// A call unanswered after this long counts as a `client timeout`.
    #[arg(long, global = true, default_value = "10", value_parser = parse_seconds)]
    timeout: Duration,
    /// gRPC connections to the service (calls are spread over them); for the
    /// frontend with --protocol h2c, its HTTP/2 connections.
    #[arg(long, global = true, default_value_t = 1, value_name = "N")]
    connections: usize,
    /// Print the report as JSON (one object) instead of a table.
    #[arg(long, global = true)]
    json: bool,
    /// Also report the cores used by processes whose name starts with this
    /// (`freshet-`, `postgres`, `redis-server`); repeatable.
    #[arg(long = "watch", global = true, value_name = "NAME_PREFIX")]
    watch: Vec<String>,
    /// Also report the cores used by this process and its descendants, by
    /// name (the pid of a `deploy/dev.sh`); repeatable.
    #[arg(long = "watch-tree", global = true, value_name = "PID")]
    watch_tree: Vec<u32>,
    /// The account streams are created in and calls are made for (12
    /// digits; with --accounts, the first of a range).
    #[arg(long, global = true, default_value = "999900000001")]
    account: String,
    /// The region streams live in.
    #[arg(long, global = true, default_value = "us-east-1")]
    region: String,
    /// Keep the streams made for the run (default: delete them after).
    #[arg(long, global = true)]
    keep: bool,
}

/// Where the other services are (set-up calls, route lookups). Defaults
/// are the `just dev` addresses; the environment variables are the ones
/// deploy/dev.sh exports.
#[derive(Debug, Clone, Args)]
pub struct Addresses {
    #[arg(
        long,
        global = true,
        env = "FRESHET_TIMER_ADDR",
        default_value = "127.0.0.1:7051"
    )]
    pub timer_addr: String,
    #[arg(
        long,
        global = true,
        env = "FRESHET_MEMBERSHIP_ADDR",
        default_value = "127.0.0.1:7052"
    )]
    pub membership_addr: String,
    #[arg(
        long,
        global = true,
        env = "FRESHET_CACHE_ADDR",
        default_value = "127.0.0.1:7053"
    )]
    pub cache_addr: String,
    #[arg(
        long,
        global = true,
        env = "FRESHET_CONTROL_PLANE_ADDR",
        default_value = "127.0.0.1:7054"
    )]
    pub control_plane_addr: String,
    #[arg(
        long,
        global = true,
        env = "FRESHET_FRONTEND_ENDPOINT",
        default_value = "http://127.0.0.1:4567"
    )]
    pub frontend_endpoint: String,
}

#[derive(Debug, Subcommand)]
enum Service {
    /// The timer: Now() reads.
    Timer,
    /// Membership: worker and shard-map reads, change-log fan-out,
    /// heartbeats of simulated workers.
    Membership {
        #[command(subcommand)]
        scenario: services::membership::Scenario,
    },
    /// The shard-map cache: GetStreamShards hits and misses.
    Cache {
        #[command(subcommand)]
        scenario: services::cache::Scenario,
    },
    /// The control plane: stream lifecycle calls at and past their rates.
    ControlPlane {
        #[command(subcommand)]
        scenario: services::control_plane::Scenario,
    },
    /// A storage worker: Append, Read and Replicate on a stream's shards.
    StorageWorker {
        #[command(subcommand)]
        scenario: services::storage::Scenario,
    },
    /// The frontend: PutRecord, PutRecords and GetRecords over signed HTTP.
    Frontend {
        #[command(subcommand)]
        scenario: services::frontend::Scenario,
    },
}

/// Seconds as a plain number (`2`, `0.5`) or a humantime duration (`500ms`).
fn parse_seconds(text: &str) -> Result<Duration, String> {
    if let Ok(seconds) = text.parse::<f64>() {
        return Duration::try_from_secs_f64(seconds).map_err(|e| e.to_string());
    }
    humantime::parse_duration(text).map_err(|e| e.to_string())
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("freshet-load: cannot start the runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("freshet-load: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let args = cli.run;
    if let Some(rate) = args.rate {
        anyhow::ensure!(
            rate.is_finite() && rate > 0.0,
            "--rate must be a positive number of calls per second"
        );
    }
    anyhow::ensure!(
        args.concurrency != Some(0),
        "--concurrency must be at least 1"
    );
    let account: u64 = args
        .account
        .parse()
        .ok()
        .filter(|_| args.account.len() == 12)
        .context("--account must be 12 digits")?;
    let context = Context {
        token: grpc::Token::new(args.internal_token.as_deref())?,
        internal_token: args.internal_token.clone(),
        addresses: cli.addresses,
        target: args.target.clone(),
        connections: args.connections.max(1),
        timeout: args.timeout,
        account,
        region: args.region.clone(),
        run_id: setup::run_id(),
        keep: args.keep,
    };
    let stop = CancellationToken::new();
    {
        let stop = stop.clone();
        tokio::spawn(async move {
            if tokio::signal::ctrl_c().await.is_ok() {
                eprintln!("freshet-load: interrupted; finishing the calls in flight");
                stop.cancel();
            }
        });
    }

    let mut cleanups = Cleanups::default();
    let prepared = tokio::select! {
        prepared = services::prepare(&context, cli.service, &mut cleanups) => prepared,
        _ = stop.cancelled() => Err(anyhow::anyhow!("interrupted during set-up")),
    };
    let prepared = match prepared {
        Ok(prepared) => prepared,
        Err(error) => {
            cleanups.run().await;
            return Err(error);
        }
    };

    let mut mode = match args.rate {
        Some(rate) => Mode::Open {
            rate,
            max_in_flight: args.concurrency.unwrap_or(256),
        },
        None => Mode::Closed {
            concurrency: args.concurrency.unwrap_or(8),
        },
    };
    if let Some(most) = prepared.max_concurrency {
        mode = match mode {
            Mode::Closed { concurrency } => Mode::Closed {
                concurrency: concurrency.min(most),
            },
            Mode::Open {
                rate,
                max_in_flight,
            } => Mode::Open {
                rate,
                max_in_flight: max_in_flight.min(most),
            },
        };
    }
    let plan = Plan {
        mode,
        warmup: args.warmup,
        duration: args.duration,
        requests: args.requests,
        timeout: args.timeout,
    };
    let live = Arc::new(Live::default());
    let label = format!("{} {}", prepared.heading.service, prepared.heading.scenario);
    let progress = progress::Progress::start(&label, &plan, live.clone());

    // CPU is read when the warm-up ends and when the run does.
    let watch = cpu::Watch {
        prefixes: args.watch.clone(),
        trees: args.watch_tree.clone(),
    };
    let cpu_start = {
        let watch = watch.clone();
        let warmup = plan.warmup;
        tokio::spawn(async move {
            tokio::time::sleep(warmup).await;
            (tokio::time::Instant::now(), cpu::cpu_seconds(&watch))
        })
    };
    let recorded = driver::run(plan, prepared.scenario, live, stop.clone()).await;
    let cpu_end = (tokio::time::Instant::now(), cpu::cpu_seconds(&watch));
    let cores = if cpu_start.is_finished() {
        match cpu_start.await {
            Ok((started, before)) if cpu_end.0 > started => {
                cpu::cores_between(&before, &cpu_end.1, cpu_end.0 - started)
            }
            _ => Default::default(),
        }
    } else {
        cpu_start.abort();
        Default::default()
    };
    progress.finish();
    drop(prepared.keep_alive);
    cleanups.run().await;

    let report = Report::new(prepared.heading, mode, args.warmup, &recorded, cores);
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).context("report as JSON")?
        );
    } else {
        print!("{}", report.render());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_are_seconds_or_humantime() {
        assert_eq!(parse_seconds("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_seconds("0.5"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_seconds("1m"), Ok(Duration::from_secs(60)));
        assert_eq!(parse_seconds("250ms"), Ok(Duration::from_millis(250)));
        assert!(parse_seconds("-1").is_err());
        assert!(parse_seconds("soon").is_err());
    }

    #[test]
    fn options_are_accepted_after_the_scenario() {
        let cli = Cli::try_parse_from([
            "freshet-load",
            "cache",
            "hit",
            "--rate",
            "100",
            "--target",
            "127.0.0.2:7053",
            "--json",
        ])
        .expect("parses");
        assert_eq!(cli.run.rate, Some(100.0));
        assert_eq!(cli.run.target.as_deref(), Some("127.0.0.2:7053"));
        assert!(cli.run.json);
        Cli::command_for_tests().debug_assert();
    }

    impl Cli {
        fn command_for_tests() -> clap::Command {
            <Cli as clap::CommandFactory>::command()
        }
    }
}
