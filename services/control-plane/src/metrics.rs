//! What the control plane counts: the balancer's moves, the scaler's
//! decisions and every resharding step it takes.

use freshet_metrics::{Counter, EncodeLabelSet, Family, Registry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DecisionLabel {
    pub decision: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct StepLabel {
    pub step: &'static str,
}

/// The control plane's metrics; they count from construction and are
/// scraped once registered.
#[derive(Default)]
pub(crate) struct ControlPlaneMetrics {
    pub balancer_moves: Counter,
    /// `grow` or `shrink`: decisions that changed a stream's shape.
    pub scaler_decisions: Family<DecisionLabel, Counter>,
    /// `split` or `merge`, by whoever asked (a user or the scaler).
    pub reshard_steps: Family<StepLabel, Counter>,
}

impl ControlPlaneMetrics {
    pub(crate) fn register_in(&self, registry: &Registry) {
        registry.register(
            "freshet_control_plane_balancer_moves",
            "Shards moved off an overloaded worker",
            self.balancer_moves.clone(),
        );
        registry.register(
            "freshet_control_plane_scaler_decisions",
            "On-demand scaling decisions that reshaped a stream",
            self.scaler_decisions.clone(),
        );
        registry.register(
            "freshet_control_plane_reshard_steps",
            "Resharding steps begun (split or merge)",
            self.reshard_steps.clone(),
        );
    }
}
