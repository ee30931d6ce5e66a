-- Identities: the users of each account and their access keys. A key's
-- secret is needed to verify SigV4, so it is kept, but only sealed: the
-- control plane encrypts it under its master key (the AEAD binds the
-- ciphertext to the key id, so a sealed secret copied onto another row does
-- not open). `master_key_id` names the master key that sealed it.
--
-- The old `accounts` table mapped key ids to accounts without secrets; no
-- key in it could ever be verified, so it goes (development mode needs no
-- keys, and secure mode starts from the bootstrap key).

DROP TABLE accounts;

CREATE TABLE iam_users (
    account_id    TEXT   NOT NULL CHECK (account_id ~ '^[0-9]{12}$'),
    user_name     TEXT   NOT NULL CHECK (user_name ~ '^[A-Za-z0-9+=,.@_-]{1,64}$'),
    created_at_ms BIGINT NOT NULL,
    PRIMARY KEY (account_id, user_name)
);

CREATE TABLE access_keys (
    access_key_id TEXT   PRIMARY KEY CHECK (access_key_id ~ '^[A-Z0-9]{16,128}$'),
    account_id    TEXT   NOT NULL CHECK (account_id ~ '^[0-9]{12}$'),
    -- NULL: the account's root identity.
    user_name     TEXT,
    secret_sealed BYTEA  NOT NULL,
    master_key_id TEXT   NOT NULL,
    status        TEXT   NOT NULL CHECK (status IN ('Active', 'Inactive')),
    created_at_ms BIGINT NOT NULL,
    FOREIGN KEY (account_id, user_name) REFERENCES iam_users ON DELETE CASCADE
);

CREATE INDEX access_keys_by_owner ON access_keys (account_id, user_name);
