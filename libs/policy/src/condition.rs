//! `Condition` blocks: `{"<Operator>[IfExists]": {"<key>": value or [values]}}`.
//!
//! As IAM evaluates them: every operator of a block and every key under an
//! operator must hold (AND); a key's values are alternatives (OR), except
//! under a negated operator, where the request's value must match none of
//! them. A key the request does not carry makes a condition false — true
//! for negated operators, and for `…IfExists`. Keys compare without regard
//! to case.

use std::collections::HashMap;
use std::net::IpAddr;

use freshet_types::calendar::{days_from_civil, days_in_month};
use serde_json::{Map, Value};

use crate::error::PolicyError;
use crate::pattern::Pattern;

/// The facts a request brings to conditions: key (lower case) → values.
#[derive(Debug, Clone, Default)]
pub struct Context {
    values: HashMap<String, Vec<String>>,
}

impl Context {
    pub fn with(mut self, key: &str, value: impl Into<String>) -> Context {
        self.values
            .entry(key.to_ascii_lowercase())
            .or_default()
            .push(value.into());
        self
    }

    fn get(&self, key: &str) -> Option<&[String]> {
        self.values.get(key).map(Vec::as_slice)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    String { ignore_case: bool },
    StringLike,
    Numeric(Order),
    Date(Order),
    Bool,
    Ip,
    Arn { like: bool },
    Null,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Order {
    Equal,
    Less,
    LessOrEqual,
    Greater,
    GreaterOrEqual,
}

/// One key under one operator.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    kind: Kind,
    negated: bool,
    if_exists: bool,
    key: String,
    values: Vec<String>,
}

fn bad(message: impl Into<String>) -> PolicyError {
    PolicyError(message.into())
}

/// The condition keys a Freshet request carries. Any other key is refused
/// when a policy is put: a Deny on a key that is never present would
/// silently never apply.
pub const KNOWN_KEYS: &[&str] = &[
    "aws:sourceip",
    "aws:currenttime",
    "aws:epochtime",
    "aws:username",
    "aws:principalarn",
    "aws:principalaccount",
    "aws:requestedregion",
    "aws:securetransport",
];

fn operator_kind(name: &str) -> Option<(Kind, bool)> {
    use Order::*;
    Some(match name {
        "StringEquals" => (Kind::String { ignore_case: false }, false),
        "StringNotEquals" => (Kind::String { ignore_case: false }, true),
        "StringEqualsIgnoreCase" => (Kind::String { ignore_case: true }, false),
        "StringNotEqualsIgnoreCase" => (Kind::String { ignore_case: true }, true),
        "StringLike" => (Kind::StringLike, false),
        "StringNotLike" => (Kind::StringLike, true),
        "NumericEquals" => (Kind::Numeric(Equal), false),
        "NumericNotEquals" => (Kind::Numeric(Equal), true),
        "NumericLessThan" => (Kind::Numeric(Less), false),
        "NumericLessThanEquals" => (Kind::Numeric(LessOrEqual), false),
        "NumericGreaterThan" => (Kind::Numeric(Greater), false),
        "NumericGreaterThanEquals" => (Kind::Numeric(GreaterOrEqual), false),
        "DateEquals" => (Kind::Date(Equal), false),
        "DateNotEquals" => (Kind::Date(Equal), true),
        "DateLessThan" => (Kind::Date(Less), false),
        "DateLessThanEquals" => (Kind::Date(LessOrEqual), false),
        "DateGreaterThan" => (Kind::Date(Greater), false),
        "DateGreaterThanEquals" => (Kind::Date(GreaterOrEqual), false),
        "Bool" => (Kind::Bool, false),
        "IpAddress" => (Kind::Ip, false),
        "NotIpAddress" => (Kind::Ip, true),
        "ArnEquals" => (Kind::Arn { like: false }, false),
        "ArnNotEquals" => (Kind::Arn { like: false }, true),
        "ArnLike" => (Kind::Arn { like: true }, false),
        "ArnNotLike" => (Kind::Arn { like: true }, true),
        "Null" => (Kind::Null, false),
        _ => return None,
    })
}

impl Condition {
    /// Parses a statement's `Condition` object.
    pub fn parse_block(block: &Map<String, Value>) -> Result<Vec<Condition>, PolicyError> {
        let mut conditions = Vec::new();
        for (operator, keys) in block {
            if operator.starts_with("ForAnyValue:") || operator.starts_with("ForAllValues:") {
                return Err(bad(format!(
                    "Condition operator {operator}: set operators are not supported."
                )));
            }
            let (name, if_exists) = match operator.strip_suffix("IfExists") {
                Some(name) => (name, true),
                None => (operator.as_str(), false),
            };
            let (kind, negated) = operator_kind(name)
                .ok_or_else(|| bad(format!("Unknown condition operator {operator}.")))?;
            if if_exists && kind == Kind::Null {
                return Err(bad("NullIfExists is not an operator."));
            }
            let Value::Object(keys) = keys else {
                return Err(bad(format!(
                    "Condition {operator} must map keys to values."
                )));
            };
            if keys.is_empty() {
                return Err(bad(format!("Condition {operator} names no key.")));
            }
            for (key, values) in keys {
                if !KNOWN_KEYS.contains(&key.to_ascii_lowercase().as_str()) {
                    return Err(bad(format!(
                        "Condition key {key} is not one Freshet supplies (supported: aws:SourceIp, aws:CurrentTime, aws:EpochTime, aws:username, aws:PrincipalArn, aws:PrincipalAccount, aws:RequestedRegion, aws:SecureTransport)."
                    )));
                }
                let values: Vec<String> = match values {
                    Value::Array(list) if !list.is_empty() => {
                        list.iter().map(scalar).collect::<Result<_, _>>()?
                    }
                    Value::Array(_) => {
                        return Err(bad(format!("Condition {operator} {key} has no values.")))
                    }
                    other => vec![scalar(other)?],
                };
                for value in &values {
                    check_value(kind, value)
                        .map_err(|e| bad(format!("Condition {operator} {key}: {}", e.0)))?;
                }
                conditions.push(Condition {
                    kind,
                    negated,
                    if_exists,
                    key: key.to_ascii_lowercase(),
                    values,
                });
            }
        }
        Ok(conditions)
    }

