//! A leader's side: appends queued and written in group-commit rounds
//! (the worker's own key logic and `sealed_end`), batches replicated and
//! committed once a quorum holds them, catch-up, seals, and reports to
//! membership.

use super::*;

impl World {
    pub(super) fn leader_receives(&mut self, w: usize, job: Job) -> Result<(), Violation> {
        // As `authorize`: only a resolving append may reach a shard that is
        // closing or closed (its writer answers from the log).
        let closed_to_it = !self.is_open(w) && !job.resolving;
        if self.leading_epoch(w) != Some(job.epoch) || !self.lease_ok(w) || closed_to_it {
            self.send(
                w,
                FRONTEND,
                Msg::AppendReply {
                    call: job.call,
                    attempt: job.attempt,
                    answer: Answer::NotWritten,
                },
            );
            return Ok(());
        }
        self.workers[w].queue.push(job);
        self.start_round(w)
    }

    /// The writer's round (`writer.rs`, `write_round`): held keys wait for
    /// their commit, the rest are written as one batch and replicated.
    pub(super) fn start_round(&mut self, w: usize) -> Result<(), Violation> {
        if self.workers[w].round.is_some() || self.workers[w].queue.is_empty() {
            return Ok(());
        }
        let Some(epoch) = self.leading_epoch(w) else {
            let jobs = std::mem::take(&mut self.workers[w].queue);
            for job in jobs {
                self.reply(w, &job, Answer::NotWritten);
            }
            return Ok(());
        };
        let Some(log) = self.open_log(w)? else {
            return Ok(());
        };
        let jobs = std::mem::take(&mut self.workers[w].queue);
        let (current, stale): (Vec<Job>, Vec<Job>) =
            jobs.into_iter().partition(|job| job.epoch == epoch);
        for job in stale {
            self.reply(w, &job, Answer::NotWritten);
        }
        if current.is_empty() {
            return Ok(());
        }
        if !self.write_unwritten_again(w)? {
            // Nothing of these was written (`write_round`): refused.
            for job in current {
                self.reply(w, &job, Answer::NotWritten);
            }
            return Ok(());
        }
        // The worker's own sorting: held keys wait for their commit, a key
        // twice in one round is written once.
        let now_ms = self.wall_ms(w);
        let open = self.is_open(w);
        let sorted = self.workers[w]
            .awaiting
            .sort_round(&log, open, now_ms, current);
        for (job, answer) in sorted.answered {
            self.reply(w, &job, answer_of(&answer));
        }
        let to_write = sorted.to_write;
        if to_write.is_empty() {
            self.answer_awaiting(w, &log);
            return Ok(());
        }
        if let Err(error) = log.begin_leading(epoch) {
            for job in to_write {
                self.reply(w, &job, Answer::NotWritten);
            }
            if matches!(error, freshet_log::LogError::StaleEpoch { .. }) {
                return Ok(());
            }
            return Err(format!("worker {w} cannot lead: {error}"));
        }
        let records: Vec<NewRecord> = to_write.iter().flat_map(|j| j.records.clone()).collect();
        let (first_offset, arrival_ms) = log.next_position(self.wall_ms(w));
        let before = self.active_len(w);
        let tear = self.workers[w].tear_next_write;
        let written = log.append_at(epoch, first_offset, arrival_ms, &records);
        if tear {
            self.note(|| format!("w{w} tears its write at {first_offset} (epoch {epoch})"));
            // Dies mid-write: the batch may be on replicas but never was
            // answered here; the frontend learns nothing.
            self.send_replicate(w, &log, epoch, first_offset, arrival_ms, records);
            self.tear_and_crash(w, before);
            return Ok(());
        }
        if let Err(error) = written {
            if !matches!(error, freshet_log::LogError::Io { .. }) {
                return Err(format!("worker {w}'s write failed: {error}"));
            }
            // The fsync failed after the batch went to the replicas too
            // (the service sends it alongside its own write): the leader
            // must fill those offsets with exactly these records.
            self.note(|| format!("w{w}'s write at {first_offset} fails: {error}"));
            self.send_replicate(w, &log, epoch, first_offset, arrival_ms, records.clone());
            if !self.holes.forget_unwritten {
                self.workers[w].unwritten = Some(UnwrittenBatch {
                    epoch,
                    first_offset,
                    arrival_ms,
                    records: Arc::new(records),
                });
            }
            // A disk error: the outcome is unknown to the callers.
            for job in to_write {
                self.reply(w, &job, Answer::Unknown);
            }
            return Ok(());
        }
        self.note(|| {
            format!(
                "w{w} writes calls {:?} at {first_offset} (epoch {epoch})",
                to_write.iter().map(|j| j.call).collect::<Vec<_>>()
            )
        });
        let mut jobs = Vec::new();
        let mut offset = first_offset;
        for job in to_write {
            let count = job.records.len() as u64;
            jobs.push((job, offset));
            offset += count;
        }
        let end = offset;
        self.workers[w].round = Some(Round {
            epoch,
            end,
            jobs,
            deadline: self.now + ROUND_DEADLINE_MS,
        });
        self.send_replicate(w, &log, epoch, first_offset, arrival_ms, records);
        self.try_commit(w)
    }

