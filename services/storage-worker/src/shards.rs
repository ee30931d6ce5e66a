//! The shards this worker has open, and the group-commit writer of each.
//!
//! # The write path
//! 1. `Append` (in `service.rs`) checks that this worker leads the shard at
//!    the caller's epoch, then hands the records to the shard's writer task
//!    through a channel and waits.
//! 2. The writer task takes every append waiting in its channel (up to
//!    [`GROUP_COMMIT_MAX_BYTES`]), appends them to the log as one batch with
//!    one fsync (still invisible to readers) while sending the same batch to
//!    the shard's replicas (`replication.rs`), which fsync it too.
//! 3. Once enough copies hold it (a majority by default), the batch is
//!    committed — readers may see it — and each caller is answered with
//!    where its records landed. An acknowledged record is on disk in a
//!    majority of zones. Under load many requests share one fsync and one
//!    replication round; alone, a request pays for its own.
//!
//! Invariant: under one epoch, each offset is written with one content only.
//! Replicas may already hold a batch whose local write failed on the leader,
//! so the leader never reuses those offsets for other records: it writes
//! that same batch again before anything else ([`UnwrittenBatch`]). Epoch
//! histories compare copies by epoch alone, so this is what makes "same
//! epoch at an offset" mean "same record".

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use freshet_log::{Appended, LogConfig, NewRecord, ShardLog};
use tokio::sync::{mpsc, oneshot};

use crate::load::LoadMeter;
use crate::replication::{begin_leading, LocalBatch, ReplicationContext, Replicator};
use crate::throttle::{ShardLimits, ShardThrottle};

/// A batch stops collecting appends once it holds this many bytes.
pub const GROUP_COMMIT_MAX_BYTES: usize = 16 * 1024 * 1024;

/// One segment of one shard's log: what this worker stores and opens.
/// A shard that moved between workers (worker balancing) has several
/// segments, each kept where it was written (see `ShardMapEntry`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SegmentKey {
    pub stream_uid: i64,
    pub shard_id: String,
    pub segment: u32,
}

impl SegmentKey {
    pub fn new(stream_uid: i64, shard_id: &str, segment: u32) -> SegmentKey {
        SegmentKey {
            stream_uid,
            shard_id: shard_id.to_owned(),
            segment,
        }
    }

    /// The shard's current segment as `entry` describes it.
    pub fn current(entry: &freshet_proto::v1::ShardMapEntry) -> Option<SegmentKey> {
        entry
            .key
            .as_ref()
            .map(|k| SegmentKey::new(k.stream_uid, &k.shard_id, entry.segment_index))
    }
}

/// The earliest arrival time the shard's current segment may stamp: where
/// the segment before it ended.
pub fn arrival_floor(entry: &freshet_proto::v1::ShardMapEntry) -> i64 {
    entry
        .sealed_segments
        .last()
        .map_or(i64::MIN, |previous| previous.last_arrival_ms)
}

/// Where segment `segment` of `entry`'s shard starts, if the entry knows it.
pub fn segment_start(entry: &freshet_proto::v1::ShardMapEntry, segment: u32) -> Option<u64> {
    if segment == entry.segment_index {
        return Some(entry.segment_start_offset);
    }
    entry
        .sealed_segments
        .iter()
        .find(|s| s.index == segment)
        .map(|s| s.start_offset)
}

/// One caller's records waiting for the next group commit.
struct AppendJob {
    records: Vec<NewRecord>,
    /// The leadership epoch the caller was authorized under: the job is
    /// written only while this worker still leads at exactly that epoch.
    epoch: u64,
    reply: oneshot::Sender<Result<Appended, AppendError>>,
}

/// Why an append was not acknowledged.
#[derive(Debug, Clone)]
pub enum AppendError {
    /// Nothing was written: the caller may route again and retry (this
    /// worker no longer leads at the caller's epoch, or the shard closed).
    Refused(String),
    /// It may have been written (unacknowledged is not absent).
    Failed(String),
}

impl From<String> for AppendError {
    fn from(message: String) -> AppendError {
        AppendError::Failed(message)
    }
}

/// Work for a shard's writer task, done in arrival order.
enum WriterJob {
    Append(AppendJob),
    /// Commit the whole log with the replicas and answer where it ends:
    /// the final size of a CLOSING shard (led at `epoch`).
    Seal {
        epoch: u64,
        reply: oneshot::Sender<Result<Sealed, String>>,
    },
}

