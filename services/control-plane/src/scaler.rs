//! The scaler: keeps every ON_DEMAND stream's shards matched to its load.
//!
//! Each tick it asks every live storage worker what the shards it leads
//! were offered (`Storage/ShardLoads`: bytes and records, written or
//! refused, and the median of recent hash keys), turns two readings into
//! rates, and for each ACTIVE on-demand stream decides one of:
//!
//! - **grow** — below its floor (4 shards, or its warm throughput): split
//!   the widest shards; or some shard is *hot* (its offered load is at least
//!   `scale_up_at` of one shard's capacity): split each hot shard where its
//!   recent hash keys divide in half — not blindly at the middle of its
//!   range, so a skewed key space still ends with evenly loaded children;
//! - **shrink** — no hot shard, nothing changed for `scale_down_cooldown`,
//!   and two adjacent shards together carry less than `scale_down_at` of
//!   one shard: merge them (one pair per tick). The gap between the two
//!   thresholds keeps a merged shard from being split straight back;
//! - **hold**.
//!
//! Changes run through the same steps as SplitShard and MergeShards
//! (`reshard.rs`), so every key stays in order across them.

use freshet_types::StreamStatus;
use std::collections::HashMap;
use std::time::Duration;

use freshet_metastore::StreamRow;
use freshet_proto::v1::ShardLoadsRequest;
use freshet_types::{HashKey, HashKeyRange};
use tokio::time::Instant;

use crate::balancer::{self, BalancerState, ShardRate};
use crate::reshard::{range_of, Step};
use crate::{ControlPlaneService, ON_DEMAND_INITIAL_SHARDS};

/// How the scaler behaves; the defaults suit one machine running the demo.
#[derive(Debug, Clone, clap::Args)]
pub struct ScalerConfig {
    /// How often loads are read and decisions made.
    #[arg(long, env = "FRESHET_SCALER_INTERVAL", default_value = "1s", value_parser = humantime::parse_duration)]
    pub scaler_interval: Duration,
    /// A shard offered at least this fraction of its capacity is split.
    #[arg(long, env = "FRESHET_SCALE_UP_AT", default_value_t = 0.8)]
    pub scale_up_at: f64,
    /// Two neighbours offered together less than this fraction of one
    /// shard's capacity are merged.
    #[arg(long, env = "FRESHET_SCALE_DOWN_AT", default_value_t = 0.25)]
    pub scale_down_at: f64,
    /// Quiet time after any change before shards are merged.
    #[arg(long, env = "FRESHET_SCALE_DOWN_COOLDOWN", default_value = "60s", value_parser = humantime::parse_duration)]
    pub scale_down_cooldown: Duration,
    /// Most open shards the scaler gives one on-demand stream.
    #[arg(long, env = "FRESHET_ON_DEMAND_MAX_SHARDS", default_value_t = 256)]
    pub on_demand_max_shards: u32,
    /// One shard's write capacity in bytes/s (the workers' limit).
    #[arg(long, env = "FRESHET_SHARD_WRITE_BYTES_PER_SEC", default_value_t = 1024 * 1024)]
    pub shard_write_bytes_per_sec: u64,
    /// One shard's write capacity in records/s (the workers' limit).
    #[arg(
        long,
        env = "FRESHET_SHARD_WRITE_RECORDS_PER_SEC",
        default_value_t = 1000
    )]
    pub shard_write_records_per_sec: u64,
    /// How often worker balancing considers a move (`balancer.rs`).
    #[arg(long, env = "FRESHET_BALANCE_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub balance_interval: Duration,
    /// A worker offered at least this fraction of its write capacity (by
    /// the shards it leads) has a shard moved to the least busy worker.
    #[arg(long, env = "FRESHET_BALANCE_AT", default_value_t = 0.8)]
    pub balance_at: f64,
    /// A shard that moved stays put this long.
    #[arg(long, env = "FRESHET_BALANCE_COOLDOWN", default_value = "60s", value_parser = humantime::parse_duration)]
    pub balance_cooldown: Duration,
    /// What one storage worker should lead, in bytes/s of writes.
    #[arg(long, env = "FRESHET_WORKER_WRITE_BYTES_PER_SEC", default_value_t = 16 * 1024 * 1024)]
    pub worker_write_bytes_per_sec: u64,
    /// What one storage worker should lead, in records/s of writes.
    #[arg(
        long,
        env = "FRESHET_WORKER_WRITE_RECORDS_PER_SEC",
        default_value_t = 16_000
    )]
    pub worker_write_records_per_sec: u64,
}

