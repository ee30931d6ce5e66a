//! `freshet-cache`: the shard-map cache tier. Frontends ask it for a
//! stream's shards when their own snapshot entry is stale.
//!
//! - Reads are read-through over Redis: a hit answers from Redis; a miss
//!   reads Postgres (the source of truth) and fills Redis.
//! - The node also subscribes to membership's change log and mirrors every
//!   change into the Redis entries that exist, so Redis rarely serves an old
//!   placement. Writes are conditional on the entry's version (a Lua script),
//!   so duplicated or reordered changes and racing fills are harmless.
//! - Redis keys expire (`key_ttl`), which bounds how long a race between a
//!   fill and a new shard can hide that shard.
//!
//! Layout: one hash per stream, `<prefix>stream:<account>:<name>`, with the
//! field `filled` (complete), and per shard `v:<uid>/<shard>` (version) and
//! `e:<uid>/<shard>` (encoded entry; absent for a deleted shard).

use freshet_metrics::{Counter, EncodeLabelSet, Family};
use std::future::Future;

use anyhow::Context as _;
use std::sync::Arc;
use std::time::Duration;

use freshet_errors::ErrorCode;
use freshet_metastore::MetaStore;
use freshet_proto::prost::Message as _;
use freshet_proto::v1::shard_map_cache_server::{ShardMapCache, ShardMapCacheServer};
use freshet_proto::v1::shard_map_event::Event;
use freshet_proto::v1::{
    CacheSource, GetStreamShardsRequest, GetStreamShardsResponse, ShardMapEntry, ShardMapEvent,
    ShardState,
};
use freshet_server::{DatabaseUrl, MembershipAddr, Tasks, TimerAddr};
use freshet_shardmap::SharedShardMap;
use freshet_timer_client::{TimerClient, TimerClientConfig};
use freshet_types::StreamArn;
use redis::aio::MultiplexedConnection;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tonic::{Request, Response, Status};

#[derive(Debug, Clone, clap::Parser)]
#[command(name = "freshet-cache", about = "Freshet shard-map cache service")]
pub struct Config {
    #[arg(long, env = "FRESHET_CACHE_LISTEN", default_value = "127.0.0.1:7053")]
    pub listen: String,
    #[command(flatten)]
    pub database: DatabaseUrl,
    #[arg(long, env = "REDIS_URL", default_value = "redis://127.0.0.1:6379")]
    pub redis_url: String,
    /// Prefix of every Redis key this node writes.
    #[arg(long, env = "FRESHET_REDIS_PREFIX", default_value = "freshet:")]
    pub redis_prefix: String,
    #[command(flatten)]
    pub membership: MembershipAddr,
    #[command(flatten)]
    pub timer: TimerAddr,
    /// Validity given to entries this node hands out.
    #[arg(long, env = "FRESHET_ROUTE_TTL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub route_ttl: Duration,
    /// Expiry of a stream's Redis hash.
    #[arg(long, env = "FRESHET_CACHE_KEY_TTL", default_value = "5m", value_parser = humantime::parse_duration)]
    pub key_ttl: Duration,
    #[command(flatten)]
    pub internal: freshet_server::InternalTokenFlag,
    #[command(flatten)]
    pub observability: freshet_server::ObservabilityFlags,
    #[command(flatten)]
    pub auth: freshet_server::AuthFlags,
}

/// Longest a Redis read may take before the cache answers from Postgres.
const REDIS_TIMEOUT: Duration = Duration::from_millis(250);

/// Sets one shard's entry if its version is newer. With `ARGV[5] == '1'`
/// only when the stream's hash already exists (mirroring changes must not
/// create a partial hash that looks complete).
const UPSERT_SCRIPT: &str = r#"
if ARGV[5] == '1' and redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local held = redis.call('HGET', KEYS[1], 'v:' .. ARGV[1])
if held and tonumber(held) >= tonumber(ARGV[2]) then return 0 end
redis.call('HSET', KEYS[1], 'v:' .. ARGV[1], ARGV[2])
if ARGV[4] == '1' then
  redis.call('HDEL', KEYS[1], 'e:' .. ARGV[1])
