//! The shard-map change log: versioned, gap-free batches of shard and
//! consumer changes ([`ChangeBatch`]), and the reads subscribers build their
//! maps from.
//!
//! Invariant: change-log versions are assigned under a transaction-scoped
//! advisory lock, so they commit in increasing order with no gaps, and a
//! subscriber that sees version `v + 2` before `v + 1` knows it missed one.

use freshet_types::{ShardState, StreamArn};
use sqlx::{Postgres, Row, Transaction};

use crate::error::{DbContext as _, MetastoreError, Result};
use crate::rows::ShardRow;
use crate::MetaStore;

/// What a change-log row is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoggedKind {
    /// A shard: the entry is an encoded `ShardMapEntry`.
    Shard,
    /// An enhanced fan-out consumer: an encoded `ConsumerEntry`.
    Consumer,
}

impl LoggedKind {
    fn as_str(self) -> &'static str {
        match self {
            LoggedKind::Shard => "shard",
            LoggedKind::Consumer => "consumer",
        }
    }

    fn parse(kind: &str) -> Result<LoggedKind> {
        match kind {
            "shard" => Ok(LoggedKind::Shard),
            "consumer" => Ok(LoggedKind::Consumer),
            other => Err(MetastoreError::Corrupt(format!(
                "change-log row of unknown kind {other:?}"
            ))),
        }
    }
}

/// One row of the change log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoggedChange {
    pub version: i64,
    pub kind: LoggedKind,
    pub entry: Vec<u8>,
}

fn logged_changes(rows: &[sqlx::postgres::PgRow]) -> Result<Vec<LoggedChange>> {
    rows.iter()
        .map(|row| {
            Ok(LoggedChange {
                version: row.try_get("version")?,
                kind: LoggedKind::parse(row.try_get("kind")?)?,
                entry: row.try_get("entry")?,
            })
        })
        .collect()
}

/// Advisory-lock key that serialises change-log writers ("fresh" in ASCII).
const CHANGE_LOG_LOCK: i64 = 0x0066_7265_7368;

impl MetaStore {
    /// Starts a change-log transaction; see [`ChangeBatch`].
    pub async fn begin_changes(&self) -> Result<ChangeBatch> {
        let mut transaction = self.pool.begin().await.db("begin change-log transaction")?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CHANGE_LOG_LOCK)
            .execute(&mut *transaction)
            .await
            .db("lock the change log")?;
        let row = sqlx::query(
            "SELECT COALESCE(MAX(version), 0) AS v, pg_backend_pid() AS pid FROM shard_map_changes",
        )
        .fetch_one(&mut *transaction)
        .await
        .db("read change-log head")?;
        let head: i64 = row.try_get("v")?;
        let backend: i32 = row.try_get("pid")?;
        Ok(ChangeBatch {
            transaction,
            next_version: head + 1,
            backend,
        })
    }

    /// The changes after `after`, read once the outcome of every change-log
    /// transaction is final: after a COMMIT whose answer was lost, the
    /// session that sent it (`backend`, [`ChangeBatch::backend`]) is ended
    /// — a COMMIT it had not yet carried out is rolled back — and the read
    /// waits for the change-log lock any transaction still holds.
    pub async fn settled_changes_after(
        &self,
        after: i64,
        backend: Option<i32>,
    ) -> Result<Vec<LoggedChange>> {
        if let Some(backend) = backend {
            sqlx::query("SELECT pg_terminate_backend($1)")
                .bind(backend)
                .execute(&self.pool)
                .await
                .db("end the session of a commit with a lost answer")?;
        }
        let mut transaction = self.pool.begin().await.db("begin change-log read")?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(CHANGE_LOG_LOCK)
            .execute(&mut *transaction)
            .await
            .db("lock the change log")?;
        let rows = sqlx::query(
            "SELECT version, kind, entry FROM shard_map_changes WHERE version > $1 ORDER BY version",
        )
        .bind(after)
        .fetch_all(&mut *transaction)
        .await
        .db("read change log")?;
        transaction.commit().await.db("end change-log read")?;
        logged_changes(&rows)
    }

    /// The change-log head (0 when empty).
    pub async fn latest_version(&self) -> Result<i64> {
        let row = sqlx::query("SELECT COALESCE(MAX(version), 0) AS v FROM shard_map_changes")
            .fetch_one(&self.pool)
            .await
            .db("read change-log head")?;
        Ok(row.try_get("v")?)
    }

    /// Changes with version > `after`, oldest first, at most `limit`.
    pub async fn changes_after(&self, after: i64, limit: i64) -> Result<Vec<LoggedChange>> {
        let rows = sqlx::query("SELECT version, kind, entry FROM shard_map_changes WHERE version > $1 ORDER BY version LIMIT $2")
            .bind(after)
            .bind(limit)
            .fetch_all(&self.pool)
            .await
            .db("read change log")?;
        logged_changes(&rows)
    }

    /// The live entries of the stream `arn` names.
    pub async fn stream_entries(&self, arn: &StreamArn) -> Result<Vec<Vec<u8>>> {
        let rows = sqlx::query(
            "SELECT entry FROM shard_map_entries \
             WHERE account_id = $1 AND region = $2 AND stream_name = $3 ORDER BY shard_id",
        )
        .bind(&arn.account_id)
        .bind(&arn.region)
        .bind(&arn.stream_name)
        .fetch_all(&self.pool)
        .await
        .db("read stream entries")?;
        rows.iter()
            .map(|row| row.try_get("entry"))
            .collect::<sqlx::Result<_>>()
            .db("decode change-log rows")
    }
}

