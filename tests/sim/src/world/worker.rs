//! The storage workers' own lives: crashes and restarts, their copies of
//! the shard's segments, and the replica's side of replication
//! (`Replicate`, `InstallSnapshot`).

use super::*;

impl World {
    pub(super) fn crash(&mut self, w: usize) {
        self.outcome.crashes += 1;
        self.note(|| format!("w{w} crashes"));
        let worker = &mut self.workers[w];
        worker.up = false;
        worker.log = None;
        worker.view = None;
        worker.lease = None;
        worker.queue.clear();
        worker.round = None;
        worker.awaiting = Awaiting::default();
        worker.pending_seal = None;
        worker.unwritten = None;
        worker.replica_ends = ReplicaEnds::default();
        worker.tear_next_write = false;
        worker.registered = false;
        worker.incarnation += 1;
        // Now and then a worker stays down long enough that, where
        // records expire, its copy comes back behind the leader's trim
        // horizon.
        let back = if self.faults.retention && self.rng.chance(0.3) {
            self.rng.range(6_000, 12_000)
        } else {
            self.rng.range(300, 6_000)
        };
        self.at(back, Event::Restart(w));
    }

    pub(super) fn restart(&mut self, w: usize) {
        let worker = &mut self.workers[w];
        worker.up = true;
        worker.log = None;
        // The log is opened again when the worker learns it holds a copy;
        // a copy found on disk is recovered then (a torn tail cut). Its
        // next heartbeat registers it again.
        worker.registered = false;
    }

    /// Membership hears a worker register: a leader that restarted gets a
    /// new epoch (`republish_worker_shards`) — it has forgotten batches
    /// its replicas may hold.
    pub(super) fn register(&mut self, w: usize) {
        self.workers[w].registered = true;
        if self.row.leader_worker_id == self.workers[w].id {
            self.row.epoch += 1;
            self.version += 1;
            self.note(|| format!("w{w} registers again: epoch {}", self.row.epoch));
            self.broadcast();
        }
    }

    /// Opens (or creates) the worker's copy, if its view says it holds one.
    /// Where worker `w` keeps its copy of segment `index`.
    pub(super) fn segment_dir(&self, w: usize, index: u32) -> PathBuf {
        self.workers[w].dir.join(format!("segment-{index}"))
    }

    /// The directory of the segment `w`'s own entry names current.
    pub(super) fn current_dir(&self, w: usize) -> Option<PathBuf> {
        let index = self.workers[w].view.as_ref()?.row.segment_index;
        Some(self.segment_dir(w, index))
    }

    /// Opens (or creates) `w`'s copy of the segment its entry names, as
    /// the registry does: a new copy of a later segment starts empty at
    /// the segment's first offset.
    pub(super) fn open_log(&mut self, w: usize) -> Result<Option<Arc<ShardLog>>, Violation> {
        if let Some(log) = &self.workers[w].log {
            return Ok(Some(log.clone()));
        }
        let worker = &self.workers[w];
        let Some(view) = worker.view.as_ref().filter(|v| v.is_copy(&worker.id)) else {
            return Ok(None);
        };
        let (index, start) = (view.row.segment_index, view.row.segment_start_offset);
        let dir = self.segment_dir(w, index);
        let log = ShardLog::open_from(&dir, self.log_config.clone(), start)
            .map_err(|e| format!("worker {w} cannot open its copy: {e}"))?;
        let log = Arc::new(log);
        self.workers[w].log = Some(log.clone());
        Ok(Some(log))
    }

    /// The worker's wall clock (arrival times, the age of append keys).
    pub(super) fn wall_ms(&self, w: usize) -> i64 {
        1_700_000_000_000 + self.local_now(w) as i64 + self.workers[w].wall_offset_ms
    }

    pub(super) fn lease_ok(&self, w: usize) -> bool {
        let worker = &self.workers[w];
        match (&worker.lease, &worker.view) {
            (Some((until, version)), Some(view)) => {
                self.local_now(w) < *until && view.version >= *version
            }
            _ => false,
        }
    }

