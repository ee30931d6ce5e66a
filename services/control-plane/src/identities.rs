//! The Identities service: users, access keys (their secrets sealed under
//! the master key, `sealing.rs`), the bootstrap key of a new deployment,
//! and the key lookup behind every verified SigV4 request.
//!
//! Invariant: a secret leaves this service only once, in the answer to the
//! CreateAccessKey call that made it. ResolveAccessKey answers with a
//! signing key for one day, region and service instead.

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use freshet_errors::ErrorCode;
use freshet_metastore::{AccessKeyRow, MetaStore, NewKeyOutcome, ACCESS_KEYS_PER_IDENTITY};
use freshet_proto::v1::identities_server::Identities;
use freshet_proto::v1::*;
use freshet_server::{AdminCheck, AdminToken, AuthMode};
use freshet_sigv4::SigningKey;
use freshet_types::{AccessKeyId, AccessKeyStatus, AccountId, Principal};
use rand::Rng as _;
use tonic::{Request, Response, Status};

use crate::sealing::{binding, MasterKey};

/// The Identities gRPC service.
#[derive(Clone)]
pub struct IdentityService {
    store: MetaStore,
    master: Arc<MasterKey>,
    /// Guards every call but ResolveAccessKey (which frontends make).
    admin: AdminToken,
    mode: AuthMode,
}

/// A deployment's first key, from `FRESHET_BOOTSTRAP_ACCESS_KEY` and
/// `FRESHET_BOOTSTRAP_SECRET_KEY`: created once, for the root of account
/// 000000000000, when no key exists yet.
#[derive(Debug, Clone, clap::Args)]
pub struct BootstrapKey {
    /// Access key id of the deployment's first key (16–128 of A-Z 0-9).
    #[arg(
        long,
        env = "FRESHET_BOOTSTRAP_ACCESS_KEY",
        requires = "bootstrap_secret_key"
    )]
    pub bootstrap_access_key: Option<String>,
    /// Its secret.
    #[arg(long, env = "FRESHET_BOOTSTRAP_SECRET_KEY", hide_env_values = true)]
    pub bootstrap_secret_key: Option<String>,
}

/// The account the bootstrap key belongs to.
pub const BOOTSTRAP_ACCOUNT: &str = "000000000000";

