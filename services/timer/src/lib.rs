//! `freshet-timer`: the source of truth for time. Every validity time in the
//! shard map is compared with this service's clock (through
//! `freshet-timer-client`), never with a component's local clock.
//!
//! Its clock is the host's wall clock, made monotonic, and reported with a
//! configured uncertainty bound.

use std::future::Future;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use freshet_proto::v1::timer_server::{Timer, TimerServer};
use freshet_proto::v1::{NowRequest, NowResponse};
use tokio::net::TcpListener;
use tonic::{Request, Response, Status};

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "freshet-timer", about = "Freshet timer service")]
pub struct Config {
    /// Address to serve gRPC on.
    #[arg(long, env = "FRESHET_TIMER_LISTEN", default_value = "127.0.0.1:7051")]
    pub listen: String,
    /// Bound on how far this host's clock may be from true time.
    #[arg(long, env = "FRESHET_TIMER_UNCERTAINTY", default_value = "1ms", value_parser = humantime::parse_duration)]
    pub uncertainty: Duration,
    #[command(flatten)]
    pub internal: freshet_server::InternalTokenFlag,
    #[command(flatten)]
    pub observability: freshet_server::ObservabilityFlags,
    #[command(flatten)]
    pub auth: freshet_server::AuthFlags,
}

/// The Timer gRPC service.
pub struct TimerService {
    last_micros: AtomicI64,
    uncertainty_micros: i64,
}

impl TimerService {
    pub fn new(uncertainty: Duration) -> TimerService {
        TimerService {
            last_micros: AtomicI64::new(0),
            uncertainty_micros: i64::try_from(uncertainty.as_micros()).unwrap_or(i64::MAX),
        }
    }

    /// Wall-clock microseconds, never smaller than a value handed out before.
    pub fn now_micros(&self) -> i64 {
        let wall = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        let previous = self.last_micros.fetch_max(wall, Ordering::AcqRel);
        previous.max(wall)
    }
}

#[tonic::async_trait]
impl Timer for TimerService {
    async fn now(&self, _request: Request<NowRequest>) -> Result<Response<NowResponse>, Status> {
        Ok(Response::new(NowResponse {
            now_micros: self.now_micros(),
            uncertainty_micros: self.uncertainty_micros,
        }))
    }
}

/// Why the timer stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Token(#[from] freshet_server::BadInternalToken),
    /// The listener's own address could not be read.
    #[error("read the bound address: {0}")]
    Address(#[source] std::io::Error),
    #[error(transparent)]
    Serve(#[from] freshet_server::ServeError),
    #[error(transparent)]
    Metrics(std::io::Error),
}

/// Where the timer serves its metrics unless told otherwise.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9151";

/// Serves the timer on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let token = config.internal.token_for(config.auth.mode)?;
    let service = TimerService::new(config.uncertainty);
    let addr = listener.local_addr().map_err(RunError::Address)?;
    tracing::info!(%addr, "timer serving grpc");
    let metrics = freshet_server::Metrics::bind(&config.observability, DEFAULT_METRICS_ADDR)
        .await
        .map_err(RunError::Metrics)?;
    let router =
        freshet_server::grpc_server(&token, &metrics).add_service(TimerServer::new(service));
    freshet_server::serve_grpc(router, "freshet.v1.Timer", listener, metrics, shutdown).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_clock_never_goes_backwards() {
        let timer = TimerService::new(Duration::from_millis(1));
        timer.last_micros.store(i64::MAX - 10, Ordering::SeqCst);
        assert_eq!(timer.now_micros(), i64::MAX - 10);
    }
}