else
  redis.call('HSET', KEYS[1], 'e:' .. ARGV[1], ARGV[3])
end
return 1
"#;

/// One multiplexed Redis connection, made on first use and dropped after
/// any failure, so the next call connects afresh (bounded by the callers'
/// timeouts) instead of waiting on a connection that is gone.
struct RedisConnection {
    client: redis::Client,
    connection: tokio::sync::Mutex<Option<MultiplexedConnection>>,
}

impl RedisConnection {
    async fn get(&self) -> redis::RedisResult<MultiplexedConnection> {
        let mut connection = self.connection.lock().await;
        if let Some(connection) = connection.as_ref() {
            return Ok(connection.clone());
        }
        let fresh = self.client.get_multiplexed_async_connection().await?;
        *connection = Some(fresh.clone());
        Ok(fresh)
    }

    /// Forgets the connection after a failure.
    async fn reset(&self) {
        *self.connection.lock().await = None;
    }
}

/// The ShardMapCache gRPC service.
#[derive(Clone)]
pub struct CacheService {
    inner: Arc<Inner>,
}

struct Inner {
    redis: RedisConnection,
    prefix: String,
    store: MetaStore,
    timer: TimerClient,
    route_ttl: Duration,
    key_ttl_seconds: i64,
    upsert: redis::Script,
    /// `freshet_cache_lookups_total{result}`: `hit` when Redis held the
    /// stream, `miss` when it did not, `error` when Redis failed (both of
    /// those read Postgres).
    lookups: Family<LookupResult, Counter>,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LookupResult {
    result: &'static str,
}

fn field_of(entry: &ShardMapEntry) -> String {
    let key = entry.key.clone().unwrap_or_default();
    format!("{}/{}", key.stream_uid, key.shard_id)
}

impl CacheService {
    pub fn new(
        redis: redis::Client,
        prefix: String,
        store: MetaStore,
        timer: TimerClient,
        route_ttl: Duration,
        key_ttl: Duration,
    ) -> CacheService {
        CacheService {
            inner: Arc::new(Inner {
                redis: RedisConnection {
                    client: redis,
                    connection: tokio::sync::Mutex::new(None),
                },
                prefix,
                store,
                timer,
                route_ttl,
                key_ttl_seconds: i64::try_from(key_ttl.as_secs()).unwrap_or(300).max(1),
                upsert: redis::Script::new(UPSERT_SCRIPT),
                lookups: Family::default(),
            }),
        }
    }

    /// Counts this cache's lookups in `registry` (a service counts them
    /// from its first request; a cache built alone keeps them to itself).
    pub fn counting_lookups_in(self, registry: &freshet_metrics::Registry) -> CacheService {
        registry.register(
            "freshet_cache_lookups",
            "Shard-map lookups: Redis held the stream (hit), did not (miss) or failed (error)",
            self.inner.lookups.clone(),
        );
        self
    }

    /// The Redis hash of the stream `arn` names. No part of it holds a
    /// colon (accounts are digits, names `[a-zA-Z0-9_.-]`, regions
    /// `[a-z0-9-]`, checked where signatures are parsed in `libs/sigv4`),
    /// so distinct streams never share a key.
    fn stream_key(&self, arn: &StreamArn) -> String {
        format!(
            "{}stream:{}:{}:{}",
            self.inner.prefix, arn.account_id, arn.region, arn.stream_name
        )
    }

    async fn upsert(&self, entry: &ShardMapEntry, only_if_cached: bool) -> redis::RedisResult<()> {
        let mut redis = self.inner.redis.get().await?;
        let tombstone = entry.state() == ShardState::Deleted;
        let Some(arn) = StreamArn::parse(&entry.stream_arn) else {
            tracing::warn!(
                stream_arn = entry.stream_arn,
                "a shard-map entry without a stream ARN is not cached"
            );
            return Ok(());
        };
        self.inner
            .upsert
            .key(self.stream_key(&arn))
            .arg(field_of(entry))
            .arg(entry.version)
            .arg(entry.encode_to_vec())
            .arg(if tombstone { "1" } else { "0" })
            .arg(if only_if_cached { "1" } else { "0" })
            .invoke_async::<i64>(&mut redis)
            .await?;
        Ok(())
    }

