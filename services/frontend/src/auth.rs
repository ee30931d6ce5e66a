//! Who is calling. Every request passes here twice: [`Authenticator::admit`]
//! before its body is read (the signature's form, its scope and time, the
//! key behind it), and [`Admitted::verify`] once the body is in (the
//! signature itself). A request refused at the first step costs no body.
//!
//! Two modes, one path (`freshet_server::AuthMode`):
//! - development: any key works, as in LocalStack and moto. A 12-digit key
//!   id names the account; any other key is the default account. The
//!   signature must still be well formed.
//! - sigv4: the signature is verified with the signing key the control
//!   plane derives from the key's sealed secret (the secret never reaches
//!   the frontend). Keys are cached for `--key-cache-ttl` (a minute by
//!   default: a disabled key stops working within that), and kept for up
//!   to 15 minutes while the control plane cannot be reached, so the data
//!   path outlives a control-plane outage. Unknown keys are cached briefly too, and a source that keeps
//!   asking about unknown keys gets no more lookups for a while. The
//!   signed headers must include `X-Amz-Target`, which picks the operation.

use std::net::IpAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use freshet_errors::ErrorCode;
use freshet_policy::{Policy, PolicyKind};
use freshet_proto::v1::identities_client::IdentitiesClient;
use freshet_proto::v1::ResolveAccessKeyRequest;
use freshet_server::TracedChannel;
use freshet_sigv4::{SigV4Error, Signature, SigningKey};
use freshet_types::{AccessKeyId, AccountId, Principal};
use http::HeaderMap;
use moka::sync::Cache;
use tokio::time::Instant;

use crate::error::{KinesisError, KinesisResult};
use crate::resource_policies::ResourcePolicies;

/// The caller of a request, once authenticated.
#[derive(Debug, Clone)]
pub struct Caller {
    pub account_id: String,
    pub principal: Principal,
    /// The region of the request's signature scope.
    pub region: String,
    /// The identity's policies (none for a root, which may do anything in
    /// its own account); see `access.rs`.
    pub policies: Arc<[Policy]>,
    /// `kinesis:<Operation>`, what the request asks to do.
    pub action: String,
    /// Where the request came from (`aws:SourceIp`).
    pub source: Option<IpAddr>,
    /// Where resources' policies are looked up.
    pub resource_policies: Arc<ResourcePolicies>,
}

/// The service name a Kinesis request is signed for.
const SERVICE: &str = "kinesis";
/// How long a resolved key is still used while the control plane cannot
/// answer.
const KEY_USABLE_FOR: Duration = Duration::from_secs(15 * 60);
/// How long an unknown key stays unknown without asking again.
const UNKNOWN_KEY_TTL: Duration = Duration::from_secs(5);
/// Entries per cache: a bound on memory whatever keys callers invent.
const CACHE_CAPACITY: u64 = 10_000;
/// Failed authentications one source may have per window before it is
/// refused without looking at its requests.
/// Lookups of unknown keys one source may cause per window; past it, its
/// unknown keys are refused without asking the control plane. Known keys
/// are never affected, so a source cannot lock out others behind the same
/// address (guessing a secret against HMAC gains nothing to limit).
const UNKNOWN_LOOKUPS_PER_SOURCE: u32 = 50;
const UNKNOWN_LOOKUP_WINDOW: Duration = Duration::from_secs(60);

fn error(code: ErrorCode, message: impl Into<String>) -> KinesisError {
    KinesisError::new(code, message)
}

fn invalid_token() -> KinesisError {
    error(
        ErrorCode::UnrecognizedClient,
        "The security token included in the request is invalid.",
    )
}

impl From<SigV4Error> for KinesisError {
    fn from(failure: SigV4Error) -> KinesisError {
        let code = match failure {
            SigV4Error::Missing => ErrorCode::MissingAuthenticationToken,
            SigV4Error::Incomplete(_) => ErrorCode::IncompleteSignature,
            SigV4Error::Expired(_) | SigV4Error::Mismatch => ErrorCode::InvalidSignature,
        };
        error(code, failure.to_string())
    }
}

/// A resolved access key: who it is, and the key that checks its
/// signatures for one scope.
#[derive(Clone)]
struct ResolvedKey {
    principal: Principal,
    policies: Arc<[Policy]>,
    signing_key: SigningKey,
    fetched_at: Instant,
}

