//! `freshet-metastore`: Freshet's Postgres schema (embedded sqlx migrations)
//! and the queries the metadata services run against it.
//!
//! Postgres is the source of truth for accounts, streams, shards and their
//! placement, storage workers, and the shard-map change log. Entries in the
//! change log are opaque bytes here (encoded `ShardMapEntry` messages);
//! membership, the only writer, encodes them.
//!
//! Invariant: change-log versions are assigned under a transaction-scoped
//! advisory lock, so they commit in increasing order with no gaps, and a
//! subscriber that sees version `v + 2` before `v + 1` knows it missed one.

use std::collections::HashMap;

use anyhow::Context as _;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgPool, Postgres, Row, Transaction};

/// Advisory-lock key that serialises change-log writers ("fresh" in ASCII).
const CHANGE_LOG_LOCK: i64 = 0x0066_7265_7368;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects to the Postgres `database_url` and applies the migrations.
pub async fn connect_url_and_migrate(
    database_url: &str,
    max_connections: u32,
) -> anyhow::Result<PgPool> {
    let options: PgConnectOptions = database_url.parse().context("parse DATABASE_URL")?;
    connect_and_migrate(options, max_connections).await
}

/// Connects to Postgres and applies the migrations (idempotent, and safe
/// when several services start at once: sqlx takes a lock).
pub async fn connect_and_migrate(
    options: PgConnectOptions,
    max_connections: u32,
) -> anyhow::Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(options)
        .await
        .context("connect to postgres")?;
    MIGRATOR
        .run(&pool)
        .await
        .context("apply postgres migrations")?;
    Ok(pool)
}

#[derive(Debug, Clone)]
pub struct StreamRow {
    pub stream_uid: i64,
    pub account_id: String,
    pub stream_name: String,
    pub stream_arn: String,
    pub status: String,
    pub stream_mode: String,
    pub retention_hours: i32,
    pub max_record_size_kib: i32,
    pub created_at_ms: i64,
    /// ON_DEMAND only: MiB/s of write capacity kept ready while set.
    pub warm_throughput_mibps: Option<i32>,
}

/// An account's minimum-throughput billing commitment.
#[derive(Debug, Clone, PartialEq)]
pub struct Commitment {
    /// ENABLED, ENABLED_UNTIL_EARLIEST_ALLOWED_END or DISABLED, as of now.
    pub status: String,
    pub started_at_ms: Option<i64>,
    /// When a scheduled disable takes (or took) effect.
    pub ends_at_ms: Option<i64>,
    /// 24 h after the start.
    pub earliest_end_ms: Option<i64>,
}

impl Commitment {
    pub fn is_active(&self) -> bool {
        self.status != "DISABLED"
    }
}

#[derive(Debug, Clone)]
pub struct ShardRow {
    pub stream_uid: i64,
    pub shard_id: String,
    pub starting_hash_key: String,
    pub ending_hash_key: String,
    pub parent_shard_id: Option<String>,
    pub adjacent_parent_shard_id: Option<String>,
    pub sequence_base: u64,
    /// OPEN, CLOSING (being sealed) or CLOSED.
    pub state: String,
    /// CLOSED only: the shard holds exactly the offsets below this.
    pub ending_offset: Option<u64>,
    pub leader_worker_id: String,
    pub replica_worker_ids: Vec<String>,
    pub epoch: u64,
    /// The current segment of the shard's log (the one `leader_worker_id`
    /// and `replica_worker_ids` hold) and its first offset.
    pub segment_index: u32,
    pub segment_start_offset: u64,
    /// The earlier segments, oldest first.
    pub sealed_segments: Vec<SealedSegmentRow>,
}

impl ShardRow {
    /// Whether the shard counts as open in `stream`: OPEN, or CLOSING in an
    /// ACTIVE stream — that is a move to another worker under way (worker
    /// balancing), after which it is OPEN again; resharding closes shards
    /// only while the stream is UPDATING.
    pub fn is_open_in(&self, stream: &StreamRow) -> bool {
        self.state == "OPEN" || (self.state == "CLOSING" && stream.status == "ACTIVE")
    }
}

/// A sealed segment of a shard's log, kept on the workers that wrote it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SealedSegmentRow {
    pub index: u32,
    pub start_offset: u64,
    /// Exclusive.
    pub end_offset: u64,
    pub final_epoch: u64,
    /// Its last leader first.
    pub worker_ids: Vec<String>,
    /// Arrival time of its newest record (0 if it holds none).
    #[serde(default)]
    pub last_arrival_ms: i64,
}

#[derive(Debug, Clone)]
pub struct WorkerRow {
    pub worker_id: String,
    pub availability_zone: String,
    pub address: String,
    /// Seconds since the last heartbeat, by Postgres's clock.
    pub seconds_since_heartbeat: f64,
}

/// What [`MetaStore::insert_stream`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewStreamOutcome {
    Created(i64),
    NameTaken,
    /// Shards the account already uses (open, or requested by streams being created).
    OverShardLimit {
        used: i64,
    },
}

