//! The viral-launch scenario: a producer follows a traffic profile
//! (baseline → celebrity repost → viral peak → decline) against an
//! on-demand stream, retrying throttled records with backoff and giving a
//! record up — counting it dropped — after a bounded number of retries, as
//! the talk's demo producer does. A sampler records ingest, throttles and
//! shard count each second; afterwards a consumer reads every shard,
//! parents before children, and checks that every acknowledged record is
//! there exactly once and in acknowledgement order per key.
//!
//! `freshet-demo` (`just demo`) runs it on the `just dev` topology with
//! Kinesis's limits; `tests/tests/demo.rs` runs a scaled-down version.

use std::collections::{HashMap, HashSet, VecDeque};
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_sdk_kinesis::error::ProvideErrorMetadata as _;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, Shard, ShardIteratorType};
use tokio::time::Instant;

/// One stretch of the traffic profile.
#[derive(Debug, Clone)]
pub struct Phase {
    pub name: &'static str,
    pub seconds: u64,
    pub records_per_second: u64,
}

#[derive(Debug, Clone)]
pub struct Profile {
    pub phases: Vec<Phase>,
    /// Bytes of data per record.
    pub record_bytes: usize,
    /// Producer tasks; each owns its own partition keys.
    pub producers: usize,
    /// Distinct partition keys.
    pub keys: usize,
    /// Retries of a refused record before it is dropped.
    pub max_retries: u32,
}

/// One second of a run.
#[derive(Debug, Clone, Copy)]
pub struct Sample {
    pub second: f64,
    pub offered_per_second: f64,
    pub acknowledged_per_second: f64,
    pub throttled_per_second: f64,
    pub dropped_total: u64,
    pub open_shards: u32,
}

#[derive(Debug, Clone)]
pub struct Report {
    pub label: String,
    pub sent: u64,
    pub acknowledged: u64,
    pub dropped: u64,
    pub read_back: u64,
    /// Acknowledged records not found by the consumer.
    pub missing: u64,
    /// Records the consumer found more than once.
    pub duplicates: u64,
    /// Keys whose records were read in a different order than acknowledged.
    pub keys_out_of_order: u64,
    pub shards_at_start: u32,
    pub shards_at_peak: u32,
    /// From the end of the baseline to the shard count's peak.
    pub seconds_to_scale: Option<f64>,
    pub samples: Vec<Sample>,
}

#[derive(Default)]
struct Counters {
    offered: AtomicU64,
    acknowledged: AtomicU64,
    throttled: AtomicU64,
    dropped: AtomicU64,
}

struct Pending {
    key: usize,
    number: u64,
    attempts: u32,
    not_before: Instant,
}

fn payload(key: usize, number: u64, bytes: usize) -> String {
    let mut text = format!("user-{key}:{number}:");
    while text.len() < bytes {
        text.push('x');
    }
    text
}

fn parse(payload: &str) -> Option<(usize, u64)> {
    let mut parts = payload.splitn(3, ':');
    let key = parts.next()?.strip_prefix("user-")?.parse().ok()?;
    let number = parts.next()?.parse().ok()?;
    Some((key, number))
}

