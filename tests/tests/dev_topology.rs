//! `just dev` as a user runs it: the real binaries as separate processes,
//! started by `deploy/dev.sh`, driven by the AWS SDK and by boto3, then
//! stopped with SIGTERM — every service must exit cleanly.

use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context as _;
use aws_sdk_kinesis::primitives::Blob;
use freshet_e2e::{create_active_stream, kinesis_client, test_database_url, workspace_binary};
use tokio::io::{AsyncBufReadExt, BufReader};

/// A block of `count` consecutive free loopback ports.
/// The topology's metrics ports start this far above its gRPC ports.
const METRICS_OFFSET: u16 = 14;

/// A block of `count` free ports below Linux's ephemeral range (32768 up):
/// a port found free there can be taken by any outgoing connection before
/// the topology binds it.
fn free_port_block(count: u16) -> anyhow::Result<u16> {
    for attempt in 0..200u32 {
        let base = 20_000 + ((std::process::id() * 7 + attempt * 97) % 12_000) as u16;
        let all_free = (base..base + count)
            .all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok());
        if all_free {
            return Ok(base);
        }
    }
    anyhow::bail!("no block of {count} free ports")
}

/// Where and how to run `deploy/dev.sh`; the same settings start the
/// topology again on the same data.
struct Settings {
    workspace: std::path::PathBuf,
    bin_dir: std::path::PathBuf,
    data_dir: std::path::PathBuf,
    base_port: u16,
    frontend_port: u16,
    database: String,
    pg_server: String,
}

/// A running `deploy/dev.sh` and everything it printed.
struct Topology {
    script: tokio::process::Child,
    output: Arc<Mutex<Vec<String>>>,
    _group: freshet_e2e::ProcessGroupGuard,
}

impl Topology {
    async fn start(settings: &Settings) -> anyhow::Result<Topology> {
        let mut script = tokio::process::Command::new("bash")
            .arg(settings.workspace.join("deploy/dev.sh"))
            .current_dir(&settings.workspace)
            .env("FRESHET_BIN_DIR", &settings.bin_dir)
            .env("FRESHET_DEV_DIR", &settings.data_dir)
            .env("FRESHET_DEV_PORT", settings.frontend_port.to_string())
            .env(
                "FRESHET_DEV_TLS_PORT",
                (settings.base_port + METRICS_OFFSET + 13).to_string(),
            )
            .env("FRESHET_DEV_BASE_PORT", settings.base_port.to_string())
            .env(
                "FRESHET_DEV_METRICS_PORT",
                (settings.base_port + METRICS_OFFSET).to_string(),
            )
            .env("FRESHET_DEV_DATABASE", &settings.database)
            .env("FRESHET_PG_SERVER", &settings.pg_server)
            .env(
                "FRESHET_REDIS_PREFIX",
                format!("freshet-dev-test-{}:", std::process::id()),
            )
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .context("run deploy/dev.sh")?;
        let group = freshet_e2e::ProcessGroupGuard(script.id().context("script pid")?);
        let output: Arc<Mutex<Vec<String>>> = Arc::default();
        let (ready_sender, ready) = tokio::sync::oneshot::channel();
        let mut ready_sender = Some(ready_sender);
        let mut lines = BufReader::new(script.stdout.take().context("stdout")?).lines();
        let mut errors = BufReader::new(script.stderr.take().context("stderr")?).lines();
        let collected = output.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Freshet is ready") {
                    if let Some(sender) = ready_sender.take() {
                        let _ = sender.send(());
                    }
                }
                collected
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(line);
            }
        });
        let collected = output.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = errors.next_line().await {
                collected
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(line);
            }
        });
        let topology = Topology {
            script,
            output,
            _group: group,
        };
        if tokio::time::timeout(Duration::from_secs(60), ready)
            .await
            .is_err()
        {
            anyhow::bail!("dev topology never became ready:\n{}", topology.logs());
        }
        Ok(topology)
    }

    fn logs(&self) -> String {
        self.output
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .join("\n")
    }

    /// SIGTERM, then checks every service said so and nothing panicked.
    async fn stop(mut self) -> anyhow::Result<()> {
        let pid = self.script.id().context("script pid")?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGTERM,
        )?;
        let status = tokio::time::timeout(Duration::from_secs(30), self.script.wait())
            .await
            .context("services did not stop within 30s of SIGTERM")??;
        tokio::time::sleep(Duration::from_millis(200)).await;
        let logs = self.logs();
        assert!(status.success(), "dev.sh exited with {status}:\n{logs}");
        for service in [
            "timer",
            "membership",
            "cache",
            "control-plane",
            "worker-az-a",
            "worker-az-b",
            "worker-az-c",
            "frontend",
        ] {
            assert!(
                logs.lines()
                    .any(|line| line.starts_with(&format!("[{service}]"))
                        && line.contains("received SIGTERM")),
                "{service} did not shut down on SIGTERM:\n{logs}"
            );
        }
        assert!(!logs.contains("panicked"), "a service panicked:\n{logs}");
        Ok(())
    }
}

