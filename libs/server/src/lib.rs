//! What every Freshet service process shares: the shutdown signal, a gRPC
//! server builder that opens one traced span per request, and lazily
//! connected, traced client channels.

use std::future::Future;
use std::time::Duration;

use anyhow::Context as _;
use tokio::net::TcpListener;
use tonic::transport::{Channel, Endpoint, Server};

pub use freshet_telemetry::TracedChannel;

/// Resolves on SIGTERM or SIGINT (Ctrl-C).
pub async fn shutdown_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::error!(%error, "failed to install SIGTERM handler");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = terminate => tracing::info!("received SIGTERM, shutting down"),
        _ = tokio::signal::ctrl_c() => tracing::info!("received SIGINT, shutting down"),
    }
}

/// A gRPC server whose requests each run in a span parented to the caller.
pub fn grpc_server() -> Server {
    Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .trace_fn(freshet_telemetry::grpc_server_span)
}

/// Serves `router` on `listener` until `shutdown` resolves, then drains
/// in-flight requests.
pub async fn serve_grpc(
    router: tonic::transport::server::Router,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    router
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
        .context("serve grpc")
}

/// A lazily connected, traced channel to `address` (`host:port` or a URL).
pub fn grpc_channel(address: &str) -> anyhow::Result<TracedChannel> {
    let url = if address.contains("://") {
        address.to_owned()
    } else {
        format!("http://{address}")
    };
    let endpoint = Endpoint::from_shared(url.clone())
        .with_context(|| format!("parse grpc address {url}"))?
        .connect_timeout(Duration::from_secs(2))
        .tcp_nodelay(true)
        .http2_keep_alive_interval(Duration::from_secs(10))
        .keep_alive_while_idle(true);
    let channel: Channel = endpoint.connect_lazy();
    Ok(freshet_telemetry::traced(channel))
}

/// The body of every service binary: build the runtime, start telemetry,
/// bind `listen`, and run `serve` until SIGTERM/SIGINT.
pub fn run_main<F, Fut>(
    service_name: &'static str,
    listen: &str,
    serve: F,
) -> std::process::ExitCode
where
    F: FnOnce(TcpListener, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = anyhow::Result<()>>,
{
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("failed to build the tokio runtime: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        let _telemetry = freshet_telemetry::init(service_name)?;
        let listener = TcpListener::bind(listen)
            .await
            .with_context(|| format!("bind {listen}"))?;
        serve(listener, Box::pin(shutdown_signal())).await
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{service_name} failed to {error:#}");
            eprintln!("{service_name} failed to {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