    pub(super) fn send_replicate(
        &mut self,
        w: usize,
        log: &ShardLog,
        epoch: u64,
        first_offset: u64,
        arrival_ms: i64,
        records: Vec<NewRecord>,
    ) {
        let Some(view) = self.workers[w].view.clone() else {
            return;
        };
        // As `Replicator::replicate`: the ends are of the entry's epoch and
        // placement as the batch goes out.
        self.workers[w]
            .replica_ends
            .follow(view.row.epoch, &view.row.replica_worker_ids);
        let history = log.epoch_history();
        let committed = log.committed_offset();
        let leader_end = first_offset + records.len() as u64;
        for replica in &view.row.replica_worker_ids {
            if let Some(r) = self.worker_index(replica) {
                self.send(
                    w,
                    r,
                    Msg::Replicate {
                        epoch,
                        history: history.clone(),
                        first_offset,
                        arrival_ms,
                        records: records.clone(),
                        committed,
                        leader_end,
                    },
                );
            }
        }
    }

    pub(super) fn leader_hears_replica(
        &mut self,
        w: usize,
        from: usize,
        epoch: u64,
        ok: bool,
        next_offset: u64,
    ) -> Result<(), Violation> {
        if !ok || self.leading_epoch(w) != Some(epoch) {
            return Ok(());
        }
        let Some(log) = self.open_log(w)? else {
            return Ok(());
        };
        let replica = self.workers[from].id.clone();
        self.workers[w]
            .replica_ends
            .heard(&replica, Some(next_offset));
        if next_offset < log.next_offset() {
            self.send_missing(w, from, &log, epoch, next_offset);
        }
        self.try_commit(w)?;
        self.try_seal(w)
    }

    /// Sends replica `r` the next run of records it misses from `from`,
    /// as the worker's own `next_run` reads it (`catch_up.rs`).
    pub(super) fn send_missing(
        &mut self,
        w: usize,
        r: usize,
        log: &ShardLog,
        epoch: u64,
        from: u64,
    ) {
        // `catch_up_step`: below the leader's trim horizon, the replica is
        // restarted there.
        let horizon = log.trim_horizon();
        if from < horizon {
            self.send(
                w,
                r,
                Msg::InstallSnapshot {
                    epoch,
                    history: log.epoch_history(),
                    start: horizon,
                },
            );
            return;
        }
        let until = log.next_offset();
        let Ok(run) = next_run(log, from, until) else {
            return;
        };
        self.send(
            w,
            r,
            Msg::Replicate {
                epoch,
                history: log.epoch_history(),
                first_offset: run.first_offset,
                arrival_ms: run.arrival_ms,
                records: run.records,
                committed: log.committed_offset(),
                leader_end: until,
            },
        );
    }

    /// Whether the replicas that answered this epoch at `end` or beyond,
    /// with the leader, may acknowledge (`AckRule`).
    pub(super) fn quorum_holds(&self, w: usize, end: u64) -> bool {
        self.replicas_hold(w, |held| held >= end)
    }

    /// `Replicator::enough_replicas_hold`: whether a quorum holds the log
    /// exactly to `end`, at this epoch.
    pub(super) fn enough_replicas_hold(&self, w: usize, end: u64) -> bool {
        self.replicas_hold(w, |held| held == end)
    }

    pub(super) fn replicas_hold(&self, w: usize, holds: impl Fn(u64) -> bool) -> bool {
        let worker = &self.workers[w];
        let Some(view) = &worker.view else {
            return false;
        };
        worker.replica_ends.quorum(
            ACK_RULE,
            &view.row.voters,
            &worker.id,
            view.row.epoch,
            holds,
        )
    }

