//! The shard segments open on this worker: opened (and recovered) on first
//! use, one recovery at a time, each with its writer task (`writer/mod.rs`).

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use freshet_log::{LogConfig, Opened, ShardLog};
use tokio_util::task::TaskTracker;

use crate::error::WriteError;
use crate::layout::{arrival_floor, segment_dir, stored_segments, SegmentKey};
use crate::replication::{ReplicationContext, Replicator};
use crate::throttle::ShardLimits;
use crate::writer::OpenShard;

/// The shards open on this worker.
pub struct ShardRegistry {
    data_dir: PathBuf,
    log_config: LogConfig,
    replication: Arc<ReplicationContext>,
    limits: ShardLimits,
    open: Mutex<HashMap<SegmentKey, Arc<OpenShard>>>,
    /// Held while a log is being opened: recovery may truncate a torn tail,
    /// so two recoveries of one shard must never run at once (the second
    /// could cut records the first already acknowledged).
    opening: tokio::sync::Mutex<()>,
    /// The writer tasks of the open shards: drained at shutdown.
    tasks: TaskTracker,
    /// Set by [`ShardRegistry::close_all`]: nothing opens afterwards, so a
    /// request outliving the drain can never recover a log whose writer is
    /// still finishing (two writers on one directory).
    closed: std::sync::atomic::AtomicBool,
    /// Set while the data directory's id is new and not yet confirmed with
    /// membership (`disk.rs`): no log is created meanwhile, in case the
    /// disk replaced one that held it.
    unconfirmed_disk: std::sync::atomic::AtomicBool,
}

impl ShardRegistry {
    /// The worker's metrics.
    pub fn metrics(&self) -> &crate::metrics::WorkerMetrics {
        &self.replication.metrics
    }

