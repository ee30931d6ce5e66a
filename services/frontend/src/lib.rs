//! `freshet-frontend`: the one public API, the Kinesis Data Streams JSON 1.1
//! protocol (`POST /`, `X-Amz-Target: Kinesis_20131202.<Operation>`), served
//! over HTTP/1.1 and cleartext HTTP/2 (prior knowledge) on one port.
//!
//! For each request it: identifies the caller (SigV4 access key → account),
//! validates the input completely before anything changes, and then either
//! forwards a control-plane call or routes a data call to the storage worker
//! that leads the shard. Routing uses this node's own shard-map snapshot
//! (kept current from membership's change log) while its entries are valid
//! by the timer service's clock, and the cache service otherwise — see
//! `freshet-shardmap`.
//!
//! Layout: `http_api.rs` (the wire: targets, content types, body limits,
//! error bodies), `admission.rs` (per-source places), `auth.rs` (who
//! calls: SigV4 in two steps), `access.rs` (what it may do: IAM policies,
//! with `resource_policies.rs`), `error.rs`, `iterator.rs` (signed
//! iterators and tokens), `ops/` (one module per group of operations:
//! `streams`, `records/`, `reshard`, `capacity`, `policies`, and `replies`
//! for data-plane answers), `coalescer.rs` (concurrent appends to one shard
//! share one call to its leader).

mod access;
mod admission;
mod auth;
mod cbor;
mod coalescer;
pub mod connections;
mod error;
mod fan_out;
pub mod fuzzing;
mod http_api;
pub mod iterator;
mod metrics;
mod ops;
mod resource_policies;
pub mod tls;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use freshet_proto::v1::control_plane_client::ControlPlaneClient;
use freshet_server::{CacheAddr, ControlPlaneAddr, MembershipAddr, TimerAddr};
use freshet_shardmap::{Router, SharedShardMap, Subscription};
use freshet_timer_client::{TimerClient, TimerClientConfig};
use tokio::net::TcpListener;

