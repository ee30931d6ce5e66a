//! The front door's connections: a TCP accept loop that caps how many
//! connections are open (one more is closed at once: load shedding rather
//! than a growing backlog), serves HTTP/1.1 and HTTP/2 on each — in the
//! clear (h2c) or inside TLS, whose handshake has the header read timeout
//! too — with a header read timeout, an idle timeout and a bounded number
//! of concurrent HTTP/2 streams, and on shutdown stops accepting and
//! drains what is open.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::time::{Instant, Sleep};
use tokio_util::sync::CancellationToken;

use crate::admission::SourceLimits;

/// The largest header block a client may send, and the read buffer of an
/// HTTP/1.1 connection (bodies stream through it; they are limited per
/// operation in `http_api`).
const MAX_HEADER_BYTES: usize = 64 * 1024;
/// HTTP/2 streams a client may reset before the server has answered them
/// (the "rapid reset" attack) before its connection is closed.
const MAX_PENDING_RESETS: usize = 20;

/// What a connection may cost.
#[derive(Debug, Clone, Copy)]
pub struct ConnectionLimits {
    /// Connections open at once; one more is closed as soon as accepted.
    pub max_connections: usize,
    /// Connections one source (an IPv4 address, an IPv6 /64) may have
    /// open at once (0: no cap), so one host cannot take every place.
    pub max_connections_per_source: usize,
    /// How long a client may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// How long a connection may carry nothing in either direction.
    pub idle_timeout: Duration,
    /// Requests one HTTP/2 connection may have open at once.
    pub http2_max_streams: u32,
}

/// What the accept loop counts: connections open now, and connections
/// closed at once because too many were open (scraped as
/// `freshet_frontend_connections` and `freshet_frontend_connections_shed_total`).
#[derive(Debug, Default)]
pub struct ConnectionCounts {
    open: freshet_metrics::Gauge,
    shed: freshet_metrics::Counter,
}

impl ConnectionCounts {
    /// Connections shed so far.
    pub fn count(&self) -> u64 {
        self.shed.get()
    }

    /// Connections open now.
    pub fn open(&self) -> i64 {
        self.open.get()
    }

    pub(crate) fn register_in(&self, registry: &freshet_metrics::Registry) {
        registry.register(
            "freshet_frontend_connections",
            "Client connections open",
            self.open.clone(),
        );
        registry.register(
            "freshet_frontend_connections_shed",
            "Client connections closed at once because the connection limits were reached",
            self.shed.clone(),
        );
    }
}

