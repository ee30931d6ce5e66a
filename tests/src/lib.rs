//! `freshet-e2e`: the test harness and the black-box tests of Freshet.
//!
//! [`Cluster::start`] brings up the whole topology on loopback with every
//! server bound to port 0: timer, membership, cache, control plane, storage
//! workers (in-process, or real child processes for kill -9 tests) and the
//! frontend. Each cluster gets its own Postgres database (created on the
//! shared server, dropped at shutdown) and its own Redis key prefix, so
//! tests run in parallel against the one Postgres and Redis of the machine.
//!
//! Tests drive it like a user would, through `aws-sdk-kinesis` (see
//! [`Cluster::kinesis`]) or raw HTTP for malformed requests.

pub mod cbor_client;
pub mod demo;
pub mod fan_out;
pub mod h2c_client;
pub mod load;
pub mod proxy;
pub mod raw_http;
pub mod topology;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use aws_sdk_kinesis::config::{BehaviorVersion, Credentials, Region};
use freshet_frontend::Frontend;
use freshet_proto::v1::membership_client::MembershipClient;
use freshet_proto::v1::ListWorkersRequest;
use tokio::net::TcpListener;
use tokio::sync::oneshot;

/// Postgres server the clusters create their databases on.
pub fn test_database_url() -> String {
    std::env::var("FRESHET_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

pub fn test_redis_url() -> String {
    std::env::var("FRESHET_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".to_owned())
}

/// How a storage worker runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerMode {
    /// A task in the test process.
    InProcess,
    /// The real `freshet-storage-worker` binary as a child process.
    Process,
}

#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// One worker per entry, in that availability zone.
    pub worker_zones: Vec<&'static str>,
    pub worker_mode: WorkerMode,
    /// Validity of handed-out shard-map entries.
    pub route_ttl: Duration,
    /// How long the frontend trusts its last timer poll.
    pub timer_max_unsynced: Duration,
    /// Membership declares a worker dead after this long without a heartbeat.
    pub heartbeat_timeout: Duration,
    /// How long one heartbeat lets a worker lead.
    pub lease_duration: Duration,
    /// How often workers heartbeat.
    pub worker_heartbeat_interval: Duration,
    /// Open shards an account may have.
    pub shard_limit: u32,
    /// On-demand streams an account may have.
    pub on_demand_stream_limit: u32,
    /// Reach Postgres through a proxy the test can cut.
    pub postgres_proxy: bool,
    /// Reach Redis through a proxy the test can cut.
    pub redis_proxy: bool,
    /// Membership alone reaches Postgres through a proxy of its own
    /// (`Cluster::membership_postgres_proxy`).
    pub membership_postgres_proxy: bool,
    /// Per-shard throughput limits the workers enforce (none by default:
    /// most tests write and read as fast as they can).
    pub shard_limits: freshet_storage_worker::ShardLimits,
    /// How the control plane scales on-demand streams.
    pub scaler: freshet_control_plane::ScalerConfig,
    /// Kinesis's control-plane call rates (off by default: tests poll
    /// DescribeStreamSummary faster than an account may).
    pub api_rate_limits: bool,
    /// How long consumers stay CREATING and DELETING.
    pub consumer_transition: Duration,
    /// Development (any key) or secure (SigV4 verified, with the
    /// [`SECURE_ACCESS_KEY`] bootstrap key) mode.
    pub auth: freshet_server::AuthMode,
    /// The frontend's shard-level metrics (off, as by default).
    pub shard_level_metrics: bool,
    /// Serve HTTPS too, with a development CA made for the cluster
    /// (`Cluster::https_endpoint`, `Cluster::tls_ca`).
    pub https: bool,
    /// Workers' retention: segment size, how long one hour of retention
    /// lasts and how often expired segments are looked for.
    pub retention: Retention,
    /// Process workers advertise a proxy the test owns in front of their
    /// port: everything that dials a worker (its leader, membership, the
    /// frontend) goes through it, and `Cluster::cut_worker` cuts it; the
    /// worker's own calls (heartbeats to membership) do not.
    pub worker_proxies: bool,
}

/// How workers roll their logs, and how fast retention runs: one
/// retention hour lasts `hour` in every service (the control plane, the
/// frontends and the workers agree on what has expired), and workers look
/// for expired files every `check_interval`.
#[derive(Debug, Clone, Copy)]
pub struct Retention {
    pub segment_bytes: u64,
    pub hour: Duration,
    pub check_interval: Duration,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            segment_bytes: 64 * 1024 * 1024,
            hour: Duration::from_secs(3_600),
            check_interval: Duration::from_secs(60),
        }
    }
}

