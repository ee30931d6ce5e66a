//! A lean Kinesis JSON client for the frontend: signed POSTs over kept-alive
//! HTTP/1.1 connections (a pool, one connection per call in flight) or
//! HTTP/2 with prior knowledge (h2c, every call multiplexed on a few
//! connections), with hyper's client halves and nothing else.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::SystemTime;

use anyhow::Context as _;
use bytes::Bytes;
use http_body_util::{BodyExt as _, Full};
use hyper::client::conn::{http1, http2};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

use crate::driver::Failure;
use crate::sigv4::{Signer, CONTENT_TYPE};

/// The Kinesis API version every operation name is prefixed with.
const TARGET_PREFIX: &str = "Kinesis_20131202.";

/// Which HTTP the client speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Protocol {
    /// HTTP/1.1 with keep-alive, one connection per call in flight (what
    /// the AWS CLI, boto3 and the Rust SDK use).
    Http1,
    /// HTTP/2 with prior knowledge (what the JS SDK v3 and the Java SDK v2
    /// can use).
    H2c,
}

/// A signed-request client of one frontend.
pub struct KinesisHttp {
    address: String,
    signer: Signer,
    protocol: Protocol,
    idle: Mutex<Vec<http1::SendRequest<Full<Bytes>>>>,
    multiplexed: Vec<tokio::sync::Mutex<Option<http2::SendRequest<Full<Bytes>>>>>,
    next: AtomicUsize,
}

/// A response: status and body.
pub struct Answer {
    pub status: u16,
    pub body: Bytes,
}

impl Answer {
    /// The body as JSON (null when empty, as CreateStream answers), or a
    /// failure naming what came back.
    pub fn json(&self) -> Result<serde_json::Value, Failure> {
        if self.body.iter().all(u8::is_ascii_whitespace) {
            return Ok(serde_json::Value::Null);
        }
        serde_json::from_slice(&self.body).map_err(|error| {
            Failure::new(
                "malformed answer",
                format!("{error}: {}", String::from_utf8_lossy(&self.body)),
            )
        })
    }
}

impl KinesisHttp {
    /// A client of the frontend at `endpoint` (`http://host:port`; TLS is
    /// not supported). `connections` is how many h2c connections calls are
    /// spread over.
    pub fn new(
        endpoint: &str,
        signer: Signer,
        protocol: Protocol,
        connections: usize,
    ) -> anyhow::Result<KinesisHttp> {
        let uri: http::Uri = endpoint
            .parse()
            .with_context(|| format!("bad frontend endpoint {endpoint}"))?;
        anyhow::ensure!(
            uri.scheme_str().is_none_or(|s| s == "http"),
            "only http:// endpoints are supported (the frontend serves TLS through a proxy)"
        );
        let authority = uri
            .authority()
            .with_context(|| format!("{endpoint} names no host"))?;
        let address = if authority.port().is_some() {
            authority.as_str().to_owned()
        } else {
            format!("{}:80", authority.host())
        };
        Ok(KinesisHttp {
            address,
            signer,
            protocol,
            idle: Mutex::new(Vec::new()),
            multiplexed: (0..connections.max(1))
                .map(|_| tokio::sync::Mutex::new(None))
                .collect(),
            next: AtomicUsize::new(0),
        })
    }

    /// Calls `operation` (`PutRecord`) with the JSON `body`. Any HTTP
    /// status is an answer; only a transport failure is an error.
    pub async fn call(&self, operation: &str, body: Bytes) -> Result<Answer, Failure> {
        let target = format!("{TARGET_PREFIX}{operation}");
        let signed = self
            .signer
            .sign(&self.address, &target, &body, SystemTime::now());
        let builder = match self.protocol {
            Protocol::Http1 => http::Request::post("/").header(http::header::HOST, &self.address),
            Protocol::H2c => http::Request::post(format!("http://{}/", self.address)),
        };
        let request = builder
            .header(http::header::CONTENT_TYPE, CONTENT_TYPE)
            .header("x-amz-date", &signed.amz_date)
            .header("x-amz-target", &target)
            .header(http::header::AUTHORIZATION, &signed.authorization)
            .body(Full::new(body))
            .map_err(|error| Failure::new("bad request", error.to_string()))?;
        match self.protocol {
            Protocol::Http1 => self.call_http1(request).await,
            Protocol::H2c => self.call_h2c(request).await,
        }
    }

