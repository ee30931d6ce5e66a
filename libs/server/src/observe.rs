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

/// One call on its way through the server. Recorded once: when it is
/// answered, or — a deadline that fired, a client that went away — when
/// it is dropped unanswered (as CANCELLED), so the slowest calls do not
/// vanish from the counts.
struct ObservedCall {
    layer: ObserveCallsLayer,
    path: String,
    started: Instant,
    answered: bool,
}

impl ObservedCall {
    fn answered(&mut self, code: tonic::Code) {
        self.answered = true;
        self.record(code);
    }

    fn record(&self, code: tonic::Code) {
        record_span_status(&tracing::Span::current(), code);
        // Labels come from the path a caller chose: a method the server
        // does not serve, or a caller it refused, is counted as `unknown`,
        // so made-up paths cannot grow the series without bound.
        let (service, method) = match code {
            tonic::Code::Unimplemented | tonic::Code::Unauthenticated => ("unknown", "unknown"),
            _ => freshet_telemetry::rpc_parts(&self.path),
        };
        let method = MethodLabels {
            rpc_service: service.to_owned(),
            rpc_method: method.to_owned(),
        };
        self.layer
            .durations
            .get_or_create(&method)
            .observe(self.started.elapsed().as_secs_f64());
        self.layer
            .calls
            .get_or_create(&CallLabels {
                rpc_service: method.rpc_service,
                rpc_method: method.rpc_method,
                code: code_name(code).to_owned(),
            })
            .inc();
    }
}

impl Drop for ObservedCall {
    fn drop(&mut self) {
        if !self.answered {
            self.record(tonic::Code::Cancelled);
        }
    }
}

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
        let mut call = ObservedCall {
            layer: self.layer.clone(),
            path: request.uri().path().to_owned(),
            started: Instant::now(),
            answered: false,
        };
        let response = self.inner.call(request);
        Box::pin(async move {
            let response = response.await;
            let code = match &response {
                Ok(response) => grpc_status_of(response.headers()),
                Err(_) => tonic::Code::Internal,
            };
            call.answered(code);
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

    fn answering(
        code: &'static str,
    ) -> impl tower::Service<
        http::Request<()>,
        Response = http::Response<()>,
        Error = std::convert::Infallible,
        Future = std::future::Ready<Result<http::Response<()>, std::convert::Infallible>>,
    > + Clone {
        tower::service_fn(move |_request: http::Request<()>| {
            let mut response = http::Response::new(());
            response
                .headers_mut()
                .insert("grpc-status", http::HeaderValue::from_static(code));
            std::future::ready(Ok(response))
        })
    }

    fn request(path: &str) -> http::Request<()> {
        let mut request = http::Request::new(());
        *request.uri_mut() = path.parse().expect("a path");
        request
    }

    #[tokio::test]
    async fn made_up_paths_are_counted_as_unknown_not_as_new_series() {
        use tower::{Layer as _, ServiceExt as _};
        let registry = Registry::new();
        let layer = ObserveCallsLayer::register(&registry);
        for index in 0..20 {
            let path = format!("/made.up{index}/Method{index}");
            let service = layer.layer(answering("12"));
            service.oneshot(request(&path)).await.expect("answered");
        }
        let served = layer.layer(answering("0"));
        served
            .oneshot(request("/freshet.v1.Timer/Now"))
            .await
            .expect("answered");
        let text = registry.encode();
        assert!(!text.contains("made.up"), "{text}");
        assert!(
            text.contains("freshet_grpc_server_requests_total{rpc_service=\"unknown\",rpc_method=\"unknown\",code=\"UNIMPLEMENTED\"} 20"),
            "{text}"
        );
        assert!(
            text.contains("freshet_grpc_server_requests_total{rpc_service=\"freshet.v1.Timer\",rpc_method=\"Now\",code=\"OK\"} 1"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_call_dropped_before_its_answer_is_counted_as_cancelled() {
        use tower::Layer as _;
        use tower::Service as _;
        let registry = Registry::new();
        let layer = ObserveCallsLayer::register(&registry);
        let mut service = layer.layer(tower::service_fn(|_request: http::Request<()>| {
            std::future::pending::<Result<http::Response<()>, std::convert::Infallible>>()
        }));
        let call = service.call(request("/freshet.v1.Storage/Append"));
        drop(call);
        let text = registry.encode();
        assert!(
            text.contains("freshet_grpc_server_requests_total{rpc_service=\"freshet.v1.Storage\",rpc_method=\"Append\",code=\"CANCELLED\"} 1"),
            "{text}"
        );
    }

    #[test]
    fn a_trailers_only_error_is_read_from_the_headers() {
        let mut headers = http::HeaderMap::new();
        assert_eq!(grpc_status_of(&headers), tonic::Code::Ok);
        headers.insert("grpc-status", http::HeaderValue::from_static("14"));
        assert_eq!(grpc_status_of(&headers), tonic::Code::Unavailable);
    }
}
