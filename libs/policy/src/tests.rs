use super::*;

const STREAM: &str = "arn:aws:kinesis:us-east-1:111122223333:stream/orders";
const OTHER_STREAM: &str = "arn:aws:kinesis:us-east-1:111122223333:stream/payments";

fn user(account: &str, name: &str) -> Principal {
    Principal::User {
        account: account.parse().expect("account"),
        name: name.into(),
    }
}

fn root(account: &str) -> Principal {
    Principal::Root {
        account: account.parse().expect("account"),
    }
}

fn identity(json: &str) -> Policy {
    Policy::parse(json, PolicyKind::Identity).expect("a valid identity policy")
}

fn resource(json: &str) -> Policy {
    Policy::parse(json, PolicyKind::Resource).expect("a valid resource policy")
}

const ALLOW_WRITES: &str = r#"{"Version":"2012-10-17","Statement":[{"Effect":"Allow","Action":["kinesis:PutRecord","kinesis:PutRecords"],"Resource":"arn:aws:kinesis:*:111122223333:stream/*"}]}"#;
const ALLOW_ALL: &str = r#"{"Statement":{"Effect":"Allow","Action":"kinesis:*","Resource":"*"}}"#;
const DENY_PAYMENTS: &str = r#"{"Statement":{"Effect":"Deny","Action":"*","Resource":"arn:aws:kinesis:*:*:stream/payments"}}"#;
const ALLOW_ALL_BUT_DELETE: &str =
    r#"{"Statement":{"Effect":"Allow","NotAction":"kinesis:Delete*","Resource":"*"}}"#;
const ALLOW_FROM_OFFICE: &str = r#"{"Statement":{"Effect":"Allow","Action":"kinesis:*","Resource":"*","Condition":{"IpAddress":{"aws:SourceIp":"203.0.113.0/24"}}}}"#;
const ALLOW_EXCEPT_PAYMENTS: &str = r#"{"Statement":{"Effect":"Allow","Action":"kinesis:Get*","NotResource":"arn:aws:kinesis:*:*:stream/payments"}}"#;

const SHARE_READS_WITH_444: &str = r#"{"Version":"2012-10-17","Statement":[{"Sid":"ShareReads","Effect":"Allow","Principal":{"AWS":"arn:aws:iam::444455556666:root"},"Action":["kinesis:GetRecords","kinesis:GetShardIterator","kinesis:DescribeStreamSummary"],"Resource":"arn:aws:kinesis:us-east-1:111122223333:stream/orders"}]}"#;
const SHARE_WITH_BOB_ONLY: &str = r#"{"Statement":{"Effect":"Allow","Principal":{"AWS":["arn:aws:iam::444455556666:user/bob"]},"Action":"kinesis:*","Resource":"*"}}"#;
const DENY_EVERYONE_WRITES: &str =
    r#"{"Statement":{"Effect":"Deny","Principal":"*","Action":"kinesis:Put*","Resource":"*"}}"#;
const SHARE_WITH_ANYONE: &str = r#"{"Statement":{"Effect":"Allow","Principal":{"AWS":"*"},"Action":"kinesis:GetRecords","Resource":"*"}}"#;
const SHARE_WITH_OWN_ACCOUNT: &str = r#"{"Statement":{"Effect":"Allow","Principal":{"AWS":"111122223333"},"Action":"kinesis:ListShards","Resource":"*"}}"#;
const DENY_ACCOUNT_444: &str = r#"{"Statement":{"Effect":"Deny","Principal":{"AWS":"444455556666"},"Action":"*","Resource":"*"}}"#;
const SHARE_WITH_OWN_ALICE: &str = r#"{"Statement":{"Effect":"Allow","Principal":{"AWS":"arn:aws:iam::111122223333:user/alice"},"Action":"kinesis:ListShards","Resource":"*"}}"#;

struct Case {
    name: &'static str,
    principal: Principal,
    action: &'static str,
    resource: &'static str,
    identity: &'static [&'static str],
    resource_policy: Option<&'static str>,
    source_ip: &'static str,
    expected: Decision,
}