/// Writes the profile; returns, per key, the record numbers in the order
/// they were acknowledged.
async fn produce(
    client: aws_sdk_kinesis::Client,
    stream: String,
    profile: Profile,
    producer: usize,
    counters: Arc<Counters>,
) -> anyhow::Result<HashMap<usize, Vec<u64>>> {
    let my_keys: Vec<usize> = (0..profile.keys)
        .filter(|k| k % profile.producers == producer)
        .collect();
    let mut next_number: HashMap<usize, u64> = HashMap::new();
    let mut pending: VecDeque<Pending> = VecDeque::new();
    let mut acknowledged: HashMap<usize, Vec<u64>> = HashMap::new();
    let tick = Duration::from_millis(100);
    let started = Instant::now();
    let mut owed = 0.0f64;
    let mut key_cursor = 0usize;
    loop {
        let elapsed = started.elapsed();
        let phase = {
            let mut at = 0;
            profile.phases.iter().find(|p| {
                at += p.seconds;
                elapsed.as_secs_f64() < at as f64
            })
        };
        // After the profile, only what is still pending (retries) is sent.
        if phase.is_none() && pending.is_empty() {
            break;
        }
        let rate = phase.map_or(0, |p| p.records_per_second);
        owed += rate as f64 / profile.producers as f64 * tick.as_secs_f64();
        while owed >= 1.0 && !my_keys.is_empty() {
            owed -= 1.0;
            let key = my_keys[key_cursor % my_keys.len()];
            key_cursor = key_cursor.wrapping_mul(31).wrapping_add(7);
            let number = next_number.entry(key).or_insert(0);
            pending.push_back(Pending {
                key,
                number: *number,
                attempts: 0,
                not_before: Instant::now(),
            });
            *number += 1;
            counters.offered.fetch_add(1, Ordering::Relaxed);
        }
        let now = Instant::now();
        let mut batch = Vec::new();
        let mut waiting = VecDeque::new();
        while let Some(record) = pending.pop_front() {
            if batch.len() < 500 && record.not_before <= now {
                batch.push(record);
            } else {
                waiting.push_back(record);
            }
        }
        pending = waiting;
        if !batch.is_empty() {
            let entries = batch
                .iter()
                .map(|r| {
                    PutRecordsRequestEntry::builder()
                        .partition_key(format!("user-{}", r.key))
                        .data(Blob::new(payload(r.key, r.number, profile.record_bytes)))
                        .build()
                })
                .collect::<Result<Vec<_>, _>>()?;
            let answer = client
                .put_records()
                .stream_name(&stream)
                .set_records(Some(entries))
                .send()
                .await;
            let outcomes: Vec<bool> = match &answer {
                Ok(output) => output
                    .records
                    .iter()
                    .map(|r| r.error_code.is_none())
                    .collect(),
                Err(_) => vec![false; batch.len()],
            };
            let mut retry = Vec::new();
            for (mut record, ok) in batch.into_iter().zip(outcomes) {
                if ok {
                    counters.acknowledged.fetch_add(1, Ordering::Relaxed);
                    acknowledged
                        .entry(record.key)
                        .or_default()
                        .push(record.number);
                    continue;
                }
                counters.throttled.fetch_add(1, Ordering::Relaxed);
                record.attempts += 1;
                if record.attempts > profile.max_retries {
                    counters.dropped.fetch_add(1, Ordering::Relaxed);
                } else {
                    record.not_before =
                        Instant::now() + Duration::from_millis(100 << record.attempts.min(5));
                    retry.push(record);
                }
            }
            for record in retry.into_iter().rev() {
                pending.push_front(record);
            }
        }
        let next_tick = started + tick * (elapsed.as_millis() / tick.as_millis() + 1) as u32;
        tokio::time::sleep_until(next_tick).await;
    }
    Ok(acknowledged)
}

/// Runs the profile against `stream` (which must exist) and checks what a
/// consumer reads back.
pub async fn run(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    label: &str,
    profile: &Profile,
) -> anyhow::Result<Report> {
    let counters = Arc::new(Counters::default());
    let shards_at_start = crate::open_shard_count(client, stream).await;
    let samples = Arc::new(Mutex::new(Vec::new()));
    let sampler = {
        let (client, stream, counters, samples) = (
            client.clone(),
            stream.to_owned(),
            counters.clone(),
            samples.clone(),
        );
        tokio::spawn(async move {
            let started = Instant::now();
            let (mut offered, mut acked, mut throttled) = (0u64, 0u64, 0u64);
            let mut last = started;
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let now = Instant::now();
                let seconds = now.duration_since(last).as_secs_f64().max(1e-3);
                last = now;
                let o = counters.offered.load(Ordering::Relaxed);
                let a = counters.acknowledged.load(Ordering::Relaxed);
                let t = counters.throttled.load(Ordering::Relaxed);
                let sample = Sample {
                    second: now.duration_since(started).as_secs_f64(),
                    offered_per_second: (o - offered) as f64 / seconds,
                    acknowledged_per_second: (a - acked) as f64 / seconds,
                    throttled_per_second: (t - throttled) as f64 / seconds,
                    dropped_total: counters.dropped.load(Ordering::Relaxed),
                    open_shards: crate::open_shard_count(&client, &stream).await,
                };
                (offered, acked, throttled) = (o, a, t);
                samples
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(sample);
            }
        })
    };
    let tasks: Vec<_> = (0..profile.producers)
        .map(|p| {
            tokio::spawn(produce(
                client.clone(),
                stream.to_owned(),
                profile.clone(),
                p,
                counters.clone(),
            ))
        })
        .collect();
    let mut acknowledged: HashMap<usize, Vec<u64>> = HashMap::new();
    for task in tasks {
        acknowledged.extend(task.await??);
    }
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    sampler.abort();
    let samples = samples.lock().unwrap_or_else(|p| p.into_inner()).clone();

    // The consumer: every shard from TRIM_HORIZON, parents before children.
    let read = read_in_lineage_order(client, stream).await?;
    let mut seen: HashSet<(usize, u64)> = HashSet::new();
    let mut duplicates = 0;
    let mut read_order: HashMap<usize, Vec<u64>> = HashMap::new();
    for payload in &read {
        let Some((key, number)) = parse(payload) else {
            anyhow::bail!("the consumer read a record no producer wrote: {payload:.40}");
        };
        if seen.insert((key, number)) {
            read_order.entry(key).or_default().push(number);
        } else {
            duplicates += 1;
        }
    }
    let mut missing = 0;
    let mut keys_out_of_order = 0;
    for (key, acked) in &acknowledged {
        let acked_set: HashSet<u64> = acked.iter().copied().collect();
        missing += acked
            .iter()
            .filter(|n| !seen.contains(&(*key, **n)))
            .count() as u64;
        let read_acked: Vec<u64> = read_order
            .get(key)
            .map(|r| {
                r.iter()
                    .copied()
                    .filter(|n| acked_set.contains(n))
                    .collect()
            })
            .unwrap_or_default();
        if read_acked != *acked {
            keys_out_of_order += 1;
        }
    }
    let shards_at_peak = samples
        .iter()
        .map(|s| s.open_shards)
        .max()
        .unwrap_or(shards_at_start)
        .max(shards_at_start);
    let surge_at = profile.phases.first().map_or(0, |p| p.seconds) as f64;
    let seconds_to_scale = samples
        .iter()
        .find(|s| s.open_shards == shards_at_peak)
        .filter(|_| shards_at_peak > shards_at_start)
        .map(|s| (s.second - surge_at).max(0.0));
    Ok(Report {
        label: label.to_owned(),
        sent: counters.offered.load(Ordering::Relaxed),
        acknowledged: counters.acknowledged.load(Ordering::Relaxed),
        dropped: counters.dropped.load(Ordering::Relaxed),
        read_back: seen.len() as u64,
        missing,
        duplicates,
        keys_out_of_order,
        shards_at_start,
        shards_at_peak,
        seconds_to_scale,
        samples,
    })
}

