//! An account's limits in a region and what it uses of them, as
//! DescribeLimits reports and as CreateStream and UpdateStreamMode enforce
//! them.
//!
//! Invariant: an account never has more on-demand streams in a region
//! than its limit. Every change that makes a stream on-demand counts them
//! under the account's lock (the one stream creation takes for its shard
//! quota), so concurrent changes cannot overshoot together.

use freshet_types::{StreamArn, StreamMode};
use sqlx::{Postgres, Row, Transaction};

use crate::error::{DbContext as _, Result};
use crate::MetaStore;

/// The limits of one account in one region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountLimits {
    /// Open shards (and shards of streams being created).
    pub shards: u32,
    /// Streams in on-demand mode.
    pub on_demand_streams: u32,
}

/// What an account uses of its limits in a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AccountUsage {
    pub open_shards: i64,
    pub on_demand_streams: i64,
}

/// Takes the account's lock for its quotas in this transaction.
pub(crate) async fn lock_account(
    transaction: &mut Transaction<'static, Postgres>,
    account_id: &str,
) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(account_id)
        .execute(&mut **transaction)
        .await
        .db("lock the account's quotas")?;
    Ok(())
}

/// On-demand streams of the account in the region (any status but
/// DELETING), leaving out `except` (a stream being changed).
pub(crate) async fn on_demand_streams(
    transaction: &mut Transaction<'static, Postgres>,
    stream: &StreamArn,
    except: Option<i64>,
) -> Result<i64> {
    Ok(sqlx::query(
        "SELECT count(*) AS n FROM streams WHERE account_id = $1 AND region = $2 \
         AND stream_mode = 'ON_DEMAND' AND status <> 'DELETING' \
         AND stream_uid IS DISTINCT FROM $3",
    )
    .bind(&stream.account_id)
    .bind(&stream.region)
    .bind(except)
    .fetch_one(&mut **transaction)
    .await
    .db("count on-demand streams")?
    .try_get("n")?)
}

impl MetaStore {
    /// What the account uses in the region: its open shards (OPEN or
    /// CLOSING) and its on-demand streams.
    pub async fn account_usage(&self, account_id: &str, region: &str) -> Result<AccountUsage> {
        let row = sqlx::query(
            "SELECT \
               (SELECT count(*) FROM shards JOIN streams USING (stream_uid) \
                 WHERE streams.account_id = $1 AND streams.region = $2 \
                   AND shards.state IN ('OPEN', 'CLOSING')) AS open_shards, \
               (SELECT count(*) FROM streams WHERE account_id = $1 AND region = $2 \
                 AND stream_mode = 'ON_DEMAND' AND status <> 'DELETING') AS on_demand",
        )
        .bind(account_id)
        .bind(region)
        .fetch_one(&self.pool)
        .await
        .db("read the account's usage")?;
        Ok(AccountUsage {
            open_shards: row.try_get("open_shards")?,
            on_demand_streams: row.try_get("on_demand")?,
        })
    }

    /// Sets a stream's mode (a stream leaving on-demand drops its warm
    /// throughput). Changes nothing if it would become the account's
    /// on-demand stream past `on_demand_limit`, or if it would leave
    /// on-demand while using AUTO record distribution.
    pub async fn set_stream_mode(
        &self,
        stream: &StreamArn,
        stream_uid: i64,
        mode: StreamMode,
        on_demand_limit: u32,
    ) -> Result<ModeChange> {
        let mut transaction = self.pool.begin().await.db("begin a mode change")?;
        if mode == StreamMode::Provisioned {
            let auto: Option<bool> = sqlx::query(
                "SELECT auto_record_distribution FROM streams WHERE stream_uid = $1 FOR NO KEY UPDATE",
            )
            .bind(stream_uid)
            .fetch_optional(&mut *transaction)
            .await
            .db("read the stream's record distribution")?
            .map(|row| row.try_get("auto_record_distribution"))
            .transpose()?;
            if auto == Some(true) {
                return Ok(ModeChange::UsesAutoDistribution);
            }
        }
        if mode == StreamMode::OnDemand {
            lock_account(&mut transaction, &stream.account_id).await?;
            let already: Option<String> =
                sqlx::query("SELECT stream_mode FROM streams WHERE stream_uid = $1")
                    .bind(stream_uid)
                    .fetch_optional(&mut *transaction)
                    .await
                    .db("read the stream's mode")?
                    .map(|row| row.try_get("stream_mode"))
                    .transpose()?;
            // A stream already on-demand stays so, whatever the count.
            if already.as_deref() != Some(StreamMode::OnDemand.as_str()) {
                let others = on_demand_streams(&mut transaction, stream, Some(stream_uid)).await?;
                if others >= i64::from(on_demand_limit) {
                    return Ok(ModeChange::OverOnDemandLimit);
                }
            }
        }
        sqlx::query(
            "UPDATE streams SET stream_mode = $2, \
             warm_throughput_mibps = CASE WHEN $2 = 'ON_DEMAND' THEN warm_throughput_mibps END \
             WHERE stream_uid = $1",
        )
        .bind(stream_uid)
        .bind(mode.as_str())
        .execute(&mut *transaction)
        .await
        .db("update the stream's mode")?;
        transaction.commit().await.db("commit the mode change")?;
        Ok(ModeChange::Changed)
    }
}

/// What [`MetaStore::set_stream_mode`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModeChange {
    Changed,
    /// The account has as many on-demand streams as it may: unchanged.
    OverOnDemandLimit,
    /// A stream using AUTO record distribution may not become provisioned
    /// (only on-demand streams support it): unchanged.
    UsesAutoDistribution,
}