    pub(super) fn try_commit(&mut self, w: usize) -> Result<(), Violation> {
        let Some(round) = &self.workers[w].round else {
            return Ok(());
        };
        let (epoch, end) = (round.epoch, round.end);
        if self.leading_epoch(w) != Some(epoch) {
            self.fail_round(w, Answer::Unknown);
            return Ok(());
        }
        if !self.quorum_holds(w, end) || !self.lease_ok(w) {
            return Ok(());
        }
        let Some(log) = self.open_log(w)? else {
            return Ok(());
        };
        self.commit(w, &log, epoch, end)?;
        if let Some(round) = self.workers[w].round.take() {
            for (job, first) in round.jobs {
                self.reply(w, &job, Answer::Landed(first));
            }
        }
        self.answer_awaiting(w, &log);
        self.start_round(w)
    }

    pub(super) fn commit(
        &mut self,
        w: usize,
        log: &ShardLog,
        epoch: u64,
        end: u64,
    ) -> Result<(), Violation> {
        let before = log.committed_offset();
        log.commit(end);
        let after = log.committed_offset();
        self.note(|| format!("w{w} commits {before}..{after} (epoch {epoch})"));
        if after > before {
            let segment = self.workers[w]
                .view
                .as_ref()
                .map_or(0, |v| v.row.segment_index);
            self.checker
                .committed(w, segment, epoch, log, before, after)?;
        }
        Ok(())
    }

    pub(super) fn fail_round(&mut self, w: usize, answer: Answer) {
        if let Some(round) = self.workers[w].round.take() {
            for (job, _) in round.jobs {
                self.reply(w, &job, answer.clone());
            }
        }
        // As the writer after every round: a job that waited for this
        // round's write of its key now finds it held (or learns nothing).
        if let Some(log) = self.workers[w].log.clone() {
            self.answer_awaiting(w, &log);
        }
    }

    pub(super) fn expire_round(&mut self, w: usize) {
        if self.workers[w]
            .round
            .as_ref()
            .is_some_and(|r| r.deadline <= self.now)
        {
            self.fail_round(w, Answer::Unknown);
        }
    }

    /// Writes the batch whose fsync failed again (the worker's own
    /// `UnwrittenBatch::write_again_now`); whether nothing is left unwritten.
    pub(super) fn write_unwritten_again(&mut self, w: usize) -> Result<bool, Violation> {
        let Some(batch) = self.workers[w].unwritten.clone() else {
            return Ok(true);
        };
        let Some(log) = self.open_log(w)? else {
            return Ok(false);
        };
        match batch.write_again_now(&log, self.leading_epoch(w)) {
            Ok(()) => {
                self.note(|| {
                    format!(
                        "w{w} writes its unwritten batch at {} again",
                        batch.first_offset
                    )
                });
                self.workers[w].unwritten = None;
                Ok(true)
            }
            Err(_) => Ok(false),
        }
    }

    /// The control plane asks this worker to seal the closing shard:
    /// `authorize` (leading at that epoch, its lease held, its entry
    /// closing), then the writer's seal — catch-up rounds until the log is
    /// settled (`writer/mod.rs`, `seal`).
    pub(super) fn leader_asked_to_seal(
        &mut self,
        w: usize,
        epoch: u64,
        generation: u64,
    ) -> Result<(), Violation> {
        let closing = self.workers[w]
            .view
            .as_ref()
            .is_some_and(|v| v.row.state == ShardState::Closing);
        if self.leading_epoch(w) != Some(epoch) || !self.lease_ok(w) || !closing {
            return Ok(());
        }
        self.workers[w].pending_seal = Some((epoch, generation));
        self.catch_up(w)?;
        self.try_seal(w)
    }

