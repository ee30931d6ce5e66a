//! Dependencies going away under load, through proxies the tests own (the
//! shared Postgres and Redis are never stopped):
//! - Postgres unreachable: writes to existing shards go on (routes from
//!   snapshots and Redis, leases from membership's memory); control-plane
//!   calls fail with a clear error, and succeed again once it is back.
//! - Redis unreachable: routing falls back to Postgres.
//! - The timer unreachable for longer than a lease: writes go on (leases
//!   run on local monotonic clocks; only failover waits for the timer).

use std::time::Duration;

use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::primitives::Blob;
use freshet_e2e::load::{assert_acknowledged_readable_once, Producers};
use freshet_e2e::{create_active_stream, stream_arn, wait_until, Cluster, ClusterOptions};
use freshet_shardmap::RouteSource;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_go_on_while_postgres_is_unreachable_and_the_control_plane_recovers(
) -> anyhow::Result<()> {
    let cluster = Cluster::start_with(ClusterOptions {
        postgres_proxy: true,
        ..ClusterOptions::short_leases()
    })
    .await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "steady", 2).await?;
    let producers = Producers::start(&client, "steady", 1, 10);
    wait_until(Duration::from_secs(30), || async {
        producers.count() >= 100
    })
    .await?;

    let proxy = cluster.postgres_proxy.as_ref().expect("a postgres proxy");
    proxy.cut();
    // Longer than three leases: writes must keep being acknowledged.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let during = producers.count();
    wait_until(Duration::from_secs(30), || async {
        producers.count() >= during + 100
    })
    .await?;
    let refused = client
        .create_stream()
        .stream_name("while-down")
        .shard_count(1)
        .send()
        .await
        .unwrap_err();
    let code = refused
        .as_service_error()
        .and_then(|e| e.code())
        .unwrap_or_default()
        .to_owned();
    assert_eq!(code, "InternalFailure", "{refused:?}");

    proxy.restore();
    wait_until(Duration::from_secs(60), || async {
        client
            .create_stream()
            .stream_name("after")
            .shard_count(1)
            .send()
            .await
            .is_ok()
    })
    .await?;
    let acknowledged = producers.stop().await?;
    assert_acknowledged_readable_once(&client, "steady", &acknowledged).await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn routing_falls_back_to_postgres_while_redis_is_unreachable() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(ClusterOptions {
        redis_proxy: true,
        ..ClusterOptions::default()
    })
    .await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "no-redis", 1).await?;
    let router = cluster.frontend.router().clone();
    router.invalidate(&stream_arn("no-redis"));
    router.stream_route(&stream_arn("no-redis")).await?;
    router.invalidate(&stream_arn("no-redis"));
    assert_eq!(
        router
            .stream_route(&stream_arn("no-redis"))
            .await?
            .map(|r| r.source),
        Some(RouteSource::CacheRedis)
    );

    let proxy = cluster.redis_proxy.as_ref().expect("a redis proxy");
    proxy.cut();
    for _ in 0..3 {
        router.invalidate(&stream_arn("no-redis"));
        let route = router
            .stream_route(&stream_arn("no-redis"))
            .await?
            .map(|r| r.source);
        assert_eq!(route, Some(RouteSource::CacheDatabase));
        router.invalidate(&stream_arn("no-redis"));
        client
            .put_record()
            .stream_name("no-redis")
            .partition_key("k")
            .data(Blob::new("ok"))
            .send()
            .await?;
    }
    proxy.restore();
    wait_until(Duration::from_secs(30), || async {
        router.invalidate(&stream_arn("no-redis"));
        matches!(router.stream_route(&stream_arn("no-redis")).await, Ok(Some(route)) if route.source == RouteSource::CacheRedis)
    })
    .await?;
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_go_on_past_a_lease_while_the_timer_is_unreachable() -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with(ClusterOptions::short_leases()).await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "no-timer", 1).await?;
    cluster.stop_timer().await;
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(800)).await;
        client
            .put_record()
            .stream_name("no-timer")
            .partition_key("k")
            .data(Blob::new("ok"))
            .send()
            .await?;
    }
    cluster.shutdown().await;
    Ok(())
}
