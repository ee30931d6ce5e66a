//! Services authenticate each other with a per-deployment token
//! (`FRESHET_INTERNAL_TOKEN`): every internal call carries it as
//! `authorization: Bearer <token>`, and every internal server refuses a
//! call without it (UNAUTHENTICATED) — except the standard health checks,
//! which probes make without credentials. Secure mode requires a token;
//! development mode runs without one. (Mutual TLS replaces this in the
//! encryption issue.)

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tonic::metadata::{Ascii, MetadataValue};

/// The path prefix of the health service, open to anyone.
const HEALTH_PATH: &str = "/grpc.health.v1.Health/";

/// The deployment's internal credential, or none (development).
#[derive(Clone, Default)]
pub struct InternalToken(Option<Arc<str>>);

impl std::fmt::Debug for InternalToken {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(_) => f.write_str("InternalToken(..)"),
            None => f.write_str("InternalToken(none)"),
        }
    }
}

/// A token that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum BadInternalToken {
    #[error("FRESHET_INTERNAL_TOKEN must be 16 to 512 visible ASCII characters")]
    Malformed,
    #[error("FRESHET_ADMIN_TOKEN must be 16 to 512 visible ASCII characters")]
    MalformedAdmin,
    #[error("secure mode (FRESHET_AUTH=sigv4) needs FRESHET_INTERNAL_TOKEN, the credential the services present to each other")]
    Missing,
}

impl InternalToken {
    /// No token: internal calls are not authenticated (development only).
    pub fn none() -> InternalToken {
        InternalToken(None)
    }

    pub fn new(token: &str) -> Result<InternalToken, BadInternalToken> {
        let well_formed =
            (16..=512).contains(&token.len()) && token.bytes().all(|b| b.is_ascii_graphic());
        if well_formed {
            Ok(InternalToken(Some(Arc::from(token))))
        } else {
            Err(BadInternalToken::Malformed)
        }
    }

    pub fn is_set(&self) -> bool {
        self.0.is_some()
    }

    fn header_value(&self) -> Option<MetadataValue<Ascii>> {
        let token = self.0.as_deref()?;
        MetadataValue::try_from(format!("Bearer {token}")).ok()
    }

    /// Whether an `authorization` header value presents this token (always
    /// true when there is none to present). Compared in constant time.
    fn admits(&self, presented: Option<&[u8]>) -> bool {
        let Some(token) = self.0.as_deref() else {
            return true;
        };
        let Some(presented) = presented.and_then(|value| value.strip_prefix(b"Bearer ")) else {
            return false;
        };
        let expected = token.as_bytes();
        presented.len() == expected.len()
            && presented
                .iter()
                .zip(expected)
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0
    }
}

/// The internal token flag every service flattens in.
#[derive(Debug, Clone, clap::Args)]
pub struct InternalTokenFlag {
    /// Credential the deployment's services present to each other
    /// (required in secure mode; 16+ characters).
    #[arg(long, env = "FRESHET_INTERNAL_TOKEN", hide_env_values = true)]
    pub internal_token: Option<String>,
}

impl InternalTokenFlag {
    /// The token; in secure mode there must be one.
    pub fn token_for(&self, mode: crate::AuthMode) -> Result<InternalToken, BadInternalToken> {
        match (self.internal_token.as_deref(), mode) {
            (Some(token), _) => InternalToken::new(token),
            (None, crate::AuthMode::Sigv4) => Err(BadInternalToken::Missing),
            (None, crate::AuthMode::Development) => Ok(InternalToken::none()),
        }
    }
}

/// What every outgoing internal call carries: the caller's trace context
/// and the deployment's token (and, on an operator's channel, the admin
/// token).
#[derive(Debug, Clone, Default)]
pub struct OutgoingCall {
    token: Option<MetadataValue<Ascii>>,
    admin: AdminToken,
}

impl OutgoingCall {
    pub fn new(token: &InternalToken) -> OutgoingCall {
        OutgoingCall {
            token: token.header_value(),
            admin: AdminToken::default(),
        }
    }

    /// Calls that present `admin` as well.
    pub fn with_admin(self, admin: &AdminToken) -> OutgoingCall {
        OutgoingCall {
            admin: admin.clone(),
            ..self
        }
    }
}

impl tonic::service::Interceptor for OutgoingCall {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        // Called inside the client span `TracedChannel` opens: the callee's
        // span becomes its child.
        freshet_telemetry::inject_current_context(request.metadata_mut());
        if let Some(token) = &self.token {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        self.admin.attach(&mut request);
        Ok(request)
    }
}

/// The server side: refuses calls that do not present the token.
#[derive(Debug, Clone, Default)]
pub struct RequireTokenLayer {
    token: InternalToken,
}

impl RequireTokenLayer {
    pub fn new(token: &InternalToken) -> RequireTokenLayer {
        RequireTokenLayer {
            token: token.clone(),
        }
    }
}

impl<S> tower::Layer<S> for RequireTokenLayer {
    type Service = RequireToken<S>;

    fn layer(&self, inner: S) -> RequireToken<S> {
        RequireToken {
            inner,
            token: self.token.clone(),
        }
    }
}

/// The metadata key an admin call carries its token in.
const ADMIN_TOKEN_HEADER: &str = "x-freshet-admin-token";

/// The operator's credential for admin calls — users, keys and their
/// policies (`FRESHET_ADMIN_TOKEN`) — kept apart from the internal token
/// every service holds, so a service (a frontend, say) that can resolve
/// keys cannot mint them. Sent as `x-freshet-admin-token: Bearer <token>`
/// on top of the internal token.
#[derive(Debug, Clone, Default)]
pub struct AdminToken(InternalToken);

