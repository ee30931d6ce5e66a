//! A run's result, for people (a table) and for machines (`--json`).

use std::collections::BTreeMap;
use std::fmt::Write as _;

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::driver::{Mode, Recorded};

/// Latency percentiles in milliseconds.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Percentiles {
    pub count: u64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p99_9: f64,
    pub max: f64,
    pub mean: f64,
}

impl Percentiles {
    pub fn of(histogram: &Histogram<u64>) -> Percentiles {
        let ms = |micros: u64| micros as f64 / 1000.0;
        if histogram.is_empty() {
            return Percentiles {
                count: 0,
                p50: 0.0,
                p90: 0.0,
                p99: 0.0,
                p99_9: 0.0,
                max: 0.0,
                mean: 0.0,
            };
        }
        Percentiles {
            count: histogram.len(),
            p50: ms(histogram.value_at_quantile(0.50)),
            p90: ms(histogram.value_at_quantile(0.90)),
            p99: ms(histogram.value_at_quantile(0.99)),
            p99_9: ms(histogram.value_at_quantile(0.999)),
            max: ms(histogram.max()),
            mean: histogram.mean() / 1000.0,
        }
    }
}

/// One kind of failure: how often, and one message.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct ErrorKind {
    pub count: u64,
    pub example: String,
}

/// Describes what was run, for the report's heading.
#[derive(Debug, Clone, Default)]
pub struct Heading {
    pub service: String,
    pub scenario: String,
    pub target: String,
    /// What one item of a call is (records, entries, subscribers reached).
    pub items_are: String,
    /// Lines about the set-up (the stream used, the simulated workers).
    pub setup: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub service: String,
    pub scenario: String,
    pub target: String,
    /// `closed` or `open`.
    pub mode: &'static str,
    /// Closed loop: callers. Open loop: the most calls in flight.
    pub concurrency: usize,
    /// Open loop only: calls due per second.
    pub rate_per_second: Option<f64>,
    pub warmup_seconds: f64,
    pub warmup_calls: u64,
    /// From the end of the warm-up to the last recorded answer.
    pub elapsed_seconds: f64,
    pub calls: u64,
    pub ok: u64,
    pub errors: u64,
    pub calls_per_second: f64,
    pub ok_per_second: f64,
    pub items_are: String,
    pub items: u64,
    pub items_per_second: f64,
    pub bytes: u64,
    pub megabytes_per_second: f64,
    /// Successful calls, until answered. Closed loop: from the send. Open
    /// loop: from the due time for a call sent late because every caller
    /// was busy (corrected for coordinated omission), else from the send.
    pub latency_ms: Percentiles,
    /// Successful calls, from the actual send (differs in open loop only).
    pub service_time_ms: Percentiles,
    /// Durations the scenario measured itself.
    pub samples_ms: BTreeMap<String, Percentiles>,
    pub errors_by_kind: BTreeMap<String, ErrorKind>,
    pub notes: BTreeMap<String, u64>,
    /// Calls sent more than 2 ms after their intended time (open loop).
    pub late_sends: u64,
    pub max_send_lag_ms: f64,
    /// Cores used over the measured time: the whole machine, this tool,
    /// and the watched processes by name.
    pub cpu_cores: BTreeMap<String, f64>,
    pub setup: Vec<String>,
    pub interrupted: bool,
}

impl Report {
    pub fn new(
        heading: Heading,
        mode: Mode,
        warmup: std::time::Duration,
        recorded: &Recorded,
        cpu_cores: BTreeMap<String, f64>,
    ) -> Report {
        let seconds = recorded.elapsed.as_secs_f64();
        let per_second = |count: u64| {
            if seconds > 0.0 {
                count as f64 / seconds
            } else {
                0.0
            }
        };
        let (mode_name, concurrency, rate) = match mode {
            Mode::Closed { concurrency } => ("closed", concurrency, None),
            Mode::Open {
                rate,
                max_in_flight,
            } => ("open", max_in_flight, Some(rate)),
        };
        Report {
            service: heading.service,
            scenario: heading.scenario,
            target: heading.target,
            mode: mode_name,
            concurrency,
            rate_per_second: rate,
            warmup_seconds: warmup.as_secs_f64(),
            warmup_calls: recorded.warmup_calls,
            elapsed_seconds: seconds,
            calls: recorded.calls(),
            ok: recorded.ok,
            errors: recorded.error_count(),
            calls_per_second: per_second(recorded.calls()),
            ok_per_second: per_second(recorded.ok),
            items_are: heading.items_are,
            items: recorded.items,
            items_per_second: per_second(recorded.items),
            bytes: recorded.bytes,
            megabytes_per_second: per_second(recorded.bytes) / 1_000_000.0,
            latency_ms: Percentiles::of(&recorded.latency),
            service_time_ms: Percentiles::of(&recorded.service_time),
            samples_ms: recorded
                .samples
                .iter()
                .map(|(name, histogram)| ((*name).to_owned(), Percentiles::of(histogram)))
                .collect(),
            errors_by_kind: recorded
                .errors
                .iter()
                .map(|(kind, (count, example))| {
                    (
                        kind.clone(),
                        ErrorKind {
                            count: *count,
                            example: example.clone(),
                        },
                    )
                })
                .collect(),
            notes: recorded.notes.clone(),
            late_sends: recorded.late_sends,
            max_send_lag_ms: recorded.max_send_lag.as_secs_f64() * 1000.0,
            cpu_cores,
            setup: heading.setup,
            interrupted: recorded.interrupted,
        }
    }

