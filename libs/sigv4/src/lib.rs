//! `freshet-sigv4`: verifies AWS Signature Version 4 on an HTTP request, in
//! both of its forms (the `Authorization` header and the presigned query),
//! exactly as AWS builds the canonical request — checked against the AWS
//! SDK's own signer in the tests.
//!
//! Pure: the caller supplies the request's parts, the key that signs for the
//! scope the request names and the current time; nothing here does I/O.
//! Verification comes in two steps so a server can refuse cheaply before it
//! reads a body: [`parse`] and [`Signature::check_time`] need only the
//! headers and the query; [`verify`] needs the body too.
//!
//! Secrets never need to leave whoever stores them: a verifier is given the
//! [`SigningKey`] of one day, region and service (derived from the secret
//! as AWS does), which cannot sign for any other scope.

mod canonical;
mod date;
#[doc(hidden)]
pub mod fuzzing;

use std::time::{Duration, SystemTime};

use hmac::{Hmac, Mac};
use http::HeaderMap;
use sha2::Sha256;

pub use canonical::canonical_request;
use canonical::{header_text, payload_hash, query_pairs};

const ALGORITHM: &str = "AWS4-HMAC-SHA256";

/// How far a request's `X-Amz-Date` may be from the verifier's clock.
pub const MAX_CLOCK_SKEW: Duration = Duration::from_secs(15 * 60);

/// The longest a presigned request may stay valid (`X-Amz-Expires`).
pub const MAX_PRESIGNED_EXPIRY: Duration = Duration::from_secs(7 * 24 * 3600);

/// Why a request's signature was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SigV4Error {
    /// No credentials at all: neither an `Authorization` header nor a
    /// presigned query.
    #[error("Missing Authentication Token")]
    Missing,
    /// The signature's parts are missing or malformed.
    #[error("{0}")]
    Incomplete(String),
    /// The request was signed too long ago (or too far ahead), or its
    /// presigned lifetime is over.
    #[error("{0}")]
    Expired(String),
    /// The signature does not match the request and the key's secret.
    #[error("The request signature we calculated does not match the signature you provided. Check your AWS Secret Access Key and signing method. Consult the service documentation for details.")]
    Mismatch,
}

/// Where a request carried its signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Location {
    /// `Authorization: AWS4-HMAC-SHA256 Credential=…` with `X-Amz-Date`.
    Header,
    /// `?X-Amz-Algorithm=…&X-Amz-Signature=…`, valid for `expires` after
    /// its date.
    Query { expires: Duration },
}

/// A request's SigV4 signature and the scope it claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signature {
    pub access_key_id: String,
    /// `yyyymmdd`, the day of the credential scope.
    pub date: String,
    pub region: String,
    pub service: String,
    /// Lower-case, in the order the signer listed them.
    pub signed_headers: Vec<String>,
    /// Lower-case hex.
    pub signature: String,
    /// `yyyymmddThhmmssZ`, when the request was signed.
    pub amz_date: String,
    /// A session token (`X-Amz-Security-Token`), which only temporary
    /// credentials carry.
    pub security_token: Option<String>,
    pub location: Location,
}

impl Signature {
    /// The credential scope, `date/region/service/aws4_request`.
    pub fn scope(&self) -> String {
        format!(
            "{}/{}/{}/aws4_request",
            self.date, self.region, self.service
        )
    }