    /// Whether the condition holds for `context`.
    pub fn holds(&self, context: &Context) -> bool {
        let Some(actual) = context.get(&self.key) else {
            return match self.kind {
                Kind::Null => self.values.iter().any(|v| v == "true"),
                _ => self.negated || self.if_exists,
            };
        };
        if self.kind == Kind::Null {
            return self.values.iter().any(|v| v == "false");
        }
        let any_matches = actual.iter().any(|value| {
            self.values
                .iter()
                .any(|expected| matches(self.kind, expected, value))
        });
        any_matches != self.negated
    }
}

fn scalar(value: &Value) -> Result<String, PolicyError> {
    match value {
        Value::String(s) => Ok(s.clone()),
        Value::Bool(b) => Ok(b.to_string()),
        Value::Number(n) => Ok(n.to_string()),
        _ => Err(bad(
            "Condition values must be strings, numbers or booleans.",
        )),
    }
}

fn check_value(kind: Kind, value: &str) -> Result<(), PolicyError> {
    let ok = match kind {
        Kind::Numeric(_) => value.parse::<f64>().is_ok_and(f64::is_finite),
        Kind::Date(_) => epoch_seconds(value).is_some(),
        Kind::Bool | Kind::Null => value == "true" || value == "false",
        Kind::Ip => Cidr::parse(value).is_some(),
        Kind::String { .. } | Kind::StringLike | Kind::Arn { .. } => true,
    };
    if ok {
        Ok(())
    } else {
        Err(bad(format!(
            "'{value}' is not a valid value for this operator."
        )))
    }
}

fn matches(kind: Kind, expected: &str, actual: &str) -> bool {
    match kind {
        Kind::String { ignore_case: false } => expected == actual,
        Kind::String { ignore_case: true } => expected.eq_ignore_ascii_case(actual),
        Kind::StringLike => Pattern::new(expected, true).matches(actual),
        // IAM matches ArnEquals and ArnLike alike: wildcards in each part.
        Kind::Arn { .. } => Pattern::new(expected, true).matches(actual),
        Kind::Numeric(order) => match (actual.parse::<f64>(), expected.parse::<f64>()) {
            (Ok(a), Ok(e)) => compare(order, a.partial_cmp(&e)),
            _ => false,
        },
        Kind::Date(order) => match (epoch_seconds(actual), epoch_seconds(expected)) {
            (Some(a), Some(e)) => compare(order, Some(a.cmp(&e))),
            _ => false,
        },
        Kind::Bool => expected.eq_ignore_ascii_case(actual),
        Kind::Ip => match (Cidr::parse(expected), actual.parse::<IpAddr>()) {
            (Some(cidr), Ok(ip)) => cidr.contains(ip),
            _ => false,
        },
        Kind::Null => false,
    }
}

fn compare(order: Order, ordering: Option<std::cmp::Ordering>) -> bool {
    use std::cmp::Ordering::*;
    matches!(
        (order, ordering),
        (Order::Equal, Some(Equal))
            | (Order::Less, Some(Less))
            | (Order::LessOrEqual, Some(Less | Equal))
            | (Order::Greater, Some(Greater))
            | (Order::GreaterOrEqual, Some(Greater | Equal))
    )
}

/// A date as seconds since the epoch: epoch seconds, `YYYY-MM-DD`, or
/// `YYYY-MM-DDTHH:MM:SS[.fff]Z`.
pub(crate) fn epoch_seconds(text: &str) -> Option<i64> {
    if let Ok(seconds) = text.parse::<i64>() {
        return Some(seconds);
    }
    let b = text.as_bytes();
    let number = |range| freshet_types::calendar::digits_at(text, range);
    if b.len() < 10 || b[4] != b'-' || b[7] != b'-' {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    if !(1..=12).contains(&month) || !(1..=days_in_month(year, month)).contains(&day) {
        return None;
    }
    let (hour, minute, second) = if b.len() == 10 {
        (0, 0, 0)
    } else {
        let time = text.get(10..)?;
        let time = time.strip_prefix('T')?.strip_suffix('Z')?;
        let (time, fraction) = time.split_once('.').unwrap_or((time, "0"));
        if fraction.is_empty() || !fraction.bytes().all(|d| d.is_ascii_digit()) {
            return None;
        }
        let parts: Vec<&str> = time.split(':').collect();
        let [h, m, s] = parts[..] else { return None };
        let parse = |t: &str| -> Option<i64> {
            (t.len() == 2 && t.bytes().all(|d| d.is_ascii_digit())).then(|| t.parse().ok())?
        };
        (parse(h)?, parse(m)?, parse(s)?)
    };
    if hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    Some(days_from_civil(year, month, day) * 86_400 + hour * 3_600 + minute * 60 + second)
}

/// An address block, `a.b.c.d/n` or an IPv6 one (a bare address is /32 or
/// /128).
struct Cidr {
    network: IpAddr,
    prefix: u32,
}

impl Cidr {
    fn parse(text: &str) -> Option<Cidr> {
        let (address, prefix) = match text.split_once('/') {
            Some((address, prefix)) => (address, Some(prefix.parse::<u32>().ok()?)),
            None => (text, None),
        };
        let network: IpAddr = address.parse().ok()?;
        let bits = if network.is_ipv4() { 32 } else { 128 };
        let prefix = prefix.unwrap_or(bits);
        (prefix <= bits).then_some(Cidr { network, prefix })
    }

    fn contains(&self, ip: IpAddr) -> bool {
        let masked = |value: u128, bits: u32| {
            if self.prefix == 0 {
                0
            } else {
                value >> (bits - self.prefix)
            }
        };
        match (self.network, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u128::from(u32::from(net)), 32) == masked(u128::from(u32::from(ip)), 32)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), 128) == masked(u128::from(ip), 128)
            }
            _ => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(json: &str) -> Vec<Condition> {
        let Value::Object(map) = serde_json::from_str(json).expect("json") else {
            panic!("not an object")
        };
        Condition::parse_block(&map).expect("a valid block")
    }

