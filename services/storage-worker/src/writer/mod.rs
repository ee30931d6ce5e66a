//! The group-commit writer of one open shard segment.
//!
//! # The write path
//! 1. `Append` (in `service.rs`) checks that this worker leads the shard at
//!    the caller's epoch, then hands the records to the shard's writer task
//!    through a channel and waits.
//! 2. The writer task takes every append waiting in its channel (up to
//!    [`GROUP_COMMIT_MAX_BYTES`]), sets aside those whose idempotency key
//!    the log already holds ([`Awaiting::sort_round`], `keys.rs`: they are answered
//!    with where they landed once that is committed, never written twice),
//!    appends the rest to the log as one batch with
//!    one fsync (still invisible to readers) while sending the same batch to
//!    the shard's replicas (`replication/`), which fsync it too.
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

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use freshet_log::{Appended, NewRecord, ShardLog};
use tokio::sync::{mpsc, oneshot};
use tokio_util::task::TaskTracker;
use tracing::Instrument as _;

use crate::error::WriteError;
use crate::load::LoadMeter;
use crate::metrics::RoleLabel;
use crate::replication::{begin_leading, LocalBatch, Replicator};
use crate::throttle::{ShardLimits, ShardThrottle};
pub use keys::{Answer, Awaiting, Leadership, PendingAppend, SortedRound, KEYS_NEEDED_FOR_MS};

mod keys;

/// A batch stops collecting appends once it holds this many bytes.
pub const GROUP_COMMIT_MAX_BYTES: usize = 16 * 1024 * 1024;

/// One caller's records waiting for the next group commit.
struct AppendJob {
    /// A keyed append's last record carries its mark (and key).
    records: Vec<NewRecord>,
    /// The leadership epoch the caller was authorized under: the job is
    /// written only while this worker still leads at exactly that epoch.
    epoch: u64,
    /// Sent again because the first attempt's outcome is unknown.
    resolving: bool,
    reply: oneshot::Sender<Result<AppendAnswer, WriteError>>,
    /// The Append call's span: the group commit that writes the job is
    /// its child (or, when it serves several calls, linked to it).
    span: tracing::Span,
}

/// Work for a shard's writer task, done in arrival order.
enum WriterJob {
    Append(AppendJob),
    /// Commit the whole log with the replicas and answer where it ends:
    /// the final size of a CLOSING shard (led at `epoch`).
    Seal {
        epoch: u64,
        reply: oneshot::Sender<Result<Sealed, WriteError>>,
    },
}

