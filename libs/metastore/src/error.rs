//! What can go wrong talking to the metastore, as cases a caller can tell
//! apart: a guarded update that lost a race is a [`MetastoreError::Conflict`],
//! not just "internal".

use freshet_errors::ErrorCode;
use freshet_types::UnknownState;

/// A metastore call's failure.
#[derive(Debug, thiserror::Error)]
pub enum MetastoreError {
    /// A guarded update found its row changed since the caller read it (a
    /// failover, move or resharding step raced it): read again and decide
    /// again.
    #[error("conflict: {0}")]
    Conflict(String),
    /// The row the call names does not exist.
    #[error("not found: {0}")]
    NotFound(String),
    /// Postgres failed or could not be reached.
    #[error("{context}: {source}")]
    Db {
        context: String,
        #[source]
        source: sqlx::Error,
    },
    /// Applying the schema migrations failed.
    #[error("apply postgres migrations: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// A stored value that no code path writes (a state Freshet does not
    /// know, undecodable JSON).
    #[error("invalid stored value: {0}")]
    Corrupt(String),
}

/// A metastore call's result.
pub type Result<T> = std::result::Result<T, MetastoreError>;

impl MetastoreError {
    /// The code a service answers this failure with: a lost race stays
    /// recognisable (read again and retry), a missing row is not found,
    /// anything else is internal.
    pub fn code(&self) -> ErrorCode {
        match self {
            MetastoreError::Conflict(_) => ErrorCode::Conflict,
            MetastoreError::NotFound(_) => ErrorCode::ResourceNotFound,
            _ => ErrorCode::Internal,
        }
    }
}

impl From<sqlx::Error> for MetastoreError {
    fn from(source: sqlx::Error) -> MetastoreError {
        MetastoreError::Db {
            context: "read a row".to_owned(),
            source,
        }
    }
}

impl From<UnknownState> for MetastoreError {
    fn from(error: UnknownState) -> MetastoreError {
        MetastoreError::Corrupt(error.to_string())
    }
}

/// Names what a Postgres call was doing when it failed.
pub(crate) trait DbContext<T> {
    fn db(self, context: &str) -> Result<T>;
    fn db_with(self, context: impl FnOnce() -> String) -> Result<T>;
}

impl<T> DbContext<T> for std::result::Result<T, sqlx::Error> {
    fn db(self, context: &str) -> Result<T> {
        self.map_err(|source| MetastoreError::Db {
            context: context.to_owned(),
            source,
        })
    }

    fn db_with(self, context: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|source| MetastoreError::Db {
            context: context(),
            source,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_race_is_told_apart_from_a_failure() {
        let table = [
            (
                MetastoreError::Conflict("moved".into()),
                ErrorCode::Conflict,
            ),
            (
                MetastoreError::NotFound("shard".into()),
                ErrorCode::ResourceNotFound,
            ),
            (MetastoreError::Corrupt("state".into()), ErrorCode::Internal),
            (
                MetastoreError::from(sqlx::Error::PoolTimedOut),
                ErrorCode::Internal,
            ),
        ];
        for (error, code) in table {
            assert_eq!(error.code(), code, "{error}");
        }
    }
}
