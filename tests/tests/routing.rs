//! The routing branches of the talk: a fresh snapshot hit; a stale entry
//! re-read from the cache; a cache miss read from Postgres; a missing
//! stream remembered as missing; a gap in the change stream healed by a
//! resync; and the timer service unreachable.
//! (Duplicated and reordered changes are covered where they are absorbed,
//! in `libs/shardmap/src/map.rs`.)

use std::sync::atomic::Ordering;
use std::time::Duration;

use aws_sdk_kinesis::primitives::Blob;
use freshet_e2e::{
    create_active_stream, stream_arn, test_redis_url, wait_until, Cluster, ClusterOptions,
};
use freshet_shardmap::RouteSource;

const ACCOUNT: &str = "000000000000";

async fn source_of(cluster: &Cluster, stream: &str) -> anyhow::Result<RouteSource> {
    let route = cluster
        .frontend
        .router()
        .stream_route(&stream_arn(stream))
        .await?
        .ok_or_else(|| anyhow::anyhow!("stream {stream} not found"))?;
    Ok(route.source)
}

async fn wait_for_snapshot(cluster: &Cluster, stream: &str, shards: usize) -> anyhow::Result<()> {
    let map = cluster.frontend.router().map().clone();
    wait_until(Duration::from_secs(10), || {
        let map = map.clone();
        async move { map.read(|m| m.stream_entries(&stream_arn(stream)).len()) == shards }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fresh_hit_then_stale_to_cache_then_miss_to_database() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "routes", 2).await?;

    // The change log delivered the placement: routed from the snapshot.
    wait_for_snapshot(&cluster, "routes", 2).await?;
    assert_eq!(
        source_of(&cluster, "routes").await?,
        RouteSource::FreshSnapshot
    );

    // Stale (as if its validity had passed): re-read through the cache.
    // Redis has nothing yet, so the cache reads Postgres and fills Redis.
    cluster.frontend.router().invalidate(&stream_arn("routes"));
    assert_eq!(
        source_of(&cluster, "routes").await?,
        RouteSource::CacheDatabase
    );
    // The refreshed entries are fresh again.
    assert_eq!(
        source_of(&cluster, "routes").await?,
        RouteSource::FreshSnapshot
    );
    // Stale once more: now Redis answers.
    cluster.frontend.router().invalidate(&stream_arn("routes"));
    assert_eq!(
        source_of(&cluster, "routes").await?,
        RouteSource::CacheRedis
    );

    // A Redis miss (the key evicted) falls back to Postgres again.
    let redis = redis::Client::open(test_redis_url())?;
    let mut connection = redis.get_multiplexed_async_connection().await?;
    let _: () = redis::cmd("DEL")
        .arg(format!(
            "{}stream:{ACCOUNT}:us-east-1:routes",
            cluster.redis_prefix
        ))
        .query_async(&mut connection)
        .await?;
    cluster.frontend.router().invalidate(&stream_arn("routes"));
    assert_eq!(
        source_of(&cluster, "routes").await?,
        RouteSource::CacheDatabase
    );

    // Every branch routes writes correctly.
    client
        .put_record()
        .stream_name("routes")
        .partition_key("k")
        .data(Blob::new("ok"))
        .send()
        .await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_go_stale_by_the_timer_clock() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(ClusterOptions {
        route_ttl: Duration::from_millis(300),
        ..ClusterOptions::default()
    })
    .await?;
    create_active_stream(&cluster.kinesis(), "short-lived", 1).await?;
    wait_for_snapshot(&cluster, "short-lived", 1).await?;
    // Left alone, the entries' validity passes and lookups revalidate.
    wait_until(Duration::from_secs(10), || async {
        matches!(
            source_of(&cluster, "short-lived").await,
            Ok(RouteSource::CacheRedis | RouteSource::CacheDatabase)
        )
    })
    .await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_gap_in_the_change_stream_triggers_a_resync() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "first", 2).await?;
    wait_for_snapshot(&cluster, "first", 2).await?;

    // Forget everything: the next change the subscriber sees is far ahead
    // of what it has applied, so it must resync instead of carrying on.
    let map = cluster.frontend.router().map().clone();
    map.write(|m| m.reset());
    assert!(map.read(|m| m.stream_entries(&stream_arn("first")).is_empty()));
    create_active_stream(&client, "second", 1).await?;
    wait_for_snapshot(&cluster, "first", 2).await?;
    wait_for_snapshot(&cluster, "second", 1).await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_the_timer_unreachable_every_lookup_revalidates_and_writes_still_succeed(
) -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with(ClusterOptions {
        timer_max_unsynced: Duration::from_millis(500),
        ..ClusterOptions::default()
    })
    .await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "no-clock", 1).await?;
    wait_for_snapshot(&cluster, "no-clock", 1).await?;
    assert_eq!(
        source_of(&cluster, "no-clock").await?,
        RouteSource::FreshSnapshot
    );

    cluster.stop_timer().await;
    // Without the timer nothing can be proven fresh: once the last poll is
    // too old, lookups go to the cache every time — never the snapshot.
    wait_until(Duration::from_secs(10), || async {
        matches!(
            source_of(&cluster, "no-clock").await,
            Ok(RouteSource::CacheRedis | RouteSource::CacheDatabase)
        )
    })
    .await?;
    for _ in 0..3 {
        let source = source_of(&cluster, "no-clock").await?;
        assert!(
            matches!(source, RouteSource::CacheRedis | RouteSource::CacheDatabase),
            "{source:?}"
        );
    }
    let before = cluster.frontend.router().stats().snapshot();
    let put = client
        .put_record()
        .stream_name("no-clock")
        .partition_key("k")
        .data(Blob::new("still works"))
        .send()
        .await?;
    assert_eq!(put.shard_id, "shardId-000000000000");
    let after = cluster.frontend.router().stats().snapshot();
    assert_eq!(after[0], before[0], "no fresh hits without a clock");
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_stream_costs_one_database_read_then_none() -> anyhow::Result<()> {
    let cluster = Cluster::start().await?;
    let router = cluster.frontend.router();
    let database_reads = || router.stats().cache_database.load(Ordering::Relaxed);
    let redis_reads = || router.stats().cache_redis.load(Ordering::Relaxed);
    let missing = stream_arn("not-yet");
    assert!(router.stream_route(&missing).await?.is_none());
    assert_eq!(database_reads(), 1, "the first lookup reads Postgres");
    // The cache remembered the absence: Redis answers from now on.
    let redis_before = redis_reads();
    for _ in 0..20 {
        assert!(router.stream_route(&missing).await?.is_none());
    }
    assert_eq!(
        database_reads(),
        1,
        "no Postgres round trip after the first"
    );
    assert_eq!(redis_reads() - redis_before, 20);
    // So do API calls naming it.
    let client = cluster.kinesis();
    let put = client
        .put_record()
        .stream_name("not-yet")
        .partition_key("k")
        .data(Blob::new("x"))
        .send()
        .await;
    assert!(put.is_err());
    assert_eq!(database_reads(), 1);

    // Created, the stream's entries land in the remembered hash: found
    // through Redis, still without a Postgres read by the cache.
    create_active_stream(&client, "not-yet", 1).await?;
    wait_until(Duration::from_secs(10), || async {
        router.invalidate(&missing);
        matches!(
            router.stream_route(&missing).await,
            Ok(Some(route)) if route.source == RouteSource::CacheRedis
        )
    })
    .await?;
    assert_eq!(database_reads(), 1);
    cluster.shutdown().await;
    Ok(())
}
