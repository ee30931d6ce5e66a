//! `freshet-metastore`: Freshet's Postgres schema (embedded sqlx migrations)
//! and the queries the metadata services run against it.
//!
//! Postgres is the source of truth for accounts, streams, shards and their
//! placement, storage workers, and the shard-map change log. Entries in the
//! change log are opaque bytes here (encoded `ShardMapEntry` messages);
//! membership, the only writer, encodes them.
//!
//! Layout: `rows` (the rows as values), then one module per table group —
//! `accounts`, `identities` (users and access keys), `streams`, `consumers`
//! (enhanced fan-out), `shards`, `workers` — each adding its queries to
//! [`MetaStore`], and `changes` for the change log and every shard change
//! (which only ever happens inside a change-log batch). Every call returns
//! [`MetastoreError`], whose `Conflict` case marks a guarded update that lost
//! a race.

mod accounts;
mod active;
mod changes;
mod consumers;
mod error;
mod identities;
mod limits;
mod rows;
mod shards;
mod snapshot;
mod streams;
mod tags;
mod workers;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

pub use active::{ActiveLock, ActiveRole};
pub use changes::{ChangeBatch, EntryKey, LoggedChange, LoggedKind};
pub use consumers::{ConsumerLimits, ConsumerRow, ConsumerTransitions, RegisterOutcome};
pub use error::{MetastoreError, Result};
pub use identities::{AccessKeyRow, NewKeyOutcome, UserPolicyRow, ACCESS_KEYS_PER_IDENTITY};
pub use limits::{AccountLimits, AccountUsage, ModeChange};
pub use rows::{Commitment, SealedSegmentRow, ShardRow, StreamRow, WorkerRow};
pub use shards::ShardLifetime;
pub use snapshot::Snapshot;
pub use streams::{
    DistributionChange, NewStream, NewStreamOutcome, RetentionChange, RetentionUpdate,
};
pub use tags::{TagOutcome, TAGS_PER_RESOURCE};

use error::DbContext as _;

pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Connects to the Postgres `database_url` and applies the migrations.
pub async fn connect_url_and_migrate(database_url: &str, max_connections: u32) -> Result<PgPool> {
    let options: PgConnectOptions = database_url.parse().db("parse DATABASE_URL")?;
    connect_and_migrate(options, max_connections).await
}

/// Connects to Postgres and applies the migrations (idempotent, and safe
/// when several services start at once: sqlx takes a lock).
pub async fn connect_and_migrate(
    options: PgConnectOptions,
    max_connections: u32,
) -> Result<PgPool> {
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(std::time::Duration::from_secs(5))
        .connect_with(options)
        .await
        .db("connect to postgres")?;
    MIGRATOR.run(&pool).await?;
    Ok(pool)
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
}
