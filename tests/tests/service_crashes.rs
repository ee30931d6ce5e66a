//! kill -9 of each service other than the storage workers, one after the
//! other, while producers write: each comes back (the topology restarts a
//! service that exits, as Kubernetes restarts a pod), writes resume, and at
//! the end every acknowledged record is read back once.

use std::time::Duration;

use anyhow::Context as _;
use freshet_e2e::load::{assert_acknowledged_readable_once, Producers};
use freshet_e2e::topology::{DevTopology, Service};
use freshet_e2e::{create_active_stream, kinesis_client, wait_until, workspace_binary};

fn workspace() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

fn bin_dir() -> anyhow::Result<String> {
    Ok(workspace_binary("freshet-frontend")?
        .parent()
        .context("bin dir")?
        .to_string_lossy()
        .into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn every_service_but_the_workers_can_be_killed_under_load_without_losing_a_record(
) -> anyhow::Result<()> {
    let data_dir = tempfile::tempdir()?;
    let topology = DevTopology::start(
        &workspace(),
        &bin_dir()?,
        data_dir.path(),
        "crashes",
        &[
            ("FRESHET_DEV_RESTART", "1"),
            // Per-shard limits off: the producers write as fast as they can.
            ("FRESHET_SHARD_WRITE_BYTES_PER_SEC", "0"),
            ("FRESHET_SHARD_WRITE_RECORDS_PER_SEC", "0"),
            ("FRESHET_SHARD_READ_BYTES_PER_SEC", "0"),
            ("FRESHET_SHARD_READ_CALLS_PER_SEC", "0"),
        ],
    )
    .await?;
    let client = kinesis_client(&topology.endpoint);
    create_active_stream(&client, "survivor", 4).await?;
    // The producers' SDK does not retry on its own: a PutRecords whose
    // connection a killed frontend dropped may have been written, and
    // sending it again would store its records twice — a duplicate the
    // client makes, which Kinesis does not prevent either. Each producer
    // goes on with new records instead.
    let producer_client = aws_sdk_kinesis::Client::from_conf(
        client
            .config()
            .to_builder()
            .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled())
            .build(),
    );
    let producers = Producers::start(&producer_client, "survivor", 4, 10);
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