impl Default for ScalerConfig {
    fn default() -> Self {
        ScalerConfig {
            scaler_interval: Duration::from_secs(1),
            scale_up_at: 0.8,
            scale_down_at: 0.25,
            scale_down_cooldown: Duration::from_secs(60),
            on_demand_max_shards: 256,
            shard_write_bytes_per_sec: 1024 * 1024,
            shard_write_records_per_sec: 1000,
            balance_interval: Duration::from_secs(5),
            balance_at: 0.8,
            balance_cooldown: Duration::from_secs(60),
            worker_write_bytes_per_sec: 16 * 1024 * 1024,
            worker_write_records_per_sec: 16_000,
        }
    }
}

impl ScalerConfig {
    /// One shard's write capacity in bytes/s (a 0 "unlimited" counts as
    /// Kinesis's 1 MiB/s for sizing).
    pub fn shard_bytes(&self) -> u64 {
        if self.shard_write_bytes_per_sec == 0 {
            1024 * 1024
        } else {
            self.shard_write_bytes_per_sec
        }
    }

    fn shard_records(&self) -> u64 {
        if self.shard_write_records_per_sec == 0 {
            1000
        } else {
            self.shard_write_records_per_sec
        }
    }

    /// Shards needed for `mibps` MiB/s of writes.
    pub fn shards_for_mibps(&self, mibps: u32) -> u32 {
        let bytes = u64::from(mibps) * 1024 * 1024;
        u32::try_from(bytes.div_ceil(self.shard_bytes())).unwrap_or(u32::MAX)
    }

    /// MiB/s of writes `shards` shards can take.
    pub fn mibps_of(&self, shards: u32) -> u32 {
        u32::try_from(u64::from(shards) * self.shard_bytes() / (1024 * 1024)).unwrap_or(u32::MAX)
    }
}

