//! `GET /metrics`: a small HTTP/1.1 server of its own on the metrics port,
//! apart from the service's gRPC or Kinesis port, so scraping never shares
//! a connection limit or a port with the API.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::Registry;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// The metrics port, bound before the service starts serving (so a bad
/// address fails the start, not the first scrape); `None` when metrics
/// are off.
#[derive(Debug, Default)]
pub struct MetricsEndpoint {
    listener: Option<TcpListener>,
}

impl MetricsEndpoint {
    /// Binds `address` (`host:port`); `None` (metrics off) binds nothing.
    pub async fn bind(address: Option<&str>) -> std::io::Result<MetricsEndpoint> {
        let listener = match address {
            Some(address) => Some(TcpListener::bind(address).await.map_err(|error| {
                std::io::Error::new(error.kind(), format!("bind metrics {address}: {error}"))
            })?),
            None => None,
        };
        Ok(MetricsEndpoint { listener })
    }

    /// Where scrapes go, when metrics are on.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.listener.as_ref().and_then(|l| l.local_addr().ok())
    }

    /// Serves `registry` until `stop` is cancelled (a task of its own).
    pub fn spawn(self, registry: Registry, stop: CancellationToken) {
        if let Some(listener) = self.listener {
            tokio::spawn(async move {
                stop.run_until_cancelled(serve(listener, registry)).await;
            });
        }
    }
}

/// Scrapers served at once; a connection past them is closed at once.
const MAX_CONNECTIONS: usize = 8;
/// The longest a scrape connection may stay open, whatever it does.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(10);
/// How long a request's headers may take to arrive.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(5);

/// Answers scrapes on `listener` forever: one request per connection, a
/// few connections at once, each within a deadline, so the metrics port
/// cannot be used to hold the process's file descriptors.
pub async fn serve(listener: TcpListener, registry: Registry) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving metrics at /metrics");
    }
    let places = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut connections = tokio::task::JoinSet::new();
    loop {
        // Reap finished connections so the set stays small.
        while connections.try_join_next().is_some() {}
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "metrics accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(place) = places.clone().try_acquire_owned() else {
            drop(stream);
            continue;
        };
        let registry = registry.clone();
        // Dropped with `serve` (and so with its caller's stop): no
        // connection outlives the endpoint.
        connections.spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(answer(&registry, &request)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(HEADER_READ_TIMEOUT)
                .keep_alive(false)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(CONNECTION_DEADLINE, connection).await {
                Ok(Err(error)) => tracing::debug!(%error, "metrics connection ended"),
                Err(_) => tracing::debug!("metrics connection outlived its deadline"),
                Ok(Ok(())) => {}
            }
            drop(place);
        });
    }
}

fn answer(registry: &Registry, request: &Request<Incoming>) -> Response<Full<Bytes>> {
    let (status, content_type, body) =
        if request.method() == Method::GET && request.uri().path() == "/metrics" {
            (StatusCode::OK, OPENMETRICS, registry.encode())
        } else {
            (
                StatusCode::NOT_FOUND,
                "text/plain; charset=utf-8",
                "metrics are at GET /metrics\n".to_owned(),
            )
        };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let request = format!("GET {path} HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await.expect("write");
        let mut text = String::new();
        stream.read_to_string(&mut text).await.expect("read");
        text
    }

    #[tokio::test]
    async fn a_scrape_sees_what_was_counted_and_other_paths_are_not_found() {
        let registry = Registry::new();
        registry.counter("freshet_test_things", "Things.").inc_by(7);
        let endpoint = MetricsEndpoint::bind(Some("127.0.0.1:0"))
            .await
            .expect("bind");
        let addr = endpoint.local_addr().expect("bound");
        let stop = CancellationToken::new();
        endpoint.spawn(registry, stop.clone());
        let text = get(addr, "/metrics").await;
        assert!(text.starts_with("HTTP/1.1 200"), "{text}");
        assert!(text.contains("freshet_test_things_total 7"), "{text}");
        assert!(get(addr, "/").await.starts_with("HTTP/1.1 404"));
        stop.cancel();
    }

    #[tokio::test]
    async fn scrapers_past_the_few_served_at_once_are_closed_at_once() {
        let endpoint = MetricsEndpoint::bind(Some("127.0.0.1:0"))
            .await
            .expect("bind");
        let addr = endpoint.local_addr().expect("bound");
        let stop = CancellationToken::new();
        endpoint.spawn(Registry::new(), stop.clone());
        // Connections that never send a request hold every place...
        let mut idle = Vec::new();
        for _ in 0..MAX_CONNECTIONS {
            idle.push(tokio::net::TcpStream::connect(addr).await.expect("connect"));
        }
        // ...so one more is closed without an answer.
        let mut extra = tokio::net::TcpStream::connect(addr).await.expect("connect");
        let mut buffer = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(5), extra.read(&mut buffer))
            .await
            .expect("closed, not left waiting");
        assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
        drop(idle);
        stop.cancel();
    }

    #[tokio::test]
    async fn metrics_off_binds_nothing() {
        let endpoint = MetricsEndpoint::bind(None).await.expect("nothing to bind");
        assert_eq!(endpoint.local_addr(), None);
    }
}