const ALLOW: Decision = Decision::Allow;
const SAME_ACCOUNT_IMPLICIT: Decision = Decision::ImplicitDeny {
    cross_account: false,
};
const CROSS_ACCOUNT_IMPLICIT: Decision = Decision::ImplicitDeny {
    cross_account: true,
};
const DENY_BY_IDENTITY: Decision = Decision::ExplicitDeny(DenySource::IdentityPolicy);
const DENY_BY_RESOURCE: Decision = Decision::ExplicitDeny(DenySource::ResourcePolicy);

fn cases() -> Vec<Case> {
    let alice = || user("111122223333", "alice");
    let bob = || user("444455556666", "bob");
    let carol = || user("444455556666", "carol");
    let case = |name, principal, action, resource, identity, resource_policy, expected| Case {
        name,
        principal,
        action,
        resource,
        identity,
        resource_policy,
        source_ip: "198.51.100.1",
        expected,
    };
    vec![
        case(
            "the owner's root may do anything",
            root("111122223333"),
            "kinesis:DeleteStream",
            STREAM,
            &[],
            None,
            ALLOW,
        ),
        case(
            "a user with no policy may do nothing",
            alice(),
            "kinesis:PutRecord",
            STREAM,
            &[],
            None,
            SAME_ACCOUNT_IMPLICIT,
        ),
        case(
            "an action the policy lists",
            alice(),
            "kinesis:PutRecord",
            STREAM,
            &[ALLOW_WRITES],
            None,
            ALLOW,
        ),
        case(
            "an action it does not",
            alice(),
            "kinesis:GetRecords",
            STREAM,
            &[ALLOW_WRITES],
            None,
            SAME_ACCOUNT_IMPLICIT,
        ),
        case(
            "actions ignore case",
            alice(),
            "kinesis:putrecords",
            STREAM,
            &[ALLOW_WRITES],
            None,
            ALLOW,
        ),
        case(
            "a wildcard action",
            alice(),
            "kinesis:MergeShards",
            STREAM,
            &[ALLOW_ALL],
            None,
            ALLOW,
        ),
        case(
            "a deny beats an allow",
            alice(),
            "kinesis:PutRecord",
            OTHER_STREAM,
            &[ALLOW_ALL, DENY_PAYMENTS],
            None,
            DENY_BY_IDENTITY,
        ),
        case(
            "a deny elsewhere leaves the allow",
            alice(),
            "kinesis:PutRecord",
            STREAM,
            &[ALLOW_ALL, DENY_PAYMENTS],
            None,
            ALLOW,
        ),
        case(
            "a deny binds the root too",
            root("111122223333"),
            "kinesis:PutRecord",
            STREAM,
            &[],
            Some(DENY_EVERYONE_WRITES),
            DENY_BY_RESOURCE,
        ),
        case(
            "NotAction allows the rest",
            alice(),
            "kinesis:PutRecord",
            STREAM,
            &[ALLOW_ALL_BUT_DELETE],
            None,
            ALLOW,
        ),
        case(
            "NotAction excludes its own",
            alice(),
            "kinesis:DeleteStream",
            STREAM,
            &[ALLOW_ALL_BUT_DELETE],
            None,
            SAME_ACCOUNT_IMPLICIT,
        ),
        case(
            "NotResource allows the rest",
            alice(),
            "kinesis:GetRecords",
            STREAM,
            &[ALLOW_EXCEPT_PAYMENTS],
            None,
            ALLOW,
        ),
        case(
            "NotResource excludes its own",
            alice(),
            "kinesis:GetRecords",
            OTHER_STREAM,
            &[ALLOW_EXCEPT_PAYMENTS],
            None,
            SAME_ACCOUNT_IMPLICIT,
        ),
        case(
            "a condition that does not hold",
            alice(),
            "kinesis:PutRecord",
            STREAM,
            &[ALLOW_FROM_OFFICE],
            None,
            SAME_ACCOUNT_IMPLICIT,
        ),
        case(
            "a resource policy allows within its account",
            alice(),
            "kinesis:ListShards",
            STREAM,
            &[],
            Some(SHARE_WITH_OWN_ALICE),
            ALLOW,
        ),
        case(
            "naming the own account only delegates to it",
            alice(),
            "kinesis:ListShards",
            STREAM,
            &[],
            Some(SHARE_WITH_OWN_ACCOUNT),
            SAME_ACCOUNT_IMPLICIT,
        ),
        case(
            "naming the own account grants its root",
            root("111122223333"),
            "kinesis:ListShards",
            STREAM,
            &[],
            Some(SHARE_WITH_OWN_ACCOUNT),
            ALLOW,
        ),
        case(
            "a deny of an account binds its users",
            bob(),
            "kinesis:GetRecords",
            STREAM,
            &[ALLOW_ALL],
            Some(DENY_ACCOUNT_444),
            DENY_BY_RESOURCE,
        ),
        case(
            "another account without a resource policy",
            root("444455556666"),
            "kinesis:GetRecords",
            STREAM,
            &[ALLOW_ALL],
            None,
            CROSS_ACCOUNT_IMPLICIT,
        ),
        case(
            "another account's root the resource policy names",
            root("444455556666"),
            "kinesis:GetRecords",
            STREAM,
            &[],
            Some(SHARE_READS_WITH_444),
            ALLOW,
        ),
        case(
            "an action the resource policy does not share",
            root("444455556666"),
            "kinesis:PutRecord",
            STREAM,
            &[],
            Some(SHARE_READS_WITH_444),
            CROSS_ACCOUNT_IMPLICIT,
        ),
        case(
            "a user of the named account needs its own allow",
            bob(),
            "kinesis:GetRecords",
            STREAM,
            &[],
            Some(SHARE_READS_WITH_444),
            SAME_ACCOUNT_IMPLICIT,
        ),
        case(
            "a user of the named account with its own allow",
            bob(),
            "kinesis:GetRecords",
            STREAM,
            &[ALLOW_ALL],
            Some(SHARE_READS_WITH_444),
            ALLOW,
        ),
        case(
            "a named user",
            bob(),
            "kinesis:PutRecord",
            STREAM,
            &[ALLOW_ALL],
            Some(SHARE_WITH_BOB_ONLY),
            ALLOW,
        ),
        case(
            "an unnamed user of the same account",
            carol(),
            "kinesis:PutRecord",
            STREAM,
            &[ALLOW_ALL],
            Some(SHARE_WITH_BOB_ONLY),
            CROSS_ACCOUNT_IMPLICIT,
        ),
        case(
            "a deny for everyone binds other accounts",
            bob(),
            "kinesis:PutRecord",
            STREAM,
            &[ALLOW_ALL],
            Some(DENY_EVERYONE_WRITES),
            DENY_BY_RESOURCE,
        ),
        case(
            "a resource policy for anyone",
            root("999999999999"),
            "kinesis:GetRecords",
            STREAM,
            &[],
            Some(SHARE_WITH_ANYONE),
            ALLOW,
        ),
        case(
            "an identity deny beats a resource allow",
            bob(),
            "kinesis:PutRecord",
            OTHER_STREAM,
            &[ALLOW_ALL, DENY_PAYMENTS],
            Some(SHARE_WITH_BOB_ONLY),
            DENY_BY_IDENTITY,
        ),
    ]
}

