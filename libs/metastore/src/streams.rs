//! Streams: creation under the account's shard quota, status and
//! settings, lookups, and the UpdateShardCount call record.

use freshet_types::{ShardLevelMetrics, StreamArn, StreamMode, StreamStatus};
use sqlx::Row;

use crate::error::{DbContext as _, Result};
use crate::limits::{lock_account, on_demand_streams, AccountLimits};
use crate::rows::{decode_all, metrics_set, stream_from_row, StreamRow, STREAM_COLUMNS};
use crate::MetaStore;

/// What [`MetaStore::insert_stream`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewStreamOutcome {
    Created(i64),
    NameTaken,
    /// Shards the account already uses in the region (open, or requested
    /// by streams being created).
    OverShardLimit {
        used: i64,
    },
    /// More tags than a resource may hold: nothing was created.
    TooManyTags,
    /// The account has as many on-demand streams as it may.
    OverOnDemandLimit,
}

/// What [`MetaStore::set_record_distribution`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DistributionChange {
    /// The stream now uses the strategy asked for (it may have already).
    Changed,
    /// A provisioned stream: only on-demand streams may use AUTO, and
    /// only they have a strategy to set.
    NotOnDemand,
    /// The stream is gone or not ACTIVE: nothing changed.
    NotActive,
}

/// What [`MetaStore::update_retention`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetentionChange {
    /// The period is now the one asked for (it may have been already).
    Changed { previous_hours: i32 },
    /// An increase below the current period, or a decrease above it:
    /// nothing changed.
    WrongDirection { current_hours: i32 },
    /// The stream is gone or not ACTIVE: nothing changed.
    NotActive,
}

/// A retention change to make: the new period, which way it may go, and
/// what an increase needs to know to keep expired records expired.
#[derive(Debug, Clone, Copy)]
pub struct RetentionUpdate {
    pub hours: i32,
    pub increase: bool,
    /// Now, and one retention hour, in milliseconds: an increase raises
    /// the stream's expired-before floor to `now_ms - previous hours`.
    pub now_ms: i64,
    pub hour_ms: i64,
}

/// A new stream to insert; its ARN names its account, region and name.
#[derive(Debug, Clone)]
pub struct NewStream<'a> {
    pub arn: &'a StreamArn,
    pub stream_mode: StreamMode,
    pub retention_hours: i32,
    pub max_record_size_kib: i32,
    pub created_at_ms: i64,
    /// Set on the stream in the transaction that creates it.
    pub tags: &'a [(String, String)],
    /// AUTO record distribution (ON_DEMAND only; the table checks it).
    pub auto_record_distribution: bool,
}

impl MetaStore {
    /// Inserts a stream in CREATING if the name is free in its account and
    /// region and the account's shards there — open ones plus those of
    /// streams still being created — leave room for `shard_count` more.
    /// Check and insert run under a per-account lock, so concurrent
    /// creations cannot overshoot together.
    pub async fn insert_stream(
        &self,
        stream: &NewStream<'_>,
        shard_count: u32,
        limits: AccountLimits,
    ) -> Result<NewStreamOutcome> {
        let mut transaction = self.pool.begin().await.db("begin stream creation")?;
        lock_account(&mut transaction, &stream.arn.account_id).await?;
        if stream.stream_mode == StreamMode::OnDemand {
            let on_demand = on_demand_streams(&mut transaction, stream.arn, None).await?;
            if on_demand >= i64::from(limits.on_demand_streams) {
                return Ok(NewStreamOutcome::OverOnDemandLimit);
            }
        }
        let used: i64 = sqlx::query(
            "SELECT (SELECT count(*) FROM shards JOIN streams USING (stream_uid) \
                     WHERE streams.account_id = $1 AND streams.region = $2 \
                       AND shards.state IN ('OPEN', 'CLOSING')) \
                  + (SELECT COALESCE(SUM(requested_shards), 0) FROM streams \
                     WHERE account_id = $1 AND region = $2 AND status = 'CREATING') AS used",
        )
        .bind(&stream.arn.account_id)
        .bind(&stream.arn.region)
        .fetch_one(&mut *transaction)
        .await
        .db("count the account's shards")?
        .try_get("used")?;
        if used + i64::from(shard_count) > i64::from(limits.shards) {
            return Ok(NewStreamOutcome::OverShardLimit { used });
        }
        let row = sqlx::query(
            "INSERT INTO streams (account_id, region, stream_name, stream_arn, status, stream_mode, retention_hours, max_record_size_kib, created_at_ms, requested_shards, auto_record_distribution) \
             VALUES ($1, $2, $3, $4, 'CREATING', $5, $6, $7, $8, $9, $10) \
             ON CONFLICT (account_id, region, stream_name) DO NOTHING RETURNING stream_uid",
        )
        .bind(&stream.arn.account_id)
        .bind(&stream.arn.region)
        .bind(&stream.arn.stream_name)
        .bind(stream.arn.to_string())
        .bind(stream.stream_mode.as_str())
        .bind(stream.retention_hours)
        .bind(stream.max_record_size_kib)
        .bind(stream.created_at_ms)
        .bind(i32::try_from(shard_count).unwrap_or(i32::MAX))
        .bind(stream.auto_record_distribution)
        .fetch_optional(&mut *transaction)
        .await
        .db("insert stream")?;
        let Some(row) = row else {
            return Ok(NewStreamOutcome::NameTaken);
        };
        let stream_uid: i64 = row.try_get("stream_uid")?;
        if !stream.tags.is_empty() {
            let tagged = crate::tags::add_tags(
                &mut transaction,
                stream_uid,
                &stream.arn.to_string(),
                stream.tags,
            )
            .await?;
            if tagged == crate::tags::TagOutcome::TooMany {
                return Ok(NewStreamOutcome::TooManyTags);
            }
        }
        transaction.commit().await.db("commit stream creation")?;
        Ok(NewStreamOutcome::Created(stream_uid))
    }

