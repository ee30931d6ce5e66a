-- Worker balancing: a shard's log is a chain of segments. The current
-- segment (number segment_index, from segment_start_offset on) is the one
-- its leader and replicas hold; the earlier ones are sealed, read-only and
-- kept where they were written. `sealed_segments` lists them oldest first,
-- as a JSON array of {index, start_offset, end_offset, final_epoch,
-- worker_ids}.
ALTER TABLE shards ADD COLUMN segment_index INT NOT NULL DEFAULT 0;
ALTER TABLE shards ADD COLUMN segment_start_offset BIGINT NOT NULL DEFAULT 0;
ALTER TABLE shards ADD COLUMN sealed_segments JSONB NOT NULL DEFAULT '[]';
