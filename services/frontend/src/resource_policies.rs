//! Resource policies by ARN, read from the control plane and cached
//! briefly in each frontend (`access.rs` evaluates them).

use std::sync::Arc;
use std::time::Duration;

use freshet_policy::{Policy, PolicyKind};
use freshet_proto::v1::control_plane_client::ControlPlaneClient;
use freshet_proto::v1::GetResourcePolicyRequest;
use freshet_server::TracedChannel;
use moka::sync::Cache;

use crate::error::{KinesisError, KinesisResult};

/// How long a resource's policy (or its absence) is reused: a put or a
/// delete takes effect within this.
const RESOURCE_POLICY_TTL: Duration = Duration::from_secs(5);
const RESOURCE_POLICIES: u64 = 10_000;

/// Resource policies by ARN, from the control plane, briefly cached.
pub struct ResourcePolicies {
    control_plane: ControlPlaneClient<TracedChannel>,
    cache: Cache<String, Option<Arc<Policy>>>,
}

impl std::fmt::Debug for ResourcePolicies {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ResourcePolicies")
            .field("cached", &self.cache.entry_count())
            .finish()
    }
}

impl ResourcePolicies {
    pub fn new(control_plane: ControlPlaneClient<TracedChannel>) -> ResourcePolicies {
        ResourcePolicies {
            control_plane,
            cache: Cache::builder()
                .max_capacity(RESOURCE_POLICIES)
                .time_to_live(RESOURCE_POLICY_TTL)
                .build(),
        }
    }

    /// The policy of `arn`, if it has one. A stored policy that does not
    /// parse (it was validated when put) fails the request: skipping it
    /// could drop a Deny.
    pub async fn get(&self, arn: &str) -> KinesisResult<Option<Arc<Policy>>> {
        if let Some(cached) = self.cache.get(arn) {
            return Ok(cached);
        }
        let response = self
            .control_plane
            .clone()
            .get_resource_policy(freshet_server::request_with_deadline(
                GetResourcePolicyRequest {
                    resource_arn: arn.to_owned(),
                },
                Duration::from_secs(5),
            ))
            .await
            .map_err(|status| KinesisError::from_status(&status))?
            .into_inner();
        let policy = if response.found {
            let policy = Policy::parse(&response.document, PolicyKind::Resource).map_err(|e| {
                KinesisError::internal(format!("the resource policy of {arn} does not parse: {e}"))
            })?;
            Some(Arc::new(policy))
        } else {
            None
        };
        self.cache.insert(arn.to_owned(), policy.clone());
        Ok(policy)
    }

    /// Forgets `arn`'s policy (this frontend just changed it).
    pub fn forget(&self, arn: &str) {
        self.cache.invalidate(arn);
    }
}
