//! A service's metrics: its registry, and the port it is scraped on.

use freshet_metrics::{MetricsEndpoint, Registry};
use tokio_util::sync::CancellationToken;

use crate::ObservabilityFlags;

/// One service instance's metrics, bound before it serves.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    endpoint: MetricsEndpoint,
}

impl Metrics {
    /// Binds the metrics port `flags` name (`default` when they name
    /// none; nothing when they say `off`).
    pub async fn bind(flags: &ObservabilityFlags, default: &str) -> std::io::Result<Metrics> {
        Ok(Metrics {
            registry: Registry::new(),
            endpoint: flags.bind_metrics(default).await?,
        })
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Starts answering scrapes; they stop when the handle is dropped.
    pub fn serve(self) -> MetricsServing {
        let stop = CancellationToken::new();
        self.endpoint.spawn(self.registry, stop.clone());
        MetricsServing {
            _stop: stop.drop_guard(),
        }
    }
}

/// Scrapes are answered while this lives.
#[must_use = "dropping it stops serving metrics"]
pub struct MetricsServing {
    _stop: tokio_util::sync::DropGuard,
}