    pub(super) fn leading_epoch(&self, w: usize) -> Option<u64> {
        let worker = &self.workers[w];
        worker
            .view
            .as_ref()
            .filter(|v| v.row.leader_worker_id == worker.id)
            .map(|v| v.row.epoch)
    }

    /// Whether the worker's entry says the shard is open for writes.
    pub(super) fn is_open(&self, w: usize) -> bool {
        self.workers[w]
            .view
            .as_ref()
            .is_some_and(|v| v.row.state == ShardState::Open)
    }

    pub(super) fn worker_index(&self, id: &str) -> Option<usize> {
        self.workers.iter().position(|w| w.id == id)
    }

    pub(super) fn worker_receives(
        &mut self,
        w: usize,
        from: usize,
        msg: Msg,
    ) -> Result<(), Violation> {
        match msg {
            Msg::Entry(entry) => {
                let newer = self.workers[w]
                    .view
                    .as_ref()
                    .is_none_or(|v| entry.version > v.version);
                if newer {
                    let holds = entry.is_copy(&self.workers[w].id);
                    let moved = self.workers[w]
                        .view
                        .as_ref()
                        .is_some_and(|v| v.row.segment_index != entry.row.segment_index);
                    if moved {
                        self.leave_segment(w);
                    }
                    if entry.row.state != ShardState::Closing {
                        // The real seal gives up after its rounds; a
                        // reopened shard is not sealed at the old close.
                        self.workers[w].pending_seal = None;
                    }
                    self.workers[w].view = Some(*entry);
                    if !holds {
                        // An orphan: no entry names it (after the
                        // configuration without it was committed). A
                        // sealed segment's copy stays, read-only.
                        self.workers[w].log = None;
                        if let Some(dir) = self.current_dir(w) {
                            let _ = std::fs::remove_dir_all(dir);
                        }
                    }
                }
            }
            Msg::HeartbeatReply {
                sent_local,
                version,
            } => {
                self.workers[w].lease = Some((sent_local + LEASE_MS, version));
            }
            Msg::Replicate {
                epoch,
                history,
                first_offset,
                arrival_ms,
                records,
                committed,
                leader_end,
            } => self.replica_receives(
                w,
                from,
                &ReplicaWrite {
                    epoch,
                    leader_epochs: &history,
                    leader_end,
                    first_offset,
                    arrival_ms,
                    records: &records,
                    leader_committed: committed,
                },
            )?,
            Msg::ReplicateReply {
                epoch,
                ok,
                next_offset,
            } => self.leader_hears_replica(w, from, epoch, ok, next_offset)?,
            Msg::Append(job) => self.leader_receives(w, job)?,
            Msg::Seal { epoch, generation } => self.leader_asked_to_seal(w, epoch, generation)?,
            Msg::InstallSnapshot {
                epoch,
                history,
                start,
            } => self.replica_restarts(w, from, epoch, &history, start)?,
            _ => {}
        }
        Ok(())
    }

    /// The shard moved on to its next segment: the sealed one's writer
    /// stops (what it held is answered as the service's dropped writer
    /// answers) and its log closes.
    pub(super) fn leave_segment(&mut self, w: usize) {
        self.fail_round(w, Answer::Unknown);
        let queued = std::mem::take(&mut self.workers[w].queue);
        for job in queued {
            self.reply(w, &job, Answer::NotWritten);
        }
        let waiting = std::mem::take(&mut self.workers[w].awaiting);
        if let Some(log) = self.workers[w].log.clone() {
            let leadership = Leadership {
                epoch: None,
                open: false,
                replicas_hold: &|_| false,
            };
            let mut waiting = waiting;
            for (job, answer) in waiting.answer(&log, &leadership) {
                self.reply(w, &job, answer_of(&answer));
            }
        }
        let worker = &mut self.workers[w];
        worker.log = None;
        worker.pending_seal = None;
        worker.unwritten = None;
        worker.replica_ends = ReplicaEnds::default();
    }

