use std::time::{Duration, SystemTime, UNIX_EPOCH};

use aws_credential_types::Credentials;
use aws_sigv4::http_request::{sign, SignableBody, SignableRequest, SigningSettings};
use aws_sigv4::sign::v4;
use aws_smithy_runtime_api::client::identity::Identity;

use super::*;

const KEY: &str = "AKIDEXAMPLE";
const SECRET: &str = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY";

/// A Kinesis-style request signed by the AWS SDK's own signer at `at`.
fn signed(uri: &str, body: &[u8], at: SystemTime) -> http::Request<Vec<u8>> {
    signed_with(uri, body, at, SigningSettings::default())
}

/// A request signed by the AWS SDK's signer with `settings` (header or
/// presigned query form).
fn signed_with(
    uri: &str,
    body: &[u8],
    at: SystemTime,
    settings: SigningSettings,
) -> http::Request<Vec<u8>> {
    let identity: Identity = Credentials::new(KEY, SECRET, None, None, "test").into();
    let params = v4::SigningParams::builder()
        .identity(&identity)
        .region("us-west-2")
        .name("kinesis")
        .time(at)
        .settings(settings)
        .build()
        .expect("signing params")
        .into();
    let mut request = http::Request::post(uri)
        .header("host", "kinesis.us-west-2.amazonaws.com")
        .header("content-type", "application/x-amz-json-1.1")
        .header("x-amz-target", "Kinesis_20131202.PutRecord")
        .header("x-amz-user-agent", "a  b   c")
        .body(body.to_vec())
        .expect("request");
    let headers: Vec<(&str, &str)> = request
        .headers()
        .iter()
        .map(|(name, value)| (name.as_str(), value.to_str().expect("ascii")))
        .collect();
    let signable =
        SignableRequest::new("POST", uri, headers.into_iter(), SignableBody::Bytes(body))
            .expect("signable");
    let (instructions, _) = sign(signable, &params).expect("signed").into_parts();
    instructions.apply_to_request_http1x(&mut request);
    request
}

fn check(
    request: &http::Request<Vec<u8>>,
    secret: &str,
    now: SystemTime,
) -> Result<(), SigV4Error> {
    let signature = parse(request.headers(), request.uri().query())?;
    signature.check_time(now)?;
    let parts = Request {
        method: request.method().as_str(),
        path: request.uri().path(),
        query: request.uri().query(),
        headers: request.headers(),
        authority: request.uri().authority().map(|a| a.as_str()),
        body: request.body(),
    };
    let key = SigningKey::derive(
        secret,
        &signature.date,
        &signature.region,
        &signature.service,
    );
    verify(&parts, &signature, &key)
}

fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

#[test]
fn a_request_the_sdk_signed_verifies() {
    let now = at(1_780_000_000);
    let body = br#"{"StreamName":"s","Data":"aGk=","PartitionKey":"k"}"#;
    let request = signed("https://kinesis.us-west-2.amazonaws.com/", body, now);
    assert_eq!(check(&request, SECRET, now), Ok(()));
    let authorization = parse(request.headers(), None).expect("parsed");
    assert_eq!(authorization.access_key_id, KEY);
    assert_eq!(authorization.region, "us-west-2");
    assert_eq!(authorization.service, "kinesis");
}

#[test]
fn a_query_string_is_canonicalised_as_the_sdk_does() {
    let now = at(1_780_000_000);
    let uri = "https://kinesis.us-west-2.amazonaws.com/a%20path/x?b=2&a=1&a=0&c=%2F+space";
    let request = signed(uri, b"{}", now);
    assert_eq!(check(&request, SECRET, now), Ok(()));
}