/// A new stream to insert.
#[derive(Debug, Clone)]
pub struct NewStream<'a> {
    pub account_id: &'a str,
    pub stream_name: &'a str,
    pub stream_arn: &'a str,
    pub stream_mode: &'a str,
    pub retention_hours: i32,
    pub max_record_size_kib: i32,
    pub created_at_ms: i64,
}

const STREAM_COLUMNS: &str =
    "stream_uid, account_id, stream_name, stream_arn, status, stream_mode, \
     retention_hours, max_record_size_kib, created_at_ms, warm_throughput_mibps";

const SHARD_SELECT: &str = "SELECT stream_uid, shard_id, starting_hash_key, ending_hash_key, parent_shard_id, \
     adjacent_parent_shard_id, sequence_base, ending_offset, state, leader_worker_id, replica_worker_ids, epoch, \
     segment_index, segment_start_offset, sealed_segments::text AS sealed_segments \
     FROM shards";

fn shard_from_row(row: &sqlx::postgres::PgRow) -> sqlx::Result<ShardRow> {
    Ok(ShardRow {
        stream_uid: row.try_get("stream_uid")?,
        shard_id: row.try_get("shard_id")?,
        starting_hash_key: row.try_get("starting_hash_key")?,
        ending_hash_key: row.try_get("ending_hash_key")?,
        parent_shard_id: row.try_get("parent_shard_id")?,
        adjacent_parent_shard_id: row.try_get("adjacent_parent_shard_id")?,
        sequence_base: row.try_get::<i64, _>("sequence_base")? as u64,
        ending_offset: row
            .try_get::<Option<i64>, _>("ending_offset")?
            .map(|offset| offset as u64),
        state: row.try_get("state")?,
        leader_worker_id: row.try_get("leader_worker_id")?,
        replica_worker_ids: row.try_get("replica_worker_ids")?,
        epoch: row.try_get::<i64, _>("epoch")? as u64,
        segment_index: row.try_get::<i32, _>("segment_index")? as u32,
        segment_start_offset: row.try_get::<i64, _>("segment_start_offset")? as u64,
        sealed_segments: serde_json::from_str(&row.try_get::<String, _>("sealed_segments")?)
            .map_err(|e| sqlx::Error::Decode(Box::new(e)))?,
    })
}

fn stream_from_row(row: &sqlx::postgres::PgRow) -> sqlx::Result<StreamRow> {
    Ok(StreamRow {
        stream_uid: row.try_get("stream_uid")?,
        account_id: row.try_get("account_id")?,
        stream_name: row.try_get("stream_name")?,
        stream_arn: row.try_get("stream_arn")?,
        status: row.try_get("status")?,
        stream_mode: row.try_get("stream_mode")?,
        retention_hours: row.try_get("retention_hours")?,
        max_record_size_kib: row.try_get("max_record_size_kib")?,
        created_at_ms: row.try_get("created_at_ms")?,
        warm_throughput_mibps: row.try_get("warm_throughput_mibps")?,
    })
}

/// Typed access to the metadata tables.
#[derive(Clone)]
pub struct MetaStore {
    pool: PgPool,
}