    /// Tears the write just made to `w`'s active segment at a random byte
    /// and crashes `w`: what a crash between write and fsync leaves.
    pub(super) fn tear_and_crash(&mut self, w: usize, length_before: u64) {
        let dir = self.current_dir(w);
        if let Some(path) = dir.as_deref().and_then(last_segment) {
            if let Ok(meta) = std::fs::metadata(&path) {
                let after = meta.len();
                if after > length_before {
                    let keep = self.rng.range(length_before, after);
                    if let Ok(file) = std::fs::OpenOptions::new().write(true).open(&path) {
                        let _ = file.set_len(keep);
                    }
                }
            }
        }
        self.crash(w);
    }

    pub(super) fn active_len(&self, w: usize) -> u64 {
        self.current_dir(w)
            .as_deref()
            .and_then(last_segment)
            .and_then(|p| std::fs::metadata(p).ok())
            .map_or(0, |m| m.len())
    }

    /// A replica told to restart at its leader's trim horizon: the log's
    /// own `restart_at` (`service.rs`, `install_snapshot`).
    pub(super) fn replica_restarts(
        &mut self,
        w: usize,
        leader: usize,
        epoch: u64,
        history: &EpochHistory,
        start: u64,
    ) -> Result<(), Violation> {
        if !self.placed_replica_at(w, epoch) {
            return Ok(());
        }
        let Some(log) = self.open_log(w)? else {
            return Ok(());
        };
        match log.restart_at(epoch, history, start) {
            Ok(restarted) => {
                self.note(|| format!("w{w} restarts at {start} (epoch {epoch}): {restarted:?}"));
                if restarted.accepted {
                    self.outcome.snapshots += 1;
                }
                self.send(
                    w,
                    leader,
                    Msg::ReplicateReply {
                        epoch,
                        ok: true,
                        next_offset: restarted.next_offset,
                    },
                );
                Ok(())
            }
            Err(freshet_log::LogError::StaleEpoch { .. } | freshet_log::LogError::Io { .. }) => {
                Ok(())
            }
            Err(error) => Err(format!(
                "worker {w} cannot restart its log at {start}: {error}"
            )),
        }
    }

    /// As `authorize` for a replica's calls: the worker's own entry must
    /// name it a replica at exactly this epoch.
    fn placed_replica_at(&self, w: usize, epoch: u64) -> bool {
        let worker = &self.workers[w];
        worker
            .view
            .as_ref()
            .is_some_and(|v| v.row.epoch == epoch && v.row.replica_worker_ids.contains(&worker.id))
    }

    /// A replica hears its leader's `Replicate`: `service.rs`'s check of
    /// its own entry (modelled), then the worker's own `write_as_replica`.
    pub(super) fn replica_receives(
        &mut self,
        w: usize,
        leader: usize,
        write: &ReplicaWrite<'_>,
    ) -> Result<(), Violation> {
        let epoch = write.epoch;
        if !self.placed_replica_at(w, epoch) {
            return Ok(());
        }
        let Some(log) = self.open_log(w)? else {
            return Ok(());
        };
        let before = self.active_len(w);
        let tear = self.workers[w].tear_next_write && !write.records.is_empty();
        let result = write_as_replica(&log, write);
        if tear {
            self.tear_and_crash(w, before);
            return Ok(());
        }
        match result {
            Ok(wrote) => {
                let first_offset = write.first_offset;
                let count = write.records.len();
                self.note(|| {
                    format!("w{w} replicates {first_offset}+{count} at epoch {epoch}: {wrote:?}")
                });
                self.send(
                    w,
                    leader,
                    Msg::ReplicateReply {
                        epoch,
                        ok: true,
                        next_offset: wrote.replicated.next_offset,
                    },
                );
            }
            // An error status: the leader hears no answer.
            Err(freshet_log::LogError::StaleEpoch { .. } | freshet_log::LogError::Io { .. }) => {}
            Err(error) => {
                if matches!(
                    error,
                    freshet_log::LogError::TruncatesCommitted { .. }
                        | freshet_log::LogError::Diverged { .. }
                ) {
                    return Err(format!(
                        "worker {w} refused its leader's batch at epoch {epoch}: {error}"
                    ));
                }
                return Err(format!("worker {w}'s log failed: {error}"));
            }
        }
        Ok(())
    }
}