#[test]
fn anything_changed_after_signing_is_a_mismatch() {
    let now = at(1_780_000_000);
    let request = signed(
        "https://kinesis.us-west-2.amazonaws.com/",
        b"{\"a\":1}",
        now,
    );
    assert_eq!(
        check(&request, "another secret", now),
        Err(SigV4Error::Mismatch)
    );

    let mut tampered_body = request.clone();
    *tampered_body.body_mut() = b"{\"a\":2}".to_vec();
    // The SDK signs the payload's hash in a header too: drop it, so the
    // body itself is what is hashed.
    tampered_body.headers_mut().remove("x-amz-content-sha256");
    assert_eq!(
        check(&tampered_body, SECRET, now),
        Err(SigV4Error::Mismatch)
    );

    let mut tampered_header = request.clone();
    tampered_header.headers_mut().insert(
        "x-amz-target",
        http::HeaderValue::from_static("Kinesis_20131202.DeleteStream"),
    );
    assert_eq!(
        check(&tampered_header, SECRET, now),
        Err(SigV4Error::Mismatch)
    );
}

#[test]
fn a_signature_more_than_fifteen_minutes_off_is_refused() {
    let signed_at = at(1_780_000_000);
    let request = signed("https://kinesis.us-west-2.amazonaws.com/", b"{}", signed_at);
    let minute = Duration::from_secs(60);
    assert_eq!(check(&request, SECRET, signed_at + 14 * minute), Ok(()));
    assert_eq!(check(&request, SECRET, signed_at - 14 * minute), Ok(()));
    assert!(matches!(
        check(&request, SECRET, signed_at + 16 * minute),
        Err(SigV4Error::Expired(_))
    ));
    assert!(matches!(
        check(&request, SECRET, signed_at - 16 * minute),
        Err(SigV4Error::Expired(_))
    ));
}

#[test]
fn over_http2_the_host_comes_from_the_authority() {
    let now = at(1_780_000_000);
    let mut request = signed("https://kinesis.us-west-2.amazonaws.com/", b"{}", now);
    request.headers_mut().remove("host");
    assert_eq!(check(&request, SECRET, now), Ok(()));
}

#[test]
fn malformed_authorization_headers_are_incomplete() {
    let good = "AWS4-HMAC-SHA256 Credential=AKID/20260101/us-east-1/kinesis/aws4_request, SignedHeaders=host;x-amz-date, Signature=";
    let signature = "a".repeat(64);
    let parse_authorization = |header: &str| {
        let mut headers = HeaderMap::new();
        headers.insert(
            "x-amz-date",
            http::HeaderValue::from_static("20260101T000000Z"),
        );
        match http::HeaderValue::from_str(header) {
            Ok(value) => {
                headers.insert(http::header::AUTHORIZATION, value);
                parse(&headers, None)
            }
            Err(_) => Err(SigV4Error::Incomplete("not a header".to_owned())),
        }
    };
    assert!(parse_authorization(&format!("{good}{signature}")).is_ok());
    for bad in [
        String::new(),
        "AWS4-HMAC-SHA1 Credential=x".to_owned(),
        format!("{good}abc"),
        format!("{good}{}", "g".repeat(64)),
        good.replace(
            "Credential=AKID/20260101/us-east-1/kinesis/aws4_request",
            "Credential=AKID/2026/us-east-1/kinesis/aws4_request",
        ) + &signature,
        good.replace("/aws4_request", "/aws5_request") + &signature,
        good.replace("SignedHeaders=host;x-amz-date", "SignedHeaders=Host") + &signature,
        good.replace(", Signature=", ", Sig=") + &signature,
        good.replace("SignedHeaders=host;x-amz-date", "SignedHeaders=x-amz-date") + &signature,
        good.replace("/20260101/", "/20260102/") + &signature,
        good.replace("/us-east-1/", "/us:east-1/") + &signature,
        good.replace("/us-east-1/", "/US-EAST-1/") + &signature,
        good.replace("/us-east-1/", &format!("/{}/", "a".repeat(41))) + &signature,
    ] {
        assert!(
            matches!(parse_authorization(&bad), Err(SigV4Error::Incomplete(_))),
            "{bad:?}"
        );
    }
}

#[test]
fn encoding_follows_rfc_3986() {
    use canonical::{decode, encode};
    assert_eq!(encode(b"a-b_c.d~e f/g+"), "a-b_c.d~e%20f%2Fg%2B");
    assert_eq!(decode("a%2Fb%zz%4"), b"a/b%zz%4");
    assert!(constant_time_eq(b"abc", b"abc"));
    assert!(!constant_time_eq(b"abc", b"abd"));
    assert!(!constant_time_eq(b"abc", b"ab"));
}