    /// The report as a table for a terminal or a Markdown file.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let pacing = match self.rate_per_second {
            Some(rate) => format!(
                "open loop, {rate} calls/s due, at most {} in flight",
                self.concurrency
            ),
            None => format!("closed loop, {} callers", self.concurrency),
        };
        let _ = writeln!(
            out,
            "{} {} against {} ({pacing})",
            self.service, self.scenario, self.target
        );
        for line in &self.setup {
            let _ = writeln!(out, "  {line}");
        }
        let _ = writeln!(
            out,
            "  warm-up {:.1} s ({} calls, not counted); measured {:.2} s{}",
            self.warmup_seconds,
            self.warmup_calls,
            self.elapsed_seconds,
            if self.interrupted {
                " (interrupted)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            out,
            "  calls {} ({} ok, {} failed)   {:.1} ok/s   {:.1} {}/s   {:.2} MB/s",
            self.calls,
            self.ok,
            self.errors,
            self.ok_per_second,
            self.items_per_second,
            self.items_are,
            self.megabytes_per_second
        );
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "  {:<28} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "ms", "count", "p50", "p90", "p99", "p99.9", "max", "mean"
        );
        let mut row = |name: &str, p: &Percentiles| {
            let _ = writeln!(
                out,
                "  {:<28} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                name, p.count, p.p50, p.p90, p.p99, p.p99_9, p.max, p.mean
            );
        };
        if self.rate_per_second.is_some() {
            row("latency (from due time)", &self.latency_ms);
            row("service time (from sent)", &self.service_time_ms);
        } else {
            row("latency", &self.latency_ms);
        }
        for (name, percentiles) in &self.samples_ms {
            row(name, percentiles);
        }
        if self.rate_per_second.is_some() {
            let _ = writeln!(
                out,
                "\n  sent late (> 2 ms after due): {}   largest delay {:.1} ms",
                self.late_sends, self.max_send_lag_ms
            );
        }
        if !self.errors_by_kind.is_empty() {
            let _ = writeln!(out, "\n  errors by kind:");
            for (kind, error) in &self.errors_by_kind {
                let _ = writeln!(
                    out,
                    "    {:>8}  {kind}  (e.g. {})",
                    error.count,
                    shorten(&error.example, 140)
                );
            }
        }
        if !self.notes.is_empty() {
            let _ = writeln!(out, "\n  notes:");
            for (note, count) in &self.notes {
                let _ = writeln!(out, "    {count:>8}  {note}");
            }
        }
        if !self.cpu_cores.is_empty() {
            // Processes that hardly ran (log pipes, idle services) are
            // left to the JSON.
            let cores: Vec<String> = self
                .cpu_cores
                .iter()
                .filter(|(name, cores)| {
                    **cores >= 0.005
                        || name.as_str() == crate::cpu::SELF_NAME
                        || name.as_str() == crate::cpu::MACHINE_NAME
                })
                .map(|(name, cores)| format!("{name} {cores:.2}"))
                .collect();
            let _ = writeln!(out, "\n  cores used: {}", cores.join(", "));
        }
        out
    }
}

fn shorten(text: &str, limit: usize) -> String {
    let single: String = text
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if single.chars().count() <= limit {
        return single;
    }
    let cut: String = single.chars().take(limit).collect();
    format!("{cut}…")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::driver::new_histogram;
    use std::time::Duration;

    fn recorded() -> Recorded {
        let mut latency = new_histogram();
        for micros in 1..=1000u64 {
            latency.saturating_record(micros * 10);
        }
        let mut errors = BTreeMap::new();
        errors.insert(
            "ResourceExhausted/LimitExceeded (rate)".to_owned(),
            (5, "Rate exceeded for CreateStream".to_owned()),
        );
        Recorded {
            service_time: latency.clone(),
            latency,
            samples: BTreeMap::new(),
            ok: 1000,
            items: 2000,
            bytes: 4_000_000,
            errors,
            notes: BTreeMap::new(),
            late_sends: 0,
            max_send_lag: Duration::ZERO,
            elapsed: Duration::from_secs(2),
            warmup_calls: 7,
            interrupted: false,
        }
    }

    #[test]
    fn rates_and_percentiles_come_from_the_measured_time() {
        let report = Report::new(
            Heading {
                service: "cache".into(),
                scenario: "hit".into(),
                target: "127.0.0.1:7053".into(),
                items_are: "entries".into(),
                setup: vec![],
            },
            Mode::Closed { concurrency: 4 },
            Duration::from_secs(1),
            &recorded(),
            BTreeMap::new(),
        );
        assert_eq!(report.calls, 1005);
        assert_eq!(report.errors, 5);
        assert!((report.ok_per_second - 500.0).abs() < 1e-9);
        assert!((report.items_per_second - 1000.0).abs() < 1e-9);
        assert!((report.megabytes_per_second - 2.0).abs() < 1e-9);
        assert!((report.latency_ms.p50 - 5.0).abs() < 0.01);
        assert!((report.latency_ms.p99 - 9.9).abs() < 0.01);
        assert!((report.latency_ms.max - 10.0).abs() < 0.01);
        let json = serde_json::to_value(&report).expect("json");
        assert_eq!(json["mode"], "closed");
        assert_eq!(
            json["errors_by_kind"]["ResourceExhausted/LimitExceeded (rate)"]["count"],
            5
        );
        let table = report.render();
        assert!(table.contains("closed loop, 4 callers"), "{table}");
        assert!(table.contains("LimitExceeded (rate)"), "{table}");
    }
}
