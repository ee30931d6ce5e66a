//! The wire: one `POST /` endpoint that reads `X-Amz-Target`, checks the
//! content type and credentials, dispatches, and writes Kinesis-shaped
//! responses and errors.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, State};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, StatusCode, Uri};
use tracing::Instrument as _;

use freshet_errors::ErrorCode;

use crate::auth::Caller;
use crate::error::{KinesisError, KinesisResult};
use crate::{auth, ops, Frontend};

/// Kinesis allows 10 MiB of records per request; base64 makes that ~13.4 MiB.
const MAX_BODY_BYTES: usize = 32 * 1024 * 1024;
const TARGET_PREFIX: &str = "Kinesis_20131202.";
const JSON_CONTENT_TYPE: &str = "application/x-amz-json-1.1";

/// The HTTP surface. At most `max_in_flight` requests are handled at once
/// (`--max-in-flight-requests`); the rest wait for a slot before their
/// bodies are read, so a surge of clients costs bounded memory: at most
/// that many bodies of at most [`MAX_BODY_BYTES`] each.
pub fn router(frontend: Arc<Frontend>, max_in_flight: usize) -> axum::Router {
    axum::Router::new()
        .fallback(handle)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(tower::limit::GlobalConcurrencyLimitLayer::new(
            max_in_flight.max(1),
        ))
        .with_state(frontend)
}

fn error_response(error: &KinesisError, request_id: &str) -> Response {
    let body =
        serde_json::json!({ "__type": error.exception(), "message": error.message }).to_string();
    response(error.http_status(), body, request_id)
}

fn response(status: StatusCode, body: String, request_id: &str) -> Response {
    let mut response = (status, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(JSON_CONTENT_TYPE),
    );
    if let Ok(value) = HeaderValue::from_str(request_id) {
        headers.insert("x-amzn-RequestId", value);
    }
    response
}

async fn handle(
    State(frontend): State<Arc<Frontend>>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    if method == Method::GET && uri.path() == "/health" {
        return (StatusCode::OK, "ok").into_response();
    }
    let operation = headers
        .get("x-amz-target")
        .and_then(|v| v.to_str().ok())
        .and_then(|target| target.strip_prefix(TARGET_PREFIX))
        .unwrap_or("")
        .to_owned();
    let span = tracing::info_span!("kinesis", operation = %operation, request_id = %request_id);
    freshet_telemetry::set_parent_from_headers(&span, &headers);
    let result = async {
        if method != Method::POST {
            return Err(KinesisError::new(
                ErrorCode::OperationNotDetermined,
                "Unable to determine service/operation name to be authorized",
            ));
        }
        check_content_type(&headers)?;
        let credential = auth::parse_credential(&headers, uri.query())?;
        let account_id = frontend
            .accounts
            .account_of(&credential.access_key_id)
            .await?;
        let caller = Caller { account_id };
        ops::dispatch(&frontend, &operation, &caller, &body).await
    }
    .instrument(span.clone())
    .await;
    match result {
        Ok(Some(text)) => response(StatusCode::OK, text, &request_id),
        Ok(None) => response(StatusCode::OK, String::new(), &request_id),
        Err(error) => {
            span.in_scope(|| {
                if error.http_status().is_server_error() {
                    tracing::warn!(code = error.exception(), message = %error.message, "request failed");
                } else {
                    tracing::debug!(code = error.exception(), message = %error.message, "request rejected");
                }
            });
            error_response(&error, &request_id)
        }
    }
}

fn check_content_type(headers: &HeaderMap) -> KinesisResult<()> {
    let content_type = headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let essence = content_type.split(';').next().unwrap_or("").trim();
    match essence {
        "application/x-amz-json-1.1" | "application/json" | "" => Ok(()),
        "application/x-amz-cbor-1.1" => Err(KinesisError::serialization(
            "Freshet does not speak CBOR yet; disable it in the client (aws.cborEnabled=false or AWS_CBOR_DISABLE=1)",
        )),
        other => Err(KinesisError::serialization(format!("Unsupported content type {other}"))),
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use axum::body::Body;
    use clap::Parser as _;
    use tower::ServiceExt as _;

    use super::*;

    fn request(body: Body) -> http::Request<Body> {
        http::Request::get("/health")
            .body(body)
            .expect("a well-formed request")
    }

    #[tokio::test]
    async fn requests_beyond_the_in_flight_limit_wait_for_a_slot() {
        let config = crate::Config::parse_from(["freshet-frontend"]);
        let frontend = Frontend::new(&config).expect("frontend");
        let router = router(frontend, 1);
        // Holds the only slot: its handler waits for a body that never comes.
        let mut stuck = Box::pin(
            router.clone().oneshot(
                http::Request::post("/")
                    .body(Body::from_stream(futures::stream::pending::<
                        Result<Bytes, std::io::Error>,
                    >()))
                    .expect("a well-formed request"),
            ),
        );
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