pub use error::KinesisError;

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "freshet-frontend", about = "Freshet Kinesis-compatible API")]
pub struct Config {
    #[arg(
        long,
        env = "FRESHET_FRONTEND_LISTEN",
        default_value = "127.0.0.1:4567"
    )]
    pub listen: String,
    /// The deployment's region: in secure mode the only region a request
    /// may be signed for. (Development mode serves every region, each a
    /// namespace of its own, as LocalStack does.)
    #[arg(long, env = "FRESHET_REGION", default_value = "us-east-1")]
    pub region: String,
    #[command(flatten)]
    pub auth: freshet_server::AuthFlags,
    /// Secure mode: how long a resolved access key is trusted before it is
    /// looked up again (a disabled key may work this long).
    #[arg(long, env = "FRESHET_KEY_CACHE_TTL", default_value = "60s", value_parser = humantime::parse_duration)]
    pub key_cache_ttl: Duration,
    /// Development mode: the account of a request whose access key id is
    /// not 12 digits.
    #[arg(long, env = "FRESHET_DEFAULT_ACCOUNT", default_value = "000000000000")]
    pub default_account: String,
    #[command(flatten)]
    pub control_plane: ControlPlaneAddr,
    #[command(flatten)]
    pub cache: CacheAddr,
    #[command(flatten)]
    pub membership: MembershipAddr,
    #[command(flatten)]
    pub timer: TimerAddr,
    /// Key that signs shard iterators and pagination tokens; every frontend
    /// of a deployment must share it.
    #[arg(
        long,
        env = "FRESHET_ITERATOR_SECRET",
        hide_env_values = true,
        default_value = DEVELOPMENT_ITERATOR_SECRET
    )]
    pub iterator_secret: String,
    /// Keys that signed iterators and NextTokens before the current one,
    /// comma-separated: still accepted, never used to sign (rotate by
    /// moving the old secret here; drop it once its tokens have expired).
    #[arg(
        long,
        env = "FRESHET_ITERATOR_PREVIOUS_SECRETS",
        hide_env_values = true,
        value_delimiter = ','
    )]
    pub iterator_previous_secrets: Vec<String>,
    /// How long the timer client may go without a successful poll before
    /// its time is considered unknown.
    #[arg(long, env = "FRESHET_TIMER_MAX_UNSYNCED", default_value = "5s", value_parser = humantime::parse_duration)]
    pub timer_max_unsynced: Duration,
    /// Deadline of each call to a storage worker: a hung or frozen worker
    /// fails the request (InternalFailure) instead of holding it forever.
    #[arg(long, env = "FRESHET_STORAGE_TIMEOUT", default_value = "5s", value_parser = humantime::parse_duration)]
    pub storage_timeout: Duration,
    /// Append calls each shard may have outstanding at its leader from this
    /// frontend; concurrent appends beyond that queue and go together in the
    /// next call (a very large value turns coalescing off).
    #[arg(long, env = "FRESHET_APPEND_CALLS_PER_SHARD", default_value_t = 1)]
    pub append_calls_per_shard: usize,
    /// Requests handled at once; more wait for a slot before their bodies
    /// are read (memory stays bounded under a surge of clients).
    #[arg(long, env = "FRESHET_MAX_IN_FLIGHT_REQUESTS", default_value_t = 1024)]
    pub max_in_flight_requests: usize,
    /// Requests one address may have in flight at once (0: no cap); more
    /// get LimitExceededException, which SDKs retry. Default: 256 in secure
    /// mode, no cap in development mode (where everything comes from one
    /// machine).
    #[arg(long, env = "FRESHET_MAX_REQUESTS_PER_SOURCE")]
    pub max_requests_per_source: Option<usize>,
    /// How long a request's body may take to arrive once its headers
    /// passed; slower ones get 408 RequestTimeoutException.
    #[arg(long, env = "FRESHET_BODY_READ_TIMEOUT", default_value = "30s", value_parser = humantime::parse_duration)]
    pub body_read_timeout: Duration,
    /// How long an operation may run once its request has arrived;
    /// longer ones answer InternalFailure (a dependency is stuck).
    #[arg(long, env = "FRESHET_REQUEST_TIMEOUT", default_value = "60s", value_parser = humantime::parse_duration)]
    pub request_timeout: Duration,
    /// How long one hour of a stream's retention period lasts (shorter
    /// only in tests).
    #[command(flatten)]
    pub retention: freshet_server::RetentionHour,
    /// HTTPS beside the plaintext listener.
    #[command(flatten)]
    pub tls: tls::TlsFlags,
    /// MiB of request bodies all requests together may be reading or
    /// holding at once; a request that finds no room within the body read
    /// timeout gets LimitExceededException (SDKs retry it).
    #[arg(long, env = "FRESHET_BODY_BUDGET_MIB", default_value_t = 512)]
    pub body_budget_mib: usize,
    /// Connections open at once; one more is closed as soon as accepted.
    #[arg(long, env = "FRESHET_MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Connections one address (IPv6: one /64) may have open at once (0:
    /// no cap). Default: 256 in secure mode, no cap in development mode.
    #[arg(long, env = "FRESHET_MAX_CONNECTIONS_PER_SOURCE")]
    pub max_connections_per_source: Option<usize>,
    /// How long a client may take to send a request's headers.
    #[arg(long, env = "FRESHET_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub header_read_timeout: Duration,
    /// How long a connection may carry nothing before it is closed.
    #[arg(long, env = "FRESHET_IDLE_TIMEOUT", default_value = "120s", value_parser = humantime::parse_duration)]
    pub idle_timeout: Duration,
    /// SubscribeToShard subscriptions this frontend holds at once; more get
    /// LimitExceededException. Each holds at most two events and 2 MiB of
    /// unread upstream: a few MiB, up to about 50 MiB while 10 MiB
    /// records pass through it.
    #[arg(long, env = "FRESHET_MAX_SUBSCRIPTIONS", default_value_t = 1000)]
    pub max_subscriptions: usize,
    /// Requests one HTTP/2 connection may have open at once.
    #[arg(long, env = "FRESHET_HTTP2_MAX_STREAMS", default_value_t = 100)]
    pub http2_max_streams: u32,
    #[command(flatten)]
    pub internal: freshet_server::InternalTokenFlag,
    #[command(flatten)]
    pub observability: freshet_server::ObservabilityFlags,
    /// Publish shard-level metrics (CloudWatch's enhanced monitoring:
    /// each stream metric per shard as well).
    #[arg(long, env = "FRESHET_SHARD_LEVEL_METRICS")]
    pub shard_level_metrics: bool,
}

