//! AWS Signature Version 4 for the frontend's Kinesis calls: a POST to `/`
//! with no query, signing `content-type`, `host`, `x-amz-date` and
//! `x-amz-target` — what an SDK signs, minus what the frontend does not
//! need. Checked against Freshet's own verifier in the tests.

use std::time::{SystemTime, UNIX_EPOCH};

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

pub const CONTENT_TYPE: &str = "application/x-amz-json-1.1";
const SIGNED_HEADERS: &str = "content-type;host;x-amz-date;x-amz-target";

/// Credentials and scope to sign with.
#[derive(Debug, Clone)]
pub struct Signer {
    pub access_key: String,
    pub secret_key: String,
    pub region: String,
}

/// The headers a signed request carries besides its body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Signed {
    pub amz_date: String,
    pub authorization: String,
}

impl Signer {
    /// Signs a POST of `body` to `/` on `host` for the operation `target`
    /// (`Kinesis_20131202.PutRecord`) at time `now`.
    pub fn sign(&self, host: &str, target: &str, body: &[u8], now: SystemTime) -> Signed {
        let amz_date = amz_date(now);
        let day = &amz_date[..8];
        let scope = format!("{day}/{}/kinesis/aws4_request", self.region);
        let canonical = format!(
            "POST\n/\n\ncontent-type:{CONTENT_TYPE}\nhost:{host}\nx-amz-date:{amz_date}\nx-amz-target:{target}\n\n{SIGNED_HEADERS}\n{}",
            hex(&Sha256::digest(body))
        );
        let string_to_sign = format!(
            "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
            hex(&Sha256::digest(canonical.as_bytes()))
        );
        let key = signing_key(&self.secret_key, day, &self.region);
        let signature = hex(&hmac(&key, string_to_sign.as_bytes()));
        Signed {
            authorization: format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={SIGNED_HEADERS}, Signature={signature}",
                self.access_key
            ),
            amz_date,
        }
    }
}

fn signing_key(secret: &str, day: &str, region: &str) -> [u8; 32] {
    let date = hmac(format!("AWS4{secret}").as_bytes(), day.as_bytes());
    let region = hmac(&date, region.as_bytes());
    let service = hmac(&region, b"kinesis");
    hmac(&service, b"aws4_request")
}

fn hmac(key: &[u8], data: &[u8]) -> [u8; 32] {
    let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().into()
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(DIGITS[usize::from(byte >> 4)] as char);
        out.push(DIGITS[usize::from(byte & 0xf)] as char);
    }
    out
}

/// `YYYYMMDD'T'HHMMSS'Z'` in UTC.
fn amz_date(now: SystemTime) -> String {
    let seconds = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    let days = i64::try_from(seconds / 86_400).unwrap_or(0);
    let of_day = seconds % 86_400;
    let (year, month, day) = civil_from_days(days);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        of_day / 3600,
        of_day / 60 % 60,
        of_day % 60
    )
}

/// The proleptic Gregorian date `days` after 1970-01-01 (Howard Hinnant's
/// `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let mp = (5 * day_of_year + 2) / 153;
    let day = (day_of_year - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn signer() -> Signer {
        Signer {
            access_key: "AKIDEXAMPLE".into(),
            secret_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            region: "us-west-2".into(),
        }
    }

    #[test]
    fn dates_are_utc_calendar_dates() {
        assert_eq!(amz_date(UNIX_EPOCH), "19700101T000000Z");
        let leap_day = UNIX_EPOCH + Duration::from_secs(1_709_210_096);
        assert_eq!(amz_date(leap_day), "20240229T123456Z");
        let new_year = UNIX_EPOCH + Duration::from_secs(1_767_225_599);
        assert_eq!(amz_date(new_year), "20251231T235959Z");
    }

    #[test]
    fn freshets_verifier_accepts_the_signature_and_refuses_a_changed_body() {
        let now = SystemTime::now();
        let body = br#"{"StreamName":"s","PartitionKey":"k","Data":"aGk="}"#;
        let host = "127.0.0.1:4567";
        let target = "Kinesis_20131202.PutRecord";
        let signed = signer().sign(host, target, body, now);
        let mut headers = http::HeaderMap::new();
        let mut put = |name: &'static str, value: &str| {
            headers.insert(name, http::HeaderValue::from_str(value).expect("header"));
        };
        put("content-type", CONTENT_TYPE);
        put("host", host);
        put("x-amz-date", &signed.amz_date);
        put("x-amz-target", target);
        put("authorization", &signed.authorization);
        let signature = freshet_sigv4::parse(&headers, None).expect("well formed");
        signature.check_time(now).expect("current");
        let key = freshet_sigv4::SigningKey::derive(
            &signer().secret_key,
            &signed.amz_date[..8],
            "us-west-2",
            "kinesis",
        );
        let request = |body: &'static [u8]| freshet_sigv4::Request {
            method: "POST",
            path: "/",
            query: None,
            headers: &headers,
            authority: None,
            body,
        };
        freshet_sigv4::verify(&request(body), &signature, &key).expect("verified");
        let other = br#"{"StreamName":"s","PartitionKey":"k","Data":"aG8="}"#;
        assert!(freshet_sigv4::verify(&request(other), &signature, &key).is_err());
    }
}