/// Where a sealed shard segment ends.
#[derive(Debug, Clone, Copy)]
pub struct Sealed {
    pub ending_offset: u64,
    /// Arrival time of its newest record, if it holds any.
    pub last_arrival_ms: Option<i64>,
}

/// How many idle catch-up rounds a seal may take before it gives up.
const SEAL_ROUNDS: usize = 20;

/// An open shard: its log and the channel to its writer task.
pub struct OpenShard {
    pub log: Arc<ShardLog>,
    pub sequence_base: u64,
    /// Enforced while this worker leads the shard.
    pub throttle: ShardThrottle,
    /// What the shard is asked to take while this worker leads it.
    pub load: LoadMeter,
    writer: mpsc::Sender<WriterJob>,
}

impl OpenShard {
    /// Appends through the group-commit writer; resolves once durable.
    pub async fn append(
        &self,
        records: Vec<NewRecord>,
        epoch: u64,
    ) -> Result<Appended, AppendError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(WriterJob::Append(AppendJob {
                records,
                epoch,
                reply,
            }))
            .await
            .map_err(|_| AppendError::Refused("shard writer stopped".to_owned()))?;
        answer
            .await
            .map_err(|_| AppendError::Failed("shard writer stopped".to_owned()))?
    }

    /// Seals a CLOSING shard led at `epoch`: once every append queued
    /// before this call is resolved, commits the whole log with the
    /// replicas and answers where it ends. Nothing is written after it:
    /// `service.rs` refuses appends to a closing shard, and the writer
    /// refuses those queued before it closed (`write_round`).
    pub async fn seal(&self, epoch: u64) -> Result<Sealed, String> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(WriterJob::Seal { epoch, reply })
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

/// How long the writer waits for work before it checks on its replicas.
const IDLE_CATCH_UP_INTERVAL: Duration = Duration::from_millis(500);
/// How long one idle check may spend on one replica.
const IDLE_CATCH_UP_DEADLINE: Duration = Duration::from_millis(500);

/// A batch the leader sent to its replicas but failed to write locally. Its
/// offsets are taken, under its epoch, by exactly these records.
struct UnwrittenBatch {
    epoch: u64,
    first_offset: u64,
    arrival_ms: i64,
    records: Arc<Vec<NewRecord>>,
}

impl UnwrittenBatch {
    /// Writes the batch locally again. Ok once it is on disk (it stays
    /// unacknowledged; a later commit makes it visible) or once this worker
    /// no longer writes at its epoch, when the offsets are not its to fill.
    async fn write_again(&self, log: &Arc<ShardLog>, leading: Option<u64>) -> Result<(), String> {
        if leading != Some(self.epoch) || log.latest_epoch() != self.epoch {
            return Ok(());
        }
        let (log, epoch, first, arrival, records) = (
            log.clone(),
            self.epoch,
            self.first_offset,
            self.arrival_ms,
            self.records.clone(),
        );
        tokio::task::spawn_blocking(move || log.append_at(epoch, first, arrival, &records))
            .await
            .map_err(|e| format!("append task failed: {e}"))?
            .map(|_| ())
            .map_err(|e| format!("the shard's disk is failing: {e}"))
    }
}

async fn write_loop(
    log: Arc<ShardLog>,
    mut replicator: Replicator,
    mut jobs: mpsc::Receiver<WriterJob>,
) {
    let mut unwritten: Option<UnwrittenBatch> = None;
    loop {
        let job = tokio::select! {
            job = jobs.recv() => match job {
                Some(job) => job,
                None => return,
            },
            () = tokio::time::sleep(IDLE_CATCH_UP_INTERVAL) => {
                if let Some(batch) = &unwritten {
                    if batch.write_again(&log, replicator.leading_epoch()).await.is_ok() {
                        unwritten = None;
                    }
                    continue;
                }
                // Idle: a replica that restarted catches up now, not only
                // when the next write arrives.
                replicator.catch_up(&log, IDLE_CATCH_UP_DEADLINE).await;
                continue;
            }
        };
        let first = match job {
            WriterJob::Append(job) => job,
            WriterJob::Seal { epoch, reply } => {
                let _ = reply.send(seal(&log, &mut replicator, &mut unwritten, epoch).await);
                continue;
            }
        };
        let mut size = first.size();
        let mut batch = vec![first];
        let mut seal_after = None;
        while size < GROUP_COMMIT_MAX_BYTES {
            match jobs.try_recv() {
                Ok(WriterJob::Append(job)) => {
                    size += job.size();
                    batch.push(job);
                }
                Ok(WriterJob::Seal { epoch, reply }) => {
                    // Appends behind it wait for the next round, where they
                    // are refused: the shard is no longer open.
                    seal_after = Some((epoch, reply));
                    break;
                }
                Err(_) => break,
            }
        }
        write_round(&log, &mut replicator, &mut unwritten, batch).await;
        if let Some((epoch, reply)) = seal_after {
            let _ = reply.send(seal(&log, &mut replicator, &mut unwritten, epoch).await);
        }
    }
}