/// Serves `app` on every connection `listener` accepts (inside TLS when
/// `tls` is given), within `limits`, until `stop` is cancelled; then
/// drains open connections for at most `drain`.
#[allow(clippy::too_many_arguments)]
pub async fn serve(
    listener: TcpListener,
    tls: Option<freshet_tls::TlsAcceptor>,
    app: axum::Router,
    limits: ConnectionLimits,
    shed: Arc<ConnectionCounts>,
    stop: CancellationToken,
    drain: Duration,
) {
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_buf_size(MAX_HEADER_BYTES);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(limits.http2_max_streams)
        .max_pending_accept_reset_streams(MAX_PENDING_RESETS)
        .max_header_list_size(MAX_HEADER_BYTES as u32);
    let graceful = GracefulShutdown::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let sources = SourceLimits::new(limits.max_connections_per_source);
    loop {
        let (stream, peer) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(error) => {
                    // Out of file descriptors, or a connection reset before
                    // it was accepted: wait a moment rather than spin.
                    tracing::warn!(%error, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = stop.cancelled() => break,
        };
        let places = slots
            .clone()
            .try_acquire_owned()
            .ok()
            .zip(sources.enter(Some(peer.ip())).ok());
        let Some(places) = places else {
            shed.shed.inc();
            tracing::debug!(%peer, "connection limit reached; closing a new connection");
            drop(stream);
            continue;
        };
        if let Err(error) = stream.set_nodelay(true) {
            tracing::debug!(%error, "could not set TCP_NODELAY");
        }
        let service = TowerToHyperService::new(tower::util::MapRequest::new(
            app.clone(),
            move |mut request: http::Request<hyper::body::Incoming>| {
                request.extensions_mut().insert(ConnectInfo(peer));
                request
            },
        ));
        let (builder, watcher, tls) = (builder.clone(), graceful.watcher(), tls.clone());
        let counts = shed.clone();
        counts.open.inc();
        tokio::spawn(async move {
            let served = match tls {
                None => {
                    let io = TokioIo::new(IdleTimeout::new(stream, limits.idle_timeout));
                    let connection = builder.serve_connection_with_upgrades(io, service);
                    watcher.watch(connection.into_owned()).await
                }
                Some(tls) => {
                    match tokio::time::timeout(limits.header_read_timeout, tls.accept(stream)).await
                    {
                        Ok(Ok(stream)) => {
                            let io = TokioIo::new(IdleTimeout::new(stream, limits.idle_timeout));
                            let connection = builder.serve_connection_with_upgrades(io, service);
                            watcher.watch(connection.into_owned()).await
                        }
                        Ok(Err(error)) => {
                            tracing::debug!(%peer, %error, "tls handshake failed");
                            Ok(())
                        }
                        Err(_) => {
                            tracing::debug!(%peer, "tls handshake timed out");
                            Ok(())
                        }
                    }
                }
            };
            if let Err(error) = served {
                tracing::debug!(%peer, %error, "connection ended with an error");
            }
            counts.open.dec();
            drop(places);
        });
    }
    drop(listener);
    if tokio::time::timeout(drain, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("open connections did not finish in time; stopping anyway");
    }
}

/// A connection that fails with `TimedOut` once nothing has been read from
/// or written to it for `timeout`. The timer is re-armed only when it
/// fires, so traffic costs a clock read, not a timer update.
struct IdleTimeout<T> {
    inner: T,
    timeout: Duration,
    last_activity: Instant,
    timer: Pin<Box<Sleep>>,
}

impl<T> IdleTimeout<T> {
    fn new(inner: T, timeout: Duration) -> IdleTimeout<T> {
        let now = Instant::now();
        IdleTimeout {
            inner,
            timeout,
            last_activity: now,
            timer: Box::pin(tokio::time::sleep_until(now + timeout)),
        }
    }

    /// Whether the connection has been idle too long; otherwise the timer
    /// is armed (and registered with `cx`) for when it would be.
    fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.timer.as_mut().poll(cx).is_pending() {
                return false;
            }
            let deadline = self.last_activity + self.timeout;
            if Instant::now() >= deadline {
                return true;
            }
            self.timer.as_mut().reset(deadline);
        }
    }

    /// A write's outcome: bytes written count as activity; a peer that
    /// stops reading holds our buffers, so a write pending past the idle
    /// limit fails like an idle read.
    fn after_write(
        &mut self,
        cx: &mut Context<'_>,
        written: Poll<io::Result<usize>>,
    ) -> Poll<io::Result<usize>> {
        match written {
            Poll::Ready(Ok(count)) => {
                if count > 0 {
                    self.last_activity = Instant::now();
                }
                Poll::Ready(Ok(count))
            }
            Poll::Pending if self.expired(cx) => Poll::Ready(Err(Self::idle_error())),
            other => other,
        }
    }

    fn idle_error() -> io::Error {
        io::Error::new(io::ErrorKind::TimedOut, "connection idle too long")
    }
}