/// Secure-mode clusters' bootstrap key (account 000000000000's root).
pub const SECURE_ACCESS_KEY: &str = "AKIAFRESHETTESTROOT1";
/// Its secret.
pub const SECURE_SECRET_KEY: &str = "freshet/test/secret/key/for/secure/mode/1";
/// Secure-mode clusters' internal token (what services present to each
/// other).
pub const SECURE_INTERNAL_TOKEN: &str = "freshet-test-internal-token";
/// Secure-mode clusters' admin token (what the operator presents to
/// manage users and keys).
pub const SECURE_ADMIN_TOKEN: &str = "freshet-test-admin-token";
/// Secure-mode clusters' master key (base64 of 32 bytes).
pub const SECURE_MASTER_KEY: &str = "ZnJlc2hldC10ZXN0LW1hc3Rlci1rZXktMzItYnl0ZXM=";

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            worker_zones: vec!["az-a", "az-b", "az-c"],
            worker_mode: WorkerMode::InProcess,
            route_ttl: Duration::from_secs(30),
            timer_max_unsynced: Duration::from_secs(5),
            heartbeat_timeout: Duration::from_secs(10),
            lease_duration: Duration::from_secs(3),
            worker_heartbeat_interval: Duration::from_millis(500),
            shard_limit: 1000,
            on_demand_stream_limit: 50,
            postgres_proxy: false,
            redis_proxy: false,
            membership_postgres_proxy: false,
            shard_limits: freshet_storage_worker::ShardLimits::UNLIMITED,
            // The scaler only acts where a test asks it to: load alone
            // never reshapes a stream.
            scaler: freshet_control_plane::ScalerConfig {
                scale_up_at: f64::INFINITY,
                scale_down_at: 0.0,
                // Nor does load move shards between workers.
                balance_at: f64::INFINITY,
                ..freshet_control_plane::ScalerConfig::default()
            },
            api_rate_limits: false,
            consumer_transition: Duration::from_millis(500),
            auth: freshet_server::AuthMode::Development,
            shard_level_metrics: false,
            https: false,
            retention: Retention::default(),
            worker_proxies: false,
        }
    }
}

impl ClusterOptions {
    /// Leases and heartbeats short enough for failover tests to run in
    /// seconds: heartbeat timeout 2 s, lease 1 s, heartbeats every 200 ms.
    pub fn short_leases() -> ClusterOptions {
        ClusterOptions {
            heartbeat_timeout: Duration::from_secs(2),
            lease_duration: Duration::from_secs(1),
            worker_heartbeat_interval: Duration::from_millis(200),
            ..ClusterOptions::default()
        }
    }
}

/// A running in-process service and the way to stop it.
struct RunningService {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl RunningService {
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        match tokio::time::timeout(Duration::from_secs(10), &mut self.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(error))) => tracing::warn!("service stopped with {error:#}"),
            Ok(Err(join_error)) => tracing::warn!("service task failed: {join_error}"),
            Err(_) => self.task.abort(),
        }
    }
}

async fn bind() -> anyhow::Result<(TcpListener, String)> {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .context("bind loopback port")?;
    let address = listener.local_addr()?.to_string();
    Ok((listener, address))
}

fn spawn_service<F, Fut, E>(listener: TcpListener, run: F) -> RunningService
where
    F: FnOnce(TcpListener, std::pin::Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = Result<(), E>> + Send + 'static,
    E: std::error::Error + Send + Sync + 'static,
{
    let (stop, stopped) = oneshot::channel::<()>();
    let shutdown = Box::pin(async move {
        let _ = stopped.await;
    });
    let served = run(listener, shutdown);
    let task = tokio::spawn(async move { served.await.map_err(anyhow::Error::from) });
    RunningService {
        stop: Some(stop),
        task,
    }
}

/// A storage worker of the cluster.
pub struct WorkerHandle {
    pub worker_id: String,
    pub zone: &'static str,
    pub data_dir: PathBuf,
    /// Where the worker listens, when the test chose it (behind a proxy).
    pub listen: Option<String>,
    /// The proxy it advertises (`ClusterOptions::worker_proxies`).
    pub proxy: Option<proxy::TcpProxy>,
    running: Option<RunningWorker>,
}

enum RunningWorker {
    InProcess(RunningService),
    Process(tokio::process::Child),
}

/// Path of a workspace binary next to the test executable
/// (`target/<profile>/<name>`); `just test` builds them first.
pub fn workspace_binary(name: &str) -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe().context("find the test executable")?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("test executable has no target directory")?;
    let path = dir.join(name);
    anyhow::ensure!(
        path.exists(),
        "{} is missing: build it first (cargo build --workspace)",
        path.display()
    );
    Ok(path)
}

/// A whole Freshet on loopback.
pub struct Cluster {
    pub endpoint: String,
    /// The frontend's HTTPS endpoint (`ClusterOptions::https`), named
    /// `localhost` as its certificate is.
    pub https_endpoint: Option<String>,
    /// The frontend's configuration (another frontend may be started
    /// beside it with [`Cluster::start_another_frontend`]).
    frontend_config: freshet_frontend::Config,
    pub frontend: Arc<Frontend>,
    pub database_url: String,
    pub database_name: String,
    pub redis_prefix: String,
    pub membership_addr: String,
    /// The control plane's gRPC address (it serves Identities too).
    pub control_plane_addr: String,
    pub timer_addr: String,
    pub workers: Vec<WorkerHandle>,
    /// The proxies in front of Postgres and Redis, when asked for.
    pub postgres_proxy: Option<proxy::TcpProxy>,
    /// The proxy between membership and Postgres, when asked for.
    pub membership_postgres_proxy: Option<proxy::TcpProxy>,
    pub redis_proxy: Option<proxy::TcpProxy>,
    options: ClusterOptions,
    timer: Option<RunningService>,
    services: Vec<RunningService>,
    control_plane: Option<RunningService>,
    _temp: tempfile::TempDir,
}

impl Cluster {
    pub async fn start() -> anyhow::Result<Cluster> {
        Cluster::start_with(ClusterOptions::default()).await
    }

