//! Users and their access keys. Secrets arrive and leave sealed: this
//! module never sees a plaintext secret.

use freshet_types::{AccessKeyId, AccessKeyStatus, AccountId};
use sqlx::Row;

use crate::error::{DbContext as _, MetastoreError, Result};
use crate::MetaStore;

/// How many access keys one identity may hold (IAM's quota), active or not.
pub const ACCESS_KEYS_PER_IDENTITY: i64 = 2;

/// An access key as stored.
#[derive(Debug, Clone)]
pub struct AccessKeyRow {
    pub access_key_id: String,
    pub account_id: AccountId,
    /// `None`: the account's root.
    pub user_name: Option<String>,
    /// The secret, sealed under the master key `master_key_id` names.
    pub secret_sealed: Vec<u8>,
    pub master_key_id: String,
    pub status: AccessKeyStatus,
    pub created_at_ms: i64,
}

/// What adding a key did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NewKeyOutcome {
    Created,
    /// The identity already holds [`ACCESS_KEYS_PER_IDENTITY`] keys.
    LimitReached,
    /// The user does not exist.
    NoSuchUser,
    /// A key with that id exists already.
    IdTaken,
}

fn key_row(row: &sqlx::postgres::PgRow) -> Result<AccessKeyRow> {
    let account: String = row.try_get("account_id")?;
    Ok(AccessKeyRow {
        access_key_id: row.try_get("access_key_id")?,
        account_id: account
            .parse()
            .map_err(|e| MetastoreError::Corrupt(format!("access key owner: {e}")))?,
        user_name: row.try_get("user_name")?,
        secret_sealed: row.try_get("secret_sealed")?,
        master_key_id: row.try_get("master_key_id")?,
        status: row.try_get::<String, _>("status")?.parse()?,
        created_at_ms: row.try_get("created_at_ms")?,
    })
}

/// Binds a key's columns, in [`KEY_COLUMNS`] order, as `$1`..`$7`.
fn bind_key<'q>(
    query: sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments>,
    key: &'q AccessKeyRow,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    query
        .bind(&key.access_key_id)
        .bind(key.account_id.as_str())
        .bind(&key.user_name)
        .bind(&key.secret_sealed)
        .bind(&key.master_key_id)
        .bind(key.status.as_str())
        .bind(key.created_at_ms)
}

const KEY_COLUMNS: &str =
    "access_key_id, account_id, user_name, secret_sealed, master_key_id, status, created_at_ms";

impl MetaStore {
    /// Creates user `name` in `account`; false if it exists already.
    pub async fn create_user(&self, account: &AccountId, name: &str, now_ms: i64) -> Result<bool> {
        let inserted = sqlx::query(
            "INSERT INTO iam_users (account_id, user_name, created_at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT DO NOTHING",
        )
        .bind(account.as_str())
        .bind(name)
        .bind(now_ms)
        .execute(&self.pool)
        .await
        .db("create user")?;
        Ok(inserted.rows_affected() == 1)
    }

    /// Whether `account` has user `name`.
    pub async fn user_exists(&self, account: &AccountId, name: &str) -> Result<bool> {
        let row = sqlx::query("SELECT 1 FROM iam_users WHERE account_id = $1 AND user_name = $2")
            .bind(account.as_str())
            .bind(name)
            .fetch_optional(&self.pool)
            .await
            .db("look up user")?;
        Ok(row.is_some())
    }

