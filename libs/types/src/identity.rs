//! Who calls: accounts, the principals inside them and the ids of their
//! access keys, each checked once where it enters.

use std::fmt;
use std::str::FromStr;

/// A 12-digit AWS account id.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct AccountId(String);

/// Text that is not a 12-digit account id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not a 12-digit account id")]
pub struct BadAccountId(pub String);

impl AccountId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AccountId {
    type Err = BadAccountId;

    fn from_str(text: &str) -> Result<AccountId, BadAccountId> {
        if text.len() == 12 && text.bytes().all(|b| b.is_ascii_digit()) {
            Ok(AccountId(text.to_owned()))
        } else {
            Err(BadAccountId(text.to_owned()))
        }
    }
}

impl fmt::Display for AccountId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// An access key id as AWS issues them: 16 to 128 upper-case letters and
/// digits (`AKIA…`). Only a well-formed id is ever looked up.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct AccessKeyId(String);

/// Text that is not a well-formed access key id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a well-formed access key id")]
pub struct BadAccessKeyId;

impl AccessKeyId {
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for AccessKeyId {
    type Err = BadAccessKeyId;

    fn from_str(text: &str) -> Result<AccessKeyId, BadAccessKeyId> {
        let well_formed = (16..=128).contains(&text.len())
            && text
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit());
        if well_formed {
            Ok(AccessKeyId(text.to_owned()))
        } else {
            Err(BadAccessKeyId)
        }
    }
}

impl fmt::Display for AccessKeyId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// The identity a request is made as: an account's root, or one of its
/// users.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Principal {
    Root { account: AccountId },
    User { account: AccountId, name: String },
}

impl Principal {
    pub fn account(&self) -> &AccountId {
        match self {
            Principal::Root { account } | Principal::User { account, .. } => account,
        }
    }

    /// `arn:aws:iam::<account>:root` or `arn:aws:iam::<account>:user/<name>`.
    pub fn arn(&self) -> String {
        match self {
            Principal::Root { account } => format!("arn:aws:iam::{account}:root"),
            Principal::User { account, name } => format!("arn:aws:iam::{account}:user/{name}"),
        }
    }

    /// Whether `name` may name an IAM user: 1–64 of `A-Za-z0-9+=,.@_-`.
    pub fn is_valid_user_name(name: &str) -> bool {
        (1..=64).contains(&name.len())
            && name
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"+=,.@_-".contains(&b))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn account_ids_are_twelve_digits() {
        assert!("123456789012".parse::<AccountId>().is_ok());
        for bad in ["", "12345678901", "1234567890123", "12345678901a", "１２３"] {
            assert!(bad.parse::<AccountId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn access_key_ids_are_upper_case_letters_and_digits() {
        assert!("AKIAIOSFODNN7EXAMPLE".parse::<AccessKeyId>().is_ok());
        for bad in [
            "test",
            "AKIAIOSFODNN7EXAMPLe",
            "AKIA/IOSFODNN7EXAMPLE",
            &"A".repeat(129),
        ] {
            assert!(bad.parse::<AccessKeyId>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn principals_have_iam_arns() {
        let account: AccountId = "123456789012".parse().expect("valid");
        assert_eq!(
            Principal::Root {
                account: account.clone()
            }
            .arn(),
            "arn:aws:iam::123456789012:root"
        );
        assert_eq!(
            Principal::User {
                account,
                name: "bob".into()
            }
            .arn(),
            "arn:aws:iam::123456789012:user/bob"
        );
        assert!(Principal::is_valid_user_name("a.b@c_d-e+f=g,h"));
        assert!(!Principal::is_valid_user_name("a/b"));
        assert!(!Principal::is_valid_user_name(""));
    }
}