/// Authenticates requests in the deployment's mode.
pub struct Authenticator {
    mode: Mode,
    resource_policies: Arc<ResourcePolicies>,
}

enum Mode {
    Development { default_account: AccountId },
    Sigv4(Box<Verifier>),
}

/// Secure mode's state: where keys are resolved, and the bounded caches.
struct Verifier {
    region: String,
    identities: IdentitiesClient<TracedChannel>,
    /// How long a resolved key is used before it is looked up again (so
    /// how long a disabled key may go on working).
    key_fresh_for: Duration,
    /// By (key id, day, region): a signing key is per scope.
    keys: Cache<(String, String, String), ResolvedKey>,
    unknown_keys: Cache<String, ()>,
    unknown_lookups: Cache<IpAddr, Arc<AtomicU32>>,
}

/// A request that passed the checks its headers allow; [`Admitted::verify`]
/// finishes the job once the body is read.
pub struct Admitted {
    caller: Caller,
    /// The signature and its key, in secure mode.
    check: Option<(Signature, SigningKey)>,
}

/// The parts of a request a signature covers, other than its headers.
pub struct SignedParts<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub authority: Option<&'a str>,
}

impl Authenticator {
    pub fn development(
        default_account: AccountId,
        resource_policies: Arc<ResourcePolicies>,
    ) -> Authenticator {
        Authenticator {
            mode: Mode::Development { default_account },
            resource_policies,
        }
    }

    pub fn sigv4(
        region: String,
        identities: IdentitiesClient<TracedChannel>,
        key_fresh_for: Duration,
        resource_policies: Arc<ResourcePolicies>,
    ) -> Authenticator {
        Authenticator {
            resource_policies,
            mode: Mode::Sigv4(Box::new(Verifier {
                region,
                identities,
                key_fresh_for,
                keys: Cache::builder()
                    .max_capacity(CACHE_CAPACITY)
                    .time_to_live(KEY_USABLE_FOR)
                    .build(),
                unknown_keys: Cache::builder()
                    .max_capacity(CACHE_CAPACITY)
                    .time_to_live(UNKNOWN_KEY_TTL)
                    .build(),
                unknown_lookups: Cache::builder()
                    .max_capacity(CACHE_CAPACITY)
                    .time_to_live(UNKNOWN_LOOKUP_WINDOW)
                    .build(),
            })),
        }
    }

    /// Everything that can be checked before the body is read.
    pub async fn admit(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        source: Option<IpAddr>,
    ) -> KinesisResult<Admitted> {
        match &self.mode {
            Mode::Development { default_account } => {
                let signature = freshet_sigv4::parse(headers, query)?;
                let account = signature
                    .access_key_id
                    .parse::<AccountId>()
                    .unwrap_or_else(|_| default_account.clone());
                Ok(Admitted {
                    caller: Caller {
                        account_id: account.to_string(),
                        principal: Principal::Root { account },
                        region: signature.region,
                        policies: Arc::from([]),
                        action: String::new(),
                        source,
                        resource_policies: self.resource_policies.clone(),
                    },
                    check: None,
                })
            }
            Mode::Sigv4(verifier) => {
                verifier
                    .admit(headers, query, source, &self.resource_policies)
                    .await
            }
        }
    }
}

