//! What scenarios share before and after a run: the context (addresses,
//! token, account), streams made through the control plane and deleted
//! afterwards, and shard routes read from the cache.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use freshet_proto::v1::control_plane_client::ControlPlaneClient;
use freshet_proto::v1::{
    CreateStreamRequest, DeleteStreamRequest, GetStreamShardsRequest, ShardMapEntry, ShardState,
};

use crate::driver::Scenario;
use crate::grpc::{self, AuthChannel, Token};
use crate::report::Heading;
use crate::Addresses;

/// Everything a scenario's set-up needs to know.
#[derive(Clone)]
pub struct Context {
    pub token: Token,
    /// The token as given, for processes this tool starts.
    pub internal_token: Option<String>,
    pub addresses: Addresses,
    pub target: Option<String>,
    pub connections: usize,
    pub timeout: Duration,
    /// The first account, as a number (accounts are 12 digits).
    pub account: u64,
    pub region: String,
    /// Distinguishes this run's streams and simulated workers.
    pub run_id: String,
    pub keep: bool,
}

impl Context {
    /// The address of the service under load: `--target`, or `default`.
    pub fn target_or<'a>(&'a self, default: &'a str) -> &'a str {
        self.target.as_deref().unwrap_or(default)
    }

    /// The `index`th account from `--account`, as 12 digits.
    pub fn account(&self, index: u64) -> String {
        format!("{:012}", self.account + index)
    }

    /// A stream name for this run.
    pub fn stream_name(&self, what: &str) -> String {
        format!("load-{what}-{}", self.run_id)
    }

    pub fn control_plane(&self) -> anyhow::Result<ControlPlaneClient<AuthChannel>> {
        Ok(grpc::control_plane(grpc::channel(
            &self.addresses.control_plane_addr,
            &self.token,
        )?))
    }
}

/// A short id unique enough to tell runs apart: process id and start time.
pub fn run_id() -> String {
    // Seconds, the time's nanoseconds and the pid: two runs (pids repeat
    // in containers) never share a name, so a run deletes only its own.
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{:x}{:08x}{:04x}",
        now.as_secs() & 0xf_ffff,
        now.subsec_nanos(),
        std::process::id() & 0xffff
    )
}

/// A scenario ready to run.
pub struct Prepared {
    pub scenario: Arc<dyn Scenario>,
    pub heading: Heading,
    /// Caps the callers (a scenario whose calls must not overlap).
    pub max_concurrency: Option<usize>,
    /// Dropped when the run ends, before the clean-ups (background tasks a
    /// scenario keeps, such as subscribers).
    pub keep_alive: Option<Box<dyn std::any::Any + Send>>,
}

type CleanupFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

/// What to undo after the run (or after a failed set-up), last first.
#[derive(Default)]
pub struct Cleanups(Vec<Box<dyn FnOnce() -> CleanupFuture + Send>>);

impl Cleanups {
    pub fn push<F, Fut>(&mut self, cleanup: F)
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        self.0.push(Box::new(move || Box::pin(cleanup())));
    }

    pub async fn run(self) {
        for cleanup in self.0.into_iter().rev() {
            cleanup().await;
        }
    }
}

/// Whether a status is the control plane's call-rate refusal.
fn is_rate_limited(status: &tonic::Status) -> bool {
    grpc::kind_of(status).ends_with("(rate)")
}

/// Creates a stream of `shards` shards and waits for it (the control plane
/// answers once it is ACTIVE), waiting out the control plane's call rate.
/// A stream that already exists is taken as it is.
pub async fn create_stream(
    client: &ControlPlaneClient<AuthChannel>,
    account: &str,
    region: &str,
    name: &str,
    shards: u32,
) -> anyhow::Result<()> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let request = CreateStreamRequest {
            account_id: account.to_owned(),
            region: region.to_owned(),
            stream_name: name.to_owned(),
            shard_count: shards,
            ..CreateStreamRequest::default()
        };
        match client
            .clone()
            .create_stream(grpc::request(request, Duration::from_secs(30)))
            .await
        {
            Ok(_) => return Ok(()),
            Err(status) if status.code() == tonic::Code::AlreadyExists => return Ok(()),
            Err(status) if grpc::kind_of(&status).ends_with("/ResourceInUse") => return Ok(()),
            Err(status) if is_rate_limited(&status) && tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(status) => {
                return Err(anyhow::anyhow!(
                    "CreateStream {name} ({shards} shards) in account {account}: {}: {}",
                    grpc::kind_of(&status),
                    status.message()
                ))
            }
        }
    }
}

