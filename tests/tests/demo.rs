//! The viral-launch scenario, shortened and scaled down (shards of 100
//! records/s and 100 KiB/s), on an in-process cluster: an on-demand stream
//! grows under a surge three times its starting capacity, and with warm
//! throughput set for the peak nothing is dropped. In both runs every
//! acknowledged record is read back once, in per-key acknowledgement order.
//! `just demo` runs the full-size version on the `just dev` topology.

use std::time::Duration;

use freshet_control_plane::ScalerConfig;
use freshet_e2e::demo::{self, Phase, Profile};
use freshet_e2e::{create_on_demand_stream, set_billing_commitment, Cluster, ClusterOptions};
use freshet_storage_worker::ShardLimits;

const RECORDS_PER_SHARD: u64 = 100;
const BYTES_PER_SHARD: u64 = 100 * 1024;

fn profile() -> Profile {
    Profile {
        phases: vec![
            Phase {
                name: "baseline",
                seconds: 2,
                records_per_second: 20,
            },
            Phase {
                name: "celebrity repost",
                seconds: 2,
                records_per_second: 200,
            },
            Phase {
                name: "viral peak",
                seconds: 6,
                records_per_second: 1_200,
            },
            Phase {
                name: "decline",
                seconds: 3,
                records_per_second: 150,
            },
        ],
        record_bytes: 100,
        producers: 4,
        keys: 200,
        max_retries: 4,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_viral_launch_scales_out_and_warm_throughput_drops_nothing() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(ClusterOptions {
        shard_limits: ShardLimits {
            write_bytes: BYTES_PER_SHARD,
            write_records: RECORDS_PER_SHARD,
            ..ShardLimits::UNLIMITED
        },
        scaler: ScalerConfig {
            scaler_interval: Duration::from_millis(500),
            scale_down_cooldown: Duration::from_secs(30),
            shard_write_bytes_per_sec: BYTES_PER_SHARD,
            shard_write_records_per_sec: RECORDS_PER_SHARD,
            // Shards stay with their workers (balancing.rs tests moves).
            balance_at: f64::INFINITY,
            ..ScalerConfig::default()
        },
        ..ClusterOptions::default()
    })
    .await?;
    let client = cluster.kinesis();

    create_on_demand_stream(&client, "launch", None).await?;
    let cold = demo::run(&client, "launch", "on-demand from 4 shards", &profile()).await?;

    set_billing_commitment(&client, true).await?;
    // 2 MiB/s of 100 KiB/s shards: 21 shards, ample for the 1,200/s peak.
    create_on_demand_stream(&client, "launch-warm", Some(2)).await?;
    let warm = demo::run(&client, "launch-warm", "with warm throughput", &profile()).await?;
    println!("{}", demo::table(&[cold.clone(), warm.clone()]));

    for report in [&cold, &warm] {
        assert_eq!(report.missing, 0, "{report:?}");
        assert_eq!(report.duplicates, 0, "{report:?}");
        assert_eq!(report.keys_out_of_order, 0, "{report:?}");
        assert!(report.acknowledged > 0);
    }
    assert_eq!(cold.shards_at_start, 4);
    assert!(
        cold.shards_at_peak > 4,
        "the surge did not scale the stream out"
    );
    assert!(warm.shards_at_start >= 16);
    assert_eq!(warm.dropped, 0, "warm throughput dropped records: {warm:?}");
    cluster.shutdown().await;
    Ok(())
}
