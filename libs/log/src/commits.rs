//! The commit point: what readers may see. It moves only up (`commit`),
//! wakes whoever waits for it (`watch_commits`: a SubscribeToShard's
//! upstream), and is checkpointed to `commit-point` now and then
//! (`persist_commit_point`), never past the true one.

use std::fs::{self, File};
use std::io::Write as _;

use crate::{io_error, LogResult, ShardLog, COMMIT_POINT_FILE};

impl ShardLog {
    /// The end of the committed records.
    pub fn committed_offset(&self) -> u64 {
        self.view
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .committed
    }

    /// Makes records below `upto` visible to readers (clamped to what is durable).
    pub fn commit(&self, upto: u64) {
        let committed = {
            let mut view = self.view.write().unwrap_or_else(|p| p.into_inner());
            view.committed = view.committed.max(upto.min(view.next_offset));
            view.committed
        };
        self.commits.send_if_modified(|seen| {
            let moved = *seen < committed;
            *seen = (*seen).max(committed);
            moved
        });
    }

    /// The commit point as it moves: a reader waiting for new records
    /// (a SubscribeToShard's upstream) waits on it instead of polling.
    pub fn watch_commits(&self) -> tokio::sync::watch::Receiver<u64> {
        self.commits.subscribe()
    }

    /// Writes the commit point to disk if it moved since the last time.
    /// Returns whether it wrote.
    pub fn persist_commit_point(&self) -> LogResult<bool> {
        let mut persisted = self
            .persisted_commit
            .lock()
            .unwrap_or_else(|p| p.into_inner());
        let committed = self.committed_offset();
        if committed == *persisted {
            return Ok(false);
        }
        let path = self.dir.join(COMMIT_POINT_FILE);
        let temporary = self.dir.join(format!("{COMMIT_POINT_FILE}.new"));
        File::create(&temporary)
            .and_then(|mut file| {
                file.write_all(committed.to_string().as_bytes())?;
                file.sync_all()
            })
            .map_err(io_error("write", &temporary))?;
        fs::rename(&temporary, &path).map_err(io_error("replace", &path))?;
        File::open(&self.dir)
            .and_then(|d| d.sync_all())
            .map_err(io_error("fsync log directory", &self.dir))?;
        *persisted = committed;
        Ok(true)
    }
}
