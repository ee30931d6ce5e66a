-- Consumers change through the change log like shards: a row of
-- `shard_map_changes` is now a shard's entry or a consumer's (`kind`), and
-- a consumer's row holds its stream incarnation and its name (in
-- `shard_id`) with an encoded ConsumerEntry. A snapshot's consumers are
-- read from `stream_consumers` in the same transaction as its shards.
ALTER TABLE shard_map_changes
    ADD COLUMN kind TEXT NOT NULL DEFAULT 'shard' CHECK (kind IN ('shard', 'consumer'));

-- A consumer is removed with a change-log tombstone (membership removes a
-- stream's consumers in the batch that removes its shards), never by a
-- cascade the log would not hear of: deleting a stream row that still has
-- consumers fails.
ALTER TABLE stream_consumers
    DROP CONSTRAINT stream_consumers_stream_uid_fkey,
    ADD CONSTRAINT stream_consumers_stream_uid_fkey
        FOREIGN KEY (stream_uid) REFERENCES streams (stream_uid) ON DELETE RESTRICT;