impl MetaStore {
    pub fn new(pool: PgPool) -> MetaStore {
        MetaStore { pool }
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub async fn resolve_access_key(&self, access_key_id: &str) -> anyhow::Result<Option<String>> {
        let row = sqlx::query("SELECT account_id FROM accounts WHERE access_key_id = $1")
            .bind(access_key_id)
            .fetch_optional(&self.pool)
            .await
            .context("look up access key")?;
        Ok(row.map(|row| row.try_get("account_id")).transpose()?)
    }

    pub async fn add_access_key(
        &self,
        access_key_id: &str,
        account_id: &str,
    ) -> anyhow::Result<()> {
        sqlx::query("INSERT INTO accounts (access_key_id, account_id) VALUES ($1, $2) ON CONFLICT (access_key_id) DO UPDATE SET account_id = EXCLUDED.account_id")
            .bind(access_key_id)
            .bind(account_id)
            .execute(&self.pool)
            .await
            .context("insert access key")?;
        Ok(())
    }

    /// Inserts a stream in CREATING if the name is free and the account's
    /// shards — open ones plus those of streams still being created — leave
    /// room for `shard_count` more. Check and insert run under a
    /// per-account lock, so concurrent creations cannot overshoot together.
    pub async fn insert_stream(
        &self,
        stream: &NewStream<'_>,
        shard_count: u32,
        shard_limit: u32,
    ) -> anyhow::Result<NewStreamOutcome> {
        let mut transaction = self.pool.begin().await.context("begin stream creation")?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
            .bind(stream.account_id)
            .execute(&mut *transaction)
            .await
            .context("lock the account's shard quota")?;
        let used: i64 = sqlx::query(
            "SELECT (SELECT count(*) FROM shards JOIN streams USING (stream_uid) \
                     WHERE streams.account_id = $1 AND shards.state IN ('OPEN', 'CLOSING')) \
                  + (SELECT COALESCE(SUM(requested_shards), 0) FROM streams \
                     WHERE account_id = $1 AND status = 'CREATING') AS used",
        )
        .bind(stream.account_id)
        .fetch_one(&mut *transaction)
        .await
        .context("count the account's shards")?
        .try_get("used")?;
        if used + i64::from(shard_count) > i64::from(shard_limit) {
            return Ok(NewStreamOutcome::OverShardLimit { used });
        }
        let row = sqlx::query(
            "INSERT INTO streams (account_id, stream_name, stream_arn, status, stream_mode, retention_hours, max_record_size_kib, created_at_ms, requested_shards) \
             VALUES ($1, $2, $3, 'CREATING', $4, $5, $6, $7, $8) ON CONFLICT (account_id, stream_name) DO NOTHING RETURNING stream_uid",
        )
        .bind(stream.account_id)
        .bind(stream.stream_name)
        .bind(stream.stream_arn)
        .bind(stream.stream_mode)
        .bind(stream.retention_hours)
        .bind(stream.max_record_size_kib)
        .bind(stream.created_at_ms)
        .bind(i32::try_from(shard_count).unwrap_or(i32::MAX))
        .fetch_optional(&mut *transaction)
        .await
        .context("insert stream")?;
        transaction
            .commit()
            .await
            .context("commit stream creation")?;
        match row {
            Some(row) => Ok(NewStreamOutcome::Created(row.try_get("stream_uid")?)),
            None => Ok(NewStreamOutcome::NameTaken),
        }
    }

    /// UPDATING → ACTIVE (a stream being deleted meanwhile stays DELETING).
    pub async fn end_stream_update(&self, stream_uid: i64) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE streams SET status = 'ACTIVE' WHERE stream_uid = $1 AND status = 'UPDATING'",
        )
        .bind(stream_uid)
        .execute(&self.pool)
        .await
        .context("end a stream update")?;
        Ok(())
    }

    pub async fn set_stream_status(&self, stream_uid: i64, status: &str) -> anyhow::Result<()> {
        sqlx::query("UPDATE streams SET status = $2 WHERE stream_uid = $1")
            .bind(stream_uid)
            .bind(status)
            .execute(&self.pool)
            .await
            .context("update stream status")?;
        Ok(())
    }

    /// Sets (or, with `None`, clears) a stream's warm throughput.
    pub async fn set_warm_throughput(
        &self,
        stream_uid: i64,
        mibps: Option<i32>,
    ) -> anyhow::Result<()> {
        sqlx::query("UPDATE streams SET warm_throughput_mibps = $2 WHERE stream_uid = $1")
            .bind(stream_uid)
            .bind(mibps)
            .execute(&self.pool)
            .await
            .context("update the stream's warm throughput")?;
        Ok(())
    }

    /// Sets a stream's capacity mode (clearing warm throughput for PROVISIONED).
    pub async fn set_stream_mode(&self, stream_uid: i64, mode: &str) -> anyhow::Result<()> {
        sqlx::query(
            "UPDATE streams SET stream_mode = $2, \
             warm_throughput_mibps = CASE WHEN $2 = 'ON_DEMAND' THEN warm_throughput_mibps END \
             WHERE stream_uid = $1",
        )
        .bind(stream_uid)
        .bind(mode)
        .execute(&self.pool)
        .await
        .context("update the stream's mode")?;
        Ok(())
    }

    /// Shards kept on fewer than `copies` workers (leader included).
    pub async fn under_replicated_shards(&self, copies: usize) -> anyhow::Result<Vec<ShardRow>> {
        let rows = sqlx::query(&format!(
            "{SHARD_SELECT} WHERE 1 + cardinality(replica_worker_ids) < $1 ORDER BY stream_uid, shard_id"
        ))
        .bind(i32::try_from(copies).unwrap_or(i32::MAX))
        .fetch_all(&self.pool)
        .await
        .context("read under-replicated shards")?;
        Ok(rows
            .iter()
            .map(shard_from_row)
            .collect::<sqlx::Result<_>>()?)
    }

    /// ACTIVE streams with a CLOSING shard: a move between workers under
    /// way, or abandoned (resharding closes shards only while UPDATING).
    pub async fn active_streams_with_closing_shards(&self) -> anyhow::Result<Vec<StreamRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {STREAM_COLUMNS} FROM streams WHERE status = 'ACTIVE' AND EXISTS \
             (SELECT 1 FROM shards WHERE shards.stream_uid = streams.stream_uid AND state = 'CLOSING') \
             ORDER BY stream_uid"
        ))
        .fetch_all(&self.pool)
        .await
        .context("list active streams with closing shards")?;
        Ok(rows
            .iter()
            .map(stream_from_row)
            .collect::<sqlx::Result<_>>()?)
    }

    /// Every stream in `status`, of every account.
    pub async fn streams_with_status(&self, status: &str) -> anyhow::Result<Vec<StreamRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {STREAM_COLUMNS} FROM streams WHERE status = $1 ORDER BY stream_uid"
        ))
        .bind(status)
        .fetch_all(&self.pool)
        .await
        .context("list streams by status")?;
        Ok(rows
            .iter()
            .map(stream_from_row)
            .collect::<sqlx::Result<_>>()?)
    }

    /// Every stream in on-demand mode, of every account.
    pub async fn on_demand_streams(&self) -> anyhow::Result<Vec<StreamRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {STREAM_COLUMNS} FROM streams WHERE stream_mode = 'ON_DEMAND' ORDER BY stream_uid"
        ))
        .fetch_all(&self.pool)
        .await
        .context("list on-demand streams")?;
        Ok(rows
            .iter()
            .map(stream_from_row)
            .collect::<sqlx::Result<_>>()?)
    }

    /// The account's billing commitment as of now.
    pub async fn commitment(&self, account_id: &str) -> anyhow::Result<Commitment> {
        let row = sqlx::query(
            "SELECT commitment_status, \
                    (extract(epoch FROM started_at) * 1000)::BIGINT AS started_ms, \
                    (extract(epoch FROM ends_at) * 1000)::BIGINT AS ends_ms, \
                    (extract(epoch FROM now()) * 1000)::BIGINT AS now_ms \
             FROM account_settings WHERE account_id = $1",
        )
        .bind(account_id)
        .fetch_optional(&self.pool)
        .await
        .context("read account settings")?;
        let Some(row) = row else {
            return Ok(Commitment {
                status: "DISABLED".to_owned(),
                started_at_ms: None,
                ends_at_ms: None,
                earliest_end_ms: None,
            });
        };
        let stored: String = row.try_get("commitment_status")?;
        let started_at_ms: Option<i64> = row.try_get("started_ms")?;
        let ends_at_ms: Option<i64> = row.try_get("ends_ms")?;
        let now_ms: i64 = row.try_get("now_ms")?;
        let status = match (stored.as_str(), ends_at_ms) {
            ("ENABLED", _) => "ENABLED",
            ("DISABLED", Some(end)) if end > now_ms => "ENABLED_UNTIL_EARLIEST_ALLOWED_END",
            _ => "DISABLED",
        };
        Ok(Commitment {
            status: status.to_owned(),
            started_at_ms,
            ends_at_ms,
            earliest_end_ms: started_at_ms.map(|s| s + 24 * 3_600_000),
        })
    }

    /// Enables the commitment (starting it now unless it is still running)
    /// or disables it — at once if it ran 24 h, else at its 24 h mark.
    pub async fn set_commitment(&self, account_id: &str, enable: bool) -> anyhow::Result<()> {
        let query = if enable {
            "INSERT INTO account_settings (account_id, commitment_status, started_at) \
             VALUES ($1, 'ENABLED', now()) ON CONFLICT (account_id) DO UPDATE SET \
             commitment_status = 'ENABLED', ends_at = NULL, \
             started_at = CASE WHEN account_settings.ends_at IS NOT NULL AND account_settings.ends_at <= now() \
                               OR account_settings.started_at IS NULL THEN now() \
                               ELSE account_settings.started_at END"
        } else {
            "INSERT INTO account_settings (account_id, commitment_status) VALUES ($1, 'DISABLED') \
             ON CONFLICT (account_id) DO UPDATE SET commitment_status = 'DISABLED', \
             ends_at = CASE WHEN account_settings.commitment_status = 'DISABLED' THEN account_settings.ends_at \
                            ELSE GREATEST(now(), account_settings.started_at + interval '24 hours') END"
        };
        sqlx::query(query)
            .bind(account_id)
            .execute(&self.pool)
            .await
            .context("update account settings")?;
        Ok(())
    }

    /// Sets a stream's maximum record size (KiB).
    pub async fn set_max_record_size(&self, stream_uid: i64, kib: i32) -> anyhow::Result<()> {
        sqlx::query("UPDATE streams SET max_record_size_kib = $2 WHERE stream_uid = $1")
            .bind(stream_uid)
            .bind(kib)
            .execute(&self.pool)
            .await
            .context("update the stream's maximum record size")?;
        Ok(())
    }

    /// Moves a stream from ACTIVE to UPDATING; false if it was not ACTIVE
    /// (two resharding calls never run on one stream at once).
    pub async fn begin_stream_update(&self, stream_uid: i64) -> anyhow::Result<bool> {
        let changed = sqlx::query(
            "UPDATE streams SET status = 'UPDATING' WHERE stream_uid = $1 AND status = 'ACTIVE'",
        )
        .bind(stream_uid)
        .execute(&self.pool)
        .await
        .context("mark stream updating")?;
        Ok(changed.rows_affected() == 1)
    }

    /// Shards an account has open (being-sealed ones included: they count
    /// against the quota until they are closed).
    pub async fn open_shard_count(&self, account_id: &str) -> anyhow::Result<i64> {
        let used: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM shards JOIN streams USING (stream_uid) \
             WHERE streams.account_id = $1 AND shards.state IN ('OPEN', 'CLOSING')",
        )
        .bind(account_id)
        .fetch_one(&self.pool)
        .await
        .context("count the account's open shards")?;
        Ok(used)
    }

    /// Deletes the stream row (its shards go with it).
    pub async fn delete_stream(&self, stream_uid: i64) -> anyhow::Result<()> {
        sqlx::query("DELETE FROM streams WHERE stream_uid = $1")
            .bind(stream_uid)
            .execute(&self.pool)
            .await
            .context("delete stream")?;
        Ok(())
    }

    pub async fn get_stream(
        &self,
        account_id: &str,
        stream_name: &str,
    ) -> anyhow::Result<Option<StreamRow>> {
        let row = sqlx::query(&format!(
            "SELECT {STREAM_COLUMNS} FROM streams WHERE account_id = $1 AND stream_name = $2"
        ))
        .bind(account_id)
        .bind(stream_name)
        .fetch_optional(&self.pool)
        .await
        .context("read stream")?;
        Ok(row.as_ref().map(stream_from_row).transpose()?)
    }

    pub async fn get_stream_by_uid(&self, stream_uid: i64) -> anyhow::Result<Option<StreamRow>> {
        let row = sqlx::query(&format!(
            "SELECT {STREAM_COLUMNS} FROM streams WHERE stream_uid = $1"
        ))
        .bind(stream_uid)
        .fetch_optional(&self.pool)
        .await
        .context("read stream")?;
        Ok(row.as_ref().map(stream_from_row).transpose()?)
    }

    /// The account's streams, sorted by name.
    pub async fn list_streams(&self, account_id: &str) -> anyhow::Result<Vec<StreamRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {STREAM_COLUMNS} FROM streams WHERE account_id = $1 ORDER BY stream_name"
        ))
        .bind(account_id)
        .fetch_all(&self.pool)
        .await
        .context("list streams")?;
        Ok(rows
            .iter()
            .map(stream_from_row)
            .collect::<sqlx::Result<_>>()?)
    }

    /// A stream's shards in shard-id order.
    pub async fn shards_of(&self, stream_uid: i64) -> anyhow::Result<Vec<ShardRow>> {
        let rows = sqlx::query(&format!(
            "{SHARD_SELECT} WHERE stream_uid = $1 ORDER BY shard_id"
        ))
        .bind(stream_uid)
        .fetch_all(&self.pool)
        .await
        .context("read shards")?;
        Ok(rows
            .iter()
            .map(shard_from_row)
            .collect::<sqlx::Result<_>>()?)
    }

    /// Records an UpdateShardCount call, unless the stream already had
    /// `limit` in the last 24 hours; returns whether it was recorded.
    pub async fn record_shard_count_update(
        &self,
        stream_uid: i64,
        limit: i64,
    ) -> anyhow::Result<bool> {
        let mut transaction = self.pool.begin().await.context("begin")?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('shard_count_updates'), $1::int)")
            .bind((stream_uid % i64::from(i32::MAX)) as i32)
            .execute(&mut *transaction)
            .await
            .context("lock a stream's shard-count updates")?;
        let recent: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM shard_count_updates \
             WHERE stream_uid = $1 AND updated_at > now() - interval '24 hours'",
        )
        .bind(stream_uid)
        .fetch_one(&mut *transaction)
        .await
        .context("count recent shard-count updates")?;
        if recent >= limit {
            return Ok(false);
        }
        sqlx::query("INSERT INTO shard_count_updates (stream_uid) VALUES ($1)")
            .bind(stream_uid)
            .execute(&mut *transaction)
            .await
            .context("record a shard-count update")?;
        transaction.commit().await.context("commit")?;
        Ok(true)
    }

    /// The shards a worker leads, whatever their state (a closed shard
    /// still needs a leader to serve its reads).
    pub async fn shards_led_by(&self, worker_id: &str) -> anyhow::Result<Vec<ShardRow>> {
        let rows = sqlx::query(&format!(
            "{SHARD_SELECT} WHERE leader_worker_id = $1 ORDER BY stream_uid, shard_id"
        ))
        .bind(worker_id)
        .fetch_all(&self.pool)
        .await
        .context("read a worker's led shards")?;
        Ok(rows
            .iter()
            .map(shard_from_row)
            .collect::<sqlx::Result<_>>()?)
    }

    /// Every shard a worker holds a copy of — of its current segment (as
    /// leader or replica) or of a sealed one — by stream then shard id.
    pub async fn shards_on_worker(&self, worker_id: &str) -> anyhow::Result<Vec<ShardRow>> {
        let rows = sqlx::query(&format!(
            "{SHARD_SELECT} WHERE leader_worker_id = $1 OR $1 = ANY(replica_worker_ids) \
             OR sealed_segments @> jsonb_build_array(jsonb_build_object('worker_ids', jsonb_build_array($1::text))) \
             ORDER BY stream_uid, shard_id"
        ))
        .bind(worker_id)
        .fetch_all(&self.pool)
        .await
        .context("read a worker's shards")?;
        Ok(rows
            .iter()
            .map(shard_from_row)
            .collect::<sqlx::Result<_>>()?)
    }

    /// How many current segments of shards not yet closed each worker
    /// holds a copy of (a placement weighs workers by it).
    pub async fn copies_per_worker(&self) -> anyhow::Result<HashMap<String, usize>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT worker_id, count(*) FROM shards, \
             unnest(array_prepend(leader_worker_id, replica_worker_ids)) AS worker_id \
             WHERE state <> 'CLOSED' GROUP BY worker_id",
        )
        .fetch_all(&self.pool)
        .await
        .context("count copies per worker")?;
        Ok(rows
            .into_iter()
            .map(|(worker, count)| (worker, usize::try_from(count).unwrap_or(usize::MAX)))
            .collect())
    }

    pub async fn upsert_worker(
        &self,
        worker_id: &str,
        availability_zone: &str,
        address: &str,
    ) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO workers (worker_id, availability_zone, address) VALUES ($1, $2, $3) \
             ON CONFLICT (worker_id) DO UPDATE SET availability_zone = EXCLUDED.availability_zone, \
             address = EXCLUDED.address, last_heartbeat_at = now()",
        )
        .bind(worker_id)
        .bind(availability_zone)
        .bind(address)
        .execute(&self.pool)
        .await
        .context("register worker")?;
        Ok(())
    }

    /// Records a heartbeat; false if the worker is unknown.
    pub async fn heartbeat(&self, worker_id: &str) -> anyhow::Result<bool> {
        let result =
            sqlx::query("UPDATE workers SET last_heartbeat_at = now() WHERE worker_id = $1")
                .bind(worker_id)
                .execute(&self.pool)
                .await
                .context("record heartbeat")?;
        Ok(result.rows_affected() == 1)
    }

    pub async fn list_workers(&self) -> anyhow::Result<Vec<WorkerRow>> {
        let rows = sqlx::query(
            "SELECT worker_id, availability_zone, address, \
             EXTRACT(EPOCH FROM (now() - last_heartbeat_at))::float8 AS age FROM workers ORDER BY worker_id",
        )
        .fetch_all(&self.pool)
        .await
        .context("list workers")?;
        rows.iter()
            .map(|row| {
                Ok(WorkerRow {
                    worker_id: row.try_get("worker_id")?,
                    availability_zone: row.try_get("availability_zone")?,
                    address: row.try_get("address")?,
                    seconds_since_heartbeat: row.try_get("age")?,
                })
            })
            .collect::<sqlx::Result<_>>()
            .map_err(Into::into)
    }

    /// Starts a change-log transaction; see [`ChangeBatch`].
    pub async fn begin_changes(&self) -> anyhow::Result<ChangeBatch> {
        let mut transaction = self
            .pool
            .begin()
            .await
            .context("begin change-log transaction")?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CHANGE_LOG_LOCK)
            .execute(&mut *transaction)
            .await
            .context("lock the change log")?;
        let row = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM shard_map_changes")
            .fetch_one(&mut *transaction)
            .await
            .context("read change-log head")?;
        let head: i64 = row.try_get("v")?;
        Ok(ChangeBatch {
            transaction,
            next_version: head + 1,
        })
    }

    /// The change-log head (0 when empty).
    pub async fn latest_version(&self) -> anyhow::Result<i64> {
        let row = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM shard_map_changes")
            .fetch_one(&self.pool)
            .await
            .context("read change-log head")?;
        Ok(row.try_get("v")?)
    }

    /// Changes with version > `after`, oldest first, at most `limit`.
    pub async fn changes_after(
        &self,
        after: i64,
        limit: i64,
    ) -> anyhow::Result<Vec<(i64, Vec<u8>)>> {
        let rows = sqlx::query("SELECT version, entry FROM shard_map_changes WHERE version > $1 ORDER BY version LIMIT $2")
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .context("read change log")?;
        rows.iter()
            .map(|row| Ok((row.try_get("version")?, row.try_get("entry")?)))
            .collect::<sqlx::Result<_>>()
            .map_err(Into::into)
    }

    /// Every live entry and the version they are current as of, read in one
    /// repeatable-read transaction so the two agree.
    pub async fn snapshot(&self) -> anyhow::Result<(Vec<Vec<u8>>, i64)> {
        let mut transaction = self.pool.begin().await.context("begin snapshot")?;
        sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
            .execute(&mut *transaction)
            .await
            .context("set snapshot isolation")?;
        let head: i64 = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM shard_map_changes")
            .fetch_one(&mut *transaction)
            .await
            .context("read change-log head")?
            .try_get("v")?;
        let entries =
            sqlx::query("SELECT entry FROM shard_map_entries ORDER BY stream_uid, shard_id")
                .fetch_all(&mut *transaction)
                .await
                .context("read shard map")?
                .iter()
                .map(|row| row.try_get("entry"))
                .collect::<sqlx::Result<Vec<Vec<u8>>>>()?;
        transaction.commit().await.context("end snapshot")?;
        Ok((entries, head))
    }

    /// The live entries of one stream.
    pub async fn stream_entries(
        &self,
        account_id: &str,
        stream_name: &str,
    ) -> anyhow::Result<Vec<Vec<u8>>> {
        let rows = sqlx::query(
            "SELECT entry FROM shard_map_entries WHERE account_id = $1 AND stream_name = $2 ORDER BY shard_id",
        )
        .bind(account_id)
        .bind(stream_name)
        .fetch_all(&self.pool)
        .await
        .context("read stream entries")?;
        rows.iter()
            .map(|row| row.try_get("entry"))
            .collect::<sqlx::Result<_>>()
            .map_err(Into::into)
    }
}

