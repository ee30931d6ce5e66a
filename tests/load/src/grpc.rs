//! gRPC channels to the services and what their errors mean.
//!
//! The channels are plain tonic ones with the deployment's internal token
//! (`authorization: Bearer …`, as `libs/server/src/internal_auth.rs`
//! expects) and nothing else: the services' own clients also open a trace
//! span per call, which a load generator sharing two cores with the
//! services should not spend CPU on.

use std::time::Duration;

use anyhow::Context as _;
use freshet_proto::v1::control_plane_client::ControlPlaneClient;
use freshet_proto::v1::membership_client::MembershipClient;
use freshet_proto::v1::shard_map_cache_client::ShardMapCacheClient;
use freshet_proto::v1::storage_client::StorageClient;
use freshet_proto::v1::timer_client::TimerClient;
use tonic::metadata::{Ascii, MetadataValue};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::{Channel, Endpoint};

use crate::driver::Failure;

/// Largest message accepted from a service (a shard-map snapshot, a large
/// read).
const MESSAGE_LIMIT: usize = 256 * 1024 * 1024;

/// Adds the internal token, if there is one, to every call.
#[derive(Clone, Default)]
pub struct Token(Option<MetadataValue<Ascii>>);

impl Token {
    pub fn new(token: Option<&str>) -> anyhow::Result<Token> {
        match token {
            None => Ok(Token(None)),
            Some(token) => {
                let value = MetadataValue::try_from(format!("Bearer {token}"))
                    .context("the internal token must be visible ASCII")?;
                Ok(Token(Some(value)))
            }
        }
    }
}

impl tonic::service::Interceptor for Token {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            request
                .metadata_mut()
                .insert("authorization", token.clone());
        }
        Ok(request)
    }
}

pub type AuthChannel = InterceptedService<Channel, Token>;

/// A lazily connected channel to `address` (`host:port` or a URL): one
/// HTTP/2 connection, as each service's clients use one per peer.
pub fn channel(address: &str, token: &Token) -> anyhow::Result<AuthChannel> {
    let url = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("bad gRPC address {address}"))?
        .connect_timeout(Duration::from_secs(3))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    Ok(InterceptedService::new(
        endpoint.connect_lazy(),
        token.clone(),
    ))
}

/// `count` channels to `address` (at least one), for spreading calls over
/// several connections.
pub fn channels(address: &str, token: &Token, count: usize) -> anyhow::Result<Vec<AuthChannel>> {
    (0..count.max(1)).map(|_| channel(address, token)).collect()
}

pub fn timer(channel: AuthChannel) -> TimerClient<AuthChannel> {
    TimerClient::new(channel)
}

pub fn membership(channel: AuthChannel) -> MembershipClient<AuthChannel> {
    MembershipClient::new(channel).max_decoding_message_size(MESSAGE_LIMIT)
}

pub fn cache(channel: AuthChannel) -> ShardMapCacheClient<AuthChannel> {
    ShardMapCacheClient::new(channel).max_decoding_message_size(MESSAGE_LIMIT)
}

pub fn control_plane(channel: AuthChannel) -> ControlPlaneClient<AuthChannel> {
    ControlPlaneClient::new(channel).max_decoding_message_size(MESSAGE_LIMIT)
}

pub fn storage(channel: AuthChannel) -> StorageClient<AuthChannel> {
    StorageClient::new(channel)
        .max_decoding_message_size(MESSAGE_LIMIT)
        .max_encoding_message_size(MESSAGE_LIMIT)
}

/// A request with a deadline the server sees too.
pub fn request<T>(message: T, timeout: Duration) -> tonic::Request<T> {
    let mut request = tonic::Request::new(message);
    request.set_timeout(timeout);
    request
}

/// The kind of a failed call: the gRPC code, then the Freshet error code
/// the service put in its `freshet-error` metadata (absent when tonic made
/// the status itself: a refused connection, a passed deadline). A control
/// plane's LimitExceeded for a call rate is told apart from one for a
/// quota.
pub fn kind_of(status: &tonic::Status) -> String {
    let code = format!("{:?}", status.code());
    let freshet = status
        .metadata()
        .get(freshet_errors::METADATA_KEY)
        .and_then(|value| value.to_str().ok());
    match freshet {
        Some(name) if name == "LimitExceeded" && status.message().starts_with("Rate exceeded") => {
            format!("{code}/{name} (rate)")
        }
        Some(name) => format!("{code}/{name}"),
        None => code,
    }
}

/// A failed call as the driver counts it.
pub fn failure(status: tonic::Status) -> Failure {
    Failure::new(kind_of(&status), status.message().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use freshet_errors::ErrorCode;

    #[test]
    fn kinds_name_the_grpc_code_and_freshets_code() {
        let throttled =
            ErrorCode::LimitExceeded.status("Rate exceeded for CreateStream for account 1.");
        assert_eq!(
            kind_of(&throttled),
            "ResourceExhausted/LimitExceeded (rate)"
        );
        let quota = ErrorCode::LimitExceeded.status("This request would exceed the shard limit");
        assert_eq!(kind_of(&quota), "ResourceExhausted/LimitExceeded");
        let refused = ErrorCode::NotWritten.status("stale epoch");
        assert_eq!(kind_of(&refused), "FailedPrecondition/NotWritten");
        assert_eq!(
            kind_of(&tonic::Status::unavailable("connection refused")),
            "Unavailable"
        );
    }

    #[test]
    fn a_token_is_sent_as_a_bearer_credential() {
        use tonic::service::Interceptor as _;
        let mut token = Token::new(Some("a-deployment-token-1234")).expect("token");
        let request = token.call(tonic::Request::new(())).expect("passes");
        assert_eq!(
            request
                .metadata()
                .get("authorization")
                .map(|v| v.to_str().ok()),
            Some(Some("Bearer a-deployment-token-1234"))
        );
        let mut none = Token::default();
        let request = none.call(tonic::Request::new(())).expect("passes");
        assert!(request.metadata().get("authorization").is_none());
        assert!(Token::new(Some("bad\ntoken")).is_err());
    }
}
