//! An HTTP/2-only connector for the AWS SDK for Rust: prior-knowledge h2c
//! on a plaintext endpoint, as the Java SDK (and so KCL) and the JS SDK v3
//! speak to Kinesis. The SDK's own client speaks HTTP/1.1 on `http://`, so
//! the tests that must show HTTP/2 (SubscribeToShard's event stream above
//! all) use this one. One connection per request, as the JS SDK does for
//! Kinesis (`disableConcurrentStreams`).

use aws_smithy_runtime_api::client::http::{
    http_client_fn, HttpConnector, HttpConnectorFuture, SharedHttpClient, SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_types::body::SdkBody;
use hyper_util::rt::{TokioExecutor, TokioIo};

#[derive(Debug, Clone, Copy)]
struct H2cConnector;

impl HttpConnector for H2cConnector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        HttpConnectorFuture::new(async move {
            let request = request
                .try_into_http1x()
                .map_err(|error| ConnectorError::user(error.into()))?;
            let authority = request
                .uri()
                .authority()
                .map(|a| a.to_string())
                .ok_or_else(|| ConnectorError::user("the endpoint has no host".into()))?;
            let tcp = tokio::net::TcpStream::connect(&authority)
                .await
                .map_err(|error| ConnectorError::io(error.into()))?;
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
                    .await
                    .map_err(|error| ConnectorError::io(error.into()))?;
            tokio::spawn(connection);
            let response = sender
                .send_request(request)
                .await
                .map_err(|error| ConnectorError::io(error.into()))?;
            // The response (and, for an event stream, every event) is read
            // as it arrives.
            HttpResponse::try_from(response.map(SdkBody::from_body_1_x))
                .map_err(|error| ConnectorError::other(error.into(), None))
        })
    }
}

/// The SDK's HTTP client, speaking HTTP/2 only.
pub fn h2c_http_client() -> SharedHttpClient {
    http_client_fn(|_settings, _components| SharedHttpConnector::new(H2cConnector))
}
