//! The `just dev` topology (`deploy/dev.sh`) as real processes on free
//! loopback ports, for the benchmark and the demo: started with extra
//! environment, stopped with SIGTERM, its database dropped afterwards.

use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::{test_database_url, ProcessGroupGuard};

/// A service of the topology other than the storage workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Service {
    Frontend,
    Membership,
    Cache,
    Timer,
    ControlPlane,
    /// The second control plane (`FRESHET_DEV_CONTROL_PLANES=2`).
    SecondControlPlane,
}

/// A running `deploy/dev.sh`.
pub struct DevTopology {
    /// The frontend's URL.
    pub endpoint: String,
    /// The first metrics port: frontend +0, timer +1, membership +2,
    /// cache +3, control plane +4, workers +10..+12 (`deploy/dev.sh`).
    pub metrics_port: u16,
    /// The first internal gRPC port: timer +0, membership +1, cache +2,
    /// control plane +3 (a second one +4), workers +10..+12.
    pub grpc_port: u16,
    child: tokio::process::Child,
    database: String,
    _group: ProcessGroupGuard,
}

/// The workspace's root directory (where `deploy/dev.sh` is).
pub fn workspace() -> std::path::PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where the workspace's binaries were built (for `FRESHET_BIN_DIR`).
pub fn bin_dir() -> anyhow::Result<String> {
    Ok(crate::workspace_binary("freshet-frontend")?
        .parent()
        .context("bin dir")?
        .to_string_lossy()
        .into_owned())
}

/// The first of `count` consecutive free loopback ports, below Linux's
/// ephemeral range (32768 up): a port found free there can be taken by any
/// outgoing connection before the topology binds it.
fn free_port_block(count: u16) -> anyhow::Result<u16> {
    // Topologies started by one test process (tests run in parallel) look
    // in different places, not only ones from different processes.
    static STARTED: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let started = STARTED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    for attempt in 0..200u32 {
        let spread = std::process::id() * 13 + started * 2_003 + attempt * 101;
        let base = 21_000 + (spread % 11_000) as u16;
        if (base..base + count).all(|port| std::net::TcpListener::bind(("127.0.0.1", port)).is_ok())
        {
            return Ok(base);
        }
    }
    anyhow::bail!("no block of {count} free ports")
}

impl DevTopology {
    /// Starts the topology from the binaries in `bin_dir`, keeping worker
    /// data under `data_dir`, in a fresh database named after `name`, with
    /// `env` set for every service; returns once it says it is ready.
    pub async fn start(
        workspace: &Path,
        bin_dir: &str,
        data_dir: &Path,
        name: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<DevTopology> {
        // gRPC ports, the frontend's, then the metrics ports.
        let base = free_port_block(27)?;
        let frontend_port = base + 13;
        let metrics_port = base + 14;
        let database = format!("freshet_{name}_{}", std::process::id());
        let database_url = test_database_url();
        let (pg_server, _) = database_url.rsplit_once('/').context("database url")?;
        let mut command = tokio::process::Command::new("bash");
        command
            .arg(workspace.join("deploy/dev.sh"))
            .current_dir(workspace)
            .env("FRESHET_BIN_DIR", bin_dir)
            .env("FRESHET_DEV_DIR", data_dir)
            .env("FRESHET_DEV_PORT", frontend_port.to_string())
            // Plaintext only: topologies run side by side, and HTTPS has a
            // test of its own (`dev_topology.rs`, `tls.rs`).
            .env("FRESHET_DEV_TLS_PORT", "off")
            .env("FRESHET_DEV_BASE_PORT", base.to_string())
            .env("FRESHET_DEV_METRICS_PORT", metrics_port.to_string())
            .env("FRESHET_DEV_DATABASE", &database)
            .env("FRESHET_PG_SERVER", pg_server)
            .env(
                "FRESHET_REDIS_PREFIX",
                format!("freshet-{name}-{}:", std::process::id()),
            )
            .env("RUST_LOG", "warn");
        for (key, value) in env {
            command.env(key, value);
        }
        let mut child = command
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .process_group(0)
            .spawn()
            .context("run deploy/dev.sh")?;
        let group = ProcessGroupGuard(child.id().context("topology pid")?);
        let mut lines = BufReader::new(child.stdout.take().context("stdout")?).lines();
        let ready = tokio::time::timeout(Duration::from_secs(60), async {
            while let Ok(Some(line)) = lines.next_line().await {
                if line.contains("Freshet is ready") {
                    return true;
                }
            }
            false
        })
        .await;
        anyhow::ensure!(
            matches!(ready, Ok(true)),
            "the topology did not become ready"
        );
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(DevTopology {
            endpoint: format!("http://127.0.0.1:{frontend_port}"),
            metrics_port,
            grpc_port: base,
            child,
            database,
            _group: group,
        })
    }

    /// The process id of `service`'s running process, found by its binary
    /// and its listen address (topologies run side by side).
    pub fn service_pid(&self, service: Service) -> Option<u32> {
        let (binary, port) = match service {
            Service::Timer => ("freshet-timer", self.grpc_port),
            Service::Membership => ("freshet-membership", self.grpc_port + 1),
            Service::Cache => ("freshet-cache", self.grpc_port + 2),
            Service::ControlPlane => ("freshet-control-plane", self.grpc_port + 3),
            Service::SecondControlPlane => ("freshet-control-plane", self.grpc_port + 4),
            Service::Frontend => ("freshet-frontend", self.grpc_port + 13),
        };
        let listen = format!("127.0.0.1:{port}");
        std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .find_map(|entry| {
                let pid: u32 = entry.file_name().to_str()?.parse().ok()?;
                let cmdline = std::fs::read(entry.path().join("cmdline")).ok()?;
                let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                let program = std::str::from_utf8(args.first()?).ok()?;
                let listens_there = args
                    .windows(2)
                    .any(|w| w[0] == b"--listen" && w[1] == listen.as_bytes());
                (program.ends_with(binary) && listens_there).then_some(pid)
            })
    }

    /// kill -9 of one service's process (the topology must run with
    /// `FRESHET_DEV_RESTART=1` for it to come back). Answers the pid killed.
    pub fn kill_service(&self, service: Service) -> anyhow::Result<u32> {
        let pid = self
            .service_pid(service)
            .with_context(|| format!("{service:?} is not running"))?;
        nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(pid as i32),
            nix::sys::signal::Signal::SIGKILL,
        )
        .with_context(|| format!("kill -9 {service:?}"))?;
        Ok(pid)
    }

    /// The process id of `deploy/dev.sh` (its services are its children).
    pub fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// SIGTERM, wait for every service to stop, drop the database.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id() {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid as i32),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        let _ = tokio::time::timeout(Duration::from_secs(30), self.child.wait()).await;
        if let Ok(mut admin) =
            <sqlx::PgConnection as sqlx::Connection>::connect(&test_database_url()).await
        {
            let _ = sqlx::query(&format!(
                "DROP DATABASE IF EXISTS {} WITH (FORCE)",
                self.database
            ))
            .execute(&mut admin)
            .await;
        }
    }
}