    async fn call_http1(&self, request: http::Request<Full<Bytes>>) -> Result<Answer, Failure> {
        let mut sender = match self.take_idle() {
            Some(sender) => sender,
            None => {
                let stream = self.connect().await?;
                let (sender, connection) = http1::handshake(TokioIo::new(stream))
                    .await
                    .map_err(transport)?;
                tokio::spawn(async move {
                    let _ = connection.await;
                });
                sender
            }
        };
        sender.ready().await.map_err(transport)?;
        let answer = read_answer(sender.send_request(request).await.map_err(transport)?).await?;
        if !sender.is_closed() {
            self.idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(sender);
        }
        Ok(answer)
    }

    fn take_idle(&self) -> Option<http1::SendRequest<Full<Bytes>>> {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        while let Some(sender) = idle.pop() {
            if !sender.is_closed() {
                return Some(sender);
            }
        }
        None
    }

    async fn call_h2c(&self, request: http::Request<Full<Bytes>>) -> Result<Answer, Failure> {
        let slot = self.next.fetch_add(1, Ordering::Relaxed) % self.multiplexed.len();
        let mut sender = {
            let mut connection = self.multiplexed[slot].lock().await;
            match connection.as_ref() {
                Some(sender) if !sender.is_closed() => sender.clone(),
                _ => {
                    let stream = self.connect().await?;
                    let (sender, driver) =
                        http2::handshake(TokioExecutor::new(), TokioIo::new(stream))
                            .await
                            .map_err(transport)?;
                    tokio::spawn(async move {
                        let _ = driver.await;
                    });
                    *connection = Some(sender.clone());
                    sender
                }
            }
        };
        sender.ready().await.map_err(transport)?;
        read_answer(sender.send_request(request).await.map_err(transport)?).await
    }

    async fn connect(&self) -> Result<TcpStream, Failure> {
        let stream = TcpStream::connect(&self.address)
            .await
            .map_err(|error| Failure::new("connect failed", error.to_string()))?;
        let _ = stream.set_nodelay(true);
        Ok(stream)
    }
}

/// The most of an answer's body kept: a GetRecords answer of 10,000
/// records of the largest size, with room. An endpoint sending more is
/// answering something else, and the call fails rather than the tool
/// running out of memory.
const MAX_ANSWER_BYTES: usize = 64 * 1024 * 1024;

/// An answer's status and its whole body, up to [`MAX_ANSWER_BYTES`].
async fn read_answer(response: http::Response<hyper::body::Incoming>) -> Result<Answer, Failure> {
    let status = response.status().as_u16();
    let body = http_body_util::Limited::new(response.into_body(), MAX_ANSWER_BYTES)
        .collect()
        .await
        .map_err(|error| Failure::new("transport error", error.to_string()))?
        .to_bytes();
    Ok(Answer { status, body })
}

fn transport(error: hyper::Error) -> Failure {
    Failure::new("transport error", error.to_string())
}

/// A non-200 answer as a failure of its Kinesis exception (`__type`), or
/// of its HTTP status when the body names none.
pub fn exception(answer: &Answer) -> Failure {
    let parsed: Option<serde_json::Value> = serde_json::from_slice(&answer.body).ok();
    let kind = parsed
        .as_ref()
        .and_then(|v| v["__type"].as_str())
        .map(str::to_owned)
        .unwrap_or_else(|| format!("HTTP {}", answer.status));
    let message = parsed
        .as_ref()
        .and_then(|v| v["message"].as_str().or_else(|| v["Message"].as_str()))
        .map(str::to_owned)
        .unwrap_or_else(|| String::from_utf8_lossy(&answer.body).into_owned());
    Failure::new(kind, message)
}

/// The answer's JSON if it is a 200, else its exception.
pub fn ok_json(answer: Answer) -> Result<serde_json::Value, Failure> {
    if answer.status == 200 {
        answer.json()
    } else {
        Err(exception(&answer))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exceptions_are_named_by_their_type() {
        let answer = Answer {
            status: 400,
            body: Bytes::from_static(
                br#"{"__type":"ProvisionedThroughputExceededException","message":"Rate exceeded for shard"}"#,
            ),
        };
        let failure = exception(&answer);
        assert_eq!(failure.kind, "ProvisionedThroughputExceededException");
        assert_eq!(failure.message, "Rate exceeded for shard");
        let bare = Answer {
            status: 502,
            body: Bytes::from_static(b"bad gateway"),
        };
        assert_eq!(exception(&bare).kind, "HTTP 502");
    }

    #[test]
    fn only_plain_http_endpoints_are_taken() {
        let signer = Signer {
            access_key: "test".into(),
            secret_key: "test".into(),
            region: "us-east-1".into(),
        };
        let client = KinesisHttp::new("http://127.0.0.1:4567", signer.clone(), Protocol::Http1, 1)
            .expect("plain");
        assert_eq!(client.address, "127.0.0.1:4567");
        assert!(KinesisHttp::new("https://example.com", signer, Protocol::Http1, 1).is_err());
    }
}
