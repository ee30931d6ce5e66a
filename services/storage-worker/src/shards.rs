//! The shards this worker has open, and the group-commit writer of each.
//!
//! # The write path
//! 1. `Append` (in `service.rs`) checks that this worker leads the shard at
//!    the caller's epoch, then hands the records to the shard's writer task
//!    through a channel and waits.
//! 2. The writer task takes every append waiting in its channel (up to
//!    [`GROUP_COMMIT_MAX_BYTES`]), appends them to the log as one batch with
//!    one fsync, and answers each caller with where its records landed.
//! 3. Only then does the caller acknowledge: an acknowledged record is on
//!    disk. Under load many requests share one fsync; alone, a request pays
//!    for its own.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{SystemTime, UNIX_EPOCH};

use freshet_log::{Appended, LogConfig, NewRecord, ShardLog};
use tokio::sync::{mpsc, oneshot};

/// A batch stops collecting appends once it holds this many bytes.
pub const GROUP_COMMIT_MAX_BYTES: usize = 16 * 1024 * 1024;

/// `(stream_uid, shard_id)`.
pub type ShardKey = (i64, String);

/// One caller's records waiting for the next group commit.
struct AppendJob {
    records: Vec<NewRecord>,
    reply: oneshot::Sender<Result<Appended, String>>,
}

/// An open shard: its log and the channel to its writer task.
pub struct OpenShard {
    pub log: Arc<ShardLog>,
    pub sequence_base: u64,
    writer: mpsc::Sender<AppendJob>,
}

impl OpenShard {
    /// Appends through the group-commit writer; resolves once durable.
    pub async fn append(&self, records: Vec<NewRecord>) -> Result<Appended, String> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(AppendJob { records, reply })
            .await
            .map_err(|_| "shard writer stopped".to_owned())?;
        answer
            .await
            .map_err(|_| "shard writer stopped".to_owned())?
    }
}

pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

async fn write_loop(log: Arc<ShardLog>, mut jobs: mpsc::Receiver<AppendJob>) {
    while let Some(first) = jobs.recv().await {
        let mut size: usize = first
            .records
            .iter()
            .map(|r| r.data.len() + r.partition_key.len())
            .sum();
        let mut batch = vec![first];
        while size < GROUP_COMMIT_MAX_BYTES {
            let Ok(job) = jobs.try_recv() else { break };
            size += job
                .records
                .iter()
                .map(|r| r.data.len() + r.partition_key.len())
                .sum::<usize>();
            batch.push(job);
        }
        let counts: Vec<usize> = batch.iter().map(|job| job.records.len()).collect();
        let mut records = Vec::with_capacity(counts.iter().sum());
        let mut replies = Vec::with_capacity(batch.len());
        for job in batch {
            records.extend(job.records);
            replies.push(job.reply);
        }
        let log_for_write = log.clone();
        let result =
            tokio::task::spawn_blocking(move || log_for_write.append(&records, now_ms())).await;
        match result {
            Ok(Ok(appended)) => {
                let mut offset = appended.first_offset;
                for (reply, count) in replies.into_iter().zip(counts) {
                    let _ = reply.send(Ok(Appended {
                        first_offset: offset,
                        arrival_ms: appended.arrival_ms,
                    }));
                    offset += count as u64;
                }
            }
            Ok(Err(error)) => {
                tracing::error!(%error, "shard append failed");
                for reply in replies {
                    let _ = reply.send(Err(error.to_string()));
                }
            }
            Err(join_error) => {
                for reply in replies {
                    let _ = reply.send(Err(format!("append task failed: {join_error}")));
                }
            }
        }
    }
}

/// The shards open on this worker.
pub struct ShardRegistry {
    data_dir: PathBuf,
    log_config: LogConfig,
    open: Mutex<HashMap<ShardKey, Arc<OpenShard>>>,
    /// Held while a log is being opened: recovery may truncate a torn tail,
    /// so two recoveries of one shard must never run at once (the second
    /// could cut records the first already acknowledged).
    opening: tokio::sync::Mutex<()>,
}

impl ShardRegistry {
    pub fn new(data_dir: PathBuf, log_config: LogConfig) -> ShardRegistry {
        ShardRegistry {
            data_dir,
            log_config,
            open: Mutex::new(HashMap::new()),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    fn shard_dir(&self, key: &ShardKey) -> PathBuf {
        self.data_dir
            .join("shards")
            .join(key.0.to_string())
            .join(&key.1)
    }

    /// The open shard, opening (and recovering) its log on first use.
    pub async fn get_or_open(
        &self,
        key: &ShardKey,
        sequence_base: u64,
    ) -> Result<Arc<OpenShard>, String> {
        if let Some(shard) = self.open.lock().unwrap_or_else(|p| p.into_inner()).get(key) {
            return Ok(shard.clone());
        }
        let _opening = self.opening.lock().await;
        // Another request may have opened it while this one waited.
        if let Some(shard) = self.open.lock().unwrap_or_else(|p| p.into_inner()).get(key) {
            return Ok(shard.clone());
        }
        let data_dir = self.data_dir.clone();
        let dir = self.shard_dir(key);
        let config = self.log_config.clone();
        let log = tokio::task::spawn_blocking(move || {
            freshet_log::create_dir_durably(&data_dir, &dir)?;
            ShardLog::open(&dir, config)
        })
        .await
        .map_err(|e| format!("open task failed: {e}"))?
        .map_err(|e| e.to_string())?;
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let log = Arc::new(log);
        let (writer, jobs) = mpsc::channel(1024);
        tokio::spawn(write_loop(log.clone(), jobs));
        let shard = Arc::new(OpenShard {
            log,
            sequence_base,
            writer,
        });
        open.insert(key.clone(), shard.clone());
        tracing::info!(stream_uid = key.0, shard_id = key.1, "opened shard log");
        Ok(shard)
    }

    pub fn open_shards(&self) -> Vec<(ShardKey, Arc<OpenShard>)> {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Closes a deleted shard and removes its data.
    pub async fn remove(&self, key: &ShardKey) {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        let dir = self.shard_dir(key);
        if let Err(error) = tokio::fs::remove_dir_all(&dir).await {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(%error, dir = %dir.display(), "failed to remove deleted shard's data");
            }
        }
    }
}
