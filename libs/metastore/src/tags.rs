//! Tags on streams and consumers, by resource ARN within a stream
//! incarnation. They go with the stream (`ON DELETE CASCADE`); a
//! consumer's go when its deregistration removes it (a stream's deletion
//! takes its consumers' with the stream's row).
//!
//! Invariant: a resource never holds more than [`TAGS_PER_RESOURCE`]
//! tags. Every change to a stream's tags (and its consumers') runs under
//! a lock on the stream's row, so concurrent additions cannot overshoot
//! together, and a removal cannot interleave with them. Keys are listed
//! in byte order (`COLLATE "C"`), the order paging compares them in.

use sqlx::{Postgres, Row, Transaction};

use crate::changes::ChangeBatch;
use crate::error::{DbContext as _, Result};
use crate::MetaStore;

/// The most tags one stream or consumer may have (Kinesis's limit).
pub const TAGS_PER_RESOURCE: usize = 50;

/// What adding tags did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagOutcome {
    Tagged,
    /// The resource would hold more than [`TAGS_PER_RESOURCE`] tags:
    /// nothing changed.
    TooMany,
    /// The stream, or the consumer, is gone (deleted meanwhile).
    NotFound,
}

/// Locks the stream's row against other tag changes (not against rows
/// that merely reference it); false if the stream is gone.
async fn lock_stream(
    transaction: &mut Transaction<'static, Postgres>,
    stream_uid: i64,
) -> Result<bool> {
    let locked = sqlx::query("SELECT 1 FROM streams WHERE stream_uid = $1 FOR NO KEY UPDATE")
        .bind(stream_uid)
        .fetch_optional(&mut **transaction)
        .await
        .db("lock the stream's tags")?;
    Ok(locked.is_some())
}

/// Adds (or overwrites) `tags` on `resource_arn`, under a lock on the
/// stream's row.
pub(crate) async fn add_tags(
    transaction: &mut Transaction<'static, Postgres>,
    stream_uid: i64,
    resource_arn: &str,
    tags: &[(String, String)],
) -> Result<TagOutcome> {
    if !lock_stream(transaction, stream_uid).await? {
        return Ok(TagOutcome::NotFound);
    }
    // A consumer's tags only while it is registered (its removal takes
    // this lock too).
    let consumer_gone = resource_arn.contains("/consumer/")
        && sqlx::query(
            "SELECT 1 FROM stream_consumers WHERE stream_uid = $1 AND consumer_arn = $2",
        )
        .bind(stream_uid)
        .bind(resource_arn)
        .fetch_optional(&mut **transaction)
        .await
        .db("find the consumer")?
        .is_none();
    if consumer_gone {
        return Ok(TagOutcome::NotFound);
    }
    let keys: Vec<&str> = tags.iter().map(|(key, _)| key.as_str()).collect();
    let after: i64 = sqlx::query(
        "SELECT count(*) AS n FROM ( \
           SELECT tag_key FROM resource_tags WHERE stream_uid = $1 AND resource_arn = $2 \
           UNION SELECT unnest($3::text[]) \
         ) AS keys",
    )
    .bind(stream_uid)
    .bind(resource_arn)
    .bind(&keys)
    .fetch_one(&mut **transaction)
    .await
    .db("count tags")?
    .try_get("n")?;
    if usize::try_from(after).unwrap_or(usize::MAX) > TAGS_PER_RESOURCE {
        return Ok(TagOutcome::TooMany);
    }
    let values: Vec<&str> = tags.iter().map(|(_, value)| value.as_str()).collect();
    sqlx::query(
        "INSERT INTO resource_tags (stream_uid, resource_arn, tag_key, tag_value) \
         SELECT $1, $2, key, value FROM unnest($3::text[], $4::text[]) AS t (key, value) \
         ON CONFLICT (stream_uid, resource_arn, tag_key) DO UPDATE SET tag_value = EXCLUDED.tag_value",
    )
    .bind(stream_uid)
    .bind(resource_arn)
    .bind(&keys)
    .bind(&values)
    .execute(&mut **transaction)
    .await
    .db("write tags")?;
    Ok(TagOutcome::Tagged)
}

impl MetaStore {
    /// Adds (or overwrites) `tags` on the resource, unless it would then
    /// hold more than [`TAGS_PER_RESOURCE`].
    pub async fn tag_resource(
        &self,
        stream_uid: i64,
        resource_arn: &str,
        tags: &[(String, String)],
    ) -> Result<TagOutcome> {
        let mut transaction = self.pool.begin().await.db("begin tagging")?;
        let outcome = add_tags(&mut transaction, stream_uid, resource_arn, tags).await?;
        transaction.commit().await.db("commit tags")?;
        Ok(outcome)
    }

    /// Removes the tags with these keys from the resource (keys it does
    /// not have are ignored).
    pub async fn untag_resource(
        &self,
        stream_uid: i64,
        resource_arn: &str,
        keys: &[String],
    ) -> Result<()> {
        let mut transaction = self.pool.begin().await.db("begin untagging")?;
        if lock_stream(&mut transaction, stream_uid).await? {
            sqlx::query(
                "DELETE FROM resource_tags WHERE stream_uid = $1 AND resource_arn = $2 \
                 AND tag_key = ANY($3)",
            )
            .bind(stream_uid)
            .bind(resource_arn)
            .bind(keys)
            .execute(&mut *transaction)
            .await
            .db("remove tags")?;
        }
        transaction.commit().await.db("commit untagging")?;
        Ok(())
    }

    /// The resource's tags, by key.
    pub async fn tags_of(
        &self,
        stream_uid: i64,
        resource_arn: &str,
    ) -> Result<Vec<(String, String)>> {
        let rows = sqlx::query(
            "SELECT tag_key, tag_value FROM resource_tags \
             WHERE stream_uid = $1 AND resource_arn = $2 ORDER BY tag_key COLLATE \"C\"",
        )
        .bind(stream_uid)
        .bind(resource_arn)
        .fetch_all(&self.pool)
        .await
        .db("read tags")?;
        rows.iter()
            .map(|row| Ok((row.try_get("tag_key")?, row.try_get("tag_value")?)))
            .collect()
    }
}

impl ChangeBatch {
    /// Removes every tag of the resource (a consumer being removed), under
    /// the stream's tag lock.
    pub async fn remove_tags_of(&mut self, stream_uid: i64, resource_arn: &str) -> Result<()> {
        lock_stream(&mut self.transaction, stream_uid).await?;
        sqlx::query("DELETE FROM resource_tags WHERE stream_uid = $1 AND resource_arn = $2")
            .bind(stream_uid)
            .bind(resource_arn)
            .execute(&mut *self.transaction)
            .await
            .db("remove the consumer's tags")?;
        Ok(())
    }

    /// Adds tags to a resource in this batch (a consumer being
    /// registered), under the same limit as [`MetaStore::tag_resource`].
    pub async fn add_tags(
        &mut self,
        stream_uid: i64,
        resource_arn: &str,
        tags: &[(String, String)],
    ) -> Result<TagOutcome> {
        add_tags(&mut self.transaction, stream_uid, resource_arn, tags).await
    }
}