    pub async fn start_with(options: ClusterOptions) -> anyhow::Result<Cluster> {
        freshet_telemetry::init_for_tests();
        let database_name = format!("freshet_test_{}", uuid::Uuid::new_v4().simple());
        let admin_url = test_database_url();
        let mut admin = <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url)
            .await
            .context("connect to the test postgres server")?;
        sqlx::query(&format!("CREATE DATABASE {database_name}"))
            .execute(&mut admin)
            .await
            .context("create the test database")?;
        let database_url = match admin_url.rsplit_once('/') {
            Some((server, _)) => format!("{server}/{database_name}"),
            None => anyhow::bail!("FRESHET_TEST_DATABASE_URL must name a database"),
        };
        let (membership_database_url, membership_postgres_proxy) =
            if options.membership_postgres_proxy {
                let (url, proxy) = proxied_database_url(&database_url).await?;
                (url, Some(proxy))
            } else {
                (database_url.clone(), None)
            };
        let (database_url, postgres_proxy) = if options.postgres_proxy {
            let (url, proxy) = proxied_database_url(&database_url).await?;
            (url, Some(proxy))
        } else {
            (database_url, None)
        };
        let membership_database_url = if options.membership_postgres_proxy {
            membership_database_url
        } else {
            database_url.clone()
        };
        let (redis_url, redis_proxy) = if options.redis_proxy {
            let server = test_redis_url()
                .trim_start_matches("redis://")
                .trim_end_matches('/')
                .to_owned();
            let proxy = proxy::TcpProxy::start(&server).await?;
            (format!("redis://{}", proxy.address), Some(proxy))
        } else {
            (test_redis_url(), None)
        };
        let redis_prefix = format!("freshet-test-{}:", uuid::Uuid::new_v4().simple());
        let temp = tempfile::tempdir().context("create temp dir")?;

        let internal = internal_flag(&options);
        let (timer_listener, timer_addr) = bind().await?;
        let timer = spawn_timer(timer_listener, &options);

        let (membership_listener, membership_addr) = bind().await?;
        let membership = spawn_service(membership_listener, {
            let config = freshet_membership::Config {
                observability: freshet_server::ObservabilityFlags::without_metrics(),
                listen: String::new(),
                database: freshet_server::DatabaseUrl {
                    url: membership_database_url,
                },
                timer: freshet_server::TimerAddr {
                    addr: timer_addr.clone(),
                },
                heartbeat_timeout: options.heartbeat_timeout,
                route_ttl: options.route_ttl,
                lease_duration: options.lease_duration,
                failover_check_interval: Duration::from_millis(200),
                internal: internal.clone(),
                auth: freshet_server::AuthFlags { mode: options.auth },
            };
            move |listener, shutdown| freshet_membership::run(config, listener, shutdown)
        });

        let (cache_listener, cache_addr) = bind().await?;
        let cache = spawn_service(cache_listener, {
            let config = freshet_cache::Config {
                observability: freshet_server::ObservabilityFlags::without_metrics(),
                listen: String::new(),
                database: freshet_server::DatabaseUrl {
                    url: database_url.clone(),
                },
                redis_url: redis_url.clone(),
                redis_prefix: redis_prefix.clone(),
                membership: freshet_server::MembershipAddr {
                    addr: membership_addr.clone(),
                },
                timer: freshet_server::TimerAddr {
                    addr: timer_addr.clone(),
                },
                route_ttl: options.route_ttl,
                key_ttl: Duration::from_secs(300),
                internal: internal.clone(),
                auth: freshet_server::AuthFlags { mode: options.auth },
            };
            move |listener, shutdown| freshet_cache::run(config, listener, shutdown)
        });

        let (control_plane_listener, control_plane_addr) = bind().await?;
        let control_plane = spawn_service(control_plane_listener, {
            let config = control_plane_config(&options, &database_url, &membership_addr);
            move |listener, shutdown| freshet_control_plane::run(config, listener, shutdown)
        });

        let frontend_config = freshet_frontend::Config {
            shard_level_metrics: options.shard_level_metrics,
            observability: freshet_server::ObservabilityFlags::without_metrics(),
            listen: String::new(),
            region: "us-east-1".to_owned(),
            auth: freshet_server::AuthFlags { mode: options.auth },
            default_account: "000000000000".to_owned(),
            key_cache_ttl: Duration::from_secs(1),
            control_plane: freshet_server::ControlPlaneAddr {
                addr: control_plane_addr.clone(),
            },
            cache: freshet_server::CacheAddr { addr: cache_addr },
            membership: freshet_server::MembershipAddr {
                addr: membership_addr.clone(),
            },
            timer: freshet_server::TimerAddr {
                addr: timer_addr.clone(),
            },
            iterator_secret: "test-secret".to_owned(),
            iterator_previous_secrets: Vec::new(),
            timer_max_unsynced: options.timer_max_unsynced,
            storage_timeout: Duration::from_secs(5),
            append_calls_per_shard: 1,
            max_in_flight_requests: 1024,
            max_requests_per_source: None,
            body_read_timeout: Duration::from_secs(30),
            request_timeout: Duration::from_secs(60),
            body_budget_mib: 512,
            max_connections: 4096,
            max_connections_per_source: None,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(120),
            http2_max_streams: 100,
            max_subscriptions: 1000,
            internal: internal.clone(),
            retention: freshet_server::RetentionHour {
                hour: options.retention.hour,
            },
            tls: freshet_frontend::tls::TlsFlags {
                listen: options.https.then(|| "127.0.0.1:0".to_owned()),
                dev_dir: options.https.then(|| temp.path().join("tls")),
                ..Default::default()
            },
        };
        let frontend = Frontend::new(&frontend_config)?;
        let (frontend_listener, frontend_addr) = bind().await?;
        let https = frontend_config.tls.bind().await?;
        let https_endpoint = https
            .as_ref()
            .map(|h| {
                h.listener
                    .local_addr()
                    .map(|a| format!("https://localhost:{}", a.port()))
            })
            .transpose()?;
        let frontend_service = spawn_service(frontend_listener, {
            let frontend = frontend.clone();
            move |listener, shutdown| {
                freshet_frontend::serve_with_https(frontend, listener, https, shutdown)
            }
        });