    /// Answers a pending seal once the worker's own `sealed_end` says the
    /// log is settled. Behind a round in flight, as the seal waits in the
    /// writer's queue behind the appends before it.
    pub(super) fn try_seal(&mut self, w: usize) -> Result<(), Violation> {
        let Some((epoch, generation)) = self.workers[w].pending_seal else {
            return Ok(());
        };
        if self.leading_epoch(w) != Some(epoch) {
            self.workers[w].pending_seal = None;
            return Ok(());
        }
        if self.workers[w].round.is_some() || !self.write_unwritten_again(w)? {
            return Ok(());
        }
        let Some(log) = self.open_log(w)? else {
            return Ok(());
        };
        let sealed = sealed_end(&log, epoch, &|end| self.enough_replicas_hold(w, end));
        if let Some(sealed) = sealed {
            self.workers[w].pending_seal = None;
            self.note(|| format!("w{w} seals at {} (epoch {epoch})", sealed.ending_offset));
            self.send(
                w,
                MEMBERSHIP,
                Msg::Sealed {
                    epoch,
                    generation,
                    end: sealed.ending_offset,
                },
            );
        }
        Ok(())
    }

    /// The worker's own `Awaiting::answer` (`writer/keys.rs`): held keys
    /// answered once committed, the rest once their outcome is known.
    pub(super) fn answer_awaiting(&mut self, w: usize, log: &ShardLog) {
        let mut awaiting = std::mem::take(&mut self.workers[w].awaiting);
        let answered = {
            let replicas_hold = |end| self.enough_replicas_hold(w, end);
            let leadership = Leadership {
                epoch: self.leading_epoch(w),
                open: self.is_open(w),
                replicas_hold: &replicas_hold,
            };
            awaiting.answer(log, &leadership)
        };
        self.workers[w].awaiting = awaiting;
        for (job, answer) in answered {
            self.reply(w, &job, answer_of(&answer));
        }
    }

    /// The idle leader's round (`catch_up.rs`): probes replicas not known
    /// to be at its end, commits what a quorum at this epoch holds,
    /// reports its replicas to membership.
    pub(super) fn catch_up(&mut self, w: usize) -> Result<(), Violation> {
        let Some(epoch) = self.leading_epoch(w) else {
            return Ok(());
        };
        if !self.lease_ok(w) {
            return Ok(());
        }
        let Some(log) = self.open_log(w)? else {
            return Ok(());
        };
        if log.begin_leading(epoch).is_err() {
            return Ok(());
        }
        let target = log.next_offset();
        let view = self.workers[w].view.clone().map(|v| v.row);
        let Some(row) = view else {
            return Ok(());
        };
        self.workers[w]
            .replica_ends
            .follow(epoch, &row.replica_worker_ids);
        for replica in &row.replica_worker_ids {
            let known = self.workers[w].replica_ends.get(replica);
            if known == Some(target) {
                continue;
            }
            if let Some(r) = self.worker_index(replica) {
                match known {
                    Some(end) if end < target => self.send_missing(w, r, &log, epoch, end),
                    _ => self.send(
                        w,
                        r,
                        Msg::Replicate {
                            epoch,
                            history: log.epoch_history(),
                            first_offset: target,
                            arrival_ms: 0,
                            records: Vec::new(),
                            committed: log.committed_offset(),
                            leader_end: target,
                        },
                    ),
                }
            }
        }
        if log.committed_offset() < target && self.enough_replicas_hold(w, target) {
            self.commit(w, &log, epoch, target)?;
        }
        self.answer_awaiting(w, &log);
        self.report(w, &log, &row);
        Ok(())
    }

    /// `reports.rs`: which copies hold the leader's committed log at this
    /// epoch, for membership to move the voters on.
    pub(super) fn report(&mut self, w: usize, log: &ShardLog, row: &ShardRow) {
        let has_learners = !row.learners().is_empty();
        if !row.voters.is_joint() && !has_learners {
            return;
        }
        // The worker's own `copies_holding_log` (`reports.rs`).
        let Some(holding) = copies_holding_log(
            log,
            &self.workers[w].replica_ends,
            &self.workers[w].id,
            row.epoch,
            &row.replica_worker_ids,
        ) else {
            return;
        };
        self.note(|| format!("w{w} reports {holding:?} holding its log"));
        self.send(
            w,
            MEMBERSHIP,
            Msg::Report {
                epoch: row.epoch,
                voters: row.voters.clone(),
                holding,
            },
        );
    }

    pub(super) fn persist(&mut self, w: usize) {
        if let Some(log) = &self.workers[w].log {
            let _ = log.persist_commit_point();
        }
    }

    pub(super) fn reply(&mut self, w: usize, job: &Job, answer: Answer) {
        let (call, attempt) = (job.call, job.attempt);
        self.send(
            w,
            FRONTEND,
            Msg::AppendReply {
                call,
                attempt,
                answer,
            },
        );
    }
}