    /// Adds an active key, unless its identity holds its quota of keys
    /// already. Two concurrent adds for one identity are serialised by an
    /// advisory lock on it, so the quota holds under races too.
    pub async fn add_access_key(&self, key: &AccessKeyRow) -> Result<NewKeyOutcome> {
        let mut tx = self.pool.begin().await.db("begin add access key")?;
        let owner = format!(
            "access-keys:{}:{}",
            key.account_id,
            key.user_name.as_deref().unwrap_or("")
        );
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(&owner)
            .execute(&mut *tx)
            .await
            .db("lock the key's owner")?;
        if let Some(user) = &key.user_name {
            let exists =
                sqlx::query("SELECT 1 FROM iam_users WHERE account_id = $1 AND user_name = $2")
                    .bind(key.account_id.as_str())
                    .bind(user)
                    .fetch_optional(&mut *tx)
                    .await
                    .db("look up the key's user")?;
            if exists.is_none() {
                return Ok(NewKeyOutcome::NoSuchUser);
            }
        }
        let held: i64 = sqlx::query(
            "SELECT count(*) AS held FROM access_keys \
             WHERE account_id = $1 AND user_name IS NOT DISTINCT FROM $2",
        )
        .bind(key.account_id.as_str())
        .bind(&key.user_name)
        .fetch_one(&mut *tx)
        .await
        .db("count the owner's keys")?
        .try_get("held")?;
        if held >= ACCESS_KEYS_PER_IDENTITY {
            return Ok(NewKeyOutcome::LimitReached);
        }
        let insert = format!(
            "INSERT INTO access_keys ({KEY_COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7) \
             ON CONFLICT (access_key_id) DO NOTHING"
        );
        let inserted = bind_key(sqlx::query(&insert), key)
            .execute(&mut *tx)
            .await
            .db("insert access key")?;
        if inserted.rows_affected() == 0 {
            return Ok(NewKeyOutcome::IdTaken);
        }
        tx.commit().await.db("commit access key")?;
        Ok(NewKeyOutcome::Created)
    }

    /// Adds `key` only if no access key exists at all (a deployment's
    /// bootstrap key); true if it was added.
    pub async fn add_first_access_key(&self, key: &AccessKeyRow) -> Result<bool> {
        let insert = format!(
            "INSERT INTO access_keys ({KEY_COLUMNS}) \
             SELECT $1, $2, $3, $4, $5, $6, $7 WHERE NOT EXISTS (SELECT 1 FROM access_keys) \
             ON CONFLICT (access_key_id) DO NOTHING"
        );
        let inserted = bind_key(sqlx::query(&insert), key)
            .execute(&self.pool)
            .await
            .db("insert bootstrap access key")?;
        Ok(inserted.rows_affected() == 1)
    }

    /// The key `id` names, if any.
    pub async fn access_key(&self, id: &AccessKeyId) -> Result<Option<AccessKeyRow>> {
        let row = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM access_keys WHERE access_key_id = $1"
        ))
        .bind(id.as_str())
        .fetch_optional(&self.pool)
        .await
        .db("look up access key")?;
        row.as_ref().map(key_row).transpose()
    }

    /// The keys of one identity (the root's when `user` is `None`), oldest
    /// first.
    pub async fn access_keys_of(
        &self,
        account: &AccountId,
        user: Option<&str>,
    ) -> Result<Vec<AccessKeyRow>> {
        let rows = sqlx::query(&format!(
            "SELECT {KEY_COLUMNS} FROM access_keys \
             WHERE account_id = $1 AND user_name IS NOT DISTINCT FROM $2 \
             ORDER BY created_at_ms, access_key_id"
        ))
        .bind(account.as_str())
        .bind(user)
        .fetch_all(&self.pool)
        .await
        .db("list access keys")?;
        rows.iter().map(key_row).collect()
    }

    /// Activates or deactivates key `id` of `account`; false if it has no
    /// such key.
    pub async fn set_access_key_status(
        &self,
        account: &AccountId,
        id: &AccessKeyId,
        status: AccessKeyStatus,
    ) -> Result<bool> {
        let updated = sqlx::query(
            "UPDATE access_keys SET status = $3 WHERE account_id = $1 AND access_key_id = $2",
        )
        .bind(account.as_str())
        .bind(id.as_str())
        .bind(status.as_str())
        .execute(&self.pool)
        .await
        .db("update access key")?;
        Ok(updated.rows_affected() == 1)
    }

    /// Deletes key `id` of `account`; false if it has no such key.
    pub async fn delete_access_key(&self, account: &AccountId, id: &AccessKeyId) -> Result<bool> {
        let deleted =
            sqlx::query("DELETE FROM access_keys WHERE account_id = $1 AND access_key_id = $2")
                .bind(account.as_str())
                .bind(id.as_str())
                .execute(&self.pool)
                .await
                .db("delete access key")?;
        Ok(deleted.rows_affected() == 1)
    }
}

