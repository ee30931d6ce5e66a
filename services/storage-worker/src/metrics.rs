//! What a storage worker counts: the cost of its durable writes (local
//! write + fsync per group commit, records per commit), how far each
//! replica is behind its leader, and its lease renewals.

use freshet_metrics::{
    Buckets, Counter, EncodeLabelSet, Family, Gauge, Histogram, HistogramFamily, Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RoleLabel {
    /// `leader` (a group commit) or `replica` (a Replicate that wrote).
    pub role: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CopyLabels {
    pub shard: String,
    pub replica: String,
}

pub struct WorkerMetrics {
    /// One local write and its fsync, on a leader (a group commit) or a
    /// replica (a Replicate call that wrote records).
    pub fsync_seconds: HistogramFamily<RoleLabel>,
    /// Records per group commit on a leader.
    pub group_commit_records: Histogram,
    /// Appends (callers) sharing one group commit.
    pub group_commit_appends: Histogram,
    /// Records a replica lacks behind its leader's log end, as the leader
    /// saw it after its last replication round to it.
    pub replication_lag_records: Family<CopyLabels, Gauge>,
    pub lease_renewals: Counter,
}

impl WorkerMetrics {
    pub fn register(registry: &Registry) -> WorkerMetrics {
        WorkerMetrics {
            fsync_seconds: registry.histogram_family(
                "freshet_storage_fsync_seconds",
                "Time to write one batch to the local log and fsync it, as leader or replica",
                Buckets::Seconds,
            ),
            group_commit_records: registry.histogram(
                "freshet_storage_group_commit_records",
                "Records written by one group commit on a shard's leader.",
                Buckets::Counts,
            ),
            group_commit_appends: registry.histogram(
                "freshet_storage_group_commit_appends",
                "Append calls served by one group commit on a shard's leader.",
                Buckets::Counts,
            ),
            replication_lag_records: registry.gauge_family(
                "freshet_storage_replication_lag_records",
                "Records a replica lacks behind its leader's log end (leader's view).",
            ),
            lease_renewals: registry.counter(
                "freshet_storage_lease_renewals",
                "Leader leases renewed by a heartbeat membership answered.",
            ),
        }
    }

    /// For tests and tools that build a worker's parts without a service.
    #[cfg(test)]
    pub fn unregistered() -> WorkerMetrics {
        WorkerMetrics::register(&Registry::new())
    }
}
