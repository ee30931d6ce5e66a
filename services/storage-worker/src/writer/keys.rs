//! Append keys at the writer: which of a round's appends are written, and
//! when the others are answered. Pure over the shard's log and what its
//! replicator knows, so the deterministic simulator (`tests/sim`) runs this
//! very code; the writer task (`mod.rs`) sends the answers it returns.
//!
//! Invariant: an append whose key the log already holds is never written
//! again. It is answered with where it landed once that is committed
//! (committed records are never truncated), or "not known" if the log
//! changed under it; a key the log does not hold is answered "absent" only
//! once the log is settled and nothing can be written any more.

use freshet_log::{AppendKey, Appended, HeldAppend, NewRecord, ShardLog};

use super::AppendAnswer;
use crate::error::WriteError;

/// How far back a resolving append may ask about its key: well past the
/// frontend's resolve deadline (30 s) and one call's own.
pub const KEYS_NEEDED_FOR_MS: i64 = 120_000;

/// What the writer's answer to one append is.
pub type Answer = Result<AppendAnswer, WriteError>;

/// One append as the key logic sees it.
pub trait PendingAppend {
    /// The append's records; a keyed append's last record carries its mark.
    fn records(&self) -> &[NewRecord];
    /// The epoch the caller was authorized under.
    fn epoch(&self) -> u64;
    /// Sent again because the first attempt's outcome is unknown.
    fn resolving(&self) -> bool;
    /// The caller went away: nothing needs answering.
    fn caller_gone(&self) -> bool;

    /// The append's idempotency key, if it has one.
    fn key(&self) -> Option<AppendKey> {
        self.records()
            .last()
            .and_then(|r| r.ends_append)
            .map(|mark| mark.key)
    }
}

/// What the writer's replicator says about the shard at this moment.
pub struct Leadership<'a> {
    /// The epoch at which this worker leads the shard, if it does.
    pub epoch: Option<u64>,
    /// Whether the shard is open for writes (not closing or closed).
    pub open: bool,
    /// Whether enough replicas have answered the current epoch holding the
    /// log exactly to this end (a seal's condition).
    pub replicas_hold: &'a dyn Fn(u64) -> bool,
}

/// Appends answered once the log is far enough along, and what each waits
/// for.
pub struct Awaiting<J> {
    jobs: Vec<(J, WaitFor)>,
}

impl<J> Default for Awaiting<J> {
    fn default() -> Self {
        Awaiting { jobs: Vec::new() }
    }
}

enum WaitFor {
    /// The log held the job's key: answered once those records are
    /// committed.
    Held(HeldAppend),
    /// An earlier job of the same round carried the key: held once that
    /// one is written.
    SameRoundWrite,
    /// A resolving append to a shard closed to writes, its key not held:
    /// answered once the log is settled.
    Settled,
}

/// A round's appends, sorted by [`Awaiting::sort_round`].
pub struct SortedRound<J> {
    /// Written now, as one batch.
    pub to_write: Vec<J>,
    /// Answered already, without waiting.
    pub answered: Vec<(J, Answer)>,
}

