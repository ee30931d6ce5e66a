-- When each shard opened (created with its stream, or as a child of a
-- split or merge) and when it closed (sealed: CLOSED), by Postgres's clock,
-- in ms since the Unix epoch. ListShards's ShardFilter selects shards by
-- them (AT_TRIM_HORIZON, AT_TIMESTAMP, FROM_TIMESTAMP), and a shard closed
-- before the trim horizon has expired.
ALTER TABLE shards
    ADD COLUMN opened_at_ms BIGINT,
    ADD COLUMN closed_at_ms BIGINT;
-- Shards from before this migration: opened with their stream; closed
-- ones at an unknown time, taken as now, so they expire no earlier than
-- their records (listing a shard too long is harmless; hiding one whose
-- records can still be read would make consumers skip them).
UPDATE shards SET opened_at_ms = streams.created_at_ms
    FROM streams WHERE streams.stream_uid = shards.stream_uid;
UPDATE shards SET closed_at_ms = (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT
    WHERE state = 'CLOSED';
ALTER TABLE shards
    ALTER COLUMN opened_at_ms SET DEFAULT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT,
    ALTER COLUMN opened_at_ms SET NOT NULL;