/// One atomic group of shard-map changes. Versions are handed out in order
/// with [`ChangeBatch::next_version`]; nothing is visible until `commit`.
pub struct ChangeBatch {
    transaction: Transaction<'static, Postgres>,
    next_version: i64,
}

/// Identity of a change-log entry.
#[derive(Debug, Clone)]
pub struct EntryKey<'a> {
    pub stream_uid: i64,
    pub shard_id: &'a str,
    pub account_id: &'a str,
    pub stream_name: &'a str,
}

impl ChangeBatch {
    /// The version the next recorded change will get.
    pub fn next_version(&self) -> i64 {
        self.next_version
    }

    pub async fn insert_shard(&mut self, shard: &ShardRow) -> anyhow::Result<()> {
        sqlx::query(
            "INSERT INTO shards (stream_uid, shard_id, starting_hash_key, ending_hash_key, parent_shard_id, \
             adjacent_parent_shard_id, sequence_base, ending_offset, state, leader_worker_id, replica_worker_ids, epoch) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12)",
        )
        .bind(shard.stream_uid)
        .bind(&shard.shard_id)
        .bind(&shard.starting_hash_key)
        .bind(&shard.ending_hash_key)
        .bind(&shard.parent_shard_id)
        .bind(&shard.adjacent_parent_shard_id)
        .bind(shard.sequence_base as i64)
        .bind(shard.ending_offset.map(|offset| offset as i64))
        .bind(&shard.state)
        .bind(&shard.leader_worker_id)
        .bind(&shard.replica_worker_ids)
        .bind(shard.epoch as i64)
        .execute(&mut *self.transaction)
        .await
        .with_context(|| format!("insert shard {}", shard.shard_id))?;
        Ok(())
    }