        let workers = options
            .worker_zones
            .iter()
            .enumerate()
            .map(|(index, zone)| WorkerHandle {
                worker_id: format!("worker-{index}-{zone}"),
                zone,
                data_dir: temp.path().join(format!("worker-{index}")),
                listen: None,
                proxy: None,
                running: None,
            })
            .collect();
        let mut cluster = Cluster {
            endpoint: format!("http://{frontend_addr}"),
            https_endpoint,
            frontend_config,
            control_plane_addr,
            frontend,
            database_url,
            database_name,
            redis_prefix,
            membership_addr,
            timer_addr,
            workers,
            postgres_proxy,
            membership_postgres_proxy,
            redis_proxy,
            options,
            timer: Some(timer),
            services: vec![frontend_service, cache, membership],
            control_plane: Some(control_plane),
            _temp: temp,
        };
        for index in 0..cluster.workers.len() {
            cluster.start_worker(index).await?;
        }
        cluster.wait_for_workers_alive().await?;
        Ok(cluster)
    }

    /// The development CA the HTTPS endpoint's certificate chains to
    /// (`ClusterOptions::https`).
    pub fn tls_ca(&self) -> PathBuf {
        self._temp.path().join("tls").join("ca.pem")
    }

    /// The token this cluster's services present to each other (none in
    /// development mode).
    pub fn internal_token(&self) -> freshet_server::InternalToken {
        self.internal_flag()
            .token_for(self.options.auth)
            .unwrap_or_else(|_| freshet_server::InternalToken::none())
    }

    fn internal_flag(&self) -> freshet_server::InternalTokenFlag {
        internal_flag(&self.options)
    }

    /// A gRPC channel to one of this cluster's services, presenting its
    /// internal token.
    pub fn channel(&self, address: &str) -> anyhow::Result<freshet_server::TracedChannel> {
        Ok(freshet_server::grpc_channel(
            address,
            &self.internal_token(),
        )?)
    }

    /// An Identities client of this cluster's control plane that presents
    /// the admin token (in secure mode).
    pub fn identities(
        &self,
    ) -> anyhow::Result<
        freshet_proto::v1::identities_client::IdentitiesClient<freshet_server::TracedChannel>,
    > {
        let admin = if self.options.auth == freshet_server::AuthMode::Sigv4 {
            freshet_server::AdminToken::new(SECURE_ADMIN_TOKEN)?
        } else {
            freshet_server::AdminToken::default()
        };
        let channel = freshet_server::admin_channel(
            &self.control_plane_addr,
            &self.internal_token(),
            &admin,
        )?;
        Ok(freshet_proto::v1::identities_client::IdentitiesClient::new(
            channel,
        ))
    }

    /// Starts another frontend beside the first, as a deployment behind a
    /// load balancer has; its endpoint.
    pub async fn start_another_frontend(&mut self) -> anyhow::Result<String> {
        let frontend = Frontend::new(&self.frontend_config)?;
        let (listener, address) = bind().await?;
        self.services
            .push(spawn_service(listener, move |listener, shutdown| {
                freshet_frontend::serve(frontend, listener, shutdown)
            }));
        Ok(format!("http://{address}"))
    }

    /// The configuration of a control plane for this cluster (a test may
    /// start a second one on the same database).
    pub fn control_plane_config(&self) -> freshet_control_plane::Config {
        control_plane_config(&self.options, &self.database_url, &self.membership_addr)
    }

    /// Starts (or restarts) worker `index` on a fresh port with its data dir.
    pub async fn start_worker(&mut self, index: usize) -> anyhow::Result<()> {
        let membership_addr = self.membership_addr.clone();
        let mode = self.options.worker_mode;
        let heartbeat_interval = self.options.worker_heartbeat_interval;
        let limits = self.options.shard_limits;
        let internal_token = self.internal_flag().internal_token;
        let auth = self.options.auth;
        let retention = self.options.retention;
        let worker = &mut self.workers[index];
        anyhow::ensure!(
            worker.running.is_none(),
            "worker {index} is already running"
        );
        let running = match mode {
            WorkerMode::InProcess => {
                let (listener, _) = bind().await?;
                let config = freshet_storage_worker::Config {
                    observability: freshet_server::ObservabilityFlags::without_metrics(),
                    listen: String::new(),
                    advertise: None,
                    worker_id: worker.worker_id.clone(),
                    availability_zone: worker.zone.to_owned(),
                    data_dir: worker.data_dir.clone(),
                    membership: freshet_server::MembershipAddr {
                        addr: membership_addr,
                    },
                    heartbeat_interval,
                    retention_check_interval: retention.check_interval,
                    retention: freshet_server::RetentionHour {
                        hour: retention.hour,
                    },
                    segment_bytes: retention.segment_bytes,
                    ack_copies: freshet_storage_worker::AckCopies::Majority,
                    min_ack_copies: 2,
                    shard_write_bytes_per_sec: limits.write_bytes,
                    shard_write_records_per_sec: limits.write_records,
                    shard_read_bytes_per_sec: limits.read_bytes,
                    shard_read_calls_per_sec: limits.read_calls,
                    internal: internal_flag(&self.options),
                    auth: freshet_server::AuthFlags {
                        mode: self.options.auth,
                    },
                };
                RunningWorker::InProcess(spawn_service(listener, move |listener, shutdown| {
                    freshet_storage_worker::run(config, listener, shutdown)
                }))
            }
            WorkerMode::Process => {
                // Behind a proxy: a port of the test's choosing, and the
                // proxy advertised in front of it.
                let (listen, advertise) = if self.options.worker_proxies {
                    let port = std::net::TcpListener::bind("127.0.0.1:0")?
                        .local_addr()?
                        .port();
                    let listen = format!("127.0.0.1:{port}");
                    let proxy = proxy::TcpProxy::start(&listen).await?;
                    let advertise = proxy.address.clone();
                    worker.proxy = Some(proxy);
                    worker.listen = Some(listen.clone());
                    (listen, Some(advertise))
                } else {
                    ("127.0.0.1:0".to_owned(), None)
                };
                let child =
                    tokio::process::Command::new(workspace_binary("freshet-storage-worker")?)
                        .args(["--listen", &listen])
                        .args(advertise.iter().flat_map(|a| ["--advertise", a.as_str()]))
                        .args([
                            "--worker-id",
                            &worker.worker_id,
                            "--availability-zone",
                            worker.zone,
                            "--metrics-listen",
                            "127.0.0.1:0",
                        ])
                        .arg("--data-dir")
                        .arg(&worker.data_dir)
                        .args(["--membership-addr", &membership_addr])
                        .arg("--heartbeat-interval")
                        .arg(format!("{}ms", heartbeat_interval.as_millis()))
                        .envs(
                            internal_token
                                .as_ref()
                                .map(|token| ("FRESHET_INTERNAL_TOKEN", token.as_str())),
                        )
                        .env(
                            "FRESHET_AUTH",
                            match auth {
                                freshet_server::AuthMode::Sigv4 => "sigv4",
                                freshet_server::AuthMode::Development => "development",
                            },
                        )
                        .env(
                            "FRESHET_SHARD_WRITE_BYTES_PER_SEC",
                            limits.write_bytes.to_string(),
                        )
                        .env(
                            "FRESHET_SHARD_WRITE_RECORDS_PER_SEC",
                            limits.write_records.to_string(),
                        )
                        .env(
                            "FRESHET_SHARD_READ_BYTES_PER_SEC",
                            limits.read_bytes.to_string(),
                        )
                        .env(
                            "FRESHET_SHARD_READ_CALLS_PER_SEC",
                            limits.read_calls.to_string(),
                        )
                        .env("FRESHET_SEGMENT_BYTES", retention.segment_bytes.to_string())
                        .env(
                            "FRESHET_RETENTION_HOUR",
                            format!("{}ms", retention.hour.as_millis()),
                        )
                        .env(
                            "FRESHET_RETENTION_CHECK_INTERVAL",
                            format!("{}ms", retention.check_interval.as_millis()),
                        )
                        .env("RUST_LOG", "warn")
                        .stdin(Stdio::null())
                        .kill_on_drop(true)
                        .spawn()
                        .context("spawn freshet-storage-worker")?;
                RunningWorker::Process(child)
            }
        };
        worker.running = Some(running);
        Ok(())
    }

    /// kill -9 a process worker. An in-process worker is only stopped from
    /// serving (its heartbeats go on), so failover tests use processes.
    pub async fn kill_worker(&mut self, index: usize) -> anyhow::Result<()> {
        match self.workers[index].running.take() {
            Some(RunningWorker::Process(mut child)) => {
                child.start_kill().context("send SIGKILL")?;
                child.wait().await.context("reap killed worker")?;
            }
            Some(RunningWorker::InProcess(service)) => service.task.abort(),
            None => {}
        }
        Ok(())
    }

    /// Stops every worker gracefully (SIGTERM for processes) and keeps their
    /// data directories, so a test can inspect the logs on disk.
    pub async fn stop_workers(&mut self) {
        for worker in &mut self.workers {
            match worker.running.take() {
                Some(RunningWorker::InProcess(service)) => service.stop().await,
                Some(RunningWorker::Process(mut child)) => {
                    if let Some(pid) = child.id() {
                        let _ = nix::sys::signal::kill(
                            nix::unistd::Pid::from_raw(pid as i32),
                            nix::sys::signal::Signal::SIGTERM,
                        );
                    }
                    if tokio::time::timeout(Duration::from_secs(10), child.wait())
                        .await
                        .is_err()
                    {
                        let _ = child.start_kill();
                        let _ = child.wait().await;
                    }
                }
                None => {}
            }
        }
    }

    /// The process id of a process worker.
    /// The entry of a one-shard stream's shard, as the frontend's map has it.
    pub fn only_entry(&self, stream: &str) -> Option<freshet_proto::v1::ShardMapEntry> {
        self.frontend
            .router()
            .map()
            .read(|m| m.stream_entries(&stream_arn(stream)))
            .into_iter()
            .next()
    }

    /// The entry of `stream`'s shard `shard_id`, as the frontend's map has it.
    pub fn entry(&self, stream: &str, shard_id: &str) -> Option<freshet_proto::v1::ShardMapEntry> {
        self.frontend
            .router()
            .map()
            .read(|m| m.stream_entries(&stream_arn(stream)))
            .into_iter()
            .find(|e| e.key.as_ref().is_some_and(|k| k.shard_id == shard_id))
    }

    /// What the copy served at `address` says of its segment of `entry`'s
    /// shard, if it answers.
    pub async fn describe_copy(
        &self,
        address: &str,
        entry: &freshet_proto::v1::ShardMapEntry,
    ) -> Option<freshet_proto::v1::DescribeShardResponse> {
        let mut copy =
            freshet_proto::v1::storage_client::StorageClient::new(self.channel(address).ok()?);
        let described = copy
            .describe_shard(freshet_proto::v1::DescribeShardRequest {
                shard: entry.key.clone(),
            })
            .await
            .ok()?;
        Some(described.into_inner())
    }

    /// The index of the worker with this id.
    pub fn worker_index(&self, worker_id: &str) -> anyhow::Result<usize> {
        self.workers
            .iter()
            .position(|w| w.worker_id == worker_id)
            .with_context(|| format!("no worker {worker_id} in the cluster"))
    }

    /// Cuts worker `index` off from everyone who dials it (its proxy
    /// refuses and drops connections); its own calls still go out.
    pub fn cut_worker(&self, index: usize) -> anyhow::Result<()> {
        self.workers[index]
            .proxy
            .as_ref()
            .context("the worker has no proxy (ClusterOptions::worker_proxies)")?
            .cut();
        Ok(())
    }

    /// Heals `cut_worker`.
    pub fn heal_worker(&self, index: usize) -> anyhow::Result<()> {
        self.workers[index]
            .proxy
            .as_ref()
            .context("the worker has no proxy (ClusterOptions::worker_proxies)")?
            .restore();
        Ok(())
    }

    pub fn worker_pid(&self, index: usize) -> Option<u32> {
        match &self.workers[index].running {
            Some(RunningWorker::Process(child)) => child.id(),
            _ => None,
        }
    }

    /// Waits until membership sees every running worker alive at its
    /// current address.
    pub async fn wait_for_workers_alive(&self) -> anyhow::Result<()> {
        let channel = self.channel(&self.membership_addr)?;
        let mut membership = MembershipClient::new(channel);
        let wanted: Vec<&str> = self
            .workers
            .iter()
            .filter(|w| w.running.is_some())
            .map(|w| w.worker_id.as_str())
            .collect();
        wait_until(Duration::from_secs(30), || {
            let mut membership = membership.clone();
            let wanted = wanted.clone();
            async move {
                let Ok(response) = membership.list_workers(ListWorkersRequest {}).await else {
                    return false;
                };
                let workers = response.into_inner().workers;
                wanted
                    .iter()
                    .all(|id| workers.iter().any(|w| w.worker_id == *id && w.alive))
            }
        })
        .await
        .context("storage workers did not register")?;
        let _ = membership.list_workers(ListWorkersRequest {}).await;
        Ok(())
    }

    /// Stops the timer service (the "timer unreachable" scenario).
    pub async fn stop_timer(&mut self) {
        if let Some(timer) = self.timer.take() {
            timer.stop().await;
        }
    }

    /// Stops the cluster's control plane (a test then starts another on
    /// the same database, as after a restart).
    pub async fn stop_control_plane(&mut self) {
        if let Some(control_plane) = self.control_plane.take() {
            control_plane.stop().await;
        }
    }

    /// Starts a control plane with `config` at the cluster's control-plane
    /// address, in place of the one `stop_control_plane` stopped (as after
    /// a restart: the frontend reaches it where it reached the old one).
    pub async fn restart_control_plane(
        &mut self,
        config: freshet_control_plane::Config,
    ) -> anyhow::Result<()> {
        anyhow::ensure!(self.control_plane.is_none(), "the control plane is running");
        let listener = TcpListener::bind(&self.control_plane_addr)
            .await
            .with_context(|| format!("bind {} again", self.control_plane_addr))?;
        self.control_plane = Some(spawn_service(listener, move |listener, shutdown| {
            freshet_control_plane::run(config, listener, shutdown)
        }));
        Ok(())
    }

    /// Starts the timer service again, at its old address.
    pub async fn restart_timer(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.timer.is_none(), "the timer is running");
        let listener = TcpListener::bind(&self.timer_addr)
            .await
            .with_context(|| format!("bind the timer's address {} again", self.timer_addr))?;
        self.timer = Some(spawn_timer(listener, &self.options));
        Ok(())
    }

    /// An AWS SDK client pointed at this cluster, as a user would build it.
    /// A client as the cluster's first identity: the dev key, or in secure
    /// mode the bootstrap key.
    pub fn kinesis(&self) -> aws_sdk_kinesis::Client {
        match self.options.auth {
            freshet_server::AuthMode::Development => kinesis_client(&self.endpoint),
            freshet_server::AuthMode::Sigv4 => kinesis_client_as(
                &self.endpoint,
                "us-east-1",
                Credentials::new(
                    SECURE_ACCESS_KEY,
                    SECURE_SECRET_KEY,
                    None,
                    None,
                    "freshet-tests",
                ),
            ),
        }
    }

    /// Stops everything and drops the database and Redis keys.
    pub async fn shutdown(mut self) {
        self.stop_workers().await;
        self.stop_control_plane().await;
        for service in self.services.drain(..) {
            service.stop().await;
        }
        self.stop_timer().await;
        if let Ok(mut admin) =
            <sqlx::PgConnection as sqlx::Connection>::connect(&test_database_url()).await
        {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.database_name
            ))
            .execute(&mut admin)
            .await;
        }
        if let Ok(client) = redis::Client::open(test_redis_url()) {
            if let Ok(mut connection) = client.get_multiplexed_async_connection().await {
                let keys: Vec<String> = redis::cmd("KEYS")
                    .arg(format!("{}*", self.redis_prefix))
                    .query_async(&mut connection)
                    .await
                    .unwrap_or_default();
                if !keys.is_empty() {
                    let _: Result<(), _> = redis::cmd("DEL")
                        .arg(keys)
                        .query_async(&mut connection)
                        .await;
                }
            }
        }
    }
}

