//! What membership counts: how long a committed change takes to reach each
//! subscriber, failovers, and how many workers are alive.

use freshet_metrics::{histogram_of, Buckets, Counter, Gauge, Histogram, Registry};

/// Membership's metrics; they count from construction and are scraped
/// once registered ([`MembershipMetrics::register_in`]).
pub(crate) struct MembershipMetrics {
    /// From a change's commit to its hand-over to one subscriber's stream.
    pub change_propagation: Histogram,
    /// Shards whose leadership moved off a dead leader.
    pub failovers: Counter,
    /// Workers alive at the last failover check.
    pub workers_alive: Gauge,
}

impl Default for MembershipMetrics {
    fn default() -> MembershipMetrics {
        MembershipMetrics {
            change_propagation: histogram_of(Buckets::Seconds),
            failovers: Counter::default(),
            workers_alive: Gauge::default(),
        }
    }
}

impl MembershipMetrics {
    pub(crate) fn register_in(&self, registry: &Registry) {
        registry.register(
            "freshet_membership_change_propagation_seconds",
            "Time from a shard-map change's commit to its hand-over to a subscriber",
            self.change_propagation.clone(),
        );
        registry.register(
            "freshet_membership_failovers",
            "Shards whose leadership moved off a dead leader",
            self.failovers.clone(),
        );
        registry.register(
            "freshet_membership_workers_alive",
            "Storage workers alive at the last failover check",
            self.workers_alive.clone(),
        );
    }
}