/// An inline policy of a user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UserPolicyRow {
    pub policy_name: String,
    pub document: String,
}

impl MetaStore {
    /// Attaches (or replaces) `user`'s inline policy `name`; false if the
    /// user does not exist.
    pub async fn put_user_policy(
        &self,
        account: &AccountId,
        user: &str,
        name: &str,
        document: &str,
    ) -> Result<bool> {
        let inserted = sqlx::query(
            "INSERT INTO user_policies (account_id, user_name, policy_name, document) \
             SELECT $1, $2, $3, $4 WHERE EXISTS \
               (SELECT 1 FROM iam_users WHERE account_id = $1 AND user_name = $2) \
             ON CONFLICT (account_id, user_name, policy_name) \
             DO UPDATE SET document = EXCLUDED.document",
        )
        .bind(account.as_str())
        .bind(user)
        .bind(name)
        .bind(document)
        .execute(&self.pool)
        .await
        .db("put user policy")?;
        Ok(inserted.rows_affected() == 1)
    }

    /// Detaches `user`'s inline policy `name`; false if there was none.
    pub async fn delete_user_policy(
        &self,
        account: &AccountId,
        user: &str,
        name: &str,
    ) -> Result<bool> {
        let deleted = sqlx::query(
            "DELETE FROM user_policies WHERE account_id = $1 AND user_name = $2 AND policy_name = $3",
        )
        .bind(account.as_str())
        .bind(user)
        .bind(name)
        .execute(&self.pool)
        .await
        .db("delete user policy")?;
        Ok(deleted.rows_affected() == 1)
    }

    /// `user`'s inline policies, by name.
    pub async fn user_policies(
        &self,
        account: &AccountId,
        user: &str,
    ) -> Result<Vec<UserPolicyRow>> {
        let rows = sqlx::query(
            "SELECT policy_name, document FROM user_policies \
             WHERE account_id = $1 AND user_name = $2 ORDER BY policy_name",
        )
        .bind(account.as_str())
        .bind(user)
        .fetch_all(&self.pool)
        .await
        .db("list user policies")?;
        rows.iter()
            .map(|row| {
                Ok(UserPolicyRow {
                    policy_name: row.try_get("policy_name")?,
                    document: row.try_get("document")?,
                })
            })
            .collect()
    }
}

impl MetaStore {
    /// Sets (or replaces) the resource policy of `resource_arn`, owned by
    /// `account`.
    pub async fn put_resource_policy(
        &self,
        resource_arn: &str,
        account: &AccountId,
        document: &str,
    ) -> Result<()> {
        sqlx::query(
            "INSERT INTO resource_policies (resource_arn, account_id, document) VALUES ($1, $2, $3) \
             ON CONFLICT (resource_arn) DO UPDATE SET document = EXCLUDED.document",
        )
        .bind(resource_arn)
        .bind(account.as_str())
        .bind(document)
        .execute(&self.pool)
        .await
        .db("put resource policy")?;
        Ok(())
    }

    /// The resource policy of `resource_arn`, if it has one.
    pub async fn resource_policy(&self, resource_arn: &str) -> Result<Option<String>> {
        let row = sqlx::query("SELECT document FROM resource_policies WHERE resource_arn = $1")
            .bind(resource_arn)
            .fetch_optional(&self.pool)
            .await
            .db("read resource policy")?;
        Ok(row.map(|row| row.try_get("document")).transpose()?)
    }

    /// Removes the resource policy of `resource_arn`; false if it had none.
    pub async fn delete_resource_policy(&self, resource_arn: &str) -> Result<bool> {
        let deleted = sqlx::query("DELETE FROM resource_policies WHERE resource_arn = $1")
            .bind(resource_arn)
            .execute(&self.pool)
            .await
            .db("delete resource policy")?;
        Ok(deleted.rows_affected() == 1)
    }
}