    /// Moves a shard's leadership: new leader, replicas and epoch — only
    /// from epoch `shard.epoch - 1` and the state the caller read, so two
    /// racing changes cannot both apply.
    pub async fn update_placement(&mut self, shard: &ShardRow) -> anyhow::Result<()> {
        let moved = sqlx::query(
            "UPDATE shards SET leader_worker_id = $3, replica_worker_ids = $4, epoch = $5 \
             WHERE stream_uid = $1 AND shard_id = $2 AND epoch = $5 - 1 AND state = $6",
        )
        .bind(shard.stream_uid)
        .bind(&shard.shard_id)
        .bind(&shard.leader_worker_id)
        .bind(&shard.replica_worker_ids)
        .bind(shard.epoch as i64)
        .bind(&shard.state)
        .execute(&mut *self.transaction)
        .await
        .with_context(|| format!("move shard {}", shard.shard_id))?;
        anyhow::ensure!(
            moved.rows_affected() == 1,
            "shard {} is no longer at epoch {}: its placement changed meanwhile",
            shard.shard_id,
            shard.epoch - 1
        );
        Ok(())
    }

    /// Sets a shard's replicas without a new epoch (the leader keeps
    /// writing; a new replica is filled from it) — only from the epoch,
    /// state and replicas the caller read.
    pub async fn set_replicas(
        &mut self,
        shard: &ShardRow,
        read_replicas: &[String],
    ) -> anyhow::Result<()> {
        let changed = sqlx::query(
            "UPDATE shards SET replica_worker_ids = $3 \
             WHERE stream_uid = $1 AND shard_id = $2 AND epoch = $4 AND state = $5 \
             AND replica_worker_ids = $6",
        )
        .bind(shard.stream_uid)
        .bind(&shard.shard_id)
        .bind(&shard.replica_worker_ids)
        .bind(shard.epoch as i64)
        .bind(&shard.state)
        .bind(read_replicas)
        .execute(&mut *self.transaction)
        .await
        .with_context(|| format!("add replicas to shard {}", shard.shard_id))?;
        anyhow::ensure!(
            changed.rows_affected() == 1,
            "shard {} changed meanwhile",
            shard.shard_id
        );
        Ok(())
    }