impl AppendJob {
    fn size(&self) -> usize {
        self.records
            .iter()
            .map(|r| r.data.len() + r.partition_key.len())
            .sum()
    }
}

/// Writes one group commit's worth of appends and answers each caller.
async fn write_round(
    log: &Arc<ShardLog>,
    replicator: &mut Replicator,
    unwritten: &mut Option<UnwrittenBatch>,
    batch: Vec<AppendJob>,
) {
    // Only jobs authorized under the epoch this worker leads now go on —
    // a job queued before a failover must not be written afterwards — and
    // only while the shard is open: once a split or merge starts closing
    // it, a seal may come next, and nothing may land after the seal.
    let leading = replicator.leading_epoch().filter(|_| replicator.is_open());
    let (batch, stale): (Vec<AppendJob>, Vec<AppendJob>) = batch
        .into_iter()
        .partition(|job| Some(job.epoch) == leading);
    for job in stale {
        let _ = job.reply.send(Err(AppendError::Refused(format!(
            "not leader of an open shard at epoch {} any more",
            job.epoch
        ))));
    }
    let Some(epoch) = leading.filter(|_| !batch.is_empty()) else {
        return;
    };
    if let Some(pending) = unwritten.as_ref() {
        if let Err(error) = pending.write_again(log, leading).await {
            for job in batch {
                let _ = job.reply.send(Err(AppendError::Refused(error.clone())));
            }
            return;
        }
        *unwritten = None;
    }
    let counts: Vec<usize> = batch.iter().map(|job| job.records.len()).collect();
    let mut records = Vec::with_capacity(counts.iter().sum());
    let mut replies = Vec::with_capacity(batch.len());
    for job in batch {
        records.extend(job.records);
        replies.push(job.reply);
    }
    match commit_batch(log, replicator, records, epoch).await {
        Ok(appended) => {
            let mut offset = appended.first_offset;
            for (reply, count) in replies.into_iter().zip(counts) {
                let _ = reply.send(Ok(Appended {
                    first_offset: offset,
                    arrival_ms: appended.arrival_ms,
                }));
                offset += count as u64;
            }
        }
        Err(failure) => {
            tracing::warn!(error = failure.error, "shard append failed");
            *unwritten = failure.unwritten;
            for reply in replies {
                let _ = reply.send(Err(AppendError::Failed(failure.error.clone())));
            }
        }
    }
}