/// One atomic group of shard-map changes. Versions are handed out in order
/// with [`ChangeBatch::next_version`]; nothing is visible until `commit`.
pub struct ChangeBatch {
    pub(crate) transaction: Transaction<'static, Postgres>,
    next_version: i64,
    /// The Postgres session (backend pid) the transaction runs in.
    backend: i32,
}

/// Identity of a change-log entry.
#[derive(Debug, Clone)]
pub struct EntryKey<'a> {
    pub stream_uid: i64,
    pub shard_id: &'a str,
    pub account_id: &'a str,
    pub region: &'a str,
    pub stream_name: &'a str,
}

impl ChangeBatch {
    /// The version the next recorded change will get.
    pub fn next_version(&self) -> i64 {
        self.next_version
    }

    /// The Postgres session the batch runs in: if its COMMIT's answer is
    /// lost, [`MetaStore::settled_changes_after`] ends it before reading.
    pub fn backend(&self) -> i32 {
        self.backend
    }

    /// Inserts a shard. It opened with its stream if it has no parent,
    /// else at this batch's transaction time — the time its parents'
    /// closing is stamped with in the same batch (`change_state`), so no
    /// instant falls between a parent and its children.
    pub async fn insert_shard(&mut self, shard: &ShardRow) -> Result<()> {
        sqlx::query(
            "INSERT INTO shards (stream_uid, shard_id, starting_hash_key, ending_hash_key, parent_shard_id, \
             adjacent_parent_shard_id, sequence_base, ending_offset, state, leader_worker_id, replica_worker_ids, epoch, \
             voter_ids, next_voter_ids, opened_at_ms) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, \
             COALESCE((SELECT created_at_ms FROM streams WHERE stream_uid = $1 AND $5::TEXT IS NULL), \
                      (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT))",
        )
        .bind(shard.stream_uid)
        .bind(&shard.shard_id)
        .bind(&shard.starting_hash_key)
        .bind(&shard.ending_hash_key)
        .bind(&shard.parent_shard_id)
        .bind(&shard.adjacent_parent_shard_id)
        .bind(shard.sequence_base as i64)
        .bind(shard.ending_offset.map(|offset| offset as i64))
        .bind(shard.state.as_str())
        .bind(&shard.leader_worker_id)
        .bind(&shard.replica_worker_ids)
        .bind(shard.epoch as i64)
        .bind(shard.voters.to_lists().0)
        .bind(shard.voters.to_lists().1)
        .execute(&mut *self.transaction)
        .await
        .db_with(|| format!("insert shard {}", shard.shard_id))?;
        Ok(())
    }

    /// Moves a shard's leadership: new leader, replicas, voters and epoch
    /// — only from epoch `shard.epoch - 1` and the state the caller read,
    /// so two racing changes cannot both apply.
    pub async fn update_placement(&mut self, shard: &ShardRow) -> Result<()> {
        let (voters, next_voters) = shard.voters.to_lists();
        let moved = sqlx::query(
            "UPDATE shards SET leader_worker_id = $3, replica_worker_ids = $4, epoch = $5, \
             voter_ids = $7, next_voter_ids = $8 \
             WHERE stream_uid = $1 AND shard_id = $2 AND epoch = $5 - 1 AND state = $6",
        )
        .bind(shard.stream_uid)
        .bind(&shard.shard_id)
        .bind(&shard.leader_worker_id)
        .bind(&shard.replica_worker_ids)
        .bind(shard.epoch as i64)
        .bind(shard.state.as_str())
        .bind(voters)
        .bind(next_voters)
        .execute(&mut *self.transaction)
        .await
        .db_with(|| format!("move shard {}", shard.shard_id))?;
        one_row_changed(moved.rows_affected(), || {
            format!(
                "shard {} is no longer at epoch {}: its placement changed meanwhile",
                shard.shard_id,
                shard.epoch - 1
            )
        })
    }