    /// Starts sealing an open shard: CLOSING, only from OPEN at `shard.epoch`
    /// (a failover meanwhile makes the caller try again).
    pub async fn begin_closing(&mut self, shard: &ShardRow) -> anyhow::Result<()> {
        let changed = sqlx::query(
            "UPDATE shards SET state = 'CLOSING' \
             WHERE stream_uid = $1 AND shard_id = $2 AND state = 'OPEN' AND epoch = $3",
        )
        .bind(shard.stream_uid)
        .bind(&shard.shard_id)
        .bind(shard.epoch as i64)
        .execute(&mut *self.transaction)
        .await
        .with_context(|| format!("close shard {}", shard.shard_id))?;
        anyhow::ensure!(
            changed.rows_affected() == 1,
            "shard {} is no longer open at epoch {}",
            shard.shard_id,
            shard.epoch
        );
        Ok(())
    }

    /// Continues a CLOSING shard in its next segment (worker balancing):
    /// `shard` carries the new leader, replicas, epoch, segment and the
    /// sealed segment appended to the list — only from CLOSING at
    /// `shard.epoch - 1` and the segment the caller read.
    pub async fn relocate(&mut self, shard: &ShardRow) -> anyhow::Result<()> {
        let sealed =
            serde_json::to_string(&shard.sealed_segments).context("encode sealed segments")?;
        let changed = sqlx::query(
            "UPDATE shards SET state = 'OPEN', leader_worker_id = $3, replica_worker_ids = $4, \
             epoch = $5, segment_index = $6, segment_start_offset = $7, sealed_segments = $8::jsonb \
             WHERE stream_uid = $1 AND shard_id = $2 AND state = 'CLOSING' AND epoch = $5 - 1 \
             AND segment_index = $6 - 1",
        )
        .bind(shard.stream_uid)
        .bind(&shard.shard_id)
        .bind(&shard.leader_worker_id)
        .bind(&shard.replica_worker_ids)
        .bind(shard.epoch as i64)
        .bind(i32::try_from(shard.segment_index).context("segment index")?)
        .bind(shard.segment_start_offset as i64)
        .bind(sealed)
        .execute(&mut *self.transaction)
        .await
        .with_context(|| format!("relocate shard {}", shard.shard_id))?;
        anyhow::ensure!(
            changed.rows_affected() == 1,
            "shard {} is not being closed at epoch {}",
            shard.shard_id,
            shard.epoch - 1
        );
        Ok(())
    }

