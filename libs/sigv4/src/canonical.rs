//! The canonical request: the exact text AWS hashes and signs, built from
//! the request as it arrived.

use http::HeaderMap;
use sha2::{Digest, Sha256};

use crate::{hex, Request};

/// The canonical request AWS signs. `payload_hash` is the hex SHA-256 of
/// the body (checked against `x-amz-content-sha256` by the caller when the
/// client sent one); in the presigned form the query's `X-Amz-Signature`
/// is left out, as it cannot sign itself.
pub fn canonical_request(
    request: &Request<'_>,
    signed_headers: &[String],
    payload_hash: &str,
    presigned: bool,
) -> String {
    let headers: String = signed_headers
        .iter()
        .map(|name| format!("{name}:{}\n", canonical_header_value(request, name)))
        .collect();
    format!(
        "{}\n{}\n{}\n{headers}\n{}\n{payload_hash}",
        request.method,
        canonical_path(request.path),
        canonical_query(request.query.unwrap_or(""), presigned),
        signed_headers.join(";"),
    )
}

/// The hex SHA-256 of a body.
pub(crate) fn payload_hash(body: &[u8]) -> String {
    hex(&Sha256::digest(body))
}

pub(crate) fn header_text<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

/// A signed header's values, trimmed, inner runs of spaces collapsed, joined
/// with commas; `host` falls back to the request's authority.
fn canonical_header_value(request: &Request<'_>, name: &str) -> String {
    let values: Vec<String> = request
        .headers
        .get_all(name)
        .iter()
        .map(|v| collapse_spaces(&String::from_utf8_lossy(v.as_bytes())))
        .collect();
    if values.is_empty() && name == "host" {
        return request.authority.unwrap_or("").to_owned();
    }
    values.join(",")
}

/// Trims and collapses runs of spaces and tabs (only those: the values
/// are checked to be visible ASCII first, see [`printable`]).
fn collapse_spaces(value: &str) -> String {
    value
        .split([' ', '\t'])
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Whether every value of the signed header `name` is visible ASCII,
/// spaces and tabs: anything else could canonicalise two different byte
/// strings alike.
pub(crate) fn printable(request: &Request<'_>, name: &str) -> bool {
    request.headers.get_all(name).iter().all(|value| {
        value
            .as_bytes()
            .iter()
            .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
    })
}

/// Each path segment encoded again (AWS double-encodes for every service
/// but S3); an empty path is `/`.
fn canonical_path(path: &str) -> String {
    if path.is_empty() {
        return "/".to_owned();
    }
    path.split('/')
        .map(|segment| encode(segment.as_bytes()))
        .collect::<Vec<_>>()
        .join("/")
}

/// Names and values decoded as a form (`+` is a space, as the SDK's signer
/// reads them), encoded the AWS way, sorted by name then value.
fn canonical_query(query: &str, presigned: bool) -> String {
    let mut pairs: Vec<(String, String)> = query_pairs(query)
        .filter(|(name, _)| !(presigned && name == b"X-Amz-Signature"))
        .map(|(name, value)| (encode(&name), encode(&value)))
        .collect();
    pairs.sort();
    pairs
        .iter()
        .map(|(name, value)| format!("{name}={value}"))
        .collect::<Vec<_>>()
        .join("&")
}

/// A query's names and values, decoded as a form (`+` is a space).
pub(crate) fn query_pairs(query: &str) -> impl Iterator<Item = (Vec<u8>, Vec<u8>)> + '_ {
    query
        .split('&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
            let form = |text: &str| decode(&text.replace('+', " "));
            (form(name), form(value))
        })
}

/// Percent-encodes everything but A-Z a-z 0-9 - _ . ~ (RFC 3986).
pub(crate) fn encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Percent-decodes (a malformed escape stays as it is).
pub(crate) fn decode(text: &str) -> Vec<u8> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex_pair = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok());
        match (
            bytes[i],
            hex_pair.and_then(|h| u8::from_str_radix(h, 16).ok()),
        ) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    out
}
