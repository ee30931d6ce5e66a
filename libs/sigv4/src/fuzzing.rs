//! The fuzz target of SigV4 parsing and verification
//! (`fuzz/fuzz_targets/sigv4.rs`), also replayed over the checked-in corpus
//! by `tests/fuzz_corpus.rs`. The input is split at its first newline into
//! an `Authorization` header value and a query string; nothing a client
//! sends may panic, and a parsed signature must survive every later step.

use std::time::{Duration, UNIX_EPOCH};

use http::{HeaderMap, HeaderValue};

use crate::{parse, verify, Request, SigningKey};

pub fn exercise(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let (header, query) = text.split_once('\n').unwrap_or((&text, ""));
    let mut headers = HeaderMap::new();
    if let Ok(value) = HeaderValue::from_str(header) {
        if !header.is_empty() {
            headers.insert(http::header::AUTHORIZATION, value);
        }
    }
    headers.insert("x-amz-date", HeaderValue::from_static("20261204T100000Z"));
    headers.insert(
        "host",
        HeaderValue::from_static("kinesis.us-east-1.amazonaws.com"),
    );
    let Ok(signature) = parse(&headers, (!query.is_empty()).then_some(query)) else {
        return;
    };
    assert!(signature.signed_headers.iter().any(|h| h == "host"));
    assert_eq!(signature.signature.len(), 64);
    for seconds in [0, 1_796_378_400, u64::MAX / 4] {
        let _ = signature.check_time(UNIX_EPOCH + Duration::from_secs(seconds));
    }
    let key = SigningKey::derive(
        "secret",
        &signature.date,
        &signature.region,
        &signature.service,
    );
    let request = Request {
        method: "POST",
        path: "/",
        query: (!query.is_empty()).then_some(query),
        headers: &headers,
        authority: None,
        body: data,
    };
    // A signature read from fuzz input is (almost surely) not the right one.
    let _ = verify(&request, &signature, &key);
}
