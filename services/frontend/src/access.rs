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

use std::time::{SystemTime, UNIX_EPOCH};

use freshet_errors::ErrorCode;
use freshet_policy::{Context, Request};
use freshet_types::calendar::iso8601;
use freshet_types::{ConsumerArn, Principal, StreamArn};

use crate::auth::Caller;
use crate::error::{KinesisError, KinesisResult};

/// The operations an account's root may always perform on its own
/// resources, whatever their policy says, so it can never lock itself out.
const ROOT_RECOVERY: &[&str] = &[
    "kinesis:GetResourcePolicy",
    "kinesis:PutResourcePolicy",
    "kinesis:DeleteResourcePolicy",
];

impl Caller {
    /// Authorizes the caller's action on `resource` (an ARN of the caller's
    /// account, or `*`), with the resource's policy if it has one.
    pub async fn authorize(&self, resource: &str) -> KinesisResult<()> {
        self.authorize_in(resource, &self.account_id).await
    }

    /// Authorizes the caller's action on `stream`, which may belong to
    /// another account: then its resource policy must allow the caller.
    pub async fn authorize_stream(&self, stream: &StreamArn) -> KinesisResult<()> {
        self.authorize_in(&stream.to_string(), &stream.account_id)
            .await
    }

    /// Authorizes the caller's action on the consumer `arn`, whose stream
    /// may belong to another account (then the consumer's resource policy
    /// must allow the caller).
    pub async fn authorize_consumer(&self, arn: &ConsumerArn) -> KinesisResult<()> {
        self.authorize_in(&arn.to_string(), &arn.stream.account_id)
            .await
    }

    /// Authorizes `action` besides the caller's own on `stream` (an
    /// operation that also does another's work: CreateStream with Tags
    /// needs `kinesis:AddTagsToStream` too).
    pub async fn authorize_stream_also(
        &self,
        action: &str,
        stream: &StreamArn,
    ) -> KinesisResult<()> {
        self.authorize_as(action, &stream.to_string(), &stream.account_id)
            .await
    }

    /// A consumer ARN as this endpoint serves it: in the request's region
    /// (another region's consumer is not found here), in this deployment's
    /// partition.
    pub fn consumer_in_region(&self, arn: ConsumerArn) -> KinesisResult<ConsumerArn> {
        if arn.stream.region != self.region {
            return Err(KinesisError::resource_not_found(format!(
                "Consumer {arn} not found."
            )));
        }
        let stream = StreamArn::new(
            &arn.stream.region,
            &arn.stream.account_id,
            &arn.stream.stream_name,
        );
        Ok(ConsumerArn::new(
            stream,
            &arn.consumer_name,
            arn.created_epoch_seconds,
        ))
    }

    /// The caller's own stream called `name`, in the request's region.
    pub fn own_stream(&self, name: &str) -> StreamArn {
        StreamArn::new(&self.region, &self.account_id, name)
    }

    async fn authorize_in(&self, resource: &str, resource_account: &str) -> KinesisResult<()> {
        self.authorize_as(&self.action, resource, resource_account)
            .await
    }

    async fn authorize_as(
        &self,
        action: &str,
        resource: &str,
        resource_account: &str,
    ) -> KinesisResult<()> {
        let resource_policy = if resource == "*" {
            None
        } else {
            self.resource_policies.get(resource).await?
        };
        let own_root =
            matches!(self.principal, Principal::Root { .. }) && resource_account == self.account_id;
        if own_root && (resource_policy.is_none() || ROOT_RECOVERY.contains(&action)) {
            return Ok(());
        }
        let context = self.context();
        let request = Request {
            principal: &self.principal,
            action,
            resource,
            resource_account,
            context: &context,
        };
        let decision =
            freshet_policy::evaluate(&request, &self.policies, resource_policy.as_deref());
        match decision.message(&request) {
            None => Ok(()),
            Some(message) => {
                tracing::info!(principal = %self.principal.arn(), action, resource, ?decision, "access denied");
                Err(KinesisError::new(ErrorCode::AccessDenied, message))
            }
        }
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
    use std::sync::Arc;

    use freshet_policy::{Policy, PolicyKind};
    use freshet_proto::v1::control_plane_client::ControlPlaneClient;

    use super::*;
    use crate::resource_policies::ResourcePolicies;

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