/// What grpcurl needs of a service: health says SERVING, and reflection
/// lists the service and describes it (so the examples in `proto/` work).
async fn check_grpc_surface(address: &str, service: &str) -> anyhow::Result<()> {
    use tonic_health::pb::health_client::HealthClient;
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let channel = freshet_server::grpc_channel(address, &freshet_server::InternalToken::none())?;
    for name in ["", service] {
        let health = HealthClient::new(channel.clone())
            .check(tonic_health::pb::HealthCheckRequest {
                service: name.to_owned(),
            })
            .await
            .with_context(|| format!("health of {address} ({name:?})"))?
            .into_inner();
        assert_eq!(
            health.status(),
            tonic_health::pb::health_check_response::ServingStatus::Serving,
            "{address} ({name:?})"
        );
    }
    let ask = |message| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(message),
    };
    let requests = vec![
        ask(MessageRequest::ListServices(String::new())),
        ask(MessageRequest::FileContainingSymbol(service.to_owned())),
    ];
    let mut answers = ServerReflectionClient::new(channel)
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .with_context(|| format!("reflection of {address}"))?
        .into_inner();
    let listed = answers.message().await?.and_then(|a| a.message_response);
    let Some(MessageResponse::ListServicesResponse(listed)) = listed else {
        anyhow::bail!("{address} did not list its services: {listed:?}");
    };
    let names: Vec<&str> = listed.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&service), "{address} lists {names:?}");
    assert!(
        names.contains(&"grpc.health.v1.Health"),
        "{address} lists {names:?}"
    );
    let described = answers.message().await?.and_then(|a| a.message_response);
    assert!(
        matches!(
            described,
            Some(MessageResponse::FileDescriptorResponse(ref files)) if !files.file_descriptor_proto.is_empty()
        ),
        "{address} does not describe {service}: {described:?}"
    );
    Ok(())
}

async fn count_records(client: &aws_sdk_kinesis::Client) -> anyhow::Result<usize> {
    Ok(freshet_e2e::read_stream(client, "dev-check").await?.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dev_topology_serves_real_clients_stops_cleanly_and_restarts_with_its_data(
) -> anyhow::Result<()> {
    let database_url = test_database_url();
    let (pg_server, _) = database_url.rsplit_once('/').context("database url")?;
    let data_dir = tempfile::tempdir()?;
    let base_port = free_port_block(METRICS_OFFSET + 14)?;
    let settings = Settings {
        workspace: std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".."),
        bin_dir: workspace_binary("freshet-frontend")?
            .parent()
            .context("bin dir")?
            .to_owned(),
        data_dir: data_dir.path().to_owned(),
        base_port,
        frontend_port: base_port + 13,
        database: format!("freshet_dev_test_{}", std::process::id()),
        pg_server: pg_server.to_owned(),
    };

    let topology = Topology::start(&settings).await?;
    for (offset, service) in [
        (0, "freshet.v1.Timer"),
        (1, "freshet.v1.Membership"),
        (2, "freshet.v1.ShardMapCache"),
        (3, "freshet.v1.ControlPlane"),
        (10, "freshet.v1.Storage"),
    ] {
        check_grpc_surface(&format!("127.0.0.1:{}", base_port + offset), service).await?;
    }
    let endpoint = format!("http://127.0.0.1:{}", settings.frontend_port);
    let client = kinesis_client(&endpoint);
    create_active_stream(&client, "dev-check", 3).await?;
    client
        .put_record()
        .stream_name("dev-check")
        .partition_key("k")
        .data(Blob::new("across processes"))
        .send()
        .await?;
    assert_eq!(count_records(&client).await?, 1);

    let boto3_available = std::process::Command::new("python3")
        .args(["-c", "import boto3"])
        .status()
        .is_ok_and(|s| s.success());
    if boto3_available {
        let smoke = tokio::process::Command::new("python3")
            .arg(settings.workspace.join("tests/smoke/boto3_smoke.py"))
            .arg(&endpoint)
            .output()
            .await?;
        assert!(
            smoke.status.success(),
            "boto3 smoke failed:\n{}\n{}",
            String::from_utf8_lossy(&smoke.stdout),
            String::from_utf8_lossy(&smoke.stderr)
        );
        // And over HTTPS, trusting the CA the topology made on first run.
        let https = format!("https://localhost:{}", base_port + METRICS_OFFSET + 13);
        let over_tls = tokio::process::Command::new("python3")
            .args([
                "-c",
                "import boto3, sys; c = boto3.client('kinesis', endpoint_url=sys.argv[1], region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test'); assert 'dev-check' in c.list_streams()['StreamNames']",
                &https,
            ])
            .env("AWS_CA_BUNDLE", settings.data_dir.join("tls/ca.pem"))
            .output()
            .await?;
        assert!(
            over_tls.status.success(),
            "boto3 over https failed: {}",
            String::from_utf8_lossy(&over_tls.stderr)
        );
    } else {
        eprintln!("boto3 is not installed: the boto3 smoke check was not run (pip install boto3)");
    }
    topology.stop().await?;

    // The whole topology again, on the same disks and database: what was
    // acknowledged before is still there, and the stream takes new writes.
    let topology = Topology::start(&settings).await?;
    let client = kinesis_client(&endpoint);
    assert_eq!(
        count_records(&client).await?,
        1,
        "acknowledged before the restart, readable after"
    );
    client
        .put_record()
        .stream_name("dev-check")
        .partition_key("k")
        .data(Blob::new("after restart"))
        .send()
        .await?;
    assert_eq!(count_records(&client).await?, 2);
    topology.stop().await?;

    if let Ok(mut admin) = <sqlx::PgConnection as sqlx::Connection>::connect(&database_url).await {
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS {} WITH (FORCE)",
            settings.database
        ))
        .execute(&mut admin)
        .await;
    }
    Ok(())
}
