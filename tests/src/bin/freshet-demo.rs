//! `freshet-demo` (run by `just demo`): the talk's viral launch, scaled to
//! one machine, on the `just dev` topology of release binaries with
//! Kinesis's per-shard limits (1 MiB/s and 1,000 records/s of writes).
//!
//! Twice: an ON_DEMAND stream starting at 4 shards (4,000 records/s) meets
//! a surge three times that; then the same surge with warm throughput set
//! for the peak. Prints a table per run and writes `docs/demo.md` and the
//! chart `docs/demo.svg` (ingest, throttles and shard count over time).
//! Bounded: the profile lasts a minute per run.

use anyhow::Context as _;
use freshet_e2e::demo::{self, Phase, Profile};
use freshet_e2e::topology::DevTopology;
use freshet_e2e::{create_on_demand_stream, kinesis_client, set_billing_commitment};

/// 1 KiB records, so the peak is both 12,000 records/s and 12 MiB/s.
fn profile() -> Profile {
    Profile {
        phases: vec![
            Phase {
                name: "baseline",
                seconds: 10,
                records_per_second: 100,
            },
            Phase {
                name: "celebrity repost",
                seconds: 10,
                records_per_second: 2_000,
            },
            Phase {
                name: "viral peak",
                seconds: 25,
                records_per_second: 12_000,
            },
            Phase {
                name: "decline",
                seconds: 15,
                records_per_second: 1_500,
            },
        ],
        record_bytes: 1024,
        producers: 8,
        keys: 5_000,
        max_retries: 2,
    }
}

/// Warm throughput for the peak: 12 MiB/s, rounded up to a power of two
/// of shards so they split evenly.
const WARM_MIBPS: i32 = 16;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let workspace = std::path::PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .context("workspace root")?
        .to_owned();
    let bin_dir = std::env::var("FRESHET_BIN_DIR")
        .unwrap_or_else(|_| workspace.join("target/release").display().to_string());
    let data_dir = tempfile::tempdir_in(&workspace).context("temp dir on the workspace's disk")?;
    let topology = DevTopology::start(
        &workspace,
        &bin_dir,
        data_dir.path(),
        "demo",
        &[
            ("FRESHET_SCALER_INTERVAL", "1s"),
            ("FRESHET_SCALE_DOWN_COOLDOWN", "30s"),
        ],
    )
    .await?;
    let client = kinesis_client(&topology.endpoint);
    let profile = profile();

    println!("run 1: ON_DEMAND from 4 shards, no warm throughput");
    create_on_demand_stream(&client, "launch", None).await?;
    let cold = demo::run(&client, "launch", "on-demand from 4 shards", &profile).await?;
    println!("{}", demo::table(std::slice::from_ref(&cold)));

    println!("run 2: warm throughput {WARM_MIBPS} MiB/s set before the launch");
    set_billing_commitment(&client, true).await?;
    create_on_demand_stream(&client, "launch-warm", Some(WARM_MIBPS)).await?;
    let warm = demo::run(
        &client,
        "launch-warm",
        &format!("warm throughput {WARM_MIBPS} MiB/s"),
        &profile,
    )
    .await?;
    println!("{}", demo::table(std::slice::from_ref(&warm)));
    topology.stop().await;

    let reports = [cold, warm];
    let phases: Vec<String> = profile
        .phases
        .iter()
        .map(|p| {
            format!(
                "{} {} s at {} records/s",
                p.name, p.seconds, p.records_per_second
            )
        })
        .collect();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let markdown = format!(
        "# The viral-launch demo\n\n\
         Written by `just demo` ({date}). The `just dev` topology (release build) on one \
         machine with {cores} cores — producer, consumer, six services, three storage workers, \
         Postgres and Redis together — with Kinesis's per-shard limits (1 MiB/s and 1,000 \
         records/s of writes). Records of {bytes} B over {keys} partition keys from \
         {producers} producers; a refused record is retried with backoff at most {retries} \
         times, then dropped. Profile: {phases}. The scaler reads loads every second.\n\n\
         {table}\n\
         *sent*: records the producer tried to write; *read back*: distinct records the consumer \
         found reading every shard from TRIM_HORIZON, parents before children; *missing*: \
         acknowledged but not found; *keys out of order*: keys whose records were read in a \
         different order than acknowledged; *time to scale*: from the end of the baseline to the \
         largest shard count.\n\n![ingest, throttles and shards over time](demo.svg)\n",
        date = chrono_free_date(),
        bytes = profile.record_bytes,
        keys = profile.keys,
        producers = profile.producers,
        retries = profile.max_retries,
        phases = phases.join(", then "),
        table = demo::table(&reports),
    );
    std::fs::write(workspace.join("docs/demo.md"), markdown).context("write docs/demo.md")?;
    std::fs::write(workspace.join("docs/demo.svg"), demo::chart(&reports))
        .context("write docs/demo.svg")?;
    println!("{}", demo::table(&reports));
    println!("wrote docs/demo.md and docs/demo.svg");
    for report in &reports {
        anyhow::ensure!(
            report.missing == 0 && report.duplicates == 0 && report.keys_out_of_order == 0,
            "{}: the consumer's check failed",
            report.label
        );
    }
    Ok(())
}

/// Today's date from `date`, without a date crate.
fn chrono_free_date() -> String {
    std::process::Command::new("date")
        .arg("+%Y-%m-%d")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_default()
}
