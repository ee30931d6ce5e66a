//! Accounts: each account's billing commitment.

use freshet_types::CommitmentStatus;
use sqlx::Row;

use crate::error::{DbContext as _, Result};
use crate::rows::Commitment;
use crate::MetaStore;

impl MetaStore {
    /// The account's billing commitment as of now.
    pub async fn commitment(&self, account_id: &str) -> Result<Commitment> {
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
        .db("read account settings")?;
        let Some(row) = row else {
            return Ok(Commitment {
                status: CommitmentStatus::Disabled,
                started_at_ms: None,
                ends_at_ms: None,
                earliest_end_ms: None,
            });
        };
        let stored: CommitmentStatus = row.try_get::<String, _>("commitment_status")?.parse()?;
        let started_at_ms: Option<i64> = row.try_get("started_ms")?;
        let ends_at_ms: Option<i64> = row.try_get("ends_ms")?;
        let now_ms: i64 = row.try_get("now_ms")?;
        Ok(Commitment {
            status: status_as_of(stored, ends_at_ms, now_ms),
            started_at_ms,
            ends_at_ms,
            earliest_end_ms: started_at_ms.map(|s| s + 24 * 3_600_000),
        })
    }

    /// Enables the commitment (starting it now unless it is still running)
    /// or disables it — at once if it ran 24 h, else at its 24 h mark.
    pub async fn set_commitment(&self, account_id: &str, enable: bool) -> Result<()> {
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
            .db("update account settings")?;
        Ok(())
    }
}

/// The commitment's status at `now_ms`, from the stored one (ENABLED or
/// DISABLED): a disable asked for before the 24-hour minimum leaves it on
/// until `ends_at_ms`.
fn status_as_of(
    stored: CommitmentStatus,
    ends_at_ms: Option<i64>,
    now_ms: i64,
) -> CommitmentStatus {
    match (stored, ends_at_ms) {
        (CommitmentStatus::Disabled, Some(end)) if end > now_ms => {
            CommitmentStatus::EnabledUntilEarliestAllowedEnd
        }
        (stored, _) => stored,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disable_before_the_minimum_waits_for_its_end() {
        use CommitmentStatus::*;
        let table = [
            (Enabled, None, Enabled),
            (Enabled, Some(5), Enabled),
            (Disabled, None, Disabled),
            (Disabled, Some(11), EnabledUntilEarliestAllowedEnd),
            (Disabled, Some(10), Disabled),
            (Disabled, Some(9), Disabled),
        ];
        for (stored, ends_at, expected) in table {
            assert_eq!(
                status_as_of(stored, ends_at, 10),
                expected,
                "{stored} until {ends_at:?}"
            );
        }
    }
}