#[test]
fn decisions_follow_iam_evaluation() {
    for case in cases() {
        let identity_policies: Vec<Policy> = case.identity.iter().map(|p| identity(p)).collect();
        let resource_policy = case.resource_policy.map(resource);
        let context = Context::default().with("aws:SourceIp", case.source_ip);
        let resource_account = case.resource.split(':').nth(4).expect("an account");
        let request = Request {
            principal: &case.principal,
            action: case.action,
            resource: case.resource,
            resource_account,
            context: &context,
        };
        assert_eq!(
            evaluate(&request, &identity_policies, resource_policy.as_ref()),
            case.expected,
            "{}",
            case.name
        );
    }
}

#[test]
fn a_condition_that_holds_allows() {
    let alice = user("111122223333", "alice");
    let context = Context::default().with("aws:SourceIp", "203.0.113.9");
    let request = Request {
        principal: &alice,
        action: "kinesis:PutRecord",
        resource: STREAM,
        resource_account: "111122223333",
        context: &context,
    };
    assert_eq!(
        evaluate(&request, &[identity(ALLOW_FROM_OFFICE)], None),
        Decision::Allow
    );
}

#[test]
fn refusals_read_like_aws() {
    let alice = user("111122223333", "alice");
    let context = Context::default();
    let request = Request {
        principal: &alice,
        action: "kinesis:PutRecord",
        resource: STREAM,
        resource_account: "111122223333",
        context: &context,
    };
    assert_eq!(
        SAME_ACCOUNT_IMPLICIT.message(&request).as_deref(),
        Some("User: arn:aws:iam::111122223333:user/alice is not authorized to perform: kinesis:PutRecord on resource: arn:aws:kinesis:us-east-1:111122223333:stream/orders because no identity-based policy allows the kinesis:PutRecord action")
    );
    assert!(DENY_BY_RESOURCE
        .message(&request)
        .is_some_and(|m| m.ends_with("with an explicit deny in a resource-based policy")));
    assert_eq!(ALLOW.message(&request), None);
}