    /// Changes a shard's voters and replicas at its epoch (a joint
    /// configuration left, learners promoted, deposed copies let go) — only
    /// from the epoch, voters and replicas the caller read in `read`.
    pub async fn reconfigure(&mut self, shard: &ShardRow, read: &ShardRow) -> Result<()> {
        let (voters, next_voters) = shard.voters.to_lists();
        let (read_voters, read_next_voters) = read.voters.to_lists();
        let changed = sqlx::query(
            "UPDATE shards SET voter_ids = $3, next_voter_ids = $4, replica_worker_ids = $5 \
             WHERE stream_uid = $1 AND shard_id = $2 AND epoch = $6 AND leader_worker_id = $7 \
             AND voter_ids = $8 AND next_voter_ids = $9 AND replica_worker_ids = $10",
        )
        .bind(shard.stream_uid)
        .bind(&shard.shard_id)
        .bind(voters)
        .bind(next_voters)
        .bind(&shard.replica_worker_ids)
        .bind(read.epoch as i64)
        .bind(&read.leader_worker_id)
        .bind(read_voters)
        .bind(read_next_voters)
        .bind(&read.replica_worker_ids)
        .execute(&mut *self.transaction)
        .await
        .db_with(|| format!("change the voters of shard {}", shard.shard_id))?;
        one_row_changed(changed.rows_affected(), || {
            format!("shard {} changed meanwhile", shard.shard_id)
        })
    }

    /// Starts sealing an open shard: CLOSING, only from OPEN at `shard.epoch`
    /// (a failover meanwhile makes the caller try again), at the close
    /// generation after the one read (`shard.close_generation`).
    pub async fn begin_closing(&mut self, shard: &ShardRow) -> Result<()> {
        self.change_state(shard, ShardState::Open, ShardState::Closing)
            .await
    }

    /// Reopens a CLOSING shard whose split or merge was abandoned, at the
    /// next close generation.
    pub async fn reopen(&mut self, shard: &ShardRow) -> Result<()> {
        self.change_state(shard, ShardState::Closing, ShardState::Open)
            .await
    }

    /// Seals a CLOSING shard: CLOSED, holding the offsets below
    /// `ending_offset` — only at the close generation it was sealed at.
    pub async fn finish_closing(&mut self, shard: &ShardRow) -> Result<()> {
        self.change_state(shard, ShardState::Closing, ShardState::Closed)
            .await
    }

    /// Moves one shard from state `from` to `to` — a change
    /// [`ShardState::may_become`] allows — only while it is still in `from`
    /// at `shard.epoch`; CLOSED also fixes its `ending_offset`. Entering or
    /// leaving CLOSING for OPEN takes the shard to `shard.close_generation`
    /// from the one before; CLOSED keeps the generation, which must be
    /// `shard.close_generation`.
    async fn change_state(
        &mut self,
        shard: &ShardRow,
        from: ShardState,
        to: ShardState,
    ) -> Result<()> {
        let epoch = shard.epoch;
        let generation = i64::try_from(shard.close_generation).map_err(|_| {
            MetastoreError::Corrupt(format!("close generation of {}", shard.shard_id))
        })?;
        let bumps = to != ShardState::Closed;
        let from_generation = if bumps { generation - 1 } else { generation };
        if !from.may_become(to) {
            return Err(MetastoreError::Conflict(format!(
                "shard {} may not go from {from} to {to}",
                shard.shard_id
            )));
        }
        let changed = sqlx::query(
            "UPDATE shards SET state = $3, close_generation = $7, \
             ending_offset = CASE WHEN $3 = 'CLOSED' THEN $6 ELSE ending_offset END, \
             closed_at_ms = CASE WHEN $3 = 'CLOSED' \
               THEN (EXTRACT(EPOCH FROM now()) * 1000)::BIGINT ELSE closed_at_ms END \
             WHERE stream_uid = $1 AND shard_id = $2 AND state = $4 AND epoch = $5 \
             AND close_generation = $8",
        )
        .bind(shard.stream_uid)
        .bind(&shard.shard_id)
        .bind(to.as_str())
        .bind(from.as_str())
        .bind(epoch as i64)
        .bind(shard.ending_offset.map(|offset| offset as i64))
        .bind(generation)
        .bind(from_generation)
        .execute(&mut *self.transaction)
        .await
        .db_with(|| format!("change shard {} from {from} to {to}", shard.shard_id))?;
        one_row_changed(changed.rows_affected(), || {
            format!(
                "shard {} is no longer {from} at epoch {epoch} and close generation {from_generation}",
                shard.shard_id
            )
        })
    }