    /// Moves a stream from ACTIVE to UPDATING; false if it was not ACTIVE
    /// (two resharding calls never run on one stream at once).
    pub async fn begin_stream_update(&self, stream_uid: i64) -> Result<bool> {
        let changed = sqlx::query(
            "UPDATE streams SET status = 'UPDATING' WHERE stream_uid = $1 AND status = 'ACTIVE'",
        )
        .bind(stream_uid)
        .execute(&self.pool)
        .await
        .db("mark stream updating")?;
        Ok(changed.rows_affected() == 1)
    }

    /// UPDATING → ACTIVE (a stream being deleted meanwhile stays DELETING).
    pub async fn end_stream_update(&self, stream_uid: i64) -> Result<()> {
        sqlx::query(
            "UPDATE streams SET status = 'ACTIVE' WHERE stream_uid = $1 AND status = 'UPDATING'",
        )
        .bind(stream_uid)
        .execute(&self.pool)
        .await
        .db("end a stream update")?;
        Ok(())
    }

    pub async fn set_stream_status(&self, stream_uid: i64, status: StreamStatus) -> Result<()> {
        sqlx::query("UPDATE streams SET status = $2 WHERE stream_uid = $1")
            .bind(stream_uid)
            .bind(status.as_str())
            .execute(&self.pool)
            .await
            .db("update stream status")?;
        Ok(())
    }

    /// Sets (or, with `None`, clears) a stream's warm throughput.
    pub async fn set_warm_throughput(&self, stream_uid: i64, mibps: Option<i32>) -> Result<()> {
        sqlx::query("UPDATE streams SET warm_throughput_mibps = $2 WHERE stream_uid = $1")
            .bind(stream_uid)
            .bind(mibps)
            .execute(&self.pool)
            .await
            .db("update the stream's warm throughput")?;
        Ok(())
    }

    /// Switches `metrics` on (`enable`) or off for the stream, in one
    /// statement; the sets before and after, or `None` if the stream is
    /// gone or not ACTIVE.
    pub async fn update_shard_level_metrics(
        &self,
        stream_uid: i64,
        enable: bool,
        metrics: ShardLevelMetrics,
    ) -> Result<Option<(ShardLevelMetrics, ShardLevelMetrics)>> {
        let bits = i32::try_from(metrics.bits()).unwrap_or(0);
        let row = sqlx::query(
            "UPDATE streams AS s SET shard_level_metrics = \
               CASE WHEN $2 THEN old.metrics | $3 ELSE old.metrics & ~$3 END \
             FROM (SELECT shard_level_metrics AS metrics FROM streams \
                   WHERE stream_uid = $1 FOR UPDATE) AS old \
             WHERE s.stream_uid = $1 AND s.status = 'ACTIVE' \
             RETURNING old.metrics AS before, s.shard_level_metrics AS after",
        )
        .bind(stream_uid)
        .bind(enable)
        .bind(bits)
        .fetch_optional(&self.pool)
        .await
        .db("update the stream's shard-level metrics")?;
        let Some(row) = row else {
            return Ok(None);
        };
        Ok(Some((
            metrics_set(row.try_get("before")?)?,
            metrics_set(row.try_get("after")?)?,
        )))
    }

