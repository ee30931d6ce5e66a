//! The log's errors: I/O failures carry what was being done and where.

use std::io;
use std::path::{Path, PathBuf};

/// Errors from the log; I/O errors carry what was being done.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("failed to {action} {path}: {source}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("segment {path} is corrupt at byte {position}: {reason}")]
    Corrupt {
        path: PathBuf,
        position: u64,
        reason: String,
    },
    #[error("record of {0} bytes with a partition key of {1} bytes cannot be framed")]
    RecordTooLarge(usize, usize),
    #[error("the log is unusable after an earlier write failure that could not be rolled back")]
    Poisoned,
    #[error("a replicated batch starts at offset {offered}, but this log continues at {expected}")]
    OffsetMismatch { offered: u64, expected: u64 },
    #[error("cannot truncate to offset {offset}: records up to {committed} are committed")]
    TruncatesCommitted { offset: u64, committed: u64 },
    #[error("a write at epoch {offered} is refused: this copy is at epoch {current}")]
    StaleEpoch { offered: u64, current: u64 },
    #[error("a leader's epoch history is not in order: {0}")]
    BadEpochHistory(String),
    /// A leader's batch disagrees with what this copy holds from the same
    /// epoch: a bug, or a copy whose disk was replaced or damaged. Nothing
    /// is written, and the batch is not acknowledged.
    #[error("this copy and its leader disagree at offset {offset}: {reason}")]
    Diverged { offset: u64, reason: String },
    /// Recovery found the log ending below the commit point it had saved:
    /// committed records are gone (the copy must be rebuilt, see
    /// `rebuild.rs`).
    #[error("the log ends at offset {end}, below its saved commit point {committed}: committed records were lost on disk")]
    LostCommitted { committed: u64, end: u64 },
    /// This copy is rebuilt after damage and may not lead until it holds
    /// what it once held.
    #[error(
        "this copy is being rebuilt (it ends at {end} and must reach {needed_end}): it cannot lead"
    )]
    Rebuilding { end: u64, needed_end: u64 },
}

pub type LogResult<T> = Result<T, LogError>;

pub(crate) fn io_error<'a>(
    action: &'static str,
    path: &'a Path,
) -> impl FnOnce(io::Error) -> LogError + 'a {
    move |source| LogError::Io {
        action,
        path: path.to_owned(),
        source,
    }
}
