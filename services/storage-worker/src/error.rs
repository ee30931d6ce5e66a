//! What goes wrong writing a shard, as cases the write path tells apart.

use freshet_errors::ErrorCode;

/// Why a shard's writer did not do what it was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum WriteError {
    /// Refused before anything was written: this worker no longer leads the
    /// shard open at the caller's epoch, or its writer stopped. The caller
    /// routes again and retries.
    #[error("{0}")]
    Refused(String),
    /// The log's disk failed, or the blocking task using it died.
    #[error("the shard's disk is failing: {0}")]
    Disk(String),
    /// Too few replicas confirmed the batch (or the shard has too few).
    #[error("{0}")]
    Replication(String),
    /// The lease or the leadership ended before the batch could be
    /// committed.
    #[error("{0}")]
    LostLeadership(String),
}

impl WriteError {
    /// The code an append failing with this error answers with: only a
    /// refusal is known to have written nothing.
    pub fn append_code(&self) -> ErrorCode {
        match self {
            WriteError::Refused(_) => ErrorCode::NotWritten,
            _ => ErrorCode::MaybeWritten,
        }
    }

    /// A blocking task that died (its panic or cancellation).
    pub fn task(what: &str, error: tokio::task::JoinError) -> WriteError {
        WriteError::Disk(format!("{what} task failed: {error}"))
    }
}

impl From<freshet_log::LogError> for WriteError {
    fn from(error: freshet_log::LogError) -> WriteError {
        match error {
            // Checked before anything is written.
            freshet_log::LogError::Rebuilding { .. } => WriteError::Refused(error.to_string()),
            error => WriteError::Disk(error.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_a_refusal_is_known_to_have_written_nothing() {
        let table = [
            (
                WriteError::Refused("stale epoch".into()),
                ErrorCode::NotWritten,
            ),
            (WriteError::Disk("EIO".into()), ErrorCode::MaybeWritten),
            (
                WriteError::Replication("1 of 2".into()),
                ErrorCode::MaybeWritten,
            ),
            (
                WriteError::LostLeadership("lease".into()),
                ErrorCode::MaybeWritten,
            ),
        ];
        for (error, code) in table {
            assert_eq!(error.append_code(), code, "{error:?}");
        }
    }
}
