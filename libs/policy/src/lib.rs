//! `freshet-policy`: IAM-style policies — documents in IAM's JSON grammar
//! (`document.rs`), wildcards (`pattern.rs`), conditions (`condition.rs`) —
//! and [`evaluate`], the decision IAM documents for a request, as a pure
//! function.
//!
//! The rule, in order:
//! 1. an explicit `Deny` in any policy that applies wins;
//! 2. the root of the resource's own account may do anything;
//! 3. in the resource's account, an `Allow` from the caller's identity
//!    policies or from a resource policy naming the caller itself
//!    suffices (one naming only the account delegates to the account: its
//!    users still need an identity allow);
//! 4. from another account, the resource policy must allow the caller *and*
//!    the caller's own account must (its root always does; a user needs an
//!    identity policy allowing it);
//! 5. otherwise, an implicit deny.

mod condition;
mod document;
mod error;
#[doc(hidden)]
pub mod fuzzing;
mod pattern;
mod strict_json;

pub use condition::Context;
pub use document::{Effect, Matcher, Policy, PolicyKind, Principals, Statement};
pub use error::PolicyError;
pub use pattern::Pattern;

use freshet_types::Principal;

/// One request, as the evaluator sees it.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    pub principal: &'a Principal,
    /// `kinesis:PutRecord`.
    pub action: &'a str,
    /// The ARN acted on (a stream's, a consumer's, or `*` for account-wide
    /// operations such as ListStreams).
    pub resource: &'a str,
    /// The account that owns the resource.
    pub resource_account: &'a str,
    pub context: &'a Context,
}

/// Where a deny came from (it shapes AWS's message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DenySource {
    IdentityPolicy,
    ResourcePolicy,
}

/// The outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    Allow,
    ExplicitDeny(DenySource),
    /// Nothing allowed it; `cross_account` tells which policy was missing.
    ImplicitDeny {
        cross_account: bool,
    },
}

impl Decision {
    /// AWS's AccessDeniedException message for a refusal.
    pub fn message(&self, request: &Request<'_>) -> Option<String> {
        let head = format!(
            "User: {} is not authorized to perform: {} on resource: {}",
            request.principal.arn(),
            request.action,
            request.resource
        );
        match self {
            Decision::Allow => None,
            Decision::ExplicitDeny(DenySource::IdentityPolicy) => Some(format!(
                "{head} with an explicit deny in an identity-based policy"
            )),
            Decision::ExplicitDeny(DenySource::ResourcePolicy) => Some(format!(
                "{head} with an explicit deny in a resource-based policy"
            )),
            Decision::ImplicitDeny {
                cross_account: true,
            } => Some(format!(
                "{head} because no resource-based policy allows the {} action",
                request.action
            )),
            Decision::ImplicitDeny {
                cross_account: false,
            } => Some(format!(
                "{head} because no identity-based policy allows the {} action",
                request.action
            )),
        }
    }
}

/// How a resource-policy statement names the caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Named {
    No,
    /// By its own ARN, as `*`, or (for a root) by its account.
    Directly,
    /// By its account only: a grant to the account, which its users reach
    /// only through their own identity policies.
    ViaAccount,
}

fn named(principals: &Principals, caller: &Principal) -> Named {
    let listed = match principals {
        Principals::Anyone => return Named::Directly,
        Principals::Aws(listed) => listed,
    };
    let account = caller.account().as_str();
    let root_arn = format!("arn:aws:iam::{account}:root");
    let caller_arn = caller.arn();
    let mut named = Named::No;
    for p in listed {
        if *p == caller_arn {
            return Named::Directly;
        }
        if p == account || *p == root_arn {
            named = if matches!(caller, Principal::Root { .. }) {
                Named::Directly
            } else {
                Named::ViaAccount
            };
        }
    }
    named
}

/// What the statements of some policies say about a request.
#[derive(Debug, Default, Clone, Copy)]
struct Verdict {
    /// An Allow that names the caller itself (always, for identity policies).
    allows: bool,
    /// An Allow that names only the caller's account.
    allows_account: bool,
    denies: bool,
}

fn verdict<'p>(
    statements: impl Iterator<Item = &'p Statement>,
    request: &Request<'_>,
    resource_policy: bool,
) -> Verdict {
    let mut verdict = Verdict::default();
    for statement in statements {
        let matches = statement.actions.matches(request.action)
            && statement.resources.matches(request.resource)
            && statement
                .conditions
                .iter()
                .all(|c| c.holds(request.context));
        if !matches {
            continue;
        }
        let how = if resource_policy {
            statement
                .principals
                .as_ref()
                .map_or(Named::No, |p| named(p, request.principal))
        } else {
            Named::Directly
        };
        match (statement.effect, how) {
            (_, Named::No) => {}
            // A deny of an account binds every principal in it.
            (Effect::Deny, _) => verdict.denies = true,
            (Effect::Allow, Named::Directly) => verdict.allows = true,
            (Effect::Allow, Named::ViaAccount) => verdict.allows_account = true,
        }
    }
    verdict
}

/// The decision for `request`, given the caller's identity policies and the
/// resource's policy (if it has one).
pub fn evaluate(
    request: &Request<'_>,
    identity_policies: &[Policy],
    resource_policy: Option<&Policy>,
) -> Decision {
    let identity = verdict(
        identity_policies.iter().flat_map(|p| &p.statements),
        request,
        false,
    );
    let resource = verdict(
        resource_policy.into_iter().flat_map(|p| &p.statements),
        request,
        true,
    );
    if identity.denies {
        return Decision::ExplicitDeny(DenySource::IdentityPolicy);
    }
    if resource.denies {
        return Decision::ExplicitDeny(DenySource::ResourcePolicy);
    }
    let is_root = matches!(request.principal, Principal::Root { .. });
    let same_account = request.principal.account().as_str() == request.resource_account;
    // A root may do anything its own account may: within it, everything.
    let own_account_allows = is_root || identity.allows;
    if same_account {
        // A resource policy naming only the account delegates to it: its
        // users still need an identity allow.
        if own_account_allows || resource.allows {
            return Decision::Allow;
        }
        return Decision::ImplicitDeny {
            cross_account: false,
        };
    }
    let resource_allows = resource.allows || resource.allows_account;
    match (resource_allows, own_account_allows) {
        (true, true) => Decision::Allow,
        (false, _) => Decision::ImplicitDeny {
            cross_account: true,
        },
        (true, false) => Decision::ImplicitDeny {
            cross_account: false,
        },
    }
}

#[cfg(test)]
mod tests;
