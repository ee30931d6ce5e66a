//! Resource policies: PutResourcePolicy, GetResourcePolicy and
//! DeleteResourcePolicy on a stream's ARN. Only identities of the account
//! that owns the stream may manage its policy; the document must be a valid
//! resource policy (it names principals) before anything is stored.
//! Consumers arrive with enhanced fan-out, so their ARNs are not found yet.

use freshet_errors::ErrorCode;
use freshet_policy::{Policy, PolicyKind};
use freshet_proto::v1::{
    DeleteResourcePolicyRequest, GetResourcePolicyRequest, PutResourcePolicyRequest,
};
use freshet_types::StreamArn;
use serde::Deserialize;
use serde_json::{json, Value};

use super::streams::fetch_stream;
use crate::auth::Caller;
use crate::error::{KinesisError, KinesisResult, Violations};
use crate::Frontend;

/// The largest resource policy Kinesis accepts.
const MAX_POLICY_BYTES: usize = 20 * 1024;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub struct ResourcePolicyInput {
    #[serde(rename = "ResourceARN")]
    pub resource_arn: Option<String>,
    pub stream_id: Option<String>,
    pub policy: Option<String>,
}

/// Validates the ARN; the stream it names, once the caller is shown to own
/// it and to be allowed the operation.
async fn owned_stream(
    frontend: &Frontend,
    caller: &Caller,
    input: &ResourcePolicyInput,
    violations: Violations,
) -> KinesisResult<StreamArn> {
    let mut violations = violations;
    super::check_resource_arn(
        input.resource_arn.as_deref(),
        input.stream_id.as_deref(),
        &mut violations,
    );
    let arn_text = input.resource_arn.as_deref().unwrap_or_default();
    violations.into_result()?;
    let Some(arn) = StreamArn::parse(arn_text).filter(|arn| {
        !arn.stream_name.contains('/') && freshet_types::is_valid_stream_name(&arn.stream_name)
    }) else {
        return Err(KinesisError::resource_not_found(format!(
            "Resource {arn_text} not found."
        )));
    };
    if arn.account_id != caller.account_id {
        return Err(KinesisError::new(
            ErrorCode::AccessDenied,
            format!(
                "User: {} is not authorized to perform: {} on resource: {arn_text} because it does not belong to the resource's account",
                caller.principal.arn(),
                caller.action
            ),
        ));
    }
    // Streams live in a region: this endpoint manages the request's.
    let stream = caller.own_stream(&arn.stream_name);
    if arn.region != stream.region {
        return Err(KinesisError::resource_not_found(format!(
            "Resource {arn_text} not found."
        )));
    }
    caller.authorize_stream(&stream).await?;
    fetch_stream(frontend, &stream, "DescribeStreamSummary").await?;
    Ok(stream)
}

pub async fn put_resource_policy(
    frontend: &Frontend,
    caller: &Caller,
    input: ResourcePolicyInput,
) -> KinesisResult<()> {
    let mut violations = Violations::default();
    violations.check_required(input.policy.as_ref(), "policy");
    let document = input.policy.clone().unwrap_or_default();
    // The model's checks (ResourceARN's among them) come first: the size
    // is a limit of the service, not of the model.
    let arn = owned_stream(frontend, caller, &input, violations).await?;
    if document.len() > MAX_POLICY_BYTES {
        return Err(KinesisError::invalid_argument(format!(
            "The policy is {} bytes; a resource policy may have at most {MAX_POLICY_BYTES}.",
            document.len()
        )));
    }
    Policy::parse(&document, PolicyKind::Resource)
        .map_err(|error| KinesisError::invalid_argument(format!("Invalid policy: {error}")))?;
    let resource_arn = arn.to_string();
    frontend
        .control_plane
        .clone()
        .put_resource_policy(PutResourcePolicyRequest {
            resource_arn: resource_arn.clone(),
            account_id: caller.account_id.clone(),
            document,
        })
        .await
        .map_err(|status| KinesisError::from_status(&status))?;
    frontend.resource_policies.forget(&resource_arn);
    Ok(())
}

pub async fn get_resource_policy(
    frontend: &Frontend,
    caller: &Caller,
    input: ResourcePolicyInput,
) -> KinesisResult<Value> {
    let arn = owned_stream(frontend, caller, &input, Violations::default()).await?;
    let stored = frontend
        .control_plane
        .clone()
        .get_resource_policy(GetResourcePolicyRequest {
            resource_arn: arn.to_string(),
        })
        .await
        .map_err(|status| KinesisError::from_status(&status))?
        .into_inner();
    // A resource without a policy answers an empty document.
    let policy = if stored.found {
        stored.document
    } else {
        "{}".to_owned()
    };
    Ok(json!({ "Policy": policy }))
}

pub async fn delete_resource_policy(
    frontend: &Frontend,
    caller: &Caller,
    input: ResourcePolicyInput,
) -> KinesisResult<()> {
    let arn = owned_stream(frontend, caller, &input, Violations::default()).await?;
    let resource_arn = arn.to_string();
    frontend
        .control_plane
        .clone()
        .delete_resource_policy(DeleteResourcePolicyRequest {
            resource_arn: resource_arn.clone(),
        })
        .await
        .map_err(|status| KinesisError::from_status(&status))?;
    frontend.resource_policies.forget(&resource_arn);
    Ok(())
}