fn presigned_settings(expires: Duration) -> SigningSettings {
    let mut settings = SigningSettings::default();
    settings.signature_location = aws_sigv4::http_request::SignatureLocation::QueryParams;
    settings.expires_in = Some(expires);
    settings
}

#[test]
fn a_presigned_request_verifies_until_it_expires() {
    let signed_at = at(1_780_000_000);
    let body = br#"{"StreamName":"s"}"#;
    let request = signed_with(
        "https://kinesis.us-west-2.amazonaws.com/",
        body,
        signed_at,
        presigned_settings(Duration::from_secs(3600)),
    );
    assert!(request.headers().get("authorization").is_none());
    assert_eq!(check(&request, SECRET, signed_at), Ok(()));
    // Within its hour, though far beyond the header form's 15 minutes.
    assert_eq!(
        check(&request, SECRET, signed_at + Duration::from_secs(3599)),
        Ok(())
    );
    assert!(matches!(
        check(&request, SECRET, signed_at + Duration::from_secs(3601)),
        Err(SigV4Error::Expired(_))
    ));
    assert_eq!(
        check(&request, "another secret", signed_at),
        Err(SigV4Error::Mismatch)
    );
    let signature = parse(request.headers(), request.uri().query()).expect("parsed");
    assert_eq!(
        signature.location,
        Location::Query {
            expires: Duration::from_secs(3600)
        }
    );
}

#[test]
fn a_presigned_query_missing_a_part_is_incomplete() {
    let request = signed_with(
        "https://kinesis.us-west-2.amazonaws.com/",
        b"{}",
        at(1_780_000_000),
        presigned_settings(Duration::from_secs(60)),
    );
    let query = request.uri().query().expect("a query");
    for name in [
        "X-Amz-Credential",
        "X-Amz-Date",
        "X-Amz-Expires",
        "X-Amz-SignedHeaders",
    ] {
        let without: Vec<&str> = query
            .split('&')
            .filter(|pair| !pair.starts_with(name))
            .collect();
        assert!(
            matches!(
                parse(&HeaderMap::new(), Some(&without.join("&"))),
                Err(SigV4Error::Incomplete(_))
            ),
            "{name}"
        );
    }
    let week_and_a_second = query.replace("X-Amz-Expires=60", "X-Amz-Expires=604801");
    assert!(matches!(
        parse(&HeaderMap::new(), Some(&week_and_a_second)),
        Err(SigV4Error::Incomplete(_))
    ));
}

#[test]
fn no_credentials_at_all_is_missing() {
    assert_eq!(parse(&HeaderMap::new(), None), Err(SigV4Error::Missing));
    assert_eq!(
        parse(&HeaderMap::new(), Some("a=b")),
        Err(SigV4Error::Missing)
    );
}

#[test]
fn a_body_that_does_not_match_its_signed_hash_is_a_mismatch() {
    let now = at(1_780_000_000);
    let mut request = signed("https://kinesis.us-west-2.amazonaws.com/", b"{}", now);
    request.headers_mut().insert(
        "x-amz-content-sha256",
        http::HeaderValue::from_static("UNSIGNED-PAYLOAD"),
    );
    assert_eq!(check(&request, SECRET, now), Err(SigV4Error::Mismatch));
}

#[test]
fn signing_keys_travel_as_32_bytes() {
    let key = SigningKey::derive(SECRET, "20260101", "us-east-1", "kinesis");
    assert_eq!(SigningKey::from_bytes(key.as_bytes()), Some(key.clone()));
    assert_eq!(SigningKey::from_bytes(&[0; 31]), None);
    assert_eq!(format!("{key:?}"), "SigningKey(..)");
}

#[test]
fn signed_header_values_must_be_visible_ascii() {
    let now = at(1_780_000_000);
    let mut request = signed("https://kinesis.us-west-2.amazonaws.com/", b"{}", now);
    request.headers_mut().insert(
        "x-amz-user-agent",
        http::HeaderValue::from_bytes(b"a\xc2\x85b").expect("a header value"),
    );
    assert!(matches!(
        check(&request, SECRET, now),
        Err(SigV4Error::Incomplete(_))
    ));
}