/// Kills a whole process group when dropped, so a failing test never leaves
/// the services of a spawned topology running.
pub struct ProcessGroupGuard(pub u32);

impl Drop for ProcessGroupGuard {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(-(self.0 as i32));
        let _ = nix::sys::signal::kill(group, nix::sys::signal::Signal::SIGKILL);
    }
}

/// `database_url` through a new proxy to its server.
async fn proxied_database_url(database_url: &str) -> anyhow::Result<(String, proxy::TcpProxy)> {
    let (scheme_and_user, rest) = database_url
        .split_once('@')
        .context("database url has no host")?;
    let (server, database) = rest
        .split_once('/')
        .context("database url has no database")?;
    let proxy = proxy::TcpProxy::start(server).await?;
    let url = format!("{scheme_and_user}@{}/{database}", proxy.address);
    Ok((url, proxy))
}

/// The timer service on `listener`.
fn spawn_timer(listener: TcpListener, options: &ClusterOptions) -> RunningService {
    let config = freshet_timer::Config {
        observability: freshet_server::ObservabilityFlags::without_metrics(),
        listen: String::new(),
        uncertainty: Duration::from_millis(1),
        internal: internal_flag(options),
        auth: freshet_server::AuthFlags { mode: options.auth },
    };
    spawn_service(listener, move |listener, shutdown| {
        freshet_timer::run(config, listener, shutdown)
    })
}

