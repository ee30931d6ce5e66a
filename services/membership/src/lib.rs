//! `freshet-membership`: which storage workers exist, and which of them lead
//! and replicate each shard.
//!
//! - Workers register with their availability zone and address and then
//!   heartbeat; a worker is alive while its last heartbeat is recent.
//! - The shard map is owned here. Every change (a placement, a tombstone) is
//!   written to the Postgres change log in one transaction with the shard
//!   rows it describes, and only after the commit is it broadcast to
//!   subscribers, in version order.
//! - Enhanced fan-out consumers change through the same log
//!   (`consumers.rs`): the control plane asks, membership records.
//! - `Subscribe` streams the log from any version: the missing changes from
//!   Postgres, then live ones; a snapshot first when the subscriber is new or
//!   too far behind.
//!
//! Every entry handed out is stamped with a validity time on the timer
//! service's clock (`route_ttl` from now); receivers must revalidate it after.

mod config;
mod consumers;
mod failover;
mod handlers;
mod metrics;
mod placement;
mod publish;
mod reconfigure;
mod service;
mod silences;
mod subscribe;

use std::future::Future;

use freshet_metastore::MetaStore;
use freshet_proto::v1::membership_server::MembershipServer;
use freshet_timer_client::{TimerClient, TimerClientConfig};
use tokio::net::TcpListener;

pub use config::{Config, UnsafeLease};
pub use service::MembershipService;

/// Membership's decisions about a shard's copies, as pure functions of the
/// shard's row and what its copies answer, and about silences and leases,
/// as pure functions of the timer's reading: the same code the service
/// runs, also driven by the deterministic simulator (`tests/sim`).
pub mod decisions {
    pub use crate::placement::{
        elect, place_next_segment, spare_replica, CopyPosition, Election, Promotion, COPIES,
    };
    pub use crate::reconfigure::after_report;
    pub use crate::silences::{lease_granted, Heard, HeartbeatRecord, Silences};
}

/// Where membership serves its metrics unless told otherwise.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9152";

/// Why membership stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Token(#[from] freshet_server::BadInternalToken),
    #[error(transparent)]
    Metastore(#[from] freshet_metastore::MetastoreError),
    #[error(transparent)]
    UnsafeLease(#[from] UnsafeLease),
    /// The listener's own address could not be read.
    #[error("read the bound address: {0}")]
    Address(#[source] std::io::Error),
    #[error(transparent)]
    BadAddress(#[from] freshet_server::BadAddress),
    #[error(transparent)]
    Serve(#[from] freshet_server::ServeError),
    #[error(transparent)]
    Metrics(std::io::Error),
}

/// Serves membership on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let pool = freshet_metastore::connect_url_and_migrate(&config.database.url, 10).await?;
    let token = config.internal.token_for(config.auth.mode)?;
    let timer = TimerClient::spawn(
        freshet_server::grpc_channel(&config.timer.addr, &token)?,
        TimerClientConfig::default(),
    );
    config.validate()?;
    let metrics = freshet_server::Metrics::bind(&config.observability, DEFAULT_METRICS_ADDR)
        .await
        .map_err(RunError::Metrics)?;
    serve(
        MembershipService::new(MetaStore::new(pool), timer, &config, &token),
        listener,
        metrics,
        shutdown,
    )
    .await
}

/// Serves an already-built service (tests build their own).
pub async fn serve(
    service: MembershipService,
    listener: TcpListener,
    metrics: freshet_server::Metrics,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let addr = listener.local_addr().map_err(RunError::Address)?;
    tracing::info!(%addr, "membership serving grpc");
    service.inner.metrics.register_in(metrics.registry());
    let head = service.inner.store.latest_version().await?;
    service
        .inner
        .head_version
        .fetch_max(head, std::sync::atomic::Ordering::AcqRel);
    let tasks = service.inner.tasks.clone();
    tasks.spawn_loop(failover::watch_leaders(service.clone()));
    let closing = service.inner.closing.clone();
    let shutdown = async move {
        shutdown.await;
        // Subscriptions never end on their own: end them so draining can finish.
        closing.cancel();
    };
    let router = freshet_server::grpc_server(&service.inner.token, &metrics).add_service(
        MembershipServer::new(service)
            .max_encoding_message_size(freshet_server::SHARD_MAP_MESSAGE_LIMIT)
            .max_decoding_message_size(16 * 1024 * 1024),
    );
    let served =
        freshet_server::serve_grpc(router, "freshet.v1.Membership", listener, metrics, shutdown)
            .await;
    tasks.stop(freshet_server::TASK_STOP_DEADLINE).await;
    Ok(served?)
}