    /// Whether the request may be accepted at `now`: signed within
    /// [`MAX_CLOCK_SKEW`] of it, and (presigned) not past its lifetime.
    pub fn check_time(&self, now: SystemTime) -> Result<(), SigV4Error> {
        let signed_at = date::parse_amz_date(&self.amz_date).ok_or_else(|| {
            SigV4Error::Incomplete(format!("Invalid X-Amz-Date {}.", self.amz_date))
        })?;
        let earliest = now.checked_sub(MAX_CLOCK_SKEW).unwrap_or(now);
        let latest = now.checked_add(MAX_CLOCK_SKEW).unwrap_or(now);
        match self.location {
            Location::Header if signed_at < earliest => Err(SigV4Error::Expired(format!(
                "Signature expired: {} is now earlier than {} ({} - 15 min.)",
                self.amz_date,
                date::format_amz_date(earliest),
                date::format_amz_date(now)
            ))),
            Location::Header | Location::Query { .. } if signed_at > latest => {
                Err(SigV4Error::Expired(format!(
                    "Signature not yet current: {} is still later than {} ({} + 15 min.)",
                    self.amz_date,
                    date::format_amz_date(latest),
                    date::format_amz_date(now)
                )))
            }
            Location::Query { expires } => {
                let ends = signed_at.checked_add(expires).unwrap_or(signed_at);
                if now > ends {
                    Err(SigV4Error::Expired(format!(
                        "Signature expired: {} is now earlier than {} ({} - {} sec.)",
                        date::format_amz_date(ends),
                        date::format_amz_date(now),
                        date::format_amz_date(now),
                        expires.as_secs()
                    )))
                } else {
                    Ok(())
                }
            }
            Location::Header => Ok(()),
        }
    }
}

/// A key that signs for one credential scope: HMAC chained from the
/// secret through the day, region and service, as AWS derives it.
#[derive(Clone, PartialEq, Eq)]
pub struct SigningKey([u8; 32]);

impl SigningKey {
    /// Derives the key of `date/region/service` from a secret access key.
    pub fn derive(secret: &str, date: &str, region: &str, service: &str) -> SigningKey {
        let date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
        let region = hmac(&date, region.as_bytes());
        let service = hmac(&region, service.as_bytes());
        SigningKey(hmac(&service, b"aws4_request"))
    }

    /// The raw key (to carry it between services).
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// A key received as bytes; `None` unless exactly 32 of them.
    pub fn from_bytes(bytes: &[u8]) -> Option<SigningKey> {
        bytes.try_into().ok().map(SigningKey)
    }
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SigningKey(..)")
    }
}

/// One request's parts, as received.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub method: &'a str,
    /// The path as it arrived (still percent-encoded).
    pub path: &'a str,
    /// The query as it arrived, without `?`.
    pub query: Option<&'a str>,
    pub headers: &'a HeaderMap,
    /// The request's `:authority` when it has no `host` header (HTTP/2).
    pub authority: Option<&'a str>,
    pub body: &'a [u8],
}

/// Reads a request's signature from its `Authorization` header or, when it
/// has none, its presigned query. Checks form only.
pub fn parse(headers: &HeaderMap, query: Option<&str>) -> Result<Signature, SigV4Error> {
    if let Some(header) = headers.get(http::header::AUTHORIZATION) {
        let header = header.to_str().map_err(|_| {
            SigV4Error::Incomplete("Authorization header is not ASCII text.".to_owned())
        })?;
        return parse_header(header, headers);
    }
    match query {
        Some(query) if query_pairs(query).any(|(name, _)| name == b"X-Amz-Signature") => {
            parse_query(query)
        }
        _ => Err(SigV4Error::Missing),
    }
}