/// The writer's side of [`OpenShard::seal`].
async fn seal(
    log: &Arc<ShardLog>,
    replicator: &mut Replicator,
    unwritten: &mut Option<UnwrittenBatch>,
    epoch: u64,
) -> Result<Sealed, String> {
    if replicator.leading_epoch() != Some(epoch) {
        return Err(format!("not leader at epoch {epoch}"));
    }
    // Replicas may hold a batch the leader failed to write: the leader's
    // log must hold it too before its end can be the shard's end.
    if let Some(batch) = unwritten.as_ref() {
        batch.write_again(log, replicator.leading_epoch()).await?;
        *unwritten = None;
    }
    for _ in 0..SEAL_ROUNDS {
        replicator.catch_up(log, IDLE_CATCH_UP_DEADLINE).await;
        let end = log.next_offset();
        // Committed here, and held whole at this epoch by enough replicas
        // that they alone can serve the sealed segment.
        if log.committed_offset() == end
            && log.latest_epoch() == epoch
            && replicator.enough_replicas_hold(end)
        {
            return Ok(Sealed {
                ending_offset: end,
                last_arrival_ms: log.last_arrival_ms(),
            });
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err("the shard's replicas did not confirm its whole log in time".to_owned())
}

/// Why a batch was not acknowledged.
struct BatchFailure {
    error: String,
    /// Set when the local write failed after the batch went to replicas.
    unwritten: Option<UnwrittenBatch>,
}

impl From<String> for BatchFailure {
    fn from(error: String) -> BatchFailure {
        BatchFailure {
            error,
            unwritten: None,
        }
    }
}

/// Writes and fsyncs a batch locally, replicates it, and commits it once
/// enough copies hold it.
async fn commit_batch(
    log: &Arc<ShardLog>,
    replicator: &mut Replicator,
    records: Vec<NewRecord>,
    epoch: u64,
) -> Result<Appended, BatchFailure> {
    // The epoch's entry is in the log's history before any record of it is
    // written here or sent to a replica.
    begin_leading(log, epoch).await?;
    let records = Arc::new(records);
    // This task is the shard's only writer, so the batch's place is known
    // before it is written: the leader's fsync and the replicas' overlap.
    let (first_offset, arrival_ms) = log.next_position(now_ms());
    let for_write = (log.clone(), records.clone());
    let local = tokio::task::spawn_blocking(move || {
        for_write
            .0
            .append_at(epoch, first_offset, arrival_ms, &for_write.1)
    });
    let batch = LocalBatch {
        epoch,
        first_offset,
        arrival_ms,
        records: &records,
    };
    let (local, replicated) = tokio::join!(local, replicator.replicate(log, batch));
    let local = local
        .map_err(|e| format!("append task failed: {e}"))
        .and_then(|written| written.map_err(|e| e.to_string()));
    let appended = match local {
        Ok(appended) => appended,
        Err(error) => {
            return Err(BatchFailure {
                error,
                unwritten: Some(UnwrittenBatch {
                    epoch,
                    first_offset,
                    arrival_ms,
                    records,
                }),
            })
        }
    };
    replicated?;
    // The lease is checked last, right before the batch becomes visible and
    // acknowledged: a leader that lost it while replicating must not commit.
    // (Not retried by the frontend: the batch is already on disk here.)
    if !replicator.holds_lease() {
        return Err(
            "the leader lease expired before the batch could be committed"
                .to_owned()
                .into(),
        );
    }
    if replicator.leading_epoch() != Some(epoch) {
        return Err(format!(
            "leadership moved on from epoch {epoch} before the batch could be committed"
        )
        .into());
    }
    log.commit(appended.first_offset + records.len() as u64);
    Ok(appended)
}

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
}

impl ShardRegistry {
    pub fn new(
        data_dir: PathBuf,
        log_config: LogConfig,
        replication: Arc<ReplicationContext>,
        limits: ShardLimits,
    ) -> ShardRegistry {
        ShardRegistry {
            data_dir,
            log_config,
            replication,
            limits,
            open: Mutex::new(HashMap::new()),
            opening: tokio::sync::Mutex::new(()),
        }
    }

    fn shard_dir(&self, key: &SegmentKey) -> PathBuf {
        self.data_dir
            .join("shards")
            .join(key.stream_uid.to_string())
            .join(&key.shard_id)
            .join(key.segment.to_string())
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
    ) -> Result<Arc<OpenShard>, String> {
        if let Some(shard) = self.open_existing(key) {
            return Ok(shard);
        }
        let _opening = self.opening.lock().await;
        // Another request may have opened it while this one waited.
        if let Some(shard) = self.open_existing(key) {
            return Ok(shard);
        }
        let data_dir = self.data_dir.clone();
        let dir = self.shard_dir(key);
        let config = self.log_config.clone();
        let log = tokio::task::spawn_blocking(move || {
            freshet_log::create_dir_durably(&data_dir, &dir)?;
            let log = ShardLog::open_from(&dir, config, start_offset)?;
            log.raise_arrival_floor(arrival_floor_ms);
            Ok::<_, freshet_log::LogError>(log)
        })
        .await
        .map_err(|e| format!("open task failed: {e}"))?
        .map_err(|e| e.to_string())?;
        let mut open = self.open.lock().unwrap_or_else(|p| p.into_inner());
        let log = Arc::new(log);
        let (writer, jobs) = mpsc::channel(1024);
        let replicator = Replicator::new(self.replication.clone(), key);
        tokio::spawn(write_loop(log.clone(), replicator, jobs));
        let shard = Arc::new(OpenShard {
            log,
            sequence_base,
            throttle: ShardThrottle::new(self.limits),
            load: LoadMeter::default(),
            writer,
        });
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
    ) -> Result<Arc<OpenShard>, String> {
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
    ) -> Result<Option<Arc<OpenShard>>, String> {
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
    /// its data.
    pub async fn remove(&self, key: &SegmentKey) {
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

/// Every `<stream uid>/<shard id>/<segment>` directory under `root`.
fn stored_segments(root: &std::path::Path) -> Vec<SegmentKey> {
    let named = |dir: &std::path::Path| -> Vec<(String, PathBuf)> {
        entries_of(dir, |t| t.is_dir())
            .unwrap_or_default()
            .into_iter()
            .filter_map(|path| Some((path.file_name()?.to_str()?.to_owned(), path)))
            .collect()
    };
    let mut found = Vec::new();
    for (uid, stream_dir) in named(root) {
        let Ok(stream_uid) = uid.parse::<i64>() else {
            continue;
        };
        for (shard_id, shard_dir) in named(&stream_dir) {
            for (segment, _) in named(&shard_dir) {
                if let Ok(segment) = segment.parse::<u32>() {
                    found.push(SegmentKey::new(stream_uid, &shard_id, segment));
                }
            }
        }
    }
    found
}

/// Upgrades a data directory written before shards had segments: a log
/// stored directly in `shards/<stream uid>/<shard id>/` is that shard's
/// segment 0, and moves to `<shard id>/0/`. One file at a time, each move
/// made durable, so a crash midway is finished by the next start.
pub fn move_unsegmented_logs(data_dir: &std::path::Path) -> std::io::Result<()> {
    let root = data_dir.join("shards");
    if !root.is_dir() {
        return Ok(());
    }
    for stream_dir in entries_of(&root, |t| t.is_dir())? {
        for shard_dir in entries_of(&stream_dir, |t| t.is_dir())? {
            let files = entries_of(&shard_dir, |t| t.is_file())?;
            if files.is_empty() {
                continue;
            }
            let segment_dir = shard_dir.join("0");
            // A move cut short leaves each file in one place or the other;
            // a name in both means two logs, and which one is the shard's
            // is not for this code to guess.
            if let Some(clash) = files
                .iter()
                .filter_map(|f| f.file_name())
                .find(|name| segment_dir.join(name).exists())
            {
                return Err(std::io::Error::other(format!(
                    "{} holds {} both directly and in 0/: move one of the two logs away",
                    shard_dir.display(),
                    clash.to_string_lossy()
                )));
            }
            std::fs::create_dir_all(&segment_dir)?;
            for file in files {
                if let Some(name) = file.file_name() {
                    std::fs::rename(&file, segment_dir.join(name))?;
                }
            }
            std::fs::File::open(&segment_dir)?.sync_all()?;
            std::fs::File::open(&shard_dir)?.sync_all()?;
            tracing::info!(dir = %shard_dir.display(), "moved a shard's log into its segment 0");
        }
    }
    Ok(())
}

/// The entries of `dir` whose file type passes `keep`.
fn entries_of(
    dir: &std::path::Path,
    keep: impl Fn(std::fs::FileType) -> bool,
) -> std::io::Result<Vec<PathBuf>> {
    Ok(std::fs::read_dir(dir)?
        .collect::<std::io::Result<Vec<_>>>()?
        .into_iter()
        .filter(|e| e.file_type().is_ok_and(&keep))
        .map(|e| e.path())
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_log_from_before_segments_becomes_segment_zero() {
        let data = tempfile::tempdir().expect("tempdir");
        let shard = data.path().join("shards/7/shardId-000000000000");
        let log = ShardLog::open(&shard, LogConfig::default()).expect("open");
        log.append(
            &[NewRecord {
                partition_key: "k".to_owned(),
                data: bytes::Bytes::from_static(b"kept"),
            }],
            1,
        )
        .expect("append");
        drop(log);
        std::fs::write(data.path().join("shards/stray"), b"").expect("stray file");
        move_unsegmented_logs(data.path()).expect("upgrade");
        move_unsegmented_logs(data.path()).expect("a second run changes nothing");
        let moved = ShardLog::open(&shard.join("0"), LogConfig::default()).expect("reopen");
        let records = moved.read(0, 10, u64::MAX).expect("read").records;
        assert_eq!(records.len(), 1);
        assert_eq!(&records[0].data[..], b"kept");

        // A log in both places is refused, not merged or overwritten.
        std::fs::copy(
            shard.join("0/00000000000000000000.log"),
            shard.join("00000000000000000000.log"),
        )
        .expect("copy");
        assert!(move_unsegmented_logs(data.path()).is_err());
    }
}