/// Why the bootstrap key could not be created.
#[derive(Debug, thiserror::Error)]
pub enum BootstrapError {
    #[error("FRESHET_BOOTSTRAP_ACCESS_KEY must be 16 to 128 upper-case letters and digits")]
    BadKeyId,
    #[error("FRESHET_BOOTSTRAP_SECRET_KEY must be 16 to 128 characters")]
    BadSecret,
    #[error(transparent)]
    Store(#[from] freshet_metastore::MetastoreError),
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

fn invalid(message: impl Into<String>) -> Status {
    ErrorCode::InvalidArgument.status(message)
}

fn store_error(error: freshet_metastore::MetastoreError) -> Status {
    let code = error.code();
    if code == ErrorCode::Internal {
        tracing::error!("identities request failed: {error}");
    }
    code.status(error.to_string())
}

fn account_of(text: &str) -> Result<AccountId, Status> {
    text.parse()
        .map_err(|e: freshet_types::identity::BadAccountId| invalid(e.to_string()))
}

/// An empty user name means the account's root.
fn user_of(text: &str) -> Result<Option<String>, Status> {
    if text.is_empty() {
        Ok(None)
    } else if Principal::is_valid_user_name(text) {
        Ok(Some(text.to_owned()))
    } else {
        Err(invalid(format!(
            "'{text}' is not a valid user name (1-64 of A-Z a-z 0-9 + = , . @ _ -)"
        )))
    }
}

fn key_id_of(text: &str) -> Result<AccessKeyId, Status> {
    text.parse()
        .map_err(|_| invalid(format!("'{text}' is not a well-formed access key id")))
}

/// `AKIA` and 16 random upper-case letters and digits, as AWS's look.
fn new_access_key_id() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789";
    let mut rng = rand::rng();
    let tail: String = (0..16)
        .map(|_| char::from(ALPHABET[rng.random_range(0..ALPHABET.len())]))
        .collect();
    format!("AKIA{tail}")
}

/// 40 characters of base64 over 30 random bytes (240 bits).
fn new_secret() -> String {
    let bytes: [u8; 30] = rand::random();
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

impl IdentityService {
    pub fn new(
        store: MetaStore,
        master: Arc<MasterKey>,
        admin: AdminToken,
        mode: AuthMode,
    ) -> IdentityService {
        IdentityService {
            store,
            master,
            admin,
            mode,
        }
    }

    /// Lets an admin call through only with the deployment's admin token
    /// (the internal token, which every service holds, is not enough).
    fn admit<T>(&self, request: &Request<T>) -> Result<(), Status> {
        match self.admin.check(request, self.mode) {
            AdminCheck::Admitted => Ok(()),
            AdminCheck::WrongToken => Err(Status::unauthenticated(
                "admin call without the deployment's admin token (FRESHET_ADMIN_TOKEN)",
            )),
            AdminCheck::Disabled => Err(Status::permission_denied(
                "admin calls are off: start the control plane with FRESHET_ADMIN_TOKEN",
            )),
        }
    }

    /// Creates the bootstrap key if one is configured and no key exists
    /// yet; true if it was created now.
    pub async fn bootstrap(&self, key: &BootstrapKey) -> Result<bool, BootstrapError> {
        let (Some(id), Some(secret)) = (&key.bootstrap_access_key, &key.bootstrap_secret_key)
        else {
            return Ok(false);
        };
        let id: AccessKeyId = id.parse().map_err(|_| BootstrapError::BadKeyId)?;
        if !(16..=128).contains(&secret.len()) {
            return Err(BootstrapError::BadSecret);
        }
        let account: AccountId = BOOTSTRAP_ACCOUNT.parse().expect("a 12-digit account id");
        let row = self.sealed_row(id.as_str(), &account, None, secret);
        let created = self.store.add_first_access_key(&row).await?;
        if created {
            tracing::info!(access_key_id = %id, account = BOOTSTRAP_ACCOUNT, "created the bootstrap access key");
        }
        Ok(created)
    }

    fn sealed_row(
        &self,
        id: &str,
        account: &AccountId,
        user: Option<String>,
        secret: &str,
    ) -> AccessKeyRow {
        let secret_sealed = self
            .master
            .seal(&binding(id, account.as_str(), user.as_deref()), secret);
        AccessKeyRow {
            access_key_id: id.to_owned(),
            account_id: account.clone(),
            user_name: user,
            secret_sealed,
            master_key_id: self.master.id().to_owned(),
            status: AccessKeyStatus::Active,
            created_at_ms: now_ms(),
        }
    }
}

#[tonic::async_trait]
impl Identities for IdentityService {
    async fn resolve_access_key(
        &self,
        request: Request<ResolveAccessKeyRequest>,
    ) -> Result<Response<ResolveAccessKeyResponse>, Status> {
        let request = request.into_inner();
        let not_found = || Ok(Response::new(ResolveAccessKeyResponse::default()));
        let Ok(id) = request.access_key_id.parse::<AccessKeyId>() else {
            return not_found();
        };
        check_scope(&request)?;
        let Some(row) = self.store.access_key(&id).await.map_err(store_error)? else {
            return not_found();
        };
        if row.status != AccessKeyStatus::Active {
            return not_found();
        }
        let bound_to = binding(
            &row.access_key_id,
            row.account_id.as_str(),
            row.user_name.as_deref(),
        );
        let secret = self
            .master
            .open(&bound_to, &row.master_key_id, &row.secret_sealed)
            .map_err(|error| {
                tracing::error!(access_key_id = %row.access_key_id, "cannot open a stored secret: {error}");
                ErrorCode::Internal.status("a stored secret cannot be opened")
            })?;
        let signing_key =
            SigningKey::derive(&secret, &request.date, &request.region, &request.service);
        let policies = match &row.user_name {
            Some(user) => self
                .store
                .user_policies(&row.account_id, user)
                .await
                .map_err(store_error)?
                .into_iter()
                .map(|policy| policy.document)
                .collect(),
            None => Vec::new(),
        };
        Ok(Response::new(ResolveAccessKeyResponse {
            found: true,
            account_id: row.account_id.to_string(),
            user_name: row.user_name.unwrap_or_default(),
            signing_key: signing_key.as_bytes().to_vec(),
            policies,
        }))
    }

    async fn create_user(
        &self,
        request: Request<CreateUserRequest>,
    ) -> Result<Response<CreateUserResponse>, Status> {
        self.admit(&request)?;
        let request = request.into_inner();
        let account = account_of(&request.account_id)?;
        let Some(name) = user_of(&request.user_name)? else {
            return Err(invalid("a user needs a name"));
        };
        let created = self
            .store
            .create_user(&account, &name, now_ms())
            .await
            .map_err(store_error)?;
        if !created {
            return Err(ErrorCode::ResourceInUse.status(format!(
                "User with name {name} already exists in account {account}."
            )));
        }
        let arn = Principal::User { account, name }.arn();
        tracing::info!(user = %arn, "created user");
        Ok(Response::new(CreateUserResponse { user_arn: arn }))
    }

    async fn create_access_key(
        &self,
        request: Request<CreateAccessKeyRequest>,
    ) -> Result<Response<CreateAccessKeyResponse>, Status> {
        self.admit(&request)?;
        let request = request.into_inner();
        let account = account_of(&request.account_id)?;
        let user = user_of(&request.user_name)?;
        let secret = new_secret();
        // A fresh id colliding with an existing one is astronomically
        // unlikely; a few tries make it impossible in practice.
        for _ in 0..3 {
            let id = new_access_key_id();
            let row = self.sealed_row(&id, &account, user.clone(), &secret);
            match self.store.add_access_key(&row).await.map_err(store_error)? {
                NewKeyOutcome::Created => {
                    tracing::info!(access_key_id = %id, %account, user = ?user, "created access key");
                    return Ok(Response::new(CreateAccessKeyResponse {
                        access_key_id: id,
                        secret_access_key: secret,
                    }));
                }
                NewKeyOutcome::IdTaken => continue,
                NewKeyOutcome::LimitReached => {
                    return Err(ErrorCode::LimitExceeded.status(format!(
                        "Cannot exceed quota for AccessKeysPerUser: {ACCESS_KEYS_PER_IDENTITY}"
                    )))
                }
                NewKeyOutcome::NoSuchUser => {
                    return Err(ErrorCode::ResourceNotFound.status(format!(
                        "The user with name {} cannot be found.",
                        user.unwrap_or_default()
                    )))
                }
            }
        }
        Err(ErrorCode::Internal.status("no unused access key id was found"))
    }

    async fn list_access_keys(
        &self,
        request: Request<ListAccessKeysRequest>,
    ) -> Result<Response<ListAccessKeysResponse>, Status> {
        self.admit(&request)?;
        let request = request.into_inner();
        let account = account_of(&request.account_id)?;
        let user = user_of(&request.user_name)?;
        let keys = self
            .store
            .access_keys_of(&account, user.as_deref())
            .await
            .map_err(store_error)?;
        Ok(Response::new(ListAccessKeysResponse {
            keys: keys
                .into_iter()
                .map(|key| AccessKeyInfo {
                    access_key_id: key.access_key_id,
                    state: AccessKeyState::from(key.status) as i32,
                    created_at_ms: key.created_at_ms,
                })
                .collect(),
        }))
    }

    async fn update_access_key(
        &self,
        request: Request<UpdateAccessKeyRequest>,
    ) -> Result<Response<UpdateAccessKeyResponse>, Status> {
        self.admit(&request)?;
        let request = request.into_inner();
        let account = account_of(&request.account_id)?;
        let id = key_id_of(&request.access_key_id)?;
        let status = AccessKeyStatus::try_from(request.state())
            .map_err(|_| invalid("state must be ACTIVE or INACTIVE"))?;
        let updated = self
            .store
            .set_access_key_status(&account, &id, status)
            .await
            .map_err(store_error)?;
        if !updated {
            return Err(no_such_key(&id));
        }
        tracing::info!(access_key_id = %id, %status, "changed access key status");
        Ok(Response::new(UpdateAccessKeyResponse {}))
    }

    async fn delete_access_key(
        &self,
        request: Request<DeleteAccessKeyRequest>,
    ) -> Result<Response<DeleteAccessKeyResponse>, Status> {
        self.admit(&request)?;
        let request = request.into_inner();
        let account = account_of(&request.account_id)?;
        let id = key_id_of(&request.access_key_id)?;
        let deleted = self
            .store
            .delete_access_key(&account, &id)
            .await
            .map_err(store_error)?;
        if !deleted {
            return Err(no_such_key(&id));
        }
        tracing::info!(access_key_id = %id, "deleted access key");
        Ok(Response::new(DeleteAccessKeyResponse {}))
    }

    async fn put_user_policy(
        &self,
        request: Request<PutUserPolicyRequest>,
    ) -> Result<Response<PutUserPolicyResponse>, Status> {
        self.admit(&request)?;
        let request = request.into_inner();
        let account = account_of(&request.account_id)?;
        let (user, name) = user_and_policy_name(&request.user_name, &request.policy_name)?;
        // IAM caps a user's inline policies together, not one by one.
        let others: usize = self
            .store
            .user_policies(&account, &user)
            .await
            .map_err(store_error)?
            .iter()
            .filter(|policy| policy.policy_name != name)
            .map(|policy| policy.document.chars().count())
            .sum();
        if others + request.document.chars().count() > USER_POLICY_MAX_CHARS {
            return Err(ErrorCode::LimitExceeded.status(format!(
                "Maximum policy size of {USER_POLICY_MAX_CHARS} bytes exceeded for user {user}"
            )));
        }
        freshet_policy::Policy::parse(&request.document, freshet_policy::PolicyKind::Identity)
            .map_err(|error| {
                ErrorCode::InvalidArgument.status(format!("MalformedPolicyDocument: {error}"))
            })?;
        let attached = self
            .store
            .put_user_policy(&account, &user, &name, &request.document)
            .await
            .map_err(store_error)?;
        if !attached {
            return Err(no_such_user(&user));
        }
        tracing::info!(%account, user, policy = name, "attached user policy");
        Ok(Response::new(PutUserPolicyResponse {}))
    }

    async fn delete_user_policy(
        &self,
        request: Request<DeleteUserPolicyRequest>,
    ) -> Result<Response<DeleteUserPolicyResponse>, Status> {
        self.admit(&request)?;
        let request = request.into_inner();
        let account = account_of(&request.account_id)?;
        let (user, name) = user_and_policy_name(&request.user_name, &request.policy_name)?;
        let detached = self
            .store
            .delete_user_policy(&account, &user, &name)
            .await
            .map_err(store_error)?;
        if !detached {
            return Err(ErrorCode::ResourceNotFound
                .status(format!("The user policy with name {name} cannot be found.")));
        }
        tracing::info!(%account, user, policy = name, "detached user policy");
        Ok(Response::new(DeleteUserPolicyResponse {}))
    }

    async fn list_user_policies(
        &self,
        request: Request<ListUserPoliciesRequest>,
    ) -> Result<Response<ListUserPoliciesResponse>, Status> {
        self.admit(&request)?;
        let request = request.into_inner();
        let account = account_of(&request.account_id)?;
        let Some(user) = user_of(&request.user_name)? else {
            return Err(invalid("name a user"));
        };
        if !self
            .store
            .user_exists(&account, &user)
            .await
            .map_err(store_error)?
        {
            return Err(no_such_user(&user));
        }
        let policies = self
            .store
            .user_policies(&account, &user)
            .await
            .map_err(store_error)?
            .into_iter()
            .map(|row| UserPolicy {
                policy_name: row.policy_name,
                document: row.document,
            })
            .collect();
        Ok(Response::new(ListUserPoliciesResponse { policies }))
    }
}

/// The only scopes a signing key is derived for: Kinesis's, on a day a
/// request could carry now (a presigned one may be a week old).
fn check_scope(request: &ResolveAccessKeyRequest) -> Result<(), Status> {
    const DAY_MS: i64 = 24 * 3_600_000;
    if request.service != "kinesis" || request.region.is_empty() {
        return Err(invalid(
            "signing keys are derived for the kinesis service only",
        ));
    }
    let day = request
        .date
        .parse::<i64>()
        .ok()
        .filter(|_| request.date.len() == 8)
        .ok_or_else(|| invalid("the scope's date must be yyyymmdd"))?;
    let today = today_yyyymmdd(now_ms());
    let week_ago = today_yyyymmdd(now_ms() - 8 * DAY_MS);
    let tomorrow = today_yyyymmdd(now_ms() + DAY_MS);
    if day < week_ago || day > tomorrow {
        return Err(invalid(format!(
            "a signing key for {day} is not derived on {today}"
        )));
    }
    Ok(())
}

/// A time (ms since the epoch) as the number yyyymmdd, in UTC.
fn today_yyyymmdd(ms: i64) -> i64 {
    let (year, month, day) =
        freshet_types::calendar::civil_from_days(ms.div_euclid(24 * 3_600_000));
    year * 10_000 + month * 100 + day
}

/// The most characters a user's inline policies may have together (IAM's
/// quota). Checked before the write, not under a lock: two concurrent puts
/// for one user may together pass it, by at most one policy.
const USER_POLICY_MAX_CHARS: usize = 2048;

fn user_and_policy_name(user: &str, name: &str) -> Result<(String, String), Status> {
    let Some(user) = user_of(user)? else {
        return Err(invalid("a policy is attached to a user: name one"));
    };
    let valid_name = (1..=128).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b));
    if !valid_name {
        return Err(invalid(format!(
            "'{name}' is not a valid policy name (1-128 of A-Z a-z 0-9 + = , . @ _ -)"
        )));
    }
    Ok((user, name.to_owned()))
}