fn internal_flag(options: &ClusterOptions) -> freshet_server::InternalTokenFlag {
    freshet_server::InternalTokenFlag {
        internal_token: (options.auth == freshet_server::AuthMode::Sigv4)
            .then(|| SECURE_INTERNAL_TOKEN.to_owned()),
    }
}

fn control_plane_config(
    options: &ClusterOptions,
    database_url: &str,
    membership_addr: &str,
) -> freshet_control_plane::Config {
    let secure = options.auth == freshet_server::AuthMode::Sigv4;
    freshet_control_plane::Config {
        observability: freshet_server::ObservabilityFlags::without_metrics(),
        listen: String::new(),
        database: freshet_server::DatabaseUrl {
            url: database_url.to_owned(),
        },
        membership: freshet_server::MembershipAddr {
            addr: membership_addr.to_owned(),
        },
        shard_limit: options.shard_limit,
        scaler: options.scaler.clone(),
        api_rate_limits: options.api_rate_limits,
        consumer_transition_ms: u64::try_from(options.consumer_transition.as_millis())
            .unwrap_or(500),
        on_demand_stream_limit: options.on_demand_stream_limit,
        auth: freshet_server::AuthFlags { mode: options.auth },
        master_key_file: None,
        master_key: secure.then(|| SECURE_MASTER_KEY.to_owned()),
        bootstrap: freshet_control_plane::identities::BootstrapKey {
            bootstrap_access_key: secure.then(|| SECURE_ACCESS_KEY.to_owned()),
            bootstrap_secret_key: secure.then(|| SECURE_SECRET_KEY.to_owned()),
        },
        internal: internal_flag(options),
        admin: freshet_server::AdminTokenFlag {
            admin_token: secure.then(|| SECURE_ADMIN_TOKEN.to_owned()),
        },
        retention: freshet_server::RetentionHour {
            hour: options.retention.hour,
        },
    }
}