    /// Changes an ACTIVE stream's retention period, under its row lock so
    /// the direction is checked against the period it replaces.
    ///
    /// Invariant: an increase raises `expired_before_ms` to when records
    /// were expiring under the old period, so nothing that had expired is
    /// served again; a decrease needs no floor (the shorter period already
    /// expires more).
    pub async fn update_retention(
        &self,
        stream_uid: i64,
        update: RetentionUpdate,
    ) -> Result<RetentionChange> {
        let mut tx = self.pool.begin().await.db("begin a retention change")?;
        let row = sqlx::query(
            "SELECT status, retention_hours FROM streams WHERE stream_uid = $1 FOR NO KEY UPDATE",
        )
        .bind(stream_uid)
        .fetch_optional(&mut *tx)
        .await
        .db("lock the stream for a retention change")?;
        let Some(row) = row else {
            return Ok(RetentionChange::NotActive);
        };
        let status: String = row.try_get("status")?;
        let current: i32 = row.try_get("retention_hours")?;
        if status != StreamStatus::Active.as_str() {
            return Ok(RetentionChange::NotActive);
        }
        let wrong_way = if update.increase {
            update.hours < current
        } else {
            update.hours > current
        };
        if wrong_way {
            return Ok(RetentionChange::WrongDirection {
                current_hours: current,
            });
        }
        let floor = (update.hours > current).then(|| {
            update
                .now_ms
                .saturating_sub(i64::from(current).saturating_mul(update.hour_ms))
        });
        sqlx::query(
            "UPDATE streams SET retention_hours = $2, \
               expired_before_ms = GREATEST(expired_before_ms, COALESCE($3, expired_before_ms)) \
             WHERE stream_uid = $1",
        )
        .bind(stream_uid)
        .bind(update.hours)
        .bind(floor)
        .execute(&mut *tx)
        .await
        .db("update the stream's retention period")?;
        tx.commit().await.db("commit a retention change")?;
        Ok(RetentionChange::Changed {
            previous_hours: current,
        })
    }

    /// Sets an ACTIVE on-demand stream's record distribution strategy
    /// (AUTO, or USER_PARTITION_KEY), checked under its row lock so a mode
    /// change cannot slip in between.
    pub async fn set_record_distribution(
        &self,
        stream_uid: i64,
        auto: bool,
    ) -> Result<DistributionChange> {
        let mut tx = self
            .pool
            .begin()
            .await
            .db("begin a record distribution change")?;
        let row = sqlx::query(
            "SELECT status, stream_mode FROM streams WHERE stream_uid = $1 FOR NO KEY UPDATE",
        )
        .bind(stream_uid)
        .fetch_optional(&mut *tx)
        .await
        .db("lock the stream for a record distribution change")?;
        let Some(row) = row else {
            return Ok(DistributionChange::NotActive);
        };
        let status: String = row.try_get("status")?;
        let mode: String = row.try_get("stream_mode")?;
        if status != StreamStatus::Active.as_str() {
            return Ok(DistributionChange::NotActive);
        }
        if mode != StreamMode::OnDemand.as_str() {
            return Ok(DistributionChange::NotOnDemand);
        }
        sqlx::query("UPDATE streams SET auto_record_distribution = $2 WHERE stream_uid = $1")
            .bind(stream_uid)
            .bind(auto)
            .execute(&mut *tx)
            .await
            .db("update the stream's record distribution")?;
        tx.commit()
            .await
            .db("commit a record distribution change")?;
        Ok(DistributionChange::Changed)
    }

    /// Sets a stream's maximum record size (KiB).
    pub async fn set_max_record_size(&self, stream_uid: i64, kib: i32) -> Result<()> {
        sqlx::query("UPDATE streams SET max_record_size_kib = $2 WHERE stream_uid = $1")
            .bind(stream_uid)
            .bind(kib)
            .execute(&self.pool)
            .await
            .db("update the stream's maximum record size")?;
        Ok(())
    }

