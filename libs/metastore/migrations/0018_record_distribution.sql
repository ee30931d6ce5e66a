-- Record distribution (UpdateStreamRecordDistributionStrategy): with AUTO,
-- an on-demand stream spreads records evenly over its open shards and
-- ignores partition keys and explicit hash keys; otherwise
-- (USER_PARTITION_KEY, the default) the partition key picks the shard.
-- Only on-demand streams may use AUTO.
ALTER TABLE streams
    ADD COLUMN auto_record_distribution BOOLEAN NOT NULL DEFAULT false,
    ADD CONSTRAINT auto_record_distribution_on_demand_only
        CHECK (NOT auto_record_distribution OR stream_mode = 'ON_DEMAND');