/// How an append ended at the writer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AppendAnswer {
    /// Committed: `records` records from `appended.first_offset` on. For
    /// an append whose key the log already held, where it landed the
    /// first time (nothing new was written).
    Landed { appended: Appended, records: u32 },
    /// A resolving append to a shard closed to writes, whose settled log
    /// does not hold its key: it never landed, and never will.
    Absent,
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
    /// Opens a shard segment over its recovered `log`, starting its writer
    /// task (tracked by `tasks`, ended when the shard is dropped).
    pub fn start(
        log: Arc<ShardLog>,
        sequence_base: u64,
        limits: ShardLimits,
        replicator: Replicator,
        tasks: &TaskTracker,
    ) -> OpenShard {
        let (writer, jobs) = mpsc::channel(1024);
        tasks.spawn(write_loop(log.clone(), replicator, jobs));
        OpenShard {
            log,
            sequence_base,
            throttle: ShardThrottle::new(limits),
            load: LoadMeter::default(),
            writer,
        }
    }

    /// Appends through the group-commit writer; resolves once committed.
    /// A keyed append (its last record marked) whose key the log already
    /// holds is not written again: it is answered with where it landed,
    /// once that is committed. `resolving`: see [`AppendJob::resolving`].
    pub async fn append(
        &self,
        records: Vec<NewRecord>,
        epoch: u64,
        resolving: bool,
    ) -> Result<AppendAnswer, WriteError> {
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(WriterJob::Append(AppendJob {
                records,
                epoch,
                resolving,
                reply,
                span: tracing::Span::current(),
            }))
            .await
            .map_err(|_| WriteError::Refused("shard writer stopped".to_owned()))?;
        answer.await.map_err(|_| {
            WriteError::LostLeadership("shard writer stopped before answering".to_owned())
        })?
    }

    /// Seals a CLOSING shard led at `epoch`: once every append queued
    /// before this call is resolved, commits the whole log with the
    /// replicas and answers where it ends. Nothing is written after it:
    /// `service.rs` refuses appends to a closing shard, and the writer
    /// refuses those queued before it closed (`write_round`).
    pub async fn seal(&self, epoch: u64) -> Result<Sealed, WriteError> {
        let stopped = || WriteError::Refused("shard writer stopped".to_owned());
        let (reply, answer) = oneshot::channel();
        self.writer
            .send(WriterJob::Seal { epoch, reply })
            .await
            .map_err(|_| stopped())?;
        answer.await.map_err(|_| stopped())?
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
/// How often a writer that never idles still catches its replicas up.
const AWAITING_CATCH_UP_INTERVAL: Duration = Duration::from_millis(200);
/// How long one idle check may spend on one replica.
const IDLE_CATCH_UP_DEADLINE: Duration = Duration::from_millis(500);

/// A batch the leader sent to its replicas but failed to write locally. Its
/// offsets are taken, under its epoch, by exactly these records.
#[derive(Debug, Clone)]
pub struct UnwrittenBatch {
    pub epoch: u64,
    pub first_offset: u64,
    pub arrival_ms: i64,
    pub records: Arc<Vec<NewRecord>>,
}

impl UnwrittenBatch {
    /// Writes the batch locally again (blocking: it fsyncs). Ok once it is
    /// on disk (it stays unacknowledged; a later commit makes it visible)
    /// or once this worker no longer writes at its epoch, when the offsets
    /// are not its to fill. Pure over the log: the simulator calls it too.
    pub fn write_again_now(&self, log: &ShardLog, leading: Option<u64>) -> Result<(), WriteError> {
        if leading != Some(self.epoch) || log.latest_epoch() != self.epoch {
            return Ok(());
        }
        log.append_at(
            self.epoch,
            self.first_offset,
            self.arrival_ms,
            &self.records,
        )?;
        Ok(())
    }

    /// [`UnwrittenBatch::write_again_now`] off the async threads.
    async fn write_again(
        &self,
        log: &Arc<ShardLog>,
        leading: Option<u64>,
    ) -> Result<(), WriteError> {
        let (log, batch) = (log.clone(), self.clone());
        tokio::task::spawn_blocking(move || batch.write_again_now(&log, leading))
            .await
            .map_err(|e| WriteError::task("append", e))?
    }
}

async fn write_loop(
    log: Arc<ShardLog>,
    mut replicator: Replicator,
    mut jobs: mpsc::Receiver<WriterJob>,
) {
    let mut unwritten: Option<UnwrittenBatch> = None;
    let mut awaiting: Awaiting<AppendJob> = Awaiting::default();
    let mut last_catch_up = std::time::Instant::now();
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
                // when the next write arrives. (A new leader's catch-up
                // also commits what it held from before: appends awaiting
                // that are answered then.)
                replicator.catch_up(&log, IDLE_CATCH_UP_DEADLINE).await;
                last_catch_up = std::time::Instant::now();
                answer_awaiting(&mut awaiting, &log, &replicator);
                continue;
            }
        };
        let first = match job {
            WriterJob::Append(job) => job,
            WriterJob::Seal { epoch, reply } => {
                let _ = reply.send(seal(&log, &mut replicator, &mut unwritten, epoch).await);
                answer_awaiting(&mut awaiting, &log, &replicator);
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
        let committed =
            write_round(&log, &mut replicator, &mut unwritten, &mut awaiting, batch).await;
        // Writes that keep failing (too few voters hold the log) never let
        // the writer idle: catch the replicas up now and then anyway, so a
        // learner can be filled and promoted and the shard write again.
        // So too while appends wait for records a new leader holds from
        // before but has not committed: under a stream of retries the
        // writer would never idle, and catch-up is what commits them.
        let since = last_catch_up.elapsed();
        let catch_up_due = (!committed && since >= IDLE_CATCH_UP_INTERVAL)
            || (awaiting.waits_for_commit(&log) && since >= AWAITING_CATCH_UP_INTERVAL);
        if catch_up_due {
            replicator.catch_up(&log, IDLE_CATCH_UP_DEADLINE).await;
            last_catch_up = std::time::Instant::now();
        }
        if let Some((epoch, reply)) = seal_after {
            let _ = reply.send(seal(&log, &mut replicator, &mut unwritten, epoch).await);
        }
        answer_awaiting(&mut awaiting, &log, &replicator);
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

impl PendingAppend for AppendJob {
    fn records(&self) -> &[NewRecord] {
        &self.records
    }

    fn epoch(&self) -> u64 {
        self.epoch
    }

    fn resolving(&self) -> bool {
        self.resolving
    }

    fn caller_gone(&self) -> bool {
        self.reply.is_closed()
    }
}

/// Sends each answered job its answer.
fn send_answers(answered: Vec<(AppendJob, Answer)>) {
    for (job, answer) in answered {
        let _ = job.reply.send(answer);
    }
}

/// Answers every waiting job whose answer is now known
/// ([`Awaiting::answer`]).
fn answer_awaiting(awaiting: &mut Awaiting<AppendJob>, log: &ShardLog, replicator: &Replicator) {
    if awaiting.is_empty() {
        return;
    }
    let replicas_hold = |end| replicator.enough_replicas_hold(end);
    let leadership = Leadership {
        epoch: replicator.leading_epoch(),
        open: replicator.is_open(),
        replicas_hold: &replicas_hold,
    };
    send_answers(awaiting.answer(log, &leadership));
}

/// Writes one group commit's worth of appends and answers each caller.
/// Whether the round committed (or had nothing to write).
async fn write_round(
    log: &Arc<ShardLog>,
    replicator: &mut Replicator,
    unwritten: &mut Option<UnwrittenBatch>,
    awaiting: &mut Awaiting<AppendJob>,
    batch: Vec<AppendJob>,
) -> bool {
    // Only jobs authorized under the epoch this worker leads now go on —
    // a job queued before a failover must not be written afterwards.
    let leading = replicator.leading_epoch();
    let (batch, stale): (Vec<AppendJob>, Vec<AppendJob>) = batch
        .into_iter()
        .partition(|job| Some(job.epoch) == leading);
    for job in stale {
        let _ = job.reply.send(Err(WriteError::Refused(format!(
            "not leader of the shard at epoch {} any more",
            job.epoch
        ))));
    }
    let Some(epoch) = leading.filter(|_| !batch.is_empty()) else {
        return true;
    };
    if let Some(pending) = unwritten.as_ref() {
        if let Err(error) = pending.write_again(log, leading).await {
            for job in batch {
                // The batch queued before these could not be written
                // again: nothing of these was written either (and a key
                // it holds is not found in the log yet).
                let _ = job.reply.send(Err(WriteError::Refused(error.to_string())));
            }
            return false;
        }
        *unwritten = None;
    }
    let sorted = awaiting.sort_round(log, replicator.is_open(), now_ms(), batch);
    send_answers(sorted.answered);
    let batch = sorted.to_write;
    if batch.is_empty() {
        return true;
    }
    let counts: Vec<usize> = batch.iter().map(|job| job.records.len()).collect();
    let total: usize = counts.iter().sum();
    // One round serves every job in it: a child of the first caller's
    // span, linked from the others'.
    let span = tracing::info_span!(
        parent: &batch[0].span,
        "group_commit",
        otel.name = "storage.group_commit",
        shard.epoch = epoch,
        records = total,
        appends = batch.len(),
    );
    for job in &batch[1..] {
        freshet_telemetry::link_to(&span, &job.span);
    }
    replicator
        .metrics()
        .group_commit_records
        .observe(total as f64);
    replicator
        .metrics()
        .group_commit_appends
        .observe(batch.len() as f64);
    let mut records = Vec::with_capacity(total);
    let mut replies = Vec::with_capacity(batch.len());
    for job in batch {
        records.extend(job.records);
        replies.push(job.reply);
    }
    match commit_batch(log, replicator, records, epoch)
        .instrument(span)
        .await
    {
        Ok(appended) => {
            let mut offset = appended.first_offset;
            for (reply, count) in replies.into_iter().zip(counts) {
                let _ = reply.send(Ok(AppendAnswer::Landed {
                    appended: Appended {
                        first_offset: offset,
                        arrival_ms: appended.arrival_ms,
                    },
                    records: u32::try_from(count).unwrap_or(u32::MAX),
                }));
                offset += count as u64;
            }
            // A shard under steady load is never idle: its voters move on
            // from here.
            replicator.report_replicas(log);
            true
        }
        Err(failure) => {
            tracing::warn!(error = %failure.error, "shard append failed");
            *unwritten = failure.unwritten;
            // Whatever the cause, the batch may be on some disks now.
            let error = match failure.error {
                WriteError::Refused(message) => WriteError::LostLeadership(message),
                error => error,
            };
            for reply in replies {
                let _ = reply.send(Err(error.clone()));
            }
            false
        }
    }
}

/// The writer's side of [`OpenShard::seal`].
async fn seal(
    log: &Arc<ShardLog>,
    replicator: &mut Replicator,
    unwritten: &mut Option<UnwrittenBatch>,
    epoch: u64,
) -> Result<Sealed, WriteError> {
    if replicator.leading_epoch() != Some(epoch) {
        return Err(WriteError::Refused(format!("not leader at epoch {epoch}")));
    }
    // Replicas may hold a batch the leader failed to write: the leader's
    // log must hold it too before its end can be the shard's end.
    if let Some(batch) = unwritten.as_ref() {
        batch.write_again(log, replicator.leading_epoch()).await?;
        *unwritten = None;
    }
    for _ in 0..SEAL_ROUNDS {
        replicator.catch_up(log, IDLE_CATCH_UP_DEADLINE).await;
        if let Some(sealed) = sealed_end(log, epoch, &|end| replicator.enough_replicas_hold(end)) {
            return Ok(sealed);
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(WriteError::Replication(
        "the shard's replicas did not confirm its whole log in time".to_owned(),
    ))
}

/// Where a closing shard's log ends, if it can be sealed there now: its
/// whole log committed here, written last at `epoch`, and held whole at
/// this epoch by enough replicas (`replicas_hold(end)`) that they alone
/// can serve the sealed segment. Pure: the simulator seals by it too.
///
/// Invariant: every record this shard acknowledged lies below the end
/// answered, and no future leader can commit beyond it — any quorum of
/// voters includes a copy holding exactly this log at this epoch, which
/// outranks every other in an election.
pub fn sealed_end(
    log: &ShardLog,
    epoch: u64,
    replicas_hold: &dyn Fn(u64) -> bool,
) -> Option<Sealed> {
    let end = log.next_offset();
    let settled =
        log.committed_offset() == end && log.latest_epoch() == epoch && replicas_hold(end);
    settled.then(|| Sealed {
        ending_offset: end,
        last_arrival_ms: log.last_arrival_ms(),
    })
}

/// Why a batch was not acknowledged.
struct BatchFailure {
    error: WriteError,
    /// Set when the local write failed after the batch went to replicas.
    unwritten: Option<UnwrittenBatch>,
}

impl From<WriteError> for BatchFailure {
    fn from(error: WriteError) -> BatchFailure {
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
    let write_started = std::time::Instant::now();
    let local = tokio::task::spawn_blocking(move || {
        for_write
            .0
            .append_at(epoch, first_offset, arrival_ms, &for_write.1)
    })
    .instrument(tracing::info_span!(
        "write_fsync",
        otel.name = "storage.write_fsync",
        first_offset,
        records = records.len(),
    ));
    let batch = LocalBatch {
        epoch,
        first_offset,
        arrival_ms,
        records: &records,
    };
    let (local, replicated) = tokio::join!(
        async {
            let local = local.await;
            (local, write_started.elapsed())
        },
        replicator.replicate(log, batch)
    );
    let (local, write_time) = local;
    replicator
        .metrics()
        .fsync_seconds
        .get_or_create(&RoleLabel { role: "leader" })
        .observe(write_time.as_secs_f64());
    let local = local
        .map_err(|e| WriteError::task("append", e))
        .and_then(|written| written.map_err(WriteError::from));
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
        return Err(WriteError::LostLeadership(
            "the leader lease expired before the batch could be committed".to_owned(),
        )
        .into());
    }
    if replicator.leading_epoch() != Some(epoch) {
        return Err(WriteError::LostLeadership(format!(
            "leadership moved on from epoch {epoch} before the batch could be committed"
        ))
        .into());
    }
    log.commit(appended.first_offset + records.len() as u64);
    Ok(appended)
}