/// Deletes a stream, waiting out the call rate; a missing one is fine.
/// Problems are reported on stderr (this runs after the measurements).
pub async fn delete_stream(
    client: &ControlPlaneClient<AuthChannel>,
    account: &str,
    region: &str,
    name: &str,
) {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let request = DeleteStreamRequest {
            account_id: account.to_owned(),
            stream_name: name.to_owned(),
            region: region.to_owned(),
            // A load test's stream goes, whatever reads it.
            enforce_consumer_deletion: true,
        };
        match client
            .clone()
            .delete_stream(grpc::request(request, Duration::from_secs(30)))
            .await
        {
            Ok(_) => return,
            Err(status) if status.code() == tonic::Code::NotFound => return,
            // Past the call rate, or still UPDATING: wait and try again.
            Err(status)
                if (is_rate_limited(&status)
                    || grpc::kind_of(&status).ends_with("/ResourceInUse"))
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            Err(status) => {
                eprintln!(
                    "freshet-load: could not delete stream {name} of account {account}: {}: {}",
                    grpc::kind_of(&status),
                    status.message()
                );
                return;
            }
        }
    }
}

/// Creates the streams `names` in `account` and registers their deletion
/// (unless `--keep`).
pub async fn create_streams(
    context: &Context,
    cleanups: &mut Cleanups,
    account: &str,
    names: &[String],
    shards: u32,
) -> anyhow::Result<()> {
    let client = context.control_plane()?;
    if !context.keep {
        let client = client.clone();
        let (account, region, names) = (account.to_owned(), context.region.clone(), names.to_vec());
        cleanups.push(move || async move {
            for name in &names {
                delete_stream(&client, &account, &region, name).await;
            }
        });
    }
    for name in names {
        create_stream(&client, account, &context.region, name, shards).await?;
    }
    Ok(())
}

/// The OPEN shards of a stream, from the cache, once each has a leader
/// address; sorted by shard id.
pub async fn open_shards(
    context: &Context,
    account: &str,
    name: &str,
) -> anyhow::Result<Vec<ShardMapEntry>> {
    let mut cache = grpc::cache(grpc::channel(
        &context.addresses.cache_addr,
        &context.token,
    )?);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        let request = GetStreamShardsRequest {
            account_id: account.to_owned(),
            stream_name: name.to_owned(),
            region: context.region.clone(),
        };
        let answer = cache
            .get_stream_shards(grpc::request(request, context.timeout))
            .await
            .map_err(|status| {
                anyhow::anyhow!(
                    "GetStreamShards for {name} from the cache at {}: {}: {}",
                    context.addresses.cache_addr,
                    grpc::kind_of(&status),
                    status.message()
                )
            })?
            .into_inner();
        let mut open: Vec<ShardMapEntry> = answer
            .entries
            .into_iter()
            .filter(|entry| entry.state() == ShardState::Open)
            .collect();
        open.sort_by(|a, b| shard_id(a).cmp(shard_id(b)));
        if !open.is_empty() && open.iter().all(|entry| !entry.leader_address.is_empty()) {
            return Ok(open);
        }
        anyhow::ensure!(
            tokio::time::Instant::now() < deadline,
            "stream {name} has no open shard with a known leader after 30 s"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

pub fn shard_id(entry: &ShardMapEntry) -> &str {
    entry.key.as_ref().map_or("", |key| key.shard_id.as_str())
}

/// `count` records of `size` bytes for a call, keyed after `seq`.
pub fn records(
    seq: u64,
    count: usize,
    payload: &bytes::Bytes,
) -> Vec<freshet_proto::v1::RecordToAppend> {
    (0..count)
        .map(|i| freshet_proto::v1::RecordToAppend {
            partition_key: format!("load-{seq}-{i}"),
            data: payload.clone(),
            explicit_hash_key: String::new(),
            ends_append: None,
        })
        .collect()
}
