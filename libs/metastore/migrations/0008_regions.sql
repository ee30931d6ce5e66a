-- Streams are namespaced per account and region, as in AWS (and
-- LocalStack): `orders` in us-east-1 and `orders` in us-west-2 are two
-- streams. The region is the one in the stream's ARN.

ALTER TABLE streams ADD COLUMN region TEXT;
UPDATE streams SET region = split_part(stream_arn, ':', 4);
ALTER TABLE streams ALTER COLUMN region SET NOT NULL;
ALTER TABLE streams DROP CONSTRAINT streams_account_id_stream_name_key;
ALTER TABLE streams ADD CONSTRAINT streams_one_name_per_account_and_region
    UNIQUE (account_id, region, stream_name);

ALTER TABLE shard_map_entries ADD COLUMN region TEXT;
UPDATE shard_map_entries AS entries SET region = streams.region
    FROM streams WHERE streams.stream_uid = entries.stream_uid;
UPDATE shard_map_entries SET region = '' WHERE region IS NULL;
ALTER TABLE shard_map_entries ALTER COLUMN region SET NOT NULL;
DROP INDEX shard_map_entries_by_name;
CREATE INDEX shard_map_entries_by_name ON shard_map_entries (account_id, region, stream_name);