/// Where the frontend serves its metrics unless told otherwise.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9150";

/// The iterator key anyone can read in this source: development only.
pub const DEVELOPMENT_ITERATOR_SECRET: &str = "freshet-development-secret";

/// Everything a request handler needs.
pub struct Frontend {
    pub(crate) auth: auth::Authenticator,
    pub(crate) resource_policies: Arc<resource_policies::ResourcePolicies>,
    pub(crate) control_plane: ControlPlaneClient<freshet_server::TracedChannel>,
    pub(crate) router: Router,
    pub(crate) timer: TimerClient,
    pub(crate) signer: iterator::TokenSigner,
    pub(crate) storage: Arc<ops::StoragePool>,
    /// Clients for SubscribeToShard's upstreams, on connections of their own.
    pub(crate) follows: ops::StoragePool,
    pub(crate) appends: Arc<coalescer::AppendCoalescer>,
    /// The SubscribeToShard subscriptions held here.
    pub(crate) subscriptions: Arc<fan_out::Subscriptions>,
    /// Whether consumers are ACTIVE, briefly cached.
    pub(crate) consumers: fan_out::ConsumerLookups,
    /// The shared upstreams of the subscriptions at a shard's tip.
    pub(crate) feeds: fan_out::Feeds,
    storage_timeout: Duration,
    /// One retention hour, in milliseconds (shorter only in tests).
    retention_hour_ms: i64,
    /// Counts records placed by AUTO record distribution: the next goes to
    /// the open shard this picks (`StreamRoute::spread_hash_key`).
    spread: std::sync::atomic::AtomicU64,
    max_in_flight_requests: usize,
    pub(crate) sources: admission::SourceLimits,
    pub(crate) body_read_timeout: Duration,
    pub(crate) request_timeout: Duration,
    /// KiB of request bodies being read or held, across all requests.
    pub(crate) body_budget: Arc<tokio::sync::Semaphore>,
    connection_limits: connections::ConnectionLimits,
    /// Connections open now, and those closed at once because
    /// [`connections::ConnectionLimits`] were reached.
    pub connection_counts: Arc<connections::ConnectionCounts>,
    /// Tasks requests leave behind (the coalescer's senders).
    tasks: freshet_server::Tasks,
    /// This frontend's metrics, as scraped.
    pub registry: freshet_metrics::Registry,
    pub(crate) metrics: metrics::FrontendMetrics,
    _subscription: Subscription,
}