    /// Mirrors one change-log event into Redis.
    pub async fn mirror(&self, event: ShardMapEvent) {
        let entries = match event.event {
            Some(Event::Change(entry)) => vec![entry],
            Some(Event::Snapshot(snapshot)) => snapshot.entries,
            // Consumers are not routed through the cache.
            Some(Event::Consumer(_)) | None => Vec::new(),
        };
        for entry in entries {
            if let Err(error) = self.upsert(&entry, true).await {
                tracing::warn!(%error, stream_name = entry.stream_name, "failed to mirror shard-map change into redis");
                self.inner.redis.reset().await;
            }
        }
    }

    /// Reads a stream's entries from Redis; `None` on a miss.
    async fn read_redis(&self, key: &str) -> anyhow::Result<Option<Vec<ShardMapEntry>>> {
        let mut redis = self.inner.redis.get().await?;
        let fields: Vec<(String, Vec<u8>)> = redis::cmd("HGETALL")
            .arg(key)
            .query_async(&mut redis)
            .await
            .context("read stream hash from redis")?;
        if !fields.iter().any(|(field, _)| field == "filled") {
            return Ok(None);
        }
        let mut entries = Vec::new();
        for (field, value) in fields {
            if field.starts_with("e:") {
                entries
                    .push(ShardMapEntry::decode(value.as_slice()).context("decode cached entry")?);
            }
        }
        Ok(Some(entries))
    }

    /// Reads a stream's entries from Postgres and fills Redis.
    async fn fill_from_database(
        &self,
        key: &str,
        arn: &StreamArn,
    ) -> anyhow::Result<Vec<ShardMapEntry>> {
        let head_before = self.inner.store.latest_version().await?;
        let entries = self
            .inner
            .store
            .stream_entries(arn)
            .await?
            .iter()
            .map(|bytes| ShardMapEntry::decode(bytes.as_slice()))
            .collect::<Result<Vec<_>, _>>()
            .context("decode entry from postgres")?;
        for entry in &entries {
            self.upsert(entry, false).await.context("fill redis")?;
        }
        let mut redis = self.inner.redis.get().await?;
        redis::pipe()
            .hset(key, "filled", "1")
            .expire(key, self.inner.key_ttl_seconds)
            .query_async::<()>(&mut redis)
            .await
            .context("mark stream hash filled")?;
        // A change committed while we filled may have been mirrored before
        // the hash existed (and so dropped): then the fill is not known to
        // be complete, and the next read must fill again.
        if self.inner.store.latest_version().await? != head_before {
            redis::cmd("HDEL")
                .arg(key)
                .arg("filled")
                .query_async::<()>(&mut redis)
                .await
                .context("unmark stream hash")?;
        }
        Ok(entries)
    }

