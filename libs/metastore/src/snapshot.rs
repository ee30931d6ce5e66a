//! A snapshot of the change log's state: every live shard entry and every
//! consumer, current as of one version — what a subscriber that is new or
//! too far behind starts from.

use sqlx::Row;

use crate::consumers::{all_consumers, ConsumerRow};
use crate::error::{DbContext as _, Result};
use crate::MetaStore;

/// Everything live as of one change-log version.
#[derive(Debug, Clone, Default)]
pub struct Snapshot {
    /// Every live shard entry, encoded.
    pub entries: Vec<Vec<u8>>,
    /// Every consumer.
    pub consumers: Vec<ConsumerRow>,
    /// The change-log head they are current as of.
    pub version: i64,
}

impl MetaStore {
    /// Every live entry and consumer and the version they are current as
    /// of, read in one repeatable-read transaction so they agree.
    pub async fn snapshot(&self) -> Result<Snapshot> {
        let mut transaction = self.pool.begin().await.db("begin snapshot")?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *transaction)
            .await
            .db("set snapshot isolation")?;
        let head: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM shard_map_changes")
            .fetch_one(&mut *transaction)
            .await
            .db("read change-log head")?
            .try_get("v")?;
        let entries =
            sqlx::query("SELECT entry FROM shard_map_entries ORDER BY stream_uid, shard_id")
                .fetch_all(&mut *transaction)
                .await
                .db("read shard map")?
                .iter()
                .map(|row| row.try_get("entry"))
                .collect::<sqlx::Result<Vec<Vec<u8>>>>()?;
        let consumers = all_consumers(&mut transaction).await?;
        transaction.commit().await.db("end snapshot")?;
        Ok(Snapshot {
            entries,
            consumers,
            version: head,
        })
    }
}
