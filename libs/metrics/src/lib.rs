//! Prometheus metrics for every Freshet service: one registry per service
//! instance (no process-wide state, so several services in one test process
//! keep their counts apart), typed families registered at startup, and the
//! `GET /metrics` endpoint that serves them as OpenMetrics text.
//!
//! Names follow two schemes (`docs/metrics.md` lists them all): the
//! stream metrics Kinesis publishes to CloudWatch keep CloudWatch's names and
//! units under a `kinesis_` prefix (`PutRecord.Latency`, in milliseconds,
//! is `kinesis_PutRecord_Latency_milliseconds`); Freshet's own internals
//! are `freshet_<service>_<what>_<unit>`.

mod endpoint;

use std::sync::{Arc, RwLock};

pub use endpoint::{serve, MetricsEndpoint};
pub use prometheus_client::encoding::EncodeLabelSet;
pub use prometheus_client::metrics::counter::Counter;
pub use prometheus_client::metrics::family::Family;
pub use prometheus_client::metrics::gauge::Gauge;
pub use prometheus_client::metrics::histogram::Histogram;

/// A family of histograms that all share one set of buckets.
pub type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// One service instance's metrics: cheap to clone, registered into at
/// startup, encoded on every scrape.
#[derive(Clone, Default)]
pub struct Registry {
    inner: Arc<RwLock<prometheus_client::registry::Registry>>,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Registry")
    }
}

impl Registry {
    pub fn new() -> Registry {
        Registry::default()
    }

    /// Registers `metric` (made here, or by a component that owns it from
    /// its construction) under `name`; returns it. `help` is one sentence:
    /// the exposition adds its full stop.
    pub fn register<M>(&self, name: &str, help: &str, metric: M) -> M
    where
        M: prometheus_client::registry::Metric + Clone,
    {
        // A poisoned lock only means a panic while registering elsewhere;
        // the registry itself is still whole.
        let mut registry = self.inner.write().unwrap_or_else(|e| e.into_inner());
        registry.register(name, help.trim_end_matches('.'), metric.clone());
        metric
    }

    /// A counter; `name` without the `_total` the exposition adds.
    pub fn counter(&self, name: &str, help: &str) -> Counter {
        self.register(name, help, Counter::default())
    }

    /// A counter per label set; `name` without `_total`.
    pub fn counter_family<L>(&self, name: &str, help: &str) -> Family<L, Counter>
    where
        L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
    {
        self.register(name, help, Family::default())
    }

    pub fn gauge(&self, name: &str, help: &str) -> Gauge {
        self.register(name, help, Gauge::default())
    }

    pub fn gauge_family<L>(&self, name: &str, help: &str) -> Family<L, Gauge>
    where
        L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
    {
        self.register(name, help, Family::default())
    }

    pub fn histogram(&self, name: &str, help: &str, buckets: Buckets) -> Histogram {
        self.register(name, help, histogram_of(buckets))
    }

    pub fn histogram_family<L>(
        &self,
        name: &str,
        help: &str,
        buckets: Buckets,
    ) -> HistogramFamily<L>
    where
        L: EncodeLabelSet + Clone + std::hash::Hash + Eq + std::fmt::Debug + Send + Sync + 'static,
    {
        self.register(
            name,
            help,
            Family::new_with_constructor(buckets.constructor()),
        )
    }

    /// Everything registered, as OpenMetrics text.
    pub fn encode(&self) -> String {
        let registry = self.inner.read().unwrap_or_else(|e| e.into_inner());
        let mut text = String::new();
        if let Err(error) = prometheus_client::encoding::text::encode(&mut text, &registry) {
            tracing::warn!(%error, "encoding metrics failed");
        }
        text
    }
}

/// The bucket layouts Freshet's histograms use: few, so dashboards can
/// compare like with like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Buckets {
    /// Call latencies in milliseconds (CloudWatch's unit): 0.25 ms to ~33 s.
    Milliseconds,
    /// Durations in seconds: 50 µs to ~13 s.
    Seconds,
    /// Sizes and counts: 1 to ~1 M.
    Counts,
    /// Ages in milliseconds: 1 ms to ~2 days (iterator age).
    AgeMilliseconds,
}

const MILLISECONDS: [f64; 18] = [
    0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
    8192.0, 16384.0, 32768.0,
];
const SECONDS: [f64; 19] = [
    0.00005, 0.0001, 0.0002, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0,
    2.0, 4.0, 8.0, 13.0, 30.0,
];
const COUNTS: [f64; 11] = [
    1.0, 4.0, 16.0, 64.0, 256.0, 1024.0, 4096.0, 16384.0, 65536.0, 262144.0, 1048576.0,
];
const AGE_MILLISECONDS: [f64; 12] = [
    1.0,
    10.0,
    100.0,
    1_000.0,
    10_000.0,
    60_000.0,
    300_000.0,
    900_000.0,
    3_600_000.0,
    21_600_000.0,
    86_400_000.0,
    172_800_000.0,
];

fn milliseconds() -> Histogram {
    Histogram::new(MILLISECONDS.iter().copied())
}
fn seconds() -> Histogram {
    Histogram::new(SECONDS.iter().copied())
}
fn counts() -> Histogram {
    Histogram::new(COUNTS.iter().copied())
}
fn age_milliseconds() -> Histogram {
    Histogram::new(AGE_MILLISECONDS.iter().copied())
}

impl Buckets {
    pub fn bounds(self) -> &'static [f64] {
        match self {
            Buckets::Milliseconds => &MILLISECONDS,
            Buckets::Seconds => &SECONDS,
            Buckets::Counts => &COUNTS,
            Buckets::AgeMilliseconds => &AGE_MILLISECONDS,
        }
    }

    fn constructor(self) -> fn() -> Histogram {
        match self {
            Buckets::Milliseconds => milliseconds,
            Buckets::Seconds => seconds,
            Buckets::Counts => counts,
            Buckets::AgeMilliseconds => age_milliseconds,
        }
    }
}

/// A histogram with `buckets`, made before it is registered (a component
/// that owns its metrics from construction).
pub fn histogram_of(buckets: Buckets) -> Histogram {
    (buckets.constructor())()
}

/// Milliseconds of `elapsed`, as CloudWatch's latency unit.
pub fn as_millis(elapsed: std::time::Duration) -> f64 {
    elapsed.as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
    struct Route {
        method: String,
    }

    #[test]
    fn counters_histograms_and_labels_are_encoded_under_their_names() {
        let registry = Registry::new();
        let calls = registry.counter_family::<Route>("freshet_test_calls", "Calls.");
        let latency = registry.histogram(
            "kinesis_Test_Latency_milliseconds",
            "Latency.",
            Buckets::Milliseconds,
        );
        calls
            .get_or_create(&Route {
                method: "Append".to_owned(),
            })
            .inc_by(3);
        latency.observe(3.0);
        let text = registry.encode();
        assert!(
            text.contains("freshet_test_calls_total{method=\"Append\"} 3"),
            "{text}"
        );
        assert!(
            text.contains("kinesis_Test_Latency_milliseconds_count 1"),
            "{text}"
        );
        assert!(
            text.contains("kinesis_Test_Latency_milliseconds_bucket{le=\"4.0\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn every_bucket_layout_rises() {
        for buckets in [
            Buckets::Milliseconds,
            Buckets::Seconds,
            Buckets::Counts,
            Buckets::AgeMilliseconds,
        ] {
            assert!(
                buckets.bounds().windows(2).all(|w| w[0] < w[1]),
                "{buckets:?}"
            );
        }
    }
}
