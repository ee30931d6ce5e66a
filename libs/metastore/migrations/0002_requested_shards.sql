-- Shards a stream asked for at creation, counted against the account's
-- shard limit while the stream is still CREATING (its shard rows do not
-- exist yet), so concurrent CreateStreams cannot together exceed it.
ALTER TABLE streams ADD COLUMN requested_shards INT NOT NULL DEFAULT 0;