/// One open shard as the scaler sees it.
#[derive(Debug, Clone)]
pub(crate) struct ShardView {
    pub shard_id: String,
    pub range: HashKeyRange,
    /// Offered load as a fraction of one shard's capacity; `None` when
    /// there are not yet two readings of its current leader's meter (a
    /// shard whose load is unknown is never merged).
    pub utilization: Option<f64>,
    pub median: Option<HashKey>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Decision {
    Grow(Vec<Step>),
    Shrink(Step),
    Hold,
}

/// Where to split a shard: at `preferred` if it lies strictly inside
/// (both halves non-empty), else in the middle of its range.
fn split_point(range: HashKeyRange, preferred: Option<HashKey>) -> Option<HashKey> {
    let inside = |k: HashKey| k.0 > range.start.0 && k.0 <= range.end.0;
    preferred.filter(|k| inside(*k)).or_else(|| {
        let middle = HashKey(range.start.0 + (range.end.0 - range.start.0) / 2 + 1);
        inside(middle).then_some(middle)
    })
}

/// The scaler's choice for one stream (see the module docs).
pub(crate) fn decide(
    open: &[ShardView],
    floor: u32,
    config: &ScalerConfig,
    may_shrink: bool,
) -> Decision {
    let count = open.len() as u32;
    let room = config.on_demand_max_shards.saturating_sub(count) as usize;
    if count < floor {
        let mut widest: Vec<&ShardView> = open.iter().collect();
        widest.sort_by_key(|s| std::cmp::Reverse(s.range.end.0 - s.range.start.0));
        let steps: Vec<Step> = widest
            .into_iter()
            .take(((floor - count) as usize).min(room))
            .filter_map(|s| {
                split_point(s.range, None).map(|at| Step::Split {
                    shard_id: s.shard_id.clone(),
                    at,
                })
            })
            .collect();
        if !steps.is_empty() {
            return Decision::Grow(steps);
        }
    }
    let mut hot: Vec<&ShardView> = open
        .iter()
        .filter(|s| s.utilization.is_some_and(|u| u >= config.scale_up_at))
        .collect();
    hot.sort_by(|a, b| {
        let load = |s: &ShardView| s.utilization.unwrap_or(0.0);
        load(b).total_cmp(&load(a))
    });
    let steps: Vec<Step> = hot
        .iter()
        .take(room)
        .filter_map(|s| {
            split_point(s.range, s.median).map(|at| Step::Split {
                shard_id: s.shard_id.clone(),
                at,
            })
        })
        .collect();
    if !steps.is_empty() {
        return Decision::Grow(steps);
    }
    if !hot.is_empty() || !may_shrink || count <= floor {
        return Decision::Hold;
    }
    let mut by_start: Vec<&ShardView> = open.iter().collect();
    by_start.sort_by_key(|s| s.range.start);
    by_start
        .windows(2)
        .filter(|pair| pair[0].range.end.0.checked_add(1) == Some(pair[1].range.start.0))
        .filter_map(|pair| Some((pair[0].utilization? + pair[1].utilization?, pair)))
        .filter(|(load, _)| *load < config.scale_down_at)
        .min_by(|a, b| a.0.total_cmp(&b.0))
        .map_or(Decision::Hold, |(_, pair)| {
            Decision::Shrink(Step::Merge {
                lower: pair[0].shard_id.clone(),
                upper: pair[1].shard_id.clone(),
            })
        })
}

/// A worker's reading of one shard.
#[derive(Debug, Clone, Copy)]
struct Reading {
    meter_id: u64,
    bytes: u64,
    records: u64,
    at: Instant,
}

/// How long a worker may take to report its shards' loads.
const LOADS_DEADLINE: Duration = Duration::from_secs(1);

/// What the scaler remembers between ticks.
#[derive(Default)]
struct ScalerState {
    readings: HashMap<(i64, String), Reading>,
    /// When each stream last changed shape (or was first seen).
    last_change: HashMap<i64, Instant>,
    balancer: BalancerState,
}

/// Runs forever: one tick per `scaler_interval`.
pub(crate) async fn run_scaler(service: ControlPlaneService) {
    let mut state = ScalerState::default();
    loop {
        tokio::time::sleep(service.scaler.scaler_interval).await;
        if let Err(error) = tick(&service, &mut state).await {
            tracing::warn!("scaler tick failed to {error:#}");
        }
    }
}

/// Reads every live worker's shard loads and turns them into rates (a
/// shard needs two readings of one meter before it has one).
async fn read_rates(
    storage: &freshet_server::StorageClients,
    state: &mut ScalerState,
    workers: &[freshet_metastore::WorkerRow],
) -> Vec<(ShardRate, Option<HashKey>)> {
    let mut rates = Vec::new();
    for worker in workers {
        // One connection per worker address, kept across ticks.
        let Ok(mut client) = storage.get(&worker.address) else {
            continue;
        };
        let request = freshet_server::request_with_deadline(ShardLoadsRequest {}, LOADS_DEADLINE);
        let Ok(answer) = client.shard_loads(request).await else {
            continue;
        };
        let now = Instant::now();
        for load in answer.into_inner().loads {
            let Some(shard) = load.shard else { continue };
            let key = (shard.stream_uid, shard.shard_id);
            let reading = Reading {
                meter_id: load.meter_id,
                bytes: load.offered_bytes,
                records: load.offered_records,
                at: now,
            };
            let previous = state.readings.insert(key.clone(), reading);
            let Some(previous) = previous.filter(|p| p.meter_id == reading.meter_id) else {
                continue;
            };
            let seconds = now.saturating_duration_since(previous.at).as_secs_f64();
            if seconds <= 0.0 {
                continue;
            }
            let rate = ShardRate {
                stream_uid: key.0,
                shard_id: key.1,
                worker_id: worker.worker_id.clone(),
                bytes_per_sec: reading.bytes.saturating_sub(previous.bytes) as f64 / seconds,
                records_per_sec: reading.records.saturating_sub(previous.records) as f64 / seconds,
            };
            let median = HashKey::parse_decimal(&load.median_hash_key).ok();
            rates.push((rate, median));
        }
    }
    rates
}

async fn tick(service: &ControlPlaneService, state: &mut ScalerState) -> anyhow::Result<()> {
    let config = &service.scaler;
    let streams = service.store.on_demand_streams().await?;
    let balancing =
        config.balance_at.is_finite() && state.balancer.round_due(config.balance_interval);
    if streams.is_empty() && !balancing {
        return Ok(());
    }
    let workers = service.store.list_workers().await?;
    let rates = read_rates(&service.storage, state, &workers).await;
    // (stream_uid, shard_id) → (utilization, median hash key)
    let loads: HashMap<(i64, String), (f64, Option<HashKey>)> = rates
        .iter()
        .map(|(rate, median)| {
            let utilization = (rate.bytes_per_sec / config.shard_bytes() as f64)
                .max(rate.records_per_sec / config.shard_records() as f64);
            (
                (rate.stream_uid, rate.shard_id.clone()),
                (utilization, *median),
            )
        })
        .collect();
    scale(service, state, streams, &loads).await?;
    if balancing {
        let rates: Vec<ShardRate> = rates.into_iter().map(|(rate, _)| rate).collect();
        balancer::balance(service, &mut state.balancer, &workers, &rates).await?;
    }
    Ok(())
}

/// The on-demand half of a tick: one decision per stream.
async fn scale(
    service: &ControlPlaneService,
    state: &mut ScalerState,
    streams: Vec<StreamRow>,
    loads: &HashMap<(i64, String), (f64, Option<HashKey>)>,
) -> anyhow::Result<()> {
    let config = &service.scaler;
    for stream in streams {
        let since = *state
            .last_change
            .entry(stream.stream_uid)
            .or_insert_with(Instant::now);
        if stream.status != StreamStatus::Active {
            state.last_change.insert(stream.stream_uid, Instant::now());
            continue;
        }
        let open: Vec<ShardView> = service
            .store
            .shards_of(stream.stream_uid)
            .await?
            .into_iter()
            .filter(|r| r.is_open_in(&stream))
            .filter_map(|r| {
                let range = range_of(&r).ok()?;
                let load = loads.get(&(stream.stream_uid, r.shard_id.clone())).copied();
                let (utilization, median) = (load.map(|l| l.0), load.and_then(|l| l.1));
                Some(ShardView {
                    shard_id: r.shard_id,
                    range,
                    utilization,
                    median,
                })
            })
            .collect();
        let floor = service.capacity_floor(&stream);
        let may_shrink = since.elapsed() >= config.scale_down_cooldown;
        let decision = decide(&open, floor, config, may_shrink);
        let (steps, kind) = match decision {
            Decision::Hold => continue,
            Decision::Grow(steps) => (steps, "grow"),
            Decision::Shrink(step) => (vec![step], "shrink"),
        };
        tracing::info!(
            stream_name = stream.stream_name,
            ?steps,
            "scaler resharding"
        );
        if service.begin_update(&stream).await.is_ok() {
            state.last_change.insert(stream.stream_uid, Instant::now());
            service
                .metrics
                .scaler_decisions
                .get_or_create(&crate::metrics::DecisionLabel { decision: kind })
                .inc();
            service.spawn_steps(stream, steps, None);
        }
    }
    Ok(())
}

impl ControlPlaneService {
    /// The fewest open shards an on-demand stream keeps: its starting
    /// capacity, or what its warm throughput needs.
    pub(crate) fn capacity_floor(&self, stream: &StreamRow) -> u32 {
        let warm = stream
            .warm_throughput_mibps
            .and_then(|m| u32::try_from(m).ok())
            .map_or(0, |m| self.scaler.shards_for_mibps(m));
        warm.max(ON_DEMAND_INITIAL_SHARDS)
            .min(self.scaler.on_demand_max_shards)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn views(loads: &[f64]) -> Vec<ShardView> {
        HashKeyRange::split_evenly(loads.len() as u32)
            .into_iter()
            .zip(loads)
            .enumerate()
            .map(|(i, (range, load))| ShardView {
                shard_id: format!("s{i}"),
                range,
                utilization: Some(*load),
                median: None,
            })
            .collect()
    }

    #[test]
    fn hot_shards_split_hottest_first_and_cold_neighbours_merge() {
        let config = ScalerConfig::default();
        match decide(&views(&[0.1, 1.5, 0.9, 0.2]), 4, &config, true) {
            Decision::Grow(steps) => {
                let split: Vec<&str> = steps
                    .iter()
                    .map(|s| match s {
                        Step::Split { shard_id, .. } => shard_id.as_str(),
                        Step::Merge { .. } => "merge",
                    })
                    .collect();
                assert_eq!(split, ["s1", "s2"]);
            }
            other => panic!("expected growth, got {other:?}"),
        }
        let quiet = views(&[0.05, 0.1, 0.5, 0.6, 0.01, 0.02]);
        assert_eq!(
            decide(&quiet, 4, &config, true),
            Decision::Shrink(Step::Merge {
                lower: "s4".to_owned(),
                upper: "s5".to_owned()
            })
        );
        assert_eq!(
            decide(&quiet, 4, &config, false),
            Decision::Hold,
            "cooling down"
        );
        assert_eq!(
            decide(&quiet, 6, &config, true),
            Decision::Hold,
            "at the floor"
        );
    }

    #[test]
    fn a_shard_whose_load_is_unknown_is_never_merged() {
        let config = ScalerConfig::default();
        let mut quiet = views(&[0.01, 0.01, 0.01, 0.01, 0.01]);
        quiet[0].utilization = None;
        quiet[2].utilization = None;
        quiet[4].utilization = None;
        assert_eq!(decide(&quiet, 4, &config, true), Decision::Hold);
    }

    #[test]
    fn a_split_follows_the_load_not_the_middle() {
        let config = ScalerConfig::default();
        let mut shard = views(&[2.0]);
        let skewed = HashKey(u128::MAX / 10);
        shard[0].median = Some(skewed);
        assert_eq!(
            decide(&shard, 1, &config, true),
            Decision::Grow(vec![Step::Split {
                shard_id: "s0".to_owned(),
                at: skewed
            }])
        );
    }

    #[test]
    fn a_stream_below_its_floor_grows_its_widest_shards() {
        let config = ScalerConfig::default();
        match decide(&views(&[0.0, 0.0]), 5, &config, true) {
            Decision::Grow(steps) => assert_eq!(steps.len(), 2, "{steps:?}"),
            other => panic!("expected growth, got {other:?}"),
        }
        assert_eq!(config.shards_for_mibps(10), 10);
        assert_eq!(config.mibps_of(12), 12);
    }
}
