//! Enhanced fan-out consumers: registration under Kinesis's limits, the
//! lookups, deregistration, and the timed CREATING → ACTIVE and
//! DELETING → gone steps the control plane's consumer loop takes.
//!
//! Invariant: a consumer's ARN is never handed out twice. It ends in the
//! second the consumer was registered; a name is unique on its stream while
//! its row exists, and a DELETING row is removed only once that second has
//! passed, so a name registered again gets a later second.

use freshet_types::{ConsumerArn, ConsumerStatus};
use sqlx::Row;

use crate::error::{DbContext as _, Result};
use crate::MetaStore;

/// One registered consumer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerRow {
    pub stream_uid: i64,
    pub consumer_name: String,
    pub consumer_arn: String,
    pub status: ConsumerStatus,
    /// Milliseconds since the Unix epoch; the ARN holds its whole seconds.
    pub created_at_ms: i64,
}

/// Limits a registration is checked against.
#[derive(Debug, Clone, Copy)]
pub struct ConsumerLimits {
    /// Consumers (CREATING or ACTIVE) one stream may have.
    pub per_stream: i64,
    /// Consumers one account may have CREATING at once.
    pub creating_per_account: i64,
}

/// What [`MetaStore::register_consumer`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RegisterOutcome {
    Registered(ConsumerRow),
    /// The stream already has a consumer of that name (in any status).
    NameTaken,
    /// The stream has `ConsumerLimits::per_stream` consumers.
    StreamFull,
    /// The account has `ConsumerLimits::creating_per_account` consumers
    /// being created.
    TooManyCreating,
}

const CONSUMER_COLUMNS: &str = "stream_uid, consumer_name, consumer_arn, status, created_at_ms";

