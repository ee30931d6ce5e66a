//! Restarting a lagging copy's log at its leader's first offset — Raft's
//! install-snapshot for a log whose "snapshot" is empty.
//!
//! A stream keeps no state below its oldest record: once retention has
//! trimmed a leader's log to start at `S`, the only thing a copy that ends
//! before `S` lacks, besides records from `S` on, is *where the log starts*
//! and the leader's epoch history. A replica added to a shard whose oldest
//! records have expired (or one that was down for longer than the
//! retention period) could otherwise never catch up: the leader no longer
//! holds the offsets it would send first.

use super::*;

impl ShardLog {
    /// A replica's side of a leader's `InstallSnapshot`: a log that ends
    /// before `start_offset` — the leader's trim horizon, so every record
    /// this copy holds has expired at the leader — drops all of it and
    /// starts again, empty, at `start_offset` with the leader's epoch
    /// history. A log that already reaches `start_offset` is left as it is
    /// (ordinary replication brings it up to date). Under the writer's
    /// lock, like [`ShardLog::replicate`], with the same epoch fence.
    ///
    /// Crash-safe by its order: the old segments go first, oldest first
    /// (what remains is always a contiguous log), then the new empty
    /// segment is created, then the history is stored. A crash in between
    /// leaves a shorter or empty log that the leader restarts again; the
    /// records dropped were expired at the leader, and never the only copy
    /// of anything unexpired.
    pub fn restart_at(
        &self,
        epoch: u64,
        leader_epochs: &EpochHistory,
        start_offset: u64,
    ) -> LogResult<Replicated> {
        let mut writer = self.lock_writer();
        writer.refuse_older_than_latest(epoch)?;
        if leader_epochs.latest_epoch() != epoch {
            return Err(LogError::BadEpochHistory(format!(
                "a leader at epoch {epoch} sent a history ending at epoch {}",
                leader_epochs.latest_epoch()
            )));
        }
        if writer.next_offset >= start_offset {
            return Ok(Replicated {
                accepted: false,
                next_offset: writer.next_offset,
            });
        }
        if writer.poisoned {
            return Err(LogError::Poisoned);
        }
        writer.appends.clear();
        let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
        view.segments.clear();
        // From here on a failure leaves no usable log in memory: poisoned
        // until the worker reopens it from disk.
        let restarted = self.replace_segments(&mut writer, start_offset);
        match restarted {
            Ok(segment) => {
                view.segments.push(Arc::new(segment));
                view.next_offset = start_offset;
                view.committed = start_offset;
            }
            Err(error) => {
                writer.poisoned = true;
                return Err(error);
            }
        }
        drop(view);
        self.commits.send_replace(start_offset);
        if let Err(error) = leader_epochs.store(&self.dir) {
            writer.poisoned = true;
            return Err(error);
        }
        self.set_epochs(&mut writer, leader_epochs.clone());
        Ok(Replicated {
            accepted: true,
            next_offset: start_offset,
        })
    }

    /// Removes every segment file in the log's directory (those retention
    /// is still removing too: a crash must never leave an old segment and
    /// the new one with a gap between), makes that durable, then creates
    /// the empty segment at `start_offset` and points the writer at it.
    fn replace_segments(&self, writer: &mut Writer, start_offset: u64) -> LogResult<Segment> {
        let listed = fs::read_dir(&self.dir).map_err(io_error("list log directory", &self.dir))?;
        for entry in listed {
            let path = entry
                .map_err(io_error("list log directory", &self.dir))?
                .path();
            if path.extension().is_some_and(|e| e == "log" || e == "index") {
                remove_if_present(&path, "remove a segment below the leader's horizon")?;
            }
        }
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error("fsync log directory", &self.dir))?;
        let segment = Segment::create(&self.dir, start_offset)?;
        let path = segment.path().to_owned();
        writer.active = OpenOptions::new()
            .append(true)
            .open(&path)
            .map_err(io_error("open restarted segment", &path))?;
        writer.active_path = path;
        writer.active_len = 0;
        writer.active_first_arrival_ms = None;
        // Arrival times keep rising: the leader's records from the horizon
        // on arrived after everything this copy held.
        writer.next_offset = start_offset;
        Ok(segment)
    }
}
