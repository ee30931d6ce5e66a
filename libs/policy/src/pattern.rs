//! IAM's wildcards: `*` matches any run of characters (also none), `?`
//! exactly one. Actions compare without regard to case, ARNs with it.

/// One pattern of an `Action`, `Resource` or `…Like` condition.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    text: String,
    case_sensitive: bool,
}

impl Pattern {
    pub fn new(text: &str, case_sensitive: bool) -> Pattern {
        Pattern {
            text: text.to_owned(),
            case_sensitive,
        }
    }

    /// The pattern as written.
    pub fn text(&self) -> &str {
        &self.text
    }

    pub fn matches(&self, value: &str) -> bool {
        if self.case_sensitive {
            glob(self.text.as_bytes(), value.as_bytes())
        } else {
            glob(
                self.text.to_ascii_lowercase().as_bytes(),
                value.to_ascii_lowercase().as_bytes(),
            )
        }
    }
}

/// Wildcard matching in O(pattern × value) time without recursion: on a
/// mismatch after a `*`, the `*` takes one more character.
pub(crate) fn glob(pattern: &[u8], value: &[u8]) -> bool {
    let (mut p, mut v) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while v < value.len() {
        match pattern.get(p) {
            Some(b'*') => {
                star = Some((p, v));
                p += 1;
            }
            Some(&c) if c == b'?' || c == value[v] => {
                p += 1;
                v += 1;
            }
            _ => match star {
                Some((star_p, star_v)) => {
                    p = star_p + 1;
                    v = star_v + 1;
                    star = Some((star_p, star_v + 1));
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wildcards_match_as_iam_documents_them() {
        let table: &[(&str, &str, bool)] = &[
            ("*", "", true),
            ("*", "anything", true),
            ("kinesis:*", "kinesis:PutRecord", true),
            ("kinesis:Put*", "kinesis:PutRecords", true),
            ("kinesis:Put*", "kinesis:GetRecords", false),
            ("kinesis:Get?ecords", "kinesis:GetRecords", true),
            ("kinesis:Get?ecords", "kinesis:GetRecord", false),
            ("a*b*c", "aXXbYYc", true),
            ("a*b*c", "aXXbYY", false),
            (
                "a*a*a*a*b",
                "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa",
                false,
            ),
            (
                "arn:aws:kinesis:*:111122223333:stream/orders-*",
                "arn:aws:kinesis:us-east-1:111122223333:stream/orders-eu",
                true,
            ),
            (
                "arn:aws:kinesis:*:111122223333:stream/orders-*",
                "arn:aws:kinesis:us-east-1:444455556666:stream/orders-eu",
                false,
            ),
            ("", "", true),
            ("", "x", false),
        ];
        for &(pattern, value, expected) in table {
            assert_eq!(
                glob(pattern.as_bytes(), value.as_bytes()),
                expected,
                "{pattern:?} ~ {value:?}"
            );
        }
    }

    #[test]
    fn actions_ignore_case_and_arns_do_not() {
        assert!(Pattern::new("KINESIS:putrecord", false).matches("kinesis:PutRecord"));
        assert!(!Pattern::new("arn:aws:kinesis:*:*:stream/A", true)
            .matches("arn:aws:kinesis:us-east-1:111122223333:stream/a"));
    }
}