fn consumer_from_row(row: &sqlx::postgres::PgRow) -> Result<ConsumerRow> {
    Ok(ConsumerRow {
        stream_uid: row.try_get("stream_uid")?,
        consumer_name: row.try_get("consumer_name")?,
        consumer_arn: row.try_get("consumer_arn")?,
        status: row.try_get::<String, _>("status")?.parse()?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

impl MetaStore {
    /// Registers `arn`'s consumer on the stream `stream_uid` in CREATING,
    /// registered at `created_at_ms` (whose whole seconds `arn` holds), if
    /// the name is free and the limits allow. Checks and insert run under a
    /// per-account lock, so concurrent registrations cannot overshoot.
    pub async fn register_consumer(
        &self,
        stream_uid: i64,
        arn: &ConsumerArn,
        created_at_ms: i64,
        limits: ConsumerLimits,
    ) -> Result<RegisterOutcome> {
        let mut transaction = self.pool.begin().await.db("begin consumer registration")?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('consumers:' || $1))")
            .bind(&arn.stream.account_id)
            .execute(&mut *transaction)
            .await
            .db("lock the account's consumers")?;
        let counts = sqlx::query(
            "SELECT \
               (SELECT count(*) FROM stream_consumers WHERE stream_uid = $1 AND consumer_name = $2) AS same_name, \
               (SELECT count(*) FROM stream_consumers WHERE stream_uid = $1 AND status <> 'DELETING') AS on_stream, \
               (SELECT count(*) FROM stream_consumers WHERE account_id = $3 AND status = 'CREATING') AS creating",
        )
        .bind(stream_uid)
        .bind(&arn.consumer_name)
        .bind(&arn.stream.account_id)
        .fetch_one(&mut *transaction)
        .await
        .db("count the stream's consumers")?;
        let outcome = if counts.try_get::<i64, _>("same_name")? > 0 {
            RegisterOutcome::NameTaken
        } else if counts.try_get::<i64, _>("on_stream")? >= limits.per_stream {
            RegisterOutcome::StreamFull
        } else if counts.try_get::<i64, _>("creating")? >= limits.creating_per_account {
            RegisterOutcome::TooManyCreating
        } else {
            let row = sqlx::query(&format!(
                "INSERT INTO stream_consumers (stream_uid, account_id, consumer_name, consumer_arn, \
                 status, created_at_ms, status_since_ms) VALUES ($1, $2, $3, $4, 'CREATING', $5, $5) \
                 RETURNING {CONSUMER_COLUMNS}"
            ))
            .bind(stream_uid)
            .bind(&arn.stream.account_id)
            .bind(&arn.consumer_name)
            .bind(arn.to_string())
            .bind(created_at_ms)
            .fetch_one(&mut *transaction)
            .await
            .db_with(|| format!("register consumer {}", arn.consumer_name))?;
            RegisterOutcome::Registered(consumer_from_row(&row)?)
        };
        transaction
            .commit()
            .await
            .db("commit consumer registration")?;
        Ok(outcome)
    }

    /// The stream's consumer called `name`, in any status.
    pub async fn consumer(&self, stream_uid: i64, name: &str) -> Result<Option<ConsumerRow>> {
        let row = sqlx::query(&format!(
            "SELECT {CONSUMER_COLUMNS} FROM stream_consumers WHERE stream_uid = $1 AND consumer_name = $2"
        ))
        .bind(stream_uid)
        .bind(name)
        .fetch_optional(&self.pool)
        .await
        .db("read consumer")?;
        row.as_ref().map(consumer_from_row).transpose()
    }

    /// Every consumer of the stream, in any status, by name.
    pub async fn consumers_of(&self, stream_uid: i64) -> Result<Vec<ConsumerRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {CONSUMER_COLUMNS} FROM stream_consumers WHERE stream_uid = $1 ORDER BY consumer_name"
        ))
        .bind(stream_uid)
        .fetch_all(&self.pool)
        .await
        .db("list consumers")?;
        rows.iter().map(consumer_from_row).collect()
    }

    /// Consumers of each of `stream_uids` that count as registered
    /// (CREATING or ACTIVE), by stream.
    pub async fn registered_consumer_counts(
        &self,
        stream_uids: &[i64],
    ) -> Result<std::collections::HashMap<i64, u32>> {
        let rows = sqlx::query(
            "SELECT stream_uid, count(*) AS n FROM stream_consumers \
             WHERE stream_uid = ANY($1) AND status <> 'DELETING' GROUP BY stream_uid",
        )
        .bind(stream_uids)
        .fetch_all(&self.pool)
        .await
        .db("count consumers")?;
        rows.iter()
            .map(|row| {
                let n: i64 = row.try_get("n")?;
                Ok((
                    row.try_get("stream_uid")?,
                    u32::try_from(n).unwrap_or(u32::MAX),
                ))
            })
            .collect()
    }

    /// Starts deregistering the consumer: DELETING from now (a consumer
    /// already DELETING keeps its time). The row as it now is, or `None`
    /// if there is no such consumer.
    pub async fn deregister_consumer(
        &self,
        stream_uid: i64,
        name: &str,
        now_ms: i64,
    ) -> Result<Option<ConsumerRow>> {
        let row = sqlx::query(&format!(
            "UPDATE stream_consumers SET \
               status_since_ms = CASE WHEN status = 'DELETING' THEN status_since_ms ELSE $3 END, \
               status = 'DELETING' \
             WHERE stream_uid = $1 AND consumer_name = $2 RETURNING {CONSUMER_COLUMNS}"
        ))
        .bind(stream_uid)
        .bind(name)
        .bind(now_ms)
        .fetch_optional(&self.pool)
        .await
        .db_with(|| format!("deregister consumer {name}"))?;
        row.as_ref().map(consumer_from_row).transpose()
    }

    /// Ends the transitions due at `now_ms`: consumers CREATING for
    /// `delay_ms` become ACTIVE, and those DELETING for `delay_ms` (and
    /// past the second they were registered in) are removed. Returns how
    /// many of each, and when the next transition is due, if any is
    /// pending.
    pub async fn finish_consumer_transitions(
        &self,
        now_ms: i64,
        delay_ms: i64,
    ) -> Result<ConsumerTransitions> {
        let due = now_ms - delay_ms;
        let activated = sqlx::query(
            "UPDATE stream_consumers SET status = 'ACTIVE', status_since_ms = $2 \
             WHERE status = 'CREATING' AND status_since_ms <= $1",
        )
        .bind(due)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .db("activate consumers")?
        .rows_affected();
        let removed = sqlx::query(
            "DELETE FROM stream_consumers WHERE status = 'DELETING' AND status_since_ms <= $1 \
             AND created_at_ms / 1000 < $2 / 1000",
        )
        .bind(due)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .db("remove deregistered consumers")?
        .rows_affected();
        let next: Option<i64> = sqlx::query(
            "SELECT min(status_since_ms) AS next FROM stream_consumers WHERE status <> 'ACTIVE'",
        )
        .fetch_one(&self.pool)
        .await
        .db("read pending consumer transitions")?
        .try_get("next")?;
        Ok(ConsumerTransitions {
            activated,
            removed,
            next_due_ms: next.map(|since| (since + delay_ms).max(now_ms + 1)),
        })
    }
}

/// What one pass of [`MetaStore::finish_consumer_transitions`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConsumerTransitions {
    pub activated: u64,
    pub removed: u64,
    /// When the next pending transition is due (ms); `None` if none is.
    pub next_due_ms: Option<i64>,
}
