//! One active instance of a service per database: a Postgres
//! session-level advisory lock, held on a connection of its own for as
//! long as the instance acts. A second instance waits for it; when the
//! holder's session ends (a crash, a cut connection), Postgres releases
//! the lock and the next instance takes over.
//!
//! Needs a direct connection (or a session-mode pooler): a session lock
//! means nothing behind a transaction-mode pooler.
//!
//! The lock makes two active instances rare, not impossible: a holder cut
//! off from Postgres learns it lost the lock only at its next check, while
//! its successor may already act. What such a late step may change is
//! fenced by the rows it guards (epochs, states, close generations).

use sqlx::{Connection as _, PgConnection};

use crate::error::{DbContext as _, Result};

/// The lock a service takes to act alone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActiveRole {
    /// The control plane (resharding, balancing, scaling, recovery).
    ControlPlane,
}

impl ActiveRole {
    fn key(self) -> i64 {
        match self {
            // "cplane" in ASCII.
            ActiveRole::ControlPlane => 0x0000_6370_6c61_6e65,
        }
    }
}

/// The lock, held while this value (and its connection) lives.
pub struct ActiveLock {
    connection: PgConnection,
}

impl ActiveLock {
    /// Takes the lock for `role` on a new connection to `database_url`, if
    /// no other session holds it.
    pub async fn try_acquire(database_url: &str, role: ActiveRole) -> Result<Option<ActiveLock>> {
        let mut connection = PgConnection::connect(database_url)
            .await
            .db("connect for the active lock")?;
        // A holder whose host dies must not keep the lock for the hours a
        // default TCP keepalive takes: Postgres probes this session often.
        for setting in [
            "SET tcp_keepalives_idle = 10",
            "SET tcp_keepalives_interval = 5",
            "SET tcp_keepalives_count = 3",
        ] {
            sqlx::query(setting)
                .execute(&mut connection)
                .await
                .db("set the active lock's keepalives")?;
        }
        let acquired: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1)")
            .bind(role.key())
            .fetch_one(&mut connection)
            .await
            .db("take the active lock")?;
        Ok(acquired.then_some(ActiveLock { connection }))
    }

    /// Whether the lock is surely still held: its session answers. The
    /// caller bounds the wait (a cut connection may never answer).
    pub async fn is_held(&mut self) -> bool {
        sqlx::query("SELECT 1")
            .execute(&mut self.connection)
            .await
            .is_ok()
    }
}