fn parse_header(header: &str, headers: &HeaderMap) -> Result<Signature, SigV4Error> {
    let incomplete = |what: &str| SigV4Error::Incomplete(format!("{what} Authorization={header}"));
    let params = header
        .strip_prefix(ALGORITHM)
        .and_then(|rest| rest.strip_prefix(' '))
        .ok_or_else(|| incomplete("Unsupported or missing signing algorithm."))?;
    let (mut credential, mut signed_headers, mut signature) = (None, None, None);
    for part in params.split(',').map(str::trim) {
        if let Some(value) = part.strip_prefix("Credential=") {
            credential = Some(value);
        } else if let Some(value) = part.strip_prefix("SignedHeaders=") {
            signed_headers = Some(value);
        } else if let Some(value) = part.strip_prefix("Signature=") {
            signature = Some(value);
        }
    }
    let credential = credential
        .ok_or_else(|| incomplete("Authorization header requires 'Credential' parameter."))?;
    let signed_headers = signed_headers
        .ok_or_else(|| incomplete("Authorization header requires 'SignedHeaders' parameter."))?;
    let signature = signature
        .ok_or_else(|| incomplete("Authorization header requires 'Signature' parameter."))?;
    let amz_date = header_text(headers, "x-amz-date").ok_or_else(|| {
        incomplete(
            "Authorization header requires existence of either a 'X-Amz-Date' or a 'Date' header.",
        )
    })?;
    let security_token = header_text(headers, "x-amz-security-token").map(str::to_owned);
    build(
        Parts {
            credential,
            signed_headers,
            signature,
            amz_date,
            security_token,
            location: Location::Header,
        },
        &incomplete,
    )
}

fn parse_query(query: &str) -> Result<Signature, SigV4Error> {
    let incomplete = |what: &str| SigV4Error::Incomplete(what.to_owned());
    let mut values: std::collections::HashMap<&'static str, String> = Default::default();
    const NAMES: [&str; 7] = [
        "X-Amz-Algorithm",
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
        "X-Amz-Signature",
        "X-Amz-Security-Token",
    ];
    for (name, value) in query_pairs(query) {
        if let Some(known) = NAMES.iter().find(|known| known.as_bytes() == name) {
            let value = String::from_utf8(value)
                .map_err(|_| incomplete("Query authentication parameters must be UTF-8."))?;
            values.insert(known, value);
        }
    }
    let required = |name: &str| {
        values.get(name).map(String::as_str).ok_or_else(|| {
            SigV4Error::Incomplete(format!(
                "AWS query-string parameters must include '{name}'. Re-examine the query-string parameters."
            ))
        })
    };
    if required("X-Amz-Algorithm")? != ALGORITHM {
        return Err(incomplete("Unsupported or missing signing algorithm."));
    }
    let expires_text = required("X-Amz-Expires")?;
    let expires = expires_text
        .parse::<u64>()
        .ok()
        .filter(|seconds| *seconds > 0)
        .map(Duration::from_secs)
        .filter(|expires| *expires <= MAX_PRESIGNED_EXPIRY)
        .ok_or_else(|| {
            incomplete(&format!(
                "X-Amz-Expires must be a positive number of seconds no greater than 604800, not '{expires_text}'."
            ))
        })?;
    build(
        Parts {
            credential: required("X-Amz-Credential")?,
            signed_headers: required("X-Amz-SignedHeaders")?,
            signature: required("X-Amz-Signature")?,
            amz_date: required("X-Amz-Date")?,
            security_token: values.get("X-Amz-Security-Token").cloned(),
            location: Location::Query { expires },
        },
        &incomplete,
    )
}

/// A signature's raw parts, wherever they came from.
struct Parts<'a> {
    credential: &'a str,
    signed_headers: &'a str,
    signature: &'a str,
    amz_date: &'a str,
    security_token: Option<String>,
    location: Location,
}