    /// Deletes the stream row (its shards go with it) and, in the same
    /// statement, the resource policies of the stream and its consumers: a
    /// stream created again under the name starts with no grants.
    pub async fn delete_stream(&self, stream_uid: i64) -> Result<()> {
        sqlx::query(
            "WITH gone AS (DELETE FROM streams WHERE stream_uid = $1 RETURNING stream_arn) \
             DELETE FROM resource_policies USING gone \
             WHERE resource_arn = gone.stream_arn \
                OR starts_with(resource_arn, gone.stream_arn || '/')",
        )
        .bind(stream_uid)
        .execute(&self.pool)
        .await
        .db("delete stream")?;
        Ok(())
    }

    /// The stream `arn` names (its account, region and name).
    pub async fn get_stream(&self, arn: &StreamArn) -> Result<Option<StreamRow>> {
        let row = sqlx::query(&format!(
            "SELECT {STREAM_COLUMNS} FROM streams WHERE account_id = $1 AND region = $2 AND stream_name = $3"
        ))
        .bind(&arn.account_id)
        .bind(&arn.region)
        .bind(&arn.stream_name)
        .fetch_optional(&self.pool)
        .await
        .db("read stream")?;
        row.as_ref().map(stream_from_row).transpose()
    }

    pub async fn get_stream_by_uid(&self, stream_uid: i64) -> Result<Option<StreamRow>> {
        let row = sqlx::query(&format!(
            "SELECT {STREAM_COLUMNS} FROM streams WHERE stream_uid = $1"
        ))
        .bind(stream_uid)
        .fetch_optional(&self.pool)
        .await
        .db("read stream")?;
        row.as_ref().map(stream_from_row).transpose()
    }

    /// The account's streams in `region`, sorted by name.
    pub async fn list_streams(&self, account_id: &str, region: &str) -> Result<Vec<StreamRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {STREAM_COLUMNS} FROM streams WHERE account_id = $1 AND region = $2 ORDER BY stream_name"
        ))
        .bind(account_id)
        .bind(region)
        .fetch_all(&self.pool)
        .await
        .db("list streams")?;
        decode_all(&rows, stream_from_row)
    }

    /// Every stream in `status`, of every account.
    pub async fn streams_with_status(&self, status: StreamStatus) -> Result<Vec<StreamRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {STREAM_COLUMNS} FROM streams WHERE status = $1 ORDER BY stream_uid"
        ))
        .bind(status.as_str())
        .fetch_all(&self.pool)
        .await
        .db("list streams by status")?;
        decode_all(&rows, stream_from_row)
    }

    /// Every stream in on-demand mode, of every account.
    pub async fn on_demand_streams(&self) -> Result<Vec<StreamRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {STREAM_COLUMNS} FROM streams WHERE stream_mode = 'ON_DEMAND' ORDER BY stream_uid"
        ))
        .fetch_all(&self.pool)
        .await
        .db("list on-demand streams")?;
        decode_all(&rows, stream_from_row)
    }

    /// ACTIVE streams with a CLOSING shard: a move between workers under
    /// way, or abandoned (resharding closes shards only while UPDATING).
    pub async fn active_streams_with_closing_shards(&self) -> Result<Vec<StreamRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {STREAM_COLUMNS} FROM streams WHERE status = 'ACTIVE' AND EXISTS \
             (SELECT 1 FROM shards WHERE shards.stream_uid = streams.stream_uid AND state = 'CLOSING') \
             ORDER BY stream_uid"
        ))
        .fetch_all(&self.pool)
        .await
        .db("list active streams with closing shards")?;
        decode_all(&rows, stream_from_row)
    }

    /// Records an UpdateShardCount call, unless the stream already had
    /// `limit` in the last 24 hours; returns whether it was recorded.
    pub async fn record_shard_count_update(&self, stream_uid: i64, limit: i64) -> Result<bool> {
        let mut transaction = self.pool.begin().await.db("begin")?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('shard_count_updates'), $1::int)")
            .bind((stream_uid % i64::from(i32::MAX)) as i32)
            .execute(&mut *transaction)
            .await
            .db("lock a stream's shard-count updates")?;
        let recent: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM shard_count_updates \
             WHERE stream_uid = $1 AND updated_at > now() - interval '24 hours'",
        )
        .bind(stream_uid)
        .fetch_one(&mut *transaction)
        .await
        .db("count recent shard-count updates")?;
        if recent >= limit {
            return Ok(false);
        }
        sqlx::query("INSERT INTO shard_count_updates (stream_uid) VALUES ($1)")
            .bind(stream_uid)
            .execute(&mut *transaction)
            .await
            .db("record a shard-count update")?;
        transaction.commit().await.db("commit")?;
        Ok(true)
    }
}