/// Reads every shard of `stream` from TRIM_HORIZON, each only after all of
/// its parents: a closed shard to its end, an open one until caught up.
/// Returns the payloads in that order.
pub async fn read_in_lineage_order(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> anyhow::Result<Vec<String>> {
    let mut all: Vec<Shard> = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let page = match &token {
            Some(t) => client.list_shards().next_token(t).send().await?,
            None => client.list_shards().stream_name(stream).send().await?,
        };
        all.extend(page.shards.unwrap_or_default());
        token = page.next_token;
        if token.is_none() {
            break;
        }
    }
    let parents_of = |s: &Shard| -> Vec<String> {
        [&s.parent_shard_id, &s.adjacent_parent_shard_id]
            .into_iter()
            .flatten()
            .cloned()
            .collect()
    };
    let known: HashSet<String> = all.iter().map(|s| s.shard_id.clone()).collect();
    let mut done: HashSet<String> = HashSet::new();
    let mut payloads = Vec::new();
    while done.len() < all.len() {
        let ready: Vec<&Shard> = all
            .iter()
            .filter(|s| !done.contains(&s.shard_id))
            .filter(|s| {
                parents_of(s)
                    .iter()
                    .all(|p| done.contains(p) || !known.contains(p))
            })
            .collect();
        anyhow::ensure!(!ready.is_empty(), "the shard lineage has a cycle");
        for shard in ready {
            let closed = shard
                .sequence_number_range
                .as_ref()
                .is_some_and(|r| r.ending_sequence_number.is_some());
            let mut iterator = client
                .get_shard_iterator()
                .stream_name(stream)
                .shard_id(&shard.shard_id)
                .shard_iterator_type(ShardIteratorType::TrimHorizon)
                .send()
                .await?
                .shard_iterator;
            let mut throttled = 0;
            while let Some(current) = iterator {
                // A consumer backs off when the shard's read limit is spent.
                let page = match client.get_records().shard_iterator(&current).send().await {
                    Ok(page) => page,
                    Err(error)
                        if error.code() == Some("ProvisionedThroughputExceededException")
                            && throttled < 100 =>
                    {
                        throttled += 1;
                        tokio::time::sleep(Duration::from_millis(250)).await;
                        iterator = Some(current);
                        continue;
                    }
                    Err(error) => return Err(error.into()),
                };
                let empty = page.records.is_empty();
                for record in page.records {
                    payloads.push(String::from_utf8(record.data.into_inner())?);
                }
                iterator = page.next_shard_iterator;
                if empty && !closed {
                    break;
                }
            }
            done.insert(shard.shard_id.clone());
        }
    }
    Ok(payloads)
}