    pub fn new(
        data_dir: PathBuf,
        log_config: LogConfig,
        replication: Arc<ReplicationContext>,
        limits: ShardLimits,
        tasks: TaskTracker,
    ) -> ShardRegistry {
        ShardRegistry {
            data_dir,
            log_config,
            replication,
            limits,
            open: Mutex::new(HashMap::new()),
            opening: tokio::sync::Mutex::new(()),
            tasks,
            closed: std::sync::atomic::AtomicBool::new(false),
            unconfirmed_disk: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn shard_dir(&self, key: &SegmentKey) -> PathBuf {
        segment_dir(&self.data_dir, key)
    }

    /// The open segment, opening (and recovering) its log on first use; a
    /// log created here starts at `start_offset`, and its records arrive no
    /// earlier than `arrival_floor_ms`.
    pub async fn get_or_open(
        &self,
        key: &SegmentKey,
        sequence_base: u64,
        start_offset: u64,
        arrival_floor_ms: i64,
    ) -> Result<Arc<OpenShard>, WriteError> {
        if let Some(shard) = self.open_existing(key) {
            return Ok(shard);
        }
        let _opening = self.opening.lock().await;
        // Another request may have opened it while this one waited.
        if let Some(shard) = self.open_existing(key) {
            return Ok(shard);
        }
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(WriteError::Refused(
                "the worker is shutting down".to_owned(),
            ));
        }
        let data_dir = self.data_dir.clone();
        let dir = self.shard_dir(key);
        let config = self.log_config.clone();
        let damaged_to = data_dir.join("damaged").join(format!(
            "{}-{}-{}-{}",
            key.stream_uid,
            key.shard_id,
            key.segment,
            crate::writer::now_ms()
        ));
        // A new disk not yet confirmed may have replaced one that held this
        // copy: nothing is created on it until membership has said which
        // copies were lost (an election waits for a copy that cannot
        // answer; it must never hear an empty one).
        if self
            .unconfirmed_disk
            .load(std::sync::atomic::Ordering::Acquire)
            && !tokio::fs::try_exists(&dir).await.unwrap_or(false)
        {
            return Err(WriteError::Refused(
                "this worker's disk is new and not yet confirmed with membership".to_owned(),
            ));
        }
        let log = tokio::task::spawn_blocking(move || {
            freshet_log::create_dir_durably(&data_dir, &dir)?;
            let log = match freshet_log::open_or_rebuild(&dir, &damaged_to, config, start_offset)? {
                Opened::Intact(log) => log,
                Opened::Rebuilding {
                    log,
                    damaged_to,
                    error,
                } => {
                    tracing::error!(
                        %error,
                        dir = %dir.display(),
                        moved_to = %damaged_to.display(),
                        "a shard log is damaged: moved aside, this copy is rebuilt from its peers"
                    );
                    log
                }
            };
            log.raise_arrival_floor(arrival_floor_ms);
            Ok::<_, freshet_log::LogError>(log)
        })
        .await
        .map_err(|e| WriteError::task("open", e))??;
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        // Checked again under the map's lock, which `close_all` drains
        // under: a shard is either drained with the rest or never added.
        if self.closed.load(std::sync::atomic::Ordering::Acquire) {
            return Err(WriteError::Refused(
                "the worker is shutting down".to_owned(),
            ));
        }
        let replicator = Replicator::new(self.replication.clone(), key);
        let shard = Arc::new(OpenShard::start(
            Arc::new(log),
            sequence_base,
            self.limits,
            replicator,
            &self.tasks,
        ));
        open.insert(key.clone(), shard.clone());
        tracing::info!(
            stream_uid = key.stream_uid,
            shard_id = key.shard_id,
            segment = key.segment,
            "opened shard log"
        );
        Ok(shard)
    }

    /// The shard's current segment as `entry` describes it (opened on first
    /// use; a new segment continues the previous one's arrival times).
    pub async fn get_current(
        &self,
        key: &SegmentKey,
        entry: &freshet_proto::v1::ShardMapEntry,
    ) -> Result<Arc<OpenShard>, WriteError> {
        if let Some(shard) = self.open_existing(key) {
            return Ok(shard);
        }
        self.get_or_open(
            key,
            entry.sequence_base,
            entry.segment_start_offset,
            arrival_floor(entry),
        )
        .await
    }

    fn open_existing(&self, key: &SegmentKey) -> Option<Arc<OpenShard>> {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(key)
            .cloned()
    }

    /// The segment if this worker stores it (opening its log if needed),
    /// `None` if it has no copy: a sealed segment is never created empty.
    pub async fn get_stored(
        &self,
        key: &SegmentKey,
        sequence_base: u64,
        start_offset: u64,
        arrival_floor_ms: i64,
    ) -> Result<Option<Arc<OpenShard>>, WriteError> {
        if let Some(shard) = self.open_existing(key) {
            return Ok(Some(shard));
        }
        if !tokio::fs::try_exists(self.shard_dir(key))
            .await
            .unwrap_or(false)
        {
            return Ok(None);
        }
        self.get_or_open(key, sequence_base, start_offset, arrival_floor_ms)
            .await
            .map(Some)
    }

    /// While the data directory is new and unconfirmed, no log is created
    /// (see `disk.rs`).
    pub fn set_unconfirmed_disk(&self, unconfirmed: bool) {
        self.unconfirmed_disk
            .store(unconfirmed, std::sync::atomic::Ordering::Release);
    }

    /// Marks a copy this worker lost with its old disk to be rebuilt from
    /// its peers before it votes or leads. A copy already on this disk
    /// (made since, and so marked, or rebuilt before a crash) is left as
    /// it is.
    pub async fn mark_lost(&self, key: &SegmentKey) -> Result<(), WriteError> {
        let _opening = self.opening.lock().await;
        if self.open_existing(key).is_some() {
            return Ok(());
        }
        let (data_dir, dir) = (self.data_dir.clone(), self.shard_dir(key));
        tokio::task::spawn_blocking(move || {
            if let Some(parent) = dir.parent() {
                freshet_log::create_dir_durably(&data_dir, parent)?;
            }
            freshet_log::create_rebuilding(&dir)
        })
        .await
        .map_err(|e| WriteError::task("mark a lost copy", e))??;
        Ok(())
    }

    /// Closes every open segment (at shutdown): each writer task ends once
    /// the last request holding its shard lets go. Answers the logs, for
    /// their commit points to be saved once the writers are done.
    pub fn close_all(&self) -> Vec<(SegmentKey, Arc<ShardLog>)> {
        self.closed
            .store(true, std::sync::atomic::Ordering::Release);
        // Under the map's lock, after `closed` is set: see `get_or_open`.
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain()
            .map(|(key, shard)| (key, shard.log.clone()))
            .collect()
    }

    pub fn open_shards(&self) -> Vec<(SegmentKey, Arc<OpenShard>)> {
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// Every shard segment with a directory on disk, open or not.
    pub async fn stored_shards(&self) -> Vec<SegmentKey> {
        let root = self.data_dir.join("shards");
        tokio::task::spawn_blocking(move || stored_segments(&root))
            .await
            .unwrap_or_default()
    }

    /// Closes a deleted (or no longer placed) shard segment and removes
    /// its data. Under the lock that opening takes: a log is never opened
    /// (or created again) while its files are being removed.
    pub async fn remove(&self, key: &SegmentKey) {
        let _opening = self.opening.lock().await;
        self.open
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(key);
        let dir = self.shard_dir(key);
        if let Err(error) = tokio::fs::remove_dir_all(&dir).await {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(%error, dir = %dir.display(), "failed to remove a shard segment's data");
            }
        }
        // The shard's directory goes with its last segment (this fails,
        // harmlessly, while another segment is still there).
        if let Some(shard_dir) = dir.parent() {
            let _ = tokio::fs::remove_dir(shard_dir).await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::Lease;
    use crate::replication::AckCopies;

    #[tokio::test]
    async fn a_closed_registry_opens_nothing_more() {
        let data = tempfile::tempdir().expect("tempdir");
        let replication = Arc::new(ReplicationContext::new(
            "worker".to_owned(),
            freshet_shardmap::SharedShardMap::default(),
            crate::replication::AckRule {
                copies: AckCopies::Majority,
                min_voters: 2,
            },
            Arc::new(Lease::default()),
            &freshet_server::InternalToken::none(),
            Arc::new(crate::metrics::WorkerMetrics::unregistered()),
            freshet_server::membership_client(
                freshet_server::grpc_channel("127.0.0.1:1", &freshet_server::InternalToken::none())
                    .expect("a lazy channel"),
            ),
        ));
        let tasks = TaskTracker::new();
        let registry = ShardRegistry::new(
            data.path().to_owned(),
            LogConfig::default(),
            replication,
            ShardLimits::KINESIS,
            tasks.clone(),
        );
        let open = SegmentKey::new(1, "shardId-000000000000", 0);
        registry.get_or_open(&open, 1, 0, 0).await.expect("opened");
        let logs = registry.close_all();
        assert_eq!(logs.len(), 1, "the open segment's log is handed back");
        assert!(registry.open_shards().is_empty());
        // A request that outlived the drain cannot recover a log again.
        let late = registry.get_or_open(&open, 1, 0, 0).await.err();
        assert!(matches!(late, Some(WriteError::Refused(_))), "{late:?}");
        // And the writer of the closed segment ends.
        tasks.close();
        tokio::time::timeout(std::time::Duration::from_secs(5), tasks.wait())
            .await
            .expect("writer task ended");
    }
}