impl<T: AsyncRead + Unpin> AsyncRead for IdleTimeout<T> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(result) => {
                if buf.filled().len() > before {
                    this.last_activity = Instant::now();
                }
                Poll::Ready(result)
            }
            Poll::Pending if this.expired(cx) => Poll::Ready(Err(Self::idle_error())),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<T: AsyncWrite + Unpin> AsyncWrite for IdleTimeout<T> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        data: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write(cx, data);
        this.after_write(cx, written)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        let written = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.after_write(cx, written)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    use tokio::net::TcpStream;

    use super::*;

    fn limits() -> ConnectionLimits {
        ConnectionLimits {
            max_connections: 3,
            max_connections_per_source: 2,
            header_read_timeout: Duration::from_millis(300),
            idle_timeout: Duration::from_millis(600),
            http2_max_streams: 4,
        }
    }

    async fn server(
        limits: ConnectionLimits,
    ) -> (SocketAddr, Arc<ConnectionCounts>, CancellationToken) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let address = listener.local_addr().expect("address");
        let app = axum::Router::new().fallback(|| async { "ok" });
        let shed = Arc::new(ConnectionCounts::default());
        let stop = CancellationToken::new();
        tokio::spawn(serve(
            listener,
            None,
            app,
            limits,
            shed.clone(),
            stop.clone(),
            Duration::from_secs(1),
        ));
        (address, shed, stop)
    }

    /// Reads until the peer closes (Ok) or the deadline passes (Err).
    async fn closed_within(stream: &mut TcpStream, deadline: Duration) -> Result<Vec<u8>, ()> {
        let mut seen = Vec::new();
        tokio::time::timeout(deadline, async {
            let mut buffer = [0u8; 1024];
            loop {
                match stream.read(&mut buffer).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buffer[..n]),
                }
            }
        })
        .await
        .map(|()| seen)
        .map_err(|_| ())
    }

    #[tokio::test]
    async fn headers_that_do_not_arrive_in_time_close_the_connection() {
        let (address, _, stop) = server(limits()).await;
        let mut slow = TcpStream::connect(address).await.expect("connect");
        slow.write_all(b"POST / HTTP/1.1\r\nHost: x\r\n")
            .await
            .expect("write");
        assert!(closed_within(&mut slow, Duration::from_secs(5))
            .await
            .is_ok());
        stop.cancel();
    }

    #[tokio::test]
    async fn an_idle_connection_is_closed_and_a_busy_one_is_not() {
        let (address, _, stop) = server(limits()).await;
        let mut idle = TcpStream::connect(address).await.expect("connect");
        idle.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            .await
            .expect("write");
        let answered = closed_within(&mut idle, Duration::from_secs(5))
            .await
            .expect("closed once idle");
        assert!(
            answered.starts_with(b"HTTP/1.1 200"),
            "answered before closing"
        );

        let mut busy = TcpStream::connect(address).await.expect("connect");
        for _ in 0..4 {
            busy.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
                .await
                .expect("write");
            let mut buffer = [0u8; 256];
            let n = busy.read(&mut buffer).await.expect("read");
            assert!(buffer[..n].starts_with(b"HTTP/1.1 200"));
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        stop.cancel();
    }

    /// A connection from `source` (a loopback address of its own).
    async fn connect_from(source: &str, address: SocketAddr) -> TcpStream {
        let socket = tokio::net::TcpSocket::new_v4().expect("a socket");
        socket
            .bind(format!("{source}:0").parse().expect("an address"))
            .expect("bind the source address");
        socket.connect(address).await.expect("connect")
    }

    #[tokio::test]
    async fn connections_beyond_a_sources_share_or_the_total_are_closed_at_once() {
        let (address, shed, stop) = server(ConnectionLimits {
            idle_timeout: Duration::from_secs(30),
            header_read_timeout: Duration::from_secs(30),
            ..limits()
        })
        .await;
        // Two places per source.
        let _first = connect_from("127.0.0.1", address).await;
        let _second = connect_from("127.0.0.1", address).await;
        let mut third = connect_from("127.0.0.1", address).await;
        assert!(closed_within(&mut third, Duration::from_secs(5))
            .await
            .is_ok());
        assert_eq!(shed.count(), 1);
        // Another source still gets in, up to the total of three.
        let mut other = connect_from("127.0.0.2", address).await;
        assert!(
            closed_within(&mut other, Duration::from_millis(300))
                .await
                .is_err(),
            "another source is served"
        );
        let mut over_total = connect_from("127.0.0.2", address).await;
        assert!(closed_within(&mut over_total, Duration::from_secs(5))
            .await
            .is_ok());
        assert_eq!(shed.count(), 2);
        // Served: two from the first source, one from the other.
        assert_eq!(shed.open(), 3);
        stop.cancel();
    }
}
