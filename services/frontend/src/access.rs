//! What a caller may do: every operation names its action
//! (`kinesis:<Operation>`) and the resource it acts on, and is refused with
//! AccessDeniedException unless IAM's evaluation allows it
//! (`freshet_policy::evaluate`). A root acting in its own account is
//! allowed at once; a user needs an identity policy that allows.
//!
//! Invariant: every operation authorizes before it changes or reads
//! anything — stream-addressed ones in `StreamTarget::resolve` (or on the
//! stream their iterator or token names), account-wide ones on `*`. A
//! stream's resource policy takes part (an explicit deny in it binds even
//! the root, except for the resource-policy operations themselves, so an
//! owner can never lock itself out).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use freshet_errors::ErrorCode;
use freshet_policy::{Context, Policy, PolicyKind, Request};
use freshet_proto::v1::control_plane_client::ControlPlaneClient;
use freshet_proto::v1::GetResourcePolicyRequest;
use freshet_server::TracedChannel;
use freshet_types::calendar::iso8601;
use freshet_types::{Principal, StreamArn};
use moka::sync::Cache;

use crate::auth::Caller;
use crate::error::{KinesisError, KinesisResult};

/// How long a resource's policy (or its absence) is reused: a put or a
/// delete takes effect within this.
const RESOURCE_POLICY_TTL: Duration = Duration::from_secs(5);
const RESOURCE_POLICIES: u64 = 10_000;

/// The operations an account's root may always perform on its own
/// resources, whatever their policy says, so it can never lock itself out.
const ROOT_RECOVERY: &[&str] = &[
    "kinesis:GetResourcePolicy",
    "kinesis:PutResourcePolicy",
    "kinesis:DeleteResourcePolicy",
];

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
    async fn get(&self, arn: &str) -> KinesisResult<Option<Arc<Policy>>> {
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

impl Caller {
    /// Authorizes the caller's action on `resource` (an ARN of the caller's
    /// account, or `*`), with the resource's policy if it has one.
    pub async fn authorize(&self, resource: &str) -> KinesisResult<()> {
        let resource_policy = if resource == "*" {
            None
        } else {
            self.resource_policies.get(resource).await?
        };
        let root = matches!(self.principal, Principal::Root { .. });
        if root && (resource_policy.is_none() || ROOT_RECOVERY.contains(&self.action.as_str())) {
            return Ok(());
        }
        let context = self.context();
        let request = Request {
            principal: &self.principal,
            action: &self.action,
            resource,
            resource_account: &self.account_id,
            context: &context,
        };
        let decision =
            freshet_policy::evaluate(&request, &self.policies, resource_policy.as_deref());
        match decision.message(&request) {
            None => Ok(()),
            Some(message) => {
                tracing::info!(principal = %self.principal.arn(), action = %self.action, resource, ?decision, "access denied");
                Err(KinesisError::new(ErrorCode::AccessDenied, message))
            }
        }
    }

    /// Authorizes the caller's action on its stream `stream_name`.
    pub async fn authorize_stream(&self, stream_name: &str) -> KinesisResult<()> {
        let arn = StreamArn::new(&self.region, &self.account_id, stream_name).to_string();
        self.authorize(&arn).await
    }

    /// The condition keys a request carries.
    fn context(&self) -> Context {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        let mut context = Context::default()
            .with(
                "aws:CurrentTime",
                iso8601(i64::try_from(now).unwrap_or(i64::MAX / 2)),
            )
            .with("aws:EpochTime", now.to_string())
            .with("aws:PrincipalArn", self.principal.arn())
            .with("aws:PrincipalAccount", self.account_id.clone())
            .with("aws:RequestedRegion", self.region.clone())
            .with("aws:SecureTransport", "false");
        if let Principal::User { name, .. } = &self.principal {
            context = context.with("aws:username", name.clone());
        }
        if let Some(source) = self.source {
            context = context.with("aws:SourceIp", source.to_string());
        }
        context
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn alice(policies: &[&str]) -> Caller {
        let nowhere =
            freshet_server::grpc_channel("127.0.0.1:1", &freshet_server::InternalToken::none())
                .expect("a lazy channel");
        Caller {
            resource_policies: Arc::new(ResourcePolicies::new(ControlPlaneClient::new(nowhere))),
            account_id: "111122223333".into(),
            principal: Principal::User {
                account: "111122223333".parse().expect("account"),
                name: "alice".into(),
            },
            region: "us-east-1".into(),
            policies: policies
                .iter()
                .map(|p| Policy::parse(p, PolicyKind::Identity).expect("policy"))
                .collect::<Vec<_>>()
                .into(),
            action: "kinesis:PutRecord".into(),
            source: Some("127.0.0.1".parse().expect("ip")),
        }
    }

    #[tokio::test]
    async fn users_need_a_policy_and_roots_do_not() {
        let refused = alice(&[]).authorize("*").await.expect_err("no policy");
        assert_eq!(refused.exception(), "AccessDeniedException");
        assert!(refused.message.starts_with(
            "User: arn:aws:iam::111122223333:user/alice is not authorized to perform: kinesis:PutRecord on resource: *"
        ));
        let allowed = alice(&[
            r#"{"Statement":{"Effect":"Allow","Action":"kinesis:Put*","Resource":"*","Condition":{"IpAddress":{"aws:SourceIp":"127.0.0.0/8"},"StringEquals":{"aws:username":"alice"}}}}"#,
        ]);
        assert!(allowed.authorize("*").await.is_ok());
        let root = Caller {
            principal: Principal::Root {
                account: "111122223333".parse().expect("account"),
            },
            policies: Arc::from([]),
            ..alice(&[])
        };
        assert!(root.authorize("*").await.is_ok());
    }
}
