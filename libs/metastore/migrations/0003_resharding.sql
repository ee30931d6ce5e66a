-- Resharding: a shard being sealed for a split or merge is CLOSING; once
-- sealed it is CLOSED and holds exactly the offsets below ending_offset
-- (its ending sequence number is derived from that and its base).
ALTER TABLE shards DROP CONSTRAINT shards_state_check;
ALTER TABLE shards ADD CONSTRAINT shards_state_check CHECK (state IN ('OPEN', 'CLOSING', 'CLOSED'));
ALTER TABLE shards DROP COLUMN ending_sequence_number;
ALTER TABLE shards ADD COLUMN ending_offset BIGINT;

-- UpdateShardCount calls, for its limit of 10 per rolling 24 hours.
CREATE TABLE shard_count_updates (
    stream_uid BIGINT      NOT NULL REFERENCES streams (stream_uid) ON DELETE CASCADE,
    updated_at TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX shard_count_updates_by_stream ON shard_count_updates (stream_uid, updated_at);