#[test]
fn malformed_documents_are_refused_with_where() {
    let identity_bad = [
        r#"{"Statement":{"Effect":"Deny","Effect":"Allow","Action":"*","Resource":"*"}}"#,
        r#"{"Statement":{"Effect":"Deny","Action":"*","Resource":"arn:aws:kinesis:*:*:stream/${aws:username}"}}"#,
        r#"{"Statement":{"Effect":"Deny","Action":"*","Resource":"stream/payments"}}"#,
        "not json",
        "[]",
        r#"{"Statement":[]}"#,
        r#"{"Version":"2020-01-01","Statement":{"Effect":"Allow","Action":"*","Resource":"*"}}"#,
        r#"{"Statement":{"Effect":"Maybe","Action":"*","Resource":"*"}}"#,
        r#"{"Statement":{"Effect":"Allow","Resource":"*"}}"#,
        r#"{"Statement":{"Effect":"Allow","Action":"*","NotAction":"x:y","Resource":"*"}}"#,
        r#"{"Statement":{"Effect":"Allow","Action":"PutRecord","Resource":"*"}}"#,
        r#"{"Statement":{"Effect":"Allow","Action":[],"Resource":"*"}}"#,
        r#"{"Statement":{"Effect":"Allow","Action":"*","Resource":"*","Principal":"*"}}"#,
        r#"{"Statement":{"Effect":"Allow","Action":"*","Resource":"*","Extra":1}}"#,
        r#"{"Statement":{"Sid":"has space","Effect":"Allow","Action":"*","Resource":"*"}}"#,
        r#"{"Statement":{"Effect":"Allow","Action":"*","Resource":"*","Condition":{"Nope":{"k":"v"}}}}"#,
    ];
    for json in identity_bad {
        assert!(Policy::parse(json, PolicyKind::Identity).is_err(), "{json}");
    }
    let resource_bad = [
        r#"{"Statement":{"Effect":"Allow","Action":"*","Resource":"*"}}"#,
        r#"{"Statement":{"Effect":"Allow","Principal":{"Service":"x"},"Action":"*","Resource":"*"}}"#,
        r#"{"Statement":{"Effect":"Allow","Principal":{"AWS":"bob"},"Action":"*","Resource":"*"}}"#,
        r#"{"Statement":{"Effect":"Allow","NotPrincipal":{"AWS":"*"},"Action":"*","Resource":"*"}}"#,
    ];
    for json in resource_bad {
        assert!(Policy::parse(json, PolicyKind::Resource).is_err(), "{json}");
    }
    let error = Policy::parse(
        r#"{"Statement":[{"Effect":"Allow","Action":"*","Resource":"*"},{"Effect":"Allow","Resource":"*"}]}"#,
        PolicyKind::Identity,
    )
    .expect_err("the second statement has no action");
    assert!(error.0.starts_with("Statement 1:"), "{error}");
}
