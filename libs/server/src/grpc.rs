//! The gRPC server every service runs: one traced span per request, the
//! standard health and reflection services, and a drain deadline.

use std::future::Future;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic::transport::Server;
use tonic_health::server::HealthReporter;
use tower::layer::util::{Identity, Stack};

use crate::internal_auth::{InternalToken, RequireTokenLayer};
use crate::observe::ObserveCallsLayer;
use crate::{Metrics, DRAIN_DEADLINE};

type Layers = Stack<RequireTokenLayer, Stack<ObserveCallsLayer, Identity>>;
/// Every internal gRPC server: each call counted and timed, and its token
/// checked before any service sees it.
pub type GrpcServer = Server<Layers>;
/// A [`GrpcServer`] with its services added.
pub type Router = tonic::transport::server::Router<Layers>;

/// Why a gRPC server stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("serve grpc: {0}")]
    Transport(#[from] tonic::transport::Error),
    #[error("build the reflection service: {0}")]
    Reflection(#[from] tonic_reflection::server::Error),
}

/// A gRPC server whose requests each run in a span parented to the caller,
/// are counted in `metrics`, and are refused when they do not present
/// `token` (when there is one).
pub fn grpc_server(token: &InternalToken, metrics: &Metrics) -> GrpcServer {
    Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(Duration::from_secs(10)))
        .trace_fn(freshet_telemetry::grpc_server_span)
        .layer(ObserveCallsLayer::register(metrics.registry()))
        .layer(RequireTokenLayer::new(token))
}

/// The health service's handle: a service reports SERVING while it serves
/// and NOT_SERVING once it starts draining.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    service_name: &'static str,
}

impl Health {
    async fn set(&self, serving: bool) {
        let status = if serving {
            tonic_health::ServingStatus::Serving
        } else {
            tonic_health::ServingStatus::NotServing
        };
        self.reporter
            .set_service_status(self.service_name, status)
            .await;
        self.reporter.set_service_status("", status).await;
    }
}

/// Adds `grpc.health.v1.Health` and the reflection services (so
/// `grpcurl -plaintext ADDR list` and the examples in `proto/` work) to
/// `router`, which serves `service_name` (e.g. `freshet.v1.Membership`).
pub fn with_health_and_reflection(
    router: Router,
    service_name: &'static str,
) -> Result<(Router, Health), ServeError> {
    let (reporter, health_service) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(freshet_proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let router = router.add_service(health_service).add_service(reflection);
    Ok((
        router,
        Health {
            reporter,
            service_name,
        },
    ))
}

/// Serves `router` (which serves `service_name`) on `listener`, with health
/// and reflection, and `metrics` on its own port, until `shutdown`
/// resolves; then drains in-flight requests for at most [`DRAIN_DEADLINE`].
pub async fn serve_grpc(
    router: Router,
    service_name: &'static str,
    listener: TcpListener,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), ServeError> {
    let _metrics = metrics.serve();
    let (router, health) = with_health_and_reflection(router, service_name)?;
    health.set(true).await;
    let draining = CancellationToken::new();
    let signal = {
        let (draining, health) = (draining.clone(), health.clone());
        async move {
            shutdown.await;
            health.set(false).await;
            draining.cancel();
        }
    };
    let incoming = tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true));
    let server = router.serve_with_incoming_shutdown(incoming, signal);
    tokio::pin!(server);
    tokio::select! {
        result = &mut server => return Ok(result?),
        () = draining.cancelled() => {}
    }
    match tokio::time::timeout(DRAIN_DEADLINE, server).await {
        Ok(result) => Ok(result?),
        Err(_) => {
            tracing::warn!(
                deadline = ?DRAIN_DEADLINE,
                "in-flight requests did not finish in time; stopping anyway"
            );
            Ok(())
        }
    }
}
