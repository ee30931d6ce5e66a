//! The wire: one `POST /` endpoint that reads `X-Amz-Target`, checks the
//! content type and credentials, dispatches, and writes Kinesis-shaped
//! responses and errors.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, HeaderValue, Method, StatusCode};
use tracing::Instrument as _;

use freshet_errors::ErrorCode;

use crate::auth::SignedParts;
use crate::cbor::Protocol;
use crate::error::{KinesisError, KinesisResult, INTERNAL_FAILURE_MESSAGE};
use crate::{ops, Frontend};

const MIB: usize = 1024 * 1024;
/// The largest body a record-writing operation may send: 10 MiB of data
/// (Kinesis's per-request maximum, and the largest record a stream may
/// allow), which base64 makes 4/3 as large, plus 1 MiB for partition keys,
/// hash keys and the JSON around them.
const RECORDS_BODY_LIMIT: usize = 10 * MIB / 3 * 4 + MIB;
/// The largest body of any other operation.
const OTHER_BODY_LIMIT: usize = MIB;
const TARGET_PREFIX: &str = "Kinesis_20131202.";

/// How many bytes of body `operation` may send; the body is read only up
/// to this, so a larger one costs no more memory than the limit.
fn body_limit(operation: &str) -> usize {
    match operation {
        "PutRecord" | "PutRecords" => RECORDS_BODY_LIMIT,
        _ => OTHER_BODY_LIMIT,
    }
}

/// The HTTP surface. At most `max_in_flight` requests are handled at once
/// (`--max-in-flight-requests`); the rest wait for a slot before their
/// bodies are read, so a surge of clients costs bounded memory: at most
/// that many bodies, each within its operation's [`body_limit`].
pub fn router(frontend: Arc<Frontend>, max_in_flight: usize) -> axum::Router {
    axum::Router::new()
        .fallback(handle)
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            max_in_flight.max(1),
        ))
        .with_state(frontend)
}

/// A Kinesis error body. A server-side failure's own message stays in the
/// logs (under the request id): clients never see worker ids, epochs or
/// paths.
/// Its name is in `x-amzn-ErrorType` too (the Java SDK reads it first).
fn error_response(error: &KinesisError, request_id: &str, protocol: Protocol) -> Response {
    let internal = error.http_status().is_server_error() && error.code != ErrorCode::NotImplemented;
    let message = if internal {
        INTERNAL_FAILURE_MESSAGE
    } else {
        error.message.as_str()
    };
    let body = serde_json::json!({ "__type": error.exception(), "message": message });
    let encoded = match protocol {
        Protocol::Json => Ok(body.to_string().into_bytes()),
        Protocol::Cbor => crate::cbor::value_as_cbor(&body),
    };
    let mut response = match encoded {
        Ok(bytes) => response(error.http_status(), bytes, request_id, protocol),
        Err(_) => response(error.http_status(), Vec::new(), request_id, protocol),
    };
    response.headers_mut().insert(
        "x-amzn-ErrorType",
        HeaderValue::from_static(error.exception()),
    );
    response
}

fn response(status: StatusCode, body: Vec<u8>, request_id: &str, protocol: Protocol) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(protocol.content_type()),
    );
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert("x-amzn-RequestId", value);
    }
    response
}

/// A 200 reply the operation wrote as JSON (`None`: no output), in the
/// request's protocol. A CBOR reply with no output is an empty map.
fn reply(json: Option<String>, request_id: &str, protocol: Protocol) -> Response {
    let encoded = match (json, protocol) {
        (None, Protocol::Json) => Ok(Vec::new()),
        (None, Protocol::Cbor) => Ok(vec![0xa0]),
        (Some(text), protocol) => protocol.encode(text.into_bytes()),
    };
    match encoded {
        Ok(bytes) => response(StatusCode::OK, bytes, request_id, protocol),
        Err(failure) => error_response(
            &KinesisError::internal(format!("encode the reply: {failure}")),
            request_id,
            protocol,
        ),
    }
}

/// A SubscribeToShard answer: its events are written as they are made,
/// chunked over HTTP/1.1, in DATA frames over HTTP/2 (their payloads in
/// the request's protocol).
fn event_stream_response(body: axum::body::Body, request_id: &str) -> Response {
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(crate::fan_out::event_stream::CONTENT_TYPE),
    );
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert("x-amzn-RequestId", value);
    }
    response
}

