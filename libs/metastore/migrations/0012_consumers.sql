-- Enhanced fan-out consumers, registered on a stream by name and owned by
-- the control plane. A consumer's ARN ends in the second it was registered,
-- so registering a name again must happen in a later second: the seconds
-- of every registration are kept by name (`consumer_registrations`, which
-- outlives the stream), and each one is later than the last. Deleting a
-- stream removes its consumers.

CREATE TABLE stream_consumers (
    stream_uid      BIGINT NOT NULL REFERENCES streams (stream_uid) ON DELETE CASCADE,
    -- Copied from the stream, for the per-account limit on consumers being created.
    account_id      TEXT   NOT NULL,
    consumer_name   TEXT   NOT NULL CHECK (consumer_name ~ '^[a-zA-Z0-9_.-]{1,128}$'),
    consumer_arn    TEXT   NOT NULL,
    status          TEXT   NOT NULL CHECK (status IN ('CREATING', 'ACTIVE', 'DELETING')),
    created_at_ms   BIGINT NOT NULL,
    -- When the status last changed: CREATING and DELETING end a fixed time after it.
    status_since_ms BIGINT NOT NULL,
    PRIMARY KEY (stream_uid, consumer_name)
);

-- The second each consumer ARN (account, region, stream name, consumer
-- name) was last handed out in; never removed.
CREATE TABLE consumer_registrations (
    account_id     TEXT   NOT NULL,
    region         TEXT   NOT NULL,
    stream_name    TEXT   NOT NULL,
    consumer_name  TEXT   NOT NULL,
    last_second    BIGINT NOT NULL,
    PRIMARY KEY (account_id, region, stream_name, consumer_name)
);

-- The control plane's consumer loop looks only at consumers in transition.
CREATE INDEX stream_consumers_in_transition ON stream_consumers (status_since_ms)
    WHERE status <> 'ACTIVE';
CREATE INDEX stream_consumers_creating_by_account ON stream_consumers (account_id)
    WHERE status = 'CREATING';
