//! Who is calling: the access key from the SigV4 `Authorization` header,
//! mapped to an account through the control plane's access-key table.
//!
//! Signatures are parsed but **not verified** yet (a later issue); no
//! claim of authentication beyond "this key is known" is made.

use freshet_errors::ErrorCode;
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use freshet_proto::v1::control_plane_client::ControlPlaneClient;
use freshet_proto::v1::ResolveAccessKeyRequest;
use freshet_server::TracedChannel;
use http::HeaderMap;
use tokio::time::Instant;

use crate::error::{KinesisError, KinesisResult};

/// The caller of a request, once authenticated.
#[derive(Debug, Clone)]
pub struct Caller {
    pub account_id: String,
}

/// How long a resolved key → account mapping is reused.
const ACCOUNT_CACHE_TTL: Duration = Duration::from_secs(60);

/// The SigV4 credential scope of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    pub access_key_id: String,
    pub region: String,
}

/// Parses `AWS4-HMAC-SHA256 Credential=AKID/date/region/service/aws4_request,
/// SignedHeaders=..., Signature=...` (or the presigned-query equivalent).
pub fn parse_credential(headers: &HeaderMap, query: Option<&str>) -> KinesisResult<Credential> {
    let header = headers
        .get(http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok());
    let query_credential = query.and_then(|q| {
        q.split('&')
            .find_map(|pair| pair.strip_prefix("X-Amz-Credential="))
            .map(|v| v.replace("%2F", "/").replace("%2f", "/"))
    });
    let credential = match (header, query_credential) {
        (Some(header), _) => {
            let Some(params) = header.strip_prefix("AWS4-HMAC-SHA256 ") else {
                return Err(KinesisError::new(
                    ErrorCode::IncompleteSignature,
                    format!("Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header. Authorization={header}"),
                ));
            };
            let mut credential = None;
            let mut signature = false;
            let mut signed_headers = false;
            for part in params.split(',') {
                let part = part.trim();
                if let Some(value) = part.strip_prefix("Credential=") {
                    credential = Some(value.to_owned());
                } else if part.starts_with("Signature=") {
                    signature = true;
                } else if part.starts_with("SignedHeaders=") {
                    signed_headers = true;
                }
            }
            let mut missing = Vec::new();
            if credential.is_none() {
                missing.push("Authorization header requires 'Credential' parameter.");
            }
            if !signature {
                missing.push("Authorization header requires 'Signature' parameter.");
            }
            if !signed_headers {
                missing.push("Authorization header requires 'SignedHeaders' parameter.");
            }
            if !missing.is_empty() {
                return Err(KinesisError::new(
                    ErrorCode::IncompleteSignature,
                    format!("{} Authorization={header}", missing.join(" ")),
                ));
            }
            credential.unwrap_or_default()
        }
        (None, Some(credential)) => credential,
        (None, None) => {
            return Err(KinesisError::new(
                ErrorCode::MissingAuthenticationToken,
                "Missing Authentication Token",
            ));
        }
    };
    let parts: Vec<&str> = credential.split('/').collect();
    if parts.len() != 5 || parts[0].is_empty() || parts[4] != "aws4_request" {
        return Err(KinesisError::new(
            ErrorCode::IncompleteSignature,
            format!(
                "Credential should be scoped to a valid region, not '{}'. ",
                parts.get(2).copied().unwrap_or("")
            ),
        ));
    }
    Ok(Credential {
        access_key_id: parts[0].to_owned(),
        region: parts[2].to_owned(),
    })
}

/// Resolves access keys to accounts, with a short-lived local cache.
pub struct AccountResolver {
    control_plane: ControlPlaneClient<TracedChannel>,
    cache: Mutex<HashMap<String, (Option<String>, Instant)>>,
}

impl AccountResolver {
    pub fn new(control_plane: ControlPlaneClient<TracedChannel>) -> AccountResolver {
        AccountResolver {
            control_plane,
            cache: Mutex::new(HashMap::new()),
        }
    }

    /// The caller's account, or UnrecognizedClientException.
    pub async fn account_of(&self, access_key_id: &str) -> KinesisResult<String> {
        let cached = self
            .cache
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(access_key_id)
            .cloned();
        let account = match cached {
            Some((account, at)) if at.elapsed() < ACCOUNT_CACHE_TTL => account,
            stale => {
                let mut client = self.control_plane.clone();
                let request = ResolveAccessKeyRequest {
                    access_key_id: access_key_id.to_owned(),
                };
                match client.resolve_access_key(request).await {
                    Ok(response) => {
                        let response = response.into_inner();
                        let account = response.found.then_some(response.account_id);
                        self.cache
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .insert(access_key_id.to_owned(), (account.clone(), Instant::now()));
                        account
                    }
                    // The control plane (or its Postgres) is down: a key
                    // resolved before keeps working, so the data path does.
                    Err(status) => match stale {
                        Some((account, _)) => account,
                        None => return Err(KinesisError::from_status(&status)),
                    },
                }
            }
        };
        account.ok_or_else(|| {
            KinesisError::new(
                ErrorCode::UnrecognizedClient,
                "The security token included in the request is invalid.",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(authorization: &str) -> HeaderMap {
        let mut headers = HeaderMap::new();
        headers.insert(http::header::AUTHORIZATION, authorization.parse().unwrap());
        headers
    }

    #[test]
    fn reads_the_access_key_and_region() {
        let credential = parse_credential(
            &headers("AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host;x-amz-date, Signature=abc"),
            None,
        )
        .unwrap();
        assert_eq!(
            credential,
            Credential {
                access_key_id: "test".into(),
                region: "us-east-1".into()
            }
        );
    }

    #[test]
    fn no_credentials_is_a_missing_token() {
        assert_eq!(
            parse_credential(&HeaderMap::new(), None)
                .unwrap_err()
                .exception(),
            "MissingAuthenticationTokenException"
        );
    }

    #[test]
    fn a_header_without_signature_is_incomplete() {
        let error = parse_credential(
            &headers("AWS4-HMAC-SHA256 Credential=test/20260101/us-east-1/kinesis/aws4_request"),
            None,
        )
        .unwrap_err();
        assert_eq!(error.exception(), "IncompleteSignatureException");
    }
}