    /// Reopens a CLOSING shard whose split or merge was abandoned.
    pub async fn reopen(&mut self, shard: &ShardRow) -> anyhow::Result<()> {
        let changed = sqlx::query(
            "UPDATE shards SET state = 'OPEN' \
             WHERE stream_uid = $1 AND shard_id = $2 AND state = 'CLOSING' AND epoch = $3",
        )
        .bind(shard.stream_uid)
        .bind(&shard.shard_id)
        .bind(shard.epoch as i64)
        .execute(&mut *self.transaction)
        .await
        .with_context(|| format!("reopen shard {}", shard.shard_id))?;
        anyhow::ensure!(
            changed.rows_affected() == 1,
            "shard {} is not being closed",
            shard.shard_id
        );
        Ok(())
    }

    /// Seals a CLOSING shard: CLOSED, holding the offsets below `ending_offset`.
    pub async fn finish_closing(&mut self, shard: &ShardRow) -> anyhow::Result<()> {
        let changed = sqlx::query(
            "UPDATE shards SET state = 'CLOSED', ending_offset = $3 \
             WHERE stream_uid = $1 AND shard_id = $2 AND state = 'CLOSING' AND epoch = $4",
        )
        .bind(shard.stream_uid)
        .bind(&shard.shard_id)
        .bind(shard.ending_offset.map(|offset| offset as i64))
        .bind(shard.epoch as i64)
        .execute(&mut *self.transaction)
        .await
        .with_context(|| format!("seal shard {}", shard.shard_id))?;
        anyhow::ensure!(
            changed.rows_affected() == 1,
            "shard {} is not being closed",
            shard.shard_id
        );
        Ok(())
    }