/// An AWS SDK for Rust Kinesis client for `endpoint`, with the dev key.
pub fn kinesis_client(endpoint: &str) -> aws_sdk_kinesis::Client {
    kinesis_client_as(
        endpoint,
        "us-east-1",
        Credentials::new("test", "test", None, None, "freshet-tests"),
    )
}

/// Like [`kinesis_client`], speaking HTTP/2 only (prior knowledge), as
/// the Java and JS SDKs do.
pub fn kinesis_client_h2c(endpoint: &str) -> aws_sdk_kinesis::Client {
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            "test",
            "test",
            None,
            None,
            "freshet-tests",
        ))
        .http_client(h2c_client::h2c_http_client())
        .build();
    aws_sdk_kinesis::Client::from_conf(config)
}

/// The region test clients sign for (and so the region their streams live in).
pub const TEST_REGION: &str = "us-east-1";
/// The account development mode gives the test clients' `test` key.
pub const TEST_ACCOUNT: &str = "000000000000";

/// The stream `name` of the test clients' account and region, as the shard
/// map and router name streams.
pub fn stream_arn(name: &str) -> freshet_types::StreamArn {
    freshet_types::StreamArn::new(TEST_REGION, TEST_ACCOUNT, name)
}

/// An AWS SDK for Rust Kinesis client for `endpoint`, signing for `region`
/// with `credentials`.
pub fn kinesis_client_as(
    endpoint: &str,
    region: &str,
    credentials: Credentials,
) -> aws_sdk_kinesis::Client {
    let config = aws_sdk_kinesis::Config::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(region.to_owned()))
        .endpoint_url(endpoint)
        .credentials_provider(credentials)
        .http_client(aws_smithy_http_client::Builder::new().build_http())
        .build();
    aws_sdk_kinesis::Client::from_conf(config)
}