async fn handle(State(frontend): State<Arc<Frontend>>, request: Request) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    if request.method() == Method::GET && request.uri().path() == "/health" {
        return (StatusCode::OK, "ok").into_response();
    }
    // The protocol the caller speaks, also for its errors (JSON when it
    // names neither).
    let protocol = protocol_of(request.headers());
    let source = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        // An IPv4 client of a dual-stack listener arrives as ::ffff:a.b.c.d;
        // conditions and limits see it as the IPv4 address it is.
        .map(|info| info.0.ip().to_canonical());
    let (parts, body) = request.into_parts();
    let operation = parts
        .headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|target| target.strip_prefix(TARGET_PREFIX))
        .unwrap_or("")
        .to_owned();
    // One server span per call, named as OpenTelemetry's AWS conventions
    // name it (`Kinesis.PutRecord`); the operations add the stream, shard,
    // sequence number and record count as they learn them.
    let span = tracing::info_span!(
        "kinesis",
        otel.name = span_name(&operation),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        rpc.system = "aws-api",
        rpc.service = "Kinesis",
        rpc.method = %operation,
        aws.request_id = %request_id,
        aws.kinesis.stream_name = tracing::field::Empty,
        aws.kinesis.shard_id = tracing::field::Empty,
        aws.kinesis.sequence_number = tracing::field::Empty,
        messaging.batch.message_count = tracing::field::Empty,
        http.response.status_code = tracing::field::Empty,
        error.type = tracing::field::Empty,
        principal = tracing::field::Empty,
        region = tracing::field::Empty,
    );
    freshet_telemetry::set_parent_from_headers(&span, &parts.headers);
    let result = async {
        if parts.method != Method::POST {
            return Err(KinesisError::new(
                ErrorCode::OperationNotDetermined,
                "Unable to determine service/operation name to be authorized",
            ));
        }
        check_content_type(&parts.headers)?;
        let _entry = frontend.sources.enter(source)?;
        let admitted = frontend
            .auth
            .admit(&parts.headers, parts.uri.query(), source)
            .await?;
        let limit = body_limit(&operation);
        let deadline = tokio::time::Instant::now() + frontend.body_read_timeout;
        let _budget = reserve_body_budget(&frontend, &parts.headers, limit, deadline).await?;
        let body = tokio::time::timeout_at(deadline, axum::body::to_bytes(body, limit))
            .await
            .map_err(|_| {
                KinesisError::new(
                    ErrorCode::RequestTimeout,
                    format!(
                        "The request body did not arrive within {:?}.",
                        frontend.body_read_timeout
                    ),
                )
            })?
            .map_err(|_| {
                KinesisError::new(
                    ErrorCode::RequestTooLarge,
                    format!(
                        "Request body is larger than {limit} bytes, the most {operation} accepts."
                    ),
                )
            })?;
        let signed = SignedParts {
            method: parts.method.as_str(),
            path: parts.uri.path(),
            query: parts.uri.query(),
            authority: parts.uri.authority().map(|a| a.as_str()),
        };
        // The signature covers the body as sent; CBOR is read into the
        // JSON form the operations parse after it is checked.
        let caller = admitted.verify(&operation, &signed, &parts.headers, &body)?;
        let body = match protocol {
            Protocol::Json => body,
            Protocol::Cbor => crate::cbor::request_as_json(&body)
                .map(bytes::Bytes::from)
                .map_err(|error| KinesisError::serialization(error.to_string()))?,
        };
        let span = tracing::Span::current();
        span.record("principal", caller.principal.arn());
        span.record("region", caller.region.as_str());
        // The whole request, once its body is in: an operation stuck on
        // a dependency answers InternalFailure (which SDKs retry) rather
        // than holding its connection, its body and its places forever.
        let limit = frontend.request_timeout;
        tokio::time::timeout(
            limit,
            ops::serve(&frontend, &operation, &caller, &body, protocol),
        )
        .await
        .unwrap_or_else(|_| {
            Err(KinesisError::internal(format!(
                "{operation} did not finish within {limit:?}"
            )))
        })
    }
    .instrument(span.clone())
    .await;
    match result {
        Ok(ops::Reply::Json(json)) => reply(json, &request_id, protocol),
        Ok(ops::Reply::EventStream(body)) => event_stream_response(body, &request_id),
        Err(error) => {
            span.record("http.response.status_code", error.http_status().as_u16());
            span.record("error.type", error.exception());
            // A server span fails on the server's faults, not the caller's.
            if error.http_status().is_server_error() {
                span.record("otel.status_code", "error");
            }
            span.in_scope(|| {
                if error.http_status().is_server_error() {
                    tracing::warn!(code = error.exception(), message = %error.message, "request failed");
                } else {
                    tracing::debug!(code = error.exception(), message = %error.message, "request rejected");
                }
            });
            error_response(&error, &request_id, protocol)
        }
    }
}

