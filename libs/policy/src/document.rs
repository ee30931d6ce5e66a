//! A policy document in IAM's JSON grammar, parsed and checked once:
//! `Version`, `Statement` (one or a list), each with `Sid`, `Effect`,
//! `Action` or `NotAction`, `Resource` or `NotResource`, `Principal` (in
//! resource policies) and `Condition`.

use serde_json::{Map, Value};

use crate::condition::Condition;
use crate::error::PolicyError;
use crate::pattern::Pattern;

fn bad(message: impl Into<String>) -> PolicyError {
    PolicyError(message.into())
}

/// Which kind of policy a document is: identity policies name no
/// principal, resource policies must.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PolicyKind {
    Identity,
    Resource,
}

/// Allow or Deny.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Effect {
    Allow,
    Deny,
}

/// A list of patterns a value must match (`Action`, `Resource`) or must
/// match none of (`NotAction`, `NotResource`).
#[derive(Debug, Clone, PartialEq)]
pub enum Matcher {
    AnyOf(Vec<Pattern>),
    NoneOf(Vec<Pattern>),
}

impl Matcher {
    pub fn matches(&self, value: &str) -> bool {
        match self {
            Matcher::AnyOf(patterns) => patterns.iter().any(|p| p.matches(value)),
            Matcher::NoneOf(patterns) => !patterns.iter().any(|p| p.matches(value)),
        }
    }
}

/// Who a resource-policy statement is about.
#[derive(Debug, Clone, PartialEq)]
pub enum Principals {
    /// `"*"` or `{"AWS": "*"}`: anyone.
    Anyone,
    /// `{"AWS": [...]}`: account ids, account roots
    /// (`arn:aws:iam::<account>:root`, meaning every principal of the
    /// account) and user ARNs.
    Aws(Vec<String>),
}

/// One statement.
#[derive(Debug, Clone, PartialEq)]
pub struct Statement {
    pub sid: Option<String>,
    pub effect: Effect,
    pub principals: Option<Principals>,
    pub actions: Matcher,
    pub resources: Matcher,
    pub conditions: Vec<Condition>,
}

/// A parsed policy.
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    pub statements: Vec<Statement>,
}

impl Policy {
    /// Parses `text` as a policy of `kind`.
    pub fn parse(text: &str, kind: PolicyKind) -> Result<Policy, PolicyError> {
        let value = crate::strict_json::parse(text)
            .map_err(|e| bad(format!("The policy is not valid JSON: {e}")))?;
        // Policy variables (`${aws:username}`) are not substituted: taken
        // as text, a Deny written with one would never match.
        if text.contains("${") {
            return Err(bad("Policy variables (${...}) are not supported."));
        }
        let Value::Object(document) = value else {
            return Err(bad("The policy must be a JSON object."));
        };
        for key in document.keys() {
            if !matches!(key.as_str(), "Version" | "Id" | "Statement") {
                return Err(bad(format!("Unknown policy element '{key}'.")));
            }
        }
        match document.get("Version") {
            None => {}
            Some(Value::String(v)) if v == "2012-10-17" || v == "2008-10-17" => {}
            Some(other) => {
                return Err(bad(format!(
                    "The policy Version must be \"2012-10-17\" or \"2008-10-17\", not {other}."
                )))
            }
        }
        let statements = match document.get("Statement") {
            Some(Value::Array(list)) if !list.is_empty() => list.iter().collect::<Vec<_>>(),
            Some(Value::Object(_)) => vec![&document["Statement"]],
            _ => {
                return Err(bad(
                    "The policy must have a Statement (an object or a non-empty list).",
                ))
            }
        };
        let statements = statements
            .into_iter()
            .enumerate()
            .map(|(index, statement)| parse_statement(index, statement, kind))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Policy { statements })
    }
}

/// A string or a non-empty list of strings.
fn strings(value: &Value, what: &str) -> Result<Vec<String>, PolicyError> {
    match value {
        Value::String(s) => Ok(vec![s.clone()]),
        Value::Array(list) if !list.is_empty() => list
            .iter()
            .map(|v| {
                v.as_str()
                    .map(str::to_owned)
                    .ok_or_else(|| bad(format!("{what} must hold strings only.")))
            })
            .collect(),
        _ => Err(bad(format!(
            "{what} must be a string or a non-empty list of strings."
        ))),
    }
}