/// Polls `condition` until it holds or `timeout` passes.
pub async fn wait_until<F, Fut>(timeout: Duration, mut condition: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if condition().await {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            anyhow::bail!("condition not met within {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The stream's DescribeStreamSummary, or `None` if the call failed.
pub async fn stream_summary(
    client: &aws_sdk_kinesis::Client,
    name: &str,
) -> Option<aws_sdk_kinesis::types::StreamDescriptionSummary> {
    client
        .describe_stream_summary()
        .stream_name(name)
        .send()
        .await
        .ok()
        .and_then(|r| r.stream_description_summary)
}

/// Whether DescribeStreamSummary says ACTIVE.
pub async fn is_active(client: &aws_sdk_kinesis::Client, name: &str) -> bool {
    stream_summary(client, name)
        .await
        .is_some_and(|s| s.stream_status == aws_sdk_kinesis::types::StreamStatus::Active)
}

/// DescribeStreamSummary's OpenShardCount (0 if the call failed).
pub async fn open_shard_count(client: &aws_sdk_kinesis::Client, name: &str) -> u32 {
    stream_summary(client, name)
        .await
        .map_or(0, |s| u32::try_from(s.open_shard_count).unwrap_or(0))
}

/// Creates a stream and waits until DescribeStreamSummary says ACTIVE.
pub async fn create_active_stream(
    client: &aws_sdk_kinesis::Client,
    name: &str,
    shards: i32,
) -> anyhow::Result<()> {
    client
        .create_stream()
        .stream_name(name)
        .shard_count(shards)
        .send()
        .await
        .context("create stream")?;
    wait_until(Duration::from_secs(10), || is_active(client, name)).await
}

/// Creates an ON_DEMAND stream, with warm throughput if given, and waits
/// until it is ACTIVE.
pub async fn create_on_demand_stream(
    client: &aws_sdk_kinesis::Client,
    name: &str,
    warm_mibps: Option<i32>,
) -> anyhow::Result<()> {
    use aws_sdk_kinesis::types::{StreamMode, StreamModeDetails};
    client
        .create_stream()
        .stream_name(name)
        .stream_mode_details(
            StreamModeDetails::builder()
                .stream_mode(StreamMode::OnDemand)
                .build()?,
        )
        .set_warm_throughput_mibps(warm_mibps)
        .send()
        .await
        .context("create stream")?;
    wait_until(Duration::from_secs(60), || is_active(client, name)).await
}

/// Enables or disables the account's MinimumThroughputBillingCommitment;
/// returns the commitment as the answer describes it.
pub async fn set_billing_commitment(
    client: &aws_sdk_kinesis::Client,
    enabled: bool,
) -> anyhow::Result<aws_sdk_kinesis::types::MinimumThroughputBillingCommitmentOutput> {
    use aws_sdk_kinesis::types::{
        MinimumThroughputBillingCommitmentInput as Input,
        MinimumThroughputBillingCommitmentInputStatus as Status,
    };
    let status = if enabled {
        Status::Enabled
    } else {
        Status::Disabled
    };
    client
        .update_account_settings()
        .minimum_throughput_billing_commitment(Input::builder().status(status).build()?)
        .send()
        .await
        .context("update account settings")?
        .minimum_throughput_billing_commitment
        .context("no commitment in the answer")
}

/// The exception name of an SDK error (`<no service error>` for a
/// failure that never reached the service).
pub fn error_code<E: aws_sdk_kinesis::error::ProvideErrorMetadata>(
    error: &aws_sdk_kinesis::error::SdkError<E, aws_sdk_kinesis::config::http::HttpResponse>,
) -> String {
    error
        .as_service_error()
        .and_then(|e| e.code())
        .unwrap_or("<no service error>")
        .to_owned()
}

/// Where a worker keeps its copy of `entry`'s current segment: the
/// directory of its log files, under the worker's `data_dir`.
pub fn segment_dir(data_dir: &std::path::Path, entry: &freshet_shardmap::ShardMapEntry) -> PathBuf {
    let key = entry.key.clone().unwrap_or_default();
    data_dir
        .join("shards")
        .join(key.stream_uid.to_string())
        .join(&key.shard_id)
        .join(entry.segment_index.to_string())
}

/// Reads a whole shard from TRIM_HORIZON until a read returns nothing.
pub async fn read_shard(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    shard_id: &str,
) -> anyhow::Result<Vec<aws_sdk_kinesis::types::Record>> {
    let mut iterator = client
        .get_shard_iterator()
        .stream_name(stream)
        .shard_id(shard_id)
        .shard_iterator_type(aws_sdk_kinesis::types::ShardIteratorType::TrimHorizon)
        .send()
        .await
        .context("get shard iterator")?
        .shard_iterator;
    let mut records = Vec::new();
    while let Some(current) = iterator {
        let page = client
            .get_records()
            .shard_iterator(current)
            .send()
            .await
            .context("get records")?;
        let empty = page.records.is_empty();
        records.extend(page.records);
        iterator = page.next_shard_iterator;
        if empty {
            break;
        }
    }
    Ok(records)
}

/// The ids of a stream's shards, as ListShards returns them.
pub async fn shard_ids(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> anyhow::Result<Vec<String>> {
    let shards = client
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .context("list shards")?
        .shards;
    Ok(shards
        .unwrap_or_default()
        .into_iter()
        .map(|s| s.shard_id)
        .collect())
}

/// Every record of every shard of a stream, shard by shard.
pub async fn read_stream(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
) -> anyhow::Result<Vec<aws_sdk_kinesis::types::Record>> {
    let mut records = Vec::new();
    for shard_id in shard_ids(client, stream).await? {
        records.extend(read_shard(client, stream, &shard_id).await?);
    }
    Ok(records)
}
