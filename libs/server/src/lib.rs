//! What every Freshet service process shares: the shutdown signal and the
//! tasks it stops, the gRPC server (one traced span per request, health and
//! reflection, a drain deadline), the gRPC clients of every service with
//! their deadlines and message limits, the address and auth-mode flags, and
//! the internal token services present to each other (`internal_auth.rs`).
//!
//! # Shutdown order
//! On SIGTERM (or SIGINT) every service: stops accepting connections →
//! drains in-flight requests, for at most [`DRAIN_DEADLINE`] → stops its
//! background tasks ([`Tasks::stop`]: loops are cancelled at their next
//! await, one-off tasks such as a resharding step finish, all within
//! [`TASK_STOP_DEADLINE`]) → flushes what it keeps (a storage worker's
//! commit points) → exits. A write cut off by a deadline is no different
//! from one cut off by a crash, which the write path is built to survive.

mod clients;
mod flags;
mod grpc;
mod internal_auth;
mod metrics;
mod observe;
mod shutdown;
mod traced_channel;

use std::future::Future;

use tokio::net::TcpListener;

pub use clients::{
    admin_channel, cache_client, control_plane_client, grpc_channel, membership_client,
    request_with_deadline, storage_client, timer_client, BadAddress, StorageClients,
    CONTROL_PLANE_MESSAGE_LIMIT, SHARD_MAP_MESSAGE_LIMIT, STORAGE_MESSAGE_LIMIT,
};
pub use flags::{
    AuthFlags, AuthMode, CacheAddr, ControlPlaneAddr, DatabaseUrl, MembershipAddr,
    ObservabilityFlags, RetentionHour, TimerAddr,
};
pub use freshet_telemetry::LogFormat;
pub use grpc::{grpc_server, serve_grpc, GrpcServer, Health, Router, ServeError};
pub use internal_auth::{
    AdminCheck, AdminToken, AdminTokenFlag, BadInternalToken, InternalToken, InternalTokenFlag,
    OutgoingCall, RequireTokenLayer,
};
pub use metrics::{Metrics, MetricsServing};
pub use shutdown::{shutdown_signal, Tasks, DRAIN_DEADLINE, TASK_STOP_DEADLINE};
pub use traced_channel::TracedChannel;

/// The body of every service binary: build the runtime, start telemetry
/// (logs as `log_format` says), bind `listen`, and run `serve` until
/// SIGTERM/SIGINT. `serve`'s error is the process's last word: printed with
/// its causes, then exit code 1.
pub fn run_main<F, Fut, E>(
    service_name: &'static str,
    listen: &str,
    log_format: LogFormat,
    serve: F,
) -> std::process::ExitCode
where
    F: FnOnce(TcpListener, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = Result<(), E>>,
    E: std::fmt::Display,
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
        let _telemetry = match freshet_telemetry::init(service_name, log_format) {
            Ok(guard) => guard,
            Err(error) => return Err(format!("start telemetry: {error}")),
        };
        let listener = TcpListener::bind(listen)
            .await
            .map_err(|error| format!("bind {listen}: {error}"))?;
        serve(listener, Box::pin(shutdown_signal()))
            .await
            .map_err(|error| format!("{error:#}"))
    });
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            tracing::error!("{service_name} failed to {error}");
            eprintln!("{service_name} failed to {error}");
            std::process::ExitCode::FAILURE
        }
    }
}