fn parse_statement(
    index: usize,
    value: &Value,
    kind: PolicyKind,
) -> Result<Statement, PolicyError> {
    let Value::Object(statement) = value else {
        return Err(bad(format!("Statement {index} must be an object.")));
    };
    let at = |message: String| bad(format!("Statement {index}: {message}"));
    for key in statement.keys() {
        if !matches!(
            key.as_str(),
            "Sid"
                | "Effect"
                | "Principal"
                | "NotPrincipal"
                | "Action"
                | "NotAction"
                | "Resource"
                | "NotResource"
                | "Condition"
        ) {
            return Err(at(format!("unknown element '{key}'.")));
        }
    }
    if statement.contains_key("NotPrincipal") {
        return Err(at("NotPrincipal is not supported.".to_owned()));
    }
    let sid = match statement.get("Sid") {
        None => None,
        Some(Value::String(sid)) if sid.bytes().all(|b| b.is_ascii_alphanumeric()) => {
            Some(sid.clone())
        }
        Some(_) => return Err(at("Sid must be letters and digits.".to_owned())),
    };
    let effect = match statement.get("Effect").and_then(Value::as_str) {
        Some("Allow") => Effect::Allow,
        Some("Deny") => Effect::Deny,
        _ => return Err(at("Effect must be \"Allow\" or \"Deny\".".to_owned())),
    };
    let actions = either(statement, "Action", "NotAction", false).map_err(|e| at(e.0))?;
    for pattern in match &actions {
        Matcher::AnyOf(p) | Matcher::NoneOf(p) => p,
    } {
        let text = pattern.text();
        let well_formed = text == "*"
            || text
                .split_once(':')
                .is_some_and(|(service, action)| !service.is_empty() && !action.is_empty());
        if !well_formed {
            return Err(at(format!(
                "Action '{text}' must be service:action (such as kinesis:PutRecord) or *."
            )));
        }
    }
    let resources = either(statement, "Resource", "NotResource", true).map_err(|e| at(e.0))?;
    for pattern in match &resources {
        Matcher::AnyOf(p) | Matcher::NoneOf(p) => p,
    } {
        let text = pattern.text();
        // A malformed ARN matches nothing: in a Deny, that fails open.
        let well_formed = text == "*" || (text.starts_with("arn:") && text.split(':').count() >= 6);
        if !well_formed {
            return Err(at(format!(
                "Resource '{text}' must be * or an ARN (arn:partition:service:region:account:resource)."
            )));
        }
    }
    let principals = match (statement.get("Principal"), kind) {
        (None, PolicyKind::Identity) => None,
        (Some(_), PolicyKind::Identity) => {
            return Err(at("an identity policy names no Principal.".to_owned()))
        }
        (None, PolicyKind::Resource) => {
            return Err(at("a resource policy must name a Principal.".to_owned()))
        }
        (Some(principal), PolicyKind::Resource) => {
            Some(parse_principals(principal).map_err(|e| at(e.0))?)
        }
    };
    let conditions = match statement.get("Condition") {
        None => Vec::new(),
        Some(Value::Object(block)) => Condition::parse_block(block).map_err(|e| at(e.0))?,
        Some(_) => return Err(at("Condition must be an object.".to_owned())),
    };
    Ok(Statement {
        sid,
        effect,
        principals,
        actions,
        resources,
        conditions,
    })
}

/// `positive` or `negative`, exactly one of them.
fn either(
    statement: &Map<String, Value>,
    positive: &str,
    negative: &str,
    case_sensitive: bool,
) -> Result<Matcher, PolicyError> {
    let patterns = |value: &Value, what: &str| -> Result<Vec<Pattern>, PolicyError> {
        Ok(strings(value, what)?
            .into_iter()
            .map(|text| Pattern::new(&text, case_sensitive))
            .collect())
    };
    match (statement.get(positive), statement.get(negative)) {
        (Some(value), None) => Ok(Matcher::AnyOf(patterns(value, positive)?)),
        (None, Some(value)) => Ok(Matcher::NoneOf(patterns(value, negative)?)),
        (Some(_), Some(_)) => Err(bad(format!(
            "{positive} and {negative} cannot both be set."
        ))),
        (None, None) => Err(bad(format!("{positive} or {negative} must be set."))),
    }
}

fn parse_principals(value: &Value) -> Result<Principals, PolicyError> {
    match value {
        Value::String(s) if s == "*" => Ok(Principals::Anyone),
        Value::Object(map) => {
            if map.keys().any(|k| k != "AWS") {
                return Err(bad("Principal supports only \"AWS\" principals."));
            }
            let listed = strings(
                map.get("AWS")
                    .ok_or_else(|| bad("Principal must name \"AWS\" principals."))?,
                "Principal.AWS",
            )?;
            if listed.iter().any(|p| p == "*") {
                return Ok(Principals::Anyone);
            }
            for principal in &listed {
                let account =
                    principal.len() == 12 && principal.bytes().all(|b| b.is_ascii_digit());
                let arn = principal.starts_with("arn:aws:iam::")
                    && (principal.ends_with(":root") || principal.contains(":user/"));
                if !account && !arn {
                    return Err(bad(format!(
                        "Invalid principal '{principal}': use an account id, arn:aws:iam::ACCOUNT:root or arn:aws:iam::ACCOUNT:user/NAME."
                    )));
                }
            }
            Ok(Principals::Aws(listed))
        }
        _ => Err(bad("Principal must be \"*\" or {\"AWS\": ...}.")),
    }
}