/// What an admin call presented, measured against the deployment's
/// [`AdminToken`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AdminCheck {
    Admitted,
    /// The deployment has an admin token and the call did not present it.
    WrongToken,
    /// Secure mode without an admin token: admin calls are switched off.
    Disabled,
}

impl AdminToken {
    pub fn new(token: &str) -> Result<AdminToken, BadInternalToken> {
        InternalToken::new(token)
            .map(AdminToken)
            .map_err(|_| BadInternalToken::MalformedAdmin)
    }

    /// Adds the token to an outgoing admin call.
    pub fn attach<T>(&self, request: &mut tonic::Request<T>) {
        if let Some(value) = self.0.header_value() {
            request.metadata_mut().insert(ADMIN_TOKEN_HEADER, value);
        }
    }

    /// Whether `request` may make an admin call: it presents the token,
    /// or (development mode only) the deployment has none.
    pub fn check<T>(&self, request: &tonic::Request<T>, mode: crate::AuthMode) -> AdminCheck {
        let presented = request
            .metadata()
            .get(ADMIN_TOKEN_HEADER)
            .map(|value| value.as_bytes());
        match (self.0.is_set(), mode) {
            (true, _) if self.0.admits(presented) => AdminCheck::Admitted,
            (true, _) => AdminCheck::WrongToken,
            (false, crate::AuthMode::Development) => AdminCheck::Admitted,
            (false, crate::AuthMode::Sigv4) => AdminCheck::Disabled,
        }
    }
}

/// The admin token flag of the control plane and `freshet-admin`.
#[derive(Debug, Clone, clap::Args)]
pub struct AdminTokenFlag {
    /// Credential for admin calls (users, keys, policies); secure mode
    /// refuses them without one. 16+ characters; give it to operators and
    /// the control plane only.
    #[arg(long, env = "FRESHET_ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

impl AdminTokenFlag {
    pub fn token(&self) -> Result<AdminToken, BadInternalToken> {
        self.admin_token
            .as_deref()
            .map_or(Ok(AdminToken::default()), AdminToken::new)
    }
}

/// See [`RequireTokenLayer`].
#[derive(Debug, Clone)]
pub struct RequireToken<S> {
    inner: S,
    token: InternalToken,
}

type BoxedResponse<R, E> = Pin<Box<dyn Future<Output = Result<R, E>> + Send>>;

impl<S, B> tower::Service<http::Request<B>> for RequireToken<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<tonic::body::Body>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = S::Error;
    type Future = BoxedResponse<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let open = request.uri().path().starts_with(HEALTH_PATH);
        let presented = request
            .headers()
            .get(http::header::AUTHORIZATION)
            .map(|value| value.as_bytes());
        if open || self.token.admits(presented) {
            Box::pin(self.inner.call(request))
        } else {
            let refusal = tonic::Status::unauthenticated(
                "internal call without the deployment's token (FRESHET_INTERNAL_TOKEN)",
            );
            Box::pin(async move { Ok(refusal.into_http()) })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_admits_only_itself() {
        let token = InternalToken::new("a-deployment-token-1234").expect("valid");
        assert!(token.admits(Some(b"Bearer a-deployment-token-1234")));
        assert!(!token.admits(Some(b"Bearer a-deployment-token-1235")));
        assert!(!token.admits(Some(b"a-deployment-token-1234")));
        assert!(!token.admits(Some(b"Bearer ")));
        assert!(!token.admits(None));
        assert!(InternalToken::none().admits(None));
    }

    #[test]
    fn admin_calls_need_the_admin_token_and_secure_mode_needs_one_set() {
        let token = AdminToken::new("an-operator-token-5678").expect("valid");
        let mut call = tonic::Request::new(());
        assert_eq!(
            token.check(&call, crate::AuthMode::Sigv4),
            AdminCheck::WrongToken
        );
        token.attach(&mut call);
        assert_eq!(
            token.check(&call, crate::AuthMode::Sigv4),
            AdminCheck::Admitted
        );
        let other = AdminToken::new("an-operator-token-5679").expect("valid");
        assert_eq!(
            other.check(&call, crate::AuthMode::Development),
            AdminCheck::WrongToken
        );
        let none = AdminToken::default();
        assert_eq!(
            none.check(&tonic::Request::new(()), crate::AuthMode::Sigv4),
            AdminCheck::Disabled
        );
        assert_eq!(
            none.check(&tonic::Request::new(()), crate::AuthMode::Development),
            AdminCheck::Admitted
        );
        assert!(AdminToken::new("short").is_err());
    }

    #[test]
    fn secure_mode_needs_a_token() {
        let flag = InternalTokenFlag {
            internal_token: None,
        };
        assert!(matches!(
            flag.token_for(crate::AuthMode::Sigv4),
            Err(BadInternalToken::Missing)
        ));
        assert!(!flag
            .token_for(crate::AuthMode::Development)
            .expect("none")
            .is_set());
    }

    #[test]
    fn short_or_unprintable_tokens_are_refused() {
        assert!(InternalToken::new("short").is_err());
        assert!(InternalToken::new("has a space in it!!").is_err());
        assert!(InternalToken::new(&"x".repeat(513)).is_err());
        assert_eq!(
            format!(
                "{:?}",
                InternalToken::new("a-deployment-token-1234").expect("valid")
            ),
            "InternalToken(..)"
        );
    }
}
