//! Storage workers: registration, heartbeats, and the list with each
//! one's heartbeat age.

use sqlx::Row;

use crate::error::{DbContext as _, Result};
use crate::rows::WorkerRow;
use crate::MetaStore;

impl MetaStore {
    /// Registers a worker (or updates it) with the disk its data lives on
    /// (kept only once `disk_confirmed`); answers the disk it was
    /// registered with before (`None` for a new worker, `Some("")` for one
    /// whose disk no registration confirmed yet).
    pub async fn upsert_worker(
        &self,
        worker_id: &str,
        availability_zone: &str,
        address: &str,
        disk_id: &str,
        disk_confirmed: bool,
    ) -> Result<Option<String>> {
        // An id is remembered only once the worker confirms it is durable.
        let remembered = if disk_confirmed { disk_id } else { "" };
        let previous: Option<Option<String>> = sqlx::query_scalar(
            "WITH previous AS (SELECT disk_id FROM workers WHERE worker_id = $1) \
             INSERT INTO workers (worker_id, availability_zone, address, disk_id) VALUES ($1, $2, $3, $4) \
             ON CONFLICT (worker_id) DO UPDATE SET availability_zone = EXCLUDED.availability_zone, \
             address = EXCLUDED.address, last_heartbeat_at = now(), \
             disk_id = CASE WHEN EXCLUDED.disk_id = '' THEN workers.disk_id ELSE EXCLUDED.disk_id END \
             RETURNING (SELECT disk_id FROM previous)",
        )
        .bind(worker_id)
        .bind(availability_zone)
        .bind(address)
        .bind(remembered)
        .fetch_optional(&self.pool)
        .await
        .db("register worker")?;
        Ok(previous.flatten())
    }

    /// Records a heartbeat; false if the worker is unknown.
    pub async fn heartbeat(&self, worker_id: &str) -> Result<bool> {
        let result =
            sqlx::query("UPDATE workers SET last_heartbeat_at = now() WHERE worker_id = $1")
                .bind(worker_id)
                .execute(&self.pool)
                .await
                .db("record heartbeat")?;
        Ok(result.rows_affected() == 1)
    }

    pub async fn list_workers(&self) -> Result<Vec<WorkerRow>> {
        let rows = sqlx::query(
            "SELECT worker_id, availability_zone, address, \
             EXTRACT(EPOCH FROM (now() - last_heartbeat_at))::float8 AS age FROM workers ORDER BY worker_id",
        )
        .fetch_all(&self.pool)
        .await
        .db("list workers")?;
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
            .db("decode worker rows")
    }
}