    fn holds(json: &str, context: &Context) -> bool {
        block(json).iter().all(|c| c.holds(context))
    }

    #[test]
    fn conditions_evaluate_as_iam_does() {
        let office = Context::default()
            .with("aws:SourceIp", "203.0.113.7")
            .with("aws:CurrentTime", "2026-12-04T12:00:00Z")
            .with("aws:username", "alice")
            .with("aws:SecureTransport", "false");
        let table: &[(&str, bool)] = &[
            (r#"{"IpAddress": {"aws:SourceIp": "203.0.113.0/24"}}"#, true),
            (
                r#"{"IpAddress": {"aws:SourceIp": ["10.0.0.0/8", "203.0.113.7"]}}"#,
                true,
            ),
            (r#"{"IpAddress": {"aws:SourceIp": "10.0.0.0/8"}}"#, false),
            (r#"{"NotIpAddress": {"aws:SourceIp": "10.0.0.0/8"}}"#, true),
            (r#"{"IpAddress": {"aws:SourceIp": "0.0.0.0/0"}}"#, true),
            (r#"{"IpAddress": {"aws:SourceIp": "2001:db8::/32"}}"#, false),
            (
                r#"{"DateLessThan": {"aws:CurrentTime": "2027-01-01T00:00:00Z"}}"#,
                true,
            ),
            (
                r#"{"DateGreaterThan": {"aws:CurrentTime": "2027-01-01"}}"#,
                false,
            ),
            (r#"{"DateLessThan": {"aws:CurrentTime": 1893456000}}"#, true),
            (
                r#"{"StringEquals": {"aws:username": ["bob", "alice"]}}"#,
                true,
            ),
            (r#"{"StringEquals": {"AWS:USERNAME": "alice"}}"#, true),
            (r#"{"StringEquals": {"aws:username": "Alice"}}"#, false),
            (
                r#"{"StringEqualsIgnoreCase": {"aws:username": "Alice"}}"#,
                true,
            ),
            (
                r#"{"StringNotEquals": {"aws:username": ["bob", "alice"]}}"#,
                false,
            ),
            (r#"{"StringLike": {"aws:username": "al*"}}"#, true),
            (r#"{"StringNotLike": {"aws:username": "b*"}}"#, true),
            (r#"{"Bool": {"aws:SecureTransport": "true"}}"#, false),
            (r#"{"Bool": {"aws:SecureTransport": false}}"#, true),
            // Absent keys: false, but true when negated or IfExists.
            (r#"{"StringEquals": {"aws:PrincipalArn": "data"}}"#, false),
            (r#"{"StringNotEquals": {"aws:PrincipalArn": "data"}}"#, true),
            (
                r#"{"StringEqualsIfExists": {"aws:PrincipalArn": "data"}}"#,
                true,
            ),
            (r#"{"Null": {"aws:PrincipalArn": "true"}}"#, true),
            (r#"{"Null": {"aws:username": "true"}}"#, false),
            (r#"{"Null": {"aws:username": "false"}}"#, true),
            // Every operator and key must hold.
            (
                r#"{"IpAddress": {"aws:SourceIp": "203.0.113.0/24"}, "StringEquals": {"aws:username": "bob"}}"#,
                false,
            ),
            (r#"{"NumericLessThan": {"aws:EpochTime": 5}}"#, false),
            (
                r#"{"ArnEquals": {"aws:PrincipalArn": "arn:aws:iam::*:user/ali*"}}"#,
                false,
            ),
        ];
        for &(json, expected) in table {
            assert_eq!(holds(json, &office), expected, "{json}");
        }
    }

    #[test]
    fn malformed_blocks_are_refused() {
        for json in [
            r#"{"StringEqualz": {"k": "v"}}"#,
            r#"{"IpAddress": {"aws:SourceIp": "300.1.1.1"}}"#,
            r#"{"DateLessThan": {"aws:CurrentTime": "yesterday"}}"#,
            r#"{"NumericEquals": {"n": "one"}}"#,
            r#"{"Bool": {"b": "yes"}}"#,
            r#"{"StringEquals": {"k": []}}"#,
            r#"{"StringEquals": {"k": {"nested": 1}}}"#,
            r#"{"ForAnyValue:StringEquals": {"k": "v"}}"#,
            r#"{"NullIfExists": {"k": "true"}}"#,
            r#"{"StringEquals": {}}"#,
            r#"{"StringEquals": {"aws:PrincipalTag/team": "data"}}"#,
            r#"{"NumericEquals": {"aws:EpochTime": "NaN"}}"#,
        ] {
            let Value::Object(map) = serde_json::from_str(json).expect("json") else {
                panic!("not an object")
            };
            assert!(Condition::parse_block(&map).is_err(), "{json}");
        }
    }

    #[test]
    fn dates_read_in_every_form_iam_takes() {
        assert_eq!(epoch_seconds("1970-01-01"), Some(0));
        assert_eq!(epoch_seconds("2026-12-04T10:00:00Z"), Some(1_796_378_400));
        assert_eq!(
            epoch_seconds("2026-12-04T10:00:00.123Z"),
            Some(1_796_378_400)
        );
        assert_eq!(epoch_seconds("1796378400"), Some(1_796_378_400));
        assert_eq!(epoch_seconds("2026-13-04"), None);
        assert_eq!(epoch_seconds("2026-02-30"), None);
        assert_eq!(epoch_seconds("2026-12-04T25:00:00Z"), None);
        assert_eq!(epoch_seconds("2026-12-04T10:00:00.x1Z"), None);
    }
}
