//! kill -9 of each service other than the storage workers, one after the
//! other, while producers write: each comes back (the topology restarts a
//! service that exits, as Kubernetes restarts a pod), writes resume, and at
//! the end every acknowledged record is read back once.

use std::time::Duration;

use anyhow::Context as _;
use freshet_e2e::load::{assert_acknowledged_readable_once, without_sdk_retries, Producers};
use freshet_e2e::topology::{bin_dir, workspace, DevTopology, Service};
use freshet_e2e::{create_active_stream, kinesis_client, wait_until};

/// Per-shard limits off: the producers write as fast as they can.
const NO_SHARD_LIMITS: [(&str, &str); 4] = [
    ("FRESHET_SHARD_WRITE_BYTES_PER_SEC", "0"),
    ("FRESHET_SHARD_WRITE_RECORDS_PER_SEC", "0"),
    ("FRESHET_SHARD_READ_BYTES_PER_SEC", "0"),
    ("FRESHET_SHARD_READ_CALLS_PER_SEC", "0"),
];

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_service_but_the_workers_can_be_killed_under_load_without_losing_a_record(
) -> anyhow::Result<()> {
    let data_dir = tempfile::tempdir()?;
    let topology = DevTopology::start(
        &workspace(),
        &bin_dir()?,
        data_dir.path(),
        "crashes",
        &[&[("FRESHET_DEV_RESTART", "1")][..], &NO_SHARD_LIMITS].concat(),
    )
    .await?;
    let client = kinesis_client(&topology.endpoint);
    create_active_stream(&client, "survivor", 4).await?;
    let producers = Producers::start(&without_sdk_retries(&client), "survivor", 4, 10);
    wait_until(Duration::from_secs(60), || async {
        producers.count() >= 200
    })
    .await?;

    for service in [
        Service::Frontend,
        Service::Membership,
        Service::Cache,
        Service::Timer,
        Service::ControlPlane,
    ] {
        let killed = topology.kill_service(service)?;
        // Back as a new process ...
        wait_until(Duration::from_secs(30), || async {
            topology
                .service_pid(service)
                .is_some_and(|pid| pid != killed)
        })
        .await
        .with_context(|| format!("{service:?} did not come back"))?;
        // ... and writes flow again.
        let at_restart = producers.count();
        wait_until(Duration::from_secs(60), || async {
            producers.count() >= at_restart + 200
        })
        .await
        .with_context(|| format!("writes did not resume after {service:?} was killed"))?;
    }
    // The control plane answers again too.
    wait_until(Duration::from_secs(30), || async {
        client
            .describe_stream_summary()
            .stream_name("survivor")
            .send()
            .await
            .is_ok()
    })
    .await?;
    let acknowledged = producers.stop().await?;
    assert_acknowledged_readable_once(&client, "survivor", &acknowledged).await?;
    topology.stop().await;
    Ok(())
}

/// Two control planes on one database, the active one killed in the middle
/// of a split under load: the standby takes over and finishes (or rolls
/// back) the split; the first comes back as the standby and takes over in
/// turn when the second is killed. No sequence number is used twice — a
/// reused offset would hide an acknowledged record — and another split
/// afterwards goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_control_planes_killed_in_turn_mid_split_reuse_no_sequence_number() -> anyhow::Result<()>
{
    use aws_sdk_kinesis::types::{ScalingType, StreamStatus};
    use freshet_proto::v1::control_plane_client::ControlPlaneClient;
    use freshet_proto::v1::ListStreamsRequest;

    let data_dir = tempfile::tempdir()?;
    let topology = DevTopology::start(
        &workspace(),
        &bin_dir()?,
        data_dir.path(),
        "standby",
        &[
            &[
                ("FRESHET_DEV_RESTART", "1"),
                // Longer than the standby's 1 s look at the lock: the
                // killed control plane comes back after the other took over.
                ("FRESHET_DEV_RESTART_DELAY", "3"),
                ("FRESHET_DEV_CONTROL_PLANES", "2"),
            ][..],
            &NO_SHARD_LIMITS,
        ]
        .concat(),
    )
    .await?;
    let client = kinesis_client(&topology.endpoint);
    create_active_stream(&client, "resharded", 2).await?;
    let producers = Producers::start(&without_sdk_retries(&client), "resharded", 4, 10);
    wait_until(Duration::from_secs(60), || async {
        producers.count() >= 200
    })
    .await?;
    let is_active = || async {
        client
            .describe_stream_summary()
            .stream_name("resharded")
            .send()
            .await
            .is_ok_and(|s| {
                s.stream_description_summary
                    .is_some_and(|d| d.stream_status == StreamStatus::Active)
            })
    };

    client
        .update_shard_count()
        .stream_name("resharded")
        .target_shard_count(4)
        .scaling_type(ScalingType::UniformScaling)
        .send()
        .await?;
    let first = topology.kill_service(Service::ControlPlane)?;
    wait_until(Duration::from_secs(30), || async {
        topology
            .service_pid(Service::ControlPlane)
            .is_some_and(|pid| pid != first)
    })
    .await
    .context("the first control plane did not come back")?;
    // The second took over: it serves (a standby answers nothing).
    let second_address = format!("127.0.0.1:{}", topology.grpc_port + 4);
    let channel =
        freshet_server::grpc_channel(&second_address, &freshet_server::InternalToken::none())?;
    wait_until(Duration::from_secs(30), || async {
        let mut second = ControlPlaneClient::new(channel.clone());
        let listed = second.list_streams(ListStreamsRequest::default());
        matches!(
            tokio::time::timeout(Duration::from_secs(2), listed).await,
            Ok(Ok(_))
        )
    })
    .await
    .context("the standby control plane never took over")?;
    let at_takeover = producers.count();
    wait_until(Duration::from_secs(60), || async {
        producers.count() >= at_takeover + 200
    })
    .await?;
    // The second, active now, is killed; the first takes over again and
    // answers the frontend once more.
    let second = topology.kill_service(Service::SecondControlPlane)?;
    wait_until(Duration::from_secs(60), || async { is_active().await })
        .await
        .context("the stream never became ACTIVE under the first control plane again")?;
    wait_until(Duration::from_secs(30), || async {
        topology
            .service_pid(Service::SecondControlPlane)
            .is_some_and(|pid| pid != second)
    })
    .await?;
    // Another split goes through under the control plane that took over.
    let open = freshet_e2e::open_shard_count(&client, "resharded").await;
    client
        .update_shard_count()
        .stream_name("resharded")
        .target_shard_count(i32::try_from(open * 2)?)
        .scaling_type(ScalingType::UniformScaling)
        .send()
        .await?;
    wait_until(Duration::from_secs(60), || async {
        is_active().await && freshet_e2e::open_shard_count(&client, "resharded").await == open * 2
    })
    .await
    .context("the second split did not complete")?;
    let at_end = producers.count();
    wait_until(Duration::from_secs(60), || async {
        producers.count() >= at_end + 200
    })
    .await?;
    let acknowledged = producers.stop().await?;
    assert_acknowledged_readable_once(&client, "resharded", &acknowledged).await?;
    topology.stop().await;
    Ok(())
}
