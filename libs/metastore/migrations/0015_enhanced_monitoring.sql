-- Enhanced monitoring: the shard-level metrics a stream has switched on
-- (EnableEnhancedMonitoring), as a bitmask in the order Kinesis lists them
-- (IncomingBytes = 1, IncomingRecords = 2, OutgoingBytes = 4,
-- OutgoingRecords = 8, WriteProvisionedThroughputExceeded = 16,
-- ReadProvisionedThroughputExceeded = 32, IteratorAgeMilliseconds = 64;
-- `freshet_types::ShardLevelMetrics`).
ALTER TABLE streams
    ADD COLUMN shard_level_metrics INTEGER NOT NULL DEFAULT 0
        CHECK (shard_level_metrics BETWEEN 0 AND 127);