impl Frontend {
    /// Connects (lazily) to the internal services and starts following the
    /// shard-map change log.
    pub fn new(config: &Config) -> Result<Arc<Frontend>, RunError> {
        let secure = config.auth.mode == freshet_server::AuthMode::Sigv4;
        if secure && config.iterator_secret == DEVELOPMENT_ITERATOR_SECRET {
            return Err(RunError::DevelopmentIteratorSecret);
        }
        let token = config.internal.token_for(config.auth.mode)?;
        let default_account = config
            .default_account
            .parse()
            .map_err(RunError::DefaultAccount)?;
        let control_plane_channel =
            freshet_server::grpc_channel(&config.control_plane.addr, &token)?;
        let resource_policies = Arc::new(resource_policies::ResourcePolicies::new(
            freshet_server::control_plane_client(control_plane_channel.clone()),
        ));
        let auth = if secure {
            auth::Authenticator::sigv4(
                config.region.clone(),
                freshet_proto::v1::identities_client::IdentitiesClient::new(
                    control_plane_channel.clone(),
                ),
                config.key_cache_ttl,
                resource_policies.clone(),
            )
        } else {
            auth::Authenticator::development(default_account, resource_policies.clone())
        };
        let control_plane = freshet_server::control_plane_client(control_plane_channel);
        let timer = TimerClient::spawn(
            freshet_server::grpc_channel(&config.timer.addr, &token)?,
            TimerClientConfig {
                max_unsynced: config.timer_max_unsynced,
                ..TimerClientConfig::default()
            },
        );
        let map = SharedShardMap::default();
        let subscription = freshet_shardmap::follow_change_log(
            freshet_server::grpc_channel(&config.membership.addr, &token)?,
            map.clone(),
            None,
        );
        let router = Router::new(
            map,
            freshet_server::grpc_channel(&config.cache.addr, &token)?,
            timer.clone(),
        );
        let locate = locate_shard(router.clone());
        let storage = Arc::new(ops::StoragePool::new(&token));
        let tasks = freshet_server::Tasks::new();
        let registry = freshet_metrics::Registry::new();
        let metrics = metrics::FrontendMetrics::register(&registry, config.shard_level_metrics);
        let connection_counts = Arc::new(connections::ConnectionCounts::default());
        connection_counts.register_in(&registry);
        let consumers = fan_out::ConsumerLookups::new(router.map().clone(), control_plane.clone());
        let subscriptions = fan_out::Subscriptions::new(config.max_subscriptions);
        let feeds = fan_out::Feeds::new(&registry);
        tasks.spawn_loop(fan_out::report_loop(
            subscriptions.clone(),
            control_plane.clone(),
        ));
        Ok(Arc::new(Frontend {
            registry,
            metrics,
            auth,
            resource_policies,
            control_plane,
            router,
            timer,
            signer: iterator::TokenSigner::rotating(
                config.iterator_secret.as_bytes(),
                &config
                    .iterator_previous_secrets
                    .iter()
                    .map(String::as_bytes)
                    .collect::<Vec<_>>(),
            ),
            storage: storage.clone(),
            follows: ops::StoragePool::for_follows(&token),
            appends: coalescer::AppendCoalescer::new(
                storage,
                config.storage_timeout,
                config.append_calls_per_shard,
                tasks.clone(),
                locate,
            ),
            subscriptions,
            consumers,
            feeds,
            storage_timeout: config.storage_timeout,
            retention_hour_ms: config.retention.millis(),
            spread: std::sync::atomic::AtomicU64::new(0),
            max_in_flight_requests: config.max_in_flight_requests,
            sources: admission::SourceLimits::new(
                config
                    .max_requests_per_source
                    .unwrap_or(if secure { 256 } else { 0 }),
            ),
            body_read_timeout: config.body_read_timeout,
            request_timeout: config.request_timeout,
            body_budget: Arc::new(tokio::sync::Semaphore::new(
                config
                    .body_budget_mib
                    .saturating_mul(1024)
                    .clamp(1, tokio::sync::Semaphore::MAX_PERMITS),
            )),
            connection_limits: connections::ConnectionLimits {
                max_connections: config.max_connections,
                max_connections_per_source: config
                    .max_connections_per_source
                    .unwrap_or(if secure { 256 } else { 0 }),
                header_read_timeout: config.header_read_timeout,
                idle_timeout: config.idle_timeout,
                http2_max_streams: config.http2_max_streams,
            },
            connection_counts,
            tasks,
            _subscription: subscription,
        }))
    }

    /// The routing layer (tests inspect which branch lookups took).
    pub fn router(&self) -> &Router {
        &self.router
    }

    /// SubscribeToShard's upstreams open now: (shared by the subscriptions
    /// at a shard's tip, each subscription's own).
    pub fn fan_out_upstreams(&self) -> (i64, i64) {
        (self.feeds.shared.get(), self.feeds.own.get())
    }

    /// How often a subscription fell out of its shard's shared upstream.
    pub fn fan_out_fell_behind(&self) -> u64 {
        self.feeds.fell_behind.get()
    }

    /// The deadline of each call to a storage worker.
    pub(crate) fn storage_timeout(&self) -> Duration {
        self.storage_timeout
    }

    pub(crate) fn storage_request<T>(&self, message: T) -> tonic::Request<T> {
        freshet_server::request_with_deadline(message, self.storage_timeout)
    }

    /// Milliseconds since the epoch by the timer service (the local clock
    /// only while the timer is unreachable).
    /// The arrival time from which `entry`'s records are served now
    /// (`freshet_shardmap::unexpired_from`; the workers apply the same rule).
    pub(crate) fn unexpired_from(&self, entry: &freshet_shardmap::ShardMapEntry) -> i64 {
        freshet_shardmap::unexpired_from(entry, self.now_ms(), self.retention_hour_ms)
    }

    /// A stream's trim horizon as a time: the oldest arrival still served,
    /// and no earlier than the stream's creation.
    pub(crate) fn trim_horizon_ms(&self, stream: &freshet_proto::v1::StreamInfo) -> i64 {
        freshet_shardmap::unexpired_since(
            stream.retention_hours,
            stream.expired_before_ms,
            self.now_ms(),
            self.retention_hour_ms,
        )
        .max(stream.created_at_ms)
    }