impl Verifier {
    /// Secure mode's checks on the headers: the signature's form, scope
    /// and time, and the key behind it.
    async fn admit(
        &self,
        headers: &HeaderMap,
        query: Option<&str>,
        source: Option<IpAddr>,
        resource_policies: &Arc<ResourcePolicies>,
    ) -> KinesisResult<Admitted> {
        let Verifier {
            region,
            identities,
            key_fresh_for,
            keys,
            unknown_keys,
            unknown_lookups,
        } = self;
        let signature = freshet_sigv4::parse(headers, query)?;
        // The operation is chosen by X-Amz-Target: unsigned, a request
        // signed for one operation could be replayed as another.
        if !signature.signed_headers.iter().any(|h| h == "x-amz-target") {
            return Err(error(
                ErrorCode::IncompleteSignature,
                "'X-Amz-Target' must be a 'SignedHeader' in the AWS Authorization.",
            ));
        }
        if signature.security_token.is_some() {
            // Temporary credentials are not issued here, so no session
            // token can be valid (AWS's text for a bad token has no period).
            return Err(error(
                ErrorCode::UnrecognizedClient,
                "The security token included in the request is invalid",
            ));
        }
        if signature.service != SERVICE {
            return Err(error(
                ErrorCode::InvalidSignature,
                format!("Credential should be scoped to correct service: '{SERVICE}'. "),
            ));
        }
        if signature.region != *region {
            return Err(error(
                ErrorCode::InvalidSignature,
                format!(
                    "Credential should be scoped to a valid region, not '{}'. ",
                    signature.region
                ),
            ));
        }
        signature.check_time(SystemTime::now())?;
        let Ok(key_id) = signature.access_key_id.parse::<AccessKeyId>() else {
            return Err(invalid_token());
        };
        if unknown_keys.contains_key(key_id.as_str()) {
            return Err(invalid_token());
        }
        let cache_key = (
            key_id.to_string(),
            signature.date.clone(),
            signature.region.clone(),
        );
        let cached = keys.get(&cache_key);
        let lookups_spent = source
            .and_then(|source| unknown_lookups.get(&source))
            .is_some_and(|count| count.load(Ordering::Relaxed) >= UNKNOWN_LOOKUPS_PER_SOURCE);
        if cached.is_none() && lookups_spent {
            return Err(invalid_token());
        }
        let resolved = match cached {
            Some(key) if key.fetched_at.elapsed() < *key_fresh_for => key,
            stale => match resolve(identities, &key_id, &signature).await {
                Ok(Some(key)) => {
                    keys.insert(cache_key, key.clone());
                    key
                }
                Ok(None) => {
                    keys.invalidate(&cache_key);
                    unknown_keys.insert(key_id.to_string(), ());
                    if let Some(source) = source {
                        unknown_lookups
                            .get_with(source, || Arc::new(AtomicU32::new(0)))
                            .fetch_add(1, Ordering::Relaxed);
                    }
                    return Err(invalid_token());
                }
                // The control plane (or its Postgres) is down: a key
                // resolved before keeps working, so the data path does.
                Err(Unresolved::Unreachable(failure)) => match stale {
                    Some(key) => {
                        tracing::warn!("using a cached access key: {}", failure.message);
                        key
                    }
                    None => return Err(failure),
                },
                // An answer that cannot be used (a policy that does not
                // parse) is never bridged with the old one: its new Deny
                // would be ignored.
                Err(Unresolved::Unusable(failure)) => {
                    keys.invalidate(&cache_key);
                    return Err(failure);
                }
            },
        };
        let account = resolved.principal.account().clone();
        Ok(Admitted {
            caller: Caller {
                account_id: account.to_string(),
                principal: resolved.principal,
                region: signature.region.clone(),
                policies: resolved.policies,
                action: String::new(),
                source,
                resource_policies: resource_policies.clone(),
            },
            check: Some((signature, resolved.signing_key)),
        })
    }
}

/// Asks the control plane for the key; `None` if it is unknown or
/// inactive.
/// Why a key could not be resolved.
enum Unresolved {
    /// The control plane did not answer.
    Unreachable(KinesisError),
    /// It answered with something this frontend cannot use.
    Unusable(KinesisError),
}