/// A Markdown table of the runs.
pub fn table(reports: &[Report]) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "| run | sent | acknowledged | dropped | read back | missing | duplicates | keys out of order | shards at start | shards at peak | time to scale |"
    );
    let _ = writeln!(
        out,
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    );
    for r in reports {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.label,
            r.sent,
            r.acknowledged,
            r.dropped,
            r.read_back,
            r.missing,
            r.duplicates,
            r.keys_out_of_order,
            r.shards_at_start,
            r.shards_at_peak,
            r.seconds_to_scale
                .map_or_else(|| "—".to_owned(), |s| format!("{s:.0} s")),
        );
    }
    out
}

/// An SVG chart per run: offered and acknowledged records/s, throttles/s
/// (left axis) and open shards (right axis) over time.
pub fn chart(reports: &[Report]) -> String {
    const W: f64 = 860.0;
    const H: f64 = 260.0;
    const PAD: f64 = 50.0;
    let mut svg = String::new();
    let height = H * reports.len() as f64 + 20.0;
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{height}" font-family="sans-serif" font-size="12">"#
    );
    let _ = writeln!(svg, r#"<rect width="100%" height="100%" fill="white"/>"#);
    for (index, report) in reports.iter().enumerate() {
        let top = index as f64 * H + 10.0;
        let seconds = report.samples.last().map_or(1.0, |s| s.second).max(1.0);
        let rate_max = report
            .samples
            .iter()
            .map(|s| {
                s.offered_per_second
                    .max(s.acknowledged_per_second)
                    .max(s.throttled_per_second)
            })
            .fold(1.0f64, f64::max);
        let shard_max = report
            .samples
            .iter()
            .map(|s| s.open_shards)
            .max()
            .unwrap_or(1)
            .max(1) as f64;
        let x = |t: f64| PAD + t / seconds * (W - 2.0 * PAD);
        let y = |v: f64, max: f64| top + H - 40.0 - v / max * (H - 70.0);
        let _ = writeln!(
            svg,
            r#"<text x="{PAD}" y="{}" font-weight="bold">{}</text>"#,
            top + 14.0,
            report.label
        );
        let _ = writeln!(
            svg,
            r##"<line x1="{PAD}" y1="{0}" x2="{1}" y2="{0}" stroke="#999"/>"##,
            y(0.0, 1.0),
            W - PAD
        );
        let _ = writeln!(
            svg,
            r#"<text x="4" y="{}">{rate_max:.0}/s</text><text x="{}" y="{}">{shard_max:.0} shards</text><text x="{}" y="{}">{seconds:.0} s</text>"#,
            y(rate_max, rate_max) + 4.0,
            W - PAD + 4.0,
            y(shard_max, shard_max) + 4.0,
            W - PAD - 20.0,
            y(0.0, 1.0) + 16.0
        );
        type Series = (&'static str, &'static str, fn(&Sample) -> f64, bool);
        let series: [Series; 4] = [
            ("offered/s", "#bbbbbb", |s| s.offered_per_second, false),
            (
                "acknowledged/s",
                "#1f77b4",
                |s| s.acknowledged_per_second,
                false,
            ),
            ("throttled/s", "#d62728", |s| s.throttled_per_second, false),
            ("open shards", "#2ca02c", |s| f64::from(s.open_shards), true),
        ];
        for (position, (name, colour, value, right_axis)) in series.iter().enumerate() {
            let max = if *right_axis { shard_max } else { rate_max };
            let points: Vec<String> = report
                .samples
                .iter()
                .map(|s| format!("{:.1},{:.1}", x(s.second), y(value(s), max)))
                .collect();
            let _ = writeln!(
                svg,
                r#"<polyline fill="none" stroke="{colour}" stroke-width="2" points="{}"/>"#,
                points.join(" ")
            );
            let _ = writeln!(
                svg,
                r#"<text x="{}" y="{}" fill="{colour}">{name}</text>"#,
                PAD + 200.0 + position as f64 * 130.0,
                top + 14.0
            );
        }
    }
    svg.push_str("</svg>\n");
    svg
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn payloads_name_their_key_and_number() {
        let text = payload(42, 7, 64);
        assert_eq!(text.len(), 64);
        assert_eq!(parse(&text), Some((42, 7)));
        assert_eq!(parse("garbage"), None);
    }
}
