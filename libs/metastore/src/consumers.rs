//! Enhanced fan-out consumers: registration under Kinesis's limits, the
//! lookups, deregistration, and the timed CREATING → ACTIVE and
//! DELETING → gone steps the control plane's consumer loop asks for.
//!
//! Every change is made inside a [`ChangeBatch`], so the rows and the
//! change-log entries that announce them commit together (membership, the
//! log's only writer, records one entry per row returned here).
//!
//! Invariant: a consumer's ARN is never handed out twice. It ends in the
//! second the consumer was registered, and every registration of a name on
//! a stream name (whatever incarnation of the stream) is in a later second
//! than the one before it (`consumer_registrations`, by Postgres's clock,
//! under the account's lock).

use freshet_types::{ConsumerArn, ConsumerStatus, StreamArn};
use sqlx::Row;

use crate::changes::ChangeBatch;
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

/// What [`ChangeBatch::register_consumer`] did.
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
    /// More tags than a consumer may hold (the batch must not commit).
    TooManyTags,
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

/// Every consumer, in one transaction's view (a snapshot's).
pub(crate) async fn all_consumers(
    transaction: &mut sqlx::Transaction<'static, sqlx::Postgres>,
) -> Result<Vec<ConsumerRow>> {
    let rows = sqlx::query(&format!(
        "SELECT {CONSUMER_COLUMNS} FROM stream_consumers ORDER BY stream_uid, consumer_name"
    ))
    .fetch_all(&mut **transaction)
    .await
    .db("read consumers")?;
    rows.iter().map(consumer_from_row).collect()
}

