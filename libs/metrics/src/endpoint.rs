//! `GET /metrics`: a small HTTP/1.1 server of its own on the metrics port,
//! apart from the service's gRPC or Kinesis port, so scraping never shares
//! a connection limit or a port with the API.

use std::convert::Infallible;
use std::net::SocketAddr;

use bytes::Bytes;
use http::{header, Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
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

/// Answers scrapes on `listener` forever.
pub async fn serve(listener: TcpListener, registry: Registry) {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving metrics at /metrics");
    }
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::debug!(%error, "metrics accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let registry = registry.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let registry = registry.clone();
                async move { Ok::<_, Infallible>(answer(&registry, &request)) }
            });
            let connection = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service);
            if let Err(error) = connection.await {
                tracing::debug!(%error, "metrics connection ended");
            }
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
    async fn metrics_off_binds_nothing() {
        let endpoint = MetricsEndpoint::bind(None).await.expect("nothing to bind");
        assert_eq!(endpoint.local_addr(), None);
    }
}