    fn stamp(&self, mut entries: Vec<ShardMapEntry>) -> Vec<ShardMapEntry> {
        let valid_until = self.inner.timer.deadline_after(self.inner.route_ttl);
        for entry in &mut entries {
            entry.valid_until_micros = valid_until;
        }
        entries
    }
}

#[tonic::async_trait]
impl ShardMapCache for CacheService {
    async fn get_stream_shards(
        &self,
        request: Request<GetStreamShardsRequest>,
    ) -> Result<Response<GetStreamShardsResponse>, Status> {
        let request = request.into_inner();
        let arn = StreamArn::new(&request.region, &request.account_id, &request.stream_name);
        let key = self.stream_key(&arn);
        // Redis down or slow: the database still answers. A Redis call is
        // bounded so that a hung connection cannot stall routing.
        let (cached, result) = match tokio::time::timeout(REDIS_TIMEOUT, self.read_redis(&key))
            .await
        {
            Ok(Ok(cached)) => {
                let result = if cached.is_some() { "hit" } else { "miss" };
                (cached, result)
            }
            Ok(Err(error)) => {
                tracing::warn!("cache failed to {error:#}; reading postgres");
                self.inner.redis.reset().await;
                (None, "error")
            }
            Err(_) => {
                tracing::warn!("redis did not answer within {REDIS_TIMEOUT:?}; reading postgres");
                self.inner.redis.reset().await;
                (None, "error")
            }
        };
        self.inner
            .lookups
            .get_or_create(&LookupResult { result })
            .inc();
        let (entries, source) = match cached {
            Some(entries) => (entries, CacheSource::Redis),
            None => {
                let fill = self.fill_from_database(&key, &arn);
                let entries = match tokio::time::timeout(REDIS_TIMEOUT * 4, fill).await {
                    Ok(Ok(entries)) => entries,
                    result => {
                        self.inner.redis.reset().await;
                        let error = match result {
                            Ok(Err(error)) => format!("{error:#}"),
                            _ => "filling redis timed out".to_owned(),
                        };
                        let entries = self.inner.store.stream_entries(&arn).await.map_err(|e| {
                            ErrorCode::Unavailable.status(format!("{e:#} (after {error})"))
                        })?;
                        entries
                            .iter()
                            .map(|bytes| ShardMapEntry::decode(bytes.as_slice()))
                            .collect::<Result<_, _>>()
                            .map_err(|e| {
                                ErrorCode::Internal.status(format!("corrupt entry: {e}"))
                            })?
                    }
                };
                (entries, CacheSource::Database)
            }
        };
        Ok(Response::new(GetStreamShardsResponse {
            entries: self.stamp(entries),
            source: source as i32,
        }))
    }
}

/// Where the cache serves its metrics unless told otherwise.
pub const DEFAULT_METRICS_ADDR: &str = "127.0.0.1:9153";

/// Why the cache stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error(transparent)]
    Token(#[from] freshet_server::BadInternalToken),
    #[error(transparent)]
    Metastore(#[from] freshet_metastore::MetastoreError),
    #[error("parse REDIS_URL: {0}")]
    Redis(#[from] redis::RedisError),
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

/// Serves the cache on `listener` until `shutdown` resolves.
pub async fn run(
    config: Config,
    listener: TcpListener,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let pool = freshet_metastore::connect_url_and_migrate(&config.database.url, 10).await?;
    let redis = redis::Client::open(config.redis_url.as_str())?;
    let token = config.internal.token_for(config.auth.mode)?;
    let timer = TimerClient::spawn(
        freshet_server::grpc_channel(&config.timer.addr, &token)?,
        TimerClientConfig::default(),
    );
    let metrics = freshet_server::Metrics::bind(&config.observability, DEFAULT_METRICS_ADDR)
        .await
        .map_err(RunError::Metrics)?;
    let service = CacheService::new(
        redis,
        config.redis_prefix,
        MetaStore::new(pool),
        timer,
        config.route_ttl,
        config.key_ttl,
    )
    .counting_lookups_in(metrics.registry());
    serve(
        service,
        &config.membership.addr,
        &token,
        listener,
        metrics,
        shutdown,
    )
    .await
}

/// Serves an already-built service, mirroring membership's change log.
pub async fn serve(
    service: CacheService,
    membership_addr: &str,
    token: &freshet_server::InternalToken,
    listener: TcpListener,
    metrics: freshet_server::Metrics,
    shutdown: impl Future<Output = ()> + Send,
) -> Result<(), RunError> {
    let (events, mut event_receiver) = mpsc::unbounded_channel();
    let _subscription = freshet_shardmap::follow_change_log(
        freshet_server::grpc_channel(membership_addr, token)?,
        SharedShardMap::default(),
        Some(events),
    );
    let tasks = Tasks::new();
    let mirror = service.clone();
    tasks.spawn_loop(async move {
        while let Some(event) = event_receiver.recv().await {
            mirror.mirror(event).await;
        }
    });
    let addr = listener.local_addr().map_err(RunError::Address)?;
    tracing::info!(%addr, "cache serving grpc");
    let router =
        freshet_server::grpc_server(token, &metrics).add_service(ShardMapCacheServer::new(service));
    let served = freshet_server::serve_grpc(
        router,
        "freshet.v1.ShardMapCache",
        listener,
        metrics,
        shutdown,
    )
    .await;
    tasks.stop(freshet_server::TASK_STOP_DEADLINE).await;
    Ok(served?)
}