/// The span name of a call to `operation`: `Kinesis.<operation>` for a
/// name shaped like one, so a caller cannot mint span names at will.
fn span_name(operation: &str) -> String {
    let shaped =
        (1..=64).contains(&operation.len()) && operation.bytes().all(|b| b.is_ascii_alphabetic());
    if shaped {
        format!("Kinesis.{operation}")
    } else {
        "Kinesis.Unknown".to_owned()
    }
}

/// Reserves room for the request's body in the frontend's body budget,
/// held until the request is answered: its declared length when it
/// declares one within `limit`, else `limit`. Waits until `deadline` at
/// most, then LimitExceededException.
async fn reserve_body_budget<'a>(
    frontend: &'a Frontend,
    headers: &HeaderMap,
    limit: usize,
    deadline: tokio::time::Instant,
) -> KinesisResult<tokio::sync::SemaphorePermit<'a>> {
    let declared = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|length| *length <= limit);
    let kib = declared.unwrap_or(limit).div_ceil(1024).max(1);
    let kib = u32::try_from(kib).unwrap_or(u32::MAX);
    tokio::time::timeout_at(deadline, frontend.body_budget.acquire_many(kib))
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            KinesisError::new(
                ErrorCode::LimitExceeded,
                "The frontend is holding as many request bodies as its memory budget allows; retry.",
            )
        })
}

/// The content type's essence (without parameters).
fn content_type_of(headers: &HeaderMap) -> &str {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    content_type.split(';').next().unwrap_or("").trim()
}

fn protocol_of(headers: &HeaderMap) -> Protocol {
    if content_type_of(headers) == crate::cbor::CONTENT_TYPE {
        Protocol::Cbor
    } else {
        Protocol::Json
    }
}

