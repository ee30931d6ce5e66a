//! The channel every internal gRPC client uses: each call made for a
//! request is a client span (`freshet.v1.Storage/Append`, kind client)
//! whose context travels in the request's `traceparent`, so the callee's
//! server span is its child; a call made outside any request travels
//! unsampled; and each call carries the deployment's tokens
//! ([`OutgoingCall`]).

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::body::Body;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;
use tracing::Instrument as _;

use crate::internal_auth::OutgoingCall;
use crate::observe::{grpc_status_of, record_span_status};

/// A lazily connected channel whose calls are traced and authenticated.
#[derive(Debug, Clone)]
pub struct TracedChannel {
    inner: Inner,
    /// Where the channel connects (`host:port`), as spans name the peer.
    address: std::sync::Arc<str>,
}

impl TracedChannel {
    pub fn new(channel: Channel, call: OutgoingCall, address: &str) -> TracedChannel {
        TracedChannel {
            inner: InterceptedService::new(channel, call),
            address: address.into(),
        }
    }
}

type Inner = InterceptedService<Channel, OutgoingCall>;
type InnerResponse = <Inner as tower::Service<http::Request<Body>>>::Response;
type InnerError = <Inner as tower::Service<http::Request<Body>>>::Error;
type ResponseFuture = Pin<Box<dyn Future<Output = Result<InnerResponse, InnerError>> + Send>>;

impl tower::Service<http::Request<Body>> for TracedChannel {
    type Response = InnerResponse;
    type Error = InnerError;
    type Future = ResponseFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Body>) -> Self::Future {
        // Outside any request — a heartbeat, a timer poll, an idle
        // catch-up — the call is marked not sampled: it is counted by the
        // callee's metrics, but is no trace of its own.
        if tracing::Span::current().is_none() {
            if let Ok(parent) =
                http::HeaderValue::from_str(&freshet_telemetry::unsampled_traceparent())
            {
                request.headers_mut().insert("traceparent", parent);
            }
            return Box::pin(self.inner.call(request));
        }
        let path = request.uri().path();
        let (service, method) = freshet_telemetry::rpc_parts(path);
        let span = tracing::info_span!(
            "grpc.client",
            otel.name = path.trim_start_matches('/'),
            otel.kind = "client",
            otel.status_code = tracing::field::Empty,
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
            rpc.grpc.status_code = tracing::field::Empty,
            server.address = &*self.address,
        );
        // The interceptor runs inside `call`, so it injects this span's
        // context, not the caller's.
        let response = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let response = response.await;
                let code = match &response {
                    Ok(response) => grpc_status_of(response.headers()),
                    // Unavailable: the call never got an answer.
                    Err(_) => tonic::Code::Unavailable,
                };
                record_span_status(&tracing::Span::current(), code);
                response
            }
            .instrument(span),
        )
    }
}