async fn resolve(
    identities: &IdentitiesClient<TracedChannel>,
    key_id: &AccessKeyId,
    signature: &Signature,
) -> Result<Option<ResolvedKey>, Unresolved> {
    let request = ResolveAccessKeyRequest {
        access_key_id: key_id.to_string(),
        date: signature.date.clone(),
        region: signature.region.clone(),
        service: signature.service.clone(),
    };
    let response = identities
        .clone()
        .resolve_access_key(freshet_server::request_with_deadline(
            request,
            Duration::from_secs(5),
        ))
        .await
        .map_err(|status| Unresolved::Unreachable(KinesisError::from_status(&status)))?
        .into_inner();
    if !response.found {
        return Ok(None);
    }
    let account: AccountId = response.account_id.parse().map_err(|_| {
        Unresolved::Unusable(KinesisError::internal(
            "the control plane named no valid account",
        ))
    })?;
    let principal = if response.user_name.is_empty() {
        Principal::Root { account }
    } else {
        Principal::User {
            account,
            name: response.user_name,
        }
    };
    let signing_key = SigningKey::from_bytes(&response.signing_key).ok_or_else(|| {
        Unresolved::Unusable(KinesisError::internal(
            "the control plane sent no valid signing key",
        ))
    })?;
    // Fail closed: a policy that does not parse (it was validated when it
    // was put) refuses the key rather than being skipped, which could drop
    // a Deny.
    let policies = response
        .policies
        .iter()
        .map(|document| Policy::parse(document, PolicyKind::Identity))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| {
            Unresolved::Unusable(KinesisError::internal(format!(
                "a stored identity policy does not parse: {error}"
            )))
        })?;
    Ok(Some(ResolvedKey {
        principal,
        policies: Arc::from(policies),
        signing_key,
        fetched_at: Instant::now(),
    }))
}

impl Admitted {
    /// The signature checked against the whole request (secure mode);
    /// the caller it proves, about to perform `operation`.
    pub fn verify(
        self,
        operation: &str,
        parts: &SignedParts<'_>,
        headers: &HeaderMap,
        body: &[u8],
    ) -> KinesisResult<Caller> {
        if let Some((signature, key)) = &self.check {
            let request = freshet_sigv4::Request {
                method: parts.method,
                path: parts.path,
                query: parts.query,
                headers,
                authority: parts.authority,
                body,
            };
            freshet_sigv4::verify(&request, signature, key)?;
        }
        Ok(Caller {
            action: format!("kinesis:{operation}"),
            ..self.caller
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(
            http::header::AUTHORIZATION,
            authorization.parse().expect("a header value"),
        );
        headers.insert("x-amz-date", "20260101T000000Z".parse().expect("a date"));
        headers
    }

    fn signed_by(key: &str, region: &str) -> HeaderMap {
        headers(&format!(
            "AWS4-HMAC-SHA256 Credential={key}/20260101/{region}/kinesis/aws4_request, SignedHeaders=host;x-amz-date, Signature={}",
            "0".repeat(64)
        ))
    }

    fn development() -> Authenticator {
        let nowhere =
            freshet_server::grpc_channel("127.0.0.1:1", &freshet_server::InternalToken::none())
                .expect("a lazy channel");
        Authenticator::development(
            "000000000000".parse().expect("an account"),
            Arc::new(ResourcePolicies::new(
                freshet_proto::v1::control_plane_client::ControlPlaneClient::new(nowhere),
            )),
        )
    }

    #[tokio::test]
    async fn in_development_a_twelve_digit_key_names_the_account() {
        let caller = development()
            .admit(&signed_by("123456789012", "us-west-2"), None, None)
            .await
            .expect("admitted")
            .verify(
                "ListStreams",
                &SignedParts {
                    method: "POST",
                    path: "/",
                    query: None,
                    authority: None,
                },
                &HeaderMap::new(),
                b"",
            )
            .expect("no signature check in development");
        assert_eq!(caller.account_id, "123456789012");
        assert_eq!(caller.region, "us-west-2");
        assert_eq!(caller.principal.arn(), "arn:aws:iam::123456789012:root");
    }

    #[tokio::test]
    async fn in_development_any_other_key_is_the_default_account() {
        for key in ["test", "AKIAIOSFODNN7EXAMPLE", "12345678901"] {
            let admitted = development()
                .admit(&signed_by(key, "us-east-1"), None, None)
                .await
                .expect("admitted");
            assert_eq!(admitted.caller.account_id, "000000000000", "{key}");
        }
    }

    #[tokio::test]
    async fn in_development_malformed_signatures_are_still_refused() {
        let refused = |headers: HeaderMap| async move {
            development()
                .admit(&headers, None, None)
                .await
                .err()
                .map(|e| e.exception())
        };
        assert_eq!(
            refused(HeaderMap::new()).await,
            Some("MissingAuthenticationTokenException")
        );
        assert_eq!(
            refused(headers(
                "AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/kinesis/aws4_request"
            ))
            .await,
            Some("IncompleteSignatureException")
        );
    }
}