fn check_content_type(headers: &HeaderMap) -> KinesisResult<()> {
    match content_type_of(headers) {
        "application/x-amz-json-1.1" | "application/json" | "application/x-amz-cbor-1.1" | "" => {
            Ok(())
        }
        other => Err(KinesisError::serialization(format!(
            "Unsupported content type {other}"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use bytes::Bytes;
    use clap::Parser as _;
    use tower::ServiceExt as _;

    use super::*;

    fn request(body: Body) -> http::Request<Body> {
        http::Request::get("/health")
            .body(body)
            .expect("a well-formed request")
    }

    /// A ListStreams request with a development-mode signature.
    fn signed(body: Body) -> http::Request<Body> {
        http::Request::post("/")
            .header("x-amz-target", "Kinesis_20131202.ListStreams")
            .header("x-amz-date", "20260101T000000Z")
            .header(
                "authorization",
                format!(
                    "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host;x-amz-date;x-amz-target, Signature={}",
                    "0".repeat(64)
                ),
            )
            .body(body)
            .expect("a well-formed request")
    }

    /// A body that never arrives.
    fn pending_body() -> Body {
        Body::from_stream(futures::stream::pending::<Result<Bytes, std::io::Error>>())
    }

    fn from(mut request: http::Request<Body>, address: &str) -> http::Request<Body> {
        let address: std::net::SocketAddr = address.parse().expect("an address");
        request.extensions_mut().insert(ConnectInfo(address));
        request
    }

    async fn exception_of(response: Response) -> (StatusCode, String) {
        let status = response.status();
        let body = axum::body::to_bytes(response.into_body(), 1 << 20)
            .await
            .expect("a body");
        let value: serde_json::Value = serde_json::from_slice(&body).expect("json");
        (
            status,
            value["__type"].as_str().unwrap_or_default().to_owned(),
        )
    }

    #[tokio::test]
    async fn a_body_that_does_not_arrive_in_time_is_refused() {
        let config =
            crate::Config::parse_from(["freshet-frontend", "--body-read-timeout", "100ms"]);
        let frontend = Frontend::new(&config).expect("frontend");
        let answered = tokio::time::timeout(
            Duration::from_secs(5),
            router(frontend, 8).oneshot(signed(pending_body())),
        )
        .await
        .expect("answered at the deadline")
        .expect("infallible");
        assert_eq!(
            exception_of(answered).await,
            (
                StatusCode::REQUEST_TIMEOUT,
                "RequestTimeoutException".to_owned()
            )
        );
    }

    #[tokio::test]
    async fn one_source_cannot_take_every_place() {
        let config =
            crate::Config::parse_from(["freshet-frontend", "--max-requests-per-source", "1"]);
        let frontend = Frontend::new(&config).expect("frontend");
        let router = router(frontend, 8);
        let mut stuck = Box::pin(
            router
                .clone()
                .oneshot(from(signed(pending_body()), "192.0.2.1:1000")),
        );
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut stuck)
            .await
            .is_err());
        let same_source = router
            .clone()
            .oneshot(from(signed(Body::empty()), "192.0.2.1:1001"))
            .await
            .expect("infallible");
        assert_eq!(
            exception_of(same_source).await,
            (StatusCode::BAD_REQUEST, "LimitExceededException".to_owned())
        );
        // Another source gets in (and on to its own answer: no
        // credentials at all).
        let other_source = router
            .clone()
            .oneshot(from(
                http::Request::post("/")
                    .body(Body::empty())
                    .expect("a request"),
                "192.0.2.2:1000",
            ))
            .await
            .expect("infallible");
        assert_eq!(
            exception_of(other_source).await.1,
            "MissingAuthenticationTokenException"
        );
    }

    #[tokio::test]
    async fn an_operation_stuck_on_a_dependency_answers_within_the_request_timeout() {
        // A control plane that accepts connections and never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = silent.local_addr().expect("an address").to_string();
        let config = crate::Config::parse_from([
            "freshet-frontend",
            "--request-timeout",
            "200ms",
            "--control-plane-addr",
            &address,
        ]);
        let frontend = Frontend::new(&config).expect("frontend");
        let answered = tokio::time::timeout(
            Duration::from_secs(5),
            router(frontend, 8).oneshot(signed(Body::from("{}"))),
        )
        .await
        .expect("answered at the request deadline")
        .expect("infallible");
        assert_eq!(
            exception_of(answered).await,
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "InternalFailure".to_owned()
            )
        );
        drop(silent);
    }

    #[tokio::test]
    async fn bodies_share_one_memory_budget() {
        let config = crate::Config::parse_from([
            "freshet-frontend",
            "--body-budget-mib",
            "1",
            "--body-read-timeout",
            "200ms",
        ]);
        let frontend = Frontend::new(&config).expect("frontend");
        let router = router(frontend, 8);
        // Declares (and so reserves) the whole budget, then sends nothing.
        let mut holder = signed(pending_body());
        holder.headers_mut().insert(
            http::header::CONTENT_LENGTH,
            HeaderValue::from_static("1048576"),
        );
        let mut holder = Box::pin(router.clone().oneshot(holder));
        assert!(tokio::time::timeout(Duration::from_millis(50), &mut holder)
            .await
            .is_err());
        let starved = router
            .clone()
            .oneshot(signed(Body::from("{}")))
            .await
            .expect("infallible");
        assert_eq!(
            exception_of(starved).await,
            (StatusCode::BAD_REQUEST, "LimitExceededException".to_owned())
        );
        // Once the holder is answered (408), its share is free again.
        let timed_out = holder.await.expect("infallible");
        assert_eq!(timed_out.status(), StatusCode::REQUEST_TIMEOUT);
        let served = router
            .clone()
            .oneshot(signed(Body::from("{}")))
            .await
            .expect("infallible");
        assert_ne!(exception_of(served).await.1, "LimitExceededException");
    }

    #[tokio::test]
    async fn requests_beyond_the_in_flight_limit_wait_for_a_slot() {
        let config = crate::Config::parse_from(["freshet-frontend"]);
        let frontend = Frontend::new(&config).expect("frontend");
        let router = router(frontend, 1);
        // Holds the only slot: its handler waits for a body that never comes.
        let mut stuck = Box::pin(router.clone().oneshot(signed(pending_body())));
        assert!(
            tokio::time::timeout(Duration::from_millis(50), &mut stuck)
                .await
                .is_err(),
            "the first request is still reading its body"
        );
        let waiting = router.clone().oneshot(request(Body::empty()));
        let mut waiting = Box::pin(waiting);
        assert!(
            tokio::time::timeout(Duration::from_millis(100), &mut waiting)
                .await
                .is_err(),
            "a second request is served while the only slot is taken"
        );
        drop(stuck);
        let answered = tokio::time::timeout(Duration::from_secs(5), waiting)
            .await
            .expect("served once the slot is free")
            .expect("infallible");
        assert_eq!(answered.status(), StatusCode::OK);
    }
}
