//! Shards: reads by stream, by worker, and the counts placement and the
//! account quota need. Shard changes go through the change log
//! ([`crate::ChangeBatch`]).

use std::collections::HashMap;

use sqlx::Row as _;

use crate::error::{DbContext as _, Result};
use crate::rows::{decode_all, shard_from_row, ShardRow, SHARD_SELECT};
use crate::MetaStore;

/// When a shard opened and, once CLOSED, closed (ms since the Unix epoch,
/// by Postgres's clock).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardLifetime {
    pub opened_at_ms: i64,
    pub closed_at_ms: Option<i64>,
}

impl MetaStore {
    /// A stream's shards in shard-id order.
    pub async fn shards_of(&self, stream_uid: i64) -> Result<Vec<ShardRow>> {
        let rows = sqlx::query(&format!(
            "{SHARD_SELECT} WHERE stream_uid = $1 ORDER BY shard_id"
        ))
        .bind(stream_uid)
        .fetch_all(&self.pool)
        .await
        .db("read shards")?;
        decode_all(&rows, shard_from_row)
    }

    /// The stream's shards, by shard id, each with when it opened and
    /// closed (ListShards's ShardFilter) — read in one statement, so a
    /// reshard committing meanwhile cannot pair an old row with a new time.
    pub async fn shards_with_lifetimes(
        &self,
        stream_uid: i64,
    ) -> Result<Vec<(ShardRow, ShardLifetime)>> {
        let rows = sqlx::query(&format!(
            "SELECT listed.*, times.opened_at_ms, times.closed_at_ms \
             FROM ({SHARD_SELECT} WHERE stream_uid = $1) AS listed \
             JOIN shards AS times USING (stream_uid, shard_id) ORDER BY shard_id"
        ))
        .bind(stream_uid)
        .fetch_all(&self.pool)
        .await
        .db("read shards and their lifetimes")?;
        rows.iter()
            .map(|row| {
                Ok((
                    shard_from_row(row)?,
                    ShardLifetime {
                        opened_at_ms: row.try_get("opened_at_ms")?,
                        closed_at_ms: row.try_get("closed_at_ms")?,
                    },
                ))
            })
            .collect()
    }

    /// The shards a worker leads, whatever their state (a closed shard
    /// still needs a leader to serve its reads).
    pub async fn shards_led_by(&self, worker_id: &str) -> Result<Vec<ShardRow>> {
        let rows = sqlx::query(&format!(
            "{SHARD_SELECT} WHERE leader_worker_id = $1 ORDER BY stream_uid, shard_id"
        ))
        .bind(worker_id)
        .fetch_all(&self.pool)
        .await
        .db("read a worker's led shards")?;
        decode_all(&rows, shard_from_row)
    }

    /// Every shard a worker holds a copy of — of its current segment (as
    /// leader or replica) or of a sealed one — by stream then shard id.
    pub async fn shards_on_worker(&self, worker_id: &str) -> Result<Vec<ShardRow>> {
        let rows = sqlx::query(&format!(
            "{SHARD_SELECT} WHERE leader_worker_id = $1 OR $1 = ANY(replica_worker_ids) \
             OR sealed_segments @> jsonb_build_array(jsonb_build_object('worker_ids', jsonb_build_array($1::text))) \
             ORDER BY stream_uid, shard_id"
        ))
        .bind(worker_id)
        .fetch_all(&self.pool)
        .await
        .db("read a worker's shards")?;
        decode_all(&rows, shard_from_row)
    }

    /// Shards kept on fewer than `copies` workers (leader included).
    pub async fn under_replicated_shards(&self, copies: usize) -> Result<Vec<ShardRow>> {
        let rows = sqlx::query(&format!(
            "{SHARD_SELECT} WHERE 1 + cardinality(replica_worker_ids) < $1 ORDER BY stream_uid, shard_id"
        ))
        .bind(i32::try_from(copies).unwrap_or(i32::MAX))
        .fetch_all(&self.pool)
        .await
        .db("read under-replicated shards")?;
        decode_all(&rows, shard_from_row)
    }

    /// Shards an account has open in a region (being-sealed ones included:
    /// they count against the quota until they are closed).
    pub async fn open_shard_count(&self, account_id: &str, region: &str) -> Result<i64> {
        let used: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM shards JOIN streams USING (stream_uid) \
             WHERE streams.account_id = $1 AND streams.region = $2 \
               AND shards.state IN ('OPEN', 'CLOSING')",
        )
        .bind(account_id)
        .bind(region)
        .fetch_one(&self.pool)
        .await
        .db("count the account's open shards")?;
        Ok(used)
    }

    /// How many current segments of shards not yet closed each worker
    /// holds a copy of (a placement weighs workers by it).
    pub async fn copies_per_worker(&self) -> Result<HashMap<String, usize>> {
        let rows: Vec<(String, i64)> = sqlx::query_as(
            "SELECT worker_id, count(*) FROM shards, \
             unnest(array_prepend(leader_worker_id, replica_worker_ids)) AS worker_id \
             WHERE state <> 'CLOSED' GROUP BY worker_id",
        )
        .fetch_all(&self.pool)
        .await
        .db("count copies per worker")?;
        Ok(rows
            .into_iter()
            .map(|(worker, count)| (worker, usize::try_from(count).unwrap_or(usize::MAX)))
            .collect())
    }
}