    /// Continues a CLOSING shard in its next segment (worker balancing):
    /// `shard` carries the new leader, replicas, epoch, segment and the
    /// sealed segment appended to the list, and the next close generation
    /// — only from CLOSING at `shard.epoch - 1`, the segment and the close
    /// generation before.
    pub async fn relocate(&mut self, shard: &ShardRow) -> Result<()> {
        debug_assert!(ShardState::Closing.may_become(ShardState::Open));
        let sealed = serde_json::to_string(&shard.sealed_segments)
            .map_err(|e| MetastoreError::Corrupt(format!("encode sealed segments: {e}")))?;
        let segment_index = i32::try_from(shard.segment_index).map_err(|_| {
            MetastoreError::Corrupt(format!("segment index {}", shard.segment_index))
        })?;
        let changed = sqlx::query(
            "UPDATE shards SET state = 'OPEN', leader_worker_id = $3, replica_worker_ids = $4, \
             epoch = $5, segment_index = $6, segment_start_offset = $7, sealed_segments = $8::jsonb, \
             voter_ids = $9, next_voter_ids = $10, close_generation = $11 \
             WHERE stream_uid = $1 AND shard_id = $2 AND state = 'CLOSING' AND epoch = $5 - 1 \
             AND segment_index = $6 - 1 AND close_generation = $11 - 1",
        )
        .bind(shard.stream_uid)
        .bind(&shard.shard_id)
        .bind(&shard.leader_worker_id)
        .bind(&shard.replica_worker_ids)
        .bind(shard.epoch as i64)
        .bind(segment_index)
        .bind(shard.segment_start_offset as i64)
        .bind(sealed)
        .bind(shard.voters.to_lists().0)
        .bind(shard.voters.to_lists().1)
        .bind(shard.close_generation as i64)
        .execute(&mut *self.transaction)
        .await
        .db_with(|| format!("relocate shard {}", shard.shard_id))?;
        one_row_changed(changed.rows_affected(), || {
            format!(
                "shard {} is not being closed at epoch {}",
                shard.shard_id,
                shard.epoch - 1
            )
        })
    }

    /// Records a change whose encoded entry carries `next_version()`;
    /// a tombstone removes the entry from the live map.
    pub async fn record(
        &mut self,
        key: &EntryKey<'_>,
        entry: &[u8],
        tombstone: bool,
    ) -> Result<i64> {
        let version = self.next_version;
        self.append(LoggedKind::Shard, key.stream_uid, key.shard_id, entry)
            .await?;
        if tombstone {
            sqlx::query("DELETE FROM shard_map_entries WHERE stream_uid = $1 AND shard_id = $2")
                .bind(key.stream_uid)
                .bind(key.shard_id)
                .execute(&mut *self.transaction)
                .await
                .db("remove live entry")?;
        } else {
            sqlx::query(
                "INSERT INTO shard_map_entries (stream_uid, shard_id, account_id, region, stream_name, version, entry) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (stream_uid, shard_id) \
                 DO UPDATE SET version = EXCLUDED.version, entry = EXCLUDED.entry",
            )
            .bind(key.stream_uid)
            .bind(key.shard_id)
            .bind(key.account_id)
            .bind(key.region)
            .bind(key.stream_name)
            .bind(version)
            .bind(entry)
            .execute(&mut *self.transaction)
            .await
            .db("update live entry")?;
        }
        self.next_version += 1;
        Ok(version)
    }

    /// Records a change to the consumer `consumer_name` of the stream
    /// `stream_uid`, whose encoded entry carries `next_version()`.
    pub async fn record_consumer(
        &mut self,
        stream_uid: i64,
        consumer_name: &str,
        entry: &[u8],
    ) -> Result<i64> {
        let version = self.next_version;
        self.append(LoggedKind::Consumer, stream_uid, consumer_name, entry)
            .await?;
        self.next_version += 1;
        Ok(version)
    }

    /// Appends one row at `next_version()` (not advanced here).
    async fn append(
        &mut self,
        kind: LoggedKind,
        stream_uid: i64,
        name: &str,
        entry: &[u8],
    ) -> Result<()> {
        sqlx::query("INSERT INTO shard_map_changes (version, stream_uid, shard_id, entry, kind) VALUES ($1, $2, $3, $4, $5)")
            .bind(self.next_version)
            .bind(stream_uid)
            .bind(name)
            .bind(entry)
            .bind(kind.as_str())
            .execute(&mut *self.transaction)
            .await
            .db("append to change log")?;
        Ok(())
    }

    pub async fn commit(self) -> Result<()> {
        self.transaction
            .commit()
            .await
            .db("commit change-log transaction")
    }
}
/// A guarded update must change exactly its one row; none means the row
/// moved on since the caller read it.
fn one_row_changed(rows: u64, conflict: impl FnOnce() -> String) -> Result<()> {
    if rows == 1 {
        Ok(())
    } else {
        Err(MetastoreError::Conflict(conflict()))
    }
}
