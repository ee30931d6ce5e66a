//! Hand-written HTTP requests, for what an SDK will not send: malformed
//! bodies, missing credentials, unknown operations, and HTTP/2 with prior
//! knowledge (what the JS SDK v3 and the Java SDK v2 speak).

use anyhow::Context as _;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A response: status code and body.
#[derive(Debug)]
pub struct RawResponse {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    /// The body as text (lossy for a binary one: see `body_bytes`).
    pub body: String,
    pub body_bytes: Vec<u8>,
}

impl RawResponse {
    /// The `__type` of an error body.
    pub fn error_type(&self) -> String {
        serde_json::from_str::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v["__type"].as_str().map(str::to_owned))
            .unwrap_or_default()
    }
}

/// A well-formed SigV4 Authorization header for the dev key, which only
/// development mode accepts (its signature is not a real one).
pub const DEV_AUTHORIZATION: &str =
    "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host;x-amz-date, Signature=0000000000000000000000000000000000000000000000000000000000000000";
/// The `X-Amz-Date` that goes with [`DEV_AUTHORIZATION`].
pub const DEV_AMZ_DATE: &str = "20260101T000000Z";

/// Sends one HTTP/1.1 request to `/` and reads the whole response.
pub async fn post_http1(
    address: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<RawResponse> {
    post_http1_to(address, "/", headers, body).await
}

/// Sends one HTTP/1.1 request to `path` (with its query) and reads the
/// whole response.
pub async fn post_http1_to(
    address: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> anyhow::Result<RawResponse> {
    let mut stream = TcpStream::connect(address).await.context("connect")?;
    let mut request = format!(
        "POST {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    stream.write_all(request.as_bytes()).await?;
    stream.write_all(body).await?;
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).await?;
    let end = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .context("response has no header end")?;
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let body_bytes = raw[end + 4..].to_vec();
    let body = String::from_utf8_lossy(&body_bytes).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse().ok())
        .context("response has no status")?;
    let headers = lines
        .filter_map(|line| line.split_once(':'))
        .map(|(name, value)| (name.trim().to_ascii_lowercase(), value.trim().to_owned()))
        .collect();
    Ok(RawResponse {
        status,
        headers,
        body,
        body_bytes,
    })
}

/// A Kinesis call in CBOR 1.1 over HTTP/1.1 with the dev credentials.
pub async fn kinesis_cbor(
    address: &str,
    operation: &str,
    body: &[u8],
) -> anyhow::Result<RawResponse> {
    let target = format!("Kinesis_20131202.{operation}");
    post_http1(
        address,
        &[
            ("Content-Type", "application/x-amz-cbor-1.1"),
            ("X-Amz-Target", &target),
            ("Authorization", DEV_AUTHORIZATION),
            ("X-Amz-Date", DEV_AMZ_DATE),
        ],
        body,
    )
    .await
}

/// A Kinesis call over HTTP/1.1 with the dev credentials.
pub async fn kinesis_http1(
    address: &str,
    operation: &str,
    body: &str,
) -> anyhow::Result<RawResponse> {
    let target = format!("Kinesis_20131202.{operation}");
    post_http1(
        address,
        &[
            ("Content-Type", "application/x-amz-json-1.1"),
            ("X-Amz-Target", &target),
            ("Authorization", DEV_AUTHORIZATION),
            ("X-Amz-Date", DEV_AMZ_DATE),
        ],
        body.as_bytes(),
    )
    .await
}

/// A Kinesis call over cleartext HTTP/2 with prior knowledge.
pub async fn kinesis_h2c(
    address: &str,
    operation: &str,
    body: &str,
) -> anyhow::Result<RawResponse> {
    let stream = TcpStream::connect(address).await.context("connect")?;
    kinesis_h2_over(stream, address, operation, body).await
}

/// A Kinesis call over HTTP/2 with prior knowledge on an open connection
/// (`stream`: TCP, or TLS that negotiated nothing by ALPN), to `address`.
pub async fn kinesis_h2_over(
    stream: impl tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    address: &str,
    operation: &str,
    body: &str,
) -> anyhow::Result<RawResponse> {
    let (client, connection) = h2::client::handshake(stream)
        .await
        .context("h2 handshake")?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    let mut client = client.ready().await.context("h2 ready")?;
    let request = http::Request::builder()
        .method("POST")
        .uri(format!("http://{address}/"))
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", format!("Kinesis_20131202.{operation}"))
        .header("authorization", DEV_AUTHORIZATION)
        .header("x-amz-date", DEV_AMZ_DATE)
        .body(())?;
    let (response, mut send) = client.send_request(request, false)?;
    send.send_data(bytes::Bytes::copy_from_slice(body.as_bytes()), true)?;
    let response = response.await.context("h2 response")?;
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(name, value)| {
            (
                name.to_string(),
                value.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let mut body_stream = response.into_body();
    let mut body = Vec::new();
    while let Some(chunk) = body_stream.data().await {
        let chunk = chunk?;
        let _ = body_stream.flow_control().release_capacity(chunk.len());
        body.extend_from_slice(&chunk);
    }
    Ok(RawResponse {
        status,
        headers,
        body: String::from_utf8_lossy(&body).into_owned(),
        body_bytes: body,
    })
}

/// One kept-alive HTTP/1.1 connection sending Kinesis calls with the dev
/// credentials, one at a time: a load generator far lighter than an SDK
/// (no signing, no retries), so a benchmark measures the server.
pub struct KeepAliveClient {
    stream: tokio::io::BufStream<TcpStream>,
    address: String,
}

impl KeepAliveClient {
    pub async fn connect(address: &str) -> anyhow::Result<KeepAliveClient> {
        let stream = TcpStream::connect(address).await.context("connect")?;
        stream.set_nodelay(true)?;
        Ok(KeepAliveClient {
            stream: tokio::io::BufStream::new(stream),
            address: address.to_owned(),
        })
    }

    /// Sends `operation` with a JSON `body`; answers the status and body.
    pub async fn call(&mut self, operation: &str, body: &[u8]) -> anyhow::Result<(u16, Vec<u8>)> {
        use tokio::io::AsyncBufReadExt;
        let head = format!(
            "POST / HTTP/1.1\r\nHost: {}\r\nContent-Type: application/x-amz-json-1.1\r\n\
             X-Amz-Target: Kinesis_20131202.{operation}\r\nAuthorization: {DEV_AUTHORIZATION}\r\nX-Amz-Date: {DEV_AMZ_DATE}\r\n\
             Content-Length: {}\r\n\r\n",
            self.address,
            body.len()
        );
        self.stream.write_all(head.as_bytes()).await?;
        self.stream.write_all(body).await?;
        self.stream.flush().await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status = line
            .split_whitespace()
            .nth(1)
            .and_then(|code| code.parse().ok())
            .context("response has no status")?;
        let mut length = 0usize;
        loop {
            line.clear();
            anyhow::ensure!(
                self.stream.read_line(&mut line).await? > 0,
                "connection closed mid-response"
            );
            let header = line.trim_end();
            if header.is_empty() {
                break;
            }
            if let Some((name, value)) = header.split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().context("bad content-length")?;
                }
            }
        }
        let mut body = vec![0; length];
        self.stream.read_exact(&mut body).await?;
        Ok((status, body))
    }
}
