-- Freshet's metadata: accounts, streams, shards with their placement,
-- storage workers, and the shard-map change log (the source of truth every
-- routing snapshot is built from). Record payloads never live here.

CREATE TABLE accounts (
    access_key_id TEXT PRIMARY KEY,
    account_id    TEXT NOT NULL CHECK (account_id ~ '^[0-9]{12}$')
);

-- Development keys: the AWS docs' example key and the conventional "test".
INSERT INTO accounts (access_key_id, account_id) VALUES
    ('test', '000000000000'),
    ('AKIAIOSFODNN7EXAMPLE', '000000000000');

CREATE TABLE streams (
    stream_uid          BIGSERIAL PRIMARY KEY,
    account_id          TEXT   NOT NULL,
    stream_name         TEXT   NOT NULL,
    stream_arn          TEXT   NOT NULL,
    status              TEXT   NOT NULL CHECK (status IN ('CREATING', 'ACTIVE', 'UPDATING', 'DELETING')),
    stream_mode         TEXT   NOT NULL CHECK (stream_mode IN ('PROVISIONED', 'ON_DEMAND')),
    retention_hours     INT    NOT NULL,
    max_record_size_kib INT    NOT NULL,
    created_at_ms       BIGINT NOT NULL,
    UNIQUE (account_id, stream_name)
);

CREATE TABLE workers (
    worker_id         TEXT PRIMARY KEY,
    availability_zone TEXT NOT NULL,
    address           TEXT NOT NULL,
    registered_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_heartbeat_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE shards (
    stream_uid               BIGINT NOT NULL REFERENCES streams (stream_uid) ON DELETE CASCADE,
    shard_id                 TEXT   NOT NULL,
    starting_hash_key        TEXT   NOT NULL,
    ending_hash_key          TEXT   NOT NULL,
    parent_shard_id          TEXT,
    adjacent_parent_shard_id TEXT,
    -- u64 stored as its two's-complement i64.
    sequence_base            BIGINT NOT NULL,
    ending_sequence_number   TEXT,
    state                    TEXT   NOT NULL CHECK (state IN ('OPEN', 'CLOSED')),
    leader_worker_id         TEXT   NOT NULL,
    replica_worker_ids       TEXT[] NOT NULL,
    epoch                    BIGINT NOT NULL,
    PRIMARY KEY (stream_uid, shard_id)
);

-- Every shard-map change, in commit order. `entry` is an encoded
-- freshet.v1.ShardMapEntry whose `version` equals this row's version.
CREATE TABLE shard_map_changes (
    version      BIGINT PRIMARY KEY,
    stream_uid   BIGINT NOT NULL,
    shard_id     TEXT   NOT NULL,
    entry        BYTEA  NOT NULL,
    committed_at TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- The newest live entry per shard: what a snapshot is made of.
CREATE TABLE shard_map_entries (
    stream_uid  BIGINT NOT NULL,
    shard_id    TEXT   NOT NULL,
    account_id  TEXT   NOT NULL,
    stream_name TEXT   NOT NULL,
    version     BIGINT NOT NULL,
    entry       BYTEA  NOT NULL,
    PRIMARY KEY (stream_uid, shard_id)
);
CREATE INDEX shard_map_entries_by_name ON shard_map_entries (account_id, stream_name);