impl ChangeBatch {
    /// Registers a consumer called `name` on the stream `stream_uid`
    /// (`stream`) in CREATING, if the name is free and the limits allow.
    /// It is registered now by Postgres's clock — or, if this name was
    /// registered on this stream name in this second or later, in the
    /// second after that one — and its ARN ends in that second. Checks and
    /// insert run under a per-account lock (taken after the change log's,
    /// as every batch does), so concurrent registrations cannot overshoot.
    pub async fn register_consumer(
        &mut self,
        stream_uid: i64,
        stream: &StreamArn,
        name: &str,
        limits: ConsumerLimits,
        tags: &[(String, String)],
    ) -> Result<RegisterOutcome> {
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('consumers:' || $1))")
            .bind(&stream.account_id)
            .execute(&mut *self.transaction)
            .await
            .db("lock the account's consumers")?;
        let created_at_ms: i64 = sqlx::query(
            "SELECT GREATEST( \
               (extract(epoch FROM clock_timestamp()) * 1000)::bigint, \
               COALESCE((SELECT (last_second + 1) * 1000 FROM consumer_registrations \
                 WHERE account_id = $1 AND region = $2 AND stream_name = $3 AND consumer_name = $4), 0) \
             ) AS created_at_ms",
        )
        .bind(&stream.account_id)
        .bind(&stream.region)
        .bind(&stream.stream_name)
        .bind(name)
        .fetch_one(&mut *self.transaction)
        .await
        .db("read the registration time")?
        .try_get("created_at_ms")?;
        let seconds = created_at_ms.div_euclid(1000);
        let arn = ConsumerArn::new(stream.clone(), name, u64::try_from(seconds).unwrap_or(0));
        let counts = sqlx::query(
            "SELECT \
               (SELECT count(*) FROM stream_consumers WHERE stream_uid = $1 AND consumer_name = $2) AS same_name, \
               (SELECT count(*) FROM stream_consumers WHERE stream_uid = $1 AND status <> 'DELETING') AS on_stream, \
               (SELECT count(*) FROM stream_consumers WHERE account_id = $3 AND status = 'CREATING') AS creating",
        )
        .bind(stream_uid)
        .bind(name)
        .bind(&stream.account_id)
        .fetch_one(&mut *self.transaction)
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
            .fetch_one(&mut *self.transaction)
            .await
            .db_with(|| format!("register consumer {}", arn.consumer_name))?;
            sqlx::query(
                "INSERT INTO consumer_registrations (account_id, region, stream_name, consumer_name, last_second) \
                 VALUES ($1, $2, $3, $4, $5) ON CONFLICT (account_id, region, stream_name, consumer_name) \
                 DO UPDATE SET last_second = EXCLUDED.last_second",
            )
            .bind(&stream.account_id)
            .bind(&stream.region)
            .bind(&stream.stream_name)
            .bind(name)
            .bind(seconds)
            .execute(&mut *self.transaction)
            .await
            .db("record the registration second")?;
            if !tags.is_empty() {
                let tagged = crate::tags::add_tags(
                    &mut self.transaction,
                    stream_uid,
                    &arn.to_string(),
                    tags,
                )
                .await?;
                if tagged == crate::tags::TagOutcome::TooMany {
                    return Ok(RegisterOutcome::TooManyTags);
                }
            }
            RegisterOutcome::Registered(consumer_from_row(&row)?)
        };
        Ok(outcome)
    }

    /// Starts deregistering the consumer whose ARN is `consumer_arn`:
    /// DELETING from `now_ms` (a consumer already DELETING keeps its
    /// time). The row as it now is, or `None` if there is no such consumer.
    pub async fn deregister_consumer(
        &mut self,
        stream_uid: i64,
        consumer_arn: &str,
        now_ms: i64,
    ) -> Result<Option<ConsumerRow>> {
        let row = sqlx::query(&format!(
            "UPDATE stream_consumers SET \
               status_since_ms = CASE WHEN status = 'DELETING' THEN status_since_ms ELSE $3 END, \
               status = 'DELETING' \
             WHERE stream_uid = $1 AND consumer_arn = $2 RETURNING {CONSUMER_COLUMNS}"
        ))
        .bind(stream_uid)
        .bind(consumer_arn)
        .bind(now_ms)
        .fetch_optional(&mut *self.transaction)
        .await
        .db_with(|| format!("deregister consumer {consumer_arn}"))?;
        row.as_ref().map(consumer_from_row).transpose()
    }

    /// Ends the transitions due at `now_ms`: consumers CREATING for
    /// `delay_ms` become ACTIVE, and those DELETING for `delay_ms` are
    /// removed. The rows changed, and when the next transition is due.
    pub async fn finish_consumer_transitions(
        &mut self,
        now_ms: i64,
        delay_ms: i64,
    ) -> Result<ConsumerTransitions> {
        let due = now_ms - delay_ms;
        let activated = sqlx::query(&format!(
            "UPDATE stream_consumers SET status = 'ACTIVE', status_since_ms = $2 \
             WHERE status = 'CREATING' AND status_since_ms <= $1 RETURNING {CONSUMER_COLUMNS}"
        ))
        .bind(due)
        .bind(now_ms)
        .fetch_all(&mut *self.transaction)
        .await
        .db("activate consumers")?;
        let removed = sqlx::query(&format!(
            "DELETE FROM stream_consumers WHERE status = 'DELETING' AND status_since_ms <= $1 \
             RETURNING {CONSUMER_COLUMNS}"
        ))
        .bind(due)
        .fetch_all(&mut *self.transaction)
        .await
        .db("remove deregistered consumers")?;
        // Their tags go with them.
        for row in &removed {
            let stream_uid: i64 = row.try_get("stream_uid")?;
            let arn: String = row.try_get("consumer_arn")?;
            self.remove_tags_of(stream_uid, &arn).await?;
        }
        let next: Option<i64> = sqlx::query(
            "SELECT min(status_since_ms) AS next FROM stream_consumers WHERE status <> 'ACTIVE'",
        )
        .fetch_one(&mut *self.transaction)
        .await
        .db("read pending consumer transitions")?
        .try_get("next")?;
        Ok(ConsumerTransitions {
            activated: activated
                .iter()
                .map(consumer_from_row)
                .collect::<Result<_>>()?,
            removed: removed
                .iter()
                .map(consumer_from_row)
                .collect::<Result<_>>()?,
            next_due_ms: next.map(|since| (since + delay_ms).max(now_ms + 1)),
        })
    }

    /// Removes every consumer of the stream `stream_uid` (it is being
    /// deleted); the rows removed.
    pub async fn remove_consumers_of(&mut self, stream_uid: i64) -> Result<Vec<ConsumerRow>> {
        let rows = sqlx::query(&format!(
            "DELETE FROM stream_consumers WHERE stream_uid = $1 RETURNING {CONSUMER_COLUMNS}"
        ))
        .bind(stream_uid)
        .fetch_all(&mut *self.transaction)
        .await
        .db("remove the stream's consumers")?;
        rows.iter().map(consumer_from_row).collect()
    }
}

impl MetaStore {
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
}

/// What one pass of [`ChangeBatch::finish_consumer_transitions`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConsumerTransitions {
    /// The consumers now ACTIVE.
    pub activated: Vec<ConsumerRow>,
    /// The consumers removed.
    pub removed: Vec<ConsumerRow>,
    /// When the next pending transition is due (ms); `None` if none is.
    pub next_due_ms: Option<i64>,
}