    /// The first of `records` consecutive spread positions (see `spread`).
    pub(crate) fn next_spread(&self, records: usize) -> u64 {
        self.spread.fetch_add(
            u64::try_from(records).unwrap_or(u64::MAX),
            std::sync::atomic::Ordering::Relaxed,
        )
    }

    pub(crate) fn now_ms(&self) -> i64 {
        match self.timer.now() {
            Some(now) => now.earliest_micros / 1000,
            None => std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
                .unwrap_or(0),
        }
    }
}

/// Why the frontend could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The listener's own address could not be read.
    #[error("read the bound address: {0}")]
    Address(#[source] std::io::Error),
    #[error(transparent)]
    BadAddress(#[from] freshet_server::BadAddress),
    #[error("secure mode (FRESHET_AUTH=sigv4) needs FRESHET_ITERATOR_SECRET set to a secret of the deployment's own")]
    DevelopmentIteratorSecret,
    #[error(transparent)]
    Token(#[from] freshet_server::BadInternalToken),

    #[error("FRESHET_DEFAULT_ACCOUNT: {0}")]
    DefaultAccount(#[source] freshet_types::identity::BadAccountId),
    #[error(transparent)]
    Metrics(std::io::Error),
    #[error(transparent)]
    Tls(#[from] tls::TlsSetupError),
}

/// Serves the Kinesis API on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let endpoint = config
        .observability
        .bind_metrics(DEFAULT_METRICS_ADDR)
        .await
        .map_err(RunError::Metrics)?;
    let frontend = Frontend::new(&config)?;
    let https = config.tls.bind().await?;
    let scrapes = tokio_util::sync::CancellationToken::new();
    endpoint.spawn(frontend.registry.clone(), scrapes.clone());
    let _stop_scrapes = scrapes.drop_guard();
    serve_with_https(frontend, listener, https, shutdown).await
}

/// Serves an already-built frontend (HTTP/1.1 and h2c on one port,
/// within its connection limits: `connections.rs`).
pub async fn serve(
    frontend: Arc<Frontend>,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    serve_with_https(frontend, listener, None, shutdown).await
}

/// [`serve`], and HTTPS on `https` too if given (each listener within its
/// own connection limits).
pub async fn serve_with_https(
    frontend: Arc<Frontend>,
    listener: TcpListener,
    https: Option<tls::HttpsListener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), RunError> {
    let addr = listener.local_addr().map_err(RunError::Address)?;
    tracing::info!(%addr, "frontend serving the kinesis api");
    if let Some(https) = &https {
        let addr = https.listener.local_addr().map_err(RunError::Address)?;
        tracing::info!(%addr, "frontend serving the kinesis api over https");
    }
    let tasks = frontend.tasks.clone();
    // Stop accepting on `shutdown`, then drain the requests in flight for
    // at most the drain deadline, then wait for the coalescer's senders.
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn({
        let stop = stop.clone();
        async move {
            shutdown.await;
            stop.cancel();
        }
    });
    let router = http_api::router(frontend.clone(), frontend.max_in_flight_requests);
    let plaintext = connections::serve(
        listener,
        None,
        router.clone(),
        frontend.connection_limits,
        frontend.connection_counts.clone(),
        stop.clone(),
        freshet_server::DRAIN_DEADLINE,
    );
    let encrypted = async {
        if let Some(https) = https {
            connections::serve(
                https.listener,
                Some(https.acceptor),
                router,
                frontend.connection_limits,
                frontend.connection_counts.clone(),
                stop,
                freshet_server::DRAIN_DEADLINE,
            )
            .await;
        }
    };
    tokio::join!(plaintext, encrypted);
    tasks.stop(freshet_server::TASK_STOP_DEADLINE).await;
    Ok(())
}

/// Finds a shard's current entry by asking for its stream's route afresh
/// (the one it was routed by named a leader that failed).
fn locate_shard(router: Router) -> coalescer::LocateShard {
    Arc::new(
        move |stream: freshet_types::StreamArn, shard_id: String, afresh: bool| {
            let router = router.clone();
            Box::pin(async move {
                if afresh {
                    router.invalidate(&stream);
                }
                let route = router.stream_route(&stream).await.ok().flatten()?;
                route.shard(&shard_id).cloned()
            })
        },
    )
}
