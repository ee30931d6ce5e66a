//! What every internal gRPC server records about each call it answers:
//! `freshet_grpc_server_requests_total{rpc_service,rpc_method,code}` and
//! `freshet_grpc_server_duration_seconds{rpc_service,rpc_method}`, and the
//! call's status on its trace span (`otel.status_code` = error for any
//! code but OK). Duration runs until the response headers: the whole call
//! for a unary RPC, the time to the first message for a stream.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Instant;

use freshet_metrics::{Buckets, Counter, EncodeLabelSet, Family, HistogramFamily, Registry};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct CallLabels {
    rpc_service: String,
    rpc_method: String,
    code: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MethodLabels {
    rpc_service: String,
    rpc_method: String,
}

/// A server's call counters, shared by every connection.
#[derive(Clone)]
pub struct ObserveCallsLayer {
    calls: Family<CallLabels, Counter>,
    durations: HistogramFamily<MethodLabels>,
}

impl ObserveCallsLayer {
    pub fn register(registry: &Registry) -> ObserveCallsLayer {
        ObserveCallsLayer {
            calls: registry.counter_family(
                "freshet_grpc_server_requests",
                "gRPC calls answered, by method and status code.",
            ),
            durations: registry.histogram_family(
                "freshet_grpc_server_duration_seconds",
                "Time from a gRPC call's arrival to its response headers.",
                Buckets::Seconds,
            ),
        }
    }
}

impl<S> tower::Layer<S> for ObserveCallsLayer {
    type Service = ObserveCalls<S>;

    fn layer(&self, inner: S) -> ObserveCalls<S> {
        ObserveCalls {
            inner,
            layer: self.clone(),
        }
    }
}

#[derive(Clone)]
pub struct ObserveCalls<S> {
    inner: S,
    layer: ObserveCallsLayer,
}

/// The gRPC status a response carries in its headers (a trailers-only
/// error); a call whose headers carry none answered OK so far.
pub(crate) fn grpc_status_of(headers: &http::HeaderMap) -> tonic::Code {
    headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<i32>().ok())
        .map_or(tonic::Code::Ok, tonic::Code::from_i32)
}

/// gRPC's canonical name of `code` (`OK`, `UNAVAILABLE`, ...), as the
/// `code` label carries it.
pub(crate) fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code::*;
    match code {
        Ok => "OK",
        Cancelled => "CANCELLED",
        Unknown => "UNKNOWN",
        InvalidArgument => "INVALID_ARGUMENT",
        DeadlineExceeded => "DEADLINE_EXCEEDED",
        NotFound => "NOT_FOUND",
        AlreadyExists => "ALREADY_EXISTS",
        PermissionDenied => "PERMISSION_DENIED",
        ResourceExhausted => "RESOURCE_EXHAUSTED",
        FailedPrecondition => "FAILED_PRECONDITION",
        Aborted => "ABORTED",
        OutOfRange => "OUT_OF_RANGE",
        Unimplemented => "UNIMPLEMENTED",
        Internal => "INTERNAL",
        Unavailable => "UNAVAILABLE",
        DataLoss => "DATA_LOSS",
        Unauthenticated => "UNAUTHENTICATED",
    }
}

/// Marks `span` (declared with `otel.status_code` and
/// `rpc.grpc.status_code` fields) with the call's outcome.
pub(crate) fn record_span_status(span: &tracing::Span, code: tonic::Code) {
    span.record("rpc.grpc.status_code", code as i32);
    if code != tonic::Code::Ok {
        span.record("otel.status_code", "error");
    }
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

impl<S, B, R> tower::Service<http::Request<B>> for ObserveCalls<S>
where
    S: tower::Service<http::Request<B>, Response = http::Response<R>>,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    R: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let started = Instant::now();
        let (service, method) = freshet_telemetry::rpc_parts(request.uri().path());
        let method = MethodLabels {
            rpc_service: service.to_owned(),
            rpc_method: method.to_owned(),
        };
        let layer = self.layer.clone();
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            let code = match &response {
                Ok(response) => grpc_status_of(response.headers()),
                Err(_) => tonic::Code::Internal,
            };
            record_span_status(&tracing::Span::current(), code);
            layer
                .durations
                .get_or_create(&method)
                .observe(started.elapsed().as_secs_f64());
            layer
                .calls
                .get_or_create(&CallLabels {
                    rpc_service: method.rpc_service,
                    rpc_method: method.rpc_method,
                    code: code_name(code).to_owned(),
                })
                .inc();
            response
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_split_into_service_and_method() {
        assert_eq!(
            freshet_telemetry::rpc_parts("/freshet.v1.Storage/Append"),
            ("freshet.v1.Storage", "Append")
        );
        assert_eq!(freshet_telemetry::rpc_parts("/odd"), ("odd", ""));
    }

    #[test]
    fn a_trailers_only_error_is_read_from_the_headers() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_status_of(&headers), tonic::Code::Ok);
        headers.insert("grpc-status", http::HeaderValue::from_static("14"));
        assert_eq!(grpc_status_of(&headers), tonic::Code::Unavailable);
    }
}
