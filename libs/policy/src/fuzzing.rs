//! The fuzz target of policy parsing and evaluation
//! (`fuzz/fuzz_targets/policy.rs`), also replayed over the checked-in
//! corpus by `tests/fuzz_corpus.rs`: any document either fails to parse or
//! evaluates, deterministically, for every kind of caller.

use freshet_types::Principal;

use crate::{evaluate, Context, Policy, PolicyKind, Request};

pub fn exercise(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let identity = Policy::parse(text, PolicyKind::Identity).ok();
    let resource = Policy::parse(text, PolicyKind::Resource).ok();
    if identity.is_none() && resource.is_none() {
        return;
    }
    let account = |id: &str| id.parse().expect("a 12-digit account");
    let callers = [
        Principal::Root {
            account: account("111122223333"),
        },
        Principal::User {
            account: account("111122223333"),
            name: "alice".into(),
        },
        Principal::User {
            account: account("444455556666"),
            name: "bob".into(),
        },
    ];
    let context = Context::default()
        .with("aws:SourceIp", "203.0.113.7")
        .with("aws:CurrentTime", "2026-12-04T10:00:00Z")
        .with("aws:username", "alice");
    for principal in &callers {
        for (action, resource_arn) in [
            (
                "kinesis:PutRecord",
                "arn:aws:kinesis:us-east-1:111122223333:stream/orders",
            ),
            ("kinesis:ListStreams", "*"),
        ] {
            let request = Request {
                principal,
                action,
                resource: resource_arn,
                resource_account: "111122223333",
                context: &context,
            };
            let identities: Vec<Policy> = identity.iter().cloned().collect();
            let first = evaluate(&request, &identities, resource.as_ref());
            assert_eq!(first, evaluate(&request, &identities, resource.as_ref()));
            let _ = first.message(&request);
        }
    }
}
