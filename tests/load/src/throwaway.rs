//! A membership process of the tool's own, on a database of its own, for
//! the heartbeat scenario: simulated workers registered with a real
//! deployment's membership would be live workers to it, and placement,
//! failover's spare replicas and the balancer would hand them real shards
//! (membership has no notion of a worker that must not get any). Here they
//! can get none — nothing else talks to this membership — and the
//! database is dropped afterwards, rows of simulated workers with it.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::Context as _;
use freshet_proto::v1::ListWorkersRequest;
use sqlx::Connection as _;

use crate::grpc::{self, Token};

pub struct ThrowawayMembership {
    child: tokio::process::Child,
    pub address: String,
    pg_server: String,
    database: String,
}

/// `freshet-membership` next to this binary (`target/release` when run by
/// `just load`).
pub fn default_membership_bin() -> Option<PathBuf> {
    let exe = std::env::current_exe().ok()?;
    Some(exe.parent()?.join("freshet-membership"))
}

impl ThrowawayMembership {
    /// Creates a database on `pg_server` (a Postgres URL without a
    /// database), starts `bin` on a free loopback port against it and the
    /// timer at `timer`, and waits until it answers.
    pub async fn start(
        bin: &Path,
        pg_server: &str,
        timer: &str,
        internal_token: Option<&str>,
        token: &Token,
    ) -> anyhow::Result<ThrowawayMembership> {
        anyhow::ensure!(
            bin.is_file(),
            "{} not found: build it (`cargo build --release --workspace --bins`) or pass --membership-bin",
            bin.display()
        );
        let pg_server = pg_server.trim_end_matches('/').to_owned();
        let database = format!(
            "freshet_load_{}_{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_secs() % 1_000_000)
        );
        let mut admin = sqlx::PgConnection::connect(&format!("{pg_server}/postgres"))
            .await
            .with_context(|| format!("connect to Postgres at {pg_server}"))?;
        sqlx::query(&format!("CREATE DATABASE \"{database}\""))
            .execute(&mut admin)
            .await
            .with_context(|| format!("create database {database}"))?;
        let _ = admin.close().await;

        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .context("find a free port")?
            .port();
        let address = format!("127.0.0.1:{port}");
        let mut command = tokio::process::Command::new(bin);
        command
            .arg("--listen")
            .arg(&address)
            .env("DATABASE_URL", format!("{pg_server}/{database}"))
            .env("FRESHET_TIMER_ADDR", timer)
            // Its own metrics port would collide with the deployment's.
            .env("FRESHET_METRICS_LISTEN", "off")
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .kill_on_drop(true);
        if let Some(token) = internal_token {
            command.env("FRESHET_INTERNAL_TOKEN", token);
        }
        let child = command
            .spawn()
            .with_context(|| format!("start {}", bin.display()))?;
        let mut membership = ThrowawayMembership {
            child,
            address,
            pg_server,
            database,
        };
        if let Err(error) = membership.wait_ready(token).await {
            membership.stop().await;
            return Err(error);
        }
        Ok(membership)
    }

    async fn wait_ready(&mut self, token: &Token) -> anyhow::Result<()> {
        let mut client = grpc::membership(grpc::channel(&self.address, token)?);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = self.child.try_wait()? {
                anyhow::bail!("the throwaway membership exited during start-up ({status})");
            }
            let answer = client
                .list_workers(grpc::request(ListWorkersRequest {}, Duration::from_secs(2)))
                .await;
            if answer.is_ok() {
                return Ok(());
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "the throwaway membership at {} did not answer within 30 s",
                self.address
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, wait for it to exit, drop its database.
    pub async fn stop(mut self) {
        if let Some(pid) = self.child.id().and_then(|pid| i32::try_from(pid).ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGTERM,
            );
        }
        if tokio::time::timeout(Duration::from_secs(15), self.child.wait())
            .await
            .is_err()
        {
            let _ = self.child.kill().await;
        }
        match sqlx::PgConnection::connect(&format!("{}/postgres", self.pg_server)).await {
            Ok(mut admin) => {
                let dropped = sqlx::query(&format!(
                    "DROP DATABASE IF EXISTS \"{}\" WITH (FORCE)",
                    self.database
                ))
                .execute(&mut admin)
                .await;
                if let Err(error) = dropped {
                    eprintln!(
                        "freshet-load: could not drop database {}: {error}",
                        self.database
                    );
                }
            }
            Err(error) => eprintln!(
                "freshet-load: could not drop database {}: {error}",
                self.database
            ),
        }
    }
}