fn no_such_user(user: &str) -> Status {
    ErrorCode::ResourceNotFound.status(format!("The user with name {user} cannot be found."))
}

fn no_such_key(id: &AccessKeyId) -> Status {
    ErrorCode::ResourceNotFound.status(format!("The Access Key with id {id} cannot be found."))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn days_read_as_yyyymmdd() {
        assert_eq!(today_yyyymmdd(0), 19_700_101);
        // 2026-12-04T10:00:00Z
        assert_eq!(today_yyyymmdd(1_796_378_400_000), 20_261_204);
        assert_eq!(today_yyyymmdd(951_782_400_000), 20_000_229);
    }

    #[test]
    fn signing_keys_are_derived_for_kinesis_on_current_days_only() {
        let request = |date: String, service: &str| ResolveAccessKeyRequest {
            access_key_id: "AKIAFRESHETTESTROOT1".into(),
            date,
            region: "us-east-1".into(),
            service: service.into(),
        };
        let today = today_yyyymmdd(now_ms()).to_string();
        assert!(check_scope(&request(today.clone(), "kinesis")).is_ok());
        assert!(check_scope(&request(today, "s3")).is_err());
        assert!(check_scope(&request("20200101".into(), "kinesis")).is_err());
        assert!(check_scope(&request("99991231".into(), "kinesis")).is_err());
        assert!(check_scope(&request("2026".into(), "kinesis")).is_err());
    }

    #[test]
    fn new_keys_look_like_aws_keys() {
        let id = new_access_key_id();
        assert!(id.parse::<AccessKeyId>().is_ok(), "{id}");
        assert!(id.starts_with("AKIA") && id.len() == 20);
        assert_ne!(new_access_key_id(), id);
        let secret = new_secret();
        assert_eq!(secret.len(), 40);
        assert_ne!(new_secret(), secret);
    }
}
