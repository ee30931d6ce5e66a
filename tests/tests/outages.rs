//! Dependencies going away under load, through proxies the tests own (the
//! shared Postgres and Redis are never stopped):
//! - Postgres unreachable: writes to existing shards go on (routes from
//!   snapshots and Redis, leases from membership's memory); control-plane
//!   calls fail with a clear error, and succeed again once it is back.
//! - Redis unreachable: routing falls back to Postgres.
//! - The timer unreachable for longer than a lease: writes go on (leases
//!   run on local monotonic clocks; only failover waits for the timer).
//! - A change-log COMMIT that reaches Postgres but whose answer is lost:
//!   membership reads the head back, broadcasts what committed, and the
//!   caller is told it succeeded.
//! - Postgres *and* the timer unreachable: a heartbeat can be recorded
//!   nowhere failover looks, so membership grants no lease; it does again
//!   once either is back.

use std::time::Duration;

use anyhow::Context as _;

use aws_sdk_kinesis::error::ProvideErrorMetadata;
use aws_sdk_kinesis::primitives::Blob;
use freshet_e2e::load::{assert_acknowledged_readable_once, Producers};
use freshet_e2e::{create_active_stream, stream_arn, wait_until, Cluster, ClusterOptions};
use freshet_proto::v1::membership_client::MembershipClient;
use freshet_proto::v1::{HeartbeatRequest, RegisterWorkerRequest};
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
        // Served from Postgres by the cache. (On a loaded machine one
        // lookup may outlast the router's 2 s deadline and be served
        // stale instead: asked again, it comes from Postgres.)
        let sources = std::sync::Mutex::new(Vec::new());
        wait_until(Duration::from_secs(20), || {
            let router = router.clone();
            let sources = &sources;
            async move {
                router.invalidate(&stream_arn("no-redis"));
                let source = router
                    .stream_route(&stream_arn("no-redis"))
                    .await
                    .ok()
                    .flatten()
                    .map(|r| r.source);
                sources
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(source);
                source == Some(RouteSource::CacheDatabase)
            }
        })
        .await
        .with_context(|| format!("routes came from {:?}", sources.lock()))?;
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_lease_is_granted_while_neither_postgres_nor_the_timer_can_record_a_heartbeat(
) -> anyhow::Result<()> {
    let mut cluster = Cluster::start_with(ClusterOptions {
        postgres_proxy: true,
        ..ClusterOptions::short_leases()
    })
    .await?;
    let membership = MembershipClient::new(cluster.channel(&cluster.membership_addr)?);
    let worker_id = cluster.workers[0].worker_id.clone();
    let lease = || {
        let (mut membership, worker_id) = (membership.clone(), worker_id.clone());
        async move {
            let answer = membership
                .heartbeat(HeartbeatRequest { worker_id })
                .await
                .map(|a| a.into_inner());
            answer.map(|a| (a.known, a.lease_duration_micros))
        }
    };
    assert!(lease().await?.1 > 0, "a lease while all is well");
    let proxy = cluster.postgres_proxy.as_ref().expect("a postgres proxy");
    proxy.cut();
    assert!(lease().await?.1 > 0, "recorded against the timer");
    cluster.stop_timer().await;
    // Membership's timer client carries on from its last answer for 5 s.
    wait_until(Duration::from_secs(30), || async {
        lease()
            .await
            .is_ok_and(|(known, micros)| known && micros == 0)
    })
    .await?;
    // The timer back is enough: heartbeats are recorded against it again.
    cluster.restart_timer().await?;
    wait_until(Duration::from_secs(30), || async {
        lease().await.is_ok_and(|(_, micros)| micros > 0)
    })
    .await?;
    cluster
        .postgres_proxy
        .as_ref()
        .expect("a postgres proxy")
        .restore();
    cluster.shutdown().await;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_change_whose_commit_answer_was_lost_is_read_back_and_broadcast() -> anyhow::Result<()> {
    let cluster = Cluster::start_with(ClusterOptions {
        membership_postgres_proxy: true,
        ..ClusterOptions::short_leases()
    })
    .await?;
    let client = cluster.kinesis();
    create_active_stream(&client, "lost-answer", 1).await?;
    let map = cluster.frontend.router().map().clone();
    let entry = || {
        map.read(|m| m.stream_entries(&stream_arn("lost-answer")))
            .into_iter()
            .next()
    };
    wait_until(Duration::from_secs(10), || async { entry().is_some() }).await?;
    let before = entry().expect("an entry");
    let leader = cluster
        .workers
        .iter()
        .find(|w| w.worker_id == before.leader_worker_id)
        .expect("the leader");

    // The leader registers again (as after a restart): membership gives its
    // shard a new epoch, and that commit's answer is lost on the way back.
    let proxy = cluster
        .membership_postgres_proxy
        .as_ref()
        .expect("membership's postgres proxy");
    proxy.trap_next_commit();
    let mut membership = MembershipClient::new(cluster.channel(&cluster.membership_addr)?);
    membership
        .register_worker(RegisterWorkerRequest {
            worker_id: leader.worker_id.clone(),
            availability_zone: leader.zone.to_owned(),
            address: before.leader_address.clone(),
            disk_id: String::new(),
            disk_confirmed: false,
        })
        .await?;
    assert!(proxy.commit_trapped(), "the commit's answer was lost");
    wait_until(Duration::from_secs(5), || async {
        entry().is_some_and(|e| e.epoch == before.epoch + 1)
    })
    .await?;
    client
        .put_record()
        .stream_name("lost-answer")
        .partition_key("k")
        .data(Blob::new("after"))
        .send()
        .await?;
    cluster.shutdown().await;
    Ok(())
}
