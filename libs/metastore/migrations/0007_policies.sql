-- Policies: IAM-style identity policies attached to users (inline, by
-- name), and resource policies on stream and consumer ARNs. Documents are
-- stored as the JSON text that was validated when they were put.

CREATE TABLE user_policies (
    account_id  TEXT NOT NULL,
    user_name   TEXT NOT NULL,
    policy_name TEXT NOT NULL CHECK (policy_name ~ '^[A-Za-z0-9+=,.@_-]{1,128}$'),
    document    TEXT NOT NULL,
    PRIMARY KEY (account_id, user_name, policy_name),
    FOREIGN KEY (account_id, user_name) REFERENCES iam_users ON DELETE CASCADE
);

CREATE TABLE resource_policies (
    resource_arn TEXT PRIMARY KEY,
    account_id   TEXT NOT NULL CHECK (account_id ~ '^[0-9]{12}$'),
    document     TEXT NOT NULL
);
