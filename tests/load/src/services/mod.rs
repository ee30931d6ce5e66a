//! Per service, what one call of each scenario is, and its set-up.

pub mod cache;
pub mod control_plane;
pub mod frontend;
pub mod membership;
pub mod storage;
pub mod timer;

use crate::setup::{Cleanups, Context, Prepared};
use crate::Service;

/// Sets up the scenario `service` names; what must be undone afterwards
/// goes to `cleanups` as soon as it exists.
pub async fn prepare(
    context: &Context,
    service: Service,
    cleanups: &mut Cleanups,
) -> anyhow::Result<Prepared> {
    match service {
        Service::Timer => timer::prepare(context),
        Service::Membership { scenario } => membership::prepare(context, scenario, cleanups).await,
        Service::Cache { scenario } => cache::prepare(context, scenario, cleanups).await,
        Service::ControlPlane { scenario } => {
            control_plane::prepare(context, scenario, cleanups).await
        }
        Service::StorageWorker { scenario } => storage::prepare(context, scenario, cleanups).await,
        Service::Frontend { scenario } => frontend::prepare(context, scenario, cleanups).await,
    }
}