fn build(
    parts: Parts<'_>,
    incomplete: &dyn Fn(&str) -> SigV4Error,
) -> Result<Signature, SigV4Error> {
    let scope: Vec<&str> = parts.credential.split('/').collect();
    let [access_key_id, date, region, service, "aws4_request"] = scope[..] else {
        return Err(incomplete(
            "Credential should be scoped to a valid region, service and date.",
        ));
    };
    let well_formed_date = date.len() == 8 && date.bytes().all(|b| b.is_ascii_digit());
    // A region names a namespace of streams and goes into their ARNs:
    // lowercase letters, digits and dashes, as AWS spells regions.
    let well_formed_region = (1..=40).contains(&region.len())
        && region
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if access_key_id.is_empty() || !well_formed_date || !well_formed_region || service.is_empty() {
        return Err(incomplete(
            "Credential should be scoped to a valid region, service and date.",
        ));
    }
    let well_formed_signature =
        parts.signature.len() == 64 && parts.signature.bytes().all(|b| b.is_ascii_hexdigit());
    if !well_formed_signature {
        return Err(incomplete("Signature must be 64 hexadecimal characters."));
    }
    let signed_headers: Vec<String> = parts.signed_headers.split(';').map(str::to_owned).collect();
    if signed_headers
        .iter()
        .any(|h| h.is_empty() || *h != h.to_ascii_lowercase())
    {
        return Err(incomplete(
            "SignedHeaders must be lower-case names separated by ';'.",
        ));
    }
    if !signed_headers.iter().any(|h| h == "host") {
        return Err(incomplete(
            "'Host' or ':authority' must be a 'SignedHeader' in the AWS Authorization.",
        ));
    }
    if date::parse_amz_date(parts.amz_date).is_none() {
        return Err(incomplete(&format!(
            "X-Amz-Date must be in the ISO8601 basic format yyyyMMdd'T'HHmmss'Z', not '{}'.",
            parts.amz_date
        )));
    }
    if !parts.amz_date.starts_with(date) {
        return Err(incomplete(&format!(
            "Date in Credential scope does not match YYYYMMDD from ISO-8601 version of date from HTTP: '{date}' != '{}'",
            &parts.amz_date[..8]
        )));
    }
    Ok(Signature {
        access_key_id: access_key_id.to_owned(),
        date: date.to_owned(),
        region: region.to_owned(),
        service: service.to_owned(),
        signed_headers,
        signature: parts.signature.to_ascii_lowercase(),
        amz_date: parts.amz_date.to_owned(),
        security_token: parts.security_token,
        location: parts.location,
    })
}

/// Verifies `request`, signed as `signature` says, with the signing key of
/// its scope. Time is checked separately ([`Signature::check_time`]).
pub fn verify(
    request: &Request<'_>,
    signature: &Signature,
    key: &SigningKey,
) -> Result<(), SigV4Error> {
    if let Some(name) = signature
        .signed_headers
        .iter()
        .find(|name| !canonical::printable(request, name))
    {
        return Err(SigV4Error::Incomplete(format!(
            "Signed header {name} must be visible ASCII."
        )));
    }
    let body_hash = payload_hash(request.body);
    // A client may sign the body's hash as a header instead: then that
    // header must be the body's hash, or a signed header would vouch for a
    // body that was swapped. Unsigned payloads are not accepted.
    if let Some(claimed) = header_text(request.headers, "x-amz-content-sha256") {
        if !claimed.eq_ignore_ascii_case(&body_hash) {
            return Err(SigV4Error::Mismatch);
        }
    }
    let presigned = matches!(signature.location, Location::Query { .. });
    let canonical = canonical_request(request, &signature.signed_headers, &body_hash, presigned);
    let string_to_sign = format!(
        "{ALGORITHM}\n{}\n{}\n{}",
        signature.amz_date,
        signature.scope(),
        hex(&sha256(canonical.as_bytes()))
    );
    let expected = hex(&hmac(&key.0, string_to_sign.as_bytes()));
    if constant_time_eq(expected.as_bytes(), signature.signature.as_bytes()) {
        Ok(())
    } else {
        Err(SigV4Error::Mismatch)
    }
}

fn sha256(data: &[u8]) -> [u8; 32] {
    use sha2::Digest as _;
    Sha256::digest(data).into()
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac =
        <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes a key of any length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes.iter().fold(String::new(), |mut out, b| {
        let _ = write!(out, "{b:02x}");
        out
    })
}

/// Compares without an early exit, so timing tells nothing about where
/// two signatures differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

#[cfg(test)]
mod tests;