impl<J: PendingAppend> Awaiting<J> {
    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.jobs.is_empty()
    }

    /// How many appends wait.
    pub fn len(&self) -> usize {
        self.jobs.len()
    }

    /// Sorts a round's jobs (all authorized at the epoch led now): those to
    /// write now are returned; the rest are answered or set aside here.
    /// - A keyed append whose key the log already holds is not written
    ///   again (its first attempt landed, here or under an earlier leader):
    ///   it waits for those records to be committed.
    /// - A key that two jobs of one round share (an attempt and its
    ///   resolving retry, both queued): the first is written, the second
    ///   waits for it.
    /// - A resolving append whose key the log may have forgotten (it
    ///   remembers a bounded number) is answered "not known": only while
    ///   the log remembers every append a resolving frontend could still
    ///   ask about (`now_ms` on this worker's wall clock) is "not found"
    ///   the same as "never landed".
    /// - On a shard closed to writes (once a split or merge starts closing
    ///   it, a seal may come next, and nothing may land after the seal),
    ///   the rest are refused — except resolving appends, which wait for
    ///   the log to settle and learn that their key is absent.
    pub fn sort_round(
        &mut self,
        log: &ShardLog,
        open: bool,
        now_ms: i64,
        batch: Vec<J>,
    ) -> SortedRound<J> {
        let mut to_write: Vec<J> = Vec::with_capacity(batch.len());
        let mut answered = Vec::new();
        let mut keys = std::collections::HashSet::new();
        let mut repeats = Vec::new();
        for job in batch {
            if let Some(key) = job.key() {
                if let Some(held) = log.find_append(&key) {
                    self.jobs.push((job, WaitFor::Held(held)));
                    continue;
                }
                if !keys.insert(key) {
                    repeats.push(job);
                    continue;
                }
                if job.resolving() && !log.remembers_appends_since(now_ms - KEYS_NEEDED_FOR_MS) {
                    answered.push((
                        job,
                        Err(WriteError::LostLeadership(
                            "not known whether the append landed: the shard no longer remembers every recent append key".to_owned(),
                        )),
                    ));
                    continue;
                }
            }
            if open {
                to_write.push(job);
            } else if job.resolving() {
                self.jobs.push((job, WaitFor::Settled));
            } else {
                let refusal = WriteError::Refused(format!(
                    "not leader of an open shard at epoch {} any more",
                    job.epoch()
                ));
                answered.push((job, Err(refusal)));
            }
        }
        for job in repeats {
            self.jobs.push((job, WaitFor::SameRoundWrite));
        }
        SortedRound { to_write, answered }
    }

    /// Whether a job waits for records the log holds but has not committed.
    pub fn waits_for_commit(&self, log: &ShardLog) -> bool {
        let committed = log.committed_offset();
        self.jobs.iter().any(|(_, wait)| match wait {
            WaitFor::Held(held) => held.end_offset() > committed,
            WaitFor::SameRoundWrite | WaitFor::Settled => false,
        })
    }

    /// Takes every job whose answer is now known, with its answer; drops
    /// those whose caller went away.
    ///
    /// Held records are answered once committed: committed records are
    /// never truncated, so they are where the answer says, for good.
    /// A missing key is answered [`AppendAnswer::Absent`] only once the
    /// log is settled at this leader's epoch — its whole log committed and
    /// held at this epoch by enough replicas, as a seal needs. Before that
    /// a copy holding an older epoch's tail could still be elected and
    /// commit it; after it, every future leader continues this log, and
    /// nothing is written to a closing shard.
    pub fn answer(&mut self, log: &ShardLog, leadership: &Leadership<'_>) -> Vec<(J, Answer)> {
        let mut answered = Vec::new();
        if self.jobs.is_empty() {
            return answered;
        }
        let committed = log.committed_offset();
        let end = log.next_offset();
        // A closing shard may be reopened (a move abandoned): then nothing
        // is settled, and the key may yet be written.
        let settled = !leadership.open && committed == end && (leadership.replicas_hold)(end);
        let mut waiting = Vec::new();
        for (job, wait) in self.jobs.drain(..) {
            if job.caller_gone() {
                continue;
            }
            if leadership.epoch != Some(job.epoch()) {
                let lost = lost_before_commit(job.epoch());
                answered.push((job, Err(lost)));
                continue;
            }
            // Looked up again each time: while this worker leads at the
            // job's epoch its log is never truncated, so a held append
            // stays where it was found.
            let held = job.key().and_then(|key| log.find_append(&key));
            let wait = match (wait, held) {
                (WaitFor::Held(before), Some(now)) if before == now => WaitFor::Held(now),
                (WaitFor::SameRoundWrite, Some(now)) => WaitFor::Held(now),
                (WaitFor::Settled, None) if !leadership.open => WaitFor::Settled,
                // The same round's write of the key failed, or the log
                // changed under the job: its outcome is not known here.
                _ => {
                    let lost = lost_before_commit(job.epoch());
                    answered.push((job, Err(lost)));
                    continue;
                }
            };
            let answer = match &wait {
                WaitFor::Held(held) if held.end_offset() <= committed => {
                    Some(AppendAnswer::Landed {
                        appended: Appended {
                            first_offset: held.first_offset,
                            arrival_ms: held.arrival_ms,
                        },
                        records: held.records,
                    })
                }
                WaitFor::Settled if settled => Some(AppendAnswer::Absent),
                _ => None,
            };
            match answer {
                Some(answer) => answered.push((job, Ok(answer))),
                None => waiting.push((job, wait)),
            }
        }
        self.jobs = waiting;
        answered
    }
}

/// The answer to an append whose outcome this leader cannot know.
pub fn lost_before_commit(epoch: u64) -> WriteError {
    WriteError::LostLeadership(format!(
        "not known whether the append landed: leadership moved on from epoch {epoch}, or its first write failed"
    ))
}