    /// Records a change whose encoded entry carries `next_version()`;
    /// a tombstone removes the entry from the live map.
    pub async fn record(
        &mut self,
        key: &EntryKey<'_>,
        entry: &[u8],
        tombstone: bool,
    ) -> anyhow::Result<i64> {
        let version = self.next_version;
        sqlx::query("INSERT INTO shard_map_changes (version, stream_uid, shard_id, entry) VALUES ($1, $2, $3, $4)")
            .bind(version)
            .bind(key.stream_uid)
            .bind(key.shard_id)
            .bind(entry)
            .execute(&mut *self.transaction)
            .await
            .context("append to change log")?;
        if tombstone {
            sqlx::query("DELETE FROM shard_map_entries WHERE stream_uid = $1 AND shard_id = $2")
                .bind(key.stream_uid)
                .bind(key.shard_id)
                .execute(&mut *self.transaction)
                .await
                .context("remove live entry")?;
        } else {
            sqlx::query(
                "INSERT INTO shard_map_entries (stream_uid, shard_id, account_id, stream_name, version, entry) \
                 VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (stream_uid, shard_id) \
                 DO UPDATE SET version = EXCLUDED.version, entry = EXCLUDED.entry",
            )
            .bind(key.stream_uid)
            .bind(key.shard_id)
            .bind(key.account_id)
            .bind(key.stream_name)
            .bind(version)
            .bind(entry)
            .execute(&mut *self.transaction)
            .await
            .context("update live entry")?;
        }
        self.next_version += 1;
        Ok(version)
    }

    pub async fn commit(self) -> anyhow::Result<()> {
        self.transaction
            .commit()
            .await
            .context("commit change-log transaction")
    }
}
